/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for ws_frame: scripted client bytes fed whole, in two parts at
 * every split point and one byte at a time; every run must produce the same
 * callbacks (counted and logged byte for byte) and the same result. Each fed
 * chunk lives in its own exact-size heap block so the sanitizer build catches
 * any read past what was fed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sg/buf.h"
#include "sg/ws_frame.h"

/* ------------------------------------------------------------ recorder --- */

/* Everything the callbacks saw. The log is binary: a tag byte, then the
 * event's fields, so two runs can be compared with memcmp. */
typedef struct rec {
    sg_buf log;
    int text, ping, pong, close, frame;
    int events;
    int stop_at;          /* 1-based event whose callback returns non-zero; 0: never */
    sg_ws_parser *p;
    const uint8_t *lo, *hi; /* the chunk being fed */
    int in_place;         /* on_text calls whose data lay inside the fed chunk */
    size_t buffered_at_text; /* sg_ws_parser_buffered() during the last on_text */
} rec;

static void rec_init(rec *r, int stop_at)
{
    memset(r, 0, sizeof *r);
    sg_buf_init(&r->log);
    r->stop_at = stop_at;
}

static void rec_free(rec *r) { sg_buf_free(&r->log); }

static void log_bytes(rec *r, char tag, uint64_t a, const uint8_t *d, size_t n)
{
    uint64_t len = n;
    sg_buf_putc(&r->log, tag);
    sg_buf_append(&r->log, &a, sizeof a);
    sg_buf_append(&r->log, &len, sizeof len);
    if (n)
        sg_buf_append(&r->log, d, n);
}

static int event(rec *r) { return ++r->events == r->stop_at; }

static int on_text(void *ud, const uint8_t *d, size_t n)
{
    rec *r = ud;
    assert_non_null(d);
    r->text++;
    if (r->lo && d >= r->lo && d + n <= r->hi && n > 0)
        r->in_place++;
    if (r->p)
        r->buffered_at_text = sg_ws_parser_buffered(r->p);
    log_bytes(r, 'T', 0, d, n);
    return event(r);
}

static int on_ping(void *ud, const uint8_t *d, size_t n)
{
    rec *r = ud;
    r->ping++;
    log_bytes(r, 'P', 0, d, n);
    return event(r);
}

static int on_pong(void *ud, const uint8_t *d, size_t n)
{
    rec *r = ud;
    r->pong++;
    log_bytes(r, 'O', 0, d, n);
    return event(r);
}

static int on_close(void *ud, uint16_t code, const uint8_t *d, size_t n)
{
    rec *r = ud;
    r->close++;
    log_bytes(r, 'C', code, d, n);
    return event(r);
}

static int on_frame(void *ud, uint8_t opcode, uint64_t len)
{
    rec *r = ud;
    r->frame++;
    log_bytes(r, 'F', (uint64_t)opcode << 56 | len, NULL, 0);
    return event(r);
}

static const sg_ws_callbacks cbs = {
    .on_text = on_text, .on_ping = on_ping, .on_pong = on_pong,
    .on_close = on_close, .on_frame = on_frame,
};

/* Expected events are written by calling the same recorders. */
static void exp_frame(rec *e, uint8_t op, uint64_t len) { on_frame(e, op, len); }
static void exp_text(rec *e, const void *d, size_t n) { on_text(e, n ? d : "", n); }
static void exp_ping(rec *e, const void *d, size_t n) { on_ping(e, d, n); }
static void exp_pong(rec *e, const void *d, size_t n) { on_pong(e, d, n); }
static void exp_close(rec *e, uint16_t code, const void *d, size_t n) { on_close(e, code, d, n); }

/* ------------------------------------------------------- frame builder --- */

enum { FIN = 0x80 };
enum { F_UNMASKED = 1, F_LEN16 = 2, F_LEN64 = 4 };

/* Appends a client frame. The mask key varies with the position so that keys
 * and offsets differ between frames. */
static void frame(sg_buf *b, uint8_t b0, const void *payload, size_t len, int flags)
{
    uint8_t h[14];
    size_t hl = 2;
    uint8_t m = (flags & F_UNMASKED) ? 0 : 0x80;
    h[0] = b0;
    if (len <= 125 && !(flags & (F_LEN16 | F_LEN64))) {
        h[1] = (uint8_t)(m | len);
    } else if (len <= 0xFFFF && !(flags & F_LEN64)) {
        h[1] = m | 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
        hl = 4;
    } else {
        h[1] = m | 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
        hl = 10;
    }
    uint8_t key[4] = {(uint8_t)(0x5A + b->len), 0xC3, (uint8_t)(0x17 ^ b->len), 0x81};
    if (m) {
        memcpy(h + hl, key, 4);
        hl += 4;
    }
    sg_buf_append(b, h, hl);
    const uint8_t *pl = payload;
    for (size_t i = 0; i < len; i++)
        sg_buf_putc(b, (char)(m ? pl[i] ^ key[i & 3] : pl[i]));
}

/* A header alone, for lengths whose payload is never sent. */
static void raw(sg_buf *b, const uint8_t *bytes, size_t n) { sg_buf_append(b, bytes, n); }

#define S(lit) (lit), (sizeof(lit) - 1)

/* A valid UTF-8 payload of exactly n bytes: "a€" blocks padded with ASCII, so
 * splits fall inside multi-byte characters too. */
static uint8_t *utf8_payload(size_t n)
{
    uint8_t *d = malloc(n ? n : 1);
    size_t i = 0;
    for (; n - i >= 4; i += 4)
        memcpy(d + i, "a\xE2\x82\xAC", 4);
    for (; i < n; i++)
        d[i] = (uint8_t)('b' + i % 20);
    return d;
}

/* --------------------------------------------------------------- runner --- */

/* Feeds in as a first chunk of `first` bytes, then chunks of `step`. After a
 * non-zero result it checks stickiness: one more valid frame gives the same
 * result and no callback. */
static int run(const uint8_t *in, size_t n, size_t max, size_t first, size_t step, rec *r)
{
    sg_ws_parser p;
    sg_ws_parser_init(&p, &cbs, r, max);
    r->p = &p;
    int rc = 0;
    size_t pos = 0, want = first;
    while (pos < n) {
        size_t k = n - pos < want ? n - pos : want;
        uint8_t *chunk = malloc(k);
        memcpy(chunk, in + pos, k);
        r->lo = chunk;
        r->hi = chunk + k;
        rc = sg_ws_parser_feed(&p, chunk, k);
        r->lo = r->hi = NULL;
        free(chunk);
        pos += k;
        want = step;
        if (rc)
            break;
    }
    if (rc) {
        assert_int_equal(sg_ws_parser_buffered(&p), 0);
        int events = r->events;
        uint8_t ping[] = {0x89, 0x80, 1, 2, 3, 4};
        assert_int_equal(sg_ws_parser_feed(&p, ping, sizeof ping), rc);
        assert_int_equal(r->events, events);
    }
    sg_ws_parser_reset(&p);
    assert_int_equal(sg_ws_parser_buffered(&p), 0);
    r->p = NULL;
    return rc;
}

