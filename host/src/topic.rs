//! Topic names and filters: validation, shared-subscription parsing and matching, from
//! the `apiary-topic` crate that plugins get through `plugin-sdk` too, so every entry
//! point (MQTT, registry operations, plugins) reads a filter the same way.

pub use apiary_topic::{
    covers, matches, overlap, parse_filter, split_share, validate_filter, validate_name,
    ParsedFilter, TopicError,
};
