//! Bookkeeping that backends share to implement [`crate::KeyedStateBackend::prefetch_key`]:
//! which states recent keys used (a hint touches an upcoming key's entries in those), and
//! the hints noted since the current key was set, which the next key change issues
//! together so that their cache misses overlap.

/// The states recent keys used and the hints waiting for the next key change; `T` is what
/// a backend notes per hint (where the entry would be).
#[derive(Debug, Clone)]
pub struct PrefetchHints<T> {
    /// Bit `i`: state index `i` was used since the current key was set...
    used: u64,
    /// ...and by the last key that used any state.
    used_before: u64,
    pending: Vec<T>,
}

impl<T> Default for PrefetchHints<T> {
    fn default() -> Self {
        Self {
            used: 0,
            used_before: 0,
            pending: Vec::new(),
        }
    }
}

impl<T> PrefetchHints<T> {
    /// States from this index on take no part.
    pub const MAX_STATES: u32 = 64;
    /// With this many hints waiting, [`Self::states`] is empty: more hints before the next
    /// key change are dropped.
    pub const MAX_PENDING: usize = 256;

    /// Notes that the current key used state `index`.
    #[inline]
    pub fn note(&mut self, index: u32) {
        self.used |= 1u64.checked_shl(index).unwrap_or(0);
    }

    /// The states to hint at for an upcoming key: those the current key used so far and
    /// those the last key that used any used; none when [`Self::MAX_PENDING`] hints wait.
    #[inline]
    pub fn states(&self) -> StateIndexes {
        if self.pending.len() >= Self::MAX_PENDING {
            return StateIndexes(0);
        }
        StateIndexes(self.used | self.used_before)
    }

    /// Notes a hint.
    #[inline]
    pub fn push(&mut self, hint: T) {
        self.pending.push(hint);
    }

    /// The hints noted since the last key change.
    #[inline]
    pub fn pending(&self) -> &[T] {
        &self.pending
    }

    /// A new current key (after the caller issued [`Self::pending`]): the hints are
    /// dropped, and what the last key used becomes what later hints touch.
    #[inline]
    pub fn next_key(&mut self) {
        self.pending.clear();
        if self.used != 0 {
            self.used_before = self.used;
            self.used = 0;
        }
    }
}

/// State indexes from a bit set, in increasing order.
#[derive(Debug, Clone, Copy)]
pub struct StateIndexes(u64);

impl StateIndexes {
    /// Whether there is none.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
}

impl Iterator for StateIndexes {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        if self.0 == 0 {
            return None;
        }
        let i = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_follow_the_states_recent_keys_used() {
        let mut h = PrefetchHints::<u8>::default();
        assert_eq!(h.states().count(), 0);
        h.note(3);
        h.note(0);
        h.note(64); // takes no part
        assert_eq!(h.states().collect::<Vec<_>>(), vec![0, 3]);
        h.push(1);
        h.next_key();
        assert!(h.pending().is_empty());
        // The last key's states stay until a key uses some again.
        h.next_key();
        assert_eq!(h.states().collect::<Vec<_>>(), vec![0, 3]);
        h.note(5);
        assert_eq!(h.states().collect::<Vec<_>>(), vec![0, 3, 5]);
        h.next_key();
        assert_eq!(h.states().collect::<Vec<_>>(), vec![5]);
        for _ in 0..PrefetchHints::<u8>::MAX_PENDING {
            h.push(0);
        }
        assert_eq!(h.states().count(), 0);
    }
}
