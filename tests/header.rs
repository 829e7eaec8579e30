// SPDX-License-Identifier: GPL-2.0-or-later
//! The committed header must be exactly what the pinned cbindgen generates
//! from the current source (build.rs writes it to OUT_DIR).

#[test]
fn committed_header_matches_generated() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/postcopy_rs.h"));
    let committed_path = concat!(env!("CARGO_MANIFEST_DIR"), "/include/postcopy_rs.h");
    let committed = std::fs::read_to_string(committed_path)
        .unwrap_or_else(|e| panic!("cannot read {committed_path}: {e}"));
    assert!(
        committed == generated,
        "include/postcopy_rs.h is stale: run `make header` and commit the result"
    );
}
