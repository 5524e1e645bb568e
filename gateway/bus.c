/* SPDX-License-Identifier: Apache-2.0 */
/* See include/sg/bus.h for what the bus does; this file: the topologies
 * (one Redis, Sentinel, Cluster) over links (link.h), routing and
 * redirections, subscriptions, the function library, the probes. */
#include "sg/bus.h"
#include "sg/link.h"
#include "sg/log.h"
#include "sg/map.h"
#include "sg/metrics.h"
#include "sg/rconn.h"
#include "sg/redis_tls.h"
#include "sg/redis_url.h"
#include "sg/resp.h"
#include "sg/slots.h"
#include "sg/util.h"

#include <event2/dns.h>
#include <event2/event.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BACKOFF_MIN_MS 100
#define SUBSCRIBE_BATCH 512 /* channels per SSUBSCRIBE when re-subscribing on one Redis */

enum { MODE_SINGLE = 0, MODE_SENTINEL, MODE_CLUSTER };

/* A channel local peers need. The entry lives while it is referenced or an
 * SSUBSCRIBE/SUNSUBSCRIBE for it is unanswered, so crossing commands for the
 * same channel never confuse its state. */
typedef struct chan {
    uint32_t refs;
    uint32_t inflight;  /* SSUBSCRIBE/SUNSUBSCRIBE sent, not yet acknowledged */
    bool confirmed;     /* Redis acknowledged our last SSUBSCRIBE and nothing is in flight */
    sg_link *at;        /* where the last SSUBSCRIBE went (NULL: nowhere yet) */
} chan;

/* One master the bus talks to. */
typedef struct node {
    sg_link *l;
    bool connecting;        /* a connect is under way */
    /* Through Sentinel: ROLE said this server is the master. Until then
     * the link is up but not used (the sentinels' answer may be stale). */
    bool role_ok;
    uint16_t *inflight;     /* cluster: commands in flight per slot */
    char probe_channel[128];
    uint64_t probe_ok_ms;   /* last probe back (monotonic), 0: none since it came up */
} node;

enum { REQ_USER = 0, REQ_LOAD, REQ_LOAD_CONTROL, REQ_ROLE, REQ_SHARDS, REQ_IGNORE /* ASKING, probes */ };

/* A command the bus sent: its owner's tag, and in a cluster what it needs
 * to go out again after a redirection. */
typedef struct req {
    struct req *next;       /* the free list, or the held queue */
    uint64_t tag;
    uint8_t kind;           /* REQ_* */
    bool asked, moved;      /* already sent again after an ASK / a MOVED */
    uint16_t slot;
    uint16_t extra;         /* its weight less one (sg_bus_fcall_weighted) */
    sg_link *at;            /* where it is in flight */
    size_t len;
    char *bytes;            /* cluster: the encoded command (heap) */
} req;

struct sg_bus {
    struct event_base *base;
    sg_bus_handlers h;
    sg_log *log;
    sg_metrics *metrics;
    int mode;
    char *url, *sentinels, *master_name, *seeds, *node_id;
    int64_t timeout_ms;
    /* The URL's endpoint: where (single) and as whom. In a cluster, the
     * first seed's scheme and credentials, which every master shares. */
    sg_link_target target;
    size_t extra_pending; /* the weights less one of the requests in flight */
    sg_redis_targets targets; /* the URL, the sentinels, the seeds as the settings say */
    char *tls_ca_file, *tls_cert_file, *tls_key_file;
    SSL_CTX *tls;             /* built at start when any endpoint is rediss:// */
    char fn[SG_FN_COUNT][48]; /* "sg_<hash>_<name>" of each function, for FCALL */
    struct evdns_base *dns;   /* Redis and sentinel names, resolved off the loop */
    node *nodes;
    size_t nnodes;
    /* cluster */
    sg_slot_map *map;
    bool have_map;
    sg_link **holding;        /* per slot: the link a MOVED slot drains from (NULL: none) */
    req *held, **held_tail;   /* commands of slots being drained, in order */
    sg_rconn *seed;           /* asks a seed for CLUSTER SHARDS when no link is up */
    size_t seed_idx;
    bool refreshing, refresh_again;
    /* Sentinel */
    sg_rconn *sentinel, *watch;
    size_t sentinel_idx;
    bool watch_active;
    struct event *watch_retry;
    struct event *retry;
    int attempts;
    bool available;
    bool was_available;       /* a return after this is "fresh" */
    sg_map chans;
    req *req_free;
    uint64_t probes_sent, probes_received;
    /* Masters a new map dropped while commands were in flight there: kept
     * until they answered them (each ran, or comes back MOVED), then closed. */
    node *draining;
    size_t ndraining;
    sg_link **dead_links;     /* dropped from the map, freed by the reaper */
    size_t ndead;
    struct event *reaper;
};

static void schedule_connect(sg_bus *b);
static void refresh_map(sg_bus *b);

static void log_redis(sg_bus *b, int level, const char *event, const char *host, int port, const char *why)
{
    if (sg_log_begin(b->log, level, event)) {
        sg_log_str(b->log, "host", host);
        sg_log_int(b->log, "port", port);
        if (why)
            sg_log_str(b->log, "reason", why);
        sg_log_end(b->log);
    }
}

static node *node_of(const sg_bus *b, const sg_link *l)
{
    for (size_t i = 0; l && i < b->nnodes; i++)
        if (b->nodes[i].l == l)
            return &b->nodes[i];
    return NULL;
}

static node *draining_of(const sg_bus *b, const sg_link *l)
{
    for (size_t i = 0; l && i < b->ndraining; i++)
        if (b->draining[i].l == l)
            return &b->draining[i];
    return NULL;
}

/* The node a command was sent to: a master of the map, or one draining. */
static node *sender_of(const sg_bus *b, const sg_link *l)
{
    node *nd = node_of(b, l);
    return nd ? nd : draining_of(b, l);
}

static node *node_at(const sg_bus *b, const char *host, int port)
{
    for (size_t i = 0; i < b->nnodes; i++)
        if (sg_link_is(b->nodes[i].l, host, port))
            return &b->nodes[i];
    return NULL;
}

/* The master of a slot (cluster) or the one link. */
static node *owner(const sg_bus *b, uint16_t slot)
{
    if (b->mode != MODE_CLUSTER)
        return b->nnodes ? &b->nodes[0] : NULL;
    int n = b->have_map ? sg_slot_owner(b->map, slot) : -1;
    return n >= 0 && (size_t)n < b->nnodes ? &b->nodes[n] : NULL;
}

/* ---- availability ------------------------------------------------------ */

static bool all_up(const sg_bus *b)
{
    if (!b->nnodes || (b->mode == MODE_CLUSTER && (!b->have_map || !sg_slot_map_complete(b->map))))
        return false;
    for (size_t i = 0; i < b->nnodes; i++)
        if (!sg_link_up(b->nodes[i].l) || (b->mode == MODE_SENTINEL && !b->nodes[i].role_ok))
            return false;
    return true;
}

static void set_available(sg_bus *b)
{
    bool now = all_up(b);
    if (now == b->available)
        return;
    b->available = now;
    b->metrics->redis_connected = now;
    bool fresh = now && b->was_available;
    if (now) {
        b->was_available = true;
        const sg_link_target *t = sg_link_target_of(b->nodes[0].l);
        if (sg_log_begin(b->log, SG_LOG_INFO, "redis.connect")) {
            sg_log_str(b->log, "host", t->host);
            sg_log_int(b->log, "port", t->port);
            if (b->mode == MODE_CLUSTER)
                sg_log_int(b->log, "masters", (int64_t)b->nnodes);
            sg_log_end(b->log);
        }
    }
    if (b->h.on_available)
        b->h.on_available(b->h.ud, now, fresh);
}

