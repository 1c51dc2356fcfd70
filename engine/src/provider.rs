//! S3 providers and the limits each sets (pure data, no I/O). `[s3] provider` picks a
//! `Profile`; single limits are overridden by their own keys (`checksum`, `max_parts`,
//! `min_part_size`, `max_part_size`), never beyond what the provider allows. Sources of every
//! value: the provider table in README.md.

use crate::settings::{Checksum, GIB, MIB, TIB};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    Aws,
    B2,
    R2,
    Wasabi,
    Scaleway,
    Minio,
    Ceph,
    Garage,
    Other,
}

pub const PROVIDERS: &[Provider] = &[
    Provider::Aws,
    Provider::B2,
    Provider::R2,
    Provider::Wasabi,
    Provider::Scaleway,
    Provider::Minio,
    Provider::Ceph,
    Provider::Garage,
    Provider::Other,
];

/// Where the provider in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `[s3] provider`.
    Configured,
    /// Recognised from the endpoint's host name.
    Endpoint,
    /// No provider and no endpoint: AWS; an endpoint not recognised: other.
    Default,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Configured => "configured",
            Source::Endpoint => "recognised from the endpoint",
            Source::Default => "default",
        }
    }
}

/// What a provider allows and needs. Values are the provider's documented limits (README's
/// provider table); `Other` takes what every S3 server accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub provider: Provider,
    pub source: Source,
    /// Part numbers run 1..=max_parts.
    pub max_parts: u64,
    /// Smallest part but the last; largest part.
    pub min_part: u64,
    pub max_part: u64,
    pub max_object: u64,
    /// Every part but the last of an upload has one size, the last no larger (R2). The
    /// layout (`machine::Layout`) always gives that, so this only documents the need.
    pub equal_parts: bool,
    /// The integrity header uploads carry unless `checksum` says otherwise.
    pub checksum: Checksum,
    /// The provider answers an error to x-amz-checksum-* headers: `checksum = "crc32c"`
    /// contradicts the profile.
    pub refuses_checksum_headers: bool,
    /// Storage classes accepted (empty: not known, any is sent as configured).
    pub storage_classes: &'static [&'static str],
    /// S3 Object Lock (with versioning) is offered.
    pub object_lock: bool,
    /// `sse` when unset: AES256 where the provider takes the SSE-S3 header, else none.
    pub sse_s3: bool,
    /// `chunk_size` when unset (each chunk is one object).
    pub default_chunk: u64,
}

/// The default chunk: 64 GiB, so the default part is 8 MiB (the smallest that keeps a chunk
/// within 10,000 parts). Measured against 21 MiB parts (200 GiB chunks) and others, at 2, 4
/// and 8 in flight, on 2 cores and on the WAN profile: as fast within the noise, at half the
/// memory, and a crash re-sends at most 32 MiB (BENCHMARKS.md, "Part size and concurrency").
pub const DEFAULT_CHUNK: u64 = 64 * GIB;

/// Garage's default chunk. Garage reads an object's whole block list (one entry per MiB) on
/// every GET, ranged or not: its CPU per GET grows by about 0.2 ms per GiB of the object
/// (BENCHMARKS.md, "Chunk size on garage"), so in a 64 GiB object garage's CPU per 8 MiB part
/// GET would grow by half. 4 GiB objects keep that under 4 %.
pub const GARAGE_CHUNK: u64 = 4 * GIB;

/// Every storage class S3 names (AWS offers them all).
pub const AWS_CLASSES: &[&str] = &[
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "GLACIER_IR",
    "EXPRESS_ONEZONE",
];

impl Provider {
    pub fn parse(s: &str) -> Option<Provider> {
        PROVIDERS.iter().copied().find(|p| p.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Aws => "aws",
            Provider::B2 => "b2",
            Provider::R2 => "r2",
            Provider::Wasabi => "wasabi",
            Provider::Scaleway => "scaleway",
            Provider::Minio => "minio",
            Provider::Ceph => "ceph",
            Provider::Garage => "garage",
            Provider::Other => "other",
        }
    }

    /// The provider an endpoint's host name belongs to, where the name says so.
    pub fn of_endpoint(endpoint: &str) -> Option<Provider> {
        let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
        let host = rest
            .split(['/', ':'])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let ends = |suffix: &str| host == suffix || host.ends_with(&format!(".{suffix}"));
        if ends("amazonaws.com") {
            Some(Provider::Aws)
        } else if ends("backblazeb2.com") {
            Some(Provider::B2)
        } else if ends("r2.cloudflarestorage.com") {
            Some(Provider::R2)
        } else if ends("wasabisys.com") {
            Some(Provider::Wasabi)
        } else if ends("scw.cloud") {
            Some(Provider::Scaleway)
        } else {
            None
        }
    }

