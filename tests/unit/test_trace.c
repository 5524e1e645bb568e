/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for gateway/trace.c: W3C traceparent parse/format, span ids,
 * and the OTLP/HTTP JSON exporter against collectors run inside the test on
 * the same event base (loopback only):
 *   - an evhttp capture server that records each POST and answers a chosen
 *     status (or never answers);
 *   - a raw TCP server that answers each request with scripted bytes, to
 *     check the response reader (interim 100, chunked, garbage, keep-alive);
 *   - a closed port (collector down).
 * Loops run until a condition holds; the deadlines are safety nets, never
 * assertions on timing. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <event2/bufferevent_ssl.h>
#include <json-c/json.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sg/log.h"
#include "sg/trace.h"
#include "sg/util.h"
#include "sg/version.h"

#define TP_OK "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#define SAFETY_MS 15000
#define MAXREQ 16

/* ---- helpers ------------------------------------------------------------- */

static bool parse(const char *s, sg_span_ctx *c) { return sg_traceparent_parse(s, strlen(s), c); }

static void hex_of(char *out, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", p[i]);
}

static bool is_lower_hex(const char *s, size_t n)
{
    if (strlen(s) != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

static bool is_decimal(const char *s)
{
    if (!*s)
        return false;
    if (*s == '-')
        s++;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return false;
    return true;
}

static json_object *get(json_object *o, const char *key)
{
    json_object *v = NULL;
    assert_true(json_object_object_get_ex(o, key, &v));
    return v;
}

static const char *get_str(json_object *o, const char *key)
{
    json_object *v = get(o, key);
    assert_true(json_object_is_type(v, json_type_string));
    return json_object_get_string(v);
}

/* The value object of the attribute named key in an OTLP attribute list. */
static json_object *attr(json_object *list, const char *key)
{
    assert_true(json_object_is_type(list, json_type_array));
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        json_object *a = json_object_array_get_idx(list, i);
        if (!strcmp(get_str(a, "key"), key))
            return get(a, "value");
    }
    return NULL;
}

static void noop_cb(evutil_socket_t fd, short what, void *arg) {}

/* Runs the loop until cond(arg) holds (or the safety deadline). */
static bool run_until(struct event_base *base, bool (*cond)(void *), void *arg)
{
    struct event *tick = event_new(base, -1, EV_PERSIST, noop_cb, NULL);
    struct timeval tv = {0, 10000};
    event_add(tick, &tv);
    uint64_t end = sg_now_mono_ms() + SAFETY_MS;
    while (!cond(arg) && sg_now_mono_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(tick);
    return cond(arg);
}

/* Runs the loop for about ms milliseconds. */
static void run_for(struct event_base *base, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

static int bound_port(evutil_socket_t fd)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    return ntohs(sa.sin_port);
}

/* A port on 127.0.0.1 that nothing listens on. */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    int port = bound_port(fd);
    close(fd);
    return port;
}

static void record_n(sg_tracer *t, int n)
{
    sg_span_ctx root, c;
    sg_span_start(&root, NULL);
    sg_span_attr a[] = {{"i", NULL, 0}, {"room", "r1", 0}};
    for (int i = 0; i < n; i++) {
        sg_span_start(&c, &root);
        a[0].num = i;
        sg_tracer_record(t, "relay.offer", SG_SPAN_INTERNAL, &c, &root, 1000, 2000, a, 2, NULL);
    }
}

/* ---- evhttp capture collector -------------------------------------------- */

typedef struct capture {
    struct event_base *base;
    struct evhttp *http;
    int port;
    int status; /* the answer; 0 = never answer */
    int nreq;
    json_object *body[MAXREQ];
    char uri[MAXREQ][128];
    char ctype[MAXREQ][64];
    char auth[MAXREQ][128];  /* the Authorization header, "" when absent */
    char tenant[MAXREQ][64]; /* X-Tenant */
    char host[MAXREQ][128];  /* Host */
    char agent[MAXREQ][64];  /* User-Agent */
    int peer_port[MAXREQ];
    struct evhttp_request *held[MAXREQ];
    int nheld;
} capture;

static void on_capture(struct evhttp_request *req, void *arg)
{
    capture *cap = arg;
    int i = cap->nreq;
    assert_true(i < MAXREQ);
    assert_int_equal(evhttp_request_get_command(req), EVHTTP_REQ_POST);
    snprintf(cap->uri[i], sizeof cap->uri[i], "%s", evhttp_request_get_uri(req));
    const char *ct = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
    snprintf(cap->ctype[i], sizeof cap->ctype[i], "%s", ct ? ct : "");
    struct evkeyvalq *hd = evhttp_request_get_input_headers(req);
    const char *v = evhttp_find_header(hd, "Authorization");
    snprintf(cap->auth[i], sizeof cap->auth[i], "%s", v ? v : "");
    v = evhttp_find_header(hd, "X-Tenant");
    snprintf(cap->tenant[i], sizeof cap->tenant[i], "%s", v ? v : "");
    v = evhttp_find_header(hd, "Host");
    snprintf(cap->host[i], sizeof cap->host[i], "%s", v ? v : "");
    v = evhttp_find_header(hd, "User-Agent");
    snprintf(cap->agent[i], sizeof cap->agent[i], "%s", v ? v : "");
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    char *text = malloc(n + 1);
    evbuffer_remove(in, text, n);
    text[n] = '\0';
    cap->body[i] = json_tokener_parse(text);
    assert_non_null(cap->body[i]);
    free(text);
    char *addr = NULL;
    ev_uint16_t port = 0;
    evhttp_connection_get_peer(evhttp_request_get_connection(req), &addr, &port);
    cap->peer_port[i] = port;
    cap->nreq++;
    if (cap->status == 0) {
        cap->held[cap->nheld++] = req;
        return;
    }
    struct evbuffer *out = evbuffer_new();
    evbuffer_add_printf(out, "{}");
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, cap->status, cap->status == 200 ? "OK" : "Error", out);
    evbuffer_free(out);
}

