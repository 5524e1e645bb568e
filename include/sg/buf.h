/* SPDX-License-Identifier: Apache-2.0 */
/* sg_buf: a growable byte buffer used to build frames and JSON without a DOM.
 *
 * Contract: `data` is always NUL-terminated when cap > 0 so it can be logged;
 * `len` excludes the terminator. Allocation failure aborts through sg_xmalloc
 * (see util.h): the gateway bounds every buffer it builds, so running out of
 * memory is a deployment error, not a per-request condition. */
#ifndef SG_BUF_H
#define SG_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct sg_buf {
    char *data;
    size_t len;
    size_t cap;
} sg_buf;

void sg_buf_init(sg_buf *b);
void sg_buf_free(sg_buf *b);
void sg_buf_reset(sg_buf *b); /* len = 0, keeps the allocation */
void sg_buf_reserve(sg_buf *b, size_t extra);
void sg_buf_append(sg_buf *b, const void *p, size_t n);
void sg_buf_puts(sg_buf *b, const char *s);
void sg_buf_putc(sg_buf *b, char c);
void sg_buf_printf(sg_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal, quotes included. Bytes >= 0x80 are
 * copied as they are (callers pass validated UTF-8); control characters,
 * quote and backslash are escaped. */
void sg_buf_json_str(sg_buf *b, const char *s, size_t n);

#endif
