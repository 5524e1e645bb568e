/* SPDX-License-Identifier: Apache-2.0 */
/* config: the one immutable configuration of a node and the only home of
 * defaults. Every setting is an environment variable SIGNAL_X and a flag --x
 * (docs/protocol.md §7); flags win over the environment. */
#ifndef SG_CONFIG_H
#define SG_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A token bucket written RATE/BURST; rate == 0 means the bucket is off. */
typedef struct sg_rate {
    double rate;  /* tokens per second */
    double burst; /* capacity */
} sg_rate;

typedef struct sg_config {
    char *listen;
    char *tls_cert, *tls_key;
    char *admin_listen;
    char *redis_url;
    bool redis_url_set; /* false: the default was used (dev scripts start a local Redis) */
    char *redis_sentinels, *redis_master_name;
    char *redis_cluster;   /* seed nodes: cluster mode when set */
    char *redis_tls_ca_file, *redis_tls_cert_file, *redis_tls_key_file;
    char *jwt_secret, *jwt_public_key, *jwt_alg, *jwt_issuer, *jwt_audience, *jwt_jwks_file;
    char *allowed_origins; /* comma-separated as given */
    char **origins;        /* split */
    size_t norigins;
    char *node_id;
    int64_t max_message_bytes;
    int64_t room_max_peers;
    int64_t rooms_per_connection;
    int64_t max_connections;
    int64_t max_connections_per_ip;
    char *trusted_proxies;
    int64_t jwt_leeway_s;
    int64_t ping_interval_ms, pong_timeout_ms;
    int64_t lease_ms;
    int64_t drain_ms;
    int64_t handshake_timeout_ms;
    int64_t join_timeout_ms;
    int64_t max_header_bytes;
    int64_t max_output_bytes;
    int64_t redis_timeout_ms;
    char *log_level;
    int log_level_num; /* 0 debug, 1 info, 2 warn, 3 error */
    char *log_hash_key;
    char *sub_hash_key;       /* never NULL after load (see config.c) */
    bool sub_hash_key_public; /* the fixed default: it hides nothing (logged at start) */
    char *otlp_endpoint;      /* SIGNAL_OTLP_ENDPOINT as given (a base URL) */
    /* Tracing, resolved from SIGNAL_OTLP_ENDPOINT and OpenTelemetry's
     * standard OTEL_* variables (config.c says which wins). */
    char *otlp_traces_url;    /* the URL spans are POSTed to; NULL: tracing off */
    const char *otlp_source;  /* the variable otlp_traces_url came from (static) */
    char **otlp_header_names, **otlp_header_values; /* extra request headers */
    size_t otlp_nheaders;
    char *otlp_ca_file;       /* https: CA bundle instead of the system's; NULL: system */
    char *otel_service_name;  /* NULL: "signal-gateway" */
    char *static_dir;
    sg_rate rate_peer, rate_candidate, rate_room, rate_conn_frames, rate_conn_bytes;
    int64_t resume_ms, resume_buffer_max, resume_buffer_bytes;
    char *turn_secret, *turn_urls;
    int64_t turn_ttl_s;
} sg_config;

/* Fills cfg from defaults, then environ, then argv (argv[first..argc)).
 * Returns 0, or -1 with a one-line message in err (caller prints it and exits 2).
 * Returns 1 when --help was asked (usage already printed to out). */
int sg_config_load(sg_config *cfg, int argc, char **argv, int first, char **environ_,
                   char *err, size_t errlen, void *out /* FILE* for --help */);
void sg_config_free(sg_config *cfg);

/* Parses "RATE/BURST" or "0". */
bool sg_rate_parse(const char *s, sg_rate *out);

/* Splits "host:port" / "[v6]:port" into host and port. */
bool sg_split_hostport(const char *s, char *host, size_t hostlen, int *port);

/* Prints the settings table (for --help and the README). */
void sg_config_usage(void *out /* FILE* */);

#endif
