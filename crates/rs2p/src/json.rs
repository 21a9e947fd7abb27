//! JSON ↔ msgpack value mapping, as used by `rs2p node --json` (feature
//! `json`).
//!
//! | msgpack | JSON |
//! |---|---|
//! | nil, bool, str, array | null, bool, string, array |
//! | int | integer number |
//! | float32/64 | number with a fraction or exponent (`1.0`); NaN and infinities as `{"$float": "NaN" \| "inf" \| "-inf"}` |
//! | bin | `{"$bytes": "<base64>"}` |
//! | map with only str keys | object |
//! | other map | `{"$map": [[key, value], ...]}` |
//! | ext | `{"$ext": [type, "<base64>"]}` |

use std::io::Write;

use crate::Value;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Map, Number, Value as Json};

/// msgpack → JSON.
pub fn to_json(v: &Value) -> Json {
    match v {
        Value::Nil => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) => {
            if let Some(u) = i.as_u64() {
                Json::Number(u.into())
            } else {
                Json::Number(i.as_i64().unwrap_or_default().into())
            }
        }
        Value::F32(f) => float(f64::from(*f)),
        Value::F64(f) => float(*f),
        Value::String(s) => Json::String(match s.as_str() {
            Some(s) => s.to_string(),
            None => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        }),
        Value::Binary(b) => json!({ "$bytes": B64.encode(b) }),
        Value::Array(a) => Json::Array(a.iter().map(to_json).collect()),
        Value::Map(m) => {
            if m.iter().all(|(k, _)| k.as_str().is_some()) {
                let mut obj = Map::new();
                for (k, v) in m {
                    obj.insert(k.as_str().unwrap_or_default().to_string(), to_json(v));
                }
                Json::Object(obj)
            } else {
                json!({ "$map": m.iter().map(|(k, v)| json!([to_json(k), to_json(v)])).collect::<Vec<_>>() })
            }
        }
        Value::Ext(t, d) => json!({ "$ext": [t, B64.encode(d)] }),
    }
}

/// msgpack → JSON text, appended to `out`: the same JSON as [`to_json`]
/// (maps aside, objects keep the msgpack key order), written directly,
/// without building a [`Json`] tree first. For hot paths such as the
/// CLI's message events.
pub fn write_json(out: &mut Vec<u8>, v: &Value) {
    // One writer for both: a borrowed view of an owned value is cheap.
    write_json_ref(out, &v.as_ref());
}

/// As [`write_json`], for a value borrowed from a frame
/// ([`rs2p_proto::wire::Packet::value_refs`]): a message's packets
/// written as JSON without copying them into owned values first.
pub fn write_json_ref(out: &mut Vec<u8>, v: &rs2p_proto::ValueRef<'_>) {
    use rs2p_proto::ValueRef as R;
    match v {
        R::Nil => out.extend_from_slice(b"null"),
        R::Boolean(true) => out.extend_from_slice(b"true"),
        R::Boolean(false) => out.extend_from_slice(b"false"),
        R::Integer(i) => {
            let _ = match i.as_u64() {
                Some(u) => write!(out, "{u}"),
                None => write!(out, "{}", i.as_i64().unwrap_or_default()),
            };
        }
        R::String(s) => match s.as_str() {
            Some(s) => write_str(out, s),
            None => write_str(out, &String::from_utf8_lossy(s.as_bytes())),
        },
        R::Binary(b) => write_bytes(out, b),
        R::Array(a) => {
            out.push(b'[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_ref(out, item);
            }
            out.push(b']');
        }
        // Rare in hot paths: floats, maps (whose keys may repeat) and
        // extensions go through the JSON tree.
        other => {
            let _ = serde_json::to_writer(&mut *out, &to_json(&other.to_owned()));
        }
    }
}

fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(b"{\"$bytes\":\"");
    let start = out.len();
    out.resize(start + base64::encoded_len(b.len(), true).unwrap_or(0), 0);
    let n = B64.encode_slice(b, &mut out[start..]).unwrap_or(0);
    out.truncate(start + n);
    out.extend_from_slice(b"\"}");
}

