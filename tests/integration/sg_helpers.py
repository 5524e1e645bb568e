# SPDX-License-Identifier: Apache-2.0
"""Helpers for the signal-gateway black-box integration tests.

Everything here talks to the gateway from the outside only: raw HTTP and
WebSocket bytes over sockets, the `websockets` client library, JWTs made with
PyJWT (or by hand for tokens PyJWT refuses to make), and a tiny RESP client for
looking at Redis.  Every wait is bounded.

Run with Debian's interpreter: /usr/bin/python3 -m pytest tests/integration
"""

import asyncio
import base64
import fcntl
import hashlib
import hmac
import json
import os
import pathlib
import random
import signal
import socket
import ssl
import struct
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import jwt
import websockets
import websockets.exceptions

REPO = pathlib.Path(__file__).resolve().parents[2]
GATEWAY_BIN = os.environ.get("SG_GATEWAY_BIN") or str(REPO / "build" / "signal-gateway")
JWT_SECRET = "sg-integration-secret-5b0a8f3e-please-never-log-me"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HOST = "127.0.0.1"
# The gateway under test is the ASan+UBSan build (tests/run.sh sets this).
# Its resident memory then says nothing about the gateway's own use: ASan
# keeps freed blocks in quarantine (256 MiB by default) and maps shadow
# memory. Tests marked `rss` check RSS bounds only without it; tests/run.sh
# runs them against the release build as well.
SANITIZED = os.environ.get("SG_SANITIZED") == "1"

# Rate limits off, for tests that push many messages quickly (docs/protocol.md §7:
# "0 turns one off").
NO_RATE_LIMITS = {
    "SIGNAL_RATE_PEER": "0",
    "SIGNAL_RATE_CANDIDATE": "0",
    "SIGNAL_RATE_ROOM": "0",
    "SIGNAL_RATE_CONN_FRAMES": "0",
    "SIGNAL_RATE_CONN_BYTES": "0",
}

OMIT = object()  # claim value meaning "leave this claim out"

def clean_env():
    """This process' environment without the gateway's settings (SIGNAL_*)
    or OpenTelemetry's (OTEL_*): what a gateway a test starts inherits."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SIGNAL_", "OTEL_"))}


def log_events(text, event=None):
    """The JSON objects of a gateway's log (or a subcommand's stdout), one
    per line, those of one event when event is given; other lines skipped."""
    out = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and (event is None or obj.get("event") == event):
            out.append(obj)
    return out


def control(redis_url, *args, env=None):
    """Runs a backend control subcommand (signal-gateway kick / close-room /
    revoke) the way an operator would, with the server's Redis settings and
    nothing else. Returns (exit code, stdout, stderr)."""
    full = clean_env()
    if redis_url is not None:
        full["SIGNAL_REDIS_URL"] = redis_url
    full.update({k: v for k, v in (env or {}).items() if v is not None})
    p = subprocess.run([GATEWAY_BIN, *args], env=full, capture_output=True, text=True, timeout=30)
    assert not sanitizer_marker(p.stderr), f"sanitizer report from {args}:\n{p.stderr}"
    return p.returncode, p.stdout, p.stderr


# --------------------------------------------------------------------------
# small utilities


# Ports for the servers the tests start (redis-server, gateways, haproxy,
# coturn) are handed out from outside the kernel's ephemeral range: bind(0)
# and every outgoing connection (the kernel picks its local port from that
# range) could otherwise take a port between free_port() and the server's own
# bind. The range is cut into blocks; each test process (one per
# pytest-xdist worker, or a plain pytest run) claims a block of its own for
# its lifetime with a non-blocking flock on a file named after the block, so
# parallel workers, and test runs from other checkouts at the same time, never
# hand out the same port. The kernel drops the lock when the process exits,
# however it exits. Within its block a process walks the ports in turn, so a
# port a finished test used is not handed out again soon (a server may still
# be exiting, a connection still in TIME_WAIT), and skips any port it cannot
# bind at that moment.

PORT_BLOCK = 1000
_PORT_LOCK_DIR = pathlib.Path(os.environ.get("SG_PORT_LOCK_DIR") or "/tmp/sg-test-ports")
_port_block = None  # (fd holding the lock, first port, last port + 1)
_port_next = None
_port_random = random.Random()  # a test seeding `random` must not make runs pick alike


def _ephemeral_range():
    try:
        lo, hi = (int(x) for x in pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _port_spans():
    """Port spans [a, b) outside the ephemeral range and above the
    well-known/registered low ports, the largest first."""
    lo, hi = _ephemeral_range()
    spans = [(10000, min(lo, 65536)), (max(hi + 1, 10000), 65536)]
    return sorted((s for s in spans if s[1] - s[0] >= PORT_BLOCK), key=lambda s: s[0] - s[1])


def _claim_port_block():
    """Lock a block no other test process holds: (fd, first, end) or None."""
    try:
        _PORT_LOCK_DIR.mkdir()
        os.chmod(_PORT_LOCK_DIR, 0o1777)  # shared by every user's test runs, like /tmp
    except FileExistsError:
        pass
    except OSError:
        return None
    blocks = [(a + i * PORT_BLOCK, a + (i + 1) * PORT_BLOCK)
              for a, b in _port_spans() for i in range((b - a) // PORT_BLOCK)]
    # start from a random block: fewer lock attempts when many runs are about
    _port_random.shuffle(blocks)
    for first, end in blocks:
        path = _PORT_LOCK_DIR / f"block-{first}.lock"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return fd, first, end
    return None


def _bindable(port, udp):
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                # no SO_REUSEADDR: a port with a connection in TIME_WAIT is
                # skipped too, not just one a server listens on
                s.bind((HOST, port))
            except OSError:
                return False
    return True


def _own_port_block():
    """This process' block (claimed on first use), or False."""
    global _port_block, _port_next
    if _port_block is None:
        _port_block = _claim_port_block() or False
        if _port_block:
            _port_next = _port_random.randrange(_port_block[1], _port_block[2])
    return _port_block


