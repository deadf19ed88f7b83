//! Canonical JSON: the byte form that signatures and hashes cover.
//!
//! Spec: appendices, "Canonical JSON": the shortest UTF-8 encoding, object keys sorted by
//! code point, integers only in `[-(2**53)+1, (2**53)-1]`, no exponents, no fractions, no `-0`.
//! A number that arrives as a float but is integral (the spec's `1e10` and `-0` example) is
//! written as that integer; a real fraction or an out-of-range number is an error.
//!
//! Rooms v1 to v5 "MUST NOT strictly enforce" that (`rooms/fragments/v1-canonical-json.md`):
//! their events may hold floats and integers out of range, and servers hash and sign them
//! as Synapse (whose JSON encoder writes Python's `repr` of a float) writes them:
//! [`Numbers::Lenient`].

use serde_json::{Map, Number, Value};

use super::room_version::RoomVersion;

/// How numbers are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numbers {
    /// Integers within ±(2^53 - 1) only; an integral float is written as the integer.
    Canonical,
    /// Any integer as it is, and a float as Python's `repr` writes it (`50.57`, `100.0`,
    /// `1e+16`, `1e-05`): what servers hash in rooms v1 to v5.
    Lenient,
}

impl Numbers {
    /// The numbers of events in rooms of `version`.
    pub fn of(version: RoomVersion) -> Self {
        if version.strict_canonical_json() {
            Self::Canonical
        } else {
            Self::Lenient
        }
    }
}

/// The largest magnitude canonical JSON allows: 2**53 - 1.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CanonicalJsonError {
    /// A number with a fractional part, or NaN/infinity.
    NotAnInteger(String),
    /// An integer outside the safe range.
    OutOfRange(String),
}

impl std::fmt::Display for CanonicalJsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotAnInteger(n) => write!(f, "number {n} is not an integer"),
            Self::OutOfRange(n) => write!(f, "integer {n} is outside the canonical JSON range"),
        }
    }
}

impl std::error::Error for CanonicalJsonError {}

/// Encodes `value` as canonical JSON bytes.
pub fn to_canonical_bytes(value: &Value) -> Result<Vec<u8>, CanonicalJsonError> {
    to_bytes(value, Numbers::Canonical)
}

/// Encodes `value` as canonical JSON bytes with numbers written as `numbers` says
/// ([`Numbers::Lenient`] never fails).
pub fn to_bytes(value: &Value, numbers: Numbers) -> Result<Vec<u8>, CanonicalJsonError> {
    let mut out = Vec::with_capacity(256);
    write_value(&mut out, value, numbers)?;
    Ok(out)
}

/// Encodes `value` as a canonical JSON string.
pub fn to_canonical_string(value: &Value) -> Result<String, CanonicalJsonError> {
    let bytes = to_canonical_bytes(value)?;
    // The writer only ever emits valid UTF-8: ASCII punctuation plus whole `str`s.
    Ok(String::from_utf8(bytes).expect("canonical JSON writer emits UTF-8"))
}

/// Encodes an object as canonical JSON, leaving out the top-level keys in `skip`.
///
/// Signing and hashing exclude `signatures`, `unsigned` (and `hashes`) without cloning the
/// object first.
pub fn object_to_canonical_bytes_without(
    object: &Map<String, Value>,
    skip: &[&str],
) -> Result<Vec<u8>, CanonicalJsonError> {
    object_to_bytes_without(object, skip, Numbers::Canonical)
}

/// As [`object_to_canonical_bytes_without`], with numbers written as `numbers` says.
pub fn object_to_bytes_without(
    object: &Map<String, Value>,
    skip: &[&str],
    numbers: Numbers,
) -> Result<Vec<u8>, CanonicalJsonError> {
    let mut out = Vec::with_capacity(512);
    write_object(&mut out, object, skip, numbers)?;
    Ok(out)
}

