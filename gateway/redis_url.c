/* SPDX-License-Identifier: Apache-2.0 */
#include "sg/redis_url.h"
#include "sg/util.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static bool starts_with_nocase(const char *s, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    if (len < n)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != prefix[i])
            return false;
    }
    return true;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..len) into out (cap bytes with the NUL). A decoded NUL
 * would cut the credential short where Redis sees the whole: refused. */
static int decode_credential(const char *s, size_t len, char *out, size_t cap, const char *what,
                             char *err, size_t errlen)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            if (len - i < 3 || hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0)
                return fail(err, errlen, "bad percent-encoding in the %s", what);
            c = (unsigned char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            if (c == 0)
                return fail(err, errlen, "the %s may not contain %%00", what);
            i += 2;
        }
        if (n + 1 >= cap)
            return fail(err, errlen, "%s longer than %zu bytes", what, cap - 1);
        out[n++] = (char)c;
    }
    out[n] = '\0';
    return 0;
}

static bool is_host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_';
}

/* Digits only, at most `maxdigits` of them, value in [lo, hi]. */
static bool parse_number(const char *s, size_t len, size_t maxdigits, long lo, long hi, int *out)
{
    if (len == 0 || len > maxdigits)
        return false;
    long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    if (v < lo || v > hi)
        return false;
    *out = (int)v;
    return true;
}

/* host[:port][/db] (URL) or host:port (bare), from p to end. */
static int parse_hostpart(const char *p, const char *end, bool bare, unsigned flags, sg_redis_endpoint *o,
                          char *err, size_t errlen)
{
    const char *h = p;
    size_t hl;
    if (p < end && *p == '[') {
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb)
            return fail(err, errlen, "IPv6 address without its closing ']'");
        h = p + 1;
        hl = (size_t)(rb - h);
        char v6[64];
        struct in6_addr a;
        if (hl == 0 || hl >= sizeof v6)
            return fail(err, errlen, "bad IPv6 address");
        memcpy(v6, h, hl);
        v6[hl] = '\0';
        if (inet_pton(AF_INET6, v6, &a) != 1)
            return fail(err, errlen, "bad IPv6 address");
        p = rb + 1;
    } else {
        while (p < end && is_host_char(*p))
            p++;
        hl = (size_t)(p - h);
        if (p < end && !memchr(":/?#", *p, 4))
            return fail(err, errlen, "bad character in the host");
        if (hl == 0)
            return fail(err, errlen, "missing host");
        if (hl > SG_REDIS_HOST_MAX)
            return fail(err, errlen, "host longer than %d characters", SG_REDIS_HOST_MAX);
    }
    memcpy(o->host, h, hl);
    o->host[hl] = '\0';

    o->port = SG_REDIS_DEFAULT_PORT;
    if (p < end && *p == ':') {
        const char *ps = ++p;
        while (p < end && !memchr("/?#", *p, 3))
            p++;
        if (!parse_number(ps, (size_t)(p - ps), 5, 1, 65535, &o->port))
            return fail(err, errlen, "bad port (1-65535)");
    } else if (bare) {
        return fail(err, errlen, "host:port expected");
    }

    o->db = 0;
    if (p < end && *p == '/') {
        if (bare)
            return fail(err, errlen, "host:port expected");
        const char *ds = ++p;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        if (p > ds && !parse_number(ds, (size_t)(p - ds), 4, 0, SG_REDIS_DB_MAX, &o->db))
            return fail(err, errlen, "bad database number (0-%d)", SG_REDIS_DB_MAX);
        if ((flags & SG_REDIS_NO_DB) && o->db != 0)
            return fail(err, errlen, "a database number other than 0 has no meaning here");
    }
    if (p < end) {
        if (*p == '?' || *p == '#')
            return fail(err, errlen, "query strings and fragments are not supported");
        if (p[-1] == ']')
            return fail(err, errlen, "':port' or '/db' expected after an IPv6 address");
        return fail(err, errlen, bare ? "host:port expected" : "unexpected characters after the host");
    }
    return 0;
}

/* user:password before the last '@'. */
static int parse_userinfo(const char *p, const char *at, sg_redis_endpoint *o, char *err, size_t errlen)
{
    const char *colon = memchr(p, ':', (size_t)(at - p));
    if (!colon)
        return fail(err, errlen, "credentials must be [user]:password@");
    if (decode_credential(p, (size_t)(colon - p), o->user, sizeof o->user, "user name", err, errlen) < 0 ||
        decode_credential(colon + 1, (size_t)(at - colon - 1), o->pass, sizeof o->pass, "password", err,
                          errlen) < 0)
        return -1;
    if (!o->pass[0])
        return fail(err, errlen, "empty password");
    o->auth = true;
    return 0;
}

