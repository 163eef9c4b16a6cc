//! An open-loop HTTP load generator with SLA verdicts.
//!
//! This crate owns load generation against the gateway's data plane and the judgement of the
//! result: the send schedule, keep-alive HTTP/1.1 connections spread over weighted targets,
//! latency and outcome accounting in HDR histograms, the SLA verdicts per phase, the live
//! progress line, and the JSON and SVG reports. It does not talk to the admin API: a mid-run
//! spec change goes through a [`SpecChanger`] that the caller supplies.
//!
//! **Open loop.** Request `i` is due at `t0 + offset(i)` whatever happened to the requests
//! before it, and its latency is measured from that scheduled instant, not from when it was
//! actually sent. A server that stalls for a second therefore shows a second of latency on
//! every request scheduled during the stall, not only on the few that were in flight (no
//! coordinated omission). How late the generator itself sent is reported separately (requests
//! sent more than 1 ms and 10 ms late, p99 and max lag), so it never silently sends less.
//!
//! **Shape.** One pacer thread walks the schedule and releases each
//! slot at its instant, with the OS's fine-grained sleep rather than tokio's 1 ms timer wheel,
//! into its target's queue; slots are spread over targets by smooth weighted round robin
//! ([`TargetMap`]). Worker tasks each own one keep-alive connection to one target and take the
//! next released slot of that target when they are free. Each finished request goes as a
//! sample over a channel to a single collector task that owns every histogram. Every loop is
//! bounded: the schedule has a fixed number of slots, workers take none after the planned end
//! plus a grace period, each request has a timeout, and the run has a hard deadline.
//!
//! Entry points: [`run`] (a [`Config`] in, a [`Report`] out) for tests and programs, and
//! [`run_cli`] with [`LoadtestArgs`] for `gatewayctl loadtest`.

mod assemble;
mod cli;
mod client;
mod collect;
mod config;
mod pacer;
mod report;
mod schedule;
mod svg;
mod verdict;

pub use cli::{LoadtestArgs, run_cli};
pub use client::Outcome;
pub use config::{
    Ceiling, Config, Criteria, Load, SlaLoad, SpecChange, Stop, Target, parse_duration,
};
pub use report::{Check, Status, Verdict};
pub use report::{
    CriteriaReport, GeneratorReport, Lag, Latency, Mode, Outcomes, PhaseReport, Report, SCHEMA,
    SpecChangeReport, TargetReport, WindowReport, all_pass,
};
pub use schedule::{Expectation, PhaseKind, PhasePlan, Schedule, TargetMap, split_connections};
pub use svg::render as render_svg;
pub use verdict::judge_phase;

use client::{Conn, Endpoint};
use collect::Sample;
use config::ParsedUrl;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Why a run could not start or its report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    #[error("invalid load test: {0}")]
    Invalid(String),
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    #[error("cannot resolve target '{target}': {reason}")]
    Resolve { target: String, reason: String },
    #[error("--modify-spec-at needs a spec changer wired to the admin API, and none was given")]
    NoSpecChanger,
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot encode the report: {0}")]
    Json(#[from] serde_json::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl LoadtestError {
    pub(crate) fn invalid(msg: impl Into<String>) -> LoadtestError {
        LoadtestError::Invalid(msg.into())
    }
}

/// A boxed, sendable future, as returned by [`SpecChanger::change`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Changes the instance's spec mid-run (the caller wires it to `ModifyInstanceSpec`).
///
/// It is called once, at the planned time, with the new spec's name; it should return once
/// the change is committed. An error is reported and fails the run. Any
/// `Fn(String) -> impl Future<Output = Result<(), String>>` closure is a `SpecChanger`.
pub trait SpecChanger: Send + Sync {
    fn change(&self, spec: String) -> BoxFuture<'_, Result<(), String>>;
}

impl<F, Fut> SpecChanger for F
where
    F: Fn(String) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    fn change(&self, spec: String) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self(spec))
    }
}

