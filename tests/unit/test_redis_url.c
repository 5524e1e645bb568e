/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for redis_url: the URL forms of SIGNAL_REDIS_URL and the
 * entries of the sentinel/seed lists, each field at and just past its
 * bounds, percent-decoding, the bare host:port form, and what must be
 * refused. Every input is copied into an exactly-sized heap block without a
 * NUL, so AddressSanitizer catches a read past len; every refusal is
 * checked to leave the output zeroed and to keep the password out of the
 * message. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sg/redis_url.h"

static const sg_redis_endpoint zero;

static int parse(const char *s, unsigned flags, sg_redis_endpoint *o, char *err, size_t errlen)
{
    size_t n = strlen(s);
    char *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    memcpy(copy, s, n);
    int rc = sg_redis_endpoint_parse(copy, n, flags, o, err, errlen);
    free(copy);
    return rc;
}

static sg_redis_endpoint ok(const char *s, unsigned flags)
{
    sg_redis_endpoint o;
    char err[200] = "";
    int rc = parse(s, flags, &o, err, sizeof err);
    if (rc != 0)
        fail_msg("'%s' refused: %s", s, err);
    return o;
}

/* Refused, with a message holding `want`, nothing of "secret", and the
 * output wiped. */
static void bad(const char *s, unsigned flags, const char *want)
{
    sg_redis_endpoint o;
    memset(&o, 0x5a, sizeof o);
    char err[200] = "";
    if (parse(s, flags, &o, err, sizeof err) != -1)
        fail_msg("'%s' accepted", s);
    if (!strstr(err, want))
        fail_msg("'%s': message '%s' lacks '%s'", s, err, want);
    assert_null(strstr(err, "secret"));
    assert_memory_equal(&o, &zero, sizeof o);
}

static void test_defaults(void **state)
{
    sg_redis_endpoint o = ok("redis://h", 0);
    assert_false(o.tls);
    assert_false(o.auth);
    assert_string_equal(o.host, "h");
    assert_int_equal(o.port, 6379);
    assert_int_equal(o.db, 0);
    assert_string_equal(o.user, "");
    assert_string_equal(o.pass, "");
    o = ok("redis://127.0.0.1/", 0);
    assert_string_equal(o.host, "127.0.0.1");
    assert_int_equal(o.db, 0);
}

static void test_full(void **state)
{
    sg_redis_endpoint o = ok("rediss://gw:secret@redis-1.example_net:6380/2", 0);
    assert_true(o.tls);
    assert_true(o.auth);
    assert_string_equal(o.user, "gw");
    assert_string_equal(o.pass, "secret");
    assert_string_equal(o.host, "redis-1.example_net");
    assert_int_equal(o.port, 6380);
    assert_int_equal(o.db, 2);
    /* The scheme in any case. */
    assert_false(ok("REDIS://h", 0).tls);
    assert_true(ok("Rediss://h", 0).tls);
}

static void test_credentials(void **state)
{
    sg_redis_endpoint o = ok("redis://:pw@h", 0);
    assert_true(o.auth);
    assert_string_equal(o.user, "");
    assert_string_equal(o.pass, "pw");
    /* The user ends at the first ':', the password at the last '@'. */
    o = ok("redis://u:p:a@ss/x@h:1", 0);
    assert_string_equal(o.user, "u");
    assert_string_equal(o.pass, "p:a@ss/x");
    assert_string_equal(o.host, "h");
    assert_int_equal(o.port, 1);
    o = ok("redis://us%65r%3a:p%40ss%2C%3A%25%7e@h", 0);
    assert_string_equal(o.user, "user:");
    assert_string_equal(o.pass, "p@ss,:%~");
    o = ok("redis://%C3%A4:%20%0A@h", 0); /* any byte but NUL once encoded */
    assert_string_equal(o.user, "\xc3\xa4");
    assert_string_equal(o.pass, " \n");

    bad("redis://secret@h", 0, "credentials must be [user]:password@");
    bad("redis://@h", 0, "credentials must be");
    bad("redis://:@h", 0, "empty password");
    bad("redis://secret:@h", 0, "empty password");
    bad("redis://u:secret%4@h", 0, "bad percent-encoding in the password");
    bad("redis://u:secret%@h", 0, "bad percent-encoding");
    bad("redis://u:secret%zz@h", 0, "bad percent-encoding");
    bad("redis://u%g0:secret@h", 0, "bad percent-encoding in the user name");
    bad("redis://u:sec%00ret@h", 0, "%00");
    bad("redis://u:secret@", 0, "missing host");
}