/// A msgpack value read straight from JSON text (`serde_json::from_str`
/// into this type), with the mapping of [`from_json`] but without building
/// a JSON tree first: for hot paths such as the CLI's broadcast lines.
/// Objects become maps sorted by key (duplicates: the last wins), as
/// through [`from_json`], so both paths give the same bytes. Its errors are
/// serde errors; callers wanting [`from_json`]'s messages re-parse.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonValue(pub Value);

/// serde_json's name for a number kept as text (`arbitrary_precision`).
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

impl<'de> serde::Deserialize<'de> for JsonValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor).map(JsonValue)
    }
}

struct ValueVisitor;

/// A string borrowed from the input when it has no escapes, owned when it
/// has (keys and number texts, read without an allocation each).
struct Text<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(std::borrow::Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(std::borrow::Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Text<'de>, E> {
                Ok(Text(std::borrow::Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> serde::de::Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Nil)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Boolean(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::from(i))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        Ok(if let Ok(i) = i64::try_from(u) { Value::from(i) } else { Value::from(u) })
    }
    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Value::F64(f))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::from(s))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(JsonValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        use serde::de::Error;
        let Some(Text(first)) = map.next_key::<Text<'de>>()? else { return Ok(Value::Map(Vec::new())) };
        if first == NUMBER_TOKEN {
            let Text(text) = map.next_value()?;
            // The common integers directly (as `from_json` maps them:
            // i64 when it fits, else u64); the rest through a `Number`.
            if let Ok(i) = text.parse::<i64>() {
                return Ok(Value::from(i));
            }
            if let Ok(u) = text.parse::<u64>() {
                return Ok(Value::from(u));
            }
            let n: Number = text.parse().map_err(A::Error::custom)?;
            return from_json(&Json::Number(n)).map_err(A::Error::custom);
        }
        let first = first.into_owned();
        if first.starts_with('$') {
            // Maybe one of the tagged forms: decided once the object ends.
            let v: Json = map.next_value()?;
            let mut next = map.next_key::<String>()?;
            if let (None, "$bytes", Json::String(text)) = (&next, first.as_str(), &v) {
                // The usual `{"$bytes": "..."}`, straight to bytes.
                return B64.decode(text).map(Value::Binary).map_err(|e| A::Error::custom(format!("bad base64: {e}")));
            }
            // As a JSON tree would have it: the last duplicate wins.
            let mut rest = Map::new();
            rest.insert(first, v);
            while let Some(k) = next {
                rest.insert(k, map.next_value::<Json>()?);
                next = map.next_key::<String>()?;
            }
            return from_json(&Json::Object(rest)).map_err(A::Error::custom);
        }
        let mut entries = vec![(first, map.next_value::<JsonValue>()?.0)];
        while let Some(k) = map.next_key::<String>()? {
            entries.push((k, map.next_value::<JsonValue>()?.0));
        }
        // As a JSON tree would have it: sorted by key, the last duplicate wins.
        entries.reverse();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|a, b| a.0 == b.0);
        Ok(Value::Map(entries.into_iter().map(|(k, v)| (Value::from(k), v)).collect()))
    }
}

/// A JSON string literal, escaped, appended to `out`.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

fn float(f: f64) -> Json {
    match Number::from_f64(f) {
        Some(n) => Json::Number(n),
        None if f.is_nan() => json!({ "$float": "NaN" }),
        None if f > 0.0 => json!({ "$float": "inf" }),
        None => json!({ "$float": "-inf" }),
    }
}

/// Whether a number was written as an integer (no fraction, no exponent).
/// The crate parses with serde_json's `arbitrary_precision`, so the text is
/// the number as it was written.
fn is_integer_literal(n: &Number) -> bool {
    !n.to_string().contains(['.', 'e', 'E'])
}

