//! Write [Apiary](https://example.invalid/apiary) broker plugins in Rust.
//!
//! A plugin is a WebAssembly component (`cargo build --target wasm32-wasip2` of a
//! `cdylib`). It always exports `lifecycle` (its `init`), and one or more roles: `http`
//! (answer HTTP requests under its mount), `auth` (decide CONNECT, publish, subscribe),
//! `events` (consume registry events), `stream` (speak a protocol over WebSocket or
//! socket.io connections), `message` (rewrite, enrich or drop publishes before they are
//! routed). It may call the host: the session [`registry`],
//! [`broker`] publishing, a private [`kv`] store, [`log`] and [`clock`] — each only as far
//! as its toml grants.
//!
//! ```no_run
//! use apiary_plugin_sdk::http::{Request, Response, Router};
//! use apiary_plugin_sdk::{export, InitError, Plugin};
//!
//! struct Hello;
//!
//! impl Plugin for Hello {
//!     fn init(_config: String) -> Result<(), InitError> {
//!         Ok(())
//!     }
//! }
//!
//! impl apiary_plugin_sdk::http::Handler for Hello {
//!     fn handle(req: Request) -> Response {
//!         Router::new()
//!             .get("/hello/{name}", |_req, p| Response::json(200, &serde_json::json!({"hello": p.get("name")})))
//!             .dispatch(req)
//!     }
//! }
//!
//! export!(Hello: http);
//! ```
//!
//! The doc test compiles this for the host; `plugins/hello` is the same shape built for
//! wasm32-wasip2 by `cargo xtask plugins`.
#![deny(missing_docs)]

pub mod http;
pub mod keyauth;
pub mod outbound;

/// MQTT topic names and filters, read exactly as the broker reads them: validation,
/// `$share/` parsing, matching, covering and overlap.
pub use apiary_common::topic;

/// Bindings generated from the WIT package: host imports and the `lifecycle` export.
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "export_plugin",
        default_bindings_module: "$crate::bindings",
    });
}

/// Bindings of the `http` role.
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod http_role {
    wit_bindgen::generate!({
        path: "../wit",
        world: "http-role",
        pub_export_macro: true,
        export_macro_name: "export_http",
        default_bindings_module: "$crate::http_role",
    });
}

/// Bindings of the `auth` role.
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod auth_role {
    wit_bindgen::generate!({
        path: "../wit",
        world: "auth-role",
        pub_export_macro: true,
        export_macro_name: "export_auth",
        default_bindings_module: "$crate::auth_role",
    });
}

/// Bindings of the `events` role.
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod events_role {
    wit_bindgen::generate!({
        path: "../wit",
        world: "events-role",
        pub_export_macro: true,
        export_macro_name: "export_events",
        default_bindings_module: "$crate::events_role",
    });
}

/// Bindings of the `stream` role (its shared types are the `types` of [`bindings`]).
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod stream_role {
    wit_bindgen::generate!({
        path: "../wit",
        world: "stream-role",
        pub_export_macro: true,
        export_macro_name: "export_stream",
        default_bindings_module: "$crate::stream_role",
        with: { "apiary:plugin/types@0.1.0": crate::bindings::apiary::plugin::types },
    });
}

/// Bindings of the `message` role.
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod message_role {
    wit_bindgen::generate!({
        path: "../wit",
        world: "message-role",
        pub_export_macro: true,
        export_macro_name: "export_message",
        default_bindings_module: "$crate::message_role",
    });
}

pub use bindings::apiary::plugin::{
    apikeys, broker, clock, kv, log, passwords, registry, streams, types,
};
pub use bindings::exports::apiary::plugin::lifecycle::{Guest as Plugin, InitError};

/// The `auth` role: implement [`auth::Guest`] and export with `export!(T: auth)`.
pub mod auth {
    pub use crate::auth_role::exports::apiary::plugin::auth::*;
}

/// The `events` role: implement [`events::Guest`] and export with `export!(T: events)`.
pub mod events {
    pub use crate::events_role::exports::apiary::plugin::events::*;
}

/// The `stream` role: implement [`stream::Guest`] and export with `export!(T: stream)`.
pub mod stream {
    pub use crate::stream_role::exports::apiary::plugin::stream_protocol::*;
    pub use crate::types::{Frame, StreamEvent, StreamTransport};
}

/// The `message` role: implement [`message::Interceptor`] (its `intercept` sees each
/// publish on the topics of the toml's `[message] filters`) and export with
/// `export!(T: message)`. The host hands publishes over in batches (one component call
/// for many); the export calls `intercept` for each, in order.
///
/// ```no_run
/// use apiary_plugin_sdk::message::{Interceptor, Publish, Source, Verdict};
/// use apiary_plugin_sdk::{export, InitError, Plugin};
///
/// struct Stamp;
///
/// impl Plugin for Stamp {
///     fn init(_config: String) -> Result<(), InitError> {
///         Ok(())
///     }
/// }
///
/// impl Interceptor for Stamp {
///     fn intercept(_source: &Source, mut msg: Publish) -> Verdict {
///         if msg.payload.is_empty() {
///             return apiary_plugin_sdk::message::drop(0x99, "empty payload");
///         }
///         msg.add_user_property("stamped", "yes");
///         Verdict::Rewrite(msg)
///     }
/// }
///
/// export!(Stamp: message);
/// ```
pub mod message {
    pub use crate::message_role::exports::apiary::plugin::message::{
        DropReason, Properties, Publish, Source, Verdict,
    };

