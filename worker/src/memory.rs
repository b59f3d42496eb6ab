//! The worker's memory budget for pushed bytes, and the lease that owns them.
//!
//! A pushed byte has exactly one owner, a [`MemoryLease`]. The push server takes the lease when
//! a frame's head announces `header + body` bytes, before any of them is read; the body is read
//! into an allocation of its own that carries the lease ([`leased_bytes`]), so every zero-copy
//! slice of it (in a partition buffer, in a flush in flight, in a forward to the replica) keeps
//! the lease alive, and the bytes go back to the budget when the last slice is dropped. Nothing
//! is released by hand.
//!
//! Two classes of traffic share the budget: client pushes may fill it, replication forwards
//! (and the master's control frames) may go a quarter above it, so primaries forwarding to each
//! other cannot deadlock on full budgets. A worker holding nothing admits any one frame, so a
//! frame larger than the whole budget cannot wedge it. Whenever usage crosses half the budget,
//! the pressure signal wakes the task that flushes every partition's buffer, so small partitions
//! cannot pin memory. A push that has to wait for memory also has the process give its freed
//! pages back ([`on_budget_full`]): the budget counts pushed bytes, not what the allocator keeps
//! after they are freed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

/// What gives the process's freed memory back to the system, set once by the program that runs
/// the worker (the `sluice` binary purges its allocator's unused pages); nothing when unset.
static RELEASE_FREED: OnceLock<fn()> = OnceLock::new();

/// When [`RELEASE_FREED`] last ran.
static RELEASED_AT: Mutex<Option<Instant>> = Mutex::new(None);

/// How often [`RELEASE_FREED`] runs at most.
const RELEASE_EVERY: Duration = Duration::from_millis(100);

/// Sets what a full budget runs to give freed memory back (at most every 100 ms, while a push
/// waits for memory). The budget counts the bytes pushes hold, not the blocks the allocator
/// keeps after they are freed: without this, a worker whose budget is full could hold as much
/// again in freed pages that its allocator gives back only later. Later calls are ignored.
pub fn on_budget_full(release: fn()) {
    let _ = RELEASE_FREED.set(release);
}

/// Runs [`RELEASE_FREED`] unless it ran in the last [`RELEASE_EVERY`] or runs now.
fn release_freed() {
    let Some(release) = RELEASE_FREED.get() else {
        return;
    };
    let Ok(mut last) = RELEASED_AT.try_lock() else {
        return;
    };
    if last.is_some_and(|at| at.elapsed() < RELEASE_EVERY) {
        return;
    }
    *last = Some(Instant::now());
    release();
}

/// Who is asking for memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A writer's push: admitted up to the budget.
    Client,
    /// A primary's forward to this replica, or a control frame from the master: admitted up to
    /// the budget plus the replication headroom.
    Replication,
}

#[derive(Debug)]
pub struct MemoryBudget {
    budget: u64,
    used: AtomicU64,
    peak: AtomicU64,
    released: Notify,
    pressure: Notify,
}

impl MemoryBudget {
    pub fn new(budget: u64) -> MemoryBudget {
        MemoryBudget {
            budget,
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            released: Notify::new(),
            pressure: Notify::new(),
        }
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// The most ever held at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// What `class` may hold in total.
    pub fn limit(&self, class: Class) -> u64 {
        match class {
            Class::Client => self.budget,
            Class::Replication => self.budget.saturating_add(self.budget / 4),
        }
    }

    /// Takes a lease of `bytes` if it fits under `class`'s limit now (or nothing is held).
    pub fn try_lease(self: &Arc<Self>, bytes: u64, class: Class) -> Option<MemoryLease> {
        let limit = self.limit(class);
        let mut used = self.used();
        loop {
            if used != 0 && used.saturating_add(bytes) > limit {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(self.charged(used + bytes, bytes)),
                Err(now) => used = now,
            }
        }
    }

    /// Takes a lease of `bytes` whatever the budget says: for bytes already held under another
    /// lease that is about to shrink (a small slice copied out of a large frame).
    pub fn lease_now(self: &Arc<Self>, bytes: u64) -> MemoryLease {
        let used = self.used.fetch_add(bytes, Ordering::AcqRel) + bytes;
        self.charged(used, bytes)
    }

    fn charged(self: &Arc<Self>, used: u64, bytes: u64) -> MemoryLease {
        self.peak.fetch_max(used, Ordering::Relaxed);
        if used > self.budget / 2 {
            self.pressure.notify_one();
        }
        MemoryLease {
            budget: self.clone(),
            bytes,
        }
    }

    /// Waits up to `limit` for a lease of `bytes`; `None` when none came in time (answer
    /// `Busy`). While it waits, the caller reads nothing more from its peer.
    pub async fn lease(
        self: &Arc<Self>,
        bytes: u64,
        class: Class,
        limit: Duration,
    ) -> Option<MemoryLease> {
        if let Some(lease) = self.try_lease(bytes, class) {
            return Some(lease);
        }
        self.pressure.notify_one();
        release_freed();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(lease) = self.try_lease(bytes, class) {
                return Some(lease);
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return self.try_lease(bytes, class);
            }
        }
    }

    fn release(&self, bytes: u64) {
        let previous = self.used.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(previous >= bytes, "memory released twice");
        self.released.notify_waiters();
    }

