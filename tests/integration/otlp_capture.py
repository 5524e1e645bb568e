# SPDX-License-Identifier: Apache-2.0
"""A capture OTLP/HTTP JSON endpoint for the integration tests.

It accepts `POST <anything>` (the gateway sends `/v1/traces`), keeps every
request (path, headers, raw body, parsed JSON) and answers 200 with a small
JSON body and a Content-Length, so the exporter may keep the connection alive.
It binds a free loopback port and runs in a daemon thread of the test process:

    with OTLPCapture() as cap:
        env = {"SIGNAL_OTLP_ENDPOINT": cap.url}
        ...
        cap.wait_for(lambda spans: any(s.name == "relay.deliver" for s in spans), timeout=5)

Run as a program it prints each request body as one JSON line on stdout until
interrupted (for looking at a gateway's spans by hand):

    /usr/bin/python3 tests/integration/otlp_capture.py --port 4318
"""

import argparse
import http.server
import json
import sys
import threading
import time

HOST = "127.0.0.1"


def _field(key):
    """A read-only attribute: the raw span's JSON field key (None when absent)."""
    return property(lambda self: self.raw.get(key))


class Span:
    """One span of a capture with the resource and scope it came under."""

    def __init__(self, raw, resource, scope):
        self.raw = raw
        self.resource = resource  # {key: value} of the resource attributes
        self.scope = scope

    name = _field("name")
    trace_id = _field("traceId")
    span_id = _field("spanId")
    kind = _field("kind")

    @property
    def parent_span_id(self):
        return self.raw.get("parentSpanId") or None

    @property
    def node(self):
        return self.resource.get("service.instance.id")

    @property
    def attributes(self):
        return attributes_dict(self.raw.get("attributes") or [])

    def __repr__(self):
        return (f"<Span {self.name} node={self.node} trace={self.trace_id} span={self.span_id} "
                f"parent={self.parent_span_id}>")


def any_value(v):
    """The Python value of an OTLP AnyValue in its JSON encoding."""
    if not isinstance(v, dict) or len(v) != 1:
        raise ValueError(f"not an OTLP AnyValue: {v!r}")
    (k, x), = v.items()
    if k == "intValue":
        # int64 goes as a decimal string in OTLP JSON (a number is tolerated)
        return int(x)
    if k in ("stringValue", "boolValue", "doubleValue", "bytesValue"):
        return x
    if k == "arrayValue":
        return [any_value(e) for e in x.get("values", [])]
    if k == "kvlistValue":
        return attributes_dict(x.get("values", []))
    raise ValueError(f"unknown AnyValue kind {k!r}")


def attributes_dict(attrs):
    return {a["key"]: any_value(a["value"]) for a in attrs}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real collector does
    timeout = 10                   # an idle kept-alive connection ends its thread

    def do_POST(self):  # noqa: N802 (http.server's naming)
        cap = self.server.capture
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        cap._add({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                  "body": body, "json": parsed, "time": time.monotonic()})
        out = b"{}"
        self.send_response(cap.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass  # quiet


class OTLPCapture:
    def __init__(self, host=HOST, port=0, status=200):
        self.host = host
        self.port = port
        self.status = status
        self.requests = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._server = None
        self._thread = None
        self.on_request = None  # optional callable(request dict), for the CLI

    # lifecycle
    def start(self):
        srv = http.server.ThreadingHTTPServer((self.host, self.port), _Handler)
        srv.daemon_threads = True
        srv.capture = self
        self._server = srv
        self.port = srv.server_address[1]
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="otlp-capture", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        """What SIGNAL_OTLP_ENDPOINT takes: the base URL (spans go to /v1/traces)."""
        return f"http://{self.host}:{self.port}"

    # data
    def _add(self, req):
        with self._cond:
            self.requests.append(req)
            self._cond.notify_all()
        if self.on_request:
            self.on_request(req)

    def snapshot(self):
        with self._lock:
            return list(self.requests)

    def spans(self):
        """Every span received so far, flattened, with its resource attributes."""
        out = []
        for req in self.snapshot():
            body = req["json"]
            if not isinstance(body, dict):
                continue
            for rs in body.get("resourceSpans") or []:
                resource = attributes_dict((rs.get("resource") or {}).get("attributes") or [])
                for ss in rs.get("scopeSpans") or []:
                    for sp in ss.get("spans") or []:
                        out.append(Span(sp, resource, ss.get("scope") or {}))
        return out

    def wait_for(self, pred, timeout, what="spans"):
        """Waits until pred(spans) is truthy; returns its value. Bounded."""
        deadline = time.monotonic() + timeout
        while True:
            v = pred(self.spans())
            if v:
                return v
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                names = sorted({(s.node, s.name) for s in self.spans()}, key=str)
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"received (node, span): {names}")
            with self._cond:
                self._cond.wait(min(remaining, 0.2))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default=HOST)
    ap.add_argument("--port", type=int, default=4318)
    args = ap.parse_args()
    cap = OTLPCapture(args.host, args.port)

    def show(req):
        sys.stdout.write(json.dumps({"path": req["path"], "body": req["json"]}) + "\n")
        sys.stdout.flush()

    cap.on_request = show
    cap.start()
    sys.stderr.write(f"OTLP capture on {cap.url}/v1/traces\n")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cap.stop()


if __name__ == "__main__":
    main()
