/* SPDX-License-Identifier: Apache-2.0 */
/* conn: one client connection's transport: the bounded HTTP upgrade, the
 * RFC 6455 frame layer, heartbeats, local rate limits and the output bound.
 * It is the only user of the connection's bufferevent. Messages that pass
 * go to session.h, which writes back through the sg_session_io below
 * (sg_conn_send_by_id, sg_conn_close_by_id).
 *
 * A connection's bookkeeping (id, registry, caps, deferred list, timer) is
 * a row of the connection table (conns.h); what else it needs it finds in
 * sg_conn_deps, which its creator (the server) owns and keeps current.
 *
 * Nothing here frees a connection, or tells the session it went, inside a
 * call that may come from the session: a send over the output bound and a
 * close only mark the connection; its memberships are released
 * (sg_session_close) and the struct freed by the table's deferred pass, at
 * the top of the event loop. */
#ifndef SG_CONN_H
#define SG_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>

#include "sg/auth.h"
#include "sg/bus.h"
#include "sg/config.h"
#include "sg/conns.h"
#include "sg/log.h"
#include "sg/metrics.h"
#include "sg/session.h"
#include "sg/trace.h"

struct event_base;
typedef struct sg_conn sg_conn;

/* What every connection shares, owned by whoever creates the connections
 * (none of it is freed here). Connections read it at the moment they need
 * it, so what the owner swaps (auth and ssl on SIGHUP, draining) applies to
 * every handshake from then on; a connection already accepted or admitted
 * keeps its SSL (which holds its own reference to its SSL_CTX) and its
 * claims. */
typedef struct sg_conn_deps {
    struct event_base *base;
    const sg_config *cfg;
    sg_log *log;
    sg_metrics *metrics;
    sg_tracer *tracer;    /* NULL: tracing off */
    sg_bus *bus;          /* read only: whether Redis is reachable */
    sg_session *session;
    sg_conns *table;      /* the connection table: one row per connection */
    sg_auth *auth;        /* the JWT verifier for new handshakes */
    SSL_CTX *ssl;         /* NULL: plain ws:// */
    bool draining;        /* new handshakes refused; closes say "shutdown" */
} sg_conn_deps;

/* The table's callbacks for connections (sg_conns_new): the deferred pass
 * tells the session a connection went and frees a dead one; the timer
 * runs the connection's handshake deadline, heartbeat and close wait. */
extern const sg_conns_ops sg_conn_table_ops;

/* Accepts a socket (plain or TLS as d->ssl says). d must outlive the
 * connection. */
void sg_conn_accept(const sg_conn_deps *d, int fd, const char *ip);

/* The session's io (sg_session_io), ud = the sg_conn_deps. Neither frees a
 * connection nor calls into the session.
 * send: one text message. False when the connection is gone or takes no
 * more frames: it is closing, or the output bound would be exceeded (then it
 * is cut: marked dead, released by the deferred pass).
 * close: a close frame with code and reason, then the wait for the
 * client's (a connection that is gone or not open is left alone). */
bool sg_conn_send_by_id(void *deps, uint64_t conn_id, const char *data, size_t len);
void sg_conn_close_by_id(void *deps, uint64_t conn_id, uint16_t code, const char *reason);

/* The drain (d->draining set by the caller): open connections get close
 * 1001, handshakes in progress are dropped. */
void sg_conn_close_all(const sg_conn_deps *d);
/* At exit: ends every connection now, without a word, and runs the
 * deferred pass so that each is released and freed. */
void sg_conn_abort_all(const sg_conn_deps *d);

#endif
