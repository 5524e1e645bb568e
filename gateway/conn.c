/* SPDX-License-Identifier: Apache-2.0 */
#include "sg/conn.h"
#include "sg/conns.h"
#include "sg/http_upgrade.h"
#include "sg/session.h"
#include "sg/static_files.h"
#include "sg/util.h"
#include "sg/wire.h"
#include "sg/ws_frame.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

enum { SG_CONN_HANDSHAKE = 0, SG_CONN_HTTP_CLOSING, SG_CONN_OPEN, SG_CONN_CLOSING, SG_CONN_DEAD };
enum { PHASE_HANDSHAKE = 1, PHASE_PING, PHASE_PONG, PHASE_CLOSE_WAIT, PHASE_SUB_CHECK };

/* A handshake that passed every local check, held while Redis says whether
 * its token's sub is revoked (sg_session_check_sub). The request head stays
 * in the input until then; reading is bounded by the head cap meanwhile. */
typedef struct sg_conn_held {
    sg_claims claims;
    sg_buf response; /* the 101 */
    size_t head_len;
} sg_conn_held;

typedef struct sg_bucket {
    double tokens;
    uint64_t last_ms;
} sg_bucket;

struct sg_conn {
    /* Id, address, caps, deferred list and the connection's one timer: the
     * table's row (conns.h). The timer is on the table's wheel rather than a
     * libevent timer each: no event allocation per connection, and O(1)
     * re-arming for the heartbeat that every idle connection runs. */
    sg_conns_entry row;
    const sg_conn_deps *d;
    struct bufferevent *bev;
    uint8_t state;
    uint8_t timer_phase;   /* what the timer is waiting for */
    bool tls;
    bool close_rcvd;       /* the client's close frame arrived */
    bool lost;             /* TCP dropped or heartbeat reaped: resumable */
    bool ping_outstanding;
    bool drop_message;     /* a frame of the message being received was over the local rate limit */
    bool drop_control;     /* the control frame being received is over it */
    bool half_closed;      /* our side ended (FIN sent) in a lingering close */
    bool in_session;       /* the session knows it: sg_session_close is still owed */
    uint16_t close_code;   /* the code we sent or received, for logs and leave reasons */
    const char *leave_reason; /* peer_left reason when the connection goes */
    sg_ws_parser ws;
    uint32_t head_scanned; /* bytes of the upgrade head already scanned (sg_http_scan_head) */
    uint32_t linger_bytes; /* input discarded since our close (LINGER_MAX_BYTES) */
    uint64_t opened_ms, last_rx_ms, ping_sent_ms;
    sg_bucket frames, bytes;
    uint64_t over_since_ms, last_drop_ms;
    char user[17];         /* keyed hash of sub for logs and spans */
    /* A verified handshake waiting for the revocation check (PROTOCOL.md
     * §9): its claims and its 101 response, until Redis answers. */
    sg_conn_held *held;
    sg_span_ctx trace_parent; /* from the handshake's traceparent header, if any */
    sg_span_ctx span;         /* the connection's span (valid when tracing is on) */
    uint64_t opened_us;       /* wall clock, for spans */
};

#define CLOSE_WAIT_MS 2000   /* how long we wait for the client's close frame */
#define HTTP_LINGER_MS 1000  /* how long a refused handshake's response may take to flush,
                                and how long we linger after giving up on a close frame */
/* Input read and discarded after a close we started, before we stop waiting
 * for the client's end of the stream (nginx's lingering_close reads up to
 * lingering_time/lingering_timeout; a byte bound is cheaper to reason about). */
#define LINGER_MAX_BYTES (256u * 1024u)
#define FLOOD_CLOSE_MS 10000 /* continuous excess before close 1008 (docs/protocol.md §5) */

static void on_read(struct bufferevent *bev, void *arg);
static void start_linger(sg_conn *c, bool end_ours);
static void end_our_side(sg_conn *c);
static void write_by_bufferevent(sg_conn *c);
static void half_close(sg_conn *c);
static void on_event(struct bufferevent *bev, short what, void *arg);
static void on_timer(sg_conns_entry *e);
static void release(sg_conns_entry *e);

static int ws_on_text(void *ud, const uint8_t *data, size_t len);
static int ws_on_ping(void *ud, const uint8_t *data, size_t len);
static int ws_on_pong(void *ud, const uint8_t *data, size_t len);
static int ws_on_close(void *ud, uint16_t code, const uint8_t *reason, size_t len);
static int ws_on_frame(void *ud, uint8_t opcode, uint64_t len);

static const sg_ws_callbacks WS_CB = {
    .on_text = ws_on_text, .on_ping = ws_on_ping, .on_pong = ws_on_pong,
    .on_close = ws_on_close, .on_frame = ws_on_frame,
};

static void flush(sg_conns_entry *e);

const sg_conns_ops sg_conn_table_ops = {.release = release, .fire = on_timer, .flush = flush};

/* ---- the connection's row -------------------------------------------- */

static sg_conn *conn_of(sg_conns_entry *e) { return (sg_conn *)((char *)e - offsetof(sg_conn, row)); }

static sg_conn *conn_by_id(const sg_conn_deps *d, uint64_t id)
{
    sg_conns_entry *e = sg_conns_get(d->table, id);
    return e ? conn_of(e) : NULL;
}

static void disarm(sg_conn *c) { sg_conns_disarm(c->d->table, &c->row); }

static void arm(sg_conn *c, int phase, int64_t ms)
{
    c->timer_phase = (uint8_t)phase;
    sg_conns_arm(c->d->table, &c->row, ms);
}

/* Queues the connection for the deferred pass (release). */
static void defer(sg_conn *c) { sg_conns_defer(c->d->table, &c->row); }

static void refuse(sg_conn *c, int status, const char *code, const char *message, const char *extra);

