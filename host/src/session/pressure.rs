//! Backpressure bookkeeping of one session queue (`[session] backpressure`, decision
//! 0018): whether publishers wait for it, and whether it sheds load because one of them
//! waited too long. The waiting itself is the publisher's connection's.

/// A queue's pressure state, kept under the session lock.
#[derive(Debug, Default)]
pub struct Pressure {
    /// Publishers overfilled this queue and wait until it is under these limits
    /// (messages, payload bytes; 0 bytes = no byte limit). None: nobody waits.
    waiting: Option<(usize, usize)>,
    /// A publisher's wait timed out: the queue drops at its limit again (the configured
    /// `queue_full` policy) until it is down to these (half its limits).
    shed_until: Option<(usize, usize)>,
    /// Bumped each time waiting publishers are woken: a publisher that blocked before
    /// the last wake-up goes on, even if others have overfilled the queue again since.
    epoch: u64,
}

impl Pressure {
    /// Whether a waiting publisher may still put a message past the limit.
    pub fn may_overfill(&self) -> bool {
        self.shed_until.is_none()
    }

    /// A message went past the limits (`max` messages, `max_bytes` payload bytes):
    /// publishers wait for room. Returns the epoch the publisher waits in.
    pub fn overfilled(&mut self, max: usize, max_bytes: usize) -> u64 {
        self.waiting = Some((max.max(1), max_bytes));
        self.epoch
    }

    /// Whether a publisher that blocked in `epoch` should still wait.
    pub fn blocks(&self, epoch: u64) -> bool {
        self.waiting.is_some() && self.shed_until.is_none() && self.epoch == epoch
    }

    /// A wait on this queue timed out: it sheds load until half of its limits are left,
    /// and waiting publishers go on. True the first time (counted once per episode).
    pub fn shed(&mut self, max: usize, max_bytes: usize) -> bool {
        self.waiting = None;
        self.epoch += 1;
        self.shed_until.replace((max / 2, max_bytes / 2)).is_none()
    }

    /// The queue is down to `queued` messages of `bytes` payload bytes: true when
    /// waiting publishers should be woken.
    pub fn relieve(&mut self, queued: usize, bytes: usize) -> bool {
        let under = |(n, b): (usize, usize)| queued <= n && (b == 0 || bytes <= b);
        if self.shed_until.is_some_and(under) {
            self.shed_until = None;
        }
        let room = |(n, b): (usize, usize)| queued < n && (b == 0 || bytes < b);
        if self.waiting.is_some_and(room) {
            self.waiting = None;
            self.epoch += 1;
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
        let e = p.overfilled(10, 0);
        assert!(p.blocks(e));
        assert!(!p.relieve(10, 0), "still full");
        assert!(p.relieve(9, 0));
        assert!(!p.blocks(e));
        assert!(!p.relieve(0, 0), "woken once");
    }

    #[test]
    fn room_counts_bytes_too() {
        let mut p = Pressure::default();
        let e = p.overfilled(1000, 100);
        assert!(
            !p.relieve(3, 100),
            "under the message limit, at the byte limit"
        );
        assert!(p.blocks(e));
        assert!(p.relieve(3, 99));
    }

    #[test]
    fn a_publisher_woken_once_goes_on_even_if_the_queue_refilled() {
        let mut p = Pressure::default();
        let first = p.overfilled(10, 0);
        assert!(p.relieve(9, 0));
        let second = p.overfilled(10, 0);
        assert!(!p.blocks(first), "its wait ended at the wake-up");
        assert!(p.blocks(second));
    }

    #[test]
    fn a_timed_out_wait_sheds_until_half_the_queue_is_left() {
        let mut p = Pressure::default();
        let e = p.overfilled(10, 0);
        assert!(p.shed(10, 0));
        assert!(!p.shed(10, 0), "counted once per episode");
        assert!(!p.blocks(e) && !p.may_overfill());
        p.relieve(6, 0);
        assert!(!p.may_overfill());
        p.relieve(5, 0);
        assert!(p.may_overfill());
    }
}
