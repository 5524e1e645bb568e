/* SPDX-License-Identifier: Apache-2.0 */
/* http_upgrade: a bounded, allocation-free HTTP/1.1 request-head parser and
 * the WebSocket handshake checks of docs/protocol.md §1.
 *
 * The parser is stateless: every call reads buf from the start, so it is
 * called once, on a complete head. While the head arrives, sg_http_scan_head
 * looks only at the bytes that are new since the last read: re-parsing on
 * every read made a head sent in small pieces cost O(max_len * reads).
 * The input is hostile, so the grammar is the strict one of RFC 9112: CRLF
 * only, no control characters, no obs-fold, token header names, no
 * whitespace before the colon. */
#include "sg/http_upgrade.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define SUBPROTOCOL "signal.v1"
#define BEARER_PREFIX "bearer."

/* ---- character classes ------------------------------------------------ */

/* tchar of RFC 9110 §5.6.2. */
static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Bytes allowed anywhere in a request line or header line: HTAB, SP,
 * VCHAR and obs-text. CR is handled by the line splitter; LF alone, NUL,
 * every other C0 control and DEL are refused. */
static bool is_line_byte(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

static bool is_ows(char c) { return c == ' ' || c == '\t'; }

static unsigned char lower(unsigned char c) { return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c; }

/* ASCII-only case folding: locale-independent, unlike strncasecmp. */
static bool mem_eq_ci(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
            return false;
    return true;
}

static bool str_eq(sg_str s, const char *lit) { return s.n == strlen(lit) && memcmp(s.p, lit, s.n) == 0; }

static bool str_eq_ci(sg_str s, const char *lit) { return s.n == strlen(lit) && mem_eq_ci(s.p, lit, s.n); }

static sg_str str_trim(sg_str s)
{
    while (s.n && is_ows(s.p[0])) {
        s.p++;
        s.n--;
    }
    while (s.n && is_ows(s.p[s.n - 1]))
        s.n--;
    return s;
}

/* ---- request head parser ---------------------------------------------- */

/* Finds the end of the line that starts at *pos, looking no further than lim.
 * Returns 1 with the line (CRLF excluded) and *pos past its CRLF, or
 * SG_HTTP_INCOMPLETE, or SG_HTTP_MALFORMED as soon as a byte no line may
 * hold appears, so garbage is refused before the line is finished. */
static int next_line(const char *buf, size_t lim, size_t *pos, sg_str *line)
{
    for (size_t i = *pos; i < lim; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c == '\r') {
            if (i + 1 == lim)
                return SG_HTTP_INCOMPLETE;
            if (buf[i + 1] != '\n')
                return SG_HTTP_MALFORMED; /* bare CR */
            line->p = buf + *pos;
            line->n = i - *pos;
            *pos = i + 2;
            return 1;
        }
        if (!is_line_byte(c))
            return SG_HTTP_MALFORMED; /* bare LF, NUL, other controls */
    }
    return SG_HTTP_INCOMPLETE;
}

/* request-line = method SP request-target SP HTTP-version, with exactly one
 * SP between the parts (RFC 9112 §3 allows a server to be this strict). */