static void assert_same(const rec *got, const rec *exp)
{
    assert_int_equal(got->frame, exp->frame);
    assert_int_equal(got->text, exp->text);
    assert_int_equal(got->ping, exp->ping);
    assert_int_equal(got->pong, exp->pong);
    assert_int_equal(got->close, exp->close);
    assert_int_equal(got->log.len, exp->log.len);
    assert_memory_equal(got->log.data, exp->log.data, exp->log.len);
}

static void run_check(const sg_buf *in, size_t max, int stop_at, size_t first, size_t step,
                      int exp_rc, const rec *exp)
{
    rec r;
    rec_init(&r, stop_at);
    int rc = run((const uint8_t *)in->data, in->len, max, first, step, &r);
    if (rc != exp_rc)
        print_error("first=%zu step=%zu: rc %d, expected %d\n", first, step, rc, exp_rc);
    assert_int_equal(rc, exp_rc);
    assert_same(&r, exp);
    rec_free(&r);
}

/* Whole, two parts at every split point, then one byte at a time. Inputs
 * above 8 KiB (the 64 KiB frames) take every split in their first and last
 * 300 bytes and every 61st between: all of them would take minutes under the
 * sanitizers, and an odd stride still meets every mask phase and every byte
 * position of the 4-byte UTF-8 pattern. */
static void check_stop(const sg_buf *in, size_t max, int stop_at, int exp_rc, const rec *exp)
{
    size_t n = in->len;
    run_check(in, max, stop_at, n ? n : 1, n ? n : 1, exp_rc, exp);
    for (size_t k = 1; k < n; k++) {
        if (n > 8192 && k > 300 && k < n - 300 && k % 61)
            continue;
        run_check(in, max, stop_at, k, n, exp_rc, exp);
    }
    run_check(in, max, stop_at, 1, 1, exp_rc, exp);
}

static void check(const sg_buf *in, size_t max, int exp_rc, const rec *exp)
{
    check_stop(in, max, 0, exp_rc, exp);
}

/* Shorthand for inputs that fail before any event. */
static void check_fails(const sg_buf *in, size_t max, int exp_rc)
{
    rec e;
    rec_init(&e, 0);
    check(in, max, exp_rc, &e);
    rec_free(&e);
}

typedef struct fx {
    sg_buf in;
    rec exp;
} fx;

static int fx_setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    sg_buf_init(&f->in);
    rec_init(&f->exp, 0);
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    fx *f = *state;
    sg_buf_free(&f->in);
    rec_free(&f->exp);
    free(f);
    return 0;
}

static void fx_clear(fx *f)
{
    sg_buf_free(&f->in);
    rec_free(&f->exp);
    sg_buf_init(&f->in);
    rec_init(&f->exp, 0);
}

/* ---------------------------------------------------------------- tests --- */

static void test_text_lengths(void **state)
{
    fx *f = *state;
    static const size_t lens[] = {0, 1, 125, 126, 65535, 65536};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        size_t n = lens[i];
        uint8_t *pl = utf8_payload(n);
        fx_clear(f);
        frame(&f->in, FIN | SG_WS_OP_TEXT, pl, n, 0);
        exp_frame(&f->exp, SG_WS_OP_TEXT, n);
        exp_text(&f->exp, pl, n);
        check(&f->in, 65536, 0, &f->exp);
        assert_int_equal(f->exp.text, 1);
        assert_int_equal(f->exp.frame, 1);
        free(pl);
    }
}

static void test_several_messages_one_feed(void **state)
{
    fx *f = *state;
    frame(&f->in, FIN | SG_WS_OP_TEXT, S("{\"type\":\"join\"}"), 0);
    frame(&f->in, FIN | SG_WS_OP_PING, S("hb"), 0);
    frame(&f->in, FIN | SG_WS_OP_TEXT, S(""), 0);
    frame(&f->in, FIN | SG_WS_OP_TEXT, S("x"), F_LEN64); /* non-minimal length form */
    exp_frame(&f->exp, SG_WS_OP_TEXT, 15);
    exp_text(&f->exp, S("{\"type\":\"join\"}"));
    exp_frame(&f->exp, SG_WS_OP_PING, 2);
    exp_ping(&f->exp, S("hb"));
    exp_frame(&f->exp, SG_WS_OP_TEXT, 0);
    exp_text(&f->exp, S(""));
    exp_frame(&f->exp, SG_WS_OP_TEXT, 1);
    exp_text(&f->exp, S("x"));
    check(&f->in, 1024, 0, &f->exp);
}

static void test_cap_single_frame(void **state)
{
    fx *f = *state;
    const size_t max = 1000;
    uint8_t *pl = utf8_payload(max + 1);
    frame(&f->in, FIN | SG_WS_OP_TEXT, pl, max, 0);
    exp_frame(&f->exp, SG_WS_OP_TEXT, max);
    exp_text(&f->exp, pl, max);
    check(&f->in, max, 0, &f->exp);

    fx_clear(f);
    frame(&f->in, FIN | SG_WS_OP_TEXT, pl, max + 1, 0);
    check_fails(&f->in, max, SG_WS_CLOSE_TOO_BIG);

    /* Refused at the header: its 8 bytes alone give 1009, nothing buffered. */
    rec r;
    rec_init(&r, 0);
    sg_ws_parser p;
    sg_ws_parser_init(&p, &cbs, &r, max);
    uint8_t hdr[8];
    memcpy(hdr, f->in.data, 8);
    assert_int_equal(sg_ws_parser_feed(&p, hdr, 8), SG_WS_CLOSE_TOO_BIG);
    assert_int_equal(sg_ws_parser_buffered(&p), 0);
    assert_int_equal(r.events, 0);
    sg_ws_parser_reset(&p);
    rec_free(&r);
    free(pl);

    /* The same at the largest lengths, with a 64 KiB cap. */
    fx_clear(f);
    pl = utf8_payload(65537);
    frame(&f->in, FIN | SG_WS_OP_TEXT, pl, 65536, 0);
    check_fails(&f->in, 65535, SG_WS_CLOSE_TOO_BIG);
    fx_clear(f);
    frame(&f->in, FIN | SG_WS_OP_TEXT, pl, 65537, 0);
    check_fails(&f->in, 65536, SG_WS_CLOSE_TOO_BIG);
    free(pl);
}

static void test_cap_fragmented(void **state)
{
    fx *f = *state;
    const size_t max = 300;
    uint8_t *pl = utf8_payload(max + 1);
    /* Exactly max over three fragments passes. */
    frame(&f->in, SG_WS_OP_TEXT, pl, 100, 0);
    frame(&f->in, SG_WS_OP_CONT, pl + 100, 100, 0);
    frame(&f->in, FIN | SG_WS_OP_CONT, pl + 200, 100, 0);
    exp_frame(&f->exp, SG_WS_OP_TEXT, 100);
    exp_frame(&f->exp, SG_WS_OP_CONT, 100);
    exp_frame(&f->exp, SG_WS_OP_CONT, 100);
    exp_text(&f->exp, pl, max);
    check(&f->in, max, 0, &f->exp);

    /* One byte more is refused at the third header, before its payload. */
    fx_clear(f);
    frame(&f->in, SG_WS_OP_TEXT, pl, 100, 0);
    frame(&f->in, SG_WS_OP_CONT, pl + 100, 100, 0);
    frame(&f->in, FIN | SG_WS_OP_CONT, pl + 200, 101, 0);
    exp_frame(&f->exp, SG_WS_OP_TEXT, 100);
    exp_frame(&f->exp, SG_WS_OP_CONT, 100);
    check(&f->in, max, SG_WS_CLOSE_TOO_BIG, &f->exp);
    free(pl);
}

