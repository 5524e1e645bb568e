/* SPDX-License-Identifier: Apache-2.0 */
/* Joins, leaves and the life of a membership: a slot on the connection, a
 * subscription to the peer's channel (taken before the join goes to Redis,
 * so no relay published right after it can miss this node), the join or
 * resume operation, and the leave when the client or its connection goes. */
#include "session_internal.h"
#include "sg/turn.h"

#include <openssl/evp.h>
#include <openssl/sha.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

sg_membership *find_room(sg_sconn *c, const char *room)
{
    for (uint32_t i = 0; i < c->nrooms; i++)
        if (strcmp(c->rooms[i].room, room) == 0)
            return &c->rooms[i];
    return NULL;
}

/* A new membership slot. Slots grow one at a time: most connections are in
 * one room. */
static sg_membership *add_room(sg_sconn *c)
{
    if (c->nrooms == c->rooms_cap) {
        c->rooms_cap++;
        c->rooms = sg_xrealloc(c->rooms, c->rooms_cap * sizeof *c->rooms);
    }
    sg_membership *m = &c->rooms[c->nrooms++];
    memset(m, 0, sizeof *m);
    return m;
}

/* The correlationId a membership's next join or resume carries. */
static void set_cid(sg_membership *m, const char *cid)
{
    free(m->cid);
    m->cid = cid && *cid ? sg_xstrdup(cid) : NULL;
}

static void remove_room(sg_sconn *c, sg_membership *m)
{
    drop_held(m);
    free(m->fresh_token);
    free(m->room);
    free(m->cid);
    uint32_t i = (uint32_t)(m - c->rooms);
    c->rooms[i] = c->rooms[--c->nrooms];
}

void new_resume_token(sg_membership *m, char hash[65])
{
    uint8_t rnd[24];
    sg_random_bytes(rnd, sizeof rnd);
    free(m->fresh_token);
    m->fresh_token = sg_xmalloc(RESUME_TOKEN_LEN + 1);
    EVP_EncodeBlock((unsigned char *)m->fresh_token, rnd, sizeof rnd); /* 32 characters and a NUL */
    for (char *p = m->fresh_token; *p; p++)
        *p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
    uint8_t d[SHA256_DIGEST_LENGTH];
    SHA256((const uint8_t *)m->fresh_token, RESUME_TOKEN_LEN, d);
    sg_hex(hash, d, sizeof d);
}

/* Drops the local side of a membership: the lease index, the gauge and the
 * channel reference. The Redis side is the caller's business. */
void release_membership(sg_session *s, sg_sconn *c, sg_membership *m)
{
    if (m->state == MEM_JOINED) {
        room_index_remove(s, m->room, c->id, m->peer);
        s->metrics->room_members--;
    }
    char ch[SG_WIRE_CHANNEL_MAX];
    sg_wire_channel(ch, m->room, m->peer);
    sg_bus_unsubscribe(s->bus, ch); /* every membership took one reference at its start */
    remove_room(c, m);
}

/* Releases a membership that never made it and tells the client why. */
void fail_membership(sg_session *s, sg_sconn *c, sg_membership *m, const char *code, const char *message)
{
    char room[SG_ROOM_MAX + 1], cid[SG_CID_MAX + 1] = "";
    sg_strlcpy(room, m->room, sizeof room);
    if (m->cid)
        sg_strlcpy(cid, m->cid, sizeof cid);
    release_membership(s, c, m);
    send_error(s, c, code, message, cid[0] ? cid : NULL, room);
}

void mark_joined(sg_session *s, sg_sconn *c, sg_membership *m)
{
    m->state = MEM_JOINED;
    m->joined_at_ms = sg_now_wall_ms();
    room_index_add(s, m->room, c->id, m->peer, m->joined_at_ms);
    s->metrics->room_members++;
    c->ever_joined = true;
}

/* ---- join ------------------------------------------------------------------ */

static sg_op *membership_op(sg_session *s, sg_sconn *c, sg_membership *m, uint8_t kind)
{
    sg_op *op = op_new(s, kind, c->id);
    sg_strlcpy(op->room, m->room, sizeof op->room);
    sg_strlcpy(op->peer, m->peer, sizeof op->peer);
    if (m->cid)
        sg_strlcpy(op->cid, m->cid, sizeof op->cid);
    op->t0_us = sg_now_wall_us();
    op_trace(s, op, c);
    return op;
}

