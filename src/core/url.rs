//! Percent-encoding of path segments and query values (RFC 3986), for the URLs we build
//! to other servers: ids such as `$event`, `@user:server` and `#alias:server` hold
//! reserved characters.

/// `text` with every byte outside the unreserved set (`A-Z a-z 0-9 - . _ ~`) written as
/// `%XX`.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The values of `name` in a query string (`a=1&ver=10&ver=11`), percent-decoded (`+` as
/// a space), in order: what a repeated parameter such as `make_join`'s `ver` needs.
pub fn query_values(query: &str, name: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key) == name).then(|| decode(value))
        })
        .collect()
}

/// `text` with `%XX` escapes and `+` decoded; malformed escapes are kept as written and
/// invalid UTF-8 replaced.
pub fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_query_values_are_decoded_in_order() {
        assert_eq!(
            query_values("ver=10&ver=11&x=1&ver=org.example%2Fv", "ver"),
            ["10", "11", "org.example/v"]
        );
        assert!(query_values("", "ver").is_empty());
        assert_eq!(query_values("v%65r=a+b", "ver"), ["a b"]);
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(decode("%C3%A9"), "é");
    }

    #[test]
    fn reserved_characters_are_encoded() {
        assert_eq!(encode("$abc-_.~"), "%24abc-_.~");
        assert_eq!(encode("@bob:example.org"), "%40bob%3Aexample.org");
        assert_eq!(encode("#room/a b"), "%23room%2Fa%20b");
        assert_eq!(encode("é"), "%C3%A9");
    }
}
