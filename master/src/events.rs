//! What happened lately, for operators: a bounded ring of timestamped events (workers joining,
//! lost or leaving, revives, failed commits and data loss, leadership), served as
//! `/api/events` and shown on the status page. Each master keeps its own ring (soft state,
//! like worker liveness): a new leader's ring starts with its election.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Events kept; older ones are dropped.
pub const CAPACITY: usize = 200;

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    WorkerRegistered,
    WorkerLost,
    WorkerDecommissioning,
    /// A draining worker handed copies over to another worker.
    HandedOver,
    /// Partitions moved to a new epoch after a failed push.
    Revive,
    /// Copies that did not commit (a worker lost, a disk failure).
    CommitFailed,
    /// A committed shuffle lacks data its maps reported.
    PartitionsLost,
    /// This master became the serving leader.
    Leader,
    AppExpired,
}

impl Kind {
    /// `info`, `warn` or `error`: how much an operator should care.
    pub fn level(self) -> &'static str {
        match self {
            Kind::WorkerRegistered | Kind::Leader | Kind::AppExpired | Kind::HandedOver => "info",
            Kind::WorkerDecommissioning | Kind::Revive | Kind::CommitFailed => "warn",
            Kind::WorkerLost | Kind::PartitionsLost => "error",
        }
    }
}

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Increases by one per event of this master: a reader asks for what is newer.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The same instant, RFC 3339 in UTC.
    pub at: String,
    pub kind: Kind,
    pub level: &'static str,
    /// The worker or shuffle (`app/shuffle_id`) it concerns, when one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shuffle: Option<String>,
    pub message: String,
}

/// The ring. Its lock is its own, held only to push or copy.
#[derive(Debug, Default)]
pub struct Events {
    ring: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    next_seq: u64,
    events: VecDeque<Event>,
}

impl Events {
    /// Records an event concerning a worker.
    pub fn worker(&self, kind: Kind, worker: &str, message: impl Into<String>) {
        self.push(kind, Some(worker.to_string()), None, message.into());
    }

    /// Records an event concerning a shuffle (`key` as `app/shuffle_id`).
    pub fn shuffle(&self, kind: Kind, key: impl ToString, message: impl Into<String>) {
        self.push(kind, None, Some(key.to_string()), message.into());
    }

    /// Records an event concerning the cluster.
    pub fn cluster(&self, kind: Kind, message: impl Into<String>) {
        self.push(kind, None, None, message.into());
    }

    fn push(&self, kind: Kind, worker: Option<String>, shuffle: Option<String>, message: String) {
        let now = SystemTime::now();
        let at_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let seq = ring.next_seq;
        ring.next_seq += 1;
        if ring.events.len() == CAPACITY {
            ring.events.pop_front();
        }
        ring.events.push_back(Event {
            seq,
            at_ms,
            at: humantime::format_rfc3339_millis(now).to_string(),
            kind,
            level: kind.level(),
            worker,
            shuffle,
            message,
        });
    }

    /// The events newer than `after` (all when `None`), newest first.
    pub fn since(&self, after: Option<u64>) -> Vec<Event> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.events
            .iter()
            .rev()
            .take_while(|e| after.is_none_or(|after| e.seq > after))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_events_newest_first() {
        let events = Events::default();
        for i in 0..CAPACITY + 5 {
            events.worker(Kind::WorkerRegistered, &format!("w{i}"), "registered");
        }
        let all = events.since(None);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].seq, (CAPACITY + 4) as u64);
        assert_eq!(all[CAPACITY - 1].seq, 5);
        assert_eq!(events.since(Some((CAPACITY + 2) as u64)).len(), 2);
        events.shuffle(Kind::PartitionsLost, "app/3", "2 partitions lost");
        let newest = &events.since(None)[0];
        assert_eq!(newest.level, "error");
        assert_eq!(newest.shuffle.as_deref(), Some("app/3"));
        let json = serde_json::to_value(newest).unwrap();
        assert_eq!(json["kind"], "partitions_lost");
        assert!(json["at"].as_str().unwrap().ends_with('Z'), "{json}");
        assert!(json.get("worker").is_none());
    }
}
