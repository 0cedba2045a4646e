//! The host interfaces a plugin imports. Every call is checked against the plugin's
//! `capabilities` and `tenants`; a call outside them returns `permission-denied` to the
//! guest (the inner result), while the outer result is reserved for traps.

use std::num::NonZeroU32;
use std::time::SystemTime;

use bytes::Bytes;
use rmqtt_codec::types::QoS;

use super::bindings::apiary::plugin::{broker, clock, log, registry, types};
use super::manifest::Capability;
use super::runtime::PluginState;
use crate::registry::{KickTarget, OpError, Page, Query, SessionSnapshot};
use crate::session::{SubOptions, Transport};
use crate::store::records::{system_time, to_ms};

type Error = types::Error;

/// Largest page a registry query returns (EMQX's own maximum `limit`).
const MAX_PAGE: u32 = 10_000;

/// Checks paging arguments: 1-based, and pages of at most [`MAX_PAGE`].
fn paging(page: u32, limit: u32) -> Result<Page, Error> {
    if limit == 0 || page == 0 {
        return Err(Error::InvalidArgument("page and limit start at 1".into()));
    }
    if limit > MAX_PAGE {
        return Err(Error::InvalidArgument(format!(
            "limit is at most {MAX_PAGE}"
        )));
    }
    Ok(Page {
        page: page as usize,
        limit: limit as usize,
    })
}

impl PluginState {
    /// Whether the plugin may use `cap` on `tenant`: its toml must grant both and, once the
    /// call acts as an API key, the key must hold the matching right and tenant.
    pub(crate) fn check(&self, cap: Capability, tenant: Option<&str>) -> Result<(), Error> {
        let m = &self.ctx.manifest;
        if !m.can(cap) {
            return Err(Error::PermissionDenied(format!(
                "plugin {} was not granted {}",
                self.ctx.name,
                cap.as_str()
            )));
        }
        if let Some(t) = tenant {
            if !m.may_touch(t) {
                return Err(Error::PermissionDenied(format!(
                    "plugin {} may not act on tenant {t}",
                    self.ctx.name
                )));
            }
        }
        if let Some(k) = &self.acting {
            if let Some(r) = cap.right().filter(|&r| !k.has(r)) {
                return Err(Error::PermissionDenied(format!(
                    "API key {} does not hold {r}",
                    k.key
                )));
            }
            if let Some(t) = tenant.filter(|t| !k.may_touch(t)) {
                return Err(Error::PermissionDenied(format!(
                    "API key {} may not act on tenant {t}",
                    k.key
                )));
            }
        }
        Ok(())
    }
}

fn op_error(e: OpError) -> Error {
    use crate::broker::SubscribeError;
    match e {
        OpError::NotFound(m) => Error::NotFound(m),
        OpError::Topic(_) | OpError::Subscribe(SubscribeError::InvalidFilter(_)) => {
            Error::InvalidArgument(e.to_string())
        }
        OpError::Subscribe(_) | OpError::Publish(_) | OpError::Acl(_) => {
            Error::Refused(e.to_string())
        }
        OpError::Remote { refused: true, .. } => Error::Refused(e.to_string()),
        OpError::Remote { refused: false, .. } => Error::InvalidArgument(e.to_string()),
    }
}

fn qos(q: u8) -> Result<QoS, Error> {
    QoS::try_from(q).map_err(|_| Error::InvalidArgument(format!("QoS must be 0, 1 or 2, not {q}")))
}

fn transport(t: &str) -> Result<Transport, Error> {
    match t {
        "tcp" => Ok(Transport::Tcp),
        "tls" | "ssl" => Ok(Transport::Tls),
        "ws" => Ok(Transport::Ws),
        "wss" => Ok(Transport::Wss),
        other => Err(Error::InvalidArgument(format!(
            "unknown transport {other:?}"
        ))),
    }
}

