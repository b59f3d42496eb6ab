//! Request timeouts that follow each worker's observed latency.
//!
//! Every answered push and fetch adds its round trip to its worker's estimate: a smoothed round
//! trip and its mean deviation, as TCP keeps them (RFC 6298: gains 1/8 and 1/4). A request's
//! timeout is [`TIMEOUT_FACTOR`] times `srtt + 4 * rttvar`, at least `request_timeout_min` and at
//! most `request_timeout`. A worker heard from fast gets a short timeout, so a stalled
//! connection costs seconds rather than a minute; a worker behind a slow or thin link gets a
//! longer one, so its slow answers do not time out into a storm of retries and revives. A worker
//! with no answer yet takes the estimate of every worker this client heard from (one slow link
//! does not move it much), and with none at all the ceiling.
//!
//! Readers also take from the estimate how long to wait on a copy before reading another
//! ([`PeerLatency::hedge_after`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// A timeout is this many times the deviation-padded round trip.
pub const TIMEOUT_FACTOR: u32 = 4;
/// A reader waits at least this long on a copy before it reads another copy in its place.
pub const HEDGE_FLOOR: Duration = Duration::from_millis(500);
/// Round trips counted before an estimate is trusted over the client-wide one.
const MIN_SAMPLES: u32 = 3;
/// The key under which every answer also counts: the client-wide estimate.
const ALL: &str = "";
/// A worker's timeout doubles after each of its requests times out, up to this many times, and
/// is back to its estimate after its next answer (as TCP backs off its retransmission timer).
const MAX_BACKOFF: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Estimate {
    /// Smoothed round trip, seconds.
    srtt: f64,
    /// Mean deviation of the round trip, seconds.
    rttvar: f64,
    samples: u32,
    /// Timeouts since the last answer: each doubles the timeout.
    backoff: u32,
}

impl Estimate {
    fn first(rtt: f64) -> Estimate {
        Estimate {
            srtt: rtt,
            rttvar: rtt / 2.0,
            samples: 1,
            backoff: 0,
        }
    }

    fn add(&mut self, rtt: f64) {
        self.rttvar = 0.75 * self.rttvar + 0.25 * (self.srtt - rtt).abs();
        self.srtt = 0.875 * self.srtt + 0.125 * rtt;
        self.samples = self.samples.saturating_add(1);
        self.backoff = 0;
    }

    /// The padded round trip: `srtt + 4 * rttvar`.
    fn padded(&self) -> Duration {
        Duration::from_secs_f64((self.srtt + 4.0 * self.rttvar).clamp(0.0, 86_400.0))
    }
}

/// Round-trip estimates per worker address, and the timeouts they give.
#[derive(Debug, Default)]
pub struct PeerLatency {
    estimates: Mutex<HashMap<String, Estimate>>,
}

impl PeerLatency {
    /// Counts an answer from `peer` that took `rtt`.
    pub fn observe(&self, peer: &str, rtt: Duration) {
        let rtt = rtt.as_secs_f64();
        let mut estimates = self.estimates.lock().unwrap_or_else(|e| e.into_inner());
        for key in [peer, ALL] {
            match estimates.get_mut(key) {
                Some(estimate) => estimate.add(rtt),
                None => {
                    estimates.insert(key.to_string(), Estimate::first(rtt));
                }
            }
        }
    }

    /// Counts a request to `peer` that timed out: its next timeouts are twice as long, until
    /// it answers.
    pub fn timed_out(&self, peer: &str) {
        let mut estimates = self.estimates.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(estimate) = estimates.get_mut(peer) {
            estimate.backoff = (estimate.backoff + 1).min(MAX_BACKOFF);
        }
    }

    /// The padded round trip of `peer`: its own once it has answered a few times, else the
    /// client-wide one; `None` before any answer. With the backoff of its timeouts.
    fn padded(&self, peer: &str) -> Option<(Duration, u32)> {
        let estimates = self.estimates.lock().unwrap_or_else(|e| e.into_inner());
        let own = estimates.get(peer);
        let backoff = own.map_or(0, |e| e.backoff);
        own.filter(|e| e.samples >= MIN_SAMPLES)
            .or_else(|| estimates.get(ALL))
            .map(|e| (e.padded(), backoff))
    }

