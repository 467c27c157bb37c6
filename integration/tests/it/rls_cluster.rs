//! The RLS service on three nodes: counts are exact whichever node each
//! call reaches, the owner reports an RLS bucket through the named-limits
//! admin routes, and an unreachable owner under `deny` answers UNAVAILABLE.

use std::thread;
use std::time::Duration;

use llmtrace_integration::rls::{descriptor, request, Code, RlsClient};
use llmtrace_integration::Cluster;

use super::rls::{code, ok, rls_template, rules_file};

#[test]
fn counts_are_exact_across_three_nodes() {
    let (_dir, rules) = rules_file();
    let cluster = Cluster::builder()
        .nodes(3)
        .template(rls_template(&rules))
        .start();
    let admitted: Vec<u32> = thread::scope(|s| {
        let calls: Vec<_> = (0..3)
            .map(|n| {
                let url = cluster.node(n).rls_url();
                s.spawn(move || {
                    let mut c = RlsClient::connect(&url);
                    (0..8)
                        .map(|_| {
                            let r = ok(&mut c, "it", &[("user", "alice")]);
                            u32::from(code(&r) == Code::Ok)
                        })
                        .sum::<u32>()
                })
            })
            .collect();
        calls.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(admitted.iter().sum::<u32>(), 10, "per node: {admitted:?}");
    // The owner reports the bucket through the named-limits admin routes.
    let limit = llmtrace_cluster_config::rls::file::rule_limit("it", "user");
    let report = cluster
        .node(1)
        .admin_get_json(&format!("/admin/limits/{limit}/keys/it%7Cuser=alice"));
    assert_eq!(report["remaining"], 0, "{report}");
}

#[test]
fn an_unreachable_owner_under_deny_answers_unavailable() {
    let (_dir, rules) = rules_file();
    let mut cluster = Cluster::builder()
        .nodes(3)
        .template(rls_template(&rules))
        .flag("on-owner-unreachable", "deny")
        .start();
    let mut c = RlsClient::connect(&cluster.node(0).rls_url());
    cluster.kill(2);
    // Until the survivors drop node-2 from their rings, the users it owned
    // cannot be decided: UNAVAILABLE, so Envoy's failure_mode_deny applies.
    let status =
        llmtrace_integration::wait_for(Duration::from_secs(10), "an UNAVAILABLE answer", || {
            (0..60).find_map(|i| {
                c.call(request(
                    "it",
                    vec![descriptor(&[("user", &format!("u{i}"))])],
                ))
                .err()
            })
        });
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}
