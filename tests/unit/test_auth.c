/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for gateway/auth.c (docs/protocol.md §1 JWT claims, §9 key rotation).
 *
 * Keys are generated once per run with OpenSSL (RSA 2048 and EC P-256, two of
 * each for rotation and wrong-key cases); nothing is committed. Tokens are
 * built here byte by byte (header JSON, payload JSON, signature computed with
 * OpenSSL) so that any header can be tried, and a few are built with libjwt's
 * own encoder to check interoperability. Time comes only from the now_s
 * argument: NOW is a fixed instant. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <jwt.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "sg/auth.h"

#define NOW 1700000000LL
#define LEEWAY 30
#define SECRET "test-secret-0123456789abcdef0123456789"

/* ---- fixture: keys generated once per run ------------------------------- */

typedef struct keypair {
    EVP_PKEY *pkey;
    char *priv_pem;
    char *pub_pem;
} keypair;

typedef struct fixture {
    keypair rsa, rsa2, ec, ec2, p384;
} fixture;

static char *bio_string(BIO *bio)
{
    char *data = NULL;
    long n = BIO_get_mem_data(bio, &data);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    memcpy(s, data, (size_t)n);
    s[n] = '\0';
    return s;
}

static void keypair_fill(keypair *kp, EVP_PKEY *pkey)
{
    BIO *priv = BIO_new(BIO_s_mem());
    BIO *pub = BIO_new(BIO_s_mem());
    assert_non_null(pkey);
    assert_int_equal(PEM_write_bio_PrivateKey(priv, pkey, NULL, NULL, 0, NULL, NULL), 1);
    assert_int_equal(PEM_write_bio_PUBKEY(pub, pkey), 1);
    kp->pkey = pkey;
    kp->priv_pem = bio_string(priv);
    kp->pub_pem = bio_string(pub);
    BIO_free(priv);
    BIO_free(pub);
}

static void keypair_free(keypair *kp)
{
    EVP_PKEY_free(kp->pkey);
    free(kp->priv_pem);
    free(kp->pub_pem);
}

static int group_setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    keypair_fill(&f->rsa, EVP_RSA_gen(2048));
    keypair_fill(&f->rsa2, EVP_RSA_gen(2048));
    keypair_fill(&f->ec, EVP_EC_gen("P-256"));
    keypair_fill(&f->ec2, EVP_EC_gen("P-256"));
    keypair_fill(&f->p384, EVP_EC_gen("P-384"));
    *state = f;
    return 0;
}

static int group_teardown(void **state)
{
    fixture *f = *state;
    keypair_free(&f->rsa);
    keypair_free(&f->rsa2);
    keypair_free(&f->ec);
    keypair_free(&f->ec2);
    keypair_free(&f->p384);
    free(f);
    return 0;
}

/* ---- token building ----------------------------------------------------- */

static char *b64url(const void *data, size_t n)
{
    const char *tab = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *p = data;
    char *out = malloc(n / 3 * 4 + 5);
    size_t o = 0, i = 0;

    assert_non_null(out);
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63];
        out[o++] = tab[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63];
    }
    out[o] = '\0';
    return out;
}

typedef enum { SIG_EMPTY, SIG_HS256, SIG_RS256, SIG_ES256 } sig_kind;

/* Signs input with the given kind; returns the base64url signature. */
static char *sign(sig_kind kind, const void *key, size_t keylen, const char *input)
{
    unsigned char mac[EVP_MAX_MD_SIZE], raw[64], *der = NULL;
    unsigned int maclen = 0;
    size_t derlen = 0;
    char *out;

    if (kind == SIG_EMPTY)
        return strdup("");
    if (kind == SIG_HS256) {
        assert_non_null(HMAC(EVP_sha256(), key, (int)keylen, (const unsigned char *)input,
                             strlen(input), mac, &maclen));
        return b64url(mac, maclen);
    }
    {
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, (EVP_PKEY *)key), 1);
        assert_int_equal(EVP_DigestSign(md, NULL, &derlen, (const unsigned char *)input,
                                        strlen(input)), 1);
        der = malloc(derlen);
        assert_int_equal(EVP_DigestSign(md, der, &derlen, (const unsigned char *)input,
                                        strlen(input)), 1);
        EVP_MD_CTX_free(md);
    }
    if (kind == SIG_RS256) {
        out = b64url(der, derlen);
    } else {
        /* JWS ES256 signatures are R || S, 32 bytes each, not DER. */
        const unsigned char *p = der;
        ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)derlen);
        const BIGNUM *r, *s;
        assert_non_null(es);
        ECDSA_SIG_get0(es, &r, &s);
        assert_int_equal(BN_bn2binpad(r, raw, 32), 32);
        assert_int_equal(BN_bn2binpad(s, raw + 32, 32), 32);
        ECDSA_SIG_free(es);
        out = b64url(raw, 64);
    }
    free(der);
    return out;
}

/* header.payload.signature from raw JSON texts. */
static char *make_token(const char *header, const char *payload, sig_kind kind, const void *key,
                        size_t keylen)
{
    char *h = b64url(header, strlen(header));
    char *p = b64url(payload, strlen(payload));
    size_t n = strlen(h) + strlen(p) + 2;
    char *input = malloc(n);
    char *sig, *tok;

    snprintf(input, n, "%s.%s", h, p);
    sig = sign(kind, key, keylen, input);
    tok = malloc(n + strlen(sig) + 1);
    snprintf(tok, n + strlen(sig) + 1, "%s.%s", input, sig);
    free(h);
    free(p);
    free(input);
    free(sig);
    return tok;
}

static char *hs_token(const char *payload)
{
    return make_token("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", payload, SIG_HS256, SECRET,
                      strlen(SECRET));
}

static char *rs_token(EVP_PKEY *k, const char *payload)
{
    return make_token("{\"alg\":\"RS256\",\"typ\":\"JWT\"}", payload, SIG_RS256, k, 0);
}

static char *es_token(EVP_PKEY *k, const char *payload)
{
    return make_token("{\"alg\":\"ES256\",\"typ\":\"JWT\"}", payload, SIG_ES256, k, 0);
}

/* A payload with sub "alice" and exp = NOW + 600, plus extra members. */
static char *payload_with(const char *extra)
{
    char *p = malloc(strlen(extra) + 64);
    sprintf(p, "{\"sub\":\"alice\",\"exp\":%lld%s%s}", NOW + 600, extra[0] ? "," : "", extra);
    return p;
}

/* ---- auth builders and assertions --------------------------------------- */

static sg_auth *auth_cfg(sg_alg alg, const char *secret, const char *pem, const char *iss,
                         const char *aud)
{
    sg_auth_config cfg = {.alg = alg, .secret = secret, .public_key_pem = pem,
                          .issuer = iss, .audience = aud, .leeway_s = LEEWAY};
    const char *err = NULL;
    sg_auth *a = sg_auth_new(&cfg, &err);
    if (!a)
        fail_msg("sg_auth_new: %s", err);
    return a;
}

static sg_auth *hs_auth(void)
{
    return auth_cfg(SG_ALG_HS256, SECRET, NULL, NULL, NULL);
}

static int verify_at(const sg_auth *a, const char *tok, int64_t now, sg_claims *c,
                     sg_auth_failure *fail)
{
    memset(fail, 0, sizeof(*fail));
    return sg_auth_verify(a, tok, strlen(tok), now, c, fail);
}

/* Verifies tok and expects success; returns the claims (caller clears). */
static void expect_ok_at(const sg_auth *a, const char *tok, int64_t now, sg_claims *c)
{
    sg_auth_failure fail;
    int rc = verify_at(a, tok, now, c, &fail);
    if (rc != 0)
        fail_msg("expected success, got %s: %s", fail.reason, fail.message);
}

/* The same, for callers that do not look at the claims. */
static void expect_ok_at_cleared(const sg_auth *a, const char *tok, int64_t now)
{
    sg_claims c = {0};
    expect_ok_at(a, tok, now, &c);
    sg_claims_clear(&c);
}

static void expect_ok(const sg_auth *a, const char *tok)
{
    sg_claims c;
    expect_ok_at(a, tok, NOW, &c);
    sg_claims_clear(&c);
}

/* Verifies tok, expects failure with reason; checks the message is present
 * and carries neither the secret nor the token. */
static void expect_fail_at(const sg_auth *a, const char *tok, size_t len, int64_t now,
                           const char *reason)
{
    sg_claims c;
    sg_auth_failure fail = {0};
    int rc = sg_auth_verify(a, tok, len, now, &c, &fail);
    if (rc != -1)
        fail_msg("expected %s, got success", reason);
    assert_non_null(fail.reason);
    if (strcmp(fail.reason, reason) != 0)
        fail_msg("expected %s, got %s: %s", reason, fail.reason, fail.message);
    assert_non_null(fail.message);
    assert_true(strlen(fail.message) > 0);
    assert_null(strstr(fail.message, SECRET));
    if (tok && len >= 12) {
        char tail[13];
        memcpy(tail, tok + len - 12, 12);
        tail[12] = '\0';
        assert_null(strstr(fail.message, tail));
    }
    /* On failure the claims are zeroed, with nothing to free. */
    assert_null(c.rooms);
    assert_int_equal(c.nrooms, 0);
    assert_null(c.sub);
}

