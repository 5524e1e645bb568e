/* SPDX-License-Identifier: Apache-2.0 */
/* trace: W3C trace context and the OTLP/HTTP JSON span exporter (trace.h).
 *
 * Spans are formatted straight into JSON text. A batch is one complete OTLP
 * request body: the resource/scope prefix, the spans separated by commas, and
 * the closing brackets. The batch being filled ("cur") is closed when it
 * holds SG_TRACE_BATCH_MAX_SPANS spans, TRACE_BATCH_MAX_BYTES bytes, or when
 * the batch timer fires (one second after its first span); closed batches
 * wait in a FIFO ("ready") until the exporter is free.
 *
 * The exporter is libevent's HTTP client (evhttp) on one connection, over
 * TLS (bufferevent_openssl) for an https endpoint, one request at a time.
 * Sending never happens on the recorder's stack: closing a batch only
 * activates the "kick" event, and the loop does the socket work. A batch is
 * tried exactly once: a refused connect, a failed TLS handshake, a non-2xx
 * status, a closed connection or no progress within the request timeout
 * drops it (counted), and the next batch goes out on a fresh connection.
 * A connection is kept for the next batch until it fails, the collector
 * closes it, or it has been idle TRACE_IDLE_MS (below the 5 s keep-alive
 * timeout of common servers). A connection that has failed or closed is
 * never reused: evhttp would reconnect it on the same bufferevent, which
 * works for plain sockets only; a new one is made instead.
 *
 * Host names are resolved with evdns off the loop, again after
 * TRACE_RESOLVE_MS or a round of failed connects, so a collector that moves
 * (a restarted pod) is followed; a connect that fails moves to the next
 * address ("localhost" is often ::1 first with a collector on 127.0.0.1).
 *
 * A keep-alive connection that the collector closes at the moment we reuse
 * it loses that one batch (counted, not retried). */
#include "sg/trace.h"
#include "sg/buf.h"
#include "sg/log.h"
#include "sg/util.h"
#include "sg/version.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define TRACE_BATCH_DELAY_MS 1000       /* a batch leaves at most this long after its first span */
#define TRACE_REQUEST_TIMEOUT_MS 5000   /* connect, TLS handshake, and each read or write of a request */
#define TRACE_IDLE_MS 4000              /* a kept-alive connection idle longer is closed */
#define TRACE_RESOLVE_MS 60000          /* a host name is looked up again after this */
#define TRACE_WARN_EVERY_MS 10000       /* at most one trace.export_failed line per period */
#define TRACE_BATCH_MAX_BYTES (1u << 20) /* span JSON per request body */
#define TRACE_SPAN_MAX_BYTES (64u << 10) /* one formatted span; larger is dropped */
#define TRACE_RESP_HEADERS_MAX (16u << 10) /* the response head; larger fails the request */
#define TRACE_RESP_BODY_MAX (64u << 10) /* the response body; larger fails the request */
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

struct sg_tracer {
    struct event_base *base;
    sg_log *log;
    /* The endpoint. */
    char *host;      /* name or address (no brackets) */
    char port[6];
    char *authority; /* Host header: the URL's host[:port] */
    char *path;      /* request target */
    SSL_CTX *ssl;    /* https only */
    char **hdr_names, **hdr_values;
    size_t nhdrs;
    sg_buf prefix;   /* body up to the first span */

    /* Addresses: one numeric address, or a name's, looked up with evdns. */
    struct evdns_base *dns;                 /* NULL for a numeric host */
    struct evdns_getaddrinfo_request *lookup; /* in progress, when it could not answer at once */
    bool resolving;
    struct evutil_addrinfo *addrs, *addr;   /* addr: the one the next connection uses */
    uint64_t resolved_ms;                   /* 0: look up before the next connection */

    /* The connection and the request in flight. */
    struct evhttp_connection *conn;
    struct bufferevent *bev; /* conn's, for its TLS errors */
    bool conn_dead;          /* failed or closed: freed before the next request */
    struct evhttp_request *req;
    size_t req_spans;
    int req_error;           /* 1 + evhttp's error for req; 0: none (a failed connect) */
    bool fresh;              /* req is the connection's first request */

