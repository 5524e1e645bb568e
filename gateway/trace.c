/* trace: W3C trace context and the OTLP/HTTP JSON span exporter (trace.h).
 *
 * Spans are formatted straight into JSON text. A batch is one complete OTLP
 * request body: the resource/scope prefix, the spans separated by commas, and
 * the closing brackets. The batch being filled ("cur") is closed when it
 * holds SG_TRACE_BATCH_MAX_SPANS spans, TRACE_BATCH_MAX_BYTES bytes, or when
 * the batch timer fires (one second after its first span); closed batches
 * wait in a FIFO ("ready") until the exporter is free.
 *
 * The exporter sends one request at a time on one bufferevent. Sending never
 * happens on the recorder's stack: closing a batch only activates the "kick"
 * event, and the loop does the socket work. A batch is tried exactly once: a
 * refused connect, a non-2xx status, a closed connection or no status line
 * within the request timeout drops it (counted), and the next batch goes
 * out on a fresh connection. After a response with a Content-Length the
 * connection is kept for the next batch (closed after TRACE_IDLE_MS idle,
 * below the 5 s keep-alive timeout of common servers); anything else
 * (chunked, Connection: close, HTTP/1.0, no length) closes it.
 *
 * A keep-alive connection that the collector closes at the moment we reuse
 * it loses that one batch (counted, not retried). */
#include "sg/trace.h"
#include "sg/buf.h"
#include "sg/log.h"
#include "sg/util.h"
#include "sg/version.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/util.h>
#include <inttypes.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define TRACE_BATCH_DELAY_MS 1000       /* a batch leaves at most this long after its first span */
#define TRACE_REQUEST_TIMEOUT_MS 5000   /* from sending to the status line */
#define TRACE_IDLE_MS 4000              /* a kept-alive connection idle longer is closed */
#define TRACE_WARN_EVERY_MS 10000       /* at most one trace.export_failed line per period */
#define TRACE_BATCH_MAX_BYTES (1u << 20) /* span JSON per request body */
#define TRACE_SPAN_MAX_BYTES (64u << 10) /* one formatted span; larger is dropped */
#define TRACE_RESP_LINE_MAX 8192        /* status or header line of the response */
#define TRACE_RESP_HEADERS_MAX 100      /* header lines per response */
#define TRACE_RESP_BODY_MAX (64u << 10) /* larger bodies close the connection instead */
#define TRACE_SCOPE_NAME "signal-gateway"
#define TRACE_SCOPE_VERSION SG_VERSION
#define TRACE_DEFAULT_SERVICE "signal-gateway"

/* ---- W3C trace context --------------------------------------------------- */

static int hex_lc(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1; /* uppercase is not HEXDIGLC: the spec's grammar rejects it */
}

