#!/usr/bin/env bash
# The long fuzz run: a million mutants (or $1) for each parser of what the tool reads back —
# manifests and pointers, the config file, journal records, the restore journal, send streams
# and file indexes. The normal test run does 3,000 each. Prints each target's count; any
# panic fails the run.
#   scripts/fuzz.sh [CASES] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
export FUZZ_CASES="${1:-1000000}" FUZZ_SEED="${2:-1592696333}"
cargo nextest run --workspace --no-fail-fast --no-capture -E 'test(/fuzz_/)' 2>&1 |
  grep -E "mutants|PASS|FAIL|Summary|panicked"
