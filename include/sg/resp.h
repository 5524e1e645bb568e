/* SPDX-License-Identifier: Apache-2.0 */
/* resp: RESP2 encoding of a command (an array of bulk strings), byte for
 * byte what hiredis' redisFormatCommandArgv produces, without printf and
 * without an allocation: the caller sizes the space with sg_resp_len and
 * hands sg_resp_encode memory it owns (rconn: the socket's output evbuffer).
 * Pure: no I/O. */
#ifndef SG_RESP_H
#define SG_RESP_H

#include <stddef.h>

/* Bytes the encoding of argv takes. lens may be NULL: NUL-terminated args.
 * Returns 0 when argc < 1 or the size would not fit in a size_t. */
size_t sg_resp_len(int argc, const char *const *argv, const size_t *lens);
/* Writes exactly sg_resp_len(argc, argv, lens) bytes to out (no NUL). */
void sg_resp_encode(char *out, int argc, const char *const *argv, const size_t *lens);

#endif
