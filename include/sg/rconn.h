/* SPDX-License-Identifier: Apache-2.0 */
/* rconn: one pipelined RESP connection to Redis on a libevent bufferevent,
 * using hiredis' reader and our own encoder, resp.h (not its async API: hiredis
 * 0.14's subscription table loses a channel's callback when an UNSUBSCRIBE
 * and a SUBSCRIBE of the same channel cross, and it has no command timeouts).
 *
 * Commands are written without waiting for replies; replies are matched in
 * order. A reply callback gets NULL when the connection is lost or a command
 * times out: every pending callback runs exactly once. In pub/sub mode every
 * reply after the init commands goes to the push callback instead.
 *
 * Callbacks must not free the rconn; they may send more commands and may call
 * sg_rconn_close, which takes effect once the callback returns. */
#ifndef SG_RCONN_H
#define SG_RCONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <hiredis/hiredis.h>

struct event_base;
struct ssl_ctx_st;
typedef struct sg_rconn sg_rconn;

typedef void (*sg_rconn_reply_cb)(void *ud, uint64_t tag, redisReply *reply);
typedef void (*sg_rconn_push_cb)(void *ud, redisReply *reply);
/* up == true: connected and the init commands all succeeded.
 * up == false: lost (or never made); err says why. The rconn can be reused
 * with sg_rconn_connect. */
typedef void (*sg_rconn_state_cb)(void *ud, sg_rconn *c, bool up, const char *err);

typedef struct sg_rconn_opts {
    bool pubsub;
    int64_t timeout_ms;   /* command timeout; 0: none */
    size_t max_pending;   /* sends beyond this many unanswered commands fail */
    sg_rconn_state_cb on_state;
    sg_rconn_push_cb on_push;
    /* on_latency, when set, gets each command's round trip in ms. */
    void (*on_latency)(void *ud, double ms);
    /* Resolves host names without blocking the loop; NULL: getaddrinfo. */
    struct evdns_base *dns;
    /* NULL: plain TCP. Set (redis_tls.h): every connection is TLS, with SNI
     * and the certificate check bound to the host given to
     * sg_rconn_connect, and a failed handshake or verification reported
     * through on_state as "TLS: <reason>". The rconn takes its own
     * reference to the context. */
    struct ssl_ctx_st *tls;
    void *ud;
} sg_rconn_opts;

sg_rconn *sg_rconn_new(struct event_base *base, const sg_rconn_opts *opts);
/* Fails pending callbacks with NULL (without a state callback) and frees. */
void sg_rconn_free(sg_rconn *c);

/* Starts connecting; init is a list of commands (each an argv, NULL-terminated
 * list of NUL-terminated strings) sent first, e.g. AUTH and SELECT, whose
 * replies must not be errors. Returns 0 or -1 (state cb not called then). */
int sg_rconn_connect(sg_rconn *c, const char *host, int port, const char *const *const *init);
/* Replaces opts.tls for the next sg_rconn_connect (a connection whose
 * targets differ: sentinels of a list, some rediss://, some not). */
void sg_rconn_set_tls(sg_rconn *c, struct ssl_ctx_st *tls);
/* Drops the connection: pending callbacks get NULL, then on_state(false). */
void sg_rconn_close(sg_rconn *c, const char *why);
bool sg_rconn_is_up(const sg_rconn *c);
size_t sg_rconn_pending(const sg_rconn *c);

/* Sends a command. cb may be NULL (reply discarded). Returns 0, or -1 when
 * the connection is not up or too many commands are pending (cb not called). */
int sg_rconn_send(sg_rconn *c, int argc, const char **argv, const size_t *lens,
                  sg_rconn_reply_cb cb, uint64_t tag);
/* The same with a command already RESP-encoded (len bytes, one command). */
int sg_rconn_send_encoded(sg_rconn *c, const char *bytes, size_t len, sg_rconn_reply_cb cb, uint64_t tag);
/* Convenience for commands from NUL-terminated strings. */
int sg_rconn_sendv(sg_rconn *c, sg_rconn_reply_cb cb, uint64_t tag, int argc, const char **argv);

#endif
