//! The storage behind a context.
//!
//! [`SharedMap`] is a persistent radix trie over slot numbers: a snapshot is
//! one reference-count increment, and the first write after a snapshot copies
//! only the nodes on the path to the slot (at most 16 entries a level), never
//! the whole map. Nodes are sparse (a bitmap and the children present), so a
//! context with one value costs one small node.
//!
//! [`SlotVec`] is a plain vector of owned slots, for values that are never
//! shared between contexts.

use std::sync::Arc;

use crate::value::SharedArc;

/// The reference-counted pointer to a trie node: what snapshots share. Under
/// `cfg(loom)` it is loom's, so the model checker explores every interleaving
/// of snapshots cloned, written and dropped on several threads.
#[cfg(not(loom))]
type NodeRef = Arc<Node>;
#[cfg(loom)]
type NodeRef = loom::sync::Arc<Node>;

/// A node to write to: the node itself if no snapshot shares it, else a copy
/// (`Arc::make_mut`; spelled out for loom, whose `Arc` has no `make_mut`).
#[cfg(not(loom))]
fn unique(node: &mut NodeRef) -> &mut Node {
    Arc::make_mut(node)
}

#[cfg(loom)]
fn unique(node: &mut NodeRef) -> &mut Node {
    if loom::sync::Arc::get_mut(node).is_none() {
        *node = loom::sync::Arc::new(Node::clone(node));
    }
    loom::sync::Arc::get_mut(node).expect("a fresh copy is unshared")
}

const BITS: u32 = 4;
const WIDTH: usize = 1 << BITS;
const MASK: usize = WIDTH - 1;

type Value = SharedArc;

#[derive(Clone)]
enum Child {
    Node(NodeRef),
    Value(Value),
}

/// One trie node: a bitmap of the children present, and those children in
/// index order.
#[derive(Clone, Default)]
struct Node {
    bitmap: u16,
    /// In the root: levels of inner nodes above the leaves, so the map covers
    /// slots below `16^(height + 1)`. Kept here rather than in `SharedMap` so
    /// a map is one word, which swapping contexts on every poll copies.
    height: u32,
    children: Vec<Child>,
}

impl Node {
    #[inline]
    fn position(&self, digit: usize) -> Result<usize, usize> {
        let bit = 1u16 << digit;
        let below = (self.bitmap & (bit - 1)).count_ones() as usize;
        if self.bitmap & bit == 0 {
            Err(below)
        } else {
            Ok(below)
        }
    }

    #[inline]
    fn child(&self, digit: usize) -> Option<&Child> {
        self.position(digit).ok().map(|at| &self.children[at])
    }

    fn insert_child(&mut self, digit: usize, at: usize, child: Child) {
        self.bitmap |= 1 << digit;
        self.children.insert(at, child);
    }

    fn remove_child(&mut self, digit: usize, at: usize) -> Child {
        self.bitmap &= !(1 << digit);
        self.children.remove(at)
    }
}

/// A persistent map from slot numbers to shared values.
#[derive(Clone, Default)]
pub(crate) struct SharedMap {
    root: Option<NodeRef>,
}

impl SharedMap {
    pub(crate) const fn new() -> SharedMap {
        SharedMap { root: None }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.root.is_none()
    }

    /// The slots whose values dropping this map would drop: reached through
    /// nodes only this map holds, and held by nothing else. Markers (`()`)
    /// are left out: dropping them runs no code. Visits only unshared nodes,
    /// so after a snapshot and a few writes it looks at a path or two.
    pub(crate) fn owned_values(&self) -> Vec<usize> {
        let mut out = Vec::new();
        if let Some(root) = &self.root {
            if sole(root) {
                collect_owned(root, BITS * root.height, 0, &mut out);
            }
        }
        out
    }

    fn height(&self) -> u32 {
        self.root.as_ref().map_or(0, |root| root.height)
    }

    fn covers(&self, index: usize) -> bool {
        covers(self.height(), index)
    }

