/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Destination side through the C ABI, exactly as QEMU's C glue uses it:
 * page placement (postcopy_rs_place_page[s|_zero]) and the fault thread
 * (postcopy_rs_fault_thread_*), on a real userfaultfd with real faulting
 * threads, plus the same fault thread fed synthetic uffd_msg records
 * through a pipe.
 *
 * Under valgrind only the latter and the argument checks run: valgrind
 * (3.19, Debian 12) does not implement the userfaultfd syscall and returns
 * ENOSYS, so the program says so loudly and checks what it can (see
 * main()).  If a later valgrind has the syscall, the real part runs with
 * kernel-mode touches only: a thread blocked in a user-mode fault would
 * hold valgrind's big lock and starve the thread that must place the page.
 *
 * Every wait has a deadline and alarm() backs them all up, so a bug makes
 * the program fail, never hang.  When a toucher thread is stuck on a page
 * nobody will place, the program cannot join it: it reports and _exit()s.
 */
#define _GNU_SOURCE
/* The kernel's header first, as QEMU's postcopy-ram.c has it. */
#include <linux/userfaultfd.h>

#include "fake_qemu.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define HAVE_VALGRIND_H 1
#endif
#endif

enum {
    ST_RUNNING = POSTCOPY_RS_FAULT_THREAD_STATE_RUNNING,
    ST_PAUSED = POSTCOPY_RS_FAULT_THREAD_STATE_PAUSED,
    ST_EXITED = POSTCOPY_RS_FAULT_THREAD_STATE_EXITED,
};

#define PS 4096UL                /* host page size = target page size */
#define NPAGES 64                /* guest RAM in the block */
#define NEXTRA 4                 /* registered, but not guest RAM */
#define NTOUCHERS 4
#define BITS_PER_LONG (8 * sizeof(unsigned long))
#define WAIT_MS 10000            /* deadline of every wait */
#define ALARM_S 30               /* backstop for each phase */

/* ------------------------------------------------------------------ */
/* Small helpers. */

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

    nanosleep(&ts, NULL);
}

/* Poll `cond` every millisecond until it holds or `ms` pass; its value. */
#define WAIT_UNTIL(cond, ms)                                             \
    ({                                                                   \
        int64_t wu_deadline_ = now_ms() + (ms);                          \
        int wu_ok_;                                                      \
        while (!(wu_ok_ = !!(cond)) && now_ms() < wu_deadline_) {        \
            sleep_ms(1);                                                 \
        }                                                                \
        wu_ok_;                                                          \
    })

/* Give up: threads may be blocked on pages nobody will place. */
static void __attribute__((noreturn)) die(const char *why)
{
    fprintf(stderr, "test_dest: FATAL: %s (%d check(s) failed before)\n",
            why, test_failures);
    fflush(stdout);
    fflush(stderr);
    _exit(1);
}