def free_port(udp=False):
    """A port nobody else is handed and that was free a moment ago (TCP, and
    UDP too when udp=True). Servers are started on it right away; callers
    still retry when a process outside the test suite took it."""
    global _port_next
    if not _own_port_block():  # no lock directory, or every block taken: the kernel's pick
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            return s.getsockname()[1]
    _, first, end = _port_block
    for _ in range(end - first):
        port = _port_next
        _port_next = first + (port + 1 - first) % (end - first)
        if _bindable(port, udp):
            return port
    raise RuntimeError(f"no bindable port left in this process' block {first}-{end - 1}")


def port_range(n):
    """n consecutive ports of this process' own block (coturn's relay range),
    handed to nothing else before the block wraps."""
    global _port_next
    if not _own_port_block():
        lo = _port_random.randrange(20000, 29000)
        return range(lo, lo + n)
    _, first, end = _port_block
    if _port_next + n > end:
        _port_next = first
    r = range(_port_next, _port_next + n)
    _port_next = first + (_port_next + n - first) % (end - first)
    return r


def new_peer():
    return str(uuid.uuid4())


def new_room(prefix="room"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


ASYNC_TEST_TIMEOUT = 90  # s: the bound of an `async def` test without its own (conftest.py)


def arun(coro, timeout=ASYNC_TEST_TIMEOUT):
    """Run a coroutine to its end from synchronous code, with an overall bound.
    A test that is all asynchronous is written `async def` instead and run
    by conftest.py's pytest_pyfunc_call."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def _poll(pred, deadline, timeout, what):
    """pred()'s value; AssertionError when it is false past the deadline."""
    v = pred()
    if not v and time.monotonic() > deadline:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
    return v


def wait_until(pred, timeout, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while not (v := _poll(pred, deadline, timeout, what)):
        time.sleep(interval)
    return v


async def async_wait_until(pred, timeout, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while not (v := _poll(pred, deadline, timeout, what)):
        await asyncio.sleep(interval)
    return v


def http_status(url, timeout=1.0):
    """(status, body) of a GET, or (None, None) when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        try:
            body = e.read()
        except Exception:
            body = b""
        return e.code, body
    except (urllib.error.URLError, OSError, ConnectionError):
        return None, None


def insecure_ssl_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# --------------------------------------------------------------------------
# processes the tests start (conftest.py's fixtures, cluster_helpers.py)

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "ThreadSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")


def sanitizer_marker(text):
    """The first sanitizer report marker in a log, or None."""
    return next((m for m in SANITIZER_MARKERS if m in text), None)


def stop_process(proc, term_timeout, sig=signal.SIGTERM):
    """Signal (SIGTERM), wait, SIGKILL after the bound. Returns the exit status."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout=term_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10)


def wait_answering(proc, ping, timeout=5.0, interval=0.02):
    """Until ping() is true (a server answering, e.g. Redis' PING) or proc
    exits; whether it answered. A refused or failing ping is tried again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if ping():
                return True
        except (OSError, RedisError):
            pass
        time.sleep(interval)
    return False


def rss_kib(pid):
    """Resident set size of a process, KiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid):
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gateway_env(node_id, port, admin_port, redis_url, defaults=None, env=None):
    """The environment of a gateway under test: nothing SIGNAL_* or OTEL_* of
    the test run's own (clean_env), its listeners, Redis, the test secret and
    node id, then defaults, then env (a value of None removes the variable)."""
    full = clean_env()
    full.update({
        "SIGNAL_LISTEN": f"{HOST}:{port}",
        "SIGNAL_ADMIN_LISTEN": f"{HOST}:{admin_port}",
        "SIGNAL_REDIS_URL": redis_url,
        "SIGNAL_JWT_SECRET": JWT_SECRET,
        "SIGNAL_NODE_ID": node_id,
        "SIGNAL_LOG_LEVEL": "info",
    })
    for k, v in {**(defaults or {}), **(env or {})}.items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = str(v)
    return full


class GatewayEndpoints:
    """What tests ask of a gateway process, whoever started it (conftest's
    Gateway, cluster_helpers' Node): host, port, admin_port, tls and
    log_text() come from the subclass."""

    host = HOST
    tls = False

    @property
    def ws_url(self):
        return f"{'wss' if self.tls else 'ws'}://{self.host}:{self.port}/ws"

    @property
    def admin_url(self):
        return f"http://{self.host}:{self.admin_port}"

    def readyz(self, timeout=1.0):
        return http_status(self.admin_url + "/readyz", timeout=timeout)[0]

    def log_tail(self, n=80):
        return "\n".join(self.log_text().splitlines()[-n:])


# --------------------------------------------------------------------------
# JWT


def b64url(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token_claims(sub="alice", rooms=None, exp_in=300, **claims):
    now = int(time.time())
    c = {}
    if sub is not None:
        c["sub"] = sub
    if exp_in is not None:
        c["exp"] = now + exp_in
    c["iat"] = now
    if rooms is not None:
        c["rooms"] = list(rooms)
    for k, v in claims.items():
        if v is OMIT:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def make_token(sub, rooms=None, exp_in=300, **claims):
    """HS256 token signed with the test secret. rooms=None leaves the claim out,
    exp_in=None leaves exp out, a claim given as OMIT is left out."""
    return jwt.encode(token_claims(sub, rooms, exp_in, **claims), JWT_SECRET, algorithm="HS256")


def tok(sub="alice", rooms=("*",), exp_in=300, **claims):
    """The tests' usual token: make_token for sub, allowed into every room
    unless rooms says otherwise (rooms=None leaves the claim out)."""
    return make_token(sub, rooms=None if rooms is None else list(rooms), exp_in=exp_in, **claims)


def sign_token(payload, key, alg, headers=None):
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def hand_made_token(header, payload, hmac_key=None, signature=None):
    """A JWT assembled by hand: HS256-signed with hmac_key (bytes) when given,
    else with the literal signature (bytes, may be empty)."""
    signing_input = b64url(json.dumps(header, separators=(",", ":"))) + "." + \
        b64url(json.dumps(payload, separators=(",", ":")))
    if hmac_key is not None:
        sig = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    else:
        sig = signature or b""
    return signing_input + "." + b64url(sig)


# --------------------------------------------------------------------------
# Redis: a minimal synchronous RESP2 client


class RedisError(Exception):
    pass


class RedisReads:
    """The reads tests make most, over self(*command)."""

    def keys(self, pattern="*"):
        return sorted(self("KEYS", pattern))

    def hgetall(self, key):
        flat = self("HGETALL", key)
        return dict(zip(flat[0::2], flat[1::2]))

    def pttl(self, key):
        return self("PTTL", key)

    def room_keys(self, room):
        """Every key that mentions the room id."""
        return sorted(k for k in self("KEYS", "*") if room in k)

    def subscribers(self, channel):
        """Subscribers of a channel, plain or sharded pub/sub."""
        n = self("PUBSUB", "NUMSUB", channel)[1]
        try:
            n += self("PUBSUB", "SHARDNUMSUB", channel)[1]
        except RedisError:
            pass
        return n


class RedisClient(RedisReads):
    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.f = self.sock.makefile("rb")

    def close(self):
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass

    def __call__(self, *args):
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            if not isinstance(a, bytes):
                a = str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(parts))
        return self._read()

    def _read(self):
        line = self.f.readline()
        if not line:
            raise RedisError("connection closed")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RedisError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)[:-2]
            return data.decode("utf-8", "replace")
        if t == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self._read() for _ in range(n)]
        raise RedisError(f"bad reply {line!r}")


