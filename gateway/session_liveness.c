/* SPDX-License-Identifier: Apache-2.0 */
/* Liveness without per-room work. A member is alive while the gateway
 * instance holding it heartbeats (lua/nodes.lua, once a third of a lease,
 * whatever the number of rooms); an instance silent for a lease is reaped
 * by whichever live one finds it, room by room from the set of rooms it
 * answered for (lua/reap.lua). Deadlines (a grace period, a ghost's life)
 * are watched by one instance each, which ends them (lua/expire.lua); the
 * reaper takes over those of a dead instance.
 *
 * After Redis came back (even empty), or when this instance finds it was
 * taken for dead, it re-asserts every membership it holds (lua/reassert.lua)
 * and, after a reconnect, the room-mates held elsewhere as ghosts, so a
 * member who left while Redis was away still ends in peer_left. The keys of
 * a room get their TTL renewed by the same call every SG_ROOM_TTL_MS/3. */
#include "session_internal.h"
#include "sg/slots.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the rooms this instance answers for ----------------------------------- */

static sg_local_room *local_room(sg_session *s, const char *room, bool create)
{
    size_t n = strlen(room);
    sg_local_room *lr = sg_map_get(&s->rooms, room, n);
    if (!lr && create) {
        lr = sg_xcalloc(1, sizeof *lr);
        lr->renew_ms = sg_now_mono_ms();
        sg_map_put(&s->rooms, room, n, lr);
    }
    return lr;
}

static void free_room(sg_local_room *lr)
{
    free(lr->m);
    free(lr->remote);
    free(lr);
}

/* Forgets a room this instance has nothing more to do with, in Redis too. */
static void maybe_drop_room(sg_session *s, const char *room)
{
    size_t n = strlen(room);
    sg_local_room *lr = sg_map_get(&s->rooms, room, n);
    if (!lr || lr->n || lr->watches || lr->pending)
        return;
    sg_map_del(&s->rooms, room, n);
    free_room(lr);
    sg_ops_room_held(&s->ops, room, false);
}

void room_announce(sg_session *s, const char *room)
{
    if (!sg_map_get(&s->rooms, room, strlen(room)))
        sg_ops_room_held(&s->ops, room, true);
}

void room_unannounce(sg_session *s, const char *room)
{
    if (!sg_map_get(&s->rooms, room, strlen(room)))
        sg_ops_room_held(&s->ops, room, false);
}

void room_pending(sg_session *s, const char *room)
{
    local_room(s, room, true)->pending++;
}

void room_settled(sg_session *s, const char *room)
{
    sg_local_room *lr = local_room(s, room, false);
    if (lr && lr->pending)
        lr->pending--;
    maybe_drop_room(s, room);
}

void room_index_add(sg_session *s, const char *room, uint64_t conn, const char *peer, uint64_t joined_at_ms)
{
    sg_local_room *lr = local_room(s, room, true);
    if (lr->n == lr->cap) {
        lr->cap = lr->cap ? lr->cap * 2 : 2;
        lr->m = sg_xrealloc(lr->m, lr->cap * sizeof *lr->m);
    }
    sg_local_member *m = &lr->m[lr->n++];
    m->conn = conn;
    sg_strlcpy(m->peer, peer, sizeof m->peer);
    m->joined_at_ms = joined_at_ms;
}

void room_index_remove(sg_session *s, const char *room, uint64_t conn, const char *peer)
{
    sg_local_room *lr = local_room(s, room, false);
    if (!lr)
        return;
    for (size_t i = 0; i < lr->n; i++)
        if (lr->m[i].conn == conn && strcmp(lr->m[i].peer, peer) == 0) {
            lr->m[i] = lr->m[--lr->n];
            break;
        }
    maybe_drop_room(s, room);
}

void room_index_free(sg_session *s)
{
    size_t i;
    for (sg_map_entry *e = sg_map_first(&s->rooms, &i); e; e = sg_map_next(&s->rooms, &i, e))
        free_room(e->value);
    sg_map_free(&s->rooms);
    for (size_t k = 0; k < s->nwatch; k++)
        free(s->watch[k].room);
    free(s->watch);
    sg_map_free(&s->reaping);
}

