//! The Btrfs send stream, read as it passes through the tool: no copy of file data, no second
//! read, names as bytes.
//!
//! Format (btrfs-progs `kernel-shared/send.h`, `common/send-stream.c`): a 17-byte header
//! (`btrfs-stream\0`, version u32), then commands, each a 10-byte header (payload length u32,
//! command u16, CRC32C u32) and a payload of TLV attributes (type u16, length u16, value).
//! From version 2 the DATA attribute has no length: it runs to the end of its command.
//! Integers are little-endian. The CRC32C covers the header with its CRC field zeroed and the
//! payload, seeded 0 with no final inversion (the kernel's `crc32c(0, …)`).
//!
//! `parse::Parser` is a push parser (`feed` slices of any size, `finish`); `Command::op`
//! decodes a command into an `Op`; `dump` renders ops as `btrfs receive --dump` prints them
//! (the test oracle); `encode` builds streams (tests and fuzz seeds).
//!
//! Why our own and not a crate (evaluated 2026-12): `sendstream_parser` 0.2 needs nightly,
//! reads version 1 only, wants the whole stream in one slice, never checks the CRC and panics
//! on bad input. `btrfs-stream` 0.13 is close (pull reader, v1–v3, CRC checked) but keeps
//! paths as UTF-8 `String`s (a non-UTF-8 name stops the stream), copies file data into a
//! `Vec`, reports no stream offsets, and sizes its buffer from the stream's u32 length before
//! the CRC is checked (a 4 GiB allocation from one bad header). Patching four of our seven
//! needs costs more than this module.
//!
//! *Invariants:* memory per command is bounded (`MAX_ATTR_BYTES` of non-data attributes; DATA
//! is never buffered); a command reaches the caller only after its CRC matched; every offset
//! is a byte position in the plaintext send stream.

pub mod apply;
pub mod dump;
pub mod encode;
pub mod parse;
#[cfg(test)]
mod tests;

pub use parse::Parser;

/// The stream header's magic, with its NUL.
pub const MAGIC: &[u8; 13] = b"btrfs-stream\0";
pub const STREAM_HEADER_LEN: usize = 17;
pub const CMD_HEADER_LEN: usize = 10;
/// The newest stream version understood (the kernel emits 1 or 2; 3 adds fs-verity).
pub const MAX_VERSION: u32 = 3;
/// No kernel writes a command larger than its send buffer (64 KiB in v1, 16 KiB + 128 KiB
/// in v2); a longer one is a damaged length, refused before it is read.
pub const MAX_COMMAND_BYTES: u32 = 16 << 20;
/// Non-data attribute bytes kept per command (paths, xattr values: each at most 64 KiB).
pub const MAX_ATTR_BYTES: usize = 1 << 20;

/// Attribute types (`BTRFS_SEND_A_*`).
pub mod attr {
    pub const UUID: u16 = 1;
    pub const CTRANSID: u16 = 2;
    pub const INO: u16 = 3;
    pub const SIZE: u16 = 4;
    pub const MODE: u16 = 5;
    pub const UID: u16 = 6;
    pub const GID: u16 = 7;
    pub const RDEV: u16 = 8;
    pub const CTIME: u16 = 9;
    pub const MTIME: u16 = 10;
    pub const ATIME: u16 = 11;
    pub const OTIME: u16 = 12;
    pub const XATTR_NAME: u16 = 13;
    pub const XATTR_DATA: u16 = 14;
    pub const PATH: u16 = 15;
    pub const PATH_TO: u16 = 16;
    pub const PATH_LINK: u16 = 17;
    pub const FILE_OFFSET: u16 = 18;
    pub const DATA: u16 = 19;
    pub const CLONE_UUID: u16 = 20;
    pub const CLONE_CTRANSID: u16 = 21;
    pub const CLONE_PATH: u16 = 22;
    pub const CLONE_OFFSET: u16 = 23;
    pub const CLONE_LEN: u16 = 24;
    pub const FALLOCATE_MODE: u16 = 25;
    pub const FILEATTR: u16 = 26;
    pub const UNENCODED_FILE_LEN: u16 = 27;
    pub const UNENCODED_LEN: u16 = 28;
    pub const UNENCODED_OFFSET: u16 = 29;
    pub const COMPRESSION: u16 = 30;
    pub const ENCRYPTION: u16 = 31;
    pub const VERITY_ALGORITHM: u16 = 32;
    pub const VERITY_BLOCK_SIZE: u16 = 33;
    pub const VERITY_SALT_DATA: u16 = 34;
    pub const VERITY_SIG_DATA: u16 = 35;
    pub const MAX: u16 = 35;

