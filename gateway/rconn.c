/* SPDX-License-Identifier: Apache-2.0 */
#include "sg/rconn.h"
#include "sg/redis_tls.h"
#include "sg/resp.h"
#include "sg/util.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef struct pending {
    sg_rconn_reply_cb cb;
    uint64_t tag;
    uint64_t sent_us;
} pending;

struct sg_rconn {
    struct event_base *base;
    sg_rconn_opts o;
    struct bufferevent *bev;
    redisReader *reader;
    struct event *timer;
    pending *q; /* ring of unanswered commands */
    size_t qcap, qhead, qlen;
    size_t init_left; /* init replies still expected */
    uint64_t last_reply_us; /* when Redis last answered anything */
    bool connected;         /* TCP (and TLS handshake) done on this connection */
    bool answered;          /* this connection has had a reply */
    bool up;
    bool in_cb;
    bool close_wanted;
    char close_why[192];
};

static void q_push(sg_rconn *c, sg_rconn_reply_cb cb, uint64_t tag)
{
    if (c->qlen == c->qcap) {
        size_t ncap = c->qcap ? c->qcap * 2 : 64;
        pending *nq = sg_xmalloc(ncap * sizeof *nq);
        for (size_t i = 0; i < c->qlen; i++)
            nq[i] = c->q[(c->qhead + i) % c->qcap];
        free(c->q);
        c->q = nq;
        c->qcap = ncap;
        c->qhead = 0;
    }
    c->q[(c->qhead + c->qlen) % c->qcap] = (pending){cb, tag, sg_now_mono_us()};
    c->qlen++;
}

static pending q_pop(sg_rconn *c)
{
    pending p = c->q[c->qhead];
    c->qhead = (c->qhead + 1) % c->qcap;
    c->qlen--;
    return p;
}

sg_rconn *sg_rconn_new(struct event_base *base, const sg_rconn_opts *opts)
{
    sg_rconn *c = sg_xcalloc(1, sizeof *c);
    c->base = base;
    c->o = *opts;
    if (!c->o.max_pending)
        c->o.max_pending = 1u << 20;
    if (c->o.tls)
        SSL_CTX_up_ref(c->o.tls);
    return c;
}

void sg_rconn_set_tls(sg_rconn *c, struct ssl_ctx_st *tls)
{
    if (tls)
        SSL_CTX_up_ref(tls);
    SSL_CTX_free(c->o.tls);
    c->o.tls = tls;
}

/* Fails every pending command with NULL. Commands sent by those callbacks
 * fail at once (the connection is already down). */
static void fail_pending(sg_rconn *c)
{
    while (c->qlen) {
        pending p = q_pop(c);
        if (p.cb)
            p.cb(c->o.ud, p.tag, NULL);
    }
}

static void teardown(sg_rconn *c)
{
    if (c->bev) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    if (c->reader) {
        redisReaderFree(c->reader);
        c->reader = NULL;
    }
    if (c->timer) {
        event_free(c->timer);
        c->timer = NULL;
    }
    c->up = false;
    c->init_left = 0;
}

static void drop(sg_rconn *c, const char *why)
{
    if (c->in_cb) {
        c->close_wanted = true;
        sg_strlcpy(c->close_why, why, sizeof c->close_why);
        return;
    }
    bool had = c->bev != NULL;
    teardown(c);
    c->in_cb = true;
    fail_pending(c);
    c->in_cb = false;
    if (had && c->o.on_state)
        c->o.on_state(c->o.ud, c, false, why);
}

void sg_rconn_close(sg_rconn *c, const char *why) { drop(c, why ? why : "closed"); }

void sg_rconn_free(sg_rconn *c)
{
    if (!c)
        return;
    teardown(c);
    c->in_cb = true;
    fail_pending(c);
    SSL_CTX_free(c->o.tls);
    free(c->q);
    free(c);
}

bool sg_rconn_is_up(const sg_rconn *c) { return c->up; }
size_t sg_rconn_pending(const sg_rconn *c) { return c->qlen; }

