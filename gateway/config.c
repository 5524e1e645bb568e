#include "sg/config.h"
#include "sg/util.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef enum { T_STR, T_INT, T_RATE } opt_type;

typedef struct opt {
    const char *env;   /* SIGNAL_... */
    opt_type type;
    size_t off;        /* offset in sg_config */
    const char *def;   /* NULL: unset */
    int64_t min, max;  /* T_INT bounds */
    const char *help;
} opt;

#define S(f) T_STR, offsetof(sg_config, f)
#define I(f) T_INT, offsetof(sg_config, f)
#define R(f) T_RATE, offsetof(sg_config, f)

/* Rate defaults, reasoned in README "Rate limits": a browser trickles 10-60
 * candidates in the first seconds of a call (more with many interfaces and
 * TURN), one offer and one answer, and renegotiates a few times per minute at
 * most. The buckets let a whole burst of a real call through and throttle a
 * sustained flood to a few messages per second. */
static const opt OPTS[] = {
    {"SIGNAL_LISTEN", S(listen), "0.0.0.0:8443", 0, 0, "public WebSocket listener host:port"},
    {"SIGNAL_TLS_CERT", S(tls_cert), NULL, 0, 0, "PEM certificate chain; unset means plain ws://"},
    {"SIGNAL_TLS_KEY", S(tls_key), NULL, 0, 0, "PEM private key"},
    {"SIGNAL_ADMIN_LISTEN", S(admin_listen), "127.0.0.1:9090", 0, 0, "/metrics, /healthz, /readyz"},
    {"SIGNAL_REDIS_URL", S(redis_url), "redis://127.0.0.1:6379/0", 0, 0, "redis://[:password@]host:port/db"},
    {"SIGNAL_REDIS_SENTINELS", S(redis_sentinels), NULL, 0, 0, "host:port,... find the master through Sentinel"},
    {"SIGNAL_REDIS_MASTER_NAME", S(redis_master_name), "mymaster", 0, 0, "Sentinel master name"},
    {"SIGNAL_JWT_SECRET", S(jwt_secret), NULL, 0, 0, "HS256 shared secret"},
    {"SIGNAL_JWT_PUBLIC_KEY", S(jwt_public_key), NULL, 0, 0, "PEM public key file for RS256/ES256"},
    {"SIGNAL_JWT_JWKS_FILE", S(jwt_jwks_file), NULL, 0, 0, "JWKS file (kid-selected keys, reloaded on SIGHUP)"},
    {"SIGNAL_JWT_ALG", S(jwt_alg), "HS256", 0, 0, "HS256, RS256 or ES256: the only algorithm accepted"},
    {"SIGNAL_JWT_ISSUER", S(jwt_issuer), NULL, 0, 0, "required iss, when set"},
    {"SIGNAL_JWT_AUDIENCE", S(jwt_audience), NULL, 0, 0, "required aud, when set"},
    {"SIGNAL_JWT_LEEWAY_S", I(jwt_leeway_s), "30", 0, 3600, "clock leeway for exp/nbf/iat"},
    {"SIGNAL_ALLOWED_ORIGINS", S(allowed_origins), NULL, 0, 0, "comma-separated Origin allow-list; unset: any"},
    {"SIGNAL_NODE_ID", S(node_id), NULL, 0, 0, "node name in Redis and logs; default hostname-pid"},
    {"SIGNAL_MAX_MESSAGE_BYTES", I(max_message_bytes), "65536", 256, 16 << 20, "largest client message"},
    {"SIGNAL_ROOM_MAX_PEERS", I(room_max_peers), "8", 2, 10000, "room capacity"},
    {"SIGNAL_ROOMS_PER_CONNECTION", I(rooms_per_connection), "4", 1, 1000, "rooms one connection may be in"},
    {"SIGNAL_MAX_CONNECTIONS", I(max_connections), "100000", 1, 10000000, "per node; over it handshakes get 503"},
    {"SIGNAL_MAX_CONNECTIONS_PER_IP", I(max_connections_per_ip), "0", 0, 10000000, "per source address; 0: off"},
    {"SIGNAL_TRUSTED_PROXIES", S(trusted_proxies), NULL, 0, 0, "comma-separated proxy IPs whose X-Forwarded-For is believed"},
    {"SIGNAL_PING_INTERVAL_MS", I(ping_interval_ms), "20000", 100, 3600000, "server ping interval"},
    {"SIGNAL_PONG_TIMEOUT_MS", I(pong_timeout_ms), "10000", 100, 3600000, "drop a silent connection this long after a ping"},
    {"SIGNAL_LEASE_MS", I(lease_ms), "15000", 300, 3600000, "membership lease"},
    {"SIGNAL_DRAIN_MS", I(drain_ms), "10000", 0, 3600000, "graceful shutdown bound"},
    {"SIGNAL_HANDSHAKE_TIMEOUT_MS", I(handshake_timeout_ms), "5000", 100, 600000, "time to send a complete upgrade request"},
    {"SIGNAL_JOIN_TIMEOUT_MS", I(join_timeout_ms), "30000", 0, 3600000, "time from upgrade to first join; 0: off"},
    {"SIGNAL_MAX_HEADER_BYTES", I(max_header_bytes), "8192", 512, 65536, "largest upgrade request head"},
    {"SIGNAL_MAX_OUTPUT_BYTES", I(max_output_bytes), "1048576", 4096, 1 << 30, "unsent bytes per connection before it is closed"},
    {"SIGNAL_REDIS_TIMEOUT_MS", I(redis_timeout_ms), "3000", 100, 600000, "no reply at all this long while a command waits: Redis is hung, reconnect"},
    {"SIGNAL_LOG_LEVEL", S(log_level), "info", 0, 0, "debug, info, warn or error"},
    {"SIGNAL_LOG_HASH_KEY", S(log_hash_key), NULL, 0, 0, "key of the hash that hides user IDs in logs; default random"},
    {"SIGNAL_SUB_HASH_KEY", S(sub_hash_key), NULL, 0, 0, "key of the hash of sub kept in Redis; the same on every node (default: derived from SIGNAL_JWT_SECRET)"},
    {"SIGNAL_OTLP_ENDPOINT", S(otlp_endpoint), NULL, 0, 0, "OTLP/HTTP endpoint, spans go to /v1/traces"},
    {"SIGNAL_STATIC_DIR", S(static_dir), NULL, 0, 0, "serve this directory (the demo) on the public listener; unset: off"},
    {"SIGNAL_RATE_PEER", R(rate_peer), "20/200", 0, 0, "relays per peer in a room (RATE/BURST, 0 off)"},
    {"SIGNAL_RATE_CANDIDATE", R(rate_candidate), "10/100", 0, 0, "candidates per peer in a room"},
    {"SIGNAL_RATE_ROOM", R(rate_room), "100/800", 0, 0, "relays per room"},
    {"SIGNAL_RATE_CONN_FRAMES", R(rate_conn_frames), "50/300", 0, 0, "frames per connection, before Redis"},
    {"SIGNAL_RATE_CONN_BYTES", R(rate_conn_bytes), "131072/1048576", 0, 0, "bytes per connection, before Redis"},
    {"SIGNAL_RESUME_MS", I(resume_ms), "30000", 0, 3600000, "resumption grace period; 0 off"},
    {"SIGNAL_RESUME_BUFFER_MAX", I(resume_buffer_max), "256", 1, 100000, "relays kept per peer"},
    {"SIGNAL_RESUME_BUFFER_BYTES", I(resume_buffer_bytes), "262144", 1024, 1 << 30, "bytes kept per peer"},
    {"SIGNAL_TURN_SECRET", S(turn_secret), NULL, 0, 0, "coturn static-auth-secret"},
    {"SIGNAL_TURN_URLS", S(turn_urls), NULL, 0, 0, "comma-separated turn:/turns:/stun: URLs"},
    {"SIGNAL_TURN_TTL_S", I(turn_ttl_s), "3600", 60, 604800, "TURN credential lifetime"},
};

