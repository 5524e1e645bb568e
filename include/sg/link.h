/* SPDX-License-Identifier: Apache-2.0 */
/* link: one Redis server as the bus uses it. A command connection
 * (pipelined calls) and a subscriber connection (sharded pub/sub), up and
 * down together: when either drops, the other is closed too, so the pair is
 * always against the same server (a failover must not split them). The link
 * never reconnects by itself: its owner (bus.c) decides where and when,
 * since that depends on the topology (a URL, Sentinel, a cluster's slot
 * map).
 *
 * Replies and pushes come back through the handlers with the link; every
 * command sent gets exactly one reply callback (NULL when the link drops).
 * Handlers may send, and may close the link; they must not free it. */
#ifndef SG_LINK_H
#define SG_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <hiredis/hiredis.h>

#include "sg/redis_url.h"

struct event_base;
struct ssl_ctx_st;
struct evdns_base;
typedef struct sg_link sg_link;

/* Where a link connects and as whom: a redis_url.h endpoint (host, port,
 * scheme, credentials, database). */
typedef sg_redis_endpoint sg_link_target;

typedef struct sg_link_handlers {
    /* Both connections up (and their init commands answered), or the link
     * went down (why says what happened). Called once per change. */
    void (*on_state)(void *ud, sg_link *l, bool up, const char *why);
    void (*on_reply)(void *ud, sg_link *l, uint64_t tag, redisReply *r);
    void (*on_push)(void *ud, sg_link *l, redisReply *r);
    void (*on_latency)(void *ud, double ms);
    void *ud;
} sg_link_handlers;

typedef struct sg_link_opts {
    int64_t timeout_ms;        /* a command unanswered this long, with Redis silent: down */
    struct evdns_base *dns;
    const char *name;          /* CLIENT SETNAME prefix: "<name>-cmd", "<name>-sub" */
    struct ssl_ctx_st *tls;    /* for rediss:// targets (redis_tls.h); NULL: none can be */
} sg_link_opts;

sg_link *sg_link_new(struct event_base *base, const sg_link_opts *o, const sg_link_handlers *h);
/* Drops both connections (pending replies get NULL, no state callback) and frees. */
void sg_link_free(sg_link *l);

/* Where the next connect goes. */
void sg_link_set_target(sg_link *l, const sg_link_target *t);
/* Connects both connections to the target; the link must be down. -1 when
 * it cannot even start (no state callback then). */
int sg_link_connect(sg_link *l);
/* Drops both connections: pending replies get NULL, then on_state(false). */
void sg_link_close(sg_link *l, const char *why);
/* Drops only the subscriber connection (a wedged subscription); the pair
 * goes down together as always. */
void sg_link_renew_subscriber(sg_link *l);

bool sg_link_up(const sg_link *l);
size_t sg_link_pending(const sg_link *l);
const sg_link_target *sg_link_target_of(const sg_link *l);
/* Same server as host:port. */
bool sg_link_is(const sg_link *l, const char *host, int port);

/* A command on the command connection; on_reply gets tag. -1 when the link
 * is down or too much is pending (no reply callback then). */
int sg_link_send(sg_link *l, int argc, const char **argv, const size_t *lens, uint64_t tag);
/* The same with a command already encoded (a redirected one is sent again
 * as it was). */
int sg_link_send_encoded(sg_link *l, const char *bytes, size_t len, uint64_t tag);
/* A command on the subscriber connection (SSUBSCRIBE, SUNSUBSCRIBE):
 * answers come as pushes. */
int sg_link_sub_send(sg_link *l, int argc, const char **argv);

#endif