/* ---- deadlines: a min-heap by until ---------------------------------------- */

static void heap_swap(sg_watch *a, sg_watch *b)
{
    sg_watch t = *a;
    *a = *b;
    *b = t;
}

void watch_deadline(sg_session *s, const char *room, const char *peer, size_t plen, uint64_t until, bool holds)
{
    if (plen == 0 || plen > SG_PEER_LEN)
        return;
    if (s->nwatch == s->watch_cap) {
        s->watch_cap = s->watch_cap ? s->watch_cap * 2 : 16;
        s->watch = sg_xrealloc(s->watch, s->watch_cap * sizeof *s->watch);
    }
    size_t i = s->nwatch++;
    s->watch[i].until = until;
    s->watch[i].room = sg_xstrdup(room);
    memcpy(s->watch[i].peer, peer, plen);
    s->watch[i].peer[plen] = '\0';
    s->watch[i].holds = holds;
    for (; i > 0 && s->watch[(i - 1) / 2].until > s->watch[i].until; i = (i - 1) / 2)
        heap_swap(&s->watch[i], &s->watch[(i - 1) / 2]);
    if (holds)
        local_room(s, room, true)->watches++;
}

static sg_watch watch_pop(sg_session *s)
{
    sg_watch top = s->watch[0];
    s->watch[0] = s->watch[--s->nwatch];
    for (size_t i = 0;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < s->nwatch && s->watch[l].until < s->watch[m].until)
            m = l;
        if (r < s->nwatch && s->watch[r].until < s->watch[m].until)
            m = r;
        if (m == i)
            break;
        heap_swap(&s->watch[i], &s->watch[m]);
        i = m;
    }
    return top;
}

/* Deadlines are Redis' clock, compared with this node's: the difference is
 * the clock skew between them, on top of the tick. */
static void expire_due(sg_session *s, uint64_t now_wall)
{
    while (s->nwatch && s->watch[0].until <= now_wall) {
        sg_watch w = watch_pop(s);
        sg_op *op = op_new(s, OP_EXPIRE, 0);
        sg_strlcpy(op->room, w.room, sizeof op->room);
        sg_strlcpy(op->peer, w.peer, sizeof op->peer);
        op->until = w.until;
        op->lost = w.holds;
        /* A holding watch keeps the room in the set until the answer: its
         * reference becomes the op's. */
        sg_local_room *lr = w.holds ? local_room(s, w.room, true) : NULL;
        if (lr) {
            lr->watches--;
            lr->pending++;
        }
        if (sg_ops_expire(&s->ops, w.room, w.peer, w.until, op_tag(op)) < 0) {
            op_free(s, op);
            if (lr)
                lr->pending--;
            watch_deadline(s, w.room, w.peer, strlen(w.peer), w.until, w.holds); /* again when Redis is back */
            free(w.room);
            return;
        }
        free(w.room);
    }
}

void on_expire_reply(sg_session *s, sg_op *op, redisReply *r)
{
    if (!r) /* Redis went: the deadline is still to be enforced */
        watch_deadline(s, op->room, op->peer, strlen(op->peer), op->until, op->lost);
    log_script_error(s, "expire", r);
    if (op->lost)
        room_settled(s, op->room);
}

/* A {peer, until, ...} reply list: deadlines this instance now watches. */
static void watch_list(sg_session *s, const char *room, const redisReply *list, bool holds)
{
    for (size_t i = 0; list && list->type == REDIS_REPLY_ARRAY && i + 1 < list->elements; i += 2) {
        const redisReply *p = list->element[i], *u = list->element[i + 1];
        if (p->type == REDIS_REPLY_STRING && u->type == REDIS_REPLY_STRING)
            watch_deadline(s, room, p->str, p->len, strtoull(u->str, NULL, 10), holds);
    }
}

/* ---- room-mates held elsewhere ------------------------------------------------ */

static bool held_here(const sg_local_room *lr, const char *peer, size_t len)
{
    for (size_t i = 0; i < lr->n; i++)
        if (strlen(lr->m[i].peer) == len && memcmp(lr->m[i].peer, peer, len) == 0)
            return true;
    return false;
}