static void test_ipv6(void **state)
{
    sg_redis_endpoint o = ok("redis://[::1]:7000/3", 0);
    assert_string_equal(o.host, "::1");
    assert_int_equal(o.port, 7000);
    assert_int_equal(o.db, 3);
    o = ok("rediss://u:p@[fe80::1:2]", 0);
    assert_string_equal(o.host, "fe80::1:2");
    assert_int_equal(o.port, 6379);
    o = ok("[2001:db8::7]:26379", SG_REDIS_BARE);
    assert_string_equal(o.host, "2001:db8::7");
    assert_int_equal(o.port, 26379);

    bad("redis://[::1", 0, "closing ']'");
    bad("redis://[]:1", 0, "bad IPv6");
    bad("redis://[nothex]:1", 0, "bad IPv6");
    bad("redis://[fe80::1%25eth0]:1", 0, "bad IPv6"); /* no zone ids */
    bad("redis://[::1]x", 0, "after an IPv6 address");
    bad("redis://::1:6379", 0, "missing host");
    char v6[80] = "redis://[";
    memset(v6 + 9, '1', 64);
    strcpy(v6 + 73, "]:1");
    bad(v6, 0, "bad IPv6");
}

static void test_port(void **state)
{
    assert_int_equal(ok("redis://h:1", 0).port, 1);
    assert_int_equal(ok("redis://h:65535", 0).port, 65535);
    assert_int_equal(ok("redis://h:06379", 0).port, 6379);
    const char *bads[] = {"redis://h:0", "redis://h:65536", "redis://h:99999", "redis://h:",
                          "redis://h:+1", "redis://h:-1", "redis://h:065535", "redis://h:1x",
                          "redis://h:4294967297", "redis://h::1"};
    for (size_t i = 0; i < sizeof bads / sizeof *bads; i++)
        bad(bads[i], 0, "bad port");
}

static void test_db(void **state)
{
    assert_int_equal(ok("redis://h/1000", 0).db, 1000);
    assert_int_equal(ok("redis://h:1/0", SG_REDIS_NO_DB).db, 0);
    assert_int_equal(ok("redis://h/", SG_REDIS_NO_DB).db, 0);
    bad("redis://h/1001", 0, "bad database number");
    bad("redis://h/00001", 0, "bad database number");
    bad("redis://h/-1", 0, "unexpected characters");
    bad("redis://h/x", 0, "unexpected characters");
    bad("redis://h/1/2", 0, "unexpected characters");
    bad("redis://h/1", SG_REDIS_NO_DB, "other than 0");
    bad("redis://h/0?db=1", 0, "query strings");
    bad("redis://h#frag", 0, "fragments");
    bad("redis://h:1?x", 0, "query strings");
    bad("redis://u:p@[::1]?x", 0, "query strings");
}

static void test_scheme_and_bare(void **state)
{
    bad("h:1", 0, "must start with redis:// or rediss://");
    bad("http://h:1", 0, "unsupported scheme");
    bad("http://h:1", SG_REDIS_BARE, "unsupported scheme");
    bad("redis:/h", 0, "must start with");
    bad("redis//h", 0, "must start with");

    sg_redis_endpoint o = ok("sentinel-1:26379", SG_REDIS_BARE);
    assert_false(o.tls);
    assert_false(o.auth);
    assert_string_equal(o.host, "sentinel-1");
    assert_int_equal(o.port, 26379);
    bad("h", SG_REDIS_BARE, "host:port expected");
    bad("h:1/0", SG_REDIS_BARE, "host:port expected");
    bad("[::1]", SG_REDIS_BARE, "host:port expected");
    bad("u:secret@h:1", SG_REDIS_BARE, "bad port");
    bad("secret@h:1", SG_REDIS_BARE, "bad character in the host");
    bad(":1", SG_REDIS_BARE, "missing host");
    bad("h:", SG_REDIS_BARE, "bad port");
}

