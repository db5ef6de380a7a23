//! A compiled grammar: the schema's DFA joined with a vocabulary.
//!
//! For every DFA state this precomputes (at compile time, shared by all requests through `Arc`):
//! - the allowed-token mask (u32 words over the vocabulary, EOS bits set in accepting states),
//!   deduplicated across states, and the single allowed token where there is exactly one (forced);
//! - the token transitions that leave the state (`pairs`), and `dist[s]`: the minimal number of
//!   tokens that completes the document from `s` (breadth-first search backwards from the accepting
//!   states over exactly the transitions the masks allow, so the numbers are achievable).
//!
//! Mask computation per state: tokens made only of string-content bytes ("pure" tokens: printable
//! ASCII except `"` and `\`) are ~80% of a vocabulary. In a state where every content byte leads to
//! the same next state ("uniform", e.g. inside a free string), a pure token of `c` bytes ends in
//! `u^c(s)` whatever its bytes, so its whole length class is added with one bitset OR; only the
//! few hundred other ("structural") tokens are walked through their trie. Other states (literals,
//! numbers, escapes) also walk the trie of pure tokens, which the DFA prunes after a byte or two;
//! a subtree that reaches a uniform state is taken whole as a token range (`PureRange`: after
//! `\u` every token starting with a hex digit continues into string content).
//! Masks are deduplicated by a recipe key (allowed singles, length classes, ranges) and by content.
//!
//! Token budget: `mask_for(s, R)` takes the document budget `R` (tokens left for the document,
//! EOS not counted; the `Matcher` holds the EOS slot back from its EOS-inclusive budget) and
//! allows a token only if `dist[next] <= R - 1`, so by induction every output can be completed,
//! EOS included, within the budget. While `R - 1 >= maxd[s]` (the largest such distance among the
//! state's transitions) the unbudgeted mask is used; below that, masks per (state, distance
//! level) are built on first use and cached.
//!
//! The first generated token is special: tokenizer decoders drop its leading space (vocab.rs), so
//! a pseudo-state `P0` (index `num_states`) holds the transitions of the first token, computed by
//! walking the trie of first-position texts from the start state.

use super::dfa::{Dfa, FxMap, DEAD, START};
use super::schema::{compile_nfa, Budgets};
use super::surface::{Surface, SurfaceOptions, UNK_BYTE};
use super::vocab::{is_content_byte, Vocab, VocabIndex};
use super::{GrammarError, Result};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Unreachable / cannot complete.
pub const INF: u32 = u32::MAX;

/// Options for [`Grammar::compile`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CompileOptions {
    pub surface: SurfaceOptions,
    pub budgets: Budgets,
}

/// A mask with its forced token (the only allowed token, if exactly one).
#[derive(Debug)]
pub(crate) struct Mask {
    pub words: Box<[u32]>,
    pub single: Option<u32>,
}

impl Mask {
    fn new(words: Box<[u32]>) -> Mask {
        let mut count = 0u32;
        let mut single = None;
        for (i, &w) in words.iter().enumerate() {
            if w != 0 {
                count += w.count_ones();
                if count > 1 {
                    single = None;
                    break;
                }
                single = Some(i as u32 * 32 + w.trailing_zeros());
            }
        }
        Mask {
            words,
            single: if count == 1 { single } else { None },
        }
    }
}

/// Pure-token chain of a uniform state: `targets[c-1]` = state after any pure token of `c` bytes.
#[derive(Debug, Clone, Default)]
struct Chain {
    eligible: bool,
    targets: Vec<u32>,
}

