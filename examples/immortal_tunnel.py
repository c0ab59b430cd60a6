#!/usr/bin/env python3
"""A tunnel client (like `cli/tunnel.ts client`), in Python's standard library only.

Written from PROTOCOL.md Part 3 (stream multiplexing, 3.1-3.12) and 1.18, not from
our TypeScript, to show the document is enough to interoperate with our tunnel
server. It listens on 127.0.0.1:LISTEN_PORT and carries each accepted local TCP
connection as one stream of ONE immortal session to the tunnel server, which
connects it to its target (3.11). The session layer is examples/immortal_client.py's
(Part 1): when the link breaks, it resumes, and the streams carry on where they were.

    python3 examples/immortal_tunnel.py 2001 server.example 2000 --psk s3cret
    python3 examples/immortal_tunnel.py 0 127.0.0.1 2000 --cut-after 1000000

Once the session is open it says "listening on 127.0.0.1:PORT" on stderr (LISTEN_PORT
0 picks a port); notes on what happens follow there. Exit status 0 when stopped by
SIGINT or SIGTERM (the session is aborted with a Part 1 `close`: no frame ends a
multiplexed session, 3.10), 1 with one line "error: ..." when the session cannot be
opened, is refused (a wrong key: "auth") or is lost for good, 2 for bad arguments.

Choices of this client (Part 3 leaves them open): a fixed window of 262 144 bytes per
stream (credit granted as the local application reads half of it, never grown); a
stream the server opens is refused; a stream that is refused or reset, and every
open stream when the tunnel ends, has its local connection reset (RST), so that an
application sees an error, not an end of file. The session is opened at start and
not reopened: losing it for good ends the tunnel.
"""
from __future__ import annotations

import argparse
import os
import selectors
import signal
import socket
import struct
import sys
from typing import Optional

sys.dont_write_bytecode = True  # leave no __pycache__ behind for the import below
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from immortal_client import Failed, Session, abort, protocol_error  # noqa: E402

# --- Frames, 3.2 - 3.5 ----------------------------------------------------------
GREETING = b"IMMUX\x01\x00\x00"  # "IMMUX", version 1, two reserved zero bytes
OPEN, ACCEPT, REFUSE, DATA, CREDIT, FIN, RESET = range(1, 8)
NAMES = {OPEN: "OPEN", ACCEPT: "ACCEPT", REFUSE: "REFUSE", DATA: "DATA", CREDIT: "CREDIT",
         FIN: "FIN", RESET: "RESET"}
MAX_DATA = 262144
MAX_LENGTH = {OPEN: 1024, ACCEPT: 0, REFUSE: 1024, DATA: MAX_DATA, CREDIT: 4, FIN: 0, RESET: 1024}
HEADER = struct.Struct(">BII")  # type, stream, length
WINDOW = 262144  # the initial credit, each direction (3.8); ours never grows
LAST_ID = 2**32 - 1
READ_CHUNK = 64 * 1024  # one local read, one DATA frame at most this big
HIGH_WATER = 1 << 20  # stop reading local connections while this much waits for the link
CLOSED_BY_APP = "closed by the application"


