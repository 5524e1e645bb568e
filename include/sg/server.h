/* SPDX-License-Identifier: Apache-2.0 */
/* server: the one object that holds a node's mutable state: listeners, the
 * connection registry (id -> conn), the Redis bus, the session, metrics,
 * log, the deferred pass, timers and shutdown. Connections refer to it;
 * nothing else is global. */
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
#include "sg/session.h"
#include "sg/trace.h"

struct event_base;
struct event;
struct evconnlistener;
struct evhttp;
typedef struct sg_conn sg_conn;

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
    sg_session *session;
    sg_map conns;        /* conn id -> sg_conn* */
    sg_map ip_counts;    /* source address -> count, when the per-IP cap is on */
    uint64_t admitted;   /* connections counted against SIGNAL_MAX_CONNECTIONS: from
                          * accept until gone, those refused at accept excepted */
    struct event *probe_timer; /* the delivery-path probe (bus.h) */
    uint64_t available_since_ms; /* Redis available since (monotonic); 0 while not */
    uint64_t next_conn_id;
    sg_conn *dead;       /* connections with deferred work (session close, free) */
    struct sg_conn_wheel *wheel; /* the connections' timers (conn.c); NULL until the first */
    struct event *reaper;
    struct event *lease_timer;
    struct event *sig_term, *sig_int, *sig_hup, *drain_timer, *drain_tick;
    bool draining;
    bool said_goodbye;   /* the drain took the instance out of signal:nodes */
    int exit_code;
} sg_server;

/* Creates listeners and the bus; returns NULL with err filled. */
sg_server *sg_server_new(struct event_base *base, const sg_config *cfg, sg_log *log,
                         char *err, size_t errlen);
void sg_server_free(sg_server *s);

/* Registry. */
sg_conn *sg_server_conn(sg_server *s, uint64_t id);
/* Queues a connection for the deferred pass (sg_conn_release), which runs
 * after the current callback chain returns. */
void sg_server_defer(sg_server *s, sg_conn *c);

/* Builds the JWT verifier from the config (used at start and on SIGHUP). */
sg_auth *sg_server_load_auth(const sg_config *cfg, char *err, size_t errlen);

/* Ready: Redis reachable, probes coming back, not draining. */
bool sg_server_ready(sg_server *s);

/* Starts the graceful drain (SIGTERM/SIGINT). */
void sg_server_drain(sg_server *s);

#endif
