/* SPDX-License-Identifier: Apache-2.0 */
/* The session's state machines, specified with a scripted bus: client
 * messages in, Redis calls out (inspected argument by argument), replies and
 * channel messages back in a chosen order, frames out. No sockets, no
 * sleeps. The integration suite proves the same against real Redis. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "session_world.h"
#include "sg/ops.h"
#include "sg/scripts.h"
#include "sg/wire.h"
#include "sg/util.h"

#define A "11111111-1111-4111-8111-111111111111"
#define B "22222222-2222-4222-8222-222222222222"
#define C "33333333-3333-4333-8333-333333333333"
#define HB "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define HC "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"

/* A reply from a RESP literal, its length counted by the compiler. */
#define REPLY(lit) fake_reply(lit, sizeof lit - 1)

static int setup(void **state)
{
    world *w = calloc(1, sizeof *w);
    world_init(w, NULL);
    *state = w;
    return 0;
}

static int setup_no_resume(void **state)
{
    world *w = calloc(1, sizeof *w);
    const char *env[] = {"SIGNAL_RESUME_MS=0", NULL};
    world_init(w, env);
    *state = w;
    return 0;
}

static int teardown(void **state)
{
    world_free(*state);
    free(*state);
    return 0;
}

static void assert_contains(const char *hay, const char *needle)
{
    if (!hay || !strstr(hay, needle))
        fail_msg("expected %s to contain %s", hay ? hay : "(nothing)", needle);
}

static void free_call(fake_call *c)
{
    assert_non_null(c);
    fake_call_free(c);
}

/* The RESP of a join reply: status, then {peer, subhash} of the others. */
static const char *joined_with_b(void)
{
    return "*3\r\n$6\r\njoined\r\n$36\r\n" B "\r\n$64\r\n" HB "\r\n";
}

/* Redis came back after a reconnect: the heartbeat goes first (answered:
 * nothing dead, not reaped), then whatever else the session sends. */
static void redis_back(world *w)
{
    sg_session_on_redis_up(w->s, true);
    fake_call *hb = fake_bus_pop(w->bus);
    assert_non_null(hb);
    assert_int_equal(hb->script, SG_FN_NODES);
    assert_string_equal(hb->keys[0], "signal:nodes");
    redisReply *r = REPLY("*1\r\n:0\r\n");
    sg_session_on_reply(w->s, hb->tag, r);
    freeReplyObject(r);
    fake_call_free(hb);
}

/* alice on conn 1 joined room r as A (B already there). */
static void join_a(world *w)
{
    world_open(w, 1, "alice", "*");
    world_text(w, 1, "{\"type\":\"join\",\"roomId\":\"r\",\"peerId\":\"" A "\"}");
    fake_call *c = world_answer(w, joined_with_b());
    assert_int_equal(c->script, SG_FN_JOIN);
    fake_call_free(c);
    assert_contains(world_last(w, 1), "\"type\":\"joined\"");
}

/* ---- joins ------------------------------------------------------------ */

static void test_join_waits_for_its_subscription_then_calls_join(void **state)
{
    world *w = *state;
    fake_bus_set_auto_confirm(w->bus, false);
    world_open(w, 1, "alice", "*");
    world_text(w, 1, "{\"type\":\"join\",\"roomId\":\"r\",\"peerId\":\"" A "\",\"correlationId\":\"j1\"}");
    assert_int_equal(fake_bus_pending(w->bus), 0);
    assert_string_equal(fake_bus_unconfirmed(w->bus, 0), "room:{r}:peer:" A);
    world_confirm_all(w);
    fake_call *c = fake_bus_peek(w->bus, 0);
    assert_non_null(c);
    assert_int_equal(c->script, SG_FN_JOIN);
    assert_string_equal(c->keys[0], "room:{r}:peers");
    assert_string_equal(c->keys[3], "room:{r}:acl");
    /* lua/join.lua's ARGV names: room peer holder node subhash sub claim_ok max_peers resume_ms rt ttl_ms */
    assert_int_equal(c->argc, 11);
    assert_string_equal(c->argv[0], "r");
    assert_string_equal(c->argv[1], A);
    char holder[128];
    snprintf(holder, sizeof holder, "%s#1", sg_session_instance(w->s));
    assert_string_equal(c->argv[2], holder);
    assert_int_equal(strncmp(holder, "n1~", 3), 0);
    assert_string_equal(c->argv[3], "n1");
    assert_int_equal(strlen(c->argv[4]), 64);
    assert_string_equal(c->argv[5], "alice");
    assert_string_equal(c->argv[6], "1");
    assert_string_equal(c->argv[8], "30000");
    assert_int_equal(strlen(c->argv[9]), 64);
    /* the room went into the instance's set first, for whoever reaps it */
    assert_non_null(fake_bus_command(w->bus, 0));
    assert_int_equal(strncmp(fake_bus_command(w->bus, 0), "SADD signal:node:{n1~", 21), 0);
    free_call(world_answer(w, joined_with_b()));
    const char *f = world_last(w, 1);
    assert_contains(f, "{\"type\":\"joined\",\"roomId\":\"r\",\"peerId\":\"" A "\",\"peers\":[\"" B "\"]");
    assert_contains(f, "\"correlationId\":\"j1\"");
    const char *rt = strstr(f, "\"resumeToken\":\"");
    assert_non_null(rt);
    assert_int_equal(strcspn(rt + 15, "\""), 32);
    assert_int_equal(w->metrics.room_members, 1);
    assert_true(sg_session_ever_joined(w->s, 1));
}

static void test_a_refused_join_releases_the_membership(void **state)
{
    world *w = *state;
    world_open(w, 1, "alice", NULL);
    world_text(w, 1, "{\"type\":\"join\",\"roomId\":\"r\",\"peerId\":\"" A "\",\"correlationId\":\"j1\"}");
    fake_call *c = world_answer(w, "*2\r\n$5\r\nerror\r\n$9\r\nforbidden\r\n");
    assert_string_equal(c->argv[6], "0"); /* no rooms claim: the acl decides in Redis */
    fake_call_free(c);
    assert_contains(world_last(w, 1), "\"code\":\"forbidden\"");
    assert_contains(world_last(w, 1), "\"correlationId\":\"j1\"");
    assert_contains(world_last(w, 1), "\"roomId\":\"r\"");
    assert_int_equal(fake_bus_refs(w->bus, "room:{r}:peer:" A), 0);
    assert_int_equal(w->metrics.room_members, 0);
    assert_false(sg_session_ever_joined(w->s, 1));
    world_text(w, 1, "{\"type\":\"join\",\"roomId\":\"r\",\"peerId\":\"" A "\"}");
    assert_int_equal(fake_bus_pending(w->bus), 1); /* free to try again */
}

static void test_a_join_answered_after_its_connection_went_is_undone(void **state)
{
    world *w = *state;
    world_open(w, 1, "alice", "*");
    world_text(w, 1, "{\"type\":\"join\",\"roomId\":\"r\",\"peerId\":\"" A "\"}");
    sg_session_close(w->s, 1, SG_GONE_DISCONNECT);
    w->conns[1].open = false;
    free_call(world_answer(w, joined_with_b()));
    fake_call *leave = fake_bus_pop(w->bus);
    assert_non_null(leave);
    assert_int_equal(leave->script, SG_FN_LEAVE);
    assert_string_equal(leave->argv[1], A);
    assert_int_equal(strncmp(leave->argv[2], "n1~", 3), 0);
    assert_string_equal(leave->argv[3], "disconnect");
    world_lose(w, leave);
    assert_int_equal(w->sends_to_unknown, 0);
    assert_int_equal(w->metrics.room_members, 0);
}

