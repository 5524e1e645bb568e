/* SPDX-License-Identifier: Apache-2.0 */
/* proto: validation of client messages and encoding of error messages.
 *
 * Decoding is two layers. The text layer makes sure the bytes are exactly one
 * JSON object (strict UTF-8, json-c in strict mode with a depth cap, nothing
 * but whitespace after the object). The schema layer then checks the object
 * against a table per message type: which fields are allowed, which are
 * required, and one checker per field that both validates and copies the
 * value into sg_msg. Nothing of the json-c tree survives sg_proto_decode: the
 * ids are copied into the fixed arrays of sg_msg and the relay payload is
 * re-encoded into m->inner, so what a sender wrote is never forwarded as is.
 *
 * Relays (offer, answer, candidate) that are plainly written take a fast
 * path first: one pass over the text, no DOM, strings forwarded as they were
 * written when that is exactly what re-encoding would produce. It accepts a
 * subset of what the json-c path accepts and gives up on anything else
 * (escapes other than the canonical ones, duplicate or unknown keys, any
 * field that would fail validation, ...), which then goes through the json-c
 * path from scratch: errors, and everything unusual, are judged there only.
 * sg_proto_decode_reference is the json-c path alone; the fuzzer checks that
 * both agree on every input. The json-c path was a quarter of the gateway's
 * CPU under relay load.
 *
 * Leniencies json-c 0.16 keeps even in strict mode, and why they are
 * harmless here: single-quoted field names and raw control characters inside
 * strings are accepted (every string we forward is re-encoded with
 * sg_buf_json_str, so the relay is standard JSON whatever the sender wrote);
 * NaN/Infinity parse as doubles and every numeric field demands a JSON
 * integer; a repeated key keeps its last value (json-c replaces on insert),
 * and the whole message is judged on that last value.
 */
#include "sg/proto.h"
#include "sg/utf8.h"
#include "sg/util.h"

#include <json-c/json.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Nesting allowed by the tokener. A valid message needs 2 (the message and
 * its candidate object); the margin only makes the error for junk fields an
 * "unknown field" rather than a parse error, while the cap still bounds the
 * tokener's stack for hostile input. */
#define PROTO_MAX_DEPTH 8
/* json_tokener_parse_ex takes an int length. The configured message cap
 * (SIGNAL_MAX_MESSAGE_BYTES) is enforced by the WebSocket layer long before
 * this; the check here only keeps the cast honest. */
#define PROTO_TEXT_MAX ((size_t)INT_MAX)
/* lastSeq must be exactly representable as a JavaScript number. */
#define PROTO_SEQ_MAX ((UINT64_C(1) << 53) - 1)
#define PROTO_MLINE_MAX 65535
/* How much of an unknown field's name an error message quotes. */
#define PROTO_KEY_QUOTE_MAX 32

#define RULE_ROOM "must be 1-128 characters of A-Za-z0-9_.:/-"
#define RULE_PEER "must be a UUID in 8-4-4-4-12 hex form"
#define RULE_CID "must be 1-64 characters of A-Za-z0-9_.-"
#define RULE_TOKEN "must be 1-128 characters of A-Za-z0-9_-"

/* ---- identifiers (§2) ---------------------------------------------------- */

static bool is_alnum_ascii(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* True when s[0..n) is 1..max characters of A-Za-z0-9 plus `extra`. The NUL
 * test matters: strchr would otherwise find the terminator of `extra`. */
static bool charset_valid(const char *s, size_t n, size_t max, const char *extra)
{
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!is_alnum_ascii(c) && (c == '\0' || !strchr(extra, c)))
            return false;
    }
    return true;
}

bool sg_room_id_valid(const char *s, size_t n) { return charset_valid(s, n, SG_ROOM_MAX, "_.:/-"); }

bool sg_cid_valid(const char *s, size_t n) { return charset_valid(s, n, SG_CID_MAX, "_.-"); }

static bool resume_token_valid(const char *s, size_t n)
{
    return charset_valid(s, n, SG_RESUME_TOKEN_MAX, "_-");
}

static int hex_lower(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c;
    if (c >= 'a' && c <= 'f')
        return c;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 'a';
    return -1;
}

bool sg_peer_id_normalize(const char *s, size_t n, char out[SG_PEER_LEN + 1])
{
    if (n != SG_PEER_LEN)
        return false;
    char tmp[SG_PEER_LEN + 1];
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return false;
            tmp[i] = '-';
            continue;
        }
        int h = hex_lower(c);
        if (h < 0)
            return false;
        tmp[i] = (char)h;
    }
    tmp[n] = '\0';
    /* out is written only for a valid id, so a caller's buffer is never left
     * half-filled. */
    memcpy(out, tmp, sizeof tmp);
    return true;
}