    /// A message plugin: decides one publish at a time.
    pub trait Interceptor {
        /// What to do with `msg`, published by `source`: pass it, rewrite it, or drop it
        /// (see [`drop`]).
        fn intercept(source: &Source, msg: Publish) -> Verdict;
    }

    /// A drop with a reason code a v5 publisher sees (0x80, 0x83, 0x87, 0x90, 0x97 or
    /// 0x99) and a message for the broker's log.
    pub fn drop(reason_code: u8, message: &str) -> Verdict {
        Verdict::Drop(DropReason {
            reason_code,
            message: message.to_string(),
        })
    }

    impl Publish {
        /// The first user property named `key`.
        pub fn user_property(&self, key: &str) -> Option<&str> {
            self.properties
                .as_ref()?
                .user_properties
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        }

        /// Its MQTT 5 properties to change, made empty ones if it had none.
        pub fn properties_mut(&mut self) -> &mut Properties {
            self.properties.get_or_insert_with(|| Properties {
                user_properties: Vec::new(),
                content_type: None,
                response_topic: None,
                correlation_data: None,
                payload_utf8: false,
                message_expiry: None,
            })
        }

        /// Appends the user property `key = value`.
        pub fn add_user_property(&mut self, key: &str, value: &str) {
            (self.properties_mut().user_properties).push((key.to_string(), value.to_string()));
        }
    }
}

/// Logs a message at `info` into the broker's log (tagged with the plugin's name).
pub fn info(message: &str) {
    log::log(log::Level::Info, message);
}

/// Logs a message at `warn`.
pub fn warn(message: &str) {
    log::log(log::Level::Warn, message);
}

/// Whether the broker writes lines at `level`: asked of the host once per level and
/// instance (its filter is fixed at start), so a plugin can skip formatting a line per
/// request that nobody reads.
pub fn log_enabled(level: log::Level) -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    static CACHE: [AtomicU8; 5] = [const { AtomicU8::new(0) }; 5];
    let slot = &CACHE[level as usize];
    match slot.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = log::enabled(level);
            slot.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
    }
}

/// A registry filter with nothing set (every session of every tenant the plugin may see);
/// set the fields you need.
pub fn session_filter() -> registry::SessionFilter {
    registry::SessionFilter {
        tenant: None,
        client_id: None,
        username: None,
        user_id: None,
        ip_address: None,
        proto_name: None,
        proto_ver: None,
        transport: None,
        connected: None,
        clean_start: None,
        like_client_id: None,
        like_username: None,
        created_from: None,
        created_to: None,
        connected_from: None,
        connected_to: None,
    }
}

impl From<types::Error> for http::HttpError {
    fn from(e: types::Error) -> Self {
        match e {
            types::Error::PermissionDenied(m) => http::HttpError::new(403, "FORBIDDEN", m),
            types::Error::NotFound(m) => http::HttpError::not_found(m),
            types::Error::InvalidArgument(m) => http::HttpError::bad_request(m),
            types::Error::Unavailable(m) => http::HttpError::new(503, "UNAVAILABLE", m),
            types::Error::QuotaExceeded(m) => http::HttpError::new(507, "QUOTA_EXCEEDED", m),
            types::Error::Refused(m) => http::HttpError::new(403, "REFUSED", m),
        }
    }
}

/// Parses the `[config]` table `init` receives into your own type.
pub fn parse_config<T: serde::de::DeserializeOwned>(config: &str) -> Result<T, InitError> {
    serde_json::from_str(config).map_err(|e| InitError::InvalidConfig(e.to_string()))
}

/// Exports a plugin type: its `lifecycle` (the [`Plugin`] trait) and the roles listed,
/// e.g. `export!(MyPlugin: http)` or `export!(MyPlugin: http, auth)`.
#[macro_export]
macro_rules! export {
    ($ty:ident : $($role:ident),+ $(,)?) => {
        $crate::bindings::export_plugin!($ty with_types_in $crate::bindings);
        $( $crate::export!(@role $ty $role); )+
    };
    (@role $ty:ident http) => {
        impl $crate::http_role::exports::apiary::plugin::http::Guest for $ty {
            fn handle(req: $crate::http::Request) -> $crate::http::Response {
                <$ty as $crate::http::Handler>::handle(req)
            }
        }
        $crate::http_role::export_http!($ty with_types_in $crate::http_role);
    };
    (@role $ty:ident auth) => {
        $crate::auth_role::export_auth!($ty with_types_in $crate::auth_role);
    };
    (@role $ty:ident stream) => {
        $crate::stream_role::export_stream!($ty with_types_in $crate::stream_role);
    };
    (@role $ty:ident message) => {
        impl $crate::message_role::exports::apiary::plugin::message::Guest for $ty {
            fn intercept(
                source: $crate::message::Source,
                batch: Vec<$crate::message::Publish>,
            ) -> Vec<$crate::message::Verdict> {
                batch
                    .into_iter()
                    .map(|m| <$ty as $crate::message::Interceptor>::intercept(&source, m))
                    .collect()
            }
        }
        $crate::message_role::export_message!($ty with_types_in $crate::message_role);
    };
    (@role $ty:ident events) => {
        $crate::events_role::export_events!($ty with_types_in $crate::events_role);
    };
}
