#include "sg/session.h"
#include "sg/conn.h"
#include "sg/proto.h"
#include "sg/server.h"
#include "sg/turn.h"
#include "sg/util.h"

#include <openssl/evp.h>
#include <openssl/sha.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { OP_JOIN = 1, OP_LEAVE, OP_RELAY, OP_REFRESH, OP_RESUME, OP_CATCHUP };

/* The context of one Redis call. The reply finds its connection by id. */
typedef struct sg_op {
    struct sg_op *next_free;
    uint8_t kind;
    uint8_t mtype;          /* sg_msg_type of a relay */
    bool reply_left;        /* OP_LEAVE answers the client with "left" */
    bool ack;               /* OP_RELAY: the sender asked for a delivery receipt */
    uint64_t conn_id;
    uint64_t t0_us;
    sg_span_ctx span, parent; /* when tracing is on */
    char *rooms;            /* OP_REFRESH: the batch's room ids, NUL-separated (heap) */
    uint32_t nrooms;
    char room[SG_ROOM_MAX + 1];
    char peer[SG_PEER_LEN + 1];
    char to[SG_PEER_LEN + 1];
    char cid[SG_CID_MAX + 1];
} sg_op;

static sg_op *op_new(sg_server *s, uint8_t kind, uint64_t conn_id)
{
    sg_op *op = s->op_free;
    if (op)
        s->op_free = op->next_free;
    else
        op = sg_xmalloc(sizeof *op);
    memset(op, 0, offsetof(sg_op, room));
    op->span.valid = op->parent.valid = false;
    op->room[0] = op->peer[0] = op->to[0] = op->cid[0] = '\0';
    op->kind = kind;
    op->conn_id = conn_id;
    return op;
}

/* Starts an operation's span as a child of its connection's. */
static void op_trace(sg_server *s, sg_op *op, const sg_conn *c)
{
    if (!s->tracer)
        return;
    op->parent = c->span;
    sg_span_start(&op->span, &c->span);
}

/* Records an operation's span when it ends; error is NULL for success. */
static void op_span_end(sg_server *s, sg_op *op, const char *name, sg_span_kind kind, const char *error)
{
    if (!s->tracer || !op->span.valid)
        return;
    sg_span_attr a[] = {{"signal.room", op->room, 0}, {"signal.peer", op->peer, 0},
                        {"signal.correlation_id", op->cid, 0}, {"ws.conn_id", NULL, (int64_t)op->conn_id},
                        {"signal.to", op->to, 0}};
    sg_tracer_record(s->tracer, name, kind, &op->span, &op->parent, op->t0_us, sg_now_wall_us(), a,
                     op->to[0] ? 5 : 4, error);
}

static void op_free(sg_server *s, sg_op *op)
{
    free(op->rooms);
    op->rooms = NULL;
    op->next_free = s->op_free;
    s->op_free = op;
}

static void channel_name(char out[SG_CHANNEL_MAX], const char *room, const char *peer)
{
    snprintf(out, SG_CHANNEL_MAX, "room:{%s}:peer:%s", room, peer);
}

static size_t holder_of(const sg_server *s, uint64_t conn_id, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s%llu", s->holder_prefix, (unsigned long long)conn_id);
    return n > 0 ? (size_t)n : 0;
}

void sg_session_error(sg_conn *c, const char *code, const char *message, const char *cid, const char *room)
{
    sg_server *s = c->srv;
    sg_metrics_inc(&s->metrics.errors, code);
    sg_buf b;
    char stack[512];
    /* Errors are small: build them on the stack-backed buffer when possible. */
    sg_buf_init(&b);
    sg_proto_encode_error(&b, code, message, cid, room);
    if (b.len < sizeof stack) {
        memcpy(stack, b.data, b.len);
        sg_conn_send_text(c, stack, b.len);
    } else {
        sg_conn_send_text(c, b.data, b.len);
    }
    sg_buf_free(&b);
}

static sg_membership *find_room(sg_conn *c, const char *room)
{
    for (uint32_t i = 0; i < c->nrooms; i++)
        if (strcmp(c->rooms[i].room, room) == 0)
            return &c->rooms[i];
    return NULL;
}

/* A new membership slot. Slots grow one at a time: most connections are in
 * one room, and idle memory per connection matters at 100k connections. */
static sg_membership *add_room(sg_conn *c)
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

static void remove_room(sg_conn *c, sg_membership *m)
{
    while (m->held) {
        sg_held *h = m->held;
        m->held = h->next;
        free(h);
    }
    free(m->resume_token);
    free(m->room);
    free(m->cid);
    uint32_t i = (uint32_t)(m - c->rooms);
    c->rooms[i] = c->rooms[--c->nrooms];
}

/* A resume token (random, base64url) and the hash Redis keeps of it. */
static void new_resume_token(char tok[SG_RESUME_TOKEN_MAX + 1], char hash[65])
{
    uint8_t rnd[24];
    sg_random_bytes(rnd, sizeof rnd);
    EVP_EncodeBlock((unsigned char *)tok, rnd, sizeof rnd); /* 32 chars */
    for (char *p = tok; *p; p++)
        *p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
    uint8_t d[SHA256_DIGEST_LENGTH];
    SHA256((const uint8_t *)tok, strlen(tok), d);
    sg_hex(hash, d, sizeof d);
}

static void hash_token(const char *tok, char hash[65])
{
    uint8_t d[SHA256_DIGEST_LENGTH];
    SHA256((const uint8_t *)tok, strlen(tok), d);
    sg_hex(hash, d, sizeof d);
}

/* "room:{R}:peer:P" -> R. */
static bool room_of_channel(const char *channel, size_t chlen, char room[SG_ROOM_MAX + 1])
{
    const char *open = memchr(channel, '{', chlen);
    const char *close = open ? memchr(open, '}', chlen - (size_t)(open - channel)) : NULL;
    if (!open || !close || (size_t)(close - open - 1) > SG_ROOM_MAX)
        return false;
    memcpy(room, open + 1, (size_t)(close - open - 1));
    room[close - open - 1] = '\0';
    return true;
}

static void flush_held(sg_conn *c, sg_membership *m);
static void catch_up_on_subscribed(sg_server *s, const char *channel, size_t chlen);

/* ---- room-mates held elsewhere (for ghosts, see refresh.lua) --------- */

static bool held_here(const sg_local_room *lr, const char *peer)
{
    for (size_t i = 0; i < lr->n; i++)
        if (strcmp(lr->m[i].peer, peer) == 0)
            return true;
    return false;
}

static const char *roster_find(const sg_local_room *lr, const char *peer, size_t len)
{
    for (const char *p = lr->remote; p && p < lr->remote + lr->remote_len; p += strlen(p) + 1)
        if (strlen(p) == len && memcmp(p, peer, len) == 0)
            return p;
    return NULL;
}

static void roster_add(sg_local_room *lr, const char *peer, size_t len)
{
    if (len == 0 || len > SG_PEER_LEN || roster_find(lr, peer, len))
        return;
    char id[SG_PEER_LEN + 1];
    memcpy(id, peer, len);
    id[len] = '\0';
    if (held_here(lr, id))
        return;
    lr->remote = sg_xrealloc(lr->remote, lr->remote_len + len + 1);
    memcpy(lr->remote + lr->remote_len, id, len + 1);
    lr->remote_len += len + 1;
}

