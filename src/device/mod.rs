//! The device backend interface: the narrow set of ops the device graphs (`models::t5_device`,
//! `models::mistral_device`) are written against, with bf16 activations and f32 accumulation.
//! Two implementations:
//! - `cuda::Gpu` (feature `cuda`): the hand-written kernels of `kernels/*.cu`;
//! - `host::HostBackend`: the same ops on the host, f32 arithmetic with bf16 rounding where the
//!   kernels round. It is the kernels' reference semantics and lets CI run every line of the
//!   device graphs (layouts, KV-cache offsets, beam row selection, per-row adapters, merges)
//!   against the HF fixtures without a GPU; the op table (tests/cuda_ops.rs) then checks each
//!   kernel against its CPU reference on a GPU.
//!
//! Buffers are typed (`Backend::Buf<T>`) and sized in elements; every op checks the lengths it
//! is given with the shared checks of `check` (a wrong shape is an error, never an out-of-bounds
//! access).

pub mod check;
pub mod host;
pub mod profile;
mod weights;

pub use weights::{fused_name, slot_ids, DeviceWeights, FusedGroups, RowAdapters};

use crate::Result;
use half::bf16;

/// An element type of device buffers.
#[cfg(feature = "cuda")]
pub trait Elem:
    Copy
    + Default
    + Send
    + Sync
    + 'static
    + cudarc::driver::DeviceRepr
    + cudarc::driver::ValidAsZeroBits
    + std::fmt::Debug
{
    /// What the host backend fills fresh scratch buffers with (NaN for floats), so a read of an
    /// element nothing wrote shows up in the results.
    fn poison() -> Self;
}

/// An element type of device buffers.
#[cfg(not(feature = "cuda"))]
pub trait Elem: Copy + Default + Send + Sync + 'static + std::fmt::Debug {
    /// What the host backend fills fresh scratch buffers with (NaN for floats), so a read of an
    /// element nothing wrote shows up in the results.
    fn poison() -> Self;
}

impl Elem for bf16 {
    fn poison() -> Self {
        bf16::NAN
    }
}
impl Elem for f32 {
    fn poison() -> Self {
        f32::NAN
    }
}
impl Elem for i32 {
    fn poison() -> Self {
        i32::MIN
    }
}
impl Elem for i8 {
    fn poison() -> Self {
        i8::MIN
    }
}

/// Strides (in elements) of an attention operand viewed as (batch row, head, position, dim):
/// element (b, h, t, d) is at off + b*sb + h*sh + t*st + d. The offset lets several operands
/// share one buffer: a fused Q|K|V projection [tokens, 3*inner] (K at off = inner), or a K|V
/// cache [rows, cap, 2*inner].
#[derive(Clone, Copy, Debug)]
pub struct View {
    pub sb: usize,
    pub sh: usize,
    pub st: usize,
    pub off: usize,
}

/// Where rows lie in a buffer: row r starts at element off + r*ld (`Backend::copy_rows`).
#[derive(Clone, Copy, Debug)]
pub struct Rows {
    pub off: usize,
    pub ld: usize,
}

/// Shapes and options of one attention call (see jobx_attention_params).
#[derive(Clone, Copy, Debug)]
pub struct AttnCall {
    pub batch: usize,
    pub kv_batch_rows: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub tq: usize,
    pub tk: usize,
    pub dk: usize,
    pub q_offset: usize,
    pub window: usize,
    pub scale: f32,
    pub causal: bool,
    /// T5 relative bias: (num_buckets, max_distance, bidirectional).
    pub t5_bias: Option<(usize, usize, bool)>,
}

/// The length a view of (rows, heads, t, dk) needs; None when it overflows usize.
pub fn view_len(v: View, rows: usize, heads: usize, t: usize, dk: usize) -> Option<usize> {
    if rows == 0 || heads == 0 || t == 0 {
        return Some(0);
    }
    let a = (rows - 1).checked_mul(v.sb)?;
    let b = (heads - 1).checked_mul(v.sh)?;
    let c = (t - 1).checked_mul(v.st)?;
    a.checked_add(b)?
        .checked_add(c)?
        .checked_add(dk)?
        .checked_add(v.off)
}

