//! Strict Ed25519 verification, accepting exactly what ed25519-dalek's `verify_strict`
//! accepts, without decompressing the signature's `R`. (libsodium's
//! `crypto_sign_verify_detached`, which Synapse uses, refuses the same signatures and
//! also keys whose encoding is not canonical; that difference is dalek's and was there
//! before.)
//!
//! Spec: appendices, "Signing Details" (Ed25519 as RFC 8032 defines it). The strict form
//! refuses a non-canonical `s` (`s ≥ ℓ`), and an `R` or a key of small order, and checks
//! the cofactorless equation `[s]B - [k]A = R` by comparing the canonical encoding of the
//! left side with the signature's `R` bytes.
//!
//! `verify_strict` decompresses `R` (a square root, ~10 % of a verification) only to ask
//! whether it has small order. Comparing `R`'s bytes with the canonical encodings of the
//! eight points of small order answers the same, as the comparison at the end refuses any
//! `R` that is not a canonical encoding of the point computed:
//! - an `R` that does not decode, or is not canonical, never equals a canonical encoding;
//! - a canonical `R` of small order is one of the eight;
//! - so what passes here decodes, is not of small order and satisfies the equation, which
//!   is what `verify_strict` accepts, and what `verify_strict` accepts passes here.
//!
//! The tests check the two against each other over valid, altered and crafted signatures.

use std::sync::LazyLock;

use curve25519_dalek::constants::EIGHT_TORSION;
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::VerifyingKey;

/// The canonical encodings of the eight points of small order.
static SMALL_ORDER: LazyLock<[[u8; 32]; 8]> =
    LazyLock::new(|| EIGHT_TORSION.map(|point| point.compress().to_bytes()));