class RedisServer(RedisReads):
    """A server the tests started on self.port: each call is one command on a
    fresh connection (cheap, and safe across tests)."""

    command_timeout = 5.0

    @property
    def url(self):
        return f"redis://{HOST}:{self.port}/0"

    def __call__(self, *args, timeout=None):
        c = RedisClient(self.port, timeout=timeout or self.command_timeout)
        try:
            return c(*args)
        finally:
            c.close()

    def answers(self):
        return self("PING", timeout=1) == "PONG"

    def launch(self, argv, log, what, timeout=5.0):
        """Run argv (a redis-server) with its output appended to log; self
        once it answers PING, else RuntimeError with the log's tail."""
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if wait_answering(self.proc, self.answers, timeout):
            return self
        stop_process(self.proc, 3)
        raise RuntimeError(f"{what} did not start:\n" + log.read_text(errors="replace")[-1500:])


# --------------------------------------------------------------------------
# room state in Redis (docs/protocol.md §6)


def peers_key(room):
    return f"room:{{{room}}}:peers"


def acl_key(room):
    return f"room:{{{room}}}:acl"


def peer_channel(room, peer):
    return f"room:{{{room}}}:peer:{peer}"


def member_record(redis, room, peer):
    """A peer's member record in Redis (a dict), or None."""
    raw = redis("HGET", peers_key(room), peer)
    return json.loads(raw) if raw is not None else None