static void capture_start(capture *cap, struct event_base *base, int status)
{
    memset(cap, 0, sizeof *cap);
    cap->base = base;
    cap->status = status;
    cap->http = evhttp_new(base);
    struct evhttp_bound_socket *h = evhttp_bind_socket_with_handle(cap->http, "127.0.0.1", 0);
    assert_non_null(h);
    cap->port = bound_port(evhttp_bound_socket_get_fd(h));
    evhttp_set_gencb(cap->http, on_capture, cap);
}

/* Call after the tracer is freed. */
static void capture_stop(capture *cap)
{
    for (int i = 0; i < cap->nheld; i++)
        if (!evhttp_request_get_connection(cap->held[i]))
            evhttp_request_free(cap->held[i]); /* orphaned: the client went away */
    evhttp_free(cap->http);
    for (int i = 0; i < cap->nreq; i++)
        json_object_put(cap->body[i]);
}

static bool cap_has_1(void *arg) { return ((capture *)arg)->nreq >= 1; }

static json_object *spans_of(json_object *body)
{
    json_object *rs = get(body, "resourceSpans");
    assert_int_equal(json_object_array_length(rs), 1);
    json_object *ss = get(json_object_array_get_idx(rs, 0), "scopeSpans");
    assert_int_equal(json_object_array_length(ss), 1);
    return get(json_object_array_get_idx(ss, 0), "spans");
}

typedef struct fixture {
    struct event_base *base;
    sg_log *log;
    char endpoint[128];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    f->base = event_base_new();
    /* Error level: the warn lines would only add noise to the test output;
     * test_collector_down turns them on to run that path. */
    f->log = sg_log_new("test-node", SG_LOG_ERROR, "k");
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    sg_log_free(f->log);
    event_base_free(f->base);
    free(f);
    return 0;
}

static sg_tracer *new_tracer(fixture *f, const char *url, const char *service, const char *node,
                             const char **err)
{
    sg_tracer_opts o = {.url = url, .service_name = service, .node_id = node};
    return sg_tracer_new(f->base, &o, f->log, err);
}

/* fmt: the collector's base URL with a %d for the port; spans go to /v1/traces. */
static sg_tracer *tracer_to(fixture *f, const char *fmt, int port)
{
    snprintf(f->endpoint, sizeof f->endpoint, fmt, port);
    strcat(f->endpoint, "/v1/traces");
    const char *err = "unset";
    sg_tracer *t = new_tracer(f, f->endpoint, NULL, "test-node", &err);
    assert_non_null(t);
    assert_null(err);
    return t;
}

/* ---- traceparent --------------------------------------------------------- */

