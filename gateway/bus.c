/* SPDX-License-Identifier: Apache-2.0 */
#include "sg/bus.h"
#include "sg/log.h"
#include "sg/map.h"
#include "sg/metrics.h"
#include "sg/rconn.h"
#include "sg/util.h"

#include <event2/dns.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BACKOFF_MIN_MS 100
#define SUBSCRIBE_BATCH 512 /* channels per SUBSCRIBE when re-subscribing */

/* A channel local peers need. The entry lives while it is referenced or a
 * SUBSCRIBE/UNSUBSCRIBE for it is unanswered, so crossing commands for the
 * same channel never confuse its state. */
typedef struct chan {
    uint32_t refs;
    uint32_t inflight;  /* SUBSCRIBE/UNSUBSCRIBE sent, not yet acknowledged */
    bool confirmed;     /* Redis acknowledged our last SUBSCRIBE and nothing is in flight */
} chan;

struct sg_bus {
    struct event_base *base;
    sg_bus_handlers h;
    sg_log *log;
    sg_metrics *metrics;
    char *url, *sentinels, *master_name, *node_id;
    int64_t timeout_ms;
    /* parsed target */
    char host[256];
    int port;
    char user[128], pass[256];
    int db;
    /* "sg_<hash>_<name>" of each function, for FCALL. */
    char fn[SG_FN_COUNT][48];
    sg_rconn *cmd, *sub, *sentinel;
    /* Subscribed to a sentinel's +switch-master, so a failover (planned or
     * not) is followed at once instead of when a command fails. */
    sg_rconn *watch;
    struct evdns_base *dns; /* Redis and sentinel names, resolved off the loop */
    struct event *watch_retry;
    bool watch_active; /* connecting or up */
    struct event *retry;
    int attempts;
    bool available;
    bool was_available; /* a reconnect after this is "fresh" */
    size_t sentinel_idx;
    sg_map chans;
};

static void schedule_connect(sg_bus *b);
static void on_role(void *ud, uint64_t tag, redisReply *r);
static bool nth_sentinel(const char *list, size_t idx, char *host, size_t hostlen, int *port);

static void log_redis(sg_bus *b, int level, const char *event, const char *why)
{
    if (sg_log_begin(b->log, level, event)) {
        sg_log_str(b->log, "host", b->host);
        sg_log_int(b->log, "port", b->port);
        if (why)
            sg_log_str(b->log, "reason", why);
        sg_log_end(b->log);
    }
}

static void set_available(sg_bus *b)
{
    bool now = sg_rconn_is_up(b->cmd) && sg_rconn_is_up(b->sub);
    if (now == b->available)
        return;
    b->available = now;
    b->metrics->redis_connected = now;
    bool fresh = now && b->was_available;
    if (now) {
        b->was_available = true;
        b->attempts = 0;
        log_redis(b, SG_LOG_INFO, "redis.connect", NULL);
    }
    if (b->h.on_available)
        b->h.on_available(b->h.ud, now, fresh);
}

/* Sends SUBSCRIBE for every referenced channel (after the subscriber
 * connection came up) in batches. */
static void resubscribe_all(sg_bus *b)
{
    const char *argv[SUBSCRIBE_BATCH + 1];
    int argc = 0;
    argv[argc++] = "SUBSCRIBE";
    size_t i;
    for (sg_map_entry *e = sg_map_first(&b->chans, &i); e; e = sg_map_next(&b->chans, &i, e)) {
        chan *c = e->value;
        c->inflight = 0;
        c->confirmed = false;
        if (!c->refs)
            continue;
        c->inflight = 1;
        argv[argc++] = e->key;
        if (argc == SUBSCRIBE_BATCH + 1) {
            sg_rconn_sendv(b->sub, NULL, 0, argc, argv);
            argc = 1;
        }
    }
    if (argc > 1)
        sg_rconn_sendv(b->sub, NULL, 0, argc, argv);
    /* Entries nobody references any more are dropped now that nothing is in flight. */
    for (;;) {
        bool removed = false;
        for (sg_map_entry *e = sg_map_first(&b->chans, &i); e; e = sg_map_next(&b->chans, &i, e)) {
            chan *c = e->value;
            if (!c->refs) {
                free(sg_map_del(&b->chans, e->key, e->klen));
                removed = true;
                break;
            }
        }
        if (!removed)
            break;
    }
}

