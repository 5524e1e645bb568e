/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer harness for the session layer: whole message paths, not a
 * parser. The input is a program: open connections, client messages (made
 * from templates with fuzzed fields, or raw bytes), Redis replies to the
 * calls in flight (well-shaped with fuzzed contents, or raw RESP, or lost),
 * channel messages, subscription confirmations, connections that stop
 * taking frames, closes, Redis going away and coming back, lease ticks,
 * backend control (kicks, revocations, handshake checks, the control
 * subscription coming back) — in any order. ASan/UBSan catch memory errors; the checks at the end catch
 * state that outlives its connections (memberships, channel references). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "session_world.h"
#include "sg/scripts.h"
#include "sg/util.h"
#include "sg/wire.h"

#define NCONN 6

static const char *const ROOMS[] = {"r0", "r1", "team/x", "r3"};
static const char *const PEERS[] = {"11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222",
                                    "33333333-3333-4333-8333-333333333333", "44444444-4444-4444-8444-444444444444"};
static const char *const SUBS[] = {"alice", "bob", "carol"};

typedef struct input {
    const uint8_t *p;
    size_t n;
} input;

static uint8_t byte(input *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}

/* Up to max bytes of the input, as a chunk. */
static size_t chunk(input *in, const uint8_t **out, size_t max)
{
    size_t want = byte(in);
    want = want * 4 < max ? want * 4 : max;
    if (want > in->n)
        want = in->n;
    *out = in->p;
    in->p += want;
    in->n -= want;
    return want;
}

#define PICK(arr, in) (arr[byte(in) % (sizeof arr / sizeof *arr)])

static uint64_t pick_conn(input *in) { return (uint64_t)(byte(in) % NCONN) + 1; }

static void client_message(world *w, input *in)
{
    uint64_t id = pick_conn(in);
    if (!w->conns[id].open)
        return;
    char msg[1024];
    const char *room = PICK(ROOMS, in), *peer = PICK(PEERS, in), *to = PICK(PEERS, in);
    switch (byte(in) % 8) {
    case 0:
        snprintf(msg, sizeof msg, "{\"type\":\"join\",\"roomId\":\"%s\",\"peerId\":\"%s\",\"correlationId\":\"j%u\"}",
                 room, peer, byte(in));
        break;
    case 1:
        snprintf(msg, sizeof msg, "{\"type\":\"leave\",\"roomId\":\"%s\",\"peerId\":\"%s\"}", room, peer);
        break;
    case 2: {
        /* resume tokens of every length the validator lets through */
        char tok[130];
        size_t n = 1 + byte(in) % 128;
        for (size_t i = 0; i < n; i++)
            tok[i] = "abcXYZ019-_"[byte(in) % 11];
        tok[n] = '\0';
        snprintf(msg, sizeof msg,
                 "{\"type\":\"resume\",\"roomId\":\"%s\",\"peerId\":\"%s\",\"resumeToken\":\"%s\",\"lastSeq\":%u}",
                 room, peer, tok, byte(in));
        break;
    }
    case 3:
        snprintf(msg, sizeof msg,
                 "{\"type\":\"candidate\",\"roomId\":\"%s\",\"from\":\"%s\",\"to\":\"%s\",\"candidate\":{\"candidate\":\"\"}%s}",
                 room, peer, to, byte(in) & 1 ? ",\"ack\":true" : "");
        break;
    case 4:
        snprintf(msg, sizeof msg, "{\"type\":\"offer\",\"roomId\":\"%s\",\"from\":\"%s\",\"to\":\"%s\",\"sdp\":\"v=0\"}",
                 room, peer, to);
        break;
    default: {
        const uint8_t *raw;
        size_t n = chunk(in, &raw, 900);
        sg_session_on_text(w->s, id, (const char *)raw, n, sg_now_wall_us());
        return;
    }
    }
    world_text(w, id, msg);
}

