/* SPDX-License-Identifier: Apache-2.0 */
/* utf8: incremental UTF-8 validation (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF). */
#ifndef SG_UTF8_H
#define SG_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Validator states every caller may name; the others are internal. */
enum { SG_UTF8_ACCEPT = 0, SG_UTF8_REJECT = 1 };

/* One byte: the next state (SG_UTF8_REJECT is sticky). */
uint32_t sg_utf8_step(uint32_t state, uint8_t byte);

/* state starts at SG_UTF8_ACCEPT (0). Returns false at the first invalid byte.
 * sg_utf8_complete(state) tells whether the input ended on a boundary. */
bool sg_utf8_feed(uint32_t *state, const uint8_t *s, size_t n);
bool sg_utf8_complete(uint32_t state);

/* A whole buffer: valid and ending on a character boundary. */
bool sg_utf8_valid(const void *s, size_t n);

#endif
