//! A voter that lost its log grants no vote until it holds what was committed.
//!
//! Raft assumes a voter's log and vote survive. A voter that comes back with an empty data
//! directory (a lost volume) would grant its vote to any candidate, since every log is at least
//! as long as an empty one, and could so elect a leader that lacks a committed entry: with
//! voters {1, 2, 3}, an entry committed on 1 and 3 while 2 lagged, 3 wiped, 1 down: 2 asks 3 for
//! its vote, gets it, and leads without the entry, which is lost for good.
//!
//! So a node that starts with an empty log abstains until a leader has reached it and it has
//! applied that leader's commit index. Meanwhile it votes only for a candidate whose last log
//! entry is at least as new, by Raft's order (term, then index), as that committed entry: such a
//! candidate holds it (by Raft's log matching and leader completeness). Before any leader has
//! reached it, it refuses every candidate, as if it were down, which Raft tolerates; it still
//! receives and applies the log.
//!
//! One exception: when the node starts, a new cluster may be forming, and its first candidate
//! (whose log holds only the initial membership, index 0) needs the other pristine voters'
//! votes. A candidate with no entry past index 0 cannot lack a committed entry of a cluster
//! that has committed any (it would need the vote of a node that holds that entry), so granting
//! it is safe.
//!
//! What this does not cover: the vote the node cast before it lost its disk. If it voted for a
//! winning candidate in term T, then lost its disk and caught up from a deposed leader of an
//! earlier term before the winner reached it, it could vote again in term T. That needs a
//! crash in the instant after a vote and a stale leader still replicating; the safe
//! procedure (remove the node, wipe it, add it again) has no such window.

use std::sync::Mutex;

/// A log entry's position in Raft's order: (leader term, index).
pub(crate) type LogPos = (u64, u64);

/// Where the node is in catching up after starting with an empty log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Grants votes as Raft says.
    Voting,
    /// Started empty; no leader has reached it yet.
    UntilLeader,
    /// A leader reached it: abstains until it has applied this log id's index, and grants only
    /// candidates at least as new as it (term, index).
    UntilApplied(LogPos),
}

#[derive(Debug)]
pub(crate) struct Abstention(Mutex<Phase>);

impl Abstention {
    /// `pristine`: the node's log was empty when it started.
    pub(crate) fn new(pristine: bool) -> Abstention {
        Abstention(Mutex::new(if pristine {
            Phase::UntilLeader
        } else {
            Phase::Voting
        }))
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A leader's append-entries request, with its commit position, reached the node.
    pub(crate) fn heard_leader(&self, leader_commit: Option<LogPos>) {
        let commit = leader_commit.unwrap_or((0, 0));
        let mut p = self.phase();
        *p = match *p {
            Phase::Voting => Phase::Voting,
            Phase::UntilLeader => Phase::UntilApplied(commit),
            Phase::UntilApplied(was) => Phase::UntilApplied(was.max(commit)),
        };
    }

    /// Why the node refuses a candidate whose last log entry is at `candidate_last`, given the
    /// index it has applied; `None` when it may vote (Raft's own checks still follow).
    pub(crate) fn refuses(
        &self,
        candidate_last: Option<LogPos>,
        applied: Option<u64>,
    ) -> Option<String> {
        let candidate = candidate_last.unwrap_or((0, 0));
        let mut p = self.phase();
        match *p {
            Phase::Voting => None,
            Phase::UntilApplied(target) if applied.unwrap_or(0) >= target.1 => {
                tracing::info!(
                    "caught up to log index {} after starting with an empty log: voting again",
                    target.1
                );
                *p = Phase::Voting;
                None
            }
            // The first candidate of a new cluster: nothing is committed past the membership.
            _ if candidate.1 == 0 => None,
            Phase::UntilApplied(target) if candidate >= target => None,
            Phase::UntilLeader => Some(
                "this node started with an empty log and no leader has reached it yet: it votes \
                 only for a candidate known to hold what the cluster committed"
                    .into(),
            ),
            Phase::UntilApplied((term, index)) => Some(format!(
                "this node started with an empty log and has applied up to {} of the {index} \
                 entries a leader had committed; the candidate's log ends at term {}, index {}, \
                 before that commit (term {term}, index {index})",
                applied.unwrap_or(0),
                candidate.0,
                candidate.1
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_with_a_log_votes() {
        let a = Abstention::new(false);
        assert_eq!(a.refuses(Some((1, 7)), None), None);
    }

    #[test]
    fn an_empty_node_refuses_stale_candidates_until_it_applied_the_leaders_commit() {
        let a = Abstention::new(true);
        assert!(
            a.refuses(Some((3, 50)), None).is_some(),
            "before any leader"
        );
        a.heard_leader(Some((3, 40)));
        assert!(
            a.refuses(Some((3, 39)), Some(10)).is_some(),
            "shorter, same term"
        );
        assert!(
            a.refuses(Some((2, 90)), Some(10)).is_some(),
            "longer, older term"
        );
        assert_eq!(a.refuses(Some((3, 40)), Some(10)), None, "holds the commit");
        assert_eq!(
            a.refuses(Some((4, 1)), Some(10)),
            None,
            "a later term holds it"
        );
        a.heard_leader(Some((3, 42)));
        assert!(
            a.refuses(Some((3, 41)), Some(41)).is_some(),
            "the target only grows"
        );
        assert_eq!(
            a.refuses(Some((1, 5)), Some(42)),
            None,
            "applied the commit"
        );
        // Caught up once is caught up: from then on Raft's own check decides.
        assert_eq!(a.refuses(Some((1, 5)), Some(0)), None);
    }

    #[test]
    fn the_first_candidate_of_a_new_cluster_gets_the_vote() {
        let a = Abstention::new(true);
        assert_eq!(a.refuses(Some((0, 0)), None), None);
        assert_eq!(a.refuses(None, None), None);
    }
}
