/* The backend control subcommands (include/sg/control.h). A CLI makes one
 * call and exits, so a blocking hiredis connection is all it needs. */
#include "sg/control.h"
#include "sg/auth.h"
#include "sg/config.h"
#include "sg/log.h"
#include "sg/ops.h"
#include "sg/proto.h"
#include "sg/utf8.h"
#include "sg/util.h"
#include "sg/wire.h"

#include <hiredis/hiredis.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

extern char **environ;

enum { EXIT_OK = 0, EXIT_NOT_MEMBER = 1, EXIT_USAGE = 2, EXIT_REDIS = 3 };

#define MAX_REDIRECTS 5
#define TTL_MAX_S 31536000 /* lua/control.lua */

typedef struct target {
    char host[256];
    int port;
    char user[128], pass[256];
    int db;
} target;

typedef struct opts {
    const char *cmd, *room, *peer, *reason, *sub, *ttl, *cluster;
    char peer_norm[SG_PEER_LEN + 1];
    long long ttl_s;
} opts;

static int usage(const char *cmd, const char *why)
{
    if (why)
        fprintf(stderr, "signal-gateway %s: %s\n", cmd, why);
    fprintf(stderr,
            "usage: signal-gateway kick --room R --peer P [--reason TEXT]\n"
            "       signal-gateway close-room --room R [--reason TEXT]\n"
            "       signal-gateway revoke --sub S --ttl SECONDS\n"
            "Redis is found from the server's settings (SIGNAL_REDIS_URL, SIGNAL_REDIS_SENTINELS,\n"
            "SIGNAL_REDIS_CLUSTER, or their flags). Exit: 0 done, 1 kick: not a member, 2 usage,\n"
            "3 Redis unreachable or refused the call.\n");
    return EXIT_USAGE;
}

bool sg_control_is_command(const char *name)
{
    return strcmp(name, "kick") == 0 || strcmp(name, "close-room") == 0 || strcmp(name, "revoke") == 0;
}

/* ---- arguments ------------------------------------------------------------ */

/* "--name value" or "--name=value" at argv[*i]; advances *i past it. */
static bool take_flag(int argc, char **argv, int *i, const char *name, const char **val)
{
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n) != 0)
        return false;
    if (a[n] == '=') {
        *val = a + n + 1;
        return true;
    }
    if (a[n] != '\0' || *i + 1 >= argc)
        return false;
    *val = argv[++*i];
    return true;
}

static bool reason_ok(const char *r)
{
    size_t n = strlen(r);
    return n <= SG_WIRE_KICK_REASON_MAX && sg_utf8_valid(r, n);
}

/* Our flags into o, the rest (server settings) into cfg_argv. Returns NULL
 * or what is wrong. */
static const char *parse_args(int argc, char **argv, opts *o, char **cfg_argv, int *cfg_argc)
{
    static const char *const mine[] = {"--room", "--peer", "--reason", "--sub", "--ttl", "--redis-cluster"};
    const char **slots[] = {&o->room, &o->peer, &o->reason, &o->sub, &o->ttl, &o->cluster};
    for (int i = 2; i < argc; i++) {
        bool taken = false;
        for (size_t k = 0; k < sizeof mine / sizeof *mine && !taken; k++)
            taken = take_flag(argc, argv, &i, mine[k], slots[k]);
        if (!taken)
            cfg_argv[(*cfg_argc)++] = argv[i];
    }
    bool kick = strcmp(o->cmd, "kick") == 0, revoke = strcmp(o->cmd, "revoke") == 0;
    if (revoke) {
        if (o->room || o->peer || o->reason)
            return "revoke takes --sub and --ttl only";
        if (!o->sub || !*o->sub || strlen(o->sub) > SG_SUB_MAX)
            return "--sub is required (1..256 bytes)";
        char *end;
        errno = 0;
        o->ttl_s = o->ttl ? strtoll(o->ttl, &end, 10) : 0;
        if (!o->ttl || errno || *end || end == o->ttl || o->ttl_s < 1 || o->ttl_s > TTL_MAX_S)
            return "--ttl is required: whole seconds, 1..31536000";
        return NULL;
    }
    if (o->sub || o->ttl)
        return "--sub and --ttl belong to revoke";
    if (!o->room || !sg_room_id_valid(o->room, strlen(o->room)))
        return "--room is required and must be a valid room id";
    if (kick && (!o->peer || !sg_peer_id_normalize(o->peer, strlen(o->peer), o->peer_norm)))
        return "--peer is required and must be a peer id (a UUID)";
    if (!kick && o->peer)
        return "close-room takes no --peer";
    if (o->reason && !reason_ok(o->reason))
        return "--reason must be valid UTF-8 of at most 256 bytes";
    return NULL;
}

