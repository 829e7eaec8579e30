/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * postcopy-rs from C, without QEMU: the README's example.
 *
 *   cargo build --release
 *   cc -Iinclude examples/standalone.c target/release/libpostcopy_rs.a -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -o standalone
 *   ./standalone                  (needs userfaultfd: root, or
 *                                  vm.unprivileged_userfaultfd=1)
 *
 * 1. canonicalises a dirty bitmap to host pages;
 * 2. registers 64 pages of fresh memory with a userfaultfd and starts the
 *    library's fault thread on it;
 * 3. touches every page: each fault reaches request_page(), which a
 *    "source" thread answers by placing the page with
 *    postcopy_rs_place_page() (one page is placed as a zero page first);
 * 4. checks the contents, the received bitmap and the counters.
 *
 * tests/c_harness.rs builds it with the link line from the README and
 * runs it.
 */
#include "postcopy_rs.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PS 4096
#define NPAGES 64

static int failures;
#define CHECK(cond)                                                      \
    do {                                                                 \
        if (!(cond)) {                                                   \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__,       \
                    __LINE__, #cond);                                    \
            failures++;                                                  \
        }                                                                \
    } while (0)

static PostcopyRsBlockView view;      /* the one block of guest RAM */
static unsigned long received[(NPAGES + 63) / 64];
static int uffd;
static int requests[2];               /* pipe: fault thread -> source */

/* Which block holds addr: here, the one block or nothing. */
static int resolve(void *opaque, uint64_t addr, PostcopyRsFaultTarget *out)
{
    uint64_t host = (uint64_t)(uintptr_t)view.host;

    (void)opaque;
    if (addr < host || addr >= host + view.used_length) {
        return -ERANGE;
    }
    out->block = view.host;
    out->view = view;
    return 0;
}

/* Ask "the source" for the page at block offset `offset`. */
static int request_page(void *opaque, void *block, uint64_t offset,
                        uint64_t addr)
{
    (void)opaque;
    (void)block;
    (void)addr;
    return write(requests[1], &offset, sizeof(offset)) == sizeof(offset)
           ? 0 : -errno;
}

/* The source: place each requested page, filled with its page number. */
static void *source(void *arg)
{
    static unsigned char page[PS];
    uint64_t offset;

    (void)arg;
    while (read(requests[0], &offset, sizeof(offset)) == sizeof(offset)) {
        memset(page, (int)(offset / PS), sizeof(page));
        CHECK(postcopy_rs_place_page(uffd, &view,
                                     (char *)view.host + offset, page) == 0);
    }
    return NULL;
}

static void canonicalise(void)
{
    /* 64 target pages, host pages of 4: bits 0 and 5 dirty. */
    unsigned long map[1] = { 0x21 };

    CHECK(postcopy_chunk_hostpages(map, 64, 4) == 6);
    CHECK(map[0] == 0xff);
    CHECK(postcopy_chunk_hostpages(map, 63, 4) == -EINVAL);
    CHECK(postcopy_chunk_hostpages(NULL, 64, 4) == -EFAULT);
}

int main(void)
{
    struct uffdio_api api = { .api = UFFD_API };
    struct uffdio_register reg = { .mode = UFFDIO_REGISTER_MODE_MISSING };
    PostcopyRsFaultConfig cfg = { 0 };
    PostcopyRsFaultThread *thread = NULL;
    PostcopyRsStats stats;
    pthread_t src;
    char *ram;

    canonicalise();

    uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) {
        perror("userfaultfd (root, or vm.unprivileged_userfaultfd=1?)");
        return 1;
    }
    ram = mmap(NULL, NPAGES * PS, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ram == MAP_FAILED || madvise(ram, NPAGES * PS, MADV_NOHUGEPAGE)) {
        perror("mmap");
        return 1;
    }
    reg.range.start = (uintptr_t)ram;
    reg.range.len = NPAGES * PS;
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) || pipe(requests)) {
        perror("UFFDIO_REGISTER");
        return 1;
    }

    view.host = ram;
    view.used_length = NPAGES * PS;
    view.page_size = PS;
    view.receivedmap = received;
    view.target_page_bits = 12;
    view.flags = POSTCOPY_RS_BLOCK_ZEROPAGE;

    cfg.uffd = uffd;
    cfg.ops.resolve = resolve;
    cfg.ops.request_page = request_page;
    cfg.name = "standalone-fault";

    postcopy_rs_reset_stats();
    CHECK(postcopy_rs_place_page_zero(uffd, &view, ram) == 0);
    CHECK(postcopy_rs_fault_thread_start(&cfg, &thread) == 0);
    pthread_create(&src, NULL, source, NULL);

    /* Every read of a missing page blocks until the source placed it. */
    for (int i = 0; i < NPAGES; i++) {
        CHECK(ram[i * PS + 100] == (i == 0 ? 0 : (char)i));
    }

    CHECK(postcopy_rs_fault_thread_stop(thread) == 0);
    close(requests[1]);
    pthread_join(src, NULL);

    /*
     * A page is marked received just after the copy that woke its reader,
     * so look once every placement has returned.
     */
    for (int i = 0; i < NPAGES; i++) {
        CHECK(received[i / 64] & (1UL << (i % 64)));
    }

    CHECK(postcopy_rs_get_stats(&stats, sizeof(stats)) == (int)sizeof(stats));
    CHECK(stats.zero_pages_placed == 1);
    CHECK(stats.pages_placed == NPAGES - 1);
    CHECK(stats.pages_requested == NPAGES - 1);

    if (failures) {
        fprintf(stderr, "standalone: %d check(s) failed\n", failures);
        return 1;
    }
    printf("standalone: all checks passed\n");
    return 0;
}
