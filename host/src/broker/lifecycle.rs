//! Session lifecycle: attach a connection (new session, resume, or take over), detach it
//! (will, expiry), and discard a session. Timers compare the session's epoch so a client
//! that came back in the meantime is never expired or has its will sent by a stale timer.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::Broker;
use crate::registry::Event;
use crate::session::{Attach, ClientInfo, ConnHandle, Control, Session, Will};

impl Broker {
    /// Attaches a new connection for `client_id` in `tenant`: takes over any connection
    /// already attached, then resumes the session (clean start = false) or replaces it.
    pub async fn attach(
        &self,
        tenant: Arc<str>,
        client_id: Arc<str>,
        clean_start: bool,
        info: ClientInfo,
        will: Option<Box<Will>>,
    ) -> Attach {
        // One CONNECT per client id at a time: a racing second one waits and then takes
        // over the first, instead of both attaching.
        let _serial = self.connect_lock(&tenant, &client_id).lock().await;
        // In a cluster another node may hold the session: it moves here.
        let moved = match self.cluster() {
            Some(c) => c.take_session(&tenant, &client_id, clean_start).await,
            None => None,
        };
        if let Some(old) = self.registry.get(&tenant, &client_id) {
            self.take_over(&old).await;
        }
        // Looked up again: the connection that let go may have ended the session.
        let existing = self.registry.get(&tenant, &client_id);
        let (session, mut session_present) = match existing {
            Some(old) if !clean_start => {
                *old.info.write() = info;
                (old, true)
            }
            other => {
                if let Some(old) = other {
                    self.discard(&old, "clean_start");
                }
                let s = Arc::new(Session::new(self.next_id(), tenant, client_id, info));
                if let Some(prev) = self.registry.insert(s.clone()) {
                    // A concurrent CONNECT raced us: the last one wins, the other is discarded.
                    self.discard_unregistered(&prev, "taken_over");
                }
                (s, false)
            }
        };
        session.epoch.fetch_add(1, Ordering::AcqRel);
        session.cancel_timers();
        *session.will.lock() = will;
        self.will_changed(&session);
        self.set_persistence(&session);
        if let Some(m) = moved {
            // After the persistence above: what it brings is stored if it is kept.
            m.install(self, &session);
            session_present = true;
        }
        let (tx, control) = crate::session::mailbox();
        let generation = self.next_id();
        *session.conn.lock() = Some(ConnHandle { generation, tx });
        session.online.store(true, Ordering::Release);
        {
            let mut i = session.info.write();
            i.connected = true;
            i.connected_at = Some(SystemTime::now());
        }
        self.registry.refresh(&session);
        self.persist_session(&session);
        let info = session.info.read().clone();
        self.registry.emit(Event::Connected {
            tenant: session.tenant.clone(),
            client_id: session.client_id.clone(),
            username: info.username.clone(),
            peer: info.peer.map(|p| p.to_string()),
            proto_ver: info.proto_ver,
        });
        Attach {
            session,
            session_present,
            generation,
            control,
        }
    }

    /// Whether the session is kept past its connection, as its expiry now says, and its
    /// stored state to match: dropped when no longer kept, its subscriptions stored when
    /// newly kept.
    fn set_persistence(&self, session: &Arc<Session>) {
        let persistent = session.info.read().expiry_interval > 0;
        if persistent != session.is_persistent() {
            self.session_changed(session);
        }
        if let Some(store) = &self.store {
            let st = session.state.lock();
            let was = session.persistent.swap(persistent, Ordering::AcqRel);
            if was && !persistent {
                // Resumed with session expiry 0: it ends with this connection, so leave
                // the store now.
                store.submit(crate::store::Op::DeleteSession(
                    session.tenant.clone(),
                    session.client_id.clone(),
                ));
            } else if persistent && !was {
                // Now kept: its subscriptions are stored from here on.
                for (f, o) in &st.subscriptions {
                    store.submit(crate::store::Op::PutSub(
                        session.tenant.clone(),
                        session.client_id.clone(),
                        Box::new(crate::store::recovery::sub_record(f, o)),
                    ));
                }
            }
        } else {
            session.persistent.store(persistent, Ordering::Release);
        }
    }

    /// Asks the connection attached to `s` to let go, and waits (bounded) until it has.
    pub(crate) async fn take_over(&self, s: &Arc<Session>) {
        let (tx, rx) = oneshot::channel();
        if s.control(Control::Takeover(tx))
            && tokio::time::timeout(Duration::from_secs(5), rx)
                .await
                .is_err()
        {
            warn!(client_id = %s.client_id, "previous connection did not release the session in 5 s");
        }
    }

