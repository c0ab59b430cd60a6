#!/usr/bin/env python3
r"""A relay client in Python's standard library only (Python 3.9+).

It speaks the relay protocol (PROTOCOL.md Part 2) over the WebSocket
transport, with the RFC 6455 handshake and framing written out by hand
(2.19 sketches the same): join a room, show who is there and who comes and
goes, print what the others send, send what you type.

    IMMORTAL_RELAY_SECRET=s3cret \
        python3 examples/relay_client.py http://127.0.0.1:8080 alice --session lab

The relay URL is the one our other clients take: http:// or https:// (ws://
and wss:// work too); the WebSocket is at relay/ws under its path (/relay/ws for
http://host:8080, /chat-relay/relay/ws for a relay a reverse proxy serves under
http://host/chat-relay/). The secret comes from
--secret or the IMMORTAL_RELAY_SECRET environment variable. For an https://
relay with a private CA, point SSL_CERT_FILE at the CA's PEM file.

Typed lines (stdin):
    some text         to everyone in the room
    /to NAME text     to the node NAME only
    /quit             leave (so do end of input, Ctrl-D, and Ctrl-C)
    //text            "/text" to everyone: any other line that starts with /
                      is taken for a mistyped command and goes nowhere
Lines go out at the pace the relay allows (its welcome's rate, 2.17), so a
file piped in is never refused rate-limited; end of input and /quit leave
once every line before them has gone (lines after /quit are not sent).
Ctrl-C leaves at once: if lines were still waiting for their turn, the exit
status is 1 and stderr says how many.

Output, one event a line on stdout, for people and for scripts alike:
    welcome NAME             joined; NAME is the nickname the relay assigned
                             (NAME(1), ... when the wanted one was taken)
    here NAME                someone already in the room (one line each)
    joined NAME              someone joined
    left NAME                someone left (said bye)
    gone NAME                someone went silent (or read too slowly) and the
                             relay gave up on them
    NAME: TEXT               a message to everyone (in TEXT, a line break shows
                             as \n and a backslash as \\: one message, one line)
    NAME (to you): TEXT      a message to you only
    NAME (numbers): 1 2.5    numbers, to everyone ("(numbers, to you)": to you)
    error CODE: MESSAGE      the relay refused something you sent
    pong N                   keep-alive answered, N in all (--show-keepalive)
    bye                      you left, and the relay confirmed it

Fatal problems go to stderr as one line starting with "error: " and the exit
status is 1 (2 for bad arguments): the relay cannot be reached, it refuses
the join (the line names its error code, e.g. unauthorized for a wrong
secret), or it closes the connection.

--exactly-once makes the client a node with an id (PROTOCOL.md 2.21): each
message it sends arrives once and in order, or it says so, and so does each
message for it, through broken connections and relay restarts. It numbers
what it sends and keeps it until the relay acknowledges it; when the
connection breaks (or the relay closes it), it reconnects by itself with its
join token (keeping its nickname) and its place in the room's history, is
given what it missed, drops what it already has, and resends what the relay
had not acknowledged. End of input and /quit then wait for the relay to take
every message before saying bye. More output lines:
    reconnecting: WHY        the connection broke; the client is reconnecting
    rejoined NAME            back in the room (here NAME lines follow again)
    missed REASON: ...       some messages for you may be lost: REASON is epoch
                             (the relay restarted, or forgot the room) or
                             window (away longer than the relay keeps them);
                             what the relay still holds follows
    error CODE: MESSAGE (your message N)
                             the relay refused or dropped the Nth message you
                             sent (alone: nobody else was there to hear it)
Ctrl-C leaves at once; if the relay had not taken everything by then, the
exit status is 1 and stderr says how many messages may be lost.
"""

import argparse
import base64
import codecs
import collections
import hashlib
import json
import os
import random
import re
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from urllib.parse import urlsplit

# RFC 6455 4.2.2: the server proves it understood the handshake by hashing
# our key with this fixed GUID.
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# We only ever hold small relay frames; anything far larger means a broken stream.
MAX_MESSAGE = 16 << 20
# Typed commands, by the same rules as examples/relay_chat.ts: "/to NAME text"
# (the text not blank), and the word that starts any other line beginning with "/".
TO_LINE = re.compile(r"^/to\s+(\S+)\s+(\S.*)$", re.DOTALL)
COMMAND = re.compile(r"/\S*")
COMMANDS = "/to NAME text, /quit; start a line with // to send one that starts with /"

