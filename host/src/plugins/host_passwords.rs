//! The `passwords` host interface: a plugin hands a PHC hash and a password to the
//! host's native pool (`crate::passwords`). A check waits for a worker at most half the
//! plugin's call time, so the call itself still finishes in time and answers "busy".

use std::time::Duration;

use super::bindings::apiary::plugin::{passwords, types};
use super::manifest::Capability;
use super::runtime::PluginState;
use crate::passwords::VerifyError;

impl passwords::Host for PluginState {
    async fn verify(
        &mut self,
        hash: String,
        password: Vec<u8>,
    ) -> wasmtime::Result<Result<bool, types::Error>> {
        if let Err(e) = self.check(Capability::Passwords, None) {
            return Ok(Err(e));
        }
        let wait = Duration::from_millis(self.ctx.manifest.call_timeout_ms / 2);
        Ok(
            match self.ctx.broker.passwords.verify(hash, password, wait).await {
                Ok(ok) => Ok(ok),
                Err(VerifyError::Busy) => Err(types::Error::Unavailable(
                    "password checks are saturated; try again".into(),
                )),
                Err(e @ VerifyError::Malformed(_)) => {
                    Err(types::Error::InvalidArgument(e.to_string()))
                }
            },
        )
    }
}