static void test_closing_leaves_every_room_with_its_reason(void **state)
{
    world *w = *state;
    join_a(w);
    world_text(w, 1, "{\"type\":\"join\",\"roomId\":\"q\",\"peerId\":\"" A "\"}");
    free_call(world_answer(w, "*1\r\n$6\r\njoined\r\n"));
    sg_session_close(w->s, 1, SG_GONE_LOST);
    for (int i = 0; i < 2; i++) {
        fake_call *c = fake_bus_pop(w->bus);
        assert_non_null(c);
        assert_int_equal(c->script, SG_FN_LEAVE);
        assert_string_equal(c->argv[3], "lost"); /* resumption on: the grace period */
        world_lose(w, c);
    }
    assert_int_equal(w->metrics.room_members, 0);
    assert_int_equal(fake_bus_refs(w->bus, "room:{r}:peer:" A), 0);
    sg_session_close(w->s, 1, SG_GONE_LOST); /* idempotent */
    assert_int_equal(fake_bus_pending(w->bus), 0);
}

static void test_without_resumption_a_lost_connection_disconnects(void **state)
{
    world *w = *state;
    join_a(w);
    sg_session_close(w->s, 1, SG_GONE_TIMEOUT);
    fake_call *c = fake_bus_pop(w->bus);
    assert_string_equal(c->argv[3], "timeout");
    world_lose(w, c);
    /* and the joined frame carried no resume token */
    assert_null(strstr(world_frame(w, 1, 0), "resumeToken"));
}

static void test_redis_away_answers_unavailable(void **state)
{
    world *w = *state;
    world_open(w, 1, "alice", "*");
    fake_bus_set_available(w->bus, false);
    world_text(w, 1, "{\"type\":\"join\",\"roomId\":\"r\",\"peerId\":\"" A "\",\"correlationId\":\"x\"}");
    assert_contains(world_last(w, 1), "\"code\":\"unavailable\"");
    assert_contains(world_last(w, 1), "\"correlationId\":\"x\"");
    assert_int_equal(fake_bus_refs(w->bus, "room:{r}:peer:" A), 0);
}

/* A connection that ends while Redis is away: its leave goes once Redis
 * answers again, and one whose answer was lost goes again. */
static void test_a_leave_redis_never_answered_goes_again(void **state)
{
    world *w = *state;
    join_a(w);
    fake_bus_set_available(w->bus, false);
    sg_session_close(w->s, 1, SG_GONE_DISCONNECT);
    w->conns[1].open = false;
    assert_int_equal(fake_bus_pending(w->bus), 0);
    sg_session_tick(w->s); /* nothing goes while Redis is away */
    assert_int_equal(fake_bus_pending(w->bus), 0);
    fake_bus_set_available(w->bus, true);
    sg_session_tick(w->s);
    fake_call *c;
    while ((c = fake_bus_pop(w->bus)) && c->script != SG_FN_LEAVE)
        world_lose(w, c);
    assert_non_null(c);
    assert_string_equal(c->argv[0], "r");
    assert_string_equal(c->argv[1], A);
    assert_string_equal(c->argv[3], "disconnect");
    /* the connection that left, not another: "<instance>#1" */
    assert_int_equal(strncmp(c->argv[2], "n1~", 3), 0);
    assert_string_equal(c->argv[2] + strlen(c->argv[2]) - 2, "#1");
    /* its answer lost with the connection: once more, then done */
    world_lose(w, c);
    sg_session_tick(w->s);
    while ((c = fake_bus_pop(w->bus)) && c->script != SG_FN_LEAVE)
        world_lose(w, c);
    assert_non_null(c);
    assert_string_equal(c->argv[1], A);
    redisReply *r = REPLY("*1\r\n$4\r\nleft\r\n");
    sg_session_on_reply(w->s, c->tag, r);
    freeReplyObject(r);
    fake_call_free(c);
    sg_session_tick(w->s);
    while ((c = fake_bus_pop(w->bus))) {
        assert_int_not_equal(c->script, SG_FN_LEAVE);
        world_lose(w, c);
    }
}

/* ---- relays ------------------------------------------------------------- */

static void test_a_relay_carries_the_frame_its_target_gets(void **state)
{
    world *w = *state;
    join_a(w);
    size_t before = world_count(w, 1);
    world_text(w, 1, "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" A "\",\"to\":\"" B "\",\"sdp\":\"v=0\\r\\n\","
                     "\"correlationId\":\"o1\",\"ack\":true}");
    fake_call *c = fake_bus_peek(w->bus, 0);
    assert_int_equal(c->script, SG_FN_RELAY);
    assert_int_equal(c->argc, 9); /* room from to holder settings, then kind ts traceparent frame */
    assert_string_equal(c->argv[5], "offer");
    assert_string_equal(c->argv[8], "{\"type\":\"relay\",\"inner\":{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" A
                                    "\",\"to\":\"" B "\",\"sdp\":\"v=0\\r\\n\"},\"correlationId\":\"o1\"}");
    free_call(world_answer(w, "*3\r\n$2\r\nok\r\n$8\r\nbuffered\r\n:1\r\n")); /* one relay: its result */
    assert_int_equal(world_count(w, 1), before + 1);
    assert_string_equal(world_last(w, 1), "{\"type\":\"ack\",\"correlationId\":\"o1\",\"status\":\"buffered\"}");
}

static void test_a_relay_needs_the_membership_and_its_own_peer_id(void **state)
{
    world *w = *state;
    world_open(w, 2, "alice", "*");
    world_text(w, 2, "{\"type\":\"candidate\",\"roomId\":\"r\",\"from\":\"" A "\",\"to\":\"" B "\","
                     "\"candidate\":{\"candidate\":\"\"}}");
    assert_contains(world_last(w, 2), "\"code\":\"not_joined\"");
    join_a(w);
    world_text(w, 1, "{\"type\":\"candidate\",\"roomId\":\"r\",\"from\":\"" C "\",\"to\":\"" B "\","
                     "\"candidate\":{\"candidate\":\"\"}}");
    assert_contains(world_last(w, 1), "\"code\":\"forbidden\"");
    assert_int_equal(fake_bus_pending(w->bus), 0);
}

static void test_warnings_share_one_clock_for_local_and_redis_limits(void **state)
{
    world *w = *state;
    join_a(w);
    size_t n = world_count(w, 1);
    sg_session_dropped(w->s, 1, "connection");
    assert_int_equal(world_count(w, 1), n + 1);
    assert_contains(world_last(w, 1), "\"code\":\"rate_limited\"");
    world_text(w, 1, "{\"type\":\"candidate\",\"roomId\":\"r\",\"from\":\"" A "\",\"to\":\"" B "\","
                     "\"candidate\":{\"candidate\":\"\"}}");
    free_call(world_answer(w, "*2\r\n$12\r\nrate_limited\r\n$9\r\ncandidate\r\n"));
    assert_int_equal(world_count(w, 1), n + 1); /* within the second: counted, not told */
    /* Other messages over a bucket are each answered with their error. */
    world_text(w, 1, "{\"type\":\"answer\",\"roomId\":\"r\",\"from\":\"" A "\",\"to\":\"" B "\",\"sdp\":\"v=0\"}");
    free_call(world_answer(w, "*2\r\n$12\r\nrate_limited\r\n$4\r\nroom\r\n"));
    assert_int_equal(world_count(w, 1), n + 2);
    assert_contains(world_last(w, 1), "over the room rate limit");
}

/* ---- deliveries --------------------------------------------------------- */

