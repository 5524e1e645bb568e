/* SPDX-License-Identifier: Apache-2.0 */
#include "sg/log.h"
#include "sg/buf.h"
#include "sg/util.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <fcntl.h>
#include <math.h>
#include <openssl/hmac.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOG_QUEUE_MAX (8u << 20) /* bytes of unwritten log lines before dropping */

struct sg_log {
    char *node;
    int min_level;
    uint8_t *key; /* HMAC key: SIGNAL_LOG_HASH_KEY's bytes, or 32 random bytes */
    size_t keylen;
    sg_buf line;
    struct evbuffer *queue;
    struct event *ev; /* write-ready on stdout, when attached */
    uint64_t dropped, dropped_reported;
    bool building;
};

static const char *LEVELS[] = {"debug", "info", "warn", "error"};

sg_log *sg_log_new(const char *node, int min_level, const char *hash_key)
{
    sg_log *l = sg_xcalloc(1, sizeof *l);
    l->node = sg_xstrdup(node);
    l->min_level = min_level;
    if (hash_key && *hash_key) {
        l->keylen = strlen(hash_key);
        l->key = (uint8_t *)sg_xstrndup(hash_key, l->keylen);
    } else {
        /* Random per process: hashes are stable within a node's life only. */
        l->keylen = 32;
        l->key = sg_xmalloc(l->keylen);
        sg_random_bytes(l->key, l->keylen);
    }
    sg_buf_init(&l->line);
    l->queue = evbuffer_new();
    return l;
}

static void drain(sg_log *l)
{
    while (evbuffer_get_length(l->queue) > 0) {
        int n = evbuffer_write(l->queue, STDOUT_FILENO);
        if (n <= 0)
            break;
    }
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    sg_log *l = arg;
    drain(l);
    if (evbuffer_get_length(l->queue) > 0)
        event_add(l->ev, NULL);
}

void sg_log_attach(sg_log *l, struct event_base *base)
{
    int fl = fcntl(STDOUT_FILENO, F_GETFL);
    if (fl >= 0)
        fcntl(STDOUT_FILENO, F_SETFL, fl | O_NONBLOCK);
    l->ev = event_new(base, STDOUT_FILENO, EV_WRITE, on_writable, l);
}

void sg_log_flush(sg_log *l)
{
    int fl = fcntl(STDOUT_FILENO, F_GETFL);
    if (fl >= 0)
        fcntl(STDOUT_FILENO, F_SETFL, fl & ~O_NONBLOCK);
    drain(l);
}

void sg_log_free(sg_log *l)
{
    if (!l)
        return;
    sg_log_flush(l);
    if (l->ev)
        event_free(l->ev);
    evbuffer_free(l->queue);
    sg_buf_free(&l->line);
    free(l->key);
    free(l->node);
    free(l);
}

uint64_t sg_log_dropped(const sg_log *l) { return l->dropped; }

bool sg_log_begin(sg_log *l, int level, const char *event)
{
    if (level < l->min_level)
        return false;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char tbuf[40];
    strftime(tbuf, sizeof tbuf, "%Y-%m-%dT%H:%M:%S", &tm);
    sg_buf_reset(&l->line);
    sg_buf_printf(&l->line, "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"event\":", tbuf,
                  ts.tv_nsec / 1000000, LEVELS[level]);
    sg_buf_json_str(&l->line, event, strlen(event));
    sg_buf_puts(&l->line, ",\"node\":");
    sg_buf_json_str(&l->line, l->node, strlen(l->node));
    l->building = true;
    return true;
}

static void key(sg_log *l, const char *k)
{
    sg_buf_putc(&l->line, ',');
    sg_buf_json_str(&l->line, k, strlen(k));
    sg_buf_putc(&l->line, ':');
}

void sg_log_str(sg_log *l, const char *k, const char *val)
{
    if (!val)
        return;
    sg_log_strn(l, k, val, strlen(val));
}

void sg_log_strn(sg_log *l, const char *k, const char *val, size_t n)
{
    key(l, k);
    sg_buf_json_str(&l->line, val, n);
}

void sg_log_int(sg_log *l, const char *k, int64_t val)
{
    key(l, k);
    sg_buf_printf(&l->line, "%lld", (long long)val);
}

void sg_log_dbl(sg_log *l, const char *k, double val)
{
    key(l, k);
    if (isfinite(val))
        sg_buf_printf(&l->line, "%.3f", val);
    else
        sg_buf_puts(&l->line, "null"); /* JSON has no nan/inf */
}

void sg_log_hash(const sg_log *l, const char *sub, char out[17])
{
    uint8_t mac[32];
    unsigned int n = sizeof mac;
    HMAC(EVP_sha256(), l->key, (int)l->keylen, (const uint8_t *)sub, strlen(sub), mac, &n);
    sg_hex(out, mac, 8);
}

void sg_log_user(sg_log *l, const char *k, const char *sub)
{
    char h[17];
    sg_log_hash(l, sub, h);
    sg_log_str(l, k, h);
}

/* Queues the line being built; false when it was dropped instead. */
static bool queue_line(sg_log *l)
{
    l->building = false;
    if (evbuffer_get_length(l->queue) > LOG_QUEUE_MAX) {
        l->dropped++;
        return false;
    }
    /* The first line that fits says how many were lost before it. */
    if (l->dropped != l->dropped_reported) {
        sg_log_int(l, "log_dropped", (int64_t)(l->dropped - l->dropped_reported));
        l->dropped_reported = l->dropped;
    }
    sg_buf_puts(&l->line, "}\n");
    evbuffer_add(l->queue, l->line.data, l->line.len);
    return true;
}

void sg_log_foreign(sg_log *l, int level, const char *event, const char *msg, uint64_t suppressed)
{
    /* Called from inside a library, maybe while one of our lines is being
     * built (then this one is dropped: the other is not finished). */
    if (l->building || !sg_log_begin(l, level, event))
        return;
    sg_log_str(l, "msg", msg);
    if (suppressed)
        sg_log_int(l, "suppressed", (int64_t)suppressed);
    /* No event_active here: libevent must not be re-entered from its own log
     * callback. What stdout does not take now leaves with the next line. */
    if (queue_line(l))
        drain(l);
}

void sg_log_end(sg_log *l)
{
    if (!queue_line(l))
        return;
    if (!l->ev) {
        drain(l); /* before the loop runs: plain blocking write */
        return;
    }
    /* One write per loop pass for all lines queued in it; the loop finishes
     * the job if stdout is slow. */
    if (!event_pending(l->ev, EV_WRITE, NULL))
        event_active(l->ev, EV_WRITE, 0);
}

void sg_log_ratelimit_drop(sg_log *l, uint64_t conn, const char *scope, const char *room, const char *type,
                           uint64_t dropped)
{
    if (!sg_log_begin(l, SG_LOG_INFO, "ratelimit.drop"))
        return;
    sg_log_int(l, "conn", (int64_t)conn);
    sg_log_str(l, "scope", scope);
    if (room)
        sg_log_str(l, "room", room);
    if (type)
        sg_log_str(l, "type", type);
    sg_log_int(l, "dropped", (int64_t)dropped);
    sg_log_end(l);
}