static bool parse_request_line(sg_str line, sg_http_request *req)
{
    const char *p = line.p, *end = line.p + line.n;

    const char *m = p;
    while (p < end && is_tchar((unsigned char)*p))
        p++;
    if (p == m || p == end || *p != ' ')
        return false;
    req->method = (sg_str){m, (size_t)(p - m)};
    p++;

    /* The target is visible ASCII; its finer grammar does not matter here
     * because the only target we serve is compared byte for byte. */
    const char *t = p;
    while (p < end && (unsigned char)*p > 0x20 && (unsigned char)*p < 0x7f)
        p++;
    if (p == t || p == end || *p != ' ')
        return false;
    req->target = (sg_str){t, (size_t)(p - t)};
    p++;

    if (end - p != 8 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1'))
        return false;
    req->minor_version = p[7] - '0';

    const char *q = memchr(req->target.p, '?', req->target.n);
    if (q) {
        req->path = (sg_str){req->target.p, (size_t)(q - req->target.p)};
        req->query = (sg_str){q + 1, req->target.n - req->path.n - 1};
    } else {
        req->path = req->target;
        req->query = (sg_str){req->target.p + req->target.n, 0};
    }
    return true;
}

/* field-line = field-name ":" OWS field-value OWS. No whitespace is allowed
 * between the name and the colon (RFC 9112 §5.1: it has been used to smuggle
 * requests past proxies). */
static bool parse_header_line(sg_str line, sg_http_header *h)
{
    const char *p = line.p, *end = line.p + line.n;
    while (p < end && is_tchar((unsigned char)*p))
        p++;
    if (p == line.p || p == end || *p != ':')
        return false;
    h->name = (sg_str){line.p, (size_t)(p - line.p)};
    p++;
    h->value = str_trim((sg_str){p, (size_t)(end - p)});
    return true;
}

/* What an unfinished head means: more bytes may come only while the cap has
 * not been reached. */
static int unfinished(int rc, size_t len, size_t cap)
{
    if (rc == SG_HTTP_INCOMPLETE && len > cap)
        return SG_HTTP_TOO_LARGE;
    return rc;
}

int sg_http_parse_request(const char *buf, size_t len, size_t max_len, sg_http_request *req)
{
    /* The head length is returned as an int. */
    size_t cap = max_len < (size_t)INT_MAX ? max_len : (size_t)INT_MAX;
    size_t lim = len < cap ? len : cap; /* nothing past the cap is ever read */
    size_t pos = 0;
    sg_str line;

    req->nheaders = 0;
    int rc = next_line(buf, lim, &pos, &line);
    if (rc <= 0)
        return unfinished(rc, len, cap);
    /* An empty first line lands here too: the request must come first. */
    if (!parse_request_line(line, req))
        return SG_HTTP_MALFORMED;

    for (;;) {
        /* Judge the first byte of the next line before the line is complete,
         * so obs-fold and a header over the count cap are refused early. */
        if (pos < lim) {
            char c = buf[pos];
            if (is_ows(c))
                return SG_HTTP_MALFORMED; /* obs-fold */
            if (c != '\r' && req->nheaders == SG_HTTP_MAX_HEADERS)
                return SG_HTTP_TOO_LARGE;
        }
        rc = next_line(buf, lim, &pos, &line);
        if (rc <= 0)
            return unfinished(rc, len, cap);
        if (line.n == 0)
            return (int)pos; /* the blank line: the head is complete */
        /* Already refused above; repeated here so the bound sits at the write. */
        if (req->nheaders == SG_HTTP_MAX_HEADERS)
            return SG_HTTP_TOO_LARGE;
        if (!parse_header_line(line, &req->headers[req->nheaders]))
            return SG_HTTP_MALFORMED;
        req->nheaders++;
    }
}

/* Does a line start at i? Every LF examined so far ended a CRLF (a bare one
 * is refused), so the byte before i being LF means the line before ended. */
static bool at_line_start(const char *buf, size_t i) { return i == 0 || buf[i - 1] == '\n'; }

int sg_http_scan_head(const char *buf, size_t len, size_t max_len, size_t *scanned)
{
    size_t cap = max_len < (size_t)INT_MAX ? max_len : (size_t)INT_MAX;
    size_t lim = len < cap ? len : cap;
    size_t i = *scanned;
    if (i > lim)
        i = 0; /* not the buffer the position was kept for: start over */
    for (; i < lim; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c == '\r') {
            if (i + 1 == lim)
                break; /* the LF is still to come: look at this CR again then */
            if (buf[i + 1] != '\n')
                return SG_HTTP_MALFORMED; /* bare CR */
            if (i == 0)
                return SG_HTTP_MALFORMED; /* the request must come first */
            if (at_line_start(buf, i)) {
                *scanned = i + 2;
                return (int)(i + 2); /* the blank line: the head is complete */
            }
            i++; /* past the LF */
            continue;
        }
        if (!is_line_byte(c))
            return SG_HTTP_MALFORMED; /* bare LF, NUL, other controls */
        if (is_ows((char)c) && i > 0 && at_line_start(buf, i))
            return SG_HTTP_MALFORMED; /* obs-fold */
    }
    *scanned = i;
    return unfinished(SG_HTTP_INCOMPLETE, len, cap);
}

/* ---- header lookups --------------------------------------------------- */

const sg_str *sg_http_header_get(const sg_http_request *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (str_eq_ci(req->headers[i].name, name))
            return &req->headers[i].value;
    return NULL;
}

static size_t header_count(const sg_http_request *req, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < req->nheaders; i++)
        if (str_eq_ci(req->headers[i].name, name))
            n++;
    return n;
}

/* Takes the next non-empty element of a comma-separated list off *rest,
 * trimmed of OWS. Returns false when the list is exhausted. */
