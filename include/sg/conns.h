/* SPDX-License-Identifier: Apache-2.0 */
/* conns: the connection table, the bookkeeping of the connections a node
 * holds. It owns, for every connection: its id and its place in the
 * registry (id -> connection), its count against SIGNAL_MAX_CONNECTIONS and
 * SIGNAL_MAX_CONNECTIONS_PER_IP, its place on the deferred list and its one
 * timer on the wheel. It knows nothing of sockets, WebSocket or the
 * session: a connection embeds an sg_conns_entry, and the table calls back
 * through sg_conns_ops with that entry (the owner finds its struct around
 * it), so this module sits below conn.c, which is its only user besides
 * the server that creates it.
 *
 * Ownership: the table never frees an entry. The owner frees its struct
 * from ops.release, and only there: sg_conns_defer queues an entry for the
 * deferred pass, which runs from its own event at the top of the loop, so
 * a connection cut inside a callback stays valid until that callback
 * returns. An entry must be removed (sg_conns_remove) and disarmed before
 * it is freed, and taken off the flush list (sg_conns_cancel_flush). */
#ifndef SG_CONNS_H
#define SG_CONNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;

typedef struct sg_conns sg_conns;

/* A connection's row, embedded in the connection's struct. The fields are
 * the table's; the owner reads id and ip, and writes none of them. */
typedef struct sg_conns_entry {
    uint64_t id;           /* 0 until sg_conns_add */
    char ip[46];           /* INET6_ADDRSTRLEN: the address counted by the per-IP cap; never logged */
    bool admitted;         /* counted against the caps (not refused at accept) */
    bool deferred;         /* on the deferred list */
    struct sg_conns_entry *next_deferred;
    /* On the flush list: fpprev NULL when not. */
    struct sg_conns_entry *fnext, **fpprev;
    /* The timer: wpprev NULL when not armed. */
    struct sg_conns_entry *wnext, **wpprev;
    uint64_t wdue_ms;
} sg_conns_entry;

typedef struct sg_conns_limits {
    uint64_t max_connections; /* SIGNAL_MAX_CONNECTIONS */
    uint64_t max_per_ip;      /* SIGNAL_MAX_CONNECTIONS_PER_IP; 0: off, no per-IP counts kept */
} sg_conns_limits;

typedef struct sg_conns_ops {
    /* The deferred pass's work for one entry queued by sg_conns_defer. It may
     * free the entry's struct (removed and disarmed), queue it again later,
     * and defer, arm or remove others. */
    void (*release)(sg_conns_entry *e);
    /* The entry's timer came due; it is disarmed already and may be armed
     * again, removed or deferred, as may others. */
    void (*fire)(sg_conns_entry *e);
    /* The flush pass's work for one entry queued by sg_conns_want_flush
     * (it is off the list by then and may be queued again). It may defer
     * entries but must not free any: freeing is release's. */
    void (*flush)(sg_conns_entry *e);
} sg_conns_ops;

sg_conns *sg_conns_new(struct event_base *base, const sg_conns_limits *limits, const sg_conns_ops *ops);
/* Frees the table. Every entry must be gone by then: removed, disarmed
 * and released (sg_conns_run_deferred). */
void sg_conns_free(sg_conns *t);

/* ---- registry ------------------------------------------------------------ */

/* Gives e the next id, its source address, and registers it. */
void sg_conns_add(sg_conns *t, sg_conns_entry *e, const char *ip);
/* Unregisters e and takes it off the caps (sg_conns_unadmit). Idempotent. */
void sg_conns_remove(sg_conns *t, sg_conns_entry *e);
/* The registered entry with this id, or NULL (never was, or removed). */
sg_conns_entry *sg_conns_get(const sg_conns *t, uint64_t id);
size_t sg_conns_count(const sg_conns *t);
/* Writes up to max ids of registered entries; returns how many. For a pass
 * over every connection that may remove some as it goes. */
size_t sg_conns_ids(const sg_conns *t, uint64_t *ids, size_t max);

/* ---- admission ------------------------------------------------------------ */

/* The cap a new connection from ip would trip, checked before a byte is
 * read: "max_connections" or "max_connections_per_ip" (metric labels), or
 * NULL. ip_exempt (a trusted proxy) skips the per-IP cap: its clients are
 * counted once the request head names them (sg_conns_move_ip). */
const char *sg_conns_cap_at_accept(const sg_conns *t, const char *ip, bool ip_exempt);
/* Counts e against both caps, from now until sg_conns_unadmit. */
void sg_conns_admit(sg_conns *t, sg_conns_entry *e);
void sg_conns_unadmit(sg_conns *t, sg_conns_entry *e);
/* The address e is counted by becomes ip (a proxy's client, from
 * X-Forwarded-For); its per-IP count moves with it. */
void sg_conns_move_ip(sg_conns *t, sg_conns_entry *e, const char *ip);
/* Whether e's address holds more connections than the per-IP cap allows
 * (after a move, e itself counted). */
bool sg_conns_over_ip_cap(const sg_conns *t, const sg_conns_entry *e);
/* Connections counted against SIGNAL_MAX_CONNECTIONS, and per address. */
uint64_t sg_conns_admitted(const sg_conns *t);
uint64_t sg_conns_ip_count(const sg_conns *t, const char *ip);

/* ---- deferred pass --------------------------------------------------------- */

/* Queues e for ops.release after the current callback chain returns (once,
 * however often it is queued before then). */
void sg_conns_defer(sg_conns *t, sg_conns_entry *e);
/* Whether the deferred pass still owes work. */
bool sg_conns_pending(const sg_conns *t);
/* Runs the deferred pass now, until nothing is queued (at exit). */
void sg_conns_run_deferred(sg_conns *t);

/* ---- flush pass ------------------------------------------------------------ */

/* Queues e for ops.flush after the current callback chain returns (once,
 * however often it is queued before then). A connection's frames written
 * during one pass of the loop leave in one send there, without the
 * writability watch (two epoll_ctl) a write through the bufferevent costs. */
void sg_conns_want_flush(sg_conns *t, sg_conns_entry *e);
/* Takes e off the flush list (before it is freed, or when its output is
 * handed to the bufferevent). Idempotent. */
void sg_conns_cancel_flush(sg_conns *t, sg_conns_entry *e);

/* ---- timers ------------------------------------------------------------------ */

/* Arms e's one timer ms from now (re-arming replaces it): ops.fire runs at
 * the first wheel tick at or after the deadline, never before it. */
void sg_conns_arm(sg_conns *t, sg_conns_entry *e, int64_t ms);
void sg_conns_disarm(sg_conns *t, sg_conns_entry *e);

#endif
