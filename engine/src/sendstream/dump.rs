//! Ops rendered byte for byte as `btrfs receive --dump` (btrfs-progs 6.2,
//! `cmds/receive-dump.c`) prints them, in the C locale and UTC: the oracle the parser is
//! tested against on streams from real Btrfs.

use super::{Op, Timespec};
use std::io::Write as _;

/// Renders ops in stream order; keeps the subvolume path that later lines are joined to.
pub struct Dumper {
    subvol: Vec<u8>,
}

impl Default for Dumper {
    fn default() -> Self {
        Dumper::new()
    }
}

/// `path_cat_out`: `p1/p2`, each without one trailing slash.
fn cat(p1: &[u8], p2: &[u8]) -> Vec<u8> {
    let p1 = p1.strip_suffix(b"/").unwrap_or(p1);
    let p2 = p2.strip_suffix(b"/").unwrap_or(p2);
    let mut out = p1.to_vec();
    out.push(b'/');
    out.extend_from_slice(p2);
    out
}

/// C strings end at their first NUL.
fn c_str(bytes: &[u8]) -> &[u8] {
    bytes.split(|&b| b == 0).next().unwrap_or(bytes)
}

/// `print_path_escaped`; returns the characters printed.
fn escaped(path: &[u8], out: &mut Vec<u8>) -> usize {
    let start = out.len();
    for &c in c_str(path) {
        match c {
            0x07 => out.extend_from_slice(b"\\a"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x1b => out.extend_from_slice(b"\\e"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x0b => out.extend_from_slice(b"\\v"),
            b' ' => out.extend_from_slice(b"\\ "),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x21..=0x7e => out.push(c),
            _ => {
                let _ = write!(out, "\\{}{}{}", c >> 6, (c >> 3) & 7, c & 7);
            }
        }
    }
    out.len() - start
}

fn uuid(u: &[u8; 16]) -> String {
    let h = hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn time(t: Timespec) -> String {
    chrono::DateTime::from_timestamp(t.sec, 0)
        .map(|d| d.format("%FT%T%z").to_string())
        .unwrap_or_default()
}

impl Dumper {
    pub fn new() -> Dumper {
        Dumper {
            subvol: b".".to_vec(),
        }
    }

    /// `__print_dump`: title padded to 16, the escaped path, then (with `rest`) spaces up to
    /// column 32 (at least one) and `rest`.
    fn line(title: &str, path: &[u8], rest: Option<&[u8]>, out: &mut Vec<u8>) {
        let _ = write!(out, "{title:<16}");
        let mut n = escaped(path, out);
        if let Some(rest) = rest {
            loop {
                out.push(b' ');
                n += 1;
                if n >= 32 {
                    break;
                }
            }
            out.extend_from_slice(rest);
        }
        out.push(b'\n');
    }

    /// Appends the line `btrfs receive --dump` prints for `op` (nothing for the end command).
    pub fn op(&mut self, op: &Op<'_>, out: &mut Vec<u8>) {
        let full = |p: &[u8]| cat(&self.subvol, c_str(p));
        let fmt = |s: String| Some(s.into_bytes());
        let (title, path, rest): (&str, Vec<u8>, Option<Vec<u8>>) = match *op {
            Op::Subvol {
                path,
                uuid: u,
                ctransid,
            } => {
                self.subvol = cat(b".", c_str(path));
                let rest = format!("uuid={} transid={ctransid}", uuid(&u));
                ("subvol", self.subvol.clone(), fmt(rest))
            }
            Op::Snapshot {
                path,
                uuid: u,
                ctransid,
                clone_uuid,
                clone_ctransid,
            } => {
                self.subvol = cat(b".", c_str(path));
                let rest = format!(
                    "uuid={} transid={ctransid} parent_uuid={} parent_transid={clone_ctransid}",
                    uuid(&u),
                    uuid(&clone_uuid)
                );
                ("snapshot", self.subvol.clone(), fmt(rest))
            }
            Op::Mkfile { path, .. } => ("mkfile", full(path), None),
            Op::Mkdir { path, .. } => ("mkdir", full(path), None),
            Op::Mknod {
                path, mode, rdev, ..
            } => (
                "mknod",
                full(path),
                fmt(format!("mode={mode:o} dev=0x{rdev:x}")),
            ),
            Op::Mkfifo { path, .. } => ("mkfifo", full(path), None),
            Op::Mksock { path, .. } => ("mksock", full(path), None),
            Op::Symlink { path, target, .. } => {
                let mut rest = b"dest=".to_vec();
                escaped(target, &mut rest);
                ("symlink", full(path), Some(rest))
            }
            Op::Rename { path, to } => {
                let mut rest = b"dest=".to_vec();
                escaped(&full(to), &mut rest);
                ("rename", full(path), Some(rest))
            }
            Op::Link { path, target } => {
                let mut rest = b"dest=".to_vec();
                escaped(target, &mut rest);
                ("link", full(path), Some(rest))
            }
            Op::Unlink { path } => ("unlink", full(path), None),
            Op::Rmdir { path } => ("rmdir", full(path), None),
            Op::SetXattr { path, name, data } => {
                let mut rest = b"name=".to_vec();
                rest.extend_from_slice(c_str(name));
                rest.extend_from_slice(b" data=");
                rest.extend_from_slice(c_str(data));
                let _ = write!(rest, " len={}", data.len());
                ("set_xattr", full(path), Some(rest))
            }
            Op::RemoveXattr { path, name } => {
                let mut rest = b"name=".to_vec();
                rest.extend_from_slice(c_str(name));
                ("remove_xattr", full(path), Some(rest))
            }
            Op::Write { path, offset, data } => (
                "write",
                full(path),
                fmt(format!("offset={offset} len={}", data.len)),
            ),
            Op::Clone {
                path,
                offset,
                len,
                source,
                source_offset,
                ..
            } => {
                let mut rest = format!("offset={offset} len={len} from=").into_bytes();
                rest.extend_from_slice(&full(source));
                let _ = write!(rest, " clone_offset={source_offset}");
                ("clone", full(path), Some(rest))
            }
            Op::Truncate { path, size } => ("truncate", full(path), fmt(format!("size={size}"))),
            Op::Chmod { path, mode } => ("chmod", full(path), fmt(format!("mode={mode:o}"))),
            Op::Chown { path, uid, gid } => {
                ("chown", full(path), fmt(format!("gid={gid} uid={uid}")))
            }
            Op::Utimes {
                path,
                atime,
                mtime,
                ctime,
            } => (
                "utimes",
                full(path),
                fmt(format!(
                    "atime={} mtime={} ctime={}",
                    time(atime),
                    time(mtime),
                    time(ctime)
                )),
            ),
            Op::End => return,
            Op::UpdateExtent { path, offset, len } => (
                "update_extent",
                full(path),
                fmt(format!("offset={offset} len={len}")),
            ),
            Op::Fallocate {
                path,
                mode,
                offset,
                len,
            } => (
                "fallocate",
                full(path),
                fmt(format!("mode={} offset={offset} len={len}", mode as i32)),
            ),
            // btrfs-progs prints the decimal value after "0x".
            Op::Fileattr { path, attr } => {
                ("fileattr", full(path), fmt(format!("fileattr=0x{attr}")))
            }
            Op::EncodedWrite {
                path,
                offset,
                unencoded_file_len,
                unencoded_len,
                unencoded_offset,
                compression,
                encryption,
                data,
            } => (
                "encoded_write",
                full(path),
                fmt(format!(
                    "offset={offset} len={}, unencoded_file_len={unencoded_file_len}, \
                     unencoded_len={unencoded_len}, unencoded_offset={unencoded_offset}, \
                     compression={compression}, encryption={encryption}",
                    data.len
                )),
            ),
            Op::EnableVerity {
                path,
                algorithm,
                block_size,
                salt,
                sig,
            } => (
                "enable_verity",
                full(path),
                fmt(format!(
                    "algorithm={algorithm} block_size={block_size} salt_len={} sig_len={}",
                    salt.len(),
                    sig.len()
                )),
            ),
        };
        Dumper::line(title, &path, rest.as_deref(), out);
    }
}
