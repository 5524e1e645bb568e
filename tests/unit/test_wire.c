/* SPDX-License-Identifier: Apache-2.0 */
/* wire: every server -> client message and the scripts' envelope, byte for
 * byte. The scripts' side (lua/lib.lua) writes the same bytes; the
 * integration suite checks them against real Redis. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "sg/wire.h"

#define A "11111111-1111-4111-8111-111111111111"
#define B "22222222-2222-4222-8222-222222222222"

typedef struct { sg_buf b; } fx;

static int setup(void **state)
{
    static fx f;
    sg_buf_init(&f.b);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    sg_buf_free(&f->b);
    return 0;
}

static void test_joined_and_resumed(void **state)
{
    sg_buf *b = &((fx *)*state)->b;
    sg_wire_str peers[] = {{B, 36}, {A, 36}};
    sg_wire_session s = {.room = "r-1", .peer = A, .peers = peers, .npeers = 1, .resume_token = "tok",
                         .cid = "j1"};
    sg_wire_joined(b, &s);
    assert_string_equal(b->data, "{\"type\":\"joined\",\"roomId\":\"r-1\",\"peerId\":\"" A "\",\"peers\":[\"" B
                                 "\"],\"resumeToken\":\"tok\",\"correlationId\":\"j1\"}");
    sg_buf_reset(b);
    s.npeers = 0;
    s.resume_token = NULL;
    s.cid = NULL;
    s.ice_servers = ",\"iceServers\":[]";
    sg_wire_joined(b, &s);
    assert_string_equal(b->data, "{\"type\":\"joined\",\"roomId\":\"r-1\",\"peerId\":\"" A
                                 "\",\"peers\":[],\"iceServers\":[]}");
    sg_buf_reset(b);
    s = (sg_wire_session){.room = "r", .peer = A, .peers = peers, .npeers = 2, .replayed = 3, .resume_token = "t2"};
    sg_wire_resumed(b, &s);
    assert_string_equal(b->data, "{\"type\":\"resumed\",\"roomId\":\"r\",\"peerId\":\"" A "\",\"peers\":[\"" B
                                 "\",\"" A "\"],\"replayed\":3,\"resumeToken\":\"t2\"}");
}

static void test_left_ack_error(void **state)
{
    sg_buf *b = &((fx *)*state)->b;
    sg_wire_left(b, "r", A, "c");
    assert_string_equal(b->data, "{\"type\":\"left\",\"roomId\":\"r\",\"peerId\":\"" A "\",\"correlationId\":\"c\"}");
    sg_buf_reset(b);
    sg_wire_left(b, "r", A, "");
    assert_string_equal(b->data, "{\"type\":\"left\",\"roomId\":\"r\",\"peerId\":\"" A "\"}");
    sg_buf_reset(b);
    sg_wire_ack(b, "c9", "delivered");
    assert_string_equal(b->data, "{\"type\":\"ack\",\"correlationId\":\"c9\",\"status\":\"delivered\"}");
    sg_buf_reset(b);
    sg_wire_error(b, "bad_request", "roomId: bad", "c1", "room-1");
    assert_string_equal(b->data, "{\"type\":\"error\",\"code\":\"bad_request\",\"message\":"
                                 "\"roomId: bad\",\"correlationId\":\"c1\",\"roomId\":\"room-1\"}");
    sg_buf_reset(b);
    sg_wire_error(b, "forbidden", "m", "", "r");
    assert_string_equal(b->data, "{\"type\":\"error\",\"code\":\"forbidden\",\"message\":\"m\",\"roomId\":\"r\"}");
    sg_buf_reset(b);
    sg_wire_error(b, "internal", "a\"b\\c\nd\x01 \xc3\xa9", "c", NULL);
    assert_string_equal(b->data, "{\"type\":\"error\",\"code\":\"internal\",\"message\":"
                                 "\"a\\\"b\\\\c\\nd\\u0001 \xc3\xa9\",\"correlationId\":\"c\"}");
    /* Writers append, so a caller can frame around them. */
    sg_buf_reset(b);
    sg_buf_puts(b, "X");
    sg_wire_error(b, "rate_limited", "", NULL, NULL);
    assert_string_equal(b->data, "X{\"type\":\"error\",\"code\":\"rate_limited\",\"message\":\"\"}");
}

static void test_relay_frame_leaves_room_for_seq(void **state)
{
    sg_buf *b = &((fx *)*state)->b;
    static const char inner[] = "{\"type\":\"offer\"}";
    sg_wire_relay(b, inner, sizeof inner - 1, "c1");
    assert_string_equal(b->data, "{\"type\":\"relay\",\"inner\":{\"type\":\"offer\"},\"correlationId\":\"c1\"}");
    assert_memory_equal(b->data, SG_WIRE_RELAY_PREFIX, strlen(SG_WIRE_RELAY_PREFIX));
}