static void roster_del(sg_local_room *lr, const char *peer, size_t len)
{
    const char *p = roster_find(lr, peer, len);
    if (!p)
        return;
    size_t off = (size_t)(p - lr->remote), n = len + 1;
    memmove(lr->remote + off, lr->remote + off + n, lr->remote_len - off - n);
    lr->remote_len -= n;
    if (!lr->remote_len) {
        free(lr->remote);
        lr->remote = NULL;
    }
}

/* The room's members as a script reported them (strings from index `from`). */
static void roster_set(sg_server *s, const char *room, const redisReply *list, size_t from)
{
    sg_local_room *lr = sg_map_get(&s->rooms, room, strlen(room));
    if (!lr || !list || list->type != REDIS_REPLY_ARRAY)
        return;
    free(lr->remote);
    lr->remote = NULL;
    lr->remote_len = 0;
    for (size_t i = from; i < list->elements; i++)
        if (list->element[i]->type == REDIS_REPLY_STRING)
            roster_add(lr, list->element[i]->str, list->element[i]->len);
}

/* peer_joined / peer_left as lib.lua writes them: {"type":"peer_joined",
 * "roomId":"R","peerId":"P"...}; ids need no escaping. */
static void roster_event(sg_server *s, const char *room, const char *frame, size_t len)
{
    static const char joined[] = "{\"type\":\"peer_joined\"", left[] = "{\"type\":\"peer_left\"";
    bool is_join = len > sizeof joined && memcmp(frame, joined, sizeof joined - 1) == 0;
    if (!is_join && !(len > sizeof left && memcmp(frame, left, sizeof left - 1) == 0))
        return;
    sg_local_room *lr = sg_map_get(&s->rooms, room, strlen(room));
    if (!lr)
        return;
    static const char key[] = "\"peerId\":\"";
    const char *end = frame + len;
    const char *p = frame;
    while (p + sizeof key - 1 <= end && memcmp(p, key, sizeof key - 1) != 0)
        p++;
    if (p + sizeof key - 1 > end)
        return;
    p += sizeof key - 1;
    const char *q = memchr(p, '"', (size_t)(end - p));
    if (!q)
        return;
    if (is_join)
        roster_add(lr, p, (size_t)(q - p));
    else
        roster_del(lr, p, (size_t)(q - p));
}

/* Drops the local side of a membership: the lease index, the gauge and the
 * channel reference. The Redis side is the caller's business. */
static void release_membership(sg_conn *c, sg_membership *m)
{
    sg_server *s = c->srv;
    if (m->state == SG_MEM_JOINED) {
        sg_server_room_remove(s, m->room, c->id, m->peer);
        s->metrics.room_members--;
    }
    char ch[SG_CHANNEL_MAX];
    channel_name(ch, m->room, m->peer);
    sg_bus_unsubscribe(s->bus, ch); /* every membership took one reference at join */
    remove_room(c, m);
}

/* ---- join ------------------------------------------------------------ */

/* Releases a membership that never made it and tells the client why. */
static void fail_membership(sg_conn *c, sg_membership *m, const char *code, const char *message)
{
    char room[SG_ROOM_MAX + 1], cid[SG_CID_MAX + 1] = "";
    strcpy(room, m->room);
    if (m->cid)
        strcpy(cid, m->cid);
    release_membership(c, m);
    sg_session_error(c, code, message, cid[0] ? cid : NULL, room);
}

static void send_join(sg_conn *c, sg_membership *m)
{
    sg_server *s = c->srv;
    const sg_config *cfg = s->cfg;
    char holder[96], rt[65] = "";
    holder_of(s, c->id, holder, sizeof holder);
    if (cfg->resume_ms > 0) {
        /* The answer carries a fresh token; Redis keeps only its hash. */
        free(m->resume_token);
        m->resume_token = sg_xmalloc(SG_RESUME_TOKEN_MAX + 1);
        new_resume_token(m->resume_token, rt);
    }
    const char *argv[] = {m->room, m->peer, holder, cfg->node_id, c->subhash, c->claims.sub,
                          sg_claims_room_allowed(&c->claims, m->room) ? "1" : "0", s->max_peers_arg,
                          s->lease_arg, s->ttl_arg, s->resume_args[0], rt};
    sg_op *op = op_new(s, OP_JOIN, c->id);
    strcpy(op->room, m->room);
    strcpy(op->peer, m->peer);
    if (m->cid)
        strcpy(op->cid, m->cid);
    op->t0_us = sg_now_wall_us();
    op_trace(s, op, c);
    if (sg_bus_eval(s->bus, SG_SCRIPT_JOIN, m->room, 12, argv, NULL, (uint64_t)(uintptr_t)op) < 0) {
        op_free(s, op);
        if (m->state == SG_MEM_JOINED)
            sg_session_error(c, "unavailable", "Redis is unreachable", m->cid, m->room);
        else
            fail_membership(c, m, "unavailable", "Redis is unreachable");
        return;
    }
    set_cid(m, NULL); /* the operation carries it now */
    strcpy(m->rt, rt);
    if (m->state != SG_MEM_JOINED)
        m->state = SG_MEM_JOINING;
}

static void send_resume(sg_conn *c, sg_membership *m)
{
    sg_server *s = c->srv;
    const sg_config *cfg = s->cfg;
    char holder[96], last[24], old_rt[65], new_rt[65];
    holder_of(s, c->id, holder, sizeof holder);
    snprintf(last, sizeof last, "%llu", (unsigned long long)m->resume_from);
    hash_token(m->resume_token, old_rt);
    /* The client's token has its own length; the fresh one needs a buffer
     * of the size new_resume_token writes. */
    free(m->resume_token);
    m->resume_token = sg_xmalloc(SG_RESUME_TOKEN_MAX + 1);
    new_resume_token(m->resume_token, new_rt);
    const char *argv[] = {m->room, m->peer, holder, cfg->node_id, c->subhash, old_rt, new_rt, last,
                          s->lease_arg, s->ttl_arg};
    sg_op *op = op_new(s, OP_RESUME, c->id);
    strcpy(op->room, m->room);
    strcpy(op->peer, m->peer);
    if (m->cid)
        strcpy(op->cid, m->cid);
    op->t0_us = sg_now_wall_us();
    op_trace(s, op, c);
    if (sg_bus_eval(s->bus, SG_SCRIPT_RESUME, m->room, 10, argv, NULL, (uint64_t)(uintptr_t)op) < 0) {
        op_free(s, op);
        fail_membership(c, m, "unavailable", "Redis is unreachable");
        return;
    }
    set_cid(m, NULL); /* the operation carries it now */
    strcpy(m->rt, new_rt);
    m->state = SG_MEM_RESUMING;
}

/* The subscription is confirmed: the membership's operation can go. */
static void send_pending(sg_conn *c, sg_membership *m)
{
    if (m->resume)
        send_resume(c, m);
    else
        send_join(c, m);
}

static void wait_for_subscription(sg_server *s, const char *ch, uint64_t conn)
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

