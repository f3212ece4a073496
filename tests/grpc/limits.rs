//! Per-key rate limits through the real server: a key's burst passes, the next call is
//! RESOURCE_EXHAUSTED RATE_LIMITED with RetryInfo, other keys are unaffected, and the key is
//! admitted again after the advertised wait.

use std::time::Duration;

use facevault::grpc::pb::GetUserRequest;
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::{ADMIN_A, ADMIN_B, KEYS, TestServer, reason};
use crate::users::by_external;

/// The keys of [`KEYS`], with a bucket of 3 calls refilled at 2 per second on admin-a.
fn write_limited_keys(path: &std::path::Path) {
    let keys: Vec<serde_json::Value> = KEYS
        .iter()
        .map(|(name, tenant, scopes, secret)| {
            let hash: String = facevault::app::keys::hash_secret(secret).iter().map(|b| format!("{b:02x}")).collect();
            let mut key = serde_json::json!({ "name": name, "tenant": tenant, "scopes": scopes, "sha256": hash });
            if *name == "admin-a" {
                key["rate_limit"] = serde_json::json!({ "per_second": 2.0, "burst": 3 });
            }
            key
        })
        .collect();
    std::fs::write(path, serde_json::json!({ "keys": keys }).to_string()).expect("write keys file");
}

#[tokio::test]
async fn a_key_over_its_rate_gets_rate_limited_with_retry_info() {
    let server = TestServer::start_keyed_with(|config| {
        let path = config.data_dir.with_file_name("limited-keys.json");
        write_limited_keys(&path);
        config.keys_file = Some(path);
    })
    .await;
    let mut limited = server.users_as(ADMIN_A).await;
    let mut other = server.users_as(ADMIN_B).await;
    let get = || GetUserRequest { user: by_external("nobody") };
    for i in 0..3 {
        let err = limited.get_user(get()).await.unwrap_err();
        assert_eq!(reason(&err), "USER_NOT_FOUND", "call {i} of the burst is admitted");
    }
    let err = limited.get_user(get()).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::ResourceExhausted, "RATE_LIMITED"));
    let wait = err.get_error_details().retry_info().and_then(|r| r.retry_delay).expect("RetryInfo");
    assert!(wait > Duration::ZERO && wait <= Duration::from_millis(500), "retry after {wait:?}");
    for _ in 0..5 {
        let err = other.get_user(get()).await.unwrap_err();
        assert_eq!(reason(&err), "USER_NOT_FOUND", "another key has its own bucket");
    }
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    let err = limited.get_user(get()).await.unwrap_err();
    assert_eq!(reason(&err), "USER_NOT_FOUND", "admitted again after the advertised wait");
}
