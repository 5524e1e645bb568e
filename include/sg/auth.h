/* SPDX-License-Identifier: Apache-2.0 */
/* auth: JWT verification for the handshake (docs/protocol.md §1) and dev token
 * minting. The front end (segment split, base64url and header checks) runs
 * before libjwt sees the token, so a token whose header names any algorithm
 * other than the configured one never reaches signature verification: a
 * public key can never be used as an HMAC secret, and "none" is refused. */
#ifndef SG_AUTH_H
#define SG_AUTH_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define SG_SUB_MAX 256         /* longest accepted `sub`, bytes */
#define SG_ROOMS_CLAIM_MAX 64  /* most entries in the `rooms` claim */

typedef enum { SG_ALG_HS256 = 1, SG_ALG_RS256, SG_ALG_ES256 } sg_alg;

typedef struct sg_auth sg_auth; /* opaque: algorithm, key(s), iss, aud, leeway */

typedef struct sg_auth_config {
    sg_alg alg;
    const char *secret;          /* HS256 */
    const char *public_key_pem;  /* RS256/ES256: PEM text (not a path) */
    const char *issuer;          /* NULL: not checked */
    const char *audience;        /* NULL: not checked */
    int64_t leeway_s;
} sg_auth_config;

/* Returns NULL and sets *err (static string) when the config is unusable
 * (no secret, a PEM that does not parse as a key of the algorithm's type...). */
sg_auth *sg_auth_new(const sg_auth_config *cfg, const char **err);

/* Key rotation (docs/protocol.md §9): an auth over the keys of a JWKS document
 * (len bytes, at most 1 MiB, not necessarily NUL-terminated). Usable keys are
 * RSA (n, e) for RS256 and EC P-256 (crv, x, y) for ES256, each with a "kid";
 * a key's optional "alg" must name that algorithm and its optional "use" must
 * be "sig", else the key is skipped, as are other key types and curves. A
 * token's header "kid" picks the key ("unknown_kid" when missing or unknown)
 * and its "alg" must be the key's ("bad_alg"). From cfg only issuer, audience
 * and leeway_s are used. Returns NULL and sets *err (static string) when the
 * document is not JSON, has no usable key, has a broken RSA/P-256 key, or has
 * two usable keys with one kid. Reload (SIGHUP) = build a new sg_auth and swap
 * it in; on NULL keep the old one. Holds no global state. */
sg_auth *sg_auth_new_jwks(const char *jwks_json, size_t len, const sg_auth_config *cfg,
                          const char **err);
/* Number of verification keys (1 for sg_auth_new), for the reload log. */
size_t sg_auth_key_count(const sg_auth *a);
void sg_auth_free(sg_auth *a);

/* Verified claims. rooms[i] are NUL-terminated strings inside one allocation. */
typedef struct sg_claims {
    char *sub;        /* heap, exact length (an idle connection keeps it) */
    int64_t exp;
    char **rooms;     /* NULL when the claim is absent */
    size_t nrooms;
} sg_claims;

/* Frees rooms and zeroes c. sg_auth_verify overwrites its claims argument
 * without freeing: clear a claims that holds rooms before reusing it. */
void sg_claims_clear(sg_claims *c);

/* Failure reasons, stable strings used in messages, logs and metric labels:
 * "malformed", "bad_alg", "bad_signature", "expired", "not_yet_valid",
 * "iat_future", "bad_issuer", "bad_audience", "missing_sub", "missing_exp",
 * "bad_claims" (wrong types, rooms not an array of valid strings...),
 * "unknown_kid" (JWKS only: the header's kid is missing or names no key). */
typedef struct sg_auth_failure {
    const char *reason;
    const char *message; /* for the 401 body: says which check failed, never the key */
} sg_auth_failure;

/* Verifies token (len bytes, not necessarily NUL-terminated) at wall time
 * now_s. Returns 0 and fills claims, or -1 and fills fail (claims zeroed).
 * Claims are only examined once the signature verified. Thread-safe: a is
 * only read. */
int sg_auth_verify(const sg_auth *a, const char *token, size_t len, int64_t now_s,
                   sg_claims *claims, sg_auth_failure *fail);

/* Does the rooms claim allow roomId? Entry "*" allows any room; an entry
 * ending in '*' is a prefix (the entry team-7/ followed by '*' allows
 * "team-7/x"); else exact. */
bool sg_claims_room_allowed(const sg_claims *c, const char *room);

/* HS256 dev token: {"sub":sub,"iat":now,"exp":now+ttl,"rooms":[room...]}
 * (+ iss/aud when given). Returns a malloc'd string or NULL. */
char *sg_auth_mint_hs256(const char *secret, const char *sub, const char *const *rooms,
                         size_t nrooms, int64_t now_s, int64_t ttl_s,
                         const char *issuer, const char *audience);

#endif
