//! [`DataplaneOptions`]: the tunables of a data plane.

use crate::limiter::DEFAULT_BURST;
use crate::shares::DEFAULT_SHARE_FLOOR;
use model::clock::{Clock, SystemClock};
use std::sync::Arc;
use std::time::Duration;

/// Tunables of a [`Dataplane`]; `Default` gives production values.
#[derive(Clone)]
pub struct DataplaneOptions {
    /// This node's id (in request ids; excluded from its own peers).
    pub node_id: u64,
    pub clock: Arc<dyn Clock>,
    /// Limiter burst tolerance, as a duration of quota.
    pub burst: Duration,
    /// Least fraction of a ceiling a serving node keeps (see [`crate::share`]).
    pub share_floor: f64,
    /// Shortest window offered rates are measured over.
    pub demand_window: Duration,
    /// Peer reports older than this are ignored.
    pub stale_after: Duration,
    pub backend_connect_timeout: Duration,
    pub backend_pool_idle_timeout: Duration,
    pub backend_pool_max_idle_per_host: usize,
    /// When a backend of an API with several is taken out, and for how long.
    pub backend_health: crate::health::HealthPolicy,
}

impl Default for DataplaneOptions {
    fn default() -> Self {
        DataplaneOptions {
            node_id: 0,
            clock: Arc::new(SystemClock::new()),
            burst: DEFAULT_BURST,
            share_floor: DEFAULT_SHARE_FLOOR,
            demand_window: Duration::from_millis(100),
            // Five report periods; a peer silent for twice that is gone (shares::GONE_AFTER).
            stale_after: Duration::from_millis(500),
            backend_connect_timeout: Duration::from_secs(3),
            backend_pool_idle_timeout: Duration::from_secs(60),
            backend_pool_max_idle_per_host: 256,
            backend_health: crate::health::HealthPolicy::default(),
        }
    }
}

impl std::fmt::Debug for DataplaneOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataplaneOptions")
            .field("node_id", &self.node_id)
            .field("burst", &self.burst)
            .field("share_floor", &self.share_floor)
            .field("demand_window", &self.demand_window)
            .field("stale_after", &self.stale_after)
            .finish_non_exhaustive()
    }
}