    /// The value in slot `index`, if any.
    #[inline(never)]
    pub(crate) fn get(&self, index: usize) -> Option<&Value> {
        let mut node = self.root.as_deref()?;
        if !covers(node.height, index) {
            return None;
        }
        let mut shift = BITS * node.height;
        loop {
            match node.child((index >> shift) & MASK)? {
                Child::Value(value) => return Some(value),
                Child::Node(next) => {
                    node = next;
                    shift -= BITS;
                }
            }
        }
    }

    /// Stores `value` in slot `index`, returning what was there.
    pub(crate) fn insert(&mut self, index: usize, value: Value) -> Option<Value> {
        while !self.covers(index) && self.root.is_some() {
            self.grow();
        }
        let root = self.root.get_or_insert_with(|| {
            let height = (0..).find(|height| covers(*height, index)).expect("some height covers every index");
            NodeRef::new(Node { height, ..Node::default() })
        });
        let root = unique(root);
        insert_at(root, BITS * root.height, index, value)
    }

    /// Empties slot `index`, returning what was there. Copies nothing when the
    /// slot is already empty.
    pub(crate) fn remove(&mut self, index: usize) -> Option<Value> {
        self.get(index)?;
        let root = unique(self.root.as_mut()?);
        let removed = remove_at(root, BITS * root.height, index);
        if root.children.is_empty() {
            self.root = None;
        }
        removed
    }

    /// Every stored slot and value, in slot order.
    pub(crate) fn entries(&self) -> Vec<(usize, Value)> {
        let mut out = Vec::new();
        if let Some(root) = &self.root {
            collect(root, BITS * root.height, 0, &mut out);
        }
        out
    }

    /// Whether `self` and `other` are the same snapshot (no write since).
    #[cfg(any(test, feature = "tokio"))]
    pub(crate) fn same_as(&self, other: &SharedMap) -> bool {
        match (&self.root, &other.root) {
            (Some(a), Some(b)) => NodeRef::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }

    fn grow(&mut self) {
        let old = self.root.take().expect("grow is only called on a non-empty map");
        let mut root = Node { height: old.height + 1, ..Node::default() };
        root.insert_child(0, 0, Child::Node(old));
        self.root = Some(NodeRef::new(root));
    }
}

/// Whether this is the only reference to the node.
fn sole(node: &NodeRef) -> bool {
    #[cfg(not(loom))]
    return Arc::strong_count(node) == 1;
    #[cfg(loom)]
    return true;
}

fn collect_owned(node: &Node, shift: u32, base: usize, out: &mut Vec<usize>) {
    let mut children = node.children.iter();
    for digit in (0..WIDTH).filter(|digit| node.bitmap & (1 << digit) != 0) {
        let index = base | (digit << shift);
        match children.next().expect("one child per bit") {
            Child::Value(value) => {
                let marker = (&**value as &dyn std::any::Any).is::<()>();
                if Arc::strong_count(value) == 1 && !marker {
                    out.push(index);
                }
            }
            Child::Node(next) if sole(next) => collect_owned(next, shift - BITS, index, out),
            Child::Node(_) => {}
        }
    }
}

/// Whether a map of `height` covers slot `index`.
#[inline]
fn covers(height: u32, index: usize) -> bool {
    let bits = BITS * (height + 1);
    bits >= usize::BITS || index >> bits == 0
}

fn insert_at(node: &mut Node, shift: u32, index: usize, value: Value) -> Option<Value> {
    let digit = (index >> shift) & MASK;
    match (node.position(digit), shift) {
        (Ok(at), 0) => match &mut node.children[at] {
            Child::Value(old) => Some(std::mem::replace(old, value)),
            Child::Node(_) => unreachable!("leaves hold values"),
        },
        (Err(at), 0) => {
            node.insert_child(digit, at, Child::Value(value));
            None
        }
        (Ok(at), _) => match &mut node.children[at] {
            Child::Node(next) => insert_at(unique(next), shift - BITS, index, value),
            Child::Value(_) => unreachable!("inner nodes hold nodes"),
        },
        (Err(at), _) => {
            let mut next = Node::default();
            insert_at(&mut next, shift - BITS, index, value);
            node.insert_child(digit, at, Child::Node(NodeRef::new(next)));
            None
        }
    }
}

fn remove_at(node: &mut Node, shift: u32, index: usize) -> Option<Value> {
    let digit = (index >> shift) & MASK;
    let at = node.position(digit).ok()?;
    if shift == 0 {
        return match node.remove_child(digit, at) {
            Child::Value(value) => Some(value),
            Child::Node(_) => unreachable!("leaves hold values"),
        };
    }
    let Child::Node(next) = &mut node.children[at] else { unreachable!("inner nodes hold nodes") };
    let next = unique(next);
    let removed = remove_at(next, shift - BITS, index);
    if next.children.is_empty() {
        node.remove_child(digit, at);
    }
    removed
}

fn collect(node: &Node, shift: u32, base: usize, out: &mut Vec<(usize, Value)>) {
    let mut children = node.children.iter();
    for digit in 0..WIDTH {
        if node.bitmap & (1 << digit) == 0 {
            continue;
        }
        let index = base | (digit << shift);
        match children.next().expect("one child per bit") {
            Child::Value(value) => out.push((index, value.clone())),
            Child::Node(next) => collect(next, shift - BITS, index, out),
        }
    }
}

/// Owned slots indexed by slot number; `B` is the box type kept.
pub(crate) struct SlotVec<B> {
    slots: Vec<Option<B>>,
}

impl<B> SlotVec<B> {
    pub(crate) const fn new() -> SlotVec<B> {
        SlotVec { slots: Vec::new() }
    }

