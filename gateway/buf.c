/* SPDX-License-Identifier: Apache-2.0 */
#include "sg/buf.h"
#include "sg/util.h"

#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

void sg_buf_init(sg_buf *b) { b->data = NULL; b->len = 0; b->cap = 0; }

void sg_buf_free(sg_buf *b)
{
    free(b->data);
    sg_buf_init(b);
}

void sg_buf_reset(sg_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void sg_buf_reserve(sg_buf *b, size_t extra)
{
    /* cap >= len + 1 whenever cap > 0 (the terminator), so this cannot wrap. */
    if (b->cap && b->cap - b->len - 1 >= extra)
        return;
    size_t need = b->len + extra + 1;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    b->data = sg_xrealloc(b->data, cap);
    b->cap = cap;
}

void sg_buf_append(sg_buf *b, const void *p, size_t n)
{
    sg_buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void sg_buf_puts(sg_buf *b, const char *s) { sg_buf_append(b, s, strlen(s)); }

void sg_buf_putc(sg_buf *b, char c) { sg_buf_append(b, &c, 1); }

void sg_buf_printf(sg_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n > 0) {
        sg_buf_reserve(b, (size_t)n);
        vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap2);
        b->len += (size_t)n;
    }
    va_end(ap2);
}

void sg_buf_json_str(sg_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    sg_buf_reserve(b, n + 2);
    sg_buf_putc(b, '"');
    size_t run = 0; /* start of the current run of bytes that need no escape */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        sg_buf_append(b, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"': sg_buf_append(b, "\\\"", 2); break;
        case '\\': sg_buf_append(b, "\\\\", 2); break;
        case '\n': sg_buf_append(b, "\\n", 2); break;
        case '\r': sg_buf_append(b, "\\r", 2); break;
        case '\t': sg_buf_append(b, "\\t", 2); break;
        default: {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            sg_buf_append(b, e, 6);
        }
        }
    }
    sg_buf_append(b, s + run, n - run);
    sg_buf_putc(b, '"');
}