void sg_conn_accept(const sg_conn_deps *d, int fd, const char *ip)
{
    sg_conn *c = sg_xcalloc(1, sizeof *c);
    c->d = d;
    c->opened_ms = sg_now_mono_ms();
    if (d->ssl) {
        SSL *ssl = SSL_new(d->ssl);
        c->bev = bufferevent_openssl_socket_new(d->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
        c->tls = true;
    } else {
        c->bev = bufferevent_socket_new(d->base, fd, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    }
    if (!c->bev) {
        evutil_closesocket(fd);
        free(c);
        return;
    }
    bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
    /* Never read more of a handshake than the cap allows (+1 to see it overrun). */
    bufferevent_setwatermark(c->bev, EV_READ, 0, (size_t)d->cfg->max_header_bytes + 1);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    sg_conns_add(d->table, &c->row, ip);
    /* The caps, checked before a byte is read. A trusted proxy's own address
     * is exempt from the per-IP one: what it carries is counted per client
     * once the head says who the client is (apply_forwarded_for). */
    bool proxy = d->cfg->max_connections_per_ip && sg_ip_in_list(c->row.ip, d->cfg->trusted_proxies);
    const char *cap = sg_conns_cap_at_accept(d->table, c->row.ip, proxy);
    if (cap) {
        /* A 503 without reading the head, then the lingering close: the
         * client reads why instead of a reset. */
        sg_metrics_inc(&d->metrics->caps, cap);
        bool node = strcmp(cap, "max_connections") == 0;
        refuse(c, 503, "unavailable",
               node ? "node is at its connection cap" : "too many connections from this address",
               node ? "Retry-After: 1\r\n" : "Retry-After: 5\r\n");
        return;
    }
    sg_conns_admit(d->table, &c->row);
    arm(c, PHASE_HANDSHAKE, d->cfg->handshake_timeout_ms);
}

static void log_close(sg_conn *c, const char *why)
{
    const sg_conn_deps *d = c->d;
    if (c->state < SG_CONN_OPEN)
        return;
    if (d->tracer && c->span.valid) {
        sg_span_attr a[] = {{"ws.conn_id", NULL, (int64_t)c->row.id},
                            {"ws.close_code", NULL, c->close_code ? c->close_code : SG_WS_CLOSE_ABNORMAL},
                            {"ws.close_reason", why, 0},
                            {"enduser.hash", c->user, 0}};
        sg_tracer_record(d->tracer, "ws.connection", SG_SPAN_SERVER, &c->span, &c->trace_parent,
                         c->opened_us, sg_now_wall_us(), a, 4, NULL);
    }
    if (sg_log_begin(d->log, SG_LOG_INFO, "ws.close")) {
        sg_log_int(d->log, "conn", (int64_t)c->row.id);
        sg_log_int(d->log, "code", c->close_code ? c->close_code : SG_WS_CLOSE_ABNORMAL);
        sg_log_str(d->log, "reason", why);
        sg_log_int(d->log, "duration_ms", (int64_t)(sg_now_mono_ms() - c->opened_ms));
        sg_log_end(d->log);
    }
    char code[8];
    snprintf(code, sizeof code, "%u", c->close_code ? c->close_code : SG_WS_CLOSE_ABNORMAL);
    /* Close codes are a small known set; label values must be literals. */
    static const char *known[] = {"1000", "1001", "1002", "1003", "1006", "1007", "1008", "1009", "1011"};
    const char *label = "other";
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        if (strcmp(known[i], code) == 0)
            label = known[i];
    sg_metrics_inc(&d->metrics->closes, label);
}

/* Leaves the rooms once, when the connection stops being usable: from the
 * deferred pass, never inside a call that may have come from the session. */
static void end_session(sg_conn *c)
{
    if (c->state != SG_CONN_OPEN)
        return;
    if (!c->leave_reason)
        c->leave_reason = "disconnect";
    defer(c);
}

static sg_gone gone_reason(const sg_conn *c)
{
    const char *r = c->leave_reason ? c->leave_reason : "disconnect";
    if (strcmp(r, "timeout") == 0)
        return SG_GONE_TIMEOUT;
    if (strcmp(r, "shutdown") == 0)
        return SG_GONE_SHUTDOWN;
    return c->lost ? SG_GONE_LOST : SG_GONE_DISCONNECT;
}

/* The deferred pass's work for one connection: tells the session it went
 * (once), and frees the struct when it is dead. */
static void release(sg_conns_entry *e)
{
    sg_conn *c = conn_of(e);
    if (c->in_session) {
        c->in_session = false;
        sg_session_close(c->d->session, c->row.id, gone_reason(c));
    }
    if (c->state != SG_CONN_DEAD)
        return;
    disarm(c);
    sg_ws_parser_reset(&c->ws);
    free(c);
}

static void drop_held(sg_conn *c)
{
    if (!c->held)
        return;
    sg_claims_clear(&c->held->claims);
    sg_buf_free(&c->held->response);
    free(c->held);
    c->held = NULL;
}

/* Ends the connection now (no close handshake), e.g. a dead peer. The
 * struct stays valid until the deferred pass. */
static void conn_abort(sg_conn *c, const char *why)
{
    if (c->state == SG_CONN_DEAD)
        return;
    const sg_conn_deps *d = c->d;
    drop_held(c);
    end_session(c);
    log_close(c, why);
    if (c->state >= SG_CONN_OPEN)
        d->metrics->ws_connections--;
    c->state = SG_CONN_DEAD;
    disarm(c);
    sg_conns_cancel_flush(d->table, &c->row); /* what was not sent is dropped with the socket */
    /* bufferevent_free is safe inside its own callbacks: libevent defers it. */
    bufferevent_free(c->bev);
    c->bev = NULL;
    sg_conns_remove(d->table, &c->row); /* off the registry and the caps */
    defer(c);
}

/* The closing handshake is complete once our last frame has left: TCP ends
 * with a FIN (close_notify first under TLS), as after any close. */
static void on_drained_abort(struct bufferevent *bev, void *arg)
{
    sg_conn *c = arg;
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
        half_close(c);
        conn_abort(c, c->close_rcvd ? "closed" : "refused");
    }
}

/* Writes data and ends the connection once it has left the buffer. */
static void flush_then_abort(sg_conn *c)
{
    write_by_bufferevent(c);
    bufferevent_disable(c->bev, EV_READ);
    bufferevent_setcb(c->bev, NULL, on_drained_abort, on_event, c);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        on_drained_abort(c->bev, c);
}

/* Whether this connection's frames are sent by the flush pass rather than
 * by the bufferevent: an open plain-ws connection. The bufferevent writes
 * only what the socket did not take (EV_WRITE on until it is gone), and
 * everything once the connection closes: its drained callbacks end it. */
static bool flushes_itself(const sg_conn *c) { return !c->tls && c->state == SG_CONN_OPEN; }

/* From here on the bufferevent writes the output, whatever the flush pass
 * had still to send included (a close, or what the socket refused). */
static void write_by_bufferevent(sg_conn *c)
{
    sg_conns_cancel_flush(c->d->table, &c->row);
    if (!(bufferevent_get_enabled(c->bev) & EV_WRITE))
        bufferevent_enable(c->bev, EV_WRITE);
}

/* The flush pass: what the callbacks of this pass of the loop wrote to the
 * connection leaves in one writev. Writing every frame at once cost a
 * writev each (under load a client gets several per pass), and writing
 * through the bufferevent cost an epoll_ctl to watch for writability and
 * another to stop, per pass, on top of the writev: two of the three
 * system calls each delivered relay cost. What the socket does not take (EAGAIN), or an error,
 * is left to the bufferevent, which writes the rest or reports the error
 * (on_event), as before. */
static void flush(sg_conns_entry *e)
{
    sg_conn *c = conn_of(e);
    if (!c->bev)
        return;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (!flushes_itself(c) || (bufferevent_get_enabled(c->bev) & EV_WRITE)) {
        write_by_bufferevent(c);
        return;
    }
    if (evbuffer_get_length(out) == 0)
        return;
    /* The bufferevent keeps its output's start frozen so that only it
     * drains it; it unfreezes around its own writes, as here. */
    evbuffer_unfreeze(out, 1);
    evbuffer_write(out, bufferevent_getfd(c->bev));
    evbuffer_freeze(out, 1);
    if (evbuffer_get_length(out))
        write_by_bufferevent(c);
}

static bool write_frame(sg_conn *c, uint8_t opcode, const void *data, size_t len)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t queued = evbuffer_get_length(out);
    if (queued > (size_t)c->d->cfg->max_output_bytes) {
        /* A client that stops reading is cut loose rather than allowed to
         * grow this node's memory. */
        c->d->metrics->output_buffer_closes++;
        sg_metrics_inc(&c->d->metrics->caps, "output_buffer");
        c->close_code = SG_WS_CLOSE_POLICY;
        conn_abort(c, "output buffer over its cap");
        return false;
    }
    if (flushes_itself(c) && queued == 0 && (bufferevent_get_enabled(c->bev) & EV_WRITE)) {
        /* The bufferevent wrote the last of what the socket refused: the
         * flush pass writes again (its write event is already off, so this
         * costs no syscall). */
        bufferevent_disable(c->bev, EV_WRITE);
    }
    uint8_t hdr[10];
    size_t hl = sg_ws_frame_header(hdr, opcode, len);
    evbuffer_add(out, hdr, hl);
    evbuffer_add(out, data, len);
    if (flushes_itself(c) && !(bufferevent_get_enabled(c->bev) & EV_WRITE))
        sg_conns_want_flush(c->d->table, &c->row);
    return true;
}