static bool list_next(sg_str *rest, sg_str *elem)
{
    while (rest->n) {
        const char *comma = memchr(rest->p, ',', rest->n);
        size_t n = comma ? (size_t)(comma - rest->p) : rest->n;
        *elem = str_trim((sg_str){rest->p, n});
        rest->p += comma ? n + 1 : n;
        rest->n -= comma ? n + 1 : n;
        if (elem->n)
            return true;
    }
    return false;
}

bool sg_http_header_has_token(const sg_http_request *req, const char *name, const char *token)
{
    for (size_t i = 0; i < req->nheaders; i++) {
        if (!str_eq_ci(req->headers[i].name, name))
            continue;
        sg_str rest = req->headers[i].value, elem;
        while (list_next(&rest, &elem))
            if (str_eq_ci(elem, token))
                return true;
    }
    return false;
}

/* ---- X-Forwarded-For --------------------------------------------------- */

/* Takes the last non-empty element of a comma-separated list off the end of
 * *rest, trimmed of OWS. Empty elements are ignored (RFC 9110 §5.6.1). */
static bool list_prev(sg_str *rest, sg_str *elem)
{
    while (rest->n) {
        const char *comma = memrchr(rest->p, ',', rest->n);
        size_t start = comma ? (size_t)(comma - rest->p) + 1 : 0;
        *elem = str_trim((sg_str){rest->p + start, rest->n - start});
        rest->n = comma ? start - 1 : 0;
        if (elem->n)
            return true;
    }
    return false;
}

typedef struct ip_addr {
    int family; /* AF_INET or AF_INET6 */
    unsigned char b[16];
} ip_addr;

/* A numeric IPv4 or IPv6 address and nothing else: no port, no brackets,
 * no zone, no name. An IPv4-mapped IPv6 address becomes the IPv4 one, so a
 * client counts once however a dual-stack hop wrote it. */
static bool parse_ip(sg_str s, ip_addr *a)
{
    char text[SG_IP_TEXT_MAX];
    if (s.n == 0 || s.n >= sizeof text || memchr(s.p, '\0', s.n))
        return false;
    memcpy(text, s.p, s.n);
    text[s.n] = '\0';
    memset(a, 0, sizeof *a);
    if (inet_pton(AF_INET, text, a->b) == 1) {
        a->family = AF_INET;
        return true;
    }
    if (inet_pton(AF_INET6, text, a->b) != 1)
        return false;
    static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(a->b, v4mapped, sizeof v4mapped) == 0) {
        memmove(a->b, a->b + 12, 4);
        memset(a->b + 4, 0, 12);
        a->family = AF_INET;
    } else {
        a->family = AF_INET6;
    }
    return true;
}

static bool ip_equal(const ip_addr *x, const ip_addr *y)
{
    return x->family == y->family && memcmp(x->b, y->b, x->family == AF_INET ? 4 : 16) == 0;
}

static bool addr_in_list(const ip_addr *a, const char *list)
{
    if (!list)
        return false;
    sg_str rest = {list, strlen(list)}, elem;
    ip_addr t;
    while (list_next(&rest, &elem))
        if (parse_ip(elem, &t) && ip_equal(a, &t))
            return true;
    return false;
}

bool sg_ip_in_list(const char *ip, const char *list)
{
    ip_addr a;
    return parse_ip((sg_str){ip, strlen(ip)}, &a) && addr_in_list(&a, list);
}

bool sg_forwarded_client(const sg_http_request *req, const char *trusted, char out[SG_IP_TEXT_MAX])
{
    /* Every proxy appends, to the last line or as a line of its own (haproxy's
     * option forwardfor), so only the right end of all lines together is
     * written by hops we trust; anything further left came from the client.
     * Walk from the right past our own proxies; the first other entry is the
     * address the outermost trusted proxy saw, and nothing left of it can be
     * believed, so it decides even when it is not an address. */
    for (size_t i = req->nheaders; i-- > 0;) {
        if (!str_eq_ci(req->headers[i].name, "X-Forwarded-For"))
            continue;
        sg_str rest = req->headers[i].value, elem;
        while (list_prev(&rest, &elem)) {
            ip_addr a;
            if (!parse_ip(elem, &a))
                return false;
            if (addr_in_list(&a, trusted))
                continue;
            return inet_ntop(a.family, a.b, out, SG_IP_TEXT_MAX) != NULL;
        }
    }
    return false;
}