/* ---- text layer ---------------------------------------------------------- */

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above
 * U+10FFFF. The WebSocket layer already closes with 1007 on invalid text, but
 * this module is pure and fed by other callers (and the fuzzer); bytes >= 0x80
 * are copied into relays verbatim, and a relay that is not UTF-8 would make
 * the target's browser drop its connection. json-c's own VALIDATE_UTF8 flag
 * lets surrogates and overlong forms through, hence our own (strict) check. */
/* (sg_utf8_valid, utf8.h) */

static bool json_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* True when the text holds a \u0000 escape. Needed because json-c cuts object
 * keys at the first NUL ({"roomId\u0000x":..} arrives as "roomId"), so a key
 * with an embedded NUL could pass for a known field. Skipping every escape
 * pair keeps "\\u0000" (an escaped backslash, then text) from matching; a
 * backslash outside a string is a parse error before this ever runs. */
static bool has_escaped_nul(const char *s, size_t n)
{
    for (size_t i = 0; i + 1 < n; i++) {
        if (s[i] != '\\')
            continue;
        if (s[i + 1] == 'u' && n - i >= 6 && memcmp(s + i + 2, "0000", 4) == 0)
            return true;
        i++; /* skip the escaped character */
    }
    return false;
}

/* ---- errors -------------------------------------------------------------- */

static void error_init(sg_proto_error *err)
{
    err->code = "bad_request";
    err->message[0] = '\0';
    err->cid[0] = '\0';
    err->has_cid = false;
    err->room[0] = '\0';
    err->has_room = false;
}

__attribute__((format(printf, 2, 3)))
static int fail(sg_proto_error *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return -1;
}

/* Copies a client-chosen field name for quoting in an error message:
 * printable ASCII only and at most PROTO_KEY_QUOTE_MAX bytes, so the message
 * stays short and valid UTF-8 however hostile the name. */
static void quote_key(char *out, size_t cap, const char *key)
{
    if (!key[0]) {
        sg_strlcpy(out, "\"\"", cap);
        return;
    }
    size_t i = 0, o = 0;
    for (; key[i] && i < PROTO_KEY_QUOTE_MAX && o + 1 < cap; i++) {
        unsigned char c = (unsigned char)key[i];
        out[o++] = c > 0x20 && c < 0x7F ? (char)c : '?';
    }
    if (key[i] && o + 3 < cap) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
}

/* ---- schema layer -------------------------------------------------------- */

enum {
    F_TYPE,
    F_CID,
    F_ROOM,
    F_PEER,
    F_FROM,
    F_TO,
    F_SDP,
    F_CANDIDATE,
    F_ACK,
    F_TOKEN,
    F_LAST_SEQ,
    F_COUNT
};
#define BIT(f) (1u << (f))

struct field;
/* A checker validates one present field (v may be NULL: json-c's null) and
 * copies it into m; on failure it fills err and returns -1. */
typedef int (*field_check)(const struct field *f, struct json_object *v, sg_msg *m,
                           sg_proto_error *err);

struct field {
    const char *name;
    field_check check; /* NULL for "type", which is read before the table */
    size_t dst;        /* offset in sg_msg of the id array, for id checkers */
};

/* Returns the string of v, or NULL when v is not a JSON string. */
static const char *str_of(struct json_object *v, size_t *n)
{
    if (!json_object_is_type(v, json_type_string))
        return NULL;
    *n = (size_t)json_object_get_string_len(v);
    return json_object_get_string(v);
}

static int check_cid(const struct field *f, struct json_object *v, sg_msg *m, sg_proto_error *err)
{
    size_t n;
    const char *s = str_of(v, &n);
    if (!s || !sg_cid_valid(s, n))
        return fail(err, "%s: " RULE_CID, f->name);
    memcpy(m->cid, s, n + 1);
    m->has_cid = true;
    return 0;
}

static int check_room(const struct field *f, struct json_object *v, sg_msg *m, sg_proto_error *err)
{
    size_t n;
    const char *s = str_of(v, &n);
    if (!s || !sg_room_id_valid(s, n))
        return fail(err, "%s: " RULE_ROOM, f->name);
    memcpy(m->room, s, n + 1);
    return 0;
}

