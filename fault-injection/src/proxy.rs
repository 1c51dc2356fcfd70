//! An S3 fault proxy: HTTP/1.1 on loopback between the tool and an S3 server, injecting the
//! faults a bad link and a struggling server produce, by rule per S3 operation and seeded
//! probability, and logging every fault it injected so a test can assert it happened.
//!
//! Faults: reset the connection before forwarding or in the middle of the response; answer
//! 500 InternalError, 503 SlowDown or 400 RequestTimeout without forwarding; forward and lose
//! the reply (the server applied the request, the client never hears); stall the request or
//! the response; truncate the response body. Independently of rules: added latency per
//! request, a bandwidth cap shared by both directions, and an outage switch (every new request
//! is reset). Requests are forwarded byte for byte (signatures stay valid); each uses a fresh
//! upstream connection, so a fault never leaks into the next request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::quirks;

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::{TcpListener, TcpStream};

/// The S3 operation a request is, from its method and target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Create,
    Part,
    Complete,
    Abort,
    Put,
    Get,
    Head,
    List,
    Delete,
    Other,
}

pub const OPS: &[Op] = &[
    Op::Create,
    Op::Part,
    Op::Complete,
    Op::Abort,
    Op::Put,
    Op::Get,
    Op::Head,
    Op::List,
    Op::Delete,
    Op::Other,
];

impl Op {
    /// Classifies a path-style request (`/bucket/key?query`).
    pub fn of(method: &str, target: &str) -> Op {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let has = |k: &str| {
            query
                .split('&')
                .any(|p| p == k || p.starts_with(&format!("{k}=")))
        };
        let object = path.trim_matches('/').contains('/');
        match method {
            "POST" if has("uploads") => Op::Create,
            "POST" if has("uploadId") => Op::Complete,
            "POST" if has("delete") => Op::Delete,
            "PUT" if has("partNumber") && has("uploadId") => Op::Part,
            "PUT" if object => Op::Put,
            "DELETE" if has("uploadId") => Op::Abort,
            "DELETE" if object => Op::Delete,
            "GET" if has("uploadId") || has("uploads") || !object => Op::List,
            "GET" => Op::Get,
            "HEAD" => Op::Head,
            _ => Op::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Part => "part",
            Op::Complete => "complete",
            Op::Abort => "abort",
            Op::Put => "put",
            Op::Get => "get",
            Op::Head => "head",
            Op::List => "list",
            Op::Delete => "delete",
            Op::Other => "other",
        }
    }
}

