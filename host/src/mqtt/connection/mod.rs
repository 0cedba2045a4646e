//! One MQTT connection after CONNECT: the loop that reads packets, drains the session's
//! queue into batched writes, enforces keepalive, and obeys control commands (takeover,
//! kick, shutdown). Everything it decodes in one read is answered in one write.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use bytestring::ByteString;
use rmqtt_codec::error::DecodeError;
use rmqtt_codec::v5::ToReasonCode;
use tokio::sync::{oneshot, watch};
use tokio::time::Sleep;
use tracing::debug;

// The outbound half of the connection (its write path) and its construction: children,
// so they share the connection's private state.
mod outbound;
mod pressure;
mod publish;
mod setup;

pub(crate) use setup::Accepted;

use super::transport::Transport;
use super::wire::{Incoming, Wire};
use crate::acl::{Acl, Action, Ask};
use crate::broker::Broker;
use crate::session::{Control, Counters, InflightState, Outgoing, Session};
use crate::store::Op;
use crate::topic;
use outbound::{durable_changed, PendingAck};

/// A read at least this big is followed by a yield to other connections.
const YIELD_AFTER_BYTES: usize = 4096;

/// A write smaller than this frees the write buffer afterwards (see `flush`).
const KEEP_WBUF_AFTER: usize = 4096;

/// Why a connection's loop ended.
#[derive(Debug)]
pub(crate) enum Exit {
    /// DISCONNECT from the client; `will` for v5 reason 0x04.
    ClientDisconnect { will: bool },
    /// The peer closed the socket.
    Closed,
    /// Socket error.
    Io(std::io::Error),
    /// Keepalive expired.
    KeepAlive,
    /// The client stopped reading: a write blocked past the write timeout.
    WriteTimeout,
    /// Protocol violation: the v5 DISCONNECT reason code and what happened.
    Protocol(u8, String),
    /// Another connection takes the session.
    Takeover(oneshot::Sender<()>),
    /// Kicked by an administrator.
    Kick { end_session: bool },
    /// Broker shutting down.
    Shutdown,
}

/// Per-connection state.
pub(crate) struct Connection<T: Transport> {
    broker: Broker,
    io: T,
    wire: Wire,
    rbuf: BytesMut,
    wbuf: BytesMut,
    session: Arc<Session>,
    generation: u64,
    control: crate::session::ControlRx,
    /// 1.5 × keepalive, None when keepalive is 0.
    keepalive: Option<Duration>,
    ka_timer: Pin<Box<Sleep>>,
    last_recv: Instant,
    /// Inflight window towards the client.
    window: usize,
    alias_in: HashMap<u16, ByteString>,
    alias_out: HashMap<ByteString, u16>,
    alias_out_max: u16,
    /// Session expiry in force (may change at DISCONNECT).
    session_expiry: u32,
    outgoing: Vec<Outgoing>,
    /// The last pump stopped at its byte budget: pump again once the buffer is written.
    more_out: bool,
    /// `wbuf` bytes counted in the broker's write-buffer gauge.
    wbuf_counted: usize,
    /// The store's durable ticket, and acks waiting for it (sync = "always", or while
    /// the store's writer is behind).
    durable: Option<watch::Receiver<u64>>,
    pending_acks: VecDeque<(u64, PendingAck)>,
    /// How long one write may block before the client counts as gone.
    write_timeout: Duration,
    /// A write was interrupted: the stream may hold half a packet, send nothing more.
    write_broken: bool,
    /// Session expiry from CONNECT (DISCONNECT may not raise it from 0).
    connect_expiry: u32,
    /// Who the client is, and its cached ACL decisions.
    acl: Acl,
    /// Its tenant's message counters (`$SYS` per tenant).
    tenant_counters: Arc<crate::metrics::TenantCounters>,
    /// Set when the client authenticated with an MQTT 5 authentication method, which it
    /// may use again to re-authenticate.
    reauth: Option<Box<ReAuth>>,
    /// Sessions whose full queues this connection waits for before reading on.
    blocked: Option<Box<pressure::Blocked>>,
    /// Publishes of this read waiting for the message interceptors.
    batch: publish::Batch,
}

