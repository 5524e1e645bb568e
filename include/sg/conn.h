/* conn: one client connection's transport: the bounded HTTP upgrade, the
 * RFC 6455 frame layer, heartbeats, local rate limits and the output bound.
 * It is the only user of the connection's bufferevent. Messages that pass
 * go to session.h; session.h writes back through sg_conn_send_text. */
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

enum { SG_CONN_HANDSHAKE = 0, SG_CONN_HTTP_CLOSING, SG_CONN_OPEN, SG_CONN_CLOSING, SG_CONN_DEAD };

enum { SG_MEM_SUBSCRIBING = 1, SG_MEM_JOINING, SG_MEM_JOINED, SG_MEM_RESUMING };
enum { SG_CATCHUP_NONE = 0, SG_CATCHUP_WAITING, SG_CATCHUP_SENT };

/* Relays that arrived for a membership whose resume (or catch-up) reply is
 * still on its way; sent after the replay, those not replayed already. */
typedef struct sg_held {
    struct sg_held *next;
    uint64_t seq;
    size_t len;
    char frame[];
} sg_held;

/* One room this connection is in (or joining). */
typedef struct sg_membership {
    char *room;               /* heap, exact length: idle memory per connection matters */
    char peer[SG_PEER_LEN + 1];
    char *cid;                /* of a join/resume not sent yet (heap), NULL otherwise */
    char rt[65];              /* hash of the current resume token ("" when off) */
    uint8_t state;
    bool resume;              /* the pending operation is a resume */
    uint64_t joined_at_ms;
    uint64_t resume_from;     /* lastSeq of the pending resume */
    char *resume_token;       /* the token of a pending resume (heap, short-lived) */
    sg_held *held;            /* short list: only while a resume or catch-up reply is on its way */
    uint64_t last_seq;        /* highest relay seq sent to the client (resumption on) */
    uint8_t catch_up;         /* SG_CATCHUP_*: fetching relays missed while the subscriber was down */
} sg_membership;

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
    uint32_t linger_bytes; /* input discarded since our close (conn.c's LINGER_MAX_BYTES) */
    uint64_t opened_ms, last_rx_ms, ping_sent_ms;
    sg_bucket frames, bytes;
    uint64_t warn_ms, over_since_ms, last_drop_ms;
    uint64_t dropped_since_warn;
    /* identity from the token */
    sg_claims claims;
    char subhash[65];      /* SHA-256 of sub: compared in Redis for same-user takeover */
    char user[17];         /* keyed hash of sub for logs */
    char ip[46];           /* INET6_ADDRSTRLEN; for the per-IP cap only; never logged */
    sg_span_ctx trace_parent; /* from the handshake's traceparent header, if any */
    sg_span_ctx span;         /* the connection's span (valid when tracing is on) */
    uint64_t opened_us;       /* wall clock, for spans */
    sg_membership *rooms;  /* grown one slot at a time, up to rooms_per_connection */
    uint32_t nrooms, rooms_cap;
    bool ever_joined;
} sg_conn;

/* Accepts a socket (plain or TLS per server config). */
void sg_conn_accept(struct sg_server *s, int fd, const char *ip);

/* Sends one text message. Returns false (and closes the connection) when the
 * output bound would be exceeded. */
bool sg_conn_send_text(sg_conn *c, const char *data, size_t len);
/* Sends a close frame with code and reason, then waits for the client's. */
void sg_conn_close(sg_conn *c, uint16_t code, const char *reason);
/* Ends the connection now (no close handshake), e.g. a dead peer. */
void sg_conn_abort(sg_conn *c, const char *why);
/* Frees the struct (called by the server's deferred free). */
void sg_conn_free(sg_conn *c);
/* Frees the server's timer wheel, once every connection is freed. */
void sg_conn_wheel_free(struct sg_server *s);

#endif
