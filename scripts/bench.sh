#!/usr/bin/env bash
# Backup benchmark on the local setup: throughput and peak memory of `btrfs-to-s3 backup`
# for ~1 GiB and ~4 GiB send streams into a local garage, beside `btrfs send | s5cmd pipe`
# into the same server. Results: run/bench/results.json and a table on stdout.
#   sudo scripts/bench.sh [--sizes "1 4"] [--repeat N]
#   sudo scripts/bench.sh --journal-overhead [--sizes 1] [--repeat 3]
#     compares the same backups with a benchmark-only build whose journal is in memory
#     (feature bench-no-journal): the cost of durable journaling.
#   sudo scripts/bench.sh --incremental
#     full backup of ~1 GiB, then 1% of it changed, then an incremental: bytes uploaded
#     against the size of the `btrfs send -p` stream.
#   sudo scripts/bench.sh --restore [--repeat N]
#     restore of the ~1 GiB full backup beside `s5cmd cat` of the same chunk objects piped
#     into `btrfs receive`: MiB/s and peak memory.
#   sudo scripts/bench.sh --flaky-link [--repeat N]
#     a 128 MiB full backup (5 MiB parts) direct to garage, then through s3-fault-proxy capped at 2 MiB/s
#     with 100 ms added latency, then the same with 5 % of requests failing (503, 500, reset):
#     MiB/s of each beside the cap, faults injected, exit code.
# Needs root. Uses a release build. Not part of the tests (numbers, not assertions).
set -euo pipefail
cd "$(dirname "$0")/.."
sizes="1 4"; repeat=1; overhead=0; incremental=0; restore=0; flaky=0
while [ $# -gt 0 ]; do
  case "$1" in
    --restore) restore=1; sizes=1; shift ;;
    --flaky-link) flaky=1; sizes=1; shift ;;
    --incremental) incremental=1; sizes=1; shift ;;
    --journal-overhead) overhead=1; shift ;;
    --sizes) sizes="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
TOOLS="${BTRFS_TO_S3_TOOLS:-/opt/btrfs-to-s3-tools}"
W="${BTRFS_TO_S3_BENCH_DIR:-/var/tmp/btrfs-to-s3-bench}"
OUT="$PWD/run/bench"; mkdir -p "$OUT"
bash scripts/install-deps.sh --bench
if [ $overhead = 1 ]; then
  cargo build --quiet --release -p btrfs-to-s3 --features bench-no-journal
  cp target/release/btrfs-to-s3 target/release/btrfs-to-s3-nojournal
fi
cargo build --quiet --release -p btrfs-to-s3
BIN="$PWD/target/release/btrfs-to-s3"
S5="$TOOLS/venv/bin/s5cmd"