static void handle_reply(sg_rconn *c, redisReply *r)
{
    c->last_reply_us = sg_now_mono_us();
    c->answered = true;
    if (c->init_left) {
        pending p = q_pop(c);
        (void)p;
        c->init_left--;
        if (r->type == REDIS_REPLY_ERROR) {
            char why[160];
            snprintf(why, sizeof why, "init command failed: %.120s", r->str);
            drop(c, why);
            return;
        }
        if (!c->init_left) {
            c->up = true;
            if (c->o.on_state)
                c->o.on_state(c->o.ud, c, true, NULL);
        }
        return;
    }
    if (c->o.pubsub) {
        if (c->o.on_push)
            c->o.on_push(c->o.ud, r);
        return;
    }
    if (!c->qlen) {
        drop(c, "reply without a command");
        return;
    }
    pending p = q_pop(c);
    if (c->o.on_latency)
        c->o.on_latency(c->o.ud, (double)(sg_now_mono_us() - p.sent_us) / 1000.0);
    if (p.cb)
        p.cb(c->o.ud, p.tag, r);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    sg_rconn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    c->in_cb = true;
    while (evbuffer_get_length(in) && !c->close_wanted) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        if (redisReaderFeed(c->reader, v.iov_base, v.iov_len) != REDIS_OK) {
            c->close_wanted = true;
            sg_strlcpy(c->close_why, "reader error", sizeof c->close_why);
            break;
        }
        evbuffer_drain(in, v.iov_len);
        for (;;) {
            void *reply = NULL;
            if (redisReaderGetReply(c->reader, &reply) != REDIS_OK) {
                c->close_wanted = true;
                sg_strlcpy(c->close_why, "protocol error", sizeof c->close_why);
                break;
            }
            if (!reply)
                break;
            handle_reply(c, reply);
            freeReplyObject(reply);
            if (c->close_wanted)
                break;
        }
    }
    c->in_cb = false;
    if (c->close_wanted) {
        c->close_wanted = false;
        drop(c, c->close_why);
    }
}

/* Fills why when OpenSSL named what failed on this connection (a refused
 * certificate, a handshake alert, a bad record). libevent's error list
 * also holds bare SSL_get_error() codes, which name nothing: skipped. A
 * connection reset before the server's alert could be read (TLS 1.3
 * reports a refused client certificate only after the handshake) leaves
 * only those: the socket error or the EOF says it then. */
static bool tls_failure(sg_rconn *c, struct bufferevent *bev, char *why, size_t n)
{
    if (!c->o.tls)
        return false;
    unsigned long e, named = 0;
    while ((e = bufferevent_get_openssl_error(bev)))
        if (!named && ERR_reason_error_string(e))
            named = e;
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    if (!named && (!ssl || SSL_get_verify_result(ssl) == X509_V_OK))
        return false;
    sg_redis_tls_describe(ssl, named, why, n);
    return true;
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    sg_rconn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        c->connected = true;
        int fd = bufferevent_getfd(bev);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
        if (!c->init_left) {
            c->up = true;
            if (c->o.on_state)
                c->o.on_state(c->o.ud, c, true, NULL);
        }
        return;
    }
    char why[192];
    int dns_err = bufferevent_socket_get_dns_error(bev);
    if (tls_failure(c, bev, why, sizeof why))
        ; /* verification, a handshake alert, a bad record: say which */
    else if ((what & BEV_EVENT_EOF) && c->o.tls && !c->answered)
        /* Under TLS 1.3 a server that wants a client certificate refuses a
         * missing or unknown one after the client's side of the handshake,
         * and its alert is often lost to the reset of the connection. */
        snprintf(why, sizeof why, "TLS: connection closed by Redis before any reply "
                                  "(does it require a client certificate?)");
    else if (dns_err)
        snprintf(why, sizeof why, "cannot resolve: %s", evutil_gai_strerror(dns_err));
    else
        snprintf(why, sizeof why, "%s%s",
                 what & BEV_EVENT_EOF ? "connection closed by Redis"
                                      : evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()),
                 /* A TLS port drops what is not a handshake without a word. */
                 !c->o.tls && c->connected && !c->answered ? " before any reply (a TLS port? use rediss://)" : "");
    drop(c, why);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    sg_rconn *c = arg;
    /* Hung, not busy: a Redis that keeps answering a long pipeline is slow,
     * and dropping it would only lose the pipeline and both connections. */
    uint64_t now = sg_now_mono_us(), limit = (uint64_t)c->o.timeout_ms * 1000u;
    if (c->qlen && c->o.timeout_ms && now - c->q[c->qhead].sent_us > limit &&
        now - c->last_reply_us > limit)
        /* A plain port answers a ClientHello with silence (Redis waits for
         * the end of the "inline command" it takes it for). */
        drop(c, c->connected ? "command timed out"
                : c->o.tls ? "TLS: handshake timed out (is the port a TLS port?)"
                           : "connect timed out");
}

/* Encoded in place in the output evbuffer: hiredis' formatter printf'd a
 * "$<len>" per argument into a malloc'd string that was then copied, which
 * was ~15% of the gateway's CPU under relay load (22 arguments a relay). */