static void expect_fail(const sg_auth *a, const char *tok, const char *reason)
{
    expect_fail_at(a, tok, strlen(tok), NOW, reason);
}

/* ---- valid tokens ------------------------------------------------------- */

static void test_hs256_valid(void **state)
{
    sg_auth *a = hs_auth();
    char *p = payload_with("\"iat\":1700000000");
    char *t = hs_token(p);
    sg_claims c;

    expect_ok_at(a, t, NOW, &c);
    assert_string_equal(c.sub, "alice");
    assert_int_equal(c.exp, NOW + 600);
    assert_null(c.rooms);
    assert_int_equal(c.nrooms, 0);
    sg_claims_clear(&c);
    assert_null(c.rooms);
    free(t);
    free(p);
    sg_auth_free(a);
}

static void test_rs256_valid(void **state)
{
    fixture *f = *state;
    sg_auth *a = auth_cfg(SG_ALG_RS256, NULL, f->rsa.pub_pem, NULL, NULL);
    char *p = payload_with("");
    char *t = rs_token(f->rsa.pkey, p);
    jwt_t *jwt = NULL;
    char *lt;

    expect_ok(a, t);
    free(t);

    /* The same through libjwt's encoder with the private PEM. */
    assert_int_equal(jwt_new(&jwt), 0);
    assert_int_equal(jwt_add_grants_json(jwt, p), 0);
    assert_int_equal(jwt_set_alg(jwt, JWT_ALG_RS256, (const unsigned char *)f->rsa.priv_pem,
                                 (int)strlen(f->rsa.priv_pem)), 0);
    lt = jwt_encode_str(jwt);
    assert_non_null(lt);
    expect_ok(a, lt);
    free(lt);
    jwt_free(jwt);
    free(p);
    sg_auth_free(a);
}

static void test_es256_valid(void **state)
{
    fixture *f = *state;
    sg_auth *a = auth_cfg(SG_ALG_ES256, NULL, f->ec.pub_pem, NULL, NULL);
    char *p = payload_with("\"rooms\":[\"r1\"]");
    char *t = es_token(f->ec.pkey, p);
    jwt_t *jwt = NULL;
    char *lt;
    sg_claims c;

    expect_ok_at(a, t, NOW, &c);
    assert_int_equal(c.nrooms, 1);
    assert_string_equal(c.rooms[0], "r1");
    sg_claims_clear(&c);
    free(t);

    assert_int_equal(jwt_new(&jwt), 0);
    assert_int_equal(jwt_add_grants_json(jwt, p), 0);
    assert_int_equal(jwt_set_alg(jwt, JWT_ALG_ES256, (const unsigned char *)f->ec.priv_pem,
                                 (int)strlen(f->ec.priv_pem)), 0);
    lt = jwt_encode_str(jwt);
    assert_non_null(lt);
    expect_ok(a, lt);
    free(lt);
    jwt_free(jwt);
    free(p);
    sg_auth_free(a);
}

/* The token need not be NUL-terminated: only len bytes count. */
static void test_token_not_nul_terminated(void **state)
{
    sg_auth *a = hs_auth();
    char *p = payload_with("");
    char *t = hs_token(p);
    size_t n = strlen(t);
    char *buf = malloc(n + 8);
    sg_claims c;
    sg_auth_failure fail;

    memcpy(buf, t, n);
    memcpy(buf + n, "garbage!", 8);
    assert_int_equal(sg_auth_verify(a, buf, n, NOW, &c, &fail), 0);
    assert_string_equal(c.sub, "alice");
    sg_claims_clear(&c);
    /* One byte short: the signature no longer verifies. */
    expect_fail_at(a, buf, n - 1, NOW, "bad_signature");
    free(buf);
    free(t);
    free(p);
    sg_auth_free(a);
}

/* ---- signatures and algorithms ------------------------------------------ */

static void test_bad_signature(void **state)
{
    fixture *f = *state;
    sg_auth *hs = hs_auth();
    sg_auth *rs = auth_cfg(SG_ALG_RS256, NULL, f->rsa.pub_pem, NULL, NULL);
    sg_auth *es = auth_cfg(SG_ALG_ES256, NULL, f->ec.pub_pem, NULL, NULL);
    char *p = payload_with("");
    char *t = hs_token(p);
    size_t n = strlen(t);

    /* Flip one signature character (keeping the last one, whose low bits
     * are padding, so the encoding stays canonical). */
    t[n - 3] = t[n - 3] == 'A' ? 'B' : 'A';
    expect_fail(hs, t, "bad_signature");
    free(t);

    /* Payload swapped after signing: mallory's claims, alice's signature. */
    {
        char *m = hs_token("{\"sub\":\"mallory\",\"exp\":1700000600}");
        char *sig;
        t = hs_token(p);
        sig = strrchr(t, '.');
        *strrchr(m, '.') = '\0';
        m = realloc(m, strlen(m) + strlen(sig) + 1);
        strcat(m, sig);
        expect_fail(hs, m, "bad_signature");
        free(m);
        free(t);
    }

    t = rs_token(f->rsa2.pkey, p); /* another RSA key */
    expect_fail(rs, t, "bad_signature");
    free(t);
    t = es_token(f->ec2.pkey, p); /* another P-256 key */
    expect_fail(es, t, "bad_signature");
    free(t);

    /* An ES256 signature of the wrong length. */
    t = make_token("{\"alg\":\"ES256\"}", p, SIG_HS256, SECRET, strlen(SECRET));
    expect_fail(es, t, "bad_signature");
    free(t);

    /* Right header, no signature. */
    t = make_token("{\"alg\":\"HS256\"}", p, SIG_EMPTY, NULL, 0);
    expect_fail(hs, t, "bad_signature");
    free(t);

    free(p);
    sg_auth_free(hs);
    sg_auth_free(rs);
    sg_auth_free(es);
}

static void test_wrong_secret(void **state)
{
    sg_auth *a = hs_auth();
    sg_auth *b = auth_cfg(SG_ALG_HS256, "another-secret", NULL, NULL, NULL);
    char *p = payload_with("");
    char *t = hs_token(p);

    expect_fail(b, t, "bad_signature");
    expect_ok(a, t);
    free(t);
    free(p);
    sg_auth_free(a);
    sg_auth_free(b);
}

static void test_alg_none_refused(void **state)
{
    fixture *f = *state;
    sg_auth *hs = hs_auth();
    sg_auth *rs = auth_cfg(SG_ALG_RS256, NULL, f->rsa.pub_pem, NULL, NULL);
    char *p = payload_with("");
    const char *headers[] = {
        "{\"alg\":\"none\",\"typ\":\"JWT\"}", "{\"alg\":\"none\"}", "{\"alg\":\"None\"}",
        "{\"alg\":\"NONE\"}", "{\"alg\":\"\"}", "{\"typ\":\"JWT\"}", "{\"alg\":null}",
        "{\"alg\":256}", "{\"alg\":[\"HS256\"]}",
        /* libjwt matches alg case-insensitively; we do not. */
        "{\"alg\":\"hs256\"}", "{\"alg\":\"HS256 \"}", "{\"alg\":\"HS256\\u0000\"}",
        /* With a duplicate member the last one counts, for json-c and jansson. */
        "{\"alg\":\"HS256\",\"alg\":\"none\"}",
    };

    for (size_t i = 0; i < sizeof(headers) / sizeof(headers[0]); i++) {
        char *t = make_token(headers[i], p, SIG_EMPTY, NULL, 0);
        expect_fail(hs, t, "bad_alg");
        expect_fail(rs, t, "bad_alg");
        free(t);
        /* Signed with the secret makes no difference. */
        t = make_token(headers[i], p, SIG_HS256, SECRET, strlen(SECRET));
        expect_fail(hs, t, "bad_alg");
        free(t);
    }
    free(p);
    sg_auth_free(hs);
    sg_auth_free(rs);
}

/* The classic confusion: an HS256 token whose HMAC key is the server's RSA
 * public key PEM. A verifier that let the token pick the algorithm would
 * accept it; ours refuses it before any cryptography. */
