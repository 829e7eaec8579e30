// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * postcopy-rs guest workload: the program the demo guest runs as its only
 * job (started by guest/init).  Built with `gcc -static -O2 -pthread`.
 *
 * 1. Allocates most of guest RAM and writes every 4 KiB page with a
 *    self-describing pattern:
 *        word 0   PAGE_MAGIC ^ index
 *        word 1   page index
 *        word 2   generation (how often the page was rewritten)
 *        3..511   a xorshift64* stream seeded from (index, generation)
 *    and keeps a separate table gens[index] of the generation each page
 *    must hold.
 * 2. Prints "READY <pages>" on its console.
 * 3. Inline mode (the default): the console thread itself dirties random
 *    pages at a fixed rate (each one: generation + 1, page rewritten, table
 *    updated) and prints a PROGRESS line periodically; between batches of
 *    at most 20 ms it polls the console (stdin), so dirtying never starves
 *    the reader.
 *    Threaded mode (workload.threads, workload.pattern or the `pattern`
 *    command): one worker thread per vCPU, pinned to it, each owning a
 *    disjoint contiguous slice of the pages (so gens[] has one writer per
 *    entry), runs an access pattern; the main thread only serves the
 *    console.  Patterns:
 *        random-write  random pages of the slice rewritten (generation + 1)
 *        random-read   every page of the slice read once, in a random
 *                      order (a keyed permutation), and checked against
 *                      gens[]; then the thread is done and idles
 *        seq           the slice read and checked in address order, over
 *                      and over (done after the first full sweep)
 *        seq-write     the same, rewriting each page (generation + 1)
 *        mix           per thread, alternating runs of MIX_CHUNK accesses:
 *                      a sequential read sweep of the first half of the
 *                      slice and random reads of the second half; done when
 *                      both halves were read once, then idles
 *    A read that finds a wrong page prints "READ FAIL ..." at once.
 * 4. Every access (inline or threaded) is timed with CLOCK_MONOTONIC
 *    before and after touching the page; per thread: accesses, the worst,
 *    a log2-microsecond histogram, time in accesses over the stall
 *    threshold.  A postcopy page fault shows as a long access.
 *
 * Console commands, one per line:
 *        verify          pause the workers, check EVERY page against the
 *                        table, resume; prints exactly
 *                        "VERIFY OK pages=<n>" or
 *                        "VERIFY FAIL page=<i> ... bad_pages=<n>"
 *                        and keeps running
 *        rate N|max      N pages/s (over all threads) from now on (0: stop)
 *        stats           print a PROGRESS line now
 *        corrupt I       flip a bit in page I (to see the checker fail)
 *        pattern [P [R]] switch every worker to pattern P (starting the
 *                        threads if needed) at rate R; resets the stall
 *                        statistics; without P: print the current pattern
 *        stalls          one STALLS line per thread, then "STALLS total"
 *        stalls reset [US]  zero the statistics (stall threshold US µs)
 *
 * Configuration, from the kernel command line (/proc/cmdline; the kernel
 * does not pass dotted parameters to init; the environment variable
 * WORKLOAD_CMDLINE replaces it, to try the program on a host):
 *        workload.mb=N       MiB to allocate (default: 80% of MemAvailable)
 *        workload.rate=N     pages/s (default 2000; 0: none; "max": as fast
 *                            as possible)
 *        workload.report=N   seconds between PROGRESS lines (default 2)
 *        workload.seed=N     seed of the random page choice
 *        workload.threads=N  threaded mode with N workers (0: one per
 *                            online CPU)
 *        workload.pattern=P  threaded mode, starting with pattern P
 *                            (default random-write)
 *        workload.stall_us=N an access longer than N µs is a stall (50)
 * guest/README.md documents the output lines.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define PAGE_SIZE 4096u
#define WORDS (PAGE_SIZE / 8u)
#define PAGE_MAGIC 0x706f737463707921ull /* "postcpy!" */
#define RATE_MAX (-1L)
#define RESERVE_MB 48u   /* MemAvailable the workload leaves to the kernel */
#define MAX_THREADS 256u
#define HIST_BUCKETS 32  /* bucket N: [2^N, 2^(N+1)) µs; bucket 0 also < 1 µs */
#define MIX_CHUNK 64u    /* mix: accesses per sequential / random run */
#define READ_FAIL_LINES 5u /* READ FAIL lines per thread and pattern */
#define IDLE_NS 10000000ull /* a worker with nothing to do looks again in 10 ms */
#define NS 1000000000ull

static uint64_t *mem;    /* npages pages */
static uint32_t *gens;   /* generation each page must hold */
static uint64_t npages;
static uint64_t seed;

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t xorshift(uint64_t *state)
{
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * 0x2545f4914f6cdd1dull;
}

static uint64_t page_seed(uint64_t idx, uint32_t gen)
{
    return splitmix64(idx ^ ((uint64_t)gen << 40) ^ 0x5eed5eed5eedull) | 1;
}

static void write_page(uint64_t idx, uint32_t gen)
{
    uint64_t *p = mem + idx * WORDS;
    uint64_t s = page_seed(idx, gen);

    p[0] = PAGE_MAGIC ^ idx;
    p[1] = idx;
    p[2] = gen;
    for (unsigned k = 3; k < WORDS; k++) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        p[k] = s * 0x2545f4914f6cdd1dull;
    }
}

