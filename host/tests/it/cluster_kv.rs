//! Plugins' kv stores across the nodes of a cluster, through the hello template's
//! `/hello/kv/{key}` routes: a write on one node is read on the others, a node that joins
//! later has every key before its first answer, the quota holds over keys written
//! elsewhere, and a node's keys from before the cluster seed a new bucket.

use std::time::Duration;

use crate::cluster::{cluster_config, nats, nats_with, ADMIN};
use crate::common::{self, metric, TestBroker};

const HELLO: &str = "mount = \"/hello\"\nroles = [\"http\"]\ncapabilities = [\"kv\", \"apikeys\"]\nkv_max_keys = 3\n";

async fn hello_node(nats: &crate::cluster::Nats, name: &str) -> (TestBroker, tempfile::TempDir) {
    common::with_plugins(&[("hello", "hello", HELLO)], "", cluster_config(nats, name)).await
}

async fn put(tb: &TestBroker, key: &str, value: &str) -> (u16, String) {
    let path = format!("/hello/kv/{key}");
    common::http(tb.http_addr(), "PUT", &path, Some(ADMIN), value.as_bytes()).await
}

async fn get(tb: &TestBroker, key: &str) -> (u16, String) {
    let path = format!("/hello/kv/{key}");
    common::http(tb.http_addr(), "GET", &path, Some(ADMIN), b"").await
}

/// Polls until `key` reads `want` on `tb` (the watch brings other nodes' writes).
async fn reads(tb: &TestBroker, key: &str, want: Option<&str>) {
    let want = match want {
        Some(v) => (200, v.to_string()),
        None => (404, String::new()),
    };
    for _ in 0..200 {
        let got = get(tb, key).await;
        if got.0 == want.0 && (want.0 == 404 || got.1 == want.1) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{key} never read {want:?}: {:?}", get(tb, key).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_kv_is_one_store_for_every_node() {
    let Some(nats) = nats().await else { return };
    let ((a, _da), (b, _db)) = (hello_node(&nats, "a").await, hello_node(&nats, "b").await);
    assert_eq!(put(&a, "k1", "from a").await.0, 204);
    reads(&b, "k1", Some("from a")).await;
    // The writing node reads its own write at once.
    assert_eq!(put(&b, "k1", "from b").await.0, 204);
    assert_eq!(get(&b, "k1").await, (200, "from b".into()));
    reads(&a, "k1", Some("from b")).await;
    assert!(
        metric(&a, "apiary_cluster_kv_applied_total") >= 2,
        "a applied b's writes"
    );

    // A node that joins later has every key before it answers its first call.
    assert_eq!(put(&a, "k2", "two").await.0, 204);
    reads(&b, "k2", Some("two")).await;
    let (c, _dc) = hello_node(&nats, "c").await;
    assert_eq!(get(&c, "k2").await, (200, "two".into()));
    assert_eq!(get(&c, "k1").await, (200, "from b".into()));

    // The quota (3 keys) counts keys written on any node.
    assert_eq!(put(&c, "k3", "three").await.0, 204);
    reads(&a, "k3", Some("three")).await;
    let (st, body) = put(&a, "k4", "four").await;
    assert_eq!(st, 507, "{body}");
    assert!(body.contains("kv_max_keys"), "{body}");
    assert_eq!(
        put(&a, "k3", "replaced").await.0,
        204,
        "replacing is within it"
    );
    reads(&c, "k3", Some("replaced")).await;
}

/// A node of `nats` named `name` that, before it joined, ran alone and set `key`.
async fn joined_with(
    nats: &crate::cluster::Nats,
    name: &str,
    key: &str,
) -> (TestBroker, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let pdir = root.path().join("plugins");
    std::fs::create_dir_all(&pdir).unwrap();
    crate::plugins::install(&pdir, "hello", "hello", Some(HELLO));
    let (p, keys) = (pdir.clone(), nats.dir.path().join("keys"));
    let alone = TestBroker::start_with(move |c| {
        c.plugins_dir = p;
        c.api_keys_file = Some(keys);
    })
    .await;
    assert_eq!(put(&alone, key, name).await.0, 204);
    let join = cluster_config(nats, name);
    let node = alone
        .restart(move |c| {
            c.plugins_dir = pdir;
            join(c);
        })
        .await;
    (node, root)
}

/// A node that kept keys before it joined a cluster copies them into the plugin's new
/// bucket, where the other nodes read them; a node joining once the bucket exists drops
/// the keys it lacks (the bucket is the cluster's store). Without JetStream, the store
/// stays per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_before_the_cluster_seed_a_new_bucket() {
    let Some(nats) = nats().await else { return };
    let (a, _da) = joined_with(&nats, "a", "old").await;
    assert_eq!(get(&a, "old").await, (200, "a".into()));
    let (b, _db) = joined_with(&nats, "b", "mine").await;
    assert_eq!(get(&b, "old").await, (200, "a".into()));
    assert_eq!(get(&b, "mine").await.0, 404, "not in the bucket: dropped");
    assert_eq!(get(&a, "mine").await.0, 404);

    let Some(plain) = nats_with(false).await else {
        return;
    };
    let (x, _dx) = hello_node(&plain, "x").await;
    let (y, _dy) = hello_node(&plain, "y").await;
    assert_eq!(put(&x, "k", "x only").await.0, 204);
    assert_eq!(get(&x, "k").await, (200, "x only".into()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get(&y, "k").await.0, 404, "per node without JetStream");
}
