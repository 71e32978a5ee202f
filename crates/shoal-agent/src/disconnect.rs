//! `--stop-on-disconnect`: when a node counts as out of touch with the managers, and when a
//! task that asked for it is stopped for that.

use std::time::{Duration, Instant};

/// How long without an answer from the leader before the node counts as out of touch, until
/// an answer says how long the leader itself waits: the managers' own judgement of a node's
/// liveness (heartbeats missed for the grace periods), at the default settings.
pub const THRESHOLD: Duration = Duration::from_millis(
    shoal_api::defaults::HEARTBEAT_PERIOD_MS * shoal_api::defaults::HEARTBEAT_GRACE_PERIODS as u64,
);

/// Since when the node is out of touch, given the leader's `last` answer (None: it never
/// answered, and `started` stands in): the last answer, once it is older than `threshold`.
pub fn out_of_touch_since(
    last: Option<Instant>,
    started: Instant,
    now: Instant,
    threshold: Duration,
) -> Option<Instant> {
    let last = last.unwrap_or(started);
    (now.saturating_duration_since(last) > threshold).then_some(last)
}

/// When a task that stops after `stop_after_ms` out of touch (0: never) is to be stopped.
pub fn stop_at(since: Option<Instant>, stop_after_ms: i64) -> Option<Instant> {
    let after = u64::try_from(stop_after_ms).ok().filter(|ms| *ms > 0)?;
    since.map(|s| s + Duration::from_millis(after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_touch_once_the_last_answer_is_older_than_the_threshold() {
        let t0 = Instant::now();
        let th = Duration::from_secs(3);
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(out_of_touch_since(Some(t0), t0, at(3), th), None, "at the threshold: still in touch");
        assert_eq!(out_of_touch_since(Some(t0), t0, at(4), th), Some(t0), "counted from the last answer");
        assert_eq!(out_of_touch_since(Some(at(5)), t0, at(6), th), None, "a new answer: back in touch");
        assert_eq!(out_of_touch_since(None, at(1), at(5), th), Some(at(1)), "never answered: since the start");
        assert_eq!(out_of_touch_since(None, at(1), at(2), th), None);
    }

    #[test]
    fn a_task_stops_its_setting_after_the_touch_was_lost_and_never_without_one() {
        let t0 = Instant::now();
        assert_eq!(stop_at(Some(t0), 30_000), Some(t0 + Duration::from_secs(30)));
        assert_eq!(stop_at(None, 30_000), None, "in touch");
        assert_eq!(stop_at(Some(t0), 0), None, "not asked for");
        assert_eq!(stop_at(Some(t0), -5), None);
    }
}
