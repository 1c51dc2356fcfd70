//! Compression of the send stream: independent zstd frames of `FRAME_BYTES` of the stream each,
//! compressed in parallel and concatenated. The stored stream is what the splitter cuts into
//! parts and chunks, so every part hash, resume check and S3 checksum is over stored bytes.
//!
//! Invariants:
//! - Deterministic: frame k is `zstd(level, single-threaded)` of stream bytes
//!   [k * FRAME_BYTES, (k + 1) * FRAME_BYTES), whatever the number of workers, so a resumed
//!   run regenerates the same stored bytes and reuses its committed parts. (The libzstd
//!   version is part of the settings fingerprint: a different one is a different stream.)
//! - Addressable: the manifest keeps every frame's stored size (`Framing::frames`), so stream
//!   offset o lies in frame o / FRAME_BYTES, at a stored offset that is the sum of the sizes
//!   before it: one ranged GET of at most one frame plus a part boundary.
//! - `zstd -d` of the concatenated chunks gives the send stream back (frames concatenate).
//!
//! This file writes the stored stream (`CompressingReader`, `Pipelined`, raw frames);
//! `decode.rs` reads it back (`Decoder`); `tests.rs` holds both ways' tests.

mod decode;
#[cfg(test)]
mod tests;

pub use decode::{Decoder, StreamCheck, STEP_BYTES};

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

/// Bumped whenever the stored bytes of a frame could change (in the settings fingerprint: a
/// run begun under another framing starts over rather than mixing two).
pub const FRAMING_VERSION: u32 = 2;

/// Stream bytes per frame (the last frame may be shorter).
pub const FRAME_BYTES: u64 = 1 << 20;
/// Levels accepted in the configuration (above 19 zstd wants far more memory).
pub const LEVELS: std::ops::RangeInclusive<i32> = 1..=19;
pub const DEFAULT_LEVEL: i32 = 3;

/// How the stored stream was made from the send stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    Off,
    Zstd {
        level: i32,
    },
}

impl Compression {
    /// `"off"`, `"zstd"`, `"zstd:LEVEL"`.
    pub fn parse(s: &str) -> Result<Compression, String> {
        match s.trim() {
            "off" | "none" => Ok(Compression::Off),
            "zstd" => Ok(Compression::Zstd {
                level: DEFAULT_LEVEL,
            }),
            other => {
                let level = other
                    .strip_prefix("zstd:")
                    .and_then(|l| l.parse::<i32>().ok())
                    .ok_or_else(|| {
                        format!("`{other}` is not a compression: write \"off\", \"zstd\" or \"zstd:LEVEL\"")
                    })?;
                if !LEVELS.contains(&level) {
                    return Err(format!(
                        "zstd level {level} is outside {}..={}",
                        LEVELS.start(),
                        LEVELS.end()
                    ));
                }
                Ok(Compression::Zstd { level })
            }
        }
    }

    pub fn as_str(&self) -> String {
        match self {
            Compression::Off => "off".into(),
            Compression::Zstd { level } => format!("zstd:{level}"),
        }
    }
}

/// Frames compressed at once at `level`: a context for a 1 MiB frame takes about 2 MiB at
/// low levels and about 17 MiB at 16 and above; with the frames and their output this keeps
/// the compressor within about 40 MiB of the 64 MiB beside the part buffers.
pub fn max_workers(level: i32) -> usize {
    match level {
        ..=9 => 8,
        10..=15 => 4,
        _ => 2,
    }
}

/// The version of the libzstd built in: a different one may compress differently.
pub fn zstd_version() -> String {
    zstd::zstd_safe::version_string().to_string()
}

/// What a compressed stream's manifest records: the send stream's size and xxh3-128, and the
/// stored size of every frame in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framing {
    pub level: i32,
    pub frame_bytes: u64,
    pub stream_bytes: u64,
    pub stream_xxh3: u128,
    pub frames: Vec<u32>,
}

#[derive(Default)]
struct Tally {
    stream_bytes: u64,
    hash: xxhash_rust::xxh3::Xxh3,
    frames: Vec<u32>,
    done: bool,
}

/// Handle on what a `CompressingReader` has seen; complete once the reader reached its end.
#[derive(Clone, Default)]
pub struct FramingLog(Arc<Mutex<Tally>>);

