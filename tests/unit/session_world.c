/* SPDX-License-Identifier: Apache-2.0 */
#include "session_world.h"

#include "sg/auth.h"
#include "sg/buf.h"
#include "sg/util.h"
#include "sg/wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool world_send(void *ud, uint64_t id, const char *data, size_t len)
{
    world *w = ud;
    if (id == 0 || id > WORLD_MAX_CONNS || !w->conns[id].open) {
        w->sends_to_unknown++;
        return false;
    }
    world_conn *c = &w->conns[id];
    if (c->refuse_after >= 0 && c->nframes >= (size_t)c->refuse_after) {
        c->sends_refused++;
        return false;
    }
    if (c->nframes < WORLD_MAX_FRAMES)
        c->frames[c->nframes++] = sg_xstrndup(data, len);
    return true;
}

static void world_close(void *ud, uint64_t id, uint16_t code, const char *reason)
{
    world *w = ud;
    if (id == 0 || id > WORLD_MAX_CONNS || !w->conns[id].open) {
        w->closes_of_unknown++;
        return;
    }
    if (!w->conns[id].close_code) {
        w->conns[id].close_code = code;
        sg_strlcpy(w->conns[id].close_reason, reason ? reason : "", sizeof w->conns[id].close_reason);
    }
}

void world_init(world *w, const char *const *env)
{
    memset(w, 0, sizeof *w);
    char *base[] = {"SIGNAL_JWT_SECRET=unit-secret", "SIGNAL_NODE_ID=n1", "SIGNAL_RESUME_MS=30000",
                    "SIGNAL_LOG_LEVEL=error"};
    char *all[64];
    size_t n = 0;
    for (size_t i = 0; i < sizeof base / sizeof *base; i++)
        all[n++] = base[i];
    for (size_t i = 0; env && env[i] && n < 63; i++)
        all[n++] = (char *)env[i];
    all[n] = NULL;
    char err[256];
    if (sg_config_load(&w->cfg, 0, NULL, 0, all, err, sizeof err, NULL) != 0) {
        fprintf(stderr, "world_init: %s\n", err);
        abort();
    }
    w->log = sg_log_new("n1", w->cfg.log_level_num, "unit-log-key");
    sg_metrics_init(&w->metrics);
    sg_bus_handlers h = {0};
    sg_bus_config bc = {0};
    w->bus = sg_bus_new(NULL, &bc, &h, w->log, &w->metrics);
    sg_session_deps d = {.cfg = &w->cfg, .log = w->log, .metrics = &w->metrics, .bus = w->bus,
                         .io = {.send = world_send, .close = world_close, .ud = w}};
    w->s = sg_session_new(&d);
}

void world_free(world *w)
{
    /* As bus.c does when it is freed: every call in flight gets NULL. */
    fake_call *c;
    while ((c = fake_bus_pop(w->bus)) != NULL) {
        sg_session_on_reply(w->s, c->tag, NULL);
        fake_call_free(c);
    }
    sg_session_free(w->s);
    sg_bus_free(w->bus);
    for (size_t i = 0; i <= WORLD_MAX_CONNS; i++)
        for (size_t k = 0; k < w->conns[i].nframes; k++)
            free(w->conns[i].frames[k]);
    sg_log_free(w->log);
    sg_config_free(&w->cfg);
}

void world_open(world *w, uint64_t id, const char *sub, const char *rooms)
{
    sg_claims c = {0};
    c.sub = sg_xstrdup(sub);
    c.exp = 4102444800;
    if (rooms) {
        /* One block, as auth.c lays a claim out: pointers, then strings. */
        size_t n = strlen(rooms) + 1;
        c.rooms = sg_xmalloc(sizeof(char *) + n);
        c.rooms[0] = (char *)(c.rooms + 1);
        memcpy(c.rooms[0], rooms, n);
        c.nrooms = 1;
    }
    for (size_t k = 0; k < w->conns[id].nframes; k++)
        free(w->conns[id].frames[k]);
    w->conns[id] = (world_conn){.open = true, .refuse_after = -1};
    sg_session_open(w->s, id, &c, NULL);
}

