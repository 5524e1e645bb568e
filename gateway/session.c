/* SPDX-License-Identifier: Apache-2.0 */
/* The session object: its connection table, message dispatch, the contexts
 * of Redis operations and the one way frames leave (see session_internal.h
 * for how the work is split between files). */
#include "session_internal.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

sg_session *sg_session_new(const sg_session_deps *d)
{
    sg_session *s = sg_xcalloc(1, sizeof *s);
    s->cfg = d->cfg;
    s->log = d->log;
    s->metrics = d->metrics;
    s->tracer = d->tracer;
    s->bus = d->bus;
    s->io = d->io;
    sg_ops_init(&s->ops, d->bus, d->cfg);
    sg_map_init(&s->conns);
    sg_map_init(&s->rooms);
    sg_map_init(&s->waiters);
    sg_map_init(&s->reaping);
    sg_msg_init(&s->msg);
    sg_buf_init(&s->out);
    uint8_t rnd[6];
    sg_random_bytes(rnd, sizeof rnd);
    char hex[13];
    sg_hex(hex, rnd, sizeof rnd);
    snprintf(s->cid_prefix, sizeof s->cid_prefix, "s.%s.", hex);
    control_init(s);
    return s;
}

static void free_sconn(sg_sconn *c)
{
    for (uint32_t i = 0; i < c->nrooms; i++) {
        drop_held(&c->rooms[i]);
        free(c->rooms[i].room);
        free(c->rooms[i].cid);
        free(c->rooms[i].fresh_token);
    }
    free(c->rooms);
    sg_claims_clear(&c->claims);
    free(c);
}

void sg_session_free(sg_session *s)
{
    if (!s)
        return;
    size_t i;
    for (sg_map_entry *e = sg_map_first(&s->conns, &i); e; e = sg_map_next(&s->conns, &i, e))
        free_sconn(e->value);
    sg_map_free(&s->conns);
    room_index_free(s);
    for (sg_map_entry *e = sg_map_first(&s->waiters, &i); e; e = sg_map_next(&s->waiters, &i, e)) {
        sg_waitlist *w = e->value;
        free(w->conns);
        free(w);
    }
    sg_map_free(&s->waiters);
    control_free(s);
    free(s->unsure);
    while (s->op_free) {
        sg_op *op = s->op_free;
        s->op_free = op->next_free;
        free(op);
    }
    sg_msg_clear(&s->msg);
    sg_buf_free(&s->msg.inner);
    sg_buf_free(&s->out);
    sg_buf_free(&s->batch.frames);
    free(s);
}

sg_sconn *sess_conn(const sg_session *s, uint64_t id) { return sg_map_get_u64(&s->conns, id); }

