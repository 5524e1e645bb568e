/* SPDX-License-Identifier: Apache-2.0 */
#include "sg/config.h"
#include "sg/redis_url.h"
#include "sg/util.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
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
    {"SIGNAL_REDIS_URL", S(redis_url), "redis://127.0.0.1:6379/0", 0, 0, "redis[s]://[[user]:password@]host[:port][/db]; rediss: TLS"},
    {"SIGNAL_REDIS_SENTINELS", S(redis_sentinels), NULL, 0, 0, "host:port or redis[s]://[[user]:password@]host:port, comma-separated: find the master through Sentinel"},
    {"SIGNAL_REDIS_MASTER_NAME", S(redis_master_name), "mymaster", 0, 0, "Sentinel master name"},
    {"SIGNAL_REDIS_CLUSTER", S(redis_cluster), NULL, 0, 0, "Redis Cluster seed nodes host:port or redis[s]://[[user]:password@]host:port, comma-separated; SIGNAL_REDIS_URL is then ignored"},
    {"SIGNAL_REDIS_TLS_CA_FILE", S(redis_tls_ca_file), NULL, 0, 0, "PEM CA certificate(s) to verify rediss:// servers with; unset: the system's store"},
    {"SIGNAL_REDIS_TLS_CERT_FILE", S(redis_tls_cert_file), NULL, 0, 0, "PEM client certificate for rediss:// (Redis tls-auth-clients)"},
    {"SIGNAL_REDIS_TLS_KEY_FILE", S(redis_tls_key_file), NULL, 0, 0, "PEM private key of SIGNAL_REDIS_TLS_CERT_FILE"},
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
    {"SIGNAL_LEASE_MS", I(lease_ms), "15000", 300, 3600000, "a gateway instance's liveness lease: heartbeat every lease/3; one silent this long is reaped"},
    {"SIGNAL_DRAIN_MS", I(drain_ms), "10000", 0, 3600000, "graceful shutdown bound"},
    {"SIGNAL_HANDSHAKE_TIMEOUT_MS", I(handshake_timeout_ms), "5000", 100, 600000, "time to send a complete upgrade request"},
    {"SIGNAL_JOIN_TIMEOUT_MS", I(join_timeout_ms), "30000", 0, 3600000, "time from upgrade to first join; 0: off"},
    {"SIGNAL_MAX_HEADER_BYTES", I(max_header_bytes), "8192", 512, 65536, "largest upgrade request head"},
    {"SIGNAL_MAX_OUTPUT_BYTES", I(max_output_bytes), "1048576", 4096, 1 << 30, "unsent bytes per connection before it is closed"},
    {"SIGNAL_REDIS_TIMEOUT_MS", I(redis_timeout_ms), "3000", 100, 600000, "no reply at all this long while a command waits: Redis is hung, reconnect"},
    {"SIGNAL_LOG_LEVEL", S(log_level), "info", 0, 0, "debug, info, warn or error"},
    {"SIGNAL_LOG_HASH_KEY", S(log_hash_key), NULL, 0, 0, "key of the hash that hides user IDs in logs; default random"},
    {"SIGNAL_SUB_HASH_KEY", S(sub_hash_key), NULL, 0, 0, "key of the hash of sub kept in Redis; the same on every node (default: derived from SIGNAL_JWT_SECRET)"},
    {"SIGNAL_OTLP_ENDPOINT", S(otlp_endpoint), NULL, 0, 0, "OTLP/HTTP base URL (http:// or https://), spans go to <url>/v1/traces; wins over OTEL_*"},
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

/* The file can be opened and read now, so a typo or a permission fails the
 * start instead of every connection to Redis later. */
static int check_readable(const char *var, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (f) {
        (void)fgetc(f);
        if (!ferror(f)) {
            fclose(f);
            return 0;
        }
        fclose(f);
        errno = errno ? errno : EIO;
    }
    seterr(err, errlen, "%s: cannot read %s: %s", var, path, strerror(errno));
    return -1;
}

/* The URL, the sentinel and the seed lists parse (redis_url.h; the messages
 * never echo them, as they may hold passwords), and the TLS files are
 * readable and used. */
