//! The access log: one JSON line per request, written off the request path.
//!
//! A request formats its line into its server thread's own buffer (a mutex only that thread and
//! the writer ever take, see [`decide::per_thread`]); one writer thread swaps the buffers out
//! every [`FLUSH_EVERY`], or sooner when a buffer passes [`WAKE_AT`], and writes them to stdout
//! or to a file. A request never waits on the disk: when a thread's buffer already holds
//! [`SLOT_CAP`] bytes (the writer has fallen that far behind), the line is dropped and counted
//! (`gateway_access_log_dropped_total`).
//!
//! A file is rotated by size: when the next lines would take it past `max_bytes`, `PATH` is
//! renamed `PATH.1` (`PATH.1` to `PATH.2`, and so on; the oldest beyond `keep` is removed) and
//! a new `PATH` is started. Lines are never split across files.

use decide::per_thread::PerThread;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the writer collects the buffers when nothing wakes it sooner.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A thread's buffer this large wakes the writer.
const WAKE_AT: usize = 64 * 1024;
/// A thread's buffer this large takes no more lines: they are dropped and counted.
const SLOT_CAP: usize = 4 * 1024 * 1024;

/// Where the access log goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    /// A file, rotated by size.
    File(PathBuf),
}

/// The access log's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogSettings {
    pub target: AccessLogTarget,
    /// A file is rotated before it would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept besides the current one (`PATH.1` .. `PATH.keep`).
    pub keep: usize,
}

struct Shared {
    node: u64,
    slots: PerThread<Mutex<Vec<u8>>>,
    dropped: AtomicU64,
    stop: AtomicBool,
    writer: OnceLock<std::thread::Thread>,
}

/// A handle to the access log, for the servers. Cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

/// The writer thread; [`AccessLogWriter::close`] writes what is buffered and stops it.
#[derive(Debug)]
pub struct AccessLogWriter {
    log: AccessLog,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AccessLog {
    /// Opens the log's target and starts its writer thread. Lines carry `node` as the node id.
    pub fn start(
        settings: AccessLogSettings,
        node: u64,
    ) -> io::Result<(AccessLog, AccessLogWriter)> {
        let sink = Sink::open(&settings)?;
        let log = AccessLog {
            shared: Arc::new(Shared {
                node,
                slots: PerThread::default(),
                dropped: AtomicU64::new(0),
                stop: AtomicBool::new(false),
                writer: OnceLock::new(),
            }),
        };
        let shared = log.shared.clone();
        let thread = std::thread::Builder::new()
            .name("gw-access-log".into())
            .spawn(move || write_loop(&shared, sink))?;
        let _ = log.shared.writer.set(thread.thread().clone());
        let writer = AccessLogWriter {
            log: log.clone(),
            thread: Some(thread),
        };
        Ok((log, writer))
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Relaxed)
    }

    /// Appends the access log's metrics in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP gateway_access_log_dropped_total Access log lines dropped because the writer fell behind.\n\
             # TYPE gateway_access_log_dropped_total counter\n\
             gateway_access_log_dropped_total {}",
            self.dropped()
        );
    }

    pub(crate) fn node(&self) -> u64 {
        self.shared.node
    }

    /// Puts one finished line (with its newline) in this thread's buffer, or drops it.
    pub(crate) fn push(&self, line: &[u8]) {
        let slot = self.shared.slots.local();
        let mut buf = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if buf.len() + line.len() > SLOT_CAP {
            drop(buf);
            self.shared.dropped.fetch_add(1, Relaxed);
            return;
        }
        let before = buf.len();
        buf.extend_from_slice(line);
        let wake = before < WAKE_AT && buf.len() >= WAKE_AT;
        drop(buf);
        if wake && let Some(t) = self.shared.writer.get() {
            t.unpark();
        }
    }
}

/// One request's line while the request is served: begun when it arrives, ended when its
/// response body has been sent (with the bytes sent and the total time).
pub struct Record {
    log: AccessLog,
    line: String,
    started: std::time::Instant,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record").finish_non_exhaustive()
    }
}

/// What a request was routed to, and who called: the middle of its line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Routed<'a> {
    pub group: Option<&'a str>,
    pub api: Option<&'a str>,
    pub stage: &'a str,
    pub app_key: Option<&'a str>,
    pub account: Option<&'a str>,
    /// The trace and this hop's span, in hex.
    pub trace: Option<([u8; 32], [u8; 16])>,
}

