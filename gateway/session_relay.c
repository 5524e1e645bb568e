/* SPDX-License-Identifier: Apache-2.0 */
/* Relays: an offer/answer/candidate out to Redis (one script call that
 * checks membership, takes tokens, buffers and publishes), its answer back
 * to the sender, and the delivery of channel messages to this node's
 * connections. */
#include "session_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Whether op may join the batch: same connection, room, sender and target,
 * and room left. */
static bool batch_takes(const sg_relay_batch *b, const sg_op *op, size_t frame_len)
{
    if (b->n == 0)
        return true;
    const sg_op *first = b->op[0];
    size_t bytes = b->frames.len;
    return b->n < SG_RELAY_BATCH_MAX && bytes + frame_len <= SG_RELAY_BATCH_BYTES && first->conn_id == op->conn_id &&
           strcmp(first->room, op->room) == 0 && strcmp(first->peer, op->peer) == 0 && strcmp(first->to, op->to) == 0;
}

void relay_flush(sg_session *s)
{
    sg_relay_batch *b = &s->batch;
    if (b->n == 0)
        return;
    sg_op *first = b->op[0];
    char holder[SG_WIRE_HOLDER_MAX];
    size_t hl = holder_of(s, first->conn_id, holder);
    sg_relay_args a = {.room = first->room, .from = first->peer, .to = first->to, .holder = holder,
                       .holder_len = hl, .n = b->n};
    for (int i = 0; i < b->n; i++) {
        a.item[i] = (sg_relay_item){.kind = sg_msg_type_name((sg_msg_type)b->op[i]->mtype), .ts_us = b->ts[i],
                                    .traceparent = b->tp[i], .frame = b->frames.data + b->off[i],
                                    .frame_len = b->len[i]};
        b->op[i]->batch_next = i + 1 < b->n ? b->op[i + 1] : NULL;
    }
    int n = b->n;
    b->n = 0;
    int rc = sg_ops_relay(&s->ops, &a, op_tag(first));
    sg_buf_reset(&b->frames); /* the call copied them */
    if (rc == 0)
        return; /* the call owns the ops now */
    for (int i = 0; i < n; i++) {
        sg_op *op = b->op[i];
        sg_sconn *c = sess_conn(s, op->conn_id);
        if (c)
            send_error(s, c, "unavailable", "Redis is unreachable", op->cid, op->room);
        op_free(s, op);
    }
}

void handle_relay(sg_session *s, sg_sconn *c, const sg_msg *msg, uint64_t arrival_us)
{
    const char *cid = msg->has_cid ? msg->cid : NULL;
    sg_membership *m = find_room(c, msg->room);
    if (!m || m->state == MEM_SUBSCRIBING) {
        send_error(s, c, "not_joined", "join the room before relaying", cid, msg->room);
        return;
    }
    if (m->state == MEM_RESUMING) {
        send_error(s, c, "not_joined", "wait for resumed before relaying", cid, msg->room);
        return;
    }
    if (strcmp(m->peer, msg->from) != 0) {
        send_error(s, c, "forbidden", "from is not this connection's peerId in the room", cid, msg->room);
        return;
    }
    sg_op *op = op_new(s, OP_RELAY, c->id);
    sg_strlcpy(op->room, msg->room, sizeof op->room);
    sg_strlcpy(op->peer, msg->from, sizeof op->peer);
    sg_strlcpy(op->to, msg->to, sizeof op->to);
    op->mtype = (uint8_t)msg->type;
    op->t0_us = arrival_us;
    op->ack = msg->ack;
    if (cid)
        sg_strlcpy(op->cid, cid, sizeof op->cid);
    else
        snprintf(op->cid, sizeof op->cid, "%s%llx", s->cid_prefix, (unsigned long long)++s->cid_counter);

    /* The frame the target gets: built once here, forwarded as it is. */
    sg_relay_batch *b = &s->batch;
    size_t frame_len = sizeof SG_WIRE_RELAY_PREFIX + msg->inner.len + strlen(op->cid) + 32; /* at least its size */
    if (!batch_takes(b, op, frame_len))
        relay_flush(s);
    int i = b->n++;
    b->op[i] = op;
    b->off[i] = b->frames.len;
    sg_wire_relay(&b->frames, msg->inner.data, msg->inner.len, op->cid);
    b->len[i] = b->frames.len - b->off[i];
    snprintf(b->ts[i], sizeof b->ts[i], "%llu", (unsigned long long)arrival_us);
    /* The relay's span travels in the Redis message so the delivery span on
     * the target's node becomes its child. */
    b->tp[i][0] = '-', b->tp[i][1] = '\0';
    op_trace(s, op, c);
    if (op->span.valid)
        sg_traceparent_format(&op->span, b->tp[i]);
    if (!s->reading)
        relay_flush(s);
}

static void send_ack(sg_session *s, sg_sconn *c, const char *cid, const char *status)
{
    sg_buf_reset(&s->out);
    sg_wire_ack(&s->out, cid, status);
    send_out(s, c);
}

