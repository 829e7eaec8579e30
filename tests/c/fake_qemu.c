/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "fake_qemu.h"

#include <stdarg.h>

RAMBlock *fake_blocks[FAKE_MAX_BLOCKS];
size_t fake_target_page_size = 4096;
char fake_log[FAKE_LOG_LINES][128];
int fake_log_len;
char fake_last_error[512];
int test_failures;

void fake_reset(void)
{
    fake_log_len = 0;
    fake_last_error[0] = '\0';
    memset(fake_blocks, 0, sizeof(fake_blocks));
}

void fake_record(const char *fmt, ...)
{
    va_list ap;

    if (fake_log_len >= FAKE_LOG_LINES) {
        fprintf(stderr, "fake log overflow\n");
        abort();
    }
    va_start(ap, fmt);
    vsnprintf(fake_log[fake_log_len++], sizeof(fake_log[0]), fmt, ap);
    va_end(ap);
}

void fake_log_sink(PostcopyRsLogLevel level, const char *msg)
{
    if (level == POSTCOPY_RS_LOG_LEVEL_ERROR) {
        snprintf(fake_last_error, sizeof(fake_last_error), "%s", msg);
    }
}

/*
 * The ops callbacks, written as the patch series writes them in QEMU's
 * migration/ram.c (there, over RAMBLOCK_FOREACH_NOT_IGNORED and
 * postcopy_discard_send_*()).
 */

static bool fake_next_block(void *opaque, PostcopyRsDiscardBlock *b)
{
    int i = 0;

    (void)opaque;
    if (b->block) {
        while (i < FAKE_MAX_BLOCKS && fake_blocks[i] != b->block) {
            i++;
        }
        i++;
    }
    while (i < FAKE_MAX_BLOCKS && fake_blocks[i] && fake_blocks[i]->ignored) {
        i++;
    }
    if (i >= FAKE_MAX_BLOCKS || !fake_blocks[i]) {
        return false;
    }
    b->block = fake_blocks[i];
    b->name = fake_blocks[i]->idstr;
    b->bmap = fake_blocks[i]->bmap;
    b->page_size = fake_blocks[i]->page_size;
    b->used_length = fake_blocks[i]->used_length;
    return true;
}

static void fake_prepare(void *opaque)
{
    (void)opaque;
    fake_record("prepare");
}

static void fake_send_init(void *opaque, const char *name)
{
    (void)opaque;
    fake_record("init %s", name);
}

static void fake_send_range(void *opaque, uint64_t start, uint64_t length)
{
    (void)opaque;
    fake_record("range %llu %llu", (unsigned long long)start,
                (unsigned long long)length);
}

static void fake_send_finish(void *opaque)
{
    (void)opaque;
    fake_record("finish");
}

static void fake_dirty_pages_add(void *opaque, uint64_t pages)
{
    (void)opaque;
    fake_record("dirty %llu", (unsigned long long)pages);
}

static void fake_failed(void *opaque, int err, const char *msg)
{
    (void)opaque;
    fake_record("failed %d", err);
    snprintf(fake_last_error, sizeof(fake_last_error), "%s", msg);
}

PostcopyRsDiscardOps fake_discard_ops(MigrationState *ms)
{
    PostcopyRsDiscardOps ops = {
        .opaque = ms,
        .target_page_size = fake_target_page_size,
        .next_block = fake_next_block,
        .prepare = fake_prepare,
        .send_init = fake_send_init,
        .send_range = fake_send_range,
        .send_finish = fake_send_finish,
        .dirty_pages_add = fake_dirty_pages_add,
        .failed = fake_failed,
    };

    return ops;
}

void ram_postcopy_send_discard_bitmap(MigrationState *ms)
{
    PostcopyRsDiscardOps ops = fake_discard_ops(ms);

    postcopy_rs_send_discard_bitmap(&ops);
}