/// A request as it arrived: the start of its line.
#[derive(Clone, Copy, Debug)]
pub struct Arrived<'a> {
    pub request_id: &'a [u8],
    pub client: std::net::SocketAddr,
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub bytes_in: u64,
}

impl AccessLog {
    /// Begins the line of a request that just arrived.
    pub fn begin(&self, req: &Arrived<'_>) -> Record {
        let mut line = String::with_capacity(512);
        line.push_str("{\"time\":\"");
        rfc3339_ms(&mut line, SystemTime::now());
        line.push_str("\",\"request_id\":\"");
        line.push_str(std::str::from_utf8(req.request_id).unwrap_or(""));
        let _ = write!(
            line,
            "\",\"node\":{},\"client\":\"{}\",\"method\":",
            self.node(),
            req.client
        );
        json_str(&mut line, req.method);
        line.push_str(",\"host\":");
        json_opt(&mut line, req.host);
        line.push_str(",\"path\":");
        json_str(&mut line, req.path);
        let _ = write!(line, ",\"bytes_in\":{}", req.bytes_in);
        Record {
            log: self.clone(),
            line,
            started: std::time::Instant::now(),
        }
    }
}

impl Record {
    /// What the request was routed to, and who called.
    pub fn route(&mut self, r: &Routed<'_>) {
        let line = &mut self.line;
        line.push_str(",\"group\":");
        json_opt(line, r.group);
        line.push_str(",\"api\":");
        json_opt(line, r.api);
        line.push_str(",\"stage\":\"");
        line.push_str(r.stage);
        line.push_str("\",\"app_key\":");
        json_opt(line, r.app_key);
        line.push_str(",\"account\":");
        json_opt(line, r.account);
        if let Some((trace, span)) = &r.trace {
            line.push_str(",\"trace_id\":\"");
            line.push_str(std::str::from_utf8(trace).unwrap_or(""));
            line.push_str("\",\"span_id\":\"");
            line.push_str(std::str::from_utf8(span).unwrap_or(""));
            line.push('"');
        }
    }

    /// The response's status and error code, and the time the backend took.
    pub fn respond(&mut self, status: u16, error_code: Option<&str>, backend_ns: Option<u64>) {
        let line = &mut self.line;
        let _ = write!(line, ",\"status\":{status}");
        line.push_str(",\"error_code\":");
        json_opt(line, error_code);
        match backend_ns {
            Some(ns) => {
                let _ = write!(line, ",\"backend_ms\":{:.3}", ns as f64 / 1e6);
            }
            None => line.push_str(",\"backend_ms\":null"),
        }
    }

    /// Ends the line with the response body's bytes sent and the total time, and queues it.
    pub fn end(self, bytes_out: u64) {
        let Record {
            log,
            mut line,
            started,
        } = self;
        let total = started.elapsed().as_secs_f64() * 1e3;
        let _ = writeln!(line, ",\"bytes_out\":{bytes_out},\"total_ms\":{total:.3}}}");
        log.push(line.as_bytes());
    }
}

impl AccessLogWriter {
    /// Writes every line buffered so far and stops the writer thread.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.log.shared.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for AccessLogWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_loop(shared: &Shared, mut sink: Sink) {
    let mut spare = Vec::with_capacity(WAKE_AT * 2);
    let mut warned = false;
    loop {
        let stopping = shared.stop.load(Relaxed);
        for slot in shared.slots.all() {
            {
                let mut buf = slot.lock().unwrap_or_else(PoisonError::into_inner);
                if buf.is_empty() {
                    continue;
                }
                std::mem::swap(&mut *buf, &mut spare);
            }
            if let Err(e) = sink.write(&spare) {
                // Counted as dropped; said once, not per batch.
                let lines = spare.iter().filter(|b| **b == b'\n').count() as u64;
                shared.dropped.fetch_add(lines, Relaxed);
                if !warned {
                    tracing::error!(error = %e, "cannot write the access log; dropping lines");
                    warned = true;
                }
            }
            spare.clear();
            if spare.capacity() > SLOT_CAP {
                spare.shrink_to(WAKE_AT * 2);
            }
        }
        let _ = sink.flush();
        if stopping {
            return;
        }
        std::thread::park_timeout(FLUSH_EVERY);
    }
}