/* ---- requests ------------------------------------------------------------ */

static req *req_new(sg_bus *b, uint8_t kind, uint64_t tag, uint16_t slot)
{
    req *q = b->req_free;
    if (q)
        b->req_free = q->next;
    else
        q = sg_xmalloc(sizeof *q);
    memset(q, 0, sizeof *q);
    q->kind = kind;
    q->tag = tag;
    q->slot = slot;
    return q;
}

static void req_free(sg_bus *b, req *q)
{
    b->extra_pending -= q->extra;
    q->extra = 0;
    free(q->bytes);
    q->bytes = NULL;
    q->next = b->req_free;
    b->req_free = q;
}

/* The owner's callback, once, and the request back to the pool. */
static void req_done(sg_bus *b, req *q, redisReply *r)
{
    uint64_t tag = q->tag;
    bool user = q->kind == REQ_USER;
    req_free(b, q);
    if (user && tag && b->h.on_reply)
        b->h.on_reply(b->h.ud, tag, r);
}

/* An internal command (function load, ROLE, ASKING, CLUSTER SHARDS). */
static bool send_internal(sg_bus *b, node *nd, uint8_t kind, int argc, const char **argv, const size_t *lens)
{
    req *q = req_new(b, kind, 0, 0);
    q->at = nd->l;
    if (sg_link_send(nd->l, argc, argv, lens, (uint64_t)(uintptr_t)q) < 0) {
        req_free(b, q);
        return false;
    }
    return true;
}

static int send_encoded(sg_bus *b, node *nd, req *q)
{
    if (sg_link_send_encoded(nd->l, q->bytes, q->len, (uint64_t)(uintptr_t)q) < 0)
        return -1;
    q->at = nd->l;
    nd->inflight[q->slot]++;
    return 0;
}

static int route(sg_bus *b, uint16_t slot, int argc, const char **argv, const size_t *lens, uint64_t tag,
                 unsigned weight)
{
    node *nd = owner(b, slot);
    if (!nd || !sg_link_up(nd->l))
        return -1;
    req *q = req_new(b, REQ_USER, tag, slot);
    q->extra = weight > 1 ? (uint16_t)(weight < UINT16_MAX ? weight - 1 : UINT16_MAX - 1) : 0;
    b->extra_pending += q->extra;
    if (b->mode != MODE_CLUSTER) {
        if (sg_link_send(nd->l, argc, argv, lens, (uint64_t)(uintptr_t)q) < 0) {
            req_free(b, q);
            return -1;
        }
        q->at = nd->l;
        return 0;
    }
    /* In a cluster the command is kept encoded, for a redirection. */
    q->len = sg_resp_len(argc, argv, lens);
    if (!q->len) {
        req_free(b, q);
        return -1;
    }
    q->bytes = sg_xmalloc(q->len);
    sg_resp_encode(q->bytes, argc, argv, lens);
    if (b->holding[slot]) {
        /* After a MOVED of this slot: behind what the old owner still has. */
        *b->held_tail = q;
        b->held_tail = &q->next;
        return 0;
    }
    if (send_encoded(b, nd, q) < 0) {
        req_free(b, q);
        return -1;
    }
    return 0;
}

static void fix_held_tail(sg_bus *b)
{
    b->held_tail = &b->held;
    while (*b->held_tail)
        b->held_tail = &(*b->held_tail)->next;
}

/* A lost link, a new map: what was held is answered NULL (unavailable). */
static void fail_held(sg_bus *b)
{
    while (b->held) {
        req *q = b->held;
        b->held = q->next;
        req_done(b, q, NULL);
    }
    b->held_tail = &b->held;
    if (b->holding)
        memset(b->holding, 0, SG_SLOTS * sizeof *b->holding);
}

/* The old owner of a slot answered everything it had of it: what waited
 * goes to the new owner, in order. */
static void release_slot(sg_bus *b, uint16_t slot)
{
    if (sg_log_begin(b->log, SG_LOG_DEBUG, "redis.release")) {
        sg_log_int(b->log, "slot", slot);
        sg_log_end(b->log);
    }
    b->holding[slot] = NULL;
    req **pp = &b->held;
    while (*pp) {
        req *q = *pp;
        if (q->slot != slot) {
            pp = &q->next;
            continue;
        }
        *pp = q->next;
        node *nd = owner(b, slot);
        if (!nd || send_encoded(b, nd, q) < 0)
            req_done(b, q, NULL);
    }
    fix_held_tail(b);
}

static bool holds_moved(const sg_bus *b, uint16_t slot)
{
    for (const req *q = b->held; q; q = q->next)
        if (q->slot == slot && q->moved)
            return true;
    return false;
}

/* Commands sent back MOVED wait for a map that names another owner. */
static bool stale_for_held(const sg_bus *b)
{
    for (const req *q = b->held; q; q = q->next) {
        node *nd = q->moved ? owner(b, q->slot) : NULL;
        if (nd && nd->l == b->holding[q->slot])
            return true;
    }
    return false;
}

/* A slot being moved is released once its old owner has nothing of it in
 * flight and the map names a new owner that is up. When a new map names
 * the old owner again, what waits goes there at once, behind its own
 * commands (in order on one connection), unless that server already sent
 * some back (MOVED): the map is older than its word then. */
static void try_release(sg_bus *b, uint16_t slot)
{
    sg_link *from = b->holding[slot];
    if (!from)
        return;
    node *old = sender_of(b, from);
    node *nd = owner(b, slot);
    if (!nd || !sg_link_up(nd->l))
        return;
    if (nd->l == from ? !holds_moved(b, slot) : !old || !old->inflight[slot])
        release_slot(b, slot);
}

/* A command the old owner sent back (MOVED to a master not linked yet):
 * it waits with its slot, behind those that came back before it and ahead
 * of every command sent since. */
static void hold_moved(sg_bus *b, req *q, sg_link *from)
{
    if (sg_log_begin(b->log, SG_LOG_DEBUG, "redis.hold")) {
        sg_log_int(b->log, "slot", q->slot);
        sg_log_end(b->log);
    }
    if (!b->holding[q->slot])
        b->holding[q->slot] = from;
    q->moved = true;
    req **at = NULL, **first = NULL;
    for (req **pp = &b->held; *pp; pp = &(*pp)->next)
        if ((*pp)->slot == q->slot) {
            if (!first)
                first = pp;
            if ((*pp)->moved)
                at = &(*pp)->next;
        }
    req **pos = at ? at : first ? first : b->held_tail;
    q->next = *pos;
    *pos = q;
    fix_held_tail(b);
}

/* MOVED or ASK: 1 when the request went out again or waits to (its reply
 * will be the next one's business), 0 when r is no redirection, -1 when it
 * is one not followed (a second MOVED, say, while the cluster changes):
 * the command did not run. */
static int redirect(sg_bus *b, req *q, node *from, const redisReply *r)
{
    sg_redirect d;
    if (b->mode != MODE_CLUSTER || q->kind != REQ_USER || r->type != REDIS_REPLY_ERROR ||
        !sg_redirect_parse(r->str, r->len, &d) || d.slot != q->slot)
        return 0;
    node *to = node_at(b, d.host, d.port);
    if (d.ask) {
        /* ASKING holds for the next command on that connection only: one
         * retry there, the map unchanged. */
        const char *asking[] = {"ASKING"};
        if (q->asked || !to || !send_internal(b, to, REQ_IGNORE, 1, asking, NULL))
            return -1;
        q->asked = true;
        return send_encoded(b, to, q) == 0 ? 1 : -1;
    }
    /* MOVED: the slot has a new owner. Its later commands wait until the
     * old owner answered all it had (each MOVED, sent again in order), so
     * the order per slot, hence per room, holds. A new owner not linked yet
     * (a promoted replica) gets them once the refreshed map brings it. */
    refresh_map(b);
    if (q->moved || !from)
        return -1;
    if (!to || !sg_link_up(to->l) || b->holding[q->slot]) {
        hold_moved(b, q, from->l);
        return 1;
    }
    b->map->owner[q->slot] = (int16_t)(to - b->nodes);
    q->moved = true;
    if (send_encoded(b, to, q) < 0)
        return -1;
    if (from->inflight[q->slot])
        b->holding[q->slot] = from->l;
    return 1;
}

