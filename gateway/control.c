/* SPDX-License-Identifier: Apache-2.0 */
/* The backend control subcommands (include/sg/control.h). A CLI makes one
 * call and exits, so a blocking connection (redis_sync.h) is all it needs. */
#include "sg/control.h"
#include "sg/auth.h"
#include "sg/config.h"
#include "sg/log.h"
#include "sg/ops.h"
#include "sg/slots.h"
#include "sg/proto.h"
#include "sg/redis_sync.h"
#include "sg/redis_tls.h"
#include "sg/redis_url.h"
#include "sg/scripts.h"
#include "sg/utf8.h"
#include "sg/util.h"
#include "sg/wire.h"

#include <hiredis/hiredis.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

enum { EXIT_OK = 0, EXIT_NOT_MEMBER = 1, EXIT_USAGE = 2, EXIT_REDIS = 3 };

#define MAX_REDIRECTS 5
#define TTL_MAX_S 31536000 /* lua/control.lua */

typedef struct opts {
    const char *cmd, *room, *peer, *reason, *sub, *ttl;
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
    static const char *const mine[] = {"--room", "--peer", "--reason", "--sub", "--ttl"};
    const char **slots[] = {&o->room, &o->peer, &o->reason, &o->sub, &o->ttl};
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

/* Where the call goes, parsed as the server parses it (redis_url.h): the
 * URL, the sentinels, the seeds, and the TLS context any rediss:// needs. */
/* Where the call goes, parsed as the server parses it (redis_url.h), and
 * the TLS context any rediss:// needs. */
typedef struct redis_setup {
    sg_redis_targets t;
    SSL_CTX *tls;
    int64_t timeout_ms;
} redis_setup;

static int setup_redis(redis_setup *rs, const sg_config *cfg, char *err, size_t errlen)
{
    memset(rs, 0, sizeof *rs);
    rs->timeout_ms = cfg->redis_timeout_ms;
    if (sg_redis_targets_parse(&rs->t, cfg->redis_url, cfg->redis_sentinels, cfg->redis_cluster, err, errlen) < 0)
        return -1;
    if (sg_redis_targets_tls(&rs->t) &&
        !(rs->tls = sg_redis_tls_ctx_new(cfg->redis_tls_ca_file, cfg->redis_tls_cert_file, cfg->redis_tls_key_file,
                                         err, errlen)))
        return -1;
    return 0;
}

static void free_redis(redis_setup *rs)
{
    sg_redis_targets_free(&rs->t);
    SSL_CTX_free(rs->tls);
}

/* The master, as the first sentinel that answers names it, reached with the
 * URL's scheme, credentials and database. */
static sg_redis_sync *connect_via_sentinel(const redis_setup *rs, const char *master_name, char *err, size_t errlen)
{
    for (size_t i = 0; i < rs->t.nsentinels; i++) {
        sg_redis_sync *s = sg_redis_sync_connect(&rs->t.sentinels[i], 0, rs->tls, rs->timeout_ms, err, errlen);
        if (!s)
            continue;
        const char *q[] = {"SENTINEL", "get-master-addr-by-name", master_name};
        redisReply *r = sg_redis_sync_command(s, 3, q, NULL, err, errlen);
        sg_redis_sync_free(s);
        int port = 0;
        if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->type == REDIS_REPLY_STRING &&
            r->element[1]->type == REDIS_REPLY_STRING && r->element[0]->len &&
            r->element[0]->len <= SG_REDIS_HOST_MAX)
            port = atoi(r->element[1]->str);
        if (port < 1 || port > 65535) {
            if (r)
                snprintf(err, errlen, "sentinel %s:%d knows no master %s", rs->t.sentinels[i].host,
                         rs->t.sentinels[i].port, master_name);
            freeReplyObject(r);
            continue;
        }
        sg_redis_endpoint m = rs->t.url;
        sg_strlcpy(m.host, r->element[0]->str, sizeof m.host);
        m.port = port;
        freeReplyObject(r);
        sg_redis_sync *c = sg_redis_sync_connect(&m, m.db, rs->tls, rs->timeout_ms, err, errlen);
        OPENSSL_cleanse(&m, sizeof m);
        if (c)
            return c;
    }
    return NULL;
}

