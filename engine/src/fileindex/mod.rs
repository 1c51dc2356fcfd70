//! The file index (issue 15): the tree of a snapshot as its send stream builds it, with every
//! file's data located in the streams of its chain.
//!
//! `Tree` models what `btrfs receive` would make: inodes (ours, numbered in creation order)
//! with their type, mode, owner, times, xattrs and, for a regular file, an extent map from
//! file offsets to the stream bytes that carry them. `Builder` applies a stream's commands
//! in order: the kernel creates a new inode under a temporary name (`o<ino>-<gen>-<n>`) and
//! renames and links it later, so names are only ever resolved in the tree, never pattern-
//! matched. An incremental starts from its parent's tree; a CLONE from the parent snapshot
//! reads the parent's tree as it was (kept frozen), one from this snapshot the tree as it is.
//! Holes are gaps in the map; preallocated ranges are recorded, not expanded.
//!
//! *Invariants:* every entry resolves to a live inode, every live inode is reachable, and a
//! directory has one entry naming it; extents never overlap and each lies in one stream of
//! the chain (`Source::Stream.backup` counts from the chain's full backup).

pub mod build;
pub mod extents;
pub mod feed;
pub mod format;
mod inodes;
mod input;
pub mod listing;
mod name;
mod spill;
pub mod stored;
#[cfg(test)]
mod tests;
pub mod tree;

pub use build::{Builder, IndexError};
pub use listing::{Listing, Names};
pub use spill::Spill;
pub use tree::{Check, Extent, FileType, Ino, Inode, InodeRef, Name, Source, Tree};
