/* SPDX-License-Identifier: Apache-2.0 */
/* session: the protocol's semantics on one node (docs/protocol.md §3-§5, §9). A
 * validated client message becomes a Redis operation (ops.h); a reply or a
 * channel message becomes frames for the clients.
 *
 * The session owns everything it uses: per connection, its identity and
 * memberships; per room, the members this node holds (leases) and the
 * room-mates seen elsewhere (ghosts); the joins waiting for their
 * subscription; the contexts of operations in flight. It knows connections
 * only by id, and reaches them only through sg_session_io, whose calls never
 * re-enter the session and never free anything of it: a connection cut
 * while a frame was being sent is released later, when its owner calls
 * sg_session_close from the top of the event loop. Redis replies and
 * channel messages find their connection by id; it may be gone. */
#ifndef SG_SESSION_H
#define SG_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <hiredis/hiredis.h>

#include "sg/auth.h"
#include "sg/bus.h"
#include "sg/config.h"
#include "sg/log.h"
#include "sg/metrics.h"
#include "sg/trace.h"

typedef struct sg_session sg_session;

/* The way out to the connections. Neither call may call back into the
 * session or free session state; both may be made for a connection that is
 * already gone (a no-op then). */
typedef struct sg_session_io {
    /* Queues one text message. False when the connection no longer takes
     * frames (gone, closing, or just cut for not reading its output): the
     * session then stops writing to it and waits for sg_session_close. */
    bool (*send)(void *ud, uint64_t conn_id, const char *data, size_t len);
    /* Starts closing a connection with a WebSocket close code (a revoked
     * user's, PROTOCOL.md §9). Its end still reaches the session through
     * sg_session_close, later, from the top of the loop. */
    void (*close)(void *ud, uint64_t conn_id, uint16_t code, const char *reason);
    void *ud;
} sg_session_io;

typedef struct sg_session_deps {
    const sg_config *cfg;
    sg_log *log;
    sg_metrics *metrics;
    sg_tracer *tracer; /* NULL: tracing off */
    sg_bus *bus;
    sg_session_io io;
} sg_session_deps;

sg_session *sg_session_new(const sg_session_deps *deps);
/* Frees everything; connections still open are dropped without a word. */
void sg_session_free(sg_session *s);

/* ---- connections (from conn.c, at the top of the event loop) ----------- */

/* A connection passed its handshake. The session takes over claims (the
 * caller's copy is zeroed); span is the connection's trace span. */
void sg_session_open(sg_session *s, uint64_t conn_id, sg_claims *claims, const sg_span_ctx *span);

/* Why a connection went: its rooms hear peer_left with this reason, or with
 * resumption on, a lost connection enters the grace period (§9). */
typedef enum {
    SG_GONE_DISCONNECT = 0, /* the client closed, or a server close it answered */
    SG_GONE_LOST,           /* TCP dropped without a close frame: resumable */
    SG_GONE_TIMEOUT,        /* the heartbeat reaped it: resumable */
    SG_GONE_SHUTDOWN,       /* the node drains */
} sg_gone;

/* The connection is going: leave its rooms and forget it. Idempotent. */
void sg_session_close(sg_session *s, uint64_t conn_id, sg_gone why);

/* One read of a connection's socket: the relays it sends one target between
 * begin and end go to Redis in one call (lua/relay.lua), sent at end (or
 * before anything else the connection sends). Outside, each goes at once. */
void sg_session_read_begin(sg_session *s);
void sg_session_read_end(sg_session *s);

/* A complete text message from an open connection. */
void sg_session_on_text(sg_session *s, uint64_t conn_id, const char *text, size_t len, uint64_t arrival_us);

/* A message of the connection was dropped by a local limit (scope, a
 * metric label): counted, and the client told at most once a second. */
void sg_session_dropped(sg_session *s, uint64_t conn_id, const char *scope);

/* Whether a verified token's sub may open a connection, or was revoked
 * (PROTOCOL.md §9 "Backend control"): one ZSCORE in Redis, read without
 * blocking, plus the revocations this node heard of on its control channel
 * (so one that crosses the read is not missed). */
typedef enum {
    SG_SUB_OK = 0,
    SG_SUB_REVOKED,
    SG_SUB_UNAVAILABLE, /* Redis unreachable or no answer: refuse with 503 */
    SG_SUB_PENDING,     /* the answer comes through the callback */
} sg_sub_verdict;
typedef void (*sg_sub_checked)(void *ud, uint64_t conn_id, sg_sub_verdict verdict);
/* Returns the verdict when it is known at once; SG_SUB_PENDING when done
 * will be called once with it (never inside this call; from
 * sg_session_on_reply, and done may open the connection there). */
sg_sub_verdict sg_session_check_sub(sg_session *s, uint64_t conn_id, const char *sub, sg_sub_checked done,
                                    void *ud);

/* This run's instance name in Redis, "<SIGNAL_NODE_ID>~<random>". */
const char *sg_session_instance(const sg_session *s);

/* The connection joined a room at least once (for the join timeout). */
bool sg_session_ever_joined(const sg_session *s, uint64_t conn_id);

/* ---- Redis (from the bus's handlers) ------------------------------------ */

void sg_session_on_reply(sg_session *s, uint64_t tag, redisReply *r);
void sg_session_on_message(sg_session *s, const char *channel, size_t chlen, const char *payload, size_t len);
void sg_session_on_subscribed(sg_session *s, const char *channel, size_t chlen);
/* A channel's slot moved (Redis Cluster): once it is subscribed on its new
 * owner, what was published meanwhile is caught up. */
void sg_session_on_channel_moved(sg_session *s, const char *channel, size_t chlen);
/* Redis is reachable: the instance's heartbeat goes first, before any
 * membership can. After a reconnect (fresh: Redis' state may be gone) every
 * local membership is re-asserted silently and relays missed meanwhile are
 * caught up. */
void sg_session_on_redis_up(sg_session *s, bool fresh);

/* The node drained: its instance leaves signal:nodes and its set of rooms
 * (nothing is left to reap). Call once every connection is gone. */
void sg_session_goodbye(sg_session *s);

/* ---- time ---------------------------------------------------------------- */

/* Called every SG_SESSION_TICK_MS: renews a slice of the leases. */
#define SG_SESSION_TICK_MS 100
void sg_session_tick(sg_session *s);

#endif