/* Sends one text message. Returns false when the connection takes no more
 * frames: it is closing, or the output bound would be exceeded (then it is
 * cut: marked dead, released by the deferred pass). */
static bool send_text(sg_conn *c, const char *data, size_t len)
{
    if (c->state != SG_CONN_OPEN)
        return false;
    return write_frame(c, SG_WS_OP_TEXT, data, len);
}

/* Sends a close frame with code and reason, then waits for the client's.
 * The session hears of it from the deferred pass. parser_failed: the input
 * can no longer be read as frames (a protocol violation), so the client's
 * close frame would never be recognised: our side ends at once instead
 * (RFC 6455 §7.1.7, failing the connection). */
static void close_with(sg_conn *c, uint16_t code, const char *reason, bool parser_failed)
{
    if (c->state != SG_CONN_OPEN)
        return;
    if (!c->leave_reason)
        c->leave_reason = code == SG_WS_CLOSE_GOING_AWAY && c->d->draining ? "shutdown" : "disconnect";
    end_session(c);
    uint8_t payload[125];
    size_t n = sg_ws_close_payload(payload, code, reason);
    if (!write_frame(c, SG_WS_OP_CLOSE, payload, n))
        return;
    c->close_code = code;
    c->state = SG_CONN_CLOSING;
    int64_t wait = CLOSE_WAIT_MS;
    if (c->d->draining && c->d->cfg->drain_ms < wait)
        wait = c->d->cfg->drain_ms;
    arm(c, PHASE_CLOSE_WAIT, wait);
    /* Otherwise our side stays open until the client's close frame (RFC 6455
     * §7.1.1: the server ends TCP once the handshake is complete). A FIN
     * right behind our close frame made haproxy tear the whole tunnel down:
     * the client's close frame never arrived, and a client still sending got
     * a reset that destroyed our close frame before it was read (1006). */
    start_linger(c, parser_failed);
}