/* ---- upgrade checks --------------------------------------------------- */

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* RFC 6455 §4.2.1: the key is base64 that decodes to exactly 16 bytes, i.e.
 * 22 alphabet characters and "==". The last character's low 4 bits are
 * padding and must be zero, or the string is not the encoding of any 16
 * bytes (RFC 4648 §3.5). */
static bool valid_ws_key(sg_str k)
{
    if (k.n != 24 || k.p[22] != '=' || k.p[23] != '=')
        return false;
    for (size_t i = 0; i < 22; i++)
        if (b64_value((unsigned char)k.p[i]) < 0)
            return false;
    return (b64_value((unsigned char)k.p[21]) & 0x0f) == 0;
}

/* b64token of RFC 6750 §2.1: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" /
 * "+" / "/" ) *"=". Every source is held to it, so whatever reaches the JWT
 * verifier and the logs is printable and free of NUL, however it was
 * encoded on the wire. */
static bool valid_b64token(const char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)p[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            (c != '\0' && strchr("-._~+/", c) != NULL))
            i++;
        else
            break;
    }
    if (i == 0)
        return false;
    while (i < n && p[i] == '=')
        i++;
    return i == n;
}

static void set_error(sg_upgrade *out, int status, const char *code, const char *message)
{
    out->status = status;
    out->code = code;
    out->message = message;
}

static void token_malformed(sg_upgrade *out, char *token, const char *why)
{
    out->token_malformed = true;
    out->token_len = 0;
    out->message = why;
    token[0] = '\0';
}

