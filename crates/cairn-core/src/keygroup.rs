//! Key groups: the unit of keyed-state partitioning.
//!
//! `key_group = murmur3_x86_32(serialized key, seed 0) mod max_parallelism`. The hash is
//! fixed by the format spec (`format-spec/README.md`, "Key groups") and never changes: it
//! decides which subtask owns which key in every snapshot ever written.

use std::fmt;

use crate::error::StateError;

/// The default maximum parallelism (number of key groups), as in Flink for small jobs.
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;
/// The largest supported maximum parallelism (key groups are stored as `u16`-sized values).
pub const MAX_MAX_PARALLELISM: u32 = 1 << 15;

/// Index of a key group, `0..max_parallelism`.
pub type KeyGroup = u32;

/// MurmurHash3, x86 32-bit variant (Austin Appleby), over `data` with `seed`.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k |= u32::from(*b) << (8 * i);
        }
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The key group of a serialized key. `max_parallelism` must be in `1..=MAX_MAX_PARALLELISM`
/// (checked by [`KeyGroupRange::for_subtask`] and by restore; here it is only required to be
/// non-zero).
#[inline]
pub fn key_group_for_key(serialized_key: &[u8], max_parallelism: u32) -> KeyGroup {
    debug_assert!(max_parallelism > 0);
    murmur3_32(serialized_key, 0) % max_parallelism.max(1)
}

/// Checks `1 <= parallelism <= max_parallelism <= MAX_MAX_PARALLELISM`.
pub fn check_parallelism(parallelism: u32, max_parallelism: u32) -> Result<(), StateError> {
    if max_parallelism == 0 || max_parallelism > MAX_MAX_PARALLELISM {
        return Err(StateError::InvalidParallelism {
            parallelism,
            max_parallelism,
            reason: "max parallelism must be in 1..=32768",
        });
    }
    if parallelism == 0 || parallelism > max_parallelism {
        return Err(StateError::InvalidParallelism {
            parallelism,
            max_parallelism,
            reason: "parallelism must be in 1..=max_parallelism",
        });
    }
    Ok(())
}

/// Checks that a backend's key-group range is non-empty and within `0..max_parallelism`,
/// and that `max_parallelism` is valid.
pub fn check_backend_range(range: KeyGroupRange, max_parallelism: u32) -> Result<(), StateError> {
    check_parallelism(1, max_parallelism)?;
    if range.is_empty() || range.end > max_parallelism {
        return Err(StateError::InvalidParallelism {
            parallelism: range.len(),
            max_parallelism,
            reason: "key-group range must be non-empty and within 0..max_parallelism",
        });
    }
    Ok(())
}

/// The subtask (of `parallelism`) that owns key group `kg`; the inverse of
/// [`KeyGroupRange::for_subtask`].
pub fn subtask_for_key_group(kg: KeyGroup, parallelism: u32, max_parallelism: u32) -> u32 {
    ((u64::from(kg) * u64::from(parallelism)) / u64::from(max_parallelism)) as u32
}

/// A contiguous, half-open range of key groups `start..end`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct KeyGroupRange {
    /// First key group in the range.
    pub start: KeyGroup,
    /// One past the last key group in the range.
    pub end: KeyGroup,
}

impl KeyGroupRange {
    /// The range `start..end`; empty when `end <= start`.
    pub const fn new(start: KeyGroup, end: KeyGroup) -> Self {
        Self { start, end }
    }

    /// Every key group of a job with `max_parallelism` key groups.
    pub const fn all(max_parallelism: u32) -> Self {
        Self::new(0, max_parallelism)
    }

    /// The key groups owned by subtask `index` of `parallelism`, the same split as Flink's
    /// `KeyGroupRangeAssignment`: subtask `i` owns `ceil(i*m/p) ..= floor(((i+1)*m - 1)/p)`.
    pub fn for_subtask(
        max_parallelism: u32,
        parallelism: u32,
        index: u32,
    ) -> Result<Self, StateError> {
        check_parallelism(parallelism, max_parallelism)?;
        if index >= parallelism {
            return Err(StateError::InvalidParallelism {
                parallelism,
                max_parallelism,
                reason: "subtask index must be below the parallelism",
            });
        }
        let (m, p, i) = (
            u64::from(max_parallelism),
            u64::from(parallelism),
            u64::from(index),
        );
        let start = (i * m).div_ceil(p);
        let end_inclusive = ((i + 1) * m - 1) / p;
        Ok(Self::new(start as u32, end_inclusive as u32 + 1))
    }

    /// Whether `kg` lies in the range.
    #[inline]
    pub fn contains(&self, kg: KeyGroup) -> bool {
        kg >= self.start && kg < self.end
    }

    /// Number of key groups in the range.
    pub fn len(&self) -> u32 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the range holds no key group.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key groups in both ranges (possibly empty).
    pub fn intersect(&self, other: &Self) -> Self {
        Self::new(self.start.max(other.start), self.end.min(other.end))
    }

    /// Whether `other` lies entirely inside `self`.
    pub fn contains_range(&self, other: &Self) -> bool {
        other.is_empty() || (other.start >= self.start && other.end <= self.end)
    }

    /// Iterates over the key groups of the range.
    pub fn iter(&self) -> std::ops::Range<KeyGroup> {
        self.start..self.end.max(self.start)
    }
}

impl fmt::Debug for KeyGroupRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

impl fmt::Display for KeyGroupRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn murmur3_reference_vectors() {
        // Published MurmurHash3_x86_32 test vectors.
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"", 0xffff_ffff), 0x81f1_6f39);
        assert_eq!(murmur3_32(&[0, 0, 0, 0], 0), 0x2362_f9de);
        assert_eq!(murmur3_32(b"aaaa", 0x9747_b28c), 0x5a97_808a);
        assert_eq!(murmur3_32(b"abc", 0), 0xb3dd_93fa);
        assert_eq!(murmur3_32(b"Hello, world!", 0x9747_b28c), 0x2488_4cba);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog", 0),
            0x2e4f_f723
        );
    }

    #[test]
    fn subtask_ranges_match_flink() {
        // Flink: KeyGroupRangeAssignment.computeKeyGroupRangeForOperatorIndex(128, 3, i)
        let r: Vec<_> = (0..3)
            .map(|i| KeyGroupRange::for_subtask(128, 3, i).unwrap())
            .collect();
        assert_eq!(
            r,
            vec![
                KeyGroupRange::new(0, 43),
                KeyGroupRange::new(43, 86),
                KeyGroupRange::new(86, 128)
            ]
        );
        assert!(KeyGroupRange::for_subtask(128, 3, 3).is_err());
        assert!(KeyGroupRange::for_subtask(128, 0, 0).is_err());
        assert!(KeyGroupRange::for_subtask(4, 5, 0).is_err());
        assert!(KeyGroupRange::for_subtask(MAX_MAX_PARALLELISM + 1, 1, 0).is_err());
    }

    proptest! {
        #[test]
        fn ranges_partition_and_invert(m in 1u32..600, p_seed in 0u32..600) {
            let p = p_seed % m + 1;
            let mut next = 0;
            for i in 0..p {
                let r = KeyGroupRange::for_subtask(m, p, i).unwrap();
                prop_assert_eq!(r.start, next);
                prop_assert!(!r.is_empty());
                for kg in r.iter() {
                    prop_assert_eq!(subtask_for_key_group(kg, p, m), i);
                }
                next = r.end;
            }
            prop_assert_eq!(next, m);
        }
    }
}
