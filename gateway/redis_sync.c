/* SPDX-License-Identifier: Apache-2.0 */
/* See include/sg/redis_sync.h. */
#include "sg/redis_sync.h"
#include "sg/redis_tls.h"
#include "sg/util.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

struct sg_redis_sync {
    int fd;
    SSL *ssl;
    redisReader *reader;
    char where[SG_REDIS_HOST_MAX + 16];
};

/* A non-blocking connect bounded by timeout_ms, then a blocking socket
 * whose reads and writes time out the same. */
static int dial(const char *host, int port, int64_t timeout_ms, char *why, size_t whylen)
{
    char service[8];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0) {
        snprintf(why, whylen, "%s", gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        if (errno == EINPROGRESS) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            int n = poll(&p, 1, (int)timeout_ms);
            if (n == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0)
                break;
            snprintf(why, whylen, "%s", n == 0 ? "connect timed out" : strerror(soerr ? soerr : errno));
        } else {
            snprintf(why, whylen, "%s", strerror(errno));
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return -1;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

static void io_failure(const sg_redis_sync *c, const char *what, char *err, size_t errlen)
{
    unsigned long e = ERR_get_error();
    char why[200];
    if (c->ssl && (e || SSL_get_verify_result(c->ssl) != X509_V_OK))
        sg_redis_tls_describe(c->ssl, e, why, sizeof why);
    else if (errno == EAGAIN || errno == EWOULDBLOCK)
        snprintf(why, sizeof why, "timed out");
    else
        snprintf(why, sizeof why, "%s", errno ? strerror(errno) : "connection closed");
    snprintf(err, errlen, "%s %s: %s", what, c->where, why);
    ERR_clear_error();
}

static bool write_all(sg_redis_sync *c, const char *p, size_t len)
{
    while (len) {
        errno = 0;
        ssize_t n = c->ssl ? SSL_write(c->ssl, p, (int)(len > INT32_MAX ? INT32_MAX : len)) : write(c->fd, p, len);
        if (n <= 0) {
            if (!c->ssl && n < 0 && errno == EINTR)
                continue;
            return false;
        }
        p += n;
        len -= (size_t)n;
    }
    return true;
}

redisReply *sg_redis_sync_command(sg_redis_sync *c, int argc, const char *const *argv, const size_t *lens,
                                  char *err, size_t errlen)
{
    char *cmd = NULL;
    /* hiredis 0.14 reads argv but does not declare it const. */
    int len = redisFormatCommandArgv(&cmd, argc, (const char **)(uintptr_t)argv, lens);
    if (len < 0) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    bool sent = write_all(c, cmd, (size_t)len);
    free(cmd);
    if (!sent) {
        io_failure(c, "cannot write to", err, errlen);
        return NULL;
    }
    size_t total = 0;
    for (;;) {
        void *reply = NULL;
        if (redisReaderGetReply(c->reader, &reply) != REDIS_OK) {
            snprintf(err, errlen, "bad reply from %s: %s", c->where, c->reader->errstr);
            return NULL;
        }
        if (reply)
            return reply;
        char buf[16384];
        errno = 0;
        ssize_t n = c->ssl ? SSL_read(c->ssl, buf, sizeof buf) : read(c->fd, buf, sizeof buf);
        if (n < 0 && !c->ssl && errno == EINTR)
            continue;
        if (n <= 0) {
            io_failure(c, "no reply from", err, errlen);
            return NULL;
        }
        total += (size_t)n;
        if (total > SG_REDIS_SYNC_REPLY_MAX) {
            snprintf(err, errlen, "reply from %s larger than %u bytes", c->where, SG_REDIS_SYNC_REPLY_MAX);
            return NULL;
        }
        redisReaderFeed(c->reader, buf, (size_t)n);
    }
}

/* A command whose only use is its success (AUTH, SELECT). */
static bool init_command(sg_redis_sync *c, int argc, const char *const *argv, char *err, size_t errlen)
{
    redisReply *r = sg_redis_sync_command(c, argc, argv, NULL, err, errlen);
    if (!r)
        return false;
    bool ok = r->type != REDIS_REPLY_ERROR;
    if (!ok)
        snprintf(err, errlen, "%s refused by %s: %s", argv[0], c->where, r->str);
    freeReplyObject(r);
    return ok;
}

sg_redis_sync *sg_redis_sync_connect(const sg_redis_endpoint *ep, int db, struct ssl_ctx_st *tls,
                                     int64_t timeout_ms, char *err, size_t errlen)
{
    sg_redis_sync *c = sg_xcalloc(1, sizeof *c);
    snprintf(c->where, sizeof c->where, strchr(ep->host, ':') ? "[%s]:%d" : "%s:%d", ep->host, ep->port);
    char why[200] = "";
    c->fd = dial(ep->host, ep->port, timeout_ms, why, sizeof why);
    if (c->fd < 0) {
        snprintf(err, errlen, "cannot connect to %s: %s", c->where, why);
        free(c);
        return NULL;
    }
    c->reader = redisReaderCreate();
    if (ep->tls) {
        if (!tls || !(c->ssl = sg_redis_tls_ssl_new(tls, ep->host)) || !SSL_set_fd(c->ssl, c->fd) ||
            (errno = 0, SSL_connect(c->ssl) != 1)) {
            io_failure(c, "cannot connect to", err, errlen);
            sg_redis_sync_free(c);
            return NULL;
        }
    }
    const char *auth[3] = {"AUTH"};
    int a = 1;
    if (ep->user[0])
        auth[a++] = ep->user;
    auth[a++] = ep->pass;
    char n[16];
    snprintf(n, sizeof n, "%d", db);
    const char *sel[] = {"SELECT", n};
    if ((ep->auth && !init_command(c, a, auth, err, errlen)) || (db > 0 && !init_command(c, 2, sel, err, errlen))) {
        sg_redis_sync_free(c);
        return NULL;
    }
    return c;
}

void sg_redis_sync_free(sg_redis_sync *c)
{
    if (!c)
        return;
    if (c->ssl) {
        SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
    }
    if (c->reader)
        redisReaderFree(c->reader);
    close(c->fd);
    free(c);
}
