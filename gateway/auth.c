/* SPDX-License-Identifier: Apache-2.0 */
/* auth: JWT verification (docs/protocol.md §1 "JWT claims", §9 "Key rotation").
 *
 * A token goes through three stages, each with its own failure reasons:
 *
 *   1. Front end (ours, before any cryptography): length cap, exactly three
 *      strict base64url segments, the header decoded under a size cap and
 *      parsed by json-c as an object, "alg" compared byte for byte with the
 *      algorithm of the key that will verify it ("bad_alg"), "typ" and "crit"
 *      checked, the payload decoded and parsed as an object ("malformed").
 *      With a JWKS the header's "kid" picks the key ("unknown_kid").
 *   2. Signature: libjwt's jwt_decode with exactly one key, then
 *      jwt_get_alg() is checked again so that libjwt and we agree on what
 *      was verified ("bad_signature" / "bad_alg").
 *   3. Claims: read from the payload bytes the signature covered, parsed by
 *      json-c in stage 1 (libjwt's own jansson view is not consulted, so
 *      one parser decides what the claims are). jansson must still accept
 *      the payload for jwt_decode to succeed: what it refuses (e.g. an
 *      escaped NUL, a number beyond double range) fails as "bad_signature".
 *
 * Claims are only looked at after the signature verified: an unauthenticated
 * caller learns nothing from the failure reason about the claims it sent.
 *
 * "typ": when present it must be a string equal to "JWT" in any case. libjwt
 * 1.10 refuses other values itself; checking here turns that into a clear
 * "malformed" instead of a misleading "bad_signature".
 * "crit": refused when present (RFC 7515 §4.1.11: we understand no
 * extension, so a token that requires one must not be accepted).
 * "jku", "x5u", "jwk", "x5c": ignored; keys only ever come from our config.
 *
 * OpenSSL failures (ours and libjwt's) leave entries on the thread's error
 * queue; every failing path clears it, because the TLS code on the same
 * thread reads that queue after SSL_read/SSL_write. */
#include "sg/auth.h"
#include "sg/util.h"

#include <limits.h>
#include <math.h>
#include <string.h>
#include <strings.h>

#include <json-c/json.h>
#include <jwt.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>

/* Same value as SG_TOKEN_MAX (http_upgrade.h): the longest token the
 * handshake hands us. Kept local so this module builds on its own. */
#define AUTH_TOKEN_MAX 4096
/* Largest decoded JOSE header. Real headers are ~100 bytes; a cap keeps a
 * hostile header from costing more than a page of parsing. */
#define AUTH_HEADER_MAX 1024
/* json-c nesting cap for headers, payloads and JWKS files: a claims object
 * holding an array of strings is depth 2; JWKS with x5c arrays depth 4. */
#define AUTH_JSON_DEPTH 8
#define AUTH_KID_MAX 256            /* longest "kid", in a token or a JWKS */
#define AUTH_ROOM_MAX 128           /* roomId length, docs/protocol.md §2 */
#define AUTH_LEEWAY_MAX 86400       /* more than a day of leeway is a config error */
#define AUTH_JWKS_MAX (1024 * 1024) /* largest JWKS document, bytes */
#define AUTH_JWKS_KEYS_MAX 64       /* most entries in a JWKS "keys" array */
#define AUTH_RSA_N_MAX 1024         /* bytes: RSA moduli up to 8192 bits */
#define AUTH_RSA_E_MAX 8            /* bytes of the RSA public exponent */
#define AUTH_P256_COORD 32          /* bytes of a P-256 coordinate */
/* NumericDate values beyond 2^53 are not exact in most JSON producers and
 * are no real date; refusing them also keeps all time arithmetic in range. */
#define AUTH_TIME_ABS_MAX 9007199254740992LL

/* One verification key. For a single-key auth kid is NULL. key holds the
 * HS256 secret bytes or a canonical PEM of the public key (written by
 * OpenSSL from the parsed key, so libjwt reads exactly what we validated);
 * it is always NUL-terminated, key_len excludes the terminator. */
typedef struct auth_key {
    char *kid;
    sg_alg alg;
    unsigned char *key;
    size_t key_len;
} auth_key;

struct sg_auth {
    bool jwks;          /* a token's "kid" selects among keys */
    auth_key *keys;
    size_t nkeys;
    char *issuer;       /* NULL: not checked */
    char *audience;     /* NULL: not checked */
    int64_t leeway_s;
};

/* ---- small helpers ------------------------------------------------------ */

static const char *alg_name(sg_alg alg)
{
    switch (alg) {
    case SG_ALG_HS256: return "HS256";
    case SG_ALG_RS256: return "RS256";
    case SG_ALG_ES256: return "ES256";
    }
    return NULL;
}

