// SPDX-License-Identifier: GPL-2.0-or-later
//! No module of src/ reaches itself through its imports: the core never
//! depends on the C ABI that wraps it, and no two modules lean on each
//! other.  An import is any `crate::` or `super::` path outside comments
//! and test modules (in a `use` or inline), and any relative `use` of a
//! child module; it points at the deepest module file the path names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`["ffi", "dest"]`; the crate root is `[]`) of each file.
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(src.to_path_buf(), Vec::<String>::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read src dir") {
            let p = e.expect("dir entry").path();
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                let mut m = prefix.clone();
                m.push(name);
                stack.push((p, m));
            } else if p.extension().is_some_and(|x| x == "rs") {
                let mut m = prefix.clone();
                if !matches!(name.as_str(), "mod" | "lib") {
                    m.push(name);
                }
                out.insert(m, p);
            }
        }
    }
    out
}

/// The code of a file without comments, string contents and `#[cfg(test)]`
/// modules.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<usize> = None;
    let mut depth = 0usize;
    let mut pending_test = false;
    for line in text.lines() {
        let line = line.split("//").next().unwrap_or("");
        let t = line.trim();
        if t.starts_with("#[cfg(test)]") {
            pending_test = true;
            continue;
        }
        let opens = line.matches('{').count();
        let closes = line.matches('}').count();
        if pending_test && !t.is_empty() {
            pending_test = false;
            if t.starts_with("mod ") && opens > closes {
                skip_depth = Some(depth);
            }
        }
        depth = (depth + opens).saturating_sub(closes);
        if let Some(d) = skip_depth {
            if depth <= d {
                skip_depth = None;
            }
            continue;
        }
        // String literals: drop their contents (a message may say `crate::`).
        let mut in_str = false;
        for c in line.chars() {
            if c == '"' {
                in_str = !in_str;
                out.push(c);
            } else if !in_str {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// Every path a file imports, as written (`crate::ffi::misc::X`,
/// `super::handles`, `dest::*` for a relative `use`), with `use` trees
/// expanded.
fn paths_of(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    // `use` statements, whole, with their braces expanded.
    let mut rest = code;
    while let Some(i) = find_word(rest, "use") {
        let stmt_start = &rest[i + 3..];
        let end = stmt_start.find(';').unwrap_or(stmt_start.len());
        let mut tree = stmt_start[..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        for sep in ["::", "{", "}", ","] {
            tree = tree
                .replace(&format!(" {sep}"), sep)
                .replace(&format!("{sep} "), sep);
        }
        expand("", &tree, &mut paths);
        rest = &stmt_start[end..];
    }
    // Inline paths: `crate::a::b` and `super::a` anywhere else.
    for start in ["crate::", "super::"] {
        let mut s = code;
        while let Some(i) = s.find(start) {
            let before = s[..i].chars().next_back();
            let tail = &s[i..];
            let len = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            let path = tail[..len].trim_end_matches(':');
            // A bare `crate::{...}` is a `use` tree, read above.
            let bare = matches!(path, "crate" | "super");
            if !bare
                && !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == ':')
            {
                paths.push(path.to_string());
            }
            s = &tail[len.max(1)..];
        }
    }
    paths
}

fn find_word(s: &str, w: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find(w) {
        let at = from + i;
        let before = s[..at].chars().next_back();
        let after = s[at + w.len()..].chars().next();
        if !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            && after.is_some_and(char::is_whitespace)
        {
            return Some(at);
        }
        from = at + w.len();
    }
    None
}

/// Expand a `use` tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let join = |p: &str, q: &str| {
        if p.is_empty() {
            q.to_string()
        } else {
            format!("{p}::{q}")
        }
    };
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim_end_matches("::");
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let base = join(prefix, head);
        let mut depth = 0;
        let mut part = String::new();
        for c in inner.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&base, &part, out);
                    part.clear();
                    continue;
                }
                _ => {}
            }
            part.push(c);
        }
        if !part.is_empty() {
            expand(&base, &part, out);
        }
    } else {
        let t = tree.split(" as ").next().unwrap_or(tree);
        out.push(join(prefix, t.trim_end_matches("::self")));
    }
}

