import assert from "node:assert/strict";
import { formatAddr, type Link, TlsAcceptor, tlsDialer } from "../lib/link/mod.ts";
import { connect, listen } from "../lib/conn/mod.ts";
import { makeTestCerts, type TestCerts } from "./_tls.ts";

/** Reads exactly `size` bytes (fails at an early end of stream). */
async function readExactly(link: Link, size: number): Promise<Uint8Array> {
  const out = new Uint8Array(size);
  let got = 0;
  while (got < size) {
    const n = await link.read(out.subarray(got));
    if (n === null) throw new Error(`end of stream after ${got} of ${size} bytes`);
    got += n;
  }
  return out;
}

function pattern(size: number, seed: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i++) out[i] = (i * 31 + seed) & 0xff;
  return out;
}

async function withCerts(fn: (certs: TestCerts) => Promise<void>): Promise<void> {
  const certs = await makeTestCerts();
  try {
    await fn(certs);
  } finally {
    await Deno.remove(certs.dir, { recursive: true });
  }
}

Deno.test("TLS acceptor: bytes both ways, small writes and 8 MiB bulk; end of stream; close is idempotent", async () => {
  await withCerts(async (certs) => {
    const acceptor = new TlsAcceptor({ hostname: "127.0.0.1", port: 0, ...certs });
    try {
      assert.equal(acceptor.addr.hostname, "127.0.0.1");
      assert.ok(acceptor.addr.port > 0);
      const dial = tlsDialer({ port: acceptor.addr.port, caCerts: [certs.caCert] });
      const [client, server] = await Promise.all([
        dial(new AbortController().signal),
        acceptor.accept(),
      ]);
      assert.equal(server.remoteAddr?.transport, "tcp");
      assert.equal((server.localAddr as Deno.NetAddr).port, acceptor.addr.port);
      // What logs say of the peer: a TLS connection's address has no
      // transport in Deno 2.9 (logs said "with undefined").
      assert.equal(formatAddr(client.remoteAddr), `127.0.0.1:${acceptor.addr.port}`);
      assert.match(formatAddr(server.remoteAddr), /^127\.0\.0\.1:\d+$/);

      // A reply in two small writes, the pattern Nagle used to hold up.
      await client.write(new Uint8Array([1]));
      assert.deepEqual(await readExactly(server, 1), new Uint8Array([1]));
      await server.write(pattern(30, 1));
      await server.write(pattern(30, 2));
      const reply = await readExactly(client, 60);
      assert.deepEqual(reply.subarray(0, 30), pattern(30, 1));
      assert.deepEqual(reply.subarray(30), pattern(30, 2));

      // Bulk both ways at once; the writers reuse nothing, the readers check every byte.
      const BULK = 8 << 20;
      const up = pattern(BULK, 3);
      const down = pattern(BULK, 4);
      const [, , gotUp, gotDown] = await Promise.all([
        client.write(up),
        server.write(down),
        readExactly(server, BULK),
        readExactly(client, BULK),
      ]);
      assert.ok(gotUp.every((b, i) => b === up[i]), "client -> server bytes differ");
      assert.ok(gotDown.every((b, i) => b === down[i]), "server -> client bytes differ");

      // The client's close is the server's end of stream.
      client.close();
      assert.equal(await server.read(new Uint8Array(16)), null);
      server.close();
      server.close(); // idempotent
      await assert.rejects(server.write(new Uint8Array(1)));
    } finally {
      acceptor.close();
      acceptor.close(); // idempotent
    }
  });
});

Deno.test("TLS acceptor: accept() does not wait for the TLS handshake; close() ends a read that waits for one", async () => {
  await withCerts(async (certs) => {
    const acceptor = new TlsAcceptor({ hostname: "127.0.0.1", port: 0, ...certs });
    const silent = await Deno.connect({ hostname: "127.0.0.1", port: acceptor.addr.port });
    try {
      // A peer that never says hello still yields a link at once ...
      const link = await acceptor.accept();
      // ... whose first read (the handshake) is what a deadline bounds.
      const read = link.read(new Uint8Array(16));
      link.close();
      await assert.rejects(read);
    } finally {
      silent.close();
      acceptor.close();
    }
  });
});

Deno.test("TLS acceptor: a client that refuses the certificate fails the server link's read, not the process", async () => {
  await withCerts(async (certs) => {
    const acceptor = new TlsAcceptor({ hostname: "127.0.0.1", port: 0, ...certs });
    try {
      const dial = tlsDialer({ port: acceptor.addr.port, caCerts: [certs.otherCaCert] });
      const [dialed, link] = await Promise.all([
        dial(new AbortController().signal).then(
          () => null,
          (error: Error) => error,
        ),
        acceptor.accept(),
      ]);
      assert.match(String(dialed?.message), /TLS handshake with 127\.0\.0\.1 failed/);
      const outcome = await link.read(new Uint8Array(16)).then(
        (n) => `read ${n}`,
        () => "rejected",
      );
      // The refused handshake ends the link either as an error or as an end of stream.
      assert.ok(outcome === "rejected" || outcome === "read null", outcome);
      link.close();
    } finally {
      acceptor.close();
    }
  });
});

// The resource sanitizer fails this test if a refused pair left a socket bound.
Deno.test("TLS acceptor: an unusable certificate or key throws at construction, and nothing stays bound", async () => {
  await withCerts(async (certs) => {
    const caKey = await Deno.readTextFile(`${certs.dir}/ca_key.pem`);
    const where = { hostname: "127.0.0.1", port: 0 };
    assert.throws(() => new TlsAcceptor({ ...where, cert: certs.cert, key: "nope" }), /key/i);
    assert.throws(
      () => new TlsAcceptor({ ...where, cert: "nope", key: certs.key }),
      /certificate/i,
    );
    assert.throws(
      () => new TlsAcceptor({ ...where, cert: certs.cert, key: caKey }),
      /KeyMismatch|consistent/,
    );
    // A missing one (an unset environment variable, say): not a listener that fails every handshake.
    const unset = Deno.env.get("IMMORTAL_TEST_UNSET_VARIABLE")!;
    assert.throws(
      () => new TlsAcceptor({ ...where, cert: unset, key: unset }),
      /the TLS certificate is missing/,
    );
    assert.throws(
      () => listen({ ...where, tls: { cert: certs.cert, key: "" } }),
      /TLS key is missing/,
    );
  });
});

Deno.test("TLS: a clean end is one link: the server hanging up without close_notify after the bye is its answer, not a link lost to resume for", async () => {
  await withCerts(async (certs) => {
    using listener = listen({
      hostname: "127.0.0.1",
      port: 0,
      tls: { cert: certs.cert, key: certs.key },
    });
    let dials = 0;
    const tls = tlsDialer({ port: listener.addr.port, caCerts: [certs.caCert] });
    const client = await connect({
      dialer: (signal) => {
        dials++;
        return tls(signal);
      },
    });
    const server = await listener.accept();
    await client.closeWrite();
    assert.equal(await server.read(new Uint8Array(8)), null);
    await server.closeWrite();
    assert.equal(await client.read(new Uint8Array(8)), null);
    await Promise.all([client.closed, server.closed]);
    assert.equal(dials, 1, "no resume for a bye the server had");
  });
});