static sg_remote_member *roster_find(sg_local_room *lr, const char *peer, size_t len)
{
    for (size_t i = 0; i < lr->nremote; i++)
        if (strlen(lr->remote[i].peer) == len && memcmp(lr->remote[i].peer, peer, len) == 0)
            return &lr->remote[i];
    return NULL;
}

static void roster_add(sg_local_room *lr, sg_wire_str peer, sg_wire_str subhash)
{
    if (peer.n == 0 || peer.n > SG_PEER_LEN || held_here(lr, peer.p, peer.n))
        return;
    sg_remote_member *r = roster_find(lr, peer.p, peer.n);
    if (!r) {
        if (lr->nremote == lr->remote_cap) {
            lr->remote_cap = lr->remote_cap ? lr->remote_cap * 2 : 2;
            lr->remote = sg_xrealloc(lr->remote, lr->remote_cap * sizeof *lr->remote);
        }
        r = &lr->remote[lr->nremote++];
        memcpy(r->peer, peer.p, peer.n);
        r->peer[peer.n] = '\0';
    }
    r->subhash[0] = '\0';
    if (subhash.n == 64) {
        memcpy(r->subhash, subhash.p, 64);
        r->subhash[64] = '\0';
    }
}

static void roster_del(sg_local_room *lr, const char *peer, size_t len)
{
    sg_remote_member *r = roster_find(lr, peer, len);
    if (r)
        *r = lr->remote[--lr->nremote];
}

/* The room's members as a function listed them: {peer, subhash, ...} from
 * index `from`. */
void roster_set(sg_session *s, const char *room, const redisReply *list, size_t from)
{
    sg_local_room *lr = local_room(s, room, false);
    if (!lr || !list || list->type != REDIS_REPLY_ARRAY)
        return;
    lr->nremote = 0;
    for (size_t i = from; i + 1 < list->elements; i += 2) {
        const redisReply *p = list->element[i], *h = list->element[i + 1];
        if (p->type == REDIS_REPLY_STRING && h->type == REDIS_REPLY_STRING)
            roster_add(lr, (sg_wire_str){p->str, p->len}, (sg_wire_str){h->str, h->len});
    }
}

/* A membership event on one of this node's channels: peer_joined carries
 * the joiner's sub hash in the envelope (wire.h). */
void roster_event(sg_session *s, const char *room, const sg_wire_envelope *e)
{
    sg_wire_event ev;
    sg_local_room *lr = local_room(s, room, false);
    if (!lr || !sg_wire_parse_event(e->frame.p, e->frame.n, &ev))
        return;
    if (ev.joined)
        roster_add(lr, ev.peer, e->traceparent);
    else
        roster_del(lr, ev.peer.p, ev.peer.n);
}

/* ---- re-assertion batches ------------------------------------------------------ */

/* Many rooms in one call; in a cluster a call stays in one hash slot, so a
 * batch holds rooms of one slot only (rooms rarely share one: in practice a
 * call a room there). */
#define REASSERT_BATCH_ROOMS 32
#define REASSERT_BATCH_ARGS 1024

typedef struct reassert_batch {
    bool silent;
    int slot;              /* the batch's slot in a cluster, -1: any */
    int nrooms;
    const char *rooms[REASSERT_BATCH_ROOMS];
    sg_buf arena;          /* the rooms' arguments, each NUL-terminated */
    size_t *off, n, cap;   /* where each argument starts in the arena */
} reassert_batch;

static void batch_arg(reassert_batch *b, const char *str, size_t len)
{
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 256;
        b->off = sg_xrealloc(b->off, b->cap * sizeof *b->off);
    }
    b->off[b->n++] = b->arena.len;
    sg_buf_append(&b->arena, str, len);
    sg_buf_putc(&b->arena, '\0');
}

static void batch_num(reassert_batch *b, uint64_t v)
{
    char num[24];
    batch_arg(b, num, (size_t)snprintf(num, sizeof num, "%llu", (unsigned long long)v));
}