static jwt_alg_t alg_jwt(sg_alg alg)
{
    switch (alg) {
    case SG_ALG_HS256: return JWT_ALG_HS256;
    case SG_ALG_RS256: return JWT_ALG_RS256;
    case SG_ALG_ES256: return JWT_ALG_ES256;
    }
    return JWT_ALG_INVAL;
}

static int set_fail(sg_auth_failure *fail, const char *reason, const char *message)
{
    if (fail) {
        fail->reason = reason;
        fail->message = message;
    }
    return -1;
}

/* a + b, clamped to the int64 range instead of overflowing. */
static int64_t sat_add(int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

static bool is_b64url_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_';
}

static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Strict unpadded base64url (RFC 7515 §2): only the 64 URL-safe characters,
 * no '=', no length that leaves a lone 6-bit group, and the unused low bits
 * of the last group must be zero, so every byte string has exactly one
 * accepted encoding. Writes at most cap bytes; returns -1 when the input is
 * invalid or decodes to more than cap bytes. */
static int b64url_decode(const char *in, size_t n, unsigned char *out, size_t cap,
                         size_t *out_len)
{
    size_t rem = n % 4;
    size_t need = n / 4 * 3 + (rem ? rem - 1 : 0);
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;

    if (rem == 1 || need > cap)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_value((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) /* non-zero padding bits: a non-canonical encoding */
        return -1;
    *out_len = o;
    return 0;
}

/* Parses exactly n bytes as one JSON object (trailing whitespace allowed),
 * strict RFC 8259 syntax, valid UTF-8, nesting capped. NULL otherwise. */
static json_object *parse_json_object(const char *s, size_t n)
{
    json_tokener *tok = NULL;
    json_object *obj = NULL;
    size_t end;

    if (n > INT_MAX)
        goto fail;
    tok = json_tokener_new_ex(AUTH_JSON_DEPTH);
    if (!tok)
        goto fail;
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    obj = json_tokener_parse_ex(tok, s, (int)n);
    if (!obj || json_tokener_get_error(tok) != json_tokener_success)
        goto fail;
    end = json_tokener_get_parse_end(tok);
    for (; end < n; end++) {
        char c = s[end];
        if (c != ' ' && c != '\t' && c != '\r' && c != '\n')
            goto fail;
    }
    if (!json_object_is_type(obj, json_type_object))
        goto fail;
    json_tokener_free(tok);
    return obj;
fail:
    json_object_put(obj);
    json_tokener_free(tok);
    return NULL;
}

/* The string value of a JSON string without embedded NULs, else NULL. */
static const char *json_cstr(json_object *v, size_t *len_out)
{
    const char *s;
    size_t len;

    if (!v || !json_object_is_type(v, json_type_string))
        return NULL;
    s = json_object_get_string(v);
    len = (size_t)json_object_get_string_len(v);
    if (!s || strlen(s) != len)
        return NULL;
    if (len_out)
        *len_out = len;
    return s;
}

static bool json_str_eq(json_object *v, const char *want)
{
    size_t len;
    const char *s = json_cstr(v, &len);
    return s && len == strlen(want) && memcmp(s, want, len) == 0;
}

/* A NumericDate (RFC 7519 §2): an integer, or a double with an integer
 * value, within ±2^53. Returns false for anything else. */
static bool json_numeric_date(json_object *v, int64_t *out)
{
    if (json_object_is_type(v, json_type_int)) {
        int64_t x = json_object_get_int64(v);
        /* json-c clamps out-of-range integers to INT64_MIN/MAX; both are far
         * outside the accepted range, so clamping cannot sneak a value in. */
        if (x > AUTH_TIME_ABS_MAX || x < -AUTH_TIME_ABS_MAX)
            return false;
        *out = x;
        return true;
    }
    if (json_object_is_type(v, json_type_double)) {
        double d = json_object_get_double(v);
        if (!isfinite(d) || d != floor(d) || d > (double)AUTH_TIME_ABS_MAX ||
            d < -(double)AUTH_TIME_ABS_MAX)
            return false;
        *out = (int64_t)d;
        return true;
    }
    return false;
}

/* A rooms-claim entry: "*" alone, or 1..128 roomId characters
 * (docs/protocol.md §2) optionally followed by one '*' making it a prefix. */
static bool room_pattern_valid(const char *s, size_t len)
{
    size_t body = len;

    if (len == 1 && s[0] == '*')
        return true;
    if (len > 0 && s[len - 1] == '*')
        body--;
    if (body < 1 || body > AUTH_ROOM_MAX)
        return false;
    for (size_t i = 0; i < body; i++) {
        unsigned char c = (unsigned char)s[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '.' || c == ':' || c == '/' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

/* sub is logged (hashed), stored in Redis and compared with ACL members:
 * printable text only, no control characters. */
static bool sub_valid(const char *s, size_t len)
{
    if (len == 0 || len > SG_SUB_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

/* ---- construction ------------------------------------------------------- */

static void key_clear(auth_key *k)
{
    if (k->key) {
        /* The HS256 secret must not linger in freed heap memory. */
        OPENSSL_cleanse(k->key, k->key_len);
        free(k->key);
    }
    free(k->kid);
    memset(k, 0, sizeof(*k));
}

void sg_auth_free(sg_auth *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->nkeys; i++)
        key_clear(&a->keys[i]);
    free(a->keys);
    free(a->issuer);
    free(a->audience);
    free(a);
}

/* Common part of both constructors: issuer, audience, leeway. */
static sg_auth *auth_alloc(const sg_auth_config *cfg, const char **err)
{
    sg_auth *a = NULL;

    if (cfg->leeway_s < 0 || cfg->leeway_s > AUTH_LEEWAY_MAX) {
        *err = "JWT leeway must be between 0 and 86400 seconds";
        goto fail;
    }
    if (cfg->issuer && cfg->issuer[0] == '\0') {
        *err = "JWT issuer is empty (leave it unset to skip the check)";
        goto fail;
    }
    if (cfg->audience && cfg->audience[0] == '\0') {
        *err = "JWT audience is empty (leave it unset to skip the check)";
        goto fail;
    }
    a = sg_xcalloc(1, sizeof(*a));
    a->leeway_s = cfg->leeway_s;
    a->issuer = cfg->issuer ? sg_xstrdup(cfg->issuer) : NULL;
    a->audience = cfg->audience ? sg_xstrdup(cfg->audience) : NULL;
    return a;
fail:
    return NULL;
}

/* Checks that pkey is usable for alg: an RSA key (not RSA-PSS, which libjwt
 * 1.10 refuses for RS256) or an EC key on P-256. */
static bool pkey_fits(EVP_PKEY *pkey, sg_alg alg)
{
    char group[64];
    size_t glen = 0;

    if (alg == SG_ALG_RS256)
        return EVP_PKEY_get_base_id(pkey) == EVP_PKEY_RSA;
    if (alg != SG_ALG_ES256 || EVP_PKEY_get_base_id(pkey) != EVP_PKEY_EC)
        return false;
    if (EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                       &glen) != 1)
        return false;
    return strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0;
}

/* Writes pkey as a SubjectPublicKeyInfo PEM into k->key (NUL-terminated). */
static int pkey_to_pem(EVP_PKEY *pkey, auth_key *k)
{
    BIO *bio = NULL;
    char *data = NULL;
    long n;

    bio = BIO_new(BIO_s_mem());
    if (!bio || PEM_write_bio_PUBKEY(bio, pkey) != 1)
        goto fail;
    n = BIO_get_mem_data(bio, &data);
    if (n <= 0 || !data)
        goto fail;
    k->key = sg_xmalloc((size_t)n + 1);
    memcpy(k->key, data, (size_t)n);
    k->key[n] = '\0';
    k->key_len = (size_t)n;
    BIO_free(bio);
    return 0;
fail:
    BIO_free(bio);
    return -1;
}

sg_auth *sg_auth_new(const sg_auth_config *cfg, const char **err)
{
    const char *dummy;
    sg_auth *a = NULL;
    BIO *bio = NULL;
    EVP_PKEY *pkey = NULL;
    size_t len;

    if (!err)
        err = &dummy;
    *err = NULL;
    if (!cfg) {
        *err = "no JWT configuration";
        goto fail;
    }
    if (!alg_name(cfg->alg)) {
        *err = "JWT algorithm must be HS256, RS256 or ES256";
        goto fail;
    }
    a = auth_alloc(cfg, err);
    if (!a)
        goto fail;
    a->keys = sg_xcalloc(1, sizeof(*a->keys));
    a->nkeys = 1;
    a->keys[0].alg = cfg->alg;

    if (cfg->alg == SG_ALG_HS256) {
        if (!cfg->secret || cfg->secret[0] == '\0') {
            *err = "HS256 needs a non-empty JWT secret";
            goto fail;
        }
        len = strlen(cfg->secret);
        if (len > INT_MAX) { /* libjwt takes the key length as an int */
            *err = "JWT secret is too long";
            goto fail;
        }
        a->keys[0].key = (unsigned char *)sg_xstrndup(cfg->secret, len);
        a->keys[0].key_len = len;
        return a;
    }

    if (!cfg->public_key_pem || cfg->public_key_pem[0] == '\0') {
        *err = cfg->alg == SG_ALG_RS256 ? "RS256 needs a PEM public key"
                                        : "ES256 needs a PEM public key";
        goto fail;
    }
    len = strlen(cfg->public_key_pem);
    if (len > INT_MAX) {
        *err = "JWT public key PEM is too long";
        goto fail;
    }
    bio = BIO_new_mem_buf(cfg->public_key_pem, (int)len);
    if (!bio) {
        *err = "out of memory reading the JWT public key";
        goto fail;
    }
    /* The same reader libjwt uses: the first "PUBLIC KEY" block counts. No
     * passphrase callback: public keys are never encrypted. */
    pkey = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    if (!pkey) {
        *err = "JWT public key is not a PEM public key (\"-----BEGIN PUBLIC KEY-----\")";
        goto fail;
    }
    if (!pkey_fits(pkey, cfg->alg)) {
        *err = cfg->alg == SG_ALG_RS256 ? "RS256 needs an RSA public key"
                                        : "ES256 needs an EC P-256 public key";
        goto fail;
    }
    if (pkey_to_pem(pkey, &a->keys[0]) != 0) {
        *err = "cannot re-encode the JWT public key";
        goto fail;
    }
    EVP_PKEY_free(pkey);
    BIO_free(bio);
    return a;
fail:
    ERR_clear_error();
    EVP_PKEY_free(pkey);
    BIO_free(bio);
    sg_auth_free(a);
    return NULL;
}

/* ---- JWKS --------------------------------------------------------------- */

/* Decodes a base64url JWK member into out (at most cap bytes). */
static int jwk_bytes(json_object *jwk, const char *name, unsigned char *out, size_t cap,
                     size_t *out_len)
{
    json_object *v;
    size_t len;
    const char *s;

    if (!json_object_object_get_ex(jwk, name, &v))
        return -1;
    s = json_cstr(v, &len);
    if (!s || len == 0 || b64url_decode(s, len, out, cap, out_len) != 0 || *out_len == 0)
        return -1;
    return 0;
}

/* Builds an EVP_PKEY from an RSA JWK's n and e; NULL when malformed. */
static EVP_PKEY *jwk_rsa(json_object *jwk)
{
    unsigned char n[AUTH_RSA_N_MAX], e[AUTH_RSA_E_MAX];
    size_t nlen, elen;
    BIGNUM *bn_n = NULL, *bn_e = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *pkey = NULL;

    if (jwk_bytes(jwk, "n", n, sizeof(n), &nlen) != 0 ||
        jwk_bytes(jwk, "e", e, sizeof(e), &elen) != 0)
        goto fail;
    bn_n = BN_bin2bn(n, (int)nlen, NULL);
    bn_e = BN_bin2bn(e, (int)elen, NULL);
    bld = OSSL_PARAM_BLD_new();
    if (!bn_n || !bn_e || !bld ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e))
        goto fail;
    params = OSSL_PARAM_BLD_to_param(bld);
    ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        goto fail;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn_n);
    BN_free(bn_e);
    return pkey;
fail:
    EVP_PKEY_free(pkey);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn_n);
    BN_free(bn_e);
    return NULL;
}

/* Builds an EVP_PKEY from a P-256 JWK's x and y; NULL when malformed
 * (including a point that is not on the curve). */
static EVP_PKEY *jwk_p256(json_object *jwk)
{
    unsigned char pub[1 + 2 * AUTH_P256_COORD];
    size_t xlen, ylen;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *pkey = NULL;

    /* Coordinates are fixed-length (RFC 7518 §6.2.1.2): exactly 32 bytes. */
    pub[0] = 0x04; /* uncompressed point */
    if (jwk_bytes(jwk, "x", pub + 1, AUTH_P256_COORD, &xlen) != 0 || xlen != AUTH_P256_COORD ||
        jwk_bytes(jwk, "y", pub + 1 + AUTH_P256_COORD, AUTH_P256_COORD, &ylen) != 0 ||
        ylen != AUTH_P256_COORD)
        goto fail;
    bld = OSSL_PARAM_BLD_new();
    if (!bld ||
        !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof(pub)))
        goto fail;
    params = OSSL_PARAM_BLD_to_param(bld);
    ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        goto fail;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    return pkey;
fail:
    EVP_PKEY_free(pkey);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    return NULL;
}