# Exactly-once (PROTOCOL.md 2.21). Senders whose last message number we
# remember, to drop what a sender resends after a relay restart: as many as
# our own node remembers.
MAX_SENDERS_REMEMBERED = 10_000
# Closes after which coming back cannot help: the relay confirmed our bye
# (1000), another connection of this very node took over (4409), or one side
# broke the protocol or refused the hello (it would happen again). Any other
# close is a blip to an exactly-once node: the relay shutting down (1001) may
# be a restart, a missed keep-alive (4408) or a full queue (4429) leaves our
# place in the room to come back to (2.14), and 4503 and 1012 say to (2.16).
FINAL_CLOSES = {1000, 1002, 1003, 1007, 1009, 4400, 4401, 4409}
# Join refusals a retry would only repeat (2.15); full and unavailable may clear.
FINAL_REFUSALS = {"unauthorized", "bad-request", "bad-hello"}
# Reconnect backoff, as our own node's (2.13): the first attempt at once,
# then 250 ms doubling to 5 s, jittered, so that nodes cut off together do
# not all come back in the same instant.
BACKOFF_INITIAL, BACKOFF_MAX = 0.25, 5.0
# A connection the relay closed (4xxx) sooner than this after its welcome did
# not work: after n such in a row the backoff starts n steps in (2.13), so a
# relay that welcomes and then drops every node is not redialed at once in a
# loop. A link that broke under us is a blip: redialed at once, always.
STABLE_CONNECTION = 5.0
# The relay's clash suffix, name(1) (2.9).
CLASH_SUFFIX = re.compile(r"\(\d+\)$")
MISSED = {
    "epoch": "the relay restarted or forgot the room; some messages for you may be lost",
    "window": "you were away longer than the relay keeps messages; some may be lost",
}


class Refused(Exception):
    """The relay said no: `code` is its error code (PROTOCOL.md 2.15)."""

    def __init__(self, code, message, detail=""):
        super().__init__(f"{code}: {message}{detail}")
        self.code = code


class Closed(Exception):
    """The connection ended; `code` is the close code (2.16), 1006 if there was none."""

    def __init__(self, code, reason):
        super().__init__(f"{code} {reason}".strip())
        self.code, self.reason = code, reason


