/* SPDX-License-Identifier: Apache-2.0 */
/* turn: time-limited TURN credentials in coturn's shared-secret scheme
 * (docs/protocol.md §9): username "<expiry unix time>:<keyed hash of sub>",
 * credential base64(HMAC-SHA1(secret, username)). Pure. */
#ifndef SG_TURN_H
#define SG_TURN_H

#include <stdint.h>
#include "sg/buf.h"

/* Appends ,"iceServers":[{"urls":[...],"username":..,"credential":..}] for
 * the comma-separated urls. The user part is HMAC-SHA256(secret, sub)
 * truncated to 16 hex chars, so the TURN server never sees the raw sub. */
void sg_turn_append_ice_servers(sg_buf *out, const char *secret, const char *urls,
                                const char *sub, int64_t now_s, int64_t ttl_s);

/* The credential for a username (base64 of HMAC-SHA1), NUL-terminated; out
 * must hold 29 bytes. */
void sg_turn_credential(const char *secret, const char *username, char out[29]);

#endif