/* peerId, from and to: the table says which array of sg_msg receives it. */
static int check_peer(const struct field *f, struct json_object *v, sg_msg *m, sg_proto_error *err)
{
    size_t n;
    const char *s = str_of(v, &n);
    if (!s || !sg_peer_id_normalize(s, n, (char *)m + f->dst))
        return fail(err, "%s: " RULE_PEER, f->name);
    return 0;
}

/* Strings that are forwarded (sdp, candidate fields) may hold any UTF-8 but
 * no NUL: C consumers downstream (logs, Redis scripts) would cut them. */
static bool forwardable(const char *s, size_t n) { return memchr(s, '\0', n) == NULL; }

static int check_sdp(const struct field *f, struct json_object *v, sg_msg *m, sg_proto_error *err)
{
    size_t n;
    const char *s = str_of(v, &n);
    if (!s || n < 3 || memcmp(s, "v=0", 3) != 0)
        return fail(err, "%s: must be a string starting with v=0", f->name);
    if (!forwardable(s, n))
        return fail(err, "%s: must not contain NUL characters", f->name);
    return 0;
}

static int check_ack(const struct field *f, struct json_object *v, sg_msg *m, sg_proto_error *err)
{
    if (!json_object_is_type(v, json_type_boolean))
        return fail(err, "%s: must be true or false", f->name);
    m->ack = json_object_get_boolean(v);
    return 0;
}

static int check_token(const struct field *f, struct json_object *v, sg_msg *m, sg_proto_error *err)
{
    size_t n;
    const char *s = str_of(v, &n);
    if (!s || !resume_token_valid(s, n))
        return fail(err, "%s: " RULE_TOKEN, f->name);
    memcpy(m->resume_token, s, n + 1);
    return 0;
}

/* Reads a JSON integer (never a double, not even 1.0) in [0, max]. json-c
 * keeps integers above INT64_MAX as uint64, for which get_int64 answers
 * INT64_MAX, so those fail the range test as they should. */
static bool uint_in_range(struct json_object *v, uint64_t max, uint64_t *out)
{
    if (!json_object_is_type(v, json_type_int))
        return false;
    int64_t i = json_object_get_int64(v);
    if (i < 0 || (uint64_t)i > max)
        return false;
    *out = (uint64_t)i;
    return true;
}

static int check_last_seq(const struct field *f, struct json_object *v, sg_msg *m,
                          sg_proto_error *err)
{
    if (!uint_in_range(v, PROTO_SEQ_MAX, &m->last_seq))
        return fail(err, "%s: must be an integer from 0 to 2^53-1", f->name);
    return 0;
}

/* The candidate object (§3, RTCIceCandidate.toJSON()). Its members, in the
 * order they are written into relay.inner. */
enum { C_CANDIDATE, C_SDP_MID, C_MLINE, C_UFRAG, C_COUNT };
static const char *const cand_names[C_COUNT] = {
    [C_CANDIDATE] = "candidate",
    [C_SDP_MID] = "sdpMid",
    [C_MLINE] = "sdpMLineIndex",
    [C_UFRAG] = "usernameFragment",
};

static int cand_member(const char *key)
{
    for (int i = 0; i < C_COUNT; i++)
        if (strcmp(key, cand_names[i]) == 0)
            return i;
    return -1;
}

static int check_cand_member(int c, struct json_object *v, sg_proto_error *err)
{
    const char *name = cand_names[c];
    if (c == C_MLINE) {
        uint64_t idx;
        if (v && !uint_in_range(v, PROTO_MLINE_MAX, &idx))
            return fail(err, "candidate.%s: must be an integer 0-65535 or null", name);
        return 0;
    }
    size_t n;
    const char *s = str_of(v, &n);
    if (!s && (c == C_CANDIDATE || v))
        return fail(err, "candidate.%s: must be a string%s", name,
                    c == C_CANDIDATE ? "" : " or null");
    if (s && !forwardable(s, n))
        return fail(err, "candidate.%s: must not contain NUL characters", name);
    return 0;
}

static int check_candidate(const struct field *f, struct json_object *v, sg_msg *m,
                           sg_proto_error *err)
{
    if (!json_object_is_type(v, json_type_object))
        return fail(err, "%s: must be an object", f->name);
    struct json_object_iter it;
    json_object_object_foreachC(v, it) {
        int c = cand_member(it.key);
        if (c < 0) {
            char key[PROTO_KEY_QUOTE_MAX + 4];
            quote_key(key, sizeof key, it.key);
            return fail(err, "candidate.%s: unknown field", key);
        }
        if (check_cand_member(c, it.val, err) < 0)
            return -1;
    }
    if (!json_object_object_get_ex(v, cand_names[C_CANDIDATE], NULL))
        return fail(err, "candidate.candidate: required");
    return 0;
}