/* Copies an already-decoded token, enforcing the length cap and charset. */
static void take_token(sg_upgrade *out, char *token, const char *p, size_t n, const char *what)
{
    if (n == 0) {
        token_malformed(out, token, what);
        return;
    }
    if (n > SG_TOKEN_MAX) {
        token_malformed(out, token, "token is longer than the limit");
        return;
    }
    if (!valid_b64token(p, n)) {
        token_malformed(out, token, "token has characters a bearer token cannot hold");
        return;
    }
    memcpy(token, p, n);
    token[n] = '\0';
    out->token_len = n;
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = lower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Percent-decodes the access_token value into token. '+' stays '+': the
 * form-encoding rule that turns it into a space does not apply to a URI
 * query, and '+' is a legal b64token character. */
static void take_query_token(sg_upgrade *out, char *token, sg_str v)
{
    size_t n = 0;
    for (size_t i = 0; i < v.n; i++) {
        unsigned char c = (unsigned char)v.p[i];
        if (c == '%') {
            int hi = i + 2 < v.n ? hex_value((unsigned char)v.p[i + 1]) : -1;
            int lo = hi >= 0 ? hex_value((unsigned char)v.p[i + 2]) : -1;
            if (lo < 0) {
                token_malformed(out, token, "access_token has an invalid %-escape");
                return;
            }
            c = (unsigned char)(hi << 4 | lo);
            i += 2;
        }
        /* Checked before every write: token holds SG_TOKEN_MAX + 1 bytes. */
        if (n == SG_TOKEN_MAX) {
            token_malformed(out, token, "token is longer than the limit");
            return;
        }
        token[n++] = (char)c;
    }
    /* The charset is checked on the decoded bytes: "%00" or "%20" must not
     * slip through just because they were escaped on the wire. */
    if (n == 0) {
        token_malformed(out, token, "access_token is empty");
        return;
    }
    if (!valid_b64token(token, n)) {
        token_malformed(out, token, "token has characters a bearer token cannot hold");
        return;
    }
    token[n] = '\0';
    out->token_len = n;
}

/* The token source decides in §1 order, even when it is unusable and a later
 * one would do: a client sending two tokens is either confused or probing. */
static void pick_token(const sg_http_request *req, sg_upgrade *out, char *token)
{
    const sg_str *auth = sg_http_header_get(req, "Authorization");
    if (auth) {
        out->token_source = SG_TOKEN_HEADER;
        if (header_count(req, "Authorization") > 1) {
            token_malformed(out, token, "repeated Authorization header");
            return;
        }
        /* credentials = auth-scheme 1*SP token68; the value is trimmed. */
        static const char scheme[] = "Bearer";
        size_t sl = sizeof scheme - 1;
        if (auth->n <= sl || !mem_eq_ci(auth->p, scheme, sl) || auth->p[sl] != ' ') {
            token_malformed(out, token, "Authorization header is not a Bearer token");
            return;
        }
        sg_str t = {auth->p + sl, auth->n - sl};
        while (t.n && t.p[0] == ' ') {
            t.p++;
            t.n--;
        }
        take_token(out, token, t.p, t.n, "Authorization Bearer token is empty");
        return;
    }

    for (size_t i = 0; i < req->nheaders; i++) {
        if (!str_eq_ci(req->headers[i].name, "Sec-WebSocket-Protocol"))
            continue;
        sg_str rest = req->headers[i].value, elem;
        size_t pl = sizeof BEARER_PREFIX - 1;
        while (list_next(&rest, &elem)) {
            if (elem.n >= pl && memcmp(elem.p, BEARER_PREFIX, pl) == 0) {
                out->token_source = SG_TOKEN_PROTOCOL;
                take_token(out, token, elem.p + pl, elem.n - pl, "bearer. subprotocol token is empty");
                return;
            }
        }
    }

    sg_str rest = req->query;
    bool found = false;
    sg_str value = {NULL, 0};
    while (rest.n) {
        const char *amp = memchr(rest.p, '&', rest.n);
        sg_str param = {rest.p, amp ? (size_t)(amp - rest.p) : rest.n};
        rest.p += amp ? param.n + 1 : param.n;
        rest.n -= amp ? param.n + 1 : param.n;
        const char *eq = memchr(param.p, '=', param.n);
        sg_str key = {param.p, eq ? (size_t)(eq - param.p) : param.n};
        if (!str_eq(key, "access_token"))
            continue;
        if (found) {
            /* Proxies and frameworks disagree on which duplicate wins. */
            out->token_source = SG_TOKEN_QUERY;
            token_malformed(out, token, "repeated access_token parameter");
            return;
        }
        found = true;
        value = eq ? (sg_str){eq + 1, param.n - key.n - 1} : (sg_str){param.p + param.n, 0};
    }
    if (found) {
        out->token_source = SG_TOKEN_QUERY;
        take_query_token(out, token, value);
        return;
    }
    out->message = "missing bearer token";
}

static sg_str str_or_empty(const sg_str *s) { return s ? *s : (sg_str){"", 0}; }

/* Origins compare case-insensitively (scheme and host are, and browsers send
 * them lowercase anyway) and a single trailing '/' is ignored on both sides,
 * so "https://app.example/" in the configuration still matches. */
static bool origin_allowed(sg_str o, const sg_upgrade_policy *pol)
{
    if (o.n && o.p[o.n - 1] == '/')
        o.n--;
    for (size_t i = 0; i < pol->n_allowed_origins; i++) {
        const char *a = pol->allowed_origins[i];
        size_t an = strlen(a);
        if (an && a[an - 1] == '/')
            an--;
        if (an == o.n && mem_eq_ci(a, o.p, an))
            return true;
    }
    return false;
}

void sg_upgrade_check(const sg_http_request *req, const sg_upgrade_policy *pol,
                      sg_upgrade *out, char *token)
{
    memset(out, 0, sizeof *out);
    token[0] = '\0';
    /* Filled first, so even a refused handshake can be logged and traced. */
    out->origin = str_or_empty(sg_http_header_get(req, "Origin"));
    out->traceparent = str_or_empty(sg_http_header_get(req, "traceparent"));

    if (!str_eq(req->method, "GET")) {
        set_error(out, 400, "bad_request", "method must be GET");
        return;
    }
    /* RFC 9112 §3.2: a 1.1 request without exactly one Host is a 400. */
    size_t hosts = header_count(req, "Host");
    if (hosts > 1 || (hosts == 0 && req->minor_version == 1)) {
        set_error(out, 400, "bad_request", hosts ? "repeated Host header" : "missing Host header");
        return;
    }
    if (!str_eq(req->path, pol->path)) {
        set_error(out, 404, "not_found", "no WebSocket endpoint at this path");
        return;
    }
    /* RFC 9110 §7.8: a server must ignore Upgrade in an HTTP/1.0 request. */
    if (req->minor_version == 0) {
        set_error(out, 426, "upgrade_required", "the WebSocket upgrade needs HTTP/1.1");
        return;
    }
    if (!sg_http_header_has_token(req, "Upgrade", "websocket")) {
        set_error(out, 426, "upgrade_required", "missing Upgrade: websocket header");
        return;
    }
    if (!sg_http_header_has_token(req, "Connection", "upgrade")) {
        set_error(out, 426, "upgrade_required", "missing Connection: Upgrade header");
        return;
    }
    const sg_str *ver = sg_http_header_get(req, "Sec-WebSocket-Version");
    if (!ver) {
        set_error(out, 426, "upgrade_required", "missing Sec-WebSocket-Version header");
        return;
    }
    if (header_count(req, "Sec-WebSocket-Version") != 1 || !str_eq(*ver, "13")) {
        set_error(out, 426, "upgrade_required", "Sec-WebSocket-Version must be 13");
        return;
    }

    const sg_str *key = sg_http_header_get(req, "Sec-WebSocket-Key");
    if (!key) {
        set_error(out, 400, "bad_request", "missing Sec-WebSocket-Key header");
        return;
    }
    if (header_count(req, "Sec-WebSocket-Key") != 1) {
        set_error(out, 400, "bad_request", "repeated Sec-WebSocket-Key header");
        return;
    }
    if (!valid_ws_key(*key)) {
        set_error(out, 400, "bad_request", "Sec-WebSocket-Key is not base64 of 16 bytes");
        return;
    }
    out->key = *key;

    /* Subprotocol names are case-sensitive (RFC 6455 §11.3.4). */
    bool offered = false, ours = false;
    for (size_t i = 0; i < req->nheaders; i++) {
        if (!str_eq_ci(req->headers[i].name, "Sec-WebSocket-Protocol"))
            continue;
        sg_str rest = req->headers[i].value, elem;
        while (list_next(&rest, &elem)) {
            offered = true;
            ours = ours || str_eq(elem, SUBPROTOCOL);
        }
    }
    if (offered && !ours) {
        set_error(out, 400, "bad_request", "Sec-WebSocket-Protocol offer lacks signal.v1");
        return;
    }
    out->select_protocol = ours;

    if (pol->allowed_origins) {
        /* Every Origin line must pass, so a second one cannot sneak by. */
        for (size_t i = 0; i < req->nheaders; i++) {
            if (str_eq_ci(req->headers[i].name, "Origin") &&
                !origin_allowed(req->headers[i].value, pol)) {
                set_error(out, 403, "origin_not_allowed", "Origin not allowed");
                return;
            }
        }
    }

    pick_token(req, out, token);
}

/* ---- responses -------------------------------------------------------- */

void sg_ws_accept_key(const char *key, size_t n, char out[29])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    /* Failure here means OpenSSL cannot allocate a digest context: treated
     * like any other OOM (util.h), not as a per-request error. */
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) != 1 ||
        EVP_DigestUpdate(ctx, key, n) != 1 ||
        EVP_DigestUpdate(ctx, WS_GUID, sizeof WS_GUID - 1) != 1 ||
        EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 20)
        abort();
    EVP_MD_CTX_free(ctx);
    EVP_EncodeBlock((unsigned char *)out, md, 20); /* 28 chars + NUL */
}