fn u32_sat(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The registry snapshot in WIT form.
pub(crate) fn session(s: SessionSnapshot) -> types::Session {
    types::Session {
        node: s.node,
        tenant: s.tenant,
        client_id: s.client_id,
        username: s.username,
        user_id: s.user_id,
        proto_name: s.proto_name,
        proto_ver: s.proto_ver,
        transport: s.transport.as_str().to_string(),
        listener: s.listener,
        ip_address: s.ip_address,
        port: s.port,
        connected: s.connected,
        connected_at: s.connected_at,
        disconnected_at: s.disconnected_at,
        created_at: s.created_at,
        keepalive: s.keepalive,
        clean_start: s.clean_start,
        expiry_interval: s.expiry_interval,
        subscriptions: s
            .subscriptions
            .into_iter()
            .map(|x| types::Subscription {
                topic: x.topic,
                qos: x.qos,
                nl: x.nl != 0,
                rap: x.rap != 0,
                rh: x.rh,
            })
            .collect(),
        subscriptions_max: u32_sat(s.subscriptions_max),
        inflight_cnt: u32_sat(s.inflight_cnt),
        inflight_max: u32::from(s.inflight_max),
        mqueue_len: u32_sat(s.mqueue_len),
        mqueue_max: u32_sat(s.mqueue_max),
        mqueue_dropped: s.mqueue_dropped,
        awaiting_rel_cnt: u32_sat(s.awaiting_rel_cnt),
        awaiting_rel_max: u32_sat(s.awaiting_rel_max),
        recv_oct: s.recv_oct,
        recv_cnt: s.recv_cnt,
        recv_pkt: s.recv_pkt,
        recv_msg: s.recv_msg,
        send_oct: s.send_oct,
        send_cnt: s.send_cnt,
        send_pkt: s.send_pkt,
        send_msg: s.send_msg,
        description: s.description,
    }
}

/// A listed delivery as the WIT shows it; `now` dates its publish time.
fn session_message(m: crate::session::MessageSnapshot) -> registry::SessionMessage {
    registry::SessionMessage {
        position: m.position,
        topic: m.topic,
        payload: m.payload,
        qos: m.qos,
        retain: m.retain,
        packet_id: m.packet_id,
        published_at: m.published_at,
        from_client_id: m.from_client_id,
    }
}

fn to_query(q: registry::SessionFilter) -> Result<Query, Error> {
    let ip = match q.ip_address {
        Some(s) => Some(
            s.parse()
                .map_err(|_| Error::InvalidArgument(format!("bad IP address {s:?}")))?,
        ),
        None => None,
    };
    let transport = q.transport.as_deref().map(transport).transpose()?;
    Ok(Query {
        tenant: q.tenant,
        client_id: q.client_id,
        client_ids: Vec::new(),
        username: q.username,
        usernames: Vec::new(),
        user_id: q.user_id,
        ip,
        proto_name: q.proto_name,
        proto_ver: q.proto_ver,
        transport,
        connected: q.connected,
        clean_start: q.clean_start,
        like_client_id: q.like_client_id,
        like_username: q.like_username,
        created_from: q.created_from.map(system_time),
        created_to: q.created_to.map(system_time),
        connected_from: q.connected_from.map(system_time),
        connected_to: q.connected_to.map(system_time),
    })
}

impl types::Host for PluginState {}

impl registry::Host for PluginState {
    async fn subscriptions(
        &mut self,
        f: registry::SubscriptionFilter,
        page: u32,
        limit: u32,
    ) -> wasmtime::Result<Result<registry::SubscriptionPage, Error>> {
        let asked = (|| -> Result<_, Error> {
            let tenant = f.tenant.clone().unwrap_or_else(|| "*".into());
            self.check(Capability::RegistryRead, Some(&tenant))?;
            let paged = paging(page, limit)?;
            let q = crate::registry::SubQuery {
                tenant: f.tenant,
                client_id: f.client_id,
                topic: f.topic,
                qos: f.qos,
                share_group: f.share_group,
                match_topic: f.match_topic,
            };
            Ok((q, paged))
        })();
        let (q, paged) = match asked {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        // Every node's subscriptions in a cluster.
        let b = self.ctx.broker.clone();
        let r = b.subscriptions_all(&q, paged).await;
        let run = || -> Result<registry::SubscriptionPage, Error> {
            Ok(registry::SubscriptionPage {
                items: r
                    .items
                    .into_iter()
                    .map(|e| registry::OwnedSubscription {
                        node: e.node,
                        tenant: e.tenant.to_string(),
                        client_id: e.client_id.to_string(),
                        subscription: types::Subscription {
                            topic: e.sub.topic,
                            qos: e.sub.qos,
                            nl: e.sub.nl != 0,
                            rap: e.sub.rap != 0,
                            rh: e.sub.rh,
                        },
                    })
                    .collect(),
                count: r.count as u64,
                has_next: r.has_next,
            })
        };
        Ok(run())
    }

    async fn query(
        &mut self,
        q: registry::SessionFilter,
        page: u32,
        limit: u32,
    ) -> wasmtime::Result<Result<registry::Page, Error>> {
        let (query, paged) = match (|| -> Result<_, Error> {
            // Without a tenant the query spans tenants: only for plugins granted all of them.
            let tenant = q.tenant.clone().unwrap_or_else(|| "*".into());
            self.check(Capability::RegistryRead, Some(&tenant))?;
            Ok((to_query(q)?, paging(page, limit)?))
        })() {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        // Every node's sessions in a cluster; the broker, not the (non-Sync) state, held.
        let b = self.ctx.broker.clone();
        let r = b.query_all(&query, paged).await;
        Ok(Ok(registry::Page {
            items: r.items.into_iter().map(session).collect(),
            count: r.count as u64,
            has_next: r.has_next,
        }))
    }

    async fn session_messages(
        &mut self,
        tenant: String,
        client_id: String,
        inflight: bool,
        after: Option<u64>,
        limit: u32,
    ) -> wasmtime::Result<Result<registry::MessagePage, Error>> {
        let limit = match self
            .check(Capability::RegistryRead, Some(&tenant))
            .and_then(|()| paging(1, limit))
        {
            Ok(p) => p.limit,
            Err(e) => return Ok(Err(e)),
        };
        // On whichever node holds the session.
        let b = self.ctx.broker.clone();
        let Some((items, has_next)) = b
            .messages_any(&tenant, &client_id, inflight, after, limit)
            .await
        else {
            let e = Error::NotFound(format!("no session for client id {client_id}"));
            return Ok(Err(e));
        };
        Ok(Ok(registry::MessagePage {
            items: items.into_iter().map(session_message).collect(),
            has_next,
        }))
    }

    async fn list_sessions(
        &mut self,
        q: registry::SessionFilter,
        set: registry::SessionSet,
        start: registry::Start,
        limit: u32,
    ) -> wasmtime::Result<Result<registry::Listing, Error>> {
        let query = match (|| -> Result<_, Error> {
            let tenant = q.tenant.clone().unwrap_or_else(|| "*".into());
            self.check(Capability::RegistryRead, Some(&tenant))?;
            let mut query = to_query(q)?;
            query.client_ids = set.client_ids;
            query.usernames = set.usernames;
            Ok(query)
        })() {
            Ok(q) => q,
            Err(e) => return Ok(Err(e)),
        };
        let b = self.ctx.broker.clone();
        let run = async {
            Ok(match start {
                // Pages span the cluster's nodes.
                registry::Start::Page(page) => {
                    let r = b.query_all(&query, paging(page, limit)?).await;
                    registry::Listing {
                        items: r.items.into_iter().map(session).collect(),
                        count: Some(r.count as u64),
                        has_next: r.has_next,
                        cursor: None,
                    }
                }
                // Cursors walk the cluster's nodes in name order.
                registry::Start::After(cursor) => {
                    let limit = paging(1, limit)?.limit;
                    let (items, next) = b
                        .query_after_all(&query, cursor.as_deref(), limit)
                        .await
                        .map_err(Error::InvalidArgument)?;
                    registry::Listing {
                        items: items.into_iter().map(session).collect(),
                        count: None,
                        has_next: next.is_some(),
                        cursor: next,
                    }
                }
            })
        };
        Ok(run.await)
    }

    async fn get(
        &mut self,
        tenant: String,
        client_id: String,
    ) -> wasmtime::Result<Result<Option<types::Session>, Error>> {
        if let Err(e) = self.check(Capability::RegistryRead, Some(&tenant)) {
            return Ok(Err(e));
        }
        let b = self.ctx.broker.clone();
        Ok(Ok(b.snapshot_any(&tenant, &client_id).await.map(session)))
    }

    async fn kick(
        &mut self,
        tenant: String,
        client_id: String,
        end_session: bool,
    ) -> wasmtime::Result<Result<u32, Error>> {
        if let Err(e) = self.check(Capability::RegistryKick, Some(&tenant)) {
            return Ok(Err(e));
        }
        let b = self.ctx.broker.clone();
        let n = b
            .kick_all(&tenant, &KickTarget::ClientId(client_id), end_session)
            .await;
        Ok(Ok(u32_sat(n)))
    }

    async fn kick_user(
        &mut self,
        tenant: String,
        user_id: String,
        transport_name: Option<String>,
        end_session: bool,
    ) -> wasmtime::Result<Result<u32, Error>> {
        let only = match (|| -> Result<_, Error> {
            self.check(Capability::RegistryKick, Some(&tenant))?;
            match transport_name.as_deref() {
                None => Ok(None),
                Some(t) => Ok(Some(crate::registry::Via::parse(t).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "unknown transport or protocol {t:?} (tcp, tls, ws, wss, mqtt, websocket, socketio)"
                    ))
                })?)),
            }
        })() {
            Ok(o) => o,
            Err(e) => return Ok(Err(e)),
        };
        let b = self.ctx.broker.clone();
        let target = KickTarget::UserId { user_id, only };
        Ok(Ok(u32_sat(b.kick_all(&tenant, &target, end_session).await)))
    }

    #[allow(clippy::too_many_arguments)]
    async fn subscribe(
        &mut self,
        tenant: String,
        client_id: String,
        topic: String,
        q: u8,
        nl: bool,
        rap: bool,
        rh: u8,
    ) -> wasmtime::Result<Result<bool, Error>> {
        let opts = self
            .check(Capability::RegistrySubscribe, Some(&tenant))
            .and_then(|()| {
                if rh > 2 {
                    return Err(Error::InvalidArgument("rh must be 0, 1 or 2".into()));
                }
                Ok(SubOptions {
                    qos: qos(q)?,
                    no_local: nl,
                    retain_as_published: rap,
                    retain_handling: rh,
                    sub_id: None::<NonZeroU32>,
                })
            });
        let opts = match opts {
            Ok(o) => o,
            Err(e) => return Ok(Err(e)),
        };
        // The call awaits the ACL chain: hold the broker, not the (non-Sync) instance state.
        let broker = self.ctx.broker.clone();
        Ok(broker
            .subscribe_for_any(&tenant, &client_id, &topic, opts)
            .await
            .map_err(op_error))
    }

    async fn unsubscribe(
        &mut self,
        tenant: String,
        client_id: String,
        topic: String,
    ) -> wasmtime::Result<Result<bool, Error>> {
        if let Err(e) = self.check(Capability::RegistrySubscribe, Some(&tenant)) {
            return Ok(Err(e));
        }
        let b = self.ctx.broker.clone();
        Ok(b.unsubscribe_for_any(&tenant, &client_id, &topic)
            .await
            .map_err(op_error))
    }

    async fn expire(
        &mut self,
        tenant: String,
        seconds: u64,
    ) -> wasmtime::Result<Result<u32, Error>> {
        if let Err(e) = self.check(Capability::RegistryExpire, Some(&tenant)) {
            return Ok(Err(e));
        }
        let b = self.ctx.broker.clone();
        Ok(Ok(u32_sat(b.expire_all(&tenant, seconds).await)))
    }
}