/* Decodes 2*n lowercase hex characters. */
static bool unhex_lc(const char *s, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i++) {
        int hi = hex_lc(s[2 * i]), lo = hex_lc(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

static void put_hex(char *out, const uint8_t *in, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

/* "vv-<32 hex trace id>-<16 hex span id>-<2 hex flags>": separators at 2, 35
 * and 52. Version 00 must be exactly 55 characters. A later version (01-fe)
 * is parsed as version 00 is, and may be followed by "-<more fields>", as
 * the W3C spec asks of a version-00 parser; version ff is invalid. */
bool sg_traceparent_parse(const char *s, size_t n, sg_span_ctx *out)
{
    sg_span_ctx c;
    memset(&c, 0, sizeof c);
    if (out)
        *out = c;
    if (!s || !out || n < SG_TRACEPARENT_LEN)
        return false;
    uint8_t version, flags;
    if (!unhex_lc(s, 1, &version) || version == 0xff)
        return false;
    if (version == 0 && n != SG_TRACEPARENT_LEN)
        return false;
    if (n > SG_TRACEPARENT_LEN && s[SG_TRACEPARENT_LEN] != '-')
        return false;
    if (s[2] != '-' || s[35] != '-' || s[52] != '-')
        return false;
    if (!unhex_lc(s + 3, sizeof c.trace_id, c.trace_id) ||
        !unhex_lc(s + 36, sizeof c.span_id, c.span_id) || !unhex_lc(s + 53, 1, &flags))
        return false;
    if (all_zero(c.trace_id, sizeof c.trace_id) || all_zero(c.span_id, sizeof c.span_id))
        return false;
    c.sampled = flags & 1;
    c.valid = true;
    *out = c;
    return true;
}

void sg_traceparent_format(const sg_span_ctx *c, char out[SG_TRACEPARENT_LEN + 1])
{
    memcpy(out, "00-", 3);
    put_hex(out + 3, c->trace_id, sizeof c->trace_id);
    out[35] = '-';
    put_hex(out + 36, c->span_id, sizeof c->span_id);
    memcpy(out + 52, c->sampled ? "-01" : "-00", 3);
    out[SG_TRACEPARENT_LEN] = '\0';
}

void sg_span_start(sg_span_ctx *child, const sg_span_ctx *parent)
{
    sg_span_ctx c;
    memset(&c, 0, sizeof c);
    if (parent && parent->valid) {
        memcpy(c.trace_id, parent->trace_id, sizeof c.trace_id);
        c.sampled = parent->sampled;
    } else {
        do
            sg_random_bytes(c.trace_id, sizeof c.trace_id);
        while (all_zero(c.trace_id, sizeof c.trace_id));
        c.sampled = true;
    }
    do
        sg_random_bytes(c.span_id, sizeof c.span_id);
    while (all_zero(c.span_id, sizeof c.span_id) ||
           (parent && parent->valid && !memcmp(c.span_id, parent->span_id, sizeof c.span_id)));
    c.valid = true;
    *child = c; /* child may alias parent */
}

/* ---- exporter ------------------------------------------------------------ */

typedef struct batch {
    sg_buf body;  /* a whole request body once closed */
    size_t n;     /* spans */
    size_t bytes; /* span JSON bytes (what the queue cap counts) */
    struct batch *next;
} batch;

/* The connection's state. Outcome of the request is pending only in
 * ST_STATUS; in ST_HEADERS and ST_BODY it is counted and we only read the
 * rest of the response to reuse the connection. */
enum { ST_NONE, ST_STATUS, ST_HEADERS, ST_BODY, ST_IDLE };

struct sg_tracer {
    struct event_base *base;
    sg_log *log;
    struct addrinfo *addrs; /* resolved once at creation */
    struct addrinfo *addr;  /* the one the next connection uses */
    char *host;             /* Host header: the endpoint's authority */
    char *path;             /* request target */
    sg_buf prefix;          /* body up to the first span */

    batch *cur; /* being filled; its first span armed batch_timer */
    batch *ready_head, *ready_tail;
    size_t queued_spans, queued_bytes; /* cur + ready, not the request in flight */
    sg_buf span;                       /* scratch: one formatted span */

    struct event *batch_timer, *conn_timer, *kick;
    struct bufferevent *bev;
    int state;
    bool connected;
    size_t req_spans; /* spans of the request whose status is pending */
    /* Response being read. */
    bool interim, close_after, have_len;
    unsigned header_lines;
    uint64_t body_left;

    int batch_delay_ms, request_timeout_ms;
    uint64_t last_warn_ms;
    bool warned;
    sg_tracer_stats stats;
};

static void tv_ms(struct timeval *tv, int ms)
{
    tv->tv_sec = ms / 1000;
    tv->tv_usec = (ms % 1000) * 1000;
}

/* At most one warn line per TRACE_WARN_EVERY_MS; the totals it carries
 * cover the failures that were not logged. err is a socket errno or 0,
 * status an HTTP status or 0. */
static void warn_failed(sg_tracer *t, const char *reason, int status, int err, size_t n)
{
    uint64_t now = sg_now_mono_ms();
    if (!t->log || (t->warned && now - t->last_warn_ms < TRACE_WARN_EVERY_MS))
        return;
    t->warned = true;
    t->last_warn_ms = now;
    if (!sg_log_begin(t->log, SG_LOG_WARN, "trace.export_failed"))
        return;
    sg_log_str(t->log, "reason", reason);
    if (status)
        sg_log_int(t->log, "status", status);
    if (err)
        sg_log_str(t->log, "error", evutil_socket_error_to_string(err));
    sg_log_int(t->log, "spans", (int64_t)n);
    sg_log_int(t->log, "batches_failed_total", (int64_t)t->stats.batches_failed);
    sg_log_int(t->log, "dropped_total", (int64_t)t->stats.dropped);
    sg_log_end(t->log);
}

static void request_failed(sg_tracer *t, const char *reason, int status, int err)
{
    size_t n = t->req_spans;
    t->req_spans = 0;
    t->stats.batches_failed++;
    t->stats.dropped += n;
    warn_failed(t, reason, status, err, n);
}

static void schedule_send(sg_tracer *t)
{
    if (t->ready_head)
        event_active(t->kick, EV_TIMEOUT, 0);
}

static void close_conn(sg_tracer *t)
{
    if (t->bev) {
        /* Safe inside the bufferevent's own callbacks: libevent defers the free. */
        bufferevent_free(t->bev);
        t->bev = NULL;
    }
    t->state = ST_NONE;
    t->connected = false;
    event_del(t->conn_timer);
    schedule_send(t);
}

static void batch_free(batch *b)
{
    sg_buf_free(&b->body);
    free(b);
}

/* Moves cur to the ready queue and asks the loop to send. */
static void close_batch(sg_tracer *t)
{
    batch *b = t->cur;
    if (!b)
        return;
    t->cur = NULL;
    event_del(t->batch_timer);
    sg_buf_puts(&b->body, "]}]}]}");
    if (t->ready_tail)
        t->ready_tail->next = b;
    else
        t->ready_head = b;
    t->ready_tail = b;
    schedule_send(t);
}

static void free_data(const void *data, size_t len, void *arg)
{
    free((void *)data);
}

static void on_read(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);

static bool open_conn(sg_tracer *t, int *err)
{
    struct bufferevent *bev = bufferevent_socket_new(t->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        *err = EVUTIL_SOCKET_ERROR();
        return false;
    }
    bufferevent_setcb(bev, on_read, NULL, on_event, t);
    t->bev = bev; /* callbacks may look at it */
    if (bufferevent_socket_connect(bev, t->addr->ai_addr, (int)t->addr->ai_addrlen) < 0) {
        *err = EVUTIL_SOCKET_ERROR();
        bufferevent_free(bev);
        t->bev = NULL;
        return false;
    }
    return true;
}

static void next_addr(sg_tracer *t)
{
    t->addr = t->addr->ai_next ? t->addr->ai_next : t->addrs;
}

/* Sends the oldest ready batch when the connection is free. */
static void try_send(sg_tracer *t)
{
    if (!t->ready_head || (t->bev && t->state != ST_IDLE))
        return;
    batch *b = t->ready_head;
    t->ready_head = b->next;
    if (!t->ready_head)
        t->ready_tail = NULL;
    t->queued_spans -= b->n;
    t->queued_bytes -= b->bytes;
    t->req_spans = b->n;

    if (!t->bev) {
        int err = 0;
        if (!open_conn(t, &err)) {
            next_addr(t);
            batch_free(b);
            request_failed(t, "connect", 0, err);
            schedule_send(t);
            return;
        }
        t->connected = false;
    }
    struct evbuffer *out = bufferevent_get_output(t->bev);
    evbuffer_add_printf(out,
                        "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                        "Content-Length: %zu\r\nUser-Agent: signal-gateway/" TRACE_SCOPE_VERSION
                        "\r\n\r\n",
                        t->path, t->host, b->body.len);
    /* The evbuffer takes the body's allocation and frees it when written. */
    if (evbuffer_add_reference(out, b->body.data, b->body.len, free_data, NULL) == 0)
        b->body.data = NULL;
    else
        evbuffer_add(out, b->body.data, b->body.len);
    batch_free(b);

    t->state = ST_STATUS;
    t->interim = t->close_after = t->have_len = false;
    t->header_lines = 0;
    t->body_left = 0;
    bufferevent_enable(t->bev, EV_READ | EV_WRITE);
    struct timeval tv;
    tv_ms(&tv, t->request_timeout_ms);
    event_add(t->conn_timer, &tv);
}

static void on_kick(evutil_socket_t fd, short what, void *arg) { try_send(arg); }

static void on_batch_timer(evutil_socket_t fd, short what, void *arg) { close_batch(arg); }

static void on_conn_timer(evutil_socket_t fd, short what, void *arg)
{
    sg_tracer *t = arg;
    if (t->state == ST_STATUS) {
        if (!t->connected)
            next_addr(t);
        request_failed(t, t->connected ? "timeout" : "connect_timeout", 0, 0);
    }
    close_conn(t); /* or: the rest of a response is late, or idle too long */
}

/* "HTTP/1.x DDD[ reason]": returns the status, or 0. */
static int parse_status_line(const char *s, size_t n, bool *http10)
{
    if (n < 12 || memcmp(s, "HTTP/1.", 7) != 0 || (s[7] != '0' && s[7] != '1') || s[8] != ' ')
        return 0;
    for (int i = 9; i < 12; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    if (n > 12 && s[12] != ' ')
        return 0;
    *http10 = s[7] == '0';
    return (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
}

static bool header_is(const char *line, size_t n, const char *name, const char **val)
{
    size_t k = strlen(name);
    if (n <= k || strncasecmp(line, name, k) != 0 || line[k] != ':')
        return false;
    const char *v = line + k + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    *val = v;
    return true;
}

/* One header line of the response: only what decides whether the
 * connection can be reused matters. */
static void on_header(sg_tracer *t, const char *line, size_t n)
{
    const char *v;
    if (header_is(line, n, "Content-Length", &v)) {
        char *end;
        errno = 0;
        unsigned long long len = strtoull(v, &end, 10);
        if (errno || end == v || *end || *v == '-' || (t->have_len && len != t->body_left))
            t->close_after = true;
        t->have_len = true;
        t->body_left = len;
    } else if (header_is(line, n, "Transfer-Encoding", &v)) {
        t->close_after = true; /* chunked: we do not decode it; closing is simpler */
    } else if (header_is(line, n, "Connection", &v)) {
        if (strcasestr(v, "close"))
            t->close_after = true;
    }
}

/* Returns false when the connection was closed (the caller must stop). */
static bool read_response(sg_tracer *t, struct evbuffer *in)
{
    for (;;) {
        if (t->state == ST_BODY) {
            size_t have = evbuffer_get_length(in);
            size_t k = have < t->body_left ? have : (size_t)t->body_left;
            evbuffer_drain(in, k);
            t->body_left -= k;
            if (t->body_left)
                return true;
            t->state = ST_IDLE;
            struct timeval tv;
            tv_ms(&tv, TRACE_IDLE_MS);
            event_add(t->conn_timer, &tv);
            schedule_send(t);
            continue;
        }
        if (t->state == ST_IDLE) {
            if (evbuffer_get_length(in) == 0)
                return true;
            close_conn(t); /* unsolicited bytes: the stream is not HTTP any more */
            return false;
        }
        size_t n = 0;
        char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
        if (!line) {
            if (evbuffer_get_length(in) <= TRACE_RESP_LINE_MAX)
                return true;
            if (t->state == ST_STATUS)
                request_failed(t, "bad_response", 0, 0);
            close_conn(t);
            return false;
        }
        if (n > TRACE_RESP_LINE_MAX) {
            free(line);
            if (t->state == ST_STATUS)
                request_failed(t, "bad_response", 0, 0);
            close_conn(t);
            return false;
        }
        if (t->state == ST_STATUS) {
            bool http10 = false;
            int status = parse_status_line(line, n, &http10);
            free(line);
            if (status < 100 || status == 101) {
                request_failed(t, "bad_response", status, 0);
                close_conn(t);
                return false;
            }
            t->state = ST_HEADERS;
            t->header_lines = 0;
            t->have_len = false;
            t->interim = status < 200;
            if (t->interim)
                continue;
            if (http10)
                t->close_after = true; /* no keep-alive negotiation for 1.0 */
            if (status >= 200 && status < 300) {
                t->stats.exported += t->req_spans;
                t->req_spans = 0;
            } else {
                request_failed(t, "http_status", status, 0);
            }
            if (status == 204)
                t->have_len = true, t->body_left = 0;
            continue;
        }
        /* ST_HEADERS */
        if (n == 0) {
            free(line);
            if (t->interim) {
                t->state = ST_STATUS;
                continue;
            }
            if (t->close_after || !t->have_len || t->body_left > TRACE_RESP_BODY_MAX) {
                close_conn(t);
                return false;
            }
            t->state = ST_BODY;
            continue;
        }
        if (++t->header_lines > TRACE_RESP_HEADERS_MAX) {
            free(line);
            close_conn(t);
            return false;
        }
        on_header(t, line, n);
        free(line);
    }
}

static void on_read(struct bufferevent *bev, void *arg)
{
    sg_tracer *t = arg;
    read_response(t, bufferevent_get_input(bev));
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    sg_tracer *t = arg;
    if (what & BEV_EVENT_CONNECTED) {
        t->connected = true;
        return;
    }
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    int err = (what & BEV_EVENT_ERROR) ? EVUTIL_SOCKET_ERROR() : 0;
    if (t->state == ST_STATUS) {
        /* Take what arrived before the close: a status line may be in it. */
        if (!read_response(t, bufferevent_get_input(bev)))
            return;
        if (t->state == ST_STATUS) {
            if (!t->connected)
                next_addr(t);
            request_failed(t, t->connected ? "closed" : "connect", 0, err);
        }
    }
    close_conn(t);
}

/* ---- endpoint ------------------------------------------------------------ */

/* "http://host[:port][/base]" with host a name, IPv4 or [IPv6]. */
static bool parse_endpoint(const char *ep, char **host, char **port, char **authority,
                           char **path, const char **err)
{
    *err = "SIGNAL_OTLP_ENDPOINT: must be http://host[:port][/path] (https is not supported)";
    for (const char *p = ep; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return false;
    if (strncasecmp(ep, "http://", 7) != 0)
        return false;
    const char *a = ep + 7;
    size_t alen = strcspn(a, "/?#");
    const char *rest = a + alen;
    if (alen == 0 || memchr(a, '@', alen) || strpbrk(rest, "?#"))
        return false;
    const char *h, *pe;
    size_t hlen;
    if (a[0] == '[') {
        const char *rb = memchr(a, ']', alen);
        if (!rb || rb == a + 1)
            return false;
        h = a + 1;
        hlen = (size_t)(rb - h);
        pe = rb + 1;
    } else {
        h = a;
        hlen = strcspn(a, ":/");
        if (hlen > alen)
            hlen = alen;
        pe = a + hlen;
    }
    if (hlen == 0)
        return false;
    char portbuf[6] = "80";
    if (pe < a + alen) {
        if (*pe != ':')
            return false;
        const char *d = pe + 1;
        size_t dlen = (size_t)(a + alen - d);
        if (dlen == 0 || dlen > 5 || strspn(d, "0123456789") < dlen)
            return false;
        memcpy(portbuf, d, dlen);
        portbuf[dlen] = '\0';
        long v = strtol(portbuf, NULL, 10);
        if (v < 1 || v > 65535)
            return false;
    }
    size_t plen = strlen(rest);
    while (plen && rest[plen - 1] == '/')
        plen--;
    static const char suffix[] = "/v1/traces";
    size_t slen = sizeof suffix - 1;
    sg_buf pb;
    sg_buf_init(&pb);
    sg_buf_append(&pb, rest, plen);
    /* A base URL gets /v1/traces; one that already names it is used as is. */
    if (plen < slen || memcmp(rest + plen - slen, suffix, slen) != 0)
        sg_buf_puts(&pb, suffix);
    *path = pb.data;
    *host = sg_xstrndup(h, hlen);
    *port = sg_xstrdup(portbuf);
    *authority = sg_xstrndup(a, alen);
    *err = NULL;
    return true;
}

static void resource_attr(sg_buf *b, const char *key, const char *val, bool *first)
{
    if (!*first)
        sg_buf_putc(b, ',');
    *first = false;
    sg_buf_puts(b, "{\"key\":");
    sg_buf_json_str(b, key, strlen(key));
    sg_buf_puts(b, ",\"value\":{\"stringValue\":");
    sg_buf_json_str(b, val, strlen(val));
    sg_buf_puts(b, "}}");
}

sg_tracer *sg_tracer_new(struct event_base *base, const char *endpoint, const char *service_name,
                         const char *node_id, struct sg_log *log, const char **err)
{
    const char *dummy;
    if (!err)
        err = &dummy;
    *err = NULL;
    if (!endpoint || !*endpoint)
        return NULL;
    char *host = NULL, *port = NULL, *authority = NULL, *path = NULL;
    if (!parse_endpoint(endpoint, &host, &port, &authority, &path, err))
        return NULL;
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    if (getaddrinfo(host, port, &hints, &res) != 0 || !res) {
        *err = "SIGNAL_OTLP_ENDPOINT: cannot resolve the host";
        free(host);
        free(port);
        free(authority);
        free(path);
        return NULL;
    }
    free(port);

    sg_tracer *t = sg_xcalloc(1, sizeof *t);
    t->base = base;
    t->log = log;
    t->addrs = t->addr = res;
    t->host = authority;
    t->path = path;
    free(host);
    t->batch_delay_ms = TRACE_BATCH_DELAY_MS;
    t->request_timeout_ms = TRACE_REQUEST_TIMEOUT_MS;
    sg_buf_init(&t->span);
    sg_buf_init(&t->prefix);

    sg_buf *p = &t->prefix;
    bool first = true;
    sg_buf_puts(p, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
    if (!service_name || !*service_name)
        service_name = TRACE_DEFAULT_SERVICE;
    resource_attr(p, "service.name", service_name, &first);
    if (node_id && *node_id)
        resource_attr(p, "service.instance.id", node_id, &first);
    char hn[256];
    if (gethostname(hn, sizeof hn) == 0) {
        hn[sizeof hn - 1] = '\0';
        if (hn[0])
            resource_attr(p, "host.name", hn, &first);
    }
    sg_buf_puts(p, "]},\"scopeSpans\":[{\"scope\":{\"name\":\"" TRACE_SCOPE_NAME
                   "\",\"version\":\"" TRACE_SCOPE_VERSION "\"},\"spans\":[");

    t->batch_timer = evtimer_new(base, on_batch_timer, t);
    t->conn_timer = evtimer_new(base, on_conn_timer, t);
    t->kick = event_new(base, -1, 0, on_kick, t);
    return t;
}

void sg_tracer_set_timing(sg_tracer *t, int batch_delay_ms, int request_timeout_ms)
{
    if (!t)
        return;
    if (batch_delay_ms > 0)
        t->batch_delay_ms = batch_delay_ms;
    if (request_timeout_ms > 0)
        t->request_timeout_ms = request_timeout_ms;
}

const sg_tracer_stats *sg_tracer_stats_get(const sg_tracer *t)
{
    static const sg_tracer_stats none;
    return t ? &t->stats : &none;
}

static void on_wake(evutil_socket_t fd, short what, void *arg) {}

void sg_tracer_free(sg_tracer *t, int timeout_ms)
{
    if (!t)
        return;
    close_batch(t);
    /* Run the loop until the queue is sent and answered, or the deadline.
     * From inside a callback of this base the loop cannot be re-entered:
     * event_base_loop fails at once (libevent warns) and we drop. (libevent
     * 2.1's event_base_get_running_event cannot tell us beforehand: it
     * crashes when called outside a callback.) */
    if (timeout_ms > 0) {
        struct event *wake = evtimer_new(t->base, on_wake, NULL);
        uint64_t deadline = sg_now_mono_ms() + (uint64_t)timeout_ms;
        for (;;) {
            if (!t->ready_head && t->state != ST_STATUS)
                break;
            uint64_t now = sg_now_mono_ms();
            if (now >= deadline)
                break;
            struct timeval tv;
            tv_ms(&tv, (int)(deadline - now));
            evtimer_add(wake, &tv);
            if (event_base_loop(t->base, EVLOOP_ONCE) < 0)
                break;
        }
        event_free(wake);
    }
    event_free(t->batch_timer);
    event_free(t->conn_timer);
    event_free(t->kick);
    if (t->bev)
        bufferevent_free(t->bev);
    while (t->ready_head) {
        batch *b = t->ready_head;
        t->ready_head = b->next;
        batch_free(b);
    }
    freeaddrinfo(t->addrs);
    free(t->host);
    free(t->path);
    sg_buf_free(&t->prefix);
    sg_buf_free(&t->span);
    free(t);
}

/* ---- recording ----------------------------------------------------------- */

static void put_nanos(sg_buf *b, const char *key, uint64_t us)
{
    /* OTLP JSON: int64/fixed64 as a decimal string. */
    uint64_t ns = us > UINT64_MAX / 1000u ? UINT64_MAX : us * 1000u;
    sg_buf_printf(b, ",\"%s\":\"%" PRIu64 "\"", key, ns);
}

static void format_span(sg_buf *b, const char *name, sg_span_kind kind, const sg_span_ctx *ctx,
                        const sg_span_ctx *parent, uint64_t start_us, uint64_t end_us,
                        const sg_span_attr *attrs, size_t nattrs, const char *status_error)
{
    char hex[33];
    sg_buf_puts(b, "{\"traceId\":\"");
    put_hex(hex, ctx->trace_id, sizeof ctx->trace_id);
    sg_buf_append(b, hex, 32);
    sg_buf_puts(b, "\",\"spanId\":\"");
    put_hex(hex, ctx->span_id, sizeof ctx->span_id);
    sg_buf_append(b, hex, 16);
    sg_buf_putc(b, '"');
    if (parent && parent->valid) {
        sg_buf_puts(b, ",\"parentSpanId\":\"");
        put_hex(hex, parent->span_id, sizeof parent->span_id);
        sg_buf_append(b, hex, 16);
        sg_buf_putc(b, '"');
    }
    sg_buf_puts(b, ",\"name\":");
    if (!name)
        name = "";
    sg_buf_json_str(b, name, strlen(name));
    sg_buf_printf(b, ",\"kind\":%d", (int)kind);
    put_nanos(b, "startTimeUnixNano", start_us);
    put_nanos(b, "endTimeUnixNano", end_us);
    sg_buf_puts(b, ",\"attributes\":[");
    bool first = true;
    for (size_t i = 0; i < nattrs; i++) {
        if (!attrs[i].key)
            continue;
        if (!first)
            sg_buf_putc(b, ',');
        first = false;
        sg_buf_puts(b, "{\"key\":");
        sg_buf_json_str(b, attrs[i].key, strlen(attrs[i].key));
        if (attrs[i].str) {
            sg_buf_puts(b, ",\"value\":{\"stringValue\":");
            sg_buf_json_str(b, attrs[i].str, strlen(attrs[i].str));
            sg_buf_puts(b, "}}");
        } else {
            sg_buf_printf(b, ",\"value\":{\"intValue\":\"%" PRId64 "\"}}", attrs[i].num);
        }
    }
    sg_buf_putc(b, ']');
    if (status_error) {
        sg_buf_puts(b, ",\"status\":{\"code\":2,\"message\":");
        sg_buf_json_str(b, status_error, strlen(status_error));
        sg_buf_puts(b, "}}");
    } else {
        sg_buf_puts(b, ",\"status\":{\"code\":1}}");
    }
}

static void drop_one(sg_tracer *t, const char *reason)
{
    t->stats.dropped++;
    warn_failed(t, reason, 0, 0, 1);
}

void sg_tracer_record(sg_tracer *t, const char *name, sg_span_kind kind, const sg_span_ctx *ctx,
                      const sg_span_ctx *parent, uint64_t start_us, uint64_t end_us,
                      const sg_span_attr *attrs, size_t nattrs, const char *status_error)
{
    if (!t)
        return;
    if (!ctx || !ctx->valid) {
        t->stats.dropped++; /* a caller bug; counted so it shows */
        return;
    }
    if (t->queued_spans >= SG_TRACE_QUEUE_MAX_SPANS) {
        drop_one(t, "queue_full");
        return;
    }
    sg_buf_reset(&t->span);
    format_span(&t->span, name, kind, ctx, parent, start_us, end_us, attrs, nattrs, status_error);
    size_t len = t->span.len + 1; /* with its comma */
    if (len > TRACE_SPAN_MAX_BYTES) {
        drop_one(t, "span_too_large");
        return;
    }
    if (len > SG_TRACE_QUEUE_MAX_BYTES - t->queued_bytes) {
        drop_one(t, "queue_full");
        return;
    }
    if (t->cur && len > TRACE_BATCH_MAX_BYTES - t->cur->bytes)
        close_batch(t);
    if (!t->cur) {
        batch *b = sg_xcalloc(1, sizeof *b);
        sg_buf_init(&b->body);
        sg_buf_reserve(&b->body, t->prefix.len + len + 16);
        sg_buf_append(&b->body, t->prefix.data, t->prefix.len);
        t->cur = b;
        struct timeval tv;
        tv_ms(&tv, t->batch_delay_ms);
        event_add(t->batch_timer, &tv);
    }
    batch *b = t->cur;
    if (b->n)
        sg_buf_putc(&b->body, ',');
    sg_buf_append(&b->body, t->span.data, t->span.len);
    b->n++;
    b->bytes += len;
    t->queued_spans++;
    t->queued_bytes += len;
    if (b->n >= SG_TRACE_BATCH_MAX_SPANS)
        close_batch(t);
}