static void load_functions(sg_bus *b, node *nd);
static void apply_map(sg_bus *b, const redisReply *r, const char *asked_from);

static void on_internal_reply(sg_bus *b, req *q, node *nd, redisReply *r)
{
    switch (q->kind) {
    case REQ_LOAD:
        if (!r || !nd)
            break;
        if (r->type != REDIS_REPLY_ERROR || strstr(r->str, "already exists")) {
            /* Only a server that takes our library ends the backoff: one
             * that accepts connections and refuses it (a replica, Redis 6)
             * must not be reconnected to in a tight loop. */
            b->attempts = 0;
        } else if (strncmp(r->str, "READONLY", 8) == 0) {
            /* A replica (a stale address or cluster map), not an old Redis. */
            sg_link_close(nd->l, "server is a replica now");
        } else {
            /* Redis before 7.0 has no functions: say so, and keep trying
             * (an upgrade fixes it without a restart of the gateway). */
            if (sg_log_begin(b->log, SG_LOG_ERROR, "redis.function_load_failed")) {
                sg_log_str(b->log, "host", sg_link_target_of(nd->l)->host);
                sg_log_strn(b->log, "error", r->str, r->len);
                sg_log_str(b->log, "hint", "signal-gateway needs Redis 7.0 or newer");
                sg_log_end(b->log);
            }
            sg_link_close(nd->l, "FUNCTION LOAD failed");
        }
        break;
    case REQ_LOAD_CONTROL:
        /* Only the backend's kick/close/revoke calls need it: say so, and
         * keep the gateway's own work going. */
        if (r && r->type == REDIS_REPLY_ERROR && nd &&
            sg_log_begin(b->log, SG_LOG_ERROR, "redis.function_load_failed")) {
            sg_log_str(b->log, "library", "signal_control");
            sg_log_str(b->log, "host", sg_link_target_of(nd->l)->host);
            sg_log_strn(b->log, "error", r->str, r->len);
            sg_log_end(b->log);
        }
        break;
    case REQ_ROLE:
        /* Through Sentinel the address may be stale: talk only to a master. */
        if (!r || !nd)
            break;
        if (r->type == REDIS_REPLY_ERROR) {
            /* Most likely an ACL user without +role: say so, not "not a master". */
            char why[160];
            snprintf(why, sizeof why, "ROLE failed: %.120s", r->str);
            sg_link_close(nd->l, why);
        } else if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->element[0]->type != REDIS_REPLY_STRING ||
                   strcmp(r->element[0]->str, "master") != 0) {
            b->sentinel_idx++;
            sg_link_close(nd->l, "not a master");
        } else {
            nd->role_ok = true;
            set_available(b);
        }
        break;
    case REQ_SHARDS:
        b->refreshing = false;
        if (r) {
            /* nd may not survive the new map: its host is copied first. */
            char from[SG_REDIS_HOST_MAX + 1] = "";
            if (nd)
                sg_strlcpy(from, sg_link_target_of(nd->l)->host, sizeof from);
            apply_map(b, r, from[0] ? from : NULL);
        }
        if (!r || r->type != REDIS_REPLY_ARRAY || b->refresh_again) {
            b->refresh_again = false;
            schedule_connect(b);
        }
        break;
    default:
        break;
    }
}

/* A master the map dropped goes once it has answered all it had (after a
 * NULL reply it is going down already). Every reply passes here: nothing
 * draining is the one test it costs. */
static void close_if_drained(sg_bus *b, sg_link *l, const redisReply *r)
{
    if (b->ndraining && r && !sg_link_pending(l) && draining_of(b, l))
        sg_link_close(l, "no longer a master");
}

static bool unavailable_error(const redisReply *r)
{
    static const char *const E[] = {"CLUSTERDOWN", "LOADING", "MASTERDOWN", "TRYAGAIN"};
    for (size_t i = 0; i < sizeof E / sizeof *E; i++)
        if (strncmp(r->str, E[i], strlen(E[i])) == 0)
            return true;
    return false;
}

static void on_link_reply(void *ud, sg_link *l, uint64_t tag, redisReply *r)
{
    sg_bus *b = ud;
    req *q = (req *)(uintptr_t)tag;
    node *nd = sender_of(b, q->at);
    if (q->kind != REQ_USER) {
        on_internal_reply(b, q, nd, r);
        req_free(b, q);
        close_if_drained(b, l, r);
        return;
    }
    uint16_t slot = q->slot;
    bool drain_check = b->mode == MODE_CLUSTER && nd;
    if (drain_check && nd->inflight[slot])
        nd->inflight[slot]--;
    if (r && r->type == REDIS_REPLY_ERROR && unavailable_error(r)) {
        /* Not the call's fault: Redis cannot serve it right now (a cluster
         * that lost a shard, a replica still loading, keys of a slot being
         * migrated). The owner hears "unavailable"; when the server says it
         * is down, the link starts over, so what follows a reconnect
         * (re-assertion, catch-ups) runs again once it serves. */
        bool down = strncmp(r->str, "TRYAGAIN", 8) != 0;
        req_done(b, q, NULL);
        if (down && nd)
            sg_link_close(nd->l, r->str);
    } else {
        int redirected = r ? redirect(b, q, nd, r) : 0;
        if (redirected < 0) {
            req_done(b, q, NULL); /* it did not run: unavailable, not an error */
        } else if (!redirected) {
            if (r && r->type == REDIS_REPLY_ERROR && nd) {
                /* A demoted master answers writes with READONLY: find the new one. */
                if (strncmp(r->str, "READONLY", 8) == 0) {
                    if (b->mode == MODE_CLUSTER)
                        refresh_map(b);
                    else
                        sg_link_close(nd->l, "server is a replica now");
                } else if (strstr(r->str, "Function not found")) {
                    /* FUNCTION FLUSH, or an empty shard, under a live gateway. */
                    load_functions(b, nd);
                }
            }
            req_done(b, q, r);
        }
    }
    if (drain_check && b->holding[slot] == l)
        try_release(b, slot);
    close_if_drained(b, l, r);
}

/* FUNCTION LOAD (not REPLACE: another gateway of this version may have
 * loaded it; another version's library has another name). Sent first on a
 * link that comes up, so no call on that connection can miss it. Then the
 * backend control library (stable names, so REPLACE: an empty Redis, or a
 * master a cluster just gained, has none), on every master, since its
 * calls run in the slot of the room they name. */
static void load_functions(sg_bus *b, node *nd)
{
    const char *argv[3] = {"FUNCTION", "LOAD", sg_functions_library};
    size_t lens[3] = {8, 4, sg_functions_library_len};
    send_internal(b, nd, REQ_LOAD, 3, argv, lens);
    const char *cargv[4] = {"FUNCTION", "LOAD", "REPLACE", sg_control_library};
    size_t clens[4] = {8, 4, 7, sg_control_library_len};
    send_internal(b, nd, REQ_LOAD_CONTROL, 4, cargv, clens);
}

/* ---- subscriptions ----------------------------------------------------- */