impl FramingLog {
    /// The framing of the whole stream; None before the reader's end.
    pub fn framing(&self, level: i32) -> Option<Framing> {
        let t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        t.done.then(|| Framing {
            level,
            frame_bytes: FRAME_BYTES,
            stream_bytes: t.stream_bytes,
            stream_xxh3: t.hash.digest128(),
            frames: t.frames.clone(),
        })
    }
}

/// Where the send stream's blocks go besides the compressor (the file index's thread): each
/// block as it was read, in order, shared rather than copied; then the end.
pub trait BlockTap: Send {
    fn block(&mut self, block: Bytes);
    /// The stream was read to its end (not called after a read error).
    fn end(&mut self);
}

/// Blocks kept for reuse at most: the reader holds two batches of up to `max_workers` (8)
/// blocks as pieces (`Pipelined`), and a tap holds a few while it works through them.
const MAX_SPARE: usize = 32;

/// Reads the send stream and yields the stored stream a batch at a time (`next_batch`):
/// reads up to `workers` frames, then compresses them on as many threads at once.
/// `Pipelined` turns it into a `Read`.
pub struct CompressingReader<R> {
    inner: R,
    level: i32,
    workers: usize,
    /// One reusable context per worker (a context per frame would zero its tables each time).
    contexts: Vec<zstd::bulk::Compressor<'static>>,
    /// Block buffers of earlier batches, oldest first, reused once nobody else holds them (the
    /// tap lets go of them in order): a fresh 1 MiB buffer per frame cost a page fault per
    /// 4 KiB (a quarter of zstd's whole cost on incompressible data).
    spare: VecDeque<Bytes>,
    tap: Option<Box<dyn BlockTap>>,
    eof: bool,
    log: FramingLog,
}

impl<R: Read> CompressingReader<R> {
    /// `workers` is capped by `max_workers(level)`.
    pub fn new(inner: R, level: i32, workers: usize) -> (CompressingReader<R>, FramingLog) {
        let log = FramingLog::default();
        (
            CompressingReader {
                inner,
                level,
                workers: workers.clamp(1, max_workers(level)),
                contexts: Vec::new(),
                spare: VecDeque::new(),
                tap: None,
                eof: false,
                log: log.clone(),
            },
            log,
        )
    }

    /// Also hands every block of the send stream to `tap`.
    pub fn with_tap(mut self, tap: Box<dyn BlockTap>) -> CompressingReader<R> {
        self.tap = Some(tap);
        self
    }

    /// A block buffer of `FRAME_BYTES`: the oldest spare if nobody holds it any more.
    fn block_buffer(&mut self) -> BytesMut {
        let mut b = match self.spare.pop_front().map(Bytes::try_into_mut) {
            Some(Ok(b)) => b,
            Some(Err(held)) => {
                if self.spare.len() + 1 < MAX_SPARE {
                    self.spare.push_front(held);
                }
                BytesMut::new()
            }
            None => BytesMut::new(),
        };
        // A reused buffer is written already: only a new one is zeroed.
        b.resize(FRAME_BYTES as usize, 0);
        b
    }

    /// The next batch of stored bytes (the frames of up to `workers` blocks); None at the end,
    /// by which time the log is done.
    #[cfg(test)]
    fn next_batch(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut out = Vec::new();
        Ok(self
            .next_batch_into(&mut out)?
            .then(|| out.iter().flat_map(|s| s.iter().copied()).collect()))
    }

