// SPDX-License-Identifier: GPL-2.0-or-later
//! The committed header must be exactly what the pinned cbindgen generates
//! from the current source (build.rs writes it to `OUT_DIR`), and every name
//! it declares must carry the project's prefix.

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

/// Every identifier a C header declares at file scope: macros, struct,
/// union and enum tags, enum constants, typedefs, functions and variables,
/// however the declarations are split over lines.  Struct members are not
/// file-scope names and are left out.  A small parser for what cbindgen
/// writes, not for all of C.
fn declared_names(header: &str) -> Vec<String> {
    let mut names = Vec::new();
    let code = strip_comments(header);
    // Preprocessor lines: record #define names; skip C++-only blocks.
    let mut c_text = String::new();
    let mut cplusplus_depth = 0usize;
    let mut if_depth = 0usize;
    for line in code.lines() {
        let t = line.trim();
        if let Some(directive) = t.strip_prefix('#') {
            let mut words = directive.split_whitespace();
            match words.next() {
                Some("define") if cplusplus_depth == 0 => {
                    if let Some(n) = words.next() {
                        let n = n.split('(').next().unwrap_or(n);
                        names.push(n.to_string());
                    }
                }
                Some("if" | "ifdef" | "ifndef") => {
                    if_depth += 1;
                    if cplusplus_depth == 0 && directive.contains("__cplusplus") {
                        cplusplus_depth = if_depth;
                    }
                }
                Some("endif") => {
                    if cplusplus_depth == if_depth {
                        cplusplus_depth = 0;
                    }
                    if_depth = if_depth.saturating_sub(1);
                }
                _ => {}
            }
            continue;
        }
        if cplusplus_depth == 0 {
            c_text.push_str(line);
            c_text.push('\n');
        }
    }

    let tokens = tokenize(&c_text);
    let is_ident = |t: &str| t.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
    const KEYWORDS: &[&str] = &[
        "typedef", "struct", "union", "enum", "const", "volatile", "extern", "static", "inline",
        "unsigned", "signed", "void", "char", "short", "int", "long", "float", "double", "bool",
        "_Bool", "restrict",
    ];
    let mut stmt: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        match t {
            "{" => {
                // A tag: `struct NAME {` / `enum NAME {`.
                if let [.., kw, name] = stmt.as_slice() {
                    if matches!(*kw, "struct" | "union" | "enum") && is_ident(name) {
                        names.push(name.to_string());
                    }
                }
                let is_enum = stmt.contains(&"enum");
                // Walk the body to its matching brace.
                let mut depth = 1;
                let mut expect_variant = true;
                i += 1;
                while i < tokens.len() && depth > 0 {
                    let b = tokens[i].as_str();
                    match b {
                        "{" => depth += 1,
                        "}" => depth -= 1,
                        "," if depth == 1 => expect_variant = true,
                        _ if is_enum && depth == 1 && expect_variant && is_ident(b) => {
                            names.push(b.to_string());
                            expect_variant = false;
                        }
                        _ => {}
                    }
                    i += 1;
                }
                stmt.push("{}");
                continue;
            }
            ";" => {
                declaration_name(&stmt, &is_ident, KEYWORDS, &mut names);
                stmt.clear();
            }
            _ => stmt.push(t),
        }
        i += 1;
    }
    names
}

/// The name one file-scope declaration (without its `;`) declares.
fn declaration_name(
    stmt: &[&str],
    is_ident: &dyn Fn(&str) -> bool,
    keywords: &[&str],
    names: &mut Vec<String>,
) {
    let plain = |t: &&str| is_ident(t) && !keywords.contains(t);
    // `RET (*NAME)(ARGS)`: a function pointer typedef or variable.
    if let Some(p) = stmt
        .windows(3)
        .position(|w| w[0] == "(" && w[1] == "*" && plain(&w[2]))
    {
        names.push(stmt[p + 2].to_string());
        return;
    }
    let is_typedef = stmt.first() == Some(&"typedef");
    match stmt.iter().position(|t| *t == "(") {
        // A function: the name right before its parameter list.
        Some(p) if !is_typedef && p > 0 && plain(&stmt[p - 1]) => {
            names.push(stmt[p - 1].to_string());
        }
        _ => {
            // A typedef, variable or forward declaration: the last name
            // (`typedef struct X X;` also declares the tag X).
            if let [kw, tag, ..] = stmt.get(1..).unwrap_or(&[]) {
                let has_body = stmt.contains(&"{}");
                if is_typedef
                    && !has_body
                    && matches!(*kw, "struct" | "union" | "enum")
                    && plain(tag)
                {
                    names.push(tag.to_string());
                }
            }
            if let Some(n) = stmt.iter().rev().find(|t| plain(t)) {
                names.push(n.to_string());
            }
        }
    }
}

fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("/*") {
            let end = r.find("*/").map_or(r.len(), |e| e + 2);
            // Keep line structure for the preprocessor pass.
            out.extend(r[..end].chars().filter(|&c| c == '\n'));
            out.push(' ');
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("//") {
            let end = r.find('\n').unwrap_or(r.len());
            rest = &r[end..];
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn tokenize(s: &str) -> Vec<String> {
    let mut toks = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_ascii_alphanumeric() || c == '_' {
            let mut w = String::new();
            while let Some(&d) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' {
                    w.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            toks.push(w);
        } else if c == '"' {
            chars.next();
            let mut w = String::from("\"");
            for d in chars.by_ref() {
                w.push(d);
                if d == '"' {
                    break;
                }
            }
            toks.push(w);
        } else {
            toks.push(c.to_string());
            chars.next();
        }
    }
    toks
}

/// Names QEMU itself dictates, or that predate the prefix.
const ALLOWED: &[&str] = &["POSTCOPY_RS_H", "postcopy_chunk_hostpages"];

fn unprefixed(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| {
            !(ALLOWED.contains(&n.as_str())
                || n.starts_with("POSTCOPY_RS_")
                || n.starts_with("PostcopyRs")
                || n.starts_with("postcopy_rs_"))
        })
        .cloned()
        .collect()
}