/* A message may come in up to SG_WS_MAX_FRAGMENTS frames; the frame one too
 * many is refused at its header with 1008. Control frames in between do not
 * count, and the count starts again with the next message. */
static void test_fragments_cap(void **state)
{
    fx *f = *state;
    for (int over = 0; over <= 1; over++) {
        fx_clear(f);
        int n = SG_WS_MAX_FRAGMENTS + over;
        for (int i = 0; i < n; i++) {
            uint8_t op = i ? SG_WS_OP_CONT : SG_WS_OP_TEXT;
            frame(&f->in, (uint8_t)((i == n - 1 ? FIN : 0) | op), "x", i ? 0 : 1, 0);
            if (i < SG_WS_MAX_FRAGMENTS)
                exp_frame(&f->exp, op, i ? 0 : 1);
            if (i == 1) {
                frame(&f->in, FIN | SG_WS_OP_PING, S("p"), 0);
                exp_frame(&f->exp, SG_WS_OP_PING, 1);
                exp_ping(&f->exp, S("p"));
            }
        }
        if (!over) {
            exp_text(&f->exp, S("x"));
            /* The next message starts from one again. */
            frame(&f->in, SG_WS_OP_TEXT, S("y"), 0);
            frame(&f->in, FIN | SG_WS_OP_CONT, S(""), 0);
            exp_frame(&f->exp, SG_WS_OP_TEXT, 1);
            exp_frame(&f->exp, SG_WS_OP_CONT, 0);
            exp_text(&f->exp, S("y"));
        }
        check(&f->in, 64, over ? SG_WS_CLOSE_POLICY : 0, &f->exp);
    }
}

