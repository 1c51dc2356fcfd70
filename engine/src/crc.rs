//! CRC-32C: the checksum of every part (S3's `x-amz-checksum-crc32c`) and of the send
//! stream's commands and writes, so every stream byte passes through it twice or more.
//!
//! - Inputs of `FAST_FROM` bytes and more go to `crc-fast` (carry-less multiply folding:
//!   0.15 CPU s/GiB on this machine against 0.20–0.24 for the `crc32c` crate); shorter ones,
//!   the stream's headers and names, to `crc32c`, whose cost per call is lower.
//! - Two conventions: `crc32c` is the standard one (inverted in and out: what S3 takes);
//!   `raw` is the kernel's `crc32c(seed, …)`, with no inversion. `raw` is linear:
//!   `raw(s, A) = shift(s, |A|) ^ raw(0, A)`, where the shift is a multiplication by
//!   x^(8|A|) modulo the polynomial (`Shift`). The send stream parser takes a write's CRC
//!   once and derives its command's from it instead of reading the data twice.

/// The Castagnoli polynomial, bit-reflected: bit 31 is x^0.
const POLY: u32 = 0x82F6_3B78;

/// Below this many bytes `crc32c`'s table code is cheaper than `crc-fast`'s setup.
const FAST_FROM: usize = 256;

/// The standard CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    !raw(!0, data)
}

/// The kernel's `crc32c(state, data)`: the register after `data`, no inversion in or out.
pub fn raw(state: u32, data: &[u8]) -> u32 {
    if data.len() < FAST_FROM {
        !crc32c::crc32c_append(!state, data)
    } else {
        let mut d = crc_fast::Digest::new_with_init_state(
            crc_fast::CrcAlgorithm::Crc32Iscsi,
            u64::from(state),
        );
        d.update(data);
        // `finalize` applies the algorithm's final inversion; take it off again.
        (d.finalize() as u32) ^ 0xFFFF_FFFF
    }
}

/// `a · b` modulo the polynomial, both bit-reflected.
fn mul(a: u32, mut b: u32) -> u32 {
    let mut p = 0;
    let mut m = 1u32 << 31;
    while m != 0 {
        if a & m != 0 {
            p ^= b;
        }
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
        m >>= 1;
    }
    p
}

/// x^(8n) modulo the polynomial: what `n` zero bytes multiply a register by.
fn zeros(mut n: u64) -> u32 {
    let mut p = 1u32 << 31; // x^0
    let mut sq = 1u32 << 23; // x^8
    while n != 0 {
        if n & 1 != 0 {
            p = mul(sq, p);
        }
        sq = mul(sq, sq);
        n >>= 1;
    }
    p
}

/// `raw(state, [0; len])` in about 32 steps, not `len`. Remembers the factor of the last
/// length: a stream's writes are mostly of one or two lengths.
#[derive(Debug, Default)]
pub struct Shift {
    len: u64,
    /// x^(8 len); 0 (never such a power) until first used.
    op: u32,
}

impl Shift {
    pub fn apply(&mut self, state: u32, len: u64) -> u32 {
        if self.op == 0 || self.len != len {
            self.op = zeros(len);
            self.len = len;
        }
        mul(self.op, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// The `crc32c` crate is the reference for both conventions, below and above
    /// `FAST_FROM`, from states other than the usual ones.
    #[test]
    fn both_implementations_agree_with_the_reference() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        for (i, n) in [0usize, 1, 7, 255, 256, 257, 4095, 49_152, 131_072, 1 << 20]
            .into_iter()
            .enumerate()
        {
            let d = bytes(n, i as u64 + 3);
            assert_eq!(crc32c(&d), crc32c::crc32c(&d), "standard, {n} bytes");
            for state in [0u32, !0, 0x1234_5678, 0x8000_0001] {
                let want = !crc32c::crc32c_append(!state, &d);
                assert_eq!(raw(state, &d), want, "raw from {state:#x}, {n} bytes");
            }
        }
    }

    /// A state carried through data equals the shifted state xor the data's own CRC: the
    /// identity the parser uses to read each write once.
    #[test]
    fn a_shifted_state_plus_the_data_crc_is_the_state_carried_through_the_data() {
        let mut shift = Shift::default();
        for (i, n) in [0usize, 1, 3, 100, 4096, 49_152, 49_152, 65_536, 131_075]
            .into_iter()
            .enumerate()
        {
            let d = bytes(n, 40 + i as u64);
            for state in [0u32, 1, !0, 0xDEAD_BEEF] {
                assert_eq!(
                    shift.apply(state, n as u64) ^ raw(0, &d),
                    raw(state, &d),
                    "{n} bytes from {state:#x}"
                );
                assert_eq!(shift.apply(state, n as u64), raw(state, &vec![0; n]));
            }
        }
    }
}