def relay_address(url):
    """(host, port, use_tls, Host header, path of the WebSocket) from a relay URL."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "ws", "wss"):
        raise ValueError(f"the relay URL must be http://, https://, ws:// or wss://, got {url}")
    if not parts.hostname:
        raise ValueError(f"no host in the relay URL {url}")
    use_tls = scheme in ("https", "wss")
    try:
        port = parts.port
    except ValueError:
        port = 0  # not a number, or out of range: refused below as port 0 is
    if port == 0:
        raise ValueError(f"the port in the relay URL {url} is not a number in 1-65535")
    if port is None:
        port = 443 if use_tls else 80
    host = parts.hostname
    # The relay refuses a request without Host (2.2); IPv6 literals keep their brackets there.
    host_header = f"[{host}]" if ":" in host else host
    if parts.port:
        host_header += f":{port}"
    # Under the URL's path: a reverse proxy may serve the relay under a prefix.
    ws_path = parts.path.rstrip("/") + "/relay/ws"
    if parts.query:
        # A gateway in front may want its own parameters: kept, as given.
        ws_path += "?" + parts.query
    return host, port, use_tls, host_header, ws_path


def mask(data, key):
    """XORs `data` with the 4-byte `key`, repeated: as one big integer, which is far
    faster in Python than a byte-by-byte loop."""
    n = len(data)
    if n == 0:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


class WebSocket:
    """The client side of RFC 6455, as much of it as a relay client needs."""

    def __init__(self, url, timeout):
        host, port, use_tls, host_header, ws_path = relay_address(url)
        sock = socket.create_connection((host, port), timeout=timeout)
        if use_tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        self.sock = sock
        # A buffered reader: the handshake's head is read line by line, and
        # whatever arrived after it (the first frames) stays buffered for us.
        self.reader = sock.makefile("rb")
        # Threads write at once (the frame reader answers pings, the sender
        # sends lines, a bye may come from any): one frame must go out whole
        # before the next starts.
        self.write_lock = threading.Lock()
        self.close_sent = False
        # The first write that failed. The relay may have closed its end
        # after it said why (a close frame, still unread here): once a write
        # fails, reading goes on to find that, and later writes fail at once.
        self.write_error = None
        self._handshake(host_header, ws_path)

    def _handshake(self, host_header, ws_path):
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {ws_path} HTTP/1.1\r\n"
                f"Host: {host_header}\r\n"
                "Upgrade: websocket\r\n"
                "Connection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n"
                "\r\n"
            ).encode()
        )
        status_line = self.reader.readline(16384).decode("latin-1").rstrip("\r\n")
        if not status_line:
            raise Closed(1006, "the relay closed the connection during the handshake")
        headers = {}
        while True:
            line = self.reader.readline(16384).decode("latin-1").rstrip("\r\n")
            if not line:
                break
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        fields = status_line.split(" ", 2)
        status = fields[1] if len(fields) > 1 else "?"
        if status != "101":
            # A refused upgrade (401 for a secret in a header, 426, a proxy's
            # 403, ...) carries the relay's JSON {"error", "message"} body (2.2).
            raise self._refusal(status_line, status, headers)
        expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            # Not a WebSocket server that read our request (a cache, a stale proxy, ...).
            raise Closed(1002, "the relay's handshake answer has a wrong Sec-WebSocket-Accept")

    def _refusal(self, status_line, status, headers):
        body = b""
        try:
            if "content-length" in headers:
                body = self.reader.read(min(int(headers["content-length"]), 65536))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                size = int(self.reader.readline(100).split(b";")[0], 16)
                body = self.reader.read(min(size, 65536))
        except (OSError, ValueError):
            pass  # The status alone must do.
        try:
            refusal = json.loads(body)
            return Refused(refusal["error"], refusal["message"], f" (HTTP {status})")
        except (ValueError, KeyError, TypeError):
            return Refused(f"HTTP {status}", status_line)

    def send(self, opcode, payload):
        """Sends one whole frame. Client frames MUST be masked (RFC 6455 5.3)."""
        n = len(payload)
        if n < 126:
            length = bytes([0x80 | n])
        elif n < 65536:
            length = bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            length = bytes([0x80 | 127]) + struct.pack(">Q", n)
        # A fresh random key per frame (RFC 6455 10.3): our bytes then never
        # look like HTTP to a confused proxy in between.
        key = os.urandom(4)
        frame = bytes([0x80 | opcode]) + length + key + mask(payload, key)
        with self.write_lock:
            # Nothing may follow our close frame (RFC 6455 5.5.1).
            if self.close_sent:
                return
            if self.write_error is not None:
                raise OSError(self.write_error.errno, self.write_error.strerror)
            if opcode == OP_CLOSE:
                self.close_sent = True
            try:
                self.sock.sendall(frame)
            except OSError as error:
                self.write_error = error
                raise

    def send_json(self, frame):
        self.send(OP_TEXT, json.dumps(frame, ensure_ascii=False).encode())

    def _read_exact(self, n):
        data = self.reader.read(n)
        if len(data) < n:
            raise Closed(1006, "the connection ended without a close frame")
        return data

    def receive(self):
        """The next text message, decoded; answers WebSocket pings on the way.
        Raises Closed when the relay closes (after echoing its close frame)."""
        message, message_op = b"", None
        while True:
            b0, b1 = self._read_exact(2)
            fin, opcode = b0 & 0x80, b0 & 0x0F
            if b1 & 0x80:
                raise Closed(1002, "the relay sent a masked frame")
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read_exact(8))[0]
            if n > MAX_MESSAGE or len(message) + n > MAX_MESSAGE:
                raise Closed(1009, "the relay sent a message too large for this client")
            payload = self._read_exact(n)
            if opcode == OP_CLOSE:
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                reason = payload[2:].decode("utf-8", "replace")
                # Echo the close (RFC 6455 5.5.1): the relay waits for it before
                # it ends the TCP connection, so both sides know it was clean.
                # A relay that waited long enough has ended it already: the
                # echo then fails, and what the relay said is no less true.
                self._try_send(OP_CLOSE, payload[:2])
                raise Closed(code, reason)
            if opcode == OP_PING:
                # Our relay does not ping at the WebSocket level (2.4), but a
                # proxy in between may: a pong with the same payload is owed.
                # If it cannot go, the frames still to read say why.
                self._try_send(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode in (OP_TEXT, OP_BINARY):
                message, message_op = payload, opcode
            elif opcode == OP_CONT and message_op is not None:
                message += payload
            else:
                raise Closed(1002, f"unexpected WebSocket frame (opcode {opcode})")
            if fin:
                if message_op == OP_TEXT:
                    return message.decode("utf-8", "replace")
                # The relay sends only text on /relay/ws; skip anything else.
                message, message_op = b"", None

    def _try_send(self, opcode, payload):
        """Sends a frame the connection may be past needing; a failure is kept in write_error."""
        try:
            self.send(opcode, payload)
        except OSError:
            pass

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self):
        """Ends the connection under any thread still using it. close() alone
        would leave a write blocked on a dead link blocked (and holding its
        locks); a shutdown makes it fail at once."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close()