    /// `next_batch` into `out` as pieces in order (cleared first, its allocation reused):
    /// compressed frames, and raw frames' headers beside slices of the block itself, so a
    /// random block's bytes are copied once, into the part buffer (`Pipelined::read`), not
    /// into a batch first. False at the end.
    fn next_batch_into(&mut self, out: &mut Vec<Bytes>) -> io::Result<bool> {
        out.clear();
        if self.eof {
            return Ok(false);
        }
        let mut blocks: Vec<Bytes> = Vec::with_capacity(self.workers);
        while blocks.len() < self.workers && !self.eof {
            let mut b = self.block_buffer();
            let n = crate::pipeline::read_full(&mut self.inner, &mut b)?;
            b.truncate(n);
            if n < FRAME_BYTES as usize {
                self.eof = true;
            }
            if n > 0 {
                let b = b.freeze();
                if let Some(tap) = self.tap.as_mut() {
                    tap.block(b.clone());
                }
                blocks.push(b);
            }
        }
        if self.eof {
            if let Some(mut tap) = self.tap.take() {
                tap.end();
            }
        }
        // Frame k is a pure function of block k, so resume regenerates it: zstd's frame, or
        // for a block that looks random (compressed or encrypted files) a frame of raw blocks
        // (RFC 8878) made here without the compressor. Only the others go to the workers, and
        // a thread is started only when two or more need one (incompressible data started two
        // threads a batch before: 1,024 a GiB).
        let squeeze: Vec<usize> = (0..blocks.len())
            .filter(|&i| !looks_incompressible(&blocks[i]))
            .collect();
        while self.contexts.len() < squeeze.len() {
            self.contexts.push(zstd::bulk::Compressor::new(self.level)?);
        }
        let mut compressed: Vec<Option<Vec<u8>>> = vec![None; blocks.len()];
        let work = squeeze.iter().zip(self.contexts.iter_mut());
        let done: Vec<io::Result<Vec<u8>>> = if squeeze.len() <= 1 {
            work.map(|(&i, c)| c.compress(&blocks[i])).collect()
        } else {
            let blocks = &blocks;
            std::thread::scope(|s| {
                let handles: Vec<_> = work
                    .map(|(&i, c)| s.spawn(move || c.compress(&blocks[i])))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(io::Error::other("a zstd worker panicked")))
                    })
                    .collect()
            })
        };
        for (&i, z) in squeeze.iter().zip(done) {
            compressed[i] = Some(z?);
        }
        let mut t = self.log.0.lock().unwrap_or_else(|p| p.into_inner());
        for (plain, frame) in blocks.iter().zip(compressed) {
            let stored = match frame {
                Some(z) => {
                    let n = z.len();
                    out.push(Bytes::from(z));
                    n
                }
                // Random-looking: the block's own bytes between raw block headers.
                None => raw_frame_pieces(plain, out),
            };
            t.stream_bytes += plain.len() as u64;
            t.hash.update(plain);
            t.frames
                .push(u32::try_from(stored).map_err(io::Error::other)?);
        }
        if self.eof {
            t.done = true;
        }
        drop(t);
        self.spare.extend(blocks);
        while self.spare.len() > MAX_SPARE {
            self.spare.pop_front();
        }
        Ok(true)
    }
}

/// A `CompressingReader` on a thread of its own, one batch ahead of its reader: reading,
/// compressing and hashing the send stream overlap with the splitter hashing what is stored.
/// (One batch queued, one being made: a few MiB more than the reader alone.) The thread ends
/// at the end of the stream, on an error (handed to the reader), or when the reader is dropped.
pub struct Pipelined {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<Bytes>>>,
    /// Read batches go back to the thread to be filled again (at most three exist).
    back: std::sync::mpsc::Sender<Vec<Bytes>>,
    /// The batch being read, its next piece, and how far into that piece.
    cur: Vec<Bytes>,
    piece: usize,
    at: usize,
}

impl Pipelined {
    pub fn new<R: Read + Send + 'static>(mut r: CompressingReader<R>) -> Pipelined {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (back, returned) = std::sync::mpsc::channel::<Vec<Bytes>>();
        std::thread::spawn(move || loop {
            let mut out = returned.try_recv().unwrap_or_default();
            match r.next_batch_into(&mut out) {
                Ok(true) => {
                    if tx.send(Ok(out)).is_err() {
                        return;
                    }
                }
                Ok(false) => return,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        });
        Pipelined {
            rx,
            back,
            cur: Vec::new(),
            piece: 0,
            at: 0,
        }
    }
}

