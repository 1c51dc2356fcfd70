//! Where the file index's time goes, for BENCHMARKS.md: reads a send stream from stdin (as
//! `btrfs send` writes it) and times, in this process, the parse alone (CRC32C of every
//! command included), the parse with the tree built, the encoding, and the reading back
//! (`decode`, which `ls` does) with the listing of every path.
//!   btrfs send -q SNAPSHOT | index_phases
//!   index_phases --synthetic FILES   (a version-2 stream made here, as the kernel orders a
//!                                     full send: FILES files of 0-255 bytes in 1,000
//!                                     directories, each made under a temporary name)
//! With `--synthetic`, an incremental of 1,000 changed files on top of it is timed too, and
//! its memory past its parent's (`incremental_rss_mib`). `--spill DIR [--hot INODES]`:
//! build, read back and build the incremental keeping at most INODES inodes in memory (the
//! rest in an unnamed file in DIR), as backup does in its state directory. Peaks
//! (`build_peak_mib`, `decode_peak_mib`, `from_compressed_peak_mib`: the index read back from
//! its zstd bytes as backup reads a parent's from its cache, decompressed whole first) are
//! past the memory before each step. Prints one
//! JSON object. Not a test.

use std::io::{Read, Write};
use std::time::Instant;

use engine::fileindex::feed::Feed;
use engine::fileindex::format;
use engine::sendstream::Parser;

