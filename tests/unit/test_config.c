/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for config: the defaults of every docs/protocol.md §7 setting,
 * environment parsing, flags over the environment, the flag grammar and its
 * errors, integer bounds, RATE/BURST, host:port splitting, the startup
 * checks of validate() and the --help table.
 *
 * Every load gets a fake environ array built by the test, never the real
 * environment, so the results do not depend on the shell the tests run in.
 * Every load, successful or not, is followed by sg_config_free so that
 * LeakSanitizer checks the error paths too. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sg/config.h"

#define SECRET "SIGNAL_JWT_SECRET=test-secret"

/* ---- helpers ---------------------------------------------------------- */

typedef struct loaded {
    sg_config cfg;
    char err[512];
    int rc;
} loaded;

/* Loads with env (NULL-terminated) and argv (NULL-terminated, without the
 * program name: one is prepended and skipped with first = 1). */
static void load_into(loaded *l, char **env, char **args)
{
    char *argv[64];
    int argc = 0;
    argv[argc++] = "signal-gateway";
    for (char **a = args; a && *a; a++) {
        assert_true(argc < 63);
        argv[argc++] = *a;
    }
    argv[argc] = NULL;
    memset(l->err, 0, sizeof l->err);
    l->rc = sg_config_load(&l->cfg, argc, argv, 1, env, l->err, sizeof l->err, NULL);
}

#define ENV(...) ((char *[]){__VA_ARGS__, NULL})
#define ARGS(...) ((char *[]){__VA_ARGS__, NULL})

/* Expects a successful load. */
static void load_ok(loaded *l, char **env, char **args)
{
    load_into(l, env, args);
    if (l->rc != 0)
        fail_msg("load failed: rc=%d err=%s", l->rc, l->err);
}

/* Expects a failed load whose message contains needle; frees the config. */
static void expect_error(char **env, char **args, const char *needle)
{
    loaded l;
    load_into(&l, env, args);
    if (l.rc != -1)
        fail_msg("expected an error containing '%s', got rc=%d", needle, l.rc);
    if (!strstr(l.err, needle))
        fail_msg("error '%s' does not contain '%s'", l.err, needle);
    assert_null(strchr(l.err, '\n')); /* one line */
    sg_config_free(&l.cfg);
}

/* One env entry "NAME=value" in a static buffer ring (tests are sequential). */
static char *kv(const char *name, const char *value)
{
    static char ring[16][512];
    static int next;
    char *b = ring[next++ % 16];
    snprintf(b, sizeof ring[0], "%s=%s", name, value);
    return b;
}

/* ---- defaults ----------------------------------------------------------- */

/* Each row of the docs/protocol.md §7 table, with only the mandatory secret set. */
static void test_defaults_match_protocol_table(void **state)
{
    loaded l;
    load_ok(&l, ENV(SECRET), NULL);
    sg_config *c = &l.cfg;

    assert_string_equal(c->listen, "0.0.0.0:8443");
    assert_null(c->tls_cert);
    assert_null(c->tls_key);
    assert_string_equal(c->admin_listen, "127.0.0.1:9090");
    assert_string_equal(c->redis_url, "redis://127.0.0.1:6379/0");
    assert_false(c->redis_url_set);
    assert_null(c->redis_sentinels);
    assert_string_equal(c->redis_master_name, "mymaster");
    assert_string_equal(c->jwt_secret, "test-secret");
    assert_null(c->jwt_public_key);
    assert_string_equal(c->jwt_alg, "HS256");
    assert_null(c->jwt_issuer);
    assert_null(c->jwt_audience);
    assert_null(c->allowed_origins);
    assert_null(c->origins);
    assert_int_equal(c->norigins, 0);
    assert_int_equal(c->max_message_bytes, 65536);
    assert_int_equal(c->room_max_peers, 8);
    assert_int_equal(c->rooms_per_connection, 4);
    assert_int_equal(c->max_connections, 100000);
    assert_int_equal(c->jwt_leeway_s, 30);
    assert_int_equal(c->ping_interval_ms, 20000);
    assert_int_equal(c->pong_timeout_ms, 10000);
    assert_int_equal(c->lease_ms, 15000);
    assert_int_equal(c->drain_ms, 10000);
    assert_string_equal(c->log_level, "info");
    assert_int_equal(c->log_level_num, 1);
    assert_null(c->log_hash_key); /* random, chosen by the log module */
    assert_null(c->otlp_endpoint);

    /* SIGNAL_NODE_ID: hostname + pid. */
    assert_non_null(c->node_id);
    char suffix[32];
    snprintf(suffix, sizeof suffix, "-%d", (int)getpid());
    size_t nl = strlen(c->node_id), sl = strlen(suffix);
    assert_true(nl > sl);
    assert_string_equal(c->node_id + nl - sl, suffix);

    sg_config_free(&l.cfg);
}

/* The rate defaults are ours; README "Rate limits" gives their reasoning. */
static void test_defaults_rates_match_readme(void **state)
{
    loaded l;
    load_ok(&l, ENV(SECRET), NULL);
    sg_config *c = &l.cfg;
    assert_true(c->rate_peer.rate == 20 && c->rate_peer.burst == 200);
    assert_true(c->rate_candidate.rate == 10 && c->rate_candidate.burst == 100);
    assert_true(c->rate_room.rate == 100 && c->rate_room.burst == 800);
    assert_true(c->rate_conn_frames.rate == 50 && c->rate_conn_frames.burst == 300);
    assert_true(c->rate_conn_bytes.rate == 131072 && c->rate_conn_bytes.burst == 1048576);
    sg_config_free(&l.cfg);
}

/* Settings beyond the §7 table keep working defaults too. */
static void test_defaults_extra_settings(void **state)
{
    loaded l;
    load_ok(&l, ENV(SECRET), NULL);
    sg_config *c = &l.cfg;
    assert_int_equal(c->max_connections_per_ip, 0);
    assert_int_equal(c->handshake_timeout_ms, 5000);
    assert_int_equal(c->join_timeout_ms, 30000);
    assert_int_equal(c->max_header_bytes, 8192);
    assert_int_equal(c->max_output_bytes, 1048576);
    assert_int_equal(c->redis_timeout_ms, 3000);
    assert_null(c->static_dir);
    assert_null(c->trusted_proxies);
    assert_null(c->jwt_jwks_file);
    assert_null(c->turn_secret);
    assert_null(c->turn_urls);
    assert_int_equal(c->turn_ttl_s, 3600);
    sg_config_free(&l.cfg);
}