static void test_bytes(void **state)
{
    const char *bads[] = {"redis://h :1", "redis://u:sec ret@h", "redis://h\n", "\tredis://h",
                          "redis://u:secret\x7f@h", "redis://u:s\xc3\xa4" "ecret@h", "redis://h\r"};
    for (size_t i = 0; i < sizeof bads / sizeof *bads; i++)
        bad(bads[i], SG_REDIS_BARE, "control character");
    bad("", SG_REDIS_BARE, "empty");
    bad("redis://h,x:1", 0, "bad character in the host");
    bad("redis://h!:1", 0, "bad character in the host");
    /* A NUL inside len is a control character, not the end. */
    sg_redis_endpoint o;
    char err[200];
    assert_int_equal(sg_redis_endpoint_parse("redis://h\0:1", 12, 0, &o, err, sizeof err), -1);
    assert_int_equal(sg_redis_endpoint_parse(NULL, 0, 0, &o, err, sizeof err), -1);
    /* Only len bytes are read: the rest of the string is not the input. */
    assert_int_equal(sg_redis_endpoint_parse("redis://h:6379/0?x", 16, 0, &o, err, sizeof err), 0);
    assert_int_equal(o.port, 6379);
    assert_int_equal(o.db, 0);
    /* No message buffer, or a tiny one, is fine. */
    assert_int_equal(sg_redis_endpoint_parse("x", 1, 0, &o, NULL, 0), -1);
    char tiny[4];
    assert_int_equal(sg_redis_endpoint_parse("x", 1, 0, &o, tiny, sizeof tiny), -1);
    assert_int_equal(strlen(tiny), 3);
}

static char *repeat(const char *prefix, char c, size_t n, const char *suffix)
{
    size_t pl = strlen(prefix), sl = strlen(suffix);
    char *s = malloc(pl + n + sl + 1);
    assert_non_null(s);
    memcpy(s, prefix, pl);
    memset(s + pl, c, n);
    memcpy(s + pl + n, suffix, sl + 1);
    return s;
}

static void test_lengths(void **state)
{
    char *s = repeat("redis://", 'h', SG_REDIS_HOST_MAX, ":1");
    assert_int_equal(strlen(ok(s, 0).host), SG_REDIS_HOST_MAX);
    free(s);
    s = repeat("redis://", 'h', SG_REDIS_HOST_MAX + 1, ":1");
    bad(s, 0, "host longer than");
    free(s);

    s = repeat("redis://", 'u', SG_REDIS_USER_MAX, ":p@h");
    assert_int_equal(strlen(ok(s, 0).user), SG_REDIS_USER_MAX);
    free(s);
    s = repeat("redis://", 'u', SG_REDIS_USER_MAX + 1, ":secret@h");
    bad(s, 0, "user name longer than");
    free(s);

    /* The password's bound is on decoded bytes: 512 escapes are 1536 characters. */
    char *pw = malloc(3 * (SG_REDIS_PASS_MAX + 1) + 64);
    assert_non_null(pw);
    strcpy(pw, "redis://:");
    for (int i = 0; i < SG_REDIS_PASS_MAX; i++)
        strcat(pw, "%41");
    strcat(pw, "@h");
    sg_redis_endpoint o = ok(pw, 0);
    assert_int_equal(strlen(o.pass), SG_REDIS_PASS_MAX);
    assert_int_equal(o.pass[0], 'A');
    strcpy(strstr(pw, "@h"), "%41@h");
    bad(pw, 0, "password longer than");
    free(pw);

    s = repeat("redis://:", 'p', SG_REDIS_INPUT_MAX - strlen("redis://:@h"), "@h");
    assert_int_equal(strlen(s), SG_REDIS_INPUT_MAX);
    bad(s, 0, "password longer than");
    free(s);
    s = repeat("redis://:", 'p', SG_REDIS_INPUT_MAX + 1 - strlen("redis://:@h"), "@h");
    bad(s, 0, "longer than 2048 bytes");
    free(s);
}

