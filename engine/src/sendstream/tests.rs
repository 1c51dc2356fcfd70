use super::encode::{resign, time, u64le, Encoder};
use super::*;

const UUID_A: [u8; 16] = [0x11; 16];
const UUID_B: [u8; 16] = [0x22; 16];

fn parse_all(stream: &[u8]) -> Result<Vec<Command>, StreamError> {
    let mut p = Parser::new();
    let mut out = Vec::new();
    p.feed(stream, &mut out)?;
    p.finish()?;
    Ok(out)
}

/// A stream with every command the version has, file data of `data` in one WRITE.
fn every_command(version: u32, data: &[u8]) -> Vec<u8> {
    use attr::*;
    let mut e = Encoder::new(version);
    let ino = u64le(257);
    e.command(
        Kind::Snapshot,
        &[
            (PATH, b"snap"),
            (UUID, &UUID_A),
            (CTRANSID, &u64le(9)),
            (CLONE_UUID, &UUID_B),
            (CLONE_CTRANSID, &u64le(7)),
        ],
        None,
    );
    e.command(Kind::Mkdir, &[(PATH, b"o256-5-0"), (INO, &ino)], None);
    e.command(
        Kind::Rename,
        &[(PATH, b"o256-5-0"), (PATH_TO, b"dir")],
        None,
    );
    e.command(Kind::Mkfile, &[(PATH, b"dir/f\xff\n"), (INO, &ino)], None);
    e.command(
        Kind::Write,
        &[(PATH, b"dir/f\xff\n"), (FILE_OFFSET, &u64le(4096))],
        Some(data),
    );
    e.command(
        Kind::Clone,
        &[
            (PATH, b"dir/g"),
            (FILE_OFFSET, &u64le(0)),
            (CLONE_LEN, &u64le(4096)),
            (CLONE_UUID, &UUID_A),
            (CLONE_CTRANSID, &u64le(9)),
            (CLONE_PATH, b"dir/f\xff\n"),
            (CLONE_OFFSET, &u64le(8192)),
        ],
        None,
    );
    e.command(
        Kind::Mknod,
        &[
            (PATH, b"dev"),
            (INO, &ino),
            (MODE, &u64le(0o20644)),
            (RDEV, &u64le(0x103)),
        ],
        None,
    );
    e.command(Kind::Mkfifo, &[(PATH, b"fifo"), (INO, &ino)], None);
    e.command(Kind::Mksock, &[(PATH, b"sock"), (INO, &ino)], None);
    e.command(
        Kind::Symlink,
        &[(PATH, b"ln"), (INO, &ino), (PATH_LINK, b"../../etc/passwd")],
        None,
    );
    e.command(Kind::Link, &[(PATH, b"hard"), (PATH_LINK, b"dir/g")], None);
    e.command(Kind::Unlink, &[(PATH, b"hard")], None);
    e.command(Kind::Rmdir, &[(PATH, b"old")], None);
    e.command(
        Kind::SetXattr,
        &[
            (PATH, b"dir/g"),
            (XATTR_NAME, b"user.k"),
            (XATTR_DATA, b"v\0binary"),
        ],
        None,
    );
    e.command(
        Kind::RemoveXattr,
        &[(PATH, b"dir/g"), (XATTR_NAME, b"user.k")],
        None,
    );
    e.command(
        Kind::Truncate,
        &[(PATH, b"dir/g"), (SIZE, &u64le(100))],
        None,
    );
    e.command(Kind::Chmod, &[(PATH, b""), (MODE, &u64le(0o755))], None);
    e.command(
        Kind::Chown,
        &[(PATH, b""), (UID, &u64le(1000)), (GID, &u64le(100))],
        None,
    );
    e.command(
        Kind::Utimes,
        &[
            (PATH, b"dir"),
            (ATIME, &time(1_700_000_000, 5)),
            (MTIME, &time(1_700_000_001, 6)),
            (CTIME, &time(1_700_000_002, 7)),
        ],
        None,
    );
    e.command(
        Kind::UpdateExtent,
        &[
            (PATH, b"dir/g"),
            (FILE_OFFSET, &u64le(0)),
            (SIZE, &u64le(9)),
        ],
        None,
    );
    if version >= 2 {
        e.command(
            Kind::Fallocate,
            &[
                (PATH, b"dir/g"),
                (FALLOCATE_MODE, &1u32.to_le_bytes()),
                (FILE_OFFSET, &u64le(0)),
                (SIZE, &u64le(65536)),
            ],
            None,
        );
        e.command(
            Kind::Fileattr,
            &[(PATH, b"dir/g"), (FILEATTR, &u64le(16))],
            None,
        );
        e.command(
            Kind::EncodedWrite,
            &[
                (PATH, b"dir/g"),
                (FILE_OFFSET, &u64le(0)),
                (UNENCODED_FILE_LEN, &u64le(8192)),
                (UNENCODED_LEN, &u64le(8192)),
                (UNENCODED_OFFSET, &u64le(0)),
                (COMPRESSION, &1u32.to_le_bytes()),
            ],
            Some(&data[..data.len().min(100)]),
        );
    }
    if version >= 3 {
        e.command(
            Kind::EnableVerity,
            &[
                (PATH, b"dir/g"),
                (VERITY_ALGORITHM, &[1]),
                (VERITY_BLOCK_SIZE, &4096u32.to_le_bytes()),
                (VERITY_SALT_DATA, b"salt"),
                (VERITY_SIG_DATA, b""),
            ],
            None,
        );
    }
    e.finish()
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn from_code_inverts_code() {
    for (i, k) in Kind::ALL.iter().enumerate() {
        assert_eq!(k.code(), i as u16 + 1);
        assert_eq!(Kind::from_code(k.code()), Some(*k));
    }
    assert_eq!(Kind::from_code(0), None);
    assert_eq!(Kind::from_code(27), None);
    assert_eq!(Kind::Fallocate.min_version(), 2);
    assert_eq!(Kind::EnableVerity.min_version(), 3);
    assert_eq!(Kind::UpdateExtent.min_version(), 1);
}

#[test]
fn every_command_of_every_version_decodes_with_its_data_located_in_the_stream() {
    for version in 1..=3 {
        // v1 data carries a u16 length; v2 data runs to the command's end.
        let body = data(if version == 1 { 60_000 } else { 130_000 });
        let stream = every_command(version, &body);
        let cmds = parse_all(&stream).expect("parses");
        let expected = 20 + if version >= 2 { 3 } else { 0 } + usize::from(version >= 3) + 1;
        assert_eq!(cmds.len(), expected, "v{version}");
        let mut at = STREAM_HEADER_LEN as u64;
        for c in &cmds {
            assert_eq!(c.offset, at, "v{version} {}", c.kind);
            at = c.end();
            c.op()
                .unwrap_or_else(|e| panic!("v{version} {}: {e}", c.kind));
        }
        assert_eq!(at, stream.len() as u64);
        let write = cmds.iter().find(|c| c.kind == Kind::Write).expect("write");
        match write.op().expect("op") {
            Op::Write { path, offset, data } => {
                assert_eq!(path, b"dir/f\xff\n");
                assert_eq!(offset, 4096);
                assert_eq!(data.len, body.len() as u64);
                let at = data.offset as usize;
                assert_eq!(&stream[at..at + body.len()], &body[..]);
            }
            other => panic!("{other:?}"),
        }
        match cmds[1].op().expect("op") {
            Op::Mkdir { path, ino } => assert_eq!((path, ino), (&b"o256-5-0"[..], 257)),
            other => panic!("{other:?}"),
        }
        let utimes = cmds
            .iter()
            .find(|c| c.kind == Kind::Utimes)
            .expect("utimes");
        assert!(matches!(
            utimes.op(),
            Ok(Op::Utimes {
                mtime: Timespec {
                    sec: 1_700_000_001,
                    nsec: 6
                },
                ..
            })
        ));
        assert_eq!(cmds.last().map(|c| c.kind), Some(Kind::End));
    }
}

#[test]
fn any_split_of_the_stream_gives_the_same_commands() {
    let stream = every_command(2, &data(20_000));
    let whole = parse_all(&stream).expect("parses");
    // Byte by byte, and in slices of many sizes.
    for step in [1usize, 2, 3, 7, 10, 17, 64, 4095, 65536] {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for piece in stream.chunks(step) {
            p.feed(piece, &mut out).expect("feeds");
        }
        p.finish().expect("ends");
        assert_eq!(out, whole, "slices of {step}");
        assert_eq!(p.position(), stream.len() as u64);
        assert_eq!(p.version(), 2);
    }
}

#[test]
fn a_stream_cut_anywhere_is_an_error_naming_where() {
    let stream = every_command(2, &data(3000));
    for cut in 0..stream.len() {
        let mut p = Parser::new();
        let mut out = Vec::new();
        let r = p.feed(&stream[..cut], &mut out).and_then(|()| p.finish());
        match r {
            Err(StreamError::Truncated { offset, .. }) => assert_eq!(offset, cut as u64),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[test]
fn the_crc_covers_every_byte_of_every_command() {
    let stream = every_command(2, &data(500));
    for at in STREAM_HEADER_LEN..stream.len() {
        let mut bad = stream.clone();
        bad[at] ^= 0x40;
        let err = parse_all(&bad).expect_err(&format!("flip at {at}"));
        // A flipped length or type may be caught earlier; never accepted.
        assert!(
            !matches!(err, StreamError::Magic { .. } | StreamError::Version(_)),
            "{at}: {err}"
        );
    }
    let mut bad = stream.clone();
    bad[STREAM_HEADER_LEN + CMD_HEADER_LEN + 5] ^= 1; // inside the snapshot's path
    match parse_all(&bad) {
        Err(StreamError::Crc { kind, offset, .. }) => {
            assert_eq!((kind, offset), (Kind::Snapshot, STREAM_HEADER_LEN as u64))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_streams_are_refused_with_what_and_where() {
    use attr::*;
    let err = |s: &[u8]| parse_all(s).expect_err("refused");
    assert!(matches!(
        err(b"not-a-stream-at-all!"),
        StreamError::Magic { .. }
    ));
    assert_eq!(err(&Encoder::new(0).finish()), StreamError::Version(0));
    assert_eq!(err(&Encoder::new(4).finish()), StreamError::Version(4));

    // A command of a later version than the stream's.
    let mut e = Encoder::new(1);
    e.command(Kind::Fallocate, &[(PATH, b"f")], None);
    assert!(matches!(
        err(e.bytes()),
        StreamError::CommandTooNew {
            kind: Kind::Fallocate,
            needs: 2,
            version: 1,
            offset: 17
        }
    ));

    // An unknown command code.
    let mut s = Encoder::new(2).finish();
    s[17 + 4] = 99;
    resign(&mut s);
    assert!(matches!(
        err(&s),
        StreamError::UnknownCommand {
            code: 99,
            offset: 17
        }
    ));

    // A length no kernel writes, refused before anything is read.
    let mut s = Encoder::new(2).finish();
    s[17..21].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(err(&s), StreamError::CommandTooLarge { .. }));

    // An unknown attribute type; an attribute longer than its command.
    let mut e = Encoder::new(2);
    e.command(Kind::Unlink, &[(36, b"x")], None);
    assert!(matches!(
        err(e.bytes()),
        StreamError::UnknownAttribute { attr: 36, .. }
    ));
    let mut e = Encoder::new(2);
    e.command(Kind::Unlink, &[(PATH, b"abc")], None);
    let mut s = e.bytes().to_vec();
    s[17 + 10 + 2] = 200; // the path's length
    resign(&mut s);
    assert!(matches!(
        err(&s),
        StreamError::AttributeOverrun { attr: PATH, .. }
    ));

    // Two data attributes; bytes after the end.
    let mut e = Encoder::new(1);
    e.command(Kind::Write, &[(PATH, b"f"), (DATA, b"a")], Some(b"b"));
    assert!(matches!(err(e.bytes()), StreamError::TwoData { .. }));
    let mut s = Encoder::new(2).finish();
    s.push(0);
    assert!(matches!(err(&s), StreamError::AfterEnd { offset } if offset == 27));

    // No end command.
    let mut e = Encoder::new(2);
    e.command(Kind::Unlink, &[(PATH, b"f")], None);
    assert!(matches!(err(e.bytes()), StreamError::Truncated { .. }));
}

#[test]
fn decoding_names_a_missing_attribute_a_bad_size_and_a_path_escaping_the_subvolume() {
    use attr::*;
    let one = |kind: Kind, attrs: &[(u16, &[u8])]| -> Command {
        let mut e = Encoder::new(2);
        e.command(kind, attrs, None);
        let mut cmds = parse_all(&e.finish()).expect("parses");
        cmds.remove(0)
    };
    let c = one(Kind::Truncate, &[(PATH, b"f")]);
    assert_eq!(
        c.op().expect_err("missing"),
        StreamError::Missing {
            kind: Kind::Truncate,
            offset: 17,
            attr: SIZE
        }
    );
    assert_eq!(
        c.op().expect_err("missing").to_string(),
        "truncate at byte 17 lacks its size attribute"
    );
    let c = one(Kind::Truncate, &[(PATH, b"f"), (SIZE, b"1234")]);
    assert!(matches!(
        c.op(),
        Err(StreamError::BadLength {
            attr: SIZE,
            len: 4,
            want: 8,
            ..
        })
    ));
    for bad in [
        &b"/etc/passwd"[..],
        b"../x",
        b"a/../../x",
        b"a//b",
        b"./a",
        b"a/",
        b"a\0b",
    ] {
        let c = one(Kind::Unlink, &[(PATH, bad)]);
        assert!(
            matches!(c.op(), Err(StreamError::BadPath { attr: PATH, .. })),
            "{bad:?}"
        );
        let c = one(Kind::Rename, &[(PATH, b"a"), (PATH_TO, bad)]);
        assert!(
            matches!(c.op(), Err(StreamError::BadPath { attr: PATH_TO, .. })),
            "{bad:?}"
        );
    }
    // A symlink's target is data, not a path of ours.
    let c = one(
        Kind::Symlink,
        &[(PATH, b"l"), (INO, &u64le(1)), (PATH_LINK, b"/../x")],
    );
    assert!(c.op().is_ok());
    // A repeated attribute reads as its last value, as btrfs-progs reads it.
    let c = one(Kind::Unlink, &[(PATH, b"a"), (PATH, b"b")]);
    assert_eq!(c.op(), Ok(Op::Unlink { path: b"b" }));
}

#[test]
fn dump_lines_follow_btrfs_receive() {
    let stream = every_command(2, &data(10));
    let mut d = dump::Dumper::new();
    let mut out = Vec::new();
    for c in parse_all(&stream).expect("parses") {
        d.op(&c.op().expect("op"), &mut out);
    }
    let text = String::from_utf8_lossy(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "snapshot        ./snap                          uuid=11111111-1111-1111-1111-111111111111 \
         transid=9 parent_uuid=22222222-2222-2222-2222-222222222222 parent_transid=7"
    );
    assert_eq!(lines[1], "mkdir           ./snap/o256-5-0");
    assert_eq!(
        lines[2],
        "rename          ./snap/o256-5-0                 dest=./snap/dir"
    );
    assert_eq!(lines[3], "mkfile          ./snap/dir/f\\377\\n");
    assert_eq!(
        lines[4],
        "write           ./snap/dir/f\\377\\n              offset=4096 len=10"
    );
    assert!(lines.contains(&"chown           ./snap/                         gid=100 uid=1000"));
    assert!(lines.contains(&"mknod           ./snap/dev                      mode=20644 dev=0x103"));
    assert!(
        lines.contains(&"set_xattr       ./snap/dir/g                    name=user.k data=v len=8")
    );
    assert!(lines.contains(&"fileattr        ./snap/dir/g                    fileattr=0x16"));
    assert!(lines.contains(
        &"utimes          ./snap/dir                      atime=2023-11-14T22:13:20+0000 \
          mtime=2023-11-14T22:13:21+0000 ctime=2023-11-14T22:13:22+0000"
    ));
}

#[test]
fn fuzz_sendstream_parser() {
    let mut seeds = Vec::new();
    for v in 1..=3 {
        seeds.push(every_command(v, &data(300)));
    }
    let mut whole = 0u64;
    let n = fault_injection::fuzz::run(&seeds, |bytes| {
        // As mutated, and re-signed so that mutants reach the attribute parsing.
        let mut signed = bytes.to_vec();
        resign(&mut signed);
        for s in [bytes, &signed[..]] {
            let mut p = Parser::new();
            let mut out = Vec::new();
            // Fed in two pieces, so that a header split across feeds is exercised too.
            let mid = s.len() / 2;
            let r = p
                .feed(&s[..mid], &mut out)
                .and_then(|()| p.feed(&s[mid..], &mut out))
                .and_then(|()| p.finish());
            for c in &out {
                assert!(c.end() <= s.len() as u64);
                if let Ok(Op::Write { data, .. }) = c.op() {
                    assert!(data.offset + data.len <= c.end());
                }
            }
            whole += u64::from(r.is_ok());
        }
    });
    eprintln!("send stream parser: {n} mutants, {whole} parsed whole (as mutated or re-signed), none panicked");
    assert!(n > 0);
}

#[test]
fn a_parser_with_data_hands_on_the_bytes_it_located() {
    for version in 1..=2 {
        let body = data(if version == 1 { 60_000 } else { 130_000 });
        let stream = every_command(version, &body);
        let mut p = Parser::with_data();
        let mut out = Vec::new();
        for piece in stream.chunks(4093) {
            p.feed(piece, &mut out).expect("feeds");
        }
        p.finish().expect("ends");
        let write = out.iter().find(|c| c.kind == Kind::Write).expect("write");
        assert_eq!(write.data_bytes(), Some(&body[..]));
        let d = write.data.expect("located");
        assert_eq!(&stream[d.offset as usize..][..body.len()], &body[..]);
        assert_eq!(
            d.crc,
            super::parse::crc32c_raw(0, &body),
            "the data's own CRC"
        );
        // Without data kept, the same commands carry none.
        let plain = parse_all(&stream).expect("parses");
        let w = plain.iter().find(|c| c.kind == Kind::Write).expect("write");
        assert_eq!((w.data_bytes(), w.data), (None, write.data));
    }
}

#[test]
fn user_space_apply_refuses_what_it_cannot_make_and_writes_nothing_outside_its_target() {
    use super::apply::Applier;
    use attr::*;
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("t");
    std::fs::create_dir(&target).expect("target");
    let run = |a: &mut Applier, stream: &[u8]| -> Result<(), String> {
        let mut p = Parser::with_data();
        let mut out = Vec::new();
        p.feed(stream, &mut out).map_err(|e| e.to_string())?;
        for c in &out {
            a.apply(c).map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    let start = |e: &mut Encoder, name: &[u8]| {
        e.command(
            Kind::Subvol,
            &[(PATH, name), (UUID, &UUID_A), (CTRANSID, &u64le(1))],
            None,
        )
    };
    // A stream without data.
    let mut e = Encoder::new(1);
    start(&mut e, b"a");
    e.command(
        Kind::UpdateExtent,
        &[(PATH, b""), (FILE_OFFSET, &u64le(0)), (SIZE, &u64le(1))],
        None,
    );
    let err = run(&mut Applier::full(&target), &e.finish()).expect_err("refused");
    assert!(err.contains("--no-data"), "{err}");
    // A command before the subvolume; a snapshot name that is a path; a wrong parent.
    let mut e = Encoder::new(1);
    e.command(Kind::Mkdir, &[(PATH, b"x"), (INO, &u64le(1))], None);
    let err = run(&mut Applier::full(&target), &e.finish()).expect_err("refused");
    assert!(err.contains("before the subvol"), "{err}");
    let mut e = Encoder::new(1);
    start(&mut e, b"../escape");
    let err = run(&mut Applier::full(&target), &e.finish()).expect_err("refused");
    assert!(
        err.contains("not a relative path") || err.contains("one component"),
        "{err}"
    );
    let mut e = Encoder::new(1);
    e.command(
        Kind::Snapshot,
        &[
            (PATH, b"b"),
            (UUID, &UUID_B),
            (CTRANSID, &u64le(2)),
            (CLONE_UUID, &UUID_B),
            (CLONE_CTRANSID, &u64le(1)),
        ],
        None,
    );
    let err = run(
        &mut Applier::incremental(&target, &target.join("a"), Some(UUID_A)),
        &e.finish(),
    )
    .expect_err("refused");
    assert!(err.contains("applied to"), "{err}");
    // Nothing was made outside the target, and only the first stream's directory inside it.
    let outside: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(outside, ["t"]);
    let inside: Vec<_> = std::fs::read_dir(&target)
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(inside, ["a"]);
}

/// `is_inner_path` against its definition, on every path of up to 6 bytes over the bytes
/// that matter ("a", ".", "/", NUL).
#[test]
fn inner_paths_are_exactly_those_of_plain_components() {
    fn reference(path: &[u8]) -> bool {
        path.is_empty()
            || (!path.contains(&0)
                && path
                    .split(|&b| b == b'/')
                    .all(|c| !c.is_empty() && c != b"." && c != b".."))
    }
    let alphabet = [b'a', b'.', b'/', 0];
    let mut checked = 0;
    for len in 0..=6u32 {
        for mut n in 0..4usize.pow(len) {
            let mut p = Vec::new();
            for _ in 0..len {
                p.push(alphabet[n % 4]);
                n /= 4;
            }
            assert_eq!(super::is_inner_path(&p), reference(&p), "{p:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 5461);
}