    /// The provider in force: the configured one, else the endpoint's, else AWS without an
    /// endpoint and `Other` with one.
    pub fn resolve(configured: Option<Provider>, endpoint: Option<&str>) -> (Provider, Source) {
        match (configured, endpoint) {
            (Some(p), _) => (p, Source::Configured),
            (None, None) => (Provider::Aws, Source::Default),
            (None, Some(e)) => match Provider::of_endpoint(e) {
                Some(p) => (p, Source::Endpoint),
                None => (Provider::Other, Source::Default),
            },
        }
    }

    pub fn profile(self, source: Source) -> Profile {
        let base = Profile {
            provider: self,
            source,
            max_parts: 10_000,
            min_part: 5 * MIB,
            max_part: 5 * GIB,
            max_object: 5 * TIB,
            equal_parts: false,
            checksum: Checksum::Crc32c,
            refuses_checksum_headers: false,
            storage_classes: &[],
            object_lock: false,
            sse_s3: false,
            default_chunk: DEFAULT_CHUNK,
        };
        match self {
            Provider::Aws => Profile {
                storage_classes: AWS_CLASSES,
                object_lock: true,
                sse_s3: true,
                ..base
            },
            Provider::B2 => Profile {
                checksum: Checksum::Md5,
                refuses_checksum_headers: true,
                storage_classes: &["STANDARD"],
                object_lock: true,
                sse_s3: true,
                ..base
            },
            Provider::R2 => Profile {
                equal_parts: true,
                checksum: Checksum::Md5,
                refuses_checksum_headers: true,
                storage_classes: &["STANDARD", "STANDARD_IA"],
                ..base
            },
            Provider::Wasabi => Profile {
                checksum: Checksum::Md5,
                storage_classes: &["STANDARD"],
                object_lock: true,
                ..base
            },
            Provider::Scaleway => Profile {
                max_parts: 1_000,
                checksum: Checksum::Md5,
                storage_classes: &["STANDARD", "ONEZONE_IA", "GLACIER"],
                object_lock: true,
                ..base
            },
            Provider::Minio => Profile {
                storage_classes: &["STANDARD", "REDUCED_REDUNDANCY"],
                object_lock: true,
                ..base
            },
            // Older RGW (before Squid) answers 400 to x-amz-checksum-*; newer takes them, so
            // crc32c may be asked for.
            Provider::Ceph => Profile {
                checksum: Checksum::Md5,
                object_lock: true,
                ..base
            },
            Provider::Garage => Profile {
                storage_classes: &["STANDARD"],
                default_chunk: GARAGE_CHUNK,
                ..base
            },
            // Unknown: what every S3 server accepts (Content-MD5), AWS's part limits.
            Provider::Other => Profile {
                checksum: Checksum::Md5,
                object_lock: true,
                ..base
            },
        }
    }
}

/// A limit of the profile overridden beyond what the provider allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("max_parts {value} is above {provider}'s limit of {limit} parts per upload")]
    MaxParts {
        provider: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("min_part_size {value} is below {provider}'s smallest part of {limit} bytes")]
    MinPart {
        provider: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("max_part_size {value} is above {provider}'s largest part of {limit} bytes")]
    MaxPart {
        provider: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("min_part_size {min} is above max_part_size {max}")]
    MinAboveMax { min: u64, max: u64 },
    #[error("max_parts must be at least 1")]
    NoParts,
    #[error("checksum = \"crc32c\" but {provider} refuses x-amz-checksum-* headers")]
    Checksum { provider: &'static str },
    #[error("storage class `{class}` is not one {provider} offers ({offered})")]
    StorageClass {
        provider: &'static str,
        class: String,
        offered: String,
    },
}

/// Single limits set in `[s3]`, each tighter than the provider's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    pub checksum: Option<Checksum>,
    pub max_parts: Option<u64>,
    pub min_part: Option<u64>,
    pub max_part: Option<u64>,
}

impl Profile {
    /// The profile with `o` applied; an override the provider cannot honour is an error.
    pub fn with(mut self, o: Overrides) -> Result<Profile, ProfileError> {
        let provider = self.provider.as_str();
        if let Some(n) = o.max_parts {
            if n == 0 {
                return Err(ProfileError::NoParts);
            }
            if n > self.max_parts {
                return Err(ProfileError::MaxParts {
                    provider,
                    value: n,
                    limit: self.max_parts,
                });
            }
            self.max_parts = n;
        }
        if let Some(n) = o.min_part {
            if n < self.min_part {
                return Err(ProfileError::MinPart {
                    provider,
                    value: n,
                    limit: self.min_part,
                });
            }
            self.min_part = n;
        }
        if let Some(n) = o.max_part {
            if n > self.max_part {
                return Err(ProfileError::MaxPart {
                    provider,
                    value: n,
                    limit: self.max_part,
                });
            }
            self.max_part = n;
        }
        if self.min_part > self.max_part {
            return Err(ProfileError::MinAboveMax {
                min: self.min_part,
                max: self.max_part,
            });
        }
        if let Some(c) = o.checksum {
            if c == Checksum::Crc32c && self.refuses_checksum_headers {
                return Err(ProfileError::Checksum { provider });
            }
            self.checksum = c;
        }
        Ok(self)
    }

