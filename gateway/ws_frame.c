/* SPDX-License-Identifier: Apache-2.0 */
/* ws_frame: incremental RFC 6455 server-side parser and server framer (text
 * is checked with utf8.h). See include/sg/ws_frame.h for the contract.
 *
 * The parser is a two-state machine (reading a header, reading a payload) plus
 * two terminal states. Bytes are consumed straight from the caller's buffer:
 * headers are copied into hdr[] (at most 14 bytes) so they may be split across
 * feeds, control payloads into ctrl[] (at most 125 bytes), and text payloads
 * are unmasked in place and either delivered from the caller's buffer (a whole
 * single-frame message) or appended to the reassembly buffer. */
#include "sg/ws_frame.h"
#include "sg/util.h"

#include <stdlib.h>
#include <string.h>

enum {
    ST_HEADER = 0, /* reading hdr[] */
    ST_PAYLOAD,    /* reading `remaining` payload bytes of the current frame */
    ST_CLOSED,     /* a close frame was received: later bytes are ignored */
    ST_STOPPED,    /* a callback asked to stop */
};

enum {
    WS_FIN = 0x80,
    WS_RSV = 0x70,
    WS_OPCODE = 0x0F,
    WS_MASKED = 0x80,
    WS_LEN7 = 0x7F,
    WS_CTRL_MAX = 125,    /* RFC 6455 §5.5: control payloads are <= 125 bytes */
    WS_REASON_MAX = 123,  /* a close payload is a 2-byte code + the reason */
    MSG_MIN_CAP = 1024,   /* first reassembly allocation; most messages fit */
};

/* --------------------------------------------------------------- framer --- */

size_t sg_ws_frame_header(uint8_t out[10], uint8_t opcode, uint64_t len)
{
    out[0] = (uint8_t)(WS_FIN | (opcode & WS_OPCODE));
    if (len <= 125) {
        out[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xFFFF) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++)
        out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 10;
}

size_t sg_ws_close_payload(uint8_t out[125], uint16_t code, const char *reason)
{
    out[0] = (uint8_t)(code >> 8);
    out[1] = (uint8_t)code;
    if (!reason)
        return 2;
    /* Keep the longest prefix that ends on a character boundary, so the peer
     * never sees a cut sequence (it would have to fail us with 1007). An
     * invalid byte in our own reason ends it there for the same reason. */
    const uint8_t *r = (const uint8_t *)reason;
    uint32_t st = SG_UTF8_ACCEPT;
    size_t keep = 0;
    for (size_t i = 0; i < WS_REASON_MAX && r[i]; i++) {
        st = sg_utf8_step(st, r[i]);
        if (st == SG_UTF8_REJECT)
            break;
        if (st == SG_UTF8_ACCEPT)
            keep = i + 1;
    }
    memcpy(out + 2, r, keep);
    return 2 + keep;
}

/* --------------------------------------------------------------- parser --- */

static bool is_control(uint8_t opcode) { return opcode & 0x8; }

void sg_ws_parser_init(sg_ws_parser *p, const sg_ws_callbacks *cb, void *ud, size_t max_message)
{
    memset(p, 0, sizeof *p);
    p->cb = cb;
    p->ud = ud;
    p->max_message = max_message;
    p->state = ST_HEADER;
    p->utf8_state = SG_UTF8_ACCEPT;
}

static void drop_message(sg_ws_parser *p)
{
    free(p->msg);
    p->msg = NULL;
    p->msg_len = 0;
    p->msg_cap = 0;
}

void sg_ws_parser_reset(sg_ws_parser *p)
{
    drop_message(p);
    sg_ws_parser_init(p, p->cb, p->ud, p->max_message);
}

size_t sg_ws_parser_buffered(const sg_ws_parser *p) { return p->msg_cap; }

/* XORs n bytes with the mask, starting at mask offset *pos, eight bytes at a
 * time (the key has period 4, so an 8-byte key word lines up). */
