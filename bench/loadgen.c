/* SPDX-License-Identifier: Apache-2.0 */
/* loadgen: a load generator for signal-gateway (protocol v1, docs/protocol.md).
 *
 * One thread, one libevent loop. It opens P pairs of WebSocket clients
 * (ws:// or wss://), each pair in its own room with its own HS256 tokens
 * (minted here from --secret), joins A then B, and relays `candidate` or
 * `offer` messages from A to B (and B to A with --bidir):
 *
 *   closed loop  (--mode closed): W messages in flight per direction; every
 *                delivery (or error) releases one slot and sends the next.
 *   open loop    (--mode open):   a fixed total rate R, evenly spaced or
 *                Poisson arrivals, spread round-robin over the directions.
 *                The timestamp in a message is its *intended* send time, so
 *                a generator that falls behind shows up as latency (no
 *                coordinated omission) and in send_lag_ms.
 *   connections  (--mode conn):   N idle connections (2 per room), joined,
 *                pings answered, held for --hold seconds; reports the
 *                gateway's RSS per connection and its CPU over the hold.
 *
 * Every relayed message carries "lgt=<16-digit µs monotonic time> lgs=<seq>"
 * inside its candidate string or SDP; the receiver computes latency from it
 * and checks per-direction order. Output: exactly one JSON line on stdout.
 *
 * --proto peerjs speaks the PeerJS server's protocol (npm `peer`) instead,
 * for a side-by-side comparison: WebSocket GET <path>?key=K&id=<peer>&token=T,
 * no JWT; the server's {"type":"OPEN"} stands for "joined"; a message
 * {"type":"CANDIDATE"|"OFFER","payload":{...},"dst":<peer>} arrives as
 * {"type":...,"src":...,"dst":...,"payload":...}; EXPIRE (a message queued for
 * a peer that never came) counts as a relay error of the sender. Pairs,
 * rooms, stamps, order checks and the output are the same.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

/* ---- options ------------------------------------------------------------ */

enum { MODE_CLOSED, MODE_OPEN, MODE_CONN };
enum { KIND_CANDIDATE, KIND_OFFER };
enum { PROTO_SIGNAL, PROTO_PEERJS };

static struct {
    int mode;
    int proto;
    bool tls;
    char host[64];
    int port;
    char path[128];         /* of the upgrade request */
    const char *peerjs_key;
    const char *secret;
    const char *issuer, *audience;
    int pairs;
    int window;
    double rate;
    bool poisson;
    int kind;
    int size;
    bool bidir;
    double duration, warmup, drain;
    double setup_timeout;
    int concurrency;        /* pairs being set up at once */
    long conns;             /* conn mode */
    double hold;            /* conn mode */
    double settle;          /* conn mode: wait before the first RSS reading after setup */
    double msg_timeout;     /* closed loop: a direction with no progress this long is refilled */
    char **src_ips;
    int nsrc;
    int gateway_pid, redis_pid;
    const char *label;
    const char *admin;      /* HOST:PORT of the gateway's admin listener: relay_latency_ms */
    const char *dump;       /* latency samples as "<ms since start> <latency µs>" lines */
    bool verbose;
} O = {
    .mode = MODE_CLOSED, .proto = PROTO_SIGNAL, .peerjs_key = "peerjs", .host = "127.0.0.1", .port = 8443, .pairs = 50, .window = 1,
    .rate = 1000, .poisson = true, .kind = KIND_CANDIDATE, .size = 0, .duration = 5,
    .warmup = 1, .drain = 2, .setup_timeout = 120, .concurrency = 128, .conns = 1000,
    .hold = 10, .settle = 1, .msg_timeout = 2,
};

/* ---- small utilities ---------------------------------------------------- */

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static void vlog(const char *fmt, ...)
{
    if (!O.verbose)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void)
{
    /* xorshift64*: masks and arrival times; not for anything secret. */
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545f4914f6cdd1dull;
}

