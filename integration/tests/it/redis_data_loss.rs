//! Redis losing its data under a running node (`FLUSHALL`, or Redis restarted empty):
//! the node notices (its marker key vanished) and rewrites every resident bucket that
//! is not full, so a drained tenant that gets no further admitted check stays drained
//! even when the node is then killed with -9 and restarts from Redis.

use std::time::Duration;

use llmtrace_integration::RedisServer;

use crate::redis_snapshots::{assert_still_drained, builder, drain, key, BURST, KEY_TIMEOUT};

/// Loss noticed within a second, the rewrite at the next snapshot tick: this is
/// generous on a loaded machine.
const REWRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Drains `acme`, lets `lose` wipe Redis, then kills the node and restarts it.
fn drained_tenant_survives(lose: impl FnOnce(&mut RedisServer)) {
    let mut redis = RedisServer::start();
    let mut node = builder(&redis.url()).start();
    drain(&node, "acme", BURST);
    redis.wait_for_key(&key("acme"), KEY_TIMEOUT);

    lose(&mut redis);
    assert!(!redis.conn().exists(&key("acme")).expect("EXISTS"));
    // No check for acme from here on: only the node's own detection can write it again.
    let rewritten = redis.key_appears(&key("acme"), REWRITE_TIMEOUT);

    node.kill();
    let node = builder(&redis.url()).start();
    assert_still_drained(&node, "acme");
    assert!(
        rewritten,
        "the bucket was never rewritten after the data loss"
    );
}

#[test]
fn drained_tenant_stays_drained_after_flushall_and_kill_9() {
    drained_tenant_survives(|redis| {
        let r = redis.conn().cmd(&["FLUSHALL"]).expect("FLUSHALL");
        assert_eq!(format!("{r:?}"), "Simple(\"OK\")");
    });
}

#[test]
fn drained_tenant_stays_drained_after_redis_restarts_empty_and_kill_9() {
    drained_tenant_survives(RedisServer::restart);
}
