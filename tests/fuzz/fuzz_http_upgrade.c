/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer driver for http_upgrade: parses the input as a request head,
 * runs the handshake checks under two policies and builds the response a
 * connection would send. Besides memory errors (ASan/UBSan) it traps on
 * broken invariants: a complete head must end in CRLFCRLF, parse again to the
 * same length and be incomplete one byte shorter; every parsed string must
 * lie inside the head; the token must fit and be NUL-terminated; a
 * response's Content-Length must match its body; an X-Forwarded-For
 * client address must be a canonical numeric address; and scanning the head
 * in pieces (sg_http_scan_head) must reach the verdict parsing it whole does. */
#include <arpa/inet.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sg/http_upgrade.h"

#define MAX_HEAD 8192

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond))                                                                  \
            __builtin_trap();                                                         \
    } while (0)

static void check_in(sg_str s, const char *buf, size_t n)
{
    CHECK(s.n == 0 || (s.p >= buf && s.n <= n && (size_t)(s.p - buf) <= n - s.n));
}

static void check_response(const sg_buf *b)
{
    const char *sep = strstr(b->data, "\r\n\r\n");
    CHECK(sep != NULL);
    const char *cl = strstr(b->data, "\r\nContent-Length: ");
    CHECK(cl != NULL && cl < sep);
    size_t body = b->len - (size_t)(sep + 4 - b->data);
    CHECK(strtoul(cl + 18, NULL, 10) == body);
}

static void run_check(const sg_http_request *req, const sg_upgrade_policy *pol, const char *buf, size_t head)
{
    static const char *const kHint = "WWW-Authenticate: Bearer\r\n";
    char token[SG_TOKEN_MAX + 1];
    sg_upgrade up;
    sg_upgrade_check(req, pol, &up, token);
    check_in(up.key, buf, head);
    check_in(up.origin, buf, head);
    check_in(up.traceparent, buf, head);
    CHECK(up.token_len <= SG_TOKEN_MAX && strlen(token) == up.token_len);
    CHECK(!up.token_malformed || up.token_len == 0);

    sg_buf b;
    sg_buf_init(&b);
    if (up.status == 0) {
        CHECK(up.key.n == 24);
        sg_http_upgrade_response(&b, &up);
        CHECK(strstr(b.data, "bearer.") == NULL);
        if (up.token_source == SG_TOKEN_NONE || up.token_malformed) {
            sg_buf_reset(&b);
            sg_http_error_response(&b, 401, "unauthorized", up.message, kHint);
            check_response(&b);
        }
    } else {
        CHECK(up.code != NULL && up.message != NULL);
        sg_http_error_response(&b, up.status, up.code, up.message, NULL);
        check_response(&b);
    }
    sg_buf_free(&b);
}

/* The client address from X-Forwarded-For is a numeric address in
 * canonical form (it reads back as itself) and never one of the trusted
 * hops, which are skipped. */
static void check_forwarded(const sg_http_request *req)
{
    static const char *const lists[] = {NULL, "", "10.0.0.1", "10.0.0.1, 2001:db8::1,127.0.0.1"};
    for (size_t i = 0; i < sizeof lists / sizeof *lists; i++) {
        char out[SG_IP_TEXT_MAX];
        if (!sg_forwarded_client(req, lists[i], out))
            continue;
        size_t n = strnlen(out, sizeof out);
        CHECK(n > 0 && n < sizeof out);
        unsigned char b[16];
        char again[SG_IP_TEXT_MAX];
        int af = inet_pton(AF_INET, out, b) == 1 ? AF_INET : AF_INET6;
        CHECK(af == AF_INET || inet_pton(AF_INET6, out, b) == 1);
        CHECK(inet_ntop(af, b, again, sizeof again) && strcmp(again, out) == 0);
        CHECK(!sg_ip_in_list(out, lists[i]));
    }
}

/* The head as a connection reads it: scanned `step` bytes at a time, parsed
 * once when the scanner finds its end. */
static int scan_then_parse(const char *buf, size_t size, size_t step)
{
    size_t scanned = 0;
    for (size_t len = step < size ? step : size;; len = len + step < size ? len + step : size) {
        size_t before = scanned;
        int rc = sg_http_scan_head(buf, len, MAX_HEAD, &scanned);
        CHECK(scanned >= before && scanned <= len);
        if (rc > 0) {
            CHECK((size_t)rc == scanned && (size_t)rc <= len);
            sg_http_request req;
            return sg_http_parse_request(buf, (size_t)rc, MAX_HEAD, &req);
        }
        if (rc != SG_HTTP_INCOMPLETE || len == size)
            return rc;
        CHECK(scanned + 1 >= len); /* all looked at but maybe a trailing CR */
    }
}

/* Reading the head in pieces changes when a bad head is refused, never the
 * verdict: a complete head parses to the same length; what the scanner
 * refuses the parser refuses; a request line or header the scanner let
 * through can only be refused once the head is complete. */
static void check_scan(const char *buf, size_t size, int whole)
{
    static const size_t steps[] = {1, 7, 1 << 20};
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        int got = scan_then_parse(buf, size, steps[i]);
        if (whole > 0 || whole == SG_HTTP_INCOMPLETE) {
            CHECK(got == whole);
        } else {
            /* The parser stops at its first error (or at the 49th header,
             * TOO_LARGE), the scanner may stop at a later one. */
            CHECK(got == SG_HTTP_INCOMPLETE || got == SG_HTTP_MALFORMED || got == SG_HTTP_TOO_LARGE);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    sg_http_request req;
    int rc = sg_http_parse_request(buf, size, MAX_HEAD, &req);
    check_scan(buf, size, rc);
    if (rc == SG_HTTP_INCOMPLETE) {
        CHECK(size <= MAX_HEAD);
        return 0;
    }
    if (rc < 0) {
        CHECK(rc == SG_HTTP_MALFORMED || rc == SG_HTTP_TOO_LARGE);
        return 0;
    }

    size_t head = (size_t)rc;
    CHECK(head >= 4 && head <= size && head <= MAX_HEAD);
    CHECK(memcmp(buf + head - 4, "\r\n\r\n", 4) == 0);
    CHECK(req.nheaders <= SG_HTTP_MAX_HEADERS);
    check_in(req.method, buf, head);
    check_in(req.target, buf, head);
    check_in(req.path, buf, head);
    check_in(req.query, buf, head);
    for (size_t i = 0; i < req.nheaders; i++) {
        CHECK(req.headers[i].name.n > 0);
        check_in(req.headers[i].name, buf, head);
        check_in(req.headers[i].value, buf, head);
    }

    /* Growing-buffer consistency: the head alone, and one byte less. */
    sg_http_request again;
    CHECK(sg_http_parse_request(buf, head, MAX_HEAD, &again) == rc);
    CHECK(sg_http_parse_request(buf, head - 1, MAX_HEAD, &again) == SG_HTTP_INCOMPLETE);

    static const char *const origins[] = {"https://app.example", "http://localhost:3000/"};
    const sg_upgrade_policy any = {.path = "/ws"};
    const sg_upgrade_policy listed = {.path = "/ws", .allowed_origins = origins, .n_allowed_origins = 2};
    run_check(&req, &any, buf, head);
    run_check(&req, &listed, buf, head);
    check_forwarded(&req);
    return 0;
}
