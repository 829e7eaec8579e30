/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Source side through the C ABI, exactly as QEMU calls it: the glue's
 * ram_postcopy_send_discard_bitmap() (fake_qemu.c) hands a fake RAMBlock
 * list to postcopy_rs_send_discard_bitmap(), which must make exactly the
 * postcopy_discard_send_*() calls QEMU's C would.
 */
#include "fake_qemu.h"

#include <errno.h>

#define BITS_PER_LONG (8 * sizeof(unsigned long))
#define BITS_TO_LONGS(n) (((n) + BITS_PER_LONG - 1) / BITS_PER_LONG)

static void set_bit(unsigned long *map, unsigned long nr)
{
    map[nr / BITS_PER_LONG] |= 1UL << (nr % BITS_PER_LONG);
}

static int test_bit(const unsigned long *map, unsigned long nr)
{
    return (map[nr / BITS_PER_LONG] >> (nr % BITS_PER_LONG)) & 1;
}

static RAMBlock *new_block(const char *name, size_t page_size,
                           uint64_t used_length)
{
    RAMBlock *rb = calloc(1, sizeof(*rb));
    size_t pages = used_length / fake_target_page_size;

    snprintf(rb->idstr, sizeof(rb->idstr), "%s", name);
    rb->page_size = page_size;
    rb->used_length = used_length;
    rb->bmap = calloc(BITS_TO_LONGS(pages) + 1, sizeof(unsigned long));
    return rb;
}

static void free_block(RAMBlock *rb)
{
    free(rb->bmap);
    free(rb);
}

static void expect_log(const char *const *want, int n, const char *what)
{
    int ok = fake_log_len == n;

    for (int i = 0; ok && i < n; i++) {
        ok = strcmp(fake_log[i], want[i]) == 0;
    }
    if (!ok) {
        fprintf(stderr, "%s: unexpected calls:\n", what);
        for (int i = 0; i < fake_log_len; i++) {
            fprintf(stderr, "  got  %s\n", fake_log[i]);
        }
        for (int i = 0; i < n; i++) {
            fprintf(stderr, "  want %s\n", want[i]);
        }
        test_failures++;
    }
}

static void test_known_bitmaps(void)
{
    MigrationState ms = { 0 };
    /* 1000 target pages: not a multiple of 64. */
    RAMBlock *pc = new_block("pc.ram", 4096, 1000 * 4096);
    /* Four 2 MiB host pages over 4 KiB target pages: ratio 512. */
    RAMBlock *hp = new_block("hp.ram", 2 << 20, 8 << 20);
    RAMBlock *ign = new_block("ignored", 4096, 64 * 4096);
    RAMBlock *vga = new_block("vga.ram", 4096, 128 * 4096);
    PostcopyRsStats st;
    static const char *const want[] = {
        "prepare",
        "init pc.ram", "range 0 3", "range 63 3", "range 999 1", "finish",
        "init hp.ram", "range 0 1024", "range 1536 512", "dirty 1022",
        "finish",
        "init vga.ram", "finish",
    };

    fake_reset();
    for (unsigned long i = 0; i < 3; i++) {
        set_bit(pc->bmap, i);
        set_bit(pc->bmap, 63 + i);
    }
    set_bit(pc->bmap, 999);
    /* Bits past the block's end belong to nobody: never sent, never changed. */
    for (unsigned long i = 1000; i < 1024; i++) {
        set_bit(pc->bmap, i);
    }
    set_bit(hp->bmap, 5);
    for (unsigned long i = 512; i < 1024; i++) {
        set_bit(hp->bmap, i);
    }
    set_bit(hp->bmap, 1600);
    ign->ignored = 1;
    set_bit(ign->bmap, 7);
    fake_blocks[0] = pc;
    fake_blocks[1] = hp;
    fake_blocks[2] = ign;
    fake_blocks[3] = vga;

    postcopy_rs_reset_stats();
    ram_postcopy_send_discard_bitmap(&ms);
    expect_log(want, sizeof(want) / sizeof(want[0]), "known bitmaps");

    /* The canonical bitmap is left in place, as QEMU's C leaves it. */
    for (unsigned long i = 0; i < 2048; i++) {
        CHECK(test_bit(hp->bmap, i) == (i < 1024 || i >= 1536));
    }
    for (unsigned long i = 1000; i < 1024; i++) {
        CHECK(test_bit(pc->bmap, i));
    }
    CHECK(postcopy_rs_get_stats(&st, sizeof(st)) == (int)sizeof(st));
    CHECK(st.discard_blocks == 3);
    CHECK(st.discard_runs == 5);
    CHECK(st.discard_pages == 3 + 3 + 1 + 1024 + 512);
    CHECK(st.hostpage_bits_set == 1022);

    free_block(pc);
    free_block(hp);
    free_block(ign);
    free_block(vga);
}