/* OpenSSL's own public-key validation (odd RSA modulus and exponent, EC
 * point on the curve and not at infinity). */
static bool pkey_public_ok(EVP_PKEY *pkey)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    bool ok = ctx && EVP_PKEY_public_check(ctx) == 1;
    EVP_PKEY_CTX_free(ctx);
    return ok;
}

/* Reads one JWKS entry into k. Returns 1 when the key is usable, 0 when it
 * is of a kind we skip (other kty/curve/alg, "use" other than "sig", no
 * kid), -1 when it claims to be a usable key but is broken. */
static int jwk_load(json_object *jwk, auth_key *k, const char **err)
{
    json_object *v;
    const char *kty, *kid;
    size_t kid_len;
    sg_alg alg;
    EVP_PKEY *pkey = NULL;

    if (!json_object_is_type(jwk, json_type_object)) {
        *err = "JWKS \"keys\" entry is not an object";
        goto fail;
    }
    if (!json_object_object_get_ex(jwk, "kty", &v) || !(kty = json_cstr(v, NULL))) {
        *err = "JWKS key without a \"kty\" string";
        goto fail;
    }
    if (strcmp(kty, "RSA") == 0) {
        alg = SG_ALG_RS256;
    } else if (strcmp(kty, "EC") == 0) {
        if (!json_object_object_get_ex(jwk, "crv", &v) || !json_str_eq(v, "P-256"))
            return 0;
        alg = SG_ALG_ES256;
    } else {
        return 0;
    }
    /* An encryption key ("use":"enc") never verifies signatures. */
    if (json_object_object_get_ex(jwk, "use", &v) && !json_str_eq(v, "sig"))
        return 0;
    /* A key declared for another algorithm (RS512, PS256, ES256K...) is not
     * ours to use with RS256/ES256. */
    if (json_object_object_get_ex(jwk, "alg", &v) && !json_str_eq(v, alg_name(alg)))
        return 0;
    /* Without a kid no token can select the key. */
    if (!json_object_object_get_ex(jwk, "kid", &v))
        return 0;
    kid = json_cstr(v, &kid_len);
    if (!kid || kid_len == 0 || kid_len > AUTH_KID_MAX) {
        *err = "JWKS key with a \"kid\" that is not a string of 1-256 bytes";
        goto fail;
    }

    pkey = alg == SG_ALG_RS256 ? jwk_rsa(jwk) : jwk_p256(jwk);
    if (!pkey || !pkey_public_ok(pkey)) {
        *err = alg == SG_ALG_RS256 ? "JWKS RSA key with a missing or invalid \"n\"/\"e\""
                                   : "JWKS P-256 key with a missing or invalid \"x\"/\"y\"";
        goto fail;
    }
    if (pkey_to_pem(pkey, k) != 0) {
        *err = "cannot encode a JWKS key as PEM";
        goto fail;
    }
    k->kid = sg_xstrndup(kid, kid_len);
    k->alg = alg;
    EVP_PKEY_free(pkey);
    return 1;
fail:
    EVP_PKEY_free(pkey);
    return -1;
}