pub struct GemmShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Row stride of the output (>= n).
    pub ldy: usize,
    /// Element offset of output row 0 in the y buffer (e.g. a KV-cache row).
    pub y_off: usize,
    pub accumulate: bool,
}

impl GemmShape {
    /// A contiguous [m, n] output at the start of y.
    pub fn new(m: usize, n: usize, k: usize, accumulate: bool) -> Self {
        GemmShape {
            m,
            n,
            k,
            ldy: n,
            y_off: 0,
            accumulate,
        }
    }

    /// The y length this shape writes into; None when it overflows usize.
    pub fn y_len(&self) -> Option<usize> {
        if self.m == 0 {
            return Some(self.y_off);
        }
        (self.m - 1)
            .checked_mul(self.ldy)?
            .checked_add(self.n)?
            .checked_add(self.y_off)
    }
}

/// The weight of a GEMM.
pub enum Weight<'a, B: Backend + ?Sized> {
    Bf16(&'a B::Buf<bf16>),
    /// Weight-only int8 with per-output-channel scales [n].
    Int8 {
        w: &'a B::Buf<i8>,
        scale: &'a B::Buf<f32>,
    },
}

/// The output of a GEMM: bf16 or f32, [m, ldy].
pub enum Out<'a, B: Backend + ?Sized> {
    Bf16(&'a mut B::Buf<bf16>),
    F32(&'a mut B::Buf<f32>),
}

/// Per-row LoRA for a GEMM: `t` = x·Aᵀ from `lora_shrink` [m, r], `b` [adapters, n, r],
/// `ids` [m] (-1: none), `scale` [adapters] (alpha / r).
pub struct Lora<'a, B: Backend + ?Sized> {
    pub t: &'a B::Buf<f32>,
    pub b: &'a B::Buf<bf16>,
    pub ids: &'a B::Buf<i32>,
    pub scale: &'a B::Buf<f32>,
    pub r: usize,
    pub adapters: usize,
}

/// The activation of a feed-forward block (gated: times the `up` projection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActKind {
    Relu,
    GeluTanh,
    Silu,
}

impl ActKind {
    /// The kernels' f32 formula (kernels/activation.cu).
    pub fn apply(self, x: f32) -> f32 {
        match self {
            ActKind::Relu => x.max(0.0),
            ActKind::GeluTanh => {
                let c = 0.797_884_6_f32; // sqrt(2/pi)
                0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
            }
            ActKind::Silu => x / (1.0 + (-x).exp()),
        }
    }
}

/// The recording of a decode step (`Backend::capture`) and when one may be made, for a stepper
/// with a recorded layout (what changes between steps in fixed buffers written before each).
pub(crate) struct GraphState<G> {
    /// one recording per set of buffers a stepper alternates between (beam search gathers its
    /// reordered cache into the other of two sets each step), `parity` the set in use
    graphs: [Option<G>; 2],
    parity: usize,
    /// the last step ran with the buffers the next one will use (so every GEMM shape has been
    /// tuned and nothing would be allocated for good while recording)
    warm: bool,
    /// recording failed once: later steps run plainly
    failed: bool,
    /// a second set of buffers could not be allocated (`second_set`): reorders stay plain
    no_alt: bool,
}

/// What the next decode step of a stepper with graphs on does (`GraphState::next`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum StepKind {
    /// run in the plain layout: the first step after a change of buffers (it tunes every
    /// GEMM shape), every step of a generation that keeps changing them (beam search), or
    /// after a failed recording
    Plain,
    /// write the inputs, record the step in the recorded layout and run the recording
    Record,
    /// write the inputs and replay the recording
    Replay,
}

impl<G> Default for GraphState<G> {
    fn default() -> Self {
        GraphState {
            graphs: [None, None],
            parity: 0,
            warm: false,
            failed: false,
            no_alt: false,
        }
    }
}