/* Where the call starts: any cluster seed (the call follows its slot's
 * MOVED from there, with that seed's scheme and credentials: *creds), the
 * master through Sentinel, or the URL. */
static sg_redis_sync *connect_redis(const redis_setup *rs, const sg_config *cfg, const sg_redis_endpoint **creds,
                                    char *err, size_t errlen)
{
    *creds = &rs->t.url;
    if (rs->t.nseeds) {
        for (size_t i = 0; i < rs->t.nseeds; i++) {
            sg_redis_sync *c = sg_redis_sync_connect(&rs->t.seeds[i], 0, rs->tls, rs->timeout_ms, err, errlen);
            if (c) {
                *creds = &rs->t.seeds[i];
                return c;
            }
        }
        return NULL;
    }
    if (rs->t.nsentinels)
        return connect_via_sentinel(rs, cfg->redis_master_name, err, errlen);
    return sg_redis_sync_connect(&rs->t.url, rs->t.url.db, rs->tls, rs->timeout_ms, err, errlen);
}

/* The control call, loading the library first if this Redis has none yet
 * (no gateway connected since it started empty) and following redirects.
 * Returns the reply (the caller frees it) or NULL with err. */
static redisReply *control_call(sg_redis_sync **cp, const redis_setup *rs, const sg_redis_endpoint *creds,
                                const sg_control_call *call, char *err, size_t errlen)
{
    bool loaded = false;
    for (int hop = 0; hop <= MAX_REDIRECTS; hop++) {
        redisReply *r = sg_redis_sync_command(*cp, call->argc, call->argv, NULL, err, errlen);
        if (!r)
            return NULL;
        sg_redirect to;
        if (r->type == REDIS_REPLY_ERROR && sg_redirect_parse(r->str, r->len, &to)) {
            freeReplyObject(r);
            sg_redis_endpoint next = *creds;
            sg_strlcpy(next.host, to.host, sizeof next.host);
            next.port = to.port;
            sg_redis_sync *c = sg_redis_sync_connect(&next, 0, rs->tls, rs->timeout_ms, err, errlen);
            OPENSSL_cleanse(&next, sizeof next);
            if (!c)
                return NULL;
            sg_redis_sync_free(*cp);
            *cp = c;
            if (to.ask) {
                const char *a[] = {"ASKING"};
                redisReply *ok = sg_redis_sync_command(c, 1, a, NULL, err, errlen);
                bool asked = ok && ok->type != REDIS_REPLY_ERROR;
                if (ok && !asked)
                    snprintf(err, errlen, "ASKING: %s", ok->str);
                freeReplyObject(ok);
                if (!asked)
                    return NULL;
            }
            continue;
        }
        if (r->type == REDIS_REPLY_ERROR && strstr(r->str, "Function not found") && !loaded) {
            freeReplyObject(r);
            loaded = true;
            const char *load[] = {"FUNCTION", "LOAD", sg_control_library};
            const size_t lens[] = {8, 4, sg_control_library_len};
            redisReply *l = sg_redis_sync_command(*cp, 3, load, lens, err, errlen);
            if (!l)
                return NULL;
            /* "already exists": a gateway loaded it meanwhile. */
            if (l->type == REDIS_REPLY_ERROR && !strstr(l->str, "already exists")) {
                snprintf(err, errlen, "FUNCTION LOAD of the control library: %s", l->str);
                freeReplyObject(l);
                return NULL;
            }
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
    redis_setup rs;
    if (setup_redis(&rs, cfg, err, sizeof err) < 0) {
        free_redis(&rs);
        return usage(o->cmd, err);
    }
    const sg_redis_endpoint *creds;
    sg_redis_sync *c = connect_redis(&rs, cfg, &creds, err, sizeof err);
    redisReply *r = c ? control_call(&c, &rs, creds, &call, err, sizeof err) : NULL;
    sg_redis_sync_free(c);
    free_redis(&rs);
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
    opts o = {.cmd = argv[1]};
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
