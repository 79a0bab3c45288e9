/*
 * Runs one framed request file (written by compare.py) through ModSecurity (libmodsecurity3
 * C API, rules from a config file) and through edgeward (its C ABI, embedded default
 * policy), timing every request in-process, and prints one line per measurement:
 *
 *     <engine: ms|ew> <request index> <flagged 0|1> <status> <nanoseconds>
 *
 * Both engines are measured by this one program so that they see the same bytes, the same
 * timer and the same process; edgeward goes through the C ABI because that is how a C host
 * (the nginx module) calls it, so its cost includes building and freeing the decision.
 * Each engine runs its own pass over the file (not interleaved per request) so neither
 * evicts the other's caches between requests: each is measured in its own steady state.
 *
 * Frame, per request (u32 little endian): method length, method, URI length, URI, header
 * count, then per header name length, name, value length, value; body length, body.
 * Lengths are explicit so binary bodies and odd header bytes survive.
 *
 * usage: modsec_harness CONF FRAMES REPEAT WARMUP [ms|ew|both]
 *   REPEAT: measurements per request; WARMUP: untimed passes over the first requests.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <modsecurity/intervention.h>
#include <modsecurity/modsecurity.h>
#include <modsecurity/rules_set.h>
#include <modsecurity/transaction.h>

#include "edgeward.h"

typedef struct {
    /* ModSecurity takes the method and URI as C strings. */
    char *method;
    char *uri;
    size_t method_len;
    size_t uri_len;
    ew_header *headers;
    size_t nheaders;
    const uint8_t *body;
    size_t body_len;
} request;

/* The engines behind one `run` signature, so both are measured by the same loop. */
typedef struct {
    ModSecurity *ms;
    RulesSet *rules;
} modsec_engine;
typedef struct {
    ew_engine *e;
    ew_scratch *s;
} ew_pair;

/* MODSEC_HARNESS_LOG=1: ModSecurity's rule messages and refusal reasons go to stderr, to
 * see why a row was refused; otherwise they go nowhere, since a connector's error log is
 * I/O, not inspection. */
static int log_on;

static void die(const char *what) {
    fprintf(stderr, "modsec_harness: %s\n", what);
    exit(2);
}

static uint32_t u32(const uint8_t **p, const uint8_t *end) {
    uint32_t n;
    if ((size_t)(end - *p) < 4) die("truncated frame");
    n = (uint32_t)(*p)[0] | (uint32_t)(*p)[1] << 8 | (uint32_t)(*p)[2] << 16 |
        (uint32_t)(*p)[3] << 24;
    *p += 4;
    return n;
}

static ew_bytes field(const uint8_t **p, const uint8_t *end) {
    ew_bytes b;
    b.len = u32(p, end);
    if ((size_t)(end - *p) < b.len) die("truncated frame");
    b.ptr = *p;
    *p += b.len;
    return b;
}

static char *cstr(ew_bytes b) {
    char *s = malloc(b.len + 1);
    if (!s) die("out of memory");
    memcpy(s, b.ptr, b.len);
    s[b.len] = 0;
    return s;
}

