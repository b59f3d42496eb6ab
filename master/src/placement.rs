//! Placing partitions on workers.
//!
//! Each candidate worker gets a capacity weight from its free disk space; partitions go one at a
//! time to the worker with the lowest `(load + placed) / weight`, where `load` is the partitions
//! it already holds. Equal workers therefore share evenly, a worker with twice the free space
//! takes about twice the partitions, and a busy worker takes fewer.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// What placement knows of one live worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub free_bytes: u64,
    pub active_partitions: u64,
}

#[derive(Debug, PartialEq)]
struct Slot {
    cost: f64,
    worker: usize,
}

impl Eq for Slot {}

impl Ord for Slot {
    fn cmp(&self, other: &Self) -> Ordering {
        // Lowest cost first (BinaryHeap is a max-heap), ties to the lower index.
        other
            .cost
            .total_cmp(&self.cost)
            .then_with(|| other.worker.cmp(&self.worker))
    }
}

impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Returns, for each of `partitions`, the index of the candidate that takes it.
pub fn place(candidates: &[Candidate], partitions: usize) -> Vec<u32> {
    if candidates.is_empty() {
        return Vec::new();
    }
    let max_free = candidates.iter().map(|c| c.free_bytes).max().unwrap_or(0);
    // Weights in (0, 1]; a worker that reports no free space still gets a small weight so a
    // cluster of full-looking workers (or unknown figures) is used evenly.
    let weights: Vec<f64> = candidates
        .iter()
        .map(|c| {
            if max_free == 0 {
                1.0
            } else {
                (c.free_bytes as f64 / max_free as f64).max(0.01)
            }
        })
        .collect();
    let mut counts: Vec<u64> = candidates.iter().map(|c| c.active_partitions).collect();
    let mut heap: BinaryHeap<Slot> = (0..candidates.len())
        .map(|worker| Slot {
            cost: (counts[worker] + 1) as f64 / weights[worker],
            worker,
        })
        .collect();
    let mut out = Vec::with_capacity(partitions);
    for _ in 0..partitions {
        let Some(slot) = heap.pop() else { break };
        out.push(slot.worker as u32);
        counts[slot.worker] += 1;
        heap.push(Slot {
            cost: (counts[slot.worker] + 1) as f64 / weights[slot.worker],
            worker: slot.worker,
        });
    }
    out
}

/// Picks a replica for each partition whose primary is `primaries[i]`: never the primary's
/// worker, and a worker on another host (`same_host`) when one exists, spreading replicas by
/// the same cost as primaries (each primary also counts as load). `None` when there is no other
/// worker.
pub fn place_replicas(
    candidates: &[Candidate],
    primaries: &[u32],
    same_host: impl Fn(usize, usize) -> bool,
) -> Vec<Option<u32>> {
    let mut loaded: Vec<Candidate> = candidates.to_vec();
    for primary in primaries {
        loaded[*primary as usize].active_partitions += 1;
    }
    let max_free = loaded
        .iter()
        .map(|c| c.free_bytes)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let cost = |c: &Candidate| {
        (c.active_partitions + 1) as f64 / (c.free_bytes as f64 / max_free).max(0.01)
    };
    primaries
        .iter()
        .map(|primary| {
            let primary = *primary as usize;
            let best = |other_host: bool| {
                (0..loaded.len())
                    .filter(|w| *w != primary && (!other_host || !same_host(*w, primary)))
                    .min_by(|a, b| cost(&loaded[*a]).total_cmp(&cost(&loaded[*b])))
            };
            let chosen = best(true).or_else(|| best(false))?;
            loaded[chosen].active_partitions += 1;
            Some(chosen as u32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(placement: &[u32], workers: usize) -> Vec<usize> {
        let mut counts = vec![0; workers];
        placement.iter().for_each(|w| counts[*w as usize] += 1);
        counts
    }

    #[test]
    fn equal_workers_share_evenly() {
        let c = Candidate {
            free_bytes: 100,
            active_partitions: 0,
        };
        assert_eq!(tally(&place(&vec![c; 3], 300), 3), vec![100, 100, 100]);
    }

    #[test]
    fn free_space_and_load_steer_placement() {
        let candidates = [
            Candidate {
                free_bytes: 200,
                active_partitions: 0,
            },
            Candidate {
                free_bytes: 100,
                active_partitions: 0,
            },
            Candidate {
                free_bytes: 200,
                active_partitions: 1000,
            },
        ];
        let counts = tally(&place(&candidates, 300), 3);
        assert!(counts[0] > counts[1] * 3 / 2, "{counts:?}");
        assert_eq!(counts[2], 0, "{counts:?}");
    }

    #[test]
    fn replicas_avoid_the_primary_and_its_host_and_spread() {
        let c = Candidate {
            free_bytes: 100,
            active_partitions: 0,
        };
        let candidates = vec![c; 4];
        let primaries = place(&candidates, 400);
        // Workers 0 and 1 share a host; 2 and 3 share another.
        let host = |w: usize| w / 2;
        let replicas = place_replicas(&candidates, &primaries, |a, b| host(a) == host(b));
        for (p, r) in primaries.iter().zip(&replicas) {
            let r = r.unwrap() as usize;
            assert_ne!(host(*p as usize), host(r));
        }
        let counts = tally(&replicas.iter().map(|r| r.unwrap()).collect::<Vec<_>>(), 4);
        assert!(counts.iter().all(|c| (80..=120).contains(c)), "{counts:?}");
        // One worker: no replica possible.
        assert_eq!(
            place_replicas(&candidates[..1], &[0, 0], |_, _| true),
            vec![None, None]
        );
        // All on one host: another worker on the same host.
        assert!(place_replicas(&candidates, &[0], |_, _| true)[0].is_some_and(|r| r != 0));
    }

    #[test]
    fn no_candidates_no_placement() {
        assert!(place(&[], 10).is_empty());
    }
}