static void conn_close(sg_conn *c, uint16_t code, const char *reason)
{
    close_with(c, code, reason, false);
}

bool sg_conn_send_by_id(void *deps, uint64_t conn_id, const char *data, size_t len)
{
    sg_conn *c = conn_by_id(deps, conn_id);
    return c && send_text(c, data, len);
}

void sg_conn_close_by_id(void *deps, uint64_t conn_id, uint16_t code, const char *reason)
{
    sg_conn *c = conn_by_id(deps, conn_id);
    if (c)
        conn_close(c, code, reason);
}

/* Collects the ids first: closing changes the registry. */
static size_t all_ids(const sg_conn_deps *d, uint64_t **ids)
{
    size_t n = sg_conns_count(d->table);
    *ids = sg_xmalloc((n ? n : 1) * sizeof **ids);
    return sg_conns_ids(d->table, *ids, n);
}

void sg_conn_close_all(const sg_conn_deps *d)
{
    uint64_t *ids;
    size_t n = all_ids(d, &ids);
    for (size_t j = 0; j < n; j++) {
        sg_conn *c = conn_by_id(d, ids[j]);
        if (!c)
            continue;
        if (c->state == SG_CONN_OPEN) {
            c->leave_reason = "shutdown";
            conn_close(c, SG_WS_CLOSE_GOING_AWAY, "server shutting down");
        } else if (c->state == SG_CONN_HANDSHAKE) {
            conn_abort(c, "draining");
        }
    }
    free(ids);
}

void sg_conn_abort_all(const sg_conn_deps *d)
{
    if (!d->table)
        return;
    uint64_t *ids;
    size_t n = all_ids(d, &ids);
    for (size_t j = 0; j < n; j++) {
        sg_conn *c = conn_by_id(d, ids[j]);
        if (!c)
            continue;
        c->leave_reason = "shutdown";
        conn_abort(c, "exit");
    }
    free(ids);
    sg_conns_run_deferred(d->table);
}

/* ---- lingering close ------------------------------------------------- */

/* Ends our direction once everything we wrote has left: close_notify under
 * TLS, then a FIN. */
static void half_close(sg_conn *c)
{
    if (c->half_closed)
        return;
    c->half_closed = true;
    bufferevent_disable(c->bev, EV_WRITE);
    if (c->tls) {
        SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
        /* One try: with the output drained the socket takes the alert. If it
         * does not, the FIN alone still ends the stream (a "ragged" EOF). */
        if (ssl && SSL_is_init_finished(ssl))
            SSL_shutdown(ssl);
        ERR_clear_error(); /* nothing of it may leak into the bufferevent's error report */
    }
    shutdown(bufferevent_getfd(c->bev), SHUT_WR);
}

static void on_linger_drained(struct bufferevent *bev, void *arg)
{
    sg_conn *c = arg;
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        half_close(c);
}

/* A close we start (a close frame, a refused handshake) while the client may
 * still be sending: closing a socket with unread input makes the kernel answer
 * with a reset, which fails the client's pending send and discards whatever
 * it had not read yet, our last frames included; the client then sees 1006.
 * So, as nginx's lingering_close: the input goes on being read (a close frame
 * still counts) and discarded until the client ends its side (EOF),
 * LINGER_MAX_BYTES were discarded, or the connection's close timer fires.
 * With end_ours our side ends (FIN) as soon as the output has left: a refused
 * handshake has nothing more to say. A close frame waits for the client's
 * (conn_close). Input already buffered stays where it is: the parser may be
 * reading it right now. */
static void start_linger(sg_conn *c, bool end_ours)
{
    write_by_bufferevent(c);
    c->linger_bytes = 0;
    bufferevent_setwatermark(c->bev, EV_READ, 0, 0);
    bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
    bufferevent_enable(c->bev, EV_READ);
    if (end_ours)
        end_our_side(c);
}

/* Our side ends (FIN) as soon as the output has left; the linger goes on,
 * its byte count with it. */
static void end_our_side(sg_conn *c)
{
    bufferevent_setcb(c->bev, on_read, on_linger_drained, on_event, c);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        half_close(c);
}

/* Charges n bytes read after our close to the linger bound. Returns false,
 * the connection aborted, past it. */
static bool linger_charge(sg_conn *c, size_t n)
{
    if (n > LINGER_MAX_BYTES - c->linger_bytes) {
        conn_abort(c, "linger bound");
        return false;
    }
    c->linger_bytes += (uint32_t)n;
    return true;
}

static void discard_input(sg_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t n = evbuffer_get_length(in);
    if (linger_charge(c, n))
        evbuffer_drain(in, n);
}

/* ---- handshake ------------------------------------------------------- */

static void refuse(sg_conn *c, int status, const char *code, const char *message, const char *extra)
{
    const sg_conn_deps *d = c->d;
    sg_buf b;
    sg_buf_init(&b);
    sg_http_error_response(&b, status, code, message, extra);
    bufferevent_write(c->bev, b.data, b.len);
    sg_buf_free(&b);
    char label[24];
    snprintf(label, sizeof label, "%d", status);
    static const char *known[] = {"400", "401", "403", "404", "426", "503"};
    const char *l = "other";
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        if (strcmp(known[i], label) == 0)
            l = known[i];
    sg_metrics_inc(&d->metrics->handshakes, l);
    c->state = SG_CONN_HTTP_CLOSING;
    arm(c, PHASE_CLOSE_WAIT, HTTP_LINGER_MS);
    start_linger(c, true);
}