/* A NULL environ is the same as an empty one (then HS256 has no secret). */
static void test_null_environ(void **state)
{
    expect_error(NULL, NULL, "SIGNAL_JWT_SECRET");
    expect_error(ENV("PATH=/bin"), NULL, "SIGNAL_JWT_SECRET");
    loaded l;
    load_ok(&l, NULL, ARGS("--jwt-secret", "s"));
    assert_string_equal(l.cfg.jwt_secret, "s");
    sg_config_free(&l.cfg);
}

/* ---- environment -------------------------------------------------------- */

static void test_env_parsing(void **state)
{
    loaded l;
    load_ok(&l,
            ENV(SECRET, "SIGNAL_LISTEN=127.0.0.1:1234", "SIGNAL_ADMIN_LISTEN=[::1]:9999",
                "SIGNAL_REDIS_URL=redis://:pw@redis.example:6380/2",
                "SIGNAL_REDIS_SENTINELS=s1:26379,s2:26379", "SIGNAL_REDIS_MASTER_NAME=gw",
                "SIGNAL_JWT_ISSUER=https://issuer.example", "SIGNAL_JWT_AUDIENCE=signal",
                "SIGNAL_JWT_LEEWAY_S=0", "SIGNAL_NODE_ID=node-a_1.b:2",
                "SIGNAL_MAX_MESSAGE_BYTES=1024", "SIGNAL_ROOM_MAX_PEERS=2",
                "SIGNAL_ROOMS_PER_CONNECTION=1000", "SIGNAL_MAX_CONNECTIONS=10000000",
                "SIGNAL_PING_INTERVAL_MS=100", "SIGNAL_PONG_TIMEOUT_MS=3600000",
                "SIGNAL_LEASE_MS=300", "SIGNAL_DRAIN_MS=0", "SIGNAL_LOG_LEVEL=debug",
                "SIGNAL_LOG_HASH_KEY=hk", "SIGNAL_OTLP_ENDPOINT=http://127.0.0.1:4318",
                "SIGNAL_RATE_PEER=1.5/3", "SIGNAL_RATE_ROOM=0",
                "SIGNAL_TLS_CERT=/c.pem", "SIGNAL_TLS_KEY=/k.pem"),
            NULL);
    sg_config *c = &l.cfg;
    assert_string_equal(c->listen, "127.0.0.1:1234");
    assert_string_equal(c->admin_listen, "[::1]:9999");
    assert_string_equal(c->redis_url, "redis://:pw@redis.example:6380/2");
    assert_true(c->redis_url_set);
    assert_string_equal(c->redis_sentinels, "s1:26379,s2:26379");
    assert_string_equal(c->redis_master_name, "gw");
    assert_string_equal(c->jwt_issuer, "https://issuer.example");
    assert_string_equal(c->jwt_audience, "signal");
    assert_int_equal(c->jwt_leeway_s, 0);
    assert_string_equal(c->node_id, "node-a_1.b:2");
    assert_int_equal(c->max_message_bytes, 1024);
    assert_int_equal(c->room_max_peers, 2);
    assert_int_equal(c->rooms_per_connection, 1000);
    assert_int_equal(c->max_connections, 10000000);
    assert_int_equal(c->ping_interval_ms, 100);
    assert_int_equal(c->pong_timeout_ms, 3600000);
    assert_int_equal(c->lease_ms, 300);
    assert_int_equal(c->drain_ms, 0);
    assert_string_equal(c->log_level, "debug");
    assert_int_equal(c->log_level_num, 0);
    assert_string_equal(c->log_hash_key, "hk");
    assert_string_equal(c->otlp_endpoint, "http://127.0.0.1:4318");
    assert_true(c->rate_peer.rate == 1.5 && c->rate_peer.burst == 3);
    assert_true(c->rate_room.rate == 0 && c->rate_room.burst == 0);
    assert_string_equal(c->tls_cert, "/c.pem");
    assert_string_equal(c->tls_key, "/k.pem");
    sg_config_free(&l.cfg);
}

/* Other variables, unknown SIGNAL_ variables, prefixes of known names and
 * entries without '=' are ignored. */
static void test_env_ignores_unrelated(void **state)
{
    loaded l;
    load_ok(&l,
            ENV("HOME=/root", SECRET, "SIGNAL_UNKNOWN_THING=1", "SIGNAL_LISTEN", "SIGNAL_LIST=1.2.3.4:1",
                "SIGNAL_LISTENX=1.2.3.4:1", "signal_listen=1.2.3.4:1", "SIGNAL_REDIS_URLS=x",
                "XSIGNAL_LISTEN=1.2.3.4:1"),
            NULL);
    assert_string_equal(l.cfg.listen, "0.0.0.0:8443");
    assert_false(l.cfg.redis_url_set);
    sg_config_free(&l.cfg);
}

/* A value may itself contain '='; only the first one splits. */
static void test_env_value_with_equals(void **state)
{
    loaded l;
    load_ok(&l, ENV("SIGNAL_JWT_SECRET=a=b=c"), NULL);
    assert_string_equal(l.cfg.jwt_secret, "a=b=c");
    sg_config_free(&l.cfg);
}

/* The last occurrence of a variable wins (setenv semantics never produce
 * two, but a hand-built environ may). */
static void test_env_later_entry_wins(void **state)
{
    loaded l;
    load_ok(&l, ENV(SECRET, "SIGNAL_ROOM_MAX_PEERS=3", "SIGNAL_ROOM_MAX_PEERS=5"), NULL);
    assert_int_equal(l.cfg.room_max_peers, 5);
    sg_config_free(&l.cfg);
}

/* ---- flags -------------------------------------------------------------- */