static void batch_flush(sg_session *s, reassert_batch *b)
{
    if (!b->nrooms)
        return;
    const char **args = sg_xmalloc((b->n ? b->n : 1) * sizeof *args);
    for (size_t i = 0; i < b->n; i++)
        args[i] = b->arena.data + b->off[i];
    sg_op *op = op_new(s, OP_REASSERT, 0);
    sg_buf names;
    sg_buf_init(&names);
    for (int r = 0; r < b->nrooms; r++) {
        sg_buf_append(&names, b->rooms[r], strlen(b->rooms[r]) + 1);
        /* After an empty restart the instance's set is gone too. */
        if (b->silent)
            sg_ops_room_held(&s->ops, b->rooms[r], true);
    }
    op->rooms = names.data; /* the op owns it now */
    op->nrooms = (uint32_t)b->nrooms;
    op->silent = b->silent;
    if (sg_ops_reassert(&s->ops, b->rooms, b->nrooms, b->silent, (int)b->n, args, op_tag(op)) < 0)
        op_free(s, op);
    free(args);
    b->nrooms = 0;
    b->n = 0;
    sg_buf_reset(&b->arena);
}

static void batch_free(reassert_batch *b)
{
    sg_buf_free(&b->arena);
    free(b->off);
}

/* One room's arguments (lua/reassert.lua): room id, the ghosts to write
 * after a reconnect (peer, subhash), and this instance's members. */
static void batch_room(sg_session *s, reassert_batch *b, const char *room, const sg_local_room *lr)
{
    size_t nmembers = 0;
    for (size_t i = 0; i < lr->n; i++) {
        sg_sconn *c = sess_conn(s, lr->m[i].conn);
        nmembers += c && find_room(c, room);
    }
    if (!nmembers)
        return;
    int slot = sg_bus_clustered(s->bus) ? sg_crc16(room, strlen(room)) & (SG_SLOTS - 1) : -1;
    if (b->nrooms == REASSERT_BATCH_ROOMS || b->n > REASSERT_BATCH_ARGS || (b->nrooms && slot != b->slot))
        batch_flush(s, b);
    b->slot = slot;
    b->rooms[b->nrooms++] = room;
    batch_arg(b, room, strlen(room));
    /* A ghost must be protected like any member: only one whose owner's sub
     * hash this node saw goes along. */
    size_t nghosts = 0;
    for (size_t i = 0; b->silent && i < lr->nremote; i++)
        nghosts += lr->remote[i].subhash[0] != '\0';
    batch_num(b, nghosts);
    for (size_t i = 0; nghosts && i < lr->nremote; i++)
        if (lr->remote[i].subhash[0]) {
            batch_arg(b, lr->remote[i].peer, strlen(lr->remote[i].peer));
            batch_arg(b, lr->remote[i].subhash, 64);
        }
    batch_num(b, nmembers);
    for (size_t i = 0; i < lr->n; i++) {
        sg_sconn *c = sess_conn(s, lr->m[i].conn);
        sg_membership *m = c ? find_room(c, room) : NULL;
        if (!m)
            continue;
        char holder[SG_WIRE_HOLDER_MAX];
        batch_arg(b, lr->m[i].peer, strlen(lr->m[i].peer));
        batch_arg(b, holder, holder_of(s, c->id, holder));
        batch_arg(b, c->subhash, strlen(c->subhash));
        batch_num(b, lr->m[i].joined_at_ms);
        batch_arg(b, m->rt, strlen(m->rt));
    }
}

/* After Redis was away the set of rooms this instance answers for may have
 * missed SADDs and SREMs (a room dropped meanwhile would be reaped for
 * nothing, one taken would be missed if this instance died): set anew. */
static void reset_held_rooms(sg_session *s)
{
    const char **rooms = sg_xmalloc((s->rooms.count + 1) * sizeof *rooms);
    size_t n = 0, i;
    for (sg_map_entry *e = sg_map_first(&s->rooms, &i); e; e = sg_map_next(&s->rooms, &i, e))
        rooms[n++] = e->key;
    sg_ops_rooms_held_reset(&s->ops, rooms, n);
    free(rooms);
}

void reassert(sg_session *s, bool silent)
{
    size_t i;
    reassert_batch b = {.silent = silent};
    sg_buf_init(&b.arena);
    uint64_t now = sg_now_mono_ms();
    for (sg_map_entry *e = sg_map_first(&s->rooms, &i); e; e = sg_map_next(&s->rooms, &i, e)) {
        ((sg_local_room *)e->value)->renew_ms = now;
        batch_room(s, &b, e->key, e->value);
    }
    batch_flush(s, &b);
    batch_free(&b);
    if (silent) {
        s->reasserted = true;
        reset_held_rooms(s);
    }
}

