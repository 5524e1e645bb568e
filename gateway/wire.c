/* SPDX-License-Identifier: Apache-2.0 */
#include "sg/wire.h"
#include "sg/utf8.h"

#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>

/* ,"key":"value" with value escaped (key is a literal from this file). */
static void member(sg_buf *b, const char *key, const char *val, size_t n)
{
    sg_buf_putc(b, ',');
    sg_buf_putc(b, '"');
    sg_buf_puts(b, key);
    sg_buf_puts(b, "\":");
    sg_buf_json_str(b, val, n);
}

static void member_s(sg_buf *b, const char *key, const char *val)
{
    member(b, key, val, strlen(val));
}

static void member_cid(sg_buf *b, const char *cid)
{
    if (cid && *cid)
        member_s(b, "correlationId", cid);
}

static void put_u64(sg_buf *b, uint64_t v)
{
    char d[24];
    size_t n = 0;
    do
        d[n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    while (n)
        sg_buf_putc(b, d[--n]);
}

/* {"type":"<type>","roomId":..,"peerId":..,"peers":[..] — the part joined
 * and resumed share before their own fields. */
static void session_head(sg_buf *b, const char *type, const sg_wire_session *s)
{
    sg_buf_puts(b, "{\"type\":\"");
    sg_buf_puts(b, type);
    sg_buf_putc(b, '"');
    member_s(b, "roomId", s->room);
    member_s(b, "peerId", s->peer);
    sg_buf_puts(b, ",\"peers\":[");
    for (size_t i = 0; i < s->npeers; i++) {
        if (i)
            sg_buf_putc(b, ',');
        sg_buf_json_str(b, s->peers[i].p, s->peers[i].n);
    }
    sg_buf_putc(b, ']');
}

static void session_tail(sg_buf *b, const sg_wire_session *s)
{
    if (s->resume_token)
        member_s(b, "resumeToken", s->resume_token);
    if (s->ice_servers)
        sg_buf_puts(b, s->ice_servers);
    member_cid(b, s->cid);
    sg_buf_putc(b, '}');
}

void sg_wire_joined(sg_buf *out, const sg_wire_session *s)
{
    session_head(out, "joined", s);
    session_tail(out, s);
}

void sg_wire_resumed(sg_buf *out, const sg_wire_session *s)
{
    session_head(out, "resumed", s);
    sg_buf_puts(out, ",\"replayed\":");
    put_u64(out, s->replayed > 0 ? (uint64_t)s->replayed : 0);
    session_tail(out, s);
}

void sg_wire_left(sg_buf *out, const char *room, const char *peer, const char *cid)
{
    sg_buf_puts(out, "{\"type\":\"left\"");
    member_s(out, "roomId", room);
    member_s(out, "peerId", peer);
    member_cid(out, cid);
    sg_buf_putc(out, '}');
}

void sg_wire_ack(sg_buf *out, const char *cid, const char *status)
{
    sg_buf_puts(out, "{\"type\":\"ack\"");
    member_s(out, "correlationId", cid);
    member_s(out, "status", status);
    sg_buf_putc(out, '}');
}

void sg_wire_error(sg_buf *out, const char *code, const char *message, const char *cid, const char *room)
{
    sg_buf_puts(out, "{\"type\":\"error\"");
    member_s(out, "code", code ? code : "internal");
    member_s(out, "message", message ? message : "");
    member_cid(out, cid);
    if (room && *room)
        member_s(out, "roomId", room);
    sg_buf_putc(out, '}');
}

void sg_wire_relay(sg_buf *out, const char *inner, size_t inner_len, const char *cid)
{
    /* The hot path: inner is proto.h's canonical encoding and cid passed
     * sg_cid_valid or was made by the gateway, so nothing needs escaping. */
    sg_buf_puts(out, SG_WIRE_RELAY_PREFIX "\"inner\":");
    sg_buf_append(out, inner, inner_len);
    sg_buf_puts(out, ",\"correlationId\":\"");
    sg_buf_puts(out, cid);
    sg_buf_puts(out, "\"}");
}

void sg_wire_relay_seq(sg_buf *out, const char *frame, size_t len, uint64_t seq)
{
    static const char prefix[] = SG_WIRE_RELAY_PREFIX, numbered[] = SG_WIRE_RELAY_PREFIX "\"seq\":";
    const size_t pn = sizeof prefix - 1, nn = sizeof numbered - 1;
    if (seq == 0 || len < pn || memcmp(frame, prefix, pn) != 0 || (len >= nn && memcmp(frame, numbered, nn) == 0)) {
        sg_buf_append(out, frame, len);
        return;
    }
    sg_buf_append(out, frame, pn);
    sg_buf_printf(out, "\"seq\":%llu,", (unsigned long long)seq);
    sg_buf_append(out, frame + pn, len - pn);
}

void sg_wire_kicked(sg_buf *out, const char *room, const char *text, size_t n)
{
    /* The text comes from the application's backend through Redis: it is
     * escaped like any other, and a text frame must be valid UTF-8. */
    if (!text || n == 0 || n > SG_WIRE_KICK_REASON_MAX || !sg_utf8_valid(text, n)) {
        text = SG_WIRE_KICK_DEFAULT;
        n = sizeof SG_WIRE_KICK_DEFAULT - 1;
    }
    sg_buf_puts(out, "{\"type\":\"error\",\"code\":\"kicked\"");
    member(out, "message", text, n);
    member_s(out, "roomId", room);
    sg_buf_putc(out, '}');
}

void sg_wire_peer_event(sg_buf *out, const char *room, const char *peer, const char *reason)
{
    sg_buf_puts(out, reason ? "{\"type\":\"peer_left\"" : "{\"type\":\"peer_joined\"");
    member_s(out, "roomId", room);
    member_s(out, "peerId", peer);
    if (reason)
        member_s(out, "reason", reason);
    sg_buf_putc(out, '}');
}

static bool starts_with(const char *p, size_t n, const char *lit, size_t litlen)
{
    return n >= litlen && memcmp(p, lit, litlen) == 0;
}

bool sg_wire_parse_event(const char *frame, size_t len, sg_wire_event *ev)
{
    static const char joined[] = "{\"type\":\"peer_joined\",", left[] = "{\"type\":\"peer_left\",";
    static const char key[] = "\"peerId\":\"";
    if (starts_with(frame, len, joined, sizeof joined - 1))
        ev->joined = true;
    else if (starts_with(frame, len, left, sizeof left - 1))
        ev->joined = false;
    else
        return false;
    /* "roomId" comes first and room ids hold no quote, so the first
     * "peerId":" is the key. */
    const char *end = frame + len;
    for (const char *p = frame; (size_t)(end - p) >= sizeof key - 1; p++) {
        if (memcmp(p, key, sizeof key - 1) != 0)
            continue;
        p += sizeof key - 1;
        const char *q = memchr(p, '"', (size_t)(end - p));
        if (!q)
            return false;
        ev->peer = (sg_wire_str){p, (size_t)(q - p)};
        return true;
    }
    return false;
}

/* ---- envelope --------------------------------------------------------- */

/* Digits up to the next tab or newline; false on anything else or overflow. */
static bool take_u64(const char **p, const char *end, uint64_t *out)
{
    uint64_t v = 0;
    const char *s = *p;
    while (*p < end && **p >= '0' && **p <= '9') {
        unsigned d = (unsigned)(**p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
        (*p)++;
    }
    *out = v;
    return *p > s;
}

static bool take_tab(const char **p, const char *end)
{
    if (*p >= end || **p != '\t')
        return false;
    (*p)++;
    return true;
}

bool sg_wire_parse_envelope(const char *payload, size_t len, sg_wire_envelope *e)
{
    const char *nl = memchr(payload, '\n', len < SG_WIRE_ENVELOPE_HEAD_MAX ? len : SG_WIRE_ENVELOPE_HEAD_MAX);
    if (!nl)
        return false;
    const char *tab = memchr(payload, '\t', (size_t)(nl - payload));
    if (!tab)
        return false;
    /* holder: node ids never hold '#', so the last one splits it */
    const char *hash = NULL;
    for (const char *p = payload; p < tab; p++)
        if (*p == '#')
            hash = p;
    if (!hash || hash == payload)
        return false;
    e->node = (sg_wire_str){payload, (size_t)(hash - payload)};
    const char *p = hash + 1;
    if (!take_u64(&p, tab, &e->conn) || p != tab)
        return false;
    p = tab + 1;
    if (p + 1 >= nl || (p[0] != 'r' && p[0] != 'b' && p[0] != 'e' && p[0] != 'x' && p[0] != 'k'))
        return false;
    e->kind = p[0];
    p++;
    if (!take_tab(&p, nl) || !take_u64(&p, nl, &e->ts_us) || !take_tab(&p, nl))
        return false;
    const char *tp = p;
    while (p < nl && *p != '\t')
        p++;
    e->traceparent = (sg_wire_str){tp, (size_t)(p - tp)};
    if (!take_tab(&p, nl) || !take_u64(&p, nl, &e->seq) || p != nl)
        return false;
    e->frame = (sg_wire_str){nl + 1, len - (size_t)(nl + 1 - payload)};
    return true;
}

/* "<ts_us>\t<traceparent>\t<n>\n<frame>": the tail of an envelope (n: its
 * seq) and a relay of a b envelope (n: the frame's length). */
static void put_record(sg_buf *out, uint64_t ts_us, const char *traceparent, uint64_t n, const char *frame,
                       size_t flen)
{
    put_u64(out, ts_us);
    sg_buf_putc(out, '\t');
    sg_buf_puts(out, traceparent && *traceparent ? traceparent : "-");
    sg_buf_putc(out, '\t');
    put_u64(out, n);
    sg_buf_putc(out, '\n');
    sg_buf_append(out, frame, flen);
}

void sg_wire_write_envelope(sg_buf *out, const char *node, uint64_t conn, char kind, uint64_t ts_us,
                      const char *traceparent, uint64_t seq, const char *frame, size_t flen)
{
    sg_buf_puts(out, node);
    sg_buf_putc(out, '#');
    put_u64(out, conn);
    sg_buf_putc(out, '\t');
    sg_buf_putc(out, kind);
    sg_buf_putc(out, '\t');
    put_record(out, ts_us, traceparent, seq, frame, flen);
}

bool sg_wire_next_batched(sg_wire_str *rest, sg_wire_batched *b)
{
    const char *p = rest->p, *end = rest->p + rest->n;
    size_t head = rest->n < SG_WIRE_ENVELOPE_HEAD_MAX ? rest->n : SG_WIRE_ENVELOPE_HEAD_MAX;
    const char *nl = rest->n ? memchr(p, '\n', head) : NULL;
    if (!nl || !take_u64(&p, nl, &b->ts_us) || !take_tab(&p, nl))
        return false;
    const char *tp = p;
    while (p < nl && *p != '\t')
        p++;
    b->traceparent = (sg_wire_str){tp, (size_t)(p - tp)};
    uint64_t flen;
    if (!take_tab(&p, nl) || !take_u64(&p, nl, &flen) || p != nl || flen > (uint64_t)(end - (nl + 1)))
        return false;
    b->frame = (sg_wire_str){nl + 1, (size_t)flen};
    rest->p = nl + 1 + flen;
    rest->n = (size_t)(end - rest->p);
    return true;
}

void sg_wire_write_batched(sg_buf *out, uint64_t ts_us, const char *traceparent, const char *frame, size_t flen)
{
    put_record(out, ts_us, traceparent, flen, frame, flen);
}

size_t sg_wire_holder(char out[SG_WIRE_HOLDER_MAX], const char *node, uint64_t conn)
{
    int n = snprintf(out, SG_WIRE_HOLDER_MAX, "%s#%llu", node, (unsigned long long)conn);
    /* Node ids are at most 64 characters (config.c): it always fits. */
    return n < 0 ? 0 : (size_t)n < SG_WIRE_HOLDER_MAX ? (size_t)n : SG_WIRE_HOLDER_MAX - 1;
}

size_t sg_wire_channel(char out[SG_WIRE_CHANNEL_MAX], const char *room, const char *peer)
{
    int n = snprintf(out, SG_WIRE_CHANNEL_MAX, "room:{%s}:peer:%s", room, peer);
    return n < 0 ? 0 : (size_t)n < SG_WIRE_CHANNEL_MAX ? (size_t)n : SG_WIRE_CHANNEL_MAX - 1;
}

bool sg_wire_parse_channel(const char *ch, size_t len, char *room, size_t room_cap, sg_wire_str *peer)
{
    static const char head[] = "room:{", mid[] = "}:peer:";
    if (!starts_with(ch, len, head, sizeof head - 1))
        return false;
    const char *r = ch + sizeof head - 1, *end = ch + len;
    const char *close = memchr(r, '}', (size_t)(end - r));
    if (!close || (size_t)(close - r) >= room_cap || close == r)
        return false;
    if (!starts_with(close, (size_t)(end - close), mid, sizeof mid - 1))
        return false;
    memcpy(room, r, (size_t)(close - r));
    room[close - r] = '\0';
    peer->p = close + sizeof mid - 1;
    peer->n = (size_t)(end - peer->p);
    return peer->n > 0;
}

/* ---- backend control ---------------------------------------------------- */

void sg_wire_sub_sha1(const char *sub, size_t n, char out[SG_WIRE_SUB_SHA1_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t d[SHA_DIGEST_LENGTH];
    SHA1((const uint8_t *)sub, n, d);
    for (size_t i = 0; i < SHA_DIGEST_LENGTH; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[SG_WIRE_SUB_SHA1_LEN] = '\0';
}

bool sg_wire_parse_revoke(const char *payload, size_t len, sg_wire_revoke *out)
{
    static const char head[] = "revoke\t";
    const size_t hl = sizeof head - 1;
    if (!starts_with(payload, len, head, hl) || len < hl + SG_WIRE_SUB_SHA1_LEN + 2)
        return false;
    const char *h = payload + hl;
    for (size_t i = 0; i < SG_WIRE_SUB_SHA1_LEN; i++)
        if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f')))
            return false;
    const char *p = h + SG_WIRE_SUB_SHA1_LEN, *end = payload + len;
    if (!take_tab(&p, end) || !take_u64(&p, end, &out->until_ms) || p != end)
        return false;
    memcpy(out->sub_sha1, h, SG_WIRE_SUB_SHA1_LEN);
    out->sub_sha1[SG_WIRE_SUB_SHA1_LEN] = '\0';
    return true;
}