/// The module file a path from module `from` names, if any of the crate.
fn target(
    from: &[String],
    path: &str,
    mods: &BTreeMap<Vec<String>, PathBuf>,
) -> Option<Vec<String>> {
    let mut parts = path.split("::").filter(|p| !p.is_empty());
    let first = parts.next()?;
    let mut m: Vec<String> = match first {
        "crate" => Vec::new(),
        "super" => from[..from.len().checked_sub(1)?].to_vec(),
        "self" => from.to_vec(),
        // A relative `use` only counts when it names a child module.
        child => {
            let mut c = from.to_vec();
            c.push(child.to_string());
            if !mods.contains_key(&c) {
                return None;
            }
            c
        }
    };
    for p in parts {
        if p == "super" {
            m.pop();
            continue;
        }
        let mut deeper = m.clone();
        deeper.push(p.to_string());
        if mods.contains_key(&deeper) {
            m = deeper;
        } else {
            break;
        }
    }
    Some(m)
}

type Graph = BTreeMap<String, BTreeSet<String>>;

fn graph(src: &Path) -> Graph {
    let mods = modules(src);
    let name = |m: &[String]| {
        mods[m]
            .strip_prefix(src.parent().unwrap())
            .unwrap()
            .display()
            .to_string()
    };
    let mut g = Graph::new();
    for (m, file) in &mods {
        let text = std::fs::read_to_string(file).expect("read source");
        let edges = g.entry(name(m)).or_default();
        for p in paths_of(&code_of(&text)) {
            if let Some(t) = target(m, &p, &mods) {
                if &t != m {
                    edges.insert(name(&t));
                }
            }
        }
    }
    g
}

/// Every module that reaches itself, with one circle through it.
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    let mut found: Vec<Vec<String>> = Vec::new();
    for start in g.keys() {
        // Breadth-first from `start`'s imports back to `start`.
        let mut prev: BTreeMap<&String, &String> = BTreeMap::new();
        let mut queue: std::collections::VecDeque<&String> = g[start].iter().collect();
        for n in &queue {
            prev.insert(n, start);
        }
        while let Some(n) = queue.pop_front() {
            if n == start {
                let mut circle = vec![start.clone()];
                let mut at = prev[start];
                while at != start {
                    circle.push(at.clone());
                    at = prev[at];
                }
                circle.reverse();
                // The same circle from another of its modules: report once.
                let mut key = circle.clone();
                key.sort();
                if !found.iter().any(|c| {
                    let mut k = c.clone();
                    k.sort();
                    k == key
                }) {
                    found.push(circle);
                }
                break;
            }
            for m in g.get(n).into_iter().flatten() {
                if !prev.contains_key(m) {
                    prev.insert(m, n);
                    queue.push_back(m);
                }
            }
        }
    }
    found
}

#[test]
fn src_has_no_import_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    // The reader sees what it must: the ffi layer imports the core.
    assert!(
        g["src/ffi/dest.rs"].contains("src/placement.rs"),
        "the import reader missed src/ffi/dest.rs -> src/placement.rs: {g:#?}"
    );
    let found = cycles(&g);
    assert!(
        found.is_empty(),
        "import cycles in src/ (each: a module, what it imports, ... back to it): {found:#?}"
    );
}

/// The reader and the cycle search catch what they are for: a cycle
/// through a `use` tree, one through an inline path, and a parent that
/// re-exports a child which imports it back; not test modules, comments
/// or strings.
#[test]
fn cycle_check_catches_cycles() {
    let dir = std::env::temp_dir().join(format!("pcrs-module-graph-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("ffi")).unwrap();
    let files = [
        ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\npub mod ffi;\n"),
        ("a.rs", "use crate::{b::{self, X}, c as _};\n"),
        ("b.rs", "fn f() { crate::a::g(); }\n"),
        (
            "c.rs",
            "// use crate::b;\nfn s() { let _ = \"crate::b\"; }\n#[cfg(test)]\nmod tests {\n    use crate::ffi;\n}\n",
        ),
        ("ffi/mod.rs", "mod dest;\npub use dest::*;\npub fn helper() {}\n"),
        ("ffi/dest.rs", "use super::helper;\nuse crate::c;\n"),
    ];
    for (f, text) in files {
        std::fs::write(src.join(f), text).unwrap();
    }
    let g = graph(&src);
    let mut found = cycles(&g);
    found.iter_mut().for_each(|c| c.sort());
    found.sort();
    assert_eq!(
        found,
        [
            vec!["src/a.rs".to_string(), "src/b.rs".to_string()],
            vec!["src/ffi/dest.rs".to_string(), "src/ffi/mod.rs".to_string()],
        ]
    );
    assert!(g["src/c.rs"].is_empty(), "{g:#?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