void sg_session_on_subscribed(void *srv, const char *channel, size_t chlen)
{
    sg_server *s = srv;
    catch_up_on_subscribed(s, channel, chlen);
    sg_waitlist *w = sg_map_del(&s->waiters, channel, chlen);
    if (!w)
        return;
    for (size_t i = 0; i < w->n; i++) {
        sg_conn *c = sg_server_conn(s, w->conns[i]);
        if (!c || c->state != SG_CONN_OPEN)
            continue;
        for (uint32_t j = 0; j < c->nrooms; j++) {
            sg_membership *m = &c->rooms[j];
            char ch[SG_CHANNEL_MAX];
            channel_name(ch, m->room, m->peer);
            if (m->state == SG_MEM_SUBSCRIBING && strlen(ch) == chlen && memcmp(ch, channel, chlen) == 0) {
                send_pending(c, m);
                break;
            }
        }
    }
    free(w->conns);
    free(w);
}

/* Takes a membership slot, subscribes to the peer's channel and sends the
 * join or resume once Redis confirms the subscription, so no relay
 * published right after it can miss this node. */
static void start_membership(sg_conn *c, const sg_msg *msg, bool resume)
{
    sg_server *s = c->srv;
    sg_membership *m = add_room(c);
    m->room = sg_xstrdup(msg->room);
    strcpy(m->peer, msg->peer);
    set_cid(m, msg->cid);
    m->state = SG_MEM_SUBSCRIBING;
    m->resume = resume;
    if (resume) {
        m->resume_from = msg->last_seq;
        m->resume_token = sg_xstrdup(msg->resume_token);
    }
    char ch[SG_CHANNEL_MAX];
    channel_name(ch, m->room, m->peer);
    if (sg_bus_subscribe(s->bus, ch))
        send_pending(c, m);
    else
        wait_for_subscription(s, ch, c->id);
}

static void handle_join(sg_conn *c, const sg_msg *msg)
{
    sg_server *s = c->srv;
    const char *cid = msg->has_cid ? msg->cid : NULL;
    sg_membership *m = find_room(c, msg->room);
    if (m) {
        if (strcmp(m->peer, msg->peer) != 0) {
            sg_session_error(c, "bad_request", "this connection is in the room with another peerId", cid, msg->room);
            return;
        }
        if (m->state == SG_MEM_SUBSCRIBING || m->state == SG_MEM_RESUMING) {
            sg_session_error(c, "bad_request", "a join or resume of this room is in progress", cid, msg->room);
            return;
        }
        set_cid(m, msg->cid);
        send_join(c, m); /* idempotent in Redis: answers joined, broadcasts nothing */
        return;
    }
    if (c->nrooms >= (uint32_t)s->cfg->rooms_per_connection) {
        sg_session_error(c, "too_many_rooms", "this connection is in as many rooms as allowed", cid, msg->room);
        return;
    }
    start_membership(c, msg, false);
}

static void handle_resume(sg_conn *c, const sg_msg *msg)
{
    sg_server *s = c->srv;
    const char *cid = msg->has_cid ? msg->cid : NULL;
    if (s->cfg->resume_ms <= 0) {
        sg_session_error(c, "resume_failed", "resumption is off on this service; join afresh", cid, msg->room);
        return;
    }
    if (find_room(c, msg->room)) {
        sg_session_error(c, "bad_request", "this connection is already in the room", cid, msg->room);
        return;
    }
    if (c->nrooms >= (uint32_t)s->cfg->rooms_per_connection) {
        sg_session_error(c, "too_many_rooms", "this connection is in as many rooms as allowed", cid, msg->room);
        return;
    }
    start_membership(c, msg, true);
}

static void append_peers(sg_buf *b, const redisReply *list, size_t from)
{
    sg_buf_puts(b, "\"peers\":[");
    for (size_t i = from; i < list->elements; i++) {
        const redisReply *e = list->element[i];
        if (e->type != REDIS_REPLY_STRING)
            continue;
        if (i > from)
            sg_buf_putc(b, ',');
        sg_buf_json_str(b, e->str, e->len);
    }
    sg_buf_putc(b, ']');
}

/* What joined and resumed share after their own fields. */
static void append_session_fields(sg_conn *c, sg_buf *b, const sg_membership *m, const char *cid)
{
    const sg_config *cfg = c->srv->cfg;
    if (m->resume_token)
        sg_buf_printf(b, ",\"resumeToken\":\"%s\"", m->resume_token);
    if (cfg->turn_secret)
        sg_turn_append_ice_servers(b, cfg->turn_secret, cfg->turn_urls, c->claims.sub,
                                   (int64_t)(sg_now_wall_ms() / 1000), cfg->turn_ttl_s);
    if (cid && *cid)
        sg_buf_printf(b, ",\"correlationId\":\"%s\"", cid);
    sg_buf_putc(b, '}');
}

static void send_joined(sg_conn *c, sg_membership *m, const redisReply *r, const char *cid)
{
    sg_buf b;
    sg_buf_init(&b);
    sg_buf_printf(&b, "{\"type\":\"joined\",\"roomId\":\"%s\",\"peerId\":\"%s\",", m->room, m->peer);
    append_peers(&b, r, 1);
    append_session_fields(c, &b, m, cid);
    bool sent = sg_conn_send_text(c, b.data, b.len);
    sg_buf_free(&b);
    if (!sent)
        return; /* cut for its output: its memberships (m too) are released */
    free(m->resume_token); /* sent; only its hash is kept */
    m->resume_token = NULL;
}

static void issue_leave(sg_server *s, uint64_t conn_id, const char *room, const char *peer,
                        const char *reason, bool reply, const char *cid)
{
    char holder[96], resume[24];
    holder_of(s, conn_id, holder, sizeof holder);
    snprintf(resume, sizeof resume, "%lld", (long long)s->cfg->resume_ms);
    const char *argv[] = {room, peer, holder, reason, resume};
    sg_op *op = op_new(s, OP_LEAVE, conn_id);
    strcpy(op->room, room);
    strcpy(op->peer, peer);
    if (cid)
        strcpy(op->cid, cid);
    op->reply_left = reply;
    op->t0_us = sg_now_wall_us();
    sg_conn *oc = sg_server_conn(s, conn_id);
    if (oc)
        op_trace(s, op, oc);
    if (sg_bus_eval(s->bus, SG_SCRIPT_LEAVE, room, 5, argv, NULL, (uint64_t)(uintptr_t)op) < 0) {
        /* Redis is away: the lease will expire and room-mates get "timeout". */
        op_free(s, op);
        if (reply) {
            sg_conn *c = sg_server_conn(s, conn_id);
            if (c)
                sg_session_error(c, "unavailable", "Redis is unreachable", cid, room);
        }
    }
}

