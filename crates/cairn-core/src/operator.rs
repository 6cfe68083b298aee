//! Operator state: non-keyed list state of one subtask (e.g. a source's offsets), the same
//! for every keyed backend, redistributed on rescale by [`redistribute`].

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::BincodeCodec;
use crate::error::{Result, StateError};
use crate::snapshot::{OperatorStateSnapshot, Redistribution};
use crate::state::{CodecRef, StateValue};

/// Operator state names that start with this belong to the runtime: it adds such states to
/// a subtask's snapshot itself (a finished operator's marker, an unaligned checkpoint's
/// in-flight records) and takes them out again on restore, so a user state of that name
/// would be read as one of them. [`OperatorStateBackend::register_list`] refuses them.
pub const RESERVED_STATE_PREFIX: &str = "cairn.";

/// Describes an operator list state.
pub struct OperatorListStateDescriptor<V> {
    /// The state name, unique among the operator's operator states.
    pub name: String,
    /// Codec of one element.
    pub codec: CodecRef<V>,
    /// How elements move when the parallelism changes.
    pub mode: Redistribution,
}

impl<V: Serialize + DeserializeOwned + Send + Sync + 'static> OperatorListStateDescriptor<V> {
    /// A list state whose elements are dealt round-robin on rescale (Flink's
    /// `getListState`).
    pub fn split(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            codec: std::sync::Arc::new(BincodeCodec::<V>::new()),
            mode: Redistribution::Split,
        }
    }
    /// A list state of which every subtask gets all elements on restore (Flink's
    /// `getUnionListState`).
    pub fn union(name: impl Into<String>) -> Self {
        Self {
            mode: Redistribution::Union,
            ..Self::split(name)
        }
    }
}

impl<V: 'static> fmt::Debug for OperatorListStateDescriptor<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorListStateDescriptor")
            .field("name", &self.name)
            .field("codec", self.codec.identity())
            .field("mode", &self.mode)
            .finish()
    }
}

/// A registered operator list state.
pub struct OperatorListStateId<V> {
    index: usize,
    _type: PhantomData<fn() -> V>,
}
impl<V> Clone for OperatorListStateId<V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for OperatorListStateId<V> {}
impl<V> fmt::Debug for OperatorListStateId<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperatorListStateId({})", self.index)
    }
}

trait ErasedList: Send {
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn encode(&self, name: &str) -> Result<Vec<Vec<u8>>>;
}

struct TypedList<V> {
    values: Vec<V>,
    codec: CodecRef<V>,
}

impl<V: StateValue> ErasedList for TypedList<V> {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn encode(&self, name: &str) -> Result<Vec<Vec<u8>>> {
        self.values
            .iter()
            .map(|v| {
                self.codec
                    .encode_to_vec(v)
                    .map_err(|source| StateError::Codec {
                        state: name.to_string(),
                        source,
                    })
            })
            .collect()
    }
}

struct Registered {
    name: String,
    mode: Redistribution,
    codec: crate::codec::CodecIdentity,
    list: Box<dyn ErasedList>,
}

/// The operator states of one subtask.
///
/// Restored states (already redistributed for this subtask) wait in encoded form until the
/// program registers them; states the program never registers are carried into the next
/// snapshot unchanged, so no state is lost by a program that does not use it yet.
#[derive(Default)]
pub struct OperatorStateBackend {
    uid: String,
    registered: Vec<Registered>,
    restored: BTreeMap<String, OperatorStateSnapshot>,
}

