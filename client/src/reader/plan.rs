//! Which committed copies of a partition a reader reads.
//!
//! The layout lists every copy of every epoch of a partition, committed or not, each committed
//! one with its totals (bytes, batches, checksum). Per epoch:
//!
//! - a copy that failed to commit cannot be read; its reason is kept for a data-loss report;
//! - a copy committed empty holds nothing to read;
//! - copies reporting the same totals hold the same batches: one is read (the primary first),
//!   the others stand in for it if it cannot be read;
//! - copies reporting different totals (one may hold a prefix of the pushes the other holds,
//!   e.g. after a worker recovered flushed but uncommitted files) are all read; batches both
//!   hold are dropped as repeats.

use sluice_protocol::pb;

/// A committed copy of a partition at one epoch: the worker's fetch address and the location.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct CopySource {
    pub worker: String,
    pub location: pb::LocationRef,
}

/// One epoch of a partition.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Epoch {
    pub epoch: u32,
    /// Committed copies holding batches, primary first, with their totals.
    pub copies: Vec<(CopySource, pb::BatchStats)>,
    /// Why copies of this epoch failed to commit.
    pub failed: Vec<String>,
}

impl Epoch {
    /// Groups a partition's copies by epoch, in the order the layout lists the epochs.
    /// `source` says where a committed copy is read from.
    pub fn group(
        locations: &[pb::CommittedLocation],
        mut source: impl FnMut(&pb::CommittedLocation) -> Result<CopySource, String>,
    ) -> Result<Vec<Epoch>, String> {
        let mut epochs: Vec<Epoch> = Vec::new();
        for location in locations {
            let at = match epochs.iter().position(|e| e.epoch == location.epoch) {
                Some(at) => at,
                None => {
                    epochs.push(Epoch {
                        epoch: location.epoch,
                        ..Epoch::default()
                    });
                    epochs.len() - 1
                }
            };
            let epoch = &mut epochs[at];
            if !location.ok {
                epoch.failed.push(location.error.clone());
                continue;
            }
            let stats = location.stats.unwrap_or_default();
            if stats.batches == 0 {
                // Committed empty: nothing to read, and nothing lost.
                continue;
            }
            let copy = (source(location)?, stats);
            if location.role == pb::Role::Primary as i32 {
                epoch.copies.insert(0, copy);
            } else {
                epoch.copies.push(copy);
            }
        }
        Ok(epochs)
    }

    /// The reads this epoch needs. Each read is a list of copies holding the same batches: the
    /// first is read and the others stand in for it, in order, when it cannot be.
    pub fn reads(&self) -> Vec<Vec<CopySource>> {
        let Some((_, first)) = self.copies.first() else {
            return Vec::new();
        };
        let copies = self.copies.iter().map(|(copy, _)| copy.clone());
        if self.copies.iter().all(|(_, stats)| stats == first) {
            vec![copies.collect()]
        } else {
            copies.map(|copy| vec![copy]).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use sluice_protocol::pb::Role::{Primary, Replica};

    use super::*;

    fn stats(batches: u64) -> Option<pb::BatchStats> {
        Some(pb::BatchStats {
            bytes: batches * 100,
            batches,
            checksum: batches * 7,
        })
    }

    fn committed(epoch: u32, role: pb::Role, worker: u32, batches: u64) -> pb::CommittedLocation {
        pb::CommittedLocation {
            epoch,
            role: role as i32,
            worker,
            stats: stats(batches),
            ok: true,
            error: String::new(),
        }
    }

    fn failed(epoch: u32, role: pb::Role, worker: u32) -> pb::CommittedLocation {
        pb::CommittedLocation {
            epoch,
            role: role as i32,
            worker,
            stats: None,
            ok: false,
            error: format!("worker {worker} did not commit"),
        }
    }

    fn source(location: &pb::CommittedLocation) -> Result<CopySource, String> {
        Ok(CopySource {
            worker: format!("w{}", location.worker),
            location: pb::LocationRef {
                shuffle: None,
                partition: 0,
                epoch: location.epoch,
                role: location.role,
            },
        })
    }

    /// The workers of each read of each epoch.
    fn reads(locations: &[pb::CommittedLocation]) -> Vec<(u32, Vec<Vec<String>>)> {
        Epoch::group(locations, source)
            .unwrap()
            .iter()
            .map(|e| {
                let reads = e.reads().into_iter();
                (
                    e.epoch,
                    reads
                        .map(|read| read.into_iter().map(|c| c.worker).collect())
                        .collect(),
                )
            })
            .collect()
    }

    fn workers(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn copies_that_agree_are_read_once_primary_first() {
        let locations = [committed(0, Replica, 2, 5), committed(0, Primary, 1, 5)];
        assert_eq!(reads(&locations), vec![(0, vec![workers(&["w1", "w2"])])]);
    }

    #[test]
    fn copies_that_differ_are_each_read() {
        let locations = [committed(0, Primary, 1, 5), committed(0, Replica, 2, 3)];
        assert_eq!(
            reads(&locations),
            vec![(0, vec![workers(&["w1"]), workers(&["w2"])])]
        );
        // Same batch count, different checksum: different content too.
        let mut other = committed(0, Replica, 2, 5);
        other.stats.as_mut().unwrap().checksum += 1;
        let locations = [committed(0, Primary, 1, 5), other];
        assert_eq!(reads(&locations)[0].1.len(), 2);
    }

    #[test]
    fn empty_and_failed_copies_are_not_read() {
        let locations = [
            committed(0, Primary, 1, 0),
            committed(0, Replica, 2, 4),
            failed(1, Primary, 3),
            committed(1, Replica, 1, 6),
            failed(2, Primary, 2),
            failed(2, Replica, 3),
            committed(3, Primary, 1, 0),
        ];
        assert_eq!(
            reads(&locations),
            vec![
                (0, vec![workers(&["w2"])]),
                (1, vec![workers(&["w1"])]),
                (2, vec![]),
                (3, vec![]),
            ]
        );
        let epochs = Epoch::group(&locations, source).unwrap();
        assert_eq!(epochs[1].failed, vec!["worker 3 did not commit"]);
        assert_eq!(epochs[2].failed.len(), 2);
        assert!(epochs[3].failed.is_empty());
    }

    #[test]
    fn an_unknown_worker_is_an_error() {
        let locations = [committed(0, Primary, 9, 1)];
        let error = Epoch::group(&locations, |_| Err("unknown worker 9".to_string()));
        assert_eq!(error, Err("unknown worker 9".to_string()));
    }
}