static const char *relay_event(uint8_t mtype)
{
    return mtype == SG_MSG_OFFER ? "relay.offer" : mtype == SG_MSG_ANSWER ? "relay.answer" : "relay.candidate";
}

/* A drop is always counted; the client hears of it (and the log says so)
 * at most once a second unless `always`: that one clock covers the local
 * guard and the Redis-held buckets (docs/protocol.md §5). */
static bool warn_due(sg_session *s, sg_sconn *c, const char *scope, const char *room, const char *type,
                     bool always)
{
    uint64_t now = sg_now_mono_ms();
    sg_metrics_inc(&s->metrics->ratelimit_drops, scope);
    c->dropped_since_warn++;
    if (!always && c->warn_ms && now - c->warn_ms < SG_WARN_INTERVAL_MS)
        return false;
    sg_log_ratelimit_drop(s->log, c->id, scope, room, type, c->dropped_since_warn);
    c->warn_ms = now;
    c->dropped_since_warn = 0;
    return true;
}

void sg_session_dropped(sg_session *s, uint64_t conn_id, const char *scope)
{
    sg_sconn *c = sess_conn(s, conn_id);
    if (c && warn_due(s, c, scope, NULL, NULL, false))
        send_error(s, c, "rate_limited", "over this connection's message rate; messages are being dropped", NULL,
                   NULL);
}

/* Over a Redis-held bucket: dropped, and the sender told (candidates at
 * most once a second). */
static void rate_limited(sg_session *s, sg_sconn *c, sg_op *op, const char *arg)
{
    static const char *scopes[] = {"room", "peer", "candidate"};
    const char *scope = "peer";
    for (size_t i = 0; i < 3; i++)
        if (strcmp(arg, scopes[i]) == 0)
            scope = scopes[i];
    if (op->ack) {
        sg_metrics_inc(&s->metrics->ratelimit_drops, scope);
        send_ack(s, c, op->cid, "dropped"); /* the sender asked for a receipt: that is its answer */
        return;
    }
    const char *kind = sg_msg_type_name((sg_msg_type)op->mtype);
    if (!warn_due(s, c, scope, op->room, kind, op->mtype != SG_MSG_CANDIDATE))
        return;
    char msg[96];
    snprintf(msg, sizeof msg, "over the %s rate limit; %s dropped", scope, kind);
    send_error(s, c, "rate_limited", msg, op->cid, op->room);
}

/* One relay's result (r: {status, arg, seq}, an error, or NULL). */
static void relay_result(sg_session *s, sg_op *op, const redisReply *r)
{
    sg_sconn *c = sess_conn(s, op->conn_id);
    if (!c)
        return;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->element[0]->type != REDIS_REPLY_STRING) {
        log_script_error(s, "relay", r);
        send_error(s, c, r ? "internal" : "unavailable", r ? "script error" : "Redis did not answer", op->cid,
                   op->room);
        return;
    }
    const char *status = r->element[0]->str;
    const char *arg = r->elements >= 2 && r->element[1]->type == REDIS_REPLY_STRING ? r->element[1]->str : "";
    if (strcmp(status, "ok") == 0) {
        if (op->ack)
            send_ack(s, c, op->cid, strcmp(arg, "buffered") == 0 ? "buffered" : "delivered");
        if (sg_log_begin(s->log, SG_LOG_INFO, relay_event(op->mtype))) {
            sg_log_int(s->log, "conn", (int64_t)c->id);
            sg_log_str(s->log, "room", op->room);
            sg_log_str(s->log, "from", op->peer);
            sg_log_str(s->log, "to", op->to);
            sg_log_str(s->log, "correlationId", op->cid);
            sg_log_end(s->log);
        }
        return;
    }
    if (strcmp(status, "rate_limited") == 0) {
        rate_limited(s, c, op, arg);
        return;
    }
    static const struct { const char *code, *msg; } E[] = {
        {"not_joined", "this connection is not in the room"},
        {"peer_not_found", "to is not another member of the room"},
        {"peer_unreachable", "no gateway holds the target any more"},
    };
    for (size_t i = 0; i < sizeof E / sizeof *E; i++)
        if (strcmp(arg, E[i].code) == 0) {
            send_error(s, c, E[i].code, E[i].msg, op->cid, op->room);
            return;
        }
    send_error(s, c, "internal", "unexpected script reply", op->cid, op->room);
}

/* A call's reply: one result per relay, in the order of the ops' chain. A
 * reply that is not a list of results (NULL, an error) is every relay's. */
void on_relay_reply(sg_session *s, sg_op *op, redisReply *r)
{
    size_t i = 0;
    for (sg_op *o = op, *next; o; o = next, i++) {
        next = o->batch_next;
        const redisReply *one = r;
        if (r && r->type == REDIS_REPLY_ARRAY && i < r->elements && r->element[i]->type == REDIS_REPLY_ARRAY)
            one = r->element[i];
        op_span_end(s, o, one);
        relay_result(s, o, one);
        if (o != op)
            op_free(s, o); /* the first one is the call's: sg_session_on_reply frees it */
    }
}

