# SPDX-License-Identifier: Apache-2.0
"""bench/sgops.py: what the benchmark tools share about the gateway's Redis side.

- the function library of a tree, assembled exactly as cmake/embed_lua.cmake
  does (lua/lib.lua, then each operation's file in SG_LUA_OPS order, after a
  "#!lua name=sg_<hash>" header), or the scripts of a tree from before the
  function library (commit 2f8f84d and older: lib.lua prepended to each
  lua/<op>.lua, loaded with SCRIPT LOAD and called with EVALSHA);
- the argument layout of each operation in both designs (gateway/ops.c and
  the KEYS/ARGV comments of lua/*.lua; for the old design 2f8f84d's
  gateway/session.c and gateway/bus.c), so a benchmark calls them exactly as
  a gateway does;
- a small pipelined RESP client (no dependency beyond the standard library).

Nothing here asserts anything about timing.
"""
import hashlib
import os
import re
import socket
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The frame of a relay as the gateway builds it (wire.c): 360 bytes, a
# candidate like the load generator's with its lgt/lgs stamps.
FRAME_FMT = ('{"type":"relay","inner":{"type":"candidate","roomId":"%s","from":"%s","to":"%s","candidate":'
             '{"candidate":"candidate:842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx raddr 0.0.0.0 rport 0 '
             'generation 0 lgt=1234567890123 lgs=12345 pad pad pad pad pad pad pad","sdpMid":"0","sdpMLineIndex":0}},'
             '"correlationId":"n1a2b3c4d5e6-1f"}')


def frame_for(room, frm, to):
    return FRAME_FMT % (room, frm, to)


# ---- sources ----------------------------------------------------------------

def _read(tree, rev, path):
    """A file of a tree: from a directory (rev None) or from git at rev."""
    if rev is None:
        with open(os.path.join(tree, path), "rb") as f:
            return f.read()
    return subprocess.run(["git", "-C", tree, "show", f"{rev}:{path}"], check=True, capture_output=True).stdout


def function_library(tree=ROOT, rev=None):
    """(library text, function prefix) of a tree with lua/ as one Redis function library."""
    cm = _read(tree, rev, "CMakeLists.txt").decode()
    m = re.search(r"set\(SG_LUA_OPS ([^)]*)\)", cm)
    if not m:
        raise RuntimeError("no SG_LUA_OPS in CMakeLists.txt: not a function-library tree")
    body = _read(tree, rev, "lua/lib.lua")
    for op in m.group(1).split():
        body += b"\n" + _read(tree, rev, f"lua/{op}.lua")
    h = hashlib.sha1(body).hexdigest()[:12].encode()
    lib = b"#!lua name=sg_" + h + b"\nlocal FN_PREFIX = 'sg_" + h + b"_'\n" + body
    return lib, "sg_" + h.decode() + "_"


def library_from_build(gen_c):
    """(library text, prefix) out of a build's scripts_gen.c (what that binary loads)."""
    c = open(gen_c).read()
    arr = re.search(r"sg_functions_library\[\] = \{([^}]*)\}", c).group(1)
    lib = bytes(int(x, 16) for x in arr.split(",") if x.strip())[:-1]
    prefix = re.search(r'sg_functions_prefix\[\] = "([^"]*)"', c).group(1)
    return lib, prefix


def old_scripts(tree=ROOT, rev="2f8f84d"):
    """(lib.lua, {op: script text}) of the EVALSHA design: lib.lua + "\\n" + <op>.lua, as its gateway loaded them."""
    lib = _read(tree, rev, "lua/lib.lua")
    return lib, {op: lib + b"\n" + _read(tree, rev, f"lua/{op}.lua")
                 for op in ("join", "leave", "relay", "refresh", "resume", "catchup")}


# ---- RESP -------------------------------------------------------------------

class RedisError(Exception):
    pass


def _b(x):
    if isinstance(x, bytes):
        return x
    return str(x).encode()


def encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = _b(a)
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Redis:
    """A blocking, pipelining RESP2 client. Error replies come back as RedisError objects (not raised)."""

    def __init__(self, port, host="127.0.0.1"):
        self.s = socket.create_connection((host, port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0

    def close(self):
        self.s.close()

    def _fill(self):
        if self.pos > 1 << 20:
            del self.buf[:self.pos]
            self.pos = 0
        d = self.s.recv(1 << 20)
        if not d:
            raise ConnectionError("redis closed the connection")
        self.buf += d

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                line = bytes(self.buf[self.pos:i])
                self.pos = i + 2
                return line
            self._fill()

    def _reply(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest
        if t == b"-":
            return RedisError(rest.decode("utf-8", "replace"))
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) - self.pos < n + 2:
                self._fill()
            v = bytes(self.buf[self.pos:self.pos + n])
            self.pos += n + 2
            return v
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RuntimeError(f"bad RESP line {line[:80]!r}")

    def call(self, *args):
        self.s.sendall(encode(args))
        r = self._reply()
        if isinstance(r, RedisError):
            raise r
        return r

    def pipeline(self, cmds, batch=512):
        """Sends cmds (lists of arguments) batch by batch; returns every reply, in order."""
        out = []
        for i in range(0, len(cmds), batch):
            chunk = cmds[i:i + batch]
            self.s.sendall(b"".join(encode(c) for c in chunk))
            out.extend(self._reply() for _ in chunk)
        return out


def commandstats(r):
    """{command: (calls, usec)} from INFO commandstats."""
    text = r.call("INFO", "commandstats").decode()
    out = {}
    for m in re.finditer(r"cmdstat_([^:]+):calls=(\d+),usec=(\d+)", text):
        out[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return out


# ---- the two designs ----------------------------------------------------------

SUB = "ab" * 32       # a sub hash (64 hex)
SUBJECT = "bench-user"
NODE = "bench"


def rt_hash(i, gen=0):
    return hashlib.sha256(b"rt-%d-%d" % (i, gen)).hexdigest()


def gcra(rate, burst):
    """gateway/ops.c gcra(): interval and tolerance in whole microseconds."""
    if rate <= 0:
        return "0", "0"
    iv = max(1, int(1e6 / rate + 0.5))
    tol = iv * int(burst - 1) if burst > 1 else 0
    return "%d" % iv, "%d" % tol


class New:
    """The function library (this tree): FCALL sg_<hash>_<op>, argument layouts of gateway/ops.c."""
    name = "new"
    stat = "fcall"

    def __init__(self, lib, prefix, lease_ms=15000, resume_ms=30000, buf_max=256, buf_bytes=262144,
                 max_peers=8, ttl_ms=600000):
        self.lib, self.prefix = lib, prefix
        self.inst = NODE + "~0001"
        self.lease_ms, self.resume_ms, self.buf_max, self.buf_bytes = lease_ms, resume_ms, buf_max, buf_bytes
        self.max_peers, self.ttl_ms = max_peers, ttl_ms
        self.ghost_ms = lease_ms + 30000

    def load(self, r):
        r.call("FUNCTION", "LOAD", "REPLACE", self.lib)

    def holder(self, n):
        return f"{self.inst}#{n}"

    def record(self, conn, rt=None):
        rec = '{"node":"%s","inst":"%s","conn":"%s","sub":"%s","joinedAt":1764000000000' % (
            NODE, self.inst, conn, SUB)
        return rec + (',"rt":"%s"}' % rt if rt else "}")

    @staticmethod
    def keys(room, acl=False):
        p = "room:{%s}:" % room
        k = [p + "peers", p + "buckets", p + "seq"]
        return k + [p + "acl"] if acl else k

    def _fcall(self, op, keys, argv):
        return ["FCALL", self.prefix + op, len(keys), *keys, *argv]

    def relay(self, room, frm, to, holder, frame, limits, resume_ms, tp="-", count=1):
        if limits:
            iv, tol = gcra(1e9, 1e9)  # evaluated, never refusing
            rates = [iv, tol] * 3
        else:
            rates = ["0", "0"] * 3
        # count relays of one sender to one target in one call (lua/relay.lua
        # takes up to 16, as the gateway sends those of one read).
        return self._fcall("relay", self.keys(room), [room, frm, to, holder, self.settings(resume_ms, rates)]
                           + ["candidate", "1764000000000000", tp, frame] * count)

    def floor(self, room, frm, to, holder, frame):
        # Same arguments as the relay: only the work differs.
        return ["FCALL", "sgfloor_relay", 3, *self.keys(room),
                room, frm, to, holder, "candidate", "1764000000000000", "-", frame,
                self.settings(0)]

    FLOOR_LIB = (b"#!lua name=sgfloor\n"
                 b"redis.register_function('sgfloor_relay', function(keys, args)\n"
                 b"  local both = redis.call('HMGET', keys[1], args[2], args[3])\n"
                 b"  if not both[1] or not both[2] then return {'error', 'not_joined'} end\n"
                 b"  return redis.call('PUBLISH', 'room:{' .. args[1] .. '}:peer:' .. args[3], args[8])\n"
                 b"end)\n")

    def load_floor(self, r):
        r.call("FUNCTION", "LOAD", "REPLACE", self.FLOOR_LIB)

    def join(self, room, peer, holder, rt):
        return self._fcall("join", self.keys(room, True), [room, peer, holder, NODE, SUB, SUBJECT, "1",
                                                           self.max_peers, self.resume_ms, rt, self.ttl_ms])

    def leave(self, room, peer, holder, reason="leave"):
        return self._fcall("leave", self.keys(room), [room, peer, holder, reason, self.resume_ms])

    def resume(self, room, peer, holder, rt_old, rt_new, last_seq):
        return self._fcall("resume", self.keys(room, True), [room, peer, holder, NODE, SUB, rt_old, rt_new,
                                                             last_seq, "1", SUBJECT, self.ttl_ms,
                                                             self.settings(self.resume_ms)])

    def catchup(self, room, peer, last_seq):
        return self._fcall("catchup", self.keys(room), [room, peer, last_seq, self.settings(self.resume_ms)])

    def settings(self, resume_ms, rates=("0",) * 6):
        """gateway/ops.c's relay_settings argument."""
        return " ".join(map(str, [*rates, resume_ms, self.buf_max, self.buf_bytes, self.ttl_ms]))

    def renew(self, rooms):
        """The periodic renewal of rooms this instance holds: reassert, not silent.
        rooms: [(room, [(peer, holder, joinedAt, rt), ...]), ...]"""
        keys, args = [], []
        for room, members in rooms:
            keys += self.keys(room)
            args += [room, 0, len(members)]
            for peer, holder, joined, rt in members:
                args += [peer, holder, SUB, joined, rt]
        return self._fcall("reassert", keys, ["0", self.ttl_ms, NODE, self.inst, self.ghost_ms, len(rooms), *args])

    def heartbeat(self, inst=None):
        return self._fcall("nodes", ["signal:nodes"], [inst or self.inst, self.lease_ms, self.ttl_ms])


class Old:
    """The EVALSHA design of commit 2f8f84d: lib.lua prepended to each script, four keys per room,
    argument layouts of its gateway/session.c."""
    name = "old"
    stat = "evalsha"

    def __init__(self, lib, scripts, lease_ms=15000, resume_ms=30000, buf_max=256, buf_bytes=262144, max_peers=8):
        self.scripts = scripts
        self.sha = {op: hashlib.sha1(s).hexdigest() for op, s in scripts.items()}
        self.lease_ms, self.resume_ms, self.buf_max, self.buf_bytes = lease_ms, resume_ms, buf_max, buf_bytes
        self.max_peers = max_peers
        self.ttl_ms = lease_ms * 3
        self.ghost_ms = lease_ms + 30000
        self.floor_script = lib + b"\n" + (b"local both = redis.call('HMGET', K_PEERS, ARGV[2], ARGV[3])\n"
                                   b"if not both[1] or not both[2] then return {'error', 'not_joined'} end\n"
                                   b"return redis.call('PUBLISH', channel(ARGV[3]), ARGV[8])\n")
        self.sha["floor"] = hashlib.sha1(self.floor_script).hexdigest()

    def load(self, r):
        for op, s in self.scripts.items():
            assert r.call("SCRIPT", "LOAD", s).decode() == self.sha[op]

    def load_floor(self, r):
        assert r.call("SCRIPT", "LOAD", self.floor_script).decode() == self.sha["floor"]

    def holder(self, n):
        return f"{NODE}#{n}"

    def record(self, conn, rt=None):
        rec = '{"node":"%s","conn":"%s","sub":"%s","joinedAt":1764000000000' % (NODE, conn, SUB)
        return rec + (',"rt":"%s"}' % rt if rt else "}")

    @staticmethod
    def keys(room, acl=True):
        p = "room:{%s}:" % room
        return [p + "peers", p + "leases", p + "buckets", p + "acl"]

    def _eval(self, op, rooms, argv):
        keys = []
        for room in rooms:
            keys += self.keys(room)
        return ["EVALSHA", self.sha[op], len(keys), *keys, *argv]

    def relay(self, room, frm, to, holder, frame, limits, resume_ms, tp="-", count=1):
        # The old scripts take one relay per call (count is the new design's).
        # session.c formats rate and burst with "%.6g".
        rates = ["%.6g" % 1e9, "%.6g" % 1e9] * 3 if limits else ["0", "0"] * 3
        return self._eval("relay", [room], [room, frm, to, holder, "candidate", "1764000000000000", tp, frame,
                                            *rates, self.ttl_ms, resume_ms, self.buf_max, self.buf_bytes])

    def floor(self, room, frm, to, holder, frame):
        return self._eval("floor", [room], [room, frm, to, holder, "candidate", "1764000000000000", "-", frame,
                                            "0", "0", "0", "0", "0", "0", self.ttl_ms, 0, self.buf_max,
                                            self.buf_bytes])

    def join(self, room, peer, holder, rt):
        return self._eval("join", [room], [room, peer, holder, NODE, SUB, SUBJECT, "1", self.max_peers,
                                           self.lease_ms, self.ttl_ms, self.resume_ms, rt])

    def leave(self, room, peer, holder, reason="leave"):
        return self._eval("leave", [room], [room, peer, holder, reason, self.resume_ms])

    def resume(self, room, peer, holder, rt_old, rt_new, last_seq):
        return self._eval("resume", [room], [room, peer, holder, NODE, SUB, rt_old, rt_new, last_seq,
                                             self.lease_ms, self.ttl_ms])

    def catchup(self, room, peer, last_seq):
        return self._eval("catchup", [room], [room, peer, last_seq])

    def renew(self, rooms):
        """The periodic lease refresh (refresh.lua), not silent."""
        args = []
        for room, members in rooms:
            args += [room, 0, len(members)]
            for peer, holder, joined, rt in members:
                args += [peer, holder, SUB, joined, rt]
        return self._eval("refresh", [r for r, _ in rooms],
                          [rooms[0][0], "0", self.lease_ms, self.ttl_ms, NODE, self.resume_ms, self.ghost_ms,
                           len(rooms), *args])


def start_redis(work, port=None, wrapper=None, log=None):
    """A private redis-server (deploy/redis.conf) on a free loopback port; returns (Popen, port)."""
    if port is None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
    cmd = (wrapper or []) + ["redis-server", os.path.join(ROOT, "deploy", "redis.conf"), "--port", str(port),
                             "--bind", "127.0.0.1", "--daemonize", "no", "--save", "", "--dir", work]
    p = subprocess.Popen(cmd, stdout=open(log or os.devnull, "wb"), stderr=subprocess.STDOUT)
    return p, port
