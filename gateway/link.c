/* SPDX-License-Identifier: Apache-2.0 */
#include "sg/link.h"
#include "sg/rconn.h"
#include "sg/util.h"

#include <openssl/crypto.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sg_link {
    sg_link_handlers h;
    struct ssl_ctx_st *tls;
    sg_rconn *cmd, *sub;
    sg_link_target t;
    bool up;        /* on_state(true) was the last word */
    bool down;      /* on_state(false) was, since the last connect */
    bool closing;   /* closing the pair: the connections' own reports are ours */
    char name_cmd[64], name_sub[64];
};

/* Tells the owner once that the pair is down, after closing both. */
static void go_down(sg_link *l, const char *why)
{
    if (l->down)
        return;
    l->closing = true;
    sg_rconn_close(l->cmd, why);
    sg_rconn_close(l->sub, why);
    l->closing = false;
    l->up = false;
    l->down = true;
    l->h.on_state(l->h.ud, l, false, why);
}

static void on_conn_state(void *ud, sg_rconn *c, bool up, const char *why)
{
    sg_link *l = ud;
    if (up) {
        if (!l->up && !l->down && sg_rconn_is_up(l->cmd) && sg_rconn_is_up(l->sub)) {
            l->up = true;
            l->h.on_state(l->h.ud, l, true, NULL);
        }
        return;
    }
    if (!l->closing)
        go_down(l, why);
}

static void on_reply(void *ud, uint64_t tag, redisReply *r)
{
    sg_link *l = ud;
    l->h.on_reply(l->h.ud, l, tag, r);
}

static void on_latency(void *ud, double ms)
{
    sg_link *l = ud;
    if (l->h.on_latency)
        l->h.on_latency(l->h.ud, ms);
}

static void on_push(void *ud, redisReply *r)
{
    sg_link *l = ud;
    l->h.on_push(l->h.ud, l, r);
}

sg_link *sg_link_new(struct event_base *base, const sg_link_opts *o, const sg_link_handlers *h)
{
    sg_link *l = sg_xcalloc(1, sizeof *l);
    l->h = *h;
    l->tls = o->tls;
    snprintf(l->name_cmd, sizeof l->name_cmd, "%s-cmd", o->name ? o->name : "signal-gateway");
    snprintf(l->name_sub, sizeof l->name_sub, "%s-sub", o->name ? o->name : "signal-gateway");
    sg_rconn_opts ro = {.timeout_ms = o->timeout_ms, .on_state = on_conn_state, .on_latency = on_latency,
                        .dns = o->dns, .ud = l};
    l->cmd = sg_rconn_new(base, &ro);
    ro.pubsub = true;
    ro.on_push = on_push;
    ro.on_latency = NULL;
    ro.timeout_ms = 0; /* a quiet subscription is not a hung one */
    l->sub = sg_rconn_new(base, &ro);
    return l;
}

void sg_link_free(sg_link *l)
{
    if (!l)
        return;
    sg_rconn_free(l->cmd);
    sg_rconn_free(l->sub);
    OPENSSL_cleanse(&l->t, sizeof l->t);
    free(l);
}

void sg_link_set_target(sg_link *l, const sg_link_target *t) { l->t = *t; }

int sg_link_connect(sg_link *l)
{
    l->up = false;
    l->down = false;
    char db[16];
    snprintf(db, sizeof db, "%d", l->t.db);
    /* "AUTH password" for the default user, "AUTH user password" for an ACL user. */
    const char *auth[4] = {"AUTH"};
    int a = 1;
    if (l->t.user[0])
        auth[a++] = l->t.user;
    auth[a++] = l->t.pass;
    auth[a] = NULL;
    const char *sel[] = {"SELECT", db, NULL};
    const char *name_cmd[] = {"CLIENT", "SETNAME", l->name_cmd, NULL};
    const char *name_sub[] = {"CLIENT", "SETNAME", l->name_sub, NULL};
    const char *const *init[5];
    for (int which = 0; which < 2; which++) {
        int n = 0;
        if (l->t.auth)
            init[n++] = auth;
        if (which == 0 && l->t.db)
            init[n++] = sel;
        init[n++] = which == 0 ? name_cmd : name_sub;
        init[n] = NULL;
        sg_rconn *c = which == 0 ? l->cmd : l->sub;
        sg_rconn_set_tls(c, l->t.tls ? l->tls : NULL);
        if (sg_rconn_connect(c, l->t.host, l->t.port, init) < 0) {
            l->closing = true;
            sg_rconn_close(l->cmd, "connect failed");
            l->closing = false;
            l->down = true;
            return -1;
        }
    }
    return 0;
}

void sg_link_close(sg_link *l, const char *why)
{
    go_down(l, why);
}

void sg_link_renew_subscriber(sg_link *l)
{
    if (sg_rconn_is_up(l->sub))
        sg_rconn_close(l->sub, "delivery probe stale");
}

bool sg_link_up(const sg_link *l) { return l->up; }
size_t sg_link_pending(const sg_link *l) { return sg_rconn_pending(l->cmd); }
const sg_link_target *sg_link_target_of(const sg_link *l) { return &l->t; }

bool sg_link_is(const sg_link *l, const char *host, int port)
{
    return l->t.port == port && strcmp(l->t.host, host) == 0;
}

int sg_link_send(sg_link *l, int argc, const char **argv, const size_t *lens, uint64_t tag)
{
    if (!l->up)
        return -1;
    return sg_rconn_send(l->cmd, argc, argv, lens, on_reply, tag);
}

int sg_link_send_encoded(sg_link *l, const char *bytes, size_t len, uint64_t tag)
{
    if (!l->up)
        return -1;
    return sg_rconn_send_encoded(l->cmd, bytes, len, on_reply, tag);
}

int sg_link_sub_send(sg_link *l, int argc, const char **argv)
{
    if (!sg_rconn_is_up(l->sub))
        return -1;
    return sg_rconn_send(l->sub, argc, argv, NULL, NULL, 0);
}
