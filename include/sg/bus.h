/* SPDX-License-Identifier: Apache-2.0 */
/* bus: the node's side of Redis, in one of three topologies:
 *   - one Redis (SIGNAL_REDIS_URL);
 *   - a master found through Sentinel (SIGNAL_REDIS_SENTINELS), followed on
 *     +switch-master;
 *   - a Redis Cluster (SIGNAL_REDIS_CLUSTER): one link per master, every
 *     command routed to the master of its key's hash slot (slots.h), the slot
 *     map from CLUSTER SHARDS at start and again on MOVED, on a lost link and
 *     on a channel the server unsubscribed (a slot that moved); ASK answered
 *     with ASKING and one retry; a MOVED command sent again to the new owner,
 *     with later commands of its slot held until the old owner answered all
 *     it had, so per-slot (per-room) order holds.
 * Each link is a pipelined command connection and a sharded pub/sub
 * subscriber connection to one master (link.h). The function library is
 * loaded on every link when it comes up, and again when a call finds it gone.
 * The bus keeps the set of channels local peers need, (re)subscribes each on
 * the master of its slot, and tells its owner when Redis is available again
 * after a loss so the owner can re-assert its memberships. It also runs the
 * delivery-path probe, one per link. */
#ifndef SG_BUS_H
#define SG_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <hiredis/hiredis.h>
#include "sg/scripts.h"

/* Reconnect backoff: capped exponential with jitter, at most this long. */
#define SG_BUS_BACKOFF_MAX_MS 5000

/* Commands in flight (a batch of relays counting as its relays, see
 * sg_bus_fcall_weighted) past which client messages are refused (about half a second
 * of Redis work): an overloaded Redis answers late, and a prompt
 * "unavailable" serves the client better than a relay seconds old. Internal
 * work (re-asserts after a reconnect, heartbeats) is never refused. */
#define SG_BUS_MAX_PENDING 8192

/* "room:{" + 128-char room id + "}:buckets" and the NUL, with room to spare. */
#define SG_ROOM_KEY_MAX 160

struct event_base;
typedef struct sg_bus sg_bus;
struct sg_log;
struct sg_metrics;

typedef struct sg_bus_handlers {
    /* available: every link up (and, in a cluster, every slot served) with
     * the functions loaded. `fresh` is true when this follows a loss (state
     * in Redis may be gone). */
    void (*on_available)(void *ud, bool available, bool fresh);
    /* A message on a subscribed channel (not the bus's own probes). */
    void (*on_message)(void *ud, const char *channel, size_t chlen, const char *payload, size_t len);
    /* A channel's subscription is confirmed by Redis. */
    void (*on_subscribed)(void *ud, const char *channel, size_t chlen);
    /* A subscribed channel was dropped by the server (its slot moved): it is
     * subscribed again on the new owner (on_subscribed follows), and what was
     * published meanwhile is to be caught up. */
    void (*on_channel_moved)(void *ud, const char *channel, size_t chlen);
    /* The reply to sg_bus_fcall/sg_bus_command with that tag; NULL when the
     * connection was lost or the command timed out. */
    void (*on_reply)(void *ud, uint64_t tag, redisReply *reply);
    void *ud;
} sg_bus_handlers;

typedef struct sg_bus_config {
    const char *redis_url;      /* redis_url.h: redis:// or rediss:// */
    const char *sentinels;      /* host:port or redis(s):// URLs, comma-separated, or NULL */
    /* For rediss:// endpoints (redis_tls.h): CA file (NULL: the system's
     * store), optional client certificate and key. */
    const char *tls_ca_file, *tls_cert_file, *tls_key_file;
    const char *master_name;
    const char *cluster;        /* seed nodes host:port or URLs, comma-separated, or NULL */
    const char *node_id;
    int64_t timeout_ms;
} sg_bus_config;

sg_bus *sg_bus_new(struct event_base *base, const sg_bus_config *cfg, const sg_bus_handlers *h,
                   struct sg_log *log, struct sg_metrics *metrics);
/* Parses the URL, the sentinel or seed list, and builds the TLS context
 * they need; returns -1 with err set when any of it is unusable. */
int sg_bus_start(sg_bus *b, char *err, size_t errlen);
void sg_bus_free(sg_bus *b);
bool sg_bus_available(const sg_bus *b);
bool sg_bus_clustered(const sg_bus *b);
/* Commands are still unanswered. */
bool sg_bus_busy(const sg_bus *b);
/* SG_BUS_MAX_PENDING commands or more (by weight) await their replies,
 * counting `more` about to be sent. */
bool sg_bus_overloaded(const sg_bus *b, unsigned more);

/* FCALL of one of the library's functions (scripts.h) with nkeys keys,
 * then argv (lens NULL: NUL-terminated). Routed by keys[0] in a cluster
 * (every key of a call shares its slot). Returns -1 when Redis is
 * unavailable (on_reply not called); otherwise on_reply runs exactly once
 * for tag. */
int sg_bus_fcall(sg_bus *b, sg_fn fn, int nkeys, const char *const *keys, int argc, const char **argv,
                 const size_t *lens, uint64_t tag);
/* The same for a call that does the work of `weight` client messages (a
 * batch of relays): it counts that many towards SG_BUS_MAX_PENDING. */
int sg_bus_fcall_weighted(sg_bus *b, sg_fn fn, int nkeys, const char *const *keys, int argc, const char **argv,
                          const size_t *lens, uint64_t tag, unsigned weight);
/* A plain command whose key is argv[1] (SADD, SREM, SMEMBERS, ZREM, DEL,
 * PEXPIRE, SPUBLISH...); the same contract. tag 0: the reply is dropped. */
int sg_bus_command(sg_bus *b, int argc, const char **argv, const size_t *lens, uint64_t tag);

/* Reference-counted channel subscriptions (sharded). Returns true when the
 * channel is already confirmed (no on_subscribed will follow for this call). */
bool sg_bus_subscribe(sg_bus *b, const char *channel);
void sg_bus_unsubscribe(sg_bus *b, const char *channel);
bool sg_bus_subscribed(const sg_bus *b, const char *channel);

/* The delivery-path probe: each link publishes to a channel of its own shard
 * and expects it back on its subscriber connection. sg_bus_probe sends one
 * round; sg_bus_probe_age is the age in ms of the stalest link's last
 * answer (-1: some link never answered); sg_bus_probe_renew renews the
 * subscriber connection of every link whose last answer is older than
 * stale_ms. */
void sg_bus_probe(sg_bus *b);
int64_t sg_bus_probe_age(const sg_bus *b);
void sg_bus_probe_renew(sg_bus *b, int64_t stale_ms);
uint64_t sg_bus_probes_sent(const sg_bus *b);
uint64_t sg_bus_probes_received(const sg_bus *b);

#endif
