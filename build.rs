// SPDX-License-Identifier: GPL-2.0-or-later
//! Generates the C header with the pinned cbindgen into `OUT_DIR`.  The
//! committed copy in include/ is checked against it by
//! `tests/header.rs`; `make header` refreshes it.

fn main() {
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let out_dir = std::env::var("OUT_DIR").expect("OUT_DIR");
    println!("cargo:rerun-if-changed=src");
    // For tests/c_harness.rs, which asks the cc crate for the C compiler.
    println!(
        "cargo:rustc-env=POSTCOPY_RS_TARGET={}",
        std::env::var("TARGET").expect("TARGET")
    );
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let config =
        cbindgen::Config::from_file(format!("{crate_dir}/cbindgen.toml")).expect("cbindgen.toml");
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen failed to generate the header")
        .write_to_file(format!("{out_dir}/postcopy_rs.h"));
}
