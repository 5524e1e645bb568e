/* SPDX-License-Identifier: Apache-2.0 */
/* proto: validation of client messages (docs/protocol.md §2-3, §9); what the
 * server sends is wire.h's. Pure: no I/O. Decoding uses json-c with a depth cap;
 * the decoded message owns everything it points to until sg_msg_clear. */
#ifndef SG_PROTO_H
#define SG_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include "sg/buf.h"

#define SG_ROOM_MAX 128
#define SG_PEER_LEN 36
#define SG_CID_MAX 64
#define SG_RESUME_TOKEN_MAX 128

typedef enum {
    SG_MSG_NONE = 0,
    SG_MSG_JOIN,
    SG_MSG_LEAVE,
    SG_MSG_OFFER,
    SG_MSG_ANSWER,
    SG_MSG_CANDIDATE,
    SG_MSG_RESUME,
} sg_msg_type;

typedef struct sg_msg {
    sg_msg_type type;
    char room[SG_ROOM_MAX + 1];
    char peer[SG_PEER_LEN + 1]; /* join/leave/resume peerId, lowercased */
    char from[SG_PEER_LEN + 1]; /* relays, lowercased */
    char to[SG_PEER_LEN + 1];   /* relays, lowercased */
    char cid[SG_CID_MAX + 1];   /* correlationId, "" when absent */
    bool has_cid;
    bool ack;                   /* §9 "ack": true on a relay */
    /* resume (§9) */
    char resume_token[SG_RESUME_TOKEN_MAX + 1];
    uint64_t last_seq;
    /* For offer/answer/candidate: the canonical relay.inner object, exactly
     * the validated fields in a fixed order with lowercase ids:
     * {"type":..,"roomId":..,"from":..,"to":..,"sdp":..} or
     * {"type":"candidate",...,"candidate":{"candidate":..[,"sdpMid":..][,"sdpMLineIndex":..][,"usernameFragment":..]}}
     * Absent optional candidate fields stay absent; explicit nulls stay null. */
    sg_buf inner;
} sg_msg;

typedef struct sg_proto_error {
    const char *code;           /* "bad_request" */
    char message[160];          /* says which field and which rule */
    char cid[SG_CID_MAX + 1];   /* the message's correlationId when it was valid */
    bool has_cid;
    char room[SG_ROOM_MAX + 1]; /* the message's roomId when it was valid */
    bool has_room;
} sg_proto_error;

void sg_msg_init(sg_msg *m);
void sg_msg_clear(sg_msg *m); /* frees inner; m can be reused */

/* Decodes one text message. Returns 0 and fills m, or -1 and fills err.
 * m must have been sg_msg_init'ed; it may still hold an earlier message:
 * decode resets every field first and reuses the inner allocation. On error m
 * is left reset (type SG_MSG_NONE, inner empty). err->cid/room are filled
 * whenever the message carried a valid correlationId/roomId, whatever else
 * was wrong with it. The json-c tree never outlives the call. */
int sg_proto_decode(const char *text, size_t len, sg_msg *m, sg_proto_error *err);

/* The same through the json-c path alone, which sg_proto_decode takes for
 * everything but plainly written relays: for tests and the fuzzer, which
 * check that both give the same result. */
int sg_proto_decode_reference(const char *text, size_t len, sg_msg *m, sg_proto_error *err);

/* Identifier rules (§2). sg_peer_id_normalize copies a valid UUID into out in
 * lowercase. */
bool sg_room_id_valid(const char *s, size_t n);
bool sg_peer_id_normalize(const char *s, size_t n, char out[SG_PEER_LEN + 1]);
bool sg_cid_valid(const char *s, size_t n);

const char *sg_msg_type_name(sg_msg_type t); /* "join", "offer", ... */


#endif
