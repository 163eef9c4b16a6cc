//! The access log: one JSON line per request, written off the request path.
//!
//! A request's line is formatted into a buffer taken from its server thread's pool (no
//! allocation once the pool is warm) while the request is served, and appended, when the
//! response is done, to the thread's batch: a thread-local buffer that no other thread touches,
//! so no lock is taken per request. A batch is handed to the one writer thread through a bounded
//! channel when it holds [`BATCH_BYTES`], and every [`FLUSH_EVERY`] by the server thread's
//! ticker ([`AccessLog::flush_local`]). A request never waits on the disk: when the channel
//! already holds [`QUEUED_BATCHES`] batches (the writer has fallen that far behind), the batch
//! is dropped and its lines counted (`gateway_access_log_dropped_total`).
//!
//! A file is rotated by size: when the next lines would take it past `max_bytes`, `PATH` is
//! renamed `PATH.1` (`PATH.1` to `PATH.2`, and so on; the oldest beyond `keep` is removed) and
//! a new `PATH` is started. Lines are never split across files.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often a server thread hands over its batch when it does not fill sooner.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A batch this large is handed to the writer.
const BATCH_BYTES: usize = 64 * 1024;
/// Batches waiting for the writer; past this, batches are dropped and counted (4 MiB).
const QUEUED_BATCHES: usize = 64;
/// Line buffers a thread keeps for reuse, and the largest one kept.
const POOLED_LINES: usize = 1024;
const POOLED_LINE_CAP: usize = 2048;

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

/// Lines handed to the writer at once.
struct Batch {
    bytes: Vec<u8>,
    lines: u64,
}

struct Shared {
    node: u64,
    dropped: AtomicU64,
    stop: AtomicBool,
    to_writer: SyncSender<Batch>,
}

impl Shared {
    /// Hands `batch` to the writer, or drops and counts it when the writer is that far behind.
    fn hand_over(&self, batch: Batch) {
        match self.to_writer.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(b) | TrySendError::Disconnected(b)) => {
                self.dropped.fetch_add(b.lines, Relaxed);
            }
        }
    }
}

/// A handle to the access log, for the servers. Cheap to clone; a server thread takes its own
/// with [`AccessLog::for_thread`], so that its per-request clones count on a line of its own.
#[derive(Clone)]
pub struct AccessLog {
    handle: Arc<Handle>,
}

/// What [`AccessLog::for_thread`] allocates once per thread: a count of clones of its own.
struct Handle(Arc<Shared>);

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

/// The writer thread; [`AccessLogWriter::close`] writes what was handed over and stops it.
#[derive(Debug)]
pub struct AccessLogWriter {
    log: AccessLog,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// This thread's batch and line buffers.
struct Local {
    /// The log the batch belongs to (a thread may serve more than one, in tests).
    log: Option<Arc<Shared>>,
    batch: Batch,
    pool: Vec<String>,
}

thread_local! {
    static LOCAL: RefCell<Local> = const {
        RefCell::new(Local {
            log: None,
            batch: Batch { bytes: Vec::new(), lines: 0 },
            pool: Vec::new(),
        })
    };
    /// The formatted time of the current second, `2026-12-03T09:15:02.`, and that second.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl Local {
    fn hand_over(&mut self) {
        if let Some(log) = &self.log
            && self.batch.lines > 0
        {
            let full = std::mem::replace(
                &mut self.batch,
                Batch {
                    bytes: Vec::with_capacity(BATCH_BYTES + POOLED_LINE_CAP),
                    lines: 0,
                },
            );
            log.hand_over(full);
        }
    }
}

impl AccessLog {
    /// Opens the log's target and starts its writer thread. Lines carry `node` as the node id.
    pub fn start(
        settings: AccessLogSettings,
        node: u64,
    ) -> io::Result<(AccessLog, AccessLogWriter)> {
        let sink = Sink::open(&settings)?;
        let (to_writer, from_threads) = std::sync::mpsc::sync_channel(QUEUED_BATCHES);
        let shared = Arc::new(Shared {
            node,
            dropped: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            to_writer,
        });
        let log = AccessLog {
            handle: Arc::new(Handle(shared.clone())),
        };
        let thread = std::thread::Builder::new()
            .name("gw-access-log".into())
            .spawn(move || write_loop(&shared, &from_threads, sink))?;
        let writer = AccessLogWriter {
            log: log.clone(),
            thread: Some(thread),
        };
        Ok((log, writer))
    }