/* The hash Redis keeps of a user's sub (member records, takeover checks). */
static void sub_hash(const sg_config *cfg, const char *sub, char out[65])
{
    uint8_t d[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    const char *key = cfg->sub_hash_key;
    HMAC(EVP_sha256(), key, (int)strlen(key), (const uint8_t *)sub, strlen(sub), d, &n);
    sg_hex(out, d, 32);
}

void sg_session_open(sg_session *s, uint64_t conn_id, sg_claims *claims, const sg_span_ctx *span)
{
    sg_sconn *c = sg_xcalloc(1, sizeof *c);
    c->id = conn_id;
    c->claims = *claims;
    memset(claims, 0, sizeof *claims);
    if (span)
        c->span = *span;
    sub_hash(s->cfg, c->claims.sub, c->subhash);
    sg_log_hash(s->log, c->claims.sub, c->user);
    sg_sconn *old = sg_map_put_u64(&s->conns, conn_id, c);
    if (old) /* ids are never reused; this would be a bug upstream */
        free_sconn(old);
}

void sg_session_close(sg_session *s, uint64_t conn_id, sg_gone why)
{
    sg_sconn *c = sg_map_del_u64(&s->conns, conn_id);
    if (!c)
        return;
    /* Lost without a close frame: with resumption on, the script starts the
     * grace period instead of telling the room. */
    static const char *reasons[] = {[SG_GONE_DISCONNECT] = "disconnect", [SG_GONE_LOST] = "disconnect",
                                    [SG_GONE_TIMEOUT] = "timeout", [SG_GONE_SHUTDOWN] = "shutdown"};
    bool resumable = (why == SG_GONE_LOST || why == SG_GONE_TIMEOUT) && s->cfg->resume_ms > 0;
    c->cut = true; /* nothing more is written to it */
    leave_all(s, c, resumable ? "lost" : reasons[why]);
    free_sconn(c);
}

const char *sg_session_instance(const sg_session *s) { return s->ops.inst; }

bool sg_session_ever_joined(const sg_session *s, uint64_t conn_id)
{
    const sg_sconn *c = sess_conn(s, conn_id);
    return c && c->ever_joined;
}

/* ---- frames out ---------------------------------------------------------- */

bool send_frame(sg_session *s, sg_sconn *c, const char *data, size_t len)
{
    if (c->cut)
        return false;
    if (!s->io.send(s->io.ud, c->id, data, len))
        c->cut = true; /* released later by sg_session_close; its state stays valid until then */
    return !c->cut;
}

bool send_out(sg_session *s, sg_sconn *c) { return send_frame(s, c, s->out.data, s->out.len); }

bool send_relay(sg_session *s, sg_sconn *c, uint64_t seq, const char *frame, size_t len)
{
    if (seq == 0) /* resumption off, or an event: nothing to put in, no copy */
        return send_frame(s, c, frame, len);
    sg_buf_reset(&s->out);
    sg_wire_relay_seq(&s->out, frame, len, seq);
    return send_out(s, c);
}

void send_error(sg_session *s, sg_sconn *c, const char *code, const char *message, const char *cid,
                const char *room)
{
    sg_metrics_inc(&s->metrics->errors, code);
    sg_buf_reset(&s->out);
    sg_wire_error(&s->out, code, message, cid, room);
    send_out(s, c);
}

size_t holder_of(const sg_session *s, uint64_t conn_id, char out[SG_WIRE_HOLDER_MAX])
{
    return sg_wire_holder(out, s->ops.inst, conn_id);
}

void peer_list_from(peer_list *pl, const redisReply *list, size_t from)
{
    size_t cap = list && list->elements > from ? (list->elements - from + 1) / 2 : 0;
    pl->v = cap <= sizeof pl->stack / sizeof *pl->stack ? pl->stack : sg_xmalloc(cap * sizeof *pl->v);
    pl->n = 0;
    for (size_t i = from; i < from + 2 * cap && i < list->elements; i += 2)
        if (list->element[i]->type == REDIS_REPLY_STRING)
            pl->v[pl->n++] = (sg_wire_str){list->element[i]->str, list->element[i]->len};
}

void peer_list_free(peer_list *pl)
{
    if (pl->v != pl->stack)
        free(pl->v);
}

void log_script_error(sg_session *s, const char *script, const redisReply *r)
{
    if (r && r->type == REDIS_REPLY_ERROR && sg_log_begin(s->log, SG_LOG_ERROR, "redis.script_error")) {
        sg_log_str(s->log, "script", script);
        sg_log_strn(s->log, "error", r->str, r->len);
        sg_log_end(s->log);
    }
}

/* ---- operation contexts -------------------------------------------------- */

sg_op *op_new(sg_session *s, uint8_t kind, uint64_t conn_id)
{
    sg_op *op = s->op_free;
    if (op)
        s->op_free = op->next_free;
    else
        op = sg_xmalloc(sizeof *op);
    memset(op, 0, offsetof(sg_op, room));
    op->room[0] = op->peer[0] = op->to[0] = op->cid[0] = '\0';
    op->kind = kind;
    op->conn_id = conn_id;
    return op;
}

void op_free(sg_session *s, sg_op *op)
{
    free(op->rooms);
    op->rooms = NULL;
    op->next_free = s->op_free;
    s->op_free = op;
}

uint64_t op_tag(const sg_op *op) { return (uint64_t)(uintptr_t)op; }

/* Starts an operation's span as a child of its connection's. */
void op_trace(sg_session *s, sg_op *op, const sg_sconn *c)
{
    if (!s->tracer)
        return;
    op->parent = c->span;
    sg_span_start(&op->span, &c->span);
}

/* A refusal is the span's error. */
void op_span_end(sg_session *s, sg_op *op, const redisReply *r)
{
    if (!s->tracer || !op->span.valid)
        return;
    const char *err = NULL;
    if (!r)
        err = "redis unavailable";
    else if (r->type == REDIS_REPLY_ERROR)
        err = "script error";
    else if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2 && r->element[0]->type == REDIS_REPLY_STRING &&
             r->element[1]->type == REDIS_REPLY_STRING &&
             (strcmp(r->element[0]->str, "error") == 0 || strcmp(r->element[0]->str, "rate_limited") == 0))
        err = r->element[1]->str;
    static const char *relay_names[] = {[SG_MSG_OFFER] = "relay.offer", [SG_MSG_ANSWER] = "relay.answer",
                                        [SG_MSG_CANDIDATE] = "relay.candidate"};
    const char *name = op->kind == OP_JOIN ? "room.join" : op->kind == OP_LEAVE ? "room.leave"
                       : op->kind == OP_RESUME ? "room.resume" : relay_names[op->mtype];
    sg_span_attr a[] = {{"signal.room", op->room, 0}, {"signal.peer", op->peer, 0},
                        {"signal.correlation_id", op->cid, 0}, {"ws.conn_id", NULL, (int64_t)op->conn_id},
                        {"signal.to", op->to, 0}};
    sg_tracer_record(s->tracer, name, op->kind == OP_RELAY ? SG_SPAN_PRODUCER : SG_SPAN_INTERNAL, &op->span,
                     &op->parent, op->t0_us, sg_now_wall_us(), a, op->to[0] ? 5 : 4, err);
}

