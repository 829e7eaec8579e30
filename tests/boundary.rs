// SPDX-License-Identifier: GPL-2.0-or-later
//! Every export runs its whole body through the one boundary
//! (`ffi::boundary::boundary`), so that no panic reaches C and every
//! result maps to C the same way: the body of each `extern "C" fn` under
//! src/ffi/ is a single `boundary(...)` call.

use std::path::Path;

/// `(name, body)` of every `extern "C" fn` with a body in `text`.
fn exports(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("extern \"C\" fn ") {
        let after = &rest[i + "extern \"C\" fn ".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // The body: from the first `{` after the signature to its match.
        let Some(open) = after.find('{') else { break };
        let sig = &after[..open];
        if sig.contains(';') {
            // A declaration (a callback type), not a definition.
            rest = &after[sig.find(';').unwrap()..];
            continue;
        }
        let mut depth = 0;
        let mut end = open;
        for (j, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + j;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push((name, after[open + 1..end].to_string()));
        rest = &after[end..];
    }
    out
}

/// The body is one `boundary("name", ...)` call, named for its export.
fn goes_through_boundary(name: &str, body: &str) -> bool {
    let code: String = body
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let code = code.trim();
    let call = format!("boundary(\"{name}\",");
    code.starts_with(&call)
        && (code.ends_with(')') || code.ends_with(");"))
        && code.matches("boundary(").count() == 1
}

#[test]
fn every_export_goes_through_the_boundary() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ffi");
    let mut seen = Vec::new();
    let mut bad = Vec::new();
    for e in std::fs::read_dir(&dir).expect("src/ffi") {
        let p = e.expect("dir entry").path();
        let text = std::fs::read_to_string(&p).expect("read");
        for (name, body) in exports(&text) {
            if !goes_through_boundary(&name, &body) {
                bad.push(format!("{}: {name}", p.display()));
            }
            seen.push(name);
        }
    }
    // The reader finds the exports: the header's functions are all here.
    let header = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/include/postcopy_rs.h"
    ));
    for f in header
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("postcopy_rs_") || *w == "postcopy_chunk_hostpages")
    {
        if header.contains(&format!("{f}(")) && !header.contains(&format!("(*{f})")) {
            assert!(
                seen.iter().any(|s| s == f),
                "export {f} not found in src/ffi"
            );
        }
    }
    assert!(
        bad.is_empty(),
        "exports whose body is not one boundary call: {bad:?}"
    );
}

#[test]
fn the_check_catches_a_bypass() {
    let text = r#"
pub type Cb = Option<unsafe extern "C" fn(x: c_int) -> c_int>;
#[no_mangle]
pub extern "C" fn postcopy_rs_good(t: *mut T) -> c_int {
    boundary("postcopy_rs_good", || {
        // a comment
        Ok(())
    })
}
#[no_mangle]
pub extern "C" fn postcopy_rs_void() {
    boundary("postcopy_rs_void", || Ok(Void));
}
#[no_mangle]
pub extern "C" fn postcopy_rs_bypass() {
    stats::reset();
}
#[no_mangle]
pub extern "C" fn postcopy_rs_after(t: *mut T) -> c_int {
    let x = 1;
    boundary("postcopy_rs_after", || Ok(x))
}
#[no_mangle]
pub extern "C" fn postcopy_rs_misnamed() -> c_int {
    boundary("postcopy_rs_other", || Ok(()))
}
"#;
    let verdicts: Vec<(String, bool)> = exports(text)
        .into_iter()
        .map(|(n, b)| {
            let ok = goes_through_boundary(&n, &b);
            (n, ok)
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            ("postcopy_rs_good".to_string(), true),
            ("postcopy_rs_void".to_string(), true),
            ("postcopy_rs_bypass".to_string(), false),
            ("postcopy_rs_after".to_string(), false),
            ("postcopy_rs_misnamed".to_string(), false),
        ]
    );
}
