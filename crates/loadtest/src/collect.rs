//! The collector: one task that owns every histogram and counter. Workers send it one
//! [`Sample`] per request over a channel, so recording never contends on a lock; it also
//! prints the live progress line.

use crate::client::Outcome;
use crate::report::Outcomes;
use crate::schedule::Schedule;
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Instant, MissedTickBehavior};

/// One finished request. Times are nanoseconds since the run's start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub phase: u32,
    pub target: u32,
    /// When the schedule said to send it.
    pub scheduled_ns: u64,
    /// When it was actually handed to the connection.
    pub sent_ns: u64,
    /// When the response was complete (or the request failed).
    pub done_ns: u64,
    pub outcome: Outcome,
}

impl Sample {
    /// Latency as the client of an open system sees it: from the scheduled send time.
    pub fn latency_ns(&self) -> u64 {
        self.done_ns.saturating_sub(self.scheduled_ns)
    }

    /// How late the generator sent it.
    pub fn lag_ns(&self) -> u64 {
        self.sent_ns.saturating_sub(self.scheduled_ns)
    }
}

/// Largest latency recorded exactly, in microseconds (one hour); larger values saturate.
const MAX_US: u64 = 3_600_000_000;
/// Per-window histograms are coarser (2 significant digits, up to a minute) to stay small.
const WINDOW_MAX_US: u64 = 60_000_000;

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

fn window_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, WINDOW_MAX_US, 2).expect("valid histogram bounds")
}

fn us(ns: u64) -> u64 {
    (ns / 1_000).max(1)
}

/// Thresholds for "sent late".
pub(crate) const LATE_1MS_NS: u64 = 1_000_000;
pub(crate) const LATE_10MS_NS: u64 = 10_000_000;

/// Everything recorded about one phase.
#[derive(Debug)]
pub(crate) struct PhaseAcc {
    pub outcomes: Outcomes,
    /// Microseconds from scheduled send to completion.
    pub latency: Histogram<u64>,
    /// Microseconds from scheduled to actual send.
    pub lag: Histogram<u64>,
    pub late_1ms: u64,
    pub late_10ms: u64,
    pub max_lag_ns: u64,
    pub last_sent_ns: u64,
}

impl PhaseAcc {
    fn new() -> PhaseAcc {
        PhaseAcc {
            outcomes: Outcomes::default(),
            latency: histogram(),
            lag: histogram(),
            late_1ms: 0,
            late_10ms: 0,
            max_lag_ns: 0,
            last_sent_ns: 0,
        }
    }
}

/// Everything recorded about one second of the run, by actual send time.
#[derive(Debug)]
pub(crate) struct WindowAcc {
    pub outcomes: Outcomes,
    pub latency: Histogram<u32>,
}

/// All a run recorded.
#[derive(Debug)]
pub(crate) struct Stats {
    pub phases: Vec<PhaseAcc>,
    pub windows: Vec<WindowAcc>,
    pub targets: Vec<Outcomes>,
}

impl Stats {
    pub(crate) fn new(phases: usize, targets: usize) -> Stats {
        Stats {
            phases: (0..phases).map(|_| PhaseAcc::new()).collect(),
            windows: Vec::new(),
            targets: vec![Outcomes::default(); targets],
        }
    }

    pub(crate) fn record(&mut self, s: &Sample) {
        let lag = s.lag_ns();
        let lat = s.latency_ns();
        let p = &mut self.phases[s.phase as usize];
        p.outcomes.add(s.outcome);
        p.latency.saturating_record(us(lat));
        p.lag.saturating_record(us(lag));
        p.late_1ms += u64::from(lag > LATE_1MS_NS);
        p.late_10ms += u64::from(lag > LATE_10MS_NS);
        p.max_lag_ns = p.max_lag_ns.max(lag);
        p.last_sent_ns = p.last_sent_ns.max(s.sent_ns);
        self.targets[s.target as usize].add(s.outcome);
        let w = (s.sent_ns / 1_000_000_000) as usize;
        while self.windows.len() <= w {
            self.windows.push(WindowAcc {
                outcomes: Outcomes::default(),
                latency: window_histogram(),
            });
        }
        let win = &mut self.windows[w];
        win.outcomes.add(s.outcome);
        win.latency.saturating_record(us(lat).min(WINDOW_MAX_US));
    }
}

/// What the progress line shows for the last second.
struct Live {
    outcomes: Outcomes,
    latency: Histogram<u32>,
    late_10ms: u64,
}

impl Live {
    fn new() -> Live {
        Live {
            outcomes: Outcomes::default(),
            latency: window_histogram(),
            late_10ms: 0,
        }
    }

    fn record(&mut self, s: &Sample) {
        self.outcomes.add(s.outcome);
        self.latency
            .saturating_record(us(s.latency_ns()).min(WINDOW_MAX_US));
        self.late_10ms += u64::from(s.lag_ns() > LATE_10MS_NS);
    }
}

/// Receives samples until every worker has dropped its sender; prints a progress line to
/// stderr once a second when `progress` is set.
pub(crate) async fn collect(
    mut rx: UnboundedReceiver<Sample>,
    schedule: Arc<Schedule>,
    t0: Instant,
    progress: bool,
    targets: usize,
) -> Stats {
    let mut stats = Stats::new(schedule.phases().len(), targets);
    let mut live = Live::new();
    let mut buf = Vec::with_capacity(1024);
    let mut tick = tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut buf, 1024) => {
                if n == 0 {
                    break;
                }
                for s in buf.drain(..) {
                    stats.record(&s);
                    if progress {
                        live.record(&s);
                    }
                }
            }
            _ = tick.tick(), if progress => {
                let t = t0.elapsed().as_secs_f64();
                eprintln!("{}", progress_line(&schedule, t, &live));
                live = Live::new();
            }
        }
    }
    stats
}

fn progress_line(schedule: &Schedule, t: f64, live: &Live) -> String {
    let o = &live.outcomes;
    let phase = if t < schedule.duration_s() {
        schedule.phases()[schedule.phase_at(t)].name.as_str()
    } else {
        "draining"
    };
    let p99 = if o.sent > 0 {
        format!("{:.2}ms", live.latency.value_at_quantile(0.99) as f64 / 1e3)
    } else {
        "-".to_string()
    };
    let mut line = format!(
        "{t:7.1}s  {phase:<24} target {:>7.0}/s  done {:>7}/s  admitted {:>7}/s  throttled {:>6}/s  errors {:>5}/s  p99 {p99}",
        schedule.rate_at(t - 0.5),
        o.sent,
        o.ok_2xx,
        o.throttled_429,
        o.failed(),
    );
    if live.late_10ms > 0 {
        line.push_str(&format!("  BEHIND: {} sent >10ms late", live.late_10ms));
    }
    line
}
