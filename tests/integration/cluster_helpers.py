# SPDX-License-Identifier: Apache-2.0
"""A process-based cluster for the scale-out and failure tests: redis-server
(deploy/redis.conf), optionally a replica and three sentinels, N gateways on
fixed loopback ports (a restarted node comes back on the same ports, as a
container behind a load balancer would), and haproxy in front, configured
from the same template as deploy/cluster.sh (deploy/haproxy-local.cfg.in).

Every process is a child of the test process, so a drained gateway's exit
status is known; everything is stopped by pid (SIGTERM, then SIGKILL after a
bound) at the end of the test.
"""

import asyncio
import pathlib
import signal
import subprocess
import time
import urllib.request

import websockets
import websockets.exceptions

import sg_helpers as h

REPO = h.REPO
HAPROXY_TEMPLATE = REPO / "deploy" / "haproxy-local.cfg.in"
REDIS_CONF = REPO / "deploy" / "redis.conf"
CLUSTER_SH = REPO / "deploy" / "cluster.sh"
COOKIE = "SGSRV"

def render_haproxy(lb_port, stats_port, servers, host=h.HOST):
    """The haproxy config for these (name, port, admin_port) servers, from the
    same template and with the same substitutions as deploy/cluster.sh."""
    lines = []
    for line in HAPROXY_TEMPLATE.read_text().splitlines():
        if line.strip() == "@SERVERS@":
            for name, port, admin in servers:
                lines.append(f"  server {name} {host}:{port} check port {admin} cookie {name}")
            continue
        lines.append(line.replace("@LB_BIND@", f"{host}:{lb_port}")
                     .replace("@STATS_BIND@", f"{host}:{stats_port}"))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Redis and Sentinel


class RedisProc(h.RedisServer):
    """One redis-server from deploy/redis.conf on a fixed port (so it can be
    restarted in place, e.g. empty)."""

    def __init__(self, workdir, name="redis", port=None, extra=()):
        self.workdir = pathlib.Path(workdir)
        self.name = name
        self.port = port or h.free_port()
        self.extra = list(extra)
        self.proc = None
        self.starts = 0

    def start(self, timeout=5.0):
        self.starts += 1
        d = self.workdir / f"{self.name}-data"
        d.mkdir(exist_ok=True)
        log = self.workdir / f"{self.name}.log"
        # A private copy: Sentinel makes the servers it reconfigures rewrite
        # their config file (CONFIG REWRITE), which must not be the repo's.
        conf = self.workdir / f"{self.name}.conf"
        conf.write_text(REDIS_CONF.read_text())
        return self.launch(["redis-server", str(conf), "--port", str(self.port), "--bind", h.HOST,
                            "--dir", str(d), "--daemonize", "no", "--protected-mode", "no", "--logfile", "",
                            *self.extra], log, f"{self.name} on port {self.port}", timeout)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self):
        if self.proc is not None:
            h.stop_process(self.proc, 5)

    def member_nodes(self, room):
        """peerId -> node of each member record of the room."""
        import json
        return {p: json.loads(v)["node"] for p, v in self.hgetall(h.peers_key(room)).items()}


SENTINEL_CONF = """port {port}
bind {host}
daemonize no
protected-mode no
dir {dir}
logfile ""
sentinel resolve-hostnames no
sentinel monitor {name} {host} {master_port} 2
sentinel down-after-milliseconds {name} {down_after_ms}
sentinel failover-timeout {name} {failover_timeout_ms}
sentinel parallel-syncs {name} 1
"""


def ask(server, *args):
    """server(*args), or None when the connection fails: Sentinel kills every
    normal client of a server it promotes or demotes (CLIENT KILL TYPE
    normal), so a poll that meets that moment answers "not yet"."""
    try:
        return server(*args)
    except (OSError, h.RedisError):
        return None


