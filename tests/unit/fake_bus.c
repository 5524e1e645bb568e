/* SPDX-License-Identifier: Apache-2.0 */
/* The scripted bus (see fake_bus.h): the whole of bus.h's contract that the
 * session relies on, without Redis. */
#include "fake_bus.h"
#include "sg/map.h"
#include "sg/util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct fchan {
    unsigned refs;
    bool confirmed;
    uint64_t order; /* when it was last asked for, to list unconfirmed ones oldest first */
} fchan;

struct sg_bus {
    sg_bus_handlers h;
    bool available, overloaded, auto_confirm;
    fake_call *head, **tail;
    size_t pending;
    sg_map chans;
    uint64_t order;
    char **log;
    size_t nlog;
};

sg_bus *sg_bus_new(struct event_base *base, const sg_bus_config *cfg, const sg_bus_handlers *h,
                   struct sg_log *log, struct sg_metrics *metrics)
{
    sg_bus *b = sg_xcalloc(1, sizeof *b);
    if (h)
        b->h = *h;
    b->available = true;
    b->auto_confirm = true;
    b->tail = &b->head;
    sg_map_init(&b->chans);
    return b;
}

int sg_bus_start(sg_bus *b, char *err, size_t errlen) { return 0; }

void fake_call_free(fake_call *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->nkeys; i++)
        free(c->keys[i]);
    for (int i = 0; i < c->argc; i++)
        free(c->argv[i]);
    free(c);
}

void sg_bus_free(sg_bus *b)
{
    if (!b)
        return;
    while (b->head) {
        fake_call *c = b->head;
        b->head = c->next;
        fake_call_free(c);
    }
    size_t i;
    for (sg_map_entry *e = sg_map_first(&b->chans, &i); e; e = sg_map_next(&b->chans, &i, e))
        free(e->value);
    sg_map_free(&b->chans);
    for (size_t k = 0; k < b->nlog; k++)
        free(b->log[k]);
    free(b->log);
    free(b);
}

bool sg_bus_available(const sg_bus *b) { return b->available; }
bool sg_bus_busy(const sg_bus *b) { return b->pending > 0; }
bool sg_bus_overloaded(const sg_bus *b, unsigned more)
{
    (void)more;
    return b->overloaded;
}
bool sg_bus_clustered(const sg_bus *b) { return false; }
void sg_bus_probe(sg_bus *b) {}
int64_t sg_bus_probe_age(const sg_bus *b) { return 0; }
void sg_bus_probe_renew(sg_bus *b, int64_t stale_ms) {}
uint64_t sg_bus_probes_sent(const sg_bus *b) { return 0; }
uint64_t sg_bus_probes_received(const sg_bus *b) { return 0; }

static void log_command(sg_bus *b, int argc, const char **argv, const size_t *lens)
{
    size_t n = 0;
    for (int i = 0; i < argc; i++)
        n += (lens ? lens[i] : strlen(argv[i])) + 1;
    char *line = sg_xmalloc(n + 1), *p = line;
    for (int i = 0; i < argc; i++) {
        size_t l = lens ? lens[i] : strlen(argv[i]);
        memcpy(p, argv[i], l);
        p += l;
        *p++ = ' ';
    }
    p[p > line ? -1 : 0] = '\0';
    b->log = sg_xrealloc(b->log, (b->nlog + 1) * sizeof *b->log);
    b->log[b->nlog++] = line;
}

static int record(sg_bus *b, int script, const char *const *keys, int nkeys, int argc, const char **argv,
                  const size_t *lens, uint64_t tag)
{
    if (!b->available || argc > FAKE_MAX_ARGS || nkeys > 96)
        return -1;
    if (script < 0 && tag == 0) {
        log_command(b, argc, argv, lens);
        return 0;
    }
    fake_call *c = sg_xcalloc(1, sizeof *c);
    c->script = script;
    c->nkeys = nkeys;
    for (int i = 0; i < nkeys; i++)
        c->keys[i] = sg_xstrdup(keys[i]);
    c->argc = argc;
    for (int i = 0; i < argc; i++) {
        size_t n = lens ? lens[i] : strlen(argv[i]);
        c->argv[i] = sg_xstrndup(argv[i], n);
        c->lens[i] = n;
    }
    c->tag = tag;
    *b->tail = c;
    b->tail = &c->next;
    b->pending++;
    return 0;
}

