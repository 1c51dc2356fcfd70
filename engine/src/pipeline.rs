//! Send stream -> fixed-size parts -> hashes, with bounded memory.
//!
//! Invariants:
//! - At most `BufferPool::capacity` part buffers exist at once, so a backup holds at most
//!   capacity × part_size bytes of stream data, whatever the stream size.
//! - Part `n` of chunk `c` always covers the same stream range (see `machine::Layout`).
//! - The splitter reports the end of the last chunk only after the producer (btrfs send)
//!   exited successfully: a truncated stream never looks complete.

use std::io::Read;
use std::sync::{Condvar, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::chunkhash::ChunkHash;

use crate::machine::Layout;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("reading the send stream: {0}")]
    Read(std::io::Error),
    #[error("`btrfs send` failed ({status}): {stderr}")]
    Producer { status: String, stderr: String },
    #[error("the send stream was empty")]
    Empty,
    #[error("the upload side stopped")]
    Closed,
}

impl PipelineError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, PipelineError::Read(_))
    }
}

/// A bounded set of reusable part buffers.
pub struct BufferPool {
    state: Mutex<PoolState>,
    cv: Condvar,
    capacity: usize,
    /// Spare bytes each buffer gets beyond its part (room to seal the part in place).
    headroom: usize,
}

struct PoolState {
    free: Vec<BytesMut>,
    outstanding: usize,
    closed: bool,
}

impl BufferPool {
    pub fn new(capacity: usize) -> BufferPool {
        BufferPool::with_headroom(capacity, 0)
    }

