//! Calls that move between nodes, seen between the periodic demand reports.
//!
//! Shares follow the demand each node measures over ~100 ms windows and reports every 100 ms
//! ([`crate::shares`]). When calls move (a peer dies and a load balancer sends its calls to
//! this node; they go back after its restart), that is one to two report periods in which the
//! node that took them admits at a share sized for its old demand while the node they left
//! holds a share it no longer uses: several percent of a per-second limit in the second of the
//! move. So about every 10 ms a node looks at the counters it [`Watch`]es, and where the calls
//! since their rate was last measured stray from that rate by more than chance explains, it
//! measures the new rate and reports it at once (an early report).
//!
//! A node looks only for a second after an event that moves calls: a peer went down or came
//! back, or this node started. In steady traffic there is nothing to look for, and looking
//! costs accuracy: at thousands of calls a second from a real, bursty client, a look every
//! 10 ms finds "moves" that are bursts often enough that the early reports they send left an
//! instance ceiling 0.3-0.8% short in steady skewed windows and up to 1.8% after a spec change
//! (`benches/dataplane.sh`, issue 17).
//!
//! Watched are the shared counters (instance ceilings, per-second policy limits) busy at this
//! node, so a look costs in proportion to the traffic, not to the configuration; and for one
//! window after an event, all of them (up to [`WATCH_ALL_AT_MOST`]), since calls are about to
//! arrive where there were none.

use model::clock::Nanos;
use std::collections::{HashMap, VecDeque};

/// How far the calls counted at a counter since its rate was measured must stray from what
/// that rate predicts before they count as moved: more than this many calls, and more than
/// this fraction of the prediction (and the deviations below). Chance (Poisson) alone rarely
/// strays that far: at 360 calls/s over 40 ms, 14.4 calls are expected and a fall needs 2 or
/// fewer, which chance gives about once in fifteen thousand looks.
const MOVED_MIN_CALLS: f64 = 8.0;
const MOVED_FRACTION: f64 = 0.5;
/// The same for a rise, where calls were refused (the refusals are evidence of their own, so
/// fewer calls suffice: at 360 calls/s, 20 ms rather than 40), and at least this many standard
/// deviations of a Poisson count: at 200 calls/s over 10 ms, 2 are expected and 8 needed, which
/// chance gives about once in a thousand looks.
const ROSE_MIN_CALLS: f64 = 4.0;
const ROSE_DEVIATIONS: f64 = 4.0;
/// A fall must stand out by this many Poisson deviations too: a counter is tested over
/// several spans at every look (see [`MARKS`]), and a fall that is not there is cheap, not
/// free.
const FALL_DEVIATIONS: f64 = 3.0;
/// For how long after an event that moves calls (see [`Watch::afresh`]) a node looks for them.
const LOOK_AFTER_EVENT: Nanos = 1_000_000_000;
/// Up to how many shared counters a node watches all of them (not only the busy ones) after
/// its start or a peer's going down or coming back: a look costs about 1.3 us a counter, so
/// 1,000 of them cost 1.3 ms every 10 ms, for a second at most.
const WATCH_ALL_AT_MOST: usize = 1_000;
/// How many of its last looks a watched counter remembers: a move is tested for over the time
/// since its rate was measured and since each of those (the last 80 ms), so that calls that
/// moved in the middle of the time since its last sample are not diluted by what came before.
const MARKS: usize = 8;

/// The time constant of the fast rate estimates: two looks. Where calls moved in the middle of
/// the time measured, the rate over that time is the old and the new one mixed; the fast
/// estimate is mostly the new one (after 40 ms, 86% of it).
const FAST_TAU: Nanos = 20_000_000;

/// One demand counter as read at a moment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reading<'a> {
    pub(crate) key: &'a str,
    /// Calls that reached it (its offered load).
    pub(crate) arrivals: u64,
    /// Calls it refused.
    pub(crate) refused: u64,
    /// The cluster-wide rate the nodes share by demand (an instance's ceiling, a per-second
    /// policy limit); `None` for counters whose demand sizes leases of window budgets.
    pub(crate) ceiling: Option<f64>,
}

