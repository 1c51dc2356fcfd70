#!/usr/bin/env bash
# Datasets shared by the benchmarks (sourced, not run).

# text: half generated log lines, half real source code (the cargo registry's sources).
make_text() {
  local dir="$1" size="$2"
  btrfs subvolume create "$dir" > /dev/null
  python3 - "$dir/app.log" $((size / 2)) <<'PY'
import random, sys
path, mib = sys.argv[1], int(sys.argv[2])
rnd = random.Random(7)
users = ["alice", "bob", "carol", "deploy", "backup", "www-data"]
with open(path, "w") as f:
    written = 0
    while written < mib << 20:
        line = "2026-11-25T03:%02d:%02d.%03dZ host%d sshd[%d]: Accepted publickey for %s from 10.%d.%d.%d port %d ssh2: ED25519 SHA256:%016x\n" % (
            rnd.randrange(60), rnd.randrange(60), rnd.randrange(1000), rnd.randrange(8), rnd.randrange(40000),
            rnd.choice(users), rnd.randrange(256), rnd.randrange(256), rnd.randrange(256), rnd.randrange(65536), rnd.getrandbits(64))
        f.write(line)
        written += len(line)
PY
  mkdir -p "$dir/src"
  local src; src=$(ls -d ~/.cargo/registry/src/*/ | head -1)
  ( cd "$src" && find . -type f \( -name '*.rs' -o -name '*.md' -o -name '*.toml' -o -name '*.c' -o -name '*.h' \) -print0 ) \
    | python3 -c '
import os, shutil, sys
src, dst, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]) << 20
total = 0
for rel in sys.stdin.buffer.read().split(b"\0"):
    if not rel: continue
    rel = rel.decode()
    size = os.path.getsize(os.path.join(src, rel))
    if total + size > limit: break
    os.makedirs(os.path.join(dst, os.path.dirname(rel)), exist_ok=True)
    shutil.copyfile(os.path.join(src, rel), os.path.join(dst, rel))
    total += size
' "$src" "$dir/src" $((size / 2))
}