class Left(Exception):
    """The user left while the client was reconnecting: there was nobody to say bye to."""


class Client:
    """One node in a relay room: joins, then prints events and sends lines.

    Plain, it is the node of PROTOCOL.md 2.6-2.16, whose life ends with its
    connection. With exactly_once it is a node with an id (2.21): it numbers
    its messages and keeps them until acknowledged, and it reconnects by
    itself, with its join token and its position in the room's history.
    """

    def __init__(self, url, session, nickname, secret, timeout, show_keepalive, exactly_once):
        self.url, self.session, self.secret, self.timeout = url, session, secret, timeout
        self.wanted = nickname
        self.show_keepalive = show_keepalive
        self.ws = None
        self.nickname = None
        self.token = None
        self.keep_alive_ms = 1000
        self.pongs = 0
        self.said_bye = False
        self.bye_lock = threading.Lock()
        # Set by leave(): a reconnect in progress stops (its backoff too).
        self.leaving = threading.Event()
        self.finished = threading.Event()
        self.outcome = None  # what ended the client: a Closed, a Refused (rejoin) or a Left
        # The node's id names it for its whole life (2.21): 128 random bits,
        # base64url, as our node's. A new run is a new life, whose numbers
        # start again at 1, so the id is never kept across runs.
        self.node_id = None
        if exactly_once:
            self.node_id = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        # Whether the relay acknowledges: its welcome has an epoch (2.7).
        self.reliable = False
        self.seq = 0
        # Messages to send, and (exactly-once) those sent and not yet
        # acknowledged, in order: the first `sent` of them went out on this
        # connection. The sender thread sends the rest, at the relay's pace;
        # after a reconnect it starts again from the first. Waiting on the
        # lock, a bye waits for the last message (and its acknowledgement).
        self.unacked = []
        self.sent = 0
        self.outbox = threading.Condition()
        self.connected = False
        # The relay's allowance (2.17): its welcome's `rate`, messages a
        # second. A bucket of `rate` (half the relay's burst), so bursts of
        # typed or piped lines are never refused rate-limited.
        self.rate = None
        self.tokens = 0.0
        self.refilled = 0.0
        # When the connection was welcomed, and how many in a row were lost
        # soon after theirs: where the next reconnect's backoff starts.
        self.welcomed_at = float("-inf")
        self.short_lived = 0
        # Where this node is in the room's history: [epoch, offset] (2.21).
        self.position = None
        # The highest seq heard per sender id, least recently heard first.
        self.seen = collections.OrderedDict()

    def join(self, ws):
        """Joins on `ws` the first time; raises Refused, Closed or OSError."""
        self._welcome(ws, self._hello(ws), again=False)

    def _hello(self, ws):
        """Sends our hello on `ws` and returns the relay's welcome frame."""
        hello = {"t": "hello", "session": self.session, "nickname": self.nickname or self.wanted}
        # The secret goes in the hello, as our other WebSocket clients send it
        # (2.3): browsers cannot set headers on a WebSocket, so this is the
        # path every relay supports for it. Never in the URL.
        if self.secret:
            hello["secret"] = self.secret
        # Back with the nickname the relay gave us and our latest token: the
        # relay swaps the connection in (nobody hears of it) or gives the
        # reserved nickname back (2.10).
        if self.token:
            hello["token"] = self.token
        if self.node_id is not None:
            hello["id"] = self.node_id
            if self.position is not None:
                hello["recover"] = {"epoch": self.position[0], "offset": self.position[1]}
        ws.send_json(hello)
        refusal = None
        while True:
            try:
                text = ws.receive()
            except Closed as closed:
                # A refused join is an error frame, then a close 4000 + HTTP status (2.8).
                if refusal is not None:
                    detail = f" (close {closed.code})"
                    raise Refused(refusal.get("code"), refusal.get("message"), detail)
                raise
            try:
                frame = json.loads(text)
            except ValueError:
                continue
            if not isinstance(frame, dict):
                continue
            if frame.get("t") == "error":
                refusal = frame
            elif frame.get("t") == "welcome":
                return frame

    def _welcome(self, ws, welcome, again):
        """Takes the welcome on `ws`: who we are now, who is here, where we
        are in the history, and (exactly-once) what to resend."""
        with self.outbox:
            self.ws = ws
            # The relay may have changed the nickname (name(1), ...): from now
            # on, this is who we are (2.8).
            self.nickname = welcome.get("nickname", self.nickname or self.wanted)
            self.token = welcome.get("token", self.token)
            self.keep_alive_ms = welcome.get("keepAlive", self.keep_alive_ms)
            print(f"{'rejoined' if again else 'welcome'} {self.nickname}")
            for member in welcome.get("members", []):
                print(f"here {member.get('nickname')}")
            if self.node_id is not None:
                self._take_position(welcome)
                self.reliable = isinstance(welcome.get("epoch"), str)
                if self.reliable:
                    acked = welcome.get("acked")
                    self._acked(acked if isinstance(acked, int) else 0)
            rate = welcome.get("rate")
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0:
                rate = None  # A relay that names no rate: everything goes at once.
            if rate != self.rate:
                # The bucket belongs to the member, across reconnects: it is
                # not refilled at every welcome, only for a new rate.
                self.rate, self.tokens, self.refilled = rate, max(1.0, rate or 0), time.monotonic()
            self.welcomed_at = time.monotonic()
            # What the relay has not taken goes again, in order, and before
            # anything new (2.21): the sender starts over from the first.
            self.sent = 0
            self.connected = True
            self.outbox.notify_all()

    def _take_position(self, welcome):
        epoch, offset = welcome.get("epoch"), welcome.get("offset")
        if not isinstance(epoch, str) or not isinstance(offset, int):
            self.position = None  # A relay without histories: nothing to recover.
            return
        if welcome.get("recovered") is True:
            # What we missed follows the welcome and moves our offset on.
            return
        if self.position is not None:
            # Not everything after our position can be given: say so, never
            # silently. What the relay still holds follows all the same.
            reason = welcome.get("missed") or "epoch"
            print(f"missed {reason}: {MISSED.get(reason, 'some messages for you may be lost')}")
        # The welcome's offset is just before the first message it still
        # gives us (or the room's latest): ours from now on.
        self.position = [epoch, offset]

    def _fresh(self, frame):
        """Whether `frame` (a msg) is new to us, not a replay or a resend."""
        offset = frame.get("offset")
        if self.position is not None and isinstance(offset, int):
            if offset <= self.position[1]:
                return False  # Replayed: we had it before this connection.
            self.position[1] = offset
        # Across a relay restart offsets start again, but a sender's own
        # numbers do not: a resend of what the old relay took is known by them.
        sender, seq = frame.get("id"), frame.get("seq")
        if isinstance(sender, str) and isinstance(seq, int):
            last = self.seen.get(sender)
            if last is not None and seq <= last:
                return False
            self.seen[sender] = seq
            self.seen.move_to_end(sender)
            if len(self.seen) > MAX_SENDERS_REMEMBERED:
                self.seen.popitem(last=False)
        return True

    def _acked(self, seq):
        """The relay has taken all our messages up to `seq` (hold the outbox lock)."""
        taken = 0
        while taken < len(self.unacked) and self.unacked[taken]["seq"] <= seq:
            taken += 1
        del self.unacked[:taken]
        self.sent = max(0, self.sent - taken)
        if not self.unacked:
            self.outbox.notify_all()

    def pending(self):
        """Messages not sent yet, and (exactly-once) not acknowledged."""
        with self.outbox:
            return len(self.unacked)

    def run_reader(self):
        """Reads the relay's frames until the client is done (its own thread);
        an exactly-once client reconnects whenever the connection breaks."""
        try:
            while True:
                ws = self.ws
                closed = self._read(ws)
                ws.abort()
                with self.outbox:
                    self.connected = False
                if self.node_id is None or self.said_bye or closed.code in FINAL_CLOSES:
                    self.outcome = closed
                    return
                self.outcome = self._reconnect(closed)
                if self.outcome is not None:
                    return
        finally:
            self.finished.set()
            with self.outbox:
                # The sender stops, and a bye waiting for acks waits no more.
                self.outbox.notify_all()

    def _take_token(self):
        """Takes one message's allowance (hold the outbox lock): returns 0, or
        the seconds until there is one."""
        if self.rate is None:
            return 0
        now = time.monotonic()
        # At least one message fits, whatever the rate.
        self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0
        return (1 - self.tokens) / self.rate

    def run_sender(self):
        """Sends what waits in the outbox, in order, at the relay's pace (its
        own thread), while connected; stops once the client leaves or ends."""
        try:
            with self.outbox:
                while not self.finished.is_set() and not self.leaving.is_set():
                    if not self.connected or self.sent >= len(self.unacked):
                        self.outbox.wait()
                        continue
                    wait = self._take_token()
                    if wait > 0:
                        # Lets acks and reconnects through meanwhile. Bounded:
                        # a relay that names a tiny rate (or a wait past
                        # threading.TIMEOUT_MAX) is asked again later.
                        self.outbox.wait(min(wait, 60.0))
                        continue
                    try:
                        self.ws.send_json(self.unacked[self.sent])
                    except OSError:
                        # Broken: the reader finds out, and we start over once back.
                        self.connected = False
                        continue
                    if self.node_id is None or not self.reliable:
                        # Nothing acknowledges it (no id, or a relay without
                        # 2.21): sent is all we can do.
                        del self.unacked[self.sent]
                        if not self.unacked:
                            self.outbox.notify_all()
                    else:
                        self.sent += 1
        except Exception as error:
            # Nothing would send again, and end of input would wait for ever:
            # say so, and leave (what was not taken is reported as lost).
            print(f"error: sending stopped: {error}", file=sys.stderr, flush=True)
            self.leave()

    def _read(self, ws):
        """Handles frames from `ws` until it ends; returns how (a Closed)."""
        # Pings come every keepAlive ms (2.13), so a long silence means the
        # relay or the network died without closing (a pulled cable): give
        # up after three beats, but never sooner than 5 s, so that a busy
        # machine is not taken for a dead relay.
        ws.sock.settimeout(max(3 * self.keep_alive_ms, 5000) / 1000)
        try:
            while True:
                try:
                    text = ws.receive()
                except socket.timeout:
                    raise Closed(1006, "the relay went silent (no keep-alive)")
                try:
                    frame = json.loads(text)
                except ValueError:
                    continue
                if isinstance(frame, dict):
                    try:
                        self.handle(frame)
                    except OSError:
                        # A pong (or other answer) that cannot go out: the
                        # relay has most likely closed the connection, and
                        # what it sent before that, its close frame and
                        # reason above all, is still to read. Reading on
                        # reports that rather than "Broken pipe".
                        pass
        except Closed as closed:
            return closed
        except OSError as error:
            return Closed(1006, str(error))

    def _reconnect(self, why):
        """Comes back after `why` ended the connection. Returns None once
        rejoined, else what ended the client (a final Refused, or Left)."""
        print(f"reconnecting: {why}")
        failure = why
        # Redialed at once, unless the relay closed it (4xxx) soon after its
        # welcome, again (2.13).
        refused = isinstance(why, Closed) and 4000 <= why.code < 5000
        soon = time.monotonic() - self.welcomed_at < STABLE_CONNECTION
        self.short_lived = self.short_lived + 1 if refused and soon else 0
        attempt = self.short_lived
        while True:
            if attempt > 0:
                # Capped exponent: 2.0 ** 1024 overflows after an hour of outage.
                wait = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** min(attempt - 1, 30))
                if self.leaving.wait(wait * random.uniform(0.5, 1.0)):
                    return Left(failure)
            if self.leaving.is_set():
                return Left(failure)
            attempt += 1
            try:
                ws = WebSocket(self.url, self.timeout)
            except Refused as refused:  # The upgrade refused (a proxy's 502, ...).
                failure = refused
                continue
            except (OSError, Closed) as error:
                failure = error
                continue
            try:
                welcome = self._hello(ws)
            except Refused as refused:
                ws.close()
                if (
                    refused.code == "bad-request"
                    and self.nickname != self.wanted
                    and CLASH_SUFFIX.search(self.nickname or "")
                ):
                    # A name(1) is ours only while the relay knows our token
                    # for it (2.9); a relay that restarted, or a reservation
                    # that ran out, knows none: ask for the wanted name again.
                    self.nickname, self.token, attempt = None, None, 0
                    failure = refused
                    continue
                if refused.code in FINAL_REFUSALS:
                    return refused
                failure = refused
                continue
            except (OSError, Closed) as error:
                ws.close()
                failure = error
                continue
            self._welcome(ws, welcome, again=True)
            return None

    def handle(self, frame):
        t = frame.get("t")
        if t == "ping":
            # The relay pings every keepAlive ms and declares a node gone once
            # it has heard nothing from it for fadeAfter (2.5 beats by
            # default): every ping MUST get a pong (2.13), at once.
            self.ws.send_json({"t": "pong"})
            self.pongs += 1
            if self.show_keepalive:
                print(f"pong {self.pongs}")
        elif t == "join":
            print(f"joined {frame.get('nickname')}")
        elif t == "leave":
            print(f"{'left' if frame.get('reason') == 'left' else 'gone'} {frame.get('nickname')}")
        elif t == "msg":
            if self.node_id is not None and not self._fresh(frame):
                return
            who = frame.get("from", "?")
            if isinstance(frame.get("numbers"), list):
                label = " (numbers, to you)" if "to" in frame else " (numbers)"
                body = " ".join(json.dumps(n) for n in frame["numbers"])
            else:
                label = " (to you)" if "to" in frame else ""
                # One event, one line: a line break inside a message is shown as \n.
                body = str(frame.get("text", "")).replace("\\", "\\\\").replace("\n", "\\n")
            print(f"{who}{label}: {body}")
        elif t == "ack" and self.node_id is not None:
            seq = frame.get("seq")
            if isinstance(seq, int):
                with self.outbox:
                    self._acked(seq)
        elif t == "error":
            seq = frame.get("seq")
            about = ""
            if self.node_id is not None and isinstance(seq, int):
                # Taken all the same (answered): it is not resent (2.21).
                with self.outbox:
                    for i, m in enumerate(self.unacked):
                        if m["seq"] == seq:
                            del self.unacked[i]
                            if i < self.sent:
                                self.sent -= 1
                            break
                    if not self.unacked:
                        self.outbox.notify_all()
                about = f" (your message {seq})"
            print(f"error {frame.get('code')}: {frame.get('message')}{about}")
        elif t == "pipe":
            # Another node asks for a byte pipe (2.20); this client has none to
            # offer, and saying so spares that node the 5 s wait for a timeout.
            refusal = {"t": "pipe-refuse", "id": frame.get("id"), "reason": "it accepts no pipes"}
            self.ws.send_json(refusal)
        # Anything else (pong, frames of later versions) is ignored, as 2.7 asks.

    def send_message(self, frame):
        """Queues a msg frame for the sender; exactly-once, numbered and kept
        until acknowledged. Nothing is queued after a bye."""
        with self.outbox:
            if self.leaving.is_set():
                return
            if self.node_id is not None:
                self.seq += 1
                frame = dict(frame, seq=self.seq)
            self.unacked.append(frame)
            self.outbox.notify_all()

    def send_line(self, line):
        if line.startswith("/") and not line.startswith("//"):
            # A command, never sent as typed: a mistyped one would go to everyone.
            command = COMMAND.match(line).group()
            to = TO_LINE.match(line)
            if command == "/quit":
                self.quit()
            elif command == "/to" and to:
                self.send_message({"t": "msg", "to": to.group(1), "text": to.group(2)})
            elif command == "/to":
                print("usage: /to NAME text", file=sys.stderr, flush=True)
            else:
                unknown = f"unknown command {command}, nothing sent: try {COMMANDS}"
                print(unknown, file=sys.stderr, flush=True)
            return
        # A message; "//" is an escaped "/", so that any text can be sent.
        text = line[1:] if line.startswith("//") else line
        if text.strip():
            self.send_message({"t": "msg", "text": text})

    def quit(self):
        """Leaves as a user asks to (/quit, end of input): first every message
        goes out (at the relay's pace), and an exactly-once node waits until
        the relay has taken them all, through reconnects if need be, since a
        bye would leave the rest behind."""
        with self.outbox:
            while self.unacked and not self.finished.is_set() and not self.leaving.is_set():
                self.outbox.wait()
        self.leave()

    def leave(self):
        """Says bye once; the relay then tells the others we left and closes with 1000."""
        with self.bye_lock:
            if self.said_bye:
                return
            self.said_bye = True
        self.leaving.set()
        try:
            self.ws.send_json({"t": "bye"})
        except OSError:
            pass  # The connection is gone already; the reader reports how.

    def run_stdin(self):
        """Sends typed lines (its own thread); leaves at end of input."""
        # os.read, not sys.stdin: a daemon thread blocked inside sys.stdin's
        # buffered reader can make the interpreter abort at exit.
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        pending = ""
        try:
            while not self.finished.is_set() and not self.leaving.is_set():
                chunk = os.read(0, 65536)
                if not chunk:
                    break
                pending += decoder.decode(chunk)
                *lines, pending = pending.split("\n")
                for line in lines:
                    if self.leaving.is_set():
                        break  # /quit: what follows it is not sent.
                    # The relay refuses CR in text (2.6): drop Windows line ends.
                    self.send_line(line.rstrip("\r"))
            if pending.strip() and not self.leaving.is_set():
                self.send_line(pending.rstrip("\r"))
        except OSError:
            pass  # stdin closed under us, or the connection ended: leave either way.
        self.quit()


