//! A linearizability checker for histories of concurrent operations.
//!
//! A history is linearizable when every operation can be given a single instant between its
//! invocation and its completion at which it took effect, so that the operations, in the order
//! of those instants, are a legal sequential run of a model (Herlihy and Wing). This crate owns
//! the search for such an order: Wing and Gong's depth-first search over the operations that
//! may go next, with Lowe's memoisation of (operations done, model state) pairs already seen,
//! as Knossos and Porcupine do it, run separately on each partition of the history that the
//! model says is independent of the others (one account, one instance: P-compositionality).
//!
//! An operation whose outcome the client never learned (a timeout, a lost connection) has no
//! completion: it may have taken effect at any instant after its invocation, or never. The
//! search places it anywhere after its invocation, including after every other operation,
//! which is the same as never.
//!
//! The search is exponential in the worst case; [`check`] gives up after a step budget and
//! says so ([`CheckError::TooComplex`]) rather than answering wrongly.
//!
//! It does not know what the operations are: a [`Model`] says how each one changes the state
//! and which outputs are legal.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;

/// The sequential specification the history is checked against.
pub trait Model {
    /// The model's state; compared and hashed by the memoisation.
    type State: Clone + Eq + Hash + Debug;
    type Input: Debug;
    type Output: Debug;
    /// The partition an operation belongs to: operations of different partitions never affect
    /// each other, so each partition is checked on its own.
    type Key: Ord + Clone + Debug;

    fn init(&self) -> Self::State;

    fn partition(&self, input: &Self::Input) -> Self::Key;

    /// The state after `input` ran on `state`, if `output` is what it may have returned; `None`
    /// if that output is impossible from `state`. `output` is `None` for an operation whose
    /// outcome is unknown: any output is possible, and the state changes as the operation
    /// would change it.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
}

/// One operation of a history, as a client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Which client ran it (for reports only).
    pub client: u64,
    /// When it was invoked, in any unit that increases with real time across all clients.
    pub call: u64,
    pub input: I,
    pub completion: Completion<O>,
}

/// How an operation ended, as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion<O> {
    /// It returned `output` at `at` (same unit as [`Operation::call`], not before it).
    Returned { at: u64, output: O },
    /// The client never learned whether it took effect.
    Unknown,
}

/// An operation of model `M`'s history.
pub type OperationOf<M> = Operation<<M as Model>::Input, <M as Model>::Output>;

/// What a successful check covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub partitions: usize,
    pub operations: usize,
    /// Search steps taken, over all partitions.
    pub steps: u64,
}

/// Why a history is not shown linearizable.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("not linearizable: {0}")]
    NotLinearizable(Box<Anomaly>),
    #[error(
        "inconclusive: partition {key} ({operations} operations) needed more than {budget} search steps"
    )]
    TooComplex {
        key: String,
        operations: usize,
        budget: u64,
    },
    #[error(
        "malformed history: operation {index} (client {client}) completes before it is invoked"
    )]
    Malformed { index: usize, client: u64 },
}

/// The furthest the search got in a partition that cannot be linearized: after the longest
/// legal order it found, the operation that had returned but could not go next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    pub key: String,
    pub operations: usize,
    /// The longest prefix of a legal order that was found, as `Debug` of each operation.
    pub longest_order: Vec<String>,
    /// The model state after that prefix.
    pub state: String,
    /// An operation that had already returned at that point but fits no legal order.
    pub stuck: String,
}

impl std::fmt::Display for Anomaly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "partition {} ({} operations): after {} operations in a legal order, the state is {} and {} cannot be placed",
            self.key,
            self.operations,
            self.longest_order.len(),
            self.state,
            self.stuck
        )?;
        for (i, op) in self.longest_order.iter().enumerate().rev().take(5) {
            write!(f, "\n  #{i}: {op}")?;
        }
        Ok(())
    }
}

/// Search steps allowed per partition by [`check`].
pub const DEFAULT_BUDGET: u64 = 20_000_000;

/// Checks `history` against `model` with [`DEFAULT_BUDGET`].
pub fn check<M: Model>(model: &M, history: &[OperationOf<M>]) -> Result<Report, CheckError> {
    check_with_budget(model, history, DEFAULT_BUDGET)
}

/// Checks `history` against `model`, each partition within `budget` search steps.
pub fn check_with_budget<M: Model>(
    model: &M,
    history: &[OperationOf<M>],
    budget: u64,
) -> Result<Report, CheckError> {
    let mut partitions: BTreeMap<M::Key, Vec<&OperationOf<M>>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        if let Completion::Returned { at, .. } = op.completion
            && at < op.call
        {
            return Err(CheckError::Malformed {
                index,
                client: op.client,
            });
        }
        partitions
            .entry(model.partition(&op.input))
            .or_default()
            .push(op);
    }
    let mut report = Report {
        partitions: partitions.len(),
        operations: history.len(),
        steps: 0,
    };
    for (key, ops) in &partitions {
        report.steps += Search::new(model, ops, budget).run(key)?;
    }
    Ok(report)
}

/// An end of the list of events (the list's head and tail).
const NIL: usize = usize::MAX;

/// One event of a partition: an operation's invocation or its completion.
#[derive(Debug, Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
}

