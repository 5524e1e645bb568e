/* SPDX-License-Identifier: Apache-2.0 */
/* ops: the gateway's Redis operations, one function each, with named
 * arguments. Each lays its struct out in the order of the KEYS/ARGV names
 * at the top of its lua/ file and makes the FCALL through the bus, so the
 * positional layout lives here and in the Lua and nowhere else.
 *
 * Every call returns what sg_bus_fcall returns: 0, with the bus's on_reply
 * to come exactly once for tag, or -1 when Redis is unavailable (no reply).
 * Arguments are copied into the command before the call returns. */
#ifndef SG_OPS_H
#define SG_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sg/bus.h"
#include "sg/config.h"

/* How long the keys of a room live without a renewal (every key the gateway
 * writes expires, so nothing outlives a crash of every node; a node that
 * comes back reaps the dead ones at once). The nodes holding members renew
 * them every third of it: per room, that is the only periodic Redis work, a
 * share of a batched call every 200 s. Liveness does not depend on it (see
 * lua/nodes.lua). */
#define SG_ROOM_TTL_MS 600000

/* Arguments that depend on the configuration only, formatted once. */
typedef struct sg_ops {
    sg_bus *bus;
    const char *node;     /* SIGNAL_NODE_ID */
    char inst[96];        /* this run of the gateway: "<node>~<random>" */
    char max_peers[24], lease_ms[24], ttl_ms[24], resume_ms[24], buf_max[24], buf_bytes[24], ghost_ms[24];
    /* lua/relay.lua's settings argument: GCRA interval and tolerance in µs
     * ("0": off) for peer, candidate and room, then resume_ms buf_max
     * buf_bytes ttl_ms; resume and catch-up read the buffer caps from it. */
    char relay_settings[320];
    char node_rooms[128]; /* signal:node:{<inst>}:rooms */
} sg_ops;

void sg_ops_init(sg_ops *o, sg_bus *bus, const sg_config *cfg);

/* "room:{R}:peers" and its siblings (wire.h's channel is the peers' one). */
typedef struct sg_room_keys {
    char peers[SG_ROOM_KEY_MAX], buckets[SG_ROOM_KEY_MAX], seq[SG_ROOM_KEY_MAX], acl[SG_ROOM_KEY_MAX];
} sg_room_keys;
void sg_room_keys_of(sg_room_keys *k, const char *room);

typedef struct sg_join_args {
    const char *room, *peer, *holder, *subhash, *sub;
    bool claim_ok;   /* the token's rooms claim allows the room */
    const char *rt;  /* hash of the new resume token, "" when resumption is off */
} sg_join_args;
int sg_ops_join(const sg_ops *o, const sg_join_args *a, uint64_t tag);

typedef struct sg_leave_args {
    const char *room, *peer, *holder;
    const char *reason; /* leave | disconnect | timeout | shutdown | lost (grace, §9) */
} sg_leave_args;
int sg_ops_leave(const sg_ops *o, const sg_leave_args *a, uint64_t tag);

/* The relays one connection sent one target in one read, in order: one call
 * (lua/relay.lua) carries up to SG_RELAY_BATCH_MAX of them. */
#define SG_RELAY_BATCH_MAX 16
typedef struct sg_relay_item {
    const char *kind;        /* offer | answer | candidate */
    const char *ts_us;       /* arrival at the sender's gateway, µs (wall) */
    const char *traceparent; /* "-" when tracing is off */
    const char *frame;       /* the relay frame the target gets (wire.h) */
    size_t frame_len;
} sg_relay_item;
typedef struct sg_relay_args {
    const char *room, *from, *to, *holder;
    size_t holder_len;
    int n; /* 1..SG_RELAY_BATCH_MAX */
    sg_relay_item item[SG_RELAY_BATCH_MAX];
} sg_relay_args;
int sg_ops_relay(const sg_ops *o, const sg_relay_args *a, uint64_t tag);

typedef struct sg_resume_args {
    const char *room, *peer, *holder, *subhash;
    bool claim_ok;
    const char *sub;
    const char *rt_old, *rt_new; /* hashes of the presented and the fresh resume token */
    uint64_t last_seq;
} sg_resume_args;
int sg_ops_resume(const sg_ops *o, const sg_resume_args *a, uint64_t tag);

int sg_ops_catchup(const sg_ops *o, const char *room, const char *peer, uint64_t last_seq, uint64_t tag);

/* Several rooms in one call (one hash slot's worth in a cluster): the caller
 * lays out the per-room arguments (lua/reassert.lua). */
int sg_ops_reassert(const sg_ops *o, const char *const *rooms, int nrooms, bool silent, int nargs,
                    const char **args, uint64_t tag);

/* A deadline this instance watches (grace period, ghost) has passed. */
int sg_ops_expire(const sg_ops *o, const char *room, const char *peer, uint64_t until_ms, uint64_t tag);

/* Node liveness: the heartbeat (which hands out dead instances, and keeps
 * this instance's room set from expiring), the rooms of a dead instance,
 * one of them reaped, and the dead instance forgotten. */
int sg_ops_nodes(const sg_ops *o, uint64_t tag);
int sg_ops_dead_rooms(const sg_ops *o, const char *dead, uint64_t tag);
int sg_ops_reap(const sg_ops *o, const char *room, const char *dead, uint64_t tag);
int sg_ops_forget(const sg_ops *o, const char *dead);

/* This instance answers for room R (members, grace periods, ghosts) or no
 * longer does: signal:node:{<inst>}:rooms, for whoever reaps it. */
int sg_ops_room_held(const sg_ops *o, const char *room, bool held);
/* The whole set anew (after Redis was away, when SADDs and SREMs may have
 * been lost): exactly rooms[0..n). */
int sg_ops_rooms_held_reset(const sg_ops *o, const char *const *rooms, size_t n);

/* ---- backend control (lua/control.lua, docs/backend-control.md) --------- */

/* The end (ms) of a revocation of the sub whose SHA-1 is sub_sha1 (ZSCORE:
 * nil when there is none), and every revocation still running at now_ms
 * (ZRANGEBYSCORE ... WITHSCORES, at most SG_OPS_REVOKED_LIST_MAX). */
int sg_ops_revoked_score(const sg_ops *o, const char *sub_sha1, uint64_t tag);
#define SG_OPS_REVOKED_LIST_MAX 100000
int sg_ops_revoked_list(const sg_ops *o, uint64_t now_ms, uint64_t tag);

/* One control call as a complete command (FCALL name numkeys keys...
 * args...), for a client of its own (the signal-gateway subcommands) and
 * the documentation: the layout lives here and in lua/control.lua only.
 * Strings handed in must outlive the struct's use. */
typedef struct sg_control_call {
    sg_room_keys k;
    char num[24];
    const char *argv[10];
    int argc;
} sg_control_call;
void sg_control_kick(sg_control_call *c, const char *room, const char *peer, const char *reason);
void sg_control_close_room(sg_control_call *c, const char *room, const char *reason);
void sg_control_revoke(sg_control_call *c, const char *sub, int64_t ttl_s);

#endif