static const struct field fields[F_COUNT] = {
    [F_TYPE] = {"type", NULL, 0},
    [F_CID] = {"correlationId", check_cid, 0},
    [F_ROOM] = {"roomId", check_room, 0},
    [F_PEER] = {"peerId", check_peer, offsetof(sg_msg, peer)},
    [F_FROM] = {"from", check_peer, offsetof(sg_msg, from)},
    [F_TO] = {"to", check_peer, offsetof(sg_msg, to)},
    [F_SDP] = {"sdp", check_sdp, 0},
    [F_CANDIDATE] = {"candidate", check_candidate, 0},
    [F_ACK] = {"ack", check_ack, 0},
    [F_TOKEN] = {"resumeToken", check_token, 0},
    [F_LAST_SEQ] = {"lastSeq", check_last_seq, 0},
};

#define MEMBERSHIP (BIT(F_TYPE) | BIT(F_ROOM) | BIT(F_PEER))
#define RELAY (BIT(F_TYPE) | BIT(F_ROOM) | BIT(F_FROM) | BIT(F_TO))

/* Per message type: the fields it must have and the ones it may have. */
static const struct msg_spec {
    const char *name;
    unsigned required;
    unsigned optional;
} specs[] = {
    [SG_MSG_NONE] = {"none", 0, 0},
    [SG_MSG_JOIN] = {"join", MEMBERSHIP, BIT(F_CID)},
    [SG_MSG_LEAVE] = {"leave", MEMBERSHIP, BIT(F_CID)},
    [SG_MSG_OFFER] = {"offer", RELAY | BIT(F_SDP), BIT(F_CID) | BIT(F_ACK)},
    [SG_MSG_ANSWER] = {"answer", RELAY | BIT(F_SDP), BIT(F_CID) | BIT(F_ACK)},
    [SG_MSG_CANDIDATE] = {"candidate", RELAY | BIT(F_CANDIDATE), BIT(F_CID) | BIT(F_ACK)},
    [SG_MSG_RESUME] = {"resume", MEMBERSHIP | BIT(F_TOKEN) | BIT(F_LAST_SEQ), BIT(F_CID)},
};
#define SPEC_COUNT (sizeof specs / sizeof specs[0])

const char *sg_msg_type_name(sg_msg_type t)
{
    if ((size_t)t >= SPEC_COUNT)
        return "unknown";
    return specs[t].name;
}

static int field_index(const char *key)
{
    for (int i = 0; i < F_COUNT; i++)
        if (strcmp(key, fields[i].name) == 0)
            return i;
    return -1;
}

/* "type" compares with its length, so "join\u0000x" is not "join". */
static sg_msg_type type_of(struct json_object *v)
{
    size_t n;
    const char *s = str_of(v, &n);
    if (!s)
        return SG_MSG_NONE;
    for (size_t t = SG_MSG_JOIN; t < SPEC_COUNT; t++)
        if (strlen(specs[t].name) == n && memcmp(specs[t].name, s, n) == 0)
            return (sg_msg_type)t;
    return SG_MSG_NONE;
}

/* Fills err's correlationId and roomId from the message when they are valid,
 * before anything else is judged: an error about any field still reaches the
 * request it answers (§4) and names the room it concerns. */
static void echo_context(struct json_object *root, sg_proto_error *err)
{
    struct json_object *v;
    size_t n;
    const char *s;
    if (json_object_object_get_ex(root, fields[F_CID].name, &v) && (s = str_of(v, &n)) &&
        sg_cid_valid(s, n)) {
        memcpy(err->cid, s, n + 1);
        err->has_cid = true;
    }
    if (json_object_object_get_ex(root, fields[F_ROOM].name, &v) && (s = str_of(v, &n)) &&
        sg_room_id_valid(s, n)) {
        memcpy(err->room, s, n + 1);
        err->has_room = true;
    }
}

