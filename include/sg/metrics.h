/* SPDX-License-Identifier: Apache-2.0 */
/* metrics: counters, gauges and histograms of one node, rendered in the
 * Prometheus text format for /metrics (docs/protocol.md §8). Updating a metric is
 * an array increment; label values are looked up in small fixed tables. */
#ifndef SG_METRICS_H
#define SG_METRICS_H

#include <stdint.h>
#include "sg/buf.h"

#define SG_METRICS_MAX_LABELS 32

/* A counter family with one label; values are created on first use, up to
 * SG_METRICS_MAX_LABELS (then counted under "other"). Label values come
 * from the code (codes, reasons, types), never from clients. */
typedef struct sg_counter_family {
    const char *name, *help, *label;
    const char *values[SG_METRICS_MAX_LABELS];
    uint64_t counts[SG_METRICS_MAX_LABELS];
    int n;
} sg_counter_family;

#define SG_HIST_BUCKETS 16
typedef struct sg_histogram {
    const char *name, *help;
    uint64_t counts[SG_HIST_BUCKETS + 1]; /* last: +Inf */
    double sum;
    uint64_t count;
} sg_histogram;

typedef struct sg_metrics {
    /* build_info{version,commit} 1; NULL renders as "unknown". Set once by
     * main (the version header is generated at configure time). */
    const char *build_version, *build_commit;
    int64_t ws_connections;      /* ws_connections_gauge */
    int64_t room_members;        /* room_members_gauge: memberships held on this node */
    int64_t redis_connected;     /* 0/1 */
    int64_t draining;            /* 0/1 */
    uint64_t redis_reconnects;
    uint64_t output_buffer_closes;
    uint64_t relays_delivered;
    uint64_t log_dropped;
    int64_t probe_age_ms;        /* since the last delivery probe came back; -1 never */
    uint64_t probes_sent, probes_received;
    uint64_t spans_exported, spans_dropped;
    int64_t tls_cert_not_after;  /* Unix time; 0: no TLS (not rendered) */
    sg_counter_family messages;   /* messages_total{type} */
    sg_counter_family errors;     /* errors_total{code} */
    sg_counter_family auth_failures; /* auth_failures_total{reason} */
    sg_counter_family ratelimit_drops; /* ratelimit_drops_total{scope} */
    sg_counter_family handshakes; /* handshakes_total{outcome} */
    sg_counter_family closes;     /* ws_closes_total{code} */
    sg_counter_family caps;       /* caps_tripped_total{cap} */
    sg_counter_family control;    /* control_actions_total{action}: kick, close_room, revoke */
    sg_histogram relay_latency;   /* relay_latency_ms */
    sg_histogram redis_latency;   /* redis_command_latency_ms */
} sg_metrics;

void sg_metrics_init(sg_metrics *m);
void sg_metrics_inc(sg_counter_family *f, const char *value);
void sg_metrics_add(sg_counter_family *f, const char *value, uint64_t n);
void sg_hist_observe(sg_histogram *h, double v);
void sg_metrics_render(const sg_metrics *m, sg_buf *out);

#endif
