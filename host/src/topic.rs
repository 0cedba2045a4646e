//! Topic names and filters: validation, shared-subscription parsing and matching, from
//! the `apiary-common` crate that plugins get through `plugin-sdk` too, so every entry
//! point (MQTT, registry operations, plugins) reads a filter the same way.

pub use apiary_common::topic::{
    covers, matches, overlap, parse_filter, split_share, validate_filter, validate_name,
    ParsedFilter, TopicError,
};
