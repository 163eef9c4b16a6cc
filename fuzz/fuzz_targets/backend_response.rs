//! The backend response parser of the lean exchange (`upstream`'s `direct` module, through
//! `upstream::fuzzing::parse`): arbitrary bytes as a backend's answer to a bodiless request.
//!
//! Input: byte 0 says whether the request was a HEAD (bit 0) and how the bytes arrive (bits
//! 1..): all in one read, in reads of pseudo-random sizes seeded by byte 1, or one byte at a
//! time. The rest is the response.
//!
//! Checks:
//! 1. No panic.
//! 2. The outcome does not depend on how the bytes arrive: parsed in one read and parsed in
//!    pieces give the same status, header lines, body and ending (a limit enforced only on one
//!    of the two ways is a bug: a head or a line too long in pieces must be too long whole).
//! 3. The lines passed to the client are `name: value\r\n`, with a valid name and no
//!    hop-by-hop header or backend `X-Ca-Request-Id`, and read back as a header map line for
//!    line; at most one `Content-Length`, none on a 1xx/204/304; `has_length`/`has_date` say
//!    what the lines hold.
//! 4. The body: none for HEAD and bodiless statuses; exactly `Content-Length` bytes when the
//!    lines carry one and the body ended well.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upstream::fuzzing::{BodyEnd, Parsed, parse};

/// Read sizes for `input`: pseudo-random from `seed`, 1 to 64 bytes each.
fn reads(len: usize, seed: u8) -> Vec<usize> {
    let mut x = u32::from(seed) | 0x100;
    let mut out = Vec::new();
    let mut total = 0;
    while total < len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = 1 + (x >> 16) as usize % 64;
        out.push(n);
        total += n;
    }
    out
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn check(p: &Parsed, head_request: bool) {
    let text = &p.lines[..];
    let mut lengths = Vec::new();
    let mut dated = false;
    let mut count = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| panic!("a line without CRLF: {:?}", String::from_utf8_lossy(rest)));
        let line = &rest[..end];
        rest = &rest[end + 2..];
        count += 1;
        let colon = line.iter().position(|&b| b == b':').expect("a colon");
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        assert!(
            !name.is_empty() && name.iter().all(|&b| is_tchar(b)),
            "{line:?}"
        );
        assert!(value.starts_with(b" ") || value.is_empty(), "{line:?}");
        assert!(
            !value.contains(&b'\r') && !value.contains(&b'\n'),
            "{line:?}"
        );
        let lower = name.to_ascii_lowercase();
        assert!(
            !decide::wire::is_hop_by_hop(&lower),
            "hop-by-hop passed on: {line:?}"
        );
        assert_ne!(
            &lower[..],
            b"x-ca-request-id",
            "the backend's request id passed on"
        );
        if lower == b"content-length" {
            lengths.push(String::from_utf8_lossy(&value[1..]).trim().to_string());
        }
        dated |= lower == b"date";
    }
    assert!(lengths.len() <= 1, "Content-Length lines: {lengths:?}");
    let bodiless_status = p.status < 200 || p.status == 204 || p.status == 304;
    if bodiless_status {
        assert!(lengths.is_empty(), "Content-Length on a {}", p.status);
    }
    assert_eq!(p.has_length, !lengths.is_empty());
    assert_eq!(p.has_date, dated);
    // Every line reads back as one map entry.
    assert_eq!(p.map.len(), count, "{:?}", String::from_utf8_lossy(text));
    if head_request || bodiless_status {
        assert!(p.body.is_empty());
        assert_eq!(p.end, BodyEnd::Complete);
    } else if let (Some(n), BodyEnd::Complete) = (lengths.first(), &p.end) {
        // `content_length` read it, so it is digits (leading zeros allowed).
        let n: u64 = n.parse().expect("a valid Content-Length");
        assert_eq!(p.body.len() as u64, n, "body against Content-Length");
    }
}

fuzz_target!(|data: &[u8]| {
    let (Some(&flags), Some(&seed)) = (data.first(), data.get(1)) else {
        return;
    };
    let head_request = flags & 1 == 1;
    let input = &data[2..];
    let whole = parse(input, head_request, &[]);
    let pieces = match (flags >> 1) % 4 {
        0 if input.len() <= 2048 => vec![1; input.len()],
        _ => reads(input.len(), seed),
    };
    let split = parse(input, head_request, &pieces);
    assert_eq!(
        whole, split,
        "the outcome depends on how the bytes arrive ({pieces:?})"
    );
    if let Ok(p) = &whole {
        check(p, head_request);
    }
});
