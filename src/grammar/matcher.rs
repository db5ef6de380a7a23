//! Per-request constraint state and the generation-loop interface.
//!
//! [`Matcher`] is the whole state of one constrained generation: the compiled grammar (shared
//! `Arc`), the DFA state, whether the first token is still to come, and the token budget left. It is
//! a few words and `Clone`, so beam search clones it per beam and a batch can mix schemas (each
//! request holds its own grammar). Masks are precomputed in the grammar, so `compute_mask` is a copy
//! of cached words (or a borrow via [`Matcher::mask`]).
//!
//! [`Constraint`] is the hook the generation loop calls (process logits, commit the chosen token);
//! [`JsonConstraint`] implements it on top of a `Matcher`.

use super::compiled::Grammar;
use super::dfa::DEAD;
use super::{GrammarError, Result};
use std::sync::Arc;

/// State of one constrained generation.
#[derive(Debug, Clone)]
pub struct Matcher {
    grammar: Arc<Grammar>,
    /// Current DFA state (meaningless while `first` is true: the start state).
    state: u32,
    /// Tokens still allowed, EOS included.
    remaining: u32,
    /// No token committed yet (first-token decoding rule applies).
    first: bool,
    /// EOS committed.
    finished: bool,
    /// Tokens committed (EOS included).
    steps: u32,
}

impl Matcher {
    /// A fresh matcher allowing at most `max_tokens` tokens, EOS included (use the generation's
    /// `max_new_tokens`). If `max_tokens < grammar.min_tokens() + 1` no complete document and
    /// its EOS fit, and the first mask is empty.
    pub fn new(grammar: Arc<Grammar>, max_tokens: u32) -> Matcher {
        Matcher {
            grammar,
            state: super::dfa::START,
            remaining: max_tokens,
            first: true,
            finished: false,
            steps: 0,
        }
    }

    #[inline]
    fn source(&self) -> usize {
        if self.first {
            self.grammar.p0()
        } else {
            self.state as usize
        }
    }

    /// The current mask. The budget `remaining` counts EOS, so the document itself gets
    /// `remaining - 1` tokens: the last slot is held back for EOS, which is all that is left
    /// when one token remains (and only if the document is complete by then, which the budgeted
    /// masks guarantee).
    #[inline]
    fn current(&self) -> Option<&super::compiled::Mask> {
        match self.remaining {
            _ if self.finished => None,
            0 => None,
            1 => self.is_complete().then(|| self.grammar.eos_only()),
            r => Some(self.grammar.mask_for(self.source(), r - 1)),
        }
    }

    /// The allowed-token mask as u32 words (bit `id % 32` of word `id / 32`), borrowed from the
    /// grammar's cache. Empty slice semantics: all zero (nothing allowed).
    #[inline]
    pub fn mask(&self) -> &[u32] {
        match self.current() {
            Some(m) => &m.words,
            None => self.grammar.empty_words(),
        }
    }

    /// Writes the allowed-token mask into `out` (at least `grammar.mask_words()` words; extra words
    /// are zeroed, so logits padded beyond the vocabulary are disallowed).
    #[inline]
    pub fn compute_mask(&mut self, out: &mut [u32]) {
        let m = self.mask();
        let n = m.len().min(out.len());
        out[..n].copy_from_slice(&m[..n]);
        out[n..].fill(0);
    }

    /// Is `token` allowed now?
    #[inline]
    pub fn is_allowed(&self, token: u32) -> bool {
        let m = self.mask();
        m.get(token as usize / 32)
            .is_some_and(|w| w >> (token % 32) & 1 == 1)
    }

    /// Advances by one token. Errors (state unchanged) if the token is not allowed now.
    pub fn commit_token(&mut self, token: u32) -> Result<()> {
        let step = self.steps as usize;
        if self.finished {
            return Err(GrammarError::TokenRejected {
                token,
                step,
                why: "generation already finished",
            });
        }
        if !self.is_allowed(token) {
            let why = if self.remaining == 0 {
                "token budget exhausted"
            } else if self.grammar.is_eos(token) {
                "EOS before the document is complete"
            } else {
                "not allowed by the grammar or the token budget"
            };
            return Err(GrammarError::TokenRejected { token, step, why });
        }
        self.remaining -= 1;
        self.steps += 1;
        if self.grammar.is_eos(token) {
            self.finished = true;
            return Ok(());
        }
        let text = self.grammar.token_text(token, self.first).unwrap_or(&[]);
        let dfa = &self.grammar.dfa;
        let mut s = self.state;
        for &b in text {
            s = dfa.next(s, b);
        }
        debug_assert!(s != DEAD, "mask allowed a token the DFA rejects");
        self.state = s;
        self.first = false;
        Ok(())
    }

