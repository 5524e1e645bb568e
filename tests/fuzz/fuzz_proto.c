/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer driver for proto: decodes the input as a client message. Besides
 * memory errors (ASan/UBSan) it traps on broken invariants: an accepted
 * message holds only valid identifiers; a relay's inner parses back with
 * json-c as one object, and decodes again to exactly the same bytes (inner is
 * canonical); other messages have no inner; a rejected message leaves m reset,
 * echoes only valid ids, and its error frame is JSON with a printable ASCII
 * message. And sg_proto_decode (a DOM-less fast path for plainly written
 * relays, the json-c path for the rest) agrees in every field and every
 * byte with sg_proto_decode_reference (the json-c path alone). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <json-c/json.h>

#include "sg/proto.h"
#include "sg/wire.h"

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond))                                                                  \
            __builtin_trap();                                                         \
    } while (0)

static void check_peer(const char *id, bool set)
{
    char norm[SG_PEER_LEN + 1];
    if (!set) {
        CHECK(id[0] == '\0');
        return;
    }
    CHECK(sg_peer_id_normalize(id, strlen(id), norm) && strcmp(norm, id) == 0);
}

static void check_json_object(const char *s, size_t n)
{
    struct json_tokener *tok = json_tokener_new();
    CHECK(tok != NULL);
    struct json_object *o = json_tokener_parse_ex(tok, s, (int)n);
    CHECK(o != NULL && json_object_is_type(o, json_type_object));
    CHECK(json_tokener_get_parse_end(tok) == n);
    json_object_put(o);
    json_tokener_free(tok);
}

static void check_accepted(const sg_msg *m)
{
    CHECK(m->type >= SG_MSG_JOIN && m->type <= SG_MSG_RESUME);
    CHECK(sg_room_id_valid(m->room, strlen(m->room)));
    CHECK(m->has_cid ? sg_cid_valid(m->cid, strlen(m->cid)) : m->cid[0] == '\0');
    bool relay = m->type == SG_MSG_OFFER || m->type == SG_MSG_ANSWER || m->type == SG_MSG_CANDIDATE;
    check_peer(m->peer, !relay);
    check_peer(m->from, relay);
    check_peer(m->to, relay);
    CHECK(relay || !m->ack);
    if (!relay) {
        CHECK(m->inner.len == 0);
        return;
    }
    CHECK(m->inner.len > 0 && m->inner.data[m->inner.len] == '\0');
    check_json_object(m->inner.data, m->inner.len);

    /* inner is itself a valid message, and canonical: decoding it again
     * yields the same fields and the very same bytes. */
    sg_msg again;
    sg_msg_init(&again);
    sg_proto_error err;
    CHECK(sg_proto_decode(m->inner.data, m->inner.len, &again, &err) == 0);
    CHECK(again.type == m->type && !again.ack && !again.has_cid);
    CHECK(strcmp(again.room, m->room) == 0 && strcmp(again.from, m->from) == 0 &&
          strcmp(again.to, m->to) == 0);
    CHECK(again.inner.len == m->inner.len &&
          memcmp(again.inner.data, m->inner.data, m->inner.len) == 0);
    sg_msg_clear(&again);
}

static void check_rejected(const sg_msg *m, const sg_proto_error *err)
{
    CHECK(m->type == SG_MSG_NONE && m->inner.len == 0 && m->room[0] == '\0');
    CHECK(err->code != NULL && strcmp(err->code, "bad_request") == 0);
    size_t n = strnlen(err->message, sizeof err->message);
    CHECK(n > 0 && n < sizeof err->message);
    for (size_t i = 0; i < n; i++)
        CHECK(err->message[i] >= 0x20 && err->message[i] < 0x7f);
    CHECK(!err->has_cid || sg_cid_valid(err->cid, strlen(err->cid)));
    CHECK(!err->has_room || sg_room_id_valid(err->room, strlen(err->room)));

    sg_buf b;
    sg_buf_init(&b);
    sg_wire_error(&b, err->code, err->message, err->has_cid ? err->cid : NULL,
                          err->has_room ? err->room : NULL);
    check_json_object(b.data, b.len);
    sg_buf_free(&b);
}

static void check_same(int rc, const sg_msg *m, const sg_proto_error *err, int rrc,
                       const sg_msg *r, const sg_proto_error *rerr)
{
    CHECK(rc == rrc);
    CHECK(m->type == r->type && m->has_cid == r->has_cid && m->ack == r->ack &&
          m->last_seq == r->last_seq);
    CHECK(strcmp(m->room, r->room) == 0 && strcmp(m->peer, r->peer) == 0 &&
          strcmp(m->from, r->from) == 0 && strcmp(m->to, r->to) == 0 &&
          strcmp(m->cid, r->cid) == 0 && strcmp(m->resume_token, r->resume_token) == 0);
    CHECK(m->inner.len == r->inner.len &&
          (!m->inner.len || memcmp(m->inner.data, r->inner.data, m->inner.len) == 0));
    CHECK(strcmp(err->code, rerr->code) == 0 && strcmp(err->message, rerr->message) == 0);
    CHECK(err->has_cid == rerr->has_cid && strcmp(err->cid, rerr->cid) == 0);
    CHECK(err->has_room == rerr->has_room && strcmp(err->room, rerr->room) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sg_msg m, r;
    sg_msg_init(&m);
    sg_msg_init(&r);
    sg_proto_error err, rerr;
    int rc = sg_proto_decode((const char *)data, size, &m, &err);
    if (rc == 0)
        check_accepted(&m);
    else
        check_rejected(&m, &err);
    int rrc = sg_proto_decode_reference((const char *)data, size, &r, &rerr);
    check_same(rc, &m, &err, rrc, &r, &rerr);
    sg_msg_clear(&m);
    sg_msg_clear(&r);
    return 0;
}
