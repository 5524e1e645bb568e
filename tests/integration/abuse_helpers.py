# SPDX-License-Identifier: Apache-2.0
"""Helpers for test_abuse.py: a raw-socket flooder that is never the
bottleneck, the gateway's effective rate-limit defaults (read from --help, so
bounds follow the configuration), /metrics parsing and Redis command
statistics.

Everything talks to the gateway from the outside, like sg_helpers.
"""

import calendar
import json
import re
import socket
import struct
import subprocess
import threading
import time

import sg_helpers as h

# --------------------------------------------------------------------------
# configuration

_DEFAULTS = {}


def gateway_defaults():
    """{SIGNAL_*: default string} as `signal-gateway --help` prints them."""
    if not _DEFAULTS:
        out = subprocess.run([h.GATEWAY_BIN, "--help"], capture_output=True, text=True, timeout=10)
        text = out.stdout + out.stderr
        for line in text.splitlines():
            m = re.search(r"\b(SIGNAL_[A-Z0-9_]+)\b.*\[default ([^\]]*)\]", line)
            if m:
                _DEFAULTS[m.group(1)] = m.group(2)
        if "SIGNAL_RATE_CANDIDATE" not in _DEFAULTS:
            raise AssertionError(f"could not read the rate defaults from --help:\n{text[:2000]}")
    return _DEFAULTS


def parse_rate(value):
    """'RATE/BURST' -> (rate, burst); '0' -> (0, 0) (off)."""
    value = str(value).strip()
    if value == "0":
        return 0.0, 0.0
    r, _, b = value.partition("/")
    return float(r), float(b)


def effective_rate(env, name):
    """The (rate, burst) a gateway started with env uses for SIGNAL_<name>."""
    var = "SIGNAL_" + name
    if env and var in env and env[var] is not None:
        return parse_rate(env[var])
    return parse_rate(gateway_defaults()[var])


# --------------------------------------------------------------------------
# metrics

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def metrics(gw):
    """{(name, frozenset(labels.items())): value} from the admin /metrics."""
    status, body = h.http_status(gw.admin_url + "/metrics", timeout=3)
    assert status == 200, f"GET /metrics: {status}"
    out = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = {}
        if m.group(2):
            for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2)):
                labels[k] = v
        out[(m.group(1), frozenset(labels.items()))] = float(m.group(3))
    return out


def metric(snapshot, name, **labels):
    """One sample's value (0 when absent: counters of labels never seen)."""
    return snapshot.get((name, frozenset(labels.items())), 0.0)


# --------------------------------------------------------------------------
# Redis and the log


def evalsha_calls(redis):
    """cmdstat_evalsha calls: every script call the gateways made (the
    equivalent of `redis-cli -p PORT INFO commandstats | grep evalsha`)."""
    text = redis("INFO", "commandstats")
    m = re.search(r"cmdstat_evalsha:calls=(\d+)", text)
    return int(m.group(1)) if m else 0


def log_events(gw, event):
    return h.log_events(gw.log_text(), event)


def log_ts(obj):
    """Seconds since the epoch of a log line's ts (millisecond precision)."""
    ts = obj["ts"]
    base, _, frac = ts.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + (int(frac) / 1000 if frac else 0)


# --------------------------------------------------------------------------
# a raw WebSocket flooder


def candidate_frames(room, frm, to, n=1000):
    """n masked text frames, each a candidate message, encoded once up front."""
    return [h.encode_frame(h.OP_TEXT, json.dumps(h.candidate(room, frm, to, h.ice(i)),
                                                 separators=(",", ":")))
            for i in range(n)]


def unmask_frame(frame):
    """The text payload of one of our own masked client frames."""
    n, off = frame[1] & 0x7F, 2
    if n == 126:
        n, off = struct.unpack("!H", frame[2:4])[0], 4
    elif n == 127:
        n, off = struct.unpack("!Q", frame[2:10])[0], 10
    key, data = frame[off:off + 4], frame[off + 4:off + 4 + n]
    return bytes(x ^ key[i & 3] for i, x in enumerate(data)).decode()


