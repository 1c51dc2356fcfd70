//! `ls` and `find`: a backup's files from its file index (one manifest and one index object
//! per backup read; no part of the stream).

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use engine::restore::browse::{self, escape, Entry, Pattern};

use super::*;

/// A path or pattern from the command line: as `ls` prints names (escaped) when it holds
/// a backslash that reads as an escape, else its bytes as they are.
fn arg_bytes(arg: &std::ffi::OsStr) -> Vec<u8> {
    let raw = arg.as_bytes();
    if raw.contains(&b'\\') {
        if let Some(b) = std::str::from_utf8(raw).ok().and_then(browse::unescape) {
            return b;
        }
    }
    raw.to_vec()
}

fn identity(settings: &Settings) -> Option<&std::path::Path> {
    settings
        .encryption
        .as_ref()
        .and_then(|e| e.identity_file.as_deref())
}

/// `-rwxr-xr-x`-style type and permission bits.
fn mode_string(e: &Entry) -> String {
    let t = match e.kind {
        "dir" => 'd',
        "symlink" => 'l',
        "fifo" => 'p',
        "socket" => 's',
        "chardev" => 'c',
        "blockdev" => 'b',
        _ => '-',
    };
    let mut s = String::from(t);
    let m = e.mode;
    for (shift, special, set, unset) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (m >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, m & special != 0) {
            (true, true) => set,
            (false, true) => unset,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

fn mtime(e: &Entry) -> String {
    chrono::DateTime::from_timestamp(e.mtime, e.mtime_nsec)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| e.mtime.to_string())
}

fn long_line(e: &Entry) -> String {
    let mut line = format!(
        "{} {:>5} {:>5} {:>12} {} {}",
        mode_string(e),
        e.uid,
        e.gid,
        e.size,
        mtime(e),
        escape(&e.path)
    );
    if let Some(t) = &e.target {
        line.push_str(" -> ");
        line.push_str(&escape(t));
    }
    line
}

/// Writes lines to stdout; a closed pipe (`| head`) ends the listing quietly.
fn emit(lines: impl Iterator<Item = String>) {
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    for l in lines {
        if writeln!(out, "{l}").is_err() {
            return;
        }
    }
    let _ = out.flush();
}

fn json_line<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// The store as restore reads it (first-written versions where Object Lock is on).
async fn store_for(
    settings: &Settings,
    subvolume: &str,
) -> (Arc<dyn ObjectStore>, engine::machine::Keys) {
    let keys = engine::machine::Keys::new(&settings.s3.prefix);
    let (store, _) = as_first_written(
        settings,
        connect(settings).await,
        &keys.subvolume_prefix(subvolume),
    );
    (store, keys)
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn ls(
    cli: &Cli,
    settings: &Settings,
    subvolume: &str,
    selector: Selector,
    recursive: bool,
    long: bool,
    path: Option<PathBuf>,
) -> Result<u8, Failure> {
    select(settings, &[subvolume.to_string()])?;
    let (store, keys) = store_for(settings, subvolume).await;
    let fail = |e: RestoreError| Failure::new(code_for_restore(&e), e.to_string());
    let (m, tree) = browse::open_index(
        store.as_ref(),
        &keys,
        subvolume,
        &selector,
        identity(settings),
    )
    .await
    .map_err(fail)?;
    let path = path.map(|p| arg_bytes(p.as_os_str())).unwrap_or_default();
    // Each entry printed as the walk reaches it, in path order: never all held at once.
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    // A closed pipe (`| head`) ends the listing quietly.
    let mut open = true;
    let n = browse::each_entry(&tree, &path, recursive, &mut |e| {
        if !open {
            return;
        }
        let line = if cli.json {
            json_line(&e)
        } else if long {
            long_line(&e)
        } else {
            let mut p = escape(&e.path);
            if e.kind == "dir" {
                p.push('/');
            }
            p
        };
        open = writeln!(out, "{line}").is_ok();
    })
    .map_err(|e| Failure::new(exit::USAGE, format!("backup {}: {e}", m.backup_id)))?;
    let _ = out.flush();
    drop(out);
    if !cli.quiet && !cli.json {
        eprintln!(
            "{}: backup {} ({}, {}), {}",
            subvolume,
            m.backup_id,
            if m.kind == engine::manifest::Kind::Full {
                "full"
            } else {
                "incremental"
            },
            m.created_at,
            output::count(n, "path")
        );
    }
    Ok(exit::OK)
}

pub(crate) async fn find(
    cli: &Cli,
    settings: &Settings,
    subvolume: &str,
    pattern: &OsString,
) -> Result<u8, Failure> {
    select(settings, &[subvolume.to_string()])?;
    let (store, keys) = store_for(settings, subvolume).await;
    let pattern = Pattern::new(&arg_bytes(pattern));
    let report = browse::find(
        store.as_ref(),
        &keys,
        subvolume,
        &pattern,
        identity(settings),
    )
    .await
    .map_err(|e| Failure::new(code_for_restore(&e), e.to_string()))?;
    for (id, e) in &report.damaged {
        eprintln!("error: {subvolume}: backup {id} not searched: {e}");
    }
    if !cli.quiet {
        for (id, why) in &report.skipped {
            eprintln!("{subvolume}: backup {id} not searched: {why}");
        }
        if !cli.json {
            eprintln!(
                "{subvolume}: {} in {}",
                output::count(report.found.len(), "version"),
                output::count(report.searched.len(), "backup")
            );
        }
    }
    if cli.json {
        emit(report.found.iter().map(json_line));
    } else {
        let mut found = report.found;
        // Grouped by path, oldest backup first: where a file changed shows at a glance.
        found.sort_by(|a, b| (&a.entry.path, &a.backup_id).cmp(&(&b.entry.path, &b.backup_id)));
        emit(found.iter().map(|f| {
            format!(
                "{}  {:>12}  {}  {}{}",
                f.backup_id,
                f.entry.size,
                mtime(&f.entry),
                escape(&f.entry.path),
                if f.entry.kind == "dir" { "/" } else { "" }
            )
        }));
    }
    // Every other backup was searched; a damaged index is still damage.
    Ok(report
        .damaged
        .first()
        .map_or(exit::OK, |(_, e)| code_for_restore(e)))
}

/// `restore --path`: only the named paths, through the backup's file index.
pub(crate) async fn restore_paths(
    cli: &Cli,
    settings: &Settings,
    subvolume: &str,
    selector: Selector,
    target: &std::path::Path,
    paths: &[PathBuf],
    wait: bool,
) -> Result<u8, Failure> {
    let (store, keys) = store_for(settings, subvolume).await;
    let req = engine::restore::partial::PathRequest {
        subvolume: subvolume.to_string(),
        selector,
        target: target.to_path_buf(),
        paths: paths.iter().map(|p| arg_bytes(p.as_os_str())).collect(),
        identity_file: identity(settings).map(std::path::Path::to_path_buf),
        restore: settings.restore.clone(),
        wait,
        // A tree of millions of files keeps most inodes in the state directory.
        spill: settings.file_index_spill_if_present(),
    };
    let r = engine::restore::partial::restore_paths(store, &keys, &req)
        .await
        .map_err(|e| Failure::new(code_for_restore(&e), e.to_string()))?;
    output::print_json_or(&r, cli.json, || {
        format!(
            "{}: restored {} of backup {} to {} ({}, {} written; fetched {} of the chain's {}: the index and {}, {:.1} s)",
            r.subvolume,
            r.paths.join(", "),
            r.backup_id,
            r.target.display(),
            output::count(r.entries as usize, "path"),
            output::human_bytes(r.bytes_written),
            output::human_bytes(r.fetched_bytes),
            output::human_bytes(r.chain_bytes),
            output::count(r.parts_fetched as usize, "part"),
            r.seconds
        )
    });
    Ok(exit::OK)
}
