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

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

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

/// The version of the libzstd built in: a different one may compress differently.
pub fn zstd_version() -> String {
    zstd::zstd_safe::version_string().to_string()
}

/// What a compressed stream's manifest records: the send stream's size and SHA-256, and the
/// stored size of every frame in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framing {
    pub level: i32,
    pub frame_bytes: u64,
    pub stream_bytes: u64,
    pub stream_sha256: [u8; 32],
    pub frames: Vec<u32>,
}

#[derive(Default)]
struct Tally {
    stream_bytes: u64,
    sha: Sha256,
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
            stream_sha256: t.sha.clone().finalize().into(),
            frames: t.frames.clone(),
        })
    }
}

/// Reads the send stream and yields the stored stream. Reads up to `workers` frames, then
/// compresses them on as many threads at once.
pub struct CompressingReader<R> {
    inner: R,
    level: i32,
    workers: usize,
    out: Vec<u8>,
    at: usize,
    eof: bool,
    log: FramingLog,
}

impl<R: Read> CompressingReader<R> {
    pub fn new(inner: R, level: i32, workers: usize) -> (CompressingReader<R>, FramingLog) {
        let log = FramingLog::default();
        (
            CompressingReader {
                inner,
                level,
                workers: workers.clamp(1, 64),
                out: Vec::new(),
                at: 0,
                eof: false,
                log: log.clone(),
            },
            log,
        )
    }

