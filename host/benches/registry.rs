//! Registry query cost at 100k sessions: a filtered page of 100 must answer in under
//! 10 ms (issue 2). Run: `cargo bench -p apiary --bench registry`.

use apiary::apikeys::ApiKeyStore;
use apiary::registry::{Page, Query};
use apiary::{Broker, Config};
use criterion::{criterion_group, criterion_main, Criterion};

mod common;

fn populate(n: usize) -> Broker {
    let b = Broker::new(Config::embedded(), ApiKeyStore::default());
    common::populate(&b, n);
    b
}

fn bench(c: &mut Criterion) {
    let b = populate(100_000);
    let cfg = b.config().clone();
    let page = Page {
        page: 1,
        limit: 100,
    };
    let mut g = c.benchmark_group("registry_100k");
    g.bench_function("page_1_no_filter", |bn| {
        bn.iter(|| b.registry.query(&Query::default(), page, &cfg))
    });
    g.bench_function("page_1_username", |bn| {
        let q = Query {
            username: Some("user7".into()),
            ..Default::default()
        };
        bn.iter(|| b.registry.query(&q, page, &cfg))
    });
    g.bench_function("page_1_like_clientid_connected_v5", |bn| {
        let q = Query {
            like_client_id: Some("-0".into()),
            connected: Some(true),
            proto_ver: Some(5),
            ..Default::default()
        };
        bn.iter(|| b.registry.query(&q, page, &cfg))
    });
    g.bench_function("page_500_no_filter", |bn| {
        bn.iter(|| {
            b.registry.query(
                &Query::default(),
                Page {
                    page: 500,
                    limit: 100,
                },
                &cfg,
            )
        })
    });
    g.bench_function("get_one", |bn| {
        bn.iter(|| b.registry.snapshot("default", "client-054321", &cfg))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
