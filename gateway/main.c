/* SPDX-License-Identifier: Apache-2.0 */
/* signal-gateway: arguments, configuration, the event loop and signals.
 * Everything else lives in the modules under gateway/. */
#include "sg/auth.h"
#include "sg/config.h"
#include "sg/conns.h"
#include "sg/control.h"
#include "sg/log.h"
#include "sg/server.h"
#include "sg/version.h"

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <json-c/json_c_version.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern char **environ;

/* signal-gateway token --sub NAME --room ROOM [--room ROOM2] [--ttl S]:
 * prints an HS256 development token signed with the configured secret. */
static int cmd_token(int argc, char **argv)
{
    const char *sub = NULL;
    const char *rooms[64];
    size_t nrooms = 0;
    long ttl = 3600;
    int first_cfg = argc; /* remaining flags are configuration */
    char **cfg_argv = calloc((size_t)argc + 1, sizeof *cfg_argv);
    int cfg_argc = 0;
    cfg_argv[cfg_argc++] = argv[0];
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--sub") == 0 && i + 1 < argc)
            sub = argv[++i];
        else if (strcmp(argv[i], "--room") == 0 && i + 1 < argc && nrooms < 64)
            rooms[nrooms++] = argv[++i];
        else if (strcmp(argv[i], "--ttl") == 0 && i + 1 < argc)
            ttl = strtol(argv[++i], NULL, 10);
        else
            cfg_argv[cfg_argc++] = argv[i];
    }
    (void)first_cfg;
    sg_config cfg;
    char err[512] = "";
    int rc = sg_config_load(&cfg, cfg_argc, cfg_argv, 1, environ, err, sizeof err, stderr);
    free(cfg_argv);
    if (rc != 0) {
        sg_config_free(&cfg);
        if (rc < 0)
            fprintf(stderr, "signal-gateway token: %s\n", err);
        return rc < 0 ? 2 : 0;
    }
    if (!sub || ttl <= 0 || strcmp(cfg.jwt_alg, "HS256") != 0) {
        fprintf(stderr, "usage: signal-gateway token --sub NAME --room ROOM [--room ROOM2] [--ttl SECONDS]\n"
                        "(needs SIGNAL_JWT_SECRET / --jwt-secret; HS256 only)\n");
        sg_config_free(&cfg);
        return 2;
    }
    char *tok = sg_auth_mint_hs256(cfg.jwt_secret, sub, rooms, nrooms, (int64_t)time(NULL), ttl,
                                   cfg.jwt_issuer, cfg.jwt_audience);
    sg_config_free(&cfg);
    if (!tok) {
        fprintf(stderr, "signal-gateway token: signing failed\n");
        return 1;
    }
    printf("%s\n", tok);
    free(tok);
    return 0;
}

/* First line: what an operator or a script compares ("signal-gateway
 * VERSION (commit COMMIT)"); then the libraries actually loaded, since a
 * packaged binary runs against whatever the system has. */
static void print_version(void)
{
    printf("signal-gateway %s (commit %s)\n", SG_VERSION, SG_GIT_COMMIT);
    printf("libevent %s, %s, hiredis %d.%d.%d, json-c %s\n", event_get_version(),
           OpenSSL_version(OPENSSL_VERSION), HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH, json_c_version());
}

static bool wants_version(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-V") == 0)
            return true;
    return false;
}

int main(int argc, char **argv)
{
    /* Before any configuration: the version needs no secret or Redis. */
    if (wants_version(argc, argv)) {
        print_version();
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "token") == 0)
        return cmd_token(argc, argv);
    if (argc >= 2 && sg_control_is_command(argv[1]))
        return sg_control_main(argc, argv); /* kick, close-room, revoke (gateway/control.c) */
    signal(SIGPIPE, SIG_IGN);
    sg_config cfg;
    char err[512] = "";
    int rc = sg_config_load(&cfg, argc, argv, 1, environ, err, sizeof err, stdout);
    if (rc != 0) {
        sg_config_free(&cfg); /* what was parsed before the error or --help */
        if (rc > 0)
            return 0;
        fprintf(stderr, "signal-gateway: %s\n", err);
        return 2;
    }
    sg_log *log = sg_log_new(cfg.node_id, cfg.log_level_num, cfg.log_hash_key);
    struct event_config *ec = event_config_new();
    event_config_set_flag(ec, EVENT_BASE_FLAG_PRECISE_TIMER);
    struct event_base *base = event_base_new_with_config(ec);
    event_config_free(ec);
    sg_server *srv = sg_server_new(base, &cfg, log, err, sizeof err);
    if (!srv) {
        if (sg_log_begin(log, SG_LOG_ERROR, "server.start_failed")) {
            sg_log_str(log, "error", err);
            sg_log_end(log);
        }
        sg_log_free(log);
        fprintf(stderr, "signal-gateway: %s\n", err);
        event_base_free(base);
        sg_config_free(&cfg);
        return 1;
    }
    sg_log_attach(log, base);
    srv->metrics.build_version = SG_VERSION;
    srv->metrics.build_commit = SG_GIT_COMMIT;
    if (sg_log_begin(log, SG_LOG_INFO, "server.start")) {
        sg_log_str(log, "version", SG_VERSION);
        sg_log_str(log, "commit", SG_GIT_COMMIT);
        sg_log_str(log, "listen", cfg.listen);
        sg_log_str(log, "admin", cfg.admin_listen);
        sg_log_str(log, "tls", cfg.tls_cert ? "true" : "false");
        sg_log_str(log, "jwt_alg", cfg.jwt_alg);
        sg_log_end(log);
    }
    if (cfg.sub_hash_key_public && sg_log_begin(log, SG_LOG_WARN, "config.sub_hash_key")) {
        sg_log_str(log, "message", "SIGNAL_SUB_HASH_KEY is unset and there is no HS256 secret to derive it from: "
                                   "the hash of sub in Redis member records is keyed with a public default");
        sg_log_end(log);
    }
    event_base_dispatch(base);
    if (sg_log_begin(log, SG_LOG_INFO, "server.stop")) {
        sg_log_int(log, "connections", (int64_t)sg_conns_count(srv->conns));
        sg_log_end(log);
    }
    sg_server_free(srv);
    sg_log_free(log);
    event_base_free(base);
    sg_config_free(&cfg);
    return 0;
}
