/* SPDX-License-Identifier: Apache-2.0 */
#include "sg/resp.h"

#include <stdint.h>
#include <string.h>

static size_t dec_digits(size_t v)
{
    size_t n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

/* Writes v in decimal; returns the byte after it. */
static char *put_dec(char *p, size_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

/* "$<len>\r\n<bytes>\r\n" */
static size_t bulk_len(size_t len) { return 1 + dec_digits(len) + 2 + len + 2; }

size_t sg_resp_len(int argc, const char *const *argv, const size_t *lens)
{
    if (argc < 1)
        return 0;
    size_t total = 1 + dec_digits((size_t)argc) + 2; /* "*<argc>\r\n" */
    for (int i = 0; i < argc; i++) {
        size_t l = lens ? lens[i] : strlen(argv[i]);
        /* The header and trailer of one bulk are at most 25 bytes. */
        if (l > SIZE_MAX - 32 || total > SIZE_MAX - 32 - l)
            return 0;
        total += bulk_len(l);
    }
    return total;
}

void sg_resp_encode(char *out, int argc, const char *const *argv, const size_t *lens)
{
    char *p = out;
    *p++ = '*';
    p = put_dec(p, (size_t)argc);
    *p++ = '\r';
    *p++ = '\n';
    for (int i = 0; i < argc; i++) {
        size_t l = lens ? lens[i] : strlen(argv[i]);
        *p++ = '$';
        p = put_dec(p, l);
        *p++ = '\r';
        *p++ = '\n';
        if (l)
            memcpy(p, argv[i], l);
        p += l;
        *p++ = '\r';
        *p++ = '\n';
    }
}