static void test_a_channel_message_goes_to_its_holder_only(void **state)
{
    world *w = *state;
    join_a(w);
    size_t n = world_count(w, 1);
    world_deliver(w, "r", A, 1, 'r', 1, "{\"type\":\"relay\",\"seq\":1}");
    assert_int_equal(world_count(w, 1), n + 1);
    assert_int_equal(w->metrics.relays_delivered, 1);
    /* another node's holder, an unknown connection, a malformed envelope */
    char ch[] = "room:{r}:peer:" A;
    /* the same node id, another run of it: not ours */
    static const char other[] = "n1~00000000#1\tr\t0\t-\t2\n{\"type\":\"relay\"}";
    sg_session_on_message(w->s, ch, strlen(ch), other, sizeof other - 1);
    world_deliver(w, "r", A, 9, 'r', 2, "{}");
    char bad[128];
    int bl = snprintf(bad, sizeof bad, "%s#1\tq\t0\t-\t2\n{}", sg_session_instance(w->s));
    sg_session_on_message(w->s, ch, strlen(ch), bad, (size_t)bl);
    assert_int_equal(world_count(w, 1), n + 1);
    assert_int_equal(w->sends_to_unknown, 0);
}

static void test_replaced_forgets_the_room_without_a_leave(void **state)
{
    world *w = *state;
    join_a(w);
    world_deliver(w, "r", A, 1, 'x', 0, "{\"type\":\"error\",\"code\":\"replaced\",\"message\":\"m\",\"roomId\":\"r\"}");
    assert_contains(world_last(w, 1), "\"code\":\"replaced\"");
    assert_int_equal(w->metrics.room_members, 0);
    assert_int_equal(fake_bus_refs(w->bus, "room:{r}:peer:" A), 0);
    assert_int_equal(fake_bus_pending(w->bus), 0); /* the record is the new holder's: no leave */
    world_text(w, 1, "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" A "\",\"to\":\"" B "\",\"sdp\":\"v=0\"}");
    assert_contains(world_last(w, 1), "\"code\":\"not_joined\"");
}

/* ---- resumption (issue 12, findings 1 and 2) ----------------------------- */

static void sha256_hex(const char *s, char out[65])
{
    uint8_t d[SHA256_DIGEST_LENGTH];
    SHA256((const uint8_t *)s, strlen(s), d);
    sg_hex(out, d, sizeof d);
}

static void resume(world *w, uint64_t id, const char *token, int last_seq)
{
    char msg[512];
    snprintf(msg, sizeof msg,
             "{\"type\":\"resume\",\"roomId\":\"r\",\"peerId\":\"" A "\",\"resumeToken\":\"%s\",\"lastSeq\":%d,"
             "\"correlationId\":\"res\"}",
             token, last_seq);
    world_text(w, id, msg);
}

static void test_a_resume_keeps_only_the_hash_of_any_token_length(void **state)
{
    world *w = *state;
    world_open(w, 1, "alice", "*");
    char longest[129];
    memset(longest, 'k', 128);
    longest[128] = '\0';
    const char *tokens[] = {"a", "abc", "x234567890123456789012345678901", longest};
    for (size_t i = 0; i < 4; i++) {
        resume(w, 1, tokens[i], 0);
        fake_call *c = fake_bus_pop(w->bus);
        assert_non_null(c);
        assert_int_equal(c->script, SG_FN_RESUME);
        char want[65];
        sha256_hex(tokens[i], want);
        assert_string_equal(c->argv[5], want); /* rt_old */
        assert_int_equal(strlen(c->argv[6]), 64); /* rt_new */
        assert_string_equal(c->argv[8], "1");     /* claim_ok: authorized as a join would be */
        assert_string_equal(c->argv[9], "alice");
        redisReply *r = fake_replyf("*2\r\n$5\r\nerror\r\n$13\r\nresume_failed\r\n");
        sg_session_on_reply(w->s, c->tag, r);
        freeReplyObject(r);
        fake_call_free(c);
        assert_contains(world_last(w, 1), "\"code\":\"resume_failed\"");
    }
}

static const char *resumed_with(const char *buffered)
{
    static char buf[4096];
    snprintf(buf, sizeof buf, "*4\r\n$7\r\nresumed\r\n*2\r\n$36\r\n" B "\r\n$64\r\n" HB "\r\n%s:9\r\n", buffered);
    return buf;
}

static void test_a_resume_replays_then_sends_what_it_held_once_in_order(void **state)
{
    world *w = *state;
    world_open(w, 1, "alice", "*");
    resume(w, 1, "tok", 1);
    /* relays 3 and 4 arrive live while the reply is on its way */
    world_deliver(w, "r", A, 1, 'r', 3, "f3");
    world_deliver(w, "r", A, 1, 'r', 4, "f4");
    assert_int_equal(world_count(w, 1), 0);
    free_call(world_answer(w, resumed_with("*4\r\n$1\r\n2\r\n$2\r\nf2\r\n$1\r\n3\r\n$2\r\nf3\r\n")));
    assert_int_equal(world_count(w, 1), 4);
    assert_contains(world_frame(w, 1, 0), "{\"type\":\"resumed\",\"roomId\":\"r\",\"peerId\":\"" A "\",\"peers\":[\"" B
                                          "\"],\"replayed\":2,\"resumeToken\":\"");
    assert_contains(world_frame(w, 1, 0), "\"correlationId\":\"res\"");
    assert_string_equal(world_frame(w, 1, 1), "f2");
    assert_string_equal(world_frame(w, 1, 2), "f3");
    assert_string_equal(world_frame(w, 1, 3), "f4");
    assert_int_equal(w->metrics.room_members, 1);
}

/* Redis keeps and publishes relay frames without their seq: the target's
 * node puts it in, live, held during a replay and replayed alike. */
#define RELAY_F(cid) "{\"type\":\"relay\",\"inner\":{},\"correlationId\":\"" cid "\"}"
#define RELAY_N(seq, cid) "{\"type\":\"relay\",\"seq\":" seq ",\"inner\":{},\"correlationId\":\"" cid "\"}"
static void test_the_target_node_numbers_relays(void **state)
{
    world *w = *state;
    world_open(w, 1, "alice", "*");
    resume(w, 1, "tok", 1);
    world_deliver(w, "r", A, 1, 'r', 3, RELAY_F("c3")); /* live, held while the replay is out */
    free_call(world_answer(w, resumed_with("*2\r\n$1\r\n2\r\n$48\r\n" RELAY_F("c2") "\r\n")));
    assert_int_equal(world_count(w, 1), 3);
    assert_string_equal(world_frame(w, 1, 1), RELAY_N("2", "c2"));
    assert_string_equal(world_frame(w, 1, 2), RELAY_N("3", "c3"));
    world_deliver(w, "r", A, 1, 'r', 4, RELAY_F("c4"));
    assert_string_equal(world_last(w, 1), RELAY_N("4", "c4"));
    world_deliver(w, "r", A, 1, 'r', 5, RELAY_N("5", "c5")); /* numbered already: once */
    assert_string_equal(world_last(w, 1), RELAY_N("5", "c5"));
}

#define CAND(to, cid) "{\"type\":\"candidate\",\"roomId\":\"r\",\"from\":\"" A "\",\"to\":\"" to "\"," \
                      "\"candidate\":{\"candidate\":\"\"},\"correlationId\":\"" cid "\",\"ack\":true}"
#define ACK(cid, status) "{\"type\":\"ack\",\"correlationId\":\"" cid "\",\"status\":\"" status "\"}"

/* What one read brings for one target goes to Redis in one call (one
 * membership check, one publish), each relay answered in order with its
 * own result. */