int sg_bus_fcall(sg_bus *b, sg_fn fn, int nkeys, const char *const *keys, int argc, const char **argv,
                 const size_t *lens, uint64_t tag)
{
    return record(b, (int)fn, keys, nkeys, argc, argv, lens, tag);
}

int sg_bus_fcall_weighted(sg_bus *b, sg_fn fn, int nkeys, const char *const *keys, int argc, const char **argv,
                          const size_t *lens, uint64_t tag, unsigned weight)
{
    (void)weight; /* fake_bus_set_overloaded decides */
    return record(b, (int)fn, keys, nkeys, argc, argv, lens, tag);
}

int sg_bus_command(sg_bus *b, int argc, const char **argv, const size_t *lens, uint64_t tag)
{
    return record(b, -1, NULL, 0, argc, argv, lens, tag);
}

size_t fake_bus_commands(sg_bus *b) { return b->nlog; }
const char *fake_bus_command(sg_bus *b, size_t n) { return n < b->nlog ? b->log[n] : NULL; }

fake_call *fake_bus_pop(sg_bus *b)
{
    fake_call *c = b->head;
    if (!c)
        return NULL;
    b->head = c->next;
    if (!b->head)
        b->tail = &b->head;
    b->pending--;
    c->next = NULL;
    return c;
}

fake_call *fake_bus_peek(sg_bus *b, size_t n)
{
    fake_call *c = b->head;
    while (c && n--)
        c = c->next;
    return c;
}

size_t fake_bus_pending(sg_bus *b) { return b->pending; }
void fake_bus_set_available(sg_bus *b, bool up) { b->available = up; }
void fake_bus_set_overloaded(sg_bus *b, bool over) { b->overloaded = over; }
void fake_bus_set_auto_confirm(sg_bus *b, bool on) { b->auto_confirm = on; }

bool sg_bus_subscribe(sg_bus *b, const char *channel)
{
    size_t n = strlen(channel);
    fchan *c = sg_map_get(&b->chans, channel, n);
    if (!c) {
        c = sg_xcalloc(1, sizeof *c);
        sg_map_put(&b->chans, channel, n, c);
    }
    if (c->refs++ == 0) {
        c->confirmed = b->auto_confirm;
        c->order = ++b->order;
    }
    return c->confirmed;
}

void sg_bus_unsubscribe(sg_bus *b, const char *channel)
{
    size_t n = strlen(channel);
    fchan *c = sg_map_get(&b->chans, channel, n);
    if (!c || !c->refs)
        return;
    if (--c->refs == 0)
        free(sg_map_del(&b->chans, channel, n));
}

bool sg_bus_subscribed(const sg_bus *b, const char *channel)
{
    fchan *c = sg_map_get(&b->chans, channel, strlen(channel));
    return c && c->refs && c->confirmed;
}

bool fake_bus_confirm(sg_bus *b, const char *channel)
{
    fchan *c = sg_map_get(&b->chans, channel, strlen(channel));
    if (!c || !c->refs || c->confirmed)
        return false;
    c->confirmed = true;
    return true;
}

unsigned fake_bus_refs(sg_bus *b, const char *channel)
{
    fchan *c = sg_map_get(&b->chans, channel, strlen(channel));
    return c ? c->refs : 0;
}

const char *fake_bus_unconfirmed(sg_bus *b, size_t n)
{
    /* Few channels in a test: a scan per call is fine. */
    const char *best = NULL;
    uint64_t floor = 0;
    for (size_t k = 0; k <= n; k++) {
        best = NULL;
        uint64_t least = UINT64_MAX;
        size_t i;
        for (sg_map_entry *e = sg_map_first(&b->chans, &i); e; e = sg_map_next(&b->chans, &i, e)) {
            fchan *c = e->value;
            if (c->refs && !c->confirmed && c->order > floor && c->order < least) {
                least = c->order;
                best = e->key;
            }
        }
        if (!best)
            return NULL;
        floor = least;
    }
    return best;
}

redisReply *fake_reply(const char *resp, size_t len)
{
    redisReader *r = redisReaderCreate();
    void *reply = NULL;
    if (redisReaderFeed(r, resp, len) != REDIS_OK || redisReaderGetReply(r, &reply) != REDIS_OK)
        reply = NULL;
    redisReaderFree(r);
    return reply;
}

redisReply *fake_replyf(const char *fmt, ...)
{
    char buf[65536];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof buf)
        return NULL;
    return fake_reply(buf, (size_t)n);
}