impl FromStr for Op {
    type Err = String;
    fn from_str(s: &str) -> Result<Op, String> {
        OPS.iter().copied().find(|o| o.name() == s).ok_or_else(|| {
            format!(
                "unknown S3 operation `{s}` (one of {})",
                OPS.iter().map(|o| o.name()).collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// What the proxy does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// Reset the connection once the request is read, before forwarding it.
    ResetBeforeForward,
    /// Forward, send the response head and half its body, then reset.
    ResetMidResponse,
    /// Answer this status (500 InternalError, 503 SlowDown, 400 RequestTimeout) instead of
    /// forwarding.
    Reply(u16),
    /// Forward, read the whole reply, then close the client connection without it.
    LoseReply,
    /// Wait this long before forwarding.
    StallRequest(Duration),
    /// Forward, then wait this long before answering.
    StallResponse(Duration),
    /// Forward, then send the head and half the body, and close (a truncated body).
    TruncateBody,
}

impl Fault {
    pub fn name(&self) -> String {
        match self {
            Fault::ResetBeforeForward => "reset".into(),
            Fault::ResetMidResponse => "reset-mid".into(),
            Fault::Reply(c) => c.to_string(),
            Fault::LoseReply => "lose-reply".into(),
            Fault::StallRequest(d) => format!("stall-request:{}", d.as_millis()),
            Fault::StallResponse(d) => format!("stall-response:{}", d.as_millis()),
            Fault::TruncateBody => "truncate".into(),
        }
    }

    /// The fault's kind without its duration (for counting by type).
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::ResetBeforeForward => "reset",
            Fault::ResetMidResponse => "reset-mid",
            Fault::Reply(500) => "500",
            Fault::Reply(503) => "503",
            Fault::Reply(_) => "400",
            Fault::LoseReply => "lose-reply",
            Fault::StallRequest(_) => "stall-request",
            Fault::StallResponse(_) => "stall-response",
            Fault::TruncateBody => "truncate",
        }
    }
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Fault, String> {
        let ms = |v: &str| {
            v.parse::<u64>().map(Duration::from_millis).map_err(|_| {
                format!("`{s}`: the stall needs milliseconds, e.g. stall-request:5000")
            })
        };
        Ok(match s.split_once(':') {
            Some(("stall-request", v)) => Fault::StallRequest(ms(v)?),
            Some(("stall-response", v)) => Fault::StallResponse(ms(v)?),
            _ => match s {
                "reset" => Fault::ResetBeforeForward,
                "reset-mid" => Fault::ResetMidResponse,
                "500" => Fault::Reply(500),
                "503" => Fault::Reply(503),
                "400" => Fault::Reply(400),
                "lose-reply" => Fault::LoseReply,
                "truncate" => Fault::TruncateBody,
                _ => return Err(format!("unknown fault `{s}` (reset, reset-mid, 500, 503, 400, lose-reply, stall-request:MS, stall-response:MS, truncate)")),
            },
        })
    }
}

/// Inject `fault` into requests of `op` (all when None) with `probability`, after skipping
/// the first `skip` matching requests, at most `times` times.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub op: Option<Op>,
    pub fault: Fault,
    pub probability: f64,
    pub skip: u64,
    pub times: Option<u64>,
}

impl Rule {
    /// Once, on the first request of `op`.
    pub fn once(op: Op, fault: Fault) -> Rule {
        Rule {
            op: Some(op),
            fault,
            probability: 1.0,
            skip: 0,
            times: Some(1),
        }
    }
}

impl FromStr for Rule {
    type Err = String;
    /// `op=part,fault=reset-mid,p=0.1,skip=2,times=3` (op `any` or absent: every request).
    fn from_str(s: &str) -> Result<Rule, String> {
        let mut r = Rule {
            op: None,
            fault: Fault::ResetBeforeForward,
            probability: 1.0,
            skip: 0,
            times: None,
        };
        let mut fault = None;
        for kv in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("rule `{s}`: `{kv}` is not key=value"))?;
            match k {
                "op" if v == "any" => r.op = None,
                "op" => r.op = Some(v.parse()?),
                "fault" => fault = Some(v.parse()?),
                "p" => {
                    r.probability = v
                        .parse::<f64>()
                        .ok()
                        .filter(|p| (0.0..=1.0).contains(p))
                        .ok_or_else(|| format!("rule `{s}`: p must be between 0 and 1"))?
                }
                "skip" => r.skip = v.parse().map_err(|_| format!("rule `{s}`: bad skip"))?,
                "times" => r.times = Some(v.parse().map_err(|_| format!("rule `{s}`: bad times"))?),
                _ => {
                    return Err(format!(
                        "rule `{s}`: unknown key `{k}` (op, fault, p, skip, times)"
                    ))
                }
            }
        }
        r.fault = fault.ok_or_else(|| format!("rule `{s}`: fault= is required"))?;
        Ok(r)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub upstream: SocketAddr,
    pub rules: Vec<Rule>,
    pub seed: u64,
    /// Added before each request is forwarded.
    pub latency: Duration,
    /// Bytes per second through the proxy, both directions together.
    pub bandwidth: Option<u64>,
    /// Print each injected fault to stderr as a JSON line.
    pub verbose: bool,
    /// A provider's quirk (Backblaze B2, older Ceph RGW): any `x-amz-checksum-*` or
    /// `x-amz-sdk-checksum-*` request header is answered 400 InvalidArgument, not forwarded.
    pub reject_checksum_headers: bool,
    /// Listings paginated this many entries a page (ListObjectsV2 `max-keys`, ListParts
    /// `max-parts`, ListMultipartUploads `max-uploads` set on the way). The request line is
    /// rewritten, so only for servers that do not check signatures (moto).
    pub page_size: Option<u32>,
    /// Part numbers above this are answered 400 InvalidArgument (Scaleway: 1000).
    pub max_part_number: Option<u32>,
    /// CompleteMultipartUpload is answered 400 InvalidPart when a part but the last differs
    /// in size from the first, or the last is larger (Cloudflare R2).
    pub equal_parts: bool,
    /// ETags are replaced by opaque strings that are not MD5s (no part count either) in
    /// headers and listings, and turned back in CompleteMultipartUpload bodies. Bodies are
    /// rewritten, so only for servers that do not check signatures (moto).
    pub opaque_etags: bool,
    /// For this long after CreateMultipartUpload, any request naming the new upload is
    /// answered 404 NoSuchUpload (eventually consistent servers).
    pub hide_new_uploads: Option<Duration>,
}