    batch *cur; /* being filled; its first span armed batch_timer */
    batch *ready_head, *ready_tail;
    size_t queued_spans, queued_bytes; /* cur + ready, not the request in flight */
    sg_buf span;                       /* scratch: one formatted span */

    struct event *batch_timer, *idle_timer, *kick;
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
 * cover the failures that were not logged. status is an HTTP status or 0,
 * detail a library's message or NULL. */
static void warn_failed(sg_tracer *t, const char *reason, int status, const char *detail, size_t n)
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
    if (detail)
        sg_log_str(t->log, "error", detail);
    sg_log_int(t->log, "spans", (int64_t)n);
    sg_log_int(t->log, "batches_failed_total", (int64_t)t->stats.batches_failed);
    sg_log_int(t->log, "dropped_total", (int64_t)t->stats.dropped);
    sg_log_end(t->log);
}

static void batch_failed(sg_tracer *t, size_t n, const char *reason, int status, const char *detail)
{
    t->stats.batches_failed++;
    t->stats.dropped += n;
    warn_failed(t, reason, status, detail, n);
}

static void schedule_send(sg_tracer *t)
{
    if (t->ready_head)
        event_active(t->kick, EV_TIMEOUT, 0);
}

static void free_data(const void *data, size_t len, void *arg)
{
    free((void *)data);
}

static void batch_free(batch *b)
{
    sg_buf_free(&b->body);
    free(b);
}

static batch *pop_ready(sg_tracer *t)
{
    batch *b = t->ready_head;
    t->ready_head = b->next;
    if (!t->ready_head)
        t->ready_tail = NULL;
    t->queued_spans -= b->n;
    t->queued_bytes -= b->bytes;
    return b;
}

/* The oldest batch cannot go (no address, no connection): dropped, counted. */
static void drop_ready(sg_tracer *t, const char *reason, const char *detail)
{
    batch *b = pop_ready(t);
    batch_failed(t, b->n, reason, 0, detail);
    batch_free(b);
    schedule_send(t);
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

/* Never from inside one of the connection's own callbacks. */
static void drop_conn(sg_tracer *t)
{
    if (t->conn)
        evhttp_connection_free(t->conn); /* frees the bufferevent (and the SSL) too */
    t->conn = NULL;
    t->bev = NULL;
    t->conn_dead = false;
    event_del(t->idle_timer);
}

/* ---- addresses */

static void next_addr(sg_tracer *t)
{
    if (!t->addr)
        return;
    t->addr = t->addr->ai_next;
    if (!t->addr) {
        t->addr = t->addrs;
        if (t->dns)
            t->resolved_ms = 0; /* a round of failures: the name may point elsewhere now */
    }
}

static void on_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    sg_tracer *t = arg;
    t->lookup = NULL;
    t->resolving = false;
    if (result == EVUTIL_EAI_CANCEL)
        return; /* the tracer is being freed */
    if (result != 0 || !res) {
        if (res)
            evutil_freeaddrinfo(res);
        if (t->addrs) {
            /* Keep the addresses we had: a DNS blip must not stop exports. */
            t->resolved_ms = sg_now_mono_ms();
            schedule_send(t);
        } else if (t->ready_head) {
            drop_ready(t, "resolve", evutil_gai_strerror(result));
        }
        return;
    }
    if (t->addrs)
        evutil_freeaddrinfo(t->addrs);
    t->addrs = t->addr = res;
    t->resolved_ms = sg_now_mono_ms();
    schedule_send(t);
}

/* True when t->addr can be used now; otherwise a lookup is under way and
 * on_resolved will kick the sender again. */
static bool have_addr(sg_tracer *t)
{
    if (!t->dns || (t->addrs && t->resolved_ms && sg_now_mono_ms() - t->resolved_ms < TRACE_RESOLVE_MS))
        return t->addr != NULL;
    struct evutil_addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    t->resolving = true;
    /* May answer at once (the hosts file), calling on_resolved before it returns. */
    struct evdns_getaddrinfo_request *r = evdns_getaddrinfo(t->dns, t->host, t->port, &hints, on_resolved, t);
    if (t->resolving)
        t->lookup = r;
    return false;
}

/* ---- the connection and one request */

