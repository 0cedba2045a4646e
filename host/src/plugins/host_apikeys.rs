//! The `apikeys` host interface: admin API plugins check credentials against the broker's
//! one API key store without ever seeing a secret. A successful `verify` or `verify-mac`
//! makes the rest of the call act as that key (see `PluginState::check`).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::bindings::apiary::plugin::apikeys;
use super::manifest::Capability;
use super::runtime::PluginState;
use crate::apikeys::{ApiKey, MacAlgorithm};

type Error = super::bindings::apiary::plugin::types::Error;

fn info(k: &ApiKey) -> apikeys::KeyInfo {
    apikeys::KeyInfo {
        key: k.key.clone(),
        tenant: k.tenant.clone(),
        rights: k.rights.iter().map(|r| r.as_str().to_string()).collect(),
    }
}

fn alg(a: apikeys::MacAlgorithm) -> MacAlgorithm {
    match a {
        apikeys::MacAlgorithm::HmacSha1 => MacAlgorithm::HmacSha1,
        apikeys::MacAlgorithm::HmacSha256 => MacAlgorithm::HmacSha256,
    }
}

impl PluginState {
    /// Refuses a check from an HTTP client whose address failed too many logins.
    fn throttled(&self) -> Result<(), Error> {
        let Some(ip) = self.peer else { return Ok(()) };
        let b = &self.ctx.broker;
        if b.login_throttle.blocked(ip, Instant::now()).is_some() {
            b.metrics.api_auth_throttled.fetch_add(1, Relaxed);
            return Err(Error::Unavailable(
                "too many failed logins from this address; try again later".into(),
            ));
        }
        Ok(())
    }

    /// Whether this call may check a credential: the capability, and the caller's address
    /// not throttled.
    fn may_check_credentials(&self) -> Result<(), Error> {
        self.check(Capability::ApiKeys, None)
            .and_then(|()| self.throttled())
    }

    /// Records a verified key as the one this call acts as, or a failed login.
    fn act_as(&mut self, k: Option<ApiKey>) -> Option<apikeys::KeyInfo> {
        let i = k.as_ref().map(info);
        let b = &self.ctx.broker;
        if let (None, Some(ip)) = (&k, self.peer) {
            b.login_throttle.failed(ip, Instant::now());
        }
        if k.is_some() {
            self.acting = k;
        } else {
            b.metrics.api_auth_failed.fetch_add(1, Relaxed);
        }
        i
    }
}

impl apikeys::Host for PluginState {
    async fn verify(
        &mut self,
        key: String,
        secret: String,
    ) -> wasmtime::Result<Result<Option<apikeys::KeyInfo>, Error>> {
        if let Err(e) = self.may_check_credentials() {
            return Ok(Err(e));
        }
        let k = self.ctx.broker.api_keys.verify(&key, &secret);
        Ok(Ok(self.act_as(k)))
    }

    async fn verify_mac(
        &mut self,
        key: String,
        algorithm: apikeys::MacAlgorithm,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> wasmtime::Result<Result<Option<apikeys::KeyInfo>, Error>> {
        if let Err(e) = self.may_check_credentials() {
            return Ok(Err(e));
        }
        let k = self
            .ctx
            .broker
            .api_keys
            .verify_mac(&key, alg(algorithm), &message, &signature);
        Ok(Ok(self.act_as(k)))
    }

    async fn verify_secret(
        &mut self,
        secret: String,
    ) -> wasmtime::Result<Result<Option<apikeys::KeyInfo>, Error>> {
        if let Err(e) = self.may_check_credentials() {
            return Ok(Err(e));
        }
        let k = self.ctx.broker.api_keys.verify_secret(&secret);
        Ok(Ok(self.act_as(k)))
    }

    async fn lookup(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<apikeys::KeyInfo>, Error>> {
        Ok(self
            .check(Capability::ApiKeys, None)
            .map(|()| self.ctx.broker.api_keys.lookup(&key).as_ref().map(info)))
    }

    async fn sign(
        &mut self,
        key: String,
        algorithm: apikeys::MacAlgorithm,
        message: Vec<u8>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        // Only with the key this call already acts as: a MAC under any key's secret would
        // let a plugin forge that key's signatures (and act as it through verify-mac).
        Ok(self.check(Capability::ApiKeys, None).map(|()| {
            self.acting
                .as_ref()
                .filter(|k| k.key == key)
                .and_then(|k| k.mac(alg(algorithm), &message))
        }))
    }
}
