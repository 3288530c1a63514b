//! Split tokens (the contract, §7.2) read by a custom query: a
//! `<prefix><key><separator><secret>` credential is found by its public key
//! and verified against an HMAC-SHA256 digest under a configured pepper.
//! Every way such a credential can be wrong gets the same 401, byte for
//! byte, as any other invalid token.

use super::*;

/// The pepper configured as pepper id 1 (NetBox asks for ≥ 50 characters).
pub(super) const PEPPER: &str = "a-pepper-of-at-least-fifty-characters-as-netbox-asks";
/// A v2 token's public key and secret; its digest is [`V2_DIGEST`].
pub(super) const V2_KEY: &str = "5yVnSt8fRzSU";
pub(super) const V2_SECRET: &str = "0123456789abcdef0123456789abcdef01234567";
/// `hmac.new(PEPPER, V2_SECRET, hashlib.sha256).hexdigest()`, computed
/// with Python's standard library, not with the gateway's code.
pub(super) const V2_DIGEST: &str =
    "bb68c777f02e00373160930d8d8da0763fc117371d96bbb9f70ca36c5de56dac";

/// The headers (less `date` and `x-request-id`) and body of a refusal.
fn comparable(r: &Raw) -> (Vec<String>, Vec<u8>) {
    let mut headers: Vec<_> = r
        .headers
        .iter()
        .filter(|(k, _)| *k != "x-request-id" && *k != "date")
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    headers.sort();
    (headers, r.body.clone())
}

/// Every invalid form of a split credential is `invalid_token`, answered
/// exactly like an unknown plain token, and none reaches the upstream.
pub(super) async fn every_invalid_split_token_is_the_same_401(
    addr: SocketAddr,
    path: &str,
    scheme: &str,
    up: &Upstream,
) {
    let before = up.seen().len();
    let header = |token: &str| format!("Authorization: {scheme} {token}");
    let reference = get(addr, path, &[&header("not-a-token-at-all")]).await;
    assert_refusal(&reference, 401, "invalid_token");
    let wrong_secret = format!("nbt_{V2_KEY}.1123456789abcdef0123456789abcdef01234567");
    let unknown_key = format!("nbt_AAAAAAAAAAAA.{V2_SECRET}");
    let unknown_pepper = format!("nbt_PEPPER9KEY00.{V2_SECRET}");
    for token in [
        wrong_secret.as_str(),
        &unknown_key,
        &unknown_pepper,
        "nbt_",
        "nbt_no-separator",
        &format!("nbt_.{V2_SECRET}"),
        &format!("nbt_{V2_KEY}."),
        // The public key alone, or the secret alone, is nothing.
        V2_KEY,
        V2_SECRET,
        &format!("{V2_KEY}.{V2_SECRET}"),
    ] {
        let r = get(addr, path, &[&header(token)]).await;
        assert_refusal(&r, 401, "invalid_token");
        assert_eq!(comparable(&r), comparable(&reference), "{token}");
    }
    assert_eq!(up.seen().len(), before, "an invalid token was forwarded");
}