#define NOPTS (sizeof OPTS / sizeof OPTS[0])

/* Member records in Redis keep a keyed hash of sub, so reading Redis does
 * not give away who is in a room (an email-like sub would be a dictionary
 * away from an unkeyed hash). Every node of a deployment must use the same
 * key, or same-user takeovers across nodes fail: by default it is derived
 * from the HS256 secret they already share. With RS256/ES256 there is no
 * shared secret: the fixed default keeps nodes in agreement but hides
 * nothing, and the node says so at start (SIGNAL_SUB_HASH_KEY fixes it). */
static void default_sub_hash_key(sg_config *cfg)
{
    if (cfg->sub_hash_key)
        return;
    static const char label[] = "signal-gateway/sub-hash/v1";
    if (cfg->jwt_secret && strcmp(cfg->jwt_alg, "HS256") == 0) {
        uint8_t d[EVP_MAX_MD_SIZE];
        unsigned n = 0;
        HMAC(EVP_sha256(), cfg->jwt_secret, (int)strlen(cfg->jwt_secret), (const uint8_t *)label,
             sizeof label - 1, d, &n);
        char hex[2 * EVP_MAX_MD_SIZE + 1];
        sg_hex(hex, d, n);
        cfg->sub_hash_key = sg_xstrdup(hex);
        return;
    }
    cfg->sub_hash_key = sg_xstrdup(label);
    cfg->sub_hash_key_public = true;
}

