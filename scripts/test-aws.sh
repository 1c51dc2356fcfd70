#!/usr/bin/env bash
# Opt-in end-to-end tests against real AWS S3 (never in CI). Costs a few cents.
#   BTRFS_TO_S3_AWS_CONFIG=aws-test.toml AWS_PROFILE=... sudo -E scripts/test-aws.sh
# aws-test.toml:  bucket = "my-test-bucket"   region = "eu-west-1"   prefix = "btrfs-to-s3-tests"
# Each test writes under <prefix>/<unique>/ and removes that prefix when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BTRFS_TO_S3_AWS_CONFIG:?set BTRFS_TO_S3_AWS_CONFIG to a TOML file with bucket, region, prefix}"
bash scripts/install-deps.sh --no-garage --no-moto
cargo build --quiet -p btrfs-to-s3
cargo nextest run -p btrfs-to-s3-tests --run-ignored ignored-only -E 'test(/^aws_/)' --no-fail-fast
