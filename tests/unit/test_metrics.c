/* SPDX-License-Identifier: Apache-2.0 */
/* Unit tests for metrics: counter families (label reuse, the "other" slot
 * past SG_METRICS_MAX_LABELS), histogram bucket placement at the bounds,
 * and the Prometheus text rendering (HELP/TYPE lines, cumulative buckets
 * ending in +Inf == count, the sum). The rendered text is checked line by
 * line, as a scraper would read it. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sg/buf.h"
#include "sg/metrics.h"

/* The bucket bounds of metrics.c, in rendered form and as numbers. */
static const double BOUNDS[SG_HIST_BUCKETS] = {0.1, 0.25, 0.5, 1, 2, 5, 10, 25,
                                               50, 100, 250, 500, 1000, 2500, 5000, 10000};

/* ---- helpers ------------------------------------------------------------ */

static char *render(const sg_metrics *m)
{
    sg_buf b;
    sg_buf_init(&b);
    sg_metrics_render(m, &b);
    char *s = strdup(b.data ? b.data : "");
    assert_non_null(s);
    assert_int_equal(strlen(s), b.len); /* no NUL inside */
    sg_buf_free(&b);
    return s;
}

/* The value of the sample line that starts with `series ` (exact series,
 * labels included); fails when absent or present twice. */
static double sample(const char *text, const char *series)
{
    size_t sl = strlen(series);
    double v = NAN;
    int found = 0;
    for (const char *p = text; *p;) {
        const char *e = strchr(p, '\n');
        assert_non_null(e); /* every line ends in \n */
        if ((size_t)(e - p) > sl && strncmp(p, series, sl) == 0 && p[sl] == ' ') {
            v = strtod(p + sl + 1, NULL);
            found++;
        }
        p = e + 1;
    }
    if (found != 1)
        fail_msg("series '%s' found %d times", series, found);
    return v;
}

static bool has_series(const char *text, const char *series)
{
    size_t sl = strlen(series);
    for (const char *p = text; *p;) {
        const char *e = strchr(p, '\n');
        if (strncmp(p, series, sl) == 0 && p[sl] == ' ')
            return true;
        p = e + 1;
    }
    return false;
}

static bool has_line(const char *text, const char *line)
{
    size_t ll = strlen(line);
    for (const char *p = text; *p;) {
        const char *e = strchr(p, '\n');
        if ((size_t)(e - p) == ll && memcmp(p, line, ll) == 0)
            return true;
        p = e + 1;
    }
    return false;
}

/* Checks that name has exactly one HELP and one TYPE line of this type, in
 * that order, before its first sample. */
static void assert_meta(const char *text, const char *name, const char *type)
{
    char help[128], typel[128];
    snprintf(help, sizeof help, "# HELP %s ", name);
    snprintf(typel, sizeof typel, "# TYPE %s %s\n", name, type);
    const char *h = strstr(text, help);
    if (!h)
        fail_msg("no HELP line for %s", name);
    assert_null(strstr(h + 1, help));
    const char *t = strstr(text, typel);
    if (!t)
        fail_msg("no '# TYPE %s %s' line", name, type);
    assert_true(h < t);
    /* The HELP text is not empty. */
    assert_true(h[strlen(help)] != '\n');
    /* No sample of this metric comes before the TYPE line. */
    size_t nl = strlen(name);
    for (const char *p = text; p < t;) {
        const char *e = strchr(p, '\n');
        if (p[0] != '#' && strncmp(p, name, nl) == 0 && (p[nl] == ' ' || p[nl] == '{' || p[nl] == '_'))
            fail_msg("sample of %s before its TYPE line", name);
        p = e + 1;
    }
}

/* Every line is a comment or "series value" with a parseable value. */
static void assert_well_formed(const char *text)
{
    assert_true(text[0] != '\0');
    assert_int_equal(text[strlen(text) - 1], '\n');
    for (const char *p = text; *p;) {
        const char *e = strchr(p, '\n');
        assert_non_null(e);
        if (p[0] != '#') {
            const char *sp = memchr(p, ' ', (size_t)(e - p));
            assert_non_null(sp);
            char *end;
            (void)strtod(sp + 1, &end);
            if (end != e)
                fail_msg("bad sample line: %.*s", (int)(e - p), p);
        } else {
            assert_true(strncmp(p, "# HELP ", 7) == 0 || strncmp(p, "# TYPE ", 7) == 0);
        }
        p = e + 1;
    }
}

