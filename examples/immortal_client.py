#!/usr/bin/env python3
"""A client of the immortal session protocol, in Python's standard library only.

Written from PROTOCOL.md Part 1 (sections 1.1-1.20), not from our TypeScript,
to show the document is enough to interoperate. It opens a session to an
immortal server over plain TCP, sends its input, prints what comes back, and
survives lost links: it resumes the session on a new TCP connection and
replays what the server had not received (1.7, 1.13).

    python3 examples/immortal_client.py 127.0.0.1 4000 < request > reply
    python3 examples/immortal_client.py 127.0.0.1 4000 --psk s3cret --bytes 4194304 --sha256
    python3 examples/immortal_client.py 127.0.0.1 4000 --bytes 4194304 --cut-after 1000000
    python3 examples/immortal_client.py --self-test

Input is stdin, or with --bytes N the pattern "byte i is i % 251". Output is
the bytes received on stdout, or with --sha256 one line "HEX COUNT". Notes on
what happens go to stderr. Exit status 0 when the session ended cleanly (both
directions finished and acknowledged, 1.14), 1 with one line "error: ..."
otherwise, 2 for bad arguments.

As a library, `Session` carries any application's bytes (see its docstring):
examples/immortal_tunnel.py runs the tunnel's stream multiplexing (Part 3) on it.

Not covered: sealed sessions (1.21) and TLS links. X25519 below uses Python
integers, which are not constant time: fine for an example, not for secrets
that matter.
"""
from __future__ import annotations

