use std::num::NonZeroU32;

use ipnet::IpNet;

use super::row::{parse_ips, rate};
use super::*;
use crate::config::Rate;
use crate::tokens::id::{id, scopes};
use crate::tokens::{TokenHash, TokenRecord};

/// A row of text/integer/boolean cells, as a driver would give them.
#[derive(Default, Clone)]
struct FakeRow(Vec<Cell>);

#[derive(Clone)]
enum Cell {
    Null,
    Text(&'static str),
    Int(i64),
    Bool(bool),
    /// A column of a type no read accepts (as PostgreSQL reports it).
    Bytes,
}

impl Cells for FakeRow {
    fn text(&self, i: usize) -> Result<Option<String>, Bad> {
        match &self.0[i] {
            Cell::Null => Ok(None),
            Cell::Text(t) => Ok(Some((*t).to_owned())),
            Cell::Bytes => Err(Bad::Type("has SQL type BYTEA, expected text".into())),
            _ => Err("expected text".into()),
        }
    }
    fn boolean(&self, i: usize) -> Result<Option<bool>, Bad> {
        match &self.0[i] {
            Cell::Null => Ok(None),
            Cell::Bool(b) => Ok(Some(*b)),
            Cell::Int(n) => Ok(Some(int_bool(*n)?)),
            _ => Err("expected boolean".into()),
        }
    }
    fn integer(&self, i: usize) -> Result<Option<i64>, Bad> {
        match &self.0[i] {
            Cell::Null => Ok(None),
            Cell::Int(n) => Ok(Some(*n)),
            _ => Err("expected integer".into()),
        }
    }
    fn timestamp(&self, i: usize) -> Result<Option<OffsetDateTime>, Bad> {
        match &self.0[i] {
            Cell::Null => Ok(None),
            Cell::Text(t) => Ok(Some(parse_time(t)?)),
            _ => Err("expected timestamp".into()),
        }
    }
}

const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn three(id: &'static str, hash: &'static str) -> FakeRow {
    FakeRow(vec![Cell::Text(id), Cell::Text(hash), Cell::Text("a b")])
}

fn shape3() -> Shape {
    Shape::of(["id", "sha256", "scopes"]).unwrap()
}

type Read = Result<(Vec<TokenRecord>, Vec<InvalidRow>), SourceError>;

/// A load that failed as a whole.
fn invalid(result: Read) -> String {
    match result {
        Err(SourceError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// The records of a read that skipped nothing.
fn valid(result: Read) -> Vec<TokenRecord> {
    let (records, invalid) = result.unwrap();
    assert_eq!(invalid, [], "rows were skipped");
    records
}

/// The one row a read skipped, and the ids of the rows it kept.
fn skipped(result: Read) -> (String, Vec<String>) {
    let (records, invalid) = result.unwrap();
    assert_eq!(invalid.len(), 1, "{invalid:?}");
    let kept = records.iter().map(|r| r.id.to_string()).collect();
    (invalid[0].to_string(), kept)
}

#[test]
fn absent_optional_columns_take_their_defaults() {
    let records = valid(records("q", &shape3(), &[three("x", HASH)]));
    let mut want = TokenRecord::new(id("x"), TokenHash::from_hex(HASH).unwrap(), vec![]);
    want.scopes = scopes(&["a", "b"]);
    assert_eq!(records, vec![want]);
}

#[test]
fn every_column_is_read() {
    let shape = Shape::of(COLUMNS[..TABLE_COLUMNS].iter().copied()).unwrap();
    let row = FakeRow(vec![
        Cell::Text("grafana"),
        Cell::Text(HASH),
        Cell::Text(" scope:a  scope:b "),
        Cell::Bool(true),
        Cell::Text("2027-01-01T00:00:00Z"),
        Cell::Text("10.1.2.3/8 192.168.1.7 ::1"),
        Cell::Int(10),
        Cell::Int(1000),
        Cell::Null,
        Cell::Int(0),
        Cell::Text("Grafana datasource"),
        Cell::Text("2025-01-01T00:00:00+02:00"),
        Cell::Text("2025-01-02T00:00:00Z"),
        Cell::Null,
    ]);
    let r = valid(records("t", &shape, &[row])).remove(0);
    assert_eq!(r.scopes, ["scope:a", "scope:b"]);
    assert!(r.read_only && !r.disabled && !r.from_plaintext);
    assert_eq!(
        r.expires_at,
        Some(parse_time("2027-01-01T00:00:00Z").unwrap())
    );
    assert_eq!(
        r.allowed_ips,
        ["10.0.0.0/8", "192.168.1.7/32", "::1/128"].map(|s| s.parse::<IpNet>().unwrap())
    );
    let rate = r.rate_limit.unwrap();
    assert_eq!((rate.requests.get(), rate.burst.get()), (10, 10));
    assert_eq!(rate.per, Duration::from_secs(1));
    assert_eq!(r.description.as_deref(), Some("Grafana datasource"));
    assert_eq!(
        r.created_at,
        Some(parse_time("2024-12-31T22:00:00Z").unwrap())
    );
    assert_eq!(r.last_used_at, None);
}

#[test]
fn plaintext_token_is_hashed_and_marked() {
    let shape = Shape::of(["ID", "Token", "scopes"]).unwrap();
    let row = FakeRow(vec![
        Cell::Text("nb-1"),
        Cell::Text("test"),
        Cell::Text("s"),
    ]);
    let r = valid(records("q", &shape, &[row])).remove(0);
    assert_eq!(r.hash.to_hex(), HASH);
    assert!(r.from_plaintext);
}

#[test]
fn shape_requires_id_scopes_and_a_secret_and_refuses_unknown_names() {
    assert!(Shape::of(["id", "scopes"])
        .unwrap_err()
        .contains("returns none of"));
    assert!(Shape::of(["id", "sha256"]).unwrap_err().contains("scopes"));
    assert!(Shape::of(["sha256", "scopes"]).unwrap_err().contains("id"));
    let typo = Shape::of(["id", "sha256", "scopes", "read_onyl"]).unwrap_err();
    assert!(typo.contains("read_onyl"), "{typo}");
    assert!(Shape::of(["id", "sha256", "scopes", "ID"])
        .unwrap_err()
        .contains("twice"));
}

#[test]
fn one_bad_row_is_skipped_naming_id_and_column_and_the_others_kept() {
    let other = "0000000000000000000000000000000000000000000000000000000000000000";
    let rows = [
        three("good", HASH),
        three("bad", "ABC"),
        three("also", other),
    ];
    let (row, kept) = skipped(records("db", &shape3(), &rows));
    assert_eq!(
        row,
        "token \"bad\": sha256: is not 64 lowercase hex characters"
    );
    assert_eq!(kept, ["good", "also"]);
}

#[test]
fn a_row_without_a_usable_id_is_named_by_position_never_by_its_id() {
    let rows = [three("good", HASH), three("", HASH)];
    assert_eq!(
        skipped(records("db", &shape3(), &rows)).0,
        "row 2: id: is empty"
    );
    let rows = [three("tg_pasted secret", HASH)];
    let (row, kept) = skipped(records("db", &shape3(), &rows));
    assert_eq!(
        row,
        "row 1: id: must be 1 to 128 visible ASCII characters without spaces"
    );
    assert!(kept.is_empty());
}

#[test]
fn a_column_of_the_wrong_sql_type_fails_the_whole_load() {
    let rows = [
        three("good", HASH),
        FakeRow(vec![Cell::Text("x"), Cell::Text(HASH), Cell::Bytes]),
    ];
    assert_eq!(
        invalid(records("db", &shape3(), &rows)),
        "db: token \"x\": scopes: has SQL type BYTEA, expected text"
    );
}

#[test]
fn duplicate_ids_and_secrets_are_refused_without_printing_the_hash() {
    let other = "0000000000000000000000000000000000000000000000000000000000000000";
    let m = invalid(records(
        "db",
        &shape3(),
        &[three("a", HASH), three("a", other)],
    ));
    assert!(m.contains("\"a\" appears twice"), "{m}");
    let m = invalid(records(
        "db",
        &shape3(),
        &[three("a", HASH), three("b", HASH)],
    ));
    assert!(m.contains("\"a\" and \"b\" have the same secret"), "{m}");
    assert!(!m.contains(HASH));
}

#[test]
fn a_plaintext_secret_never_appears_in_an_error() {
    let shape = Shape::of(["id", "token", "scopes", "disabled"]).unwrap();
    let row = FakeRow(vec![
        Cell::Text("x"),
        Cell::Text("s3cret-value"),
        Cell::Text("s"),
        Cell::Null,
    ]);
    let (m, _) = skipped(records("q", &shape, &[row]));
    assert_eq!(m, "token \"x\": disabled: is null");
    let mistyped = FakeRow(vec![
        Cell::Text("x"),
        Cell::Text("tg_0123456789abcdefghijklmnopqrstuv0LNJdM"),
        Cell::Text("s"),
        Cell::Bool(false),
    ]);
    let (m, _) = skipped(records("q", &shape, &[mistyped]));
    assert!(m.contains("wrong checksum") && !m.contains("tg_0"), "{m}");
}

#[test]
fn rate_columns_are_all_null_or_complete_and_positive() {
    assert_eq!(rate(None, None, None), Ok(None));
    let r = rate(Some(5), Some(250), Some(20)).unwrap().unwrap();
    assert_eq!(
        (r.requests.get(), r.per, r.burst.get()),
        (5, Duration::from_millis(250), 20)
    );
    assert_eq!(rate(Some(5), None, None).unwrap_err().0, "rate_per_ms");
    assert_eq!(rate(None, Some(5), None).unwrap_err().0, "rate_requests");
    assert_eq!(rate(None, None, Some(5)).unwrap_err().0, "rate_requests");
    assert_eq!(rate(Some(0), Some(5), None).unwrap_err().0, "rate_requests");
    assert_eq!(rate(Some(1), Some(-5), None).unwrap_err().0, "rate_per_ms");
    assert_eq!(rate(Some(1), Some(5), Some(0)).unwrap_err().0, "rate_burst");
    assert_eq!(
        rate(Some(1 << 40), Some(5), None).unwrap_err().0,
        "rate_requests"
    );
}

#[test]
fn bad_cells_are_reported_by_column() {
    let shape = Shape::of(["id", "sha256", "scopes", "allowed_ips", "expires_at"]).unwrap();
    let row = |ips, exp| {
        FakeRow(vec![
            Cell::Text("x"),
            Cell::Text(HASH),
            Cell::Text("s"),
            ips,
            exp,
        ])
    };
    let (m, _) = skipped(records(
        "q",
        &shape,
        &[row(Cell::Text("10.0.0.300"), Cell::Null)],
    ));
    assert!(m.starts_with("token \"x\": allowed_ips: "), "{m}");
    let (m, _) = skipped(records(
        "q",
        &shape,
        &[row(Cell::Null, Cell::Text("tomorrow"))],
    ));
    assert!(m.starts_with("token \"x\": expires_at: "), "{m}");
    let (m, _) = skipped(records("q", &shape, &[row(Cell::Null, Cell::Int(3))]));
    assert_eq!(m, "token \"x\": expires_at: expected timestamp");
}

#[test]
fn stored_values_read_back_to_the_same_record() {
    let mut r = TokenRecord::new(id("x"), TokenHash::of(b"s"), scopes(&["a", "b"]));
    r.allowed_ips = vec![parse_ip("10.0.0.0/8").unwrap(), parse_ip("::1").unwrap()];
    r.rate_limit = rate(Some(3), Some(1500), Some(7)).unwrap();
    let s = Stored::of(&r).unwrap();
    assert_eq!(s.scopes, "a b");
    assert_eq!(s.allowed_ips.as_deref(), Some("10.0.0.0/8 ::1/128"));
    assert_eq!(
        parse_ips(s.allowed_ips.as_deref().unwrap()).unwrap(),
        r.allowed_ips
    );
    assert_eq!(
        (s.rate_requests, s.rate_per_ms, s.rate_burst),
        (Some(3), Some(1500), Some(7))
    );
    assert_eq!(TokenHash::from_hex(&s.sha256), Some(r.hash));
}

#[test]
fn a_sub_millisecond_period_cannot_be_stored() {
    let mut r = TokenRecord::new(id("x"), TokenHash::of(b"s"), scopes(&["a"]));
    r.rate_limit = Some(Rate {
        requests: NonZeroU32::new(1).unwrap(),
        per: Duration::from_micros(1500),
        burst: NonZeroU32::new(1).unwrap(),
    });
    assert!(Stored::of(&r).is_err());
}

#[test]
fn latest_uses_keeps_the_newest_per_id() {
    let t = |s: &str| parse_time(s).unwrap();
    let uses = [
        ("a".to_owned(), t("2025-01-01T00:00:02Z")),
        ("b".to_owned(), t("2025-01-01T00:00:00Z")),
        ("a".to_owned(), t("2025-01-01T00:00:01Z")),
    ];
    assert_eq!(
        latest_uses(&uses),
        [
            ("a", t("2025-01-01T00:00:02Z")),
            ("b", t("2025-01-01T00:00:00Z"))
        ]
    );
}

#[test]
fn format_time_is_utc_rfc3339() {
    let t = parse_time("2027-01-01T02:00:00+02:00").unwrap();
    assert_eq!(format_time(t), "2027-01-01T00:00:00Z");
}

const DIGEST: &str = "bb68c777f02e00373160930d8d8da0763fc117371d96bbb9f70ca36c5de56dac";

/// `id, sha256, scopes, key, hmac_digest, pepper_id`, as a query over
/// NetBox's table returns v1 and v2 rows together.
fn split_shape() -> Shape {
    Shape::of(["id", "sha256", "scopes", "key", "hmac_digest", "pepper_id"]).unwrap()
}

fn split_row(id: &'static str, key: Cell, digest: Cell, pepper: Cell) -> FakeRow {
    FakeRow(vec![
        Cell::Text(id),
        Cell::Null,
        Cell::Text("a"),
        key,
        digest,
        pepper,
    ])
}

#[test]
fn a_split_row_and_a_plain_row_come_from_one_query() {
    let plain = FakeRow(vec![
        Cell::Text("v1"),
        Cell::Text(HASH),
        Cell::Text("a"),
        Cell::Null,
        Cell::Null,
        Cell::Null,
    ]);
    // NetBox's pepper_id is a smallint; a text id is accepted too.
    let v2 = split_row("v2", Cell::Text("k1"), Cell::Text(DIGEST), Cell::Int(1));
    let v2_text = split_row("v2t", Cell::Text("k2"), Cell::Text(DIGEST), Cell::Text("x"));
    let records = valid(records("q", &split_shape(), &[plain, v2, v2_text]));
    assert_eq!(records[0].split, None);
    assert_eq!(records[0].hash, TokenHash::from_hex(HASH).unwrap());
    let split = records[1].split.as_ref().unwrap();
    assert_eq!((&*split.key, &*split.digest.pepper_id), ("k1", "1"));
    assert_eq!(records[1].hash, split.binding_hash());
    assert_eq!(&*records[2].split.as_ref().unwrap().digest.pepper_id, "x");
    assert_ne!(records[1].hash, records[2].hash, "the key is bound in");
}

#[test]
fn a_split_row_with_a_missing_or_malformed_part_is_skipped_without_quoting_it() {
    for (row, want) in [
        (
            split_row("t", Cell::Text("k"), Cell::Null, Cell::Int(1)),
            "token \"t\": hmac_digest: is null while key is set",
        ),
        (
            split_row("t", Cell::Text("k"), Cell::Text(DIGEST), Cell::Null),
            "token \"t\": pepper_id: is null while key is set",
        ),
        (
            split_row("t", Cell::Null, Cell::Text(DIGEST), Cell::Int(1)),
            "token \"t\": key: is null while hmac_digest or pepper_id is set",
        ),
        (
            split_row(
                "t",
                Cell::Text("k"),
                Cell::Text("SECRETSECRET"),
                Cell::Int(1),
            ),
            "token \"t\": hmac_digest: is not 64 lowercase hex characters",
        ),
        (
            split_row("t", Cell::Text("a key"), Cell::Text(DIGEST), Cell::Int(1)),
            "token \"t\": key: is not one or more visible ASCII characters",
        ),
        (
            split_row("t", Cell::Null, Cell::Null, Cell::Null),
            "token \"t\": sha256: is null",
        ),
    ] {
        let (problem, kept) = skipped(records("q", &split_shape(), &[row]));
        assert_eq!(problem, want);
        assert!(kept.is_empty());
        assert!(!problem.contains("SECRET"));
    }
    let mut both = split_row("t", Cell::Text("k"), Cell::Text(DIGEST), Cell::Int(1));
    both.0[1] = Cell::Text(HASH);
    let (problem, _) = skipped(records("q", &split_shape(), &[both]));
    assert_eq!(
        problem,
        "token \"t\": key: is set together with sha256 or token"
    );
}

#[test]
fn the_split_columns_come_all_together_or_not_at_all() {
    let err = Shape::of(["id", "scopes", "key", "hmac_digest"]).unwrap_err();
    assert_eq!(
        err,
        "returns some but not all of the split-token columns key, hmac_digest, pepper_id"
    );
    assert!(Shape::of(["id", "scopes", "key", "hmac_digest", "pepper_id"]).is_ok());
    assert!(Shape::of(["id", "scopes"]).is_err());
}
