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

/// Every name the header defines must be the project's own, so that it can
/// be included anywhere in QEMU (next to <linux/userfaultfd.h>, say).
#[test]
fn header_names_are_prefixed() {
    let h = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/include/postcopy_rs.h"
    ));
    // Names QEMU itself dictates.
    let allowed = [
        "POSTCOPY_RS_H",
        "MigrationState",
        "RAMBlock",
        "postcopy_chunk_hostpages",
    ];
    let ok = |name: &str| {
        allowed.contains(&name)
            || name.starts_with("POSTCOPY_RS_")
            || name.starts_with("PostcopyRs")
            || name.starts_with("postcopy_rs_")
    };
    let mut bad = vec![];
    for line in h.lines() {
        let line = line.trim();
        let name = if let Some(rest) = line.strip_prefix("#define ") {
            rest.split_whitespace().next()
        } else if line.starts_with("} ") && line.ends_with(';') {
            // end of a typedef'd struct/enum
            line.trim_start_matches("} ").strip_suffix(';')
        } else if let Some(fnptr) = line
            .strip_prefix("typedef ")
            .and_then(|l| l.split_once("(*"))
        {
            // typedef RET (*NAME)(ARGS);
            fnptr.1.split(')').next()
        } else if line.starts_with("typedef ") && line.ends_with(';') {
            line.trim_end_matches(';')
                .rsplit([' ', '*'])
                .find(|w| !w.is_empty())
        } else if !line.starts_with("//")
            && !line.starts_with('*')
            && line.contains('(')
            && line.ends_with(';')
        {
            line.split('(')
                .next()
                .and_then(|head| head.rsplit([' ', '*']).next())
        } else {
            None
        };
        match name {
            Some(n) if !n.is_empty() && !ok(n) => bad.push(n.to_string()),
            _ => {}
        }
    }
    assert!(
        bad.is_empty(),
        "names in the header without the project prefix: {bad:?}"
    );
}