    const NAMES: [&str; 35] = [
        "uuid",
        "ctransid",
        "ino",
        "size",
        "mode",
        "uid",
        "gid",
        "rdev",
        "ctime",
        "mtime",
        "atime",
        "otime",
        "xattr_name",
        "xattr_data",
        "path",
        "path_to",
        "path_link",
        "file_offset",
        "data",
        "clone_uuid",
        "clone_ctransid",
        "clone_path",
        "clone_offset",
        "clone_len",
        "fallocate_mode",
        "fileattr",
        "unencoded_file_len",
        "unencoded_len",
        "unencoded_offset",
        "compression",
        "encryption",
        "verity_algorithm",
        "verity_block_size",
        "verity_salt_data",
        "verity_sig_data",
    ];

    /// The attribute's name for messages (`attribute N` when unknown).
    pub fn name(attr: u16) -> String {
        attr.checked_sub(1)
            .and_then(|i| NAMES.get(usize::from(i)))
            .map_or_else(|| format!("attribute {attr}"), |n| (*n).to_string())
    }
}

/// Command types (`BTRFS_SEND_C_*`), in code order from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Subvol,
    Snapshot,
    Mkfile,
    Mkdir,
    Mknod,
    Mkfifo,
    Mksock,
    Symlink,
    Rename,
    Link,
    Unlink,
    Rmdir,
    SetXattr,
    RemoveXattr,
    Write,
    Clone,
    Truncate,
    Chmod,
    Chown,
    Utimes,
    End,
    UpdateExtent,
    Fallocate,
    Fileattr,
    EncodedWrite,
    EnableVerity,
}

impl Kind {
    pub const ALL: [Kind; 26] = [
        Kind::Subvol,
        Kind::Snapshot,
        Kind::Mkfile,
        Kind::Mkdir,
        Kind::Mknod,
        Kind::Mkfifo,
        Kind::Mksock,
        Kind::Symlink,
        Kind::Rename,
        Kind::Link,
        Kind::Unlink,
        Kind::Rmdir,
        Kind::SetXattr,
        Kind::RemoveXattr,
        Kind::Write,
        Kind::Clone,
        Kind::Truncate,
        Kind::Chmod,
        Kind::Chown,
        Kind::Utimes,
        Kind::End,
        Kind::UpdateExtent,
        Kind::Fallocate,
        Kind::Fileattr,
        Kind::EncodedWrite,
        Kind::EnableVerity,
    ];

    pub fn from_code(code: u16) -> Option<Kind> {
        code.checked_sub(1)
            .and_then(|i| Kind::ALL.get(usize::from(i)))
            .copied()
    }

    pub fn code(self) -> u16 {
        // Declared in code order from 0; codes start at 1 (`from_code_inverts_code`).
        self as u16 + 1
    }

    /// The first stream version that has this command.
    pub fn min_version(self) -> u32 {
        match self.code() {
            0..=22 => 1,
            23..=25 => 2,
            _ => 3,
        }
    }

