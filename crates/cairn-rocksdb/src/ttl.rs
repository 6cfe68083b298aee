//! Background cleanup of expired state with a TTL: a RocksDB compaction filter, as Flink's
//! RocksDB backend drops expired state in compactions (its `FlinkCompactionFilter`).
//!
//! Reads already clean up lazily (`cairn_core::TtlStateAccess`: a read that finds an
//! expired entry removes it). Entries that are never read again would stay forever; with
//! this filter, every compaction of a TTL state's column family drops those that have
//! expired.
//!
//! ## What is dropped, and when
//!
//! Every state column family gets the filter when it is created or opened (a fresh
//! instance, a native restore, a canonical restore), before any state registers. It does
//! nothing for a state until the state registers with a TTL
//! ([`cairn_core::KeyedStateBackend::enable_ttl_cleanup`], called by
//! `TtlStateAccess::register_*_with_ttl` at every registration): the filter of each
//! compaction looks the state up in the backend's [`TtlRegistry`] when the compaction
//! starts. From then on, a compaction that rewrites an entry of the state drops it when,
//! by the state's [`cairn_core::TtlClock`] at that moment:
//!
//! - **value, reducing and aggregating states, and map entries**: its stored value's stamp
//!   (the first 8 bytes, `TtlCodec`) has expired. Map user keys are never looked at: each
//!   map entry is a RocksDB entry of its own and expires on its own.
//! - **list states**: each element whose stamp has expired. A list with expired and live
//!   elements is rewritten with its live elements only (in their order); a list whose
//!   elements have all expired is dropped. This is the one place the workspace allows
//!   `unsafe` code: the `rocksdb` crate takes a changed value as `&'static [u8]`, and the
//!   filter hands it a slice of its own buffer instead, which is sound because RocksDB
//!   copies the bytes before the call returns (see `TtlFilter::filter`).
//!
//! Nothing else is ever dropped or changed: column families of states without a TTL, states
//! restored but not (yet) registered with one, values (and list elements) too short to hold
//! a stamp, malformed and empty lists are all kept as they are.
//!
//! *When* is up to RocksDB: an entry is looked at when a compaction rewrites the file that
//! holds it. Compactions follow writes, so a file that no write pushes into a compaction
//! would keep its expired entries; as Flink does, a state with a TTL gets periodic
//! compactions (`periodic_compaction_seconds`, [`PERIODIC_COMPACTION_SECS`]: every file is
//! rewritten at least every 30 days, which a native checkpoint then uploads again). Whether
//! a state has a TTL is known from its stored value encoding when its column family is
//! created or opened ([`has_ttl`]); states without one get no periodic compactions, as
//! before the filter. Some details of RocksDB's compactions matter:
//!
//! - **Merge operands are never filtered** (the filter sees only stored values: RocksDB
//!   hands merge operands to `FilterMergeOperand`, which keeps them), **nor are merge
//!   results**: a compaction that merges a list's operands (into its stored value, or into
//!   nothing, at the latest in the bottommost level) writes the merged list unfiltered, and
//!   the next compaction that rewrites it filters it. So a list that keeps being appended
//!   to is looked at less often than other state. Not filtering operands is also what
//!   keeps lists right: elements appended above a stored list that has expired whole
//!   survive its removal (a compaction that leaves the operands out), as they should.
//! - **A dropped entry becomes a deletion marker** at its sequence number (RocksDB's
//!   `CompactionIterator` turns a removed key into a delete), so an older version of the
//!   key in a lower level never reappears; the marker itself is dropped in the bottommost
//!   level.
//! - **Checkpoints are files.** A native checkpoint hard-links the SST files it saw; a
//!   later compaction writes new files and never changes those. So a checkpoint (and the
//!   canonical snapshots scanned from one) may hold expired entries that were not
//!   compacted yet; reads hide them, and the restored instance drops them in its own
//!   compactions once the state registers with its TTL again.
//! - The time is read from the state's clock for each entry, so an entry is dropped only
//!   if it has expired when it is dropped. (A clock that goes back can make a dropped
//!   entry one that a later read would have found live; with a clock that does not go
//!   back, the filter drops only what every later read would treat as expired.)
//!
//! ## The write-back cache and the spill
//!
//! The cache and the spill (`cache.rs`, `spill.rs`) hold entries in front of RocksDB.
//! Compaction never touches them, and nothing they hold is lost or comes back wrongly:
//!
//! - **Dirty entries** (the cache's, and spilled entries not written yet) are newer than
//!   anything RocksDB holds for their key, and are written later as a put or a delete with
//!   a newer sequence number. Whether a compaction dropped the older stored version
//!   before that or not, the written one wins: a dirty value is never lost, and a dirty
//!   delete deletes whatever is left.
//! - **Clean entries** (cached values and remembered misses, and the spill's last written
//!   set, which reads consult before RocksDB) are copies of what RocksDB held. When a
//!   compaction drops the stored copy, the cached one carries the same stamp, so it has
//!   expired too: a read that finds it treats it as expired (and removes it, which writes
//!   a delete), and an eviction drops it without writing. Reads see the same as if the
//!   compaction had come later. A remembered miss stays right: compaction never adds
//!   anything.
//! - Reads that miss the cache read RocksDB, which no longer has the dropped entry: the
//!   same as a read that removed it. Reducing and aggregating states fold an input into
//!   a fresh value when the stored one has expired, so a dropped one gives the same
//!   result.
//! - Lists are never cached, and map iteration writes the cache back first.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, PoisonError, RwLock};

