/* SPDX-License-Identifier: Apache-2.0 */
#include "sg/ops.h"
#include "sg/util.h"
#include "sg/wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The names lua/<name>.lua registers, in sg_fn order. */
const char *const sg_fn_names[SG_FN_COUNT] = {
    [SG_FN_JOIN] = "join", [SG_FN_LEAVE] = "leave", [SG_FN_RELAY] = "relay",
    [SG_FN_RESUME] = "resume", [SG_FN_CATCHUP] = "catchup", [SG_FN_REASSERT] = "reassert",
    [SG_FN_EXPIRE] = "expire", [SG_FN_REAP] = "reap", [SG_FN_NODES] = "nodes",
};

#define NODES_KEY "signal:nodes"

/* A token bucket of RATE/BURST as a GCRA cell: one arrival every 1e6/RATE
 * µs, BURST-1 of them early at most (lua/relay.lua). Whole microseconds:
 * the function then parses and writes integers only (a 17-digit fraction
 * costs Redis a strtod and a %.17g per bucket per relay). A rate over 1e6/s
 * is one arrival per µs, i.e. no limit in practice. */
static void gcra(char interval[32], char tolerance[32], const sg_rate *r)
{
    long long iv = 0, tol = 0;
    if (r->rate > 0) {
        double us = 1e6 / r->rate;
        iv = us < 1 ? 1 : (long long)(us + 0.5);
        tol = r->burst > 1 ? iv * (long long)(r->burst - 1) : 0;
    }
    snprintf(interval, 32, "%lld", iv);
    snprintf(tolerance, 32, "%lld", tol);
}

void sg_ops_init(sg_ops *o, sg_bus *bus, const sg_config *cfg)
{
    memset(o, 0, sizeof *o);
    o->bus = bus;
    o->node = cfg->node_id;
    uint8_t rnd[4];
    sg_random_bytes(rnd, sizeof rnd);
    char hex[9];
    sg_hex(hex, rnd, sizeof rnd);
    snprintf(o->inst, sizeof o->inst, "%s~%s", cfg->node_id, hex);
    snprintf(o->node_rooms, sizeof o->node_rooms, "signal:node:{%s}:rooms", o->inst);
#define FMT(field, v) snprintf(o->field, sizeof o->field, "%lld", (long long)(v))
    FMT(max_peers, cfg->room_max_peers);
    FMT(lease_ms, cfg->lease_ms);
    FMT(ttl_ms, SG_ROOM_TTL_MS);
    FMT(resume_ms, cfg->resume_ms);
    FMT(buf_max, cfg->resume_buffer_max);
    FMT(buf_bytes, cfg->resume_buffer_bytes);
    /* A ghost's own node may still be in its reconnect backoff. */
    FMT(ghost_ms, cfg->lease_ms + SG_BUS_BACKOFF_MAX_MS);
#undef FMT
    const sg_rate *rs[3] = {&cfg->rate_peer, &cfg->rate_candidate, &cfg->rate_room};
    char rate[3][2][32];
    for (int i = 0; i < 3; i++)
        gcra(rate[i][0], rate[i][1], rs[i]);
    /* One argument, the same on every call: the function parses it once per
     * value (relay_settings in lua/lib.lua), not ten numbers per relay. */
    snprintf(o->relay_settings, sizeof o->relay_settings, "%s %s %s %s %s %s %s %s %s %s", rate[0][0], rate[0][1],
             rate[1][0], rate[1][1], rate[2][0], rate[2][1], o->resume_ms, o->buf_max, o->buf_bytes, o->ttl_ms);
}

void sg_room_keys_of(sg_room_keys *k, const char *room)
{
    /* Room ids are at most 128 characters (proto.h): every key fits. */
    snprintf(k->peers, sizeof k->peers, "room:{%s}:peers", room);
    snprintf(k->buckets, sizeof k->buckets, "room:{%s}:buckets", room);
    snprintf(k->seq, sizeof k->seq, "room:{%s}:seq", room);
    snprintf(k->acl, sizeof k->acl, "room:{%s}:acl", room);
}