impl<G> GraphState<G> {
    pub fn next(&self) -> StepKind {
        if self.graphs[self.parity].is_some() {
            StepKind::Replay
        } else if self.warm && !self.failed {
            StepKind::Record
        } else {
            StepKind::Plain
        }
    }

    /// Records `f` and runs the recording (on a backend without graphs, `f` just runs). A failed
    /// recording (nothing ran) is said on stderr and Ok(false) returned: the caller runs the
    /// step plainly, as every later one.
    pub fn record<B: Backend<Graph = G> + ?Sized>(
        &mut self,
        dev: &B,
        what: &str,
        f: &mut dyn FnMut() -> Result<()>,
    ) -> Result<bool> {
        match dev.capture(f) {
            Ok(Some(g)) => match dev.launch_graph(&g) {
                Ok(()) => {
                    self.graphs[self.parity] = Some(g);
                    Ok(true)
                }
                Err(e) => self.first_launch_failed(what, e),
            },
            Ok(None) => Ok(true),
            Err(e) => {
                eprintln!(
                    "jobx: recording the {what} decode step as a CUDA graph failed ({e}); \
                     this generation goes on without graphs"
                );
                self.failed = true;
                Ok(false)
            }
        }
    }

    /// A recording's first launch failed (nothing of it ran). Out of device memory (the graph's
    /// own allocations are made at that launch): the generation goes on with plain steps,
    /// which allocate as they go, as after a failed recording (false: the caller runs the
    /// step plainly). Any other error is the step's.
    fn first_launch_failed(&mut self, what: &str, e: crate::Error) -> Result<bool> {
        if !e.is_out_of_memory() {
            return Err(e);
        }
        eprintln!(
            "jobx: the recorded {what} decode step did not fit in device memory ({e}); \
             this generation goes on without graphs"
        );
        self.failed = true;
        Ok(false)
    }

    pub fn replay<B: Backend<Graph = G> + ?Sized>(&self, dev: &B) -> Result<()> {
        match &self.graphs[self.parity] {
            Some(g) => dev.launch_graph(g),
            None => Err(crate::Error::Input("no recorded step to replay".into())),
        }
    }

    /// A step ran with the buffers the next one will use.
    pub fn ran(&mut self) {
        self.warm = true;
    }

    /// The buffers changed: the recordings are stale and the next step runs plainly.
    pub fn reset(&mut self) {
        self.graphs = [None, None];
        self.parity = 0;
        self.warm = false;
    }

    /// The stepper moved to its other set of buffers (same shapes, so no plain step is
    /// needed before recording it).
    pub fn swap(&mut self) {
        self.parity ^= 1;
    }

    /// Whether the next step is replayed from a recording (tests).
    pub fn replaying(&self) -> bool {
        self.graphs[self.parity].is_some()
    }

    /// Whether a reorder keeping the row count can go through a second set of `layers`
    /// buffers of `need` elements (beam search with graphs: each set keeps its recording):
    /// graphs on, no recording failed, and `alt` holds such a set, made now if missing (the
    /// recordings then reset). If it cannot be allocated, reorders go the plain way from then
    /// on rather than failing the generation.
    pub fn second_set<T>(
        &mut self,
        graphs: bool,
        alt: &mut Vec<T>,
        layers: usize,
        need: usize,
        len: impl Fn(&T) -> usize,
        alloc: impl Fn() -> Result<T>,
    ) -> bool {
        if !graphs || self.failed {
            return false;
        }
        if alt.len() == layers && alt.iter().all(|b| len(b) == need) {
            return true;
        }
        if self.no_alt {
            return false;
        }
        self.reset(); // (none can read the set being replaced; for certainty)
        alt.clear();
        match (0..layers).map(|_| alloc()).collect::<Result<Vec<_>>>() {
            Ok(v) => {
                *alt = v;
                true
            }
            Err(_) => {
                self.no_alt = true;
                false
            }
        }
    }
}

/// The ops of a device backend. Shapes are in elements; every op first runs its `check`
/// function on its arguments.
#[allow(clippy::too_many_arguments)]
pub trait Backend: Sync {
    /// A buffer of `T` on the device.
    type Buf<T: Elem>;
    /// The backend in one word, for errors ("cuda", "host").
    const KIND: &'static str;