    /// A handle of the calling server thread's own (see the type's docs).
    pub fn for_thread(&self) -> AccessLog {
        AccessLog {
            handle: Arc::new(Handle(self.shared().clone())),
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.0
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared().dropped.load(Relaxed)
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

    /// Hands the calling thread's batch to the writer, however small: a server thread calls
    /// this every [`FLUSH_EVERY`] and when it stops.
    pub fn flush_local(&self) {
        LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            if l.log
                .as_ref()
                .is_some_and(|log| Arc::ptr_eq(log, self.shared()))
            {
                l.hand_over();
            }
        });
    }

    /// Appends one finished line (with its newline) to this thread's batch.
    fn push(&self, line: &str) {
        LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            if !l
                .log
                .as_ref()
                .is_some_and(|log| Arc::ptr_eq(log, self.shared()))
            {
                l.hand_over();
                l.log = Some(self.shared().clone());
            }
            l.batch.bytes.extend_from_slice(line.as_bytes());
            l.batch.lines += 1;
            if l.batch.bytes.len() >= BATCH_BYTES {
                l.hand_over();
            }
        });
    }

    /// Begins the line of a request that just arrived.
    pub fn begin(&self, req: &Arrived<'_>) -> Record {
        let mut line = LOCAL
            .with(|l| l.borrow_mut().pool.pop())
            .unwrap_or_else(|| String::with_capacity(512));
        line.push_str("{\"time\":\"");
        rfc3339_ms(&mut line, SystemTime::now());
        line.push_str("\",\"request_id\":\"");
        line.push_str(std::str::from_utf8(req.request_id).unwrap_or(""));
        line.push_str("\",\"node\":");
        push_u64(&mut line, self.shared().node);
        line.push_str(",\"client\":\"");
        push_addr(&mut line, req.client);
        line.push_str("\",\"method\":");
        json_str(&mut line, req.method);
        line.push_str(",\"host\":");
        json_opt(&mut line, req.host);
        line.push_str(",\"path\":");
        json_str(&mut line, req.path);
        line.push_str(",\"bytes_in\":");
        push_u64(&mut line, req.bytes_in);
        Record {
            log: self.clone(),
            line,
            started: Instant::now(),
        }
    }
}

/// One request's line while the request is served: begun when it arrives, ended when its
/// response body has been sent (with the bytes sent and the total time).
pub struct Record {
    log: AccessLog,
    line: String,
    started: Instant,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record").finish_non_exhaustive()
    }
}

/// A request as it arrived: the start of its line.
#[derive(Clone, Copy, Debug)]
pub struct Arrived<'a> {
    pub request_id: &'a [u8],
    pub client: SocketAddr,
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub bytes_in: u64,
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