static void test_list(void **state)
{
    sg_redis_endpoint *eps;
    size_t n;
    char err[200];
    assert_int_equal(sg_redis_list_parse(" a:1,\trediss://u:p%2Cq@b:2 ,redis://[::1]", SG_REDIS_BARE, &eps, &n,
                                         err, sizeof err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(eps[0].host, "a");
    assert_int_equal(eps[0].port, 1);
    assert_false(eps[0].tls);
    assert_true(eps[1].tls);
    assert_string_equal(eps[1].user, "u");
    assert_string_equal(eps[1].pass, "p,q");
    assert_int_equal(eps[2].port, 6379);
    sg_redis_list_free(eps, n);
    sg_redis_list_free(NULL, 0);

    struct { const char *list; const char *want; } bads[] = {
        {"", "empty list"},
        {",a:1", "entry 1: empty"},
        {"a:1,,b:2", "entry 2: empty"},
        {"a:1, ", "entry 2: empty"},
        {"a:1,b", "entry 2: host:port expected"},
        {"redis://u:secret,x@h", "entry 1: bad port"}, /* an unencoded comma splits the entry */
        {"a:1,redis://h/3", "entry 2: a database number other than 0"},
    };
    for (size_t i = 0; i < sizeof bads / sizeof *bads; i++) {
        eps = (sg_redis_endpoint *)&zero;
        n = 99;
        assert_int_equal(sg_redis_list_parse(bads[i].list, SG_REDIS_BARE | SG_REDIS_NO_DB, &eps, &n, err,
                                             sizeof err), -1);
        if (!strstr(err, bads[i].want))
            fail_msg("'%s': message '%s' lacks '%s'", bads[i].list, err, bads[i].want);
        assert_null(strstr(err, "secret"));
        assert_null(eps);
        assert_int_equal(n, 0);
    }
    assert_int_equal(sg_redis_list_parse(NULL, 0, &eps, &n, err, sizeof err), -1);

    char big[SG_REDIS_LIST_MAX * 6 + 8] = "";
    for (int i = 0; i < SG_REDIS_LIST_MAX; i++)
        strcat(big, i ? ",h:1" : "h:1");
    assert_int_equal(sg_redis_list_parse(big, SG_REDIS_BARE, &eps, &n, err, sizeof err), 0);
    assert_int_equal(n, SG_REDIS_LIST_MAX);
    sg_redis_list_free(eps, n);
    strcat(big, ",h:1");
    assert_int_equal(sg_redis_list_parse(big, SG_REDIS_BARE, &eps, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "more than 64 entries"));
}

/* The three settings together, as config, the bus and the subcommands read them. */
static void test_targets(void **state)
{
    sg_redis_targets t;
    char err[256];
    assert_int_equal(sg_redis_targets_parse(&t, "redis://127.0.0.1:6379/2", "rediss://u:p%40@s1:26380,s2:26379",
                                            NULL, err, sizeof err), 0);
    assert_int_equal(t.url.db, 2);
    assert_int_equal(t.nsentinels, 2);
    assert_true(t.sentinels[0].tls && t.sentinels[0].auth);
    assert_string_equal(t.sentinels[0].pass, "p@");
    assert_int_equal(t.nseeds, 0);
    assert_true(sg_redis_targets_tls(&t)); /* a sentinel is rediss:// */
    sg_redis_targets_free(&t);
    /* cluster mode: the seeds decide the scheme, the URL is not used */
    assert_int_equal(sg_redis_targets_parse(&t, "rediss://127.0.0.1/0", NULL, "10.0.0.1:7000,10.0.0.2:7000", err,
                                            sizeof err), 0);
    assert_int_equal(t.nseeds, 2);
    assert_false(sg_redis_targets_tls(&t));
    sg_redis_targets_free(&t);
    /* each error names its setting, never the text (which may hold a password) */
    assert_int_equal(sg_redis_targets_parse(&t, "redis://x/0", NULL, "rediss://a:1,redis://u:secret@b:2", err,
                                            sizeof err), -1);
    assert_string_equal(err, "SIGNAL_REDIS_CLUSTER: entry 2: every seed must use the same scheme");
    assert_null(t.seeds);
    assert_int_equal(sg_redis_targets_parse(&t, "http://u:secret@x/0", NULL, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "SIGNAL_REDIS_URL: "));
    assert_null(strstr(err, "secret"));
    assert_int_equal(sg_redis_targets_parse(&t, "redis://x/0", "s1:26379,", NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "SIGNAL_REDIS_SENTINELS: entry 2"));
    assert_null(t.sentinels);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_credentials),
        cmocka_unit_test(test_ipv6),
        cmocka_unit_test(test_port),
        cmocka_unit_test(test_db),
        cmocka_unit_test(test_scheme_and_bare),
        cmocka_unit_test(test_bytes),
        cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_list),
        cmocka_unit_test(test_targets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