impl broker::Host for PluginState {
    async fn publish(
        &mut self,
        tenant: String,
        topic: String,
        payload: Vec<u8>,
        q: u8,
        retain: bool,
    ) -> wasmtime::Result<Result<u32, Error>> {
        if let Err(e) = self.check(Capability::BrokerPublish, Some(&tenant)) {
            return Ok(Err(e));
        }
        let q = match qos(q) {
            Ok(q) => q,
            Err(e) => return Ok(Err(e)),
        };
        let b = self.ctx.broker.clone();
        Ok(
            b.publish_as_plugin(&tenant, &topic, Bytes::from(payload), q, retain)
                .await
                .map(u32_sat)
                .map_err(op_error),
        )
    }
}

impl log::Host for PluginState {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let name = &self.ctx.name;
        let kept = match level {
            log::Level::Trace => "trace",
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        // Info and above always; finer levels when the broker's filter shows them.
        if matches!(
            level,
            log::Level::Info | log::Level::Warn | log::Level::Error
        ) || level_enabled(level)
        {
            self.ctx.logs.push(kept, &message);
        }
        match level {
            log::Level::Trace => tracing::trace!(plugin = %name, "{message}"),
            log::Level::Debug => tracing::debug!(plugin = %name, "{message}"),
            log::Level::Info => tracing::info!(plugin = %name, "{message}"),
            log::Level::Warn => tracing::warn!(plugin = %name, "{message}"),
            log::Level::Error => tracing::error!(plugin = %name, "{message}"),
        }
        Ok(())
    }