    pub fn check_storage_class(&self, class: &str) -> Result<(), ProfileError> {
        if self.storage_classes.is_empty() || self.storage_classes.contains(&class) {
            Ok(())
        } else {
            Err(ProfileError::StorageClass {
                provider: self.provider.as_str(),
                class: class.to_string(),
                offered: self.storage_classes.join(", "),
            })
        }
    }
}

/// Chunk and part sizes under a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    pub chunk_size: u64,
    pub part_size: u64,
    /// The configured (or default) chunk size, when it was lowered to fit `max_parts`.
    pub chunk_lowered_from: Option<u64>,
}

/// Chunk size: the configured one, else the profile's default (or one configured part, where
/// that is larger). Part size: the configured one, else the default for the chunk size kept
/// within the profile's bounds. The chunk is then lowered to `max_parts` whole parts where
/// more would be needed (a provider with few parts gets smaller chunks, not parts that cost
/// memory). Err: a configured part size outside the profile's bounds.
pub fn size(
    profile: &Profile,
    chunk_size: Option<u64>,
    part_size: Option<u64>,
) -> Result<Sizing, String> {
    let chunk_size =
        chunk_size.unwrap_or_else(|| profile.default_chunk.max(part_size.unwrap_or(0)));
    let part_size = match part_size {
        Some(p) => {
            if p < profile.min_part || p > profile.max_part {
                return Err(format!(
                    "part_size {p} is outside {}'s part sizes ({} to {} bytes)",
                    profile.provider.as_str(),
                    profile.min_part,
                    profile.max_part
                ));
            }
            p
        }
        None => crate::machine::default_part_size(chunk_size)
            .max(profile.min_part)
            .min(profile.max_part),
    };
    let most = profile.max_parts.saturating_mul(part_size);
    if chunk_size > most {
        Ok(Sizing {
            chunk_size: most,
            part_size,
            chunk_lowered_from: Some(chunk_size),
        })
    } else {
        Ok(Sizing {
            chunk_size,
            part_size,
            chunk_lowered_from: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_none() {
        for p in PROVIDERS {
            assert_eq!(Provider::parse(p.as_str()), Some(*p));
        }
        assert_eq!(Provider::parse("AWS"), None);
        assert_eq!(Provider::parse("s3"), None);
    }

    #[test]
    fn endpoints_name_their_provider() {
        for (e, want) in [
            ("https://s3.us-west-004.backblazeb2.com", Some(Provider::B2)),
            (
                "https://abc123.r2.cloudflarestorage.com",
                Some(Provider::R2),
            ),
            (
                "https://s3.eu-central-1.wasabisys.com",
                Some(Provider::Wasabi),
            ),
            ("https://s3.fr-par.scw.cloud", Some(Provider::Scaleway)),
            (
                "https://s3.eu-west-1.amazonaws.com:443/",
                Some(Provider::Aws),
            ),
            ("http://127.0.0.1:3900", None),
            ("https://evilscw.cloud", None),
            ("https://scw.cloud.example.org", None),
        ] {
            assert_eq!(Provider::of_endpoint(e), want, "{e}");
        }
        assert_eq!(
            Provider::resolve(None, None),
            (Provider::Aws, Source::Default)
        );
        assert_eq!(
            Provider::resolve(None, Some("http://127.0.0.1:3900")),
            (Provider::Other, Source::Default)
        );
        assert_eq!(
            Provider::resolve(Some(Provider::Garage), Some("https://x.scw.cloud")),
            (Provider::Garage, Source::Configured)
        );
    }

    #[test]
    fn overrides_tighten_and_never_loosen() {
        let scw = Provider::Scaleway.profile(Source::Configured);
        let tighter = scw
            .clone()
            .with(Overrides {
                max_parts: Some(2),
                min_part: Some(8 * MIB),
                max_part: Some(GIB),
                checksum: Some(Checksum::None),
            })
            .expect("tighter");
        assert_eq!(
            (
                tighter.max_parts,
                tighter.min_part,
                tighter.max_part,
                tighter.checksum
            ),
            (2, 8 * MIB, GIB, Checksum::None)
        );
        for (o, want) in [
            (
                Overrides {
                    max_parts: Some(10_000),
                    ..Overrides::default()
                },
                "max_parts 10000 is above scaleway's limit of 1000",
            ),
            (
                Overrides {
                    max_parts: Some(0),
                    ..Overrides::default()
                },
                "at least 1",
            ),
            (
                Overrides {
                    min_part: Some(MIB),
                    ..Overrides::default()
                },
                "below scaleway's smallest part",
            ),
            (
                Overrides {
                    max_part: Some(6 * GIB),
                    ..Overrides::default()
                },
                "above scaleway's largest part",
            ),
            (
                Overrides {
                    min_part: Some(GIB),
                    max_part: Some(64 * MIB),
                    ..Overrides::default()
                },
                "is above max_part_size",
            ),
        ] {
            let e = scw.clone().with(o).expect_err("refused").to_string();
            assert!(e.contains(want), "{e}");
        }
        let b2 = Provider::B2.profile(Source::Configured);
        let e = b2
            .with(Overrides {
                checksum: Some(Checksum::Crc32c),
                ..Overrides::default()
            })
            .expect_err("b2 refuses crc32c");
        assert!(e.to_string().contains("b2 refuses x-amz-checksum"), "{e}");
        // Ceph: newer RGW takes the header, so it may be asked for.
        let ceph = Provider::Ceph.profile(Source::Configured);
        assert_eq!(ceph.checksum, Checksum::Md5);
        assert!(ceph
            .with(Overrides {
                checksum: Some(Checksum::Crc32c),
                ..Overrides::default()
            })
            .is_ok());
    }

    #[test]
    fn storage_classes_are_checked_where_known() {
        let b2 = Provider::B2.profile(Source::Configured);
        assert!(b2.check_storage_class("STANDARD").is_ok());
        let e = b2.check_storage_class("GLACIER").expect_err("refused");
        assert!(
            e.to_string().contains("not one b2 offers (STANDARD)"),
            "{e}"
        );
        let other = Provider::Other.profile(Source::Default);
        assert!(other.check_storage_class("GLACIER").is_ok());
        assert!(Provider::Aws
            .profile(Source::Default)
            .check_storage_class("DEEP_ARCHIVE")
            .is_ok());
    }

    #[test]
    fn chunks_are_lowered_to_the_part_limit_not_parts_raised() {
        let scw = Provider::Scaleway.profile(Source::Configured);
        // The default 200 GiB chunk: 21 MiB parts as on AWS, chunks of 1000 of them.
        let s = size(&scw, Some(200 * GIB), None).expect("sized");
        assert_eq!(s.part_size, 21 * MIB);
        assert_eq!(s.chunk_size, 1000 * 21 * MIB);
        assert_eq!(s.chunk_lowered_from, Some(200 * GIB));
        let aws = Provider::Aws.profile(Source::Default);
        let s = size(&aws, Some(200 * GIB), None).expect("sized");
        assert_eq!((s.chunk_size, s.part_size), (200 * GIB, 21 * MIB));
        assert_eq!(s.chunk_lowered_from, None);
        // An explicit part size too small for the chunk on AWS lowers the chunk too.
        let s = size(&aws, Some(100 * GIB), Some(5 * MIB)).expect("sized");
        assert_eq!(s.chunk_size, 10_000 * 5 * MIB);
        // A min_part_size override raises the default part.
        let big = aws
            .clone()
            .with(Overrides {
                min_part: Some(64 * MIB),
                ..Overrides::default()
            })
            .expect("ok");
        assert_eq!(
            size(&big, Some(GIB), None).expect("sized").part_size,
            64 * MIB
        );
        let e = size(&big, Some(GIB), Some(8 * MIB)).expect_err("below the floor");
        assert!(e.contains("outside aws's part sizes"), "{e}");
        // Unset: the profile's default chunk (garage's 4 GiB, AWS's 64 GiB), or one
        // configured part where that is larger.
        let garage = Provider::Garage.profile(Source::Configured);
        let s = size(&garage, None, None).expect("sized");
        assert_eq!((s.chunk_size, s.part_size), (GARAGE_CHUNK, 8 * MIB));
        let s = size(&garage, None, Some(5 * GIB)).expect("sized");
        assert_eq!((s.chunk_size, s.part_size), (5 * GIB, 5 * GIB));
        assert_eq!(
            size(&aws, None, None).expect("sized").chunk_size,
            DEFAULT_CHUNK
        );
        // Every provider's default layout is one the machine accepts.
        for p in PROVIDERS {
            let prof = p.profile(Source::Configured);
            for chunk in [GIB, 200 * GIB, 5 * TIB] {
                let s = size(&prof, Some(chunk), None).expect("sized");
                let l = crate::machine::Layout::new(s.chunk_size, s.part_size);
                assert!(l.is_ok(), "{p:?} {chunk}: {l:?}");
                assert!(u64::from(l.expect("ok").parts_per_chunk()) <= prof.max_parts);
            }
        }
    }
}
