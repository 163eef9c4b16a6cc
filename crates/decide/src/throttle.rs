//! Throttling policies on the hot path: each bound (API, stage) has a counter for its API
//! limit, one for its user limit and one per app, each enforced cluster-wide.
//!
//! - **Per-second limits** use the instance ceiling's machinery: a [`GcraLimiter`] on this node
//!   at `limit * share`, where the share follows the demand that nodes report to each other
//!   (see [`crate::shares`]); the counter's arrivals are its demand.
//! - **Minute, hour and day limits** use leases of the window's budget (see [`crate::budget`]).
//!
//! A request takes one slot of each counter that applies, API first, then user, then app; one
//! that refuses gives back what the earlier ones took, so a refused call uses no quota.
//!
//! Counters live in a registry by key (policy, group, API, stage, unit, scope), outside the
//! compiled snapshot, so that recompiling a group keeps their state; the compiled [`Throttle`]
//! holds them by `Arc`, and finds an app's by name in a map made at compile time (O(1)).

use crate::budget::{
    LEASE_TTL_MS, LeaseCell, LeaseGrant, LeaseUse, Ledger, NodeLease, PREGRANT_MS, WARMUP_MS,
};
use crate::config::ThrottleConfig;
use crate::error::{GatewayError, ThrottleScope};
use crate::limiter::GcraLimiter;
use crate::metrics::escape;
use crate::moves::Reading;
use crate::per_thread::Counter;
use model::ThrottleUnit;
use model::clock::{NANOS_PER_SEC, Nanos};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Prefix of the counters' keys in demand reports: instance names cannot contain ':'.
pub(crate) const KEY_PREFIX: &str = "throttle:";

/// One limit's counter on this node.
#[derive(Debug)]
pub(crate) struct Cell {
    pub(crate) key: Arc<str>,
    pub(crate) unit: ThrottleUnit,
    /// Calls per unit, cluster-wide.
    pub(crate) limit: AtomicU64,
    /// Calls that reached this counter (its demand).
    pub(crate) arrivals: AtomicU64,
    /// Per-second limits: this node's share of the rate.
    pub(crate) gcra: GcraLimiter,
    /// Longer windows: this node's lease.
    pub(crate) lease: LeaseCell,
    /// Calls this counter refused on this node.
    refused: Counter,
    /// Its Prometheus labels, escaped (policy, group, API, stage, unit, limit kind and the app
    /// or account it is for).
    labels: String,
}

impl Cell {
    fn new(key: Arc<str>, unit: ThrottleUnit, limit: u64, burst: Duration, labels: String) -> Cell {
        Cell {
            key,
            unit,
            refused: Counter::default(),
            labels,
            limit: AtomicU64::new(limit),
            arrivals: AtomicU64::new(0),
            // Until the first share is computed: the whole limit (a single node's).
            gcra: GcraLimiter::new(limit as f64, burst),
            lease: LeaseCell::default(),
        }
    }

    /// Its demand counters now; per-second limits are shared by demand, the others leased.
    pub(crate) fn reading(&self) -> Reading<'_> {
        Reading {
            key: &self.key,
            arrivals: self.arrivals.load(Relaxed),
            refused: self.refused.get(),
            ceiling: (self.unit == ThrottleUnit::Second).then(|| self.limit.load(Relaxed) as f64),
        }
    }

    pub(crate) fn unit_ms(&self) -> u64 {
        self.unit.seconds() * 1000
    }

    /// Takes one slot, or says how long to wait (nanoseconds).
    #[inline]
    fn take(&self, now: Nanos, now_ms: u64) -> Result<(), Nanos> {
        self.arrivals.fetch_add(1, Relaxed);
        if self.unit == ThrottleUnit::Second {
            return self.gcra.check(now);
        }
        let unit_ms = self.unit_ms();
        if self.lease.take(now_ms / unit_ms) {
            Ok(())
        } else {
            // Until the window ends, or a second while this node waits for a lease.
            let to_end = unit_ms - now_ms % unit_ms;
            Err(to_end.min(1000) * 1_000_000)
        }
    }

    fn untake(&self, now_ms: u64) {
        if self.unit == ThrottleUnit::Second {
            self.gcra.untake();
        } else {
            self.lease.untake(now_ms / self.unit_ms());
        }
    }
}