static void unmask(uint8_t *d, size_t n, const uint8_t mask[4], uint8_t *pos)
{
    uint8_t k[8];
    for (int i = 0; i < 8; i++)
        k[i] = mask[(*pos + i) & 3];
    size_t i = 0;
    if (n >= 8) {
        uint64_t kw;
        memcpy(&kw, k, 8);
        for (; n - i >= 8; i += 8) {
            uint64_t w;
            memcpy(&w, d + i, 8);
            w ^= kw;
            memcpy(d + i, &w, 8);
        }
    }
    for (; i < n; i++)
        d[i] ^= k[i & 7];
    *pos = (uint8_t)((*pos + (n & 3)) & 3);
}

/* Appends to the reassembly buffer, doubling it as needed but never past
 * max_message (the frame headers already guaranteed the total fits). */
static void msg_append(sg_ws_parser *p, const uint8_t *d, size_t n)
{
    if (n > p->msg_cap - p->msg_len) {
        size_t need = p->msg_len + n; /* <= max_message, checked at the header */
        size_t cap = p->msg_cap ? p->msg_cap : MSG_MIN_CAP;
        while (cap < need)
            cap = cap > p->max_message / 2 ? p->max_message : cap * 2;
        if (cap > p->max_message)
            cap = p->max_message; /* a first allocation under a small cap */
        p->msg = sg_xrealloc(p->msg, cap);
        p->msg_cap = cap;
    }
    memcpy(p->msg + p->msg_len, d, n);
    p->msg_len += n;
}

/* Checks the first header byte: everything the opcode alone decides. */
static int check_byte0(const sg_ws_parser *p, uint8_t b0)
{
    uint8_t op = b0 & WS_OPCODE;
    if (b0 & WS_RSV)
        return SG_WS_CLOSE_PROTOCOL; /* no extension was negotiated */
    switch (op) {
    case SG_WS_OP_CONT:
        return p->in_message ? 0 : SG_WS_CLOSE_PROTOCOL;
    case SG_WS_OP_TEXT:
        return p->in_message ? SG_WS_CLOSE_PROTOCOL : 0;
    case SG_WS_OP_BINARY:
        return p->in_message ? SG_WS_CLOSE_PROTOCOL : SG_WS_CLOSE_UNSUPPORTED;
    case SG_WS_OP_CLOSE:
    case SG_WS_OP_PING:
    case SG_WS_OP_PONG:
        return (b0 & WS_FIN) ? 0 : SG_WS_CLOSE_PROTOCOL; /* §5.5: never fragmented */
    default:
        return SG_WS_CLOSE_PROTOCOL;
    }
}

/* Checks the second header byte: mask bit and the control frame size. */
static int check_byte1(uint8_t b0, uint8_t b1)
{
    if (!(b1 & WS_MASKED))
        return SG_WS_CLOSE_PROTOCOL; /* §5.1: client frames are masked */
    if (is_control(b0 & WS_OPCODE) && (b1 & WS_LEN7) > WS_CTRL_MAX)
        return SG_WS_CLOSE_PROTOCOL;
    return 0;
}

static size_t header_size(const sg_ws_parser *p)
{
    uint8_t len7 = p->hdr[1] & WS_LEN7;
    size_t ext = len7 == 126 ? 2 : len7 == 127 ? 8 : 0;
    return 2 + ext + 4;
}

/* Maps a callback's answer onto the feed's: non-zero means stop now. */
static int cb_result(int rc) { return rc ? SG_WS_STOPPED : 0; }

static int deliver_text(sg_ws_parser *p, const uint8_t *d, size_t n)
{
    static const uint8_t empty[1];
    if (!p->cb->on_text)
        return 0;
    return cb_result(p->cb->on_text(p->ud, d ? d : empty, n));
}

