//! Backpressure bookkeeping of one session queue (`[session] backpressure`, decision
//! 0018): whether publishers wait for it, and whether it sheds load because one of them
//! waited too long. The waiting itself is the publisher's connection's.

/// A queue's pressure state, kept under the session lock.
#[derive(Debug, Default)]
pub struct Pressure {
    /// Publishers overfilled this queue and wait until it is shorter than this (0: none).
    wake_below: usize,
    /// A publisher's wait timed out: the queue drops at its limit again (the configured
    /// `queue_full` policy) until it is this short.
    shed_until: Option<usize>,
}

impl Pressure {
    /// Whether a waiting publisher may still put a message past the limit.
    pub fn may_overfill(&self) -> bool {
        self.shed_until.is_none()
    }

    /// A message went past the limit of `limit` messages: publishers wait for room.
    pub fn overfilled(&mut self, limit: usize) {
        self.wake_below = limit.max(1);
    }

    /// Whether publishers that overfilled the queue should wait for it.
    pub fn is_blocking(&self) -> bool {
        self.wake_below > 0 && self.shed_until.is_none()
    }

    /// A wait on this queue timed out: it sheds load until half of `limit` is left.
    /// True the first time (so the fall-back is counted once per episode).
    pub fn shed(&mut self, limit: usize) -> bool {
        self.wake_below = 0;
        self.shed_until.replace(limit / 2).is_none()
    }

    /// The queue is down to `queued` messages: true when waiting publishers should be
    /// woken.
    pub fn relieve(&mut self, queued: usize) -> bool {
        if self.shed_until.is_some_and(|n| queued <= n) {
            self.shed_until = None;
        }
        if self.wake_below > 0 && queued < self.wake_below {
            self.wake_below = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishers_wait_until_there_is_room() {
        let mut p = Pressure::default();
        assert!(!p.is_blocking());
        p.overfilled(10);
        assert!(p.is_blocking());
        assert!(!p.relieve(10), "still full");
        assert!(p.relieve(9));
        assert!(!p.is_blocking());
        assert!(!p.relieve(0), "woken once");
    }

    #[test]
    fn a_timed_out_wait_sheds_until_half_the_queue_is_left() {
        let mut p = Pressure::default();
        p.overfilled(10);
        assert!(p.shed(10));
        assert!(!p.shed(10), "counted once per episode");
        assert!(!p.is_blocking() && !p.may_overfill());
        p.relieve(6);
        assert!(!p.may_overfill());
        p.relieve(5);
        assert!(p.may_overfill());
    }
}
