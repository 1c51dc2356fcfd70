#!/usr/bin/env bash
# The test command: installs what the tests need (once), checks format and lints, builds
# the binaries under test, and runs every test. Needs root (loop devices, mount).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
# The end-to-end tests run the real binary; the crash tests run one built with failpoints.
cargo build --quiet -p btrfs-to-s3 --features failpoints
cp target/debug/btrfs-to-s3 target/debug/btrfs-to-s3-failpoints
cargo build --quiet -p btrfs-to-s3
# The S3 fault proxy's binary, for the benchmark's smoke test (tests/tests/bench_peers.rs).
cargo build --quiet -p btrfs-to-s3-fault-injection --bin s3-fault-proxy
# The Debian package of this debug build, for tests/tests/package.rs (dpkg installs it).
bash scripts/package.sh --debug > /dev/null
cargo nextest run --workspace --no-fail-fast "$@"