static void test_relays_of_one_read_go_in_one_call_answered_in_order(void **state)
{
    world *w = *state;
    join_a(w);
    size_t n = world_count(w, 1);
    sg_session_read_begin(w->s);
    world_text(w, 1, CAND(B, "k1"));
    world_text(w, 1, CAND(B, "k2"));
    world_text(w, 1, "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" A "\",\"to\":\"" B "\",\"sdp\":\"v=0\","
                     "\"correlationId\":\"k3\",\"ack\":true}");
    assert_int_equal(fake_bus_pending(w->bus), 0); /* not before the read ends */
    sg_session_read_end(w->s);
    assert_int_equal(fake_bus_pending(w->bus), 1);
    fake_call *c = fake_bus_peek(w->bus, 0);
    assert_int_equal(c->script, SG_FN_RELAY);
    assert_int_equal(c->argc, 5 + 3 * 4);
    assert_string_equal(c->argv[5], "candidate");
    assert_string_equal(c->argv[9], "candidate");
    assert_string_equal(c->argv[13], "offer");
    assert_contains(c->argv[8], "\"correlationId\":\"k1\"");
    assert_contains(c->argv[12], "\"correlationId\":\"k2\"");
    assert_contains(c->argv[16], "\"correlationId\":\"k3\"");
    free_call(world_answer(w, "*3\r\n*3\r\n$2\r\nok\r\n$9\r\ndelivered\r\n:1\r\n"
                              "*2\r\n$12\r\nrate_limited\r\n$9\r\ncandidate\r\n"
                              "*3\r\n$2\r\nok\r\n$8\r\nbuffered\r\n:2\r\n"));
    assert_int_equal(world_count(w, 1), n + 3);
    assert_string_equal(world_frame(w, 1, n), ACK("k1", "delivered"));
    assert_string_equal(world_frame(w, 1, n + 1), ACK("k2", "dropped"));
    assert_string_equal(world_frame(w, 1, n + 2), ACK("k3", "buffered"));
    /* outside a read each relay goes at once */
    world_text(w, 1, CAND(B, "k4"));
    assert_int_equal(fake_bus_pending(w->bus), 1);
    free_call(world_answer(w, "*2\r\n$5\r\nerror\r\n$14\r\npeer_not_found\r\n"));
    assert_contains(world_last(w, 1), "\"code\":\"peer_not_found\"");
    assert_contains(world_last(w, 1), "\"correlationId\":\"k4\"");
}

/* Another target or any other message ends the batch first: Redis sees
 * what the connection sent in the order it sent it. */
static void test_another_target_or_message_ends_a_batch_in_order(void **state)
{
    world *w = *state;
    join_a(w);
    sg_session_read_begin(w->s);
    world_text(w, 1, CAND(B, "k1"));
    world_text(w, 1, CAND(C, "k2"));
    world_text(w, 1, CAND(C, "k3"));
    world_text(w, 1, "{\"type\":\"leave\",\"roomId\":\"r\",\"peerId\":\"" A "\"}");
    assert_int_equal(fake_bus_pending(w->bus), 3);
    sg_session_read_end(w->s);
    assert_int_equal(fake_bus_pending(w->bus), 3);
    fake_call *c = fake_bus_peek(w->bus, 0);
    assert_int_equal(c->script, SG_FN_RELAY);
    assert_int_equal(c->argc, 9);
    assert_string_equal(c->argv[2], B);
    c = fake_bus_peek(w->bus, 1);
    assert_int_equal(c->script, SG_FN_RELAY);
    assert_int_equal(c->argc, 13);
    assert_string_equal(c->argv[2], C);
    assert_int_equal(fake_bus_peek(w->bus, 2)->script, SG_FN_LEAVE);
    free_call(world_answer(w, NULL));
    size_t n = world_count(w, 1);
    /* one result for a whole call (lua/relay.lua refuses them all so) is each relay's */
    free_call(world_answer(w, "*2\r\n$5\r\nerror\r\n$14\r\npeer_not_found\r\n"));
    assert_int_equal(world_count(w, 1), n + 2);
    assert_contains(world_frame(w, 1, n), "\"correlationId\":\"k2\"");
    assert_contains(world_frame(w, 1, n), "\"code\":\"peer_not_found\"");
    assert_contains(world_frame(w, 1, n + 1), "\"correlationId\":\"k3\"");
    assert_contains(world_frame(w, 1, n + 1), "\"code\":\"peer_not_found\"");
    free_call(world_answer(w, NULL));
}

static void test_a_batch_is_capped_and_its_lost_reply_answers_each(void **state)
{
    world *w = *state;
    join_a(w);
    size_t n = world_count(w, 1);
    sg_session_read_begin(w->s);
    char cid[8];
    for (int i = 0; i < SG_RELAY_BATCH_MAX + 1; i++) {
        char msg[256];
        snprintf(cid, sizeof cid, "c%d", i);
        snprintf(msg, sizeof msg, CAND(B, "%s"), cid);
        world_text(w, 1, msg);
    }
    sg_session_read_end(w->s);
    assert_int_equal(fake_bus_pending(w->bus), 2);
    assert_int_equal(fake_bus_peek(w->bus, 0)->argc, 5 + 4 * SG_RELAY_BATCH_MAX);
    assert_int_equal(fake_bus_peek(w->bus, 1)->argc, 9);
    free_call(world_answer(w, NULL)); /* Redis went away with the call */
    assert_int_equal(world_count(w, 1), n + SG_RELAY_BATCH_MAX);
    for (int i = 0; i < SG_RELAY_BATCH_MAX; i++) {
        snprintf(cid, sizeof cid, "c%d", i);
        assert_contains(world_frame(w, 1, n + (size_t)i), "\"code\":\"unavailable\"");
        assert_contains(world_frame(w, 1, n + (size_t)i), cid);
    }
    free_call(world_answer(w, "-ERR boom\r\n")); /* a script error is the relay's */
    assert_contains(world_last(w, 1), "\"code\":\"internal\"");
}

/* Several relays in one channel message: each numbered from the first
 * seq, sent in order, the ones already sent left out, a malformed rest
 * ignored. */
static void test_a_batch_envelope_delivers_each_relay_in_order(void **state)
{
    world *w = *state;
    join_a(w);
    size_t n = world_count(w, 1);
    const char *first[] = {RELAY_F("d1"), RELAY_F("d2"), RELAY_F("d3"), NULL};
    world_deliver_batch(w, "r", A, 1, 4, first);
    assert_int_equal(world_count(w, 1), n + 3);
    assert_string_equal(world_frame(w, 1, n), RELAY_N("4", "d1"));
    assert_string_equal(world_frame(w, 1, n + 1), RELAY_N("5", "d2"));
    assert_string_equal(world_frame(w, 1, n + 2), RELAY_N("6", "d3"));
    assert_int_equal(w->metrics.relays_delivered, 3);
    const char *again[] = {RELAY_F("d3"), RELAY_F("d4"), NULL};
    world_deliver_batch(w, "r", A, 1, 6, again);
    assert_int_equal(world_count(w, 1), n + 4);
    assert_string_equal(world_last(w, 1), RELAY_N("7", "d4"));
    /* a length past the end: nothing of it is sent */
    char ch[] = "room:{r}:peer:" A;
    char bad[256];
    int bl = snprintf(bad, sizeof bad, "%s#1\tb\t2\t-\t8\n1\t-\t2\nf81\t-\t999\nf9", sg_session_instance(w->s));
    sg_session_on_message(w->s, ch, strlen(ch), bad, (size_t)bl);
    assert_int_equal(world_count(w, 1), n + 5);
    assert_string_equal(world_last(w, 1), "f8");
}

/* A member kicked while it was away: its resume is answered "kicked" with
 * the application's reason (lua/resume.lua), not resume_failed, and the
 * room is forgotten here as after a kick: no membership, no subscription,
 * no leave. */
