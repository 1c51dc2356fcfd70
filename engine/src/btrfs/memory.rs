//! An in-memory Btrfs for tests that need no root and no loop device: subvolumes are paths
//! with a UUID, a read-only flag and content; `send` streams a deterministic encoding of a
//! snapshot's content (the same bytes on every call, as a resume needs); and the crash layer
//! for the in-process crash matrix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{
    BtrfsError, Producer, ReceiveEnd, ReceiveSink, SendStream, Snapshotter, SubvolumeInfo,
};
use crate::crash::CrashPlan;

#[derive(Debug, Clone)]
struct Subvol {
    uuid: String,
    parent_uuid: Option<String>,
    received_uuid: Option<String>,
    readonly: bool,
    content: Bytes,
}

type Subvols = Arc<Mutex<BTreeMap<PathBuf, Subvol>>>;

#[derive(Debug, Default)]
pub struct MemoryBtrfs {
    subvols: Subvols,
    next: Arc<AtomicU64>,
}

struct Done;
impl Producer for Done {
    fn wait(&mut self) -> Result<(), (String, String)> {
        Ok(())
    }
    fn kill(&mut self) {}
}

fn command_error(cmd: &str, path: &Path, stderr: &str) -> BtrfsError {
    BtrfsError::Command {
        cmd: format!("btrfs {cmd} {}", path.display()),
        status: "exit status: 1".into(),
        stderr: stderr.into(),
    }
}

impl MemoryBtrfs {
    pub fn new() -> MemoryBtrfs {
        MemoryBtrfs::default()
    }

