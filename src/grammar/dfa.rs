//! Subset construction: NFA → DFA over byte classes.
//!
//! Bytes that every NFA edge treats alike form one class, so the transition table is
//! `states x classes` (the job schema has ~60 classes instead of 256). State 0 is the dead state,
//! state 1 the start. Each state also records which structural character a `<unk>` byte stands for
//! there (`umean`); the construction checks that it is unique (see surface.rs).

use super::schema::{ByteSet, Nfa};
use super::surface::UNK_BYTE;
use super::{GrammarError, Result};
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct Dfa {
    /// Number of byte classes.
    pub ncls: usize,
    /// Byte → class.
    pub class_of: [u8; 256],
    /// `trans[state * ncls + class]`, 0 = dead.
    pub trans: Vec<u32>,
    pub accepting: Vec<bool>,
    /// Structural character that [`UNK_BYTE`] stands for in each state (0 = none).
    pub umean: Vec<u8>,
}

/// A fast hasher for the small integer keys of compilation (FxHash-style multiply-rotate); the
/// std SipHash showed up at ~5% of compile time. Not DoS-resistant, which is fine for these maps.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, x: u32) {
        self.write_u64(x as u64);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub type FxBuild = std::hash::BuildHasherDefault<FxHasher>;
pub type FxMap<K, V> = HashMap<K, V, FxBuild>;

pub const DEAD: u32 = 0;
pub const START: u32 = 1;

impl Dfa {
    #[inline(always)]
    pub fn next(&self, s: u32, b: u8) -> u32 {
        // SAFETY-free fast path: class_of is 256 entries, trans has states*ncls entries and
        // every stored target is a valid state, so indexing cannot fail for valid `s`.
        self.trans[s as usize * self.ncls + self.class_of[b as usize] as usize]
    }

    pub fn num_states(&self) -> usize {
        self.accepting.len()
    }

    /// Runs the automaton over bytes; returns DEAD if rejected.
    pub fn run(&self, mut s: u32, bytes: &[u8]) -> u32 {
        for &b in bytes {
            s = self.next(s, b);
            if s == DEAD {
                return DEAD;
            }
        }
        s
    }

    /// Builds the DFA of an NFA, failing when more than `max_states` states are needed.
    pub fn from_nfa(nfa: &Nfa, max_states: usize) -> Result<Dfa> {
        // 1. Byte classes: refine by every distinct edge set.
        let mut sets: Vec<ByteSet> = Vec::new();
        let mut set_index: FxMap<ByteSet, usize> = FxMap::default();
        for n in &nfa.nodes {
            for e in &n.edges {
                set_index.entry(e.set).or_insert_with(|| {
                    sets.push(e.set);
                    sets.len() - 1
                });
            }
        }
        let words = sets.len().div_ceil(64).max(1);
        let mut sig_to_class: FxMap<Vec<u64>, u8> = FxMap::default();
        let mut class_of = [0u8; 256];
        // At most 256 classes, so a class id fits in a u8.
        let mut ncls = 0usize;
        for (b, class) in class_of.iter_mut().enumerate() {
            let mut sig = vec![0u64; words];
            for (i, s) in sets.iter().enumerate() {
                if s.contains(b as u8) {
                    sig[i / 64] |= 1 << (i % 64);
                }
            }
            let c = match sig_to_class.get(&sig) {
                Some(&c) => c,
                None => {
                    let c = ncls as u8;
                    ncls += 1;
                    sig_to_class.insert(sig, c);
                    c
                }
            };
            *class = c;
        }
        // Classes covered by each distinct set.
        let mut set_classes: Vec<Vec<u8>> = vec![Vec::new(); sets.len()];
        for (i, s) in sets.iter().enumerate() {
            let mut seen = [false; 256];
            for (b, &c) in class_of.iter().enumerate() {
                if s.contains(b as u8) && !seen[c as usize] {
                    seen[c as usize] = true;
                    set_classes[i].push(c);
                }
            }
        }
        let unk_class = class_of[UNK_BYTE as usize];

        // 2. Subset construction.
        let n_nfa = nfa.nodes.len();
        let mut stamp = vec![0u32; n_nfa];
        let mut stamp_id = 0u32;
        let mut closure = |seeds: &[u32], out: &mut Vec<u32>| {
            stamp_id += 1;
            out.clear();
            let mut stack: Vec<u32> = Vec::new();
            for &s in seeds {
                if stamp[s as usize] != stamp_id {
                    stamp[s as usize] = stamp_id;
                    stack.push(s);
                }
            }
            while let Some(x) = stack.pop() {
                out.push(x);
                for &y in &nfa.nodes[x as usize].eps {
                    if stamp[y as usize] != stamp_id {
                        stamp[y as usize] = stamp_id;
                        stack.push(y);
                    }
                }
            }
            out.sort_unstable();
        };
        let mut ids: FxMap<Vec<u32>, u32> = FxMap::default();
        let mut subsets: Vec<Vec<u32>> = vec![Vec::new()]; // state 0: dead
        let mut first = Vec::new();
        closure(&[nfa.start], &mut first);
        ids.insert(first.clone(), START);
        subsets.push(first);
        let mut trans: Vec<u32> = vec![DEAD; 2 * ncls];
        let mut umean: Vec<u8> = vec![0, 0];
        let mut buckets: Vec<Vec<u32>> = vec![Vec::new(); ncls];
        let mut closed = Vec::new();
        let mut s = START as usize;
        while s < subsets.len() {
            for b in buckets.iter_mut() {
                b.clear();
            }
            let mut um = 0u8;
            for &x in &subsets[s] {
                for e in &nfa.nodes[x as usize].edges {
                    let si = set_index[&e.set];
                    for &c in &set_classes[si] {
                        buckets[c as usize].push(e.to);
                        if c == unk_class && e.umean != 0 {
                            if um != 0 && um != e.umean {
                                return Err(GrammarError::InvalidSchema {
                                    path: "#".into(),
                                    msg: format!(
                                        "internal: <unk> would stand for both '{}' and '{}'",
                                        um as char, e.umean as char
                                    ),
                                });
                            }
                            um = e.umean;
                        }
                    }
                }
            }
            umean[s] = um;
            for c in 0..ncls {
                if buckets[c].is_empty() {
                    continue;
                }
                closure(&buckets[c], &mut closed);
                let t = match ids.get(&closed) {
                    Some(&t) => t,
                    None => {
                        if subsets.len() >= max_states {
                            return Err(GrammarError::Budget {
                                what: "DFA states",
                                limit: max_states,
                                path: "#".into(),
                            });
                        }
                        let t = subsets.len() as u32;
                        ids.insert(closed.clone(), t);
                        subsets.push(closed.clone());
                        trans.extend(std::iter::repeat_n(DEAD, ncls));
                        umean.push(0);
                        t
                    }
                };
                trans[s * ncls + c] = t;
            }
            s += 1;
        }
        let accepting = subsets
            .iter()
            .map(|set| set.binary_search(&nfa.accept).is_ok())
            .collect();
        Ok(Dfa {
            ncls,
            class_of,
            trans,
            accepting,
            umean,
        })
    }
}
