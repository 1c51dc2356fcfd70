//! Journal format 1 to 2: headers gain their chain id and, when finished, a summary; every
//! record is re-encoded with record version 2; closed runs are compacted.

use super::*;

impl Journal {
    /// Format 1 to 2, in the caller's transaction: every header gains its chain id (and a
    /// summary when finished), every record is re-encoded, closed runs are compacted.
    pub(crate) fn migrate_v1(
        &self,
        runs: &mut redb::Table<u64, &[u8]>,
        tr: &mut redb::Table<(u64, u64), &[u8]>,
    ) -> Result<(), JournalError> {
        let mut old = Vec::new();
        for row in runs.iter().map_err(|e| self.err(e))? {
            let (_, v) = row.map_err(|e| self.err(e))?;
            old.push(self.decode_as::<RunHeaderV1>(v.value(), 1)?);
        }
        for h in old {
            let mut ts = Vec::new();
            for row in tr
                .range((h.id, 0)..=(h.id, u64::MAX))
                .map_err(|e| self.err(e))?
            {
                let (k, v) = row.map_err(|e| self.err(e))?;
                ts.push((k.value().1, self.decode_as::<Transition>(v.value(), 1)?));
            }
            let Some((_, Transition::Planned(p))) = ts.first() else {
                return Err(JournalError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("run {} does not start with its plan", h.id),
                });
            };
            let chain_id = p.chain_id.clone();
            let closed = h.status != RunStatus::Open;
            let summary = (h.status == RunStatus::Finished)
                .then(|| RunSummary::of(&ts.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>()))
                .flatten();
            tr.retain_in((h.id, 0)..=(h.id, u64::MAX), |_, _| false)
                .map_err(|e| self.err(e))?;
            for (seq, t) in &ts {
                if closed && t.is_chunk_detail() {
                    continue;
                }
                tr.insert((h.id, *seq), encode(t)?.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            let header = RunHeader {
                id: h.id,
                subvolume: h.subvolume,
                backup_id: h.backup_id,
                snapshot_name: h.snapshot_name,
                chain_id,
                status: h.status,
                summary,
                location: None,
            };
            runs.insert(h.id, encode(&header)?.as_slice())
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }
}
