//! An API's backends as the hot path reads them: their addresses, weights and passive health
//! ([`Spread`]), and the per-backend state that outlives recompiles ([`BackendState`]).
//!
//! A pick ([`Spread::pick`]) first lets a backend whose back-off is over take the request on
//! probation; otherwise it runs smooth weighted round-robin ([`SmoothWrr`]) over the backends
//! that are in, with one round-robin state per server thread (so threads never share a lock
//! or a cache line to pick; each thread's picks follow the weights exactly, and so do their
//! sum). When every backend is out, the one that failed longest ago is tried rather than
//! refusing the call. Health is per node: each node judges by the requests it sends.
//!
//! A backend with no failure on record is "clean": picking it and reporting its successes reads
//! one relaxed boolean, so an API whose backends are healthy pays no lock for health.

use crate::Nanos;
use crate::backend::{Backend, BackendError};
use crate::health::{Availability, Health, HealthPolicy, SmoothWrr};
use crate::metrics::escape;
use crate::per_thread::{Counter, PerThread};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

/// One backend's health and counters on this node, kept across recompiles by (group, API,
/// URL): a configuration publish does not forget that a backend is down.
#[derive(Debug, Default)]
pub(crate) struct BackendState {
    health: Mutex<Health>,
    /// `health.is_clean()`, readable without the lock.
    clean: AtomicBool,
    requests: Counter,
    failures: Counter,
    retries: Counter,
    ejections: Counter,
}

impl BackendState {
    fn new() -> Self {
        BackendState {
            clean: AtomicBool::new(true),
            ..Default::default()
        }
    }
}

/// Backend states by (group, API, URL): the labels of the per-backend metrics.
pub(crate) type BackendStates = HashMap<(String, String, String), Arc<BackendState>>;

struct Member<P> {
    backend: Backend<P>,
    weight: u32,
    state: Arc<BackendState>,
}

/// How a request to a backend ended, as passive health counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer below 500.
    Answered,
    /// No connection, a broken one, no answer in time, or a 5xx.
    Failed,
}

/// An API's backends, compiled.
pub struct Spread<P> {
    members: Box<[Member<P>]>,
    weights: Box<[u32]>,
    /// One round-robin state per server thread (unused with one backend).
    wrr: PerThread<Mutex<SmoothWrr>>,
    policy: HealthPolicy,
}

impl<P> Spread<P> {
    /// Parses `text` (one URL, or `URL[@WEIGHT]` items separated by spaces: `model::Backends`'
    /// text form), its backends taken out by `policy`. `pool` gives a backend's pool, `state`
    /// its state.
    pub(crate) fn parse(
        text: &str,
        policy: HealthPolicy,
        mut pool: impl FnMut(&http::uri::Authority) -> P,
        mut state: impl FnMut(&str) -> Arc<BackendState>,
    ) -> Result<Self, BackendError> {
        let list = model::Backends::from_text(text);
        if list.is_empty() {
            return Err(BackendError::Invalid(text.to_string()));
        }
        let mut members = Vec::with_capacity(list.len());
        for b in list.iter().take(64) {
            members.push(Member {
                backend: Backend::parse(&b.url, &mut pool)?,
                weight: b.weight.max(1),
                state: state(&b.url),
            });
        }
        Ok(Spread {
            weights: members.iter().map(|m| m.weight).collect(),
            members: members.into_boxed_slice(),
            wrr: PerThread::default(),
            policy,
        })
    }

    /// The first backend (what a caller that knows one backend uses).
    pub fn first(&self) -> &Backend<P> {
        &self.members[0].backend
    }

    /// How many backends there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The `i`th backend.
    pub fn backend(&self, i: usize) -> &Backend<P> {
        &self.members[i].backend
    }

    pub(crate) fn backends(&self) -> impl Iterator<Item = &Backend<P>> {
        self.members.iter().map(|m| &m.backend)
    }

    /// The backend for the next request at `now`, other than `except` (the one a retry left);
    /// `None` only when `except` was the only one. Counts the request.
    pub fn pick(&self, now: Nanos, except: Option<usize>) -> Option<usize> {
        let i = self.choose(now, except)?;
        self.members[i].state.requests.add(1);
        Some(i)
    }

    fn choose(&self, now: Nanos, except: Option<usize>) -> Option<usize> {
        if self.members.len() == 1 {
            if except == Some(0) {
                return None;
            }
            // The only one is tried whatever its health; polling lets a call after its
            // back-off be the probe that brings it back (and its gauge to 1).
            let state = &self.members[0].state;
            if !state.clean.load(Relaxed) {
                lock(&state.health).poll(now, &self.policy);
            }
            return Some(0);
        }
        let mut candidates = 0u64;
        let mut fallback: Option<(Option<Nanos>, usize)> = None;
        for (i, m) in self.members.iter().enumerate() {
            if except == Some(i) {
                continue;
            }
            if m.state.clean.load(Relaxed) {
                candidates |= 1 << i;
                continue;
            }
            let mut health = lock(&m.state.health);
            match health.poll(now, &self.policy) {
                Availability::In => candidates |= 1 << i,
                // Its back-off is over: this request decides whether it comes back.
                Availability::Probe => return Some(i),
                Availability::Out => {
                    let failed = health.last_failure();
                    if fallback.is_none_or(|(f, _)| failed < f) {
                        fallback = Some((failed, i));
                    }
                }
            }
        }
        let picked = lock(self.wrr.local()).pick(&self.weights, candidates);
        picked.or(fallback.map(|(_, i)| i))
    }