static void flag_name(const opt *o, char *out, size_t cap)
{
    /* SIGNAL_REDIS_URL -> redis-url */
    const char *s = o->env + strlen("SIGNAL_");
    size_t i = 0;
    for (; s[i] && i + 1 < cap; i++)
        out[i] = s[i] == '_' ? '-' : (char)tolower((unsigned char)s[i]);
    out[i] = '\0';
}

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

bool sg_rate_parse(const char *s, sg_rate *out)
{
    if (strcmp(s, "0") == 0) {
        out->rate = 0;
        out->burst = 0;
        return true;
    }
    char *end;
    errno = 0;
    double r = strtod(s, &end);
    if (errno || end == s || *end != '/' || !(r > 0) || r > 1e9)
        return false;
    const char *b = end + 1;
    double burst = strtod(b, &end);
    if (errno || end == b || *end != '\0' || !(burst >= 1) || burst > 1e9)
        return false;
    out->rate = r;
    out->burst = burst;
    return true;
}

static int set_opt(sg_config *cfg, const opt *o, const char *val, char *err, size_t errlen)
{
    char *base = (char *)cfg;
    switch (o->type) {
    case T_STR: {
        char **p = (char **)(base + o->off);
        free(*p);
        *p = sg_xstrdup(val);
        return 0;
    }
    case T_INT: {
        char *end;
        errno = 0;
        long long v = strtoll(val, &end, 10);
        if (errno || end == val || *end || v < o->min || v > o->max) {
            seterr(err, errlen, "%s: '%s' is not an integer in [%lld, %lld]", o->env, val,
                   (long long)o->min, (long long)o->max);
            return -1;
        }
        *(int64_t *)(base + o->off) = v;
        return 0;
    }
    case T_RATE:
        if (!sg_rate_parse(val, (sg_rate *)(base + o->off))) {
            seterr(err, errlen, "%s: '%s' is not RATE/BURST (e.g. 20/200) or 0", o->env, val);
            return -1;
        }
        return 0;
    }
    return -1;
}

bool sg_split_hostport(const char *s, char *host, size_t hostlen, int *port)
{
    const char *colon;
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':')
            return false;
        size_t n = (size_t)(rb - s - 1);
        if (n == 0 || n >= hostlen)
            return false;
        memcpy(host, s + 1, n);
        host[n] = '\0';
        colon = rb + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return false;
        size_t n = (size_t)(colon - s);
        if (n == 0 || n >= hostlen)
            return false;
        memcpy(host, s, n);
        host[n] = '\0';
    }
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || *end || p < 0 || p > 65535)
        return false;
    *port = (int)p;
    return true;
}

static int split_origins(sg_config *cfg)
{
    if (!cfg->allowed_origins || !*cfg->allowed_origins)
        return 0;
    size_t n = 1;
    for (const char *p = cfg->allowed_origins; *p; p++)
        n += *p == ',';
    cfg->origins = sg_xcalloc(n, sizeof(char *));
    const char *p = cfg->allowed_origins;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        while (len && isspace((unsigned char)*p)) { p++; len--; }
        while (len && (isspace((unsigned char)p[len - 1]) || p[len - 1] == '/')) len--;
        if (len)
            cfg->origins[cfg->norigins++] = sg_xstrndup(p, len);
        if (!e)
            break;
        p = e + 1;
    }
    return 0;
}