cleanup() {
  scripts/garage-local.sh stop "$W/garage" || true
  umount "$W/mnt" 2>/dev/null || true
  [ -n "${LOOP:-}" ] && losetup -d "$LOOP" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
umount "$W/mnt" 2>/dev/null || true
for dev in $(losetup -j "$W/fs.img" -O NAME -n 2>/dev/null); do losetup -d "$dev"; done
rm -rf "$W"; mkdir -p "$W/mnt"
total_gib=0; for s in $sizes; do total_gib=$((total_gib + s)); done
truncate -s $(( (total_gib + 2) * 2 ))G "$W/fs.img"
LOOP=$(losetup --find --show "$W/fs.img")
mkfs.btrfs -q "$LOOP"; mount "$LOOP" "$W/mnt"
eval "$(scripts/garage-local.sh start "$W/garage")"

if [ $flaky = 1 ]; then
  cargo build --quiet --release -p btrfs-to-s3-fault-injection --bin s3-fault-proxy
  PROXY="$PWD/target/release/s3-fault-proxy"
  sv="$W/mnt/vol128m"; btrfs subvolume create "$sv" > /dev/null
  for i in $(seq 1 8); do head -c 16M /dev/urandom > "$sv/blob$i"; done
  sync
  upstream="${S3_ENDPOINT#http://}"
  results="[]"
  for r in $(seq 1 "$repeat"); do
    for mode in clean capped capped-failing; do
      endpoint="$S3_ENDPOINT"; proxy_pid=""
      if [ $mode != clean ]; then
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        rules=()
        [ $mode = capped-failing ] && rules=(--rule fault=503,p=0.02 --rule fault=500,p=0.02 --rule fault=reset,p=0.0102)
        "$PROXY" --upstream "$upstream" --listen "127.0.0.1:$port" --latency-ms 100 \
          --bandwidth $((2 << 20)) --seed "$r" "${rules[@]}" 2> "$OUT/proxy-$mode.log" &
        proxy_pid=$!
        endpoint="http://127.0.0.1:$port"
        for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
      fi
      cat > "$W/config.toml" <<CONF
snapshot_dir = "$W/mnt/.snapshots"
state_dir = "$W/state"
[[subvolumes]]
name = "vol128m"
path = "$sv"
[s3]
bucket = "$S3_BUCKET"
endpoint = "$endpoint"
path_style = true
provider = "garage"
prefix = "bench-link-$mode-$r"
sse = "none"
chunk_size = "1GiB"
part_size = "5MiB"
concurrency = 4
[schedule]
incremental_every_days = 0
CONF
      set +e
      /usr/bin/time -f "%M %e" -o "$OUT/time.txt" "$BIN" --config "$W/config.toml" --quiet backup --json > "$OUT/run.json"
      code=$?
      set -e
      [ -n "$proxy_pid" ] && kill "$proxy_pid" && wait "$proxy_pid" 2>/dev/null || true
      read -r rss_kib wall < "$OUT/time.txt"
      faults=0; [ -f "$OUT/proxy-$mode.log" ] && [ $mode != clean ] && faults=$(grep -c '"fault"' "$OUT/proxy-$mode.log" || true)
      results=$(python3 - "$results" "$OUT/run.json" <<PY
import json, sys
r = json.loads(sys.argv[1])
try:
    run = json.load(open(sys.argv[2]))["runs"][0]
    total = run["total_bytes"]
except Exception:
    total = 0
r.append({"mode": "$mode", "repeat": $r, "exit_code": $code, "stream_mib": round(total / 2**20, 1),
  "wall_s": $wall, "mib_s": round(total / 2**20 / $wall, 2), "cap_mib_s": None if "$mode" == "clean" else 2.0,
  "latency_ms": 0 if "$mode" == "clean" else 100, "faults_injected": $faults,
  "peak_rss_mib": round($rss_kib / 1024, 1)})
print(json.dumps(r))
PY
)
      snap=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["runs"][0]["snapshot"])' "$OUT/run.json" 2>/dev/null || true)
      [ -n "$snap" ] && btrfs subvolume delete "$snap" > /dev/null
      rm -rf "$W/state"
    done
  done
  echo "$results" > "$OUT/flaky-link.json"
  python3 -c '
import json, sys
for r in json.load(open(sys.argv[1])):
    print("{mode:15} exit {exit_code}  {stream_mib} MiB in {wall_s} s = {mib_s} MiB/s  (cap {cap_mib_s}, latency {latency_ms} ms, faults {faults_injected}, peak {peak_rss_mib} MiB)".format(**r))
' "$OUT/flaky-link.json"
  exit 0
fi

results="[]"
for s in $sizes; do
  sv="$W/mnt/vol${s}g"
  btrfs subvolume create "$sv" > /dev/null
  # Incompressible data, a few large files and many small ones.
  for i in $(seq 1 $((s * 4))); do head -c 250M /dev/urandom > "$sv/blob$i"; done
  mkdir -p "$sv/small"; for i in $(seq 1 200); do head -c 20K /dev/urandom > "$sv/small/f$i"; done
  sync
  for r in $(seq 1 "$repeat"); do
    cat > "$W/config.toml" <<CONF
