//! `docs/configuration.md` names every key of `gateway.yaml`.
//!
//! The key paths are read from the serde schema itself: a probing
//! deserializer walks `schema::Config` the way serde would walk a document
//! that sets every key, and records each path it is asked for. A key added
//! to the schema without a line in the reference fails this test.

use serde::de::DeserializeOwned;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

use super::schema;

/// One key the schema accepts: its path (`listen[].tls.cert`) and, for a
/// field of a rate (`{ requests, per, burst }`), the field's own name.
#[derive(Debug)]
struct Key {
    path: String,
    rate_field: Option<&'static str>,
}

/// A deserializer that answers every request with a placeholder and
/// records the struct fields it is asked for.
struct Probe<'a> {
    path: String,
    in_rate: bool,
    keys: &'a mut Vec<Key>,
}

#[derive(Debug)]
struct ProbeError(String);

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProbeError {}

impl de::Error for ProbeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        ProbeError(msg.to_string())
    }
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = ProbeError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, ProbeError> {
        Err(ProbeError(format!(
            "{}: a kind of value the probe does not know; teach doc_coverage.rs",
            self.path
        )))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_bool(false)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_u32(1)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_u64(1)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_str("x")
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_str("x")
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_some(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_seq(OneElement {
            probe: Some(Probe {
                path: format!("{}[]", self.path),
                in_rate: false,
                keys: self.keys,
            }),
        })
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        // A map of free keys (none today): its own path is the key.
        visitor.visit_map(Fields {
            fields: &[],
            next: 0,
            probe: self,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        visitor.visit_map(Fields {
            fields,
            next: 0,
            probe: Probe {
                in_rate: name == "RateSpec",
                ..self
            },
        })
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u128 f32 f64 char bytes byte_buf unit
        unit_struct newtype_struct tuple tuple_struct enum identifier
        ignored_any
    }
}

/// A struct's fields, each key then its probed value.
struct Fields<'a> {
    fields: &'static [&'static str],
    next: usize,
    probe: Probe<'a>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = ProbeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ProbeError> {
        let Some(field) = self.fields.get(self.next) else {
            return Ok(None);
        };
        seed.deserialize(field.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ProbeError> {
        let field = self.fields[self.next];
        self.next += 1;
        let path = if self.probe.path.is_empty() {
            field.to_string()
        } else {
            format!("{}.{field}", self.probe.path)
        };
        self.probe.keys.push(Key {
            path: path.clone(),
            rate_field: self.probe.in_rate.then_some(field),
        });
        seed.deserialize(Probe {
            path,
            in_rate: false,
            keys: self.probe.keys,
        })
    }
}

/// A sequence of one probed element.
struct OneElement<'a> {
    probe: Option<Probe<'a>>,
}

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = ProbeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ProbeError> {
        match self.probe.take() {
            Some(probe) => seed.deserialize(probe).map(Some),
            None => Ok(None),
        }
    }
}

/// Every key path `T` accepts.
fn keys_of<T: DeserializeOwned>() -> Vec<Key> {
    let mut keys = Vec::new();
    T::deserialize(Probe {
        path: String::new(),
        in_rate: false,
        keys: &mut keys,
    })
    .expect("probing the schema");
    keys
}

#[test]
fn the_probe_finds_nested_keys_list_elements_and_rate_fields() {
    let keys = keys_of::<schema::Config>();
    let paths: Vec<&str> = keys.iter().map(|k| k.path.as_str()).collect();
    for path in [
        "listen",
        "listen[].tls.cert",
        "routes[].upstream_ca",
        "limits.per_token.burst",
        "timeouts.shutdown_grace",
    ] {
        assert!(paths.contains(&path), "{path} not in {paths:?}");
    }
    let rate = keys
        .iter()
        .find(|k| k.path == "limits.failed_auth_per_ip.per")
        .unwrap();
    assert_eq!(rate.rate_field, Some("per"));
}

#[test]
fn the_configuration_reference_names_every_key_of_gateway_yaml() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .expect("docs/configuration.md");
    let mut missing: Vec<String> = keys_of::<schema::Config>()
        .into_iter()
        .filter_map(|key| {
            // A rate's fields are described once, under "Rates"; every other
            // key has its own row, named by its full path.
            let name = key.rate_field.map_or(key.path.clone(), str::to_string);
            (!doc.contains(&format!("`{name}`"))).then_some(name)
        })
        .collect();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not describe these keys of gateway.yaml \
         (add a row naming each in backticks): {missing:?}"
    );
}
