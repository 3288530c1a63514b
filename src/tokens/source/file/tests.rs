use super::*;
use crate::tokens::id::{id, scopes};
use crate::tokens::TokenHash;
use std::os::unix::fs::PermissionsExt;

const GRAFANA_HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn parse(text: &str) -> Result<Vec<TokenRecord>, ConfigErrors> {
    FileSource::parse(Path::new("tokens.yaml"), text)
}

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn every_field_of_an_entry_is_read() {
    let text = format!(
        "tokens:
  - id: grafana
    sha256: {GRAFANA_HASH}
    scopes: [scope:grafana-plugin, scope:b]
    read_only: true
    expires_at: 2027-01-01T00:00:00Z
    allowed_ips: [10.0.0.0/8, 192.168.1.7, \"::1\"]
    rate_limit: {{ requests: 10, per: 1s, burst: 20 }}
    disabled: false
    description: Grafana datasource
  - id: minimal
    sha256: {}
",
        TokenHash::of(b"other").to_hex()
    );
    let records = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    let r = &records[0];
    assert_eq!(r.id, "grafana");
    assert_eq!(r.hash, TokenHash::of(b"test"));
    assert_eq!(r.scopes, ["scope:grafana-plugin", "scope:b"]);
    assert!(r.read_only && !r.disabled && !r.from_plaintext);
    assert_eq!(
        r.expires_at,
        Some(time::macros::datetime!(2027-01-01 00:00:00 UTC))
    );
    let ips: Vec<String> = r.allowed_ips.iter().map(|n| n.to_string()).collect();
    assert_eq!(ips, ["10.0.0.0/8", "192.168.1.7/32", "::1/128"]);
    let rate = r.rate_limit.unwrap();
    assert_eq!(
        (rate.requests.get(), rate.per, rate.burst.get()),
        (10, Duration::from_secs(1), 20)
    );
    assert_eq!(r.description.as_deref(), Some("Grafana datasource"));
    let m = &records[1];
    assert!(m.scopes.is_empty() && !m.read_only && !m.disabled);
    assert_eq!(
        (m.expires_at, m.rate_limit, m.description.as_deref()),
        (None, None, None)
    );
    assert!(m.allowed_ips.is_empty());
    assert!(parse("tokens: []\n").unwrap().is_empty());
}

#[test]
fn plaintext_tokens_are_hashed_and_marked() {
    let r = parse("tokens:\n  - id: dev\n    token: test\n").unwrap();
    assert_eq!(r[0].hash, TokenHash::of(b"test"));
    assert!(r[0].from_plaintext);
}

#[test]
fn each_entry_error_names_its_path_and_line() {
    let text = "tokens:
  - id: \"\"
    sha256: 9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08
  - id: both
    sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    token: secret-value
  - id: neither
    scopes: [\"*\", \"a b\"]
  - id: fields
    token: x
    read_only: True
    expires_at: next year
    allowed_ips: [intranet]
    rate_limit: { requests: 0, per: 1s }
";
    assert_eq!(
            errors(text),
            [
                "tokens.yaml:2: tokens[0].id: is empty",
                "tokens.yaml:3: tokens[0].sha256: must be 64 lowercase hex characters (`tollgate token hash` prints it)",
                "tokens.yaml:6: tokens[1].token: and sha256 are both set; keep one",
                "tokens.yaml:7: tokens[2]: needs sha256 (the hex SHA-256 of the secret) or, for development, token",
                "tokens.yaml:8: tokens[2].scopes[0]: \"*\" is for a route's scopes; give the token the all_scope instead",
                "tokens.yaml:8: tokens[2].scopes[1]: must be visible ASCII characters without spaces",
                "tokens.yaml:11: tokens[3].read_only: expected true or false (unquoted, lowercase)",
                "tokens.yaml:12: tokens[3].expires_at: is not an RFC 3339 time (e.g. 2027-01-01T00:00:00Z)",
                "tokens.yaml:13: tokens[3].allowed_ips[0]: is not an IP address or CIDR (e.g. 10.0.0.0/8, 192.168.1.7 or ::1)",
                "tokens.yaml:14: tokens[3].rate_limit.requests: must be at least 1",
            ]
        );
}

#[test]
fn quoted_false_is_a_type_error() {
    let e = errors("tokens:\n  - id: a\n    token: x\n    disabled: \"false\"\n");
    assert_eq!(
        e,
        ["tokens.yaml:4: tokens[0].disabled: expected true or false (unquoted), found a string"]
    );
    let e = errors("tokens:\n  - id: a\n    token: x\n    disabled: off\n");
    assert_eq!(e.len(), 1);
}

#[test]
fn unknown_keys_and_empty_files_are_errors() {
    let e = errors("tokens:\n  - id: a\n    token: x\n    scope: [a]\n");
    assert!(
        e[0].starts_with(
            "tokens.yaml:4: tokens[0].scope: unknown key; allowed keys: id, sha256, token, scopes"
        ),
        "{e:?}"
    );
    assert_eq!(
        errors("\n# nothing yet\n"),
        ["tokens.yaml: the file is empty; write `tokens: []` for a file without tokens"]
    );
}

#[test]
fn duplicate_ids_and_hashes_name_both_entries_but_never_the_hash() {
    let text = format!(
        "tokens:
  - id: grafana
    sha256: {GRAFANA_HASH}
  - id: grafana
    sha256: {}
  - id: copy
    token: test
",
        TokenHash::of(b"x").to_hex()
    );
    let e = errors(&text);
    assert_eq!(
        e,
        [
            "tokens.yaml: tokens[1].id: \"grafana\" duplicates tokens[0]",
            "tokens.yaml: tokens[2].token: duplicates the hash of tokens[0] (\"grafana\")",
        ]
    );
}

#[test]
fn errors_never_quote_a_secret_or_a_hash() {
    let text = format!(
            "tokens:\n  - id: a\n    token: [s3cr3t]\n  - id: b\n    sha256: {GRAFANA_HASH}x\n    read_only: s3cr3t\n"
        );
    let all = match parse(&text) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("expected errors"),
    };
    assert!(
        !all.contains("s3cr3t") && !all.contains(GRAFANA_HASH),
        "{all}"
    );
    let text = format!("tokens:\n  - id: b\n    sha256: {GRAFANA_HASH}x\n");
    let all = errors(&text).join("\n");
    assert!(!all.contains(&GRAFANA_HASH[..16]), "{all}");
}

/// A secret pasted into the wrong key: every message names the file,
/// the line and the key, and none quotes the value (a boolean key is
/// `errors_never_quote_a_secret_or_a_hash`'s).
#[test]
fn a_secret_in_any_key_is_never_quoted_back() {
    const SECRET: &str = "tg_ThisIsASecretPastedByMistake0123";
    let text = format!(
        "tokens:
  - id: {SECRET} x
    sha256: {SECRET}
    scopes: [\"{SECRET} y\", ok, ok]
    expires_at: {SECRET}
    allowed_ips: [{SECRET}]
    rate_limit: {{ requests: 1, per: {SECRET} }}
"
    );
    let e = errors(&text);
    assert!(!e.join("\n").contains("ThisIsASecret"), "{e:#?}");
    for line in [
            "tokens.yaml:2: tokens[0].id: must be 1 to 128 visible ASCII characters without spaces",
            "tokens.yaml:3: tokens[0].sha256: must be 64 lowercase hex characters (`tollgate token hash` prints it)",
            "tokens.yaml:4: tokens[0].scopes[0]: must be visible ASCII characters without spaces",
            "tokens.yaml:4: tokens[0].scopes[2]: duplicates tokens[0].scopes[1]",
            "tokens.yaml:5: tokens[0].expires_at: is not an RFC 3339 time (e.g. 2027-01-01T00:00:00Z)",
            "tokens.yaml:6: tokens[0].allowed_ips[0]: is not an IP address or CIDR (e.g. 10.0.0.0/8, 192.168.1.7 or ::1)",
            "tokens.yaml:7: tokens[0].rate_limit.per: is not a duration greater than zero (e.g. 1s, 500ms, 1m)",
        ] {
            assert!(e.iter().any(|m| m == line), "missing {line:?} in {e:#?}");
        }
}

#[tokio::test]
async fn load_reports_missing_and_invalid_files_apart() {
    let dir = tempfile::tempdir().unwrap();
    let source = FileSource::new(dir.path().join("tokens.yaml"));
    assert!(matches!(
        source.load().await,
        Err(SourceError::Unavailable(_))
    ));
    std::fs::write(source.path(), "tokens:\n  - id: a\n").unwrap();
    match source.load().await {
        Err(SourceError::Invalid(m)) => {
            assert!(m.contains(":2: tokens[0]: needs sha256"), "{m}")
        }
        _ => panic!("expected Invalid"),
    }
}

fn record(name: &str, secret: &str) -> TokenRecord {
    TokenRecord::new(
        id(name),
        TokenHash::of(secret.as_bytes()),
        scopes(&["scope:a"]),
    )
}

#[tokio::test]
async fn an_unchanged_file_is_recognised_by_its_fingerprint_and_not_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let source = FileSource::new(dir.path().join("tokens.yaml"));
    std::fs::write(
        source.path(),
        "tokens:\n  - { id: a, token: s1, scopes: [x] }\n",
    )
    .unwrap();
    let (index, first) = source.load_index(None).await.unwrap().unwrap();
    assert_eq!(index.len(), 1);
    assert!(source.load_index(Some(&first)).await.unwrap().is_none());
    std::fs::write(
        source.path(),
        "tokens:\n  - { id: b, token: s2, scopes: [x] }\n",
    )
    .unwrap();
    let (index, second) = source.load_index(Some(&first)).await.unwrap().unwrap();
    assert!(index.contains_id("b") && !index.contains_id("a"));
    assert_ne!(first, second);
    // An invalid file is an error, not "unchanged".
    std::fs::write(source.path(), "tokens:\n  - id: c\n").unwrap();
    assert!(matches!(
        source.load_index(Some(&second)).await,
        Err(SourceError::Invalid(_))
    ));
}

#[tokio::test]
async fn enable_rotate_delete() {
    let dir = tempfile::tempdir().unwrap();
    let source = super::super::Source::File(FileSource::new(dir.path().join("tokens.yaml")));
    super::super::shared_tests::enable_rotate_delete(&source).await;
}

#[tokio::test]
async fn create_list_revoke_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let source = FileSource::new(dir.path().join("tokens.yaml"));
    let mut full = record("full", "secret-1");
    full.read_only = true;
    full.expires_at = Some(time::macros::datetime!(2030-06-01 12:00:00 UTC));
    full.allowed_ips = vec!["10.0.0.0/8".parse().unwrap()];
    full.rate_limit = Some(crate::config::Rate {
        requests: crate::config::nz(5),
        per: Duration::from_secs(60),
        burst: crate::config::nz(7),
    });
    full.description = Some("all fields".into());
    source.create(&full).await.unwrap();
    let mode = std::fs::metadata(source.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    source.create(&record("plain", "secret-2")).await.unwrap();

    let listed = source.list().await.unwrap();
    assert_eq!(listed, vec![full.clone(), record("plain", "secret-2")]);
    let text = std::fs::read_to_string(source.path()).unwrap();
    assert!(text.starts_with("# Tollgate token file"), "{text}");
    assert!(!text.contains("secret-1"), "{text}");

    let dup_id = source.create(&record("plain", "secret-3")).await;
    assert!(matches!(dup_id, Err(SourceError::Invalid(m)) if m.contains("already exists")));
    let dup_hash = source.create(&record("other", "secret-2")).await;
    assert!(
        matches!(dup_hash, Err(SourceError::Invalid(m)) if m.contains("\"plain\" already has this secret"))
    );

    source.revoke(&id("plain")).await.unwrap();
    let listed = source.list().await.unwrap();
    assert!(!listed[0].disabled);
    assert!(listed[1].disabled);
    let missing = source.revoke(&id("nobody")).await;
    assert!(
        matches!(missing, Err(SourceError::Invalid(m)) if m.contains("no token with id \"nobody\""))
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "temporary files left behind");
}

#[tokio::test]
async fn rewrites_keep_the_header_plaintext_entries_and_file_mode() {
    let dir = tempfile::tempdir().unwrap();
    let source = FileSource::new(dir.path().join("tokens.yaml"));
    std::fs::write(
        source.path(),
        "# my header\n\ntokens:\n  - id: dev # trailing comment\n    token: dev-secret\n",
    )
    .unwrap();
    std::fs::set_permissions(source.path(), std::fs::Permissions::from_mode(0o640)).unwrap();
    source.create(&record("new", "secret")).await.unwrap();
    let text = std::fs::read_to_string(source.path()).unwrap();
    assert!(text.starts_with("# my header\n\ntokens:\n"), "{text}");
    let records = source.list().await.unwrap();
    assert_eq!(records[0].hash, TokenHash::of(b"dev-secret"));
    assert!(records[0].from_plaintext);
    let mode = std::fs::metadata(source.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
}

#[tokio::test]
async fn an_invalid_file_is_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let source = FileSource::new(dir.path().join("tokens.yaml"));
    std::fs::write(source.path(), "tokens:\n  - id: a\n").unwrap();
    let e = source.create(&record("b", "s")).await;
    assert!(matches!(e, Err(SourceError::Invalid(m)) if m.starts_with("fix the token file")));
    assert_eq!(
        std::fs::read_to_string(source.path()).unwrap(),
        "tokens:\n  - id: a\n"
    );
    let star = TokenRecord::new(id("b"), TokenHash::of(b"s"), scopes(&["*"]));
    assert!(matches!(
        source.create(&star).await,
        Err(SourceError::Invalid(_))
    ));
}

#[test]
fn only_writes_to_the_watched_name_count_as_changes() {
    use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
    let name = OsStr::new("tokens.yaml");
    let ev = |kind, path: &str| notify::Event::new(kind).add_path(PathBuf::from(path));
    assert!(is_change_of(
        &ev(
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            "/d/tokens.yaml"
        ),
        name
    ));
    assert!(is_change_of(
        &ev(EventKind::Create(CreateKind::File), "/d/tokens.yaml"),
        name
    ));
    assert!(is_change_of(
        &ev(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            "/d/tokens.yaml"
        ),
        name
    ));
    assert!(is_change_of(
        &ev(EventKind::Create(CreateKind::Any), "/d/..data"),
        name
    ));
    assert!(!is_change_of(
        &ev(
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            "/d/tokens.yaml"
        ),
        name
    ));
    assert!(!is_change_of(
        &ev(EventKind::Create(CreateKind::File), "/d/.tokens.yaml.1.tmp"),
        name
    ));
}

#[tokio::test]
async fn watcher_fires_on_an_atomic_rename() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.yaml");
    std::fs::write(&path, "tokens: []\n").unwrap();
    let changed = Arc::new(crate::tokens::source::Announced::default());
    FileSource::new(path.clone()).watch(changed.clone());
    let tmp = dir.path().join("staging.yaml");
    std::fs::write(
        &tmp,
        format!("tokens:\n  - id: a\n    sha256: {GRAFANA_HASH}\n"),
    )
    .unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    tokio::time::timeout(Duration::from_secs(10), changed.notified())
        .await
        .expect("no change notification within 10 s");
}
