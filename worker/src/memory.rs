//! The worker's memory budget for partition buffers.
//!
//! Bytes are counted from the moment a push frame is read until the flush that wrote them
//! completes. Connection loops call [`MemoryBudget::wait_below`] before reading the next push, so
//! a worker over budget stops reading (TCP backpressure) and, if memory does not come back in
//! time, answers `Busy`. Whenever usage crosses half the budget the pressure signal wakes the
//! task that flushes every partition's buffer, so small partitions cannot pin memory forever.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Debug)]
pub struct MemoryBudget {
    budget: u64,
    used: AtomicU64,
    released: Notify,
    pressure: Notify,
}

impl MemoryBudget {
    pub fn new(budget: u64) -> MemoryBudget {
        MemoryBudget {
            budget,
            used: AtomicU64::new(0),
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

    /// Counts `bytes` as held. Always succeeds: the bytes are already in memory.
    pub fn acquire(&self, bytes: u64) {
        let used = self.used.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if used > self.budget / 2 {
            self.pressure.notify_one();
        }
    }

    pub fn release(&self, bytes: u64) {
        let previous = self.used.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(previous >= bytes, "memory released twice");
        self.released.notify_waiters();
    }

    /// Whether a new push may be admitted now. An empty worker admits any push, so one frame
    /// larger than the whole budget cannot wedge it.
    pub fn has_room(&self) -> bool {
        let used = self.used();
        used == 0 || used < self.budget
    }

    /// Whether replication traffic may still be admitted: a quarter of the budget above it.
    pub fn has_headroom(&self) -> bool {
        self.used() < self.budget + self.budget / 4
    }

    /// Waits up to `limit` for room; returns whether there is room.
    pub async fn wait_below(&self, limit: Duration) -> bool {
        if self.has_room() {
            return true;
        }
        self.pressure.notify_one();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let released = self.released.notified();
            if self.has_room() {
                return true;
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return self.has_room();
            }
        }
    }

    /// Resolves when usage crossed half the budget (or a waiter asked for memory).
    pub async fn pressure(&self) {
        self.pressure.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_gets_room_when_memory_is_released() {
        let budget = std::sync::Arc::new(MemoryBudget::new(100));
        budget.acquire(150);
        assert!(!budget.has_room());
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.wait_below(Duration::from_secs(30)).await }
        });
        tokio::task::yield_now().await;
        budget.release(100);
        assert!(waiter.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_after_its_limit() {
        let budget = MemoryBudget::new(100);
        budget.acquire(150);
        assert!(!budget.wait_below(Duration::from_millis(200)).await);
    }

    #[test]
    fn an_empty_worker_admits_anything() {
        let budget = MemoryBudget::new(1);
        assert!(budget.has_room());
        budget.acquire(1 << 30);
        assert!(!budget.has_room());
        budget.release(1 << 30);
        assert!(budget.has_room());
    }
}
