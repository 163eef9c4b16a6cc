//! Loopback ports that no other test process can be given while a test holds them.
//!
//! A test has to know a node's ports before the node starts: the peers of a 3-node cluster are
//! given to every node with `--peers`, and a killed node is restarted on the same ports because
//! the others keep its address in the Raft membership. Asking the OS for a free port (bind to
//! port 0, read the port, close) is not enough: nextest runs every test in its own process, and
//! between the close and the node's own bind any other process may bind the same port, either
//! another test picking "a free port" the same way or any socket the OS gives an ephemeral port
//! (a test's backend bound to port 0, or the source port of an outgoing connection).
//!
//! Two rules make a [`PortLease`] collision-free across processes without any shared state
//! that could go stale:
//!
//! - **Outside the ephemeral range.** Leases come from the ports below the kernel's
//!   `ip_local_port_range` (and above the gateway's default ports), or above it where the range
//!   starts too low, which the OS never hands out for port 0 or for outgoing connections. So
//!   nothing but a lease holder binds them.
//! - **A claim the kernel arbitrates.** A lease holds a UDP socket bound to 127.0.0.1 on the
//!   same port number. UDP and TCP have separate port spaces, so the node is free to bind the
//!   TCP port, while a second bind of the UDP port, from any process, fails with "address in
//!   use": at most one process holds each lease. The kernel drops the claim when the holder
//!   exits, however it exits (even SIGKILL), so no lock file is ever left behind.
//!
//! A lease also checks at claim time that the TCP port is free, which skips ports that some
//! unrelated service listens on. The claim's socket is close-on-exec, so nodes do not inherit
//! it.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The lowest port leased: above gatewayd's default ports (8080, 9090, 9091, 9100), so a test
/// of the defaults never meets a lease.
const POOL_START: u16 = 15000;
/// The fewest ports a pool may have.
const POOL_MIN: u16 = 1000;

/// A TCP port on 127.0.0.1 reserved for this process until the lease is dropped.
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    /// The UDP socket on the same port number: the claim (see the module docs).
    _claim: UdpSocket,
}

impl PortLease {
    /// Claims a port that no other process holds and that nothing listens on.
    ///
    /// # Panics
    ///
    /// When every port of the pool is taken.
    pub fn take() -> PortLease {
        let (start, end) = pool();
        let size = u32::from(end - start);
        // Start each search at a different place, so that processes starting together do not
        // all race for the same few ports (each claim is still exclusive if they do).
        let mut at = start_offset() % size;
        for _ in 0..size {
            let port = start + at as u16;
            at = (at + 1) % size;
            let Ok(claim) = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)) else {
                continue;
            };
            // Some other program may listen on a port of the pool; skip it. (The probe's
            // listener had no connections, so closing it leaves no TIME_WAIT behind.)
            if TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_err() {
                continue;
            }
            return PortLease {
                port,
                _claim: claim,
            };
        }
        panic!("no free test port in {start}..{end}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// A port on 127.0.0.1 that no other process is given, leased for the rest of this process
/// (use [`PortLease::take`] to give it back sooner). Nothing listens on it until the caller
/// binds it, so it also serves as a port where connections are refused.
pub fn free_port() -> u16 {
    static HELD: Mutex<Vec<PortLease>> = Mutex::new(Vec::new());
    let lease = PortLease::take();
    let port = lease.port();
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(lease);
    port
}

/// The ports leases come from, `start..end`: below the ephemeral range, or above it.
///
/// # Panics
///
/// When neither side of the ephemeral range has room.
fn pool() -> (u16, u16) {
    let (low, high) = ephemeral_range();
    if low >= POOL_START + POOL_MIN {
        (POOL_START, low)
    } else if high <= u16::MAX - POOL_MIN {
        (high + 1, u16::MAX)
    } else {
        panic!("the ephemeral port range {low}-{high} leaves too few ports for tests")
    }
}

/// The ports the kernel hands out for port 0 (Linux: `ip_local_port_range`, both ends
/// included).
fn ephemeral_range() -> (u16, u16) {
    let read = || -> Option<(u16, u16)> {
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
        let mut ends = text.split_whitespace().map(|p| p.parse().ok());
        Some((ends.next()??, ends.next()??))
    };
    // Otherwise the Linux default.
    read().unwrap_or((32768, 60999))
}

fn start_offset() -> u32 {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let calls = CALLS.fetch_add(1, Ordering::Relaxed);
    // Spread by process (pid) and by time; consecutive calls in one process go on from there.
    std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(nanos >> 10)
        .wrapping_add(calls.wrapping_mul(7))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lease_is_not_given_out_again() {
        let leases: Vec<PortLease> = (0..64).map(|_| PortLease::take()).collect();
        let mut ports: Vec<u16> = leases.iter().map(PortLease::port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), leases.len());
        for l in &leases {
            let (start, end) = pool();
            assert!((start..end).contains(&l.port()));
            let (low, high) = ephemeral_range();
            assert!(!(low..=high).contains(&l.port()));
            // Another claim on the same port fails, as it would in another process.
            assert!(UdpSocket::bind((Ipv4Addr::LOCALHOST, l.port())).is_err());
            // The TCP port itself is free for the node.
            drop(TcpListener::bind((Ipv4Addr::LOCALHOST, l.port())).unwrap());
        }
    }
}
