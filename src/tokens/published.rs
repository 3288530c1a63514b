//! The token secrets Tollgate ships with its example files: they are
//! published (in the files' comments and the README), so a token source
//! that holds one of them lets anyone in. `tollgate check` warns about
//! each, whatever file, table or path it came from.
//!
//! Invariant: compares hashes only; the shipped files are read when
//! compiled, not at run time.

use super::{TokenHash, TokenRecord};

/// The shipped token files, by the name they are known under.
const SHIPPED: &[(&str, &str)] = &[
    (
        "config/tokens.yaml",
        include_str!("../../config/tokens.yaml"),
    ),
    // Shipped until 0.1.0 and copied by people who followed the presets.
    (
        "config/examples/tokens.yaml",
        "sha256: 957af53a39718af32dd5b9cbd594b16d7d047f0156d6aa4dddf871aaad910cb9\n\
         sha256: 7be126f6fce41ffe206f5b4449e4122fbb64b8503f42079ce906c8527a2b0980\n\
         sha256: 03d0059b370ecab48a25bf52ea6d43afed5ac40239250041ffafd26efb7885b0\n\
         sha256: 4231d8ff247c50bf83a299c0e79cc02f3fc455d2531bb640d76c8c29571dc6eb\n\
         sha256: fa09e6594d8a5a59dfb0a91d5e44afc2157ad23e4d8d85180d924e568df89662\n",
    ),
];

/// The shipped file a hash was published in, if any.
fn published_in(hash: &TokenHash) -> Option<&'static str> {
    let hex = hash.to_hex();
    SHIPPED.iter().find_map(|(name, text)| {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("sha256:"))
            .any(|h| h.trim() == hex)
            .then_some(*name)
    })
}

/// One warning per usable (not disabled) record whose secret is a
/// published example secret.
pub fn warnings(records: &[TokenRecord]) -> Vec<String> {
    records
        .iter()
        .filter(|r| !r.disabled)
        .filter_map(|r| {
            let file = published_in(&r.hash)?;
            Some(format!(
                "tokens: {:?} uses an example secret published with Tollgate ({file}); anyone can present it. \
                 Create real tokens with `tollgate token create` and remove this one",
                r.id
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_secrets_are_recognised_by_hash_and_others_are_not() {
        let demo = TokenRecord::new(
            crate::tokens::id::id("x"),
            TokenHash::of(b"demo-admin-secret"),
            vec![],
        );
        let example = TokenRecord::new(
            crate::tokens::id::id("y"),
            TokenHash::of(b"example-grafana"),
            vec![],
        );
        let own = TokenRecord::new(
            crate::tokens::id::id("z"),
            TokenHash::of(b"a real secret"),
            vec![],
        );
        let w = warnings(&[demo, example, own]);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("\"x\"") && w[0].contains("(config/tokens.yaml)"),
            "{w:?}"
        );
        assert!(w[1].contains("config/examples/tokens.yaml"), "{w:?}");
    }
}
