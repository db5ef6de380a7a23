//! The generation loop: greedy, beam search (Hugging Face semantics) and sampling, over any model
//! that can take one decoding step for a set of rows (`Stepper`). Constraints (grammar masks) plug
//! in per sequence through `TokenConstraint`; they see the log-probabilities exactly where HF runs
//! its logits processors, and beam search clones a beam's constraint state when the beam forks.
//!
//! Beam search mirrors transformers 5.x `_beam_search` (the vectorised rewrite): keep the top
//! 2·K continuations per request, finalise only those among the first K that hit EOS (score
//! normalised by `generated_len ** length_penalty`, EOS included in the length), continue with the
//! best K unfinished ones, stop per `early_stopping` (true: when K hypotheses are finished; false:
//! HF's heuristic; "never": the length-penalty-aware bound), and at `max_length` finalise all.

use crate::cpu::log_softmax;
use crate::error::{Error, Result};

/// One decoding step for every active row; the model keeps its own cache.
pub trait Stepper {
    fn vocab_size(&self) -> usize;
    /// Feed one token per row (`tokens.len()` = number of rows) and write logits [rows, vocab].
    fn step(&mut self, tokens: &[u32], logits: &mut Vec<f32>) -> Result<()>;
    /// Row r continues from old row `parents[r]` (beam reordering, or dropping finished rows).
    fn select_rows(&mut self, parents: &[usize]) -> Result<()>;
    /// Feed several tokens to a single-row model in one forward pass and write the logits after
    /// the last one (forced tokens of a constraint). `Ok(false)`: not supported, feed one by one.
    fn step_many(&mut self, _tokens: &[u32], _logits: &mut Vec<f32>) -> Result<bool> {
        Ok(false)
    }
    /// Greedy fast path for unconstrained rows: feed one token per row, set the `suppress` ids
    /// to -inf, and return each row's argmax (ties to the lower id) with its log-probability,
    /// computed where the logits are (a GPU stepper reads back a few bytes per row instead of
    /// the vocabulary-sized logits). `Ok(None)`: not supported (nothing was fed); the caller
    /// uses `step`.
    ///
    /// `masks`: rows constrained by a token mask (`TokenConstraint::mask_words`), as
    /// `mask_words_len(vocab)` u32 words per row (bit j of word j / 32 set = id j allowed); the
    /// pick is then over the allowed ids, and the log-probability normalised over them, as the
    /// host loop computes it after `TokenConstraint::mask`.
    fn step_greedy(
        &mut self,
        _tokens: &[u32],
        _suppress: &[u32],
        _masks: Option<&[u32]>,
    ) -> Result<Option<Vec<(u32, f32)>>> {
        Ok(None)
    }
    /// Whether `step_greedy` would pick at the next step, so the loop gathers the rows' masks
    /// only then (the host steppers never do: their constrained steps stay free of mask copies).
    fn picks_on_device(&self) -> bool {
        false
    }
    /// Beam search's fast path, like `step_greedy`: feed one token per row and return per row
    /// the `k` best ids after `suppress` and `masks` (descending, ties to the lower id), each
    /// with its log-probability normalised over the whole row before masking (HF's beam search:
    /// log_softmax, then its processors set -inf), `rows x k` pairs row-major
    /// (`Backend::topk_logprobs`). `Ok(None)`: not supported (nothing was fed).
    fn step_topk(
        &mut self,
        _tokens: &[u32],
        _k: usize,
        _suppress: &[u32],
        _masks: Option<&[u32]>,
    ) -> Result<Option<Vec<(u32, f32)>>> {
        Ok(None)
    }
}

/// u32 words of a token bit mask over `vocab` ids.
pub fn mask_words_len(vocab: usize) -> usize {
    vocab.div_ceil(32)
}

/// The masks for `Stepper::step_greedy` of the active rows: Some(None) when no row is
/// constrained, Some(Some(words)) when every constrained row's constraint is a bit mask
/// (unconstrained rows: all allowed), None when some constraint is not (the host path then
/// applies it to the logits).
#[allow(clippy::type_complexity)]
fn device_masks(
    constraints: &mut [Option<Box<dyn TokenConstraint>>],
    active: &[usize],
    vocab: usize,
) -> Option<Option<Vec<u32>>> {
    if active
        .iter()
        .all(|&r| constraints.get(r).is_none_or(|c| c.is_none()))
    {
        return Some(None);
    }
    let words = mask_words_len(vocab);
    let mut out = Vec::with_capacity(active.len() * words);
    for &r in active {
        push_mask_row(
            &mut out,
            constraints.get_mut(r).and_then(|c| c.as_mut()),
            words,
        )?;
    }
    Some(Some(out))
}

/// Appends one row's mask words to `out`: the constraint's (ids past its words disallowed), or
/// all allowed without one; None when the constraint is not a bit mask.
fn push_mask_row(
    out: &mut Vec<u32>,
    c: Option<&mut Box<dyn TokenConstraint>>,
    words: usize,
) -> Option<()> {
    match c {
        Some(c) => {
            let mut m = c.mask_words()?;
            m.resize(words, 0);
            out.extend(m);
        }
        None => out.extend(std::iter::repeat_n(u32::MAX, words)),
    }
    Some(())
}