static void test_huge_lengths(void **state)
{
    fx *f = *state;
    /* Top bit set in the 64-bit length: a protocol error, whatever the cap. */
    static const uint8_t top[] = {0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4};
    raw(&f->in, top, sizeof top);
    check_fails(&f->in, SIZE_MAX, SG_WS_CLOSE_PROTOCOL);

    /* Continuation lengths are checked against what is left of the cap,
     * without adding to the wire length: with max = 2^63 and 3 bytes held,
     * 2^63 - 3 more is accepted and 2^63 - 2 is refused. */
#if SIZE_MAX > UINT32_MAX
    for (int over = 0; over <= 1; over++) {
        const size_t max = (size_t)1 << 63;
        const uint64_t len = (UINT64_C(1) << 63) - 3 + (uint64_t)over;
        fx_clear(f);
        frame(&f->in, SG_WS_OP_TEXT, S("abc"), 0);
        uint8_t h[14] = {0x80, 0xFF};
        for (int i = 0; i < 8; i++)
            h[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        raw(&f->in, h, sizeof h);
        exp_frame(&f->exp, SG_WS_OP_TEXT, 3);
        if (!over)
            exp_frame(&f->exp, SG_WS_OP_CONT, len);
        check(&f->in, max, over ? SG_WS_CLOSE_TOO_BIG : 0, &f->exp);
    }
#endif

    fx_clear(f);
    static const uint8_t big1[] = {0x81, 0xFF, 0x00, 0x00, 0x00, 0x01, 0, 0, 0, 0, 1, 2, 3, 4};
    raw(&f->in, big1, sizeof big1);
    check_fails(&f->in, 65536, SG_WS_CLOSE_TOO_BIG);
}

static void test_fragmented_with_controls(void **state)
{
    fx *f = *state;
    frame(&f->in, SG_WS_OP_TEXT, S("Hel"), 0);
    frame(&f->in, FIN | SG_WS_OP_PING, S("p1"), 0);
    frame(&f->in, SG_WS_OP_CONT, S("lo, "), 0);
    frame(&f->in, FIN | SG_WS_OP_PONG, S(""), 0);
    frame(&f->in, FIN | SG_WS_OP_CONT, S("world"), 0);
    exp_frame(&f->exp, SG_WS_OP_TEXT, 3);
    exp_frame(&f->exp, SG_WS_OP_PING, 2);
    exp_ping(&f->exp, S("p1"));
    exp_frame(&f->exp, SG_WS_OP_CONT, 4);
    exp_frame(&f->exp, SG_WS_OP_PONG, 0);
    exp_pong(&f->exp, S(""));
    exp_frame(&f->exp, SG_WS_OP_CONT, 5);
    exp_text(&f->exp, S("Hello, world"));
    check(&f->in, 64, 0, &f->exp);
    assert_int_equal(f->exp.text, 1);
    assert_int_equal(f->exp.ping, 1);
    assert_int_equal(f->exp.pong, 1);
    assert_int_equal(f->exp.frame, 5);

    /* Empty fragments, a 125-byte ping in the middle, then a second message. */
    fx_clear(f);
    uint8_t big[125];
    memset(big, 'z', sizeof big);
    frame(&f->in, SG_WS_OP_TEXT, S(""), 0);
    frame(&f->in, FIN | SG_WS_OP_PING, big, sizeof big, 0);
    frame(&f->in, FIN | SG_WS_OP_CONT, S(""), 0);
    frame(&f->in, FIN | SG_WS_OP_TEXT, S("next"), 0);
    exp_frame(&f->exp, SG_WS_OP_TEXT, 0);
    exp_frame(&f->exp, SG_WS_OP_PING, 125);
    exp_ping(&f->exp, big, sizeof big);
    exp_frame(&f->exp, SG_WS_OP_CONT, 0);
    exp_text(&f->exp, S(""));
    exp_frame(&f->exp, SG_WS_OP_TEXT, 4);
    exp_text(&f->exp, S("next"));
    check(&f->in, 64, 0, &f->exp);
}

static void test_unmasked(void **state)
{
    fx *f = *state;
    frame(&f->in, FIN | SG_WS_OP_TEXT, S("hi"), F_UNMASKED);
    check_fails(&f->in, 64, SG_WS_CLOSE_PROTOCOL);
    fx_clear(f);
    frame(&f->in, FIN | SG_WS_OP_PING, S(""), F_UNMASKED);
    check_fails(&f->in, 64, SG_WS_CLOSE_PROTOCOL);
    /* A good frame first is still delivered. */
    fx_clear(f);
    frame(&f->in, FIN | SG_WS_OP_TEXT, S("ok"), 0);
    frame(&f->in, FIN | SG_WS_OP_TEXT, S("no"), F_UNMASKED);
    exp_frame(&f->exp, SG_WS_OP_TEXT, 2);
    exp_text(&f->exp, S("ok"));
    check(&f->in, 64, SG_WS_CLOSE_PROTOCOL, &f->exp);
}

static void test_rsv_bits(void **state)
{
    fx *f = *state;
    static const uint8_t rsv[] = {0x40, 0x20, 0x10};
    for (size_t i = 0; i < sizeof rsv; i++) {
        fx_clear(f);
        frame(&f->in, FIN | rsv[i] | SG_WS_OP_TEXT, S("hi"), 0);
        check_fails(&f->in, 64, SG_WS_CLOSE_PROTOCOL);
        fx_clear(f);
        frame(&f->in, FIN | rsv[i] | SG_WS_OP_PING, S("hi"), 0);
        check_fails(&f->in, 64, SG_WS_CLOSE_PROTOCOL);
    }
}

static void test_unknown_opcodes(void **state)
{
    fx *f = *state;
    static const uint8_t ops[] = {3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF};
    for (size_t i = 0; i < sizeof ops; i++) {
        fx_clear(f);
        frame(&f->in, FIN | ops[i], S("x"), 0);
        check_fails(&f->in, 64, SG_WS_CLOSE_PROTOCOL);
        fx_clear(f);
        frame(&f->in, ops[i], S(""), 0);
        check_fails(&f->in, 64, SG_WS_CLOSE_PROTOCOL);
    }
}

static void test_bad_control_frames(void **state)
{
    fx *f = *state;
    static const uint8_t ops[] = {SG_WS_OP_PING, SG_WS_OP_PONG, SG_WS_OP_CLOSE};
    uint8_t pl[126];
    memset(pl, 'c', sizeof pl);
    for (size_t i = 0; i < sizeof ops; i++) {
        /* Fragmented (FIN=0). */
        fx_clear(f);
        frame(&f->in, ops[i], S(""), 0);
        check_fails(&f->in, 64, SG_WS_CLOSE_PROTOCOL);
        /* 126 and 127 length forms, even for a small payload. */
        fx_clear(f);
        frame(&f->in, FIN | ops[i], pl, 126, 0);
        check_fails(&f->in, 64, SG_WS_CLOSE_PROTOCOL);
        fx_clear(f);
        frame(&f->in, FIN | ops[i], pl, 4, F_LEN16);
        check_fails(&f->in, 64, SG_WS_CLOSE_PROTOCOL);
        fx_clear(f);
        frame(&f->in, FIN | ops[i], pl, 4, F_LEN64);
        check_fails(&f->in, 64, SG_WS_CLOSE_PROTOCOL);
    }
}

static void test_sequence_errors(void **state)
{
    fx *f = *state;
    /* Continuation without a start. */
    frame(&f->in, FIN | SG_WS_OP_CONT, S("x"), 0);
    check_fails(&f->in, 64, SG_WS_CLOSE_PROTOCOL);
    fx_clear(f);
    frame(&f->in, SG_WS_OP_CONT, S("x"), 0);
    check_fails(&f->in, 64, SG_WS_CLOSE_PROTOCOL);
    /* ... also right after a complete message. */
    fx_clear(f);
    frame(&f->in, SG_WS_OP_TEXT, S("a"), 0);
    frame(&f->in, FIN | SG_WS_OP_CONT, S("b"), 0);
    frame(&f->in, FIN | SG_WS_OP_CONT, S("c"), 0);
    exp_frame(&f->exp, SG_WS_OP_TEXT, 1);
    exp_frame(&f->exp, SG_WS_OP_CONT, 1);
    exp_text(&f->exp, S("ab"));
    check(&f->in, 64, SG_WS_CLOSE_PROTOCOL, &f->exp);
    /* A new text frame while a message is in progress (FIN or not). */
    for (int fin = 0; fin <= 1; fin++) {
        fx_clear(f);
        frame(&f->in, SG_WS_OP_TEXT, S("a"), 0);
        frame(&f->in, (uint8_t)(fin ? FIN : 0) | SG_WS_OP_TEXT, S("b"), 0);
        exp_frame(&f->exp, SG_WS_OP_TEXT, 1);
        check(&f->in, 64, SG_WS_CLOSE_PROTOCOL, &f->exp);
    }
    /* A binary frame in the middle of a text message is a sequence error. */
    fx_clear(f);
    frame(&f->in, SG_WS_OP_TEXT, S("a"), 0);
    frame(&f->in, FIN | SG_WS_OP_BINARY, S("b"), 0);
    exp_frame(&f->exp, SG_WS_OP_TEXT, 1);
    check(&f->in, 64, SG_WS_CLOSE_PROTOCOL, &f->exp);
}

static void test_binary(void **state)
{
    fx *f = *state;
    frame(&f->in, FIN | SG_WS_OP_BINARY, S("\x00\x01"), 0);
    check_fails(&f->in, 64, SG_WS_CLOSE_UNSUPPORTED);
    fx_clear(f);
    frame(&f->in, SG_WS_OP_BINARY, S("\x00\x01"), 0);
    frame(&f->in, FIN | SG_WS_OP_CONT, S("\x00\x01"), 0);
    check_fails(&f->in, 64, SG_WS_CLOSE_UNSUPPORTED);
    /* Refused at the first header byte, long before a huge payload. */
    rec r;
    rec_init(&r, 0);
    sg_ws_parser p;
    sg_ws_parser_init(&p, &cbs, &r, 64);
    uint8_t b0 = FIN | SG_WS_OP_BINARY;
    assert_int_equal(sg_ws_parser_feed(&p, &b0, 1), SG_WS_CLOSE_UNSUPPORTED);
    sg_ws_parser_reset(&p);
    rec_free(&r);
}

/* Each of these is invalid as a complete single-frame message. */
static const struct {
    const char *s;
    size_t n;
} bad_utf8[] = {
    {S("\xC0\x80")},             /* overlong 2-byte NUL */
    {S("\xC1\xBF")},             /* overlong 2-byte */
    {S("\xE0\x80\x80")},         /* overlong 3-byte */
    {S("\xE0\x9F\xBF")},         /* overlong 3-byte, top */
    {S("\xF0\x80\x80\x80")},     /* overlong 4-byte */
    {S("\xF0\x8F\xBF\xBF")},     /* overlong 4-byte, top */
    {S("\xED\xA0\x80")},         /* surrogate D800 */
    {S("\xED\xBF\xBF")},         /* surrogate DFFF */
    {S("\xF4\x90\x80\x80")},     /* U+110000 */
    {S("\xF5\x80\x80\x80")},     /* lead F5 */
    {S("\xFF")},
    {S("\x80")},                 /* lone continuation */
    {S("ab\xE2\x82")},           /* truncated at the end */
    {S("\xF0\x9D\x84")},         /* truncated 4-byte */
    {S("\xC3")},
    {S("\xE2\x28\xA1")},         /* continuation missing */
    {S("{\"a\":\"\xCE\xBA\xE1\xBD\xB9\xF4\x90\x80\x80\"}")},
};

static void test_bad_utf8(void **state)
{
    fx *f = *state;
    for (size_t i = 0; i < sizeof bad_utf8 / sizeof bad_utf8[0]; i++) {
        fx_clear(f);
        frame(&f->in, FIN | SG_WS_OP_TEXT, bad_utf8[i].s, bad_utf8[i].n, 0);
        exp_frame(&f->exp, SG_WS_OP_TEXT, bad_utf8[i].n);
        check(&f->in, 64, SG_WS_CLOSE_INVALID_DATA, &f->exp);
        /* And as the last of three fragments. */
        fx_clear(f);
        frame(&f->in, SG_WS_OP_TEXT, S("ok "), 0);
        frame(&f->in, SG_WS_OP_CONT, S("\xCE\xBA"), 0);
        frame(&f->in, FIN | SG_WS_OP_CONT, bad_utf8[i].s, bad_utf8[i].n, 0);
        exp_frame(&f->exp, SG_WS_OP_TEXT, 3);
        exp_frame(&f->exp, SG_WS_OP_CONT, 2);
        exp_frame(&f->exp, SG_WS_OP_CONT, bad_utf8[i].n);
        check(&f->in, 64, SG_WS_CLOSE_INVALID_DATA, &f->exp);
    }
}

static void test_bad_utf8_across_fragments(void **state)
{
    fx *f = *state;
    /* E2 then 28: the second fragment's first byte is not a continuation. */
    frame(&f->in, SG_WS_OP_TEXT, S("a\xE2"), 0);
    frame(&f->in, FIN | SG_WS_OP_CONT, S("\x28"), 0);
    exp_frame(&f->exp, SG_WS_OP_TEXT, 2);
    exp_frame(&f->exp, SG_WS_OP_CONT, 1);
    check(&f->in, 64, SG_WS_CLOSE_INVALID_DATA, &f->exp);
    /* ED | A0 80: a surrogate split across fragments. */
    fx_clear(f);
    frame(&f->in, SG_WS_OP_TEXT, S("\xED"), 0);
    frame(&f->in, FIN | SG_WS_OP_CONT, S("\xA0\x80"), 0);
    exp_frame(&f->exp, SG_WS_OP_TEXT, 1);
    exp_frame(&f->exp, SG_WS_OP_CONT, 2);
    check(&f->in, 64, SG_WS_CLOSE_INVALID_DATA, &f->exp);
    /* A message that ends mid-character with an empty final fragment. */
    fx_clear(f);
    frame(&f->in, SG_WS_OP_TEXT, S("\xF0\x9D\x84"), 0);
    frame(&f->in, FIN | SG_WS_OP_CONT, S(""), 0);
    exp_frame(&f->exp, SG_WS_OP_TEXT, 3);
    exp_frame(&f->exp, SG_WS_OP_CONT, 0);
    check(&f->in, 64, SG_WS_CLOSE_INVALID_DATA, &f->exp);
    /* A ping between the halves does not reset the UTF-8 state. */
    fx_clear(f);
    frame(&f->in, SG_WS_OP_TEXT, S("\xF4"), 0);
    frame(&f->in, FIN | SG_WS_OP_PING, S("\x8F"), 0);
    frame(&f->in, FIN | SG_WS_OP_CONT, S("\x90\x80\x80"), 0);
    exp_frame(&f->exp, SG_WS_OP_TEXT, 1);
    exp_frame(&f->exp, SG_WS_OP_PING, 1);
    exp_ping(&f->exp, S("\x8F"));
    exp_frame(&f->exp, SG_WS_OP_CONT, 3);
    check(&f->in, 64, SG_WS_CLOSE_INVALID_DATA, &f->exp);
}

static void test_bad_utf8_fails_early(void **state)
{
    (void)state;
    /* Frames announcing 1000 bytes whose start is invalid: 1007 as soon as
     * the offending byte arrives, before the rest of the payload. */
    static const struct {
        const char *s;
        size_t bad_at; /* index of the byte that makes it invalid */
    } cases[] = {{"\xC0\x80", 0}, {"\xE0\x9F\xBF", 1}, {"\xED\xA0\x80", 1},
                 {"\xF4\x90\x80\x80", 1}, {"ab\xF0\x8F", 3}, {"\xE2\x82\x41", 2}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t pl[1000];
        memset(pl, 'a', sizeof pl);
        memcpy(pl, cases[i].s, strlen(cases[i].s));
        sg_buf in;
        sg_buf_init(&in);
        frame(&in, SG_WS_OP_TEXT, pl, sizeof pl, 0);
        rec r;
        rec_init(&r, 0);
        sg_ws_parser p;
        sg_ws_parser_init(&p, &cbs, &r, 4096);
        uint8_t *d = (uint8_t *)in.data;
        assert_int_equal(sg_ws_parser_feed(&p, d, 8), 0); /* the header */
        size_t k = 0;
        for (; k < cases[i].bad_at; k++)
            assert_int_equal(sg_ws_parser_feed(&p, d + 8 + k, 1), 0);
        assert_int_equal(sg_ws_parser_feed(&p, d + 8 + k, 1), SG_WS_CLOSE_INVALID_DATA);
        assert_int_equal(sg_ws_parser_buffered(&p), 0);
        assert_int_equal(r.frame, 1);
        assert_int_equal(r.text, 0);
        sg_ws_parser_reset(&p);
        rec_free(&r);
        sg_buf_free(&in);
    }
}

static void test_valid_utf8_split(void **state)
{
    fx *f = *state;
    /* € (E2 82 AC) one byte per fragment, then 𝄞 (F0 9D 84 9E) across two. */
    frame(&f->in, SG_WS_OP_TEXT, S("\xE2"), 0);
    frame(&f->in, SG_WS_OP_CONT, S("\x82"), 0);
    frame(&f->in, SG_WS_OP_CONT, S("\xAC" "\xF0\x9D"), 0);
    frame(&f->in, FIN | SG_WS_OP_CONT, S("\x84\x9E!"), 0);
    exp_frame(&f->exp, SG_WS_OP_TEXT, 1);
    exp_frame(&f->exp, SG_WS_OP_CONT, 1);
    exp_frame(&f->exp, SG_WS_OP_CONT, 3);
    exp_frame(&f->exp, SG_WS_OP_CONT, 3);
    exp_text(&f->exp, S("\xE2\x82\xAC\xF0\x9D\x84\x9E!"));
    check(&f->in, 64, 0, &f->exp);

    /* Boundary code points in one frame. */
    fx_clear(f);
    static const char edge[] = "\x7F" "\xC2\x80" "\xDF\xBF" "\xE0\xA0\x80" "\xED\x9F\xBF"
                               "\xEE\x80\x80" "\xEF\xBF\xBF" "\xF0\x90\x80\x80"
                               "\xF4\x8F\xBF\xBF" "\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5";
    frame(&f->in, FIN | SG_WS_OP_TEXT, edge, sizeof edge - 1, 0);
    exp_frame(&f->exp, SG_WS_OP_TEXT, sizeof edge - 1);
    exp_text(&f->exp, edge, sizeof edge - 1);
    check(&f->in, 64, 0, &f->exp);
}

static void test_close(void **state)
{
    fx *f = *state;
    /* No payload: reported as 1005. */
    frame(&f->in, FIN | SG_WS_OP_CLOSE, S(""), 0);
    exp_frame(&f->exp, SG_WS_OP_CLOSE, 0);
    exp_close(&f->exp, SG_WS_CLOSE_NO_STATUS, S(""));
    check(&f->in, 64, 0, &f->exp);

    /* Code and reason; whatever follows the close frame is ignored. */
    fx_clear(f);
    frame(&f->in, FIN | SG_WS_OP_CLOSE, S("\x03\xE8" "bye \xE2\x82\xAC"), 0);
    frame(&f->in, FIN | SG_WS_OP_TEXT, S("after"), 0);
    frame(&f->in, 0xFF, S("garbage"), F_UNMASKED);
    exp_frame(&f->exp, SG_WS_OP_CLOSE, 9);
    exp_close(&f->exp, 1000, S("bye \xE2\x82\xAC"));
    check(&f->in, 64, 0, &f->exp);

    /* Between fragments of a message, split anywhere. */
    fx_clear(f);
    frame(&f->in, SG_WS_OP_TEXT, S("part"), 0);
    frame(&f->in, FIN | SG_WS_OP_CLOSE, S("\x0B\xB8"), 0);
    exp_frame(&f->exp, SG_WS_OP_TEXT, 4);
    exp_frame(&f->exp, SG_WS_OP_CLOSE, 2);
    exp_close(&f->exp, 3000, S(""));
    check(&f->in, 64, 0, &f->exp);

    /* One byte: a code is two. */
    fx_clear(f);
    frame(&f->in, FIN | SG_WS_OP_CLOSE, S("\x03"), 0);
    exp_frame(&f->exp, SG_WS_OP_CLOSE, 1);
    check(&f->in, 64, SG_WS_CLOSE_PROTOCOL, &f->exp);

    /* Invalid UTF-8 reason. */
    fx_clear(f);
    frame(&f->in, FIN | SG_WS_OP_CLOSE, S("\x03\xE8\xCE\xBA\xED\xA0\x80"), 0);
    exp_frame(&f->exp, SG_WS_OP_CLOSE, 7);
    check(&f->in, 64, SG_WS_CLOSE_INVALID_DATA, &f->exp);
    fx_clear(f);
    frame(&f->in, FIN | SG_WS_OP_CLOSE, S("\x03\xE8\xE2\x82"), 0);
    exp_frame(&f->exp, SG_WS_OP_CLOSE, 4);
    check(&f->in, 64, SG_WS_CLOSE_INVALID_DATA, &f->exp);
}

static void test_close_codes(void **state)
{
    fx *f = *state;
    static const uint16_t good[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011,
                                    3000, 3999, 4000, 4999};
    static const uint16_t bad[] = {0, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016,
                                   1100, 2000, 2999, 5000, 65535};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        uint8_t pl[] = {(uint8_t)(good[i] >> 8), (uint8_t)good[i], 'o', 'k'};
        fx_clear(f);
        frame(&f->in, FIN | SG_WS_OP_CLOSE, pl, sizeof pl, 0);
        exp_frame(&f->exp, SG_WS_OP_CLOSE, sizeof pl);
        exp_close(&f->exp, good[i], S("ok"));
        check(&f->in, 64, 0, &f->exp);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint8_t pl[] = {(uint8_t)(bad[i] >> 8), (uint8_t)bad[i]};
        fx_clear(f);
        frame(&f->in, FIN | SG_WS_OP_CLOSE, pl, sizeof pl, 0);
        exp_frame(&f->exp, SG_WS_OP_CLOSE, sizeof pl);
        check(&f->in, 64, SG_WS_CLOSE_PROTOCOL, &f->exp);
    }
}

