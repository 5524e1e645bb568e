/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for gateway/proto.c: every rule of docs/protocol.md §2, §3, §4 and
 * §9 that the decoder enforces, accepted and rejected, and the exact bytes of
 * relay.inner and of error messages.
 *
 * Messages are written with single quotes for readability; q() turns them
 * into JSON (a literal double quote inside a value is written \\' and becomes
 * \"). Cases that need exact bytes (NUL, invalid UTF-8) use explicit lengths.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sg/buf.h"
#include "sg/proto.h"
#include "sg/wire.h"

#define P1 "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
#define P2 "11111111-2222-4333-8444-555555555555"
#define P1_UPPER "0A1B2C3D-4E5F-4A6B-8C7D-9E0F1A2B3C4D"

#define RULE_ROOM "roomId: must be 1-128 characters of A-Za-z0-9_.:/-"
#define RULE_CID "correlationId: must be 1-64 characters of A-Za-z0-9_.-"
#define RULE_TOKEN "resumeToken: must be 1-128 characters of A-Za-z0-9_-"
#define RULE_SDP "sdp: must be a string starting with v=0"
#define RULE_SEQ "lastSeq: must be an integer from 0 to 2^53-1"
#define RULE_MLINE "candidate.sdpMLineIndex: must be an integer 0-65535 or null"
#define RULE_TYPE "type: must be one of join, leave, offer, answer, candidate, resume"
#define NOT_OBJECT "message must be a JSON object"
#define TRUNCATED "message is truncated JSON"
#define TRAILING "message has data after the JSON object"

/* ---- helpers ------------------------------------------------------------- */

/* Single quotes to double quotes; the result is owned by the caller. */
static char *q(const char *src)
{
    char *s = strdup(src);
    assert_non_null(s);
    for (char *p = s; *p; p++)
        if (*p == '\'')
            *p = '"';
    return s;
}

static int decode_raw(const char *text, size_t len, sg_msg *m, sg_proto_error *err)
{
    return sg_proto_decode(text, len, m, err);
}

/* Decodes a single-quoted message that must be accepted. */
static void ok(const char *sq, sg_msg *m)
{
    char *s = q(sq);
    sg_proto_error err;
    if (sg_proto_decode(s, strlen(s), m, &err) != 0)
        fail_msg("rejected: %s\n  error: %s", s, err.message);
    free(s);
}

/* Decodes a single-quoted message that must be rejected with exactly `want`. */
static void bad(const char *sq, const char *want, sg_proto_error *err_out)
{
    char *s = q(sq);
    sg_msg m;
    sg_msg_init(&m);
    sg_proto_error err;
    if (sg_proto_decode(s, strlen(s), &m, &err) == 0)
        fail_msg("accepted: %s", s);
    assert_string_equal(err.code, "bad_request");
    if (strcmp(err.message, want) != 0)
        fail_msg("message: %s\n  got:  %s\n  want: %s", s, err.message, want);
    /* A rejected message leaves m reset. */
    assert_int_equal(m.type, SG_MSG_NONE);
    assert_int_equal(m.inner.len, 0);
    assert_string_equal(m.room, "");
    if (err_out)
        *err_out = err;
    sg_msg_clear(&m);
    free(s);
}

static void bad_raw(const char *text, size_t len, const char *want)
{
    sg_msg m;
    sg_msg_init(&m);
    sg_proto_error err;
    if (decode_raw(text, len, &m, &err) == 0)
        fail_msg("accepted raw message of %zu bytes", len);
    if (strcmp(err.message, want) != 0)
        fail_msg("got: %s\n  want: %s", err.message, want);
    sg_msg_clear(&m);
}

static void assert_inner(const sg_msg *m, const char *want_sq)
{
    char *want = q(want_sq);
    if (m->inner.len != strlen(want) || memcmp(m->inner.data, want, m->inner.len) != 0)
        fail_msg("inner\n  got:  %.*s\n  want: %s", (int)m->inner.len, m->inner.data, want);
    free(want);
}

/* A message as (key, raw JSON value) pairs, so the table tests can drop or
 * replace one field of an otherwise valid message. */
typedef struct {
    const char *k;
    const char *v;
} kv;

static const kv JOIN[] = {{"type", "'join'"}, {"roomId", "'room-1'"}, {"peerId", "'" P1 "'"}, {0}};
static const kv LEAVE[] = {{"type", "'leave'"}, {"roomId", "'room-1'"}, {"peerId", "'" P1 "'"}, {0}};
static const kv OFFER[] = {{"type", "'offer'"}, {"roomId", "'room-1'"}, {"from", "'" P1 "'"},
                           {"to", "'" P2 "'"}, {"sdp", "'v=0\\r\\n'"}, {0}};
static const kv ANSWER[] = {{"type", "'answer'"}, {"roomId", "'room-1'"}, {"from", "'" P1 "'"},
                            {"to", "'" P2 "'"}, {"sdp", "'v=0\\r\\n'"}, {0}};
static const kv CANDIDATE[] = {{"type", "'candidate'"}, {"roomId", "'room-1'"},
                               {"from", "'" P1 "'"}, {"to", "'" P2 "'"},
                               {"candidate", "{'candidate':'candidate:1 1 udp 1 10.0.0.1 9 typ host'}"},
                               {0}};
static const kv RESUME[] = {{"type", "'resume'"}, {"roomId", "'room-1'"}, {"peerId", "'" P1 "'"},
                            {"resumeToken", "'tok_en-1'"}, {"lastSeq", "7"}, {0}};

static const struct {
    const char *name;
    const kv *kvs;
} BASES[] = {{"join", JOIN},     {"leave", LEAVE},         {"offer", OFFER},
             {"answer", ANSWER}, {"candidate", CANDIDATE}, {"resume", RESUME}};
#define NBASES (sizeof BASES / sizeof BASES[0])

/* Builds a single-quoted message from kvs: `drop` is left out, `rk` gets the
 * value `rv`, and `ek`:`ev` is appended when ek is set. */
static char *build(const kv *kvs, const char *drop, const char *rk, const char *rv,
                   const char *ek, const char *ev)
{
    sg_buf b;
    sg_buf_init(&b);
    sg_buf_putc(&b, '{');
    bool first = true;
    for (const kv *p = kvs; p->k; p++) {
        if (drop && strcmp(p->k, drop) == 0)
            continue;
        const char *v = rk && strcmp(p->k, rk) == 0 ? rv : p->v;
        sg_buf_printf(&b, "%s'%s':%s", first ? "" : ",", p->k, v);
        first = false;
    }
    if (ek)
        sg_buf_printf(&b, "%s'%s':%s", first ? "" : ",", ek, ev);
    sg_buf_putc(&b, '}');
    return b.data;
}

/* ---- valid messages ------------------------------------------------------ */

static void valid_join(void **state)
{
    sg_msg m;
    sg_msg_init(&m);
    ok("{'type':'join','roomId':'room-1','peerId':'" P1 "'}", &m);
    assert_int_equal(m.type, SG_MSG_JOIN);
    assert_string_equal(m.room, "room-1");
    assert_string_equal(m.peer, P1);
    assert_string_equal(m.from, "");
    assert_false(m.has_cid);
    assert_string_equal(m.cid, "");
    assert_false(m.ack);
    assert_int_equal(m.inner.len, 0); /* only relays have an inner */
    sg_msg_clear(&m);
}

static void valid_leave_with_cid(void **state)
{
    sg_msg m;
    sg_msg_init(&m);
    ok(" \n{'correlationId':'c-1.x_Y','peerId':'" P1_UPPER "','type':'leave','roomId':'a'}\r\n\t ",
       &m);
    assert_int_equal(m.type, SG_MSG_LEAVE);
    assert_string_equal(m.room, "a");
    assert_string_equal(m.peer, P1); /* lowercased */
    assert_true(m.has_cid);
    assert_string_equal(m.cid, "c-1.x_Y");
    assert_int_equal(m.inner.len, 0);
    sg_msg_clear(&m);
}

static void valid_offer_inner(void **state)
{
    sg_msg m;
    sg_msg_init(&m);
    /* Fields in a scrambled order, ids in upper case, cid and ack present:
     * inner has the fixed order, lowercase ids and neither cid nor ack. */
    ok("{'sdp':'v=0\\r\\no=- 1 2 IN IP4 0.0.0.0\\r\\n','to':'" P1_UPPER "','ack':false,"
       "'from':'" P2 "','correlationId':'abc','roomId':'team-7/call:1','type':'offer'}",
       &m);
    assert_int_equal(m.type, SG_MSG_OFFER);
    assert_string_equal(m.from, P2);
    assert_string_equal(m.to, P1);
    assert_string_equal(m.peer, "");
    assert_false(m.ack);
    assert_true(m.has_cid);
    assert_string_equal(m.cid, "abc");
    assert_inner(&m, "{'type':'offer','roomId':'team-7/call:1','from':'" P2 "','to':'" P1 "',"
                     "'sdp':'v=0\\r\\no=- 1 2 IN IP4 0.0.0.0\\r\\n'}");
    assert_int_equal(m.inner.data[m.inner.len], '\0');
    sg_msg_clear(&m);
}

static void valid_answer_ack(void **state)
{
    sg_msg m;
    sg_msg_init(&m);
    ok("{'type':'answer','roomId':'r','from':'" P1 "','to':'" P2 "','sdp':'v=0','ack':true}", &m);
    assert_int_equal(m.type, SG_MSG_ANSWER);
    assert_true(m.ack);
    assert_false(m.has_cid);
    assert_inner(&m, "{'type':'answer','roomId':'r','from':'" P1 "','to':'" P2 "','sdp':'v=0'}");
    sg_msg_clear(&m);
}

static void valid_candidate_variants(void **state)
{
    static const struct {
        const char *cand; /* the candidate object as sent */
        const char *want; /* its canonical form inside inner */
    } cases[] = {
        /* only the required member */
        {"{'candidate':'candidate:1 1 udp 2 10.0.0.1 9 typ host'}",
         "{'candidate':'candidate:1 1 udp 2 10.0.0.1 9 typ host'}"},
        /* end-of-candidates */
        {"{'candidate':''}", "{'candidate':''}"},
        /* everything, sent in reverse order: written in the fixed order */
        {"{'usernameFragment':'uf','sdpMLineIndex':65535,'sdpMid':'0','candidate':'c'}",
         "{'candidate':'c','sdpMid':'0','sdpMLineIndex':65535,'usernameFragment':'uf'}"},
        /* explicit nulls stay null */
        {"{'candidate':'c','sdpMid':null,'sdpMLineIndex':null,'usernameFragment':null}",
         "{'candidate':'c','sdpMid':null,'sdpMLineIndex':null,'usernameFragment':null}"},
        /* some present, some absent */
        {"{'sdpMLineIndex':0,'candidate':'c'}", "{'candidate':'c','sdpMLineIndex':0}"},
        {"{'candidate':'c','usernameFragment':'u'}", "{'candidate':'c','usernameFragment':'u'}"},
        {"{'candidate':'c','sdpMid':null}", "{'candidate':'c','sdpMid':null}"},
        /* -0 is a JSON integer with value 0 */
        {"{'candidate':'c','sdpMLineIndex':-0}", "{'candidate':'c','sdpMLineIndex':0}"},
        /* escapes: quote, backslash, newline, tab, control char re-encoded;
         * \u00e9 and raw UTF-8 both come out as raw UTF-8; \/ is just / */
        {"{'candidate':'a\\'b\\\\c\\nd\\te\\u0001f\\/g','usernameFragment':'\\u00e9\xc3\xa9'}",
         "{'candidate':'a\\'b\\\\c\\nd\\te\\u0001f/g','usernameFragment':'\xc3\xa9\xc3\xa9'}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *msg = build(CANDIDATE, NULL, "candidate", cases[i].cand, NULL, NULL);
        sg_msg m;
        sg_msg_init(&m);
        ok(msg, &m);
        assert_int_equal(m.type, SG_MSG_CANDIDATE);
        char want[512];
        snprintf(want, sizeof want,
                 "{'type':'candidate','roomId':'room-1','from':'" P1 "','to':'" P2
                 "','candidate':%s}",
                 cases[i].want);
        assert_inner(&m, want);
        sg_msg_clear(&m);
        free(msg);
    }
}

static void valid_candidate_ack_and_upper_ids(void **state)
{
    sg_msg m;
    sg_msg_init(&m);
    ok("{'type':'candidate','roomId':'R','from':'" P1_UPPER "','to':'" P2 "',"
       "'candidate':{'candidate':'x'},'ack':true,'correlationId':'q'}",
       &m);
    assert_true(m.ack);
    assert_string_equal(m.from, P1);
    assert_inner(&m, "{'type':'candidate','roomId':'R','from':'" P1 "','to':'" P2 "',"
                     "'candidate':{'candidate':'x'}}");
    sg_msg_clear(&m);
}

static void valid_resume(void **state)
{
    sg_msg m;
    sg_msg_init(&m);
    ok("{'type':'resume','roomId':'room-1','peerId':'" P1_UPPER "','resumeToken':'Ab_-9',"
       "'lastSeq':0,'correlationId':'r1'}",
       &m);
    assert_int_equal(m.type, SG_MSG_RESUME);
    assert_string_equal(m.peer, P1);
    assert_string_equal(m.resume_token, "Ab_-9");
    assert_int_equal(m.last_seq, 0);
    assert_true(m.has_cid);
    assert_int_equal(m.inner.len, 0);

    ok("{'type':'resume','roomId':'r','peerId':'" P1 "','resumeToken':'t',"
       "'lastSeq':9007199254740991}",
       &m);
    assert_true(m.last_seq == UINT64_C(9007199254740991));
    assert_false(m.has_cid); /* reset by the second decode */

    char tok[SG_RESUME_TOKEN_MAX + 1];
    memset(tok, 'z', SG_RESUME_TOKEN_MAX);
    tok[SG_RESUME_TOKEN_MAX] = '\0';
    char buf[512];
    snprintf(buf, sizeof buf,
             "{'type':'resume','roomId':'r','peerId':'" P1 "','resumeToken':'%s','lastSeq':1}", tok);
    ok(buf, &m);
    assert_string_equal(m.resume_token, tok);
    sg_msg_clear(&m);
}

/* ---- missing, wrong type, unknown fields --------------------------------- */

/* The error a field gives when its value has the wrong JSON type. */
static const char *type_error(const char *field)
{
    static const struct {
        const char *f, *msg;
    } t[] = {
        {"type", RULE_TYPE},
        {"roomId", RULE_ROOM},
        {"peerId", "peerId: must be a UUID in 8-4-4-4-12 hex form"},
        {"from", "from: must be a UUID in 8-4-4-4-12 hex form"},
        {"to", "to: must be a UUID in 8-4-4-4-12 hex form"},
        {"sdp", RULE_SDP},
        {"candidate", "candidate: must be an object"},
        {"resumeToken", RULE_TOKEN},
        {"lastSeq", RULE_SEQ},
        {"correlationId", RULE_CID},
        {"ack", "ack: must be true or false"},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (strcmp(t[i].f, field) == 0)
            return t[i].msg;
    fail_msg("no type error for %s", field);
    return NULL;
}

static void missing_required_fields(void **state)
{
    for (size_t b = 0; b < NBASES; b++) {
        for (const kv *p = BASES[b].kvs; p->k; p++) {
            char *msg = build(BASES[b].kvs, p->k, NULL, NULL, NULL, NULL);
            char want[128];
            snprintf(want, sizeof want, "%s: required", p->k);
            bad(msg, want, NULL);
            free(msg);
        }
    }
    bad("{}", "type: required", NULL);
}

static void wrong_types(void **state)
{
    /* Values of every JSON type; each field rejects all but its own. */
    static const char *const values[] = {"5", "-1", "1.5", "1.0", "true", "false", "null",
                                         "[]", "['x']", "{}", "'str'"};
    for (size_t b = 0; b < NBASES; b++) {
        for (const kv *p = BASES[b].kvs; p->k; p++) {
            for (size_t v = 0; v < sizeof values / sizeof values[0]; v++) {
                /* A plain string is the right type for string fields (their
                 * content rules are tested on their own). */
                if (values[v][0] == '\'' && p->v[0] == '\'')
                    continue;
                /* 5 is a valid lastSeq; {} is an object and gets the
                 * candidate member errors (candidate_object_rules). */
                if (strcmp(p->k, "lastSeq") == 0 && strcmp(values[v], "5") == 0)
                    continue;
                if (strcmp(p->k, "candidate") == 0 && values[v][0] == '{')
                    continue;
                char *msg = build(BASES[b].kvs, NULL, p->k, values[v], NULL, NULL);
                bad(msg, type_error(p->k), NULL);
                free(msg);
            }
        }
    }
    /* Optional fields too. */
    bad("{'type':'join','roomId':'r','peerId':'" P1 "','correlationId':5}", RULE_CID, NULL);
    bad("{'type':'join','roomId':'r','peerId':'" P1 "','correlationId':null}", RULE_CID, NULL);
    bad("{'type':'offer','roomId':'r','from':'" P1 "','to':'" P2 "','sdp':'v=0','ack':'true'}",
        "ack: must be true or false", NULL);
    bad("{'type':'offer','roomId':'r','from':'" P1 "','to':'" P2 "','sdp':'v=0','ack':1}",
        "ack: must be true or false", NULL);
    bad("{'type':'offer','roomId':'r','from':'" P1 "','to':'" P2 "','sdp':'v=0','ack':null}",
        "ack: must be true or false", NULL);
}

static void unknown_and_misplaced_fields(void **state)
{
    for (size_t b = 0; b < NBASES; b++) {
        char *msg = build(BASES[b].kvs, NULL, NULL, NULL, "extra", "1");
        bad(msg, "extra: unknown field", NULL);
        free(msg);
        /* Field names are case-sensitive. */
        msg = build(BASES[b].kvs, NULL, NULL, NULL, "RoomId", "'r'");
        bad(msg, "RoomId: unknown field", NULL);
        free(msg);
    }
    /* ack only on relays (§9). */
    bad("{'type':'join','roomId':'r','peerId':'" P1 "','ack':true}", "ack: not allowed in join",
        NULL);
    bad("{'type':'leave','roomId':'r','peerId':'" P1 "','ack':false}",
        "ack: not allowed in leave", NULL);
    char *msg = build(RESUME, NULL, NULL, NULL, "ack", "true");
    bad(msg, "ack: not allowed in resume", NULL);
    free(msg);
    /* Fields of another type. */
    msg = build(JOIN, NULL, NULL, NULL, "sdp", "'v=0'");
    bad(msg, "sdp: not allowed in join", NULL);
    free(msg);
    msg = build(OFFER, NULL, NULL, NULL, "candidate", "{'candidate':''}");
    bad(msg, "candidate: not allowed in offer", NULL);
    free(msg);
    msg = build(CANDIDATE, NULL, NULL, NULL, "sdp", "'v=0'");
    bad(msg, "sdp: not allowed in candidate", NULL);
    free(msg);
    msg = build(OFFER, NULL, NULL, NULL, "peerId", "'" P1 "'");
    bad(msg, "peerId: not allowed in offer", NULL);
    free(msg);
    msg = build(JOIN, NULL, NULL, NULL, "lastSeq", "1");
    bad(msg, "lastSeq: not allowed in join", NULL);
    free(msg);
    /* Hostile names are quoted short, printable and ASCII. */
    msg = build(JOIN, NULL, NULL, NULL, "\xc3\xa9 x", "1");
    bad(msg, "??\?x: unknown field", NULL);
    free(msg);
    msg = build(JOIN, NULL, NULL, NULL, "", "1");
    bad(msg, "\"\": unknown field", NULL);
    free(msg);
    msg = build(JOIN, NULL, NULL, NULL, "abcdefghijklmnopqrstuvwxyz0123456789", "1");
    bad(msg, "abcdefghijklmnopqrstuvwxyz012345...: unknown field", NULL);
    free(msg);
}

static void candidate_object_rules(void **state)
{
    static const struct {
        const char *cand, *want;
    } cases[] = {
        {"{}", "candidate.candidate: required"},
        {"{'sdpMid':'0'}", "candidate.candidate: required"},
        {"{'candidate':'c','foo':1}", "candidate.foo: unknown field"},
        {"{'candidate':'c','sdpmid':'0'}", "candidate.sdpmid: unknown field"},
        {"{'candidate':'c','type':'x'}", "candidate.type: unknown field"},
        {"{'candidate':null}", "candidate.candidate: must be a string"},
        {"{'candidate':5}", "candidate.candidate: must be a string"},
        {"{'candidate':{}}", "candidate.candidate: must be a string"},
        {"{'candidate':'c','sdpMid':0}", "candidate.sdpMid: must be a string or null"},
        {"{'candidate':'c','sdpMid':[]}", "candidate.sdpMid: must be a string or null"},
        {"{'candidate':'c','usernameFragment':true}",
         "candidate.usernameFragment: must be a string or null"},
        {"{'candidate':'c','sdpMLineIndex':65536}", RULE_MLINE},
        {"{'candidate':'c','sdpMLineIndex':-1}", RULE_MLINE},
        {"{'candidate':'c','sdpMLineIndex':1.5}", RULE_MLINE},
        {"{'candidate':'c','sdpMLineIndex':1.0}", RULE_MLINE},
        {"{'candidate':'c','sdpMLineIndex':1e0}", RULE_MLINE},
        {"{'candidate':'c','sdpMLineIndex':'1'}", RULE_MLINE},
        {"{'candidate':'c','sdpMLineIndex':true}", RULE_MLINE},
        {"{'candidate':'c','sdpMLineIndex':99999999999999999999999}", RULE_MLINE},
        {"{'candidate':'c','sdpMLineIndex':-99999999999999999999999}", RULE_MLINE},
        {"{'candidate':'c\\u0000'}", "candidate.candidate: must not contain NUL characters"},
        {"{'candidate':'c','sdpMid':'\\u0000'}",
         "candidate.sdpMid: must not contain NUL characters"},
        {"{'candidate':'c','usernameFragment':'a\\u0000'}",
         "candidate.usernameFragment: must not contain NUL characters"},
        {"[]", "candidate: must be an object"},
        {"'c'", "candidate: must be an object"},
        {"null", "candidate: must be an object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *msg = build(CANDIDATE, NULL, "candidate", cases[i].cand, NULL, NULL);
        bad(msg, cases[i].want, NULL);
        free(msg);
    }
}

/* ---- identifiers --------------------------------------------------------- */

static void room_id_rules(void **state)
{
    char room[SG_ROOM_MAX + 2];
    char msg[512];
    sg_msg m;
    sg_msg_init(&m);

    /* 1 and 128 characters pass, 129 and 0 do not. */
    static const size_t lens[] = {1, 2, SG_ROOM_MAX - 1, SG_ROOM_MAX, SG_ROOM_MAX + 1};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        size_t n = lens[i];
        memset(room, 'r', n);
        room[n] = '\0';
        snprintf(msg, sizeof msg, "{'type':'join','roomId':'%s','peerId':'" P1 "'}", room);
        if (n <= SG_ROOM_MAX) {
            ok(msg, &m);
            assert_string_equal(m.room, room);
        } else {
            bad(msg, RULE_ROOM, NULL);
        }
    }
    assert_true(sg_room_id_valid(room, SG_ROOM_MAX));
    assert_false(sg_room_id_valid(room, SG_ROOM_MAX + 1));
    bad("{'type':'join','roomId':'','peerId':'" P1 "'}", RULE_ROOM, NULL);

    /* Every allowed character class. */
    ok("{'type':'join','roomId':'AZaz09_.:/-','peerId':'" P1 "'}", &m);
    assert_string_equal(m.room, "AZaz09_.:/-");

    /* Forbidden characters, as JSON source. '{' and '}' matter most: room
     * ids become Redis hash tags. */
    static const char *const forbidden[] = {
        "{",  "}",  " ",  "\\t", "\\n", "\\\\", "\\'", "#", "?", "*", "@", "+", ",",  "%",
        "=",  "!",  "~",  "[",   "]",   ";",    "|",   "$", "&", "(", "<", ">", "\xc3\xa9",
        "\\u00e9", "\\u0000", "\\u007f", "\xe2\x82\xac",
    };
    for (size_t i = 0; i < sizeof forbidden / sizeof forbidden[0]; i++) {
        snprintf(msg, sizeof msg, "{'type':'join','roomId':'a%sb','peerId':'" P1 "'}",
                 forbidden[i]);
        bad(msg, RULE_ROOM, NULL);
    }
    assert_false(sg_room_id_valid("a\0b", 3));
    assert_false(sg_room_id_valid("", 0));
    sg_msg_clear(&m);
}

static void peer_id_rules(void **state)
{
    sg_msg m;
    sg_msg_init(&m);
    char out[SG_PEER_LEN + 1];

    ok("{'type':'join','roomId':'r','peerId':'ABCDEF01-2345-6789-ABCD-EF0123456789'}", &m);
    assert_string_equal(m.peer, "abcdef01-2345-6789-abcd-ef0123456789");
    ok("{'type':'join','roomId':'r','peerId':'aBcDeF01-2345-6789-AbCd-eF0123456789'}", &m);
    assert_string_equal(m.peer, "abcdef01-2345-6789-abcd-ef0123456789");

    static const char *const invalid[] = {
        "0a1b2c3d4-e5f-4a6b-8c7d-9e0f1a2b3c4d",  /* hyphen moved */
        "0a1b2c3d-4e5f4-a6b-8c7d-9e0f1a2b3c4d",  /* hyphen moved */
        "0a1b2c3d-4e5f-4a6b8-c7d-9e0f1a2b3c4d",  /* hyphen moved */
        "0a1b2c3d-4e5f-4a6b-8c7d9-e0f1a2b3c4d",  /* hyphen moved */
        "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4g",  /* non-hex */
        "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4 ",  /* space */
        "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4",   /* 35 */
        "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d0", /* 37 */
        "0a1b2c3d4e5f4a6b8c7d9e0f1a2b3c4d",      /* no hyphens */
        "{0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d}",
        "0a1b2c3d_4e5f_4a6b_8c7d_9e0f1a2b3c4d",
        "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c\\u0000",
        "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4\xc3\xa9",
        "",
    };
    const char *fields[] = {"peerId", "from", "to"};
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        char msg[512], want[128];
        snprintf(msg, sizeof msg, "{'type':'join','roomId':'r','peerId':'%s'}", invalid[i]);
        bad(msg, "peerId: must be a UUID in 8-4-4-4-12 hex form", NULL);
        for (size_t f = 1; f < 3; f++) {
            snprintf(msg, sizeof msg,
                     "{'type':'offer','roomId':'r','from':'%s','to':'%s','sdp':'v=0'}",
                     f == 1 ? invalid[i] : P1, f == 2 ? invalid[i] : P2);
            snprintf(want, sizeof want, "%s: must be a UUID in 8-4-4-4-12 hex form", fields[f]);
            bad(msg, want, NULL);
        }
    }

    /* The function itself: out is written only on success. */
    memset(out, 'x', sizeof out);
    assert_false(sg_peer_id_normalize("0A1B2C3D-4E5F-4A6B-8C7D-9E0F1A2B3C4G", 36, out));
    assert_int_equal(out[0], 'x');
    assert_true(sg_peer_id_normalize(P1_UPPER, 36, out));
    assert_string_equal(out, P1);
    assert_false(sg_peer_id_normalize(P1, 35, out));
    sg_msg_clear(&m);
}

static void correlation_id_rules(void **state)
{
    char cid[SG_CID_MAX + 2];
    char msg[512];
    sg_msg m;
    sg_msg_init(&m);
    sg_proto_error err;

    memset(cid, 'c', SG_CID_MAX);
    cid[SG_CID_MAX] = '\0';
    snprintf(msg, sizeof msg, "{'type':'join','roomId':'r','peerId':'" P1 "','correlationId':'%s'}",
             cid);
    ok(msg, &m);
    assert_string_equal(m.cid, cid);
    assert_true(m.has_cid);

    memset(cid, 'c', SG_CID_MAX + 1);
    cid[SG_CID_MAX + 1] = '\0';
    snprintf(msg, sizeof msg, "{'type':'join','roomId':'r','peerId':'" P1 "','correlationId':'%s'}",
             cid);
    bad(msg, RULE_CID, &err);
    assert_false(err.has_cid);
    assert_string_equal(err.cid, "");
    assert_true(err.has_room); /* the room was fine */
    assert_string_equal(err.room, "r");

    ok("{'type':'join','roomId':'r','peerId':'" P1 "','correlationId':'Az09_.-'}", &m);
    static const char *const invalid[] = {"", "a/b", "a:b", "a b", "{x}", "\xc3\xa9", "a\\u0000",
                                          "a+b", "a\\nb"};
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        snprintf(msg, sizeof msg,
                 "{'type':'join','roomId':'r','peerId':'" P1 "','correlationId':'%s'}",
                 invalid[i]);
        bad(msg, RULE_CID, &err);
        assert_false(err.has_cid);
    }
    assert_false(sg_cid_valid("a\0", 2));
    assert_true(sg_cid_valid("a", 1));
    sg_msg_clear(&m);
}

/* An error carries the valid correlationId and roomId of the message it
 * answers, whatever else was wrong (§4). */
static void error_echoes_context(void **state)
{
    sg_proto_error err;

    bad("{'type':'join','roomId':'r{1}','peerId':'" P1 "','correlationId':'c1'}", RULE_ROOM, &err);
    assert_true(err.has_cid);
    assert_string_equal(err.cid, "c1");
    assert_false(err.has_room);
    assert_string_equal(err.room, "");

    bad("{'type':'join','roomId':'room-9','peerId':'nope','correlationId':'c2'}",
        "peerId: must be a UUID in 8-4-4-4-12 hex form", &err);
    assert_true(err.has_cid);
    assert_string_equal(err.cid, "c2");
    assert_true(err.has_room);
    assert_string_equal(err.room, "room-9");

    bad("{'correlationId':'c3','type':'jump','roomId':'x'}", RULE_TYPE, &err);
    assert_true(err.has_cid);
    assert_string_equal(err.cid, "c3");
    assert_true(err.has_room);

    bad("{'correlationId':'c4','roomId':'x'}", "type: required", &err);
    assert_string_equal(err.cid, "c4");

    bad("{'type':'offer','correlationId':'c5','roomId':'x','from':'" P1 "','to':'" P2
        "','sdp':'v=0','zzz':1}",
        "zzz: unknown field", &err);
    assert_string_equal(err.cid, "c5");
    assert_string_equal(err.room, "x");

    bad("{'type':'offer','correlationId':'c6','roomId':'x','from':'" P1 "','to':'" P2
        "','sdp':'v=1'}",
        RULE_SDP, &err);
    assert_string_equal(err.cid, "c6");

    /* Wrong types for the echoed fields are not echoed. */
    bad("{'type':'join','roomId':5,'peerId':'" P1 "','correlationId':7}", RULE_CID, &err);
    assert_false(err.has_cid);
    assert_false(err.has_room);

    /* Nothing to echo when the text is not an object. */
    bad("['correlationId','c7']", NOT_OBJECT, &err);
    assert_false(err.has_cid);
    assert_false(err.has_room);
}

static void type_rules(void **state)
{
    static const char *const invalid[] = {"'JOIN'", "'Join'", "'joined'", "'error'", "'relay'",
                                          "''", "'join '", "'join\\u0000'", "'join\\u0000x'"};
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        char *msg = build(JOIN, NULL, "type", invalid[i], NULL, NULL);
        bad(msg, RULE_TYPE, NULL);
        free(msg);
    }
}

