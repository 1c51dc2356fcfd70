//! What `S3Store` watches around the SDK: whether a transfer still moves (`Activity`, the
//! pieces of `WatchedBody`), the bandwidth limits (`RateLimit`), and the server's clock
//! (`ServerDate`, from the `Date` of a reply).

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

/// When a transfer last moved a byte, and how many body bytes it moved: a stall's report
/// says whether the request's body was taken whole (the reply did not come) or not.
pub(super) struct Activity {
    last: std::sync::Mutex<std::time::Instant>,
    moved: std::sync::atomic::AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Activity {
        Activity {
            last: std::sync::Mutex::new(std::time::Instant::now()),
            moved: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(super) fn touch(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
    }

    /// `n` body bytes moved (handed to the client, or received). Counts only: every caller
    /// marks the time with `touch` around it.
    pub(super) fn moved(&self, n: usize) {
        self.moved
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Body bytes moved so far in this attempt (an SDK retry inside it counts its body again).
    pub(super) fn moved_bytes(&self) -> u64 {
        self.moved.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn last(&self) -> std::time::Instant {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns once nothing moved for `limit`.
    pub(super) async fn stalled(&self, limit: Duration) {
        loop {
            let deadline = self.last() + limit;
            if std::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// A bandwidth limit: bytes per second, shared by the transfers that use it.
pub(super) struct RateLimit {
    rate: u64,
    next_free: std::sync::Mutex<std::time::Instant>,
}

impl RateLimit {
    pub(super) fn new(rate: u64) -> RateLimit {
        RateLimit {
            rate: rate.max(1),
            next_free: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }

    /// Pieces small enough that one takes at most a quarter of a second at the limit (so a
    /// throttled transfer never looks stalled).
    pub(super) fn piece(&self) -> usize {
        usize::try_from(self.rate / 4)
            .unwrap_or(usize::MAX)
            .clamp(1024, 64 * 1024)
    }

    /// When `n` more bytes may go.
    pub(super) fn reserve(&self, n: usize) -> std::time::Instant {
        let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
        let start = (*next).max(std::time::Instant::now());
        *next = start + Duration::from_secs_f64(n as f64 / self.rate as f64);
        start
    }
}

/// A part's body handed to the HTTP client a piece at a time (at the upload limit, if any),
/// each piece marking activity: the client takes a piece only when the socket accepted the
/// last, so a stalled link stops the marks.
struct WatchedBody {
    data: Bytes,
    pos: usize,
    activity: Arc<Activity>,
    limit: Option<Arc<RateLimit>>,
    /// A piece waiting for the limit, and the wait.
    held: Option<(Bytes, std::pin::Pin<Box<tokio::time::Sleep>>)>,
}

impl http_body::Body for WatchedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::future::Future;
        let this = self.get_mut();
        this.activity.touch();
        if this.held.is_none() {
            if this.pos >= this.data.len() {
                return std::task::Poll::Ready(None);
            }
            let size = this.limit.as_ref().map_or(64 * 1024, |l| l.piece());
            let end = (this.pos + size).min(this.data.len());
            let piece = this.data.slice(this.pos..end);
            this.pos = end;
            let Some(limit) = &this.limit else {
                this.activity.moved(piece.len());
                return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(piece))));
            };
            let at = limit.reserve(piece.len());
            this.held = Some((piece, Box::pin(tokio::time::sleep_until(at.into()))));
        }
        if let Some((_, wait)) = this.held.as_mut() {
            if wait.as_mut().poll(cx).is_pending() {
                return std::task::Poll::Pending;
            }
        }
        this.activity.touch();
        match this.held.take() {
            Some((piece, _)) => {
                this.activity.moved(piece.len());
                std::task::Poll::Ready(Some(Ok(http_body::Frame::data(piece))))
            }
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.pos >= self.data.len()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let held = self.held.as_ref().map_or(0, |(p, _)| p.len());
        http_body::SizeHint::with_exact((self.data.len() - self.pos + held) as u64)
    }
}

pub(super) fn watched_body(
    data: Bytes,
    activity: Arc<Activity>,
    limit: Option<Arc<RateLimit>>,
) -> ByteStream {
    // Retryable: the SDK's own retries take the body again from the start.
    ByteStream::new(aws_smithy_types::body::SdkBody::retryable(move || {
        aws_smithy_types::body::SdkBody::from_body_1_x(WatchedBody {
            data: data.clone(),
            pos: 0,
            activity: activity.clone(),
            limit: limit.clone(),
            held: None,
        })
    }))
}

/// Reads the `Date` of a reply: how far the server's clock is ahead of this host's.
#[derive(Debug, Clone, Default)]
pub(super) struct ServerDate(Arc<std::sync::Mutex<Option<i64>>>);

impl ServerDate {
    pub(super) fn server_ahead_secs(&self) -> Option<i64> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl aws_sdk_s3::config::Intercept for ServerDate {
    fn name(&self) -> &'static str {
        "ServerDate"
    }

    fn read_before_deserialization(
        &self,
        ctx: &aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef<'_>,
        _: &aws_sdk_s3::config::RuntimeComponents,
        _: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let server = ctx.response().headers().get("date").and_then(|d| {
            aws_smithy_types::DateTime::from_str(d, aws_smithy_types::date_time::Format::HttpDate)
                .ok()
        });
        let local = aws_smithy_types::DateTime::from(std::time::SystemTime::now());
        if let Some(server) = server {
            *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(server.secs() - local.secs());
        }
        Ok(())
    }
}
