//! Micro-benchmarks of the per-request policy path: canonicalise the
//! target, match the route, extract the credential, hash and look it up,
//! decide, check the token's limit, clean the headers — the whole decision
//! and the pieces on their own — and the per-request bookkeeping around it
//! (snapshot load, metrics histogram), and the credential lookup itself:
//! a plain token (one SHA-256 and a probe) beside a split token (a probe by
//! its public key and one HMAC-SHA256), the contract's §7.2.
//!
//! `cargo bench --bench policy -- --quick` runs in well under a minute.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};

use std::num::NonZeroU32;
use std::time::Duration;

use arc_swap::ArcSwap;
use tollgate::clientip::ClientAddr;
use tollgate::config::{self, Rate};
use tollgate::gateway::{Admission, Exchange, Head, RequestIds, Who};
use tollgate::metrics::Metrics;
use tollgate::policy::{Policy, Retained};
use tollgate::proxy::headers::{clean_request, Hygiene};
use tollgate::ratelimit::TokenLimiter;
use tollgate::tokens::{Scope, TokenHash, TokenId, TokenIndex, TokenRecord, TokenUsage};
use tollgate::{auth, method, target};

const CONFIG: &str = r#"
listen:
  - addr: 127.0.0.1:0
tokens:
  source: file
  path: tokens.yaml
auth:
  headers: [xc-token]
limits:
  per_token: { requests: 100000000, per: 1s, burst: 100000000 }
routes:
  - prefix: /api/v1
    upstream: http://127.0.0.1:19999
    scopes: [scope:agent-ui]
  - prefix: /api/v2
    upstream: http://127.0.0.1:19999
    scopes: [scope:grafana-plugin]
  - prefix: /api/v3
    upstream: http://127.0.0.1:19999
    scopes: [scope:agent-ui, scope:grafana-plugin]
    anonymous: read
  - prefix: /netbox/api
    upstream: http://127.0.0.1:8000
    scopes: [scope:netbox]
"#;

fn index(n: usize) -> TokenIndex {
    let records = (0..n)
        .map(|i| {
            TokenRecord::new(
                TokenId::parse(&format!("token-{i}")).unwrap(),
                TokenHash::of(format!("secret-{i}").as_bytes()),
                vec![Scope::parse("scope:agent-ui").unwrap()],
            )
        })
        .collect();
    TokenIndex::build(records).unwrap()
}

fn policy(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let settings = config::load_str(Path::new("bench.yaml"), CONFIG).unwrap();
    let retained = Retained::new(Metrics::new());
    let runtime = Policy::build(&settings, &retained).unwrap();
    let usage = TokenUsage::new();
    let tokens = index(100_000);
    let client_ip: IpAddr = "127.0.0.1".parse().unwrap();
    let req = Request::builder()
        .method(Method::GET)
        .uri("/api/v1/data?chart=system.cpu&after=-60")
        .header("authorization", "Bearer secret-4242")
        .header("host", "gateway")
        .header("user-agent", "wrk")
        .body(())
        .unwrap();

    c.bench_function("policy/full_decision", |b| {
        b.iter(|| {
            let req = black_box(&req);
            let t = target::parse(req.uri()).unwrap();
            let route = runtime.routes.lookup(&t.path).unwrap();
            let writes = method::is_write(req.method(), req.headers(), t.query);
            let cred = runtime.credentials.extract(req.headers()).unwrap().unwrap();
            let entry = tokens.get(&TokenHash::of(&cred.token)).unwrap();
            auth::authorize(&route.access, entry, writes, client_ip, "scope:all").unwrap();
            black_box(entry.id.clone())
        })
    });
    // The gateway's own admission phase (steps 1–8, limiter included).
    let admission = Admission {
        policy: &runtime,
        tokens: Some(&tokens),
        retained: &retained,
        usage: &usage,
        listening: true,
        draining: false,
    };
    let client = ClientAddr {
        ip: client_ip,
        peer_trusted: false,
    };
    c.bench_function("policy/admit", |b| {
        b.iter(|| {
            let req = black_box(&req);
            let mut ex = Exchange::new(HeaderValue::from_static("bench"), client);
            let admitted = admission.admit(Head::of(req), Who::Headers, &mut ex, &mut ());
            assert!(admitted.is_ok());
            black_box(ex.upstream_target)
        })
    });

    let uri: Uri = "/api/v1/data?chart=system.cpu&after=-60".parse().unwrap();
    c.bench_function("policy/canonicalise", |b| {
        b.iter(|| target::parse(black_box(&uri)).map(|t| t.path.len()))
    });
    let encoded: Uri = "/api/v1/%64ata/%7Euser/x%20y?q=1".parse().unwrap();
    c.bench_function("policy/canonicalise_with_escapes", |b| {
        b.iter(|| target::parse(black_box(&encoded)).map(|t| t.path.len()))
    });
    c.bench_function("policy/route_match", |b| {
        b.iter(|| {
            runtime
                .routes
                .lookup(black_box("/api/v1/data/x"))
                .map(|r| r.prefix.len())
        })
    });
    c.bench_function("policy/sha256_and_lookup_100k", |b| {
        b.iter(|| {
            tokens
                .get(&TokenHash::of(black_box(b"secret-4242")))
                .is_some()
        })
    });
    c.bench_function("policy/lookup_miss_100k", |b| {
        b.iter(|| {
            tokens
                .get(&TokenHash::of(black_box(b"not-a-token")))
                .is_some()
        })
    });

    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("host", "gateway"),
        ("user-agent", "wrk"),
        ("accept", "*/*"),
        ("authorization", "Bearer secret-4242"),
        ("x-forwarded-for", "1.2.3.4"),
        ("connection", "keep-alive"),
    ] {
        headers.insert(k, HeaderValue::from_static(v));
    }
    c.bench_function("policy/header_hygiene", |b| {
        b.iter(|| {
            let mut h = headers.clone();
            clean_request(
                &mut h,
                &Hygiene {
                    trusted_peer: false,
                    credentials: &runtime.credentials,
                    websocket: false,
                },
            );
            black_box(h.len())
        })
    });
}

