//! Building a connection from an accepted CONNECT: the one place its state is put
//! together (keepalive timer, window, aliases, store ticket, ACL), so no other module
//! writes a connection's fields.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::{Connection, ReAuth};
use crate::acl::Acl;
use crate::broker::Broker;
use crate::mqtt::transport::Transport;
use crate::mqtt::wire::Wire;

/// What a connection starts from once its CONNECT was accepted and its session attached.
pub(crate) struct Accepted<T: Transport> {
    /// The broker.
    pub broker: Broker,
    /// The transport.
    pub io: T,
    /// The codec, with the client's protocol version and limits.
    pub wire: Wire,
    /// Bytes read past CONNECT.
    pub rbuf: BytesMut,
    /// CONNACK (and anything else) to write first.
    pub wbuf: BytesMut,
    /// The attached session.
    pub attach: crate::session::Attach,
    /// Keepalive in force, in seconds (0 = none).
    pub keepalive_secs: u16,
    /// Inflight window towards the client.
    pub window: usize,
    /// Topic aliases the client accepts.
    pub alias_out_max: u16,
    /// Session expiry from CONNECT.
    pub session_expiry: u32,
    /// Who the client is.
    pub acl: Acl,
    /// MQTT 5 re-authentication, when it authenticated with a method.
    pub reauth: Option<Box<ReAuth>>,
}

impl<T: Transport> Connection<T> {
    /// The connection of an accepted CONNECT: resends what its resumed session had in
    /// flight and queues what is waiting, ready to [`Connection::run`].
    pub(crate) fn new(a: Accepted<T>) -> Self {
        let Accepted {
            broker,
            io,
            wire,
            rbuf,
            wbuf,
            attach,
            keepalive_secs,
            window,
            alias_out_max,
            session_expiry,
            acl,
            reauth,
        } = a;
        let ka =
            (keepalive_secs > 0).then(|| Duration::from_millis(u64::from(keepalive_secs) * 1500));
        let now = Instant::now();
        let tenant_counters = broker.tenant_stats.of(&attach.session.tenant);
        let write_timeout =
            Duration::from_secs(broker.config().listeners.write_timeout_secs.max(1));
        let durable = broker.store.as_ref().map(|s| s.durable());
        let mut conn = Connection {
            broker,
            io,
            wire,
            rbuf,
            wbuf,
            session: attach.session,
            generation: attach.generation,
            control: attach.control,
            keepalive: ka,
            ka_timer: Box::pin(tokio::time::sleep_until(
                (now + ka.unwrap_or(Duration::from_secs(3600))).into(),
            )),
            last_recv: now,
            window: window.max(1),
            alias_in: HashMap::new(),
            alias_out: HashMap::new(),
            alias_out_max,
            session_expiry,
            outgoing: Vec::new(),
            more_out: false,
            wbuf_counted: 0,
            durable,
            pending_acks: VecDeque::new(),
            write_timeout,
            write_broken: false,
            connect_expiry: session_expiry,
            tenant_counters,
            acl,
            reauth,
            blocked: None,
            batch: Default::default(),
        };
        // CONNECT itself, read before the session existed.
        crate::session::Counters::add(&conn.session.counters.recv_pkt, 1);
        if attach.session_present {
            // Unacknowledged messages go again first, within the window and byte budget.
            conn.session.state.lock().resend_all();
        }
        conn.pump();
        conn
    }
}