static void send_join(sg_session *s, sg_sconn *c, sg_membership *m)
{
    char holder[SG_WIRE_HOLDER_MAX], rt[65] = "";
    holder_of(s, c->id, holder);
    if (s->cfg->resume_ms > 0)
        new_resume_token(m, rt); /* the answer carries it; Redis keeps only its hash */
    sg_join_args a = {.room = m->room, .peer = m->peer, .holder = holder, .subhash = c->subhash,
                      .sub = c->claims.sub, .claim_ok = sg_claims_room_allowed(&c->claims, m->room), .rt = rt};
    sg_op *op = membership_op(s, c, m, OP_JOIN);
    room_announce(s, m->room);
    if (sg_ops_join(&s->ops, &a, op_tag(op)) < 0) {
        op_free(s, op);
        if (m->state == MEM_JOINED)
            send_error(s, c, "unavailable", "Redis is unreachable", m->cid, m->room);
        else
            fail_membership(s, c, m, "unavailable", "Redis is unreachable");
        return;
    }
    set_cid(m, NULL); /* the operation carries it now */
    sg_strlcpy(m->rt, rt, sizeof m->rt);
    if (m->state != MEM_JOINED)
        m->state = MEM_JOINING;
}

/* The subscription is confirmed: the membership's operation can go. */
static void send_pending(sg_session *s, sg_sconn *c, sg_membership *m)
{
    if (m->resume)
        send_resume(s, c, m);
    else
        send_join(s, c, m);
}

static void wait_for_subscription(sg_session *s, const char *ch, uint64_t conn)
{
    size_t n = strlen(ch);
    sg_waitlist *w = sg_map_get(&s->waiters, ch, n);
    if (!w) {
        w = sg_xcalloc(1, sizeof *w);
        sg_map_put(&s->waiters, ch, n, w);
    }
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 2;
        w->conns = sg_xrealloc(w->conns, w->cap * sizeof *w->conns);
    }
    w->conns[w->n++] = conn;
}

void rooms_on_subscribed(sg_session *s, const char *channel, size_t chlen)
{
    char room[SG_ROOM_MAX + 1];
    sg_wire_str peer;
    if (!sg_wire_parse_channel(channel, chlen, room, sizeof room, &peer))
        return;
    catch_up_on_subscribed(s, room, peer.p, peer.n);
    sg_waitlist *w = sg_map_del(&s->waiters, channel, chlen);
    if (!w)
        return;
    for (size_t i = 0; i < w->n; i++) {
        sg_sconn *c = sess_conn(s, w->conns[i]);
        sg_membership *m = c ? find_room(c, room) : NULL;
        if (m && m->state == MEM_SUBSCRIBING && strlen(m->peer) == peer.n && memcmp(m->peer, peer.p, peer.n) == 0)
            send_pending(s, c, m);
    }
    free(w->conns);
    free(w);
}

/* Takes a membership slot, subscribes to the peer's channel and sends the
 * join or resume once Redis confirms the subscription. */
void start_membership(sg_session *s, sg_sconn *c, const sg_msg *msg, bool resume)
{
    sg_membership *m = add_room(c);
    m->room = sg_xstrdup(msg->room);
    sg_strlcpy(m->peer, msg->peer, sizeof m->peer);
    set_cid(m, msg->has_cid ? msg->cid : NULL);
    m->state = MEM_SUBSCRIBING;
    m->resume = resume;
    if (resume) {
        /* Only the token's hash is kept: it is all Redis compares. */
        uint8_t d[SHA256_DIGEST_LENGTH];
        SHA256((const uint8_t *)msg->resume_token, strlen(msg->resume_token), d);
        sg_hex(m->rt_old, d, sizeof d);
        m->resume_from = msg->last_seq;
    }
    char ch[SG_WIRE_CHANNEL_MAX];
    sg_wire_channel(ch, m->room, m->peer);
    if (sg_bus_subscribe(s->bus, ch))
        send_pending(s, c, m);
    else
        wait_for_subscription(s, ch, c->id);
}