#define REQUIRE(cond)                                                    \
    do {                                                                 \
        if (!(cond)) {                                                   \
            die("requirement failed at " __FILE__ ":"                    \
                STRINGIFY(__LINE__) ": " #cond);                         \
        }                                                                \
    } while (0)
#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

/* What is running, for the alarm message; each phase re-arms the alarm. */
static const char *volatile phase_name = "start";

static void on_alarm(int sig)
{
    static const char a[] = "test_dest: FATAL: timed out (alarm) in phase '";
    static const char b[] = "': something hangs\n";
    const char *n = phase_name;

    (void)sig;
    if (write(2, a, sizeof(a) - 1) < 0 || write(2, n, strlen(n)) < 0 ||
        write(2, b, sizeof(b) - 1) < 0) {
        /* nothing more to do */
    }
    _exit(2);
}

static void phase(const char *name)
{
    phase_name = name;
    alarm(ALARM_S);
}

static uint8_t pattern_byte(unsigned long page, unsigned long i)
{
    return (uint8_t)(page * 131 + i * 7 + (i >> 8) + 1);
}

static void fill_pattern(uint8_t *buf, unsigned long page)
{
    for (unsigned long i = 0; i < PS; i++) {
        buf[i] = pattern_byte(page, i);
    }
}

static int is_pattern(const uint8_t *p, unsigned long page)
{
    for (unsigned long i = 0; i < PS; i++) {
        if (p[i] != pattern_byte(page, i)) {
            return 0;
        }
    }
    return 1;
}

static int is_zero(const uint8_t *p)
{
    for (unsigned long i = 0; i < PS; i++) {
        if (p[i]) {
            return 0;
        }
    }
    return 1;
}

static int test_bit_atomic(unsigned long *map, unsigned long nr)
{
    return (__atomic_load_n(&map[nr / BITS_PER_LONG], __ATOMIC_ACQUIRE) >>
            (nr % BITS_PER_LONG)) & 1;
}

static void set_bit_atomic(unsigned long *map, unsigned long nr)
{
    __atomic_fetch_or(&map[nr / BITS_PER_LONG], 1UL << (nr % BITS_PER_LONG),
                      __ATOMIC_RELEASE);
}

static int running_on_valgrind(void)
{
#ifdef HAVE_VALGRIND_H
    return RUNNING_ON_VALGRIND;
#else
    const char *p = getenv("LD_PRELOAD");

    return p && strstr(p, "vgpreload");
#endif
}

static PostcopyRsStats stats(void)
{
    PostcopyRsStats st;

    memset(&st, 0, sizeof(st));
    CHECK(postcopy_rs_get_stats(&st, sizeof(st)) == (int)sizeof(st));
    return st;
}

static PostcopyRsLatency latency(void)
{
    PostcopyRsLatency l;
    uint64_t sum = 0;

    memset(&l, 0, sizeof(l));
    CHECK(postcopy_rs_get_latency(&l, sizeof(l)) == (int)sizeof(l));
    for (int i = 0; i < POSTCOPY_RS_LATENCY_BUCKETS; i++) {
        sum += l.buckets[i];
    }
    CHECK(l.count == sum);
    CHECK(l.p50_us <= l.p99_us && l.p99_us <= l.max_us);
    return l;
}

/* ------------------------------------------------------------------ */
/* The log sink: called from any thread, including the fault thread. */

static atomic_int log_errors, log_warnings;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char log_last_error[512];

static void log_sink(PostcopyRsLogLevel level, const char *msg)
{
    if (level == POSTCOPY_RS_LOG_LEVEL_ERROR) {
        atomic_fetch_add(&log_errors, 1);
        pthread_mutex_lock(&log_lock);
        snprintf(log_last_error, sizeof(log_last_error), "%s", msg);
        pthread_mutex_unlock(&log_lock);
    } else if (level == POSTCOPY_RS_LOG_LEVEL_WARNING) {
        atomic_fetch_add(&log_warnings, 1);
    }
    /* Shown by the Rust driver only when the program fails. */
    fprintf(stderr, "[postcopy-rs log %d] %s\n", (int)level, msg);
}

static int last_error_contains(const char *needle)
{
    int r;

    pthread_mutex_lock(&log_lock);
    r = strstr(log_last_error, needle) != NULL;
    pthread_mutex_unlock(&log_lock);
    return r;
}

/* ------------------------------------------------------------------ */
/* The embedder's fault-thread callbacks (QEMU's side of the boundary). */

static char fake_ramblock;         /* the block handle: QEMU's RAMBlock * */

struct fctx {
    PostcopyRsBlockView view;      /* what resolve() hands out */
    int req_wr;                    /* request_page() writes offsets here */
    atomic_int thread_enter, thread_exit;
    atomic_int faults, request_attempts, requests;
    atomic_int paused, resumed;
    atomic_int fatal_count, fatal_err;
    _Atomic uint64_t fatal_addr;
    atomic_int fail_requests;      /* fail that many next requests, -EIO */
    atomic_int bad_args;           /* callback arguments that made no sense */
    atomic_int req_per_page[NPAGES];
    atomic_int tids[NTOUCHERS + 1]; /* fault tids must be one of these */
    int ntids;                      /* 0: do not check */
    atomic_int shared_faults, shared_fd;
    _Atomic uint64_t shared_addr;
    atomic_int pause_now, pause_checks; /* check_pause() */
    atomic_int thread_tid;              /* the fault thread's, for its name */
    const char *name;                   /* cfg.name to start it with */
};

static void cb_thread_enter(void *opaque)
{
    struct fctx *c = opaque;

    atomic_store(&c->thread_tid, (int)gettid());
    atomic_fetch_add(&c->thread_enter, 1);
}

static void cb_thread_exit(void *opaque)
{
    atomic_fetch_add(&((struct fctx *)opaque)->thread_exit, 1);
}

static int cb_resolve(void *opaque, uint64_t addr, PostcopyRsFaultTarget *out)
{
    struct fctx *c = opaque;
    uint64_t host = (uint64_t)(uintptr_t)c->view.host;

    if (addr < host || addr - host >= c->view.used_length) {
        return -ERANGE;
    }
    out->block = &fake_ramblock;
    out->view = c->view;
    return 0;
}

static void cb_fault(void *opaque, void *block, uint64_t addr, uint32_t tid)
{
    struct fctx *c = opaque;
    uint64_t host = (uint64_t)(uintptr_t)c->view.host;
    int known = c->ntids == 0;

    for (int i = 0; i < c->ntids; i++) {
        known |= (uint32_t)atomic_load(&c->tids[i]) == tid;
    }
    if (block != &fake_ramblock || addr < host ||
        addr - host >= c->view.used_length || !known) {
        fprintf(stderr, "fault callback: block %p addr %#llx tid %u\n",
                block, (unsigned long long)addr, tid);
        atomic_fetch_add(&c->bad_args, 1);
    }
    atomic_fetch_add(&c->faults, 1);
}

static int cb_request_page(void *opaque, void *block, uint64_t offset,
                           uint64_t addr)
{
    struct fctx *c = opaque;
    uint64_t host = (uint64_t)(uintptr_t)c->view.host;
    int fail;

    atomic_fetch_add(&c->request_attempts, 1);
    fail = atomic_load(&c->fail_requests);
    while (fail > 0 &&
           !atomic_compare_exchange_weak(&c->fail_requests, &fail, fail - 1)) {
    }
    if (fail > 0) {
        return -EIO;
    }
    if (block != &fake_ramblock || offset % c->view.page_size ||
        offset >= c->view.used_length || addr < host + offset ||
        addr >= host + offset + c->view.page_size) {
        fprintf(stderr, "request_page: block %p offset %#llx addr %#llx\n",
                block, (unsigned long long)offset, (unsigned long long)addr);
        atomic_fetch_add(&c->bad_args, 1);
        return -EINVAL;
    }
    if (offset / PS < NPAGES) {
        atomic_fetch_add(&c->req_per_page[offset / PS], 1);
    }
    if (write(c->req_wr, &offset, sizeof(offset)) != sizeof(offset)) {
        atomic_fetch_add(&c->bad_args, 1);
        return -EIO;
    }
    atomic_fetch_add(&c->requests, 1);   /* after the write: see waits */
    return 0;
}

/*
 * The range request (pre-paging): writes each page's offset to the pipe,
 * as if one MIG_RP_MSG_REQ_PAGES of `len` bytes went out, and counts the
 * messages; the faulting page must head the range.
 */
static atomic_int range_messages;

static int64_t cb_request_range(void *opaque, void *block, uint64_t offset,
                                uint64_t len, uint64_t addr)
{
    struct fctx *c = opaque;
    uint64_t host = (uint64_t)(uintptr_t)c->view.host;

    if (block != &fake_ramblock || offset % c->view.page_size ||
        len % c->view.page_size || len < 2 * c->view.page_size ||
        offset + len > c->view.used_length || addr < host + offset ||
        addr >= host + offset + c->view.page_size) {
        fprintf(stderr, "request_range: offset %#llx len %#llx addr %#llx\n",
                (unsigned long long)offset, (unsigned long long)len,
                (unsigned long long)addr);
        atomic_fetch_add(&c->bad_args, 1);
        return -EINVAL;
    }
    for (uint64_t o = offset; o < offset + len; o += c->view.page_size) {
        if (write(c->req_wr, &o, sizeof(o)) != sizeof(o)) {
            atomic_fetch_add(&c->bad_args, 1);
            return -EIO;
        }
    }
    atomic_fetch_add(&range_messages, 1);
    return 0;
}

static PostcopyRsPrepageStats prepage_stats(void)
{
    PostcopyRsPrepageStats s;

    REQUIRE(postcopy_rs_get_prepage_stats(&s, sizeof(s)) == (int)sizeof(s));
    return s;
}

static void cb_paused(void *opaque)
{
    atomic_fetch_add(&((struct fctx *)opaque)->paused, 1);
}

static void cb_resumed(void *opaque)
{
    atomic_fetch_add(&((struct fctx *)opaque)->resumed, 1);
}

static void cb_fatal(void *opaque, int err, uint64_t addr)
{
    struct fctx *c = opaque;

    atomic_store(&c->fatal_err, err);
    atomic_store(&c->fatal_addr, addr);
    atomic_fetch_add(&c->fatal_count, 1);
}

static int cb_shared_fault(void *opaque, int fd, void *msg)
{
    struct fctx *c = opaque;
    struct uffd_msg m;

    memcpy(&m, msg, sizeof(m));
    atomic_store(&c->shared_fd, fd);
    atomic_store(&c->shared_addr, (uint64_t)m.arg.pagefault.address);
    atomic_fetch_add(&c->shared_faults, 1);
    return 0;
}

static bool cb_check_pause(void *opaque)
{
    struct fctx *c = opaque;

    atomic_fetch_add(&c->pause_checks, 1);
    return atomic_load(&c->pause_now) != 0;
}

static PostcopyRsFaultOps full_ops(struct fctx *c)
{
    PostcopyRsFaultOps ops = {
        .opaque = c,
        .thread_enter = cb_thread_enter,
        .thread_exit = cb_thread_exit,
        .resolve = cb_resolve,
        .fault = cb_fault,
        .request_page = cb_request_page,
        .paused = cb_paused,
        .resumed = cb_resumed,
        .fatal = cb_fatal,
        .shared_fault = cb_shared_fault,
        .check_pause = cb_check_pause,
    };

    return ops;
}

/* The name the kernel has for thread `tid` of this process. */
static int thread_name_is(int tid, const char *want)
{
    char path[64], name[64] = "";
    FILE *f;

    snprintf(path, sizeof(path), "/proc/self/task/%d/comm", tid);
    f = fopen(path, "r");
    if (!f) {
        return 0;
    }
    if (!fgets(name, sizeof(name), f)) {
        name[0] = '\0';
    }
    fclose(f);
    name[strcspn(name, "\n")] = '\0';
    if (strcmp(name, want) != 0) {
        fprintf(stderr, "thread %d is named '%s', not '%s'\n", tid, name,
                want);
        return 0;
    }
    return 1;
}

/* Start a fault thread on `uffd` and check the handshake and its name. */
static PostcopyRsFaultThread *start_thread(int uffd, struct fctx *c)
{
    PostcopyRsFaultConfig cfg = {
        .uffd = uffd,
        .nr_shared_fds = 0,
        .shared_fds = NULL,
        .ops = full_ops(c),
        .name = c->name,
    };
    PostcopyRsFaultThread *t = NULL;

    REQUIRE(postcopy_rs_fault_thread_start(&cfg, &t) == 0);
    REQUIRE(t != NULL);
    /* Start returns once the thread runs, thread_enter first. */
    CHECK(atomic_load(&c->thread_enter) == 1);
    CHECK(atomic_load(&c->thread_exit) == 0);
    CHECK(postcopy_rs_fault_thread_state(t) == ST_RUNNING);
    CHECK(thread_name_is(atomic_load(&c->thread_tid),
                         c->name ? c->name : "fault-default"));
    return t;
}

static void make_pipe(int p[2])
{
    REQUIRE(pipe2(p, O_CLOEXEC) == 0);
    REQUIRE(fcntl(p[0], F_SETFL, O_NONBLOCK) == 0);
}

/* Read every offset pending on the request pipe into `out`; the count. */
static int drain_requests(int rd, uint64_t *out, int max)
{
    int n = 0;

    while (n < max) {
        uint64_t off;
        ssize_t r = read(rd, &off, sizeof(off));

        if (r != sizeof(off)) {
            REQUIRE(r < 0 && (errno == EAGAIN || errno == EINTR));
            break;
        }
        out[n++] = off;
    }
    return n;
}

/* ------------------------------------------------------------------ */
/* The real userfaultfd: guest RAM, touchers, and the "source". */

static int uffd = -1;
static uint8_t *ram;               /* NPAGES guest pages + NEXTRA others */
static unsigned long rmap[2];      /* receivedmap; word 1 is a guard */
static PostcopyRsBlockView view;
static int kernel_touch_only;      /* under valgrind: see touch() */
static int uffd_errno;             /* why userfaultfd() failed */

static uint8_t *page_addr(unsigned long page)
{
    return ram + page * PS;
}

/*
 * The main thread is the source: if it touched a missing page it would
 * wait for itself.  So it reads guest pages only through these, which
 * first ask mincore() (no fault) whether the page is there.
 */
static int present(unsigned long page)
{
    unsigned char vec = 0;

    REQUIRE(mincore(page_addr(page), PS, &vec) == 0);
    if (!(vec & 1)) {
        fprintf(stderr, "page %lu is not present\n", page);
    }
    return vec & 1;
}

static int main_is_pattern(unsigned long page)
{
    return present(page) && is_pattern(page_addr(page), page);
}

static int main_is_zero(unsigned long page)
{
    return present(page) && is_zero(page_addr(page));
}

static int main_byte_is(unsigned long page, unsigned long off, uint8_t val)
{
    return present(page) && page_addr(page)[off] == val;
}

/* Answer every request on `rd` with the page's pattern until
 * `*done >= target`.  Returns 1, or 0 at the deadline. */
static int serve_until(int rd, atomic_int *done, int target, int ms,
                       int *served)
{
    int64_t deadline = now_ms() + ms;
    static uint8_t src[PS] __attribute__((aligned(4096)));

    while (atomic_load(done) < target) {
        struct pollfd pfd = { .fd = rd, .events = POLLIN };
        uint64_t offs[64];
        int n;

        if (now_ms() >= deadline) {
            return 0;
        }
        if (poll(&pfd, 1, 10) < 0 && errno != EINTR) {
            die("poll on the request pipe");
        }
        n = drain_requests(rd, offs, 64);
        for (int i = 0; i < n; i++) {
            CHECK(offs[i] % PS == 0 && offs[i] < NPAGES * PS);
            if (offs[i] % PS || offs[i] >= NPAGES * PS) {
                continue;
            }
            fill_pattern(src, offs[i] / PS);
            CHECK(postcopy_rs_place_page(uffd, &view, ram + offs[i], src) == 0);
            if (served) {
                (*served)++;
            }
        }
    }
    return 1;
}

enum touch_kind {
    TOUCH_READ,     /* a plain load faults in user mode */
    TOUCH_KERNEL,   /* the kernel reads it (write() to a pipe): like KVM */
    TOUCH_WRITE,    /* a store first: a write fault; byte WRITE_OFF changes */
};
#define WRITE_OFF 100
#define WRITE_VAL 0xA5

struct toucher {
    pthread_t th;
    struct fctx *ctx;
    int slot;                       /* index in ctx->tids */
    int npages;
    unsigned long pages[16];
    enum touch_kind kind[16];
    int expect_zero;
    atomic_int *go, *done;
    int bad;                        /* pages with the wrong content */
};

static void touch(uint8_t *p, enum touch_kind kind, uint8_t *copy)
{
    if (kernel_touch_only && kind == TOUCH_READ) {
        kind = TOUCH_KERNEL;
    }
    switch (kind) {
    case TOUCH_READ:
        (void)*(volatile uint8_t *)(p + PS / 2);
        memcpy(copy, p, PS);
        break;
    case TOUCH_WRITE:
        *(volatile uint8_t *)(p + WRITE_OFF) = WRITE_VAL;
        memcpy(copy, p, PS);
        break;
    case TOUCH_KERNEL: {
        int fds[2];

        REQUIRE(pipe(fds) == 0);
        /* The kernel's copy_from_user faults on the missing page. */
        REQUIRE(write(fds[1], p, PS) == (ssize_t)PS);
        REQUIRE(read(fds[0], copy, PS) == (ssize_t)PS);
        close(fds[0]);
        close(fds[1]);
        break;
    }
    }
}

static void *toucher_main(void *arg)
{
    struct toucher *t = arg;
    uint8_t *copy = malloc(PS);

    REQUIRE(copy);
    atomic_store(&t->ctx->tids[t->slot], (int)gettid());
    while (!atomic_load(t->go)) {
        sched_yield();
    }
    for (int i = 0; i < t->npages; i++) {
        unsigned long pg = t->pages[i];
        int ok;

        touch(page_addr(pg), t->kind[i], copy);
        if (t->expect_zero) {
            ok = is_zero(copy);
        } else if (t->kind[i] == TOUCH_WRITE) {
            ok = copy[WRITE_OFF] == WRITE_VAL;
            copy[WRITE_OFF] = pattern_byte(pg, WRITE_OFF);
            ok = ok && is_pattern(copy, pg);
        } else {
            ok = is_pattern(copy, pg);
        }
        if (!ok) {
            fprintf(stderr, "toucher %d: page %lu has the wrong content\n",
                    t->slot, pg);
            t->bad++;
        }
    }
    free(copy);
    atomic_fetch_add(t->done, 1);
    return NULL;
}

static void start_toucher(struct toucher *t)
{
    REQUIRE(pthread_create(&t->th, NULL, toucher_main, t) == 0);
}

/* Join a toucher that has signalled `done` (so cannot block). */
static void join_toucher(struct toucher *t)
{
    REQUIRE(pthread_join(t->th, NULL) == 0);
    CHECK(t->bad == 0);
}

/* One toucher on one page, started at once. */
static void touch_one(struct toucher *t, struct fctx *c, unsigned long page,
                      atomic_int *go, atomic_int *done, int expect_zero)
{
    memset(t, 0, sizeof(*t));
    t->ctx = c;
    t->slot = NTOUCHERS;
    t->npages = 1;
    t->pages[0] = page;
    t->kind[0] = TOUCH_READ;
    t->expect_zero = expect_zero;
    t->go = go;
    t->done = done;
    atomic_store(go, 1);
    start_toucher(t);
}

/* 4 threads fault concurrently, some on the same pages; the main thread is
 * the source and answers each request with postcopy_rs_place_page(). */
static void test_concurrent_faults(struct fctx *c, int req_rd)
{
    struct toucher t[NTOUCHERS];
    atomic_int go = 0, done = 0;
    int touched[NPAGES] = { 0 };
    int distinct = 0, served = 0;
    PostcopyRsStats before = stats(), after;
    PostcopyRsLatency lat_before = latency();

    memset(t, 0, sizeof(t));
    for (int i = 0; i < NTOUCHERS; i++) {
        t[i].ctx = c;
        t[i].slot = i;
        t[i].go = &go;
        t[i].done = &done;
        /* Six private pages each (pages 0..23)... */
        for (int j = 0; j < 6; j++) {
            t[i].pages[t[i].npages] = (unsigned long)(i * 6 + j);
            /* threads 2 and 3 fault from the kernel, as KVM does */
            t[i].kind[t[i].npages++] = i >= 2 ? TOUCH_KERNEL : TOUCH_READ;
        }
        /* ...and four pages all of them touch (24..27), in rotated order. */
        for (int j = 0; j < 4; j++) {
            t[i].pages[t[i].npages] = (unsigned long)(24 + (i + j) % 4);
            t[i].kind[t[i].npages++] = i == 3 ? TOUCH_KERNEL : TOUCH_READ;
        }
    }
    /* Thread 1 writes page 32 before anything read it. */
    t[1].pages[t[1].npages] = 32;
    t[1].kind[t[1].npages++] = TOUCH_WRITE;
    c->ntids = NTOUCHERS;

    for (int i = 0; i < NTOUCHERS; i++) {
        for (int j = 0; j < t[i].npages; j++) {
            touched[t[i].pages[j]] = 1;
        }
        start_toucher(&t[i]);
    }
    REQUIRE(WAIT_UNTIL(atomic_load(&c->tids[NTOUCHERS - 1]) != 0 &&
                       atomic_load(&c->tids[0]) != 0, WAIT_MS));
    atomic_store(&go, 1);
    if (!serve_until(req_rd, &done, NTOUCHERS, WAIT_MS, &served)) {
        die("concurrent faults: the touchers did not finish");
    }
    for (int i = 0; i < NTOUCHERS; i++) {
        join_toucher(&t[i]);
    }
    for (int p = 0; p < NPAGES; p++) {
        distinct += touched[p];
    }
    /*
     * A toucher can finish before the fault thread has returned from the
     * request_page() that got its page, or handled the other messages of
     * the same read.  No new message can come (the kernel drops unread
     * ones when it wakes their thread), so wait until every message read
     * was either requested or de-duplicated.
     */
    CHECK(WAIT_UNTIL(({
        PostcopyRsStats s_ = stats();
        s_.faults_read - before.faults_read ==
            s_.pages_requested - before.pages_requested +
            s_.requests_deduped - before.requests_deduped &&
            s_.faults_read - before.faults_read ==
            (uint64_t)atomic_load(&c->faults) &&
            atomic_load(&c->requests) == distinct;
    }), WAIT_MS));

    for (int p = 0; p < NPAGES; p++) {
        /* Each page requested at most once: exactly once if touched. */
        CHECK(atomic_load(&c->req_per_page[p]) == touched[p]);
        CHECK(test_bit_atomic(rmap, p) == touched[p]);
    }
    CHECK(rmap[1] == 0);
    CHECK(served == distinct);
    CHECK(atomic_load(&c->requests) == distinct);
    /* One fault per toucher that found a page missing: at least one per
     * page, never more than the touches. */
    CHECK(atomic_load(&c->faults) >= distinct);
    CHECK(atomic_load(&c->faults) <= NTOUCHERS * 10 + 1);
    CHECK(atomic_load(&c->bad_args) == 0);
    CHECK(atomic_load(&c->thread_enter) == 1);
    CHECK(atomic_load(&c->paused) == 0);
    CHECK(atomic_load(&c->fatal_count) == 0);

    /* What the touchers saw is what memory holds. */
    for (int p = 0; p < NPAGES; p++) {
        if (!touched[p] || p == 32) {
            continue;
        }
        CHECK(main_is_pattern(p));
    }
    CHECK(main_byte_is(32, WRITE_OFF, WRITE_VAL));

    after = stats();
    CHECK(after.pages_requested - before.pages_requested == (uint64_t)distinct);
    CHECK(after.pages_placed - before.pages_placed == (uint64_t)distinct);
    CHECK(after.faults_read - before.faults_read ==
          (uint64_t)atomic_load(&c->faults));
    CHECK(after.faults_read - before.faults_read ==
          after.pages_requested - before.pages_requested +
          after.requests_deduped - before.requests_deduped);
    /* One latency sample per page: its first fault, resolved by its
     * placement. */
    CHECK(latency().count - lat_before.count == (uint64_t)distinct);
    c->ntids = 0;
}

static void test_zero_and_eexist(void)
{
    static uint8_t src[4 * PS] __attribute__((aligned(4096)));
    PostcopyRsStats before = stats(), after;
    uint8_t *p40 = page_addr(40), *p32 = page_addr(32);

    /* A zero page on an untouched page: placed, no fault. */
    CHECK(!test_bit_atomic(rmap, 40));
    CHECK(postcopy_rs_place_page_zero(uffd, &view, p40) == 0);
    CHECK(test_bit_atomic(rmap, 40));
    CHECK(main_is_zero(40));
    after = stats();
    CHECK(after.zero_pages_placed - before.zero_pages_placed == 1);

    /* Placing onto a present page fails with -EEXIST, as in QEMU's own
     * placement, and leaves memory unchanged. */
    before = stats();
    fill_pattern(src, 40);
    CHECK(postcopy_rs_place_page(uffd, &view, p40, src) == -EEXIST);
    CHECK(main_is_zero(40));
    CHECK(postcopy_rs_place_page_zero(uffd, &view, p40) == -EEXIST);
    CHECK(main_is_zero(40));
    /* ...and a guest write since is not undone. */
    fill_pattern(src, 32);
    CHECK(postcopy_rs_place_page(uffd, &view, p32, src) == -EEXIST);
    CHECK(main_byte_is(32, WRITE_OFF, WRITE_VAL));
    memset(src, 0xEE, PS);
    CHECK(postcopy_rs_place_page(uffd, &view, page_addr(0), src) == -EEXIST);
    CHECK(main_is_pattern(0));
    after = stats();
    CHECK(after.eexist - before.eexist == 4);
    CHECK(after.pages_placed == before.pages_placed);
}

static void test_place_pages(void)
{
    static uint8_t src[4 * PS] __attribute__((aligned(4096)));
    PostcopyRsStats before, after;

    /* Four contiguous pages, one call. */
    for (int i = 0; i < 4; i++) {
        fill_pattern(src + i * PS, 44 + i);
    }
    before = stats();
    CHECK(postcopy_rs_place_pages(uffd, &view, page_addr(44), src, 4) == 0);
    after = stats();
    for (int i = 0; i < 4; i++) {
        CHECK(test_bit_atomic(rmap, 44 + i));
        CHECK(main_is_pattern(44 + i));
    }
    CHECK(after.place_ioctls - before.place_ioctls == 1);

    /* Four pages whose third is already there: the kernel stops at it
     * (partial copy), which fails with -EEXIST; the two before it are
     * placed and received, the fourth is left missing. */
    CHECK(postcopy_rs_place_page_zero(uffd, &view, page_addr(50)) == 0);
    for (int i = 0; i < 4; i++) {
        fill_pattern(src + i * PS, 48 + i);
    }
    CHECK(postcopy_rs_place_pages(uffd, &view, page_addr(48), src, 4) ==
          -EEXIST);
    CHECK(main_is_pattern(48));
    CHECK(main_is_pattern(49));
    CHECK(main_is_zero(50));
    for (int i = 48; i < 51; i++) {
        CHECK(test_bit_atomic(rmap, i));
    }
    CHECK(!test_bit_atomic(rmap, 51));
    CHECK(postcopy_rs_place_page(uffd, &view, page_addr(51), src + 3 * PS) ==
          0);
    CHECK(main_is_pattern(51));
    CHECK(test_bit_atomic(rmap, 51));

    /* A run that crosses the block's end is refused whole. */
    CHECK(postcopy_rs_place_pages(uffd, &view, page_addr(62), src, 4) ==
          -ERANGE);
    CHECK(!test_bit_atomic(rmap, 62) && !test_bit_atomic(rmap, 63));
    CHECK(postcopy_rs_place_pages(uffd, &view, page_addr(62), src, 0) < 0);
    CHECK(!test_bit_atomic(rmap, 62));
    CHECK(rmap[1] == 0);
}

/* Requests fail twice: the thread pauses, each resume retries, and the
 * third attempt gets the page to the toucher. */
static void test_pause_resume(struct fctx *c, PostcopyRsFaultThread *t,
                              int req_rd)
{
    struct toucher tt;
    atomic_int go = 0, done = 0;
    int warnings = atomic_load(&log_warnings);
    int attempts = atomic_load(&c->request_attempts);

    atomic_store(&c->fail_requests, 2);
    touch_one(&tt, c, 52, &go, &done, 0);

    REQUIRE(WAIT_UNTIL(postcopy_rs_fault_thread_state(t) == ST_PAUSED,
                       WAIT_MS));
    CHECK(atomic_load(&c->paused) == 1);
    CHECK(atomic_load(&c->resumed) == 0);
    CHECK(atomic_load(&c->request_attempts) == attempts + 1);
    CHECK(atomic_load(&log_warnings) > warnings);
    /* Paused: nothing was requested, the toucher still waits. */
    sleep_ms(20);
    CHECK(atomic_load(&done) == 0);
    CHECK(postcopy_rs_fault_thread_state(t) == ST_PAUSED);

    CHECK(postcopy_rs_fault_thread_resume(t) == 0);
    REQUIRE(WAIT_UNTIL(atomic_load(&c->paused) == 2 &&
                       postcopy_rs_fault_thread_state(t) == ST_PAUSED,
                       WAIT_MS));
    CHECK(atomic_load(&c->resumed) == 1);
    CHECK(atomic_load(&c->request_attempts) == attempts + 2);

    CHECK(postcopy_rs_fault_thread_resume(t) == 0);
    if (!serve_until(req_rd, &done, 1, WAIT_MS, NULL)) {
        die("pause/resume: the toucher was not served after resume");
    }
    join_toucher(&tt);
    CHECK(atomic_load(&c->resumed) == 2);
    CHECK(atomic_load(&c->request_attempts) == attempts + 3);
    CHECK(atomic_load(&c->req_per_page[52]) == 1);
    CHECK(test_bit_atomic(rmap, 52));
    CHECK(postcopy_rs_fault_thread_state(t) == ST_RUNNING);
}

static void test_bad_input(void)
{
    static uint8_t src[PS] __attribute__((aligned(4096)));
    PostcopyRsBlockView v;
    uint8_t *p56 = page_addr(56);

    fill_pattern(src, 56);
    CHECK(postcopy_rs_place_page(uffd, NULL, p56, src) == -EFAULT);
    CHECK(postcopy_rs_place_page(uffd, &view, NULL, src) == -EFAULT);
    CHECK(postcopy_rs_place_page(uffd, &view, p56, NULL) == -EFAULT);
    CHECK(postcopy_rs_place_pages(uffd, NULL, p56, src, 1) == -EFAULT);
    CHECK(postcopy_rs_place_pages(uffd, &view, NULL, src, 1) == -EFAULT);
    CHECK(postcopy_rs_place_pages(uffd, &view, p56, NULL, 1) == -EFAULT);
    CHECK(postcopy_rs_place_page_zero(uffd, NULL, p56) == -EFAULT);
    CHECK(postcopy_rs_place_page_zero(uffd, &view, NULL) == -EFAULT);
    CHECK(postcopy_rs_get_latency(NULL, sizeof(PostcopyRsLatency)) == -EFAULT);
    {
        /* A caller that knows only the first field gets only that. */
        uint64_t first[2] = { ~0ULL, ~0ULL };

        int n = postcopy_rs_get_latency((PostcopyRsLatency *)first,
                                        sizeof(first[0]));

        CHECK(n == (int)sizeof(first[0]));
        CHECK(first[0] == latency().count && first[1] == ~0ULL);
    }
    v = view;
    v.host = NULL;
    CHECK(postcopy_rs_place_page(uffd, &v, p56, src) == -EFAULT);

    /* Misaligned. */
    CHECK(postcopy_rs_place_page(uffd, &view, p56 + 8, src) == -EINVAL);
    CHECK(postcopy_rs_place_page_zero(uffd, &view, p56 + 1) == -EINVAL);
    /* Outside the block: after its end (registered, but not this block's),
     * and before its start. */
    CHECK(postcopy_rs_place_page(uffd, &view, page_addr(NPAGES), src) ==
          -ERANGE);
    CHECK(postcopy_rs_place_page_zero(uffd, &view, page_addr(NPAGES)) ==
          -ERANGE);
    CHECK(postcopy_rs_place_page(uffd, &view, ram - PS, src) == -ERANGE);
    /* Impossible geometry. */
    v = view;
    v.page_size = 3 * 4096;
    CHECK(postcopy_rs_place_page(uffd, &v, p56, src) == -EINVAL);
    v = view;
    v.used_length = NPAGES * PS + 100;
    CHECK(postcopy_rs_place_page(uffd, &v, p56, src) == -EINVAL);
    v = view;
    v.target_page_bits = 40;
    CHECK(postcopy_rs_place_page(uffd, &v, p56, src) == -EINVAL);
    /* Not a userfaultfd. */
    CHECK(postcopy_rs_place_page(-1, &view, p56, src) < 0);
    CHECK(postcopy_rs_place_page_zero(-1, &view, p56) < 0);
    CHECK(postcopy_rs_place_pages(-1, &view, p56, src, 1) < 0);
    /* None of it placed anything or marked anything. */
    CHECK(!test_bit_atomic(rmap, 56));
    CHECK(rmap[1] == 0);
}

static void test_fault_thread_bad_input(void)
{
    struct fctx c;
    PostcopyRsFaultConfig cfg;
    PostcopyRsFaultThread *t = (PostcopyRsFaultThread *)&c; /* junk */

    memset(&c, 0, sizeof(c));
    memset(&cfg, 0, sizeof(cfg));
    cfg.ops = full_ops(&c);
    cfg.uffd = uffd >= 0 ? uffd : 0;

    CHECK(postcopy_rs_fault_thread_start(NULL, &t) == -EFAULT);
    CHECK(t == NULL);
    CHECK(postcopy_rs_fault_thread_start(&cfg, NULL) == -EFAULT);
    t = (PostcopyRsFaultThread *)&c;
    cfg.ops.resolve = NULL;
    CHECK(postcopy_rs_fault_thread_start(&cfg, &t) == -EFAULT);
    CHECK(t == NULL);
    cfg.ops = full_ops(&c);
    cfg.ops.request_page = NULL;
    t = (PostcopyRsFaultThread *)&c;
    CHECK(postcopy_rs_fault_thread_start(&cfg, &t) == -EFAULT);
    CHECK(t == NULL);
    cfg.ops = full_ops(&c);
    cfg.uffd = -1;
    t = (PostcopyRsFaultThread *)&c;
    CHECK(postcopy_rs_fault_thread_start(&cfg, &t) == -EBADF);
    CHECK(t == NULL);
    /* shared fds: a count without an array. */
    cfg.uffd = uffd >= 0 ? uffd : 0;
    cfg.nr_shared_fds = 1;
    cfg.shared_fds = NULL;
    t = (PostcopyRsFaultThread *)&c;
    CHECK(postcopy_rs_fault_thread_start(&cfg, &t) == -EFAULT);
    CHECK(t == NULL);
    /* No thread ever started. */
    CHECK(atomic_load(&c.thread_enter) == 0);

    CHECK(postcopy_rs_fault_thread_stop(NULL) == -EFAULT);
    CHECK(postcopy_rs_fault_thread_state(NULL) == -EFAULT);
    CHECK(postcopy_rs_fault_thread_resume(NULL) == -EFAULT);
    CHECK(postcopy_rs_fault_thread_set_shared_fds(NULL, NULL, 0) == -EFAULT);
}

/* The brief's main scenario, on fault thread #1. */
static void test_real_fault_thread(void)
{
    struct fctx c;
    int req[2];
    PostcopyRsFaultThread *t;

    memset(&c, 0, sizeof(c));
    make_pipe(req);
    c.view = view;
    c.req_wr = req[1];
    c.name = "mig/dst/fault";   /* QEMU 10.0's MIGRATION_THREAD_DST_FAULT */
    t = start_thread(uffd, &c);

    phase("concurrent faults");
    test_concurrent_faults(&c, req[0]);
    phase("zero and EEXIST");
    test_zero_and_eexist();
    phase("place_pages");
    test_place_pages();
    phase("pause/resume");
    test_pause_resume(&c, t, req[0]);

    phase("stop fault thread #1");
    CHECK(postcopy_rs_fault_thread_stop(t) == 0);
    /* A stopped handle is refused, not freed twice (ASan would see it). */
    CHECK(postcopy_rs_fault_thread_stop(t) == -ESRCH);
    CHECK(postcopy_rs_fault_thread_notify(t) == -ESRCH);
    CHECK(postcopy_rs_fault_thread_state(t) == -ESRCH);
    CHECK(atomic_load(&c.thread_exit) == 1);
    CHECK(atomic_load(&c.thread_enter) == 1);
    CHECK(atomic_load(&c.fatal_count) == 0);
    CHECK(atomic_load(&c.bad_args) == 0);
    close(req[0]);
    close(req[1]);
}

/* Fault thread #2: stop while paused returns promptly. */
static void test_real_stop_while_paused(void)
{
    struct fctx c;
    struct toucher tt;
    atomic_int go = 0, done = 0;
    int req[2];
    PostcopyRsFaultThread *t;
    int64_t t0;
    int rc;
    static uint8_t src[PS] __attribute__((aligned(4096)));

    memset(&c, 0, sizeof(c));
    make_pipe(req);
    c.view = view;
    c.req_wr = req[1];
    atomic_store(&c.fail_requests, 1000000);
    t = start_thread(uffd, &c);
    touch_one(&tt, &c, 60, &go, &done, 0);
    REQUIRE(WAIT_UNTIL(postcopy_rs_fault_thread_state(t) == ST_PAUSED,
                       WAIT_MS));
    t0 = now_ms();
    rc = postcopy_rs_fault_thread_stop(t);
    CHECK(rc == 0);
    CHECK(now_ms() - t0 < 2000);
    CHECK(atomic_load(&c.thread_exit) == 1);
    CHECK(atomic_load(&c.resumed) == 0);
    CHECK(atomic_load(&c.fatal_count) == 0);

    /* The toucher still waits; with no fault thread, place its page. */
    CHECK(atomic_load(&done) == 0);
    fill_pattern(src, 60);
    CHECK(postcopy_rs_place_page(uffd, &view, page_addr(60), src) == 0);
    REQUIRE(WAIT_UNTIL(atomic_load(&done) == 1, WAIT_MS));
    join_toucher(&tt);
    close(req[0]);
    close(req[1]);
}

/* Fault thread #3: a fault outside guest RAM ends the thread. */
static void test_real_fault_outside_ram(void)
{
    struct fctx c;
    struct toucher tt;
    atomic_int go = 0, done = 0;
    int req[2];
    PostcopyRsFaultThread *t;
    PostcopyRsBlockView all = view;

    memset(&c, 0, sizeof(c));
    make_pipe(req);
    c.view = view;
    c.req_wr = req[1];
    t = start_thread(uffd, &c);
    touch_one(&tt, &c, NPAGES + 1, &go, &done, 1);
    REQUIRE(WAIT_UNTIL(postcopy_rs_fault_thread_state(t) == ST_EXITED,
                       WAIT_MS));
    CHECK(atomic_load(&c.fatal_count) == 1);
    CHECK(atomic_load(&c.fatal_err) == -ERANGE);
    CHECK(atomic_load(&c.fatal_addr) ==
          (uint64_t)(uintptr_t)page_addr(NPAGES + 1));
    CHECK(atomic_load(&c.thread_exit) == 1);
    CHECK(atomic_load(&c.requests) == 0);
    CHECK(last_error_contains("guest RAM"));
    CHECK(postcopy_rs_fault_thread_stop(t) == -ERANGE);

    /* Release the toucher: a zero page through a view of all of it. */
    all.used_length = (NPAGES + NEXTRA) * PS;
    all.receivedmap = NULL;
    CHECK(postcopy_rs_place_page_zero(uffd, &all, page_addr(NPAGES + 1)) == 0);
    REQUIRE(WAIT_UNTIL(atomic_load(&done) == 1, WAIT_MS));
    join_toucher(&tt);
    CHECK(rmap[1] == 0);
    close(req[0]);
    close(req[1]);
}

/* Map guest RAM and fill the view; then open a real userfaultfd and
 * register the RAM with it.  Returns a reason if the userfaultfd cannot be
 * had (ram and view are set up anyway), NULL if it was. */
static const char *open_real_uffd(void)
{
    struct uffdio_api api = { .api = UFFD_API,
                              .features = UFFD_FEATURE_THREAD_ID };
    struct uffdio_register reg;
    static char why[256];

    ram = mmap(NULL, (NPAGES + NEXTRA) * PS, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(ram != MAP_FAILED);
    REQUIRE(madvise(ram, (NPAGES + NEXTRA) * PS, MADV_NOHUGEPAGE) == 0);
    view.host = ram;
    view.used_length = NPAGES * PS;
    view.page_size = PS;
    view.receivedmap = rmap;
    view.target_page_bits = 12;
    view.flags = POSTCOPY_RS_BLOCK_ZEROPAGE;

    uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (uffd < 0) {
        uffd_errno = errno;
        snprintf(why, sizeof(why), "userfaultfd() failed: %s",
                 strerror(uffd_errno));
        return why;
    }
    REQUIRE(ioctl(uffd, UFFDIO_API, &api) == 0);
    REQUIRE(api.features & UFFD_FEATURE_THREAD_ID);
    memset(&reg, 0, sizeof(reg));
    reg.range.start = (uint64_t)(uintptr_t)ram;
    reg.range.len = (NPAGES + NEXTRA) * PS;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    REQUIRE(ioctl(uffd, UFFDIO_REGISTER, &reg) == 0);
    REQUIRE(reg.ioctls & (1ULL << _UFFDIO_COPY));
    REQUIRE(reg.ioctls & (1ULL << _UFFDIO_ZEROPAGE));
    return NULL;
}

/* ------------------------------------------------------------------ */
/* The fault thread fed synthetic uffd_msg records through a pipe.  Runs
 * everywhere; it is all of the fault thread that valgrind can check. */

#define FAKE_TID 4242

static void send_msg(int fd, uint8_t event, uint64_t addr)
{
    struct uffd_msg m;

    memset(&m, 0, sizeof(m));
    m.event = event;
    m.arg.pagefault.address = addr;
    m.arg.pagefault.feat.ptid = FAKE_TID;
    REQUIRE(write(fd, &m, sizeof(m)) == (ssize_t)sizeof(m));
}

/*
 * A context whose one block is mem's 16 small pages, received per map, with
 * requests written to req_wr.
 */
static void fctx_init(struct fctx *c, uint8_t *mem, unsigned long *map,
                      int req_wr)
{
    memset(c, 0, sizeof(*c));
    c->view.host = mem;
    c->view.used_length = 16 * PS;
    c->view.page_size = PS;
    c->view.receivedmap = map;
    c->view.target_page_bits = 12;
    c->view.flags = POSTCOPY_RS_BLOCK_ZEROPAGE;
    c->req_wr = req_wr;
}

static void test_fake_fault_thread(void)
{
    uint8_t *mem = mmap(NULL, 16 * PS, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned long map[1] = { 0 };
    struct fctx c;
    int fake[2], req[2], shared[2];
    uint64_t offs[8], base;
    PostcopyRsFaultThread *t;
    PostcopyRsStats before = stats(), after;
    int64_t t0;

    REQUIRE(mem != MAP_FAILED);
    base = (uint64_t)(uintptr_t)mem;
    make_pipe(fake);
    make_pipe(req);
    make_pipe(shared);
    fctx_init(&c, mem, map, req[1]);
    c.ntids = 1;
    atomic_store(&c.tids[0], FAKE_TID);
    t = start_thread(fake[0], &c);

    /* An event that is not a page fault is ignored; a page faulted twice
     * is requested once; a page already received is not requested. */
    send_msg(fake[1], UFFD_EVENT_FORK, 0);
    set_bit_atomic(map, 2);
    send_msg(fake[1], UFFD_EVENT_PAGEFAULT, base + 1 * PS + 123);
    send_msg(fake[1], UFFD_EVENT_PAGEFAULT, base + 1 * PS);
    send_msg(fake[1], UFFD_EVENT_PAGEFAULT, base + 2 * PS);
    REQUIRE(WAIT_UNTIL(atomic_load(&c.faults) == 3, WAIT_MS));
    CHECK(WAIT_UNTIL(drain_requests(req[0], offs, 8) == 1, WAIT_MS));
    CHECK(offs[0] == PS);
    CHECK(atomic_load(&c.requests) == 1);
    after = stats();
    CHECK(after.events_ignored - before.events_ignored == 1);
    CHECK(after.requests_deduped - before.requests_deduped == 2);

    /* Two failed requests: pause, resume, pause, resume, success. */
    atomic_store(&c.fail_requests, 2);
    send_msg(fake[1], UFFD_EVENT_PAGEFAULT, base + 3 * PS);
    REQUIRE(WAIT_UNTIL(postcopy_rs_fault_thread_state(t) == ST_PAUSED,
                       WAIT_MS));
    CHECK(atomic_load(&c.paused) == 1);
    CHECK(postcopy_rs_fault_thread_resume(t) == 0);
    REQUIRE(WAIT_UNTIL(atomic_load(&c.paused) == 2 &&
                       postcopy_rs_fault_thread_state(t) == ST_PAUSED,
                       WAIT_MS));
    CHECK(postcopy_rs_fault_thread_resume(t) == 0);
    REQUIRE(WAIT_UNTIL(atomic_load(&c.requests) == 2, WAIT_MS));
    CHECK(atomic_load(&c.resumed) == 2);
    CHECK(atomic_load(&c.req_per_page[3]) == 1);
    CHECK(drain_requests(req[0], offs, 8) == 1 && offs[0] == 3 * PS);

    /* Resumes posted while running are remembered, like a semaphore. */
    CHECK(postcopy_rs_fault_thread_resume(t) == 0);
    CHECK(postcopy_rs_fault_thread_resume(t) == 0);
    atomic_store(&c.fail_requests, 2);
    send_msg(fake[1], UFFD_EVENT_PAGEFAULT, base + 4 * PS);
    REQUIRE(WAIT_UNTIL(atomic_load(&c.requests) == 3, WAIT_MS));
    CHECK(atomic_load(&c.paused) == 4);
    CHECK(atomic_load(&c.resumed) == 4);
    CHECK(postcopy_rs_fault_thread_state(t) == ST_RUNNING);

    /* A shared (vhost-user) userfaultfd goes to shared_fault. */
    CHECK(postcopy_rs_fault_thread_set_shared_fds(t, NULL, 1) == -EFAULT);
    CHECK(postcopy_rs_fault_thread_set_shared_fds(t, &shared[0], 1) == 0);
    send_msg(shared[1], UFFD_EVENT_PAGEFAULT, 0x123000);
    REQUIRE(WAIT_UNTIL(atomic_load(&c.shared_faults) == 1, WAIT_MS));
    CHECK(atomic_load(&c.shared_fd) == shared[0]);
    CHECK(atomic_load(&c.shared_addr) == 0x123000);
    CHECK(postcopy_rs_fault_thread_set_shared_fds(t, NULL, 0) == 0);

    /* A closed shared fd is refused at once (-EBADF), and the thread goes
     * on serving the main one. */
    {
        int bad = 1000;

        REQUIRE(fcntl(bad, F_GETFD) < 0);
        int errors = atomic_load(&log_errors);
        CHECK(postcopy_rs_fault_thread_set_shared_fds(t, &bad, 1) == -EBADF);
        CHECK(atomic_load(&log_errors) > errors);
        CHECK(last_error_contains("shared userfaultfd"));
        send_msg(fake[1], UFFD_EVENT_PAGEFAULT, base + 7 * PS);
        REQUIRE(WAIT_UNTIL(atomic_load(&c.requests) == 4, WAIT_MS));
        CHECK(postcopy_rs_fault_thread_state(t) == ST_RUNNING);
        CHECK(postcopy_rs_fault_thread_set_shared_fds(t, NULL, 0) == 0);
        CHECK(drain_requests(req[0], offs, 8) >= 1);
    }

    /* check_pause(): notify() wakes the thread to ask; it pauses with
     * faults pending, and serves them once resumed. */
    {
        int checks = atomic_load(&c.pause_checks);
        int paused = atomic_load(&c.paused);

        CHECK(checks > 0);          /* asked at every wake-up */
        CHECK(postcopy_rs_fault_thread_notify(NULL) == -EFAULT);
        atomic_store(&c.pause_now, 1);
        CHECK(postcopy_rs_fault_thread_notify(t) == 0);
        REQUIRE(WAIT_UNTIL(postcopy_rs_fault_thread_state(t) == ST_PAUSED,
                           WAIT_MS));
        CHECK(atomic_load(&c.paused) == paused + 1);
        CHECK(atomic_load(&c.pause_checks) > checks);
        send_msg(fake[1], UFFD_EVENT_PAGEFAULT, base + 6 * PS);
        sleep_ms(20);
        CHECK(atomic_load(&c.requests) == 4);   /* paused: not served */
        atomic_store(&c.pause_now, 0);
        CHECK(postcopy_rs_fault_thread_resume(t) == 0);
        REQUIRE(WAIT_UNTIL(atomic_load(&c.requests) == 5, WAIT_MS));
        CHECK(atomic_load(&c.req_per_page[6]) == 1);
        CHECK(postcopy_rs_fault_thread_state(t) == ST_RUNNING);
        CHECK(drain_requests(req[0], offs, 8) == 1 && offs[0] == 6 * PS);
    }

    /* Stop while paused: prompt, clean. */
    atomic_store(&c.fail_requests, 1000000);
    send_msg(fake[1], UFFD_EVENT_PAGEFAULT, base + 5 * PS);
    REQUIRE(WAIT_UNTIL(postcopy_rs_fault_thread_state(t) == ST_PAUSED,
                       WAIT_MS));
    t0 = now_ms();
    CHECK(postcopy_rs_fault_thread_stop(t) == 0);
    CHECK(now_ms() - t0 < 2000);
    CHECK(atomic_load(&c.thread_exit) == 1);
    CHECK(atomic_load(&c.fatal_count) == 0);
    CHECK(atomic_load(&c.bad_args) == 0);

    /* A fault outside guest RAM: fatal, exited, stop reports it. */
    {
        struct fctx keep = c;

        memset(&c, 0, sizeof(c));
        c.view = keep.view;
        c.req_wr = keep.req_wr;
        c.ntids = 1;
        atomic_store(&c.tids[0], FAKE_TID);
    }
    t = start_thread(fake[0], &c);
    send_msg(fake[1], UFFD_EVENT_PAGEFAULT, base + 16 * PS);
    REQUIRE(WAIT_UNTIL(postcopy_rs_fault_thread_state(t) == ST_EXITED,
                       WAIT_MS));
    CHECK(atomic_load(&c.fatal_count) == 1);
    CHECK(atomic_load(&c.fatal_err) == -ERANGE);
    CHECK(atomic_load(&c.fatal_addr) == base + 16 * PS);
    CHECK(atomic_load(&c.thread_exit) == 1);
    CHECK(atomic_load(&c.faults) == 0);
    CHECK(postcopy_rs_fault_thread_stop(t) == -ERANGE);

    close(fake[0]);
    close(fake[1]);
    close(req[0]);
    close(req[1]);
    close(shared[0]);
    close(shared[1]);
    munmap(mem, 16 * PS);
}

/*
 * Pre-paging over synthetic faults: sequential faults grow the window,
 * each request starts at the faulting page, a pre-paged page in flight
 * is asked for again once (alone) when a thread faults on it, and the
 * counters say so.
 */
static void test_fake_prepage(void)
{
    uint8_t *mem = mmap(NULL, 16 * PS, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned long map[1] = { 0 };
    struct fctx c;
    int fake[2], req[2];
    uint64_t offs[16], base;
    PostcopyRsFaultThread *t;
    PostcopyRsPrepageStats before = prepage_stats(), after;

    REQUIRE(mem != MAP_FAILED);
    base = (uint64_t)(uintptr_t)mem;
    make_pipe(fake);
    make_pipe(req);
    fctx_init(&c, mem, map, req[1]);
    t = start_thread(fake[0], &c);

    CHECK(postcopy_rs_fault_thread_set_prepage(NULL, 4, cb_request_range) ==
          -EFAULT);
    CHECK(postcopy_rs_fault_thread_set_prepage(
              t, POSTCOPY_RS_PREPAGE_MAX_PAGES + 1, cb_request_range) ==
          -EINVAL);
    CHECK(postcopy_rs_get_prepage_stats(NULL, sizeof(PostcopyRsPrepageStats)) == -EFAULT);
    CHECK(postcopy_rs_fault_thread_set_prepage(t, 4, cb_request_range) == 0);

    /* Page 0 starts a stream: one page, through request_page. */
    send_msg(fake[1], UFFD_EVENT_PAGEFAULT, base + 0 * PS + 8);
    REQUIRE(WAIT_UNTIL(atomic_load(&c.requests) == 1, WAIT_MS));
    CHECK(drain_requests(req[0], offs, 16) == 1 && offs[0] == 0);
    /* Page 1 continues it: pages 1 and 2 in one range. */
    send_msg(fake[1], UFFD_EVENT_PAGEFAULT, base + 1 * PS);
    REQUIRE(WAIT_UNTIL(atomic_load(&range_messages) == 1, WAIT_MS));
    CHECK(drain_requests(req[0], offs, 16) == 2 && offs[0] == PS &&
          offs[1] == 2 * PS);
    /* Page 2 is pre-paged and in flight: a hit, and asked for again,
     * alone (a source may not send all of a range); a second fault on it
     * is de-duplicated.  Page 3 then continues the stream with a window
     * of 4 (pages 3-6). */
    send_msg(fake[1], UFFD_EVENT_PAGEFAULT, base + 2 * PS);
    send_msg(fake[1], UFFD_EVENT_PAGEFAULT, base + 2 * PS);
    send_msg(fake[1], UFFD_EVENT_PAGEFAULT, base + 3 * PS);
    REQUIRE(WAIT_UNTIL(atomic_load(&range_messages) == 2, WAIT_MS));
    CHECK(drain_requests(req[0], offs, 16) == 5 && offs[0] == 2 * PS &&
          offs[1] == 3 * PS && offs[4] == 6 * PS);
    CHECK(atomic_load(&c.requests) == 2);
    after = prepage_stats();
    CHECK(after.requests - before.requests == 2);
    CHECK(after.pages - before.pages == 4);
    CHECK(after.hits_in_flight - before.hits_in_flight == 1);

    /* Off again: one page per request. */
    CHECK(postcopy_rs_fault_thread_set_prepage(t, 0, NULL) == 0);
    send_msg(fake[1], UFFD_EVENT_PAGEFAULT, base + 7 * PS);
    REQUIRE(WAIT_UNTIL(atomic_load(&c.requests) == 3, WAIT_MS));
    CHECK(drain_requests(req[0], offs, 16) == 1 && offs[0] == 7 * PS);
    CHECK(atomic_load(&range_messages) == 2);
    CHECK(atomic_load(&c.bad_args) == 0);

    CHECK(postcopy_rs_fault_thread_stop(t) == 0);
    /* A stopped handle: -ESRCH, nothing touched. */
    CHECK(postcopy_rs_fault_thread_set_prepage(t, 4, cb_request_range) ==
          -ESRCH);
    close(fake[0]);
    close(fake[1]);
    close(req[0]);
    close(req[1]);
    munmap(mem, 16 * PS);
}

/* ------------------------------------------------------------------ */

int main(void)
{
    const char *why;
    int under_vg = running_on_valgrind();

    signal(SIGALRM, on_alarm);
    phase("start");
    setvbuf(stdout, NULL, _IOLBF, 0);
    postcopy_rs_set_log_fn(log_sink, POSTCOPY_RS_LOG_LEVEL_INFO);

    phase("fake fault thread");
    test_fake_fault_thread();
    phase("pre-paging");
    test_fake_prepage();

    phase("open userfaultfd");
    why = open_real_uffd();
    if (why && under_vg && uffd_errno == ENOSYS) {
        /*
         * valgrind (3.19 on Debian 12) has no wrapper for the userfaultfd
         * syscall ("unhandled amd64-linux syscall: 323") and answers
         * ENOSYS, so nothing that needs a real userfaultfd can run under
         * memcheck.  The plain and ASan runs of this same program do run
         * it.  Say so loudly, and check what can be checked.
         */
        static const char msg[] =
            "test_dest: WARNING: real-userfaultfd checks SKIPPED under "
            "valgrind: valgrind does not implement the userfaultfd syscall "
            "(ENOSYS); only argument checks and the fault thread over "
            "synthetic uffd_msg records ran under memcheck\n";

        fputs(msg, stdout);
        fputs(msg, stderr);
        test_bad_input();   /* every call fails before any ioctl */
        test_fault_thread_bad_input();
        munmap(ram, (NPAGES + NEXTRA) * PS);
    } else if (why) {
        fprintf(stderr, "test_dest: no userfaultfd: %s\n", why);
        if (!getenv("POSTCOPY_RS_ALLOW_NO_UFFD")) {
            die("a real userfaultfd is required (run as root; or set "
                "POSTCOPY_RS_ALLOW_NO_UFFD=1 to skip)");
        }
        printf("test_dest: WARNING: real-userfaultfd checks SKIPPED: %s\n",
               why);
        test_bad_input();
        test_fault_thread_bad_input();
        munmap(ram, (NPAGES + NEXTRA) * PS);
    } else {
        kernel_touch_only = under_vg;   /* see touch() */
        test_bad_input();
        test_fault_thread_bad_input();
        phase("fault thread #1");
        test_real_fault_thread();
        phase("stop while paused");
        test_real_stop_while_paused();
        phase("fault outside RAM");
        test_real_fault_outside_ram();
        CHECK(munmap(ram, (NPAGES + NEXTRA) * PS) == 0);
        close(uffd);
    }

    alarm(0);
    if (test_failures) {
        fprintf(stderr, "test_dest: %d check(s) failed\n", test_failures);
        return 1;
    }
    printf("test_dest: all checks passed\n");
    return 0;
}
