#!/usr/bin/env bash
# A full demonstration on a built-in local setup: a loop-device Btrfs filesystem with a
# seeded subvolume, a local garage S3 server; a full backup, the objects and the manifest, an
# incremental, the list of backups, a verified restore and a deep verify.
# Needs root (losetup, mount). Everything is removed at the end unless --keep is given.
set -euo pipefail
cd "$(dirname "$0")/.."
keep=0; [ "${1:-}" = "--keep" ] && keep=1
TOOLS="${BTRFS_TO_S3_TOOLS:-/opt/btrfs-to-s3-tools}"
DEMO="${BTRFS_TO_S3_DEMO_DIR:-/var/tmp/btrfs-to-s3-demo}"

bash scripts/install-deps.sh
cargo build --quiet -p btrfs-to-s3
BIN="$PWD/target/debug/btrfs-to-s3"

cleanup() {
  [ $keep = 1 ] && { echo "kept: $DEMO (config $DEMO/config.toml); stop with: scripts/garage-local.sh stop $DEMO/garage; umount $DEMO/mnt"; return; }
  scripts/garage-local.sh stop "$DEMO/garage" || true
  umount "$DEMO/mnt" 2>/dev/null || true
  [ -n "${LOOP:-}" ] && losetup -d "$LOOP" 2>/dev/null || true
  rm -rf "$DEMO"
}
trap cleanup EXIT

# Start from a clean slate if an earlier demo was interrupted.
umount "$DEMO/mnt" 2>/dev/null || true
for dev in $(losetup -j "$DEMO/fs.img" -O NAME -n 2>/dev/null); do losetup -d "$dev"; done
scripts/garage-local.sh stop "$DEMO/garage" 2>/dev/null || true
rm -rf "$DEMO"; mkdir -p "$DEMO/mnt"

echo "== a 2 GiB Btrfs filesystem on a loop device, with a subvolume 'home'"
truncate -s 2G "$DEMO/fs.img"
LOOP=$(losetup --find --show "$DEMO/fs.img")
mkfs.btrfs -q "$LOOP"
mount "$LOOP" "$DEMO/mnt"
btrfs subvolume create "$DEMO/mnt/home" > /dev/null
mkdir -p "$DEMO/mnt/home/docs" "$DEMO/mnt/home/photos"
cp -r /usr/share/common-licenses "$DEMO/mnt/home/docs/" 2>/dev/null || echo "hello" > "$DEMO/mnt/home/docs/hello.txt"
head -c 96M /dev/urandom > "$DEMO/mnt/home/photos/big.raw"
ln -s ../photos/big.raw "$DEMO/mnt/home/docs/link-to-big"
du -sh "$DEMO/mnt/home"

echo "== a local garage S3 server"
eval "$(scripts/garage-local.sh start "$DEMO/garage")"
echo "endpoint $S3_ENDPOINT, bucket $S3_BUCKET"

cat > "$DEMO/config.toml" <<CONF
snapshot_dir = "$DEMO/mnt/.snapshots"
state_dir = "$DEMO/state"

[[subvolumes]]
name = "home"
path = "$DEMO/mnt/home"

[s3]
bucket = "$S3_BUCKET"
endpoint = "$S3_ENDPOINT"
path_style = true
provider = "garage"
prefix = "demo/$(hostname)"
sse = "none"            # garage ignores SSE-S3
chunk_size = "64MiB"    # small, to show several chunks
concurrency = 4
CONF

echo "== btrfs-to-s3 backup (the first one is full)"
"$BIN" --config "$DEMO/config.toml" backup
echo "== btrfs-to-s3 status"
"$BIN" --config "$DEMO/config.toml" status

echo "== objects in s3://$S3_BUCKET/demo/"
"$TOOLS/venv/bin/python" - <<PY
import boto3, json
s3 = boto3.client("s3", endpoint_url="$S3_ENDPOINT", region_name="us-east-1")
objs = s3.list_objects_v2(Bucket="$S3_BUCKET", Prefix="demo/")["Contents"]
for o in objs:
    print(f"{o['Size']:>12}  {o['Key']}")
ptr = [o["Key"] for o in objs if o["Key"].endswith("current.json")][0]
pointer = json.loads(s3.get_object(Bucket="$S3_BUCKET", Key=ptr)["Body"].read())
print("\n== current.json"); print(json.dumps(pointer, indent=2))
m = json.loads(s3.get_object(Bucket="$S3_BUCKET", Key=pointer["manifest_key"])["Body"].read())
for c in m["chunks"]:
    c["parts"] = f"{len(c['parts'])} parts (size, xxh3-128, crc32c each)"
print("\n== manifest.json (parts summarised)"); print(json.dumps(m, indent=2))
PY

echo "== change a file, then an incremental (btrfs send -p the last snapshot)"
echo "edited $(date)" >> "$DEMO/mnt/home/docs/notes.txt"
sleep 1
"$BIN" --config "$DEMO/config.toml" backup --once
echo "== btrfs-to-s3 list"
"$BIN" --config "$DEMO/config.toml" list
echo "== btrfs-to-s3 restore (the chain is received in order, then compared with the source snapshot)"
mkdir -p "$DEMO/mnt/restored"
"$BIN" --config "$DEMO/config.toml" restore --subvolume home --target "$DEMO/mnt/restored"
echo "== btrfs-to-s3 verify --deep"
"$BIN" --config "$DEMO/config.toml" verify --subvolume home --deep