impl Config {
    pub fn new(upstream: SocketAddr) -> Config {
        Config {
            upstream,
            rules: Vec::new(),
            seed: 1,
            latency: Duration::ZERO,
            bandwidth: None,
            verbose: false,
            reject_checksum_headers: false,
            page_size: None,
            max_part_number: None,
            equal_parts: false,
            opaque_etags: false,
            hide_new_uploads: None,
        }
    }
}

/// One fault the proxy injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    pub seq: u64,
    pub op: Op,
    pub fault: Fault,
    pub method: String,
    pub target: String,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    /// Per rule: matching requests seen, faults fired.
    seen: Vec<(u64, u64)>,
    rng: u64,
    seq: u64,
    injected: Vec<Injected>,
    /// Requests refused by an emulated provider quirk, with what was refused.
    quirk_refusals: Vec<(Op, String)>,
    /// Size of each part forwarded, by upload id and part number (`equal_parts`).
    part_sizes: HashMap<(String, u32), u64>,
    /// When each upload was created (`hide_new_uploads`).
    created: HashMap<String, Instant>,
    /// Per operation: requests and request-body bytes that reached the server.
    forwarded: HashMap<Op, (u64, u64)>,
}

struct Shared {
    cfg: Config,
    state: Mutex<State>,
    down: AtomicBool,
    /// Requests read from a client whose handling has not ended (forwarding, stalled, ...).
    in_flight: AtomicU64,
    /// When the bandwidth cap lets the next byte through.
    next_free: tokio::sync::Mutex<Instant>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn decide(&self, op: Op, method: &str, target: &str) -> Option<Fault> {
        let mut guard = self.state();
        let st = &mut *guard;
        st.seq += 1;
        if self.down.load(Ordering::SeqCst) {
            return Some(Fault::ResetBeforeForward);
        }
        let mut chosen = None;
        for (i, r) in st.rules.iter().enumerate() {
            if r.op.is_some_and(|o| o != op) {
                continue;
            }
            let (seen, fired) = &mut st.seen[i];
            *seen += 1;
            if chosen.is_some() || *seen <= r.skip || r.times.is_some_and(|t| *fired >= t) {
                continue;
            }
            st.rng = splitmix(st.rng);
            let draw = (st.rng >> 11) as f64 / (1u64 << 53) as f64;
            if draw < r.probability {
                *fired += 1;
                chosen = Some(r.fault);
            }
        }
        if let Some(fault) = chosen {
            let i = Injected {
                seq: st.seq,
                op,
                fault,
                method: method.to_string(),
                target: target.to_string(),
            };
            if self.cfg.verbose {
                eprintln!(
                    "{{\"seq\":{},\"op\":\"{}\",\"fault\":\"{}\",\"method\":\"{}\",\"target\":{:?}}}",
                    i.seq,
                    op.name(),
                    fault.name(),
                    method,
                    target
                );
            }
            st.injected.push(i);
        }
        chosen
    }

    fn forwarded(&self, op: Op, body: usize) {
        let mut st = self.state();
        let e = st.forwarded.entry(op).or_default();
        e.0 += 1;
        e.1 += body as u64;
    }

    /// Waits until the bandwidth cap lets `n` more bytes through.
    async fn throttle(&self, n: usize) {
        let Some(rate) = self.cfg.bandwidth.filter(|r| *r > 0) else {
            return;
        };
        let at = {
            let mut next = self.next_free.lock().await;
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(n as f64 / rate as f64);
            start
        };
        tokio::time::sleep_until(at.into()).await;
    }