/// A counter's totals at a sample.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Total {
    pub(crate) arrivals: u64,
    pub(crate) refused: u64,
    /// Whether the nodes share its rate by demand (see [`Reading::ceiling`]).
    pub(crate) shared: bool,
}

impl From<&Reading<'_>> for Total {
    fn from(r: &Reading<'_>) -> Total {
        Total {
            arrivals: r.arrivals,
            refused: r.refused,
            shared: r.ceiling.is_some(),
        }
    }
}

/// One watched counter.
struct Watched {
    /// When, and at what totals, its rate is measured from.
    from_at: Nanos,
    from: Total,
    /// Whether `from` is where an early report measured it, or where a peer going down or
    /// coming back started measuring afresh: the periodic sample then measures it from there,
    /// not across the move.
    afresh: bool,
    /// The fast rate estimate, and the arrivals at the last look.
    fast: f64,
    seen_at: Nanos,
    seen: u64,
    /// The totals at its last looks (at most [`MARKS`]), oldest first.
    marks: VecDeque<(Nanos, Total)>,
}

impl Watched {
    fn new(now: Nanos, total: Total, rate: f64, afresh: bool) -> Watched {
        Watched {
            from_at: now,
            from: total,
            afresh,
            fast: rate,
            seen_at: now,
            seen: total.arrivals,
            marks: VecDeque::with_capacity(MARKS),
        }
    }

    fn observe(&mut self, now: Nanos, arrivals: u64) {
        let dt = now.saturating_sub(self.seen_at);
        if dt == 0 {
            return;
        }
        let rate = arrivals.saturating_sub(self.seen) as f64 / (dt as f64 / 1e9);
        let alpha = 1.0 - (-(dt as f64) / FAST_TAU as f64).exp();
        self.fast += alpha * (rate - self.fast);
        self.seen_at = now;
        self.seen = arrivals;
    }
}

/// The counters a node looks at between its reports (see the module docs).
#[derive(Default)]
pub(crate) struct Watch {
    counters: HashMap<String, Watched>,
    /// Until when every shared counter is watched, busy or not.
    all_until: Nanos,
    /// Until when looks are made at all (see [`LOOK_AFTER_EVENT`]).
    look_until: Nanos,
}

impl Watch {
    /// At a periodic sample at `now`: `measured` holds the rates just measured over the
    /// window, and is corrected here for the counters measured afresh since (from there, if at
    /// least `min_window` ago, else the rate `before` stands). Then the busy counters are
    /// watched from here.
    pub(crate) fn on_sample(
        &mut self,
        now: Nanos,
        totals: &HashMap<String, Total>,
        measured: &mut HashMap<String, f64>,
        before: &HashMap<String, f64>,
        min_window: Nanos,
    ) {
        let all = now < self.all_until;
        // The watched ones (busy, or all of them for a while): a lookup each.
        for (key, w) in &mut self.counters {
            let Some(total) = totals.get(key) else {
                continue;
            };
            w.observe(now, total.arrivals);
            if w.afresh {
                let since = now.saturating_sub(w.from_at);
                if since < min_window {
                    // Too little to measure yet: the early rate stands, measured from there.
                    let early = before.get(key).copied().unwrap_or(0.0);
                    measured.insert(key.clone(), early);
                    continue;
                }
                let calls = total.arrivals.saturating_sub(w.from.arrivals);
                measured.insert(key.clone(), calls as f64 / (since as f64 / 1e9));
            }
            w.from_at = now;
            w.from = *total;
            w.afresh = false;
        }
        self.counters.retain(|key, w| {
            totals.contains_key(key)
                && (all || w.afresh || measured.get(key).is_some_and(|r| *r > 0.0))
        });
        // Counters busy since: idle ones cost a comparison, not a lookup.
        for (key, rate) in measured.iter() {
            if (*rate > 0.0 || all)
                && !self.counters.contains_key(key)
                && let Some(total) = totals.get(key).filter(|t| t.shared)
            {
                let w = Watched::new(now, *total, *rate, false);
                self.counters.insert(key.clone(), w);
            }
        }
    }

