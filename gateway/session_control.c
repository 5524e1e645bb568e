/* SPDX-License-Identifier: Apache-2.0 */
/* Backend control (PROTOCOL.md §9; lua/control.lua; docs/backend-control.md)
 * as it reaches this node: a kicked peer's membership dropped without a
 * leave (the function already removed it in Redis), a revoked user's
 * connections closed, and the revocation check of a handshake.
 *
 * Revocations: every node subscribes to the control channel for the
 * node's life. A handshake reads Redis once (ZSCORE of the sub's SHA-1)
 * and also asks the revocations this node heard of: the read and a
 * revocation's message travel on two connections, so a revocation that
 * crosses the read is still caught. Whenever the control subscription
 * comes up (after every reconnect), the node loads the control library
 * and reads every running revocation, so one published while it was not
 * listening still closes its connections. */
#include "session_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- what this node knows of revocations ----------------------------------- */

static bool is_control_channel(const char *channel, size_t chlen)
{
    return chlen == sizeof SG_WIRE_CONTROL_CHANNEL - 1 && memcmp(channel, SG_WIRE_CONTROL_CHANNEL, chlen) == 0;
}

static void prune_revoked(sg_session *s, uint64_t now)
{
    for (;;) {
        bool removed = false;
        size_t i;
        for (sg_map_entry *e = sg_map_first(&s->revoked, &i); e; e = sg_map_next(&s->revoked, &i, e)) {
            if (*(uint64_t *)e->value <= now) {
                free(sg_map_del(&s->revoked, e->key, e->klen));
                removed = true;
                break;
            }
        }
        if (!removed)
            break;
    }
    s->revoked_pruned = s->revoked.count;
}

/* The latest word on a sub decides (lua/control.lua: a short revocation
 * lifts a long one). Ended ones are pruned once the map doubled. */
static void remember_revoked(sg_session *s, const char *sha1, uint64_t until_ms)
{
    uint64_t *v = sg_map_get(&s->revoked, sha1, SG_WIRE_SUB_SHA1_LEN);
    if (!v) {
        if (s->revoked.count >= 2 * s->revoked_pruned + 64)
            prune_revoked(s, sg_now_wall_ms());
        v = sg_xmalloc(sizeof *v);
        sg_map_put(&s->revoked, sha1, SG_WIRE_SUB_SHA1_LEN, v);
    }
    *v = until_ms;
}

static bool revoked_here(const sg_session *s, const char *sha1)
{
    const uint64_t *v = sg_map_get(&s->revoked, sha1, SG_WIRE_SUB_SHA1_LEN);
    return v && *v > sg_now_wall_ms();
}

void control_init(sg_session *s)
{
    sg_map_init(&s->revoked);
    sg_bus_subscribe(s->bus, SG_WIRE_CONTROL_CHANNEL); /* held for the session's life */
}

void control_free(sg_session *s)
{
    size_t i;
    for (sg_map_entry *e = sg_map_first(&s->revoked, &i); e; e = sg_map_next(&s->revoked, &i, e))
        free(e->value);
    sg_map_free(&s->revoked);
}

/* ---- the control channel ----------------------------------------------------- */

/* After every (re)subscription: the revocations published while nobody
 * here listened. (The control library itself is the bus's: it loads it on
 * every master that comes up.) */
static void control_sync(sg_session *s)
{
    s->control_sync_due = false;
    sg_op *list = op_new(s, OP_REVOKED_LIST, 0);
    if (sg_ops_revoked_list(&s->ops, sg_now_wall_ms(), op_tag(list)) < 0) {
        op_free(s, list);
        s->control_sync_due = true;
    }
}

bool control_on_subscribed(sg_session *s, const char *channel, size_t chlen)
{
    if (!is_control_channel(channel, chlen))
        return false;
    control_sync(s);
    return true;
}

void control_on_redis_up(sg_session *s)
{
    if (s->control_sync_due)
        control_sync(s);
}

/* A revoked user's connection: out of its rooms at once (peer_left
 * "kicked"; no grace period, no resumption), then closed with 1008. */
static void revoke_conn(sg_session *s, sg_sconn *c)
{
    leave_all(s, c, "kicked");
    c->cut = true; /* nothing more is written; sg_session_close comes later */
    if (s->io.close)
        s->io.close(s->io.ud, c->id, 1008, "revoked");
}

/* Closes this node's connections of the sub whose SHA-1 is sha1. */
static void apply_revocation(sg_session *s, const char *sha1, uint64_t until_ms, bool announced)
{
    remember_revoked(s, sha1, until_ms);
    if (until_ms <= sg_now_wall_ms())
        return; /* a short revocation lifted a longer one: nothing to close */
    char user[17] = "";
    int64_t closed = 0;
    size_t i;
    for (sg_map_entry *e = sg_map_first(&s->conns, &i); e; e = sg_map_next(&s->conns, &i, e)) {
        sg_sconn *c = e->value;
        char h[SG_WIRE_SUB_SHA1_LEN + 1];
        sg_wire_sub_sha1(c->claims.sub, strlen(c->claims.sub), h);
        if (memcmp(h, sha1, SG_WIRE_SUB_SHA1_LEN) != 0)
            continue;
        sg_strlcpy(user, c->user, sizeof user);
        revoke_conn(s, c); /* changes the room index and the memberships, never the connection table */
        closed++;
    }
    if (closed)
        sg_metrics_add(&s->metrics->control, "revoke", (uint64_t)closed);
    if ((announced || closed) && sg_log_begin(s->log, SG_LOG_INFO, "control.revoke")) {
        if (user[0])
            sg_log_str(s->log, "user", user);
        sg_log_int(s->log, "connections", closed);
        sg_log_int(s->log, "until_ms", (int64_t)until_ms);
        if (!announced)
            sg_log_str(s->log, "source", "resync");
        sg_log_end(s->log);
    }
}