def parse_args():
    parser = argparse.ArgumentParser(
        description="Join a room of an immortal relay and chat: lines from stdin go to "
        "everyone, '/to NAME text' to one node; end of input or Ctrl-C leaves.",
        epilog="Output lines: 'welcome NAME', 'here NAME', 'joined NAME', 'left NAME', "
        "'gone NAME', 'NAME: TEXT', 'NAME (to you): TEXT', 'error CODE: MESSAGE', 'bye'; "
        "with --exactly-once also 'reconnecting: WHY', 'rejoined NAME', 'missed REASON: ...'.",
    )
    parser.add_argument(
        "url", help="the relay, e.g. http://127.0.0.1:8080 (https://, ws://, wss:// too)"
    )
    parser.add_argument(
        "nickname", help="the nickname you want (the relay adds (1), (2), ... if it is taken)"
    )
    parser.add_argument(
        "--session", default="lab", help="the room (session id) to join (default: lab)"
    )
    parser.add_argument(
        "--secret",
        default=os.environ.get("IMMORTAL_RELAY_SECRET"),
        help="the relay secret (default: $IMMORTAL_RELAY_SECRET, which is safer: "
        "other users of the machine can read command lines)",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to connect and join (default: 10)"
    )
    parser.add_argument(
        "--show-keepalive", action="store_true", help="print 'pong N' for each keep-alive answered"
    )
    parser.add_argument(
        "--exactly-once",
        action="store_true",
        help="be a node with an id (PROTOCOL.md 2.21): messages both ways arrive once and in "
        "order, or you are told; reconnects by itself when the connection breaks",
    )
    return parser.parse_args()