    /// An event that moves calls at `now`: a peer went down or came back, or this node just
    /// started. Looks are made for [`LOOK_AFTER_EVENT`] from here; every shared counter in
    /// `totals` is watched for one `window` and measured afresh from here, so that what follows
    /// is measured without what came before.
    pub(crate) fn afresh<'a>(
        &mut self,
        now: Nanos,
        totals: impl Iterator<Item = (&'a str, Total)>,
        own: &HashMap<String, f64>,
        window: Nanos,
    ) {
        let shared: Vec<(&str, Total)> = totals.filter(|(_, t)| t.shared).collect();
        // Watching them all costs about a microsecond a counter a look: beyond
        // `WATCH_ALL_AT_MOST`, only the busy ones are measured afresh, and calls that arrive
        // where there were none wait for the next periodic report (100 ms at most).
        self.look_until = now.saturating_add(LOOK_AFTER_EVENT);
        let all = shared.len() <= WATCH_ALL_AT_MOST;
        if all {
            self.all_until = now.saturating_add(window);
        }
        for (key, total) in shared {
            if !all && !self.counters.contains_key(key) {
                continue;
            }
            match self.counters.get_mut(key) {
                Some(w) => {
                    w.observe(now, total.arrivals);
                    w.from_at = now;
                    w.from = total;
                    w.afresh = true;
                }
                None => {
                    let rate = own.get(key).copied().unwrap_or(0.0);
                    let w = Watched::new(now, total, rate, true);
                    self.counters.insert(key.to_string(), w);
                }
            }
        }
    }

    /// Looks at every watched counter (`read` gives its totals now; `None`: it is gone) and
    /// sets `own` to the new rate of each whose calls have moved. Returns the longest time one
    /// was measured over, if any moved.
    pub(crate) fn look<'a>(
        &mut self,
        now: Nanos,
        own: &mut HashMap<String, f64>,
        read: impl Fn(&str) -> Option<Reading<'a>>,
    ) -> Option<Nanos> {
        if now >= self.look_until {
            return None;
        }
        let mut moved = None;
        for (key, w) in &mut self.counters {
            let Some(r) = read(key) else { continue };
            let Some(ceiling) = r.ceiling else { continue };
            w.observe(now, r.arrivals);
            let rate = own.get(key).copied().unwrap_or(0.0);
            // The most telling span: since the rate was measured, or since one of the last
            // looks.
            let best = std::iter::once((w.from_at, w.from))
                .chain(w.marks.iter().copied())
                .filter_map(|(at, from)| {
                    let elapsed = now.saturating_sub(at);
                    let (new, z) = moved_rate(&r, &from, elapsed, rate, ceiling, w.fast)?;
                    Some((new, z, elapsed))
                })
                .max_by(|a, b| a.1.total_cmp(&b.1));
            let total = Total::from(&r);
            if w.marks.len() == MARKS {
                w.marks.pop_front();
            }
            w.marks.push_back((now, total));
            let Some((new, _, elapsed)) = best else {
                continue;
            };
            own.insert(key.clone(), new);
            w.from_at = now;
            w.from = total;
            w.afresh = true;
            w.marks.clear();
            moved = moved.max(Some(elapsed));
        }
        moved
    }

    #[cfg(test)]
    pub(crate) fn is_watched(&self, key: &str) -> bool {
        self.counters.contains_key(key)
    }
}

