# SPDX-License-Identifier: Apache-2.0
"""TLS and ACL users to Redis (issue 15; PROTOCOL.md §7: rediss:// URLs,
SIGNAL_REDIS_TLS_CA_FILE / _CERT_FILE / _KEY_FILE, user:password@ in
SIGNAL_REDIS_URL and in each SIGNAL_REDIS_SENTINELS entry) against real,
TLS-only redis-server and Sentinel processes (Debian's redis-server is built
with TLS): a CA, server and client certificates are made here with
python3-cryptography.

What is proved: a gateway on rediss:// joins and relays end to end; the
server's certificate is verified (wrong CA, system store, host name and IP
address checks) and a failure is a connection failure with the reason in
the redis.connect_failed log line; a client certificate is sent when Redis
asks for one; ACL users (percent-encoded passwords) work on plain and TLS
connections and a wrong password fails clearly; Sentinel discovery with the
sentinels' own credentials, plain and over TLS; a Redis Cluster over TLS,
every master reached on its TLS port and verified; configuration mistakes
stop the start with a message that never holds a password.
"""

import datetime
import ipaddress
import pathlib
import socket
import ssl
import subprocess
import time
import urllib.parse

import pytest

import redis_cluster as rc
import sg_helpers as h
from sg_helpers import Clients, arun, make_token, new_peer, new_room

ADMIN_PW = "admin-pw-7f3a"             # the default user of the test servers
GW_USER = "gw"
GW_PW = "gw-p@ss:w/rd,%+ 9"            # every character URL syntax cares about
SENTINEL_USER = "gwsentinel"
SENTINEL_PW = "s3nt:p@ss,word"
# What the gateway may do: its own keys and channels (§6), every command
# but the dangerous ones (FLUSHALL, CONFIG, DEBUG, ...) except ROLE, which
# the gateway asks a master it found through Sentinel (docs/operating.md).
GW_ACL = ["on", f">{GW_PW}", "resetkeys", "~room:*", "~signal:*", "resetchannels", "&room:*", "&signal:*",
          "+@all", "-@dangerous", "+role"]
# Sentinel's documented needs on a monitored master.
MONITOR_ACL = ["on", ">monitor-pw", "allchannels", "+multi", "+slaveof", "+ping", "+exec", "+subscribe",
               "+config|rewrite", "+role", "+publish", "+info", "+client|setname", "+client|kill",
               "+script|kill"]


def q(s):
    return urllib.parse.quote(s, safe="")


def gw_url(tls, port, password=GW_PW, host=h.HOST):
    return f"{'rediss' if tls else 'redis'}://{GW_USER}:{q(password)}@{host}:{port}/0"


