//! `s3-fault-proxy`: the fault proxy of `fault_injection::proxy` as a command, for trying the
//! tool (or any S3 client) through a link that drops, stalls, throttles and lies.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use fault_injection::proxy::{Config, Proxy, Rule};

/// An HTTP/1.1 proxy between an S3 client and an S3 server that injects faults.
///
/// Point the client's endpoint at --listen (path-style addressing), the proxy at the server
/// with --upstream. Each injected fault is printed to stderr as a JSON line.
///
/// Rules: `op=OP,fault=FAULT[,p=PROB][,skip=N][,times=N]`, OP one of create, part, complete,
/// abort, put, get, head, list, delete, other, any; FAULT one of reset (before forwarding),
/// reset-mid (half the response, then RST), 500, 503, 400 (answered instead of forwarding),
/// lose-reply (forwarded, the reply dropped), stall-request:MS, stall-response:MS, truncate
/// (half the body, then FIN). The first rule that fires for a request wins.
///
/// Example: lose the reply to the first CompleteMultipartUpload, fail 5 % of everything else
/// with 503, add 100 ms latency and cap the link at 2 MiB/s:
///
///   s3-fault-proxy --upstream 127.0.0.1:3900 --listen 127.0.0.1:3999
///     --rule op=complete,fault=lose-reply,times=1 --rule fault=503,p=0.05
///     --latency-ms 100 --bandwidth 2097152
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The S3 server, host:port.
    #[arg(long)]
    upstream: SocketAddr,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// A fault rule (repeatable); see above.
    #[arg(long = "rule")]
    rules: Vec<String>,
    /// Seed of the fault draws: the same seed and request order give the same faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Latency added to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Bandwidth cap in bytes per second, both directions together.
    #[arg(long)]
    bandwidth: Option<u64>,
    /// Emulate a provider that refuses checksum headers (Backblaze B2, older Ceph RGW):
    /// any x-amz-checksum-* or x-amz-sdk-checksum-* request header is answered 400.
    #[arg(long)]
    reject_checksum_headers: bool,
    /// Paginate listings N entries a page (rewrites max-keys / max-parts / max-uploads: for
    /// servers that do not check signatures, such as moto).
    #[arg(long, value_name = "N")]
    page_size: Option<u32>,
    /// Refuse part numbers above N with 400 (Scaleway: 1000).
    #[arg(long, value_name = "N")]
    max_part_number: Option<u32>,
    /// Refuse CompleteMultipartUpload when a non-final part differs in size from the first
    /// (Cloudflare R2).
    #[arg(long)]
    equal_parts: bool,
    /// Return ETags that are not MD5s (rewrites bodies: for servers that do not check
    /// signatures, such as moto).
    #[arg(long)]
    opaque_etags: bool,
    /// Answer NoSuchUpload for MS milliseconds after an upload is created.
    #[arg(long, value_name = "MS")]
    hide_new_uploads_ms: Option<u64>,
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    let mut rules = Vec::new();
    for r in &a.rules {
        match r.parse::<Rule>() {
            Ok(r) => rules.push(r),
            Err(e) => {
                eprintln!("error: --rule {e}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let cfg = Config {
        upstream: a.upstream,
        rules,
        seed: a.seed,
        latency: Duration::from_millis(a.latency_ms),
        bandwidth: a.bandwidth,
        verbose: true,
        reject_checksum_headers: a.reject_checksum_headers,
        page_size: a.page_size,
        max_part_number: a.max_part_number,
        equal_parts: a.equal_parts,
        opaque_etags: a.opaque_etags,
        hide_new_uploads: a.hide_new_uploads_ms.map(Duration::from_millis),
    };
    let proxy = match Proxy::start(cfg, a.listen) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", a.listen);
            return std::process::ExitCode::from(1);
        }
    };
    println!("listening on {}", proxy.url());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
