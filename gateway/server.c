/* SPDX-License-Identifier: Apache-2.0 */
#include "sg/server.h"
#include "sg/buf.h"
#include "sg/conn.h"
#include "sg/conns.h"
#include "sg/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define DRAIN_TICK_MS 50
#define PROBE_INTERVAL_MS 1000
#define PROBE_STALE_MS 5000   /* /readyz fails when no probe came back for this long */
#define PROBE_RESET_MS 10000  /* then the subscriber connection is renewed */
#define ACCEPT_RETRY_MS 100        /* a listener paused by an accept error tries again after this */
#define ACCEPT_LOG_INTERVAL_MS 1000 /* at most one accept_error line a second per listener */
#define LIBEVENT_LOG_PER_S 10      /* libevent's own lines, at most, a second */
#define TLS12_CIPHERS                                                                      \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                           \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                           \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

static int resolve_listen(const char *hostport, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[256];
    int port;
    if (!sg_split_hostport(hostport, host, sizeof host, &port))
        return -1;
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *len = sizeof *v4;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *len = sizeof *v6;
        return 0;
    }
    return -1;
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    sg_server *s = arg;
    char ip[64] = "";
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, ip, sizeof ip);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof ip);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sg_conn_accept(&s->conn, fd, ip);
}

/* ---- accept errors ---------------------------------------------------- */

/* Out of descriptors (EMFILE, ENFILE) or memory, accept fails and leaves the
 * connection in the backlog, so the listener stays readable: accepting again
 * at once fails again, at 100% CPU with a log line each time. A listener
 * whose accept fails is paused instead and tried again ACCEPT_RETRY_MS later
 * (whatever the error: none is worth a spin), meanwhile the connections we
 * have are served and free descriptors as they go; the log line is
 * rate-limited. Both listeners are guarded; libevent hands the admin
 * listener's error callback evhttp's user data, not ours, so guards are
 * found by listener in this list. */
typedef struct sg_listen_guard {
    struct sg_listen_guard *next;
    sg_server *s;
    struct evconnlistener *l;
    struct event *retry;
    const char *event;  /* log event name */
    uint64_t logged_ms; /* last line (monotonic), 0: none yet */
    uint64_t suppressed; /* errors since that line, not logged */
} sg_listen_guard;

static sg_listen_guard *guards;

static void on_accept_retry(evutil_socket_t fd, short what, void *arg)
{
    sg_listen_guard *g = arg;
    evconnlistener_enable(g->l);
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    int err = EVUTIL_SOCKET_ERROR();
    sg_listen_guard *g = guards;
    while (g && g->l != l)
        g = g->next;
    if (!g)
        return;
    sg_server *s = g->s;
    sg_metrics_inc(&s->metrics.caps, "accept_error");
    evconnlistener_disable(l);
    struct timeval tv = {0, ACCEPT_RETRY_MS * 1000};
    evtimer_add(g->retry, &tv);
    uint64_t now = sg_now_mono_ms();
    if (g->logged_ms && now - g->logged_ms < ACCEPT_LOG_INTERVAL_MS) {
        g->suppressed++;
        return;
    }
    if (sg_log_begin(s->log, SG_LOG_WARN, g->event)) {
        sg_log_str(s->log, "error", evutil_socket_error_to_string(err));
        sg_log_int(s->log, "suppressed", (int64_t)g->suppressed);
        sg_log_int(s->log, "retry_ms", ACCEPT_RETRY_MS);
        sg_log_end(s->log);
    }
    g->logged_ms = now;
    g->suppressed = 0;
}

static void guard_listener(sg_server *s, struct evconnlistener *l, const char *event)
{
    sg_listen_guard *g = sg_xcalloc(1, sizeof *g);
    g->s = s;
    g->l = l;
    g->event = event;
    g->retry = evtimer_new(s->base, on_accept_retry, g);
    g->next = guards;
    guards = g;
    evconnlistener_set_error_cb(l, on_accept_error);
}

static void unguard_listeners(sg_server *s)
{
    for (sg_listen_guard **pp = &guards; *pp;) {
        sg_listen_guard *g = *pp;
        if (g->s != s) {
            pp = &g->next;
            continue;
        }
        *pp = g->next;
        event_free(g->retry);
        free(g);
    }
}

/* ---- libevent's own log ----------------------------------------------- */

