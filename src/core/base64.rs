//! Unpadded Base64, standard and URL-safe.
//!
//! Spec: appendices, "Unpadded Base64" and "URL-safe unpadded Base64". Decoding accepts
//! input with or without padding, as the spec recommends.

use base64::alphabet;
use base64::engine::general_purpose::{
    GeneralPurpose, GeneralPurposeConfig, STANDARD_NO_PAD, URL_SAFE_NO_PAD,
};
use base64::engine::DecodePaddingMode;
use base64::Engine;

/// Decoding is lenient as the spec asks: padding optional, and non-zero trailing bits
/// accepted (the spec's own test seed `…XA1` has them).
const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_encode_padding(false)
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// Why a Base64 string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base64Error;

impl std::fmt::Display for Base64Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid base64")
    }
}

impl std::error::Error for Base64Error {}

/// Standard alphabet, no `=` padding.
pub fn encode(bytes: impl AsRef<[u8]>) -> String {
    STANDARD_NO_PAD.encode(bytes)
}

/// URL-safe alphabet (`-`, `_`), no `=` padding.
pub fn encode_url_safe(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Standard alphabet, padding optional.
pub fn decode(text: &str) -> Result<Vec<u8>, Base64Error> {
    STANDARD_LENIENT.decode(text).map_err(|_| Base64Error)
}

/// URL-safe alphabet, padding optional.
pub fn decode_url_safe(text: &str) -> Result<Vec<u8>, Base64Error> {
    URL_SAFE_LENIENT.decode(text).map_err(|_| Base64Error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spec: appendices, "Unpadded Base64", the examples verbatim.
    #[test]
    fn spec_unpadded_base64_examples() {
        let cases = [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(encode(plain), encoded);
            assert_eq!(decode(encoded).unwrap(), plain.as_bytes());
        }
    }

    #[test]
    fn decoding_accepts_padding() {
        assert_eq!(decode("Zg==").unwrap(), b"f");
        assert_eq!(decode_url_safe("Zm8=").unwrap(), b"fo");
    }

    #[test]
    fn url_safe_uses_minus_and_underscore() {
        let bytes = [0xfb, 0xff, 0xfe];
        assert_eq!(encode(bytes), "+//+");
        assert_eq!(encode_url_safe(bytes), "-__-");
        assert_eq!(decode_url_safe("-__-").unwrap(), bytes);
        assert!(decode_url_safe("+//+").is_err());
    }

    #[test]
    fn decoding_accepts_non_zero_trailing_bits() {
        // The spec's signing key seed ends in a character whose low bits are not zero.
        let seed = decode("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1").unwrap();
        assert_eq!(seed.len(), 32);
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(decode("!!!"), Err(Base64Error));
    }
}
