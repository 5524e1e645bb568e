/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer driver for gateway/auth.c. Every input is used three ways:
 *
 *   1. as a bearer token for an HS256 verifier: the front end (length cap,
 *      segments, base64url, header JSON, alg/typ/crit) and, for inputs that
 *      get that far, libjwt's decoder;
 *   2. as a JWKS document for sg_auth_new_jwks (JSON, JWK members, OpenSSL
 *      key construction and PEM encoding);
 *   3. as the payload of a token the driver signs with the verifier's
 *      secret, so the claims checks (which only run after the signature
 *      verified) are reached too.
 *
 * Verifiers are built per input: the driver keeps no state between runs. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "sg/auth.h"

#define FUZZ_SECRET "fuzz-secret"
#define FUZZ_NOW 1700000000

static size_t b64url(const uint8_t *in, size_t n, char *out)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = tab[(v >> 6) & 63];
        if (i + 2 < n)
            out[o++] = tab[v & 63];
    }
    return o;
}

static void check(const sg_auth *a, const char *tok, size_t len)
{
    sg_claims c;
    sg_auth_failure fail;

    if (sg_auth_verify(a, tok, len, FUZZ_NOW, &c, &fail) == 0) {
        (void)sg_claims_room_allowed(&c, "lobby");
        if (c.nrooms > 0)
            (void)sg_claims_room_allowed(&c, c.rooms[0]);
        sg_claims_clear(&c);
    } else if (!fail.reason || !fail.message) {
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sg_auth_config cfg = {.alg = SG_ALG_HS256, .secret = FUZZ_SECRET, .leeway_s = 30};
    sg_auth_config cfg_ia = {.alg = SG_ALG_HS256, .secret = FUZZ_SECRET, .issuer = "idp",
                             .audience = "signal", .leeway_s = 30};
    sg_auth *a = sg_auth_new(&cfg, NULL);
    sg_auth *ia = sg_auth_new(&cfg_ia, NULL);
    sg_auth *jwks;
    char tok[4200];
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    size_t n;

    if (!a || !ia)
        abort();

    /* 1. The input is a token. */
    check(a, (const char *)data, size);

    /* 2. The input is a JWKS document. */
    jwks = sg_auth_new_jwks((const char *)data, size, &cfg, NULL);
    sg_auth_free(jwks);

    /* 3. The input is a signed payload: {"alg":"HS256"}.<input>.<hmac>. */
    if (size <= 3000) {
        n = b64url((const uint8_t *)"{\"alg\":\"HS256\"}", 15, tok);
        tok[n++] = '.';
        n += b64url(data, size, tok + n);
        if (!HMAC(EVP_sha256(), FUZZ_SECRET, (int)strlen(FUZZ_SECRET), (const uint8_t *)tok, n,
                  mac, &maclen))
            abort();
        tok[n++] = '.';
        n += b64url(mac, maclen, tok + n);
        check(a, tok, n);
        check(ia, tok, n);
    }

    sg_auth_free(a);
    sg_auth_free(ia);
    return 0;
}
