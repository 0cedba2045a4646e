//! Delivers registry events to plugins serving the `events` role, in batches. The pump
//! subscribes to the registry (publishes included) only while such a plugin is loaded, so
//! the publish path pays nothing otherwise.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use super::bindings::exports::apiary::plugin::events as wit;
use super::manager::PluginManager;
use super::manifest::Capability;
use crate::registry::Event;

/// Largest batch handed to one `on-events` call.
const BATCH: usize = 256;

fn convert(e: Event) -> wit::Event {
    match e {
        Event::Connected {
            tenant,
            client_id,
            username,
            peer,
            proto_ver,
        } => wit::Event::Connected(wit::ConnectedEvent {
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            username: username.map(|u| u.to_string()),
            peer,
            proto_ver,
        }),
        Event::Disconnected {
            tenant,
            client_id,
            reason,
        } => wit::Event::Disconnected(wit::SessionEvent {
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            reason,
        }),
        Event::Subscribed {
            tenant,
            client_id,
            filter,
            qos,
        } => wit::Event::Subscribed(wit::SubscriptionEvent {
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            topic: filter,
            qos,
        }),
        Event::Unsubscribed {
            tenant,
            client_id,
            filter,
        } => wit::Event::Unsubscribed(wit::SubscriptionEvent {
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            topic: filter,
            qos: 0,
        }),
        Event::MessagePublished {
            tenant,
            topic,
            qos,
            retain,
            payload,
            ..
        } => wit::Event::MessagePublished(wit::MessageEvent {
            tenant: tenant.to_string(),
            topic,
            qos,
            retain,
            payload: payload.to_vec(),
        }),
        Event::MessageDropped {
            tenant,
            client_id,
            topic,
            reason,
        } => wit::Event::MessageDropped(wit::DropEvent {
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            topic,
            reason: reason.to_string(),
        }),
        Event::SessionEnded {
            tenant,
            client_id,
            reason,
        } => wit::Event::SessionEnded(wit::SessionEvent {
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            reason: reason.to_string(),
        }),
    }
}

fn tenant_of(e: &wit::Event) -> &str {
    match e {
        wit::Event::Connected(c) => &c.tenant,
        wit::Event::Disconnected(s) | wit::Event::SessionEnded(s) => &s.tenant,
        wit::Event::Subscribed(s) | wit::Event::Unsubscribed(s) => &s.tenant,
        wit::Event::MessagePublished(m) => &m.tenant,
        wit::Event::MessageDropped(d) => &d.tenant,
    }
}

impl PluginManager {
    /// Runs until shutdown: every events plugin with `[events] tick_ms` gets
    /// `on-events([])` that often, each on a task of its own and one at a time (a tick
    /// still running when the next is due skips it), apart from the event pump so a
    /// plugin's slow tick never delays events.
    pub async fn tick_events(self: Arc<Self>) {
        let mut every = tokio::time::interval(Duration::from_millis(50));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last: std::collections::HashMap<String, tokio::time::Instant> = Default::default();
        let busy: Arc<parking_lot::Mutex<std::collections::HashSet<String>>> = Default::default();
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = self.broker().stopped() => return,
            }
            let now = tokio::time::Instant::now();
            let plugins = self.events_plugins();
            // A plugin removed since is forgotten (its name may come back as another).
            last.retain(|name, _| plugins.iter().any(|p| p.ctx.name == *name));
            for p in plugins {
                let ms = p.ctx.manifest.events.tick_ms;
                let name = p.ctx.name.clone();
                let due = last
                    .get(&name)
                    .is_none_or(|t| now.duration_since(*t) >= Duration::from_millis(ms));
                if ms == 0 || !due || !busy.lock().insert(name.clone()) {
                    continue;
                }
                last.insert(name.clone(), now);
                let (engine, busy) = (self.runtime().engine().clone(), busy.clone());
                tokio::spawn(async move {
                    let _ = p.on_events(&engine, Vec::new()).await;
                    busy.lock().remove(&name);
                });
            }
        }
    }

    /// Whether a loaded events plugin holds `events.messages` (publishes are reported).
    pub fn events_want_messages(&self) -> bool {
        self.events_plugins()
            .iter()
            .any(|p| p.ctx.manifest.can(Capability::EventsMessages))
    }

    /// Runs until shutdown: while any events plugin is loaded, batches registry events
    /// (up to 256, or what arrives within 20 ms) and hands each batch to every one of
    /// them. A plugin that cannot keep up loses events (counted in the log), never
    /// stalls the broker.
    /// `initial` is a subscription taken before the listeners opened, so plugins loaded at
    /// startup see the very first events.
    pub async fn pump_events(self: Arc<Self>, mut initial: Option<crate::registry::EventStream>) {
        loop {
            while initial.is_none() && self.events_plugins().is_empty() {
                tokio::select! {
                    _ = self.changed.notified() => {}
                    _ = self.broker().stopped() => return,
                }
            }
            let with_messages = self.events_want_messages();
            let mut stream = match initial.take() {
                Some(s) => s,
                None => self.broker().registry.subscribe_events(with_messages),
            };
            loop {
                let first = tokio::select! {
                    r = stream.rx.recv() => r,
                    _ = self.changed.notified() => {
                        // Resubscribe when the set stops needing events, or starts or
                        // stops needing messages (which cost the publish path).
                        if self.events_plugins().is_empty()
                            || self.events_want_messages() != stream.with_messages()
                        {
                            break;
                        }
                        continue;
                    }
                    _ = self.broker().stopped() => return,
                };
                let mut batch = Vec::new();
                match first {
                    Ok(e) => batch.push(convert(e)),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(lost = n, "events plugins fell behind; events dropped");
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                }
                let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
                while batch.len() < BATCH {
                    match tokio::time::timeout_at(deadline, stream.rx.recv()).await {
                        Ok(Ok(e)) => batch.push(convert(e)),
                        Ok(Err(RecvError::Lagged(n))) => {
                            tracing::warn!(lost = n, "events plugins fell behind; events dropped")
                        }
                        Ok(Err(RecvError::Closed)) | Err(_) => break,
                    }
                }
                for p in self.events_plugins() {
                    // Only the tenants its toml grants, and messages only with
                    // `events.messages`.
                    let m = &p.ctx.manifest;
                    let messages = m.can(Capability::EventsMessages);
                    let mine: Vec<wit::Event> = batch
                        .iter()
                        .filter(|e| {
                            m.may_touch(tenant_of(e))
                                && (messages || !matches!(e, wit::Event::MessagePublished(_)))
                        })
                        .cloned()
                        .collect();
                    if !mine.is_empty() {
                        // Failures are counted and logged by the call itself.
                        let _ = p.on_events(self.runtime().engine(), mine).await;
                    }
                }
            }
        }
    }
}
