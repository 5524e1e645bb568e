/* SPDX-License-Identifier: Apache-2.0 */
#include "sg/conns.h"
#include "sg/map.h"
#include "sg/util.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

/* Every connection has one timer (handshake deadline, heartbeat, close
 * wait). One libevent timer per connection meant an allocated event each and
 * a heap operation per re-arm, twice per ping; this wheel is one libevent
 * timer ticking every WHEEL_TICK_MS while any connection is armed. A timer
 * fires at the first tick at or after its deadline (at most a tick late,
 * never early); deadlines beyond one turn wait in their slot for a later
 * turn. */
#define WHEEL_TICK_MS 25
#define WHEEL_SLOTS 1024 /* one turn: 25.6 s */

typedef struct sg_conns_wheel {
    struct event *tick;
    uint64_t cursor;        /* next tick number to process (ms / WHEEL_TICK_MS) */
    size_t count;           /* armed entries */
    sg_conns_entry *firing; /* due ones of the tick being processed */
    sg_conns_entry *slot[WHEEL_SLOTS];
} sg_conns_wheel;

struct sg_conns {
    sg_conns_limits limits;
    sg_conns_ops ops;
    sg_map registry;        /* id -> sg_conns_entry* */
    sg_map ip_counts;       /* source address -> count, when the per-IP cap is on */
    uint64_t admitted;      /* from accept until gone, those refused at accept excepted */
    uint64_t next_id;
    sg_conns_entry *deferred; /* LIFO; the pass runs until it is empty */
    struct event *reaper;   /* the deferred pass, made active by sg_conns_defer */
    sg_conns_entry *flushes; /* the flush list */
    struct event *flusher;  /* the flush pass, made active by sg_conns_want_flush */
    sg_conns_wheel wheel;
};

static void on_reaper(evutil_socket_t fd, short what, void *arg);
static void on_wheel_tick(evutil_socket_t fd, short what, void *arg);
static void on_flusher(evutil_socket_t fd, short what, void *arg);

sg_conns *sg_conns_new(struct event_base *base, const sg_conns_limits *limits, const sg_conns_ops *ops)
{
    sg_conns *t = sg_xcalloc(1, sizeof *t);
    t->limits = *limits;
    t->ops = *ops;
    sg_map_init(&t->registry);
    sg_map_init(&t->ip_counts);
    t->reaper = event_new(base, -1, 0, on_reaper, t);
    t->wheel.tick = event_new(base, -1, EV_PERSIST, on_wheel_tick, t);
    t->flusher = event_new(base, -1, 0, on_flusher, t);
    return t;
}

void sg_conns_free(sg_conns *t)
{
    if (!t)
        return;
    sg_map_free(&t->registry);
    sg_map_free(&t->ip_counts);
    event_free(t->reaper);
    event_free(t->wheel.tick);
    event_free(t->flusher);
    free(t);
}

/* ---- registry ------------------------------------------------------------ */

void sg_conns_add(sg_conns *t, sg_conns_entry *e, const char *ip)
{
    e->id = ++t->next_id;
    sg_strlcpy(e->ip, ip, sizeof e->ip);
    sg_map_put_u64(&t->registry, e->id, e);
}

void sg_conns_remove(sg_conns *t, sg_conns_entry *e)
{
    sg_map_del_u64(&t->registry, e->id);
    sg_conns_unadmit(t, e);
}

sg_conns_entry *sg_conns_get(const sg_conns *t, uint64_t id) { return sg_map_get_u64(&t->registry, id); }

size_t sg_conns_count(const sg_conns *t) { return t->registry.count; }

size_t sg_conns_ids(const sg_conns *t, uint64_t *ids, size_t max)
{
    size_t i, k = 0;
    for (sg_map_entry *m = sg_map_first(&t->registry, &i); m && k < max; m = sg_map_next(&t->registry, &i, m))
        ids[k++] = ((sg_conns_entry *)m->value)->id;
    return k;
}

/* ---- admission ------------------------------------------------------------ */

/* Per-IP counts are kept only while the per-IP cap is on; an address
 * leaves the map with its last connection. */
static uint64_t ip_count(const sg_conns *t, const char *ip)
{
    return (uintptr_t)sg_map_get(&t->ip_counts, ip, strlen(ip));
}

static void ip_add(sg_conns *t, const char *ip, int delta)
{
    if (!t->limits.max_per_ip)
        return;
    size_t len = strlen(ip);
    uintptr_t n = (uintptr_t)sg_map_get(&t->ip_counts, ip, len);
    if (delta < 0 && n <= 1)
        sg_map_del(&t->ip_counts, ip, len);
    else
        sg_map_put(&t->ip_counts, ip, len, (void *)(delta < 0 ? n - 1 : n + 1));
}

/* Both caps count every connection from accept until it is gone: a pending
 * handshake holds a descriptor and memory as an open connection does. */
const char *sg_conns_cap_at_accept(const sg_conns *t, const char *ip, bool ip_exempt)
{
    if (t->admitted >= t->limits.max_connections)
        return "max_connections";
    if (t->limits.max_per_ip && !ip_exempt && ip_count(t, ip) >= t->limits.max_per_ip)
        return "max_connections_per_ip";
    return NULL;
}

void sg_conns_admit(sg_conns *t, sg_conns_entry *e)
{
    if (e->admitted)
        return;
    e->admitted = true;
    t->admitted++;
    ip_add(t, e->ip, +1);
}

void sg_conns_unadmit(sg_conns *t, sg_conns_entry *e)
{
    if (!e->admitted)
        return;
    e->admitted = false;
    t->admitted--;
    ip_add(t, e->ip, -1);
}

