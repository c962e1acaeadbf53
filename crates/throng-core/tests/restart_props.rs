//! Laws of the restart-intensity window, checked against a brute-force model.

use std::time::Duration;

use proptest::prelude::*;
use throng_core::restart::{ExitClass, Intensity, RestartDecision, RestartPolicy, RestartWindow};

proptest! {
    /// The window decides exactly as the definition says: a restart at `now` is allowed iff fewer than
    /// `max` accepted restarts happened in `(now - period, now]`. The model recomputes that from the
    /// full history every time.
    #[test]
    fn window_matches_model(
        max in 0u32..6,
        period_ms in 1u64..2_000,
        gaps in proptest::collection::vec(0u64..1_500, 1..60),
    ) {
        let intensity = Intensity::new(max, Duration::from_millis(period_ms)).unwrap();
        let mut window = RestartWindow::new(intensity);
        let mut accepted: Vec<u64> = Vec::new();
        let mut now = 0u64;
        for gap in gaps {
            now += gap;
            let in_window = accepted.iter().filter(|&&t| now - t < period_ms).count() as u32;
            let decision = window.on_exit(RestartPolicy::Permanent, ExitClass::Abnormal, Duration::from_millis(now));
            if in_window < max {
                prop_assert_eq!(decision, RestartDecision::Restart);
                accepted.push(now);
            } else {
                prop_assert_eq!(decision, RestartDecision::GiveUp { restarts: in_window + 1 });
                // A supervisor that gave up exits; the model stops here like it would.
                break;
            }
            prop_assert!(window.len() as u32 <= max);
        }
    }

    /// Exits that need no restart never consume the budget.
    #[test]
    fn no_restart_no_budget(n in 0usize..100) {
        let mut window = RestartWindow::new(Intensity::new(1, Duration::from_secs(1)).unwrap());
        for i in 0..n {
            let d = window.on_exit(RestartPolicy::Transient, ExitClass::Normal, Duration::from_millis(i as u64));
            prop_assert_eq!(d, RestartDecision::Remove);
        }
        prop_assert!(window.is_empty());
    }
}
