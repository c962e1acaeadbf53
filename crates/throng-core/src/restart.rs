//! Restart policies and restart intensity: the bookkeeping a supervisor consults when a child exits.
//!
//! OTP semantics: a supervisor that has to restart children more than `max_restarts` times within
//! `max_seconds` gives up — it stops its remaining children and exits itself — because a child that keeps
//! crashing is better escalated than restarted in a hot loop. The window is a pure value: the caller passes
//! the current (monotonic) time in, so the simulator and property tests can drive it with any clock.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When a child that exited must be restarted (OTP's `restart` child-spec field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum RestartPolicy {
    /// Always restarted, whatever the exit reason.
    #[default]
    Permanent,
    /// Restarted only after an abnormal exit (not after a normal exit or a requested shutdown).
    Transient,
    /// Never restarted.
    Temporary,
}

/// How a child's exit is classified for restart decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExitClass {
    /// The child finished its work and stopped on purpose.
    Normal,
    /// The child stopped because it was asked to shut down.
    Shutdown,
    /// The child panicked, returned an error, or was killed.
    Abnormal,
}

impl RestartPolicy {
    /// Whether a child with this policy must be restarted after an exit of class `exit`.
    pub fn restarts_after(self, exit: ExitClass) -> bool {
        match self {
            RestartPolicy::Permanent => true,
            RestartPolicy::Transient => exit == ExitClass::Abnormal,
            RestartPolicy::Temporary => false,
        }
    }
}

/// Upper bound on `max_restarts`: the window stores one timestamp per allowed restart, so the bound
/// keeps the bookkeeping of a supervisor small and fixed.
pub const MAX_RESTARTS_LIMIT: u32 = 10_000;

/// A restart intensity: at most `max_restarts` restarts within `period`.
///
/// Deserializing validates like [`Intensity::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawIntensity")]
pub struct Intensity {
    max_restarts: u32,
    period: Duration,
}

/// A restart intensity that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntensityError {
    /// `max_restarts` exceeds [`MAX_RESTARTS_LIMIT`].
    #[error("max_restarts {0} exceeds the limit of {MAX_RESTARTS_LIMIT}")]
    TooManyRestarts(u32),
    /// The period is zero while restarts are allowed, which would make the window meaningless.
    #[error("restart period must be positive")]
    ZeroPeriod,
}

#[derive(Deserialize)]
struct RawIntensity {
    max_restarts: u32,
    period: Duration,
}

impl TryFrom<RawIntensity> for Intensity {
    type Error = IntensityError;
    fn try_from(raw: RawIntensity) -> Result<Self, IntensityError> {
        Intensity::new(raw.max_restarts, raw.period)
    }
}

impl Intensity {
    /// At most `max_restarts` restarts within `period`. `max_restarts == 0` means "give up at the first
    /// restart", as in OTP.
    pub fn new(max_restarts: u32, period: Duration) -> Result<Self, IntensityError> {
        if max_restarts > MAX_RESTARTS_LIMIT {
            return Err(IntensityError::TooManyRestarts(max_restarts));
        }
        if period.is_zero() && max_restarts > 0 {
            return Err(IntensityError::ZeroPeriod);
        }
        Ok(Self {
            max_restarts,
            period,
        })
    }

    /// The maximum number of restarts allowed within [`Intensity::period`].
    pub fn max_restarts(&self) -> u32 {
        self.max_restarts
    }

    /// The sliding window over which restarts are counted.
    pub fn period(&self) -> Duration {
        self.period
    }
}

impl Default for Intensity {
    /// OTP's default: 3 restarts in 5 seconds.
    fn default() -> Self {
        Self {
            max_restarts: 3,
            period: Duration::from_secs(5),
        }
    }
}

/// What a supervisor does after a child exit has been recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart the child.
    Restart,
    /// Do not restart the child (its policy says so); forget it.
    Remove,
    /// The restart intensity is exceeded: stop all children and exit.
    GiveUp {
        /// Restarts counted in the window, including the one that exceeded it.
        restarts: u32,
    },
}

/// The sliding window of recent restarts of one supervisor.
#[derive(Debug, Clone)]
pub struct RestartWindow {
    intensity: Intensity,
    /// Times of the restarts inside the window, oldest first; never longer than `max_restarts`.
    restarts: VecDeque<Duration>,
}