static void on_join_reply(sg_server *s, sg_op *op, redisReply *r)
{
    sg_conn *c = sg_server_conn(s, op->conn_id);
    sg_membership *m = c ? find_room(c, op->room) : NULL;
    if (m && (strcmp(m->peer, op->peer) != 0 || m->state == SG_MEM_SUBSCRIBING || m->state == SG_MEM_RESUMING))
        m = NULL;
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
              r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "error") != 0;
    if (!m) {
        /* The connection left or went while the join was in flight: undo it
         * in Redis if it happened (the script only removes our own record). */
        if (ok)
            issue_leave(s, op->conn_id, op->room, op->peer, "disconnect", false, NULL);
        return;
    }
    const char *cid = op->cid[0] ? op->cid : NULL;
    if (!ok) {
        const char *code = "unavailable";
        const char *msg = "Redis did not answer";
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
            if (sg_log_begin(s->log, SG_LOG_ERROR, "redis.script_error")) {
                sg_log_str(s->log, "script", "join");
                sg_log_strn(s->log, "error", r->str, r->len);
                sg_log_end(s->log);
            }
        }
        if (m->state == SG_MEM_JOINED) {
            /* A repeated join that failed leaves the membership as it was. */
            sg_session_error(c, code, msg, cid, m->room);
            return;
        }
        set_cid(m, op->cid);
        fail_membership(c, m, code, msg);
        return;
    }
    const char *status = r->element[0]->str;
    if (m->state != SG_MEM_JOINED) {
        m->state = SG_MEM_JOINED;
        m->joined_at_ms = sg_now_wall_ms();
        sg_server_room_add(s, m->room, c->id, m->peer, m->joined_at_ms);
        s->metrics.room_members++;
        c->ever_joined = true;
        if (sg_log_begin(s->log, SG_LOG_INFO, "room.join")) {
            sg_log_int(s->log, "conn", (int64_t)c->id);
            sg_log_str(s->log, "room", m->room);
            sg_log_str(s->log, "peer", m->peer);
            sg_log_str(s->log, "user", c->user);
            sg_log_str(s->log, "status", status);
            if (cid)
                sg_log_str(s->log, "correlationId", cid);
            sg_log_int(s->log, "peers", (int64_t)r->elements - 1);
            uint64_t now_us = sg_now_wall_us();
            sg_log_dbl(s->log, "duration_ms", now_us > op->t0_us ? (double)(now_us - op->t0_us) / 1000.0 : 0.0);
            sg_log_end(s->log);
        }
    }
    roster_set(s, m->room, r, 1);
    send_joined(c, m, r, cid);
}

/* ---- leave ----------------------------------------------------------- */

static void send_left(sg_conn *c, const char *room, const char *peer, const char *cid)
{
    char buf[SG_ROOM_MAX + SG_PEER_LEN + SG_CID_MAX + 96];
    int n;
    if (cid && *cid)
        n = snprintf(buf, sizeof buf, "{\"type\":\"left\",\"roomId\":\"%s\",\"peerId\":\"%s\",\"correlationId\":\"%s\"}",
                     room, peer, cid);
    else
        n = snprintf(buf, sizeof buf, "{\"type\":\"left\",\"roomId\":\"%s\",\"peerId\":\"%s\"}", room, peer);
    sg_conn_send_text(c, buf, (size_t)n);
}

static void handle_leave(sg_conn *c, const sg_msg *msg)
{
    sg_server *s = c->srv;
    const char *cid = msg->has_cid ? msg->cid : NULL;
    sg_membership *m = find_room(c, msg->room);
    if (!m || strcmp(m->peer, msg->peer) != 0) {
        /* Not in the room (as that peer): nothing to do, nothing broadcast. */
        send_left(c, msg->room, msg->peer, cid);
        return;
    }
    bool in_redis = m->state != SG_MEM_SUBSCRIBING;
    if (sg_log_begin(s->log, SG_LOG_INFO, "room.leave")) {
        sg_log_int(s->log, "conn", (int64_t)c->id);
        sg_log_str(s->log, "room", m->room);
        sg_log_str(s->log, "peer", m->peer);
        sg_log_str(s->log, "reason", "leave");
        if (cid)
            sg_log_str(s->log, "correlationId", cid);
        sg_log_end(s->log);
    }
    release_membership(c, m);
    if (in_redis)
        issue_leave(s, c->id, msg->room, msg->peer, "leave", true, cid);
    else
        send_left(c, msg->room, msg->peer, cid);
}

static void on_leave_reply(sg_server *s, sg_op *op, redisReply *r)
{
    if (!op->reply_left)
        return;
    sg_conn *c = sg_server_conn(s, op->conn_id);
    if (!c)
        return;
    if (!r || r->type == REDIS_REPLY_ERROR) {
        sg_session_error(c, "unavailable", "Redis did not answer", op->cid[0] ? op->cid : NULL, op->room);
        return;
    }
    send_left(c, op->room, op->peer, op->cid);
}

void sg_session_on_close(sg_conn *c)
{
    sg_server *s = c->srv;
    while (c->nrooms) {
        sg_membership *m = &c->rooms[c->nrooms - 1];
        char room[SG_ROOM_MAX + 1], peer[SG_PEER_LEN + 1];
        strcpy(room, m->room);
        strcpy(peer, m->peer);
        bool in_redis = m->state != SG_MEM_SUBSCRIBING;
        /* Lost without a close frame: with resumption on, the script starts
         * the grace period instead of telling the room. */
        const char *reason = c->lost && s->cfg->resume_ms > 0 ? "lost" : c->leave_reason;
        if (sg_log_begin(s->log, SG_LOG_INFO, "room.leave")) {
            sg_log_int(s->log, "conn", (int64_t)c->id);
            sg_log_str(s->log, "room", room);
            sg_log_str(s->log, "peer", peer);
            sg_log_str(s->log, "reason", reason);
            sg_log_end(s->log);
        }
        release_membership(c, m);
        if (in_redis)
            issue_leave(s, c->id, room, peer, reason, false, NULL);
    }
}

/* ---- resume ---------------------------------------------------------- */

static void on_resume_reply(sg_server *s, sg_op *op, redisReply *r)
{
    sg_conn *c = sg_server_conn(s, op->conn_id);
    sg_membership *m = c ? find_room(c, op->room) : NULL;
    if (m && (strcmp(m->peer, op->peer) != 0 || m->state != SG_MEM_RESUMING))
        m = NULL;
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
              r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "resumed") == 0 &&
              r->element[1]->type == REDIS_REPLY_ARRAY && r->element[2]->type == REDIS_REPLY_ARRAY;
    if (!m) {
        if (ok) /* resumed for a connection that is gone: back into grace */
            issue_leave(s, op->conn_id, op->room, op->peer, "lost", false, NULL);
        return;
    }
    if (!ok) {
        bool failed = r && r->type == REDIS_REPLY_ARRAY;
        set_cid(m, op->cid);
        fail_membership(c, m, failed ? "resume_failed" : "unavailable",
                        failed ? "resume token unknown, expired or not yours; join afresh"
                               : "Redis did not answer");
        return;
    }
    m->state = SG_MEM_JOINED;
    m->joined_at_ms = sg_now_wall_ms();
    sg_server_room_add(s, m->room, c->id, m->peer, m->joined_at_ms);
    s->metrics.room_members++;
    c->ever_joined = true;
    const redisReply *peers = r->element[1], *replay = r->element[2];
    roster_set(s, m->room, peers, 0);
    size_t nreplay = replay->elements / 2;
    if (sg_log_begin(s->log, SG_LOG_INFO, "room.resume")) {
        sg_log_int(s->log, "conn", (int64_t)c->id);
        sg_log_str(s->log, "room", m->room);
        sg_log_str(s->log, "peer", m->peer);
        sg_log_str(s->log, "user", c->user);
        sg_log_int(s->log, "replayed", (int64_t)nreplay);
        sg_log_end(s->log);
    }
    sg_buf b;
    sg_buf_init(&b);
    sg_buf_printf(&b, "{\"type\":\"resumed\",\"roomId\":\"%s\",\"peerId\":\"%s\",", m->room, m->peer);
    append_peers(&b, peers, 0);
    sg_buf_printf(&b, ",\"replayed\":%zu", nreplay);
    append_session_fields(c, &b, m, op->cid[0] ? op->cid : NULL);
    bool alive = sg_conn_send_text(c, b.data, b.len);
    sg_buf_free(&b);
    if (!alive)
        return; /* cut for its output: its memberships (m too) are released */
    free(m->resume_token);
    m->resume_token = NULL;
    /* The buffer, then what arrived meanwhile and was not in it: in order,
     * exactly once. */
    uint64_t last = m->resume_from;
    for (size_t i = 0; alive && i + 1 < replay->elements; i += 2) {
        const redisReply *seq = replay->element[i], *frame = replay->element[i + 1];
        if (seq->type != REDIS_REPLY_STRING || frame->type != REDIS_REPLY_STRING)
            continue;
        alive = sg_conn_send_text(c, frame->str, frame->len);
        last = strtoull(seq->str, NULL, 10);
    }
    if (!alive)
        return; /* the connection was cut for its output; m is gone */
    m->last_seq = last;
    flush_held(c, m);
}