/* ---- Redis in ------------------------------------------------------------- */

void sg_session_on_reply(sg_session *s, uint64_t tag, redisReply *r)
{
    if (!tag)
        return; /* fire-and-forget commands (the delivery probe) */
    sg_op *op = (sg_op *)(uintptr_t)tag;
    if (op->kind != OP_RELAY) /* a relay call answers for several: on_relay_reply ends each one's span */
        op_span_end(s, op, r);
    switch (op->kind) {
    case OP_JOIN: on_join_reply(s, op, r); break;
    case OP_LEAVE: on_leave_reply(s, op, r); break;
    case OP_RELAY: on_relay_reply(s, op, r); break;
    case OP_REASSERT: on_reassert_reply(s, op, r); break;
    case OP_NODES: on_nodes_reply(s, op, r); break;
    case OP_DEAD_ROOMS: on_dead_rooms_reply(s, op, r); break;
    case OP_REAP: on_reap_reply(s, op, r); break;
    case OP_EXPIRE: on_expire_reply(s, op, r); break;
    case OP_RESUME: on_resume_reply(s, op, r); break;
    case OP_CATCHUP: on_catch_up_reply(s, op, r); break;
    case OP_SUB_CHECK: on_sub_check_reply(s, op, r); break;
    case OP_REVOKED_LIST: on_revoked_list_reply(s, op, r); break;
    }
    op_free(s, op);
}

void sg_session_on_message(sg_session *s, const char *channel, size_t chlen, const char *payload, size_t len)
{
    if (!control_on_message(s, channel, chlen, payload, len))
        deliver(s, channel, chlen, payload, len);
}

void sg_session_on_subscribed(sg_session *s, const char *channel, size_t chlen)
{
    if (!control_on_subscribed(s, channel, chlen))
        rooms_on_subscribed(s, channel, chlen);
}

void sg_session_on_channel_moved(sg_session *s, const char *channel, size_t chlen)
{
    char room[SG_ROOM_MAX + 1];
    sg_wire_str peer;
    if (s->cfg->resume_ms > 0 && sg_wire_parse_channel(channel, chlen, room, sizeof room, &peer))
        catch_up_after_move(s, room, peer.p, peer.n);
}

void sg_session_on_redis_up(sg_session *s, bool fresh)
{
    liveness_up(s);
    control_on_redis_up(s);
    if (!fresh)
        return;
    reassert(s, true);
    if (s->cfg->resume_ms > 0)
        start_catch_ups(s);
}

void sg_session_tick(sg_session *s) { liveness_tick(s); }

void sg_session_goodbye(sg_session *s)
{
    if (!s->rooms.count) /* a room still answered for (a grace period) stays reapable */
        sg_ops_forget(&s->ops, s->ops.inst);
}

/* ---- client messages ----------------------------------------------------- */

void sg_session_read_begin(sg_session *s) { s->reading = true; }

void sg_session_read_end(sg_session *s)
{
    s->reading = false;
    relay_flush(s);
}

void sg_session_on_text(sg_session *s, uint64_t conn_id, const char *text, size_t len, uint64_t arrival_us)
{
    sg_sconn *c = sess_conn(s, conn_id);
    if (!c || c->cut)
        return;
    sg_msg *msg = &s->msg; /* decode resets it and reuses its inner buffer */
    sg_proto_error err;
    if (sg_proto_decode(text, len, msg, &err) < 0) {
        sg_metrics_inc(&s->metrics->messages, "invalid");
        send_error(s, c, err.code, err.message, err.has_cid ? err.cid : NULL, err.has_room ? err.room : NULL);
        return;
    }
    sg_metrics_inc(&s->metrics->messages, sg_msg_type_name(msg->type));
    bool relay = msg->type == SG_MSG_OFFER || msg->type == SG_MSG_ANSWER || msg->type == SG_MSG_CANDIDATE;
    if (!relay)
        relay_flush(s); /* what the connection sent before goes to Redis first */
    const char *cid = msg->has_cid ? msg->cid : NULL;
    if (!sg_bus_available(s->bus)) {
        send_error(s, c, "unavailable", "Redis is unreachable; try again shortly", cid, msg->room);
        return;
    }
    /* The relays waiting in the batch count: they go with the next call. */
    if (sg_bus_overloaded(s->bus, (unsigned)s->batch.n) && msg->type != SG_MSG_LEAVE) {
        /* Leaves still go: they shrink the work. */
        send_error(s, c, "unavailable", "Redis is overloaded; try again shortly", cid, msg->room);
        return;
    }
    switch (msg->type) {
    case SG_MSG_JOIN: handle_join(s, c, msg); break;
    case SG_MSG_LEAVE: handle_leave(s, c, msg); break;
    case SG_MSG_OFFER:
    case SG_MSG_ANSWER:
    case SG_MSG_CANDIDATE: handle_relay(s, c, msg, arrival_us); break;
    case SG_MSG_RESUME: handle_resume(s, c, msg); break;
    default: break;
    }
}