impl RestartWindow {
    /// An empty window for `intensity`.
    pub fn new(intensity: Intensity) -> Self {
        Self {
            intensity,
            restarts: VecDeque::new(),
        }
    }

    /// The intensity this window enforces.
    pub fn intensity(&self) -> Intensity {
        self.intensity
    }

    /// Restarts currently counted in the window (as of the last call to [`RestartWindow::on_exit`]).
    pub fn len(&self) -> usize {
        self.restarts.len()
    }

    /// Whether no restart is counted.
    pub fn is_empty(&self) -> bool {
        self.restarts.is_empty()
    }

    /// Record that a child with `policy` exited with `exit` at monotonic time `now`, and decide.
    ///
    /// A restart at time `t` counts while `now - t < period`. `now` earlier than a recorded time (a
    /// clock that went backwards) is treated as equal to it, so the window never panics on time input.
    pub fn on_exit(
        &mut self,
        policy: RestartPolicy,
        exit: ExitClass,
        now: Duration,
    ) -> RestartDecision {
        if !policy.restarts_after(exit) {
            return RestartDecision::Remove;
        }
        let period = self.intensity.period;
        while let Some(&oldest) = self.restarts.front() {
            if now.saturating_sub(oldest) >= period {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        let counted = self.restarts.len() as u32 + 1;
        if counted > self.intensity.max_restarts {
            return RestartDecision::GiveUp { restarts: counted };
        }
        self.restarts.push_back(now);
        RestartDecision::Restart
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    #[test]
    fn policies() {
        use ExitClass::*;
        use RestartPolicy::*;
        assert!(Permanent.restarts_after(Normal) && Permanent.restarts_after(Abnormal));
        assert!(!Transient.restarts_after(Normal) && !Transient.restarts_after(Shutdown));
        assert!(Transient.restarts_after(Abnormal));
        assert!(!Temporary.restarts_after(Abnormal));
    }

    #[test]
    fn three_in_five_seconds() {
        let mut w = RestartWindow::new(Intensity::default());
        let p = RestartPolicy::Permanent;
        let a = ExitClass::Abnormal;
        assert_eq!(w.on_exit(p, a, s(0)), RestartDecision::Restart);
        assert_eq!(w.on_exit(p, a, s(1000)), RestartDecision::Restart);
        assert_eq!(w.on_exit(p, a, s(2000)), RestartDecision::Restart);
        assert_eq!(
            w.on_exit(p, a, s(4999)),
            RestartDecision::GiveUp { restarts: 4 }
        );
    }

    #[test]
    fn old_restarts_leave_the_window() {
        let mut w = RestartWindow::new(Intensity::default());
        let p = RestartPolicy::Permanent;
        let a = ExitClass::Abnormal;
        for t in [0, 1000, 2000] {
            assert_eq!(w.on_exit(p, a, s(t)), RestartDecision::Restart);
        }
        // The restart at 0 is exactly `period` old at 5000 and no longer counts.
        assert_eq!(w.on_exit(p, a, s(5000)), RestartDecision::Restart);
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn zero_restarts_gives_up_at_once() {
        let mut w = RestartWindow::new(Intensity::new(0, s(0)).unwrap());
        assert_eq!(
            w.on_exit(RestartPolicy::Permanent, ExitClass::Abnormal, s(10)),
            RestartDecision::GiveUp { restarts: 1 }
        );
        // A child that needs no restart never counts.
        assert_eq!(
            w.on_exit(RestartPolicy::Temporary, ExitClass::Abnormal, s(10)),
            RestartDecision::Remove
        );
    }

    #[test]
    fn bad_intensity() {
        assert_eq!(Intensity::new(1, s(0)), Err(IntensityError::ZeroPeriod));
        assert!(matches!(
            Intensity::new(MAX_RESTARTS_LIMIT + 1, s(1)),
            Err(IntensityError::TooManyRestarts(_))
        ));
    }

    #[test]
    fn clock_going_backwards_does_not_panic() {
        let mut w = RestartWindow::new(Intensity::default());
        let p = RestartPolicy::Permanent;
        let a = ExitClass::Abnormal;
        assert_eq!(w.on_exit(p, a, s(10_000)), RestartDecision::Restart);
        assert_eq!(w.on_exit(p, a, s(0)), RestartDecision::Restart);
    }
}