static int validate_redis(const sg_config *cfg, char *err, size_t errlen)
{
    sg_redis_targets t;
    if (sg_redis_targets_parse(&t, cfg->redis_url, cfg->redis_sentinels, cfg->redis_cluster, err, errlen) < 0)
        return -1;
    bool tls = sg_redis_targets_tls(&t);
    sg_redis_targets_free(&t);
    if (!!cfg->redis_tls_cert_file != !!cfg->redis_tls_key_file) {
        seterr(err, errlen, "SIGNAL_REDIS_TLS_CERT_FILE and SIGNAL_REDIS_TLS_KEY_FILE must be set together");
        return -1;
    }
    const char *files[][2] = {{"SIGNAL_REDIS_TLS_CA_FILE", cfg->redis_tls_ca_file},
                              {"SIGNAL_REDIS_TLS_CERT_FILE", cfg->redis_tls_cert_file},
                              {"SIGNAL_REDIS_TLS_KEY_FILE", cfg->redis_tls_key_file}};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        if (!files[i][1])
            continue;
        /* Files for TLS that nothing uses: the operator meant TLS and would
         * get plain TCP. */
        if (!tls) {
            seterr(err, errlen, "%s is set but no Redis URL is rediss:// (TLS)", files[i][0]);
            return -1;
        }
        if (check_readable(files[i][0], files[i][1], err, errlen) < 0)
            return -1;
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
                                 {"SIGNAL_REDIS_CLUSTER", cfg->redis_cluster},
                                 {"SIGNAL_REDIS_TLS_CA_FILE", cfg->redis_tls_ca_file},
                                 {"SIGNAL_REDIS_TLS_CERT_FILE", cfg->redis_tls_cert_file},
                                 {"SIGNAL_REDIS_TLS_KEY_FILE", cfg->redis_tls_key_file},
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
    if (cfg->redis_cluster && cfg->redis_sentinels) {
        seterr(err, errlen, "SIGNAL_REDIS_CLUSTER and SIGNAL_REDIS_SENTINELS are two topologies: set one");
        return -1;
    }
    if (validate_redis(cfg, err, errlen) < 0)
        return -1;
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

/* ---- tracing: SIGNAL_OTLP_ENDPOINT and OpenTelemetry's variables ------ */

/* OpenTelemetry's standard exporter variables, read from the environment
 * only (no flags): a deployment sets them once for every instrumented
 * process. An empty value counts as unset, as the OTel spec says. */
static const struct {
    const char *env, *help;
} OTEL_VARS[] = {
    {"OTEL_EXPORTER_OTLP_ENDPOINT", "base URL, spans go to <url>/v1/traces"},
    {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "the traces URL itself (used as is); wins over the above"},
    {"OTEL_EXPORTER_OTLP_HEADERS", "extra request headers: name=value,... (values percent-encoded)"},
    {"OTEL_EXPORTER_OTLP_TRACES_HEADERS", "the same, for traces only; a name here wins"},
    {"OTEL_EXPORTER_OTLP_CERTIFICATE", "https: PEM CA bundle to verify the collector (default: the system's)"},
    {"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "the same, for traces only"},
    {"OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf or http/json (JSON is sent either way); grpc is refused"},
    {"OTEL_SERVICE_NAME", "service.name of the spans [default signal-gateway]"},
    {"OTEL_SDK_DISABLED", "true: ignore the OTEL_* endpoints"},
    {"OTEL_TRACES_EXPORTER", "none: ignore the OTEL_* endpoints"},
};

#define OTLP_MAX_HEADERS 32
#define OTLP_MAX_HEADER_VALUE 4096

/* The last NAME=value of environ (as for SIGNAL_*: a later entry wins);
 * NULL when absent or empty. */
static const char *env_value(char **environ_, const char *name)
{
    size_t n = strlen(name);
    const char *v = NULL;
    for (char **e = environ_; e && *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            v = *e + n + 1;
    return v && *v ? v : NULL;
}

static bool has_http_scheme(const char *url)
{
    return strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0;
}

/* A base URL + "/v1/traces", trailing slashes dropped; a URL that already
 * ends in /v1/traces is kept as it is. */
static char *traces_url_of_base(const char *base)
{
    static const char suffix[] = "/v1/traces";
    size_t n = strlen(base), k = sizeof suffix - 1;
    while (n > 8 && base[n - 1] == '/')
        n--;
    if (n >= k && memcmp(base + n - k, suffix, k) == 0)
        return sg_xstrndup(base, n);
    char *out = sg_xmalloc(n + k + 1);
    memcpy(out, base, n);
    memcpy(out + n, suffix, k + 1);
    return out;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)tolower((unsigned char)c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* RFC 9110 token characters. */
static bool is_tchar(unsigned char c)
{
    return isalnum(c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

static void trim(const char **p, size_t *n)
{
    while (*n && (**p == ' ' || **p == '\t')) {
        (*p)++;
        (*n)--;
    }
    while (*n && ((*p)[*n - 1] == ' ' || (*p)[*n - 1] == '\t'))
        (*n)--;
}

/* One "name=value" of an OTLP headers list. Header values often carry API
 * keys: no message quotes one. */
static int add_header(sg_config *cfg, const char *var, size_t idx, const char *item, size_t n, char *err,
                      size_t errlen)
{
    const char *eq = memchr(item, '=', n);
    if (!eq) {
        seterr(err, errlen, "%s: entry %zu is not name=value", var, idx);
        return -1;
    }
    const char *name = item, *val = eq + 1;
    size_t nl = (size_t)(eq - item), vl = n - nl - 1;
    trim(&name, &nl);
    trim(&val, &vl);
    if (nl == 0 || nl > 64) {
        seterr(err, errlen, "%s: entry %zu has no header name (or one longer than 64)", var, idx);
        return -1;
    }
    for (size_t i = 0; i < nl; i++)
        if (!is_tchar((unsigned char)name[i])) {
            seterr(err, errlen, "%s: entry %zu: '%.*s' is not a header name", var, idx, (int)nl, name);
            return -1;
        }
    /* The exporter writes these itself; another value would break the request. */
    static const char *const reserved[] = {"host", "content-length", "content-type", "transfer-encoding",
                                           "connection", "te", "upgrade", "expect"};
    for (size_t i = 0; i < sizeof reserved / sizeof *reserved; i++)
        if (strlen(reserved[i]) == nl && strncasecmp(name, reserved[i], nl) == 0) {
            seterr(err, errlen, "%s: the %.*s header is set by the exporter", var, (int)nl, name);
            return -1;
        }
    char *dec = sg_xmalloc(vl + 1);
    size_t dl = 0;
    for (size_t i = 0; i < vl; i++) {
        unsigned char c = (unsigned char)val[i];
        if (c == '%') {
            int a = i + 2 < vl ? hexval(val[i + 1]) : -1;
            int b = i + 2 < vl ? hexval(val[i + 2]) : -1;
            if (a < 0 || b < 0) {
                free(dec);
                seterr(err, errlen, "%s: the value of %.*s has a bad percent escape", var, (int)nl, name);
                return -1;
            }
            c = (unsigned char)(a << 4 | b);
            i += 2;
        }
        /* No CR/LF or other control byte may reach the request head. */
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            free(dec);
            seterr(err, errlen, "%s: the value of %.*s holds a control character", var, (int)nl, name);
            return -1;
        }
        dec[dl++] = (char)c;
    }
    dec[dl] = '\0';
    if (dl > OTLP_MAX_HEADER_VALUE) {
        free(dec);
        seterr(err, errlen, "%s: the value of %.*s is longer than %d bytes", var, (int)nl, name,
               OTLP_MAX_HEADER_VALUE);
        return -1;
    }
    for (size_t i = 0; i < cfg->otlp_nheaders; i++)
        if (strlen(cfg->otlp_header_names[i]) == nl && strncasecmp(cfg->otlp_header_names[i], name, nl) == 0) {
            free(cfg->otlp_header_values[i]); /* the later list (traces-specific) wins */
            cfg->otlp_header_values[i] = dec;
            return 0;
        }
    if (cfg->otlp_nheaders >= OTLP_MAX_HEADERS) {
        free(dec);
        seterr(err, errlen, "%s: more than %d headers", var, OTLP_MAX_HEADERS);
        return -1;
    }
    if (!cfg->otlp_header_names) {
        cfg->otlp_header_names = sg_xcalloc(OTLP_MAX_HEADERS, sizeof(char *));
        cfg->otlp_header_values = sg_xcalloc(OTLP_MAX_HEADERS, sizeof(char *));
    }
    cfg->otlp_header_names[cfg->otlp_nheaders] = sg_xstrndup(name, nl);
    cfg->otlp_header_values[cfg->otlp_nheaders++] = dec;
    return 0;
}

static int add_headers(sg_config *cfg, const char *var, const char *list, char *err, size_t errlen)
{
    size_t idx = 0;
    for (const char *p = list; list && *p;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        const char *item = p;
        trim(&item, &n);
        idx++;
        if (n && add_header(cfg, var, idx, item, n, err, errlen) < 0)
            return -1;
        if (!e)
            break;
        p = e + 1;
    }
    return 0;
}

/* Precedence: SIGNAL_OTLP_ENDPOINT (flag or environment) is this service's
 * own setting and wins; then OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (the traces
 * URL as is), then OTEL_EXPORTER_OTLP_ENDPOINT (a base, as
 * SIGNAL_OTLP_ENDPOINT is). OTEL_SDK_DISABLED=true and
 * OTEL_TRACES_EXPORTER=none switch the OTEL_* endpoints off. Headers,
 * certificate and service name apply whichever endpoint is used. */
static int load_tracing(sg_config *cfg, char **environ_, char *err, size_t errlen)
{
    const char *v;
    bool otel_off = ((v = env_value(environ_, "OTEL_SDK_DISABLED")) && strcasecmp(v, "true") == 0) ||
                    ((v = env_value(environ_, "OTEL_TRACES_EXPORTER")) && strcasecmp(v, "none") == 0);
    if (cfg->otlp_endpoint) {
        if (!has_http_scheme(cfg->otlp_endpoint)) {
            seterr(err, errlen, "SIGNAL_OTLP_ENDPOINT: '%s' must be an http:// or https:// URL", cfg->otlp_endpoint);
            return -1;
        }
        cfg->otlp_traces_url = traces_url_of_base(cfg->otlp_endpoint);
        cfg->otlp_source = "SIGNAL_OTLP_ENDPOINT";
    } else if (!otel_off && (v = env_value(environ_, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))) {
        cfg->otlp_traces_url = sg_xstrdup(v);
        cfg->otlp_source = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
    } else if (!otel_off && (v = env_value(environ_, "OTEL_EXPORTER_OTLP_ENDPOINT"))) {
        cfg->otlp_traces_url = traces_url_of_base(v);
        cfg->otlp_source = "OTEL_EXPORTER_OTLP_ENDPOINT";
    }
    if (!cfg->otlp_traces_url)
        return 0;
    if (!has_http_scheme(cfg->otlp_traces_url)) {
        seterr(err, errlen, "%s: '%s' must be an http:// or https:// URL", cfg->otlp_source, cfg->otlp_traces_url);
        return -1;
    }
    const char *pvar = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
    if (!(v = env_value(environ_, pvar)))
        v = env_value(environ_, pvar = "OTEL_EXPORTER_OTLP_PROTOCOL");
    if (v && strcmp(v, "http/protobuf") != 0 && strcmp(v, "http/json") != 0) {
        seterr(err, errlen, "%s: '%s' is not supported: spans go as OTLP/HTTP JSON "
                            "(use the collector's HTTP port, 4318, and http/protobuf or http/json)", pvar, v);
        return -1;
    }
    if (add_headers(cfg, "OTEL_EXPORTER_OTLP_HEADERS", env_value(environ_, "OTEL_EXPORTER_OTLP_HEADERS"), err,
                    errlen) < 0 ||
        add_headers(cfg, "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                    env_value(environ_, "OTEL_EXPORTER_OTLP_TRACES_HEADERS"), err, errlen) < 0)
        return -1;
    if ((v = env_value(environ_, "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")) ||
        (v = env_value(environ_, "OTEL_EXPORTER_OTLP_CERTIFICATE")))
        cfg->otlp_ca_file = sg_xstrdup(v);
    if ((v = env_value(environ_, "OTEL_SERVICE_NAME")))
        cfg->otel_service_name = sg_xstrdup(v);
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
    if (load_tracing(cfg, environ_, err, errlen) < 0)
        return -1;
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
    for (size_t i = 0; i < cfg->otlp_nheaders; i++) {
        free(cfg->otlp_header_names[i]);
        free(cfg->otlp_header_values[i]);
    }
    free(cfg->otlp_header_names);
    free(cfg->otlp_header_values);
    free(cfg->otlp_traces_url);
    free(cfg->otlp_ca_file);
    free(cfg->otel_service_name);
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
    fprintf(out, "\nOpenTelemetry's standard variables (environment only):\n\n");
    for (size_t i = 0; i < sizeof OTEL_VARS / sizeof *OTEL_VARS; i++)
        fprintf(out, "  %-38s %s\n", OTEL_VARS[i].env, OTEL_VARS[i].help);
}
