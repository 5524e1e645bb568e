/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for map: put/get/del/replace, the u64 helpers, growth through
 * many resizes, iteration that sees every entry exactly once, and binary
 * keys. Values are small integers cast to pointers (the map never touches
 * them). Keys are passed from exactly-sized heap copies where it matters,
 * so AddressSanitizer catches a read past klen. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sg/map.h"

#define V(x) ((void *)(uintptr_t)(x))
#define U(p) ((uintptr_t)(p))

static void *put_s(sg_map *m, const char *k, uintptr_t v) { return sg_map_put(m, k, strlen(k), V(v)); }
static void *get_s(const sg_map *m, const char *k) { return sg_map_get(m, k, strlen(k)); }
static void *del_s(sg_map *m, const char *k) { return sg_map_del(m, k, strlen(k)); }

/* Walks the map; returns the number of entries seen. */
static size_t walk_count(const sg_map *m)
{
    size_t i, n = 0;
    for (sg_map_entry *e = sg_map_first(m, &i); e; e = sg_map_next(m, &i, e))
        n++;
    return n;
}

static void test_init_empty(void **state)
{
    sg_map m;
    sg_map_init(&m);
    assert_int_equal(m.count, 0);
    assert_true(m.nbuckets > 0);
    assert_int_equal(m.nbuckets & (m.nbuckets - 1), 0); /* power of two */
    assert_null(get_s(&m, "x"));
    assert_null(del_s(&m, "x"));
    size_t i;
    assert_null(sg_map_first(&m, &i));
    sg_map_free(&m);
    assert_null(m.buckets);
    assert_int_equal(m.count, 0);
}

static void test_put_get_del(void **state)
{
    sg_map m;
    sg_map_init(&m);
    assert_null(put_s(&m, "alpha", 1));
    assert_null(put_s(&m, "beta", 2));
    assert_null(put_s(&m, "gamma", 3));
    assert_int_equal(m.count, 3);
    assert_int_equal(U(get_s(&m, "alpha")), 1);
    assert_int_equal(U(get_s(&m, "beta")), 2);
    assert_int_equal(U(get_s(&m, "gamma")), 3);
    assert_null(get_s(&m, "delta"));
    /* Prefixes and extensions of a key are other keys. */
    assert_null(get_s(&m, "alph"));
    assert_null(get_s(&m, "alphab"));
    assert_null(sg_map_get(&m, "alpha", 4));

    assert_int_equal(U(del_s(&m, "beta")), 2);
    assert_int_equal(m.count, 2);
    assert_null(get_s(&m, "beta"));
    assert_null(del_s(&m, "beta")); /* a second delete finds nothing */
    assert_int_equal(m.count, 2);
    assert_int_equal(U(get_s(&m, "alpha")), 1);
    assert_int_equal(U(get_s(&m, "gamma")), 3);

    /* Deleted keys can come back. */
    assert_null(put_s(&m, "beta", 22));
    assert_int_equal(U(get_s(&m, "beta")), 22);
    assert_int_equal(m.count, 3);
    sg_map_free(&m);
}

static void test_replace_returns_old(void **state)
{
    sg_map m;
    sg_map_init(&m);
    assert_null(put_s(&m, "k", 1));
    assert_int_equal(U(put_s(&m, "k", 2)), 1);
    assert_int_equal(U(put_s(&m, "k", 3)), 2);
    assert_int_equal(m.count, 1); /* replacing does not add */
    assert_int_equal(U(get_s(&m, "k")), 3);
    /* A NULL value is stored like any other (get cannot tell it from absent). */
    assert_int_equal(U(sg_map_put(&m, "k", 1, NULL)), 3);
    assert_int_equal(m.count, 1);
    assert_null(get_s(&m, "k"));
    assert_null(del_s(&m, "k"));
    assert_int_equal(m.count, 0);
    sg_map_free(&m);
}

/* The map copies keys: the caller's buffer may change or go away. */
static void test_keys_are_copied(void **state)
{
    sg_map m;
    sg_map_init(&m);
    char *k = malloc(6);
    assert_non_null(k);
    memcpy(k, "room1", 6);
    sg_map_put(&m, k, 5, V(7));
    memcpy(k, "XXXXX", 6);
    free(k);
    assert_int_equal(U(get_s(&m, "room1")), 7);
    size_t i;
    sg_map_entry *e = sg_map_first(&m, &i);
    assert_non_null(e);
    assert_int_equal(e->klen, 5);
    assert_memory_equal(e->key, "room1", 6); /* NUL-terminated copy */
    sg_map_free(&m);
}

/* The empty key is a key. */
static void test_empty_key(void **state)
{
    sg_map m;
    sg_map_init(&m);
    assert_null(sg_map_put(&m, "", 0, V(5)));
    assert_int_equal(U(sg_map_get(&m, "", 0)), 5);
    assert_null(sg_map_get(&m, "\0", 1));
    assert_int_equal(m.count, 1);
    assert_int_equal(U(sg_map_del(&m, "", 0)), 5);
    assert_int_equal(m.count, 0);
    sg_map_free(&m);
}