static int validate(sg_config *cfg, char *err, size_t errlen)
{
    char host[256];
    int port;
    if (!sg_split_hostport(cfg->listen, host, sizeof host, &port)) {
        seterr(err, errlen, "SIGNAL_LISTEN: '%s' is not host:port", cfg->listen);
        return -1;
    }
    if (!sg_split_hostport(cfg->admin_listen, host, sizeof host, &port)) {
        seterr(err, errlen, "SIGNAL_ADMIN_LISTEN: '%s' is not host:port", cfg->admin_listen);
        return -1;
    }
    /* An empty value is a mistake, not "unset": say so rather than run
     * without what the operator meant to configure. */
    const char *nonempty[][2] = {{"SIGNAL_TLS_CERT", cfg->tls_cert}, {"SIGNAL_TLS_KEY", cfg->tls_key},
                                 {"SIGNAL_JWT_PUBLIC_KEY", cfg->jwt_public_key},
                                 {"SIGNAL_JWT_JWKS_FILE", cfg->jwt_jwks_file},
                                 {"SIGNAL_ALLOWED_ORIGINS", cfg->allowed_origins},
                                 {"SIGNAL_NODE_ID", cfg->node_id},
                                 {"SIGNAL_STATIC_DIR", cfg->static_dir},
                                 {"SIGNAL_REDIS_SENTINELS", cfg->redis_sentinels},
                                 {"SIGNAL_TURN_SECRET", cfg->turn_secret},
                                 {"SIGNAL_TURN_URLS", cfg->turn_urls}};
    for (size_t i = 0; i < sizeof nonempty / sizeof *nonempty; i++)
        if (nonempty[i][1] && !*nonempty[i][1]) {
            seterr(err, errlen, "%s is set but empty", nonempty[i][0]);
            return -1;
        }
    if (!!cfg->tls_cert != !!cfg->tls_key) {
        seterr(err, errlen, "SIGNAL_TLS_CERT and SIGNAL_TLS_KEY must be set together");
        return -1;
    }
    if (strncmp(cfg->redis_url, "redis://", 8) != 0) {
        seterr(err, errlen, "SIGNAL_REDIS_URL: '%s' must start with redis://", cfg->redis_url);
        return -1;
    }
    if (strcmp(cfg->jwt_alg, "HS256") == 0) {
        if (!cfg->jwt_secret || !*cfg->jwt_secret) {
            seterr(err, errlen, "SIGNAL_JWT_SECRET is required for HS256 (there is no unauthenticated mode)");
            return -1;
        }
    } else if (strcmp(cfg->jwt_alg, "RS256") == 0 || strcmp(cfg->jwt_alg, "ES256") == 0) {
        if (!cfg->jwt_public_key && !cfg->jwt_jwks_file) {
            seterr(err, errlen, "SIGNAL_JWT_PUBLIC_KEY or SIGNAL_JWT_JWKS_FILE is required for %s", cfg->jwt_alg);
            return -1;
        }
    } else {
        seterr(err, errlen, "SIGNAL_JWT_ALG: '%s' is not HS256, RS256 or ES256", cfg->jwt_alg);
        return -1;
    }
    static const char *levels[] = {"debug", "info", "warn", "error"};
    cfg->log_level_num = -1;
    for (int i = 0; i < 4; i++)
        if (strcmp(cfg->log_level, levels[i]) == 0)
            cfg->log_level_num = i;
    if (cfg->log_level_num < 0) {
        seterr(err, errlen, "SIGNAL_LOG_LEVEL: '%s' is not debug, info, warn or error", cfg->log_level);
        return -1;
    }
    if (cfg->otlp_endpoint && strncmp(cfg->otlp_endpoint, "http://", 7) != 0) {
        seterr(err, errlen, "SIGNAL_OTLP_ENDPOINT: '%s' must be an http:// URL", cfg->otlp_endpoint);
        return -1;
    }
    if (!!cfg->turn_secret != !!cfg->turn_urls) {
        seterr(err, errlen, "SIGNAL_TURN_SECRET and SIGNAL_TURN_URLS must be set together");
        return -1;
    }
    if (!cfg->node_id) {
        char hn[200] = "node";
        gethostname(hn, sizeof hn - 1);
        hn[sizeof hn - 1] = '\0';
        char id[256];
        /* Long pod names: keep the default within the 64-character limit. */
        snprintf(id, sizeof id, "%.48s-%d", hn, (int)getpid());
        cfg->node_id = sg_xstrdup(id);
    }
    for (const char *p = cfg->node_id; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("_.:-", *p)) {
            seterr(err, errlen, "SIGNAL_NODE_ID: '%s' may hold only A-Za-z0-9_.:-", cfg->node_id);
            return -1;
        }
    if (strlen(cfg->node_id) > 64) {
        seterr(err, errlen, "SIGNAL_NODE_ID: longer than 64 characters");
        return -1;
    }
    default_sub_hash_key(cfg);
    split_origins(cfg);
    if (cfg->allowed_origins && !cfg->norigins) {
        /* "," or " " would otherwise mean "any origin": fail closed. */
        seterr(err, errlen, "SIGNAL_ALLOWED_ORIGINS names no origin");
        return -1;
    }
    return 0;
}