/* ---- counter families --------------------------------------------------- */

static void test_family_label_reuse(void **state)
{
    sg_metrics m;
    sg_metrics_init(&m);
    sg_metrics_inc(&m.messages, "join");
    sg_metrics_inc(&m.messages, "join");
    sg_metrics_inc(&m.messages, "offer");
    /* The same text from another buffer is the same label. */
    static char join_copy[] = "join";
    sg_metrics_inc(&m.messages, join_copy);
    sg_metrics_add(&m.messages, "candidate", 40);
    sg_metrics_add(&m.messages, "candidate", 2);
    sg_metrics_add(&m.messages, "offer", 0);
    assert_int_equal(m.messages.n, 3);
    assert_string_equal(m.messages.values[0], "join");
    assert_int_equal(m.messages.counts[0], 3);
    assert_string_equal(m.messages.values[1], "offer");
    assert_int_equal(m.messages.counts[1], 1);
    assert_string_equal(m.messages.values[2], "candidate");
    assert_int_equal(m.messages.counts[2], 42);
    /* Families are independent. */
    assert_int_equal(m.errors.n, 0);

    char *t = render(&m);
    assert_true(sample(t, "messages_total{type=\"join\"}") == 3);
    assert_true(sample(t, "messages_total{type=\"offer\"}") == 1);
    assert_true(sample(t, "messages_total{type=\"candidate\"}") == 42);
    assert_false(has_series(t, "errors_total{code=\"join\"}"));
    free(t);
}

/* Label names per family, as docs/protocol.md §8 and metrics.h name them. */
static void test_family_labels(void **state)
{
    sg_metrics m;
    sg_metrics_init(&m);
    sg_metrics_inc(&m.errors, "bad_request");
    sg_metrics_inc(&m.auth_failures, "expired");
    sg_metrics_inc(&m.ratelimit_drops, "peer");
    sg_metrics_inc(&m.handshakes, "101");
    sg_metrics_inc(&m.closes, "1000");
    sg_metrics_inc(&m.caps, "max_connections");
    char *t = render(&m);
    assert_true(sample(t, "errors_total{code=\"bad_request\"}") == 1);
    assert_true(sample(t, "auth_failures_total{reason=\"expired\"}") == 1);
    assert_true(sample(t, "ratelimit_drops_total{scope=\"peer\"}") == 1);
    assert_true(sample(t, "handshakes_total{outcome=\"101\"}") == 1);
    assert_true(sample(t, "ws_closes_total{code=\"1000\"}") == 1);
    assert_true(sample(t, "caps_tripped_total{cap=\"max_connections\"}") == 1);
    free(t);
}

/* SG_METRICS_MAX_LABELS - 1 values get their own series; every later new
 * value is counted in the last slot, "other"; known values keep counting. */
