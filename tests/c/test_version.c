/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The ABI version, as an embedder checks it: the header's macro against
 * the library's function.  Also what the header promises a C reader: every
 * struct can be forward-declared by its tag before the header is
 * included, and the layouts are the ones of this ABI version.
 */

/* Forward declarations, as a QEMU header would write them. */
struct PostcopyRsFaultThread;
struct PostcopyRsBlockView;
struct PostcopyRsStats;
typedef struct PostcopyRsFaultOps PostcopyRsFaultOps;
int forward_declared_use(const struct PostcopyRsBlockView *view,
                         struct PostcopyRsStats *stats);

#include "postcopy_rs.h"

#include <stddef.h>
#include <stdio.h>

/* The layouts of ABI version 3 (the Rust side asserts the same sizes). */
_Static_assert(POSTCOPY_RS_ABI_VERSION == 3,
               "update these layout checks with the ABI version");
_Static_assert(sizeof(PostcopyRsBlockView) == 5 * 8, "PostcopyRsBlockView");
_Static_assert(offsetof(PostcopyRsBlockView, flags) == 36, "flags");
_Static_assert(sizeof(PostcopyRsFaultTarget) == 6 * 8, "PostcopyRsFaultTarget");
_Static_assert(sizeof(PostcopyRsFaultOps) == 11 * 8, "PostcopyRsFaultOps");
_Static_assert(sizeof(PostcopyRsFaultConfig) == 14 * 8, "PostcopyRsFaultConfig");
_Static_assert(offsetof(PostcopyRsFaultConfig, name) == 13 * 8, "name");
_Static_assert(sizeof(PostcopyRsDiscardBlock) == 5 * 8, "PostcopyRsDiscardBlock");
_Static_assert(sizeof(PostcopyRsDiscardOps) == 9 * 8, "PostcopyRsDiscardOps");
_Static_assert(sizeof(PostcopyRsStats) == 16 * 8, "PostcopyRsStats");
_Static_assert(sizeof(PostcopyRsPrepageStats) == 8 * 8, "PostcopyRsPrepageStats");
_Static_assert(sizeof(PostcopyRsLatency) == (8 + POSTCOPY_RS_LATENCY_BUCKETS) * 8,
               "PostcopyRsLatency");
_Static_assert(sizeof(PostcopyRsLogLevel) == sizeof(int), "PostcopyRsLogLevel");

int forward_declared_use(const struct PostcopyRsBlockView *view,
                         struct PostcopyRsStats *stats)
{
    return view->target_page_bits + (int)stats->pages_placed;
}

int main(void)
{
    PostcopyRsBlockView view = { .target_page_bits = 12 };
    PostcopyRsStats stats = { .pages_placed = 1 };
    uint32_t v = postcopy_rs_abi_version();

    if (v != POSTCOPY_RS_ABI_VERSION) {
        fprintf(stderr, "library ABI version %u, header %u\n", v,
                POSTCOPY_RS_ABI_VERSION);
        return 1;
    }
    if (forward_declared_use(&view, &stats) != 13) {
        fprintf(stderr, "forward-declared structs read wrong\n");
        return 1;
    }
    printf("test_version: ABI version %u\n", v);
    printf("test_version: all checks passed\n");
    return 0;
}
