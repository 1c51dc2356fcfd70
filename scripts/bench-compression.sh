#!/usr/bin/env bash
# Compression and encryption benchmark. Two datasets: text (log lines and real source code,
# compressible) and random bytes (incompressible), each backed up with compression off and
# zstd (level 3), each in clear and sealed to an age recipient ([encryption]), full backups
# into a local garage: wall time, bytes stored, peak memory, and the restore's wall time. Then
# on a link capped at 10 MiB/s (s3-fault-proxy --bandwidth), beside `btrfs send | s5cmd pipe`
# through the same cap.
#   sudo scripts/bench-compression.sh [--mib 512] [--capped-mib 128] [--repeat 3]
#        [--datasets "text random"] [--modes "off zstd age zstd+age"] [--no-capped]
# Results: run/bench/compression.json and a table on stdout. Release build. Not a test.
set -euo pipefail
cd "$(dirname "$0")/.."
mib=512; capped_mib=128; repeat=3; datasets="text random"; modes="off zstd age zstd+age"; capped=yes
while [ $# -gt 0 ]; do
  case "$1" in
    --mib) mib="$2"; shift 2 ;;
    --capped-mib) capped_mib="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    --datasets) datasets="$2"; shift 2 ;;
    --modes) modes="$2"; shift 2 ;;
    --no-capped) capped=no; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
TOOLS="${BTRFS_TO_S3_TOOLS:-/opt/btrfs-to-s3-tools}"
W="${BTRFS_TO_S3_BENCH_DIR:-/var/tmp/btrfs-to-s3-bench-zstd}"
OUT="$PWD/run/bench"; mkdir -p "$OUT"
bash scripts/install-deps.sh --bench
cargo build --quiet --release -p btrfs-to-s3 -p btrfs-to-s3-fault-injection --bin btrfs-to-s3 --bin s3-fault-proxy
BIN="$PWD/target/release/btrfs-to-s3"
PROXY="$PWD/target/release/s3-fault-proxy"
S5="$TOOLS/venv/bin/s5cmd"

cleanup() {
  [ -n "${proxy_pid:-}" ] && kill "$proxy_pid" 2>/dev/null || true
  scripts/garage-local.sh stop "$W/garage" || true
  umount "$W/mnt" 2>/dev/null || true
  [ -n "${LOOP:-}" ] && losetup -d "$LOOP" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
umount "$W/mnt" 2>/dev/null || true
for dev in $(losetup -j "$W/fs.img" -O NAME -n 2>/dev/null); do losetup -d "$dev"; done
rm -rf "$W"; mkdir -p "$W/mnt"
truncate -s $(( (mib * 2 + capped_mib * 2) * 4 + 2048 ))M "$W/fs.img"
LOOP=$(losetup --find --show "$W/fs.img")
mkfs.btrfs -q "$LOOP"; mount "$LOOP" "$W/mnt"
eval "$(scripts/garage-local.sh start "$W/garage")"
mkdir -p "$W/mnt/.snapshots"

# shellcheck source=scripts/bench-datasets.sh
source scripts/bench-datasets.sh
make_random() {
  btrfs subvolume create "$1" > /dev/null
  head -c "$2"M /dev/urandom > "$1/random.bin"
}
for ds in $datasets; do "make_$ds" "$W/mnt/$ds" "$mib"; done
if [ "$capped" = yes ]; then
  make_text "$W/mnt/text-capped" "$capped_mib"
  make_random "$W/mnt/random-capped" "$capped_mib"
fi
sync

age-keygen -o "$W/age-key.txt" 2> /dev/null; chmod 600 "$W/age-key.txt"
RECIPIENT=$(age-keygen -y "$W/age-key.txt")
config() { # name path mode(off|zstd|age|zstd+age) endpoint prefix
  local comp=off; case "$3" in zstd*) comp=zstd ;; esac
  cat > "$W/config.toml" <<CONF
snapshot_dir = "$W/mnt/.snapshots"
state_dir = "$W/state"
compression = "$comp"
[[subvolumes]]
name = "$1"
path = "$2"
[s3]
bucket = "$S3_BUCKET"
endpoint = "$4"
path_style = true
provider = "garage"
prefix = "$5"
sse = "none"
chunk_size = "1GiB"
part_size = "8MiB"
concurrency = 4
[retention]
keep_local_snapshots = 1000
CONF
  case "$3" in *age) printf '[encryption]\nrecipients = ["%s"]\nidentity_file = "%s"\n' "$RECIPIENT" "$W/age-key.txt" >> "$W/config.toml" ;; esac
}

# One full backup; prints "wall rss stored stream snapshot manifest_key".
backup_once() {
  sync; echo 3 > /proc/sys/vm/drop_caches
  /usr/bin/time -f "%M %e %U %S" -o "$OUT/time.txt" "$BIN" --config "$W/config.toml" --quiet backup --full --json > "$OUT/run.json"
  read -r rss wall user sys < "$OUT/time.txt"
  python3 - "$OUT/run.json" "$wall" "$rss" "$user" "$sys" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))["runs"][0]
