# SPDX-License-Identifier: Apache-2.0
"""Issue 5 / docs/protocol.md §8: what an operator sees. Prometheus metrics checked
by a real promtool and against the traffic sent; OTLP/HTTP JSON traces caught
by a capture endpoint (otlp_capture.py) across two nodes; the fields of the
log lines of a full call; readiness against Redis.

test_logs.py already checks that the named events exist and that one call's
lines hold no secrets; conftest.py scans every log of the session for them.
"""

import asyncio
import datetime
import hashlib
import hmac
import json
import math
import re
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
import uuid

import pytest

import sg_helpers as h
from otlp_capture import OTLPCapture
from sg_helpers import arun, Clients, handshake, make_token, new_peer, new_room, tok

HEX16 = re.compile(r"^[0-9a-f]{16}$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SERVER_CID = re.compile(r"^s\.[0-9a-f]{12}\.[0-9a-f]+$")
LEVELS = {"debug", "info", "warn", "error"}
SPAN_PRODUCER, SPAN_CONSUMER = 4, 5


def uniq(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------
# metrics


def scrape(gw):
    with urllib.request.urlopen(gw.admin_url + "/metrics", timeout=3) as r:
        assert r.status == 200
        ctype = r.headers.get("Content-Type", "")
        assert ctype.startswith("text/plain"), f"/metrics Content-Type: {ctype!r}"
        return r.read().decode()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """{(name, ((label, value), ...)): float}, in exposition order."""
    out = {}
    for ln in text.splitlines():
        if not ln or ln.startswith("#"):
            continue
        m = _SAMPLE.match(ln)
        assert m, f"unparsable sample line: {ln!r}"
        labels = tuple(sorted(_LABEL.findall(m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metrics(gw):
    return parse_metrics(scrape(gw))


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def family(samples, name, label):
    return {dict(k[1])[label]: v for k, v in samples.items() if k[0] == name}


def delta(after, before):
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def histogram(samples, name):
    """([(le, cumulative count)] in exposition order, sum, count)."""
    buckets = [(math.inf if dict(k[1])["le"] == "+Inf" else float(dict(k[1])["le"]), v)
               for k, v in samples.items() if k[0] == name + "_bucket"]
    return buckets, value(samples, name + "_sum"), value(samples, name + "_count")


def check_histogram_shape(samples, name, where):
    buckets, _, count = histogram(samples, name)
    assert buckets, f"{where}: no {name}_bucket samples"
    les = [le for le, _ in buckets]
    assert les == sorted(les) and len(set(les)) == len(les), f"{where}: {name} bounds out of order: {les}"
    assert les[-1] == math.inf, f"{where}: {name} does not end with le=\"+Inf\""
    counts = [c for _, c in buckets]
    assert all(a <= b for a, b in zip(counts, counts[1:])), f"{where}: {name} buckets not cumulative: {buckets}"
    assert counts[-1] == count, f"{where}: {name} +Inf bucket {counts[-1]} != _count {count}"


# Lines of `promtool check metrics` output the test tolerates. Empty: zero
# problems. (docs/protocol.md §8 fixes the names ws_connections_gauge,
# room_members_gauge and relay_latency_ms, which promtool's lint flags; an
# exact line goes here only if the contract keeps a name over the lint.)
# promtool's naming lints that the contract itself decides (docs/protocol.md §8
# fixes ws_connections_gauge, room_members_gauge and relay_latency_ms); the
# two other millisecond metrics follow relay_latency_ms's unit so one
# dashboard reads them alike. Any other finding fails the test.
PROMTOOL_ACCEPTED = frozenset({
    "ws_connections_gauge metric name should not include type 'gauge'",
    "room_members_gauge metric name should not include type 'gauge'",
    "relay_latency_ms metric names should not contain abbreviated units",
    "redis_command_latency_ms metric names should not contain abbreviated units",
    "delivery_probe_age_ms metric names should not contain abbreviated units",
})


def promtool(*args, stdin=None):
    """(exit status, stdout + stderr) of Debian's promtool."""
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool not found: install Debian's `prometheus` package (deploy/deps.sh)",
                    pytrace=False)
    p = subprocess.run([tool, *args], input=stdin, capture_output=True, timeout=60)
    return p.returncode, (p.stdout + p.stderr).decode(errors="replace")


async def call_traffic(a, b, room, pa, pb, candidates=1):
    """join both, offer a->b, answer b->a, candidates a->b."""
    await a.join(room, pa)
    await b.join(room, pb)
    await a.send(h.offer(room, pa, pb))
    await b.recv_type("relay")
    await b.send(h.answer(room, pb, pa))
    await a.recv_type("relay")
    for i in range(candidates):
        await a.send(h.candidate(room, pa, pb, h.ice(i)))
        await b.recv_type("relay")


@pytest.mark.async_timeout(30)
async def test_promtool_accepts_metrics_after_traffic(gateway_factory):
    gw1, gw2 = gateway_factory(2)
    scrapes = []

    async with Clients() as c:
        a = await c.connect(gw1.ws_url, tok(uniq("prom-a")), name="a")
        b = await c.connect(gw2.ws_url, tok(uniq("prom-b")), name="b")
        room, pa, pb = new_room(), new_peer(), new_peer()
        await call_traffic(a, b, room, pa, pb, candidates=3)
        await a.send({"type": "offer", "roomId": room})  # bad_request
        await a.expect_error("bad_request")
        await b.send(h.offer(new_room(), pb, pa))  # not_joined
        await b.expect_error("not_joined")
        for gw in (gw1, gw2):
            scrapes.append((f"{gw.name} (clients connected)", scrape(gw)))
    for gw in (gw1, gw2):
        assert handshake(gw, token=make_token(uniq("prom-exp"), rooms=["*"], exp_in=-300)).status == 401
        scrapes.append((f"{gw.name} (after)", scrape(gw)))

    problems = {}  # promtool's line -> the scrapes it was said of
    for where, text in scrapes:
        rc, out = promtool("check", "metrics", stdin=text.encode())
        lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
        if rc != 0 and not lines:
            lines = [f"(exit status {rc} without a message)"]
        for ln in lines:
            if ln not in PROMTOOL_ACCEPTED:
                problems.setdefault(ln, []).append(where)
    assert not problems, "promtool check metrics found problems:\n" + "\n".join(
        f"  {ln}    [{', '.join(w)}]" for ln, w in problems.items())


@pytest.mark.async_timeout(30)
async def test_relay_latency_histogram_counts_delivered_relays(gateway_factory):
    gw1, gw2 = gateway_factory(2, env=h.NO_RATE_LIMITS)
    a_to_b, b_to_a = 16, 9  # 1 offer + 15 candidates; 1 answer + 8 candidates
    got = {}

    async with Clients() as c:
        a = await c.connect(gw1.ws_url, tok(uniq("lat-a")), name="a")
        b = await c.connect(gw2.ws_url, tok(uniq("lat-b")), name="b")
        room, pa, pb = new_room(), new_peer(), new_peer()
        await a.join(room, pa)
        await b.join(room, pb)
        before = {gw.name: metrics(gw) for gw in (gw1, gw2)}
        await a.send(h.offer(room, pa, pb))
        await b.send(h.answer(room, pb, pa))
        for i in range(a_to_b - 1):
            await a.send(h.candidate(room, pa, pb, h.ice(i)))
        for i in range(b_to_a - 1):
            await b.send(h.candidate(room, pb, pa, h.ice(100 + i)))
        got["b"] = [await b.recv_type("relay") for _ in range(a_to_b)]
        got["a"] = [await a.recv_type("relay") for _ in range(b_to_a)]
        await asyncio.sleep(0.3)  # nothing more comes
        for cl, n in ((a, b_to_a), (b, a_to_b)):
            assert sum(m["type"] == "relay" for m in cl.messages) == n, cl.messages
        after = {gw.name: metrics(gw) for gw in (gw1, gw2)}
    n = len(got["a"]) + len(got["b"])
    assert n == a_to_b + b_to_a

    total_count = total_sum = 0.0
    for gw, received in ((gw1, len(got["a"])), (gw2, len(got["b"]))):
        b4, af = before[gw.name], after[gw.name]
        check_histogram_shape(af, "relay_latency_ms", gw.name)
        _, s0, c0 = histogram(b4, "relay_latency_ms")
        _, s1, c1 = histogram(af, "relay_latency_ms")
        # The histogram is the target's: each node counts what it wrote to its clients.
        assert c1 - c0 == received, f"{gw.name}: relay_latency_ms_count grew by {c1 - c0}, " \
                                    f"its clients received {received} relays"
        assert value(af, "relays_delivered_total") - value(b4, "relays_delivered_total") == received
        total_count += c1 - c0
        total_sum += s1 - s0
    assert total_count == n
    assert 0 < total_sum < n * 1000, f"relay_latency_ms_sum grew by {total_sum} ms for {n} relays"


@pytest.mark.async_timeout(30)
async def test_message_error_and_auth_counters_match_traffic(gateway_factory):
    gw = gateway_factory.start()
    before = metrics(gw)

    async with Clients() as c:
        a = await c.connect(gw.ws_url, tok(uniq("cnt-a")), name="a")
        b = await c.connect(gw.ws_url, tok(uniq("cnt-b")), name="b")
        room, pa, pb = new_room(), new_peer(), new_peer()
        await call_traffic(a, b, room, pa, pb, candidates=3)
        m = metrics(gw)
        assert value(m, "ws_connections_gauge") == 2
        assert value(m, "room_members_gauge") == 2
        await a.send({"roomId": room, "peerId": pa})  # no type: bad_request
        await a.expect_error("bad_request")
        await a.send(h.offer(new_room(), pa, pb))  # a room a is not in
        await a.expect_error("not_joined")
        await b.leave(room, pb)
        assert value(metrics(gw), "room_members_gauge") == 1
    assert handshake(gw, token=make_token(uniq("cnt-exp"), rooms=["*"], exp_in=-300)).status == 401
    assert handshake(gw).status == 401  # no token at all

    def settled():
        m = metrics(gw)
        return m if value(m, "ws_connections_gauge") == 0 and value(m, "room_members_gauge") == 0 else None
    after = h.wait_until(settled, 5, what="connection and member gauges back to 0")

    assert delta(family(after, "messages_total", "type"), family(before, "messages_total", "type")) == \
        {"join": 2, "offer": 2, "answer": 1, "candidate": 3, "leave": 1, "invalid": 1}
    assert delta(family(after, "errors_total", "code"), family(before, "errors_total", "code")) == \
        {"bad_request": 1, "not_joined": 1}
    assert delta(family(after, "auth_failures_total", "reason"), family(before, "auth_failures_total", "reason")) == \
        {"expired": 1, "missing": 1}
    assert delta(family(after, "handshakes_total", "outcome"), family(before, "handshakes_total", "outcome")) == \
        {"101": 2, "401": 2}
    assert delta(family(after, "ws_closes_total", "code"), family(before, "ws_closes_total", "code")) == {"1000": 2}
    assert value(after, "relays_delivered_total") - value(before, "relays_delivered_total") == 5


# --------------------------------------------------------------------------
# traces


def check_otlp_request(req, node_ids):
    """The OTLP/HTTP JSON shape of one export request."""
    assert req["path"] == "/v1/traces", req["path"]
    assert req["headers"].get("content-type", "").startswith("application/json"), req["headers"]
    body = req["json"]
    assert isinstance(body, dict), f"body is not a JSON object: {req['body'][:200]!r}"
    assert isinstance(body.get("resourceSpans"), list) and body["resourceSpans"], body
    for rs in body["resourceSpans"]:
        attrs = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}
        assert attrs.get("service.name") == {"stringValue": "signal-gateway"}, attrs
        assert attrs.get("service.instance.id", {}).get("stringValue") in node_ids, attrs
        assert isinstance(rs.get("scopeSpans"), list) and rs["scopeSpans"], rs
        for ss in rs["scopeSpans"]:
            assert isinstance(ss.get("scope", {}).get("name"), str), ss.get("scope")
            assert isinstance(ss.get("spans"), list) and ss["spans"], ss
            for sp in ss["spans"]:
                assert HEX32.match(sp.get("traceId", "")) and set(sp["traceId"]) != {"0"}, sp
                assert HEX16.match(sp.get("spanId", "")) and set(sp["spanId"]) != {"0"}, sp
                if "parentSpanId" in sp:
                    assert HEX16.match(sp["parentSpanId"]), sp
                assert isinstance(sp.get("name"), str) and sp["name"], sp
                assert sp.get("kind") in (1, 2, 3, 4, 5), sp
                start, end = sp.get("startTimeUnixNano"), sp.get("endTimeUnixNano")
                assert isinstance(start, str) and start.isdigit(), sp
                assert isinstance(end, str) and end.isdigit() and int(start) <= int(end), sp
                now_ns = time.time_ns()
                assert now_ns - 600 * 10**9 < int(start) <= now_ns + 10**9, f"implausible start: {sp}"
                for a in sp.get("attributes", []):
                    assert isinstance(a.get("key"), str) and isinstance(a.get("value"), dict), sp


def one(spans, what, **where):
    found = [s for s in spans if all(getattr(s, k) == v for k, v in where.items())]
    assert len(found) == 1, f"expected one {what}, found {found}"
    return found[0]


@pytest.mark.async_timeout(30)
async def test_otlp_spans_cross_node_relay_and_client_traceparent(gateway_factory):
    with OTLPCapture() as cap:
        gw1, gw2 = gateway_factory(2, env={"SIGNAL_OTLP_ENDPOINT": cap.url})
        client_trace, client_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
        room, pa, pb = new_room(), new_peer(), new_peer()

        async with Clients() as c:
            a = await c.connect(gw1.ws_url, tok(uniq("otlp-a")), name="a",
                                extra_headers={"traceparent": f"00-{client_trace}-{client_span}-01"})
            b = await c.connect(gw2.ws_url, tok(uniq("otlp-b")), name="b")
            await a.join(room, pa)
            await b.join(room, pb)
            await a.send(h.offer(room, pa, pb, cid="obs-offer-1"))
            relay = await b.recv_type("relay")
            assert relay["correlationId"] == "obs-offer-1"
            await a.leave(room, pa)
            await a.close()
            await b.close()

        def ready(spans):
            names = {(s.node, s.name) for s in spans}
            need = {(gw1.node_id, "ws.connection"), (gw2.node_id, "ws.connection"),
                    (gw1.node_id, "relay.offer"), (gw2.node_id, "relay.deliver"),
                    (gw1.node_id, "room.join"), (gw2.node_id, "room.join"), (gw1.node_id, "room.leave"),
                    (gw1.node_id, "ws.handshake")}
            return need <= names
        cap.wait_for(ready, timeout=10, what="the spans of both nodes")
        requests = cap.snapshot()
        spans = cap.spans()

    for req in requests:
        check_otlp_request(req, {gw1.node_id, gw2.node_id})
    for s in spans:
        assert s.resource["service.instance.id"] in (gw1.node_id, gw2.node_id)

    # The handshake's traceparent: a's connection span is a child of the client's span.
    conn_a = one(spans, "ws.connection span of a", node=gw1.node_id, name="ws.connection", trace_id=client_trace)
    assert conn_a.parent_span_id == client_span, conn_a
    assert conn_a.attributes.get("ws.close_code") == 1000, conn_a.attributes
    hs = one(spans, "ws.handshake span of a", node=gw1.node_id, name="ws.handshake", trace_id=client_trace)
    assert hs.parent_span_id == conn_a.span_id
    # b came without one: its connection span is a root of its own trace.
    conn_b = one(spans, "ws.connection span of b", node=gw2.node_id, name="ws.connection")
    assert conn_b.parent_span_id is None and conn_b.trace_id != client_trace, conn_b

    # The relay on node 1 (PRODUCER) and its delivery on node 2 (CONSUMER).
    relay = one(spans, "relay.offer span", node=gw1.node_id, name="relay.offer")
    assert relay.kind == SPAN_PRODUCER, relay.raw
    assert relay.trace_id == client_trace and relay.parent_span_id == conn_a.span_id, relay
    assert relay.attributes.get("signal.correlation_id") == "obs-offer-1", relay.attributes
    assert relay.attributes.get("signal.room") == room, relay.attributes
    deliver = one(spans, "relay.deliver span", name="relay.deliver")
    assert deliver.node == gw2.node_id, deliver
    assert deliver.kind == SPAN_CONSUMER, deliver.raw
    assert deliver.trace_id == relay.trace_id, (deliver, relay)
    assert deliver.parent_span_id == relay.span_id, (deliver, relay)
    assert deliver.attributes.get("signal.room") == room, deliver.attributes
    assert deliver.attributes.get("signal.peer") == pb, deliver.attributes

    # Join and leave.
    join_a = one(spans, "room.join span of a", node=gw1.node_id, name="room.join")
    assert join_a.trace_id == client_trace and join_a.parent_span_id == conn_a.span_id
    assert join_a.attributes.get("signal.peer") == pa, join_a.attributes
    join_b = one(spans, "room.join span of b", node=gw2.node_id, name="room.join")
    assert join_b.trace_id == conn_b.trace_id and join_b.parent_span_id == conn_b.span_id
    leave = [s for s in spans if s.node == gw1.node_id and s.name == "room.leave"]
    assert leave and all(s.attributes.get("signal.room") == room for s in leave), leave
    ids = [s.span_id for s in spans]
    assert len(ids) == len(set(ids)), "span ids repeat"


@pytest.mark.async_timeout(40)
async def test_relays_flow_while_collector_is_down(gateway_factory):
    closed = h.free_port()  # nothing listens there
    env = dict(h.NO_RATE_LIMITS, SIGNAL_OTLP_ENDPOINT=f"http://{h.HOST}:{closed}")
    gw1, gw2 = gateway_factory(2, env=env)
    count = 200

    async with Clients() as c:
        a = await c.connect(gw1.ws_url, tok(uniq("down-a")), name="a")
        b = await c.connect(gw2.ws_url, tok(uniq("down-b")), name="b")
        room, pa, pb = new_room(), new_peer(), new_peer()
        await a.join(room, pa)
        await b.join(room, pb)
        t0 = time.monotonic()
        for i in range(count):
            await a.send(h.candidate(room, pa, pb, h.ice(i), cid=f"c{i}"))
        got = [await b.recv_type("relay", timeout=10) for _ in range(count)]
        elapsed = time.monotonic() - t0
        assert [m["correlationId"] for m in got] == [f"c{i}" for i in range(count)], "out of order"
        assert [m["inner"]["candidate"] for m in got] == [h.ice(i) for i in range(count)]
    assert elapsed < 10, f"{count} relays took {elapsed:.1f}s with the collector down"

    # The relay spans (node 1) and delivery spans (node 2) are dropped and counted.
    for gw in (gw1, gw2):
        m = h.wait_until(lambda: (lambda s: s if value(s, "trace_spans_dropped_total") >= count else None)(
            metrics(gw)), 8, what=f"{gw.name}: trace_spans_dropped_total >= {count}")
        assert value(m, "trace_spans_exported_total") == 0
    lines = [json.loads(ln) for ln in gw1.log_text().splitlines() if ln.startswith("{")]
    failed = [o for o in lines if o.get("event") == "trace.export_failed"]
    assert failed and failed[0]["level"] == "warn", "no trace.export_failed warning in the log"


# OpenTelemetry's standard variables, https collectors


class TLSCapture(OTLPCapture):
    """The capture endpoint behind TLS (the session's self-signed cert for
    127.0.0.1): each accepted connection is wrapped before it is served."""

    def __init__(self, cert, key):
        super().__init__()
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(str(cert), str(key))
        self.handshake_failures = 0

    def start(self):
        super().start()
        srv, ctx, cap = self._server, self._ctx, self

        def get_request():
            sock, addr = socket.socket.accept(srv.socket)
            try:
                return ctx.wrap_socket(sock, server_side=True), addr
            except (ssl.SSLError, OSError):
                cap.handshake_failures += 1
                sock.close()
                raise
        srv.get_request = get_request
        return self

    @property
    def url(self):
        return f"https://{self.host}:{self.port}"


def traffic_for_spans(gw):
    """One connection that joins a room and leaves: ws.handshake, room.join,
    room.leave and ws.connection spans."""
    async def main():
        async with Clients() as c:
            a = await c.connect(gw.ws_url, tok(uniq("otel")), name="a")
            room, pa = new_room(), new_peer()
            await a.join(room, pa)
            await a.leave(room, pa)
            await a.close()
    arun(main(), timeout=30)


def has_span(node, name):
    return lambda spans: any(s.node == node and s.name == name for s in spans)


def without_otlp(env):
    """The OTEL_* variables only: no SIGNAL_OTLP_ENDPOINT from the fixture."""
    return dict(env, SIGNAL_OTLP_ENDPOINT=None)


def test_otel_variables_https_collector_headers_and_service_name(gateway_factory, tls_files):
    cert, key = tls_files()
    with TLSCapture(cert, key) as cap:
        gw = gateway_factory.start(env=without_otlp({
            "OTEL_EXPORTER_OTLP_ENDPOINT": cap.url + "/",
            "OTEL_EXPORTER_OTLP_CERTIFICATE": str(cert),
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20otel-k3y, x-scope-orgid = team-1",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_SERVICE_NAME": "edge-signal",
        }))
        traffic_for_spans(gw)
        cap.wait_for(has_span(gw.node_id, "room.join"), timeout=10, what="room.join over https")
        # The capture keeps a request before it answers: wait for the answer to count.
        h.wait_until(lambda: value(metrics(gw), "trace_spans_exported_total") >= 1, 10,
                     what="trace_spans_exported_total >= 1")
        requests = cap.snapshot()
        spans = cap.spans()
    for req in requests:
        assert req["path"] == "/v1/traces", req["path"]
        assert req["headers"].get("authorization") == "Bearer otel-k3y", req["headers"]
        assert req["headers"].get("x-scope-orgid") == "team-1", req["headers"]
        assert req["headers"].get("host") == f"{h.HOST}:{cap.port}", req["headers"]
    for s in spans:
        assert s.resource["service.name"] == "edge-signal", s.resource
        assert s.resource["service.instance.id"] == gw.node_id, s.resource
        assert re.fullmatch(r"\d+\.\d+\.\d+", s.resource["service.version"]), s.resource
    assert cap.handshake_failures == 0
    assert value(metrics(gw), "trace_spans_dropped_total") == 0
    # The header values (an API key) are never logged.
    assert "otel-k3y" not in gw.log_text()


def test_otel_traces_endpoint_as_is_and_signal_otlp_endpoint_wins(gateway_factory):
    with OTLPCapture() as own, OTLPCapture() as shared, OTLPCapture() as traces:
        # The traces URL is used as it is: no /v1/traces added.
        gw1 = gateway_factory.start(env=without_otlp({
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": traces.url + "/custom/traces",
            "OTEL_EXPORTER_OTLP_ENDPOINT": shared.url,
        }))
        # SIGNAL_OTLP_ENDPOINT is this service's own setting: it wins.
        gw2 = gateway_factory.start(env={
            "SIGNAL_OTLP_ENDPOINT": own.url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": shared.url,
        })
        # OTEL_SDK_DISABLED switches the OTEL_* endpoints off.
        gw3 = gateway_factory.start(env=without_otlp({
            "OTEL_EXPORTER_OTLP_ENDPOINT": shared.url,
            "OTEL_SDK_DISABLED": "true",
        }))
        for gw in (gw1, gw2, gw3):
            traffic_for_spans(gw)
        traces.wait_for(has_span(gw1.node_id, "room.join"), timeout=10, what="gw1's spans")
        own.wait_for(has_span(gw2.node_id, "room.join"), timeout=10, what="gw2's spans")
        # gw3 records nothing: no collector, nothing counted either.
        assert value(metrics(gw3), "trace_spans_dropped_total") == 0
        assert {r["path"] for r in traces.snapshot()} == {"/custom/traces"}
        assert {r["path"] for r in own.snapshot()} == {"/v1/traces"}
        assert {s.node for s in traces.spans()} == {gw1.node_id}
        assert {s.node for s in own.spans()} == {gw2.node_id}
        assert shared.snapshot() == [], "an OTEL_* endpoint was used though another one wins"


def test_https_collector_with_an_untrusted_certificate(gateway_factory, tls_files):
    """No CA bundle given: the system's CAs do not know the test certificate,
    the handshake fails, spans are dropped and counted, the log says why."""
    cert, key = tls_files()
    with TLSCapture(cert, key) as cap:
        gw = gateway_factory.start(env={"SIGNAL_OTLP_ENDPOINT": cap.url})
        traffic_for_spans(gw)
        h.wait_until(lambda: value(metrics(gw), "trace_spans_dropped_total") >= 1, 10,
                     what="trace_spans_dropped_total >= 1")
        assert cap.snapshot() == []
    failed = [o for o in log_lines(gw) if o.get("event") == "trace.export_failed"]
    assert failed, "no trace.export_failed line"
    assert failed[0]["reason"] == "tls", failed[0]
    assert "certificate verify failed" in failed[0].get("error", ""), failed[0]


@pytest.mark.parametrize("env, needle", [
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' is not supported"),
    ({"OTEL_EXPORTER_OTLP_HEADERS": "api-key=TOPSECRET%0a"}, "OTEL_EXPORTER_OTLP_HEADERS"),
    ({"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"}, "cannot load the CA bundle"),
])
def test_otel_settings_refused_at_start(gateway_factory, env, needle):
    full = without_otlp(dict(env, OTEL_EXPORTER_OTLP_ENDPOINT=f"https://{h.HOST}:{h.free_port()}"))
    proc, log_path, _ = gateway_factory.spawn(env=full)
    assert proc.wait(timeout=20) in (1, 2)
    out = log_path.read_text(errors="replace")
    assert needle in out, out
    assert "TOPSECRET" not in out


# --------------------------------------------------------------------------
# logs


def log_lines(gw):
    out = []
    for ln in gw.log_text().splitlines():
        if not ln.strip():
            continue
        try:
            obj = json.loads(ln)
        except ValueError:
            raise AssertionError(f"{gw.name}: log line is not JSON: {ln!r}")
        assert isinstance(obj, dict), ln
        out.append(obj)
    return out


def user_hash(key, sub):
    """The documented user hash (docs/operating.md): HMAC-SHA256 keyed with
    SIGNAL_LOG_HASH_KEY, first 8 bytes in hex."""
    return hmac.new(key.encode(), sub.encode(), hashlib.sha256).hexdigest()[:16]


@pytest.mark.async_timeout(30)
async def test_full_call_log_fields_and_stable_user_hash(gateway_factory):
    key = "obs-log-hash-key-" + uuid.uuid4().hex
    gw1, gw2 = gateway_factory(2, env={"SIGNAL_LOG_HASH_KEY": key})
    sub_a, sub_b = uniq("logs-alice"), uniq("logs-bob")
    room, pa, pb = new_room(), new_peer(), new_peer()
    seen = {}

    async with Clients() as c:
        a = await c.connect(gw1.ws_url, tok(sub_a), name="a")
        a2 = await c.connect(gw2.ws_url, tok(sub_a), name="a2")  # same user, other node
        b = await c.connect(gw2.ws_url, tok(sub_b), name="b")
        await a.join(room, pa, cid="j-a")
        await b.join(room, pb, cid="j-b")
        await a.send(h.offer(room, pa, pb, cid="o-1"))
        await b.recv_type("relay")
        await b.send(h.answer(room, pb, pa))  # no correlationId: the server makes one
        seen["answer_cid"] = (await a.recv_type("relay"))["correlationId"]
        for i in range(2):
            await a.send(h.candidate(room, pa, pb, h.ice(i), cid=f"c-{i}"))
            await b.recv_type("relay")
        await b.leave(room, pb, cid="l-b")
        await a2.close()
        await a.close()
        await b.close()
    assert gw1.stop() == 0 and gw2.stop() == 0
    logs = {gw.node_id: log_lines(gw) for gw in (gw1, gw2)}
    now = datetime.datetime.now(datetime.timezone.utc)
    for node, lines in logs.items():
        for o in lines:
            for f in ("ts", "level", "event", "node"):
                assert f in o, f"{node}: line without {f}: {o}"
            assert TS.match(o["ts"]), f"ts not RFC 3339 UTC with milliseconds: {o}"
            ts = datetime.datetime.strptime(o["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
            assert abs((now - ts).total_seconds()) < 300, o
            assert o["level"] in LEVELS, o
            assert o["node"] == node, o

    def events(node, name, **where):
        return [o for o in logs[node] if o["event"] == name and all(o.get(k) == v for k, v in where.items())]

    n1, n2 = gw1.node_id, gw2.node_id
    ha, hb = user_hash(key, sub_a), user_hash(key, sub_b)
    # ws.connect / ws.auth_success: a connection id each, the user as the keyed hash.
    for node, n in ((n1, 1), (n2, 2)):
        assert len(events(node, "ws.connect")) == n
        assert all(isinstance(o.get("conn"), int) for o in events(node, "ws.connect"))
        for o in events(node, "ws.auth_success"):
            assert HEX16.match(o.get("user", "")), o
    conn_a = one_line(events(n1, "ws.auth_success", user=ha), "ws.auth_success of a")["conn"]
    conn_b = one_line(events(n2, "ws.auth_success", user=hb), "ws.auth_success of b")["conn"]
    # Same key on both nodes: the same user gets the same hash on both.
    one_line(events(n2, "ws.auth_success", user=ha), "ws.auth_success of a2 on node 2 with a's hash")

    j = one_line(events(n1, "room.join", peer=pa), "room.join of a")
    assert (j["conn"], j["room"], j["user"], j.get("correlationId")) == (conn_a, room, ha, "j-a"), j
    j = one_line(events(n2, "room.join", peer=pb), "room.join of b")
    assert (j["conn"], j["room"], j["user"], j.get("correlationId")) == (conn_b, room, hb, "j-b"), j

    o = one_line(events(n1, "relay.offer"), "relay.offer")
    assert (o["conn"], o["room"], o["from"], o["to"], o["correlationId"]) == (conn_a, room, pa, pb, "o-1"), o
    o = one_line(events(n2, "relay.answer"), "relay.answer")
    assert (o["conn"], o["room"], o["from"], o["to"]) == (conn_b, room, pb, pa), o
    assert SERVER_CID.match(o["correlationId"]) and o["correlationId"] == seen["answer_cid"], o
    cands = events(n1, "relay.candidate")
    assert [(c["conn"], c["room"], c["from"], c["to"], c["correlationId"]) for c in cands] == \
        [(conn_a, room, pa, pb, "c-0"), (conn_a, room, pa, pb, "c-1")], cands

    lv = one_line(events(n2, "room.leave", peer=pb), "room.leave of b")
    assert (lv["conn"], lv["room"], lv["reason"], lv.get("correlationId")) == (conn_b, room, "leave", "l-b"), lv
    lv = one_line(events(n1, "room.leave", peer=pa), "room.leave of a")
    assert (lv["conn"], lv["room"], lv["reason"]) == (conn_a, room, "disconnect"), lv

    for node, conn in ((n1, conn_a), (n2, conn_b)):
        cl = one_line(events(node, "ws.close", conn=conn), f"ws.close of conn {conn} on {node}")
        assert cl.get("code") == 1000, cl
        assert isinstance(cl.get("duration_ms"), int) and cl["duration_ms"] >= 0, cl
    # Neither the raw sub nor anything but the hash in a user field.
    for lines in logs.values():
        for o in lines:
            if "user" in o:
                assert o["user"] in (ha, hb), o


def one_line(found, what):
    assert len(found) == 1, f"expected one {what}, found {found}"
    return found[0]


def test_auth_failure_log_fields(gateway):
    assert handshake(gateway, token=make_token(uniq("logs-exp"), rooms=["*"], exp_in=-300)).status == 401
    assert gateway.stop() == 0
    fails = [o for o in log_lines(gateway) if o["event"] == "ws.auth_failure"]
    assert len(fails) == 1 and fails[0].get("reason") == "expired", fails
    assert isinstance(fails[0].get("conn"), int) and fails[0]["level"] in LEVELS, fails


@pytest.mark.async_timeout(30)
async def test_log_level_warn_suppresses_info(gateway_factory):
    closed = h.free_port()
    gw = gateway_factory.start(env={"SIGNAL_LOG_LEVEL": "warn",
                                    "SIGNAL_OTLP_ENDPOINT": f"http://{h.HOST}:{closed}"})

    async with Clients() as c:
        a = await c.connect(gw.ws_url, tok(uniq("warn-a")), name="a")
        b = await c.connect(gw.ws_url, tok(uniq("warn-b")), name="b")
        await call_traffic(a, b, new_room(), new_peer(), new_peer())
    # A warn line does get through: the failed span export.
    h.wait_until(lambda: "trace.export_failed" in gw.log_text(), 8, what="a trace.export_failed line")
    assert gw.stop() == 0
    lines = log_lines(gw)
    below = [o for o in lines if o["level"] not in ("warn", "error")]
    assert not below, f"SIGNAL_LOG_LEVEL=warn let these through: {below}"
    assert any(o["event"] == "trace.export_failed" and o["level"] == "warn" for o in lines), lines


# --------------------------------------------------------------------------
# health


def test_readyz_follows_redis_and_healthz_stays_up(redis, gateway_factory):
    gw = gateway_factory.start()
    health = gw.admin_url + "/healthz"
    ready = gw.admin_url + "/readyz"
    assert h.http_status(health)[0] == 200
    assert h.http_status(ready)[0] == 200
    port = redis.port

    def readyz_is(code):
        def check():
            assert h.http_status(health)[0] == 200, "/healthz failed while Redis was away"
            st, body = h.http_status(ready)
            return (st, body) if st == code else None
        return check

    redis.stop()  # SIGTERM to the redis-server this test started
    st, body = h.wait_until(readyz_is(503), 8, what="/readyz 503 with Redis stopped")
    state = json.loads(body)
    assert state["ready"] is False and state["redis"] is False, state
    assert value(metrics(gw), "redis_connected") == 0
    for _ in range(5):  # and it stays so
        assert h.http_status(health)[0] == 200
        assert h.http_status(ready)[0] == 503
        time.sleep(0.1)

    # A new redis-server on the same port; the fixture stops it at the end.
    logf = open(redis.tmp_path / f"redis-{port}-again.log", "wb")
    redis.proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", h.HOST, "--save", "", "--appendonly", "no",
         "--daemonize", "no", "--protected-mode", "no", "--dir", str(redis.tmp_path)],
        stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    logf.close()
    st, body = h.wait_until(readyz_is(200), 15, what="/readyz 200 with Redis back")
    state = json.loads(body)
    assert state["ready"] is True and state["redis"] is True, state
    m = metrics(gw)
    assert value(m, "redis_connected") == 1
    assert value(m, "redis_reconnects_total") >= 1
    events = [o["event"] for o in log_lines(gw)]
    assert "redis.disconnect" in events and events.count("redis.connect") >= 2, events


# --------------------------------------------------------------------------
# deploy/: alerting rules and dashboard

RULES = h.REPO / "deploy" / "prometheus-rules.yml"
DASHBOARD = h.REPO / "deploy" / "grafana-dashboard.json"


def _series(name, values, **labels):
    labels = dict({"job": "signal-gateway", "instance": "a:9090"}, **labels)
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _firing(eval_time, expected, by="alertname"):
    return {"expr": f'count by ({by}) (ALERTS{{alertstate="firing"}})', "eval_time": eval_time,
            "exp_samples": [{"labels": "{" + ",".join(f'{k}="{v}"' for k, v in lbl.items()) + "}", "value": n}
                            for lbl, n in expected]}


def _histogram(name, values_by_le, with_count=False):
    """A histogram's bucket series (le -> values), and its _count (the +Inf
    bucket's values) when with_count."""
    out = [_series(f"{name}_bucket", values, le=le) for le, values in values_by_le.items()]
    return out + ([_series(f"{name}_count", values_by_le["+Inf"])] if with_count else [])


def _serving(steps):
    """An instance up, connected to Redis and not draining, for `steps` samples."""
    return [_series("up", f"1x{steps}"), _series("redis_connected", f"1x{steps}"),
            _series("draining", f"0x{steps}")]


def _alert_scenarios():
    healthy = _serving(40) + [
        _series("delivery_probe_age_ms", "400x40"), _series("redis_reconnects_total", "0x40"),
        _series("messages_total", "0+600x40", type="candidate"),
        _series("errors_total", "0+6x40", code="bad_request"),
        _series("handshakes_total", "0+120x40", outcome="101"),
        _series("auth_failures_total", "0+3x40", reason="expired"),
        *_histogram("relay_latency_ms", {"1": "0+590x40", "5": "0+600x40", "+Inf": "0+600x40"}, with_count=True),
        _series("ratelimit_drops_total", "0+6x40", scope="candidate"),
        _series("tls_certificate_expiry_timestamp_seconds", "10000000x40"),  # 115 days away
    ]
    down = [
        _series("up", "1 1 0x10"), _series("up", "1x12", instance="b:9090"),
        _series("redis_connected", "1 0x11", instance="b:9090"), _series("draining", "0x12", instance="b:9090"),
        _series("delivery_probe_age_ms", "0+60000x12", instance="b:9090"),
    ]
    trouble = _serving(40) + [
        _series("delivery_probe_age_ms", "0+60000x40"),  # a wedged subscription
        _series("messages_total", "0+600x40", type="offer"),
        _series("errors_total", "0+60x40", code="bad_request"),
        _series("errors_total", "0+30x40", code="internal"),
        _series("handshakes_total", "0+60x40", outcome="101"),
        _series("handshakes_total", "0+60x40", outcome="401"),
        _series("auth_failures_total", "0+60x40", reason="bad_signature"),
        *_histogram("relay_latency_ms", {"100": "0+300x40", "500": "0+500x40", "2500": "0+600x40",
                                         "+Inf": "0+600x40"}, with_count=True),
        _series("ratelimit_drops_total", "0+600x40", scope="peer"),
        _series("output_buffer_closes_total", "0+2x40"),
        _series("trace_spans_dropped_total", "0+100x40"),
        _series("tls_certificate_expiry_timestamp_seconds", "864000x40"),  # 10 days away
    ]
    redis = [
        _series("up", "1x20"), _series("draining", "0x20"), _series("delivery_probe_age_ms", "500x20"),
        _series("redis_connected", "1 0 1 0 1 0 1 0 1x12"),
        _series("redis_reconnects_total", "0 1 1 2 2 3 3 4 4x12"),
        *_histogram("redis_command_latency_ms", {"25": "0+100x20", "100": "0+1000x20", "+Inf": "0+1000x20"}),
        _series("caps_tripped_total", "0 0 0 5x17", cap="max_connections"),
        _series("log_lines_dropped_total", "0 0 0 0 10x16"),
    ]
    a = "SignalGateway"
    return [
        {"interval": "1m", "input_series": healthy, "promql_expr_test": [_firing("40m", [])]},
        {"interval": "1m", "input_series": down, "promql_expr_test": [_firing("10m", [
            ({"alertname": a + "Down", "instance": "a:9090"}, 1),
            ({"alertname": a + "RedisDisconnected", "instance": "b:9090"}, 1),
            ({"alertname": a + "NotReady", "instance": "b:9090"}, 1)], by="alertname, instance")]},
        {"interval": "1m", "input_series": [_series("up", "0x10")], "promql_expr_test": [_firing("5m", [
            ({"alertname": a + "Down"}, 1), ({"alertname": a + "AllDown"}, 1)])]},
        {"interval": "1m", "input_series": trouble, "promql_expr_test": [_firing("40m", [
            ({"alertname": a + n}, 1) for n in (
                "NotReady", "DeliveryProbeStale", "RelayLatencyHigh", "RelayLatencyCritical", "ServerErrors",
                "ErrorRateHigh", "AuthFailuresSpike", "RateLimitDropsHigh", "OutputBufferCloses",
                "TraceSpansDropped", "TLSCertificateExpiring")])]},
        {"interval": "1m", "input_series": redis, "promql_expr_test": [_firing("12m", [
            ({"alertname": a + n}, 1) for n in (
                "RedisFlapping", "RedisLatencyHigh", "ConnectionCapReached", "LogLinesDropped")])]},
    ]


def test_alert_rules_are_valid_and_fire_on_the_right_series(tmp_path):
    rc, out = promtool("check", "rules", str(RULES))
    assert rc == 0, out
    # promtool's rule unit tests: YAML, written as JSON (a subset of it).
    spec = {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": _alert_scenarios()}
    (tmp_path / "rules_test.yml").write_text(json.dumps(spec, indent=1))
    rc, out = promtool("test", "rules", str(tmp_path / "rules_test.yml"))
    assert rc == 0, out


def _exported_names(text):
    """Sample names a gateway exposes, with histogram series and families
    that have no sample yet (a counter family before its first label)."""
    names = set()
    for ln in text.splitlines():
        if ln.startswith("# TYPE "):
            _, _, name, typ = ln.split()[:4]
            names.add(name)
            if typ == "histogram":
                names |= {name + "_bucket", name + "_sum", name + "_count"}
        elif ln and not ln.startswith("#"):
            names.add(re.split(r"[{\s]", ln, 1)[0])
    return names


def test_dashboard_and_rules_use_exported_metrics(gateway_factory, tmp_path):
    # A wss:// node: it exports every metric (the certificate's expiry too).
    gateway = gateway_factory.start(tls=True)
    dash = json.loads(DASHBOARD.read_text())
    assert dash.get("title") and isinstance(dash.get("panels"), list)

    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))
    panels = list(walk(dash["panels"]))
    exprs = [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for p in panels:
        if p.get("type") != "row":
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
    alltext = "\n".join(e for _, e in exprs)
    for needle in ("ws_connections_gauge", "room_members_gauge", 'type="join"',
                   'sum by (type) (rate(messages_total', "histogram_quantile(0.5, sum by (le) (rate(relay_latency_ms_bucket",
                   "histogram_quantile(0.99, sum by (le) (rate(relay_latency_ms_bucket",
                   "sum by (scope) (rate(ratelimit_drops_total", "sum by (code) (rate(errors_total",
                   "sum by (reason) (rate(auth_failures_total", "redis_command_latency_ms_bucket",
                   "redis_reconnects_total", "delivery_probe_age_ms", "count by (version, commit) (build_info",
                   "tls_certificate_expiry_timestamp_seconds"):
        assert needle in alltext, f"no dashboard panel queries {needle!r}"

    # Every query parses: promtool checks them as recording rules.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e.replace("$__rate_interval", "5m")
         .replace("$job", "signal-gateway").replace("$instance", ".*")} for i, (_, e) in enumerate(exprs)]}]}
    (tmp_path / "dashboard_rules.yml").write_text(json.dumps(rules))
    rc, out = promtool("check", "rules", str(tmp_path / "dashboard_rules.yml"))
    assert rc == 0, out

    # Every metric the dashboard and the alerts select is one the gateway exports.
    exported = _exported_names(scrape(gateway)) | {"up", "ALERTS"}
    selector = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")
    for where, text in [("dashboard", alltext), ("deploy/prometheus-rules.yml", RULES.read_text())]:
        used = set(selector.findall(text))
        unknown = sorted(used - exported)
        assert not unknown, f"{where} selects metrics /metrics does not have: {unknown}"