/// A SQLite application table holding a v1 row (plaintext key) and v2 rows
/// (key, digest, pepper id), read by one query, as the NetBox preset does.
#[tokio::test]
async fn sqlite_split_and_plain_tokens_from_one_query_authenticate_and_every_bad_one_is_alike() {
    use sqlx::Connection;
    let up = Upstream::start().await;
    let tokens = format!(
        "tokens:\n  source: sqlite\n  path: app.db\n  refresh_interval: 200ms\n  \
         split: {{ prefix: nbt_, separator: \".\" }}\n  \
         peppers: {{ \"1\": \"{PEPPER}\" }}\n  \
         query: |\n    SELECT 'app-' || n AS id,\n      \
         CASE WHEN version = 1 THEN plaintext END AS token,\n      \
         CASE WHEN version = 2 THEN key END AS key,\n      \
         CASE WHEN version = 2 THEN digest END AS hmac_digest,\n      \
         CASE WHEN version = 2 THEN pepper END AS pepper_id,\n      \
         'scope:agent-ui' AS scopes\n    FROM api_keys\n"
    );
    let gw = Gw::start_unready(&config_with_tokens(up.addr, &tokens), "").await;
    let url = format!("sqlite://{}?mode=rwc", gw.path("app.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(&format!(
        "CREATE TABLE api_keys (n INTEGER PRIMARY KEY, version INTEGER NOT NULL,
           plaintext TEXT, key TEXT, digest TEXT, pepper INTEGER);
         INSERT INTO api_keys VALUES
           (1, 1, 'plain-v1-key-0123456789', NULL, NULL, NULL),
           (2, 2, NULL, '{V2_KEY}', '{V2_DIGEST}', 1),
           (3, 2, NULL, 'PEPPER9KEY00', '{V2_DIGEST}', 9);"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    wait_ready(&gw, Duration::from_secs(10)).await;

    let v2 = format!("nbt_{V2_KEY}.{V2_SECRET}");
    let r = get(gw.addr(), "/api/v1/x", &[&bearer(&v2)]).await;
    assert_eq!(r.status, 200, "{}", r.head);
    let seen = up.only();
    assert_eq!(seen.header("x-tollgate-token-id"), Some("app-2"));
    assert_eq!(
        seen.header("authorization"),
        None,
        "the credential is removed"
    );
    up.clear();
    assert_eq!(status(&gw, "plain-v1-key-0123456789").await, 200);
    assert_eq!(
        up.only().header("x-tollgate-token-id"),
        Some("app-1"),
        "the v1 row of the same query"
    );
    up.clear();

    every_invalid_split_token_is_the_same_401(gw.addr(), "/api/v1/x", "Bearer", &up).await;

    // `check` reads the same query.
    let config = gw.path("gateway.yaml");
    let out = tollgate(&config, &["check"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `explain` names the rule that finds each token, never a secret.
    let explain = |id: &'static str| {
        let config = config.clone();
        async move {
            let out = tollgate(&config, &["explain", "--token-id", id, "GET", "/api/v1/x"]).await;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let text = explain("app-2").await;
    assert!(
        text.contains(&format!(
            "lookup: split token: found by its public key \"{V2_KEY}\" (sent as nbt_{V2_KEY}.<secret>), verified by HMAC-SHA256 under pepper 1"
        )),
        "{text}"
    );
    assert!(
        !text.contains(V2_DIGEST) && !text.contains(PEPPER),
        "{text}"
    );
    let text = explain("app-3").await;
    assert!(
        text.contains(
            "pepper 9 is not in tokens.peppers, so every request with this token is invalid_token"
        ),
        "{text}"
    );
    let text = explain("app-1").await;
    assert!(
        text.contains("lookup: by the SHA-256 of the presented token"),
        "{text}"
    );
}

/// Without `tokens.split`, a query that returns split columns is refused
/// as a whole: its rows could never be verified.
#[tokio::test]
async fn split_columns_without_split_rules_are_a_refused_load_and_a_clear_check_error() {
    use sqlx::Connection;
    let up = Upstream::start().await;
    let tokens = "tokens:\n  source: sqlite\n  path: app.db\n  refresh_interval: 200ms\n  \
                  query: \"SELECT 'a' AS id, 'x' AS key, 'y' AS hmac_digest, 1 AS pepper_id, \
                  's' AS scopes FROM t\"\n";
    let gw = Gw::start_unready(&config_with_tokens(up.addr, tokens), "").await;
    let url = format!("sqlite://{}?mode=rwc", gw.path("app.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE t (n INTEGER);")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let out = tollgate(&gw.path("gateway.yaml"), &["check"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("tokens.split and tokens.peppers are not configured"),
        "{stderr}"
    );
}
