#!/usr/bin/env bash
# Journal at scale: ten years of weekly backups of five subvolumes (2,600 runs) in one
# journal, and the time `status` and the planning phase of `backup` take on it.
#   sudo scripts/bench-journal-scale.sh [--parts N]
# Builds two journals with tests/src/bin/journal_scale.rs: the worst case, where every run
# kept its 10,000 part records (26 million; a journal never compacted), and the journal this
# format really keeps (closing a run drops its chunk and part records). For each: the
# journal's size, opening it plus planning (in-process, median of 5), and the real binary's
# `status --json` against a local garage (wall time, median of 5).
# Results: run/bench/journal-scale.json. Numbers, not assertions: not part of the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
parts=10000
while [ $# -gt 0 ]; do
  case "$1" in
    --parts) parts="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
W="${BTRFS_TO_S3_BENCH_DIR:-/var/tmp/btrfs-to-s3-journal-scale}"
OUT="$PWD/run/bench"; mkdir -p "$OUT"
bash scripts/install-deps.sh --no-moto
cargo build --quiet --release -p btrfs-to-s3 -p btrfs-to-s3-tests --bin btrfs-to-s3 --bin journal_scale
T="${CARGO_TARGET_DIR:-$PWD/target}"
BIN="$T/release/btrfs-to-s3"
GEN="$T/release/journal_scale"
cleanup() { scripts/garage-local.sh stop "$W/garage" || true; rm -rf "$W"; }
trap cleanup EXIT
rm -rf "$W"; mkdir -p "$W"
eval "$(scripts/garage-local.sh start "$W/garage")"
results="[]"
for mode in full compacted; do
  state="$W/state-$mode"; mkdir -p "$state" "$W/snapshots"
  flag=""; [ $mode = compacted ] && flag="--compacted"
  gen_start=$(date +%s.%N)
  "$GEN" "$state/journal.redb" --parts "$parts" $flag > "$OUT/scale-$mode.json"
  gen_s=$(python3 -c "import time; print(round(time.time() - $gen_start, 1))")
  cat > "$W/config-$mode.toml" <<CONF
snapshot_dir = "$W/snapshots"
state_dir = "$state"
$(for i in 0 1 2 3 4; do printf '[[subvolumes]]\nname = "vol%s"\npath = "/pool/vol%s"\n' $i $i; done)
[s3]
bucket = "$S3_BUCKET"
endpoint = "$S3_ENDPOINT"
path_style = true
provider = "garage"
prefix = "p"
sse = "none"
CONF
  times=""
  for _ in 1 2 3 4 5; do
    s=$(date +%s%N)
    "$BIN" --config "$W/config-$mode.toml" --json status > "$OUT/status-$mode.json"
    e=$(date +%s%N)
    times="$times $(( (e - s) / 1000 ))"
  done
  results=$(python3 - "$results" "$OUT/scale-$mode.json" "$gen_s" $times <<'PY'
import json, sys, statistics
results = json.loads(sys.argv[1]); r = json.load(open(sys.argv[2]))
r["generate_s"] = float(sys.argv[3])
r["status_ms"] = round(statistics.median(int(t) for t in sys.argv[4:]) / 1000, 1)
results.append(r); print(json.dumps(results))
PY
)
done
echo "$results" > "$OUT/journal-scale.json"
python3 - "$OUT/journal-scale.json" <<'PY'
import json, sys
print("| journal | runs | part records | size | open + plan 5 subvolumes | `status` (process, S3 included) |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for r in json.load(open(sys.argv[1])):
    kind = "compacted (as this format keeps it)" if r["compacted"] else "every part record kept (worst case)"
    print(f'| {kind} | {r["runs"]} | {r["part_records"]:,} | {r["journal_bytes"]/2**20:,.1f} MiB | {r["planning_ms"]} ms | {r["status_ms"]} ms |')
PY
