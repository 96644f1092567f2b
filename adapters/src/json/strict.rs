//! A strict JSON parse for partner bodies: one meaning per document, or an error.
//!
//! `serde_json::from_slice::<Value>` is lenient in two ways that let a partner show routing one
//! document and an endpoint another (a `format = "json"` endpoint receives the original bytes):
//!
//! - a duplicate key is merged, the last value winning, while the bytes keep both;
//! - with the workspace's `raw_value` feature, an object whose key is
//!   `$serde_json::private::RawValue` (compared after unescaping) is read as the JSON *inside*
//!   its string value, which also restarts the 128-level recursion limit.
//!
//! [`parse_strict`] builds the `Value` with its own visitor instead: a key already present in
//! its object is refused, and so is any key of serde_json's private namespace
//! (`$serde_json::private::…`; no XML name can start with `$`). It reads through
//! `serde_json::Deserializer`, so serde_json's recursion limit still bounds the nesting (and
//! with it this visitor's recursion), and refuses trailing bytes.
//!
//! Numbers keep their text: with the workspace's `arbitrary_precision` feature, serde_json hands
//! a number that is not an integer within 64 bits to the visitor as a one-entry map,
//! `$serde_json::private::Number` -> the number's text. That key cannot be told from the same
//! key in the input by its text, so [`Key`] tells them apart by how their deserializers answer
//! `deserialize_option`: serde_json's map-key deserializer answers `visit_some` (an object key
//! is never null), its number-key deserializer answers everything with the token string.
//! `tests/json_strict.rs` pins both (numbers keep their text; the key in the input is refused).

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The prefix of serde_json's magic keys (`RawValue`, and `Number` under `arbitrary_precision`).
const PRIVATE_KEY_PREFIX: &str = "$serde_json::private::";

/// The key serde_json gives a number it hands over as text (`arbitrary_precision`).
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// Parses a JSON document, refusing duplicate keys, serde_json's private keys, nesting deeper
/// than serde_json's limit (128) and anything after the value. The error is serde_json's
/// message, with line and column.
pub fn parse_strict(json: &[u8]) -> Result<Value, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let value = StrictValue.deserialize(&mut deserializer).map_err(|e| e.to_string())?;
    deserializer.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// Seed (and visitor) for one JSON value, read strictly.
#[derive(Clone, Copy)]
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // As serde_json's own `Value` visitor: JSON text has no NaN or infinity.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        // Keys arrive unescaped, so `Raw\u0056alue` is seen here as `RawValue`.
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let key = match key {
                Key::Input(key) => key,
                // serde_json's number map has this one entry (see the module note).
                Key::Number => {
                    let text: String = map.next_value()?;
                    let number = text.parse::<Number>().map_err(de::Error::custom)?;
                    return Ok(Value::Number(number));
                }
            };
            if key.starts_with(PRIVATE_KEY_PREFIX) {
                return Err(de::Error::custom(format_args!("reserved key `{key}` is not allowed")));
            }
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
            }
            let value = map.next_value_seed(StrictValue)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// An object key: one from the input, or serde_json's number token (see the module note).
enum Key {
    Input(String),
    Number,
}

/// Seed (and visitor) for an object key.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    /// A key from the input: serde_json's map-key deserializer answers `deserialize_option` so.
    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        <String as serde::Deserialize>::deserialize(deserializer).map(Key::Input)
    }

    /// serde_json's number-key deserializer answers every request with its token.
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        if v == NUMBER_TOKEN { Ok(Key::Number) } else { Err(E::custom(format_args!("unexpected key `{v}`"))) }
    }
}