    async fn enabled(&mut self, level: log::Level) -> wasmtime::Result<bool> {
        Ok(level_enabled(level))
    }
}

/// Whether `log` would write a line at `level`: asked of this module's target, the one
/// `log` writes under.
fn level_enabled(level: log::Level) -> bool {
    match level {
        log::Level::Trace => tracing::enabled!(tracing::Level::TRACE),
        log::Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
        log::Level::Info => tracing::enabled!(tracing::Level::INFO),
        log::Level::Warn => tracing::enabled!(tracing::Level::WARN),
        log::Level::Error => tracing::enabled!(tracing::Level::ERROR),
    }
}

impl clock::Host for PluginState {
    async fn now_ms(&mut self) -> wasmtime::Result<i64> {
        Ok(to_ms(SystemTime::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_bounded() {
        assert!(paging(1, 10_000).is_ok());
        assert!(matches!(paging(1, 10_001), Err(Error::InvalidArgument(_))));
        assert!(matches!(paging(0, 10), Err(Error::InvalidArgument(_))));
        assert!(matches!(paging(1, 0), Err(Error::InvalidArgument(_))));
    }

    /// `log.enabled` follows the broker's filter, including a directive for the plugin
    /// host's own target (where `log` writes).
    #[test]
    fn log_enabled_follows_the_filter() {
        use tracing_subscriber::EnvFilter;
        let with = |filter: &str, level| {
            let sub = tracing_subscriber::fmt()
                .with_env_filter(EnvFilter::new(filter))
                .finish();
            tracing::subscriber::with_default(sub, || level_enabled(level))
        };
        assert!(with("info", log::Level::Info));
        assert!(with("info", log::Level::Error));
        assert!(!with("info", log::Level::Debug));
        assert!(with("info,apiary::plugins=debug", log::Level::Debug));
        assert!(!with("info,apiary::plugins=debug", log::Level::Trace));
        assert!(!with("info,apiary::mqtt=trace", log::Level::Debug));
    }
}