static void test_flags_win_over_env(void **state)
{
    char **env = ENV(SECRET, "SIGNAL_REDIS_URL=redis://env:1/0", "SIGNAL_ROOM_MAX_PEERS=3");
    loaded l;

    load_ok(&l, env, ARGS("--redis-url", "redis://flag:2/0"));
    assert_string_equal(l.cfg.redis_url, "redis://flag:2/0");
    assert_int_equal(l.cfg.room_max_peers, 3); /* env still applies to the rest */
    sg_config_free(&l.cfg);

    load_ok(&l, env, ARGS("--redis-url=redis://eq:3/0"));
    assert_string_equal(l.cfg.redis_url, "redis://eq:3/0");
    assert_true(l.cfg.redis_url_set);
    sg_config_free(&l.cfg);

    load_ok(&l, env, ARGS("--room-max-peers=9", "--room-max-peers", "10"));
    assert_int_equal(l.cfg.room_max_peers, 10); /* the last flag wins */
    sg_config_free(&l.cfg);

    /* The flag alone marks the URL as set. */
    load_ok(&l, ENV(SECRET), ARGS("--redis-url=redis://x:1/0"));
    assert_true(l.cfg.redis_url_set);
    sg_config_free(&l.cfg);
}

/* Every setting has a flag: the env name without SIGNAL_, lowercased,
 * '_' -> '-'. */
static void test_flags_every_kind(void **state)
{
    loaded l;
    load_ok(&l, NULL,
            ARGS("--jwt-secret", "s", "--listen=[::]:443", "--admin-listen", "0.0.0.0:1",
                 "--allowed-origins", "https://a.example", "--max-connections-per-ip", "7",
                 "--rate-conn-bytes", "1000/2000", "--log-level=error", "--node-id=n1",
                 "--static-dir", "/srv/www", "--jwt-leeway-s", "3600"));
    sg_config *c = &l.cfg;
    assert_string_equal(c->jwt_secret, "s");
    assert_string_equal(c->listen, "[::]:443");
    assert_string_equal(c->admin_listen, "0.0.0.0:1");
    assert_int_equal(c->norigins, 1);
    assert_string_equal(c->origins[0], "https://a.example");
    assert_int_equal(c->max_connections_per_ip, 7);
    assert_true(c->rate_conn_bytes.rate == 1000 && c->rate_conn_bytes.burst == 2000);
    assert_int_equal(c->log_level_num, 3);
    assert_string_equal(c->node_id, "n1");
    assert_string_equal(c->static_dir, "/srv/www");
    assert_int_equal(c->jwt_leeway_s, 3600);
    sg_config_free(&l.cfg);
}

/* "--x=" is an explicit empty value, not a missing one. */
static void test_flag_empty_value(void **state)
{
    loaded l;
    load_ok(&l, ENV(SECRET), ARGS("--jwt-issuer="));
    assert_string_equal(l.cfg.jwt_issuer, "");
    sg_config_free(&l.cfg);
    expect_error(ENV(SECRET), ARGS("--room-max-peers="), "SIGNAL_ROOM_MAX_PEERS");
}

/* Arguments before `first` are not parsed (main passes the program name,
 * the token subcommand passes more). */
static void test_first_skips_arguments(void **state)
{
    char *argv[] = {"signal-gateway", "--bogus", "--listen=1.2.3.4:5", NULL};
    sg_config c;
    char err[256] = "";
    assert_int_equal(sg_config_load(&c, 3, argv, 2, ENV(SECRET), err, sizeof err, NULL), 0);
    assert_string_equal(c.listen, "1.2.3.4:5");
    sg_config_free(&c);
}

static void test_unknown_flag(void **state)
{
    expect_error(ENV(SECRET), ARGS("--no-such-flag"), "unknown flag '--no-such-flag'");
    /* The value is not echoed as part of the name. */
    loaded l;
    load_into(&l, ENV(SECRET), ARGS("--no-such-flag=secretvalue"));
    assert_int_equal(l.rc, -1);
    assert_non_null(strstr(l.err, "'--no-such-flag'"));
    assert_null(strstr(l.err, "secretvalue"));
    sg_config_free(&l.cfg);
    /* Env names, single dashes, underscores and prefixes are not flags. */
    expect_error(ENV(SECRET), ARGS("--SIGNAL_LISTEN", "1.2.3.4:5"), "unknown flag");
    expect_error(ENV(SECRET), ARGS("--redis_url", "redis://x"), "unknown flag");
    expect_error(ENV(SECRET), ARGS("--redis", "redis://x"), "unknown flag");
    expect_error(ENV(SECRET), ARGS("--redis-url-x", "redis://x"), "unknown flag");
    expect_error(ENV(SECRET), ARGS("--", "x"), "unknown flag");
    expect_error(ENV(SECRET), ARGS("-x"), "unexpected argument '-x'");
    expect_error(ENV(SECRET), ARGS("positional"), "unexpected argument 'positional'");
}

static void test_missing_value(void **state)
{
    expect_error(ENV(SECRET), ARGS("--redis-url"), "flag '--redis-url' needs a value");
    expect_error(ENV(SECRET), ARGS("--listen=1.2.3.4:5", "--room-max-peers"), "needs a value");
}

/* ---- integers ----------------------------------------------------------- */

typedef struct bound {
    const char *env, *flag;
    int64_t min, max;
    size_t off;
} bound;

