//! Every state kind against expectations, registration and key rules.

mod common;

use cairn_core::*;
use common::*;

struct Avg;
impl AggregateFunction<u64, (u64, u64), f64> for Avg {
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, u64), input: u64) {
        acc.0 += input;
        acc.1 += 1;
    }
    fn result(&self, acc: &(u64, u64)) -> f64 {
        acc.0 as f64 / acc.1 as f64
    }
}

#[test]
fn value_state_get_update_clear() {
    let mut b = full();
    let s = b
        .register_value(&ValueStateDescriptor::<String>::new("v"))
        .unwrap();
    b.set_current_key(&key(1)).unwrap();
    assert_eq!(b.value(&s).get().unwrap(), None);
    b.value(&s).update("a".into()).unwrap();
    b.value(&s).update("b".into()).unwrap();
    b.set_current_key(&key(2)).unwrap();
    assert_eq!(b.value(&s).get().unwrap(), None);
    b.value(&s).update("c".into()).unwrap();
    b.set_current_key(&key(1)).unwrap();
    assert_eq!(b.value(&s).get().unwrap().as_deref(), Some("b"));
    b.value(&s).clear().unwrap();
    b.value(&s).clear().unwrap();
    assert_eq!(b.value(&s).get().unwrap(), None);
    assert_eq!(b.keys(s.raw(), &()).unwrap(), vec![key(2)]);
}

#[test]
fn list_state_add_update_and_empty_removes() {
    let mut b = full();
    let s = b
        .register_list(&ListStateDescriptor::<u32>::new("l"))
        .unwrap();
    b.set_current_key(&key(7)).unwrap();
    assert!(b.list(&s).get().unwrap().is_empty());
    b.list(&s).add_all(vec![]).unwrap();
    assert!(
        b.keys(s.raw(), &()).unwrap().is_empty(),
        "add_all([]) creates nothing"
    );
    b.list(&s).add(1).unwrap();
    b.list(&s).add_all(vec![2, 3]).unwrap();
    assert_eq!(b.list(&s).get().unwrap(), [1, 2, 3]);
    b.list(&s).update(vec![9]).unwrap();
    assert_eq!(b.list(&s).get().unwrap(), [9]);
    b.list(&s).update(vec![]).unwrap();
    assert!(b.keys(s.raw(), &()).unwrap().is_empty());
}

#[test]
fn map_state_put_get_remove_entries_sorted() {
    let mut b = full();
    let s = b
        .register_map(&MapStateDescriptor::<u32, String>::new("m"))
        .unwrap();
    b.set_current_key(&key(3)).unwrap();
    for k in [300u32, 1, 256, 2] {
        b.map(&s).put(k, format!("v{k}")).unwrap();
    }
    b.map(&s).put(2, "two".into()).unwrap();
    assert_eq!(b.map(&s).get(&2).unwrap().as_deref(), Some("two"));
    assert!(b.map(&s).contains(&256).unwrap());
    assert!(!b.map(&s).contains(&5).unwrap());
    b.map(&s).remove(&5).unwrap();
    // Sorted by the little-endian encoding: 256 (00 01), 1 (01 00), 2 (02 00), 300 (2c 01).
    let keys: Vec<u32> = b
        .map(&s)
        .entries()
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(keys, [256, 1, 2, 300]);
    for k in [300u32, 1, 256, 2] {
        b.map(&s).remove(&k).unwrap();
    }
    assert!(b.map(&s).is_empty().unwrap());
    assert!(
        b.keys(s.raw(), &()).unwrap().is_empty(),
        "the last removal removes the entry"
    );
}

#[test]
fn reducing_and_aggregating() {
    let mut b = full();
    let r = b
        .register_reducing(&ReducingStateDescriptor::<String>::new("r", |a, b| a + &b))
        .unwrap();
    let a = b
        .register_aggregating(&AggregatingStateDescriptor::<u64, (u64, u64), f64>::new(
            "a", Avg,
        ))
        .unwrap();
    b.set_current_key(&key(1)).unwrap();
    assert_eq!(b.reducing(&r).get().unwrap(), None);
    for s in ["x", "y", "z"] {
        b.reducing(&r).add(s.into()).unwrap();
    }
    assert_eq!(b.reducing(&r).get().unwrap().as_deref(), Some("xyz"));
    assert_eq!(b.aggregating(&a).get().unwrap(), None);
    for v in [1, 2, 6] {
        b.aggregating(&a).add(v).unwrap();
    }
    assert_eq!(b.aggregating(&a).get().unwrap(), Some(3.0));
    b.reducing(&r).clear().unwrap();
    b.aggregating(&a).clear().unwrap();
    assert_eq!(b.reducing(&r).get().unwrap(), None);
    assert_eq!(b.aggregating(&a).get().unwrap(), None);
}