    #[inline]
    pub(crate) fn get(&self, index: usize) -> Option<&B> {
        self.slots.get(index)?.as_ref()
    }

    pub(crate) fn insert(&mut self, index: usize, value: B) -> Option<B> {
        if index >= self.slots.len() {
            self.slots.resize_with(index + 1, || None);
        }
        self.slots[index].replace(value)
    }

    pub(crate) fn remove(&mut self, index: usize) -> Option<B> {
        self.slots.get_mut(index)?.take()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// Takes every value out, leaving the vector empty.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (usize, B)> {
        std::mem::take(&mut self.slots)
            .into_iter()
            .enumerate()
            .filter_map(|(index, slot)| slot.map(|value| (index, value)))
    }
}

impl<B> Default for SlotVec<B> {
    fn default() -> Self {
        SlotVec::new()
    }
}

/// A [`SlotVec`] behind one pointer, allocated on first insert: a context's
/// own slots. Keeps `Context` at two words, so installing one on every poll
/// is two word swaps (a three-word vector made the swap stall on partial
/// store forwarding, seen with `perf annotate` on the `poll` bench).
pub(crate) struct BoxedSlots<B> {
    slots: Option<Box<SlotVec<B>>>,
}

impl<B> BoxedSlots<B> {
    pub(crate) const fn new() -> BoxedSlots<B> {
        BoxedSlots { slots: None }
    }

    #[inline]
    pub(crate) fn get(&self, index: usize) -> Option<&B> {
        self.slots.as_ref()?.get(index)
    }

    pub(crate) fn insert(&mut self, index: usize, value: B) -> Option<B> {
        self.slots.get_or_insert_with(Box::default).insert(index, value)
    }

    pub(crate) fn remove(&mut self, index: usize) -> Option<B> {
        self.slots.as_mut()?.remove(index)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.as_ref().is_none_or(|slots| slots.is_empty())
    }

    /// The slot numbers holding a value.
    pub(crate) fn indices(&self) -> Vec<usize> {
        let Some(slots) = self.slots.as_ref() else {
            return Vec::new();
        };
        slots.slots.iter().enumerate().filter(|(_, slot)| slot.is_some()).map(|(index, _)| index).collect()
    }

