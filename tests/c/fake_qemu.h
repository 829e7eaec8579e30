/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * A fake of the QEMU side of the postcopy-rs boundary: a RAMBlock list and
 * recorders for every function the library calls.  The prototypes come
 * from the generated header, so the compiler checks each fake against what
 * the library expects.
 */
#ifndef FAKE_QEMU_H
#define FAKE_QEMU_H

#include "postcopy_rs.h"

/*
 * QEMU's own declarations (QEMU 10.0: include/exec/cpu-common.h,
 * migration/migration.h, migration/postcopy-ram.h, migration/ram.h) of the
 * functions the library calls or exports; the generated header leaves them
 * out because QEMU builds with -Wredundant-decls.
 */
typedef int (RAMBlockIterFunc)(RAMBlock *rb, void *opaque);
int foreach_not_ignored_block(RAMBlockIterFunc func, void *opaque);
const char *qemu_ram_get_idstr(RAMBlock *rb);
size_t qemu_ram_pagesize(RAMBlock *block);
uint64_t qemu_ram_get_used_length(RAMBlock *rb); /* ram_addr_t */
void postcopy_discard_send_init(MigrationState *ms, const char *name);
void postcopy_discard_send_range(MigrationState *ms, unsigned long start,
                                 unsigned long length);
void postcopy_discard_send_finish(MigrationState *ms);
void ram_postcopy_send_discard_bitmap(MigrationState *ms);

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct RAMBlock {
    char idstr[256];
    size_t page_size;
    uint64_t used_length;
    unsigned long *bmap;
    int ignored;
};

struct MigrationState {
    int dummy;
};

#define FAKE_MAX_BLOCKS 8
#define FAKE_LOG_LINES 256

extern RAMBlock *fake_blocks[FAKE_MAX_BLOCKS];
extern size_t fake_target_page_size;
extern char fake_log[FAKE_LOG_LINES][128];
extern int fake_log_len;
extern char fake_last_error[512];

void fake_reset(void);
void fake_record(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void fake_log_sink(PostcopyRsLogLevel level, const char *msg);

extern int test_failures;
#define CHECK(cond)                                                      \
    do {                                                                 \
        if (!(cond)) {                                                   \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__,       \
                    __LINE__, #cond);                                    \
            test_failures++;                                             \
        }                                                                \
    } while (0)

#endif