use cairn_core::{
    RawStateId, Result, StateError, StateKind, StateMeta, StateValue, TtlCleanup,
    TTL_ENCODING_PREFIX,
};
use rocksdb::compaction_filter::{CompactionFilter, Decision};
use rocksdb::compaction_filter_factory::{CompactionFilterContext, CompactionFilterFactory};
use rocksdb::Options;

use crate::backend::RocksDbBackend;
use crate::db::rocks_err;
use crate::layout::{list_elements, push_list_element};
use crate::state::{type_mismatch, Registered};

/// The name of the compaction filter factory (printed to RocksDB's LOG).
const FACTORY_NAME: &CStr = c"cairn.ttl.factory";
/// The name of the compaction filter.
const FILTER_NAME: &CStr = c"cairn.ttl";

/// How often every file of a state with a TTL is compacted at least, in seconds: 30 days,
/// the default of Flink's compaction filter cleanup (`periodicCompactionTime`) and of
/// RocksDB for column families with a compaction filter.
const PERIODIC_COMPACTION_SECS: u64 = 30 * 24 * 60 * 60;

/// Whether a state stores one TTL value per RocksDB entry or a list of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stored {
    /// Value, reducing and aggregating states, and map entries.
    Single,
    /// List states: `(len u32 LE, element)*`, each element a TTL value (`layout.rs`).
    List,
}

/// The expiry test of one state's stored values, with the value type erased.
trait Expiry: Send + Sync {
    fn now_ms(&self) -> u64;
    fn is_expired(&self, encoded: &[u8], now_ms: u64) -> bool;
    /// Whether canonical snapshots leave out what has expired
    /// (`StateTtlConfig::with_full_snapshot_cleanup`).
    fn in_full_snapshots(&self) -> bool;
}

impl<V: 'static> Expiry for TtlCleanup<V> {
    fn now_ms(&self) -> u64 {
        TtlCleanup::now_ms(self)
    }
    fn is_expired(&self, encoded: &[u8], now_ms: u64) -> bool {
        self.is_expired_encoded(encoded, now_ms)
    }
    fn in_full_snapshots(&self) -> bool {
        TtlCleanup::in_full_snapshots(self)
    }
}

/// The TTL of one state.
#[derive(Clone)]
struct StateTtl {
    stored: Stored,
    expiry: Arc<dyn Expiry>,
}

/// What a compaction does with one stored value of a state with a TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Keep,
    /// Everything in it has expired.
    Remove,
    /// A list with expired and live elements: replace it by the live ones, which
    /// [`StateTtl::judge`] wrote into its buffer.
    Rewrite,
}

impl StateTtl {
    /// What to do with a stored value now: remove a value whose stamp has expired, or a
    /// list every element of which has; rewrite a list some elements of which have (into
    /// `live`: the others, in their order, stored as before). Values and list elements too
    /// short for a stamp count as live; malformed and empty lists are kept.
    fn judge(&self, value: &[u8], live: &mut Vec<u8>) -> Verdict {
        self.judge_at(value, self.expiry.now_ms(), live)
    }