/* FUNCTION LOAD (not REPLACE: another gateway of this version may have
 * loaded it; another version's library has another name). Pipelined before
 * any FCALL on the same connection, so none can miss it. */
static void on_function_load(void *ud, uint64_t tag, redisReply *r)
{
    sg_bus *b = ud;
    if (!r || r->type != REDIS_REPLY_ERROR || strstr(r->str, "already exists"))
        return;
    /* Redis before 7.0 has no functions: say so, and keep trying (an upgrade
     * fixes it without a restart of the gateway). */
    if (sg_log_begin(b->log, SG_LOG_ERROR, "redis.function_load_failed")) {
        sg_log_str(b->log, "host", b->host);
        sg_log_strn(b->log, "error", r->str, r->len);
        sg_log_str(b->log, "hint", "signal-gateway needs Redis 7.0 or newer");
        sg_log_end(b->log);
    }
    sg_rconn_close(b->cmd, "FUNCTION LOAD failed");
}

static void load_functions(sg_bus *b)
{
    const char *argv[3] = {"FUNCTION", "LOAD", sg_functions_library};
    size_t lens[3] = {8, 4, sg_functions_library_len};
    sg_rconn_send(b->cmd, 3, argv, lens, on_function_load, 0);
}

static void on_conn_state(void *ud, sg_rconn *c, bool up, const char *err)
{
    sg_bus *b = ud;
    if (up) {
        if (c == b->cmd) {
            if (b->sentinels) {
                const char *argv[] = {"ROLE"};
                sg_rconn_sendv(b->cmd, on_role, 0, 1, argv);
            }
            load_functions(b);
        }
        else
            resubscribe_all(b);
        set_available(b);
        return;
    }
    /* Either connection lost: drop both and start over, so the pair is
     * always against the same server (a failover must not split them). */
    if (b->available) {
        b->metrics->redis_reconnects++;
        log_redis(b, SG_LOG_WARN, "redis.disconnect", err);
    } else if (c == b->cmd && err && strcmp(err, "peer connection lost") != 0 &&
               (b->attempts <= 1 || b->attempts % 10 == 0)) {
        /* The first failed attempt, then every tenth: visible, not a flood. */
        log_redis(b, SG_LOG_WARN, "redis.connect_failed", err);
    }
    set_available(b); /* before closing the other one, which comes back here */
    if (c == b->cmd && sg_rconn_is_up(b->sub))
        sg_rconn_close(b->sub, "peer connection lost");
    else if (c == b->sub && sg_rconn_is_up(b->cmd))
        sg_rconn_close(b->cmd, "peer connection lost");
    schedule_connect(b);
}

static void on_push(void *ud, redisReply *r)
{
    sg_bus *b = ud;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 || r->element[0]->type != REDIS_REPLY_STRING)
        return;
    const char *kind = r->element[0]->str;
    redisReply *ch = r->element[1];
    if (ch->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(kind, "message") == 0) {
        redisReply *pl = r->element[2];
        if (pl->type == REDIS_REPLY_STRING && b->h.on_message)
            b->h.on_message(b->h.ud, ch->str, ch->len, pl->str, pl->len);
        return;
    }
    bool is_sub = strcmp(kind, "subscribe") == 0;
    if (!is_sub && strcmp(kind, "unsubscribe") != 0)
        return;
    chan *c = sg_map_get(&b->chans, ch->str, ch->len);
    if (!c)
        return;
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

static void on_latency(void *ud, double ms)
{
    sg_bus *b = ud;
    sg_hist_observe(&b->metrics->redis_latency, ms);
}