/* ---- deliveries ------------------------------------------------------------ */

/* Our peerId went to a newer connection of the same user: forget the room
 * locally without a leave (the record is the new holder's). */
static void replaced(sg_session *s, sg_sconn *c, sg_membership *m, const char *room, const sg_wire_envelope *e)
{
    if (m) {
        if (sg_log_begin(s->log, SG_LOG_INFO, "room.leave")) {
            sg_log_int(s->log, "conn", (int64_t)c->id);
            sg_log_str(s->log, "room", room);
            sg_log_str(s->log, "peer", m->peer);
            sg_log_str(s->log, "reason", "replaced");
            sg_log_end(s->log);
        }
        release_membership(s, c, m);
    }
    sg_metrics_inc(&s->metrics->errors, "replaced");
    send_frame(s, c, e->frame.p, e->frame.n);
}

static void trace_delivery(sg_session *s, const sg_sconn *c, const sg_membership *m, const char *room,
                           sg_wire_str traceparent, uint64_t seq, uint64_t t0)
{
    sg_span_ctx parent, span;
    if (!sg_traceparent_parse(traceparent.p, traceparent.n, &parent))
        return;
    sg_span_start(&span, &parent);
    sg_span_attr a[] = {{"signal.room", room, 0}, {"signal.peer", m ? m->peer : "", 0},
                        {"ws.conn_id", NULL, (int64_t)c->id}, {"signal.seq", NULL, (int64_t)seq}};
    sg_tracer_record(s->tracer, "relay.deliver", SG_SPAN_CONSUMER, &span, &parent, t0, sg_now_wall_us(), a, 4,
                     NULL);
}

/* One relay off the channel to its target's connection. */
static void deliver_relay(sg_session *s, sg_sconn *c, sg_membership *m, const char *room, uint64_t seq,
                          uint64_t ts_us, sg_wire_str traceparent, sg_wire_str frame)
{
    if (m && (m->state == MEM_RESUMING || m->catch_up)) {
        hold(m, seq, frame.p, frame.n);
        return;
    }
    /* A replay (resume, catch-up) reads the buffer on the command
     * connection; a relay published just before it may still be on its way
     * on the subscriber connection and arrive after the replay sent it.
     * Outside a replay seq only goes up on a channel (a restart of the
     * numbering always comes with a catch-up that resets it), so anything
     * at or below the last seq sent is such a copy. */
    if (m && seq && seq <= m->last_seq)
        return;
    uint64_t t0 = s->tracer ? sg_now_wall_us() : 0;
    if (!send_relay(s, c, seq, frame.p, frame.n))
        return;
    if (m && seq)
        m->last_seq = seq; /* in order on the channel; it restarts at 1 after an empty Redis restart */
    if (s->tracer)
        trace_delivery(s, c, m, room, traceparent, seq, t0);
    s->metrics->relays_delivered++;
    uint64_t now = sg_now_wall_us();
    if (ts_us && now >= ts_us)
        sg_hist_observe(&s->metrics->relay_latency, (double)(now - ts_us) / 1000.0);
}

void deliver(sg_session *s, const char *channel, size_t chlen, const char *payload, size_t len)
{
    sg_wire_envelope e;
    if (!sg_wire_parse_envelope(payload, len, &e))
        return;
    /* After a takeover two nodes may briefly listen on one channel: only the
     * holder's connection takes the message. */
    size_t nl = strlen(s->ops.inst);
    if (e.node.n != nl || memcmp(e.node.p, s->ops.inst, nl) != 0)
        return;
    sg_sconn *c = sess_conn(s, e.conn);
    char room[SG_ROOM_MAX + 1];
    sg_wire_str peer;
    if (!c || c->cut || !sg_wire_parse_channel(channel, chlen, room, sizeof room, &peer))
        return;
    sg_membership *m = find_room(c, room);
    switch (e.kind) {
    case 'x': replaced(s, c, m, room, &e); return;
    case 'k': control_kicked(s, c, m, room, &e); return;
    case 'r': deliver_relay(s, c, m, room, e.seq, e.ts_us, e.traceparent, e.frame); return;
    case 'b': {
        /* Several relays of one sender, numbered from e.seq on (ts_us is
         * their count); a connection cut by a send takes no more. */
        sg_wire_str rest = e.frame;
        sg_wire_batched one;
        for (uint64_t i = 0; i < e.ts_us && !c->cut && sg_wire_next_batched(&rest, &one); i++)
            deliver_relay(s, c, m, room, e.seq ? e.seq + i : 0, one.ts_us, one.traceparent, one.frame);
        return;
    }
    default: break;
    }
    roster_event(s, room, &e); /* 'e' */
    if (m && (m->state == MEM_RESUMING || m->catch_up)) {
        hold(m, e.seq, e.frame.p, e.frame.n);
        return;
    }
    send_frame(s, c, e.frame.p, e.frame.n);
}
