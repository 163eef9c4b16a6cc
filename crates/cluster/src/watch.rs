//! Knowing at once that a peer's process is gone.
//!
//! Every node holds a `Watch` stream open to every other member. The answering node never
//! sends on it and ends it only when it stops, so the stream breaks exactly when the process
//! on the other end goes away: a SIGKILL, a crash, an exit. The kernel closes a dead process's
//! sockets, so the break arrives within a millisecond or so, where a missing demand report is
//! noticed only after a second of silence (`GONE_AFTER` in the data plane's shares). Whoever
//! holds the watch (the data plane) then stops counting that peer's share of each limit.
//!
//! A peer that is alive but cut off or paused keeps its stream until HTTP/2 keep-alive gives
//! up on the connection; by then it has long been silent, so nothing changes for it. A stream
//! broken while the peer still runs (a reset connection) costs at most one report period: the
//! peer's next demand report counts it again.

use crate::network::{Channels, is_refused};
use crate::standing::Standing;
use crate::types::NodeId;
use proto::peer::{WatchBeat, WatchRequest};
use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Told the id of a peer whose process is gone.
pub type PeerGone = Arc<dyn Fn(NodeId) + Send + Sync>;

/// The answering side's stream: pending until this node stops.
pub(crate) type WatchStream =
    Pin<Box<dyn futures::Stream<Item = Result<WatchBeat, tonic::Status>> + Send>>;

/// How often the membership is checked for peers to start or stop watching, and how long a
/// broken watch waits before it is opened again.
const PERIOD: Duration = Duration::from_millis(100);
/// How long a peer that does not offer `Watch` (an older version, in a rolling upgrade) is
/// left alone before it is asked again.
const UNSUPPORTED_BACKOFF: Duration = Duration::from_secs(10);

/// The stream a node answers `Watch` with: it yields nothing and ends when `closing` becomes
/// true, as the node stops (without that end, a graceful shutdown of the peer server would
/// wait for it forever).
pub(crate) fn answer(mut closing: tokio::sync::watch::Receiver<bool>) -> WatchStream {
    let end = async move {
        let _ = closing.wait_for(|c| *c).await;
    };
    Box::pin(futures::StreamExt::filter_map(
        futures::stream::once(end),
        |()| futures::future::ready(None),
    ))
}

/// What a node's watches need of it.
pub(crate) struct Watcher {
    pub(crate) me: NodeId,
    /// The current membership, by id: peer address.
    pub(crate) members: Box<dyn Fn() -> BTreeMap<NodeId, String> + Send + Sync>,
    pub(crate) standing: Arc<Standing>,
    pub(crate) tls: Option<tls::ClientTls>,
}

/// Watches every other member, and calls `gone` with a peer's id when its process is found
/// gone: its watch broke, or connecting to it was refused. Runs until aborted (dropping the
/// handle does not stop it).
pub(crate) fn spawn(w: Watcher, gone: PeerGone) -> JoinHandle<()> {
    tokio::spawn(async move {
        let channels = Channels::new(w.tls.clone());
        let w = Arc::new(w);
        let mut watching: HashMap<NodeId, (String, JoinHandle<()>)> = HashMap::new();
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let me = w.me;
            let members = (w.members)();
            watching.retain(|id, (addr, task)| {
                let keep = members.get(id) == Some(addr) && !task.is_finished();
                if !keep {
                    task.abort();
                }
                keep
            });
            for (id, addr) in members {
                if id == me || watching.contains_key(&id) {
                    continue;
                }
                let task = tokio::spawn(watch_one(
                    w.clone(),
                    channels.clone(),
                    id,
                    addr.clone(),
                    gone.clone(),
                ));
                watching.insert(id, (addr, task));
            }
        }
    })
}

/// Holds one peer's watch open, again and again.
async fn watch_one(
    w: Arc<Watcher>,
    channels: Channels,
    peer: NodeId,
    addr: String,
    gone: PeerGone,
) {
    loop {
        let wait = match watch_until_broken(&w, &channels, &addr).await {
            Ended::Broken | Ended::Refused => {
                gone(peer);
                PERIOD
            }
            Ended::Unsupported => UNSUPPORTED_BACKOFF,
            Ended::Failed => PERIOD,
        };
        tokio::time::sleep(wait).await;
    }
}

enum Ended {
    /// The stream was open and broke: the process on the other end is gone.
    Broken,
    /// Nothing listens on the peer's address.
    Refused,
    /// The peer does not offer `Watch`.
    Unsupported,
    /// Anything else (a timeout, a refusal by the peer): nothing is concluded.
    Failed,
}

async fn watch_until_broken(w: &Watcher, channels: &Channels, addr: &str) -> Ended {
    let Ok(mut client) = channels.get(addr) else {
        return Ended::Failed;
    };
    let mut req = tonic::Request::new(WatchRequest { node_id: w.me });
    w.standing.stamp(req.metadata_mut());
    let opened = tokio::time::timeout(Duration::from_secs(5), client.watch(req)).await;
    let mut stream = match opened {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) if is_refused(&s) => return Ended::Refused,
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => return Ended::Unsupported,
        Ok(Err(_)) | Err(_) => return Ended::Failed,
    };
    // Nothing is ever sent; a message would be from a newer version and means nothing yet.
    while let Ok(Some(_)) = stream.message().await {}
    Ended::Broken
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn the_answer_says_nothing_and_ends_when_the_node_stops() {
        let (closing, rx) = tokio::sync::watch::channel(false);
        let mut stream = answer(rx);
        // Nothing while the node runs.
        let quiet = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
        assert!(quiet.is_err(), "the stream yielded {quiet:?}");
        // Ended, without a message, once it stops.
        closing.send_replace(true);
        let end = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
        assert!(matches!(end, Ok(None)), "{end:?}");
    }
}
