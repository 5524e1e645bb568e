/* SPDX-License-Identifier: Apache-2.0 */
/* wire: every byte string the gateway and its Redis scripts exchange, in one
 * place. Pure: no I/O; output goes to a caller's sg_buf.
 *
 * Server -> client messages (docs/protocol.md §4 and §9). Ids handed in are the
 * validated ones of proto.h (room ids, lowercase peer ids, correlationIds:
 * characters that need no JSON escaping), but every string is escaped
 * anyway except on the relay hot path, where the inner object comes from
 * proto.h's canonical encoding and the correlationId from its validator.
 *
 * The scripts' side (lua/lib.lua) writes three things the gateway reads:
 *   - the channel envelope "<holder>\t<kind>\t<ts_us>\t<traceparent>\t<seq>\n<frame>"
 *     (lib.lua envelope(); relay.lua writes the relay one inline), where
 *     holder is "<instance>#<connection id>" (instance: "<node id>~<8 hex>"), kind is r (relay), b (several
 *     relays, below), e (membership
 *     event), x (the holder lost its peerId: frame is the error to send) or
 *     k (the application removed the holder's peer, lua/control.lua: the
 *     traceparent field carries the action, "kick" or "close_room", and
 *     frame is the application's reason text, raw), ts_us the sender's
 *     arrival time (0 for events), traceparent "-" when absent, seq the
 *     relay's sequence number (0 when resumption is off);
 *   - several relays of one sender to one target (lua/relay.lua) as one
 *     envelope of kind b: ts_us is their count, traceparent "-", seq the
 *     first one's (the others follow it; all 0 when resumption is off), and
 *     the frame part holds, per relay, "<ts_us>\t<traceparent>\t<frame
 *     length>\n<frame>" (sg_wire_next_batched);
 *   - peer_joined / peer_left frames (lib.lua peer_joined_frame /
 *     peer_left_frame), byte for byte what sg_wire_peer_event writes;
 *   - relay frames as the sender's node built them (sg_wire_relay), in the
 *     envelope and in the peer's buffer: the target's node puts "seq" in
 *     (sg_wire_relay_seq), so Redis never copies a frame to number it.
 */
#ifndef SG_WIRE_H
#define SG_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sg/buf.h"

/* A byte string that is not NUL-terminated (a Redis reply element). */
typedef struct sg_wire_str {
    const char *p;
    size_t n;
} sg_wire_str;

/* What "joined" and "resumed" carry (docs/protocol.md §4, §9). */
typedef struct sg_wire_session {
    const char *room, *peer;
    const sg_wire_str *peers; /* the other members */
    size_t npeers;
    const char *resume_token; /* NULL: resumption off */
    const char *ice_servers;  /* a rendered ,"iceServers":[...] member, or NULL */
    const char *cid;          /* NULL or "": none */
    int64_t replayed;         /* resumed only */
} sg_wire_session;

void sg_wire_joined(sg_buf *out, const sg_wire_session *s);
void sg_wire_resumed(sg_buf *out, const sg_wire_session *s);
void sg_wire_left(sg_buf *out, const char *room, const char *peer, const char *cid);
/* {"type":"ack","correlationId":cid,"status":status} */
void sg_wire_ack(sg_buf *out, const char *cid, const char *status);
/* {"type":"error","code":..,"message":..[,"correlationId":..][,"roomId":..]};
 * cid and room may be NULL or "". */
void sg_wire_error(sg_buf *out, const char *code, const char *message, const char *cid, const char *room);
/* The frame a relay's target gets, built once on the sender's node:
 * {"type":"relay","inner":<inner>,"correlationId":"<cid>"}. The target's
 * node puts "seq" in after the first 16 bytes (sg_wire_relay_seq). */
void sg_wire_relay(sg_buf *out, const char *inner, size_t inner_len, const char *cid);
#define SG_WIRE_RELAY_PREFIX "{\"type\":\"relay\","

/* Appends frame (a relay out of Redis: published, held or replayed) with
 * "seq":<seq>, put in after SG_WIRE_RELAY_PREFIX. Copied unchanged when seq
 * is 0 (resumption off), when it is no relay frame, or when it has a "seq"
 * already. */
void sg_wire_relay_seq(sg_buf *out, const char *frame, size_t len, uint64_t seq);

/* {"type":"error","code":"kicked","message":<text>,"roomId":room}
 * (PROTOCOL.md §9 "Backend control"). text is the application's reason as
 * it came through Redis: used when it is 1..SG_WIRE_KICK_REASON_MAX bytes of
 * valid UTF-8 (a text frame must be), else SG_WIRE_KICK_DEFAULT. */
