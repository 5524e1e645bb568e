/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer driver for redis_url. The first byte picks the flags; the rest
 * is parsed once as one endpoint (from an exactly-sized heap block without
 * a NUL, so reading past len is an ASan error) and once as a list (a
 * NUL-terminated copy). What comes out must keep the header's promises. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sg/redis_url.h"

static void check(const sg_redis_endpoint *e, unsigned flags)
{
    size_t hl = strnlen(e->host, sizeof e->host);
    if (hl == 0 || hl == sizeof e->host || strnlen(e->user, sizeof e->user) == sizeof e->user ||
        strnlen(e->pass, sizeof e->pass) == sizeof e->pass)
        abort(); /* empty host, or a field without its NUL */
    if (e->port < 1 || e->port > 65535 || e->db < 0 || e->db > SG_REDIS_DB_MAX)
        abort();
    if ((flags & SG_REDIS_NO_DB) && e->db != 0)
        abort();
    if (e->auth != (e->pass[0] != '\0') || (!e->auth && e->user[0]))
        abort(); /* credentials come together, and a password is never empty */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned flags = data[0] & (SG_REDIS_BARE | SG_REDIS_NO_DB);
    data++;
    size--;
    char err[160];

    char *one = malloc(size ? size : 1);
    memcpy(one, data, size);
    sg_redis_endpoint e;
    if (sg_redis_endpoint_parse(one, size, flags, &e, err, sizeof err) == 0) {
        check(&e, flags);
        if (size > SG_REDIS_INPUT_MAX)
            abort();
    } else if (!memchr(err, '\0', sizeof err)) {
        abort();
    }
    free(one);

    char *list = malloc(size + 1);
    memcpy(list, data, size);
    list[size] = '\0';
    sg_redis_endpoint *eps = NULL;
    size_t n = 0;
    if (sg_redis_list_parse(list, flags, &eps, &n, err, sizeof err) == 0) {
        if (n < 1 || n > SG_REDIS_LIST_MAX)
            abort();
        for (size_t i = 0; i < n; i++)
            check(&eps[i], flags);
    } else if (eps || n) {
        abort();
    }
    sg_redis_list_free(eps, n);
    free(list);
    return 0;
}