    async fn write(&self, w: &mut (impl AsyncWrite + Unpin), data: &[u8]) -> std::io::Result<()> {
        if self.cfg.bandwidth.is_none() {
            return w.write_all(data).await;
        }
        for piece in data.chunks(16 * 1024) {
            self.throttle(piece.len()).await;
            w.write_all(piece).await?;
        }
        Ok(())
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Proxy {
    /// Listens on `listen` (port 0: any free port on loopback) on a runtime of its own.
    pub fn start(cfg: Config, listen: SocketAddr) -> std::io::Result<Proxy> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind(listen))?;
        let addr = listener.local_addr()?;
        let seen = vec![(0, 0); cfg.rules.len()];
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rules: cfg.rules.clone(),
                seen,
                rng: cfg.seed,
                ..State::default()
            }),
            cfg,
            down: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            next_free: tokio::sync::Mutex::new(Instant::now()),
        });
        let sh = shared.clone();
        runtime.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let sh = sh.clone();
                tokio::spawn(async move {
                    let _ = serve(client, sh).await;
                });
            }
        });
        Ok(Proxy {
            addr,
            shared,
            runtime: Some(runtime),
        })
    }

    /// On a free loopback port.
    pub fn start_local(cfg: Config) -> std::io::Result<Proxy> {
        Proxy::start(cfg, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests an emulated quirk refused: the operation and the header.
    pub fn quirk_refusals(&self) -> Vec<(Op, String)> {
        self.shared.state().quirk_refusals.clone()
    }

    /// Every fault injected so far, in order.
    pub fn injected(&self) -> Vec<Injected> {
        self.shared.state().injected.clone()
    }

    /// Replaces the rules (their counters start over).
    pub fn set_rules(&self, rules: Vec<Rule>) {
        let mut st = self.shared.state();
        st.seen = vec![(0, 0); rules.len()];
        st.rules = rules;
    }

    /// An outage: while down, every request is reset before it is forwarded.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Requests the proxy holds now: read from a client, not yet answered or dropped. A
    /// request stalled before forwarding is still forwarded after its client died, as a
    /// network may deliver it; a test that wants the server to have seen everything a
    /// killed process sent waits for this to reach zero.
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Requests of `op` forwarded to the server, and their body bytes.
    pub fn forwarded(&self, op: Op) -> (u64, u64) {
        self.shared
            .state()
            .forwarded
            .get(&op)
            .copied()
            .unwrap_or_default()
    }
}

/// One HTTP/1.1 message as read: its raw bytes (head and body, forwarded verbatim).
struct Message {
    raw: Vec<u8>,
    head_len: usize,
    method: String,
    target: String,
    status: u16,
    close: bool,
}

const MAX_HEAD: usize = 64 * 1024;

async fn read_head(r: &mut (impl AsyncBufRead + Unpin)) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let n = r.read_until(b'\n', &mut head).await?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed inside a message head",
                ))
            };
        }
        if head.ends_with(b"\r\n\r\n") || head == b"\r\n" {
            if head == b"\r\n" {
                head.clear();
                continue;
            }
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Err(std::io::Error::other("message head over 64 KiB"));
        }
    }
}

fn header<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

/// Reads a body framed by `Content-Length` or chunked encoding, appending its raw bytes.
async fn read_body(
    r: &mut (impl AsyncBufRead + Unpin),
    raw: &mut Vec<u8>,
    length: Option<u64>,
    chunked: bool,
    until_eof: bool,
) -> std::io::Result<()> {
    if chunked {
        loop {
            let mut line = Vec::new();
            r.read_until(b'\n', &mut line).await?;
            raw.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line);
            let size_hex = text.trim().split(';').next().unwrap_or("");
            let size = u64::from_str_radix(size_hex, 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size line {text:?}")))?;
            if size == 0 {
                // Trailers, then an empty line.
                loop {
                    let mut t = Vec::new();
                    let n = r.read_until(b'\n', &mut t).await?;
                    raw.extend_from_slice(&t);
                    if n == 0 || t == b"\r\n" {
                        return Ok(());
                    }
                }
            }
            let start = raw.len();
            raw.resize(start + size as usize + 2, 0);
            r.read_exact(&mut raw[start..]).await?;
        }
    } else if let Some(n) = length {
        let start = raw.len();
        raw.resize(start + n as usize, 0);
        r.read_exact(&mut raw[start..]).await?;
        Ok(())
    } else if until_eof {
        r.read_to_end(raw).await.map(drop)
    } else {
        Ok(())
    }
}

