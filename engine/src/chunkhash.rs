//! The hash of a chunk's bytes, and of a stream made of chunks. Manifests of formats 1 to 4
//! use SHA-256 (`sha256`, `stream_sha256`); format 5 uses BLAKE3 (`blake3`, `stream_blake3`),
//! which took 0.26 s/GiB here against SHA-256's 0.68 with SHA-NI (BENCHMARKS.md). Which one
//! a run writes is a setting (`chunk_hash`), in the settings fingerprint, so a run is never
//! resumed with the other: a journal's chunk hashes are all of one algorithm.

use sha2::Digest;

/// The algorithm of chunk and stream hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChunkHash {
    Sha256,
    #[default]
    Blake3,
}

impl ChunkHash {
    pub fn as_str(self) -> &'static str {
        match self {
            ChunkHash::Sha256 => "sha256",
            ChunkHash::Blake3 => "blake3",
        }
    }

    /// The setting's value: "sha256" or "blake3".
    pub fn parse(s: &str) -> Result<ChunkHash, String> {
        match s {
            "sha256" => Ok(ChunkHash::Sha256),
            "blake3" => Ok(ChunkHash::Blake3),
            other => Err(format!(
                "chunk_hash {other:?} is not \"blake3\" or \"sha256\""
            )),
        }
    }

    /// The algorithm that is not this one (whose fields a manifest of this one leaves empty).
    pub fn other(self) -> ChunkHash {
        match self {
            ChunkHash::Sha256 => ChunkHash::Blake3,
            ChunkHash::Blake3 => ChunkHash::Sha256,
        }
    }

    /// The name people read in errors: "SHA-256" or "BLAKE3".
    pub fn label(self) -> &'static str {
        match self {
            ChunkHash::Sha256 => "SHA-256",
            ChunkHash::Blake3 => "BLAKE3",
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            ChunkHash::Sha256 => Hasher::Sha256(Box::default()),
            ChunkHash::Blake3 => Hasher::Blake3(Box::default()),
        }
    }

    pub fn digest(self, data: &[u8]) -> [u8; 32] {
        let mut h = self.hasher();
        h.update(data);
        h.finish()
    }

    /// The stream hash of formats 4 and 5: the hash of the chunks' hashes, 32 bytes each, in
    /// chunk order (so no byte of the stream is hashed twice).
    pub fn of_chunks<'a>(self, chunks: impl IntoIterator<Item = &'a [u8; 32]>) -> [u8; 32] {
        let mut h = self.hasher();
        for c in chunks {
            h.update(c);
        }
        h.finish()
    }
}

/// A running hash of either algorithm.
#[derive(Clone)]
pub enum Hasher {
    Sha256(Box<sha2::Sha256>),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Blake3(h) => {
                h.update(data);
            }
        }
    }

    pub fn finish(self) -> [u8; 32] {
        match self {
            Hasher::Sha256(h) => h.finalize().into(),
            Hasher::Blake3(h) => h.finalize().into(),
        }
    }

    /// The hash so far, and a fresh hasher of the same algorithm in its place.
    pub fn take(&mut self) -> [u8; 32] {
        let fresh = match self {
            Hasher::Sha256(_) => ChunkHash::Sha256.hasher(),
            Hasher::Blake3(_) => ChunkHash::Blake3.hasher(),
        };
        std::mem::replace(self, fresh).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers: FIPS 180-2's "abc", and BLAKE3's reference vector for empty input.
    #[test]
    fn known_answers() {
        assert_eq!(
            hex::encode(ChunkHash::Sha256.digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex::encode(ChunkHash::Blake3.digest(b"")),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn pieces_hash_as_the_whole_and_take_restarts() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for algo in [ChunkHash::Sha256, ChunkHash::Blake3] {
            let mut h = algo.hasher();
            for piece in data.chunks(70_001) {
                h.update(piece);
            }
            assert_eq!(h.take(), algo.digest(&data), "{algo:?}");
            h.update(b"abc");
            assert_eq!(h.finish(), algo.digest(b"abc"), "{algo:?} after take");
        }
        assert_ne!(
            ChunkHash::Sha256.digest(&data),
            ChunkHash::Blake3.digest(&data)
        );
    }

    #[test]
    fn of_chunks_is_the_hash_of_the_concatenated_hashes() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let mut cat = a.to_vec();
        cat.extend_from_slice(&b);
        for algo in [ChunkHash::Sha256, ChunkHash::Blake3] {
            assert_eq!(algo.of_chunks([&a, &b]), algo.digest(&cat));
        }
    }

    #[test]
    fn setting_parses_and_refuses() {
        for algo in [ChunkHash::Sha256, ChunkHash::Blake3] {
            assert_eq!(ChunkHash::parse(algo.as_str()), Ok(algo));
        }
        let e = ChunkHash::parse("md5").expect_err("refused");
        assert!(e.contains("\"blake3\" or \"sha256\""), "{e}");
    }
}