static void test_a_resume_after_a_kick_while_away_says_kicked(void **state)
{
    world *w = *state;
    world_open(w, 1, "alice", "*");
    resume(w, 1, "tok", 0);
    assert_int_equal(fake_bus_refs(w->bus, "room:{r}:peer:" A), 1);
    free_call(world_answer(w, "*3\r\n$5\r\nerror\r\n$6\r\nkicked\r\n$10\r\nseat taken\r\n"));
    assert_string_equal(world_last(w, 1),
                        "{\"type\":\"error\",\"code\":\"kicked\",\"message\":\"seat taken\",\"roomId\":\"r\"}");
    assert_int_equal(fake_bus_refs(w->bus, "room:{r}:peer:" A), 0);
    assert_int_equal(fake_bus_pending(w->bus), 0);
    assert_int_equal(w->metrics.room_members, 0);
    assert_int_equal(w->conns[1].close_code, 0);
    /* the room is not held: a relay into it is refused */
    world_text(w, 1, "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" A "\",\"to\":\"" B "\",\"sdp\":\"v=0\"}");
    assert_contains(world_last(w, 1), "\"code\":\"not_joined\"");
}

static void test_a_resumed_frame_refused_frees_nothing_twice(void **state)
{
    world *w = *state;
    world_open(w, 1, "alice", "*");
    resume(w, 1, "short", 0);
    world_deliver(w, "r", A, 1, 'r', 2, "f2"); /* held */
    w->conns[1].refuse_after = 0;              /* over its output cap from now on */
    free_call(world_answer(w, resumed_with("*2\r\n$1\r\n1\r\n$2\r\nf1\r\n")));
    assert_int_equal(world_count(w, 1), 0);
    assert_int_equal(w->conns[1].sends_refused, 1); /* the first refusal stops the writing */
    /* The connection's owner releases it later, from the top of the loop. */
    sg_session_close(w->s, 1, SG_GONE_LOST);
    fake_call *c = fake_bus_pop(w->bus);
    assert_int_equal(c->script, SG_FN_LEAVE);
    assert_string_equal(c->argv[3], "lost");
    world_lose(w, c);
    assert_int_equal(w->metrics.room_members, 0);
}

static void test_a_resume_for_a_gone_connection_goes_back_into_grace(void **state)
{
    world *w = *state;
    world_open(w, 1, "alice", "*");
    resume(w, 1, "tok", 0);
    sg_session_close(w->s, 1, SG_GONE_DISCONNECT);
    w->conns[1].open = false;
    /* Redis runs the resume first, then this leave: the member leaves. */
    fake_call *resume_call = fake_bus_pop(w->bus);
    fake_call *c = fake_bus_pop(w->bus);
    assert_int_equal(c->script, SG_FN_LEAVE);
    assert_string_equal(c->argv[3], "disconnect");
    world_lose(w, c);
    /* The resume's answer finds no connection: whatever it resumed goes
     * back into grace (a no-op in Redis after that leave). */
    redisReply *r = fake_reply(resumed_with("*0\r\n"), strlen(resumed_with("*0\r\n")));
    sg_session_on_reply(w->s, resume_call->tag, r);
    freeReplyObject(r);
    fake_call_free(resume_call);
    c = fake_bus_pop(w->bus);
    assert_int_equal(c->script, SG_FN_LEAVE);
    assert_string_equal(c->argv[3], "lost");
    world_lose(w, c);
    assert_int_equal(w->sends_to_unknown, 0);
}

/* ---- Redis came back ---------------------------------------------------- */

static void test_catch_up_after_a_subscriber_gap_is_exactly_once(void **state)
{
    world *w = *state;
    join_a(w);
    size_t n = world_count(w, 1);
    world_deliver(w, "r", A, 1, 'r', 1, "f1");
    redis_back(w);
    fake_call *refresh = fake_bus_pop(w->bus);
    assert_int_equal(refresh->script, SG_FN_REASSERT);
    world_lose(w, refresh);
    fake_call *cu = fake_bus_peek(w->bus, 0);
    assert_int_equal(cu->script, SG_FN_CATCHUP);
    assert_string_equal(cu->argv[2], "1"); /* the last seq this node delivered */
    world_deliver(w, "r", A, 1, 'r', 3, "f3"); /* live, while the catch-up is out: held */
    assert_int_equal(world_count(w, 1), n + 1);
    free_call(world_answer(w, "*2\r\n:0\r\n*4\r\n$1\r\n2\r\n$2\r\nf2\r\n$1\r\n3\r\n$2\r\nf3\r\n"));
    assert_int_equal(world_count(w, 1), n + 3);
    assert_string_equal(world_frame(w, 1, n + 1), "f2");
    assert_string_equal(world_frame(w, 1, n + 2), "f3");
}

static void test_a_relay_read_after_the_replay_that_sent_it_is_not_sent_twice(void **state)
{
    world *w = *state;
    join_a(w);
    world_deliver(w, "r", A, 1, 'r', 1, "f1");
    redis_back(w);
    world_lose(w, fake_bus_pop(w->bus)); /* the re-assert */
    /* The catch-up's reply (command connection) comes before relay 2, which
     * Redis published before running the catch-up (subscriber connection). */
    free_call(world_answer(w, "*2\r\n:0\r\n*2\r\n$1\r\n2\r\n$2\r\nf2\r\n"));
    size_t n = world_count(w, 1);
    assert_string_equal(world_last(w, 1), "f2");
    world_deliver(w, "r", A, 1, 'r', 2, "f2");
    assert_int_equal(world_count(w, 1), n);
    world_deliver(w, "r", A, 1, 'r', 3, "f3");
    assert_int_equal(world_count(w, 1), n + 1);
    /* after Redis lost the buffer the catch-up resets the numbering: seq 1 is new */
    redis_back(w);
    world_lose(w, fake_bus_pop(w->bus));
    free_call(world_answer(w, "*2\r\n:1\r\n*2\r\n$1\r\n1\r\n$3\r\nnf1\r\n"));
    assert_string_equal(world_last(w, 1), "nf1");
    world_deliver(w, "r", A, 1, 'r', 2, "nf2");
    assert_string_equal(world_last(w, 1), "nf2");
}

static void test_ghosts_go_back_with_their_owners_sub_hash_only(void **state)
{
    world *w = *state;
    join_a(w); /* B (hash HB) was in the room */
    char ev[256];
    snprintf(ev, sizeof ev, "{\"type\":\"peer_joined\",\"roomId\":\"r\",\"peerId\":\"%s\"}", C);
    /* C's join event carries C's sub hash in the envelope */
    char ch[] = "room:{r}:peer:" A;
    char env[512];
    int len = snprintf(env, sizeof env, "%s#1\te\t0\t%s\t0\n%s", sg_session_instance(w->s), HC, ev);
    sg_session_on_message(w->s, ch, strlen(ch), env, (size_t)len);
    redis_back(w);
    fake_call *c = fake_bus_pop(w->bus);
    assert_int_equal(c->script, SG_FN_REASSERT);
    /* fixed 6, then: room, nghosts, (peer, subhash)..., nmembers, members */
    assert_string_equal(c->argv[0], "1"); /* silent */
    assert_string_equal(c->argv[6], "r");
    assert_string_equal(c->argv[7], "2");
    bool b = false, cc = false;
    for (int i = 8; i < 12; i += 2) {
        b |= strcmp(c->argv[i], B) == 0 && strcmp(c->argv[i + 1], HB) == 0;
        cc |= strcmp(c->argv[i], C) == 0 && strcmp(c->argv[i + 1], HC) == 0;
    }
    assert_true(b && cc);
    assert_string_equal(c->argv[12], "1");
    assert_string_equal(c->argv[13], A);
    world_lose(w, c);
    /* B leaves: no longer a ghost candidate */
    snprintf(ev, sizeof ev, "{\"type\":\"peer_left\",\"roomId\":\"r\",\"peerId\":\"%s\",\"reason\":\"leave\"}", B);
    world_deliver(w, "r", A, 1, 'e', 0, ev);
    while (fake_bus_pending(w->bus))
        world_lose(w, fake_bus_pop(w->bus));
    redis_back(w);
    c = fake_bus_pop(w->bus);
    assert_string_equal(c->argv[7], "1");
    assert_string_equal(c->argv[8], C);
    world_lose(w, c);
}

