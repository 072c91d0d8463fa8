use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::{Gcra, is_full};

#[test]
fn zero_rate_means_unlimited() {
    assert_eq!(Gcra::new(0, 10), None);
}

#[test]
fn burst_is_admitted_then_throttled_until_one_interval() {
    let gcra = Gcra::new(10, 3).expect("limited");
    let now = Instant::now();
    let mut tat = None;
    for _ in 0..3 {
        assert_eq!(gcra.check(&mut tat, now), Ok(()));
    }
    assert_eq!(gcra.check(&mut tat, now), Err(Duration::from_millis(100)));
    assert_eq!(
        gcra.check(&mut tat, now + Duration::from_millis(99)),
        Err(Duration::from_millis(1))
    );
    assert_eq!(gcra.check(&mut tat, now + Duration::from_millis(100)), Ok(()));
    assert!(!is_full(tat, now + Duration::from_millis(100)));
    assert!(is_full(tat, now + Duration::from_millis(400)));
}

#[test]
fn zero_burst_behaves_like_one() {
    let gcra = Gcra::new(1, 0).expect("limited");
    let now = Instant::now();
    let mut tat = None;
    assert_eq!(gcra.check(&mut tat, now), Ok(()));
    assert_eq!(gcra.check(&mut tat, now), Err(Duration::from_secs(1)));
}

proptest! {
    /// The limiter never admits more than `burst + rate * elapsed` in any window.
    #[test]
    fn limiter_never_admits_more_than_burst_plus_rate_times_elapsed(
        rate in 1u32..2_000,
        burst in 1u32..50,
        gaps in proptest::collection::vec(0u64..50_000_000, 1..400),
    ) {
        let gcra = Gcra::new(rate, burst).expect("limited");
        let start = Instant::now();
        let mut tat = None;
        let mut offset = 0u64;
        let mut admitted = Vec::new();
        for gap in gaps {
            offset += gap;
            if gcra.check(&mut tat, start + Duration::from_nanos(offset)).is_ok() {
                admitted.push(offset);
            }
        }
        // Every window [admitted[i], admitted[j]] holds j - i + 1 admissions.
        for i in 0..admitted.len() {
            for j in i..admitted.len() {
                let count = (j - i + 1) as u128;
                let elapsed = u128::from(admitted[j] - admitted[i]);
                let bound = u128::from(burst) * 1_000_000_000 + u128::from(rate) * elapsed;
                prop_assert!(count * 1_000_000_000 <= bound,
                    "{count} admissions in {elapsed} ns (rate {rate}, burst {burst})");
            }
        }
    }

    /// A client that waits the advertised `retry_after` is admitted.
    #[test]
    fn waiting_retry_after_is_enough(rate in 1u32..1_000, burst in 1u32..20) {
        let gcra = Gcra::new(rate, burst).expect("limited");
        let now = Instant::now();
        let mut tat = None;
        for _ in 0..burst {
            prop_assert!(gcra.check(&mut tat, now).is_ok());
        }
        let wait = gcra.check(&mut tat, now).expect_err("bucket is empty");
        prop_assert!(gcra.check(&mut tat, now + wait).is_ok());
    }
}
