/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for http_upgrade: the request-head parser byte by byte, the
 * §1 handshake checks in their order, token selection and the exact bytes
 * of the responses. Parser inputs are copied into exactly-sized heap blocks
 * so that AddressSanitizer catches any read past the end. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sg/http_upgrade.h"
#include "sg/buf.h"

#define KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define BASE_HEADERS                                                                  \
    "Host: gw.example\r\n"                                                            \
    "Upgrade: websocket\r\n"                                                          \
    "Connection: Upgrade\r\n"                                                         \
    "Sec-WebSocket-Key: " KEY "\r\n"                                                  \
    "Sec-WebSocket-Version: 13\r\n"
#define GOOD "GET /ws HTTP/1.1\r\n" BASE_HEADERS "\r\n"

/* ---- helpers ---------------------------------------------------------- */

/* Parses the first n bytes of s from an exactly-sized heap copy. */
static int parse_n(const char *s, size_t n, size_t max_len, sg_http_request *req)
{
    char *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    memcpy(copy, s, n);
    int rc = sg_http_parse_request(copy, n, max_len, req);
    free(copy);
    return rc;
}

static int parse(const char *s)
{
    sg_http_request req;
    return parse_n(s, strlen(s), 8192, &req);
}

static void assert_complete(const char *s) { assert_int_equal(parse(s), (int)strlen(s)); }

static bool starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

/* A parsed request kept alive with its buffer, plus the check's output. */
typedef struct hs {
    char *buf;
    sg_http_request req;
    sg_upgrade up;
    char token[SG_TOKEN_MAX + 1];
} hs;

static const char *const ORIGINS[] = {"https://app.example", "http://localhost:3000/"};

static const sg_upgrade_policy POLICY_ANY = {.path = "/ws"};
static const sg_upgrade_policy POLICY_ORIGINS = {
    .path = "/ws", .allowed_origins = ORIGINS, .n_allowed_origins = 2};

