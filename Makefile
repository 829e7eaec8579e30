# SPDX-License-Identifier: GPL-2.0-or-later
# Front door.  `make test` is the test command CI runs (.ci/run calls it).
.PHONY: all build header test test-rust lint bench clean

all: build

build:
	cargo build --release

# Refresh the committed header from the source (pinned cbindgen, via build.rs).
header:
	cargo build
	cp "$$(ls -t target/debug/build/postcopy-rs-*/out/postcopy_rs.h | head -n1)" include/postcopy_rs.h

test:
	scripts/test.sh

bench:
	cargo bench --bench discard

clean:
	cargo clean
	rm -rf build