    /// Reports how a request to backend `i` ended at `now`.
    pub fn report(&self, i: usize, outcome: Outcome, now: Nanos) {
        let state = &self.members[i].state;
        match outcome {
            Outcome::Answered => {
                if state.clean.load(Relaxed) {
                    return;
                }
                let mut health = lock(&state.health);
                health.succeeded();
                state.clean.store(health.is_clean(), Relaxed);
            }
            Outcome::Failed => {
                state.failures.add(1);
                let mut health = lock(&state.health);
                if health.failed(now, &self.policy) {
                    state.ejections.add(1);
                    tracing::warn!(
                        backend = %self.members[i].backend.authority(),
                        "backend taken out after failing in a row"
                    );
                }
                state.clean.store(health.is_clean(), Relaxed);
            }
        }
    }

    /// Counts a request sent again to backend `i` after another could not be connected to.
    pub fn count_retry(&self, i: usize) {
        self.members[i].state.retries.add(1);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Health and round-robin states stay consistent even if a holder panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The per-backend metrics, from the registry (swept of backends no route uses any more).
pub(crate) fn render(out: &mut String, states: &Mutex<BackendStates>) {
    let mut rows: Vec<((String, String, String), Arc<BackendState>)> = {
        let mut states = lock(states);
        let mut all = Vec::with_capacity(states.len());
        states.retain(|k, s| {
            all.push((k.clone(), s.clone()));
            Arc::strong_count(s) > 1
        });
        all
    };
    if rows.is_empty() {
        return;
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    type Read = fn(&BackendState) -> u64;
    let families: [(&str, &str, &str, Read); 5] = [
        (
            "gateway_backend_requests_total",
            "counter",
            "Requests sent to a backend of an API (a retried one counts on each backend tried).",
            |s| s.requests.get(),
        ),
        (
            "gateway_backend_failures_total",
            "counter",
            "Requests to a backend that failed: no connection, broken off, timed out or 5xx.",
            |s| s.failures.get(),
        ),
        (
            "gateway_backend_retries_total",
            "counter",
            "Requests sent to this backend after another could not be connected to.",
            |s| s.retries.get(),
        ),
        (
            "gateway_backend_ejections_total",
            "counter",
            "Times this node took the backend out after failures in a row.",
            |s| s.ejections.get(),
        ),
        (
            "gateway_backend_available",
            "gauge",
            "1 while this node sends the backend requests, 0 while it is out.",
            |s| u64::from(lock(&s.health).is_in()),
        ),
    ];
    for (name, kind, help, read) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for ((group, api, url), state) in &rows {
            let _ = writeln!(
                out,
                "{name}{{group=\"{}\",api=\"{}\",backend=\"{}\"}} {}",
                escape(group),
                escape(api),
                escape(url),
                read(state)
            );
        }
    }
}

/// The state of (group, API, URL), shared with earlier compiles of the same backend.
pub(crate) fn state_of(
    states: &mut BackendStates,
    group: &str,
    api: &str,
    url: &str,
) -> Arc<BackendState> {
    states
        .entry((group.to_string(), api.to_string(), url.to_string()))
        .or_insert_with(|| Arc::new(BackendState::new()))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(text: &str) -> Spread<()> {
        let mut states = BackendStates::new();
        Spread::parse(
            text,
            HealthPolicy::default(),
            |_| (),
            |url| state_of(&mut states, "g", "a", url),
        )
        .unwrap()
    }

    #[test]
    fn picks_follow_the_weights() {
        let s = spread("http://a:1@3 http://b:1");
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[s.pick(0, None).unwrap()] += 1;
        }
        assert_eq!(counts, [300, 100]);
    }

    #[test]
    fn a_failing_backend_is_left_out_probed_and_let_back_in() {
        let s = spread("http://a:1 http://b:1");
        let sec = 1_000_000_000;
        for _ in 0..3 {
            s.report(0, Outcome::Failed, 0);
        }
        assert!((0..10).all(|_| s.pick(10, None) == Some(1)));
        // After the back-off the next request probes it, and only that one.
        assert_eq!(s.pick(sec, None), Some(0));
        assert_eq!(s.pick(sec, None), Some(1));
        s.report(0, Outcome::Answered, sec);
        let picks: Vec<_> = (0..4).map(|_| s.pick(sec, None).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 2, "{picks:?}");
    }

    #[test]
    fn with_every_backend_out_the_least_recently_failed_is_tried() {
        let s = spread("http://a:1 http://b:1");
        for t in 0..3 {
            s.report(1, Outcome::Failed, t);
        }
        for t in 3..6 {
            s.report(0, Outcome::Failed, t);
        }
        assert_eq!(s.pick(10, None), Some(1));
        // A retry never goes back to the backend that failed it.
        assert_eq!(s.pick(10, Some(1)), Some(0));
        let one = spread("http://a:1");
        assert_eq!(one.pick(0, Some(0)), None);
        // The only backend is tried even when out, and comes back after a good probe.
        for t in 0..3 {
            one.report(0, Outcome::Failed, t);
        }
        assert!(!lock(&one.members[0].state.health).is_in());
        assert_eq!(one.pick(10, None), Some(0));
        one.report(0, Outcome::Answered, 10);
        assert!(
            !lock(&one.members[0].state.health).is_in(),
            "back before its back-off"
        );
        assert_eq!(one.pick(2_000_000_000, None), Some(0));
        one.report(0, Outcome::Answered, 2_000_000_000);
        assert!(lock(&one.members[0].state.health).is_in());
    }
}
