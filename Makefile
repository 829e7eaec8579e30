# SPDX-License-Identifier: GPL-2.0-or-later
# Front door.  `make test` is the test command CI runs (.ci/run calls it).
.PHONY: all build install header test test-sanitizers bench bench-e2e clean demo chain

# Where `make install` puts the library, header and pkg-config file; QEMU's
# build finds it with PKG_CONFIG_PATH=$(PREFIX)/lib/pkgconfig.
PREFIX ?= $(CURDIR)/build/prefix
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
# What the static library needs from the system (cargo rustc --print
# native-static-libs), minus libc which every link has.
NATIVE_LIBS := -lgcc_s -lutil -lrt -lpthread -lm -ldl
# Where cargo builds: target/, or wherever CARGO_TARGET_DIR (or a cargo
# config's build.target-dir) says.  Deferred (=): only install and header
# ask cargo.
TARGET_DIR = $(shell cargo metadata --format-version 1 --no-deps | \
	sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')

all: build

build: Cargo.lock
	cargo build --release --locked

# The pinned crate versions (scripts/cargo-lock.sh says why a template).
Cargo.lock: scripts/Cargo.lock.pinned
	scripts/cargo-lock.sh

# install -C copies only what changed and leaves the rest untouched: a new
# timestamp on the header would make QEMU's ninja recompile every file that
# includes it (minutes), for nothing.
install: build
	install -C -D -m 0644 "$(TARGET_DIR)/release/libpostcopy_rs.a" $(PREFIX)/lib/libpostcopy_rs.a
	install -C -D -m 0644 include/postcopy_rs.h $(PREFIX)/include/postcopy_rs.h
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' \
	    -e 's|@NATIVE_LIBS@|$(NATIVE_LIBS)|' postcopy-rs.pc.in > "$(TARGET_DIR)/postcopy-rs.pc"
	install -C -D -m 0644 "$(TARGET_DIR)/postcopy-rs.pc" $(PREFIX)/lib/pkgconfig/postcopy-rs.pc

# Refresh the committed header from the source (pinned cbindgen, via build.rs).
header:
	cargo build
	cp "$$(ls -t "$(TARGET_DIR)"/debug/build/postcopy-rs-*/out/postcopy_rs.h | head -n1)" include/postcopy_rs.h

test:
	scripts/test.sh

# The patched QEMU 10.2.2 built with ASan and UBSan (and the library with
# ASan), through every postcopy qtest, the hugepage e2e scenarios and a
# network cut; any sanitizer report fails it (scripts/test-sanitizers.sh).
# Not part of `make test`: too long for its budget.
test-sanitizers:
	scripts/test-sanitizers.sh

# The main command: build the library and a patched QEMU, boot a Linux guest,
# live-migrate it with postcopy and show what happened (scripts/demo.sh).
# Options for scripts/migrate.py go in ARGS, e.g. ARGS="--hugepages 2M".
demo:
	scripts/demo.sh $(ARGS)

# A migration chain: the demo's guest along 10 hops, each to a new QEMU, one
# cut mid-postcopy, one first refused (page sizes), one first cancelled; it
# fails unless every hop verifies and no QEMU's fd or thread count grows.
chain:
	scripts/demo.sh --chain 10 $(ARGS)

# Both benchmarks, then docs/BENCHMARKS.md from their results (run it on a
# quiet machine: every figure is a ratio to a baseline of the same run).
bench:
	cargo bench --bench discard
	cargo bench --bench fault
	python3 scripts/cargo-bench-report.py > docs/BENCHMARKS.generated.md
	@echo "docs/BENCHMARKS.generated.md written; merge it into docs/BENCHMARKS.md"

# Postcopy end to end, patched against unpatched QEMU 10.2.2 on the demo's
# Linux guest, by default over a link shaped at 512mbit with no QEMU cap
# (ARGS="--mode qemu-cap": QEMU's max-postcopy-bandwidth instead); the report
# goes into docs/BENCHMARKS.md (scripts/bench-e2e.sh). Options for
# scripts/bench-e2e.py in ARGS, e.g. ARGS="--patterns seq --runs 9";
# ARGS=--quick is the smoke test `make test` runs (the link mode, one cell).
bench-e2e:
	scripts/bench-e2e.sh $(ARGS)

clean:
	cargo clean
	rm -rf build
