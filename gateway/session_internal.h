/* SPDX-License-Identifier: Apache-2.0 */
/* The state the session's files share; private to gateway/session*.c.
 *
 *   session.c         the object, the connection table, message dispatch,
 *                     operation contexts, frames out
 *   session_rooms.c   joins, leaves, memberships and their subscriptions
 *   session_relay.c   relays out, deliveries in, receipts
 *   session_resume.c  resumption and the catch-up after a subscriber gap
 *   session_liveness.c the rooms this instance answers for, its heartbeat,
 *                     reaping dead instances, deadlines (grace periods,
 *                     ghosts), re-assertion after Redis came back, key TTLs
 *   session_control.c backend control: kicks and closed rooms reaching
 *                     their holders, revocations (the control channel, the
 *                     handshake check)
 *
 * Ownership: the session owns every struct below. A connection's sconn and
 * memberships live until sg_session_close; a membership slot moves when
 * another one of the same connection is removed, so a pointer to one is
 * good only until the next membership change of that connection. Frames go
 * out through send_frame(), which never frees anything. */
#ifndef SG_SESSION_INTERNAL_H
#define SG_SESSION_INTERNAL_H

#include "sg/session.h"
#include "sg/buf.h"
#include "sg/map.h"
#include "sg/ops.h"
#include "sg/proto.h"
#include "sg/util.h"
#include "sg/wire.h"

#include <stdbool.h>
#include <stdint.h>

/* Relays that arrived for a membership whose resume (or catch-up) reply is
 * still on its way; sent after the replay, those not replayed already. */
typedef struct sg_held {
    struct sg_held *next;
    uint64_t seq;
    size_t len;
    char frame[];
} sg_held;

enum { MEM_SUBSCRIBING = 1, MEM_JOINING, MEM_JOINED, MEM_RESUMING };
enum { CATCHUP_NONE = 0, CATCHUP_WAITING, CATCHUP_SENT };

#define RESUME_TOKEN_LEN 32 /* base64url of 24 random bytes */

/* One room a connection is in (or joining). Idle memory per connection
 * matters at 100k connections: the room id is on the heap at its length. */
typedef struct sg_membership {
    char *room;
    char peer[SG_PEER_LEN + 1];
    char *cid;                /* of a join/resume not sent yet (heap), NULL otherwise */
    char rt[65];              /* hash of the current resume token ("" when off) */
    uint8_t state;            /* MEM_* */
    uint8_t catch_up;         /* CATCHUP_*: fetching relays missed while the subscriber was down */
    bool resume;              /* the pending operation is a resume */
    uint64_t joined_at_ms;
    uint64_t resume_from;     /* lastSeq of the pending resume */
    char rt_old[65];          /* hash of the token a pending resume presented */
    char *fresh_token;        /* the token to hand out in joined/resumed (heap, short-lived) */
    sg_held *held;            /* only while a resume or catch-up reply is on its way */
    uint64_t last_seq;        /* highest relay seq sent to the client (resumption on) */
} sg_membership;

/* A connection as the session sees it. */
typedef struct sg_sconn {
    uint64_t id;
    sg_claims claims;
    char subhash[65];         /* keyed hash of sub: compared in Redis for same-user takeover */
    char user[17];            /* log hash of sub */
    sg_span_ctx span;
    sg_membership *rooms;     /* grown one slot at a time, up to rooms_per_connection */
    uint32_t nrooms, rooms_cap;
    bool ever_joined;
    bool cut;                 /* a send was refused: it is going, write nothing more */
    uint64_t warn_ms, dropped_since_warn; /* rate-limit warnings, at most one a second */
} sg_sconn;

/* A membership this node holds, as re-assertion needs it. */
typedef struct sg_local_member {
    uint64_t conn;
    char peer[SG_PEER_LEN + 1];
    uint64_t joined_at_ms;
} sg_local_member;

/* A room-mate held by another node, as last seen. */
typedef struct sg_remote_member {
    char peer[SG_PEER_LEN + 1];
    char subhash[65]; /* "" when not known */
} sg_remote_member;

/* A room this instance answers for: while it holds members there, watches
 * a deadline there, or waits for a reply that may give it one. Such a room
 * is in signal:node:{<instance>}:rooms, for whoever reaps the instance. */
