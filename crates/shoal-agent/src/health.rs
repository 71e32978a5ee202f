//! Health checks with Docker's semantics, as pure decisions: which command a check runs, when
//! the next one is due, and what a result does to a task's health. The controller runs them
//! (containerd exec) and reports the health with the task's status.
//!
//! - `CMD args...` runs the arguments, `CMD-SHELL cmd` runs `/bin/sh -c cmd`, `NONE` (or no test)
//!   disables the check. Defaults: interval 30 s, timeout 30 s, 3 retries, no start period; the
//!   start interval (5 s) applies while the task is still starting within its start period.
//! - A task starts `STARTING`; a passing check makes it `HEALTHY`; `retries` failing checks in a
//!   row make it `UNHEALTHY` (the controller then stops it, and it fails). Failures during the
//!   start period do not count while the task has never been healthy.
//! - The last 5 results are kept, each output cut to 4 KiB.
//! - The image's `HEALTHCHECK` applies as in Docker: a service without a check of its own runs
//!   the image's; one whose check has no test takes the image's test; any setting left at zero
//!   takes the image's; `NONE` turns either off.

use std::time::Duration;

use shoal_api::v1::{health, Health, HealthConfig, HealthResult};

/// Results kept.
pub const LOG_LEN: usize = 5;
/// Output kept per result.
pub const OUTPUT_MAX: usize = 4096;

/// A health check as the controller runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The command.
    pub command: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
    pub start_interval: Duration,
}

fn ms(v: i64, default: Duration) -> Duration {
    if v > 0 {
        Duration::from_millis(v as u64)
    } else {
        default
    }
}

/// The check a task runs: its spec's `own`, completed from its image's `image` check.
pub fn merge(own: Option<&HealthConfig>, image: Option<&HealthConfig>) -> Option<HealthConfig> {
    let (mut own, image) = match (own, image) {
        (None, image) => return image.cloned(),
        (Some(own), None) => return Some(own.clone()),
        (Some(own), Some(image)) => (own.clone(), image),
    };
    if own.test.is_empty() {
        own.test = image.test.clone();
    }
    for (mine, theirs) in [
        (&mut own.interval_ms, image.interval_ms),
        (&mut own.timeout_ms, image.timeout_ms),
        (&mut own.start_period_ms, image.start_period_ms),
        (&mut own.start_interval_ms, image.start_interval_ms),
    ] {
        if *mine == 0 {
            *mine = theirs;
        }
    }
    if own.retries == 0 {
        own.retries = image.retries;
    }
    Some(own)
}

/// The check a task runs, if any.
pub fn probe_of(cfg: Option<&HealthConfig>) -> Option<Probe> {
    let cfg = cfg?;
    let command = match cfg.test.split_first() {
        Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
        Some((kind, rest)) if kind == "CMD-SHELL" && !rest.is_empty() => {
            vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
        }
        _ => return None,
    };
    Some(Probe {
        command,
        interval: ms(cfg.interval_ms, Duration::from_secs(30)),
        timeout: ms(cfg.timeout_ms, Duration::from_secs(30)),
        retries: if cfg.retries == 0 { 3 } else { cfg.retries },
        start_period: ms(cfg.start_period_ms, Duration::ZERO),
        start_interval: ms(cfg.start_interval_ms, Duration::from_secs(5)),
    })
}

/// A task's health when it starts running at `now_ms`.
pub fn starting(now_ms: i64) -> Health {
    Health { status: health::Status::Starting as i32, failing_streak: 0, log: Vec::new(), since_ms: now_ms }
}

/// How long after the last check (or the start, `running_for` ago) the next one is due.
pub fn next_delay(h: &Health, p: &Probe, running_for: Duration) -> Duration {
    if h.status() == health::Status::Starting && running_for < p.start_period {
        p.start_interval.min(p.interval)
    } else {
        p.interval
    }
}

/// The health after `result`, for a task running since `started_ms`. Pure.
pub fn record(h: &Health, p: &Probe, mut result: HealthResult, started_ms: i64) -> Health {
    if result.output.len() > OUTPUT_MAX {
        let mut cut = OUTPUT_MAX;
        while !result.output.is_char_boundary(cut) {
            cut -= 1;
        }
        result.output.truncate(cut);
    }
    let mut next = h.clone();
    let in_start_period =
        result.start_ms.saturating_sub(started_ms) < i64::try_from(p.start_period.as_millis()).unwrap_or(i64::MAX);
    let mut status = h.status();
    if result.exit_code == 0 {
        next.failing_streak = 0;
        status = health::Status::Healthy;
    } else if !(in_start_period && status == health::Status::Starting) {
        next.failing_streak += 1;
        if next.failing_streak >= p.retries {
            status = health::Status::Unhealthy;
        }
    }
    if status != h.status() {
        next.status = status as i32;
        next.since_ms = result.end_ms;
    }
    next.log.push(result);
    if next.log.len() > LOG_LEN {
        let extra = next.log.len() - LOG_LEN;
        next.log.drain(..extra);
    }
    next
}