/* A reply of the right shape for the oldest call, with fuzzed contents. */
static void shaped_reply(sg_buf *r, const fake_call *c, input *in)
{
    const char *peer = PICK(PEERS, in);
    static const char hash[] = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    switch (c->script) {
    case SG_FN_JOIN:
        if (byte(in) & 1)
            sg_buf_printf(r, "*3\r\n$6\r\njoined\r\n$36\r\n%s\r\n$64\r\n%s\r\n", peer, hash);
        else
            sg_buf_printf(r, "*2\r\n$5\r\nerror\r\n$%d\r\n%s\r\n", 9, byte(in) & 1 ? "forbidden" : "room_full");
        break;
    case SG_FN_RESUME:
        if (byte(in) & 1)
            sg_buf_printf(r, "*4\r\n$7\r\nresumed\r\n*2\r\n$36\r\n%s\r\n$64\r\n%s\r\n*4\r\n$1\r\n%u\r\n$2\r\nf1\r\n"
                             "$1\r\n%u\r\n$2\r\nf2\r\n:%u\r\n",
                          peer, hash, byte(in) % 10, byte(in) % 10, byte(in) % 12);
        else
            sg_buf_puts(r, "*2\r\n$5\r\nerror\r\n$13\r\nresume_failed\r\n");
        break;
    case SG_FN_RELAY: {
        /* one result per relay of the call (lua/relay.lua), or one reply for all */
        static const char *const R[] = {"*3\r\n$2\r\nok\r\n$9\r\ndelivered\r\n:1\r\n",
                                        "*3\r\n$2\r\nok\r\n$8\r\nbuffered\r\n:2\r\n",
                                        "*2\r\n$12\r\nrate_limited\r\n$9\r\ncandidate\r\n",
                                        "*2\r\n$5\r\nerror\r\n$14\r\npeer_not_found\r\n", "-ERR script\r\n"};
        int n = c->argc > 5 ? (c->argc - 5) / 4 : 0;
        if (byte(in) % 8 == 0) {
            sg_buf_puts(r, PICK(R, in));
            break;
        }
        n += byte(in) % 8 == 0 ? (int)(byte(in) % 3) - 1 : 0; /* sometimes one too few or too many */
        sg_buf_printf(r, "*%d\r\n", n < 0 ? 0 : n);
        for (int i = 0; i < n; i++)
            sg_buf_puts(r, PICK(R, in));
        break;
    }
    case SG_FN_CATCHUP:
        sg_buf_printf(r, "*2\r\n:%u\r\n*2\r\n$1\r\n%u\r\n$2\r\nfc\r\n", byte(in) & 1, byte(in) % 10);
        break;
    case SG_FN_REASSERT:
        /* one {lost, members, ghosts written} per room in the batch */
        sg_buf_printf(r, "*%d\r\n", (c->argc > 5 ? atoi(c->argv[5]) : 0));
        for (int i = 0; c->argc > 5 && i < atoi(c->argv[5]); i++)
            sg_buf_printf(r, "*3\r\n*1\r\n$36\r\n%s\r\n*2\r\n$36\r\n%s\r\n$64\r\n%s\r\n*2\r\n$36\r\n%s\r\n$1\r\n%u\r\n",
                          PICK(PEERS, in), PICK(PEERS, in), hash, PICK(PEERS, in), byte(in) % 10);
        break;
    case SG_FN_LEAVE:
        if (byte(in) & 1)
            sg_buf_printf(r, "*2\r\n$5\r\ngrace\r\n:%u\r\n", byte(in)); /* a deadline long past */
        else
            sg_buf_puts(r, "*1\r\n$4\r\nleft\r\n");
        break;
    case SG_FN_NODES: {
        bool dead = byte(in) & 1;
        sg_buf_printf(r, "*%d\r\n:%u\r\n", dead ? 2 : 1, byte(in) & 1);
        if (dead)
            sg_buf_puts(r, "$7\r\nn9~dead\r\n");
        break;
    }
    case SG_FN_REAP:
        sg_buf_printf(r, "*2\r\n$36\r\n%s\r\n$1\r\n%u\r\n", peer, byte(in) % 10);
        break;
    case SG_FN_EXPIRE:
        sg_buf_puts(r, byte(in) & 1 ? "$7\r\nexpired\r\n" : "$4\r\nkept\r\n");
        break;
    case -1:
        if (strcmp(c->argv[0], "ZSCORE") == 0) {
            /* a revocation check: none, one running, one over */
            uint8_t k = byte(in) % 3;
            if (k == 0)
                sg_buf_puts(r, "$-1\r\n");
            else
                sg_buf_printf(r, "$13\r\n%llu\r\n",
                              (unsigned long long)(sg_now_wall_ms() + (k == 1 ? 60000 : 0) - 1000));
        } else if (strcmp(c->argv[0], "ZRANGEBYSCORE") == 0) {
            /* the revocations running: one of the fuzzer's users */
            char h[SG_WIRE_SUB_SHA1_LEN + 1];
            const char *sub = PICK(SUBS, in);
            sg_wire_sub_sha1(sub, strlen(sub), h);
            sg_buf_printf(r, "*2\r\n$40\r\n%s\r\n$13\r\n%llu\r\n", h,
                          (unsigned long long)sg_now_wall_ms() + 60000);
        } else if (strcmp(c->argv[0], "FUNCTION") == 0) {
            sg_buf_puts(r, byte(in) & 1 ? "$14\r\nsignal_control\r\n" : "-ERR boom\r\n");
        } else { /* SMEMBERS of a dead instance's rooms */
            const char *room = PICK(ROOMS, in);
            sg_buf_printf(r, "*2\r\n$%zu\r\n%s\r\n$2\r\nr1\r\n", strlen(room), room);
        }
        break;
    default:
        sg_buf_puts(r, "$4\r\nleft\r\n");
    }
}

