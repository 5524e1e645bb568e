# SPDX-License-Identifier: Apache-2.0
"""A real Redis Cluster on loopback for the tests: N masters with a replica
each, made of redis-server processes started (and stopped by pid) here, the
cluster bus on ports of the test process' own block (Redis 7's cluster-port),
joined with `redis-cli --cluster create`."""

import signal
import subprocess

import sg_helpers as h


class ClusterNode:
    def __init__(self, tmp, port, bus_port, node_timeout_ms, tls=None):
        self.port, self.bus_port = port, bus_port
        # With tls ({"cert", "key", "ca", "client_cert", "client_key"} paths;
        # the bus asks its peers for a client certificate): a TLS port too, the one the
        # cluster announces to clients (tls-cluster); the plain port stays
        # for the test's own commands.
        self.tls = tls
        self.tls_port = h.free_port() if tls else None
        self.dir = tmp / f"node-{port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.node_timeout_ms = node_timeout_ms
        self.proc = None

    def start(self, empty=False):
        if empty:
            for f in ("nodes.conf", "dump.rdb"):
                try:
                    (self.dir / f).unlink()
                except FileNotFoundError:
                    pass
        log = open(self.dir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", h.HOST, "--cluster-enabled", "yes",
             "--cluster-port", str(self.bus_port), "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(self.node_timeout_ms), "--save", "", "--appendonly", "no",
             "--protected-mode", "no", "--daemonize", "no", "--dir", str(self.dir), *self.tls_args()],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        h.wait_until(self.pingable, 5, what=f"redis cluster node {self.port} answering")
        return self

    def tls_args(self):
        if not self.tls:
            return []
        return ["--tls-port", str(self.tls_port), "--tls-cert-file", str(self.tls["cert"]),
                "--tls-key-file", str(self.tls["key"]), "--tls-ca-cert-file", str(self.tls["ca"]),
                "--tls-client-cert-file", str(self.tls["client_cert"]),
                "--tls-client-key-file", str(self.tls["client_key"]),
                "--tls-cluster", "yes", "--tls-replication", "yes", "--tls-auth-clients", "no"]

    def pingable(self):
        try:
            return self("PING") == "PONG"
        except (OSError, h.RedisError):
            return False

    def __call__(self, *args):
        c = h.RedisClient(self.port, timeout=3)
        try:
            return c(*args)
        finally:
            c.close()

    def read_replica(self, *args):
        """A read on a replica (READONLY first, on the same connection)."""
        c = h.RedisClient(self.port, timeout=3)
        try:
            c("READONLY")
            return c(*args)
        finally:
            c.close()

    def info(self, section):
        return dict(line.split(":", 1) for line in self("INFO", section).splitlines()
                    if ":" in line and not line.startswith("#"))

    def role(self):
        return self.info("replication").get("role")

    def node_id(self):
        return self("CLUSTER", "MYID")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class RedisCluster:
    """masters masters with a replica each; .nodes[i] for i < masters are the
    masters at creation."""

    def __init__(self, tmp, masters=3, replicas=1, node_timeout_ms=1000, tls=None):
        self.tmp = tmp
        self.nodes = [ClusterNode(tmp, h.free_port(), h.free_port(), node_timeout_ms, tls)
                      for _ in range(masters * (1 + replicas))]
        self.masters, self.replicas = masters, replicas

    def start(self):
        for n in self.nodes:
            n.start()
        if len(self.nodes) == 1:
            # redis-cli --cluster create wants three masters; one node takes
            # every slot itself (and, having met no peer, does not know its
            # own address).
            self.nodes[0]("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        else:
            r = subprocess.run(["redis-cli", "--cluster", "create",
                                *[f"{h.HOST}:{n.port}" for n in self.nodes],
                                "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
        self.wait_ok()
        self.wait_replicas()
        return self

    def wait_replicas(self, timeout=20):
        """Every replica has finished its first sync with its master."""
        def synced():
            for n in self.live():
                try:
                    rep = n.info("replication")
                except (OSError, h.RedisError):
                    return False
                if rep.get("role") == "slave" and rep.get("master_link_status") != "up":
                    return False
            return True
        h.wait_until(synced, timeout, interval=0.1, what="every replica in sync")

    def wait_ok(self, timeout=20):
        def ok():
            for n in self.nodes:
                if n.proc.poll() is not None:
                    continue
                try:
                    if n.info("cluster").get("cluster_enabled") != "1" or \
                            "cluster_state:ok" not in n("CLUSTER", "INFO"):
                        return False
                except (OSError, h.RedisError):
                    return False
            return True
        h.wait_until(ok, timeout, interval=0.1, what="cluster_state:ok on every node")

    @property
    def seeds(self):
        return ",".join(f"{h.HOST}:{n.port}" for n in self.nodes[:2])

    @property
    def tls_seeds(self):
        return ",".join(f"rediss://{h.HOST}:{n.tls_port}" for n in self.nodes[:2])

    def live(self):
        return [n for n in self.nodes if n.proc and n.proc.poll() is None]

    def master_of_slot(self, slot):
        """The live node that serves slot, as its own CLUSTER SHARDS says."""
        for n in self.live():
            try:
                shards = n("CLUSTER", "SHARDS")
            except (OSError, h.RedisError):
                continue
            for sh in shards:
                d = dict(zip(sh[0::2], sh[1::2]))
                ranges = d["slots"]
                if any(ranges[i] <= slot <= ranges[i + 1] for i in range(0, len(ranges), 2)):
                    for nd in d["nodes"]:
                        nd = dict(zip(nd[0::2], nd[1::2]))
                        if nd["role"] == "master" and nd.get("health") == "online":
                            return next(x for x in self.nodes if x.port == nd["port"])
            return None
        return None

    def keyslot(self, key):
        return self.live()[0]("CLUSTER", "KEYSLOT", key)

    def client_for(self, key):
        return self.master_of_slot(self.keyslot(key))

    def keys(self, pattern="*"):
        out = []
        for n in self.live():
            try:
                if n.role() == "master":
                    out += n("KEYS", pattern)
            except (OSError, h.RedisError):
                pass
        return sorted(out)

    def stop(self):
        for n in self.nodes:
            n.stop()


def rooms_on_every_shard(cluster, prefix, per_shard=1):
    """Room ids whose slots fall on each master in turn: {master port: [room...]}."""
    by_master = {}
    i = 0
    while len(by_master) < cluster.masters or min(len(v) for v in by_master.values()) < per_shard:
        room = f"{prefix}-{i}"
        m = cluster.master_of_slot(cluster.keyslot(f"room:{{{room}}}:peers"))
        by_master.setdefault(m.port, [])
        if len(by_master[m.port]) < per_shard:
            by_master[m.port].append(room)
        i += 1
        assert i < 10000
    return by_master