static void test_integer_bounds(void **state)
{
    static const bound B[] = {
        {"SIGNAL_MAX_MESSAGE_BYTES", "--max-message-bytes", 256, 16 << 20, offsetof(sg_config, max_message_bytes)},
        {"SIGNAL_ROOM_MAX_PEERS", "--room-max-peers", 2, 10000, offsetof(sg_config, room_max_peers)},
        {"SIGNAL_ROOMS_PER_CONNECTION", "--rooms-per-connection", 1, 1000, offsetof(sg_config, rooms_per_connection)},
        {"SIGNAL_MAX_CONNECTIONS", "--max-connections", 1, 10000000, offsetof(sg_config, max_connections)},
        {"SIGNAL_JWT_LEEWAY_S", "--jwt-leeway-s", 0, 3600, offsetof(sg_config, jwt_leeway_s)},
        {"SIGNAL_PING_INTERVAL_MS", "--ping-interval-ms", 100, 3600000, offsetof(sg_config, ping_interval_ms)},
        {"SIGNAL_PONG_TIMEOUT_MS", "--pong-timeout-ms", 100, 3600000, offsetof(sg_config, pong_timeout_ms)},
        {"SIGNAL_LEASE_MS", "--lease-ms", 300, 3600000, offsetof(sg_config, lease_ms)},
        {"SIGNAL_DRAIN_MS", "--drain-ms", 0, 3600000, offsetof(sg_config, drain_ms)},
        {"SIGNAL_MAX_HEADER_BYTES", "--max-header-bytes", 512, 65536, offsetof(sg_config, max_header_bytes)},
    };
    for (size_t i = 0; i < sizeof B / sizeof B[0]; i++) {
        const bound *b = &B[i];
        char v[32];
        loaded l;

        /* Both ends are accepted, from env and from a flag. */
        snprintf(v, sizeof v, "%lld", (long long)b->min);
        load_ok(&l, ENV(SECRET, kv(b->env, v)), NULL);
        assert_int_equal(*(int64_t *)((char *)&l.cfg + b->off), b->min);
        sg_config_free(&l.cfg);
        snprintf(v, sizeof v, "%lld", (long long)b->max);
        load_ok(&l, ENV(SECRET), ARGS((char *)b->flag, v));
        assert_int_equal(*(int64_t *)((char *)&l.cfg + b->off), b->max);
        sg_config_free(&l.cfg);

        /* One past either end is refused, naming the variable and the range. */
        char range[64];
        snprintf(range, sizeof range, "[%lld, %lld]", (long long)b->min, (long long)b->max);
        snprintf(v, sizeof v, "%lld", (long long)b->min - 1);
        expect_error(ENV(SECRET, kv(b->env, v)), NULL, b->env);
        expect_error(ENV(SECRET, kv(b->env, v)), NULL, range);
        snprintf(v, sizeof v, "%lld", (long long)b->max + 1);
        expect_error(ENV(SECRET), ARGS((char *)b->flag, v), b->env);
    }
}

static void test_integer_bad_forms(void **state)
{
    static const char *bad[] = {"", "abc", "8x", "x8", "0x10", "1e3", "8.0", "8 8",
                                "99999999999999999999", "-99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        expect_error(ENV(SECRET, kv("SIGNAL_ROOM_MAX_PEERS", bad[i])), NULL, "SIGNAL_ROOM_MAX_PEERS");
        char flag[64];
        snprintf(flag, sizeof flag, "--room-max-peers=%s", bad[i]);
        expect_error(ENV(SECRET), ARGS(flag), "is not an integer");
    }
}

/* ---- RATE/BURST --------------------------------------------------------- */

static void test_rate_parse_good(void **state)
{
    sg_rate r = {-1, -1};
    assert_true(sg_rate_parse("0", &r));
    assert_true(r.rate == 0 && r.burst == 0);
    assert_true(sg_rate_parse("20/200", &r));
    assert_true(r.rate == 20 && r.burst == 200);
    assert_true(sg_rate_parse("0.5/1", &r));
    assert_true(r.rate == 0.5 && r.burst == 1);
    assert_true(sg_rate_parse("1000000000/1000000000", &r));
    assert_true(r.rate == 1e9 && r.burst == 1e9);
}

static void test_rate_parse_bad(void **state)
{
    static const char *bad[] = {"5", "5/", "/5", "-1/2", "abc", "", "/", "0/5", "0/0", "00",
                                "5/0", "5/0.5", "5/-1", "5/abc", "5/5/5", "5/5x", "x5/5",
                                "nan/5", "5/nan", "inf/5", "5/inf", "2e9/5", "5/2e9", "1e-400/5"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sg_rate r = {7, 7};
        if (sg_rate_parse(bad[i], &r))
            fail_msg("'%s' was accepted as a rate", bad[i]);
        assert_true(r.rate == 7 && r.burst == 7); /* untouched on failure */
    }
}

static void test_rate_settings(void **state)
{
    static const char *names[] = {"SIGNAL_RATE_PEER", "SIGNAL_RATE_CANDIDATE", "SIGNAL_RATE_ROOM",
                                  "SIGNAL_RATE_CONN_FRAMES", "SIGNAL_RATE_CONN_BYTES"};
    for (size_t i = 0; i < 5; i++) {
        loaded l;
        load_ok(&l, ENV(SECRET, kv(names[i], "0")), NULL);
        sg_config_free(&l.cfg);
        static const char *bad[] = {"5", "5/", "/5", "-1/2", "abc"};
        for (size_t j = 0; j < 5; j++)
            expect_error(ENV(SECRET, kv(names[i], bad[j])), NULL, names[i]);
    }
    loaded l;
    load_ok(&l, ENV(SECRET, "SIGNAL_RATE_CANDIDATE=0"), ARGS("--rate-peer", "0", "--rate-room=3/4"));
    assert_true(l.cfg.rate_peer.rate == 0 && l.cfg.rate_peer.burst == 0);
    assert_true(l.cfg.rate_candidate.rate == 0 && l.cfg.rate_candidate.burst == 0);
    assert_true(l.cfg.rate_room.rate == 3 && l.cfg.rate_room.burst == 4);
    sg_config_free(&l.cfg);
    expect_error(ENV(SECRET), ARGS("--rate-room=5"), "is not RATE/BURST");
}

/* ---- host:port ---------------------------------------------------------- */

static void test_split_hostport_good(void **state)
{
    char host[64];
    int port = -1;
    assert_true(sg_split_hostport("127.0.0.1:8443", host, sizeof host, &port));
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 8443);
    assert_true(sg_split_hostport("[::1]:9090", host, sizeof host, &port));
    assert_string_equal(host, "::1");
    assert_int_equal(port, 9090);
    assert_true(sg_split_hostport("[2001:db8::1]:65535", host, sizeof host, &port));
    assert_string_equal(host, "2001:db8::1");
    assert_int_equal(port, 65535);
    assert_true(sg_split_hostport("localhost:0", host, sizeof host, &port));
    assert_string_equal(host, "localhost");
    assert_int_equal(port, 0);
    assert_true(sg_split_hostport("0.0.0.0:1", host, sizeof host, &port));
    assert_string_equal(host, "0.0.0.0");
    assert_int_equal(port, 1);
}