static void answer(world *w, input *in)
{
    size_t pending = fake_bus_pending(w->bus);
    if (!pending)
        return;
    uint8_t how = byte(in) % 4;
    fake_call *c = fake_bus_pop(w->bus);
    redisReply *r = NULL;
    if (how == 1 || how == 2) {
        sg_buf b;
        sg_buf_init(&b);
        shaped_reply(&b, c, in);
        r = fake_reply(b.data, b.len);
        sg_buf_free(&b);
    } else if (how == 3) {
        const uint8_t *raw;
        size_t n = chunk(in, &raw, 600);
        r = fake_reply((const char *)raw, n);
    }
    sg_session_on_reply(w->s, c->tag, r); /* how == 0 or unparsable: the call was lost */
    if (r)
        freeReplyObject(r);
    fake_call_free(c);
}

/* Backend control reaching this node: a kick or a closed room for one of
 * its connections, a revocation (well-formed or not), the control
 * subscription coming back, a handshake's revocation check. */
static int checks_answered;

static void on_checked(void *ud, uint64_t conn_id, sg_sub_verdict v)
{
    (void)ud;
    (void)conn_id;
    (void)v;
    checks_answered++;
}

static void control_event(world *w, input *in)
{
    switch (byte(in) % 5) {
    case 0: {
        static const char *const reasons[] = {"", "bye", "\xff\xfe", "a\"b\\c\n"};
        world_deliver_meta(w, PICK(ROOMS, in), PICK(PEERS, in), pick_conn(in), 'k',
                           byte(in) & 1 ? "kick" : "close_room", PICK(reasons, in));
        break;
    }
    case 1: {
        char h[SG_WIRE_SUB_SHA1_LEN + 1], msg[128];
        const char *sub = PICK(SUBS, in);
        sg_wire_sub_sha1(sub, strlen(sub), h);
        int64_t in_ms = (byte(in) & 1) ? 60000 : -1000;
        snprintf(msg, sizeof msg, "revoke\t%s\t%llu", h, (unsigned long long)((int64_t)sg_now_wall_ms() + in_ms));
        world_control(w, msg);
        break;
    }
    case 2: {
        const uint8_t *raw;
        size_t n = chunk(in, &raw, 200);
        sg_session_on_message(w->s, SG_WIRE_CONTROL_CHANNEL, strlen(SG_WIRE_CONTROL_CHANNEL), (const char *)raw, n);
        break;
    }
    case 3:
        sg_session_on_subscribed(w->s, SG_WIRE_CONTROL_CHANNEL, strlen(SG_WIRE_CONTROL_CHANNEL));
        break;
    default:
        /* a handshake's check, for a connection id the session does not know yet */
        sg_session_check_sub(w->s, 100 + byte(in), PICK(SUBS, in), on_checked, NULL);
        break;
    }
}