static double rng_unit(void) { return ((rng() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        die("out of memory");
    return p;
}

static void *xcalloc(size_t n, size_t m)
{
    void *p = calloc(n ? n : 1, m ? m : 1);
    if (!p)
        die("out of memory");
    return p;
}

static size_t b64url(char *out, const unsigned char *in, size_t n)
{
    static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = A[v >> 18 & 63];
        out[o++] = A[v >> 12 & 63];
        out[o++] = A[v >> 6 & 63];
        out[o++] = A[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = A[v >> 18 & 63];
        out[o++] = A[v >> 12 & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = A[v >> 18 & 63];
        out[o++] = A[v >> 12 & 63];
        out[o++] = A[v >> 6 & 63];
    }
    out[o] = '\0';
    return o;
}

/* An HS256 JWT: sub, iat, exp, rooms [room] (+ iss/aud when given). */
static char *mint_token(const char *sub, const char *room)
{
    static const char hdr[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    char payload[512];
    long long now = (long long)time(NULL);
    int pl = snprintf(payload, sizeof payload, "{\"sub\":\"%s\",\"iat\":%lld,\"exp\":%lld,\"rooms\":[\"%s\"]%s%s%s%s%s%s}",
                      sub, now, now + 3600, room, O.issuer ? ",\"iss\":\"" : "", O.issuer ? O.issuer : "",
                      O.issuer ? "\"" : "", O.audience ? ",\"aud\":\"" : "", O.audience ? O.audience : "",
                      O.audience ? "\"" : "");
    char *tok = xmalloc(1024);
    size_t n = b64url(tok, (const unsigned char *)hdr, sizeof hdr - 1);
    tok[n++] = '.';
    n += b64url(tok + n, (const unsigned char *)payload, (size_t)pl);
    unsigned char mac[32];
    unsigned int maclen = 0;
    HMAC(EVP_sha256(), O.secret, (int)strlen(O.secret), (const unsigned char *)tok, n, mac, &maclen);
    tok[n++] = '.';
    b64url(tok + n, mac, maclen);
    return tok;
}

static void b64std(char *out, const unsigned char *in, size_t n)
{
    EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

/* CPU seconds of another process (utime+stime from /proc/<pid>/stat). */
static double proc_cpu_s(int pid)
{
    if (pid <= 0)
        return -1;
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    /* after ") ": field 3 is state; utime and stime are fields 14 and 15 */
    unsigned long long ut = 0, st = 0;
    int field = 2;
    for (char *t = p + 1; *t; t++) {
        if (*t == ' ') {
            field++;
            if (field == 14)
                ut = strtoull(t + 1, NULL, 10);
            else if (field == 15) {
                st = strtoull(t + 1, NULL, 10);
                break;
            }
        }
    }
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* VmRSS of another process, in KiB. */
static long proc_rss_kb(int pid)
{
    if (pid <= 0)
        return -1;
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

/* Busy CPU seconds of the whole machine (all cores), from /proc/stat. */
static double machine_busy_s(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return -1;
    unsigned long long v[10] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
    fclose(f);
    if (n < 8)
        return -1;
    /* user nice system idle iowait irq softirq steal: busy = all but idle, iowait */
    unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    return (double)busy / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* ---- the gateway's own relay_latency_ms histogram ------------------------ */

#define MAX_BUCKETS 64
typedef struct {
    int n;
    double le[MAX_BUCKETS];
    double count[MAX_BUCKETS];
} histo;

/* GET /metrics from --admin (blocking; only at the window's edges). */
static int scrape_histo(histo *h)
{
    h->n = 0;
    if (!O.admin)
        return -1;
    char host[64];
    const char *colon = strrchr(O.admin, ':');
    if (!colon || (size_t)(colon - O.admin) >= sizeof host)
        return -1;
    memcpy(host, O.admin, (size_t)(colon - O.admin));
    host[colon - O.admin] = '\0';
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        return -1;
    }
    static const char req[] = "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n";
    if (write(fd, req, sizeof req - 1) < 0) {
        close(fd);
        return -1;
    }
    size_t cap = 1 << 20, len = 0;
    char *buf = xmalloc(cap + 1);
    ssize_t r;
    while (len < cap && (r = read(fd, buf + len, cap - len)) > 0)
        len += (size_t)r;
    close(fd);
    buf[len] = '\0';
    static const char key[] = "relay_latency_ms_bucket{le=\"";
    for (char *p = strstr(buf, key); p && h->n < MAX_BUCKETS; p = strstr(p + 1, key)) {
        char *q = p + sizeof key - 1;
        double le = strncmp(q, "+Inf", 4) == 0 ? INFINITY : strtod(q, NULL);
        char *sp = strchr(q, ' ');
        if (!sp)
            break;
        h->le[h->n] = le;
        h->count[h->n++] = strtod(sp + 1, NULL);
    }
    free(buf);
    return h->n ? 0 : -1;
}

/* The bucket bound under which p% of the window's relays fall. */
static double histo_pct(const histo *a, const histo *b, double p)
{
    if (!a->n || a->n != b->n)
        return -1;
    double total = b->count[b->n - 1] - a->count[a->n - 1];
    if (total <= 0)
        return -1;
    for (int i = 0; i < b->n; i++)
        if (b->count[i] - a->count[i] >= p / 100.0 * total)
            return b->le[i];
    return -1;
}

/* ---- errors by code ----------------------------------------------------- */

#define MAX_CODES 48
static struct {
    char name[40];
    uint64_t n;
} errs[MAX_CODES];
static int nerrs;

static void count_err(const char *code, size_t len)
{
    if (len >= sizeof errs[0].name)
        len = sizeof errs[0].name - 1;
    for (int i = 0; i < nerrs; i++)
        if (strlen(errs[i].name) == len && memcmp(errs[i].name, code, len) == 0) {
            errs[i].n++;
            return;
        }
    if (nerrs == MAX_CODES) {
        code = "other";
        len = 5;
        for (int i = 0; i < nerrs; i++)
            if (strcmp(errs[i].name, "other") == 0) {
                errs[i].n++;
                return;
            }
        nerrs--;
    }
    memcpy(errs[nerrs].name, code, len);
    errs[nerrs].name[len] = '\0';
    errs[nerrs++].n = 1;
}

static void count_errs(const char *code) { count_err(code, strlen(code)); }

/* ---- state -------------------------------------------------------------- */

enum { C_IDLE, C_CONNECTING, C_TLS, C_UPGRADING, C_JOINING, C_READY, C_DEAD };

typedef struct pair pair;

typedef struct conn {
    struct bufferevent *bev;
    struct event *cev; /* waits for connect() to finish */
    pair *pr;
    int side; /* 0 = A, 1 = B */
    int state;
    char key[32];
    unsigned char *frag; /* a fragmented message being reassembled */
    size_t fraglen;
} conn;

typedef struct dir {
    conn *from, *to;
    char *tmpl;      /* the message, unmasked; ts and seq digits patched per send */
    size_t tlen;
    size_t ts_off, seq_off;
    uint64_t seq_sent, seq_expect;
    uint32_t inflight;
    uint64_t progress_us; /* last delivery or error for this direction (closed loop stall check) */
} dir;

struct pair {
    uint32_t idx;
    char room[64];
    char peer[2][64];
    char *token[2];
    conn c[2];
    dir d[2]; /* d[0]: A->B, d[1]: B->A */
    bool ready, failed, setup_started;
};

static struct event_base *base;
static SSL_CTX *ssl_ctx;
static struct sockaddr_in dst;
static char runid[16];
static pair *pairs;
static int npairs;

static int n_setup_active, n_ready, n_failed, next_setup;
static uint64_t t_begin_setup, t_all_ready;
static uint64_t t_start;       /* sending starts */
static uint64_t t_meas0, t_meas1;
static bool sending, measuring, finished;

/* results */
static uint64_t sent_total, recv_total, relay_errs_total;
static uint64_t sent_meas, recv_meas;
static uint64_t out_of_order, gaps, disconnects, pings_rx, pongs_tx, timed_out;
static uint32_t *lat;   /* µs */
static size_t nlat, caplat;
static uint32_t *lat_at; /* --dump: receipt time, µs since t_meas0 */
static size_t nlat_at, caplat_at;
static uint32_t *lag;   /* open loop: µs between intended and actual send */
static size_t nlag, caplag;
static uint32_t lat_max;

static void push_u32(uint32_t **a, size_t *n, size_t *cap, uint32_t v)
{
    if (*n == *cap) {
        if (*cap >= (size_t)1 << 28)
            return; /* 1 GiB of samples: enough */
        *cap = *cap ? *cap * 2 : 1 << 16;
        *a = realloc(*a, *cap * sizeof **a);
        if (!*a)
            die("out of memory");
    }
    (*a)[(*n)++] = v;
}

/* ---- frames ------------------------------------------------------------- */

static void send_frame(conn *c, uint8_t opcode, const void *data, size_t len)
{
    if (!c->bev || c->state == C_DEAD)
        return;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    struct evbuffer_iovec v;
    size_t need = len + 14;
    if (evbuffer_reserve_space(out, (ev_ssize_t)need, &v, 1) < 1)
        die("evbuffer_reserve_space failed");
    uint8_t *p = v.iov_base;
    size_t h = 0;
    p[h++] = (uint8_t)(0x80 | opcode);
    if (len < 126) {
        p[h++] = (uint8_t)(0x80 | len);
    } else if (len < 65536) {
        p[h++] = 0x80 | 126;
        p[h++] = (uint8_t)(len >> 8);
        p[h++] = (uint8_t)len;
    } else {
        p[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            p[h++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    uint32_t k32 = (uint32_t)rng();
    memcpy(p + h, &k32, 4);
    h += 4;
    uint64_t k64 = (uint64_t)k32 << 32 | k32;
    const uint8_t *s = data;
    uint8_t *d = p + h;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        w ^= k64;
        memcpy(d + i, &w, 8);
    }
    const uint8_t *kb = (const uint8_t *)&k32;
    for (; i < len; i++)
        d[i] = s[i] ^ kb[i & 3];
    v.iov_len = h + len;
    evbuffer_commit_space(out, &v, 1);
}

static void write_digits(char *p, uint64_t v, int w)
{
    for (int i = w - 1; i >= 0; i--) {
        p[i] = (char)('0' + v % 10);
        v /= 10;
    }
}

static uint64_t read_digits(const char *p, int w)
{
    uint64_t v = 0;
    for (int i = 0; i < w; i++)
        v = v * 10 + (uint64_t)(p[i] - '0');
    return v;
}

static void send_relay(dir *d, uint64_t ts)
{
    write_digits(d->tmpl + d->ts_off, ts, 16);
    write_digits(d->tmpl + d->seq_off, d->seq_sent++, 10);
    send_frame(d->from, 0x1, d->tmpl, d->tlen);
    d->inflight++;
    sent_total++;
    if (measuring)
        sent_meas++;
}

/* Builds the message of one direction at about O.size bytes. */
static void build_template(pair *pr, int side)
{
    dir *d = &pr->d[side];
    const char *from = pr->peer[side], *to = pr->peer[1 - side];
    size_t target = (size_t)O.size;
    char head[512], tail[256];
    int hl, tl;
    if (O.proto == PROTO_PEERJS && O.kind == KIND_CANDIDATE) {
        /* What the PeerJS client sends (its negotiator's candidate message). */
        hl = snprintf(head, sizeof head,
                      "{\"type\":\"CANDIDATE\",\"payload\":{\"candidate\":{\"candidate\":"
                      "\"candidate:1 1 udp 2122260223 192.0.2.7 %u typ host lgt=",
                      50000 + pr->idx % 10000);
        tl = snprintf(tail, sizeof tail,
                      "\",\"sdpMid\":\"0\",\"sdpMLineIndex\":0},\"type\":\"media\",\"connectionId\":"
                      "\"mc_lg%u\"},\"dst\":\"%s\"}",
                      pr->idx, to);
    } else if (O.proto == PROTO_PEERJS) {
        hl = snprintf(head, sizeof head,
                      "{\"type\":\"OFFER\",\"payload\":{\"sdp\":{\"type\":\"offer\",\"sdp\":"
                      "\"v=0\\r\\no=- 4611731400430051336 2 IN IP4 127.0.0.1\\r\\ns=-\\r\\nt=0 0\\r\\n"
                      "a=group:BUNDLE 0 1\\r\\na=msid-semantic: WMS\\r\\na=x-lg:lgt=");
        tl = snprintf(tail, sizeof tail,
                      "\\r\\n\"},\"type\":\"media\",\"connectionId\":\"mc_lg%u\",\"browser\":\"chrome\"},"
                      "\"dst\":\"%s\"}",
                      pr->idx, to);
    } else if (O.kind == KIND_CANDIDATE) {
        hl = snprintf(head, sizeof head,
                      "{\"type\":\"candidate\",\"roomId\":\"%s\",\"from\":\"%s\",\"to\":\"%s\",\"candidate\":"
                      "{\"candidate\":\"candidate:1 1 udp 2122260223 192.0.2.7 %u typ host lgt=",
                      pr->room, from, to, 50000 + pr->idx % 10000);
        tl = snprintf(tail, sizeof tail, "\",\"sdpMid\":\"0\",\"sdpMLineIndex\":0}}");
    } else {
        hl = snprintf(head, sizeof head,
                      "{\"type\":\"offer\",\"roomId\":\"%s\",\"from\":\"%s\",\"to\":\"%s\",\"sdp\":"
                      "\"v=0\\r\\no=- 4611731400430051336 2 IN IP4 127.0.0.1\\r\\ns=-\\r\\nt=0 0\\r\\n"
                      "a=group:BUNDLE 0 1\\r\\na=msid-semantic: WMS\\r\\na=x-lg:lgt=",
                      pr->room, from, to);
        tl = snprintf(tail, sizeof tail, "\\r\\n\"}");
    }
    /* "<ts16> lgs=<seq10>" then padding to the target size */
    const char *mid = " lgs=";
    size_t fixed = (size_t)hl + 16 + strlen(mid) + 10 + (size_t)tl;
    size_t pad = target > fixed ? target - fixed : 0;
    d->tlen = fixed + pad;
    d->tmpl = xmalloc(d->tlen + 1);
    char *p = d->tmpl;
    memcpy(p, head, (size_t)hl);
    p += hl;
    d->ts_off = (size_t)(p - d->tmpl);
    memset(p, '0', 16);
    p += 16;
    memcpy(p, mid, strlen(mid));
    p += strlen(mid);
    d->seq_off = (size_t)(p - d->tmpl);
    memset(p, '0', 10);
    p += 10;
    if (O.kind == KIND_CANDIDATE) {
        /* extra candidate-string words: " x-pad aaaa..." */
        for (size_t i = 0; i < pad; i++)
            p[i] = i == 0 ? ' ' : (char)('a' + i % 26);
    } else {
        /* SDP lines: "\r\na=x-pad:aaaa..." each about 72 bytes */
        size_t i = 0;
        while (i < pad) {
            static const char ln[] = "\\r\\na=x-pad:";
            size_t ll = sizeof ln - 1;
            if (pad - i > ll + 8) {
                memcpy(p + i, ln, ll);
                i += ll;
                size_t n = pad - i < 60 ? pad - i : 60;
                for (size_t j = 0; j < n; j++)
                    p[i + j] = (char)('a' + (i + j) % 26);
                i += n;
            } else {
                p[i] = 'z';
                i++;
            }
        }
    }
    p += pad;
    memcpy(p, tail, (size_t)tl);
    p += tl;
    *p = '\0';
    d->from = &pr->c[side];
    d->to = &pr->c[1 - side];
}

/* ---- setup and teardown of clients -------------------------------------- */

static void start_more_setups(void);
static void conn_connect(conn *c);

static void conn_kill(conn *c, const char *why)
{
    if (c->state == C_DEAD)
        return;
    int was = c->state;
    c->state = C_DEAD;
    if (c->cev) {
        event_free(c->cev);
        c->cev = NULL;
    }
    if (c->bev) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    free(c->frag);
    c->frag = NULL;
    if (finished)
        return;
    count_errs(why);
    pair *pr = c->pr;
    if (was != C_READY || !pr->ready) {
        if (!pr->failed && !pr->ready) {
            pr->failed = true;
            n_failed++;
            n_setup_active--;
            start_more_setups();
        }
    } else {
        disconnects++;
    }
    vlog("pair %u side %d: %s", pr->idx, c->side, why);
}

static void send_join(conn *c)
{
    pair *pr = c->pr;
    char buf[256];
    int n = snprintf(buf, sizeof buf, "{\"type\":\"join\",\"roomId\":\"%s\",\"peerId\":\"%s\"}", pr->room,
                     pr->peer[c->side]);
    c->state = C_JOINING;
    send_frame(c, 0x1, buf, (size_t)n);
}

static void kick_pair(pair *pr);

static void pair_ready(pair *pr)
{
    pr->ready = true;
    n_ready++;
    n_setup_active--;
    if (sending)
        kick_pair(pr);
    start_more_setups();
}

/* What a server message is, whichever protocol: its "type". */
enum { MSG_OTHER, MSG_RELAY, MSG_ERROR, MSG_JOINED, MSG_EXPIRED };

static bool type_is(const char *t, size_t rest, const char *name)
{
    size_t n = strlen(name);
    return rest > n && memcmp(t, name, n) == 0 && t[n] == '"';
}

static int classify(const char *t, size_t rest)
{
    if (O.proto == PROTO_PEERJS) {
        if (type_is(t, rest, "CANDIDATE") || type_is(t, rest, "OFFER") || type_is(t, rest, "ANSWER"))
            return MSG_RELAY;
        if (type_is(t, rest, "OPEN"))
            return MSG_JOINED;
        if (type_is(t, rest, "EXPIRE"))
            return MSG_EXPIRED;
        if (type_is(t, rest, "ERROR") || type_is(t, rest, "ID-TAKEN"))
            return MSG_ERROR;
        return MSG_OTHER; /* LEAVE, HEARTBEAT */
    }
    if (type_is(t, rest, "relay"))
        return MSG_RELAY;
    if (type_is(t, rest, "error"))
        return MSG_ERROR;
    if (type_is(t, rest, "joined"))
        return MSG_JOINED;
    return MSG_OTHER; /* peer_joined, peer_left, left */
}

/* A message from the server. */
static void on_text(conn *c, const uint8_t *m, size_t n)
{
    uint64_t now = now_us();
    const char *s = (const char *)m;
    /* The gateway writes "type" first; accept it anywhere in the head. */
    const char *t = memmem(s, n < 64 ? n : 64, "\"type\":\"", 8);
    if (!t) {
        count_errs("unparsed_message");
        return;
    }
    t += 8;
    size_t rest = n - (size_t)(t - s);
    pair *pr = c->pr;
    int what = classify(t, rest);
    if (what == MSG_RELAY) {
        const char *mk = memmem(t, rest, "lgt=", 4);
        if (!mk || (size_t)(s + n - mk) < 4 + 16 + 5 + 10) {
            count_errs("foreign_relay");
            return;
        }
        uint64_t ts = read_digits(mk + 4, 16);
        uint64_t seq = read_digits(mk + 4 + 16 + 5, 10);
        dir *d = &pr->d[1 - c->side];
        if (seq < d->seq_expect) {
            out_of_order++; /* arrived after a later message: an order violation (or a duplicate) */
        } else {
            if (seq > d->seq_expect)
                gaps += seq - d->seq_expect; /* messages skipped: lost or refused with an error */
            d->seq_expect = seq + 1;
        }
        if (d->inflight)
            d->inflight--;
        d->progress_us = now;
        recv_total++;
        if (measuring) {
            recv_meas++;
            uint64_t l = now > ts ? now - ts : 0;
            if (l > UINT32_MAX)
                l = UINT32_MAX;
            if (l > lat_max)
                lat_max = (uint32_t)l;
            push_u32(&lat, &nlat, &caplat, (uint32_t)l);
            if (O.dump)
                push_u32(&lat_at, &nlat_at, &caplat_at, (uint32_t)(now - t_meas0));
        }
        if (O.mode == MODE_CLOSED && sending)
            while (d->inflight < (uint32_t)O.window)
                send_relay(d, now_us());
        return;
    }
    if (what == MSG_ERROR || what == MSG_EXPIRED) {
        const char *k = O.proto == PROTO_SIGNAL ? memmem(t, rest, "\"code\":\"", 8) : NULL;
        if (O.proto == PROTO_PEERJS) {
            count_errs(what == MSG_EXPIRED ? "peerjs_expire" : type_is(t, rest, "ERROR") ? "peerjs_error"
                                                                                          : "peerjs_id_taken");
        } else if (k) {
            k += 8;
            const char *e = memchr(k, '"', (size_t)(s + n - k));
            count_err(k, e ? (size_t)(e - k) : 0);
        } else {
            count_errs("error_without_code");
        }
        if (c->state == C_JOINING) {
            conn_kill(c, "join_failed");
            return;
        }
        if (c->state == C_READY) {
            /* An error for a relay of this side: the message is gone. */
            dir *d = &pr->d[c->side];
            relay_errs_total++;
            if (d->inflight)
                d->inflight--;
            d->progress_us = now; /* the slot is refilled by refill_tick */
        }
        return;
    }
    if (what == MSG_JOINED) {
        if (c->state != C_JOINING)
            return;
        c->state = C_READY;
        if (c->side == 0)
            conn_connect(&pr->c[1]);
        else
            pair_ready(pr);
        return;
    }
}

static int handle_frames(conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    for (;;) {
        size_t avail = evbuffer_get_length(in);
        if (avail < 2)
            return 0;
        uint8_t h[14];
        evbuffer_copyout(in, h, avail < 14 ? avail : 14);
        bool fin = h[0] & 0x80;
        uint8_t op = h[0] & 0x0f;
        if (h[1] & 0x80) {
            conn_kill(c, "masked_server_frame");
            return -1;
        }
        uint64_t len = h[1] & 0x7f;
        size_t hl = 2;
        if (len == 126) {
            if (avail < 4)
                return 0;
            len = (uint64_t)h[2] << 8 | h[3];
            hl = 4;
        } else if (len == 127) {
            if (avail < 10)
                return 0;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | h[2 + i];
            hl = 10;
        }
        if (len > (64u << 20)) {
            conn_kill(c, "frame_too_large");
            return -1;
        }
        if (avail < hl + len)
            return 0;
        evbuffer_drain(in, hl);
        uint8_t *p = len ? evbuffer_pullup(in, (ev_ssize_t)len) : (uint8_t *)"";
        switch (op) {
        case 0x0:
        case 0x1:
            if (op == 0x1 && fin && !c->frag) {
                on_text(c, p, len);
            } else {
                c->frag = realloc(c->frag, c->fraglen + len + 1);
                memcpy(c->frag + c->fraglen, p, len);
                c->fraglen += len;
                if (fin) {
                    unsigned char *f = c->frag;
                    size_t fl = c->fraglen;
                    c->frag = NULL;
                    c->fraglen = 0;
                    on_text(c, f, fl);
                    free(f);
                }
            }
            break;
        case 0x2:
            count_errs("binary_frame");
            break;
        case 0x8: {
            char code[32] = "ws_close";
            if (len >= 2)
                snprintf(code, sizeof code, "ws_close_%u", (unsigned)(p[0] << 8 | p[1]));
            evbuffer_drain(in, len);
            if (!finished)
                send_frame(c, 0x8, "\x03\xe8", 2);
            conn_kill(c, code);
            return -1;
        }
        case 0x9:
            pings_rx++;
            send_frame(c, 0xA, p, len);
            pongs_tx++;
            break;
        case 0xA:
            break;
        default:
            conn_kill(c, "bad_opcode");
            return -1;
        }
        if (c->state == C_DEAD)
            return -1;
        evbuffer_drain(in, len);
    }
}

static void on_read(struct bufferevent *bev, void *arg)
{
    conn *c = arg;
    if (c->state == C_UPGRADING || c->state == C_TLS) {
        struct evbuffer *in = bufferevent_get_input(bev);
        struct evbuffer_ptr e = evbuffer_search(in, "\r\n\r\n", 4, NULL);
        if (e.pos < 0) {
            if (evbuffer_get_length(in) > 16384)
                conn_kill(c, "handshake_too_long");
            return;
        }
        size_t hl = (size_t)e.pos + 4;
        char *h = (char *)evbuffer_pullup(in, (ev_ssize_t)hl);
        if (hl < 12 || memcmp(h, "HTTP/1.1 101", 12) != 0) {
            char code[32] = "http_other";
            if (hl >= 12 && memcmp(h, "HTTP/1.1 ", 9) == 0)
                snprintf(code, sizeof code, "http_%.3s", h + 9);
            conn_kill(c, code);
            return;
        }
        /* Sec-WebSocket-Accept = base64(SHA1(key + GUID)) */
        char src[64 + 36], want[40];
        int sl = snprintf(src, sizeof src, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", c->key);
        unsigned char dg[20];
        SHA1((unsigned char *)src, (size_t)sl, dg);
        b64std(want, dg, 20);
        if (!memmem(h, hl, want, strlen(want))) {
            conn_kill(c, "bad_accept");
            return;
        }
        evbuffer_drain(in, hl);
        if (O.proto == PROTO_PEERJS)
            c->state = C_JOINING; /* registered: the server's OPEN is the "joined" */
        else
            send_join(c);
    }
    if (c->state >= C_JOINING && c->state != C_DEAD)
        handle_frames(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    conn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        /* TLS handshake done */
        c->state = C_UPGRADING;
        return;
    }
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        if (c->state == C_TLS)
            conn_kill(c, "tls_handshake_failed");
        else if (what & BEV_EVENT_EOF)
            conn_kill(c, "eof");
        else
            conn_kill(c, "socket_error");
    }
}

static void send_upgrade(conn *c)
{
    unsigned char raw[16];
    for (int i = 0; i < 16; i += 8) {
        uint64_t r = rng();
        memcpy(raw + i, &r, 8);
    }
    b64std(c->key, raw, 16);
    pair *pr = c->pr;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (O.proto == PROTO_PEERJS)
        /* PeerJS: the peer id and a client-chosen token in the query, no credentials. */
        evbuffer_add_printf(out, "GET %s?key=%s&id=%s&token=lg%s%u HTTP/1.1\r\n", O.path, O.peerjs_key,
                            pr->peer[c->side], runid, pr->idx);
    else
        evbuffer_add_printf(out, "GET %s HTTP/1.1\r\n", O.path);
    evbuffer_add_printf(out,
                        "Host: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n",
                        O.host, O.port, c->key);
    if (O.proto == PROTO_SIGNAL)
        evbuffer_add_printf(out, "Authorization: Bearer %s\r\n", pr->token[c->side]);
    evbuffer_add(out, "\r\n", 2);
}

static void on_connected(evutil_socket_t fd, short what, void *arg)
{
    conn *c = arg;
    event_free(c->cev);
    c->cev = NULL;
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (what & EV_TIMEOUT)
        err = ETIMEDOUT;
    if (err) {
        close(fd);
        vlog("connect: %s", strerror(err));
        conn_kill(c, err == EADDRNOTAVAIL ? "connect_eaddrnotavail" : "connect_failed");
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (O.tls) {
        SSL *ssl = SSL_new(ssl_ctx);
        c->bev = bufferevent_openssl_socket_new(base, fd, ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
        c->state = C_TLS;
    } else {
        c->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
        c->state = C_UPGRADING;
    }
    if (!c->bev) {
        close(fd);
        conn_kill(c, "bufferevent_failed");
        return;
    }
    bufferevent_set_max_single_read(c->bev, 256 * 1024);
    bufferevent_set_max_single_write(c->bev, 256 * 1024);
    bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    /* The upgrade request is queued now; for TLS it goes once the
     * handshake completes (state moves to C_UPGRADING then). */
    send_upgrade(c);
}

static long conn_seq;

static void conn_connect(conn *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        conn_kill(c, errno == EMFILE || errno == ENFILE ? "emfile" : "socket_failed");
        return;
    }
    if (O.nsrc) {
        int one = 1;
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in src = {.sin_family = AF_INET};
        inet_pton(AF_INET, O.src_ips[conn_seq++ % O.nsrc], &src.sin_addr);
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
            close(fd);
            conn_kill(c, "bind_failed");
            return;
        }
    }
    c->state = C_CONNECTING;
    int r = connect(fd, (struct sockaddr *)&dst, sizeof dst);
    if (r < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        conn_kill(c, e == EADDRNOTAVAIL ? "connect_eaddrnotavail" : "connect_failed");
        return;
    }
    c->cev = event_new(base, fd, EV_WRITE, on_connected, c);
    struct timeval tv = {10, 0};
    event_add(c->cev, &tv);
}

static void start_setup(pair *pr)
{
    pr->setup_started = true;
    n_setup_active++;
    conn_connect(&pr->c[0]);
}

static void start_more_setups(void)
{
    static bool busy;
    if (busy)
        return; /* re-entered from a failure inside start_setup */
    busy = true;
    while (n_setup_active < O.concurrency && next_setup < npairs)
        start_setup(&pairs[next_setup++]);
    busy = false;
}

/* ---- traffic ------------------------------------------------------------ */

static dir **dirs; /* open loop: the senders, round-robin */
static int ndirs, dir_rr;
static struct event *ev_open;
static double next_send_us; /* relative to t_start */

static void kick_pair(pair *pr)
{
    if (O.mode != MODE_CLOSED)
        return;
    for (int s = 0; s < (O.bidir ? 2 : 1); s++) {
        dir *d = &pr->d[s];
        d->progress_us = now_us();
        while (d->inflight < (uint32_t)O.window)
            send_relay(d, now_us());
    }
}

/* Closed loop: refills windows that errors emptied, and gives up on messages
 * that made no progress for --msg-timeout (dropped without a word, e.g. by a
 * rate limit that warns once a second): they count as timed_out. */
static struct event *ev_refill;
static void refill_tick(evutil_socket_t fd, short what, void *arg)
{
    if (!sending)
        return;
    uint64_t now = now_us();
    for (int i = 0; i < npairs; i++) {
        pair *pr = &pairs[i];
        if (!pr->ready)
            continue;
        for (int sd = 0; sd < (O.bidir ? 2 : 1); sd++) {
            dir *d = &pr->d[sd];
            if (d->from->state != C_READY || d->to->state != C_READY)
                continue;
            if (d->inflight && now - d->progress_us > (uint64_t)(O.msg_timeout * 1e6)) {
                timed_out += d->inflight;
                d->inflight = 0;
            }
            if (d->inflight < (uint32_t)O.window) {
                d->progress_us = now;
                while (d->inflight < (uint32_t)O.window)
                    send_relay(d, now_us());
            }
        }
    }
    struct timeval tv = {0, 50000};
    evtimer_add(ev_refill, &tv);
}

static void open_tick(evutil_socket_t fd, short what, void *arg)
{
    if (!sending)
        return;
    uint64_t now = now_us();
    double interval = 1e6 / O.rate;
    int guard = 0;
    while (t_start + (uint64_t)next_send_us <= now && guard++ < 100000) {
        uint64_t intended = t_start + (uint64_t)next_send_us;
        /* find a live sender, round-robin */
        dir *d = NULL;
        for (int k = 0; k < ndirs; k++) {
            dir *x = dirs[dir_rr];
            dir_rr = (dir_rr + 1) % ndirs;
            if (x->from->state == C_READY && x->to->state == C_READY) {
                d = x;
                break;
            }
        }
        if (!d)
            break;
        send_relay(d, intended);
        if (measuring)
            push_u32(&lag, &nlag, &caplag, (uint32_t)(now - intended));
        next_send_us += O.poisson ? -log(rng_unit()) * interval : interval;
    }
    uint64_t next = t_start + (uint64_t)next_send_us;
    now = now_us();
    struct timeval tv = {0, 0};
    if (next > now) {
        tv.tv_sec = (time_t)((next - now) / 1000000);
        tv.tv_usec = (suseconds_t)((next - now) % 1000000);
    }
    evtimer_add(ev_open, &tv);
}

/* ---- phases ------------------------------------------------------------- */

static struct event *ev_phase;
static int phase;
enum { PH_SETUP, PH_WARMUP, PH_MEASURE, PH_DRAIN, PH_HOLD_SETTLE, PH_HOLD };
static double g_cpu0, g_cpu1, r_cpu0, r_cpu1, s_cpu0, s_cpu1, m_cpu0, m_cpu1;
static long rss_before, rss_after_setup, rss_after_hold;
static uint64_t t_hold0, t_hold1;
static long conns_open_at_hold_start, conns_open_at_end;
static histo h0, h1;

static void arm_phase(double s)
{
    struct timeval tv = {(time_t)s, (suseconds_t)((s - (double)(time_t)s) * 1e6)};
    evtimer_add(ev_phase, &tv);
}

static long count_ready_conns(void)
{
    long n = 0;
    for (int i = 0; i < npairs; i++)
        for (int s = 0; s < 2; s++)
            if (pairs[i].c[s].state == C_READY)
                n++;
    return n;
}

static uint64_t inflight_total(void)
{
    uint64_t n = 0;
    for (int i = 0; i < npairs; i++)
        n += pairs[i].d[0].inflight + pairs[i].d[1].inflight;
    return n;
}

static void on_phase(evutil_socket_t fd, short what, void *arg)
{
    uint64_t now = now_us();
    switch (phase) {
    case PH_SETUP:
        if (n_ready + n_failed < npairs && (double)(now - t_begin_setup) / 1e6 < O.setup_timeout) {
            arm_phase(0.05);
            return;
        }
        t_all_ready = now;
        if (n_ready + n_failed < npairs)
            count_errs("setup_timeout");
        vlog("setup: %d ready, %d failed in %.2fs", n_ready, n_failed, (now - t_begin_setup) / 1e6);
        if (n_ready == 0) {
            finished = true;
            event_base_loopexit(base, NULL);
            return;
        }
        if (O.mode == MODE_CONN) {
            phase = PH_HOLD_SETTLE;
            arm_phase(O.settle);
            return;
        }
        t_start = now_us();
        sending = true;
        if (O.mode == MODE_CLOSED) {
            for (int i = 0; i < npairs; i++)
                if (pairs[i].ready)
                    kick_pair(&pairs[i]);
            ev_refill = evtimer_new(base, refill_tick, NULL);
            refill_tick(-1, 0, NULL);
        } else {
            next_send_us = 0;
            open_tick(-1, 0, NULL);
        }
        phase = PH_WARMUP;
        arm_phase(O.warmup);
        return;
    case PH_WARMUP:
        phase = PH_MEASURE;
        measuring = true;
        scrape_histo(&h0);
        t_meas0 = now_us();
        s_cpu0 = self_cpu_s();
        m_cpu0 = machine_busy_s();
        g_cpu0 = proc_cpu_s(O.gateway_pid);
        r_cpu0 = proc_cpu_s(O.redis_pid);
        arm_phase(O.duration);
        return;
    case PH_MEASURE:
        measuring = false;
        sending = false;
        t_meas1 = now;
        s_cpu1 = self_cpu_s();
        scrape_histo(&h1);
        m_cpu1 = machine_busy_s();
        g_cpu1 = proc_cpu_s(O.gateway_pid);
        r_cpu1 = proc_cpu_s(O.redis_pid);
        phase = PH_DRAIN;
        t_hold0 = now; /* drain start */
        arm_phase(0.02);
        return;
    case PH_DRAIN:
        if (inflight_total() > 0 && (double)(now - t_hold0) / 1e6 < O.drain) {
            arm_phase(0.02);
            return;
        }
        finished = true;
        event_base_loopexit(base, NULL);
        return;
    case PH_HOLD_SETTLE:
        rss_after_setup = proc_rss_kb(O.gateway_pid);
        conns_open_at_hold_start = count_ready_conns();
        t_hold0 = now;
        s_cpu0 = self_cpu_s();
        m_cpu0 = machine_busy_s();
        g_cpu0 = proc_cpu_s(O.gateway_pid);
        r_cpu0 = proc_cpu_s(O.redis_pid);
        pings_rx = pongs_tx = 0;
        phase = PH_HOLD;
        arm_phase(O.hold);
        return;
    case PH_HOLD:
        t_hold1 = now;
        s_cpu1 = self_cpu_s();
        m_cpu1 = machine_busy_s();
        g_cpu1 = proc_cpu_s(O.gateway_pid);
        r_cpu1 = proc_cpu_s(O.redis_pid);
        rss_after_hold = proc_rss_kb(O.gateway_pid);
        conns_open_at_end = count_ready_conns();
        finished = true;
        event_base_loopexit(base, NULL);
        return;
    }
}

/* ---- report ------------------------------------------------------------- */

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(uint32_t *a, size_t n, double p)
{
    if (!n)
        return -1;
    size_t i = (size_t)ceil(p / 100.0 * (double)n);
    if (i < 1)
        i = 1;
    if (i > n)
        i = n;
    return a[i - 1] / 1000.0;
}

static void json_num(const char *k, double v, bool comma)
{
    if (v < 0 || isnan(v))
        printf("\"%s\":null%s", k, comma ? "," : "");
    else
        printf("\"%s\":%.3f%s", k, v, comma ? "," : "");
}

static void report(void)
{
    printf("{");
    if (O.label)
        printf("\"label\":\"%s\",", O.label);
    static const char *modes[] = {"closed", "open", "conn"};
    printf("\"mode\":\"%s\",\"proto\":\"%s\",\"transport\":\"%s\",", modes[O.mode],
           O.proto == PROTO_PEERJS ? "peerjs" : "signal", O.tls ? "wss" : "ws");
    printf("\"setup_s\":%.3f,", t_all_ready ? (t_all_ready - t_begin_setup) / 1e6 : -1.0);
    if (O.mode == MODE_CONN) {
        long target = (long)npairs * 2;
        double hold = (t_hold1 - t_hold0) / 1e6;
        printf("\"conns\":%ld,\"conns_open\":%ld,\"conns_open_after_hold\":%ld,\"hold_s\":%.2f,", target,
               conns_open_at_hold_start, conns_open_at_end, hold);
        printf("\"src_ips\":%d,", O.nsrc ? O.nsrc : 1);
        printf("\"gateway_rss_kb\":{\"before\":%ld,\"after_setup\":%ld,\"after_hold\":%ld},", rss_before,
               rss_after_setup, rss_after_hold);
        double per = conns_open_at_hold_start > 0 && rss_before > 0 && rss_after_hold > 0
                         ? (double)(rss_after_hold - rss_before) * 1024.0 / (double)conns_open_at_hold_start
                         : -1;
        json_num("rss_bytes_per_conn", per, true);
        double gc = g_cpu0 >= 0 && g_cpu1 >= 0 && hold > 0 ? (g_cpu1 - g_cpu0) : -1;
        json_num("gateway_cpu_s", gc, true);
        json_num("gateway_cpu_util", gc >= 0 ? gc / hold : -1, true);
        double rc = r_cpu0 >= 0 && r_cpu1 >= 0 && hold > 0 ? (r_cpu1 - r_cpu0) : -1;
        json_num("redis_cpu_s", rc, true); /* the util rounds an idle Redis to 0.001 of a core */
        json_num("redis_cpu_util", rc >= 0 ? rc / hold : -1, true);
        json_num("machine_cpu_util", m_cpu0 >= 0 && m_cpu1 >= 0 && hold > 0 ? (m_cpu1 - m_cpu0) / hold : -1, true);
        printf("\"pings\":%" PRIu64 ",\"pongs\":%" PRIu64 ",", pings_rx, pongs_tx);
        double sc = s_cpu1 - s_cpu0;
        json_num("cpu_s", sc, true);
        json_num("cpu_util", hold > 0 ? sc / hold : -1, true);
    } else {
        double dur = (t_meas1 - t_meas0) / 1e6;
        printf("\"kind\":\"%s\",\"msg_bytes\":%zu,\"pairs\":%d,\"pairs_ready\":%d,\"bidir\":%s,",
               O.kind == KIND_CANDIDATE ? "candidate" : "offer", npairs ? pairs[0].d[0].tlen : 0, npairs,
               n_ready, O.bidir ? "true" : "false");
        if (O.mode == MODE_CLOSED)
            printf("\"window\":%d,\"rate\":null,", O.window);
        else
            printf("\"window\":null,\"rate\":%.6g,\"arrival\":\"%s\",", O.rate, O.poisson ? "poisson" : "uniform");
        printf("\"duration_s\":%.3f,\"warmup_s\":%.3g,", dur, O.warmup);
        printf("\"sent\":%" PRIu64 ",\"delivered\":%" PRIu64 ",", sent_meas, recv_meas);
        json_num("relays_per_sec", dur > 0 ? recv_meas / dur : -1, true);
        json_num("offered_per_sec", dur > 0 ? sent_meas / dur : -1, true);
        if (O.dump) {
            FILE *f = fopen(O.dump, "w");
            if (f) {
                for (size_t i = 0; i < nlat && i < nlat_at; i++)
                    fprintf(f, "%.3f %u\n", lat_at[i] / 1000.0, lat[i]);
                fclose(f);
            }
        }
        qsort(lat, nlat, sizeof *lat, cmp_u32);
        printf("\"latency_ms\":{");
        json_num("p50", pct(lat, nlat, 50), true);
        json_num("p90", pct(lat, nlat, 90), true);
        json_num("p99", pct(lat, nlat, 99), true);
        json_num("p99.9", pct(lat, nlat, 99.9), true);
        json_num("max", nlat ? lat_max / 1000.0 : -1, true);
        printf("\"samples\":%zu},", nlat);
        if (O.mode == MODE_OPEN) {
            qsort(lag, nlag, sizeof *lag, cmp_u32);
            printf("\"send_lag_ms\":{");
            json_num("p50", pct(lag, nlag, 50), true);
            json_num("p99", pct(lag, nlag, 99), true);
            json_num("max", nlag ? lag[nlag - 1] / 1000.0 : -1, false);
            printf("},");
        }
        if (h0.n && h1.n) {
            /* the gateway's relay_latency_ms (frame in -> relay written), bucket upper bounds */
            printf("\"gateway_latency_ms_le\":{");
            static const double ps[] = {50, 90, 99, 99.9};
            static const char *pn[] = {"p50", "p90", "p99", "p99.9"};
            for (int i = 0; i < 4; i++) {
                double v = histo_pct(&h0, &h1, ps[i]);
                if (isinf(v))
                    printf("%s\"%s\":\"+Inf\"", i ? "," : "", pn[i]);
                else if (v < 0)
                    printf("%s\"%s\":null", i ? "," : "", pn[i]);
                else
                    printf("%s\"%s\":%g", i ? "," : "", pn[i], v);
            }
            printf("},");
        }
        uint64_t lost = sent_total > recv_total + relay_errs_total ? sent_total - recv_total - relay_errs_total : 0;
        printf("\"sent_total\":%" PRIu64 ",\"delivered_total\":%" PRIu64 ",\"relay_errors_total\":%" PRIu64
               ",\"undelivered\":%" PRIu64 ",\"seq_gaps\":%" PRIu64 ",\"out_of_order\":%" PRIu64
               ",\"disconnects\":%" PRIu64 ",\"timed_out\":%" PRIu64 ",",
               sent_total, recv_total, relay_errs_total, lost, gaps, out_of_order, disconnects, timed_out);
        double sc = s_cpu1 - s_cpu0;
        json_num("cpu_s", sc, true);
        json_num("cpu_util", dur > 0 ? sc / dur : -1, true);
        double gc = g_cpu0 >= 0 && g_cpu1 >= 0 ? g_cpu1 - g_cpu0 : -1;
        json_num("gateway_cpu_util", gc >= 0 && dur > 0 ? gc / dur : -1, true);
        double rc = r_cpu0 >= 0 && r_cpu1 >= 0 ? r_cpu1 - r_cpu0 : -1;
        json_num("redis_cpu_util", rc >= 0 && dur > 0 ? rc / dur : -1, true);
        json_num("machine_cpu_util", m_cpu0 >= 0 && m_cpu1 >= 0 && dur > 0 ? (m_cpu1 - m_cpu0) / dur : -1, true);
        printf("\"ncpu\":%ld,", sysconf(_SC_NPROCESSORS_ONLN));
    }
    printf("\"errors\":{");
    for (int i = 0; i < nerrs; i++)
        printf("%s\"%s\":%" PRIu64, i ? "," : "", errs[i].name, errs[i].n);
    printf("}}\n");
    fflush(stdout);
}

/* ---- main --------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen --url ws[s]://HOST:PORT/ws --secret S [options]\n"
            "  --mode closed|open|conn   (default closed)\n"
            "  --proto signal|peerjs     the gateway's protocol (default) or the PeerJS server's\n"
            "                            (--url ws://HOST:PORT/peerjs, --peerjs-key K, default peerjs;\n"
            "                            --secret is not needed)\n"
            "  --pairs P                 client pairs, one room each (default 50)\n"
            "  --window W                closed loop: messages in flight per direction (default 1)\n"
            "  --rate R                  open loop: total messages per second (default 1000)\n"
            "  --arrival poisson|uniform open loop arrivals (default poisson)\n"
            "  --kind candidate|offer    message type (default candidate)\n"
            "  --size BYTES              message size (default 300 candidate, 4096 offer)\n"
            "  --bidir                   relay both ways (B->A too)\n"
            "  --duration S --warmup S   measured seconds (default 5) after a warmup (default 1)\n"
            "  --drain S                 wait for in-flight messages after the end (default 2)\n"
            "  --msg-timeout S           closed loop: messages without progress this long are given up\n"
            "                            (counted as timed_out) and the window refilled (default 2)\n"
            "  --conns N --hold S        conn mode: N idle connections held S seconds\n"
            "  --settle S                conn mode: wait before the first reading (default 1)\n"
            "  --src-ips A,B,...         source addresses, round-robin (bind before connect)\n"
            "  --src-ip-count K          shorthand for 127.0.0.1..127.0.0.K\n"
            "  --concurrency C           pairs being set up at once (default 128)\n"
            "  --setup-timeout S         (default 120)\n"
            "  --gateway-pid PID --redis-pid PID   report their CPU (and the gateway's RSS)\n"
            "  --iss ISS --aud AUD       token claims, when the gateway checks them\n"
            "  --label TEXT              copied into the JSON\n"
"  --admin HOST:PORT         gateway admin listener: report its relay_latency_ms too\n"
            "  --dump FILE               write every latency sample (ms since start, µs)\n"
            "  --seed N  --verbose\n");
    exit(2);
}

static void parse_url(const char *u)
{
    const char *p;
    if (strncmp(u, "ws://", 5) == 0) {
        O.tls = false;
        p = u + 5;
    } else if (strncmp(u, "wss://", 6) == 0) {
        O.tls = true;
        p = u + 6;
    } else {
        die("--url must start with ws:// or wss://");
    }
    const char *colon = strchr(p, ':');
    if (!colon || (size_t)(colon - p) >= sizeof O.host)
        die("--url needs HOST:PORT");
    memcpy(O.host, p, (size_t)(colon - p));
    O.host[colon - p] = '\0';
    O.port = atoi(colon + 1);
    if (O.port <= 0 || O.port > 65535)
        die("--url: bad port");
    const char *path = strchr(colon, '/');
    if (path && strlen(path) >= sizeof O.path)
        die("--url: path too long");
    /* The gateway's path unless the URL names one (PeerJS: /peerjs). */
    snprintf(O.path, sizeof O.path, "%s", path && path[1] ? path : O.proto == PROTO_PEERJS ? "/peerjs" : "/ws");
}

static void parse_src_ips(const char *s)
{
    char *dup = strdup(s);
    int n = 1;
    for (const char *p = s; *p; p++)
        n += *p == ',';
    O.src_ips = xcalloc((size_t)n, sizeof *O.src_ips);
    for (char *t = strtok(dup, ","); t; t = strtok(NULL, ","))
        O.src_ips[O.nsrc++] = t;
}

int main(int argc, char **argv)
{
    static struct option lo[] = {
        {"url", 1, 0, 'u'},        {"secret", 1, 0, 's'},     {"mode", 1, 0, 'm'},
        {"pairs", 1, 0, 'p'},      {"window", 1, 0, 'w'},     {"rate", 1, 0, 'r'},
        {"arrival", 1, 0, 'a'},    {"kind", 1, 0, 'k'},       {"size", 1, 0, 'z'},
        {"bidir", 0, 0, 'b'},      {"duration", 1, 0, 'd'},   {"warmup", 1, 0, 'W'},
        {"drain", 1, 0, 'D'},      {"conns", 1, 0, 'n'},      {"hold", 1, 0, 'H'},
        {"src-ips", 1, 0, 'S'},    {"src-ip-count", 1, 0, 'K'}, {"concurrency", 1, 0, 'c'},
        {"setup-timeout", 1, 0, 'T'}, {"gateway-pid", 1, 0, 'g'}, {"redis-pid", 1, 0, 'R'},
        {"iss", 1, 0, 'i'},        {"aud", 1, 0, 'A'},        {"label", 1, 0, 'l'},
        {"seed", 1, 0, 'e'},       {"verbose", 0, 0, 'v'},    {"settle", 1, 0, 'L'},
        {"dump", 1, 0, 'P'},       {"admin", 1, 0, 'M'},      {"msg-timeout", 1, 0, 'O'},
        {"proto", 1, 0, 'o'},      {"peerjs-key", 1, 0, 'J'},       {"help", 0, 0, 'h'},       {0, 0, 0, 0},
    };
    const char *url = NULL;
    uint64_t seed = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'u': url = optarg; break;
        case 's': O.secret = optarg; break;
        case 'm':
            if (strcmp(optarg, "closed") == 0) O.mode = MODE_CLOSED;
            else if (strcmp(optarg, "open") == 0) O.mode = MODE_OPEN;
            else if (strcmp(optarg, "conn") == 0) O.mode = MODE_CONN;
            else die("--mode: closed, open or conn");
            break;
        case 'p': O.pairs = atoi(optarg); break;
        case 'w': O.window = atoi(optarg); break;
        case 'r': O.rate = atof(optarg); break;
        case 'a':
            if (strcmp(optarg, "poisson") == 0) O.poisson = true;
            else if (strcmp(optarg, "uniform") == 0) O.poisson = false;
            else die("--arrival: poisson or uniform");
            break;
        case 'k':
            if (strcmp(optarg, "candidate") == 0) O.kind = KIND_CANDIDATE;
            else if (strcmp(optarg, "offer") == 0) O.kind = KIND_OFFER;
            else die("--kind: candidate or offer");
            break;
        case 'z': O.size = atoi(optarg); break;
        case 'b': O.bidir = true; break;
        case 'd': O.duration = atof(optarg); break;
        case 'W': O.warmup = atof(optarg); break;
        case 'D': O.drain = atof(optarg); break;
        case 'n': O.conns = atol(optarg); break;
        case 'H': O.hold = atof(optarg); break;
        case 'S': parse_src_ips(optarg); break;
        case 'K': {
            int k = atoi(optarg);
            if (k < 1 || k > 254) die("--src-ip-count: 1..254");
            O.src_ips = xcalloc((size_t)k, sizeof *O.src_ips);
            for (int i = 0; i < k; i++) {
                O.src_ips[i] = xmalloc(16);
                snprintf(O.src_ips[i], 16, "127.0.0.%d", (i + 1) & 0xff);
            }
            O.nsrc = k;
            break;
        }
        case 'c': O.concurrency = atoi(optarg); break;
        case 'T': O.setup_timeout = atof(optarg); break;
        case 'g': O.gateway_pid = atoi(optarg); break;
        case 'R': O.redis_pid = atoi(optarg); break;
        case 'i': O.issuer = optarg; break;
        case 'A': O.audience = optarg; break;
        case 'l': O.label = optarg; break;
        case 'e': seed = strtoull(optarg, NULL, 10); break;
        case 'v': O.verbose = true; break;
        case 'L': O.settle = atof(optarg); break;
        case 'P': O.dump = optarg; break;
        case 'M': O.admin = optarg; break;
        case 'O': O.msg_timeout = atof(optarg); break;
        case 'o':
            if (strcmp(optarg, "signal") == 0) O.proto = PROTO_SIGNAL;
            else if (strcmp(optarg, "peerjs") == 0) O.proto = PROTO_PEERJS;
            else die("--proto: signal or peerjs");
            break;
        case 'J': O.peerjs_key = optarg; break;
        default: usage();
        }
    }
    if (O.proto == PROTO_PEERJS && !O.secret)
        O.secret = "unused"; /* PeerJS has no tokens to mint */
    if (!url || !O.secret)
        usage();
    parse_url(url);
    if (O.window < 1 || O.rate <= 0 || O.concurrency < 1 || O.duration <= 0)
        die("bad --window, --rate, --concurrency or --duration");
    if (!O.size)
        O.size = O.kind == KIND_CANDIDATE ? 300 : 4096;
    if (O.mode == MODE_CONN) {
        if (O.conns < 2)
            die("--conns: at least 2");
        O.pairs = (int)((O.conns + 1) / 2);
    }
    if (O.pairs < 1)
        die("--pairs: at least 1");

    signal(SIGPIPE, SIG_IGN);
    /* Take every descriptor we may. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    long need = (long)O.pairs * 2 + 64;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && (long)rl.rlim_cur < need)
        die("need %ld descriptors for %d pairs, the limit is %ld (raise ulimit -n)", need, O.pairs,
            (long)rl.rlim_cur);

    unsigned char rb[8];
    RAND_bytes(rb, sizeof rb);
    uint64_t r64;
    memcpy(&r64, rb, 8);
    rng_state = seed ? seed * 0x9e3779b97f4a7c15ull + 1 : (r64 | 1);
    snprintf(runid, sizeof runid, "%08x", (uint32_t)(rng() >> 32));

    if (inet_pton(AF_INET, O.host, &dst.sin_addr) != 1)
        die("--url: HOST must be a numeric IPv4 address");
    dst.sin_family = AF_INET;
    dst.sin_port = htons((uint16_t)O.port);

    if (O.tls) {
        ssl_ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_verify(ssl_ctx, SSL_VERIFY_NONE, NULL);
        SSL_CTX_set_mode(ssl_ctx, SSL_MODE_RELEASE_BUFFERS);
    }

    struct event_config *ec = event_config_new();
    event_config_set_flag(ec, EVENT_BASE_FLAG_PRECISE_TIMER);
    base = event_base_new_with_config(ec);
    event_config_free(ec);
    if (!base)
        die("event_base_new failed");

    npairs = O.pairs;
    pairs = xcalloc((size_t)npairs, sizeof *pairs);
    if (O.mode == MODE_OPEN)
        dirs = xcalloc((size_t)npairs * 2, sizeof *dirs);
    for (int i = 0; i < npairs; i++) {
        pair *pr = &pairs[i];
        pr->idx = (uint32_t)i;
        snprintf(pr->room, sizeof pr->room, "lg-%s-%d", runid, i);
        for (int s = 0; s < 2; s++) {
            snprintf(pr->peer[s], sizeof pr->peer[s], "%s-%04x-4%03x-8%03x-%012x", runid, (unsigned)s,
                     (unsigned)(i >> 12) & 0xfff, (unsigned)i & 0xfff, (unsigned)i);
            char sub[64];
            snprintf(sub, sizeof sub, "lg-%s-%d-%c", runid, i, s ? 'b' : 'a');
            pr->token[s] = mint_token(sub, pr->room);
            pr->c[s].pr = pr;
            pr->c[s].side = s;
            pr->c[s].state = C_IDLE;
        }
        if (O.mode != MODE_CONN) {
            build_template(pr, 0);
            build_template(pr, 1);
            if (O.mode == MODE_OPEN) {
                dirs[ndirs++] = &pr->d[0];
                if (O.bidir)
                    dirs[ndirs++] = &pr->d[1];
            }
        }
    }
    /* conn mode with an odd N: the last pair has only A; count it as B-less */
    if (O.mode == MODE_OPEN)
        ev_open = evtimer_new(base, open_tick, NULL);

    rss_before = proc_rss_kb(O.gateway_pid);
    ev_phase = evtimer_new(base, on_phase, NULL);
    phase = PH_SETUP;
    t_begin_setup = now_us();
    start_more_setups();
    arm_phase(0.05);
    event_base_dispatch(base);
    report();
    /* Close everything; the gateway sees EOFs and leaves the rooms. */
    for (int i = 0; i < npairs; i++)
        for (int s = 0; s < 2; s++) {
            conn *c = &pairs[i].c[s];
            if (c->bev)
                bufferevent_free(c->bev);
            if (c->cev) {
                evutil_socket_t fd = event_get_fd(c->cev);
                event_free(c->cev);
                close(fd);
            }
        }
    return n_ready > 0 ? 0 : 1;
}