/// A policy bound to one API on one stage, compiled.
#[derive(Debug)]
pub(crate) struct Throttle {
    pub(crate) api: Arc<Cell>,
    /// The group's account's counter (the caller's account: apps only call APIs of their own
    /// account), for signed calls; `None` without a user limit or special for it.
    pub(crate) user: Option<Arc<Cell>>,
    /// App name -> its counter, for the apps granted on the API that have a limit.
    pub(crate) apps: HashMap<String, Arc<Cell>>,
    /// Whether a window limit is among them (the hot path reads the wall clock only then).
    pub(crate) windowed: bool,
}

impl Throttle {
    /// Takes a slot of every limit that applies to a call from `app` (signed calls), or names
    /// the one that refused it. A refusal gives back what the earlier limits took.
    #[inline]
    pub(crate) fn admit(
        &self,
        app: Option<&str>,
        now: Nanos,
        wall_ms: impl Fn() -> u64,
    ) -> Result<(), GatewayError> {
        let now_ms = if self.windowed { wall_ms() } else { 0 };
        let user = app.and(self.user.as_deref());
        let app_cell = app.and_then(|a| self.apps.get(a)).map(|c| &**c);
        let cells = [
            (ThrottleScope::Api, Some(&*self.api)),
            (ThrottleScope::User, user),
            (ThrottleScope::App, app_cell),
        ];
        for (i, (scope, cell)) in cells.iter().enumerate() {
            let Some(cell) = cell else { continue };
            if let Err(wait) = cell.take(now, now_ms) {
                cell.refused.add(1);
                for (_, earlier) in &cells[..i] {
                    if let Some(c) = earlier {
                        c.untake(now_ms);
                    }
                }
                return Err(GatewayError::ThrottledBy {
                    scope: *scope,
                    retry_after_secs: wait.div_ceil(NANOS_PER_SEC).max(1),
                });
            }
        }
        Ok(())
    }
}

/// A metric family of the policies' counters: name, type, help, and how to read it.
type Family = (&'static str, &'static str, &'static str, fn(&Cell) -> u64);

/// Every counter by key, this node's side of the window leases, and the ledger it keeps of
/// everyone's (see [`crate::budget`]).
#[derive(Debug)]
pub(crate) struct Registry {
    /// When this process started (Unix ns): its incarnation, in reports.
    pub(crate) incarnation: u64,
    /// The peers' incarnations, from their reports.
    incarnations: HashMap<u64, u64>,
    pub(crate) cells: HashMap<Arc<str>, Arc<Cell>>,
    /// (key, window) -> what this node has seen granted and has returned.
    pub(crate) leases: HashMap<(Arc<str>, u64), NodeLease>,
    pub(crate) ledger: Ledger,
    /// The coordinator this node follows, and since when (monotonic ms).
    coordinator: Option<(u64, u64)>,
    /// When this node last heard its coordinator (monotonic ms).
    coordinator_heard_ms: u64,
    /// Per-second counters made or given a new limit since the last
    /// [`take_changed`](Self::take_changed): their shares are to be set before calls see them.
    changed: Vec<Arc<Cell>>,
}

/// What a node knows of the cluster when it runs a lease round.
pub(crate) struct Round<'a> {
    pub(crate) self_id: u64,
    /// The serving nodes heard from recently, this one included.
    pub(crate) live: &'a [u64],
    /// Monotonic and wall-clock milliseconds.
    pub(crate) mono_ms: u64,
    pub(crate) wall_ms: u64,
}

impl Default for Registry {
    fn default() -> Registry {
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Registry {
            incarnation,
            incarnations: HashMap::new(),
            cells: HashMap::new(),
            leases: HashMap::new(),
            ledger: Ledger::default(),
            coordinator: None,
            coordinator_heard_ms: 0,
            changed: Vec::new(),
        }
    }
}

impl Registry {
    /// Records the incarnation a peer's report carries (0: none).
    pub(crate) fn note_peer(&mut self, node: u64, incarnation: u64) {
        if incarnation != 0 {
            self.incarnations.insert(node, incarnation);
        }
    }

    /// The counter of `key`, made if new; its limit set to `limit`.
    fn cell(
        &mut self,
        key: String,
        unit: ThrottleUnit,
        limit: u64,
        burst: Duration,
        labels: impl FnOnce() -> String,
    ) -> Arc<Cell> {
        let (c, changed) = match self.cells.get(key.as_str()) {
            Some(c) => (c.clone(), c.limit.swap(limit, Relaxed) != limit),
            None => {
                let key: Arc<str> = key.into();
                let c = Arc::new(Cell::new(key.clone(), unit, limit, burst, labels()));
                self.cells.insert(key, c.clone());
                (c, true)
            }
        };
        if changed && unit == ThrottleUnit::Second {
            self.changed.push(c.clone());
        }
        c
    }