static void channel_message(world *w, input *in)
{
    if (byte(in) & 1) {
        static const char *const F[] = {"{\"type\":\"relay\",\"seq\":1}",
                                        "{\"type\":\"peer_joined\",\"roomId\":\"r0\",\"peerId\":\"22222222-2222-4222-8222-222222222222\"}",
                                        "{\"type\":\"peer_left\",\"roomId\":\"r0\",\"peerId\":\"22222222-2222-4222-8222-222222222222\",\"reason\":\"leave\"}",
                                        "{\"type\":\"error\",\"code\":\"replaced\"}"};
        static const char kinds[] = "rrex";
        uint8_t k = byte(in) % 5;
        if (k == 4) { /* several relays in one envelope */
            const char *frames[] = {F[0], F[0], byte(in) & 1 ? F[0] : NULL, NULL};
            world_deliver_batch(w, PICK(ROOMS, in), PICK(PEERS, in), pick_conn(in), byte(in) % 12, frames);
            return;
        }
        world_deliver(w, PICK(ROOMS, in), PICK(PEERS, in), pick_conn(in), kinds[k], byte(in) % 12, F[k]);
        return;
    }
    const uint8_t *ch, *pl;
    size_t chn = chunk(in, &ch, 200), pln = chunk(in, &pl, 600);
    sg_session_on_message(w->s, (const char *)ch, chn, (const char *)pl, pln);
}

static void run(world *w, input *in)
{
    bool used[NCONN + 1] = {false};
    while (in->n) {
        switch (byte(in) % 14) {
        case 0: {
            /* Connection ids are never reused (as in conn.c): a slot opens once. */
            uint64_t id = pick_conn(in);
            const char *sub = PICK(SUBS, in);
            bool any_room = byte(in) & 1;
            if (!w->conns[id].open && !w->conns[id].nframes && !used[id]) {
                used[id] = true;
                world_open(w, id, sub, any_room ? "*" : NULL);
            }
            break;
        }
        case 1: client_message(w, in); break;
        case 2: {
            /* one read of a socket: its relays to one target go in one call */
            sg_session_read_begin(w->s);
            for (int i = byte(in) % 6; i >= 0; i--)
                client_message(w, in);
            sg_session_read_end(w->s);
            break;
        }
        case 3:
        case 4: answer(w, in); break;
        case 5: world_confirm_all(w); break;
        case 6: channel_message(w, in); break;
        case 7: {
            uint64_t id = pick_conn(in);
            if (w->conns[id].open) {
                sg_session_close(w->s, id, (sg_gone)(byte(in) % 4));
                w->conns[id].open = false;
            }
            break;
        }
        case 8: w->conns[pick_conn(in)].refuse_after = (int)(byte(in) % 4); break;
        case 9: fake_bus_set_available(w->bus, byte(in) % 4 != 0); break;
        case 10: sg_session_on_redis_up(w->s, true); break;
        case 11: sg_session_tick(w->s); break;
        case 12: control_event(w, in); break;
        case 13:
            /* the deferred pass: connections the session asked to close go */
            world_reap_closed(w);
            break;
        }
    }
}

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_session: %s\n", what);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *env[] = {"SIGNAL_ROOM_MAX_PEERS=3", "SIGNAL_ROOMS_PER_CONNECTION=2", NULL};
    world *w = calloc(1, sizeof *w);
    world_init(w, env);
    fake_bus_set_auto_confirm(w->bus, false);
    input in = {data, size};
    run(w, &in);
    /* Everything in flight ends, every connection goes: nothing may stay. */
    fake_bus_set_available(w->bus, true);
    world_confirm_all(w);
    for (uint64_t id = 1; id <= NCONN; id++)
        if (w->conns[id].open) {
            sg_session_close(w->s, id, SG_GONE_DISCONNECT);
            w->conns[id].open = false;
        }
    for (int guard = 0; fake_bus_pending(w->bus) && guard < 10000; guard++) {
        fake_call *c = fake_bus_pop(w->bus);
        sg_session_on_reply(w->s, c->tag, NULL);
        fake_call_free(c);
    }
    check(w->metrics.room_members == 0, "memberships outlived their connections");
    for (size_t r = 0; r < sizeof ROOMS / sizeof *ROOMS; r++)
        for (size_t p = 0; p < sizeof PEERS / sizeof *PEERS; p++) {
            char ch[SG_WIRE_CHANNEL_MAX];
            sg_wire_channel(ch, ROOMS[r], PEERS[p]);
            check(fake_bus_refs(w->bus, ch) == 0, "a channel reference outlived its membership");
        }
    check(w->sends_to_unknown == 0, "a frame was sent to a connection the session was told is gone");
    check(w->closes_of_unknown == 0, "a connection the session was told is gone was closed again");
    world_free(w);
    free(w);
    return 0;
}