static void auth_failure(sg_conn *c, const char *reason, const char *message, bool token_present)
{
    const sg_conn_deps *d = c->d;
    sg_metrics_inc(&d->metrics->auth_failures, reason);
    if (sg_log_begin(d->log, SG_LOG_INFO, "ws.auth_failure")) {
        sg_log_int(d->log, "conn", (int64_t)c->row.id);
        sg_log_str(d->log, "reason", reason);
        sg_log_end(d->log);
    }
    char extra[160];
    if (token_present) {
        snprintf(extra, sizeof extra,
                 "WWW-Authenticate: Bearer error=\"invalid_token\", error_description=\"%s\"\r\n", reason);
    } else {
        snprintf(extra, sizeof extra, "WWW-Authenticate: Bearer\r\n");
    }
    refuse(c, 401, "unauthorized", message, extra);
}

/* When the socket peer is a trusted proxy, the client address is the one
 * X-Forwarded-For gives behind our proxies (sg_forwarded_client): the
 * per-IP count moves to it. */
static void apply_forwarded_for(sg_conn *c, const sg_http_request *req)
{
    const sg_config *cfg = c->d->cfg;
    if (!cfg->max_connections_per_ip || !cfg->trusted_proxies)
        return;
    if (!sg_ip_in_list(c->row.ip, cfg->trusted_proxies))
        return;
    char client[SG_IP_TEXT_MAX];
    if (!sg_forwarded_client(req, cfg->trusted_proxies, client))
        return;
    sg_conns_move_ip(c->d->table, &c->row, client);
}

static void open_ws(sg_conn *c, const sg_buf *response, size_t head_len, sg_claims *claims);
static void on_sub_checked(void *ud, uint64_t conn_id, sg_sub_verdict v);

static void revoked(sg_conn *c)
{
    auth_failure(c, "revoked", "the token's subject is revoked", true);
}

static void sub_unavailable(sg_conn *c, const char *message)
{
    refuse(c, 503, "unavailable", message, "Retry-After: 1\r\n");
}

/* The last step of a handshake: a revoked sub is refused. The answer may
 * need Redis: then the handshake waits for it (never the loop), bounded by
 * the Redis timeout. */
static void check_sub(sg_conn *c, const sg_upgrade *up, size_t head_len, sg_claims *claims)
{
    const sg_conn_deps *d = c->d;
    sg_buf response;
    sg_buf_init(&response);
    sg_http_upgrade_response(&response, up); /* up points into the head: built now */
    sg_sub_verdict v = sg_session_check_sub(d->session, c->row.id, claims->sub, on_sub_checked, (void *)d);
    if (v == SG_SUB_PENDING) {
        sg_conn_held *h = sg_xcalloc(1, sizeof *h);
        h->claims = *claims;
        memset(claims, 0, sizeof *claims);
        h->response = response;
        h->head_len = head_len;
        c->held = h;
        arm(c, PHASE_SUB_CHECK, d->cfg->redis_timeout_ms);
        return;
    }
    if (v == SG_SUB_OK)
        open_ws(c, &response, head_len, claims);
    else if (v == SG_SUB_REVOKED)
        revoked(c);
    else
        sub_unavailable(c, "Redis is unreachable");
    sg_claims_clear(claims);
    sg_buf_free(&response);
}

/* Redis answered a held handshake (from the session's reply handler). */
static void on_sub_checked(void *ud, uint64_t conn_id, sg_sub_verdict v)
{
    sg_conn *c = conn_by_id(ud, conn_id);
    if (!c || !c->held || c->state != SG_CONN_HANDSHAKE)
        return; /* gone, or it gave up waiting */
    sg_conn_held *h = c->held;
    c->held = NULL;
    disarm(c);
    if (v == SG_SUB_OK) {
        open_ws(c, &h->response, h->head_len, &h->claims);
        /* Frames the client sent right behind its request: read them from
         * the loop, not from inside this Redis reply. */
        if (c->state == SG_CONN_OPEN && evbuffer_get_length(bufferevent_get_input(c->bev)))
            bufferevent_trigger(c->bev, EV_READ, 0);
    } else if (v == SG_SUB_REVOKED) {
        revoked(c);
    } else {
        sub_unavailable(c, "Redis did not answer");
    }
    sg_claims_clear(&h->claims);
    sg_buf_free(&h->response);
    free(h);
}