cpu = round(float(sys.argv[4]) + float(sys.argv[5]), 2)
print(sys.argv[2], sys.argv[3], run["total_bytes"], run["snapshot"], run["manifest_key"], cpu)
PY
}

results="[]"
add() { results=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r.append(json.loads(sys.argv[2])); print(json.dumps(r))' "$results" "$1"); }

for r in $(seq 1 "$repeat"); do
  for ds in $datasets; do
    for comp in $modes; do
      config "$ds" "$W/mnt/$ds" "$comp" "$S3_ENDPOINT" "bench-$ds-${comp/+/-}-$r"
      read -r wall rss stored snap mkey cpu < <(backup_once)
      "$S5" --endpoint-url "$S3_ENDPOINT" cat "s3://$S3_BUCKET/$mkey" > "$OUT/manifest.json"
      stream=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print((m.get("compression") or {}).get("stream_bytes", m["total_bytes"]))' "$OUT/manifest.json")
      mkdir -p "$W/mnt/restore"
      sync; echo 3 > /proc/sys/vm/drop_caches
      /usr/bin/time -f "%M %e" -o "$OUT/time-r.txt" "$BIN" --config "$W/config.toml" --quiet restore \
        --subvolume "$ds" --target "$W/mnt/restore" --verify none > /dev/null
      read -r r_rss r_wall < "$OUT/time-r.txt"
      for d in "$W/mnt/restore"/*; do btrfs subvolume delete "$d" > /dev/null; done
      btrfs subvolume delete "$snap" > /dev/null; rm -rf "$W/state"
      add "{\"link\": \"local\", \"dataset\": \"$ds\", \"contender\": \"btrfs-to-s3 $comp\", \"repeat\": $r,
        \"stream_mib\": $(python3 -c "print(round($stream / 2**20, 1))"), \"stored_mib\": $(python3 -c "print(round($stored / 2**20, 1))"),
        \"backup_wall_s\": $wall, \"backup_cpu_s\": $cpu, \"backup_peak_rss_mib\": $(python3 -c "print(round($rss / 1024, 1))"),
        \"restore_wall_s\": $r_wall, \"restore_peak_rss_mib\": $(python3 -c "print(round($r_rss / 1024, 1))")}"
      echo "$results" > "$OUT/compression.json"
    done
  done
done

# The capped link: 10 MiB/s through the proxy for the tool and for s5cmd.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$PROXY" --upstream "${S3_ENDPOINT#http://}" --listen "127.0.0.1:$port" --bandwidth $((10 << 20)) 2> "$OUT/proxy-capped.log" &
proxy_pid=$!
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
capped="http://127.0.0.1:$port"
for r in $(seq 1 "$repeat"); do
  [ "$capped" = yes ] || break
  for ds in text-capped random-capped; do
    for comp in off zstd zstd+age; do
      config "$ds" "$W/mnt/$ds" "$comp" "$capped" "bench-$ds-${comp/+/-}-$r"
      read -r wall rss stored snap mkey cpu < <(backup_once)
      add "{\"link\": \"10 MiB/s\", \"dataset\": \"$ds\", \"contender\": \"btrfs-to-s3 $comp\", \"repeat\": $r,
        \"stored_mib\": $(python3 -c "print(round($stored / 2**20, 1))"), \"backup_wall_s\": $wall,
        \"backup_peak_rss_mib\": $(python3 -c "print(round($rss / 1024, 1))")}"
      [ "$comp" = zstd ] && keep_snap="$snap" || btrfs subvolume delete "$snap" > /dev/null
      rm -rf "$W/state"
    done
    sync; echo 3 > /proc/sys/vm/drop_caches
    /usr/bin/time -f "%M %e" -o "$OUT/time-s5.txt" bash -c "btrfs send -q '$keep_snap' | '$S5' --endpoint-url '$capped' pipe 's3://$S3_BUCKET/peer/$ds-$r.bin'"
    read -r s5_rss s5_wall < "$OUT/time-s5.txt"
    btrfs subvolume delete "$keep_snap" > /dev/null
    add "{\"link\": \"10 MiB/s\", \"dataset\": \"$ds\", \"contender\": \"btrfs send | s5cmd pipe\", \"repeat\": $r,
      \"backup_wall_s\": $s5_wall, \"backup_peak_rss_mib\": $(python3 -c "print(round($s5_rss / 1024, 1))")}"
    echo "$results" > "$OUT/compression.json"
  done
done
python3 - "$OUT/compression.json" <<'PY'
import json, statistics, sys
rows = json.load(open(sys.argv[1]))
groups = {}
for r in rows:
    groups.setdefault((r["link"], r["dataset"], r["contender"]), []).append(r)
print("| link | dataset | contender | stream MiB | stored MiB | backup s (median) | backup CPU s (median) | restore s (median) | peak RSS MiB |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for (link, ds, who), rs in groups.items():
    med = lambda k: statistics.median(x[k] for x in rs) if k in rs[0] else "—"
    print(f"| {link} | {ds} | {who} | {med('stream_mib')} | {med('stored_mib')} | {med('backup_wall_s')} | {med('backup_cpu_s')} | {med('restore_wall_s')} | {max(x['backup_peak_rss_mib'] for x in rs)} |")
PY