void world_text(world *w, uint64_t id, const char *json)
{
    sg_session_on_text(w->s, id, json, strlen(json), sg_now_wall_us());
}

size_t world_count(const world *w, uint64_t id) { return w->conns[id].nframes; }

const char *world_frame(const world *w, uint64_t id, size_t n)
{
    return n < w->conns[id].nframes ? w->conns[id].frames[n] : NULL;
}

const char *world_last(const world *w, uint64_t id)
{
    size_t n = w->conns[id].nframes;
    return n ? w->conns[id].frames[n - 1] : NULL;
}

fake_call *world_answer(world *w, const char *resp)
{
    fake_call *c = fake_bus_pop(w->bus);
    if (!c)
        return NULL;
    redisReply *r = resp ? fake_reply(resp, strlen(resp)) : NULL;
    sg_session_on_reply(w->s, c->tag, r);
    if (r)
        freeReplyObject(r);
    return c;
}

void world_confirm_all(world *w)
{
    const char *ch;
    while ((ch = fake_bus_unconfirmed(w->bus, 0)) != NULL) {
        char copy[SG_WIRE_CHANNEL_MAX];
        sg_strlcpy(copy, ch, sizeof copy);
        fake_bus_confirm(w->bus, copy);
        sg_session_on_subscribed(w->s, copy, strlen(copy));
    }
}

void world_deliver(world *w, const char *room, const char *peer, uint64_t id, char kind, uint64_t seq,
                   const char *frame)
{
    char ch[SG_WIRE_CHANNEL_MAX];
    size_t chlen = sg_wire_channel(ch, room, peer);
    sg_buf b;
    sg_buf_init(&b);
    sg_wire_write_envelope(&b, sg_session_instance(w->s), id, kind, 0, "-", seq, frame, strlen(frame));
    sg_session_on_message(w->s, ch, chlen, b.data, b.len);
    sg_buf_free(&b);
}

void world_deliver_batch(world *w, const char *room, const char *peer, uint64_t id, uint64_t first_seq,
                         const char *const *frames)
{
    char ch[SG_WIRE_CHANNEL_MAX];
    size_t chlen = sg_wire_channel(ch, room, peer);
    sg_buf items, b;
    sg_buf_init(&items);
    sg_buf_init(&b);
    uint64_t n = 0;
    for (; frames[n]; n++)
        sg_wire_write_batched(&items, 1000 + n, "-", frames[n], strlen(frames[n]));
    sg_wire_write_envelope(&b, sg_session_instance(w->s), id, 'b', n, "-", first_seq, items.data, items.len);
    sg_session_on_message(w->s, ch, chlen, b.data, b.len);
    sg_buf_free(&items);
    sg_buf_free(&b);
}

void world_deliver_meta(world *w, const char *room, const char *peer, uint64_t id, char kind, const char *meta,
                        const char *frame)
{
    char ch[SG_WIRE_CHANNEL_MAX];
    size_t chlen = sg_wire_channel(ch, room, peer);
    sg_buf b;
    sg_buf_init(&b);
    sg_wire_write_envelope(&b, sg_session_instance(w->s), id, kind, 0, meta, 0, frame, strlen(frame));
    sg_session_on_message(w->s, ch, chlen, b.data, b.len);
    sg_buf_free(&b);
}

void world_control(world *w, const char *payload)
{
    sg_session_on_message(w->s, SG_WIRE_CONTROL_CHANNEL, strlen(SG_WIRE_CONTROL_CHANNEL), payload,
                          strlen(payload));
}

size_t world_reap_closed(world *w)
{
    size_t n = 0;
    for (uint64_t id = 1; id <= WORLD_MAX_CONNS; id++)
        if (w->conns[id].open && w->conns[id].close_code) {
            w->conns[id].open = false;
            sg_session_close(w->s, id, SG_GONE_DISCONNECT);
            n++;
        }
    return n;
}

void world_lose(world *w, fake_call *c)
{
    sg_session_on_reply(w->s, c->tag, NULL);
    fake_call_free(c);
}
