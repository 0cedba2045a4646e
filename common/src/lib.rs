//! The rules the broker and its plugins must read identically, in one place: MQTT topic
//! names and filters ([`topic`]) and HTTP credentials ([`credentials`]). Built for the
//! host and for wasm32 (re-exported by `apiary-plugin-sdk`), with no dependency on either.
#![deny(missing_docs)]

pub mod credentials;
pub mod topic;
