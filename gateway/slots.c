/* SPDX-License-Identifier: Apache-2.0 */
#include "sg/slots.h"
#include "sg/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint16_t sg_crc16(const char *buf, size_t len)
{
    /* Bitwise CRC16/XMODEM (poly 0x1021, init 0): a few hundred bytes per
     * operation at most, no table needed. */
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((uint8_t)buf[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = crc & 0x8000 ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

uint16_t sg_key_slot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1)
            return sg_crc16(open + 1, (size_t)(close - open - 1)) & (SG_SLOTS - 1);
    }
    return sg_crc16(key, len) & (SG_SLOTS - 1);
}

/* The value of a field in a flat [name, value, name, value...] array. */
static const redisReply *field(const redisReply *r, const char *name)
{
    if (!r || r->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < r->elements; i += 2)
        if (r->element[i]->type == REDIS_REPLY_STRING && strcmp(r->element[i]->str, name) == 0)
            return r->element[i + 1];
    return NULL;
}

static bool str_is(const redisReply *r, const char *s)
{
    return r && r->type == REDIS_REPLY_STRING && strcmp(r->str, s) == 0;
}

/* The online master of a shard's node list, as host and port. */
static bool master_of(const redisReply *nodes, bool tls, const char *asked_from, sg_shard *out)
{
    for (size_t i = 0; nodes && nodes->type == REDIS_REPLY_ARRAY && i < nodes->elements; i++) {
        const redisReply *n = nodes->element[i];
        if (!str_is(field(n, "role"), "master") || str_is(field(n, "health"), "fail"))
            continue;
        const redisReply *host = field(n, "endpoint");
        if (!host || host->type != REDIS_REPLY_STRING || !host->len || strcmp(host->str, "?") == 0)
            host = field(n, "ip");
        const redisReply *port = field(n, tls ? "tls-port" : "port");
        const redisReply *id = field(n, "id");
        if (!host || host->type != REDIS_REPLY_STRING || !port || port->type != REDIS_REPLY_INTEGER ||
            port->integer <= 0 || port->integer > 65535)
            continue;
        const char *name = host->str;
        size_t len = host->len;
        if (len == 0 && asked_from) {
            name = asked_from;
            len = strlen(asked_from);
        }
        if (len == 0 || len >= SG_SLOT_HOST_MAX)
            continue;
        memcpy(out->host, name, len);
        out->host[len] = '\0';
        out->port = (int)port->integer;
        out->id[0] = '\0';
        if (id && id->type == REDIS_REPLY_STRING && id->len < sizeof out->id)
            memcpy(out->id, id->str, id->len + 1);
        return true;
    }
    return false;
}

int sg_slot_map_parse(sg_slot_map *m, const redisReply *shards, bool tls, const char *asked_from, char *err,
                      size_t errlen)
{
    m->nshards = 0;
    for (size_t s = 0; s < SG_SLOTS; s++)
        m->owner[s] = -1;
    if (!shards || shards->type != REDIS_REPLY_ARRAY) {
        snprintf(err, errlen, "CLUSTER SHARDS: not an array");
        return -1;
    }
    for (size_t i = 0; i < shards->elements; i++) {
        const redisReply *sh = shards->element[i];
        const redisReply *slots = field(sh, "slots");
        sg_shard master;
        if (!slots || slots->type != REDIS_REPLY_ARRAY || slots->elements == 0 ||
            !master_of(field(sh, "nodes"), tls, asked_from, &master))
            continue; /* no slots (a spare master) or no master right now */
        if (m->nshards == SG_MAX_SHARDS) {
            snprintf(err, errlen, "CLUSTER SHARDS: more than %d shards", SG_MAX_SHARDS);
            return -1;
        }
        int idx = (int)m->nshards++;
        m->shard[idx] = master;
        for (size_t k = 0; k + 1 < slots->elements; k += 2) {
            const redisReply *a = slots->element[k], *b = slots->element[k + 1];
            if (a->type != REDIS_REPLY_INTEGER || b->type != REDIS_REPLY_INTEGER || a->integer < 0 ||
                b->integer >= SG_SLOTS || a->integer > b->integer)
                continue;
            for (long long s = a->integer; s <= b->integer; s++)
                m->owner[s] = (int16_t)idx;
        }
    }
    return 0;
}

bool sg_slot_map_complete(const sg_slot_map *m)
{
    for (size_t s = 0; s < SG_SLOTS; s++)
        if (m->owner[s] < 0)
            return false;
    return true;
}

bool sg_slot_tag_for(const sg_slot_map *m, int shard, char out[8])
{
    /* Tags "p0".."p99999" cover every slot many times over. */
    for (int i = 0; i < 100000; i++) {
        int n = snprintf(out, 8, "p%d", i);
        if (m->owner[sg_crc16(out, (size_t)n) & (SG_SLOTS - 1)] == shard)
            return true;
    }
    return false;
}

bool sg_redirect_parse(const char *err, size_t len, sg_redirect *out)
{
    char buf[SG_SLOT_HOST_MAX + 64];
    if (len >= sizeof buf)
        return false;
    memcpy(buf, err, len);
    buf[len] = '\0';
    char *save = NULL, *kind = strtok_r(buf, " ", &save), *slot = strtok_r(NULL, " ", &save),
         *addr = strtok_r(NULL, " ", &save);
    if (!kind || !slot || !addr || strtok_r(NULL, " ", &save))
        return false;
    if (strcmp(kind, "MOVED") == 0)
        out->ask = false;
    else if (strcmp(kind, "ASK") == 0)
        out->ask = true;
    else
        return false;
    char *end;
    long sl = strtol(slot, &end, 10);
    if (*end || sl < 0 || sl >= SG_SLOTS)
        return false;
    char *colon = strrchr(addr, ':');
    if (!colon || colon == addr)
        return false;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port <= 0 || port > 65535)
        return false;
    *colon = '\0';
    /* "[::1]" -> "::1" */
    if (addr[0] == '[' && colon[-1] == ']') {
        addr++;
        colon[-1] = '\0';
    }
    if (!sg_strlcpy(out->host, addr, sizeof out->host))
        return false;
    out->slot = (uint16_t)sl;
    out->port = (int)port;
    return true;
}