bool control_on_message(sg_session *s, const char *channel, size_t chlen, const char *payload, size_t len)
{
    if (!is_control_channel(channel, chlen))
        return false;
    sg_wire_revoke rv;
    if (sg_wire_parse_revoke(payload, len, &rv))
        apply_revocation(s, rv.sub_sha1, rv.until_ms, true);
    return true;
}

/* {sha1, end, sha1, end...}: the revocations running when the control
 * subscription came back. */
void on_revoked_list_reply(sg_session *s, sg_op *op, redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        log_script_error(s, "revoked_list", r);
        return; /* lost with the connection: the next subscription asks again */
    }
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *h = r->element[i], *end = r->element[i + 1];
        if (h->type != REDIS_REPLY_STRING || h->len != SG_WIRE_SUB_SHA1_LEN || end->type != REDIS_REPLY_STRING)
            continue;
        char sha1[SG_WIRE_SUB_SHA1_LEN + 1];
        memcpy(sha1, h->str, SG_WIRE_SUB_SHA1_LEN);
        sha1[SG_WIRE_SUB_SHA1_LEN] = '\0';
        double until = strtod(end->str, NULL);
        if (until > 0 && until < 1e17)
            apply_revocation(s, sha1, (uint64_t)until, false);
    }
}

/* ---- the handshake check ------------------------------------------------------- */

sg_sub_verdict sg_session_check_sub(sg_session *s, uint64_t conn_id, const char *sub, sg_sub_checked done,
                                    void *ud)
{
    char sha1[SG_WIRE_SUB_SHA1_LEN + 1];
    sg_wire_sub_sha1(sub, strlen(sub), sha1);
    if (revoked_here(s, sha1))
        return SG_SUB_REVOKED;
    if (!sg_bus_available(s->bus))
        return SG_SUB_UNAVAILABLE;
    sg_op *op = op_new(s, OP_SUB_CHECK, conn_id);
    op->done = done;
    op->done_ud = ud;
    sg_strlcpy(op->room, sha1, sizeof op->room);
    if (sg_ops_revoked_score(&s->ops, sha1, op_tag(op)) < 0) {
        op_free(s, op);
        return SG_SUB_UNAVAILABLE;
    }
    return SG_SUB_PENDING;
}

void on_sub_check_reply(sg_session *s, sg_op *op, redisReply *r)
{
    sg_sub_verdict v = SG_SUB_UNAVAILABLE;
    if (r && r->type == REDIS_REPLY_NIL) {
        v = SG_SUB_OK;
    } else if (r && r->type == REDIS_REPLY_STRING) {
        /* Compared with this node's clock: a skew between it and Redis'
         * moves the end of a revocation by as much. */
        double until = strtod(r->str, NULL);
        v = until > (double)sg_now_wall_ms() ? SG_SUB_REVOKED : SG_SUB_OK;
    } else {
        log_script_error(s, "revoked_check", r);
    }
    if (v == SG_SUB_OK && revoked_here(s, op->room))
        v = SG_SUB_REVOKED;
    op->done(op->done_ud, op->conn_id, v);
}

/* ---- kicks ------------------------------------------------------------------------ */

void control_kicked(sg_session *s, sg_sconn *c, sg_membership *m, const char *room, const sg_wire_envelope *e)
{
    /* No membership, or one whose join has not reached Redis yet: the kick
     * was of an earlier one this connection already left. */
    if (!m || m->state == MEM_SUBSCRIBING)
        return;
    bool closed = e->traceparent.n == 10 && memcmp(e->traceparent.p, "close_room", 10) == 0;
    const char *action = closed ? "close_room" : "kick";
    sg_metrics_inc(&s->metrics->control, action);
    if (sg_log_begin(s->log, SG_LOG_INFO, closed ? "control.close_room" : "control.kick")) {
        sg_log_int(s->log, "conn", (int64_t)c->id);
        sg_log_str(s->log, "room", room);
        sg_log_str(s->log, "peer", m->peer);
        sg_log_str(s->log, "user", c->user);
        sg_log_end(s->log);
    }
    /* Redis no longer has the member: no leave, as for "replaced". A join
     * or resume still in flight finds no membership when it is answered
     * and undoes itself. */
    release_membership(s, c, m);
    sg_metrics_inc(&s->metrics->errors, "kicked");
    sg_buf_reset(&s->out);
    sg_wire_kicked(&s->out, room, e->frame.p, e->frame.n);
    send_out(s, c);
}