/* The keys of a room live SG_ROOM_TTL_MS; each is renewed once a third of
 * that, a slice of the rooms per pass so there is no burst. A pass every
 * RENEW_PASS_MS, not every tick: with few rooms a tick's slice is one room,
 * and a call per room costs Redis more than the rooms in it (32 to a call
 * otherwise); being up to a pass late is nothing against the TTL. */
#define RENEW_PASS_MS 10000
static void renew_ttls(sg_session *s, uint64_t now)
{
    size_t total = s->rooms.count;
    if (!total || now - s->renew_ms < RENEW_PASS_MS)
        return;
    s->renew_ms = now;
    const uint64_t period = SG_ROOM_TTL_MS / 3, tick = RENEW_PASS_MS;
    size_t per_tick = (size_t)(total * tick / period) + 1, done = 0;
    reassert_batch b = {.silent = false};
    sg_buf_init(&b.arena);
    while (done < per_tick && s->renew_cursor < s->rooms.nbuckets) {
        for (sg_map_entry *e = s->rooms.buckets[s->renew_cursor]; e; e = e->next, done++) {
            sg_local_room *lr = e->value;
            if (now - lr->renew_ms < period)
                continue;
            lr->renew_ms = now;
            batch_room(s, &b, e->key, lr);
        }
        s->renew_cursor++;
    }
    batch_flush(s, &b);
    batch_free(&b);
    if (s->renew_cursor >= s->rooms.nbuckets)
        s->renew_cursor = 0;
}

/* Peers this node held but Redis says another connection holds now (a
 * takeover elsewhere; the 'x' message normally told us already). */
static void forget_lost(sg_session *s, const char *room, const redisReply *lost)
{
    for (size_t i = 0; i < lost->elements; i++) {
        if (lost->element[i]->type != REDIS_REPLY_STRING)
            continue;
        sg_local_room *lr = local_room(s, room, false);
        if (!lr)
            return;
        for (size_t j = 0; j < lr->n; j++) {
            if (strcmp(lr->m[j].peer, lost->element[i]->str) != 0)
                continue;
            sg_sconn *c = sess_conn(s, lr->m[j].conn);
            sg_membership *m = c ? find_room(c, room) : NULL;
            if (m) {
                release_membership(s, c, m);
                send_error(s, c, "replaced", "peerId taken over by a newer connection of the same user", NULL,
                           room);
            }
            break;
        }
    }
}

/* Per room {lost, members (silent only), ghosts written {peer, until}}. */
void on_reassert_reply(sg_session *s, sg_op *op, redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != op->nrooms) {
        log_script_error(s, "reassert", r);
        return;
    }
    const char *room = op->rooms;
    for (size_t i = 0; i < r->elements; i++, room += strlen(room) + 1) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 3 || e->element[0]->type != REDIS_REPLY_ARRAY)
            continue;
        if (op->silent) /* after a reconnect: the members as Redis has them now */
            roster_set(s, room, e->element[1], 0);
        /* Ghosts: this instance holds members in the room anyway; if they
         * all leave and it dies before the deadline, the room's TTL ends
         * the ghost. */
        watch_list(s, room, e->element[2], false);
        forget_lost(s, room, e->element[0]);
    }
}

/* ---- heartbeat and reaping -------------------------------------------------- */

static void heartbeat(sg_session *s, uint64_t now, bool now_or_never)
{
    uint64_t period = (uint64_t)s->cfg->lease_ms / 3;
    if (!now_or_never && s->heartbeat_ms && now - s->heartbeat_ms < period)
        return;
    sg_op *op = op_new(s, OP_NODES, 0);
    if (sg_ops_nodes(&s->ops, op_tag(op)) < 0) {
        op_free(s, op);
        return;
    }
    s->heartbeat_ms = now;
}

/* The instance is in signal:nodes before any of its joins can reach Redis
 * (same connection, sent first): if it dies right after, it is found. */
void liveness_up(sg_session *s)
{
    heartbeat(s, sg_now_mono_ms(), true);
}