sg_auth *sg_auth_new_jwks(const char *jwks_json, size_t len, const sg_auth_config *cfg,
                          const char **err)
{
    const char *dummy;
    sg_auth *a = NULL;
    json_object *root = NULL, *keys;
    size_t n;

    if (!err)
        err = &dummy;
    *err = NULL;
    if (!cfg) {
        *err = "no JWT configuration";
        goto fail;
    }
    if (!jwks_json || len == 0 || len > AUTH_JWKS_MAX) {
        *err = "JWKS document is empty or larger than 1 MiB";
        goto fail;
    }
    root = parse_json_object(jwks_json, len);
    if (!root) {
        *err = "JWKS document is not a JSON object";
        goto fail;
    }
    if (!json_object_object_get_ex(root, "keys", &keys) ||
        !json_object_is_type(keys, json_type_array)) {
        *err = "JWKS document has no \"keys\" array";
        goto fail;
    }
    n = json_object_array_length(keys);
    if (n > AUTH_JWKS_KEYS_MAX) {
        *err = "JWKS document has more than 64 keys";
        goto fail;
    }
    a = auth_alloc(cfg, err);
    if (!a)
        goto fail;
    a->jwks = true;
    a->keys = sg_xcalloc(n ? n : 1, sizeof(*a->keys));

    for (size_t i = 0; i < n; i++) {
        auth_key *k = &a->keys[a->nkeys];
        int r = jwk_load(json_object_array_get_idx(keys, i), k, err);
        if (r < 0)
            goto fail;
        if (r == 0)
            continue;
        /* Two keys under one kid would make the choice of key depend on
         * file order: refuse the file, the caller keeps the old keys. */
        for (size_t j = 0; j < a->nkeys; j++) {
            if (strcmp(a->keys[j].kid, k->kid) == 0) {
                key_clear(k);
                *err = "JWKS document has two usable keys with the same \"kid\"";
                goto fail;
            }
        }
        a->nkeys++;
    }
    if (a->nkeys == 0) {
        *err = "JWKS document has no usable RS256 (RSA) or ES256 (EC P-256) key with a \"kid\"";
        goto fail;
    }
    json_object_put(root);
    return a;
fail:
    ERR_clear_error();
    json_object_put(root);
    sg_auth_free(a);
    return NULL;
}