/* ---- catch-up -------------------------------------------------------- */

/* After the subscriber connection came back, relays published while it was
 * down reached Redis (and the target's resumption buffer, acknowledged as
 * "buffered") but not this node: fetch them from the buffer once the channel
 * is subscribed again, holding live ones meanwhile, so the client gets each
 * exactly once, in order, without having to resume. */
static void send_catch_up(sg_server *s, sg_conn *c, sg_membership *m)
{
    char last[24];
    snprintf(last, sizeof last, "%llu", (unsigned long long)m->last_seq);
    const char *argv[] = {m->room, m->peer, last};
    sg_op *op = op_new(s, OP_CATCHUP, c->id);
    strcpy(op->room, m->room);
    strcpy(op->peer, m->peer);
    m->catch_up = SG_CATCHUP_SENT;
    if (sg_bus_eval(s->bus, SG_SCRIPT_CATCHUP, m->room, 3, argv, NULL, (uint64_t)(uintptr_t)op) < 0) {
        op_free(s, op);
        m->catch_up = SG_CATCHUP_WAITING; /* the next reconnect tries again */
    }
}

static void start_catch_ups(sg_server *s)
{
    size_t i;
    for (sg_map_entry *e = sg_map_first(&s->rooms, &i); e; e = sg_map_next(&s->rooms, &i, e)) {
        sg_local_room *lr = e->value;
        for (size_t j = 0; j < lr->n; j++) {
            sg_conn *c = sg_server_conn(s, lr->m[j].conn);
            sg_membership *m = c ? find_room(c, e->key) : NULL;
            if (!m || m->state != SG_MEM_JOINED)
                continue;
            m->catch_up = SG_CATCHUP_WAITING;
            char ch[SG_CHANNEL_MAX];
            channel_name(ch, m->room, m->peer);
            if (sg_bus_subscribed(s->bus, ch))
                send_catch_up(s, c, m);
        }
    }
}

/* A channel is subscribed again: its membership's catch-up can go. */
static void catch_up_on_subscribed(sg_server *s, const char *channel, size_t chlen)
{
    char room[SG_ROOM_MAX + 1];
    static const char mark[] = "}:peer:";
    const char *p = memchr(channel, '}', chlen);
    if (!p || !room_of_channel(channel, chlen, room) || (size_t)(channel + chlen - p) <= sizeof mark - 1 ||
        memcmp(p, mark, sizeof mark - 1) != 0)
        return;
    const char *peer = p + sizeof mark - 1;
    size_t plen = (size_t)(channel + chlen - peer);
    sg_local_room *lr = sg_map_get(&s->rooms, room, strlen(room));
    for (size_t j = 0; lr && j < lr->n; j++) {
        if (strlen(lr->m[j].peer) != plen || memcmp(lr->m[j].peer, peer, plen) != 0)
            continue;
        sg_conn *c = sg_server_conn(s, lr->m[j].conn);
        sg_membership *m = c ? find_room(c, room) : NULL;
        if (m && m->catch_up == SG_CATCHUP_WAITING)
            send_catch_up(s, c, m);
    }
}

static void on_catch_up_reply(sg_server *s, sg_op *op, redisReply *r)
{
    sg_conn *c = sg_server_conn(s, op->conn_id);
    sg_membership *m = c ? find_room(c, op->room) : NULL;
    if (!m || strcmp(m->peer, op->peer) != 0 || m->catch_up != SG_CATCHUP_SENT)
        return;
    if (!r) {
        m->catch_up = SG_CATCHUP_WAITING; /* Redis went again; its return retries */
        return;
    }
    size_t n = 0;
    bool ok = r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->type == REDIS_REPLY_INTEGER &&
              r->element[1]->type == REDIS_REPLY_ARRAY;
    if (ok && r->element[0]->integer == 1)
        m->last_seq = 0; /* Redis lost the buffer: seq numbering started again */
    const redisReply *list = ok ? r->element[1] : NULL;
    for (size_t i = 0; list && i + 1 < list->elements; i += 2) {
        const redisReply *sq = list->element[i], *f = list->element[i + 1];
        if (sq->type != REDIS_REPLY_STRING || f->type != REDIS_REPLY_STRING)
            continue;
        uint64_t seq = strtoull(sq->str, NULL, 10);
        if (seq <= m->last_seq)
            continue;
        if (!sg_conn_send_text(c, f->str, f->len))
            return; /* cut for its output; m is gone */
        m->last_seq = seq;
        s->metrics.relays_delivered++;
        n++;
    }
    m->catch_up = SG_CATCHUP_NONE;
    if (n && sg_log_begin(s->log, SG_LOG_INFO, "relay.catch_up")) {
        sg_log_int(s->log, "conn", (int64_t)c->id);
        sg_log_str(s->log, "room", m->room);
        sg_log_str(s->log, "peer", m->peer);
        sg_log_int(s->log, "replayed", (int64_t)n);
        sg_log_end(s->log);
    }
    flush_held(c, m);
}

/* ---- relay ----------------------------------------------------------- */

