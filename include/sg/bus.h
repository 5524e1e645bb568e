/* SPDX-License-Identifier: Apache-2.0 */
/* bus: the node's side of Redis. One command connection (pipelined function
 * calls) and one subscriber connection (the per-peer channels of local
 * peers), reconnected with capped exponential backoff and jitter, optionally
 * through Sentinel. The function library is loaded on every (re)connect. The bus keeps
 * the set of channels local peers need, re-subscribes them after a
 * reconnect, and tells its owner when the pair is available again so the
 * owner can re-assert its memberships. */
#ifndef SG_BUS_H
#define SG_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <hiredis/hiredis.h>
#include "sg/scripts.h"

/* Reconnect backoff: capped exponential with jitter, at most this long. */
#define SG_BUS_BACKOFF_MAX_MS 5000

/* Commands in flight past which client messages are refused (about half a second
 * of Redis work): an overloaded Redis answers late, and a prompt
 * "unavailable" serves the client better than a relay seconds old. Internal
 * work (re-asserts after a reconnect, lease refreshes) is never refused. */
#define SG_BUS_MAX_PENDING 8192

/* "room:{" + 128-char room id + "}:buckets" and the NUL, with room to spare. */
#define SG_ROOM_KEY_MAX 160

struct event_base;
typedef struct sg_bus sg_bus;
struct sg_log;
struct sg_metrics;

typedef struct sg_bus_handlers {
    /* available: both connections up and scripts loaded. `fresh` is true
     * when this follows a reconnect (state in Redis may be gone). */
    void (*on_available)(void *ud, bool available, bool fresh);
    /* A message on a subscribed channel. */
    void (*on_message)(void *ud, const char *channel, size_t chlen, const char *payload, size_t len);
    /* A channel's subscription is confirmed by Redis. */
    void (*on_subscribed)(void *ud, const char *channel, size_t chlen);
    /* The reply to sg_bus_fcall/sg_bus_command with that tag; NULL when the
     * connection was lost or the command timed out. */
    void (*on_reply)(void *ud, uint64_t tag, redisReply *reply);
    void *ud;
} sg_bus_handlers;

typedef struct sg_bus_config {
    const char *redis_url;      /* redis://[[user]:pass@]host[:port][/db] */
    const char *sentinels;      /* host:port,... or NULL */
    const char *master_name;
    const char *node_id;
    int64_t timeout_ms;
} sg_bus_config;

sg_bus *sg_bus_new(struct event_base *base, const sg_bus_config *cfg, const sg_bus_handlers *h,
                   struct sg_log *log, struct sg_metrics *metrics);
/* Parses the URL; returns -1 with err set when it is unusable. */
int sg_bus_start(sg_bus *b, char *err, size_t errlen);
void sg_bus_free(sg_bus *b);
bool sg_bus_available(const sg_bus *b);
/* Commands are still unanswered on the command connection. */
bool sg_bus_busy(const sg_bus *b);
/* SG_BUS_MAX_PENDING commands or more await their replies. */
bool sg_bus_overloaded(const sg_bus *b);

/* FCALL of one of the library's functions (scripts.h) with nkeys keys,
 * then argv (lens NULL: NUL-terminated). Returns -1 when Redis is
 * unavailable (on_reply not called); otherwise on_reply runs exactly once
 * for tag. The library is loaded on every (re)connect, and again when a
 * call finds it gone. */
int sg_bus_fcall(sg_bus *b, sg_fn fn, int nkeys, const char *const *keys, int argc, const char **argv,
                 const size_t *lens, uint64_t tag);

/* Reference-counted channel subscriptions. Returns true when the channel is
 * already confirmed (no on_subscribed will follow for this call). */
bool sg_bus_subscribe(sg_bus *b, const char *channel);
void sg_bus_unsubscribe(sg_bus *b, const char *channel);
bool sg_bus_subscribed(const sg_bus *b, const char *channel);

/* Drops and remakes both connections (a wedged subscription). */
void sg_bus_renew_subscriber(sg_bus *b);

/* Sends a raw command on the command connection (for probes, PUBLISH). */
int sg_bus_command(sg_bus *b, int argc, const char **argv, const size_t *lens, uint64_t tag);

#endif
