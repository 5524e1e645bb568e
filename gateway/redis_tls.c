/* SPDX-License-Identifier: Apache-2.0 */
#include "sg/redis_tls.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* The reason of the most recent OpenSSL error (the queue is emptied). */
static const char *last_ssl_reason(void)
{
    unsigned long e, last = 0;
    while ((e = ERR_get_error()))
        last = e;
    const char *r = last ? ERR_reason_error_string(last) : NULL;
    return r ? r : "unknown error";
}

SSL_CTX *sg_redis_tls_ctx_new(const char *ca_file, const char *cert_file, const char *key_file, char *err,
                              size_t errlen)
{
    ERR_clear_error();
    if (!!cert_file != !!key_file) {
        seterr(err, errlen, "SIGNAL_REDIS_TLS_CERT_FILE and SIGNAL_REDIS_TLS_KEY_FILE must be set together");
        return NULL;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        seterr(err, errlen, "Redis TLS: cannot create a context: %s", last_ssl_reason());
        return NULL;
    }
    /* Whatever the system's openssl.cnf says: no TLS 1.0/1.1, no keys or
     * signatures under 112 bits of security. */
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
        seterr(err, errlen, "Redis TLS: cannot require TLS 1.2: %s", last_ssl_reason());
        goto fail;
    }
    SSL_CTX_set_security_level(ctx, 2);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
            seterr(err, errlen, "SIGNAL_REDIS_TLS_CA_FILE: cannot load CA certificates from %s: %s", ca_file,
                   last_ssl_reason());
            goto fail;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        seterr(err, errlen, "Redis TLS: cannot load the system's CA store: %s", last_ssl_reason());
        goto fail;
    }
    if (cert_file) {
        if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
            seterr(err, errlen, "SIGNAL_REDIS_TLS_CERT_FILE: cannot load %s: %s", cert_file, last_ssl_reason());
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
            seterr(err, errlen, "SIGNAL_REDIS_TLS_KEY_FILE: cannot load %s: %s", key_file, last_ssl_reason());
            goto fail;
        }
        if (SSL_CTX_check_private_key(ctx) != 1) {
            seterr(err, errlen, "SIGNAL_REDIS_TLS_KEY_FILE: %s does not match the certificate: %s", key_file,
                   last_ssl_reason());
            goto fail;
        }
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

bool sg_redis_tls_host_is_ip(const char *host)
{
    unsigned char a[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

SSL *sg_redis_tls_ssl_new(SSL_CTX *ctx, const char *host)
{
    SSL *ssl = SSL_new(ctx);
    if (!ssl)
        return NULL;
    if (sg_redis_tls_host_is_ip(host)) {
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) != 1)
            goto fail;
    } else {
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (SSL_set_tlsext_host_name(ssl, host) != 1 || SSL_set1_host(ssl, host) != 1)
            goto fail;
    }
    return ssl;
fail:
    ERR_clear_error();
    SSL_free(ssl);
    return NULL;
}

void sg_redis_tls_describe(const SSL *ssl, unsigned long ssl_err, char *out, size_t outlen)
{
    const char *reason = ssl_err ? ERR_reason_error_string(ssl_err) : NULL;
    long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    /* The verify result is only meaningful once the peer's certificate was
     * checked and refused; a handshake that failed earlier leaves it at OK. */
    if (v != X509_V_OK)
        snprintf(out, outlen, "TLS: %s (%s)", reason ? reason : "certificate verify failed",
                 X509_verify_cert_error_string(v));
    else
        snprintf(out, outlen, "TLS: %s", reason ? reason : "handshake failed or connection closed");
}