static void test_split_hostport_bad(void **state)
{
    static const char *bad[] = {
        "127.0.0.1",       /* no port */
        "127.0.0.1:",      /* empty port */
        ":8443",           /* empty host */
        "host:65536",      /* port > 65535 */
        "host:99999999999999999999",
        "host:-1",
        "host:80x",
        "host:x",
        "[::1]",           /* v6 without port */
        "[::1]:",
        "[::1]8443",
        "[::1:8443",       /* no closing bracket */
        "[]:80",
        "[::1]:70000",
        "[::1]:80:90",
        "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char host[64] = "";
        int port = -7;
        if (sg_split_hostport(bad[i], host, sizeof host, &port))
            fail_msg("'%s' was accepted as host:port (host '%s' port %d)", bad[i], host, port);
        assert_int_equal(port, -7);
    }
}

/* The host must fit the caller's buffer with its NUL. */
static void test_split_hostport_host_too_long(void **state)
{
    char host[8];
    int port;
    assert_true(sg_split_hostport("1234567:1", host, sizeof host, &port));
    assert_string_equal(host, "1234567");
    assert_false(sg_split_hostport("12345678:1", host, sizeof host, &port));
    assert_false(sg_split_hostport("[1234:5678]:1", host, sizeof host, &port));
    assert_true(sg_split_hostport("[1234:56]:1", host, sizeof host, &port));
}

static void test_listen_validated(void **state)
{
    expect_error(ENV(SECRET, "SIGNAL_LISTEN=0.0.0.0"), NULL, "SIGNAL_LISTEN");
    expect_error(ENV(SECRET, "SIGNAL_LISTEN=0.0.0.0:70000"), NULL, "SIGNAL_LISTEN");
    expect_error(ENV(SECRET), ARGS("--admin-listen", "[::1]"), "SIGNAL_ADMIN_LISTEN");
}

/* ---- startup checks ----------------------------------------------------- */

static void test_hs256_needs_secret(void **state)
{
    expect_error(ENV("PATH=/usr/bin"), NULL, "SIGNAL_JWT_SECRET is required for HS256");
    expect_error(ENV("SIGNAL_JWT_SECRET="), NULL, "SIGNAL_JWT_SECRET is required");
    expect_error(ENV("SIGNAL_JWT_ALG=HS256", "SIGNAL_JWT_PUBLIC_KEY=/k.pem"), NULL,
                 "SIGNAL_JWT_SECRET is required");
}

static void test_rs256_es256_need_a_key(void **state)
{
    expect_error(ENV("SIGNAL_JWT_ALG=RS256"), NULL, "SIGNAL_JWT_PUBLIC_KEY or SIGNAL_JWT_JWKS_FILE is required for RS256");
    expect_error(ENV("SIGNAL_JWT_ALG=ES256", SECRET), NULL, "required for ES256");
    loaded l;
    load_ok(&l, ENV("SIGNAL_JWT_ALG=RS256", "SIGNAL_JWT_PUBLIC_KEY=/k.pem"), NULL);
    assert_string_equal(l.cfg.jwt_alg, "RS256");
    assert_string_equal(l.cfg.jwt_public_key, "/k.pem");
    sg_config_free(&l.cfg);
    load_ok(&l, ENV("SIGNAL_JWT_ALG=ES256"), ARGS("--jwt-jwks-file", "/keys.json"));
    assert_string_equal(l.cfg.jwt_jwks_file, "/keys.json");
    sg_config_free(&l.cfg);
}

static void test_bad_alg(void **state)
{
    expect_error(ENV(SECRET, "SIGNAL_JWT_ALG=none"), NULL, "SIGNAL_JWT_ALG: 'none'");
    expect_error(ENV(SECRET, "SIGNAL_JWT_ALG=hs256"), NULL, "SIGNAL_JWT_ALG");
    expect_error(ENV(SECRET, "SIGNAL_JWT_ALG=HS512"), NULL, "SIGNAL_JWT_ALG");
    expect_error(ENV(SECRET, "SIGNAL_JWT_ALG="), NULL, "SIGNAL_JWT_ALG");
}

static void test_tls_cert_and_key_together(void **state)
{
    expect_error(ENV(SECRET, "SIGNAL_TLS_CERT=/c.pem"), NULL, "SIGNAL_TLS_CERT and SIGNAL_TLS_KEY must be set together");
    expect_error(ENV(SECRET, "SIGNAL_TLS_KEY=/k.pem"), NULL, "must be set together");
    expect_error(ENV(SECRET), ARGS("--tls-cert", "/c.pem"), "must be set together");
}

static void test_bad_log_level(void **state)
{
    static const char *bad[] = {"verbose", "INFO", "", "warning", "info "};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_error(ENV(SECRET, kv("SIGNAL_LOG_LEVEL", bad[i])), NULL, "SIGNAL_LOG_LEVEL");
    static const char *good[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        loaded l;
        load_ok(&l, ENV(SECRET, kv("SIGNAL_LOG_LEVEL", good[i])), NULL);
        assert_int_equal(l.cfg.log_level_num, i);
        sg_config_free(&l.cfg);
    }
}

