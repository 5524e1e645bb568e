/* Leases: the members this node holds, per room, renewed in batches every
 * lease/3 (lua/refresh.lua), and re-asserted after Redis came back, even
 * empty. With them go the room-mates this node saw held elsewhere, which
 * are re-asserted as ghosts so that a member who left while Redis was away
 * still ends in peer_left (HA guide). */
#include "session_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the local room index ------------------------------------------------- */

void room_index_add(sg_session *s, const char *room, uint64_t conn, const char *peer, uint64_t joined_at_ms)
{
    size_t n = strlen(room);
    sg_local_room *lr = sg_map_get(&s->rooms, room, n);
    if (!lr) {
        lr = sg_xcalloc(1, sizeof *lr);
        sg_map_put(&s->rooms, room, n, lr);
    }
    if (lr->n == lr->cap) {
        lr->cap = lr->cap ? lr->cap * 2 : 2;
        lr->m = sg_xrealloc(lr->m, lr->cap * sizeof *lr->m);
    }
    sg_local_member *m = &lr->m[lr->n++];
    m->conn = conn;
    sg_strlcpy(m->peer, peer, sizeof m->peer);
    m->joined_at_ms = joined_at_ms;
}

static void free_room(sg_local_room *lr)
{
    free(lr->m);
    free(lr->remote);
    free(lr);
}

void room_index_remove(sg_session *s, const char *room, uint64_t conn, const char *peer)
{
    size_t n = strlen(room);
    sg_local_room *lr = sg_map_get(&s->rooms, room, n);
    if (!lr)
        return;
    for (size_t i = 0; i < lr->n; i++)
        if (lr->m[i].conn == conn && strcmp(lr->m[i].peer, peer) == 0) {
            lr->m[i] = lr->m[--lr->n];
            break;
        }
    if (!lr->n) {
        sg_map_del(&s->rooms, room, n);
        free_room(lr);
    }
}

void room_index_free(sg_session *s)
{
    size_t i;
    for (sg_map_entry *e = sg_map_first(&s->rooms, &i); e; e = sg_map_next(&s->rooms, &i, e))
        free_room(e->value);
    sg_map_free(&s->rooms);
}

/* ---- room-mates held elsewhere --------------------------------------------- */

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

/* The room's members as a script listed them: {peer, subhash, ...} from
 * index `from`. */
void roster_set(sg_session *s, const char *room, const redisReply *list, size_t from)
{
    sg_local_room *lr = sg_map_get(&s->rooms, room, strlen(room));
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
    sg_local_room *lr = sg_map_get(&s->rooms, room, strlen(room));
    if (!lr || !sg_wire_parse_event(e->frame.p, e->frame.n, &ev))
        return;
    if (ev.joined)
        roster_add(lr, ev.peer, e->traceparent);
    else
        roster_del(lr, ev.peer.p, ev.peer.n);
}

/* ---- refresh batches -------------------------------------------------------- */

/* Lease refreshes go in batches: one script call renews many rooms, which
 * is most of what idle connections cost Redis and the gateway. */
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

static void batch_num(refresh_batch *b, uint64_t v)
{
    char num[24];
    batch_arg(b, num, (size_t)snprintf(num, sizeof num, "%llu", (unsigned long long)v));
}

static void batch_flush(sg_session *s, refresh_batch *b)
{
    if (!b->nrooms)
        return;
    const char **args = sg_xmalloc((b->n ? b->n : 1) * sizeof *args);
    for (size_t i = 0; i < b->n; i++)
        args[i] = b->arena.data + b->off[i];
    sg_op *op = op_new(s, OP_REFRESH, 0);
    sg_buf names;
    sg_buf_init(&names);
    for (int r = 0; r < b->nrooms; r++)
        sg_buf_append(&names, b->rooms[r], strlen(b->rooms[r]) + 1);
    op->rooms = names.data; /* the op owns it now */
    op->nrooms = (uint32_t)b->nrooms;
    if (sg_ops_refresh(&s->ops, b->rooms, b->nrooms, b->silent, (int)b->n, args, op_tag(op)) < 0)
        op_free(s, op);
    free(args);
    b->nrooms = 0;
    b->n = 0;
    sg_buf_reset(&b->arena);
}

static void batch_free(refresh_batch *b)
{
    sg_buf_free(&b->arena);
    free(b->off);
}

/* One room's arguments (lua/refresh.lua): room id, the ghosts to re-assert
 * after a reconnect (peer, subhash), and this node's members. */
static void batch_room(sg_session *s, refresh_batch *b, const char *room, const sg_local_room *lr)
{
    size_t nmembers = 0;
    for (size_t i = 0; i < lr->n; i++) {
        sg_sconn *c = sess_conn(s, lr->m[i].conn);
        nmembers += c && find_room(c, room);
    }
    if (!nmembers)
        return;
    if (b->nrooms == REFRESH_BATCH_ROOMS || b->n > REFRESH_BATCH_ARGS)
        batch_flush(s, b);
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

void refresh_leases(sg_session *s)
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
    uint64_t tick = SG_SESSION_TICK_MS;
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

void reassert(sg_session *s)
{
    size_t i;
    refresh_batch b = {.silent = true};
    sg_buf_init(&b.arena);
    for (sg_map_entry *e = sg_map_first(&s->rooms, &i); e; e = sg_map_next(&s->rooms, &i, e))
        batch_room(s, &b, e->key, e->value);
    batch_flush(s, &b);
    batch_free(&b);
}

/* Peers this node held but Redis says another connection holds now (a
 * takeover elsewhere; the 'x' message normally told us already). */
static void forget_lost(sg_session *s, const char *room, const redisReply *lost)
{
    for (size_t i = 0; i < lost->elements; i++) {
        if (lost->element[i]->type != REDIS_REPLY_STRING)
            continue;
        sg_local_room *lr = sg_map_get(&s->rooms, room, strlen(room));
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

/* A refresh reply: per room {lost[, members]} (members after a reconnect). */
void on_refresh_reply(sg_session *s, sg_op *op, redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != op->nrooms) {
        log_script_error(s, "refresh", r);
        return;
    }
    const char *room = op->rooms;
    for (size_t i = 0; i < r->elements; i++, room += strlen(room) + 1) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 1 || e->element[0]->type != REDIS_REPLY_ARRAY)
            continue;
        if (e->elements == 2)
            roster_set(s, room, e->element[1], 0);
        forget_lost(s, room, e->element[0]);
    }
}