/// The new rate of counter `r`, if its calls have moved in the `elapsed` ns since `from`, when
/// its measured rate was `rate`, by more than chance explains; with how many Poisson
/// deviations they strayed.
///
/// A rise counts only where the counter has refused calls since: a burst that the limiter's
/// tolerance absorbed is no reason to take capacity from the other nodes (an earlier version
/// without this check read a burst of 30 calls far below the ceiling as a rate above it, and
/// another node throttled calls under its share; issue 17). A rise that is not there costs
/// capacity for certain (the node holds a share it does not use); a fall that is not there
/// costs only where the others cannot use what it gives up (when their demand fits in the
/// rest): so a rise must stand out by four Poisson deviations, a fall by three.
///
/// The new rate is the one over `elapsed`, or the `fast` estimate if it says more of the move
/// (higher for a rise, lower for a fall). A rise claims at most the `ceiling` (or the rate it
/// had, if more): a burst read as a rate can then at worst halve the other nodes' shares of a
/// ceiling their demand fits in, until the next periodic report corrects it; and a rate
/// already at the ceiling does not rise early at all.
fn moved_rate(
    r: &Reading<'_>,
    from: &Total,
    elapsed: Nanos,
    rate: f64,
    ceiling: f64,
    fast: f64,
) -> Option<(f64, f64)> {
    if elapsed == 0 {
        return None;
    }
    let seconds = elapsed as f64 / 1e9;
    let got = r.arrivals.saturating_sub(from.arrivals) as f64;
    let expected = rate * seconds;
    let refusing = r.refused > from.refused;
    let rise = ROSE_MIN_CALLS
        .max(ROSE_DEVIATIONS * expected.sqrt())
        .max(MOVED_FRACTION * expected);
    let fall = MOVED_MIN_CALLS
        .max(FALL_DEVIATIONS * expected.sqrt())
        .max(MOVED_FRACTION * expected);
    let now_rate = got / seconds;
    let deviations = (got - expected).abs() / expected.max(1.0).sqrt();
    if refusing && rate < ceiling && got > expected + rise {
        Some((now_rate.max(fast).min(rate.max(ceiling)), deviations))
    } else if got < expected - fall {
        Some((now_rate.min(fast), deviations))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;
    const CEILING: f64 = 1000.0;

    fn reading(arrivals: u64, refused: u64) -> Reading<'static> {
        Reading {
            key: "i",
            arrivals,
            refused,
            ceiling: Some(CEILING),
        }
    }

    #[test]
    fn rises_stop_at_the_ceiling_and_take_the_fast_estimate_when_it_says_more() {
        let start = Total::default();
        let moved = |r: Reading<'_>, elapsed: Nanos, rate: f64, fast: f64| {
            moved_rate(&r, &start, elapsed, rate, CEILING, fast).map(|(new, _)| new)
        };
        // 30 calls in 10 ms, refused: a rise to the ceiling, not to 3,000/s...
        assert_eq!(moved(reading(30, 5), 10 * MS, 500.0, 500.0), Some(CEILING));
        // ...and none at all for a rate already at the ceiling.
        assert_eq!(moved(reading(30, 5), 10 * MS, CEILING, CEILING), None);
        // 10 calls in 20 ms where 2 were expected: 500/s over the whole time, but the fast
        // estimate (the calls came late in it) says 600.
        assert_eq!(moved(reading(10, 1), 20 * MS, 100.0, 600.0), Some(600.0));
        // A fall takes the lower of the two: 2 calls in 50 ms where 20 were expected.
        assert_eq!(moved(reading(2, 0), 50 * MS, 400.0, 10.0), Some(10.0));
        assert_eq!(moved(reading(2, 0), 50 * MS, 400.0, 300.0), Some(40.0));
        // What chance gives is no move: 0 or 7 calls in 10 ms where 2 were expected, or 30 in
        // 100 ms where 20 were.
        assert_eq!(moved(reading(0, 0), 10 * MS, 200.0, 200.0), None);
        assert_eq!(moved(reading(7, 1), 10 * MS, 200.0, 200.0), None);
        assert_eq!(moved(reading(30, 1), 100 * MS, 200.0, 200.0), None);
        assert_eq!(moved(reading(10, 1), 100 * MS, 200.0, 200.0), None);
        // No time, no move.
        assert_eq!(moved(reading(30, 5), 0, 500.0, 500.0), None);
    }

    #[test]
    fn only_shared_counters_are_watched() {
        let mut w = Watch::default();
        let totals = [
            (
                "minute",
                Total {
                    arrivals: 5,
                    refused: 0,
                    shared: false,
                },
            ),
            (
                "second",
                Total {
                    arrivals: 5,
                    refused: 0,
                    shared: true,
                },
            ),
        ];
        w.afresh(0, totals.into_iter(), &HashMap::new(), 100 * MS);
        assert!(w.is_watched("second") && !w.is_watched("minute"));
    }
}
