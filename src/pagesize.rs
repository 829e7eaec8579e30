// SPDX-License-Identifier: GPL-2.0-or-later
//! Host page sizes of guest RAM, as QEMU summarises them: the OR of every
//! RAMBlock's page size (`ram_pagesize_summary()`), one bit per size.
//!
//! When the source's and destination's summaries differ, postcopy cannot
//! run; [`mismatch_message`] says so in words a user can act on.

use std::fmt::Write;

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
    fn messages_name_the_sizes() {
        assert_eq!(describe(0x1000), "4 KiB");
        assert_eq!(describe(0x20_1000), "4 KiB and 2 MiB");
        assert_eq!(describe(0x4020_1000), "4 KiB, 2 MiB and 1 GiB");
        let m = mismatch_message(0x1000, 0x20_0000);
        assert!(m.contains("source's guest RAM uses 4 KiB pages"), "{m}");
        assert!(m.contains("destination's uses 2 MiB pages"), "{m}");
    }
}