typedef struct sg_local_room {
    size_t n, cap;
    sg_local_member *m;
    uint32_t watches;      /* deadlines of this room on the session's heap that hold it */
    uint32_t pending;      /* leave/reap replies that may bring a deadline */
    uint64_t renew_ms;     /* when the keys' TTLs were last renewed (monotonic) */
    /* Room-mates held by other nodes: after Redis loses the room they are
     * re-asserted as ghosts, so a member that left meanwhile still ends in
     * peer_left. */
    size_t nremote, remote_cap;
    sg_remote_member *remote;
} sg_local_room;

typedef struct sg_waitlist {
    size_t n, cap;
    uint64_t *conns;
} sg_waitlist;

enum { OP_JOIN = 1, OP_LEAVE, OP_RELAY, OP_REASSERT, OP_RESUME, OP_CATCHUP, OP_NODES, OP_DEAD_ROOMS, OP_REAP,
       OP_EXPIRE, OP_SUB_CHECK, OP_REVOKED_LIST };

/* A deadline (ms, Redis' clock) this instance watches: a member's grace
 * period or a ghost's life. */
typedef struct sg_watch {
    uint64_t until;
    char *room; /* heap */
    char peer[SG_PEER_LEN + 1];
    bool holds; /* keeps the room in the instance's set (a grace period:
                 * if this instance dies, its reaper must find it) */
} sg_watch;

/* The context of one Redis operation. The reply finds its connection by id. */
typedef struct sg_op {
    struct sg_op *next_free;
    uint8_t kind;
    uint8_t mtype;          /* sg_msg_type of a relay */
    bool reply_left;        /* OP_LEAVE answers the client with "left" */
    bool ack;               /* OP_RELAY: the sender asked for a delivery receipt */
    bool silent;            /* OP_REASSERT: after a reconnect */
    bool lost;              /* OP_LEAVE: may start a grace period this instance watches */
    uint64_t until;         /* OP_EXPIRE: the deadline */
    uint64_t conn_id;
    uint64_t t0_us;
    struct sg_op *batch_next; /* OP_RELAY: the next relay of the same call (its reply's next result) */
    sg_span_ctx span, parent; /* when tracing is on */
    char *rooms;            /* OP_REASSERT: the batch's room ids, NUL-separated; OP_DEAD_ROOMS,
                             * OP_REAP: the dead instance (heap) */
    uint32_t nrooms;
    sg_sub_checked done;    /* OP_SUB_CHECK: the handshake waiting (room holds the sub's SHA-1) */
    void *done_ud;
    char room[SG_ROOM_MAX + 1];
    char peer[SG_PEER_LEN + 1];
    char to[SG_PEER_LEN + 1];
    char cid[SG_CID_MAX + 1];
    char reason[16];        /* OP_LEAVE */
} sg_op;

/* A leave whose outcome Redis never told: not sent (Redis away) or not
 * answered (the connection went with it in flight). */
typedef struct sg_unsure_leave {
    uint64_t conn_id;
    char room[SG_ROOM_MAX + 1];
    char peer[SG_PEER_LEN + 1];
    char reason[16];
} sg_unsure_leave;
/* At most this many are kept (about 200 bytes each); beyond, the oldest
 * are dropped and logged: their members stay until this instance is gone. */
#define SG_SESSION_UNSURE_LEAVES_MAX 100000
/* Sent again per tick, so a long list does not arrive in one burst. */
#define SG_SESSION_UNSURE_LEAVES_PER_TICK 1000

/* Relays waiting to go to Redis in one call (session_relay.c): those one
 * connection sends one target within one read of its socket. Empty outside
 * sg_session_read_begin/end; each op is owned here until the call goes, then
 * by the call (the first op's tag). */
#define SG_RELAY_BATCH_BYTES 65536 /* of frames: a bigger one goes alone */
typedef struct sg_relay_batch {
    int n;
    sg_op *op[SG_RELAY_BATCH_MAX];
    size_t off[SG_RELAY_BATCH_MAX], len[SG_RELAY_BATCH_MAX]; /* of each frame in frames */
    char ts[SG_RELAY_BATCH_MAX][24];
    char tp[SG_RELAY_BATCH_MAX][SG_TRACEPARENT_LEN + 1];
    sg_buf frames;
} sg_relay_batch;

