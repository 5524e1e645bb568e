/* SPDX-License-Identifier: Apache-2.0 */
/* redis_tls: the client side of TLS to Redis (rediss:// endpoints). One
 * SSL_CTX is built at start from the SIGNAL_REDIS_TLS_* files and shared by
 * every connection to Redis and the sentinels; each connection gets its own
 * SSL, bound to the host it connects to.
 *
 * Verification is always on, and there is no setting to turn it off: a
 * Redis reached over TLS without checking who answers is a Redis anyone on
 * the path can be, with every room's traffic. */
#ifndef SG_REDIS_TLS_H
#define SG_REDIS_TLS_H

#include <stdbool.h>
#include <stddef.h>

struct ssl_ctx_st;
struct ssl_st;

/* A client context: TLS 1.2 or newer, OpenSSL security level 2, peer
 * verification against ca_file (PEM, one or more CA certificates) or, when
 * ca_file is NULL, the system's default store; with cert_file and key_file
 * (both or neither) a client certificate for servers that ask for one
 * (Redis' tls-auth-clients). Returns NULL with a one-line reason in err
 * naming the file and what is wrong with it. The caller owns the context
 * (SSL_CTX_free). */
struct ssl_ctx_st *sg_redis_tls_ctx_new(const char *ca_file, const char *cert_file, const char *key_file,
                                        char *err, size_t errlen);

/* A new SSL for one connection to host (a name, an IPv4 address, or an
 * IPv6 address without brackets): SNI carries a name (never an address,
 * RFC 6066), and the certificate must match the name (DNS SAN, no partial
 * wildcards) or the address (IP SAN). NULL on failure (out of memory or a
 * host OpenSSL refuses). */
struct ssl_st *sg_redis_tls_ssl_new(struct ssl_ctx_st *ctx, const char *host);

/* Why a TLS connection failed, for the redis.connect_failed log line:
 * "TLS: <reason of ssl_err>", followed by the certificate verification
 * result when verification is what failed, e.g. "TLS: certificate verify
 * failed (unable to get local issuer certificate)". ssl may be NULL;
 * ssl_err is an OpenSSL error code (0: none known). */
void sg_redis_tls_describe(const struct ssl_st *ssl, unsigned long ssl_err, char *out, size_t outlen);

/* host is an IPv4 or IPv6 address literal (not a name to look up). */
bool sg_redis_tls_host_is_ip(const char *host);

#endif
