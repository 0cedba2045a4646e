//! The plugin runtime: WebAssembly components defined by the WIT package in `wit/`,
//! sandboxed in wasmtime, loaded and hot-reloaded from the plugins directory.
//!
//! - [`manifest`]: `NAME.toml`, what a plugin may do and its limits;
//! - [`runtime`]: engine, compile cache, instances, calls with deadlines;
//! - `host_api`: the host interfaces a plugin imports, each checked against its grants;
//! - `host_apikeys`: the API key store, for admin API plugins' credentials;
//! - [`kv`]: each plugin's private store, bounded by its quota;
//! - `host_passwords`: password hashes verified natively on a bounded pool;
//! - [`manager`]: the loaded set, the directory watcher, lookup by role.

mod auth_chain;
mod events;
mod host_api;
mod host_apikeys;
mod host_passwords;
mod host_streams;
mod http_calls;
pub mod kv;
pub mod logs;
pub mod manager;
pub mod manifest;
mod message_calls;
pub mod outbound;
pub mod runtime;
pub mod stats;
pub mod stream_calls;

/// Generated bindings (host side) for the `full` world.
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "full",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

pub use http_calls::{HttpRequest, HttpResponse};
pub use manager::PluginManager;
pub use runtime::PluginError;
pub use stream_calls::PluginProtocol;