struct sg_session {
    const sg_config *cfg;
    sg_log *log;
    sg_metrics *metrics;
    sg_tracer *tracer;
    sg_bus *bus;
    sg_session_io io;
    sg_ops ops;
    sg_map conns;        /* conn id -> sg_sconn */
    sg_map rooms;        /* room id -> sg_local_room */
    sg_map waiters;      /* channel -> sg_waitlist: joins waiting for their subscription */
    size_t renew_cursor; /* bucket of rooms where the incremental TTL renewal goes on */
    uint64_t renew_ms;   /* the last renewal pass (monotonic) */
    uint64_t heartbeat_ms;  /* last heartbeat sent (monotonic) */
    bool heartbeat_ok;   /* one came back: a "reaped" answer means it */
    bool reasserted;     /* a silent re-assert went since the last heartbeat reply */
    sg_watch *watch;     /* min-heap of deadlines, by until */
    size_t nwatch, watch_cap;
    sg_map reaping;      /* dead instance -> outstanding reaps (uintptr_t) */
    sg_op *op_free;
    sg_msg msg;          /* the message being handled (reused: no allocation per message) */
    sg_buf out;          /* frame being built */
    bool reading;        /* inside sg_session_read_begin/end: relays wait in batch */
    sg_relay_batch batch;
    char cid_prefix[24]; /* prefix of server-made correlationIds */
    uint64_t cid_counter;
    sg_map revoked;      /* SHA-1 of a revoked sub -> end (uint64_t ms, heap), as this node heard */
    size_t revoked_pruned; /* entries after the last pruning */
    bool control_sync_due; /* the control subscription came up while commands could not go */
    /* Leaves to send again once Redis answers (session_rooms.c): a ring. */
    sg_unsure_leave *unsure;
    size_t unsure_head, unsure_n, unsure_cap;
    uint64_t unsure_dropped; /* since the last time it was logged */
};

/* session.c */
sg_sconn *sess_conn(const sg_session *s, uint64_t id);
/* Sends out's content (or data) to c; false when c takes no more frames. */
bool send_frame(sg_session *s, sg_sconn *c, const char *data, size_t len);
bool send_out(sg_session *s, sg_sconn *c);
/* A relay out of Redis (published, held or replayed) with its seq put in
 * (sg_wire_relay_seq); seq 0 and other frames go as they are. */
bool send_relay(sg_session *s, sg_sconn *c, uint64_t seq, const char *frame, size_t len);
void send_error(sg_session *s, sg_sconn *c, const char *code, const char *message, const char *cid,
                const char *room);
size_t holder_of(const sg_session *s, uint64_t conn_id, char out[SG_WIRE_HOLDER_MAX]);
sg_op *op_new(sg_session *s, uint8_t kind, uint64_t conn_id);
void op_free(sg_session *s, sg_op *op);
void op_trace(sg_session *s, sg_op *op, const sg_sconn *c);
/* Records an operation's span when its reply (r: its own result) came. */
void op_span_end(sg_session *s, sg_op *op, const redisReply *r);
uint64_t op_tag(const sg_op *op);
/* The members' ids in a script's reply list of {peer, subhash} pairs from
 * index `from` (rooms hold up to 10,000 members: on the heap past a few). */
typedef struct peer_list {
    sg_wire_str stack[16];
    sg_wire_str *v;
    size_t n;
} peer_list;
void peer_list_from(peer_list *pl, const redisReply *list, size_t from);
void peer_list_free(peer_list *pl);
void log_script_error(sg_session *s, const char *script, const redisReply *r);

/* session_rooms.c */
sg_membership *find_room(sg_sconn *c, const char *room);
void handle_join(sg_session *s, sg_sconn *c, const sg_msg *msg);
void handle_leave(sg_session *s, sg_sconn *c, const sg_msg *msg);
void start_membership(sg_session *s, sg_sconn *c, const sg_msg *msg, bool resume);
void fail_membership(sg_session *s, sg_sconn *c, sg_membership *m, const char *code, const char *message);
void release_membership(sg_session *s, sg_sconn *c, sg_membership *m);
void mark_joined(sg_session *s, sg_sconn *c, sg_membership *m);
void issue_leave(sg_session *s, uint64_t conn_id, const char *room, const char *peer, const char *reason,
                 bool reply, const char *cid);