impl fmt::Debug for OperatorStateBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorStateBackend")
            .field("uid", &self.uid)
            .field(
                "registered",
                &self.registered.iter().map(|r| &r.name).collect::<Vec<_>>(),
            )
            .field("restored", &self.restored.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl OperatorStateBackend {
    /// An empty backend for operator `uid` (the uid only appears in error messages).
    pub fn new(uid: impl Into<String>) -> Self {
        Self {
            uid: uid.into(),
            ..Self::default()
        }
    }

    /// The operator's uid.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// Loads this subtask's share of the operator states (see [`redistribute`]). Must be
    /// called before any state is registered.
    pub fn restore(&mut self, states: Vec<OperatorStateSnapshot>) -> Result<()> {
        if !self.registered.is_empty() {
            return Err(StateError::Restore {
                reason: format!(
                    "operator state of {} restored after states were registered",
                    self.uid
                ),
            });
        }
        for s in states {
            self.restored.insert(s.name.clone(), s);
        }
        Ok(())
    }

    /// Registers (or re-fetches) an operator list state, decoding restored elements.
    pub fn register_list<V: StateValue>(
        &mut self,
        d: &OperatorListStateDescriptor<V>,
    ) -> Result<OperatorListStateId<V>> {
        if d.name.starts_with(RESERVED_STATE_PREFIX) {
            return Err(StateError::ReservedName {
                uid: self.uid.clone(),
                state: d.name.clone(),
                prefix: RESERVED_STATE_PREFIX,
            });
        }
        self.register_any_list(d)
    }

    /// [`OperatorStateBackend::register_list`] for a state of the runtime itself, whose
    /// name must start with [`RESERVED_STATE_PREFIX`] (no user state can then clash
    /// with it).
    pub fn register_reserved_list<V: StateValue>(
        &mut self,
        d: &OperatorListStateDescriptor<V>,
    ) -> Result<OperatorListStateId<V>> {
        if !d.name.starts_with(RESERVED_STATE_PREFIX) {
            return Err(StateError::Restore {
                reason: format!(
                    "operator state {} of {} is registered as the runtime's own but its name \
                     does not start with {RESERVED_STATE_PREFIX}",
                    d.name, self.uid
                ),
            });
        }
        self.register_any_list(d)
    }

    fn register_any_list<V: StateValue>(
        &mut self,
        d: &OperatorListStateDescriptor<V>,
    ) -> Result<OperatorListStateId<V>> {
        if let Some(index) = self.registered.iter().position(|r| r.name == d.name) {
            let r = &mut self.registered[index];
            check(&self.uid, &d.name, r.mode, &r.codec, d, false)?;
            if r.list.as_any_mut().downcast_mut::<TypedList<V>>().is_none() {
                return Err(StateError::UnknownState {
                    index: index as u32,
                });
            }
            return Ok(OperatorListStateId {
                index,
                _type: PhantomData,
            });
        }
        // Decode before taking the restored state out, so that a failed registration leaves
        // it in place (it is then still carried into the next snapshot).
        let mut values = Vec::new();
        if let Some(restored) = self.restored.get(&d.name) {
            check(&self.uid, &d.name, restored.mode, &restored.codec, d, true)?;
            values.reserve(restored.elements.len().min(4096));
            for (i, bytes) in restored.elements.iter().enumerate() {
                let value = d
                    .codec
                    .decode_from(&restored.codec, bytes)
                    .map_err(|source| {
                        StateError::layer(
                            format!(
                                "restoring operator state uid={} state={} element={i}",
                                self.uid, d.name
                            ),
                            StateError::Codec {
                                state: d.name.clone(),
                                source,
                            },
                        )
                    })?;
                values.push(value);
            }
            self.restored.remove(&d.name);
        }
        self.registered.push(Registered {
            name: d.name.clone(),
            mode: d.mode,
            codec: d.codec.identity().clone(),
            list: Box::new(TypedList {
                values,
                codec: d.codec.clone(),
            }),
        });
        Ok(OperatorListStateId {
            index: self.registered.len() - 1,
            _type: PhantomData,
        })
    }

    /// The elements of a registered list state, to read or change in place.
    pub fn list<V: StateValue>(&mut self, id: OperatorListStateId<V>) -> Result<&mut Vec<V>> {
        self.registered
            .get_mut(id.index)
            .and_then(|r| r.list.as_any_mut().downcast_mut::<TypedList<V>>())
            .map(|t| &mut t.values)
            .ok_or(StateError::UnknownState {
                index: id.index as u32,
            })
    }

    /// Encodes every operator state (registered and restored-but-unregistered), sorted by
    /// name. Operator state is small by contract, so this is the whole snapshot.
    pub fn snapshot(&self) -> Result<Vec<OperatorStateSnapshot>> {
        let mut out: Vec<OperatorStateSnapshot> = self.restored.values().cloned().collect();
        for r in &self.registered {
            out.push(OperatorStateSnapshot {
                name: r.name.clone(),
                mode: r.mode,
                codec: r.codec.clone(),
                elements: r.list.encode(&r.name)?,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// Checks a descriptor against the mode and codec a state has: `restored` (its elements are
/// then decoded with [`crate::Codec::decode_from`], so the descriptor's codec may read the
/// stored identity as is or migrate it) or registered earlier in this run (the same codec).
fn check<V: 'static>(
    uid: &str,
    name: &str,
    mode: Redistribution,
    codec: &crate::codec::CodecIdentity,
    d: &OperatorListStateDescriptor<V>,
    restored: bool,
) -> Result<()> {
    if mode != d.mode {
        return Err(StateError::Restore {
            reason: format!(
                "operator state {name} of operator {} has mode {mode:?} but is registered with mode {:?}",
                uid, d.mode
            ),
        });
    }
    let readable = if restored {
        d.codec.compatibility(codec) != crate::codec::Compatibility::Incompatible
    } else {
        codec.is_compatible_with(d.codec.identity())
    };
    if !readable {
        return Err(StateError::IncompatibleCodec {
            uid: uid.to_string(),
            state: name.to_string(),
            part: "operator list element",
            stored: Box::new(codec.clone()),
            expected: Box::new(d.codec.identity().clone()),
        });
    }
    Ok(())
}

/// One operator state gathered over the old subtasks.
struct Merged<'a> {
    mode: Redistribution,
    codec: &'a crate::codec::CodecIdentity,
    /// Another codec some subtask stored the state with (a migration in only some).
    other_codec: Option<&'a crate::codec::CodecIdentity>,
    elements: Vec<&'a [u8]>,
}

/// Redistributes the operator states of `old` subtasks (index = old subtask) over
/// `new_parallelism` subtasks: [`Redistribution::Split`] keeps each subtask's elements when
/// the parallelism is unchanged, and otherwise deals the elements, taken in old subtask
/// order, round-robin (element `j` goes to subtask `j mod p`);
/// [`Redistribution::Union`] gives every subtask all elements. A state whose mode differs
/// between old subtasks is an error; so is one whose codec differs (a newer program
/// migrated it in some subtasks only), unless it is split state restored at its old
/// parallelism, where each subtask takes its own elements under its own codec.
pub fn redistribute(
    uid: &str,
    old: &[Vec<OperatorStateSnapshot>],
    new_parallelism: u32,
) -> Result<Vec<Vec<OperatorStateSnapshot>>> {
    let p = new_parallelism as usize;
    if p == 0 {
        return Err(StateError::InvalidParallelism {
            parallelism: 0,
            max_parallelism: 0,
            reason: "parallelism must be at least 1",
        });
    }
    let mut merged: BTreeMap<&str, Merged<'_>> = BTreeMap::new();
    for subtask in old {
        for s in subtask {
            let entry = merged.entry(&s.name).or_insert_with(|| Merged {
                mode: s.mode,
                codec: &s.codec,
                other_codec: None,
                elements: Vec::new(),
            });
            if entry.mode != s.mode {
                return Err(StateError::Restore {
                    reason: format!(
                        "operator state {} of operator {uid} has mode {:?} in some subtasks and {:?} in others",
                        s.name, entry.mode, s.mode
                    ),
                });
            }
            if entry.codec != &s.codec {
                entry.other_codec = Some(&s.codec);
            }
            entry.elements.extend(s.elements.iter().map(Vec::as_slice));
        }
    }
    let mut out: Vec<Vec<OperatorStateSnapshot>> = vec![Vec::new(); p];
    for (name, m) in merged {
        let own = m.mode == Redistribution::Split && old.len() == p;
        if let (Some(other), false) = (m.other_codec, own) {
            // Elements of two schemas cannot share one list: a newer program migrated the
            // state in some subtasks only (it registered it in those only).
            return Err(StateError::Restore {
                reason: format!(
                    "operator state {name} of operator {uid} was stored as {} in some subtasks and as {other} in others; it restores only as split state at its parallelism ({})",
                    m.codec,
                    old.len()
                ),
            });
        }
        for (i, target) in out.iter_mut().enumerate() {
            let kept = own
                .then(|| {
                    old.get(i)
                        .and_then(|sub| sub.iter().find(|s| s.name == name))
                })
                .flatten();
            let (codec, mine): (&crate::codec::CodecIdentity, Vec<Vec<u8>>) = match (kept, m.mode) {
                (Some(s), _) => (&s.codec, s.elements.clone()),
                (None, _) if own => (m.codec, Vec::new()),
                (None, Redistribution::Union) => {
                    (m.codec, m.elements.iter().map(|e| e.to_vec()).collect())
                }
                (None, Redistribution::Split) => (
                    m.codec,
                    m.elements
                        .iter()
                        .skip(i)
                        .step_by(p)
                        .map(|e| e.to_vec())
                        .collect(),
                ),
            };
            target.push(OperatorStateSnapshot {
                name: name.to_string(),
                mode: m.mode,
                codec: codec.clone(),
                elements: mine,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend_with(values: &[u64], name: &str, union: bool) -> Vec<OperatorStateSnapshot> {
        let mut b = OperatorStateBackend::new("src");
        let d = if union {
            OperatorListStateDescriptor::<u64>::union(name)
        } else {
            OperatorListStateDescriptor::<u64>::split(name)
        };
        let id = b.register_list(&d).unwrap();
        b.list(id).unwrap().extend_from_slice(values);
        b.snapshot().unwrap()
    }

    fn restore_values(s: Vec<OperatorStateSnapshot>, name: &str, union: bool) -> Vec<u64> {
        let mut b = OperatorStateBackend::new("src");
        b.restore(s).unwrap();
        let d = if union {
            OperatorListStateDescriptor::<u64>::union(name)
        } else {
            OperatorListStateDescriptor::<u64>::split(name)
        };
        let id = b.register_list(&d).unwrap();
        b.list(id).unwrap().clone()
    }

    #[test]
    fn the_runtime_registers_its_own_states_only_under_the_prefix() {
        let mut b = OperatorStateBackend::new("src");
        let d = OperatorListStateDescriptor::<u64>::union("cairn.broadcast");
        let id = b.register_reserved_list(&d).unwrap();
        b.list(id).unwrap().extend([1, 2]);
        let snapshot = b.snapshot().unwrap();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(b.uid(), "src");
        let mut restored = OperatorStateBackend::new("src");
        restored.restore(snapshot).unwrap();
        let id = restored.register_reserved_list(&d).unwrap();
        assert_eq!(*restored.list(id).unwrap(), vec![1, 2]);
        let err = restored
            .register_reserved_list(&OperatorListStateDescriptor::<u64>::union("mine"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mine") && err.contains("cairn."), "{err}");
    }

    #[test]
    fn names_in_the_runtime_prefix_are_refused() {
        let mut b = OperatorStateBackend::new("src");
        for name in ["cairn.finished", "cairn.inflight", "cairn.mine"] {
            let err = b
                .register_list(&OperatorListStateDescriptor::<u64>::split(name))
                .unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(&err, StateError::ReservedName { uid, state, .. } if uid == "src" && state == name),
                "{msg}"
            );
            assert!(msg.contains(name) && msg.contains("src"), "{msg}");
        }
        // Names that merely contain the prefix, or spell it differently, are the user's.
        for name in ["my.cairn.finished", "cairn", "cairn_finished"] {
            b.register_list(&OperatorListStateDescriptor::<u64>::union(name))
                .unwrap();
        }
        assert_eq!(b.snapshot().unwrap().len(), 3);
    }

    #[test]
    fn split_deals_round_robin_and_union_copies() {
        let old = vec![
            backend_with(&[1, 2, 3], "offsets", false),
            backend_with(&[4, 5], "offsets", false),
        ];
        let new = redistribute("src", &old, 3).unwrap();
        let got: Vec<Vec<u64>> = new
            .into_iter()
            .map(|s| restore_values(s, "offsets", false))
            .collect();
        assert_eq!(got, vec![vec![1, 4], vec![2, 5], vec![3]]);

        let old = vec![backend_with(&[1], "u", true), backend_with(&[2], "u", true)];
        let new = redistribute("src", &old, 3).unwrap();
        for s in new {
            assert_eq!(restore_values(s, "u", true), vec![1, 2]);
        }
    }

    #[test]
    fn split_keeps_assignment_at_unchanged_parallelism() {
        let old = vec![
            backend_with(&[1, 2, 3], "offsets", false),
            backend_with(&[4], "offsets", false),
        ];
        let got: Vec<Vec<u64>> = redistribute("src", &old, 2)
            .unwrap()
            .into_iter()
            .map(|s| restore_values(s, "offsets", false))
            .collect();
        assert_eq!(got, vec![vec![1, 2, 3], vec![4]]);
    }

    #[test]
    fn failed_registration_keeps_the_restored_state() {
        // Same identity, bytes that do not decode as the registered type.
        let mut snap = backend_with(&[7], "offsets", false);
        snap[0].elements = vec![vec![1, 2, 3]];
        let mut b = OperatorStateBackend::new("src");
        b.restore(snap.clone()).unwrap();
        let d = OperatorListStateDescriptor::<u64>::split("offsets");
        let err = b.register_list(&d).unwrap_err().to_string();
        assert!(err.contains("uid=src state=offsets element=0"), "{err}");
        assert_eq!(
            b.snapshot().unwrap(),
            snap,
            "restored state is still carried"
        );
        let err = b
            .register_list(&OperatorListStateDescriptor::<u64>::union("offsets"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mode Split") && err.contains("Union"), "{err}");
        assert_eq!(b.snapshot().unwrap(), snap);
    }

    #[test]
    fn unregistered_state_survives_a_snapshot() {
        let snap = backend_with(&[7], "keep", false);
        let mut b = OperatorStateBackend::new("src");
        b.restore(snap.clone()).unwrap();
        assert_eq!(b.snapshot().unwrap(), snap);
    }

    #[test]
    fn restored_elements_migrate_to_the_registered_schema() {
        let snap = backend_with(&[7, 8], "offsets", false);
        let evolving = || OperatorListStateDescriptor::<(u64, bool)> {
            name: "offsets".into(),
            codec: std::sync::Arc::new(
                crate::EvolvingCodec::new(crate::BincodeCodec::<(u64, bool)>::named("Offset", 2))
                    .migrates_from(crate::BincodeCodec::<u64>::new(), |o: u64| (o, o > 7)),
            ),
            mode: Redistribution::Split,
        };
        let mut b = OperatorStateBackend::new("src");
        b.restore(snap).unwrap();
        let id = b.register_list(&evolving()).unwrap();
        assert_eq!(*b.list(id).unwrap(), [(7, false), (8, true)]);
        // Later snapshots hold the new schema, which the new program reads as is and the
        // old one no longer reads.
        let again = b.snapshot().unwrap();
        assert_eq!(again[0].codec.type_name, "Offset");
        let mut c = OperatorStateBackend::new("src");
        c.restore(again.clone()).unwrap();
        let id = c.register_list(&evolving()).unwrap();
        assert_eq!(*c.list(id).unwrap(), [(7, false), (8, true)]);
        let mut old = OperatorStateBackend::new("src");
        old.restore(again).unwrap();
        let err = old
            .register_list(&OperatorListStateDescriptor::<u64>::split("offsets"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("Offset@v2"), "{err}");
    }

    #[test]
    fn state_migrated_in_some_subtasks_restores_only_as_split_state_at_its_parallelism() {
        let v1 = backend_with(&[1, 2], "offsets", false);
        let mut v2 = backend_with(&[3], "offsets", false);
        v2[0].codec =
            crate::Codec::identity(&crate::BincodeCodec::<(u64, bool)>::named("Offset", 2)).clone();
        let old = vec![v1.clone(), v2.clone()];
        let same = redistribute("src", &old, 2).unwrap();
        assert_eq!(
            same,
            vec![v1.clone(), v2],
            "each subtask its own, codec included"
        );
        let e = redistribute("src", &old, 3).unwrap_err().to_string();
        assert!(
            e.contains("u64@v1") && e.contains("Offset@v2") && e.contains("operator src"),
            "{e}"
        );
        let mut u1 = backend_with(&[1], "all", true);
        let u2 = backend_with(&[2], "all", true);
        u1[0].codec.version = 2;
        assert!(
            redistribute("src", &[u1, u2], 2).is_err(),
            "union state mixes them"
        );
    }

    #[test]
    fn codec_mismatch_names_both_sides() {
        let snap = backend_with(&[7], "offsets", false);
        let mut b = OperatorStateBackend::new("src");
        b.restore(snap).unwrap();
        let err = b
            .register_list(&OperatorListStateDescriptor::<String>::split("offsets"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("u64@v1") && err.contains("String@v1"), "{err}");
        assert!(err.contains("operator src"), "{err}");
    }
}
