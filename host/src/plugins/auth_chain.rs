//! The plugin manager as the core's auth chain: each auth plugin is an
//! [`Authenticator`], its calls translated to and from the WIT `auth` role here, so the
//! core's auth and ACL code never sees a WIT type.

use std::sync::Arc;

use wasmtime::Engine;

use super::bindings::exports::apiary::plugin::auth as wit;
use super::manager::PluginManager;
use super::manifest::Role;
use super::runtime::LoadedPlugin;
use crate::acl::{Action, Ask};
use crate::auth::{
    AclVerdict, AuthChain, Authenticator, Claim, ConnectAttempt, Identity, StepVerdict, Verdict,
};
use crate::BoxFuture;

/// One auth plugin version, with the engine its calls run on.
struct PluginAuth {
    plugin: Arc<LoadedPlugin>,
    engine: Engine,
}

fn request(c: &ConnectAttempt) -> wit::ConnectRequest {
    wit::ConnectRequest {
        client_id: c.client_id.clone(),
        username: c.username.clone(),
        password: c.password.clone(),
        peer_ip: c.peer.ip().to_string(),
        peer_port: c.peer.port(),
        proto_name: c.proto_name.clone(),
        proto_ver: c.proto_ver,
        listener: c.listener.clone(),
        cert_subject: c.cert_subject.clone(),
    }
}

fn claim(id: wit::Identity) -> Claim {
    Claim {
        tenant: id.tenant,
        user_id: id.user_id,
        username: id.username,
        superuser: id.superuser,
    }
}

impl Authenticator for PluginAuth {
    fn name(&self) -> &str {
        &self.plugin.ctx.name
    }

    fn may_grant(&self, tenant: &str) -> bool {
        self.plugin.ctx.manifest.may_touch(tenant)
    }

    fn authenticate<'a>(&'a self, c: &'a ConnectAttempt) -> BoxFuture<'a, Result<Verdict, String>> {
        Box::pin(async move {
            let d = self
                .plugin
                .authenticate(&self.engine, request(c))
                .await
                .map_err(|e| e.to_string())?;
            Ok(match d {
                wit::ConnectDecision::Allow(id) => Verdict::Allow(claim(id)),
                wit::ConnectDecision::Deny(d) => Verdict::Deny(d.reason_code, d.message),
                wit::ConnectDecision::Ignore => Verdict::Ignore,
            })
        })
    }

    fn step<'a>(
        &'a self,
        c: &'a ConnectAttempt,
        method: &'a str,
        data: Option<Vec<u8>>,
        state: Option<Vec<u8>>,
        reauth: bool,
    ) -> BoxFuture<'a, Result<StepVerdict, String>> {
        Box::pin(async move {
            let step = wit::AuthStep {
                connect: request(c),
                method: method.to_string(),
                data,
                state,
                reauth,
            };
            let d = self
                .plugin
                .authenticate_step(&self.engine, step)
                .await
                .map_err(|e| e.to_string())?;
            Ok(match d {
                wit::AuthStepDecision::Success(s) => {
                    StepVerdict::Success(claim(s.identity), s.data)
                }
                wit::AuthStepDecision::Continue(c) => StepVerdict::Continue(c.data, c.state),
                wit::AuthStepDecision::Deny(d) => StepVerdict::Deny(d.reason_code, d.message),
                wit::AuthStepDecision::Ignore => StepVerdict::Ignore,
            })
        })
    }

    fn authorize<'a>(
        &'a self,
        who: &'a Identity,
        client_id: &'a str,
        ask: Ask<'a>,
    ) -> BoxFuture<'a, Result<AclVerdict, String>> {
        Box::pin(async move {
            let req = wit::AuthorizeRequest {
                tenant: who.tenant.to_string(),
                client_id: client_id.to_string(),
                username: who.username.as_deref().map(str::to_string),
                user_id: who.user_id.as_deref().map(str::to_string),
                action: match ask.action {
                    Action::Publish => wit::Action::Publish,
                    Action::Subscribe => wit::Action::Subscribe,
                },
                topic: ask.topic.to_string(),
                qos: ask.qos,
                retain: ask.retain,
            };
            let d = self
                .plugin
                .authorize(&self.engine, req)
                .await
                .map_err(|e| e.to_string())?;
            Ok(match d {
                wit::AuthorizeDecision::Allow => AclVerdict::Allow,
                wit::AuthorizeDecision::Deny(rule) => AclVerdict::Deny(rule),
                wit::AuthorizeDecision::Ignore => AclVerdict::Ignore,
            })
        })
    }
}

impl AuthChain for PluginManager {
    fn chain(&self) -> Vec<Arc<dyn Authenticator>> {
        let engine = self.runtime().engine().clone();
        self.auth_chain()
            .into_iter()
            .map(|plugin| {
                Arc::new(PluginAuth {
                    plugin,
                    engine: engine.clone(),
                }) as Arc<dyn Authenticator>
            })
            .collect()
    }

    fn get(&self, name: &str) -> Option<Arc<dyn Authenticator>> {
        let plugin = PluginManager::get(self, name).filter(|p| p.serves(Role::Auth))?;
        Some(Arc::new(PluginAuth {
            plugin,
            engine: self.runtime().engine().clone(),
        }))
    }
}