# --------------------------------------------------------------------------
# raw HTTP


class HTTPResponse:
    def __init__(self, status, reason, headers, body, leftover=b""):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (lowercase name, value)
        self.body = body
        self.leftover = leftover

    def header(self, name):
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def json(self):
        return json.loads(self.body.decode())

    def __repr__(self):
        return f"<HTTP {self.status} {self.reason} {self.headers} {self.body[:300]!r}>"


def open_socket(host, port, tls=False, timeout=5.0, rcvbuf=None):
    if rcvbuf is None:
        s = socket.create_connection((host, port), timeout=timeout)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
        s.settimeout(timeout)
        s.connect((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls:
        s = insecure_ssl_context().wrap_socket(s, server_hostname="localhost")
    return s


def new_ws_key():
    return base64.b64encode(os.urandom(16)).decode()


def accept_for(key):
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def upgrade_request(host, port, path="/ws", token=None, headers=None, key=None,
                    method="GET", version="HTTP/1.1"):
    """Bytes of a WebSocket upgrade request. headers: dict of overrides, a value
    of None removes a default header; names are matched case-insensitively and
    new names are appended. Repeated headers: pass a list of values."""
    key = key or new_ws_key()
    hdrs = [
        ["Host", f"{host}:{port}"],
        ["Upgrade", "websocket"],
        ["Connection", "Upgrade"],
        ["Sec-WebSocket-Key", key],
        ["Sec-WebSocket-Version", "13"],
    ]
    if token is not None:
        hdrs.append(["Authorization", f"Bearer {token}"])
    for name, value in (headers or {}).items():
        hdrs = [h for h in hdrs if h[0].lower() != name.lower()]
        if value is None:
            continue
        for v in (value if isinstance(value, list) else [value]):
            hdrs.append([name, v])
    lines = [f"{method} {path} {version}"] + [f"{k}: {v}" for k, v in hdrs]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_http_response(sock, timeout=5.0, max_head=65536):
    """Read one response head (+ body unless 101). Raises EOFError if the peer
    closed before a complete head."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\r\n\r\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete HTTP response head within {timeout}s; got {buf[:500]!r}")
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed before a complete response; got {buf[:500]!r}")
        buf += chunk
        if len(buf) > max_head:
            raise AssertionError("response head too large")
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1])
    reason = parts[2] if len(parts) > 2 else ""
    headers = []
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers.append((k.strip().lower(), v.strip()))
    resp = HTTPResponse(status, reason, headers, b"")
    if status == 101:
        resp.leftover = rest
        return resp
    clen = resp.header("content-length")
    body = rest
    if clen is not None:
        n = int(clen)
        while len(body) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("body not complete")
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        body = body[:n]
    else:
        # read until EOF, bounded
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, ConnectionError):
                break
            if not chunk:
                break
            body += chunk
    resp.body = body
    return resp


def http_exchange(host, port, request, tls=False, timeout=5.0):
    """Send raw request bytes, return the response; the socket is closed."""
    s = open_socket(host, port, tls=tls, timeout=timeout)
    try:
        s.sendall(request)
        return read_http_response(s, timeout=timeout)
    finally:
        s.close()


def handshake(gw, token=None, path="/ws", headers=None, key=None, **kw):
    """One upgrade request against a gateway; returns the response (socket closed)."""
    req = upgrade_request(gw.host, gw.port, path=path, token=token, headers=headers, key=key, **kw)
    return http_exchange(gw.host, gw.port, req, tls=gw.tls)


def wait_socket_closed(sock, timeout):
    """Read (and drop) until the peer closes. True when closed (EOF or reset),
    raises AssertionError on timeout. Returns (closed, data_seen)."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"connection still open after {timeout}s (got {data[:200]!r})")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            return True, data
        if not chunk:
            return True, data
        data += chunk


# --------------------------------------------------------------------------
# raw WebSocket client (hand-made frames)

OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class Frame:
    def __init__(self, fin, rsv, opcode, payload):
        self.fin, self.rsv, self.opcode, self.payload = fin, rsv, opcode, payload

    @property
    def close_code(self):
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return struct.unpack("!H", self.payload[:2])[0]

    def __repr__(self):
        p = self.payload if len(self.payload) < 200 else self.payload[:200] + b"..."
        return f"<Frame fin={self.fin} rsv={self.rsv} op={self.opcode:#x} {p!r}>"


def encode_frame(opcode, payload=b"", fin=True, rsv=0, mask=True, length=None):
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    n = len(payload) if length is None else length
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask:
        mkey = os.urandom(4)
        head += mkey
        payload = bytes(b ^ mkey[i & 3] for i, b in enumerate(payload)) if len(payload) < 4096 \
            else _mask_fast(payload, mkey)
    return head + payload


def _mask_fast(payload, mkey):
    n = len(payload)
    k = int.from_bytes((mkey * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ k).to_bytes(n, "big")


class RawWS:
    """A WebSocket client made of a socket and hand-made frames."""

    def __init__(self, sock, leftover=b"", response=None):
        self.sock = sock
        self.buf = leftover
        self.response = response
        self.frames = []  # every frame received, in order
        self.eof = False

    @classmethod
    def connect(cls, gw, token, path="/ws", headers=None, timeout=5.0, rcvbuf=None):
        key = new_ws_key()
        s = open_socket(gw.host, gw.port, tls=gw.tls, timeout=timeout, rcvbuf=rcvbuf)
        try:
            s.sendall(upgrade_request(gw.host, gw.port, path=path, token=token, headers=headers, key=key))
            resp = read_http_response(s, timeout=timeout)
        except BaseException:
            s.close()
            raise
        if resp.status != 101:
            s.close()
            raise AssertionError(f"handshake refused: {resp!r}")
        assert resp.header("sec-websocket-accept") == accept_for(key), resp
        return cls(s, resp.leftover, resp)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # sending
    def send_raw(self, data):
        self.sock.sendall(data)

    def send_frame(self, opcode, payload=b"", fin=True, rsv=0, mask=True):
        self.sock.sendall(encode_frame(opcode, payload, fin=fin, rsv=rsv, mask=mask))

    def send_text(self, text):
        self.send_frame(OP_TEXT, text.encode() if isinstance(text, str) else text)

    def send_json(self, obj):
        self.send_text(json.dumps(obj))

    def join(self, room, peer, timeout=5.0):
        """Join room as peer; returns the answer, which must be `joined`."""
        self.send_json({"type": "join", "roomId": room, "peerId": peer})
        m = self.recv_json(timeout)
        assert m.get("type") == "joined", m
        return m

    def send_close(self, code=1000, reason=b""):
        payload = b"" if code is None else struct.pack("!H", code) + reason
        self.send_frame(OP_CLOSE, payload)

    # receiving
    def _fill(self, n, deadline):
        while len(self.buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out waiting for a frame")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if not chunk:
                self.eof = True
                raise EOFError("server closed the TCP connection")
            self.buf += chunk

    def recv_frame(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        self._fill(2, deadline)
        b0, b1 = self.buf[0], self.buf[1]
        assert not (b1 & 0x80), "server frames must not be masked (RFC 6455 §5.1)"
        n = b1 & 0x7F
        off = 2
        if n == 126:
            self._fill(4, deadline)
            n = struct.unpack("!H", self.buf[2:4])[0]
            off = 4
        elif n == 127:
            self._fill(10, deadline)
            n = struct.unpack("!Q", self.buf[2:10])[0]
            off = 10
        self._fill(off + n, deadline)
        payload = self.buf[off:off + n]
        self.buf = self.buf[off + n:]
        f = Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF, payload)
        self.frames.append(f)
        return f

    def recv_message(self, timeout=5.0):
        """Next data message (text → str), reassembling fragments. Control
        frames are recorded in self.frames but not answered; a close frame
        raises AssertionError."""
        deadline = time.monotonic() + timeout
        parts, op = [], None
        while True:
            f = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if f.opcode in (OP_PING, OP_PONG):
                continue
            if f.opcode == OP_CLOSE:
                raise AssertionError(f"server closed (code {f.close_code}) while a message was expected")
            if op is None:
                op = f.opcode
            parts.append(f.payload)
            if f.fin:
                data = b"".join(parts)
                return data.decode("utf-8") if op == OP_TEXT else data

    def recv_json(self, timeout=5.0):
        m = self.recv_message(timeout)
        assert isinstance(m, str), f"expected a text message, got {m!r}"
        return json.loads(m)

    def expect_close(self, timeout=5.0):
        """Read until the server's close frame; returns (code, frames before it)."""
        deadline = time.monotonic() + timeout
        start = len(self.frames)
        while True:
            try:
                f = self.recv_frame(max(0.0, deadline - time.monotonic()))
            except EOFError:
                raise AssertionError(f"TCP closed without a close frame; frames: {self.frames[start:]}")
            except TimeoutError:
                raise AssertionError(f"no close frame within {timeout}s; frames: {self.frames[start:]}")
            if f.opcode == OP_CLOSE:
                return f.close_code, self.frames[start:-1]

    def wait_eof(self, timeout=5.0):
        """Read until the TCP connection closes; frames are recorded. Raises
        AssertionError if still open after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"TCP connection still open after {timeout}s")
            try:
                self.recv_frame(remaining)
            except EOFError:
                return True
            except TimeoutError:
                continue
            except (ssl.SSLError, OSError):
                return True

    def closed_within(self, timeout):
        try:
            return self.wait_eof(timeout)
        except AssertionError:
            return False


def padded_json(obj, size):
    """obj serialised and padded with JSON whitespace to exactly size bytes."""
    s = json.dumps(obj, separators=(",", ":"))
    assert len(s) <= size, (len(s), size)
    return s[:-1] + " " * (size - len(s)) + "}"


# --------------------------------------------------------------------------
# asyncio client over the websockets library

_CLOSED = object()


def _matches(msg, type_, fields):
    if type_ is not None and msg.get("type") != type_:
        return False
    return all(msg.get(k) == v for k, v in fields.items())


class Client:
    """A websockets connection whose every message is kept: recv_type() returns
    the first message of a type (others stay pending, never dropped), and
    expect_no_message() fails if anything is pending or arrives."""

    def __init__(self, ws, name):
        self.ws = ws
        self.name = name
        self.messages = []  # everything received, in order
        self.pending = []   # received, not yet consumed by the test
        self.queue = asyncio.Queue()
        self.closed = asyncio.Event()
        self.close_code = None
        self.close_reason = None
        self.joined = {}    # roomId -> the last `joined` of a join() on this connection
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self):
        try:
            while True:
                raw = await self.ws.recv()
                if isinstance(raw, bytes):
                    msg = {"type": "_binary", "data": raw}
                else:
                    try:
                        msg = json.loads(raw)
                    except ValueError:
                        msg = {"type": "_not_json", "data": raw}
                    if not isinstance(msg, dict):
                        msg = {"type": "_not_object", "data": msg}
                self.messages.append(msg)
                await self.queue.put(msg)
        except websockets.exceptions.ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason
            self.closed.set()
            self.queue.put_nowait(_CLOSED)

    def __repr__(self):
        return f"<Client {self.name}>"

    async def send(self, obj):
        await self.ws.send(obj if isinstance(obj, (str, bytes)) else json.dumps(obj))

    async def _next(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise asyncio.TimeoutError()
        item = await asyncio.wait_for(self.queue.get(), remaining)
        if item is _CLOSED:
            self.queue.put_nowait(_CLOSED)  # keep reporting it
        return item

    async def recv(self, timeout=5.0):
        """The next message, whatever it is."""
        if self.pending:
            return self.pending.pop(0)
        try:
            item = await self._next(time.monotonic() + timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.name}: no message within {timeout}s") from None
        if item is _CLOSED:
            raise AssertionError(f"{self.name}: connection closed (code {self.close_code}) while waiting")
        return item

    async def recv_type(self, type_, timeout=5.0, **fields):
        """First message of this type (and these field values); messages that
        do not match stay pending."""
        for i, m in enumerate(self.pending):
            if _matches(m, type_, fields):
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = await self._next(deadline)
            except asyncio.TimeoutError:
                raise AssertionError(
                    f"{self.name}: no {type_} {fields or ''} within {timeout}s; "
                    f"unmatched: {self.pending}") from None
            if item is _CLOSED:
                raise AssertionError(
                    f"{self.name}: connection closed (code {self.close_code}) while waiting for "
                    f"{type_} {fields or ''}; unmatched: {self.pending}")
            if _matches(item, type_, fields):
                return item
            self.pending.append(item)

    async def expect_no_message(self, timeout=0.5):
        assert not self.pending, f"{self.name}: unexpected messages {self.pending}"
        try:
            item = await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return
        if item is _CLOSED:
            self.queue.put_nowait(_CLOSED)
            raise AssertionError(f"{self.name}: connection closed unexpectedly (code {self.close_code})")
        raise AssertionError(f"{self.name}: unexpected message {item}")

    async def wait_closed(self, timeout=5.0):
        """Wait until the connection is closed; returns the close code. Messages
        arriving meanwhile stay pending."""
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.name}: still open after {timeout}s") from None
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if item is not _CLOSED:
                self.pending.append(item)
        self.queue.put_nowait(_CLOSED)
        return self.close_code

    @property
    def is_open(self):
        return not self.closed.is_set()

    async def close(self):
        try:
            await asyncio.wait_for(self.ws.close(), 3)
        except Exception:
            pass
        try:
            await asyncio.wait_for(self.closed.wait(), 3)
        except Exception:
            self.reader.cancel()

    def abort(self):
        """Drop the TCP connection without a close frame."""
        self.ws.transport.abort()

    # protocol conveniences
    async def _membership(self, type_, answer, room, peer, cid, timeout):
        """Send a join or leave; returns its answer, which must name the peer."""
        msg = {"type": type_, "roomId": room, "peerId": peer}
        if cid is not None:
            msg["correlationId"] = cid
        await self.send(msg)
        m = await self.recv_type(answer, timeout=timeout, roomId=room)
        assert m.get("peerId") == peer.lower(), m
        return m

    async def join(self, room, peer, cid=None, timeout=5.0):
        m = await self._membership("join", "joined", room, peer, cid, timeout)
        assert isinstance(m.get("peers"), list), m
        self.joined[room] = m
        return m

    async def leave(self, room, peer, cid=None, timeout=5.0):
        return await self._membership("leave", "left", room, peer, cid, timeout)

    async def expect_error(self, code, cid=None, room=None, timeout=5.0):
        m = await self.recv_type("error", timeout=timeout)
        assert m.get("code") == code, f"{self.name}: expected error {code}, got {m}"
        assert isinstance(m.get("message"), str), m
        if cid is not None:
            assert m.get("correlationId") == cid, f"correlationId not echoed: {m}"
        if room is not None:
            assert m.get("roomId") == room, f"roomId missing or wrong: {m}"
        return m


async def connect(url, token=None, via="header", origin=None, subprotocols=None,
                  name=None, tls=None, extra_headers=None, **kw):
    """Open a websockets connection with the token in the header, in a
    `bearer.` subprotocol entry, or in the query."""
    headers = dict(extra_headers or {})
    protos = list(subprotocols) if subprotocols else None
    if token is not None:
        if via == "header":
            headers["Authorization"] = f"Bearer {token}"
        elif via == "protocol":
            protos = (protos or ["signal.v1"]) + [f"bearer.{token}"]
        elif via == "query":
            url = url + ("&" if "?" in url else "?") + "access_token=" + token
        else:
            raise ValueError(via)
    if url.startswith("wss:") and "ssl" not in kw:
        kw["ssl"] = insecure_ssl_context()
    ws = await websockets.connect(
        url, extra_headers=headers or None, subprotocols=protos, origin=origin,
        open_timeout=5, close_timeout=2, ping_interval=None, max_size=4 * 1024 * 1024, **kw)
    return Client(ws, name or "client")


class Clients:
    """async with Clients() as c: a = await c.connect(...) — closes all at exit."""

    def __init__(self):
        self.clients = []
        self.raws = []

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        for raw in self.raws:
            raw.close()
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)

    async def connect(self, url, token=None, name=None, **kw):
        c = await connect(url, token, name=name or f"client{len(self.clients)}", **kw)
        self.clients.append(c)
        return c

    async def member(self, gw, sub, room, peer, name=None, cid=None, **kw):
        """A connection of sub's (tok(sub): any room) to gw (a gateway, or a
        URL) that has joined room as peer; its `joined` is .joined[room]."""
        url = gw if isinstance(gw, str) else gw.ws_url
        c = await self.connect(url, tok(sub), name=name or sub, **kw)
        await c.join(room, peer, cid=cid)
        return c

    async def raw_member(self, gw, sub, room, peer, **kw):
        """A RawWS of sub's (hand-made frames; blocking, so a test calls it
        through asyncio.to_thread) that has joined room as peer. kw go to
        RawWS.connect."""
        raw = await asyncio.to_thread(RawWS.connect, gw, tok(sub), **kw)
        self.raws.append(raw)
        await asyncio.to_thread(raw.join, room, peer)
        return raw

    async def members(self, room, *who):
        """Each (gw, sub, peer) of who joins room in turn (Clients.member), and
        each has read the peer_joined of every one after it: their connections."""
        joined = []
        for gw, sub, peer in who:
            c = await self.member(gw, sub, room, peer)
            for earlier in joined:
                await earlier.recv_type("peer_joined", peerId=peer)
            joined.append(c)
        return joined

    async def pair(self, g1, g2, room, pa, pb):
        """alice on g1 as pa and bob on g2 as pb, both in room (members): (a, b)."""
        return await self.members(room, (g1, "alice", pa), (g2, "bob", pb))


# --------------------------------------------------------------------------
# WebRTC peers (aiortc; test_turn.py and tests/e2e/test_aiortc.py)


def watch_data_channel(channel, opened, received):
    """Set the asyncio.Event `opened` once an RTCDataChannel is open and put
    each of its messages into the asyncio.Queue `received`."""
    channel.on("open", opened.set)
    channel.on("message", received.put_nowait)
    if channel.readyState == "open":
        opened.set()


# --------------------------------------------------------------------------
# message builders

SDP = ("v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
       "a=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n"
       "a=mid:0\r\na=rtpmap:111 opus/48000/2\r\n")


def offer(room, frm, to, sdp=SDP, cid=None, type_="offer"):
    m = {"type": type_, "roomId": room, "from": frm, "to": to, "sdp": sdp}
    if cid is not None:
        m["correlationId"] = cid
    return m


def answer(room, frm, to, sdp=SDP, cid=None):
    return offer(room, frm, to, sdp, cid, type_="answer")


def ice(i, **extra):
    c = {"candidate": f"candidate:{i} 1 udp 2122260223 192.0.2.{i % 250 + 1} {50000 + i} typ host",
         "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "uFrg"}
    c.update(extra)
    return c


def candidate(room, frm, to, cand, cid=None):
    m = {"type": "candidate", "roomId": room, "from": frm, "to": to, "candidate": cand}
    if cid is not None:
        m["correlationId"] = cid
    return m


def inner_of(msg):
    """The relay.inner a client message must produce: the validated fields
    only, ids lowercased."""
    keep = {"type", "roomId", "from", "to", "sdp", "candidate"}
    out = {k: v for k, v in msg.items() if k in keep}
    out["from"] = out["from"].lower()
    out["to"] = out["to"].lower()
    return out