static void test_u64_helpers(void **state)
{
    sg_map m;
    sg_map_init(&m);
    static const uint64_t keys[] = {0, 1, 2, 255, 256, 0xffffffffull, 0x100000000ull,
                                    0x8000000000000000ull, UINT64_MAX};
    size_t n = sizeof keys / sizeof keys[0];
    for (size_t i = 0; i < n; i++)
        assert_null(sg_map_put_u64(&m, keys[i], V(i + 100)));
    assert_int_equal(m.count, n);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(U(sg_map_get_u64(&m, keys[i])), i + 100);
    assert_null(sg_map_get_u64(&m, 3));
    assert_int_equal(U(sg_map_put_u64(&m, 1, V(9))), 101);
    assert_int_equal(U(sg_map_del_u64(&m, UINT64_MAX)), n - 1 + 100);
    assert_null(sg_map_get_u64(&m, UINT64_MAX));
    /* A u64 key is its 8 bytes: the same bytes as a string key find it. */
    uint64_t k = 256;
    assert_int_equal(U(sg_map_get(&m, &k, sizeof k)), 104);
    assert_null(sg_map_get(&m, &k, 4));
    assert_int_equal(m.count, n - 1);
    sg_map_free(&m);
}

static void test_binary_keys_with_nul(void **state)
{
    sg_map m;
    sg_map_init(&m);
    const char a[] = {'a', '\0', 'b'};
    const char b[] = {'a', '\0', 'c'};
    const char c[] = {'a', '\0'};
    const char d[] = {'\0', '\0', '\0'};
    const char e[] = {'\0'};
    sg_map_put(&m, a, sizeof a, V(1));
    sg_map_put(&m, b, sizeof b, V(2));
    sg_map_put(&m, c, sizeof c, V(3));
    sg_map_put(&m, "a", 1, V(4));
    sg_map_put(&m, d, sizeof d, V(5));
    sg_map_put(&m, e, sizeof e, V(6));
    assert_int_equal(m.count, 6);
    assert_int_equal(U(sg_map_get(&m, a, sizeof a)), 1);
    assert_int_equal(U(sg_map_get(&m, b, sizeof b)), 2);
    assert_int_equal(U(sg_map_get(&m, c, sizeof c)), 3);
    assert_int_equal(U(sg_map_get(&m, "a", 1)), 4);
    assert_int_equal(U(sg_map_get(&m, d, sizeof d)), 5);
    assert_int_equal(U(sg_map_get(&m, e, sizeof e)), 6);
    assert_null(sg_map_get(&m, d, 2));
    assert_int_equal(U(sg_map_del(&m, a, sizeof a)), 1);
    assert_null(sg_map_get(&m, a, sizeof a));
    assert_int_equal(U(sg_map_get(&m, b, sizeof b)), 2);
    assert_int_equal(U(sg_map_get(&m, c, sizeof c)), 3);

    /* All 256 byte values, in keys that differ only after a NUL. */
    for (int i = 0; i < 256; i++) {
        char *k = malloc(3); /* exact size */
        assert_non_null(k);
        k[0] = 'x';
        k[1] = '\0';
        k[2] = (char)i;
        sg_map_put(&m, k, 3, V(1000 + i));
        free(k);
    }
    for (int i = 0; i < 256; i++) {
        char k[3] = {'x', '\0', (char)i};
        assert_int_equal(U(sg_map_get(&m, k, 3)), 1000 + i);
    }
    sg_map_free(&m);
}

#define MANY 100000

/* 100k entries: from 16 buckets that is a dozen doublings, each of which
 * must keep every entry reachable. */
static void test_growth_many_resizes(void **state)
{
    sg_map m;
    sg_map_init(&m);
    size_t initial = m.nbuckets;
    size_t resizes = 0, last = m.nbuckets;
    for (uint64_t i = 0; i < MANY; i++) {
        assert_null(sg_map_put_u64(&m, i * 0x9e3779b97f4a7c15ull, V(i + 1)));
        if (m.nbuckets != last) {
            assert_int_equal(m.nbuckets, last * 2);
            last = m.nbuckets;
            resizes++;
            /* Right after a resize, a sample of earlier keys is still there. */
            for (uint64_t j = 0; j <= i; j += 1 + i / 64)
                assert_int_equal(U(sg_map_get_u64(&m, j * 0x9e3779b97f4a7c15ull)), j + 1);
        }
    }
    assert_int_equal(m.count, MANY);
    assert_true(resizes >= 10);
    assert_true(m.nbuckets > initial);
    assert_true(m.count <= m.nbuckets); /* load factor at most 1 */
    for (uint64_t i = 0; i < MANY; i++)
        assert_int_equal(U(sg_map_get_u64(&m, i * 0x9e3779b97f4a7c15ull)), i + 1);
    assert_null(sg_map_get_u64(&m, 12345));

    /* String keys too. */
    sg_map s;
    sg_map_init(&s);
    char k[32];
    for (int i = 0; i < MANY; i++) {
        int n = snprintf(k, sizeof k, "room:%d", i);
        assert_null(sg_map_put(&s, k, (size_t)n, V(i + 1)));
    }
    for (int i = 0; i < MANY; i++) {
        int n = snprintf(k, sizeof k, "room:%d", i);
        assert_int_equal(U(sg_map_get(&s, k, (size_t)n)), i + 1);
    }
    assert_int_equal(s.count, MANY);
    sg_map_free(&s);
    sg_map_free(&m);
}

