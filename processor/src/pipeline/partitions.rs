//! Partition bookkeeping: where each assigned partition stands (the next offset to apply, the
//! offset stored in PostgreSQL, a rebuild of its RocksDB state in progress), how a partition is
//! set up on its first record after an assignment, and how a folded batch moves it on.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use funnel_runtime::sink::OffsetMove;

/// Where one assigned partition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionState {
    /// The next offset to apply; also the `from` of the next offset move in PostgreSQL.
    pub next: i64,
    /// The offset stored in PostgreSQL (None: no row yet).
    pub stored: Option<i64>,
    /// While rebuilding RocksDB state: records below this offset are folded, not written.
    pub rebuild_until: Option<i64>,
    /// When the rebuild started (for the restore-time metric).
    pub rebuild_started: Option<Instant>,
}

impl PartitionState {
    /// The state of a partition on its first record after an assignment, from the offset
    /// stored in PostgreSQL, the RocksDB checkpoint and the log's watermarks. The state is
    /// trusted when the checkpoint equals the stored offset; otherwise (missing, behind, ahead)
    /// it must be cleared and rebuilt by re-reading the partition from its first offset up to
    /// the stored one without writing rows: then the returned state has `rebuild_started`.
    /// Err: (stored offset, end of the log) when the stored offset is past the end.
    pub fn set_up(
        stored: Option<i64>,
        checkpoint: Option<i64>,
        (low, high): (i64, i64),
        now: Instant,
    ) -> Result<Self, (i64, i64)> {
        if let Some(s) = stored.filter(|s| *s > high) {
            return Err((s, high));
        }
        Ok(if checkpoint == stored {
            PartitionState {
                next: stored.unwrap_or(low),
                stored,
                rebuild_until: None,
                rebuild_started: None,
            }
        } else {
            PartitionState {
                next: low,
                stored,
                rebuild_until: stored.filter(|s| *s > low),
                rebuild_started: Some(now),
            }
        })
    }

    /// Whether the state must be rebuilt (it was not trusted at set-up).
    pub fn rebuilds(&self) -> bool {
        self.rebuild_started.is_some()
    }

    /// Whether the record at `offset` is re-read to rebuild state (folded, not written).
    pub fn rebuilding(&self, offset: i64) -> bool {
        self.rebuild_until.is_some_and(|u| offset < u)
    }
}

/// How far a batch got in one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The offset after the last record read (rebuilt or applied).
    pub next: i64,
    /// The first record applied and the offset after the last one (None: only re-reads).
    pub applied: Option<(i64, i64)>,
}

/// What a batch changes in the partitions: the offset moves its transaction makes, the
/// checkpoints its RocksDB write records, and the rebuilds it completed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Advance {
    pub moves: Vec<OffsetMove>,
    /// Per partition whose state is settled (not rebuilding), the next offset its state
    /// includes once the batch is written.
    pub checkpoints: Vec<(i32, i64)>,
    /// Partitions whose rebuild completed, at which offset, and how long it took.
    pub rebuilt: Vec<(i32, i64, Duration)>,
}

/// The partitions this pipeline has set up since their assignment.
#[derive(Debug, Default)]
pub struct Partitions(HashMap<i32, PartitionState>);

impl Partitions {
    pub fn get(&self, partition: i32) -> Option<&PartitionState> {
        self.0.get(&partition)
    }

    pub fn insert(&mut self, partition: i32, state: PartitionState) {
        self.0.insert(partition, state);
    }

    /// Forgets a partition (revoked): its next record sets it up again.
    pub fn forget(&mut self, partition: i32) {
        self.0.remove(&partition);
    }

