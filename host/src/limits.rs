//! Per-peer limits: a token bucket on CONNECTs per address, and a throttle on failed
//! admin logins per address. An IPv6 peer counts by its /64 (one host can use a whole
//! /64), an IPv4-mapped one as IPv4. Both keep bounded state: past `MAX_PEERS` peers, the
//! entries that hold no information any more go first (a flood of fresh addresses cannot
//! grow the table).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Peers tracked at most, per limiter.
const MAX_PEERS: usize = 65_536;

/// The key a peer is counted under: IPv4 as is, IPv6 by its /64.
fn peer(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::from(o)
        }
        v4 => v4,
    }
}

/// Makes room for one more entry: drops the entries `stale` says hold nothing, then, if
/// still full, those `keep` does not protect, then everything.
fn make_room<V>(
    map: &mut HashMap<IpAddr, V>,
    stale: impl Fn(&V) -> bool,
    keep: impl Fn(&V) -> bool,
) {
    if map.len() < MAX_PEERS {
        return;
    }
    map.retain(|_, v| !stale(v));
    if map.len() >= MAX_PEERS {
        map.retain(|_, v| keep(v));
    }
    if map.len() >= MAX_PEERS {
        map.clear();
    }
}

/// CONNECTs per second per IP address, with a burst allowance.
#[derive(Debug)]
pub struct ConnectRate {
    per_sec: f64,
    burst: f64,
    loopback: bool,
    peers: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl ConnectRate {
    /// `per_sec` = 0 turns the limit off; loopback addresses are limited only with
    /// `loopback`.
    pub fn new(per_sec: u32, burst: u32, loopback: bool) -> Self {
        Self {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(per_sec).max(1)),
            loopback,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for one CONNECT from `ip`; false when it is over its rate.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = peer(ip);
        if self.per_sec <= 0.0 || (ip.is_loopback() && !self.loopback) {
            return true;
        }
        let mut peers = self.peers.lock();
        if !peers.contains_key(&ip) {
            // A full bucket holds nothing worth keeping; an empty one does.
            let refill = Duration::from_secs_f64(self.burst / self.per_sec);
            make_room(
                &mut peers,
                |(_, at)| now.duration_since(*at) >= refill,
                |(tokens, _)| *tokens < 1.0,
            );
        }
        let (tokens, at) = peers.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Failed logins per IP address: past `max` failures within a window, the address is
/// refused until the window ends.
#[derive(Debug)]
pub struct LoginThrottle {
    max: u32,
    window: Duration,
    peers: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl LoginThrottle {
    /// At most `max` failures per `window` (`max` = 0: never throttled).
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// How long `ip` must wait before trying again, if it is throttled now.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.max == 0 {
            return None;
        }
        let peers = self.peers.lock();
        let (n, start) = peers.get(&peer(ip))?;
        let end = *start + self.window;
        (*n >= self.max && now < end).then(|| end - now)
    }

    /// Records a failed login from `ip`. Failures only age out with their window: a
    /// successful login (with any key) does not clear them, or one valid key would let
    /// its holder guess at every other key without end.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        if self.max == 0 {
            return;
        }
        let ip = peer(ip);
        let mut peers = self.peers.lock();
        if !peers.contains_key(&ip) {
            let (window, max) = (self.window, self.max);
            make_room(
                &mut peers,
                |(_, start)| now.duration_since(*start) >= window,
                |(n, _)| *n >= max,
            );
        }
        let e = peers.entry(ip).or_insert((0, now));
        if now.duration_since(e.1) >= self.window {
            *e = (0, now);
        }
        e.0 = e.0.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn connect_rate_refills_and_exempts_loopback() {
        let r = ConnectRate::new(2, 2, false);
        let t = Instant::now();
        assert!(r.allow(ip(1), t) && r.allow(ip(1), t));
        assert!(!r.allow(ip(1), t), "burst spent");
        assert!(r.allow(ip(2), t), "another address has its own bucket");
        assert!(r.allow(ip(1), t + Duration::from_millis(600)), "refilled");
        let lo = IpAddr::from([127, 0, 0, 1]);
        assert!((0..100).all(|_| r.allow(lo, t)));
        assert!((0..100).all(|_| ConnectRate::new(0, 0, true).allow(ip(3), t)));
    }

    #[test]
    fn logins_are_throttled_per_address_until_the_window_ends() {
        let l = LoginThrottle::new(3, Duration::from_secs(60));
        let t = Instant::now();
        for _ in 0..3 {
            assert!(l.blocked(ip(1), t).is_none());
            l.failed(ip(1), t);
        }
        assert!(l.blocked(ip(1), t).is_some());
        assert!(l.blocked(ip(2), t).is_none());
        assert!(l.blocked(ip(1), t + Duration::from_secs(61)).is_none());
    }

    #[test]
    fn ipv6_peers_count_by_their_64() {
        let l = LoginThrottle::new(2, Duration::from_secs(60));
        let t = Instant::now();
        l.failed("2001:db8::1".parse().unwrap(), t);
        l.failed("2001:db8::ffff:2".parse().unwrap(), t);
        assert!(l.blocked("2001:db8::3".parse().unwrap(), t).is_some());
        assert!(l.blocked("2001:db8:0:1::3".parse().unwrap(), t).is_none());
        let r = ConnectRate::new(1, 1, false);
        assert!(
            (0..5).all(|_| r.allow("::ffff:127.0.0.1".parse().unwrap(), t)),
            "mapped loopback"
        );
    }

    #[test]
    fn state_stays_bounded() {
        let r = ConnectRate::new(1, 1, true);
        let t = Instant::now();
        for i in 0..(MAX_PEERS as u32 + 10) {
            r.allow(IpAddr::from(i.to_be_bytes()), t);
        }
        assert!(r.peers.lock().len() <= MAX_PEERS);
    }
}
