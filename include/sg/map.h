/* SPDX-License-Identifier: Apache-2.0 */
/* map: a small chained hash map from byte strings to pointers. Keys are
 * copied; values are the caller's. Used for the connection registry (keyed
 * by the 8 bytes of a connection id) and the subscription table (keyed by
 * channel name). Single-threaded, no iteration invalidation rules beyond
 * "do not insert or delete while iterating". */
#ifndef SG_MAP_H
#define SG_MAP_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

typedef struct sg_map_entry {
    struct sg_map_entry *next;
    uint64_t hash;
    void *value;
    size_t klen;
    char key[]; /* klen bytes + NUL */
} sg_map_entry;

typedef struct sg_map {
    sg_map_entry **buckets;
    size_t nbuckets; /* power of two */
    size_t count;
} sg_map;

void sg_map_init(sg_map *m);
void sg_map_free(sg_map *m); /* frees entries, not values */
void *sg_map_get(const sg_map *m, const void *key, size_t klen);
/* Inserts or replaces; returns the previous value or NULL. */
void *sg_map_put(sg_map *m, const void *key, size_t klen, void *value);
/* Removes; returns the value or NULL. */
void *sg_map_del(sg_map *m, const void *key, size_t klen);

/* Iteration: for (sg_map_entry *e = sg_map_first(m, &i); e; e = sg_map_next(m, &i, e)) */
sg_map_entry *sg_map_first(const sg_map *m, size_t *bucket);
sg_map_entry *sg_map_next(const sg_map *m, size_t *bucket, sg_map_entry *e);

static inline void *sg_map_get_u64(const sg_map *m, uint64_t k) { return sg_map_get(m, &k, sizeof k); }
static inline void *sg_map_put_u64(sg_map *m, uint64_t k, void *v) { return sg_map_put(m, &k, sizeof k, v); }
static inline void *sg_map_del_u64(sg_map *m, uint64_t k) { return sg_map_del(m, &k, sizeof k); }

#endif