/// How long a spec change may take before it counts as failed.
const SPEC_CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// What every worker shares.
struct Shared {
    schedule: Arc<Schedule>,
    endpoints: Vec<Endpoint>,
    /// Per target: the slots the pacer has released, taken by the first free worker.
    queues: Vec<tokio::sync::Mutex<UnboundedReceiver<u64>>>,
    pace: Arc<pacer::PaceState>,
    t0: Instant,
    /// Workers take no slot after this.
    stop_claiming: Instant,
    timeout: Duration,
}

async fn worker(shared: Arc<Shared>, target: usize, mut conn: Conn, tx: UnboundedSender<Sample>) {
    let mut hint = 0;
    loop {
        let slot = {
            let mut queue = shared.queues[target].lock().await;
            match queue.recv().await {
                Some(slot) => slot,
                None => break,
            }
        };
        shared.pace.backlog.fetch_sub(1, Ordering::Relaxed);
        if Instant::now() >= shared.stop_claiming {
            break;
        }
        let Some(phase) = shared.schedule.phase_of(slot, hint) else {
            break;
        };
        hint = phase;
        let offset = Duration::from_secs_f64(shared.schedule.time_of(slot, phase));
        let (sent, outcome) = conn.send(&shared.endpoints[target], shared.timeout).await;
        let done = Instant::now();
        let ns = |t: Instant| t.saturating_duration_since(shared.t0).as_nanos() as u64;
        let sample = Sample {
            phase: phase as u32,
            target: target as u32,
            scheduled_ns: offset.as_nanos() as u64,
            sent_ns: ns(sent),
            done_ns: ns(done),
            outcome,
        };
        if tx.send(sample).is_err() {
            break;
        }
    }
}

async fn resolve(url: &ParsedUrl, target: &str) -> Result<std::net::SocketAddr, LoadtestError> {
    let err = |reason: String| LoadtestError::Resolve {
        target: target.to_string(),
        reason,
    };
    let mut addrs = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::lookup_host((url.host.as_str(), url.port)),
    )
    .await
    .map_err(|_| err("lookup timed out".into()))?
    .map_err(|e| err(e.to_string()))?;
    addrs.next().ok_or_else(|| err("no address".into()))
}

