/* SPDX-License-Identifier: Apache-2.0 */
/* ws_frame: a pure, incremental RFC 6455 server-side frame parser and framer.
 *
 * It does no I/O and allocates only the reassembly buffer of the message in
 * progress (freed as soon as the message is delivered, so an idle connection
 * costs sizeof(sg_ws_parser) and nothing else). The caller feeds whatever
 * bytes arrived; the parser calls back for each complete text message and each
 * control frame, and reports the first protocol violation as the close code
 * the server must send.
 *
 * Rules enforced (docs/protocol.md §2):
 *   - client frames must be masked; RSV1-3 must be 0; opcodes other than
 *     0,1,2,8,9,10 are errors; control frames must have FIN and <= 125 bytes;
 *     a continuation without a started message, or a new data frame while a
 *     message is in progress, is an error                       -> 1002
 *   - a binary data frame is refused at its header              -> 1003
 *   - a text message whose payload is not valid UTF-8 (checked incrementally
 *     across frames, so overlong forms, surrogates, > U+10FFFF and truncated
 *     sequences are caught as early as possible)                -> 1007
 *   - a message whose total length would exceed max_message is refused at the
 *     frame header that announces it, before any of it is buffered -> 1009
 *   - a message in more than SG_WS_MAX_FRAGMENTS frames is refused at the
 *     header of the frame one too many                          -> 1008
 *   - a close frame with a 1-byte payload, an invalid close code or a reason
 *     that is not UTF-8                                          -> 1002/1007
 */
#ifndef SG_WS_FRAME_H
#define SG_WS_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include "sg/utf8.h"
#include <stdbool.h>

/* Most frames one message may come in, the first included. Clients send a
 * message in one frame, or cut a long one into frames of a few KiB (16 for a
 * 64 KiB message at 4 KiB); without a bound, a message of empty
 * continuation frames never ends and costs a header parse per 6 bytes
 * forever, under any byte cap. */
#define SG_WS_MAX_FRAGMENTS 256

enum {
    SG_WS_OP_CONT = 0x0,
    SG_WS_OP_TEXT = 0x1,
    SG_WS_OP_BINARY = 0x2,
    SG_WS_OP_CLOSE = 0x8,
    SG_WS_OP_PING = 0x9,
    SG_WS_OP_PONG = 0xA,
};

enum {
    SG_WS_CLOSE_NORMAL = 1000,
    SG_WS_CLOSE_GOING_AWAY = 1001,
    SG_WS_CLOSE_PROTOCOL = 1002,
    SG_WS_CLOSE_UNSUPPORTED = 1003,
    SG_WS_CLOSE_NO_STATUS = 1005, /* never sent; reported when a close had no code */
    SG_WS_CLOSE_ABNORMAL = 1006,  /* never sent; the TCP connection just ended */
    SG_WS_CLOSE_INVALID_DATA = 1007,
    SG_WS_CLOSE_POLICY = 1008,
    SG_WS_CLOSE_TOO_BIG = 1009,
    SG_WS_CLOSE_INTERNAL = 1011,
};

/* Callbacks. Each returns 0 to continue, or non-zero to make sg_ws_parser_feed
 * stop at once and return SG_WS_STOPPED (the caller decided to close; the
 * parser must not be fed again, and returns SG_WS_STOPPED if it is). Data
 * pointers are valid only during the call. A callback must not reset the
 * parser; it returns non-zero instead. A NULL on_text/on_ping/on_pong/on_close
 * means the event is ignored. */
typedef struct sg_ws_callbacks {
    /* A complete text message (already UTF-8 validated, unmasked). */
    int (*on_text)(void *ud, const uint8_t *data, size_t len);
    int (*on_ping)(void *ud, const uint8_t *data, size_t len);
    int (*on_pong)(void *ud, const uint8_t *data, size_t len);
    /* code is SG_WS_CLOSE_NO_STATUS when the frame had no payload. */
    int (*on_close)(void *ud, uint16_t code, const uint8_t *reason, size_t len);
    /* Called once per frame header (data and control frames), after the
     * header passed validation and before any of its payload is read: the
     * frame's opcode (SG_WS_OP_CONT for a continuation) and payload length.
     * Lets the caller count frames/bytes for rate limits. May be NULL. */
    int (*on_frame)(void *ud, uint8_t opcode, uint64_t payload_len);
} sg_ws_callbacks;

/* Layout is visible so a connection can embed the parser; fields are private. */
typedef struct sg_ws_parser {
    const sg_ws_callbacks *cb;
    void *ud;
    size_t max_message;
    /* frame header being read */
    uint8_t hdr[14];
    uint8_t hdr_len;
    uint8_t state;
    uint8_t opcode;      /* opcode of the current frame */
    uint8_t fin;
    uint8_t mask[4];
    uint8_t mask_pos;
    uint8_t in_message;  /* a fragmented text message is in progress */
    uint32_t fragments;  /* frames of the message in progress */
    uint8_t failed;
    uint64_t remaining;  /* payload bytes left in the current frame */
    uint32_t utf8_state;
    /* control frame payload (<= 125 bytes) */
    uint8_t ctrl[125];
    uint8_t ctrl_len;
    /* message reassembly; NULL while idle */
    uint8_t *msg;
    size_t msg_len;
    size_t msg_cap;
    uint16_t close_code; /* set when failed */
} sg_ws_parser;

enum {
    SG_WS_STOPPED = -1, /* a callback asked to stop */
    /* any positive return value is the close code to send (1002/1003/1007/1008/1009) */
};

void sg_ws_parser_init(sg_ws_parser *p, const sg_ws_callbacks *cb, void *ud, size_t max_message);
/* Frees the reassembly buffer. The parser may be re-initialised afterwards;
 * it is also left idle, as after init with the same arguments. */
void sg_ws_parser_reset(sg_ws_parser *p);

/* Feeds len bytes. The buffer is mutable: payloads are unmasked in place,
 * and a single-frame message that lies whole in data is delivered straight
 * from it without a copy.
 * Returns 0 when all bytes were consumed, SG_WS_STOPPED when a callback asked
 * to stop, or a close code (> 0) on the first protocol violation, after which
 * the parser stays failed and returns the same code. Once a valid close
 * frame was delivered, later bytes are ignored (RFC 6455 §5.5.1) and feed
 * returns 0. A failure or a stop releases the reassembly buffer at once. */
int sg_ws_parser_feed(sg_ws_parser *p, uint8_t *data, size_t len);

/* Bytes currently held for a message in progress (for memory accounting):
 * the heap size of the reassembly buffer, 0 while idle. */
size_t sg_ws_parser_buffered(const sg_ws_parser *p);

/* Writes a server (unmasked, FIN=1) frame header for a payload of len bytes.
 * Returns the header length (2, 4 or 10). out must hold 10 bytes. */
size_t sg_ws_frame_header(uint8_t out[10], uint8_t opcode, uint64_t len);

/* Writes a close payload (code + reason, reason truncated to 123 bytes at a
 * UTF-8 boundary). Returns its length. out must hold 125 bytes. */
size_t sg_ws_close_payload(uint8_t out[125], uint16_t code, const char *reason);


#endif