/* libevent writes its warnings to stderr as plain text unless told
 * otherwise; they come into the JSON log instead (stdout and stderr carry
 * JSON only), at most LIBEVENT_LOG_PER_S lines a second. The callback takes
 * no user pointer, hence the static. */
static sg_log *libevent_log;
static uint64_t libevent_log_second, libevent_log_count, libevent_log_suppressed;

static void on_libevent_log(int severity, const char *msg)
{
    int level = severity >= EVENT_LOG_ERR ? SG_LOG_ERROR
                : severity == EVENT_LOG_WARN ? SG_LOG_WARN
                : severity == EVENT_LOG_MSG ? SG_LOG_INFO : SG_LOG_DEBUG;
    if (!libevent_log) {
        /* Before the server exists or after it is gone: still one JSON line. */
        sg_buf b;
        sg_buf_init(&b);
        sg_buf_puts(&b, "{\"level\":");
        static const char *names[] = {"debug", "info", "warn", "error"};
        sg_buf_json_str(&b, names[level], strlen(names[level]));
        sg_buf_puts(&b, ",\"event\":\"libevent.log\",\"msg\":");
        sg_buf_json_str(&b, msg, strlen(msg));
        sg_buf_puts(&b, "}\n");
        fwrite(b.data, 1, b.len, stderr);
        sg_buf_free(&b);
        return;
    }
    uint64_t second = sg_now_mono_ms() / 1000;
    if (second != libevent_log_second) {
        libevent_log_second = second;
        libevent_log_count = 0;
    }
    if (libevent_log_count++ >= LIBEVENT_LOG_PER_S) {
        libevent_log_suppressed++;
        return;
    }
    sg_log_foreign(libevent_log, level, "libevent.log", msg, libevent_log_suppressed);
    libevent_log_suppressed = 0;
}

/* ---- delivery-path probe -------------------------------------------- */

/* Each link to Redis publishes a probe to a channel of its own shard and
 * expects it back on its subscriber connection (bus.h): a wedged
 * subscription is caught even while commands succeed. */
static int64_t probe_age(const sg_server *s) { return sg_bus_probe_age(s->bus); }

bool sg_server_ready(sg_server *s)
{
    if (s->conn.draining || !sg_bus_available(s->bus))
        return false;
    uint64_t now = sg_now_mono_ms();
    /* Just (re)connected: give the first probes time to come back. */
    if (now - s->available_since_ms < PROBE_STALE_MS)
        return true;
    int64_t age = probe_age(s);
    return age >= 0 && age <= PROBE_STALE_MS;
}

static void on_probe_tick(evutil_socket_t fd, short what, void *arg)
{
    sg_server *s = arg;
    s->metrics.probe_age_ms = probe_age(s);
    s->metrics.probes_sent = sg_bus_probes_sent(s->bus);
    s->metrics.probes_received = sg_bus_probes_received(s->bus);
    if (!sg_bus_available(s->bus))
        return;
    uint64_t now = sg_now_mono_ms();
    int64_t age = probe_age(s);
    if (now - s->available_since_ms > PROBE_RESET_MS && (age < 0 || age > PROBE_RESET_MS)) {
        /* Commands work but nothing comes back on a subscription: renew it. */
        if (sg_log_begin(s->log, SG_LOG_WARN, "redis.probe_stale")) {
            sg_log_int(s->log, "age_ms", age);
            sg_log_end(s->log);
        }
        sg_bus_probe_renew(s->bus, PROBE_RESET_MS);
        return;
    }
    sg_bus_probe(s->bus);
}

static void on_bus_message(void *ud, const char *channel, size_t chlen, const char *payload, size_t len)
{
    sg_server *s = ud;
    sg_session_on_message(s->session, channel, chlen, payload, len);
}

static void on_bus_channel_moved(void *ud, const char *channel, size_t chlen)
{
    sg_server *s = ud;
    sg_session_on_channel_moved(s->session, channel, chlen);
}

/* ---- admin ----------------------------------------------------------- */

static void reply_text(struct evhttp_request *req, int code, const char *reason, const char *ctype,
                       const char *body, size_t len)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, body, len);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
    evhttp_send_reply(req, code, reason, b);
    evbuffer_free(b);
}

