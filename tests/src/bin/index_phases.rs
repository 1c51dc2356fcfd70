//! Where the file index's time goes, for BENCHMARKS.md: reads a send stream from stdin (as
//! `btrfs send` writes it) and times, in this process, the parse alone (CRC32C of every
//! command included), the parse with the tree built, the encoding, and the reading back
//! (`decode`, which `ls` does) with the listing of every path.
//!   btrfs send -q SNAPSHOT | index_phases
//! Prints one JSON object. Not a test.

use std::io::Read;
use std::time::Instant;

use engine::fileindex::feed::Feed;
use engine::fileindex::format;
use engine::sendstream::Parser;

fn main() -> std::process::ExitCode {
    let mut stream = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stream) {
        eprintln!("index_phases: cannot read the stream from stdin: {e}");
        return std::process::ExitCode::from(2);
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
        cmds.clear();
    }
    let parse = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut feed = Feed::full();
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

    let t = Instant::now();
    let encoded = format::encode(&built.tree, 0);
    let encode = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let decoded = match format::decode(&encoded) {
        Ok((tree, _)) => tree,
        Err(e) => {
            eprintln!("index_phases: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let decode = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let listed = engine::restore::browse::entries(&decoded, b"", true).map_or(0, |e| e.len());
    let list = t.elapsed().as_secs_f64();

    let mib = stream.len() as f64 / f64::from(1 << 20);
    println!(
        "{}",
        serde_json::json!({
            "stream_mib": (mib * 10.0).round() / 10.0,
            "commands": commands,
            "paths": built.entries,
            "listed": listed,
            "encoded_bytes": encoded.len(),
            "parse_s": parse,
            "parse_mib_per_s": (mib / parse).round(),
            "parse_and_build_s": build,
            "encode_s": encode,
            "decode_s": decode,
            "list_s": list,
        })
    );
    std::process::ExitCode::SUCCESS
}
