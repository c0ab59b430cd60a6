#!/usr/bin/env python3
"""A client of the immortal session protocol, in Python's standard library only.

Written from PROTOCOL.md Part 1 (sections 1.1-1.20) and Part 4, not from our
TypeScript, to show the document is enough to interoperate. It opens a session
to an immortal server, sends its input, prints what comes back, and survives
lost links: it resumes the session on a new link and replays what the server
had not received (1.7, 1.13). A link is a TCP connection (HOST PORT), or, given
a URL, a WebSocket (ws://HOST:PORT/PATH, 4.1) or an HTTP-streaming link
(http://HOST:PORT/PATH, 4.2: one long response down, POSTs up) to an HTTP
endpoint such as our HttpLinkAcceptor.

    python3 examples/immortal_client.py 127.0.0.1 4000 < request > reply
    python3 examples/immortal_client.py 127.0.0.1 4000 --psk s3cret --bytes 4194304 --sha256
    python3 examples/immortal_client.py 127.0.0.1 4000 --bytes 4194304 --cut-after 1000000
    python3 examples/immortal_client.py ws://127.0.0.1:8080/link --bytes 4194304 --sha256
    python3 examples/immortal_client.py http://127.0.0.1:8080/link --cut-after 1000000 < f
    python3 examples/immortal_client.py --self-test

Input is stdin, or with --bytes N the pattern "byte i is i % 251". Output is
the bytes received on stdout, or with --sha256 one line "HEX COUNT". Notes on
what happens go to stderr. Exit status 0 when the session ended cleanly (both
directions finished and acknowledged, 1.14), 1 with one line "error: ..."
otherwise, 2 for bad arguments.

As a library, `Session` carries any application's bytes (see its docstring):
examples/immortal_tunnel.py runs the tunnel's stream multiplexing (Part 3) on it.

Where Part 4 leaves room, this client sends WebSocket messages of at most
1 MiB; keeps at most 4 upstream POSTs in flight, each on its own kept-alive
connection, reused once answered; and after its bye waits for the server to end
the link (its close frame, echoed; or the end of the downstream response).

Not covered: sealed sessions (1.21), TLS links (wss:, https:), HTTP proxies and
HTTP/2. X25519 below uses Python integers, which are not constant time: fine
for an example, not for secrets that matter.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import hashlib
import hmac
import os
import random
import secrets
import selectors
import socket
import struct
import sys
import time
import urllib.parse
from typing import Optional

# --- X25519, RFC 7748 section 5 ---------------------------------------------
P = 2**255 - 19
A24 = 121665
BASE_POINT = (9).to_bytes(32, "little")


def x25519(scalar: bytes, u: bytes) -> bytes:
    """The Montgomery ladder over little-endian u-coordinates (RFC 7748 5)."""
    k = bytearray(scalar)
    k[0] &= 248  # clamping: a multiple of the cofactor 8 ...
    k[31] &= 127
    k[31] |= 64  # ... with a fixed top bit, so the ladder length leaks nothing
    k_int = int.from_bytes(k, "little")
    x1 = int.from_bytes(u, "little") & ((1 << 255) - 1)  # the top bit is ignored
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in range(254, -1, -1):
        bit = (k_int >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % P, (x2 - z2) % P
        aa, bb = a * a % P, b * b % P
        c, d = (x3 + z3) % P, (x3 - z3) % P
        da, cb = d * a % P, c * b % P
        e = (aa - bb) % P
        x3, z3 = (da + cb) ** 2 % P, x1 * (da - cb) ** 2 % P
        x2, z2 = aa * bb % P, e * (aa + A24 * e) % P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, P - 2, P) % P).to_bytes(32, "little")


# --- Frames, 1.2 - 1.5 --------------------------------------------------------
DATA, ACK, PING, PONG, FIN, CLOSE, BYE = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
HELLO, CHALLENGE, PROOF, ACCEPT, REJECT = 0x10, 0x11, 0x12, 0x13, 0x14
MAX_LENGTH = {DATA: 1 << 20, ACK: 8, PING: 8, PONG: 8, FIN: 8, CLOSE: 1024, BYE: 0,
              HELLO: 58, CHALLENGE: 32, PROOF: 32, ACCEPT: 85, REJECT: 1025}
EXACT_LENGTH = {ACK: 8, PING: 8, PONG: 8, FIN: 8, CHALLENGE: 32}
ACCEPT_LENGTHS = {0: (53, 85), 1: (13, 45)}
REJECT_CODES = ["auth", "unknown-session", "busy", "version", "protocol", "encryption"]
MAGIC, VERSION = b"IMRT", 3
MAX_POSITION = 2**53  # positions are below 2^53 (1.2)


def frame(ftype: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BI", ftype, len(payload)) + payload


def u32(x: int) -> bytes:
    return struct.pack(">I", x)


def u64(x: int) -> bytes:
    return struct.pack(">Q", x)


def mac(key: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA-256 over the concatenation (labels have no length prefix, 1.8)."""
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


class Malformed(Exception):
    """A frame breaking 1.5: the link is poisoned (never read again), the session resumes."""


class LinkLost(Exception):
    """The link died (reset, EOF, silence, malformed frame): resume on a new one.

    `orderly`: the server ended it (EOF, a WebSocket close, the end of the HTTP response)."""

    def __init__(self, message: str, orderly: bool = False) -> None:
        super().__init__(message)
        self.orderly = orderly


class Failed(Exception):
    """The session is over, abnormally. `close_reason`: tell the server with a `close` (1.14)."""

    def __init__(self, message: str, close_reason: Optional[str] = None) -> None:
        super().__init__(message)
        self.close_reason = close_reason


def protocol_error(message: str) -> Failed:
    return Failed(f"protocol error: {message}", close_reason=f"protocol error: {message}")


