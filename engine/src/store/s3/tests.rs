use super::classify::{classify, provider_refusal};
use super::*;

#[test]
fn classifies_errors() {
    assert_eq!(
        classify("NoSuchUpload", Some(404)),
        StoreErrorKind::NoSuchUpload
    );
    assert_eq!(
        classify("NoSuchBucket", Some(404)),
        StoreErrorKind::NoSuchBucket
    );
    assert_eq!(
        classify("InvalidAccessKeyId", Some(403)),
        StoreErrorKind::AccessDenied
    );
    assert_eq!(classify("", Some(403)), StoreErrorKind::AccessDenied);
    assert_eq!(classify("", Some(503)), StoreErrorKind::Transient);
    assert_eq!(classify("SlowDown", Some(503)), StoreErrorKind::Transient);
    assert_eq!(classify("", Some(400)), StoreErrorKind::Other);
    // Credentials that expire mid-run (STS tokens) are refused credentials, not a blip.
    assert_eq!(
        classify("ExpiredToken", Some(400)),
        StoreErrorKind::AccessDenied
    );
    assert_eq!(
        classify("RequestTimeTooSkewed", Some(403)),
        StoreErrorKind::ClockSkewed
    );
    let e = StoreError {
        op: "UploadPart",
        bucket: "b".into(),
        key: "k".into(),
        kind: StoreErrorKind::ClockSkewed,
        message: "RequestTimeTooSkewed".into(),
    };
    assert!(e.to_string().contains("fix the clock"), "{e}");
    assert!(!e.is_retryable());
}

#[test]
fn readiness_of_archived_objects() {
    let o = |class: Option<&str>, restore: Option<&str>| ObjectInfo {
        key: "k".into(),
        size: 1,
        storage_class: class.map(str::to_string),
        sse: None,
        etag: None,
        restore: restore.map(str::to_string),
    };
    assert_eq!(o(None, None).readiness(), Readiness::Readable);
    assert_eq!(o(Some("GLACIER_IR"), None).readiness(), Readiness::Readable);
    assert_eq!(
        o(Some("DEEP_ARCHIVE"), None).readiness(),
        Readiness::Archived
    );
    assert_eq!(
        o(Some("GLACIER"), Some("ongoing-request=\"true\"")).readiness(),
        Readiness::Thawing
    );
    assert_eq!(
        o(
            Some("DEEP_ARCHIVE"),
            Some("ongoing-request=\"false\", expiry-date=\"Fri, 21 Dec 2012 00:00:00 GMT\"")
        )
        .readiness(),
        Readiness::Readable
    );
}

#[test]
fn crc_is_big_endian_base64() {
    // CRC32C("123456789") = 0xE3069283, as S3 expects it: base64 of the big-endian bytes.
    assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c_base64(0xE306_9283), "4waSgw==");
}

#[test]
fn errors_carry_hints() {
    let e = StoreError {
        op: "HeadBucket",
        bucket: "nope".into(),
        key: String::new(),
        kind: StoreErrorKind::NoSuchBucket,
        message: "NoSuchBucket".into(),
    };
    assert!(
        e.to_string().contains("bucket `nope` does not exist"),
        "{e}"
    );
    assert!(!e.is_retryable());
}

#[test]
fn provider_refusals_name_the_limit_not_an_outage() {
    let r = |status, code: &str, msg: &str| provider_refusal(Some(status), code, msg);
    assert_eq!(
        r(
            400,
            "InvalidArgument",
            "Unsupported header 'x-amz-checksum-crc32c' received"
        ),
        Some(StoreErrorKind::ChecksumRefused)
    );
    assert_eq!(
        r(
            501,
            "NotImplemented",
            "Header 'x-amz-checksum-algorithm' not implemented"
        ),
        Some(StoreErrorKind::ChecksumRefused)
    );
    assert_eq!(
        r(
            400,
            "InvalidArgument",
            "Part number must be an integer between 1 and 1000, inclusive"
        ),
        Some(StoreErrorKind::PartRefused)
    );
    assert_eq!(
        r(
            400,
            "InvalidPart",
            "All non-trailing parts must have the same length."
        ),
        Some(StoreErrorKind::PartRefused)
    );
    // An InvalidPart about a missing part is not a provider limit (the chunk restarts).
    assert_eq!(
        r(
            400,
            "InvalidPart",
            "One or more of the specified parts could not be found."
        ),
        None
    );
    assert_eq!(provider_refusal(Some(503), "SlowDown", "checksum"), None);
    // A checksum asked for (Object Lock) is not a checksum refused.
    assert_eq!(
        r(
            400,
            "MissingUploadObjectWithObjectLockHeaders",
            "Content-MD5 or x-amz-sdk-checksum-algorithm header required"
        ),
        None
    );
}

#[test]
fn a_fresh_upload_gets_a_grace_an_old_or_foreign_one_none() {
    use crate::store::{fresh_upload_wait, NEW_UPLOAD_GRACE};
    use std::time::Duration;
    assert_eq!(fresh_upload_wait(None, 0), None);
    assert_eq!(
        fresh_upload_wait(Some(Duration::ZERO), 0),
        Some(Duration::from_millis(250))
    );
    assert_eq!(
        fresh_upload_wait(Some(Duration::from_secs(1)), 9),
        Some(Duration::from_secs(4))
    );
    assert_eq!(fresh_upload_wait(Some(NEW_UPLOAD_GRACE), 0), None);
    // The waits stop within the grace.
    let (mut age, mut n) = (Duration::ZERO, 0);
    while let Some(w) = fresh_upload_wait(Some(age), n) {
        age += w;
        n += 1;
    }
    assert!(age <= NEW_UPLOAD_GRACE && n >= 5, "{age:?} after {n}");
}

#[test]
fn a_credentials_failure_inside_a_request_is_told_from_the_network() {
    use super::classify::credentials_failed;
    use aws_credential_types::provider::error::CredentialsError;
    use aws_sdk_s3::config::http::HttpResponse;
    use aws_sdk_s3::error::SdkError;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    type E = SdkError<aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error, HttpResponse>;
    let creds: E = SdkError::dispatch_failure(ConnectorError::other(
        Box::new(CredentialsError::provider_error(
            "the container endpoint refused",
        )),
        None,
    ));
    assert!(credentials_failed(&creds));
    let reset: E = SdkError::dispatch_failure(ConnectorError::io(Box::new(std::io::Error::other(
        "connection reset",
    ))));
    assert!(!credentials_failed(&reset));
}
