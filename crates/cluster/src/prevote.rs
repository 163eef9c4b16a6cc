//! Pre-vote, which openraft 0.9 does not have (Raft dissertation, section 9.6).
//!
//! Without it, a voter that cannot hear the leader (cut off, one-way cut, paused, restarted)
//! times out and stands for election again and again, raising its term each time; when it is
//! heard again, its higher term deposes a healthy leader. openraft's leader lease makes the
//! other voters refuse its votes, but not its term.
//!
//! Here a voter may stand for election only when a majority of the voters, itself included,
//! have not heard from a leader for at least the minimum election timeout (asked with the peer
//! `Probe` call, which answers how long ago its node last heard from a leader). Otherwise its
//! election timer is switched off (openraft's runtime `elect` switch): it stays a follower, with
//! its term, until the leader's messages reach it again. A voter that hears from a leader keeps
//! its timer off, so a node resumed after a pause cannot fire an election that was due while
//! it was stopped before it has asked.
//!
//! The cost: after a leader crash, an election starts at most one check interval (the
//! heartbeat) after a majority stopped hearing from it, instead of at the first timer.

use crate::node::Node;
use crate::types::NodeId;
use openraft::ServerState;
use proto::peer::ProbeRequest;
use std::time::Duration;

impl Node {
    /// How long ago this node was last in touch with a leader that had a quorum, as `Probe`
    /// answers it (see `standing`: a leader's own quorum acknowledgements; a follower's last
    /// AppendEntries, dated back by its leader's quorum age); `None` if never since it started.
    pub(crate) fn leader_contact_age(&self) -> Option<Duration> {
        let standing = self.standing();
        standing.had_contact().then(|| standing.contact_age())
    }

    /// Switches this node's election timer on or off, every heartbeat, as the module docs say.
    pub(crate) async fn gate_elections(self, heartbeat: Duration, election_min: Duration) {
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut electing = true;
        loop {
            tick.tick().await;
            if self.raft().metrics().borrow().state == ServerState::Shutdown {
                return;
            }
            let allow = self.may_stand(heartbeat, election_min).await;
            self.raft().runtime_config().elect(allow);
            if electing != allow {
                electing = allow;
                tracing::debug!(node = self.id(), allow, "election timer switched");
            }
        }
    }

    async fn may_stand(&self, heartbeat: Duration, election_min: Duration) -> bool {
        let m = self.raft().metrics().borrow().clone();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        if m.state == ServerState::Leader || voters.len() <= 1 || !voters.contains(&self.id()) {
            return true;
        }
        if self
            .leader_contact_age()
            .is_some_and(|age| age < election_min)
        {
            return false;
        }
        let asks = voters.iter().filter(|v| **v != self.id()).map(|v| {
            let addr = m
                .membership_config
                .membership()
                .get_node(v)
                .map(|n| n.addr.clone());
            async move {
                let mut c = self.channels().get(&addr?).ok()?;
                let mut req = tonic::Request::new(ProbeRequest {
                    from_node_id: self.id(),
                });
                req.set_timeout(heartbeat * 2);
                let reply = c.probe(req).await.ok()?.into_inner();
                // Granted when it has not heard from a leader for an election timeout.
                let granted = reply
                    .millis_since_leader_contact
                    .is_none_or(|ms| Duration::from_millis(ms) >= election_min);
                Some(granted)
            }
        });
        let grants = 1 + futures::future::join_all(asks)
            .await
            .into_iter()
            .filter(|g| *g == Some(true))
            .count();
        grants * 2 > voters.len()
    }
}
