// A minimal Socket.IO 4 server for bench/relay_compare.ts (Node 20).
//
//   NODE_PATH=/tmp/<folder>/node_modules node bench/_socketio_server.mjs PORT
//
// `socket.io` is not a dependency of this project: bench/relay_compare.ts
// installs it into a temporary folder and points NODE_PATH there (the
// createRequire below resolves through NODE_PATH; an ESM `import` would not).
//
// Listens on 127.0.0.1:PORT, WebSocket transport only, no compression, default
// keep-alive (Engine.IO pings every 25 s and waits 20 s for the pong). A
// socket joins the room named in its handshake auth (`40{"room":"r1"}`) or
// later with a `join` event; each `msg` event is broadcast to the sender's room
// without the sender (like our relay) and without acknowledgements. Prints
// "listening" once ready.
import { createServer } from "node:http";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { Server } = require("socket.io");
const { version } = require("socket.io/package.json");

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error("usage: node bench/_socketio_server.mjs PORT");
  process.exit(2);
}

const http = createServer((_req, res) => {
  res.writeHead(404).end();
});
const io = new Server(http, {
  transports: ["websocket"],
  perMessageDeflate: false,
  serveClient: false,
  // pingInterval 25000 and pingTimeout 20000: the defaults, stated.
  pingInterval: 25_000,
  pingTimeout: 20_000,
});

io.on("connection", (socket) => {
  const join = (room) => {
    if (typeof room !== "string" || room === "" || socket.data.room !== undefined) return;
    socket.data.room = room;
    socket.join(room);
  };
  join(socket.handshake.auth?.room);
  socket.on("join", join);
  socket.on("msg", (payload) => {
    const room = socket.data.room;
    if (room !== undefined) socket.to(room).emit("msg", payload);
  });
});

http.on("error", (error) => {
  console.error(`socket.io server: ${error.message}`);
  process.exit(1);
});
http.listen(port, "127.0.0.1", () => {
  console.log(`listening socket.io ${version} node ${process.version} 127.0.0.1:${port}`);
});
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => process.exit(0));
}