static int check_message(struct json_object *root, sg_msg *m, sg_proto_error *err)
{
    struct json_object *tv;
    if (!json_object_object_get_ex(root, "type", &tv))
        return fail(err, "type: required");
    m->type = type_of(tv);
    if (m->type == SG_MSG_NONE)
        return fail(err, "type: must be one of join, leave, offer, answer, candidate, resume");
    const struct msg_spec *spec = &specs[m->type];

    /* Unknown fields first: a message with a field we do not know is wrong as
     * a whole, whatever its other fields say. */
    struct json_object_iter it;
    json_object_object_foreachC(root, it) {
        int fi = field_index(it.key);
        if (fi >= 0 && ((spec->required | spec->optional) & BIT(fi)))
            continue;
        char key[PROTO_KEY_QUOTE_MAX + 4];
        quote_key(key, sizeof key, it.key);
        if (fi < 0)
            return fail(err, "%s: unknown field", key);
        return fail(err, "%s: not allowed in %s", key, spec->name);
    }

    /* Then every field in table order, so the error for a message with
     * several faults is always the same one. */
    for (int fi = F_TYPE + 1; fi < F_COUNT; fi++) {
        if (!((spec->required | spec->optional) & BIT(fi)))
            continue;
        struct json_object *v;
        if (!json_object_object_get_ex(root, fields[fi].name, &v)) {
            if (spec->required & BIT(fi))
                return fail(err, "%s: required", fields[fi].name);
            continue;
        }
        if (fields[fi].check(&fields[fi], v, m, err) < 0)
            return -1;
    }
    return 0;
}

/* ---- relay.inner --------------------------------------------------------- */

static void put_key(sg_buf *b, const char *key)
{
    sg_buf_json_str(b, key, strlen(key));
    sg_buf_putc(b, ':');
}

static void put_str(sg_buf *b, const char *key, const char *s)
{
    put_key(b, key);
    sg_buf_json_str(b, s, strlen(s));
}

/* A validated string or null (v == NULL is json-c's null). */
static void put_json_str_or_null(sg_buf *b, struct json_object *v)
{
    if (!v) {
        sg_buf_puts(b, "null");
        return;
    }
    sg_buf_json_str(b, json_object_get_string(v), (size_t)json_object_get_string_len(v));
}

/* Writes the canonical relay.inner of a validated relay (§4): fixed field
 * order, lowercase ids, re-encoded strings, no ack and no correlationId. */
static void build_inner(struct json_object *root, sg_msg *m)
{
    sg_buf *b = &m->inner;
    sg_buf_putc(b, '{');
    put_str(b, "type", specs[m->type].name);
    sg_buf_putc(b, ',');
    put_str(b, "roomId", m->room);
    sg_buf_putc(b, ',');
    put_str(b, "from", m->from);
    sg_buf_putc(b, ',');
    put_str(b, "to", m->to);
    sg_buf_putc(b, ',');
    struct json_object *v = NULL;
    if (m->type == SG_MSG_CANDIDATE) {
        json_object_object_get_ex(root, "candidate", &v);
        put_key(b, "candidate");
        sg_buf_putc(b, '{');
        for (int c = 0; c < C_COUNT; c++) {
            struct json_object *cv;
            if (!json_object_object_get_ex(v, cand_names[c], &cv))
                continue; /* absent optionals stay absent */
            if (c > 0)
                sg_buf_putc(b, ',');
            put_key(b, cand_names[c]);
            if (c == C_MLINE && cv)
                sg_buf_printf(b, "%u", (unsigned)json_object_get_int64(cv)); /* 0-65535 */
            else
                put_json_str_or_null(b, cv);
        }
        sg_buf_putc(b, '}');
    } else {
        json_object_object_get_ex(root, "sdp", &v);
        put_key(b, "sdp");
        put_json_str_or_null(b, v);
    }
    sg_buf_putc(b, '}');
}

/* ---- sg_msg -------------------------------------------------------------- */

/* Resets every field but keeps the inner allocation for the next message. */
static void msg_reset(sg_msg *m)
{
    sg_buf inner = m->inner;
    memset(m, 0, sizeof *m);
    m->inner = inner;
    sg_buf_reset(&m->inner);
}

void sg_msg_init(sg_msg *m)
{
    memset(m, 0, sizeof *m);
    sg_buf_init(&m->inner);
}

void sg_msg_clear(sg_msg *m)
{
    sg_buf_free(&m->inner);
    sg_msg_init(m);
}

/* ---- decode -------------------------------------------------------------- */