size_t sg_auth_key_count(const sg_auth *a)
{
    return a ? a->nkeys : 0;
}

/* ---- claims ------------------------------------------------------------- */

void sg_claims_clear(sg_claims *c)
{
    if (!c)
        return;
    free(c->rooms);
    free(c->sub);
    memset(c, 0, sizeof(*c));
}

bool sg_claims_room_allowed(const sg_claims *c, const char *room)
{
    if (!c || !c->rooms || !room)
        return false;
    for (size_t i = 0; i < c->nrooms; i++) {
        const char *p = c->rooms[i];
        size_t len = strlen(p);
        if (len > 0 && p[len - 1] == '*') {
            /* "*" is the empty prefix: every room. */
            if (strncmp(room, p, len - 1) == 0)
                return true;
        } else if (strcmp(room, p) == 0) {
            return true;
        }
    }
    return false;
}

/* Copies a validated rooms array into one allocation: the pointer table
 * followed by the strings. An empty array still yields a non-NULL table so
 * "present but empty" stays distinguishable from "absent". */
static void rooms_copy(json_object *arr, sg_claims *c)
{
    size_t n = json_object_array_length(arr);
    size_t total = (n ? n : 1) * sizeof(char *);
    char *p;

    for (size_t i = 0; i < n; i++)
        total += (size_t)json_object_get_string_len(json_object_array_get_idx(arr, i)) + 1;
    c->rooms = sg_xmalloc(total);
    p = (char *)(c->rooms + (n ? n : 1));
    for (size_t i = 0; i < n; i++) {
        json_object *v = json_object_array_get_idx(arr, i);
        size_t len = (size_t)json_object_get_string_len(v);
        memcpy(p, json_object_get_string(v), len);
        p[len] = '\0';
        c->rooms[i] = p;
        p += len + 1;
    }
    c->nrooms = n;
}