    /// The timeout of a request to `peer`: [`TIMEOUT_FACTOR`] times its padded round trip,
    /// doubled per timeout since its last answer, within `[floor, ceiling]`; the ceiling before
    /// any answer.
    pub fn timeout(&self, peer: &str, floor: Duration, ceiling: Duration) -> Duration {
        match self.padded(peer) {
            Some((padded, backoff)) => {
                (padded * TIMEOUT_FACTOR * (1 << backoff)).clamp(floor.min(ceiling), ceiling)
            }
            None => ceiling,
        }
    }

    /// The smoothed round trip of `peer`, once it has answered a few times.
    pub fn srtt(&self, peer: &str) -> Option<Duration> {
        let estimates = self.estimates.lock().unwrap_or_else(|e| e.into_inner());
        estimates
            .get(peer)
            .filter(|e| e.samples >= MIN_SAMPLES)
            .map(|e| Duration::from_secs_f64(e.srtt.clamp(0.0, 86_400.0)))
    }

    /// How long a reader waits on `peer` before it also asks another copy: the padded round
    /// trip, twice, and at least [`HEDGE_FLOOR`].
    pub fn hedge_after(&self, peer: &str) -> Duration {
        self.padded(peer)
            .map_or(HEDGE_FLOOR, |(padded, _)| (padded * 2).max(HEDGE_FLOOR))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: Duration = Duration::from_secs(2);
    const CEILING: Duration = Duration::from_secs(60);
    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_ceiling_until_a_worker_answers_then_the_floor_for_fast_ones() {
        let latency = PeerLatency::default();
        assert_eq!(latency.timeout("a", FLOOR, CEILING), CEILING);
        for _ in 0..10 {
            latency.observe("a", ms(2));
        }
        assert_eq!(latency.timeout("a", FLOOR, CEILING), FLOOR);
        assert_eq!(latency.hedge_after("a"), HEDGE_FLOOR);
        // A worker not heard from yet takes what the others showed.
        assert_eq!(latency.timeout("b", FLOOR, CEILING), FLOOR);
    }

    #[test]
    fn a_slow_link_stretches_its_own_timeout_and_not_the_others() {
        let latency = PeerLatency::default();
        for _ in 0..50 {
            latency.observe("fast", ms(3));
        }
        // A thin link: answers take 0.8 s to 1.6 s.
        for i in 0..20 {
            latency.observe("thin", ms(800 + (i % 5) * 200));
        }
        let thin = latency.timeout("thin", FLOOR, CEILING);
        assert!(thin > ms(4_000) && thin < CEILING, "{thin:?}");
        assert!(latency.hedge_after("thin") > ms(2_000));
        let fast = latency.timeout("fast", FLOOR, CEILING);
        assert_eq!(fast, FLOOR);
        assert_eq!(latency.hedge_after("fast"), HEDGE_FLOOR);
    }

    #[test]
    fn a_round_trip_is_known_after_a_few_answers() {
        let latency = PeerLatency::default();
        latency.observe("a", ms(10));
        assert_eq!(latency.srtt("a"), None);
        latency.observe("a", ms(10));
        latency.observe("a", ms(10));
        assert_eq!(latency.srtt("a"), Some(ms(10)));
    }

    #[test]
    fn timeouts_double_until_the_worker_answers() {
        let latency = PeerLatency::default();
        for _ in 0..5 {
            latency.observe("a", ms(1_000));
        }
        let base = latency.timeout("a", FLOOR, CEILING);
        latency.timed_out("a");
        assert_eq!(
            latency.timeout("a", FLOOR, CEILING),
            (base * 2).min(CEILING)
        );
        for _ in 0..10 {
            latency.timed_out("a");
        }
        assert_eq!(latency.timeout("a", FLOOR, CEILING), CEILING);
        latency.observe("a", ms(1_000));
        assert!(latency.timeout("a", FLOOR, CEILING) < CEILING);
    }

    #[test]
    fn a_floor_above_the_ceiling_gives_the_ceiling() {
        let latency = PeerLatency::default();
        latency.observe("a", ms(1));
        assert_eq!(latency.timeout("a", ms(500), ms(100)), ms(100));
    }
}