static void write_cmd(sg_rconn *c, int argc, const char **argv, const size_t *lens)
{
    size_t n = sg_resp_len(argc, argv, lens);
    if (!n || n > (size_t)EV_SSIZE_MAX)
        return;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    struct evbuffer_iovec v;
    /* One extent, so the encoder can write straight through. Failure is out
     * of memory: see util.h for why we do not carry on. */
    if (evbuffer_reserve_space(out, (ev_ssize_t)n, &v, 1) != 1 || v.iov_len < n)
        abort();
    sg_resp_encode(v.iov_base, argc, argv, lens);
    v.iov_len = n;
    if (evbuffer_commit_space(out, &v, 1) != 0)
        abort();
}

/* A plain socket bufferevent, or one that speaks TLS as a client to host.
 * Either is connected later (by address, or by name through evdns: with
 * TLS too, libevent resolves first and starts the handshake once the
 * socket is up). */
static struct bufferevent *new_bev(sg_rconn *c, const char *host)
{
    if (!c->o.tls)
        return bufferevent_socket_new(c->base, -1, BEV_OPT_CLOSE_ON_FREE);
    SSL *ssl = sg_redis_tls_ssl_new(c->o.tls, host);
    if (!ssl)
        return NULL;
    /* On failure libevent frees the SSL itself (BEV_OPT_CLOSE_ON_FREE). */
    struct bufferevent *bev =
        bufferevent_openssl_socket_new(c->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
    /* Redis closes TLS connections without a close_notify (CLIENT KILL,
     * timeout, shutdown): that is the end of the stream, as over TCP, not
     * an attack on it; replies are framed by RESP, so truncation shows. */
    if (bev)
        bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

int sg_rconn_connect(sg_rconn *c, const char *host, int port, const char *const *const *init)
{
    teardown(c);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    /* Addresses need no resolver; names go through evdns, so a slow DNS
     * never stalls the loop (and every client on it) during a reconnect. */
    hints.ai_flags = c->o.dns ? AI_NUMERICHOST : 0;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    bool by_name = getaddrinfo(host, ps, &hints, &res) != 0 || !res;
    if (by_name && !c->o.dns)
        return -1;
    c->bev = new_bev(c, host);
    if (!c->bev) {
        if (res)
            freeaddrinfo(res);
        return -1;
    }
    /* Replies and pub/sub messages come in bulk under load: read them in
     * bigger bites than libevent's 16 KiB so Redis' output keeps up with
     * what thousands of client sockets feed in. */
    bufferevent_set_max_single_read(c->bev, 256 * 1024);
    c->reader = redisReaderCreate();
    bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    int rc;
    if (by_name) {
        rc = bufferevent_socket_connect_hostname(c->bev, c->o.dns, AF_UNSPEC, host, port);
    } else {
        rc = bufferevent_socket_connect(c->bev, res->ai_addr, (int)res->ai_addrlen);
        freeaddrinfo(res);
    }
    if (rc < 0) {
        teardown(c);
        return -1;
    }
    c->last_reply_us = sg_now_mono_us();
    c->answered = false;
    c->connected = false;
    c->timer = event_new(c->base, -1, EV_PERSIST, on_timer, c);
    struct timeval tv = {0, 200 * 1000};
    event_add(c->timer, &tv);
    /* Init commands are queued before anything else; "up" waits for them. */
    for (size_t i = 0; init && init[i]; i++) {
        int argc = 0;
        while (init[i][argc])
            argc++;
        write_cmd(c, argc, (const char **)init[i], NULL);
        q_push(c, NULL, 0);
        c->init_left++;
    }
    return 0;
}

int sg_rconn_send(sg_rconn *c, int argc, const char **argv, const size_t *lens,
                  sg_rconn_reply_cb cb, uint64_t tag)
{
    if (!c->up || !c->bev || c->close_wanted || c->qlen >= c->o.max_pending)
        return -1;
    write_cmd(c, argc, argv, lens);
    if (!c->o.pubsub)
        q_push(c, cb, tag);
    return 0;
}

int sg_rconn_send_encoded(sg_rconn *c, const char *bytes, size_t len, sg_rconn_reply_cb cb, uint64_t tag)
{
    if (!c->up || !c->bev || c->close_wanted || c->qlen >= c->o.max_pending)
        return -1;
    if (evbuffer_add(bufferevent_get_output(c->bev), bytes, len) != 0)
        abort(); /* out of memory: see util.h */
    if (!c->o.pubsub)
        q_push(c, cb, tag);
    return 0;
}

int sg_rconn_sendv(sg_rconn *c, sg_rconn_reply_cb cb, uint64_t tag, int argc, const char **argv)
{
    return sg_rconn_send(c, argc, argv, NULL, cb, tag);
}
