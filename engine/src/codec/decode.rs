//! Stored bytes back into the send stream: the `Decoder`, which checks every frame against
//! the manifest's framing and the whole stream against its hash (`StreamCheck`).

use std::io;

use sha2::{Digest, Sha256};

use super::{raw_block_header, raw_frame_header};

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
    pub(super) passed: u64,
    pub(super) scratch: Vec<u8>,
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