static void test_bad_block_fails_cleanly(size_t page_size, uint64_t len,
                                         const char *needle)
{
    MigrationState ms = { 0 };
    RAMBlock *good = new_block("pc.ram", 4096, 64 * 4096);
    RAMBlock *bad = new_block("bad.ram", page_size, len);
    static const char *const want[] = { "failed -22" };

    fake_reset();
    set_bit(good->bmap, 1);
    set_bit(bad->bmap, 0);
    fake_blocks[0] = good;
    fake_blocks[1] = bad;
    ram_postcopy_send_discard_bitmap(&ms);
    /* Validated before anything is sent, synced or changed. */
    expect_log(want, 1, needle);
    if (!strstr(fake_last_error, "bad.ram")) {
        fprintf(stderr, "error message '%s' does not name the block\n",
                fake_last_error);
        test_failures++;
    }
    if (!strstr(fake_last_error, needle)) {
        fprintf(stderr, "error message '%s' lacks '%s'\n", fake_last_error,
                needle);
        test_failures++;
    }
    CHECK(good->bmap[0] == 2);
    CHECK(bad->bmap[0] == 1);
    free_block(good);
    free_block(bad);
}

/* NULL ops, or a missing required callback: -EFAULT, nothing touched. */
static void test_bad_ops(void)
{
    MigrationState ms = { 0 };
    RAMBlock *pc = new_block("pc.ram", 4096, 64 * 4096);
    PostcopyRsDiscardOps ops;
    static const char *const want[] = { "failed -14" };

    fake_reset();
    fake_blocks[0] = pc;
    set_bit(pc->bmap, 1);
    CHECK(postcopy_rs_send_discard_bitmap(NULL) == -EFAULT);
    CHECK(fake_log_len == 0);
    CHECK(strstr(fake_last_error, "NULL") != NULL);

    ops = fake_discard_ops(&ms);
    ops.next_block = NULL;
    CHECK(postcopy_rs_send_discard_bitmap(&ops) == -EFAULT);
    ops = fake_discard_ops(&ms);
    ops.send_range = NULL;
    fake_reset();
    fake_blocks[0] = pc;
    CHECK(postcopy_rs_send_discard_bitmap(&ops) == -EFAULT);
    expect_log(want, 1, "missing send_range");
    CHECK(strstr(fake_last_error, "send_range") != NULL);

    /* The optional callbacks may be NULL. */
    ops = fake_discard_ops(&ms);
    ops.prepare = NULL;
    ops.dirty_pages_add = NULL;
    ops.failed = NULL;
    fake_reset();
    fake_blocks[0] = pc;
    CHECK(postcopy_rs_send_discard_bitmap(&ops) == 0);
    CHECK(fake_log_len == 3); /* init, range, finish */
    free_block(pc);
}