void liveness_tick(sg_session *s)
{
    if (!sg_bus_available(s->bus))
        return;
    uint64_t now = sg_now_mono_ms();
    heartbeat(s, now, false);
    expire_due(s, sg_now_wall_ms());
    renew_ttls(s, now);
    retry_unsure_leaves(s);
}

/* {reaped, dead...}: this instance had been taken for dead (it puts its
 * members back), and instances to reap. */
void on_nodes_reply(sg_session *s, sg_op *op, redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->element[0]->type != REDIS_REPLY_INTEGER) {
        log_script_error(s, "nodes", r);
        return;
    }
    bool reaped = r->element[0]->integer == 1 && s->heartbeat_ok; /* the first finds no entry */
    s->heartbeat_ok = true;
    if (reaped && !s->reasserted && s->rooms.count) {
        if (sg_log_begin(s->log, SG_LOG_WARN, "node.reaped")) {
            sg_log_str(s->log, "instance", s->ops.inst);
            sg_log_int(s->log, "rooms", (int64_t)s->rooms.count);
            sg_log_end(s->log);
        }
        reassert(s, false);
    }
    s->reasserted = false;
    for (size_t i = 1; i < r->elements; i++) {
        const redisReply *d = r->element[i];
        if (d->type != REDIS_REPLY_STRING || d->len == 0 || d->len >= 96 || sg_map_get(&s->reaping, d->str, d->len))
            continue;
        if (sg_log_begin(s->log, SG_LOG_WARN, "node.dead")) {
            sg_log_strn(s->log, "instance", d->str, d->len);
            sg_log_end(s->log);
        }
        sg_op *q = op_new(s, OP_DEAD_ROOMS, 0);
        q->rooms = sg_xstrndup(d->str, d->len);
        if (sg_ops_dead_rooms(&s->ops, q->rooms, op_tag(q)) < 0)
            op_free(s, q);
        else
            sg_map_put(&s->reaping, d->str, d->len, (void *)(uintptr_t)(1 << 1));
    }
}

/* s->reaping: dead instance -> (reap calls outstanding << 1) | a call failed.
 * The instance is forgotten in Redis once every one of its rooms was
 * reaped; if a call failed it stays, claimed for a lease, and is found
 * dead again then. */
static void reap_done(sg_session *s, const char *dead, bool failed)
{
    size_t n = strlen(dead);
    uintptr_t v = (uintptr_t)sg_map_get(&s->reaping, dead, n) | (failed ? 1 : 0);
    if ((v >> 1) > 1) {
        sg_map_put(&s->reaping, dead, n, (void *)(v - 2));
        return;
    }
    sg_map_del(&s->reaping, dead, n);
    if (!(v & 1))
        sg_ops_forget(&s->ops, dead);
}

/* The rooms a dead instance answered for: each reaped in its own call (one
 * slot each), this instance in their sets first. */
void on_dead_rooms_reply(sg_session *s, sg_op *op, redisReply *r)
{
    const char *dead = op->rooms;
    size_t n = strlen(dead);
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        reap_done(s, dead, true);
        return;
    }
    size_t calls = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING || !sg_room_id_valid(e->str, e->len))
            continue;
        sg_op *q = op_new(s, OP_REAP, 0);
        memcpy(q->room, e->str, e->len);
        q->room[e->len] = '\0';
        q->rooms = sg_xstrdup(dead);
        room_announce(s, q->room);
        room_pending(s, q->room);
        if (sg_ops_reap(&s->ops, q->room, dead, op_tag(q)) < 0) {
            room_settled(s, q->room);
            op_free(s, q);
            continue;
        }
        calls++;
    }
    /* One reference per reap call, plus this one released below. */
    sg_map_put(&s->reaping, dead, n, (void *)(uintptr_t)((calls + 1) << 1));
    reap_done(s, dead, false);
}

void on_reap_reply(sg_session *s, sg_op *op, redisReply *r)
{
    if (r && r->type == REDIS_REPLY_ARRAY)
        watch_list(s, op->room, r, true);
    else
        log_script_error(s, "reap", r);
    room_settled(s, op->room);
    reap_done(s, op->rooms, !r || r->type != REDIS_REPLY_ARRAY);
}
