#!/usr/bin/env bash
# The long interrupt-torture run: random SIGKILLs during backups, each followed by a resume
# that must publish every backup whole. Default 200 kills per S3 server.
#   sudo scripts/torture.sh [ITERATIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --quiet -p btrfs-to-s3
BTRFS_TO_S3_TORTURE_ITERATIONS="${1:-200}" \
  cargo nextest run -p btrfs-to-s3-tests --test kill_torture --no-capture --no-fail-fast