static void on_conn_closed(struct evhttp_connection *conn, void *arg)
{
    sg_tracer *t = arg;
    if (conn == t->conn)
        t->conn_dead = true;
}

static void on_idle(evutil_socket_t fd, short what, void *arg)
{
    sg_tracer *t = arg;
    if (!t->req)
        drop_conn(t);
}

static bool open_conn(sg_tracer *t)
{
    char ip[INET6_ADDRSTRLEN] = "";
    const struct sockaddr *sa = t->addr->ai_addr;
    if (sa->sa_family == AF_INET6)
        evutil_inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof ip);
    else
        evutil_inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, ip, sizeof ip);
    struct bufferevent *bev;
    if (t->ssl) {
        SSL *ssl = SSL_new(t->ssl);
        if (!ssl)
            return false;
        /* The name (or address) of the URL is what the certificate must show. */
        struct in6_addr a6;
        if (evutil_inet_pton(AF_INET, t->host, &a6) == 1 || evutil_inet_pton(AF_INET6, t->host, &a6) == 1) {
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), t->host);
        } else {
            SSL_set_tlsext_host_name(ssl, t->host);
            SSL_set1_host(ssl, t->host);
        }
        bev = bufferevent_openssl_socket_new(t->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                             BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
        if (!bev) {
            SSL_free(ssl);
            return false;
        }
        /* Many servers close without close_notify; that is an end, not an error. */
        bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    } else {
        bev = bufferevent_socket_new(t->base, -1, 0); /* evhttp closes the socket */
        if (!bev)
            return false;
    }
    /* A numeric address: evhttp resolves nothing (it would block). */
    t->conn = evhttp_connection_base_bufferevent_new(t->base, NULL, bev, ip, (ev_uint16_t)atoi(t->port));
    if (!t->conn) {
        bufferevent_free(bev);
        return false;
    }
    t->bev = bev;
    t->conn_dead = false;
    struct timeval tv;
    tv_ms(&tv, t->request_timeout_ms);
    evhttp_connection_set_timeout_tv(t->conn, &tv);
    evhttp_connection_set_retries(t->conn, 0);
    evhttp_connection_set_max_headers_size(t->conn, TRACE_RESP_HEADERS_MAX);
    evhttp_connection_set_max_body_size(t->conn, TRACE_RESP_BODY_MAX);
    evhttp_connection_set_closecb(t->conn, on_conn_closed, t);
    return true;
}

static void on_request_error(enum evhttp_request_error e, void *arg)
{
    sg_tracer *t = arg;
    t->req_error = 1 + (int)e;
}

/* Why a request ended without a response, for the log. */
static const char *failure_reason(sg_tracer *t, const char **detail)
{
    *detail = NULL;
    if (t->bev && t->ssl) {
        unsigned long e = bufferevent_get_openssl_error(t->bev);
        if (e) {
            *detail = ERR_reason_error_string(e);
            return "tls";
        }
    }
    switch (t->req_error - 1) {
    case EVREQ_HTTP_TIMEOUT: return "timeout";
    case EVREQ_HTTP_INVALID_HEADER:
    case EVREQ_HTTP_DATA_TOO_LONG: return "bad_response";
    case -1: return "connect"; /* evhttp reports a refused connect with no error */
    default:
        /* A connection that ends before its first answer mostly never was
         * one (over TLS a refused connect shows as an end, not a refusal). */
        return t->fresh ? "connect" : "closed";
    }
}

/* evhttp's answer: a response, or req NULL / status 0 for a failure. Runs
 * inside the connection's callbacks: the connection is only marked here. */
static void on_response(struct evhttp_request *req, void *arg)
{
    sg_tracer *t = arg;
    if (!t->req)
        return;
    t->req = NULL;
    size_t n = t->req_spans;
    t->req_spans = 0;
    int status = req ? evhttp_request_get_response_code(req) : 0;
    if (status >= 200 && status < 300) {
        t->stats.exported += n;
    } else if (status) {
        batch_failed(t, n, "http_status", status, NULL);
    } else {
        const char *detail;
        const char *reason = failure_reason(t, &detail);
        if (t->fresh)
            next_addr(t); /* this address did not work: the next connection tries another */
        batch_failed(t, n, reason, 0, detail);
        t->conn_dead = true;
    }
    if (!t->conn_dead) {
        struct timeval tv;
        tv_ms(&tv, TRACE_IDLE_MS);
        event_add(t->idle_timer, &tv);
    }
    schedule_send(t);
}

