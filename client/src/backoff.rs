//! The wait between retries of one operation: it doubles after every wait, up to a ceiling.

use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Waits `first`, then twice as long each time, never longer than `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            next: first.min(max),
            max,
        }
    }

    /// The delay the next [`Backoff::wait`] sleeps; moves on to the one after.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Sleeps the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_ceiling() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(5), ms(30));
        let delays: Vec<_> = (0..5).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays, vec![ms(5), ms(10), ms(20), ms(30), ms(30)]);
        assert_eq!(Backoff::new(ms(50), ms(20)).next_delay(), ms(20));
    }
}