    /// The name `btrfs receive --dump` prints.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Subvol => "subvol",
            Kind::Snapshot => "snapshot",
            Kind::Mkfile => "mkfile",
            Kind::Mkdir => "mkdir",
            Kind::Mknod => "mknod",
            Kind::Mkfifo => "mkfifo",
            Kind::Mksock => "mksock",
            Kind::Symlink => "symlink",
            Kind::Rename => "rename",
            Kind::Link => "link",
            Kind::Unlink => "unlink",
            Kind::Rmdir => "rmdir",
            Kind::SetXattr => "set_xattr",
            Kind::RemoveXattr => "remove_xattr",
            Kind::Write => "write",
            Kind::Clone => "clone",
            Kind::Truncate => "truncate",
            Kind::Chmod => "chmod",
            Kind::Chown => "chown",
            Kind::Utimes => "utimes",
            Kind::End => "end",
            Kind::UpdateExtent => "update_extent",
            Kind::Fallocate => "fallocate",
            Kind::Fileattr => "fileattr",
            Kind::EncodedWrite => "encoded_write",
            Kind::EnableVerity => "enable_verity",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a DATA attribute lies in the stream: its first byte's offset and its length; and
/// the CRC-32C of its bytes alone as the stream computes CRCs (`crc32c_raw(0, bytes)`: zero
/// seed, no inversion), taken as they passed and before the command's CRC matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataRef {
    pub offset: u64,
    pub len: u64,
    pub crc: u32,
}

/// A time as the stream carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

/// One command whose CRC matched, with its non-data attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub kind: Kind,
    /// Stream offset of the command's header.
    pub offset: u64,
    /// Payload length (after the 10-byte header).
    pub len: u32,
    /// (type, start in `buf`, length) in stream order.
    attrs: Vec<(u16, u32, u32)>,
    buf: Vec<u8>,
    pub data: Option<DataRef>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamError {
    #[error("not a btrfs send stream: it starts with {found:?}, not \"btrfs-stream\"")]
    Magic { found: String },
    #[error("send stream version {0}: this tool reads versions 1 to {MAX_VERSION}")]
    Version(u32),
    #[error("unknown send stream command {code} at byte {offset}")]
    UnknownCommand { code: u16, offset: u64 },
    #[error(
        "{kind} at byte {offset} needs send stream version {needs}; the stream says {version}"
    )]
    CommandTooNew {
        kind: Kind,
        offset: u64,
        needs: u32,
        version: u32,
    },
    #[error("{kind} at byte {offset} claims {len} bytes, more than any kernel writes (a damaged stream)")]
    CommandTooLarge { kind: Kind, offset: u64, len: u32 },
    #[error("{kind} at byte {offset}: unknown attribute type {attr}")]
    UnknownAttribute { kind: Kind, offset: u64, attr: u16 },
    #[error("{kind} at byte {offset}: attribute {} runs past the end of its command", attr::name(*.attr))]
    AttributeOverrun { kind: Kind, offset: u64, attr: u16 },
    #[error("{kind} at byte {offset}: an attribute header is cut by the end of its command")]
    HeaderCut { kind: Kind, offset: u64 },
    #[error("{kind} at byte {offset}: more than {MAX_ATTR_BYTES} bytes of attributes")]
    TooManyAttributeBytes { kind: Kind, offset: u64 },
    #[error("{kind} at byte {offset}: two data attributes")]
    TwoData { kind: Kind, offset: u64 },
    #[error("CRC32C mismatch in {kind} at byte {offset}: stored {stored:08x}, computed {computed:08x} (a damaged stream)")]
    Crc {
        kind: Kind,
        offset: u64,
        stored: u32,
        computed: u32,
    },
    #[error("bytes after the end command, at byte {offset}")]
    AfterEnd { offset: u64 },
    #[error("the send stream ends at byte {offset}, inside {inside}")]
    Truncated { offset: u64, inside: String },
    #[error("{kind} at byte {offset} lacks its {} attribute", attr::name(*.attr))]
    Missing { kind: Kind, offset: u64, attr: u16 },
    #[error("{kind} at byte {offset}: {} is {len} bytes, not {want}", attr::name(*.attr))]
    BadLength {
        kind: Kind,
        offset: u64,
        attr: u16,
        len: u32,
        want: u32,
    },
    #[error("{kind} at byte {offset}: {} {path:?} is not a relative path inside the subvolume", attr::name(*.attr))]
    BadPath {
        kind: Kind,
        offset: u64,
        attr: u16,
        path: String,
    },
}