static void handle_handshake(sg_conn *c)
{
    const sg_conn_deps *d = c->d;
    const sg_config *cfg = d->cfg;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t len = evbuffer_get_length(in);
    size_t cap = (size_t)cfg->max_header_bytes;
    size_t take = len < cap + 1 ? len : cap + 1;
    const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)take);
    /* Only what arrived since the last read is scanned; the head is parsed
     * once, when complete, so a head in many small pieces costs linear time. */
    size_t scanned = c->head_scanned;
    int rc = sg_http_scan_head(p, take, cap, &scanned);
    c->head_scanned = (uint32_t)scanned;
    sg_http_request req;
    if (rc > 0)
        rc = sg_http_parse_request(p, (size_t)rc, cap, &req);
    if (rc == SG_HTTP_INCOMPLETE)
        return;
    if (rc == SG_HTTP_TOO_LARGE) {
        sg_metrics_inc(&d->metrics->caps, "header_bytes");
        refuse(c, 400, "bad_request", "request head over the size cap", NULL);
        return;
    }
    if (rc < 0) {
        refuse(c, 400, "bad_request", "malformed HTTP request", NULL);
        return;
    }
    size_t head_len = (size_t)rc;
    if (!(req.path.n == 3 && memcmp(req.path.p, "/ws", 3) == 0)) {
        if (cfg->static_dir && sg_static_serve(c->bev, cfg->static_dir, &req)) {
            sg_metrics_inc(&d->metrics->handshakes, "static");
            c->state = SG_CONN_HTTP_CLOSING;
            arm(c, PHASE_CLOSE_WAIT, 10000);
            start_linger(c, true);
            return;
        }
        refuse(c, 404, "not_found", "no such path; the WebSocket endpoint is /ws", NULL);
        return;
    }
    if (d->draining) {
        refuse(c, 503, "unavailable", "node is draining", "Retry-After: 1\r\n");
        return;
    }
    if (!sg_bus_available(d->bus)) {
        refuse(c, 503, "unavailable", "Redis is unreachable", "Retry-After: 1\r\n");
        return;
    }
    sg_upgrade_policy pol = {.path = "/ws", .allowed_origins = (const char *const *)cfg->origins,
                             .n_allowed_origins = cfg->norigins};
    if (!cfg->norigins)
        pol.allowed_origins = NULL;
    sg_upgrade up;
    char *token = sg_xmalloc(SG_TOKEN_MAX + 1);
    sg_upgrade_check(&req, &pol, &up, token);
    if (up.status) {
        free(token);
        refuse(c, up.status, up.code, up.message, NULL);
        return;
    }
    apply_forwarded_for(c, &req);
    if (sg_conns_over_ip_cap(d->table, &c->row)) {
        free(token);
        sg_metrics_inc(&d->metrics->caps, "max_connections_per_ip");
        refuse(c, 503, "unavailable", "too many connections from this address", "Retry-After: 5\r\n");
        return;
    }
    if (up.token_source == SG_TOKEN_NONE) {
        free(token);
        auth_failure(c, "missing", up.message ? up.message
                                            : "no token: send Authorization: Bearer, a bearer. subprotocol or access_token",
                     false);
        return;
    }
    if (up.token_malformed) {
        free(token);
        auth_failure(c, "malformed", up.message ? up.message : "token is malformed", true);
        return;
    }
    sg_auth_failure fail;
    sg_claims claims;
    int64_t now_s = (int64_t)(sg_now_wall_ms() / 1000);
    if (sg_auth_verify(d->auth, token, up.token_len, now_s, &claims, &fail) < 0) {
        free(token);
        auth_failure(c, fail.reason, fail.message, true);
        return;
    }
    free(token);
    if (up.traceparent.n)
        sg_traceparent_parse(up.traceparent.p, up.traceparent.n, &c->trace_parent);
    check_sub(c, &up, head_len, &claims);
}

static void open_ws(sg_conn *c, const sg_buf *response, size_t head_len, sg_claims *claims)
{
    const sg_conn_deps *d = c->d;
    const sg_config *cfg = d->cfg;
    bufferevent_write(c->bev, response->data, response->len);
    evbuffer_drain(bufferevent_get_input(c->bev), head_len);

    sg_log_hash(d->log, claims->sub, c->user);

    c->state = SG_CONN_OPEN;
    uint64_t accepted_ms = c->opened_ms;
    c->opened_ms = c->last_rx_ms = sg_now_mono_ms();
    c->opened_us = sg_now_wall_us();
    if (d->tracer) {
        /* The connection's span is a child of the client's trace when the
         * handshake carried a traceparent. */
        sg_span_start(&c->span, &c->trace_parent);
        sg_span_ctx hs;
        sg_span_start(&hs, &c->span);
        sg_span_attr a[] = {{"ws.conn_id", NULL, (int64_t)c->row.id}, {"ws.tls", c->tls ? "true" : "false", 0}};
        sg_tracer_record(d->tracer, "ws.handshake", SG_SPAN_SERVER, &hs, &c->span,
                         c->opened_us - (c->opened_ms - accepted_ms) * 1000, c->opened_us, a, 2, NULL);
    }
    c->frames = (sg_bucket){cfg->rate_conn_frames.burst, c->opened_ms};
    c->bytes = (sg_bucket){cfg->rate_conn_bytes.burst, c->opened_ms};
    sg_ws_parser_init(&c->ws, &WS_CB, c, (size_t)cfg->max_message_bytes);
    bufferevent_setwatermark(c->bev, EV_READ, 0, 0);
    d->metrics->ws_connections++;
    sg_metrics_inc(&d->metrics->handshakes, "101");
    if (sg_log_begin(d->log, SG_LOG_INFO, "ws.connect")) {
        sg_log_int(d->log, "conn", (int64_t)c->row.id);
        sg_log_str(d->log, "tls", c->tls ? "true" : "false");
        sg_log_end(d->log);
    }
    if (sg_log_begin(d->log, SG_LOG_INFO, "ws.auth_success")) {
        sg_log_int(d->log, "conn", (int64_t)c->row.id);
        sg_log_str(d->log, "user", c->user);
        sg_log_end(d->log);
    }
    sg_session_open(d->session, c->row.id, claims, d->tracer ? &c->span : NULL); /* it owns the claims now */
    c->in_session = true;
    int64_t first = cfg->ping_interval_ms;
    if (cfg->join_timeout_ms && cfg->join_timeout_ms < first)
        first = cfg->join_timeout_ms;
    arm(c, PHASE_PING, first);
}

/* ---- frames ---------------------------------------------------------- */

static void refill(sg_bucket *b, const sg_rate *r, uint64_t now)
{
    b->tokens += (double)(now - b->last_ms) * r->rate / 1000.0;
    if (b->tokens > r->burst)
        b->tokens = r->burst;
    b->last_ms = now;
}

/* The local guard: frames and bytes per connection, before Redis, charged
 * for one frame of len payload bytes at its header. Returns true when the
 * frame may pass. */
static bool local_admit(sg_conn *c, uint64_t now, size_t len)
{
    const sg_config *cfg = c->d->cfg;
    bool ok = true;
    if (cfg->rate_conn_frames.rate > 0) {
        refill(&c->frames, &cfg->rate_conn_frames, now);
        ok = c->frames.tokens >= 1;
    }
    if (ok && cfg->rate_conn_bytes.rate > 0) {
        refill(&c->bytes, &cfg->rate_conn_bytes, now);
        ok = c->bytes.tokens >= (double)len;
    }
    if (ok) {
        if (cfg->rate_conn_frames.rate > 0)
            c->frames.tokens -= 1;
        if (cfg->rate_conn_bytes.rate > 0)
            c->bytes.tokens -= (double)len;
        if (c->last_drop_ms && now - c->last_drop_ms > SG_WARN_INTERVAL_MS)
            c->over_since_ms = 0;
        return true;
    }
    /* Excess that goes on for FLOOD_CLOSE_MS (drops at least once a second) closes the connection. */
    if (!c->over_since_ms || now - c->last_drop_ms > SG_WARN_INTERVAL_MS)
        c->over_since_ms = now;
    c->last_drop_ms = now;
    return false;
}

