//! Apiary's integration tests, in one binary: each module drives the broker over real
//! sockets with real clients. One binary instead of one per file because every test
//! binary links all of wasmtime; nine of them cost minutes of link time and gigabytes of
//! disk on a 2-core CI machine.

mod common;

mod api_keys;
mod auth;
mod beebotte;
mod bench;
mod bifromq;
mod cluster;
mod cluster_admin;
mod cluster_failure;
mod cluster_kv;
mod cluster_retained;
mod cluster_shared;
mod cluster_takeover;
mod ctl;
mod dashboard;
mod durability;
mod emqx;
mod emqx_v2;
mod http;
mod intercept;
mod limits;
mod mqtt_v3;
mod mqtt_v5;
mod octave;
mod outbound;
mod overload;
mod plugin_grants;
mod plugins;
mod process;
mod registry;
mod reload;
mod robustness;
mod socketio;
mod store_limits;
mod streams;
mod tenancy;
mod transports;
mod webhook;