/* Parses text into a JSON object, or fills err. */
static struct json_object *parse_object(const char *text, size_t len, sg_proto_error *err)
{
    if (len > PROTO_TEXT_MAX) {
        fail(err, "message is too large");
        return NULL;
    }
    if (!sg_utf8_valid(text, len)) {
        fail(err, "message is not valid UTF-8");
        return NULL;
    }
    /* Judged here rather than by json-c, which would wait for more input
     * after a bare number and make "42" look truncated. */
    size_t start = 0;
    while (start < len && json_ws(text[start]))
        start++;
    if (start == len || text[start] != '{') {
        fail(err, "message must be a JSON object");
        return NULL;
    }

    struct json_tokener *tok = json_tokener_new_ex(PROTO_MAX_DEPTH);
    if (!tok)
        abort(); /* out of memory: see util.h for why we do not carry on */
    /* STRICT rejects comments, trailing commas, leading zeros and True/False.
     * What follows the object is judged below rather than by json-c, so the
     * client is told that the object was fine and the tail was not. */
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS);
    struct json_object *root = json_tokener_parse_ex(tok, text, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);

    if (!root) {
        if (jerr == json_tokener_continue)
            fail(err, "message is truncated JSON");
        else if (jerr == json_tokener_error_depth)
            fail(err, "message is nested deeper than %d levels", PROTO_MAX_DEPTH);
        else
            fail(err, "message is not valid JSON: %s", json_tokener_error_desc(jerr));
        return NULL;
    }
    /* One object per message: only whitespace may follow it (a NUL byte
     * would stop json-c early, so the tail is checked byte by byte). */
    for (size_t i = end; i < len; i++) {
        if (!json_ws(text[i])) {
            json_object_put(root);
            fail(err, "message has data after the JSON object");
            return NULL;
        }
    }
    return root;
}

/* ---- fast path for relays ------------------------------------------------ */

/* The raw bytes of a JSON string, between its quotes. */
typedef struct span {
    const char *p;
    size_t n;
} span;

static size_t skip_ws(const char *s, size_t n, size_t i)
{
    while (i < n && json_ws(s[i]))
        i++;
    return i;
}

static int hex_nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f') /* lowercase only: sg_buf_json_str writes lowercase */
        return c - 'a' + 10;
    return -1;
}

/* Scans the JSON string at s[i]. Returns the index after its closing quote
 * and its raw bytes in *out, or 0 when the fast path does not take it. An
 * identifier may have no escape at all. A forwarded string may only have the
 * escapes sg_buf_json_str itself writes (\" \\ \n \r \t, and \u00xx in
 * lowercase for the other control characters but NUL), so that its raw bytes
 * are exactly its re-encoding; raw control characters, which json-c lets
 * through, are left to the json-c path, which escapes them. */
static size_t scan_str(const char *s, size_t n, size_t i, bool forwarded, span *out)
{
    if (i >= n || s[i] != '"')
        return 0;
    size_t start = ++i;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"') {
            out->p = s + start;
            out->n = i - start;
            return i + 1;
        }
        if (c < 0x20)
            return 0;
        if (c != '\\') {
            i++;
            continue;
        }
        if (!forwarded || n - i < 2)
            return 0;
        char e = s[i + 1];
        if (e == '"' || e == '\\' || e == 'n' || e == 'r' || e == 't') {
            i += 2;
            continue;
        }
        if (e != 'u' || n - i < 6 || s[i + 2] != '0' || s[i + 3] != '0' ||
            (s[i + 4] != '0' && s[i + 4] != '1'))
            return 0;
        int lo = hex_nibble(s[i + 5]);
        if (lo < 0)
            return 0;
        int v = (s[i + 4] - '0') * 16 + lo;
        if (v == 0 || v == '\t' || v == '\n' || v == '\r')
            return 0;
        i += 6;
    }
    return 0;
}

static bool span_is(span k, const char *name)
{
    size_t l = strlen(name);
    return k.n == l && memcmp(k.p, name, l) == 0;
}

/* The candidate object: members once each, strings, null for the optional
 * ones, sdpMLineIndex a canonical integer 0-65535 (its digits are then what
 * printf would write). Returns the index after the object, or 0. */
