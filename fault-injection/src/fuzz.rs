//! A small mutation fuzzer for the parsers of what the tool reads back (manifests, pointers,
//! the config file, journal records, the restore journal), on the stable toolchain: seeded,
//! deterministic, no dependencies. Each target's test feeds it valid inputs; the mutants must
//! be refused with an error, never a panic, a hang or an unbounded allocation.
//!
//! `FUZZ_CASES` sets how many mutants a target gets (default 3,000 in the normal test run;
//! `scripts/fuzz.sh` runs a million each), `FUZZ_SEED` the seed.

/// Mutants per target: `FUZZ_CASES`, or 3,000.
pub fn cases() -> u64 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000)
}

pub fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f00d)
}

/// Deterministic mutations of byte strings.
pub struct Mutator {
    x: u64,
}

/// Bytes that tend to matter to the formats under test.
const INTERESTING: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\\",
    b"\n",
    b"=",
    b"..",
    b"/",
    b"\x00",
    b"\xff",
    b"-1",
    b"18446744073709551615",
    b"99999999999999999999999",
    b"null",
    b"true",
    b"1e308",
    b"\"\xc3\x28\"",
    b"[[[[[[[[[[[[[[[[",
];

impl Mutator {
    pub fn new(seed: u64) -> Mutator {
        Mutator { x: seed | 1 }
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.x ^= self.x << 13;
        self.x ^= self.x >> 7;
        self.x ^= self.x << 17;
        (self.x % (n.max(1) as u64)) as usize
    }

    /// One to four random edits of `input`: flip, insert, delete, duplicate, splice an
    /// interesting token, truncate; sometimes pure random bytes.
    pub fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut v = input.to_vec();
        if self.below(20) == 0 {
            let n = self.below(64);
            return (0..n).map(|_| self.below(256) as u8).collect();
        }
        for _ in 0..1 + self.below(4) {
            let at = self.below(v.len() + 1);
            match self.below(6) {
                0 if !v.is_empty() => {
                    let i = at.min(v.len() - 1);
                    v[i] ^= 1 << self.below(8);
                }
                1 => v.insert(at, self.below(256) as u8),
                2 if at < v.len() => {
                    let end = (at + 1 + self.below(16)).min(v.len());
                    v.drain(at..end);
                }
                3 if at < v.len() => {
                    let end = (at + 1 + self.below(32)).min(v.len());
                    let dup: Vec<u8> = v[at..end].to_vec();
                    v.splice(at..at, dup);
                }
                4 => {
                    let t = INTERESTING[self.below(INTERESTING.len())];
                    v.splice(at..at, t.iter().copied());
                }
                _ => v.truncate(at),
            }
        }
        v
    }
}

/// Runs `target` on `cases()` mutants of the `seeds`, round robin; returns how many ran.
pub fn run(seeds: &[Vec<u8>], mut target: impl FnMut(&[u8])) -> u64 {
    let mut m = Mutator::new(seed());
    let n = cases();
    for i in 0..n {
        let base = &seeds[(i as usize) % seeds.len().max(1)];
        let input = m.mutate(base);
        target(&input);
    }
    n
}
