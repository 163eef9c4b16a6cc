//! This node's standing in its cluster: which cluster it belongs to, how recently it was in
//! contact with a quorum, and whether it is still a member.
//!
//! - **The cluster id** is made by the voter that initialises the cluster, written to
//!   `<data dir>/cluster-id` before the cluster exists, and learnt by every other node from the
//!   first log entries a leader sends it (also written to its data dir). Every peer request and
//!   reply carries the sender's id in [`CLUSTER_ID_HEADER`]; a node refuses Raft messages,
//!   forwarded writes and joins stamped with another cluster's id, and a node whose data dir
//!   (or `--cluster-id`) names another cluster than its peers do refuses to start.
//! - **Quorum contact**: a leader knows when a quorum last acknowledged it (openraft's
//!   `millis_since_quorum_ack`). A follower cannot know that from its own metrics: a leader
//!   cut off from the majority keeps its role and keeps sending heartbeats to whoever it still
//!   reaches. So every AppendEntries carries the sending leader's own quorum age
//!   ([`QUORUM_AGE_HEADER`]), and a follower that accepts one dates its contact with a quorum
//!   to the time of receipt minus that age. Contact is thus only as fresh as the leader's
//!   quorum is: a follower behind a minority leader goes stale as the leader does.
//! - **Removal** is what the watcher in `node.rs` concludes from this and the membership; the
//!   announcement a leader sends before removing a node (the fence) is kept here.

use arc_swap::ArcSwapOption;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};

/// The metadata key of the sender's cluster id, on every peer request and reply.
pub(crate) const CLUSTER_ID_HEADER: &str = "x-gateway-cluster-id";
/// The metadata key of the sending leader's quorum age in ms, on every AppendEntries.
pub(crate) const QUORUM_AGE_HEADER: &str = "x-gateway-quorum-age-ms";
/// The file in the data dir that names the cluster.
const CLUSTER_ID_FILE: &str = "cluster-id";

/// A cluster id: 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
pub fn check_cluster_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "cluster id '{id}' must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'"
        ))
    }
}

/// A new cluster id: 128 random bits in hex (from the standard library's randomly keyed
/// hasher, mixed with the time and the process id).
fn generate_cluster_id() -> String {
    let mut words = [0u64; 2];
    for (i, w) in words.iter_mut().enumerate() {
        let mut h = std::hash::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        h.write_usize(i);
        *w = h.finish();
    }
    format!("{:016x}{:016x}", words[0], words[1])
}