def mux_frame(ftype: int, stream: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(ftype, stream, len(payload)) + payload


def reason_text(payload: bytes) -> str:
    return payload.decode("utf-8", "replace")  # never an error (3.4)


def log(message: str) -> None:
    print(f"immortal_tunnel: {message}", file=sys.stderr, flush=True)


class Stopped(Failed):
    """SIGINT or SIGTERM: abort the session (Part 1 `close`) and exit 0."""


class Stream:
    """One local connection and its stream (3.7). Gone once out of `Tunnel.streams`."""

    def __init__(self, sid: int, sock: socket.socket) -> None:
        self.id, self.sock = sid, sock
        self.opening = True  # until ACCEPT
        self.credit = WINDOW  # DATA bytes we may still send (3.8 rule 3)
        self.local_eof = False  # the local application half-closed: our FIN is queued
        self.peer_fin = False  # the server's FIN arrived
        self.shut = False  # ... and was passed on: shutdown(SHUT_WR) of the local socket
        self.to_local = bytearray()  # received, not yet written to the local socket
        self.received = 0  # DATA bytes received in all
        self.granted = WINDOW  # what we let the server send in all: WINDOW + increments
        self.consumed = 0  # bytes written to the local socket
        self.credited = 0  # `consumed` at our last grant
        self.mask = 0  # selector events registered
        self.up = self.down = 0  # bytes carried, for the log
        self.callback = None  # its selector callback, set by the tunnel


class Tunnel:
    """The multiplexing client of Part 3 on top of a Session (Part 1), as its application."""

    def __init__(self, listener: socket.socket, verbose: bool) -> None:
        self.listener, self.verbose = listener, verbose
        self.session: Optional[Session] = None
        self.queue = bytearray(GREETING)  # bytes for the session; the greeting goes first (3.2)
        self.inbuf = bytearray()
        self.greeted = 0  # bytes of the server's greeting checked so far
        self.streams: dict[int, Stream] = {}
        self.draining: set[Stream] = set()  # finished streams still writing to their socket
        self.next_id = 1  # the client's ids are odd (3.6)
        self.peer_high = 0  # the highest id the server opened (it never does, 3.11 rule 6)
        self.throttled = False
        self.opened = 0

    # -- Session callbacks ---------------------------------------------------------
    def on_open(self) -> None:
        assert self.session is not None
        self.session.sel.register(self.listener, selectors.EVENT_READ, self.on_accept)
        host, port = self.listener.getsockname()[:2]
        log(f"listening on {host}:{port}")

    def pull(self, room: int) -> tuple[bytes, bool]:
        data = bytes(self.queue[:room])
        del self.queue[:room]
        return data, False  # the multiplexed session never ends our byte stream (3.10)

    def prepare(self, room: int) -> bool:
        if self.throttled and self.backlog() < HIGH_WATER:
            self.throttled = False
            for st in list(self.streams.values()):
                self.update(st)
        return bool(self.queue) and room > 0

    def on_fin(self) -> None:
        raise Failed("the tunnel server ended its byte stream (a Part 1 fin): the tunnel is over",
                     close_reason=CLOSED_BY_APP)

    def on_data(self, data: bytes) -> None:
        """Reassembles Part 3 frames from the session's bytes, however they were cut (3.1)."""
        buf = self.inbuf
        buf += data
        pos = 0
        if self.greeted < len(GREETING):  # compared byte for byte as they arrive (3.2)
            n = min(len(buf), len(GREETING) - self.greeted)
            if buf[:n] != GREETING[self.greeted:self.greeted + n]:
                raise protocol_error(f"bad greeting {bytes(buf[:n]).hex()} "
                                     f"(expected {GREETING[self.greeted:].hex()})")
            self.greeted += n
            pos = n
        while len(buf) - pos >= HEADER.size:
            ftype, sid, length = HEADER.unpack_from(buf, pos)
            # Judged on the header, before the payload arrives (3.5).
            if ftype not in MAX_LENGTH:
                raise protocol_error(f"unknown frame type 0x{ftype:02x}")
            if length > MAX_LENGTH[ftype]:
                raise protocol_error(f"{NAMES[ftype]} with a payload of {length} bytes")
            if ftype == DATA and length == 0:
                raise protocol_error(f"empty DATA on stream {sid}")
            if ftype == CREDIT and length != 4:
                raise protocol_error(f"CREDIT of {length} bytes on stream {sid}")
            if len(buf) - pos - HEADER.size < length:
                break
            start = pos + HEADER.size
            pos = start + length
            self.on_frame(ftype, sid, bytes(buf[start:pos]))
        del buf[:pos]

    def on_frame(self, ftype: int, sid: int, payload: bytes) -> None:
        if ftype == OPEN:  # the server opening a stream, which a tunnel server never does
            if sid % 2 == 1 or sid <= self.peer_high:
                raise protocol_error(f"the peer opened stream {sid} out of turn")
            self.peer_high = sid
            self.send(mux_frame(REFUSE, sid, b"this tunnel client accepts no streams"))
            return
        st = self.streams.get(sid)
        if st is None:
            return  # a stream we do not have (any more): dropped silently (3.5)
        if ftype == ACCEPT:
            st.opening = False  # an ACCEPT that answers nothing is ignored (3.7 rule 1)
        elif ftype == REFUSE:
            if st.opening:  # 3.11 rule 3: the local connection is closed, its bytes lost
                log(f"stream {sid} refused: {reason_text(payload)}")
                self.forget(st, reset_local=True)
        elif ftype == DATA:
            if st.peer_fin:
                raise protocol_error(f"DATA on stream {sid} after its FIN")
            st.received += len(payload)
            if st.received > st.granted:
                raise protocol_error(f"stream {sid}: {st.received - st.granted} bytes "
                                     f"past the window granted")
            st.to_local += payload
            self.flush(st)
        elif ftype == CREDIT:
            st.credit += struct.unpack(">I", payload)[0]  # increments add up (3.8 rule 2)
        elif ftype == FIN:
            if st.peer_fin:
                raise protocol_error(f"a second FIN on stream {sid}")
            st.peer_fin = True
            self.flush(st)  # the half-close follows the bytes before it (3.11 rule 4)
        elif ftype == RESET:
            log(f"stream {sid} reset by the server: {reason_text(payload)}")
            self.forget(st, reset_local=True)
        if st.id in self.streams or st in self.draining:
            self.update(st)

    # -- Local connections ---------------------------------------------------------
    def on_accept(self, _events: int) -> None:
        assert self.session is not None
        for _ in range(64):
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of descriptors, say: the connection waits in the backlog
                log(f"accept failed: {e}")
                return
            if self.next_id > LAST_ID:  # ids used up: no more streams in this session (3.6)
                log("stream ids used up: the local connection is closed")
                abort(sock)
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            st = Stream(self.next_id, sock)
            st.callback = lambda events, st=st: self.on_event(st, events)
            self.next_id += 2
            self.streams[st.id] = st
            self.opened += 1
            # Empty metadata, and the connection's bytes at once, before the answer (3.11 rule 2).
            self.send(mux_frame(OPEN, st.id))
            if self.verbose:
                log(f"stream {st.id} opened for a local connection")
            self.update(st)

    def on_event(self, st: Stream, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            self.flush(st)
        if events & selectors.EVENT_READ and st.id in self.streams:
            self.read(st)
        if st.id in self.streams or st in self.draining:
            self.update(st)

    def read(self, st: Stream) -> None:
        try:
            data = st.sock.recv(min(st.credit, READ_CHUNK))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            return self.fail(st, f"read: {e}")
        if data:
            st.credit -= len(data)
            st.up += len(data)
            self.send(mux_frame(DATA, st.id, data))
        else:  # EOF becomes a FIN (3.11 rule 4)
            st.local_eof = True
            self.send(mux_frame(FIN, st.id))
            self.maybe_finished(st)

    def flush(self, st: Stream) -> None:
        """Writes what the server sent to the local socket; grants credit as it goes."""
        if st.to_local:
            try:
                n = st.sock.send(st.to_local)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                return self.fail(st, f"write: {e}")
            del st.to_local[:n]
            st.consumed += n
            st.down += n
            # Half the window read: grant it again (3.8, like ours but with no growth).
            if (not st.peer_fin and st.id in self.streams
                    and st.consumed - st.credited >= WINDOW // 2):
                increment = st.consumed - st.credited
                self.send(mux_frame(CREDIT, st.id, struct.pack(">I", increment)))
                st.granted += increment
                st.credited = st.consumed
        if st.peer_fin and not st.to_local and not st.shut:
            st.shut = True
            try:
                st.sock.shutdown(socket.SHUT_WR)
            except OSError as e:
                return self.fail(st, f"shutdown: {e}")
            self.maybe_finished(st)

    def maybe_finished(self, st: Stream) -> None:
        """Finished once our FIN went and the server's came (3.7); the socket closes once
        the server's bytes are written and passed on."""
        if st.local_eof and st.peer_fin and st.id in self.streams:
            del self.streams[st.id]
            self.draining.add(st)
            if self.verbose:
                log(f"stream {st.id} finished: {st.up} bytes up, {st.down} down")
        if st in self.draining and st.shut:
            self.draining.discard(st)
            self.drop_socket(st, reset=False)

    def fail(self, st: Stream, why: str) -> None:
        """A local read or write error: the stream is reset (3.11 rule 5)."""
        log(f"stream {st.id}: local connection failed ({why})")
        if st.id in self.streams:
            self.send(mux_frame(RESET, st.id, CLOSED_BY_APP.encode()))
        self.forget(st, reset_local=True)

    def forget(self, st: Stream, reset_local: bool) -> None:
        self.streams.pop(st.id, None)
        self.draining.discard(st)
        if st.to_local:  # what arrived before a RESET still goes out, as far as it can
            try:
                st.sock.send(st.to_local)
            except OSError:
                pass
        self.drop_socket(st, reset=reset_local)

    def drop_socket(self, st: Stream, reset: bool) -> None:
        assert self.session is not None
        if st.mask:
            self.session.sel.unregister(st.sock)
            st.mask = 0
        if reset:
            abort(st.sock)
        else:
            st.sock.close()

    def update(self, st: Stream) -> None:
        """Registers the events the stream waits for: reads within its credit while the
        session keeps up, writes while bytes wait for the local socket."""
        assert self.session is not None
        mask = 0
        if (st.id in self.streams and not st.local_eof and st.credit > 0
                and not self.throttled):
            mask |= selectors.EVENT_READ
        if st.to_local:
            mask |= selectors.EVENT_WRITE
        if mask == st.mask:
            return
        sel = self.session.sel
        if not mask:
            sel.unregister(st.sock)
        elif not st.mask:
            sel.register(st.sock, mask, st.callback)
        else:
            sel.modify(st.sock, mask, st.callback)
        st.mask = mask

    def send(self, frame_bytes: bytes) -> None:
        self.queue += frame_bytes
        if self.backlog() >= HIGH_WATER:
            self.throttled = True

    def backlog(self) -> int:
        """Bytes for the server not yet on the link: ours, and the session's unsent ones."""
        assert self.session is not None
        return len(self.queue) + self.session.written - self.session.sent

    def close_all(self) -> None:
        """The session is over: every stream that did not finish fails (3.10)."""
        for st in list(self.streams.values()) + list(self.draining):
            abort(st.sock)
        self.streams.clear()
        self.draining.clear()
        self.listener.close()


def self_test() -> None:
    """The frames of PROTOCOL.md 3.12, and its exchange run through a Tunnel."""
    import types
    h = bytes.fromhex
    assert mux_frame(OPEN, 3, b"echo") == h("0100000003000000046563686f")
    assert mux_frame(OPEN, 2) == h("010000000200000000")
    assert mux_frame(CREDIT, 1, struct.pack(">I", 131072)) == h("05000000010000000400020000")
    assert mux_frame(CREDIT, 1, struct.pack(">I", 393216)) == h("05000000010000000400060000")
    assert mux_frame(REFUSE, 3, b"too many streams") == h("030000000300000010746f6f206d616e79"
                                                         "2073747265616d73")
    assert mux_frame(RESET, 1, CLOSED_BY_APP.encode()) == \
        h("070000000100000019") + b"closed by the application"
    # The one stream of 3.12, a socket pair standing in for the local connection.
    tunnel = Tunnel(socket.socket(), verbose=False)
    tunnel.session = types.SimpleNamespace(sel=selectors.DefaultSelector(), written=0, sent=0)
    local, app = socket.socketpair()
    local.setblocking(False)
    st = tunnel.streams[1] = Stream(1, local)
    tunnel.send(mux_frame(OPEN, 1))
    app.sendall(b"hi")
    app.shutdown(socket.SHUT_WR)
    tunnel.read(st)  # "hi"
    tunnel.read(st)  # EOF: FIN
    assert tunnel.queue == h("494d4d5558010000 010000000100000000 040000000100000002 6869"
                             "060000000100000000")
    from_server = h("494d4d5558010000 020000000100000000 040000000100000002 6869"
                    "060000000100000000")
    for i in range(len(from_server)):  # frames reassembled however the bytes come (3.1)
        tunnel.on_data(from_server[i:i + 1])
    assert app.recv(10) == b"hi" and app.recv(10) == b"" and not tunnel.streams  # finished
    for bad, why in ((b"IMMUX\x02", "bad greeting"), (GREETING + mux_frame(OPEN, 5), "out of turn"),
                     (GREETING + h("080000000100000000"), "unknown frame type"),
                     (GREETING + mux_frame(DATA, 1), "empty DATA"),
                     (GREETING + h("0400000001") + struct.pack(">I", MAX_DATA + 1), "payload of")):
        tunnel.inbuf, tunnel.greeted = bytearray(), 0
        try:
            tunnel.on_data(bad)
            raise AssertionError(f"no protocol error for {bad.hex()}")
        except Failed as e:
            assert why in str(e), e
    app.close()
    tunnel.listener.close()
    print("self-test passed: PROTOCOL.md 3.12 frames and exchange, 3.5 protocol errors")


def stop(signum: int, _frame) -> None:
    raise Stopped(f"stopped by {signal.Signals(signum).name}", close_reason=CLOSED_BY_APP)


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Listen on 127.0.0.1:LISTEN_PORT and carry each local TCP connection as a "
                    "stream (PROTOCOL.md Part 3) of one immortal session to a tunnel server, "
                    "which connects it to its target; survive lost links by resuming.")
    parser.add_argument("listen_port", type=int, metavar="LISTEN_PORT",
                        help="local port to listen on (127.0.0.1); 0 picks one")
    parser.add_argument("host", metavar="SERVER_HOST", help="tunnel server address")
    parser.add_argument("port", type=int, metavar="SERVER_PORT", help="tunnel server port")
    parser.add_argument("--psk", help="pre-shared key (UTF-8), when the server has one")
    parser.add_argument("--cut-after", type=int, action="append", metavar="BYTES",
                        help="reset our own TCP link once BYTES session bytes have been "
                             "received in all, then resume (repeat for several cuts)")
    parser.add_argument("--dead-link-timeout", type=float, default=5.0, metavar="SECONDS",
                        help="drop a link that was silent this long (default 5)")
    parser.add_argument("--resume-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="give up resuming after this long (default 120)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also note every stream opened and finished")
    parser.add_argument("--self-test", action="store_true",
                        help="check the frames and exchange of PROTOCOL.md 3.12, then exit "
                             "(alone, without the other arguments)")
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return 0
    args = parser.parse_args()
    if not 0 <= args.listen_port <= 65535:
        parser.error("LISTEN_PORT must be in 0 .. 65535")
    if not 1 <= args.port <= 65535:
        parser.error("SERVER_PORT must be in 1 .. 65535")
    if args.psk == "":
        parser.error("--psk must not be empty")
    if any(n < 0 for n in args.cut_after or []):
        parser.error("--cut-after must not be negative")
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    tunnel: Optional[Tunnel] = None
    try:
        try:
            listener = socket.create_server(("127.0.0.1", args.listen_port), backlog=128)
        except OSError as e:
            raise Failed(f"cannot listen on 127.0.0.1:{args.listen_port}: {e}") from None
        listener.setblocking(False)
        tunnel = Tunnel(listener, args.verbose)
        tunnel.session = Session(tunnel, args.host, args.port, psk=args.psk,
                                 dead_after=args.dead_link_timeout,
                                 resume_timeout=args.resume_timeout, cuts=args.cut_after,
                                 logger=log)
        tunnel.session.run()  # returns only by an exception: nothing ends the tunnel cleanly
    except Stopped as e:
        log(f"{e}; {tunnel.opened if tunnel else 0} streams carried, resumed "
            f"{tunnel.session.resumes if tunnel and tunnel.session else 0} times")
        return 0
    except Failed as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if tunnel is not None:
            tunnel.close_all()
    return 1


if __name__ == "__main__":
    sys.exit(main())