class FrameReader:
    """Reassembles frames from a byte stream whose reads need not align with frames (1.1)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next(self) -> Optional[tuple[int, bytes]]:
        avail = len(self._buf) - self._pos
        if avail >= 5:
            ftype, length = struct.unpack_from(">BI", self._buf, self._pos)
            # The length is judged before waiting for the payload (1.5 rule 1).
            if ftype not in MAX_LENGTH or length > MAX_LENGTH[ftype]:
                raise Malformed(f"frame type 0x{ftype:02x} with length {length}")
            if avail >= 5 + length:
                payload = bytes(self._buf[self._pos + 5:self._pos + 5 + length])
                self._pos += 5 + length
                check_payload(ftype, payload)
                return ftype, payload
        if self._pos > 1 << 20 or self._pos == len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0
        return None


def check_payload(ftype: int, payload: bytes) -> None:
    """The size, range and UTF-8 rules of 1.4 and 1.5 for frames a server may send."""
    n = len(payload)
    if ftype in EXACT_LENGTH and n != EXACT_LENGTH[ftype]:
        raise Malformed(f"frame 0x{ftype:02x} of length {n}")
    if ftype == DATA and n == 0:
        raise Malformed("empty data frame")
    if ftype in (ACK, FIN) and struct.unpack(">Q", payload)[0] >= MAX_POSITION:
        raise Malformed("position beyond 2^53")
    if ftype == ACCEPT and (n == 0 or payload[0] not in ACCEPT_LENGTHS
                            or n not in ACCEPT_LENGTHS[payload[0]]):
        raise Malformed(f"accept of length {n}")
    if ftype == ACCEPT and payload[0] == 1 and struct.unpack_from(">Q", payload, 5)[0] >= MAX_POSITION:
        raise Malformed("position beyond 2^53")
    if ftype == REJECT and (n == 0 or payload[0] >= len(REJECT_CODES)):
        raise Malformed("reject without a known code")
    try:
        if ftype == CLOSE:
            payload.decode("utf-8", "strict")
        elif ftype == REJECT:
            payload[1:].decode("utf-8", "strict")
    except UnicodeDecodeError:
        raise Malformed("reason is not valid UTF-8") from None


def log(message: str) -> None:
    print(f"immortal_client: {message}", file=sys.stderr, flush=True)


# --- Links: TCP (1.1), WebSocket (4.1), HTTP streaming (4.2) -----------------------
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
RECV_SIZE = 256 * 1024
MAX_HEAD = 64 * 1024  # an HTTP response head longer than this is not from a link endpoint
MAX_MESSAGE = 1 << 20  # our WebSocket messages (any size will do: 4.1 reassembles them)
MAX_POST = 1 << 20  # at most 1 MiB of the stream per upstream POST (4.2)
MAX_UPSTREAM = 4  # POSTs in flight at most, whatever the server offers (4.2: ours does the same)
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3


class Link:
    """One link: a byte pipe under the session (1.1), whatever carries it.

    The session hands it bytes with `take(out)` (it removes from `out` what it accepted), asks
    it which sockets to wait on (`watch`), and gives it each socket that is ready
    (`on_ready`), which returns the session bytes that arrived. Failures raise LinkLost;
    an orderly end (EOF, a WebSocket close, the end of the HTTP response) sets `ended`
    after the bytes that came before it were returned, and `check()` then raises LinkLost.
    For the session both are the same: a link to replace (Part 4 intro).
    """

    def __init__(self) -> None:
        self.ended: Optional[str] = None
        self.early = bytearray()  # session bytes that came with an HTTP head, not yet returned
        self._sel: Optional[selectors.BaseSelector] = None
        self._own: Optional[selectors.BaseSelector] = None
        self._watched: dict[socket.socket, int] = {}

    # What each kind of link provides.
    def sockets(self) -> list[socket.socket]:
        raise NotImplementedError

    def take(self, out: bytearray) -> bool:
        raise NotImplementedError

    def on_ready(self, sock: socket.socket, events: int) -> bytes:
        raise NotImplementedError

    def interest(self, backlog: bool) -> dict[socket.socket, int]:
        """The sockets to wait on, and for what; `backlog`: `out` kept bytes `take` refused."""
        raise NotImplementedError

    def unsent(self) -> bool:
        """Bytes taken from the session and not yet written; for HTTP, POSTs not yet answered."""
        return False

    def finish(self, deadline: float) -> None:
        """After the bye went out: until the server ends the link (1.14 point 3)."""
        self.drain(deadline)

    # Shared machinery.
    def check(self) -> None:
        if self.ended is not None:
            raise LinkLost(self.ended, orderly=True)

    def watch(self, sel: selectors.BaseSelector, backlog: bool) -> None:
        """Registers the link's sockets in `sel` (key data: the link) for what it waits on now."""
        if self._sel is not sel:
            self.unwatch()
            self._sel = sel
        want = self.interest(backlog)
        for sock in [s for s in self._watched if s not in want]:
            self._forget(sock)
        for sock, mask in want.items():
            if sock not in self._watched:
                sel.register(sock, mask, self)
            elif self._watched[sock] != mask:
                sel.modify(sock, mask, self)
            self._watched[sock] = mask

    def unwatch(self) -> None:
        for sock in list(self._watched):
            self._forget(sock)
        self._sel = None

    def _forget(self, sock: socket.socket) -> None:
        """Unregisters before the socket is closed, so its number can be reused safely."""
        if sock in self._watched:
            del self._watched[sock]
            if self._sel is not None:
                self._sel.unregister(sock)

    def wait(self, out: bytearray, deadline: float) -> bytes:
        """Drives the link on its own for one round (handshakes, a session's last bytes)."""
        if self.early:
            got, self.early = bytes(self.early), bytearray()
            return got
        self.check()
        self.take(out)
        if self._own is None:
            self._own = selectors.DefaultSelector()
        self.watch(self._own, bool(out))
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            raise LinkLost("timed out")
        got = bytearray()
        for key, events in self._own.select(timeout):
            if key.fileobj in self._watched:
                got += self.on_ready(key.fileobj, events)  # type: ignore[arg-type]
        return bytes(got)

    def drain(self, deadline: float) -> None:
        """Reads, and drops, until the server ends the link; an error ends it too."""
        while True:
            self.wait(bytearray(), deadline)

    def close(self, rst: bool = False) -> None:
        """Closes every socket; with `rst`, abruptly (a cut, --cut-after: 4 intro)."""
        self.unwatch()
        if self._own is not None:
            self._own.close()
            self._own = None
        for sock in self.sockets():
            if rst:
                abort(sock)
            else:
                sock.close()

    def abort(self) -> None:
        self.close(rst=True)


class TcpLink(Link):
    """The link is the TCP connection (1.1)."""

    def __init__(self, host: str, port: int, deadline: float) -> None:
        super().__init__()
        self.sock = connect_blocking(host, port, deadline)
        self.sock.setblocking(False)
        self.blocked = False  # the last take left bytes in `out`: wait until writable

    def sockets(self) -> list[socket.socket]:
        return [self.sock]

    def take(self, out: bytearray) -> bool:
        n = send(self.sock, out) if out else 0
        del out[:n]
        self.blocked = bool(out)
        return n > 0

    def interest(self, backlog: bool) -> dict[socket.socket, int]:
        return {self.sock: READ | (WRITE if backlog and self.blocked else 0)}

    def on_ready(self, sock: socket.socket, events: int) -> bytes:
        if not events & READ:
            return b""  # writable: the next take() writes
        data = recv(self.sock)
        if data == b"":
            self.ended = "the server closed the link"
        return data or b""

    def finish(self, deadline: float) -> None:
        # Half-close, then read until the server closes: a close with our bye still unsent
        # or unread input would reset the connection (1.14 point 3).
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            raise LinkLost(str(e)) from None
        self.drain(deadline)