static bool rooms_valid(json_object *arr)
{
    size_t n;

    if (!json_object_is_type(arr, json_type_array))
        return false;
    n = json_object_array_length(arr);
    if (n > SG_ROOMS_CLAIM_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *s = json_cstr(json_object_array_get_idx(arr, i), &len);
        if (!s || !room_pattern_valid(s, len))
            return false;
    }
    return true;
}

static bool audience_matches(json_object *aud, const char *want)
{
    size_t n;

    if (json_object_is_type(aud, json_type_string))
        return json_str_eq(aud, want);
    if (!json_object_is_type(aud, json_type_array))
        return false;
    n = json_object_array_length(aud);
    for (size_t i = 0; i < n; i++) {
        if (json_str_eq(json_object_array_get_idx(aud, i), want))
            return true;
    }
    return false;
}

/* Checks the verified payload and fills claims. */
static int check_claims(const sg_auth *a, json_object *pl, int64_t now_s, sg_claims *claims,
                        sg_auth_failure *fail)
{
    json_object *v, *rooms = NULL;
    const char *sub;
    size_t sub_len;
    int64_t exp, nbf = 0, iat = 0;
    bool has_nbf = false, has_iat = false;

    if (!json_object_object_get_ex(pl, "sub", &v))
        return set_fail(fail, "missing_sub", "token has no sub claim");
    sub = json_cstr(v, &sub_len);
    if (!sub || !sub_valid(sub, sub_len))
        return set_fail(fail, "bad_claims",
                        "sub claim must be a string of 1-256 bytes without control characters");
    if (!json_object_object_get_ex(pl, "exp", &v))
        return set_fail(fail, "missing_exp", "token has no exp claim");
    if (!json_numeric_date(v, &exp))
        return set_fail(fail, "bad_claims", "exp claim is not an integer date");
    if (json_object_object_get_ex(pl, "nbf", &v)) {
        if (!json_numeric_date(v, &nbf))
            return set_fail(fail, "bad_claims", "nbf claim is not an integer date");
        has_nbf = true;
    }
    if (json_object_object_get_ex(pl, "iat", &v)) {
        if (!json_numeric_date(v, &iat))
            return set_fail(fail, "bad_claims", "iat claim is not an integer date");
        has_iat = true;
    }
    if (json_object_object_get_ex(pl, "rooms", &rooms) && !rooms_valid(rooms))
        return set_fail(fail, "bad_claims",
                        "rooms claim must be an array of at most 64 room IDs or patterns");
    if (a->issuer &&
        (!json_object_object_get_ex(pl, "iss", &v) || !json_str_eq(v, a->issuer)))
        return set_fail(fail, "bad_issuer", "iss claim does not match the configured issuer");
    if (a->audience &&
        (!json_object_object_get_ex(pl, "aud", &v) || !audience_matches(v, a->audience)))
        return set_fail(fail, "bad_audience",
                        "aud claim does not contain the configured audience");
    /* Leeway widens every window: expired only once now > exp + leeway. */
    if (now_s > sat_add(exp, a->leeway_s))
        return set_fail(fail, "expired", "token has expired (exp)");
    if (has_nbf && sat_add(now_s, a->leeway_s) < nbf)
        return set_fail(fail, "not_yet_valid", "token is not valid yet (nbf)");
    if (has_iat && iat > sat_add(now_s, a->leeway_s))
        return set_fail(fail, "iat_future", "token was issued in the future (iat)");

    claims->sub = sg_xstrndup(sub, sub_len);
    claims->exp = exp;
    if (rooms)
        rooms_copy(rooms, claims);
    return 0;
}

