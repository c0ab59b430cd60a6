/**
 * The browser chat page a relay serves at `/chat`: plain HTML and JavaScript,
 * no build step. Everything from the network is shown with `textContent`,
 * never as markup.
 *
 * @module
 */

/** The chat page's HTML. */
export const CHAT_PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>immortal relay chat</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 0; display: grid; grid-template-columns: 1fr 14em; height: 100vh; }
  #join, #chat { padding: 1em; }
  #chat { display: none; flex-direction: column; height: calc(100vh - 2em); }
  #log { flex: 1; overflow-y: auto; border: 1px solid #ccc; padding: .5em; margin: 0 0 .5em; list-style: none; }
  #log .status { color: #777; font-style: italic; }
  #log .from { font-weight: bold; margin-right: .4em; }
  aside { border-left: 1px solid #ccc; padding: 1em; }
  #members { list-style: none; padding: 0; }
  #state { color: #777; }
  form { display: flex; gap: .4em; }
  #text { flex: 1; }
</style>
</head>
<body>
<main>
  <form id="join">
    <input id="session" placeholder="session" value="lobby" required>
    <input id="nickname" placeholder="nickname" required maxlength="32">
    <input id="secret" placeholder="relay secret (if any)" type="password">
    <button>Join</button>
  </form>
  <div id="chat">
    <p>Session <b id="session-name"></b> as <b id="me"></b> <span id="state"></span></p>
    <ul id="log"></ul>
    <form id="send"><input id="text" autocomplete="off" placeholder="message"><button>Send</button></form>
  </div>
</main>
<aside><h3>Members</h3><ul id="members"></ul></aside>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const members = new Map();
let socket = null, token = undefined, nickname = "", session = "", secret = "", backoff = 250, ping = 0;

function line(cls, from, text) {
  const li = document.createElement("li");
  li.className = cls;
  if (from !== null) {
    const b = document.createElement("span");
    b.className = "from";
    b.textContent = from;
    li.append(b);
  }
  li.append(document.createTextNode(text));
  $("log").append(li);
  li.scrollIntoView();
}

function renderMembers() {
  const ul = $("members");
  ul.replaceChildren();
  for (const name of [nickname, ...[...members.keys()].sort()]) {
    const li = document.createElement("li");
    li.textContent = name === nickname ? name + " (you)" : name;
    ul.append(li);
  }
}

function connect() {
  $("state").textContent = "(connecting)";
  const url = new URL("/relay/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(url);
  socket.onopen = () => {
    socket.send(JSON.stringify({ t: "hello", session, nickname, token, secret: secret || undefined }));
  };
  socket.onmessage = (event) => {
    const f = JSON.parse(event.data);
    if (f.t === "welcome") {
      nickname = f.nickname;
      token = f.token;
      backoff = 250;
      members.clear();
      for (const m of f.members) members.set(m.nickname, m);
      $("me").textContent = nickname;
      $("state").textContent = "(connected)";
      renderMembers();
      clearInterval(ping);
      ping = setInterval(() => socket.readyState === 1 && socket.send('{"t":"ping"}'), f.keepAlive);
    } else if (f.t === "join") {
      members.set(f.nickname, f);
      renderMembers();
      line("status", null, f.nickname + " joined");
    } else if (f.t === "leave") {
      members.delete(f.nickname);
      renderMembers();
      line("status", null, f.nickname + (f.reason === "left" ? " left" : " is gone"));
    } else if (f.t === "msg") {
      line("msg", f.from + (f.to ? " → you" : ""), f.text ?? JSON.stringify(f.numbers));
    } else if (f.t === "ping") {
      socket.send('{"t":"pong"}');
    } else if (f.t === "error") {
      line("status", null, "relay: " + f.message);
    }
  };
  socket.onclose = (event) => {
    clearInterval(ping);
    $("state").textContent = "(disconnected: " + (event.reason || "link lost") + ")";
    if (event.code === 4401 || event.code === 4400) return; // a retry would be refused again
    setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 5000);
  };
}

// A closed tab has left: say so, rather than be waited for as a blip.
addEventListener("pagehide", () => {
  if (socket && socket.readyState === 1) socket.send('{"t":"bye"}');
});

$("join").onsubmit = (event) => {
  event.preventDefault();
  session = $("session").value.trim();
  nickname = $("nickname").value.trim();
  secret = $("secret").value;
  $("join").style.display = "none";
  $("chat").style.display = "flex";
  $("session-name").textContent = session;
  connect();
};

$("send").onsubmit = (event) => {
  event.preventDefault();
  const text = $("text").value;
  if (!text || !socket || socket.readyState !== 1) return;
  socket.send(JSON.stringify({ t: "msg", text }));
  line("msg mine", nickname, text);
  $("text").value = "";
};
</script>
</body>
</html>
`;

/** The chat page as a response. */
export function chatPage(): Response {
  return new Response(CHAT_PAGE_HTML, { headers: { "content-type": "text/html; charset=utf-8" } });
}