/// Runs one check in container `id` (containerd exec), bounded by the probe's timeout: what
/// it printed (stdout then stderr, at most [`OUTPUT_MAX`]) and its exit code (-1 when it could
/// not run or timed out).
pub async fn check(runtime: &dyn shoal_runtime::ContainerRuntime, id: &str, p: &Probe) -> HealthResult {
    use tokio::io::AsyncReadExt;
    let start_ms = wall_ms();
    let spec = shoal_runtime::ExecSpec { args: p.command.clone(), tty: false, stdin: false, width: 0, height: 0 };
    // Starting the process is bounded by the timeout too: a busy runtime must not hold the
    // check (and with it the task's health) indefinitely.
    let started = tokio::time::timeout(p.timeout, runtime.exec(id, &spec)).await;
    let proc = match started
        .unwrap_or_else(|_| Err(shoal_runtime::RuntimeError::Io("the runtime did not start it in time".into())))
    {
        Ok(proc) => proc,
        Err(e) => {
            return HealthResult {
                start_ms,
                end_ms: wall_ms(),
                exit_code: -1,
                output: format!("cannot run the check: {e}"),
            };
        }
    };
    let exec_id = proc.exec_id.clone();
    // The pipes may stay open after the process ended: they are read while it runs, and for a
    // moment after.
    let read = |r: Box<dyn tokio::io::AsyncRead + Send + Unpin>, buf: std::sync::Arc<std::sync::Mutex<Vec<u8>>>| async move {
        let mut r = r.take(OUTPUT_MAX as u64);
        let mut chunk = [0u8; 1024];
        while let Ok(n) = r.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            buf.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&chunk[..n]);
        }
    };
    let (out, err) = (
        std::sync::Arc::new(std::sync::Mutex::new(Vec::new())),
        std::sync::Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    let mut readers = tokio::task::JoinSet::new();
    readers.spawn(read(proc.stdout, out.clone()));
    if let Some(e) = proc.stderr {
        readers.spawn(read(e, err.clone()));
    }
    let run = async {
        let code = runtime.exec_wait(id, &exec_id).await.map(|e| e.code).unwrap_or(-1);
        let _ = tokio::time::timeout(Duration::from_millis(50), async { while readers.join_next().await.is_some() {} })
            .await;
        readers.abort_all();
        let take = |b: &std::sync::Arc<std::sync::Mutex<Vec<u8>>>| {
            std::mem::take(&mut *b.lock().unwrap_or_else(|e| e.into_inner()))
        };
        (take(&out), take(&err), code)
    };
    let (output, exit_code) = match tokio::time::timeout(p.timeout, run).await {
        Ok((mut out, err, code)) => {
            out.extend(err);
            (String::from_utf8_lossy(&out).into_owned(), code)
        }
        Err(_) => (
            format!("the check timed out after {}", shoal_api::units::format_duration_ms(p.timeout.as_millis() as i64)),
            -1,
        ),
    };
    runtime.exec_remove(id, &exec_id).await;
    HealthResult { start_ms, end_ms: wall_ms(), exit_code, output }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A health status as people read it.
pub fn status_name(s: health::Status) -> &'static str {
    match s {
        health::Status::None => "none",
        health::Status::Starting => "starting",
        health::Status::Healthy => "healthy",
        health::Status::Unhealthy => "unhealthy",
    }
}