    /// [`Self::judge`] at time `now`.
    fn judge_at(&self, value: &[u8], now: u64, live: &mut Vec<u8>) -> Verdict {
        let expired = |v: &[u8]| self.expiry.is_expired(v, now);
        match self.stored {
            Stored::Single if expired(value) => Verdict::Remove,
            Stored::Single => Verdict::Keep,
            Stored::List => {
                let Some(elements) = list_elements(value) else {
                    return Verdict::Keep;
                };
                live.clear();
                let mut kept = 0;
                for e in elements.iter().filter(|e| !expired(e)) {
                    push_list_element(live, e);
                    kept += 1;
                }
                if kept == elements.len() {
                    Verdict::Keep
                } else if kept == 0 {
                    Verdict::Remove
                } else {
                    Verdict::Rewrite
                }
            }
        }
    }
}

/// What a canonical snapshot (a savepoint or a full checkpoint) leaves out of one state: the
/// state's TTL, when it cleans up full snapshots, and the time of the snapshot's
/// synchronous phase. Native checkpoints are files and keep everything, as in Flink, whose
/// `cleanupFullSnapshot` does not apply to RocksDB's incremental checkpoints.
#[derive(Clone)]
pub(crate) struct SnapshotExpiry {
    ttl: StateTtl,
    now_ms: u64,
}

impl fmt::Debug for SnapshotExpiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotExpiry")
            .field("stored", &self.ttl.stored)
            .field("now_ms", &self.now_ms)
            .finish_non_exhaustive()
    }
}

impl SnapshotExpiry {
    /// What the snapshot does with a stored value: leave it out, keep it, or keep the live
    /// elements of a list, which this writes into `live` (stored as before).
    pub(crate) fn judge(&self, value: &[u8], live: &mut Vec<u8>) -> Verdict {
        self.ttl.judge_at(value, self.now_ms, live)
    }
}

/// The TTL of every state that has one, by column family (state) name. The backend fills
/// it in ([`RocksDbBackend`]'s `enable_ttl_cleanup`); the compaction filter factory of each
/// state column family reads it when a compaction starts. It outlives instances (a restore
/// replaces the instance), and a state's entry is only ever replaced by the same state's
/// next registration.
#[derive(Default)]
pub(crate) struct TtlRegistry {
    states: RwLock<HashMap<String, StateTtl>>,
}

impl fmt::Debug for TtlRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let states = self.states.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("TtlRegistry")
            .field("states", &states.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TtlRegistry {
    fn enable(&self, cf: &str, ttl: StateTtl) {
        self.states
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(cf.to_string(), ttl);
    }

    fn get(&self, cf: &str) -> Option<StateTtl> {
        self.states
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(cf)
            .cloned()
    }

    /// For each of `states`, what a canonical snapshot taken now leaves out of it (`None`:
    /// nothing; a state without a TTL, or one that does not clean up full snapshots).
    pub(crate) fn snapshot_expiry(&self, states: &[StateMeta]) -> Vec<Option<SnapshotExpiry>> {
        states
            .iter()
            .map(|meta| {
                let ttl = self.get(&meta.name)?;
                ttl.expiry.in_full_snapshots().then(|| SnapshotExpiry {
                    now_ms: ttl.expiry.now_ms(),
                    ttl,
                })
            })
            .collect()
    }
}

/// The registered state `id`, checking that it has `id`'s kind and holds values (list
/// elements, map values) of type `V`.
fn registered_as<V: 'static>(states: &[Registered], id: RawStateId) -> Result<&Registered> {
    let r = states
        .get(id.index as usize)
        .ok_or(StateError::UnknownState { index: id.index })?;
    if r.meta.kind != id.kind {
        return Err(StateError::KindMismatch {
            state: r.meta.name.clone(),
            registered: r.meta.kind,
            requested: id.kind,
        });
    }
    if r.value_type != std::any::TypeId::of::<V>() {
        return Err(type_mismatch(&r.meta.name, std::any::type_name::<V>()));
    }
    Ok(r)
}

/// Whether state `meta` has a TTL, by its stored value encoding (`TtlCodec`'s prefix): known
/// when its column family is created or opened, before the state registers.
pub(crate) fn has_ttl(meta: &StateMeta) -> bool {
    meta.value.encoding.starts_with(TTL_ENCODING_PREFIX)
}