static void on_reply(void *ud, uint64_t tag, redisReply *r)
{
    sg_bus *b = ud;
    if (b->h.on_reply)
        b->h.on_reply(b->h.ud, tag, r);
    if (r && r->type == REDIS_REPLY_ERROR) {
        /* A demoted master answers writes with READONLY: find the new one. */
        if (strncmp(r->str, "READONLY", 8) == 0)
            sg_rconn_close(b->cmd, "server is a replica now");
        /* FUNCTION FLUSH (or DELETE) under a live gateway: load it again. */
        else if (strstr(r->str, "Function not found"))
            load_functions(b);
    }
}

/* Through Sentinel, the address may be stale: talk only to a master. */
static void on_role(void *ud, uint64_t tag, redisReply *r)
{
    sg_bus *b = ud;
    if (!r)
        return;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->element[0]->type != REDIS_REPLY_STRING ||
        strcmp(r->element[0]->str, "master") != 0) {
        b->sentinel_idx++;
        sg_rconn_close(b->cmd, "not a master");
    }
}

static int connect_pair(sg_bus *b)
{
    char db[16];
    snprintf(db, sizeof db, "%d", b->db);
    const char *auth1[] = {"AUTH", b->pass, NULL};
    const char *auth2[] = {"AUTH", b->user, b->pass, NULL};
    const char *sel[] = {"SELECT", db, NULL};
    const char *cname_cmd[] = {"CLIENT", "SETNAME", "signal-gateway-cmd", NULL};
    const char *cname_sub[] = {"CLIENT", "SETNAME", "signal-gateway-sub", NULL};
    const char *const *init[5];
    for (int which = 0; which < 2; which++) {
        int n = 0;
        if (b->pass[0])
            init[n++] = b->user[0] ? auth2 : auth1;
        if (which == 0 && b->db)
            init[n++] = sel;
        init[n++] = which == 0 ? cname_cmd : cname_sub;
        init[n] = NULL;
        sg_rconn *c = which == 0 ? b->cmd : b->sub;
        if (sg_rconn_connect(c, b->host, b->port, init) < 0)
            return -1;
    }
    return 0;
}

/* ---- following failovers --------------------------------------------- */

static void watch_connect(sg_bus *b)
{
    char host[256];
    int port;
    if (b->watch_active || !nth_sentinel(b->sentinels, b->sentinel_idx, host, sizeof host, &port))
        return;
    b->watch_active = sg_rconn_connect(b->watch, host, port, NULL) == 0;
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
        r->element[2]->len >= 600)
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
    if (port == b->port && strcmp(f[3], b->host) == 0)
        return;
    sg_strlcpy(b->host, f[3], sizeof b->host);
    b->port = port;
    log_redis(b, SG_LOG_WARN, "redis.switch_master", "announced by the sentinels");
    /* Closing one closes the pair; the reconnect asks the sentinels again. */
    if (sg_rconn_is_up(b->cmd))
        sg_rconn_close(b->cmd, "sentinel switched master");
    else if (sg_rconn_is_up(b->sub))
        sg_rconn_close(b->sub, "sentinel switched master");
}

/* Sentinel: ask each sentinel in turn for the master's address. */
static void on_sentinel_reply(void *ud, uint64_t tag, redisReply *r)
{
    sg_bus *b = ud;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[0]->type == REDIS_REPLY_STRING && r->element[1]->type == REDIS_REPLY_STRING) {
        sg_strlcpy(b->host, r->element[0]->str, sizeof b->host);
        b->port = atoi(r->element[1]->str);
        sg_rconn_close(b->sentinel, "done");
        watch_connect(b);
        if (connect_pair(b) < 0)
            schedule_connect(b);
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
     * this sentinel is unreachable: try the next one. */
    if (err && strcmp(err, "done") != 0 && strcmp(err, "no master") != 0) {
        b->sentinel_idx++;
        schedule_connect(b);
    }
}

