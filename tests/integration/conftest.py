# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the black-box integration suite: a real redis-server and real
signal-gateway processes on free loopback ports, all stopped by pid at the end
of each test (SIGTERM, then SIGKILL after a bound).

A test written `async def` runs in an event loop of its own (see
pytest_pyfunc_call below), bounded by @pytest.mark.async_timeout(seconds).

Gateway binary: $SG_GATEWAY_BIN, default <repo>/build/signal-gateway.
"""

import datetime
import inspect
import ipaddress
import os
import signal
import subprocess
import uuid

import pytest

import sg_helpers as h

# --------------------------------------------------------------------------
# Redis


class RedisServer(h.RedisServer):
    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.proc = None
        self.port = None
        self._clients = []

    def start(self):
        for attempt in range(5):  # a port taken meanwhile by a process outside the suite
            self.port = h.free_port()
            try:
                return self.launch(
                    ["redis-server", "--port", str(self.port), "--bind", h.HOST, "--save", "",
                     "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no",
                     "--dir", str(self.tmp_path)],
                    self.tmp_path / f"redis-{self.port}.log", "redis-server")
            except RuntimeError as e:
                failure = e
        raise failure

    def client(self):
        c = h.RedisClient(self.port)
        self._clients.append(c)
        return c

    def stop(self):
        for c in self._clients:
            c.close()
        if self.proc is not None:
            h.stop_process(self.proc, 5)


@pytest.fixture
def redis(tmp_path):
    r = RedisServer(tmp_path).start()
    yield r
    r.stop()


# --------------------------------------------------------------------------
# Gateways


class Gateway(h.GatewayEndpoints):
    def __init__(self, name, proc, env, port, admin_port, log_path, tls):
        self.name = name
        self.proc = proc
        self.env = env
        self.port = port
        self.admin_port = admin_port
        self.log_path = log_path
        self.tls = tls
        self.node_id = env["SIGNAL_NODE_ID"]
        self.deliberate_exit = False
        self.drain_ms = int(env.get("SIGNAL_DRAIN_MS", "10000"))

    def __repr__(self):
        return f"<Gateway {self.name} pid={self.pid} port={self.port}>"

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc.poll() is None

    def terminate(self, sig=signal.SIGTERM):
        """SIGTERM (or sig: SIGINT drains the same) without waiting (drain tests)."""
        self.deliberate_exit = True
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout):
        """Exit status, or raises subprocess.TimeoutExpired."""
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout=None):
        """SIGTERM, then SIGKILL after drain + a margin. Returns the exit status."""
        self.deliberate_exit = True
        return h.stop_process(self.proc, timeout if timeout is not None else self.drain_ms / 1000 + 5)

    def kill(self):
        """SIGKILL and reap."""
        self.deliberate_exit = True
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(timeout=10)

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


# §9 resumption changes what a lost connection looks like to its room-mates;
# this suite checks §5 as it stands without it.
GATEWAY_DEFAULTS = {"SIGNAL_DRAIN_MS": "2000", "SIGNAL_RESUME_MS": "0"}


class GatewayFactory:
    """gateway_factory(n, env={...}, tls=False) -> [Gateway]; .start(env) -> Gateway;
    .spawn(env) starts one without waiting for readiness (startup-error tests).
    Env values of None remove the variable."""

    def __init__(self, redis, tmp_path, tls_files):
        self.redis = redis
        self.tmp_path = tmp_path
        self.tls_files = tls_files
        self.gateways = []
        self.spawned = []
        self.count = 0

    def __call__(self, n=1, env=None, tls=False, args=()):
        return [self.start(env=env, tls=tls, args=args) for _ in range(n)]

    def _launch(self, env, tls, args):
        """A gateway process on two fresh ports: (name, proc, env, port, admin_port, log_path)."""
        _require_binary()
        self.count += 1
        name = f"gw{self.count}-{uuid.uuid4().hex[:6]}"
        port, admin_port = h.free_port(), h.free_port()
        while admin_port == port:
            admin_port = h.free_port()
        defaults = dict(GATEWAY_DEFAULTS)
        if tls:
            cert, key = self.tls_files()
            defaults.update(SIGNAL_TLS_CERT=str(cert), SIGNAL_TLS_KEY=str(key))
        full = h.gateway_env(name, port, admin_port, self.redis.url, defaults, env)
        log_path = self.tmp_path / f"{name}.log"
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen([h.GATEWAY_BIN, *args], env=full, cwd=str(h.REPO),
                                    stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return name, proc, full, port, admin_port, log_path

    def spawn(self, env=None, tls=False, args=()):
        """Start without waiting; returns (proc, log_path, env). Killed at teardown."""
        name, proc, full, _, _, log_path = self._launch(env, tls, args)
        self.spawned.append((proc, log_path, name))
        return proc, log_path, full

    def start(self, env=None, tls=False, ready_timeout=10.0, args=()):
        last_log = ""
        for attempt in range(4):
            name, proc, full, port, admin_port, log_path = self._launch(env, tls, args)
            gw = Gateway(name, proc, full, port, admin_port, log_path, tls)
            if h.wait_answering(proc, lambda: gw.readyz(timeout=0.5) == 200, ready_timeout, interval=0.05):
                self.gateways.append(gw)
                return gw
            if proc.poll() is None:
                h.stop_process(proc, 3)
                raise RuntimeError(f"gateway {name} not ready within {ready_timeout}s "
                                   f"(GET /readyz never returned 200); log:\n{gw.log_tail()}")
            last_log = gw.log_tail()
            # exited at startup: maybe a port clash with a parallel run; retry
        raise RuntimeError(f"gateway did not start (exit {proc.returncode}); log:\n{last_log}")

    def teardown(self):
        problems = []
        for gw in self.gateways:
            crashed = not gw.deliberate_exit and gw.proc.poll() is not None
            rc = gw.stop()
            if crashed:
                problems.append(f"{gw.name} exited on its own during the test with status {rc}")
            marker = h.sanitizer_marker(gw.log_text())
            if marker:
                problems.append(f"{gw.name}: sanitizer report ({marker!r}) in its log")
        for proc, log_path, name in self.spawned:
            h.stop_process(proc, 5)
            text = log_path.read_text(errors="replace") if log_path.exists() else ""
            marker = h.sanitizer_marker(text)
            if marker:
                problems.append(f"{name}: sanitizer report ({marker!r}) in its output:\n"
                                + "\n".join(text.splitlines()[-25:]))
        return problems


def _require_binary():
    if not os.access(h.GATEWAY_BIN, os.X_OK):
        pytest.fail(f"gateway binary not found at {h.GATEWAY_BIN}: build it "
                    f"(cmake -S . -B build && cmake --build build) or set SG_GATEWAY_BIN",
                    pytrace=False)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A lazily generated self-signed cert for 127.0.0.1/localhost: () -> (cert, key)."""
    cache = {}

    def get():
        if not cache:
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.x509.oid import NameOID
            d = tmp_path_factory.mktemp("tls")
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
            now = datetime.datetime.now(datetime.timezone.utc)
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                    .public_key(key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(now - datetime.timedelta(minutes=5))
                    .not_valid_after(now + datetime.timedelta(days=1))
                    .add_extension(x509.SubjectAlternativeName([
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                    .sign(key, hashes.SHA256()))
            (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            (d / "key.pem").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
            cache["v"] = (d / "cert.pem", d / "key.pem")
        return cache["v"]

    return get


@pytest.fixture
def gateway_factory(request, redis, tmp_path, tls_files):
    f = GatewayFactory(redis, tmp_path, tls_files)
    yield f
    problems = f.teardown()
    if problems:
        tails = "".join(f"\n===== log tail of {gw.name} (pid {gw.pid}, exit {gw.proc.returncode}) "
                        f"{gw.log_path} =====\n{gw.log_tail(40)}\n" for gw in f.gateways)
        pytest.fail("; ".join(problems) + tails, pytrace=False)


@pytest.fixture
def gateway(gateway_factory):
    """One gateway with default settings (plus a short drain)."""
    return gateway_factory.start()


@pytest.fixture
def make_token():
    return h.make_token


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Runs an `async def` test to its end in a fresh event loop, as
    pytest-asyncio would (Debian's python3 has no such plugin). The whole test
    is bounded, setup in its body included: ASYNC_TEST_TIMEOUT seconds, or
    the test's @pytest.mark.async_timeout(seconds)."""
    test = pyfuncitem.obj
    if not inspect.iscoroutinefunction(test):
        return None  # pytest calls it as usual
    marker = pyfuncitem.get_closest_marker("async_timeout")
    timeout = marker.args[0] if marker else h.ASYNC_TEST_TIMEOUT
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    h.arun(test(**kwargs), timeout)
    return True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    # Attach what the gateways have logged so far to the failure report (they
    # write one line at a time, so the file is current).
    if rep.when == "call" and rep.failed:
        f = item.funcargs.get("gateway_factory") if hasattr(item, "funcargs") else None
        if f is not None:
            for gw in f.gateways:
                rep.sections.append((f"log of {gw.name} (so far)", gw.log_tail(40)))


# ==========================================================================
# BEGIN log secret scan (issue 5; docs/protocol.md §8: "Never a raw sub, token,
# SDP, candidate or client IP address"). At the end of the whole session,
# every gateway log this run wrote (<basetemp>/**/gw*.log, see
# GatewayFactory) is scanned; one finding fails the session.
#
# IP addresses: the only places allowed to hold one are those that hold
# configured addresses, not clients': server.start's `listen` and `admin`
# (the listeners), redis.*'s `host` (the configured Redis server), and a
# start-up failure (server.start_failed's `error` and the same text as the
# plain "signal-gateway: ..." stderr line, e.g. "SIGNAL_LISTEN: cannot
# listen on 127.0.0.1:<port>: Address already in use"). Raw
# subs: not looked for in `correlationId` and `room`, which echo what the
# client chose (tests use words like "carol-offer" there).

import json as _scan_json
import re as _scan_re

_SCAN_SUBS = set()            # every sub the suite put in a token
_scan_token_claims = h.token_claims


def _recording_token_claims(sub="alice", *args, **kw):
    if isinstance(sub, str) and sub:
        _SCAN_SUBS.add(sub)
    return _scan_token_claims(sub, *args, **kw)


h.token_claims = _recording_token_claims  # make_token goes through it

_SCAN_JWT = _scan_re.compile(r"eyJ[A-Za-z0-9_-]{8,}")  # base64url of '{"': a JWT or a piece
_SCAN_IPV4 = _scan_re.compile(r"(?<!\d)\d{1,3}(?:\.\d{1,3}){3}(?!\d)")
_SCAN_IPV6 = _scan_re.compile(r"[0-9A-Fa-f]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f.]*")
_SCAN_ADDR_FIELDS = {("server.start", "listen"), ("server.start", "admin"), ("redis.", "host"),
                     ("server.start_failed", "error")}
_SCAN_CLIENT_FIELDS = {"correlationId", "room"}


def _scan_ips(text):
    found = []
    for tok in _SCAN_IPV4.findall(text) + _SCAN_IPV6.findall(text):
        try:
            found.append(str(ipaddress.ip_address(tok.rstrip("."))))
        except ValueError:
            pass
    return found


def _scan_strings(v):
    if isinstance(v, str):
        yield v
    elif isinstance(v, dict):
        for k, x in v.items():
            yield k
            yield from _scan_strings(x)
    elif isinstance(v, list):
        for x in v:
            yield from _scan_strings(x)


def _scan_line(line, subs):
    bad = [what for what, hit in (("token", _SCAN_JWT.search(line)), ("JWT secret", h.JWT_SECRET in line),
                                  ("SDP", "v=0" in line), ("ICE candidate", "candidate:" in line)) if hit]
    try:
        obj = _scan_json.loads(line)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        ev = str(obj.get("event", ""))
        fields = {k: v for k, v in obj.items()
                  if not any(ev.startswith(e) and k == f for e, f in _SCAN_ADDR_FIELDS)}
        strings = list(_scan_strings(fields))
        own = list(_scan_strings({k: v for k, v in fields.items() if k not in _SCAN_CLIENT_FIELDS}))
    else:
        own = [line]
        strings = [] if line.startswith("signal-gateway: ") else own
    for s in strings:
        bad += [f"IP address {ip}" for ip in _scan_ips(s)]
    for s in own:
        bad += [f"raw sub {sub!r}" for sub in subs if s == sub or (len(sub) >= 5 and sub in s)]
    return bad


@pytest.fixture(scope="session", autouse=True)
def _gateway_log_secret_scan(tmp_path_factory):
    yield
    findings = []
    files = sorted(tmp_path_factory.getbasetemp().rglob("gw*.log"))
    for path in files:
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for what in _scan_line(line, _SCAN_SUBS):
                findings.append(f"{path}:{n}: {what}: {line[:300]}")
    if findings:
        pytest.fail(f"{len(findings)} secret(s) in {len(files)} gateway log(s):\n"
                    + "\n".join(findings[:50]), pytrace=False)
# END log secret scan
# ==========================================================================
