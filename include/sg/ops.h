/* ops: the gateway's Redis operations, one function each, with named
 * arguments. Each lays its struct out in the order of the ARGV names table
 * at the top of its lua/ script and makes the call through the bus, so the
 * positional layout lives here and in the script and nowhere else.
 *
 * Every call returns what sg_bus_eval returns: 0, with the bus's on_reply
 * to come exactly once for tag, or -1 when Redis is unavailable (no reply).
 * Arguments are copied into the command before the call returns. */
#ifndef SG_OPS_H
#define SG_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sg/bus.h"
#include "sg/config.h"

/* Arguments that depend on the configuration only, formatted once. */
typedef struct sg_ops {
    sg_bus *bus;
    const char *node;
    char max_peers[24], lease_ms[24], ttl_ms[24], resume_ms[24], buf_max[24], buf_bytes[24], ghost_ms[24];
    char rate[3][2][32]; /* peer, candidate, room: rate and burst */
} sg_ops;

void sg_ops_init(sg_ops *o, sg_bus *bus, const sg_config *cfg);

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

typedef struct sg_relay_args {
    const char *room, *from, *to, *holder;
    size_t holder_len;
    const char *kind;        /* offer | answer | candidate */
    const char *ts_us;       /* arrival at the sender's gateway, µs (wall) */
    const char *traceparent; /* "-" when tracing is off */
    const char *frame;       /* the relay frame the target gets (wire.h) */
    size_t frame_len;
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

typedef struct sg_catchup_args {
    const char *room, *peer;
    uint64_t last_seq;
} sg_catchup_args;
int sg_ops_catchup(const sg_ops *o, const sg_catchup_args *a, uint64_t tag);

/* The lease refresh of several rooms in one call: the caller lays out the
 * per-room arguments (see lua/refresh.lua) in argv. */
int sg_ops_refresh(const sg_ops *o, const char *const *rooms, int nrooms, bool silent, int nargs,
                   const char **args, uint64_t tag);

#endif
