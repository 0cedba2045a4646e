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
use wasmtime::component::{ComponentType, Lower};

/// One message plugin, resolved by name at every call, so a publish in flight across a
/// reload reaches the new version (its failure policy holds throughout). Weak: the
/// broker holds its interceptors, and the manager holds the broker.
struct PluginInterceptor {
    manager: Weak<PluginManager>,
    name: String,
    engine: wasmtime::Engine,
}

/// A publish as the guest receives it, lowered straight from the broker's message (no
/// copy on the host side: a copy into the guest is all a publish costs).
#[derive(ComponentType, Lower)]
#[component(record)]
struct PublishView<'a> {
    topic: &'a str,
    payload: &'a [u8],
    qos: u8,
    retain: bool,
    properties: Option<PropertiesView<'a>>,
}

/// `properties`, borrowed.
#[derive(ComponentType, Lower)]
#[component(record)]
struct PropertiesView<'a> {
    #[component(name = "user-properties")]
    user_properties: Vec<(&'a str, &'a str)>,
    #[component(name = "content-type")]
    content_type: Option<&'a str>,
    #[component(name = "response-topic")]
    response_topic: Option<&'a str>,
    #[component(name = "correlation-data")]
    correlation_data: Option<&'a [u8]>,
    #[component(name = "payload-utf8")]
    payload_utf8: bool,
    #[component(name = "message-expiry")]
    message_expiry: Option<u32>,
}

/// `source`, borrowed.
#[derive(ComponentType, Lower)]
#[component(record)]
struct SourceView<'a> {
    tenant: &'a str,
    publisher: Option<&'a str>,
}

fn view(msg: &Message) -> PublishView<'_> {
    PublishView {
        topic: &msg.topic,
        payload: &msg.payload,
        qos: msg.qos.value(),
        retain: msg.retain,
        // None for the usual message: one byte to lower rather than a record.
        properties: (msg.props.is_some() || msg.expires_at.is_some()).then(|| properties(msg)),
    }
}

fn properties(msg: &Message) -> PropertiesView<'_> {
    let p = msg.props.as_deref();
    PropertiesView {
        user_properties: p.map_or_else(Vec::new, |p| {
            (p.user_properties.iter())
                .map(|(k, v)| (&**k, &**v))
                .collect()
        }),
        content_type: p.and_then(|p| p.content_type.as_deref()),
        response_topic: p.and_then(|p| p.response_topic.as_deref()),
        correlation_data: p.and_then(|p| p.correlation_data.as_deref()),
        payload_utf8: p.is_some_and(|p| p.is_utf8_payload),
        message_expiry: msg
            .remaining_expiry(std::time::Instant::now())
            .map(std::num::NonZeroU32::get),
    }
}

fn changes(p: wit::Publish) -> Changes {
    let c = Changes {
        topic: p.topic,
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        ..Changes::default()
    };
    let Some(pr) = p.properties else {
        return c;
    };
    Changes {
        user_properties: pr.user_properties,
        content_type: pr.content_type,
        response_topic: pr.response_topic,
        correlation_data: pr.correlation_data,
        payload_utf8: pr.payload_utf8,
        message_expiry: pr.message_expiry,
        ..c
    }
}

fn verdict(v: wit::Verdict) -> Verdict {
    match v {
        wit::Verdict::Pass => Verdict::Pass,
        wit::Verdict::Rewrite(p) => Verdict::Rewrite(changes(p)),
        wit::Verdict::Drop(d) => Verdict::Drop {
            code: d.reason_code,
            why: d.message,
        },
    }
}

impl Interceptor for PluginInterceptor {
    fn name(&self) -> &str {
        &self.name
    }

    fn intercept<'a>(
        &'a self,
        msgs: &'a [&'a Message],
    ) -> BoxFuture<'a, Result<Vec<Verdict>, String>> {
        Box::pin(async move {
            // Removed (or no longer a message plugin) while the publish was on its way:
            // the operator took it out, so it no longer has a say.
            let plugin = self
                .manager
                .upgrade()
                .and_then(|m| m.get(&self.name))
                .filter(|p| p.serves(Role::Message));
            let Some(plugin) = plugin else {
                return Ok(vec![Verdict::Pass; msgs.len()]);
            };
            let mut out = Vec::with_capacity(msgs.len());
            // One call per run of publishes of one source (a connection's batch is one).
            let same = |a: &&Message, b: &&Message| {
                a.tenant == b.tenant && a.publisher_client == b.publisher_client
            };
            for run in msgs.chunk_by(same) {
                // Clones share the topic and payload: the guest gets the only copy.
                let owned = run.iter().map(|m| (*m).clone()).collect();
                let v = plugin
                    .intercept(&self.engine, owned)
                    .await
                    .map_err(|e| e.to_string())?;
                if v.len() != run.len() {
                    let n = run.len();
                    return Err(format!("returned {} verdicts for {n} publishes", v.len()));
                }
                out.extend(v.into_iter().map(verdict));
            }
            Ok(out)
        })
    }
}

impl LoadedPlugin {
    /// Calls the message role's intercept with `batch`, publishes of one source.
    async fn intercept(
        &self,
        engine: &wasmtime::Engine,
        batch: Vec<Message>,
    ) -> Result<Vec<wit::Verdict>, PluginError> {
        if !self.serves(Role::Message) {
            return Err(PluginError::NoRole("message"));
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.call(Role::Message, engine, move |i| {
            Box::pin(async move {
                let m = i.message.as_ref().expect("role checked");
                // The export over borrowed views rather than the generated owned records
                // (type-checked here, once per batch).
                let typed = m.func_intercept();
                let f = typed
                    .func()
                    .typed::<(SourceView<'_>, &[PublishView<'_>]), (Vec<wit::Verdict>,)>(
                        &i.store,
                    )?;
                let source = SourceView {
                    tenant: &batch[0].tenant,
                    publisher: batch[0].publisher_client.as_deref(),
                };
                let views: Vec<_> = batch.iter().map(view).collect();
                let (v,) = f.call_async(&mut i.store, (source, &views)).await?;
                Ok(v)
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