void handle_join(sg_session *s, sg_sconn *c, const sg_msg *msg)
{
    const char *cid = msg->has_cid ? msg->cid : NULL;
    sg_membership *m = find_room(c, msg->room);
    if (m) {
        if (strcmp(m->peer, msg->peer) != 0) {
            send_error(s, c, "bad_request", "this connection is in the room with another peerId", cid, msg->room);
            return;
        }
        if (m->state == MEM_SUBSCRIBING || m->state == MEM_RESUMING) {
            send_error(s, c, "bad_request", "a join or resume of this room is in progress", cid, msg->room);
            return;
        }
        set_cid(m, cid);
        send_join(s, c, m); /* idempotent in Redis: answers joined, broadcasts nothing */
        return;
    }
    if (c->nrooms >= (uint32_t)s->cfg->rooms_per_connection) {
        send_error(s, c, "too_many_rooms", "this connection is in as many rooms as allowed", cid, msg->room);
        return;
    }
    start_membership(s, c, msg, false);
}

void session_fields(sg_session *s, sg_sconn *c, sg_membership *m, sg_wire_session *w, sg_buf *ice)
{
    const sg_config *cfg = s->cfg;
    w->room = m->room;
    w->peer = m->peer;
    w->resume_token = m->fresh_token;
    if (cfg->turn_secret) {
        sg_turn_append_ice_servers(ice, cfg->turn_secret, cfg->turn_urls, c->claims.sub,
                                   (int64_t)(sg_now_wall_ms() / 1000), cfg->turn_ttl_s);
        w->ice_servers = ice->data;
    }
}

static void send_joined(sg_session *s, sg_sconn *c, sg_membership *m, const redisReply *r, const char *cid)
{
    peer_list pl;
    peer_list_from(&pl, r, 1);
    sg_wire_session w = {.peers = pl.v, .npeers = pl.n, .cid = cid};
    sg_buf ice;
    sg_buf_init(&ice);
    session_fields(s, c, m, &w, &ice);
    sg_buf_reset(&s->out);
    sg_wire_joined(&s->out, &w);
    sg_buf_free(&ice);
    peer_list_free(&pl);
    send_out(s, c);
    free(m->fresh_token); /* sent (or never will be); only its hash is kept */
    m->fresh_token = NULL;
}

/* ---- leaves Redis never answered ---------------------------------------------- */

/* A connection that ended while Redis was away (a blip, a hung server that
 * kept its data) would otherwise stay a member for as long as this instance
 * lives: the re-assert after the reconnect only puts back what this
 * instance holds, it removes nothing. leave.lua is idempotent: a record
 * another connection holds now, or none, is left alone, and a grace period
 * already started is answered again. */
static void unsure_leave(sg_session *s, uint64_t conn_id, const char *room, const char *peer, const char *reason)
{
    if (s->unsure_n == SG_SESSION_UNSURE_LEAVES_MAX) {
        s->unsure_head = (s->unsure_head + 1) % s->unsure_cap; /* the oldest goes */
        s->unsure_n--;
        s->unsure_dropped++;
    }
    if (s->unsure_n == s->unsure_cap) {
        size_t cap = s->unsure_cap ? s->unsure_cap * 2 : 64;
        if (cap > SG_SESSION_UNSURE_LEAVES_MAX)
            cap = SG_SESSION_UNSURE_LEAVES_MAX;
        sg_unsure_leave *v = sg_xmalloc(cap * sizeof *v);
        for (size_t i = 0; i < s->unsure_n; i++)
            v[i] = s->unsure[(s->unsure_head + i) % s->unsure_cap];
        free(s->unsure);
        s->unsure = v;
        s->unsure_cap = cap;
        s->unsure_head = 0;
    }
    sg_unsure_leave *u = &s->unsure[(s->unsure_head + s->unsure_n++) % s->unsure_cap];
    u->conn_id = conn_id;
    sg_strlcpy(u->room, room, sizeof u->room);
    sg_strlcpy(u->peer, peer, sizeof u->peer);
    sg_strlcpy(u->reason, reason, sizeof u->reason);
}