/// The length of `value` written as [`to_bytes`] writes it, counted without writing it
/// (the size check of every received PDU), with the same errors.
pub fn encoded_len(value: &Value, numbers: Numbers) -> Result<usize, CanonicalJsonError> {
    Ok(match value {
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(n) => match numbers {
            Numbers::Canonical => decimal_len(canonical_integer(n)?),
            Numbers::Lenient => lenient_number(n).len(),
        },
        Value::String(s) => string_len(s),
        Value::Array(items) => {
            let mut len = 2 + items.len().saturating_sub(1);
            for item in items {
                len += encoded_len(item, numbers)?;
            }
            len
        }
        Value::Object(map) => {
            let mut len = 2 + map.len().saturating_sub(1);
            for (key, value) in map {
                len += string_len(key) + 1 + encoded_len(value, numbers)?;
            }
            len
        }
    })
}

/// Digits (and sign) of an integer in base 10.
fn decimal_len(n: i64) -> usize {
    let digits = n
        .unsigned_abs()
        .checked_ilog10()
        .map_or(1, |d| d as usize + 1);
    digits + usize::from(n < 0)
}

/// The length of a string as [`write_string`] writes it.
fn string_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    if is_plain(bytes) {
        return bytes.len() + 2;
    }
    2 + bytes
        .iter()
        .map(|&b| match b {
            b'"' | b'\\' | 0x08 | 0x09 | 0x0a | 0x0c | 0x0d => 2,
            0x00..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// Whether a string needs no escape (most do not): one pass without early exit, which
/// the compiler vectorises.
fn is_plain(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |plain, &b| {
        plain & (b >= 0x20) & (b != b'"') & (b != b'\\')
    })
}

/// Checks that every number in `value` is a canonical integer.
pub fn validate(value: &Value) -> Result<(), CanonicalJsonError> {
    match value {
        Value::Number(n) => canonical_integer(n).map(|_| ()),
        Value::Array(items) => items.iter().try_for_each(validate),
        Value::Object(map) => map.values().try_for_each(validate),
        _ => Ok(()),
    }
}

fn write_value(
    out: &mut Vec<u8>,
    value: &Value,
    numbers: Numbers,
) -> Result<(), CanonicalJsonError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => match numbers {
            Numbers::Canonical => {
                let int = canonical_integer(n)?;
                write_integer(out, int);
            }
            Numbers::Lenient => out.extend_from_slice(lenient_number(n).as_bytes()),
        },
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item, numbers)?;
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(out, map, &[], numbers)?,
    }
    Ok(())
}

/// serde_json's `Map` is a `BTreeMap<String, _>` (the `preserve_order` feature is never
/// enabled, a test guards it), so iteration is in byte order, which for UTF-8 is code point
/// order, exactly what the spec asks.
fn write_object(
    out: &mut Vec<u8>,
    map: &Map<String, Value>,
    skip: &[&str],
    numbers: Numbers,
) -> Result<(), CanonicalJsonError> {
    out.push(b'{');
    let mut first = true;
    for (key, value) in map {
        if skip.contains(&key.as_str()) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_string(out, key);
        out.push(b':');
        write_value(out, value, numbers)?;
    }
    out.push(b'}');
    Ok(())
}

fn canonical_integer(n: &Number) -> Result<i64, CanonicalJsonError> {
    if let Some(i) = n.as_i64() {
        return if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&i) {
            Ok(i)
        } else {
            Err(CanonicalJsonError::OutOfRange(n.to_string()))
        };
    }
    if n.as_u64().is_some() {
        return Err(CanonicalJsonError::OutOfRange(n.to_string()));
    }
    let f = n
        .as_f64()
        .ok_or_else(|| CanonicalJsonError::NotAnInteger(n.to_string()))?;
    if !f.is_finite() || f.fract() != 0.0 {
        return Err(CanonicalJsonError::NotAnInteger(n.to_string()));
    }
    if f.abs() > MAX_SAFE_INTEGER as f64 {
        return Err(CanonicalJsonError::OutOfRange(n.to_string()));
    }
    // Integral and within ±2**53, so the conversion is exact; `-0.0` becomes `0`.
    Ok(f as i64)
}

/// An integer as it is; a float as Python's `repr` writes it.
fn lenient_number(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        python_float_repr(n.as_f64().unwrap_or(0.0))
    }
}