/// What the last result said, for the task's error when it turned unhealthy.
pub fn last_output(h: &Health) -> String {
    h.log.last().map(|r| r.output.trim().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_check_fills_what_the_spec_leaves_out() {
        let image = HealthConfig {
            test: vec!["CMD".into(), "true".into()],
            interval_ms: 2_000,
            retries: 5,
            ..Default::default()
        };
        assert_eq!(merge(None, Some(&image)), Some(image.clone()), "no check of its own: the image's");
        let own = HealthConfig { interval_ms: 500, ..Default::default() };
        let merged = merge(Some(&own), Some(&image)).expect("merged");
        assert_eq!((merged.test.clone(), merged.interval_ms, merged.retries), (image.test.clone(), 500, 5));
        let none = HealthConfig { test: vec!["NONE".into()], ..Default::default() };
        assert_eq!(
            merge(Some(&none), Some(&image)).as_ref().and_then(|h| probe_of(Some(h))),
            None,
            "NONE turns it off"
        );
        let shell = HealthConfig { test: vec!["CMD-SHELL".into(), "false".into()], ..Default::default() };
        assert_eq!(merge(Some(&shell), Some(&image)).map(|h| (h.test, h.interval_ms)), Some((shell.test, 2_000)));
        assert_eq!(merge(None, None), None);
    }

    fn probe() -> Probe {
        probe_of(Some(&HealthConfig {
            test: vec!["CMD-SHELL".into(), "wget -q -O- localhost".into()],
            interval_ms: 1_000,
            retries: 2,
            start_period_ms: 5_000,
            ..Default::default()
        }))
        .expect("a probe")
    }

    fn result(at: i64, code: i32) -> HealthResult {
        HealthResult { start_ms: at, end_ms: at + 10, exit_code: code, output: format!("check at {at}") }
    }

    #[test]
    fn tests_become_commands_and_none_disables() {
        assert_eq!(probe().command, ["/bin/sh", "-c", "wget -q -O- localhost"]);
        let cmd = probe_of(Some(&HealthConfig { test: vec!["CMD".into(), "true".into()], ..Default::default() }));
        assert_eq!(cmd.as_ref().map(|p| p.command.clone()), Some(vec!["true".to_string()]));
        assert_eq!(
            cmd.map(|p| (p.interval, p.timeout, p.retries)),
            Some((Duration::from_secs(30), Duration::from_secs(30), 3))
        );
        assert_eq!(probe_of(Some(&HealthConfig { test: vec!["NONE".into()], ..Default::default() })), None);
        assert_eq!(probe_of(Some(&HealthConfig::default())), None);
        assert_eq!(probe_of(None), None);
    }

    #[test]
    fn failures_in_the_start_period_do_not_count_then_retries_make_it_unhealthy() {
        let p = probe();
        let mut h = starting(0);
        h = record(&h, &p, result(1_000, 1), 0);
        h = record(&h, &p, result(2_000, 1), 0);
        assert_eq!((h.status(), h.failing_streak), (health::Status::Starting, 0), "in the start period");
        h = record(&h, &p, result(6_000, 1), 0);
        assert_eq!((h.status(), h.failing_streak), (health::Status::Starting, 1));
        h = record(&h, &p, result(7_000, 0), 0);
        assert_eq!((h.status(), h.failing_streak, h.since_ms), (health::Status::Healthy, 0, 7_010));
        h = record(&h, &p, result(8_000, 1), 0);
        assert_eq!(h.status(), health::Status::Healthy, "one failure of 2 allowed");
        h = record(&h, &p, result(9_000, 1), 0);
        assert_eq!((h.status(), h.since_ms), (health::Status::Unhealthy, 9_010));
        assert_eq!(h.log.len(), LOG_LEN);
        assert_eq!(h.log.first().map(|r| r.start_ms), Some(2_000), "the oldest results go");
        assert_eq!(last_output(&h), "check at 9000");
    }

    #[test]
    fn a_healthy_task_that_fails_in_its_start_period_counts() {
        let p = probe();
        let h = record(&starting(0), &p, result(500, 0), 0);
        let h = record(&h, &p, result(1_000, 1), 0);
        assert_eq!(h.failing_streak, 1, "it was healthy once: failures count");
    }

    #[test]
    fn output_is_kept_to_4_kib_and_checks_come_faster_while_starting() {
        let p = probe();
        let big = HealthResult { output: "é".repeat(3_000), ..result(0, 0) };
        let h = record(&starting(0), &p, big, 0);
        assert!(h.log[0].output.len() <= OUTPUT_MAX);
        let p = Probe { start_interval: Duration::from_millis(200), ..p };
        assert_eq!(next_delay(&starting(0), &p, Duration::from_secs(1)), Duration::from_millis(200));
        assert_eq!(next_delay(&starting(0), &p, Duration::from_secs(6)), Duration::from_secs(1));
        assert_eq!(next_delay(&h, &p, Duration::from_secs(1)), Duration::from_secs(1), "healthy: the interval");
    }
}