#define NARGS(a) ((int)(sizeof(a) / sizeof *(a)))

/* A room function: the room's keys (3, or 4 with the acl) and argv. */
static int room_call(const sg_ops *o, sg_fn fn, const char *room, bool acl, int argc, const char **argv,
                     const size_t *lens, uint64_t tag)
{
    sg_room_keys k;
    sg_room_keys_of(&k, room);
    const char *keys[] = {k.peers, k.buckets, k.seq, k.acl};
    return sg_bus_fcall(o->bus, fn, acl ? 4 : 3, keys, argc, argv, lens, tag);
}

/* lua/join.lua */
int sg_ops_join(const sg_ops *o, const sg_join_args *a, uint64_t tag)
{
    const char *argv[] = {a->room, a->peer, a->holder, o->node, a->subhash, a->sub, a->claim_ok ? "1" : "0",
                          o->max_peers, o->resume_ms, a->rt, o->ttl_ms};
    return room_call(o, SG_FN_JOIN, a->room, true, NARGS(argv), argv, NULL, tag);
}

/* lua/leave.lua */
int sg_ops_leave(const sg_ops *o, const sg_leave_args *a, uint64_t tag)
{
    const char *argv[] = {a->room, a->peer, a->holder, a->reason, o->resume_ms};
    return room_call(o, SG_FN_LEAVE, a->room, false, NARGS(argv), argv, NULL, tag);
}

/* lua/relay.lua: the hot path, so the lengths of what it already knows are
 * not measured again. */
int sg_ops_relay(const sg_ops *o, const sg_relay_args *a, uint64_t tag)
{
    enum { FIXED = 5, PER = 4 };
    if (a->n < 1 || a->n > SG_RELAY_BATCH_MAX)
        return -1;
    const char *argv[FIXED + PER * SG_RELAY_BATCH_MAX] = {a->room, a->from, a->to, a->holder, o->relay_settings};
    size_t lens[FIXED + PER * SG_RELAY_BATCH_MAX];
    for (int i = 0; i < FIXED; i++)
        lens[i] = i == 3 ? a->holder_len : strlen(argv[i]);
    for (int i = 0; i < a->n; i++) {
        const sg_relay_item *it = &a->item[i];
        const char **v = argv + FIXED + PER * i;
        size_t *l = lens + FIXED + PER * i;
        v[0] = it->kind, l[0] = strlen(it->kind);
        v[1] = it->ts_us, l[1] = strlen(it->ts_us);
        v[2] = it->traceparent, l[2] = strlen(it->traceparent);
        v[3] = it->frame, l[3] = it->frame_len;
    }
    sg_room_keys k;
    sg_room_keys_of(&k, a->room);
    const char *keys[] = {k.peers, k.buckets, k.seq};
    return sg_bus_fcall_weighted(o->bus, SG_FN_RELAY, NARGS(keys), keys, FIXED + PER * a->n, argv, lens, tag,
                                 (unsigned)a->n);
}

/* lua/resume.lua */
int sg_ops_resume(const sg_ops *o, const sg_resume_args *a, uint64_t tag)
{
    char last[24];
    snprintf(last, sizeof last, "%llu", (unsigned long long)a->last_seq);
    const char *argv[] = {a->room, a->peer, a->holder, o->node, a->subhash, a->rt_old, a->rt_new, last,
                          a->claim_ok ? "1" : "0", a->sub, o->ttl_ms, o->relay_settings};
    return room_call(o, SG_FN_RESUME, a->room, true, NARGS(argv), argv, NULL, tag);
}

/* lua/catchup.lua */
int sg_ops_catchup(const sg_ops *o, const char *room, const char *peer, uint64_t last_seq, uint64_t tag)
{
    char last[24];
    snprintf(last, sizeof last, "%llu", (unsigned long long)last_seq);
    const char *argv[] = {room, peer, last, o->relay_settings};
    return room_call(o, SG_FN_CATCHUP, room, false, NARGS(argv), argv, NULL, tag);
}

