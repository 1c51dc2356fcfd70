#!/usr/bin/env bash
# Starts a single-node garage on loopback for the demo and benchmarks, with one bucket and
# one key, and prints shell variables to eval:
#   eval "$(scripts/garage-local.sh start DIR)"   -> GARAGE_PID, S3_ENDPOINT, AWS_* , S3_BUCKET
#   scripts/garage-local.sh stop DIR
# (The Rust tests start their own garage the same way, see tests/src/s3.rs.)
set -euo pipefail
TOOLS="${BTRFS_TO_S3_TOOLS:-/opt/btrfs-to-s3-tools}"
G="$TOOLS/bin/garage"
cmd="${1:?start|stop}"; dir="${2:?directory}"
case "$cmd" in
  stop)
    [ -f "$dir/garage.pid" ] && kill "$(cat "$dir/garage.pid")" 2>/dev/null || true
    exit 0 ;;
  start) ;;
  *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
[ -x "$G" ] || { echo "garage not installed at $G: run scripts/install-deps.sh" >&2; exit 1; }
mkdir -p "$dir"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
s3=$(free_port); rpc=$(free_port); admin=$(free_port)
secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
cat > "$dir/garage.toml" <<CONF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$secret"
[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$admin"
CONF
chmod 600 "$dir/garage.toml"
# GARAGE_LOG: garage's log level (bench-peers asks for info: one line per request).
RUST_LOG="${GARAGE_LOG:-warn}" "$G" -c "$dir/garage.toml" server > "$dir/garage.log" 2>&1 &
echo $! > "$dir/garage.pid"
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/$rpc) 2>/dev/null && break; sleep 0.1
done
g() { "$G" -c "$dir/garage.toml" "$@" > /dev/null; }
id=$("$G" -c "$dir/garage.toml" node id -q | cut -d@ -f1)
g layout assign -z dc1 -c 100G "$id"
g layout apply --version 1
key="GK${secret:0:24}"; sec="${secret:24}${secret:0:24}"
g key import --yes -n local "$key" "$sec"
g bucket create btrfs-to-s3-demo
g bucket allow --read --write --owner btrfs-to-s3-demo --key local
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/$s3) 2>/dev/null && break; sleep 0.1
done
cat <<VARS
GARAGE_PID=$(cat "$dir/garage.pid")
S3_ENDPOINT=http://127.0.0.1:$s3
S3_BUCKET=btrfs-to-s3-demo
export AWS_ACCESS_KEY_ID=$key
export AWS_SECRET_ACCESS_KEY=$sec
export AWS_EC2_METADATA_DISABLED=true
export AWS_REGION=us-east-1
VARS