#define SG_WIRE_KICK_REASON_MAX 256
#define SG_WIRE_KICK_DEFAULT "removed from the room by the application"
void sg_wire_kicked(sg_buf *out, const char *room, const char *text, size_t n);

/* peer_joined (reason NULL) or peer_left with its reason. */
void sg_wire_peer_event(sg_buf *out, const char *room, const char *peer, const char *reason);

/* A peer_joined / peer_left frame as the scripts write it: which one and the
 * peer id (pointing into the frame). Anything else: false. */
typedef struct sg_wire_event {
    bool joined;
    sg_wire_str peer;
} sg_wire_event;
bool sg_wire_parse_event(const char *frame, size_t len, sg_wire_event *ev);

/* ---- the envelope of channel messages -------------------------------- */

typedef struct sg_wire_envelope {
    sg_wire_str node;   /* the holder's node id */
    uint64_t conn;      /* the holder's connection id on that node */
    char kind;          /* 'r', 'b', 'e', 'x' or 'k' */
    uint64_t ts_us;
    sg_wire_str traceparent; /* "-" when absent */
    uint64_t seq;
    sg_wire_str frame;
} sg_wire_envelope;

/* The envelope's header is at most this long (holder, numbers, traceparent). */
#define SG_WIRE_ENVELOPE_HEAD_MAX 512

/* Parses a channel message. False when it is not a well-formed envelope. */
bool sg_wire_parse_envelope(const char *payload, size_t len, sg_wire_envelope *e);
/* Writes one (the scripts do it in Redis; tests and the fuzzer use this). */
void sg_wire_write_envelope(sg_buf *out, const char *node, uint64_t conn, char kind, uint64_t ts_us,
                      const char *traceparent, uint64_t seq, const char *frame, size_t flen);

/* One relay of a b envelope. */
typedef struct sg_wire_batched {
    uint64_t ts_us;
    sg_wire_str traceparent;
    sg_wire_str frame;
} sg_wire_batched;
/* Takes the next relay off the front of rest (a b envelope's frame part);
 * false when rest is empty or malformed (a length is never trusted). */
bool sg_wire_next_batched(sg_wire_str *rest, sg_wire_batched *b);
/* Writes one (lua/relay.lua does it in Redis; tests and the fuzzer use this). */
void sg_wire_write_batched(sg_buf *out, uint64_t ts_us, const char *traceparent, const char *frame, size_t flen);

/* "<node>#<conn>" into out; returns its length (out holds SG_WIRE_HOLDER_MAX). */
#define SG_WIRE_HOLDER_MAX 96
size_t sg_wire_holder(char out[SG_WIRE_HOLDER_MAX], const char *node, uint64_t conn);

/* "room:{R}:peer:P" and its inverse. The channel of a valid room and peer
 * always fits SG_WIRE_CHANNEL_MAX. */
#define SG_WIRE_CHANNEL_MAX 200
size_t sg_wire_channel(char out[SG_WIRE_CHANNEL_MAX], const char *room, const char *peer);
/* Splits a peer channel into its room (a copy, NUL-terminated, at most
 * room_cap-1 bytes) and peer (pointing into the channel). */
bool sg_wire_parse_channel(const char *ch, size_t len, char *room, size_t room_cap, sg_wire_str *peer);

/* ---- backend control (lua/control.lua) -------------------------------- */

/* Revocations: a ZSET sha1(sub) -> end (ms, Redis' clock), read by every
 * handshake; the channel every gateway subscribes to hears each one as
 * "revoke\t<sha1 hex of sub>\t<end ms>". One hash tag: in a cluster both
 * live in one slot, so the function that writes the key may publish on the
 * channel. */
#define SG_WIRE_REVOKED_KEY "signal:{control}:revoked"
#define SG_WIRE_CONTROL_CHANNEL "signal:{control}:events"

/* The key of a sub in SG_WIRE_REVOKED_KEY: its SHA-1 in lowercase hex, as
 * lua/control.lua computes it (redis.sha1hex). */
#define SG_WIRE_SUB_SHA1_LEN 40
void sg_wire_sub_sha1(const char *sub, size_t n, char out[SG_WIRE_SUB_SHA1_LEN + 1]);

typedef struct sg_wire_revoke {
    char sub_sha1[SG_WIRE_SUB_SHA1_LEN + 1];
    uint64_t until_ms;
} sg_wire_revoke;

/* Parses a message of the control channel. False for anything but a
 * well-formed revocation. */
bool sg_wire_parse_revoke(const char *payload, size_t len, sg_wire_revoke *out);

#endif