    pub fn with_headroom(capacity: usize, headroom: usize) -> BufferPool {
        BufferPool {
            state: Mutex::new(PoolState {
                free: Vec::new(),
                outstanding: 0,
                closed: false,
            }),
            cv: Condvar::new(),
            capacity: capacity.max(1),
            headroom,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Blocks until a buffer is free; `None` once the pool is closed.
    pub fn take(&self) -> Option<BytesMut> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.closed {
                return None;
            }
            if let Some(b) = st.free.pop() {
                st.outstanding += 1;
                return Some(b);
            }
            if st.outstanding < self.capacity {
                st.outstanding += 1;
                return Some(BytesMut::new());
            }
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Returns a buffer. If someone else still holds the bytes, the buffer is dropped
    /// instead (its memory goes when they let go) and a fresh one may be allocated.
    /// A buffer taken again comes with its old length and bytes: whoever takes it
    /// overwrites or truncates them (`split_stream`), and need not zero them first.
    pub fn give(&self, b: Bytes) {
        let reusable = b.try_into_mut().ok();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.outstanding = st.outstanding.saturating_sub(1);
        if let Some(m) = reusable {
            st.free.push(m);
        }
        drop(st);
        self.cv.notify_one();
    }

    /// Wakes and refuses every waiter: used when the pipeline stops on an error.
    pub fn close(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.cv.notify_all();
    }
}

/// One part of the stream with its hashes.
#[derive(Debug)]
pub struct Part {
    pub chunk: u32,
    /// 1-based.
    pub number: u32,
    pub offset: u64,
    pub data: Bytes,
    pub xxh3: u128,
    pub crc32c: u32,
}

#[derive(Debug)]
pub enum Event {
    Part(Part),
    /// `hash`: the chunk's, in the run's `ChunkHash`.
    ChunkEnd {
        chunk: u32,
        size: u64,
        hash: [u8; 32],
    },
    /// `hash`: the stream's, as `manifest::format_of` makes it.
    End {
        total: u64,
        hash: [u8; 32],
    },
    Failed(PipelineError),
}

pub fn part_hashes(data: &[u8]) -> (u128, u32) {
    (xxhash_rust::xxh3::xxh3_128(data), crate::crc::crc32c(data))
}

/// Reads until `buf` is full or the reader is at end of stream; returns bytes read.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Splits a stream into parts and chunks, sending events in stream order. `finish` is called
/// at end of stream and must confirm the producer succeeded. Runs on a blocking thread.
pub fn split_stream<R: Read>(
    mut reader: R,
    layout: Layout,
    hash: ChunkHash,
    pool: &BufferPool,
    tx: &mpsc::Sender<Event>,
    finish: impl FnOnce() -> Result<(), PipelineError>,
) {
    let send = |ev: Event| tx.blocking_send(ev).is_ok();
    // Each byte is hashed once, in its chunk's hash; the stream's comes from those
    // (`manifest::format_of`: a one-chunk SHA-256 stream's is its chunk's, others' are made
    // from the chunks' hashes, formats 4 and 5).
    let mut chunk_hasher = hash.hasher();
    let mut chunk_hashes: Vec<[u8; 32]> = Vec::new();
    let mut total: u64 = 0;
    let mut chunk: u32 = 0;
    let mut in_chunk: u64 = 0;
    let mut number: u32 = 1;
    let mut finish = Some(finish);
    loop {
        let Some(mut buf) = pool.take() else { return };
        let want = layout.part_size.min(layout.chunk_size - in_chunk);
        // `want` <= part_size <= 5 GiB, which fits usize on 64-bit targets.
        let want_len = usize::try_from(want).unwrap_or(usize::MAX);
        // A reused buffer keeps its length (`BufferPool::give`): those bytes are written
        // already, and zeroing 8 MiB for each part cost 3 % of a backup's CPU.
        buf.reserve(
            want_len
                .saturating_add(pool.headroom)
                .saturating_sub(buf.len()),
        );
        if buf.len() < want_len {
            buf.resize(want_len, 0);
        } else {
            buf.truncate(want_len);
        }
        let n = match read_full(&mut reader, &mut buf) {
            Ok(n) => n,
            Err(e) => {
                pool.give(buf.freeze());
                send(Event::Failed(PipelineError::Read(e)));
                return;
            }
        };
        buf.truncate(n);
        if n > 0 {
            let (xxh3, crc32c) = part_hashes(&buf);
            chunk_hasher.update(&buf);
            let part = Part {
                chunk,
                number,
                offset: total,
                data: buf.freeze(),
                xxh3,
                crc32c,
            };
            total += n as u64;
            in_chunk += n as u64;
            number += 1;
            if !send(Event::Part(part)) {
                return;
            }
        } else {
            pool.give(buf.freeze());
        }
        let eof = (n as u64) < want;
        let chunk_full = in_chunk == layout.chunk_size;
        if eof {
            // Confirm the producer before the last chunk can be sealed.
            if let Err(e) = finish.take().map_or(Ok(()), |f| f()) {
                send(Event::Failed(e));
                return;
            }
            if total == 0 {
                send(Event::Failed(PipelineError::Empty));
                return;
            }
        }
        if (eof && in_chunk > 0) || chunk_full {
            let h = chunk_hasher.take();
            chunk_hashes.push(h);
            if !send(Event::ChunkEnd {
                chunk,
                size: in_chunk,
                hash: h,
            }) {
                return;
            }
            chunk += 1;
            in_chunk = 0;
            number = 1;
        }
        if eof {
            send(Event::End {
                total,
                hash: crate::manifest::format_of(false, false, hash, &chunk_hashes).1,
            });
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::MIB;

    fn collect(data: Vec<u8>, layout: Layout, pool_cap: usize) -> Vec<Event> {
        collect_hashed(data, layout, ChunkHash::Sha256, pool_cap)
    }

    fn collect_hashed(
        data: Vec<u8>,
        layout: Layout,
        hash: ChunkHash,
        pool_cap: usize,
    ) -> Vec<Event> {
        let pool = std::sync::Arc::new(BufferPool::new(pool_cap));
        let (tx, mut rx) = mpsc::channel(1);
        let p2 = pool.clone();
        let h = std::thread::spawn(move || {
            split_stream(
                std::io::Cursor::new(data),
                layout,
                hash,
                &p2,
                &tx,
                || Ok(()),
            )
        });
        let mut out = Vec::new();
        while let Some(ev) = rx.blocking_recv() {
            if let Event::Part(p) = &ev {
                // Consumer gives buffers back, as the uploader does.
                pool.give(p.data.clone());
            }
            out.push(ev);
        }
        h.join().expect("splitter thread");
        out
    }

    #[test]
    fn splits_into_fixed_parts_and_chunks() {
        for algo in [ChunkHash::Sha256, ChunkHash::Blake3] {
            splits_into_fixed_parts_and_chunks_hashed(algo);
        }
    }

    fn splits_into_fixed_parts_and_chunks_hashed(algo: ChunkHash) {
        let layout = Layout::new(12 * MIB, 5 * MIB).expect("layout");
        let data: Vec<u8> = (0..(30 * MIB + 7)).map(|i| (i % 251) as u8).collect();
        let evs = collect_hashed(data.clone(), layout, algo, 2);
        let mut parts = Vec::new();
        let mut chunk_ends = Vec::new();
        let mut end = None;
        for ev in &evs {
            match ev {
                Event::Part(p) => parts.push((p.chunk, p.number, p.offset, p.data.len() as u64)),
                Event::ChunkEnd { chunk, size, hash } => chunk_ends.push((*chunk, *size, *hash)),
                Event::End { total, hash } => end = Some((*total, *hash)),
                Event::Failed(e) => panic!("{e}"),
            }
        }
        // 12 MiB chunks of parts 5+5+2; the last chunk holds 6 MiB + 7 bytes.
        let m = MIB;
        assert_eq!(
            parts,
            vec![
                (0, 1, 0, 5 * m),
                (0, 2, 5 * m, 5 * m),
                (0, 3, 10 * m, 2 * m),
                (1, 1, 12 * m, 5 * m),
                (1, 2, 17 * m, 5 * m),
                (1, 3, 22 * m, 2 * m),
                (2, 1, 24 * m, 5 * m),
                (2, 2, 29 * m, m + 7),
            ]
        );
        for (p, ev) in parts.iter().zip(evs.iter().filter_map(|e| match e {
            Event::Part(p) => Some(p),
            _ => None,
        })) {
            assert_eq!(p.2, layout.part_offset(p.0, p.1));
            let range = &data[ev.offset as usize..ev.offset as usize + ev.data.len()];
            assert_eq!(part_hashes(range), (ev.xxh3, ev.crc32c));
        }
        assert_eq!(chunk_ends.len(), 3);
        assert_eq!(chunk_ends[0].2, algo.digest(&data[..12 * m as usize]));
        assert_eq!(chunk_ends[2].2, algo.digest(&data[24 * m as usize..]));
        assert_eq!(chunk_ends[2].1, 6 * m + 7);
        assert_eq!(
            chunk_ends[1].2,
            algo.digest(&data[12 * m as usize..24 * m as usize])
        );
        // Three chunks: the stream's hash is made from the chunks' (formats 4 and 5).
        let hashes: Vec<[u8; 32]> = chunk_ends.iter().map(|c| c.2).collect();
        assert_eq!(end, Some((data.len() as u64, algo.of_chunks(&hashes))));
    }

    /// A one-chunk stream's SHA-256 is the SHA-256 of the stream, which is its chunk's; its
    /// BLAKE3 (format 5) is made from its one chunk's, as a longer stream's is.
    #[test]
    fn one_chunk_stream_hash() {
        let layout = Layout::new(64 * MIB, 5 * MIB).expect("layout");
        let data: Vec<u8> = (0..(11 * MIB + 3)).map(|i| (i % 253) as u8).collect();
        for algo in [ChunkHash::Sha256, ChunkHash::Blake3] {
            let evs = collect_hashed(data.clone(), layout, algo, 2);
            let chunk = algo.digest(&data);
            let want = match algo {
                ChunkHash::Sha256 => vec![chunk, chunk],
                ChunkHash::Blake3 => vec![chunk, algo.of_chunks([&chunk])],
            };
            let ends: Vec<_> = evs
                .iter()
                .filter_map(|e| match e {
                    Event::ChunkEnd { hash, .. } => Some(*hash),
                    Event::End { total, hash } => {
                        assert_eq!(*total, data.len() as u64);
                        Some(*hash)
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(ends, want, "{algo:?}");
        }
    }

    #[test]
    fn exact_multiple_of_chunk_has_no_empty_tail() {
        let layout = Layout::new(10 * MIB, 5 * MIB).expect("layout");
        let evs = collect(vec![1u8; 20 * MIB as usize], layout, 3);
        let ends = evs
            .iter()
            .filter(|e| matches!(e, Event::ChunkEnd { .. }))
            .count();
        assert_eq!(ends, 2);
        assert!(matches!(evs.last(), Some(Event::End { total, .. }) if *total == 20 * MIB));
    }

    #[test]
    fn empty_stream_and_failed_producer_never_end_cleanly() {
        let layout = Layout::new(10 * MIB, 5 * MIB).expect("layout");
        let evs = collect(Vec::new(), layout, 2);
        assert!(matches!(
            evs.last(),
            Some(Event::Failed(PipelineError::Empty))
        ));

        let pool = BufferPool::new(2);
        let (tx, mut rx) = mpsc::channel(8);
        split_stream(
            std::io::Cursor::new(vec![7u8; 100]),
            layout,
            ChunkHash::Blake3,
            &pool,
            &tx,
            || {
                Err(PipelineError::Producer {
                    status: "exit status: 1".into(),
                    stderr: "boom".into(),
                })
            },
        );
        drop(tx);
        let mut evs = Vec::new();
        while let Some(e) = rx.blocking_recv() {
            evs.push(e);
        }
        assert!(matches!(evs[0], Event::Part(_)));
        assert!(matches!(
            evs[1],
            Event::Failed(PipelineError::Producer { .. })
        ));
        assert_eq!(evs.len(), 2, "no ChunkEnd after a failed producer");
    }

    /// Buffers that really come back (the consumer keeps no reference) are filled again
    /// without zeroing: a shorter part after a longer one carries none of its old bytes, and
    /// the buffer does not grow.
    #[test]
    fn reused_buffers_carry_no_stale_bytes_and_do_not_grow() {
        let layout = Layout::new(13 * MIB, 5 * MIB).expect("layout");
        let data: Vec<u8> = (0..(30 * MIB + 5)).map(|i| (i % 253) as u8).collect();
        let pool = std::sync::Arc::new(BufferPool::with_headroom(1, 1000));
        let (tx, mut rx) = mpsc::channel(1);
        let (p2, d2) = (pool.clone(), data.clone());
        let h = std::thread::spawn(move || {
            split_stream(
                std::io::Cursor::new(d2),
                layout,
                ChunkHash::Blake3,
                &p2,
                &tx,
                || Ok(()),
            )
        });
        let mut got = Vec::new();
        let mut lens = Vec::new();
        while let Some(ev) = rx.blocking_recv() {
            if let Event::Part(p) = ev {
                assert_eq!(part_hashes(&p.data), (p.xxh3, p.crc32c));
                let mut m = p.data.try_into_mut().expect("the only reference");
                assert!(
                    m.capacity() <= (5 * MIB) as usize + 1000,
                    "{}",
                    m.capacity()
                );
                got.extend_from_slice(&m);
                lens.push(m.len() as u64);
                // Written over, as sealing in place does, before it goes back.
                m.extend_from_slice(&[0xEE; 1000]);
                pool.give(m.freeze());
            }
        }
        h.join().expect("splitter thread");
        let m = MIB;
        assert_eq!(lens, [5 * m, 5 * m, 3 * m, 5 * m, 5 * m, 3 * m, 4 * m + 5]);
        assert!(got == data, "the parts put together are the stream");
    }

    #[test]
    fn pool_never_exceeds_capacity() {
        let pool = std::sync::Arc::new(BufferPool::new(2));
        let a = pool.take().expect("a");
        let _b = pool.take().expect("b");
        let p2 = pool.clone();
        let waiter = std::thread::spawn(move || p2.take().is_some());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "third take must wait");
        pool.give(a.freeze());
        assert!(waiter.join().expect("join"));
        let p3 = pool.clone();
        let closed = std::thread::spawn(move || p3.take());
        std::thread::sleep(std::time::Duration::from_millis(20));
        pool.close();
        assert!(closed.join().expect("join").is_none());
    }
}