static hs *check_pol(const sg_upgrade_policy *pol, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Formats a request, parses it (it must be complete) and runs the checks. */
static hs *check_pol(const sg_upgrade_policy *pol, const char *fmt, ...)
{
    hs *h = calloc(1, sizeof *h);
    assert_non_null(h);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    assert_true(n > 0);
    h->buf = malloc((size_t)n + 1);
    assert_non_null(h->buf);
    va_start(ap, fmt);
    vsnprintf(h->buf, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = sg_http_parse_request(h->buf, (size_t)n, 65536, &h->req);
    assert_int_equal(rc, n);
    sg_upgrade_check(&h->req, pol, &h->up, h->token);
    return h;
}

#define check(...) check_pol(&POLICY_ANY, __VA_ARGS__)

static void hs_free(hs *h)
{
    free(h->buf);
    free(h);
}

static void assert_refused(hs *h, int status, const char *code)
{
    assert_int_equal(h->up.status, status);
    assert_string_equal(h->up.code, code);
    assert_non_null(h->up.message);
    hs_free(h);
}

static void assert_str(sg_str s, const char *want)
{
    assert_int_equal(s.n, strlen(want));
    assert_memory_equal(s.p, want, s.n);
}

/* ---- parser: shape of a complete request ------------------------------ */

static void test_parse_fields(void **state)
{
    (void)state;
    const char *s = "GET /ws?access_token=abc&x=1 HTTP/1.1\r\n"
                    "Host: gw.example\r\n"
                    "X-Empty:\r\n"
                    "X-Trim: \t a  b \t \r\n"
                    "\r\n";
    sg_http_request req;
    assert_int_equal(sg_http_parse_request(s, strlen(s), 8192, &req), (int)strlen(s));
    assert_str(req.method, "GET");
    assert_str(req.target, "/ws?access_token=abc&x=1");
    assert_str(req.path, "/ws");
    assert_str(req.query, "access_token=abc&x=1");
    assert_int_equal(req.minor_version, 1);
    assert_int_equal(req.nheaders, 3);
    assert_str(req.headers[0].name, "Host");
    assert_str(req.headers[0].value, "gw.example");
    assert_str(req.headers[1].name, "X-Empty");
    assert_str(req.headers[1].value, "");
    assert_str(req.headers[2].value, "a  b");

    const sg_str *v = sg_http_header_get(&req, "x-trim");
    assert_non_null(v);
    assert_str(*v, "a  b");
    assert_null(sg_http_header_get(&req, "X-Missing"));
}

static void test_parse_no_query_and_http10(void **state)
{
    (void)state;
    const char *s = "GET /ws HTTP/1.0\r\n\r\n";
    sg_http_request req;
    assert_int_equal(sg_http_parse_request(s, strlen(s), 8192, &req), (int)strlen(s));
    assert_str(req.path, "/ws");
    assert_int_equal(req.query.n, 0);
    assert_int_equal(req.minor_version, 0);
    assert_int_equal(req.nheaders, 0);

    /* An empty query after '?' */
    s = "GET /ws? HTTP/1.1\r\n\r\n";
    assert_int_equal(sg_http_parse_request(s, strlen(s), 8192, &req), (int)strlen(s));
    assert_str(req.path, "/ws");
    assert_int_equal(req.query.n, 0);
}

/* picohttpparser style: every proper prefix is incomplete, the whole is
 * complete, and bytes after the head (pipelined data) are not counted. */
static void test_parse_every_prefix(void **state)
{
    (void)state;
    const char *s = GOOD;
    size_t n = strlen(s);
    sg_http_request req;
    for (size_t i = 0; i < n; i++)
        assert_int_equal(parse_n(s, i, 8192, &req), SG_HTTP_INCOMPLETE);
    assert_int_equal(parse_n(s, n, 8192, &req), (int)n);
    assert_int_equal(req.nheaders, 5);

    char more[512];
    snprintf(more, sizeof more, "%s\x81\x85garbage-after-head", s);
    assert_int_equal(parse_n(more, strlen(more), 8192, &req), (int)n);
}

/* Growing buffer, one call per byte, as a connection would drive it. */
static void test_parse_repeated_calls_same_buffer(void **state)
{
    (void)state;
    const char *s = GOOD;
    size_t n = strlen(s);
    char *buf = malloc(n);
    assert_non_null(buf);
    sg_http_request req;
    int rc = SG_HTTP_INCOMPLETE;
    for (size_t i = 1; i <= n; i++) {
        buf[i - 1] = s[i - 1];
        rc = sg_http_parse_request(buf, i, 8192, &req);
        if (i < n)
            assert_int_equal(rc, SG_HTTP_INCOMPLETE);
    }
    assert_int_equal(rc, (int)n);
    free(buf);
    assert_int_equal(sg_http_parse_request(NULL, 0, 8192, &req), SG_HTTP_INCOMPLETE);
}

static void test_parse_too_large(void **state)
{
    (void)state;
    const char *s = GOOD;
    size_t n = strlen(s);
    sg_http_request req;
    /* The head fits exactly. */
    assert_int_equal(parse_n(s, n, n, &req), (int)n);
    /* One byte over: refused, even though the blank line is in the buffer. */
    assert_int_equal(parse_n(s, n, n - 1, &req), SG_HTTP_TOO_LARGE);
    /* Incomplete: waiting while len <= max_len, refused once len > max_len. */
    assert_int_equal(parse_n(s, 40, 40, &req), SG_HTTP_INCOMPLETE);
    assert_int_equal(parse_n(s, 41, 40, &req), SG_HTTP_TOO_LARGE);
    /* A cap that falls between CR and LF of the last line. */
    assert_int_equal(parse_n(s, n - 1, n - 1, &req), SG_HTTP_INCOMPLETE);

    /* A long header line that never ends. */
    size_t big = 100000;
    char *junk = malloc(big);
    assert_non_null(junk);
    memcpy(junk, "GET /ws HTTP/1.1\r\nX: ", 21);
    memset(junk + 21, 'a', big - 21);
    assert_int_equal(sg_http_parse_request(junk, big, 8192, &req), SG_HTTP_TOO_LARGE);
    assert_int_equal(sg_http_parse_request(junk, 8192, 8192, &req), SG_HTTP_INCOMPLETE);
    free(junk);

    /* An error inside the cap is reported as such; nothing past it is read. */
    assert_int_equal(parse_n("GE\nT /ws HTTP/1.1\r\n\r\n", 20, 5, &req), SG_HTTP_MALFORMED);
    assert_int_equal(parse_n("GET /w\ns HTTP/1.1\r\n\r\n", 20, 5, &req), SG_HTTP_TOO_LARGE);
}

static void build_headers(char *buf, size_t cap, size_t count, bool finish)
{
    size_t off = (size_t)snprintf(buf, cap, "GET /ws HTTP/1.1\r\n");
    for (size_t i = 0; i < count; i++)
        off += (size_t)snprintf(buf + off, cap - off, "X-H%zu: v\r\n", i);
    if (finish)
        snprintf(buf + off, cap - off, "\r\n");
}

static void test_parse_too_many_headers(void **state)
{
    (void)state;
    char buf[4096];
    sg_http_request req;
    build_headers(buf, sizeof buf, SG_HTTP_MAX_HEADERS, true);
    assert_int_equal(parse_n(buf, strlen(buf), 8192, &req), (int)strlen(buf));
    assert_int_equal(req.nheaders, SG_HTTP_MAX_HEADERS);

    build_headers(buf, sizeof buf, SG_HTTP_MAX_HEADERS + 1, true);
    assert_int_equal(parse_n(buf, strlen(buf), 8192, &req), SG_HTTP_TOO_LARGE);

    /* Refused as soon as the first byte of the 49th header arrives. */
    build_headers(buf, sizeof buf, SG_HTTP_MAX_HEADERS, false);
    size_t n = strlen(buf);
    assert_int_equal(parse_n(buf, n, 8192, &req), SG_HTTP_INCOMPLETE);
    buf[n] = 'X';
    assert_int_equal(parse_n(buf, n + 1, 8192, &req), SG_HTTP_TOO_LARGE);
    /* ... while a CR there may still be the blank line. */
    buf[n] = '\r';
    assert_int_equal(parse_n(buf, n + 1, 8192, &req), SG_HTTP_INCOMPLETE);
}

/* ---- parser: hostile syntax ------------------------------------------ */

static void test_parse_bare_lf(void **state)
{
    (void)state;
    assert_int_equal(parse("GET /ws HTTP/1.1\n\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws HTTP/1.1\r\nHost: a\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws HTTP/1.1\r\nHost: a\r\n\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws HTTP/1.1\r\nHost: a\nb\r\n\r\n"), SG_HTTP_MALFORMED);
    /* Refused before the line ends. */
    assert_int_equal(parse("GET /w\n"), SG_HTTP_MALFORMED);
}

static void test_parse_bare_cr(void **state)
{
    (void)state;
    assert_int_equal(parse("GET /ws HTTP/1.1\rX\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws HTTP/1.1\r\nHost: a\rb\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws HTTP/1.1\r\n\rX"), SG_HTTP_MALFORMED);
    /* A CR as the last byte is just incomplete. */
    assert_int_equal(parse("GET /ws HTTP/1.1\r"), SG_HTTP_INCOMPLETE);
}

static void test_parse_obs_fold(void **state)
{
    (void)state;
    assert_int_equal(parse("GET /ws HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws HTTP/1.1\r\nX-A: a\r\n\tb\r\n\r\n"), SG_HTTP_MALFORMED);
    /* A first header line starting with whitespace. */
    assert_int_equal(parse("GET /ws HTTP/1.1\r\n Host: a\r\n\r\n"), SG_HTTP_MALFORMED);
    /* Refused at the first byte of the continuation line. */
    assert_int_equal(parse("GET /ws HTTP/1.1\r\nX-A: a\r\n "), SG_HTTP_MALFORMED);
}

static void test_parse_nul_and_controls(void **state)
{
    (void)state;
    static const char nul_value[] = "GET /ws HTTP/1.1\r\nHost: a\0b\r\n\r\n";
    static const char nul_target[] = "GET /w\0s HTTP/1.1\r\n\r\n";
    static const char nul_early[] = "GET /ws HTTP/1.1\r\nHo\0";
    sg_http_request req;
    assert_int_equal(parse_n(nul_value, sizeof nul_value - 1, 8192, &req), SG_HTTP_MALFORMED);
    assert_int_equal(parse_n(nul_target, sizeof nul_target - 1, 8192, &req), SG_HTTP_MALFORMED);
    assert_int_equal(parse_n(nul_early, sizeof nul_early - 1, 8192, &req), SG_HTTP_MALFORMED);

    assert_int_equal(parse("GET /ws HTTP/1.1\r\nX: a\x01\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws HTTP/1.1\r\nX: a\x7f\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws HTTP/1.1\r\nX: a\x1b[31m\r\n\r\n"), SG_HTTP_MALFORMED);
    /* HTAB and obs-text are legal inside a value ... */
    assert_complete("GET /ws HTTP/1.1\r\nX: a\tb\xc3\xa9\r\n\r\n");
    /* ... but not in the request line. */
    assert_int_equal(parse("GET /w\xc3\xa9 HTTP/1.1\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET\t/ws HTTP/1.1\r\n\r\n"), SG_HTTP_MALFORMED);
}

static void test_parse_bad_request_line(void **state)
{
    (void)state;
    assert_int_equal(parse("G(T /ws HTTP/1.1\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GE\"T /ws HTTP/1.1\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse(" GET /ws HTTP/1.1\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET  /ws HTTP/1.1\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws  HTTP/1.1\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws HTTP/1.1 \r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("/ws HTTP/1.1\r\n\r\n"), SG_HTTP_MALFORMED);
    /* A leading empty line is not skipped: the request must come first. */
    assert_int_equal(parse("\r\nGET /ws HTTP/1.1\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("\r\n\r\n"), SG_HTTP_MALFORMED);
    /* Any method token parses; only sg_upgrade_check insists on GET. */
    assert_complete("M-SEARCH * HTTP/1.1\r\n\r\n");
}

static void test_parse_version(void **state)
{
    (void)state;
    assert_int_equal(parse("GET /ws HTTP/2.0\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws HTTP/1.2\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws HTTP/0.9\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws http/1.1\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws HTTP/1.10\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws HTTP/1.\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws HTTP/11\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws FOO\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_complete("GET /ws HTTP/1.1\r\n\r\n");
    assert_complete("GET /ws HTTP/1.0\r\n\r\n");
}

static void test_parse_bad_header_lines(void **state)
{
    (void)state;
    assert_int_equal(parse("GET /ws HTTP/1.1\r\nHost\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws HTTP/1.1\r\nHost gw\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws HTTP/1.1\r\n: value\r\n\r\n"), SG_HTTP_MALFORMED);
    /* Whitespace between name and colon (RFC 9112 §5.1). */
    assert_int_equal(parse("GET /ws HTTP/1.1\r\nHost : gw\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws HTTP/1.1\r\nHost\t: gw\r\n\r\n"), SG_HTTP_MALFORMED);
    /* Names must be tokens. */
    assert_int_equal(parse("GET /ws HTTP/1.1\r\nHo(st: gw\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws HTTP/1.1\r\nHo/st: gw\r\n\r\n"), SG_HTTP_MALFORMED);
    assert_int_equal(parse("GET /ws HTTP/1.1\r\nH\xc3\xa9: gw\r\n\r\n"), SG_HTTP_MALFORMED);
    /* Colons inside the value are fine. */
    assert_complete("GET /ws HTTP/1.1\r\nX-T!#$%&'*+-.^_`|~9: a:b::\r\n\r\n");
}

/* ---- sg_http_scan_head: a head arriving in pieces (issue 12, finding 11) -- */

/* What a connection does: the bytes arrive `step` at a time, the scanner
 * sees each prefix (copied into an exactly-sized heap block, so ASan
 * catches a read past what has arrived) and the head is parsed once, when
 * complete. Returns the verdict; *examined gets the bytes the scanner could
 * have looked at (each call starts at *scanned). */
static int drive(const char *s, size_t n, size_t step, size_t max_len, size_t *examined)
{
    size_t scanned = 0, total = 0;
    int rc = SG_HTTP_INCOMPLETE;
    for (size_t len = step < n ? step : n; rc == SG_HTTP_INCOMPLETE; len = len + step < n ? len + step : n) {
        char *copy = malloc(len ? len : 1);
        assert_non_null(copy);
        memcpy(copy, s, len);
        size_t before = scanned;
        rc = sg_http_scan_head(copy, len, max_len, &scanned);
        assert_true(scanned >= before);
        total += len - before;
        if (rc > 0) {
            sg_http_request req;
            rc = sg_http_parse_request(copy, (size_t)rc, max_len, &req);
        }
        free(copy);
        if (len == n)
            break;
    }
    if (examined)
        *examined = total;
    return rc;
}

/* Byte by byte, in 7-byte pieces and in one piece, the verdict is the one
 * parsing the whole would give. */
static void test_scan_same_verdict_as_parse(void **state)
{
    (void)state;
    char many[4096];
    build_headers(many, sizeof many, SG_HTTP_MAX_HEADERS + 1, true);
    const char *const cases[] = {
        GOOD,
        "GET /ws HTTP/1.1\r\n\r\n",
        "GET /ws HTTP/1.1\r\nX: a\tb\xc3\xa9\r\n\r\n",
        "GET /ws HTTP/1.1\n\n",
        "GET /ws HTTP/1.1\r\nHost: a\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: a\r\n\n",
        "GET /ws HTTP/1.1\rX\r\n\r\n",
        "GET /ws HTTP/1.1\r\n\rX",
        "GET /ws HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n",
        "GET /ws HTTP/1.1\r\n Host: a\r\n\r\n",
        "GET /ws HTTP/1.1\r\nX: a\x01\r\n\r\n",
        "GET /ws HTTP/1.1\r\nX: a\x7f\r\n\r\n",
        "G(T /ws HTTP/1.1\r\n\r\n",
        " GET /ws HTTP/1.1\r\n\r\n",
        "\r\nGET /ws HTTP/1.1\r\n\r\n",
        "\r\n\r\n",
        "GET /ws HTTP/2.0\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost : gw\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHo(st: gw\r\n\r\n",
        many,
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = strlen(cases[i]);
        sg_http_request req;
        int want = parse_n(cases[i], n, 8192, &req);
        static const size_t steps[] = {1, 7, 100000};
        for (size_t k = 0; k < sizeof steps / sizeof steps[0]; k++) {
            int got = drive(cases[i], n, steps[k], 8192, NULL);
            if (got != want)
                fail_msg("case %zu in pieces of %zu: %d, parsing the whole: %d", i, steps[k], got, want);
        }
    }
    /* With a NUL, which strlen cannot carry. */
    static const char nul[] = "GET /ws HTTP/1.1\r\nHost: a\0b\r\n\r\n";
    assert_int_equal(drive(nul, sizeof nul - 1, 1, 8192, NULL), SG_HTTP_MALFORMED);
}

/* The finding: every read re-parsed the head from its start, so an 8 KiB
 * head sent one byte per segment cost ~n^2/2 = 33.5M byte looks. Each call
 * now starts where the last one stopped (at most a trailing CR is looked at
 * again), so the total stays within the head's length plus one per call. */
static void test_scan_examines_each_byte_once(void **state)
{
    (void)state;
    size_t n = 8192;
    char *head = malloc(n);
    assert_non_null(head);
    const char *start = "GET /ws HTTP/1.1\r\nHost: gw.example\r\nX-Pad: ";
    size_t sl = strlen(start);
    memcpy(head, start, sl);
    for (size_t i = sl; i < n - 4; i++)
        head[i] = (i % 256 == 0) ? '\r' : (i % 256 == 1) ? '\n' : (i % 256 == 2) ? 'X' : (i % 256 == 3) ? ':' : 'a';
    memcpy(head + n - 4, "\r\n\r\n", 4);
    size_t examined = 0;
    assert_int_equal(drive(head, n, 1, 8192, &examined), (int)n);
    if (examined > 2 * n)
        fail_msg("%zu bytes examined for an %zu-byte head sent byte by byte", examined, n);
    /* In one piece, every byte once. */
    assert_int_equal(drive(head, n, n, 8192, &examined), (int)n);
    assert_int_equal(examined, n);
    free(head);
}

/* Garbage is refused at the byte it arrives with, not when the head ends. */
static void test_scan_refuses_early(void **state)
{
    (void)state;
    static const struct { const char *s; size_t n; } bad[] = {
        {"GET /w\n", 7}, {"GET /ws HTTP/1.1\r\nHo\0", 21}, {"GET /ws HTTP/1.1\r\nX: \x1b", 22},
        {"GET /ws HTTP/1.1\rX", 18}, {"GET /ws HTTP/1.1\r\nX-A: a\r\n ", 28}, {"\r\n", 2},
        {"\x16\x03\x01\x02\x00", 5}, /* a TLS ClientHello on the plain port */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t scanned = 0;
        char *copy = malloc(bad[i].n);
        assert_non_null(copy);
        memcpy(copy, bad[i].s, bad[i].n);
        int rc = sg_http_scan_head(copy, bad[i].n, 8192, &scanned);
        free(copy);
        if (rc != SG_HTTP_MALFORMED)
            fail_msg("case %zu: %d, want MALFORMED", i, rc);
    }
    /* A CR as the last byte so far is just incomplete, and is looked at again. */
    size_t scanned = 0;
    assert_int_equal(sg_http_scan_head("GET /ws HTTP/1.1\r", 17, 8192, &scanned), SG_HTTP_INCOMPLETE);
    assert_int_equal(scanned, 16);
    assert_int_equal(sg_http_scan_head("GET /ws HTTP/1.1\r\n\r", 19, 8192, &scanned), SG_HTTP_INCOMPLETE);
    assert_int_equal(scanned, 18);
    assert_int_equal(sg_http_scan_head("GET /ws HTTP/1.1\r\n\r\n", 20, 8192, &scanned), 20);
    scanned = 0;
    assert_int_equal(sg_http_scan_head(NULL, 0, 8192, &scanned), SG_HTTP_INCOMPLETE);
    assert_int_equal(scanned, 0);
}

/* The size cap means what it means for sg_http_parse_request; bytes after
 * the head (pipelined data) are not the head's. */
static void test_scan_cap_and_pipelined(void **state)
{
    (void)state;
    const char *s = GOOD;
    size_t n = strlen(s);
    size_t scanned = 0;
    assert_int_equal(sg_http_scan_head(s, n, n, &scanned), (int)n);
    scanned = 0;
    assert_int_equal(sg_http_scan_head(s, n, n - 1, &scanned), SG_HTTP_TOO_LARGE);
    scanned = 0;
    assert_int_equal(sg_http_scan_head(s, 40, 40, &scanned), SG_HTTP_INCOMPLETE);
    assert_int_equal(sg_http_scan_head(s, 41, 40, &scanned), SG_HTTP_TOO_LARGE);
    scanned = 0;
    assert_int_equal(sg_http_scan_head(s, n - 1, n - 1, &scanned), SG_HTTP_INCOMPLETE);

    char more[512];
    snprintf(more, sizeof more, "%s\x81\x85garbage-after-head", s);
    scanned = 0;
    assert_int_equal(sg_http_scan_head(more, strlen(more), 8192, &scanned), (int)n);
}

/* ---- header helpers -------------------------------------------------- */

static void test_header_has_token(void **state)
{
    (void)state;
    hs *h = check("GET /ws HTTP/1.1\r\n"
                  "Connection: keep-alive\r\n"
                  "connection: ,, Upgrade ,\r\n"
                  "X-A: websocketx, xwebsocket\r\n"
                  "X-B: \"websocket\"\r\n"
                  "\r\n");
    assert_true(sg_http_header_has_token(&h->req, "Connection", "upgrade"));
    assert_true(sg_http_header_has_token(&h->req, "CONNECTION", "keep-alive"));
    assert_false(sg_http_header_has_token(&h->req, "Connection", "close"));
    assert_false(sg_http_header_has_token(&h->req, "X-A", "websocket"));
    assert_false(sg_http_header_has_token(&h->req, "X-B", "websocket"));
    assert_false(sg_http_header_has_token(&h->req, "X-None", "websocket"));
    hs_free(h);
}

/* ---- sg_upgrade_check: each check, in order --------------------------- */

static void test_check_ok(void **state)
{
    (void)state;
    hs *h = check("%s", GOOD);
    assert_int_equal(h->up.status, 0);
    assert_str(h->up.key, KEY);
    assert_false(h->up.select_protocol);
    assert_int_equal(h->up.token_source, SG_TOKEN_NONE);
    assert_false(h->up.token_malformed);
    assert_int_equal(h->up.token_len, 0);
    assert_string_equal(h->token, "");
    assert_int_equal(h->up.origin.n, 0);
    assert_int_equal(h->up.traceparent.n, 0);
    hs_free(h);

    /* Case-insensitive names and tokens, lists, a query on the path. */
    h = check("GET /ws?room=a HTTP/1.1\r\n"
              "host: gw\r\n"
              "UPGRADE: WebSocket\r\n"
              "connection: keep-alive, upgrade\r\n"
              "sec-websocket-key: " KEY "\r\n"
              "sec-websocket-version: 13\r\n"
              "\r\n");
    assert_int_equal(h->up.status, 0);
    hs_free(h);
}

static void test_check_method(void **state)
{
    (void)state;
    assert_refused(check("POST /ws HTTP/1.1\r\n" BASE_HEADERS "\r\n"), 400, "bad_request");
    assert_refused(check("get /ws HTTP/1.1\r\n" BASE_HEADERS "\r\n"), 400, "bad_request");
    /* Method comes before path. */
    assert_refused(check("HEAD /nope HTTP/1.1\r\n\r\n"), 400, "bad_request");
}

static void test_check_host(void **state)
{
    (void)state;
    assert_refused(check("GET /ws HTTP/1.1\r\n"
                         "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                         "Sec-WebSocket-Key: " KEY "\r\nSec-WebSocket-Version: 13\r\n\r\n"),
                   400, "bad_request");
    assert_refused(check("GET /ws HTTP/1.1\r\nHost: evil\r\n" BASE_HEADERS "\r\n"), 400, "bad_request");
}

static void test_check_path(void **state)
{
    (void)state;
    hs *h = check("GET /other HTTP/1.1\r\n" BASE_HEADERS "\r\n");
    assert_string_equal(h->up.message, "no WebSocket endpoint at this path");
    assert_refused(h, 404, "not_found");
    assert_refused(check("GET /ws/ HTTP/1.1\r\n" BASE_HEADERS "\r\n"), 404, "not_found");
    assert_refused(check("GET /WS HTTP/1.1\r\n" BASE_HEADERS "\r\n"), 404, "not_found");
    assert_refused(check("GET /w HTTP/1.1\r\n" BASE_HEADERS "\r\n"), 404, "not_found");
    assert_refused(check("GET * HTTP/1.1\r\n" BASE_HEADERS "\r\n"), 404, "not_found");
    /* Path before Upgrade. */
    assert_refused(check("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 404, "not_found");
}

static void test_check_upgrade_connection(void **state)
{
    (void)state;
    hs *h = check("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: " KEY "\r\nSec-WebSocket-Version: 13\r\n\r\n");
    assert_string_equal(h->up.message, "missing Upgrade: websocket header");
    assert_refused(h, 426, "upgrade_required");

    assert_refused(check("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
                         "Sec-WebSocket-Key: " KEY "\r\nSec-WebSocket-Version: 13\r\n\r\n"),
                   426, "upgrade_required");

    h = check("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n"
              "Sec-WebSocket-Key: " KEY "\r\nSec-WebSocket-Version: 13\r\n\r\n");
    assert_string_equal(h->up.message, "missing Connection: Upgrade header");
    assert_refused(h, 426, "upgrade_required");

    /* Upgrade split over two lines is still found. */
    h = check("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: foo/2\r\nUpgrade: websocket\r\n"
              "Connection: Upgrade\r\nSec-WebSocket-Key: " KEY "\r\nSec-WebSocket-Version: 13\r\n\r\n");
    assert_int_equal(h->up.status, 0);
    hs_free(h);

    /* Upgrade comes before the key (both missing: 426 wins). */
    assert_refused(check("GET /ws HTTP/1.1\r\nHost: a\r\n\r\n"), 426, "upgrade_required");

    /* RFC 9110 §7.8: Upgrade in an HTTP/1.0 request is ignored. */
    assert_refused(check("GET /ws HTTP/1.0\r\n" BASE_HEADERS "\r\n"), 426, "upgrade_required");
}

static void test_check_version(void **state)
{
    (void)state;
    const char *head = "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Key: " KEY "\r\n";
    hs *h = check("%s\r\n", head);
    assert_string_equal(h->up.message, "missing Sec-WebSocket-Version header");
    assert_refused(h, 426, "upgrade_required");
    h = check("%sSec-WebSocket-Version: 8\r\n\r\n", head);
    assert_string_equal(h->up.message, "Sec-WebSocket-Version must be 13");
    assert_refused(h, 426, "upgrade_required");
    assert_refused(check("%sSec-WebSocket-Version: 13, 8\r\n\r\n", head), 426, "upgrade_required");
    assert_refused(check("%sSec-WebSocket-Version: 013\r\n\r\n", head), 426, "upgrade_required");
    assert_refused(check("%sSec-WebSocket-Version: 13\r\nSec-WebSocket-Version: 13\r\n\r\n", head),
                   426, "upgrade_required");
    h = check("%sSec-WebSocket-Version:  13 \r\n\r\n", head);
    assert_int_equal(h->up.status, 0);
    hs_free(h);
}

static void test_check_key(void **state)
{
    (void)state;
    const char *head = "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Version: 13\r\n";
    hs *h = check("%s\r\n", head);
    assert_string_equal(h->up.message, "missing Sec-WebSocket-Key header");
    assert_refused(h, 400, "bad_request");
    h = check("%sSec-WebSocket-Key: " KEY "\r\nSec-WebSocket-Key: " KEY "\r\n\r\n", head);
    assert_string_equal(h->up.message, "repeated Sec-WebSocket-Key header");
    assert_refused(h, 400, "bad_request");

    static const char *const bad[] = {
        "",
        "dGhlIHNhbXBsZSBub25jZQ=",     /* 23 chars */
        "dGhlIHNhbXBsZSBub25jZQ===",   /* 25 chars */
        "dGhlIHNhbXBsZSBub25jZQAA",    /* 18 bytes, no padding */
        "dGhlIHNhbXBsZSBub25j",        /* 15 bytes */
        "dGhlIHNhbXBsZSBub25jZR==",    /* non-zero padding bits */
        "dGhlIHNhbXBsZSBub25jZ-==",    /* base64url alphabet */
        "dGhlIHNhbXBsZSBub2 jZQ==",    /* space inside */
        "dGhlIHNhbXBsZSBub25jZQ==dGhlIHNhbXBsZSBub25jZQ==",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        h = check("%sSec-WebSocket-Key: %s\r\n\r\n", head, bad[i]);
        assert_string_equal(h->up.message, "Sec-WebSocket-Key is not base64 of 16 bytes");
        assert_refused(h, 400, "bad_request");
    }
    static const char *const good[] = {"AAAAAAAAAAAAAAAAAAAAAA==", "/////////////////////w==",
                                       "x3JJHMbDL1EzLkh9GBhXDw=="};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        h = check("%sSec-WebSocket-Key: %s\r\n\r\n", head, good[i]);
        assert_int_equal(h->up.status, 0);
        assert_str(h->up.key, good[i]);
        hs_free(h);
    }
}

static void test_check_subprotocols(void **state)
{
    (void)state;
    const char *head = "GET /ws HTTP/1.1\r\n" BASE_HEADERS;

    hs *h = check("%sSec-WebSocket-Protocol: chat, superchat\r\n\r\n", head);
    assert_string_equal(h->up.message, "Sec-WebSocket-Protocol offer lacks signal.v1");
    assert_refused(h, 400, "bad_request");
    /* A bearer entry counts as an offer. */
    assert_refused(check("%sSec-WebSocket-Protocol: bearer.abc\r\n\r\n", head), 400, "bad_request");
    /* Subprotocol names are case-sensitive. */
    assert_refused(check("%sSec-WebSocket-Protocol: Signal.V1\r\n\r\n", head), 400, "bad_request");

    h = check("%sSec-WebSocket-Protocol: signal.v1\r\n\r\n", head);
    assert_int_equal(h->up.status, 0);
    assert_true(h->up.select_protocol);
    hs_free(h);

    /* Several lines: entries of every line are collected. */
    h = check("%sSec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol:  bearer.abc ,signal.v1 \r\n\r\n",
              head);
    assert_int_equal(h->up.status, 0);
    assert_true(h->up.select_protocol);
    assert_int_equal(h->up.token_source, SG_TOKEN_PROTOCOL);
    assert_string_equal(h->token, "abc");
    hs_free(h);

    /* An empty header offers nothing. */
    h = check("%sSec-WebSocket-Protocol: \r\nSec-WebSocket-Protocol: , ,\r\n\r\n", head);
    assert_int_equal(h->up.status, 0);
    assert_false(h->up.select_protocol);
    hs_free(h);

    /* Subprotocol comes after the key. */
    h = check("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: nope\r\n"
              "Sec-WebSocket-Protocol: chat\r\n\r\n");
    assert_string_equal(h->up.message, "Sec-WebSocket-Key is not base64 of 16 bytes");
    assert_refused(h, 400, "bad_request");
}

static void test_check_origin(void **state)
{
    (void)state;
    const char *head = "GET /ws HTTP/1.1\r\n" BASE_HEADERS;

    hs *h = check_pol(&POLICY_ORIGINS, "%sOrigin: https://evil.example\r\n\r\n", head);
    assert_string_equal(h->up.message, "Origin not allowed");
    assert_str(h->up.origin, "https://evil.example");
    assert_refused(h, 403, "origin_not_allowed");
    assert_refused(check_pol(&POLICY_ORIGINS, "%sOrigin: https://app.example.evil\r\n\r\n", head), 403,
                   "origin_not_allowed");
    assert_refused(check_pol(&POLICY_ORIGINS, "%sOrigin: null\r\n\r\n", head), 403, "origin_not_allowed");
    assert_refused(check_pol(&POLICY_ORIGINS, "%sOrigin: \r\n\r\n", head), 403, "origin_not_allowed");
    assert_refused(check_pol(&POLICY_ORIGINS, "%sOrigin: http://app.example\r\n\r\n", head), 403,
                   "origin_not_allowed");
    /* A second Origin line cannot sneak past. */
    assert_refused(check_pol(&POLICY_ORIGINS,
                             "%sOrigin: https://app.example\r\nOrigin: https://evil.example\r\n\r\n", head),
                   403, "origin_not_allowed");

    static const char *const ok[] = {"https://app.example", "https://app.example/", "HTTPS://APP.example",
                                     "http://localhost:3000", "http://localhost:3000/"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        h = check_pol(&POLICY_ORIGINS, "%sOrigin: %s\r\n\r\n", head, ok[i]);
        assert_int_equal(h->up.status, 0);
        assert_str(h->up.origin, ok[i]);
        hs_free(h);
    }
    /* No Origin: not a browser, passes. */
    h = check_pol(&POLICY_ORIGINS, "%s\r\n", head);
    assert_int_equal(h->up.status, 0);
    hs_free(h);
    /* No allow-list: any Origin passes. */
    h = check("%sOrigin: https://evil.example\r\n\r\n", head);
    assert_int_equal(h->up.status, 0);
    hs_free(h);
    /* An empty (non-NULL) allow-list refuses every Origin. */
    const sg_upgrade_policy none = {.path = "/ws", .allowed_origins = ORIGINS, .n_allowed_origins = 0};
    assert_refused(check_pol(&none, "%sOrigin: https://app.example\r\n\r\n", head), 403, "origin_not_allowed");

    /* Origin is the last check: a bad subprotocol offer is reported first. */
    assert_refused(check_pol(&POLICY_ORIGINS, "%sOrigin: https://evil\r\nSec-WebSocket-Protocol: x\r\n\r\n", head),
                   400, "bad_request");
}

static void test_check_context_headers(void **state)
{
    (void)state;
    hs *h = check("GET /ws HTTP/1.1\r\n" BASE_HEADERS
                  "Origin: https://app.example\r\n"
                  "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
                  "\r\n");
    assert_int_equal(h->up.status, 0);
    assert_str(h->up.origin, "https://app.example");
    assert_str(h->up.traceparent, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    hs_free(h);

    /* Filled even when the handshake is refused, for the log line. */
    h = check("GET /nope HTTP/1.1\r\nHost: a\r\ntraceparent: 00-ab-cd-01\r\n\r\n");
    assert_int_equal(h->up.status, 404);
    assert_str(h->up.traceparent, "00-ab-cd-01");
    hs_free(h);
}

/* ---- token selection ------------------------------------------------- */

#define OK_HEAD "GET /ws%s HTTP/1.1\r\n" BASE_HEADERS

static void assert_token(hs *h, sg_token_source src, const char *want)
{
    assert_int_equal(h->up.status, 0);
    assert_int_equal(h->up.token_source, src);
    assert_false(h->up.token_malformed);
    assert_null(h->up.message);
    assert_int_equal(h->up.token_len, strlen(want));
    assert_string_equal(h->token, want);
    hs_free(h);
}

static void assert_malformed(hs *h, sg_token_source src)
{
    assert_int_equal(h->up.status, 0);
    assert_int_equal(h->up.token_source, src);
    assert_true(h->up.token_malformed);
    assert_non_null(h->up.message);
    assert_int_equal(h->up.token_len, 0);
    assert_string_equal(h->token, "");
    hs_free(h);
}

static void test_token_header(void **state)
{
    (void)state;
    assert_token(check(OK_HEAD "Authorization: Bearer a.b.c\r\n\r\n", ""), SG_TOKEN_HEADER, "a.b.c");
    assert_token(check(OK_HEAD "authorization: bearer   a-b_c~+/==\r\n\r\n", ""), SG_TOKEN_HEADER,
                 "a-b_c~+/==");
    assert_token(check(OK_HEAD "Authorization: BEARER x \r\n\r\n", ""), SG_TOKEN_HEADER, "x");

    assert_malformed(check(OK_HEAD "Authorization: Basic dXNlcjpwYXNz\r\n\r\n", ""), SG_TOKEN_HEADER);
    assert_malformed(check(OK_HEAD "Authorization: Bearer \r\n\r\n", ""), SG_TOKEN_HEADER);
    assert_malformed(check(OK_HEAD "Authorization: Bearer\r\n\r\n", ""), SG_TOKEN_HEADER);
    assert_malformed(check(OK_HEAD "Authorization: \r\n\r\n", ""), SG_TOKEN_HEADER);
    assert_malformed(check(OK_HEAD "Authorization: Bearerx abc\r\n\r\n", ""), SG_TOKEN_HEADER);
    assert_malformed(check(OK_HEAD "Authorization: Bearer\tabc\r\n\r\n", ""), SG_TOKEN_HEADER);
    assert_malformed(check(OK_HEAD "Authorization: Bearer a b\r\n\r\n", ""), SG_TOKEN_HEADER);
    assert_malformed(check(OK_HEAD "Authorization: Bearer a=b\r\n\r\n", ""), SG_TOKEN_HEADER);
    assert_malformed(check(OK_HEAD "Authorization: Bearer ===\r\n\r\n", ""), SG_TOKEN_HEADER);
    assert_malformed(check(OK_HEAD "Authorization: Bearer \"abc\"\r\n\r\n", ""), SG_TOKEN_HEADER);
    assert_malformed(check(OK_HEAD "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n", ""),
                     SG_TOKEN_HEADER);
}

static void test_token_precedence(void **state)
{
    (void)state;
    const char *proto = "Sec-WebSocket-Protocol: signal.v1, bearer.PROTO\r\n";
    /* All three valid: the header decides. */
    assert_token(check(OK_HEAD "Authorization: Bearer HDR\r\n%s\r\n", "?access_token=QRY", proto),
                 SG_TOKEN_HEADER, "HDR");
    /* A malformed header still decides. */
    assert_malformed(check(OK_HEAD "Authorization: Basic x\r\n%s\r\n", "?access_token=QRY", proto),
                     SG_TOKEN_HEADER);
    /* No header: the protocol entry beats the query. */
    assert_token(check(OK_HEAD "%s\r\n", "?access_token=QRY", proto), SG_TOKEN_PROTOCOL, "PROTO");
    /* ... even when it is malformed. */
    assert_malformed(check(OK_HEAD "Sec-WebSocket-Protocol: signal.v1, bearer.\r\n\r\n", "?access_token=QRY"),
                     SG_TOKEN_PROTOCOL);
    assert_malformed(check(OK_HEAD "Sec-WebSocket-Protocol: signal.v1, bearer.a=b\r\n\r\n", "?access_token=QRY"),
                     SG_TOKEN_PROTOCOL);
    /* The first bearer entry is the one. */
    assert_token(check(OK_HEAD "Sec-WebSocket-Protocol: bearer.ONE\r\n"
                               "Sec-WebSocket-Protocol: bearer.TWO, signal.v1\r\n\r\n", ""),
                 SG_TOKEN_PROTOCOL, "ONE");
    /* The "bearer." prefix is case-sensitive like every subprotocol name. */
    assert_token(check(OK_HEAD "Sec-WebSocket-Protocol: signal.v1\r\nSec-WebSocket-Protocol: Bearer.X\r\n\r\n",
                       "?access_token=QRY"),
                 SG_TOKEN_QUERY, "QRY");
    /* Only the query. */
    assert_token(check(OK_HEAD "\r\n", "?access_token=QRY"), SG_TOKEN_QUERY, "QRY");

    /* Nothing at all. */
    hs *h = check(OK_HEAD "\r\n", "?x=1");
    assert_int_equal(h->up.status, 0);
    assert_int_equal(h->up.token_source, SG_TOKEN_NONE);
    assert_false(h->up.token_malformed);
    assert_string_equal(h->up.message, "missing bearer token");
    hs_free(h);
}

static void test_token_query_decoding(void **state)
{
    (void)state;
    assert_token(check(OK_HEAD "\r\n", "?access_token=a%2Eb%2fc%2B"), SG_TOKEN_QUERY, "a.b/c+");
    /* '+' is not a space here. */
    assert_token(check(OK_HEAD "\r\n", "?access_token=a+b"), SG_TOKEN_QUERY, "a+b");
    assert_token(check(OK_HEAD "\r\n", "?room=x&access_token=tok&y=access_token"), SG_TOKEN_QUERY, "tok");
    assert_token(check(OK_HEAD "\r\n", "?access_token=tok%3D%3D"), SG_TOKEN_QUERY, "tok==");
    assert_token(check(OK_HEAD "\r\n", "?&&access_token=t&"), SG_TOKEN_QUERY, "t");

    /* Keys are matched exactly. */
    hs *h = check(OK_HEAD "\r\n", "?xaccess_token=1&access_tokenx=2&ACCESS_TOKEN=3");
    assert_int_equal(h->up.token_source, SG_TOKEN_NONE);
    hs_free(h);

    assert_malformed(check(OK_HEAD "\r\n", "?access_token=a%zzb"), SG_TOKEN_QUERY);
    assert_malformed(check(OK_HEAD "\r\n", "?access_token=a%4"), SG_TOKEN_QUERY);
    assert_malformed(check(OK_HEAD "\r\n", "?access_token=a%"), SG_TOKEN_QUERY);
    assert_malformed(check(OK_HEAD "\r\n", "?access_token=%00abc"), SG_TOKEN_QUERY);
    assert_malformed(check(OK_HEAD "\r\n", "?access_token=a%20b"), SG_TOKEN_QUERY);
    assert_malformed(check(OK_HEAD "\r\n", "?access_token=a%0d%0aX-Evil:%201"), SG_TOKEN_QUERY);
    assert_malformed(check(OK_HEAD "\r\n", "?access_token=a=b"), SG_TOKEN_QUERY);
    assert_malformed(check(OK_HEAD "\r\n", "?access_token="), SG_TOKEN_QUERY);
    assert_malformed(check(OK_HEAD "\r\n", "?access_token"), SG_TOKEN_QUERY);
    assert_malformed(check(OK_HEAD "\r\n", "?access_token=a&access_token=b"), SG_TOKEN_QUERY);
}

static void test_token_oversize(void **state)
{
    (void)state;
    char *tok = malloc(SG_TOKEN_MAX + 2);
    assert_non_null(tok);
    memset(tok, 'a', SG_TOKEN_MAX);
    tok[SG_TOKEN_MAX] = '\0';

    hs *h = check(OK_HEAD "Authorization: Bearer %s\r\n\r\n", "", tok);
    assert_int_equal(h->up.token_len, SG_TOKEN_MAX);
    assert_int_equal(strlen(h->token), SG_TOKEN_MAX);
    assert_token(h, SG_TOKEN_HEADER, tok);
    assert_token(check(OK_HEAD "Sec-WebSocket-Protocol: signal.v1, bearer.%s\r\n\r\n", "", tok),
                 SG_TOKEN_PROTOCOL, tok);
    char target[SG_TOKEN_MAX + 32];
    snprintf(target, sizeof target, "?access_token=%s", tok);
    assert_token(check(OK_HEAD "\r\n", target), SG_TOKEN_QUERY, tok);

    /* Escapes count once decoded: 4095 plain bytes + "%2E" is 4096. */
    snprintf(target, sizeof target, "?access_token=%.*s%%2E", SG_TOKEN_MAX - 1, tok);
    h = check(OK_HEAD "\r\n", target);
    assert_int_equal(h->up.token_len, SG_TOKEN_MAX);
    assert_false(h->up.token_malformed);
    hs_free(h);

    tok[SG_TOKEN_MAX] = 'a';
    tok[SG_TOKEN_MAX + 1] = '\0';
    assert_malformed(check(OK_HEAD "Authorization: Bearer %s\r\n\r\n", "", tok), SG_TOKEN_HEADER);
    assert_malformed(check(OK_HEAD "Sec-WebSocket-Protocol: signal.v1, bearer.%s\r\n\r\n", "", tok),
                     SG_TOKEN_PROTOCOL);
    snprintf(target, sizeof target, "?access_token=%s", tok);
    assert_malformed(check(OK_HEAD "\r\n", target), SG_TOKEN_QUERY);
    free(tok);
}

/* ---- responses -------------------------------------------------------- */

static void test_accept_key_rfc6455(void **state)
{
    (void)state;
    char out[29];
    memset(out, 'X', sizeof out);
    sg_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, out);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    /* The key is taken by length, not up to a NUL. */
    sg_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==garbage", 24, out);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

static void test_upgrade_response(void **state)
{
    (void)state;
    hs *h = check("%s", GOOD);
    sg_buf b;
    sg_buf_init(&b);
    sg_http_upgrade_response(&b, &h->up);
    assert_string_equal(b.data, "HTTP/1.1 101 Switching Protocols\r\n"
                                "Upgrade: websocket\r\n"
                                "Connection: Upgrade\r\n"
                                "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                                "\r\n");
    hs_free(h);

    /* signal.v1 selected; the bearer entry is never echoed. */
    h = check("GET /ws HTTP/1.1\r\n" BASE_HEADERS
              "Sec-WebSocket-Protocol: bearer.SECRET, signal.v1\r\n\r\n");
    assert_true(h->up.select_protocol);
    sg_buf_reset(&b);
    sg_http_upgrade_response(&b, &h->up);
    assert_string_equal(b.data, "HTTP/1.1 101 Switching Protocols\r\n"
                                "Upgrade: websocket\r\n"
                                "Connection: Upgrade\r\n"
                                "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                                "Sec-WebSocket-Protocol: signal.v1\r\n"
                                "\r\n");
    assert_null(strstr(b.data, "SECRET"));
    assert_null(strstr(b.data, "bearer"));
    hs_free(h);
    sg_buf_free(&b);
}

/* Splits a response at the blank line and checks Content-Length. */
static const char *body_of(const sg_buf *b)
{
    const char *sep = strstr(b->data, "\r\n\r\n");
    assert_non_null(sep);
    const char *cl = strstr(b->data, "\r\nContent-Length: ");
    assert_non_null(cl);
    assert_true(cl < sep);
    size_t n = strtoul(cl + 18, NULL, 10);
    const char *body = sep + 4;
    assert_int_equal(n, b->len - (size_t)(body - b->data));
    return body;
}

static void test_error_response_exact(void **state)
{
    (void)state;
    sg_buf b;
    sg_buf_init(&b);
    sg_http_error_response(&b, 400, "bad_request", "missing Sec-WebSocket-Key header", NULL);
    const char *body = "{\"type\":\"error\",\"code\":\"bad_request\",\"message\":\"missing Sec-WebSocket-Key header\"}";
    char want[512];
    snprintf(want, sizeof want,
             "HTTP/1.1 400 Bad Request\r\n"
             "Content-Type: application/json\r\n"
             "Content-Length: %zu\r\n"
             "Connection: close\r\n"
             "Cache-Control: no-store\r\n"
             "\r\n%s",
             strlen(body), body);
    assert_string_equal(b.data, want);
    assert_string_equal(body_of(&b), body);
    assert_null(strstr(b.data, "Sec-WebSocket-Version"));
    sg_buf_free(&b);
}

static void test_error_response_426_and_extra(void **state)
{
    (void)state;
    sg_buf b;
    sg_buf_init(&b);
    sg_http_error_response(&b, 426, "upgrade_required", "missing Upgrade: websocket header", NULL);
    assert_true(starts_with(b.data, "HTTP/1.1 426 Upgrade Required\r\n"));
    const char *sep = strstr(b.data, "\r\n\r\n");
    const char *v = strstr(b.data, "\r\nSec-WebSocket-Version: 13\r\n");
    assert_non_null(v);
    assert_true(v < sep);
    body_of(&b);

    sg_buf_reset(&b);
    sg_http_error_response(&b, 401, "unauthorized", "token expired",
                           "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n");
    assert_true(starts_with(b.data, "HTTP/1.1 401 Unauthorized\r\n"));
    assert_non_null(strstr(b.data, "\r\nWWW-Authenticate: Bearer error=\"invalid_token\"\r\n\r\n{"));
    assert_string_equal(body_of(&b), "{\"type\":\"error\",\"code\":\"unauthorized\",\"message\":\"token expired\"}");
    sg_buf_free(&b);
}

static void test_error_response_escaping(void **state)
{
    (void)state;
    sg_buf b;
    sg_buf_init(&b);
    sg_http_error_response(&b, 403, "origin_not_allowed", "bad \"origin\"\\\n\x01 caf\xc3\xa9", NULL);
    assert_string_equal(body_of(&b), "{\"type\":\"error\",\"code\":\"origin_not_allowed\","
                                     "\"message\":\"bad \\\"origin\\\"\\\\\\n\\u0001 caf\xc3\xa9\"}");
    sg_buf_free(&b);
}

static void test_error_response_reasons(void **state)
{
    (void)state;
    static const struct {
        int status;
        const char *line;
    } cases[] = {
        {400, "HTTP/1.1 400 Bad Request\r\n"},       {401, "HTTP/1.1 401 Unauthorized\r\n"},
        {403, "HTTP/1.1 403 Forbidden\r\n"},         {404, "HTTP/1.1 404 Not Found\r\n"},
        {426, "HTTP/1.1 426 Upgrade Required\r\n"},  {500, "HTTP/1.1 500 Internal Server Error\r\n"},
        {503, "HTTP/1.1 503 Service Unavailable\r\n"},
    };
    sg_buf b;
    sg_buf_init(&b);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sg_buf_reset(&b);
        sg_http_error_response(&b, cases[i].status, "x", "y", NULL);
        assert_true(starts_with(b.data, cases[i].line));
        assert_non_null(strstr(b.data, "\r\nContent-Type: application/json\r\n"));
        assert_non_null(strstr(b.data, "\r\nConnection: close\r\n"));
        assert_non_null(strstr(b.data, "\r\nCache-Control: no-store\r\n"));
        assert_string_equal(body_of(&b), "{\"type\":\"error\",\"code\":\"x\",\"message\":\"y\"}");
        assert_int_equal(strstr(b.data, "Sec-WebSocket-Version: 13") != NULL, cases[i].status == 426);
    }
    /* The response appends: a caller may have bytes queued already. */
    sg_buf_reset(&b);
    sg_buf_puts(&b, "prefix");
    sg_http_error_response(&b, 503, "unavailable", "draining", NULL);
    assert_true(starts_with(b.data, "prefixHTTP/1.1 503 Service Unavailable\r\n"));
    sg_buf_free(&b);
}

/* ---- X-Forwarded-For (issue 12, finding 6) ----------------------------- */

/* The client address sg_forwarded_client picks from the header lines given
 * (each a complete "Name: value" line), with trusted as the proxy list;
 * "" when it keeps the socket address. The head is parsed from an
 * exactly-sized heap copy so that ASan sees any read past it. */
static const char *xff(const char *trusted, const char *lines)
{
    static char result[SG_IP_TEXT_MAX + 8];
    char head[2048];
    int n = snprintf(head, sizeof head, "GET /ws HTTP/1.1\r\nHost: gw.example\r\n%s\r\n", lines);
    assert_true(n > 0 && (size_t)n < sizeof head);
    char *copy = malloc((size_t)n);
    assert_non_null(copy);
    memcpy(copy, head, (size_t)n);
    sg_http_request req;
    assert_int_equal(sg_http_parse_request(copy, (size_t)n, 8192, &req), n);
    char out[SG_IP_TEXT_MAX];
    memset(out, 'x', sizeof out);
    bool ok = sg_forwarded_client(&req, trusted, out);
    if (ok) {
        assert_non_null(memchr(out, '\0', sizeof out));
        snprintf(result, sizeof result, "%s", out);
    } else {
        result[0] = '\0';
    }
    free(copy);
    return result;
}

#define LB "10.0.0.1"

static void test_xff_single_line(void **state)
{
    (void)state;
    assert_string_equal(xff(LB, "X-Forwarded-For: 203.0.113.7\r\n"), "203.0.113.7");
    /* The right-most entry is the one the proxy appended. */
    assert_string_equal(xff(LB, "X-Forwarded-For: 192.0.2.9, 203.0.113.7\r\n"), "203.0.113.7");
    assert_string_equal(xff(LB, "X-Forwarded-For:192.0.2.9,203.0.113.7\r\n"), "203.0.113.7");
    assert_string_equal(xff(LB, "x-forwarded-for: \t203.0.113.7 \t\r\n"), "203.0.113.7");
    assert_string_equal(xff(LB, "X-FORWARDED-FOR: 2001:db8::7\r\n"), "2001:db8::7");
    /* No header, an empty one: the socket address stays. */
    assert_string_equal(xff(LB, ""), "");
    assert_string_equal(xff(LB, "X-Forwarded-For:\r\n"), "");
    assert_string_equal(xff(LB, "X-Forwarded-For: , ,\r\n"), "");
    assert_string_equal(xff(LB, "X-Real-IP: 203.0.113.7\r\n"), "");
}

/* The finding: haproxy's option forwardfor adds a line of its own after
 * the client's, so the client's line must not decide. */
static void test_xff_repeated_lines_last_wins(void **state)
{
    (void)state;
    assert_string_equal(xff(LB, "X-Forwarded-For: 198.51.100.66\r\n"
                                "X-Forwarded-For: 203.0.113.7\r\n"),
                        "203.0.113.7");
    assert_string_equal(xff(LB, "X-Forwarded-For: 198.51.100.66, 198.51.100.67\r\n"
                                "Origin: https://app.example\r\n"
                                "x-forwarded-for: 192.0.2.1, 203.0.113.7\r\n"),
                        "203.0.113.7");
    /* Empty elements are ignored (RFC 9110 §5.6.1), also at a line's end. */
    assert_string_equal(xff(LB, "X-Forwarded-For: 198.51.100.66\r\n"
                                "X-Forwarded-For: 203.0.113.7,\r\n"),
                        "203.0.113.7");
    /* An empty last line is no entry: the one before decides. */
    assert_string_equal(xff(LB, "X-Forwarded-For: 203.0.113.7\r\n"
                                "X-Forwarded-For:\r\n"),
                        "203.0.113.7");
}

/* Hops that are our own proxies are skipped from the right; the first other
 * entry decides. */
static void test_xff_skips_trusted_hops(void **state)
{
    (void)state;
    const char *trusted = "10.0.0.1, 10.0.0.2,2001:db8::1";
    assert_string_equal(xff(trusted, "X-Forwarded-For: 203.0.113.7, 10.0.0.2\r\n"), "203.0.113.7");
    assert_string_equal(xff(trusted, "X-Forwarded-For: 198.51.100.66, 203.0.113.7\r\n"
                                     "X-Forwarded-For: 10.0.0.2, 2001:db8::1\r\n"),
                        "203.0.113.7");
    /* Compared as addresses, not as text. */
    assert_string_equal(xff(trusted, "X-Forwarded-For: 203.0.113.7, 2001:DB8:0::1, ::ffff:10.0.0.2\r\n"),
                        "203.0.113.7");
    /* Only trusted hops: nobody else to believe, the socket address stays. */
    assert_string_equal(xff(trusted, "X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n"), "");
    /* A client entry left of the first untrusted one is never reached. */
    assert_string_equal(xff(trusted, "X-Forwarded-For: 10.0.0.1, 203.0.113.7\r\n"), "203.0.113.7");
    /* Without a trusted list only the right-most entry counts. */
    assert_string_equal(xff(NULL, "X-Forwarded-For: 10.0.0.1, 203.0.113.7\r\n"), "203.0.113.7");
    assert_string_equal(xff("", "X-Forwarded-For: 203.0.113.7, 10.0.0.1\r\n"), "10.0.0.1");
}

/* The deciding entry must be a numeric address; anything else keeps the
 * socket address rather than falling back to an entry further left, which
 * the client wrote. */
static void test_xff_invalid_entry_keeps_peer(void **state)
{
    (void)state;
    static const char *bad[] = {
        "unknown", "203.0.113.7:4711", "[2001:db8::7]", "[2001:db8::7]:443", "203.0.113", "203.0.113.256",
        "203.0.113.07", "0x7f.0.0.1", "2001:db8::7%eth0", "gw.example", "_hidden", "2001:db8:::7",
        "203.0.113.7/32", "1.2.3.4.5", "::ffff:1.2.3", "\"203.0.113.7\"",
        "0000:0000:0000:0000:0000:0000:0000:0000:0",
        "1111:2222:3333:4444:5555:6666:7777:8888:9999:aaaa", /* over SG_IP_TEXT_MAX */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char lines[512];
        snprintf(lines, sizeof lines, "X-Forwarded-For: 203.0.113.7, %s\r\n", bad[i]);
        const char *got = xff(LB, lines);
        if (got[0])
            fail_msg("'%s' accepted as '%s'", bad[i], got);
        snprintf(lines, sizeof lines, "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: %s\r\n", bad[i]);
        got = xff(LB, lines);
        if (got[0])
            fail_msg("'%s' (own line) accepted as '%s'", bad[i], got);
    }
    /* A trusted hop written with a port is not a trusted hop. */
    assert_string_equal(xff(LB, "X-Forwarded-For: 203.0.113.7, 10.0.0.1:80\r\n"), "");
}

/* The result is canonical text, so one client is one per-IP count however
 * a hop wrote it. */
static void test_xff_canonical_text(void **state)
{
    (void)state;
    assert_string_equal(xff(LB, "X-Forwarded-For: 2001:DB8:0:0:0:0:0:7\r\n"), "2001:db8::7");
    assert_string_equal(xff(LB, "X-Forwarded-For: ::ffff:203.0.113.7\r\n"), "203.0.113.7");
    assert_string_equal(xff(LB, "X-Forwarded-For: ::FFFF:cb00:7107\r\n"), "203.0.113.7");
    assert_string_equal(xff(LB, "X-Forwarded-For: ::1\r\n"), "::1");
    assert_string_equal(xff(LB, "X-Forwarded-For: 0.0.0.0\r\n"), "0.0.0.0");
    assert_string_equal(xff(LB, "X-Forwarded-For: ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255\r\n"),
                        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
}

static void test_ip_in_list(void **state)
{
    (void)state;
    assert_true(sg_ip_in_list("127.0.0.1", "127.0.0.1"));
    assert_true(sg_ip_in_list("127.0.0.1", " 10.0.0.1 ,\t127.0.0.1 "));
    assert_true(sg_ip_in_list("::ffff:127.0.0.1", "10.0.0.1,127.0.0.1"));
    assert_true(sg_ip_in_list("127.0.0.1", "::ffff:127.0.0.1"));
    assert_true(sg_ip_in_list("2001:db8::1", "2001:DB8:0:0::1"));
    assert_false(sg_ip_in_list("127.0.0.1", "127.0.0.2,10.0.0.1"));
    assert_false(sg_ip_in_list("127.0.0.1", NULL));
    assert_false(sg_ip_in_list("127.0.0.1", ""));
    assert_false(sg_ip_in_list("127.0.0.1", "127.0.0.0/8")); /* no CIDR: never matches */
    assert_false(sg_ip_in_list("127.0.0.1", "localhost"));
    assert_false(sg_ip_in_list("", "127.0.0.1"));
    assert_false(sg_ip_in_list("garbage", "garbage"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_fields),
        cmocka_unit_test(test_parse_no_query_and_http10),
        cmocka_unit_test(test_parse_every_prefix),
        cmocka_unit_test(test_parse_repeated_calls_same_buffer),
        cmocka_unit_test(test_parse_too_large),
        cmocka_unit_test(test_parse_too_many_headers),
        cmocka_unit_test(test_parse_bare_lf),
        cmocka_unit_test(test_parse_bare_cr),
        cmocka_unit_test(test_parse_obs_fold),
        cmocka_unit_test(test_parse_nul_and_controls),
        cmocka_unit_test(test_parse_bad_request_line),
        cmocka_unit_test(test_parse_version),
        cmocka_unit_test(test_parse_bad_header_lines),
        cmocka_unit_test(test_header_has_token),
        cmocka_unit_test(test_check_ok),
        cmocka_unit_test(test_check_method),
        cmocka_unit_test(test_check_host),
        cmocka_unit_test(test_check_path),
        cmocka_unit_test(test_check_upgrade_connection),
        cmocka_unit_test(test_check_version),
        cmocka_unit_test(test_check_key),
        cmocka_unit_test(test_check_subprotocols),
        cmocka_unit_test(test_check_origin),
        cmocka_unit_test(test_check_context_headers),
        cmocka_unit_test(test_token_header),
        cmocka_unit_test(test_token_precedence),
        cmocka_unit_test(test_token_query_decoding),
        cmocka_unit_test(test_token_oversize),
        cmocka_unit_test(test_accept_key_rfc6455),
        cmocka_unit_test(test_upgrade_response),
        cmocka_unit_test(test_error_response_exact),
        cmocka_unit_test(test_error_response_426_and_extra),
        cmocka_unit_test(test_error_response_escaping),
        cmocka_unit_test(test_error_response_reasons),
        cmocka_unit_test(test_scan_same_verdict_as_parse),
        cmocka_unit_test(test_scan_examines_each_byte_once),
        cmocka_unit_test(test_scan_refuses_early),
        cmocka_unit_test(test_scan_cap_and_pipelined),
        cmocka_unit_test(test_xff_single_line),
        cmocka_unit_test(test_xff_repeated_lines_last_wins),
        cmocka_unit_test(test_xff_skips_trusted_hops),
        cmocka_unit_test(test_xff_invalid_entry_keeps_peer),
        cmocka_unit_test(test_xff_canonical_text),
        cmocka_unit_test(test_ip_in_list),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