/// Every name the header declares must be the project's own, so that it
/// can be included anywhere in QEMU (next to <linux/userfaultfd.h>, say).
#[test]
fn header_names_are_prefixed() {
    let h = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/include/postcopy_rs.h"
    ));
    let names = declared_names(h);
    // The parser sees every kind of declaration the header has.
    for want in [
        "POSTCOPY_RS_MAX_HOST_RATIO",
        "POSTCOPY_RS_LOG_LEVEL_ERROR",
        "POSTCOPY_RS_FAULT_THREAD_STATE_EXITED",
        "PostcopyRsLogLevel",
        "PostcopyRsFaultThread",
        "PostcopyRsDiscardOps",
        "PostcopyRsLogFn",
        "postcopy_rs_send_discard_bitmap",
        "postcopy_rs_fault_thread_start",
        "postcopy_chunk_hostpages",
        "POSTCOPY_RS_LATENCY_BUCKETS",
        "PostcopyRsLatency",
        "postcopy_rs_get_latency",
        "postcopy_rs_fault_thread_set_prepage",
        "postcopy_rs_get_prepage_stats",
        "PostcopyRsPrepageStats",
        "PostcopyRsRequestRangeFn",
        "POSTCOPY_RS_PREPAGE_MAX_PAGES",
        "POSTCOPY_RS_ABI_VERSION",
        "postcopy_rs_abi_version",
        "PostcopyRsStats",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "parser missed {want}: {names:?}"
        );
    }
    // ...and no member or parameter name.
    for not in ["opaque", "next_block", "used_length", "level", "msg"] {
        assert!(
            !names.iter().any(|n| n == not),
            "parser took {not} for a declaration"
        );
    }
    let bad = unprefixed(&names);
    assert!(
        bad.is_empty(),
        "names in the header without the project prefix: {bad:?}"
    );
}

/// Every struct and enum has a tag, the same as its typedef, so that C can
/// forward-declare it; and the header's opening comment says of each
/// struct with a body whether it is an input (frozen within an ABI
/// version) or an output (grows at its end).
#[test]
fn structs_are_tagged_and_classified() {
    let h = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/include/postcopy_rs.h"
    ));
    for anon in ["typedef struct {", "typedef enum {", "typedef union {"] {
        assert!(!h.contains(anon), "an anonymous `{anon}` in the header");
    }
    let intro = &h[..h.find("#ifndef POSTCOPY_RS_H").expect("include guard")];
    let inputs = &intro[intro.find("Inputs,").expect("the inputs paragraph")..];
    let outputs = &intro[intro.find("Outputs,").expect("the outputs paragraph")..];
    let inputs = &inputs[..inputs.find("\n *\n").unwrap_or(inputs.len())];
    let outputs = &outputs[..outputs.find("\n *\n").unwrap_or(outputs.len())];
    let mut n = 0;
    for line in h.lines() {
        let Some(rest) = line.strip_prefix("typedef struct ") else {
            continue;
        };
        let Some(name) = rest.strip_suffix(" {") else {
            continue;
        };
        n += 1;
        assert!(
            h.contains(&format!("}} {name};")),
            "struct {name}: its typedef is not its tag"
        );
        let word = |text: &str| {
            text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .any(|w| w == name)
        };
        assert!(
            word(inputs) != word(outputs),
            "struct {name} must be listed once, as an input or an output, in the header's comment"
        );
    }
    assert!(n >= 9, "only {n} structs found");
}

/// The check catches an unprefixed name however cbindgen lays it out: a
/// function split over lines, an enum variant, a multi-line typedef, a
/// struct tag, a function pointer typedef, a macro.
#[test]
fn prefix_check_catches_every_kind_of_declaration() {
    let h = r#"
/**
 * A doc comment mentioning bad_in_comment(int);
 */
#define POSTCOPY_RS_OK 1
#define BAD_MACRO 2
#ifdef __cplusplus
extern "C" {
#endif
typedef enum {
  POSTCOPY_RS_FINE = 0,
  /**
   * A variant without the prefix.
   */
  BAD_VARIANT = 1,
} PostcopyRsEnum;
typedef struct bad_tag {
  int member_is_fine;
  void (*callback_is_fine)(void *opaque,
                           int x);
} PostcopyRsStruct;
typedef struct {
  uint64_t a;
} BadTypedef
  ;
typedef void (*bad_fn_ptr)(int level,
                           const char *msg);
int64_t
bad_multi_line_function(unsigned long *bmap,
                        uint64_t nr_pages);
int postcopy_rs_fine(const PostcopyRsStruct *s);
#ifdef __cplusplus
} /* extern "C" */
#endif
"#;
    let bad = unprefixed(&declared_names(h));
    assert_eq!(
        bad,
        [
            "BAD_MACRO",
            "BAD_VARIANT",
            "bad_tag",
            "BadTypedef",
            "bad_fn_ptr",
            "bad_multi_line_function"
        ]
    );
}
