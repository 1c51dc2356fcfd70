//! Where a restore writes the send stream (`StreamSink`), and the pipe to `btrfs receive`
//! that hands a verified part's pages to the receiver instead of copying them (`PagePipe`).
//!
//! `vmsplice(2)` puts references to this process's pages in the pipe: the receiver's `read`
//! copies from them later, so those bytes must not change until it has. The invariant that
//! makes that true: a part handed over is held (not read into again, not freed) until the
//! pipe's capacity has been pushed after its last byte. A pipe holds at most capacity / page
//! size buffers and each buffer at most a page, so by then every buffer of the part has been
//! read and released. At the end, `drained` waits until the pipe is empty (or the receiver
//! gone) before the last parts are let go; a `PagePipe` dropped before that leaks them rather
//! than let their memory be reused under the receiver.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe::Sender;

/// What a restore writes the send stream to: any `AsyncWrite`, and a way to hand over the
/// bytes of a verified part that a sink may keep a reference to instead of copying them.
pub trait StreamSink: AsyncWrite + Send + Unpin {
    /// Writes `piece`, which lies inside `part`. The default copies it.
    fn write_part<'a>(
        &'a mut self,
        part: &'a Bytes,
        piece: &'a [u8],
    ) -> BoxFuture<'a, io::Result<()>> {
        let _ = part;
        Box::pin(async move { self.write_all(piece).await })
    }

    /// Parts this sink held and no longer needs (their buffers may be read into again).
    fn released(&mut self) -> Vec<Bytes> {
        Vec::new()
    }

    /// Waits until the reader has every byte written so far (or is gone): after it, nothing
    /// this sink held is still referenced by the reader.
    fn drained(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

impl StreamSink for Vec<u8> {}
impl StreamSink for tokio::io::DuplexStream {}

impl<T: StreamSink + ?Sized> StreamSink for Box<T> {
    fn write_part<'a>(
        &'a mut self,
        part: &'a Bytes,
        piece: &'a [u8],
    ) -> BoxFuture<'a, io::Result<()>> {
        (**self).write_part(part, piece)
    }

    fn released(&mut self) -> Vec<Bytes> {
        (**self).released()
    }

    fn drained(&mut self) -> BoxFuture<'_, ()> {
        (**self).drained()
    }
}

/// The write end of a pipe to a reader process, handing parts over by reference.
pub struct PagePipe {
    tx: Sender,
    /// Bytes pushed into the pipe so far (copied or handed over).
    pushed: u64,
    /// Parts handed over, each with the value of `pushed` after its last byte.
    held: VecDeque<(Bytes, u64)>,
    /// Parts the reader is past, for `released`.
    free: Vec<Bytes>,
}

impl PagePipe {
    /// Takes over a pipe's write end (a child's stdin); refuses anything but a pipe.
    pub fn new(fd: OwnedFd) -> io::Result<PagePipe> {
        Ok(PagePipe {
            tx: Sender::from_owned_fd(fd)?,
            pushed: 0,
            held: VecDeque::new(),
            free: Vec::new(),
        })
    }

    /// Lets go of the parts that the pipe's capacity has been pushed after. The capacity is
    /// read each time: only a larger pipe could hold a part longer.
    fn release(&mut self) {
        let cap = rustix::pipe::fcntl_getpipe_size(&self.tx).map_or(u64::MAX, |c| c as u64);
        while let Some((_, end)) = self.held.front() {
            if self.pushed.saturating_sub(*end) < cap {
                break;
            }
            if let Some((part, _)) = self.held.pop_front() {
                self.free.push(part);
            }
        }
    }

    /// The pipe holds nothing, or its reader is gone (nothing will read what it holds).
    fn settled(&self) -> bool {
        let fd = self.tx.as_fd();
        if rustix::io::ioctl_fionread(fd).is_ok_and(|n| n == 0) {
            return true;
        }
        // With no reader left, the write end polls as an error.
        let mut polled = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::OUT,
        )];
        let now = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        rustix::event::poll(&mut polled, Some(&now)).is_ok()
            && polled[0].revents().contains(rustix::event::PollFlags::ERR)
    }
}

impl AsyncWrite for PagePipe {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.tx).poll_write(cx, buf))?;
        this.pushed += n as u64;
        this.release();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tx).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tx).poll_shutdown(cx)
    }
}

impl StreamSink for PagePipe {
    fn write_part<'a>(
        &'a mut self,
        part: &'a Bytes,
        piece: &'a [u8],
    ) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let inside = part.as_ptr_range();
            if piece.is_empty()
                || !(inside.start <= piece.as_ptr() && piece.as_ptr_range().end <= inside.end)
            {
                return self.write_all(piece).await;
            }
            // Held from before the first byte goes in: an error part-way leaves it held.
            self.held.push_back((part.clone(), u64::MAX));
            let mut rest = piece;
            while !rest.is_empty() {
                self.tx.writable().await?;
                let iov = [rustix::pipe::IoSliceRaw::from_slice(rest)];
                let spliced = self.tx.try_io(|| {
                    // SAFETY: vmsplice only reads `rest`, which `part` keeps alive in `held`,
                    // unchanged, until the reader is past these bytes (the module's comment).
                    #[allow(unsafe_code)]
                    let n = unsafe {
                        rustix::pipe::vmsplice(&self.tx, &iov, rustix::pipe::SpliceFlags::NONBLOCK)
                    };
                    n.map_err(io::Error::from)
                });
                match spliced {
                    Ok(n) => {
                        rest = &rest[n..];
                        self.pushed += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
            if let Some(last) = self.held.back_mut() {
                last.1 = self.pushed;
            }
            self.release();
            Ok(())
        })
    }

    fn released(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.free)
    }

    fn drained(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            while !self.settled() {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            self.free.extend(self.held.drain(..).map(|(p, _)| p));
        })
    }
}