static bool nth_sentinel(const char *list, size_t idx, char *host, size_t hostlen, int *port)
{
    size_t count = 1;
    for (const char *p = list; *p; p++)
        count += *p == ',';
    idx %= count;
    const char *p = list;
    while (idx--)
        p = strchr(p, ',') + 1;
    const char *e = strchr(p, ',');
    size_t n = e ? (size_t)(e - p) : strlen(p);
    char item[300];
    if (n >= sizeof item)
        return false;
    memcpy(item, p, n);
    item[n] = '\0';
    char *colon = strrchr(item, ':');
    if (!colon)
        return false;
    *colon = '\0';
    sg_strlcpy(host, item, hostlen);
    *port = atoi(colon + 1);
    return *port > 0;
}

static void do_connect(evutil_socket_t fd, short what, void *arg)
{
    sg_bus *b = arg;
    if (sg_rconn_is_up(b->cmd) || sg_rconn_is_up(b->sub))
        return;
    b->attempts++;
    if (b->sentinels) {
        char host[256];
        int port;
        if (!nth_sentinel(b->sentinels, b->sentinel_idx, host, sizeof host, &port) ||
            sg_rconn_connect(b->sentinel, host, port, NULL) < 0) {
            b->sentinel_idx++;
            schedule_connect(b);
        }
        return;
    }
    if (connect_pair(b) < 0)
        schedule_connect(b);
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
    b->master_name = sg_xstrdup(cfg->master_name ? cfg->master_name : "mymaster");
    b->node_id = sg_xstrdup(cfg->node_id);
    b->timeout_ms = cfg->timeout_ms;
    sg_map_init(&b->chans);
    for (size_t i = 0; i < SG_FN_COUNT; i++)
        snprintf(b->fn[i], sizeof b->fn[i], "%s%s", sg_functions_prefix, sg_fn_names[i]);
    b->dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    sg_rconn_opts o = {.timeout_ms = cfg->timeout_ms, .on_state = on_conn_state,
                       .on_latency = on_latency, .dns = b->dns, .ud = b};
    b->cmd = sg_rconn_new(base, &o);
    o.pubsub = true;
    o.on_push = on_push;
    o.on_latency = NULL;
    o.timeout_ms = 0;
    b->sub = sg_rconn_new(base, &o);
    sg_rconn_opts so = {.timeout_ms = cfg->timeout_ms, .on_state = on_sentinel_state, .dns = b->dns, .ud = b};
    b->sentinel = sg_rconn_new(base, &so);
    sg_rconn_opts wo = {.pubsub = true, .on_state = on_watch_state, .on_push = on_watch_push, .dns = b->dns,
                        .ud = b};
    b->watch = sg_rconn_new(base, &wo);
    b->watch_retry = evtimer_new(base, on_watch_retry, b);
    b->retry = evtimer_new(base, do_connect, b);
    return b;
}

/* redis://[[user]:password@]host[:port][/db] */
static int parse_url(sg_bus *b, char *err, size_t errlen)
{
    const char *p = b->url + strlen("redis://");
    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon) {
            snprintf(err, errlen, "redis URL: credentials must be [user]:password@");
            return -1;
        }
        size_t ul = (size_t)(colon - p), pl = (size_t)(at - colon - 1);
        if (ul >= sizeof b->user || pl >= sizeof b->pass) {
            snprintf(err, errlen, "redis URL: credentials too long");
            return -1;
        }
        memcpy(b->user, p, ul);
        b->user[ul] = '\0';
        memcpy(b->pass, colon + 1, pl);
        b->pass[pl] = '\0';
        p = at + 1;
    }
    const char *slash = strchr(p, '/');
    size_t hl = slash ? (size_t)(slash - p) : strlen(p);
    char hp[300];
    if (hl == 0 || hl >= sizeof hp) {
        snprintf(err, errlen, "redis URL: missing host");
        return -1;
    }
    memcpy(hp, p, hl);
    hp[hl] = '\0';
    b->port = 6379;
    char *colon = strrchr(hp, ':');
    if (hp[0] == '[') {
        char *rb = strchr(hp, ']');
        if (!rb) {
            snprintf(err, errlen, "redis URL: bad IPv6 host");
            return -1;
        }
        *rb = '\0';
        sg_strlcpy(b->host, hp + 1, sizeof b->host);
        if (rb[1] == ':')
            b->port = atoi(rb + 2);
    } else {
        if (colon) {
            *colon = '\0';
            b->port = atoi(colon + 1);
        }
        sg_strlcpy(b->host, hp, sizeof b->host);
    }
    if (b->port <= 0 || b->port > 65535) {
        snprintf(err, errlen, "redis URL: bad port");
        return -1;
    }
    b->db = slash && slash[1] ? atoi(slash + 1) : 0;
    if (b->db < 0 || b->db > 1000) {
        snprintf(err, errlen, "redis URL: bad database number");
        return -1;
    }
    return 0;
}

