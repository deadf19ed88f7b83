//! Pseudo-random bytes (xorshift64) for upload payloads and photo noise: incompressible,
//! so compression on the way cannot flatter a server, and the same for the same seed, so
//! a download can be checked against a regenerated copy.

/// Chunks of at most `chunk` bytes, `len` bytes in all.
pub struct Noise {
    state: u64,
    left: usize,
    chunk: usize,
}

impl Noise {
    pub fn new(seed: u64, len: usize, chunk: usize) -> Self {
        Self {
            state: seed | 1,
            left: len,
            chunk: chunk.max(1),
        }
    }
}

impl Iterator for Noise {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        if self.left == 0 {
            return None;
        }
        let len = self.left.min(self.chunk);
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            out.extend_from_slice(&self.state.to_le_bytes());
        }
        out.truncate(len);
        self.left -= len;
        Some(out)
    }
}

/// `len` bytes in one buffer.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    Noise::new(seed, len, len).next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_length_and_repeat_for_a_seed() {
        let lens: Vec<usize> = Noise::new(7, 2 * 64 + 5, 64).map(|c| c.len()).collect();
        assert_eq!(lens, vec![64, 64, 5]);
        let joined: Vec<u8> = Noise::new(7, 133, 64).flatten().collect();
        assert_eq!(joined, bytes(7, 133));
        assert_ne!(bytes(7, 100), bytes(8, 100));
        assert!(bytes(7, 100).iter().any(|&b| b != bytes(7, 100)[0]));
        assert!(bytes(7, 0).is_empty());
    }
}
