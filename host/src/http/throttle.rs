//! The per-address limit on notifications that fail verification.
//!
//! A notification is stored before it is checked (nothing received is lost), so anyone
//! who can reach `/notify` could fill the database with forgeries. Each client address
//! may have at most `server.max_rejections_per_minute` notifications stored that then
//! fail verification; past that, for the rest of its minute, a notification from it is
//! verified first and, if it fails, answered 429 and not stored. A notification that
//! verifies is never limited: a provider sending real payments from an address that also
//! sent garbage still gets them through.
//!
//! Per process, in memory: with several hosts the limit is per host. Behind a reverse
//! proxy every client has the proxy's address, so the limit is on all the rejected
//! traffic through it together (still only rejected traffic).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one address's count lasts.
const WINDOW: Duration = Duration::from_secs(60);

/// Most addresses tracked at once. Past it (a flood from very many addresses), addresses
/// not yet tracked count as over their limit: their forgeries are refused unstored, their
/// verified notifications still pass.
const MAX_ADDRESSES: usize = 100_000;

/// Counts failed verifications per client address, per minute.
#[derive(Debug)]
pub struct RejectionLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    count: u32,
}

impl RejectionLimiter {
    /// A limiter allowing `per_minute` failed verifications per address per minute.
    pub fn new(per_minute: u32) -> RejectionLimiter {
        RejectionLimiter {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` has used up its failed verifications for now.
    pub fn exhausted(&self, ip: IpAddr) -> bool {
        self.exhausted_at(key(ip), Instant::now())
    }

    /// Counts one failed verification from `ip`.
    pub fn record(&self, ip: IpAddr) {
        self.record_at(key(ip), Instant::now());
    }

    fn exhausted_at(&self, ip: IpAddr, now: Instant) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        match windows.get(&ip) {
            Some(w) if now.duration_since(w.started) < WINDOW => w.count >= self.per_minute,
            Some(_) => false,
            None if windows.len() >= MAX_ADDRESSES => {
                windows.retain(|_, w| now.duration_since(w.started) < WINDOW);
                windows.len() >= MAX_ADDRESSES
            }
            None => false,
        }
    }

    fn record_at(&self, ip: IpAddr, now: Instant) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if !windows.contains_key(&ip) && windows.len() >= MAX_ADDRESSES {
            windows.retain(|_, w| now.duration_since(w.started) < WINDOW);
            if windows.len() >= MAX_ADDRESSES {
                return;
            }
        }
        let w = windows.entry(ip).or_insert(Window {
            started: now,
            count: 0,
        });
        if now.duration_since(w.started) >= WINDOW {
            *w = Window {
                started: now,
                count: 0,
            };
        }
        w.count = w.count.saturating_add(1);
    }
}

/// The address a limit is kept for: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64,
/// the block one host is normally given (else one host would have 2^64 limits).
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(s.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_limited_for_the_rest_of_its_minute() {
        let l = RejectionLimiter::new(3);
        let a: IpAddr = "203.0.113.7".parse().expect("ip");
        let b: IpAddr = "203.0.113.8".parse().expect("ip");
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(!l.exhausted_at(a, t0));
            l.record_at(a, t0);
        }
        assert!(l.exhausted_at(a, t0 + Duration::from_secs(59)));
        assert!(
            !l.exhausted_at(b, t0),
            "other addresses keep their own count"
        );
        assert!(
            !l.exhausted_at(a, t0 + WINDOW),
            "a new minute starts afresh"
        );
        l.record_at(a, t0 + WINDOW);
        assert!(!l.exhausted_at(a, t0 + WINDOW));
    }

    #[test]
    fn ipv6_is_limited_by_its_64_block() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let same_block: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let mapped: IpAddr = "::ffff:198.51.100.1".parse().expect("ip");
        assert_eq!(key(one), key(same_block));
        assert_eq!(key(mapped), "198.51.100.1".parse::<IpAddr>().expect("ip"));
        let l = RejectionLimiter::new(1);
        l.record(one);
        assert!(l.exhausted(same_block));
    }
}