/* An error the transport itself sends (local limits, oversize messages). */
static void send_error(sg_conn *c, const char *code, const char *message)
{
    sg_metrics_inc(&c->d->metrics->errors, code);
    sg_buf b;
    sg_buf_init(&b);
    sg_wire_error(&b, code, message, NULL, NULL);
    send_text(c, b.data, b.len);
    sg_buf_free(&b);
}

static void rate_warning(sg_conn *c, const char *scope)
{
    /* The session keeps the connection's one warning clock, shared with the
     * Redis-held buckets: at most one warning a second in all. */
    sg_session_dropped(c->d->session, c->row.id, scope);
}

/* Every frame is charged at its header, control frames included: a message
 * that never ends (empty continuations) or a ping flood pays as it goes,
 * where charging a message when it ends let both through unmetered. A data
 * frame over the limit dooms its message (dropped when it ends, with a
 * warning); a ping over it is not answered. A close frame is always heard. */
static int ws_on_frame(void *ud, uint8_t opcode, uint64_t len)
{
    sg_conn *c = ud;
    if (c->state != SG_CONN_OPEN || opcode == SG_WS_OP_CLOSE)
        return 0; /* after our close only the linger bound applies */
    bool data = opcode == SG_WS_OP_TEXT || opcode == SG_WS_OP_CONT;
    if (opcode == SG_WS_OP_TEXT)
        c->drop_message = false;
    uint64_t now = sg_now_mono_ms();
    /* len <= 125 for control frames and <= the message cap for data frames:
     * the parser checked both before this call. */
    bool ok = local_admit(c, now, (size_t)len);
    if (data)
        c->drop_message |= !ok;
    else
        c->drop_control = !ok;
    if (!ok && now - c->over_since_ms >= FLOOD_CLOSE_MS) {
        sg_metrics_inc(&c->d->metrics->caps, "flood");
        conn_close(c, SG_WS_CLOSE_POLICY, "message rate over the limit for too long");
        return 1;
    }
    return 0;
}

static int ws_on_text(void *ud, const uint8_t *data, size_t len)
{
    sg_conn *c = ud;
    bool drop = c->drop_message;
    c->drop_message = false;
    if (c->state != SG_CONN_OPEN)
        return 0; /* after our close frame, only the client's close matters */
    if (drop) {
        rate_warning(c, "connection");
        return c->state == SG_CONN_OPEN ? 0 : 1;
    }
    sg_session_on_text(c->d->session, c->row.id, (const char *)data, len, sg_now_wall_us());
    return c->state == SG_CONN_OPEN ? 0 : 1;
}

static int ws_on_ping(void *ud, const uint8_t *data, size_t len)
{
    sg_conn *c = ud;
    if (c->state != SG_CONN_OPEN)
        return 0;
    if (c->drop_control) {
        rate_warning(c, "connection");
        return c->state == SG_CONN_OPEN ? 0 : 1;
    }
    write_frame(c, SG_WS_OP_PONG, data, len);
    return c->state >= SG_CONN_DEAD;
}

static int ws_on_pong(void *ud, const uint8_t *data, size_t len)
{
    sg_conn *c = ud;
    c->ping_outstanding = false;
    return 0;
}

static int ws_on_close(void *ud, uint16_t code, const uint8_t *reason, size_t len)
{
    sg_conn *c = ud;
    c->close_rcvd = true;
    if (c->state == SG_CONN_OPEN) {
        /* Echo the client's code (RFC 6455 §5.5.1), then close TCP. */
        uint16_t echo = code == SG_WS_CLOSE_NO_STATUS ? SG_WS_CLOSE_NORMAL : code;
        c->leave_reason = "disconnect";
        c->close_code = echo;
        end_session(c);
        uint8_t payload[125];
        size_t n = sg_ws_close_payload(payload, echo, "");
        write_frame(c, SG_WS_OP_CLOSE, payload, n);
        if (c->state == SG_CONN_DEAD)
            return 1;
        c->state = SG_CONN_CLOSING;
    }
    flush_then_abort(c);
    return 1;
}

static void protocol_violation(sg_conn *c, int code)
{
    static const struct { int code; const char *reason; } R[] = {
        {SG_WS_CLOSE_PROTOCOL, "protocol error"},
        {SG_WS_CLOSE_UNSUPPORTED, "binary messages are not accepted"},
        {SG_WS_CLOSE_INVALID_DATA, "invalid UTF-8"},
        {SG_WS_CLOSE_POLICY, "message in too many fragments"},
        {SG_WS_CLOSE_TOO_BIG, "message too large"},
    };
    const char *reason = "protocol error";
    for (size_t i = 0; i < sizeof R / sizeof *R; i++)
        if (R[i].code == code)
            reason = R[i].reason;
    if (code == SG_WS_CLOSE_POLICY)
        sg_metrics_inc(&c->d->metrics->caps, "fragments");
    if (code == SG_WS_CLOSE_TOO_BIG) {
        sg_metrics_inc(&c->d->metrics->caps, "message_bytes");
        send_error(c, "payload_too_large", "message over the maximum size");
    }
    close_with(c, (uint16_t)code, reason, true);
}

/* Feeds the input to the parser. After our close frame the parser still
 * looks for the client's close, and everything read counts against the
 * linger bound; once it failed or stopped it returns at once, so the rest is
 * just discarded. */
