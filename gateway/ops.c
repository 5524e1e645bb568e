#include "sg/ops.h"
#include "sg/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sg_ops_init(sg_ops *o, sg_bus *bus, const sg_config *cfg)
{
    memset(o, 0, sizeof *o);
    o->bus = bus;
    o->node = cfg->node_id;
#define FMT(field, v) snprintf(o->field, sizeof o->field, "%lld", (long long)(v))
    FMT(max_peers, cfg->room_max_peers);
    FMT(lease_ms, cfg->lease_ms);
    /* Keys outlive three missed refreshes, then expire: nothing outlives a crash. */
    FMT(ttl_ms, cfg->lease_ms * 3);
    FMT(resume_ms, cfg->resume_ms);
    FMT(buf_max, cfg->resume_buffer_max);
    FMT(buf_bytes, cfg->resume_buffer_bytes);
    /* A ghost's own node may still be in its reconnect backoff. */
    FMT(ghost_ms, cfg->lease_ms + SG_BUS_BACKOFF_MAX_MS);
#undef FMT
    const sg_rate *rs[3] = {&cfg->rate_peer, &cfg->rate_candidate, &cfg->rate_room};
    for (int i = 0; i < 3; i++) {
        snprintf(o->rate[i][0], sizeof o->rate[i][0], "%.6g", rs[i]->rate);
        snprintf(o->rate[i][1], sizeof o->rate[i][1], "%.6g", rs[i]->burst);
    }
}

static int eval(const sg_ops *o, sg_script_id s, const char *room, int argc, const char **argv,
                const size_t *lens, uint64_t tag)
{
    return sg_bus_eval(o->bus, s, room, argc, argv, lens, tag);
}

#define NARGS(a) ((int)(sizeof(a) / sizeof *(a)))

/* lua/join.lua */
int sg_ops_join(const sg_ops *o, const sg_join_args *a, uint64_t tag)
{
    const char *argv[] = {a->room, a->peer, a->holder, o->node, a->subhash, a->sub, a->claim_ok ? "1" : "0",
                          o->max_peers, o->lease_ms, o->ttl_ms, o->resume_ms, a->rt};
    return eval(o, SG_SCRIPT_JOIN, a->room, NARGS(argv), argv, NULL, tag);
}

/* lua/leave.lua */
int sg_ops_leave(const sg_ops *o, const sg_leave_args *a, uint64_t tag)
{
    const char *argv[] = {a->room, a->peer, a->holder, a->reason, o->resume_ms};
    return eval(o, SG_SCRIPT_LEAVE, a->room, NARGS(argv), argv, NULL, tag);
}

/* lua/relay.lua: the hot path, so the lengths of what it already knows are
 * not measured again. */
int sg_ops_relay(const sg_ops *o, const sg_relay_args *a, uint64_t tag)
{
    const char *argv[] = {a->room, a->from, a->to, a->holder, a->kind, a->ts_us, a->traceparent, a->frame,
                          o->rate[0][0], o->rate[0][1], o->rate[1][0], o->rate[1][1], o->rate[2][0], o->rate[2][1],
                          o->ttl_ms, o->resume_ms, o->buf_max, o->buf_bytes};
    size_t lens[NARGS(argv)];
    for (int i = 0; i < NARGS(argv); i++)
        lens[i] = i == 3 ? a->holder_len : i == 7 ? a->frame_len : strlen(argv[i]);
    return eval(o, SG_SCRIPT_RELAY, a->room, NARGS(argv), argv, lens, tag);
}

/* lua/resume.lua */
int sg_ops_resume(const sg_ops *o, const sg_resume_args *a, uint64_t tag)
{
    char last[24];
    snprintf(last, sizeof last, "%llu", (unsigned long long)a->last_seq);
    const char *argv[] = {a->room, a->peer, a->holder, o->node, a->subhash, a->rt_old, a->rt_new, last,
                          o->lease_ms, o->ttl_ms, a->claim_ok ? "1" : "0", a->sub};
    return eval(o, SG_SCRIPT_RESUME, a->room, NARGS(argv), argv, NULL, tag);
}

/* lua/catchup.lua */
int sg_ops_catchup(const sg_ops *o, const sg_catchup_args *a, uint64_t tag)
{
    char last[24];
    snprintf(last, sizeof last, "%llu", (unsigned long long)a->last_seq);
    const char *argv[] = {a->room, a->peer, last};
    return eval(o, SG_SCRIPT_CATCHUP, a->room, NARGS(argv), argv, NULL, tag);
}

/* lua/refresh.lua: the fixed arguments, then the caller's per-room ones. */
int sg_ops_refresh(const sg_ops *o, const char *const *rooms, int nrooms, bool silent, int nargs,
                   const char **args, uint64_t tag)
{
    enum { FIXED = 8 };
    char nr[16];
    snprintf(nr, sizeof nr, "%d", nrooms);
    const char *stack[FIXED + 256];
    const char **argv = (size_t)nargs + FIXED <= sizeof stack / sizeof *stack
                            ? stack : sg_xmalloc(((size_t)nargs + FIXED) * sizeof *argv);
    const char *fixed[FIXED] = {rooms[0], silent ? "1" : "0", o->lease_ms, o->ttl_ms, o->node,
                                o->resume_ms, o->ghost_ms, nr};
    memcpy(argv, fixed, sizeof fixed);
    memcpy(argv + FIXED, args, (size_t)nargs * sizeof *args);
    int rc = sg_bus_eval_rooms(o->bus, SG_SCRIPT_REFRESH, rooms, nrooms, FIXED + nargs, argv, NULL, tag);
    if (argv != stack)
        free(argv);
    return rc;
}