/// The masks for `Stepper::step_topk` of beam search's rows (request-major, as the model's):
/// Some(None) without constraints, Some(Some(words)) when every constraint is a bit mask
/// (unconstrained rows: all allowed), None when some constraint is not (the host path applies
/// it to the logits).
#[allow(clippy::type_complexity)]
fn beam_masks(
    run_cons: &mut [Vec<Option<Box<dyn TokenConstraint>>>],
    vocab: usize,
) -> Option<Option<Vec<u32>>> {
    if run_cons.iter().flatten().all(|c| c.is_none()) {
        return Some(None);
    }
    let words = mask_words_len(vocab);
    let mut out = Vec::new();
    for c in run_cons.iter_mut().flatten() {
        push_mask_row(&mut out, c.as_mut(), words)?;
    }
    Some(Some(out))
}

const ALL_MASKED: &str = "every token is masked at this step (constraint and min length conflict)";

/// Append a chosen token to an output; true when it ends the sequence.
fn record(o: &mut GenOutput, tok: u32, lp_tok: f32, eos: &[u32]) -> bool {
    o.tokens.push(tok);
    o.token_logprobs.push(lp_tok);
    o.score += lp_tok;
    if eos.contains(&tok) {
        o.finish = Finish::Eos;
        return true;
    }
    false
}

/// Logits a decoder-only stepper computed ahead of its first `step` (the prompt prefill), one
/// row per sequence; `select_rows` before that first step reorders them like the cache.
#[derive(Default)]
pub struct PendingLogits {
    rows: Option<Vec<f32>>,
    vocab: usize,
}

impl PendingLogits {
    pub fn new(logits: Vec<f32>, vocab: usize) -> Self {
        PendingLogits {
            rows: Some(logits),
            vocab,
        }
    }
    /// Hand the pending logits over (once); false when there are none left.
    pub fn take_into(&mut self, out: &mut Vec<f32>) -> bool {
        match self.rows.take() {
            Some(p) => {
                *out = p;
                true
            }
            None => false,
        }
    }
    pub fn is_pending(&self) -> bool {
        self.rows.is_some()
    }
    /// Row r becomes old row `parents[r]`.
    pub fn reorder(&mut self, parents: &[usize]) {
        let v = self.vocab;
        if let Some(p) = self.rows.take() {
            self.rows = Some(
                parents
                    .iter()
                    .flat_map(|&r| p[r * v..(r + 1) * v].iter().copied())
                    .collect(),
            );
        }
    }
}

/// Each of `batch` rows repeated `k` times: the parents that expand a batch into beams.
pub fn beam_parents(batch: usize, k: usize) -> Vec<usize> {
    (0..batch).flat_map(|b| std::iter::repeat_n(b, k)).collect()
}

/// A per-sequence constraint on the next token (the grammar mask plugs in here).
pub trait TokenConstraint: Send {
    /// Set disallowed entries of `scores` (log-probs or logits) to -inf.
    fn mask(&mut self, scores: &mut [f32]) -> Result<()>;
    /// Advance the state with the chosen token.
    fn commit(&mut self, token: u32) -> Result<()>;
    /// Whether the document is complete (EOS allowed).
    fn is_complete(&self) -> bool {
        true
    }
    /// Tokens that are the only legal continuation from here (appended without sampling).
    fn forced(&self) -> Vec<u32> {
        Vec::new()
    }
    /// The allowed next tokens as a bit mask (bit j of word j / 32 set = id j allowed; ids
    /// past the words are disallowed), when this constraint is exactly such a mask: `mask`
    /// must then set to -inf exactly the ids whose bit is clear. Lets a device stepper apply it
    /// where the logits are (`Stepper::step_greedy`). None: only `mask` (the default).
    fn mask_words(&mut self) -> Option<Vec<u32>> {
        None
    }
    fn box_clone(&self) -> Box<dyn TokenConstraint>;
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EarlyStopping {
    True,
    False,
    Never,
}

#[derive(Debug, Clone)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct GenOptions {
    pub max_new_tokens: usize,
    pub min_new_tokens: usize,
    pub num_beams: usize,
    pub early_stopping: EarlyStopping,
    pub length_penalty: f32,
    pub eos: Vec<u32>,
    pub sampling: Option<Sampling>,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            max_new_tokens: 64,
            min_new_tokens: 0,
            num_beams: 1,
            early_stopping: EarlyStopping::False,
            length_penalty: 1.0,
            eos: vec![1],
            sampling: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    Eos,
    Length,
}

#[derive(Debug, Clone)]
pub struct GenOutput {
    /// new tokens, EOS included when generation stopped on it
    pub tokens: Vec<u32>,
    pub finish: Finish,
    /// sum of log-probs (beam: the normalised beam score)
    pub score: f32,
    /// log-prob of each chosen token (greedy/sampling; empty for beam search)
    pub token_logprobs: Vec<f32>,
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    let mut bv = f32::NEG_INFINITY;
    for (i, &x) in v.iter().enumerate() {
        // first maximum wins, like torch.argmax
        if x > bv {
            bv = x;
            best = i;
        }
    }
    best
}

