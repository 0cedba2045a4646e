//! The `streams` host interface: what a stream plugin may do to its own connections
//! (send, close, subscribe, describe). A connection id of another plugin, or of one that
//! closed, is `not-found`; subscriptions go through the session's ACL as an MQTT
//! SUBSCRIBE does.

use std::sync::Arc;

use rmqtt_codec::types::QoS;

use super::bindings::apiary::plugin::{streams, types};
use super::runtime::PluginState;
use super::stream_calls::from_wit_frame;
use crate::registry::OpError;
use crate::session::SubOptions;
use crate::stream::ConnError;

type Error = types::Error;

fn conn_error(e: ConnError) -> Error {
    match e {
        ConnError::NotFound(_) => Error::NotFound(e.to_string()),
        ConnError::QueueFull(_) => Error::QuotaExceeded(e.to_string()),
    }
}

impl PluginState {
    fn conn_session(&self, conn: u64) -> Result<Arc<crate::session::Session>, Error> {
        self.ctx
            .broker
            .streams
            .session(&self.ctx.name, conn)
            .map_err(conn_error)
    }
}

impl streams::Host for PluginState {
    async fn send(
        &mut self,
        conn: u64,
        frames: Vec<types::Frame>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let frames = frames.into_iter().map(from_wit_frame).collect();
        Ok(self
            .ctx
            .broker
            .streams
            .send(&self.ctx.name, conn, frames)
            .map_err(conn_error))
    }

    async fn close(&mut self, conn: u64, reason: String) -> wasmtime::Result<Result<(), Error>> {
        Ok(self
            .ctx
            .broker
            .streams
            .close(&self.ctx.name, conn, reason)
            .map_err(conn_error))
    }

    async fn subscribe(
        &mut self,
        conn: u64,
        filter: String,
        qos: u8,
    ) -> wasmtime::Result<Result<bool, Error>> {
        let s = match self.conn_session(conn) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        let Ok(qos) = QoS::try_from(qos) else {
            return Ok(Err(Error::InvalidArgument(format!(
                "qos {qos} is not 0, 1 or 2"
            ))));
        };
        let r = self
            .ctx
            .broker
            .subscribe_session(&s, &filter, SubOptions::qos(qos))
            .await;
        Ok(r.map_err(|e| match e {
            OpError::Acl(m) => Error::Refused(m),
            OpError::NotFound(m) => Error::NotFound(m),
            OpError::Subscribe(e) => match e {
                crate::broker::SubscribeError::InvalidFilter(_) => {
                    Error::InvalidArgument(e.to_string())
                }
                crate::broker::SubscribeError::SessionEnded => Error::NotFound(e.to_string()),
                _ => Error::Refused(e.to_string()),
            },
            other => Error::InvalidArgument(other.to_string()),
        }))
    }

    async fn unsubscribe(
        &mut self,
        conn: u64,
        filter: String,
    ) -> wasmtime::Result<Result<bool, Error>> {
        Ok(self
            .conn_session(conn)
            .map(|s| self.ctx.broker.unsubscribe(&s, &filter)))
    }

    async fn describe(
        &mut self,
        conn: u64,
        description: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        const MAX: usize = 16 << 10;
        if description.len() > MAX {
            return Ok(Err(Error::InvalidArgument(format!(
                "a description is at most {MAX} bytes"
            ))));
        }
        Ok(self.conn_session(conn).map(|s| {
            s.info.write().description = Some(description.into());
        }))
    }
}