static void handle_relay(sg_conn *c, sg_msg *msg, uint64_t arrival_us)
{
    sg_server *s = c->srv;
    const char *cid = msg->has_cid ? msg->cid : NULL;
    sg_membership *m = find_room(c, msg->room);
    if (!m || m->state == SG_MEM_SUBSCRIBING) {
        sg_session_error(c, "not_joined", "join the room before relaying", cid, msg->room);
        return;
    }
    if (m->state == SG_MEM_RESUMING) {
        sg_session_error(c, "not_joined", "wait for resumed before relaying", cid, msg->room);
        return;
    }
    if (strcmp(m->peer, msg->from) != 0) {
        sg_session_error(c, "forbidden", "from is not this connection's peerId in the room", cid, msg->room);
        return;
    }
    sg_op *op = op_new(s, OP_RELAY, c->id);
    strcpy(op->room, msg->room);
    strcpy(op->peer, msg->from);
    strcpy(op->to, msg->to);
    op->mtype = (uint8_t)msg->type;
    op->t0_us = arrival_us;
    if (cid)
        strcpy(op->cid, cid);
    else
        snprintf(op->cid, sizeof op->cid, "%s%llx", s->cid_prefix, (unsigned long long)++s->cid_counter);

    /* The frame the target gets: built once here, forwarded as is. */
    sg_buf *f = &s->scratch;
    sg_buf_reset(f);
    sg_buf_puts(f, "{\"type\":\"relay\",\"inner\":");
    sg_buf_append(f, msg->inner.data, msg->inner.len);
    sg_buf_printf(f, ",\"correlationId\":\"%s\"}", op->cid);

    char holder[96], ts[24];
    size_t hl = holder_of(s, c->id, holder, sizeof holder);
    snprintf(ts, sizeof ts, "%llu", (unsigned long long)arrival_us);
    char (*rates)[32] = s->rate_args;
    /* The relay's span travels in the Redis message so the delivery span on
     * the target's node becomes its child. */
    char tp[SG_TRACEPARENT_LEN + 1] = "-";
    op_trace(s, op, c);
    if (op->span.valid)
        sg_traceparent_format(&op->span, tp);
    const char *kind = sg_msg_type_name(msg->type);
    const char *argv[] = {msg->room, msg->from, msg->to, holder, kind, ts, tp, f->data,
                          rates[0], rates[1], rates[2], rates[3], rates[4], rates[5], s->ttl_arg,
                          s->resume_args[0], s->resume_args[1], s->resume_args[2]};
    enum { NARGS = sizeof argv / sizeof *argv };
    size_t lens[NARGS];
    for (int i = 0; i < NARGS; i++)
        lens[i] = strlen(argv[i]);
    lens[3] = hl;
    lens[7] = f->len;
    op->ack = msg->ack;
    if (sg_bus_eval(s->bus, SG_SCRIPT_RELAY, msg->room, NARGS, argv, lens, (uint64_t)(uintptr_t)op) < 0) {
        op_free(s, op);
        sg_session_error(c, "unavailable", "Redis is unreachable", cid, msg->room);
    }
}

static void send_ack(sg_conn *c, const char *cid, const char *status)
{
    char buf[SG_CID_MAX + 80];
    int n = snprintf(buf, sizeof buf, "{\"type\":\"ack\",\"correlationId\":\"%s\",\"status\":\"%s\"}", cid, status);
    sg_conn_send_text(c, buf, (size_t)n);
}

static void on_relay_reply(sg_server *s, sg_op *op, redisReply *r)
{
    sg_conn *c = sg_server_conn(s, op->conn_id);
    if (!c)
        return;
    const char *kind = sg_msg_type_name((sg_msg_type)op->mtype);
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->element[0]->type != REDIS_REPLY_STRING) {
        if (r && r->type == REDIS_REPLY_ERROR && sg_log_begin(s->log, SG_LOG_ERROR, "redis.script_error")) {
            sg_log_str(s->log, "script", "relay");
            sg_log_strn(s->log, "error", r->str, r->len);
            sg_log_end(s->log);
        }
        sg_session_error(c, r ? "internal" : "unavailable", r ? "script error" : "Redis did not answer",
                         op->cid, op->room);
        return;
    }
    const char *status = r->element[0]->str;
    if (strcmp(status, "ok") == 0) {
        const char *delivery = r->elements >= 2 && r->element[1]->type == REDIS_REPLY_STRING
                                   ? r->element[1]->str : "delivered";
        if (op->ack)
            send_ack(c, op->cid, strcmp(delivery, "buffered") == 0 ? "buffered" : "delivered");
        if (sg_log_begin(s->log, SG_LOG_INFO, op->mtype == SG_MSG_OFFER    ? "relay.offer"
                                              : op->mtype == SG_MSG_ANSWER ? "relay.answer"
                                                                           : "relay.candidate")) {
            sg_log_int(s->log, "conn", (int64_t)c->id);
            sg_log_str(s->log, "room", op->room);
            sg_log_str(s->log, "from", op->peer);
            sg_log_str(s->log, "to", op->to);
            sg_log_str(s->log, "correlationId", op->cid);
            sg_log_end(s->log);
        }
        return;
    }
    const char *arg = r->elements >= 2 && r->element[1]->type == REDIS_REPLY_STRING ? r->element[1]->str : "";
    if (strcmp(status, "rate_limited") == 0) {
        static const char *scopes[] = {"room", "peer", "candidate"};
        const char *scope = "peer";
        for (size_t i = 0; i < 3; i++)
            if (strcmp(arg, scopes[i]) == 0)
                scope = scopes[i];
        sg_metrics_inc(&s->metrics.ratelimit_drops, scope);
        if (op->ack) {
            /* The sender asked for a receipt: that is its answer. */
            send_ack(c, op->cid, "dropped");
            return;
        }
        uint64_t now = sg_now_mono_ms();
        c->dropped_since_warn++;
        /* Candidates over the limit: at most one warning a second. */
        if (op->mtype == SG_MSG_CANDIDATE && c->warn_ms && now - c->warn_ms < 1000)
            return;
        if (sg_log_begin(s->log, SG_LOG_INFO, "ratelimit.drop")) {
            sg_log_int(s->log, "conn", (int64_t)c->id);
            sg_log_str(s->log, "scope", scope);
            sg_log_str(s->log, "room", op->room);
            sg_log_str(s->log, "type", kind);
            sg_log_int(s->log, "dropped", (int64_t)c->dropped_since_warn);
            sg_log_end(s->log);
        }
        c->warn_ms = now;
        c->dropped_since_warn = 0;
        char msg[96];
        snprintf(msg, sizeof msg, "over the %s rate limit; %s dropped", scope, kind);
        sg_session_error(c, "rate_limited", msg, op->cid, op->room);
        return;
    }
    static const struct { const char *code, *msg; } E[] = {
        {"not_joined", "this connection is not in the room"},
        {"peer_not_found", "to is not another member of the room"},
        {"peer_unreachable", "no gateway holds the target any more"},
    };
    for (size_t i = 0; i < sizeof E / sizeof *E; i++)
        if (strcmp(arg, E[i].code) == 0) {
            sg_session_error(c, E[i].code, E[i].msg, op->cid, op->room);
            return;
        }
    sg_session_error(c, "internal", "unexpected script reply", op->cid, op->room);
}

/* ---- messages from Redis --------------------------------------------- */

/* "<holder>\t<kind>\t<ts_us>\t<traceparent>\t<seq>\n<frame>" */
typedef struct envelope {
    uint64_t conn;
    char kind;
    uint64_t ts_us;
    const char *tp;
    size_t tplen;
    uint64_t seq;
    const char *frame;
    size_t flen;
} envelope;

static uint64_t parse_u64(const char **p, const char *end)
{
    uint64_t v = 0;
    while (*p < end && **p >= '0' && **p <= '9' && v < UINT64_MAX / 10)
        v = v * 10 + (uint64_t)(*(*p)++ - '0');
    return v;
}

