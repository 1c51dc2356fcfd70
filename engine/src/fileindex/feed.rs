//! `Feed`: an index built from send-stream bytes handed in as they pass, in any slices: the
//! parser and the builder together. Backup runs one on the index thread behind its tee;
//! `verify --deep` runs one on the verified stream to check the stored index. Pure.

use super::{format, Builder, Tree};
use crate::sendstream::{Command, Parser};

/// A built index: the tree, its stored form (compressed), and its size in paths.
pub struct Built {
    pub tree: Tree,
    pub encoded: super::stored::Compressed,
    pub entries: u64,
    pub position: u32,
}

pub struct Feed {
    parser: Parser,
    builder: Builder,
    cmds: Vec<Command>,
    position: u32,
    /// The first error: later bytes are ignored.
    error: Option<String>,
}

impl Feed {
    /// The index of a chain's full backup.
    pub fn full() -> Feed {
        Feed::with(Builder::full(0), 0)
    }

    /// The index of the incremental at `position` whose parent's tree is `parent`.
    pub fn incremental(parent: Tree, position: u32) -> Feed {
        Feed::with(Builder::incremental(parent, position), position)
    }

    fn with(builder: Builder, position: u32) -> Feed {
        Feed {
            parser: Parser::new(),
            builder,
            cmds: Vec::new(),
            position,
            error: None,
        }
    }

    /// Keeps at most `spill.hot` inodes in memory, the others in a spill file in
    /// `spill.dir` (see `Builder::spill_to`).
    pub fn spill_to(&mut self, spill: &super::Spill) -> Result<(), String> {
        self.builder.spill_to(spill)
    }

    /// The tree so far.
    pub fn tree(&self) -> &Tree {
        self.builder.tree()
    }

    /// The next bytes of the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.parser.feed(bytes, &mut self.cmds) {
            self.error = Some(format!("the send stream: {e}"));
            return;
        }
        // A spill file that failed: the tree is lost, stop building it.
        if let Some(e) = self.builder.tree().spill_error() {
            self.error = Some(e);
            return;
        }
        for c in &self.cmds {
            if let Err(e) = self.builder.apply(c) {
                // A spill file that failed lost inodes: that, not what it made fail.
                self.error = Some(self.builder.tree().spill_error().unwrap_or(e.to_string()));
                return;
            }
        }
        self.parser.recycle(&mut self.cmds);
    }

    /// The index, once the whole stream was pushed; or why there is none.
    pub fn finish(self) -> Result<Built, String> {
        if let Some(e) = self.error {
            return Err(e);
        }
        self.parser
            .finish()
            .map_err(|e| format!("the send stream: {e}"))?;
        let tree = self.builder.finish().map_err(|e| e.to_string())?;
        tree.check().map_err(|e| {
            tree.spill_error()
                .unwrap_or_else(|| format!("the built tree: {e}"))
        })?;
        let encoded = super::stored::compress_tree(&tree, self.position, format::VERSION)
            .map_err(|e| e.to_string())?;
        let entries = tree.entry_count();
        // Checked last: an inode that could not be read back was left out of the above.
        if let Some(e) = tree.spill_error() {
            return Err(e);
        }
        Ok(Built {
            encoded,
            entries,
            position: self.position,
            tree,
        })
    }
}