/* Sends the oldest ready batch when nothing is in flight. Runs from the kick
 * event only, never inside the connection's callbacks. */
static void try_send(sg_tracer *t)
{
    if (!t->ready_head || t->req || t->resolving)
        return;
    if (t->conn && t->conn_dead)
        drop_conn(t);
    t->fresh = !t->conn;
    if (!t->conn) {
        if (!have_addr(t))
            return;
        if (!open_conn(t)) {
            next_addr(t);
            drop_ready(t, "connect", "cannot create a connection");
            return;
        }
    }
    event_del(t->idle_timer);
    batch *b = pop_ready(t);
    struct evhttp_request *req = evhttp_request_new(on_response, t);
    evhttp_request_set_error_cb(req, on_request_error);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", t->authority);
    evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_add_header(h, "User-Agent", "signal-gateway/" TRACE_SCOPE_VERSION);
    for (size_t i = 0; i < t->nhdrs; i++)
        evhttp_add_header(h, t->hdr_names[i], t->hdr_values[i]);
    /* The request's buffer takes the body's allocation and frees it when written. */
    struct evbuffer *out = evhttp_request_get_output_buffer(req);
    if (evbuffer_add_reference(out, b->body.data, b->body.len, free_data, NULL) == 0)
        b->body.data = NULL;
    else
        evbuffer_add(out, b->body.data, b->body.len);
    t->req = req;
    t->req_spans = b->n;
    t->req_error = 0;
    batch_free(b);
    /* A connect refused at once answers (on_response) before this returns. */
    if (evhttp_make_request(t->conn, req, EVHTTP_REQ_POST, t->path) != 0 && t->req == req) {
        t->req = NULL;
        batch_failed(t, t->req_spans, "connect", 0, NULL);
        t->req_spans = 0;
        t->conn_dead = true;
        schedule_send(t);
    }
}

static void on_kick(evutil_socket_t fd, short what, void *arg) { try_send(arg); }

static void on_batch_timer(evutil_socket_t fd, short what, void *arg) { close_batch(arg); }

/* ---- endpoint ------------------------------------------------------------ */

/* "http[s]://host[:port][/path]" with host a name, IPv4 or [IPv6]; the path
 * is used as it is ("/" when there is none). */