void sg_http_upgrade_response(sg_buf *out, const sg_upgrade *up)
{
    char accept[29];
    sg_ws_accept_key(up->key.p, up->key.n, accept);
    sg_buf_puts(out, "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: ");
    sg_buf_puts(out, accept);
    sg_buf_puts(out, "\r\n");
    /* Only ever our own name: echoing a bearer.<JWT> entry would leak the
     * token into every log that records response headers. */
    if (up->select_protocol)
        sg_buf_puts(out, "Sec-WebSocket-Protocol: " SUBPROTOCOL "\r\n");
    sg_buf_puts(out, "\r\n");
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Error";
    }
}

void sg_http_error_response(sg_buf *out, int status, const char *code,
                            const char *message, const char *extra_headers)
{
    if (!code)
        code = "";
    if (!message)
        message = "";
    sg_buf body;
    sg_buf_init(&body);
    sg_buf_puts(&body, "{\"type\":\"error\",\"code\":");
    sg_buf_json_str(&body, code, strlen(code));
    sg_buf_puts(&body, ",\"message\":");
    sg_buf_json_str(&body, message, strlen(message));
    sg_buf_putc(&body, '}');

    sg_buf_printf(out,
                  "HTTP/1.1 %d %s\r\n"
                  "Content-Type: application/json\r\n"
                  "Content-Length: %zu\r\n"
                  "Connection: close\r\n"
                  "Cache-Control: no-store\r\n",
                  status, reason_phrase(status), body.len);
    if (extra_headers)
        sg_buf_puts(out, extra_headers);
    if (status == 426)
        sg_buf_puts(out, "Sec-WebSocket-Version: 13\r\n");
    sg_buf_puts(out, "\r\n");
    sg_buf_append(out, body.data, body.len);
    sg_buf_free(&body);
}