int sg_config_load(sg_config *cfg, int argc, char **argv, int first, char **environ_,
                   char *err, size_t errlen, void *out)
{
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < NOPTS; i++)
        if (OPTS[i].def && set_opt(cfg, &OPTS[i], OPTS[i].def, err, errlen) < 0)
            return -1;
    size_t pre = strlen("SIGNAL_");
    for (char **e = environ_; e && *e; e++) {
        if (strncmp(*e, "SIGNAL_", pre) != 0)
            continue;
        const char *eq = strchr(*e, '=');
        if (!eq)
            continue;
        size_t klen = (size_t)(eq - *e);
        for (size_t i = 0; i < NOPTS; i++) {
            if (strlen(OPTS[i].env) == klen && strncmp(OPTS[i].env, *e, klen) == 0) {
                if (set_opt(cfg, &OPTS[i], eq + 1, err, errlen) < 0)
                    return -1;
                if (OPTS[i].off == offsetof(sg_config, redis_url))
                    cfg->redis_url_set = true;
            }
        }
        /* Unknown SIGNAL_ variables are ignored: other tools share the prefix. */
    }
    for (int a = first; a < argc; a++) {
        const char *arg = argv[a];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            sg_config_usage(out);
            return 1;
        }
        if (strncmp(arg, "--", 2) != 0) {
            seterr(err, errlen, "unexpected argument '%s' (see --help)", arg);
            return -1;
        }
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const opt *o = NULL;
        for (size_t i = 0; i < NOPTS; i++) {
            char fn[64];
            flag_name(&OPTS[i], fn, sizeof fn);
            if (strlen(fn) == nlen && strncmp(fn, name, nlen) == 0)
                o = &OPTS[i];
        }
        if (!o) {
            seterr(err, errlen, "unknown flag '%.*s' (see --help)", (int)nlen + 2, arg);
            return -1;
        }
        const char *val = eq ? eq + 1 : (a + 1 < argc ? argv[++a] : NULL);
        if (!val) {
            seterr(err, errlen, "flag '%s' needs a value", arg);
            return -1;
        }
        if (set_opt(cfg, o, val, err, errlen) < 0)
            return -1;
        if (o->off == offsetof(sg_config, redis_url))
            cfg->redis_url_set = true;
    }
    return validate(cfg, err, errlen);
}

void sg_config_free(sg_config *cfg)
{
    char *base = (char *)cfg;
    for (size_t i = 0; i < NOPTS; i++)
        if (OPTS[i].type == T_STR) {
            free(*(char **)(base + OPTS[i].off));
        }
    for (size_t i = 0; i < cfg->norigins; i++)
        free(cfg->origins[i]);
    free(cfg->origins);
    memset(cfg, 0, sizeof *cfg);
}

void sg_config_usage(void *outp)
{
    FILE *out = outp ? outp : stdout;
    fprintf(out,
            "usage: signal-gateway [--flag value | --flag=value]...\n"
            "       signal-gateway token --sub NAME --room ROOM [--room ROOM2] [--ttl SECONDS]\n"
            "       signal-gateway --version | -V\n"
            "\nEvery setting is an environment variable and a flag; flags win.\n\n");
    for (size_t i = 0; i < NOPTS; i++) {
        char fn[64];
        flag_name(&OPTS[i], fn, sizeof fn);
        fprintf(out, "  --%-26s %-30s %s%s%s%s\n", fn, OPTS[i].env, OPTS[i].help,
                OPTS[i].def ? " [default " : "", OPTS[i].def ? OPTS[i].def : "",
                OPTS[i].def ? "]" : "");
    }
}