/// Installs the TTL compaction filter on the options of the column family of state `cf`, a
/// state with a TTL ([`has_ttl`]), with periodic compactions ([`PERIODIC_COMPACTION_SECS`])
/// as Flink's compaction filter cleanup sets them: cold files would keep their expired
/// entries otherwise. Column families of states without a TTL get no filter, so their
/// compactions make no call per entry and RocksDB schedules no periodic compactions for
/// them.
pub(crate) fn install_filter(opts: &mut Options, registry: &Arc<TtlRegistry>, cf: &str) {
    opts.set_compaction_filter_factory(TtlFilterFactory {
        registry: registry.clone(),
        cf: cf.to_string(),
    });
    opts.set_periodic_compaction_seconds(PERIODIC_COMPACTION_SECS);
}

/// Makes the filter of each compaction of one state column family.
struct TtlFilterFactory {
    registry: Arc<TtlRegistry>,
    cf: String,
}

impl CompactionFilterFactory for TtlFilterFactory {
    type Filter = TtlFilter;

    fn create(&mut self, _context: CompactionFilterContext) -> TtlFilter {
        TtlFilter {
            state: self.registry.get(&self.cf),
            live: Vec::new(),
        }
    }

    fn name(&self) -> &CStr {
        FACTORY_NAME
    }
}

/// The filter of one compaction: drops the entries of a TTL state that hold nothing live,
/// and rewrites lists that hold expired elements.
struct TtlFilter {
    /// `None`: the state has no TTL (yet); everything is kept.
    state: Option<StateTtl>,
    /// The live elements of the list being rewritten: the changed value handed to RocksDB.
    live: Vec<u8>,
}

impl CompactionFilter for TtlFilter {
    fn filter(&mut self, _level: u32, _key: &[u8], value: &[u8]) -> Decision {
        let Some(state) = &self.state else {
            return Decision::Keep;
        };
        // The clock is the program's: a panic must not cross into RocksDB (an abort).
        let live = &mut self.live;
        match catch_unwind(AssertUnwindSafe(|| state.judge(value, live))) {
            Ok(Verdict::Remove) => Decision::Remove,
            Ok(Verdict::Rewrite) => {
                let live: &[u8] = &self.live;
                // SAFETY: `Decision::Change` wants `&'static [u8]`; these bytes live in
                // `self.live`, which nothing touches until this filter's next call (which
                // needs `&mut self` again, after this one has returned). The `rocksdb`
                // crate's `filter_callback` (0.25) only stores the pointer and length in
                // RocksDB's out-parameters, and RocksDB's C API copies them into its own
                // string before its `Filter` returns (`rocksdb_compactionfilter_t::Filter`
                // in `db/c.cc`: `new_value->assign(c_new_value, new_value_length)`). So
                // the slice is never read after it stops being valid, and never while it is
                // written. `Cargo.lock` pins both crates; the ttl_cleanup tests read the
                // rewritten values back.
                #[allow(unsafe_code)]
                let live: &'static [u8] =
                    unsafe { std::slice::from_raw_parts(live.as_ptr(), live.len()) };
                Decision::Change(live)
            }
            Ok(Verdict::Keep) | Err(_) => Decision::Keep,
        }
    }

    fn name(&self) -> &CStr {
        FILTER_NAME
    }
}

impl RocksDbBackend {
    /// Registers the TTL of state `id` with the compaction filter (the trait's
    /// `enable_ttl_cleanup`): checks that the state is registered with this kind and holds
    /// values (list elements, map values) of type `V`.
    pub(crate) fn enable_ttl<V: StateValue>(
        &mut self,
        id: RawStateId,
        cleanup: TtlCleanup<V>,
    ) -> Result<()> {
        let r = registered_as::<V>(&self.states, id)?;
        let stored = match id.kind {
            StateKind::List => Stored::List,
            _ => Stored::Single,
        };
        self.ttl.enable(
            &r.meta.name,
            StateTtl {
                stored,
                expiry: Arc::new(cleanup),
            },
        );
        Ok(())
    }

    /// Writes every dirty entry of the write-back cache and the spill to RocksDB (as key
    /// listing does). For tests and tools: not part of the stable API.
    #[doc(hidden)]
    pub fn write_back_cache(&mut self) -> Result<()> {
        self.flush_cache()
    }