/// Writes `text` to `path` so that a crash leaves the old file or the new one, never half.
fn write_durably(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The cluster id, and its metadata value ready to stamp on requests.
struct Identity {
    id: String,
    header: AsciiMetadataValue,
}

/// A leader's announcement that it is about to remove this node.
#[derive(Debug, Clone)]
pub(crate) struct Fence {
    pub(crate) leader: u64,
    pub(crate) at: Instant,
}

/// Shared by the node, its peer network and its peer service.
pub(crate) struct Standing {
    data_dir: PathBuf,
    /// What the data dir says, or else what `--cluster-id` says (not written until the node
    /// initialises a cluster or a leader of that cluster reaches it).
    identity: ArcSwapOption<Identity>,
    /// Whether `identity` is written in the data dir.
    persisted: Mutex<bool>,
    /// The time base of `contact_ns`.
    base: Instant,
    /// When this node last knew a quorum of its cluster to be in contact, in ns after `base`
    /// (as leader: the last quorum acknowledgement; as follower or learner: see the module
    /// doc). 0 until the first contact.
    contact_ns: AtomicU64,
    pub(crate) fence: Mutex<Option<Fence>>,
}

impl Standing {
    /// Reads the data dir's cluster id and checks it against `expected` (`--cluster-id`).
    pub(crate) fn open(data_dir: &Path, expected: Option<&str>) -> Result<Standing, String> {
        let path = data_dir.join(CLUSTER_ID_FILE);
        let stored = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let id = text.trim().to_string();
                check_cluster_id(&id).map_err(|e| format!("{}: {e}", path.display()))?;
                Some(id)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        if let Some(expected) = expected {
            check_cluster_id(expected).map_err(|e| format!("--cluster-id: {e}"))?;
        }
        if let (Some(stored), Some(expected)) = (&stored, expected)
            && stored != expected
        {
            return Err(format!(
                "the data dir {} belongs to cluster {stored}, but --cluster-id is {expected}: \
                 this node refuses to start rather than join one cluster with another's data \
                 (give the right --cluster-id, or an empty data dir to join cluster {expected})",
                data_dir.display()
            ));
        }
        let standing = Standing {
            data_dir: data_dir.to_path_buf(),
            identity: ArcSwapOption::empty(),
            persisted: Mutex::new(stored.is_some()),
            base: Instant::now(),
            contact_ns: AtomicU64::new(0),
            fence: Mutex::new(None),
        };
        if let Some(id) = stored.as_deref().or(expected) {
            standing.set_identity(id);
        }
        Ok(standing)
    }

    fn set_identity(&self, id: &str) {
        let header = AsciiMetadataValue::try_from(id).expect("checked cluster ids are ASCII");
        self.identity.store(Some(std::sync::Arc::new(Identity {
            id: id.to_string(),
            header,
        })));
    }

    /// The cluster id this node belongs to (or, before it has joined, expects to).
    pub(crate) fn cluster_id(&self) -> Option<String> {
        self.identity.load().as_ref().map(|i| i.id.clone())
    }

    /// For a data dir that holds a cluster but no id (made before cluster ids): writes the
    /// `--cluster-id` it was started with, if any.
    pub(crate) fn claim_data(&self) -> Result<(), String> {
        match self.cluster_id() {
            Some(id) => self.persist(&id),
            None => Ok(()),
        }
    }

    /// The id to initialise a new cluster with: `--cluster-id`, or a new one; written to the
    /// data dir before the cluster is initialised.
    pub(crate) fn for_new_cluster(&self) -> Result<String, String> {
        let id = self.cluster_id().unwrap_or_else(generate_cluster_id);
        self.persist(&id)?;
        Ok(id)
    }

    /// Takes `id` as this node's cluster, from a leader that reached it; an error names both
    /// ids when this node belongs to another one.
    pub(crate) fn adopt(&self, id: &str) -> Result<(), String> {
        check_cluster_id(id)?;
        match self.cluster_id() {
            Some(mine) if mine != id => Err(self.mismatch(id)),
            _ => self.persist(id),
        }
    }

    fn persist(&self, id: &str) -> Result<(), String> {
        let mut persisted = self.persisted.lock().unwrap_or_else(|e| e.into_inner());
        if *persisted && self.cluster_id().as_deref() == Some(id) {
            return Ok(());
        }
        let path = self.data_dir.join(CLUSTER_ID_FILE);
        write_durably(&path, &format!("{id}\n"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        self.set_identity(id);
        *persisted = true;
        tracing::info!(cluster_id = id, "this node belongs to cluster {id}");
        Ok(())
    }

    /// Where this node's cluster id comes from, for messages.
    pub(crate) fn source(&self) -> String {
        if *self.persisted.lock().unwrap_or_else(|e| e.into_inner()) {
            format!("the data dir {}", self.data_dir.display())
        } else {
            "--cluster-id".to_string()
        }
    }

    fn mismatch(&self, theirs: &str) -> String {
        format!(
            "cluster id mismatch: this node belongs to cluster {}, the peer to cluster {theirs}",
            self.cluster_id().unwrap_or_default()
        )
    }

    /// Puts this node's cluster id on an outgoing peer request or reply.
    pub(crate) fn stamp(&self, meta: &mut MetadataMap) {
        if let Some(i) = self.identity.load().as_ref() {
            meta.insert(CLUSTER_ID_HEADER, i.header.clone());
        }
    }

    /// Checks the sender's cluster id on an incoming request: refused when both sides have
    /// one and they differ. With `adopt` (a leader's log entries), a node that has none yet
    /// takes the sender's.
    pub(crate) fn check_incoming(&self, meta: &MetadataMap, adopt: bool) -> Result<(), String> {
        let Some(theirs) = meta.get(CLUSTER_ID_HEADER).and_then(|v| v.to_str().ok()) else {
            return Ok(()); // A node that has not learnt its cluster yet (or an older one).
        };
        match self.cluster_id() {
            Some(mine) if mine == theirs => {
                if adopt && !*self.persisted.lock().unwrap_or_else(|e| e.into_inner()) {
                    self.persist(theirs)?;
                }
                Ok(())
            }
            Some(_) => Err(self.mismatch(theirs)),
            None if adopt => self.adopt(theirs),
            None => Ok(()),
        }
    }

    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Records contact with a quorum `age` ago (never moves backwards).
    pub(crate) fn note_contact(&self, age: Duration) {
        let at = self.now_ns().saturating_sub(age.as_nanos() as u64).max(1);
        self.contact_ns.fetch_max(at, Ordering::Relaxed);
    }

    /// How long ago this node was last in contact with a quorum; since it started, if never.
    pub(crate) fn contact_age(&self) -> Duration {
        let at = self.contact_ns.load(Ordering::Relaxed);
        Duration::from_nanos(self.now_ns().saturating_sub(at))
    }

    /// Whether this node has been in contact with a quorum since it started.
    pub(crate) fn had_contact(&self) -> bool {
        self.contact_ns.load(Ordering::Relaxed) != 0
    }

    /// The quorum age to send with an AppendEntries: only a leader sends them, and a leader's
    /// contact is its last quorum acknowledgement.
    pub(crate) fn quorum_age_header(&self) -> AsciiMetadataValue {
        let ms = if self.had_contact() {
            self.contact_age().as_millis() as u64
        } else {
            u64::MAX / 2
        };
        AsciiMetadataValue::from(ms)
    }

    /// The sending leader's quorum age from an AppendEntries' metadata; `None` from a leader
    /// that does not send it (an older version): then the receipt itself counts as contact.
    pub(crate) fn quorum_age_of(meta: &MetadataMap) -> Option<Duration> {
        let v = meta.get(QUORUM_AGE_HEADER)?.to_str().ok()?;
        v.parse::<u64>().ok().map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = generate_cluster_id();
        let b = generate_cluster_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        check_cluster_id(&a).unwrap();
    }

    #[test]
    fn bad_ids_are_refused_with_what_is_allowed() {
        for bad in ["", "a b", "é", &"x".repeat(65)] {
            let e = check_cluster_id(bad).unwrap_err();
            assert!(e.contains("1 to 64 characters"), "{e}");
        }
        check_cluster_id("prod-eu.1_a").unwrap();
    }

    #[test]
    fn the_data_dir_id_is_kept_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let s = Standing::open(dir.path(), None).unwrap();
        assert_eq!(s.cluster_id(), None);
        let id = s.for_new_cluster().unwrap();
        drop(s);
        let s = Standing::open(dir.path(), None).unwrap();
        assert_eq!(s.cluster_id(), Some(id.clone()));
        assert!(s.adopt("other").unwrap_err().contains(&id));
        let e = Standing::open(dir.path(), Some("other")).err().unwrap();
        assert!(
            e.contains(&id) && e.contains("--cluster-id is other"),
            "{e}"
        );
        Standing::open(dir.path(), Some(&id)).unwrap();
    }

    #[test]
    fn a_pristine_node_adopts_the_leaders_id_and_then_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let s = Standing::open(dir.path(), None).unwrap();
        let mut meta = MetadataMap::new();
        meta.insert(CLUSTER_ID_HEADER, "aaa".parse().unwrap());
        s.check_incoming(&meta, false).unwrap();
        assert_eq!(s.cluster_id(), None, "only a leader's entries teach the id");
        s.check_incoming(&meta, true).unwrap();
        assert_eq!(s.cluster_id().as_deref(), Some("aaa"));
        meta.insert(CLUSTER_ID_HEADER, "bbb".parse().unwrap());
        let e = s.check_incoming(&meta, true).unwrap_err();
        assert!(e.contains("aaa") && e.contains("bbb"), "{e}");
        let again = Standing::open(dir.path(), None).unwrap();
        assert_eq!(again.cluster_id().as_deref(), Some("aaa"));
    }

    #[test]
    fn contact_age_counts_from_start_then_from_contact() {
        let dir = tempfile::tempdir().unwrap();
        let s = Standing::open(dir.path(), None).unwrap();
        assert!(!s.had_contact());
        s.note_contact(Duration::ZERO);
        assert!(s.had_contact());
        assert!(s.contact_age() < Duration::from_secs(1));
        // An older contact does not move it back.
        s.note_contact(Duration::from_secs(100));
        assert!(s.contact_age() < Duration::from_secs(1));
    }
}