class SentinelProc(h.RedisServer):
    command_timeout = 2.0

    def __init__(self, workdir, index, master_port, name="mymaster", down_after_ms=1000,
                 failover_timeout_ms=3000):
        self.workdir = pathlib.Path(workdir)
        self.index = index
        self.port = h.free_port()
        self.master_name = name
        self.conf = self.workdir / f"sentinel{index}.conf"
        d = self.workdir / f"sentinel{index}-data"
        d.mkdir(exist_ok=True)
        # Sentinel rewrites its config file (it must be writable).
        self.conf.write_text(SENTINEL_CONF.format(
            port=self.port, host=h.HOST, dir=d, name=name, master_port=master_port,
            down_after_ms=down_after_ms, failover_timeout_ms=failover_timeout_ms))
        self.proc = None

    def start(self, timeout=5.0):
        return self.launch(["redis-server", str(self.conf), "--sentinel"],
                           self.workdir / f"sentinel{self.index}.log", f"sentinel {self.index}", timeout)

    def master_addr(self):
        try:
            r = self("SENTINEL", "get-master-addr-by-name", self.master_name)
        except (OSError, h.RedisError):
            return None
        return (r[0], int(r[1])) if r else None

    def stop(self):
        if self.proc is not None:
            h.stop_process(self.proc, 5)


# --------------------------------------------------------------------------
# Gateways and haproxy


class Node(h.GatewayEndpoints):
    """A gateway slot: a name (its SIGNAL_NODE_ID), fixed ports, an env. The
    process can be drained, killed and started again in the same slot."""

    def __init__(self, cluster, name, env):
        self.cluster = cluster
        self.name = name
        self.port = h.free_port()
        self.admin_port = h.free_port()
        while self.admin_port == self.port:
            self.admin_port = h.free_port()
        self.env = env
        self.proc = None
        self.generation = 0
        self.exits = []          # exit status of each finished process, in order
        self.deliberate = False  # the test stopped or killed the current process
        self.log_paths = []

    def __repr__(self):
        return f"<Node {self.name} pid={self.pid} port={self.port}>"

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, ready_timeout=10.0, wait_ready=True):
        assert not self.running(), f"{self.name} is already running"
        self.generation += 1
        log = self.cluster.workdir / f"{self.name}.{self.generation}.log"
        self.log_paths.append(log)
        full = h.gateway_env(self.name, self.port, self.admin_port, self.cluster.redis_url, env=self.env)
        self.deliberate = False
        # A port of the previous process may linger a moment: retry briefly.
        deadline = time.monotonic() + ready_timeout
        while True:
            with open(log, "ab") as f:
                self.proc = subprocess.Popen([h.GATEWAY_BIN], env=full, cwd=str(REPO), stdout=f,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            if not wait_ready:
                return self
            if h.wait_answering(self.proc, lambda: self.readyz(timeout=0.5) == 200,
                                deadline - time.monotonic(), interval=0.05):
                return self
            if self.proc.poll() is None:
                h.stop_process(self.proc, 3)
                raise RuntimeError(f"{self.name} not ready within {ready_timeout}s:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} exited at start ({self.proc.returncode}):\n{self.log_tail()}")
            time.sleep(0.2)

    def terminate(self):
        """SIGTERM (drain) without waiting."""
        self.deliberate = True
        if self.running():
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout):
        rc = self.proc.wait(timeout=timeout)
        if not self.exits or self.exits[-1][0] != self.generation:
            self.exits.append((self.generation, rc))
        return rc

    def kill(self):
        self.deliberate = True
        if self.running():
            self.proc.kill()
        return self.wait(10)

    def stop(self, timeout=None):
        self.deliberate = True
        if self.proc is None:
            return None
        drain_s = int(self.env.get("SIGNAL_DRAIN_MS", 10000)) / 1000
        rc = h.stop_process(self.proc, timeout if timeout is not None else drain_s + 5)
        if not self.exits or self.exits[-1][0] != self.generation:
            self.exits.append((self.generation, rc))
        return rc

    def rss_kib(self):
        return h.rss_kib(self.proc.pid)

    def metrics(self):
        """The /metrics text ("" when the node does not answer)."""
        body = h.http_status(self.admin_url + "/metrics", timeout=2)[1]
        return body.decode() if body else ""

    def log_text(self):
        out = []
        for p in self.log_paths:
            try:
                out.append(p.read_text(errors="replace"))
            except OSError:
                pass
        return "".join(out)