static request *parse(const uint8_t *p, const uint8_t *end, size_t *count) {
    size_t cap = 1024, n = 0;
    request *v = malloc(cap * sizeof *v);
    if (!v) die("out of memory");
    while (p < end) {
        request *r;
        ew_bytes b;
        size_t i;
        if (n == cap) {
            cap *= 2;
            v = realloc(v, cap * sizeof *v);
            if (!v) die("out of memory");
        }
        r = &v[n++];
        b = field(&p, end);
        r->method = cstr(b);
        r->method_len = b.len;
        b = field(&p, end);
        r->uri = cstr(b);
        r->uri_len = b.len;
        r->nheaders = u32(&p, end);
        r->headers = calloc(r->nheaders ? r->nheaders : 1, sizeof *r->headers);
        if (!r->headers) die("out of memory");
        for (i = 0; i < r->nheaders; i++) {
            r->headers[i].name = field(&p, end);
            r->headers[i].value = field(&p, end);
        }
        b = field(&p, end);
        r->body = b.ptr;
        r->body_len = b.len;
    }
    *count = n;
    return v;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Whether ModSecurity wants the request stopped; its status goes to *status. The strings
 * it allocates are freed here so the loop does not leak. */
static int modsec_stops(Transaction *t, int *status) {
    ModSecurityIntervention it;
    int stop;
    it.status = 200;
    it.pause = 0;
    it.url = NULL;
    it.log = NULL;
    it.disruptive = 0;
    stop = msc_intervention(t, &it) && it.disruptive;
    if (stop) *status = it.status;
    if (stop && it.log && log_on) fprintf(stderr, "%s\n", it.log);
    free(it.url);
    free(it.log);
    return stop;
}

/* One request the way a connector (nginx) drives it: connection, URI, headers, phase 1,
 * body, phase 2 (unless phase 1 already stopped it), then logging. Response phases are left
 * out: the comparison is about request inspection. Headers go in with their lengths
 * (msc_add_n_request_header) since the frame's bytes are not NUL-terminated. */
static int modsec_run(void *engine, const request *r, int *status) {
    modsec_engine *m = engine;
    Transaction *t = msc_new_transaction(m->ms, m->rules, NULL);
    size_t i;
    int stop;
    *status = 200;
    if (!t) die("msc_new_transaction failed");
    msc_process_connection(t, "192.0.2.10", 40000, "192.0.2.1", 80);
    msc_process_uri(t, r->uri, r->method, "1.1");
    for (i = 0; i < r->nheaders; i++)
        msc_add_n_request_header(t, r->headers[i].name.ptr, r->headers[i].name.len,
                                 r->headers[i].value.ptr, r->headers[i].value.len);
    msc_process_request_headers(t);
    stop = modsec_stops(t, status);
    if (!stop) {
        if (r->body_len) msc_append_request_body(t, r->body, r->body_len);
        msc_process_request_body(t);
        stop = modsec_stops(t, status);
    }
    msc_process_logging(t);
    msc_transaction_cleanup(t);
    return stop;
}

/* The peer stays empty, as in `edgeward eval`: the default policy's anonymous per-IP limits
 * would otherwise refuse a benchmark that sends thousands of requests from one address. */
static int ew_run(void *engine, const request *r, int *status) {
    ew_pair *p = engine;
    ew_request q;
    ew_decision *d = NULL;
    int stop;
    memset(&q, 0, sizeof q);
    q.method.ptr = (const uint8_t *)r->method;
    q.method.len = r->method_len;
    q.uri.ptr = (const uint8_t *)r->uri;
    q.uri.len = r->uri_len;
    q.headers = r->headers;
    q.headers_len = r->nheaders;
    q.body.ptr = r->body;
    q.body.len = r->body_len;
    if (ew_inspect(p->e, p->s, &q, &d) != EW_OK) {
        fprintf(stderr, "ew_inspect: %s\n", ew_last_error());
        exit(2);
    }
    stop = !ew_decision_allowed(d);
    *status = stop ? ew_decision_status(d) : 200;
    ew_decision_free(d);
    return stop;
}

static void log_drop(void *data, const void *msg) {
    (void)data;
    (void)msg;
}

static void log_stderr(void *data, const void *msg) {
    (void)data;
    fprintf(stderr, "%s\n", (const char *)msg);
}

/* Untimed warm-up passes over the first requests, then every request REPEAT times, each
 * timed alone; the output line is written outside the timed span. */
static void measure(const char *tag, int (*run)(void *, const request *, int *), void *engine,
                    const request *reqs, size_t n, long repeat, long warmup) {
    size_t warm = n < 50 ? n : 50, i;
    long k;
    int status;
    for (k = 0; k < warmup; k++)
        for (i = 0; i < warm; i++) run(engine, &reqs[i], &status);
    for (i = 0; i < n; i++)
        for (k = 0; k < repeat; k++) {
            uint64_t t0 = now_ns();
            int stop = run(engine, &reqs[i], &status);
            uint64_t t1 = now_ns();
            printf("%s %zu %d %d %llu\n", tag, i, stop, status, (unsigned long long)(t1 - t0));
        }
}

static uint8_t *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    size_t cap = 1 << 20, n = 0, got;
    uint8_t *buf = malloc(cap);
    if (!f) die("cannot open the frames file");
    if (!buf) die("out of memory");
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            if (!buf) die("out of memory");
        }
    }
    if (ferror(f)) die("read error");
    fclose(f);
    *len = n;
    return buf;
}

int main(int argc, char **argv) {
    const char *which = argc > 5 ? argv[5] : "both";
    int do_ms = strcmp(which, "ew") != 0, do_ew = strcmp(which, "ms") != 0;
    size_t len, n, i;
    long repeat, warmup;
    uint8_t *buf;
    request *reqs;
    if (argc < 5) die("usage: modsec_harness CONF FRAMES REPEAT WARMUP [ms|ew|both]");
    repeat = strtol(argv[3], NULL, 10);
    warmup = strtol(argv[4], NULL, 10);
    if (repeat < 1 || warmup < 0) die("bad REPEAT or WARMUP");
    log_on = getenv("MODSEC_HARNESS_LOG") != NULL;
    buf = slurp(argv[2], &len);
    reqs = parse(buf, buf + len, &n);

    if (do_ew) {
        ew_pair p = {NULL, NULL};
        if (ew_engine_default(&p.e) != EW_OK || ew_scratch_new(p.e, &p.s) != EW_OK) {
            fprintf(stderr, "edgeward: %s\n", ew_last_error());
            return 2;
        }
        measure("ew", ew_run, &p, reqs, n, repeat, warmup);
        ew_scratch_free(p.s);
        ew_engine_free(p.e);
    }

    if (do_ms) {
        modsec_engine m;
        const char *err = NULL;
        m.ms = msc_init();
        m.rules = msc_create_rules_set();
        msc_set_connector_info(m.ms, "edgeward-compare-harness");
        msc_set_log_cb(m.ms, log_on ? log_stderr : log_drop);
        if (msc_rules_add_file(m.rules, argv[1], &err) < 0) {
            fprintf(stderr, "modsecurity rules: %s\n", err ? err : "?");
            return 2;
        }
        measure("ms", modsec_run, &m, reqs, n, repeat, warmup);
        msc_rules_cleanup(m.rules);
        msc_cleanup(m.ms);
    }

    for (i = 0; i < n; i++) {
        free(reqs[i].method);
        free(reqs[i].uri);
        free(reqs[i].headers);
    }
    free(reqs);
    free(buf);
    return 0;
}
