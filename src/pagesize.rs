// SPDX-License-Identifier: GPL-2.0-or-later
//! Host page sizes of guest RAM, as QEMU summarises them: the OR of every
//! RAMBlock's page size (`ram_pagesize_summary()`), one bit per size.
//!
//! When the source's and destination's summaries differ, postcopy cannot
//! run.  QEMU 10.0's destination says so in hex, and its source only learns
//! "Sibling indicated error 1".  The return path has no message that
//! carries text, but it has `MIG_RP_MSG_PONG`, a 32-bit value that any
//! QEMU source accepts and only traces: a postcopy-rs destination sends one
//! with [`PONG_MAGIC`] in its top bits and its summary below, just before
//! failing, so that a postcopy-rs source can name both sides' page sizes.

use std::fmt::Write;

/// Top 12 bits of a page-size pong.
pub const PONG_MAGIC: u32 = 0x5c0;
const PONG_SHIFT: u32 = 20;
/// Page sizes a pong can carry: 2^12 (4 KiB) to 2^31.
const PONG_MIN_SHIFT: u32 = 12;
const PONG_SIZES: u32 = PONG_SHIFT;

/// The pong value carrying `summary`, or None if it has a page size the
/// pong cannot carry (below 4 KiB or above 2 GiB) or none at all.
pub fn pong_encode(summary: u64) -> Option<u32> {
    let low = (1u64 << PONG_MIN_SHIFT) - 1;
    let high = !((1u64 << (PONG_MIN_SHIFT + PONG_SIZES)) - 1);
    if summary == 0 || summary & (low | high) != 0 {
        return None;
    }
    Some(PONG_MAGIC << PONG_SHIFT | (summary >> PONG_MIN_SHIFT) as u32)
}

/// The summary in a page-size pong, or None for any other pong.
pub fn pong_decode(value: u32) -> Option<u64> {
    let sizes = value & ((1 << PONG_SHIFT) - 1);
    (value >> PONG_SHIFT == PONG_MAGIC && sizes != 0).then(|| u64::from(sizes) << PONG_MIN_SHIFT)
}

/// "4 KiB", "4 KiB and 2 MiB", "4 KiB, 2 MiB and 1 GiB".
pub fn describe(summary: u64) -> String {
    let sizes: Vec<String> = (0..64)
        .filter(|b| summary >> b & 1 != 0)
        .map(|b| human(1u64 << b))
        .collect();
    match sizes.as_slice() {
        [] => "no".into(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

fn human(size: u64) -> String {
    const UNITS: [&str; 7] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut i = 0;
    let mut v = size;
    while v >= 1024 && v % 1024 == 0 && i + 1 < UNITS.len() {
        v /= 1024;
        i += 1;
    }
    format!("{v} {}", UNITS[i])
}

/// The error for mismatched page sizes, in words a user can act on.
pub fn mismatch_message(source: u64, destination: u64) -> String {
    let mut m = String::new();
    let _ = write!(
        m,
        "Postcopy needs matching RAM page sizes: the source's guest RAM uses {} pages, \
         the destination's uses {} pages (summaries s={source:#x} d={destination:#x}); \
         back guest RAM with the same page sizes on both sides (e.g. the same \
         hugetlbsize, or hugepages on neither)",
        describe(source),
        describe(destination)
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pong_round_trips_and_rejects_others() {
        for s in [0x1000u64, 0x20_1000, 0x4020_1000, 0x8000_0000] {
            let p = pong_encode(s).unwrap();
            assert_eq!(pong_decode(p), Some(s), "{s:#x}");
        }
        assert_eq!(pong_encode(0), None);
        assert_eq!(pong_encode(0x800), None);
        assert_eq!(pong_encode(1 << 34), None);
        // QEMU's own pongs echo its pings: small values, never ours.
        for v in [0u32, 1, 2, 3, 4, 0x42, u32::MAX] {
            assert_eq!(pong_decode(v), None, "{v:#x}");
        }
        assert_eq!(pong_decode(PONG_MAGIC << 20), None);
    }

    #[test]
    fn messages_name_the_sizes() {
        assert_eq!(describe(0x1000), "4 KiB");
        assert_eq!(describe(0x20_1000), "4 KiB and 2 MiB");
        assert_eq!(describe(0x4020_1000), "4 KiB, 2 MiB and 1 GiB");
        let m = mismatch_message(0x1000, 0x20_0000);
        assert!(m.contains("source's guest RAM uses 4 KiB pages"), "{m}");
        assert!(m.contains("destination's uses 2 MiB pages"), "{m}");
    }
}
