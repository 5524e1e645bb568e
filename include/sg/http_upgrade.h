/* SPDX-License-Identifier: Apache-2.0 */
/* http_upgrade: pure, bounded HTTP/1.1 request parsing and the WebSocket
 * upgrade checks of docs/protocol.md §1. No I/O, no allocation: parsed strings
 * point into the caller's buffer, which must outlive the request struct. */
#ifndef SG_HTTP_UPGRADE_H
#define SG_HTTP_UPGRADE_H

#include <stddef.h>
#include <stdbool.h>
#include "sg/buf.h"

#define SG_HTTP_MAX_HEADERS 48
#define SG_TOKEN_MAX 4096 /* longest bearer token accepted, in bytes */

typedef struct sg_str {
    const char *p;
    size_t n;
} sg_str;

typedef struct sg_http_header {
    sg_str name;
    sg_str value; /* leading/trailing spaces and tabs trimmed */
} sg_http_header;

typedef struct sg_http_request {
    sg_str method;
    sg_str target; /* request-target as sent */
    sg_str path;   /* target up to '?' */
    sg_str query;  /* after '?', empty if none */
    int minor_version; /* HTTP/1.<minor> */
    sg_http_header headers[SG_HTTP_MAX_HEADERS];
    size_t nheaders;
} sg_http_request;

enum {
    SG_HTTP_INCOMPLETE = 0,
    SG_HTTP_MALFORMED = -1, /* bad request line / header syntax / obs-fold / NUL / bare LF... */
    SG_HTTP_TOO_LARGE = -2, /* header block over max_len, or more than SG_HTTP_MAX_HEADERS */
};

/* Parses the request head in buf[0..len). Returns the length of the head
 * (through the blank line) when it is complete, SG_HTTP_INCOMPLETE when more
 * bytes are needed (and len <= max_len), or a negative error. Only HTTP/1.0 and
 * HTTP/1.1 request lines are accepted; header names are tokens (RFC 9110). */
int sg_http_parse_request(const char *buf, size_t len, size_t max_len, sg_http_request *req);

/* Where a request head arriving in pieces ends, looking at each byte once:
 * *scanned is how many bytes of buf earlier calls examined (0 for a new
 * request; keep it between calls while buf only grows by appending). Bytes
 * no head may hold (NUL and other controls, a bare CR or LF, obs-fold, an
 * empty request line) are refused as soon as they arrive, as
 * sg_http_parse_request refuses them.
 * Returns the length of the head through its blank line, SG_HTTP_INCOMPLETE
 * (with *scanned advanced), SG_HTTP_MALFORMED, or SG_HTTP_TOO_LARGE once
 * len > max_len without a blank line. A complete head is then parsed, once,
 * with sg_http_parse_request, which may still refuse it. */
int sg_http_scan_head(const char *buf, size_t len, size_t max_len, size_t *scanned);

/* First header with this name (case-insensitive), or NULL. */
const sg_str *sg_http_header_get(const sg_http_request *req, const char *name);

/* Does a comma-separated header (all occurrences) contain token, case-insensitively? */
bool sg_http_header_has_token(const sg_http_request *req, const char *name, const char *token);

#define SG_IP_TEXT_MAX 46 /* INET6_ADDRSTRLEN */

/* Is ip one of the comma-separated addresses of list (NULL: none)? Both are
 * compared as addresses (inet_pton), so "::ffff:10.0.0.1" matches
 * "10.0.0.1"; an entry that is not a numeric address matches nothing. */
bool sg_ip_in_list(const char *ip, const char *list);

/* The client address behind trusted proxies, for a request whose socket
 * peer is one of them (the caller checks that). The entries of every
 * X-Forwarded-For line, in order, form one list. From its right end,
 * entries that are addresses in trusted are skipped; the first other entry
 * decides: when it is a numeric IPv4 or IPv6 address, its canonical text
 * (inet_ntop; IPv4-mapped IPv6 as IPv4) goes to out and the result is true.
 * False (keep the socket address) when there is no such entry or it is not
 * an address: a port, brackets, "unknown", a name. */
bool sg_forwarded_client(const sg_http_request *req, const char *trusted, char out[SG_IP_TEXT_MAX]);

typedef enum {
    SG_TOKEN_NONE = 0,
    SG_TOKEN_HEADER,   /* Authorization: Bearer */
    SG_TOKEN_PROTOCOL, /* Sec-WebSocket-Protocol: bearer.<JWT> */
    SG_TOKEN_QUERY,    /* ?access_token= (percent-decoded) */
} sg_token_source;

typedef struct sg_upgrade_policy {
    const char *path;                    /* "/ws" */
    const char *const *allowed_origins;  /* exact match, e.g. "https://app.example"; NULL = any */
    size_t n_allowed_origins;
} sg_upgrade_policy;

typedef struct sg_upgrade {
    int status;          /* 0: proceed to token verification; else the HTTP status to answer */
    const char *code;    /* docs/protocol.md error code when status != 0 */
    const char *message; /* human-readable reason when status != 0; when status == 0,
                          * why the token is missing or malformed (for the 401
                          * message), NULL when a well-formed token was found */
    sg_str key;          /* Sec-WebSocket-Key (validated: base64 of 16 bytes) */
    bool select_protocol; /* answer with Sec-WebSocket-Protocol: signal.v1 */
    sg_token_source token_source; /* the source that decides (§1 order), NONE if absent */
    bool token_malformed; /* the deciding source is present but unusable (e.g. "Authorization: Basic", bad %-escape, over SG_TOKEN_MAX) */
    size_t token_len;     /* token copied NUL-terminated into the caller's buffer */
    sg_str origin;        /* empty when absent */
    sg_str traceparent;   /* empty when absent */
} sg_upgrade;

/* Applies the §1 checks in this order: method GET (else 400), path (404),
 * Upgrade/Connection/Sec-WebSocket-Version (426), Sec-WebSocket-Key (400),
 * subprotocol offer without signal.v1 (400), Origin allow-list (403); then
 * picks the token source. token must hold SG_TOKEN_MAX + 1 bytes. Does not
 * verify the token (auth.h does). */
void sg_upgrade_check(const sg_http_request *req, const sg_upgrade_policy *pol,
                      sg_upgrade *out, char *token);

/* Sec-WebSocket-Accept for a key: base64(SHA-1(key + GUID)); out gets 28 chars + NUL. */
void sg_ws_accept_key(const char *key, size_t n, char out[29]);

/* "HTTP/1.1 101 Switching Protocols" with Upgrade, Connection, Accept and,
 * when select_protocol, "Sec-WebSocket-Protocol: signal.v1". */
void sg_http_upgrade_response(sg_buf *out, const sg_upgrade *up);

/* A refused handshake: status line, Content-Type: application/json,
 * Content-Length, Connection: close, extra_headers (each ending in CRLF, may
 * be NULL), and for 426 "Sec-WebSocket-Version: 13"; the body is
 * {"type":"error","code":code,"message":message}. */
void sg_http_error_response(sg_buf *out, int status, const char *code,
                            const char *message, const char *extra_headers);

#endif