/* ---- sdp, ack, resume ---------------------------------------------------- */

static void sdp_rules(void **state)
{
    sg_msg m;
    sg_msg_init(&m);
    static const char *const invalid[] = {"''", "'v'", "'v='", "'V=0'", "' v=0'", "'v=1'",
                                          "'\\nv=0'", "'x v=0'"};
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        char *msg = build(OFFER, NULL, "sdp", invalid[i], NULL, NULL);
        bad(msg, RULE_SDP, NULL);
        free(msg);
    }
    char *msg = build(ANSWER, NULL, "sdp", "'v=0\\r\\n\\u0000'", NULL, NULL);
    bad(msg, "sdp: must not contain NUL characters", NULL);
    free(msg);

    /* Escapes through inner: quotes, backslash, newline, a C0 control, an
     * escaped slash; \u00e9 and a surrogate pair become raw UTF-8; a lone
     * surrogate becomes U+FFFD (json-c's choice), so inner stays UTF-8. An
     * escaped backslash followed by "u0000" is text, not a NUL. */
    msg = build(OFFER, NULL, "sdp",
                "'v=0 \\'q\\' \\\\ \\n \\u001f \\/ \\u00e9 \xc3\xa9 \\ud83d\\ude00 \\ud800 \\\\u0000'",
                NULL, NULL);
    ok(msg, &m);
    free(msg);
    assert_inner(&m, "{'type':'offer','roomId':'room-1','from':'" P1 "','to':'" P2 "',"
                     "'sdp':'v=0 \\'q\\' \\\\ \\n \\u001f / \xc3\xa9 \xc3\xa9 \xf0\x9f\x98\x80 "
                     "\xef\xbf\xbd \\\\u0000'}");
    sg_msg_clear(&m);
}

