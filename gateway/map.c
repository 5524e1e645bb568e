/* SPDX-License-Identifier: Apache-2.0 */
#include "sg/map.h"
#include "sg/util.h"

#include <stdlib.h>
#include <string.h>

/* FNV-1a with a final avalanche: keys are short (ids, channel names) and
 * not attacker-chosen in a way that matters (channel names are built from
 * validated ids; connection ids are ours). */
static uint64_t hash_bytes(const void *key, size_t n)
{
    const unsigned char *p = key;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

void sg_map_init(sg_map *m)
{
    m->nbuckets = 16;
    m->buckets = sg_xcalloc(m->nbuckets, sizeof *m->buckets);
    m->count = 0;
}

void sg_map_free(sg_map *m)
{
    for (size_t i = 0; i < m->nbuckets; i++) {
        sg_map_entry *e = m->buckets[i];
        while (e) {
            sg_map_entry *n = e->next;
            free(e);
            e = n;
        }
    }
    free(m->buckets);
    m->buckets = NULL;
    m->nbuckets = 0;
    m->count = 0;
}

static sg_map_entry **find(const sg_map *m, const void *key, size_t klen, uint64_t h)
{
    sg_map_entry **pp = &m->buckets[h & (m->nbuckets - 1)];
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->hash == h && (*pp)->klen == klen && memcmp((*pp)->key, key, klen) == 0)
            return pp;
    return pp;
}

static void grow(sg_map *m)
{
    size_t nb = m->nbuckets * 2;
    sg_map_entry **b = sg_xcalloc(nb, sizeof *b);
    for (size_t i = 0; i < m->nbuckets; i++) {
        sg_map_entry *e = m->buckets[i];
        while (e) {
            sg_map_entry *n = e->next;
            size_t j = e->hash & (nb - 1);
            e->next = b[j];
            b[j] = e;
            e = n;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = nb;
}

void *sg_map_get(const sg_map *m, const void *key, size_t klen)
{
    sg_map_entry *e = *find(m, key, klen, hash_bytes(key, klen));
    return e ? e->value : NULL;
}

void *sg_map_put(sg_map *m, const void *key, size_t klen, void *value)
{
    uint64_t h = hash_bytes(key, klen);
    sg_map_entry **pp = find(m, key, klen, h);
    if (*pp) {
        void *old = (*pp)->value;
        (*pp)->value = value;
        return old;
    }
    sg_map_entry *e = sg_xmalloc(sizeof *e + klen + 1);
    e->next = NULL;
    e->hash = h;
    e->value = value;
    e->klen = klen;
    memcpy(e->key, key, klen);
    e->key[klen] = '\0';
    *pp = e;
    if (++m->count > m->nbuckets)
        grow(m);
    return NULL;
}

void *sg_map_del(sg_map *m, const void *key, size_t klen)
{
    sg_map_entry **pp = find(m, key, klen, hash_bytes(key, klen));
    sg_map_entry *e = *pp;
    if (!e)
        return NULL;
    *pp = e->next;
    void *v = e->value;
    free(e);
    m->count--;
    return v;
}

sg_map_entry *sg_map_first(const sg_map *m, size_t *bucket)
{
    for (*bucket = 0; *bucket < m->nbuckets; (*bucket)++)
        if (m->buckets[*bucket])
            return m->buckets[*bucket];
    return NULL;
}

sg_map_entry *sg_map_next(const sg_map *m, size_t *bucket, sg_map_entry *e)
{
    if (e->next)
        return e->next;
    for ((*bucket)++; *bucket < m->nbuckets; (*bucket)++)
        if (m->buckets[*bucket])
            return m->buckets[*bucket];
    return NULL;
}