static void test_callback_stop(void **state)
{
    fx *f = *state;
    /* One script exercising every callback; stopping at each event in turn
     * must deliver exactly the events up to it, and nothing after. */
    sg_buf in;
    sg_buf_init(&in);
    frame(&in, SG_WS_OP_TEXT, S("a"), 0);                 /* 1 F */
    frame(&in, FIN | SG_WS_OP_PING, S("p"), 0);           /* 2 F, 3 P */
    frame(&in, FIN | SG_WS_OP_CONT, S("b"), 0);           /* 4 F, 5 T */
    frame(&in, FIN | SG_WS_OP_PONG, S("q"), 0);           /* 6 F, 7 O */
    frame(&in, FIN | SG_WS_OP_TEXT, S("c"), 0);           /* 8 F, 9 T (in place) */
    frame(&in, FIN | SG_WS_OP_CLOSE, S("\x03\xE8"), 0);   /* 10 F, 11 C */
    for (int stop = 1; stop <= 11; stop++) {
        fx_clear(f);
        f->exp.stop_at = 100;
        int n = 0;
#define STEP(call) do { if (n++ < stop) call; } while (0)
        STEP(exp_frame(&f->exp, SG_WS_OP_TEXT, 1));
        STEP(exp_frame(&f->exp, SG_WS_OP_PING, 1));
        STEP(exp_ping(&f->exp, S("p")));
        STEP(exp_frame(&f->exp, SG_WS_OP_CONT, 1));
        STEP(exp_text(&f->exp, S("ab")));
        STEP(exp_frame(&f->exp, SG_WS_OP_PONG, 1));
        STEP(exp_pong(&f->exp, S("q")));
        STEP(exp_frame(&f->exp, SG_WS_OP_TEXT, 1));
        STEP(exp_text(&f->exp, S("c")));
        STEP(exp_frame(&f->exp, SG_WS_OP_CLOSE, 2));
        STEP(exp_close(&f->exp, 1000, S("")));
#undef STEP
        check_stop(&in, 64, stop, SG_WS_STOPPED, &f->exp);
    }
    sg_buf_free(&in);
}