static void test_node_id_characters(void **state)
{
    static const char *bad[] = {"node/1", "node 1", "node\"1", "n\xc3\xb6" "de", "node\t1", "a{b}", "x*"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_error(ENV(SECRET, kv("SIGNAL_NODE_ID", bad[i])), NULL, "SIGNAL_NODE_ID");
    /* A newline is refused too (the message echoes the value as given, so
     * it is not checked for being one line here). */
    loaded nl;
    load_into(&nl, ENV(SECRET, "SIGNAL_NODE_ID=node\n1"), NULL);
    assert_int_equal(nl.rc, -1);
    assert_non_null(strstr(nl.err, "SIGNAL_NODE_ID"));
    sg_config_free(&nl.cfg);

    char id[80];
    memset(id, 'a', 64);
    id[64] = '\0';
    loaded l;
    load_ok(&l, ENV(SECRET, kv("SIGNAL_NODE_ID", id)), NULL);
    assert_string_equal(l.cfg.node_id, id);
    sg_config_free(&l.cfg);
    id[64] = 'a';
    id[65] = '\0';
    expect_error(ENV(SECRET, kv("SIGNAL_NODE_ID", id)), NULL, "longer than 64");
}

static void test_redis_url_scheme(void **state)
{
    expect_error(ENV(SECRET, "SIGNAL_REDIS_URL=127.0.0.1:6379"), NULL, "must start with redis://");
    expect_error(ENV(SECRET, "SIGNAL_REDIS_URL=http://127.0.0.1:6379"), NULL, "SIGNAL_REDIS_URL");
    expect_error(ENV(SECRET, "SIGNAL_REDIS_URL=redis:/x"), NULL, "SIGNAL_REDIS_URL");
    expect_error(ENV(SECRET), ARGS("--redis-url="), "SIGNAL_REDIS_URL");
}

static void test_other_startup_checks(void **state)
{
    expect_error(ENV(SECRET, "SIGNAL_OTLP_ENDPOINT=ftp://otel:4318"), NULL, "SIGNAL_OTLP_ENDPOINT");
    expect_error(ENV(SECRET, "SIGNAL_OTLP_ENDPOINT=otel:4318"), NULL, "must be an http:// or https:// URL");
    expect_error(ENV(SECRET, "SIGNAL_TURN_SECRET=t"), NULL, "SIGNAL_TURN_SECRET and SIGNAL_TURN_URLS");
    expect_error(ENV(SECRET, "SIGNAL_TURN_URLS=turn:x"), NULL, "SIGNAL_TURN_SECRET and SIGNAL_TURN_URLS");
}

/* A short error buffer truncates the message instead of overflowing. */
static void test_short_error_buffer(void **state)
{
    char *argv[] = {"signal-gateway", "--a-very-long-unknown-flag-name", NULL};
    sg_config c;
    char err[9];
    memset(err, 'Z', sizeof err);
    assert_int_equal(sg_config_load(&c, 2, argv, 1, ENV(SECRET), err, sizeof err, NULL), -1);
    assert_int_equal(strlen(err), sizeof err - 1);
    sg_config_free(&c);
}

/* ---- tracing: SIGNAL_OTLP_ENDPOINT and the OTEL_* variables ------------- */

/* The traces URL and the variable it came from, for env and args. */
static void expect_traces_url(char **env, char **args, const char *url, const char *source)
{
    loaded l;
    load_ok(&l, env, args);
    if (!url) {
        assert_null(l.cfg.otlp_traces_url);
    } else {
        assert_non_null(l.cfg.otlp_traces_url);
        assert_string_equal(l.cfg.otlp_traces_url, url);
        assert_string_equal(l.cfg.otlp_source, source);
    }
    sg_config_free(&l.cfg);
}

static void test_otel_endpoints(void **state)
{
    const char *S = "SIGNAL_OTLP_ENDPOINT", *B = "OTEL_EXPORTER_OTLP_ENDPOINT",
               *T = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
    expect_traces_url(ENV(SECRET), NULL, NULL, NULL);
    /* A base URL gets /v1/traces (trailing slashes dropped; one that already
     * names it is kept); https is accepted. */
    expect_traces_url(ENV(SECRET, "SIGNAL_OTLP_ENDPOINT=http://c:4318"), NULL, "http://c:4318/v1/traces", S);
    expect_traces_url(ENV(SECRET, "SIGNAL_OTLP_ENDPOINT=https://c/otlp//"), NULL, "https://c/otlp/v1/traces", S);
    expect_traces_url(ENV(SECRET, "SIGNAL_OTLP_ENDPOINT=http://c:4318/v1/traces/"), NULL, "http://c:4318/v1/traces", S);
    expect_traces_url(ENV(SECRET, "OTEL_EXPORTER_OTLP_ENDPOINT=https://o:4318/"), NULL, "https://o:4318/v1/traces", B);
    /* The traces URL is used as it is, and wins over the base. */
    expect_traces_url(ENV(SECRET, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://o:4318/custom",
                          "OTEL_EXPORTER_OTLP_ENDPOINT=http://other:4318"),
                      NULL, "http://o:4318/custom", T);
    /* SIGNAL_OTLP_ENDPOINT (environment or flag) wins over every OTEL_* one. */
    expect_traces_url(ENV(SECRET, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://o:4318/custom",
                          "SIGNAL_OTLP_ENDPOINT=http://s:1", "OTEL_EXPORTER_OTLP_ENDPOINT=http://b:2"),
                      NULL, "http://s:1/v1/traces", S);
    expect_traces_url(ENV(SECRET, "OTEL_EXPORTER_OTLP_ENDPOINT=http://b:2"), ARGS("--otlp-endpoint=http://f:3"),
                      "http://f:3/v1/traces", S);
    /* Empty is unset; the kill switches turn the OTEL_* endpoints off, not ours. */
    expect_traces_url(ENV(SECRET, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=", "OTEL_EXPORTER_OTLP_ENDPOINT=http://b:2"),
                      NULL, "http://b:2/v1/traces", B);
    expect_traces_url(ENV(SECRET, "OTEL_SDK_DISABLED=true", "OTEL_EXPORTER_OTLP_ENDPOINT=http://b:2"), NULL, NULL,
                      NULL);
    expect_traces_url(ENV(SECRET, "OTEL_TRACES_EXPORTER=none", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://t:2"),
                      NULL, NULL, NULL);
    expect_traces_url(ENV(SECRET, "OTEL_SDK_DISABLED=TRUE", "SIGNAL_OTLP_ENDPOINT=http://s:1"), NULL,
                      "http://s:1/v1/traces", S);
    expect_traces_url(ENV(SECRET, "OTEL_SDK_DISABLED=false", "OTEL_EXPORTER_OTLP_ENDPOINT=http://b:2"), NULL,
                      "http://b:2/v1/traces", B);
    /* A later environment entry wins, as for SIGNAL_*. */
    expect_traces_url(ENV(SECRET, "OTEL_EXPORTER_OTLP_ENDPOINT=http://a:1", "OTEL_EXPORTER_OTLP_ENDPOINT=http://b:2"),
                      NULL, "http://b:2/v1/traces", B);

    expect_error(ENV(SECRET, "OTEL_EXPORTER_OTLP_ENDPOINT=collector:4318"), NULL,
                 "OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318/v1/traces' must be an http:// or https:// URL");
    expect_error(ENV(SECRET, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=grpc://c:4317"), NULL,
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
}

static void test_otel_protocol_service_and_ca(void **state)
{
    loaded l;
    load_ok(&l,
            ENV(SECRET, "OTEL_EXPORTER_OTLP_ENDPOINT=https://c", "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
                "OTEL_SERVICE_NAME=edge-signal", "OTEL_EXPORTER_OTLP_CERTIFICATE=/etc/ca.pem"),
            NULL);
    assert_string_equal(l.cfg.otel_service_name, "edge-signal");
    assert_string_equal(l.cfg.otlp_ca_file, "/etc/ca.pem");
    assert_int_equal(l.cfg.otlp_nheaders, 0);
    sg_config_free(&l.cfg);
    /* The traces-only variants win. */
    load_ok(&l,
            ENV(SECRET, "SIGNAL_OTLP_ENDPOINT=https://c", "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE=/t.pem",
                "OTEL_EXPORTER_OTLP_CERTIFICATE=/g.pem", "OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/json"),
            NULL);
    assert_string_equal(l.cfg.otlp_ca_file, "/t.pem");
    assert_null(l.cfg.otel_service_name); /* the tracer's default */
    sg_config_free(&l.cfg);
    /* Only OTLP/HTTP is spoken: gRPC is refused at start, naming the variable. */
    expect_error(ENV(SECRET, "OTEL_EXPORTER_OTLP_ENDPOINT=http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL=grpc"), NULL,
                 "OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' is not supported");
    expect_error(ENV(SECRET, "SIGNAL_OTLP_ENDPOINT=http://c", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=grpc"), NULL,
                 "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL");
    /* ... but only when tracing is on: a shared environment is fine. */
    load_ok(&l, ENV(SECRET, "OTEL_EXPORTER_OTLP_PROTOCOL=grpc", "OTEL_EXPORTER_OTLP_HEADERS=bad"), NULL);
    assert_null(l.cfg.otlp_traces_url);
    sg_config_free(&l.cfg);
}

static void test_otel_headers(void **state)
{
    loaded l;
    load_ok(&l,
            ENV(SECRET, "SIGNAL_OTLP_ENDPOINT=http://c",
                "OTEL_EXPORTER_OTLP_HEADERS= api-key = s3cr%3Dt%2C1 ,, X-Tenant=acme%20corp,x-dup=generic",
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS=X-DUP=traces,X-Empty="),
            NULL);
    assert_int_equal(l.cfg.otlp_nheaders, 4);
    assert_string_equal(l.cfg.otlp_header_names[0], "api-key");
    assert_string_equal(l.cfg.otlp_header_values[0], "s3cr=t,1");
    assert_string_equal(l.cfg.otlp_header_names[1], "X-Tenant");
    assert_string_equal(l.cfg.otlp_header_values[1], "acme corp");
    assert_string_equal(l.cfg.otlp_header_names[2], "x-dup"); /* same name: the traces list's value */
    assert_string_equal(l.cfg.otlp_header_values[2], "traces");
    assert_string_equal(l.cfg.otlp_header_names[3], "X-Empty");
    assert_string_equal(l.cfg.otlp_header_values[3], "");
    sg_config_free(&l.cfg);

    static const struct {
        const char *headers, *needle;
    } bad[] = {
        {"novalue", "entry 1 is not name=value"},
        {"a=1,=2", "entry 2 has no header name"},
        {"bad name=1", "is not a header name"},
        {"b@d=1", "is not a header name"},
        {"Host=evil", "the Host header is set by the exporter"},
        {"content-length=1", "set by the exporter"},
        {"x=%zzTOPSECRET", "bad percent escape"},
        {"x=TOPSECRET%4", "bad percent escape"},
        {"x=TOP%0d%0aSECRET: 1", "control character"},
        {"x=TOPSECRET\x01", "control character"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        loaded e;
        load_into(&e, ENV(SECRET, "SIGNAL_OTLP_ENDPOINT=http://c", kv("OTEL_EXPORTER_OTLP_HEADERS", bad[i].headers)),
                  NULL);
        if (e.rc != -1 || !strstr(e.err, bad[i].needle) || !strstr(e.err, "OTEL_EXPORTER_OTLP_HEADERS"))
            fail_msg("headers '%s': rc=%d err='%s'", bad[i].headers, e.rc, e.err);
        /* Values carry API keys: no message quotes one. */
        assert_null(strstr(e.err, "SECRET"));
        sg_config_free(&e.cfg);
    }
    /* Caps: 32 headers, 4096 bytes of value. */
    char many[2048] = "";
    for (int i = 0; i < 33; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "%sh%d=v", i ? "," : "", i);
    expect_error(ENV(SECRET, "SIGNAL_OTLP_ENDPOINT=http://c", kv("OTEL_EXPORTER_OTLP_HEADERS", many)), NULL,
                 "more than 32 headers");
    static char big[5000];
    memcpy(big, "k=", 2);
    memset(big + 2, 'v', 4097);
    big[4099] = '\0';
    char *env[] = {SECRET, "SIGNAL_OTLP_ENDPOINT=http://c", NULL, NULL};
    static char entry[5100];
    snprintf(entry, sizeof entry, "OTEL_EXPORTER_OTLP_TRACES_HEADERS=%s", big);
    env[2] = entry;
    expect_error(env, NULL, "longer than 4096 bytes");
}

/* ---- origins ------------------------------------------------------------ */

static void test_origins_split(void **state)
{
    loaded l;
    load_ok(&l,
            ENV(SECRET, "SIGNAL_ALLOWED_ORIGINS= https://a.example/ ,https://b.example:8443,, "
                        "\thttp://localhost:3000//\t,"),
            NULL);
    assert_int_equal(l.cfg.norigins, 3);
    assert_string_equal(l.cfg.origins[0], "https://a.example");
    assert_string_equal(l.cfg.origins[1], "https://b.example:8443");
    assert_string_equal(l.cfg.origins[2], "http://localhost:3000");
    /* The raw list is kept as given. */
    assert_string_equal(l.cfg.allowed_origins,
                        " https://a.example/ ,https://b.example:8443,, \thttp://localhost:3000//\t,");
    sg_config_free(&l.cfg);

    load_ok(&l, ENV(SECRET), ARGS("--allowed-origins=https://only.example"));
    assert_int_equal(l.cfg.norigins, 1);
    assert_string_equal(l.cfg.origins[0], "https://only.example");
    sg_config_free(&l.cfg);

    /* Set but naming no origin: a startup error, never "any origin". */
    expect_error(ENV(SECRET, "SIGNAL_ALLOWED_ORIGINS="), NULL, "SIGNAL_ALLOWED_ORIGINS");
    expect_error(ENV(SECRET, "SIGNAL_ALLOWED_ORIGINS=, ,"), NULL, "SIGNAL_ALLOWED_ORIGINS");
}

/* ---- --help ------------------------------------------------------------- */

static void test_help(void **state)
{
    static const char *names[] = {
        "SIGNAL_LISTEN", "SIGNAL_TLS_CERT", "SIGNAL_TLS_KEY", "SIGNAL_ADMIN_LISTEN", "SIGNAL_REDIS_URL",
        "SIGNAL_REDIS_SENTINELS", "SIGNAL_REDIS_MASTER_NAME", "SIGNAL_JWT_SECRET", "SIGNAL_JWT_PUBLIC_KEY",
        "SIGNAL_JWT_ALG", "SIGNAL_JWT_ISSUER", "SIGNAL_JWT_AUDIENCE", "SIGNAL_ALLOWED_ORIGINS",
        "SIGNAL_NODE_ID", "SIGNAL_MAX_MESSAGE_BYTES", "SIGNAL_ROOM_MAX_PEERS", "SIGNAL_ROOMS_PER_CONNECTION",
        "SIGNAL_MAX_CONNECTIONS", "SIGNAL_JWT_LEEWAY_S", "SIGNAL_PING_INTERVAL_MS", "SIGNAL_PONG_TIMEOUT_MS",
        "SIGNAL_LEASE_MS", "SIGNAL_DRAIN_MS", "SIGNAL_LOG_LEVEL", "SIGNAL_LOG_HASH_KEY",
        "SIGNAL_OTLP_ENDPOINT", "SIGNAL_RATE_PEER", "SIGNAL_RATE_CANDIDATE", "SIGNAL_RATE_ROOM",
        "SIGNAL_RATE_CONN_FRAMES", "SIGNAL_RATE_CONN_BYTES", "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_SERVICE_NAME",
    };
    static const char *lines[] = {
        "--listen", "--redis-url", "--tls-cert", "--rooms-per-connection", "--rate-conn-bytes",
        "[default 0.0.0.0:8443]", "[default redis://127.0.0.1:6379/0]", "[default 127.0.0.1:9090]",
        "[default mymaster]", "[default HS256]", "[default 65536]", "[default 8]", "[default 4]",
        "[default 100000]", "[default 30]", "[default 20000]", "[default 10000]", "[default 15000]",
        "[default info]", "[default 20/200]", "redis[s]://[[user]:password@]host[:port][/db]",
        "signal-gateway --version | -V",
    };
    for (int variant = 0; variant < 2; variant++) {
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        assert_non_null(f);
        char *argv[] = {"signal-gateway", "--listen=1.2.3.4:5", variant ? "-h" : "--help", "--bogus", NULL};
        sg_config c;
        char err[256] = "";
        /* --help wins over a missing secret and over later bad flags. */
        int rc = sg_config_load(&c, 4, argv, 1, ENV("HOME=/"), err, sizeof err, f);
        fclose(f);
        assert_int_equal(rc, 1);
        assert_non_null(strstr(text, "usage: signal-gateway"));
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if (!strstr(text, names[i]))
                fail_msg("--help does not list %s", names[i]);
        for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
            if (!strstr(text, lines[i]))
                fail_msg("--help does not show '%s'", lines[i]);
        free(text);
        sg_config_free(&c);
    }
}

/* ---- lifecycle ---------------------------------------------------------- */

/* Freeing zeroes the struct, so a second free is harmless. */
static void test_free_twice(void **state)
{
    loaded l;
    load_ok(&l, ENV(SECRET, "SIGNAL_ALLOWED_ORIGINS=https://a,https://b"), NULL);
    sg_config_free(&l.cfg);
    assert_null(l.cfg.listen);
    assert_null(l.cfg.origins);
    sg_config_free(&l.cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_match_protocol_table),
        cmocka_unit_test(test_defaults_rates_match_readme),
        cmocka_unit_test(test_defaults_extra_settings),
        cmocka_unit_test(test_null_environ),
        cmocka_unit_test(test_env_parsing),
        cmocka_unit_test(test_env_ignores_unrelated),
        cmocka_unit_test(test_env_value_with_equals),
        cmocka_unit_test(test_env_later_entry_wins),
        cmocka_unit_test(test_flags_win_over_env),
        cmocka_unit_test(test_flags_every_kind),
        cmocka_unit_test(test_flag_empty_value),
        cmocka_unit_test(test_first_skips_arguments),
        cmocka_unit_test(test_unknown_flag),
        cmocka_unit_test(test_missing_value),
        cmocka_unit_test(test_integer_bounds),
        cmocka_unit_test(test_integer_bad_forms),
        cmocka_unit_test(test_rate_parse_good),
        cmocka_unit_test(test_rate_parse_bad),
        cmocka_unit_test(test_rate_settings),
        cmocka_unit_test(test_split_hostport_good),
        cmocka_unit_test(test_split_hostport_bad),
        cmocka_unit_test(test_split_hostport_host_too_long),
        cmocka_unit_test(test_listen_validated),
        cmocka_unit_test(test_hs256_needs_secret),
        cmocka_unit_test(test_otel_endpoints),
        cmocka_unit_test(test_otel_protocol_service_and_ca),
        cmocka_unit_test(test_otel_headers),
        cmocka_unit_test(test_rs256_es256_need_a_key),
        cmocka_unit_test(test_bad_alg),
        cmocka_unit_test(test_tls_cert_and_key_together),
        cmocka_unit_test(test_bad_log_level),
        cmocka_unit_test(test_node_id_characters),
        cmocka_unit_test(test_redis_url_scheme),
        cmocka_unit_test(test_other_startup_checks),
        cmocka_unit_test(test_short_error_buffer),
        cmocka_unit_test(test_origins_split),
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_free_twice),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