static node *chan_owner(const sg_bus *b, const char *channel, size_t len)
{
    return owner(b, b->mode == MODE_CLUSTER ? sg_key_slot(channel, len) : 0);
}

static void send_ssubscribe(sg_bus *b, node *nd, int argc, const char **argv)
{
    argv[0] = "SSUBSCRIBE";
    sg_link_sub_send(nd->l, argc, argv);
}

/* SSUBSCRIBE of every referenced channel that belongs to nd and is not
 * subscribed there: after its link came up, or a new map. Batched on one
 * Redis; one channel a command in a cluster (a command's channels must share
 * a slot there). */
static void resubscribe(sg_bus *b, node *nd)
{
    const char *argv[SUBSCRIBE_BATCH + 1];
    int argc = 1;
    size_t i;
    for (sg_map_entry *e = sg_map_first(&b->chans, &i); e; e = sg_map_next(&b->chans, &i, e)) {
        chan *c = e->value;
        if (!c->refs || chan_owner(b, e->key, e->klen) != nd || (c->at == nd->l && (c->confirmed || c->inflight)))
            continue;
        c->confirmed = false;
        c->inflight = 1;
        c->at = nd->l;
        argv[argc++] = e->key;
        if (argc == SUBSCRIBE_BATCH + 1 || b->mode == MODE_CLUSTER) {
            send_ssubscribe(b, nd, argc, argv);
            argc = 1;
        }
    }
    if (argc > 1)
        send_ssubscribe(b, nd, argc, argv);
}

static bool is_probe(const node *nd, const char *channel, size_t len)
{
    return strlen(nd->probe_channel) == len && memcmp(nd->probe_channel, channel, len) == 0;
}

/* An SSUBSCRIBE answered MOVED: this master no longer serves the slot (the
 * map we had was older than the cluster's). Its channels go to the owner
 * the error names, and the map is asked for again. */
static void subscribe_moved(sg_bus *b, sg_link *l, const redisReply *r)
{
    sg_redirect d;
    if (b->mode != MODE_CLUSTER || !sg_redirect_parse(r->str, r->len, &d) || d.ask)
        return;
    node *to = node_at(b, d.host, d.port);
    if (to && b->have_map)
        b->map->owner[d.slot] = (int16_t)(to - b->nodes);
    size_t i;
    for (sg_map_entry *e = sg_map_first(&b->chans, &i); e; e = sg_map_next(&b->chans, &i, e)) {
        chan *c = e->value;
        if (c->at == l && c->inflight && sg_key_slot(e->key, e->klen) == d.slot) {
            c->inflight = 0;
            c->confirmed = false;
            c->at = NULL;
        }
    }
    if (to && sg_link_up(to->l))
        resubscribe(b, to);
    refresh_map(b);
}

static void on_link_push(void *ud, sg_link *l, redisReply *r)
{
    sg_bus *b = ud;
    node *nd = node_of(b, l);
    if (nd && r->type == REDIS_REPLY_ERROR) {
        subscribe_moved(b, l, r);
        return;
    }
    if (!nd || r->type != REDIS_REPLY_ARRAY || r->elements < 3 || r->element[0]->type != REDIS_REPLY_STRING)
        return;
    const char *kind = r->element[0]->str;
    redisReply *ch = r->element[1];
    if (ch->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(kind, "smessage") == 0) {
        redisReply *pl = r->element[2];
        if (is_probe(nd, ch->str, ch->len)) {
            nd->probe_ok_ms = sg_now_mono_ms();
            b->probes_received++;
        } else if (pl->type == REDIS_REPLY_STRING && b->h.on_message) {
            b->h.on_message(b->h.ud, ch->str, ch->len, pl->str, pl->len);
        }
        return;
    }
    bool is_sub = strcmp(kind, "ssubscribe") == 0;
    if (!is_sub && strcmp(kind, "sunsubscribe") != 0)
        return;
    chan *c = sg_map_get(&b->chans, ch->str, ch->len);
    if (!c || c->at != l)
        return;
    if (!is_sub && !c->inflight && c->refs) {
        /* Not asked for: the slot left this master (migrated, or it was
         * demoted). Subscribed again on the new owner once the map says
         * which; what was published meanwhile is the owner's to catch up. */
        c->confirmed = false;
        c->at = NULL;
        if (sg_log_begin(b->log, SG_LOG_INFO, "redis.channel_moved")) {
            sg_log_int(b->log, "slot", sg_key_slot(ch->str, ch->len));
            sg_log_str(b->log, "host", sg_link_target_of(l)->host);
            sg_log_int(b->log, "port", sg_link_target_of(l)->port);
            sg_log_end(b->log);
        }
        if (b->h.on_channel_moved)
            b->h.on_channel_moved(b->h.ud, ch->str, ch->len);
        refresh_map(b);
        return;
    }
    if (c->inflight)
        c->inflight--;
    if (c->inflight)
        return;
    if (!c->refs) {
        free(sg_map_del(&b->chans, ch->str, ch->len));
        return;
    }
    if (is_sub && !c->confirmed) {
        c->confirmed = true;
        if (b->h.on_subscribed)
            b->h.on_subscribed(b->h.ud, ch->str, ch->len);
    }
}

bool sg_bus_subscribe(sg_bus *b, const char *channel)
{
    size_t n = strlen(channel);
    chan *c = sg_map_get(&b->chans, channel, n);
    if (!c) {
        c = sg_xcalloc(1, sizeof *c);
        sg_map_put(&b->chans, channel, n, c);
    }
    if (c->refs++ > 0 && (c->confirmed || c->inflight))
        return c->confirmed;
    /* First reference, or the entry was waiting for its SUNSUBSCRIBE ack. */
    c->confirmed = false;
    node *nd = chan_owner(b, channel, n);
    const char *argv[] = {"SSUBSCRIBE", channel};
    if (nd && sg_link_sub_send(nd->l, 2, argv) == 0) {
        c->inflight++;
        c->at = nd->l;
    }
    return false;
}

void sg_bus_unsubscribe(sg_bus *b, const char *channel)
{
    size_t n = strlen(channel);
    chan *c = sg_map_get(&b->chans, channel, n);
    if (!c || !c->refs || --c->refs)
        return;
    c->confirmed = false;
    const char *argv[] = {"SUNSUBSCRIBE", channel};
    if (c->at && node_of(b, c->at) && sg_link_sub_send(c->at, 2, argv) == 0) {
        c->inflight++;
        return;
    }
    if (!c->inflight)
        free(sg_map_del(&b->chans, channel, n));
}

bool sg_bus_subscribed(const sg_bus *b, const char *channel)
{
    chan *c = sg_map_get(&b->chans, channel, strlen(channel));
    return c && c->confirmed;
}

/* Entries nobody references whose subscription went with a link. */
static void forget_chans_of(sg_bus *b, const sg_link *l)
{
    for (bool removed = true; removed;) {
        removed = false;
        size_t i;
        for (sg_map_entry *e = sg_map_first(&b->chans, &i); e; e = sg_map_next(&b->chans, &i, e)) {
            chan *c = e->value;
            if (c->at != l)
                continue;
            c->at = NULL;
            c->confirmed = false;
            c->inflight = 0;
            if (!c->refs) {
                free(sg_map_del(&b->chans, e->key, e->klen));
                removed = true;
                break;
            }
        }
    }
}

/* ---- links come and go --------------------------------------------------- */

static void probe_channel_of(sg_bus *b, node *nd)
{
    char tag[8];
    if (b->mode == MODE_CLUSTER && b->have_map && sg_slot_tag_for(b->map, (int)(nd - b->nodes), tag))
        snprintf(nd->probe_channel, sizeof nd->probe_channel, "signal:probe:{%s}:%s", tag, b->node_id);
    else
        snprintf(nd->probe_channel, sizeof nd->probe_channel, "signal:probe:%s", b->node_id);
}

