/* SPDX-License-Identifier: Apache-2.0 */
/* A scripted stand-in for bus.c, linked instead of it by the session's unit
 * tests and fuzzer: every script call is recorded (script, rooms, arguments,
 * tag) for the test to inspect and answer in any order it likes, with
 * replies written as RESP bytes; subscriptions are reference-counted and
 * confirmed only when the test says so. Nothing touches a socket. */
#ifndef SG_FAKE_BUS_H
#define SG_FAKE_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <hiredis/hiredis.h>

#include "sg/bus.h"

#define FAKE_MAX_ARGS 512

typedef struct fake_call {
    struct fake_call *next;
    int script;        /* sg_fn, or -1 for a raw command */
    int nkeys;
    char *keys[96];
    int argc;
    char *argv[FAKE_MAX_ARGS];
    size_t lens[FAKE_MAX_ARGS];
    uint64_t tag;
} fake_call;

/* Calls not answered yet, oldest first (the test pops and answers them).
 * Raw commands without a tag (fire-and-forget: SADD, SREM, PEXPIRE of the
 * instance's room set) are not queued: they go to the command log. */
fake_call *fake_bus_pop(sg_bus *b);
/* The n-th call still pending (0: oldest), without removing it; NULL past the end. */
fake_call *fake_bus_peek(sg_bus *b, size_t n);
size_t fake_bus_pending(sg_bus *b);
/* How many fire-and-forget commands went out, and the n-th of them as one
 * string, arguments separated by spaces (NULL past the end). */
size_t fake_bus_commands(sg_bus *b);
const char *fake_bus_command(sg_bus *b, size_t n);
void fake_call_free(fake_call *c);

void fake_bus_set_available(sg_bus *b, bool up);
void fake_bus_set_overloaded(sg_bus *b, bool over);
/* Subscriptions: confirmed at once (auto) or only by fake_bus_confirm. */
void fake_bus_set_auto_confirm(sg_bus *b, bool on);
/* Marks channel confirmed; returns true if it was referenced and pending. */
bool fake_bus_confirm(sg_bus *b, const char *channel);
/* Reference count of a channel (0: not subscribed). */
unsigned fake_bus_refs(sg_bus *b, const char *channel);
/* Channels referenced and not yet confirmed, oldest first; NULL past the end. */
const char *fake_bus_unconfirmed(sg_bus *b, size_t n);

/* A reply parsed from RESP bytes (e.g. "*2\r\n$2\r\nok\r\n..."); NULL when
 * the bytes are not one complete reply. Free with freeReplyObject. */
redisReply *fake_reply(const char *resp, size_t len);
redisReply *fake_replyf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