static void test_alg_confusion_hs256_with_public_key(void **state)
{
    fixture *f = *state;
    sg_auth *rs = auth_cfg(SG_ALG_RS256, NULL, f->rsa.pub_pem, NULL, NULL);
    sg_auth *es = auth_cfg(SG_ALG_ES256, NULL, f->ec.pub_pem, NULL, NULL);
    char *p = payload_with("");
    char *t = make_token("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", p, SIG_HS256, f->rsa.pub_pem,
                         strlen(f->rsa.pub_pem));
    sg_auth *hs_pem = auth_cfg(SG_ALG_HS256, f->rsa.pub_pem, NULL, NULL, NULL);

    expect_fail(rs, t, "bad_alg");
    /* The token really is a valid HMAC over the PEM (the attack is real). */
    expect_ok(hs_pem, t);
    free(t);

    t = make_token("{\"alg\":\"HS256\"}", p, SIG_HS256, f->ec.pub_pem, strlen(f->ec.pub_pem));
    expect_fail(es, t, "bad_alg");
    free(t);
    free(p);
    sg_auth_free(rs);
    sg_auth_free(es);
    sg_auth_free(hs_pem);
}

static void test_alg_mismatch_between_configs(void **state)
{
    fixture *f = *state;
    sg_auth *hs = hs_auth();
    sg_auth *rs = auth_cfg(SG_ALG_RS256, NULL, f->rsa.pub_pem, NULL, NULL);
    sg_auth *es = auth_cfg(SG_ALG_ES256, NULL, f->ec.pub_pem, NULL, NULL);
    char *p = payload_with("");
    char *rt = rs_token(f->rsa.pkey, p);
    char *et = es_token(f->ec.pkey, p);
    char *ht = hs_token(p);
    char *r384 = make_token("{\"alg\":\"RS384\"}", p, SIG_RS256, f->rsa.pkey, 0);

    expect_fail(hs, rt, "bad_alg");
    expect_fail(hs, et, "bad_alg");
    expect_fail(rs, et, "bad_alg");
    expect_fail(rs, ht, "bad_alg");
    expect_fail(es, rt, "bad_alg");
    expect_fail(es, ht, "bad_alg");
    expect_fail(rs, r384, "bad_alg");
    free(rt);
    free(et);
    free(ht);
    free(r384);
    free(p);
    sg_auth_free(hs);
    sg_auth_free(rs);
    sg_auth_free(es);
}

static void test_header_typ_and_crit(void **state)
{
    sg_auth *a = hs_auth();
    char *p = payload_with("");
    char *t;

    t = make_token("{\"alg\":\"HS256\",\"typ\":\"jwt\"}", p, SIG_HS256, SECRET, strlen(SECRET));
    expect_ok(a, t);
    free(t);
    t = make_token("{\"alg\":\"HS256\",\"kid\":\"ignored\",\"jku\":\"https://evil/keys\"}", p,
                   SIG_HS256, SECRET, strlen(SECRET));
    expect_ok(a, t);
    free(t);
    t = make_token("{\"alg\":\"HS256\",\"typ\":\"JWS\"}", p, SIG_HS256, SECRET, strlen(SECRET));
    expect_fail(a, t, "malformed");
    free(t);
    t = make_token("{\"alg\":\"HS256\",\"typ\":1}", p, SIG_HS256, SECRET, strlen(SECRET));
    expect_fail(a, t, "malformed");
    free(t);
    t = make_token("{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", p, SIG_HS256, SECRET,
                   strlen(SECRET));
    expect_fail(a, t, "malformed");
    free(t);
    free(p);
    sg_auth_free(a);
}

/* ---- malformed tokens --------------------------------------------------- */

static void test_malformed_structure(void **state)
{
    sg_auth *a = hs_auth();
    char *p = payload_with("");
    char *t = hs_token(p);
    char *buf = malloc(strlen(t) + 64);
    const char *dot2 = strrchr(t, '.');
    size_t n;

    expect_fail(a, "", "malformed");
    expect_fail_at(a, NULL, 0, NOW, "malformed");
    expect_fail(a, "abc", "malformed");
    expect_fail(a, "..", "malformed");
    expect_fail(a, "a.b", "malformed");

    /* Two segments: header.payload. */
    n = (size_t)(dot2 - t);
    memcpy(buf, t, n);
    buf[n] = '\0';
    expect_fail(a, buf, "malformed");
    /* Four segments. */
    sprintf(buf, "%s.AAAA", t);
    expect_fail(a, buf, "malformed");
    /* Characters outside base64url: padding, '+', '/', space, NUL. */
    sprintf(buf, "%s=", t);
    expect_fail(a, buf, "malformed");
    strcpy(buf, t);
    buf[3] = '+';
    expect_fail(a, buf, "malformed");
    strcpy(buf, t);
    buf[3] = '/';
    expect_fail(a, buf, "malformed");
    strcpy(buf, t);
    buf[3] = ' ';
    expect_fail(a, buf, "malformed");
    strcpy(buf, t);
    buf[3] = '\0';
    expect_fail_at(a, buf, strlen(t), NOW, "malformed");
    /* Empty header, empty payload. */
    sprintf(buf, "%s", strchr(t, '.'));
    expect_fail(a, buf, "malformed");
    n = (size_t)(strchr(t, '.') - t);
    memcpy(buf, t, n + 1);
    strcpy(buf + n + 1, dot2);
    expect_fail(a, buf, "malformed");
    free(buf);
    free(t);
    free(p);
    sg_auth_free(a);
}

static void test_malformed_base64(void **state)
{
    sg_auth *a = hs_auth();
    char *p = payload_with("");
    char *pb = b64url(p, strlen(p));
    char *h = b64url("{\"alg\":\"HS256\"}", 15); /* 15 bytes: 20 chars, no padding bits */
    char buf[512];

    assert_int_equal(strlen(h), 20);
    /* A lone 6-bit group (length = 1 mod 4). */
    snprintf(buf, sizeof(buf), "%sA.%s.AAAA", h, pb);
    expect_fail(a, buf, "malformed");
    /* Non-zero padding bits: 16 bytes encode to 22 characters whose last
     * one carries 2 data bits and 4 zero bits ('A' here); 'B' sets one of
     * the unused bits, a second encoding of the same bytes: refused. */
    {
        char *h16 = b64url("{\"alg\":\"HS256\"} ", 16);
        size_t n = strlen(h16);
        assert_int_equal(n, 22);
        assert_int_equal(h16[n - 1], 'A');
        h16[n - 1] = 'B';
        snprintf(buf, sizeof(buf), "%s.%s.AAAA", h16, pb);
        expect_fail(a, buf, "malformed");
        free(h16);
    }
    free(h);
    free(pb);
    free(p);
    sg_auth_free(a);
}

static void test_malformed_header_json(void **state)
{
    sg_auth *a = hs_auth();
    char *p = payload_with("");
    const char *bad[] = {
        "not json", "[\"alg\",\"HS256\"]", "\"HS256\"", "null", "{\"alg\":\"HS256\"",
        "{\"alg\":\"HS256\"}x", "{\"alg\":\"HS256\"}{}", "{'alg':'HS256'}",
        "{\"alg\":\"HS256\",}", "{\"alg\":\"HS\xff\"}", "{\"a\":[[[[[[[[[[1]]]]]]]]]]}",
    };
    char *t;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        t = make_token(bad[i], p, SIG_HS256, SECRET, strlen(SECRET));
        expect_fail(a, t, "malformed");
        free(t);
    }
    /* Trailing whitespace is still one JSON object. */
    t = make_token("{\"alg\":\"HS256\"} \n", p, SIG_HS256, SECRET, strlen(SECRET));
    expect_ok(a, t);
    free(t);
    free(p);
    sg_auth_free(a);
}

static void test_huge_header(void **state)
{
    sg_auth *a = hs_auth();
    char *p = payload_with("");
    char hdr[1100];
    char *t;

    /* 1024 bytes decoded is the cap: accepted at the cap, refused above. */
    memset(hdr, 0, sizeof(hdr));
    strcpy(hdr, "{\"alg\":\"HS256\",\"x\":\"");
    memset(hdr + strlen(hdr), 'a', 1024 - strlen(hdr) - 2);
    strcat(hdr, "\"}");
    assert_int_equal(strlen(hdr), 1024);
    t = make_token(hdr, p, SIG_HS256, SECRET, strlen(SECRET));
    expect_ok(a, t);
    free(t);

    strcpy(hdr, "{\"alg\":\"HS256\",\"x\":\"");
    memset(hdr + strlen(hdr), 'a', 1025 - strlen(hdr) - 2);
    hdr[1023] = '\0';
    strcat(hdr, "\"}");
    assert_int_equal(strlen(hdr), 1025);
    t = make_token(hdr, p, SIG_HS256, SECRET, strlen(SECRET));
    expect_fail(a, t, "malformed");
    free(t);
    free(p);
    sg_auth_free(a);
}

