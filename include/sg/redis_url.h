/* SPDX-License-Identifier: Apache-2.0 */
/* redis_url: where and how to reach one Redis server (or sentinel, or
 * cluster seed), parsed from what an operator wrote. Pure: no I/O, no
 * resolver; every input is treated as hostile (bounded, never read past
 * len, never echoed back: an error message names what is wrong, not the
 * text, which may hold a password).
 *
 * Accepted forms (SIGNAL_REDIS_URL, and each entry of SIGNAL_REDIS_SENTINELS
 * and SIGNAL_REDIS_CLUSTER):
 *
 *   redis://[[user]:password@]host[:port][/db]    plain TCP
 *   rediss://[[user]:password@]host[:port][/db]   TLS
 *   host:port                                     plain, no credentials
 *                                                 (only with SG_REDIS_BARE)
 *
 * - The scheme is matched without regard to case. Only printable ASCII is
 *   accepted (no spaces, no control characters: a stray newline from a
 *   secret file is an error, not part of a password).
 * - Credentials are everything before the last '@'. The user name ends at
 *   the first ':'; the password is the rest (it may hold ':' and '@').
 *   Both are percent-decoded (%40 is '@', %2C is ',' — needed in a
 *   comma-separated list); a malformed escape or a decoded NUL is an error.
 *   An empty user name means Redis' default user ("AUTH password"); a
 *   given one means an ACL user ("AUTH user password"). The password must
 *   not be empty; "user@" without ':' is refused.
 * - host is a name of [A-Za-z0-9.-_], an IPv4 address, or an IPv6 address
 *   in brackets ("[::1]", stored without them; no zone ids).
 * - port: 1..65535, default SG_REDIS_DEFAULT_PORT in a URL; required in
 *   the bare form. db: 0..SG_REDIS_DB_MAX, default 0; "/" alone is 0.
 *   With SG_REDIS_NO_DB (sentinels, cluster seeds) a database other than
 *   0 is refused.
 * - No query string, fragment or path beyond the database number. */
#ifndef SG_REDIS_URL_H
#define SG_REDIS_URL_H

#include <stdbool.h>
#include <stddef.h>

#define SG_REDIS_INPUT_MAX 2048 /* one URL or list entry as written */
#define SG_REDIS_HOST_MAX 253   /* the longest DNS name */
#define SG_REDIS_USER_MAX 128   /* decoded bytes */
#define SG_REDIS_PASS_MAX 512   /* decoded bytes */
#define SG_REDIS_DB_MAX 1000
#define SG_REDIS_LIST_MAX 64    /* entries in a sentinel or seed list */
#define SG_REDIS_DEFAULT_PORT 6379

/* Flags of the parse functions. */
#define SG_REDIS_BARE 1u  /* also accept "host:port" (sentinel and seed lists) */
#define SG_REDIS_NO_DB 2u /* a database number other than 0 is an error */

typedef struct sg_redis_endpoint {
    bool tls;                         /* rediss:// */
    bool auth;                        /* credentials given: send AUTH first */
    int port;
    int db;
    char host[SG_REDIS_HOST_MAX + 1]; /* IPv6 without its brackets */
    char user[SG_REDIS_USER_MAX + 1]; /* "" with auth: the default user */
    char pass[SG_REDIS_PASS_MAX + 1];
} sg_redis_endpoint;

/* Parses s[0..len) (need not be NUL-terminated) into *out. Returns 0, or -1
 * with a one-line reason in err (never the input) and *out zeroed. */
int sg_redis_endpoint_parse(const char *s, size_t len, unsigned flags, sg_redis_endpoint *out,
                            char *err, size_t errlen);

/* A comma-separated list of endpoints (spaces and tabs around an entry are
 * ignored). At most SG_REDIS_LIST_MAX entries; none may be empty. On
 * success *out is a new array of *count entries (free it with
 * sg_redis_list_free). Returns -1 with "entry N: reason" in err and
 * *out = NULL otherwise. */
int sg_redis_list_parse(const char *list, unsigned flags, sg_redis_endpoint **out, size_t *count,
                        char *err, size_t errlen);
/* Wipes the credentials and frees; NULL is fine. */
void sg_redis_list_free(sg_redis_endpoint *eps, size_t count);

/* Where Redis is, as the settings say (SIGNAL_REDIS_URL, _SENTINELS,
 * _CLUSTER), parsed alike by the configuration check, the server's bus and
 * the control subcommands. */
typedef struct sg_redis_targets {
    sg_redis_endpoint url;        /* not used in cluster mode */
    sg_redis_endpoint *sentinels; /* each with its own scheme and credentials */
    sg_redis_endpoint *seeds;     /* cluster mode when nseeds > 0 */
    size_t nsentinels, nseeds;
} sg_redis_targets;

/* url is required; sentinels and seeds may be NULL. Every seed must use the
 * same scheme (the masters a cluster names are reached as the seeds were).
 * Returns 0, or -1 with "<SETTING>: reason" in err and *t empty. */
int sg_redis_targets_parse(sg_redis_targets *t, const char *url, const char *sentinels, const char *seeds,
                           char *err, size_t errlen);
/* An endpoint in use is rediss:// (in cluster mode the seeds decide). */
bool sg_redis_targets_tls(const sg_redis_targets *t);
/* Wipes the credentials and frees; an empty *t is fine. */
void sg_redis_targets_free(sg_redis_targets *t);

#endif
