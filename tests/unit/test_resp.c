/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for resp: the encoder must produce exactly the bytes of hiredis'
 * redisFormatCommandArgv, which it replaced, for NUL-terminated and
 * length-given arguments, empty and binary ones (NUL, CR, LF inside), lengths
 * around each power of ten, and many arguments. Each encoding is written into
 * an exactly-sized heap buffer so AddressSanitizer catches one byte too many. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "sg/resp.h"

static void check(int argc, const char **argv, const size_t *lens)
{
    char *want = NULL;
    int wn = redisFormatCommandArgv(&want, argc, argv, lens);
    assert_true(wn > 0);
    size_t n = sg_resp_len(argc, argv, lens);
    assert_int_equal(n, (size_t)wn);
    char *got = malloc(n);
    assert_non_null(got);
    sg_resp_encode(got, argc, argv, lens);
    assert_memory_equal(got, want, n);
    free(got);
    free(want);
}

static void test_strings(void **state)
{
    const char *a1[] = {"PING"};
    check(1, a1, NULL);
    const char *a2[] = {"SET", "k", "v"};
    check(3, a2, NULL);
    const char *a3[] = {"SET", "", ""}; /* empty arguments */
    check(3, a3, NULL);
    const char *a4[] = {"AUTH", "user", "p\xc3\xa4ss w\"ord"};
    check(3, a4, NULL);
}

static void test_binary(void **state)
{
    const char *argv[] = {"PUBLISH", "ch\0an", "\r\n$3\r\n\0\0", ""};
    const size_t lens[] = {7, 5, 9, 0};
    check(4, argv, lens);
    /* A length shorter than the string: only that prefix is sent. */
    const char *argv2[] = {"GET", "keyname"};
    const size_t lens2[] = {3, 3};
    check(2, argv2, lens2);
}

static void test_lengths(void **state)
{
    static char big[100001];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)(i * 7);
    const size_t sizes[] = {0, 1, 9, 10, 11, 99, 100, 101, 999, 1000, 4096, 9999, 10000, 99999, 100000, 100001};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        const char *argv[] = {"EVALSHA", big, "1"};
        const size_t lens[] = {7, sizes[i], 1};
        check(3, argv, lens);
    }
}

static void test_many_args(void **state)
{
    /* argc across 9/10 and 99/100 changes the width of the array header. */
    enum { MAX = 120 };
    const char *argv[MAX];
    size_t lens[MAX];
    char store[MAX][8];
    for (int i = 0; i < MAX; i++) {
        snprintf(store[i], sizeof store[i], "a%d", i);
        argv[i] = store[i];
        lens[i] = strlen(store[i]);
    }
    for (int argc = 1; argc <= MAX; argc++) {
        check(argc, argv, lens);
        check(argc, argv, NULL);
    }
}

static void test_no_args(void **state)
{
    assert_int_equal(sg_resp_len(0, NULL, NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_binary),
        cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_many_args),
        cmocka_unit_test(test_no_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