static void on_admin(struct evhttp_request *req, void *arg)
{
    sg_server *s = arg;
    const char *uri = evhttp_request_get_uri(req);
    const char *q = strchr(uri, '?');
    size_t n = q ? (size_t)(q - uri) : strlen(uri);
    if (n == 8 && memcmp(uri, "/metrics", 8) == 0) {
        s->metrics.log_dropped = sg_log_dropped(s->log);
        const sg_tracer_stats *ts = sg_tracer_stats_get(s->tracer);
        s->metrics.spans_exported = ts->exported;
        s->metrics.spans_dropped = ts->dropped;
        sg_buf b;
        sg_buf_init(&b);
        sg_metrics_render(&s->metrics, &b);
        reply_text(req, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
        sg_buf_free(&b);
        return;
    }
    if (n == 8 && memcmp(uri, "/healthz", 8) == 0) {
        reply_text(req, 200, "OK", "application/json", "{\"status\":\"ok\"}\n", 16);
        return;
    }
    if (n == 7 && memcmp(uri, "/readyz", 7) == 0) {
        char body[200];
        bool redis = sg_bus_available(s->bus);
        bool ready = sg_server_ready(s);
        int len = snprintf(body, sizeof body,
                           "{\"ready\":%s,\"redis\":%s,\"draining\":%s,\"probe_age_ms\":%lld}\n",
                           ready ? "true" : "false", redis ? "true" : "false",
                           s->conn.draining ? "true" : "false", (long long)probe_age(s));
        reply_text(req, ready ? 200 : 503, ready ? "OK" : "Service Unavailable", "application/json",
                   body, (size_t)len);
        return;
    }
    reply_text(req, 404, "Not Found", "text/plain", "not found\n", 10);
}

/* ---- leases, drain ---------------------------------------------------- */

static void on_lease_tick(evutil_socket_t fd, short what, void *arg)
{
    sg_server *s = arg;
    sg_session_tick(s->session);
}

static void on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
    sg_server *s = arg;
    /* Done when every client is gone and every leave has reached Redis
     * (and none is still owed by the deferred pass); then the instance
     * says goodbye, and that too reaches Redis. */
    if (sg_conns_count(s->conns) == 0 && !sg_conns_pending(s->conns) && !sg_bus_busy(s->bus)) {
        if (!s->said_goodbye && sg_bus_available(s->bus)) {
            s->said_goodbye = true;
            sg_session_goodbye(s->session);
            return;
        }
        event_base_loopexit(s->base, NULL);
    }
}

static void on_drain_deadline(evutil_socket_t fd, short what, void *arg)
{
    sg_server *s = arg;
    if (sg_log_begin(s->log, SG_LOG_WARN, "server.drain_timeout")) {
        sg_log_int(s->log, "connections", (int64_t)sg_conns_count(s->conns));
        sg_log_end(s->log);
    }
    event_base_loopexit(s->base, NULL);
}

void sg_server_drain(sg_server *s)
{
    if (s->conn.draining)
        return;
    s->conn.draining = true;
    s->metrics.draining = 1;
    if (sg_log_begin(s->log, SG_LOG_INFO, "server.drain")) {
        sg_log_int(s->log, "connections", (int64_t)sg_conns_count(s->conns));
        sg_log_int(s->log, "drain_ms", s->cfg->drain_ms);
        sg_log_end(s->log);
    }
    sg_conn_close_all(&s->conn);
    struct timeval dl = {s->cfg->drain_ms / 1000, (s->cfg->drain_ms % 1000) * 1000};
    event_add(s->drain_timer, &dl);
    struct event *tick = event_new(s->base, -1, EV_PERSIST, on_drain_tick, s);
    struct timeval tv = {0, DRAIN_TICK_MS * 1000};
    event_add(tick, &tv);
    s->drain_tick = tick;
}

static SSL_CTX *make_ssl(const sg_config *cfg, char *err, size_t errlen);
static void note_certificate(sg_server *s);

/* Certificate rotation (certbot, cert-manager): the files are read again
 * into a new context that every handshake from now on uses. An open
 * connection keeps the context it was accepted with (each SSL holds a
 * reference to its SSL_CTX, so freeing ours here frees nothing in use).
 * A file that fails to load, or a key that does not match, keeps the old
 * certificate. */