    /// Flushes the memtables of every state column family and compacts its SST files
    /// whole, down to the bottommost level, so the TTL compaction filter sees every stored
    /// value (list operands that this compaction merges into one value are seen by the
    /// next one). The write-back cache is left as it is ([`Self::write_back_cache`]). For
    /// tests and tools: not part of the stable API.
    #[doc(hidden)]
    pub fn compact_stored(&mut self) -> Result<()> {
        self.settle()?;
        let inst = self.inst()?;
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        for name in inst.state_cfs()? {
            let cf = inst.cf(&name)?;
            inst.db
                .flush_cf(cf)
                .map_err(|e| rocks_err("flush", &inst.path, &name, e))?;
            inst.db
                .compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &opts);
        }
        Ok(())
    }

    /// Every entry RocksDB holds for state `name` (column family order), as stored: raw
    /// keys and values, expired or not, without the write-back cache and the spill. For
    /// tests and tools: not part of the stable API.
    #[doc(hidden)]
    pub fn stored_entries(&self, name: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        self.inst()?
            .scan(name, &[], &crate::layout::end_of_all(), |k, v| {
                out.push((k.to_vec(), v.to_vec()));
                Ok(())
            })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::push_list_element;
    use cairn_core::{ManualClock, StateTtlConfig, TtlClock};
    use std::time::Duration;

    /// What a `TtlCleanup` answers, for a config of 100 ms (`TtlCleanup` is made by
    /// `TtlStateAccess` only; the integration tests use real ones).
    struct Fake(Arc<ManualClock>, StateTtlConfig);

    impl Expiry for Fake {
        fn now_ms(&self) -> u64 {
            self.0.now_ms()
        }
        fn is_expired(&self, encoded: &[u8], now_ms: u64) -> bool {
            cairn_core::ttl_stamp_of(encoded).is_some_and(|s| self.1.is_expired(s, now_ms))
        }
        fn in_full_snapshots(&self) -> bool {
            self.1.cleans_up_full_snapshots()
        }
    }

    fn ttl(stored: Stored, clock: &Arc<ManualClock>) -> StateTtl {
        let config = StateTtlConfig::new(Duration::from_millis(100));
        StateTtl {
            stored,
            expiry: Arc::new(Fake(clock.clone(), config)),
        }
    }

    fn stamped(stamp: u64, value: &[u8]) -> Vec<u8> {
        let mut v = stamp.to_le_bytes().to_vec();
        v.extend_from_slice(value);
        v
    }

    /// What `t` does with `value` now, and the rewritten value if it rewrites it.
    fn judged(t: &StateTtl, value: &[u8]) -> (Verdict, Vec<u8>) {
        let mut live = b"left over".to_vec();
        let verdict = t.judge(value, &mut live);
        (
            verdict,
            if verdict == Verdict::Rewrite {
                live
            } else {
                Vec::new()
            },
        )
    }

    fn list_of(elements: &[&[u8]]) -> Vec<u8> {
        let mut list = Vec::new();
        for e in elements {
            push_list_element(&mut list, e);
        }
        list
    }

    #[test]
    fn single_values_go_when_their_stamp_expires() {
        let clock = Arc::new(ManualClock::new(1_000));
        let t = ttl(Stored::Single, &clock);
        let v = stamped(950, b"x");
        assert_eq!(judged(&t, &v).0, Verdict::Keep);
        clock.set(1_050);
        assert_eq!(judged(&t, &v).0, Verdict::Remove);
        // Too short for a stamp: kept.
        assert_eq!(judged(&t, &v[..7]).0, Verdict::Keep);
        assert_eq!(judged(&t, &[]).0, Verdict::Keep);
    }

    #[test]
    fn lists_lose_their_expired_elements_and_go_when_every_element_has() {
        let clock = Arc::new(ManualClock::new(1_000));
        let t = ttl(Stored::List, &clock);
        let (a, b, c) = (stamped(900, b"a"), stamped(990, b"b"), stamped(905, b"c"));
        let list = list_of(&[&a, &b, &c]);
        clock.set(999);
        assert_eq!(judged(&t, &list).0, Verdict::Keep);
        clock.set(1_000);
        // "a" expired at 1_000: the others are kept, in their order.
        assert_eq!(judged(&t, &list), (Verdict::Rewrite, list_of(&[&b, &c])));
        clock.set(1_005);
        assert_eq!(judged(&t, &list), (Verdict::Rewrite, list_of(&[&b])));
        clock.set(1_089);
        assert_eq!(judged(&t, &list), (Verdict::Rewrite, list_of(&[&b])));
        clock.set(1_090);
        assert_eq!(judged(&t, &list).0, Verdict::Remove);
        // Malformed or empty: kept. An element too short for a stamp counts as live.
        assert_eq!(judged(&t, &list[..list.len() - 1]).0, Verdict::Keep);
        assert_eq!(judged(&t, &[]).0, Verdict::Keep);
        let with_short = list_of(&[&a, b"short"]);
        assert_eq!(
            judged(&t, &with_short),
            (Verdict::Rewrite, list_of(&[b"short"]))
        );
    }

    #[test]
    fn cleanup_is_enabled_only_for_a_registered_state_of_its_kind_and_type() {
        let d = cairn_core::ListStateDescriptor::<String>::new("l");
        let states = vec![Registered {
            meta: d.meta(),
            typed: Box::new(()),
            type_name: "",
            value_type: std::any::TypeId::of::<String>(),
            encode_ns: Box::new(|_, _| Ok(())),
            encode_value: crate::state::no_value_encoder("l"),
        }];
        let id = |index, kind| RawStateId { index, kind };
        assert!(registered_as::<String>(&states, id(0, StateKind::List)).is_ok());
        assert!(matches!(
            registered_as::<String>(&states, id(1, StateKind::List)),
            Err(StateError::UnknownState { index: 1 })
        ));
        assert!(matches!(
            registered_as::<String>(&states, id(0, StateKind::Value)),
            Err(StateError::KindMismatch { .. })
        ));
        let Err(err) = registered_as::<u64>(&states, id(0, StateKind::List)) else {
            panic!("a cleanup of another value type was accepted");
        };
        assert!(err.to_string().contains("state=l"), "{err}");
    }

    #[test]
    fn the_filter_keeps_everything_of_a_state_without_a_ttl() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let registry = Arc::new(TtlRegistry::default());
        registry.enable("ttl", ttl(Stored::Single, &clock));
        let factory = |cf: &str| TtlFilterFactory {
            registry: registry.clone(),
            cf: cf.to_string(),
        };
        let context = || CompactionFilterContext {
            is_full_compaction: true,
            is_manual_compaction: true,
        };
        let old = stamped(1, b"x");
        let mut plain = factory("plain").create(context());
        assert!(matches!(plain.filter(1, b"k", &old), Decision::Keep));
        let mut with_ttl = factory("ttl").create(context());
        assert!(matches!(with_ttl.filter(1, b"k", &old), Decision::Remove));
        assert!(matches!(
            with_ttl.filter(1, b"k", &stamped(999_999, b"x")),
            Decision::Keep
        ));
    }

    #[test]
    fn the_filter_hands_rocksdb_the_live_elements_of_a_list() {
        let clock = Arc::new(ManualClock::new(1_000));
        let registry = Arc::new(TtlRegistry::default());
        registry.enable("list", ttl(Stored::List, &clock));
        let mut filter = TtlFilterFactory {
            registry,
            cf: "list".to_string(),
        }
        .create(CompactionFilterContext {
            is_full_compaction: true,
            is_manual_compaction: true,
        });
        let (old, new) = (stamped(900, b"old"), stamped(950, b"new"));
        let changed = |d: Decision| match d {
            Decision::Change(bytes) => bytes.to_vec(),
            _ => panic!("not a change"),
        };
        let first = changed(filter.filter(0, b"k1", &list_of(&[&old, &new, &old])));
        assert_eq!(first, list_of(&[&new]));
        // The next call reuses the buffer: a longer and then a shorter rewrite.
        let long = stamped(960, &[7; 100]);
        let second = changed(filter.filter(0, b"k2", &list_of(&[&long, &old, &new])));
        assert_eq!(second, list_of(&[&long, &new]));
        let third = changed(filter.filter(0, b"k3", &list_of(&[&old, &new])));
        assert_eq!(third, list_of(&[&new]));
        assert!(matches!(
            filter.filter(0, b"k4", &list_of(&[&old])),
            Decision::Remove
        ));
        assert!(matches!(
            filter.filter(0, b"k5", &list_of(&[&new])),
            Decision::Keep
        ));
    }
}
