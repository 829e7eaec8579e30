/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * A fake of the QEMU side of the postcopy-rs boundary: a RAMBlock list and
 * recorders for every callback of PostcopyRsDiscardOps.  The library links
 * without it (examples/standalone.c shows that); the callback types come
 * from the generated header, so the compiler checks each fake against what
 * the library expects.
 */
#ifndef FAKE_QEMU_H
#define FAKE_QEMU_H

#include "postcopy_rs.h"

/*
 * The source-side glue, as the patch series writes it in QEMU's
 * migration/ram.c: fill a PostcopyRsDiscardOps from the RAMBlock list and
 * call postcopy_rs_send_discard_bitmap().
 */
typedef struct RAMBlock RAMBlock;
typedef struct MigrationState MigrationState;
void ram_postcopy_send_discard_bitmap(MigrationState *ms);
PostcopyRsDiscardOps fake_discard_ops(MigrationState *ms);

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