/// Runs a load test and returns its report. Uses the caller's tokio runtime (a multi-thread
/// runtime lets the workers use every core). Fails before sending anything if the
/// configuration is invalid or a target cannot be resolved; request failures are results, not
/// errors.
pub async fn run(
    config: Config,
    spec_changer: Option<Box<dyn SpecChanger>>,
) -> Result<Report, LoadtestError> {
    config.validate()?;
    let schedule = Arc::new(config.schedule()?);
    let change = config.spec_change().cloned();
    if change.is_some() && spec_changer.is_none() {
        return Err(LoadtestError::NoSpecChanger);
    }
    let weights: Vec<u32> = config.targets.iter().map(|t| t.weight).collect();
    let map = TargetMap::new(&weights).map_err(LoadtestError::Invalid)?;
    let per_target =
        split_connections(config.connections, &weights).map_err(LoadtestError::Invalid)?;
    let mut endpoints = Vec::with_capacity(config.targets.len());
    for t in &config.targets {
        let url = ParsedUrl::parse(&t.url)?;
        let addr = resolve(&url, &t.url).await?;
        let ep = Endpoint::new(
            addr,
            &url,
            config.method.clone(),
            &config.headers,
            config.body.clone(),
        )
        .map_err(|e| LoadtestError::Invalid(format!("target '{}': {e}", t.url)))?;
        endpoints.push(ep);
    }
    let endpoints = Arc::new(endpoints);

    // Open every connection before the clock starts.
    let mut warm = JoinSet::new();
    for (target, &n) in per_target.iter().enumerate() {
        for _ in 0..n {
            let endpoints = endpoints.clone();
            let timeout = config.timeout;
            warm.spawn(async move {
                let mut conn = Conn::new();
                let ok = conn.warm_up(&endpoints[target], timeout).await;
                (target, conn, ok)
            });
        }
    }
    let mut conns = Vec::with_capacity(config.connections);
    let mut warmup_connect_failures = 0;
    while let Some(r) = warm.join_next().await {
        let (target, conn, ok) = r.map_err(|e| LoadtestError::Internal(e.to_string()))?;
        warmup_connect_failures += u64::from(!ok);
        conns.push((target, conn));
    }
    let endpoints = Arc::try_unwrap(endpoints)
        .map_err(|_| LoadtestError::Internal("endpoints still shared".into()))?;

    let t0 = Instant::now();
    let planned = Duration::from_secs_f64(schedule.duration_s());
    let grace = config.timeout.max(Duration::from_secs(1));
    let stop_claiming = t0 + planned + grace;
    let hard_deadline = stop_claiming + config.timeout + Duration::from_secs(5);
    let pace = Arc::new(pacer::PaceState::default());
    let _stop_pacer = pacer::StopOnDrop(pace.clone());
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..config.targets.len())
        .map(|_| unbounded_channel())
        .unzip();
    let shared = Arc::new(Shared {
        schedule: schedule.clone(),
        endpoints,
        queues: receivers.into_iter().map(tokio::sync::Mutex::new).collect(),
        pace: pace.clone(),
        t0,
        stop_claiming,
        timeout: config.timeout,
    });
    let (tx, rx) = unbounded_channel();
    let collector = tokio::spawn(collect::collect(
        rx,
        schedule.clone(),
        t0,
        config.progress,
        config.targets.len(),
    ));
    let mut workers = JoinSet::new();
    for (target, conn) in conns {
        workers.spawn(worker(shared.clone(), target, conn, tx.clone()));
    }
    drop(tx);
    {
        let schedule = schedule.clone();
        let pace = pace.clone();
        let t0 = t0.into_std();
        std::thread::Builder::new()
            .name("loadtest-pacer".into())
            .spawn(move || pacer::pace(&schedule, &map, senders, t0, &pace))
            .map_err(|e| LoadtestError::Internal(format!("cannot start the pacer thread: {e}")))?;
    }

    // In a JoinSet so that dropping the run (cancelling it) also cancels the pending change.
    let mut change_task = JoinSet::new();
    if let (Some(ch), Some(changer)) = (&change, spec_changer) {
        let at = ch.at;
        let to = ch.to.clone();
        change_task.spawn(async move {
            tokio::time::sleep_until(t0 + at).await;
            let called = t0.elapsed().as_secs_f64();
            let r = tokio::time::timeout(SPEC_CHANGE_TIMEOUT, changer.change(to)).await;
            let returned = t0.elapsed().as_secs_f64();
            let error = match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(format!(
                    "no answer within {}s",
                    SPEC_CHANGE_TIMEOUT.as_secs()
                )),
            };
            (called, returned, error)
        });
    }

    let mut aborted = false;
    loop {
        match tokio::time::timeout_at(hard_deadline, workers.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                aborted = true;
                workers.abort_all();
                while workers.join_next().await.is_some() {}
                break;
            }
        }
    }
    let elapsed_s = t0.elapsed().as_secs_f64();

    let spec_change = match change {
        Some(ch) => {
            let (called, returned, error) =
                match tokio::time::timeout_at(hard_deadline, change_task.join_next()).await {
                    Ok(Some(Ok((c, r, e)))) => (Some(c), Some(r), e),
                    Ok(Some(Err(e))) => (None, None, Some(format!("spec changer failed: {e}"))),
                    Ok(None) => (None, None, Some("spec changer was not called".to_string())),
                    Err(_) => {
                        change_task.abort_all();
                        (
                            None,
                            None,
                            Some("still running when the load test ended".to_string()),
                        )
                    }
                };
            Some(SpecChangeReport {
                to: ch.to,
                ceiling_rps: ch.ceiling_rps,
                at_s: ch.at.as_secs_f64(),
                called_at_s: called,
                returned_at_s: returned,
                error,
            })
        }
        None => None,
    };
    let stats = collector
        .await
        .map_err(|e| LoadtestError::Internal(e.to_string()))?;
    Ok(assemble::build(
        &config,
        &schedule,
        &stats,
        assemble::RunFacts {
            connections_per_target: per_target,
            elapsed_s,
            warmup_connect_failures,
            aborted,
            spec_change,
        },
    ))
}