/* lua/reassert.lua: the fixed arguments, then the caller's per-room ones. */
int sg_ops_reassert(const sg_ops *o, const char *const *rooms, int nrooms, bool silent, int nargs,
                    const char **args, uint64_t tag)
{
    enum { FIXED = 6 };
    char nr[16];
    snprintf(nr, sizeof nr, "%d", nrooms);
    const char *fixed[FIXED] = {silent ? "1" : "0", o->ttl_ms, o->node, o->inst, o->ghost_ms, nr};
    const char **argv = sg_xmalloc(((size_t)nargs + FIXED) * sizeof *argv);
    memcpy(argv, fixed, sizeof fixed);
    memcpy(argv + FIXED, args, (size_t)nargs * sizeof *args);
    sg_room_keys *k = sg_xmalloc((size_t)nrooms * sizeof *k);
    const char **keys = sg_xmalloc((size_t)nrooms * 3 * sizeof *keys);
    for (int r = 0; r < nrooms; r++) {
        sg_room_keys_of(&k[r], rooms[r]);
        keys[3 * r] = k[r].peers;
        keys[3 * r + 1] = k[r].buckets;
        keys[3 * r + 2] = k[r].seq;
    }
    int rc = sg_bus_fcall(o->bus, SG_FN_REASSERT, 3 * nrooms, keys, FIXED + nargs, argv, NULL, tag);
    free(keys);
    free(k);
    free(argv);
    return rc;
}

/* lua/expire.lua */
int sg_ops_expire(const sg_ops *o, const char *room, const char *peer, uint64_t until_ms, uint64_t tag)
{
    char until[24];
    snprintf(until, sizeof until, "%llu", (unsigned long long)until_ms);
    const char *argv[] = {room, peer, until};
    return room_call(o, SG_FN_EXPIRE, room, false, NARGS(argv), argv, NULL, tag);
}

/* lua/nodes.lua */
int sg_ops_nodes(const sg_ops *o, uint64_t tag)
{
    const char *keys[] = {NODES_KEY};
    const char *argv[] = {o->inst, o->lease_ms, o->ttl_ms};
    int rc = sg_bus_fcall(o->bus, SG_FN_NODES, 1, keys, NARGS(argv), argv, NULL, tag);
    /* The room set lives while the instance heartbeats (and a room TTL more,
     * for whoever reaps it); another slot in a cluster: its own command. */
    const char *exp[] = {"PEXPIRE", o->node_rooms, o->ttl_ms};
    if (rc == 0)
        sg_bus_command(o->bus, NARGS(exp), exp, NULL, 0);
    return rc;
}

static void node_rooms_key(char out[128], const char *inst)
{
    snprintf(out, 128, "signal:node:{%s}:rooms", inst);
}

int sg_ops_dead_rooms(const sg_ops *o, const char *dead, uint64_t tag)
{
    char key[128];
    node_rooms_key(key, dead);
    const char *argv[] = {"SMEMBERS", key};
    return sg_bus_command(o->bus, NARGS(argv), argv, NULL, tag);
}

/* lua/reap.lua */
int sg_ops_reap(const sg_ops *o, const char *room, const char *dead, uint64_t tag)
{
    const char *argv[] = {room, dead, o->inst, o->resume_ms};
    return room_call(o, SG_FN_REAP, room, false, NARGS(argv), argv, NULL, tag);
}

int sg_ops_forget(const sg_ops *o, const char *dead)
{
    char key[128];
    node_rooms_key(key, dead);
    const char *zrem[] = {"ZREM", NODES_KEY, dead};
    const char *del[] = {"DEL", key};
    int rc = sg_bus_command(o->bus, NARGS(zrem), zrem, NULL, 0);
    return rc < 0 ? rc : sg_bus_command(o->bus, NARGS(del), del, NULL, 0);
}

