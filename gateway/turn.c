/* SPDX-License-Identifier: Apache-2.0 */
#include "sg/turn.h"
#include "sg/util.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <string.h>

void sg_turn_credential(const char *secret, const char *username, char out[29])
{
    uint8_t mac[20];
    unsigned int n = sizeof mac;
    HMAC(EVP_sha1(), secret, (int)strlen(secret), (const uint8_t *)username, strlen(username), mac, &n);
    EVP_EncodeBlock((unsigned char *)out, mac, (int)n); /* 20 bytes -> 28 chars + NUL */
}

void sg_turn_append_ice_servers(sg_buf *out, const char *secret, const char *urls,
                                const char *sub, int64_t now_s, int64_t ttl_s)
{
    uint8_t mac[32];
    unsigned int n = sizeof mac;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (const uint8_t *)sub, strlen(sub), mac, &n);
    char user[17];
    sg_hex(user, mac, 8);
    char username[64];
    snprintf(username, sizeof username, "%lld:%s", (long long)(now_s + ttl_s), user);
    char cred[29];
    sg_turn_credential(secret, username, cred);
    sg_buf_puts(out, ",\"iceServers\":[{\"urls\":[");
    const char *p = urls;
    bool first = true;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        while (len && *p == ' ') { p++; len--; }
        while (len && p[len - 1] == ' ') len--;
        if (len) {
            if (!first)
                sg_buf_putc(out, ',');
            sg_buf_json_str(out, p, len);
            first = false;
        }
        if (!e)
            break;
        p = e + 1;
    }
    sg_buf_puts(out, "],\"username\":");
    sg_buf_json_str(out, username, strlen(username));
    sg_buf_puts(out, ",\"credential\":");
    sg_buf_json_str(out, cred, strlen(cred));
    sg_buf_puts(out, "}]");
}
