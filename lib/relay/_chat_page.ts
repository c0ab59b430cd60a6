/**
 * The browser chat page a relay serves at `/chat`: plain HTML and JavaScript,
 * no build step. Everything from the network is shown with `textContent`,
 * never as markup.
 *
 * The page is a relay node like `RelayNode`: it tries a WebSocket
 * and falls back to HTTP streaming (2.5) when that fails to open or closes
 * before the welcome; it gives an `id` and numbers its messages (2.21), so a
 * message is shown "sent" once the relay acknowledges it, "nobody else here"
 * when the relay dropped it unheard, and after a blip the page resumes where
 * it was, gets what it missed once, and marks the gap.
 *
 * @module
 */

// String.raw: the page's own backslashes ("\n" in its SSE reader, regular
// expressions) reach the browser as written. No backticks or dollar-brace
// inside, so the page's script builds strings with `+`.

/** The chat page's HTML. */
export const CHAT_PAGE_HTML = String.raw`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>immortal relay chat</title>
<link rel="icon" href="data:,">
<style>
  * { box-sizing: border-box; }
  [hidden] { display: none !important; }
  html, body { height: 100%; }
  body { margin: 0; font: 15px/1.4 system-ui, sans-serif; color: #1d1d1f; background: #f6f6f7; }
  /* 16px fields: phones do not zoom into them. min-width 0: a field never widens its row. */
  input, button { font: inherit; font-size: 16px; min-width: 0; }
  input { padding: .45em .6em; border: 1px solid #bbb; border-radius: 6px; background: #fff; }
  button { padding: .45em 1em; border: 1px solid #2a5db0; border-radius: 6px; background: #2f6fd6; color: #fff; cursor: pointer; }
  h1 { font-size: 1.3em; margin: 0; }
  #join { max-width: 26em; margin: 0 auto; padding: 1.5em 1em; display: grid; gap: .75em; }
  #join label { display: grid; gap: .2em; }
  #join-error { margin: 0; padding: .5em .7em; border-radius: 6px; background: #fde8e8; color: #8a1010; overflow-wrap: anywhere; }
  /* Grid children get minmax(0, ...) tracks and min-width 0, and text wraps
     anywhere: one long word can never widen the page. */
  #chat { height: 100vh; height: 100dvh; display: grid; gap: .5em; padding: .5em;
    grid-template-columns: minmax(0, 1fr) minmax(0, 14em);
    grid-template-rows: auto minmax(0, 1fr) auto;
    grid-template-areas: "head head" "log side" "send side"; }
  header { grid-area: head; display: flex; flex-wrap: wrap; gap: .2em .9em; align-items: baseline; min-width: 0; overflow-wrap: anywhere; }
  #state { color: #666; }
  #state::before { content: "\25CF"; margin-right: .3em; color: #c08a00; }
  #state[data-state="connected"]::before { color: #17803d; }
  #state[data-state="disconnected"]::before { color: #b00020; }
  #log { grid-area: log; margin: 0; padding: .4em .6em; list-style: none; overflow-y: auto; overflow-x: hidden;
    min-width: 0; background: #fff; border: 1px solid #ddd; border-radius: 6px; overflow-wrap: anywhere; }
  #log li { padding: .15em .3em; }
  #log time { color: #888; font-size: .85em; margin-right: .5em; font-variant-numeric: tabular-nums; }
  .from { font-weight: 600; margin-right: .4em; }
  .to { color: #6b3fb8; margin-right: .4em; }
  .text { white-space: pre-wrap; }
  li.directed { background: #f3eefc; border-radius: 4px; }
  .status { color: #888; font-size: .85em; margin-left: .5em; }
  li[data-status="waiting"] .status, li[data-status="alone"] .status, li[data-status="refused"] .status { color: #b45309; }
  li.note { color: #666; font-style: italic; }
  li.gap { color: #8a4b00; font-style: normal; border-top: 1px dashed #d9a36a; margin-top: .3em; }
  li.missed { color: #b00020; }
  li.recovered { border-left: 3px solid #e0b25b; }
  #side { grid-area: side; min-width: 0; overflow-y: auto; border-left: 1px solid #ddd; padding-left: .6em; }
  #side h2 { font-size: .8em; margin: .2em 0 .4em; color: #555; text-transform: uppercase; letter-spacing: .05em; }
  #members { list-style: none; margin: 0; padding: 0; min-width: 0; overflow-wrap: anywhere; }
  #members .member { background: none; border: 0; color: #2a5db0; padding: .1em 0; text-align: left; font-size: inherit; max-width: 100%; overflow-wrap: anywhere; }
  #members .self { font-weight: 600; }
  #members .empty { color: #888; font-style: italic; }
  #send { grid-area: send; display: flex; gap: .4em; min-width: 0; }
  #text { flex: 1 1 auto; }
  #send button { flex: none; }
  /* Phones: one column, the member list above the log (still visible). */
  @media (max-width: 600px) {
    #chat { padding: .4em; grid-template-columns: minmax(0, 1fr); grid-template-rows: auto auto minmax(0, 1fr) auto;
      grid-template-areas: "head" "side" "log" "send"; }
    #side { border-left: 0; padding-left: 0; max-height: 5.5em; display: flex; gap: .6em; align-items: baseline; }
    #side h2 { margin: 0; flex: none; }
    #members { flex: 1; display: flex; flex-wrap: wrap; gap: .1em .9em; }
  }
</style>
</head>
<body>
<form id="join">
  <h1>immortal relay chat</h1>
  <label>Session <input id="session" value="lobby" required autocomplete="off"></label>
  <label>Nickname <input id="nickname" required autocomplete="nickname"></label>
  <label>Relay secret <input id="secret" type="password" placeholder="if the relay has one" autocomplete="off"></label>
  <p id="join-error" role="alert" hidden></p>
  <button>Join</button>
</form>
<div id="chat" hidden>
  <header>
    <span>Session <b id="session-name"></b> as <b id="me"></b></span>
    <span id="state" role="status" data-state="connecting" data-transport=""></span>
  </header>
  <ul id="log"></ul>
  <aside id="side"><h2>Members</h2><ul id="members"></ul></aside>
  <form id="send">
    <!-- 16000 UTF-16 units stay under the relay's 64 KiB frame limit even when JSON escapes them. -->
    <input id="text" autocomplete="off" maxlength="16000" aria-label="message" placeholder="message, or /to name message">
    <button id="send-button">Send</button>
  </form>
</div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
/** Per attempt, like RelayNode's connectTimeout. */
const CONNECT_TIMEOUT = 10000;
/** Join refusals that a retry cannot fix (2.15); anything else, e.g. "unavailable", is retried. */
const FINAL = new Set(["unauthorized", "bad-request", "bad-hello", "full", "too-large"]);
const KIND = { websocket: "WebSocket", http: "HTTP streaming" };

class Refused extends Error {
  constructor(code, message) {
    super(message || code);
    this.code = code;
  }
}

/** The room this page is in, or null on the join form. A new join starts afresh. */
let chat = null;

function newChat(session, nickname, secret) {
  return {
    session, nickname, secret,
    id: randomId(), // names this page's messages for the relay and the receivers (2.21)
    token: undefined, // reclaims the nickname, or replaces the connection, after a blip (2.10)
    position: undefined, // { epoch, offset }: where the page is in the room's history
    seen: new Map(), // sender id -> highest seq shown: a resend after a relay restart is dropped
    seq: 0,
    outbox: [], // { frame, li } the relay has not acknowledged, in seq order: resent after a blip
    members: new Map(), // nickname -> role, others only
    joined: false, reliable: false,
    preferred: "websocket", conn: null, generation: 0, attempt: 0, welcomedAt: -Infinity, shortLived: 0, timer: 0,
    keepAlive: 1000, lastHeard: 0,
    recovering: null, // after a recovered welcome: { upTo, count, marker, base }
  };
}

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

// ---- the log -------------------------------------------------------------

function stamp() {
  const now = new Date();
  const time = document.createElement("time");
  time.dateTime = now.toISOString();
  time.title = now.toLocaleString();
  time.textContent = String(now.getHours()).padStart(2, "0") + ":" + String(now.getMinutes()).padStart(2, "0");
  return time;
}

function span(cls, text) {
  const s = document.createElement("span");
  s.className = cls;
  s.textContent = text;
  return s;
}

/** Appends a line; follows the end of the log only if the reader was there (not mid-scrollback). */
function append(li) {
  const log = $("log");
  const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.append(li);
  if (atEnd) log.scrollTop = log.scrollHeight;
  return li;
}

function note(text, cls) {
  const li = document.createElement("li");
  li.className = "note" + (cls ? " " + cls : "");
  li.append(stamp(), span("what", text));
  return append(li);
}

function message(from, to, text, mine) {
  const li = document.createElement("li");
  li.className = "msg" + (mine ? " mine" : "") + (to ? " directed" : "");
  li.append(stamp(), span("from", from));
  // A no-break space: the arrow stays with the name it points at.
  if (to) li.append(span("to", "\u2192\u00a0" + to));
  li.append(span("text", text));
  if (mine) li.append(span("status", ""));
  return append(li);
}

/** An outgoing line's state: waiting, sending, sent, alone, refused. */
function mark(item, text, status) {
  item.li.dataset.status = status;
  item.li.querySelector(".status").textContent = text;
}

function renderMembers() {
  const ul = $("members");
  ul.replaceChildren();
  const self = document.createElement("li");
  self.className = "self";
  self.textContent = chat.nickname + " (you)";
  ul.append(self);
  for (const name of [...chat.members.keys()].sort()) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "member";
    button.textContent = name;
    button.title = "a message to " + name + " only";
    button.onclick = () => {
      const input = $("text");
      const current = parseTo(input.value);
      input.value = "/to " + name + " " + (current ? current.text : input.value);
      input.focus();
    };
    li.append(button);
    ul.append(li);
  }
  if (chat.members.size === 0) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "nobody else here";
    ul.append(li);
  }
}

function setState(state, text) {
  const el = $("state");
  el.dataset.state = state;
  el.dataset.transport = state === "connected" ? chat.conn.kind : "";
  el.textContent = text;
}

/** "/to NAME TEXT" as { to, text }, or null. Nicknames may hold spaces: the longest member name wins. */
function parseTo(value) {
  if (!/^\/to\s/.test(value)) return null;
  const rest = value.slice(4).replace(/^\s+/, "");
  let to = null;
  for (const name of chat.members.keys()) {
    if ((rest === name || rest.startsWith(name + " ")) && (to === null || name.length > to.length)) to = name;
  }
  // Not a member (yet): the relay will say so (no-such-node).
  if (to === null) to = rest.split(/\s/, 1)[0];
  return { to, text: rest.slice(to.length).replace(/^\s/, "") };
}

// ---- transports: WebSocket, else HTTP streaming (as RelayNode does) ------

/**
 * A relay path, relative to the page: behind a proxy that serves the relay
 * under a prefix (and strips it), the page and its relay paths share it. The
 * page's query goes along, as RelayNode's does: a gateway in front may route
 * or admit by it.
 */
function relayUrl(path) {
  const url = new URL(path, location.href);
  url.search = location.search;
  return url;
}

/**
 * Opens a WebSocket and sends the hello; resolves with { transport, welcome }.
 * Frames after the welcome wait for transport.start(), so the welcome is
 * handled before the messages the relay replays right behind it.
 */
function openWebSocket(hello, hooks) {
  return new Promise((resolve, reject) => {
    const url = relayUrl("relay/ws");
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    let socket;
    try {
      socket = new WebSocket(url);
    } catch (error) {
      reject(error);
      return;
    }
    let welcomed = false, started = false, dropped = false;
    const early = [];
    const timer = setTimeout(() => {
      reject(new Error("no welcome within " + CONNECT_TIMEOUT / 1000 + " s"));
      socket.close();
    }, CONNECT_TIMEOUT);
    const transport = {
      kind: "websocket",
      send(frame) {
        if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
      },
      start() {
        started = true;
        for (const frame of early.splice(0)) hooks.frame(frame);
      },
      drop() {
        dropped = true;
        socket.close();
      },
      bye() {
        transport.send({ t: "bye" });
        transport.drop();
      },
    };
    socket.onopen = () => socket.send(JSON.stringify(hello));
    socket.onmessage = (event) => {
      const frame = parseFrame(event.data);
      if (frame === null) return;
      if (welcomed) {
        if (started) hooks.frame(frame);
        else early.push(frame);
      } else if (frame.t === "welcome") {
        welcomed = true;
        clearTimeout(timer);
        resolve({ transport, welcome: frame });
      } else if (frame.t === "error") {
        clearTimeout(timer);
        reject(new Refused(frame.code, frame.message));
        socket.close();
      }
    };
    socket.onclose = (event) => {
      clearTimeout(timer);
      // 1006: the browser saw the connection break, with no close from the relay.
      const reason = event.reason || (event.code === 1006 ? "connection lost" : "connection closed (" + event.code + ")");
      if (!welcomed) reject(new Error("WebSocket: " + reason));
      else if (!dropped) hooks.closed(reason, event.code);
    };
  });
}

function parseFrame(text) {
  let frame;
  try {
    frame = JSON.parse(text);
  } catch {
    return null;
  }
  return frame !== null && typeof frame === "object" && typeof frame.t === "string" ? frame : null;
}

/** Server-Sent Events from a fetch body, as the relay writes them (2.5). */
async function* sse(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trimStart();
      }
      if (data !== "") yield { event, data };
    }
  }
}

/** The next frame of an event stream, or { ended: why }. */
async function nextFrame(events) {
  for (;;) {
    const next = await events.next();
    // Without the relay's close event, the connection broke (2.5).
    if (next.done) return { ended: "connection lost (the stream ended)" };
    if (next.value.event === "close") {
      let close = null;
      try {
        close = JSON.parse(next.value.data);
      } catch {
        // Still the end.
      }
      return { ended: (close && close.reason) || "closed by the relay", code: close && close.code };
    }
    const frame = parseFrame(next.value.data);
    if (frame !== null) return frame;
  }
}

/**
 * POST /relay/stream with the hello; the relay's frames come down the event
 * stream, ours go up in POST /relay/send, one POST in flight at a time
 * carrying everything queued meanwhile (order kept, 2.5).
 */
async function openHttp(hello, hooks) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), CONNECT_TIMEOUT);
  const headers = { "content-type": "application/json" };
  // In a header, the secret stays out of request bodies that proxies may log (2.3).
  if (hello.secret !== undefined) headers["x-relay-secret"] = hello.secret;
  let response;
  try {
    response = await fetch(relayUrl("relay/stream"), {
      method: "POST",
      headers,
      body: JSON.stringify({ ...hello, secret: undefined }),
      signal: abort.signal,
      cache: "no-store",
    });
  } catch (error) {
    clearTimeout(timer);
    throw new Error("HTTP streaming: " + error.message);
  }
  if (!response.ok) {
    clearTimeout(timer);
    // A refused join is an HTTP status with the relay's JSON reason; a proxy's own error page is not.
    const refusal = await response.json().catch(() => null);
    if (refusal && typeof refusal.error === "string") throw new Refused(refusal.error, refusal.message);
    throw new Error("HTTP streaming: status " + response.status);
  }
  const events = sse(response.body);
  let welcome;
  try {
    welcome = await nextFrame(events);
  } catch (error) {
    throw new Error("HTTP stream broke before the welcome: " + error.message);
  } finally {
    clearTimeout(timer);
  }
  if (welcome.t !== "welcome" || typeof welcome.stream !== "string") {
    abort.abort();
    if (welcome.t === "error") throw new Refused(welcome.code, welcome.message);
    throw new Error(welcome.ended || "the relay did not welcome the page");
  }
  const pending = [];
  let posting = false, done = false;
  const fail = (reason, code) => {
    if (done) return;
    done = true;
    abort.abort();
    hooks.closed(reason, code);
  };
  // keepalive: the bye still goes out while the page unloads.
  const post = (frames, keepalive) =>
    fetch(relayUrl("relay/send"), {
      method: "POST",
      headers: { "content-type": "application/json", "x-relay-stream": welcome.stream },
      body: JSON.stringify(frames),
      keepalive,
      signal: keepalive ? undefined : abort.signal,
    });
  const flush = async () => {
    if (posting) return;
    posting = true;
    try {
      while (pending.length > 0 && !done) {
        const res = await post(pending.splice(0), false);
        if (!res.ok) throw new Error("the relay answered " + res.status + " to a send");
      }
    } catch (error) {
      fail("send failed: " + error.message);
    } finally {
      posting = false;
    }
  };
  const transport = {
    kind: "http",
    send(frame) {
      if (done) return;
      pending.push(frame);
      flush();
    },
    async start() {
      try {
        for (;;) {
          const frame = await nextFrame(events);
          if (frame.ended) return fail(frame.ended, frame.code);
          hooks.frame(frame);
        }
      } catch (error) {
        fail("connection lost (" + error.message + ")");
      }
    },
    drop() {
      done = true;
      abort.abort();
    },
    bye() {
      if (done) return;
      post([...pending, { t: "bye" }], true).catch(() => {});
      transport.drop();
    },
  };
  return { transport, welcome };
}

const OPEN = { websocket: openWebSocket, http: openHttp };

// ---- the connection ------------------------------------------------------

/** One attempt: the last transport that worked first, then the other one. */
async function connect() {
  const c = chat;
  const generation = ++c.generation;
  c.timer = 0;
  setState(c.joined ? "reconnecting" : "connecting", c.joined ? "reconnecting\u2026" : "connecting\u2026");
  const hello = {
    t: "hello",
    session: c.session,
    nickname: c.nickname,
    secret: c.secret || undefined,
    token: c.token,
    id: c.id,
    recover: c.position && { epoch: c.position.epoch, offset: c.position.offset },
  };
  // Frames and closes of a transport this page has given up on are ignored.
  const current = () => chat === c && c.generation === generation;
  const hooks = {
    frame: (frame) => current() && onFrame(frame),
    closed: (reason, code) => current() && lost(reason, code),
  };
  let failure = null;
  for (const kind of [c.preferred, c.preferred === "websocket" ? "http" : "websocket"]) {
    try {
      const { transport, welcome } = await OPEN[kind](hello, hooks);
      if (!current()) return transport.drop();
      c.conn = transport;
      c.preferred = kind;
      onWelcome(welcome);
      transport.start();
      return;
    } catch (error) {
      if (!current()) return;
      // The transport that worked last says best why we are still out.
      failure = failure || error;
      if (error instanceof Refused) {
        if (FINAL.has(error.code)) return refused(error);
        failure = error;
        break; // the relay answered: the other transport would hear the same
      }
    }
  }
  retry(failure.message);
}

/** Waits out the backoff (at once, then 250 ms doubling to 5 s, jittered), counting down. */
function retry(reason) {
  const c = chat;
  const wait = c.attempt === 0 ? 0 : Math.min(5000, 250 * 2 ** (c.attempt - 1)) * (0.8 + Math.random() * 0.4);
  c.attempt++;
  const due = performance.now() + wait;
  const tick = () => {
    if (chat !== c) return;
    const left = due - performance.now();
    if (left <= 0) return connect();
    setState("disconnected", "disconnected (" + reason + ") \u00b7 reconnecting in " + Math.ceil(left / 1000) + " s");
    c.timer = setTimeout(tick, Math.min(1000, left));
  };
  tick();
}

function onWelcome(welcome) {
  const c = chat;
  const back = c.joined;
  c.joined = true;
  c.welcomedAt = performance.now();
  c.nickname = welcome.nickname;
  c.token = welcome.token;
  c.keepAlive = welcome.keepAlive > 0 ? welcome.keepAlive : 1000;
  c.lastHeard = performance.now();
  $("me").textContent = c.nickname;
  const before = c.members;
  c.members = new Map(welcome.members.map((m) => [m.nickname, m.role]));
  renderMembers();
  setState("connected", "connected via " + KIND[c.conn.kind]);
  let marker = null;
  if (back) {
    marker = note("reconnected via " + KIND[c.conn.kind], "gap");
    // Announce only who came or went meanwhile: the others were there all along.
    for (const name of c.members.keys()) if (!before.has(name)) note(name + " joined while you were away");
    for (const name of before.keys()) if (!c.members.has(name)) note(name + " left while you were away");
  }
  c.reliable = typeof welcome.epoch === "string";
  if (c.reliable) {
    if (welcome.recovered === true) {
      // What the page missed follows at once: the messages up to the room's offset now.
      const what = marker.querySelector(".what");
      if (welcome.offset === c.position.offset) what.textContent += " \u00b7 nothing missed";
      c.recovering = { upTo: welcome.offset, count: 0, marker, base: what.textContent };
    } else {
      if (c.position) {
        note(
          welcome.missed === "window"
            ? "some messages sent while you were away are lost: the relay no longer holds them all"
            : "the relay restarted or forgot this session: messages sent while you were away may be lost",
          "gap missed",
        );
      }
      c.position = { epoch: welcome.epoch, offset: welcome.offset };
    }
    acked(welcome.acked);
  }
  for (const item of c.outbox) {
    c.conn.send(item.frame);
    mark(item, "sending\u2026", "sending");
  }
  if (!c.reliable) acked(c.seq); // a relay without acks: sent is all we can know
}

function onFrame(frame) {
  const c = chat;
  c.lastHeard = performance.now();
  switch (frame.t) {
    case "ping":
      c.conn.send({ t: "pong" });
      break;
    case "msg":
      onMessage(frame);
      break;
    case "join":
      c.members.set(frame.nickname, frame.role);
      renderMembers();
      note(frame.nickname + " joined");
      break;
    case "leave":
      c.members.delete(frame.nickname);
      renderMembers();
      note(frame.nickname + (frame.reason === "left" ? " left" : " is gone (connection lost)"));
      break;
    case "ack":
      acked(frame.seq);
      break;
    case "error":
      onError(frame);
      break;
    case "pipe":
      c.conn.send({ t: "pipe-refuse", id: frame.id, reason: "a chat page takes no pipes" });
      break;
  }
}

function onMessage(frame) {
  const c = chat;
  const p = c.position;
  // Shown once: not a replay of what the page has (offset), nor a resend after a relay restart (id, seq).
  if (typeof frame.offset === "number" && p) {
    if (frame.offset <= p.offset) return;
    p.offset = frame.offset;
  }
  if (typeof frame.id === "string" && typeof frame.seq === "number") {
    const last = c.seen.get(frame.id);
    if (last !== undefined && frame.seq <= last) return;
    c.seen.delete(frame.id);
    c.seen.set(frame.id, frame.seq);
    if (c.seen.size > 10000) c.seen.delete(c.seen.keys().next().value);
  }
  const text = typeof frame.text === "string" ? frame.text : JSON.stringify(frame.numbers);
  const li = message(frame.from, frame.to ? "you" : undefined, text, false);
  const r = c.recovering;
  if (r && typeof frame.offset === "number" && frame.offset <= r.upTo) {
    r.count++;
    li.classList.add("recovered");
    r.marker.querySelector(".what").textContent = r.base + " \u00b7 recovered " + r.count +
      " missed message" + (r.count === 1 ? "" : "s");
  }
}

function acked(seq) {
  const outbox = chat.outbox;
  while (outbox.length > 0 && outbox[0].frame.seq <= seq) mark(outbox.shift(), "sent", "sent");
}

function onError(frame) {
  const outbox = chat.outbox;
  const index = typeof frame.seq === "number" ? outbox.findIndex((i) => i.frame.seq === frame.seq) : -1;
  if (index < 0) return note("relay: " + frame.message, "problem");
  const [item] = outbox.splice(index, 1);
  if (frame.code === "alone") mark(item, "nobody else here", "alone");
  else mark(item, "not delivered: " + frame.message, "refused");
}

function lost(reason, code) {
  const c = chat;
  c.generation++;
  const conn = c.conn;
  c.conn = null;
  if (conn) conn.drop();
  c.recovering = null;
  note("disconnected: " + reason, "gap");
  for (const item of c.outbox) mark(item, "waiting to send", "waiting");
  // Redialed at once, unless the relay closed it (4xxx) soon after its
  // welcome: after n such in a row (a relay whose cluster store is down),
  // the backoff starts n steps in, as RelayNode's does.
  const refused = code >= 4000 && code < 5000;
  c.shortLived = refused && performance.now() - c.welcomedAt < 5000 ? c.shortLived + 1 : 0;
  c.attempt = c.shortLived;
  retry(reason);
}

/** A refused join: back to the form, fields as they were, the relay's reason shown. */
function refused(error) {
  const c = chat;
  chat = null;
  clearTimeout(c.timer);
  if (c.conn) c.conn.drop();
  $("chat").hidden = true;
  $("join").hidden = false;
  $("join-error").textContent = "The relay refused to let you in: " + error.message + " (" + error.code + ")";
  $("join-error").hidden = false;
  (error.code === "unauthorized" ? $("secret") : $("nickname")).focus();
}

// The relay's keep-alive pings every keepAlive ms: silence this long means the link is dead,
// even if the browser has not noticed.
setInterval(() => {
  const c = chat;
  if (c && c.conn && performance.now() - c.lastHeard > 3 * c.keepAlive) {
    lost("nothing heard from the relay for " + (3 * c.keepAlive) / 1000 + " s");
  }
}, 500);

// Back online: try now rather than at the end of the backoff.
addEventListener("online", () => {
  if (chat && chat.timer) {
    clearTimeout(chat.timer);
    connect();
  }
});

// A closed tab has left: say so, rather than be waited for as a blip.
addEventListener("pagehide", () => {
  if (chat && chat.conn) chat.conn.bye();
});

$("join").onsubmit = (event) => {
  event.preventDefault();
  chat = newChat($("session").value.trim(), $("nickname").value.trim(), $("secret").value);
  $("join-error").hidden = true;
  $("log").replaceChildren();
  $("session-name").textContent = chat.session;
  $("me").textContent = chat.nickname;
  $("join").hidden = true;
  $("chat").hidden = false;
  renderMembers();
  connect();
  $("text").focus();
};

$("send").onsubmit = (event) => {
  event.preventDefault();
  const input = $("text");
  const value = input.value;
  if (!chat || value.trim() === "") return;
  const directed = parseTo(value);
  if (directed && (directed.to === "" || directed.text === "")) {
    note("to send to one member: /to name message (or click a name)", "problem");
    return;
  }
  const frame = { t: "msg", seq: ++chat.seq, text: directed ? directed.text : value };
  if (directed) frame.to = directed.to;
  const item = { frame, li: message(chat.nickname, frame.to, frame.text, true) };
  chat.outbox.push(item);
  // While disconnected it waits in the outbox, and goes out on reconnect.
  if (chat.conn) {
    chat.conn.send(frame);
    mark(item, "sending\u2026", "sending");
    if (!chat.reliable) acked(frame.seq);
  } else mark(item, "waiting to send", "waiting");
  input.value = "";
};
</script>
</body>
</html>
`;

/** The chat page as a response. */
export function chatPage(): Response {
  return new Response(CHAT_PAGE_HTML, { headers: { "content-type": "text/html; charset=utf-8" } });
}
