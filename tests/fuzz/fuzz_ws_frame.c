/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer driver for ws_frame. The first input byte picks the chunk sizes,
 * so the same frames are also tried split at many offsets. Each chunk is its
 * own heap block: reading past what was fed is an ASan error. Callbacks read
 * every delivered byte and re-check the UTF-8 promise of on_text. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sg/ws_frame.h"

static int touch(void *ud, const uint8_t *d, size_t n)
{
    unsigned sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += d[i];
    *(unsigned *)ud += sum;
    return 0;
}

static int on_text(void *ud, const uint8_t *d, size_t n)
{
    uint32_t st = 0;
    if (n > 4096 || !sg_utf8_feed(&st, d, n) || !sg_utf8_complete(st))
        abort(); /* the parser delivered what it must have refused */
    return touch(ud, d, n);
}

/* Some inputs make a callback ask to stop, to exercise that path too. */
static int on_close(void *ud, uint16_t code, const uint8_t *d, size_t n)
{
    return touch(ud, d, n) || code == 4999;
}

static int on_frame(void *ud, uint8_t op, uint64_t len) { return op == SG_WS_OP_PONG && len == 77; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const sg_ws_callbacks cb = {on_text, touch, touch, on_close, on_frame};
    unsigned sink = 0;
    sg_ws_parser p;
    sg_ws_parser_init(&p, &cb, &sink, 4096);
    size_t step = size ? (size_t)(data[0] % 17) : 0, pos = size ? 1 : 0;
    while (pos < size) {
        size_t k = step ? step : size - pos; /* 0: the rest in one go */
        k = k < size - pos ? k : size - pos;
        uint8_t *chunk = malloc(k);
        memcpy(chunk, data + pos, k);
        int rc = sg_ws_parser_feed(&p, chunk, k);
        free(chunk);
        pos += k;
        step = step ? (step * 7 + data[pos - 1]) % 23 : 0; /* vary the cut points */
        if (rc != 0 && sg_ws_parser_feed(&p, NULL, 0) != rc)
            abort(); /* failures and stops are sticky */
        if (rc != 0)
            break;
    }
    if (sg_ws_parser_buffered(&p) > 4096)
        abort();
    sg_ws_parser_reset(&p);
    return 0;
}