static void read_frames_in(sg_conn *c, struct evbuffer *in)
{
    while ((c->state == SG_CONN_OPEN || c->state == SG_CONN_CLOSING) && evbuffer_get_length(in)) {
        if (c->close_rcvd)
            return; /* flush_then_abort ends it; reading is off */
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        if (c->state == SG_CONN_CLOSING && !linger_charge(c, v.iov_len))
            return;
        int rc = sg_ws_parser_feed(&c->ws, v.iov_base, v.iov_len);
        if (c->state == SG_CONN_DEAD)
            return; /* the bufferevent is gone */
        evbuffer_drain(in, v.iov_len);
        if (rc > 0 && c->state == SG_CONN_OPEN)
            protocol_violation(c, rc);
    }
}

static void read_frames(sg_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    sg_session *session = c->d->session;
    /* What this read brings goes to Redis in as few calls as it can. */
    sg_session_read_begin(session);
    read_frames_in(c, in);
    sg_session_read_end(session);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    sg_conn *c = arg;
    switch (c->state) {
    case SG_CONN_HANDSHAKE:
        if (c->held)
            return; /* the head stays where it is until the check answers */
        handle_handshake(c);
        if (c->state == SG_CONN_OPEN && evbuffer_get_length(bufferevent_get_input(bev)))
            read_frames(c);
        break;
    case SG_CONN_OPEN:
    case SG_CONN_CLOSING:
        c->last_rx_ms = sg_now_mono_ms();
        read_frames(c);
        break;
    default: /* a refused request's rest, while our answer leaves */
        discard_input(c);
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    sg_conn *c = arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        /* The TCP connection ended without a close frame: the client may
         * come back and resume (docs/protocol.md §9). */
        if (c->state == SG_CONN_OPEN && !c->close_rcvd)
            c->lost = true;
        if (c->state == SG_CONN_HANDSHAKE && c->tls && (what & BEV_EVENT_ERROR))
            sg_metrics_inc(&c->d->metrics->handshakes, "tls_error");
        conn_abort(c, (what & BEV_EVENT_EOF) ? "eof" : "socket error");
    }
}

/* Milliseconds until the next thing the heartbeat timer must look at: the
 * ping due at `due`, or the join deadline if that comes first. */
static int64_t next_wake(const sg_conn *c, uint64_t now, uint64_t due)
{
    const sg_config *cfg = c->d->cfg;
    int64_t ms = due > now ? (int64_t)(due - now) : 1;
    if (cfg->join_timeout_ms && !sg_session_ever_joined(c->d->session, c->row.id)) {
        uint64_t jd = c->opened_ms + (uint64_t)cfg->join_timeout_ms;
        int64_t jms = jd > now ? (int64_t)(jd - now) : 1;
        if (jms < ms)
            ms = jms;
    }
    return ms > 0 ? ms : 1;
}

/* The connection's timer came due (the table's wheel). */
static void on_timer(sg_conns_entry *e)
{
    sg_conn *c = conn_of(e);
    const sg_conn_deps *d = c->d;
    const sg_config *cfg = d->cfg;
    uint64_t now = sg_now_mono_ms();
    switch (c->timer_phase) {
    case PHASE_HANDSHAKE:
        sg_metrics_inc(&d->metrics->caps, "handshake_timeout");
        conn_abort(c, "handshake timeout");
        return;
    case PHASE_PING: {
        if (cfg->join_timeout_ms && !sg_session_ever_joined(d->session, c->row.id) &&
            now - c->opened_ms >= (uint64_t)cfg->join_timeout_ms) {
            sg_metrics_inc(&d->metrics->caps, "join_timeout");
            conn_close(c, SG_WS_CLOSE_POLICY, "no join in time");
            return;
        }
        uint64_t due = (c->ping_sent_ms ? c->ping_sent_ms : c->opened_ms) + (uint64_t)cfg->ping_interval_ms;
        if (now + 1 < due) {
            /* Woke for the join deadline, or a little early: libevent
             * schedules from its cached loop time, we read the clock fresh. */
            arm(c, PHASE_PING, next_wake(c, now, due));
            return;
        }
        c->ping_sent_ms = now;
        c->ping_outstanding = true;
        write_frame(c, SG_WS_OP_PING, "", 0);
        if (c->state == SG_CONN_OPEN)
            arm(c, PHASE_PONG, cfg->pong_timeout_ms);
        return;
    }
    case PHASE_PONG:
        if (!c->ping_outstanding || c->last_rx_ms > c->ping_sent_ms) {
            /* A pong, or anything else since the ping: alive. */
            arm(c, PHASE_PING, next_wake(c, now, c->ping_sent_ms + (uint64_t)cfg->ping_interval_ms));
            return;
        }
        c->leave_reason = "timeout";
        c->lost = true;
        c->close_code = SG_WS_CLOSE_GOING_AWAY;
        sg_metrics_inc(&d->metrics->caps, "pong_timeout");
        end_session(c);
        conn_abort(c, "pong timeout");
        return;
    case PHASE_SUB_CHECK:
        /* Redis did not answer the revocation check in time. */
        drop_held(c);
        sub_unavailable(c, "Redis did not answer");
        return;
    case PHASE_CLOSE_WAIT:
    default:
        if (c->state == SG_CONN_CLOSING && !c->half_closed) {
            /* No close frame came back: end our side now and linger a little
             * more for the client's EOF, so the input it may still be sending
             * does not turn our close() into a reset. What it sent since our
             * close frame still counts against the linger bound. */
            end_our_side(c);
            arm(c, PHASE_CLOSE_WAIT, HTTP_LINGER_MS);
            return;
        }
        conn_abort(c, c->state == SG_CONN_HTTP_CLOSING ? "refused" : "close timeout");
        return;
    }
}