def fail(message, status=1):
    print(f"error: {message}", file=sys.stderr, flush=True)
    return status


def main():
    args = parse_args()
    # Events must show up as they happen, also when stdout is a pipe.
    sys.stdout.reconfigure(line_buffering=True, errors="backslashreplace")
    try:
        relay_address(args.url)
    except ValueError as error:
        # A URL we cannot use is a bad argument, like those argparse refuses (status 2).
        return fail(str(error), 2)
    try:
        ws = WebSocket(args.url, args.timeout)
    except Refused as refused:
        return fail(f"the relay at {args.url} refused the connection: {refused}")
    except (OSError, Closed) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        return fail(f"cannot reach the relay at {args.url}: {reason}")
    client = Client(
        args.url,
        args.session,
        args.nickname,
        args.secret,
        args.timeout,
        args.show_keepalive,
        args.exactly_once,
    )
    try:
        client.join(ws)
    except Refused as refused:
        ws.close()
        return fail(f"the relay refused the join: {refused}")
    except (OSError, Closed) as error:
        ws.close()
        return fail(f"the relay at {args.url} ended the connection while joining: {error}")

    reader = threading.Thread(target=client.run_reader, name="relay-reader", daemon=True)
    reader.start()
    threading.Thread(target=client.run_sender, name="relay-sender", daemon=True).start()
    # A daemon thread: blocked on stdin, it must not keep the process alive.
    threading.Thread(target=client.run_stdin, name="stdin-reader", daemon=True).start()
    try:
        # A bounded wait in a loop, not one long wait: on Windows only the
        # timeout lets Ctrl-C through.
        while not client.finished.wait(1.0):
            pass
    except KeyboardInterrupt:
        client.leave()
        # The relay answers bye with its close at once; if it does not, give up.
        client.finished.wait(5.0)
    client.ws.close()
    outcome = client.outcome
    # What was not sent (or, exactly-once, not taken by the relay) when we
    # left may never arrive (only Ctrl-C leaves before it has all gone).
    # Never silently.
    unacked = client.pending()
    lost = (
        f" ({unacked} messages you sent were not acknowledged: they may be lost)"
        if args.exactly_once
        else f" ({unacked} lines you typed were not sent yet)"
    )
    if client.said_bye and isinstance(outcome, Closed) and outcome.code == 1000:
        print("bye")
        return fail(f"left{lost}") if unacked else 0
    lost = lost if unacked else ""
    if outcome is None:
        return fail(f"the relay did not confirm the bye{lost}")
    if isinstance(outcome, Left):
        return fail(f"left while reconnecting to the relay ({outcome}){lost}")
    if isinstance(outcome, Refused):
        return fail(f"the relay refused the rejoin: {outcome}{lost}")
    return fail(f"the relay closed the connection: {outcome}{lost}")


if __name__ == "__main__":
    # SIGTERM (a service manager, a test) leaves as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # Ctrl-C before the join finished: nothing to say bye to.
        sys.exit(130)