/* A link on the reaper's list, freed from the top of the loop: this may run
 * inside that very link's callbacks. */
static void bury_link(sg_bus *b, sg_link *l)
{
    b->dead_links = sg_xrealloc(b->dead_links, (b->ndead + 1) * sizeof *b->dead_links);
    b->dead_links[b->ndead++] = l;
    event_active(b->reaper, EV_TIMEOUT, 0);
}

/* A draining link went down (it answered everything, or was lost): what
 * waited behind it goes to the slots' owners. */
static void retire_draining(sg_bus *b, sg_link *l)
{
    node *nd = draining_of(b, l);
    if (!nd)
        return;
    free(nd->inflight);
    *nd = b->draining[--b->ndraining];
    bury_link(b, l);
    for (size_t s = 0; s < SG_SLOTS; s++)
        if (b->holding[s] == l)
            try_release(b, (uint16_t)s);
}

static void on_link_state(void *ud, sg_link *l, bool up, const char *why)
{
    sg_bus *b = ud;
    node *nd = node_of(b, l);
    if (!nd) {
        if (!up)
            retire_draining(b, l);
        return; /* a link being dropped from the map */
    }
    nd->connecting = false;
    nd->role_ok = false;
    const sg_link_target *t = sg_link_target_of(l);
    if (up) {
        load_functions(b, nd);
        if (b->mode == MODE_SENTINEL) {
            const char *argv[] = {"ROLE"};
            send_internal(b, nd, REQ_ROLE, 1, argv, NULL);
        }
        probe_channel_of(b, nd);
        const char *argv[] = {"SSUBSCRIBE", nd->probe_channel};
        sg_link_sub_send(l, 2, argv);
        resubscribe(b, nd);
        set_available(b);
        if (b->mode == MODE_CLUSTER && b->held)
            for (size_t s = 0; s < SG_SLOTS; s++)
                try_release(b, (uint16_t)s);
        return;
    }
    if (b->available) {
        b->metrics->redis_reconnects++;
        log_redis(b, SG_LOG_WARN, "redis.disconnect", t->host, t->port, why);
    } else if (why && strcmp(why, "peer connection lost") != 0 && (b->attempts <= 1 || b->attempts % 10 == 0)) {
        /* The first failed attempt, then every tenth: visible, not a flood. */
        log_redis(b, SG_LOG_WARN, "redis.connect_failed", t->host, t->port, why);
    }
    nd->probe_ok_ms = 0;
    forget_chans_of(b, l);
    if (nd->inflight)
        memset(nd->inflight, 0, SG_SLOTS * sizeof *nd->inflight);
    if (b->mode == MODE_CLUSTER)
        fail_held(b);
    set_available(b);
    schedule_connect(b);
}

static void on_latency(void *ud, double ms)
{
    sg_bus *b = ud;
    sg_hist_observe(&b->metrics->redis_latency, ms);
}

static node *add_node(sg_bus *b, const sg_link_target *t)
{
    b->nodes = sg_xrealloc(b->nodes, (b->nnodes + 1) * sizeof *b->nodes);
    node *nd = &b->nodes[b->nnodes++];
    memset(nd, 0, sizeof *nd);
    sg_link_opts o = {.timeout_ms = b->timeout_ms, .dns = b->dns, .name = "signal-gateway", .tls = b->tls};
    sg_link_handlers h = {.on_state = on_link_state, .on_reply = on_link_reply, .on_push = on_link_push,
                          .on_latency = on_latency, .ud = b};
    nd->l = sg_link_new(b->base, &o, &h);
    if (b->mode == MODE_CLUSTER)
        nd->inflight = sg_xcalloc(SG_SLOTS, sizeof *nd->inflight);
    sg_link_set_target(nd->l, t);
    return nd;
}

static void connect_node(sg_bus *b, node *nd)
{
    if (nd->connecting || sg_link_up(nd->l))
        return;
    nd->connecting = true;
    if (sg_link_connect(nd->l) < 0) {
        nd->connecting = false;
        schedule_connect(b);
    }
}

/* ---- Redis Cluster: the slot map --------------------------------------- */

/* The shards as CLUSTER SHARDS lists them become the nodes, in the map's
 * order: a link to a master that stays is kept (and its subscriptions), and
 * so is one still draining; one no longer a master is closed, or, while
 * commands are in flight there, drains first (the server ran each or
 * answers MOVED: answering them NULL, unavailable, would be wrong for those
 * it ran, and the map may be stale); a new master gets a link. */
static void apply_map(sg_bus *b, const redisReply *r, const char *asked_from)
{
    char err[128];
    sg_slot_map *m = sg_xmalloc(sizeof *m);
    if (sg_slot_map_parse(m, r, b->target.tls, asked_from, err, sizeof err) < 0 || !m->nshards) {
        if (sg_log_begin(b->log, SG_LOG_WARN, "redis.cluster_map_failed")) {
            sg_log_str(b->log, "reason", m->nshards ? err : "no master serves any slot");
            sg_log_end(b->log);
        }
        free(m);
        return;
    }
    if (sg_log_begin(b->log, SG_LOG_INFO, "redis.cluster_map")) {
        sg_log_int(b->log, "masters", (int64_t)m->nshards);
        sg_log_str(b->log, "complete", sg_slot_map_complete(m) ? "true" : "false");
        sg_log_end(b->log);
    }
    node *old = b->nodes;
    size_t nold = b->nnodes;
    node *fresh = sg_xcalloc(m->nshards, sizeof *fresh);
    for (size_t i = 0; i < m->nshards; i++) {
        for (size_t k = 0; k < nold; k++)
            if (old[k].l && sg_link_is(old[k].l, m->shard[i].host, m->shard[i].port)) {
                fresh[i] = old[k];
                old[k].l = NULL;
                break;
            }
        for (size_t k = 0; !fresh[i].l && k < b->ndraining; k++)
            if (sg_link_is(b->draining[k].l, m->shard[i].host, m->shard[i].port)) {
                fresh[i] = b->draining[k];
                b->draining[k] = b->draining[--b->ndraining];
            }
    }
    /* Swap first: a link dropped below answers its commands through
     * on_link_reply, which must no longer find it. */
    b->nodes = fresh;
    b->nnodes = m->nshards;
    free(b->map);
    b->map = m;
    b->have_map = true;
    for (size_t i = 0; i < b->nnodes; i++) {
        if (b->nodes[i].l)
            continue;
        sg_link_target t = b->target;
        sg_strlcpy(t.host, m->shard[i].host, sizeof t.host);
        t.port = m->shard[i].port;
        t.db = 0;
        sg_link_opts o = {.timeout_ms = b->timeout_ms, .dns = b->dns, .name = "signal-gateway", .tls = b->tls};
        sg_link_handlers h = {.on_state = on_link_state, .on_reply = on_link_reply, .on_push = on_link_push,
                              .on_latency = on_latency, .ud = b};
        b->nodes[i].l = sg_link_new(b->base, &o, &h);
        sg_link_set_target(b->nodes[i].l, &t);
        b->nodes[i].inflight = sg_xcalloc(SG_SLOTS, sizeof *b->nodes[i].inflight);
    }
    for (size_t k = 0; k < nold; k++) {
        sg_link *l = old[k].l;
        if (!l)
            continue;
        /* Not a master any more: its channels go to the new owners. */
        forget_chans_of(b, l);
        if (sg_link_up(l) && sg_link_pending(l)) {
            /* Later commands of its slots wait for its answers (redirect). */
            for (size_t s = 0; s < SG_SLOTS; s++)
                if (old[k].inflight[s] && !b->holding[s])
                    b->holding[s] = l;
            b->draining = sg_xrealloc(b->draining, (b->ndraining + 1) * sizeof *b->draining);
            b->draining[b->ndraining++] = old[k];
            continue;
        }
        /* This may run inside that very link's reply callback (the map
         * came from it): close it now, free it from the top of the loop. */
        sg_link_close(l, "no longer a master");
        bury_link(b, l);
        free(old[k].inflight);
    }
    free(old);
    /* Slots being moved may have their new owner now. */
    for (size_t s = 0; s < SG_SLOTS; s++)
        try_release(b, (uint16_t)s);
    for (size_t i = 0; i < b->nnodes; i++) {
        node *nd = &b->nodes[i];
        char before[sizeof nd->probe_channel];
        memcpy(before, nd->probe_channel, sizeof before);
        probe_channel_of(b, nd);
        if (sg_link_up(nd->l)) {
            if (strcmp(before, nd->probe_channel) != 0) {
                const char *argv[] = {"SSUBSCRIBE", nd->probe_channel};
                sg_link_sub_send(nd->l, 2, argv);
            }
            resubscribe(b, nd);
        } else {
            connect_node(b, nd);
        }
    }
    set_available(b);
    /* A failover under way: a shard has no master yet; or the map is older
     * than a server's word (it still names the master that sent commands
     * back MOVED: read from a master that has not heard of the failover),
     * and nothing of that slot goes out to bring another MOVED. Ask again
     * soon. */
    if (!sg_slot_map_complete(m) || stale_for_held(b))
        schedule_connect(b);
}