/// A command decoded, with every attribute it needs. Paths are relative to the subvolume,
/// as bytes ("" is the subvolume's root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Subvol {
        path: &'a [u8],
        uuid: [u8; 16],
        ctransid: u64,
    },
    Snapshot {
        path: &'a [u8],
        uuid: [u8; 16],
        ctransid: u64,
        clone_uuid: [u8; 16],
        clone_ctransid: u64,
    },
    Mkfile {
        path: &'a [u8],
        ino: u64,
    },
    Mkdir {
        path: &'a [u8],
        ino: u64,
    },
    Mknod {
        path: &'a [u8],
        ino: u64,
        mode: u64,
        rdev: u64,
    },
    Mkfifo {
        path: &'a [u8],
        ino: u64,
    },
    Mksock {
        path: &'a [u8],
        ino: u64,
    },
    Symlink {
        path: &'a [u8],
        ino: u64,
        target: &'a [u8],
    },
    Rename {
        path: &'a [u8],
        to: &'a [u8],
    },
    Link {
        path: &'a [u8],
        target: &'a [u8],
    },
    Unlink {
        path: &'a [u8],
    },
    Rmdir {
        path: &'a [u8],
    },
    SetXattr {
        path: &'a [u8],
        name: &'a [u8],
        data: &'a [u8],
    },
    RemoveXattr {
        path: &'a [u8],
        name: &'a [u8],
    },
    Write {
        path: &'a [u8],
        offset: u64,
        data: DataRef,
    },
    Clone {
        path: &'a [u8],
        offset: u64,
        len: u64,
        clone_uuid: [u8; 16],
        clone_ctransid: u64,
        source: &'a [u8],
        source_offset: u64,
    },
    Truncate {
        path: &'a [u8],
        size: u64,
    },
    Chmod {
        path: &'a [u8],
        mode: u64,
    },
    Chown {
        path: &'a [u8],
        uid: u64,
        gid: u64,
    },
    Utimes {
        path: &'a [u8],
        atime: Timespec,
        mtime: Timespec,
        ctime: Timespec,
    },
    End,
    UpdateExtent {
        path: &'a [u8],
        offset: u64,
        len: u64,
    },
    Fallocate {
        path: &'a [u8],
        mode: u32,
        offset: u64,
        len: u64,
    },
    Fileattr {
        path: &'a [u8],
        attr: u64,
    },
    EncodedWrite {
        path: &'a [u8],
        offset: u64,
        unencoded_file_len: u64,
        unencoded_len: u64,
        unencoded_offset: u64,
        compression: u32,
        encryption: u32,
        data: DataRef,
    },
    EnableVerity {
        path: &'a [u8],
        algorithm: u8,
        block_size: u32,
        salt: &'a [u8],
        sig: &'a [u8],
    },
}

/// The order every consumer of a stream holds it to: a subvol or snapshot command first and
/// only once, nothing after the end command. `started`/`ended`: whether those were applied.
pub fn out_of_order(op: &Op<'_>, started: bool, ended: bool) -> Option<&'static str> {
    let starts = matches!(op, Op::Subvol { .. } | Op::Snapshot { .. });
    if ended {
        Some("after the end command")
    } else if starts && started {
        Some("a second subvol or snapshot command")
    } else if !starts && !started {
        Some("before the subvol or snapshot command")
    } else {
        None
    }
}

/// Where a CLONE's source lies: the snapshot being made, or the parent it is made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloneFrom {
    This,
    Parent,
}

/// Which subvolume a CLONE of `clone_uuid` reads, given this snapshot's UUID and its
/// parent's (when known); any other is refused, naming it.
pub fn clone_from(
    clone_uuid: [u8; 16],
    this: [u8; 16],
    parent: Option<[u8; 16]>,
) -> Result<CloneFrom, String> {
    if clone_uuid == this {
        Ok(CloneFrom::This)
    } else if parent == Some(clone_uuid) {
        Ok(CloneFrom::Parent)
    } else {
        Err(format!(
            "a clone from subvolume {}, neither this snapshot nor its parent",
            hex::encode(clone_uuid)
        ))
    }
}

/// A path the kernel could have written: relative, no empty, `.` or `..` component, no NUL.
/// "" (the subvolume's root) is allowed.
pub fn is_inner_path(path: &[u8]) -> bool {
    // One pass (every command's path goes through here): no NUL, and each component is
    // neither empty, "." nor "..".
    let bad = |len: usize, dots: usize| len == 0 || (len == dots && len <= 2);
    if path.is_empty() {
        return true;
    }
    let (mut len, mut dots) = (0, 0);
    for &b in path {
        match b {
            0 => return false,
            b'/' => {
                if bad(len, dots) {
                    return false;
                }
                (len, dots) = (0, 0);
            }
            b'.' => (len, dots) = (len + 1, dots + 1),
            _ => len += 1,
        }
    }
    !bad(len, dots)
}