    /// Takes every value out, leaving no allocation behind.
    #[cfg(feature = "tokio")]
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (usize, B)> {
        self.slots.take().into_iter().flat_map(|mut slots| slots.drain().collect::<Vec<_>>())
    }
}

impl<B> Default for BoxedSlots<B> {
    fn default() -> Self {
        BoxedSlots::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(n: u64) -> Value {
        Arc::new(n)
    }

    fn read(map: &SharedMap, index: usize) -> Option<u64> {
        map.get(index).map(|v| *(&**v as &dyn std::any::Any).downcast_ref::<u64>().unwrap())
    }

    #[test]
    fn stores_and_finds_across_levels() {
        let mut map = SharedMap::new();
        let indices = [0usize, 1, 15, 16, 17, 255, 256, 4095, 4096, 70_000];
        for &i in &indices {
            assert!(map.insert(i, value(i as u64)).is_none());
        }
        for &i in &indices {
            assert_eq!(read(&map, i), Some(i as u64));
        }
        assert_eq!(read(&map, 2), None);
        assert_eq!(read(&map, 1 << 40), None);
        let listed: Vec<usize> = map.entries().into_iter().map(|(i, _)| i).collect();
        assert_eq!(listed, indices);
    }

    #[test]
    fn snapshot_is_independent_of_later_writes() {
        let mut map = SharedMap::new();
        for i in 0..64 {
            map.insert(i, value(i as u64));
        }
        let snapshot = map.clone();
        assert!(snapshot.same_as(&map));
        map.insert(5, value(500));
        map.remove(6);
        assert!(!snapshot.same_as(&map));
        assert_eq!(read(&snapshot, 5), Some(5));
        assert_eq!(read(&snapshot, 6), Some(6));
        assert_eq!(read(&map, 5), Some(500));
        assert_eq!(read(&map, 6), None);
    }

    #[test]
    fn removing_everything_empties_the_map() {
        let mut map = SharedMap::new();
        map.insert(300, value(1));
        map.insert(3, value(2));
        assert!(map.remove(300).is_some());
        assert!(map.remove(300).is_none());
        assert!(map.remove(3).is_some());
        assert!(map.is_empty());
    }

    #[test]
    fn slot_vec_round_trip() {
        let mut slots: SlotVec<Box<u8>> = SlotVec::new();
        assert!(slots.insert(3, Box::new(3)).is_none());
        assert_eq!(slots.insert(3, Box::new(4)).map(|b| *b), Some(3));
        assert_eq!(slots.get(3).map(|b| **b), Some(4));
        assert!(slots.get(9).is_none());
        assert_eq!(slots.drain().map(|(i, b)| (i, *b)).collect::<Vec<_>>(), vec![(3, 4)]);
        assert!(slots.is_empty());
    }
}

/// Snapshots shared between threads, under loom: each side writes to its own
/// copy while the other reads and drops, and neither ever sees the other's
/// writes (`RUSTFLAGS="--cfg loom" cargo test -p context-local
/// --no-default-features --lib loom`).
#[cfg(all(test, loom))]
mod loom_tests {
    use std::sync::Arc;

    use super::SharedMap;

    fn read(map: &SharedMap, index: usize) -> Option<u64> {
        map.get(index).map(|v| *(&**v as &dyn std::any::Any).downcast_ref::<u64>().expect("u64"))
    }

    #[test]
    fn loom_snapshots_written_on_two_threads_stay_independent() {
        loom::model(|| {
            let mut map = SharedMap::new();
            for i in [0usize, 1, 17] {
                map.insert(i, Arc::new(i as u64));
            }
            let snapshot = map.clone();
            let child = loom::thread::spawn(move || {
                let mut mine = snapshot;
                mine.insert(1, Arc::new(100u64));
                mine.remove(17);
                (read(&mine, 0), read(&mine, 1), read(&mine, 17))
            });
            map.insert(0, Arc::new(50u64));
            let grandchild = map.clone();
            drop(map);
            assert_eq!(
                (read(&grandchild, 0), read(&grandchild, 1), read(&grandchild, 17)),
                (Some(50), Some(1), Some(17))
            );
            assert_eq!(child.join().expect("thread"), (Some(0), Some(100), None));
        });
    }
}