static const sg_redis_endpoint *current_seed(const sg_bus *b)
{
    const sg_redis_targets *t = &b->targets;
    return t->nseeds ? &t->seeds[b->seed_idx % t->nseeds] : NULL;
}

static const sg_redis_endpoint *current_sentinel(const sg_bus *b)
{
    const sg_redis_targets *t = &b->targets;
    return t->nsentinels ? &t->sentinels[b->sentinel_idx % t->nsentinels] : NULL;
}

/* Connects c (a seed, a sentinel, the sentinel watch) to the endpoint with
 * its scheme, and its credentials as the first command: "AUTH password"
 * for the default user, "AUTH user password" for an ACL user. */
static int connect_endpoint(sg_bus *b, sg_rconn *c, const sg_redis_endpoint *ep)
{
    const char *auth[4] = {"AUTH"};
    int a = 1;
    if (ep->user[0])
        auth[a++] = ep->user;
    auth[a++] = ep->pass;
    auth[a] = NULL;
    const char *const *init[] = {auth, NULL};
    sg_rconn_set_tls(c, ep->tls ? b->tls : NULL);
    return sg_rconn_connect(c, ep->host, ep->port, ep->auth ? init : NULL);
}

/* A seed or a sentinel that failed: the first failed attempt, then every
 * tenth, as for the masters. */
static void log_helper_failure(sg_bus *b, const char *role, const sg_redis_endpoint *ep, const char *why)
{
    if (!ep || (b->attempts > 1 && b->attempts % 10 != 0))
        return;
    if (sg_log_begin(b->log, SG_LOG_WARN, "redis.connect_failed")) {
        sg_log_str(b->log, "role", role);
        sg_log_str(b->log, "host", ep->host);
        sg_log_int(b->log, "port", ep->port);
        sg_log_str(b->log, "reason", why);
        sg_log_end(b->log);
    }
}

static void on_seed_reply(void *ud, uint64_t tag, redisReply *r)
{
    sg_bus *b = ud;
    b->refreshing = false;
    if (r && r->type == REDIS_REPLY_ARRAY) {
        const sg_redis_endpoint *ep = current_seed(b);
        apply_map(b, r, ep ? ep->host : NULL);
        sg_rconn_close(b->seed, "done");
        return;
    }
    sg_rconn_close(b->seed, "no map");
    b->seed_idx++;
    schedule_connect(b);
}

static void on_seed_state(void *ud, sg_rconn *c, bool up, const char *why)
{
    sg_bus *b = ud;
    if (up) {
        const char *argv[] = {"CLUSTER", "SHARDS"};
        if (sg_rconn_sendv(c, on_seed_reply, 0, 2, argv) < 0)
            sg_rconn_close(c, "send failed");
        return;
    }
    if (why && strcmp(why, "done") != 0 && strcmp(why, "no map") != 0) {
        b->refreshing = false;
        log_helper_failure(b, "seed", current_seed(b), why);
        b->seed_idx++;
        schedule_connect(b);
    }
}

/* A new slot map: from any master that is up, or else from a seed. */
static void refresh_map(sg_bus *b)
{
    if (b->mode != MODE_CLUSTER)
        return;
    if (b->refreshing) {
        b->refresh_again = true;
        return;
    }
    /* From the master with the fewest commands waiting: one that holds
     * them (a planned failover pauses the old master's writes) would answer
     * only after them. */
    node *best = NULL;
    for (size_t i = 0; i < b->nnodes; i++)
        if (sg_link_up(b->nodes[i].l) && (!best || sg_link_pending(b->nodes[i].l) < sg_link_pending(best->l)))
            best = &b->nodes[i];
    const char *argv[] = {"CLUSTER", "SHARDS"};
    if (best && send_internal(b, best, REQ_SHARDS, 2, argv, NULL)) {
        b->refreshing = true;
        if (sg_log_begin(b->log, SG_LOG_DEBUG, "redis.cluster_refresh")) {
            sg_log_int(b->log, "port", sg_link_target_of(best->l)->port);
            sg_log_end(b->log);
        }
        return;
    }
    const sg_redis_endpoint *ep = current_seed(b);
    if (!ep || connect_endpoint(b, b->seed, ep) < 0) {
        b->seed_idx++;
        schedule_connect(b);
        return;
    }
    b->refreshing = true;
}

/* ---- Sentinel ---------------------------------------------------------- */

static void watch_connect(sg_bus *b)
{
    const sg_redis_endpoint *ep = current_sentinel(b);
    if (b->watch_active || !ep)
        return;
    b->watch_active = connect_endpoint(b, b->watch, ep) == 0;
    if (!b->watch_active) {
        struct timeval tv = {1, 0};
        evtimer_add(b->watch_retry, &tv);
    }
}

static void on_watch_retry(evutil_socket_t fd, short what, void *arg)
{
    watch_connect(arg);
}

static void on_watch_state(void *ud, sg_rconn *c, bool up, const char *err)
{
    sg_bus *b = ud;
    if (up) {
        const char *argv[] = {"SUBSCRIBE", "+switch-master"};
        sg_rconn_sendv(c, NULL, 0, 2, argv);
        return;
    }
    /* That sentinel went away: watch through the next one, a second later. */
    b->watch_active = false;
    b->sentinel_idx++;
    struct timeval tv = {1, 0};
    evtimer_add(b->watch_retry, &tv);
}

