// The tunnel CLI's link-failure flags, parsed in-process: each reaches the
// session options, and each bad value gets one sentence naming the flag.
import assert from "node:assert/strict";
import { parseTunnelArgs, type TunnelCliConfig } from "../cli/tunnel.ts";

const CLIENT = ["client", "2001", "127.0.0.1", "2000"];
const SERVER = ["server", "2000", "127.0.0.1", "22"];

function parse(args: string[]): TunnelCliConfig {
  const config = parseTunnelArgs(args);
  assert.notEqual(config, "help");
  return config as TunnelCliConfig;
}

Deno.test("tunnel CLI: heartbeat, dead-link, resume and backoff flags reach the session options", () => {
  const client = parse([
    ...CLIENT,
    "--heartbeat=200",
    "--dead-link=900",
    "--resume-timeout=30000",
    "--backoff-initial=10",
    "--backoff-max=400",
    "--probe-interval=20",
  ]);
  assert.deepEqual(client.session, {
    heartbeatInterval: 200,
    deadLinkTimeout: 900,
    resumeTimeout: 30000,
    backoff: { initial: 10, max: 400, probeInterval: 20 },
    encrypt: false,
  });
  const server = parse([...SERVER, "--dead-link", "3000", "--resume-timeout", "5000"]);
  assert.equal(server.session.deadLinkTimeout, 3000);
  assert.equal(server.session.resumeTimeout, 5000);
  assert.equal(server.session.backoff, undefined, "a server does not dial");
  // Unset flags leave the library's defaults in force.
  assert.deepEqual(parse(SERVER).session, {
    heartbeatInterval: undefined,
    deadLinkTimeout: undefined,
    resumeTimeout: undefined,
    encrypt: false,
  });
  assert.equal(parse([...SERVER, "--encrypt"]).session.encrypt, true);
});

