//! The `message` role as the core's interceptors: each message plugin is an
//! [`Interceptor`], its calls translated to and from the WIT records here, so the core's
//! publish path never sees a WIT type.

use std::sync::{Arc, Weak};

use super::bindings::exports::apiary::plugin::message as wit;
use super::manager::PluginManager;
use super::manifest::Role;
use super::runtime::LoadedPlugin;
use super::PluginError;
use crate::intercept::{Changes, Entry, Interceptor, Verdict};
use crate::message::Message;
use crate::BoxFuture;

/// One message plugin, resolved by name at every call, so a publish in flight across a
/// reload reaches the new version (its failure policy holds throughout). Weak: the
/// broker holds its interceptors, and the manager holds the broker.
struct PluginInterceptor {
    manager: Weak<PluginManager>,
    name: String,
    engine: wasmtime::Engine,
}

fn publish(msg: &Message) -> wit::Publish {
    let c = Changes::of(msg);
    wit::Publish {
        tenant: msg.tenant.to_string(),
        publisher: msg.publisher_client.as_deref().map(str::to_string),
        topic: c.topic,
        payload: c.payload,
        qos: c.qos,
        retain: c.retain,
        properties: wit::Properties {
            user_properties: c.user_properties,
            content_type: c.content_type,
            response_topic: c.response_topic,
            correlation_data: c.correlation_data,
            payload_utf8: c.payload_utf8,
            message_expiry: c.message_expiry,
        },
    }
}

fn changes(p: wit::Publish) -> Changes {
    Changes {
        topic: p.topic,
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        user_properties: p.properties.user_properties,
        content_type: p.properties.content_type,
        response_topic: p.properties.response_topic,
        correlation_data: p.properties.correlation_data,
        payload_utf8: p.properties.payload_utf8,
        message_expiry: p.properties.message_expiry,
    }
}

impl Interceptor for PluginInterceptor {
    fn name(&self) -> &str {
        &self.name
    }

    fn intercept<'a>(&'a self, msg: &'a Message) -> BoxFuture<'a, Result<Verdict, String>> {
        Box::pin(async move {
            // Removed (or no longer a message plugin) while the publish was on its way:
            // the operator took it out, so it no longer has a say.
            let plugin = self
                .manager
                .upgrade()
                .and_then(|m| m.get(&self.name))
                .filter(|p| p.serves(Role::Message));
            let Some(plugin) = plugin else {
                return Ok(Verdict::Pass);
            };
            let v = plugin
                .intercept(&self.engine, publish(msg))
                .await
                .map_err(|e| e.to_string())?;
            Ok(match v {
                wit::Verdict::Pass => Verdict::Pass,
                wit::Verdict::Rewrite(p) => Verdict::Rewrite(changes(p)),
                wit::Verdict::Drop(d) => Verdict::Drop {
                    code: d.reason_code,
                    why: d.message,
                },
            })
        })
    }
}

impl LoadedPlugin {
    /// Calls the message role's intercept.
    async fn intercept(
        &self,
        engine: &wasmtime::Engine,
        msg: wit::Publish,
    ) -> Result<wit::Verdict, PluginError> {
        if !self.serves(Role::Message) {
            return Err(PluginError::NoRole("message"));
        }
        self.call(Role::Message, engine, move |i| {
            Box::pin(async move {
                let m = i.message.as_ref().expect("role checked");
                m.call_intercept(&mut i.store, &msg).await
            })
        })
        .await
    }
}

impl PluginManager {
    /// The loaded message plugins as the core's interceptors, in priority order.
    pub(super) fn interceptors(&self, plugins: &[Arc<LoadedPlugin>]) -> Vec<Entry> {
        let engine = self.runtime().engine().clone();
        let mut v: Vec<_> = plugins
            .iter()
            .filter(|p| p.serves(Role::Message))
            .cloned()
            .collect();
        v.sort_by_key(|p| (p.ctx.manifest.priority, p.ctx.name.clone()));
        v.into_iter()
            .map(|plugin| {
                let m = &plugin.ctx.manifest;
                Entry {
                    filters: m.message.filters.clone(),
                    tenants: m.tenants.clone(),
                    on_failure: m.message.on_failure,
                    interceptor: Arc::new(PluginInterceptor {
                        manager: self.weak(),
                        name: plugin.ctx.name.clone(),
                        engine: engine.clone(),
                    }),
                }
            })
            .collect()
    }
}