/* The server's settings, without the JWT ones: a control command verifies
 * no token, so it must not need the key. */
static int load_config(sg_config *cfg, int cfg_argc, char **cfg_argv, char *err, size_t errlen)
{
    size_t n = 0;
    while (environ && environ[n])
        n++;
    char **env = sg_xcalloc(n + 2, sizeof *env);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "SIGNAL_JWT_", 11) != 0)
            env[k++] = environ[i];
    env[k++] = "SIGNAL_JWT_SECRET=unused-by-control-commands";
    int rc = sg_config_load(cfg, cfg_argc, cfg_argv, 1, env, err, errlen, stderr);
    free(env);
    return rc;
}

/* ---- Redis ------------------------------------------------------------------- */

/* redis://[[user]:password@]host[:port][/db], or host:port (a cluster
 * seed without credentials of its own: creds then come from dflt). */
static bool parse_target(const char *s, const target *dflt, target *t, char *err, size_t errlen)
{
    if (dflt)
        *t = *dflt;
    else
        memset(t, 0, sizeof *t);
    t->port = 6379;
    if (strncmp(s, "rediss://", 9) == 0) {
        snprintf(err, errlen, "rediss:// is not supported by the control commands yet (no TLS in hiredis 0.14)");
        return false;
    }
    const char *p = s;
    if (strncmp(p, "redis://", 8) == 0) {
        p += 8;
        const char *at = strrchr(p, '@');
        if (at) {
            const char *colon = memchr(p, ':', (size_t)(at - p));
            size_t ul = colon ? (size_t)(colon - p) : 0, pl = colon ? (size_t)(at - colon - 1) : 0;
            if (!colon || ul >= sizeof t->user || pl >= sizeof t->pass) {
                snprintf(err, errlen, "redis URL: credentials must be [user]:password@");
                return false;
            }
            memcpy(t->user, p, ul);
            t->user[ul] = '\0';
            memcpy(t->pass, colon + 1, pl);
            t->pass[pl] = '\0';
            p = at + 1;
        }
    }
    const char *slash = strchr(p, '/');
    size_t hl = slash ? (size_t)(slash - p) : strlen(p);
    char hp[300];
    if (hl == 0 || hl >= sizeof hp) {
        snprintf(err, errlen, "redis address: missing or overlong host");
        return false;
    }
    memcpy(hp, p, hl);
    hp[hl] = '\0';
    char *host = hp, *port = NULL;
    if (hp[0] == '[') {
        char *rb = strchr(hp, ']');
        if (!rb) {
            snprintf(err, errlen, "redis address: bad IPv6 host");
            return false;
        }
        *rb = '\0';
        host = hp + 1;
        port = rb[1] == ':' ? rb + 2 : NULL;
    } else if ((port = strrchr(hp, ':')) != NULL) {
        *port++ = '\0';
    }
    if (port)
        t->port = atoi(port);
    if (t->port <= 0 || t->port > 65535 || !*host) {
        snprintf(err, errlen, "redis address: bad host or port");
        return false;
    }
    sg_strlcpy(t->host, host, sizeof t->host);
    t->db = slash && slash[1] ? atoi(slash + 1) : t->db;
    return true;
}

static redisReply *command(redisContext *c, int argc, const char *const *argv, const size_t *lens)
{
    /* hiredis 0.14 reads argv but does not declare it const. */
    return redisCommandArgv(c, argc, (const char **)(uintptr_t)argv, lens);
}

static bool ok_reply(redisReply *r, char *err, size_t errlen, const char *what)
{
    if (r && r->type != REDIS_REPLY_ERROR) {
        freeReplyObject(r);
        return true;
    }
    snprintf(err, errlen, "%s: %s", what, r ? r->str : "no answer");
    if (r)
        freeReplyObject(r);
    return false;
}