/* "+switch-master <name> <old ip> <old port> <new ip> <new port>" */
static void on_watch_push(void *ud, redisReply *r)
{
    sg_bus *b = ud;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 || r->element[0]->type != REDIS_REPLY_STRING ||
        strcmp(r->element[0]->str, "message") != 0 || r->element[2]->type != REDIS_REPLY_STRING ||
        r->element[2]->len >= 600 || !b->nnodes)
        return;
    char msg[600], *save = NULL;
    memcpy(msg, r->element[2]->str, r->element[2]->len + 1);
    const char *f[5];
    int n = 0;
    for (char *t = strtok_r(msg, " ", &save); t && n < 5; t = strtok_r(NULL, " ", &save))
        f[n++] = t;
    if (n != 5 || strcmp(f[0], b->master_name) != 0)
        return;
    int port = atoi(f[4]);
    if (port < 1 || port > 65535 || strlen(f[3]) > SG_REDIS_HOST_MAX || sg_link_is(b->nodes[0].l, f[3], port))
        return;
    sg_link_target t = *sg_link_target_of(b->nodes[0].l);
    sg_strlcpy(t.host, f[3], sizeof t.host);
    t.port = port;
    sg_link_set_target(b->nodes[0].l, &t);
    log_redis(b, SG_LOG_WARN, "redis.switch_master", t.host, t.port, "announced by the sentinels");
    /* The reconnect asks the sentinels again. */
    sg_link_close(b->nodes[0].l, "sentinel switched master");
}

/* Sentinel: ask each sentinel in turn for the master's address. */
static void on_sentinel_reply(void *ud, uint64_t tag, redisReply *r)
{
    sg_bus *b = ud;
    bool addr = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                r->element[0]->type == REDIS_REPLY_STRING && r->element[1]->type == REDIS_REPLY_STRING;
    int port = addr ? atoi(r->element[1]->str) : 0;
    if (addr && r->element[0]->len && r->element[0]->len <= SG_REDIS_HOST_MAX && port > 0 && port <= 65535) {
        /* The master as announced (usually an address: under TLS its
         * certificate must carry it as an IP SAN), with the URL's scheme,
         * credentials and database. */
        sg_link_target t = b->target;
        sg_strlcpy(t.host, r->element[0]->str, sizeof t.host);
        t.port = port;
        sg_link_set_target(b->nodes[0].l, &t);
        sg_rconn_close(b->sentinel, "done");
        watch_connect(b);
        connect_node(b, &b->nodes[0]);
        return;
    }
    sg_rconn_close(b->sentinel, "no master");
    b->sentinel_idx++;
    schedule_connect(b);
}

static void on_sentinel_state(void *ud, sg_rconn *c, bool up, const char *err)
{
    sg_bus *b = ud;
    if (up) {
        const char *argv[] = {"SENTINEL", "get-master-addr-by-name", b->master_name};
        if (sg_rconn_sendv(c, on_sentinel_reply, 0, 3, argv) < 0)
            sg_rconn_close(c, "send failed");
        return;
    }
    /* "done" and "no master" were handled by the reply; anything else means
     * this sentinel is unreachable (or refused our credentials or TLS): say
     * so as for the masters, and try the next one. */
    if (err && strcmp(err, "done") != 0 && strcmp(err, "no master") != 0) {
        log_helper_failure(b, "sentinel", current_sentinel(b), err);
        b->sentinel_idx++;
        schedule_connect(b);
    }
}

/* ---- (re)connecting ------------------------------------------------------ */

static void do_connect(evutil_socket_t fd, short what, void *arg)
{
    sg_bus *b = arg;
    b->attempts++;
    switch (b->mode) {
    case MODE_SINGLE:
        connect_node(b, &b->nodes[0]);
        break;
    case MODE_SENTINEL: {
        if (sg_link_up(b->nodes[0].l) || b->nodes[0].connecting)
            return;
        const sg_redis_endpoint *ep = current_sentinel(b);
        if (!ep || connect_endpoint(b, b->sentinel, ep) < 0) {
            b->sentinel_idx++;
            schedule_connect(b);
        }
        break;
    }
    case MODE_CLUSTER:
        /* Whatever went, the map may have changed (a failover): ask again;
         * the answer reconnects what is down. */
        refresh_map(b);
        break;
    }
}

static void schedule_connect(sg_bus *b)
{
    if (evtimer_pending(b->retry, NULL))
        return;
    /* Capped exponential backoff with jitter: many gateways reconnecting to a
     * restarted Redis must not arrive in one wave. */
    int64_t ms = BACKOFF_MIN_MS;
    for (int i = 1; i < b->attempts && ms < SG_BUS_BACKOFF_MAX_MS; i++)
        ms *= 2;
    if (ms > SG_BUS_BACKOFF_MAX_MS)
        ms = SG_BUS_BACKOFF_MAX_MS;
    uint32_t r;
    sg_random_bytes(&r, sizeof r);
    ms = ms / 2 + (int64_t)(r % (uint32_t)(ms / 2 + 1));
    if (b->attempts == 0)
        ms = 0;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(b->retry, &tv);
}

/* ---- probes ------------------------------------------------------------ */

void sg_bus_probe(sg_bus *b)
{
    char payload[32];
    snprintf(payload, sizeof payload, "%llu", (unsigned long long)sg_now_mono_ms());
    for (size_t i = 0; i < b->nnodes; i++) {
        node *nd = &b->nodes[i];
        const char *argv[] = {"SPUBLISH", nd->probe_channel, payload};
        if (sg_link_up(nd->l) && send_internal(b, nd, REQ_IGNORE, 3, argv, NULL))
            b->probes_sent++;
    }
}

int64_t sg_bus_probe_age(const sg_bus *b)
{
    uint64_t now = sg_now_mono_ms();
    int64_t worst = b->nnodes ? 0 : -1;
    for (size_t i = 0; i < b->nnodes; i++) {
        if (!b->nodes[i].probe_ok_ms)
            return -1;
        int64_t age = (int64_t)(now - b->nodes[i].probe_ok_ms);
        if (age > worst)
            worst = age;
    }
    return worst;
}

void sg_bus_probe_renew(sg_bus *b, int64_t stale_ms)
{
    uint64_t now = sg_now_mono_ms();
    for (size_t i = 0; i < b->nnodes; i++) {
        node *nd = &b->nodes[i];
        if (sg_link_up(nd->l) && (!nd->probe_ok_ms || (int64_t)(now - nd->probe_ok_ms) > stale_ms)) {
            nd->probe_ok_ms = now; /* give the renewed one its time */
            sg_link_renew_subscriber(nd->l);
        }
    }
}

uint64_t sg_bus_probes_sent(const sg_bus *b) { return b->probes_sent; }
uint64_t sg_bus_probes_received(const sg_bus *b) { return b->probes_received; }

/* ---- the API ------------------------------------------------------------- */

bool sg_bus_available(const sg_bus *b) { return b->available; }
bool sg_bus_clustered(const sg_bus *b) { return b->mode == MODE_CLUSTER; }

bool sg_bus_busy(const sg_bus *b)
{
    for (size_t i = 0; i < b->nnodes; i++)
        if (sg_link_pending(b->nodes[i].l))
            return true;
    return b->held != NULL;
}

bool sg_bus_overloaded(const sg_bus *b, unsigned more)
{
    /* The weights are counted once for all links: exact with one Redis,
     * cautious in a cluster. */
    for (size_t i = 0; i < b->nnodes; i++)
        if (sg_link_pending(b->nodes[i].l) + b->extra_pending + more >= SG_BUS_MAX_PENDING)
            return true;
    return false;
}

#define STACK_ARGS 80 /* a relay batch: FCALL, name, 3 keys, 5 + 4 x 16 arguments */

int sg_bus_fcall(sg_bus *b, sg_fn fn, int nkeys, const char *const *keys, int argc, const char **argv,
                 const size_t *lens, uint64_t tag)
{
    return sg_bus_fcall_weighted(b, fn, nkeys, keys, argc, argv, lens, tag, 1);
}

