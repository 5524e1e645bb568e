/* SPDX-License-Identifier: Apache-2.0 */
/* redis_sync: one blocking connection to one Redis endpoint, for the
 * one-shot command-line tools (the control subcommands), which make a call
 * or two and exit and have no event loop to share. Plain TCP or TLS
 * (redis_tls.h, verification always on), AUTH with the endpoint's
 * credentials, SELECT. Every step is bounded by the timeout; replies are
 * parsed by hiredis' reader and capped in size. */
#ifndef SG_REDIS_SYNC_H
#define SG_REDIS_SYNC_H

#include <stddef.h>
#include <stdint.h>
#include <hiredis/hiredis.h>

#include "sg/redis_url.h"

struct ssl_ctx_st;
typedef struct sg_redis_sync sg_redis_sync;

#define SG_REDIS_SYNC_REPLY_MAX (1u << 20) /* bytes of one reply */

/* Connects to ep (over TLS with tls when ep->tls: tls must then be set),
 * sends AUTH when ep has credentials and SELECT db when db > 0. NULL with
 * "cannot connect to host:port: why" (or the AUTH/SELECT error) in err. */
sg_redis_sync *sg_redis_sync_connect(const sg_redis_endpoint *ep, int db, struct ssl_ctx_st *tls,
                                     int64_t timeout_ms, char *err, size_t errlen);
/* One command (lens NULL: NUL-terminated arguments); the reply, which the
 * caller frees (freeReplyObject), or NULL with err when the connection
 * failed: it is unusable then. An error reply is a reply. */
redisReply *sg_redis_sync_command(sg_redis_sync *c, int argc, const char *const *argv, const size_t *lens,
                                  char *err, size_t errlen);
void sg_redis_sync_free(sg_redis_sync *c);

#endif
