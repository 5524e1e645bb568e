/* SPDX-License-Identifier: Apache-2.0 */
/* Resumption (docs/protocol.md §9) and the catch-up after a subscriber gap: both
 * replay relays from the peer's buffer in Redis while live ones are held,
 * so the client gets each exactly once, in order. */
#include "session_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void hold(sg_membership *m, uint64_t seq, const char *frame, size_t len)
{
    sg_held *h = sg_xmalloc(sizeof *h + len);
    h->next = NULL;
    h->seq = seq;
    h->len = len;
    memcpy(h->frame, frame, len);
    sg_held **pp = &m->held;
    while (*pp)
        pp = &(*pp)->next;
    *pp = h;
}

void drop_held(sg_membership *m)
{
    while (m->held) {
        sg_held *h = m->held;
        m->held = h->next;
        free(h);
    }
}

/* Sends what arrived while a replay was on its way and was not in it. */
void flush_held(sg_session *s, sg_sconn *c, sg_membership *m)
{
    while (m->held) {
        sg_held *h = m->held;
        m->held = h->next;
        if ((h->seq == 0 || h->seq > m->last_seq) && send_relay(s, c, h->seq, h->frame, h->len) &&
            h->seq > m->last_seq)
            m->last_seq = h->seq;
        free(h);
    }
}

/* Every buffered relay of a reply list {seq, frame, ...} after m->last_seq,
 * in order. Returns how many went out. */
static size_t replay(sg_session *s, sg_sconn *c, sg_membership *m, const redisReply *list)
{
    size_t n = 0;
    for (size_t i = 0; i + 1 < list->elements; i += 2) {
        const redisReply *sq = list->element[i], *f = list->element[i + 1];
        if (sq->type != REDIS_REPLY_STRING || f->type != REDIS_REPLY_STRING)
            continue;
        uint64_t seq = strtoull(sq->str, NULL, 10);
        if (seq <= m->last_seq)
            continue;
        if (!send_relay(s, c, seq, f->str, f->len))
            break; /* cut: the rest would go nowhere */
        m->last_seq = seq;
        n++;
    }
    return n;
}

/* ---- resume --------------------------------------------------------------- */

void handle_resume(sg_session *s, sg_sconn *c, const sg_msg *msg)
{
    const char *cid = msg->has_cid ? msg->cid : NULL;
    if (s->cfg->resume_ms <= 0) {
        send_error(s, c, "resume_failed", "resumption is off on this service; join afresh", cid, msg->room);
        return;
    }
    if (find_room(c, msg->room)) {
        send_error(s, c, "bad_request", "this connection is already in the room", cid, msg->room);
        return;
    }
    if (c->nrooms >= (uint32_t)s->cfg->rooms_per_connection) {
        send_error(s, c, "too_many_rooms", "this connection is in as many rooms as allowed", cid, msg->room);
        return;
    }
    start_membership(s, c, msg, true);
}

void send_resume(sg_session *s, sg_sconn *c, sg_membership *m)
{
    char holder[SG_WIRE_HOLDER_MAX], rt_new[65];
    holder_of(s, c->id, holder);
    new_resume_token(m, rt_new);
    sg_resume_args a = {.room = m->room, .peer = m->peer, .holder = holder, .subhash = c->subhash,
                        .claim_ok = sg_claims_room_allowed(&c->claims, m->room), .sub = c->claims.sub,
                        .rt_old = m->rt_old, .rt_new = rt_new, .last_seq = m->resume_from};
    sg_op *op = op_new(s, OP_RESUME, c->id);
    sg_strlcpy(op->room, m->room, sizeof op->room);
    sg_strlcpy(op->peer, m->peer, sizeof op->peer);
    if (m->cid)
        sg_strlcpy(op->cid, m->cid, sizeof op->cid);
    op->t0_us = sg_now_wall_us();
    op_trace(s, op, c);
    room_announce(s, m->room);
    if (sg_ops_resume(&s->ops, &a, op_tag(op)) < 0) {
        op_free(s, op);
        fail_membership(s, c, m, "unavailable", "Redis is unreachable");
        return;
    }
    free(m->cid); /* the operation carries it now */
    m->cid = NULL;
    sg_strlcpy(m->rt, rt_new, sizeof m->rt);
    m->state = MEM_RESUMING;
}