/// A fast non-cryptographic hash of mask words (multiply-rotate, FxHash style).
fn hash_words(words: &[u32]) -> u64 {
    let mut h = 0u64;
    for pair in words.chunks(2) {
        let x = pair[0] as u64 | (pair.get(1).copied().unwrap_or(0) as u64) << 32;
        h = (h.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    h
}

/// Pure tokens of one trie subtree that all pass through chain state `state` at `depth` bytes.
#[derive(Debug, Clone, Copy)]
struct PureRange {
    first: u32,
    end: u32,
    depth: u8,
    state: u32,
    len_mask: u64,
}

/// Statistics of one compilation.
#[derive(Debug, Clone, Copy, Default)]
pub struct CompileStats {
    pub nfa_nodes: usize,
    pub dfa_states: usize,
    pub byte_classes: usize,
    pub unique_masks: usize,
    /// Schema → DFA → masks; excludes the one-time vocabulary index build.
    pub compile_time: Duration,
    /// One-time per-vocabulary index build (tries, pure-token bitsets).
    pub vocab_index_time: Duration,
    /// Minimal number of tokens of a complete document (EOS not counted).
    pub min_tokens: u32,
}

/// A schema compiled against a vocabulary. Immutable after compilation except for lazily filled
/// budget-mask caches (thread-safe), so one `Arc<Grammar>` serves any number of requests.
#[derive(Debug)]
pub struct Grammar {
    pub(crate) vocab: Arc<Vocab>,
    pub(crate) surface: Surface,
    pub(crate) dfa: Dfa,
    pub(crate) schema: Value,
    nwords: usize,
    masks: Vec<Mask>,
    /// Per source state (DFA states then P0): index into `masks`.
    state_mask: Vec<u32>,
    /// Per DFA state: minimal tokens to completion (INF if impossible). Index P0 included.
    dist: Vec<u32>,
    /// Per source state: sorted distinct finite `dist` of its allowed transitions.
    levels: Vec<u32>,
    level_off: Vec<u32>,
    /// Per source state, built on first budget-bound use: one cached mask per level.
    budget: Vec<OnceLock<Box<[OnceLock<Mask>]>>>,
    pair_off: Vec<u32>,
    pairs: Vec<(u32, u32)>,
    range_off: Vec<u32>,
    ranges: Vec<PureRange>,
    chains: Vec<Chain>,
    index: Arc<VocabIndex>,
    empty_mask: Box<[u32]>,
    /// EOS alone (the last token of an EOS-inclusive budget), built on first use.
    eos_only: OnceLock<Mask>,
    pub stats: CompileStats,
}

impl Grammar {
    /// Compiles a schema (JSON value) against a vocabulary.
    pub fn compile(
        schema: &Value,
        vocab: Arc<Vocab>,
        opts: &CompileOptions,
    ) -> Result<Arc<Grammar>> {
        let index_time = vocab.prepare(opts.surface.ascii);
        let t0 = Instant::now();
        let surface = Surface::resolve(&opts.surface, &vocab)?;
        let nfa = compile_nfa(schema, &surface, &opts.budgets)?;
        let dfa = Dfa::from_nfa(&nfa, opts.budgets.max_dfa_states)?;
        if std::env::var_os("JOBX_GRAMMAR_TRACE").is_some() {
            // Phase timings for tuning (JOBX_GRAMMAR_TRACE=1).
            eprintln!(
                "grammar: nfa+dfa {:?}, {} NFA nodes, {} DFA states",
                t0.elapsed(),
                nfa.nodes.len(),
                dfa.num_states()
            );
        }
        let index = vocab.index(opts.surface.ascii);
        let mut g = Grammar::build(schema.clone(), vocab, surface, dfa, index)?;
        g.stats.nfa_nodes = nfa.nodes.len();
        g.stats.compile_time = t0.elapsed();
        g.stats.vocab_index_time = index_time;
        Ok(Arc::new(g))
    }

    fn build(
        schema: Value,
        vocab: Arc<Vocab>,
        surface: Surface,
        dfa: Dfa,
        index: Arc<VocabIndex>,
    ) -> Result<Grammar> {
        let tb = Instant::now();
        let trace = std::env::var_os("JOBX_GRAMMAR_TRACE").is_some();
        let n = dfa.num_states();
        let p0 = n; // pseudo-state of the first token
        let nwords = vocab.mask_words();
        let max_pure = index.pure_by_len.len().saturating_sub(1);
        let unk_tok = if surface.uses_unk() { vocab.unk } else { None };

        // Uniform successor on content bytes, per state: Some(next) (next may be DEAD) or None.
        let content_classes: Vec<usize> = {
            let mut seen = vec![false; dfa.ncls];
            let mut v = Vec::new();
            for b in 0u8..=255 {
                if is_content_byte(b) {
                    let c = dfa.class_of[b as usize] as usize;
                    if !seen[c] {
                        seen[c] = true;
                        v.push(c);
                    }
                }
            }
            v
        };
        let uniform: Vec<Option<u32>> = (0..n)
            .map(|s| {
                let row = &dfa.trans[s * dfa.ncls..(s + 1) * dfa.ncls];
                let t0 = row[content_classes[0]];
                content_classes.iter().all(|&c| row[c] == t0).then_some(t0)
            })
            .collect();

        // 1. Pure-token chains of every state (see the module notes).
        let mut chains: Vec<Chain> = Vec::with_capacity(n + 1);
        for s in 0..n {
            let mut chain = Chain::default();
            if s != DEAD as usize && uniform[s].is_some() {
                chain.eligible = true;
                let mut t = s as u32;
                for _ in 0..max_pure {
                    let Some(u) = uniform[t as usize] else {
                        chain.eligible = false;
                        break;
                    };
                    if u == DEAD {
                        break;
                    }
                    chain.targets.push(u);
                    t = u;
                }
                if !chain.eligible {
                    chain.targets.clear();
                }
            }
            chains.push(chain);
        }
        chains.push(Chain::default()); // P0

        // 2. Transitions of every state: single pairs (token, next) and pure-token ranges.
        let mut pair_off = Vec::with_capacity(n + 2);
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        let mut range_off = Vec::with_capacity(n + 2);
        let mut ranges: Vec<PureRange> = Vec::new();
        let step = |s: u32, b: u8| dfa.next(s, b);
        let cut = |t: u32, d: usize, longest: usize| {
            let c = &chains[t as usize];
            c.eligible && longest - d <= c.targets.len()
        };
        for (s, chain) in chains.iter().enumerate().take(n) {
            pair_off.push(pairs.len() as u32);
            range_off.push(ranges.len() as u32);
            if s == DEAD as usize {
                continue;
            }
            let mut single = |toks: &[u32], ns: u32| {
                for &t in toks {
                    pairs.push((t, ns));
                }
            };
            index.structural.walk(s as u32, step, &mut single);
            if !chain.eligible {
                index.pure.walk_cut(
                    s as u32,
                    step,
                    cut,
                    |first, end, depth, state, len_mask| {
                        ranges.push(PureRange {
                            first,
                            end,
                            depth: depth as u8,
                            state,
                            len_mask,
                        })
                    },
                    &mut single,
                );
            }
            if let Some(u) = unk_tok {
                let ns = dfa.next(s as u32, UNK_BYTE);
                if ns != DEAD {
                    pairs.push((u, ns));
                }
            }
        }
        // P0: every token's first-position text, run from the start state.
        pair_off.push(pairs.len() as u32);
        range_off.push(ranges.len() as u32);
        index.first.walk(START, step, |toks, ns| {
            for &t in toks {
                pairs.push((t, ns));
            }
        });
        // An empty first text (T5's lone `▁`) keeps the start state.
        for &t in &index.first_empty {
            pairs.push((t, START));
        }
        if let Some(u) = unk_tok {
            let ns = dfa.next(START, UNK_BYTE);
            if ns != DEAD {
                pairs.push((u, ns));
            }
        }
        pair_off.push(pairs.len() as u32);
        range_off.push(ranges.len() as u32);
        if trace {
            eprintln!(
                "grammar: walks {:?}: {} pairs, {} ranges",
                tb.elapsed(),
                pairs.len(),
                ranges.len()
            );
        }

        let mut g = Grammar {
            vocab,
            surface,
            dfa,
            schema,
            nwords,
            masks: Vec::new(),
            state_mask: Vec::with_capacity(n + 1),
            dist: vec![INF; n + 1],
            levels: Vec::new(),
            level_off: Vec::with_capacity(n + 2),
            budget: (0..=n).map(|_| OnceLock::new()).collect(),
            pair_off,
            pairs,
            range_off,
            ranges,
            chains,
            index,
            empty_mask: vec![0u32; nwords].into_boxed_slice(),
            eos_only: OnceLock::new(),
            stats: CompileStats::default(),
        };

        // 3. Distances to completion: BFS backwards over all transitions.
        let mut rev_off = vec![0u32; n + 1];
        let mut edges: Vec<(u32, u32)> = Vec::new(); // (target, source)
        let mut targets = Vec::new();
        for s in 1..n {
            targets.clear();
            g.targets(s, &mut targets);
            targets.sort_unstable();
            targets.dedup();
            for &t in &targets {
                edges.push((t, s as u32));
            }
        }
        edges.sort_unstable();
        for &(t, _) in &edges {
            rev_off[t as usize + 1] += 1;
        }
        for i in 0..n {
            rev_off[i + 1] += rev_off[i];
        }
        let mut queue = VecDeque::new();
        for s in 1..n {
            if g.dfa.accepting[s] {
                g.dist[s] = 0;
                queue.push_back(s as u32);
            }
        }
        while let Some(t) = queue.pop_front() {
            let d = g.dist[t as usize] + 1;
            for &(_, s) in &edges[rev_off[t as usize] as usize..rev_off[t as usize + 1] as usize] {
                if g.dist[s as usize] == INF {
                    g.dist[s as usize] = d;
                    queue.push_back(s);
                }
            }
        }
        targets.clear();
        g.targets(p0, &mut targets);
        g.dist[p0] = targets
            .iter()
            .map(|&t| g.dist[t as usize])
            .min()
            .unwrap_or(INF)
            .saturating_add(1);
        if g.dist[p0] == INF {
            return Err(GrammarError::Unproducible(format!(
                "the vocabulary ({} tokens) cannot spell any document of this schema on this surface",
                g.vocab.len()
            )));
        }
        if trace {
            eprintln!("grammar: distances {:?}", tb.elapsed());
        }

        // 4. Masks (deduplicated) and distance levels per source state.
        // Keyed by a fast 64-bit hash of the words; equal hashes are confirmed by comparison.
        let mut dedup: FxMap<u64, Vec<u32>> = FxMap::default();
        let mut by_recipe: FxMap<Vec<u64>, u32> = FxMap::default();
        let mut lv: Vec<u32> = Vec::new();
        let mut key: Vec<u64> = Vec::new();
        for s in 0..=n {
            targets.clear();
            g.targets(s, &mut targets);
            lv.clear();
            lv.extend(
                targets
                    .iter()
                    .map(|&t| g.dist[t as usize])
                    .filter(|&d| d != INF),
            );
            lv.sort_unstable();
            lv.dedup();
            // States with the same recipe (allowed singles, pure classes, ranges) share a mask;
            // escape states of different strings are the common case.
            g.recipe(s, INF - 1, &mut key);
            if let Some(&id) = by_recipe.get(&key) {
                g.state_mask.push(id);
                g.level_off.push(g.levels.len() as u32);
                g.levels.extend_from_slice(&lv);
                continue;
            }
            let words = g.build_mask(s, INF - 1);
            let h = hash_words(&words);
            let bucket = dedup.entry(h).or_default();
            let id = match bucket
                .iter()
                .find(|&&id| g.masks[id as usize].words == words)
            {
                Some(&id) => id,
                None => {
                    let id = g.masks.len() as u32;
                    bucket.push(id);
                    g.masks.push(Mask::new(words));
                    id
                }
            };
            by_recipe.insert(key.clone(), id);
            g.state_mask.push(id);
            g.level_off.push(g.levels.len() as u32);
            g.levels.extend_from_slice(&lv);
        }
        g.level_off.push(g.levels.len() as u32);
        if trace {
            eprintln!(
                "grammar: masks {:?} ({} recipes)",
                tb.elapsed(),
                by_recipe.len()
            );
        }
        g.stats.dfa_states = n - 1;
        g.stats.byte_classes = g.dfa.ncls;
        g.stats.unique_masks = g.masks.len();
        g.stats.min_tokens = g.dist[p0];
        Ok(g)
    }

    /// State after a pure token of `l` bytes beyond a node in chain state `t` (`l` = 0: `t`).
    #[inline]
    fn chain_target(&self, t: u32, l: usize) -> u32 {
        if l == 0 {
            t
        } else {
            self.chains[t as usize].targets[l - 1]
        }
    }

    /// Every state reachable by one token from source state `s` (with repeats).
    fn targets(&self, s: usize, out: &mut Vec<u32>) {
        let (a, b) = (self.pair_off[s] as usize, self.pair_off[s + 1] as usize);
        out.extend(self.pairs[a..b].iter().map(|p| p.1));
        for (i, &t) in self.chains[s].targets.iter().enumerate() {
            if self
                .index
                .pure_by_len
                .get(i + 1)
                .is_some_and(|m| m.iter().any(|&w| w != 0))
            {
                out.push(t);
            }
        }
        let (a, b) = (self.range_off[s] as usize, self.range_off[s + 1] as usize);
        for r in &self.ranges[a..b] {
            let mut m = r.len_mask;
            while m != 0 {
                let len = m.trailing_zeros() as usize;
                m &= m - 1;
                out.push(self.chain_target(r.state, len - r.depth as usize));
            }
        }
    }

    /// A small key that determines `build_mask(s, limit)` exactly.
    fn recipe(&self, s: usize, limit: u32, key: &mut Vec<u64>) {
        key.clear();
        let (a, b) = (self.pair_off[s] as usize, self.pair_off[s + 1] as usize);
        for &(tok, t) in &self.pairs[a..b] {
            if self.dist[t as usize] <= limit {
                key.push(tok as u64);
            }
        }
        key.sort_unstable();
        key.dedup();
        key.push(u64::MAX);
        let chain = &self.chains[s];
        let mut lens = 0u64;
        for (i, &t) in chain.targets.iter().enumerate() {
            if self.dist[t as usize] <= limit {
                lens |= 1 << (i + 1).min(63);
            }
        }
        key.push(lens);
        let (a, b) = (self.range_off[s] as usize, self.range_off[s + 1] as usize);
        for r in &self.ranges[a..b] {
            let d = r.depth as usize;
            let mut allowed = 0u64;
            let mut m = r.len_mask;
            while m != 0 {
                let len = m.trailing_zeros() as usize;
                m &= m - 1;
                if self.dist[self.chain_target(r.state, len - d) as usize] <= limit {
                    allowed |= 1 << len;
                }
            }
            if allowed != 0 {
                key.push((r.first as u64) << 32 | r.end as u64);
                key.push(allowed);
            }
        }
        key.push(u64::from(
            s < self.dfa.num_states() && self.dfa.accepting[s],
        ));
    }

    /// Mask of source state `s` allowing transitions with `dist <= limit` (EOS if accepting).
    fn build_mask(&self, s: usize, limit: u32) -> Box<[u32]> {
        let mut words = vec![0u32; self.nwords];
        let set = |words: &mut [u32], tok: u32| words[tok as usize / 32] |= 1 << (tok % 32);
        let (a, b) = (self.pair_off[s] as usize, self.pair_off[s + 1] as usize);
        for &(tok, t) in &self.pairs[a..b] {
            if self.dist[t as usize] <= limit {
                set(&mut words, tok);
            }
        }
        let chain = &self.chains[s];
        if !chain.targets.is_empty() {
            let ok = |c: usize| self.dist[chain.targets[c - 1] as usize] <= limit;
            let r = chain.targets.len();
            if (1..=r).all(ok) {
                for (w, m) in words.iter_mut().zip(self.index.pure_upto[r].iter()) {
                    *w |= *m;
                }
            } else {
                for c in (1..=r).filter(|&c| ok(c)) {
                    for (w, m) in words.iter_mut().zip(self.index.pure_by_len[c].iter()) {
                        *w |= *m;
                    }
                }
            }
        }
        let (a, b) = (self.range_off[s] as usize, self.range_off[s + 1] as usize);
        for r in &self.ranges[a..b] {
            let d = r.depth as usize;
            let mut allowed = 0u64;
            let mut m = r.len_mask;
            while m != 0 {
                let len = m.trailing_zeros() as usize;
                m &= m - 1;
                if self.dist[self.chain_target(r.state, len - d) as usize] <= limit {
                    allowed |= 1 << len;
                }
            }
            let toks = self.index.pure.tokens_in(r.first, r.end);
            if allowed == r.len_mask {
                for &t in toks {
                    set(&mut words, t);
                }
            } else if allowed != 0 {
                for &t in toks {
                    if allowed >> self.vocab.text[t as usize].len() & 1 == 1 {
                        set(&mut words, t);
                    }
                }
            }
        }
        if s < self.dfa.num_states() && self.dfa.accepting[s] {
            for &e in &self.vocab.eos {
                set(&mut words, e);
            }
        }
        words.into_boxed_slice()
    }

    /// The mask for source state `s` (DFA state, or `p0()` before the first token) with
    /// `remaining` tokens left for the document itself (EOS not counted); EOS is in the mask when
    /// `s` is accepting.
    #[inline]
    pub(crate) fn mask_for(&self, s: usize, remaining: u32) -> &Mask {
        static EMPTY: OnceLock<Mask> = OnceLock::new();
        if remaining == 0 {
            return EMPTY.get_or_init(|| Mask {
                words: Box::new([]),
                single: None,
            });
        }
        let limit = remaining - 1;
        let lv = &self.levels[self.level_off[s] as usize..self.level_off[s + 1] as usize];
        if lv.last().is_none_or(|&m| limit >= m) {
            return &self.masks[self.state_mask[s] as usize];
        }
        let slot = lv.partition_point(|&l| l <= limit);
        let slots = self.budget[s].get_or_init(|| (0..lv.len()).map(|_| OnceLock::new()).collect());
        slots[slot].get_or_init(|| Mask::new(self.build_mask(s, limit)))
    }

    /// Index of the first-token pseudo-state.
    #[inline]
    pub(crate) fn p0(&self) -> usize {
        self.dfa.num_states()
    }

    pub(crate) fn empty_words(&self) -> &[u32] {
        &self.empty_mask
    }

    /// The mask allowing only the EOS token(s).
    pub(crate) fn eos_only(&self) -> &Mask {
        self.eos_only.get_or_init(|| {
            let mut w = vec![0u32; self.nwords];
            for &e in self.vocab.eos_ids() {
                if let Some(word) = w.get_mut(e as usize / 32) {
                    *word |= 1 << (e % 32);
                }
            }
            Mask::new(w.into_boxed_slice())
        })
    }

    /// Number of u32 words of a mask.
    pub fn mask_words(&self) -> usize {
        self.nwords
    }

    pub fn vocab(&self) -> &Arc<Vocab> {
        &self.vocab
    }

    /// The schema this grammar was compiled from.
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// Whether `<unk>` stands for `{`, `}` or `\` on this grammar's surface.
    pub fn uses_unk(&self) -> bool {
        self.surface.uses_unk()
    }

    /// Minimal number of tokens (EOS not counted) of any complete document.
    pub fn min_tokens(&self) -> u32 {
        self.dist[self.p0()]
    }

    /// Minimal tokens to completion from a DFA state (INF if impossible).
    pub(crate) fn dist(&self, s: usize) -> u32 {
        self.dist[s]
    }

    /// Bytes a token adds at the given position (`first` = first generated token).
    #[inline]
    pub(crate) fn token_text(&self, tok: u32, first: bool) -> Option<&[u8]> {
        if self.surface.uses_unk() && Some(tok) == self.vocab.unk {
            return Some(&[UNK_BYTE]);
        }
        let i = tok as usize;
        if i >= self.vocab.len() || self.vocab.special[i] {
            return None;
        }
        Some(if first {
            &self.vocab.first_text[i]
        } else {
            &self.vocab.text[i]
        })
    }

    pub(crate) fn is_eos(&self, tok: u32) -> bool {
        self.vocab.eos.contains(&tok)
    }

    /// Maps a token sequence (as generated, EOS optional) back to the exact document text:
    /// `<unk>` becomes the `{`, `}` or `\` the grammar needs at that point. Returns an error at the
    /// first token the grammar does not accept (budgets are not checked here). The text is a
    /// prefix of a valid document; see [`crate::grammar::Matcher::is_complete`] for completeness.
    pub fn decode_text(&self, tokens: &[u32]) -> Result<String> {
        let mut out = Vec::new();
        let mut s = START;
        for (i, &tok) in tokens.iter().enumerate() {
            if self.is_eos(tok) {
                if !self.dfa.accepting[s as usize] {
                    return Err(GrammarError::TokenRejected {
                        token: tok,
                        step: i,
                        why: "EOS before the document is complete",
                    });
                }
                break;
            }
            let text = self
                .token_text(tok, i == 0)
                .ok_or(GrammarError::TokenRejected {
                    token: tok,
                    step: i,
                    why: "special token inside the document",
                })?;
            if i > 0 && text.is_empty() {
                return Err(GrammarError::TokenRejected {
                    token: tok,
                    step: i,
                    why: "token adds no text",
                });
            }
            for &b in text {
                if b == UNK_BYTE {
                    out.push(self.dfa.umean[s as usize]);
                } else {
                    out.push(b);
                }
                s = self.dfa.next(s, b);
                if s == DEAD {
                    return Err(GrammarError::TokenRejected {
                        token: tok,
                        step: i,
                        why: "not allowed by the grammar",
                    });
                }
            }
        }
        String::from_utf8(out).map_err(|_| GrammarError::TokenRejected {
            token: 0,
            step: tokens.len(),
            why: "output is not valid UTF-8",
        })
    }

    /// A reference tokenization of a document for benchmarks: the surface text of `doc`
    /// (json.dumps rules, `<unk>` where the surface needs it), split greedily into the longest
    /// token the constraint allows at each step, then EOS. Not the tokenizer's canonical split.
    pub fn greedy_tokenize(self: &Arc<Grammar>, doc: &Value) -> Result<Vec<u32>> {
        let bytes = self.surface.value_bytes(doc);
        let mut out = Vec::new();
        let mut m = super::matcher::Matcher::new(self.clone(), u32::MAX);
        let mut pos = 0usize;
        while pos < bytes.len() {
            let rest = &bytes[pos..];
            let mut best: Option<(u32, usize)> = None;
            if rest[0] == UNK_BYTE {
                best = self.vocab.unk.map(|u| (u, 1));
            } else if out.is_empty() {
                for id in 0..self.vocab.len() as u32 {
                    if let Some(t) = self.token_text(id, true) {
                        if !t.is_empty()
                            && rest.starts_with(t)
                            && m.is_allowed(id)
                            && best.is_none_or(|b| t.len() > b.1)
                        {
                            best = Some((id, t.len()));
                        }
                    }
                }
            } else {
                self.index.full.prefixes(rest, |ids, len| {
                    for &id in ids {
                        if m.is_allowed(id) && best.is_none_or(|b| len >= b.1) {
                            best = Some((id, len));
                        }
                    }
                });
            }
            let Some((tok, len)) = best else {
                return Err(GrammarError::TokenRejected {
                    token: 0,
                    step: out.len(),
                    why: "no token spells the document here",
                });
            };
            m.commit_token(tok)?;
            out.push(tok);
            pos += len;
        }
        if let Some(&e) = self.vocab.eos.first() {
            m.commit_token(e)?;
            out.push(e);
        }
        Ok(out)
    }
}