/* The target's node numbers a relay out of Redis: after the prefix, once. */
static void test_relay_seq_is_put_in_by_the_target(void **state)
{
    sg_buf *b = &((fx *)*state)->b;
    static const char frame[] = "{\"type\":\"relay\",\"inner\":{},\"correlationId\":\"c1\"}";
    sg_wire_relay_seq(b, frame, sizeof frame - 1, 18446744073709551615ull);
    assert_string_equal(b->data,
                        "{\"type\":\"relay\",\"seq\":18446744073709551615,\"inner\":{},\"correlationId\":\"c1\"}");
    /* unchanged: resumption off (seq 0), numbered already, not a relay, short */
    static const char numbered[] = "{\"type\":\"relay\",\"seq\":3,\"inner\":{}}";
    static const char *const same[] = {frame, numbered, "{\"type\":\"peer_joined\"}", "{\"type\":\"relay\"", ""};
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) {
        sg_buf_reset(b);
        sg_wire_relay_seq(b, same[i], strlen(same[i]), i == 0 ? 0 : 7);
        assert_string_equal(b->data, same[i]);
    }
}

static void test_peer_events_round_trip(void **state)
{
    sg_buf *b = &((fx *)*state)->b;
    sg_wire_event ev;
    sg_wire_peer_event(b, "r", A, NULL);
    /* byte for byte what lib.lua's peer_joined_frame writes */
    assert_string_equal(b->data, "{\"type\":\"peer_joined\",\"roomId\":\"r\",\"peerId\":\"" A "\"}");
    assert_true(sg_wire_parse_event(b->data, b->len, &ev));
    assert_true(ev.joined);
    assert_int_equal(ev.peer.n, 36);
    assert_memory_equal(ev.peer.p, A, 36);
    sg_buf_reset(b);
    sg_wire_peer_event(b, "r", B, "timeout");
    assert_string_equal(b->data, "{\"type\":\"peer_left\",\"roomId\":\"r\",\"peerId\":\"" B "\",\"reason\":\"timeout\"}");
    assert_true(sg_wire_parse_event(b->data, b->len, &ev));
    assert_false(ev.joined);
    assert_memory_equal(ev.peer.p, B, 36);
    static const char *not_events[] = {"{\"type\":\"relay\"}", "{\"type\":\"peer_joined\",\"roomId\":\"r\"}",
                                       "{\"type\":\"peer_left\",\"peerId\":\"unterminated", ""};
    for (size_t i = 0; i < sizeof not_events / sizeof *not_events; i++)
        assert_false(sg_wire_parse_event(not_events[i], strlen(not_events[i]), &ev));
}

/* What lua/relay.lua writes for several relays: a b envelope whose frame
 * part is read one relay at a time, never past its end. */
static void test_batched_relays_round_trip_and_refusals(void **state)
{
    sg_buf *b = &((fx *)*state)->b;
    sg_buf items;
    sg_buf_init(&items);
    sg_wire_write_batched(&items, 11, "00-ab-cd-01", "{\"a\":1}", 7);
    sg_wire_write_batched(&items, 12, NULL, "\n\t", 2); /* frames may hold anything */
    assert_int_equal(items.len, strlen("11\t00-ab-cd-01\t7\n{\"a\":1}12\t-\t2\n\n\t"));
    sg_wire_write_envelope(b, "n", 3, 'b', 2, "-", 40, items.data, items.len);
    sg_wire_envelope e;
    assert_true(sg_wire_parse_envelope(b->data, b->len, &e));
    assert_int_equal(e.kind, 'b');
    assert_int_equal(e.ts_us, 2);
    assert_int_equal(e.seq, 40);
    sg_wire_str rest = e.frame;
    sg_wire_batched one;
    assert_true(sg_wire_next_batched(&rest, &one));
    assert_int_equal(one.ts_us, 11);
    assert_int_equal(one.traceparent.n, 11);
    assert_memory_equal(one.frame.p, "{\"a\":1}", 7);
    assert_int_equal(one.frame.n, 7);
    assert_true(sg_wire_next_batched(&rest, &one));
    assert_int_equal(one.ts_us, 12);
    assert_memory_equal(one.traceparent.p, "-", 1);
    assert_int_equal(one.frame.n, 2);
    assert_memory_equal(one.frame.p, "\n\t", 2);
    assert_int_equal(rest.n, 0);
    assert_false(sg_wire_next_batched(&rest, &one));
    sg_buf_free(&items);
    static const char *bad[] = {
        "",                       /* nothing */
        "1\t-\t3\nab",            /* a length past the end */
        "1\t-\t18446744073709551615\nab", /* a huge one */
        "1\t-\t99999999999999999999\nab", /* an overflow */
        "1\t-\nab",               /* a field missing */
        "x\t-\t2\nab",            /* not a number */
        "1\t-\t2",                /* no newline */
        "1\t-\t2x\nab",           /* junk after the length */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        sg_wire_str r = {bad[i], strlen(bad[i])};
        assert_false(sg_wire_next_batched(&r, &one));
    }
}