    /// Detaches connection `generation` from `s`. `publish_will` says whether the
    /// connection ended without a normal DISCONNECT. `expiry` is the session expiry in
    /// force (0 = the session ends now, u32::MAX = never).
    pub fn detach(
        &self,
        s: &Arc<Session>,
        generation: u64,
        publish_will: bool,
        expiry: u32,
        reason: String,
    ) {
        {
            let mut conn = s.conn.lock();
            if conn.as_ref().is_some_and(|c| c.generation == generation) {
                *conn = None;
                s.online.store(false, Ordering::Release);
                // Publishers waiting for its queue go on: offline, it does not drain.
                s.space.notify_waiters();
            } else {
                return; // Taken over: the new connection owns the session now.
            }
        }
        {
            let mut i = s.info.write();
            i.connected = false;
            i.disconnected_at = Some(SystemTime::now());
            i.expiry_interval = expiry;
        }
        self.registry.refresh(s);
        self.registry.emit(Event::Disconnected {
            tenant: s.tenant.clone(),
            client_id: s.client_id.clone(),
            reason,
        });
        let epoch = s.epoch.load(Ordering::Acquire);
        let will = s.will.lock().take();
        if let Some(w) = will.filter(|_| publish_will) {
            if w.delay_secs > 0 && expiry > 0 {
                let delay = w.delay_secs.min(expiry);
                *s.will.lock() = Some(w);
                self.arm_will(s, epoch, Duration::from_secs(u64::from(delay)));
            } else {
                self.publish_will(*w);
            }
        }
        self.will_changed(s);
        if expiry == 0 {
            self.discard(s, "expired");
            return;
        }
        self.persist_session(s);
        self.arm_expiry(s, epoch, Duration::from_secs(u64::from(expiry)));
    }

    /// Publishes the session's pending will after `after` unless a connection attaches
    /// first (epoch changes). While the broker shuts down nothing is armed: the will
    /// stays in the session's stored record and the next start arms what is left of it.
    pub(crate) fn arm_will(&self, s: &Arc<Session>, epoch: u64, after: Duration) {
        if self.shutting_down() {
            return;
        }
        let b = self.clone();
        let s2 = s.clone();
        let t = tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if s2.epoch.load(Ordering::Acquire) == epoch {
                b.publish_pending_will(&s2);
                b.persist_session(&s2);
            }
        });
        s.timers.lock().push(t.abort_handle());
    }

    /// Ends the session after `after` unless a connection attaches first (epoch changes).
    /// `Duration::MAX`-like values (u32::MAX seconds) mean never.
    pub(crate) fn arm_expiry(&self, s: &Arc<Session>, epoch: u64, after: Duration) {
        if after >= Duration::from_secs(u64::from(u32::MAX)) || self.shutting_down() {
            return;
        }
        let b = self.clone();
        let s2 = s.clone();
        let t = tokio::spawn(async move {
            tokio::time::sleep(after).await;
            // Under the client id's connect lock: a CONNECT resuming this session either
            // finished before (epoch changed) or starts after the session is gone.
            let _serial = b.connect_lock(&s2.tenant, &s2.client_id).lock().await;
            if s2.epoch.load(Ordering::Acquire) == epoch && !s2.is_online() {
                debug!(client_id = %s2.client_id, "session expired");
                b.metrics.sessions_expired.fetch_add(1, Ordering::Relaxed);
                b.discard(&s2, "expired");
            }
        });
        s.timers.lock().push(t.abort_handle());
    }

    pub(crate) fn publish_will(&self, w: Will) {
        self.metrics.wills_published.fetch_add(1, Ordering::Relaxed);
        let mut msg = w.msg;
        // MQTT 5 §3.1.3.2.4: the will's lifetime starts when it is published.
        msg.received = std::time::Instant::now();
        self.publish_detached(msg.with_expiry(w.expiry), "a will");
    }

    /// Publishes a will still waiting for its delay, if any.
    pub fn publish_pending_will(&self, s: &Session) {
        if s.is_online() {
            return;
        }
        let will = s.will.lock().take();
        if let Some(w) = will {
            self.will_changed(s);
            self.publish_will(*w);
        }
    }

    /// Tells the cluster the session's pending will now (kept there for when this node
    /// dies, `cluster/wills.rs`).
    /// A persistent session's record or subscriptions changed, or it ended: the cluster
    /// keeps it for another node to adopt if this one dies.
    pub(crate) fn session_changed(&self, s: &Session) {
        if let Some(c) = self.cluster() {
            c.session_changed(&s.tenant, &s.client_id);
        }
    }

    pub(crate) fn will_changed(&self, s: &Session) {
        if let Some(c) = self.cluster() {
            let w = s.will.lock();
            c.will_set(&s.tenant, &s.client_id, w.as_deref());
        }
    }

    /// Ends a session: removes it from the registry and the router, drops its queue,
    /// publishes a will still waiting for its delay.
    pub fn discard(&self, s: &Arc<Session>, reason: &'static str) {
        if self.registry.remove(s) {
            self.discard_unregistered(s, reason);
        }
    }

    fn discard_unregistered(&self, s: &Arc<Session>, reason: &'static str) {
        s.cancel_timers();
        // One critical section: after it no subscribe, delivery or store write can
        // reach this session, and the store's delete comes after everything it wrote.
        let filters: Vec<String> = {
            let mut st = s.state.lock();
            st.ended = true;
            let subs = std::mem::take(&mut st.subscriptions);
            s.set_subscription_count(0);
            for f in subs.keys() {
                self.unroute(s, f);
            }
            st.clear_messages();
            if s.persistent.swap(false, Ordering::AcqRel) {
                self.session_changed(s);
                if let Some(store) = &self.store {
                    store.submit(crate::store::Op::DeleteSession(
                        s.tenant.clone(),
                        s.client_id.clone(),
                    ));
                }
            }
            subs.into_keys().collect()
        };
        for filter in filters {
            self.registry.emit(Event::Unsubscribed {
                tenant: s.tenant.clone(),
                client_id: s.client_id.clone(),
                filter,
            });
        }
        self.publish_pending_will(s);
        self.registry.emit(Event::SessionEnded {
            tenant: s.tenant.clone(),
            client_id: s.client_id.clone(),
            reason,
        });
    }
}
