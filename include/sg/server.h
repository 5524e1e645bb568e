/* SPDX-License-Identifier: Apache-2.0 */
/* server: the one object that holds a node's state: listeners, the admin
 * HTTP endpoint, the Redis bus, the session, the connection table, metrics,
 * log, timers, signals and shutdown. It creates the connection table
 * (conns.h) and the dependencies every connection shares (sg_conn_deps,
 * conn.h), and keeps the latter current (a new verifier and TLS context on
 * SIGHUP, the drain); connections never see the server. Nothing else is
 * global. */
#ifndef SG_SERVER_H
#define SG_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include "sg/auth.h"
#include "sg/bus.h"
#include "sg/config.h"
#include "sg/conn.h"
#include "sg/conns.h"
#include "sg/log.h"
#include "sg/metrics.h"
#include "sg/session.h"
#include "sg/trace.h"

struct event_base;
struct event;
struct evconnlistener;
struct evhttp;

typedef struct sg_server {
    struct event_base *base;
    const sg_config *cfg;
    sg_log *log;
    sg_metrics metrics;
    sg_tracer *tracer;   /* NULL when SIGNAL_OTLP_ENDPOINT is unset */
    struct evconnlistener *listener;
    struct evhttp *admin;
    sg_bus *bus;
    sg_session *session;
    sg_conns *conns;     /* the connection table */
    /* What the connections share. The server owns what it points to; its
     * auth (the JWT verifier) and ssl (the TLS context, NULL for ws://) are
     * the server's only copies, replaced on SIGHUP and freed here; its
     * draining flag is the node's drain state. */
    sg_conn_deps conn;
    struct event *probe_timer; /* the delivery-path probe (bus.h) */
    uint64_t available_since_ms; /* Redis available since (monotonic); 0 while not */
    struct event *lease_timer;
    struct event *sig_term, *sig_int, *sig_hup, *drain_timer, *drain_tick;
    bool said_goodbye;   /* the drain took the instance out of signal:nodes */
    int exit_code;
} sg_server;

/* Creates listeners and the bus; returns NULL with err filled. */
sg_server *sg_server_new(struct event_base *base, const sg_config *cfg, sg_log *log,
                         char *err, size_t errlen);
void sg_server_free(sg_server *s);

/* Builds the JWT verifier from the config (used at start and on SIGHUP). */
sg_auth *sg_server_load_auth(const sg_config *cfg, char *err, size_t errlen);

/* Ready: Redis reachable, probes coming back, not draining. */
bool sg_server_ready(sg_server *s);

/* Starts the graceful drain (SIGTERM/SIGINT). */
void sg_server_drain(sg_server *s);

#endif
