#!/usr/bin/env bash
# btrfs-to-s3 against s5cmd, the AWS CLI v2 and rclone, with the machine's ceilings, in one
# run (scripts/bench_peers.py says what is measured and how). Installs the peers, builds the
# release binary, then runs the benchmark; the arguments go to bench_peers.py:
#   sudo scripts/bench-peers.sh [--sizes 1,8] [--repeat 3]   -> run/bench/peers.{md,json}
#   sudo scripts/bench-peers.sh --quick                       -> a 64 MiB smoke run
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --bench
cargo build --quiet --release -p btrfs-to-s3
cargo build --quiet --release -p btrfs-to-s3-fault-injection --bin s3-fault-proxy
exec python3 scripts/bench_peers.py "$@"