/* 0 if page idx holds generation gen, else the first bad word + 1. */
static unsigned check_page(uint64_t idx, uint32_t gen)
{
    const uint64_t *p = mem + idx * WORDS;
    uint64_t s = page_seed(idx, gen);

    if (p[0] != (PAGE_MAGIC ^ idx)) {
        return 1;
    }
    if (p[1] != idx) {
        return 2;
    }
    if (p[2] != gen) {
        return 3;
    }
    for (unsigned k = 3; k < WORDS; k++) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        if (p[k] != s * 0x2545f4914f6cdd1dull) {
            return k + 1;
        }
    }
    return 0;
}

/*
 * A keyed pseudo-random permutation of [0, n) with no table: a 4-round
 * Feistel network over the smallest even bit width covering n, walked
 * until the value falls inside [0, n) (cycle walking keeps it a
 * permutation; at most 4 tries are expected).  random-read visits page
 * perm(k) at step k, so it reads each page exactly once, in an order that
 * neither the guest's nor the host's readahead can guess.
 */
struct perm {
    uint64_t n, mask, key[4];
    unsigned half;
};

static void perm_init(struct perm *p, uint64_t n, uint64_t key)
{
    unsigned bits = 1;

    while (bits < 63 && (1ull << bits) < n) {
        bits++;
    }
    p->n = n;
    p->half = (bits + 1) / 2;
    p->mask = (1ull << p->half) - 1;
    for (unsigned i = 0; i < 4; i++) {
        key = splitmix64(key);
        p->key[i] = key;
    }
}

static uint64_t perm_apply(const struct perm *p, uint64_t x)
{
    do {
        uint64_t l = x >> p->half, r = x & p->mask;

        for (unsigned i = 0; i < 4; i++) {
            uint64_t f = splitmix64(r ^ p->key[i]) & p->mask;
            uint64_t nl = r;

            r = l ^ f;
            l = nl;
        }
        x = (l << p->half) | r;
    } while (x >= p->n);
    return x;
}

/*
 * With more than one guest NUMA node (the demo's two-RAM-block layout),
 * interleave the allocation over all of them, so every RAM block holds
 * workload pages and gets dirtied.  Returns the number of nodes.
 */