static void test_family_overflow_other(void **state)
{
    static char names[SG_METRICS_MAX_LABELS + 10][16];
    for (int i = 0; i < SG_METRICS_MAX_LABELS + 10; i++)
        snprintf(names[i], sizeof names[i], "v%02d", i);

    sg_metrics m;
    sg_metrics_init(&m);
    sg_counter_family *f = &m.errors;
    int own = SG_METRICS_MAX_LABELS - 1;
    for (int i = 0; i < own; i++)
        sg_metrics_inc(f, names[i]);
    assert_int_equal(f->n, own);
    for (int i = 0; i < own; i++) {
        assert_string_equal(f->values[i], names[i]);
        assert_int_equal(f->counts[i], 1);
    }

    /* The next new values go to "other". */
    sg_metrics_inc(f, names[own]);
    assert_int_equal(f->n, SG_METRICS_MAX_LABELS);
    assert_string_equal(f->values[SG_METRICS_MAX_LABELS - 1], "other");
    assert_int_equal(f->counts[SG_METRICS_MAX_LABELS - 1], 1);
    for (int i = own + 1; i < SG_METRICS_MAX_LABELS + 10; i++)
        sg_metrics_inc(f, names[i]);
    sg_metrics_add(f, names[own + 3], 5);
    assert_int_equal(f->n, SG_METRICS_MAX_LABELS);
    assert_int_equal(f->counts[SG_METRICS_MAX_LABELS - 1], 11 + 5);
    /* Known values still count in their own slot. */
    sg_metrics_inc(f, names[0]);
    sg_metrics_add(f, names[own - 1], 9);
    assert_int_equal(f->counts[0], 2);
    assert_int_equal(f->counts[own - 1], 10);

    char *t = render(&m);
    assert_true(sample(t, "errors_total{code=\"other\"}") == 16);
    assert_true(sample(t, "errors_total{code=\"v00\"}") == 2);
    char series[256];
    snprintf(series, sizeof series, "errors_total{code=\"%s\"}", names[own - 1]);
    assert_true(sample(t, series) == 10);
    snprintf(series, sizeof series, "errors_total{code=\"%s\"}", names[own]);
    assert_false(has_series(t, series));
    /* Exactly SG_METRICS_MAX_LABELS series for the family. */
    int n = 0;
    for (const char *p = t; (p = strstr(p, "\nerrors_total{")); p++)
        n++;
    assert_int_equal(n, SG_METRICS_MAX_LABELS);
    free(t);
}

/* ---- histograms --------------------------------------------------------- */

/* A value equal to a bound belongs to that bucket (le = less or equal); just
 * above goes to the next; above the last bound to +Inf. */
static void test_hist_bucket_boundaries(void **state)
{
    for (int i = 0; i < SG_HIST_BUCKETS; i++) {
        sg_histogram h;
        memset(&h, 0, sizeof h);
        sg_hist_observe(&h, BOUNDS[i]);
        assert_int_equal(h.counts[i], 1);
        sg_hist_observe(&h, nextafter(BOUNDS[i], INFINITY));
        assert_int_equal(h.counts[i + 1], 1);
        if (i > 0) {
            sg_hist_observe(&h, nextafter(BOUNDS[i - 1], INFINITY));
            assert_int_equal(h.counts[i], 2);
        }
        assert_int_equal(h.count, i > 0 ? 3 : 2);
    }
    sg_histogram h;
    memset(&h, 0, sizeof h);
    sg_hist_observe(&h, 0);
    sg_hist_observe(&h, -5); /* clock steps: counted in the first bucket */
    sg_hist_observe(&h, 1e300);
    sg_hist_observe(&h, INFINITY);
    assert_int_equal(h.counts[0], 2);
    assert_int_equal(h.counts[SG_HIST_BUCKETS], 2);
    assert_int_equal(h.count, 4);
}

static void test_hist_sum_and_count(void **state)
{
    sg_histogram h;
    memset(&h, 0, sizeof h);
    double want = 0;
    for (int i = 0; i < 1000; i++) {
        double v = (i % 97) * 1.25;
        sg_hist_observe(&h, v);
        want += v;
    }
    assert_int_equal(h.count, 1000);
    assert_true(fabs(h.sum - want) < 1e-9);
    uint64_t total = 0;
    for (int i = 0; i <= SG_HIST_BUCKETS; i++)
        total += h.counts[i];
    assert_int_equal(total, h.count);
}

/* The rendered histogram: one _bucket per bound with le as written in the
 * bounds, cumulative and non-decreasing, +Inf equal to _count, then _sum. */
