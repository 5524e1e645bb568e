/* SPDX-License-Identifier: Apache-2.0 */
#include "sg/metrics.h"

#include <string.h>

/* Milliseconds: relays on loopback take well under 1 ms, across a data
 * centre a few ms; the tail matters up to seconds. */
static const double BOUNDS[SG_HIST_BUCKETS] = {0.1, 0.25, 0.5, 1, 2, 5, 10, 25,
                                               50, 100, 250, 500, 1000, 2500, 5000, 10000};

static void family(sg_counter_family *f, const char *name, const char *help, const char *label)
{
    memset(f, 0, sizeof *f);
    f->name = name;
    f->help = help;
    f->label = label;
}

void sg_metrics_init(sg_metrics *m)
{
    memset(m, 0, sizeof *m);
    family(&m->messages, "messages_total", "Client messages received, by type.", "type");
    family(&m->errors, "errors_total", "Error messages sent to clients, by code.", "code");
    family(&m->auth_failures, "auth_failures_total", "Refused handshakes for a token, by reason.", "reason");
    family(&m->ratelimit_drops, "ratelimit_drops_total", "Messages dropped by a rate limit, by scope.", "scope");
    family(&m->handshakes, "handshakes_total", "Upgrade requests, by outcome.", "outcome");
    family(&m->closes, "ws_closes_total", "WebSocket connections ended, by close code.", "code");
    family(&m->caps, "caps_tripped_total", "Resource caps that refused or closed a connection.", "cap");
    family(&m->control, "control_actions_total",
           "Backend control carried out on this node: memberships dropped by a kick or a closed room, "
           "connections closed for a revoked user.", "action");
    m->relay_latency.name = "relay_latency_ms";
    m->relay_latency.help = "From the sender's frame arriving at its gateway to the relay written at the target's gateway.";
    m->redis_latency.name = "redis_command_latency_ms";
    m->redis_latency.help = "Redis command round trip.";
}

void sg_metrics_add(sg_counter_family *f, const char *value, uint64_t n)
{
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->values[i], value) == 0) {
            f->counts[i] += n;
            return;
        }
    if (f->n < SG_METRICS_MAX_LABELS - 1) {
        f->values[f->n] = value; /* values are string literals */
        f->counts[f->n++] = n;
        return;
    }
    /* The last slot collects everything past the table. */
    f->values[SG_METRICS_MAX_LABELS - 1] = "other";
    f->counts[SG_METRICS_MAX_LABELS - 1] += n;
    f->n = SG_METRICS_MAX_LABELS;
}

void sg_metrics_inc(sg_counter_family *f, const char *value) { sg_metrics_add(f, value, 1); }

void sg_hist_observe(sg_histogram *h, double v)
{
    int i = 0;
    while (i < SG_HIST_BUCKETS && v > BOUNDS[i])
        i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

static void gauge(sg_buf *o, const char *name, const char *help, const char *type, double v)
{
    sg_buf_printf(o, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
}

static void render_family(sg_buf *o, const sg_counter_family *f)
{
    sg_buf_printf(o, "# HELP %s %s\n# TYPE %s counter\n", f->name, f->help, f->name);
    for (int i = 0; i < f->n; i++)
        sg_buf_printf(o, "%s{%s=\"%s\"} %llu\n", f->name, f->label, f->values[i],
                      (unsigned long long)f->counts[i]);
}

static void render_hist(sg_buf *o, const sg_histogram *h)
{
    sg_buf_printf(o, "# HELP %s %s\n# TYPE %s histogram\n", h->name, h->help, h->name);
    uint64_t cum = 0;
    for (int i = 0; i < SG_HIST_BUCKETS; i++) {
        cum += h->counts[i];
        sg_buf_printf(o, "%s_bucket{le=\"%g\"} %llu\n", h->name, BOUNDS[i], (unsigned long long)cum);
    }
    cum += h->counts[SG_HIST_BUCKETS];
    sg_buf_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", h->name,
                  (unsigned long long)cum, h->name, h->sum, h->name, (unsigned long long)h->count);
}

/* A label value in the text format: backslash, quote and newline escaped. */
static void label_value(sg_buf *o, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            sg_buf_putc(o, '\\');
        if (*v == '\n') {
            sg_buf_puts(o, "\\n");
            continue;
        }
        sg_buf_putc(o, *v);
    }
}

/* The usual info-metric idiom: a constant 1 whose labels carry the build, so
 * dashboards can join on it and a rollout shows as a change of label. */
static void render_build_info(sg_buf *o, const sg_metrics *m)
{
    sg_buf_puts(o, "# HELP build_info The running build: version and git commit (always 1).\n"
                   "# TYPE build_info gauge\nbuild_info{version=\"");
    label_value(o, m->build_version ? m->build_version : "unknown");
    sg_buf_puts(o, "\",commit=\"");
    label_value(o, m->build_commit ? m->build_commit : "unknown");
    sg_buf_puts(o, "\"} 1\n");
}

void sg_metrics_render(const sg_metrics *m, sg_buf *o)
{
    render_build_info(o, m);
    gauge(o, "ws_connections_gauge", "Open WebSocket connections on this node.", "gauge", (double)m->ws_connections);
    gauge(o, "room_members_gauge", "Room memberships held by connections on this node.", "gauge", (double)m->room_members);
    gauge(o, "redis_connected", "1 when both Redis connections are up.", "gauge", (double)m->redis_connected);
    gauge(o, "draining", "1 while the node drains for shutdown.", "gauge", (double)m->draining);
    gauge(o, "redis_reconnects_total", "Redis reconnections.", "counter", (double)m->redis_reconnects);
    gauge(o, "output_buffer_closes_total", "Connections closed for not reading their output.", "counter",
          (double)m->output_buffer_closes);
    gauge(o, "relays_delivered_total", "Relays written to a target connection on this node.", "counter",
          (double)m->relays_delivered);
    gauge(o, "log_lines_dropped_total", "Log lines dropped because stdout was not read.", "counter",
          (double)m->log_dropped);
    gauge(o, "delivery_probe_age_ms", "Since this node's last pub/sub probe came back (-1: never).", "gauge",
          (double)m->probe_age_ms);
    gauge(o, "delivery_probes_sent_total", "Pub/sub probes this node published to itself.", "counter",
          (double)m->probes_sent);
    gauge(o, "delivery_probes_received_total", "Pub/sub probes that came back.", "counter",
          (double)m->probes_received);
    gauge(o, "trace_spans_exported_total", "Spans the OTLP collector accepted.", "counter",
          (double)m->spans_exported);
    gauge(o, "trace_spans_dropped_total", "Spans dropped (collector down, slow or refusing).", "counter",
          (double)m->spans_dropped);
    if (m->tls_cert_not_after)
        gauge(o, "tls_certificate_expiry_timestamp_seconds",
              "When the certificate of the public listener expires (Unix time; follows SIGHUP reloads).",
              "gauge", (double)m->tls_cert_not_after);
    render_family(o, &m->messages);
    render_family(o, &m->errors);
    render_family(o, &m->auth_failures);
    render_family(o, &m->ratelimit_drops);
    render_family(o, &m->handshakes);
    render_family(o, &m->closes);
    render_family(o, &m->caps);
    render_family(o, &m->control);
    render_hist(o, &m->relay_latency);
    render_hist(o, &m->redis_latency);
}