/* Parses the envelope when it is addressed to a connection of this node. */
static bool parse_envelope(const sg_server *s, const char *payload, size_t len, envelope *e)
{
    const char *nl = memchr(payload, '\n', len < 512 ? len : 512);
    if (!nl)
        return false;
    size_t pl = strlen(s->holder_prefix);
    if ((size_t)(nl - payload) <= pl || memcmp(payload, s->holder_prefix, pl) != 0)
        return false; /* another node's connection */
    const char *p = payload + pl;
    e->conn = parse_u64(&p, nl);
    if (p + 2 >= nl || *p != '\t')
        return false;
    e->kind = p[1];
    p += 2;
    if (p >= nl || *p++ != '\t')
        return false;
    e->ts_us = parse_u64(&p, nl);
    if (p >= nl || *p++ != '\t')
        return false;
    e->tp = p;
    while (p < nl && *p != '\t')
        p++;
    e->tplen = (size_t)(p - e->tp);
    if (p >= nl || *p++ != '\t')
        return false;
    e->seq = parse_u64(&p, nl);
    e->frame = nl + 1;
    e->flen = len - (size_t)(e->frame - payload);
    return true;
}

static void hold(sg_membership *m, const envelope *e)
{
    sg_held *h = sg_xmalloc(sizeof *h + e->flen);
    h->next = NULL;
    h->seq = e->seq;
    h->len = e->flen;
    memcpy(h->frame, e->frame, e->flen);
    sg_held **pp = &m->held;
    while (*pp)
        pp = &(*pp)->next;
    *pp = h;
}

/* Sends what arrived while a replay was on its way and was not in it. */
static void flush_held(sg_conn *c, sg_membership *m)
{
    while (m->held) {
        sg_held *h = m->held;
        m->held = h->next;
        bool send = h->seq == 0 || h->seq > m->last_seq;
        bool alive = !send || sg_conn_send_text(c, h->frame, h->len);
        if (alive && h->seq > m->last_seq)
            m->last_seq = h->seq;
        free(h);
        if (!alive)
            return; /* cut for its output; m (and what it still held) is gone */
    }
}

void sg_session_on_message(void *srv, const char *channel, size_t chlen, const char *payload, size_t len)
{
    sg_server *s = srv;
    envelope e;
    if (!parse_envelope(s, payload, len, &e))
        return;
    sg_conn *c = sg_server_conn(s, e.conn);
    if (!c || c->state != SG_CONN_OPEN)
        return;
    char room[SG_ROOM_MAX + 1];
    if (!room_of_channel(channel, chlen, room))
        return;
    sg_membership *m = find_room(c, room);
    if (e.kind == 'x') {
        /* Our peerId went to a newer connection of the same user: forget the
         * room locally without a leave (the record is the new holder's). */
        if (m) {
            if (sg_log_begin(s->log, SG_LOG_INFO, "room.leave")) {
                sg_log_int(s->log, "conn", (int64_t)c->id);
                sg_log_str(s->log, "room", room);
                sg_log_str(s->log, "peer", m->peer);
                sg_log_str(s->log, "reason", "replaced");
                sg_log_end(s->log);
            }
            release_membership(c, m);
        }
        sg_metrics_inc(&s->metrics.errors, "replaced");
        sg_conn_send_text(c, e.frame, e.flen);
        return;
    }
    if (e.kind == 'e')
        roster_event(s, room, e.frame, e.flen);
    if (m && (m->state == SG_MEM_RESUMING || m->catch_up)) {
        hold(m, &e);
        return;
    }
    uint64_t t0 = s->tracer ? sg_now_wall_us() : 0;
    if (!sg_conn_send_text(c, e.frame, e.flen))
        return;
    if (m && e.kind == 'r' && e.seq)
        m->last_seq = e.seq; /* in order on the channel; it restarts at 1 after an empty Redis restart */
    sg_span_ctx parent;
    if (s->tracer && e.kind == 'r' && sg_traceparent_parse(e.tp, e.tplen, &parent)) {
        sg_span_ctx span;
        sg_span_start(&span, &parent);
        sg_span_attr a[] = {{"signal.room", room, 0}, {"signal.peer", m ? m->peer : "", 0},
                            {"ws.conn_id", NULL, (int64_t)c->id}, {"signal.seq", NULL, (int64_t)e.seq}};
        sg_tracer_record(s->tracer, "relay.deliver", SG_SPAN_CONSUMER, &span, &parent, t0, sg_now_wall_us(),
                         a, 4, NULL);
    }
    if (e.kind == 'r') {
        s->metrics.relays_delivered++;
        uint64_t now = sg_now_wall_us();
        if (e.ts_us && now >= e.ts_us)
            sg_hist_observe(&s->metrics.relay_latency, (double)(now - e.ts_us) / 1000.0);
    }
}

/* ---- leases ---------------------------------------------------------- */

/* Lease refreshes go in batches: one script call renews many rooms, which
 * is most of what 100k idle connections cost Redis and the gateway. */
#define REFRESH_BATCH_ROOMS 32
#define REFRESH_BATCH_ARGS 1024

typedef struct refresh_batch {
    bool silent;
    int nrooms;
    const char *rooms[REFRESH_BATCH_ROOMS];
    sg_buf arena;          /* the rooms' arguments, each NUL-terminated */
    size_t *off, n, cap;   /* where each argument starts in the arena */
} refresh_batch;

static void batch_arg(refresh_batch *b, const char *str, size_t len)
{
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 256;
        b->off = sg_xrealloc(b->off, b->cap * sizeof *b->off);
    }
    b->off[b->n++] = b->arena.len;
    sg_buf_append(&b->arena, str, len);
    sg_buf_putc(&b->arena, '\0');
}

static void batch_flush(sg_server *s, refresh_batch *b)
{
    if (!b->nrooms)
        return;
    const sg_config *cfg = s->cfg;
    char nr[16];
    snprintf(nr, sizeof nr, "%d", b->nrooms);
    const char **argv = sg_xmalloc((8 + b->n) * sizeof *argv);
    argv[0] = b->rooms[0];
    argv[1] = b->silent ? "1" : "0";
    argv[2] = s->lease_arg;
    argv[3] = s->ttl_arg;
    argv[4] = cfg->node_id;
    argv[5] = s->resume_args[0];
    argv[6] = s->ghost_arg;
    argv[7] = nr;
    for (size_t i = 0; i < b->n; i++)
        argv[8 + i] = b->arena.data + b->off[i];
    sg_op *op = op_new(s, OP_REFRESH, 0);
    sg_buf names;
    sg_buf_init(&names);
    for (int r = 0; r < b->nrooms; r++)
        sg_buf_append(&names, b->rooms[r], strlen(b->rooms[r]) + 1);
    op->rooms = names.data; /* the op owns it now */
    op->nrooms = (uint32_t)b->nrooms;
    if (sg_bus_eval_rooms(s->bus, SG_SCRIPT_REFRESH, b->rooms, b->nrooms, (int)(8 + b->n), argv, NULL,
                          (uint64_t)(uintptr_t)op) < 0)
        op_free(s, op);
    free(argv);
    b->nrooms = 0;
    b->n = 0;
    sg_buf_reset(&b->arena);
}

static void batch_free(refresh_batch *b)
{
    sg_buf_free(&b->arena);
    free(b->off);
}