static int interleave_over_nodes(void)
{
    FILE *f = fopen("/sys/devices/system/node/online", "r");
    char line[128];
    unsigned long mask = 0;
    int nodes = 0;
    char *p;

    if (!f) {
        return 1;
    }
    if (!fgets(line, sizeof(line), f)) {
        line[0] = '\0';
    }
    fclose(f);
    /* "0", "0-1", "0,2-3" */
    for (p = strtok(line, ",\n"); p; p = strtok(NULL, ",\n")) {
        unsigned a, b;

        if (sscanf(p, "%u-%u", &a, &b) != 2) {
            if (sscanf(p, "%u", &a) != 1) {
                continue;
            }
            b = a;
        }
        for (unsigned n = a; n <= b && n < 8 * sizeof(mask); n++) {
            mask |= 1ul << n;
            nodes++;
        }
    }
    if (nodes > 1) {
        /* MPOL_INTERLEAVE = 3 */
        if (syscall(SYS_set_mempolicy, 3, &mask, 8 * sizeof(mask) + 1) != 0) {
            printf("WARNING set_mempolicy(MPOL_INTERLEAVE) failed: %s\n", strerror(errno));
        }
    }
    return nodes ? nodes : 1;
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static double now_s(void)
{
    return (double)now_ns() / 1e9;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = { .tv_sec = (time_t)(ns / NS), .tv_nsec = (long)(ns % NS) };

    nanosleep(&ts, NULL);
}

/* Value of "key=" on the kernel command line, or NULL. */
static char cmdline[4096];
static const char *cmdline_get(const char *key)
{
    size_t klen = strlen(key);
    const char *p = cmdline;

    while (p && *p) {
        while (*p == ' ') {
            p++;
        }
        if (strncmp(p, key, klen) == 0 && p[klen] == '=') {
            return p + klen + 1;
        }
        p = strchr(p, ' ');
    }
    return NULL;
}

static uint64_t meminfo_kb(const char *field)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    uint64_t v = 0;
    size_t flen = strlen(field);

    if (!f) {
        return 0;
    }
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, field, flen) == 0 && line[flen] == ':') {
            v = strtoull(line + flen + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

/* ------------------------------------------------------------------ */
/* patterns, workers and their statistics                              */

enum pattern { PAT_RANDOM_WRITE, PAT_RANDOM_READ, PAT_SEQ, PAT_SEQ_WRITE, PAT_MIX, PAT_COUNT };
static const char *const pattern_names[PAT_COUNT] = {
    "random-write", "random-read", "seq", "seq-write", "mix",
};

static int pattern_parse(const char *s, size_t len)
{
    for (int p = 0; p < PAT_COUNT; p++) {
        if (strlen(pattern_names[p]) == len && strncmp(s, pattern_names[p], len) == 0) {
            return p;
        }
    }
    return -1;
}

/*
 * Counters a worker writes and the console thread reads.  Each has one
 * writer (its worker; in inline mode the console thread itself), so a
 * relaxed load + store is enough: no lock, no read-modify-write.
 */
typedef _Atomic uint64_t counter;

static uint64_t get(counter *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

static void put(counter *c, uint64_t v)
{
    atomic_store_explicit(c, v, memory_order_relaxed);
}

static void bump(counter *c, uint64_t d)
{
    put(c, get(c) + d);
}

/* Zeroed by `stalls reset` and by `pattern`. */
struct stall_stats {
    counter errors, busy_ns, worst_ns, stalled, stalled_ns;
    counter hist[HIST_BUCKETS];
};

struct worker {
    /* set before the thread starts */
    unsigned id;
    uint64_t lo, n;          /* its pages: [lo, lo + n) */
    pthread_t tid;
    _Atomic int cpu;         /* the CPU it is pinned to, -1 if none */

    /* private to the thread that runs it */
    uint64_t rng;
    unsigned pat_seen, stats_seen, fail_lines, mix_run;
    enum pattern pat;
    long rate_seen;
    uint64_t pace_t0, pace_done;
    uint64_t seq_lo, seq_n, seq_pos;   /* sequential part */
    uint64_t rnd_lo, rnd_n, rnd_k;     /* random-read part */
    struct perm perm;

    /* published: one writer (the worker), read by the console thread */
    counter writes, gen_max, total_accesses, read_errors; /* since start */
    counter done, done_ns, passes;      /* of the current pattern */
    _Atomic unsigned pat_ack, stats_ack;
    struct stall_stats st;
} __attribute__((aligned(64)));

/* Set by the console thread, read by the workers. */
static _Atomic long g_rate;        /* pages/s over all threads, 0 none, RATE_MAX */
static _Atomic int g_pattern;
static _Atomic unsigned g_pat_epoch, g_stats_epoch;
static _Atomic uint64_t g_stats_t0, g_stall_ns;
static _Atomic int g_pause;
static pthread_mutex_t ctl_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ctl_cond = PTHREAD_COND_INITIALIZER;
static unsigned parked, filled;    /* under ctl_lock */

static struct worker *workers;     /* nworkers of them; NULL in inline mode */
static unsigned nworkers;
static struct worker inline_w;     /* the console thread's own, in inline mode */
static unsigned threads_cfg;       /* workload.threads: 0 = one per online CPU */

/* Log2-µs bucket of an access of ns nanoseconds (QEMU's latency-dist one). */
static unsigned bucket_of(uint64_t ns)
{
    uint64_t us = ns / 1000;
    unsigned b = us < 2 ? 0 : 63u - (unsigned)__builtin_clzll(us);

    return b < HIST_BUCKETS ? b : HIST_BUCKETS - 1;
}

static void record(struct worker *w, uint64_t ns)
{
    struct stall_stats *st = &w->st;

    bump(&st->busy_ns, ns);
    bump(&st->hist[bucket_of(ns)], 1);
    if (ns > get(&st->worst_ns)) {
        put(&st->worst_ns, ns);
    }
    if (ns > atomic_load_explicit(&g_stall_ns, memory_order_relaxed)) {
        bump(&st->stalled, 1);
        bump(&st->stalled_ns, ns);
    }
    bump(&w->total_accesses, 1);
}

/* One timed access to page idx: rewrite it (generation + 1) or check it. */
static void touch(struct worker *w, uint64_t idx, int write)
{
    uint64_t t0 = now_ns(), t1;
    uint32_t g = gens[idx];
    unsigned bad = 0;

    if (write) {
        g++;
        write_page(idx, g);
        gens[idx] = g;
    } else {
        bad = check_page(idx, g);
    }
    t1 = now_ns();
    record(w, t1 - t0);
    if (write) {
        bump(&w->writes, 1);
        if (g > get(&w->gen_max)) {
            put(&w->gen_max, g);
        }
    }
    if (bad) {
        const uint64_t *p = mem + idx * WORDS;

        bump(&w->st.errors, 1);
        bump(&w->read_errors, 1);
        if (w->fail_lines < READ_FAIL_LINES) {
            w->fail_lines++;
            printf("READ FAIL thread=%u page=%" PRIu64 " word=%u expected_gen=%" PRIu32
                   " found_index=%" PRIu64 " found_gen=%" PRIu64 "\n",
                   w->id, idx, bad - 1, g, p[1], p[2]);
            fflush(stdout);
        }
    }
}

/* done_ns counts from the last statistics restart (`pattern`, `stalls reset`). */
static void mark_done(struct worker *w)
{
    uint64_t t0 = atomic_load_explicit(&g_stats_t0, memory_order_relaxed), t = now_ns();

    put(&w->done_ns, t > t0 ? t - t0 : 0);
    put(&w->done, 1);
}

static void pattern_start(struct worker *w, enum pattern p, unsigned epoch)
{
    w->pat = p;
    w->fail_lines = 0;
    w->mix_run = 0;
    w->seq_lo = w->rnd_lo = w->lo;
    w->seq_n = w->rnd_n = 0;
    w->seq_pos = w->rnd_k = 0;
    put(&w->done, 0);
    put(&w->done_ns, 0);
    put(&w->passes, 0);
    switch (p) {
    case PAT_SEQ:
    case PAT_SEQ_WRITE:
        w->seq_n = w->n;
        break;
    case PAT_RANDOM_READ:
        w->rnd_n = w->n;
        break;
    case PAT_MIX:
        w->seq_n = w->n / 2;
        w->rnd_lo = w->lo + w->seq_n;
        w->rnd_n = w->n - w->seq_n;
        break;
    default:
        break;
    }
    perm_init(&w->perm, w->rnd_n, seed ^ ((uint64_t)w->id << 32) ^ epoch);
    if (p != PAT_RANDOM_WRITE && w->seq_n + w->rnd_n == 0) {
        mark_done(w);
    }
}

/* Take up a new pattern or a statistics reset the console asked for. */
static void worker_sync(struct worker *w)
{
    unsigned pe = atomic_load_explicit(&g_pat_epoch, memory_order_acquire);
    unsigned se;

    if (pe != w->pat_seen) {
        pattern_start(w, (enum pattern)atomic_load(&g_pattern), pe);
        w->pat_seen = pe;
        atomic_store_explicit(&w->pat_ack, pe, memory_order_release);
    }
    se = atomic_load_explicit(&g_stats_epoch, memory_order_acquire);
    if (se != w->stats_seen) {
        struct stall_stats *st = &w->st;

        put(&st->errors, 0);
        put(&st->busy_ns, 0);
        put(&st->worst_ns, 0);
        put(&st->stalled, 0);
        put(&st->stalled_ns, 0);
        for (unsigned b = 0; b < HIST_BUCKETS; b++) {
            put(&st->hist[b], 0);
        }
        w->stats_seen = se;
        atomic_store_explicit(&w->stats_ack, se, memory_order_release);
    }
}

/* One access of w's pattern; 0 when there is nothing left to do. */
static int step(struct worker *w)
{
    switch (w->pat) {
    case PAT_RANDOM_WRITE:
        if (w->n == 0) {
            return 0;
        }
        touch(w, w->lo + xorshift(&w->rng) % w->n, 1);
        return 1;
    case PAT_SEQ:
    case PAT_SEQ_WRITE:
        if (w->seq_n == 0) {
            return 0;
        }
        touch(w, w->seq_lo + w->seq_pos, w->pat == PAT_SEQ_WRITE);
        if (++w->seq_pos == w->seq_n) {
            w->seq_pos = 0;
            bump(&w->passes, 1);
            if (!get(&w->done)) {
                mark_done(w);
            }
        }
        return 1;
    case PAT_RANDOM_READ:
    case PAT_MIX: {
        int seq_left = w->seq_pos < w->seq_n, rnd_left = w->rnd_k < w->rnd_n;

        if (!seq_left && !rnd_left) {
            return 0;
        }
        /* mix: runs of MIX_CHUNK, sequential first; a finished part yields. */
        if (seq_left && (!rnd_left || (w->mix_run / MIX_CHUNK) % 2 == 0)) {
            touch(w, w->seq_lo + w->seq_pos++, 0);
        } else {
            touch(w, w->rnd_lo + perm_apply(&w->perm, w->rnd_k++), 0);
        }
        w->mix_run++;
        if (w->seq_pos == w->seq_n && w->rnd_k == w->rnd_n) {
            bump(&w->passes, 1);
            mark_done(w);
        }
        return 1;
    }
    default:
        return 0;
    }
}

/* Workers wait here while the console checks or corrupts memory. */
static void park(void)
{
    pthread_mutex_lock(&ctl_lock);
    parked++;
    pthread_cond_broadcast(&ctl_cond);
    while (atomic_load(&g_pause)) {
        pthread_cond_wait(&ctl_cond, &ctl_lock);
    }
    parked--;
    pthread_mutex_unlock(&ctl_lock);
}

/* Returns once every worker is parked (none is touching memory). */
static void pause_workers(void)
{
    if (nworkers == 0) {
        return;
    }
    pthread_mutex_lock(&ctl_lock);
    atomic_store(&g_pause, 1);
    while (parked < nworkers) {
        pthread_cond_wait(&ctl_cond, &ctl_lock);
    }
    pthread_mutex_unlock(&ctl_lock);
}

static void resume_workers(void)
{
    if (nworkers == 0) {
        return;
    }
    pthread_mutex_lock(&ctl_lock);
    atomic_store(&g_pause, 0);
    pthread_cond_broadcast(&ctl_cond);
    pthread_mutex_unlock(&ctl_lock);
}

static int fill_first;    /* workers fill their slice before READY */

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    int cpu = atomic_load(&w->cpu);

    if (cpu >= 0) {
        cpu_set_t set;

        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        /* So that a thread's stalls are its vCPU's stalls. */
        if (sched_setaffinity(0, sizeof(set), &set) != 0) {
            printf("WARNING thread %u: sched_setaffinity(cpu %d) failed: %s\n",
                   w->id, cpu, strerror(errno));
            atomic_store(&w->cpu, -1);
        }
    }
    if (fill_first) {
        for (uint64_t i = w->lo; i < w->lo + w->n; i++) {
            write_page(i, 0);
        }
        pthread_mutex_lock(&ctl_lock);
        filled++;
        pthread_cond_broadcast(&ctl_cond);
        pthread_mutex_unlock(&ctl_lock);
    }
    w->rate_seen = LONG_MIN;
    for (;;) {
        long r;

        if (atomic_load_explicit(&g_pause, memory_order_acquire)) {
            park();
        }
        worker_sync(w);
        r = atomic_load_explicit(&g_rate, memory_order_relaxed);
        if (r != w->rate_seen) {
            w->rate_seen = r;
            w->pace_t0 = now_ns();
            w->pace_done = 0;
        }
        if (r == 0) {
            sleep_ns(IDLE_NS);
            continue;
        }
        if (r != RATE_MAX) {
            /* This thread's share of the rate, paced like the inline loop. */
            double share = (double)r / nworkers;
            uint64_t t = now_ns();
            double due = (double)(t - w->pace_t0) / 1e9 * share - (double)w->pace_done;

            if (due > share + 1) {
                /* More than a second behind (a long stall, the VM stopped):
                 * drop the backlog. */
                w->pace_t0 = t;
                w->pace_done = 0;
                due = 0;
            }
            if (due < 1) {
                double wait = ((double)w->pace_done + 1) / share * 1e9 - (double)(t - w->pace_t0);

                sleep_ns(wait < 1000 ? 1000 : wait > (double)IDLE_NS ? IDLE_NS : (uint64_t)wait);
                continue;
            }
            w->pace_done++;
        }
        if (!step(w)) {
            sleep_ns(IDLE_NS);   /* a finished sweep */
        }
    }
    return NULL;
}

static long online_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    return n > 0 ? n : 1;
}

/* Start n workers over [0, npages); with fill, they write generation 0. */
static void start_threads(unsigned n, int fill)
{
    cpu_set_t allowed;
    int cpus[CPU_SETSIZE];
    unsigned ncpus = 0;
    pthread_attr_t attr;
    size_t size = (size_t)n * sizeof(*workers);

    if (sched_getaffinity(0, sizeof(allowed), &allowed) == 0) {
        for (int c = 0; c < CPU_SETSIZE; c++) {
            if (CPU_ISSET(c, &allowed)) {
                cpus[ncpus++] = c;
            }
        }
    }
    workers = aligned_alloc(64, size);
    if (!workers) {
        printf("WORKLOAD FAILED to allocate %u workers\n", n);
        exit(1);
    }
    memset(workers, 0, size);
    fill_first = fill;
    nworkers = n;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    for (unsigned i = 0; i < n; i++) {
        struct worker *w = &workers[i];
        int rc;

        w->id = i;
        w->lo = npages * i / n;
        w->n = npages * (i + 1) / n - w->lo;
        atomic_store(&w->cpu, ncpus ? cpus[i % ncpus] : -1);
        w->rng = splitmix64(seed ^ (0x9e3779b97f4a7c15ull * (i + 1))) | 1;
        rc = pthread_create(&w->tid, &attr, worker_main, w);
        if (rc != 0) {
            /* Its pages would have no owner: give up loudly. */
            printf("WORKLOAD FAILED to start thread %u: %s\n", i, strerror(rc));
            exit(1);
        }
    }
    pthread_attr_destroy(&attr);
}

/* The statistics start afresh (each worker zeroes its own: one writer). */
static void stats_reset(void)
{
    atomic_store(&g_stats_t0, now_ns());
    atomic_fetch_add(&g_stats_epoch, 1);
}

/* Switch every worker to pattern p; the statistics start afresh. */
static void set_pattern(enum pattern p)
{
    atomic_store(&g_pattern, (int)p);
    atomic_fetch_add(&g_pat_epoch, 1);
    stats_reset();
}

/* ------------------------------------------------------------------ */
/* console                                                             */

static double rate_t0;         /* inline mode: rate accounting restarts here */
static uint64_t rate_done;     /* inline mode: pages dirtied since rate_t0 */
static double start_t;
static uint64_t verifies;

/* "5000", "0" or "max" */
static const char *rate_str(void)
{
    static char buf[32];
    long rate = atomic_load(&g_rate);

    if (rate == RATE_MAX) {
        return "max";
    }
    snprintf(buf, sizeof(buf), "%ld", rate);
    return buf;
}

static long parse_rate(const char *v)
{
    return strncmp(v, "max", 3) == 0 ? RATE_MAX : strtol(v, NULL, 10);
}

static void set_rate(long r)
{
    atomic_store(&g_rate, r);
    rate_t0 = now_s();
    rate_done = 0;
}

static void progress(void)
{
    double t = now_s() - start_t;
    uint64_t dirtied = get(&inline_w.writes), gen_max = get(&inline_w.gen_max);
    uint64_t accesses = 0, errors = 0, done = 0;

    for (unsigned i = 0; i < nworkers; i++) {
        struct worker *w = &workers[i];

        dirtied += get(&w->writes);
        if (get(&w->gen_max) > gen_max) {
            gen_max = get(&w->gen_max);
        }
        accesses += get(&w->total_accesses);
        errors += get(&w->read_errors);
        done += atomic_load(&w->pat_ack) == atomic_load(&g_pat_epoch) && get(&w->done);
    }
    if (nworkers == 0) {
        printf("PROGRESS t=%.0fs dirtied=%" PRIu64 " rate=%s/s gen_max=%" PRIu64
               " verifies=%" PRIu64 "\n",
               t, dirtied, rate_str(), gen_max, verifies);
    } else {
        printf("PROGRESS t=%.0fs dirtied=%" PRIu64 " rate=%s/s gen_max=%" PRIu64
               " verifies=%" PRIu64 " threads=%u pattern=%s accesses=%" PRIu64
               " done=%" PRIu64 "/%u read_errors=%" PRIu64 "\n",
               t, dirtied, rate_str(), gen_max, verifies, nworkers,
               pattern_names[atomic_load(&g_pattern)], accesses + get(&inline_w.total_accesses),
               done, nworkers, errors);
    }
    fflush(stdout);
}

static void verify(void)
{
    uint64_t bad = 0, first = UINT64_MAX;
    unsigned first_word = 0;
    double t0 = now_s();

    verifies++;
    pause_workers();
    for (uint64_t i = 0; i < npages; i++) {
        unsigned w = check_page(i, gens[i]);

        if (w) {
            if (first == UINT64_MAX) {
                first = i;
                first_word = w - 1;
            }
            bad++;
        }
    }
    if (bad == 0) {
        printf("VERIFY OK pages=%" PRIu64 "\n", npages);
    } else {
        const uint64_t *p = mem + first * WORDS;

        printf("VERIFY FAIL page=%" PRIu64 " word=%u expected_gen=%" PRIu32
               " found_index=%" PRIu64 " found_gen=%" PRIu64
               " bad_pages=%" PRIu64 " pages=%" PRIu64 "\n",
               first, first_word, gens[first], p[1], p[2], bad, npages);
    }
    resume_workers();
    printf("VERIFY took %.2fs\n", now_s() - t0);
    fflush(stdout);
}

/*
 * The q-quantile (0 < q <= 1) of a log2-µs histogram: the bucket holding
 * that rank, interpolated linearly inside it, and never above the worst
 * access (so exact to within the bucket, a factor of 2).
 */
static double quantile_us(const uint64_t *hist, uint64_t total, double worst_us, double q)
{
    uint64_t rank = (uint64_t)(q * (double)total), cum = 0;

    if (total == 0) {
        return 0;
    }
    if ((double)rank < q * (double)total || rank == 0) {
        rank++;
    }
    for (unsigned b = 0; b < HIST_BUCKETS; b++) {
        if (hist[b] && cum + hist[b] >= rank) {
            double lo = b ? (double)(1ull << b) : 0, hi = (double)(1ull << (b + 1));

            if (hi > worst_us) {
                hi = worst_us;
            }
            if (lo > hi) {
                lo = hi;
            }
            return lo + (hi - lo) * (double)(rank - cum) / (double)hist[b];
        }
        cum += hist[b];
    }
    return worst_us;
}

struct stall_view {
    uint64_t accesses, errors, busy_ns, worst_ns, stalled, stalled_ns, done, done_ns, passes;
    uint64_t hist[HIST_BUCKETS];
};

static void print_stall_line(const char *who, const char *pattern, const struct stall_view *v,
                             uint64_t elapsed_ns, const char *done)
{
    char hist[HIST_BUCKETS * 24] = "";
    size_t len = 0;
    double worst_us = (double)v->worst_ns / 1000;

    for (unsigned b = 0; b < HIST_BUCKETS; b++) {
        if (v->hist[b]) {
            len += (size_t)snprintf(hist + len, sizeof(hist) - len, "%s%u:%" PRIu64,
                                    len ? "," : "", b, v->hist[b]);
        }
    }
    printf("STALLS %s pattern=%s accesses=%" PRIu64 " elapsed_ms=%.1f busy_ms=%.1f"
           " errors=%" PRIu64 " %s passes=%" PRIu64 " worst_us=%.1f p50_us=%.1f"
           " p99_us=%.1f stalled=%" PRIu64 " stalled_ms=%.1f hist=%s\n",
           who, pattern, v->accesses, (double)elapsed_ns / 1e6, (double)v->busy_ns / 1e6,
           v->errors, done, v->passes, worst_us,
           quantile_us(v->hist, v->accesses, worst_us, 0.50),
           quantile_us(v->hist, v->accesses, worst_us, 0.99),
           v->stalled, (double)v->stalled_ns / 1e6, hist);
}

/* One STALLS line per thread (inline mode: the console thread), then a total. */
static void print_stalls(void)
{
    unsigned pe = atomic_load(&g_pat_epoch), se = atomic_load(&g_stats_epoch);
    uint64_t t0 = atomic_load(&g_stats_t0), t = now_ns(), elapsed = t > t0 ? t - t0 : 0;
    unsigned n = nworkers ? nworkers : 1, ndone = 0;
    struct stall_view total;
    const char *pattern = nworkers ? pattern_names[atomic_load(&g_pattern)] : "random-write";
    char who[64], done[64];

    memset(&total, 0, sizeof(total));
    for (unsigned i = 0; i < n; i++) {
        struct worker *w = nworkers ? &workers[i] : &inline_w;
        struct stall_view v;

        memset(&v, 0, sizeof(v));
        /* A worker that has not taken up the reset has done nothing since. */
        if (atomic_load_explicit(&w->stats_ack, memory_order_acquire) == se) {
            v.errors = get(&w->st.errors);
            v.busy_ns = get(&w->st.busy_ns);
            v.worst_ns = get(&w->st.worst_ns);
            v.stalled = get(&w->st.stalled);
            v.stalled_ns = get(&w->st.stalled_ns);
            /*
             * The worker goes on recording while this reads: its access
             * count, read apart from the histogram, could differ from the
             * histogram's sum by the accesses in between.  Every access
             * bumps one bucket, so the sum is the count.
             */
            for (unsigned b = 0; b < HIST_BUCKETS; b++) {
                v.hist[b] = get(&w->st.hist[b]);
                v.accesses += v.hist[b];
            }
        }
        if (atomic_load_explicit(&w->pat_ack, memory_order_acquire) == pe) {
            v.done = get(&w->done);
            v.done_ns = get(&w->done_ns);
            v.passes = get(&w->passes);
        }
        snprintf(who, sizeof(who), "thread=%u cpu=%d", i, nworkers ? atomic_load(&w->cpu) : -1);
        snprintf(done, sizeof(done), "done=%" PRIu64 " done_ms=%.1f", v.done,
                 v.done ? (double)v.done_ns / 1e6 : -1.0);
        print_stall_line(who, pattern, &v, elapsed, done);

        ndone += v.done != 0;
        total.accesses += v.accesses;
        total.errors += v.errors;
        total.busy_ns += v.busy_ns;
        total.stalled += v.stalled;
        total.stalled_ns += v.stalled_ns;
        total.passes += v.passes;
        if (v.worst_ns > total.worst_ns) {
            total.worst_ns = v.worst_ns;
        }
        if (v.done_ns > total.done_ns) {
            total.done_ns = v.done_ns;
        }
        for (unsigned b = 0; b < HIST_BUCKETS; b++) {
            total.hist[b] += v.hist[b];
        }
    }
    snprintf(who, sizeof(who), "total threads=%u stall_us=%" PRIu64, n,
             atomic_load(&g_stall_ns) / 1000);
    snprintf(done, sizeof(done), "done=%u/%u done_ms=%.1f", ndone, n,
             ndone == n ? (double)total.done_ns / 1e6 : -1.0);
    print_stall_line(who, pattern, &total, elapsed, done);
    fflush(stdout);
}

static void print_pattern(void)
{
    printf("PATTERN name=%s rate=%s threads=%u\n",
           nworkers ? pattern_names[atomic_load(&g_pattern)] : "inline", rate_str(), nworkers);
    fflush(stdout);
}

static void command(char *line)
{
    char *end = line + strlen(line);

    while (end > line && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' ')) {
        *--end = '\0';
    }
    while (*line == ' ') {
        line++;
    }
    if (*line == '\0') {
        return;
    }
    if (strcmp(line, "verify") == 0) {
        verify();
    } else if (strncmp(line, "rate ", 5) == 0) {
        set_rate(parse_rate(line + 5));
        printf("RATE %s\n", rate_str());
        fflush(stdout);
    } else if (strncmp(line, "corrupt ", 8) == 0) {
        /* Self-test of the checker: flip one word of a page. */
        uint64_t idx = strtoull(line + 8, NULL, 10);

        if (idx < npages) {
            pause_workers();
            mem[idx * WORDS + WORDS - 1] ^= 1;
            resume_workers();
            printf("CORRUPTED page=%" PRIu64 "\n", idx);
        } else {
            printf("CORRUPT page %" PRIu64 " out of range\n", idx);
        }
        fflush(stdout);
    } else if (strcmp(line, "stats") == 0) {
        progress();
    } else if (strcmp(line, "pattern") == 0 || strncmp(line, "pattern ", 8) == 0) {
        char *name = line + 7, *r;
        size_t len;
        int p;

        name += strspn(name, " ");
        if (*name == '\0') {
            print_pattern();
            return;
        }
        len = strcspn(name, " ");
        r = name + len + strspn(name + len, " ");
        p = pattern_parse(name, len);
        if (p < 0) {
            printf("PATTERN UNKNOWN '%.*s' (random-write, random-read, seq, seq-write, mix)\n",
                   (int)len, name);
            fflush(stdout);
            return;
        }
        if (*r) {
            set_rate(parse_rate(r));
        }
        set_pattern((enum pattern)p);
        if (nworkers == 0) {
            start_threads(threads_cfg ? threads_cfg : (unsigned)online_cpus(), 0);
        }
        print_pattern();
    } else if (strcmp(line, "stalls") == 0) {
        print_stalls();
    } else if (strcmp(line, "stalls reset") == 0 || strncmp(line, "stalls reset ", 13) == 0) {
        if (line[12] == ' ') {
            atomic_store(&g_stall_ns, strtoull(line + 13, NULL, 10) * 1000);
        }
        stats_reset();
        printf("STALLS RESET stall_us=%" PRIu64 "\n", atomic_load(&g_stall_ns) / 1000);
        fflush(stdout);
    } else {
        printf("UNKNOWN COMMAND '%s' (verify, rate N, stats, corrupt I, pattern P [R], "
               "stalls [reset [US]])\n", line);
        fflush(stdout);
    }
}