static void test_traceparent_roundtrip(void **state)
{
    sg_span_ctx c;
    assert_true(parse(TP_OK, &c));
    assert_true(c.valid);
    assert_true(c.sampled);
    static const uint8_t tid[16] = {0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6,
                                    0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36};
    static const uint8_t sid[8] = {0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7};
    assert_memory_equal(c.trace_id, tid, 16);
    assert_memory_equal(c.span_id, sid, 8);
    char out[SG_TRACEPARENT_LEN + 1];
    memset(out, 'x', sizeof out);
    sg_traceparent_format(&c, out);
    assert_string_equal(out, TP_OK);

    assert_true(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", &c));
    assert_false(c.sampled);
    sg_traceparent_format(&c, out);
    assert_string_equal(out, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");

    /* Unknown flag bits are accepted; only sampled is carried on. */
    assert_true(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09", &c));
    assert_true(c.sampled);
    sg_traceparent_format(&c, out);
    assert_string_equal(out, TP_OK);
    assert_true(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe", &c));
    assert_false(c.sampled);

    /* A later version is read as 00 is, with optional extra fields. */
    assert_true(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", &c));
    assert_true(parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever", &c));
    sg_traceparent_format(&c, out);
    assert_string_equal(out, TP_OK);

    /* Only n bytes are read: a longer buffer with the header at its start. */
    assert_true(sg_traceparent_parse(TP_OK "trailing", SG_TRACEPARENT_LEN, &c));

    /* Random contexts survive format + parse. */
    for (int i = 0; i < 100; i++) {
        sg_span_ctx r, back;
        sg_span_start(&r, NULL);
        r.sampled = i & 1;
        sg_traceparent_format(&r, out);
        assert_int_equal(strlen(out), SG_TRACEPARENT_LEN);
        assert_true(parse(out, &back));
        assert_memory_equal(back.trace_id, r.trace_id, 16);
        assert_memory_equal(back.span_id, r.span_id, 8);
        assert_int_equal(back.sampled, r.sampled);
    }
}

static void test_traceparent_rejects(void **state)
{
    static const char *bad[] = {
        "",
        "00",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",    /* 54 */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-010",  /* 56 */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",  /* v00: nothing after */
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",    /* short trace id */
        "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01",  /* long trace id */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",   /* uppercase trace */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",   /* uppercase span */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",   /* uppercase flags */
        "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   /* uppercase version */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   /* version ff */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", /* version ff, longer */
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",   /* zero trace */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",   /* zero span */
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   /* separators */
        "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7 01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902g7-01",   /* non-hex */
        "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  /* whitespace */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  /* later version, no dash */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sg_span_ctx c;
        memset(&c, 0xab, sizeof c);
        if (parse(bad[i], &c))
            fail_msg("accepted: '%s'", bad[i]);
        assert_false(c.valid);
    }
    /* An embedded NUL is not a hex digit. */
    char withnul[] = TP_OK;
    withnul[10] = '\0';
    sg_span_ctx c;
    assert_false(sg_traceparent_parse(withnul, SG_TRACEPARENT_LEN, &c));
    assert_false(sg_traceparent_parse(NULL, 0, &c));
    assert_false(sg_traceparent_parse(TP_OK, SG_TRACEPARENT_LEN, NULL));
}

static void test_span_start(void **state)
{
    static const uint8_t zero[16];
    sg_span_ctx root, root2, child, grand;
    sg_span_start(&root, NULL);
    assert_true(root.valid);
    assert_true(root.sampled);
    assert_memory_not_equal(root.trace_id, zero, 16);
    assert_memory_not_equal(root.span_id, zero, 8);
    sg_span_start(&root2, NULL);
    assert_memory_not_equal(root.trace_id, root2.trace_id, 16);
    assert_memory_not_equal(root.span_id, root2.span_id, 8);

    sg_span_start(&child, &root);
    assert_true(child.valid);
    assert_memory_equal(child.trace_id, root.trace_id, 16);
    assert_memory_not_equal(child.span_id, root.span_id, 8);
    assert_memory_not_equal(child.span_id, zero, 8);
    sg_span_start(&grand, &child);
    assert_memory_equal(grand.trace_id, root.trace_id, 16);
    assert_memory_not_equal(grand.span_id, child.span_id, 8);

    /* An invalid parent starts a new trace. */
    sg_span_ctx invalid;
    memcpy(&invalid, &root, sizeof invalid);
    invalid.valid = false;
    sg_span_start(&child, &invalid);
    assert_true(child.valid);
    assert_memory_not_equal(child.trace_id, root.trace_id, 16);

    /* The sampled flag is inherited (a client that did not sample). */
    sg_span_ctx parent;
    assert_true(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", &parent));
    sg_span_start(&child, &parent);
    assert_false(child.sampled);
    assert_memory_equal(child.trace_id, parent.trace_id, 16);

    /* In place: the context becomes its own child. */
    sg_span_ctx self = root;
    sg_span_start(&self, &self);
    assert_memory_equal(self.trace_id, root.trace_id, 16);
    assert_memory_not_equal(self.span_id, root.span_id, 8);
}

/* ---- tracer creation ----------------------------------------------------- */

static void test_tracer_new_endpoints(void **state)
{
    fixture *f = *state;
    const char *err = "unset";
    assert_null(new_tracer(f, NULL, NULL, "n", &err));
    assert_null(err);
    err = "unset";
    assert_null(new_tracer(f, "", NULL, "n", &err));
    assert_null(err);
    err = "unset";
    assert_null(sg_tracer_new(f->base, NULL, f->log, &err));
    assert_null(err);

    static const char *bad[] = {
        "ftp://127.0.0.1:4318",   "127.0.0.1:4318",        "http://",
        "http://:4318",           "http://127.0.0.1:",     "http://127.0.0.1:0",
        "http://127.0.0.1:65536", "http://127.0.0.1:43a8", "http://u:p@127.0.0.1:4318",
        "http://[::1:4318",       "http://[]:4318",        "http://[::1]x:4318",
        "http://127.0.0.1:4318/a b", "http://127.0.0.1:4318/?q=1", "http://127.0.0.1:1:2",
        "https://", "https://127.0.0.1:99999/v1/traces", "http://127.0.0.1:4318/v1/traces#x",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err = NULL;
        sg_tracer *t = new_tracer(f, bad[i], NULL, "n", &err);
        if (t)
            fail_msg("accepted endpoint '%s'", bad[i]);
        assert_non_null(err);
    }
    /* A name is looked up when spans leave, not here: one that does not
     * resolve (yet) is accepted. */
    static const char *good[] = {"http://127.0.0.1:4318/v1/traces", "http://127.0.0.1:4318",
                                 "http://[::1]:4318/v1/traces",     "HTTP://127.0.0.1/otlp/v1/traces",
                                 "http://localhost:4318/v1/traces", "https://127.0.0.1:4318/v1/traces",
                                 "HTTPS://collector.example/v1/traces", "http://host.invalid:4318/v1/traces"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        err = "unset";
        sg_tracer *t = new_tracer(f, good[i], "svc", "n", &err);
        if (!t)
            fail_msg("refused endpoint '%s': %s", good[i], err);
        assert_null(err);
        assert_int_equal(sg_tracer_stats_get(t)->exported, 0);
        sg_tracer_free(t, 0);
    }
    /* An https CA bundle that cannot be read is a startup error. */
    sg_tracer_opts o = {.url = "https://127.0.0.1:4318/v1/traces", .ca_file = "/nonexistent/ca.pem"};
    err = NULL;
    assert_null(sg_tracer_new(f->base, &o, f->log, &err));
    assert_non_null(err);
    assert_non_null(strstr(err, "CA"));
}

static void test_null_tracer(void **state)
{
    sg_span_ctx c;
    sg_span_start(&c, NULL);
    sg_tracer_record(NULL, "x", SG_SPAN_SERVER, &c, NULL, 1, 2, NULL, 0, NULL);
    const sg_tracer_stats *s = sg_tracer_stats_get(NULL);
    assert_non_null(s);
    assert_int_equal(s->exported + s->dropped + s->batches_failed, 0);
    sg_tracer_free(NULL, 100);
}

/* ---- export -------------------------------------------------------------- */

static void test_export_end_to_end(void **state)
{
    fixture *f = *state;
    capture cap;
    capture_start(&cap, f->base, 200);
    sg_tracer *t = tracer_to(f, "http://127.0.0.1:%d", cap.port);

    /* Default timing: the batch leaves one second after its first span. */
    sg_span_ctx client, conn, join, relay;
    assert_true(parse(TP_OK, &client));
    sg_span_start(&conn, &client);
    sg_span_start(&join, &conn);
    sg_span_start(&relay, NULL);
    sg_span_attr cattrs[] = {{"conn.id", "c-17", 0}, {"ws.close_code", NULL, 1000},
                             {"neg", NULL, -7}, {NULL, "skipped", 0}};
    sg_tracer_record(t, "ws.connection", SG_SPAN_SERVER, &conn, &client, 1700000000123456,
                     1700000001123456, cattrs, 4, NULL);
    sg_span_attr jattrs[] = {{"room", "room-\"1\"\n", 0}};
    sg_tracer_record(t, "room.join", SG_SPAN_INTERNAL, &join, &conn, 1700000000200000,
                     1700000000200500, jattrs, 1, "room full: \"x\"");
    sg_tracer_record(t, "relay.offer", SG_SPAN_PRODUCER, &relay, NULL, 0, 5, NULL, 0, NULL);
    assert_int_equal(cap.nreq, 0); /* recording did no I/O */

    assert_true(run_until(f->base, cap_has_1, &cap));
    assert_int_equal(cap.nreq, 1);
    assert_string_equal(cap.uri[0], "/v1/traces");
    assert_string_equal(cap.ctype[0], "application/json");

    json_object *body = cap.body[0];
    json_object *rs0 = json_object_array_get_idx(get(body, "resourceSpans"), 0);
    json_object *rattrs = get(get(rs0, "resource"), "attributes");
    json_object *v = attr(rattrs, "service.name");
    assert_non_null(v);
    assert_string_equal(get_str(v, "stringValue"), "signal-gateway");
    v = attr(rattrs, "service.version");
    assert_non_null(v);
    assert_string_equal(get_str(v, "stringValue"), SG_VERSION);
    v = attr(rattrs, "service.instance.id");
    assert_non_null(v);
    assert_string_equal(get_str(v, "stringValue"), "test-node");
    v = attr(rattrs, "host.name");
    if (v)
        assert_true(strlen(get_str(v, "stringValue")) > 0);
    json_object *ss0 = json_object_array_get_idx(get(rs0, "scopeSpans"), 0);
    assert_string_equal(get_str(get(ss0, "scope"), "name"), "signal-gateway");
    assert_string_equal(get_str(get(ss0, "scope"), "version"), SG_VERSION);

    json_object *spans = spans_of(body);
    assert_int_equal(json_object_array_length(spans), 3);
    char hex[33];
    for (int i = 0; i < 3; i++) {
        json_object *s = json_object_array_get_idx(spans, i);
        assert_true(is_lower_hex(get_str(s, "traceId"), 32));
        assert_true(is_lower_hex(get_str(s, "spanId"), 16));
        assert_true(is_decimal(get_str(s, "startTimeUnixNano")));
        assert_true(is_decimal(get_str(s, "endTimeUnixNano")));
        assert_true(json_object_is_type(get(s, "kind"), json_type_int));
    }

    json_object *s0 = json_object_array_get_idx(spans, 0);
    hex_of(hex, client.trace_id, 16);
    assert_string_equal(get_str(s0, "traceId"), hex);
    assert_string_equal(get_str(s0, "traceId"), "4bf92f3577b34da6a3ce929d0e0e4736");
    hex_of(hex, conn.span_id, 8);
    assert_string_equal(get_str(s0, "spanId"), hex);
    assert_string_equal(get_str(s0, "parentSpanId"), "00f067aa0ba902b7");
    assert_string_equal(get_str(s0, "name"), "ws.connection");
    assert_int_equal(json_object_get_int(get(s0, "kind")), 2);
    assert_string_equal(get_str(s0, "startTimeUnixNano"), "1700000000123456000");
    assert_string_equal(get_str(s0, "endTimeUnixNano"), "1700000001123456000");
    json_object *a0 = get(s0, "attributes");
    assert_int_equal(json_object_array_length(a0), 3); /* the NULL key is skipped */
    assert_string_equal(get_str(attr(a0, "conn.id"), "stringValue"), "c-17");
    assert_string_equal(get_str(attr(a0, "ws.close_code"), "intValue"), "1000");
    assert_string_equal(get_str(attr(a0, "neg"), "intValue"), "-7");
    assert_int_equal(json_object_get_int(get(get(s0, "status"), "code")), 1);
    assert_false(json_object_object_get_ex(get(s0, "status"), "message", NULL));

    json_object *s1 = json_object_array_get_idx(spans, 1);
    assert_string_equal(get_str(s1, "traceId"), get_str(s0, "traceId"));
    assert_string_equal(get_str(s1, "parentSpanId"), get_str(s0, "spanId"));
    assert_string_equal(get_str(s1, "name"), "room.join");
    assert_int_equal(json_object_get_int(get(s1, "kind")), 1);
    json_object *room = attr(get(s1, "attributes"), "room");
    assert_string_equal(get_str(room, "stringValue"), "room-\"1\"\n");
    assert_int_equal(json_object_get_int(get(get(s1, "status"), "code")), 2);
    assert_string_equal(get_str(get(s1, "status"), "message"), "room full: \"x\"");

    json_object *s2 = json_object_array_get_idx(spans, 2);
    hex_of(hex, relay.trace_id, 16);
    assert_string_equal(get_str(s2, "traceId"), hex);
    assert_false(json_object_object_get_ex(s2, "parentSpanId", NULL)); /* root */
    assert_int_equal(json_object_get_int(get(s2, "kind")), 4);
    assert_string_equal(get_str(s2, "startTimeUnixNano"), "0");
    assert_string_equal(get_str(s2, "endTimeUnixNano"), "5000");
    assert_int_equal(json_object_array_length(get(s2, "attributes")), 0);

    /* The response is read before the stats count it. */
    const sg_tracer_stats *st = sg_tracer_stats_get(t);
    run_for(f->base, 50);
    assert_int_equal(st->exported, 3);
    assert_int_equal(st->dropped, 0);
    assert_int_equal(st->batches_failed, 0);

    sg_tracer_free(t, 0);
    capture_stop(&cap);
}

static bool exported_522(void *arg) { return sg_tracer_stats_get(arg)->exported >= 522; }

/* A full batch leaves at once, the rest after the delay, on the same kept-alive
 * connection, to the URL's path; the service name is the caller's. */
static void test_export_batches_keepalive(void **state)
{
    fixture *f = *state;
    capture cap;
    capture_start(&cap, f->base, 200);
    snprintf(f->endpoint, sizeof f->endpoint, "http://127.0.0.1:%d/otlp/v1/traces", cap.port);
    const char *err = NULL;
    sg_tracer *t = new_tracer(f, f->endpoint, "my-svc", "node-2", &err);
    assert_non_null(t);
    sg_tracer_set_timing(t, 200, 0);

    record_n(t, SG_TRACE_BATCH_MAX_SPANS + 10);
    assert_true(run_until(f->base, exported_522, t));
    assert_int_equal(cap.nreq, 2);
    assert_int_equal(json_object_array_length(spans_of(cap.body[0])), SG_TRACE_BATCH_MAX_SPANS);
    assert_int_equal(json_object_array_length(spans_of(cap.body[1])), 10);
    assert_string_equal(cap.uri[0], "/otlp/v1/traces");
    assert_string_equal(cap.uri[1], "/otlp/v1/traces");
    assert_int_equal(cap.peer_port[0], cap.peer_port[1]);
    json_object *rs0 = json_object_array_get_idx(get(cap.body[0], "resourceSpans"), 0);
    json_object *rattrs = get(get(rs0, "resource"), "attributes");
    assert_string_equal(get_str(attr(rattrs, "service.name"), "stringValue"), "my-svc");
    assert_string_equal(get_str(attr(rattrs, "service.instance.id"), "stringValue"), "node-2");
    /* Span order and content survive batching. */
    json_object *last = json_object_array_get_idx(spans_of(cap.body[1]), 9);
    assert_string_equal(get_str(attr(get(last, "attributes"), "i"), "intValue"), "521");

    const sg_tracer_stats *st = sg_tracer_stats_get(t);
    assert_int_equal(st->exported, 522);
    assert_int_equal(st->dropped, 0);
    assert_int_equal(st->batches_failed, 0);
    sg_tracer_free(t, 0);
    capture_stop(&cap);
}

static bool dropped_1200(void *arg) { return sg_tracer_stats_get(arg)->dropped >= 1200; }

static void test_collector_down(void **state)
{
    fixture *f = *state;
    sg_log_free(f->log);
    f->log = sg_log_new("test-node", SG_LOG_WARN, "k"); /* run the warn path */
    sg_tracer *t = tracer_to(f, "http://127.0.0.1:%d", closed_port());
    sg_tracer_set_timing(t, 50, 0);

    record_n(t, 1200); /* 512 + 512 + 176: three batches */
    const sg_tracer_stats *st = sg_tracer_stats_get(t);
    assert_int_equal(st->dropped, 0); /* nothing failed on the caller's path */
    assert_true(run_until(f->base, dropped_1200, t));
    assert_int_equal(st->dropped, 1200);
    assert_int_equal(st->batches_failed, 3);
    assert_int_equal(st->exported, 0);

    /* Still accepting spans afterwards; they fail the same way. */
    record_n(t, 5);
    assert_int_equal(st->dropped, 1200);
    sg_tracer_free(t, 0);
}

static bool failed_1(void *arg) { return sg_tracer_stats_get(arg)->batches_failed >= 1; }

static void test_collector_500(void **state)
{
    fixture *f = *state;
    capture cap;
    capture_start(&cap, f->base, 500);
    sg_tracer *t = tracer_to(f, "http://127.0.0.1:%d", cap.port);
    sg_tracer_set_timing(t, 20, 0);
    record_n(t, 7);
    assert_true(run_until(f->base, failed_1, t));
    const sg_tracer_stats *st = sg_tracer_stats_get(t);
    assert_int_equal(cap.nreq, 1);
    assert_int_equal(st->dropped, 7);
    assert_int_equal(st->batches_failed, 1);
    assert_int_equal(st->exported, 0);
    sg_tracer_free(t, 0);
    capture_stop(&cap);
}

/* A collector that reads the request and never answers: the request times
 * out and the batch is dropped. */
static void test_request_timeout(void **state)
{
    fixture *f = *state;
    capture cap;
    capture_start(&cap, f->base, 0);
    sg_tracer *t = tracer_to(f, "http://127.0.0.1:%d", cap.port);
    sg_tracer_set_timing(t, 20, 200);
    record_n(t, 5);
    assert_true(run_until(f->base, failed_1, t));
    const sg_tracer_stats *st = sg_tracer_stats_get(t);
    assert_int_equal(cap.nreq, 1);
    assert_int_equal(st->dropped, 5);
    assert_int_equal(st->batches_failed, 1);
    sg_tracer_free(t, 0);
    capture_stop(&cap);
}

/* While a request is in flight, spans queue up to the cap; beyond it they
 * are dropped and counted at once. */
static void test_queue_cap(void **state)
{
    fixture *f = *state;
    capture cap;
    capture_start(&cap, f->base, 0);
    sg_tracer *t = tracer_to(f, "http://127.0.0.1:%d", cap.port);
    sg_tracer_set_timing(t, 20, 60000);

    record_n(t, SG_TRACE_BATCH_MAX_SPANS); /* a full batch: sent on the next loop pass */
    assert_true(run_until(f->base, cap_has_1, &cap));
    const sg_tracer_stats *st = sg_tracer_stats_get(t);
    assert_int_equal(st->dropped, 0);

    record_n(t, SG_TRACE_QUEUE_MAX_SPANS + 100);
    assert_int_equal(st->dropped, 100);
    run_for(f->base, 100); /* the queued batches stay queued behind the request */
    assert_int_equal(cap.nreq, 1);
    assert_int_equal(st->dropped, 100);
    assert_int_equal(st->exported, 0);
    sg_tracer_free(t, 0);
    capture_stop(&cap);
}

/* Large spans hit the byte cap before the count cap. */
static void test_queue_cap_bytes(void **state)
{
    fixture *f = *state;
    sg_tracer *t = tracer_to(f, "http://127.0.0.1:%d", closed_port());
    char *big = malloc(40000);
    memset(big, 'a', 39999);
    big[39999] = '\0';
    sg_span_ctx c;
    sg_span_start(&c, NULL);
    sg_span_attr a = {"blob", big, 0};
    const sg_tracer_stats *st = sg_tracer_stats_get(t);
    /* A span above the per-span limit (64 KiB) is dropped on its own. */
    char *huge = malloc(70000);
    memset(huge, 'b', 69999);
    huge[69999] = '\0';
    sg_span_attr h = {"blob", huge, 0};
    sg_tracer_record(t, "huge", SG_SPAN_INTERNAL, &c, NULL, 1, 2, &h, 1, NULL);
    assert_int_equal(st->dropped, 1);
    sg_tracer_record(t, "big", SG_SPAN_INTERNAL, &c, NULL, 1, 2, &a, 1, NULL);
    assert_int_equal(st->dropped, 1);
    /* No loop runs: nothing is sent, so everything stays queued. */
    int n = 200;
    for (int i = 0; i < n; i++)
        sg_tracer_record(t, "big", SG_SPAN_INTERNAL, &c, NULL, 1, 2, &a, 1, NULL);
    size_t fit = SG_TRACE_QUEUE_MAX_BYTES / 40000; /* an upper bound: spans are a bit larger */
    assert_true(st->dropped >= 1 + (uint64_t)(n + 1 - (int)fit));
    assert_true(st->dropped < (uint64_t)n);
    sg_tracer_free(t, 0);
    free(big);
    free(huge);
}

/* sg_tracer_free with a timeout sends what is queued before freeing. */
static void test_free_flushes(void **state)
{
    fixture *f = *state;
    capture cap;
    capture_start(&cap, f->base, 200);
    sg_tracer *t = tracer_to(f, "http://127.0.0.1:%d", cap.port);
    record_n(t, 3); /* default 1 s delay: free must not wait for it */
    sg_tracer_free(t, 5000);
    assert_int_equal(cap.nreq, 1);
    assert_int_equal(json_object_array_length(spans_of(cap.body[0])), 3);
    capture_stop(&cap);

    /* Collector down: free returns (bounded) and frees everything. */
    t = tracer_to(f, "http://127.0.0.1:%d", closed_port());
    record_n(t, 3);
    sg_tracer_free(t, 2000);
}

/* An invalid context is a caller bug: the span is dropped and counted. */
static void test_record_invalid_ctx(void **state)
{
    fixture *f = *state;
    sg_tracer *t = tracer_to(f, "http://127.0.0.1:%d", closed_port());
    sg_span_ctx c;
    memset(&c, 0, sizeof c);
    sg_tracer_record(t, "x", SG_SPAN_INTERNAL, &c, NULL, 1, 2, NULL, 0, NULL);
    sg_tracer_record(t, "x", SG_SPAN_INTERNAL, NULL, NULL, 1, 2, NULL, 0, NULL);
    assert_int_equal(sg_tracer_stats_get(t)->dropped, 2);
    sg_tracer_free(t, 0);
}

typedef struct outcome_wait {
    sg_tracer *t;
    uint64_t total;
} outcome_wait;

static bool outcomes(void *arg)
{
    outcome_wait *w = arg;
    const sg_tracer_stats *s = sg_tracer_stats_get(w->t);
    return s->exported + s->dropped >= w->total;
}

typedef struct exported_wait {
    sg_tracer *t;
    uint64_t min;
} exported_wait;

static bool exported_at_least(void *arg)
{
    exported_wait *w = arg;
    return sg_tracer_stats_get(w->t)->exported >= w->min;
}

/* "localhost" may resolve to ::1 and 127.0.0.1; the collector listens on
 * 127.0.0.1 only. A refused connect moves to the next address, so within
 * one batch per address a batch gets through. */
static void test_address_rotation(void **state)
{
    fixture *f = *state;
    capture cap;
    capture_start(&cap, f->base, 200);
    sg_tracer *t = tracer_to(f, "http://localhost:%d", cap.port);
    sg_tracer_set_timing(t, 10, 0);
    const sg_tracer_stats *st = sg_tracer_stats_get(t);
    for (int i = 0; i < 4 && st->exported == 0; i++) {
        uint64_t done = st->exported + st->dropped;
        record_n(t, 1);
        outcome_wait w = {t, done + 1};
        assert_true(run_until(f->base, outcomes, &w));
    }
    assert_int_equal(st->exported, 1);
    sg_tracer_free(t, 0);
    capture_stop(&cap);
}

/* An [IPv6] endpoint, when the host has ::1 (skipped otherwise). */
static void test_ipv6_endpoint(void **state)
{
    fixture *f = *state;
    capture cap;
    memset(&cap, 0, sizeof cap);
    cap.status = 200;
    cap.http = evhttp_new(f->base);
    struct evhttp_bound_socket *h = evhttp_bind_socket_with_handle(cap.http, "::1", 0);
    if (!h) {
        evhttp_free(cap.http);
        skip();
    }
    struct sockaddr_in6 sa;
    socklen_t len = sizeof sa;
    assert_int_equal(getsockname(evhttp_bound_socket_get_fd(h), (struct sockaddr *)&sa, &len), 0);
    cap.port = ntohs(sa.sin6_port);
    evhttp_set_gencb(cap.http, on_capture, &cap);
    sg_tracer *t = tracer_to(f, "http://[::1]:%d", cap.port);
    sg_tracer_set_timing(t, 10, 0);
    record_n(t, 2);
    exported_wait w = {t, 2};
    assert_true(run_until(f->base, exported_at_least, &w));
    assert_int_equal(cap.nreq, 1);
    sg_tracer_free(t, 0);
    capture_stop(&cap);
}

/* Extra headers (OTEL_EXPORTER_OTLP_HEADERS) go with every request, next to
 * the exporter's own Host and User-Agent. */
static void test_extra_headers(void **state)
{
    fixture *f = *state;
    capture cap;
    capture_start(&cap, f->base, 200);
    snprintf(f->endpoint, sizeof f->endpoint, "http://127.0.0.1:%d/v1/traces", cap.port);
    char *names[] = {"Authorization", "X-Tenant"};
    char *values[] = {"Bearer k=1,2", "acme corp"};
    sg_tracer_opts o = {.url = f->endpoint, .node_id = "n", .header_names = names, .header_values = values,
                        .nheaders = 2};
    const char *err = NULL;
    sg_tracer *t = sg_tracer_new(f->base, &o, f->log, &err);
    assert_non_null(t);
    sg_tracer_set_timing(t, 10, 0);
    record_n(t, 2);
    exported_wait w = {t, 2};
    assert_true(run_until(f->base, exported_at_least, &w));
    assert_int_equal(cap.nreq, 1);
    assert_string_equal(cap.auth[0], "Bearer k=1,2");
    assert_string_equal(cap.tenant[0], "acme corp");
    char host[64];
    snprintf(host, sizeof host, "127.0.0.1:%d", cap.port);
    assert_string_equal(cap.host[0], host);
    assert_string_equal(cap.agent[0], "signal-gateway/" SG_VERSION);
    sg_tracer_free(t, 0);
    capture_stop(&cap);
}

/* ---- https ---------------------------------------------------------------- */

/* A self-signed P-256 certificate for subject_alt_name (e.g. "IP:127.0.0.1"),
 * written as PEM to a temporary file (the client's CA bundle). */
static X509 *make_cert(EVP_PKEY *key, const char *san, char *pem_path, size_t cap)
{
    X509 *x = X509_new();
    assert_non_null(x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), (long)(sg_now_mono_ms() & 0x7fffffff));
    X509_gmtime_adj(X509_getm_notBefore(x), -300);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"otlp-test", -1, -1, 0);
    X509_set_issuer_name(x, name);
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_subject_alt_name, san);
    assert_non_null(ext);
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);
    snprintf(pem_path, cap, "/tmp/sg-test-trace-ca-XXXXXX");
    int fd = mkstemp(pem_path);
    assert_true(fd >= 0);
    FILE *fp = fdopen(fd, "w");
    assert_non_null(fp);
    assert_true(PEM_write_X509(fp, x) == 1);
    fclose(fp);
    return x;
}

static struct bufferevent *tls_bevcb(struct event_base *base, void *arg)
{
    return bufferevent_openssl_socket_new(base, -1, SSL_new(arg), BUFFEREVENT_SSL_ACCEPTING,
                                          BEV_OPT_CLOSE_ON_FREE);
}

typedef struct tls_collector {
    capture cap;
    SSL_CTX *ctx;
    EVP_PKEY *key;
    X509 *cert;
    char ca_path[64];
} tls_collector;

static void tls_start(tls_collector *c, struct event_base *base, const char *san)
{
    c->key = EVP_EC_gen("P-256");
    assert_non_null(c->key);
    c->cert = make_cert(c->key, san, c->ca_path, sizeof c->ca_path);
    c->ctx = SSL_CTX_new(TLS_server_method());
    assert_true(SSL_CTX_use_certificate(c->ctx, c->cert) == 1);
    assert_true(SSL_CTX_use_PrivateKey(c->ctx, c->key) == 1);
    capture_start(&c->cap, base, 200);
    evhttp_set_bevcb(c->cap.http, tls_bevcb, c->ctx);
}

static void tls_stop(tls_collector *c)
{
    capture_stop(&c->cap);
    SSL_CTX_free(c->ctx);
    X509_free(c->cert);
    EVP_PKEY_free(c->key);
    unlink(c->ca_path);
}

static sg_tracer *https_tracer(fixture *f, int port, const char *ca_file)
{
    snprintf(f->endpoint, sizeof f->endpoint, "https://127.0.0.1:%d/v1/traces", port);
    sg_tracer_opts o = {.url = f->endpoint, .node_id = "n", .ca_file = ca_file};
    const char *err = "unset";
    sg_tracer *t = sg_tracer_new(f->base, &o, f->log, &err);
    if (!t)
        fail_msg("https tracer: %s", err);
    sg_tracer_set_timing(t, 10, 2000);
    return t;
}

/* An https collector whose certificate the CA bundle vouches for: spans are
 * exported over TLS, batches share the kept-alive connection. */
static void test_https_export(void **state)
{
    fixture *f = *state;
    tls_collector c;
    tls_start(&c, f->base, "IP:127.0.0.1");
    sg_tracer *t = https_tracer(f, c.cap.port, c.ca_path);
    record_n(t, 3);
    exported_wait w = {t, 3};
    assert_true(run_until(f->base, exported_at_least, &w));
    record_n(t, 2);
    w.min = 5;
    assert_true(run_until(f->base, exported_at_least, &w));
    assert_int_equal(c.cap.nreq, 2);
    assert_int_equal(json_object_array_length(spans_of(c.cap.body[0])), 3);
    assert_string_equal(c.cap.uri[0], "/v1/traces");
    assert_int_equal(c.cap.peer_port[0], c.cap.peer_port[1]);
    assert_int_equal(sg_tracer_stats_get(t)->batches_failed, 0);
    sg_tracer_free(t, 0);
    tls_stop(&c);
}

/* A certificate that is not trusted, or not for this address: the handshake
 * fails, nothing reaches the collector, each batch is dropped and counted. */
static void test_https_refuses_bad_certificate(void **state)
{
    fixture *f = *state;
    static const struct {
        const char *san;
        bool give_ca; /* false: the system's CAs, which do not know ours */
    } cases[] = {{"IP:127.0.0.1", false}, {"DNS:other.example,IP:127.0.0.2", true}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        tls_collector c;
        tls_start(&c, f->base, cases[i].san);
        sg_tracer *t = https_tracer(f, c.cap.port, cases[i].give_ca ? c.ca_path : NULL);
        record_n(t, 4);
        assert_true(run_until(f->base, failed_1, t));
        const sg_tracer_stats *st = sg_tracer_stats_get(t);
        assert_int_equal(st->dropped, 4);
        assert_int_equal(st->exported, 0);
        assert_int_equal(c.cap.nreq, 0);
        sg_tracer_free(t, 0);
        tls_stop(&c);
    }
}

/* ---- scripted raw collector ---------------------------------------------- */

typedef struct raw {
    struct evconnlistener *lis;
    int port;
    const char *reply[MAXREQ]; /* one scripted answer per request, in order */
    bool close_after[MAXREQ];  /* close the connection once that answer is sent */
    int nreq, naccept;
    struct bufferevent *conns[MAXREQ];
    bool drip; /* write replies one byte per millisecond */
    struct event *drip_ev;
    struct bufferevent *drip_bev;
    const char *drip_left;
} raw;

static void raw_drip(evutil_socket_t fd, short what, void *arg)
{
    raw *r = arg;
    if (!r->drip_left || !*r->drip_left)
        return;
    bufferevent_write(r->drip_bev, r->drip_left++, 1);
    struct timeval tv = {0, 1000};
    evtimer_add(r->drip_ev, &tv);
}

/* Answers once a whole request (headers + Content-Length body) is in. */
static void raw_read(struct bufferevent *bev, void *arg)
{
    raw *r = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    for (;;) {
        struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
        if (end.pos < 0)
            return;
        size_t hlen = (size_t)end.pos + 4;
        char *head = malloc(hlen + 1);
        evbuffer_copyout(in, head, hlen);
        head[hlen] = '\0';
        const char *cl = strcasestr(head, "Content-Length:");
        assert_non_null(cl);
        size_t blen = strtoul(cl + 15, NULL, 10);
        free(head);
        if (evbuffer_get_length(in) < hlen + blen)
            return;
        evbuffer_drain(in, hlen + blen);
        assert_true(r->nreq < MAXREQ && r->reply[r->nreq]);
        bool close_after = r->close_after[r->nreq];
        const char *reply = r->reply[r->nreq++];
        if (close_after) {
            /* A small answer on loopback: sent whole, then the close ends the body. */
            evutil_socket_t fd = bufferevent_getfd(bev);
            assert_int_equal(send(fd, reply, strlen(reply), 0), (ssize_t)strlen(reply));
            for (int i = 0; i < r->naccept; i++)
                if (r->conns[i] == bev)
                    r->conns[i] = NULL;
            bufferevent_free(bev);
            return;
        }
        if (r->drip) {
            r->drip_bev = bev;
            r->drip_left = reply;
            raw_drip(-1, 0, r);
            continue;
        }
        bufferevent_write(bev, reply, strlen(reply));
    }
}

static void raw_event(struct bufferevent *bev, short what, void *arg)
{
    raw *r = arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        for (int i = 0; i < r->naccept; i++)
            if (r->conns[i] == bev)
                r->conns[i] = NULL;
        bufferevent_free(bev);
    }
}

static void raw_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                       void *arg)
{
    raw *r = arg;
    struct bufferevent *bev =
        bufferevent_socket_new(evconnlistener_get_base(l), fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(bev, raw_read, NULL, raw_event, r);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    assert_true(r->naccept < MAXREQ);
    r->conns[r->naccept++] = bev;
}

static void raw_start(raw *r, struct event_base *base)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    r->lis = evconnlistener_new_bind(base, raw_accept, r, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                     16, (struct sockaddr *)&sa, sizeof sa);
    assert_non_null(r->lis);
    r->port = bound_port(evconnlistener_get_fd(r->lis));
    r->drip_ev = evtimer_new(base, raw_drip, r);
}

static void raw_stop(raw *r)
{
    for (int i = 0; i < r->naccept; i++)
        if (r->conns[i])
            bufferevent_free(r->conns[i]);
    evconnlistener_free(r->lis);
    event_free(r->drip_ev);
}

/* Sends one batch of n spans per scripted reply, one after the other. */
static void raw_run(fixture *f, raw *r, int nbatches, const sg_tracer_stats **stp, sg_tracer **tp)
{
    sg_tracer *t = tracer_to(f, "http://127.0.0.1:%d", r->port);
    sg_tracer_set_timing(t, 10, 2000);
    outcome_wait w = {t, 0};
    for (int i = 0; i < nbatches; i++) {
        record_n(t, 2);
        w.total += 2;
        assert_true(run_until(f->base, outcomes, &w));
        run_for(f->base, 20); /* let the rest of the response (or the close) arrive */
    }
    *stp = sg_tracer_stats_get(t);
    *tp = t;
}

static void test_response_reader(void **state)
{
    fixture *f = *state;
    const sg_tracer_stats *st;
    sg_tracer *t;
    raw r;

    /* Interim 100, then a 200 with a body: the connection is reused. */
    memset(&r, 0, sizeof r);
    r.reply[0] = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
    r.reply[1] = "HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n";
    r.reply[2] = "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n";
    raw_start(&r, f->base);
    raw_run(f, &r, 3, &st, &t);
    assert_int_equal(st->exported, 6);
    assert_int_equal(st->dropped, 0);
    assert_int_equal(r.naccept, 1);
    sg_tracer_free(t, 0);
    raw_stop(&r);

    /* A chunked body keeps the connection; Connection: close and a body ended
     * by the close do not: the next batch opens a new one. (evhttp keeps an
     * HTTP/1.0 answer's connection as long as the server does.) */
    memset(&r, 0, sizeof r);
    r.reply[0] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
    r.reply[1] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    r.reply[2] = "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
    r.reply[3] = "HTTP/1.1 200 OK\r\n\r\n{}";
    r.close_after[3] = true;
    r.reply[4] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    raw_start(&r, f->base);
    raw_run(f, &r, 5, &st, &t);
    assert_int_equal(st->exported, 10);
    assert_int_equal(st->batches_failed, 0);
    assert_int_equal(r.naccept, 3);
    sg_tracer_free(t, 0);
    raw_stop(&r);

    /* Responses arriving a byte at a time, on one kept-alive connection. */
    memset(&r, 0, sizeof r);
    r.drip = true;
    r.reply[0] = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
    r.reply[1] = "HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nfail";
    r.reply[2] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    raw_start(&r, f->base);
    raw_run(f, &r, 3, &st, &t);
    assert_int_equal(st->exported, 4);
    assert_int_equal(st->dropped, 2);
    assert_int_equal(st->batches_failed, 1);
    assert_int_equal(r.naccept, 1);
    sg_tracer_free(t, 0);
    raw_stop(&r);

    /* Garbage, a 1xx that is not interim, a 3xx and a 4xx: each batch fails. */
    memset(&r, 0, sizeof r);
    r.reply[0] = "garbage\r\n\r\n";
    r.reply[1] = "HTTP/1.1 101 Switching Protocols\r\n\r\n";
    r.reply[2] = "HTTP/1.1 301 Moved\r\nContent-Length: 0\r\n\r\n";
    r.reply[3] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad";
    r.reply[4] = "HTTP/1.1 2000 OK\r\n\r\n";
    raw_start(&r, f->base);
    raw_run(f, &r, 5, &st, &t);
    assert_int_equal(st->exported, 0);
    assert_int_equal(st->dropped, 10);
    assert_int_equal(st->batches_failed, 5);
    sg_tracer_free(t, 0);
    raw_stop(&r);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* as main.c does: a reset collector must not kill us */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_traceparent_roundtrip),
        cmocka_unit_test(test_traceparent_rejects),
        cmocka_unit_test(test_span_start),
        cmocka_unit_test_setup_teardown(test_tracer_new_endpoints, setup, teardown),
        cmocka_unit_test(test_null_tracer),
        cmocka_unit_test_setup_teardown(test_export_end_to_end, setup, teardown),
        cmocka_unit_test_setup_teardown(test_export_batches_keepalive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_collector_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_collector_500, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_cap_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_flushes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_record_invalid_ctx, setup, teardown),
        cmocka_unit_test_setup_teardown(test_response_reader, setup, teardown),
        cmocka_unit_test_setup_teardown(test_address_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ipv6_endpoint, setup, teardown),
        cmocka_unit_test_setup_teardown(test_extra_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_https_export, setup, teardown),
        cmocka_unit_test_setup_teardown(test_https_refuses_bad_certificate, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
