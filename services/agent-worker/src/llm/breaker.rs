//! A circuit breaker per provider: after `threshold` retryable failures in a row, calls fail at
//! once for a cool-down (and say how long is left); after it, one trial call decides whether
//! the provider is back.
//!
//! Our own rather than `failsafe`'s: its rejection does not say when the circuit closes, and
//! that remaining cool-down is what `LlmError::retry_after` must report.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long callers turned away during a trial call are told to wait.
const TRIAL_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cool_down: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    trial_running: bool,
}

/// Permission to call. Dropping it unsettled (the call was cancelled) frees the trial slot.
#[derive(Debug)]
pub(crate) struct Pass<'a> {
    breaker: &'a Breaker,
    trial: bool,
    settled: bool,
}

impl Breaker {
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cool_down,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long the circuit stays open, if it is (a check before queueing for a permit).
    pub fn open_for(&self, now: Instant) -> Option<Duration> {
        let state = self.state();
        let until = state.open_until?;
        (now < until).then(|| until - now)
    }

    /// A pass to call, or how long to wait.
    pub fn admit(&self, now: Instant) -> Result<Pass<'_>, Duration> {
        let mut state = self.state();
        let Some(until) = state.open_until else {
            return Ok(Pass {
                breaker: self,
                trial: false,
                settled: false,
            });
        };
        if now < until {
            return Err(until - now);
        }
        if state.trial_running {
            return Err(TRIAL_WAIT);
        }
        state.trial_running = true;
        Ok(Pass {
            breaker: self,
            trial: true,
            settled: false,
        })
    }
}

impl Pass<'_> {
    /// Records how the call went: `healthy` is any answer from a working server (a success,
    /// or a permanent error such as a 400); not healthy is a retryable failure.
    pub fn settle(mut self, healthy: bool, now: Instant) {
        self.settled = true;
        let breaker = self.breaker;
        let mut state = breaker.state();
        if self.trial {
            state.trial_running = false;
        }
        if healthy {
            *state = State::default();
            return;
        }
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        if self.trial || state.consecutive_failures >= breaker.threshold {
            state.open_until = Some(now + breaker.cool_down);
        }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if self.trial && !self.settled {
            self.breaker.state().trial_running = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL_DOWN: Duration = Duration::from_secs(30);

    #[test]
    fn opens_after_consecutive_failures_and_says_how_long() {
        let breaker = Breaker::new(3, COOL_DOWN);
        let start = Instant::now();
        for _ in 0..2 {
            breaker.admit(start).unwrap().settle(false, start);
        }
        assert!(breaker.admit(start).is_ok(), "two failures keep it closed");
        breaker.admit(start).unwrap().settle(false, start);

        let later = start + Duration::from_secs(10);
        assert_eq!(breaker.admit(later).unwrap_err(), Duration::from_secs(20));
        assert_eq!(breaker.open_for(later), Some(Duration::from_secs(20)));
    }

    #[test]
    fn a_success_resets_the_count() {
        let breaker = Breaker::new(2, COOL_DOWN);
        let now = Instant::now();
        breaker.admit(now).unwrap().settle(false, now);
        breaker.admit(now).unwrap().settle(true, now);
        breaker.admit(now).unwrap().settle(false, now);
        assert!(breaker.admit(now).is_ok());
    }

    #[test]
    fn one_trial_half_opens_it() {
        let breaker = Breaker::new(1, COOL_DOWN);
        let start = Instant::now();
        breaker.admit(start).unwrap().settle(false, start);
        let after = start + COOL_DOWN;

        let trial = breaker.admit(after).unwrap();
        assert_eq!(breaker.admit(after).unwrap_err(), TRIAL_WAIT);
        trial.settle(false, after);
        assert_eq!(
            breaker.admit(after).unwrap_err(),
            COOL_DOWN,
            "a failed trial reopens it"
        );

        let again = after + COOL_DOWN;
        breaker.admit(again).unwrap().settle(true, again);
        assert!(breaker.admit(again).is_ok() && breaker.admit(again).is_ok());
        assert_eq!(breaker.open_for(again), None);
    }

    #[test]
    fn a_cancelled_trial_frees_the_slot() {
        let breaker = Breaker::new(1, COOL_DOWN);
        let start = Instant::now();
        breaker.admit(start).unwrap().settle(false, start);
        let after = start + COOL_DOWN;
        drop(breaker.admit(after).unwrap());
        assert!(breaker.admit(after).is_ok());
    }
}