/* Connects, authenticates and selects the database (db < 0: not at all). */
static redisContext *connect_to(const target *t, int db, int64_t timeout_ms, char *err, size_t errlen)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(t->host, t->port, tv);
    if (!c || c->err) {
        snprintf(err, errlen, "cannot connect to %s:%d: %s", t->host, t->port, c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    if (t->pass[0]) {
        const char *a2[] = {"AUTH", t->pass}, *a3[] = {"AUTH", t->user, t->pass};
        if (!ok_reply(t->user[0] ? command(c, 3, a3, NULL) : command(c, 2, a2, NULL), err, errlen, "AUTH"))
            goto fail;
    }
    if (db > 0) {
        char n[16];
        snprintf(n, sizeof n, "%d", db);
        const char *sel[] = {"SELECT", n};
        if (!ok_reply(command(c, 2, sel, NULL), err, errlen, "SELECT"))
            goto fail;
    }
    return c;
fail:
    redisFree(c);
    return NULL;
}

static bool nth_item(const char *list, size_t idx, char *out, size_t cap)
{
    const char *p = list;
    for (; idx && p; idx--)
        if ((p = strchr(p, ',')) != NULL)
            p++;
    if (!p || !*p)
        return false;
    size_t n = strcspn(p, ",");
    while (n && *p == ' ') {
        p++;
        n--;
    }
    if (n == 0 || n >= cap)
        return false;
    memcpy(out, p, n);
    out[n] = '\0';
    return true;
}

/* The master, as the first sentinel that answers names it. */
static redisContext *connect_via_sentinel(const sg_config *cfg, const target *url, char *err, size_t errlen)
{
    char item[300];
    for (size_t i = 0; nth_item(cfg->redis_sentinels, i, item, sizeof item); i++) {
        target st;
        if (!parse_target(item, NULL, &st, err, errlen))
            continue;
        redisContext *s = connect_to(&st, -1, cfg->redis_timeout_ms, err, errlen);
        if (!s)
            continue;
        const char *q[] = {"SENTINEL", "get-master-addr-by-name", cfg->redis_master_name};
        redisReply *r = command(s, 3, q, NULL);
        redisFree(s);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING) {
            snprintf(err, errlen, "sentinel %s knows no master %s", item, cfg->redis_master_name);
            if (r)
                freeReplyObject(r);
            continue;
        }
        target m = *url;
        sg_strlcpy(m.host, r->element[0]->str, sizeof m.host);
        m.port = atoi(r->element[1]->str);
        freeReplyObject(r);
        redisContext *c = connect_to(&m, m.db, cfg->redis_timeout_ms, err, errlen);
        if (c)
            return c;
    }
    return NULL;
}

/* Cluster mode: any seed will do; the call follows its slot's MOVED. */
static redisContext *connect_via_seeds(const char *seeds, const target *url, int64_t timeout_ms, target *used,
                                       char *err, size_t errlen)
{
    char item[300];
    snprintf(err, errlen, "no cluster seed given");
    for (size_t i = 0; nth_item(seeds, i, item, sizeof item); i++) {
        if (!parse_target(item, url, used, err, errlen))
            continue;
        redisContext *c = connect_to(used, -1, timeout_ms, err, errlen);
        if (c)
            return c;
    }
    return NULL;
}

/* "MOVED <slot> <host>:<port>" / "ASK ...": where to go next. */
static bool redirect_of(const redisReply *r, bool *ask, target *t)
{
    if (r->type != REDIS_REPLY_ERROR)
        return false;
    *ask = strncmp(r->str, "ASK ", 4) == 0;
    if (!*ask && strncmp(r->str, "MOVED ", 6) != 0)
        return false;
    const char *addr = strchr(r->str + (*ask ? 4 : 6), ' '); /* past the slot */
    const char *colon = addr ? strrchr(addr, ':') : NULL;
    if (!colon || (size_t)(colon - addr - 1) >= sizeof t->host)
        return false;
    memcpy(t->host, addr + 1, (size_t)(colon - addr - 1));
    t->host[colon - addr - 1] = '\0';
    t->port = atoi(colon + 1);
    return t->port > 0;
}

/* The control call, loading the library first if this Redis has none yet
 * (no gateway connected since it started empty) and following redirects.
 * Returns the reply (the caller frees it) or NULL with err. */
static redisReply *control_call(redisContext **cp, const target *creds, const sg_control_call *call,
                                int64_t timeout_ms, char *err, size_t errlen)
{
    bool loaded = false;
    for (int hop = 0; hop <= MAX_REDIRECTS; hop++) {
        redisReply *r = command(*cp, call->argc, call->argv, NULL);
        if (!r) {
            snprintf(err, errlen, "Redis did not answer: %s", (*cp)->errstr);
            return NULL;
        }
        bool ask;
        target next = *creds;
        if (redirect_of(r, &ask, &next)) {
            freeReplyObject(r);
            redisContext *c = connect_to(&next, -1, timeout_ms, err, errlen);
            if (!c)
                return NULL;
            redisFree(*cp);
            *cp = c;
            if (ask) {
                const char *a[] = {"ASKING"};
                if (!ok_reply(command(c, 1, a, NULL), err, errlen, "ASKING"))
                    return NULL;
            }
            continue;
        }
        if (r->type == REDIS_REPLY_ERROR && strstr(r->str, "Function not found") && !loaded) {
            freeReplyObject(r);
            loaded = true;
            const char *load[] = {"FUNCTION", "LOAD", sg_control_library};
            const size_t lens[] = {8, 4, sg_control_library_len};
            redisReply *l = command(*cp, 3, load, lens);
            bool raced = l && l->type == REDIS_REPLY_ERROR && strstr(l->str, "already exists");
            if (!raced && !ok_reply(l, err, errlen, "FUNCTION LOAD of the control library"))
                return NULL;
            if (raced)
                freeReplyObject(l);
            hop--; /* not a redirect */
            continue;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "%s", r->str);
            freeReplyObject(r);
            return NULL;
        }
        return r;
    }
    snprintf(err, errlen, "too many cluster redirects");
    return NULL;
}