/// Where the writer writes.
enum Sink {
    Stdout(io::Stdout),
    File(RotatingFile),
}

impl Sink {
    fn open(settings: &AccessLogSettings) -> io::Result<Sink> {
        Ok(match &settings.target {
            AccessLogTarget::Stdout => Sink::Stdout(io::stdout()),
            AccessLogTarget::File(path) => Sink::File(RotatingFile::open(
                path.clone(),
                settings.max_bytes.max(1),
                settings.keep,
            )?),
        })
    }

    fn write(&mut self, lines: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout(out) => out.lock().write_all(lines),
            Sink::File(f) => f.write(lines),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(out) => out.lock().flush(),
            Sink::File(_) => Ok(()), // written unbuffered
        }
    }
}

/// A file rotated by size, with `keep` old ones.
struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: usize,
}

fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl RotatingFile {
    fn open(path: PathBuf, max_bytes: u64, keep: usize) -> io::Result<RotatingFile> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path,
            file,
            size,
            max_bytes,
            keep,
        })
    }

    /// Writes whole lines, rotating before a line that would take the file past its limit
    /// (a single line longer than the limit gets a file of its own).
    fn write(&mut self, mut lines: &[u8]) -> io::Result<()> {
        while !lines.is_empty() {
            let room = self.max_bytes.saturating_sub(self.size) as usize;
            // The longest run of whole lines that fits.
            let fits = match lines.get(..room.min(lines.len())) {
                Some(head) if head.len() == lines.len() => lines.len(),
                Some(head) => head.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1),
                None => 0,
            };
            let n = if fits > 0 {
                fits
            } else if self.size == 0 {
                lines
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(lines.len(), |i| i + 1)
            } else {
                self.rotate()?;
                continue;
            };
            self.file.write_all(&lines[..n])?;
            self.size += n as u64;
            lines = &lines[n..];
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(&self.path, self.keep));
            for n in (1..self.keep).rev() {
                let from = numbered(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, numbered(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(&self.path, 1))?;
        }
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Appends `s` as a JSON string (quoted and escaped).
pub(crate) fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `s` as a JSON string, or `null`.
pub(crate) fn json_opt(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.push_str("null"),
    }
}

/// Appends `at` in RFC 3339, UTC, with milliseconds: `2026-12-03T09:15:02.123Z`.
pub(crate) fn rfc3339_ms(out: &mut String, at: SystemTime) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        since.subsec_millis()
    );
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let mut s = String::new();
        rfc3339_ms(
            &mut s,
            UNIX_EPOCH + Duration::from_millis(1_709_210_096_007),
        );
        assert_eq!(s, "2024-02-29T12:34:56.007Z");
        s.clear();
        rfc3339_ms(&mut s, UNIX_EPOCH);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn strings_are_escaped() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, r#""a\"b\\c\nd\u0001é""#);
        let v: String = serde_json::from_str(&s).unwrap();
        assert_eq!(v, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn files_rotate_at_whole_lines_and_keep_n() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut f = RotatingFile::open(path.clone(), 25, 2).unwrap();
        // 10-byte lines: two fit in 25 bytes, a third does not.
        for i in 0..9 {
            f.write(format!("line {i:04}\n").as_bytes()).unwrap();
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&path), "line 0008\n");
        assert_eq!(read(&numbered(&path, 1)), "line 0006\nline 0007\n");
        assert_eq!(read(&numbered(&path, 2)), "line 0004\nline 0005\n");
        assert!(!numbered(&path, 3).exists());
        // A batch of many lines is split across files at line ends.
        f.write(b"aaaaaaaaa\nbbbbbbbbb\nccccccccc\n").unwrap();
        assert_eq!(read(&path), "bbbbbbbbb\nccccccccc\n");
        assert_eq!(read(&numbered(&path, 1)), "line 0008\naaaaaaaaa\n");
        // A line longer than the limit gets a file of its own.
        let mut long = vec![b'x'; 40];
        long.push(b'\n');
        f.write(&long).unwrap();
        assert_eq!(read(&path).len(), 41);
    }
}
