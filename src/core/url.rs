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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_characters_are_encoded() {
        assert_eq!(encode("$abc-_.~"), "%24abc-_.~");
        assert_eq!(encode("@bob:example.org"), "%40bob%3Aexample.org");
        assert_eq!(encode("#room/a b"), "%23room%2Fa%20b");
        assert_eq!(encode("é"), "%C3%A9");
    }
}
