/* SPDX-License-Identifier: Apache-2.0 */
/* utf8: strict incremental UTF-8 validation (RFC 3629), shared by the
 * WebSocket layer (RFC 6455 requires valid text) and the message decoder. */
#include "sg/utf8.h"

#include <string.h>

/* A DFA over byte classes. States are the "what must come next" of RFC 3629's
 * grammar; the restricted second bytes (E0, ED, F0, F4) get their own states
 * so overlongs, surrogates and code points > U+10FFFF are refused at the
 * first byte that makes them so, not at the end of the sequence. */
enum {
    U8_ACCEPT = 0, /* on a character boundary */
    U8_REJECT,     /* sticky: an invalid byte was seen */
    U8_C1,         /* one continuation byte (80..BF) left */
    U8_C2,         /* two left */
    U8_C3,         /* three left */
    U8_E0,         /* after E0: A0..BF, then one more (no overlongs) */
    U8_ED,         /* after ED: 80..9F, then one more (no surrogates) */
    U8_F0,         /* after F0: 90..BF, then two more (no overlongs) */
    U8_F4,         /* after F4: 80..8F, then two more (<= U+10FFFF) */
    U8_NSTATES,
};

/* Byte classes: 0 ASCII, 1 cont 80..8F, 2 cont 90..9F, 3 cont A0..BF,
 * 4 lead C2..DF, 5 E0, 6 E1..EC/EE..EF, 7 ED, 8 never valid (C0, C1, F5..FF),
 * 9 F0, 10 F1..F3, 11 F4. */
enum { U8_NCLASSES = 12 };

static const uint8_t u8_class[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 00..0F */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 10..1F */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 20..2F */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 30..3F */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 40..4F */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 50..5F */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 60..6F */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 70..7F */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 80..8F */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 90..9F */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, /* A0..AF */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, /* B0..BF */
    8, 8, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, /* C0..CF */
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, /* D0..DF */
    5, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 7, 6, 6, /* E0..EF */
    9, 10, 10, 10, 11, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, /* F0..FF */
};

#define R U8_REJECT
static const uint8_t u8_next[U8_NSTATES][U8_NCLASSES] = {
    /*            asc  80   90   A0   C2     E0     E1     ED     bad  F0     F1     F4 */
    [U8_ACCEPT] = {0,   R,   R,   R,   U8_C1, U8_E0, U8_C2, U8_ED, R,   U8_F0, U8_C3, U8_F4},
    [U8_REJECT] = {R,   R,   R,   R,   R,     R,     R,     R,     R,   R,     R,     R},
    [U8_C1] = {R, U8_ACCEPT, U8_ACCEPT, U8_ACCEPT, R, R, R, R, R, R, R, R},
    [U8_C2] = {R, U8_C1, U8_C1, U8_C1, R, R, R, R, R, R, R, R},
    [U8_C3] = {R, U8_C2, U8_C2, U8_C2, R, R, R, R, R, R, R, R},
    [U8_E0] = {R, R, R, U8_C1, R, R, R, R, R, R, R, R},
    [U8_ED] = {R, U8_C1, U8_C1, R, R, R, R, R, R, R, R, R},
    [U8_F0] = {R, R, U8_C2, U8_C2, R, R, R, R, R, R, R, R},
    [U8_F4] = {R, U8_C2, R, R, R, R, R, R, R, R, R, R},
};
#undef R

_Static_assert((int)U8_ACCEPT == (int)SG_UTF8_ACCEPT && (int)U8_REJECT == (int)SG_UTF8_REJECT,
               "utf8.h names these states");

static inline uint32_t u8_step(uint32_t st, uint8_t b)
{
    return u8_next[st][u8_class[b]];
}

uint32_t sg_utf8_step(uint32_t state, uint8_t byte)
{
    return state < U8_NSTATES ? u8_step(state, byte) : U8_REJECT;
}

bool sg_utf8_feed(uint32_t *state, const uint8_t *s, size_t n)
{
    uint32_t st = *state;
    if (st >= U8_NSTATES || st == U8_REJECT) {
        *state = U8_REJECT;
        return false;
    }
    size_t i = 0;
    while (i < n) {
        if (st == U8_ACCEPT) {
            /* Most traffic is ASCII JSON: skip it eight bytes at a time. */
            while (n - i >= 8) {
                uint64_t w;
                memcpy(&w, s + i, 8);
                if (w & UINT64_C(0x8080808080808080))
                    break;
                i += 8;
            }
            while (i < n && s[i] < 0x80)
                i++;
            if (i == n)
                break;
        }
        st = u8_step(st, s[i++]);
        if (st == U8_REJECT) {
            *state = st;
            return false;
        }
    }
    *state = st;
    return true;
}

bool sg_utf8_complete(uint32_t state) { return state == U8_ACCEPT; }

bool sg_utf8_valid(const void *s, size_t n)
{
    uint32_t st = 0;
    return sg_utf8_feed(&st, s, n) && sg_utf8_complete(st);
}
