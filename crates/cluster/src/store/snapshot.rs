//! The snapshot file: the state machine at one applied log id, as a stream of frames.
//!
//! ```text
//! "GWSNAP1\n"
//! frame: Header { meta, groups }           the snapshot's log id and membership
//! frame: State with its groups left out    everything but the API groups
//! frame x groups: ApiGroup                 one frame per group
//! frame x n: HistoryRecord                 the history, cut at the state (see HistoryCut)
//! frame: End { records: n }                a file without it is incomplete
//! ```
//!
//! A frame is a little-endian `u32` length and that many bytes of postcard. Writing and
//! reading go frame by frame, so neither side holds more than one group or record besides the
//! state itself; the history goes from the file into sled in batches.

use crate::store::history::{self, HistoryError};
use crate::types::SnapshotMeta;
use model::State;
use model::history::{HistoryCut, HistoryRecord};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

const MAGIC: &[u8; 8] = b"GWSNAP1\n";
/// No frame is larger: a group with this much configuration is corruption, not data.
const MAX_FRAME: u32 = 256 * 1024 * 1024;
/// History records written to sled per batch while installing.
const INSTALL_BATCH: usize = 4096;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot file: {0}")]
    Io(#[from] io::Error),
    #[error("snapshot frame does not decode: {0}")]
    Decode(#[from] postcard::Error),
    #[error("not a snapshot file (bad magic)")]
    Magic,
    #[error("snapshot frame of {0} bytes is larger than any valid one")]
    FrameTooLarge(u32),
    #[error("snapshot file is incomplete: {0}")]
    Truncated(&'static str),
    #[error(transparent)]
    History(#[from] HistoryError),
}

#[derive(Serialize, Deserialize)]
struct Header {
    meta: SnapshotMeta,
    groups: u64,
}

fn write_frame<T: Serialize>(w: &mut impl Write, v: &T) -> Result<(), SnapshotError> {
    let bytes = postcard::to_stdvec(v)?;
    let len = u32::try_from(bytes.len()).map_err(|_| SnapshotError::FrameTooLarge(u32::MAX))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&bytes)?;
    Ok(())
}

fn read_frame<T: DeserializeOwned>(
    r: &mut impl Read,
    buf: &mut Vec<u8>,
) -> Result<T, SnapshotError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(SnapshotError::FrameTooLarge(len));
    }
    buf.resize(len as usize, 0);
    r.read_exact(buf)?;
    Ok(postcard::from_bytes(buf)?)
}

/// Writes a snapshot of `state` (with the history of `tree` up to the state) to `path`, and
/// syncs it. Returns the file's size.
pub(crate) fn write(
    path: &Path,
    meta: &SnapshotMeta,
    state: &State,
    tree: &sled::Tree,
) -> Result<u64, SnapshotError> {
    let file = std::fs::File::create(path)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(MAGIC)?;
    write_frame(
        &mut w,
        &Header {
            meta: meta.clone(),
            groups: state.groups.len() as u64,
        },
    )?;
    let mut head = state.clone();
    head.groups = Default::default();
    write_frame(&mut w, &head)?;
    for g in state.groups.values() {
        write_frame(&mut w, g)?;
    }
    let cut: HistoryCut = state.history_cut();
    let mut records = 0u64;
    for record in history::records(tree, &cut) {
        write_frame(&mut w, &Tail::Record(record?))?;
        records += 1;
    }
    write_frame(&mut w, &Tail::End { records })?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

/// Reads the snapshot's metadata and state, without its history (which a restarted node has
/// in sled already).
pub(crate) fn read_state(path: &Path) -> Result<(SnapshotMeta, State), SnapshotError> {
    let mut r = open(path)?;
    let mut buf = Vec::new();
    let (header, state) = read_config(&mut r, &mut buf)?;
    Ok((header.meta, state))
}

/// Reads a whole snapshot from `from` (at its start), writing its history into `tree` (empty,
/// not current yet) in batches and a copy of the file to `keep`, which is synced. Returns the
/// metadata and the state.
pub(crate) fn install(
    from: std::fs::File,
    tree: &sled::Tree,
    keep: &Path,
) -> Result<(SnapshotMeta, State), SnapshotError> {
    let copy = BufWriter::with_capacity(1 << 20, std::fs::File::create(keep)?);
    let mut r = Tee {
        from: BufReader::with_capacity(1 << 20, from),
        copy,
    };
    check_magic(&mut r)?;
    let mut buf = Vec::new();
    let (header, state) = read_config(&mut r, &mut buf)?;
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    let mut records = 0u64;
    loop {
        let frame: Tail = read_frame(&mut r, &mut buf).map_err(|e| match e {
            SnapshotError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                SnapshotError::Truncated("no end frame")
            }
            e => e,
        })?;
        match frame {
            Tail::Record(record) => {
                history::put(&mut batch, &record);
                records += 1;
                in_batch += 1;
                if in_batch == INSTALL_BATCH {
                    tree.apply_batch(std::mem::take(&mut batch))
                        .map_err(HistoryError::from)?;
                    in_batch = 0;
                }
            }
            Tail::End { records: n } if n == records => break,
            Tail::End { .. } => return Err(SnapshotError::Truncated("record count")),
        }
    }
    if let Some(applied) = &header.meta.last_log_id {
        history::put_applied(&mut batch, applied);
    }
    tree.apply_batch(batch).map_err(HistoryError::from)?;
    tree.flush().map_err(HistoryError::from)?;
    let copy = r.copy.into_inner().map_err(|e| e.into_error())?;
    copy.sync_all()?;
    Ok((header.meta, state))
}

/// Reads through `from`, writing what it reads to `copy`.
struct Tee<R, W> {
    from: R,
    copy: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.from.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// What follows the groups: the history records, then the end.
#[derive(Serialize, Deserialize)]
enum Tail {
    Record(HistoryRecord),
    /// How many records came before it: a file that stops short is told from a complete one.
    End {
        records: u64,
    },
}

fn open(path: &Path) -> Result<BufReader<std::fs::File>, SnapshotError> {
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    check_magic(&mut r)?;
    Ok(r)
}

fn check_magic(r: &mut impl Read) -> Result<(), SnapshotError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(SnapshotError::Magic);
    }
    Ok(())
}

fn read_config(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<(Header, State), SnapshotError> {
    let header: Header = read_frame(r, buf)?;
    let mut state: State = read_frame(r, buf)?;
    for _ in 0..header.groups {
        let g: model::ApiGroup = read_frame(r, buf)?;
        state.groups.insert(g.name.clone(), g);
    }
    Ok((header, state))
}