Deno.test("tunnel CLI: relay flags name the tunnel ends, always encrypt, and are checked in one sentence each", () => {
  const relay = ["--relay", "https://relay.example", "--session", "lab", "--key", "k"];
  const server = parse(["server", ...relay, "--name", "db", "127.0.0.1", "5432"]);
  assert.deepEqual(server.relay, { url: "https://relay.example", session: "lab", name: "db" });
  assert.equal(server.peerPort, 5432);
  assert.equal(server.session.encrypt, true, "through a relay, sessions are encrypted");
  const client = parse(["client", "6543", ...relay, "--to", "db", "--relay-secret", "s"]);
  assert.deepEqual(client.relay, {
    url: "https://relay.example",
    session: "lab",
    name: "tunnel-client",
    to: "db",
    secret: "s",
  });
  assert.equal(client.listenPort, 6543);
  // The client's backoff paces its rejoins of the relay too (after a relay restart).
  const paced = parse(["client", "6543", ...relay, "--to", "db", "--backoff-max", "300"]);
  assert.deepEqual(paced.relay?.backoff, { max: 300 });
  const cases: [string[], RegExp][] = [
    [["client", "6543", "--session", "lab", "--to", "db"], /--session needs --relay/],
    [["client", "6543", "--relay", "https://r", "--to", "db", "--key", "k"], /needs --session/],
    [["server", ...relay, "127.0.0.1", "22"], /needs --name/],
    [["client", "6543", ...relay], /needs --to/],
    [["server", ...relay, "--name", "db", "--to", "x", "h", "1"], /--to is for the client/],
    [["client", "6543", "--relay", "ftp://r", "--session", "s", "--to", "d"], /http: or https:/],
    [["client", "6543", ...relay, "--to", "db", "--tls"], /TLS is the relay's/],
    [["client", "6543", ...relay, "--to", "db", "--proxy", "socks://p"], /--proxy must be/],
    // An IPv6 address without its brackets is no URL (it failed later, as the relay's fault).
    [["client", "6543", ...relay, "--to", "db", "--proxy", "http://::1:3128"], /--proxy must be/],
    [["server", ...relay, "--name", "db", "127.0.0.1", "22", "extra"], /unexpected argument/],
    [
      ["server", ...relay, "--name", "db", "--listen-host", "0.0.0.0", "127.0.0.1", "22"],
      /on a relay listens nowhere: --listen-host is for direct mode/,
    ],
  ];
  for (const [args, message] of cases) {
    assert.throws(() => parseTunnelArgs(args), message, args.join(" "));
  }
});

Deno.test("tunnel CLI: a host that cannot be one is refused naming it (it was the platform's words at dial time, exit 1, or nothing until a connection came); [::1] is ::1", () => {
  const cases: [string[], RegExp][] = [
    [["client", "2001", "", "2000"], /<serverHost> is empty$/],
    [
      ["server", "2000", "256.1.1.1", "22"],
      /<forwardHost> must be a host name or an IP address, got "256\.1\.1\.1"$/,
    ],
    [["server", "2000", "db.example:5432", "5432"], /<forwardHost> must be .*"db\.example:5432"/],
    [["client", "2001", "http://h", "2000"], /<serverHost> must be .*"http:\/\/h"/],
    // A name made of hex digits is no IPv6 address with a port.
    [["server", "2000", "db:5432", "5432"], /<forwardHost> must be .*"db:5432"/],
    [["server", "2000", "1.2.3", "22"], /<forwardHost> must be .*"1\.2\.3"/],
    [["server", "2000", "010.0.0.1", "22"], /<forwardHost> must be .*"010\.0\.0\.1"/],
    [["client", "2001", "h", "2000", "--listen-host", "a b"], /--listen-host must be .*"a b"/],
    [["client", "2001", "::1%lo", "2000"], /<serverHost>: a zone \(%lo\) is for link-local/],
    [["client", "2001", "fe80::1%a/b", "2000"], /<serverHost> must be .*"fe80::1%a\/b"/],
  ];
  for (const [args, message] of cases) {
    assert.throws(() => parseTunnelArgs(args), message, args.join(" "));
  }
  const v6 = parse(["client", "2001", "[::1]", "2000", "--listen-host", "::1"]);
  assert.equal(v6.peerHost, "::1");
  assert.equal(v6.listenHost, "::1");
  // Interface names with dots and dashes; the URL form of a zone.
  assert.equal(parse(["client", "2001", "fe80::1%eth0.100", "2000"]).peerHost, "fe80::1%eth0.100");
  assert.equal(parse(["client", "2001", "[fe80::1%br-lan]", "2000"]).peerHost, "fe80::1%br-lan");
  assert.equal(parse(["client", "2001", "[fe80::1%25lo]", "2000"]).peerHost, "fe80::1%lo");
  // Unbracketed, %25 is no URL escape: interface number 25.
  assert.equal(parse(["client", "2001", "fe80::1%251", "2000"]).peerHost, "fe80::1%251");
  assert.equal(parse(["server", "2000", "db.example", "5432"]).peerHost, "db.example");
});

Deno.test("tunnel CLI: bad link-failure flags are refused in one sentence naming the flag", () => {
  const cases: [string[], RegExp][] = [
    [[...CLIENT, "--heartbeat", "0"], /--heartbeat must be a whole number of milliseconds/],
    [[...CLIENT, "--dead-link", "1.5"], /--dead-link must be a whole number/],
    // The session's floor, said of the flag (it was the library's option, exit 1).
    [[...CLIENT, "--heartbeat", "5", "--dead-link", "100"], /--heartbeat .* from 10 to /],
    [[...CLIENT, "--heartbeat", "10", "--dead-link", "9"], /--dead-link .* from 10 to /],
    [[...CLIENT, "--resume-timeout", "10000000000"], /from 1 to 2147483647, got "10000000000"/],
    [[...CLIENT, "--backoff-max=-5"], /--backoff-max must be a whole number/],
    [[...CLIENT, "--heartbeat", "3000"], /--dead-link \(2500 ms\) must be longer than --heartbeat/],
    [[...CLIENT, "--backoff-initial", "900", "--backoff-max", "100"], /must not be shorter/],
    [[...SERVER, "--backoff-initial", "10"], /--backoff-initial is a client option/],
    [[...SERVER, "--probe-interval", "10"], /--probe-interval is a client option/],
  ];
  for (const [args, message] of cases) {
    assert.throws(() => parseTunnelArgs(args), message, args.join(" "));
  }
});

Deno.test("tunnel CLI: an argument too many is named as the user wrote it, with the form expected", () => {
  const relay = ["--relay", "http://127.0.0.1:25080", "--session", "lab", "--key", "k"];
  const cases: [string[], RegExp][] = [
    // The direct client's form with --relay added: the server address is what is too many.
    [
      ["client", "25501", "127.0.0.1", "25080", ...relay, "--to", "x"],
      /: unexpected argument "127\.0\.0\.1": through a relay the client takes no server address .*; expected: tunnel client <listenPort> --relay URL --session S --to NAME$/,
    ],
    [
      ["client", "25501", "127.0.0.1", ...relay, "--to", "x"],
      /: unexpected argument "127\.0\.0\.1"/,
    ],
    // The direct server's form with --relay added: the listen port is the odd one out.
    [
      ["server", "25999", ...relay, "--name", "zz", "127.0.0.1", "25022"],
      /: unexpected argument "25999": through a relay the server listens on no port; expected: tunnel server --relay URL .* <forwardHost> <forwardPort>$/,
    ],
    [
      ["server", ...relay, "--name", "zz", "127.0.0.1", "22", "extra"],
      /: unexpected argument "extra"; expected: tunnel server --relay/,
    ],
    [
      ["server", "2000", "127.0.0.1", "22", "extra"],
      /: unexpected argument "extra"; expected: tunnel server <listenPort> <forwardHost> <forwardPort>$/,
    ],
    [
      ["client", "2001", "127.0.0.1", "2000", "extra"],
      /: unexpected argument "extra"; expected: tunnel client <listenPort> <serverHost> <serverPort>$/,
    ],
  ];
  for (const [args, message] of cases) {
    assert.throws(() => parseTunnelArgs(args), message, args.join(" "));
    // Never one of the placeholders the parser puts in for what a relay form leaves out.
    assert.throws(() => parseTunnelArgs(args), (e: Error) => !/"(-|0)"/.test(e.message));
  }
});

Deno.test("tunnel CLI: the waits through a relay are flags in seconds, for the end they concern", () => {
  const relay = ["--relay", "http://r.example", "--session", "lab", "--key", "k"];
  const server = parse([
    "server",
    ...relay,
    "--name",
    "db",
    "--relay-wait",
    "5",
    "--name-wait",
    "0.5",
    "h",
    "1",
  ]);
  assert.equal(server.relay?.startWait, 5000);
  assert.equal(server.relay?.nameWait, 500);
  assert.equal(parse(["client", "1", ...relay, "--to", "db"]).relay?.startWait, undefined);
  const cases: [string[], RegExp][] = [
    [["client", "1", ...relay, "--to", "db", "--name-wait", "5"], /--name-wait is for the server/],
    [
      ["client", "1", ...relay, "--to", "db", "--relay-wait=-1"],
      /--relay-wait must be 0 or a number of seconds/,
    ],
    [["client", "1", "h", "2", "--relay-wait", "5"], /--relay-wait needs --relay/],
  ];
  for (const [args, message] of cases) {
    assert.throws(() => parseTunnelArgs(args), message, args.join(" "));
  }
});

Deno.test("tunnel CLI: key errors name the key file once, and the command that makes a key", async () => {
  const dir = await Deno.makeTempDir({ prefix: "immortal-key-" });
  try {
    await Deno.writeTextFile(`${dir}/blank.key`, "\nsecond line\n");
    assert.throws(
      () => parseTunnelArgs([...SERVER, "--key-file", `${dir}/blank.key`]),
      new RegExp(`: the key file ${dir}/blank\\.key holds no key \\(its first line is empty\\)$`),
    );
    const missing = `${dir}/missing.key`;
    assert.throws(
      () => parseTunnelArgs([...SERVER, "--key-file", missing]),
      (error: Error) => {
        assert.match(error.message, /^cannot read key file .*missing\.key: No such file/);
        assert.equal(error.message.split("missing.key").length - 1, 1, error.message);
        return true;
      },
    );
    // The wrong file (a path mixed up): refused, not a key made of its first bytes.
    const large = `${dir}/disk.img`;
    await Deno.writeFile(large, new Uint8Array(100_000).fill(0x61));
    assert.throws(
      () => parseTunnelArgs([...SERVER, "--key-file", large]),
      /the key file .*disk\.img is 100000 bytes, too large for one line: is it the right file\?$/,
    );
    const binary = `${dir}/photo.jpg`;
    await Deno.writeFile(binary, new Uint8Array([0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a]));
    for (const flag of ["--key-file", "--relay-secret-file"]) {
      const relayArgs = flag === "--key-file"
        ? SERVER
        : ["client", "1", "--relay", "http://r", "--session", "s", "--to", "db", "--key", "k"];
      assert.throws(
        () => parseTunnelArgs([...relayArgs, flag, binary]),
        /: the (key|relay secret) file .*photo\.jpg is not text: is it the right file\?$/,
      );
    }
    assert.throws(
      () => parseTunnelArgs(["client", "1", "--relay", "http://r", "--session", "s", "--to", "db"]),
      /make one with tunnel keygen \(`deno run cli\/tunnel\.ts keygen > tunnel\.key`\)/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tunnel CLI: a key file's line loses the blanks an editor left at its end", async () => {
  const dir = await Deno.makeTempDir({ prefix: "immortal-key-" });
  try {
    await Deno.writeTextFile(`${dir}/tunnel.key`, "  k3y \t\r\nsecond line\n");
    const config = parseTunnelArgs([...SERVER, "--key-file", `${dir}/tunnel.key`]);
    assert.ok(config !== "help");
    assert.equal(config.key, "  k3y", "leading blanks kept, trailing ones dropped");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