/// Reads a request; `continue_to` gets `100 Continue` when the client expects it.
async fn read_request(
    r: &mut (impl AsyncBufRead + Unpin),
    continue_to: &mut (impl AsyncWrite + Unpin),
) -> std::io::Result<Option<Message>> {
    let Some(head) = read_head(r).await? else {
        return Ok(None);
    };
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&head)
        .map_err(|e| std::io::Error::other(format!("bad request head: {e}")))?;
    let method = req.method.unwrap_or("").to_string();
    let target = req.path.unwrap_or("").to_string();
    let length = header(req.headers, "content-length").and_then(|v| v.parse().ok());
    let chunked = header(req.headers, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let close = header(req.headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    if header(req.headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        continue_to
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await?;
    }
    let head_len = head.len();
    let mut raw = head;
    read_body(r, &mut raw, length, chunked, false).await?;
    Ok(Some(Message {
        raw,
        head_len,
        method,
        target,
        status: 0,
        close,
    }))
}

/// Reads the final response (interim 1xx responses are skipped: the proxy answered the
/// client's `Expect` itself).
async fn read_response(
    r: &mut (impl AsyncBufRead + Unpin),
    head_request: bool,
) -> std::io::Result<Message> {
    loop {
        let head = read_head(r).await?.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection without a response",
            )
        })?;
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(&head)
            .map_err(|e| std::io::Error::other(format!("bad response head: {e}")))?;
        let status = resp.code.unwrap_or(0);
        if (100..200).contains(&status) {
            continue;
        }
        let length = header(resp.headers, "content-length").and_then(|v| v.parse().ok());
        let chunked =
            header(resp.headers, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let close =
            header(resp.headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let no_body = head_request || status == 204 || status == 304;
        let head_len = head.len();
        let mut raw = head;
        if !no_body {
            read_body(r, &mut raw, length, chunked, length.is_none() && !chunked).await?;
        }
        return Ok(Message {
            raw,
            head_len,
            method: String::new(),
            target: String::new(),
            status,
            close: close || (!no_body && length.is_none() && !chunked),
        });
    }
}

/// Sets the page-size parameter of a listing request to `n` (replacing any the client sent).
fn paginate(req: &mut Message, n: u32) {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let param = if query
        .split('&')
        .any(|p| p == "uploads" || p.starts_with("uploads="))
    {
        "max-uploads"
    } else if query.split('&').any(|p| p.starts_with("uploadId=")) {
        "max-parts"
    } else {
        "max-keys"
    };
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with(&format!("{param}=")))
        .map(str::to_string)
        .collect();
    params.push(format!("{param}={n}"));
    let target = format!("{path}?{}", params.join("&"));
    let line_end = req.raw.iter().position(|&b| b == b'\n').unwrap_or(0);
    let line = format!("{} {} HTTP/1.1\r", req.method, target);
    let mut raw = line.into_bytes();
    raw.extend_from_slice(&req.raw[line_end..]);
    req.head_len = req.head_len + raw.len() - req.raw.len();
    req.raw = raw;
    req.target = target;
}

