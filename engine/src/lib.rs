//! Backup and restore logic of btrfs-to-s3.
//!
//! `machine` holds the pure decisions; `backup` is the driver that performs them through the
//! I/O edges (`btrfs`, `store`, the journal).

pub mod backup;
pub mod btrfs;
pub mod chunkhash;
pub mod clock;
pub mod codec;
pub mod crash;
pub mod crc;
pub mod fileindex;
pub mod listing;
pub mod machine;
pub mod manifest;
pub mod pipeline;
pub mod plan;
pub mod provider;
pub mod rebuild;
pub mod restore;
pub mod runlog;
pub mod seal;
pub mod sendstream;
pub mod settings;
pub mod store;
pub mod tree;

pub use journal;

pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");