void retry_unsure_leaves(sg_session *s)
{
    if (s->unsure_dropped && sg_log_begin(s->log, SG_LOG_WARN, "room.leave_dropped")) {
        sg_log_int(s->log, "leaves", (int64_t)s->unsure_dropped);
        sg_log_str(s->log, "why", "more unanswered leaves than kept while Redis was away");
        sg_log_end(s->log);
    }
    s->unsure_dropped = 0;
    for (size_t k = 0; k < SG_SESSION_UNSURE_LEAVES_PER_TICK && s->unsure_n; k++) {
        sg_unsure_leave u = s->unsure[s->unsure_head];
        s->unsure_head = (s->unsure_head + 1) % s->unsure_cap;
        s->unsure_n--;
        issue_leave(s, u.conn_id, u.room, u.peer, u.reason, false, NULL); /* back in the list if it fails */
    }
}

void issue_leave(sg_session *s, uint64_t conn_id, const char *room, const char *peer, const char *reason,
                 bool reply, const char *cid)
{
    char holder[SG_WIRE_HOLDER_MAX];
    holder_of(s, conn_id, holder);
    sg_leave_args a = {.room = room, .peer = peer, .holder = holder, .reason = reason};
    sg_op *op = op_new(s, OP_LEAVE, conn_id);
    sg_strlcpy(op->room, room, sizeof op->room);
    sg_strlcpy(op->peer, peer, sizeof op->peer);
    if (cid)
        sg_strlcpy(op->cid, cid, sizeof op->cid);
    op->reply_left = reply;
    sg_strlcpy(op->reason, reason, sizeof op->reason);
    op->t0_us = sg_now_wall_us();
    sg_sconn *c = sess_conn(s, conn_id);
    if (c)
        op_trace(s, op, c);
    /* A grace period would be this instance's to watch: the room stays in
     * its set until the answer says. */
    op->lost = strcmp(reason, "lost") == 0 && s->cfg->resume_ms > 0;
    if (op->lost)
        room_pending(s, room);
    if (sg_ops_leave(&s->ops, &a, op_tag(op)) < 0) {
        if (op->lost)
            room_settled(s, room);
        op_free(s, op);
        unsure_leave(s, conn_id, room, peer, reason);
        if (reply && c)
            send_error(s, c, "unavailable", "Redis is unreachable", cid, room);
    }
}

static void join_failed(sg_session *s, sg_sconn *c, sg_membership *m, sg_op *op, const redisReply *r)
{
    const char *code = "unavailable", *msg = "Redis did not answer";
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[1]->type == REDIS_REPLY_STRING) {
        static const struct { const char *code, *msg; } E[] = {
            {"forbidden", "the token does not allow this room"},
            {"room_full", "the room is full"},
            {"peer_id_taken", "peerId is held by another user"},
        };
        code = "internal";
        msg = "unexpected script reply";
        for (size_t i = 0; i < sizeof E / sizeof *E; i++)
            if (strcmp(r->element[1]->str, E[i].code) == 0) {
                code = E[i].code;
                msg = E[i].msg;
            }
    } else if (r && r->type == REDIS_REPLY_ERROR) {
        code = "internal";
        msg = "script error";
        log_script_error(s, "join", r);
    }
    if (m->state == MEM_JOINED) {
        /* A repeated join that failed leaves the membership as it was. */
        send_error(s, c, code, msg, op->cid[0] ? op->cid : NULL, m->room);
        return;
    }
    set_cid(m, op->cid);
    fail_membership(s, c, m, code, msg);
    room_unannounce(s, op->room);
}

void on_join_reply(sg_session *s, sg_op *op, redisReply *r)
{
    sg_sconn *c = sess_conn(s, op->conn_id);
    sg_membership *m = c ? find_room(c, op->room) : NULL;
    if (m && (strcmp(m->peer, op->peer) != 0 || m->state == MEM_SUBSCRIBING || m->state == MEM_RESUMING))
        m = NULL;
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 && r->element[0]->type == REDIS_REPLY_STRING &&
              strcmp(r->element[0]->str, "error") != 0;
    if (!m) {
        /* The connection left or went while the join was in flight: undo it
         * in Redis if it happened (the script only removes our own record). */
        if (ok)
            issue_leave(s, op->conn_id, op->room, op->peer, "disconnect", false, NULL);
        return;
    }
    if (!ok) {
        join_failed(s, c, m, op, r);
        return;
    }
    const char *cid = op->cid[0] ? op->cid : NULL;
    if (m->state != MEM_JOINED) {
        mark_joined(s, c, m);
        if (sg_log_begin(s->log, SG_LOG_INFO, "room.join")) {
            sg_log_int(s->log, "conn", (int64_t)c->id);
            sg_log_str(s->log, "room", m->room);
            sg_log_str(s->log, "peer", m->peer);
            sg_log_str(s->log, "user", c->user);
            sg_log_str(s->log, "status", r->element[0]->str);
            if (cid)
                sg_log_str(s->log, "correlationId", cid);
            sg_log_int(s->log, "peers", (int64_t)(r->elements - 1) / 2);
            uint64_t now_us = sg_now_wall_us();
            sg_log_dbl(s->log, "duration_ms", now_us > op->t0_us ? (double)(now_us - op->t0_us) / 1000.0 : 0.0);
            sg_log_end(s->log);
        }
    }
    roster_set(s, m->room, r, 1);
    send_joined(s, c, m, r, cid);
}

