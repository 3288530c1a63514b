//! Hostile configuration on reload: what a reload may not do to a running gateway.

use super::*;

/// A billion-laughs alias bomb: nine levels of ten aliases each.
fn alias_bomb() -> String {
    let mut s = String::from("a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for i in 1..10 {
        let prev = i - 1;
        s.push_str(&format!(
            "a{i}: &a{i} [*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev},*a{prev}]\n"
        ));
    }
    s
}

/// Hostile variants of a working config, each named.
fn hostile_configs(good: &str) -> Vec<(&'static str, String)> {
    vec![
        ("alias bomb", format!("{good}{}", alias_bomb())),
        (
            "alias bomb inside a route",
            good.replace(
                "scopes: [scope:agent-ui]",
                "scopes: &s [scope:agent-ui]\n    description: [*s, *s, *s]",
            ),
        ),
        (
            "merge key",
            good.replace(
                "  - prefix: /api/v2\n",
                "  - &r { prefix: /api/x, upstream: http://127.0.0.1:1, scopes: [a] }\n  - <<: *r\n    prefix: /api/v2\n",
            ),
        ),
        ("deep flow nesting", format!("{good}x: {}\n", "[".repeat(100_000))),
        (
            "deep block nesting",
            format!(
                "{good}{}",
                (0..200)
                    .map(|i| format!("{}k{i}:\n", "  ".repeat(i)))
                    .collect::<String>()
            ),
        ),
        (
            "yaml 1.1 boolean: yes",
            good.replace("access: true", "access: yes"),
        ),
        (
            "yaml 1.1 boolean: off",
            good.replace("access: true", "access: off"),
        ),
        (
            "yaml 1.1 boolean: on",
            good.replace("    strip_prefix: true", "    strip_prefix: on"),
        ),
        (
            "quoted boolean",
            good.replace("access: true", "access: \"true\""),
        ),
        (
            "capitalised boolean",
            good.replace("access: true", "access: True"),
        ),
        ("misspelt top-level key", good.replace("routes:", "rotues:")),
        (
            "misspelt route key",
            good.replace("scopes: [scope:agent-ui]", "scope: [scope:agent-ui]"),
        ),
        (
            "misspelt anonymous value",
            good.replace("anonymous: read", "anonymous: reads"),
        ),
        (
            "duplicate key",
            good.replace("  access: true", "  access: true\n  access: false"),
        ),
        ("two documents", format!("{good}---\n{good}")),
        ("a tag", good.replace("access: true", "access: !!bool true")),
        (
            "a foreign tag",
            good.replace("access: true", "access: !!python/object:os.system true"),
        ),
        (
            "a file over the size cap",
            format!("{good}# {}\n", "x".repeat(5 << 20)),
        ),
        ("a NUL byte", good.replace("level: warn", "level: w\0arn")),
        ("tabs for indentation", good.replace("  access: true", "\taccess: true")),
        ("an empty file", String::new()),
        ("a lone null", "~\n".into()),
        ("not a mapping", "- a\n- b\n".into()),
        (
            "a huge number",
            good.replace("refresh_interval: 200ms", "refresh_interval: 99999999999999999999999d"),
        ),
        (
            "empty scopes",
            good.replace("scopes: [scope:agent-ui]", "scopes: []"),
        ),
        (
            "a prefix with a dot segment",
            good.replace("prefix: /api/v2", "prefix: /api/../v2"),
        ),
        (
            "a prefix with an escape",
            good.replace("prefix: /api/v2", "prefix: /api/%76%32"),
        ),
    ]
}

#[tokio::test]
async fn hostile_configs_are_refused_quickly_on_reload_and_the_running_config_keeps_serving() {
    let (up, gw) = standard().await;
    let good = gateway_yaml(up.addr, "");
    let path = gw.path("gateway.yaml");
    for (what, text) in hostile_configs(&good) {
        std::fs::write(&path, &text).unwrap();
        let started = Instant::now();
        let result = gw.launched.control.reload().await;
        let took = started.elapsed();
        assert!(result.is_err(), "{what}: accepted");
        assert!(took < Duration::from_secs(1), "{what}: took {took:?}");
        let err = result.unwrap_err();
        assert!(err.contains("gateway.yaml"), "{what}: {err}");
        assert!(
            !err.contains("lol"),
            "{what}: the error quotes the file: {err}"
        );
        let r = get(gw.addr(), "/api/v1/x", &[&bearer(AGENT)]).await;
        assert_eq!(r.status, 200, "{what}: no longer serving");
    }
    // The good config still reloads.
    std::fs::write(&path, &good).unwrap();
    gw.launched.control.reload().await.unwrap();
}

#[tokio::test]
async fn hostile_configs_are_refused_by_check_within_a_memory_cap() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens.yaml"), tokens_yaml()).unwrap();
    let good = gateway_yaml(up.addr, "");
    for (what, text) in hostile_configs(&good)
        .into_iter()
        .filter(|(w, _)| w.starts_with("alias") || w.starts_with("deep") || w.contains("size"))
    {
        let path = dir.path().join("hostile.yaml");
        std::fs::write(&path, &text).unwrap();
        let started = Instant::now();
        // 512 MiB of address space: an expanded alias bomb would need far
        // more, and would abort instead of exiting 1 with an error line.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -v 524288; exec \"$0\" check -c \"$1\"")
            .arg(env!("CARGO_BIN_EXE_tollgate"))
            .arg(&path)
            .output()
            .unwrap();
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains("hostile.yaml"), "{what}: {stderr}");
        assert!(took < Duration::from_secs(3), "{what}: took {took:?}");
    }
}

// ---------------------------------------------------------------------------
// A raw HTTP/2 client: just enough to send one HEADERS frame with any
// pseudo-headers (hyper's and h2's clients refuse to send `:protocol` to a
// server that has not enabled RFC 8441) and read the answer.
// ---------------------------------------------------------------------------