struct Rng(u64);
impl Rng {
    fn next_f32(&mut self) -> f32 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn sample(scores: &[f32], s: &Sampling, rng: &mut Rng, buf: &mut Vec<(f32, usize)>) -> usize {
    let t = if s.temperature > 0.0 {
        s.temperature
    } else {
        1.0
    };
    buf.clear();
    buf.extend(
        scores
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, &v)| (v / t, i)),
    );
    if buf.is_empty() {
        return argmax(scores);
    }
    buf.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
    if s.top_k > 0 && buf.len() > s.top_k {
        buf.truncate(s.top_k);
    }
    let mx = buf[0].0;
    let mut total = 0.0f32;
    for e in buf.iter_mut() {
        e.0 = (e.0 - mx).exp();
        total += e.0;
    }
    // top-p: keep the smallest prefix whose mass reaches top_p (at least one token)
    if s.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = buf.len();
        for (i, e) in buf.iter().enumerate() {
            acc += e.0 / total;
            if acc >= s.top_p {
                keep = i + 1;
                break;
            }
        }
        buf.truncate(keep);
        total = buf.iter().map(|e| e.0).sum();
    }
    let mut r = rng.next_f32() * total;
    for e in buf.iter() {
        r -= e.0;
        if r <= 0.0 {
            return e.1;
        }
    }
    buf[buf.len() - 1].1
}

/// Greedy or sampled decoding of `rows` sequences, each starting from `start[r]`.
pub fn generate_greedy(
    m: &mut dyn Stepper,
    start: &[u32],
    opts: &GenOptions,
    constraints: &mut [Option<Box<dyn TokenConstraint>>],
) -> Result<Vec<GenOutput>> {
    let rows = start.len();
    let v = m.vocab_size();
    let mut outs: Vec<GenOutput> = (0..rows)
        .map(|_| GenOutput {
            tokens: vec![],
            finish: Finish::Length,
            score: 0.0,
            token_logprobs: vec![],
        })
        .collect();
    if constraints.len() != rows && !constraints.is_empty() {
        return Err(Error::Input(
            "one constraint per row (or none) is required".into(),
        ));
    }
    let mut rng = Rng(opts.sampling.as_ref().map(|s| s.seed).unwrap_or(0));
    let mut active: Vec<usize> = (0..rows).collect(); // original row of each model row
    let mut next: Vec<u32> = start.to_vec();
    let mut logits = Vec::new();
    let mut sbuf = Vec::new();
    let mut pending_forced: Vec<u32> = Vec::new();
    let mut step = 0usize;
    while step < opts.max_new_tokens {
        if active.is_empty() {
            break;
        }
        // greedy rows without constraints or with bit-mask constraints (the grammar): the
        // stepper may pick on its side (the same choice and log-probability as the host loop
        // below, without the logits coming back)
        let device_picks =
            if opts.sampling.is_none() && pending_forced.is_empty() && m.picks_on_device() {
                match device_masks(constraints, &active, v) {
                    Some(masks) => {
                        let suppress: &[u32] = if step < opts.min_new_tokens {
                            &opts.eos
                        } else {
                            &[]
                        };
                        m.step_greedy(&next, suppress, masks.as_deref())?
                    }
                    None => None,
                }
            } else {
                None
            };
        let mut finished_any = false;
        let mut new_next = Vec::with_capacity(active.len());
        if let Some(picks) = device_picks {
            if picks.len() != active.len() {
                return Err(Error::Input(format!(
                    "step_greedy returned {} rows for {}",
                    picks.len(),
                    active.len()
                )));
            }
            for (&orig, &(tok, lp_tok)) in active.iter().zip(&picks) {
                if !lp_tok.is_finite() || tok as usize >= v {
                    return Err(Error::Input(ALL_MASKED.into()));
                }
                if let Some(Some(c)) = constraints.get_mut(orig) {
                    c.commit(tok)?;
                }
                finished_any |= record(&mut outs[orig], tok, lp_tok, &opts.eos);
                new_next.push(tok);
            }
        } else {
            if pending_forced.is_empty()
                || !m.step_many(
                    &[next.as_slice(), pending_forced.as_slice()].concat(),
                    &mut logits,
                )?
            {
                // one token per forward pass (forced tokens too, when the model has no
                // multi-token step)
                m.step(&next, &mut logits)?;
                for &t in &pending_forced {
                    m.step(&[t], &mut logits)?;
                }
            }
            pending_forced.clear();
            for (ri, &orig) in active.iter().enumerate() {
                let row = &mut logits[ri * v..(ri + 1) * v];
                if step < opts.min_new_tokens {
                    for &e in &opts.eos {
                        if (e as usize) < v {
                            row[e as usize] = f32::NEG_INFINITY;
                        }
                    }
                }
                if let Some(Some(c)) = constraints.get_mut(orig) {
                    c.mask(row)?;
                }
                // Only the chosen token's log-prob is kept: two read-only passes over the row
                // instead of writing a full log_softmax (a serial cost per step and row).
                let (mx, ls) = crate::cpu::simd::max_lse(row);
                let tok = match &opts.sampling {
                    Some(s) => sample(row, s, &mut rng, &mut sbuf),
                    None => crate::cpu::simd::first_index_of(row, mx),
                };
                let lp_tok = (row[tok] - mx) - ls;
                if !lp_tok.is_finite() {
                    return Err(Error::Input(ALL_MASKED.into()));
                }
                if let Some(Some(c)) = constraints.get_mut(orig) {
                    c.commit(tok as u32)?;
                }
                finished_any |= record(&mut outs[orig], tok as u32, lp_tok, &opts.eos);
                new_next.push(tok as u32);
            }
        }
        step += 1;
        // Forced continuation (single live sequence, greedy): tokens the constraint allows alone
        // are appended without a forward pass each, then fed together in the next one.
        if rows == 1 && active.len() == 1 && !finished_any && opts.sampling.is_none() {
            if let Some(Some(c)) = constraints.get_mut(active[0]) {
                let forced = c.forced();
                let room = opts.max_new_tokens - step;
                for &t in forced.iter().take(room) {
                    if step < opts.min_new_tokens && opts.eos.contains(&t) {
                        break;
                    }
                    c.commit(t)?;
                    let o = &mut outs[active[0]];
                    o.tokens.push(t);
                    o.token_logprobs.push(0.0);
                    step += 1;
                    if opts.eos.contains(&t) {
                        o.finish = Finish::Eos;
                        finished_any = true;
                        break;
                    }
                    pending_forced.push(t);
                }
                if finished_any {
                    break;
                }
            }
        }
        if finished_any {
            // Drop finished rows so later steps only compute live sequences.
            let keep: Vec<usize> = (0..active.len())
                .filter(|&i| outs[active[i]].finish != Finish::Eos)
                .collect();
            if keep.is_empty() {
                break;
            }
            if step + 1 < opts.max_new_tokens {
                m.select_rows(&keep)?;
            }
            active = keep.iter().map(|&i| active[i]).collect();
            next = keep.iter().map(|&i| new_next[i]).collect();
        } else {
            next = new_next;
        }
    }
    Ok(outs)
}