/* ---- verification ------------------------------------------------------- */

/* Picks the key for a token whose header is hdr, or fails with bad_alg /
 * unknown_kid. The alg comparison is exact (libjwt itself compares
 * case-insensitively, so "hs256" must be stopped here). */
static const auth_key *select_key(const sg_auth *a, json_object *hdr, sg_auth_failure *fail)
{
    json_object *alg, *kid;
    size_t kid_len;
    const char *kid_s;

    if (!json_object_object_get_ex(hdr, "alg", &alg) || !json_cstr(alg, NULL)) {
        set_fail(fail, "bad_alg", "token header has no alg");
        return NULL;
    }
    if (!a->jwks) {
        if (!json_str_eq(alg, alg_name(a->keys[0].alg))) {
            set_fail(fail, "bad_alg", "token alg is not the configured algorithm");
            return NULL;
        }
        return &a->keys[0];
    }
    /* JWKS keys are RS256 or ES256 only; refusing other algs before looking
     * at kid makes "none" and HS256 fail the same way as without a JWKS. */
    if (!json_str_eq(alg, "RS256") && !json_str_eq(alg, "ES256")) {
        set_fail(fail, "bad_alg", "token alg is not RS256 or ES256");
        return NULL;
    }
    if (!json_object_object_get_ex(hdr, "kid", &kid) || !(kid_s = json_cstr(kid, &kid_len)) ||
        kid_len == 0 || kid_len > AUTH_KID_MAX) {
        set_fail(fail, "unknown_kid", "token header has no kid");
        return NULL;
    }
    for (size_t i = 0; i < a->nkeys; i++) {
        const auth_key *k = &a->keys[i];
        if (strlen(k->kid) != kid_len || memcmp(k->kid, kid_s, kid_len) != 0)
            continue;
        if (!json_str_eq(alg, alg_name(k->alg))) {
            set_fail(fail, "bad_alg", "token alg does not match the key selected by kid");
            return NULL;
        }
        return k;
    }
    set_fail(fail, "unknown_kid", "token kid names no known key");
    return NULL;
}

