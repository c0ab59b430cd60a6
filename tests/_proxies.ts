/**
 * Real proxies on loopback for relay tests, each with its own config in a
 * temporary folder: Debian's tinyproxy (forward) and nginx (reverse). Nothing
 * of the system's configuration is read or changed.
 */

import { freePort } from "./_helpers.ts";

export interface Proxy extends AsyncDisposable {
  port: number;
  /** The proxy's own log so far. */
  log(): Promise<string>;
}

async function _waitForPort(port: number, child: Deno.ChildProcess, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return;
    } catch (error) {
      const exited = await Promise.race([
        child.status,
        new Promise((r) => setTimeout(r, 50, null)),
      ]);
      if (exited || Date.now() > deadline) throw new Error(`${what} did not start: ${error}`);
    }
  }
}

function _spawn(cmd: string, args: string[]) {
  return new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).spawn();
}

async function _stop(child: Deno.ChildProcess, dir: string) {
  try {
    child.kill("SIGTERM");
  } catch {
    // Already gone.
  }
  await child.status;
  await child.stderr.cancel();
  await Deno.remove(dir, { recursive: true });
}

/**
 * tinyproxy as a forward proxy, with its defaults for CONNECT: only to port
 * 443 (and 563), as many corporate proxies do, so WebSocket tunnels to the
 * relay's port are refused while plain HTTP requests pass.
 */
export async function startTinyproxy(): Promise<Proxy> {
  const dir = await Deno.makeTempDir({ prefix: "immortal-tinyproxy-" });
  await Deno.chmod(dir, 0o777); // tinyproxy drops to "nobody" and writes its log here
  const port = freePort();
  await Deno.writeTextFile(
    `${dir}/tinyproxy.conf`,
    [
      "User nobody",
      "Group nogroup",
      `Port ${port}`,
      "Listen 127.0.0.1",
      "Timeout 600",
      "Allow 127.0.0.1",
      "ConnectPort 443",
      "ConnectPort 563",
      "MaxClients 100",
      `LogFile "${dir}/tinyproxy.log"`,
      "LogLevel Connect",
    ].join("\n") + "\n",
  );
  const child = _spawn("tinyproxy", ["-d", "-c", `${dir}/tinyproxy.conf`]);
  await _waitForPort(port, child, "tinyproxy");
  return {
    port,
    log: () => Deno.readTextFile(`${dir}/tinyproxy.log`).catch(() => ""),
    [Symbol.asyncDispose]: () => _stop(child, dir),
  };
}

/**
 * nginx as a reverse proxy in front of `upstream` (one port, or several it
 * balances over and fails over between), with a plain `proxy_pass` and
 * nginx's defaults otherwise: response buffering on, HTTP/1.0 to the
 * upstream, no WebSocket upgrade headers passed. With `websocket`, the usual
 * lines for WebSocket and streaming (HTTP/1.1, Upgrade, no buffering).
 */
export async function startNginx(
  upstream: number | number[],
  options: { websocket?: boolean; prefix?: string; forwardedFor?: string; maxBody?: string } = {},
): Promise<Proxy> {
  // Under a prefix, nginx strips it on the way (the relay knows only its own paths).
  const location = options.prefix ? `${options.prefix}/` : "/";
  const pass = options.prefix ? "http://relays/" : "http://relays";
  const ports = typeof upstream === "number" ? [upstream] : upstream;
  const dir = await Deno.makeTempDir({ prefix: "immortal-nginx-" });
  const port = freePort();
  await Deno.writeTextFile(
    `${dir}/nginx.conf`,
    `
user root;
worker_processes 1;
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 512; }
http {
  access_log ${dir}/access.log;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream relays {
${ports.map((p) => `    server 127.0.0.1:${p} max_fails=1 fail_timeout=2s;`).join("\n")}
  }
  server {
    listen 127.0.0.1:${port};
    location ${location} {
      proxy_pass ${pass};
      proxy_next_upstream error timeout;${
      options.maxBody
        ? `
      client_max_body_size ${options.maxBody};`
        : ""
    }${
      // Says who the client is, from an address of its own (the relay trusts that one).
      options.forwardedFor
        ? `
      proxy_bind ${options.forwardedFor};
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;`
        : ""}${
      options.websocket
        ? `
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $http_connection;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 1h;`
        : ""
    }
    }
  }
}
`,
  );
  const child = _spawn("nginx", ["-p", dir, "-c", `${dir}/nginx.conf`, "-e", `${dir}/error.log`]);
  await _waitForPort(port, child, "nginx");
  return {
    port,
    log: () => Deno.readTextFile(`${dir}/access.log`).catch(() => ""),
    [Symbol.asyncDispose]: () => _stop(child, dir),
  };
}