#[test]
fn namespaces_scope_entries() {
    let mut b = full();
    let d = ValueStateDescriptor::<u64>::new("w")
        .with_namespace::<u32>(std::sync::Arc::new(BincodeCodec::new()));
    let s = b.register_value(&d).unwrap();
    for k in [1u64, 2] {
        b.set_current_key(&key(k)).unwrap();
        for w in 0..3u32 {
            b.value_in(&s, &w).update(k * 10 + u64::from(w)).unwrap();
        }
    }
    b.set_current_key(&key(1)).unwrap();
    b.value_in(&s, &1).clear().unwrap();
    assert_eq!(b.value_in(&s, &0).get().unwrap(), Some(10));
    assert_eq!(b.value_in(&s, &1).get().unwrap(), None);
    assert_eq!(b.keys(s.raw(), &1u32).unwrap(), vec![key(2)]);
    let mut both = vec![key(1), key(2)];
    both.sort();
    assert_eq!(b.keys(s.raw(), &2u32).unwrap(), both);
    // The wrong namespace type is an error, not a panic.
    assert!(b.keys(s.raw(), &()).is_err());
}

#[test]
fn registration_is_idempotent_and_checked() {
    let mut b = full();
    let v = b
        .register_value(&ValueStateDescriptor::<u64>::new("v"))
        .unwrap();
    let again = b
        .register_value(&ValueStateDescriptor::<u64>::new("v"))
        .unwrap();
    assert_eq!(v.raw(), again.raw());
    let err = b
        .register_list(&ListStateDescriptor::<u64>::new("v"))
        .unwrap_err();
    assert!(matches!(err, StateError::KindMismatch { .. }), "{err}");
    let err = b
        .register_value(&ValueStateDescriptor::<String>::new("v"))
        .unwrap_err();
    assert!(
        matches!(err, StateError::IncompatibleCodec { part: "value", .. }),
        "{err}"
    );
    // Same kind and codec identity but other Rust types.
    let lying_first = ValueStateDescriptor::<u64> {
        name: "n".into(),
        value: std::sync::Arc::new(BincodeCodec::<u64>::named("x", 1)),
        namespace: std::sync::Arc::new(BincodeCodec::new()),
    };
    b.register_value(&lying_first).unwrap();
    let lying_second = ValueStateDescriptor::<i64> {
        name: "n".into(),
        value: std::sync::Arc::new(BincodeCodec::<i64>::named("x", 1)),
        namespace: std::sync::Arc::new(BincodeCodec::new()),
    };
    assert!(b.register_value(&lying_second).is_err());
    // Ids are checked on use: a reducing id for a value state.
    let wrong = ReducingStateId::<u64, ()>::new(RawStateId {
        index: v.raw().index,
        kind: StateKind::Reducing,
    });
    b.set_current_key(&key(1)).unwrap();
    assert!(matches!(
        b.reducing(&wrong).get(),
        Err(StateError::KindMismatch { .. })
    ));
    let unknown = ValueStateId::<u64, ()>::new(RawStateId {
        index: 99,
        kind: StateKind::Value,
    });
    assert!(matches!(
        b.value(&unknown).get(),
        Err(StateError::UnknownState { index: 99 })
    ));
}

#[test]
fn current_key_rules() {
    let range = KeyGroupRange::for_subtask(MAX_P, 4, 1).unwrap();
    let mut b = backend(range);
    let v = b
        .register_value(&ValueStateDescriptor::<u64>::new("v"))
        .unwrap();
    assert!(matches!(
        b.value(&v).get(),
        Err(StateError::NoCurrentKey { .. })
    ));
    assert!(matches!(
        b.value(&v).clear(),
        Err(StateError::NoCurrentKey { .. })
    ));
    let inside = (0..).find(|k| range.contains(kg(*k))).unwrap();
    let outside = (0..).find(|k| !range.contains(kg(*k))).unwrap();
    b.set_current_key(&key(inside)).unwrap();
    let err = b.set_current_key(&key(outside)).unwrap_err();
    assert!(matches!(err, StateError::KeyGroupOutOfRange { range: r, .. } if r == range));
    // A failed call leaves no key current (the trait's contract), so a caller that ignores
    // the error cannot write to the previous key.
    assert_eq!(b.current_key(), None);
    assert!(matches!(
        b.value(&v).update(1),
        Err(StateError::NoCurrentKey { .. })
    ));
    b.set_current_key(&key(inside)).unwrap();
    assert_eq!(b.current_key(), Some(key(inside).as_slice()));
    assert_eq!(b.current_key_group(), Some(kg(inside)));
}

#[test]
fn config_is_validated() {
    let id = key_codec().identity().clone();
    assert!(cairn_hashmap::HashMapBackend::for_subtask("op", 128, 3, 3, id.clone()).is_err());
    let bad = |r| {
        cairn_hashmap::HashMapBackend::new(cairn_hashmap::HashMapConfig {
            uid: "op".into(),
            max_parallelism: 16,
            key_group_range: r,
            key_codec: id.clone(),
        })
    };
    assert!(bad(KeyGroupRange::new(4, 4)).is_err());
    assert!(bad(KeyGroupRange::new(4, 17)).is_err());
    assert!(bad(KeyGroupRange::new(0, 16)).is_ok());
}