    /// The per-second counters made or given a new limit since the last call.
    pub(crate) fn take_changed(&mut self) -> Vec<Arc<Cell>> {
        std::mem::take(&mut self.changed)
    }

    /// Compiles `t`, bound to `group/api` on `stage` of `account`, with `apps` granted on it.
    pub(crate) fn compile(
        &mut self,
        t: &ThrottleConfig,
        at: (&str, &str, model::Stage),
        account: &str,
        apps: &[String],
        burst: Duration,
    ) -> Throttle {
        let (group, api, stage) = at;
        let key = |scope: &str| {
            format!(
                "{KEY_PREFIX}{}/{group}/{api}/{stage}/{}/{scope}",
                t.policy, t.unit
            )
        };
        let labels = |kind: &str, of: &str| {
            format!(
                "policy=\"{}\",group=\"{}\",api=\"{}\",stage=\"{stage}\",unit=\"{}\",limit=\"{kind}\",of=\"{}\"",
                escape(&t.policy),
                escape(group),
                escape(api),
                t.unit,
                escape(of)
            )
        };
        let api_cell = self.cell(key("api"), t.unit, t.api_limit, burst, || labels("api", ""));
        let user = t
            .special_accounts
            .get(account)
            .copied()
            .or(t.user_limit)
            .map(|limit| {
                let key = key(&format!("user:{account}"));
                self.cell(key, t.unit, limit, burst, || labels("user", account))
            });
        let apps = apps
            .iter()
            .filter_map(|app| {
                let limit = t.special_apps.get(app).copied().or(t.app_limit)?;
                let key = key(&format!("app:{app}"));
                let cell = self.cell(key, t.unit, limit, burst, || labels("app", app));
                Some((app.clone(), cell))
            })
            .collect();
        Throttle {
            api: api_cell,
            user,
            apps,
            windowed: t.unit != ThrottleUnit::Second,
        }
    }

    /// The coordinator of the leases: the live node whose process started first (one whose
    /// incarnation is not known yet counts as the youngest), the lower id on a tie.
    fn follow(&mut self, r: &Round<'_>) -> u64 {
        let age = |id: u64| {
            let incarnation = if id == r.self_id {
                self.incarnation
            } else {
                self.incarnations.get(&id).copied().unwrap_or(u64::MAX)
            };
            (incarnation, id)
        };
        let id = r
            .live
            .iter()
            .copied()
            .min_by_key(|id| age(*id))
            .unwrap_or(r.self_id);
        match self.coordinator {
            Some((c, _)) if c == id => {}
            // A node alone has nobody to wait for.
            _ if r.live.len() <= 1 => self.coordinator = Some((id, 0)),
            _ => self.coordinator = Some((id, r.mono_ms)),
        }
        if id == r.self_id {
            self.coordinator_heard_ms = r.mono_ms;
        }
        id
    }

    /// This node's lease round, every report period: opens windows, returns unused budget,
    /// records its own use; as coordinator, grants. Returns its uses and grants to report.
    pub(crate) fn lease_round(
        &mut self,
        r: &Round<'_>,
        demand_of: impl Fn(&str) -> f64,
    ) -> (Vec<LeaseUse>, Vec<LeaseGrant>) {
        let coordinator = self.follow(r);
        let granting = coordinator == r.self_id
            && self
                .coordinator
                .is_some_and(|(_, since)| r.mono_ms.saturating_sub(since) >= WARMUP_MS);
        let expired = coordinator != r.self_id
            && r.mono_ms.saturating_sub(self.coordinator_heard_ms) > LEASE_TTL_MS;
        let mut uses = Vec::new();
        let mut grants = Vec::new();
        let incarnation = self.incarnation;
        for cell in self.cells.values() {
            if cell.unit == ThrottleUnit::Second {
                continue;
            }
            let unit_ms = cell.unit_ms();
            let window = r.wall_ms / unit_ms;
            cell.lease.open(window, true);
            let mut windows = vec![window];
            if r.wall_ms % unit_ms >= unit_ms.saturating_sub(PREGRANT_MS) {
                cell.lease.open(window + 1, false);
                windows.push(window + 1);
            }
            let demand = demand_of(&cell.key);
            self.ledger.forget_before(&cell.key, window);
            for w in windows {
                let lease = self.leases.entry((cell.key.clone(), w)).or_default();
                if w == window {
                    lease.give_back(&cell.lease, w, demand, expired);
                }
                // A node with neither lease nor demand here has nothing to say.
                if lease.granted > 0 || demand > 0.0 {
                    let u = LeaseUse {
                        key: cell.key.to_string(),
                        window: w,
                        granted: lease.granted,
                        returned: lease.returned,
                        used: lease.used(&cell.lease, w),
                        demand_rps: demand,
                        incarnation,
                    };
                    self.ledger.record(r.self_id, &u, r.mono_ms);
                    uses.push(u);
                }
                // The coordinator grants whether or not it has calls of its own at this counter
                // (it skipped the counter then, and a cluster whose coordinator had no traffic
                // there admitted nothing).
                if granting {
                    let limit = cell.limit.load(Relaxed);
                    for g in self.ledger.grant(&cell.key, w, limit, r.live, r.mono_ms) {
                        if g.node == r.self_id {
                            lease.apply(&g, &cell.lease, incarnation);
                        }
                        if g.granted > 0 {
                            grants.push(g);
                        }
                    }
                }
            }
        }
        let cells = &self.cells;
        self.leases.retain(|(k, w), _| {
            cells
                .get(k)
                .is_some_and(|c| *w + 1 >= r.wall_ms / c.unit_ms())
        });
        (uses, grants)
    }