static void test_iteration_visits_each_once(void **state)
{
    sg_map m;
    sg_map_init(&m);
    size_t i;
    for (uint64_t k = 0; k < MANY; k++)
        sg_map_put_u64(&m, k, V(k + 1));
    unsigned char *seen = calloc(MANY, 1);
    assert_non_null(seen);
    size_t n = 0;
    for (sg_map_entry *e = sg_map_first(&m, &i); e; e = sg_map_next(&m, &i, e)) {
        assert_int_equal(e->klen, sizeof(uint64_t));
        uint64_t k;
        memcpy(&k, e->key, sizeof k);
        assert_true(k < MANY);
        assert_int_equal(U(e->value), k + 1);
        assert_int_equal(seen[k], 0);
        seen[k] = 1;
        n++;
    }
    assert_int_equal(n, MANY);
    for (size_t k = 0; k < MANY; k++)
        assert_int_equal(seen[k], 1);
    free(seen);

    /* A single entry, in whichever bucket: found once. */
    sg_map one;
    sg_map_init(&one);
    put_s(&one, "only", 1);
    assert_int_equal(walk_count(&one), 1);
    sg_map_free(&one);
    sg_map_free(&m);
}

static void test_delete_all(void **state)
{
    sg_map m;
    sg_map_init(&m);
    for (uint64_t k = 0; k < MANY; k++)
        sg_map_put_u64(&m, k, V(k + 1));
    /* Every other key first, then the rest in reverse. */
    for (uint64_t k = 0; k < MANY; k += 2)
        assert_int_equal(U(sg_map_del_u64(&m, k)), k + 1);
    assert_int_equal(m.count, MANY / 2);
    assert_int_equal(walk_count(&m), MANY / 2);
    for (uint64_t k = 1; k < MANY; k += 2)
        assert_int_equal(U(sg_map_get_u64(&m, k)), k + 1);
    for (uint64_t k = MANY; k-- > 0;) {
        void *v = sg_map_del_u64(&m, k);
        if (k % 2)
            assert_int_equal(U(v), k + 1);
        else
            assert_null(v);
    }
    assert_int_equal(m.count, 0);
    size_t i;
    assert_null(sg_map_first(&m, &i));
    assert_int_equal(walk_count(&m), 0);
    /* The emptied map still works. */
    assert_null(sg_map_put_u64(&m, 42, V(43)));
    assert_int_equal(U(sg_map_get_u64(&m, 42)), 43);
    assert_int_equal(m.count, 1);
    sg_map_free(&m);
}

/* Deleting through an iteration snapshot: collect, then delete (the header
 * forbids deleting while iterating). */
static void test_collect_then_delete(void **state)
{
    sg_map m;
    sg_map_init(&m);
    for (uint64_t k = 0; k < 1000; k++)
        sg_map_put_u64(&m, k, V(k + 1));
    uint64_t *keys = malloc(1000 * sizeof *keys);
    assert_non_null(keys);
    size_t i, n = 0;
    for (sg_map_entry *e = sg_map_first(&m, &i); e; e = sg_map_next(&m, &i, e))
        memcpy(&keys[n++], e->key, sizeof(uint64_t));
    assert_int_equal(n, 1000);
    for (size_t j = 0; j < n; j++)
        assert_non_null(sg_map_del_u64(&m, keys[j]));
    assert_int_equal(m.count, 0);
    free(keys);
    sg_map_free(&m);
}

/* Free with entries in it releases them (LeakSanitizer checks), and the
 * map can be initialised again. */
static void test_free_nonempty_and_reinit(void **state)
{
    sg_map m;
    sg_map_init(&m);
    for (int i = 0; i < 1000; i++) {
        char k[16];
        int n = snprintf(k, sizeof k, "k%d", i);
        sg_map_put(&m, k, (size_t)n, V(i));
    }
    sg_map_free(&m);
    sg_map_init(&m);
    assert_int_equal(m.count, 0);
    assert_null(get_s(&m, "k1"));
    put_s(&m, "k1", 9);
    assert_int_equal(U(get_s(&m, "k1")), 9);
    sg_map_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_empty),
        cmocka_unit_test(test_put_get_del),
        cmocka_unit_test(test_replace_returns_old),
        cmocka_unit_test(test_keys_are_copied),
        cmocka_unit_test(test_empty_key),
        cmocka_unit_test(test_u64_helpers),
        cmocka_unit_test(test_binary_keys_with_nul),
        cmocka_unit_test(test_growth_many_resizes),
        cmocka_unit_test(test_iteration_visits_each_once),
        cmocka_unit_test(test_delete_all),
        cmocka_unit_test(test_collect_then_delete),
        cmocka_unit_test(test_free_nonempty_and_reinit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
