//! Key encoding: big-endian integers (byte order is numeric order) and `0xFF` separators.
//!
//! UTF-8 text never contains the byte `0xFF`, so joining string parts with it keeps keys
//! unambiguous and makes `part ++ 0xFF` a prefix that matches exactly that part.

/// The separator between the parts of a compound key.
pub const SEP: u8 = 0xff;

/// Joins key parts with [`SEP`].
pub fn join(parts: &[&[u8]]) -> Vec<u8> {
    let len = parts.iter().map(|p| p.len() + 1).sum::<usize>();
    let mut key = Vec::with_capacity(len);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(SEP);
        }
        key.extend_from_slice(part);
    }
    key
}

/// `part ++ SEP`: the prefix of every compound key whose first part is `part`.
pub fn prefix(part: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(part.len() + 1);
    key.extend_from_slice(part);
    key.push(SEP);
    key
}

/// Splits a compound key into its parts.
pub fn split(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    key.split(|b| *b == SEP)
}

/// Two numbers as one key, big-endian (sorting by the first, then the second).
pub fn u64_pair(first: u64, second: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&first.to_be_bytes());
    key[8..].copy_from_slice(&second.to_be_bytes());
    key
}

/// Reads a big-endian `u64` from exactly eight bytes.
pub fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// The smallest key greater than every key starting with `prefix`, if any.
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_endian_integers_sort_numerically() {
        let mut keys: Vec<[u8; 8]> = [256u64, 1, 65536, 2]
            .iter()
            .map(|n| n.to_be_bytes())
            .collect();
        keys.sort();
        let sorted: Vec<u64> = keys.iter().map(|k| read_u64(k).unwrap()).collect();
        assert_eq!(sorted, vec![1, 2, 256, 65536]);
        assert_eq!(read_u64(b"short"), None);
    }

    #[test]
    fn join_and_split_round_trip() {
        let key = join(&[b"@a:x", b"DEVICE"]);
        let parts: Vec<&[u8]> = split(&key).collect();
        assert_eq!(parts, vec![&b"@a:x"[..], &b"DEVICE"[..]]);
        assert!(key.starts_with(&prefix(b"@a:x")));
        assert!(!join(&[b"@a:xy", b"D"]).starts_with(&prefix(b"@a:x")));
    }

    #[test]
    fn prefix_successor_bounds_the_prefix() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
    }
}