    fn subvols(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, Subvol>> {
        self.subvols.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn uuid(&self) -> String {
        format!(
            "00000000-0000-0000-0000-{:012x}",
            self.next.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    /// Creates (or replaces the content of) a writable subvolume.
    pub fn write(&self, path: &Path, content: Bytes) {
        let uuid = self.uuid();
        let mut m = self.subvols();
        let e = m.entry(path.to_path_buf()).or_insert(Subvol {
            uuid,
            parent_uuid: None,
            received_uuid: None,
            readonly: false,
            content: Bytes::new(),
        });
        e.content = content;
    }

    pub fn content(&self, path: &Path) -> Option<Bytes> {
        self.subvols().get(path).map(|s| s.content.clone())
    }

    /// Every subvolume path, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.subvols().keys().cloned().collect()
    }

    /// Whether a subvolume is read-only and was received (its received UUID).
    pub fn received(&self, path: &Path) -> Option<(bool, Option<String>)> {
        self.subvols()
            .get(path)
            .map(|s| (s.readonly, s.received_uuid.clone()))
    }

    /// The stream `send` produces: a header naming the snapshot (and parent), then the
    /// content. Deterministic, so a regenerated stream matches every committed part.
    pub fn stream_of(&self, snapshot: &Path, parent: Option<&Path>) -> Option<Bytes> {
        let m = self.subvols();
        let s = m.get(snapshot)?;
        let name = snapshot.file_name()?.to_string_lossy().to_string();
        let header = match parent {
            Some(p) => format!(
                "MEMSEND incremental {name} {} from {}\n",
                s.uuid,
                m.get(p)?.uuid
            ),
            None => format!("MEMSEND full {name} {}\n", s.uuid),
        };
        let mut out = header.into_bytes();
        out.extend_from_slice(&s.content);
        Some(Bytes::from(out))
    }
}

impl Snapshotter for MemoryBtrfs {
    fn exists(&self, path: &Path) -> bool {
        self.subvols().contains_key(path)
    }

    fn list(&self, dir: &Path) -> Vec<String> {
        self.subvols()
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
            .collect()
    }

    fn show(&self, path: &Path) -> Result<SubvolumeInfo, BtrfsError> {
        self.subvols()
            .get(path)
            .map(|s| SubvolumeInfo {
                uuid: s.uuid.clone(),
                parent_uuid: s.parent_uuid.clone(),
                received_uuid: s.received_uuid.clone(),
                readonly: s.readonly,
            })
            .ok_or_else(|| BtrfsError::NotASubvolume {
                path: path.to_path_buf(),
                detail: "no such subvolume".into(),
            })
    }

    fn snapshot_readonly(&self, source: &Path, dest: &Path) -> Result<(), BtrfsError> {
        let uuid = self.uuid();
        let mut m = self.subvols();
        let Some(src) = m.get(source).cloned() else {
            return Err(command_error(
                "subvolume snapshot",
                source,
                "no such subvolume",
            ));
        };
        if m.contains_key(dest) {
            return Err(command_error("subvolume snapshot", dest, "File exists"));
        }
        m.insert(
            dest.to_path_buf(),
            Subvol {
                uuid,
                parent_uuid: Some(src.uuid),
                received_uuid: None,
                readonly: true,
                content: src.content,
            },
        );
        Ok(())
    }

    fn delete(&self, path: &Path) -> Result<(), BtrfsError> {
        self.subvols()
            .remove(path)
            .map(drop)
            .ok_or_else(|| command_error("subvolume delete", path, "no such subvolume"))
    }

    fn set_writable(&self, path: &Path) -> Result<(), BtrfsError> {
        let mut m = self.subvols();
        let s = m
            .get_mut(path)
            .ok_or_else(|| command_error("property set", path, "no such subvolume"))?;
        s.readonly = false;
        s.received_uuid = None;
        Ok(())
    }

    fn send(&self, snapshot: &Path, parent: Option<&Path>) -> Result<SendStream, BtrfsError> {
        for p in std::iter::once(snapshot).chain(parent) {
            match self.subvols().get(p) {
                Some(s) if s.readonly => {}
                Some(_) => return Err(command_error("send", p, "subvolume is not read-only")),
                None => return Err(command_error("send", p, "no such subvolume")),
            }
        }
        let bytes = self
            .stream_of(snapshot, parent)
            .ok_or_else(|| command_error("send", snapshot, "no such subvolume"))?;
        Ok(SendStream {
            reader: Box::new(std::io::Cursor::new(bytes)),
            producer: Box::new(Done),
        })
    }

    fn receive(
        &self,
        dir: Option<&Path>,
        _parent: Option<&Path>,
    ) -> Result<ReceiveSink, BtrfsError> {
        let buf = SharedBuf::default();
        Ok(ReceiveSink {
            writer: Box::new(buf.clone()),
            end: Box::new(MemoryReceive {
                buf,
                dir: dir.map(Path::to_path_buf),
                subvols: self.subvols.clone(),
                next: self.next.clone(),
            }),
        })
    }
}

/// The receiving end's buffer.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl tokio::io::AsyncWrite for SharedBuf {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(data);
        std::task::Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A parsed stream header: (name, uuid, parent uuid, where the content starts).
type Header = (String, String, Option<String>, usize);

fn parse_header(data: &[u8]) -> Result<Header, String> {
    let end = data
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no stream header")?;
    let line = std::str::from_utf8(&data[..end]).map_err(|_| "bad stream header")?;
    let words: Vec<&str> = line.split(' ').collect();
    match words.as_slice() {
        ["MEMSEND", "full", name, uuid] => Ok((name.to_string(), uuid.to_string(), None, end + 1)),
        ["MEMSEND", "incremental", name, uuid, "from", parent] => Ok((
            name.to_string(),
            uuid.to_string(),
            Some(parent.to_string()),
            end + 1,
        )),
        _ => Err(format!("not a stream: {line:?}")),
    }
}

struct MemoryReceive {
    buf: SharedBuf,
    dir: Option<PathBuf>,
    subvols: Subvols,
    next: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl ReceiveEnd for MemoryReceive {
    /// As `btrfs receive`: an incremental needs its parent (by received UUID) in the
    /// directory; the result is read-only with the sender's UUID as its received UUID.
    async fn finish(self: Box<Self>) -> Result<(), String> {
        let data = std::mem::take(&mut *self.buf.0.lock().unwrap_or_else(|p| p.into_inner()));
        let (name, uuid, parent, at) = parse_header(&data)?;
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let mut m = self.subvols.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(parent) = &parent {
            let found = m.iter().any(|(p, s)| {
                p.parent() == Some(dir.as_path()) && s.received_uuid.as_deref() == Some(parent)
            });
            if !found {
                return Err(format!("cannot find parent subvolume {parent}"));
            }
        }
        let path = dir.join(&name);
        if m.contains_key(&path) {
            return Err(format!("{} exists", path.display()));
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        m.insert(
            path,
            Subvol {
                uuid: format!("00000000-0000-0000-0001-{n:012x}"),
                parent_uuid: None,
                received_uuid: Some(uuid),
                readonly: true,
                content: Bytes::copy_from_slice(&data[at..]),
            },
        );
        Ok(())
    }

    /// As a killed `btrfs receive`: the subvolume it began stays, writable and incomplete.
    async fn kill(self: Box<Self>) {
        let data = std::mem::take(&mut *self.buf.0.lock().unwrap_or_else(|p| p.into_inner()));
        if let (Some(dir), Ok((name, ..))) = (&self.dir, parse_header(&data)) {
            let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
            self.subvols
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(dir.join(name))
                .or_insert(Subvol {
                    uuid: format!("00000000-0000-0000-0002-{n:012x}"),
                    parent_uuid: None,
                    received_uuid: None,
                    readonly: false,
                    content: Bytes::new(),
                });
        }
    }
}

/// Reports snapshot creation and deletion to a `CrashPlan`; after the crash every call fails
/// (reads included) without any effect.
pub struct CrashingBtrfs {
    inner: Arc<dyn Snapshotter>,
    plan: Arc<CrashPlan>,
}

impl CrashingBtrfs {
    pub fn new(inner: Arc<dyn Snapshotter>, plan: Arc<CrashPlan>) -> CrashingBtrfs {
        CrashingBtrfs { inner, plan }
    }

    fn alive(&self, path: &Path) -> Result<(), BtrfsError> {
        self.plan
            .alive()
            .map_err(|m| command_error("(dead)", path, m))
    }

    fn effect<T>(
        &self,
        what: &str,
        path: &Path,
        r: Result<T, BtrfsError>,
    ) -> Result<T, BtrfsError> {
        self.plan
            .effect(&format!("{what} {}", path.display()))
            .map_err(|m| command_error(what, path, m))?;
        r
    }
}

impl Snapshotter for CrashingBtrfs {
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
    fn list(&self, dir: &Path) -> Vec<String> {
        self.inner.list(dir)
    }
    fn show(&self, path: &Path) -> Result<SubvolumeInfo, BtrfsError> {
        self.alive(path)?;
        self.inner.show(path)
    }
    fn snapshot_readonly(&self, source: &Path, dest: &Path) -> Result<(), BtrfsError> {
        self.alive(dest)?;
        let r = self.inner.snapshot_readonly(source, dest);
        self.effect("snapshot", dest, r)
    }
    fn delete(&self, path: &Path) -> Result<(), BtrfsError> {
        self.alive(path)?;
        let r = self.inner.delete(path);
        self.effect("delete", path, r)
    }
    fn set_writable(&self, path: &Path) -> Result<(), BtrfsError> {
        self.alive(path)?;
        let r = self.inner.set_writable(path);
        self.effect("set-writable", path, r)
    }
    fn send(&self, snapshot: &Path, parent: Option<&Path>) -> Result<SendStream, BtrfsError> {
        self.alive(snapshot)?;
        self.inner.send(snapshot, parent)
    }
    fn receive(
        &self,
        dir: Option<&Path>,
        parent: Option<&Path>,
    ) -> Result<ReceiveSink, BtrfsError> {
        let path = dir.unwrap_or(Path::new("-"));
        self.alive(path)?;
        let inner = self.inner.receive(dir, parent)?;
        Ok(ReceiveSink {
            writer: inner.writer,
            end: Box::new(CrashingReceive {
                inner: inner.end,
                plan: self.plan.clone(),
                what: format!("receive into {}", path.display()),
            }),
        })
    }
}

/// A receive whose end is a side effect: after the crash it is killed instead.
struct CrashingReceive {
    inner: Box<dyn ReceiveEnd>,
    plan: Arc<CrashPlan>,
    what: String,
}

#[async_trait::async_trait]
impl ReceiveEnd for CrashingReceive {
    async fn finish(self: Box<Self>) -> Result<(), String> {
        if let Err(m) = self.plan.alive() {
            self.inner.kill().await;
            return Err(m.to_string());
        }
        let r = self.inner.finish().await;
        self.plan.effect(&self.what).map_err(str::to_string)?;
        r
    }
    async fn kill(self: Box<Self>) {
        self.inner.kill().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn snapshots_are_read_only_copies_and_send_is_repeatable() {
        let b = MemoryBtrfs::new();
        let src = Path::new("/data");
        b.write(src, Bytes::from_static(b"hello"));
        let snap = Path::new("/snap/data.1");
        b.snapshot_readonly(src, snap).expect("snapshot");
        assert!(b.show(snap).expect("show").readonly);
        assert_eq!(
            b.show(snap).expect("show").parent_uuid,
            Some(b.show(src).expect("show").uuid)
        );
        assert!(b.snapshot_readonly(src, snap).is_err(), "the name is taken");
        assert!(
            b.send(src, None).is_err(),
            "a writable subvolume cannot be sent"
        );
        b.write(src, Bytes::from_static(b"changed"));
        let read = |s: SendStream| {
            let mut v = Vec::new();
            let mut r = s.reader;
            r.read_to_end(&mut v).expect("read");
            v
        };
        let one = read(b.send(snap, None).expect("send"));
        let two = read(b.send(snap, None).expect("send"));
        assert_eq!(one, two);
        assert!(one.ends_with(b"hello"), "the snapshot keeps its content");
        assert_eq!(b.list(Path::new("/snap")), vec!["data.1".to_string()]);
        b.delete(snap).expect("delete");
        assert!(!b.exists(snap));
        assert!(b.delete(snap).is_err());
    }
}