/// Python's `repr` of a finite float (CPython `float_repr_style` "short"): the shortest
/// digits that read back as the same float, positional with at least one digit after
/// the point (`100.0`) when the decimal point falls between 10^-4 and 10^16, else in
/// exponent form with a signed exponent of at least two digits (`1e+16`, `1.5e-07`).
fn python_float_repr(f: f64) -> String {
    let sign = if f.is_sign_negative() { "-" } else { "" };
    // Rust's `{:e}` writes the same shortest round-trip digits: `d.ddde±x`.
    let scientific = format!("{:e}", f.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if digits.bytes().all(|b| b == b'0') {
        return format!("{sign}0.0");
    }
    // Where the decimal point falls: value = 0.DIGITS × 10^point.
    let point = exponent.parse::<i32>().unwrap_or(0) + 1;
    let count = digits.len() as i32;
    let body = if !(-3..=16).contains(&point) {
        let exponent = point - 1;
        let rest = &digits[1..];
        let dot = if rest.is_empty() { "" } else { "." };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!(
            "{}{dot}{rest}e{exp_sign}{:02}",
            &digits[..1],
            exponent.abs()
        )
    } else if point <= 0 {
        format!("0.{}{digits}", "0".repeat((-point) as usize))
    } else if point < count {
        format!(
            "{}.{}",
            &digits[..point as usize],
            &digits[point as usize..]
        )
    } else {
        format!("{digits}{}.0", "0".repeat((point - count) as usize))
    };
    format!("{sign}{body}")
}

/// An integer in base 10, without a `String` in between.
fn write_integer(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    let mut digits = [0u8; 20];
    let mut rest = n.unsigned_abs();
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Spec grammar: escape `"`, `\`, and control characters (the five with short escapes as
/// such, the rest as lowercase `\u00XX`); everything else is written as raw UTF-8.
fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    if is_plain(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x09 => b"\\t",
            0x0a => b"\\n",
            0x0c => b"\\f",
            0x0d => b"\\r",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(input: &str) -> String {
        let value: Value = serde_json::from_str(input).unwrap();
        to_canonical_string(&value).unwrap()
    }

    /// Spec: appendices, "Canonical JSON", "Examples", every pair verbatim.
    #[test]
    fn spec_canonical_json_examples() {
        assert_eq!(canon("{}"), "{}");
        assert_eq!(
            canon(
                r#"{
    "one": 1,
    "two": "Two"
}"#
            ),
            r#"{"one":1,"two":"Two"}"#
        );
        assert_eq!(
            canon(
                r#"{
    "b": "2",
    "a": "1"
}"#
            ),
            r#"{"a":"1","b":"2"}"#
        );
        assert_eq!(canon(r#"{"b":"2","a":"1"}"#), r#"{"a":"1","b":"2"}"#);
        assert_eq!(
            canon(
                r#"{
    "auth": {
        "success": true,
        "mxid": "@john.doe:example.com",
        "profile": {
            "display_name": "John Doe",
            "three_pids": [
                {
                    "medium": "email",
                    "address": "john.doe@example.org"
                },
                {
                    "medium": "msisdn",
                    "address": "123456789"
                }
            ]
        }
    }
}"#
            ),
            r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}"#
        );
        assert_eq!(
            canon(
                r#"{
    "a": "日本語"
}"#
            ),
            r#"{"a":"日本語"}"#
        );
        assert_eq!(
            canon(
                r#"{
    "本": 2,
    "日": 1
}"#
            ),
            r#"{"日":1,"本":2}"#
        );
        assert_eq!(
            canon(
                r#"{
    "a": "\u65E5"
}"#
            ),
            r#"{"a":"日"}"#
        );
        assert_eq!(
            canon(
                r#"{
    "a": null
}"#
            ),
            r#"{"a":null}"#
        );
        assert_eq!(
            canon(
                r#"{
    "a": -0,
    "b": 1e10
}"#
            ),
            r#"{"a":0,"b":10000000000}"#
        );
    }

    /// Guards against a dependency enabling serde_json's `preserve_order`, which would
    /// silently break every signature we make.
    #[test]
    fn serde_json_maps_iterate_sorted() {
        let value: Value = serde_json::from_str(r#"{"b":1,"a":2}"#).unwrap();
        assert_eq!(serde_json::to_string(&value).unwrap(), r#"{"a":2,"b":1}"#);
    }

    #[test]
    fn control_characters_use_the_grammar_escapes() {
        let value = Value::String("\u{8}\t\n\u{c}\r\u{1}\u{1f}\"\\\u{7f}é".into());
        assert_eq!(
            to_canonical_string(&value).unwrap(),
            "\"\\b\\t\\n\\f\\r\\u0001\\u001f\\\"\\\\\u{7f}é\""
        );
    }

    #[test]
    fn integer_range_is_enforced() {
        assert_eq!(
            canon("[9007199254740991,-9007199254740991]"),
            "[9007199254740991,-9007199254740991]"
        );
        let too_big: Value = serde_json::from_str("9007199254740992").unwrap();
        assert!(matches!(
            to_canonical_bytes(&too_big),
            Err(CanonicalJsonError::OutOfRange(_))
        ));
        let huge: Value = serde_json::from_str("18446744073709551615").unwrap();
        assert!(matches!(
            to_canonical_bytes(&huge),
            Err(CanonicalJsonError::OutOfRange(_))
        ));
        let float_big: Value = serde_json::from_str("1e300").unwrap();
        assert!(matches!(
            to_canonical_bytes(&float_big),
            Err(CanonicalJsonError::OutOfRange(_))
        ));
    }

    #[test]
    fn fractions_are_refused() {
        let value: Value = serde_json::from_str(r#"{"a":1.5}"#).unwrap();
        assert!(matches!(
            to_canonical_bytes(&value),
            Err(CanonicalJsonError::NotAnInteger(_))
        ));
        assert!(validate(&value).is_err());
        assert!(validate(&serde_json::json!({"a":[1,2,{"b":3}]})).is_ok());
    }

    #[test]
    fn skipping_top_level_keys() {
        let value = serde_json::json!({"a":1,"signatures":{"x":{}},"unsigned":{"age":1},"z":{"unsigned":1}});
        let bytes = object_to_canonical_bytes_without(
            value.as_object().unwrap(),
            &["signatures", "unsigned"],
        )
        .unwrap();
        assert_eq!(bytes, br#"{"a":1,"z":{"unsigned":1}}"#);
    }

    /// Rooms v1 to v5: numbers as Synapse's encoder writes them (Python's `repr` of a
    /// float; integers of any size as they are). Expected strings from CPython 3.
    #[test]
    fn lenient_numbers_are_written_as_python_does() {
        for (input, python) in [
            ("50.57", "50.57"),
            ("100.0", "100.0"),
            ("1e2", "100.0"),
            ("-0.0", "-0.0"),
            ("0.0", "0.0"),
            ("0.0001", "0.0001"),
            ("0.00001", "1e-05"),
            ("1.5e-7", "1.5e-07"),
            ("1e15", "1000000000000000.0"),
            ("1e16", "1e+16"),
            ("12345678901234567.0", "1.2345678901234568e+16"),
            ("5.114698E4", "51146.98"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("5e-324", "5e-324"),
            ("123456789.123", "123456789.123"),
            ("-2.5", "-2.5"),
        ] {
            let value: Value = serde_json::from_str(input).unwrap();
            let written = to_bytes(&value, Numbers::Lenient).unwrap();
            assert_eq!(String::from_utf8(written).unwrap(), python, "{input}");
        }
        let big: Value =
            serde_json::from_str(r#"{"b":9007199254740993,"a":-9007199254740993}"#).unwrap();
        assert_eq!(
            to_bytes(&big, Numbers::Lenient).unwrap(),
            br#"{"a":-9007199254740993,"b":9007199254740993}"#
        );
        assert!(to_canonical_bytes(&big).is_err());
        // Integral floats differ: canonical JSON writes the integer, Python the float.
        let integral: Value = serde_json::from_str(r#"{"a":1e10}"#).unwrap();
        assert_eq!(
            to_canonical_bytes(&integral).unwrap(),
            br#"{"a":10000000000}"#
        );
        assert_eq!(
            to_bytes(&integral, Numbers::Lenient).unwrap(),
            br#"{"a":10000000000.0}"#
        );
    }
}