/* ---- liveness (lua/nodes.lua, reap.lua, expire.lua) ---------------------- */

static void tick_at_least(world *w, int n)
{
    for (int i = 0; i < n; i++)
        sg_session_tick(w->s);
}

/* Commands that take a room out of the instance's set. */
static size_t count_srems(world *w)
{
    size_t n = 0;
    for (size_t i = 0; i < fake_bus_commands(w->bus); i++)
        n += strncmp(fake_bus_command(w->bus, i), "SREM ", 5) == 0;
    return n;
}

static void test_a_lost_connection_s_grace_period_is_watched_and_ended(void **state)
{
    world *w = *state;
    join_a(w);
    sg_session_close(w->s, 1, SG_GONE_LOST);
    fake_call *leave = fake_bus_pop(w->bus);
    assert_string_equal(leave->argv[3], "lost");
    /* {"grace", until}: a deadline already passed, so the next tick ends it */
    char reply[64];
    snprintf(reply, sizeof reply, "*2\r\n$5\r\ngrace\r\n:%llu\r\n", (unsigned long long)(sg_now_wall_ms() - 1));
    redisReply *r = fake_reply(reply, strlen(reply));
    sg_session_on_reply(w->s, leave->tag, r);
    freeReplyObject(r);
    fake_call_free(leave);
    size_t srems = count_srems(w);
    tick_at_least(w, 1);
    fake_call *c;
    while ((c = fake_bus_pop(w->bus)) && c->script != SG_FN_EXPIRE)
        world_lose(w, c);
    assert_non_null(c);
    assert_string_equal(c->argv[0], "r");
    assert_string_equal(c->argv[1], A);
    assert_int_equal(count_srems(w), srems); /* still its room until the answer */
    r = REPLY("$7\r\nexpired\r\n");
    sg_session_on_reply(w->s, c->tag, r);
    freeReplyObject(r);
    fake_call_free(c);
    /* nothing left to answer for in r: out of the instance's set */
    const char *last = fake_bus_command(w->bus, fake_bus_commands(w->bus) - 1);
    assert_int_equal(strncmp(last, "SREM signal:node:{n1~", 21), 0);
    assert_string_equal(last + strlen(last) - 8, ":rooms r");
}

static void test_a_dead_instance_is_reaped_room_by_room_then_forgotten(void **state)
{
    world *w = *state;
    sg_session_tick(w->s);
    fake_call *hb = fake_bus_pop(w->bus);
    assert_int_equal(hb->script, SG_FN_NODES);
    redisReply *r = REPLY("*2\r\n:0\r\n$10\r\nn2~deadbee\r\n");
    sg_session_on_reply(w->s, hb->tag, r);
    freeReplyObject(r);
    fake_call_free(hb);
    fake_call *rooms = fake_bus_pop(w->bus);
    assert_int_equal(rooms->script, -1);
    assert_string_equal(rooms->argv[0], "SMEMBERS");
    assert_string_equal(rooms->argv[1], "signal:node:{n2~deadbee}:rooms");
    r = REPLY("*2\r\n$2\r\nr1\r\n$2\r\nr2\r\n");
    sg_session_on_reply(w->s, rooms->tag, r);
    freeReplyObject(r);
    fake_call_free(rooms);
    fake_call *reap1 = fake_bus_pop(w->bus), *reap2 = fake_bus_pop(w->bus);
    assert_int_equal(reap1->script, SG_FN_REAP);
    assert_string_equal(reap1->argv[0], "r1");
    assert_string_equal(reap1->argv[1], "n2~deadbee");
    assert_int_equal(strncmp(reap1->argv[2], "n1~", 3), 0);
    assert_int_equal(reap2->script, SG_FN_REAP);
    size_t cmds = fake_bus_commands(w->bus);
    /* r1: one member now in its grace period, watched here */
    char reply[96];
    snprintf(reply, sizeof reply, "*2\r\n$36\r\n" B "\r\n$13\r\n%llu\r\n", (unsigned long long)sg_now_wall_ms() + 60000);
    r = fake_reply(reply, strlen(reply));
    sg_session_on_reply(w->s, reap1->tag, r);
    freeReplyObject(r);
    assert_int_equal(fake_bus_commands(w->bus), cmds); /* not forgotten before r2 is done */
    r = REPLY("*0\r\n");
    sg_session_on_reply(w->s, reap2->tag, r);
    freeReplyObject(r);
    fake_call_free(reap1);
    fake_call_free(reap2);
    bool zrem = false, del = false, srem_r2 = false, srem_r1 = false;
    for (size_t i = cmds; i < fake_bus_commands(w->bus); i++) {
        const char *cmd = fake_bus_command(w->bus, i);
        zrem |= strcmp(cmd, "ZREM signal:nodes n2~deadbee") == 0;
        del |= strcmp(cmd, "DEL signal:node:{n2~deadbee}:rooms") == 0;
        srem_r2 |= strncmp(cmd, "SREM", 4) == 0 && strstr(cmd, " r2");
        srem_r1 |= strncmp(cmd, "SREM", 4) == 0 && strstr(cmd, " r1");
    }
    assert_true(zrem && del);
    assert_true(srem_r2);  /* nothing to watch there */
    assert_false(srem_r1); /* B's grace period is ours to end */
}

static void test_found_reaped_it_puts_its_members_back(void **state)
{
    world *w = *state;
    join_a(w);
    for (int round = 0; round < 2; round++) {
        /* the first heartbeat of a life finds no entry: not a reaping */
        sg_session_on_redis_up(w->s, false);
        fake_call *hb = fake_bus_pop(w->bus);
        redisReply *r = REPLY("*1\r\n:1\r\n");
        sg_session_on_reply(w->s, hb->tag, r);
        freeReplyObject(r);
        fake_call_free(hb);
    }
    fake_call *c = fake_bus_pop(w->bus);
    assert_non_null(c);
    assert_int_equal(c->script, SG_FN_REASSERT);
    assert_string_equal(c->argv[0], "0"); /* not silent: room-mates saw it go */
    assert_null(fake_bus_pop(w->bus));
    world_lose(w, c);
}

/* ---- backend control (lua/control.lua; PROTOCOL.md §9) ------------------ */

/* conn id of user sub joins room as peer (the scripted join answers
 * "joined" with nobody else). */
static void join_as(world *w, uint64_t id, const char *room, const char *peer)
{
    char msg[256];
    snprintf(msg, sizeof msg, "{\"type\":\"join\",\"roomId\":\"%s\",\"peerId\":\"%s\"}", room, peer);
    world_text(w, id, msg);
    free_call(world_answer(w, "*1\r\n$6\r\njoined\r\n"));
    assert_contains(world_last(w, id), "\"type\":\"joined\"");
}