class HAProxy:
    def __init__(self, cluster):
        self.cluster = cluster
        self.port = h.free_port()
        self.stats_port = h.free_port()
        self.cfg = cluster.workdir / "haproxy.cfg"
        self.log = cluster.workdir / "haproxy.log"
        self.proc = None

    host = h.HOST
    tls = False

    @property
    def url(self):
        return f"ws://{h.HOST}:{self.port}/ws"

    def start(self, timeout=10.0):
        self.cfg.write_text(render_haproxy(
            self.port, self.stats_port,
            [(n.name, n.port, n.admin_port) for n in self.cluster.nodes]))
        chk = subprocess.run(["haproxy", "-c", "-q", "-f", str(self.cfg)], capture_output=True, text=True)
        assert chk.returncode == 0, f"rendered haproxy config invalid: {chk.stdout}{chk.stderr}"
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(self.cfg)], stdout=f,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.wait_states({n.name: "UP" for n in self.cluster.nodes if n.running()}, timeout)
        return self

    def stats(self):
        """server name -> status (UP, DOWN, "UP 1/2", "NOLB", ...) from the stats CSV."""
        try:
            with urllib.request.urlopen(f"http://{h.HOST}:{self.stats_port}/stats;csv", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return {}
        lines = text.splitlines()
        cols = lines[0].lstrip("# ").split(",")
        out = {}
        for ln in lines[1:]:
            row = dict(zip(cols, ln.split(",")))
            if row.get("pxname") == "gateways" and row.get("svname") not in ("BACKEND", "FRONTEND"):
                out[row["svname"]] = row["status"]
        return out

    def wait_states(self, want, timeout):
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats()
            if all(st.get(k) == v for k, v in want.items()):
                return st
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.log.read_text(errors='replace')[-1500:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"haproxy states {st}, wanted {want} within {timeout}s")
            time.sleep(0.05)

    def stop(self):
        if self.proc is not None:
            h.stop_process(self.proc, 5)


class Cluster:
    """redis (or sentinels) + gateways + haproxy. Use as the `cluster` fixture's value."""

    def __init__(self, workdir):
        self.workdir = pathlib.Path(workdir)
        self.redis = None
        self.redis_url = None
        self.sentinels = []
        self.replicas = []
        self.nodes = []
        self.lb = None

    def start_redis(self):
        self.redis = RedisProc(self.workdir).start()
        self.redis_url = self.redis.url
        return self.redis

    def start_sentinel_redis(self, down_after_ms=1000, failover_timeout_ms=3000):
        """A master, one replica and three sentinels; returns the env gateways need."""
        fast_sync = ["--repl-diskless-sync-delay", "0"]  # default 5 s wait for more replicas
        self.redis = RedisProc(self.workdir, "master", extra=fast_sync).start()
        replica = RedisProc(self.workdir, "replica",
                            extra=[*fast_sync, "--replicaof", h.HOST, str(self.redis.port)]).start()
        self.replicas.append(replica)
        h.wait_until(lambda: "master_link_status:up" in replica("INFO", "replication"), 10,
                     what="replica in sync")
        for i in range(3):
            self.sentinels.append(SentinelProc(self.workdir, i + 1, self.redis.port,
                                               down_after_ms=down_after_ms,
                                               failover_timeout_ms=failover_timeout_ms).start())
        # every sentinel knows the replica and the other sentinels before a test kills anything
        def settled():
            for s in self.sentinels:
                try:
                    info = s("SENTINEL", "master", "mymaster")
                except (OSError, h.RedisError):
                    return False
                d = dict(zip(info[0::2], info[1::2]))
                if int(d.get("num-slaves", 0)) < 1 or int(d.get("num-other-sentinels", 0)) < 2:
                    return False
            return True
        h.wait_until(settled, 20, interval=0.2, what="sentinels discovering the replica and each other")
        # The URL still names the database (and would carry credentials); the
        # address comes from the sentinels.
        self.redis_url = f"redis://{h.HOST}:1/0"
        return {"SIGNAL_REDIS_SENTINELS": ",".join(f"{h.HOST}:{s.port}" for s in self.sentinels),
                "SIGNAL_REDIS_MASTER_NAME": "mymaster"}

    def add_nodes(self, n, env=None, prefix="gw"):
        base = len(self.nodes)
        new = [Node(self, f"{prefix}{base + i + 1}", dict(env or {})) for i in range(n)]
        self.nodes.extend(new)
        for node in new:
            node.start()
        return new

    def start_sentinel_cluster(self):
        """start_sentinel_redis (down after 1 s, failover timeout 3 s), two
        gateways that find the master through the sentinels (drain 2 s) and
        haproxy in front: (g1, g2, lb)."""
        env = self.start_sentinel_redis(down_after_ms=1000, failover_timeout_ms=3000)
        g1, g2 = self.add_nodes(2, env=dict(env, SIGNAL_DRAIN_MS=2000))
        return g1, g2, self.start_lb()

    def start_lb(self):
        self.lb = HAProxy(self).start()
        return self.lb

    def node(self, name):
        return next(n for n in self.nodes if n.name == name)

    def restart_node(self, node, lb_timeout=10.0):
        """Start a stopped node in its slot and wait until haproxy sends to it."""
        node.start()
        if self.lb is not None:
            self.lb.wait_states({node.name: "UP"}, lb_timeout)

    def teardown(self):
        problems = []
        for n in self.nodes:
            if n.proc is not None and not n.deliberate and n.proc.poll() is not None:
                problems.append(f"{n.name} exited on its own with status {n.proc.returncode}")
            n.stop()
            marker = h.sanitizer_marker(n.log_text())
            if marker:
                problems.append(f"{n.name}: sanitizer report ({marker!r})")
        if self.lb:
            self.lb.stop()
        for s in self.sentinels:
            s.stop()
        for r in self.replicas:
            r.stop()
        if self.redis:
            self.redis.stop()
        return problems


# --------------------------------------------------------------------------
# clients through the load balancer


def cookie_header(node_name):
    return {"Cookie": f"{COOKIE}={node_name}"}


def lb_cookie(client):
    """The node name haproxy's Set-Cookie gave this connection, or None."""
    for v in client.ws.response_headers.get_all("Set-Cookie"):
        if v.startswith(COOKIE + "="):
            return v.split(";", 1)[0].split("=", 1)[1]
    return None


async def pinned_member(cs, lb, node, sub, room, peer):
    """A connection of sub's through haproxy to node (its cookie pins it
    there), joined to room as peer (h.Clients.member)."""
    return await cs.member(lb.url, sub, room, peer, extra_headers=cookie_header(node))


async def pinned_pair(cs, lb, room, pa, pb):
    """alice through haproxy to gw1 as pa, bob to gw2 as pb, both in room;
    alice has read bob's peer_joined: (a, b)."""
    a = await pinned_member(cs, lb, "gw1", "alice", room, pa)
    b = await pinned_member(cs, lb, "gw2", "bob", room, pb)
    await a.recv_type("peer_joined", peerId=pb)
    return a, b


async def connect_retry(url, token, name, timeout=10.0, cookie=None, **kw):
    """Connect (through the LB) until it works: a refused handshake (503) or a
    refused connection is retried with a short pause, as a client would.
    Returns (client, attempts)."""
    deadline = time.monotonic() + timeout
    attempts = 0
    headers = dict(kw.pop("extra_headers", None) or {})
    if cookie:
        headers.update(cookie_header(cookie))
    while True:
        attempts += 1
        try:
            c = await h.connect(url, token, name=name, extra_headers=headers or None, **kw)
            return c, attempts
        except (websockets.exceptions.InvalidStatusCode, websockets.exceptions.InvalidHandshake,
                OSError, asyncio.TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


# Live gateway instances heartbeat into one key (lua/nodes.lua): it stays
# while any gateway runs, and is not a room's.
NODES_KEY = "signal:nodes"
# How long a key the gateway writes lives unrenewed (SG_ROOM_TTL_MS).
KEY_TTL_MAX_MS = 600_000


def gateway_keys(redis):
    """Every key but the instances' heartbeat set: what must be gone once
    the rooms are empty."""
    return [k for k in redis.keys("*") if k != NODES_KEY]


def ttl_problems(redis, allow_no_ttl=(":acl",)):
    """Keys without a TTL (PTTL -1) that the gateway wrote."""
    bad = []
    for k in redis.keys("*"):
        if any(k.endswith(s) for s in allow_no_ttl):
            continue
        if redis("PTTL", k) == -1:
            bad.append(k)
    return bad