/// What re-authentication needs: the method, the CONNECT the plugin sees, and the
/// exchange in progress.
pub(crate) struct ReAuth {
    pub method: String,
    pub connect: crate::auth::ConnectAttempt,
    pub conv: Option<crate::auth::Conversation>,
}

fn control_exit(c: Control) -> Exit {
    match c {
        Control::Takeover(ack) => Exit::Takeover(ack),
        Control::Kick { end_session } => Exit::Kick { end_session },
        Control::Shutdown => Exit::Shutdown,
    }
}

impl<T: Transport> Connection<T> {
    /// Runs until the connection ends, then detaches from the session.
    pub async fn run(&mut self) {
        let exit = self.serve().await;
        // Boxed: closing happens once, and its future (a timed write and close) would
        // otherwise be part of the task for the connection's whole life.
        Box::pin(self.finish(exit)).await;
    }

    async fn serve(&mut self) -> Exit {
        // Packets that arrived with CONNECT (clients need not wait for CONNACK).
        if !self.rbuf.is_empty() {
            if let Err(exit) = self.process().await {
                return exit;
            }
            if let Err(exit) = self.release_acks() {
                return exit;
            }
            self.pump();
        }
        loop {
            if let Err(exit) = self.flush().await {
                return exit;
            }
            let paused = self.reading_paused();
            tokio::select! {
                biased;
                Some(c) = self.control.recv() => return control_exit(c),
                r = self.io.read(&mut self.rbuf), if !paused => match r {
                    Ok(0) => return Exit::Closed,
                    Ok(n) => {
                        let c = &self.session.counters;
                        Counters::add(&c.recv_oct, n as u64);
                        Counters::add(&c.recv_cnt, 1);
                        self.broker.metrics.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                        self.last_recv = Instant::now();
                        if let Err(exit) = self.process().await {
                            return exit;
                        }
                        if let Err(exit) = self.release_acks() {
                            return exit;
                        }
                        if n >= YIELD_AFTER_BYTES {
                            // A publisher that keeps its socket full must not starve the
                            // subscribers it feeds: tokio's budget would let it route
                            // ~128 reads (tens of thousands of messages) before they run.
                            tokio::task::yield_now().await;
                        }
                    }
                    Err(e) => return Exit::Io(e),
                },
                _ = self.session.notify.notified() => {}
                _ = durable_changed(&mut self.durable), if !self.pending_acks.is_empty() => {}
                _ = pressure::space_or_deadline(&self.blocked), if self.blocked.is_some() => {
                    // Packets read before the wait go on once nothing is waited for.
                    if self.recheck_blocked() {
                        if let Err(exit) = self.process().await {
                            return exit;
                        }
                    }
                }
                _ = &mut self.ka_timer, if self.keepalive.is_some() => {
                    let ka = self.keepalive.unwrap_or_default();
                    if paused {
                        // Not reading is ours, not the client's silence.
                        self.last_recv = Instant::now();
                    }
                    if self.last_recv.elapsed() >= ka {
                        self.broker.metrics.keepalive_timeouts.fetch_add(1, Ordering::Relaxed);
                        return Exit::KeepAlive;
                    }
                    let next = self.last_recv + ka;
                    self.ka_timer.as_mut().reset(next.into());
                }
                // The write buffer was written and the last pump left messages behind.
                _ = std::future::ready(()), if self.more_out => {}
            }
            if let Err(exit) = self.release_acks() {
                return exit;
            }
            self.pump();
        }
    }