    /// A peer's lease uses and, if it is this node's coordinator, its grants.
    pub(crate) fn on_peer(
        &mut self,
        r: &Round<'_>,
        from: u64,
        uses: &[LeaseUse],
        grants: &[LeaseGrant],
    ) {
        for u in uses {
            self.ledger.record(from, u, r.mono_ms);
        }
        if self.follow(r) != from {
            return;
        }
        self.coordinator_heard_ms = r.mono_ms;
        for g in grants.iter().filter(|g| g.node == r.self_id) {
            let Some(cell) = self.cells.get(g.key.as_str()) else {
                continue;
            };
            let lease = self.leases.entry((cell.key.clone(), g.window)).or_default();
            cell.lease
                .open(g.window, g.window == r.wall_ms / cell.unit_ms());
            lease.apply(g, &cell.lease, self.incarnation);
        }
    }

    /// Appends every bound policy's limits and refusals on this node, one series per counter.
    pub(crate) fn render_metrics(&self, out: &mut String) {
        let mut cells: Vec<&Cell> = self.cells.values().map(|c| &**c).collect();
        cells.sort_by(|a, b| a.labels.cmp(&b.labels));
        let families: [Family; 2] = [
            (
                "gateway_throttle_limit",
                "gauge",
                "A bound throttling policy's limit, cluster-wide, in calls per unit; limit is \
                 api, user or app, of the account or app it applies to.",
                |c| c.limit.load(Relaxed),
            ),
            (
                "gateway_throttle_refused_total",
                "counter",
                "Calls a bound throttling policy's limit refused on this node.",
                |c| c.refused.get(),
            ),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for c in &cells {
                let _ = writeln!(out, "{name}{{{}}} {}", c.labels, value(c));
            }
        }
    }