int sg_bus_start(sg_bus *b, char *err, size_t errlen)
{
    if (parse_url(b, err, errlen) < 0)
        return -1;
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
    sg_rconn_free(b->watch);
    sg_rconn_free(b->cmd);
    sg_rconn_free(b->sub);
    sg_rconn_free(b->sentinel);
    if (b->dns)
        evdns_base_free(b->dns, 0);
    size_t i;
    for (sg_map_entry *e = sg_map_first(&b->chans, &i); e; e = sg_map_next(&b->chans, &i, e))
        free(e->value);
    sg_map_free(&b->chans);
    free(b->url);
    free(b->sentinels);
    free(b->master_name);
    free(b->node_id);
    free(b);
}

bool sg_bus_available(const sg_bus *b) { return b->available; }

void sg_bus_renew_subscriber(sg_bus *b)
{
    /* Closing one closes the pair and reconnects with the usual backoff. */
    if (sg_rconn_is_up(b->sub))
        sg_rconn_close(b->sub, "delivery probe stale");
}

bool sg_bus_busy(const sg_bus *b) { return sg_rconn_pending(b->cmd) > 0; }

bool sg_bus_overloaded(const sg_bus *b) { return sg_rconn_pending(b->cmd) >= SG_BUS_MAX_PENDING; }

#define STACK_ARGS 64

int sg_bus_fcall(sg_bus *b, sg_fn fn, int nkeys, const char *const *keys, int argc, const char **argv,
                 const size_t *lens, uint64_t tag)
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
    int rc = sg_rconn_send(b->cmd, n, av, al, on_reply, tag);
    if (av != av_stack) {
        free(av);
        free(al);
    }
    return rc;
}

int sg_bus_command(sg_bus *b, int argc, const char **argv, const size_t *lens, uint64_t tag)
{
    if (!b->available)
        return -1;
    return sg_rconn_send(b->cmd, argc, argv, lens, on_reply, tag);
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
    /* First reference, or the entry was waiting for its UNSUBSCRIBE ack. */
    c->confirmed = false;
    if (sg_rconn_is_up(b->sub)) {
        const char *argv[] = {"SUBSCRIBE", channel};
        if (sg_rconn_sendv(b->sub, NULL, 0, 2, argv) == 0)
            c->inflight++;
    }
    return false;
}

void sg_bus_unsubscribe(sg_bus *b, const char *channel)
{
    size_t n = strlen(channel);
    chan *c = sg_map_get(&b->chans, channel, n);
    if (!c || !c->refs)
        return;
    if (--c->refs)
        return;
    c->confirmed = false;
    if (sg_rconn_is_up(b->sub)) {
        const char *argv[] = {"UNSUBSCRIBE", channel};
        if (sg_rconn_sendv(b->sub, NULL, 0, 2, argv) == 0) {
            c->inflight++;
            return;
        }
    }
    if (!c->inflight)
        free(sg_map_del(&b->chans, channel, n));
}

bool sg_bus_subscribed(const sg_bus *b, const char *channel)
{
    chan *c = sg_map_get(&b->chans, channel, strlen(channel));
    return c && c->confirmed;
}