    /// Fills `out` with the next batch of frames; at the end marks the log done.
    fn refill(&mut self) -> io::Result<()> {
        let mut blocks = Vec::with_capacity(self.workers);
        while blocks.len() < self.workers && !self.eof {
            let mut b = vec![0u8; FRAME_BYTES as usize];
            let n = read_full(&mut self.inner, &mut b)?;
            b.truncate(n);
            if n < FRAME_BYTES as usize {
                self.eof = true;
            }
            if n > 0 {
                blocks.push(b);
            }
        }
        let level = self.level;
        let compressed: Vec<io::Result<Vec<u8>>> = if blocks.len() <= 1 {
            blocks
                .iter()
                .map(|b| zstd::bulk::compress(b, level))
                .collect()
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = blocks
                    .iter()
                    .map(|b| s.spawn(move || zstd::bulk::compress(b, level)))
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
        self.out.clear();
        self.at = 0;
        let mut t = self.log.0.lock().unwrap_or_else(|p| p.into_inner());
        for (plain, frame) in blocks.iter().zip(compressed) {
            let frame = frame?;
            t.stream_bytes += plain.len() as u64;
            t.sha.update(plain);
            t.frames
                .push(u32::try_from(frame.len()).map_err(io::Error::other)?);
            self.out.extend_from_slice(&frame);
        }
        if self.eof {
            t.done = true;
        }
        Ok(())
    }
}

impl<R: Read> Read for CompressingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.out.len() {
            if self.eof {
                return Ok(0);
            }
            self.refill()?;
        }
        let n = buf.len().min(self.out.len() - self.at);
        buf[..n].copy_from_slice(&self.out[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Turns stored bytes back into the send stream, checking it against the manifest's framing
/// as it goes: no frame may yield more than `frame_bytes`, and at the end the stream must
/// have the recorded size and SHA-256 and end on a frame boundary.
pub struct Decoder {
    raw: zstd::stream::raw::Decoder<'static>,
    frame_bytes: u64,
    expected_bytes: u64,
    expected_sha: [u8; 32],
    stream_bytes: u64,
    sha: Sha256,
    in_frame: u64,
    frame_done: bool,
    scratch: Vec<u8>,
}

impl Decoder {
    pub fn new(
        frame_bytes: u64,
        stream_bytes: u64,
        stream_sha256: [u8; 32],
    ) -> io::Result<Decoder> {
        Ok(Decoder {
            raw: zstd::stream::raw::Decoder::new()?,
            frame_bytes,
            expected_bytes: stream_bytes,
            expected_sha: stream_sha256,
            stream_bytes: 0,
            sha: Sha256::new(),
            in_frame: 0,
            frame_done: true,
            scratch: vec![0u8; 256 << 10],
        })
    }

    /// The send-stream bytes that `input` (the next stored bytes) decodes to.
    pub fn feed(&mut self, mut input: &[u8]) -> io::Result<Vec<u8>> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let mut plain = Vec::new();
        while !input.is_empty() {
            let mut inb = InBuffer::around(input);
            let mut outb = OutBuffer::around(&mut self.scratch[..]);
            let hint = self.raw.run(&mut inb, &mut outb)?;
            let produced = outb.pos();
            let consumed = inb.pos();
            self.in_frame += produced as u64;
            if self.in_frame > self.frame_bytes {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a frame decodes to more than {} bytes", self.frame_bytes),
                ));
            }
            self.stream_bytes += produced as u64;
            if self.stream_bytes > self.expected_bytes {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the stream decodes to more than the {} bytes recorded",
                        self.expected_bytes
                    ),
                ));
            }
            self.sha.update(&self.scratch[..produced]);
            plain.extend_from_slice(&self.scratch[..produced]);
            self.frame_done = hint == 0;
            if self.frame_done {
                self.in_frame = 0;
                self.raw.reinit()?;
            }
            input = &input[consumed..];
            if consumed == 0 && produced == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the zstd decoder made no progress",
                ));
            }
        }
        // Output the decoder still holds for input already given.
        loop {
            let mut outb = OutBuffer::around(&mut self.scratch[..]);
            let mut inb = InBuffer::around(&[][..]);
            let hint = self.raw.run(&mut inb, &mut outb)?;
            let produced = outb.pos();
            if produced == 0 {
                break;
            }
            self.in_frame += produced as u64;
            self.stream_bytes += produced as u64;
            if self.in_frame > self.frame_bytes || self.stream_bytes > self.expected_bytes {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the stream decodes to more than recorded",
                ));
            }
            self.sha.update(&self.scratch[..produced]);
            plain.extend_from_slice(&self.scratch[..produced]);
            self.frame_done = hint == 0;
            if self.frame_done {
                self.in_frame = 0;
                self.raw.reinit()?;
            }
        }
        Ok(plain)
    }

    /// After the last stored byte: the stream is whole and the one recorded.
    pub fn finish(self) -> Result<u64, String> {
        if !self.frame_done {
            return Err("the stored stream ends inside a zstd frame".into());
        }
        if self.stream_bytes != self.expected_bytes {
            return Err(format!(
                "the stream decodes to {} bytes, the manifest records {}",
                self.stream_bytes, self.expected_bytes
            ));
        }
        let sha: [u8; 32] = self.sha.finalize().into();
        if sha != self.expected_sha {
            return Err("the decompressed stream's SHA-256 differs from the manifest's".into());
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
        r.read_to_end(&mut out).expect("compress");
        (out, log.framing(level).expect("done"))
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
        let mut d = Decoder::new(FRAME_BYTES, f1.stream_bytes, f1.stream_sha256).expect("dec");
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
        let run = |bytes: &[u8], sha: [u8; 32]| -> Result<u64, String> {
            let mut d =
                Decoder::new(FRAME_BYTES, f.stream_bytes, sha).map_err(|e| e.to_string())?;
            d.feed(bytes).map_err(|e| e.to_string())?;
            d.finish()
        };
        assert!(run(&stored[..stored.len() - 3], f.stream_sha256).is_err());
        assert!(run(&stored, [0; 32])
            .expect_err("refused")
            .contains("SHA-256"));
        let mut bad = stored.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        assert!(run(&bad, f.stream_sha256).is_err());
        // A frame larger than the recorded frame size (a manifest lying about it) is refused.
        let mut d = Decoder::new(1000, f.stream_bytes, f.stream_sha256).expect("dec");
        assert!(d.feed(&stored).is_err());
    }

    #[test]
    fn an_empty_stream_stores_nothing() {
        let (stored, f) = compress_all(&[], 3, 2);
        assert!(stored.is_empty());
        assert_eq!(f.stream_bytes, 0);
        assert!(f.frames.is_empty());
    }
}