int sg_bus_fcall_weighted(sg_bus *b, sg_fn fn, int nkeys, const char *const *keys, int argc, const char **argv,
                          const size_t *lens, uint64_t tag, unsigned weight)
{
    if (!b->available || argc < 0 || nkeys < 0 || (unsigned)fn >= SG_FN_COUNT)
        return -1;
    const char *av_stack[STACK_ARGS];
    size_t al_stack[STACK_ARGS];
    size_t total = 3 + (size_t)nkeys + (size_t)argc;
    const char **av = av_stack;
    size_t *al = al_stack;
    if (total > STACK_ARGS) { /* a batch of re-asserts */
        av = sg_xmalloc(total * sizeof *av);
        al = sg_xmalloc(total * sizeof *al);
    }
    char nk[16];
    int n = 0;
    av[n] = "FCALL"; al[n++] = 5;
    av[n] = b->fn[fn]; al[n++] = strlen(b->fn[fn]);
    av[n] = nk; al[n++] = (size_t)snprintf(nk, sizeof nk, "%d", nkeys);
    for (int i = 0; i < nkeys; i++) {
        av[n] = keys[i];
        al[n++] = strlen(keys[i]);
    }
    for (int i = 0; i < argc; i++) {
        av[n] = argv[i];
        al[n++] = lens ? lens[i] : strlen(argv[i]);
    }
    uint16_t slot = nkeys && b->mode == MODE_CLUSTER ? sg_key_slot(keys[0], strlen(keys[0])) : 0;
    int rc = route(b, slot, n, av, al, tag, weight);
    if (av != av_stack) {
        free(av);
        free(al);
    }
    return rc;
}

int sg_bus_command(sg_bus *b, int argc, const char **argv, const size_t *lens, uint64_t tag)
{
    if (!b->available || argc < 2)
        return -1;
    uint16_t slot = b->mode == MODE_CLUSTER ? sg_key_slot(argv[1], lens ? lens[1] : strlen(argv[1])) : 0;
    return route(b, slot, argc, argv, lens, tag, 1);
}

/* ---- lifecycle ----------------------------------------------------------- */

static void reap_links(evutil_socket_t fd, short what, void *arg)
{
    sg_bus *b = arg;
    for (size_t i = 0; i < b->ndead; i++)
        sg_link_free(b->dead_links[i]);
    b->ndead = 0;
}

sg_bus *sg_bus_new(struct event_base *base, const sg_bus_config *cfg, const sg_bus_handlers *h,
                   sg_log *log, sg_metrics *metrics)
{
    sg_bus *b = sg_xcalloc(1, sizeof *b);
    b->base = base;
    b->h = *h;
    b->log = log;
    b->metrics = metrics;
    b->url = sg_xstrdup(cfg->redis_url);
    b->sentinels = cfg->sentinels ? sg_xstrdup(cfg->sentinels) : NULL;
    b->seeds = cfg->cluster ? sg_xstrdup(cfg->cluster) : NULL;
    b->mode = b->seeds ? MODE_CLUSTER : b->sentinels ? MODE_SENTINEL : MODE_SINGLE;
    b->master_name = sg_xstrdup(cfg->master_name ? cfg->master_name : "mymaster");
    b->node_id = sg_xstrdup(cfg->node_id);
    b->tls_ca_file = cfg->tls_ca_file ? sg_xstrdup(cfg->tls_ca_file) : NULL;
    b->tls_cert_file = cfg->tls_cert_file ? sg_xstrdup(cfg->tls_cert_file) : NULL;
    b->tls_key_file = cfg->tls_key_file ? sg_xstrdup(cfg->tls_key_file) : NULL;
    b->timeout_ms = cfg->timeout_ms;
    sg_map_init(&b->chans);
    b->held_tail = &b->held;
    for (size_t i = 0; i < SG_FN_COUNT; i++)
        snprintf(b->fn[i], sizeof b->fn[i], "%s%s", sg_functions_prefix, sg_fn_names[i]);
    b->dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    sg_rconn_opts so = {.timeout_ms = cfg->timeout_ms, .on_state = on_sentinel_state, .dns = b->dns, .ud = b};
    b->sentinel = sg_rconn_new(base, &so);
    sg_rconn_opts wo = {.pubsub = true, .on_state = on_watch_state, .on_push = on_watch_push, .dns = b->dns,
                        .ud = b};
    b->watch = sg_rconn_new(base, &wo);
    sg_rconn_opts eo = {.timeout_ms = cfg->timeout_ms, .on_state = on_seed_state, .dns = b->dns, .ud = b};
    b->seed = sg_rconn_new(base, &eo);
    b->watch_retry = evtimer_new(base, on_watch_retry, b);
    b->retry = evtimer_new(base, do_connect, b);
    b->reaper = event_new(base, -1, 0, reap_links, b);
    if (b->mode == MODE_CLUSTER) {
        b->map = sg_xcalloc(1, sizeof *b->map);
        b->holding = sg_xcalloc(SG_SLOTS, sizeof *b->holding);
    }
    return b;
}

/* The settings' endpoints, and the one TLS context they share when any of
 * them is rediss://. */
static int parse_endpoints(sg_bus *b, char *err, size_t errlen)
{
    sg_redis_targets *t = &b->targets;
    if (sg_redis_targets_parse(t, b->url, b->mode == MODE_SENTINEL ? b->sentinels : NULL,
                               b->mode == MODE_CLUSTER ? b->seeds : NULL, err, errlen) < 0)
        return -1;
    /* In a cluster the masters the map names are reached as the first seed
     * was: one scheme and one user for the whole cluster. */
    b->target = b->mode == MODE_CLUSTER ? t->seeds[0] : t->url;
    if (b->mode == MODE_CLUSTER)
        b->target.db = 0;
    if (sg_redis_targets_tls(t) &&
        !(b->tls = sg_redis_tls_ctx_new(b->tls_ca_file, b->tls_cert_file, b->tls_key_file, err, errlen)))
        return -1;
    return 0;
}

int sg_bus_start(sg_bus *b, char *err, size_t errlen)
{
    if (parse_endpoints(b, err, errlen) < 0)
        return -1;
    if (b->mode != MODE_CLUSTER) {
        node *nd = add_node(b, &b->target);
        probe_channel_of(b, nd);
    }
    b->attempts = 0;
    schedule_connect(b);
    return 0;
}

void sg_bus_free(sg_bus *b)
{
    if (!b)
        return;
    event_free(b->retry);
    event_free(b->watch_retry);
    reap_links(-1, 0, b);
    free(b->dead_links);
    event_free(b->reaper);
    sg_rconn_free(b->watch);
    sg_rconn_free(b->sentinel);
    sg_rconn_free(b->seed);
    /* Links: their commands in flight are answered NULL, which must find
     * no node any more. */
    node *nodes = b->nodes, *draining = b->draining;
    size_t n = b->nnodes, ndr = b->ndraining;
    b->nodes = b->draining = NULL;
    b->nnodes = b->ndraining = 0;
    fail_held(b);
    for (size_t i = 0; i < n + ndr; i++) {
        node *x = i < n ? &nodes[i] : &draining[i - n];
        sg_link_free(x->l);
        free(x->inflight);
    }
    free(nodes);
    free(draining);
    while (b->req_free) {
        req *q = b->req_free;
        b->req_free = q->next;
        free(q);
    }
    if (b->dns)
        evdns_base_free(b->dns, 0);
    size_t i;
    for (sg_map_entry *e = sg_map_first(&b->chans, &i); e; e = sg_map_next(&b->chans, &i, e))
        free(e->value);
    sg_map_free(&b->chans);
    free(b->map);
    free(b->holding);
    free(b->url);
    free(b->sentinels);
    free(b->seeds);
    sg_redis_targets_free(&b->targets);
    OPENSSL_cleanse(&b->target, sizeof b->target);
    SSL_CTX_free(b->tls);
    free(b->tls_ca_file);
    free(b->tls_cert_file);
    free(b->tls_key_file);
    free(b->master_name);
    free(b->node_id);
    free(b);
}