static void batch_room(sg_server *s, refresh_batch *b, const char *room, const sg_local_room *lr)
{
    size_t nmembers = 0;
    for (size_t i = 0; i < lr->n; i++) {
        sg_conn *c = sg_server_conn(s, lr->m[i].conn);
        nmembers += c && find_room(c, room);
    }
    if (!nmembers)
        return;
    if (b->nrooms == REFRESH_BATCH_ROOMS || b->n > REFRESH_BATCH_ARGS)
        batch_flush(s, b);
    b->rooms[b->nrooms++] = room;
    char num[32];
    batch_arg(b, room, strlen(room));
    /* After a reconnect, room-mates held elsewhere go along as ghosts. */
    size_t nghosts = 0;
    for (const char *p = lr->remote; b->silent && p && p < lr->remote + lr->remote_len; p += strlen(p) + 1)
        nghosts += !held_here(lr, p);
    batch_arg(b, num, (size_t)snprintf(num, sizeof num, "%zu", nghosts));
    for (const char *p = lr->remote; nghosts && p < lr->remote + lr->remote_len; p += strlen(p) + 1)
        if (!held_here(lr, p))
            batch_arg(b, p, strlen(p));
    batch_arg(b, num, (size_t)snprintf(num, sizeof num, "%zu", nmembers));
    for (size_t i = 0; i < lr->n; i++) {
        sg_conn *c = sg_server_conn(s, lr->m[i].conn);
        sg_membership *m = c ? find_room(c, room) : NULL;
        if (!m)
            continue;
        char holder[96];
        batch_arg(b, lr->m[i].peer, strlen(lr->m[i].peer));
        batch_arg(b, holder, holder_of(s, c->id, holder, sizeof holder));
        batch_arg(b, c->subhash, strlen(c->subhash));
        batch_arg(b, num, (size_t)snprintf(num, sizeof num, "%llu", (unsigned long long)lr->m[i].joined_at_ms));
        batch_arg(b, m->rt, strlen(m->rt));
    }
}

void sg_session_refresh_leases(sg_server *s)
{
    /* Incremental: each tick renews a slice of the rooms, so every room is
     * renewed once per lease/3 without a burst of script calls, and a sweep
     * never starts again before that period is over. */
    size_t total = s->rooms.count;
    if (!total || !sg_bus_available(s->bus))
        return;
    uint64_t now = sg_now_mono_ms();
    uint64_t period = (uint64_t)s->cfg->lease_ms / 3;
    if (s->lease_cursor == 0) {
        if (s->lease_sweep_ms && now - s->lease_sweep_ms < period)
            return;
        s->lease_sweep_ms = now;
    }
    uint64_t tick = 100;
    size_t per_tick = (size_t)(total * tick / (period > tick ? period : tick)) + 1;
    size_t done = 0;
    refresh_batch b = {.silent = false};
    sg_buf_init(&b.arena);
    while (done < per_tick && s->lease_cursor < s->rooms.nbuckets) {
        for (sg_map_entry *e = s->rooms.buckets[s->lease_cursor]; e; e = e->next, done++)
            batch_room(s, &b, e->key, e->value);
        s->lease_cursor++;
    }
    batch_flush(s, &b);
    batch_free(&b);
    if (s->lease_cursor >= s->rooms.nbuckets)
        s->lease_cursor = 0; /* sweep done; the next waits for its period */
}

void sg_session_reassert(sg_server *s, bool silent)
{
    size_t i;
    refresh_batch b = {.silent = silent};
    sg_buf_init(&b.arena);
    for (sg_map_entry *e = sg_map_first(&s->rooms, &i); e; e = sg_map_next(&s->rooms, &i, e))
        batch_room(s, &b, e->key, e->value);
    batch_flush(s, &b);
    batch_free(&b);
    if (silent && s->cfg->resume_ms > 0)
        start_catch_ups(s);
}

/* One room's part of a refresh reply: {lost[, members]}. */
static void on_room_refreshed(sg_server *s, const char *room, const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->element[0]->type != REDIS_REPLY_ARRAY)
        return;
    if (r->elements == 2)
        roster_set(s, room, r->element[1], 0);
    r = r->element[0];
    /* Peers taken over elsewhere: the 'x' message normally told us already. */
    for (size_t i = 0; i < r->elements; i++) {
        if (r->element[i]->type != REDIS_REPLY_STRING)
            continue;
        sg_local_room *lr = sg_map_get(&s->rooms, room, strlen(room));
        if (!lr)
            return;
        for (size_t j = 0; j < lr->n; j++) {
            if (strcmp(lr->m[j].peer, r->element[i]->str) != 0)
                continue;
            sg_conn *c = sg_server_conn(s, lr->m[j].conn);
            sg_membership *m = c ? find_room(c, room) : NULL;
            if (m) {
                release_membership(c, m);
                sg_session_error(c, "replaced", "peerId taken over by a newer connection of the same user",
                                 NULL, room);
            }
            break;
        }
    }
}

static void on_refresh_reply(sg_server *s, sg_op *op, redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != op->nrooms)
        return;
    const char *room = op->rooms;
    for (size_t i = 0; i < r->elements; i++, room += strlen(room) + 1)
        on_room_refreshed(s, room, r->element[i]);
}

void sg_session_on_reply(void *srv, uint64_t tag, redisReply *r)
{
    sg_server *s = srv;
    if (!tag)
        return; /* fire-and-forget commands (the delivery probe) */
    sg_op *op = (sg_op *)(uintptr_t)tag;
    if (op->span.valid) {
        /* The span ends with the script's answer; a refusal is its error. */
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
        op_span_end(s, op, name, op->kind == OP_RELAY ? SG_SPAN_PRODUCER : SG_SPAN_INTERNAL, err);
    }
    switch (op->kind) {
    case OP_JOIN: on_join_reply(s, op, r); break;
    case OP_LEAVE: on_leave_reply(s, op, r); break;
    case OP_RELAY: on_relay_reply(s, op, r); break;
    case OP_REFRESH: on_refresh_reply(s, op, r); break;
    case OP_RESUME: on_resume_reply(s, op, r); break;
    case OP_CATCHUP: on_catch_up_reply(s, op, r); break;
    }
    op_free(s, op);
}

/* ---- entry ----------------------------------------------------------- */

void sg_session_on_text(sg_conn *c, const char *text, size_t len, uint64_t arrival_us)
{
    sg_server *s = c->srv;
    sg_msg *msg = &s->msg; /* decode resets it and reuses its inner buffer */
    sg_proto_error err;
    if (sg_proto_decode(text, len, msg, &err) < 0) {
        sg_metrics_inc(&s->metrics.messages, "invalid");
        sg_session_error(c, err.code, err.message, err.has_cid ? err.cid : NULL, err.has_room ? err.room : NULL);
        return;
    }
    sg_metrics_inc(&s->metrics.messages, sg_msg_type_name(msg->type));
    if (!sg_bus_available(s->bus)) {
        sg_session_error(c, "unavailable", "Redis is unreachable; try again shortly",
                         msg->has_cid ? msg->cid : NULL, msg->room);
        return;
    }
    if (sg_bus_overloaded(s->bus) && msg->type != SG_MSG_LEAVE) {
        /* Leaves still go: they shrink the work. */
        sg_session_error(c, "unavailable", "Redis is overloaded; try again shortly",
                         msg->has_cid ? msg->cid : NULL, msg->room);
        return;
    }
    switch (msg->type) {
    case SG_MSG_JOIN: handle_join(c, msg); break;
    case SG_MSG_LEAVE: handle_leave(c, msg); break;
    case SG_MSG_OFFER:
    case SG_MSG_ANSWER:
    case SG_MSG_CANDIDATE: handle_relay(c, msg, arrival_us); break;
    case SG_MSG_RESUME: handle_resume(c, msg); break;
    default: break;
    }
}