    /// Forgets every partition: the next records set them up from what PostgreSQL holds.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Moves the partitions on by a folded batch, as if its transaction commits (if it does
    /// not, the partitions are cleared and set up again). Offset moves start where the
    /// partition's stored offset stands and end after the batch's last applied record.
    pub fn advance(&mut self, progress: &BTreeMap<i32, Progress>, now: Instant) -> Advance {
        let mut out = Advance::default();
        for (&p, pr) in progress {
            let Some(ps) = self.0.get_mut(&p) else {
                continue;
            };
            ps.next = pr.next;
            if let Some((start, to)) = pr.applied {
                out.moves.push(OffsetMove {
                    partition: p,
                    from: ps.stored,
                    start,
                    to,
                });
                ps.stored = Some(to);
                ps.rebuild_until = None;
            }
        }
        let mut settled: Vec<(i32, i64)> = Vec::new();
        for (&p, ps) in self.0.iter_mut() {
            // A rebuild that reached the stored offset without a new record.
            if ps.rebuild_until.is_some_and(|u| ps.next >= u) {
                ps.rebuild_until = None;
            }
            if ps.rebuild_until.is_none() {
                if let Some(started) = ps.rebuild_started.take() {
                    out.rebuilt
                        .push((p, ps.next, now.saturating_duration_since(started)));
                }
                if let Some(s) = ps.stored {
                    settled.push((p, s));
                }
            }
        }
        settled.sort_unstable();
        out.rebuilt.sort_unstable_by_key(|r| r.0);
        out.checkpoints = settled;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_up_trusts_a_matching_checkpoint_and_rebuilds_otherwise() {
        let now = Instant::now();
        let trusted = PartitionState::set_up(Some(40), Some(40), (0, 100), now).expect("ok");
        assert_eq!((trusted.next, trusted.rebuild_until), (40, None));
        assert!(!trusted.rebuilds());
        let fresh = PartitionState::set_up(None, None, (7, 100), now).expect("ok");
        assert_eq!(
            (fresh.next, fresh.stored),
            (7, None),
            "a new partition starts at its log start"
        );
        for checkpoint in [None, Some(30), Some(50)] {
            let r = PartitionState::set_up(Some(40), checkpoint, (5, 100), now).expect("ok");
            assert_eq!((r.next, r.rebuild_until), (5, Some(40)), "{checkpoint:?}");
            assert!(r.rebuilds() && r.rebuilding(39) && !r.rebuilding(40));
        }
        let nothing_to_reread = PartitionState::set_up(Some(5), None, (5, 100), now).expect("ok");
        assert_eq!(nothing_to_reread.rebuild_until, None);
        assert!(
            nothing_to_reread.rebuilds(),
            "the state is cleared all the same"
        );
        assert_eq!(
            PartitionState::set_up(Some(101), Some(101), (0, 100), now),
            Err((101, 100))
        );
    }

    #[test]
    fn a_batch_moves_offsets_from_the_stored_one_and_settles_rebuilds() {
        let t0 = Instant::now();
        let mut ps = Partitions::default();
        ps.insert(
            0,
            PartitionState::set_up(Some(10), Some(10), (0, 50), t0).expect("ok"),
        );
        ps.insert(
            1,
            PartitionState::set_up(Some(20), None, (0, 50), t0).expect("ok"),
        );
        ps.insert(
            2,
            PartitionState::set_up(None, None, (0, 50), t0).expect("ok"),
        );
        let progress = BTreeMap::from([
            (
                0,
                Progress {
                    next: 15,
                    applied: Some((10, 15)),
                },
            ),
            (
                1,
                Progress {
                    next: 12,
                    applied: None,
                },
            ),
        ]);
        let later = t0 + Duration::from_secs(3);
        let a = ps.advance(&progress, later);
        assert_eq!(
            a.moves,
            [OffsetMove {
                partition: 0,
                from: Some(10),
                start: 10,
                to: 15
            }]
        );
        assert_eq!(
            a.checkpoints,
            [(0, 15)],
            "partition 1 is still rebuilding, 2 has no offset"
        );
        assert!(a.rebuilt.is_empty());
        assert_eq!(ps.get(1).map(|s| s.next), Some(12));
        // The rebuild reaches the stored offset with re-reads only, then applies records.
        let a = ps.advance(
            &BTreeMap::from([(
                1,
                Progress {
                    next: 20,
                    applied: None,
                },
            )]),
            later,
        );
        assert_eq!(a.rebuilt, [(1, 20, Duration::from_secs(3))]);
        assert_eq!(a.checkpoints, [(0, 15), (1, 20)]);
        let a = ps.advance(
            &BTreeMap::from([(
                1,
                Progress {
                    next: 25,
                    applied: Some((20, 25)),
                },
            )]),
            later,
        );
        assert_eq!(a.moves[0].from, Some(20));
        assert!(a.rebuilt.is_empty(), "a rebuild is timed once");
    }
}