static void test_sticky_failure(void **state)
{
    (void)state;
    rec r;
    rec_init(&r, 0);
    sg_ws_parser p;
    sg_ws_parser_init(&p, &cbs, &r, 64);
    sg_buf in;
    sg_buf_init(&in);
    frame(&in, SG_WS_OP_TEXT, S("abc"), 0);
    frame(&in, FIN | SG_WS_OP_BINARY, S("x"), 0);
    assert_int_equal(sg_ws_parser_feed(&p, (uint8_t *)in.data, in.len), SG_WS_CLOSE_PROTOCOL);
    assert_int_equal(sg_ws_parser_buffered(&p), 0);
    sg_buf_reset(&in);
    frame(&in, FIN | SG_WS_OP_TEXT, S("fine"), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(sg_ws_parser_feed(&p, (uint8_t *)in.data, in.len), SG_WS_CLOSE_PROTOCOL);
    assert_int_equal(sg_ws_parser_feed(&p, NULL, 0), SG_WS_CLOSE_PROTOCOL);
    assert_int_equal(r.text, 0);
    assert_int_equal(r.frame, 1);

    /* After a reset it is a fresh parser again. */
    sg_ws_parser_reset(&p);
    sg_buf_reset(&in);
    frame(&in, FIN | SG_WS_OP_TEXT, S("fine"), 0);
    assert_int_equal(sg_ws_parser_feed(&p, (uint8_t *)in.data, in.len), 0);
    assert_int_equal(r.text, 1);
    assert_int_equal(sg_ws_parser_feed(&p, NULL, 0), 0);
    sg_ws_parser_reset(&p);
    sg_buf_free(&in);
    rec_free(&r);
}

static void test_zero_copy(void **state)
{
    fx *f = *state;
    uint8_t *pl = utf8_payload(5000);
    frame(&f->in, FIN | SG_WS_OP_TEXT, pl, 5000, 0);
    frame(&f->in, FIN | SG_WS_OP_TEXT, S("tail"), 0);

    /* Whole: both delivered from the fed buffer, nothing allocated. */
    rec r;
    rec_init(&r, 0);
    assert_int_equal(run((const uint8_t *)f->in.data, f->in.len, 8192, f->in.len, 1, &r), 0);
    assert_int_equal(r.text, 2);
    assert_int_equal(r.in_place, 2);
    assert_int_equal(r.buffered_at_text, 0);
    rec_free(&r);

    /* Cut inside the first payload: it is reassembled, the second is not. */
    rec_init(&r, 0);
    assert_int_equal(run((const uint8_t *)f->in.data, f->in.len, 8192, 100, f->in.len, &r), 0);
    assert_int_equal(r.text, 2);
    assert_int_equal(r.in_place, 1);
    rec_free(&r);
    free(pl);
}

static void test_buffered(void **state)
{
    (void)state;
    rec r;
    rec_init(&r, 0);
    sg_ws_parser p;
    const size_t max = 5000;
    sg_ws_parser_init(&p, &cbs, &r, max);
    r.p = &p;
    assert_int_equal(sg_ws_parser_buffered(&p), 0);

    uint8_t *pl = utf8_payload(max);
    sg_buf in;
    sg_buf_init(&in);
    /* A header alone allocates nothing. */
    frame(&in, SG_WS_OP_TEXT, pl, 10, 0);
    assert_int_equal(sg_ws_parser_feed(&p, (uint8_t *)in.data, 6), 0);
    assert_int_equal(sg_ws_parser_buffered(&p), 0);
    assert_int_equal(sg_ws_parser_feed(&p, (uint8_t *)in.data + 6, in.len - 6), 0);
    size_t b = sg_ws_parser_buffered(&p);
    assert_true(b >= 10 && b <= max);
    /* Growing fragments: never above max_message, never below what is held. */
    size_t held = 10;
    for (size_t n = 20; held + n <= max - 1; n *= 2) {
        sg_buf_reset(&in);
        frame(&in, SG_WS_OP_CONT, pl + held, n, 0);
        assert_int_equal(sg_ws_parser_feed(&p, (uint8_t *)in.data, in.len), 0);
        held += n;
        b = sg_ws_parser_buffered(&p);
        assert_true(b >= held && b <= max);
    }
    /* Filling it to exactly max_message, then delivery frees everything. */
    sg_buf_reset(&in);
    frame(&in, FIN | SG_WS_OP_CONT, pl + held, max - held, 0);
    assert_int_equal(sg_ws_parser_feed(&p, (uint8_t *)in.data, in.len), 0);
    assert_int_equal(sg_ws_parser_buffered(&p), 0);
    assert_int_equal(r.text, 1);
    assert_int_equal(r.buffered_at_text, max);
    assert_memory_equal(r.log.data + r.log.len - max, pl, max);

    /* A failure releases a partial message too. */
    sg_buf_reset(&in);
    frame(&in, SG_WS_OP_TEXT, pl, 100, 0);
    assert_int_equal(sg_ws_parser_feed(&p, (uint8_t *)in.data, in.len), 0);
    assert_true(sg_ws_parser_buffered(&p) >= 100);
    sg_buf_reset(&in);
    frame(&in, FIN | SG_WS_OP_CONT, S("\xFF"), 0);
    assert_int_equal(sg_ws_parser_feed(&p, (uint8_t *)in.data, in.len), SG_WS_CLOSE_INVALID_DATA);
    assert_int_equal(sg_ws_parser_buffered(&p), 0);

    /* Reset in the middle of a message frees it. */
    sg_ws_parser_reset(&p);
    sg_ws_parser_init(&p, &cbs, &r, max);
    sg_buf_reset(&in);
    frame(&in, SG_WS_OP_TEXT, pl, 100, 0);
    assert_int_equal(sg_ws_parser_feed(&p, (uint8_t *)in.data, in.len), 0);
    assert_true(sg_ws_parser_buffered(&p) > 0);
    sg_ws_parser_reset(&p);
    assert_int_equal(sg_ws_parser_buffered(&p), 0);

    /* A close frame in the middle of a message releases it as well. */
    sg_buf_reset(&in);
    frame(&in, SG_WS_OP_TEXT, pl, 100, 0);
    assert_int_equal(sg_ws_parser_feed(&p, (uint8_t *)in.data, in.len), 0);
    assert_true(sg_ws_parser_buffered(&p) > 0);
    sg_buf_reset(&in);
    frame(&in, FIN | SG_WS_OP_CLOSE, S("\x03\xE8"), 0);
    assert_int_equal(sg_ws_parser_feed(&p, (uint8_t *)in.data, in.len), 0);
    assert_int_equal(sg_ws_parser_buffered(&p), 0);
    assert_int_equal(r.close, 1);
    sg_ws_parser_reset(&p);

    free(pl);
    sg_buf_free(&in);
    rec_free(&r);
}

static void test_null_callbacks(void **state)
{
    (void)state;
    static const sg_ws_callbacks none = {0};
    sg_ws_parser p;
    sg_ws_parser_init(&p, &none, NULL, 64);
    sg_buf in;
    sg_buf_init(&in);
    frame(&in, SG_WS_OP_TEXT, S("a"), 0);
    frame(&in, FIN | SG_WS_OP_PING, S("p"), 0);
    frame(&in, FIN | SG_WS_OP_PONG, S("p"), 0);
    frame(&in, FIN | SG_WS_OP_CONT, S("b"), 0);
    frame(&in, FIN | SG_WS_OP_CLOSE, S(""), 0);
    assert_int_equal(sg_ws_parser_feed(&p, (uint8_t *)in.data, in.len), 0);
    sg_ws_parser_reset(&p);
    sg_buf_free(&in);
}

/* ------------------------------------------------------------- UTF-8 API --- */

static bool utf8_ok_split(const uint8_t *s, size_t n, size_t k)
{
    uint32_t st = 0;
    return sg_utf8_feed(&st, s, k) && sg_utf8_feed(&st, s + k, n - k) && sg_utf8_complete(st);
}

static void test_utf8_validator(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad_utf8 / sizeof bad_utf8[0]; i++) {
        const uint8_t *s = (const uint8_t *)bad_utf8[i].s;
        for (size_t k = 0; k <= bad_utf8[i].n; k++)
            assert_false(utf8_ok_split(s, bad_utf8[i].n, k));
    }
    static const char *good[] = {"", "plain ascii long enough for the word loop 0123456789",
                                 "\xC2\x80\xDF\xBF", "\xE0\xA0\x80\xED\x9F\xBF\xEE\x80\x80",
                                 "\xF0\x90\x80\x80\xF4\x8F\xBF\xBF", "abcdefgh\xE2\x82\xACijklmnop"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        size_t n = strlen(good[i]);
        for (size_t k = 0; k <= n; k++)
            assert_true(utf8_ok_split((const uint8_t *)good[i], n, k));
    }
    /* Rejected at the first byte that makes it invalid, and sticky. */
    uint32_t st = 0;
    assert_true(sg_utf8_feed(&st, (const uint8_t *)"\xF4", 1));
    assert_false(sg_utf8_complete(st));
    assert_false(sg_utf8_feed(&st, (const uint8_t *)"\x90", 1));
    assert_false(sg_utf8_feed(&st, (const uint8_t *)"a", 1));
    assert_false(sg_utf8_complete(st));
    st = 0;
    assert_false(sg_utf8_feed(&st, (const uint8_t *)"\xE0\x9F", 2)); /* at 9F */
    st = 0;
    assert_false(sg_utf8_feed(&st, (const uint8_t *)"\xC0", 1));      /* at C0 */
    /* Every code point's encoding is accepted; every 2-byte pair checked. */
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp += (cp < 0x3000 ? 1 : 61)) {
        uint8_t b[4];
        size_t n;
        if (cp >= 0xD800 && cp <= 0xDFFF)
            continue;
        if (cp < 0x80) {
            b[0] = (uint8_t)cp;
            n = 1;
        } else if (cp < 0x800) {
            b[0] = (uint8_t)(0xC0 | cp >> 6);
            b[1] = (uint8_t)(0x80 | (cp & 0x3F));
            n = 2;
        } else if (cp < 0x10000) {
            b[0] = (uint8_t)(0xE0 | cp >> 12);
            b[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
            b[2] = (uint8_t)(0x80 | (cp & 0x3F));
            n = 3;
        } else {
            b[0] = (uint8_t)(0xF0 | cp >> 18);
            b[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
            b[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
            b[3] = (uint8_t)(0x80 | (cp & 0x3F));
            n = 4;
        }
        assert_true(utf8_ok_split(b, n, n / 2));
    }
    for (unsigned a = 0; a < 256; a++) {
        for (unsigned c = 0; c < 256; c++) {
            uint8_t b[2] = {(uint8_t)a, (uint8_t)c};
            bool valid = (a < 0x80 && c < 0x80) || (a >= 0xC2 && a <= 0xDF && c >= 0x80 && c <= 0xBF);
            assert_int_equal(utf8_ok_split(b, 2, 1), valid);
        }
    }
    /* A corrupted state value is refused rather than trusted. */
    st = 0xFFFF;
    assert_false(sg_utf8_feed(&st, (const uint8_t *)"a", 1));
}

/* -------------------------------------------------------------- framer --- */

static void test_frame_header(void **state)
{
    (void)state;
    uint8_t h[10];
    assert_int_equal(sg_ws_frame_header(h, SG_WS_OP_TEXT, 0), 2);
    assert_memory_equal(h, "\x81\x00", 2);
    assert_int_equal(sg_ws_frame_header(h, SG_WS_OP_TEXT, 125), 2);
    assert_memory_equal(h, "\x81\x7D", 2);
    assert_int_equal(sg_ws_frame_header(h, SG_WS_OP_CLOSE, 2), 2);
    assert_memory_equal(h, "\x88\x02", 2);
    assert_int_equal(sg_ws_frame_header(h, SG_WS_OP_TEXT, 126), 4);
    assert_memory_equal(h, "\x81\x7E\x00\x7E", 4);
    assert_int_equal(sg_ws_frame_header(h, SG_WS_OP_PONG, 65535), 4);
    assert_memory_equal(h, "\x8A\x7E\xFF\xFF", 4);
    assert_int_equal(sg_ws_frame_header(h, SG_WS_OP_TEXT, 65536), 10);
    assert_memory_equal(h, "\x81\x7F\x00\x00\x00\x00\x00\x01\x00\x00", 10);
    assert_int_equal(sg_ws_frame_header(h, SG_WS_OP_TEXT, UINT64_C(0x0102030405060708)), 10);
    assert_memory_equal(h, "\x81\x7F\x01\x02\x03\x04\x05\x06\x07\x08", 10);
}

static void test_close_payload(void **state)
{
    (void)state;
    uint8_t out[125];
    assert_int_equal(sg_ws_close_payload(out, 1000, NULL), 2);
    assert_memory_equal(out, "\x03\xE8", 2);
    assert_int_equal(sg_ws_close_payload(out, 1009, ""), 2);
    assert_memory_equal(out, "\x03\xF1", 2);
    assert_int_equal(sg_ws_close_payload(out, 4001, "bye"), 5);
    assert_memory_equal(out, "\x0F\xA1" "bye", 5);

    char reason[200];
    /* Exactly 123 bytes fit; 124 are cut to 123. */
    memset(reason, 'r', sizeof reason);
    reason[123] = '\0';
    assert_int_equal(sg_ws_close_payload(out, 1001, reason), 125);
    assert_memory_equal(out + 2, reason, 123);
    reason[123] = 'r';
    reason[150] = '\0';
    assert_int_equal(sg_ws_close_payload(out, 1001, reason), 125);
    /* A 2-byte character straddling byte 123 is dropped whole. */
    memset(reason, 'r', sizeof reason);
    memcpy(reason + 122, "\xC3\xA9xyz", 6);
    assert_int_equal(sg_ws_close_payload(out, 1001, reason), 2 + 122);
    /* A 3-byte character ending exactly at 123 is kept; one byte later, not. */
    memset(reason, 'r', sizeof reason);
    memcpy(reason + 120, "\xE2\x82\xAC", 4);
    assert_int_equal(sg_ws_close_payload(out, 1001, reason), 125);
    assert_memory_equal(out + 2 + 120, "\xE2\x82\xAC", 3);
    memset(reason, 'r', sizeof reason);
    memcpy(reason + 121, "\xE2\x82\xAC", 4);
    assert_int_equal(sg_ws_close_payload(out, 1001, reason), 2 + 121);
    /* The result is always a valid close payload for our own parser. */
    uint32_t st = 0;
    assert_true(sg_utf8_feed(&st, out + 2, 121) && sg_utf8_complete(st));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_text_lengths, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_several_messages_one_feed, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_cap_single_frame, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_cap_fragmented, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_fragments_cap, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_huge_lengths, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_fragmented_with_controls, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_unmasked, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_rsv_bits, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_unknown_opcodes, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bad_control_frames, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_sequence_errors, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_binary, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bad_utf8, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bad_utf8_across_fragments, fx_setup, fx_teardown),
        cmocka_unit_test(test_bad_utf8_fails_early),
        cmocka_unit_test_setup_teardown(test_valid_utf8_split, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_close, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_close_codes, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_callback_stop, fx_setup, fx_teardown),
        cmocka_unit_test(test_sticky_failure),
        cmocka_unit_test_setup_teardown(test_zero_copy, fx_setup, fx_teardown),
        cmocka_unit_test(test_buffered),
        cmocka_unit_test(test_null_callbacks),
        cmocka_unit_test(test_utf8_validator),
        cmocka_unit_test(test_frame_header),
        cmocka_unit_test(test_close_payload),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
