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

/* QEMU's own functions. */

int foreach_not_ignored_block(RAMBlockIterFunc func, void *opaque)
{
    for (int i = 0; i < FAKE_MAX_BLOCKS && fake_blocks[i]; i++) {
        int ret;

        if (fake_blocks[i]->ignored) {
            continue;
        }
        ret = func(fake_blocks[i], opaque);
        if (ret) {
            return ret;
        }
    }
    return 0;
}

const char *qemu_ram_get_idstr(RAMBlock *rb)
{
    return rb->idstr;
}

size_t qemu_ram_pagesize(RAMBlock *rb)
{
    return rb->page_size;
}

uint64_t qemu_ram_get_used_length(RAMBlock *rb)
{
    return rb->used_length;
}


void postcopy_discard_send_init(MigrationState *ms, const char *name)
{
    (void)ms;
    fake_record("init %s", name);
}

void postcopy_discard_send_range(MigrationState *ms, unsigned long start,
                                 unsigned long length)
{
    (void)ms;
    fake_record("range %lu %lu", start, length);
}

void postcopy_discard_send_finish(MigrationState *ms)
{
    (void)ms;
    fake_record("finish");
}

/* The ram.c glue the patch series adds. */

size_t postcopy_rs_ram_target_page_size(void)
{
    return fake_target_page_size;
}

void postcopy_rs_ram_discard_prepare(MigrationState *ms)
{
    (void)ms;
    fake_record("prepare");
}

unsigned long *postcopy_rs_ram_block_bmap(RAMBlock *rb)
{
    return rb->bmap;
}

void postcopy_rs_ram_dirty_pages_add(uint64_t pages)
{
    fake_record("dirty %llu", (unsigned long long)pages);
}

void postcopy_rs_ram_discard_failed(MigrationState *ms, int err,
                                    const char *msg)
{
    (void)ms;
    fake_record("failed %d", err);
    snprintf(fake_last_error, sizeof(fake_last_error), "%s", msg);
}