/* Validates and delivers a complete control frame held in ctrl[]. */
static int end_control(sg_ws_parser *p)
{
    const sg_ws_callbacks *cb = p->cb;
    switch (p->opcode) {
    case SG_WS_OP_PING:
        return cb->on_ping ? cb_result(cb->on_ping(p->ud, p->ctrl, p->ctrl_len)) : 0;
    case SG_WS_OP_PONG:
        return cb->on_pong ? cb_result(cb->on_pong(p->ud, p->ctrl, p->ctrl_len)) : 0;
    default:
        break;
    }
    uint16_t code = SG_WS_CLOSE_NO_STATUS;
    const uint8_t *reason = p->ctrl + 2;
    size_t rlen = 0;
    if (p->ctrl_len == 1)
        return SG_WS_CLOSE_PROTOCOL; /* §5.5.1: a code is two bytes */
    if (p->ctrl_len >= 2) {
        code = (uint16_t)(p->ctrl[0] << 8 | p->ctrl[1]);
        /* §7.4: codes a peer may send. 1004-1006 and 1015 are reserved for
         * local use, other codes below 3000 are unassigned. */
        bool ok = (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011) ||
                  (code >= 3000 && code <= 4999);
        if (!ok)
            return SG_WS_CLOSE_PROTOCOL;
        rlen = p->ctrl_len - 2u;
        uint32_t st = SG_UTF8_ACCEPT;
        if (!sg_utf8_feed(&st, reason, rlen) || !sg_utf8_complete(st))
            return SG_WS_CLOSE_INVALID_DATA;
    }
    /* Whatever follows a close frame is to be discarded (§5.5.1), so a
     * message in progress can never complete: release it now. */
    p->state = ST_CLOSED;
    drop_message(p);
    return cb->on_close ? cb_result(cb->on_close(p->ud, code, reason, rlen)) : 0;
}

/* The current frame's payload is complete: deliver what it finished. */
static int end_frame(sg_ws_parser *p)
{
    p->state = ST_HEADER;
    p->hdr_len = 0;
    if (is_control(p->opcode))
        return end_control(p);
    if (!p->fin)
        return 0;
    if (!sg_utf8_complete(p->utf8_state))
        return SG_WS_CLOSE_INVALID_DATA; /* the message ends inside a character */
    p->in_message = 0;
    p->utf8_state = SG_UTF8_ACCEPT;
    int rc = deliver_text(p, p->msg, p->msg_len);
    /* An idle connection holds no reassembly memory. */
    drop_message(p);
    return rc;
}

/* The header in hdr[] is complete: decode the length, apply the size caps
 * and announce the frame. Returns 0 to go on reading its payload. */
static int start_frame(sg_ws_parser *p)
{
    const uint8_t *h = p->hdr;
    uint8_t len7 = h[1] & WS_LEN7;
    uint64_t len = len7;
    size_t off = 2;
    if (len7 == 126) {
        len = (uint64_t)h[2] << 8 | h[3];
        off = 4;
    } else if (len7 == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | h[2 + i];
        off = 10;
        if (len >> 63)
            return SG_WS_CLOSE_PROTOCOL; /* §5.2: the top bit must be 0 */
    }
    memcpy(p->mask, h + off, 4);
    p->mask_pos = 0;
    p->opcode = h[0] & WS_OPCODE;
    p->fin = (h[0] & WS_FIN) ? 1 : 0;
    p->remaining = len;

    if (is_control(p->opcode)) {
        p->ctrl_len = 0;
    } else {
        /* Refuse the whole message at the header that would overflow it,
         * before a byte of it is buffered. msg_len <= max_message always. */
        if (len > (uint64_t)(p->max_message - p->msg_len))
            return SG_WS_CLOSE_TOO_BIG;
        if (p->opcode == SG_WS_OP_TEXT) {
            p->utf8_state = SG_UTF8_ACCEPT;
            p->fragments = 0;
        }
        if (++p->fragments > SG_WS_MAX_FRAGMENTS)
            return SG_WS_CLOSE_POLICY;
        if (!p->fin)
            p->in_message = 1;
    }
    if (p->cb->on_frame)
        return cb_result(p->cb->on_frame(p->ud, p->opcode, len));
    return 0;
}

