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
