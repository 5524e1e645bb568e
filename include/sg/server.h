/* server: the one object that holds a node's mutable state: listeners, the
 * connection registry (id -> conn), the Redis bus, metrics, log, deferred
 * frees, the lease timer and shutdown. Connections refer to it; nothing else
 * is global. */
#ifndef SG_SERVER_H
#define SG_SERVER_H

#include <stdbool.h>
#include <stdint.h>
#include <openssl/ssl.h>

#include "sg/auth.h"
#include "sg/bus.h"
#include "sg/config.h"
#include "sg/log.h"
#include "sg/map.h"
#include "sg/metrics.h"
#include "sg/proto.h"
#include "sg/trace.h"

struct event_base;
struct event;
struct evconnlistener;
struct evhttp;
typedef struct sg_conn sg_conn;

/* Channel of a peer: "room:{R}:peer:<uuid>". */
#define SG_CHANNEL_MAX 200

/* A membership this node holds, as the lease refresh needs it. */
typedef struct sg_local_member {
    uint64_t conn;
    char peer[37];
    uint64_t joined_at_ms;
} sg_local_member;

typedef struct sg_local_room {
    size_t n, cap;
    sg_local_member *m;
    /* Room-mates held by other nodes as last seen (NUL-separated peer ids,
     * NULL when none): after Redis loses the room, they are re-asserted as
     * ghosts so a member that left meanwhile still ends in peer_left. */
    char *remote;
    size_t remote_len;
} sg_local_room;

typedef struct sg_waitlist {
    size_t n, cap;
    uint64_t *conns;
} sg_waitlist;

typedef struct sg_server {
    struct event_base *base;
    const sg_config *cfg;
    sg_log *log;
    sg_metrics metrics;
    sg_auth *auth;
    sg_tracer *tracer;   /* NULL when SIGNAL_OTLP_ENDPOINT is unset */
    SSL_CTX *ssl;
    struct evconnlistener *listener;
    struct evhttp *admin;
    sg_bus *bus;
    sg_map conns;        /* conn id -> sg_conn* */
    sg_map ip_counts;    /* source address -> count, when the per-IP cap is on */
    uint64_t admitted;   /* connections counted against SIGNAL_MAX_CONNECTIONS: from
                          * accept until gone, those refused at accept excepted */
    sg_map rooms;        /* room id -> sg_local_room (memberships held here, for leases) */
    sg_map waiters;      /* channel -> sg_waitlist: joins waiting for their subscription */
    size_t lease_cursor; /* bucket of s->rooms where the incremental refresh goes on */
    uint64_t lease_sweep_ms; /* when the current refresh sweep started (monotonic) */
    struct sg_op *op_free; /* freelist of Redis operation contexts */
    sg_msg msg;          /* the message being handled (reused: no allocation per message) */
    sg_buf scratch;      /* frame being built */
    /* Script arguments that only depend on the configuration, formatted once. */
    char resume_args[3][24]; /* resume_ms, buffer max, buffer bytes */
    char rate_args[6][32];   /* peer, candidate, room: rate and burst each */
    char lease_arg[24], ttl_arg[24], max_peers_arg[24], ghost_arg[24];
    /* Delivery-path probe: this node publishes to its own channel and
     * expects it back over the subscriber connection. */
    char probe_channel[96];
    struct event *probe_timer;
    uint64_t probe_ok_ms;       /* last probe that came back (monotonic) */
    uint64_t available_since_ms; /* Redis available since (monotonic); 0 while not */
    uint64_t next_conn_id;
    sg_conn *dead;       /* closed connections freed on the next loop pass */
    struct sg_conn_wheel *wheel; /* the connections' timers (conn.c); NULL until the first */
    struct event *reaper;
    struct event *lease_timer;
    struct event *sig_term, *sig_int, *sig_hup, *drain_timer, *drain_tick;
    bool draining;
    char holder_prefix[80]; /* "<node>#" */
    char cid_prefix[24];    /* prefix of server-made correlationIds */
    uint64_t cid_counter;
    int exit_code;
} sg_server;

/* Creates listeners and the bus; returns NULL with err filled. */
sg_server *sg_server_new(struct event_base *base, const sg_config *cfg, sg_log *log,
                         char *err, size_t errlen);
void sg_server_free(sg_server *s);

/* Registry. */
sg_conn *sg_server_conn(sg_server *s, uint64_t id);
/* Queues a closed connection for freeing after the current callback chain. */
void sg_server_defer_free(sg_server *s, sg_conn *c);

/* Local room index used to refresh leases. */
void sg_server_room_add(sg_server *s, const char *room, uint64_t conn, const char *peer, uint64_t joined_at_ms);
void sg_server_room_remove(sg_server *s, const char *room, uint64_t conn, const char *peer);

/* Builds the JWT verifier from the config (used at start and on SIGHUP). */
sg_auth *sg_server_load_auth(const sg_config *cfg, char *err, size_t errlen);

/* Ready: Redis reachable, probes coming back, not draining. */
bool sg_server_ready(sg_server *s);

/* Starts the graceful drain (SIGTERM/SIGINT). */
void sg_server_drain(sg_server *s);

#endif