/// Whether `signature` (`R ‖ s`) is `key`'s strict Ed25519 signature of `message`.
pub fn verify(key: &VerifyingKey, message: &[u8], signature: &[u8; 64]) -> bool {
    let (r_bytes, s_bytes) = signature.split_at(32);
    let Ok(s_bytes) = <[u8; 32]>::try_from(s_bytes) else {
        return false;
    };
    let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
        return false;
    };
    if SMALL_ORDER.iter().any(|small| small.as_slice() == r_bytes) {
        return false;
    }
    let point = key.to_edwards();
    if point.is_small_order() {
        return false;
    }
    let mut hash = ring::digest::Context::new(&ring::digest::SHA512);
    hash.update(r_bytes);
    hash.update(key.as_bytes());
    hash.update(message);
    let mut wide = [0u8; 64];
    wide.copy_from_slice(hash.finish().as_ref());
    let k = Scalar::from_bytes_mod_order_wide(&wide);
    let expected = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &-point, &s);
    expected.compress().as_bytes().as_slice() == r_bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
    use ed25519_dalek::{Signature, Signer, SigningKey};

    /// ℓ, the order of the base point, little-endian.
    const ELL: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    /// A deterministic byte stream (xorshift), so failures can be replayed.
    struct Bytes(u64);

    impl Bytes {
        fn next(&mut self) -> u8 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 24) as u8
        }

        fn array<const N: usize>(&mut self) -> [u8; N] {
            std::array::from_fn(|_| self.next())
        }
    }

    fn dalek(key: &VerifyingKey, message: &[u8], signature: &[u8; 64]) -> bool {
        key.verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }

    /// Both verifications answer the same, and that answer is `expected`.
    fn agree(key: &VerifyingKey, message: &[u8], signature: &[u8; 64], expected: bool) {
        assert_eq!(dalek(key, message, signature), expected, "dalek's answer");
        assert_eq!(verify(key, message, signature), expected, "ours");
    }

    /// Adds ℓ to a little-endian 256-bit number (the same scalar mod ℓ, not canonical).
    fn plus_ell(s: [u8; 32]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let sum = u16::from(s[i]) + u16::from(ELL[i]) + carry;
            out[i] = sum as u8;
            carry = sum >> 8;
        }
        out
    }

    #[test]
    fn valid_signatures_pass_and_altered_ones_fail_as_with_verify_strict() {
        let mut bytes = Bytes(0x9e37_79b9_7f4a_7c15);
        for round in 0..200 {
            let signer = SigningKey::from_bytes(&bytes.array());
            let key = signer.verifying_key();
            let message: Vec<u8> = (0..round % 97).map(|_| bytes.next()).collect();
            let signature = signer.sign(&message).to_bytes();
            agree(&key, &message, &signature, true);

            // One bit flipped anywhere in the signature, or in the message.
            let bit = usize::from(bytes.next()) % 512;
            let mut flipped = signature;
            flipped[bit / 8] ^= 1 << (bit % 8);
            let answer = dalek(&key, &message, &flipped);
            assert!(!answer, "a flipped bit must not verify");
            assert_eq!(verify(&key, &message, &flipped), answer);
            if !message.is_empty() {
                let mut other = message.clone();
                other[0] ^= 1;
                agree(&key, &other, &signature, false);
            }

            // Random bytes as a signature (most `s` are not canonical, most `R` do not
            // decode).
            let random: [u8; 64] = bytes.array();
            assert_eq!(
                verify(&key, &message, &random),
                dalek(&key, &message, &random)
            );
        }
    }

    #[test]
    fn a_non_canonical_s_fails_though_it_is_the_same_scalar() {
        let signer = SigningKey::from_bytes(&[3; 32]);
        let key = signer.verifying_key();
        let signature = signer.sign(b"message").to_bytes();
        let mut s = [0u8; 32];
        s.copy_from_slice(&signature[32..]);
        let mut malleable = signature;
        malleable[32..].copy_from_slice(&plus_ell(s));
        agree(&key, b"message", &malleable, false);
    }

    /// Every `R` of small order fails, whatever the key (with a key of prime order only the
    /// identity can satisfy the equation: see the next test); and a key of small order fails
    /// even with a signature that satisfies the cofactorless equation: for the identity
    /// as the key, `R = [s]B` does whatever `k` is.
    #[test]
    fn small_order_r_and_small_order_keys_fail() {
        for (n, torsion) in EIGHT_TORSION.iter().enumerate() {
            let key = SigningKey::from_bytes(&[n as u8 + 1; 32]).verifying_key();
            let mut signature = [0u8; 64];
            signature[..32].copy_from_slice(&torsion.compress().to_bytes());
            agree(&key, b"m", &signature, false);
        }
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let key = VerifyingKey::from_bytes(&identity).expect("the identity decodes");
        let s = Scalar::from_bytes_mod_order([42; 32]);
        let signature = signature_of(&(ED25519_BASEPOINT_POINT * s).compress().to_bytes(), &s);
        let k = Scalar::from_bytes_mod_order([7; 32]);
        let left = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &-key.to_edwards(), &s);
        assert_eq!(
            left.compress().as_bytes().as_slice(),
            &signature[..32],
            "the cofactorless equation holds for this key whatever k is"
        );
        agree(&key, b"m", &signature, false);
    }

    /// With a key of prime order, only `R` = the identity can satisfy the equation with a
    /// small-order `R`: `s = k·a` where `A = [a]B` does. The strict form refuses it for
    /// `R` alone.
    #[test]
    fn the_identity_as_r_fails_though_the_equation_holds() {
        let a = Scalar::from_bytes_mod_order([9; 32]);
        let key = known_key(a);
        let mut r = [0u8; 32];
        r[0] = 1;
        let k = challenge(&r, &key, b"m");
        let s = k * a;
        let signature = signature_of(&r, &s);
        let left = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &-key.to_edwards(), &s);
        assert_eq!(left.compress().as_bytes(), &r, "the equation holds");
        agree(&key, b"m", &signature, false);
    }

    /// `k = H(R ‖ A ‖ M)` as both verifications compute it.
    fn challenge(r: &[u8; 32], key: &VerifyingKey, message: &[u8]) -> Scalar {
        let mut hash = ring::digest::Context::new(&ring::digest::SHA512);
        hash.update(r);
        hash.update(key.as_bytes());
        hash.update(message);
        let mut wide = [0u8; 64];
        wide.copy_from_slice(hash.finish().as_ref());
        Scalar::from_bytes_mod_order_wide(&wide)
    }

    /// The signature `R ‖ s`.
    fn signature_of(r: &[u8; 32], s: &Scalar) -> [u8; 64] {
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(r);
        signature[32..].copy_from_slice(s.as_bytes());
        signature
    }

    /// A key `A = [a]B` whose secret scalar the test knows.
    fn known_key(a: Scalar) -> VerifyingKey {
        VerifyingKey::from_bytes(&(ED25519_BASEPOINT_POINT * a).compress().to_bytes())
            .expect("a point decodes")
    }

    /// `R = [r]B + T` for a small-order `T` and `s = r + k·a` (`k` hashed over that
    /// `R`): the cofactored equation holds, the cofactorless one is off by `T`. Both
    /// refuse it.
    #[test]
    fn an_r_off_by_a_small_order_point_fails() {
        let a = Scalar::from_bytes_mod_order([21; 32]);
        let key = known_key(a);
        let r = Scalar::from_bytes_mod_order([33; 32]);
        for torsion in EIGHT_TORSION.iter().skip(1) {
            let big_r = (ED25519_BASEPOINT_POINT * r + torsion)
                .compress()
                .to_bytes();
            let k = challenge(&big_r, &key, b"text");
            let s = r + k * a;
            let left =
                EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &-key.to_edwards(), &s);
            let right = curve25519_dalek::edwards::CompressedEdwardsY(big_r)
                .decompress()
                .expect("R decodes");
            assert_eq!(
                left.mul_by_cofactor(),
                right.mul_by_cofactor(),
                "the cofactored equation holds"
            );
            let signature = signature_of(&big_r, &s);
            agree(&key, b"text", &signature, false);
        }
        // The same without T verifies (the construction is right).
        let big_r = (ED25519_BASEPOINT_POINT * r).compress().to_bytes();
        let k = challenge(&big_r, &key, b"text");
        let signature = signature_of(&big_r, &(r + k * a));
        agree(&key, b"text", &signature, true);
    }

    /// Encodings of the identity that are not canonical (y = p + 1; x = 0 with the sign
    /// bit set) decode in dalek, and the equation holds for them with `s = k·a`: they are
    /// in no list of small-order encodings here, and only the comparison of encodings
    /// refuses them. Other non-canonical `R` (y ≥ p) fail too.
    #[test]
    fn non_canonical_encodings_of_r_fail() {
        let a = Scalar::from_bytes_mod_order([17; 32]);
        let key = known_key(a);
        let mut p_plus_one = [0xffu8; 32];
        p_plus_one[0] = 0xee;
        p_plus_one[31] = 0x7f;
        let mut signed_zero = [0u8; 32];
        signed_zero[0] = 1;
        signed_zero[31] = 0x80;
        for r in [p_plus_one, signed_zero] {
            let decoded = curve25519_dalek::edwards::CompressedEdwardsY(r)
                .decompress()
                .expect("dalek decodes it");
            assert_eq!(
                decoded.compress().as_bytes()[..],
                [&[1u8][..], &[0; 31]].concat()[..]
            );
            let k = challenge(&r, &key, b"x");
            let s = k * a;
            let signature = signature_of(&r, &s);
            agree(&key, b"x", &signature, false);
        }
        let signer = SigningKey::from_bytes(&[11; 32]);
        let key = signer.verifying_key();
        let signature = signer.sign(b"x").to_bytes();
        // y = p + n for n < 19 (p = 2^255 - 19), the top bit clear.
        for low in 0..19u8 {
            let mut y = [0xffu8; 32];
            y[0] = 0xed + low;
            y[31] = 0x7f;
            let mut altered = signature;
            altered[..32].copy_from_slice(&y);
            agree(&key, b"x", &altered, false);
        }
    }

    /// Spec: appendices, "Signing Key" and the signature of `{}` in "JSON Signing".
    #[test]
    fn spec_vector_verifies() {
        let pair = crate::core::signatures::tests::spec_key();
        let signature = crate::core::base64::decode(
            "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ",
        )
        .expect("base64");
        let signature: [u8; 64] = signature.try_into().expect("64 bytes");
        agree(&pair.verifying_key(), b"{}", &signature, true);
    }
}