static void test_token_length_cap(void **state)
{
    sg_auth *a = hs_auth();
    char *pad = malloc(4200);
    char *p, *t;
    size_t n;

    /* Grow a padding claim until the token is exactly 4096 bytes long (the
     * payload segment grows by 1 or 2 characters per byte, and 4096 is
     * reachable with this header). */
    for (size_t k = 2800;; k++) {
        char extra[3300];
        memset(pad, 'x', k);
        pad[k] = '\0';
        snprintf(extra, sizeof(extra), "\"pad\":\"%s\"", pad);
        p = payload_with(extra);
        t = hs_token(p);
        n = strlen(t);
        free(p);
        if (n > 4096)
            fail_msg("no token of exactly 4096 bytes");
        if (n == 4096) {
            expect_ok(a, t);
            free(t);
            break;
        }
        free(t);
    }
    /* One byte over the cap, and far over it. */
    memset(pad, 'A', 4097);
    pad[4] = '.';
    pad[2000] = '.';
    expect_fail_at(a, pad, 4097, NOW, "malformed");
    memset(pad, 'A', 4095);
    pad[4095] = '\0';
    t = malloc(4200);
    sprintf(t, "AAAA.%s.AAAA", pad);
    expect_fail(a, t, "malformed");
    free(t);
    free(pad);
    sg_auth_free(a);
}

static void test_malformed_payload(void **state)
{
    sg_auth *a = hs_auth();
    const char *bad[] = {
        "[]", "[{\"sub\":\"alice\"}]", "\"alice\"", "42", "null", "true", "",
        "{\"sub\":\"alice\",\"exp\":1}garbage", "{\"sub\":\"al\xc3\"}",
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *t = hs_token(bad[i]);
        expect_fail(a, t, "malformed");
        free(t);
    }
    sg_auth_free(a);
}

/* ---- time claims -------------------------------------------------------- */

static char *token_exp(long long exp, const char *extra)
{
    char p[256];
    snprintf(p, sizeof(p), "{\"sub\":\"alice\",\"exp\":%lld%s%s}", exp, extra[0] ? "," : "",
             extra);
    return hs_token(p);
}

static void test_expiry_and_leeway(void **state)
{
    sg_auth *a = hs_auth();
    sg_auth_config cfg0 = {.alg = SG_ALG_HS256, .secret = SECRET, .leeway_s = 0};
    sg_auth *zero;
    char *t;

    zero = sg_auth_new(&cfg0, NULL);
    assert_non_null(zero);

    t = token_exp(NOW - 100, "");
    expect_fail(a, t, "expired");
    free(t);
    t = token_exp(NOW - 10, ""); /* expired, but within the leeway */
    expect_ok(a, t);
    expect_fail(zero, t, "expired");
    free(t);
    /* The boundary: accepted while now <= exp + leeway. */
    t = token_exp(NOW - LEEWAY, "");
    expect_ok(a, t);
    free(t);
    t = token_exp(NOW - LEEWAY - 1, "");
    expect_fail(a, t, "expired");
    free(t);
    t = token_exp(NOW, "");
    expect_ok(zero, t);
    expect_fail_at(zero, t, strlen(t), NOW + 1, "expired");
    free(t);
    /* Far-future exp and extreme clocks do not overflow. */
    t = token_exp(9007199254740992LL, "");
    expect_ok(a, t);
    expect_fail_at(a, t, strlen(t), INT64_MAX, "expired");
    free(t);
    t = token_exp(-9007199254740992LL, "");
    expect_fail(a, t, "expired");
    {
        sg_claims c;
        expect_ok_at(a, t, INT64_MIN, &c);
        sg_claims_clear(&c);
    }
    free(t);
    sg_auth_free(a);
    sg_auth_free(zero);
}

static void test_nbf(void **state)
{
    sg_auth *a = hs_auth();
    char extra[64];
    char *t;

    snprintf(extra, sizeof(extra), "\"nbf\":%lld", NOW + LEEWAY + 1);
    t = token_exp(NOW + 600, extra);
    expect_fail(a, t, "not_yet_valid");
    expect_ok_at_cleared(a, t, NOW + 1);
    free(t);
    snprintf(extra, sizeof(extra), "\"nbf\":%lld", NOW + LEEWAY); /* within the leeway */
    t = token_exp(NOW + 600, extra);
    expect_ok(a, t);
    free(t);
    snprintf(extra, sizeof(extra), "\"nbf\":%lld", NOW - 5);
    t = token_exp(NOW + 600, extra);
    expect_ok(a, t);
    free(t);
    t = token_exp(NOW + 600, "\"nbf\":\"soon\"");
    expect_fail(a, t, "bad_claims");
    free(t);
    sg_auth_free(a);
}

static void test_iat(void **state)
{
    sg_auth *a = hs_auth();
    char extra[64];
    char *t;

    snprintf(extra, sizeof(extra), "\"iat\":%lld", NOW + LEEWAY + 1);
    t = token_exp(NOW + 600, extra);
    expect_fail(a, t, "iat_future");
    free(t);
    snprintf(extra, sizeof(extra), "\"iat\":%lld", NOW + LEEWAY);
    t = token_exp(NOW + 600, extra);
    expect_ok(a, t);
    free(t);
    snprintf(extra, sizeof(extra), "\"iat\":%lld", NOW - 3600);
    t = token_exp(NOW + 600, extra);
    expect_ok(a, t);
    free(t);
    t = token_exp(NOW + 600, "\"iat\":null");
    expect_fail(a, t, "bad_claims");
    free(t);
    sg_auth_free(a);
}