/// An emulated quirk's refusal of a request: (code, status, message), or None to go on.
fn quirk_refusal(sh: &Shared, op: Op, req: &Message) -> Option<(&'static str, u16, String)> {
    if sh.cfg.reject_checksum_headers {
        if let Some(name) = checksum_header(&req.raw[..req.head_len]) {
            return Some((
                "InvalidArgument",
                400,
                format!("Unsupported header '{name}' received for this API call."),
            ));
        }
    }
    let upload = quirks::query_param(&req.target, "uploadId");
    if let (Some(d), Some(id)) = (sh.cfg.hide_new_uploads, upload) {
        if sh
            .state()
            .created
            .get(id)
            .is_some_and(|at| at.elapsed() < d)
        {
            return Some((
                "NoSuchUpload",
                404,
                "The specified multipart upload does not exist.".into(),
            ));
        }
    }
    if let (Some(max), Op::Part) = (sh.cfg.max_part_number, op) {
        let n: u32 = quirks::query_param(&req.target, "partNumber")?
            .parse()
            .ok()?;
        if n > max {
            return Some((
                "InvalidArgument",
                400,
                format!("Part number must be an integer between 1 and {max}, inclusive"),
            ));
        }
    }
    if let (true, Op::Complete, Some(id)) = (sh.cfg.equal_parts, op, upload) {
        let body = String::from_utf8_lossy(&req.raw[req.head_len..]);
        let st = sh.state();
        let sizes: Vec<u64> = quirks::xml_values(&body, "PartNumber")
            .iter()
            .filter_map(|n| n.trim().parse::<u32>().ok())
            .map(|n| {
                st.part_sizes
                    .get(&(id.to_string(), n))
                    .copied()
                    .unwrap_or(0)
            })
            .collect();
        if let Err(message) = quirks::equal_parts(&sizes) {
            return Some(("InvalidPart", 400, message.into()));
        }
    }
    None
}

/// What a quirk must remember of a request the server answered: a new upload's id and
/// time, a part's size.
fn quirks_seen(sh: &Shared, op: Op, req: &Message, resp: &Message) {
    if !(200..300).contains(&resp.status) {
        return;
    }
    match op {
        Op::Create if sh.cfg.hide_new_uploads.is_some() => {
            let body = String::from_utf8_lossy(&resp.raw[resp.head_len..]);
            if let Some(id) = quirks::xml_values(&body, "UploadId").first() {
                sh.state().created.insert(id.to_string(), Instant::now());
            }
        }
        Op::Part if sh.cfg.equal_parts => {
            let id = quirks::query_param(&req.target, "uploadId").unwrap_or("");
            let n = quirks::query_param(&req.target, "partNumber").and_then(|n| n.parse().ok());
            if let Some(n) = n {
                let size = (req.raw.len() - req.head_len) as u64;
                sh.state().part_sizes.insert((id.to_string(), n), size);
            }
        }
        _ => {}
    }
}

/// Maps every ETag of a message (headers, and an XML body framed by Content-Length) by `f`.
fn rewrite_message(m: &mut Message, f: fn(&str) -> String) {
    let head = String::from_utf8_lossy(&m.raw[..m.head_len]).into_owned();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = m.raw[m.head_len..].to_vec();
    let (head, body) = match std::str::from_utf8(&body) {
        Ok(text) if !chunked && text.contains("<ETag>") => {
            let text = quirks::map_etags(text, f);
            (
                quirks::rewrite_head(&head, Some(text.len()), &f),
                text.into_bytes(),
            )
        }
        _ => (quirks::rewrite_head(&head, None, &f), body),
    };
    m.head_len = head.len();
    m.raw = head.into_bytes();
    m.raw.extend_from_slice(&body);
}

/// The first checksum header of a request head, lower-cased.
fn checksum_header(head: &[u8]) -> Option<String> {
    String::from_utf8_lossy(head)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_ascii_lowercase())
        .find(|n| n.starts_with("x-amz-checksum-") || n.starts_with("x-amz-sdk-checksum-"))
}