int sg_ops_room_held(const sg_ops *o, const char *room, bool held)
{
    const char *argv[] = {held ? "SADD" : "SREM", o->node_rooms, room};
    int rc = sg_bus_command(o->bus, NARGS(argv), argv, NULL, 0);
    if (rc == 0 && held) {
        /* The set lives as long as the instance heartbeats (sg_ops_nodes),
         * and a while more for whoever reaps it. */
        const char *exp[] = {"PEXPIRE", o->node_rooms, o->ttl_ms};
        sg_bus_command(o->bus, NARGS(exp), exp, NULL, 0);
    }
    return rc;
}

int sg_ops_rooms_held_reset(const sg_ops *o, const char *const *rooms, size_t n)
{
    const char *del[] = {"DEL", o->node_rooms};
    if (sg_bus_command(o->bus, NARGS(del), del, NULL, 0) < 0)
        return -1;
    enum { CHUNK = 512 };
    const char *argv[2 + CHUNK] = {"SADD", o->node_rooms};
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t k = n - i < CHUNK ? n - i : CHUNK;
        memcpy(argv + 2, rooms + i, k * sizeof *rooms);
        if (sg_bus_command(o->bus, (int)(2 + k), argv, NULL, 0) < 0)
            return -1;
    }
    const char *exp[] = {"PEXPIRE", o->node_rooms, o->ttl_ms};
    return sg_bus_command(o->bus, NARGS(exp), exp, NULL, 0);
}

/* ---- backend control -------------------------------------------------------- */

int sg_ops_revoked_score(const sg_ops *o, const char *sub_sha1, uint64_t tag)
{
    const char *argv[] = {"ZSCORE", SG_WIRE_REVOKED_KEY, sub_sha1};
    return sg_bus_command(o->bus, NARGS(argv), argv, NULL, tag);
}

int sg_ops_revoked_list(const sg_ops *o, uint64_t now_ms, uint64_t tag)
{
    char from[24], max[24];
    snprintf(from, sizeof from, "(%llu", (unsigned long long)now_ms);
    snprintf(max, sizeof max, "%d", SG_OPS_REVOKED_LIST_MAX);
    const char *argv[] = {"ZRANGEBYSCORE", SG_WIRE_REVOKED_KEY, from, "+inf", "WITHSCORES", "LIMIT", "0", max};
    return sg_bus_command(o->bus, NARGS(argv), argv, NULL, tag);
}

/* lua/control.lua: kick and close_room take a room's keys, revoke the
 * revocations' key. */
static void control_room_call(sg_control_call *c, const char *fn, const char *room)
{
    sg_room_keys_of(&c->k, room);
    c->argc = 0;
    c->argv[c->argc++] = "FCALL";
    c->argv[c->argc++] = fn;
    c->argv[c->argc++] = "3";
    c->argv[c->argc++] = c->k.peers;
    c->argv[c->argc++] = c->k.buckets;
    c->argv[c->argc++] = c->k.seq;
    c->argv[c->argc++] = room;
}

void sg_control_kick(sg_control_call *c, const char *room, const char *peer, const char *reason)
{
    control_room_call(c, "signal_kick", room);
    c->argv[c->argc++] = peer;
    c->argv[c->argc++] = reason ? reason : "";
}

void sg_control_close_room(sg_control_call *c, const char *room, const char *reason)
{
    control_room_call(c, "signal_close_room", room);
    c->argv[c->argc++] = reason ? reason : "";
}

void sg_control_revoke(sg_control_call *c, const char *sub, int64_t ttl_s)
{
    snprintf(c->num, sizeof c->num, "%lld", (long long)ttl_s);
    c->argc = 0;
    c->argv[c->argc++] = "FCALL";
    c->argv[c->argc++] = "signal_revoke";
    c->argv[c->argc++] = "1";
    c->argv[c->argc++] = SG_WIRE_REVOKED_KEY;
    c->argv[c->argc++] = sub;
    c->argv[c->argc++] = c->num;
}