static void test_hist_render_cumulative(void **state)
{
    static const char *LE[SG_HIST_BUCKETS] = {"0.1", "0.25", "0.5", "1",   "2",   "5",    "10",   "25",
                                              "50",  "100",  "250", "500", "1000", "2500", "5000", "10000"};
    sg_metrics m;
    sg_metrics_init(&m);
    /* Two per bucket (at the bound and just below it), three beyond. */
    double sum = 0;
    for (int i = 0; i < SG_HIST_BUCKETS; i++) {
        double a = BOUNDS[i], b = nextafter(BOUNDS[i], 0);
        sg_hist_observe(&m.relay_latency, a);
        sg_hist_observe(&m.relay_latency, b);
        sum += a + b;
    }
    for (int i = 0; i < 3; i++) {
        sg_hist_observe(&m.relay_latency, 20000 + i);
        sum += 20000 + i;
    }
    char *t = render(&m);
    assert_well_formed(t);
    assert_meta(t, "relay_latency_ms", "histogram");
    assert_meta(t, "redis_command_latency_ms", "histogram");
    double prev = 0;
    for (int i = 0; i < SG_HIST_BUCKETS; i++) {
        char series[96];
        snprintf(series, sizeof series, "relay_latency_ms_bucket{le=\"%s\"}", LE[i]);
        double c = sample(t, series);
        assert_true(c >= prev);
        assert_true(c == 2.0 * (i + 1));
        prev = c;
    }
    double inf = sample(t, "relay_latency_ms_bucket{le=\"+Inf\"}");
    assert_true(inf == 2.0 * SG_HIST_BUCKETS + 3);
    assert_true(sample(t, "relay_latency_ms_count") == inf);
    double s = sample(t, "relay_latency_ms_sum");
    assert_true(fabs(s - sum) < 1e-5 * sum);

    /* The buckets come in order, +Inf last, then _sum and _count. */
    const char *b0 = strstr(t, "relay_latency_ms_bucket{le=\"0.1\"}");
    const char *b15 = strstr(t, "relay_latency_ms_bucket{le=\"10000\"}");
    const char *bi = strstr(t, "relay_latency_ms_bucket{le=\"+Inf\"}");
    const char *bs = strstr(t, "relay_latency_ms_sum ");
    const char *bc = strstr(t, "relay_latency_ms_count ");
    assert_true(b0 && b15 && bi && bs && bc);
    assert_true(b0 < b15 && b15 < bi && bi < bs && bs < bc);

    /* The other histogram is empty: all zero. */
    assert_true(sample(t, "redis_command_latency_ms_bucket{le=\"+Inf\"}") == 0);
    assert_true(sample(t, "redis_command_latency_ms_count") == 0);
    assert_true(sample(t, "redis_command_latency_ms_sum") == 0);
    free(t);
}

static void test_hist_sum_fraction(void **state)
{
    sg_metrics m;
    sg_metrics_init(&m);
    sg_hist_observe(&m.redis_latency, 0.125);
    sg_hist_observe(&m.redis_latency, 2.5);
    char *t = render(&m);
    assert_true(has_line(t, "redis_command_latency_ms_sum 2.625000"));
    assert_true(has_line(t, "redis_command_latency_ms_count 2"));
    assert_true(has_line(t, "redis_command_latency_ms_bucket{le=\"0.1\"} 0"));
    assert_true(has_line(t, "redis_command_latency_ms_bucket{le=\"0.25\"} 1"));
    assert_true(has_line(t, "redis_command_latency_ms_bucket{le=\"2.5\"} 0") == false);
    assert_true(has_line(t, "redis_command_latency_ms_bucket{le=\"5\"} 2"));
    free(t);
}

/* ---- the whole page ----------------------------------------------------- */

