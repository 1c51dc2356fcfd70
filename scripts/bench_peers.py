#!/usr/bin/env python3
"""btrfs-to-s3 against its peers, in one run with the contenders alternated (issue 11).

On a loop-device Btrfs and a local garage, for each stream size:
  backup   btrfs-to-s3 with default settings (on garage 4 GiB chunks since 2026-12-07, so
           one chunk up to 4 GiB; each run's chunk count is in peers.json) and with 1 GiB
           chunks (multi-chunk), beside
           `btrfs send |` s5cmd pipe, AWS CLI v2 `s3 cp -` and rclone `rcat`;
  restore  each btrfs-to-s3 backup (`restore --verify none`: every part is still checked)
           beside `s5cmd cat | btrfs receive` of s5cmd's own upload;
  ceilings `btrfs send > /dev/null`, and the server's ingest and egress measured with s5cmd
           from and to memory (a copy of the stream in /dev/shm, `s5cmd cat > /dev/null`);
           the send and that ingest at once (what a backup whose client cost what s5cmd
           reading memory costs, beside its `btrfs send`, would reach on this machine); for
           restore also `btrfs receive` from that copy, alone and at once with the server's
           egress (the same for a restore; the receive ceilings and the ceilings at once need
           streams that fit the copy: up to 9 GiB, or 40 % of the memory);
  1 %      then 1 % of the data rewritten and an incremental taken, per repeat, by the tool
           (`backup --once`) and by the peers (`btrfs send -p`);
  WAN      with --wan SIZE_MIB: a full backup of SIZE_MIB by each, through s3-fault-proxy
           with 50 ms added to every request and the link capped at 100 Mbit/s (both
           directions together), against the cap.
Every contender's time includes its `btrfs send`; CPU is user + system of the whole pipeline
(the kernel's send work included), peak RSS the largest process of it (/usr/bin/time).
Before each run the machine is given up to 60 s to go quiet (cores under 10 % busy for a
second, under 64 MiB dirty), how busy it still was recorded as busy_before (and runs that
started busy counted in peers.md); then the page cache is dropped (in --quick: one 0.1 s
sample, no sync, no drop). A run not ended after 300 s + 120 s per GiB is killed and counted
failed, "hung" (garage now and then stops reading a request's body for good). Contenders
rotate their order every repeat (by half the repeat's number, reversed on odd repeats: no
contender always follows the same one, and neighbours swap places each repeat), after one
unmeasured warm-up backup and upload, both kept: garage stores a block once by its content,
so every timed full upload finds its blocks stored and writes no block data, the same for
every contender. An incremental's blocks are new for every contender:
each peer sends its own snapshot of the same data, named with a length of its own, so the
stream's bytes sit at other offsets than in any other contender's upload (with one shared
snapshot, the first peer in a repeat's order wrote the blocks and the later ones found them
stored, while the tool, whose snapshot is its own, always wrote them). Results:
OUT/peers.json (every run, medians, ratios, targets), OUT/peers.md, and garage's log of each
set-up at info level (one line per request: OUT/garage-N.log).

  sudo scripts/bench-peers.sh [--sizes 1,8] [--repeat 3] [--out DIR]
  sudo scripts/bench-peers.sh --quick      # 64 MiB, one repeat: the test run's smoke test
  sudo scripts/bench-peers.sh --sizes '' --wan 512   # only the WAN profile
  sudo scripts/bench-peers.sh --sweep --sizes 1 --wan 256   # the tool's part size x concurrency

Needs root, btrfs-progs, garage, s5cmd, rclone and /usr/bin/aws (scripts/install-deps.sh
--bench). The tool is --bin (default target/release/btrfs-to-s3, which bench-peers.sh builds).
"""
import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.environ.get("BTRFS_TO_S3_TOOLS", "/opt/btrfs-to-s3-tools")
S5 = f"{TOOLS}/venv/bin/s5cmd"
RCLONE = f"{TOOLS}/venv/bin/rclone"
AWS = "/usr/bin/aws"
MIB = 1 << 20
GIB = 1 << 30
INGEST = "ceiling: server ingest (s5cmd from memory)"
BACKUP_AT_ONCE = "ceiling: btrfs send > /dev/null and server ingest at once"
RECEIVE = "ceiling: btrfs receive from memory"
RESTORE_AT_ONCE = "ceiling: server egress and btrfs receive at once"
# Each scenario's shares of its ceilings: (field of a contender's row, ceiling).
CEILING_SHARES = {
    "backup full": (("of_ingest_ceiling", INGEST), ("of_backup_ceiling", BACKUP_AT_ONCE)),
    "restore": (("of_receive_ceiling", RECEIVE), ("of_restore_ceiling", RESTORE_AT_ONCE)),
}
# The stream is copied to /dev/shm (tmpfs is RAM) up to this much, for the ceilings fed from
# memory: 9 GiB (the "8 GiB" stream is 8.01 GiB), or 40 % of the machine's memory where that
# is less. The ingest ceiling uploads that copy; the receive ceilings and the ceilings at once
# need the whole stream in it (skipped beyond).
def shm_cap():
    try:
        kib = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        return 4 * GIB
    return min(9 * GIB, kib * 1024 * 2 // 5)


SHM_CAP = shm_cap()

BACKUP_PEERS = ["s5cmd", "aws", "rclone"]
# The WAN profile: 50 ms a request, 100 Mbit/s.
WAN_LATENCY_MS = 50
WAN_BYTES_S = 100_000_000 // 8


# Before each timed run the machine is let go quiet, so that no run pays for the one before
# it (garage's background work, the kernel's writeback, Btrfs's cleaner): waited for until one
# second has the cores busy (iowait counted) under QUIET_BUSY and at most QUIET_DIRTY_MIB of
# pages dirty or under writeback, for at most QUIET_MAX_S (one sample of 0.1 s in --quick).
QUIET_MAX_S = 60
QUIET_BUSY = 0.10
QUIET_DIRTY_MIB = 64

# A timed run that has not ended after RUN_LIMIT_S plus RUN_LIMIT_S_PER_GIB for each GiB of
# its stream is killed and counted failed ("hung"): garage now and then stops reading a
# request's body for good (BENCHMARKS.md, 2026-12-06, fifth session), and a peer with no
# stall timeout of its own (s5cmd) then waits forever. The limit is many times the slowest
# healthy run (rclone, 11 s/GiB on loopback; the WAN profile's 100 Mbit/s is 86 s/GiB).
RUN_LIMIT_S = 300
RUN_LIMIT_S_PER_GIB = 120


def run_limited(argv, env, limit_s):
    """Runs argv in a process group of its own; kills the group after limit_s.
    Returns (exit code, hung)."""
    p = subprocess.Popen(argv, env=env, start_new_session=True)
    try:
        return p.wait(timeout=limit_s), False
    except subprocess.TimeoutExpired:
        return 124, True
    finally:
        # Past the limit, or interrupted (its own session keeps the terminal's Ctrl-C from the
        # run): the group goes with the bench. After an exit too, whatever the run left behind
        # goes (`A & B && wait $!` leaves A running when B fails).
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if p.returncode is None:
            p.wait()


def cpu_jiffies():
    """(all, idle) jiffies of the machine so far; iowait is not idle."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return sum(v), v[3]


def dirty_mib():
    kib = sum(int(l.split()[1]) for l in open("/proc/meminfo")
              if l.startswith(("Dirty:", "Writeback:")))
    return kib / 1024


def wait_quiet(max_s, sample_s=1.0):
    """Waits for a quiet sample_s (or max_s); returns (seconds waited, last sample's busy share)."""
    start = time.time()
    while True:
        t0, i0 = cpu_jiffies()
        time.sleep(sample_s)
        t1, i1 = cpu_jiffies()
        # Clamped: the kernel's iowait count may go back.
        busy = min(max(1 - (i1 - i0) / max(t1 - t0, 1), 0.0), 1.0)
        quiet = busy < QUIET_BUSY and dirty_mib() < QUIET_DIRTY_MIB
        if quiet or time.time() - start >= max_s:
            return round(time.time() - start, 1), round(busy, 3)


def log(msg):
    print(f"bench-peers: {msg}", file=sys.stderr, flush=True)


def sh(cmd, check=True, capture=False, env=None):
    r = subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], env=env,
                       stdout=subprocess.PIPE if capture else None, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"bench-peers: command failed ({r.returncode}): {cmd}")
    return r.stdout if capture else r.returncode


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = args.work
        self.out = args.out
        self.bin = os.path.abspath(args.bin)
        self.runs = []
        self.failed = []
        self.env = dict(os.environ)
        self.loop = None
        self.shm = f"/dev/shm/btrfs-to-s3-bench-{os.getpid()}"
        # Set-ups started so far: the Nth one's garage log is OUT/garage-N.log.
        self.setups = 0
        if os.path.isdir(self.out):
            for f in os.listdir(self.out):
                if f.startswith("garage-") and f.endswith(".log"):
                    os.remove(os.path.join(self.out, f))

    # ---------- set-up ----------
    def prerequisites(self):
        missing = [p for p in (S5, RCLONE, AWS, "/usr/bin/time", f"{TOOLS}/bin/garage", self.bin)
                   + ((self.args.proxy,) if self.args.wan else ())
                   if not os.access(p, os.X_OK)]
        if shutil.which("btrfs") is None:
            missing.append("btrfs (btrfs-progs)")
        if missing:
            raise SystemExit("bench-peers: missing " + ", ".join(missing)
                             + ": run scripts/install-deps.sh --bench, and build the tool")
        if os.geteuid() != 0:
            raise SystemExit("bench-peers: needs root (losetup, mount, drop_caches)")

    def setup(self, size):
        self.teardown()
        os.makedirs(f"{self.work}/mnt", exist_ok=True)
        img = f"{self.work}/fs.img"
        # data + one restore at a time + 1 % changes, with room for Btrfs' metadata
        with open(img, "wb") as f:
            f.truncate(2 * size + 3 * GIB)
            # Allocated up front: in a sparse image, whichever run first writes a region pays
            # for the host filesystem's allocation (an 8 GiB restore took 57 s into fresh
            # regions, 48-49 s into allocated ones), so the first restore would be penalised.
            try:
                os.posix_fallocate(f.fileno(), 0, 2 * size + 3 * GIB)
            except OSError as e:
                log(f"the image stays sparse ({e}): the first writes into it cost more")
        self.loop = sh(f"losetup --find --show {img}", capture=True).strip()
        # --compressible: the filesystem compresses what it stores, so a large stream fits.
        opts = "-o compress-force=zstd:1 " if self.args.compressible else ""
        sh(f"mkfs.btrfs -q {self.loop} && mount {opts}{self.loop} {self.work}/mnt")
        vars_ = sh(f"GARAGE_LOG=info {ROOT}/scripts/garage-local.sh start {self.work}/garage", capture=True)
        self.setups += 1
        for line in vars_.splitlines():
            k, _, v = line.removeprefix("export ").partition("=")
            self.env[k] = v
        self.endpoint = self.env["S3_ENDPOINT"]
        self.bucket = self.env["S3_BUCKET"]
        env = self.env
        env.update({"AWS_DEFAULT_REGION": env["AWS_REGION"], "AWS_PAGER": "",
                    "RCLONE_CONFIG_G_TYPE": "s3", "RCLONE_CONFIG_G_PROVIDER": "Other",
                    "RCLONE_CONFIG_G_ENV_AUTH": "false",
                    "RCLONE_CONFIG_G_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
                    "RCLONE_CONFIG_G_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
                    "RCLONE_CONFIG_G_ENDPOINT": self.endpoint,
                    "RCLONE_CONFIG_G_REGION": env["AWS_REGION"],
                    "RCLONE_CONFIG_G_FORCE_PATH_STYLE": "true"})
        mnt = f"{self.work}/mnt"
        sh(f"btrfs subvolume create {mnt}/data >/dev/null && mkdir {mnt}/peer-snaps {mnt}/restore")
        # Files of up to 256 MiB (random bytes, or --compressible), and 200 small ones.
        blob = min(256 * MIB, max(size // 4, MIB))
        n = max(1, size // blob)
        for i in range(n):
            if self.args.compressible:
                # One random line repeated: the stream is as long, its storage tiny.
                # (head's status: yes ends on SIGPIPE, which pipefail would report.)
                sh(f"head -c {blob} < <(yes \"$(head -c 60 /dev/urandom | base64 -w0)\") > {mnt}/data/blob{i}")
            else:
                sh(f"head -c {blob} /dev/urandom > {mnt}/data/blob{i}")
        sh(f"mkdir {mnt}/data/small && for i in $(seq 1 200); do head -c 20K /dev/urandom > {mnt}/data/small/f$i; done; sync")
        self.blobs = [f"{mnt}/data/blob{i}" for i in range(n)]
        self.peer_snap = f"{mnt}/peer-snaps/full"
        sh(f"btrfs subvolume snapshot -r {mnt}/data {self.peer_snap} >/dev/null")
        self.stream_bytes = int(sh(f"btrfs send -q {self.peer_snap} | wc -c", capture=True))
        cap = min(self.stream_bytes, SHM_CAP)
        sh(f"btrfs send -q {self.peer_snap} | head -c {cap} > {self.shm} || true")
        self.shm_bytes = os.path.getsize(self.shm)
        log(f"{size / GIB:g} GiB of data: a {self.stream_bytes} B send stream")

    def teardown(self):
        sh(f"{ROOT}/scripts/garage-local.sh stop {self.work}/garage", check=False)
        # Garage's log (one line per request) goes with the results, OUT/garage-N.log for
        # the Nth set-up: a transfer the tool reports stalled is to be read from both sides.
        # Before the first set-up a log in the scratch directory is a crashed run's; after a
        # teardown the directory is gone, so a log found is this set-up's.
        log_path = f"{self.work}/garage/garage.log"
        if self.setups and os.path.exists(log_path):
            os.makedirs(self.out, exist_ok=True)
            shutil.copy(log_path, f"{self.out}/garage-{self.setups}.log")
        mnt = f"{self.work}/mnt"
        if os.path.ismount(mnt):
            sh(f"umount {mnt}", check=False)
        for dev in sh(f"losetup -j {self.work}/fs.img -O NAME -n 2>/dev/null || true",
                      capture=True).split():
            sh(f"losetup -d {dev}", check=False)
        shutil.rmtree(self.work, ignore_errors=True)
        if os.path.exists(self.shm):
            os.remove(self.shm)

    def config(self, name, chunk_size=None, part_size=None, concurrency=None, index=True):
        extra = f'chunk_size = "{chunk_size}"\n' if chunk_size else ""
        extra += f'part_size = "{part_size}"\n' if part_size else ""
        extra += f'concurrency = {concurrency}\n' if concurrency else ""
        path = f"{self.work}/{name}.toml"
        with open(path, "w") as f:
            f.write(f"""snapshot_dir = "{self.work}/mnt/.snapshots-{name}"
state_dir = "{self.work}/state-{name}"
{"" if index else "file_index = false"}
[[subvolumes]]
name = "data"
path = "{self.work}/mnt/data"
[s3]
bucket = "{self.bucket}"
endpoint = "{self.endpoint}"
path_style = true
provider = "garage"
prefix = "{name}"
{extra}""")
        return path

    # ---------- measuring ----------
    def timed(self, record, cmd, stream_bytes):
        """Runs one contender's shell pipeline under /usr/bin/time and records it."""
        if self.args.quick:
            record["quiet_wait_s"], record["busy_before"] = wait_quiet(0, 0.1)
        else:
            sh("sync")
            record["quiet_wait_s"], record["busy_before"] = wait_quiet(QUIET_MAX_S)
            if record["busy_before"] >= QUIET_BUSY:
                log(f"the machine was still {record['busy_before']:.0%} busy after {QUIET_MAX_S} s; "
                    "running anyway (busy_before in peers.json)")
            sh("echo 3 > /proc/sys/vm/drop_caches")
        tf = f"{self.work}/time.txt"
        if os.path.exists(tf):
            os.remove(tf)
        full = f"/usr/bin/time -f '%e %U %S %M' -o {tf} bash -c {shlex.quote('set -o pipefail; ' + cmd)}"
        limit = RUN_LIMIT_S + RUN_LIMIT_S_PER_GIB * stream_bytes / GIB
        code, hung = run_limited(["bash", "-c", full], self.env, limit)
        if hung:
            # The whole group was killed, /usr/bin/time with it: no figures but the limit.
            log(f"{record['contender']} ({record['scenario']}) had not ended after {limit:.0f} s: "
                "killed, counted failed (hung)")
            record["hung"] = True
            wall, user, system, rss_kib = limit, 0, 0, 0
        else:
            wall, user, system, rss_kib = open(tf).read().split()[-4:]
        wall = max(float(wall), 0.01)
        cpu = float(user) + float(system)
        record.update({"exit_code": code, "stream_bytes": stream_bytes, "wall_s": wall,
                       "mib_s": round(stream_bytes / MIB / wall, 1),
                       "cpu_s": round(cpu, 2),
                       "cpu_s_per_gib": round(cpu / (stream_bytes / GIB), 2),
                       "peak_rss_mib": round(int(rss_kib) / 1024, 1)})
        self.runs.append(record)
        log("{size_gib:g} GiB {scenario} {contender} r{repeat}: exit {exit_code}, {wall_s} s, "
            "{mib_s} MiB/s, {cpu_s_per_gib} CPU s/GiB, {peak_rss_mib} MiB (started after {quiet_wait_s} s, "
            "cores {busy_before:.0%} busy)".format(**record))
        if code != 0:
            self.failed.append(record)
        return code

    def peer_upload(self, rec, send, endpoint, key, nbytes):
        """Times `send | peer` for the peer named by rec["contender"], into peers/KEY."""
        url = f"s3://{self.bucket}/peers/{key}"
        peer = {"s5cmd": f"{S5} --endpoint-url {endpoint} pipe {url} >/dev/null",
                "aws": f"{AWS} --endpoint-url {endpoint} s3 cp --only-show-errors - {url}",
                # rclone's endpoint is RCLONE_CONFIG_G_ENDPOINT
                "rclone": f"{RCLONE} -q rcat G:{self.bucket}/peers/{key}"}[rec["contender"]]
        return self.timed(rec, f"{send} | {peer}", nbytes)

    def whole_in_shm(self, rec):
        """Whether the copy in /dev/shm holds the whole stream, as the receive ceilings and the
        ceilings at once need; a skip is logged."""
        if self.shm_bytes == self.stream_bytes:
            return True
        log(f"{rec['contender']}: skipped, the stream does not fit the copy in /dev/shm")
        return False

    def settle(self):
        """Waits for Btrfs to clean deleted subvolumes, which would compete with the next run."""
        sh(f"btrfs subvolume sync {self.work}/mnt >/dev/null")

    def rotate(self, items, r):
        """Repeat r's order: rotated by r // 2, and reversed on odd repeats, so that no
        contender always follows the same one (a run after the tool's backup was faster than
        one after the ingest ceiling's upload on this machine, and a plain rotation keeps each
        contender's predecessor fixed) and two neighbours swap places from one repeat to the
        next (rotating by r as well put the default layout before 1 GiB chunks in all of three
        repeats, so any effect of the order fell on one layout; BENCHMARKS.md, the seventh
        session)."""
        k = (r // 2) % len(items)
        order = items[k:] + items[:k]
        return order[::-1] if r % 2 else order

    def s3rm(self, prefix):
        sh(f"{S5} --endpoint-url {self.endpoint} rm 's3://{self.bucket}/{prefix}*' >/dev/null 2>&1",
           check=False, env=self.env)

    def tool_json(self, path):
        try:
            return json.load(open(path))["runs"][0]
        except (OSError, ValueError, KeyError, IndexError):
            return None

    def manifest(self, key):
        text = sh(f"{S5} --endpoint-url {self.endpoint} cat s3://{self.bucket}/{key}",
                  capture=True, env=self.env)
        return json.loads(text)

    # ---------- one size ----------
    def run_size(self, size):
        self.setup(size)
        S = self.stream_bytes
        gib = size / GIB
        mnt = f"{self.work}/mnt"
        cfg = {"default": self.config("default"), "1gib": self.config("1gib", "1GiB")}
        tool = {"default": "btrfs-to-s3", "1gib": "btrfs-to-s3 (1 GiB chunks)"}
        # Unmeasured warm-up: the first upload into a fresh garage was the slowest run of
        # the set whoever made it (11 s against 7-9 s at 1 GiB), which would bias repeat 1.
        # Its copies stay until the end of the size. Garage stores a block once by its
        # content, so an upload whose blocks are stored already writes no block data: with
        # the tool's stored stream (prefix "warm", the default settings) and the send stream
        # (warm-peers) kept, every timed upload finds its blocks stored, the same for every
        # contender. Deleted, they kept their blocks only until garage's block GC (10 minutes
        # after the delete), which favoured whoever ran while they lasted (at 8 GiB the
        # tool's runs, while s5cmd wrote half its stream).
        sh(f"{self.bin} --config {self.config('warm')} --quiet backup --full --json > {self.work}/warm.json"
           f" && btrfs send -q {self.peer_snap} | {S5} --endpoint-url {self.endpoint} pipe "
           f"s3://{self.bucket}/warm-peers >/dev/null", env=self.env)
        warm = self.tool_json(f"{self.work}/warm.json")
        sh(f"btrfs subvolume delete {warm['snapshot']} >/dev/null")
        for r in range(self.args.repeat):
            base = {"size_gib": gib, "repeat": r + 1}
            kept = {}

            def backup(c):
                rec = dict(base, scenario="backup full", contender=c)
                if c in ("default", "1gib"):
                    out = f"{self.work}/backup-{c}.json"
                    rec["contender"] = tool[c]
                    self.timed(rec, f"{self.bin} --config {cfg[c]} --quiet backup --full --json > {out}", S)
                    run = self.tool_json(out)
                    if run:
                        m = self.manifest(run["manifest_key"])
                        part = max(p["size"] for ch in m["chunks"] for p in ch["parts"])
                        rec.update({"stored_bytes": run.get("total_bytes"), "chunks": len(m["chunks"]),
                                    "part_size": part, "concurrency": 4,
                                    "rss_bound_mib": round((4 + 2) * part / MIB + 64, 1)})
                        kept[c] = run
                elif c in BACKUP_PEERS:
                    self.peer_upload(rec, f"btrfs send -q {self.peer_snap}", self.endpoint, c, S)
                    if c != "s5cmd":
                        # Only s5cmd's upload is read back (its restore): the others leave
                        # the server's disk now, not at the end of the repeat.
                        self.s3rm(f"peers/{c}")
                elif c == "send > /dev/null":
                    rec["contender"] = "ceiling: btrfs send > /dev/null"
                    self.timed(rec, f"btrfs send -q {self.peer_snap} > /dev/null", S)
                elif c == "ingest":
                    rec["contender"] = INGEST
                    self.timed(rec, f"{S5} --endpoint-url {self.endpoint} cp {self.shm} "
                               f"s3://{self.bucket}/peers/ingest >/dev/null", self.shm_bytes)
                    self.s3rm("peers/ingest")
                elif c == "at once":
                    # What a backup could be on this machine if its client cost what s5cmd
                    # reading memory costs: the send to /dev/null and the server's ingest from
                    # memory run together, sharing the cores as a backup makes them share them
                    # (only when the whole stream fits the copy in /dev/shm). Its time is the
                    # later's.
                    rec["contender"] = BACKUP_AT_ONCE
                    if not self.whole_in_shm(rec):
                        return
                    self.timed(rec, f"btrfs send -q {self.peer_snap} > /dev/null & {S5} --endpoint-url "
                               f"{self.endpoint} cp {self.shm} s3://{self.bucket}/peers/ingest >/dev/null "
                               f"&& wait $!", S)
                    self.s3rm("peers/ingest")

            for c in self.rotate(["default", "1gib", "s5cmd", "aws", "rclone", "send > /dev/null", "ingest",
                                  "at once"], r):
                backup(c)

            def restore(c):
                rec = dict(base, scenario="restore", contender=c)
                target = f"{mnt}/restore"
                if c in ("default", "1gib"):
                    rec["contender"] = tool[c]
                    if c not in kept:
                        return
                    self.timed(rec, f"{self.bin} --config {cfg[c]} --quiet restore --json --subvolume data "
                               f"--target {target} --verify none > {self.work}/restore-{c}.json", S)
                    prev = next((x for x in self.runs if x["scenario"] == "backup full"
                                 and x["contender"] == tool[c] and x["repeat"] == r + 1), {})
                    if "rss_bound_mib" in prev:
                        rec["rss_bound_mib"] = prev["rss_bound_mib"]
                elif c == "s5cmd":
                    rec["contender"] = "s5cmd cat | btrfs receive"
                    self.timed(rec, f"{S5} --endpoint-url {self.endpoint} cat s3://{self.bucket}/peers/s5cmd "
                               f"| btrfs receive -q {target}", S)
                elif c == "egress":
                    rec["contender"] = "ceiling: server egress (s5cmd cat > /dev/null)"
                    self.timed(rec, f"{S5} --endpoint-url {self.endpoint} cat s3://{self.bucket}/peers/s5cmd "
                               f"> /dev/null", S)
                elif c == "receive":
                    # What any restore is held to: `btrfs receive` fed from memory (only when
                    # the whole stream fits the copy in /dev/shm).
                    rec["contender"] = RECEIVE
                    if not self.whole_in_shm(rec):
                        return
                    self.timed(rec, f"btrfs receive -q {target} < {self.shm}", S)
                elif c == "at once":
                    # What a restore could be on this machine if its client cost what s5cmd
                    # writing to /dev/null costs: the server's egress and `btrfs receive` from
                    # memory run together, sharing the cores as a restore makes them share
                    # them. Its time is the later's.
                    rec["contender"] = RESTORE_AT_ONCE
                    if not self.whole_in_shm(rec):
                        return
                    self.timed(rec, f"{S5} --endpoint-url {self.endpoint} cat s3://{self.bucket}/peers/s5cmd "
                               f"> /dev/null & btrfs receive -q {target} < {self.shm} && wait $!", S)
                for d in sorted(os.listdir(target)):
                    sh(f"btrfs subvolume delete {target}/{d} >/dev/null 2>&1 || rm -rf {target}/{d}")
                self.settle()

            for c in self.rotate(["default", "1gib", "s5cmd", "egress", "receive", "at once"], r):
                restore(c)

            # Keep the last repeat's default backup: the incrementals build on it.
            last = r == self.args.repeat - 1
            for c, run in kept.items():
                if last and c == "default":
                    continue
                self.s3rm(f"{c}/")
                sh(f"btrfs subvolume delete {run['snapshot']} >/dev/null")
                shutil.rmtree(f"{self.work}/state-{c}", ignore_errors=True)
            self.s3rm("peers/")
            self.settle()
        if "default" in kept:
            self.incrementals(size, cfg["default"])
        self.s3rm("")
        self.teardown()

    def start_proxy(self):
        """s3-fault-proxy in front of garage as the WAN link; returns it and its endpoint."""
        proxy = subprocess.Popen(
            [self.args.proxy, "--upstream", self.endpoint.removeprefix("http://"),
             "--listen", "127.0.0.1:0", "--latency-ms", str(WAN_LATENCY_MS),
             "--bandwidth", str(WAN_BYTES_S)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        listen = proxy.stdout.readline().strip()
        if not listen:
            proxy.kill()
            raise SystemExit("bench-peers: s3-fault-proxy printed no address")
        return proxy, "http://" + listen.split()[-1].removeprefix("http://")

    def run_sweep(self, size, wan):
        """The tool alone over a grid of part sizes and concurrencies (and binaries): full
        backups, and restores of them on the direct link; through the WAN proxy if `wan`."""
        self.setup(size)
        S = self.stream_bytes
        direct = self.endpoint
        proxy = None
        scen = "sweep backup, WAN 50 ms 100 Mbit/s" if wan else "sweep backup"
        try:
            if wan:
                proxy, self.endpoint = self.start_proxy()
            configs = []
            for label, binary in self.sweep_bins:
                for part in self.args.sweep_parts:
                    for conc in self.args.sweep_concurrency:
                        for index in {"on": [True], "off": [False], "both": [True, False]}[self.args.sweep_index]:
                            name = f"p{part}c{conc}{label.strip(' ()')}{'' if index else 'n'}"
                            # 200 GiB chunks (one at any size swept), or 10,000 parts if less.
                            chunk = self.args.sweep_chunk or f"{min(200 * 1024, part * 10_000)}MiB"
                            configs.append({"name": name, "bin": binary, "part": part, "conc": conc,
                                            "label": f"btrfs-to-s3 {part} MiB parts x {conc}{label}"
                                                     + ("" if index else ", no file index"),
                                            "cfg": self.config(name, chunk, f"{part}MiB", conc, index)})
            self.endpoint = direct
            c0 = configs[0]
            sh(f"{c0['bin']} --config {c0['cfg']} --quiet backup --full --json > {self.work}/warm.json",
               env=self.env)
            warm = self.tool_json(f"{self.work}/warm.json")
            sh(f"btrfs subvolume delete {warm['snapshot']} >/dev/null")
            shutil.rmtree(f"{self.work}/state-{c0['name']}", ignore_errors=True)
            self.s3rm(f"{c0['name']}/")
            target = f"{self.work}/mnt/restore"
            for r in range(self.args.repeat):
                for c in self.rotate(configs, r):
                    base = {"size_gib": size / GIB, "repeat": r + 1, "contender": c["label"],
                            "part_size": c["part"] * MIB, "concurrency": c["conc"],
                            "rss_bound_mib": (c["conc"] + 2) * c["part"] + 64}
                    if wan:
                        base["cap_mib_s"] = round(WAN_BYTES_S / MIB, 2)
                    rec = dict(base, scenario=scen)
                    out = f"{self.work}/sweep.json"
                    self.timed(rec, f"{c['bin']} --config {c['cfg']} --quiet backup --full --json > {out}", S)
                    if wan:
                        rec["of_cap"] = round(rec["mib_s"] / (WAN_BYTES_S / MIB), 3)
                    run = self.tool_json(out)
                    if run and not wan:
                        rec = dict(base, scenario="sweep restore")
                        self.timed(rec, f"{c['bin']} --config {c['cfg']} --quiet restore --json --subvolume data "
                                   f"--target {target} --verify none > {self.work}/sweep-restore.json", S)
                        for d in sorted(os.listdir(target)):
                            sh(f"btrfs subvolume delete {target}/{d} >/dev/null 2>&1 || rm -rf {target}/{d}")
                    if run:
                        sh(f"btrfs subvolume delete {run['snapshot']} >/dev/null")
                    shutil.rmtree(f"{self.work}/state-{c['name']}", ignore_errors=True)
                    self.s3rm(f"{c['name']}/")
                    self.settle()
        finally:
            self.endpoint = direct
            if proxy:
                proxy.kill()
                proxy.wait()
        self.teardown()

    def run_wan(self, size):
        """Full backups through the fault proxy as a 50 ms, 100 Mbit/s link."""
        self.setup(size)
        S = self.stream_bytes
        proxy, endpoint = self.start_proxy()
        try:
            direct = self.endpoint
            self.endpoint = endpoint
            self.env["RCLONE_CONFIG_G_ENDPOINT"] = endpoint
            cfg = self.config("wan")
            self.endpoint = direct
            cap_mib = WAN_BYTES_S / MIB
            for r in range(self.args.repeat):
                base = {"size_gib": size / GIB, "repeat": r + 1, "scenario": "backup full, WAN 50 ms 100 Mbit/s"}
                for c in self.rotate(["btrfs-to-s3"] + BACKUP_PEERS, r):
                    rec = dict(base, contender=c, cap_mib_s=round(cap_mib, 2))
                    if c == "btrfs-to-s3":
                        out = f"{self.work}/wan.json"
                        self.timed(rec, f"{self.bin} --config {cfg} --quiet backup --full --json > {out}", S)
                        run = self.tool_json(out)
                        if run:
                            sh(f"btrfs subvolume delete {run['snapshot']} >/dev/null")
                        shutil.rmtree(f"{self.work}/state-wan", ignore_errors=True)
                    else:
                        self.peer_upload(rec, f"btrfs send -q {self.peer_snap}", endpoint, f"wan-{c}", S)
                    rec["of_cap"] = round(rec["mib_s"] / cap_mib, 3)
                self.s3rm("wan/")
                self.s3rm("peers/")
        finally:
            proxy.kill()
            proxy.wait()
            self.env["RCLONE_CONFIG_G_ENDPOINT"] = self.endpoint
        self.teardown()

    def incrementals(self, size, cfg):
        mnt = f"{self.work}/mnt"
        parent = self.peer_snap
        for r in range(self.args.repeat):
            # 1 % of the data rewritten in place, spread over the files, and one file added.
            change = max(self.stream_bytes // 100, 4096)
            each = max(change // len(self.blobs), 4096)
            for i, b in enumerate(self.blobs):
                fsize = os.path.getsize(b)
                with open(b, "r+b") as f:
                    f.seek(((i * 37 + r * 11) * MIB) % max(fsize - each, 1))
                    f.write(os.urandom(min(each, fsize)))
            with open(f"{mnt}/data/small/new-{r}", "wb") as f:
                f.write(os.urandom(4096))
            sh("sync")
            snap = f"{mnt}/peer-snaps/inc{r}"
            sh(f"btrfs subvolume snapshot -r {mnt}/data {snap} >/dev/null")
            inc = int(sh(f"btrfs send -q -p {parent} {snap} | wc -c", capture=True))
            base = {"size_gib": size / GIB, "repeat": r + 1, "scenario": "backup 1 % incremental"}
            # Names of distinct lengths (the tool's is `data.<timestamp>`, 21 characters).
            own = {c: f"{mnt}/peer-snaps/inc{r}-{c}" for c in BACKUP_PEERS}
            assert len({len(os.path.basename(n)) for n in own.values()}) == len(own)
            for n in own.values():
                sh(f"btrfs subvolume snapshot -r {mnt}/data {n} >/dev/null")
            for c in self.rotate(["btrfs-to-s3"] + BACKUP_PEERS, r):
                rec = dict(base, contender=c)
                if c == "btrfs-to-s3":
                    out = f"{self.work}/inc.json"
                    self.timed(rec, f"{self.bin} --config {cfg} --quiet backup --once --json > {out}", inc)
                    run = self.tool_json(out)
                    if run and run.get("kind") != "incremental":
                        rec["exit_code"] = 1
                        self.failed.append(dict(rec, why=f"kind {run.get('kind')}"))
                else:
                    self.peer_upload(rec, f"btrfs send -q -p {parent} {own[c]}", self.endpoint, f"inc-{c}", inc)
            parent = snap

    # ---------- summary ----------
    def summary(self):
        groups = {}
        for x in self.runs:
            if x["exit_code"] == 0:
                groups.setdefault((x["size_gib"], x["scenario"], x["contender"]), []).append(x)
        rows = []
        for (size, scen, cont), xs in groups.items():
            row = {"size_gib": size, "scenario": scen, "contender": cont, "runs": len(xs)}
            for k in ("wall_s", "mib_s", "cpu_s_per_gib", "peak_rss_mib"):
                row[k] = round(statistics.median(x[k] for x in xs), 2)
            row["peak_rss_max_mib"] = max(x["peak_rss_mib"] for x in xs)
            if "rss_bound_mib" in xs[0]:
                row["rss_bound_mib"] = xs[0]["rss_bound_mib"]
            if "of_cap" in xs[0]:
                row["of_cap"] = round(statistics.median(x["of_cap"] for x in xs), 3)
            rows.append(row)
        for row in rows:
            peers = [p for p in rows if p["size_gib"] == row["size_gib"] and p["scenario"] == row["scenario"]
                     and is_peer(p["contender"])]
            if peers:
                best = max(peers, key=lambda p: p["mib_s"])
                row["best_peer"] = best["contender"]
                row["speed_vs_best_peer"] = round(row["mib_s"] / best["mib_s"], 3)
            s5 = [p for p in peers if p["contender"].startswith("s5cmd")]
            if s5 and s5[0]["cpu_s_per_gib"] > 0:
                row["cpu_vs_s5cmd"] = round(row["cpu_s_per_gib"] / s5[0]["cpu_s_per_gib"], 3)
            if not row["contender"].startswith("ceiling"):
                # By the ceiling's whole name: the two ceilings at once share words.
                for field, ceiling in CEILING_SHARES.get(row["scenario"], ()):
                    c = [p for p in rows if p["size_gib"] == row["size_gib"] and p["contender"] == ceiling]
                    if c:
                        row[field] = round(row["mib_s"] / c[0]["mib_s"], 3)
        return rows

    def targets(self, rows):
        t = []
        for row in rows:
            if not row["contender"].startswith("btrfs-to-s3"):
                continue
            what = f'{row["size_gib"]:g} GiB {row["scenario"]}, {row["contender"]}'
            # On the capped link every contender meets the cap: its target is the cap's 90 %.
            if "speed_vs_best_peer" in row and "of_cap" not in row:
                t.append({"what": what, "target": "speed >= 1.25x the best peer",
                          "value": row["speed_vs_best_peer"], "met": row["speed_vs_best_peer"] >= 1.25})
            if "of_ingest_ceiling" in row:
                t.append({"what": what, "target": "within 15 % of the ingest ceiling",
                          "value": row["of_ingest_ceiling"], "met": row["of_ingest_ceiling"] >= 0.85})
            if "cpu_vs_s5cmd" in row and row["scenario"] != "backup 1 % incremental":
                t.append({"what": what, "target": "CPU per GiB <= 0.6x s5cmd's",
                          "value": row["cpu_vs_s5cmd"], "met": row["cpu_vs_s5cmd"] <= 0.6})
            if "of_cap" in row:
                t.append({"what": what, "target": "at least 90 % of the capped link",
                          "value": row["of_cap"], "met": row["of_cap"] >= 0.9})
            if "rss_bound_mib" in row:
                t.append({"what": what, "target": f'peak RSS <= {row["rss_bound_mib"]} MiB',
                          "value": row["peak_rss_max_mib"], "met": row["peak_rss_max_mib"] <= row["rss_bound_mib"]})
        return t

    def write(self):
        rows = self.summary()
        targets = self.targets(rows)
        doc = {"date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
               "commit": sh(f"git -C {ROOT} rev-parse --short HEAD 2>/dev/null || echo unknown", capture=True).strip(),
               "quick": self.args.quick, "repeat": self.args.repeat, "runs": self.runs,
               "medians": rows, "targets": targets, "failed": self.failed}
        os.makedirs(self.out, exist_ok=True)
        with open(f"{self.out}/peers.json", "w") as f:
            json.dump(doc, f, indent=1)
        md = [f'Commit {doc["commit"]}, {doc["date"]} UTC; medians of {self.args.repeat} '
              f'repeat(s), contenders alternated.', ""]
        for size in sorted({r["size_gib"] for r in rows}):
            for scen in ("backup full", "restore", "backup 1 % incremental", "backup full, WAN 50 ms 100 Mbit/s",
                         "sweep backup", "sweep restore", "sweep backup, WAN 50 ms 100 Mbit/s"):
                sel = [r for r in rows if r["size_gib"] == size and r["scenario"] == scen]
                if not sel:
                    continue
                md += [f"**{size:g} GiB, {scen}**", "",
                       "| contender | wall s | MiB/s | vs best peer | CPU s/GiB | vs s5cmd CPU | peak RSS MiB (bound) |",
                       "| --- | --- | --- | --- | --- | --- | --- |"]
                for r in sorted(sel, key=lambda r: -r["mib_s"]):
                    bound = f' ({r["rss_bound_mib"]})' if "rss_bound_mib" in r else ""
                    md.append(f'| {r["contender"]} | {r["wall_s"]} | {r["mib_s"]} | {r.get("speed_vs_best_peer", "")} '
                              f'| {r["cpu_s_per_gib"]} | {r.get("cpu_vs_s5cmd", "")} | {r["peak_rss_max_mib"]}{bound} |')
                md.append("")
                # The share of what a client as light as s5cmd on memory would reach here
                # (the ceilings at once), where the run had them.
                shares = [f'{r["contender"]} {r.get("of_backup_ceiling", r.get("of_restore_ceiling"))}'
                          for r in sorted(sel, key=lambda r: -r["mib_s"])
                          if "of_backup_ceiling" in r or "of_restore_ceiling" in r]
                if shares:
                    md += ["Of the ceiling at once: " + ", ".join(shares) + ".", ""]
        busy = [r for r in self.runs if r.get("busy_before", 0) >= QUIET_BUSY]
        if busy and not self.args.quick:
            md += [f"{len(busy)} of {len(self.runs)} runs started with the machine still busy after "
                   f"{QUIET_MAX_S} s of waiting (busy_before in peers.json).", ""]
        hung = [r for r in self.runs if r.get("hung")]
        if hung:
            md += [f"{len(hung)} runs hung (killed at the limit, left out of the medians): "
                   + ", ".join(f'{r["size_gib"]:g} GiB {r["scenario"]} {r["contender"]} r{r["repeat"]}'
                               for r in hung) + ".", ""]
        if targets:
            md += ["| target | where | value | met |", "| --- | --- | --- | --- |"]
            md += [f'| {t["target"]} | {t["what"]} | {t["value"]} | {"yes" if t["met"] else "**no**"} |' for t in targets]
        with open(f"{self.out}/peers.md", "w") as f:
            f.write("\n".join(md) + "\n")
        print("\n".join(md))


def is_peer(contender):
    return not contender.startswith("btrfs-to-s3") and not contender.startswith("ceiling")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1,8", help="stream sizes in GiB, comma-separated (default 1,8)")
    p.add_argument("--repeat", type=int, default=3, help="repeats per size, contenders rotated (default 3)")
    p.add_argument("--quick", action="store_true", help="64 MiB, one repeat, no cache drops: a smoke test")
    p.add_argument("--bin", default=f"{ROOT}/target/release/btrfs-to-s3", help="the btrfs-to-s3 binary")
    p.add_argument("--out", default=f"{ROOT}/run/bench", help="where peers.json and peers.md go")
    p.add_argument("--wan", type=int, metavar="SIZE_MIB", help="also the WAN profile with SIZE_MIB of data")
    p.add_argument("--proxy", default=f"{ROOT}/target/release/s3-fault-proxy", help="the s3-fault-proxy binary (--wan)")
    p.add_argument("--work", default="/var/tmp/btrfs-to-s3-bench-peers", help="scratch directory (deleted)")
    p.add_argument("--compressible", action="store_true",
                   help="data of one random line repeated, on a compress-force=zstd filesystem "
                        "(garage compresses blocks too): a 32 GiB stream on a small disk, for "
                        "memory at size rather than speed")
    p.add_argument("--sweep", action="store_true",
                   help="instead of the peers: the tool alone over --sweep-parts x --sweep-concurrency, "
                        "backup and restore at each of --sizes, and backup through the WAN proxy at --wan")
    p.add_argument("--sweep-parts", default="8,21,32,64", help="part sizes in MiB (default 8,21,32,64)")
    p.add_argument("--sweep-concurrency", default="2,4,8", help="parts in flight (default 2,4,8)")
    p.add_argument("--sweep-chunk", help="chunk_size for every sweep run (default: 200 GiB, or "
                                         "10,000 parts where the parts are smaller)")
    p.add_argument("--sweep-bin-b", metavar="BIN", help="also sweep this second binary (labelled B)")
    p.add_argument("--sweep-index", choices=["on", "off", "both"], default="on",
                   help="the file index in sweep runs (default on, as by default)")
    args = p.parse_args()
    args.sweep_parts = [int(x) for x in args.sweep_parts.split(",") if x]
    args.sweep_concurrency = [int(x) for x in args.sweep_concurrency.split(",") if x]
    sizes = [64 * MIB] if args.quick else [int(float(s) * GIB) for s in args.sizes.split(",") if s]
    if args.quick:
        args.repeat = 1
    b = Bench(args)
    b.sweep_bins = [("", b.bin)] + ([(" (B)", os.path.abspath(args.sweep_bin_b))] if args.sweep_bin_b else [])
    b.prerequisites()
    try:
        for s in sizes:
            b.run_sweep(s, False) if args.sweep else b.run_size(s)
        if args.wan:
            b.run_sweep(args.wan * MIB, True) if args.sweep else b.run_wan(args.wan * MIB)
    finally:
        b.teardown()
    b.write()
    if b.failed:
        for f in b.failed:
            log(f'FAILED: {f["size_gib"]:g} GiB {f["scenario"]} {f["contender"]} r{f["repeat"]}: exit {f["exit_code"]}'
                + (" (hung: killed at the limit)" if f.get("hung") else ""))
        sys.exit(1)


if __name__ == "__main__":
    main()