impl Drop for PagePipe {
    fn drop(&mut self) {
        if !self.held.is_empty() && !self.settled() {
            // The reader may still read these pages: never let their memory be reused.
            for (part, _) in self.held.drain(..) {
                std::mem::forget(part);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// A reader that takes `chunk` bytes at a time, pausing between reads, so the pipe is
    /// full most of the time and a part let go too early would be read after it changed.
    fn slow_reader(r: OwnedFd, chunk: usize) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut f = std::fs::File::from(r);
            let mut all = Vec::new();
            let mut buf = vec![0u8; chunk];
            loop {
                let n = f.read(&mut buf).expect("read");
                if n == 0 {
                    return all;
                }
                all.extend_from_slice(&buf[..n]);
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    }

    fn content(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i * 31 + j * 7 + j / 251) as u8).collect()
    }

    /// Parts handed over are overwritten as soon as the pipe lets them go (as a restore reads
    /// the next download into them), and the reader still gets every byte as first written.
    #[test]
    fn parts_let_go_are_already_read() {
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        let reader = slow_reader(r, 3000);
        let (sent, reused) = rt().block_on(async move {
            let mut pipe = PagePipe::new(w).expect("pipe");
            let mut sent = Vec::new();
            let mut spare: Vec<bytes::BytesMut> = Vec::new();
            let mut reused = 0;
            for i in 0..60 {
                // One length, so a buffer that comes back is written in place.
                let len = 24_000;
                let mut buf = spare.pop().unwrap_or_default();
                if buf.capacity() > 0 {
                    reused += 1;
                }
                buf.clear();
                buf.extend_from_slice(&content(i, len));
                let part = buf.freeze();
                sent.extend_from_slice(&part);
                if i % 3 == 0 {
                    // A piece inside the part, then one that is not (copied).
                    pipe.write_part(&part, &part[..len / 2])
                        .await
                        .expect("write");
                    let outside = part[len / 2..].to_vec();
                    pipe.write_part(&part, &outside).await.expect("write");
                } else {
                    pipe.write_part(&part, &part).await.expect("write");
                }
                drop(part);
                for p in pipe.released() {
                    let mut m = p.try_into_mut().expect("the pipe held the last reference");
                    m.iter_mut().for_each(|b| *b = 0xEE);
                    spare.push(m);
                }
            }
            pipe.drained().await;
            for p in pipe.released() {
                let mut m = p.try_into_mut().expect("the last reference");
                m.iter_mut().for_each(|b| *b = 0xEE);
            }
            (sent, reused)
        });
        let got = reader.join().expect("reader");
        assert_eq!(got.len(), sent.len());
        assert!(
            got == sent,
            "the reader got bytes that changed after they were handed over"
        );
        // The test means something only if buffers were reused while the reader lagged.
        assert!(reused > 40, "only {reused} buffers came back for reuse");
    }

    /// A part is held until the pipe's capacity has gone in after it, and `drained` waits for
    /// the reader to empty the pipe.
    #[test]
    fn a_part_is_held_until_the_capacity_follows_it() {
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        let cap = rustix::pipe::fcntl_getpipe_size(&w).expect("size");
        let reader = slow_reader(r, 1 << 16);
        rt().block_on(async move {
            let mut pipe = PagePipe::new(w).expect("pipe");
            let a = Bytes::from(content(1, 1000));
            pipe.write_part(&a, &a).await.expect("write");
            assert!(
                pipe.released().is_empty(),
                "released before anything followed it"
            );
            let b = Bytes::from(content(2, cap - 1000));
            pipe.write_part(&b, &b).await.expect("write");
            assert!(
                pipe.released().is_empty(),
                "released before the capacity followed it"
            );
            let c = Bytes::from(content(3, 1000));
            pipe.write_part(&c, &c).await.expect("write");
            let freed = pipe.released();
            assert_eq!(freed.len(), 1);
            assert_eq!(freed[0], a);
            pipe.drained().await;
            assert_eq!(pipe.released().len(), 2);
            assert_eq!(rustix::io::ioctl_fionread(&pipe.tx).expect("fionread"), 0);
        });
        assert_eq!(reader.join().expect("reader").len(), cap + 1000);
    }

    /// A reader that is gone: `drained` returns (nothing will read what the pipe holds), and
    /// a write fails instead of hanging.
    #[test]
    fn a_reader_gone_ends_the_wait() {
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        rt().block_on(async move {
            let mut pipe = PagePipe::new(w).expect("pipe");
            let a = Bytes::from(content(1, 5000));
            pipe.write_part(&a, &a).await.expect("write");
            drop(r);
            pipe.drained().await;
            assert_eq!(pipe.released().len(), 1);
            let err = pipe.write_part(&a, &a).await.expect_err("no reader");
            assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        });
    }
}