fn error_reply(status: u16) -> Vec<u8> {
    let (reason, code) = match status {
        500 => ("Internal Server Error", "InternalError"),
        503 => ("Service Unavailable", "SlowDown"),
        _ => ("Bad Request", "RequestTimeout"),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the fault proxy</Message></Error>"
    );
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[allow(deprecated)]
fn reset(s: &TcpStream) {
    // SO_LINGER 0: close sends RST, not FIN.
    let _ = s.set_linger(Some(Duration::ZERO));
}

struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn new(sh: &'a Shared) -> InFlight<'a> {
        sh.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(sh)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(client: TcpStream, sh: Arc<Shared>) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let (cr, mut cw) = client.into_split();
    let mut cr = BufReader::new(cr);
    loop {
        let Some(req) = read_request(&mut cr, &mut cw).await? else {
            return Ok(());
        };
        // Counted until this request's handling ends, however it ends.
        let _busy = InFlight::new(&sh);
        let op = Op::of(&req.method, &req.target);
        if let Some((code, status, message)) = quirk_refusal(&sh, op, &req) {
            sh.state().quirk_refusals.push((op, message.clone()));
            let reason = if status == 404 {
                "Not Found"
            } else {
                "Bad Request"
            };
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
            );
            let reply = format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            sh.write(&mut cw, reply.as_bytes()).await?;
            cw.shutdown().await?;
            return Ok(());
        }
        let mut req = req;
        if let (Some(n), Op::List) = (sh.cfg.page_size, op) {
            paginate(&mut req, n);
        }
        if sh.cfg.opaque_etags && op == Op::Complete {
            rewrite_message(&mut req, quirks::real);
        }
        let fault = sh.decide(op, &req.method, &req.target);
        if !sh.cfg.latency.is_zero() {
            tokio::time::sleep(sh.cfg.latency).await;
        }
        match fault {
            Some(Fault::ResetBeforeForward) => {
                let client = cr.into_inner().reunite(cw).map_err(std::io::Error::other)?;
                reset(&client);
                return Ok(());
            }
            Some(Fault::Reply(status)) => {
                sh.write(&mut cw, &error_reply(status)).await?;
                continue;
            }
            Some(Fault::StallRequest(d)) => tokio::time::sleep(d).await,
            _ => {}
        }
        let upstream = TcpStream::connect(sh.cfg.upstream).await?;
        let _ = upstream.set_nodelay(true);
        let (ur, mut uw) = upstream.into_split();
        let mut ur = BufReader::new(ur);
        sh.write(&mut uw, &req.raw).await?;
        sh.forwarded(op, req.raw.len() - req.head_len);
        let mut resp = read_response(&mut ur, req.method == "HEAD").await?;
        quirks_seen(&sh, op, &req, &resp);
        if sh.cfg.opaque_etags {
            rewrite_message(&mut resp, quirks::opaque);
        }
        let half = resp.head_len + (resp.raw.len() - resp.head_len) / 2;
        match fault {
            Some(Fault::LoseReply) => {
                let client = cr.into_inner().reunite(cw).map_err(std::io::Error::other)?;
                reset(&client);
                return Ok(());
            }
            Some(Fault::ResetMidResponse) => {
                sh.write(&mut cw, &resp.raw[..half]).await?;
                cw.flush().await?;
                let client = cr.into_inner().reunite(cw).map_err(std::io::Error::other)?;
                reset(&client);
                return Ok(());
            }
            Some(Fault::TruncateBody) => {
                sh.write(&mut cw, &resp.raw[..half]).await?;
                cw.shutdown().await?;
                return Ok(());
            }
            Some(Fault::StallResponse(d)) => tokio::time::sleep(d).await,
            _ => {}
        }
        sh.write(&mut cw, &resp.raw).await?;
        if req.close || resp.close {
            cw.shutdown().await?;
            return Ok(());
        }
        let _ = resp.status;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_are_paginated_by_rewriting_the_request_line() {
        let msg = |target: &str| {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();
            Message {
                head_len: raw.len(),
                raw,
                method: "GET".into(),
                target: target.into(),
                status: 0,
                close: false,
            }
        };
        for (before, after) in [
            (
                "/b?list-type=2&prefix=p",
                "/b?list-type=2&prefix=p&max-keys=2",
            ),
            ("/b?list-type=2&max-keys=1000", "/b?list-type=2&max-keys=2"),
            ("/b/k?uploadId=abc", "/b/k?uploadId=abc&max-parts=2"),
            ("/b?uploads&prefix=p", "/b?uploads&prefix=p&max-uploads=2"),
        ] {
            let mut m = msg(before);
            paginate(&mut m, 2);
            assert_eq!(m.target, after);
            let text = String::from_utf8(m.raw.clone()).expect("utf8");
            assert_eq!(text, format!("GET {after} HTTP/1.1\r\nHost: x\r\n\r\n"));
            assert_eq!(m.head_len, m.raw.len());
        }
    }

    #[test]
    fn classifies_s3_operations() {
        let cases = [
            ("POST", "/b/k?uploads", Op::Create),
            ("POST", "/b/k?uploads=", Op::Create),
            ("PUT", "/b/k?partNumber=3&uploadId=abc", Op::Part),
            ("POST", "/b/k?uploadId=abc", Op::Complete),
            ("DELETE", "/b/k?uploadId=abc", Op::Abort),
            ("PUT", "/b/k/m.json", Op::Put),
            ("GET", "/b/k/m.json", Op::Get),
            ("GET", "/b/k?uploadId=abc", Op::List),
            ("GET", "/b?list-type=2&prefix=p", Op::List),
            ("GET", "/b?uploads&prefix=p", Op::List),
            ("HEAD", "/b", Op::Head),
            ("HEAD", "/b/k", Op::Head),
            ("DELETE", "/b/k", Op::Delete),
            ("POST", "/b?delete", Op::Delete),
            ("POST", "/b/k?restore", Op::Other),
        ];
        for (m, t, want) in cases {
            assert_eq!(Op::of(m, t), want, "{m} {t}");
        }
    }

    #[test]
    fn parses_rules_and_faults() {
        let r: Rule = "op=complete,fault=lose-reply,times=1"
            .parse()
            .expect("rule");
        assert_eq!(r, Rule::once(Op::Complete, Fault::LoseReply));
        let r: Rule = "fault=stall-response:1500,p=0.25,skip=3"
            .parse()
            .expect("rule");
        assert_eq!(r.op, None);
        assert_eq!(r.fault, Fault::StallResponse(Duration::from_millis(1500)));
        assert_eq!((r.probability, r.skip, r.times), (0.25, 3, None));
        for bad in [
            "op=part",
            "fault=melt",
            "op=frobnicate,fault=reset",
            "fault=reset,p=2",
            "fault=stall-request:soon",
            "fault=reset,colour=red",
        ] {
            assert!(bad.parse::<Rule>().is_err(), "{bad} accepted");
        }
        for f in [
            "reset",
            "reset-mid",
            "500",
            "503",
            "400",
            "lose-reply",
            "truncate",
            "stall-request:10",
        ] {
            let parsed: Fault = f.parse().expect("fault");
            assert_eq!(parsed.name(), f);
        }
    }

    #[test]
    fn rules_fire_by_skip_times_and_seeded_probability() {
        let sh = |rules: Vec<Rule>, seed| Shared {
            state: Mutex::new(State {
                seen: vec![(0, 0); rules.len()],
                rules,
                rng: seed,
                ..State::default()
            }),
            cfg: Config::new(SocketAddr::from(([127, 0, 0, 1], 1))),
            down: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            next_free: tokio::sync::Mutex::new(Instant::now()),
        };
        let s = sh(
            vec![Rule {
                skip: 2,
                times: Some(2),
                ..Rule::once(Op::Part, Fault::Reply(503))
            }],
            1,
        );
        let fired: Vec<bool> = (0..6)
            .map(|_| s.decide(Op::Part, "PUT", "/b/k").is_some())
            .collect();
        assert_eq!(fired, [false, false, true, true, false, false]);
        assert!(s.decide(Op::Get, "GET", "/b/k").is_none());
        assert_eq!(s.state().injected.len(), 2);
        // The same seed gives the same faults; p = 0.3 fires about 30 % of the time.
        let pattern = |seed| {
            let s = sh(
                vec![Rule {
                    probability: 0.3,
                    times: None,
                    ..Rule::once(Op::Get, Fault::ResetBeforeForward)
                }],
                seed,
            );
            (0..1000)
                .map(|_| s.decide(Op::Get, "GET", "/b/k").is_some())
                .collect::<Vec<_>>()
        };
        assert_eq!(pattern(7), pattern(7));
        assert_ne!(pattern(7), pattern(8));
        let n = pattern(7).iter().filter(|f| **f).count();
        assert!((230..370).contains(&n), "{n} of 1000 at p = 0.3");
        // Down: everything is reset.
        s.down.store(true, Ordering::SeqCst);
        assert_eq!(
            s.decide(Op::Head, "HEAD", "/b"),
            Some(Fault::ResetBeforeForward)
        );
    }
}