/* {"error", "kicked", reason} (lua/resume.lua). */
static bool kicked_reply(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ARRAY && r->elements == 3 && r->element[1]->type == REDIS_REPLY_STRING &&
           strcmp(r->element[1]->str, "kicked") == 0 && r->element[2]->type == REDIS_REPLY_STRING;
}

void on_resume_reply(sg_session *s, sg_op *op, redisReply *r)
{
    sg_sconn *c = sess_conn(s, op->conn_id);
    sg_membership *m = c ? find_room(c, op->room) : NULL;
    if (m && (strcmp(m->peer, op->peer) != 0 || m->state != MEM_RESUMING))
        m = NULL;
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 4 && r->element[0]->type == REDIS_REPLY_STRING &&
              strcmp(r->element[0]->str, "resumed") == 0 && r->element[1]->type == REDIS_REPLY_ARRAY &&
              r->element[2]->type == REDIS_REPLY_ARRAY && r->element[3]->type == REDIS_REPLY_INTEGER;
    if (!m) {
        if (ok) /* resumed for a connection that is gone: back into grace */
            issue_leave(s, op->conn_id, op->room, op->peer, "lost", false, NULL);
        return;
    }
    if (kicked_reply(r)) {
        /* Kicked while it was away: as if the kick had reached it (no
         * resume, no rejoin by a client that knows), with the reason. */
        release_membership(s, c, m);
        room_unannounce(s, op->room);
        sg_metrics_inc(&s->metrics->errors, "kicked");
        sg_buf_reset(&s->out);
        sg_wire_kicked(&s->out, op->room, r->element[2]->str, r->element[2]->len);
        send_out(s, c);
        return;
    }
    if (!ok) {
        bool refused = r && r->type == REDIS_REPLY_ARRAY;
        log_script_error(s, "resume", r);
        m->cid = op->cid[0] ? sg_xstrdup(op->cid) : NULL;
        fail_membership(s, c, m, refused ? "resume_failed" : "unavailable",
                        refused ? "resume token unknown, expired or not yours, or the room no longer allows you; "
                                  "join afresh"
                                : "Redis did not answer");
        room_unannounce(s, op->room);
        return;
    }
    mark_joined(s, c, m);
    const redisReply *peers = r->element[1], *buffered = r->element[2];
    roster_set(s, m->room, peers, 0);
    size_t nreplay = buffered->elements / 2;
    if (sg_log_begin(s->log, SG_LOG_INFO, "room.resume")) {
        sg_log_int(s->log, "conn", (int64_t)c->id);
        sg_log_str(s->log, "room", m->room);
        sg_log_str(s->log, "peer", m->peer);
        sg_log_str(s->log, "user", c->user);
        sg_log_int(s->log, "replayed", (int64_t)nreplay);
        sg_log_end(s->log);
    }
    peer_list pl;
    peer_list_from(&pl, peers, 0);
    sg_wire_session w = {.peers = pl.v, .npeers = pl.n, .cid = op->cid[0] ? op->cid : NULL,
                         .replayed = (int64_t)nreplay};
    sg_buf ice;
    sg_buf_init(&ice);
    session_fields(s, c, m, &w, &ice);
    sg_buf_reset(&s->out);
    sg_wire_resumed(&s->out, &w);
    sg_buf_free(&ice);
    peer_list_free(&pl);
    send_out(s, c);
    free(m->fresh_token);
    m->fresh_token = NULL;
    /* The buffer, then what arrived meanwhile and was not in it. A lastSeq
     * beyond what was ever sent would hide the next relays: the real one. */
    m->last_seq = m->resume_from;
    if (r->element[3]->integer >= 0 && (uint64_t)r->element[3]->integer < m->last_seq)
        m->last_seq = (uint64_t)r->element[3]->integer;
    replay(s, c, m, buffered);
    flush_held(s, c, m);
}

/* ---- catch-up ------------------------------------------------------------ */

/* After the subscriber connection came back, relays published while it was
 * down reached Redis (and the target's resumption buffer, acknowledged as
 * "buffered") but not this node: fetch them from the buffer once the channel
 * is subscribed again, holding live ones meanwhile. */
