/** Throwaway TLS identities for tests, made by the real `openssl` CLI. */

export interface TestCerts {
  /** Folder holding ca.pem, cert.pem and key.pem (and a second CA, other_ca.pem). */
  dir: string;
  caCert: string;
  /** The CA's key: a server showing the CA's own certificate is a mistake to test. */
  caKey: string;
  /** A CA that did not sign the server certificate. */
  otherCaCert: string;
  cert: string;
  key: string;
}

async function _openssl(dir: string, ...args: string[]): Promise<void> {
  const out = await new Deno.Command("openssl", { args, cwd: dir, stdout: "null", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`openssl ${args[0]} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/**
 * A private CA and a server certificate it signed for `localhost`,
 * `127.0.0.1` and `::1` (rustls refuses a CA certificate used as the server's
 * own, so the two are separate).
 */
export async function makeTestCerts(): Promise<TestCerts> {
  const dir = await Deno.makeTempDir({ prefix: "immortal-tls-" });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  for (const name of ["ca", "other_ca"]) {
    await _openssl(
      dir,
      "req",
      "-x509",
      ...ec,
      "-keyout",
      `${name}_key.pem`,
      "-out",
      `${name}.pem`,
      "-days",
      "2",
      "-subj",
      `/CN=immortal test ${name}`,
    );
  }
  await _openssl(
    dir,
    "req",
    ...ec,
    "-keyout",
    "key.pem",
    "-out",
    "cert.csr",
    "-subj",
    "/CN=localhost",
  );
  await Deno.writeTextFile(
    `${dir}/ext.cnf`,
    "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\n",
  );
  await _openssl(
    dir,
    "x509",
    "-req",
    "-in",
    "cert.csr",
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca_key.pem",
    "-CAcreateserial",
    "-out",
    "cert.pem",
    "-days",
    "2",
    "-extfile",
    "ext.cnf",
  );
  const read = (name: string) => Deno.readTextFile(`${dir}/${name}`);
  return {
    dir,
    caCert: await read("ca.pem"),
    caKey: await read("ca_key.pem"),
    otherCaCert: await read("other_ca.pem"),
    cert: await read("cert.pem"),
    key: await read("key.pem"),
  };
}