fn main() -> std::process::ExitCode {
    let usage = || {
        eprintln!(
            "usage: index_phases [--synthetic FILES] [--spill DIR [--hot INODES]] < STREAM\n       index_phases --ls-from ENCODED_INDEX"
        );
        std::process::ExitCode::from(2)
    };
    let mut args = std::env::args().skip(1);
    let mut stream = Vec::new();
    // Files in the synthetic stream: its incremental is timed too.
    let mut synthetic_files = None;
    let mut spill: Option<engine::fileindex::Spill> = None;
    let mut hot = engine::fileindex::Spill::DEFAULT_HOT;
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            return usage();
        };
        match flag.as_str() {
            "--synthetic" => match value.parse() {
                Ok(n) => synthetic_files = Some(n),
                Err(e) => {
                    eprintln!("index_phases: --synthetic {value}: {e}");
                    return usage();
                }
            },
            "--spill" => spill = Some(engine::fileindex::Spill::in_dir(value)),
            "--ls-from" => return ls_from(std::path::Path::new(&value)),
            "--hot" => match value.parse() {
                Ok(n) => hot = n,
                Err(e) => {
                    eprintln!("index_phases: --hot {value}: {e}");
                    return usage();
                }
            },
            _ => return usage(),
        }
    }
    if let Some(s) = &mut spill {
        s.hot = hot;
    }
    match synthetic_files {
        Some(n) => stream = synthetic(n),
        None => {
            if let Err(e) = std::io::stdin().read_to_end(&mut stream) {
                eprintln!("index_phases: cannot read the stream from stdin: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    const SLICE: usize = 1 << 20;

    let t = Instant::now();
    let mut p = Parser::new();
    let mut cmds = Vec::new();
    let mut commands = 0usize;
    for s in stream.chunks(SLICE) {
        if let Err(e) = p.feed(s, &mut cmds) {
            eprintln!("index_phases: {e}");
            return std::process::ExitCode::from(1);
        }
        commands += cmds.len();
        p.recycle(&mut cmds);
    }
    let parse = t.elapsed().as_secs_f64();

    let rss_before = rss_mib();
    reset_peak();
    let t = Instant::now();
    let mut feed = Feed::full();
    if let Some(s) = &spill {
        if let Err(e) = feed.spill_to(s) {
            eprintln!("index_phases: {e}");
            return std::process::ExitCode::from(1);
        }
    }
    for s in stream.chunks(SLICE) {
        feed.push(s);
    }
    let built = match feed.finish() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("index_phases: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let build = t.elapsed().as_secs_f64();
    // The built tree's memory (its encoded form included, as `finish` keeps it), and the
    // most the build took at once.
    let tree_rss = rss_mib() - rss_before;
    let build_peak = peak_mib() - rss_before;
    let spilled = built.tree.spilled();
    let spill_bytes = built.tree.spill_bytes();

    let t = Instant::now();
    let encoded = format::encode(&built.tree, 0);
    let encode = t.elapsed().as_secs_f64();

    // As backup stores it: zstd at the index's level.
    let t = Instant::now();
    let packed = engine::fileindex::stored::pack(&encoded, None).map_or(0, |p| p.stored.len());
    let pack = t.elapsed().as_secs_f64();
    if std::env::var_os("INDEX_PHASES_LEVELS").is_some() {
        for level in [1, 3, 6, 9, 12] {
            let t = Instant::now();
            let n = zstd::bulk::compress(&encoded, level).map_or(0, |c| c.len());
            eprintln!(
                "zstd level {level}: {n} bytes in {:.3} s",
                t.elapsed().as_secs_f64()
            );
        }
    }

    let rss_before = rss_mib();
    reset_peak();
    let t = Instant::now();
    let decoded = match spill.as_ref().map_or_else(
        || format::decode(&encoded).map_err(|e| e.to_string()),
        |s| format::decode_spilled(&encoded, s).map_err(|e| e.to_string()),
    ) {
        Ok((tree, _)) => tree,
        Err(e) => {
            eprintln!("index_phases: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let decode = t.elapsed().as_secs_f64();
    let decode_peak = peak_mib() - rss_before;
    // As backup reads its parent's index from this host's cache (`stored::from_cache`):
    // streamed from the compressed bytes when `--spill`, else decompressed whole and read.
    let rss_before = rss_mib();
    reset_peak();
    let cached = match engine::fileindex::stored::pack(&encoded, None) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("index_phases: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let ix = engine::manifest::IndexEntry {
        key: "index_phases".into(),
        format: u32::from(format::VERSION),
        codec: "zstd".into(),
        stored_bytes: cached.stored.len() as u64,
        stored_xxh3: engine::manifest::hex_u128(cached.stored_xxh3),
        plain_bytes: cached.plain_bytes,
        plain_xxh3: engine::manifest::hex_u128(cached.plain_xxh3),
        entries: built.entries,
        position: 0,
    };
    let compressed = cached.compressed;
    drop(cached.stored);
    let t = Instant::now();
    let from_cache = engine::fileindex::stored::from_cache(&compressed, &ix, spill.as_ref());
    if let Err(e) = from_cache.map(drop) {
        eprintln!("index_phases: reading the index back from compressed bytes: {e}");
        return std::process::ExitCode::from(1);
    }
    let from_cache_s = t.elapsed().as_secs_f64();
    let from_cache_peak = peak_mib() - rss_before;
    drop(compressed);
    // An incremental on top of the read-back tree, as backup starts one: the builder takes
    // the parent's tree and keeps it for CLONEs. Its own memory past the parent's, and time.
    let rss_before = rss_mib();
    let t = Instant::now();
    let (incremental_s, incremental_rss) = match synthetic_files {
        Some(n) => {
            let mut feed = Feed::incremental(decoded, 1);
            if let Some(s) = &spill {
                if let Err(e) = feed.spill_to(s) {
                    eprintln!("index_phases: {e}");
                    return std::process::ExitCode::from(1);
                }
            }
            feed.push(&synthetic_incremental(n.min(1000)));
            let rss = rss_mib() - rss_before;
            match feed.finish() {
                Ok(_) => (Some(t.elapsed().as_secs_f64()), Some(rss.round())),
                Err(e) => {
                    eprintln!("index_phases: the incremental: {e}");
                    return std::process::ExitCode::from(1);
                }
            }
        }
        None => (None, None),
    };
    let paths = built.entries;
    drop(built);
    // What `ls --recursive --json` does: the listing read from the encoded bytes, every
    // entry printed (to nowhere) as the walk reaches it.
    let t = Instant::now();
    let listing = match engine::fileindex::Listing::decode(encoded.clone()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("index_phases: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let listing_decode = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let listed =
        engine::restore::browse::each_entry(&listing, b"", true, &mut |_| {}).unwrap_or_default();
    let list = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut sink = std::io::BufWriter::new(std::io::sink());
    let _ = engine::restore::browse::each_entry(&listing, b"", true, &mut |e| {
        let _ = serde_json::to_writer(&mut sink, &e);
        let _ = sink.write_all(b"\n");
    });
    let json = t.elapsed().as_secs_f64();
    drop(listing);
    // Its memory in a process of its own (one that freed memory before reuses it unseen).
    let ls = match ls_in_child(&encoded) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("index_phases: ls in a child process: {e}");
            return std::process::ExitCode::from(1);
        }
    };

    let mib = stream.len() as f64 / f64::from(1 << 20);
    println!(
        "{}",
        serde_json::json!({
            "stream_mib": (mib * 10.0).round() / 10.0,
            "commands": commands,
            "paths": paths,
            "listed": listed,
            "encoded_bytes": encoded.len(),
            "parse_s": parse,
            "parse_mib_per_s": (mib / parse).round(),
            "parse_and_build_s": build,
            "tree_rss_mib": tree_rss.round(),
            "build_peak_mib": build_peak.round(),
            "hot_inodes": spill.as_ref().map(|s| s.hot),
            "spilled_inodes": spilled,
            "spill_file_bytes": spill_bytes,
            "decode_peak_mib": decode_peak.round(),
            "from_compressed_s": from_cache_s,
            "from_compressed_peak_mib": from_cache_peak.round(),
            "incremental_s": incremental_s,
            "incremental_rss_mib": incremental_rss,
            "encode_s": encode,
            "pack_s": pack,
            "packed_bytes": packed,
            "decode_s": decode,
            "listing_decode_s": listing_decode,
            "list_s": list,
            "json_lines_s": json,
            "ls_peak_mib": ls["peak_mib"],
            "ls_s": ls["s"],
        })
    );
    std::process::ExitCode::SUCCESS
}

/// The most this process held resident since `reset_peak`, MiB (VmHWM).
/// `ls --recursive --json` of an encoded index in a fresh process: its time, and its peak
/// memory past the encoded bytes it read.
fn ls_in_child(encoded: &[u8]) -> Result<serde_json::Value, String> {
    let file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    std::fs::write(file.path(), encoded).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::process::Command::new(exe)
        .arg("--ls-from")
        .arg(file.path())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

fn ls_from(path: &std::path::Path) -> std::process::ExitCode {
    let encoded = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("index_phases: {}: {e}", path.display());
            return std::process::ExitCode::from(2);
        }
    };
    let before = rss_mib();
    reset_peak();
    let t = Instant::now();
    let listing = match engine::fileindex::Listing::decode(encoded) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("index_phases: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let mut sink = std::io::BufWriter::new(std::io::sink());
    let n = engine::restore::browse::each_entry(&listing, b"", true, &mut |e| {
        let _ = serde_json::to_writer(&mut sink, &e);
        let _ = sink.write_all(b"\n");
    });
    println!(
        "{}",
        serde_json::json!({
            "s": t.elapsed().as_secs_f64(),
            "peak_mib": (peak_mib() - before).round(),
            "listed": n.unwrap_or(0),
        })
    );
    std::process::ExitCode::SUCCESS
}

fn peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Starts `peak_mib` again from the resident memory now (Linux 4.0 and later).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This process's resident memory now, MiB (0 where /proc has no answer).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |pages| pages * 4096.0 / f64::from(1 << 20))
}

/// A UTIMES command setting all three times of `path` to `t`.
fn utimes(e: &mut engine::sendstream::encode::Encoder, path: &[u8], t: &[u8]) {
    use engine::sendstream::attr::*;
    e.command(
        engine::sendstream::Kind::Utimes,
        &[(PATH, path), (ATIME, t), (MTIME, t), (CTIME, t)],
        None,
    );
}

/// An incremental send on top of `synthetic`'s snapshot that times `files` of its files.
fn synthetic_incremental(files: u64) -> Vec<u8> {
    use engine::sendstream::attr::*;
    use engine::sendstream::encode::{time, u64le, Encoder};
    use engine::sendstream::Kind;
    let mut e = Encoder::new(2);
    e.command(
        Kind::Snapshot,
        &[
            (PATH, b"vol"),
            (UUID, &[2; 16]),
            (CTRANSID, &u64le(10)),
            (CLONE_UUID, &[1; 16]),
            (CLONE_CTRANSID, &u64le(9)),
        ],
        None,
    );
    let t = time(1_800_000_000, 0);
    for f in 0..files {
        let name = format!("dir-{:04}/file-{f:07}.txt", f % 1000);
        utimes(&mut e, name.as_bytes(), &t);
    }
    e.finish()
}

/// A version-2 full send of `files` files (0-255 bytes each) in 1,000 directories, in the
/// kernel's order: each inode made under its temporary name `o<ino>-<gen>-0`, renamed into
/// place, written, owned, moded and timed.
fn synthetic(files: u64) -> Vec<u8> {
    use engine::sendstream::attr::*;
    use engine::sendstream::encode::{time, u64le, Encoder};
    use engine::sendstream::Kind;
    let mut e = Encoder::new(2);
    e.command(
        Kind::Subvol,
        &[(PATH, b"vol"), (UUID, &[1; 16]), (CTRANSID, &u64le(9))],
        None,
    );
    let dirs = 1000u64;
    let mut ino = 256u64;
    let meta = |e: &mut Encoder, path: &[u8], mode: u64, n: u64| {
        e.command(
            Kind::Chown,
            &[(PATH, path), (UID, &u64le(1000)), (GID, &u64le(1000))],
            None,
        );
        e.command(Kind::Chmod, &[(PATH, path), (MODE, &u64le(mode))], None);
        let t = time(1_700_000_000 + n as i64, 123_456_789);
        e.command(
            Kind::Utimes,
            &[(PATH, path), (ATIME, &t), (MTIME, &t), (CTIME, &t)],
            None,
        );
    };
    let data = [b'x'; 256];
    for d in 0..dirs {
        ino += 1;
        let tmp = format!("o{ino}-1-0");
        e.command(
            Kind::Mkdir,
            &[(PATH, tmp.as_bytes()), (INO, &u64le(ino))],
            None,
        );
        let name = format!("dir-{d:04}");
        e.command(
            Kind::Rename,
            &[(PATH, tmp.as_bytes()), (PATH_TO, name.as_bytes())],
            None,
        );
        meta(&mut e, name.as_bytes(), 0o755, d);
    }
    for f in 0..files {
        ino += 1;
        let tmp = format!("o{ino}-1-0");
        e.command(
            Kind::Mkfile,
            &[(PATH, tmp.as_bytes()), (INO, &u64le(ino))],
            None,
        );
        let name = format!("dir-{:04}/file-{f:07}.txt", f % dirs);
        e.command(
            Kind::Rename,
            &[(PATH, tmp.as_bytes()), (PATH_TO, name.as_bytes())],
            None,
        );
        let len = (f % 256) as usize;
        if len > 0 {
            e.command(
                Kind::Write,
                &[(PATH, name.as_bytes()), (FILE_OFFSET, &u64le(0))],
                Some(&data[..len]),
            );
        }
        meta(&mut e, name.as_bytes(), 0o644, f);
    }
    for d in 0..dirs {
        let t = time(1_700_000_000, 0);
        let name = format!("dir-{d:04}");
        utimes(&mut e, name.as_bytes(), &t);
    }
    e.finish()
}