static int parse_endpoint(const char *s, size_t len, unsigned flags, sg_redis_endpoint *o, char *err,
                          size_t errlen)
{
    if (len == 0)
        return fail(err, errlen, "empty");
    if (len > SG_REDIS_INPUT_MAX)
        return fail(err, errlen, "longer than %d bytes", SG_REDIS_INPUT_MAX);
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] <= ' ' || (unsigned char)s[i] >= 0x7f)
            return fail(err, errlen, "contains a space, a control character or a non-ASCII byte "
                                     "(percent-encode them in credentials)");
    const char *end = s + len;
    const char *p;
    if (starts_with_nocase(s, len, "redis://")) {
        p = s + 8;
    } else if (starts_with_nocase(s, len, "rediss://")) {
        o->tls = true;
        p = s + 9;
    } else if (memmem(s, len, "://", 3)) {
        return fail(err, errlen, "unsupported scheme (redis:// or rediss://)");
    } else if (flags & SG_REDIS_BARE) {
        return parse_hostpart(s, end, true, flags, o, err, errlen);
    } else {
        return fail(err, errlen, "must start with redis:// or rediss://");
    }
    const char *at = NULL;
    for (const char *q = p; q < end; q++)
        if (*q == '@')
            at = q;
    if (at) {
        if (parse_userinfo(p, at, o, err, errlen) < 0)
            return -1;
        p = at + 1;
    }
    return parse_hostpart(p, end, false, flags, o, err, errlen);
}

int sg_redis_endpoint_parse(const char *s, size_t len, unsigned flags, sg_redis_endpoint *out,
                            char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!s)
        return fail(err, errlen, "empty");
    if (parse_endpoint(s, len, flags, out, err, errlen) < 0) {
        OPENSSL_cleanse(out, sizeof *out);
        return -1;
    }
    return 0;
}

static bool is_blank(char c) { return c == ' ' || c == '\t'; }

int sg_redis_list_parse(const char *list, unsigned flags, sg_redis_endpoint **out, size_t *count,
                        char *err, size_t errlen)
{
    *out = NULL;
    *count = 0;
    if (!list || !*list)
        return fail(err, errlen, "empty list");
    size_t n = 1;
    for (const char *p = list; *p; p++)
        if (*p == ',' && ++n > SG_REDIS_LIST_MAX)
            return fail(err, errlen, "more than %d entries", SG_REDIS_LIST_MAX);
    sg_redis_endpoint *eps = sg_xcalloc(n, sizeof *eps);
    const char *p = list;
    for (size_t i = 0; i < n; i++) {
        const char *e = strchr(p, ',');
        if (!e)
            e = p + strlen(p);
        const char *a = p, *b = e;
        while (a < b && is_blank(*a))
            a++;
        while (b > a && is_blank(b[-1]))
            b--;
        char why[160];
        if (sg_redis_endpoint_parse(a, (size_t)(b - a), flags, &eps[i], why, sizeof why) < 0) {
            sg_redis_list_free(eps, n);
            return fail(err, errlen, "entry %zu: %s", i + 1, why);
        }
        p = *e ? e + 1 : e;
    }
    *out = eps;
    *count = n;
    return 0;
}

void sg_redis_list_free(sg_redis_endpoint *eps, size_t count)
{
    if (!eps)
        return;
    OPENSSL_cleanse(eps, count * sizeof *eps);
    free(eps);
}

void sg_redis_targets_free(sg_redis_targets *t)
{
    sg_redis_list_free(t->sentinels, t->nsentinels);
    sg_redis_list_free(t->seeds, t->nseeds);
    OPENSSL_cleanse(t, sizeof *t);
}

int sg_redis_targets_parse(sg_redis_targets *t, const char *url, const char *sentinels, const char *seeds,
                           char *err, size_t errlen)
{
    char why[200];
    memset(t, 0, sizeof *t);
    const char *setting = "SIGNAL_REDIS_URL";
    if (sg_redis_endpoint_parse(url, strlen(url), 0, &t->url, why, sizeof why) < 0)
        goto fail;
    setting = "SIGNAL_REDIS_SENTINELS";
    if (sentinels && sg_redis_list_parse(sentinels, SG_REDIS_BARE | SG_REDIS_NO_DB, &t->sentinels, &t->nsentinels,
                                         why, sizeof why) < 0)
        goto fail;
    setting = "SIGNAL_REDIS_CLUSTER";
    if (seeds && sg_redis_list_parse(seeds, SG_REDIS_BARE | SG_REDIS_NO_DB, &t->seeds, &t->nseeds, why,
                                     sizeof why) < 0)
        goto fail;
    for (size_t i = 1; i < t->nseeds; i++)
        if (t->seeds[i].tls != t->seeds[0].tls) {
            snprintf(why, sizeof why, "entry %zu: every seed must use the same scheme", i + 1);
            goto fail;
        }
    return 0;
fail:
    sg_redis_targets_free(t);
    return fail(err, errlen, "%s: %s", setting, why);
}

bool sg_redis_targets_tls(const sg_redis_targets *t)
{
    if (t->nseeds)
        return t->seeds[0].tls;
    bool tls = t->url.tls;
    for (size_t i = 0; i < t->nsentinels; i++)
        tls = tls || t->sentinels[i].tls;
    return tls;
}