static void test_numeric_dates(void **state)
{
    sg_auth *a = hs_auth();
    const struct {
        const char *exp;
        const char *reason; /* NULL: accepted */
    } cases[] = {
        {"1700000600", NULL},
        {"1700000600.0", NULL},
        {"1.7000006e9", NULL},
        {"1700000600.5", "bad_claims"},
        {"\"1700000600\"", "bad_claims"},
        {"true", "bad_claims"},
        {"null", "bad_claims"},
        {"[1700000600]", "bad_claims"},
        {"{}", "bad_claims"},
        {"1e300", "bad_claims"},
        {"9007199254740993", "bad_claims"},
        {"-9007199254740993", "bad_claims"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char p[128];
        char *t;
        snprintf(p, sizeof(p), "{\"sub\":\"alice\",\"exp\":%s}", cases[i].exp);
        t = hs_token(p);
        if (cases[i].reason)
            expect_fail(a, t, cases[i].reason);
        else
            expect_ok(a, t);
        free(t);
    }
    sg_auth_free(a);
}

/* ---- sub and exp presence ----------------------------------------------- */

static void test_sub_and_exp(void **state)
{
    sg_auth *a = hs_auth();
    char p[600], sub[300];
    char *t;
    sg_claims c;

    t = hs_token("{\"exp\":1700000600}");
    expect_fail(a, t, "missing_sub");
    free(t);
    t = hs_token("{\"sub\":\"alice\"}");
    expect_fail(a, t, "missing_exp");
    free(t);
    t = hs_token("{}");
    expect_fail(a, t, "missing_sub");
    free(t);

    const char *bad_subs[] = {"42", "null", "true", "[\"alice\"]", "{\"id\":1}", "\"\"",
                              "\"al\\nice\"", "\"al\\u007fice\"", "\"\\t\""};
    for (size_t i = 0; i < sizeof(bad_subs) / sizeof(bad_subs[0]); i++) {
        snprintf(p, sizeof(p), "{\"sub\":%s,\"exp\":1700000600}", bad_subs[i]);
        t = hs_token(p);
        expect_fail(a, t, "bad_claims");
        free(t);
    }

    /* 256 bytes is the limit; 257 is refused. */
    memset(sub, 'u', 256);
    sub[256] = '\0';
    snprintf(p, sizeof(p), "{\"sub\":\"%s\",\"exp\":1700000600}", sub);
    t = hs_token(p);
    expect_ok_at(a, t, NOW, &c);
    assert_int_equal(strlen(c.sub), 256);
    sg_claims_clear(&c);
    free(t);
    memset(sub, 'u', 257);
    sub[257] = '\0';
    snprintf(p, sizeof(p), "{\"sub\":\"%s\",\"exp\":1700000600}", sub);
    t = hs_token(p);
    expect_fail(a, t, "bad_claims");
    free(t);

    /* An escaped NUL in any claim: libjwt's JSON parser (jansson) refuses
     * the payload inside jwt_decode, so it surfaces as a signature failure;
     * either way it never verifies. */
    t = hs_token("{\"sub\":\"al\\u0000ice\",\"exp\":1700000600}");
    expect_fail(a, t, "bad_signature");
    free(t);

    /* Non-ASCII UTF-8 is fine. */
    t = hs_token("{\"sub\":\"j\xc3\xb6rg\",\"exp\":1700000600}");
    expect_ok_at(a, t, NOW, &c);
    assert_string_equal(c.sub, "j\xc3\xb6rg");
    sg_claims_clear(&c);
    free(t);
    sg_auth_free(a);
}

/* ---- iss / aud ---------------------------------------------------------- */

static void test_issuer_audience(void **state)
{
    sg_auth *a = auth_cfg(SG_ALG_HS256, SECRET, NULL, "https://id.example", "signal");
    sg_auth *open = hs_auth();
    const struct {
        const char *extra;
        const char *reason;
    } cases[] = {
        {"\"iss\":\"https://id.example\",\"aud\":\"signal\"", NULL},
        {"\"iss\":\"https://id.example\",\"aud\":[\"other\",\"signal\"]", NULL},
        {"\"iss\":\"https://id.example\",\"aud\":[\"signal\"]", NULL},
        {"\"iss\":\"https://id.example\",\"aud\":[1,\"signal\"]", NULL},
        {"\"iss\":\"https://evil.example\",\"aud\":\"signal\"", "bad_issuer"},
        {"\"iss\":\"https://id.example/\",\"aud\":\"signal\"", "bad_issuer"},
        {"\"iss\":\"HTTPS://ID.EXAMPLE\",\"aud\":\"signal\"", "bad_issuer"},
        {"\"aud\":\"signal\"", "bad_issuer"},
        {"\"iss\":null,\"aud\":\"signal\"", "bad_issuer"},
        {"\"iss\":[\"https://id.example\"],\"aud\":\"signal\"", "bad_issuer"},
        {"\"iss\":\"https://id.example\"", "bad_audience"},
        {"\"iss\":\"https://id.example\",\"aud\":\"signals\"", "bad_audience"},
        {"\"iss\":\"https://id.example\",\"aud\":[\"other\"]", "bad_audience"},
        {"\"iss\":\"https://id.example\",\"aud\":[]", "bad_audience"},
        {"\"iss\":\"https://id.example\",\"aud\":7", "bad_audience"},
        {"\"iss\":\"https://id.example\",\"aud\":{\"signal\":1}", "bad_audience"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *p = payload_with(cases[i].extra);
        char *t = hs_token(p);
        if (cases[i].reason)
            expect_fail(a, t, cases[i].reason);
        else
            expect_ok(a, t);
        /* Not configured: not checked. */
        expect_ok(open, t);
        free(t);
        free(p);
    }
    sg_auth_free(a);
    sg_auth_free(open);
}

/* ---- rooms -------------------------------------------------------------- */

static void test_rooms_claim_parsing(void **state)
{
    sg_auth *a = hs_auth();
    char room128[130], room129[131], p[9000], extra[8800];
    char *t;
    sg_claims c;

    t = hs_token("{\"sub\":\"alice\",\"exp\":1700000600,"
                 "\"rooms\":[\"room-1\",\"team-7/*\",\"*\",\"a.b:c_d/E-9\"]}");
    expect_ok_at(a, t, NOW, &c);
    assert_int_equal(c.nrooms, 4);
    assert_string_equal(c.rooms[0], "room-1");
    assert_string_equal(c.rooms[1], "team-7/*");
    assert_string_equal(c.rooms[2], "*");
    assert_string_equal(c.rooms[3], "a.b:c_d/E-9");
    sg_claims_clear(&c);
    free(t);

    memset(room128, 'r', 128);
    room128[128] = '\0';
    memset(room129, 'r', 129);
    room129[129] = '\0';
    snprintf(p, sizeof(p), "{\"sub\":\"alice\",\"exp\":1700000600,\"rooms\":[\"%s\",\"%s*\"]}",
             room128, room128);
    t = hs_token(p);
    expect_ok(a, t);
    free(t);

    const char *bad[] = {
        "\"room-1\"", "null", "{}", "[1]", "[\"ok\",null]", "[\"\"]", "[\"a b\"]",
        "[\"{tag}\"]", "[\"a*b\"]", "[\"**\"]", "[\"*a\"]", "[\"x**\"]",
        "[\"caf\xc3\xa9\"]", "[[\"nested\"]]",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(p, sizeof(p), "{\"sub\":\"alice\",\"exp\":1700000600,\"rooms\":%s}", bad[i]);
        t = hs_token(p);
        expect_fail(a, t, "bad_claims");
        free(t);
    }
    snprintf(p, sizeof(p), "{\"sub\":\"alice\",\"exp\":1700000600,\"rooms\":[\"%s\"]}", room129);
    t = hs_token(p);
    expect_fail(a, t, "bad_claims");
    free(t);

    /* 64 entries is the cap; 65 is refused. */
    for (int n = 64; n <= 65; n++) {
        size_t o = 0;
        for (int i = 0; i < n; i++)
            o += (size_t)sprintf(extra + o, "%s\"r%d\"", i ? "," : "", i);
        snprintf(p, sizeof(p), "{\"sub\":\"alice\",\"exp\":1700000600,\"rooms\":[%s]}", extra);
        t = hs_token(p);
        if (n == 64) {
            expect_ok_at(a, t, NOW, &c);
            assert_int_equal(c.nrooms, 64);
            assert_string_equal(c.rooms[63], "r63");
            sg_claims_clear(&c);
        } else {
            expect_fail(a, t, "bad_claims");
        }
        free(t);
    }
    sg_auth_free(a);
}

static void claims_for(const sg_auth *a, const char *rooms_json, sg_claims *c)
{
    char p[512];
    char *t;
    if (rooms_json)
        snprintf(p, sizeof(p), "{\"sub\":\"alice\",\"exp\":1700000600,\"rooms\":%s}", rooms_json);
    else
        snprintf(p, sizeof(p), "{\"sub\":\"alice\",\"exp\":1700000600}");
    t = hs_token(p);
    expect_ok_at(a, t, NOW, c);
    free(t);
}

static void test_room_allowed(void **state)
{
    sg_auth *a = hs_auth();
    sg_claims c;

    claims_for(a, "[\"lobby\"]", &c);
    assert_true(sg_claims_room_allowed(&c, "lobby"));
    assert_false(sg_claims_room_allowed(&c, "lobby2"));
    assert_false(sg_claims_room_allowed(&c, "lobb"));
    assert_false(sg_claims_room_allowed(&c, "Lobby"));
    assert_false(sg_claims_room_allowed(&c, ""));
    assert_false(sg_claims_room_allowed(&c, NULL));
    sg_claims_clear(&c);

    claims_for(a, "[\"team-7/*\"]", &c);
    assert_true(sg_claims_room_allowed(&c, "team-7/x"));
    assert_true(sg_claims_room_allowed(&c, "team-7/a/b"));
    assert_true(sg_claims_room_allowed(&c, "team-7/"));
    assert_false(sg_claims_room_allowed(&c, "team-7"));
    assert_false(sg_claims_room_allowed(&c, "team-70/x"));
    assert_false(sg_claims_room_allowed(&c, "team-8/x"));
    assert_false(sg_claims_room_allowed(&c, "xteam-7/x"));
    sg_claims_clear(&c);

    claims_for(a, "[\"team*\",\"lobby\"]", &c);
    assert_true(sg_claims_room_allowed(&c, "team-7"));
    assert_true(sg_claims_room_allowed(&c, "teamwork"));
    assert_true(sg_claims_room_allowed(&c, "lobby"));
    assert_false(sg_claims_room_allowed(&c, "tea"));
    sg_claims_clear(&c);

    claims_for(a, "[\"*\"]", &c);
    assert_true(sg_claims_room_allowed(&c, "anything"));
    assert_true(sg_claims_room_allowed(&c, "team-7/x"));
    assert_false(sg_claims_room_allowed(&c, NULL));
    sg_claims_clear(&c);

    /* No claim: nothing is allowed by the token (the Redis ACL may still). */
    claims_for(a, NULL, &c);
    assert_null(c.rooms);
    assert_false(sg_claims_room_allowed(&c, "lobby"));
    sg_claims_clear(&c);

    /* Empty array: present, allows nothing. */
    claims_for(a, "[]", &c);
    assert_non_null(c.rooms);
    assert_int_equal(c.nrooms, 0);
    assert_false(sg_claims_room_allowed(&c, "lobby"));
    sg_claims_clear(&c);

    assert_false(sg_claims_room_allowed(NULL, "lobby"));
    sg_claims_clear(NULL);
    sg_auth_free(a);
}

/* ---- minting ------------------------------------------------------------ */

static void test_mint_round_trip(void **state)
{
    const char *rooms[] = {"lobby", "team-7/*"};
    sg_auth *a = auth_cfg(SG_ALG_HS256, SECRET, NULL, "gw-dev", "signal");
    sg_auth *other = auth_cfg(SG_ALG_HS256, "not-the-secret", NULL, NULL, NULL);
    char *t = sg_auth_mint_hs256(SECRET, "bob", rooms, 2, NOW, 300, "gw-dev", "signal");
    sg_claims c;

    assert_non_null(t);
    expect_ok_at(a, t, NOW, &c);
    assert_string_equal(c.sub, "bob");
    assert_int_equal(c.exp, NOW + 300);
    assert_int_equal(c.nrooms, 2);
    assert_string_equal(c.rooms[0], "lobby");
    assert_string_equal(c.rooms[1], "team-7/*");
    assert_true(sg_claims_room_allowed(&c, "team-7/x"));
    assert_false(sg_claims_room_allowed(&c, "team-8/x"));
    sg_claims_clear(&c);
    expect_fail(other, t, "bad_signature");
    expect_fail_at(a, t, strlen(t), NOW + 300 + LEEWAY + 1, "expired");
    free(t);

    /* No rooms, no iss/aud: the claim is absent and iss/aud checks fail. */
    t = sg_auth_mint_hs256(SECRET, "bob", NULL, 0, NOW, 60, NULL, NULL);
    assert_non_null(t);
    expect_fail(a, t, "bad_issuer");
    {
        sg_auth *plain = hs_auth();
        expect_ok_at(plain, t, NOW, &c);
        assert_null(c.rooms);
        sg_claims_clear(&c);
        sg_auth_free(plain);
    }
    free(t);

    /* Empty rooms array. */
    t = sg_auth_mint_hs256(SECRET, "bob", rooms, 0, NOW, 60, "gw-dev", "signal");
    assert_non_null(t);
    expect_ok_at(a, t, NOW, &c);
    assert_non_null(c.rooms);
    assert_int_equal(c.nrooms, 0);
    sg_claims_clear(&c);
    free(t);

    /* Refused inputs. */
    const char *bad_room[] = {"a b"};
    assert_null(sg_auth_mint_hs256("", "bob", NULL, 0, NOW, 60, NULL, NULL));
    assert_null(sg_auth_mint_hs256(NULL, "bob", NULL, 0, NOW, 60, NULL, NULL));
    assert_null(sg_auth_mint_hs256(SECRET, "", NULL, 0, NOW, 60, NULL, NULL));
    assert_null(sg_auth_mint_hs256(SECRET, NULL, NULL, 0, NOW, 60, NULL, NULL));
    assert_null(sg_auth_mint_hs256(SECRET, "bob", NULL, 0, NOW, 0, NULL, NULL));
    assert_null(sg_auth_mint_hs256(SECRET, "bob", NULL, 1, NOW, 60, NULL, NULL));
    assert_null(sg_auth_mint_hs256(SECRET, "bob", bad_room, 1, NOW, 60, NULL, NULL));
    assert_null(sg_auth_mint_hs256(SECRET, "bob", NULL, 0, INT64_MAX, 60, NULL, NULL));
    sg_auth_free(a);
    sg_auth_free(other);
}

/* A token minted here has a standard header that libjwt itself parses. */
static void test_mint_libjwt_decodes(void **state)
{
    char *t = sg_auth_mint_hs256(SECRET, "carol", NULL, 0, NOW, 60, NULL, NULL);
    jwt_t *jwt = NULL;

    assert_non_null(t);
    assert_int_equal(jwt_decode(&jwt, t, (const unsigned char *)SECRET, (int)strlen(SECRET)), 0);
    assert_int_equal(jwt_get_alg(jwt), JWT_ALG_HS256);
    assert_string_equal(jwt_get_grant(jwt, "sub"), "carol");
    assert_int_equal(jwt_get_grant_int(jwt, "exp"), NOW + 60);
    jwt_free(jwt);
    free(t);
}

/* ---- configuration ------------------------------------------------------ */

static void expect_config_error(const sg_auth_config *cfg)
{
    const char *err = NULL;
    sg_auth *a = sg_auth_new(cfg, &err);
    if (a) {
        sg_auth_free(a);
        fail_msg("config accepted, expected an error");
    }
    assert_non_null(err);
    assert_true(strlen(err) > 0);
    assert_int_equal(ERR_peek_error(), 0); /* no stale OpenSSL errors left */
}

static void test_config_errors(void **state)
{
    fixture *f = *state;
    const char *err = NULL;
    char *rsa_then_junk;
    sg_auth_config c;

    assert_null(sg_auth_new(NULL, &err));
    assert_non_null(err);

    c = (sg_auth_config){.alg = 0, .secret = SECRET};
    expect_config_error(&c);
    c = (sg_auth_config){.alg = 99, .secret = SECRET};
    expect_config_error(&c);
    c = (sg_auth_config){.alg = SG_ALG_HS256};
    expect_config_error(&c);
    c = (sg_auth_config){.alg = SG_ALG_HS256, .secret = ""};
    expect_config_error(&c);
    /* A PEM is not a substitute for a secret, and vice versa. */
    c = (sg_auth_config){.alg = SG_ALG_HS256, .public_key_pem = f->rsa.pub_pem};
    expect_config_error(&c);
    c = (sg_auth_config){.alg = SG_ALG_RS256, .secret = SECRET};
    expect_config_error(&c);
    c = (sg_auth_config){.alg = SG_ALG_RS256, .public_key_pem = ""};
    expect_config_error(&c);
    c = (sg_auth_config){.alg = SG_ALG_RS256, .public_key_pem = "not a pem"};
    expect_config_error(&c);
    c = (sg_auth_config){.alg = SG_ALG_RS256,
                         .public_key_pem = "-----BEGIN PUBLIC KEY-----\nAAAA\n"
                                           "-----END PUBLIC KEY-----\n"};
    expect_config_error(&c);
    /* Private keys are not public keys. */
    c = (sg_auth_config){.alg = SG_ALG_RS256, .public_key_pem = f->rsa.priv_pem};
    expect_config_error(&c);
    /* Key type must match the algorithm. */
    c = (sg_auth_config){.alg = SG_ALG_RS256, .public_key_pem = f->ec.pub_pem};
    expect_config_error(&c);
    c = (sg_auth_config){.alg = SG_ALG_ES256, .public_key_pem = f->rsa.pub_pem};
    expect_config_error(&c);
    c = (sg_auth_config){.alg = SG_ALG_ES256, .public_key_pem = f->p384.pub_pem};
    expect_config_error(&c);
    /* Leeway and empty iss/aud. */
    c = (sg_auth_config){.alg = SG_ALG_HS256, .secret = SECRET, .leeway_s = -1};
    expect_config_error(&c);
    c = (sg_auth_config){.alg = SG_ALG_HS256, .secret = SECRET, .leeway_s = 86401};
    expect_config_error(&c);
    c = (sg_auth_config){.alg = SG_ALG_HS256, .secret = SECRET, .issuer = ""};
    expect_config_error(&c);
    c = (sg_auth_config){.alg = SG_ALG_HS256, .secret = SECRET, .audience = ""};
    expect_config_error(&c);

    /* Accepted: a NULL err pointer, and a PEM with text after the key. */
    c = (sg_auth_config){.alg = SG_ALG_HS256, .secret = "x", .leeway_s = 86400};
    sg_auth *a = sg_auth_new(&c, NULL);
    assert_non_null(a);
    assert_int_equal(sg_auth_key_count(a), 1);
    sg_auth_free(a);
    rsa_then_junk = malloc(strlen(f->rsa.pub_pem) + 32);
    sprintf(rsa_then_junk, "%s# trailing comment\n", f->rsa.pub_pem);
    c = (sg_auth_config){.alg = SG_ALG_RS256, .public_key_pem = rsa_then_junk};
    a = sg_auth_new(&c, &err);
    assert_non_null(a);
    sg_auth_free(a);
    free(rsa_then_junk);
    sg_auth_free(NULL);
    assert_int_equal(sg_auth_key_count(NULL), 0);
}

/* Verification failures inside libjwt/OpenSSL leave no error behind on the
 * thread's OpenSSL queue (the TLS code on the same thread reads it). */
static void test_no_stale_openssl_errors(void **state)
{
    fixture *f = *state;
    sg_auth *rs = auth_cfg(SG_ALG_RS256, NULL, f->rsa.pub_pem, NULL, NULL);
    sg_auth *es = auth_cfg(SG_ALG_ES256, NULL, f->ec.pub_pem, NULL, NULL);
    char *p = payload_with("");
    char *t = rs_token(f->rsa2.pkey, p);

    ERR_clear_error();
    expect_fail(rs, t, "bad_signature");
    assert_int_equal(ERR_peek_error(), 0);
    free(t);
    t = rs_token(f->rsa.pkey, p);
    expect_ok(rs, t);
    assert_int_equal(ERR_peek_error(), 0);
    free(t);
    t = es_token(f->ec.pkey, p);
    expect_ok(es, t);
    assert_int_equal(ERR_peek_error(), 0);
    free(t);
    t = make_token("{\"alg\":\"ES256\"}", p, SIG_HS256, SECRET, strlen(SECRET));
    expect_fail(es, t, "bad_signature");
    assert_int_equal(ERR_peek_error(), 0);
    free(t);
    free(p);
    sg_auth_free(rs);
    sg_auth_free(es);
}

/* ---- JWKS --------------------------------------------------------------- */

static char *bn_b64url(EVP_PKEY *k, const char *param, int pad)
{
    BIGNUM *bn = NULL;
    unsigned char buf[1024];
    int n;
    assert_int_equal(EVP_PKEY_get_bn_param(k, param, &bn), 1);
    n = pad ? BN_bn2binpad(bn, buf, pad) : BN_bn2bin(bn, buf);
    assert_true(n > 0);
    BN_free(bn);
    return b64url(buf, (size_t)n);
}

/* One JWK object text for an RSA or P-256 key; extra is spliced in. */
static char *jwk(EVP_PKEY *k, const char *kid, const char *extra)
{
    char *out = malloc(2048);
    if (EVP_PKEY_get_base_id(k) == EVP_PKEY_RSA) {
        char *n = bn_b64url(k, OSSL_PKEY_PARAM_RSA_N, 0);
        char *e = bn_b64url(k, OSSL_PKEY_PARAM_RSA_E, 0);
        snprintf(out, 2048, "{\"kty\":\"RSA\",\"kid\":\"%s\",\"n\":\"%s\",\"e\":\"%s\"%s%s}", kid,
                 n, e, extra[0] ? "," : "", extra);
        free(n);
        free(e);
    } else {
        char *x = bn_b64url(k, OSSL_PKEY_PARAM_EC_PUB_X, 32);
        char *y = bn_b64url(k, OSSL_PKEY_PARAM_EC_PUB_Y, 32);
        snprintf(out, 2048,
                 "{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"%s\",\"x\":\"%s\",\"y\":\"%s\"%s%s}",
                 kid, x, y, extra[0] ? "," : "", extra);
        free(x);
        free(y);
    }
    return out;
}

static sg_auth *jwks_auth(const char *doc, const char *iss, const char *aud)
{
    sg_auth_config cfg = {.issuer = iss, .audience = aud, .leeway_s = LEEWAY};
    const char *err = NULL;
    sg_auth *a = sg_auth_new_jwks(doc, strlen(doc), &cfg, &err);
    if (!a)
        fail_msg("sg_auth_new_jwks: %s", err);
    return a;
}

static void expect_jwks_error(const char *doc)
{
    sg_auth_config cfg = {.leeway_s = LEEWAY};
    const char *err = NULL;
    sg_auth *a = sg_auth_new_jwks(doc, strlen(doc), &cfg, &err);
    if (a) {
        sg_auth_free(a);
        fail_msg("JWKS accepted, expected an error: %.200s", doc);
    }
    assert_non_null(err);
    assert_int_equal(ERR_peek_error(), 0);
}

static char *kid_token(sig_kind kind, EVP_PKEY *k, const char *alg, const char *kid,
                       const char *payload)
{
    char hdr[256];
    if (kid)
        snprintf(hdr, sizeof(hdr), "{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"%s\"}", alg, kid);
    else
        snprintf(hdr, sizeof(hdr), "{\"alg\":\"%s\",\"typ\":\"JWT\"}", alg);
    if (kind == SIG_HS256)
        return make_token(hdr, payload, kind, SECRET, strlen(SECRET));
    return make_token(hdr, payload, kind, k, 0);
}

static void test_jwks_kid_selection(void **state)
{
    fixture *f = *state;
    char *r1 = jwk(f->rsa.pkey, "r1", "\"use\":\"sig\"");
    char *e1 = jwk(f->ec.pkey, "e1", "\"alg\":\"ES256\"");
    char *r2 = jwk(f->rsa2.pkey, "r2", "\"alg\":\"RS256\",\"use\":\"sig\"");
    char doc[8192];
    char *p = payload_with("");
    sg_auth *a;
    char *t;

    snprintf(doc, sizeof(doc),
             "{\"keys\":[%s,%s,%s,"
             "{\"kty\":\"oct\",\"kid\":\"s1\",\"k\":\"c2VjcmV0\"},"
             "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"kid\":\"o1\",\"x\":\"AAAA\"}]}",
             r1, e1, r2);
    a = jwks_auth(doc, NULL, NULL);
    assert_int_equal(sg_auth_key_count(a), 3);

    t = kid_token(SIG_RS256, f->rsa.pkey, "RS256", "r1", p);
    expect_ok(a, t);
    free(t);
    t = kid_token(SIG_RS256, f->rsa2.pkey, "RS256", "r2", p);
    expect_ok(a, t);
    free(t);
    t = kid_token(SIG_ES256, f->ec.pkey, "ES256", "e1", p);
    expect_ok(a, t);
    free(t);

    /* kid picks the key: a token signed by rsa2 but naming r1 fails. */
    t = kid_token(SIG_RS256, f->rsa2.pkey, "RS256", "r1", p);
    expect_fail(a, t, "bad_signature");
    free(t);
    /* Unknown or missing kid. */
    t = kid_token(SIG_RS256, f->rsa.pkey, "RS256", "r9", p);
    expect_fail(a, t, "unknown_kid");
    free(t);
    t = kid_token(SIG_RS256, f->rsa.pkey, "RS256", NULL, p);
    expect_fail(a, t, "unknown_kid");
    free(t);
    t = make_token("{\"alg\":\"RS256\",\"kid\":1}", p, SIG_RS256, f->rsa.pkey, 0);
    expect_fail(a, t, "unknown_kid");
    free(t);
    t = kid_token(SIG_RS256, f->rsa.pkey, "RS256", "R1", p); /* kids are case-sensitive */
    expect_fail(a, t, "unknown_kid");
    free(t);
    /* Skipped keys are not selectable. */
    t = kid_token(SIG_HS256, NULL, "HS256", "s1", p);
    expect_fail(a, t, "bad_alg");
    free(t);
    /* alg must match the key's type. */
    t = kid_token(SIG_ES256, f->ec.pkey, "ES256", "r1", p);
    expect_fail(a, t, "bad_alg");
    free(t);
    t = kid_token(SIG_RS256, f->rsa.pkey, "RS256", "e1", p);
    expect_fail(a, t, "bad_alg");
    free(t);
    /* HS256 with the RSA key's PEM as secret, naming r1: refused on alg. */
    {
        char hdr[] = "{\"alg\":\"HS256\",\"kid\":\"r1\"}";
        t = make_token(hdr, p, SIG_HS256, f->rsa.pub_pem, strlen(f->rsa.pub_pem));
        expect_fail(a, t, "bad_alg");
        free(t);
    }
    t = make_token("{\"alg\":\"none\",\"kid\":\"r1\"}", p, SIG_EMPTY, NULL, 0);
    expect_fail(a, t, "bad_alg");
    free(t);

    free(r1);
    free(e1);
    free(r2);
    free(p);
    sg_auth_free(a);
}

static void test_jwks_key_alg(void **state)
{
    fixture *f = *state;
    char *r1 = jwk(f->rsa.pkey, "r1", "\"alg\":\"RS512\"");   /* not ours: skipped */
    char *r2 = jwk(f->rsa2.pkey, "r2", "\"alg\":\"ES256\"");  /* contradicts kty: skipped */
    char *e1 = jwk(f->ec.pkey, "e1", "\"use\":\"enc\"");      /* encryption key: skipped */
    char *e2 = jwk(f->ec2.pkey, "e2", "");
    char *r3 = jwk(f->rsa.pkey, "r3", "");                    /* no alg: RS256 by type */
    char doc[8192];
    char *p = payload_with("");
    sg_auth *a;
    char *t;

    snprintf(doc, sizeof(doc), "{\"keys\":[%s,%s,%s,%s,%s]}", r1, r2, e1, e2, r3);
    a = jwks_auth(doc, NULL, NULL);
    assert_int_equal(sg_auth_key_count(a), 2);
    t = kid_token(SIG_RS256, f->rsa.pkey, "RS256", "r1", p);
    expect_fail(a, t, "unknown_kid");
    free(t);
    t = kid_token(SIG_RS256, f->rsa.pkey, "RS512", "r1", p);
    expect_fail(a, t, "bad_alg");
    free(t);
    t = kid_token(SIG_RS256, f->rsa2.pkey, "ES256", "r2", p);
    expect_fail(a, t, "unknown_kid");
    free(t);
    t = kid_token(SIG_ES256, f->ec.pkey, "ES256", "e1", p);
    expect_fail(a, t, "unknown_kid");
    free(t);
    t = kid_token(SIG_ES256, f->ec2.pkey, "ES256", "e2", p);
    expect_ok(a, t);
    free(t);
    t = kid_token(SIG_RS256, f->rsa.pkey, "RS256", "r3", p);
    expect_ok(a, t);
    free(t);
    free(r1);
    free(r2);
    free(e1);
    free(e2);
    free(r3);
    free(p);
    sg_auth_free(a);
}

/* Reload = a new sg_auth from the new file. The old one keeps working until
 * the caller frees it; the new one refuses tokens of removed keys. */
static void test_jwks_reload(void **state)
{
    fixture *f = *state;
    char *r1 = jwk(f->rsa.pkey, "2024-01", "");
    char *r2 = jwk(f->rsa2.pkey, "2024-02", "");
    char doc1[4096], doc2[8192], doc3[4096];
    char *p = payload_with("");
    char *old_tok = kid_token(SIG_RS256, f->rsa.pkey, "RS256", "2024-01", p);
    char *new_tok = kid_token(SIG_RS256, f->rsa2.pkey, "RS256", "2024-02", p);
    sg_auth *gen1, *gen2, *gen3;

    snprintf(doc1, sizeof(doc1), "{\"keys\":[%s]}", r1);
    snprintf(doc2, sizeof(doc2), "{\"keys\":[%s,%s]}", r1, r2); /* overlap */
    snprintf(doc3, sizeof(doc3), "{\"keys\":[%s]}", r2);        /* old key retired */
    gen1 = jwks_auth(doc1, NULL, NULL);
    expect_ok(gen1, old_tok);
    expect_fail(gen1, new_tok, "unknown_kid");
    gen2 = jwks_auth(doc2, NULL, NULL);
    expect_ok(gen2, old_tok);
    expect_ok(gen2, new_tok);
    gen3 = jwks_auth(doc3, NULL, NULL);
    expect_fail(gen3, old_tok, "unknown_kid");
    expect_ok(gen3, new_tok);
    /* Building gen3 changed nothing in gen1 (no shared state). */
    expect_ok(gen1, old_tok);
    sg_auth_free(gen1);
    sg_auth_free(gen2);
    expect_ok(gen3, new_tok);
    sg_auth_free(gen3);
    free(r1);
    free(r2);
    free(p);
    free(old_tok);
    free(new_tok);
}

static void test_jwks_claims_config(void **state)
{
    fixture *f = *state;
    char *e1 = jwk(f->ec.pkey, "e1", "");
    char doc[4096];
    char *good = payload_with("\"iss\":\"idp\",\"aud\":[\"signal\"],\"rooms\":[\"lobby\"]");
    char *bad = payload_with("\"iss\":\"other\",\"aud\":[\"signal\"]");
    sg_auth *a;
    char *t;
    sg_claims c;

    snprintf(doc, sizeof(doc), "  {\"keys\":[%s]}\n", e1);
    a = jwks_auth(doc, "idp", "signal");
    t = kid_token(SIG_ES256, f->ec.pkey, "ES256", "e1", good);
    expect_ok_at(a, t, NOW, &c);
    assert_true(sg_claims_room_allowed(&c, "lobby"));
    sg_claims_clear(&c);
    expect_fail_at(a, t, strlen(t), NOW + 601 + LEEWAY, "expired");
    free(t);
    t = kid_token(SIG_ES256, f->ec.pkey, "ES256", "e1", bad);
    expect_fail(a, t, "bad_issuer");
    free(t);
    free(e1);
    free(good);
    free(bad);
    sg_auth_free(a);
}

static void test_jwks_errors(void **state)
{
    fixture *f = *state;
    char *r1 = jwk(f->rsa.pkey, "r1", "");
    char *e1 = jwk(f->ec.pkey, "e1", "");
    char *e1b = jwk(f->ec2.pkey, "e1", "");
    char doc[8192];
    const char *err = NULL;
    sg_auth_config cfg = {.leeway_s = LEEWAY};

    expect_jwks_error("");
    expect_jwks_error("not json");
    expect_jwks_error("[]");
    expect_jwks_error("{}");
    expect_jwks_error("{\"keys\":{}}");
    expect_jwks_error("{\"keys\":[]}");
    expect_jwks_error("{\"keys\":[1]}");
    expect_jwks_error("{\"keys\":[{}]}");
    expect_jwks_error("{\"keys\":[{\"kty\":\"oct\",\"kid\":\"a\",\"k\":\"AAAA\"}]}");
    /* Usable-looking but broken keys make the whole file fail (a reload
     * then keeps the old keys instead of silently losing one). */
    expect_jwks_error("{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"a\",\"n\":\"!!\",\"e\":\"AQAB\"}]}");
    expect_jwks_error("{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"a\",\"e\":\"AQAB\"}]}");
    expect_jwks_error("{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"a\",\"n\":\"AAAA\",\"e\":\"AQAB\"}]}");
    expect_jwks_error("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"a\","
                      "\"x\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\","
                      "\"y\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}]}");
    expect_jwks_error("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"a\","
                      "\"x\":\"AAAA\",\"y\":\"AAAA\"}]}");
    snprintf(doc, sizeof(doc), "{\"keys\":[%s,%s]}", e1, e1b); /* duplicate kid */
    expect_jwks_error(doc);
    snprintf(doc, sizeof(doc), "{\"keys\":[%s]", r1); /* truncated */
    expect_jwks_error(doc);
    {
        /* A point that is not on the curve: flip a byte of y. */
        char *bad = jwk(f->ec.pkey, "e9", "");
        char *y = strstr(bad, "\"y\":\"") + 5;
        y[3] = y[3] == 'A' ? 'B' : 'A';
        snprintf(doc, sizeof(doc), "{\"keys\":[%s]}", bad);
        expect_jwks_error(doc);
        free(bad);
    }
    {
        /* kid of the wrong type on an otherwise good key. */
        char *bad = jwk(f->rsa.pkey, "x", "");
        char *kid = strstr(bad, "\"kid\":\"x\"");
        memcpy(kid, "\"kid\":123", 9);
        snprintf(doc, sizeof(doc), "{\"keys\":[%s]}", bad);
        expect_jwks_error(doc);
        free(bad);
    }
    /* Keys without kid are skipped; alone they leave nothing usable. */
    expect_jwks_error("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"A\",\"y\":\"A\"}]}");

    /* Bad arguments. */
    snprintf(doc, sizeof(doc), "{\"keys\":[%s]}", r1);
    assert_null(sg_auth_new_jwks(doc, strlen(doc), NULL, &err));
    assert_non_null(err);
    assert_null(sg_auth_new_jwks(NULL, 10, &cfg, &err));
    assert_null(sg_auth_new_jwks(doc, 10, &cfg, &err)); /* a prefix is not JSON */
    cfg.leeway_s = -5;
    assert_null(sg_auth_new_jwks(doc, strlen(doc), &cfg, &err));
    cfg.leeway_s = 0;
    {
        sg_auth *a = sg_auth_new_jwks(doc, strlen(doc), &cfg, NULL);
        assert_non_null(a);
        sg_auth_free(a);
    }
    {
        /* Over 64 keys. */
        char *big = malloc(70 * 64 + 64);
        size_t o = (size_t)sprintf(big, "{\"keys\":[");
        for (int i = 0; i < 65; i++)
            o += (size_t)sprintf(big + o, "%s{\"kty\":\"oct\",\"kid\":\"k%d\"}", i ? "," : "", i);
        strcpy(big + o, "]}");
        expect_jwks_error(big);
        free(big);
    }
    free(r1);
    free(e1);
    free(e1b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hs256_valid),
        cmocka_unit_test(test_rs256_valid),
        cmocka_unit_test(test_es256_valid),
        cmocka_unit_test(test_token_not_nul_terminated),
        cmocka_unit_test(test_bad_signature),
        cmocka_unit_test(test_wrong_secret),
        cmocka_unit_test(test_alg_none_refused),
        cmocka_unit_test(test_alg_confusion_hs256_with_public_key),
        cmocka_unit_test(test_alg_mismatch_between_configs),
        cmocka_unit_test(test_header_typ_and_crit),
        cmocka_unit_test(test_malformed_structure),
        cmocka_unit_test(test_malformed_base64),
        cmocka_unit_test(test_malformed_header_json),
        cmocka_unit_test(test_huge_header),
        cmocka_unit_test(test_token_length_cap),
        cmocka_unit_test(test_malformed_payload),
        cmocka_unit_test(test_expiry_and_leeway),
        cmocka_unit_test(test_nbf),
        cmocka_unit_test(test_iat),
        cmocka_unit_test(test_numeric_dates),
        cmocka_unit_test(test_sub_and_exp),
        cmocka_unit_test(test_issuer_audience),
        cmocka_unit_test(test_rooms_claim_parsing),
        cmocka_unit_test(test_room_allowed),
        cmocka_unit_test(test_mint_round_trip),
        cmocka_unit_test(test_mint_libjwt_decodes),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_no_stale_openssl_errors),
        cmocka_unit_test(test_jwks_kid_selection),
        cmocka_unit_test(test_jwks_key_alg),
        cmocka_unit_test(test_jwks_reload),
        cmocka_unit_test(test_jwks_claims_config),
        cmocka_unit_test(test_jwks_errors),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