    /// The number of elements `buf` holds.
    fn len<T: Elem>(buf: &Self::Buf<T>) -> usize;

    /// The device, in words (for reports).
    fn name(&self) -> String;
    /// Whether graphs loaded now store their linear layers as weight-only int8.
    fn int8_weights(&self) -> bool;
    /// Whether T5 encodings from now on keep the cross-attention K/V in int8 (one scale per
    /// head row; `--cross-kv int8`).
    fn int8_cross_kv(&self) -> bool {
        false
    }
    /// The device time per kernel since the last call, one line each, most first, when the
    /// backend profiles its kernels (`JOBX_PROFILE=kernels` on the GPU); else nothing.
    fn take_profile(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// `n` elements the next op overwrites completely (contents unspecified).
    fn scratch<T: Elem>(&self, op: &'static str, n: usize) -> Result<Self::Buf<T>>;
    /// `n` zeroed elements.
    fn zeros<T: Elem>(&self, op: &'static str, n: usize) -> Result<Self::Buf<T>>;
    fn upload<T: Elem>(&self, op: &'static str, host: &[T]) -> Result<Self::Buf<T>>;
    fn download<T: Elem>(&self, op: &'static str, buf: &Self::Buf<T>) -> Result<Vec<T>>;
    /// `host` into the first `host.len()` elements of `dst`, in order with the ops around it
    /// (a recorded step reads its inputs from the same buffers every time).
    fn write<T: Elem>(&self, op: &'static str, host: &[T], dst: &mut Self::Buf<T>) -> Result<()>;

    /// The type of a recorded decode step (`capture`).
    type Graph;
    /// Whether decode steps are recorded once and replayed (the GPU's default, `JOBX_CUDA_GRAPHS=0` off;
    /// on the host, tests switch on the same step layout without the recording).
    fn graphs(&self) -> bool {
        false
    }
    /// Records the ops `f` issues on this thread as a graph, without running them (Some), or,
    /// on a backend without graphs, runs them now (None). An error leaves nothing run on a
    /// backend with graphs.
    fn capture(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<Self::Graph>>;
    /// Runs a graph `capture` returned, after the ops issued before it.
    fn launch_graph(&self, g: &Self::Graph) -> Result<()>;
    /// dst[dst_off..dst_off + len] = src[src_off..src_off + len]
    fn copy<T: Elem>(
        &self,
        op: &'static str,
        src: &Self::Buf<T>,
        src_off: usize,
        dst: &mut Self::Buf<T>,
        dst_off: usize,
        len: usize,
    ) -> Result<()>;

    /// Beam reordering of KV caches (one buffer per layer, a block of `per` elements per row):
    /// afterwards block r of every buffer starts with the first `used` elements of its old
    /// block `parents[r]`, and the rest of the block is unspecified (only the positions written
    /// so far move, and nothing is cleared first). The GPU does each buffer in one launch.
    fn gather_blocks(
        &self,
        op: &'static str,
        bufs: &mut [Self::Buf<bf16>],
        per: usize,
        used: usize,
        parents: &[usize],
    ) -> Result<()> {
        check::gather_blocks::<Self>(op, bufs, per, used, parents)?;
        // a buffer at a time: one extra layer's cache in memory, not a whole second cache
        for buf in bufs.iter_mut() {
            let mut out = [self.scratch::<bf16>(op, parents.len() * per)?];
            self.gather_blocks_into(op, std::slice::from_ref(buf), &mut out, per, used, parents)?;
            let [out] = out;
            *buf = out;
        }
        Ok(())
    }

    /// `gather_blocks` into existing buffers: block r of `dst[i]` starts with the first `used`
    /// elements of block `parents[r]` of `src[i]` (the rest unspecified). A stepper replaying a
    /// recorded step keeps two cache sets and gathers from one into the other, so the
    /// recording of each set stays valid (beam search).
    fn gather_blocks_into(
        &self,
        op: &'static str,
        src: &[Self::Buf<bf16>],
        dst: &mut [Self::Buf<bf16>],
        per: usize,
        used: usize,
        parents: &[usize],
    ) -> Result<()> {
        check::gather_blocks_into::<Self>(op, src, dst, per, used, parents)?;
        for (s, d) in src.iter().zip(dst.iter_mut()) {
            for (r, &p) in parents.iter().enumerate() {
                self.copy(op, s, p * per, d, r * per, used)?;
            }
        }
        Ok(())
    }

    /// y[r] = bf16(x[r] · rsqrt(mean(x[r]²) + eps)) · w, rows of d (T5 / Mistral RMS norm).
    fn rms_norm(
        &self,
        x: &Self::Buf<bf16>,
        w: &Self::Buf<bf16>,
        y: &mut Self::Buf<bf16>,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()>;
    /// x = act(x), n elements (T5's ungated feed-forward).
    fn activation_inplace(&self, x: &mut Self::Buf<bf16>, n: usize, kind: ActKind) -> Result<()>;
    /// y[r, c] = act(gu[r, c]) · gu[r, cols + c]: the gated activation of a fused gate|up
    /// projection gu [rows, 2*cols] into y [rows, cols] (act(gate) rounded to bf16 first).
    fn gated_activation(
        &self,
        gu: &Self::Buf<bf16>,
        y: &mut Self::Buf<bf16>,
        rows: usize,
        cols: usize,
        kind: ActKind,
    ) -> Result<()>;
    /// HF rotary embedding in place on the first heads*head_dim elements of each token's row
    /// (rows `ld` apart: heads*head_dim for a plain [tokens, heads, head_dim]) at positions
    /// `pos` [tokens].
    fn rope(
        &self,
        x: &mut Self::Buf<bf16>,
        pos: &Self::Buf<i32>,
        tokens: usize,
        heads: usize,
        head_dim: usize,
        ld: usize,
        theta: f32,
    ) -> Result<()>;
    /// Row r < rows of `dst` (cols elements at dst.off + r*dst.ld) = row r of `src` likewise.
    fn copy_rows(
        &self,
        op: &'static str,
        src: (&Self::Buf<bf16>, Rows),
        dst: (&mut Self::Buf<bf16>, Rows),
        rows: usize,
        cols: usize,
    ) -> Result<()>;
    /// y[t] = table[ids[t]] (rows of d); an id outside the vocabulary is an error.
    fn embedding_ids(
        &self,
        ids: &[u32],
        table: &Self::Buf<bf16>,
        y: &mut Self::Buf<bf16>,
        d: usize,
        vocab: usize,
    ) -> Result<()>;
    /// `copy_rows` into `dst` moved by pos[0] * pos_stride elements, pos read where the op runs
    /// (a recorded decode step appends its K|V at the current position). The copy is checked
    /// at pos_max; a position outside 0..=pos_max copies nothing (an error on the host; on the
    /// GPU, which cannot report it without a read-back, the device error flag is set). The
    /// caller keeps pos in range.
    #[allow(clippy::too_many_arguments)]
    fn copy_rows_at(
        &self,
        op: &'static str,
        src: (&Self::Buf<bf16>, Rows),
        dst: (&mut Self::Buf<bf16>, Rows),
        rows: usize,
        cols: usize,
        pos: &Self::Buf<i32>,
        pos_stride: usize,
        pos_max: usize,
    ) -> Result<()>;
    /// y[t] = table[ids[t]] for the first n ids of a device buffer (`write` them after checking
    /// them against the vocabulary: the GPU kernel writes a zero row for a bad id and sets the
    /// device error flag; the host returns an error).
    fn embedding(
        &self,
        ids: &Self::Buf<i32>,
        n: usize,
        table: &Self::Buf<bf16>,
        y: &mut Self::Buf<bf16>,
        d: usize,
        vocab: usize,
    ) -> Result<()>;
    /// y (+)= x · wᵀ [* scales] [+ LoRA] with bf16 x [m, k], f32 accumulation.
    fn gemm(
        &self,
        x: &Self::Buf<bf16>,
        w: Weight<Self>,
        y: Out<Self>,
        s: &GemmShape,
        lora: Option<&Lora<Self>>,
    ) -> Result<()>;
    /// y (+)= rms_norm(x) · wᵀ: `rms_norm(x, norm.0, hn, s.m, s.k, norm.1)`, then `gemm` on
    /// `hn`. A backend may do both in one pass (the CUDA decode GEMMs, `Gpu::gemm_rms`), with
    /// the same values and `hn` left unwritten, so callers read only y afterwards.
    #[allow(clippy::too_many_arguments)]
    fn gemm_rms(
        &self,
        x: &Self::Buf<bf16>,
        norm: (&Self::Buf<bf16>, f32),
        hn: &mut Self::Buf<bf16>,
        w: Weight<Self>,
        y: Out<Self>,
        s: &GemmShape,
        lora: Option<&Lora<Self>>,
    ) -> Result<()> {
        self.rms_norm(x, norm.0, hn, s.m, s.k, norm.1)?;
        self.gemm(hn, w, y, s, lora)
    }
    /// t[m, r] = x[m] · A[ids[m]]ᵀ for LoRA rows (a: [adapters, r, k]); id -1 rows get zeros.
    fn lora_shrink(
        &self,
        x: &Self::Buf<bf16>,
        a: &Self::Buf<bf16>,
        ids: &Self::Buf<i32>,
        t: &mut Self::Buf<f32>,
        m: usize,
        k: usize,
        r: usize,
        adapters: usize,
    ) -> Result<()>;
    /// Scaled dot-product attention, o [batch, tq, heads, dk] (bf16), with optional key mask
    /// [kv rows, tk], query-row -> K/V-row map [batch], T5 relative bias table [buckets, heads].
    fn attention(
        &self,
        c: &AttnCall,
        q: (&Self::Buf<bf16>, View),
        k: (&Self::Buf<bf16>, View),
        v: (&Self::Buf<bf16>, View),
        o: &mut Self::Buf<bf16>,
        key_mask: Option<&Self::Buf<i32>>,
        kv_batch: Option<&Self::Buf<i32>>,
        rel_bias: Option<&Self::Buf<f32>>,
    ) -> Result<()>;
    /// `attention` with the position of query 0 read from pos[0] where the op runs, instead of
    /// c.q_offset: a recorded decode step attends over a cache of c.tk positions of which
    /// the causal mask leaves the first pos[0] + c.tq visible (any value is memory-safe).
    #[allow(clippy::too_many_arguments)]
    fn attention_at(
        &self,
        c: &AttnCall,
        pos: &Self::Buf<i32>,
        q: (&Self::Buf<bf16>, View),
        k: (&Self::Buf<bf16>, View),
        v: (&Self::Buf<bf16>, View),
        o: &mut Self::Buf<bf16>,
        key_mask: Option<&Self::Buf<i32>>,
        kv_batch: Option<&Self::Buf<i32>>,
        rel_bias: Option<&Self::Buf<f32>>,
    ) -> Result<()>;
    /// `attention` over int8 K and V (the T5 cross-attention's, `--cross-kv int8`): views `k`
    /// and `v` into one int8 buffer `kv`, every stride and offset a multiple of dk, and the dk
    /// elements from element e (of `kv`) scaled by `scales[e / dk]` (`quantize_kv` groups). No
    /// relative bias.
    #[allow(clippy::too_many_arguments)]
    fn attention_q8(
        &self,
        c: &AttnCall,
        q: (&Self::Buf<bf16>, View),
        kv: &Self::Buf<i8>,
        k: View,
        v: View,
        scales: &Self::Buf<f32>,
        o: &mut Self::Buf<bf16>,
        key_mask: Option<&Self::Buf<i32>>,
        kv_batch: Option<&Self::Buf<i32>>,
    ) -> Result<()>;
    /// Int8 quantisation of `groups` contiguous groups of `k` (1..=1024) elements of `x`, one
    /// scale each: scale = max|x| / 127, q = round-half-even(x / scale) clamped to [-127, 127]
    /// (`cpu::quantize_rows_int8`'s rule; an all-zero group gets scale 0).
    fn quantize_kv(
        &self,
        x: &Self::Buf<bf16>,
        groups: usize,
        k: usize,
        q: &mut Self::Buf<i8>,
        scales: &mut Self::Buf<f32>,
    ) -> Result<()>;
    /// Per row of logits [rows, vocab]: the argmax (lowest id on ties) after setting `suppress`
    /// ids and the ids `masks` disallows (rows x `generate::mask_words_len(vocab)` words, bit
    /// clear = disallowed) to -inf, and its log-probability (value - log-sum-exp of the masked
    /// row).
    fn greedy_pick(
        &self,
        logits: &mut Self::Buf<f32>,
        rows: usize,
        vocab: usize,
        suppress: &[u32],
        masks: Option<&[u32]>,
    ) -> Result<Vec<(u32, f32)>>;
    /// Beam search's candidates, per row of logits [rows, vocab]: the `k` largest entries
    /// (descending, lowest id on ties) after `suppress` and `masks` set ids to -inf as in
    /// `greedy_pick`, each with its log-probability over the row **before** that masking (value -
    /// log-sum-exp of the unmasked row: HF's beam search takes log_softmax first and then lets
    /// its processors set -inf). `rows x k` pairs, row-major; 1 <= k <= min(64, vocab).
    fn topk_logprobs(
        &self,
        logits: &mut Self::Buf<f32>,
        rows: usize,
        vocab: usize,
        k: usize,
        suppress: &[u32],
        masks: Option<&[u32]>,
    ) -> Result<Vec<(u32, f32)>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_buffer_set_is_made_once_kept_and_given_up_when_it_cannot_be_allocated() {
        let len = |b: &Vec<u8>| b.len();
        let ok = || Ok(vec![0u8; 4]);
        // graphs off, or a failed recording: never
        let mut g = GraphState::<()>::default();
        let mut alt = Vec::new();
        assert!(!g.second_set(false, &mut alt, 2, 4, len, ok));
        assert!(alt.is_empty());
        g.failed = true;
        assert!(!g.second_set(true, &mut alt, 2, 4, len, ok));
        // made on first need (the recordings reset), then kept as it is
        let mut g = GraphState::<()>::default();
        g.graphs[0] = Some(());
        g.warm = true;
        assert!(g.second_set(true, &mut alt, 2, 4, len, ok));
        assert_eq!(alt, vec![vec![0u8; 4]; 2]);
        assert!(g.graphs[0].is_none() && !g.warm, "recordings reset");
        alt[0][0] = 7;
        g.graphs[0] = Some(());
        assert!(g.second_set(true, &mut alt, 2, 4, len, || unreachable!()));
        assert_eq!(alt[0][0], 7, "kept, not remade");
        assert!(g.graphs[0].is_some(), "recordings kept");
        // another size: remade
        assert!(g.second_set(true, &mut alt, 2, 6, len, || Ok(vec![1u8; 6])));
        assert_eq!(alt, vec![vec![1u8; 6]; 2]);
        // an allocation failure: plain from then on, never tried again
        let mut g = GraphState::<()>::default();
        let mut alt: Vec<Vec<u8>> = Vec::new();
        let fail = || Err(crate::Error::Input("out of memory".into()));
        assert!(!g.second_set(true, &mut alt, 2, 4, len, fail));
        assert!(alt.is_empty());
        assert!(!g.second_set(true, &mut alt, 2, 4, len, || unreachable!()));
    }

    #[test]
    fn a_first_launch_out_of_memory_falls_back_to_plain_steps() {
        let mut g = GraphState::<()>::default();
        let oom = crate::Error::OutOfMemory {
            backend: "cuda",
            op: "graph launch",
            msg: "launching a recorded step".into(),
        };
        assert!(!g.first_launch_failed("test", oom).unwrap());
        assert!(g.failed, "no recording tried again in this generation");
        // any other failure is the step's error
        let mut g = GraphState::<()>::default();
        let other = crate::Error::Input("bad".into());
        assert!(g.first_launch_failed("test", other).is_err());
        assert!(!g.failed);
    }
}
