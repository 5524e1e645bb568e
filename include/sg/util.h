/* SPDX-License-Identifier: Apache-2.0 */
/* Small helpers shared by every module: allocation that aborts on OOM,
 * monotonic and wall clocks, bounded string copies. */
#ifndef SG_UTIL_H
#define SG_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

void *sg_xmalloc(size_t n);
void *sg_xcalloc(size_t n, size_t sz);
void *sg_xrealloc(void *p, size_t n);
char *sg_xstrdup(const char *s);
char *sg_xstrndup(const char *s, size_t n);

/* Milliseconds since an arbitrary point, never goes backwards. */
uint64_t sg_now_mono_ms(void);
/* Microseconds since an arbitrary point, never goes backwards. */
uint64_t sg_now_mono_us(void);
/* Milliseconds since the Unix epoch (wall clock; travels between nodes). */
uint64_t sg_now_wall_ms(void);
/* Microseconds since the Unix epoch. */
uint64_t sg_now_wall_us(void);

/* Copies at most cap-1 bytes and NUL-terminates; returns false if truncated. */
bool sg_strlcpy(char *dst, const char *src, size_t cap);

/* Fills out with n random bytes from the OS/OpenSSL CSPRNG; aborts on failure. */
void sg_random_bytes(void *out, size_t n);
/* Lowercase hex of n bytes into out (2n+1 bytes). */
void sg_hex(char *out, const uint8_t *in, size_t n);

#endif