static void test_a_kick_drops_the_room_without_a_leave_and_keeps_the_others(void **state)
{
    world *w = *state;
    join_a(w);
    join_as(w, 1, "r2", A);
    assert_int_equal(w->metrics.room_members, 2);
    world_deliver_meta(w, "r", A, 1, 'k', "kick", "be \"nice\"");
    assert_string_equal(world_last(w, 1), "{\"type\":\"error\",\"code\":\"kicked\",\"message\":\"be \\\"nice\\\"\","
                                          "\"roomId\":\"r\"}");
    assert_int_equal(fake_bus_pending(w->bus), 0); /* Redis removed the member already: no leave */
    assert_int_equal(w->metrics.room_members, 1);
    assert_int_equal(fake_bus_refs(w->bus, "room:{r}:peer:" A), 0);
    assert_int_equal(fake_bus_refs(w->bus, "room:{r2}:peer:" A), 1);
    assert_int_equal(w->conns[1].close_code, 0); /* the connection stays open */
    world_text(w, 1, "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" A "\",\"to\":\"" B "\",\"sdp\":\"v=0\"}");
    assert_contains(world_last(w, 1), "\"code\":\"not_joined\"");
    world_text(w, 1, "{\"type\":\"offer\",\"roomId\":\"r2\",\"from\":\"" A "\",\"to\":\"" B "\",\"sdp\":\"v=0\"}");
    fake_call *c = fake_bus_pop(w->bus);
    assert_non_null(c);
    assert_int_equal(c->script, SG_FN_RELAY);
    world_lose(w, c);
    /* a closed room's kick counts as such */
    world_deliver_meta(w, "r2", A, 1, 'k', "close_room", "");
    assert_contains(world_last(w, 1), "\"message\":\"" SG_WIRE_KICK_DEFAULT "\",\"roomId\":\"r2\"");
    assert_int_equal(w->metrics.room_members, 0);
    assert_int_equal(fake_bus_pending(w->bus), 0);
    bool kick = false, closed = false;
    for (int i = 0; i < w->metrics.control.n; i++) {
        kick |= strcmp(w->metrics.control.values[i], "kick") == 0 && w->metrics.control.counts[i] == 1;
        closed |= strcmp(w->metrics.control.values[i], "close_room") == 0 && w->metrics.control.counts[i] == 1;
    }
    assert_true(kick && closed);
    /* the session is told later that the connection went: nothing left to leave */
    sg_session_close(w->s, 1, SG_GONE_DISCONNECT);
    assert_int_equal(fake_bus_pending(w->bus), 0);
}

static void test_a_kick_of_a_membership_left_or_not_yet_in_redis_is_stale(void **state)
{
    world *w = *state;
    world_open(w, 1, "alice", "*");
    /* not in the room at all */
    world_deliver_meta(w, "r", A, 1, 'k', "kick", "x");
    assert_int_equal(world_count(w, 1), 0);
    /* a new membership whose join waits for its subscription: the kick was
     * of the one before it */
    fake_bus_set_auto_confirm(w->bus, false);
    world_text(w, 1, "{\"type\":\"join\",\"roomId\":\"r\",\"peerId\":\"" A "\"}");
    world_deliver_meta(w, "r", A, 1, 'k', "kick", "x");
    assert_int_equal(world_count(w, 1), 0);
    world_confirm_all(w);
    fake_call *c = fake_bus_peek(w->bus, 0);
    assert_non_null(c);
    assert_int_equal(c->script, SG_FN_JOIN);
    /* kicked while the join is in flight: the join that then succeeds is undone */
    world_deliver_meta(w, "r", A, 1, 'k', "kick", "x");
    assert_contains(world_last(w, 1), "\"code\":\"kicked\"");
    free_call(world_answer(w, "*1\r\n$6\r\njoined\r\n"));
    c = fake_bus_pop(w->bus);
    assert_non_null(c);
    assert_int_equal(c->script, SG_FN_LEAVE);
    assert_string_equal(c->argv[3], "disconnect");
    world_lose(w, c);
    assert_int_equal(w->metrics.room_members, 0);
    assert_contains(world_last(w, 1), "\"code\":\"kicked\""); /* no joined after it */
}

static uint64_t control_count(const world *w, const char *action)
{
    for (int i = 0; i < w->metrics.control.n; i++)
        if (strcmp(w->metrics.control.values[i], action) == 0)
            return w->metrics.control.counts[i];
    return 0;
}

static void revoke_msg(char *out, size_t cap, const char *sub, int64_t in_ms)
{
    char h[SG_WIRE_SUB_SHA1_LEN + 1];
    sg_wire_sub_sha1(sub, strlen(sub), h);
    snprintf(out, cap, "revoke\t%s\t%llu", h, (unsigned long long)((int64_t)sg_now_wall_ms() + in_ms));
}

static void test_a_revocation_closes_every_connection_of_the_user(void **state)
{
    world *w = *state;
    join_a(w);                       /* alice, conn 1, in r */
    world_open(w, 2, "alice", "*");
    join_as(w, 2, "r2", B);          /* alice again, conn 2, in r2 */
    world_open(w, 3, "bob", "*");
    join_as(w, 3, "r", C);           /* bob in r */
    char msg[128];
    revoke_msg(msg, sizeof msg, "alice", -1000); /* already over: nothing happens */
    world_control(w, msg);
    assert_int_equal(w->conns[1].close_code, 0);
    assert_int_equal(fake_bus_pending(w->bus), 0);
    revoke_msg(msg, sizeof msg, "alice", 60000);
    world_control(w, msg);
    assert_int_equal(w->conns[1].close_code, 1008);
    assert_string_equal(w->conns[1].close_reason, "revoked");
    assert_int_equal(w->conns[2].close_code, 1008);
    assert_int_equal(w->conns[3].close_code, 0);
    /* each room hears peer_left "kicked" at once: no grace period */
    int leaves = 0;
    fake_call *c;
    while ((c = fake_bus_pop(w->bus)) != NULL) {
        assert_int_equal(c->script, SG_FN_LEAVE);
        assert_string_equal(c->argv[3], "kicked");
        leaves++;
        world_lose(w, c);
    }
    assert_int_equal(leaves, 2);
    assert_int_equal(w->metrics.room_members, 1);
    assert_int_equal(control_count(w, "revoke"), 2);
    /* nothing more is written to them; their end leaves nothing behind */
    size_t n1 = world_count(w, 1);
    world_deliver(w, "r", A, 1, 'r', 1, "late");
    assert_int_equal(world_count(w, 1), n1);
    assert_int_equal(world_reap_closed(w), 2);
    assert_int_equal(fake_bus_pending(w->bus), 0);
    assert_int_equal(w->closes_of_unknown, 0);
    /* malformed control messages are ignored */
    world_control(w, "revoke\tnothex\t1");
    world_control(w, "");
    assert_int_equal(w->conns[3].close_code, 0);
}

typedef struct verdicts {
    int n;
    uint64_t conn;
    sg_sub_verdict v;
} verdicts;

static void on_checked(void *ud, uint64_t conn_id, sg_sub_verdict v)
{
    verdicts *r = ud;
    r->n++;
    r->conn = conn_id;
    r->v = v;
}

/* A check goes out as one ZSCORE; answers it with resp. */
static verdicts check(world *w, const char *sub, const char *resp)
{
    verdicts r = {0};
    assert_int_equal(sg_session_check_sub(w->s, 9, sub, on_checked, &r), SG_SUB_PENDING);
    assert_int_equal(r.n, 0);
    fake_call *c = fake_bus_peek(w->bus, 0);
    assert_non_null(c);
    assert_int_equal(c->script, -1);
    assert_int_equal(c->argc, 3);
    assert_string_equal(c->argv[0], "ZSCORE");
    assert_string_equal(c->argv[1], "signal:{control}:revoked");
    char h[SG_WIRE_SUB_SHA1_LEN + 1];
    sg_wire_sub_sha1(sub, strlen(sub), h);
    assert_string_equal(c->argv[2], h);
    if (resp)
        free_call(world_answer(w, resp));
    else
        world_lose(w, fake_bus_pop(w->bus));
    assert_int_equal(r.n, 1);
    assert_int_equal(r.conn, 9);
    return r;
}