static void test_envelope_round_trip_and_refusals(void **state)
{
    sg_buf *b = &((fx *)*state)->b;
    sg_wire_envelope e;
    sg_wire_write_envelope(b, "node-1.a", 42, 'r', 1700000000123456ULL, "00-ab-cd-01", 7, "{}", 2);
    assert_string_equal(b->data, "node-1.a#42\tr\t1700000000123456\t00-ab-cd-01\t7\n{}");
    assert_true(sg_wire_parse_envelope(b->data, b->len, &e));
    assert_int_equal(e.node.n, 8);
    assert_memory_equal(e.node.p, "node-1.a", 8);
    assert_int_equal(e.conn, 42);
    assert_int_equal(e.kind, 'r');
    assert_int_equal(e.ts_us, 1700000000123456ULL);
    assert_int_equal(e.traceparent.n, 11);
    assert_int_equal(e.seq, 7);
    assert_int_equal(e.frame.n, 2);
    /* what lib.lua's envelope() writes for events */
    static const char ev[] = "n#1\te\t0\t-\t0\n{\"type\":\"peer_left\"}";
    assert_true(sg_wire_parse_envelope(ev, sizeof ev - 1, &e));
    assert_int_equal(e.kind, 'e');
    static const char *bad[] = {
        "n#1\tr\t0\t-\t0",                  /* no newline */
        "#1\tr\t0\t-\t0\n{}",               /* no node */
        "n1\tr\t0\t-\t0\n{}",               /* no '#' */
        "n#\tr\t0\t-\t0\n{}",               /* no connection id */
        "n#1x\tr\t0\t-\t0\n{}",             /* junk after the id */
        "n#1\tq\t0\t-\t0\n{}",              /* unknown kind */
        "n#1\tr\t\t-\t0\n{}",               /* empty number */
        "n#1\tr\t0\t-\t99999999999999999999\n{}", /* overflow */
        "n#1\tr\t0\t-\n{}",                 /* a field missing */
        "n#1\tr\t0\t-\t0x\n{}",             /* junk after seq */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_false(sg_wire_parse_envelope(bad[i], strlen(bad[i]), &e));
    /* the head must end within SG_WIRE_ENVELOPE_HEAD_MAX */
    sg_buf_reset(b);
    sg_buf_puts(b, "n#1\tr\t0\t");
    for (int i = 0; i < SG_WIRE_ENVELOPE_HEAD_MAX; i++)
        sg_buf_putc(b, 'x');
    sg_buf_puts(b, "\t0\n{}");
    assert_false(sg_wire_parse_envelope(b->data, b->len, &e));
}

static void test_channels_and_holders(void **state)
{
    char ch[SG_WIRE_CHANNEL_MAX], room[129], holder[SG_WIRE_HOLDER_MAX];
    size_t n = sg_wire_channel(ch, "team-7/x", A);
    assert_string_equal(ch, "room:{team-7/x}:peer:" A);
    assert_int_equal(n, strlen(ch));
    sg_wire_str peer;
    assert_true(sg_wire_parse_channel(ch, n, room, sizeof room, &peer));
    assert_string_equal(room, "team-7/x");
    assert_int_equal(peer.n, 36);
    static const char *bad[] = {"room:{}:peer:x", "room:{r}:peer:", "room:{r}:peers", "signal:probe:n1",
                                "room:{r", "rom:{r}:peer:x"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_false(sg_wire_parse_channel(bad[i], strlen(bad[i]), room, sizeof room, &peer));
    /* a room id longer than the caller's buffer is refused, not cut */
    assert_false(sg_wire_parse_channel("room:{abcdef}:peer:x", 20, room, 4, &peer));
    /* the longest room id (128) and peer fit */
    char longroom[129];
    memset(longroom, 'r', 128);
    longroom[128] = '\0';
    n = sg_wire_channel(ch, longroom, A);
    assert_int_equal(n, 6 + 128 + 7 + 36);
    assert_int_equal(sg_wire_holder(holder, "n1", 18446744073709551615ULL), strlen("n1#18446744073709551615"));
    assert_string_equal(holder, "n1#18446744073709551615");
}

/* Backend control (lua/control.lua): the kick envelope, the kicked error,
 * the control channel's revocations and the key of a sub. */
static void test_kick_envelope_and_kicked_error(void **state)
{
    sg_buf *b = &((fx *)*state)->b;
    sg_wire_envelope e;
    /* what lib.lua's envelope(conn, 'k', reason, 'kick') writes */
    static const char k[] = "n1~ab#7\tk\t0\tkick\t0\nbe nice";
    assert_true(sg_wire_parse_envelope(k, sizeof k - 1, &e));
    assert_int_equal(e.kind, 'k');
    assert_int_equal(e.conn, 7);
    assert_int_equal(e.traceparent.n, 4);
    assert_memory_equal(e.traceparent.p, "kick", 4);
    assert_int_equal(e.frame.n, 7);
    /* an empty reason is an empty frame */
    static const char empty[] = "n#1\tk\t0\tclose_room\t0\n";
    assert_true(sg_wire_parse_envelope(empty, sizeof empty - 1, &e));
    assert_int_equal(e.frame.n, 0);

    sg_wire_kicked(b, "r-1", "be \"nice\"\n\xc3\xa9", 12);
    assert_string_equal(b->data, "{\"type\":\"error\",\"code\":\"kicked\",\"message\":\"be \\\"nice\\\"\\n\xc3\xa9\","
                                 "\"roomId\":\"r-1\"}");
    /* empty, invalid UTF-8 (a frame must be valid) or over the cap: the default */
    char big[SG_WIRE_KICK_REASON_MAX + 1];
    memset(big, 'x', sizeof big);
    const struct { const char *p; size_t n; } fallback[] = {{"", 0}, {NULL, 0}, {"\xc3", 1}, {"a\xff", 2},
                                                            {big, sizeof big}};
    for (size_t i = 0; i < sizeof fallback / sizeof *fallback; i++) {
        sg_buf_reset(b);
        sg_wire_kicked(b, "r", fallback[i].p, fallback[i].n);
        assert_string_equal(b->data, "{\"type\":\"error\",\"code\":\"kicked\",\"message\":\"" SG_WIRE_KICK_DEFAULT
                                     "\",\"roomId\":\"r\"}");
    }
    /* exactly at the cap it is the application's */
    sg_buf_reset(b);
    sg_wire_kicked(b, "r", big, SG_WIRE_KICK_REASON_MAX);
    assert_non_null(strstr(b->data, "\"message\":\"xxxx"));
    assert_null(strstr(b->data, SG_WIRE_KICK_DEFAULT));
}

static void test_revocations_on_the_control_channel(void **state)
{
    char h[SG_WIRE_SUB_SHA1_LEN + 1];
    /* redis.sha1hex("alice") */
    sg_wire_sub_sha1("alice", 5, h);
    assert_string_equal(h, "522b276a356bdf39013dfabea2cd43e141ecc9e8");
    sg_wire_revoke rv;
    static const char ok[] = "revoke\t522b276a356bdf39013dfabea2cd43e141ecc9e8\t1796647657240";
    assert_true(sg_wire_parse_revoke(ok, sizeof ok - 1, &rv));
    assert_string_equal(rv.sub_sha1, h);
    assert_int_equal(rv.until_ms, 1796647657240ULL);
    static const char *bad[] = {
        "revoke\t522b276a356bdf39013dfabea2cd43e141ecc9e8\t",        /* no end */
        "revoke\t522b276a356bdf39013dfabea2cd43e141ecc9e\t1",        /* short hash */
        "revoke\t522B276a356bdf39013dfabea2cd43e141ecc9e8\t1",       /* not lowercase hex */
        "revoke\t522b276a356bdf39013dfabea2cd43e141ecc9e8x\t1",      /* long hash */
        "revoke\t522b276a356bdf39013dfabea2cd43e141ecc9e8\t1x",      /* junk after the end */
        "revoke\t522b276a356bdf39013dfabea2cd43e141ecc9e8\t99999999999999999999", /* overflow */
        "revoke 522b276a356bdf39013dfabea2cd43e141ecc9e8\t1",         /* no tab */
        "unrevoke\t522b276a356bdf39013dfabea2cd43e141ecc9e8\t1", "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_false(sg_wire_parse_revoke(bad[i], strlen(bad[i]), &rv));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_joined_and_resumed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_left_ack_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relay_frame_leaves_room_for_seq, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relay_seq_is_put_in_by_the_target, setup, teardown),
        cmocka_unit_test_setup_teardown(test_peer_events_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_envelope_round_trip_and_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batched_relays_round_trip_and_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_channels_and_holders, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kick_envelope_and_kicked_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_revocations_on_the_control_channel, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