def connect_blocking(host: str, port: int, deadline: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=max(0.01, deadline - time.monotonic()))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_head(sock: socket.socket, deadline: float) -> tuple[int, dict[str, str], bytes]:
    """Reads an HTTP/1.1 response head (blocking, bounded): status, fields, the bytes after it."""
    buf = bytearray()
    while (end := buf.find(b"\r\n\r\n")) < 0:
        if len(buf) > MAX_HEAD:
            raise LinkLost("an HTTP response head over 64 KiB")
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(65536)
        if not data:
            raise LinkLost("the server closed the connection before its answer")
        buf += data
    status, fields = parse_head(bytes(buf[:end]))
    return status, fields, bytes(buf[end + 4:])


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """A response head without its final CRLF CRLF: the status, fields by lower-case name."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise LinkLost(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise LinkLost(f"a malformed HTTP field line: {line[:80]!r}")
        name = name.strip().lower()
        fields[name] = f"{fields[name]}, {value.strip()}" if name in fields else value.strip()
    return int(parts[1]), fields


def has_token(value: str, token: str) -> bool:
    return token in (t.strip().lower() for t in value.split(","))


def xor_mask(data: bytes, key: bytes) -> bytes:
    """RFC 6455 5.3 masking, with one big-integer XOR instead of a Python loop per byte."""
    n = len(data)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame (RFC 6455 5.2): a client MUST mask every frame."""
    n, key = len(payload), secrets.token_bytes(4)
    if n < 126:
        head = struct.pack(">BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + key + xor_mask(payload, key)


class WebSocketLink(Link):
    """The session's bytes in binary WebSocket messages, both ways (4.1, RFC 6455)."""

    def __init__(self, target: "Target", deadline: float) -> None:
        super().__init__()
        self.sock = connect_blocking(target.host, target.port, deadline)
        try:
            key = base64.b64encode(secrets.token_bytes(16))
            # No Sec-WebSocket-Protocol, no Sec-WebSocket-Extensions: 4.1 wants neither.
            self.sock.sendall(
                f"GET {target.path} HTTP/1.1\r\nHost: {target.netloc}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
            status, fields, rest = read_head(self.sock, deadline)
            if status != 101:
                raise LinkLost(f"the WebSocket upgrade was answered {status}")
            expected = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
            # RFC 6455 4.1: the client MUST fail the connection unless all of these hold.
            if (fields.get("upgrade", "").lower() != "websocket"
                    or not has_token(fields.get("connection", ""), "upgrade")
                    or fields.get("sec-websocket-accept") != expected
                    or "sec-websocket-extensions" in fields or "sec-websocket-protocol" in fields):
                raise LinkLost("a bad WebSocket upgrade answer")
        except BaseException:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.raw = bytearray()  # frames for the socket, not yet written
        self.rx = bytearray(rest)  # socket bytes not yet parsed into frames
        self.payload_left = 0  # bytes of the current binary frame's payload still to come
        self.in_message = False  # a binary message began and its last fragment is still to come
        self.early += self._parse()

    def sockets(self) -> list[socket.socket]:
        return [self.sock]

    def take(self, out: bytearray) -> bool:
        # One message per write of the session (4.1); none while frames wait for the socket.
        taken = bool(out) and len(self.raw) < OUT_HIGH
        if taken:
            n = min(len(out), MAX_MESSAGE)
            self.raw += ws_frame(0x2, bytes(out[:n]))
            del out[:n]
        self._flush()
        return taken

    def _flush(self) -> None:
        if self.raw:
            del self.raw[:send(self.sock, self.raw)]

    def unsent(self) -> bool:
        return bool(self.raw)

    def interest(self, backlog: bool) -> dict[socket.socket, int]:
        return {self.sock: READ | (WRITE if self.raw else 0)}

    def on_ready(self, sock: socket.socket, events: int) -> bytes:
        if events & WRITE:
            self._flush()
        if not events & READ or self.ended is not None:
            return b""
        data = recv(sock)
        if data == b"":
            self.ended = "the server closed the TCP connection under the WebSocket"
        if not data:
            return b""
        self.rx += data
        return self._parse()

    def _parse(self) -> bytes:
        """Server frames (RFC 6455 5.2): binary payloads pass through as they come; a text
        message, a masked frame, a reserved bit or an unknown opcode breaks the link."""
        got, rx = bytearray(), self.rx
        while self.ended is None:
            if self.payload_left:
                n = min(self.payload_left, len(rx))
                if n == 0:
                    break
                got += rx[:n]
                del rx[:n]
                self.payload_left -= n
                continue
            if len(rx) < 2:
                break
            b0, b1 = rx[0], rx[1]
            fin, opcode, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            size = 2 + (2 if n == 126 else 8 if n == 127 else 0)
            if len(rx) < size:
                break
            if n == 126:
                n = struct.unpack_from(">H", rx, 2)[0]
            elif n == 127:
                n = struct.unpack_from(">Q", rx, 2)[0]
            if b0 & 0x70 or b1 & 0x80:  # no extension was agreed; a server never masks
                raise LinkLost("a WebSocket frame with a reserved bit or a mask")
            if opcode >= 0x8:  # control frames: whole, final, at most 125 bytes (5.5)
                if not fin or n > 125:
                    raise LinkLost("a fragmented or oversized WebSocket control frame")
                if len(rx) < size + n:
                    break
                payload = bytes(rx[size:size + n])
                del rx[:size + n]
                self._control(opcode, payload)
            elif opcode == 0x2 or (opcode == 0x0 and self.in_message):
                if opcode == 0x2 and self.in_message:
                    raise LinkLost("a binary WebSocket message inside another")
                del rx[:size]
                self.in_message, self.payload_left = not fin, n
            elif opcode == 0x1:
                raise LinkLost("a text WebSocket message (4.1: a protocol error)")
            else:
                raise LinkLost(f"WebSocket opcode 0x{opcode:x} out of place")
        return bytes(got)

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x9:  # ping: a pong with the same payload (RFC 6455 5.5.2)
            self.raw += ws_frame(0xA, payload)
            self._flush()
        elif opcode == 0x8:  # close: echo its code, and the link is over (4.1)
            code = str(struct.unpack(">H", payload[:2])[0]) if len(payload) >= 2 else "no code"
            reason = payload[2:].decode("utf-8", "replace")
            self.raw += ws_frame(0x8, payload[:2])
            self._flush()
            self.ended = f"the server closed the WebSocket ({code}{' ' + reason if reason else ''})"
        elif opcode != 0xA:  # pongs are ignored
            raise LinkLost(f"WebSocket opcode 0x{opcode:x}")

    def finish(self, deadline: float) -> None:
        # The server closes the link when it reads our bye (1.14 point 3): wait for its close
        # frame (echoed above), then give our echo a moment to leave before closing.
        try:
            self.drain(deadline)
        except LinkLost as e:
            if e.orderly and self.raw:  # our echo of its close goes before we close the socket
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                with contextlib.suppress(OSError):
                    self.sock.sendall(self.raw)
                self.raw.clear()
            raise


class ChunkedDecoder:
    """The chunked transfer coding (RFC 9112 7.1), decoded as the bytes come."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.left = 0  # bytes of the current chunk still to come
        self.state = "size"  # size line, data, the CRLF after the data, trailer, done

    def feed(self, data: bytes) -> bytes:
        buf, got = self.buf, bytearray()
        buf += data
        while self.state != "done":
            if self.state == "data":
                n = min(self.left, len(buf))
                got += buf[:n]
                del buf[:n]
                self.left -= n
                if self.left:
                    break
                self.state = "crlf"
            elif self.state == "crlf":
                if len(buf) < 2:
                    break
                if buf[:2] != b"\r\n":
                    raise LinkLost("bad chunked coding in the response")
                del buf[:2]
                self.state = "size"
            else:  # a size line or a trailer line
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 4096:
                        raise LinkLost("bad chunked coding in the response")
                    break
                line = bytes(buf[:end]).split(b";")[0].strip()
                del buf[:end + 2]
                if self.state == "trailer":
                    self.state = "trailer" if line else "done"
                    continue
                try:
                    self.left = int(line, 16)
                except ValueError:
                    raise LinkLost("bad chunked coding in the response") from None
                self.state = "data" if self.left else "trailer"
        return bytes(got)


class Upstream:
    """A connection for upstream POSTs (4.2), kept alive and reused once its POST is answered."""

    def __init__(self, addr: tuple) -> None:
        family, _, _, _, sockaddr = addr
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setblocking(False)  # connecting must not stop the session's loop
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = self.sock.connect_ex(sockaddr)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self.sock.close()
            raise LinkLost(f"cannot connect for a POST: {os.strerror(err)}")
        self.connecting = err != 0
        self.raw = bytearray()  # the request, not yet written
        self.answer = bytearray()  # the answer's head, as it comes
        self.seq: Optional[int] = None  # the POST awaiting its answer, if any


class HttpStreamLink(Link):
    """One long response downstream, POSTs upstream (4.2)."""

    def __init__(self, target: "Target", deadline: float) -> None:
        super().__init__()
        self.target = target
        self.addr = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)[0]
        self.down = connect_blocking(target.host, target.port, deadline)
        try:
            # The opening POST has no body (4.2); Content-Length: 0 says so.
            self.down.sendall(f"POST {target.path} HTTP/1.1\r\nHost: {target.netloc}\r\n"
                              f"x-immortal-link: open\r\nContent-Length: 0\r\n\r\n".encode())
            status, fields, rest = read_head(self.down, deadline)
            if status != 200 or not fields.get("x-immortal-link"):
                raise LinkLost(f"not a link endpoint: answered {status}"
                               f"{'' if status != 200 else ' without x-immortal-link'}")
        except BaseException:
            self.down.close()
            raise
        self.down.setblocking(False)
        self.id = fields["x-immortal-link"]
        try:  # how many POSTs in flight the server takes: 1 when absent (4.2)
            self.k = max(1, min(MAX_UPSTREAM, int(fields.get("x-immortal-upstream", "1"))))
        except ValueError:
            self.k = 1
        # The body: chunked on HTTP/1.1, or up to the connection's end (HTTP/1.0, 4.2).
        chunked = has_token(fields.get("transfer-encoding", ""), "chunked")
        self.chunks = ChunkedDecoder() if chunked else None
        self.early += self._body(rest)
        self.posts: list[Upstream] = []
        self.seq = 0  # the next POST's x-immortal-seq

    def sockets(self) -> list[socket.socket]:
        return [self.down] + [p.sock for p in self.posts]

    def _body(self, data: bytes) -> bytes:
        if self.chunks is None:
            return data
        got = self.chunks.feed(data)
        if self.chunks.state == "done":
            self.ended = "the server ended the downstream response"
        return got

    def take(self, out: bytearray) -> bool:
        """Each write goes at once, as a POST of its own, while fewer than k are in flight; once
        k are, what is written meanwhile waits and goes in the next POST (4.2)."""
        taken = False
        while out and sum(p.seq is not None for p in self.posts) < self.k:
            post = next((p for p in self.posts if p.seq is None), None)
            if post is None:
                post = Upstream(self.addr)
                self.posts.append(post)
            body = bytes(out[:MAX_POST])
            del out[:len(body)]
            post.raw += (f"POST {self.target.path} HTTP/1.1\r\nHost: {self.target.netloc}\r\n"
                         f"x-immortal-link: {self.id}\r\nx-immortal-seq: {self.seq}\r\n"
                         f"Content-Type: application/octet-stream\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            post.seq, self.seq, taken = self.seq, self.seq + 1, True
            self._flush(post)
        return taken

    def _flush(self, post: Upstream) -> None:
        if post.connecting:
            return  # written once the connection is up (on_ready)
        if post.raw:
            del post.raw[:send(post.sock, post.raw)]

    def unsent(self) -> bool:
        return any(p.raw or p.seq is not None for p in self.posts)

    def interest(self, backlog: bool) -> dict[socket.socket, int]:
        want = {self.down: READ}
        for p in self.posts:  # READ on idle ones too: the server may close them
            want[p.sock] = READ | (WRITE if p.raw or p.connecting else 0)
        return want

    def on_ready(self, sock: socket.socket, events: int) -> bytes:
        if sock is self.down:
            if self.ended is not None:
                return b""
            data = recv(sock)
            if data == b"":  # the end of a chunked body is its last chunk, not the EOF
                if self.chunks is not None:
                    raise LinkLost("the downstream response broke off")
                self.ended = "the server ended the downstream response"
            return self._body(data) if data else b""
        post = next((p for p in self.posts if p.sock is sock), None)
        if post is None:
            return b""
        if events & WRITE and post.connecting:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise LinkLost(f"cannot connect for a POST: {os.strerror(err)}")
            post.connecting = False
        if events & WRITE:
            self._flush(post)
        if events & READ:
            self._answer(post)
        return b""

    def _answer(self, post: Upstream) -> None:
        try:
            data = recv(post.sock)
        except LinkLost as e:
            raise LinkLost(f"POST {post.seq} failed: {e}") from None
        if data == b"" and post.seq is None:
            self._drop(post)  # an idle kept-alive connection, closed by the server
            return
        if data == b"":
            raise LinkLost(f"POST {post.seq}: the connection closed before its answer")
        if data is None:
            return
        if post.seq is None:
            raise LinkLost("bytes from the server on an idle POST connection")
        post.answer += data
        end = post.answer.find(b"\r\n\r\n")
        if end < 0:
            if len(post.answer) > MAX_HEAD:
                raise LinkLost("an HTTP response head over 64 KiB")
            return
        status, fields = parse_head(bytes(post.answer[:end]))
        # Any answer but 204 ends the link (4.2); a 204 has no body, the connection goes on.
        if status != 204:
            raise LinkLost(f"POST {post.seq} answered {status}")
        extra = post.raw or len(post.answer) > end + 4  # more than the answer: not reusable
        if extra or has_token(fields.get("connection", ""), "close"):
            self._drop(post)
        else:
            post.answer.clear()
            post.seq = None

    def _drop(self, post: Upstream) -> None:
        self._forget(post.sock)
        self.posts.remove(post)
        post.sock.close()


class Target:
    """Where links go: HOST PORT for TCP, or a ws:// or http:// URL (Part 4)."""

    def __init__(self, host: str, port: Optional[int]) -> None:
        if port is not None:
            self.kind, self.host, self.port = "tcp", host, port
            self.netloc = self.path = ""
            self.name = f"{host}:{port}"
            return
        url = urllib.parse.urlsplit(host)
        if url.scheme in ("wss", "https"):
            raise ValueError("TLS links (wss:, https:) are not covered by this example")
        if url.scheme not in ("ws", "http") or not url.hostname:
            raise ValueError(f"not a ws:// or http:// URL: {host}")
        self.kind = "websocket" if url.scheme == "ws" else "http-stream"
        self.host, self.port = url.hostname, url.port or 80
        self.netloc = url.netloc.rpartition("@")[2]  # the Host field: no user info
        self.path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self.name = host

    def dial(self, deadline: float) -> Link:
        if self.kind == "websocket":
            return WebSocketLink(self, deadline)
        if self.kind == "http-stream":
            return HttpStreamLink(self, deadline)
        return TcpLink(self.host, self.port, deadline)


# --- The session ---------------------------------------------------------------
HANDSHAKE_TIMEOUT = 10.0  # one dial plus handshake (1.6, ours)
HEARTBEAT = 1.0  # ping after this much outbound silence (1.12: "at most 1 s")
ACK_TICK = 0.25  # a pending ack goes out at the latest this late (1.10)
DATA_CHUNK = 256 * 1024  # our data frames (any size 1..1 MiB is fine)
OUT_HIGH = 512 * 1024  # stop framing data while this much waits for the socket


class Session:
    """One session, driven by `run()`; what it carries comes from and goes to `app`.

    The application (`PipeApp` below; `immortal_tunnel.py` has another) gives the bytes
    to send through `pull(room) -> (bytes, ended)`, says with `prepare(room) -> bool`
    whether it has input ready without waiting (it may register its own files in
    `session.sel`, with a callback `f(events)` as the key's data), and is handed what
    arrives: `on_data(bytes)`, `on_fin()`. `on_open()` follows the first accept. It
    consumes what it is handed at once: acks follow what arrived. Its callbacks may
    raise `Failed` to end the session (with a `close` when `close_reason` is set).

    Links go to `host`:`port` over TCP or, with `port` None, to the URL `host`: a
    ws:// URL for WebSocket links, an http:// URL for HTTP-streaming links (Part 4).
    """

    def __init__(self, app, host: str, port: Optional[int], psk: Optional[str] = None,
                 window: int = 4 << 20, dead_after: float = 5.0, resume_timeout: float = 120.0,
                 cuts: Optional[list[int]] = None, logger=None) -> None:
        self.app, self.host, self.port = app, host, port
        self.target = Target(host, port)  # a URL when port is None; ValueError if it is bad
        self.psk: Optional[bytes] = psk.encode() if psk is not None else None
        self.window = window  # our receive window, announced in every hello
        self.ack_every = min(4 << 20, self.window) // 4  # like ours (1.10)
        self.dead_after = dead_after
        self.resume_timeout = resume_timeout
        self.cuts: list[int] = sorted(cuts or [])
        self.log = logger or log
        self.sel = selectors.DefaultSelector()  # the link, and the application's files
        # Session keys, set by the first accept.
        self.session_id = b""
        self.k_resume = b""
        self.peer_window = 0  # the server's receive window: we may have this much unacked
        # Our stream. `send_buf` holds positions [buf_start, written): everything not acked.
        self.send_buf = bytearray()
        self.buf_start = 0
        self.written = 0  # data bytes taken from the input
        self.input_done = False  # then our FIN sits at position `written`
        self.sent = 0  # next position to send on this link (written + 1 once the FIN went)
        self.sent_high = 0  # highest position sent on any link, FIN included
        self.acked = 0  # the server's highest ack
        # The server's stream.
        self.received = 0  # data bytes received, and consumed at once
        self.peer_fin = False
        self.acked_out = 0  # the last ack we sent
        self.resumes = 0
        self.out = bytearray()  # frames for the current link, not yet written
        self.carried = False  # the current link carried a frame after its handshake

    # -- handshakes (1.6, 1.7) --
    def _dial(self, hello_payload: bytes) -> tuple[Link, FrameReader, bytes, float]:
        """Dials, sends hello, reads the challenge. Returns the link, reader, T, deadline."""
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        link = self.target.dial(deadline)
        try:
            hello = frame(HELLO, hello_payload)
            reader = FrameReader()
            ftype, payload = self._handshake_frame(link, reader, bytearray(hello), deadline)
            if ftype != CHALLENGE:
                raise protocol_error(f"expected a challenge, got frame 0x{ftype:02x}")
            # T: both frames exactly as on the wire, headers included (1.6).
            return link, reader, hello + frame(CHALLENGE, payload), deadline
        except BaseException:
            link.close()
            raise

    def _handshake_frame(self, link: Link, reader: FrameReader, out: bytearray,
                         deadline: float) -> tuple[int, bytes]:
        """Sends `out` and reads the server's next handshake frame."""
        while True:
            got = reader.next()
            if got is not None:
                if got[0] == REJECT:
                    code, reason = REJECT_CODES[got[1][0]], got[1][1:].decode()
                    raise Rejected(code, reason)
                return got
            try:
                reader.feed(link.wait(out, deadline))
            except LinkLost as e:
                raise LinkLost(f"{e} during the handshake") from None

    def open_new(self) -> tuple[Link, FrameReader]:
        private = secrets.token_bytes(32)
        pub_c = x25519(private, BASE_POINT)
        hello = MAGIC + bytes([VERSION, 0]) + secrets.token_bytes(16) + u32(self.window) + pub_c
        link, reader, t, deadline = self._dial(hello)
        try:
            # Without a psk the proof is empty; a psk-less server ignores it anyway (1.6 rule 3-4).
            proof = mac(self.psk, b"immortal-v1 new client", t) if self.psk is not None else b""
            ftype, p = self._handshake_frame(link, reader, bytearray(frame(PROOF, proof)), deadline)
            if ftype != ACCEPT or p[0] != 0:
                raise protocol_error("expected accept kind 0")
            window_s, session_id, pub_s, accept_mac = u32_at(p, 1), p[5:21], p[21:53], p[53:]
            if self.psk is not None and not hmac.compare_digest(
                    accept_mac, mac(self.psk, b"immortal-v1 new server", t, session_id, pub_s,
                                    u32(window_s))):
                raise Failed("auth: the server's accept MAC is missing or wrong "
                             "(it does not hold our pre-shared key)")
            if window_s < 1024:
                raise protocol_error(f"the server's window {window_s} is below 1024")
            shared = x25519(private, pub_s)
            if shared == bytes(32):  # a low-order public key (1.8)
                raise protocol_error("all-zero X25519 shared secret")
            self.k_resume = mac(shared, b"immortal-v1 resume key", session_id, pub_c, pub_s)
            self.session_id, self.peer_window = session_id, window_s
            return link, reader
        except BaseException:
            link.close()
            raise

    def resume(self) -> tuple[Link, FrameReader]:
        received_c = self.received + (1 if self.peer_fin else 0)  # the FIN takes a position
        hello = (MAGIC + bytes([VERSION, 1]) + secrets.token_bytes(16) + u32(self.window)
                 + self.session_id + u64(received_c))
        link, reader, t, deadline = self._dial(hello)
        try:
            proof = frame(PROOF, mac(self.k_resume, b"immortal-v1 resume client", t))
            ftype, p = self._handshake_frame(link, reader, bytearray(proof), deadline)
            if ftype != ACCEPT or p[0] != 1:
                raise protocol_error("expected accept kind 1")
            window_s, received_s, accept_mac = u32_at(p, 1), struct.unpack_from(">Q", p, 5)[0], p[13:]
            if not hmac.compare_digest(accept_mac, mac(self.k_resume, b"immortal-v1 resume server",
                                                       t, u64(received_s), u32(window_s))):
                raise Failed("auth: the server's resume MAC is wrong")
            if window_s < 1024:
                raise protocol_error(f"the server's window {window_s} is below 1024")
            # 1.13 rule 1: what the server claims must lie within what we sent and it acked.
            if not self.acked <= received_s <= self.sent_high:
                raise protocol_error(f"resume position {received_s} outside "
                                     f"[{self.acked}, {self.sent_high}]")
            self.peer_window, self.sent = window_s, received_s  # replay from there (1.13 rule 2)
            self.resumes += 1
            self.log(f"resumed: the server had {received_s}, we had {received_c}; "
                     f"replaying {self.sent_high - received_s} positions")
            return link, reader
        except BaseException:
            link.close()
            raise

    def reconnect(self, carried: bool) -> tuple[Link, FrameReader]:
        """Resumes until it works, backing off like ours (1.17), giving up after resume_timeout."""
        lost_at, failures = time.monotonic(), 0 if carried else 1
        while True:
            if failures:  # a link that worked and broke is redialed at once; failures back off
                time.sleep(min(5.0, 0.1 * 2 ** (failures - 1)) * random.uniform(0.5, 1.0))
            if time.monotonic() - lost_at > self.resume_timeout:
                raise Failed(f"gave up resuming after {self.resume_timeout:g} s")
            try:
                return self.resume()
            except Rejected as r:
                if r.code != "busy":  # auth, unknown-session, version, ... are final (1.9)
                    raise Failed(f"the server refused the resume: {r}") from None
                self.log(f"resume refused: {r}; retrying")
            except (OSError, LinkLost, Malformed) as e:
                self.log(f"resume attempt failed: {e or type(e).__name__}")
            failures += 1

    # -- the running session (1.10 - 1.14) --
    def run(self) -> None:
        try:
            self._run()
        finally:
            self.sel.close()

    def _run(self) -> None:
        try:
            link, reader = self.open_new()
        except Rejected as r:
            raise Failed(f"the server refused the session: {r}") from None
        except (OSError, LinkLost, Malformed) as e:
            raise Failed(f"cannot open a session at {self.target.name}: {e}") from None
        self.log(f"session {self.session_id.hex()} open; server window {self.peer_window}")
        self.app.on_open()
        while True:
            self.carried = False
            try:
                self.run_link(link, reader)
                return
            except LinkLost as e:
                link.abort()
                self.log(f"link lost: {e}")
            except Failed as f:
                if f.close_reason is not None:  # best effort: the link may be dying too
                    self.out += frame(CLOSE, f.close_reason.encode()[:1024])
                    deadline = time.monotonic() + 1.0
                    try:
                        while self.out or link.unsent():
                            link.wait(self.out, deadline)
                    except (OSError, LinkLost):
                        pass
                link.close()
                raise
            link, reader = self.reconnect(self.carried)

    def run_link(self, link: Link, reader: FrameReader) -> None:
        sel = self.sel
        self.out = bytearray(frame(ACK, u64(self.consumed())))  # an ack first thing (1.13 rule 4)
        self.acked_out = self.consumed()
        now = time.monotonic()
        last_recv = last_send = last_tick = now
        try:
            self.on_frames(reader)  # frames that came in the same read as the accept
            while True:
                self.read_input()
                self.frame_output()
                if self.complete():
                    link.unwatch()
                    return self.finish(link)
                if link.take(self.out):  # hands over what it can; the rest waits in self.out
                    last_send = time.monotonic()
                link.watch(sel, bool(self.out))
                now = time.monotonic()
                wake = min(last_tick + ACK_TICK, last_recv + self.dead_after,
                           last_send + HEARTBEAT if not self.out else now + HEARTBEAT)
                input_ready = self.app.prepare(self.room())
                ready = sel.select(max(0.0, wake - now) if not input_ready else 0)
                for key, events in ready:
                    if sel.get_map().get(key.fd) is not key:
                        continue  # unregistered by an earlier callback of this round
                    if key.data is not link:  # the application's file
                        key.data(events)
                        continue
                    data = link.on_ready(key.fileobj, events)  # type: ignore[arg-type]
                    if data:
                        last_recv = time.monotonic()
                        reader.feed(data)
                        self.on_frames(reader)
                        self.maybe_cut()
                    link.check()  # an orderly end, after the bytes that came before it
                now = time.monotonic()
                if now - last_recv > self.dead_after:  # nothing at all heard (1.12)
                    raise LinkLost(f"nothing received for {self.dead_after:g} s")
                if not self.out and now - last_send >= HEARTBEAT:
                    self.out += frame(PING, struct.pack(">d", now * 1000))
                if now - last_tick >= ACK_TICK:
                    last_tick = now
                    self.queue_ack(force=False, tick=True)
        finally:
            link.unwatch()

    def consumed(self) -> int:
        """Positions of the server's stream our 'application' consumed: all received, FIN too."""
        return self.received + (1 if self.peer_fin else 0)

    def queue_ack(self, force: bool, tick: bool = False) -> None:
        pending = self.consumed() - self.acked_out
        if pending > 0 and (force or tick or pending >= self.ack_every):
            self.out += frame(ACK, u64(self.consumed()))
            self.acked_out = self.consumed()

    def room(self) -> int:
        """Input we may take now: unacked bytes stay within the server's window (1.11)."""
        return 0 if self.input_done else min(self.peer_window - len(self.send_buf), DATA_CHUNK)

    def read_input(self) -> None:
        """Takes what the application has to send, within the room there is."""
        room = self.room()
        if room <= 0:
            return
        data, ended = self.app.pull(room)
        self.send_buf += data
        self.written += len(data)
        if ended:
            self.input_done = True

    def frame_output(self) -> None:
        """Frames data from `sent` on, within the window, then the FIN once all data went."""
        framed = False
        while len(self.out) < OUT_HIGH:
            if self.sent < self.written:
                allowed = self.peer_window - (self.sent - self.acked)
                n = min(self.written - self.sent, DATA_CHUNK, allowed)
                if n <= 0:
                    break
                offset = self.sent - self.buf_start
                self.out += frame(DATA, bytes(self.send_buf[offset:offset + n]))
                self.sent += n
            elif self.input_done and self.sent == self.written:
                self.out += frame(FIN, u64(self.written))
                self.sent += 1
            else:
                break
            framed = True
        self.sent_high = max(self.sent_high, self.sent)
        if framed:
            self.queue_ack(force=True)  # an ack rides along with what we send anyway

    def on_frames(self, reader: FrameReader) -> None:
        try:
            while (got := reader.next()) is not None:
                self.carried = True
                self.on_frame(*got)
        except Malformed as e:  # 1.5 rule 3: the link is poisoned, the session resumes
            raise LinkLost(f"malformed frame: {e}") from None

    def on_frame(self, ftype: int, payload: bytes) -> None:
        if ftype == DATA:
            if self.peer_fin:
                raise protocol_error("data after the server's FIN")
            self.received += len(payload)
            self.app.on_data(payload)
            self.queue_ack(force=False)
        elif ftype == ACK:
            (position,) = struct.unpack(">Q", payload)
            if position > self.sent_high:
                raise protocol_error(f"ack {position} beyond what we sent ({self.sent_high})")
            if position > self.acked:  # cumulative; older ones are ignored
                self.acked = position
                drop = min(position, self.written) - self.buf_start
                del self.send_buf[:drop]
                self.buf_start += drop
        elif ftype == PING:
            self.out += frame(PONG, payload)  # the same 8 bytes back (1.12)
        elif ftype == PONG:
            pass  # any frame counts as life; we keep no RTT
        elif ftype == FIN:
            (position,) = struct.unpack(">Q", payload)
            if self.peer_fin or position != self.received:
                raise protocol_error(f"FIN at {position} with {self.received} received")
            self.peer_fin = True
            self.queue_ack(force=True)  # the end of stream is consumed at once
            self.app.on_fin()
        elif ftype == CLOSE:
            raise Failed(f"the server aborted the session: {payload.decode()}")
        elif ftype == BYE:
            raise protocol_error("bye sent to a client")
        else:
            raise protocol_error(f"handshake frame 0x{ftype:02x} in a running session")

    def maybe_cut(self) -> None:
        if self.cuts and self.received >= self.cuts[0]:
            self.cuts.pop(0)
            raise LinkLost(f"cut on purpose after {self.received} bytes (--cut-after)")

    def complete(self) -> bool:
        """1.14: our FIN is acknowledged and we consumed the server's FIN."""
        return self.input_done and self.acked == self.written + 1 and self.peer_fin

    def finish(self, link: Link) -> None:
        """The server completes on our ack of its FIN: that ack goes before the bye (1.14)."""
        self.queue_ack(force=True)
        self.out += frame(BYE)
        deadline = time.monotonic() + 5.0
        try:
            while self.out or link.unsent():  # sent, and for HTTP answered
                link.wait(self.out, deadline)
            # Until the server ends the link: the bye was read, not reset away.
            link.finish(deadline)
        except LinkLost as e:
            if not e.orderly or self.out:
                self.log(f"link lost after the bye ({e}); the session was complete")
        except OSError as e:
            self.log(f"link lost after the bye ({e}); the session was complete")
        link.close()


class PipeApp:
    """The command line's application: the pattern or stdin in, stdout or a hash out."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.session: Optional[Session] = None
        self.pattern_left: Optional[int] = args.bytes  # input: the pattern (--bytes) or stdin
        self.pattern_pos = 0
        self.pattern_block = bytes(range(251)) * (DATA_CHUNK // 251 + 2)
        self.stdin_fd = sys.stdin.fileno() if args.bytes is None else -1
        self.stdin_selectable = args.bytes is None and selectable(self.stdin_fd)
        self.stdin_registered = self.stdin_readable = False
        self.sha = hashlib.sha256() if args.sha256 else None  # output: stdout, or a hash of it

    def on_open(self) -> None:
        pass

    def prepare(self, room: int) -> bool:
        """A pipe or terminal is waited for in the selector (heartbeats go on meanwhile);
        the pattern and a regular file never block: ready whenever there is room."""
        if not self.stdin_selectable:
            return room > 0
        assert self.session is not None
        if room > 0 and not self.stdin_registered:
            self.session.sel.register(self.stdin_fd, selectors.EVENT_READ, self.on_stdin)
        elif room <= 0 and self.stdin_registered:
            self.session.sel.unregister(self.stdin_fd)
        self.stdin_registered = room > 0
        return False

    def on_stdin(self, _events: int) -> None:
        assert self.session is not None
        self.stdin_readable = True
        try:
            self.session.read_input()
        finally:
            self.stdin_readable = False

    def pull(self, room: int) -> tuple[bytes, bool]:
        if self.pattern_left is not None:
            n = min(room, self.pattern_left)
            start = self.pattern_pos % 251
            self.pattern_left -= n
            self.pattern_pos += n
            return self.pattern_block[start:start + n], self.pattern_left == 0
        if self.stdin_readable or not self.stdin_selectable:
            data = os.read(self.stdin_fd, room)  # raw fd: no hidden buffer behind select
            return data, not data
        return b"", False

    def on_data(self, payload: bytes) -> None:
        if self.sha is not None:
            self.sha.update(payload)
        else:
            sys.stdout.buffer.write(payload)
            sys.stdout.buffer.flush()

    def on_fin(self) -> None:
        pass


class Rejected(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}" + (f" ({reason})" if reason else ""))
        self.code = code


def u32_at(payload: bytes, offset: int) -> int:
    return struct.unpack_from(">I", payload, offset)[0]


def recv(sock: socket.socket) -> Optional[bytes]:
    """One read: the bytes, b"" at EOF, None when there were none after all; LinkLost on error."""
    try:
        return sock.recv(RECV_SIZE)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError as e:
        raise LinkLost(str(e)) from None


def send(sock: socket.socket, data: bytearray) -> int:
    try:
        return sock.send(data)
    except (BlockingIOError, InterruptedError):
        return 0
    except OSError as e:
        raise LinkLost(str(e)) from None


def selectable(fd: int) -> bool:
    """Pipes, sockets and terminals can be waited on; regular files cannot (and never block)."""
    with selectors.DefaultSelector() as sel:
        try:
            sel.register(fd, selectors.EVENT_READ)
        except (PermissionError, ValueError, OSError):
            return False
    return True


def abort(sock: socket.socket) -> None:
    """Closes with an RST (SO_LINGER 0), as a cut link looks to the server."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


# --- Self-test -----------------------------------------------------------------
def self_test() -> None:
    h = bytes.fromhex
    # RFC 7748 5.2
    assert x25519(h("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"),
                  h("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")) == \
        h("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
    assert x25519(h("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d"),
                  h("e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493")) == \
        h("95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957")
    k = u = BASE_POINT
    for i in range(1, 1001):
        k, u = x25519(k, u), k
        if i == 1:
            assert k == h("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
    assert k == h("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")
    # RFC 7748 6.1, also the key pairs of PROTOCOL.md 1.20
    a_priv = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    b_priv = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    pub_c, pub_s = x25519(a_priv, BASE_POINT), x25519(b_priv, BASE_POINT)
    assert pub_c == h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert pub_s == h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = x25519(a_priv, pub_s)
    assert shared == x25519(b_priv, pub_c) == \
        h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    # PROTOCOL.md 1.20: the new-session handshake ...
    psk, window, sid = b"secret", 0x02000000, bytes(range(0x50, 0x60))
    hello = frame(HELLO, MAGIC + bytes([3, 0]) + bytes(range(0xa0, 0xb0)) + u32(window) + pub_c)
    t = hello + frame(CHALLENGE, bytes(range(0xc0, 0xe0)))
    assert mac(psk, b"immortal-v1 new client", t) == \
        h("417d5c0a4f761f126321e8b43de856f3c4ae787ef9a262e6e9e84acd66ee6ff1")
    assert mac(psk, b"immortal-v1 new server", t, sid, pub_s, u32(window)) == \
        h("3dbb91b1de65f73c7dfc30a51161a5af8c997b66b3b34512515e1d077201a573")
    k_resume = mac(shared, b"immortal-v1 resume key", sid, pub_c, pub_s)
    assert k_resume == h("495013a8e19bea669720fc29d0c79e92c33e713abb9011db956ff67b6fa627ad")
    # ... and its resume
    hello = frame(HELLO, MAGIC + bytes([3, 1]) + bytes(range(0xb0, 0xc0)) + u32(window) + sid + u64(5))
    assert hello.hex() == ("1000000032494d52540301b0b1b2b3b4b5b6b7b8b9babbbcbdbebf02000000"
                           "505152535455565758595a5b5c5d5e5f0000000000000005")
    t = hello + frame(CHALLENGE, bytes(range(0xd0, 0xf0)))
    assert mac(k_resume, b"immortal-v1 resume client", t) == \
        h("77628575e7b1f13388cfd9f5543d82c1fe1c1db28a6d086c03595083e65b3e4e")
    assert mac(k_resume, b"immortal-v1 resume server", t, u64(3), u32(window)) == \
        h("f40884d8e6f1a68b900d6717ab313a8f263a1062cba846ca4941b79449932f81")
    # 1.19: a few frames
    assert frame(ACK, u64(2**32 + 5)).hex() == "02000000080000000100000005"
    assert frame(PING, struct.pack(">d", 1.5)).hex() == "03000000083ff8000000000000"
    assert frame(CLOSE, b"done").hex() == "0600000004646f6e65"
    print("self-test passed: RFC 7748 5.2 and 6.1, PROTOCOL.md 1.19 and 1.20")


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Open an immortal session (PROTOCOL.md Part 1) over TCP, or over a "
                    "WebSocket or HTTP-streaming link (Part 4), send stdin (or --bytes of a "
                    "pattern), print what the server sends back; survive lost links by resuming.")
    parser.add_argument("host", nargs="?", help="server address, e.g. 127.0.0.1; or a URL, "
                        "ws://HOST:PORT/PATH (WebSocket) or http://HOST:PORT/PATH (HTTP streaming)")
    parser.add_argument("port", nargs="?", type=int, help="server port (not with a URL)")
    parser.add_argument("--psk", help="pre-shared key (UTF-8), when the server has one")
    parser.add_argument("--bytes", type=int, metavar="N",
                        help="send N bytes of the pattern 'byte i is i %% 251' instead of stdin")
    parser.add_argument("--sha256", action="store_true",
                        help="print 'SHA256HEX COUNT' of what was received instead of the bytes")
    parser.add_argument("--cut-after", type=int, action="append", metavar="BYTES",
                        help="reset our own link (its TCP connection, or all of a WebSocket's or "
                             "HTTP link's connections) once BYTES have been received in all, "
                             "then resume (repeat for several cuts)")
    parser.add_argument("--window", type=int, default=4 << 20,
                        help="our receive window in bytes (default 4 MiB)")
    parser.add_argument("--dead-link-timeout", type=float, default=5.0, metavar="SECONDS",
                        help="drop a link that was silent this long (default 5)")
    parser.add_argument("--resume-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="give up resuming after this long (default 120)")
    parser.add_argument("--self-test", action="store_true",
                        help="check X25519 and the handshake MACs against test vectors, then exit")
    args = parser.parse_args()
    if args.self_test:
        self_test()
        return 0
    url = args.host is not None and "://" in args.host
    if args.host is None or (args.port is None and not url):
        parser.error("HOST and PORT, or a URL, are required")
    if url and args.port is not None:
        parser.error("a URL takes no PORT")
    try:
        Target(args.host, args.port)
    except ValueError as e:
        parser.error(str(e))
    if not 1024 <= args.window <= 2**32 - 1:
        parser.error("--window must be in 1024 .. 2^32 - 1")
    if args.psk == "":
        parser.error("--psk must not be empty")
    app = PipeApp(args)
    session = app.session = Session(app, args.host, args.port, psk=args.psk, window=args.window,
                                    dead_after=args.dead_link_timeout,
                                    resume_timeout=args.resume_timeout, cuts=args.cut_after)
    try:
        session.run()
    except Failed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 1
    if app.sha is not None:
        print(f"{app.sha.hexdigest()} {session.received}", flush=True)
    log(f"session ended cleanly: sent {session.written}, received {session.received}, "
        f"resumed {session.resumes} times")
    return 0


if __name__ == "__main__":
    sys.exit(main())