    /// Writes the buffer, still obeying control commands and bounded by the write
    /// timeout, so a client that stops reading cannot pin its session.
    async fn flush(&mut self) -> Result<(), Exit> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let n = self.wbuf.len() as u64;
        let r = tokio::select! {
            biased;
            Some(c) = self.control.recv() => {
                self.write_broken = true;
                return Err(control_exit(c));
            }
            r = tokio::time::timeout(self.write_timeout, self.io.write(&mut self.wbuf)) => r,
        };
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.write_broken = true;
                return Err(Exit::Io(e));
            }
            Err(_) => {
                self.write_broken = true;
                return Err(Exit::WriteTimeout);
            }
        }
        if n < KEEP_WBUF_AFTER as u64 {
            // A small write (acks, a ping answer, a few messages): free the buffer rather
            // than keep it for a connection that may now idle for minutes. Busy ones,
            // writing big batches, keep theirs.
            self.wbuf = BytesMut::new();
        }
        self.count_wbuf();
        let c = &self.session.counters;
        Counters::add(&c.send_oct, n);
        Counters::add(&c.send_cnt, 1);
        Counters::add(&c.send_pkt, self.wire.take_encoded());
        self.broker
            .metrics
            .bytes_sent
            .fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Decodes and handles every complete packet in the read buffer. Awaits only when an
    /// ACL decision is not cached, or for the message interceptors.
    async fn process(&mut self) -> Result<(), Exit> {
        let r = self.process_packets().await;
        // What was read before the end (or a protocol error) is routed and answered.
        self.flush_batch().await;
        r
    }

    async fn process_packets(&mut self) -> Result<(), Exit> {
        if self.wbuf.capacity() == 0 {
            // Room for the acks a batch of packets usually needs, in one allocation.
            self.wbuf.reserve(256);
        }
        loop {
            if self.blocked.is_some() && super::wire::starts_with_publish(&self.rbuf) {
                // A queue an earlier publish fed is full: publishes wait (backpressure);
                // acks and pings before them were handled.
                return Ok(());
            }
            match self.wire.decode(&mut self.rbuf) {
                Ok(Some((pkt, _))) => {
                    Counters::add(&self.session.counters.recv_pkt, 1);
                    self.handle(pkt).await?;
                }
                Ok(None) => {
                    if self.rbuf.is_empty() {
                        // Everything read was handled: the next read allocates one of its
                        // own size, so a waiting connection holds no read buffer.
                        self.rbuf = BytesMut::new();
                    }
                    return Ok(());
                }
                Err(e) => {
                    let m = &self.broker.metrics;
                    if matches!(e, DecodeError::MaxSizeExceeded { .. }) {
                        m.packets_too_large.fetch_add(1, Ordering::Relaxed);
                    } else {
                        m.malformed_packets.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(Exit::Protocol(u8::from(e.to_reason_code()), e.to_string()));
                }
            }
        }
    }

    fn protocol_error(&self, code: u8, what: impl Into<String>) -> Exit {
        self.broker
            .metrics
            .malformed_packets
            .fetch_add(1, Ordering::Relaxed);
        Exit::Protocol(code, what.into())
    }

    async fn handle(&mut self, pkt: Incoming) -> Result<(), Exit> {
        if !matches!(pkt, Incoming::Publish(_)) {
            // Publishes before it are answered before it.
            self.flush_batch().await;
        }
        match pkt {
            // Kept boxed: unboxed, the packet would be part of every task's state.
            Incoming::Publish(p) => self.on_publish(p).await?,
            Incoming::PubAck(pid) => {
                let done = self.session.state.lock().puback(pid);
                if let Some(i) = done {
                    self.store_delete(i.delivery.seq);
                }
            }
            Incoming::PubRec { pid, ok } => {
                if ok {
                    let moved = self
                        .session
                        .state
                        .lock()
                        .pubrec(pid)
                        .map(|i| i.delivery.clone());
                    let known = moved.is_some()
                        || self
                            .session
                            .state
                            .lock()
                            .inflight
                            .iter()
                            .any(|i| i.pid == pid);
                    if let Some(d) = moved {
                        self.store_delivery(&d, pid, InflightState::AwaitComp);
                    }
                    self.wire.pubrel(pid, known, &mut self.wbuf);
                } else {
                    let done = self.session.state.lock().pubrec_failed(pid);
                    if let Some(i) = done {
                        self.store_delete(i.delivery.seq);
                    }
                }
            }
            Incoming::PubRel(pid) => {
                let found = self.session.state.lock().awaiting_rel.remove(&pid);
                if found {
                    self.store_op(|t, c| Op::DeleteRel(t, c, pid));
                }
                self.wire.pubcomp(pid, found, &mut self.wbuf);
            }
            Incoming::PubComp(pid) => {
                let done = self.session.state.lock().pubcomp(pid);
                if let Some(i) = done {
                    self.store_delete(i.delivery.seq);
                }
            }
            // Boxed, as AUTH below: rare next to PUBLISH, and inline their futures would
            // make every connection's task as large as theirs.
            Incoming::Subscribe { pid, filters, .. } => {
                Box::pin(self.on_subscribe(pid, filters)).await?
            }
            Incoming::Unsubscribe { pid, filters } => {
                let levels = self.broker.config().mqtt.max_topic_levels;
                let codes: Vec<u8> = filters
                    .iter()
                    .map(|f| {
                        if topic::parse_filter(f, levels).is_err() {
                            0x8F
                        } else if self.broker.unsubscribe(&self.session, f) {
                            0x00
                        } else {
                            0x11
                        }
                    })
                    .collect();
                self.wire.unsuback(pid, &codes, &mut self.wbuf);
            }
            Incoming::PingReq => self.wire.pingresp(&mut self.wbuf),
            Incoming::Disconnect {
                reason,
                session_expiry,
            } => {
                if let Some(e) = session_expiry {
                    if self.connect_expiry == 0 && e != 0 {
                        return Err(
                            self.protocol_error(0x82, "DISCONNECT raised a zero session expiry")
                        );
                    }
                    self.session_expiry =
                        e.min(self.broker.config().session.max_session_expiry_secs);
                }
                return Err(Exit::ClientDisconnect {
                    will: reason == 0x04,
                });
            }
            Incoming::Auth(a) => Box::pin(self.on_auth(*a)).await?,
            Incoming::Unexpected(what) => {
                return Err(self.protocol_error(0x82, format!("unexpected {what} from a client")))
            }
        }
        Ok(())
    }

    /// Re-authentication (MQTT 5 AUTH after CONNACK) with the method of CONNECT; a refusal
    /// disconnects with the plugin's reason code.
    async fn on_auth(&mut self, a: rmqtt_codec::v5::Auth) -> Result<(), Exit> {
        use crate::auth::Step;
        use rmqtt_codec::v5::AuthReasonCode as Rc;
        let Some(ra) = self.reauth.as_mut() else {
            return Err(self.protocol_error(0x82, "AUTH without an authentication method"));
        };
        if a.auth_method.as_deref() != Some(ra.method.as_str()) {
            return Err(self.protocol_error(0x82, "AUTH with another authentication method"));
        }
        let conv = match (a.reason_code, ra.conv.take()) {
            (Rc::ReAuth, _) => None,
            (Rc::ContinueAuth, Some(c)) => Some(c),
            _ => return Err(self.protocol_error(0x82, "AUTH out of sequence")),
        };
        let (method, connect) = (ra.method.clone(), ra.connect.clone());
        let data = a.auth_data.map(|d| d.to_vec());
        match crate::auth::enhanced_step(&self.broker, &connect, &method, data, conv, true).await {
            Step::Success(id, d) => {
                let old = self.acl.identity();
                if id.tenant != old.tenant || id.user_id != old.user_id {
                    return Err(Exit::Protocol(
                        0x87,
                        "re-authentication changed the tenant or user".into(),
                    ));
                }
                // Rights may have changed (superuser): start over with the new identity.
                self.acl = Acl::new(id, &self.broker.config().auth);
                self.wire.auth(0x00, &method, d, &mut self.wbuf);
            }
            Step::Continue(d, c) => {
                if let Some(ra) = self.reauth.as_mut() {
                    ra.conv = Some(c);
                }
                self.wire.auth(0x18, &method, Some(d), &mut self.wbuf);
            }
            Step::Denied(d) => return Err(Exit::Protocol(d.code, d.message)),
        }
        Ok(())
    }

    async fn on_subscribe(
        &mut self,
        pid: u16,
        filters: Vec<(ByteString, crate::session::SubOptions)>,
    ) -> Result<(), Exit> {
        let mut codes = Vec::with_capacity(filters.len());
        let mut granted = Vec::with_capacity(filters.len());
        for (f, opts) in filters {
            if self.wire.v5 && opts.no_local && topic::split_share(&f).0.is_some() {
                return Err(self.protocol_error(0x82, "no-local on a shared subscription"));
            }
            // Rules see the filter a shared subscription stands for, not its group.
            let plain = topic::split_share(&f).1;
            let allowed = self
                .acl
                .check(
                    &self.broker,
                    &self.session.client_id,
                    Ask {
                        action: Action::Subscribe,
                        topic: plain,
                        qos: opts.qos.value(),
                        retain: false,
                    },
                    Instant::now(),
                )
                .await;
            if !allowed {
                self.broker
                    .metrics
                    .acl_subscribe_denied
                    .fetch_add(1, Ordering::Relaxed);
                codes.push(if self.wire.v5 { 0x87 } else { 0x80 });
                continue;
            }
            match self.broker.subscribe(&self.session, &f, opts) {
                Ok(new) => {
                    codes.push(opts.qos.value());
                    granted.push((f, opts, new));
                }
                Err(e) => {
                    debug!(client_id = %self.session.client_id, filter = %&*f, error = %e, "subscription refused");
                    codes.push(if self.wire.v5 { e.reason_code() } else { 0x80 });
                }
            }
        }
        self.wire.suback(pid, &codes, &mut self.wbuf);
        for (f, opts, new) in granted {
            self.broker.send_retained(&self.session, &f, opts, new);
        }
        Ok(())
    }

    async fn finish(&mut self, exit: Exit) {
        let (code, publish_will, reason): (Option<u8>, bool, String) = match &exit {
            Exit::ClientDisconnect { will } => (None, *will, "normal".into()),
            Exit::Closed => (None, true, "closed".into()),
            Exit::Io(e) => (None, true, format!("io error: {e}")),
            Exit::KeepAlive => (Some(0x8D), true, "keepalive timeout".into()),
            Exit::WriteTimeout => (
                None,
                true,
                "write timed out: the client stopped reading".into(),
            ),
            Exit::Protocol(c, what) => (Some(*c), true, what.clone()),
            Exit::Takeover(_) => (Some(0x8E), true, "taken over".into()),
            Exit::Kick { .. } => (Some(0x98), true, "kicked".into()),
            // The server closes the connection: the client did not say goodbye, so its
            // will stands (published now, or after its delay, which a restart keeps).
            Exit::Shutdown => (Some(0x8B), true, "shutdown".into()),
        };
        debug!(client_id = %self.session.client_id, %reason, "connection closed");
        // A reason code went out: read on (bounded) so the client gets to read it.
        // Not at shutdown: the broker is going away, and the task must let go of it.
        let linger =
            code.is_some() && self.wire.v5 && !self.write_broken && !matches!(exit, Exit::Shutdown);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            if !self.write_broken {
                if let Some(c) = code {
                    self.wire.disconnect(c, &mut self.wbuf);
                }
                let _ = self.io.write(&mut self.wbuf).await;
            }
            self.io.close().await;
        })
        .await;
        self.wbuf.clear();
        self.count_wbuf();
        self.broker.detach(
            &self.session,
            self.generation,
            publish_will,
            self.session_expiry,
            reason,
        );
        match exit {
            Exit::Takeover(ack) => {
                let _ = ack.send(());
            }
            Exit::Kick { end_session: true } => self.broker.discard(&self.session, "kicked"),
            _ => {}
        }
        // After detaching (and closing the mailbox, so a takeover arriving now is not
        // kept waiting): a new connection does not wait for the old client to stop sending.
        self.control.close();
        if linger {
            let stop = self.broker.stopped();
            crate::mqtt::transport::linger(&mut self.io, stop).await;
        }
    }
}
