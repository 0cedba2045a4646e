//! Per-peer limits: a token bucket on CONNECTs per IP address, and a throttle on failed
//! admin logins per IP address. Both keep bounded state: past `MAX_PEERS` addresses, the
//! entries that hold no information any more are purged, and if that is not enough the
//! table starts over (a flood of fresh addresses cannot grow it).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Addresses tracked at most, per limiter.
const MAX_PEERS: usize = 65_536;

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
        if self.per_sec <= 0.0 || (ip.is_loopback() && !self.loopback) {
            return true;
        }
        let mut peers = self.peers.lock();
        if peers.len() >= MAX_PEERS && !peers.contains_key(&ip) {
            // A full bucket holds nothing worth keeping.
            let refill = Duration::from_secs_f64(self.burst / self.per_sec);
            peers.retain(|_, (_, at)| now.duration_since(*at) < refill);
            if peers.len() >= MAX_PEERS {
                peers.clear();
            }
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
        let (n, start) = peers.get(&ip)?;
        let end = *start + self.window;
        (*n >= self.max && now < end).then(|| end - now)
    }

    /// Records a failed login from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        if self.max == 0 {
            return;
        }
        let mut peers = self.peers.lock();
        if peers.len() >= MAX_PEERS && !peers.contains_key(&ip) {
            let window = self.window;
            peers.retain(|_, (_, start)| now.duration_since(*start) < window);
            if peers.len() >= MAX_PEERS {
                peers.clear();
            }
        }
        let e = peers.entry(ip).or_insert((0, now));
        if now.duration_since(e.1) >= self.window {
            *e = (0, now);
        }
        e.0 = e.0.saturating_add(1);
    }

    /// A successful login from `ip` clears its failures.
    pub fn succeeded(&self, ip: IpAddr) {
        if self.max > 0 {
            self.peers.lock().remove(&ip);
        }
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
        l.succeeded(ip(1));
        assert!(l.blocked(ip(1), t).is_none());
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
