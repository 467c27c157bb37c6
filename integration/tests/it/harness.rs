//! Self-checks of the harness that need no node: the RESP client against a real
//! redis-server, stop / restart on the same port.

use llmtrace_integration::resp::{Conn, Value};
use llmtrace_integration::RedisServer;
use std::time::Duration;

#[test]
fn redis_server_and_resp_client() {
    let mut redis = RedisServer::start();
    let mut conn = redis.conn();
    assert!(conn.ping());
    assert_eq!(conn.dbsize().unwrap(), 0);
    assert_eq!(conn.get("missing").unwrap(), None);
    assert_eq!(conn.pttl("missing").unwrap(), -2);
    let set = conn.cmd(&[
        "SET",
        "llmtrace:bucket:acme:requests",
        "v\r\n1",
        "PX",
        "60000",
    ]);
    assert_eq!(set.unwrap(), Value::Simple("OK".into()));
    assert_eq!(
        conn.get("llmtrace:bucket:acme:requests").unwrap(),
        Some(b"v\r\n1".to_vec())
    );
    let pttl = redis.wait_for_key("llmtrace:bucket:acme:requests", Duration::from_secs(1));
    assert!(pttl > 0 && pttl <= 60_000, "{pttl}");
    assert_eq!(
        conn.keys("llmtrace:*").unwrap(),
        vec!["llmtrace:bucket:acme:requests".to_string()]
    );
    assert!(matches!(conn.cmd(&["NOSUCHCOMMAND"]), Ok(Value::Error(_))));

    let port = redis.port();
    redis.stop();
    let answers = Conn::connect(port).is_ok_and(|mut c| c.ping());
    assert!(!answers, "redis still answers after stop");
    redis.restart();
    assert_eq!(redis.port(), port);
    let mut conn = redis.conn();
    assert!(conn.ping());
    assert_eq!(
        conn.dbsize().unwrap(),
        0,
        "nothing persisted across a restart"
    );
}
