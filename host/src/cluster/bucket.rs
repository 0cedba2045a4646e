//! The cluster's JetStream key-value buckets, opened or made the same way.

use async_nats::jetstream::kv;

/// The bucket `name`, made when missing. Made as a stream in NATS's KV layout
/// (`KV_<name>`, subjects `$KV.<name>.>`, one message per key) rather than with
/// `create_key_value`, which first reads account fields that NATS servers before 2.10
/// (Debian's 2.9) do not send.
pub async fn open(
    js: &async_nats::jetstream::Context,
    name: &str,
    description: &str,
    replicas: usize,
) -> Result<kv::Store, String> {
    use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
    if let Ok(s) = js.get_key_value(name).await {
        return Ok(s);
    }
    let config = Config {
        name: format!("KV_{name}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        storage: StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: DiscardPolicy::New,
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|e| e.to_string())?;
    js.get_key_value(name).await.map_err(|e| e.to_string())
}