static void ack_rules(void **state)
{
    sg_msg m;
    sg_msg_init(&m);
    for (size_t b = 2; b <= 4; b++) { /* offer, answer, candidate */
        char *msg = build(BASES[b].kvs, NULL, NULL, NULL, "ack", "true");
        ok(msg, &m);
        assert_true(m.ack);
        assert_null(strstr(m.inner.data, "ack"));
        free(msg);
        msg = build(BASES[b].kvs, NULL, NULL, NULL, "ack", "false");
        ok(msg, &m);
        assert_false(m.ack);
        free(msg);
        msg = build(BASES[b].kvs, NULL, NULL, NULL, "ack", "'true'");
        bad(msg, "ack: must be true or false", NULL);
        free(msg);
    }
    sg_msg_clear(&m);
}

static void resume_rules(void **state)
{
    static const struct {
        const char *field, *value, *want;
    } cases[] = {
        {"resumeToken", "''", RULE_TOKEN},
        {"resumeToken", "'a.b'", RULE_TOKEN},
        {"resumeToken", "'a:b'", RULE_TOKEN},
        {"resumeToken", "'a b'", RULE_TOKEN},
        {"resumeToken", "'a=='", RULE_TOKEN},
        {"resumeToken", "'a\\u0000'", RULE_TOKEN},
        {"resumeToken", "'" "0123456789012345678901234567890123456789012345678901234567890123"
                        "01234567890123456789012345678901234567890123456789012345678901234'",
         RULE_TOKEN}, /* 129 */
        {"lastSeq", "-1", RULE_SEQ},
        {"lastSeq", "9007199254740992", RULE_SEQ},
        {"lastSeq", "18446744073709551615", RULE_SEQ},
        {"lastSeq", "99999999999999999999999", RULE_SEQ},
        {"lastSeq", "-9223372036854775808", RULE_SEQ},
        {"lastSeq", "1.0", RULE_SEQ},
        {"lastSeq", "1e3", RULE_SEQ},
        {"lastSeq", "'5'", RULE_SEQ},
        {"lastSeq", "null", RULE_SEQ},
        {"lastSeq", "NaN", RULE_SEQ}, /* json-c parses NaN/Infinity as doubles */
        {"lastSeq", "Infinity", RULE_SEQ},
        {"lastSeq", "1E400", RULE_SEQ},
        {"peerId", "'x'", "peerId: must be a UUID in 8-4-4-4-12 hex form"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *msg = build(RESUME, NULL, cases[i].field, cases[i].value, NULL, NULL);
        bad(msg, cases[i].want, NULL);
        free(msg);
    }
    sg_msg m;
    sg_msg_init(&m);
    char *msg = build(RESUME, NULL, "lastSeq", "-0", NULL, NULL); /* a JSON integer, 0 */
    ok(msg, &m);
    assert_int_equal(m.last_seq, 0);
    free(msg);
    sg_msg_clear(&m);
}

/* ---- text layer ---------------------------------------------------------- */

static void not_an_object(void **state)
{
    static const char *const cases[] = {"[]",   "['type','join']", "'join'", "42", "-1",
                                        "true", "null",            "",       "  \n", "x{}",
                                        "\xef\xbb\xbf{}"}; /* a BOM is not whitespace */
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        bad(cases[i], NOT_OBJECT, NULL);
    bad_raw("\0{}", 3, NOT_OBJECT);
    bad_raw("\v{}", 3, NOT_OBJECT);
}

static void trailing_data(void **state)
{
    const char *j = "{\"type\":\"join\",\"roomId\":\"r\",\"peerId\":\"" P1 "\"}";
    static const char *const tails[] = {"x", "{}", ",", "]", "}", " 1", "\n{}", "/* c */", "//"};
    char buf[256];
    for (size_t i = 0; i < sizeof tails / sizeof tails[0]; i++) {
        snprintf(buf, sizeof buf, "%s%s", j, tails[i]);
        bad_raw(buf, strlen(buf), TRAILING);
    }
    /* A NUL byte after the object, and whitespace then NUL. */
    snprintf(buf, sizeof buf, "%s", j);
    size_t n = strlen(buf);
    bad_raw(buf, n + 1, TRAILING);
    snprintf(buf, sizeof buf, "%s \n", j);
    n = strlen(buf);
    bad_raw(buf, n + 1, TRAILING);
    /* Whitespace alone is fine. */
    sg_msg m;
    sg_msg_init(&m);
    snprintf(buf, sizeof buf, "%s \t\r\n ", j);
    assert_int_equal(sg_proto_decode(buf, strlen(buf), &m, NULL), 0);
    /* The explicit length is honoured: what lies beyond it is not read. */
    snprintf(buf, sizeof buf, "%sGARBAGE", j);
    assert_int_equal(sg_proto_decode(buf, strlen(j), &m, NULL), 0);
    sg_msg_clear(&m);
}

/* Every proper prefix of a valid message is rejected as truncated. */
static void truncated(void **state)
{
    char *msg = q("{'type':'candidate','roomId':'r','from':'" P1 "','to':'" P2 "',"
                  "'candidate':{'candidate':'c \\u00e9','sdpMLineIndex':12,'sdpMid':null},"
                  "'ack':true}");
    size_t n = strlen(msg);
    sg_msg m;
    sg_msg_init(&m);
    sg_proto_error err;
    for (size_t i = 1; i < n; i++) {
        /* A heap copy of exactly i bytes so ASan catches any read past it. */
        char *p = malloc(i);
        assert_non_null(p);
        memcpy(p, msg, i);
        assert_int_equal(sg_proto_decode(p, i, &m, &err), -1);
        if (strcmp(err.message, TRUNCATED) != 0)
            fail_msg("prefix %zu: %s", i, err.message);
        free(p);
    }
    bad_raw(msg, 0, NOT_OBJECT);
    char *p = malloc(n);
    memcpy(p, msg, n);
    assert_int_equal(sg_proto_decode(p, n, &m, &err), 0);
    free(p);
    free(msg);
    sg_msg_clear(&m);
}

static void syntax_errors(void **state)
{
    /* JSON that json-c accepts by default and strict mode refuses. */
    static const char *const cases[] = {
        "{'type':'join','roomId':'r','peerId':'" P1 "',}",
        "{'type':'join','roomId':'r','peerId':'" P1 "'/* c */}",
        "{'type':'join','roomId':'r','peerId':'" P1 "','x':01}",
        "{'type':'join','roomId':'r','peerId':'" P1 "','x':True}",
        "{'type':'join','roomId':'r','peerId':'" P1 "','x':[1,]}",
        "{type:'join'}",
        "{'type':'join','roomId':'r','peerId':'" P1 "','x':'\\x41'}",
        "{'type':'join','roomId':'r','peerId':'" P1 "','x':+1}",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *s = q(cases[i]);
        sg_msg m;
        sg_msg_init(&m);
        sg_proto_error err;
        assert_int_equal(sg_proto_decode(s, strlen(s), &m, &err), -1);
        if (strncmp(err.message, "message is not valid JSON: ", 27) != 0)
            fail_msg("%s: %s", s, err.message);
        free(s);
    }
}

static void nesting_cap(void **state)
{
    /* Within the cap: parsed, then refused as an unknown field. */
    bad("{'type':'join','roomId':'r','peerId':'" P1 "','x':[[[[[1]]]]]}", "x: unknown field", NULL);
    bad("{'type':'join','roomId':'r','peerId':'" P1 "','x':{'a':{'b':{'c':{}}}}}",
        "x: unknown field", NULL);
    /* Beyond it: refused by the tokener before anything is built. */
    bad("{'type':'join','roomId':'r','peerId':'" P1 "','x':[[[[[[[[[1]]]]]]]]]}",
        "message is nested deeper than 8 levels", NULL);
    char deep[4096];
    size_t n = 0;
    for (int i = 0; i < 1000; i++)
        deep[n++] = '[';
    deep[n] = '\0';
    char msg[4200];
    snprintf(msg, sizeof msg, "{'x':%s", deep);
    bad(msg, "message is nested deeper than 8 levels", NULL);
    bad("{'type':'candidate','roomId':'r','from':'" P1 "','to':'" P2 "',"
        "'candidate':{'candidate':[[[[[[[[['x']]]]]]]]]}}",
        "message is nested deeper than 8 levels", NULL);
}

static void embedded_nul(void **state)
{
    /* NUL in values: each field's rule (ids) or the NUL rule (forwarded). */
    bad("{'type':'join','roomId':'r\\u0000','peerId':'" P1 "'}", RULE_ROOM, NULL);
    bad("{'type':'join\\u0000','roomId':'r','peerId':'" P1 "'}", RULE_TYPE, NULL);
    /* NUL in a name: json-c would cut "roomId\u0000x" to "roomId". */
    bad("{'type':'join','roomId\\u0000x':'r','peerId':'" P1 "'}",
        "field names must not contain NUL characters", NULL);
    bad("{'type':'candidate','roomId':'r','from':'" P1 "','to':'" P2 "',"
        "'candidate':{'candidate':'c','sdpMid\\u0000':'0'}}",
        "field names must not contain NUL characters", NULL);
    /* A raw NUL byte inside a string ends json-c's input early. */
    static const char raw[] = "{\"type\":\"join\",\"roomId\":\"r\0\",\"peerId\":\"" P1 "\"}";
    sg_msg m;
    sg_msg_init(&m);
    sg_proto_error err;
    assert_int_equal(sg_proto_decode(raw, sizeof raw - 1, &m, &err), -1);
    assert_non_null(strstr(err.message, "not valid JSON"));
    sg_msg_clear(&m);
}

static void invalid_utf8(void **state)
{
    static const char *const seqs[] = {
        "\xff", "\xc0\x80", "\xc1\xbf", "\xe0\x80\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80",
        "\xf5\x80\x80\x80", "\x80", "\xc3", "\xe2\x82", "\xf0\x9f\x98",
    };
    for (size_t i = 0; i < sizeof seqs / sizeof seqs[0]; i++) {
        char buf[256];
        snprintf(buf, sizeof buf,
                 "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2
                 "\",\"sdp\":\"v=0%s\"}",
                 seqs[i]);
        bad_raw(buf, strlen(buf), "message is not valid UTF-8");
    }
    /* A sequence cut by the end of the input. */
    bad_raw("{}\xc3", 3, "message is not valid UTF-8");
    bad_raw("{}\xf0\x9f\x98", 5, "message is not valid UTF-8");
    /* Valid 2-, 3- and 4-byte forms at the edges pass. */
    sg_msg m;
    sg_msg_init(&m);
    ok("{'type':'offer','roomId':'r','from':'" P1 "','to':'" P2
       "','sdp':'v=0\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80\xf0\x90\x80\x80\xf4\x8f\xbf\xbf'}",
       &m);
    sg_msg_clear(&m);
}

/* json-c keeps the last of repeated keys; the message is judged on it. */
static void duplicate_keys(void **state)
{
    sg_msg m;
    sg_msg_init(&m);
    ok("{'type':'join','roomId':'first','peerId':'" P1 "','roomId':'second'}", &m);
    assert_string_equal(m.room, "second");
    ok("{'type':'join','roomId':'bad{','peerId':'" P1 "','roomId':'good'}", &m);
    assert_string_equal(m.room, "good");
    bad("{'type':'join','roomId':'good','peerId':'" P1 "','roomId':'bad{'}", RULE_ROOM, NULL);
    ok("{'type':'offer','type':'join','roomId':'r','peerId':'" P1 "'}", &m);
    assert_int_equal(m.type, SG_MSG_JOIN);
    ok("{'type':'answer','roomId':'r','from':'" P1 "','to':'" P2 "','sdp':'v=0 a','sdp':'v=0 b'}",
       &m);
    assert_inner(&m, "{'type':'answer','roomId':'r','from':'" P1 "','to':'" P2 "','sdp':'v=0 b'}");
    sg_msg_clear(&m);
}

/* json-c's remaining leniencies, documented in proto.c: single-quoted field
 * names and raw control characters in strings parse (what is forwarded is
 * re-encoded as standard JSON); single-quoted values do not. */
static void json_c_leniencies(void **state)
{
    static const char s[] = "{'type':\"offer\",'roomId':\"r\",'from':\"" P1 "\",'to':\"" P2
                            "\",'sdp':\"v=0\tx\x01\"}";
    sg_msg m;
    sg_msg_init(&m);
    assert_int_equal(sg_proto_decode(s, sizeof s - 1, &m, NULL), 0);
    const char *want = "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2
                       "\",\"sdp\":\"v=0\\tx\\u0001\"}";
    assert_string_equal(m.inner.data, want);
    static const char v[] = "{\"type\":'join',\"roomId\":\"r\",\"peerId\":\"" P1 "\"}";
    sg_proto_error err;
    assert_int_equal(sg_proto_decode(v, sizeof v - 1, &m, &err), -1);
    assert_string_equal(err.message, "message is not valid JSON: unexpected character");
    sg_msg_clear(&m);
}

static void too_long_for_json_c(void **state)
{
    /* The length is judged before a byte is read, so a short buffer with a
     * huge length is safe to pass here. */
    sg_msg m;
    sg_msg_init(&m);
    sg_proto_error err;
    assert_int_equal(sg_proto_decode("{}", (size_t)INT_MAX + 1, &m, &err), -1);
    assert_string_equal(err.message, "message is too large");
    sg_msg_clear(&m);
}

/* ---- sg_msg lifecycle, names, encoding ----------------------------------- */

static void msg_reuse(void **state)
{
    sg_msg m;
    sg_msg_init(&m);
    ok("{'type':'offer','roomId':'r','from':'" P1 "','to':'" P2 "','sdp':'v=0','ack':true,"
       "'correlationId':'c'}",
       &m);
    assert_true(m.inner.len > 0);
    char *data = m.inner.data;
    /* A second decode without clear: every field reset, allocation kept. */
    ok("{'type':'join','roomId':'j','peerId':'" P2 "'}", &m);
    assert_int_equal(m.type, SG_MSG_JOIN);
    assert_string_equal(m.from, "");
    assert_string_equal(m.to, "");
    assert_false(m.ack);
    assert_false(m.has_cid);
    assert_int_equal(m.inner.len, 0);
    assert_ptr_equal(m.inner.data, data);
    assert_string_equal(m.inner.data, "");
    /* A failed decode leaves m reset. */
    ok("{'type':'candidate','roomId':'r','from':'" P1 "','to':'" P2 "','candidate':{'candidate':''}}",
       &m);
    assert_int_equal(sg_proto_decode("[]", 2, &m, NULL), -1);
    assert_int_equal(m.type, SG_MSG_NONE);
    assert_int_equal(m.inner.len, 0);
    assert_string_equal(m.room, "");
    /* clear frees; m is usable again afterwards. */
    sg_msg_clear(&m);
    assert_null(m.inner.data);
    ok("{'type':'answer','roomId':'r','from':'" P1 "','to':'" P2 "','sdp':'v=0'}", &m);
    assert_true(m.inner.len > 0);
    sg_msg_clear(&m);
    sg_msg_clear(&m); /* twice is harmless */
}

static void type_names(void **state)
{
    assert_string_equal(sg_msg_type_name(SG_MSG_JOIN), "join");
    assert_string_equal(sg_msg_type_name(SG_MSG_LEAVE), "leave");
    assert_string_equal(sg_msg_type_name(SG_MSG_OFFER), "offer");
    assert_string_equal(sg_msg_type_name(SG_MSG_ANSWER), "answer");
    assert_string_equal(sg_msg_type_name(SG_MSG_CANDIDATE), "candidate");
    assert_string_equal(sg_msg_type_name(SG_MSG_RESUME), "resume");
    assert_string_equal(sg_msg_type_name(SG_MSG_NONE), "none");
    assert_string_equal(sg_msg_type_name((sg_msg_type)99), "unknown");
}

/* A decode error turned into a frame is valid JSON that names the request. */
static void decode_error_round_trip(void **state)
{
    sg_proto_error err;
    bad("{'type':'join','roomId':'r-1','peerId':'x','correlationId':'c-9'}",
        "peerId: must be a UUID in 8-4-4-4-12 hex form", &err);
    sg_buf b;
    sg_buf_init(&b);
    sg_wire_error(&b, err.code, err.message, err.has_cid ? err.cid : NULL,
                          err.has_room ? err.room : NULL);
    assert_string_equal(b.data, "{\"type\":\"error\",\"code\":\"bad_request\",\"message\":"
                                "\"peerId: must be a UUID in 8-4-4-4-12 hex form\","
                                "\"correlationId\":\"c-9\",\"roomId\":\"r-1\"}");
    struct json_object *o = json_tokener_parse(b.data);
    assert_non_null(o);
    json_object_put(o);
    sg_buf_free(&b);
}

/* ---- fast path vs json-c path ---------------------------------------------- */

/* sg_proto_decode takes a DOM-less path for plainly written relays and falls
 * back to json-c for anything else; both must give the same result, field by
 * field and byte by byte, including on messages near the edge of what the
 * fast path takes (escapes, nulls, numbers, repeats, whitespace). */
static void same_as_reference(const char *text, size_t len)
{
    sg_msg m, r;
    sg_msg_init(&m);
    sg_msg_init(&r);
    sg_proto_error e, re;
    int rc = sg_proto_decode(text, len, &m, &e);
    int rrc = sg_proto_decode_reference(text, len, &r, &re);
    if (rc != rrc)
        fail_msg("rc %d vs reference %d for %.*s", rc, rrc, (int)len, text);
    assert_int_equal(m.type, r.type);
    assert_string_equal(m.room, r.room);
    assert_string_equal(m.from, r.from);
    assert_string_equal(m.to, r.to);
    assert_string_equal(m.peer, r.peer);
    assert_string_equal(m.cid, r.cid);
    assert_int_equal(m.has_cid, r.has_cid);
    assert_int_equal(m.ack, r.ack);
    assert_int_equal(m.inner.len, r.inner.len);
    if (m.inner.len)
        assert_memory_equal(m.inner.data, r.inner.data, m.inner.len);
    assert_string_equal(e.code, re.code);
    assert_string_equal(e.message, re.message);
    assert_int_equal(e.has_cid, re.has_cid);
    assert_string_equal(e.cid, re.cid);
    assert_int_equal(e.has_room, re.has_room);
    assert_string_equal(e.room, re.room);
    sg_msg_clear(&m);
    sg_msg_clear(&r);
}

static void fast_path_agrees(void **state)
{
    static const char *const cases[] = {
        /* plainly written: the fast path takes them */
        "{\"type\":\"candidate\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"candidate\":{\"candidate\":\"candidate:1 1 udp 2 10.0.0.1 9 typ host\",\"sdpMid\":\"0\",\"sdpMLineIndex\":0,\"usernameFragment\":null},\"correlationId\":\"c1\",\"ack\":true}",
        "{\"type\":\"candidate\",\"roomId\":\"r\",\"from\":\"" P1_UPPER "\",\"to\":\"" P2 "\",\"candidate\":{\"usernameFragment\":\"u\",\"sdpMLineIndex\":65535,\"candidate\":\"\"}}",
        " \t\r\n{ \"ack\" : false , \"to\" :\"" P2 "\", \"type\":\"candidate\",\"from\":\"" P1 "\",\"roomId\":\"a.b:c/d-e_f\",\"candidate\":{ \"candidate\" : \"x\" , \"sdpMid\" : null } } \n",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\\r\\no=- 1 2 IN IP4 127.0.0.1\\r\\ns=\\\"q\\\" \\\\ \\t\\u001f\\u0001 \xc3\xa9\\r\\n\"}",
        "{\"type\":\"answer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P1 "\",\"sdp\":\"v=0\",\"ack\":false,\"correlationId\":\"x.y-z_1\"}",
        /* the fast path gives up: same result through json-c */
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\\/\\b\\f\\u00e9\\u001F\\u000a\"}",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\x01\x1f\t\"}",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\\u0000\"}",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"\\u0076=0\"}",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=1\"}",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\",\"sdp\":\"v=0 2\"}",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"roomId\":\"bad room\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\"}",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\",\"candidate\":{\"candidate\":\"x\"}}",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\"}",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\",\"peerId\":\"" P1 "\"}",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\",\"x\":1}",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\",\"ack\":null}",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\",\"ack\":truex}",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\",\"ack\":1}",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\"} x",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\",}",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\"",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"not-a-uuid\",\"sdp\":\"v=0\"}",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\",\"correlationId\":\"\"}",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\",\"correlationId\":\"a\\u0062\"}",
        "{\"type\":\"offe\\u0072\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\"}",
        "{\"typ\\u0065\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\"}",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\",\"\":1}",
        "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\"}\f",
        "{'type':\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\"}",
        "{\"type\":\"candidate\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"candidate\":{\"candidate\":\"x\",\"sdpMLineIndex\":01}}",
        "{\"type\":\"candidate\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"candidate\":{\"candidate\":\"x\",\"sdpMLineIndex\":65536}}",
        "{\"type\":\"candidate\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"candidate\":{\"candidate\":\"x\",\"sdpMLineIndex\":100000}}",
        "{\"type\":\"candidate\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"candidate\":{\"candidate\":\"x\",\"sdpMLineIndex\":1.0}}",
        "{\"type\":\"candidate\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"candidate\":{\"candidate\":\"x\",\"sdpMLineIndex\":1e2}}",
        "{\"type\":\"candidate\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"candidate\":{\"candidate\":\"x\",\"sdpMLineIndex\":-0}}",
        "{\"type\":\"candidate\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"candidate\":{\"candidate\":\"x\",\"sdpMLineIndex\":\"0\"}}",
        "{\"type\":\"candidate\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"candidate\":{\"candidate\":null}}",
        "{\"type\":\"candidate\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"candidate\":{\"sdpMid\":\"0\"}}",
        "{\"type\":\"candidate\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"candidate\":{}}",
        "{\"type\":\"candidate\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"candidate\":{\"candidate\":\"x\",\"candidate\":\"y\"}}",
        "{\"type\":\"candidate\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"candidate\":{\"candidate\":\"x\",\"foo\":1}}",
        "{\"type\":\"candidate\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"candidate\":{\"candidate\":\"x\",\"sdpMid\":nul}}",
        "{\"type\":\"candidate\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"candidate\":[]}",
        "{\"type\":\"candidate\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"candidate\":{\"candidate\":\"x\"},\"sdp\":\"v=0\"}",
        "{\"type\":\"join\",\"roomId\":\"r\",\"peerId\":\"" P1 "\"}",
        "{}",
        "",
        "[]",
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        same_as_reference(cases[i], strlen(cases[i]));
    /* NUL bytes and invalid UTF-8 need explicit lengths. */
    static const char nul[] = "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\0\"}";
    same_as_reference(nul, sizeof nul - 1);
    static const char bad[] = "{\"type\":\"offer\",\"roomId\":\"r\",\"from\":\"" P1 "\",\"to\":\"" P2 "\",\"sdp\":\"v=0\xc0\xaf\"}";
    same_as_reference(bad, sizeof bad - 1);
    /* Every prefix of a valid relay: truncation anywhere. */
    const char *full = cases[0];
    for (size_t n = 0; n <= strlen(full); n++)
        same_as_reference(full, n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(valid_join),
        cmocka_unit_test(valid_leave_with_cid),
        cmocka_unit_test(valid_offer_inner),
        cmocka_unit_test(valid_answer_ack),
        cmocka_unit_test(valid_candidate_variants),
        cmocka_unit_test(valid_candidate_ack_and_upper_ids),
        cmocka_unit_test(valid_resume),
        cmocka_unit_test(missing_required_fields),
        cmocka_unit_test(wrong_types),
        cmocka_unit_test(unknown_and_misplaced_fields),
        cmocka_unit_test(candidate_object_rules),
        cmocka_unit_test(room_id_rules),
        cmocka_unit_test(peer_id_rules),
        cmocka_unit_test(correlation_id_rules),
        cmocka_unit_test(error_echoes_context),
        cmocka_unit_test(type_rules),
        cmocka_unit_test(sdp_rules),
        cmocka_unit_test(ack_rules),
        cmocka_unit_test(resume_rules),
        cmocka_unit_test(not_an_object),
        cmocka_unit_test(trailing_data),
        cmocka_unit_test(truncated),
        cmocka_unit_test(syntax_errors),
        cmocka_unit_test(nesting_cap),
        cmocka_unit_test(embedded_nul),
        cmocka_unit_test(invalid_utf8),
        cmocka_unit_test(duplicate_keys),
        cmocka_unit_test(json_c_leniencies),
        cmocka_unit_test(too_long_for_json_c),
        cmocka_unit_test(msg_reuse),
        cmocka_unit_test(type_names),
        cmocka_unit_test(decode_error_round_trip),
        cmocka_unit_test(fast_path_agrees),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
