/* SPDX-License-Identifier: Apache-2.0 */
/* A session with a scripted bus and recording connections: the common
 * ground of tests/unit/test_session.c and tests/fuzz/fuzz_session.c.
 * Frames the session sends are kept per connection; a connection can be
 * told to refuse frames (as one over its output cap does). */
#ifndef SG_SESSION_WORLD_H
#define SG_SESSION_WORLD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fake_bus.h"
#include "sg/config.h"
#include "sg/log.h"
#include "sg/metrics.h"
#include "sg/session.h"

#define WORLD_MAX_CONNS 16
#define WORLD_MAX_FRAMES 512

typedef struct world_conn {
    bool open;
    int refuse_after;          /* frames accepted before sends fail; -1: never */
    size_t nframes;
    char *frames[WORLD_MAX_FRAMES];
    size_t sends_refused;
    uint16_t close_code;       /* the session asked to close it with this code (0: never) */
    char close_reason[64];
} world_conn;

typedef struct world {
    sg_config cfg;
    sg_log *log;
    sg_metrics metrics;
    sg_bus *bus;
    sg_session *s;
    world_conn conns[WORLD_MAX_CONNS + 1]; /* by id; 0 unused */
    size_t sends_to_unknown;
    size_t closes_of_unknown;  /* io.close for a connection that is not open */
} world;

/* env: extra NAME=value settings (NULL-terminated), over the defaults of
 * a test node "n1" with resumption on. */
void world_init(world *w, const char *const *env);
void world_free(world *w);

/* Opens connection id for user sub; rooms is the token's rooms claim ("*"
 * for any room, NULL for none). */
void world_open(world *w, uint64_t id, const char *sub, const char *rooms);
void world_text(world *w, uint64_t id, const char *json);
/* The latest frame of id (NULL when none), and how many it got. */
const char *world_last(const world *w, uint64_t id);
size_t world_count(const world *w, uint64_t id);
/* The frame n of id, from the first (NULL past the end). */
const char *world_frame(const world *w, uint64_t id, size_t n);
/* Answers the oldest pending call with a RESP reply (NULL: a lost
 * connection); returns the call, which the caller frees. */
fake_call *world_answer(world *w, const char *resp);
/* Answers a popped call as a lost connection would (NULL) and frees it. */
void world_lose(world *w, fake_call *c);
/* Confirms every pending subscription. */
void world_confirm_all(world *w);
/* A channel message for connection id of this node: an envelope around frame. */
void world_deliver(world *w, const char *room, const char *peer, uint64_t id, char kind, uint64_t seq,
                   const char *frame);
/* Several relays for connection id as one b envelope (lua/relay.lua),
 * numbered from first_seq on; frames NULL-terminated. */
void world_deliver_batch(world *w, const char *room, const char *peer, uint64_t id, uint64_t first_seq,
                         const char *const *frames);
/* A channel message for connection id with meta in the traceparent field
 * (kind k carries the action there). */
void world_deliver_meta(world *w, const char *room, const char *peer, uint64_t id, char kind, const char *meta,
                        const char *frame);
/* A message on the control channel (lua/control.lua's revocations). */
void world_control(world *w, const char *payload);
/* What conn.c's deferred pass does for connections the session asked to
 * close: tells the session they went. Returns how many. */
size_t world_reap_closed(world *w);

#endif
