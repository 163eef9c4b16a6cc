//! W3C Trace Context (`traceparent`): the client's trace continued, or a new one started, with
//! a span id of this hop's own.
//!
//! A `traceparent` is `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`. The gateway is a
//! hop: it keeps the client's trace id and flags, and tells the backend its own span id as the
//! parent, so that a backend's spans hang under the gateway's. A missing or malformed header
//! (wrong length, not lower-case hex, an all-zero id, version `ff`) starts a new trace, as the
//! specification asks; `tracestate` travels on untouched.
//!
//! Ids come from a per-thread SplitMix64 generator seeded from the clock, the process and the
//! thread: unique enough for tracing, and no system call per request.

use http::HeaderValue;
use http::header::HeaderName;
use std::cell::Cell;

/// The W3C trace context header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// One request's trace context as this hop forwards it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// This hop's span: the parent the backend sees.
    pub span_id: [u8; 8],
    /// The client's span (from its `traceparent`), when the trace was continued.
    pub parent_id: Option<[u8; 8]>,
    pub flags: u8,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

fn parse_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // `RandomState` is seeded by the OS once per thread; mixed with the time for good measure.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// The next SplitMix64 output of this thread's generator.
fn next_u64() -> u64 {
    RNG.with(|s| {
        let z = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(z);
        let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// A random non-zero id.
fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            let n = chunk.len();
            chunk.copy_from_slice(&next_u64().to_be_bytes()[..n]);
        }
        if out.iter().any(|b| *b != 0) {
            return out;
        }
    }
}

impl TraceContext {
    /// This hop's context: the client's trace (from its `traceparent`, when valid) with a new
    /// span id, or a new sampled trace.
    pub fn continue_or_start(traceparent: Option<&[u8]>) -> TraceContext {
        let span_id = random_id();
        match traceparent.and_then(parse) {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                span_id,
                parent_id: Some(parent),
                flags,
            },
            None => TraceContext {
                trace_id: random_id(),
                span_id,
                parent_id: None,
                flags: 0x01,
            },
        }
    }

    /// `00-<trace id>-<span id>-<flags>`, the header the backend gets.
    pub fn header_bytes(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[..2].copy_from_slice(b"00");
        put_hex(&mut out[3..35], &self.trace_id);
        put_hex(&mut out[36..52], &self.span_id);
        put_hex(&mut out[53..55], &[self.flags]);
        out
    }

    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.header_bytes()).expect("hex digits and dashes")
    }

    /// The trace id in hex, as logged.
    pub fn trace_id_hex(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        put_hex(&mut out, &self.trace_id);
        out
    }

    /// The span id in hex, as logged.
    pub fn span_id_hex(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        put_hex(&mut out, &self.span_id);
        out
    }
}

/// The trace id, parent span id and flags of a valid `traceparent`.
fn parse(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    // Later versions may append fields after a dash; version 00 is exactly 55 bytes.
    if value.len() < 55 || (value.len() > 55 && value[55] != b'-') {
        return None;
    }
    let version: [u8; 1] = parse_hex(&value[0..2])?;
    if version[0] == 0xff || (version[0] == 0 && value.len() != 55) {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id: [u8; 16] = parse_hex(&value[3..35])?;
    let parent: [u8; 8] = parse_hex(&value[36..52])?;
    let flags: [u8; 1] = parse_hex(&value[53..55])?;
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let a = TraceContext::continue_or_start(Some(CLIENT));
        let b = TraceContext::continue_or_start(Some(CLIENT));
        assert_eq!(&a.trace_id_hex(), b"4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(a.flags, 1);
        assert_ne!(&a.span_id_hex(), b"00f067aa0ba902b7");
        assert_ne!(a.span_id, b.span_id, "a new span id per hop");
        let header = a.header_bytes();
        assert_eq!(&header[..36], &CLIENT[..36]);
        assert_eq!(&header[52..], b"-01");
        assert_eq!(parse(&header), Some((a.trace_id, a.span_id, 1)));
        assert_eq!(a.parent_id, Some(*b"\x00\xf0\x67\xaa\x0b\xa9\x02\xb7"));
    }

    #[test]
    fn malformed_or_missing_traceparents_start_a_new_trace() {
        let bad: [&[u8]; 7] = [
            b"",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper case
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // v00 with more
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for value in bad {
            assert_eq!(parse(value), None, "{}", String::from_utf8_lossy(value));
            let t = TraceContext::continue_or_start(Some(value));
            assert_ne!(&t.trace_id_hex(), b"4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(t.flags, 1);
        }
        let fresh = TraceContext::continue_or_start(None);
        assert_eq!(
            parse(&fresh.header_bytes()),
            Some((fresh.trace_id, fresh.span_id, 1))
        );
        assert_eq!(fresh.parent_id, None);
        // A later version's extra fields are allowed.
        let v1 = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra";
        assert!(parse(v1).is_some());
    }
}
