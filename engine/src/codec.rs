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

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use sha2::{Digest, Sha256};

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

/// How the decoded send stream is checked at its end. The stored bytes carry hashes of
/// their own (every chunk's and the stored stream's); this check proves the decoding, so a
/// fast non-cryptographic hash does: a second SHA-256 over the send stream cost 11 % of a
/// backup's time on incompressible data. Manifests written before keep their SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamCheck {
    Sha256([u8; 32]),
    Xxh3(u128),
}

enum StreamHasher {
    Sha256(Box<Sha256>),
    Xxh3(Box<xxhash_rust::xxh3::Xxh3>),
}

impl StreamHasher {
    fn for_check(c: &StreamCheck) -> StreamHasher {
        match c {
            StreamCheck::Sha256(_) => StreamHasher::Sha256(Box::default()),
            StreamCheck::Xxh3(_) => StreamHasher::Xxh3(Box::default()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            StreamHasher::Sha256(h) => h.update(data),
            StreamHasher::Xxh3(h) => h.update(data),
        }
    }

    fn finish(self) -> StreamCheck {
        match self {
            StreamHasher::Sha256(h) => StreamCheck::Sha256(h.finalize().into()),
            StreamHasher::Xxh3(h) => StreamCheck::Xxh3(h.digest128()),
        }
    }
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

/// Turns stored bytes back into the send stream, checking it against the manifest's framing
/// as it goes: frame k must take exactly `frames[k]` stored bytes and decode to exactly
/// `frame_bytes` (the last: the rest of the stream), and at the end the stream must have the
/// recorded size and hash (`StreamCheck`). Output comes a bounded piece at a time (`step`), so a part that
/// decodes to gigabytes (a sparse file's zeros) never sits in memory whole; the window is
/// limited to the frame size, so a hostile frame cannot make the decoder allocate more.
pub struct Decoder {
    raw: zstd::stream::raw::Decoder<'static>,
    frame_bytes: u64,
    frames: Vec<u32>,
    expected_bytes: u64,
    expected: StreamCheck,
    stream_bytes: u64,
    hash: StreamHasher,
    /// The frame being decoded, its stream and stored bytes so far.
    frame: usize,
    in_frame: u64,
    in_frame_stored: u64,
    /// Stored bytes of the current frame still to pass through as raw blocks (0: none).
    raw_left: u64,
    /// Frames passed through without zstd (`raw_frame_at`).
    passed: u64,
    scratch: Vec<u8>,
}

/// Output of one `Decoder::step`, at most this many bytes.
pub const STEP_BYTES: usize = 256 << 10;

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Decoder {
    pub fn new(
        frame_bytes: u64,
        frames: Vec<u32>,
        stream_bytes: u64,
        check: StreamCheck,
    ) -> io::Result<Decoder> {
        let mut raw = zstd::stream::raw::Decoder::new()?;
        // A frame of F bytes needs no window above F (zstd's minimum is 2^10).
        let window_log = (64 - frame_bytes.max(1024).saturating_sub(1).leading_zeros()).max(10);
        raw.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(window_log))?;
        Ok(Decoder {
            raw,
            frame_bytes,
            frames,
            expected_bytes: stream_bytes,
            expected: check,
            stream_bytes: 0,
            hash: StreamHasher::for_check(&check),
            frame: 0,
            in_frame: 0,
            in_frame_stored: 0,
            raw_left: 0,
            passed: 0,
            scratch: vec![0u8; STEP_BYTES],
        })
    }

    /// Decodes from `input` until one piece of output (at most `STEP_BYTES`) is made or the
    /// input is used up: (stored bytes consumed, the stream bytes made). Call again with the
    /// rest, and with an empty input until it makes nothing, to drain what the decoder holds.
    /// A frame of raw blocks that lies whole in `input` is passed through: its pieces are
    /// slices of `input` itself, not a copy (so, within such a frame, call again with the
    /// rest of the same input, as restore does with a part).
    pub fn step<'a>(&'a mut self, input: &'a [u8]) -> io::Result<(usize, &'a [u8])> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        if self.raw_left == 0 && self.in_frame_stored == 0 {
            if let Some(stored) = self.raw_frame_at(input) {
                self.raw_left = stored;
                self.passed += 1;
            }
        }
        if self.raw_left > 0 {
            return self.raw_block(input);
        }
        let mut consumed = 0;
        loop {
            let mut inb = InBuffer::around(&input[consumed..]);
            let mut outb = OutBuffer::around(&mut self.scratch[..]);
            let hint = self.raw.run(&mut inb, &mut outb)?;
            let (used, produced) = (inb.pos(), outb.pos());
            consumed += used;
            self.in_frame_stored += used as u64;
            self.in_frame += produced as u64;
            self.stream_bytes += produced as u64;
            if self.in_frame > self.frame_bytes {
                return Err(bad(format!(
                    "frame {} decodes to more than {} bytes",
                    self.frame, self.frame_bytes
                )));
            }
            if self.stream_bytes > self.expected_bytes {
                return Err(bad(format!(
                    "the stream decodes to more than the {} bytes recorded",
                    self.expected_bytes
                )));
            }
            if hint == 0 && (used > 0 || produced > 0 || self.in_frame_stored > 0) {
                self.end_frame()?;
            }
            if used == 0 && produced == 0 && consumed < input.len() {
                return Err(bad("the zstd decoder made no progress".into()));
            }
            if produced > 0 || consumed == input.len() || (used == 0 && produced == 0) {
                self.hash.update(&self.scratch[..produced]);
                return Ok((consumed, &self.scratch[..produced]));
            }
        }
    }

    /// The stream bytes frame `k` decodes to by the manifest: `frame_bytes`, the last frame
    /// the rest (None past the last frame).
    fn plain_of(&self, k: usize) -> Option<u64> {
        if k >= self.frames.len() {
            None
        } else if k + 1 == self.frames.len() {
            self.expected_bytes
                .checked_sub((k as u64).checked_mul(self.frame_bytes)?)
        } else {
            Some(self.frame_bytes)
        }
    }

    /// The next frame's stored size if it lies whole in `input` as `raw_frame` writes it:
    /// the magic, a single-segment header whose content size is the frame's recorded one,
    /// then raw blocks of 1 byte to 128 KiB (zstd's largest) that fill exactly the recorded
    /// stored size and decode to exactly the recorded stream bytes. Anything else (a
    /// compressed block, another header, a frame cut by the end of `input`) goes to zstd.
    fn raw_frame_at(&self, input: &[u8]) -> Option<u64> {
        let k = self.frame;
        let stored = *self.frames.get(k)? as usize;
        // zstd refuses a frame past `frame_bytes` (and its window); so does the pass-through.
        let plain = self.plain_of(k).filter(|&p| p <= self.frame_bytes)?;
        let f = input.get(..stored)?;
        if f.get(..9)? != raw_frame_header(u32::try_from(plain).ok()?) {
            return None;
        }
        let (mut at, mut sum) = (9usize, 0u64);
        loop {
            let (last, size) = raw_block_header(f.get(at..at + 3)?)?;
            at = at.checked_add(3 + size).filter(|&e| e <= stored)?;
            sum += size as u64;
            if last {
                return (at == stored && sum == plain).then_some(stored as u64);
            }
        }
    }

    /// One raw block of the frame `raw_frame_at` found, as a slice of `input`.
    fn raw_block<'a>(&mut self, input: &'a [u8]) -> io::Result<(usize, &'a [u8])> {
        let k = self.frame;
        let head = if self.in_frame_stored == 0 { 9 } else { 0 };
        // `raw_frame_at` read these headers already; `input` must be the rest of its input
        // (at least to the frame's end), and the block the frame's last exactly at its end.
        let size = input
            .get(head..head + 3)
            .and_then(raw_block_header)
            .filter(|&(last, size)| {
                let used = (head + 3 + size) as u64;
                used <= self.raw_left && (used == self.raw_left) == last
            })
            .map(|(_, size)| size)
            .filter(|&size| input.len() >= head + 3 + size)
            .ok_or_else(|| bad(format!("frame {k} changed while it was decoded")))?;
        let used = head + 3 + size;
        let out = &input[head + 3..used];
        self.raw_left -= used as u64;
        self.in_frame_stored += used as u64;
        self.in_frame += size as u64;
        self.stream_bytes += size as u64;
        self.hash.update(out);
        if self.raw_left == 0 {
            self.end_frame()?;
        }
        Ok((used, out))
    }

    /// A frame ended: it must be the one the manifest records, and whole.
    fn end_frame(&mut self) -> io::Result<()> {
        let k = self.frame;
        let (Some(&stored), Some(want_plain)) = (self.frames.get(k), self.plain_of(k)) else {
            return Err(bad(format!(
                "more frames than the {} recorded",
                self.frames.len()
            )));
        };
        if self.in_frame_stored != u64::from(stored) || self.in_frame != want_plain {
            return Err(bad(format!(
                "frame {k} is {} stored bytes decoding to {}, the manifest records {stored} decoding to {want_plain}",
                self.in_frame_stored, self.in_frame
            )));
        }
        self.frame += 1;
        self.in_frame = 0;
        self.in_frame_stored = 0;
        zstd::stream::raw::Operation::reinit(&mut self.raw)?;
        Ok(())
    }

    /// Everything `input` decodes to, in one vector (tests and small streams only).
    pub fn feed(&mut self, mut input: &[u8]) -> io::Result<Vec<u8>> {
        let mut all = Vec::new();
        loop {
            let (used, out) = self.step(input)?;
            all.extend_from_slice(out);
            let made = out.len();
            input = &input[used..];
            if input.is_empty() && made == 0 {
                return Ok(all);
            }
        }
    }

    /// After the last stored byte: the stream is whole and the one recorded.
    pub fn finish(self) -> Result<u64, String> {
        if self.in_frame_stored > 0 || self.frame != self.frames.len() {
            return Err(format!(
                "the stored stream ends inside frame {} of {}",
                self.frame,
                self.frames.len()
            ));
        }
        if self.stream_bytes != self.expected_bytes {
            return Err(format!(
                "the stream decodes to {} bytes, the manifest records {}",
                self.stream_bytes, self.expected_bytes
            ));
        }
        if self.hash.finish() != self.expected {
            return Err("the decompressed stream's hash differs from the manifest's".into());
        }
        Ok(self.stream_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<u8> {
        // Compressible with some noise.
        (0..n)
            .map(|i| {
                if i % 7 == 0 {
                    (i * 31 % 251) as u8
                } else {
                    b'a' + (i % 13) as u8
                }
            })
            .collect()
    }

    fn compress_all(data: &[u8], level: i32, workers: usize) -> (Vec<u8>, Framing) {
        let (mut r, log) = CompressingReader::new(data, level, workers);
        let mut out = Vec::new();
        while let Some(batch) = r.next_batch().expect("compress") {
            out.extend(batch);
        }
        (out, log.framing(level).expect("done"))
    }

    /// Records what it is handed, and keeps the last `hold` blocks (as a slow index thread
    /// would) so that the compressor must not reuse them.
    struct Recorder {
        got: Arc<Mutex<(Vec<u8>, usize)>>,
        held: VecDeque<Bytes>,
        hold: usize,
    }

    impl BlockTap for Recorder {
        fn block(&mut self, block: Bytes) {
            self.got.lock().expect("lock").0.extend_from_slice(&block);
            self.held.push_back(block);
            if self.held.len() > self.hold {
                self.held.pop_front();
            }
        }
        fn end(&mut self) {
            self.got.lock().expect("lock").1 += 1;
        }
    }

    /// The tap sees the send stream itself, once and in order, whether it lets go of the
    /// blocks at once or holds some (while the compressor reuses the others), and the stored
    /// stream is the same as without a tap.
    #[test]
    fn a_tap_sees_the_stream_in_order_and_changes_nothing_stored() {
        let mut data = sample(9 * FRAME_BYTES as usize + 77);
        // Random blocks become raw frames, whose bytes are copied straight from the block.
        data[2 << 20..4 << 20].copy_from_slice(&noise(2 << 20, 7));
        let (want, want_framing) = compress_all(&data, 3, 2);
        for hold in [0, 1, 5, 40] {
            let got = Arc::new(Mutex::new((Vec::new(), 0)));
            let tap = Recorder {
                got: got.clone(),
                held: VecDeque::new(),
                hold,
            };
            let (r, log) = CompressingReader::new(&data[..], 3, 2);
            let mut r = r.with_tap(Box::new(tap));
            let mut out = Vec::new();
            while let Some(batch) = r.next_batch().expect("compress") {
                out.extend(batch);
            }
            assert!(out == want, "stored bytes, holding {hold}");
            assert_eq!(log.framing(3).expect("done"), want_framing);
            let (seen, ends) = &*got.lock().expect("lock");
            assert!(*seen == data, "the tap's bytes, holding {hold}");
            assert_eq!(*ends, 1, "one end, holding {hold}");
            assert!(r.spare.len() <= MAX_SPARE);
        }
    }

    #[test]
    fn parse_levels() {
        assert_eq!(Compression::parse("off"), Ok(Compression::Off));
        assert_eq!(
            Compression::parse("zstd"),
            Ok(Compression::Zstd { level: 3 })
        );
        assert_eq!(
            Compression::parse("zstd:19"),
            Ok(Compression::Zstd { level: 19 })
        );
        assert!(Compression::parse("zstd:0")
            .expect_err("refused")
            .contains("outside 1..=19"));
        assert!(Compression::parse("gzip")
            .expect_err("refused")
            .contains("not a compression"));
        assert_eq!(Compression::Zstd { level: 7 }.as_str(), "zstd:7");
    }

    #[test]
    fn output_is_the_same_for_any_number_of_workers_and_round_trips() {
        let data = sample(3 * FRAME_BYTES as usize + 12345);
        let (one, f1) = compress_all(&data, 3, 1);
        // On its own thread, read in odd pieces: the same bytes, the same framing.
        let (r, log) = CompressingReader::new(std::io::Cursor::new(data.clone()), 3, 2);
        let mut piped = Vec::new();
        let mut p = Pipelined::new(r);
        let mut buf = [0u8; 7777];
        loop {
            let n = p.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            piped.extend_from_slice(&buf[..n]);
        }
        assert_eq!(piped, one);
        assert_eq!(log.framing(3).as_ref(), Some(&f1));
        // Random blocks too (raw frames, handed over as headers and slices of the block),
        // read in odd pieces and in reads that span many pieces.
        let mut mixed = sample(5 * FRAME_BYTES as usize + 999);
        let random = FRAME_BYTES as usize..(7 << 19);
        mixed[random.clone()].copy_from_slice(&noise(random.len(), 11));
        let (want, fm) = compress_all(&mixed, 3, 1);
        assert!(
            fm.frames.iter().any(|&f| f as u64 > FRAME_BYTES),
            "a raw frame"
        );
        for size in [7777usize, 3 << 20] {
            let (r, log) = CompressingReader::new(std::io::Cursor::new(mixed.clone()), 3, 2);
            let mut p = Pipelined::new(r);
            let mut buf = vec![0u8; size];
            let mut got = Vec::new();
            loop {
                let n = p.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got == want, "reads of {size}");
            assert_eq!(log.framing(3).as_ref(), Some(&fm));
        }
        let (four, f4) = compress_all(&data, 3, 4);
        assert_eq!(one, four, "stored bytes depend on the worker count");
        assert_eq!(f1, f4);
        assert_eq!(f1.frames.len(), 4);
        assert_eq!(
            f1.frames.iter().map(|&f| f as usize).sum::<usize>(),
            one.len()
        );
        assert_eq!(f1.stream_bytes, data.len() as u64);
        assert!(
            one.len() < data.len() / 4,
            "{} of {}",
            one.len(),
            data.len()
        );
        // Standard zstd reads the concatenation.
        assert_eq!(zstd::stream::decode_all(&one[..]).expect("zstd -d"), data);
        // The decoder, fed in odd pieces, checks size and hash.
        let mut d = Decoder::new(
            FRAME_BYTES,
            f1.frames.clone(),
            f1.stream_bytes,
            StreamCheck::Xxh3(f1.stream_xxh3),
        )
        .expect("dec");
        let mut back = Vec::new();
        for piece in one.chunks(7777) {
            back.extend(d.feed(piece).expect("feed"));
        }
        assert_eq!(d.finish(), Ok(data.len() as u64));
        assert_eq!(back, data);
    }

    #[test]
    fn each_frame_decodes_alone_at_its_recorded_offset() {
        let data = sample(2 * FRAME_BYTES as usize + 10);
        let (stored, f) = compress_all(&data, 3, 2);
        let start: usize = f.frames[..1].iter().map(|&x| x as usize).sum();
        let frame = &stored[start..start + f.frames[1] as usize];
        let plain = zstd::stream::decode_all(frame).expect("one frame");
        assert_eq!(plain, &data[FRAME_BYTES as usize..2 * FRAME_BYTES as usize]);
    }

    #[test]
    fn the_decoder_refuses_damage_truncation_and_a_wrong_hash() {
        let data = sample(FRAME_BYTES as usize + 999);
        let (stored, f) = compress_all(&data, 3, 2);
        let run = |bytes: &[u8], check: StreamCheck| -> Result<u64, String> {
            let mut d = Decoder::new(FRAME_BYTES, f.frames.clone(), f.stream_bytes, check)
                .map_err(|e| e.to_string())?;
            d.feed(bytes).map_err(|e| e.to_string())?;
            d.finish()
        };
        let xxh3 = StreamCheck::Xxh3(f.stream_xxh3);
        assert_eq!(run(&stored, xxh3), Ok(data.len() as u64));
        assert!(run(&stored[..stored.len() - 3], xxh3).is_err());
        assert!(run(&stored, StreamCheck::Xxh3(f.stream_xxh3 ^ 1))
            .expect_err("refused")
            .contains("hash differs"));
        // A manifest written before the xxh3 check: the send stream's SHA-256 still decides.
        let sha: [u8; 32] = Sha256::digest(&data).into();
        assert_eq!(
            run(&stored, StreamCheck::Sha256(sha)),
            Ok(data.len() as u64)
        );
        assert!(run(&stored, StreamCheck::Sha256([0; 32])).is_err());
        let mut bad = stored.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        assert!(run(&bad, xxh3).is_err());
        // A frame larger than the recorded frame size (a manifest lying about it) is refused.
        let mut d = Decoder::new(1000, f.frames.clone(), f.stream_bytes, xxh3).expect("dec");
        assert!(d.feed(&stored).is_err());
        // Frame sizes that do not match the stored frames are refused.
        let mut shifted = f.frames.clone();
        shifted[0] += 1;
        shifted[1] -= 1;
        let mut d = Decoder::new(FRAME_BYTES, shifted, f.stream_bytes, xxh3).expect("dec");
        let err = d.feed(&stored).expect_err("wrong frame sizes");
        assert!(err.to_string().contains("frame 0 is"), "{err}");
    }

    /// Zeros compress about 1000:1: a part of them decodes in pieces of at most STEP_BYTES.
    #[test]
    fn output_comes_in_bounded_pieces() {
        let data = vec![0u8; 64 * FRAME_BYTES as usize];
        let (stored, f) = compress_all(&data, 3, 2);
        assert!(stored.len() < 64 << 10, "{} stored bytes", stored.len());
        let mut d = Decoder::new(
            FRAME_BYTES,
            f.frames.clone(),
            f.stream_bytes,
            StreamCheck::Xxh3(f.stream_xxh3),
        )
        .expect("dec");
        let (mut input, mut total, mut pieces) = (&stored[..], 0usize, 0);
        loop {
            let (used, out) = d.step(input).expect("step");
            assert!(out.len() <= STEP_BYTES);
            assert!(out.iter().all(|&b| b == 0));
            total += out.len();
            pieces += usize::from(!out.is_empty());
            input = &input[used..];
            if input.is_empty() && out.is_empty() {
                break;
            }
        }
        assert_eq!(total, data.len());
        assert!(pieces >= data.len() / STEP_BYTES);
        assert_eq!(d.finish(), Ok(data.len() as u64));
    }

    /// Random data is framed raw, without the compressor: a frame `zstd -d` and the decoder
    /// read back, and text is still compressed.
    #[test]
    fn random_blocks_become_raw_frames_that_decode() {
        let random = noise(FRAME_BYTES as usize + 5000, 0x9E37_79B9_7F4A_7C15);
        assert!(looks_incompressible(&random[..FRAME_BYTES as usize]));
        assert!(!looks_incompressible(&sample(FRAME_BYTES as usize)));
        assert!(!looks_incompressible(&vec![0u8; FRAME_BYTES as usize]));
        let (stored, f) = compress_all(&random, 3, 2);
        assert_eq!(f.frames[0] as usize, FRAME_BYTES as usize + 9 + 3 * 8);
        assert_eq!(stored[..4], 0xFD2F_B528u32.to_le_bytes());
        assert_eq!(
            zstd::stream::decode_all(&stored[..]).expect("zstd -d"),
            random
        );
        let mut d = Decoder::new(
            FRAME_BYTES,
            f.frames.clone(),
            f.stream_bytes,
            StreamCheck::Xxh3(f.stream_xxh3),
        )
        .expect("dec");
        assert_eq!(d.feed(&stored).expect("decode"), random);
        assert_eq!(d.finish(), Ok(random.len() as u64));
        // A block of one byte and one of exactly 128 KiB frame as the format says; its
        // pieces (headers and slices of the block) are that frame, as long as it says.
        for n in [1usize, 128 << 10, (128 << 10) + 1, 1 << 20, (1 << 20) - 5] {
            let block = Bytes::from(vec![7u8; n]);
            let frame = raw_frame(&block);
            assert_eq!(zstd::stream::decode_all(&frame[..]).expect("raw"), block);
            let mut pieces = Vec::new();
            assert_eq!(raw_frame_pieces(&block, &mut pieces), frame.len());
            assert_eq!(pieces.concat(), frame, "{n}");
        }
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Decodes `stored` fed in pieces of `piece` bytes (each piece stepped to its end, as
    /// restore does with a part): the stream, how it ended, how many frames passed through,
    /// and how many of the stream's bytes came out as slices of the part (no copy).
    fn decode_in(
        stored: &[u8],
        f: &Framing,
        piece: usize,
    ) -> (Vec<u8>, Result<u64, String>, u64, usize) {
        let check = StreamCheck::Xxh3(f.stream_xxh3);
        let mut d =
            Decoder::new(FRAME_BYTES, f.frames.clone(), f.stream_bytes, check).expect("dec");
        let (mut back, mut sliced) = (Vec::new(), 0);
        for part in stored.chunks(piece) {
            let mut rest = part;
            loop {
                let scratch = d.scratch.as_ptr_range();
                let (used, out) = match d.step(rest) {
                    Ok(x) => x,
                    Err(e) => return (back, Err(e.to_string()), d.passed, sliced),
                };
                // Output is zstd's (in the decoder's scratch) or a slice of the part itself.
                let at = out.as_ptr();
                let in_part = part.as_ptr_range().contains(&at);
                assert!(
                    out.is_empty() || in_part || scratch.contains(&at),
                    "output neither in the part nor decoded"
                );
                sliced += if in_part { out.len() } else { 0 };
                back.extend_from_slice(out);
                rest = &rest[used..];
                if rest.is_empty() && out.is_empty() {
                    break;
                }
            }
        }
        let passed = d.passed;
        (back, d.finish(), passed, sliced)
    }

    /// Raw frames that lie whole in the input pass through without zstd (slices of the
    /// input); cut by a piece's end, or compressed, they go through zstd; either way the
    /// stream and its checks are the same.
    #[test]
    fn raw_frames_pass_through_and_are_still_checked() {
        let fb = FRAME_BYTES as usize;
        let mut data = noise(fb, 1);
        data.extend(sample(fb));
        data.extend(noise(fb, 2));
        data.extend(noise(fb, 3));
        data.extend(noise(5000, 4)); // too short to look random: zstd's own frame
        let (stored, f) = compress_all(&data, 3, 2);
        assert_eq!(f.frames.len(), 5);
        let whole = decode_in(&stored, &f, stored.len());
        assert_eq!(whole.1, Ok(data.len() as u64));
        assert!(whole.0 == data, "stream differs");
        assert_eq!(whole.2, 3, "frames 0, 2 and 3: raw, whole in the input");
        assert_eq!(whole.3, 3 * fb, "their bytes are slices of the input");
        // Pieces that cut frames: the cut ones go through zstd, the whole ones not.
        for piece in [7777, fb + 17, 2 * fb + 40, 3 * fb] {
            let (back, end, passed, sliced) = decode_in(&stored, &f, piece);
            assert_eq!(end, Ok(data.len() as u64), "pieces of {piece}");
            assert!(back == data, "pieces of {piece}: stream differs");
            // The raw frames (0, 2, 3) that no piece boundary cuts.
            let mut start = 0;
            let mut whole = 0;
            for (k, &len) in f.frames.iter().enumerate() {
                let end = start + len as usize;
                whole += u64::from([0, 2, 3].contains(&k) && start / piece == (end - 1) / piece);
                start = end;
            }
            assert_eq!(passed, whole, "pieces of {piece}");
            assert_eq!(sliced, whole as usize * fb, "pieces of {piece}");
        }
        // A changed byte inside a raw block passes through, and the stream's hash refuses it.
        let mut bad = stored.clone();
        bad[100_000] ^= 1;
        let (_, end, passed, _) = decode_in(&bad, &f, bad.len());
        assert_eq!(passed, 3);
        assert!(end.expect_err("refused").contains("hash differs"));
        // A raw block's header turned into another type or size is not passed through, and
        // zstd refuses what it then reads.
        for (at, byte) in [(9, 0b010u8), (9, 0x08), (9 + 3 + (128 << 10), 0x10)] {
            let mut bad = stored.clone();
            bad[at] ^= byte;
            let (_, end, passed, _) = decode_in(&bad, &f, bad.len());
            assert!(end.is_err(), "header byte {at} ^ {byte:#x} accepted");
            assert_eq!(passed, 0, "header byte {at} ^ {byte:#x}: frame 0 passed");
        }
    }

    /// A raw block above 128 KiB is none that `raw_frame` writes, nor a frame decoding past
    /// `frame_bytes`: zstd, not the pass-through, decides what they are, and what it makes of
    /// them is refused or the block itself, never other bytes.
    #[test]
    fn frames_raw_frame_never_writes_are_left_to_zstd() {
        let block = noise(256 << 10, 9);
        let mut frame = 0xFD2F_B528u32.to_le_bytes().to_vec();
        frame.push(0b1010_0000);
        frame.extend_from_slice(&(block.len() as u32).to_le_bytes());
        frame.extend_from_slice(&(1u32 | (block.len() as u32) << 3).to_le_bytes()[..3]);
        frame.extend_from_slice(&block);
        let n = block.len() as u64;
        let check = StreamCheck::Xxh3(xxhash_rust::xxh3::xxh3_128(&block));
        let mut d = Decoder::new(n, vec![frame.len() as u32], n, check).expect("dec");
        if let Ok(out) = d.feed(&frame) {
            assert!(out == block, "decoded to other bytes");
        }
        assert_eq!(d.passed, 0);
        // A raw frame as `raw_frame` writes it, but of 1 MiB where the manifest says frames
        // are 64 KiB: refused, and not passed through.
        let big = noise(1 << 20, 10);
        let frame = raw_frame(&big);
        let check = StreamCheck::Xxh3(xxhash_rust::xxh3::xxh3_128(&big));
        let mut d =
            Decoder::new(64 << 10, vec![frame.len() as u32], big.len() as u64, check).expect("dec");
        assert!(d.feed(&frame).is_err());
        assert_eq!(d.passed, 0);
    }

    #[test]
    fn an_empty_stream_stores_nothing() {
        let (stored, f) = compress_all(&[], 3, 2);
        assert!(stored.is_empty());
        assert_eq!(f.stream_bytes, 0);
        assert!(f.frames.is_empty());
    }
}
