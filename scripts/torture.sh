#!/usr/bin/env bash
# The long torture run (harness::torture): backups, resumes and restores under random
# SIGKILLs, random faults on the link and garage kills, each iteration's end state proven.
# A failure prints its iteration and the seed that replays it.
#   sudo scripts/torture.sh                       # 1000 iterations, seed from the clock
#   sudo scripts/torture.sh --iterations 50 --seed 7 [--json]
# (The kill-only torture of tests/tests/kill_torture.rs, on garage and moto, takes
#  BTRFS_TO_S3_TORTURE_ITERATIONS=N.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --quiet -p btrfs-to-s3 -p btrfs-to-s3-tests --bin btrfs-to-s3 --bin torture
args=("$@")
[ "${#args[@]}" -eq 0 ] && args=(--iterations 1000)
exec target/debug/torture "${args[@]}"
