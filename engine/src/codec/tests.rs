use super::*;
use sha2::{Digest, Sha256};

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

/// The decoder a manifest of this framing makes (`manifest::Compressed::decoder`).
fn decoder_of(f: &Framing) -> Decoder {
    Decoder::new(
        f.frame_bytes,
        f.frames.clone(),
        f.stream_bytes,
        StreamCheck::Xxh3(f.stream_xxh3),
    )
    .expect("dec")
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
    let mut d = decoder_of(&f1);
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
    let mut d = decoder_of(&f);
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
    let mut d = decoder_of(&f);
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
    let mut d = Decoder::new(FRAME_BYTES, f.frames.clone(), f.stream_bytes, check).expect("dec");
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
