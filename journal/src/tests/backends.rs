//! Storage backends for the journal's crash tests: a disk that loses power, a handle on one,
//! and a disk that fills up.

/// A disk that loses power: writes land in a volatile image (the page cache) and reach the
/// durable image at `sync_data`; during the `fail_at`-th sync power is lost — only a prefix of
/// the writes since the previous sync reaches the disk, possibly tearing the commit in flight
/// — and from then on nothing is written. What the next boot sees is the durable image.
#[derive(Debug)]
pub(super) struct PowerLoss {
    durable: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    volatile: std::sync::Mutex<Vec<u8>>,
    /// Writes and resizes since the last completed sync, in order.
    pending: std::sync::Mutex<Vec<(u64, Option<Vec<u8>>)>>,
    pub(super) syncs: std::sync::atomic::AtomicU64,
    fail_at: u64,
    /// How much of the pending writes reaches the disk at the failing sync: none, half, or
    /// all but the last.
    torn: usize,
    dead: std::sync::atomic::AtomicBool,
}

impl PowerLoss {
    pub(super) fn new(
        image: Vec<u8>,
        fail_at: u64,
    ) -> (PowerLoss, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
        PowerLoss::torn(image, fail_at, 0)
    }

    pub(super) fn torn(
        image: Vec<u8>,
        fail_at: u64,
        torn: usize,
    ) -> (PowerLoss, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
        let durable = std::sync::Arc::new(std::sync::Mutex::new(image.clone()));
        (
            PowerLoss {
                durable: durable.clone(),
                volatile: std::sync::Mutex::new(image),
                pending: Default::default(),
                syncs: Default::default(),
                fail_at,
                torn,
                dead: Default::default(),
            },
            durable,
        )
    }

    fn check(&self) -> std::io::Result<()> {
        if self.dead.load(std::sync::atomic::Ordering::SeqCst) {
            Err(std::io::Error::other("power lost"))
        } else {
            Ok(())
        }
    }
}

impl redb::StorageBackend for PowerLoss {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.volatile.lock().expect("lock").len() as u64)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let v = self.volatile.lock().expect("lock");
        let start = offset as usize;
        let end = start + out.len();
        if end > v.len() {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        out.copy_from_slice(&v[start..end]);
        Ok(())
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.pending.lock().expect("lock").push((len, None));
        self.volatile.lock().expect("lock").resize(len as usize, 0);
        Ok(())
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        let n = self.syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let mut pending = self.pending.lock().expect("lock");
        if n >= self.fail_at {
            // Power is lost while the disk flushes: a prefix of what was written since the
            // last sync reaches it, the rest does not.
            let reached = match self.torn {
                0 => 0,
                1 => pending.len() / 2,
                _ => pending.len().saturating_sub(1),
            };
            let mut d = self.durable.lock().expect("lock");
            for (offset, op) in pending.iter().take(reached) {
                match op {
                    Some(data) => {
                        let end = *offset as usize + data.len();
                        if end > d.len() {
                            d.resize(end, 0);
                        }
                        d[*offset as usize..end].copy_from_slice(data);
                    }
                    None => d.resize(*offset as usize, 0),
                }
            }
            self.dead.store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(std::io::Error::other("power lost during sync"));
        }
        pending.clear();
        *self.durable.lock().expect("lock") = self.volatile.lock().expect("lock").clone();
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.pending
            .lock()
            .expect("lock")
            .push((offset, Some(data.to_vec())));
        let mut v = self.volatile.lock().expect("lock");
        let end = offset as usize + data.len();
        if end > v.len() {
            v.resize(end, 0);
        }
        v[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
}

/// Lets a test keep a handle on a backend it gives the journal.
#[derive(Debug)]
pub(super) struct Shared(pub(super) std::sync::Arc<PowerLoss>);

impl redb::StorageBackend for Shared {
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write(offset, data)
    }
}

/// A disk that fills up. Files are sparse, as redb's are on ext4 or tmpfs: growing one costs
/// nothing, writing a 4 KiB page never written before takes a page of space, and once `cap`
/// pages are taken such a write fails with ENOSPC.
#[derive(Debug)]
pub(super) struct FillingDisk {
    pub(super) data: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    pub(super) pages: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<u64>>>,
    pub(super) cap: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl redb::StorageBackend for FillingDisk {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.data.lock().expect("lock").len() as u64)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let d = self.data.lock().expect("lock");
        let end = offset as usize + out.len();
        if end > d.len() {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        out.copy_from_slice(&d[offset as usize..end]);
        Ok(())
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.data.lock().expect("lock").resize(len as usize, 0);
        Ok(())
    }
    fn sync_data(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let end = offset + data.len() as u64;
        {
            let mut pages = self.pages.lock().expect("lock");
            let new: Vec<u64> = (offset / 4096..end.div_ceil(4096))
                .filter(|p| !pages.contains(p))
                .collect();
            let cap = self.cap.load(std::sync::atomic::Ordering::SeqCst);
            if pages.len() + new.len() > cap {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            pages.extend(new);
        }
        let mut d = self.data.lock().expect("lock");
        if end as usize > d.len() {
            d.resize(end as usize, 0);
        }
        d[offset as usize..end as usize].copy_from_slice(data);
        Ok(())
    }
}