# --------------------------------------------------------------------------
# certificates


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, another CA, a server certificate for localhost and 127.0.0.1, one
    for 127.0.0.1 only, and a client certificate: name -> path."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.timezone.utc)
    out = {}

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def builder(subject, issuer, key):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1)))

    def save(stem, key, cert):
        (d / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[stem] = d / f"{stem}.crt"
        if key is not None:
            (d / f"{stem}.key").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            out[f"{stem}-key"] = d / f"{stem}.key"

    def ca(stem, cn):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (builder(name(cn), name(cn), key)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        save(stem, None, cert)
        return key, cert

    def leaf(stem, ca_key, ca_cert, cn, usage, sans=None):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (builder(name(cn), ca_cert.subject, key)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        save(stem, key, b.sign(ca_key, hashes.SHA256()))

    ca_key, ca_cert = ca("ca", "signal-gateway test CA")
    ca("other-ca", "some other CA")
    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    leaf("server", ca_key, ca_cert, "redis", ExtendedKeyUsageOID.SERVER_AUTH,
         [x509.DNSName("localhost"), loopback])
    leaf("server-ip-only", ca_key, ca_cert, "redis", ExtendedKeyUsageOID.SERVER_AUTH, [loopback])
    leaf("client", ca_key, ca_cert, "signal-gateway", ExtendedKeyUsageOID.CLIENT_AUTH)
    return out


def tls_env(pki, client_cert=False, ca="ca"):
    env = {"SIGNAL_REDIS_TLS_CA_FILE": str(pki[ca]) if ca else None}
    if client_cert:
        env["SIGNAL_REDIS_TLS_CERT_FILE"] = str(pki["client"])
        env["SIGNAL_REDIS_TLS_KEY_FILE"] = str(pki["client-key"])
    return env


# --------------------------------------------------------------------------
# Redis and Sentinel processes


class TLSClient(h.RedisClient):
    """sg_helpers' RESP client over TLS (verifying the server, with the client
    certificate for servers that ask for one)."""

    def __init__(self, port, pki, timeout=5.0):
        ctx = ssl.create_default_context(cafile=str(pki["ca"]))
        ctx.load_cert_chain(str(pki["client"]), str(pki["client-key"]))
        raw = socket.create_connection((h.HOST, port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname=h.HOST)
        self.f = self.sock.makefile("rb")


class Server:
    """A redis-server or a Sentinel on loopback: plain, or TLS-only (--port 0)
    when pki is given. The default user needs ADMIN_PW, a sentinel's too, so
    nothing reaches either without credentials. Stopped by pid."""

    def __init__(self, workdir, name, pki=None, cert="server", auth_clients=False, binds=(h.HOST,),
                 sentinel_of=None):
        self.workdir = pathlib.Path(workdir)
        self.name = name
        self.pki = pki
        self.cert = cert
        self.auth_clients = auth_clients
        self.binds = binds
        self.sentinel_of = sentinel_of
        self.port = None
        self.log = self.workdir / f"{name}.log"
        self.conf = self.workdir / f"{name}.conf"
        self.proc = None

    def _conf(self):
        pki = self.pki
        lines = [f"bind {' '.join(self.binds)} -::1", "daemonize no", "protected-mode no", 'logfile ""',
                 f"dir {self.workdir}", f"requirepass {ADMIN_PW}"]
        if pki:
            lines += ["port 0", f"tls-port {self.port}", f"tls-cert-file {pki[self.cert]}",
                      f"tls-key-file {pki[self.cert + '-key']}", f"tls-ca-cert-file {pki['ca']}",
                      f"tls-auth-clients {'yes' if self.auth_clients else 'no'}", "tls-replication yes"]
        else:
            lines.append(f"port {self.port}")
        if self.sentinel_of is None:
            lines += ['save ""', "appendonly no"]
        else:
            # The gateway's own user on the sentinel; the sentinel reaches the
            # master with the monitoring user.
            lines += [f"user {SENTINEL_USER} on >{SENTINEL_PW} allchannels +@all",
                      "sentinel resolve-hostnames no",
                      f"sentinel monitor mymaster {h.HOST} {self.sentinel_of.port} 1",
                      "sentinel auth-user mymaster sentinel-monitor",
                      "sentinel auth-pass mymaster monitor-pw",
                      "sentinel down-after-milliseconds mymaster 5000"]
        return "\n".join(lines) + "\n"

    def start(self):
        for attempt in range(3):  # a port taken meanwhile by a process outside the suite
            self.port = h.free_port()
            self.conf.write_text(self._conf())  # Sentinel rewrites it: a fresh one each time
            args = ["redis-server", str(self.conf)] + (["--sentinel"] if self.sentinel_of else [])
            with open(self.log, "ab") as f:
                self.proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    if self("PING") == "PONG":
                        return self
                except (OSError, h.RedisError, ssl.SSLError):
                    pass
                time.sleep(0.05)
            h.stop_process(self.proc, 5)
        raise RuntimeError(f"{self.name} did not start:\n{self.log.read_text(errors='replace')[-1500:]}")

    def __call__(self, *args, user="default", password=ADMIN_PW):
        c = TLSClient(self.port, self.pki) if self.pki else h.RedisClient(self.port)
        try:
            c("AUTH", user, password)
            return c(*args)
        finally:
            c.close()

    def clients(self):
        """CLIENT LIST as dicts."""
        return [dict(kv.split("=", 1) for kv in line.split(" ") if "=" in kv)
                for line in self("CLIENT", "LIST").splitlines()]

    def stop(self):
        if self.proc is not None:
            h.stop_process(self.proc, 5)


@pytest.fixture
def servers(tmp_path):
    """servers(name, **kw) -> a started Server, stopped at the end of the test."""
    started = []

    def make(name, **kw):
        s = Server(tmp_path, name, **kw).start()
        started.append(s)
        return s

    yield make
    for s in reversed(started):
        s.stop()


def add_gateway_users(redis):
    redis("ACL", "SETUSER", GW_USER, *GW_ACL)
    redis("ACL", "SETUSER", "sentinel-monitor", *MONITOR_ACL)


# --------------------------------------------------------------------------
# gateway helpers


async def relay(g1, g2, redis=None, room=None):
    """Two peers, one on each gateway, one room; an offer goes across. With
    redis, the room's members are checked to be in that server."""
    room = room or new_room("tls")
    async with Clients() as c:
        pa, pb = new_peer(), new_peer()
        a = await c.connect(g1.ws_url, make_token("alice", rooms=["*"]), name="a")
        b = await c.connect(g2.ws_url, make_token("bob", rooms=["*"]), name="b")
        await a.join(room, pa)
        await b.join(room, pb)
        await a.recv_type("peer_joined", peerId=pb)
        o = h.offer(room, pa, pb, cid="over-tls")
        await a.send(o)
        m = await b.recv_type("relay")
        assert m["inner"] == h.inner_of(o) and m["correlationId"] == "over-tls", m
        if redis is not None:
            assert sorted(redis("HKEYS", f"room:{{{room}}}:peers")) == sorted([pa, pb])


def log_events(path, event):
    return h.log_events(path.read_text(errors="replace"), event)


def expect_never_ready(gateway_factory, env, reason, role=None, settle_s=2.0, reason_in=None):
    """Starts a gateway that must not become ready: it logs redis.connect_failed
    (for the sentinel when role="sentinel") with `reason` in its reason, keeps
    running and retrying, never answers /readyz with 200 and never logs
    redis.connect. Returns the log text."""
    proc, log_path, full = gateway_factory.spawn(env=env)
    readyz = f"http://{full['SIGNAL_ADMIN_LISTEN']}/readyz"

    def failure():
        return [ev for ev in log_events(log_path, "redis.connect_failed") if ev.get("role") == role]

    h.wait_until(lambda: failure() or proc.poll() is not None, 20, what="redis.connect_failed in the log")
    assert proc.poll() is None, f"gateway exited ({proc.returncode}):\n{log_path.read_text()[-2000:]}"
    ev = failure()[0]
    assert reason in ev["reason"], ev
    assert reason_in is None or ev["reason"] in reason_in, ev
    # Retrying with backoff for a while changes nothing: still not ready.
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        assert h.http_status(readyz, timeout=1.0)[0] not in (200, None)
        time.sleep(0.1)
    text = log_path.read_text(errors="replace")
    assert not log_events(log_path, "redis.connect"), text[-2000:]
    assert proc.poll() is None
    return text


# --------------------------------------------------------------------------
# TLS


def test_rediss_joins_and_relays(gateway_factory, servers, pki):
    redis = servers("redis-tls", pki=pki)
    add_gateway_users(redis)
    # One by address (IP SAN), one by name (DNS SAN, SNI, resolved by evdns).
    g1 = gateway_factory.start(env={"SIGNAL_REDIS_URL": f"rediss://:{ADMIN_PW}@{h.HOST}:{redis.port}/0",
                                    **tls_env(pki)})
    g2 = gateway_factory.start(env={"SIGNAL_REDIS_URL": f"rediss://:{ADMIN_PW}@localhost:{redis.port}/0",
                                    **tls_env(pki)})
    # The room lives in this Redis, which has no plain port at all.
    arun(relay(g1, g2, redis))
    names = sorted(c["name"] for c in redis.clients() if c["name"].startswith("signal-gateway"))
    assert names == ["signal-gateway-cmd"] * 2 + ["signal-gateway-sub"] * 2, names
    for gw in (g1, g2):
        assert ADMIN_PW not in gw.log_text()


@pytest.mark.parametrize("ca", ["other-ca", None], ids=["wrong-ca", "system-store"])
def test_unverified_server_is_refused(gateway_factory, servers, pki, ca):
    redis = servers("redis-tls", pki=pki)
    expect_never_ready(gateway_factory,
                       {"SIGNAL_REDIS_URL": f"rediss://:{ADMIN_PW}@{h.HOST}:{redis.port}/0", **tls_env(pki, ca=ca)},
                       "TLS: certificate verify failed")


def test_certificate_must_name_the_host(gateway_factory, servers, pki):
    # A certificate for 127.0.0.1 alone, from the right CA, on a server that
    # also listens on 127.0.0.2: reached as localhost or 127.0.0.2 it is not
    # the server the URL names.
    redis = servers("redis-ip-only", pki=pki, cert="server-ip-only", binds=(h.HOST, "127.0.0.2"))
    for host, reason in (("localhost", "hostname mismatch"), ("127.0.0.2", "IP address mismatch")):
        expect_never_ready(gateway_factory,
                           {"SIGNAL_REDIS_URL": f"rediss://:{ADMIN_PW}@{host}:{redis.port}/0", **tls_env(pki)},
                           f"TLS: certificate verify failed ({reason})", settle_s=1.0)
    # And by its own address it is.
    gw = gateway_factory.start(env={"SIGNAL_REDIS_URL": f"rediss://:{ADMIN_PW}@{h.HOST}:{redis.port}/0",
                                    **tls_env(pki)})
    arun(relay(gw, gw))


def test_client_certificate(gateway_factory, servers, pki):
    redis = servers("redis-mtls", pki=pki, auth_clients=True)
    url = f"rediss://:{ADMIN_PW}@{h.HOST}:{redis.port}/0"
    gw = gateway_factory.start(env={"SIGNAL_REDIS_URL": url, **tls_env(pki, client_cert=True)})
    arun(relay(gw, gw))
    # TLS 1.3 refuses a missing client certificate after the client's side of
    # the handshake is done: the gateway reads the server's alert, or finds
    # the connection closed when the reset overtakes the alert. Redis' log
    # says which it was.
    expect_never_ready(gateway_factory, {"SIGNAL_REDIS_URL": url, **tls_env(pki)}, "TLS: ",
                       reason_in=("TLS: tlsv13 alert certificate required",
                                  "TLS: connection closed by Redis before any reply "
                                  "(does it require a client certificate?)"))
    assert "peer did not return a certificate" in redis.log.read_text(errors="replace")


def test_scheme_and_port_mismatch_are_named(gateway_factory, servers, pki):
    tls_only = servers("redis-tls", pki=pki)
    plain = servers("redis-plain")
    # redis:// to a TLS port: Redis drops what is not a handshake.
    expect_never_ready(gateway_factory, {"SIGNAL_REDIS_URL": f"redis://:{ADMIN_PW}@{h.HOST}:{tls_only.port}/0"},
                       "before any reply (a TLS port? use rediss://)", settle_s=1.0)
    # rediss:// to a plain port: Redis waits for the end of the "command" the
    # ClientHello looks like to it, and the handshake never ends.
    expect_never_ready(gateway_factory, {"SIGNAL_REDIS_URL": f"rediss://:{ADMIN_PW}@{h.HOST}:{plain.port}/0",
                                         "SIGNAL_REDIS_TIMEOUT_MS": "500", **tls_env(pki)},
                       "TLS: handshake timed out (is the port a TLS port?)", settle_s=1.0)


# --------------------------------------------------------------------------
# ACL users


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_acl_user(gateway_factory, servers, pki, tls):
    redis = servers("redis-acl", pki=pki if tls else None)
    add_gateway_users(redis)
    env = tls_env(pki) if tls else {}
    g1 = gateway_factory.start(env={"SIGNAL_REDIS_URL": gw_url(tls, redis.port), **env})
    g2 = gateway_factory.start(env={"SIGNAL_REDIS_URL": gw_url(tls, redis.port), **env})
    arun(relay(g1, g2, redis))
    users = {c["user"] for c in redis.clients() if c["name"].startswith("signal-gateway")}
    assert users == {GW_USER}, redis.clients()

    text = expect_never_ready(gateway_factory, {"SIGNAL_REDIS_URL": gw_url(tls, redis.port, "not-" + GW_PW), **env},
                              "WRONGPASS")
    for gw_text in (text, g1.log_text(), g2.log_text()):
        assert GW_PW not in gw_text and q(GW_PW) not in gw_text

    # The control subcommands read the same settings the same way: the
    # percent-encoded password, the scheme, the CA.
    rc, out, err = h.control(gw_url(tls, redis.port), "revoke", "--sub", "mallory", "--ttl", "60", env=env)
    assert rc == 0, (rc, out, err)
    assert redis("ZCARD", "signal:{control}:revoked") == 1
    rc, out, err = h.control(gw_url(tls, redis.port, "not-" + GW_PW), "revoke", "--sub", "m", "--ttl", "60", env=env)
    assert rc == 3 and "WRONGPASS" in err, (rc, out, err)
    assert GW_PW not in out + err and q(GW_PW) not in out + err
    if tls:
        rc, out, err = h.control(gw_url(tls, redis.port), "revoke", "--sub", "m", "--ttl", "60",
                                 env=tls_env(pki, ca="other-ca"))
        assert rc == 3 and "certificate verify failed" in err, (rc, out, err)
        rc, out, err = h.control(gw_url(False, redis.port), "revoke", "--sub", "m", "--ttl", "60")
        assert rc == 3, (rc, out, err)  # redis:// to a TLS-only port


# --------------------------------------------------------------------------
# Sentinel with its own credentials


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_sentinel_with_credentials(gateway_factory, servers, pki, tls):
    master = servers("master", pki=pki if tls else None)
    add_gateway_users(master)
    sentinel = servers("sentinel", pki=pki if tls else None, sentinel_of=master)

    def sentinel_as_gateway(*args):
        return sentinel(*args, user=SENTINEL_USER, password=SENTINEL_PW)

    h.wait_until(lambda: sentinel_as_gateway("SENTINEL", "get-master-addr-by-name", "mymaster"), 10,
                 what="the sentinel knowing the master")
    scheme = "rediss" if tls else "redis"
    good = f"{scheme}://{SENTINEL_USER}:{q(SENTINEL_PW)}@{h.HOST}:{sentinel.port}"
    # A dead sentinel first, written the old way: the list mixes both forms.
    env = {"SIGNAL_REDIS_URL": gw_url(tls, 1), "SIGNAL_REDIS_SENTINELS": f"{h.HOST}:1, {good}",
           "SIGNAL_REDIS_MASTER_NAME": "mymaster", **(tls_env(pki) if tls else {})}
    g1 = gateway_factory.start(env=env)
    g2 = gateway_factory.start(env=env)
    arun(relay(g1, g2, master))
    assert {c["user"] for c in master.clients() if c["name"].startswith("signal-gateway")} == {GW_USER}
    # Each gateway's +switch-master watch is subscribed on the sentinel as the
    # gateway's sentinel user.
    h.wait_until(lambda: sum(1 for c in sentinel.clients()
                             if c.get("user") == SENTINEL_USER and c.get("sub") == "1") == 2, 10,
                 what="both gateways watching +switch-master")

    # The control subcommands find the master the same way.
    rc, out, err = h.control(None, "revoke", "--sub", "eve", "--ttl", "60", env=env)
    assert rc == 0, (rc, out, err)
    assert master("ZCARD", "signal:{control}:revoked") == 1

    bad = {**env, "SIGNAL_REDIS_SENTINELS": good.replace(q(SENTINEL_PW), "wrong")}
    text = expect_never_ready(gateway_factory, bad, "WRONGPASS", role="sentinel")
    assert SENTINEL_PW not in text and q(SENTINEL_PW) not in text


def test_sentinel_master_user_without_role(gateway_factory, servers):
    """Through Sentinel the gateway asks the server it was sent to for ROLE
    before using it: an ACL user without +role gets that refusal named, and
    the node stays unready, retrying with backoff (it used to count as
    connected for an instant each time, and reconnect at once)."""
    master = servers("master")
    add_gateway_users(master)
    master("ACL", "SETUSER", "gw-norole", *[a.replace(GW_PW, "norole-pw") for a in GW_ACL if a != "+role"])
    sentinel = servers("sentinel", sentinel_of=master)
    h.wait_until(lambda: sentinel("SENTINEL", "get-master-addr-by-name", "mymaster",
                                  user=SENTINEL_USER, password=SENTINEL_PW), 10, what="the sentinel knowing the master")
    env = {"SIGNAL_REDIS_URL": f"redis://gw-norole:norole-pw@{h.HOST}:1/0",
           "SIGNAL_REDIS_SENTINELS": f"redis://{SENTINEL_USER}:{q(SENTINEL_PW)}@{h.HOST}:{sentinel.port}"}
    text = expect_never_ready(gateway_factory, env, "ROLE failed: NOPERM")
    assert "redis.disconnect" not in text


# --------------------------------------------------------------------------
# Redis Cluster over TLS


@pytest.fixture
def tls_cluster(tmp_path, pki):
    c = rc.RedisCluster(tmp_path / "cluster", tls={
        "cert": pki["server"], "key": pki["server-key"], "ca": pki["ca"],
        "client_cert": pki["client"], "client_key": pki["client-key"]}).start()
    yield c
    c.stop()


def test_cluster_over_tls(gateway_factory, tls_cluster, pki):
    """rediss:// seeds: the map's masters are reached on their announced TLS
    ports (tls-cluster), each verified; rooms on every shard relay."""
    env = {"SIGNAL_REDIS_CLUSTER": tls_cluster.tls_seeds, **tls_env(pki)}
    g1 = gateway_factory.start(env=env)
    g2 = gateway_factory.start(env=env)
    for port, rooms in rc.rooms_on_every_shard(tls_cluster, h.new_room("tlsc")).items():
        arun(relay(g1, g2, room=rooms[0]))
    # Every master holds the gateways' connections on its TLS port, none on
    # the plain one.
    masters = [n for n in tls_cluster.live() if n.role() == "master"]
    assert len(masters) == 3
    for m in masters:
        ours = [c for c in m("CLIENT", "LIST").splitlines() if "name=signal-gateway" in c]
        assert len(ours) == 4, ours  # two gateways, a command and a subscriber connection each
        for c in ours:
            laddr = dict(f.split("=", 1) for f in c.split() if "=" in f)["laddr"]
            assert laddr.endswith(f":{m.tls_port}"), c
    # The control subcommands follow MOVED over TLS to each room's master.
    for port, rooms in rc.rooms_on_every_shard(tls_cluster, h.new_room("tlsk")).items():
        code, out, err = h.control(None, "close-room", "--room", rooms[0], env=env)
        assert code == 0, (code, out, err)
    code, out, err = h.control(None, "revoke", "--sub", "eve", "--ttl", "60", env=env)
    assert code == 0, (code, out, err)
    assert tls_cluster.client_for("signal:{control}:revoked")("ZCARD", "signal:{control}:revoked") == 1


def test_cluster_unverified_is_refused(gateway_factory, tls_cluster, pki):
    expect_never_ready(gateway_factory, {"SIGNAL_REDIS_CLUSTER": tls_cluster.tls_seeds, **tls_env(pki, ca="other-ca")},
                       "TLS: certificate verify failed", role="seed")


# --------------------------------------------------------------------------
# configuration mistakes stop the start


@pytest.mark.parametrize("env,message", [
    ({"SIGNAL_REDIS_URL": "rediss://127.0.0.1:6379/0", "SIGNAL_REDIS_TLS_CA_FILE": "/nonexistent/ca.pem"},
     "SIGNAL_REDIS_TLS_CA_FILE: cannot read /nonexistent/ca.pem"),
    ({"SIGNAL_REDIS_URL": "rediss://127.0.0.1:6379/0", "SIGNAL_REDIS_TLS_CA_FILE": "/"},
     "SIGNAL_REDIS_TLS_CA_FILE: cannot read /: Is a directory"),
    ({"SIGNAL_REDIS_URL": "rediss://127.0.0.1:6379/0", "SIGNAL_REDIS_TLS_CERT_FILE": "PKI:client"},
     "SIGNAL_REDIS_TLS_CERT_FILE and SIGNAL_REDIS_TLS_KEY_FILE must be set together"),
    ({"SIGNAL_REDIS_URL": "redis://127.0.0.1:6379/0", "SIGNAL_REDIS_TLS_CA_FILE": "PKI:ca"},
     "SIGNAL_REDIS_TLS_CA_FILE is set but no Redis URL is rediss://"),
    ({"SIGNAL_REDIS_URL": "rediss://gw:hunter2-secret@127.0.0.1:0/0"}, "SIGNAL_REDIS_URL: bad port"),
    ({"SIGNAL_REDIS_URL": "https://gw:hunter2-secret@127.0.0.1/0"}, "SIGNAL_REDIS_URL: unsupported scheme"),
    ({"SIGNAL_REDIS_SENTINELS": "127.0.0.1:26379,rediss://gw:hunter2-secret@"},
     "SIGNAL_REDIS_SENTINELS: entry 2: missing host"),
    ({"SIGNAL_REDIS_CLUSTER": "rediss://127.0.0.1:7000,redis://gw:hunter2-secret@127.0.0.1:7001"},
     "SIGNAL_REDIS_CLUSTER: entry 2: every seed must use the same scheme"),
    ({"SIGNAL_REDIS_CLUSTER": "127.0.0.1:7000,rediss://gw:hunter2-secret@127.0.0.1:7001/3"},
     "SIGNAL_REDIS_CLUSTER: entry 2:"),
    ({"SIGNAL_REDIS_URL": "rediss://127.0.0.1:6379/0", "SIGNAL_REDIS_TLS_CA_FILE": "PKI:client-key"},
     "SIGNAL_REDIS_TLS_CA_FILE: cannot load CA certificates from"),
])
def test_startup_errors(gateway_factory, pki, env, message):
    env = {k: str(pki[v[4:]]) if v.startswith("PKI:") else v for k, v in env.items()}
    proc, log_path, _ = gateway_factory.spawn(env=env)
    rc = proc.wait(timeout=20)
    text = log_path.read_text(errors="replace")
    assert rc != 0 and message in text, (rc, text)
    assert "hunter2" not in text