void leave_all(sg_session *s, sg_sconn *c, const char *reason);
/* Sends again (a slice per call) the leaves Redis never answered; Redis must
 * be available. */
void retry_unsure_leaves(sg_session *s);
void on_join_reply(sg_session *s, sg_op *op, redisReply *r);
void on_leave_reply(sg_session *s, sg_op *op, redisReply *r);
void rooms_on_subscribed(sg_session *s, const char *channel, size_t chlen);
/* A fresh resume token into m->fresh_token; its hash into hash. */
void new_resume_token(sg_membership *m, char hash[65]);
/* What joined and resumed carry after their own fields. */
void session_fields(sg_session *s, sg_sconn *c, sg_membership *m, sg_wire_session *w, sg_buf *ice);

/* session_relay.c */
void handle_relay(sg_session *s, sg_sconn *c, const sg_msg *msg, uint64_t arrival_us);
/* Sends the relays waiting in s->batch, if any, in one call. */
void relay_flush(sg_session *s);
void on_relay_reply(sg_session *s, sg_op *op, redisReply *r);
void deliver(sg_session *s, const char *channel, size_t chlen, const char *payload, size_t len);

/* session_resume.c */
void handle_resume(sg_session *s, sg_sconn *c, const sg_msg *msg);
void send_resume(sg_session *s, sg_sconn *c, sg_membership *m);
void on_resume_reply(sg_session *s, sg_op *op, redisReply *r);
void hold(sg_membership *m, uint64_t seq, const char *frame, size_t len);
void drop_held(sg_membership *m);
void flush_held(sg_session *s, sg_sconn *c, sg_membership *m);
void start_catch_ups(sg_session *s);
void catch_up_on_subscribed(sg_session *s, const char *room, const char *peer, size_t plen);
void catch_up_after_move(sg_session *s, const char *room, const char *peer, size_t plen);
void on_catch_up_reply(sg_session *s, sg_op *op, redisReply *r);

/* session_control.c */
void control_init(sg_session *s);
void control_free(sg_session *s);
/* A message or subscription of the control channel (true), or not ours. */
bool control_on_message(sg_session *s, const char *channel, size_t chlen, const char *payload, size_t len);
bool control_on_subscribed(sg_session *s, const char *channel, size_t chlen);
void control_on_redis_up(sg_session *s);
/* An envelope of kind k: the application removed the holder's peer. */
void control_kicked(sg_session *s, sg_sconn *c, sg_membership *m, const char *room, const sg_wire_envelope *e);
void on_sub_check_reply(sg_session *s, sg_op *op, redisReply *r);
void on_revoked_list_reply(sg_session *s, sg_op *op, redisReply *r);

/* session_liveness.c */
void room_index_add(sg_session *s, const char *room, uint64_t conn, const char *peer, uint64_t joined_at_ms);
void room_index_remove(sg_session *s, const char *room, uint64_t conn, const char *peer);
void room_index_free(sg_session *s);
/* A reply that may give this instance a deadline in room is on its way
 * (room_pending), or came (room_settled): the room stays in the instance's
 * set meanwhile. */
void room_pending(sg_session *s, const char *room);
void room_settled(sg_session *s, const char *room);
/* Before a join or resume: the room goes into the instance's set first, so
 * whoever reaps the instance finds it. */
void room_announce(sg_session *s, const char *room);
/* After a join or resume failed: out of the set again unless held. */
void room_unannounce(sg_session *s, const char *room);
void watch_deadline(sg_session *s, const char *room, const char *peer, size_t plen, uint64_t until, bool holds);
void roster_set(sg_session *s, const char *room, const redisReply *list, size_t from);
void roster_event(sg_session *s, const char *room, const sg_wire_envelope *e);
void liveness_tick(sg_session *s);
void liveness_up(sg_session *s);
void reassert(sg_session *s, bool silent);
void on_reassert_reply(sg_session *s, sg_op *op, redisReply *r);
void on_nodes_reply(sg_session *s, sg_op *op, redisReply *r);
void on_dead_rooms_reply(sg_session *s, sg_op *op, redisReply *r);
void on_reap_reply(sg_session *s, sg_op *op, redisReply *r);
void on_expire_reply(sg_session *s, sg_op *op, redisReply *r);

#endif
