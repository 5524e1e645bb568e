/* SPDX-License-Identifier: Apache-2.0 */
/* log: one JSON object per line on stdout (docs/protocol.md §8).
 *
 * Lines are built in a reusable buffer and queued; stdout is non-blocking and
 * drained by the event loop, so a slow log consumer never stalls relays. When
 * the queue passes its cap, lines are dropped and counted (the next line that
 * fits carries "dropped"). User IDs are logged only through sg_log_user,
 * which writes a truncated HMAC-SHA256 under the node's log hash key. */
#ifndef SG_LOG_H
#define SG_LOG_H

#include <stdint.h>
#include <stddef.h>
#include <stdbool.h>

struct event_base;

enum { SG_LOG_DEBUG = 0, SG_LOG_INFO, SG_LOG_WARN, SG_LOG_ERROR };

typedef struct sg_log sg_log;

sg_log *sg_log_new(const char *node, int min_level, const char *hash_key);
/* From now on, stdout is drained by the loop instead of written at once. */
void sg_log_attach(sg_log *l, struct event_base *base);
/* Writes whatever is queued, blocking (used at exit). */
void sg_log_flush(sg_log *l);
void sg_log_free(sg_log *l);
uint64_t sg_log_dropped(const sg_log *l);

/* Building a line: begin returns false when the level is filtered out, in
 * which case the other calls must not be made (use the SG_LOG macro).
 * Keys are literals from the code; string values are JSON-escaped. */
bool sg_log_begin(sg_log *l, int level, const char *event);
void sg_log_str(sg_log *l, const char *key, const char *val);
void sg_log_strn(sg_log *l, const char *key, const char *val, size_t n);
void sg_log_int(sg_log *l, const char *key, int64_t val);
void sg_log_dbl(sg_log *l, const char *key, double val);
/* The keyed hash of a user ID (sub), 16 hex chars. */
void sg_log_user(sg_log *l, const char *key, const char *sub);
void sg_log_end(sg_log *l);

/* Over a rate limit, a client hears of it (and the log says so) at most
 * this often; drops in between are counted into the next warning. */
#define SG_WARN_INTERVAL_MS 1000

/* The one "ratelimit.drop" line, for the local guard (room and type NULL)
 * and the Redis-held buckets alike. */
void sg_log_ratelimit_drop(sg_log *l, uint64_t conn, const char *scope, const char *room, const char *type,
                           uint64_t dropped);

/* One line {"event":event,"msg":msg[,"suppressed":n]} for a message from a
 * library's own log (libevent's log callback): it never calls into the event
 * loop, and drops the message when one of our lines is being built. */
void sg_log_foreign(sg_log *l, int level, const char *event, const char *msg, uint64_t suppressed);

/* Computes the keyed hash of sub into out (17 bytes). */
void sg_log_hash(const sg_log *l, const char *sub, char out[17]);

#endif
