//! Placing partitions on workers.
//!
//! Each candidate worker gets a capacity weight from its free disk space; partitions go one at a
//! time to the worker with the lowest `(load + placed) / weight`, where `load` is the partitions
//! it already holds. Equal workers therefore share evenly, a worker with twice the free space
//! takes about twice the partitions, and a busy worker takes fewer.
//!
//! A replica goes as far from its primary as the workers' labels allow: another zone, else
//! another node (machine), else another host name, else any other worker; among the farthest,
//! by the same cost. On Kubernetes every pod has its own host name, so the node and zone labels
//! are what keep both copies off one spot node or one zone.

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

/// Where a worker runs, coarse to fine. An empty label is unknown: it is neither the same as
/// nor different from anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Domain {
    pub zone: String,
    pub node: String,
    pub host: String,
}

impl Domain {
    pub fn of(worker: &sluice_protocol::pb::WorkerInfo) -> Domain {
        Domain {
            zone: worker.zone.clone(),
            node: worker.node.clone(),
            host: worker.host.clone(),
        }
    }

    /// How far apart two workers are: 3 in different zones, 2 on different nodes, 1 on
    /// different hosts, 0 on one machine as far as the labels tell.
    pub fn separation(&self, other: &Domain) -> u8 {
        let differ = |a: &str, b: &str| !a.is_empty() && !b.is_empty() && a != b;
        if differ(&self.zone, &other.zone) {
            3
        } else if differ(&self.node, &other.node) {
            2
        } else if !self.node.is_empty() && self.node == other.node {
            // One machine, whatever its pods' host names are.
            0
        } else if self.host != other.host {
            1
        } else {
            0
        }
    }
}

/// Picks a replica for each partition whose primary is `primaries[i]`: never the primary's
/// worker, the farthest from it (see [`Domain::separation`]) and among those the cheapest by
/// the same cost as primaries (each primary also counts as load). `None` when there is no other
/// worker. `domains` is indexed like `candidates`.
pub fn place_replicas(
    candidates: &[Candidate],
    domains: &[Domain],
    primaries: &[u32],
) -> Vec<Option<u32>> {
    let n = candidates.len();
    let separation: Vec<u8> = (0..n * n)
        .map(|i| domains[i / n].separation(&domains[i % n]))
        .collect();
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
            let apart = |w: usize| separation[primary * n + w];
            let chosen = (0..n).filter(|w| *w != primary).min_by(|a, b| {
                apart(*b)
                    .cmp(&apart(*a))
                    .then_with(|| cost(&loaded[*a]).total_cmp(&cost(&loaded[*b])))
            })?;
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

    fn host(host: &str) -> Domain {
        Domain {
            host: host.into(),
            ..Domain::default()
        }
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
        let domains = [host("a"), host("a"), host("b"), host("b")];
        let replicas = place_replicas(&candidates, &domains, &primaries);
        for (p, r) in primaries.iter().zip(&replicas) {
            let r = r.unwrap() as usize;
            assert_ne!(domains[*p as usize].host, domains[r].host);
        }
        let counts = tally(&replicas.iter().map(|r| r.unwrap()).collect::<Vec<_>>(), 4);
        assert!(counts.iter().all(|c| (80..=120).contains(c)), "{counts:?}");
        // One worker: no replica possible.
        assert_eq!(
            place_replicas(&candidates[..1], &domains[..1], &[0, 0]),
            vec![None, None]
        );
        // All on one host: another worker on the same host.
        let one_host = vec![host("a"); 4];
        assert!(place_replicas(&candidates, &one_host, &[0])[0].is_some_and(|r| r != 0));
    }

    #[test]
    fn replicas_prefer_another_zone_then_another_node_then_another_host() {
        let label = |zone: &str, node: &str, h: &str| Domain {
            zone: zone.into(),
            node: node.into(),
            host: h.into(),
        };
        let c = Candidate {
            free_bytes: 100,
            active_partitions: 0,
        };
        // Pods with their own host names: 0 and 1 on node n1, 2 on node n2 (all in zone a),
        // 3 in zone b. The cheapest other worker is never enough: 3 is the busiest.
        let mut candidates = vec![c.clone(); 4];
        candidates[3].active_partitions = 1000;
        let domains = [
            label("a", "n1", "pod-0"),
            label("a", "n1", "pod-1"),
            label("a", "n2", "pod-2"),
            label("b", "n3", "pod-3"),
        ];
        let replicas = place_replicas(&candidates, &domains, &[0, 1, 2, 3]);
        // Zone a's primaries go to zone b; zone b's to the cheapest of zone a.
        assert_eq!(replicas, vec![Some(3), Some(3), Some(3), Some(0)]);
        // Without zone labels: another node, never the other pod on the same node.
        let no_zones: Vec<Domain> = domains
            .iter()
            .map(|d| Domain {
                zone: String::new(),
                ..d.clone()
            })
            .collect();
        let replicas = place_replicas(&candidates[..3], &no_zones[..3], &[0, 1, 0, 1]);
        assert_eq!(replicas, vec![Some(2); 4]);
        // Without any labels but host names: another host.
        let hosts = [host("x"), host("x"), host("y")];
        let replicas = place_replicas(&candidates[..3], &hosts, &[0, 1]);
        assert_eq!(replicas, vec![Some(2), Some(2)]);
        // A worker whose zone is unknown is not "another zone".
        let unknown = [
            label("a", "n1", "p0"),
            label("", "n2", "p1"),
            label("b", "n3", "p2"),
        ];
        let mut busy = vec![c; 3];
        busy[2].active_partitions = 1000;
        assert_eq!(place_replicas(&busy, &unknown, &[0]), vec![Some(2)]);
    }

    #[test]
    fn no_candidates_no_placement() {
        assert!(place(&[], 10).is_empty());
    }
}