/* Copies header bytes into hdr[], validating each byte as soon as it is
 * known so errors do not depend on how the input was split. */
static int read_header(sg_ws_parser *p, uint8_t *data, size_t len, size_t *pos)
{
    int rc;
    while (p->hdr_len < 2 && *pos < len) {
        p->hdr[p->hdr_len++] = data[(*pos)++];
        if (p->hdr_len == 1 && (rc = check_byte0(p, p->hdr[0])))
            return rc;
        if (p->hdr_len == 2 && (rc = check_byte1(p->hdr[0], p->hdr[1])))
            return rc;
    }
    if (p->hdr_len < 2)
        return 0;
    size_t need = header_size(p);
    size_t n = need - p->hdr_len;
    if (n > len - *pos)
        n = len - *pos;
    memcpy(p->hdr + p->hdr_len, data + *pos, n);
    p->hdr_len = (uint8_t)(p->hdr_len + n);
    *pos += n;
    if (p->hdr_len < need)
        return 0;

    if ((rc = start_frame(p)))
        return rc;
    size_t avail = len - *pos;
    if (p->opcode == SG_WS_OP_TEXT && p->fin && p->remaining <= avail) {
        /* A whole single-frame message in the caller's buffer: unmask and
         * deliver it in place, no copy and no allocation. */
        size_t n2 = (size_t)p->remaining;
        uint8_t *d = data + *pos;
        unmask(d, n2, p->mask, &p->mask_pos);
        *pos += n2;
        p->state = ST_HEADER;
        p->hdr_len = 0;
        uint32_t st = SG_UTF8_ACCEPT;
        if (!sg_utf8_feed(&st, d, n2) || !sg_utf8_complete(st))
            return SG_WS_CLOSE_INVALID_DATA;
        return deliver_text(p, d, n2);
    }
    if (p->remaining == 0)
        return end_frame(p);
    p->state = ST_PAYLOAD;
    return 0;
}

static int read_payload(sg_ws_parser *p, uint8_t *data, size_t len, size_t *pos)
{
    size_t n = len - *pos;
    if (p->remaining < n)
        n = (size_t)p->remaining;
    uint8_t *d = data + *pos;
    unmask(d, n, p->mask, &p->mask_pos);
    *pos += n;
    p->remaining -= n;
    if (is_control(p->opcode)) {
        memcpy(p->ctrl + p->ctrl_len, d, n); /* <= 125 in all, checked at byte 1 */
        p->ctrl_len = (uint8_t)(p->ctrl_len + n);
    } else {
        /* Validate as it arrives so bad text fails before more is buffered. */
        if (!sg_utf8_feed(&p->utf8_state, d, n))
            return SG_WS_CLOSE_INVALID_DATA;
        msg_append(p, d, n);
    }
    return p->remaining ? 0 : end_frame(p);
}

/* Makes a failure or a stop sticky and releases the message in progress. */
static int finish(sg_ws_parser *p, int rc)
{
    drop_message(p);
    if (rc == SG_WS_STOPPED) {
        p->state = ST_STOPPED;
    } else {
        p->failed = 1;
        p->close_code = (uint16_t)rc;
    }
    return rc;
}

int sg_ws_parser_feed(sg_ws_parser *p, uint8_t *data, size_t len)
{
    if (p->failed)
        return p->close_code;
    if (p->state == ST_STOPPED)
        return SG_WS_STOPPED;
    size_t pos = 0;
    while (pos < len) {
        int rc;
        switch (p->state) {
        case ST_HEADER:
            rc = read_header(p, data, len, &pos);
            break;
        case ST_PAYLOAD:
            rc = read_payload(p, data, len, &pos);
            break;
        default: /* ST_CLOSED: nothing after a close frame matters */
            return 0;
        }
        if (rc)
            return finish(p, rc);
    }
    return 0;
}