int sg_auth_verify(const sg_auth *a, const char *token, size_t len, int64_t now_s,
                   sg_claims *claims, sg_auth_failure *fail)
{
    char tok[AUTH_TOKEN_MAX + 1];
    unsigned char hbuf[AUTH_HEADER_MAX];
    unsigned char pbuf[AUTH_TOKEN_MAX / 4 * 3];
    size_t dot1 = 0, dot2 = 0, ndots = 0, hlen, plen;
    json_object *hdr = NULL, *pl = NULL, *v;
    jwt_t *jwt = NULL;
    const auth_key *key;
    int jrc, rc = -1;

    if (claims)
        memset(claims, 0, sizeof(*claims));
    if (!a || !claims) {
        set_fail(fail, "malformed", "no verifier or no claims");
        goto fail;
    }
    if (!token || len == 0) {
        set_fail(fail, "malformed", "token is empty");
        goto fail;
    }
    if (len > AUTH_TOKEN_MAX) {
        set_fail(fail, "malformed", "token is longer than 4096 bytes");
        goto fail;
    }
    for (size_t i = 0; i < len; i++) {
        if (token[i] == '.') {
            if (ndots == 0)
                dot1 = i;
            else if (ndots == 1)
                dot2 = i;
            ndots++;
        } else if (!is_b64url_char((unsigned char)token[i])) {
            set_fail(fail, "malformed", "token has a character outside base64url");
            goto fail;
        }
    }
    if (ndots != 2) {
        set_fail(fail, "malformed", "token does not have three dot-separated parts");
        goto fail;
    }

    if (b64url_decode(token, dot1, hbuf, sizeof(hbuf), &hlen) != 0 || hlen == 0) {
        set_fail(fail, "malformed", "token header is not base64url or is too large");
        goto fail;
    }
    hdr = parse_json_object((const char *)hbuf, hlen);
    if (!hdr) {
        set_fail(fail, "malformed", "token header is not a JSON object");
        goto fail;
    }
    key = select_key(a, hdr, fail);
    if (!key)
        goto fail;
    if (json_object_object_get_ex(hdr, "typ", &v)) {
        const char *typ = json_cstr(v, NULL);
        if (!typ || strcasecmp(typ, "JWT") != 0) {
            set_fail(fail, "malformed", "token header typ is not JWT");
            goto fail;
        }
    }
    if (json_object_object_get_ex(hdr, "crit", &v)) {
        set_fail(fail, "malformed", "token header has crit extensions");
        goto fail;
    }

    if (b64url_decode(token + dot1 + 1, dot2 - dot1 - 1, pbuf, sizeof(pbuf), &plen) != 0 ||
        plen == 0) {
        set_fail(fail, "malformed", "token payload is not base64url");
        goto fail;
    }
    pl = parse_json_object((const char *)pbuf, plen);
    if (!pl) {
        set_fail(fail, "malformed", "token payload is not a JSON object");
        goto fail;
    }
    if (dot2 + 1 == len) {
        set_fail(fail, "bad_signature", "token has no signature");
        goto fail;
    }

    /* libjwt 1.10 wants a NUL-terminated token; len <= AUTH_TOKEN_MAX. */
    memcpy(tok, token, len);
    tok[len] = '\0';
    jrc = jwt_decode(&jwt, tok, key->key, (int)key->key_len);
    /* Cleared on success too: OpenSSL 3's PEM decoders can leave entries
     * behind even when a key was read. */
    ERR_clear_error();
    if (jrc != 0 || !jwt) {
        set_fail(fail, "bad_signature", "token signature does not verify");
        goto fail;
    }
    /* Belt and braces: libjwt must have verified with the algorithm we chose. */
    if (jwt_get_alg(jwt) != alg_jwt(key->alg)) {
        set_fail(fail, "bad_alg", "token alg is not the configured algorithm");
        goto fail;
    }

    if (check_claims(a, pl, now_s, claims, fail) != 0)
        goto fail;
    rc = 0;
fail:
    jwt_free(jwt);
    json_object_put(pl);
    json_object_put(hdr);
    return rc;
}

/* ---- minting ------------------------------------------------------------ */

char *sg_auth_mint_hs256(const char *secret, const char *sub, const char *const *rooms,
                         size_t nrooms, int64_t now_s, int64_t ttl_s, const char *issuer,
                         const char *audience)
{
    json_object *grants = NULL, *arr = NULL;
    jwt_t *jwt = NULL;
    char *out = NULL;
    const char *js;
    int64_t exp;
    size_t secret_len;

    if (!secret || secret[0] == '\0' || !sub || !sub_valid(sub, strlen(sub)) || ttl_s <= 0 ||
        nrooms > SG_ROOMS_CLAIM_MAX || (nrooms > 0 && !rooms) ||
        __builtin_add_overflow(now_s, ttl_s, &exp))
        goto fail;
    secret_len = strlen(secret);
    if (secret_len > INT_MAX)
        goto fail;

    /* All grants go through one JSON object so 64-bit dates need no
     * assumption about the width of libjwt's `long`. */
    grants = json_object_new_object();
    if (!grants)
        goto fail;
    json_object_object_add(grants, "sub", json_object_new_string(sub));
    json_object_object_add(grants, "iat", json_object_new_int64(now_s));
    json_object_object_add(grants, "exp", json_object_new_int64(exp));
    if (issuer)
        json_object_object_add(grants, "iss", json_object_new_string(issuer));
    if (audience)
        json_object_object_add(grants, "aud", json_object_new_string(audience));
    if (rooms) {
        arr = json_object_new_array();
        if (!arr)
            goto fail;
        for (size_t i = 0; i < nrooms; i++) {
            /* A token we mint must pass our own verifier. */
            if (!rooms[i] || !room_pattern_valid(rooms[i], strlen(rooms[i])))
                goto fail;
            json_object_array_add(arr, json_object_new_string(rooms[i]));
        }
        json_object_object_add(grants, "rooms", arr);
        arr = NULL; /* owned by grants now */
    }
    js = json_object_to_json_string_ext(grants,
                                        JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    if (!js)
        goto fail;

    if (jwt_new(&jwt) != 0 || jwt_add_grants_json(jwt, js) != 0 ||
        jwt_set_alg(jwt, JWT_ALG_HS256, (const unsigned char *)secret, (int)secret_len) != 0)
        goto fail;
    out = jwt_encode_str(jwt);
fail:
    if (!out)
        ERR_clear_error();
    jwt_free(jwt);
    json_object_put(arr);
    json_object_put(grants);
    return out;
}