static void send_catch_up(sg_session *s, sg_sconn *c, sg_membership *m)
{
    sg_op *op = op_new(s, OP_CATCHUP, c->id);
    sg_strlcpy(op->room, m->room, sizeof op->room);
    sg_strlcpy(op->peer, m->peer, sizeof op->peer);
    m->catch_up = CATCHUP_SENT;
    if (sg_ops_catchup(&s->ops, m->room, m->peer, m->last_seq, op_tag(op)) < 0) {
        op_free(s, op);
        m->catch_up = CATCHUP_WAITING; /* the next reconnect tries again */
    }
}

void start_catch_ups(sg_session *s)
{
    size_t i;
    for (sg_map_entry *e = sg_map_first(&s->conns, &i); e; e = sg_map_next(&s->conns, &i, e)) {
        sg_sconn *c = e->value;
        for (uint32_t j = 0; j < c->nrooms; j++) {
            sg_membership *m = &c->rooms[j];
            if (m->state != MEM_JOINED)
                continue;
            m->catch_up = CATCHUP_WAITING;
            char ch[SG_WIRE_CHANNEL_MAX];
            sg_wire_channel(ch, m->room, m->peer);
            if (sg_bus_subscribed(s->bus, ch))
                send_catch_up(s, c, m);
        }
    }
}

/* Calls fn for each membership this node holds of peer (plen bytes) in room:
 * one, or briefly two during a takeover. */
static void each_membership_of(sg_session *s, const char *room, const char *peer, size_t plen,
                               void (*fn)(sg_session *, sg_sconn *, sg_membership *))
{
    sg_local_room *lr = sg_map_get(&s->rooms, room, strlen(room));
    for (size_t j = 0; lr && j < lr->n; j++) {
        if (strlen(lr->m[j].peer) != plen || memcmp(lr->m[j].peer, peer, plen) != 0)
            continue;
        sg_sconn *c = sess_conn(s, lr->m[j].conn);
        sg_membership *m = c ? find_room(c, room) : NULL;
        if (m)
            fn(s, c, m);
    }
}

static void catch_up_if_waiting(sg_session *s, sg_sconn *c, sg_membership *m)
{
    if (m->catch_up == CATCHUP_WAITING)
        send_catch_up(s, c, m);
}

/* A channel is subscribed again: its membership's catch-up can go. */
void catch_up_on_subscribed(sg_session *s, const char *room, const char *peer, size_t plen)
{
    each_membership_of(s, room, peer, plen, catch_up_if_waiting);
}

static void wait_for_catch_up(sg_session *s, sg_sconn *c, sg_membership *m)
{
    (void)s;
    (void)c;
    if (m->state == MEM_JOINED && m->catch_up == CATCHUP_NONE)
        m->catch_up = CATCHUP_WAITING; /* live relays are held meanwhile */
}

/* The channel left its shard (a slot moved): relays published until it is
 * subscribed again on the new owner are fetched then. */
void catch_up_after_move(sg_session *s, const char *room, const char *peer, size_t plen)
{
    each_membership_of(s, room, peer, plen, wait_for_catch_up);
}

void on_catch_up_reply(sg_session *s, sg_op *op, redisReply *r)
{
    sg_sconn *c = sess_conn(s, op->conn_id);
    sg_membership *m = c ? find_room(c, op->room) : NULL;
    if (!m || strcmp(m->peer, op->peer) != 0 || m->catch_up != CATCHUP_SENT)
        return;
    if (!r) {
        m->catch_up = CATCHUP_WAITING; /* Redis went again; its return retries */
        return;
    }
    bool ok = r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->type == REDIS_REPLY_INTEGER &&
              r->element[1]->type == REDIS_REPLY_ARRAY;
    log_script_error(s, "catchup", r);
    if (ok && r->element[0]->integer == 1)
        m->last_seq = 0; /* Redis lost the buffer: seq numbering started again */
    size_t n = ok ? replay(s, c, m, r->element[1]) : 0;
    s->metrics->relays_delivered += n;
    m->catch_up = CATCHUP_NONE;
    if (n && sg_log_begin(s->log, SG_LOG_INFO, "relay.catch_up")) {
        sg_log_int(s->log, "conn", (int64_t)c->id);
        sg_log_str(s->log, "room", m->room);
        sg_log_str(s->log, "peer", m->peer);
        sg_log_int(s->log, "replayed", (int64_t)n);
        sg_log_end(s->log);
    }
    flush_held(s, c, m);
}
