//! The mailbox through which the broker tells a session's attached connection to end
//! (takeover, kick, shutdown). A locked list and a wake-up rather than a channel: every
//! connection has one and almost none is ever used, and a tokio channel costs about 1 KB
//! per connection before its first message; this costs about 100 bytes.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::Control;

#[derive(Debug, Default)]
struct Slots {
    pending: Vec<Control>,
    /// The connection is gone: nothing sent now would be read.
    rx_closed: bool,
    /// The handle was dropped (the session let go of this connection).
    tx_closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    slots: Mutex<Slots>,
    notify: Notify,
}

/// A new mailbox: the sending half goes into the session, the receiving half to the
/// connection.
pub fn mailbox() -> (ControlTx, ControlRx) {
    let s = Arc::new(Shared::default());
    (ControlTx(s.clone()), ControlRx(s))
}

/// The broker's side of a connection's mailbox.
#[derive(Debug)]
pub struct ControlTx(Arc<Shared>);

impl ControlTx {
    /// Leaves a command for the connection; false if it has already ended.
    pub fn send(&self, c: Control) -> bool {
        {
            let mut s = self.0.slots.lock();
            if s.rx_closed {
                return false;
            }
            s.pending.push(c);
        }
        // A permit is stored when the connection is not waiting right now.
        self.0.notify.notify_one();
        true
    }
}

impl Drop for ControlTx {
    fn drop(&mut self) {
        self.0.slots.lock().tx_closed = true;
        self.0.notify.notify_one();
    }
}

/// The connection's side of its mailbox.
#[derive(Debug)]
pub struct ControlRx(Arc<Shared>);

impl ControlRx {
    /// The next command, oldest first; None once the broker dropped its handle and
    /// nothing is left. Cancel-safe: a command is taken only when this returns it.
    pub async fn recv(&mut self) -> Option<Control> {
        loop {
            {
                let mut s = self.0.slots.lock();
                if !s.pending.is_empty() {
                    return Some(s.pending.remove(0));
                }
                if s.tx_closed {
                    return None;
                }
            }
            self.0.notify.notified().await;
        }
    }
}

impl ControlRx {
    /// The connection is ending: later commands fail at once, and pending ones are
    /// dropped (a takeover's acknowledgement wakes its sender).
    pub fn close(&mut self) {
        let pending = {
            let mut s = self.0.slots.lock();
            s.rx_closed = true;
            std::mem::take(&mut s.pending)
        };
        // Dropped outside the lock.
        drop(pending);
    }
}

impl Drop for ControlRx {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_arrive_in_order_and_end_with_the_handle() {
        let (tx, mut rx) = mailbox();
        assert!(tx.send(Control::Shutdown));
        assert!(tx.send(Control::Kick { end_session: true }));
        assert!(matches!(rx.recv().await, Some(Control::Shutdown)));
        assert!(matches!(
            rx.recv().await,
            Some(Control::Kick { end_session: true })
        ));
        drop(tx);
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_connection_is_woken() {
        let (tx, mut rx) = mailbox();
        let waiter = tokio::spawn(async move { rx.recv().await.is_some() });
        tokio::task::yield_now().await;
        assert!(tx.send(Control::Shutdown));
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn sending_to_an_ended_connection_fails_and_drops_takeover_acks() {
        let (tx, rx) = mailbox();
        let (ack, done) = tokio::sync::oneshot::channel();
        assert!(tx.send(Control::Takeover(ack)));
        drop(rx);
        // The pending takeover's acknowledgement is dropped: its sender stops waiting.
        assert!(done.await.is_err());
        assert!(!tx.send(Control::Shutdown));
    }
}
