/* SPDX-License-Identifier: Apache-2.0 */
/* trace: OpenTelemetry spans exported as OTLP/HTTP JSON (docs/protocol.md §8).
 *
 * Recording a span formats it into the pending batch and returns: no I/O on
 * the caller's path. A timer (and a full batch) sends the batch with one
 * HTTP/1.1 POST to the traces URL (http or https, libevent's HTTP client);
 * one request is in flight at a time. When the collector is down or slow,
 * new spans beyond the queue cap are dropped and counted, never waited for. */
#ifndef SG_TRACE_H
#define SG_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct sg_log;

/* A W3C trace context: 16-byte trace id, 8-byte span id. */
typedef struct sg_span_ctx {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    bool sampled;
    bool valid;
} sg_span_ctx;

#define SG_TRACEPARENT_LEN 55 /* "00-<32 hex>-<16 hex>-<2 hex>" */

/* Parses a traceparent header value. Version 00 must be exactly 55
 * characters; a later version (01-fe) is read the same way and may carry
 * "-<more>" after the flags, as the W3C spec asks; version ff, all-zero ids,
 * uppercase or other non-hex digits and wrong separators are rejected (the
 * spec's grammar is lowercase only). Any flags are accepted; sampled is bit 0.
 * On failure *out is zeroed (valid = false). */
bool sg_traceparent_parse(const char *s, size_t n, sg_span_ctx *out);
/* Writes "00-<trace>-<span>-01|00" and a NUL (flags carry only sampled). */
void sg_traceparent_format(const sg_span_ctx *c, char out[SG_TRACEPARENT_LEN + 1]);
/* A new span: same trace (and sampled flag) as parent when parent is valid,
 * else a new random trace, sampled; always a new random, non-zero span id.
 * child may be the same object as parent. */
void sg_span_start(sg_span_ctx *child, const sg_span_ctx *parent);

typedef struct sg_tracer sg_tracer;

/* Limits. A batch (one POST) holds at most SG_TRACE_BATCH_MAX_SPANS spans;
 * spans waiting behind the request in flight (the batch being filled and
 * closed batches) are capped by count and by bytes of span JSON; beyond the
 * cap a span is dropped and counted. */
#define SG_TRACE_BATCH_MAX_SPANS 512
#define SG_TRACE_QUEUE_MAX_SPANS 4096
#define SG_TRACE_QUEUE_MAX_BYTES (4u << 20)

typedef struct sg_tracer_stats {
    uint64_t exported;  /* spans the collector accepted (2xx) */
    uint64_t dropped;   /* spans dropped: queue full, collector down or refused */
    uint64_t batches_failed;
} sg_tracer_stats;

typedef struct sg_tracer_opts {
    /* "http[s]://host[:port][/path]": the traces URL, used as it is (config.c
     * turns a base URL into <base>/v1/traces). host: a name, IPv4 or [IPv6];
     * the port defaults to 80 or 443. */
    const char *url;
    const char *service_name; /* NULL: "signal-gateway" */
    const char *node_id;      /* the service.instance.id resource attribute */
    /* Extra request headers (OTEL_EXPORTER_OTLP_HEADERS), already checked:
     * token names, no control characters in values. */
    char *const *header_names, *const *header_values;
    size_t nheaders;
    const char *ca_file;      /* https: PEM CA bundle; NULL: the system's */
} sg_tracer_opts;

/* Returns NULL when o or its url is NULL or empty (tracing off, *err NULL)
 * or unusable (*err set to a static message). A numeric host is used as
 * is; a host name is looked up with evdns when the first batch leaves (and
 * again now and then), so a collector that does not resolve yet costs
 * spans, not the start. https verifies the collector's certificate against
 * its name (or address). log (may be NULL) gets at most one
 * "trace.export_failed" warn line per 10 s. */
sg_tracer *sg_tracer_new(struct event_base *base, const sg_tracer_opts *o, struct sg_log *log,
                         const char **err);
/* Sends what is queued and frees. With timeout_ms > 0 it runs the event
 * loop (EVLOOP_ONCE passes, so other events on the base may fire too) until
 * every queued batch is sent and answered or timeout_ms has passed. Call it
 * after event_base_dispatch has returned: from inside a callback of the base
 * the loop cannot be re-entered (libevent prints a warning) and the queue is
 * dropped. With timeout_ms <= 0 it drops at once. Whatever is left is
 * dropped. t may be NULL. */
void sg_tracer_free(sg_tracer *t, int timeout_ms);
/* Never NULL (all zero for a NULL tracer). */
const sg_tracer_stats *sg_tracer_stats_get(const sg_tracer *t);
/* Overrides the batch delay (default 1000 ms after a batch's first span) and
 * the request timeout (default 5000 ms for the connect, the TLS handshake and
 * each read or write of a request; applies to connections made later);
 * <= 0 keeps the current value. For tests and tuning. */
void sg_tracer_set_timing(sg_tracer *t, int batch_delay_ms, int request_timeout_ms);

typedef enum { SG_SPAN_INTERNAL = 1, SG_SPAN_SERVER = 2, SG_SPAN_CLIENT = 3,
               SG_SPAN_PRODUCER = 4, SG_SPAN_CONSUMER = 5 } sg_span_kind;

typedef struct sg_span_attr {
    const char *key;
    const char *str; /* string value, or NULL for an integer */
    int64_t num;
} sg_span_attr;

/* Records a finished span. parent may be NULL or invalid (a root span).
 * status_error: the span ends in error with that message (NULL: ok).
 * t may be NULL (tracing off): then it does nothing. */
void sg_tracer_record(sg_tracer *t, const char *name, sg_span_kind kind, const sg_span_ctx *ctx,
                      const sg_span_ctx *parent, uint64_t start_us, uint64_t end_us,
                      const sg_span_attr *attrs, size_t nattrs, const char *status_error);

#endif