import argparse
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
    """The link died (reset, EOF, silence, malformed frame): resume on a new one."""


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
    """

    def __init__(self, app, host: str, port: int, psk: Optional[str] = None,
                 window: int = 4 << 20, dead_after: float = 5.0, resume_timeout: float = 120.0,
                 cuts: Optional[list[int]] = None, logger=None) -> None:
        self.app, self.host, self.port = app, host, port
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
    def _dial(self, hello_payload: bytes) -> tuple[socket.socket, FrameReader, bytes, float]:
        """Dials, sends hello, reads the challenge. Returns the socket, reader, T, deadline."""
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        sock = socket.create_connection((self.host, self.port), timeout=HANDSHAKE_TIMEOUT)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            hello = frame(HELLO, hello_payload)
            sock.sendall(hello)
            reader = FrameReader()
            ftype, payload = self._handshake_frame(sock, reader, deadline)
            if ftype != CHALLENGE:
                raise protocol_error(f"expected a challenge, got frame 0x{ftype:02x}")
            # T: both frames exactly as on the wire, headers included (1.6).
            return sock, reader, hello + frame(CHALLENGE, payload), deadline
        except BaseException:
            sock.close()
            raise

    def _handshake_frame(self, sock: socket.socket, reader: FrameReader,
                         deadline: float) -> tuple[int, bytes]:
        while True:
            got = reader.next()
            if got is not None:
                if got[0] == REJECT:
                    code, reason = REJECT_CODES[got[1][0]], got[1][1:].decode()
                    raise Rejected(code, reason)
                return got
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                raise LinkLost("the server closed the link during the handshake")
            reader.feed(data)

    def open_new(self) -> tuple[socket.socket, FrameReader]:
        private = secrets.token_bytes(32)
        pub_c = x25519(private, BASE_POINT)
        hello = MAGIC + bytes([VERSION, 0]) + secrets.token_bytes(16) + u32(self.window) + pub_c
        sock, reader, t, deadline = self._dial(hello)
        try:
            # Without a psk the proof is empty; a psk-less server ignores it anyway (1.6 rule 3-4).
            proof = mac(self.psk, b"immortal-v1 new client", t) if self.psk is not None else b""
            sock.sendall(frame(PROOF, proof))
            ftype, p = self._handshake_frame(sock, reader, deadline)
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
            return sock, reader
        except BaseException:
            sock.close()
            raise

    def resume(self) -> tuple[socket.socket, FrameReader]:
        received_c = self.received + (1 if self.peer_fin else 0)  # the FIN takes a position
        hello = (MAGIC + bytes([VERSION, 1]) + secrets.token_bytes(16) + u32(self.window)
                 + self.session_id + u64(received_c))
        sock, reader, t, deadline = self._dial(hello)
        try:
            sock.sendall(frame(PROOF, mac(self.k_resume, b"immortal-v1 resume client", t)))
            ftype, p = self._handshake_frame(sock, reader, deadline)
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
            return sock, reader
        except BaseException:
            sock.close()
            raise

    def reconnect(self, carried: bool) -> tuple[socket.socket, FrameReader]:
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
            sock, reader = self.open_new()
        except Rejected as r:
            raise Failed(f"the server refused the session: {r}") from None
        except (OSError, LinkLost, Malformed) as e:
            raise Failed(f"cannot open a session at {self.host}:{self.port}: {e}") from None
        self.log(f"session {self.session_id.hex()} open; server window {self.peer_window}")
        self.app.on_open()
        while True:
            self.carried = False
            try:
                self.run_link(sock, reader)
                return
            except LinkLost as e:
                abort(sock)
                self.log(f"link lost: {e}")
            except Failed as f:
                if f.close_reason is not None:  # best effort: the link may be dying too
                    try:
                        sock.setblocking(True)
                        sock.settimeout(1.0)
                        sock.sendall(bytes(self.out) + frame(CLOSE, f.close_reason.encode()[:1024]))
                    except OSError:
                        pass
                sock.close()
                raise
            sock, reader = self.reconnect(self.carried)

    def run_link(self, sock: socket.socket, reader: FrameReader) -> None:
        sock.setblocking(False)
        sel = self.sel
        sel.register(sock, selectors.EVENT_READ)
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
                    return self.finish(sock)
                sel.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0))
                now = time.monotonic()
                wake = min(last_tick + ACK_TICK, last_recv + self.dead_after,
                           last_send + HEARTBEAT if not self.out else now + HEARTBEAT)
                input_ready = self.app.prepare(self.room())
                ready = sel.select(max(0.0, wake - now) if not input_ready else 0)
                for key, events in ready:
                    if key.data is not None:  # the application's file, if still registered
                        if sel.get_map().get(key.fd) is key:
                            key.data(events)
                        continue
                    if events & selectors.EVENT_READ and (data := recv(sock)) is not None:
                        last_recv = time.monotonic()
                        reader.feed(data)
                        self.on_frames(reader)
                        self.maybe_cut()
                    if events & selectors.EVENT_WRITE and self.out:
                        n = send(sock, self.out)
                        del self.out[:n]
                        last_send = time.monotonic()
                now = time.monotonic()
                if now - last_recv > self.dead_after:  # nothing at all heard (1.12)
                    raise LinkLost(f"nothing received for {self.dead_after:g} s")
                if not self.out and now - last_send >= HEARTBEAT:
                    self.out += frame(PING, struct.pack(">d", now * 1000))
                if now - last_tick >= ACK_TICK:
                    last_tick = now
                    self.queue_ack(force=False, tick=True)
        finally:
            sel.unregister(sock)

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

    def finish(self, sock: socket.socket) -> None:
        """The server completes on our ack of its FIN: that ack goes before the bye (1.14)."""
        self.queue_ack(force=True)
        self.out += frame(BYE)
        try:
            sock.setblocking(True)
            sock.settimeout(5.0)
            sock.sendall(self.out)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):  # until the server closes: the bye was read, not reset away
                pass
        except OSError as e:
            self.log(f"link lost after the bye ({e}); the session was complete")
        sock.close()


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
    """One read: the bytes, None when there were none after all, LinkLost at EOF or error."""
    try:
        data = sock.recv(256 * 1024)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError as e:
        raise LinkLost(str(e)) from None
    if not data:
        raise LinkLost("the server closed the link")
    return data


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
        description="Open an immortal session (PROTOCOL.md Part 1) over TCP, send stdin "
                    "(or --bytes of a pattern), print what the server sends back; "
                    "survive lost links by resuming.")
    parser.add_argument("host", nargs="?", help="server address, e.g. 127.0.0.1")
    parser.add_argument("port", nargs="?", type=int, help="server port")
    parser.add_argument("--psk", help="pre-shared key (UTF-8), when the server has one")
    parser.add_argument("--bytes", type=int, metavar="N",
                        help="send N bytes of the pattern 'byte i is i %% 251' instead of stdin")
    parser.add_argument("--sha256", action="store_true",
                        help="print 'SHA256HEX COUNT' of what was received instead of the bytes")
    parser.add_argument("--cut-after", type=int, action="append", metavar="BYTES",
                        help="reset our own TCP link once BYTES have been received in all, "
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
    if args.host is None or args.port is None:
        parser.error("HOST and PORT are required")
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