/* ---- leave ------------------------------------------------------------------ */

static void send_left(sg_session *s, sg_sconn *c, const char *room, const char *peer, const char *cid)
{
    sg_buf_reset(&s->out);
    sg_wire_left(&s->out, room, peer, cid);
    send_out(s, c);
}

static void log_leave(sg_session *s, uint64_t conn, const char *room, const char *peer, const char *reason,
                      const char *cid)
{
    if (sg_log_begin(s->log, SG_LOG_INFO, "room.leave")) {
        sg_log_int(s->log, "conn", (int64_t)conn);
        sg_log_str(s->log, "room", room);
        sg_log_str(s->log, "peer", peer);
        sg_log_str(s->log, "reason", reason);
        if (cid)
            sg_log_str(s->log, "correlationId", cid);
        sg_log_end(s->log);
    }
}

void handle_leave(sg_session *s, sg_sconn *c, const sg_msg *msg)
{
    const char *cid = msg->has_cid ? msg->cid : NULL;
    sg_membership *m = find_room(c, msg->room);
    if (!m || strcmp(m->peer, msg->peer) != 0) {
        /* Not in the room (as that peer): nothing to do, nothing broadcast. */
        send_left(s, c, msg->room, msg->peer, cid);
        return;
    }
    bool in_redis = m->state != MEM_SUBSCRIBING;
    log_leave(s, c->id, m->room, m->peer, "leave", cid);
    release_membership(s, c, m);
    if (in_redis)
        issue_leave(s, c->id, msg->room, msg->peer, "leave", true, cid);
    else
        send_left(s, c, msg->room, msg->peer, cid);
}

void on_leave_reply(sg_session *s, sg_op *op, redisReply *r)
{
    if (!r) /* it may have run, or not: again when Redis is back */
        unsure_leave(s, op->conn_id, op->room, op->peer, op->reason);
    if (op->lost) {
        /* {"grace", until}: the member waits for its resume, and this
         * instance watches the deadline. */
        if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[1]->type == REDIS_REPLY_INTEGER &&
            r->element[1]->integer > 0)
            watch_deadline(s, op->room, op->peer, strlen(op->peer), (uint64_t)r->element[1]->integer, true);
        room_settled(s, op->room);
    }
    log_script_error(s, "leave", r);
    sg_sconn *c = op->reply_left ? sess_conn(s, op->conn_id) : NULL;
    if (!c)
        return;
    if (!r || r->type == REDIS_REPLY_ERROR) {
        send_error(s, c, "unavailable", "Redis did not answer", op->cid[0] ? op->cid : NULL, op->room);
        return;
    }
    send_left(s, c, op->room, op->peer, op->cid);
}

void leave_all(sg_session *s, sg_sconn *c, const char *reason)
{
    while (c->nrooms) {
        sg_membership *m = &c->rooms[c->nrooms - 1];
        char room[SG_ROOM_MAX + 1], peer[SG_PEER_LEN + 1];
        sg_strlcpy(room, m->room, sizeof room);
        sg_strlcpy(peer, m->peer, sizeof peer);
        bool in_redis = m->state != MEM_SUBSCRIBING;
        log_leave(s, c->id, room, peer, reason, NULL);
        release_membership(s, c, m);
        if (in_redis)
            issue_leave(s, c->id, room, peer, reason, false, NULL);
    }
}
