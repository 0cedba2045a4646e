//! Admin operations over the registry: kick, subscribe/unsubscribe on behalf of a session,
//! publish as the broker, and expire a tenant's inactive sessions. Every operation is
//! scoped to one tenant and never sees another's sessions.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use bytestring::ByteString;
use rmqtt_codec::types::QoS;

use super::{Broker, SubscribeError};
use crate::message::Message;
use crate::registry::{KickTarget, OpError};
use crate::session::{Control, Session, SubOptions};
use crate::topic;

impl Broker {
    /// Kicks matching sessions. Online ones are disconnected (their will is published, as
    /// for any connection the server closes); with `end_session` the session is discarded
    /// too, as EMQX's DELETE /clients/{id} does. Returns how many sessions were affected.
    pub fn kick(&self, tenant: &str, target: &KickTarget, end_session: bool) -> usize {
        let sessions: Vec<_> = match target {
            KickTarget::ClientId(id) => self.registry.get(tenant, id).into_iter().collect(),
            KickTarget::UserId { user_id, only } => self
                .registry
                .sessions_of(Some(tenant))
                .into_iter()
                .filter(|s| {
                    let i = s.info.read();
                    i.user_id.as_deref() == Some(user_id.as_str())
                        && only.is_none_or(|v| v.matches(&i))
                })
                .collect(),
        };
        // Affected: an online session told to go, or an offline one ended; an offline
        // session kept as it is does not count.
        let mut affected = 0;
        for s in &sessions {
            if s.control(Control::Kick { end_session }) {
                affected += 1;
            } else if end_session {
                self.discard(s, "kicked");
                affected += 1;
            }
        }
        affected
    }

    /// Subscribes a session on its behalf, if its ACL allows the client that filter (as
    /// the session's user; superusers skip it). Online: it starts receiving at once, and
    /// retained messages follow the retain handling. Offline persistent: only recorded.
    pub async fn subscribe_for(
        &self,
        tenant: &str,
        client_id: &str,
        filter: &str,
        opts: SubOptions,
    ) -> Result<bool, OpError> {
        let s = self
            .registry
            .get(tenant, client_id)
            .ok_or_else(|| OpError::NotFound(client_id.to_string()))?;
        self.subscribe_session(&s, filter, opts).await
    }

    /// As [`Broker::subscribe_for`], for a session in hand (a stream connection's own).
    pub async fn subscribe_session(
        &self,
        s: &Arc<Session>,
        filter: &str,
        opts: SubOptions,
    ) -> Result<bool, OpError> {
        let client_id = &*s.client_id;
        let parsed = topic::parse_filter(filter, self.config().mqtt.max_topic_levels)
            .map_err(SubscribeError::from)?;
        let who = {
            let i = s.info.read();
            crate::auth::Identity {
                tenant: s.tenant.clone(),
                username: i.username.clone(),
                user_id: i.user_id.clone(),
                superuser: i.superuser,
            }
        };
        if !who.superuser {
            let ask = crate::acl::Ask {
                action: crate::acl::Action::Subscribe,
                topic: parsed.filter,
                qos: opts.qos.value(),
                retain: false,
            };
            let d = crate::acl::decide(self, &who, client_id, ask).await;
            if !d.allowed {
                return Err(OpError::Acl(d.why));
            }
        }
        let new = match self.subscribe(s, filter, opts) {
            Err(SubscribeError::SessionEnded) => {
                return Err(OpError::NotFound(client_id.to_string()))
            }
            r => r?,
        };
        if s.is_online() {
            self.send_retained(s, filter, opts, new);
        }
        Ok(new)
    }

    /// Unsubscribes a session on its behalf. Returns whether the subscription existed.
    pub fn unsubscribe_for(
        &self,
        tenant: &str,
        client_id: &str,
        filter: &str,
    ) -> Result<bool, OpError> {
        let s = self
            .registry
            .get(tenant, client_id)
            .ok_or_else(|| OpError::NotFound(client_id.to_string()))?;
        Ok(self.unsubscribe(&s, filter))
    }

    /// Publishes as the broker, past the message interceptors (its own `$SYS` figures).
    /// Returns the number of sessions it was queued for.
    pub fn publish_as_broker(
        &self,
        tenant: &str,
        topic_name: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    ) -> Result<usize, OpError> {
        let msg = self.broker_message(tenant, topic_name, payload, qos, retain)?;
        Ok(self.publish(msg)?)
    }

    /// Publishes as the broker for a plugin or an admin API, through the message
    /// interceptors as any publish.
    pub async fn publish_as_plugin(
        &self,
        tenant: &str,
        topic_name: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    ) -> Result<usize, OpError> {
        let msg = self.broker_message(tenant, topic_name, payload, qos, retain)?;
        Ok(self.publish_intercepted(msg).await?)
    }

    fn broker_message(
        &self,
        tenant: &str,
        topic_name: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    ) -> Result<Message, OpError> {
        topic::validate_name(topic_name, self.config().mqtt.max_topic_levels)?;
        Ok(Message::new(
            Arc::from(tenant),
            ByteString::from(topic_name),
            payload,
            qos,
            retain,
        ))
    }

    /// Removes the retained message of `topic_name` (memory and store) without routing
    /// anything, as EMQX's retainer API does. False if there was none.
    pub fn delete_retained(&self, tenant: &str, topic_name: &str) -> Result<bool, OpError> {
        topic::validate_name(topic_name, self.config().mqtt.max_topic_levels)?;
        if self.retained.matching(tenant, topic_name).is_empty() {
            return Ok(false);
        }
        let clear = Message::new(
            Arc::from(tenant),
            ByteString::from(topic_name),
            Bytes::new(),
            QoS::AtMostOnce,
            true,
        );
        // Clearing is never refused by limits; the other nodes clear it too.
        let clear = Arc::new(clear);
        let config = self.config();
        let set = || {
            self.retained
                .set(clear.clone(), &config.retained, |m| self.store_retained(m))
        };
        let _ = match self.cluster() {
            Some(c) => c.retain(&clear, set),
            None => set(),
        };
        Ok(true)
    }

    /// Ends the tenant's persistent sessions inactive for more than `secs` seconds
    /// (disconnected that long ago), with their queues and subscriptions. `secs == 0`
    /// ends every persistent session of the tenant, online ones included, whose
    /// connections are closed. Clean sessions are never touched. Returns how many ended.
    pub fn expire_inactive(&self, tenant: &str, secs: u64) -> usize {
        let cutoff = SystemTime::now()
            .checked_sub(Duration::from_secs(secs))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut n = 0;
        for s in self.registry.sessions_of(Some(tenant)) {
            if !s.is_persistent() {
                continue;
            }
            if secs == 0 {
                if !s.control(Control::Kick { end_session: true }) {
                    self.discard(&s, "expired");
                }
                n += 1;
                continue;
            }
            let inactive = {
                let i = s.info.read();
                !i.connected && i.disconnected_at.is_some_and(|t| t <= cutoff)
            };
            if inactive {
                self.discard(&s, "expired");
                n += 1;
            }
        }
        n
    }
}