static size_t scan_candidate(const char *s, size_t n, size_t i, span cand[C_COUNT],
                             unsigned *seen, unsigned *nulls)
{
    if (i >= n || s[i] != '{')
        return 0;
    i = skip_ws(s, n, i + 1);
    for (;;) {
        span k;
        if (!(i = scan_str(s, n, i, false, &k)))
            return 0;
        int c = -1;
        for (int j = 0; j < C_COUNT && c < 0; j++)
            if (span_is(k, cand_names[j]))
                c = j;
        if (c < 0 || (*seen & BIT(c)))
            return 0;
        *seen |= BIT(c);
        i = skip_ws(s, n, i);
        if (i >= n || s[i] != ':')
            return 0;
        i = skip_ws(s, n, i + 1);
        if (c != C_CANDIDATE && n - i >= 4 && memcmp(s + i, "null", 4) == 0) {
            *nulls |= BIT(c);
            i += 4;
        } else if (c == C_MLINE) {
            size_t d = i;
            unsigned v = 0;
            while (i < n && i - d < 6 && s[i] >= '0' && s[i] <= '9')
                v = v * 10 + (unsigned)(s[i++] - '0');
            size_t nd = i - d;
            if (nd == 0 || nd > 5 || (nd > 1 && s[d] == '0') || v > PROTO_MLINE_MAX)
                return 0;
            cand[c] = (span){s + d, nd};
        } else if (!(i = scan_str(s, n, i, true, &cand[c]))) {
            return 0;
        }
        i = skip_ws(s, n, i);
        if (i >= n)
            return 0;
        if (s[i] == '}')
            return i + 1;
        if (s[i] != ',')
            return 0;
        i = skip_ws(s, n, i + 1);
    }
}

/* "key":"raw" (key is one of ours: no escaping). */
static void put_span_str(sg_buf *b, const char *key, span v)
{
    sg_buf_putc(b, '"');
    sg_buf_puts(b, key);
    sg_buf_puts(b, "\":\"");
    sg_buf_append(b, v.p, v.n);
    sg_buf_putc(b, '"');
}

/* Returns 0 with m (and err's echoed ids) filled exactly as the json-c path
 * would fill them, or -1 when the json-c path must judge the message; m may
 * then be half-filled. text is valid UTF-8. */
static int fast_decode(const char *s, size_t n, sg_msg *m, sg_proto_error *err)
{
    span v[F_COUNT];
    span cand[C_COUNT];
    unsigned seen = 0, cseen = 0, cnulls = 0;
    bool ack = false;
    size_t i = skip_ws(s, n, 0);
    if (i >= n || s[i] != '{')
        return -1;
    i = skip_ws(s, n, i + 1);
    for (;;) {
        span k;
        if (!(i = scan_str(s, n, i, false, &k)))
            return -1;
        int fi = -1;
        for (int j = 0; j < F_COUNT && fi < 0; j++)
            if (span_is(k, fields[j].name))
                fi = j;
        /* A repeated key: json-c keeps the last value; not worth copying. */
        if (fi < 0 || (seen & BIT(fi)))
            return -1;
        seen |= BIT(fi);
        i = skip_ws(s, n, i);
        if (i >= n || s[i] != ':')
            return -1;
        i = skip_ws(s, n, i + 1);
        if (fi == F_ACK) {
            if (n - i >= 4 && memcmp(s + i, "true", 4) == 0) {
                ack = true;
                i += 4;
            } else if (n - i >= 5 && memcmp(s + i, "false", 5) == 0) {
                i += 5;
            } else {
                return -1;
            }
        } else if (fi == F_CANDIDATE) {
            if (!(i = scan_candidate(s, n, i, cand, &cseen, &cnulls)))
                return -1;
        } else if (fi == F_LAST_SEQ || !(i = scan_str(s, n, i, fi == F_SDP, &v[fi]))) {
            return -1;
        }
        i = skip_ws(s, n, i);
        if (i >= n)
            return -1;
        if (s[i] == '}')
            break;
        if (s[i] != ',')
            return -1;
        i = skip_ws(s, n, i + 1);
    }
    if (skip_ws(s, n, i + 1) != n)
        return -1;

    if (!(seen & BIT(F_TYPE)))
        return -1;
    sg_msg_type t = SG_MSG_NONE;
    for (size_t j = SG_MSG_OFFER; j <= SG_MSG_CANDIDATE; j++)
        if (span_is(v[F_TYPE], specs[j].name))
            t = (sg_msg_type)j;
    if (t == SG_MSG_NONE)
        return -1;
    const struct msg_spec *spec = &specs[t];
    if ((seen & spec->required) != spec->required || (seen & ~(spec->required | spec->optional)))
        return -1;
    if (!sg_room_id_valid(v[F_ROOM].p, v[F_ROOM].n) ||
        !sg_peer_id_normalize(v[F_FROM].p, v[F_FROM].n, m->from) ||
        !sg_peer_id_normalize(v[F_TO].p, v[F_TO].n, m->to))
        return -1;
    if ((seen & BIT(F_CID)) && !sg_cid_valid(v[F_CID].p, v[F_CID].n))
        return -1;
    if (t == SG_MSG_CANDIDATE) {
        if (!(cseen & BIT(C_CANDIDATE)))
            return -1;
    } else if (v[F_SDP].n < 3 || memcmp(v[F_SDP].p, "v=0", 3) != 0) {
        return -1;
    }

    m->type = t;
    memcpy(m->room, v[F_ROOM].p, v[F_ROOM].n);
    m->room[v[F_ROOM].n] = '\0';
    memcpy(err->room, m->room, v[F_ROOM].n + 1);
    err->has_room = true;
    if (seen & BIT(F_CID)) {
        memcpy(m->cid, v[F_CID].p, v[F_CID].n);
        m->cid[v[F_CID].n] = '\0';
        m->has_cid = true;
        memcpy(err->cid, m->cid, v[F_CID].n + 1);
        err->has_cid = true;
    }
    m->ack = ack;

    /* The same bytes build_inner writes; type and ids need no escaping (the
     * id rules allow no character that would). */
    sg_buf *b = &m->inner;
    sg_buf_reserve(b, n + 64);
    sg_buf_puts(b, t == SG_MSG_CANDIDATE ? "{\"type\":\"candidate\",\"roomId\":\""
                   : t == SG_MSG_OFFER   ? "{\"type\":\"offer\",\"roomId\":\""
                                         : "{\"type\":\"answer\",\"roomId\":\"");
    sg_buf_append(b, m->room, v[F_ROOM].n);
    sg_buf_puts(b, "\",\"from\":\"");
    sg_buf_append(b, m->from, SG_PEER_LEN);
    sg_buf_puts(b, "\",\"to\":\"");
    sg_buf_append(b, m->to, SG_PEER_LEN);
    sg_buf_puts(b, "\",");
    if (t == SG_MSG_CANDIDATE) {
        sg_buf_puts(b, "\"candidate\":{");
        for (int c = 0; c < C_COUNT; c++) {
            if (!(cseen & BIT(c)))
                continue;
            if (c > 0)
                sg_buf_putc(b, ',');
            if (cnulls & BIT(c)) {
                sg_buf_putc(b, '"');
                sg_buf_puts(b, cand_names[c]);
                sg_buf_puts(b, "\":null");
            } else if (c == C_MLINE) {
                sg_buf_puts(b, "\"sdpMLineIndex\":");
                sg_buf_append(b, cand[c].p, cand[c].n);
            } else {
                put_span_str(b, cand_names[c], cand[c]);
            }
        }
        sg_buf_putc(b, '}');
    } else {
        put_span_str(b, "sdp", v[F_SDP]);
    }
    sg_buf_putc(b, '}');
    return 0;
}

