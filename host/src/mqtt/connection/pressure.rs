//! The publisher's half of backpressure (`[session] backpressure`, decision 0018): a
//! publish that a full queue took past its limit makes this connection stop reading
//! until that queue has room, or until the wait times out and the session falls back to
//! dropping. Packets already read wait in the read buffer; the client's receive maximum
//! holds the rest at the client.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Connection;
use crate::mqtt::transport::Transport;
use crate::session::Session;

/// While waiting, the connection reads on (acks, pings: a subscriber that also publishes
/// must still acknowledge its deliveries) until this much is buffered; it stops at the
/// first PUBLISH.
pub(crate) const BLOCKED_READ_MAX: usize = 64 << 10;

/// The sessions this connection waits for (with the pressure epoch it blocked in), and
/// until when.
#[derive(Debug)]
pub(crate) struct Blocked {
    on: Vec<(Arc<Session>, u64)>,
    until: Instant,
}

/// Resolves when the first session waited for may have room, or at the deadline; never
/// when nothing is waited for.
pub(crate) async fn space_or_deadline(b: &Option<Box<Blocked>>) {
    let Some(b) = b else {
        return std::future::pending().await;
    };
    let (s, epoch) = &b.on[0];
    let woken = s.space.notified();
    tokio::pin!(woken);
    // Registered before the check, so a wake-up between the two is not lost.
    woken.as_mut().enable();
    if !s.blocks_publishers(*epoch) {
        return;
    }
    let _ = tokio::time::timeout_at(b.until.into(), woken).await;
}

impl<T: Transport> Connection<T> {
    /// After a publish: wait for the sessions it overfilled, if any (as well as those
    /// waited for already, by the deadline already set).
    pub(crate) fn wait_for(&mut self, sessions: Vec<(Arc<Session>, u64)>) {
        if sessions.is_empty() {
            return;
        }
        if let Some(b) = self.blocked.as_mut() {
            b.on.extend(sessions);
            return;
        }
        self.broker
            .metrics
            .backpressure_waits
            .fetch_add(1, Ordering::Relaxed);
        let ms = self.broker.config().session.backpressure_timeout_ms;
        self.blocked = Some(Box::new(Blocked {
            on: sessions,
            until: Instant::now() + Duration::from_millis(ms),
        }));
    }

    /// After a wake-up or the deadline: forgets sessions that have room (or went
    /// offline); past the deadline, the rest fall back to `queue_full`. True once
    /// nothing is waited for.
    pub(crate) fn recheck_blocked(&mut self) -> bool {
        let Some(b) = self.blocked.as_mut() else {
            return true;
        };
        b.on.retain(|(s, e)| s.blocks_publishers(*e));
        if !b.on.is_empty() && Instant::now() >= b.until {
            let config = self.broker.config();
            let cfg = &config.session;
            for (s, e) in b.on.drain(..) {
                let first = {
                    let mut st = s.state.lock();
                    // Only if it still had no room for us, decided under one lock.
                    st.pressure.blocks(e)
                        && st
                            .pressure
                            .shed(cfg.max_queued_messages, cfg.max_queued_bytes)
                };
                if first {
                    self.broker
                        .metrics
                        .backpressure_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(client_id = %s.client_id, "backpressure wait timed out: the session drops at its limit until half its queue is left");
                }
                // Other publishers waiting for it go on too.
                s.space.notify_waiters();
            }
        }
        if b.on.is_empty() {
            self.blocked = None;
            return true;
        }
        false
    }
}