impl Command {
    /// The stream offset just past this command.
    pub fn end(&self) -> u64 {
        self.offset + CMD_HEADER_LEN as u64 + u64::from(self.len)
    }

    /// The value of attribute `attr` (the last one if repeated, as btrfs-progs reads it).
    pub fn get(&self, attr: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .rev()
            .find(|(a, _, _)| *a == attr)
            .and_then(|&(_, at, len)| self.buf.get(at as usize..(at as usize + len as usize)))
    }

    /// The DATA bytes, when the parser kept them (`Parser::with_data`).
    pub fn data_bytes(&self) -> Option<&[u8]> {
        self.data.and(self.get(attr::DATA))
    }

    /// Every attribute present, in stream order (DATA only when kept).
    pub fn attrs(&self) -> impl Iterator<Item = u16> + '_ {
        self.attrs.iter().map(|(a, _, _)| *a)
    }

    fn need(&self, attr: u16) -> Result<&[u8], StreamError> {
        self.get(attr).ok_or(StreamError::Missing {
            kind: self.kind,
            offset: self.offset,
            attr,
        })
    }

    fn fixed<const N: usize>(&self, attr: u16) -> Result<[u8; N], StreamError> {
        let v = self.need(attr)?;
        v.try_into().map_err(|_| StreamError::BadLength {
            kind: self.kind,
            offset: self.offset,
            attr,
            len: v.len() as u32,
            want: N as u32,
        })
    }

    fn u64(&self, attr: u16) -> Result<u64, StreamError> {
        self.fixed::<8>(attr).map(u64::from_le_bytes)
    }

    fn u32(&self, attr: u16) -> Result<u32, StreamError> {
        self.fixed::<4>(attr).map(u32::from_le_bytes)
    }

    fn u32_or_zero(&self, attr: u16) -> Result<u32, StreamError> {
        match self.get(attr) {
            None => Ok(0),
            Some(_) => self.u32(attr),
        }
    }

    fn time(&self, attr: u16) -> Result<Timespec, StreamError> {
        let v = self.fixed::<12>(attr)?;
        let (sec, nsec) = v.split_at(8);
        Ok(Timespec {
            sec: i64::from_le_bytes(sec.try_into().unwrap_or_default()),
            nsec: u32::from_le_bytes(nsec.try_into().unwrap_or_default()),
        })
    }

    /// A path attribute, checked to stay inside the subvolume.
    fn path_of(&self, attr: u16) -> Result<&[u8], StreamError> {
        let p = self.need(attr)?;
        if is_inner_path(p) {
            Ok(p)
        } else {
            Err(StreamError::BadPath {
                kind: self.kind,
                offset: self.offset,
                attr,
                path: String::from_utf8_lossy(p).into_owned(),
            })
        }
    }

    fn data_ref(&self) -> Result<DataRef, StreamError> {
        self.data.ok_or(StreamError::Missing {
            kind: self.kind,
            offset: self.offset,
            attr: attr::DATA,
        })
    }

    /// Decodes the command, checking that every attribute it needs is present with its size
    /// and that every path stays inside the subvolume (a symlink's target may be anything).
    pub fn op(&self) -> Result<Op<'_>, StreamError> {
        use attr::*;
        let path = || self.path_of(PATH);
        Ok(match self.kind {
            Kind::Subvol => Op::Subvol {
                path: path()?,
                uuid: self.fixed(UUID)?,
                ctransid: self.u64(CTRANSID)?,
            },
            Kind::Snapshot => Op::Snapshot {
                path: path()?,
                uuid: self.fixed(UUID)?,
                ctransid: self.u64(CTRANSID)?,
                clone_uuid: self.fixed(CLONE_UUID)?,
                clone_ctransid: self.u64(CLONE_CTRANSID)?,
            },
            Kind::Mkfile => Op::Mkfile {
                path: path()?,
                ino: self.u64(INO)?,
            },
            Kind::Mkdir => Op::Mkdir {
                path: path()?,
                ino: self.u64(INO)?,
            },
            Kind::Mknod => Op::Mknod {
                path: path()?,
                ino: self.u64(INO)?,
                mode: self.u64(MODE)?,
                rdev: self.u64(RDEV)?,
            },
            Kind::Mkfifo => Op::Mkfifo {
                path: path()?,
                ino: self.u64(INO)?,
            },
            Kind::Mksock => Op::Mksock {
                path: path()?,
                ino: self.u64(INO)?,
            },
            Kind::Symlink => Op::Symlink {
                path: path()?,
                ino: self.u64(INO)?,
                target: self.need(PATH_LINK)?,
            },
            Kind::Rename => Op::Rename {
                path: path()?,
                to: self.path_of(PATH_TO)?,
            },
            Kind::Link => Op::Link {
                path: path()?,
                target: self.path_of(PATH_LINK)?,
            },
            Kind::Unlink => Op::Unlink { path: path()? },
            Kind::Rmdir => Op::Rmdir { path: path()? },
            Kind::SetXattr => Op::SetXattr {
                path: path()?,
                name: self.need(XATTR_NAME)?,
                data: self.need(XATTR_DATA)?,
            },
            Kind::RemoveXattr => Op::RemoveXattr {
                path: path()?,
                name: self.need(XATTR_NAME)?,
            },
            Kind::Write => Op::Write {
                path: path()?,
                offset: self.u64(FILE_OFFSET)?,
                data: self.data_ref()?,
            },
            Kind::Clone => Op::Clone {
                path: path()?,
                offset: self.u64(FILE_OFFSET)?,
                len: self.u64(CLONE_LEN)?,
                clone_uuid: self.fixed(CLONE_UUID)?,
                clone_ctransid: self.u64(CLONE_CTRANSID)?,
                source: self.path_of(CLONE_PATH)?,
                source_offset: self.u64(CLONE_OFFSET)?,
            },
            Kind::Truncate => Op::Truncate {
                path: path()?,
                size: self.u64(SIZE)?,
            },
            Kind::Chmod => Op::Chmod {
                path: path()?,
                mode: self.u64(MODE)?,
            },
            Kind::Chown => Op::Chown {
                path: path()?,
                uid: self.u64(UID)?,
                gid: self.u64(GID)?,
            },
            Kind::Utimes => Op::Utimes {
                path: path()?,
                atime: self.time(ATIME)?,
                mtime: self.time(MTIME)?,
                ctime: self.time(CTIME)?,
            },
            Kind::End => Op::End,
            Kind::UpdateExtent => Op::UpdateExtent {
                path: path()?,
                offset: self.u64(FILE_OFFSET)?,
                len: self.u64(SIZE)?,
            },
            Kind::Fallocate => Op::Fallocate {
                path: path()?,
                mode: self.u32(FALLOCATE_MODE)?,
                offset: self.u64(FILE_OFFSET)?,
                len: self.u64(SIZE)?,
            },
            Kind::Fileattr => Op::Fileattr {
                path: path()?,
                attr: self.u64(FILEATTR)?,
            },
            Kind::EncodedWrite => Op::EncodedWrite {
                path: path()?,
                offset: self.u64(FILE_OFFSET)?,
                unencoded_file_len: self.u64(UNENCODED_FILE_LEN)?,
                unencoded_len: self.u64(UNENCODED_LEN)?,
                unencoded_offset: self.u64(UNENCODED_OFFSET)?,
                compression: self.u32_or_zero(COMPRESSION)?,
                encryption: self.u32_or_zero(ENCRYPTION)?,
                data: self.data_ref()?,
            },
            Kind::EnableVerity => Op::EnableVerity {
                path: path()?,
                algorithm: self.fixed::<1>(VERITY_ALGORITHM)?[0],
                block_size: self.u32(VERITY_BLOCK_SIZE)?,
                salt: self.need(VERITY_SALT_DATA)?,
                sig: self.need(VERITY_SIG_DATA)?,
            },
        })
    }
}
