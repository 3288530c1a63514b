//! One rule for token ids, and rows another application wrote that break
//! it: the command line refuses such an id on every source, and a database
//! row with one is skipped alone while every other row serves.

use super::*;

/// `token create` and `token import` with `ops bot` exit 2 (usage), name
/// the rule, print no secret and store nothing.
async fn an_id_with_a_space_is_refused_and_nothing_is_stored(config: &Path) {
    for command in ["create", "import"] {
        let out = tollgate(
            config,
            &["token", command, "--id", "ops bot", "--scope", "scope:a"],
        )
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "token {command}: {stderr}");
        assert!(
            stderr.contains("the id must be 1 to 128 visible ASCII characters without spaces"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "token {command} printed something");
    }
    assert!(list(config).await.is_empty(), "a refused id was stored");
}

#[tokio::test]
async fn file_token_create_refuses_an_id_with_a_space() {
    let up = Upstream::start().await;
    let gw = Gw::start_unready(&gateway_yaml(up.addr, ""), "tokens: []\n").await;
    an_id_with_a_space_is_refused_and_nothing_is_stored(&gw.path("gateway.yaml")).await;
}

#[tokio::test]
async fn sqlite_token_create_refuses_an_id_with_a_space() {
    let up = Upstream::start().await;
    let gw = Gw::start_unready(&sqlite_config(up.addr, "200ms"), "").await;
    an_id_with_a_space_is_refused_and_nothing_is_stored(&gw.path("gateway.yaml")).await;
}

#[tokio::test]
async fn postgres_token_create_refuses_an_id_with_a_space() {
    let Some(pg) = Pg::new().await else { return };
    let up = Upstream::start().await;
    let gw = Gw::start_unready(&postgres_config(up.addr, &pg.url, "30s"), "").await;
    an_id_with_a_space_is_refused_and_nothing_is_stored(&gw.path("gateway.yaml")).await;
}
