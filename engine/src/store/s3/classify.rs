//! What a failed request means: the SDK's error as a `StoreError` whose kind the engine
//! decides on (try again, stop and name the credentials, the clock or a provider's limit).

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use super::S3Store;
use crate::store::{StoreError, StoreErrorKind};

impl S3Store {
    pub(super) fn err<E>(
        &self,
        op: &'static str,
        key: &str,
        e: SdkError<E, HttpResponse>,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = e.raw_response().map(|r| r.status().as_u16());
        let (kind, message) = match &e {
            SdkError::ServiceError(se) => {
                let inner = se.err();
                let code = inner.code().unwrap_or("").to_string();
                let msg = inner.message().unwrap_or("").to_string();
                let mut kind = classify(&code, status);
                // A provider that takes no checksum headers says so with 400 InvalidArgument
                // or 501 NotImplemented naming the header: a setting to change, not an outage.
                if let Some(k) = provider_refusal(status, &code, &msg) {
                    kind = k;
                }
                let text = match (code.is_empty(), msg.is_empty()) {
                    (true, true) => format!("HTTP {}", status.unwrap_or(0)),
                    (false, true) => code,
                    (true, false) => msg,
                    (false, false) => format!("{code}: {msg}"),
                };
                (kind, text)
            }
            SdkError::TimeoutError(_) => (StoreErrorKind::Transient, "timed out".to_string()),
            // The credential providers fail inside the request too (a container or instance
            // endpoint down, STS refusing): waited out like an outage, but named as what it is.
            SdkError::DispatchFailure(_) if credentials_failed(&e) => (
                StoreErrorKind::Transient,
                format!(
                    "could not get credentials (the SDK's chain: environment, profile files, container, instance metadata): {}",
                    DisplayErrorChain(&e)
                ),
            ),
            SdkError::DispatchFailure(d) => (
                StoreErrorKind::Transient,
                format!("could not reach the server: {d:?}"),
            ),
            SdkError::ResponseError(_) => (
                classify("", status),
                format!("bad response (HTTP {})", status.unwrap_or(0)),
            ),
            other => (
                StoreErrorKind::Other,
                format!("{}", DisplayErrorChain(other)),
            ),
        };
        self.failure(op, key, kind, message)
    }

    /// A `StoreError` of this store's bucket: every one the S3 store makes is built here.
    pub(super) fn failure(
        &self,
        op: &'static str,
        key: &str,
        kind: StoreErrorKind,
        message: impl Into<String>,
    ) -> StoreError {
        StoreError {
            op,
            bucket: self.bucket.clone(),
            key: key.to_string(),
            kind,
            message: message.into(),
        }
    }
}

/// A refusal that a provider's limit explains (`[s3] provider`), not an outage nor a lost
/// upload: checksum headers (400 InvalidArgument or 501 NotImplemented naming the header, as
/// B2, older Ceph and R2 answer), a part number above the provider's limit (Scaleway: 1000),
/// non-trailing parts of unequal sizes (R2, at CompleteMultipartUpload).
pub(super) fn provider_refusal(
    status: Option<u16>,
    code: &str,
    msg: &str,
) -> Option<StoreErrorKind> {
    let m = msg.to_ascii_lowercase();
    if !matches!(status, Some(400 | 501)) {
        return None;
    }
    let refusal = matches!(code, "InvalidArgument" | "NotImplemented" | "") || status == Some(501);
    if m.contains("checksum") && refusal {
        Some(StoreErrorKind::ChecksumRefused)
    } else if m.contains("part number")
        || code == "TooManyParts"
        || m.contains("non-trailing parts")
    {
        Some(StoreErrorKind::PartRefused)
    } else {
        None
    }
}

pub(super) fn classify(code: &str, status: Option<u16>) -> StoreErrorKind {
    match code {
        "NoSuchKey" | "NotFound" => StoreErrorKind::NotFound,
        "NoSuchBucket" => StoreErrorKind::NoSuchBucket,
        "NoSuchUpload" => StoreErrorKind::NoSuchUpload,
        "InvalidPart" | "InvalidPartOrder" => StoreErrorKind::InvalidPart,
        "AccessDenied"
        | "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "Forbidden"
        | "InvalidToken"
        | "ExpiredToken" => StoreErrorKind::AccessDenied,
        // The SDK corrects its signing time from the server's Date and retries; if that
        // still fails, the clock is for a person to fix.
        "RequestTimeTooSkewed" => StoreErrorKind::ClockSkewed,
        "InvalidObjectState" => StoreErrorKind::InvalidObjectState,
        "SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout" => {
            StoreErrorKind::Transient
        }
        _ => match status {
            Some(404) => StoreErrorKind::NotFound,
            Some(401 | 403) => StoreErrorKind::AccessDenied,
            Some(s) if s >= 500 || s == 429 => StoreErrorKind::Transient,
            _ => StoreErrorKind::Other,
        },
    }
}

/// True when a credentials provider's error is among `e`'s sources.
pub(super) fn credentials_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    chain(e).any(|s| s.is::<aws_credential_types::provider::error::CredentialsError>())
}

/// `e`, then each of its sources in turn.
fn chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |s| s.source())
}

struct DisplayErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, s) in chain(self.0).enumerate() {
            if i > 0 {
                f.write_str(": ")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}