static int decode_dom(const char *text, size_t len, sg_msg *m, sg_proto_error *err);

int sg_proto_decode(const char *text, size_t len, sg_msg *m, sg_proto_error *err)
{
    sg_proto_error scratch;
    if (!err)
        err = &scratch;
    error_init(err);
    msg_reset(m);
    if (len <= PROTO_TEXT_MAX && sg_utf8_valid(text, len) &&
        fast_decode(text, len, m, err) == 0)
        return 0;
    /* Anything unusual: the json-c path decides, and alone words errors. */
    return sg_proto_decode_reference(text, len, m, err);
}

int sg_proto_decode_reference(const char *text, size_t len, sg_msg *m, sg_proto_error *err)
{
    sg_proto_error scratch;
    if (!err)
        err = &scratch;
    error_init(err);
    msg_reset(m);
    return decode_dom(text, len, m, err);
}

static int decode_dom(const char *text, size_t len, sg_msg *m, sg_proto_error *err)
{
    struct json_object *root = parse_object(text, len, err);
    if (!root)
        goto fail;
    echo_context(root, err);
    if (check_message(root, m, err) < 0)
        goto fail;
    /* Every string value we accept was checked for NUL with its real length,
     * so an escaped NUL still present can only sit in a field name (or in a
     * value a repeated key replaced). */
    if (has_escaped_nul(text, len)) {
        fail(err, "field names must not contain NUL characters");
        goto fail;
    }
    if (m->type == SG_MSG_OFFER || m->type == SG_MSG_ANSWER || m->type == SG_MSG_CANDIDATE)
        build_inner(root, m);
    json_object_put(root);
    return 0;

fail:
    json_object_put(root);
    msg_reset(m); /* on error m holds nothing half-validated */
    return -1;
}