/// What happened at the backends, for a request that was sent to one.
#[derive(Debug, Clone, Copy)]
pub struct Sent<'a> {
    /// The backend that answered or failed last (`host:port`); `None` if none could be tried.
    pub backend: Option<&'a str>,
    /// Whether the request was sent again to another backend (its first could not be
    /// connected).
    pub retried: bool,
    /// Until the response head (or the failure).
    pub elapsed_ns: u64,
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

    /// The response's status and error code, and the backend it came from if any.
    pub fn respond(&mut self, status: u16, error_code: Option<&str>, backend: Option<&Sent<'_>>) {
        let line = &mut self.line;
        line.push_str(",\"status\":");
        push_u64(line, status.into());
        line.push_str(",\"error_code\":");
        json_opt(line, error_code);
        line.push_str(",\"backend\":");
        json_opt(line, backend.and_then(|b| b.backend));
        line.push_str(",\"backend_retried\":");
        line.push_str(if backend.is_some_and(|b| b.retried) {
            "true"
        } else {
            "false"
        });
        line.push_str(",\"backend_ms\":");
        match backend {
            Some(b) => push_ms(line, b.elapsed_ns),
            None => line.push_str("null"),
        }
    }

    /// Ends the line with the response body's bytes sent and the total time, and queues it.
    pub fn end(self, bytes_out: u64) {
        let Record {
            log,
            mut line,
            started,
        } = self;
        let total = started.elapsed().as_nanos();
        line.push_str(",\"bytes_out\":");
        push_u64(&mut line, bytes_out);
        line.push_str(",\"total_ms\":");
        push_ms(&mut line, u64::try_from(total).unwrap_or(u64::MAX));
        line.push_str("}\n");
        log.push(&line);
        if line.capacity() <= POOLED_LINE_CAP {
            line.clear();
            LOCAL.with(|l| {
                let mut l = l.borrow_mut();
                if l.pool.len() < POOLED_LINES {
                    l.pool.push(line);
                }
            });
        }
    }
}

impl AccessLogWriter {
    /// Writes every batch handed over so far and stops the writer thread. The server threads
    /// hand over what they hold when they stop: close the log after them.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.log.shared().stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AccessLogWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_loop(shared: &Shared, batches: &Receiver<Batch>, mut sink: Sink) {
    let mut warned = false;
    let mut write = |batch: Batch, sink: &mut Sink| {
        if let Err(e) = sink.write(&batch.bytes) {
            // Counted as dropped; said once, not per batch.
            shared.dropped.fetch_add(batch.lines, Relaxed);
            if !warned {
                tracing::error!(error = %e, "cannot write the access log; dropping lines");
                warned = true;
            }
        }
    };
    loop {
        match batches.recv_timeout(FLUSH_EVERY) {
            Ok(batch) => {
                write(batch, &mut sink);
                // Whatever else is queued goes out before the flush.
                while let Ok(batch) = batches.try_recv() {
                    write(batch, &mut sink);
                }
                let _ = sink.flush();
            }
            Err(RecvTimeoutError::Timeout) => {}
            // Never: `shared` holds a sender.
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if shared.stop.load(Relaxed) {
            while let Ok(batch) = batches.try_recv() {
                write(batch, &mut sink);
            }
            let _ = sink.flush();
            return;
        }
    }
}

/// Appends `n` in decimal.
fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[i..]).unwrap_or("0"));
}

/// Appends `ns` nanoseconds as milliseconds with three decimals (rounded to the microsecond).
fn push_ms(out: &mut String, ns: u64) {
    let us = ns.saturating_add(500) / 1000;
    push_u64(out, us / 1000);
    let frac = us % 1000;
    out.push('.');
    out.push(char::from(b'0' + (frac / 100) as u8));
    out.push(char::from(b'0' + (frac / 10 % 10) as u8));
    out.push(char::from(b'0' + (frac % 10) as u8));
}

/// Appends a socket address as `Display` does, IPv4 without the formatting machinery.
fn push_addr(out: &mut String, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(out, octet.into());
            }
            out.push(':');
            push_u64(out, a.port().into());
        }
        SocketAddr::V6(a) => {
            let _ = write!(out, "{a}");
        }
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
    let mut clean = 0;
    for (i, b) in s.bytes().enumerate() {
        // Only ASCII needs escaping, so the runs between escapes are whole UTF-8 text.
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            b if b < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[clean..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(escaped);
        }
        clean = i + 1;
    }
    out.push_str(&s[clean..]);
    out.push('"');
}