void sg_conns_move_ip(sg_conns *t, sg_conns_entry *e, const char *ip)
{
    if (e->admitted)
        ip_add(t, e->ip, -1);
    sg_strlcpy(e->ip, ip, sizeof e->ip);
    if (e->admitted)
        ip_add(t, e->ip, +1);
}

bool sg_conns_over_ip_cap(const sg_conns *t, const sg_conns_entry *e)
{
    return t->limits.max_per_ip && ip_count(t, e->ip) > t->limits.max_per_ip;
}

uint64_t sg_conns_admitted(const sg_conns *t) { return t->admitted; }

uint64_t sg_conns_ip_count(const sg_conns *t, const char *ip) { return ip_count(t, ip); }

/* ---- deferred pass --------------------------------------------------------- */

/* What a connection's end owes (the session's close, the free) is done here,
 * at the top of the event loop, where no caller holds the connection. */
static void on_reaper(evutil_socket_t fd, short what, void *arg)
{
    sg_conns *t = arg;
    while (t->deferred) {
        sg_conns_entry *e = t->deferred;
        t->deferred = e->next_deferred;
        e->next_deferred = NULL;
        e->deferred = false;
        t->ops.release(e);
    }
}

void sg_conns_defer(sg_conns *t, sg_conns_entry *e)
{
    if (e->deferred)
        return;
    e->deferred = true;
    e->next_deferred = t->deferred;
    t->deferred = e;
    event_active(t->reaper, EV_TIMEOUT, 0);
}

bool sg_conns_pending(const sg_conns *t) { return t->deferred != NULL; }

void sg_conns_run_deferred(sg_conns *t) { on_reaper(-1, 0, t); }

/* ---- flush pass ------------------------------------------------------------ */

/* Runs after the callbacks that were active when the first entry was queued
 * (an event made active joins the end of the loop's active queue): what
 * one pass over the ready sockets wrote to a connection leaves in one send. */
static void on_flusher(evutil_socket_t fd, short what, void *arg)
{
    sg_conns *t = arg;
    while (t->flushes) {
        sg_conns_entry *e = t->flushes;
        sg_conns_cancel_flush(t, e);
        t->ops.flush(e);
    }
}

void sg_conns_want_flush(sg_conns *t, sg_conns_entry *e)
{
    if (e->fpprev)
        return;
    e->fnext = t->flushes;
    if (t->flushes)
        t->flushes->fpprev = &e->fnext;
    e->fpprev = &t->flushes;
    t->flushes = e;
    event_active(t->flusher, EV_TIMEOUT, 0);
}

void sg_conns_cancel_flush(sg_conns *t, sg_conns_entry *e)
{
    (void)t;
    if (!e->fpprev)
        return;
    *e->fpprev = e->fnext;
    if (e->fnext)
        e->fnext->fpprev = e->fpprev;
    e->fnext = NULL;
    e->fpprev = NULL;
}

/* ---- timers ------------------------------------------------------------------ */

static void wheel_link(sg_conns_entry **head, sg_conns_entry *e)
{
    e->wnext = *head;
    if (*head)
        (*head)->wpprev = &e->wnext;
    *head = e;
    e->wpprev = head;
}

static void wheel_unlink(sg_conns_entry *e)
{
    *e->wpprev = e->wnext;
    if (e->wnext)
        e->wnext->wpprev = e->wpprev;
    e->wnext = NULL;
    e->wpprev = NULL;
}

void sg_conns_disarm(sg_conns *t, sg_conns_entry *e)
{
    if (!e->wpprev)
        return;
    wheel_unlink(e);
    if (--t->wheel.count == 0)
        evtimer_del(t->wheel.tick);
}

void sg_conns_arm(sg_conns *t, sg_conns_entry *e, int64_t ms)
{
    sg_conns_wheel *w = &t->wheel;
    if (ms < 0)
        ms = 0;
    sg_conns_disarm(t, e);
    uint64_t now = sg_now_mono_ms();
    if (w->count++ == 0) {
        w->cursor = now / WHEEL_TICK_MS;
        struct timeval tv = {0, WHEEL_TICK_MS * 1000};
        evtimer_add(w->tick, &tv);
    }
    e->wdue_ms = now + (uint64_t)ms;
    uint64_t tick = (e->wdue_ms + WHEEL_TICK_MS - 1) / WHEEL_TICK_MS;
    if (tick < w->cursor)
        tick = w->cursor; /* never behind the cursor, or it would wait a turn */
    wheel_link(&w->slot[tick % WHEEL_SLOTS], e);
}

static void on_wheel_tick(evutil_socket_t fd, short what, void *arg)
{
    sg_conns *t = arg;
    sg_conns_wheel *w = &t->wheel;
    uint64_t now = sg_now_mono_ms();
    uint64_t target = now / WHEEL_TICK_MS;
    /* After a stall longer than a turn, one pass over every slot finds
     * everything due; the cursor still moves one slot at a time, so what
     * the callbacks arm lands ahead of it. */
    if (target >= w->cursor && target - w->cursor >= WHEEL_SLOTS)
        w->cursor = target - WHEEL_SLOTS + 1;
    while (w->cursor <= target) {
        sg_conns_entry **head = &w->slot[w->cursor % WHEEL_SLOTS];
        w->cursor++; /* what the callbacks arm goes to a later tick */
        sg_conns_entry *next;
        for (sg_conns_entry *e = *head; e; e = next) {
            next = e->wnext;
            if (e->wdue_ms <= now) {
                wheel_unlink(e);
                wheel_link(&w->firing, e);
            }
        }
        /* One at a time: a callback may disarm (abort) others still here. */
        sg_conns_entry *e;
        while ((e = w->firing)) {
            sg_conns_disarm(t, e);
            t->ops.fire(e);
        }
    }
}