class RawFlooder:
    """A hand-made WebSocket client: a writer that sends pre-encoded frames
    as fast as asked (threads, blocking socket: the Python client is not the
    bottleneck) and a reader thread that records every message with the
    monotonic time it arrived, answers pings and echoes the close frame."""

    def __init__(self, gw, token, name="flooder", headers=None):
        self.name = name
        self.ws = h.RawWS.connect(gw, token, headers=headers)
        self.sock = self.ws.sock
        self.send_lock = threading.Lock()
        self.messages = []      # (t_monotonic, obj)
        self.close_code = None  # the server's close frame code
        self.close_t = None
        self.eof_t = None
        self.sent = 0
        self.t_first_send = None
        self.t_last_send = None
        self.send_error = None
        self._stop = threading.Event()
        self._reader = None
        self._writer = None

    # setup -----------------------------------------------------------------
    def join(self, room, peer, timeout=5.0):
        self.ws.send_json({"type": "join", "roomId": room, "peerId": peer})
        deadline = time.monotonic() + timeout
        while True:
            m = self.ws.recv_json(max(0.1, deadline - time.monotonic()))
            self.messages.append((time.monotonic(), m))
            if m.get("type") == "joined" and m.get("roomId") == room:
                return m
            if m.get("type") == "error":
                raise AssertionError(f"{self.name}: join refused: {m}")

    def start_reader(self):
        self.sock.settimeout(None)
        self._reader = threading.Thread(target=self._read_loop, name=f"{self.name}-reader", daemon=True)
        self._reader.start()

    # reading ---------------------------------------------------------------
    def _send_locked(self, data):
        try:
            with self.send_lock:
                self.sock.sendall(data)
        except OSError:
            pass

    def _read_loop(self):
        buf = self.ws.buf
        self.ws.buf = b""
        parts = []
        while True:
            while True:
                if len(buf) < 2:
                    break
                b0, b1 = buf[0], buf[1]
                n, off = b1 & 0x7F, 2
                if n == 126:
                    if len(buf) < 4:
                        break
                    n, off = struct.unpack("!H", buf[2:4])[0], 4
                elif n == 127:
                    if len(buf) < 10:
                        break
                    n, off = struct.unpack("!Q", buf[2:10])[0], 10
                if len(buf) < off + n:
                    break
                payload, buf = buf[off:off + n], buf[off + n:]
                op = b0 & 0x0F
                now = time.monotonic()
                if op == h.OP_CLOSE:
                    self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    self.close_t = now
                    self._stop.set()
                    self._send_locked(h.encode_frame(h.OP_CLOSE, payload[:2]))
                elif op == h.OP_PING:
                    self._send_locked(h.encode_frame(h.OP_PONG, payload))
                elif op in (h.OP_TEXT, h.OP_CONT):
                    parts.append(payload)
                    if b0 & 0x80:
                        try:
                            obj = json.loads(b"".join(parts).decode())
                        except ValueError:
                            obj = {"type": "_not_json", "data": b"".join(parts)}
                        parts = []
                        self.messages.append((now, obj))
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                self.eof_t = time.monotonic()
                self._stop.set()
                return
            buf += chunk

    # writing ---------------------------------------------------------------
    def flood(self, frames, rate=None, duration=None, count=None):
        """Send frames (cycled) at `rate` messages/s (None: as fast as the
        socket takes them) for `duration` seconds or `count` messages,
        whichever ends first, or until the server closes. Blocking."""
        assert duration or count
        t0 = time.monotonic()
        if self.t_first_send is None:
            self.t_first_send = t0
        i, nf = 0, len(frames)
        while not self._stop.is_set():
            now = time.monotonic()
            if duration is not None and now - t0 >= duration:
                break
            if count is not None and i >= count:
                break
            due = i + 200 if rate is None else int((now - t0) * rate) + 1
            if count is not None:
                due = min(due, count)
            if due > i:
                n = min(due - i, 500)
                batch = b"".join(frames[(i + k) % nf] for k in range(n))
                try:
                    with self.send_lock:
                        self.sock.sendall(batch)
                except OSError as e:
                    self.send_error = e
                    break
                i += n
                self.sent += n
                self.t_last_send = time.monotonic()
            elif rate is not None:
                time.sleep(min(0.002, max(0.0, (i + 1) / rate - (now - t0))))
        return i

    def flood_in_thread(self, frames, **kw):
        self._writer = threading.Thread(target=self.flood, args=(frames,), kwargs=kw,
                                        name=f"{self.name}-writer", daemon=True)
        self._writer.start()
        return self._writer

    def wait_writer(self, timeout):
        if self._writer is not None:
            self._writer.join(timeout)
            assert not self._writer.is_alive(), f"{self.name}: writer still running"

    # results ---------------------------------------------------------------
    def of(self, type_, **fields):
        return [(t, m) for t, m in list(self.messages)
                if m.get("type") == type_ and all(m.get(k) == v for k, v in fields.items())]

    def errors(self, code=None):
        return [(t, m) for t, m in self.of("error") if code is None or m.get("code") == code]

    def wait_closed(self, timeout):
        """Until the server closed (close frame or EOF); True if it did."""
        return self._stop.wait(timeout)

    def close(self):
        self._stop.set()
        if self.close_code is None and self.eof_t is None:
            self._send_locked(h.encode_frame(h.OP_CLOSE, struct.pack("!H", 1000)))
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._writer is not None:
            self._writer.join(5)
        if self._reader is not None:
            self._reader.join(5)
        try:
            self.sock.close()
        except OSError:
            pass
