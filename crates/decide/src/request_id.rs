//! Request ids: unique per node and cheap (one relaxed `fetch_add` on the thread's own counter,
//! no randomness per request).
//!
//! Layout, 24 hex digits: 4 of node id, 8 of a per-process nonce (so a restarted node does not
//! repeat its ids), 12 of a counter: the thread slot in its top 6 bits, then 42 bits counted by
//! that slot (2^42 requests per slot before wrapping).

use crate::per_thread::PerThread;
use http::HeaderValue;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct RequestIds {
    prefix: [u8; 12],
    counters: PerThread<AtomicU64>,
}

const COUNTER_BITS: u32 = 42;

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(out: &mut [u8], mut value: u64) {
    for b in out.iter_mut().rev() {
        *b = HEX[(value & 0xf) as usize];
        value >>= 4;
    }
}

impl RequestIds {
    pub fn new(node_id: u64) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let nonce =
            (now ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut prefix = [0u8; 12];
        hex(&mut prefix[..4], node_id);
        hex(&mut prefix[4..], nonce >> 32);
        RequestIds {
            prefix,
            counters: PerThread::default(),
        }
    }

    pub fn next(&self) -> RequestId {
        let (slot, counter) = self.counters.local_indexed();
        let n = ((slot as u64) << COUNTER_BITS)
            | (counter.fetch_add(1, Relaxed) & ((1 << COUNTER_BITS) - 1));
        let mut buf = [0u8; 24];
        buf[..12].copy_from_slice(&self.prefix);
        hex(&mut buf[12..], n);
        RequestId(buf)
    }
}

/// One request's id: 24 hex digits, kept on the stack until a header needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestId([u8; 24]);

impl RequestId {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.0).expect("hex digits are a valid header value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_carry_the_node() {
        let ids = RequestIds::new(0x2a);
        let a = ids.next().header_value();
        let b = ids.next().header_value();
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        assert!(a.to_str().unwrap().starts_with("002A"));
        assert!(b.to_str().unwrap().ends_with("000000000001"));
    }
}