/// The search over one partition. The events are kept in a doubly linked list in time order;
/// placing an operation in the order unlinks its two events, and backtracking links them again
/// in the reverse order (so the list is restored exactly).
struct Search<'a, M: Model> {
    model: &'a M,
    ops: &'a [&'a OperationOf<M>],
    events: Vec<Event>,
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
    /// Each operation's call and completion events.
    call_event: Vec<usize>,
    return_event: Vec<usize>,
    budget: u64,
}

impl<'a, M: Model> Search<'a, M> {
    fn new(model: &'a M, ops: &'a [&'a OperationOf<M>], budget: u64) -> Self {
        let mut timed: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            let end = match op.completion {
                Completion::Returned { at, .. } => at,
                Completion::Unknown => u64::MAX,
            };
            // Invocations sort before completions at the same instant: the two operations are
            // then concurrent, the reading that accuses the system of nothing it did not do.
            timed.push((op.call, false, i));
            timed.push((end, true, i));
        }
        timed.sort_unstable();
        let events: Vec<Event> = timed
            .iter()
            .map(|&(_, is_return, op)| Event {
                op,
                is_call: !is_return,
            })
            .collect();
        let n = events.len();
        let mut call_event = vec![0; ops.len()];
        let mut return_event = vec![0; ops.len()];
        for (e, ev) in events.iter().enumerate() {
            if ev.is_call {
                call_event[ev.op] = e;
            } else {
                return_event[ev.op] = e;
            }
        }
        Search {
            model,
            ops,
            events,
            next: (0..n)
                .map(|e| if e + 1 < n { e + 1 } else { NIL })
                .collect(),
            prev: (0..n).map(|e| if e > 0 { e - 1 } else { NIL }).collect(),
            head: if n > 0 { 0 } else { NIL },
            call_event,
            return_event,
            budget,
        }
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p] = n;
        }
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        if p == NIL {
            self.head = e;
        } else {
            self.next[p] = e;
        }
        if n != NIL {
            self.prev[n] = e;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_event[op]);
        self.unlink(self.return_event[op]);
    }

    fn unlift(&mut self, op: usize) {
        self.relink(self.return_event[op]);
        self.relink(self.call_event[op]);
    }

    fn output(&self, op: usize) -> Option<&M::Output> {
        match &self.ops[op].completion {
            Completion::Returned { output, .. } => Some(output),
            Completion::Unknown => None,
        }
    }

    /// Runs the search; the number of steps it took, or why it failed.
    fn run(mut self, key: &M::Key) -> Result<u64, CheckError> {
        let mut state = self.model.init();
        let mut done = vec![0u64; self.ops.len().div_ceil(64)];
        let mut seen: HashSet<(Vec<u64>, M::State)> = HashSet::new();
        let mut stack: Vec<(usize, M::State)> = Vec::new();
        // The deepest dead end, for the report: (depth, order, state, stuck operation).
        let mut deepest: Option<(usize, Vec<usize>, M::State, usize)> = None;
        let mut entry = self.head;
        let mut steps = 0u64;
        loop {
            steps += 1;
            if steps > self.budget {
                return Err(CheckError::TooComplex {
                    key: format!("{key:?}"),
                    operations: self.ops.len(),
                    budget: self.budget,
                });
            }
            if self.head == NIL {
                return Ok(steps);
            }
            let event = (entry != NIL).then(|| self.events[entry]);
            match event {
                Some(Event { op, is_call: true }) => {
                    let input = &self.ops[op].input;
                    if let Some(after) = self.model.step(&state, input, self.output(op)) {
                        done[op / 64] |= 1 << (op % 64);
                        if seen.insert((done.clone(), after.clone())) {
                            stack.push((op, std::mem::replace(&mut state, after)));
                            self.lift(op);
                            entry = self.head;
                            continue;
                        }
                        done[op / 64] &= !(1 << (op % 64));
                    }
                    entry = self.next[entry];
                }
                // An operation completed before everything not yet placed: one of those
                // placed so far must go elsewhere.
                blocking => {
                    if deepest.as_ref().is_none_or(|d| stack.len() > d.0) {
                        let order = stack.iter().map(|(op, _)| *op).collect();
                        let stuck = blocking.map_or(self.events[self.head].op, |e| e.op);
                        deepest = Some((stack.len(), order, state.clone(), stuck));
                    }
                    let Some((op, before)) = stack.pop() else {
                        let (_, order, state, stuck) = deepest.expect("set above");
                        return Err(CheckError::NotLinearizable(Box::new(Anomaly {
                            key: format!("{key:?}"),
                            operations: self.ops.len(),
                            longest_order: order.iter().map(|&o| self.describe(o)).collect(),
                            state: format!("{state:?}"),
                            stuck: self.describe(stuck),
                        })));
                    };
                    state = before;
                    done[op / 64] &= !(1 << (op % 64));
                    self.unlift(op);
                    entry = self.next[self.call_event[op]];
                }
            }
        }
    }

    fn describe(&self, op: usize) -> String {
        let o = self.ops[op];
        match &o.completion {
            Completion::Returned { at, output } => format!(
                "client {} {:?} -> {:?} (called {}, returned {})",
                o.client, o.input, output, o.call, at
            ),
            Completion::Unknown => format!(
                "client {} {:?} -> unknown (called {})",
                o.client, o.input, o.call
            ),
        }
    }
}

#[cfg(test)]
mod tests;
