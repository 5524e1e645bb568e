/* SPDX-License-Identifier: Apache-2.0 */
/* slots: Redis Cluster's key space, pure (no I/O). CRC16 slot hashing with
 * hash tags, the slot map parsed from a CLUSTER SHARDS reply, and MOVED/ASK
 * redirections parsed from error replies. Every room's keys and channels
 * share the room's hash tag ({R}), so a room lives in one slot. */
#ifndef SG_SLOTS_H
#define SG_SLOTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <hiredis/hiredis.h>

#define SG_SLOTS 16384
#define SG_SLOT_HOST_MAX 256
#define SG_MAX_SHARDS 256

/* CRC16/XMODEM, the cluster's hash. */
uint16_t sg_crc16(const char *buf, size_t len);
/* The slot of a key: of its hash tag (the bytes between the first '{' and
 * the next '}', when that is not empty), else of the whole key. */
uint16_t sg_key_slot(const char *key, size_t len);

/* A master and the slots it serves. */
typedef struct sg_shard {
    char id[41];
    char host[SG_SLOT_HOST_MAX];
    int port;
} sg_shard;

typedef struct sg_slot_map {
    size_t nshards;
    sg_shard shard[SG_MAX_SHARDS];
    int16_t owner[SG_SLOTS]; /* shard index, -1: no master serves it (a failover under way) */
} sg_slot_map;

/* Fills m from a CLUSTER SHARDS reply (Redis >= 7.0). A shard's address is
 * its master's "endpoint" (or "ip"), with "tls-port" when tls is true, else
 * "port". A node that does not know its own address (a one-node cluster
 * never met a peer: both are empty) is asked_from, the host the reply came
 * from, as Redis says to do (NULL: such a node is unusable). Shards without
 * a usable online master leave their slots at -1. Returns 0, or -1 with err
 * set when the reply is not a shard list. */
int sg_slot_map_parse(sg_slot_map *m, const redisReply *shards, bool tls, const char *asked_from, char *err,
                      size_t errlen);

/* The shard serving slot, or -1. */
static inline int sg_slot_owner(const sg_slot_map *m, uint16_t slot)
{
    return slot < SG_SLOTS ? m->owner[slot] : -1;
}

/* Every slot has a master. */
bool sg_slot_map_complete(const sg_slot_map *m);

/* A short hash tag ("p0", "p1", ...) whose slot the shard serves, written to
 * out (at most 8 bytes with the NUL): for a channel that must live on that
 * shard (the delivery probe). False when the shard serves no slot. */
bool sg_slot_tag_for(const sg_slot_map *m, int shard, char out[8]);

/* "MOVED <slot> <host>:<port>" or "ASK <slot> <host>:<port>" (hiredis gives
 * the error reply without the leading '-'). */
typedef struct sg_redirect {
    bool ask;
    uint16_t slot;
    char host[SG_SLOT_HOST_MAX];
    int port;
} sg_redirect;
bool sg_redirect_parse(const char *err, size_t len, sg_redirect *out);

#endif