static void reload_tls(sg_server *s)
{
    char err[512] = "";
    SSL_CTX *ctx = make_ssl(s->cfg, err, sizeof err);
    if (ctx) {
        SSL_CTX_free(s->conn.ssl);
        s->conn.ssl = ctx;
        note_certificate(s);
    }
    if (sg_log_begin(s->log, ctx ? SG_LOG_INFO : SG_LOG_ERROR, ctx ? "tls.reload" : "tls.reload_failed")) {
        if (ctx)
            sg_log_int(s->log, "not_after", (int64_t)s->metrics.tls_cert_not_after);
        else
            sg_log_str(s->log, "error", err);
        sg_log_end(s->log);
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    sg_server *s = arg;
    if (sig == SIGHUP) {
        /* Key rotation: a new verifier for new handshakes; connections that
         * are open keep the claims they were admitted with. A file that fails
         * to load keeps the old keys. */
        char err[256] = "";
        sg_auth *a = sg_server_load_auth(s->cfg, err, sizeof err);
        if (a) {
            sg_auth_free(s->conn.auth);
            s->conn.auth = a;
        }
        if (sg_log_begin(s->log, a ? SG_LOG_INFO : SG_LOG_ERROR, a ? "auth.reload" : "auth.reload_failed")) {
            if (!a)
                sg_log_str(s->log, "error", err);
            sg_log_end(s->log);
        }
        if (s->conn.ssl)
            reload_tls(s);
        return;
    }
    sg_server_drain(s);
}

/* ---- bus glue -------------------------------------------------------- */

static void on_bus_available(void *ud, bool available, bool fresh)
{
    sg_server *s = ud;
    s->available_since_ms = available ? sg_now_mono_ms() : 0;
    if (available)
        sg_session_on_redis_up(s->session, fresh);
}

static void on_bus_reply(void *ud, uint64_t tag, redisReply *r)
{
    sg_server *s = ud;
    sg_session_on_reply(s->session, tag, r);
}

static void on_bus_subscribed(void *ud, const char *channel, size_t chlen)
{
    sg_server *s = ud;
    sg_session_on_subscribed(s->session, channel, chlen);
}

/* ---- lifecycle ------------------------------------------------------- */

static SSL_CTX *make_ssl(const sg_config *cfg, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        goto fail;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* Level 2: at least 112-bit security (RSA/DH keys >= 2048 bits, ECC
     * >= 224 bits), no SHA-1 in signatures, whatever the system openssl.cnf
     * says. TLS 1.2 suites: forward secret (ECDHE) and AEAD only, i.e.
     * Mozilla's "intermediate" list without DHE; no RSA key exchange, no
     * CBC, no SHA-1 MACs. TLS 1.3 keeps OpenSSL's suites, all of which are. */
    SSL_CTX_set_security_level(ctx, 2);
    if (SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) != 1) {
        snprintf(err, errlen, "TLS setup failed: no TLS 1.2 cipher suite available");
        goto fail;
    }
    /* Idle connections keep no TLS read/write buffers. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1) {
        snprintf(err, errlen, "SIGNAL_TLS_CERT: cannot load %s (a PEM chain; keys of at least 2048-bit RSA "
                              "or 224-bit ECC, signed with SHA-256 or better)", cfg->tls_cert);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "SIGNAL_TLS_KEY: cannot load %s or it does not match the certificate",
                 cfg->tls_key);
        goto fail;
    }
    return ctx;
fail:
    if (!err[0])
        snprintf(err, errlen, "TLS setup failed");
    SSL_CTX_free(ctx);
    return NULL;
}

/* The certificate's notAfter as Unix time, for the expiry gauge. */
static void note_certificate(sg_server *s)
{
    X509 *x = s->conn.ssl ? SSL_CTX_get0_certificate(s->conn.ssl) : NULL;
    struct tm tm;
    if (x && ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1)
        s->metrics.tls_cert_not_after = (int64_t)timegm(&tm);
}

static char *read_file(const char *path, size_t max, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = sg_xmalloc(max + 1);
    size_t n = fread(buf, 1, max + 1, f);
    fclose(f);
    if (n > max) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

sg_auth *sg_server_load_auth(const sg_config *cfg, char *err, size_t errlen)
{
    sg_auth_config ac = {0};
    ac.alg = strcmp(cfg->jwt_alg, "RS256") == 0 ? SG_ALG_RS256
             : strcmp(cfg->jwt_alg, "ES256") == 0 ? SG_ALG_ES256 : SG_ALG_HS256;
    ac.secret = cfg->jwt_secret;
    ac.issuer = cfg->jwt_issuer;
    ac.audience = cfg->jwt_audience;
    ac.leeway_s = cfg->jwt_leeway_s;
    const char *why = NULL;
    sg_auth *a = NULL;
    char *pem = NULL;
    if (cfg->jwt_jwks_file && ac.alg != SG_ALG_HS256) {
        size_t n = 0;
        char *jwks = read_file(cfg->jwt_jwks_file, 1 << 20, &n);
        if (!jwks) {
            snprintf(err, errlen, "SIGNAL_JWT_JWKS_FILE: cannot read %s", cfg->jwt_jwks_file);
            return NULL;
        }
        a = sg_auth_new_jwks(jwks, n, &ac, &why);
        free(jwks);
    } else {
        if (ac.alg != SG_ALG_HS256) {
            pem = read_file(cfg->jwt_public_key, 1 << 16, NULL);
            if (!pem) {
                snprintf(err, errlen, "SIGNAL_JWT_PUBLIC_KEY: cannot read %s", cfg->jwt_public_key);
                return NULL;
            }
            ac.public_key_pem = pem;
        }
        a = sg_auth_new(&ac, &why);
    }
    free(pem);
    if (!a)
        snprintf(err, errlen, "JWT configuration: %s", why ? why : "unusable");
    return a;
}

sg_server *sg_server_new(struct event_base *base, const sg_config *cfg, sg_log *log, char *err, size_t errlen)
{
    sg_server *s = sg_xcalloc(1, sizeof *s);
    s->base = base;
    s->cfg = cfg;
    s->log = log;
    libevent_log = log;
    event_set_log_callback(on_libevent_log);
    sg_metrics_init(&s->metrics);
    sg_conns_limits cl = {.max_connections = (uint64_t)cfg->max_connections,
                          .max_per_ip = (uint64_t)cfg->max_connections_per_ip};
    s->conns = sg_conns_new(base, &cl, &sg_conn_table_ops);
    s->conn = (sg_conn_deps){.base = base, .cfg = cfg, .log = log, .metrics = &s->metrics, .table = s->conns};
    s->conn.auth = sg_server_load_auth(cfg, err, errlen);
    if (!s->conn.auth)
        goto fail;
    if (cfg->tls_cert && !(s->conn.ssl = make_ssl(cfg, err, errlen)))
        goto fail;
    note_certificate(s);
    if (cfg->otlp_traces_url) {
        const char *why = NULL;
        sg_tracer_opts to = {.url = cfg->otlp_traces_url, .service_name = cfg->otel_service_name,
                             .node_id = cfg->node_id, .header_names = cfg->otlp_header_names,
                             .header_values = cfg->otlp_header_values, .nheaders = cfg->otlp_nheaders,
                             .ca_file = cfg->otlp_ca_file};
        s->tracer = sg_tracer_new(base, &to, log, &why);
        if (!s->tracer) {
            snprintf(err, errlen, "%s: %s", cfg->otlp_source, why ? why : "unusable");
            goto fail;
        }
    }

    struct sockaddr_storage ss;
    socklen_t sl;
    if (resolve_listen(cfg->listen, &ss, &sl) < 0) {
        snprintf(err, errlen, "SIGNAL_LISTEN: '%s' needs a numeric IPv4/IPv6 address", cfg->listen);
        goto fail;
    }
    s->listener = evconnlistener_new_bind(base, on_accept, s,
                                          LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
                                          4096, (struct sockaddr *)&ss, (int)sl);
    if (!s->listener) {
        snprintf(err, errlen, "SIGNAL_LISTEN: cannot listen on %s: %s", cfg->listen, strerror(errno));
        goto fail;
    }
    guard_listener(s, s->listener, "ws.accept_error");

    char host[256];
    int port;
    sg_split_hostport(cfg->admin_listen, host, sizeof host, &port);
    s->admin = evhttp_new(base);
    evhttp_set_gencb(s->admin, on_admin, s);
    evhttp_set_allowed_methods(s->admin, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
    evhttp_set_max_headers_size(s->admin, 8192);
    evhttp_set_max_body_size(s->admin, 0);
    evhttp_set_timeout(s->admin, 10);
    struct evhttp_bound_socket *admin_sock = evhttp_bind_socket_with_handle(s->admin, host, (uint16_t)port);
    if (!admin_sock) {
        snprintf(err, errlen, "SIGNAL_ADMIN_LISTEN: cannot listen on %s", cfg->admin_listen);
        goto fail;
    }
    guard_listener(s, evhttp_bound_socket_get_listener(admin_sock), "admin.accept_error");

    sg_bus_config bc = {.redis_url = cfg->redis_url, .sentinels = cfg->redis_sentinels,
                        .tls_ca_file = cfg->redis_tls_ca_file, .tls_cert_file = cfg->redis_tls_cert_file,
                        .tls_key_file = cfg->redis_tls_key_file,
                        .master_name = cfg->redis_master_name, .cluster = cfg->redis_cluster,
                        .node_id = cfg->node_id, .timeout_ms = cfg->redis_timeout_ms};
    sg_bus_handlers h = {.on_available = on_bus_available, .on_message = on_bus_message,
                         .on_subscribed = on_bus_subscribed, .on_channel_moved = on_bus_channel_moved,
                         .on_reply = on_bus_reply, .ud = s};
    s->bus = sg_bus_new(base, &bc, &h, log, &s->metrics);
    /* The session reaches connections by id through conn.c; neither call
     * frees anything (session.h). */
    sg_session_deps sd = {.cfg = cfg, .log = log, .metrics = &s->metrics, .tracer = s->tracer, .bus = s->bus,
                          .io = {.send = sg_conn_send_by_id, .close = sg_conn_close_by_id, .ud = &s->conn}};
    s->session = sg_session_new(&sd);
    s->conn.tracer = s->tracer;
    s->conn.bus = s->bus;
    s->conn.session = s->session;
    if (sg_bus_start(s->bus, err, errlen) < 0)
        goto fail;

    s->metrics.probe_age_ms = -1;
    s->probe_timer = event_new(base, -1, EV_PERSIST, on_probe_tick, s);
    struct timeval pt = {PROBE_INTERVAL_MS / 1000, (PROBE_INTERVAL_MS % 1000) * 1000};
    event_add(s->probe_timer, &pt);
    s->lease_timer = event_new(base, -1, EV_PERSIST, on_lease_tick, s);
    struct timeval lt = {0, SG_SESSION_TICK_MS * 1000};
    event_add(s->lease_timer, &lt);
    s->drain_timer = evtimer_new(base, on_drain_deadline, s);
    s->sig_term = evsignal_new(base, SIGTERM, on_signal, s);
    s->sig_int = evsignal_new(base, SIGINT, on_signal, s);
    s->sig_hup = evsignal_new(base, SIGHUP, on_signal, s);
    event_add(s->sig_term, NULL);
    event_add(s->sig_int, NULL);
    event_add(s->sig_hup, NULL);
    return s;
fail:
    sg_server_free(s);
    return NULL;
}

void sg_server_free(sg_server *s)
{
    if (!s)
        return;
    /* Remaining connections (drain timed out): drop them without a word,
     * and release them while the session is still there to hear it. */
    sg_conn_abort_all(&s->conn);
    sg_conns_free(s->conns);
    s->conn.table = s->conns = NULL;
    unguard_listeners(s);
    if (libevent_log == s->log)
        libevent_log = NULL;
    if (s->listener)
        evconnlistener_free(s->listener);
    if (s->admin)
        evhttp_free(s->admin);
    /* The bus first: its pending calls get their NULL replies, and the
     * session frees their contexts. */
    sg_bus_free(s->bus);
    sg_session_free(s->session);
    struct event *evs[] = {s->lease_timer, s->drain_timer, s->drain_tick, s->probe_timer,
                           s->sig_term, s->sig_int, s->sig_hup};
    for (size_t k = 0; k < sizeof evs / sizeof *evs; k++)
        if (evs[k])
            event_free(evs[k]);
    if (s->conn.ssl)
        SSL_CTX_free(s->conn.ssl);
    if (s->tracer)
        sg_tracer_free(s->tracer, 1000); /* after the loop returned: one last bounded flush */
    sg_auth_free(s->conn.auth);
    free(s);
}