/* Inline mode: one random page of all RAM rewritten by the console thread. */
static void dirty_one(void)
{
    touch(&inline_w, xorshift(&inline_w.rng) % npages, 1);
}

static void clocksource(char *buf, size_t len)
{
    FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r");

    snprintf(buf, len, "unknown");
    if (f) {
        if (fgets(buf, (int)len, f)) {
            buf[strcspn(buf, "\n")] = '\0';
        }
        fclose(f);
    }
}

int main(void)
{
    FILE *f;
    const char *v;
    uint64_t avail_mb, mb;
    double report = 2.0, next_report;
    char buf[512], clk[64];
    size_t buflen = 0;
    struct termios tio;
    int nodes, threaded = 0, pat = PAT_RANDOM_WRITE;

    setvbuf(stdout, NULL, _IOLBF, 0);
    /* WORKLOAD_CMDLINE replaces /proc/cmdline (for running it on a host). */
    v = getenv("WORKLOAD_CMDLINE");
    f = v ? NULL : fopen("/proc/cmdline", "r");
    if (v) {
        snprintf(cmdline, sizeof(cmdline), "%s", v);
    } else if (f) {
        if (!fgets(cmdline, sizeof(cmdline), f)) {
            cmdline[0] = '\0';
        }
        fclose(f);
        cmdline[strcspn(cmdline, "\n")] = '\0';
    }

    /* No echo: the console carries only the workload's own lines. */
    if (tcgetattr(0, &tio) == 0) {
        tio.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
        tio.c_lflag |= ICANON;
        tcsetattr(0, TCSANOW, &tio);
    }

    avail_mb = meminfo_kb("MemAvailable") / 1024;
    v = cmdline_get("workload.mb");
    mb = v ? strtoull(v, NULL, 10) : avail_mb * 8 / 10;
    if (avail_mb > RESERVE_MB && mb > avail_mb - RESERVE_MB) {
        printf("WARNING workload.mb=%" PRIu64 " leaves less than %u MiB of the %"
               PRIu64 " MiB available: using %" PRIu64 "\n",
               mb, RESERVE_MB, avail_mb, avail_mb - RESERVE_MB);
        mb = avail_mb - RESERVE_MB;
    }
    if (mb == 0) {
        mb = 1;
    }
    v = cmdline_get("workload.rate");
    atomic_store(&g_rate, v ? parse_rate(v) : 2000);
    v = cmdline_get("workload.report");
    if (v && atof(v) > 0) {
        report = atof(v);
    }
    v = cmdline_get("workload.seed");
    seed = v ? strtoull(v, NULL, 10) : (uint64_t)time(NULL);
    inline_w.rng = splitmix64(seed) | 1;
    v = cmdline_get("workload.stall_us");
    atomic_store(&g_stall_ns, (v ? strtoull(v, NULL, 10) : 50) * 1000);
    v = cmdline_get("workload.threads");
    if (v) {
        threaded = 1;
        threads_cfg = (unsigned)strtoul(v, NULL, 10);
        if (threads_cfg > MAX_THREADS) {
            threads_cfg = MAX_THREADS;
        }
    }
    v = cmdline_get("workload.pattern");
    if (v) {
        pat = pattern_parse(v, strcspn(v, " "));
        if (pat < 0) {
            printf("WARNING workload.pattern=%.*s unknown: using random-write\n",
                   (int)strcspn(v, " "), v);
            pat = PAT_RANDOM_WRITE;
        }
        threaded = 1;
    }

    npages = mb * 1024 * 1024 / PAGE_SIZE;
    nodes = interleave_over_nodes();
    printf("WORKLOAD mb=%" PRIu64 " pages=%" PRIu64 " rate=%s report=%.1fs "
           "mem_available=%" PRIu64 "MiB nodes=%d\n", mb, npages, rate_str(), report,
           avail_mb, nodes);
    clocksource(clk, sizeof(clk));
    printf("WORKLOAD threads=%u cpus=%ld pattern=%s stall_us=%" PRIu64 " clocksource=%s\n",
           threaded ? (threads_cfg ? threads_cfg : (unsigned)online_cpus()) : 0, online_cpus(),
           threaded ? pattern_names[pat] : "inline", atomic_load(&g_stall_ns) / 1000, clk);
    mem = mmap(NULL, npages * PAGE_SIZE, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    gens = calloc(npages, sizeof(*gens));
    if (mem == MAP_FAILED || !gens) {
        printf("WORKLOAD FAILED to allocate %" PRIu64 " MiB: %s\n", mb, strerror(errno));
        return 1;
    }

    start_t = now_s();
    set_rate(atomic_load(&g_rate));
    if (threaded) {
        /* Each worker fills its own slice (first touch on its own CPU). */
        set_pattern((enum pattern)pat);
        start_threads(threads_cfg ? threads_cfg : (unsigned)online_cpus(), 1);
        pthread_mutex_lock(&ctl_lock);
        while (filled < nworkers) {
            pthread_cond_wait(&ctl_cond, &ctl_lock);
        }
        pthread_mutex_unlock(&ctl_lock);
    } else {
        for (uint64_t i = 0; i < npages; i++) {
            write_page(i, 0);
        }
        stats_reset();
    }
    printf("READY %" PRIu64 "\n", npages);
    printf("WORKLOAD filled %" PRIu64 " MiB in %.2fs\n", mb, now_s() - start_t);
    fflush(stdout);

    set_rate(atomic_load(&g_rate));
    next_report = now_s() + report;
    for (;;) {
        struct pollfd pfd = { .fd = 0, .events = POLLIN };
        int timeout_ms = 10;
        double t = now_s();
        long rate = atomic_load(&g_rate);

        if (nworkers) {
            /* Threaded mode: the workers work, this thread serves the console. */
            timeout_ms = 100;
        } else if (rate == RATE_MAX) {
            /* Flat out for 10 ms, then look at the console. */
            double stop = t + 0.010;

            worker_sync(&inline_w);
            do {
                for (int i = 0; i < 64; i++) {
                    dirty_one();
                }
            } while (now_s() < stop);
            timeout_ms = 0;
        } else if (rate > 0) {
            double due = (t - rate_t0) * (double)rate - (double)rate_done;
            double stop = t + 0.020;   /* never more than 20 ms of work */

            worker_sync(&inline_w);
            if (due > (double)rate) {
                /* More than a second behind (e.g. a long pause while the
                 * VM was stopped or pages were fetched): drop the backlog. */
                rate_t0 = t;
                rate_done = 0;
                due = 0;
            }
            for (uint64_t n = 0; n < (uint64_t)due; n++) {
                dirty_one();
                rate_done++;
                if ((n & 63) == 63 && now_s() >= stop) {
                    break;
                }
            }
        } else {
            worker_sync(&inline_w);
            timeout_ms = 100;
        }

        if (poll(&pfd, 1, timeout_ms) > 0) {
            if (pfd.revents & POLLIN) {
                ssize_t r = read(0, buf + buflen, sizeof(buf) - 1 - buflen);

                if (r == 0) {
                    usleep(10000);  /* end of input: do not spin on it */
                } else if (r > 0) {
                    char *nl;

                    buflen += (size_t)r;
                    buf[buflen] = '\0';
                    while ((nl = strchr(buf, '\n')) || (nl = strchr(buf, '\r'))) {
                        *nl = '\0';
                        command(buf);
                        buflen -= (size_t)(nl + 1 - buf);
                        memmove(buf, nl + 1, buflen + 1);
                    }
                    if (buflen == sizeof(buf) - 1) {
                        buflen = 0; /* an overlong line: drop it */
                    }
                }
            } else if (pfd.revents & (POLLHUP | POLLERR | POLLNVAL)) {
                /* No console input any more: keep working, stop polling. */
                usleep(10000);
            }
        }
        if (now_s() >= next_report) {
            progress();
            next_report += report;
            if (next_report < now_s()) {
                next_report = now_s() + report;
            }
        }
    }
}