    /// Resolves when usage crossed half the budget (or a waiter asked for memory).
    pub async fn pressure(&self) {
        self.pressure.notified().await
    }
}

/// Bytes of the budget held until dropped.
#[derive(Debug)]
pub struct MemoryLease {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl MemoryLease {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Gives back what `used` does not need: a frame's header, once decoded, is not kept.
    pub fn shrink_to(&mut self, used: u64) {
        if used < self.bytes {
            self.budget.release(self.bytes - used);
            self.bytes = used;
        }
    }
}

impl Drop for MemoryLease {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.release(self.bytes);
        }
    }
}

/// An allocation and the lease that pays for it.
struct Leased {
    bytes: Vec<u8>,
    _lease: MemoryLease,
}

impl AsRef<[u8]> for Leased {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// `bytes` as a `Bytes` whose every slice keeps `lease` alive: the budget gets the memory back
/// when the last slice is dropped, wherever it went.
pub fn leased_bytes(bytes: Vec<u8>, lease: MemoryLease) -> Bytes {
    Bytes::from_owner(Leased {
        bytes,
        _lease: lease,
    })
}

/// A copy of `slice` under a lease of its own, so a small slice of a large frame does not keep
/// the whole frame's allocation (and lease) alive.
pub fn copy_leased(budget: &Arc<MemoryBudget>, slice: &[u8]) -> Bytes {
    let lease = budget.lease_now(slice.len() as u64);
    leased_bytes(slice.to_vec(), lease)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A push that must wait for memory runs the release set with [`on_budget_full`], at most
    /// once per [`RELEASE_EVERY`] however many wait.
    #[tokio::test]
    async fn a_full_budget_gives_freed_memory_back_at_most_every_100ms() {
        static RELEASES: AtomicU64 = AtomicU64::new(0);
        fn count() {
            RELEASES.fetch_add(1, Ordering::Relaxed);
        }
        on_budget_full(count);
        let budget = Arc::new(MemoryBudget::new(100));
        let _fits = budget
            .lease(60, Class::Client, Duration::ZERO)
            .await
            .unwrap();
        // Other tests of this process may run it too, so only "at least" and "not every time".
        tokio::time::sleep(RELEASE_EVERY).await;
        for _ in 0..50 {
            assert!(budget
                .lease(60, Class::Client, Duration::ZERO)
                .await
                .is_none());
        }
        let after_burst = RELEASES.load(Ordering::Relaxed);
        assert!((1..50).contains(&after_burst), "{after_burst} releases");
        tokio::time::sleep(RELEASE_EVERY).await;
        assert!(budget
            .lease(60, Class::Client, Duration::ZERO)
            .await
            .is_none());
        assert!(RELEASES.load(Ordering::Relaxed) > after_burst);
    }

    #[tokio::test]
    async fn a_waiter_gets_its_lease_when_memory_is_released() {
        let budget = Arc::new(MemoryBudget::new(100));
        let held = budget.try_lease(90, Class::Client).unwrap();
        assert!(budget.try_lease(20, Class::Client).is_none());
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move {
                budget
                    .lease(20, Class::Client, Duration::from_secs(30))
                    .await
                    .map(|l| l.bytes())
            }
        });
        tokio::task::yield_now().await;
        drop(held);
        assert_eq!(waiter.await.unwrap(), Some(20));
        assert_eq!(budget.used(), 0, "the waiter's lease was dropped with it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_after_its_limit() {
        let budget = Arc::new(MemoryBudget::new(100));
        let _held = budget.try_lease(150, Class::Client).unwrap();
        assert!(budget
            .lease(1, Class::Client, Duration::from_millis(200))
            .await
            .is_none());
    }

    #[test]
    fn an_empty_worker_admits_anything_and_replication_has_headroom() {
        let budget = Arc::new(MemoryBudget::new(100));
        let huge = budget.try_lease(1 << 30, Class::Client).unwrap();
        assert!(budget.try_lease(1, Class::Replication).is_none());
        drop(huge);
        let _client = budget.try_lease(100, Class::Client).unwrap();
        assert!(budget.try_lease(1, Class::Client).is_none());
        let replica = budget.try_lease(25, Class::Replication).unwrap();
        assert!(budget.try_lease(1, Class::Replication).is_none());
        drop(replica);
        assert_eq!(budget.used(), 100);
        assert_eq!(budget.peak(), 1 << 30);
    }

    #[test]
    fn leased_bytes_are_released_with_their_last_slice() {
        let budget = Arc::new(MemoryBudget::new(1000));
        let lease = budget.try_lease(100, Class::Client).unwrap();
        let frame = leased_bytes(vec![7u8; 100], lease);
        let head = frame.slice(0..10);
        let tail = frame.slice(90..100);
        drop(frame);
        assert_eq!(budget.used(), 100);
        drop(head);
        assert_eq!(budget.used(), 100);
        let copy = copy_leased(&budget, &tail);
        drop(tail);
        assert_eq!(budget.used(), 10, "only the copy is held");
        assert_eq!(&copy[..], &[7u8; 10]);
        drop(copy);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_shrunk_lease_gives_back_the_difference() {
        let budget = Arc::new(MemoryBudget::new(1000));
        let mut lease = budget.try_lease(100, Class::Client).unwrap();
        lease.shrink_to(60);
        assert_eq!(budget.used(), 60);
        drop(lease);
        assert_eq!(budget.used(), 0);
    }
}