impl Read for Pipelined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.piece == self.cur.len() {
            if self.cur.capacity() > 0 {
                // The pieces let go of their blocks here, so the compressor may reuse them.
                // The thread may have ended; then the batch is simply dropped.
                self.cur.clear();
                let _ = self.back.send(std::mem::take(&mut self.cur));
            }
            match self.rx.recv() {
                Ok(Ok(b)) => {
                    self.cur = b;
                    self.piece = 0;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The thread ended after the last batch (its log is complete by then).
                Err(_) => return Ok(0),
            }
        }
        // Whole pieces while they fit: one read fills a part buffer across many of them.
        let mut n = 0;
        while n < buf.len() && self.piece < self.cur.len() {
            let p = &self.cur[self.piece];
            let k = (buf.len() - n).min(p.len() - self.at);
            buf[n..n + k].copy_from_slice(&p[self.at..self.at + k]);
            n += k;
            self.at += k;
            if self.at == p.len() {
                self.piece += 1;
                self.at = 0;
            }
        }
        Ok(n)
    }
}

/// The byte entropy of four 4 KiB samples spread over the block is above 7.95 bits: random
/// data measures about 7.99 there, text and code 4 to 6, executables and databases below 7.
/// (A block that is random at the samples only is merely stored uncompressed.)
pub fn looks_incompressible(block: &[u8]) -> bool {
    const SAMPLE: usize = 4096;
    if block.len() < 4 * SAMPLE {
        return false;
    }
    let mut counts = [0u32; 256];
    for i in 0..4 {
        let at = block.len() / 4 * i;
        for &b in &block[at..at + SAMPLE] {
            counts[b as usize] += 1;
        }
    }
    let n = (4 * SAMPLE) as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    entropy > 7.95
}

/// A zstd frame holding `block` as raw blocks: magic, a single-segment header with a 4-byte
/// content size, then blocks of at most 128 KiB, each a 3-byte header (last flag, type 0 =
/// raw, size) and the bytes themselves.
/// (The tests' oracle for `raw_frame_pieces`.)
#[cfg(test)]
fn raw_frame(block: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw_frame_len(block.len()));
    out.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    // Frame_Header_Descriptor: Frame_Content_Size_flag 2 (4 bytes), Single_Segment_flag 1.
    out.push(0b1010_0000);
    out.extend_from_slice(&(block.len() as u32).to_le_bytes());
    let mut pieces = block.chunks(MAX_RAW_BLOCK).peekable();
    while let Some(piece) = pieces.next() {
        let last = u32::from(pieces.peek().is_none());
        let header = last | ((piece.len() as u32) << 3);
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(piece);
    }
    out
}

/// `raw_frame(block)` as pieces appended to `out`: its headers, and slices of `block` (no
/// copy). Returns the frame's length.
fn raw_frame_pieces(block: &Bytes, out: &mut Vec<Bytes>) -> usize {
    out.push(Bytes::copy_from_slice(
        &raw_frame_header(block.len() as u32),
    ));
    let mut at = 0;
    while at < block.len() {
        let len = MAX_RAW_BLOCK.min(block.len() - at);
        let last = u32::from(at + len == block.len());
        let h = last | ((len as u32) << 3);
        out.push(Bytes::copy_from_slice(&h.to_le_bytes()[..3]));
        out.push(block.slice(at..at + len));
        at += len;
    }
    raw_frame_len(block.len())
}

const MAX_RAW_BLOCK: usize = 128 << 10;

/// The 9 bytes that open a raw frame of `len` stream bytes: the magic, then
/// Frame_Header_Descriptor (Frame_Content_Size_flag 2: 4 bytes; Single_Segment_flag 1) and
/// the content size. What `raw_frame_pieces` writes and `Decoder::raw_frame_at` looks for.
fn raw_frame_header(len: u32) -> [u8; 9] {
    let mut h = [0u8; 9];
    h[..4].copy_from_slice(&0xFD2F_B528u32.to_le_bytes());
    h[4] = 0b1010_0000;
    h[5..].copy_from_slice(&len.to_le_bytes());
    h
}

/// A zstd block header (3 bytes) that says raw: (last block, size of 1 to `MAX_RAW_BLOCK`).
fn raw_block_header(h: &[u8]) -> Option<(bool, usize)> {
    let h = u32::from(h[0]) | u32::from(h[1]) << 8 | u32::from(h[2]) << 16;
    let size = (h >> 3) as usize;
    (h & 0b110 == 0 && (1..=MAX_RAW_BLOCK).contains(&size)).then_some((h & 1 == 1, size))
}

/// The size of `raw_frame` of a block of `len` bytes.
fn raw_frame_len(len: usize) -> usize {
    len + 9 + 3 * len.div_ceil(MAX_RAW_BLOCK)
}
