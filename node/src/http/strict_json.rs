//! JSON bodies read strictly: a key given twice in one object, which
//! `serde_json::Value` resolves silently ("last wins"), is noticed while the
//! value is built, so the body can be refused naming the key.
//!
//! The check routes read their bodies into typed structs first, whose derived
//! `Deserialize` already refuses a repeated field; this module serves their
//! error path (telling the client exactly what is wrong), the items of a
//! batch and the admin bodies.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

use super::error::ApiError;

/// A key given twice in one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub key: String,
    /// 0: a key of the outermost value; n: nested n objects or arrays deep.
    pub depth: usize,
}

/// A JSON value and the first key found duplicated inside it, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Strict {
    pub value: Value,
    pub duplicate: Option<Duplicate>,
}

impl Strict {
    fn plain(value: impl Into<Value>) -> Strict {
        Strict {
            value: value.into(),
            duplicate: None,
        }
    }

    /// The value, or its duplicated key as a 400 `invalid_json` naming the
    /// key; `field` holds it too when it is one of `fields` (the route's
    /// keys of the outermost object).
    pub fn into_value(self, fields: &[&str]) -> Result<Value, ApiError> {
        match self.duplicate {
            None => Ok(self.value),
            Some(d) => {
                let is_field = d.depth == 0 && fields.contains(&d.key.as_str());
                Err(ApiError::duplicate_key(d.key, is_field))
            }
        }
    }
}

/// Parses a whole body: malformed JSON or a duplicated key is a 400
/// `invalid_json` (see [`Strict::into_value`] for `fields`).
pub fn parse(body: &[u8], fields: &[&str]) -> Result<Value, ApiError> {
    serde_json::from_slice::<Strict>(body)
        .map_err(|e| ApiError::invalid_json(format!("malformed JSON: {e}")))?
        .into_value(fields)
}

/// Parses a body that must be one JSON object of `fields` only: as
/// [`parse`], then 400 `invalid_json` for anything but an object and
/// `unknown_field` for a key the route does not know.
pub fn object(body: &[u8], fields: &[&str]) -> Result<serde_json::Map<String, Value>, ApiError> {
    match parse(body, fields)? {
        Value::Object(obj) => {
            if let Some(unknown) = obj.keys().find(|k| !fields.contains(&k.as_str())) {
                return Err(ApiError::unknown_field(unknown, fields));
            }
            Ok(obj)
        }
        _ => Err(ApiError::invalid_json("body must be a JSON object")),
    }
}

/// The string field `name` of `obj`, required; the error names `field`.
pub fn required_str<'a>(
    obj: &'a serde_json::Map<String, Value>,
    name: &str,
    field: impl Into<std::borrow::Cow<'static, str>>,
) -> Result<&'a str, ApiError> {
    match obj.get(name) {
        Some(Value::String(s)) => Ok(s),
        None => Err(ApiError::field(field, format!("missing field `{name}`"))),
        Some(Value::Null) => Err(ApiError::field(
            field,
            format!("`{name}` must not be null (leave an optional field out for its default)"),
        )),
        Some(_) => Err(ApiError::field(field, format!("`{name}` must be a string"))),
    }
}

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

/// Builds a [`Value`] as `serde_json` does, noting the first duplicate.
struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict::plain(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict::plain(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict::plain(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
        Ok(Strict::plain(
            Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }

    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict::plain(v))
    }

    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict::plain(v))
    }

    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict::plain(Value::Null))
    }

    fn visit_none<E>(self) -> Result<Strict, E> {
        Ok(Strict::plain(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Strict, D::Error> {
        Strict::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut items = Vec::new();
        let mut duplicate = None;
        while let Some(item) = seq.next_element::<Strict>()? {
            duplicate = duplicate.or_else(|| nested(item.duplicate));
            items.push(item.value);
        }
        Ok(Strict {
            value: Value::Array(items),
            duplicate,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut object = Map::new();
        let mut duplicate = None;
        while let Some(key) = map.next_key::<String>()? {
            let item: Strict = map.next_value()?;
            duplicate = duplicate.or_else(|| nested(item.duplicate));
            match object.entry(key) {
                Entry::Vacant(e) => {
                    e.insert(item.value);
                }
                Entry::Occupied(e) => {
                    duplicate = duplicate.or_else(|| {
                        Some(Duplicate {
                            key: e.key().clone(),
                            depth: 0,
                        })
                    });
                }
            }
        }
        Ok(Strict {
            value: Value::Object(object),
            duplicate,
        })
    }
}

/// A duplicate found one level further in.
fn nested(d: Option<Duplicate>) -> Option<Duplicate> {
    d.map(|d| Duplicate {
        depth: d.depth + 1,
        ..d
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn duplicate(body: &str) -> Option<Duplicate> {
        serde_json::from_str::<Strict>(body).unwrap().duplicate
    }

    #[test]
    fn finds_the_first_duplicate_at_any_depth() {
        assert_eq!(duplicate(r#"{"a":1,"b":{"c":[1,{"d":1}]}}"#), None);
        let d = |key: &str, depth| {
            Some(Duplicate {
                key: key.into(),
                depth,
            })
        };
        assert_eq!(duplicate(r#"{"a":1,"a":1}"#), d("a", 0));
        assert_eq!(duplicate(r#"{"a":{"b":1,"b":2},"a":3}"#), d("b", 1));
        assert_eq!(duplicate(r#"[{"x":[{"k":1,"k":1}]}]"#), d("k", 3));
        // The same key in sibling objects is no duplicate.
        assert_eq!(duplicate(r#"[{"k":1},{"k":1}]"#), None);
    }

    #[test]
    fn refusal_names_the_key_and_the_field_when_known() {
        let e = parse(br#"{"cost":1,"cost":2}"#, &["cost"]).unwrap_err();
        assert_eq!((e.code, e.field.as_deref()), ("invalid_json", Some("cost")));
        assert!(e.message.contains("`cost`"), "{e}");
        let e = parse(br#"{"x":{"cost":1,"cost":2}}"#, &["cost"]).unwrap_err();
        assert_eq!(e.field, None, "{e}");
        assert!(e.message.contains("`cost`"), "{e}");
        assert_eq!(parse(b"{", &[]).unwrap_err().code, "invalid_json");
    }

    proptest! {
        /// Without a duplicate, the value is exactly what serde_json reads.
        #[test]
        fn same_value_as_serde_json(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let strict = serde_json::from_slice::<Strict>(&bytes);
            let plain = serde_json::from_slice::<Value>(&bytes);
            prop_assert_eq!(strict.is_ok(), plain.is_ok());
            if let (Ok(s), Ok(p)) = (strict, plain) {
                if s.duplicate.is_none() {
                    prop_assert_eq!(s.value, p);
                }
            }
        }

        #[test]
        fn same_value_as_serde_json_for_any_json(v in json_value()) {
            let text = v.to_string();
            let s: Strict = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(s.duplicate, None);
            prop_assert_eq!(s.value, serde_json::from_str::<Value>(&text).unwrap());
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            ".{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{0,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