static void test_the_handshake_check_reads_redis_once_without_blocking(void **state)
{
    world *w = *state;
    char future[64], past[64];
    snprintf(future, sizeof future, "$13\r\n%llu\r\n", (unsigned long long)sg_now_wall_ms() + 60000);
    snprintf(past, sizeof past, "$13\r\n%llu\r\n", (unsigned long long)sg_now_wall_ms() - 1000);
    assert_int_equal(check(w, "alice", "$-1\r\n").v, SG_SUB_OK);
    assert_int_equal(check(w, "alice", future).v, SG_SUB_REVOKED);
    assert_int_equal(check(w, "alice", past).v, SG_SUB_OK);
    assert_int_equal(check(w, "alice", NULL).v, SG_SUB_UNAVAILABLE);
    assert_int_equal(check(w, "alice", "-ERR boom\r\n").v, SG_SUB_UNAVAILABLE);
    fake_bus_set_available(w->bus, false);
    verdicts r = {0};
    assert_int_equal(sg_session_check_sub(w->s, 9, "alice", on_checked, &r), SG_SUB_UNAVAILABLE);
    assert_int_equal(fake_bus_pending(w->bus), 0);
    fake_bus_set_available(w->bus, true);
    /* a revocation that crosses the read (its message on the subscriber
     * connection, the read's stale answer after it) still refuses */
    assert_int_equal(sg_session_check_sub(w->s, 9, "alice", on_checked, &r), SG_SUB_PENDING);
    char msg[128];
    revoke_msg(msg, sizeof msg, "alice", 60000);
    world_control(w, msg);
    free_call(world_answer(w, "$-1\r\n"));
    assert_int_equal(r.n, 1);
    assert_int_equal(r.v, SG_SUB_REVOKED);
    /* known here now: refused without asking Redis; other users are not */
    assert_int_equal(sg_session_check_sub(w->s, 9, "alice", on_checked, &r), SG_SUB_REVOKED);
    assert_int_equal(fake_bus_pending(w->bus), 0);
    assert_int_equal(check(w, "bob", "$-1\r\n").v, SG_SUB_OK);
    /* a later, shorter revocation lifts it */
    revoke_msg(msg, sizeof msg, "alice", -1);
    world_control(w, msg);
    assert_int_equal(check(w, "alice", "$-1\r\n").v, SG_SUB_OK);
}

static void test_the_control_subscription_catches_up(void **state)
{
    world *w = *state;
    join_a(w);
    const char *ch = "signal:{control}:events";
    assert_int_equal(fake_bus_refs(w->bus, ch), 1); /* subscribed for the session's life */
    /* it came up while the command connection could not take commands */
    fake_bus_set_available(w->bus, false);
    sg_session_on_subscribed(w->s, ch, strlen(ch));
    assert_int_equal(fake_bus_pending(w->bus), 0);
    fake_bus_set_available(w->bus, true);
    sg_session_on_redis_up(w->s, false);
    fake_call *hb = fake_bus_pop(w->bus);
    assert_int_equal(hb->script, SG_FN_NODES); /* the heartbeat still goes first */
    world_lose(w, hb);
    /* (the control library is the bus's to load, on every master) */
    fake_call *list = fake_bus_pop(w->bus);
    assert_non_null(list);
    assert_string_equal(list->argv[0], "ZRANGEBYSCORE");
    assert_string_equal(list->argv[1], "signal:{control}:revoked");
    assert_int_equal(list->argv[2][0], '(');
    char h[SG_WIRE_SUB_SHA1_LEN + 1], reply[256];
    sg_wire_sub_sha1("alice", 5, h);
    /* a revocation published while this node was not listening */
    snprintf(reply, sizeof reply, "*4\r\n$40\r\n%s\r\n$13\r\n%llu\r\n$3\r\nbad\r\n$1\r\n1\r\n", h,
             (unsigned long long)sg_now_wall_ms() + 60000);
    redisReply *r = fake_reply(reply, strlen(reply));
    sg_session_on_reply(w->s, list->tag, r);
    freeReplyObject(r);
    fake_call_free(list);
    assert_int_equal(w->conns[1].close_code, 1008);
    fake_call *leave = fake_bus_pop(w->bus);
    assert_non_null(leave);
    assert_string_equal(leave->argv[3], "kicked");
    world_lose(w, leave);
    /* and the next handshake of alice is refused without a read */
    verdicts v = {0};
    assert_int_equal(sg_session_check_sub(w->s, 9, "alice", on_checked, &v), SG_SUB_REVOKED);
    /* the next subscription asks again at once */
    sg_session_on_subscribed(w->s, ch, strlen(ch));
    assert_int_equal(fake_bus_pending(w->bus), 1);
}

static void test_control_call_layouts(void **state)
{
    sg_control_call c;
    sg_control_kick(&c, "r", A, "bye");
    const char *kick[] = {"FCALL", "signal_kick", "3", "room:{r}:peers", "room:{r}:buckets", "room:{r}:seq",
                          "r", A, "bye"};
    assert_int_equal(c.argc, 9);
    for (int i = 0; i < c.argc; i++)
        assert_string_equal(c.argv[i], kick[i]);
    sg_control_close_room(&c, "r", NULL);
    assert_int_equal(c.argc, 8);
    assert_string_equal(c.argv[1], "signal_close_room");
    assert_string_equal(c.argv[7], "");
    sg_control_revoke(&c, "alice", 3600);
    const char *rev[] = {"FCALL", "signal_revoke", "1", "signal:{control}:revoked", "alice", "3600"};
    assert_int_equal(c.argc, 6);
    for (int i = 0; i < c.argc; i++)
        assert_string_equal(c.argv[i], rev[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_join_waits_for_its_subscription_then_calls_join, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_refused_join_releases_the_membership, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_join_answered_after_its_connection_went_is_undone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_closing_leaves_every_room_with_its_reason, setup, teardown),
        cmocka_unit_test_setup_teardown(test_without_resumption_a_lost_connection_disconnects, setup_no_resume,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_redis_away_answers_unavailable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_leave_redis_never_answered_goes_again, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_relay_carries_the_frame_its_target_gets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_relay_needs_the_membership_and_its_own_peer_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_warnings_share_one_clock_for_local_and_redis_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_channel_message_goes_to_its_holder_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replaced_forgets_the_room_without_a_leave, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_resume_keeps_only_the_hash_of_any_token_length, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_resume_replays_then_sends_what_it_held_once_in_order, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_the_target_node_numbers_relays, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relays_of_one_read_go_in_one_call_answered_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_another_target_or_message_ends_a_batch_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_batch_is_capped_and_its_lost_reply_answers_each, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_batch_envelope_delivers_each_relay_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_resume_after_a_kick_while_away_says_kicked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_resumed_frame_refused_frees_nothing_twice, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_resume_for_a_gone_connection_goes_back_into_grace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_catch_up_after_a_subscriber_gap_is_exactly_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_relay_read_after_the_replay_that_sent_it_is_not_sent_twice, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ghosts_go_back_with_their_owners_sub_hash_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_lost_connection_s_grace_period_is_watched_and_ended, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_dead_instance_is_reaped_room_by_room_then_forgotten, setup, teardown),
        cmocka_unit_test_setup_teardown(test_found_reaped_it_puts_its_members_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_kick_drops_the_room_without_a_leave_and_keeps_the_others, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_kick_of_a_membership_left_or_not_yet_in_redis_is_stale, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_revocation_closes_every_connection_of_the_user, setup, teardown),
        cmocka_unit_test_setup_teardown(test_the_handshake_check_reads_redis_once_without_blocking, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_the_control_subscription_catches_up, setup,
                                        teardown),
        cmocka_unit_test(test_control_call_layouts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