/// 100,000 tokens, half plain and half split (NetBox v2 style), and the
/// rules that verify the split ones.
fn mixed_index() -> TokenIndex {
    use std::collections::HashMap;
    use std::sync::Arc;
    use tollgate::tokens::split::{hmac_hex, SplitDigest, SplitKey, SplitTokens};
    let pepper = b"a-pepper-of-at-least-fifty-characters-as-netbox-asks";
    let rules = SplitTokens::new(
        "nbt_",
        ".",
        HashMap::from([("1".into(), pepper.to_vec().into_boxed_slice())]),
    );
    let mut builder = tollgate::tokens::IndexBuilder::with_capacity(100_000);
    builder.split_rules(Some(Arc::new(rules)));
    for i in 0..100_000 {
        let id = TokenId::parse(&format!("token-{i}")).unwrap();
        let scopes = vec![Scope::parse("scope:netbox").unwrap()];
        let record = if i % 2 == 0 {
            TokenRecord::new(id, TokenHash::of(format!("secret-{i}").as_bytes()), scopes)
        } else {
            let digest = hmac_hex(pepper, format!("secret-{i}").as_bytes());
            let split = SplitKey {
                key: format!("key{i:09}").into(),
                digest: SplitDigest::from_hex("1", &digest).unwrap(),
            };
            let mut r = TokenRecord::new(id, split.binding_hash(), scopes);
            r.split = Some(split);
            r
        };
        builder.push(record).unwrap();
    }
    builder.finish()
}

fn credentials(c: &mut Criterion) {
    let tokens = mixed_index();
    let mut lookup = |name: &str, credential: &'static [u8], found: bool| {
        assert_eq!(
            auth::lookup(&tokens, credential, 0).is_some(),
            found,
            "{name}"
        );
        c.bench_function(name, |b| {
            b.iter(|| auth::lookup(&tokens, black_box(credential), 0).is_some())
        });
    };
    lookup("credential/plain_sha256_hit_100k", b"secret-4242", true);
    lookup("credential/plain_sha256_miss_100k", b"not-a-token", false);
    lookup(
        "credential/split_hmac_hit_100k",
        b"nbt_key000004243.secret-4243",
        true,
    );
    lookup(
        "credential/split_wrong_secret_100k",
        b"nbt_key000004243.secret-4244",
        false,
    );
    lookup(
        "credential/split_unknown_key_100k",
        b"nbt_nosuchkey000.secret-4243",
        false,
    );
}

fn bookkeeping(c: &mut Criterion) {
    let rate = Rate {
        requests: NonZeroU32::new(100_000_000).unwrap(),
        per: Duration::from_secs(1),
        burst: NonZeroU32::new(100_000_000).unwrap(),
    };
    let limiter = TokenLimiter::new(rate);
    c.bench_function("policy/limiter_check", |b| {
        b.iter(|| black_box(&limiter).check().is_ok())
    });

    // The snapshot a request is judged by: a guard (no reference count
    // change) or a full `Arc` (one increment and one decrement).
    let current = ArcSwap::from_pointee(index(10));
    c.bench_function("bookkeeping/snapshot_load_guard", |b| {
        b.iter(|| black_box(current.load()).len())
    });
    c.bench_function("bookkeeping/snapshot_load_full", |b| {
        b.iter(|| black_box(current.load_full()).len())
    });

    let ids = RequestIds::new();
    c.bench_function("bookkeeping/request_id", |b| b.iter(|| ids.next()));
    // What `RequestIds::next` did before: `format!`, then a copy into the
    // header value.
    let counter = std::sync::atomic::AtomicU64::new(0);
    let prefix: u64 = 0x0123_4567_89ab_cdef;
    c.bench_function("bookkeeping/request_id_with_format", |b| {
        b.iter(|| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let id = format!("{:016x}-{:012x}", black_box(prefix), n);
            HeaderValue::from_str(&id).unwrap()
        })
    });

    let metrics = Metrics::new();
    let route = metrics.route("/api");
    c.bench_function("bookkeeping/histogram_observe", |b| {
        b.iter(|| route.upstream_duration.observe(black_box(0.000_350)))
    });
    c.bench_function("bookkeeping/status_count", |b| {
        b.iter(|| route.count(black_box(200)))
    });
}

criterion_group!(benches, policy, credentials, bookkeeping);
criterion_main!(benches);
