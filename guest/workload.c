// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * postcopy-rs guest workload: the program the demo guest runs as its only
 * job (started by guest/init).  Built with `gcc -static -O2`.
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
 * 3. Dirties random pages at a fixed rate (each one: generation + 1, page
 *    rewritten, table updated) and prints a PROGRESS line periodically.
 * 4. Between batches it polls the console (stdin) with a short timeout, so
 *    dirtying never starves the reader.  Commands, one per line:
 *        verify     check EVERY page against the table; prints exactly
 *                   "VERIFY OK pages=<n>" or
 *                   "VERIFY FAIL page=<i> ... bad_pages=<n>"
 *                   and keeps running
 *        rate N     dirty N pages/s from now on (0: stop dirtying)
 *        stats      print a PROGRESS line now
 *        corrupt I  flip a bit in page I (to see the checker fail)
 *
 * Configuration, from the kernel command line (/proc/cmdline; the kernel
 * does not pass dotted parameters to init; the environment variable
 * WORKLOAD_CMDLINE replaces it, to try the program on a host):
 *        workload.mb=N      MiB to allocate (default: 80% of MemAvailable)
 *        workload.rate=N    pages/s to dirty (default 2000; 0: none;
 *                           "max": as fast as possible)
 *        workload.report=N  seconds between PROGRESS lines (default 2)
 *        workload.seed=N    seed of the random page choice
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
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

static uint64_t *mem;    /* npages pages */
static uint32_t *gens;   /* generation each page must hold */
static uint64_t npages;
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t rng_next(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
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

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
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

static long rate;              /* pages/s, 0 none, RATE_MAX flat out */
static double rate_t0;         /* rate accounting restarts here */
static uint64_t rate_done;     /* pages dirtied since rate_t0 */
static uint64_t dirtied;       /* pages dirtied in total */
static uint32_t gen_max;
static double start_t;
static uint64_t verifies;

/* "5000", "0" or "max" */
static const char *rate_str(void)
{
    static char buf[32];

    if (rate == RATE_MAX) {
        return "max";
    }
    snprintf(buf, sizeof(buf), "%ld", rate);
    return buf;
}

static void set_rate(long r)
{
    rate = r;
    rate_t0 = now_s();
    rate_done = 0;
}

static void progress(void)
{
    double t = now_s() - start_t;

    printf("PROGRESS t=%.0fs dirtied=%" PRIu64 " rate=%s/s gen_max=%" PRIu32
           " verifies=%" PRIu64 "\n",
           t, dirtied, rate_str(), gen_max, verifies);
    fflush(stdout);
}

static void verify(void)
{
    uint64_t bad = 0, first = UINT64_MAX;
    unsigned first_word = 0;
    double t0 = now_s();

    verifies++;
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
    printf("VERIFY took %.2fs\n", now_s() - t0);
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
        const char *v = line + 5;

        set_rate(strcmp(v, "max") == 0 ? RATE_MAX : strtol(v, NULL, 10));
        printf("RATE %s\n", rate_str());
        fflush(stdout);
    } else if (strncmp(line, "corrupt ", 8) == 0) {
        /* Self-test of the checker: flip one word of a page. */
        uint64_t idx = strtoull(line + 8, NULL, 10);

        if (idx < npages) {
            mem[idx * WORDS + WORDS - 1] ^= 1;
            printf("CORRUPTED page=%" PRIu64 "\n", idx);
        } else {
            printf("CORRUPT page %" PRIu64 " out of range\n", idx);
        }
        fflush(stdout);
    } else if (strcmp(line, "stats") == 0) {
        progress();
    } else {
        printf("UNKNOWN COMMAND '%s' (verify, rate N, stats, corrupt I)\n", line);
        fflush(stdout);
    }
}

static void dirty_one(void)
{
    uint64_t idx = rng_next() % npages;
    uint32_t g = gens[idx] + 1;

    write_page(idx, g);
    gens[idx] = g;
    if (g > gen_max) {
        gen_max = g;
    }
    dirtied++;
}

int main(void)
{
    FILE *f;
    const char *v;
    uint64_t avail_mb, mb;
    double report = 2.0, next_report;
    char buf[512];
    size_t buflen = 0;
    struct termios tio;
    int nodes;

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
    rate = v ? (strncmp(v, "max", 3) == 0 ? RATE_MAX : strtol(v, NULL, 10)) : 2000;
    v = cmdline_get("workload.report");
    if (v && atof(v) > 0) {
        report = atof(v);
    }
    v = cmdline_get("workload.seed");
    rng_state = splitmix64(v ? strtoull(v, NULL, 10) : (uint64_t)time(NULL)) | 1;

    npages = mb * 1024 * 1024 / PAGE_SIZE;
    nodes = interleave_over_nodes();
    printf("WORKLOAD mb=%" PRIu64 " pages=%" PRIu64 " rate=%s report=%.1fs "
           "mem_available=%" PRIu64 "MiB nodes=%d\n", mb, npages, rate_str(), report,
           avail_mb, nodes);
    mem = mmap(NULL, npages * PAGE_SIZE, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    gens = calloc(npages, sizeof(*gens));
    if (mem == MAP_FAILED || !gens) {
        printf("WORKLOAD FAILED to allocate %" PRIu64 " MiB: %s\n", mb, strerror(errno));
        return 1;
    }

    start_t = now_s();
    for (uint64_t i = 0; i < npages; i++) {
        write_page(i, 0);
    }
    printf("READY %" PRIu64 "\n", npages);
    printf("WORKLOAD filled %" PRIu64 " MiB in %.2fs\n", mb, now_s() - start_t);
    fflush(stdout);

    set_rate(rate);
    next_report = now_s() + report;
    for (;;) {
        struct pollfd pfd = { .fd = 0, .events = POLLIN };
        int timeout_ms = 10;
        double t = now_s();

        if (rate == RATE_MAX) {
            /* Flat out for 10 ms, then look at the console. */
            double stop = t + 0.010;

            do {
                for (int i = 0; i < 64; i++) {
                    dirty_one();
                }
            } while (now_s() < stop);
            timeout_ms = 0;
        } else if (rate > 0) {
            double due = (t - rate_t0) * (double)rate - (double)rate_done;
            double stop = t + 0.020;   /* never more than 20 ms of work */

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
            timeout_ms = 100;
        }

        if (poll(&pfd, 1, timeout_ms) > 0) {
            if (pfd.revents & POLLIN) {
                ssize_t r = read(0, buf + buflen, sizeof(buf) - 1 - buflen);

                if (r > 0) {
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
                /* No console input any more: keep dirtying, stop polling. */
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