    /// Forgets counters no compiled route holds any more.
    pub(crate) fn sweep(&mut self) {
        self.cells.retain(|_, c| Arc::strong_count(c) > 1);
        let cells = &self.cells;
        self.leases.retain(|(k, _), _| cells.contains_key(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::Stage;

    const SEC: Nanos = NANOS_PER_SEC;

    fn policy(unit: ThrottleUnit, api: u64, user: Option<u64>, app: Option<u64>) -> ThrottleConfig {
        ThrottleConfig {
            policy: "p".into(),
            unit,
            api_limit: api,
            user_limit: user,
            app_limit: app,
            special_apps: [("vip".to_string(), 8)].into(),
            special_accounts: Default::default(),
        }
    }

    fn scope_of(r: Result<(), GatewayError>) -> Option<ThrottleScope> {
        match r {
            Ok(()) => None,
            Err(GatewayError::ThrottledBy { scope, .. }) => Some(scope),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_narrowest_limit_refuses_and_takes_nothing_from_the_others() {
        let mut registry = Registry::default();
        let apps = ["a".to_string(), "b".to_string(), "vip".to_string()];
        let t = registry.compile(
            &policy(ThrottleUnit::Second, 100, Some(6), Some(3)),
            ("g", "x", Stage::Release),
            "acct",
            &apps,
            Duration::ZERO,
        );
        // No burst: one slot per interval. Offers every `step` for a second, from `from`.
        let offer = |app: Option<&str>, from: Nanos, step: Nanos| {
            let mut refused = Vec::new();
            for i in 0..SEC / step {
                refused.push(scope_of(t.admit(app, from + i * step, || 0)));
            }
            refused
        };
        let count = |r: &[Option<ThrottleScope>]| r.iter().filter(|r| r.is_none()).count();
        // The app limit (3/s) is met before the user (6) and API (100) ones.
        let r = offer(Some("a"), 10 * SEC, SEC / 100);
        assert_eq!(count(&r), 3, "{r:?}");
        assert!(r.contains(&Some(ThrottleScope::App)));
        assert!(!r.contains(&Some(ThrottleScope::Api)));
        // A special app gets its own limit (8/s), but the user limit (6/s) still holds.
        let r = offer(Some("vip"), 20 * SEC, SEC / 100);
        assert_eq!(count(&r), 6, "{r:?}");
        assert!(r.contains(&Some(ThrottleScope::User)));
        // Unsigned calls count against the API limit only.
        let r = offer(None, 30 * SEC, SEC / 200);
        assert_eq!(count(&r), 100, "{r:?}");
        assert!(r.contains(&Some(ThrottleScope::Api)));
        // Calls the app limit refused took nothing of the API's: unsigned calls between them
        // still get about all of the API limit (without the give-back they would get ~none).
        let mut unsigned = 0;
        for i in 0..100 {
            let at = 40 * SEC + i * SEC / 100;
            let _ = t.admit(Some("a"), at, || 0);
            if t.admit(None, at + SEC / 400, || 0).is_ok() {
                unsigned += 1;
            }
        }
        assert!(unsigned >= 96, "{unsigned}: refused calls took API slots");

        // /metrics: each counter's limit and its refusals, by limit kind.
        let mut out = String::new();
        registry.render_metrics(&mut out);
        let labels = |kind: &str, of: &str| {
            format!(
                "{{policy=\"p\",group=\"g\",api=\"x\",stage=\"RELEASE\",unit=\"second\",limit=\"{kind}\",of=\"{of}\"}}"
            )
        };
        assert!(
            out.contains(&format!(
                "gateway_throttle_limit{} 100\n",
                labels("api", "")
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "gateway_throttle_limit{} 6\n",
                labels("user", "acct")
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "gateway_throttle_limit{} 8\n",
                labels("app", "vip")
            )),
            "{out}"
        );
        let refused = |kind: &str, of: &str| -> u64 {
            let prefix = format!("gateway_throttle_refused_total{} ", labels(kind, of));
            let line = out.lines().find(|l| l.starts_with(&prefix)).expect(&prefix);
            line[prefix.len()..].parse().unwrap()
        };
        assert!(refused("app", "a") > 0, "{out}");
        assert!(refused("user", "acct") > 0, "{out}");
        assert!(refused("api", "") >= 100, "{out}");
        assert_eq!(refused("app", "b"), 0, "{out}");
    }

    #[test]
    fn window_limits_spend_the_lease_and_refused_calls_give_back() {
        let mut r = Registry::default();
        let t = r.compile(
            &policy(ThrottleUnit::Minute, 100, Some(5), None),
            ("g", "x", Stage::Release),
            "acct",
            &["a".to_string()],
            Duration::ZERO,
        );
        let now_ms = 60_000 * 1000 + 10;
        let window = now_ms / 60_000;
        // No lease yet: refused, retry within a second.
        match t.admit(None, 0, || now_ms) {
            Err(GatewayError::ThrottledBy {
                scope: ThrottleScope::Api,
                retry_after_secs: 1,
            }) => {}
            other => panic!("{other:?}"),
        }
        for c in r.cells.values() {
            c.lease.open(window, true);
            // Leases as a coordinator sized them: the user's budget is its limit.
            c.lease.add(window, c.limit.load(Relaxed).min(10));
        }
        for _ in 0..5 {
            assert!(t.admit(Some("a"), 0, || now_ms).is_ok());
        }
        assert_eq!(
            scope_of(t.admit(Some("a"), 0, || now_ms)),
            Some(ThrottleScope::User)
        );
        // The refusal gave the API's slot back: 5 of 10 are left.
        assert_eq!(t.api.lease.left(window), 5);
        // Swept only once nothing holds them.
        r.sweep();
        assert_eq!(r.cells.len(), 2);
        drop(t);
        r.sweep();
        assert!(r.cells.is_empty());
    }
}
