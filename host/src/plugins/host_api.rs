//! The host interfaces a plugin imports. Every call is checked against the plugin's
//! `capabilities` and `tenants`; a call outside them returns `permission-denied` to the
//! guest (the inner result), while the outer result is reserved for traps.

use std::num::NonZeroU32;
use std::time::SystemTime;

use bytes::Bytes;
use rmqtt_codec::types::QoS;

use super::bindings::apiary::plugin::{broker, clock, kv, log, registry, types};
use super::runtime::PluginState;
use crate::registry::{KickTarget, OpError, Page, Query, SessionSnapshot};
use crate::session::{SubOptions, Transport};
use crate::store::records::{system_time, to_ms};
use crate::store::{Space, Write};

type Error = types::Error;

/// Longest kv key a plugin may use.
const KV_MAX_KEY: usize = 1024;
/// Largest kv value a plugin may store.
const KV_MAX_VALUE: usize = 1 << 20;

impl PluginState {
    /// Whether the plugin may use `cap` on `tenant`: its toml must grant both and, once the
    /// call acts as an API key, the key must hold the matching right and tenant.
    pub(crate) fn check(&self, cap: &str, tenant: Option<&str>) -> Result<(), Error> {
        let m = &self.ctx.manifest;
        if !m.can(cap) {
            return Err(Error::PermissionDenied(format!(
                "plugin {} was not granted {cap}",
                self.ctx.name
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
            let right = match cap {
                "registry.read" => Some("connections:read"),
                "registry.kick" | "registry.subscribe" | "registry.expire" => {
                    Some("connections:write")
                }
                "broker.publish" => Some("publish"),
                _ => None,
            };
            if let Some(r) = right.filter(|r| !k.has(r)) {
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

    /// The store backend, if the plugin holds the `kv` capability.
    fn kv(&self) -> Result<&dyn crate::store::Backend, Error> {
        self.check("kv", None)?;
        self.ctx
            .broker
            .store
            .as_deref()
            .map(|s| s.backend())
            .ok_or_else(|| Error::Unavailable("no store".into()))
    }

    /// Checks a key (and value) against the kv limits.
    fn kv_limits(key: &str, value: Option<&[u8]>) -> Result<(), Error> {
        if key.len() > KV_MAX_KEY {
            return Err(Error::InvalidArgument(format!(
                "kv keys are at most {KV_MAX_KEY} bytes"
            )));
        }
        if value.is_some_and(|v| v.len() > KV_MAX_VALUE) {
            return Err(Error::InvalidArgument(format!(
                "kv values are at most {KV_MAX_VALUE} bytes"
            )));
        }
        Ok(())
    }

    fn kv_key(&self, key: &str) -> Vec<u8> {
        crate::store::records::session_key(&self.ctx.name, key)
    }
}

fn unavailable(e: crate::store::StoreError) -> Error {
    Error::Unavailable(e.to_string())
}

fn op_error(e: OpError) -> Error {
    match e {
        OpError::NotFound(m) => Error::NotFound(m),
        other => Error::InvalidArgument(other.to_string()),
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
        username: q.username,
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
        let run = || -> Result<registry::SubscriptionPage, Error> {
            let tenant = f.tenant.clone().unwrap_or_else(|| "*".into());
            self.check("registry.read", Some(&tenant))?;
            if limit == 0 || page == 0 {
                return Err(Error::InvalidArgument("page and limit start at 1".into()));
            }
            let q = crate::registry::SubQuery {
                tenant: f.tenant,
                client_id: f.client_id,
                topic: f.topic,
                qos: f.qos,
                share_group: f.share_group,
                match_topic: f.match_topic,
            };
            let r = self.ctx.broker.registry.subscriptions(
                &q,
                Page {
                    page: page as usize,
                    limit: limit as usize,
                },
            );
            Ok(registry::SubscriptionPage {
                items: r
                    .items
                    .into_iter()
                    .map(|e| registry::OwnedSubscription {
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
        let run = || -> Result<registry::Page, Error> {
            // Without a tenant the query spans tenants: only for plugins granted all of them.
            let tenant = q.tenant.clone().unwrap_or_else(|| "*".into());
            self.check("registry.read", Some(&tenant))?;
            if limit == 0 || page == 0 {
                return Err(Error::InvalidArgument("page and limit start at 1".into()));
            }
            let b = &self.ctx.broker;
            let r = b.registry.query(
                &to_query(q)?,
                Page {
                    page: page as usize,
                    limit: limit as usize,
                },
                &b.config,
            );
            Ok(registry::Page {
                items: r.items.into_iter().map(session).collect(),
                count: r.count as u64,
                has_next: r.has_next,
            })
        };
        Ok(run())
    }

    async fn get(
        &mut self,
        tenant: String,
        client_id: String,
    ) -> wasmtime::Result<Result<Option<types::Session>, Error>> {
        if let Err(e) = self.check("registry.read", Some(&tenant)) {
            return Ok(Err(e));
        }
        let b = &self.ctx.broker;
        Ok(Ok(b
            .registry
            .snapshot(&tenant, &client_id, &b.config)
            .map(session)))
    }

    async fn kick(
        &mut self,
        tenant: String,
        client_id: String,
        end_session: bool,
    ) -> wasmtime::Result<Result<u32, Error>> {
        if let Err(e) = self.check("registry.kick", Some(&tenant)) {
            return Ok(Err(e));
        }
        let n = self
            .ctx
            .broker
            .kick(&tenant, &KickTarget::ClientId(client_id), end_session);
        Ok(Ok(u32_sat(n)))
    }

    async fn kick_user(
        &mut self,
        tenant: String,
        user_id: String,
        transport_name: Option<String>,
        end_session: bool,
    ) -> wasmtime::Result<Result<u32, Error>> {
        let run = || -> Result<u32, Error> {
            self.check("registry.kick", Some(&tenant))?;
            let transport = transport_name.as_deref().map(transport).transpose()?;
            Ok(u32_sat(self.ctx.broker.kick(
                &tenant,
                &KickTarget::UserId { user_id, transport },
                end_session,
            )))
        };
        Ok(run())
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
        let run = || -> Result<bool, Error> {
            self.check("registry.subscribe", Some(&tenant))?;
            if rh > 2 {
                return Err(Error::InvalidArgument("rh must be 0, 1 or 2".into()));
            }
            let opts = SubOptions {
                qos: qos(q)?,
                no_local: nl,
                retain_as_published: rap,
                retain_handling: rh,
                sub_id: None::<NonZeroU32>,
            };
            self.ctx
                .broker
                .subscribe_for(&tenant, &client_id, &topic, opts)
                .map_err(op_error)
        };
        Ok(run())
    }

    async fn unsubscribe(
        &mut self,
        tenant: String,
        client_id: String,
        topic: String,
    ) -> wasmtime::Result<Result<bool, Error>> {
        if let Err(e) = self.check("registry.subscribe", Some(&tenant)) {
            return Ok(Err(e));
        }
        Ok(self
            .ctx
            .broker
            .unsubscribe_for(&tenant, &client_id, &topic)
            .map_err(op_error))
    }

    async fn expire(
        &mut self,
        tenant: String,
        seconds: u64,
    ) -> wasmtime::Result<Result<u32, Error>> {
        if let Err(e) = self.check("registry.expire", Some(&tenant)) {
            return Ok(Err(e));
        }
        Ok(Ok(u32_sat(
            self.ctx.broker.expire_inactive(&tenant, seconds),
        )))
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
        let run = || -> Result<u32, Error> {
            self.check("broker.publish", Some(&tenant))?;
            let n = self
                .ctx
                .broker
                .publish_as_broker(&tenant, &topic, Bytes::from(payload), qos(q)?, retain)
                .map_err(op_error)?;
            Ok(u32_sat(n))
        };
        Ok(run())
    }
}

impl kv::Host for PluginState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        Ok(Self::kv_limits(&key, None)
            .and_then(|()| self.kv())
            .and_then(|b| b.get(Space::Kv, &self.kv_key(&key)).map_err(unavailable)))
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), Error>> {
        Ok(Self::kv_limits(&key, Some(&value))
            .and_then(|()| self.kv())
            .and_then(|b| {
                b.write(vec![Write::Put(Space::Kv, self.kv_key(&key), value)])
                    .map_err(unavailable)
            }))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, Error>> {
        Ok(Self::kv_limits(&key, None)
            .and_then(|()| self.kv())
            .and_then(|b| {
                let k = self.kv_key(&key);
                let existed = b.get(Space::Kv, &k).map_err(unavailable)?.is_some();
                b.write(vec![Write::Delete(Space::Kv, k)])
                    .map_err(unavailable)?;
                Ok(existed)
            }))
    }

    async fn list_keys(
        &mut self,
        prefix: String,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<String>, Error>> {
        Ok(self.kv().and_then(|b| {
            // Keys are length-prefixed, so scan the plugin's own space and filter by prefix.
            let base = self.kv_key("");
            let mut keys = Vec::new();
            b.scan_prefix(Space::Kv, &base[..base.len() - 4], &mut |k, _| {
                if let Ok((_, key, _)) = crate::store::records::split_key(k) {
                    if key.starts_with(&prefix) {
                        keys.push(key.to_string());
                    }
                }
                true
            })
            .map_err(unavailable)?;
            keys.sort();
            keys.truncate(limit as usize);
            Ok(keys)
        }))
    }
}

impl log::Host for PluginState {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let name = &self.ctx.name;
        match level {
            log::Level::Trace => tracing::trace!(plugin = %name, "{message}"),
            log::Level::Debug => tracing::debug!(plugin = %name, "{message}"),
            log::Level::Info => tracing::info!(plugin = %name, "{message}"),
            log::Level::Warn => tracing::warn!(plugin = %name, "{message}"),
            log::Level::Error => tracing::error!(plugin = %name, "{message}"),
        }
        Ok(())
    }
}

impl clock::Host for PluginState {
    async fn now_ms(&mut self) -> wasmtime::Result<i64> {
        Ok(to_ms(SystemTime::now()))
    }
}