#[derive(Clone)]
struct Hyp {
    score: f32,
    tokens: Vec<u32>,
}

/// Beam search for `batch` requests with `num_beams` beams each. Model rows are laid out
/// request-major: row = b·K + k. `start[b]` is each request's first decoder token.
pub fn generate_beam(
    m: &mut dyn Stepper,
    start: &[u32],
    opts: &GenOptions,
    constraints: &mut [Option<Box<dyn TokenConstraint>>],
) -> Result<Vec<GenOutput>> {
    let k = opts.num_beams.max(1);
    let batch = start.len();
    let v = m.vocab_size();
    let keep = (2usize).max(1 + opts.eos.len()) * k;
    let lp_len = |n: usize| (n as f32).powf(opts.length_penalty);
    // running state per request
    let mut run_tokens: Vec<Vec<Vec<u32>>> = vec![vec![vec![]; k]; batch];
    let mut run_scores: Vec<Vec<f32>> = (0..batch)
        .map(|_| (0..k).map(|i| if i == 0 { 0.0 } else { -1e9 }).collect())
        .collect();
    let mut run_cons: Vec<Vec<Option<Box<dyn TokenConstraint>>>> = (0..batch)
        .map(|b| {
            (0..k)
                .map(|_| {
                    constraints
                        .get(b)
                        .and_then(|c| c.as_ref().map(|c| c.box_clone()))
                })
                .collect()
        })
        .collect();
    let mut finished: Vec<Vec<Hyp>> = vec![vec![]; batch];
    let mut heuristic_unsat = vec![true; batch];
    let mut done = vec![false; batch];
    // Rows of the model: batch·K, all requests kept in lockstep (finished requests keep stepping
    // their beams like HF; their results are frozen).
    let mut next: Vec<u32> = (0..batch * k).map(|r| start[r / k]).collect();
    let mut logits = Vec::new();
    let mut lp = vec![0.0f32; v];
    let mut cand: Vec<(f32, usize)> = Vec::with_capacity(k * v);
    // max_length counts the decoder start token in HF; callers pass max_new_tokens = max_length-1.
    for step in 0..opts.max_new_tokens {
        if done.iter().all(|&d| d) {
            break;
        }
        // Each row's `keep` best continuations picked where the logits are (a GPU stepper reads
        // back a few bytes per row instead of the logits): the best `keep` of a request's K·V
        // candidates are among the union of its rows' best `keep` (a row adds the same base
        // score to all its entries), so the selection below is the same.
        let device = if keep <= 64 && keep <= v && m.picks_on_device() {
            match beam_masks(&mut run_cons, v) {
                Some(masks) => {
                    let suppress: &[u32] = if step < opts.min_new_tokens {
                        &opts.eos
                    } else {
                        &[]
                    };
                    m.step_topk(&next, keep, suppress, masks.as_deref())?
                }
                None => None,
            }
        } else {
            None
        };
        if let Some(p) = &device {
            if p.len() != batch * k * keep || p.iter().any(|&(t, _)| t as usize >= v) {
                return Err(Error::Input(format!(
                    "step_topk returned {} candidates for {} rows of {keep}",
                    p.len(),
                    batch * k
                )));
            }
        } else {
            m.step(&next, &mut logits)?;
        }
        let cur_gen = step; // tokens generated so far before this one
        let mut parents = Vec::with_capacity(batch * k);
        let mut new_next = Vec::with_capacity(batch * k);
        for b in 0..batch {
            // accumulated scores for all K·V continuations
            cand.clear();
            for bi in 0..k {
                if let Some(p) = &device {
                    let base = run_scores[b][bi];
                    let r = b * k + bi;
                    for &(t, x) in &p[r * keep..(r + 1) * keep] {
                        cand.push((x + base, bi * v + t as usize));
                    }
                    continue;
                }
                let row = &mut logits[(b * k + bi) * v..(b * k + bi + 1) * v];
                log_softmax(row, &mut lp);
                if step < opts.min_new_tokens {
                    for &e in &opts.eos {
                        if (e as usize) < v {
                            lp[e as usize] = f32::NEG_INFINITY;
                        }
                    }
                }
                if let Some(c) = run_cons[b][bi].as_mut() {
                    c.mask(&mut lp)?;
                }
                let base = run_scores[b][bi];
                for (t, &x) in lp.iter().enumerate() {
                    cand.push((x + base, bi * v + t));
                }
            }
            // top `keep` by score, ties broken by lower index (torch.topk on CPU is stable in practice)
            let nth = keep.min(cand.len());
            cand.select_nth_unstable_by(nth - 1, |a, c| {
                c.0.partial_cmp(&a.0)
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then(a.1.cmp(&c.1))
            });
            cand.truncate(nth);
            cand.sort_by(|a, c| {
                c.0.partial_cmp(&a.0)
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then(a.1.cmp(&c.1))
            });
            let at_max = step + 1 >= opts.max_new_tokens;
            let gen_len = cur_gen + 1;
            // finalise hypotheses among the first K candidates that hit a stopping criterion
            let full = finished[b].len() >= k && opts.early_stopping == EarlyStopping::True;
            if !done[b] {
                for (rank, &(score, idx)) in cand.iter().enumerate() {
                    let tok = (idx % v) as u32;
                    let hits = at_max || opts.eos.contains(&tok);
                    if !hits || rank >= k || full || !heuristic_unsat[b] || score <= -1e8 {
                        continue;
                    }
                    let mut toks = run_tokens[b][idx / v].clone();
                    toks.push(tok);
                    finished[b].push(Hyp {
                        score: score / lp_len(gen_len),
                        tokens: toks,
                    });
                }
                finished[b].sort_by(|a, c| {
                    c.score
                        .partial_cmp(&a.score)
                        .unwrap_or(std::cmp::Ordering::Equal)
                });
                finished[b].truncate(k);
            }
            // next running beams: best K candidates that did not hit a stopping criterion
            let mut chosen: Vec<(f32, usize)> = cand
                .iter()
                .map(|&(s, idx)| {
                    let tok = (idx % v) as u32;
                    let hits = at_max || opts.eos.contains(&tok);
                    (if hits { s - 1e9 } else { s }, idx)
                })
                .collect();
            chosen.sort_by(|a, c| c.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
            chosen.truncate(k);
            let mut new_tokens = Vec::with_capacity(k);
            let mut new_scores = Vec::with_capacity(k);
            let mut new_cons = Vec::with_capacity(k);
            for &(s, idx) in &chosen {
                let (pb, tok) = (idx / v, (idx % v) as u32);
                let mut t = run_tokens[b][pb].clone();
                t.push(tok);
                new_tokens.push(t);
                new_scores.push(s);
                let c = match run_cons[b][pb].as_ref() {
                    Some(c) => {
                        let mut c = c.box_clone();
                        if s > -1e8 {
                            c.commit(tok)?;
                        }
                        Some(c)
                    }
                    None => None,
                };
                new_cons.push(c);
                parents.push(b * k + pb);
                new_next.push(tok);
            }
            run_tokens[b] = new_tokens;
            run_scores[b] = new_scores;
            run_cons[b] = new_cons;
            // stopping conditions (HF _check_early_stop_heuristic / _beam_search_has_unfinished_sequences)
            let all_finished = finished[b].len() >= k;
            let hyp_len = match opts.early_stopping {
                EarlyStopping::Never if opts.length_penalty > 0.0 => opts.max_new_tokens,
                _ => gen_len,
            };
            let best_running = run_scores[b][0] / lp_len(hyp_len);
            let worst = finished[b].last().map(|h| h.score).unwrap_or(-1e9);
            heuristic_unsat[b] = heuristic_unsat[b] && (!all_finished || best_running > worst);
            if !heuristic_unsat[b]
                || (all_finished && opts.early_stopping == EarlyStopping::True)
                || at_max
            {
                done[b] = true;
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        m.select_rows(&parents)?;
        next = new_next;
    }
    Ok(finished
        .into_iter()
        .map(|mut f| {
            f.sort_by(|a, c| {
                c.score
                    .partial_cmp(&a.score)
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            match f.into_iter().next() {
                Some(h) => {
                    let finish = if h
                        .tokens
                        .last()
                        .map(|t| opts.eos.contains(t))
                        .unwrap_or(false)
                    {
                        Finish::Eos
                    } else {
                        Finish::Length
                    };
                    GenOutput {
                        tokens: h.tokens,
                        finish,
                        score: h.score,
                        token_logprobs: vec![],
                    }
                }
                None => GenOutput {
                    tokens: vec![],
                    finish: Finish::Length,
                    score: f32::NEG_INFINITY,
                    token_logprobs: vec![],
                },
            }
        })
        .collect())
}

/// Dispatch on `num_beams`.
pub fn generate(
    m: &mut dyn Stepper,
    start: &[u32],
    opts: &GenOptions,
    constraints: &mut [Option<Box<dyn TokenConstraint>>],
) -> Result<Vec<GenOutput>> {
    if opts.max_new_tokens == 0 {
        return Ok(start
            .iter()
            .map(|_| GenOutput {
                tokens: vec![],
                finish: Finish::Length,
                score: 0.0,
                token_logprobs: vec![],
            })
            .collect());
    }
    if opts.num_beams > 1 {
        if opts.sampling.is_some() {
            return Err(Error::Unsupported(
                "beam sampling is not supported; use --num-beams 1 with sampling".into(),
            ));
        }
        generate_beam(m, start, opts, constraints)
    } else {
        generate_greedy(m, start, opts, constraints)
    }
}

/// Token ids to text, for `StopStrings` (shared between the sequences of a batch).
pub type DecodeFn = std::sync::Arc<dyn Fn(&[u32]) -> String + Send + Sync>;

/// Stop strings: once the decoded text of a sequence contains one of `stops`, only EOS is allowed,
/// so the sequence ends at the next step (greedy, sampling and beam search alike).
#[derive(Clone)]
pub struct StopStrings {
    decode: DecodeFn,
    stops: Vec<String>,
    eos: u32,
    ids: Vec<u32>,
    hit: bool,
}

impl StopStrings {
    pub fn new(decode: DecodeFn, stops: Vec<String>, eos: u32) -> Self {
        StopStrings {
            decode,
            stops,
            eos,
            ids: Vec::new(),
            hit: false,
        }
    }
    /// Cut `text` at the first stop string (the stop itself removed).
    pub fn cut<'a>(text: &'a str, stops: &[String]) -> &'a str {
        let end = stops
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
            .unwrap_or(text.len());
        &text[..end]
    }
}

impl TokenConstraint for StopStrings {
    fn mask(&mut self, scores: &mut [f32]) -> Result<()> {
        if self.hit {
            for (i, v) in scores.iter_mut().enumerate() {
                if i as u32 != self.eos {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
        Ok(())
    }
    fn commit(&mut self, token: u32) -> Result<()> {
        self.ids.push(token);
        if !self.hit {
            // decode a tail long enough to hold the longest stop string
            let longest = self.stops.iter().map(|s| s.len()).max().unwrap_or(0);
            let from = self.ids.len().saturating_sub(longest + 8);
            let tail = (self.decode)(&self.ids[from..]);
            self.hit = self
                .stops
                .iter()
                .any(|s| !s.is_empty() && tail.contains(s.as_str()));
        }
        Ok(())
    }
    fn box_clone(&self) -> Box<dyn TokenConstraint> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic toy decoder: each row's logits are a hash of its token history, with
    /// EOS (id 1) made likely after a row-dependent number of steps and exact ties planted.
    struct Toy {
        hist: Vec<Vec<u32>>,
        vocab: usize,
        /// Answer `step_greedy` on the "device" (argmax + log-sum-exp of the same logits).
        device: bool,
        greedy_calls: usize,
    }

    impl Toy {
        fn new(rows: usize, device: bool) -> Toy {
            Toy {
                hist: vec![vec![]; rows],
                vocab: 37,
                device,
                greedy_calls: 0,
            }
        }

        fn logits(&self) -> Vec<f32> {
            let mut out = Vec::new();
            for h in &self.hist {
                let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
                for &t in h {
                    s = (s ^ t as u64).wrapping_mul(0x1000_0000_01B3);
                }
                for j in 0..self.vocab {
                    let x = s.wrapping_add(j as u64).wrapping_mul(0x2545_F491_4F6C_DD1D);
                    out.push(((x >> 40) % 7) as f32 * 0.5);
                }
                let row = out.len() - self.vocab;
                if h.len() >= 3 + (s % 5) as usize {
                    out[row + 1] = 10.0; // EOS
                }
            }
            out
        }
    }

    impl Stepper for Toy {
        fn vocab_size(&self) -> usize {
            self.vocab
        }
        fn step(&mut self, tokens: &[u32], logits: &mut Vec<f32>) -> Result<()> {
            for (h, &t) in self.hist.iter_mut().zip(tokens) {
                h.push(t);
            }
            *logits = self.logits();
            Ok(())
        }
        fn select_rows(&mut self, parents: &[usize]) -> Result<()> {
            self.hist = parents.iter().map(|&p| self.hist[p].clone()).collect();
            Ok(())
        }
        fn picks_on_device(&self) -> bool {
            self.device
        }
        fn step_greedy(
            &mut self,
            tokens: &[u32],
            suppress: &[u32],
            masks: Option<&[u32]>,
        ) -> Result<Option<Vec<(u32, f32)>>> {
            if !self.device {
                return Ok(None);
            }
            self.greedy_calls += 1;
            let mut lg = Vec::new();
            self.step(tokens, &mut lg)?;
            let words = mask_words_len(self.vocab);
            Ok(Some(
                lg.chunks(self.vocab)
                    .enumerate()
                    .map(|(r, row)| {
                        let mut row = row.to_vec();
                        for &e in suppress {
                            row[e as usize] = f32::NEG_INFINITY;
                        }
                        if let Some(m) = masks {
                            for (j, x) in row.iter_mut().enumerate() {
                                if m[r * words + j / 32] >> (j % 32) & 1 == 0 {
                                    *x = f32::NEG_INFINITY;
                                }
                            }
                        }
                        // independent of the host path's helpers: f64 log-sum-exp, first max
                        let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                        let tok = row.iter().position(|&x| x == mx).unwrap();
                        let lse = mx as f64
                            + row
                                .iter()
                                .map(|&x| ((x - mx) as f64).exp())
                                .sum::<f64>()
                                .ln();
                        (tok as u32, (mx as f64 - lse) as f32)
                    })
                    .collect(),
            ))
        }
        fn step_topk(
            &mut self,
            tokens: &[u32],
            k: usize,
            suppress: &[u32],
            masks: Option<&[u32]>,
        ) -> Result<Option<Vec<(u32, f32)>>> {
            if !self.device {
                return Ok(None);
            }
            self.greedy_calls += 1;
            let mut lg = Vec::new();
            self.step(tokens, &mut lg)?;
            let words = mask_words_len(self.vocab);
            let mut out = Vec::new();
            for (r, row) in lg.chunks(self.vocab).enumerate() {
                // independently of the host path: f64 log-sum-exp of the unmasked row, then
                // the masks, then a full sort by (value desc, id asc)
                let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                let lse = mx + row.iter().map(|&x| (x as f64 - mx).exp()).sum::<f64>().ln();
                let mut row = row.to_vec();
                for &e in suppress {
                    row[e as usize] = f32::NEG_INFINITY;
                }
                if let Some(m) = masks {
                    for (j, x) in row.iter_mut().enumerate() {
                        if m[r * words + j / 32] >> (j % 32) & 1 == 0 {
                            *x = f32::NEG_INFINITY;
                        }
                    }
                }
                let mut ids: Vec<usize> = (0..self.vocab).collect();
                ids.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                out.extend(
                    ids[..k]
                        .iter()
                        .map(|&j| (j as u32, (row[j] as f64 - lse) as f32)),
                );
            }
            Ok(Some(out))
        }
    }

    /// Beam search with each row's candidates picked on the "device" (`step_topk`) chooses the
    /// same hypotheses with the same scores as the host loop over all K·V log-probabilities:
    /// exact ties planted by the toy, EOS suppressed before the minimum length, early stopping
    /// or not, bit-mask constraints on some requests (and a constraint without words, which
    /// sends the steps to the host path).
    #[test]
    fn step_topk_beams_match_host_beams() {
        for (min_new, early, constrained, words) in [
            (0usize, EarlyStopping::True, false, true),
            (4, EarlyStopping::True, false, true),
            (0, EarlyStopping::False, true, true),
            (3, EarlyStopping::Never, true, true),
            (2, EarlyStopping::True, true, false),
        ] {
            let opts = GenOptions {
                max_new_tokens: 9,
                min_new_tokens: min_new,
                num_beams: 3,
                early_stopping: early,
                eos: vec![1],
                ..Default::default()
            };
            let run = |device: bool| {
                let mut toy = Toy::new(4 * 3, device);
                let mut cons: Vec<Option<Box<dyn TokenConstraint>>> = (0..4)
                    .map(|r| {
                        (constrained && r % 2 == 0).then(|| {
                            Box::new(ModMask {
                                step: r as u32,
                                vocab: 37,
                                words,
                            }) as Box<dyn TokenConstraint>
                        })
                    })
                    .collect();
                let start: Vec<u32> = (0..4).map(|r| 2 + r).collect();
                let out = generate(&mut toy, &start, &opts, &mut cons).unwrap();
                (out, toy.greedy_calls)
            };
            let (host, calls_host) = run(false);
            let (dev, calls_dev) = run(true);
            assert_eq!(calls_host, 0);
            if words {
                assert!(calls_dev > 0, "the device path ran");
            } else if constrained {
                assert_eq!(calls_dev, 0, "constraints without words stay on the host");
            }
            for (h, d) in host.iter().zip(&dev) {
                assert_eq!(h.tokens, d.tokens, "{min_new} {early:?} {constrained}");
                assert_eq!(h.finish, d.finish);
                assert!(
                    (h.score - d.score).abs() < 1e-5,
                    "{} vs {}",
                    h.score,
                    d.score
                );
                if min_new > 0 {
                    assert!(h.tokens.len() >= min_new);
                }
            }
        }
    }

    /// The device-side greedy path gives the same tokens, finish reasons and log-probabilities
    /// as the host loop, with EOS suppressed before the minimum length and finished rows
    /// dropped (select_rows) along the way.
    #[test]
    fn step_greedy_matches_host_greedy() {
        for min_new in [0usize, 4] {
            let opts = GenOptions {
                max_new_tokens: 9,
                min_new_tokens: min_new,
                eos: vec![1],
                ..Default::default()
            };
            let run = |device: bool| {
                let mut toy = Toy::new(5, device);
                let start: Vec<u32> = (0..5).map(|r| 2 + r).collect();
                let out = generate(&mut toy, &start, &opts, &mut []).unwrap();
                (out, toy.greedy_calls)
            };
            let (host, calls_host) = run(false);
            let (dev, calls_dev) = run(true);
            assert_eq!(calls_host, 0);
            assert!(calls_dev > 0);
            assert!(host.iter().any(|o| o.finish == Finish::Eos));
            assert!(
                host.iter().any(|o| o.tokens.len() < 9),
                "some rows end early"
            );
            for (h, d) in host.iter().zip(&dev) {
                assert_eq!(h.tokens, d.tokens);
                assert_eq!(h.finish, d.finish);
                if min_new > 0 {
                    assert!(h.tokens.len() >= min_new);
                }
                for (a, b) in h.token_logprobs.iter().zip(&d.token_logprobs) {
                    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
                }
            }
        }
    }

    /// A bit-mask constraint for the tests: allows the ids whose (id + step) is not a multiple
    /// of 3 nor 5 (EOS always allowed), changing with every committed token.
    #[derive(Clone)]
    struct ModMask {
        step: u32,
        vocab: usize,
        words: bool,
    }

    impl ModMask {
        fn allowed(&self, j: usize) -> bool {
            let x = j as u32 + self.step;
            j == 1 || (!x.is_multiple_of(3) && !x.is_multiple_of(5))
        }
    }

    impl TokenConstraint for ModMask {
        fn mask(&mut self, scores: &mut [f32]) -> Result<()> {
            for (j, x) in scores.iter_mut().enumerate() {
                if !self.allowed(j) {
                    *x = f32::NEG_INFINITY;
                }
            }
            Ok(())
        }
        fn commit(&mut self, token: u32) -> Result<()> {
            assert!(
                self.allowed(token as usize),
                "committed a masked token {token}"
            );
            self.step += 1;
            Ok(())
        }
        fn mask_words(&mut self) -> Option<Vec<u32>> {
            if !self.words {
                return None;
            }
            let mut w = vec![0u32; mask_words_len(self.vocab)];
            for j in 0..self.vocab {
                if self.allowed(j) {
                    w[j / 32] |= 1 << (j % 32);
                }
            }
            Some(w)
        }
        fn box_clone(&self) -> Box<dyn TokenConstraint> {
            Box::new(self.clone())
        }
    }

    /// Constrained greedy: rows whose constraint is a bit mask are picked on the "device" with
    /// the mask (and committed), giving the same tokens and log-probabilities as the host loop;
    /// a constraint without words sends the step to the host path.
    #[test]
    fn masked_step_greedy_matches_host_greedy() {
        let opts = GenOptions {
            max_new_tokens: 9,
            min_new_tokens: 2,
            eos: vec![1],
            ..Default::default()
        };
        // rows 0 and 3 constrained, the others free
        let run = |device: bool, words: bool| {
            let mut toy = Toy::new(5, device);
            let mut cons: Vec<Option<Box<dyn TokenConstraint>>> = (0..5)
                .map(|r| {
                    (r % 3 == 0).then(|| {
                        Box::new(ModMask {
                            step: r as u32,
                            vocab: 37,
                            words,
                        }) as Box<dyn TokenConstraint>
                    })
                })
                .collect();
            let start: Vec<u32> = (0..5).map(|r| 2 + r).collect();
            let out = generate(&mut toy, &start, &opts, &mut cons).unwrap();
            (out, toy.greedy_calls)
        };
        let (host, _) = run(false, true);
        let (dev, calls) = run(true, true);
        let (no_words, calls_nw) = run(true, false);
        // without words, steps with a live constrained row stay on the host path
        assert!(calls > calls_nw, "{calls} {calls_nw}");
        for ((h, d), n) in host.iter().zip(&dev).zip(&no_words) {
            assert_eq!(h.tokens, d.tokens);
            assert_eq!(h.tokens, n.tokens);
            assert_eq!(h.finish, d.finish);
            for (a, b) in h.token_logprobs.iter().zip(&d.token_logprobs) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
        // the mask mattered: some constrained row differs from its unconstrained run
        let unc = {
            let mut toy = Toy::new(5, false);
            let start: Vec<u32> = (0..5).map(|r| 2 + r).collect();
            generate(&mut toy, &start, &opts, &mut []).unwrap()
        };
        assert!(host[0].tokens != unc[0].tokens || host[3].tokens != unc[3].tokens);
    }
}