static void test_chunk_hostpages_export(void)
{
    unsigned long map[8] = { 0 };
    int64_t r;

    CHECK(postcopy_chunk_hostpages(NULL, 64, 1) == -EFAULT);
    /*
     * nr_pages is checked before bmap is used: the library must not even
     * make a slice of bmap sized by a bad nr_pages (issue 12).
     */
    CHECK(postcopy_chunk_hostpages(NULL, 100, 8) == -EINVAL);
    CHECK(postcopy_chunk_hostpages(NULL, 0, 1) == 0);
    CHECK(postcopy_chunk_hostpages(map, 64, 0) == -EINVAL);
    CHECK(postcopy_chunk_hostpages(map, 64, 3) == -EINVAL);
    CHECK(postcopy_chunk_hostpages(map, 64, POSTCOPY_RS_MAX_HOST_RATIO * 2) ==
          -EINVAL);
    /* 100 pages is not a whole number of 8-page host pages. */
    map[0] = 1;
    CHECK(postcopy_chunk_hostpages(map, 100, 8) == -EINVAL);
    CHECK(map[0] == 1);

    map[0] = 0x10;        /* page 4: host page 0 of 8 pages */
    map[3] = 1UL << 63;   /* page 255: last host page */
    r = postcopy_chunk_hostpages(map, 256, 8);
    CHECK(r == 14);
    CHECK(map[0] == 0xff);
    CHECK(map[3] == 0xffUL << 56);

    memset(map, 0, sizeof(map));
    map[4] = 1;           /* 512 pages, ratio 256 (1 MiB over 4 KiB) */
    CHECK(postcopy_chunk_hostpages(map, 512, 256) == 255);
    CHECK(map[4] == ~0UL && map[7] == ~0UL && map[3] == 0);
}

static void test_pagesize_mismatch(void)
{
    char msg[512], tiny[8];
    int n;

    n = postcopy_rs_pagesize_mismatch_message(0x1000, 0x200000, msg,
                                              sizeof(msg));
    CHECK(n > 0 && (size_t)n == strlen(msg));
    CHECK(strstr(msg, "4 KiB") && strstr(msg, "2 MiB"));
    /* Truncated like snprintf: NUL-terminated, full length returned. */
    CHECK(postcopy_rs_pagesize_mismatch_message(0x1000, 0x200000, tiny,
                                                sizeof(tiny)) == n);
    CHECK(strlen(tiny) == sizeof(tiny) - 1);
    CHECK(postcopy_rs_pagesize_mismatch_message(0x1000, 0x200000, NULL, 0) ==
          n);
    CHECK(postcopy_rs_pagesize_mismatch_message(0x1000, 0x200000, NULL, 4) ==
          -EFAULT);
}

int main(void)
{
    PostcopyRsStats st;

    postcopy_rs_set_log_fn(fake_log_sink, POSTCOPY_RS_LOG_LEVEL_INFO);
    test_known_bitmaps();
    /* A page size that is not a power of two. */
    test_bad_block_fails_cleanly(3 * 4096, 3 * 4096 * 4, "12288");
    /* 2 MiB pages but a 3 MiB block. */
    test_bad_block_fails_cleanly(2 << 20, 3 << 20, "3145728");
    /* A page size below the target page size. */
    test_bad_block_fails_cleanly(2048, 2048 * 64, "2048");

    test_bad_ops();

    test_chunk_hostpages_export();
    test_pagesize_mismatch();
    CHECK(postcopy_rs_get_stats(NULL, sizeof(PostcopyRsStats)) == -EFAULT);
    CHECK(postcopy_rs_get_stats(&st, sizeof(st)) == (int)sizeof(st));

    /* Out-of-range log levels are clamped, not undefined behaviour. */
    postcopy_rs_set_log_fn(NULL, 1000);
    postcopy_rs_set_log_fn(fake_log_sink, -5);

    if (test_failures) {
        fprintf(stderr, "test_discard: %d check(s) failed\n", test_failures);
        return 1;
    }
    printf("test_discard: all checks passed\n");
    return 0;
}