/// JSON → msgpack.
///
/// # Errors
/// A description of what is malformed (bad base64, bad `$map`, ...).
pub fn from_json(j: &Json) -> Result<Value, String> {
    Ok(match j {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if is_integer_literal(n) {
                // Refused rather than silently turned into a float.
                return Err(format!("integer {n} is out of range (msgpack integers are -2^63 .. 2^64-1)"));
            } else {
                Value::F64(n.as_f64().ok_or("unrepresentable number")?)
            }
        }
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(a) => Value::Array(a.iter().map(from_json).collect::<Result<_, _>>()?),
        Json::Object(o) => {
            if o.len() == 1 {
                let (k, v) = o.iter().next().ok_or("empty object")?;
                match k.as_str() {
                    "$bytes" => {
                        let s = v.as_str().ok_or("$bytes must be a base64 string")?;
                        return Ok(Value::Binary(B64.decode(s).map_err(|e| format!("bad base64: {e}"))?));
                    }
                    "$map" => {
                        let pairs = v.as_array().ok_or("$map must be an array of [key, value]")?;
                        let mut m = Vec::with_capacity(pairs.len());
                        for p in pairs {
                            match p.as_array().map(Vec::as_slice) {
                                Some([k, v]) => m.push((from_json(k)?, from_json(v)?)),
                                _ => return Err("$map entries must be [key, value]".into()),
                            }
                        }
                        return Ok(Value::Map(m));
                    }
                    "$ext" => {
                        let (t, d) = match v.as_array().map(Vec::as_slice) {
                            Some([t, d]) => (t, d),
                            _ => return Err("$ext must be [type, base64]".into()),
                        };
                        let t = t.as_i64().and_then(|t| i8::try_from(t).ok()).ok_or("$ext type must be -128..127")?;
                        let d = B64
                            .decode(d.as_str().ok_or("$ext data must be base64")?)
                            .map_err(|e| format!("bad base64: {e}"))?;
                        return Ok(Value::Ext(t, d));
                    }
                    "$float" => {
                        return Ok(Value::F64(match v.as_str() {
                            Some("NaN") => f64::NAN,
                            Some("inf") => f64::INFINITY,
                            Some("-inf") => f64::NEG_INFINITY,
                            _ => return Err("$float must be \"NaN\", \"inf\" or \"-inf\"".into()),
                        }));
                    }
                    _ => {}
                }
            }
            Value::Map(
                o.iter().map(|(k, v)| Ok((Value::from(k.as_str()), from_json(v)?))).collect::<Result<_, String>>()?,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        let v = Value::Array(vec![
            Value::Nil,
            Value::Boolean(false),
            Value::from(-3),
            Value::from(u64::MAX),
            Value::F64(1.0),
            Value::F64(-0.25),
            Value::from("ünïcode"),
            Value::Binary(vec![0, 255, 7]),
            Value::Map(vec![(Value::from("a"), Value::from(1))]),
            Value::Map(vec![(Value::from(1), Value::from("int key"))]),
            Value::Ext(3, vec![1, 2]),
        ]);
        let j = to_json(&v);
        let text = serde_json::to_string(&j).unwrap();
        let back = from_json(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(back, v);
        assert!(text.contains("1.0"), "floats stay floats: {text}");
        // The direct writer says the same.
        let mut direct = Vec::new();
        write_json(&mut direct, &v);
        assert_eq!(serde_json::from_slice::<Json>(&direct).unwrap(), j);
        for v in [
            Value::from("quote \" and \\ and \u{1}"),
            Value::Binary(vec![]),
            Value::Binary((0..=255).collect()),
            Value::from(i64::MIN),
            Value::F64(f64::NAN),
            Value::Array(vec![Value::Array(vec![]), Value::Nil]),
        ] {
            let mut direct = Vec::new();
            write_json(&mut direct, &v);
            assert_eq!(serde_json::from_slice::<Json>(&direct).unwrap(), to_json(&v), "{v:?}");
        }
    }

    #[test]
    fn non_finite_floats_and_errors() {
        assert!(matches!(from_json(&to_json(&Value::F64(f64::NAN))).unwrap(), Value::F64(f) if f.is_nan()));
        assert_eq!(from_json(&to_json(&Value::F64(f64::INFINITY))).unwrap(), Value::F64(f64::INFINITY));
        assert!(from_json(&json!({"$bytes": "@@@"})).is_err());
        assert!(from_json(&json!({"$map": [[1]]})).is_err());
    }

    #[test]
    fn the_direct_reader_agrees_with_the_tree() {
        for text in [
            r#"[0, {"$bytes": "q6ur"}, -5, 18446744073709551615, 2.5, 1.0, null, true, "s\u00e9"]"#,
            r#"[[1, [2]], {"k": "v", "a": 1, "k": "w"}, {"$map": [[1, 2]]}, {"$float": "NaN"}]"#,
            r#"[{"$ext": [3, "AQI="]}, {"$bytes": "AA==", "other": 1}, {}, [], -9223372036854775808, 1e300]"#,
            r#"[-0, 0, 1E2, {"$bytes": ""}, {"other": 1, "$bytes": "AA=="}, {"$bytes": "AA==", "$bytes": "AQ=="}]"#,
        ] {
            let slow = from_json(&serde_json::from_str(text).unwrap()).unwrap();
            let JsonValue(fast) = serde_json::from_str(text).unwrap();
            // NaN != NaN: compare the encodings.
            assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{text}");
        }
        for bad in
            [r#"[18446744073709551616]"#, r#"[{"$bytes": "!!"}]"#, r#"[{"$float": "wat"}]"#, r#"[{"$bytes": 5}]"#]
        {
            assert!(serde_json::from_str::<JsonValue>(bad).is_err(), "{bad}");
            assert!(from_json(&serde_json::from_str(bad).unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_direct_writer_agrees_with_the_tree() {
        let v = Value::Array(vec![
            Value::Nil,
            Value::Boolean(true),
            Value::from(-5),
            Value::from(u64::MAX),
            Value::from("s\u{e9}\"\n"),
            Value::Binary(vec![0, 1, 255]),
            Value::Array(vec![Value::Binary(vec![]), Value::F64(2.5)]),
            Value::Map(vec![(Value::from("k"), Value::from(1))]),
            Value::Ext(3, vec![1, 2]),
            Value::F32(1.5),
        ]);
        use rs2p_proto::wire::msgpack::{decode_value_refs, decode_values, write_value};
        let mut bytes = Vec::new();
        write_value(&mut bytes, &v);
        // And a string that is not UTF-8 (a str8 of 0xff 'a').
        bytes.extend_from_slice(&[0xa2, 0xff, b'a']);
        let owned = decode_values(&bytes, 0, 2).unwrap();
        let borrowed = decode_value_refs(&bytes, 0, 2).unwrap();
        // The direct writer says what the JSON tree says (compared as
        // parsed JSON: object key order aside).
        for (o, r) in owned.iter().zip(&borrowed) {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            write_json(&mut a, o);
            write_json_ref(&mut b, r);
            let tree = to_json(o);
            assert_eq!(serde_json::from_slice::<Json>(&a).unwrap(), tree);
            assert_eq!(serde_json::from_slice::<Json>(&b).unwrap(), tree);
        }
    }

    #[test]
    fn integers_keep_their_type_or_are_refused() {
        let parse = |t: &str| from_json(&serde_json::from_str(t).unwrap());
        assert_eq!(parse("18446744073709551615").unwrap(), Value::from(u64::MAX));
        assert_eq!(parse("-9223372036854775808").unwrap(), Value::from(i64::MIN));
        let e = parse("18446744073709551616").unwrap_err();
        assert!(e.contains("integer 18446744073709551616 is out of range"), "{e}");
        assert!(parse("-9223372036854775809").is_err());
        assert_eq!(parse("1.8446744073709552e19").unwrap(), Value::F64(1.8446744073709552e19));
        assert_eq!(parse("2.0").unwrap(), Value::F64(2.0));
    }
}
