//! Putting the report together at the end of a run: the collected samples, judged.

use crate::collect::{PhaseAcc, Stats};
use crate::config::{Config, Criteria, Load};
use crate::report::{
    CriteriaReport, GeneratorReport, Lag, Latency, Mode, Outcomes, PhaseReport, Report,
    SCHEDULE_CHECK, SCHEMA, SpecChangeReport, Status, TargetReport, Verdict, WindowReport,
    all_pass,
};
use crate::schedule::Schedule;
use crate::verdict;

/// Facts about the run that are not in the samples.
#[derive(Debug, Clone)]
pub(crate) struct RunFacts {
    pub connections_per_target: Vec<usize>,
    pub elapsed_s: f64,
    pub warmup_connect_failures: u64,
    pub aborted: bool,
    pub spec_change: Option<SpecChangeReport>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

fn phase_report(
    plan: &crate::schedule::PhasePlan,
    acc: &PhaseAcc,
    windows: &[WindowReport],
    criteria: &Criteria,
) -> PhaseReport {
    let o = acc.outcomes;
    let span = if o.sent > 0 {
        (acc.last_sent_ns as f64 / 1e9 - plan.start_s).max(plan.duration_s)
    } else {
        plan.duration_s
    };
    let rate = |n: u64, d: f64| if d > 0.0 { n as f64 / d } else { 0.0 };
    let mut p = PhaseReport {
        name: plan.name.clone(),
        kind: plan.kind,
        expect: plan.expect,
        start_s: plan.start_s,
        duration_s: plan.duration_s,
        start_rps: plan.start_rps,
        end_rps: plan.end_rps,
        planned_rps: plan.planned_rps(),
        ceiling_rps: plan.ceiling_rps,
        spec: plan.spec.clone(),
        scheduled: plan.requests,
        outcomes: o,
        unsent: plan.requests.saturating_sub(o.sent),
        achieved_rps: rate(o.sent, span),
        admitted_rps: rate(o.ok_2xx, plan.duration_s),
        latency: Latency::from_us(&acc.latency),
        lag: Lag {
            late_1ms: acc.late_1ms,
            late_10ms: acc.late_10ms,
            p99_ms: if acc.lag.is_empty() {
                0.0
            } else {
                ms(acc.lag.value_at_quantile(0.99))
            },
            max_ms: acc.max_lag_ns as f64 / 1e6,
        },
        verdict: Verdict::default(),
    };
    p.verdict = verdict::judge_phase(&p, windows, criteria);
    p
}

/// Assembles the report from the plan and what was recorded.
pub(crate) fn build(
    config: &Config,
    schedule: &Schedule,
    stats: &Stats,
    facts: RunFacts,
) -> Report {
    let ceiling = config.ceiling();
    let change = config.spec_change();
    let ceiling_at = |t: f64| -> Option<f64> {
        match change {
            Some(ch) if t >= ch.at.as_secs_f64() => Some(ch.ceiling_rps),
            _ => ceiling.map(|c| c.rps),
        }
    };
    let n_windows = stats
        .windows
        .len()
        .max(schedule.duration_s().ceil() as usize);
    let windows: Vec<WindowReport> = (0..n_windows)
        .map(|w| {
            let s = w as f64;
            let planned = schedule.slots_before(s + 1.0) - schedule.slots_before(s);
            let (o, p99) = match stats.windows.get(w) {
                Some(acc) if !acc.latency.is_empty() => {
                    (acc.outcomes, ms(acc.latency.value_at_quantile(0.99)))
                }
                Some(acc) => (acc.outcomes, 0.0),
                None => (Outcomes::default(), 0.0),
            };
            WindowReport {
                second: w as u64,
                planned,
                sent: o.sent,
                ok_2xx: o.ok_2xx,
                throttled_429: o.throttled_429,
                failed: o.failed(),
                p99_ms: p99,
                ceiling_rps: ceiling_at(s + 0.5),
            }
        })
        .collect();
    let phases: Vec<PhaseReport> = schedule
        .phases()
        .iter()
        .zip(&stats.phases)
        .map(|(plan, acc)| phase_report(plan, acc, &windows, &config.criteria))
        .collect();

    let mut lag_all = crate::collect::histogram();
    for acc in &stats.phases {
        lag_all.add(&acc.lag).expect("histograms of the same shape");
    }
    let on_schedule = phases.iter().all(|p| {
        p.verdict
            .checks
            .iter()
            .all(|c| c.name != SCHEDULE_CHECK || c.status == Status::Pass)
    });
    let generator = GeneratorReport {
        on_schedule,
        late_1ms: phases.iter().map(|p| p.lag.late_1ms).sum(),
        late_10ms: phases.iter().map(|p| p.lag.late_10ms).sum(),
        p99_lag_ms: if lag_all.is_empty() {
            0.0
        } else {
            ms(lag_all.value_at_quantile(0.99))
        },
        max_lag_ms: phases.iter().map(|p| p.lag.max_ms).fold(0.0, f64::max),
        unsent: phases.iter().map(|p| p.unsent).sum(),
        warmup_connect_failures: facts.warmup_connect_failures,
        aborted: facts.aborted,
    };
    let targets = config
        .targets
        .iter()
        .zip(&stats.targets)
        .zip(&facts.connections_per_target)
        .map(|((t, o), &c)| TargetReport {
            url: t.url.clone(),
            weight: t.weight,
            connections: c,
            outcomes: *o,
        })
        .collect();
    let mut report = Report {
        schema: SCHEMA.to_string(),
        mode: match config.load {
            Load::Rate { .. } => Mode::Rate,
            Load::Sla(_) => Mode::Sla,
        },
        targets,
        connections: config.connections,
        timeout_ms: config.timeout.as_secs_f64() * 1e3,
        criteria: CriteriaReport {
            success_ratio: config.criteria.success_ratio,
            p99_budget_ms: config.criteria.p99_budget.as_secs_f64() * 1e3,
            tolerance: config.criteria.tolerance,
        },
        ceiling_rps: ceiling.map(|c| c.rps),
        spec: ceiling.and_then(|c| c.spec.clone()),
        planned_duration_s: schedule.duration_s(),
        elapsed_s: facts.elapsed_s,
        phases,
        windows,
        spec_change: facts.spec_change,
        generator,
        all_pass: false,
    };
    report.all_pass = all_pass(&report);
    report
}
