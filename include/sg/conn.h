/* SPDX-License-Identifier: Apache-2.0 */
/* conn: one client connection's transport: the bounded HTTP upgrade, the
 * RFC 6455 frame layer, heartbeats, local rate limits and the output bound.
 * It is the only user of the connection's bufferevent. Messages that pass
 * go to session.h, which writes back through sg_conn_send_text.
 *
 * Nothing here frees a connection, or tells the session it went, inside a
 * call that may come from the session: sg_conn_send_text over the output
 * bound and sg_conn_close only mark the connection; its memberships are
 * released (sg_session_close) and the struct freed by the server's deferred
 * pass, at the top of the event loop. */
#ifndef SG_CONN_H
#define SG_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sg/auth.h"
#include "sg/proto.h"
#include "sg/trace.h"
#include "sg/ws_frame.h"

struct bufferevent;
struct event;
struct sg_server;
struct sg_conn_held;

enum { SG_CONN_HANDSHAKE = 0, SG_CONN_HTTP_CLOSING, SG_CONN_OPEN, SG_CONN_CLOSING, SG_CONN_DEAD };

typedef struct sg_bucket {
    double tokens;
    uint64_t last_ms;
} sg_bucket;

typedef struct sg_conn {
    uint64_t id;
    struct sg_server *srv;
    struct sg_conn *next_dead;
    struct bufferevent *bev;
    /* The connection's one timer, on the server's wheel (conn.c) rather than
     * a libevent timer each: no event allocation per connection, and O(1)
     * re-arming for the heartbeat that every idle connection runs. */
    struct sg_conn *wnext, **wpprev; /* wpprev NULL: not armed */
    uint64_t wdue_ms;
    uint8_t state;
    uint8_t timer_phase;   /* what the timer is waiting for */
    bool tls;
    bool close_rcvd;       /* the client's close frame arrived */
    bool lost;             /* TCP dropped or heartbeat reaped: resumable */
    bool ping_outstanding;
    bool drop_message;     /* a frame of the message being received was over the local rate limit */
    bool drop_control;     /* the control frame being received is over it */
    bool half_closed;      /* our side ended (FIN sent) in a lingering close */
    bool admitted;         /* counted against the connection caps (not refused at accept) */
    uint16_t close_code;   /* the code we sent or received, for logs and leave reasons */
    const char *leave_reason; /* peer_left reason when the connection goes */
    sg_ws_parser ws;
    uint32_t head_scanned; /* bytes of the upgrade head already scanned (sg_http_scan_head) */
    uint32_t linger_bytes; /* input discarded since our close (conn.c's LINGER_MAX_BYTES) */
    uint64_t opened_ms, last_rx_ms, ping_sent_ms;
    sg_bucket frames, bytes;
    uint64_t over_since_ms, last_drop_ms;
    bool in_session;       /* the session knows it: sg_session_close is still owed */
    bool deferred;         /* on the server's deferred list */
    char user[17];         /* keyed hash of sub for logs and spans */
    char ip[46];           /* INET6_ADDRSTRLEN; for the per-IP cap only; never logged */
    /* A verified handshake waiting for the revocation check (PROTOCOL.md
     * §9): its claims and its 101 response, until Redis answers. */
    struct sg_conn_held *held;
    sg_span_ctx trace_parent; /* from the handshake's traceparent header, if any */
    sg_span_ctx span;         /* the connection's span (valid when tracing is on) */
    uint64_t opened_us;       /* wall clock, for spans */
} sg_conn;

/* Accepts a socket (plain or TLS per server config). */
void sg_conn_accept(struct sg_server *s, int fd, const char *ip);

/* Sends one text message. Returns false when the connection takes no more
 * frames: it is closing, or the output bound would be exceeded (then it is
 * cut: marked dead, released by the deferred pass). */
bool sg_conn_send_text(sg_conn *c, const char *data, size_t len);
/* Sends a close frame with code and reason, then waits for the client's.
 * The session hears of it from the deferred pass. */
void sg_conn_close(sg_conn *c, uint16_t code, const char *reason);
/* sg_conn_close by id (the session's io.close, for a revoked user's
 * connections); server is the sg_server. A connection that is gone or not
 * open is left alone. */
void sg_conn_close_by_id(void *server, uint64_t conn_id, uint16_t code, const char *reason);
/* Ends the connection now (no close handshake), e.g. a dead peer. The
 * struct stays valid until the deferred pass. */
void sg_conn_abort(sg_conn *c, const char *why);
/* The deferred pass's work for one connection: tells the session it went
 * (once), and frees the struct when it is dead. Returns true when freed. */
bool sg_conn_release(sg_conn *c);
/* Frees the server's timer wheel, once every connection is freed. */
void sg_conn_wheel_free(struct sg_server *s);

#endif