    /// Tokens that are forced from here (each step has exactly one allowed token), in order,
    /// ending with EOS if that is forced too. The generation loop can append them all without
    /// sampling (several in one forward pass) and must then commit them.
    pub fn forced_tokens(&self) -> Vec<u32> {
        self.forced_tokens_max(usize::MAX)
    }

    /// Like [`Matcher::forced_tokens`] with at most `max` tokens.
    pub fn forced_tokens_max(&self, max: usize) -> Vec<u32> {
        let mut out = Vec::new();
        let mut m = self.clone();
        while out.len() < max && !m.finished && m.remaining > 0 {
            let Some(t) = m.current().and_then(|mask| mask.single) else {
                break;
            };
            if m.commit_token(t).is_err() {
                break;
            }
            out.push(t);
        }
        out
    }

    /// The document is complete (EOS allowed now, or already committed).
    pub fn is_complete(&self) -> bool {
        self.finished || (!self.first && self.grammar.dfa.accepting[self.state as usize])
    }

    /// EOS has been committed.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Tokens still allowed (EOS included).
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// Tokens committed so far (EOS included).
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// Minimal number of further tokens (EOS not counted) that completes the document.
    pub fn min_tokens_to_complete(&self) -> u32 {
        if self.finished {
            0
        } else if self.first {
            self.grammar.min_tokens()
        } else {
            self.grammar.dist(self.state as usize)
        }
    }

    pub fn grammar(&self) -> &Arc<Grammar> {
        &self.grammar
    }
}

/// The hook a generation loop calls each step: mask the logits, then commit the chosen token.
pub trait Constraint: Send {
    /// Sets disallowed logits to -inf. `step` is the 0-based generated position (informative).
    fn process(&mut self, step: usize, logits: &mut [f32]);
    /// Records the chosen token.
    fn commit(&mut self, token: u32) -> Result<()>;
    /// Tokens forced from here (append without sampling, then `commit` each).
    fn forced_tokens(&self) -> Vec<u32>;
    /// The document is complete.
    fn is_complete(&self) -> bool;
    /// EOS committed or no token can follow.
    fn is_finished(&self) -> bool;
    /// A boxed copy (one per beam).
    fn box_clone(&self) -> Box<dyn Constraint>;
}

/// JSON-schema constraint for one request: a [`Matcher`] plus logits masking.
#[derive(Debug, Clone)]
pub struct JsonConstraint {
    pub matcher: Matcher,
}

impl JsonConstraint {
    pub fn new(grammar: Arc<Grammar>, max_new_tokens: u32) -> JsonConstraint {
        JsonConstraint {
            matcher: Matcher::new(grammar, max_new_tokens),
        }
    }

    /// Sets every disallowed logit to -inf (ids beyond the vocabulary included).
    pub fn apply_mask(&self, logits: &mut [f32]) {
        apply_mask_words(self.matcher.mask(), logits);
    }

    /// The exact JSON text of a generated token sequence (see [`Grammar::decode_text`]).
    pub fn decode(&self, tokens: &[u32]) -> Result<String> {
        self.matcher.grammar().decode_text(tokens)
    }
}

/// Applies a u32-word mask to logits: disallowed (or beyond the mask) → -inf.
pub fn apply_mask_words(mask: &[u32], logits: &mut [f32]) {
    for (wi, chunk) in logits.chunks_mut(32).enumerate() {
        let w = mask.get(wi).copied().unwrap_or(0);
        if w == u32::MAX {
            continue;
        }
        if w == 0 {
            chunk.fill(f32::NEG_INFINITY);
            continue;
        }
        for (bi, x) in chunk.iter_mut().enumerate() {
            if w >> bi & 1 == 0 {
                *x = f32::NEG_INFINITY;
            }
        }
    }
}

impl Constraint for JsonConstraint {
    fn process(&mut self, _step: usize, logits: &mut [f32]) {
        self.apply_mask(logits);
    }
    fn commit(&mut self, token: u32) -> Result<()> {
        self.matcher.commit_token(token)
    }
    fn forced_tokens(&self) -> Vec<u32> {
        self.matcher.forced_tokens()
    }
    fn is_complete(&self) -> bool {
        self.matcher.is_complete()
    }
    fn is_finished(&self) -> bool {
        self.matcher.is_finished() || self.matcher.remaining() == 0
    }
    fn box_clone(&self) -> Box<dyn Constraint> {
        Box::new(self.clone())
    }
}
