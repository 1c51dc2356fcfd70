//! Reads what `format::Out` writes, every number and length bounded: from bytes in hand, or
//! streamed from a reader (a zstd decoder) through a window, so that a large index is never
//! held whole in its plain form.
//!
//! *Invariant:* a `Span` (a byte string's place) stays readable until the next `mark`; the
//! window keeps every byte from the last mark on, and no more.

use super::format::FormatError;
use crate::sendstream::Timespec;
use std::borrow::Cow;
use std::io::Read;

/// How much a streamed reader asks its source for at a time.
const WINDOW: usize = 256 << 10;

/// A byte string's place in the whole input.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    pub at: u64,
    pub len: usize,
}

pub(crate) struct In<'a> {
    /// The input's bytes from `base` on that are in hand (all of them when not streamed).
    b: Cow<'a, [u8]>,
    at: usize,
    base: u64,
    /// The whole input's length (streamed: the length it was declared to have, until the
    /// source ends before it).
    total: u64,
    /// Streamed: the length declared, when the source ended before it.
    declared: Option<u64>,
    /// Where the window starts keeping bytes (`mark`).
    keep: usize,
    src: Option<&'a mut dyn Read>,
}

impl<'a> In<'a> {
    /// Reads `b`, all in hand.
    pub(crate) fn slice(b: &'a [u8]) -> In<'a> {
        In {
            total: b.len() as u64,
            declared: None,
            b: Cow::Borrowed(b),
            at: 0,
            base: 0,
            keep: 0,
            src: None,
        }
    }

    /// Reads `total` bytes from `src` (fewer is "ends early"; `finish` refuses more).
    pub(crate) fn stream(src: &'a mut dyn Read, total: u64) -> In<'a> {
        In {
            b: Cow::Owned(Vec::new()),
            at: 0,
            base: 0,
            total,
            declared: None,
            keep: 0,
            src: Some(src),
        }
    }

    /// How far into the input the reader is.
    pub(crate) fn pos(&self) -> u64 {
        self.base + self.at as u64
    }

    /// The input's whole length.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Spans read before this may be dropped from the window.
    pub(crate) fn mark(&mut self) {
        self.keep = self.at;
    }

    /// Whether every byte was read; streamed, also that the source has no more.
    pub(crate) fn finish(&mut self) -> Result<(), FormatError> {
        if let Some(d) = self.declared {
            return Err(self.bad(format!(
                "ends early: {} bytes of the {d} recorded",
                self.total
            )));
        }
        if self.pos() != self.total {
            return Err(self.bad("bytes after the last directory"));
        }
        if let Some(src) = self.src.as_mut() {
            let mut one = [0u8; 1];
            match src.read(&mut one) {
                Ok(0) => {}
                Ok(_) => return Err(self.bad("more bytes than recorded")),
                Err(e) => return Err(self.bad(format!("cannot read: {e}"))),
            }
        }
        Ok(())
    }

    pub(crate) fn bad(&self, what: impl Into<String>) -> FormatError {
        FormatError {
            at: self.pos() as usize,
            what: what.into(),
        }
    }

    /// Makes `n` bytes from `at` on be in hand, or says the input ends before them.
    #[inline]
    fn need(&mut self, n: usize) -> Result<(), FormatError> {
        if self.b.len() - self.at >= n {
            return Ok(());
        }
        self.refill(n)
    }

    #[cold]
    fn refill(&mut self, n: usize) -> Result<(), FormatError> {
        let left = self.total - self.base - self.b.len() as u64;
        let short = (self.at + n - self.b.len()) as u64;
        if self.src.is_none() || short > left {
            return Err(self.bad("ends early"));
        }
        let keep = self.keep.min(self.at);
        let b = self.b.to_mut();
        b.drain(..keep);
        self.base += keep as u64;
        self.at -= keep;
        self.keep -= keep;
        let have = b.len();
        let want = (short as usize).max(WINDOW).min(left as usize);
        let src = self.src.as_mut().expect("streamed");
        // Grown a step at a time as bytes come: a length the bytes do not bear out (a
        // damaged one, before the hash is known) allocates no more than they hold.
        let mut failed = None;
        while b.len() < have + want {
            let from = b.len();
            let step = (have + want - from).min(WINDOW);
            b.resize(from + step, 0);
            let mut filled = 0;
            while filled < step {
                match src.read(&mut b[from + filled..from + step]) {
                    Ok(0) => break,
                    Ok(k) => filled += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            b.truncate(from + filled);
            if filled < step {
                break;
            }
        }
        let got = b.len() - have;
        if let Some(e) = failed {
            return Err(self.bad(format!("cannot read: {e}")));
        }
        if got < want {
            // Fewer bytes than declared: the input ends here.
            self.declared = Some(self.total);
            self.total = self.base + self.b.len() as u64;
            if (self.at + n) > self.b.len() {
                return Err(self.bad("ends early"));
            }
        }
        Ok(())
    }

    pub(crate) fn byte(&mut self) -> Result<u8, FormatError> {
        self.need(1)?;
        let b = self.b[self.at];
        self.at += 1;
        Ok(b)
    }

    pub(crate) fn u(&mut self) -> Result<u64, FormatError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f)
                .checked_shl(shift)
                .filter(|x| x >> shift == u64::from(b & 0x7f))
                .ok_or_else(|| self.bad("a number too large"))?;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.bad("a number too long"))
    }

    /// `n` bytes as they are.
    pub(crate) fn fixed(&mut self, n: usize) -> Result<&[u8], FormatError> {
        self.need(n)?;
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    pub(crate) fn crc(&mut self) -> Result<u32, FormatError> {
        let b = self.fixed(4).map_err(|mut e| {
            e.what = "cut inside a CRC".into();
            e
        })?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn i(&mut self) -> Result<i64, FormatError> {
        let u = self.u()?;
        Ok((u >> 1) as i64 ^ -((u & 1) as i64))
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        let v = self.u()?;
        u32::try_from(v).map_err(|_| self.bad(format!("{what} {v} out of range")))
    }

    pub(crate) fn time(&mut self, base: i64) -> Result<Timespec, FormatError> {
        let sec = self.i()?.wrapping_add(base);
        let nsec = self.u32("nanoseconds")?;
        if nsec >= 1_000_000_000 {
            return Err(self.bad(format!("{nsec} nanoseconds")));
        }
        Ok(Timespec { sec, nsec })
    }

    /// A count of items at least `min` bytes each, bounded by what is left.
    pub(crate) fn count(&mut self, min: usize) -> Result<usize, FormatError> {
        let n = self.u()?;
        let left = (self.total - self.pos()) / min.max(1) as u64;
        usize::try_from(n)
            .ok()
            .filter(|n| *n as u64 <= left)
            .ok_or_else(|| self.bad(format!("a count of {n} with {left} items' bytes left")))
    }

    /// A byte string's place; `get` gives its bytes until the next `mark`.
    pub(crate) fn bytes(&mut self) -> Result<Span, FormatError> {
        let n = self.count(1)?;
        self.need(n)?;
        let s = Span {
            at: self.pos(),
            len: n,
        };
        self.at += n;
        Ok(s)
    }

    pub(crate) fn get(&self, s: Span) -> &[u8] {
        // Read since the last mark (the invariant), so still in the window.
        let from = (s.at - self.base) as usize;
        &self.b[from..from + s.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader handing out at most 3 bytes a call, to cross every boundary.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = out.len().min(3).min(self.0.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn sample() -> Vec<u8> {
        let mut o = super::super::format::Out(Vec::new());
        for k in 0..100_000u64 {
            o.u(k * 977);
            o.bytes(&vec![b'x'; (k % 700) as usize]);
        }
        o.0
    }

    fn read_all(r: &mut In) -> Result<Vec<(u64, usize)>, FormatError> {
        let mut out = Vec::new();
        for k in 0..100_000u64 {
            r.mark();
            let v = r.u()?;
            let s = r.bytes()?;
            assert_eq!(r.get(s).len(), (k % 700) as usize);
            assert!(r.get(s).iter().all(|c| *c == b'x'));
            out.push((v, s.len));
        }
        r.finish()?;
        Ok(out)
    }

    #[test]
    fn a_stream_reads_as_the_bytes_do_and_keeps_only_a_window() {
        let b = sample();
        let whole = read_all(&mut In::slice(&b)).expect("reads");
        let mut src = Trickle(&b);
        let mut r = In::stream(&mut src, b.len() as u64);
        assert_eq!(read_all(&mut r).expect("streams"), whole);
        let Cow::Owned(window) = &r.b else {
            panic!("a stream's window is its own")
        };
        assert!(window.capacity() < 4 * WINDOW, "{}", window.capacity());
    }

    #[test]
    fn a_length_the_stream_does_not_bear_out_allocates_only_what_came() {
        // Said to be 4 GiB; a byte string of 2 GiB, then 1 MiB.
        let mut o = super::super::format::Out(Vec::new());
        o.u(1 << 31);
        o.0.resize(o.0.len() + (1 << 20), b'x');
        let mut src = &o.0[..];
        let mut r = In::stream(&mut src, 4 << 30);
        let e = r.bytes().expect_err("refused");
        assert_eq!(e.what, "ends early");
        let Cow::Owned(window) = &r.b else {
            panic!("a stream's window is its own")
        };
        assert!(window.capacity() <= 4 << 20, "{}", window.capacity());
    }

    #[test]
    fn a_stream_shorter_or_longer_than_declared_is_refused() {
        let b = sample();
        let mut src = Trickle(&b[..b.len() - 1]);
        let e = read_all(&mut In::stream(&mut src, b.len() as u64)).expect_err("refused");
        // Once the source ends, counts are bounded by what it held.
        assert!(
            e.what == "ends early" || e.what.starts_with("a count of 599 with 598"),
            "{e}"
        );
        let mut longer = b.clone();
        longer.push(0);
        let mut src = Trickle(&longer);
        let e = read_all(&mut In::stream(&mut src, b.len() as u64)).expect_err("refused");
        assert_eq!(e.what, "more bytes than recorded");
        let e = read_all(&mut In::slice(&longer)).expect_err("refused");
        assert_eq!(e.what, "bytes after the last directory");
    }
}
