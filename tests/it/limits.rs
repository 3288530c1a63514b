//! Rate limits through the real server: per-token GCRA, failed-auth guard.

use std::time::Duration;

use crate::support::*;

fn limited_tokens() -> String {
    format!(
        "{}  - id: limited\n    sha256: {}\n    scopes: [scope:all]\n    rate_limit: {{ requests: 2, per: 1s, burst: 3 }}\n",
        tokens_yaml(),
        sha("limited-secret")
    )
}

async fn hit(gw: &Gw, secret: &str) -> Raw {
    get(gw.addr(), "/api/v1/x", &[&bearer(secret)]).await
}

#[tokio::test]
async fn a_token_gets_its_burst_then_429_with_retry_after_then_refills() {
    let up = Upstream::start().await;
    let gw = Gw::start(&gateway_yaml(up.addr, ""), &limited_tokens()).await;
    for remaining in ["2", "1", "0"] {
        let r = hit(&gw, "limited-secret").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit-limit"), Some("3"));
        assert_eq!(r.header("ratelimit-remaining"), Some(remaining));
        assert!(r.header("ratelimit-reset").is_some());
    }
    let r = hit(&gw, "limited-secret").await;
    assert_refusal(&r, 429, "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(up.seen().len(), 3);
    // Another token is unaffected (default per_token limit).
    assert_eq!(hit(&gw, ADMIN).await.status, 200);
    // 2 per second: one unit back after 500 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(hit(&gw, "limited-secret").await.status, 200);
}

#[tokio::test]
async fn a_reload_does_not_reset_a_token_bucket() {
    let up = Upstream::start().await;
    let gw = Gw::start(&gateway_yaml(up.addr, ""), &limited_tokens()).await;
    for _ in 0..3 {
        assert_eq!(hit(&gw, "limited-secret").await.status, 200);
    }
    gw.launched.control.reload().await.unwrap();
    // Force a token reload too (the file is re-read).
    replace_file(&gw.path("tokens.yaml"), &format!("{}\n", limited_tokens()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_refusal(&hit(&gw, "limited-secret").await, 429, "rate_limited");
}

#[tokio::test]
async fn unauthenticated_requests_never_spend_a_token_quota() {
    let up = Upstream::start().await;
    let gw = Gw::start(&gateway_yaml(up.addr, ""), &limited_tokens()).await;
    for _ in 0..5 {
        get(gw.addr(), "/api/v1/x", &[]).await;
    }
    assert_eq!(
        hit(&gw, "limited-secret")
            .await
            .header("ratelimit-remaining"),
        Some("2")
    );
}

#[tokio::test]
async fn a_token_proven_from_an_address_keeps_working_there_during_a_lockout() {
    let up = Upstream::start().await;
    let config = gateway_yaml(up.addr, "").replace(
        "timeouts:",
        "client_ip:\n  trusted_proxies: [127.0.0.1]\nlimits:\n  failed_auth_per_ip: { requests: 3, per: 1m, burst: 3 }\ntimeouts:",
    );
    let gw = Gw::start(&config, &tokens_yaml()).await;
    let host = "X-Forwarded-For: 203.0.113.7";
    // A script on the host works with its token, then another one retries
    // a revoked token until the address is locked out.
    let r = get(gw.addr(), "/api/v1/x", &[&bearer(AGENT), host]).await;
    assert_eq!(r.status, 200);
    for _ in 0..3 {
        let r = get(gw.addr(), "/api/v1/x", &[&bearer(REVOKED), host]).await;
        assert_refusal(&r, 401, "invalid_token");
    }
    // The proven token keeps working from that address...
    let r = get(gw.addr(), "/api/v1/x", &[&bearer(AGENT), host]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.seen().len(), 2);
    // ...but a valid token first presented there now is refused exactly
    // like a wrong one, and the message says the address is locked out.
    let valid = get(gw.addr(), "/api/v1/x", &[&bearer(ADMIN), host]).await;
    let wrong = get(gw.addr(), "/api/v1/x", &[&bearer("guess"), host]).await;
    let anonymous = get(gw.addr(), "/api/v1/x", &[host]).await;
    for r in [&valid, &wrong, &anonymous] {
        assert_refusal(r, 429, "rate_limited");
        assert_eq!(r.body, valid.body);
        assert!(r.json()["message"].as_str().unwrap().contains("locked out"));
    }
    // The proven token is proven from that address only.
    let other = "X-Forwarded-For: 203.0.113.8";
    for _ in 0..3 {
        get(gw.addr(), "/api/v1/x", &[&bearer(REVOKED), other]).await;
    }
    let r = get(gw.addr(), "/api/v1/x", &[&bearer(AGENT), other]).await;
    assert_refusal(&r, 429, "rate_limited");
    // The guard's refusals are counted apart from token limits.
    let metrics = String::from_utf8(get(gw.admin(), "/metrics", &[]).await.body).unwrap();
    assert!(
        metrics.contains("tollgate_rate_limited_total{reason=\"failed_auth\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_rate_limited_total{reason=\"token\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_bad_token_spray_from_one_address_gets_429_while_others_pass() {
    let up = Upstream::start().await;
    let config = gateway_yaml(up.addr, "").replace(
        "timeouts:",
        "client_ip:\n  trusted_proxies: [127.0.0.1]\nlimits:\n  failed_auth_per_ip: { requests: 3, per: 1m, burst: 3 }\ntimeouts:",
    );
    let gw = Gw::start(&config, &tokens_yaml()).await;
    let attacker = "X-Forwarded-For: 203.0.113.66";
    for i in 0..3 {
        let r = get(
            gw.addr(),
            "/api/v1/x",
            &[&bearer(&format!("guess-{i}")), attacker],
        )
        .await;
        assert_refusal(&r, 401, "invalid_token");
    }
    // Burst used up: every request from that address is 429, a valid token
    // included, so a guesser learns nothing from a right guess.
    for secret in ["guess-9", AGENT] {
        let r = get(gw.addr(), "/api/v1/x", &[&bearer(secret), attacker]).await;
        assert_refusal(&r, 429, "rate_limited");
        assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    }
    // Another client keeps passing.
    let r = get(
        gw.addr(),
        "/api/v1/x",
        &[&bearer(AGENT), "X-Forwarded-For: 198.51.100.1"],
    )
    .await;
    assert_eq!(r.status, 200);
    // Missing tokens do not count.
    for _ in 0..5 {
        let r = get(gw.addr(), "/api/v1/x", &["X-Forwarded-For: 198.51.100.2"]).await;
        assert_refusal(&r, 401, "missing_token");
    }
    assert_eq!(
        get(
            gw.addr(),
            "/api/v1/x",
            &[&bearer(AGENT), "X-Forwarded-For: 198.51.100.2"]
        )
        .await
        .status,
        200
    );
}