/// Appends `s` as a JSON string, or `null`.
pub(crate) fn json_opt(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.push_str("null"),
    }
}

/// Appends `at` in RFC 3339, UTC, with milliseconds: `2026-12-03T09:15:02.123Z`. The text up
/// to the second is formatted once per second per thread.
pub(crate) fn rfc3339_ms(out: &mut String, at: SystemTime) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let (y, m, d) = civil_from_days((secs / 86_400) as i64);
            let s = secs % 86_400;
            c.1.clear();
            let _ = write!(
                c.1,
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.",
                s / 3600,
                s / 60 % 60,
                s % 60,
            );
            c.0 = secs;
        }
        out.push_str(&c.1);
    });
    let ms = since.subsec_millis();
    out.push(char::from(b'0' + (ms / 100) as u8));
    out.push(char::from(b'0' + (ms / 10 % 10) as u8));
    out.push(char::from(b'0' + (ms % 10) as u8));
    out.push('Z');
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
    fn numbers_and_addresses_are_written_as_display_would() {
        let mut s = String::new();
        for n in [0, 7, 10, 12_345, u64::MAX] {
            s.clear();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
        for (ns, text) in [
            (0, "0.000"),
            (499, "0.000"),
            (500, "0.001"),
            (812_345, "0.812"),
            (1_234_567_890, "1234.568"),
        ] {
            s.clear();
            push_ms(&mut s, ns);
            assert_eq!(s, text, "{ns} ns");
        }
        for addr in ["127.0.0.1:53412", "10.0.255.9:1", "[::1]:8080"] {
            let addr: SocketAddr = addr.parse().unwrap();
            s.clear();
            push_addr(&mut s, addr);
            assert_eq!(s, addr.to_string());
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_whole_batches() {
        let (to_writer, _writer_never_reads) = std::sync::mpsc::sync_channel(1);
        let shared = Shared {
            node: 1,
            dropped: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            to_writer,
        };
        let batch = |lines| Batch {
            bytes: b"{}\n".repeat(lines as usize),
            lines,
        };
        shared.hand_over(batch(3));
        assert_eq!(shared.dropped.load(Relaxed), 0, "queued");
        shared.hand_over(batch(5));
        shared.hand_over(batch(2));
        assert_eq!(
            shared.dropped.load(Relaxed),
            7,
            "the two that found the queue full"
        );
    }

    #[test]
    fn lines_reach_the_file_from_each_thread_and_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let settings = AccessLogSettings {
            target: AccessLogTarget::File(path.clone()),
            max_bytes: 1 << 20,
            keep: 1,
        };
        let (log, writer) = AccessLog::start(settings, 7).unwrap();
        let line = |log: &AccessLog, id: &str| {
            let mut r = log.begin(&Arrived {
                request_id: id.as_bytes(),
                client: "127.0.0.1:4000".parse().unwrap(),
                method: "GET",
                host: None,
                path: "/a\"b",
                bytes_in: 0,
            });
            r.route(&Routed {
                stage: "RELEASE",
                ..Routed::default()
            });
            r.respond(404, Some("NoRoute"), None);
            r.end(17);
        };
        let threads: Vec<_> = (0..3)
            .map(|t| {
                let log = log.for_thread();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        line(&log, &format!("t{t}-{i}"));
                    }
                    log.flush_local();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        writer.close();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 300);
        assert_eq!(log.dropped(), 0);
        let first = &lines[0];
        assert_eq!(first["node"], 7);
        assert_eq!(first["path"], "/a\"b");
        assert_eq!(first["status"], 404);
        assert_eq!(first["error_code"], "NoRoute");
        assert_eq!(first["backend_ms"], serde_json::Value::Null);
        assert_eq!(first["backend"], serde_json::Value::Null);
        assert_eq!(first["backend_retried"], false);
        assert_eq!(first["bytes_out"], 17);
        assert!(first["total_ms"].as_f64().unwrap() >= 0.0);
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