static void test_render_all_metrics(void **state)
{
    sg_metrics m;
    sg_metrics_init(&m);
    m.ws_connections = 12;
    m.room_members = 30;
    m.redis_connected = 1;
    m.draining = 0;
    m.redis_reconnects = 4;
    m.output_buffer_closes = 5;
    m.relays_delivered = 123456789012ull;
    m.log_dropped = 7;
    char *t = render(&m);
    assert_well_formed(t);

    static const struct { const char *name, *type; } META[] = {
        {"ws_connections_gauge", "gauge"},      {"room_members_gauge", "gauge"},
        {"redis_connected", "gauge"},           {"draining", "gauge"},
        {"redis_reconnects_total", "counter"},  {"output_buffer_closes_total", "counter"},
        {"relays_delivered_total", "counter"},  {"log_lines_dropped_total", "counter"},
        {"messages_total", "counter"},          {"errors_total", "counter"},
        {"auth_failures_total", "counter"},     {"ratelimit_drops_total", "counter"},
        {"handshakes_total", "counter"},        {"ws_closes_total", "counter"},
        {"caps_tripped_total", "counter"},      {"relay_latency_ms", "histogram"},
        {"redis_command_latency_ms", "histogram"},
    };
    for (size_t i = 0; i < sizeof META / sizeof META[0]; i++)
        assert_meta(t, META[i].name, META[i].type);

    assert_true(has_line(t, "ws_connections_gauge 12"));
    assert_true(has_line(t, "room_members_gauge 30"));
    assert_true(has_line(t, "redis_connected 1"));
    assert_true(has_line(t, "draining 0"));
    assert_true(has_line(t, "redis_reconnects_total 4"));
    assert_true(has_line(t, "output_buffer_closes_total 5"));
    assert_true(has_line(t, "relays_delivered_total 123456789012"));
    assert_true(has_line(t, "log_lines_dropped_total 7"));
    /* Families without values have metadata and no samples. */
    assert_false(has_series(t, "messages_total"));
    assert_null(strstr(t, "messages_total{"));
    free(t);
}

/* build_info: one gauge, value 1, the build in its labels; "unknown" until
 * main sets them; label values escaped as the text format asks. */
static void test_build_info(void **state)
{
    sg_metrics m;
    sg_metrics_init(&m);
    char *t = render(&m);
    assert_well_formed(t);
    assert_meta(t, "build_info", "gauge");
    assert_true(has_line(t, "build_info{version=\"unknown\",commit=\"unknown\"} 1"));
    free(t);

    m.build_version = "1.2.3";
    m.build_commit = "0123456789ab";
    t = render(&m);
    assert_well_formed(t);
    assert_true(sample(t, "build_info{version=\"1.2.3\",commit=\"0123456789ab\"}") == 1);
    free(t);

    m.build_commit = "a\"b\\c\nd";
    t = render(&m);
    assert_true(has_line(t, "build_info{version=\"1.2.3\",commit=\"a\\\"b\\\\c\\nd\"} 1"));
    free(t);
}

/* The certificate expiry gauge exists only on a TLS listener. */
static void test_tls_expiry_gauge(void **state)
{
    sg_metrics m;
    sg_metrics_init(&m);
    char *t = render(&m);
    assert_null(strstr(t, "tls_certificate_expiry_timestamp_seconds"));
    free(t);
    m.tls_cert_not_after = 1893456000; /* 2030-01-01 */
    t = render(&m);
    assert_well_formed(t);
    assert_meta(t, "tls_certificate_expiry_timestamp_seconds", "gauge");
    assert_true(has_line(t, "tls_certificate_expiry_timestamp_seconds 1893456000"));
    free(t);
}

/* Rendering does not change the metrics: twice gives the same text. */
static void test_render_idempotent(void **state)
{
    sg_metrics m;
    sg_metrics_init(&m);
    sg_metrics_inc(&m.messages, "join");
    sg_hist_observe(&m.relay_latency, 3);
    char *a = render(&m);
    char *b = render(&m);
    assert_string_equal(a, b);
    free(a);
    free(b);
}

/* Rendering appends: the caller's buffer keeps what it had. */
static void test_render_appends(void **state)
{
    sg_metrics m;
    sg_metrics_init(&m);
    sg_buf b;
    sg_buf_init(&b);
    sg_buf_puts(&b, "# prefix\n");
    sg_metrics_render(&m, &b);
    assert_memory_equal(b.data, "# prefix\n# HELP ", 16);
    sg_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_family_label_reuse),
        cmocka_unit_test(test_family_labels),
        cmocka_unit_test(test_family_overflow_other),
        cmocka_unit_test(test_hist_bucket_boundaries),
        cmocka_unit_test(test_hist_sum_and_count),
        cmocka_unit_test(test_hist_render_cumulative),
        cmocka_unit_test(test_hist_sum_fraction),
        cmocka_unit_test(test_render_all_metrics),
        cmocka_unit_test(test_build_info),
        cmocka_unit_test(test_tls_expiry_gauge),
        cmocka_unit_test(test_render_idempotent),
        cmocka_unit_test(test_render_appends),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
