//! The rules the broker and its plugins must read identically, in one place: MQTT topic
//! names and filters ([`topic`]), HTTP credentials ([`credentials`]) and API-key rights
//! ([`rights`]). Built for the
//! host and for wasm32 (re-exported by `apiary-plugin-sdk`), with no dependency on either.
#![deny(missing_docs)]

pub mod credentials;
pub mod rights;
pub mod topic;