snapshot_dir = "$W/mnt/.snapshots"
state_dir = "$W/state"
[[subvolumes]]
name = "vol${s}g"
path = "$sv"
[s3]
bucket = "$S3_BUCKET"
endpoint = "$S3_ENDPOINT"
path_style = true
provider = "garage"
prefix = "bench"
sse = "none"
chunk_size = "1GiB"
part_size = "8MiB"
concurrency = 4
[schedule]
incremental_every_days = 0
CONF
    sync; echo 3 > /proc/sys/vm/drop_caches
    /usr/bin/time -f "%M %e" -o "$OUT/time.txt" "$BIN" --config "$W/config.toml" --quiet backup --json > "$OUT/run.json"
    read -r rss_kib wall < "$OUT/time.txt"
    bytes=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["runs"][0]["total_bytes"])' "$OUT/run.json")
    snap=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["runs"][0]["snapshot"])' "$OUT/run.json")
    if [ $restore = 1 ]; then
      mkey=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["runs"][0]["manifest_key"])' "$OUT/run.json")
      "$S5" --endpoint-url "$S3_ENDPOINT" cat "s3://$S3_BUCKET/$mkey" > "$OUT/manifest.json"
      mkdir -p "$W/mnt/r1" "$W/mnt/r2"
      sync; echo 3 > /proc/sys/vm/drop_caches
      /usr/bin/time -f "%M %e" -o "$OUT/time-r.txt" "$BIN" --config "$W/config.toml" --quiet restore --json \
        --subvolume "vol${s}g" --target "$W/mnt/r1" --verify none > "$OUT/restore.json"
      read -r r_rss r_wall < "$OUT/time-r.txt"
      keys=$(python3 -c 'import json,sys; print(" ".join(c["key"] for c in json.load(open(sys.argv[1]))["chunks"]))' "$OUT/manifest.json")
      sync; echo 3 > /proc/sys/vm/drop_caches
      /usr/bin/time -f "%M %e" -o "$OUT/time-rs5.txt" bash -c "for k in $keys; do '$S5' --endpoint-url '$S3_ENDPOINT' cat \"s3://$S3_BUCKET/\$k\"; done | btrfs receive -q '$W/mnt/r2'"
      read -r p_rss p_wall < "$OUT/time-rs5.txt"
      results=$(python3 - "$results" <<PY
import json, sys
r = json.loads(sys.argv[1])
mib = $bytes / 2**20
r.append({"stream_gib": round($bytes / 2**30, 3), "repeat": $r,
  "restore_mib_s": round(mib / $r_wall, 1), "restore_peak_rss_mib": round($r_rss / 1024, 1),
  "memory_limit_mib": (4 + 2) * 8 + 64,
  "s5cmd_cat_receive_mib_s": round(mib / $p_wall, 1), "s5cmd_cat_peak_rss_mib": round($p_rss / 1024, 1)})
print(json.dumps(r))
PY
)
      echo "$results" > "$OUT/restore-results.json"
      for d in "$W/mnt/r1"/* "$W/mnt/r2"/*; do btrfs subvolume delete "$d" > /dev/null; done
      btrfs subvolume delete "$snap" > /dev/null; rm -rf "$W/state"
      continue
    fi
    if [ $incremental = 1 ]; then
      # Change 1% of the data: 10 MiB rewritten in place across blobs, one small file added.
      python3 - "$sv" <<'PY'
import os, sys
root = sys.argv[1]
blobs = sorted(f for f in os.listdir(root) if f.startswith("blob"))
for i, name in enumerate(blobs):
    with open(os.path.join(root, name), "r+b") as f:
        f.seek((i * 37 << 20) % (200 << 20))
        f.write(os.urandom((10 << 20) // len(blobs)))
with open(os.path.join(root, "small", "new-file"), "wb") as f:
    f.write(os.urandom(4096))
PY
      sync; sleep 1
      "$BIN" --config "$W/config.toml" --quiet backup --json > "$OUT/run-inc.json"
      inc_snap=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["runs"][0]["snapshot"])' "$OUT/run-inc.json")
      send_p=$(btrfs send -q -p "$snap" "$inc_snap" | wc -c)
      python3 - "$OUT/run-inc.json" "$send_p" "$bytes" <<'PY' | tee "$OUT/incremental.json"
import json, sys
run = json.load(open(sys.argv[1]))["runs"][0]
send_p, full = int(sys.argv[2]), int(sys.argv[3])
print(json.dumps({"full_stream_bytes": full, "kind": run["kind"],
  "send_p_stream_bytes": send_p, "incremental_total_bytes": run["total_bytes"],
  "uploaded_chunk_bytes": run["uploaded_bytes"], "extra_bytes_over_stream": run["uploaded_bytes"] - send_p,
  "manifest_key": run["manifest_key"]}, indent=2))
PY
      continue
    fi
    if [ $overhead = 1 ]; then
      btrfs subvolume delete "$snap" > /dev/null; rm -rf "$W/state"
      sync; echo 3 > /proc/sys/vm/drop_caches
      /usr/bin/time -f "%M %e" -o "$OUT/time-nj.txt" target/release/btrfs-to-s3-nojournal --config "$W/config.toml" --quiet backup --json > "$OUT/run-nj.json"
      read -r nj_rss nj_wall < "$OUT/time-nj.txt"
      snap=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["runs"][0]["snapshot"])' "$OUT/run-nj.json")
      results=$(python3 - "$results" <<PY
import json, sys
r = json.loads(sys.argv[1])
mib = $bytes / 2**20
r.append({"stream_gib": round($bytes / 2**30, 3), "repeat": $r, "journal_mib_s": round(mib / $wall, 1),
  "no_journal_mib_s": round(mib / $nj_wall, 1), "overhead_pct": round(($wall - $nj_wall) / $nj_wall * 100, 2)})
print(json.dumps(r))
PY
)
      echo "$results" > "$OUT/journal-overhead.json"
      btrfs subvolume delete "$snap" > /dev/null; rm -rf "$W/state"
      continue
    fi
    # Peer: the same snapshot's send stream piped into s5cmd (defaults, then matched 8 MiB x 4).
    sync; echo 3 > /proc/sys/vm/drop_caches
    /usr/bin/time -f "%M %e" -o "$OUT/time-s5.txt" bash -c "btrfs send -q '$snap' | '$S5' --endpoint-url '$S3_ENDPOINT' pipe 's3://$S3_BUCKET/peer/vol${s}g-$r.bin'"
    read -r s5_rss s5_wall < "$OUT/time-s5.txt"
    sync; echo 3 > /proc/sys/vm/drop_caches
    /usr/bin/time -f "%M %e" -o "$OUT/time-s5m.txt" bash -c "btrfs send -q '$snap' | '$S5' --endpoint-url '$S3_ENDPOINT' pipe -c 4 -p 8 's3://$S3_BUCKET/peer/vol${s}g-$r-m.bin'"
    read -r s5m_rss s5m_wall < "$OUT/time-s5m.txt"
    results=$(python3 - "$results" <<PY
import json, sys
r = json.loads(sys.argv[1])
mib = $bytes / 2**20
r.append({"stream_gib": round($bytes / 2**30, 3), "repeat": $r,
  "tool_mib_s": round(mib / $wall, 1), "tool_wall_s": $wall, "tool_peak_rss_mib": round($rss_kib / 1024, 1),
  "memory_limit_mib": (4 + 2) * 8 + 64,
  "s5cmd_default_mib_s": round(mib / $s5_wall, 1), "s5cmd_default_peak_rss_mib": round($s5_rss / 1024, 1),
  "s5cmd_c4_p8_mib_s": round(mib / $s5m_wall, 1), "s5cmd_c4_p8_peak_rss_mib": round($s5m_rss / 1024, 1)})
print(json.dumps(r))
PY
)
    echo "$results" > "$OUT/results.json"
    btrfs subvolume delete "$snap" > /dev/null
    rm -rf "$W/state"
  done
done
if [ $restore = 1 ]; then
  cat "$OUT/restore-results.json"
elif [ $incremental = 1 ]; then
  echo "incremental: see $OUT/incremental.json"
elif [ $overhead = 1 ]; then
  python3 -c '
import json, statistics, sys
rows = json.load(open(sys.argv[1]))
for r in rows:
    print("{} GiB  with journal {} MiB/s  without {} MiB/s  overhead {}%".format(r["stream_gib"], r["journal_mib_s"], r["no_journal_mib_s"], r["overhead_pct"]))
print("median overhead: {}%".format(statistics.median(r["overhead_pct"] for r in rows)))
' "$OUT/journal-overhead.json"
else
  python3 scripts/bench_table.py "$OUT/results.json"
fi