static bool parse_endpoint(sg_tracer *t, const char *url, bool *https, const char **err)
{
    *err = "must be http[s]://host[:port][/path] (no user, query or fragment)";
    for (const char *p = url; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return false;
    const char *a;
    if (strncasecmp(url, "http://", 7) == 0) {
        *https = false;
        a = url + 7;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        *https = true;
        a = url + 8;
    } else {
        return false;
    }
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
    snprintf(t->port, sizeof t->port, "%s", *https ? "443" : "80");
    if (pe < a + alen) {
        if (*pe != ':')
            return false;
        const char *d = pe + 1;
        size_t dlen = (size_t)(a + alen - d);
        if (dlen == 0 || dlen > 5 || strspn(d, "0123456789") < dlen)
            return false;
        memcpy(t->port, d, dlen);
        t->port[dlen] = '\0';
        long v = strtol(t->port, NULL, 10);
        if (v < 1 || v > 65535)
            return false;
    }
    t->host = sg_xstrndup(h, hlen);
    t->authority = sg_xstrndup(a, alen);
    t->path = sg_xstrdup(*rest ? rest : "/");
    *err = NULL;
    return true;
}

/* Where the collector's addresses come from: the literal, or evdns. */
static bool setup_addresses(sg_tracer *t, const char **err)
{
    struct evutil_addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    hints.ai_flags = EVUTIL_AI_NUMERICHOST;
    if (evutil_getaddrinfo(t->host, t->port, &hints, &res) == 0 && res) {
        t->addrs = t->addr = res;
        return true;
    }
    if (res)
        evutil_freeaddrinfo(res);
    /* A name: looked up when the first batch leaves, not here, so a collector
     * that is not resolvable yet (starting beside us) costs spans, not the start. */
    t->dns = evdns_base_new(t->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    if (!t->dns) {
        *err = "cannot set up the DNS resolver (/etc/resolv.conf)";
        return false;
    }
    return true;
}

static bool setup_tls(sg_tracer *t, const char *ca_file, const char **err)
{
    t->ssl = SSL_CTX_new(TLS_client_method());
    if (!t->ssl) {
        *err = "cannot create a TLS context";
        return false;
    }
    SSL_CTX_set_min_proto_version(t->ssl, TLS1_2_VERSION);
    SSL_CTX_set_verify(t->ssl, SSL_VERIFY_PEER, NULL);
    int ok = ca_file ? SSL_CTX_load_verify_locations(t->ssl, ca_file, NULL)
                     : SSL_CTX_set_default_verify_paths(t->ssl);
    if (ok != 1) {
        *err = ca_file ? "cannot load the CA bundle (OTEL_EXPORTER_OTLP_CERTIFICATE)"
                       : "cannot load the system's CA certificates";
        return false;
    }
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

static void build_prefix(sg_tracer *t, const char *service_name, const char *node_id)
{
    sg_buf *p = &t->prefix;
    bool first = true;
    sg_buf_puts(p, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
    resource_attr(p, "service.name", service_name && *service_name ? service_name : TRACE_DEFAULT_SERVICE,
                  &first);
    resource_attr(p, "service.version", SG_VERSION, &first);
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
}

sg_tracer *sg_tracer_new(struct event_base *base, const sg_tracer_opts *o, struct sg_log *log,
                         const char **err)
{
    const char *dummy;
    if (!err)
        err = &dummy;
    *err = NULL;
    if (!o || !o->url || !*o->url)
        return NULL;
    sg_tracer *t = sg_xcalloc(1, sizeof *t);
    t->base = base;
    t->log = log;
    t->batch_delay_ms = TRACE_BATCH_DELAY_MS;
    t->request_timeout_ms = TRACE_REQUEST_TIMEOUT_MS;
    sg_buf_init(&t->span);
    sg_buf_init(&t->prefix);
    t->batch_timer = evtimer_new(base, on_batch_timer, t);
    t->idle_timer = evtimer_new(base, on_idle, t);
    t->kick = event_new(base, -1, 0, on_kick, t);
    bool https = false;
    if (!parse_endpoint(t, o->url, &https, err) || !setup_addresses(t, err) ||
        (https && !setup_tls(t, o->ca_file, err))) {
        sg_tracer_free(t, 0);
        return NULL;
    }
    if (o->nheaders) {
        t->hdr_names = sg_xcalloc(o->nheaders, sizeof(char *));
        t->hdr_values = sg_xcalloc(o->nheaders, sizeof(char *));
        for (size_t i = 0; i < o->nheaders; i++) {
            t->hdr_names[i] = sg_xstrdup(o->header_names[i]);
            t->hdr_values[i] = sg_xstrdup(o->header_values[i]);
        }
        t->nhdrs = o->nheaders;
    }
    build_prefix(t, o->service_name, o->node_id);
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
            if (!t->ready_head && !t->req && !t->resolving)
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
    if (t->lookup)
        evdns_getaddrinfo_cancel(t->lookup); /* calls on_resolved with EVUTIL_EAI_CANCEL */
    if (t->req) {
        t->stats.dropped += t->req_spans; /* freed with the connection, unanswered */
        t->req = NULL;
    }
    drop_conn(t);
    event_free(t->batch_timer);
    event_free(t->idle_timer);
    event_free(t->kick);
    while (t->ready_head)
        batch_free(pop_ready(t));
    if (t->addrs)
        evutil_freeaddrinfo(t->addrs);
    if (t->dns)
        evdns_base_free(t->dns, 0);
    if (t->ssl)
        SSL_CTX_free(t->ssl);
    for (size_t i = 0; i < t->nhdrs; i++) {
        free(t->hdr_names[i]);
        free(t->hdr_values[i]);
    }
    free(t->hdr_names);
    free(t->hdr_values);
    free(t->host);
    free(t->authority);
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
    warn_failed(t, reason, 0, NULL, 1);
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
