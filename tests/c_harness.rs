// SPDX-License-Identifier: GPL-2.0-or-later
//! Builds the C programs under tests/c/ against the committed header and
//! the static library, exactly as a C embedder would, and runs them:
//! plainly, under valgrind memcheck, and built with `AddressSanitizer`.

use std::path::PathBuf;
use std::process::Command;

const NATIVE_LIBS: &[&str] = &[
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The static library cargo built for this test run.
///
/// `cargo test` builds the lib (all its crate types) into target/<profile>/deps
/// under a hash and does not refresh the uplifted target/<profile>/`libpostcopy_rs.a`,
/// so take the newest hashed one: it was built from the current source.
fn staticlib() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("deps dir");
    std::fs::read_dir(deps)
        .expect("read deps dir")
        .filter_map(std::result::Result::ok)
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("libpostcopy_rs-") && n.ends_with(".a")
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
        .unwrap_or_else(|| panic!("no libpostcopy_rs-*.a in {}", deps.display()))
}

fn compile(name: &str, sources: &[&str], extra: &[&str]) -> PathBuf {
    let target = env!("POSTCOPY_RS_TARGET");
    let compiler = cc::Build::new()
        .cargo_metadata(false)
        .opt_level(1)
        .host(target)
        .target(target)
        .get_compiler();
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c");
    std::fs::create_dir_all(&out_dir).unwrap();
    let exe = out_dir.join(name);
    let mut cmd = compiler.to_command();
    // -Wredundant-decls as QEMU builds: the header must not re-declare
    // what QEMU's own headers (mimicked by fake_qemu.h) declare.
    cmd.args([
        "-std=gnu11",
        "-g",
        "-Wall",
        "-Wextra",
        "-Wredundant-decls",
        "-Werror",
        "-pthread",
    ])
    .arg("-I")
    .arg(manifest().join("include"))
    .arg("-I")
    .arg(manifest().join("tests/c"))
    .args(extra);
    for s in sources {
        cmd.arg(manifest().join("tests/c").join(s));
    }
    cmd.arg(staticlib()).args(NATIVE_LIBS).arg("-o").arg(&exe);
    let out = cmd.output().expect("failed to run the C compiler");
    assert!(
        out.status.success(),
        "compiling {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn run(what: &str, mut cmd: Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("all checks passed"),
        "{what}: no verdict:\n{stdout}"
    );
}

fn valgrind_available() -> bool {
    let ok = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var_os("POSTCOPY_RS_ALLOW_NO_VALGRIND").is_none() {
        panic!(
            "valgrind is not installed: run `make deps` (or set POSTCOPY_RS_ALLOW_NO_VALGRIND=1)"
        );
    }
    ok
}

fn check_program(name: &str, sources: &[&str]) {
    let exe = compile(name, sources, &[]);
    run(name, Command::new(&exe));

    if valgrind_available() {
        let mut vg = Command::new("valgrind");
        vg.args([
            "--tool=memcheck",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--quiet",
        ])
        .arg(&exe);
        run(&format!("{name} under valgrind"), vg);
    } else {
        eprintln!("WARNING: valgrind not installed; {name} not checked under memcheck");
    }

    let asan = compile(
        &format!("{name}-asan"),
        sources,
        &["-fsanitize=address", "-fno-omit-frame-pointer"],
    );
    let mut cmd = Command::new(&asan);
    cmd.env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0");
    run(&format!("{name} with ASan"), cmd);
}

#[test]
fn c_discard_harness() {
    check_program("test_discard", &["test_discard.c", "fake_qemu.c"]);
}

#[test]
fn c_dest_harness() {
    check_program("test_dest", &["test_dest.c", "fake_qemu.c"]);
}

/// The header's `POSTCOPY_RS_ABI_VERSION` is what the library's
/// `postcopy_rs_abi_version()` returns, its structs can be
/// forward-declared, and their layouts are this version's.
#[test]
fn c_version_harness() {
    check_program("test_version", &["test_version.c"]);
}

/// The README's link line, verbatim: the `cc` line in its "Using the
/// library from C" section.
fn readme_link_line() -> Vec<String> {
    let readme = std::fs::read_to_string(manifest().join("README.md")).expect("README.md");
    let line = readme
        .lines()
        .find(|l| l.starts_with("cc ") && l.contains("examples/standalone.c"))
        .expect("README.md has no `cc ... examples/standalone.c ...` line");
    line.split_whitespace().map(str::to_string).collect()
}

/// examples/standalone.c, built with exactly the README's command (only
/// the library's path and the output name differ: this test's build of
/// the library, in cargo's target directory) and no fake QEMU, must link
/// and run: the library imports nothing from its embedder.
#[test]
fn c_standalone_example_links_without_qemu() {
    let args = readme_link_line();
    let lib = "target/release/libpostcopy_rs.a";
    assert!(
        args.iter().any(|a| a == lib),
        "the README's line does not link {lib}: {args:?}"
    );
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c");
    std::fs::create_dir_all(&out_dir).unwrap();
    let exe = out_dir.join("standalone");
    let mut cmd = Command::new(&args[0]);
    let mut rest = args[1..].iter();
    while let Some(a) = rest.next() {
        if a == lib {
            cmd.arg(staticlib());
        } else if a == "-o" {
            rest.next();
            cmd.arg("-o").arg(&exe);
        } else {
            cmd.arg(a);
        }
    }
    cmd.current_dir(manifest());
    let out = cmd.output().expect("failed to run cc");
    assert!(
        out.status.success(),
        "the README's link line failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run("examples/standalone.c", Command::new(&exe));
    // Nothing in the library is left for an embedder to define: every
    // symbol its objects need and none of them defines comes from the
    // system libraries, none is QEMU's or ours.
    let symbols = |flag: &str| -> std::collections::HashSet<String> {
        let listed = Command::new("nm")
            .args([flag, "--format=just-symbols"])
            .arg(staticlib())
            .output()
            .expect("nm");
        assert!(listed.status.success(), "nm {flag} failed");
        String::from_utf8_lossy(&listed.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };
    let defined = symbols("--defined-only");
    let mut imports: Vec<String> = symbols("--undefined-only")
        .into_iter()
        .filter(|s| !defined.contains(s))
        .filter(|s| s.contains("postcopy") || s.contains("qemu") || s.contains("ram_"))
        .collect();
    imports.sort();
    assert!(
        imports.is_empty(),
        "the library imports embedder symbols: {imports:?}"
    );
}