static redisContext *connect_redis(const sg_config *cfg, const char *cluster, target *creds, char *err,
                                   size_t errlen)
{
    target url;
    if (!parse_target(cfg->redis_url, NULL, &url, err, errlen))
        return NULL;
    *creds = url;
    if (cluster && *cluster)
        return connect_via_seeds(cluster, &url, cfg->redis_timeout_ms, creds, err, errlen);
    if (cfg->redis_sentinels)
        return connect_via_sentinel(cfg, &url, err, errlen);
    return connect_to(&url, url.db, cfg->redis_timeout_ms, err, errlen);
}

/* ---- the subcommands ---------------------------------------------------------- */

static int run(const opts *o, const sg_config *cfg, sg_log *log)
{
    sg_control_call call;
    bool kick = strcmp(o->cmd, "kick") == 0, revoke = strcmp(o->cmd, "revoke") == 0;
    if (kick)
        sg_control_kick(&call, o->room, o->peer_norm, o->reason);
    else if (revoke)
        sg_control_revoke(&call, o->sub, o->ttl_s);
    else
        sg_control_close_room(&call, o->room, o->reason);
    char err[512] = "";
    target creds;
    redisContext *c = connect_redis(cfg, o->cluster, &creds, err, sizeof err);
    if (!c) {
        fprintf(stderr, "signal-gateway %s: %s\n", o->cmd, err);
        return EXIT_REDIS;
    }
    redisReply *r = control_call(&c, &creds, &call, cfg->redis_timeout_ms, err, sizeof err);
    redisFree(c);
    if (!r || r->type != REDIS_REPLY_INTEGER) {
        fprintf(stderr, "signal-gateway %s: %s\n", o->cmd, r ? "unexpected reply" : err);
        if (r)
            freeReplyObject(r);
        return EXIT_REDIS;
    }
    long long n = r->integer;
    freeReplyObject(r);
    const char *event = kick ? "control.kick" : revoke ? "control.revoke" : "control.close_room";
    if (sg_log_begin(log, SG_LOG_INFO, event)) {
        if (revoke) {
            sg_log_user(log, "user", o->sub);
            sg_log_int(log, "ttl_s", o->ttl_s);
            sg_log_int(log, "until_ms", n);
        } else {
            sg_log_str(log, "room", o->room);
            if (kick) {
                sg_log_str(log, "peer", o->peer_norm);
                sg_log_str(log, "result", n == 1 ? "kicked" : "not_member");
            } else {
                sg_log_int(log, "members", n);
            }
        }
        sg_log_end(log);
    }
    return kick && n != 1 ? EXIT_NOT_MEMBER : EXIT_OK;
}

int sg_control_main(int argc, char **argv)
{
    opts o = {.cmd = argv[1], .cluster = getenv("SIGNAL_REDIS_CLUSTER")};
    char **cfg_argv = sg_xcalloc((size_t)argc + 1, sizeof *cfg_argv);
    int cfg_argc = 0;
    cfg_argv[cfg_argc++] = argv[0];
    const char *why = parse_args(argc, argv, &o, cfg_argv, &cfg_argc);
    if (why) {
        free(cfg_argv);
        return usage(o.cmd, why);
    }
    sg_config cfg;
    char err[512] = "";
    int rc = load_config(&cfg, cfg_argc, cfg_argv, err, sizeof err);
    free(cfg_argv);
    if (rc != 0) {
        sg_config_free(&cfg);
        return rc < 0 ? usage(o.cmd, err) : EXIT_OK; /* rc > 0: --help printed */
    }
    sg_log *log = sg_log_new(cfg.node_id, cfg.log_level_num, cfg.log_hash_key);
    rc = run(&o, &cfg, log);
    sg_log_flush(log);
    sg_log_free(log);
    sg_config_free(&cfg);
    return rc;
}
