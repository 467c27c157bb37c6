//! Cost of ring operations: owner lookup (on every check) and building a ring
//! (on every membership change). `cargo bench -p llmtrace-cluster-config`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use llmtrace_cluster_config::{Limit, Ring, DEFAULT_VNODES};
use std::hint::black_box;

fn lookup(c: &mut Criterion) {
    let tenants: Vec<String> = (0..1024).map(|i| format!("tenant-{i}")).collect();
    let mut group = c.benchmark_group("ring_owner");
    for nodes in [3usize, 10, 50] {
        let ring = Ring::new((0..nodes).map(|i| format!("node-{i}")), DEFAULT_VNODES);
        group.bench_with_input(BenchmarkId::from_parameter(nodes), &ring, |b, ring| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(ring.owner(black_box(&tenants[i]), Limit::REQUESTS))
            })
        });
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_build");
    for nodes in [3usize, 10] {
        let ids: Vec<String> = (0..nodes).map(|i| format!("node-{i}")).collect();
        group.bench_with_input(BenchmarkId::from_parameter(nodes), &ids, |b, ids| {
            b.iter(|| black_box(Ring::new(ids.iter().cloned(), DEFAULT_VNODES)))
        });
    }
    group.finish();
}

criterion_group!(benches, lookup, build);
criterion_main!(benches);
