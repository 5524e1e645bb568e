/* session: protocol semantics. A validated client message becomes a Redis
 * script call; a script reply or a channel message becomes frames to the
 * client. Every Redis reply is matched to its connection by id, never by
 * pointer: the connection may be gone. */
#ifndef SG_SESSION_H
#define SG_SESSION_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <hiredis/hiredis.h>

struct sg_server;
struct sg_conn;

/* A complete text message from an open connection. */
void sg_session_on_text(struct sg_conn *c, const char *text, size_t len, uint64_t arrival_us);
/* The connection is going: leave its rooms with its leave_reason. */
void sg_session_on_close(struct sg_conn *c);
/* Sends {"type":"error",...}; counts it. cid/room may be NULL. */
void sg_session_error(struct sg_conn *c, const char *code, const char *message,
                      const char *cid, const char *room);

/* Bus handlers. */
void sg_session_on_reply(void *srv, uint64_t tag, redisReply *r);
void sg_session_on_message(void *srv, const char *channel, size_t chlen, const char *payload, size_t len);
void sg_session_on_subscribed(void *srv, const char *channel, size_t chlen);
/* Redis came back: re-assert every local membership (silently if fresh). */
void sg_session_reassert(struct sg_server *s, bool silent);
/* Periodic lease refresh for every local room. */
void sg_session_refresh_leases(struct sg_server *s);

#endif
