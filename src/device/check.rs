//! The argument checks of the `Backend` ops, one copy for every backend: each op's buffers must
//! hold what its shapes address, and its options must be ones the kernels implement. Both
//! `cuda::Gpu` and `host::HostBackend` call these before doing anything, so a wrong shape is the
//! same clear error on either (never a kernel reading out of bounds), and CI, which has no GPU,
//! exercises the very checks that guard the kernels (`backend_rejects_bad_arguments` in
//! tests/common/mod.rs, run on the host backend in tests/device_graphs.rs and on the GPU in
//! tests/cuda_ops.rs). Sizes are computed with checked arithmetic: a shape whose size overflows
//! is an error, not a wrapped-around small number that would pass. The checks cover buffer sizes
//! and options; index values inside device buffers (LoRA slot ids, K/V row maps) are checked by
//! the code that builds them, on the host.

use super::{view_len, AttnCall, Backend, Elem, GemmShape, Lora, Out, Rows, View, Weight};
use crate::{Error, Result};
use half::bf16;

/// The error of op `op` on backend `B`.
pub fn err<B: Backend + ?Sized>(op: &'static str, msg: impl Into<String>) -> Error {
    Error::Backend {
        backend: B::KIND,
        op,
        msg: msg.into(),
    }
}

/// The product of `dims`, None when it overflows.
pub fn size(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &b| a.checked_mul(b))
}

/// `buf` (named `what` in the error) holds at least `n` elements (None: the shape's size
/// overflows).
pub fn need<B: Backend + ?Sized, T: Elem>(
    op: &'static str,
    what: &str,
    buf: &B::Buf<T>,
    n: Option<usize>,
) -> Result<()> {
    need_len::<B>(op, what, B::len(buf), n)
}

/// A buffer of `len` elements (named `what`) holds at least `n` (None: the shape's size
/// overflows); for buffers of element types outside `Elem`.
pub fn need_len<B: Backend + ?Sized>(
    op: &'static str,
    what: &str,
    len: usize,
    n: Option<usize>,
) -> Result<()> {
    let Some(n) = n else {
        return Err(err::<B>(op, format!("{what}: the shape's size overflows")));
    };
    if len < n {
        return Err(err::<B>(
            op,
            format!("{what}: buffer holds {len} elements, shape needs {n}"),
        ));
    }
    Ok(())
}

pub fn copy<B: Backend + ?Sized, T: Elem>(
    op: &'static str,
    src: &B::Buf<T>,
    src_off: usize,
    dst: &B::Buf<T>,
    dst_off: usize,
    len: usize,
) -> Result<()> {
    need::<B, T>(op, "copy source", src, src_off.checked_add(len))?;
    need::<B, T>(op, "copy destination", dst, dst_off.checked_add(len))
}

pub fn rms_norm<B: Backend + ?Sized>(
    x: &B::Buf<bf16>,
    w: &B::Buf<bf16>,
    y: &B::Buf<bf16>,
    rows: usize,
    d: usize,
) -> Result<()> {
    const OP: &str = "rms_norm";
    need::<B, _>(OP, "x", x, size(&[rows, d]))?;
    need::<B, _>(OP, "w", w, Some(d))?;
    need::<B, _>(OP, "y", y, size(&[rows, d]))
}

/// The length `rows` rows of `cols` at `at` need (0 for no rows), None when it overflows.
pub fn rows_len(at: Rows, rows: usize, cols: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1)
        .checked_mul(at.ld)?
        .checked_add(cols)?
        .checked_add(at.off)
}

/// Rows of `cols` elements `ld` apart must not overlap (one thread per element writes them).
fn row_stride<B: Backend + ?Sized>(
    op: &'static str,
    what: &str,
    ld: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    if rows > 1 && ld < cols {
        return Err(err::<B>(
            op,
            format!("{what}: row stride {ld} is less than the row length {cols}"),
        ));
    }
    Ok(())
}

pub fn activation<B: Backend + ?Sized>(x: &B::Buf<bf16>, n: usize) -> Result<()> {
    need::<B, _>("activation", "x", x, Some(n))
}

pub fn gated_activation<B: Backend + ?Sized>(
    gu: &B::Buf<bf16>,
    y: &B::Buf<bf16>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    const OP: &str = "gated_activation";
    need::<B, _>(OP, "gate|up", gu, size(&[rows, cols, 2]))?;
    need::<B, _>(OP, "y", y, size(&[rows, cols]))
}

pub fn rope<B: Backend + ?Sized>(
    x: &B::Buf<bf16>,
    pos: &B::Buf<i32>,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    ld: usize,
) -> Result<()> {
    const OP: &str = "rope";
    if !head_dim.is_multiple_of(2) {
        return Err(err::<B>(OP, format!("head_dim {head_dim} is odd")));
    }
    let Some(row) = size(&[heads, head_dim]) else {
        return Err(err::<B>(OP, "x: the shape's size overflows"));
    };
    row_stride::<B>(OP, "x", ld, tokens, row)?;
    need::<B, _>(OP, "x", x, rows_len(Rows { off: 0, ld }, tokens, row))?;
    need::<B, _>(OP, "pos", pos, Some(tokens))
}

/// `Backend::gather_blocks`: the copied prefix lies within a block, and every buffer holds
/// every parent's block.
pub fn gather_blocks<B: Backend + ?Sized>(
    op: &'static str,
    bufs: &[B::Buf<bf16>],
    per: usize,
    used: usize,
    parents: &[usize],
) -> Result<()> {
    if used > per {
        return Err(err::<B>(
            op,
            format!("gather of {used} elements from blocks of {per}"),
        ));
    }
    if let Some(&last) = parents.iter().max() {
        let end = last.checked_add(1).and_then(|b| b.checked_mul(per));
        for buf in bufs {
            need::<B, _>(
                op,
                &format!("gather source (parent block {last})"),
                buf,
                end,
            )?;
        }
    }
    Ok(())
}

pub fn copy_rows<B: Backend + ?Sized>(
    op: &'static str,
    src: (&B::Buf<bf16>, Rows),
    dst: (&B::Buf<bf16>, Rows),
    rows: usize,
    cols: usize,
) -> Result<()> {
    row_stride::<B>(op, "copy destination", dst.1.ld, rows, cols)?;
    need::<B, _>(op, "copy source", src.0, rows_len(src.1, rows, cols))?;
    need::<B, _>(op, "copy destination", dst.0, rows_len(dst.1, rows, cols))
}

/// `Backend::gather_blocks_into`: `gather_blocks`' checks on the sources, as many destinations,
/// each holding a block per parent.
pub fn gather_blocks_into<B: Backend + ?Sized>(
    op: &'static str,
    src: &[B::Buf<bf16>],
    dst: &[B::Buf<bf16>],
    per: usize,
    used: usize,
    parents: &[usize],
) -> Result<()> {
    gather_blocks::<B>(op, src, per, used, parents)?;
    if src.len() != dst.len() {
        return Err(err::<B>(
            op,
            format!("{} source buffers, {} destinations", src.len(), dst.len()),
        ));
    }
    for d in dst {
        need::<B, _>(op, "gather destination", d, size(&[parents.len(), per]))?;
    }
    Ok(())
}

/// `copy_rows` with the destination at its furthest position (`Backend::copy_rows_at`).
#[allow(clippy::too_many_arguments)]
pub fn copy_rows_at<B: Backend + ?Sized>(
    op: &'static str,
    src: (&B::Buf<bf16>, Rows),
    dst: (&B::Buf<bf16>, Rows),
    rows: usize,
    cols: usize,
    pos: &B::Buf<i32>,
    pos_stride: usize,
    pos_max: usize,
) -> Result<()> {
    need::<B, _>(op, "position", pos, Some(1))?;
    if pos_max > i32::MAX as usize {
        return Err(err::<B>(
            op,
            format!("largest position {pos_max} beyond i32"),
        ));
    }
    let far = pos_max
        .checked_mul(pos_stride)
        .and_then(|x| x.checked_add(dst.1.off))
        .ok_or_else(|| err::<B>(op, "destination offset overflows"))?;
    copy_rows::<B>(op, src, (dst.0, Rows { off: far, ..dst.1 }), rows, cols)
}

/// `Backend::embedding`: the buffers' lengths (the ids are the caller's to check).
pub fn embedding<B: Backend + ?Sized>(
    ids: &B::Buf<i32>,
    n: usize,
    table: &B::Buf<bf16>,
    y: &B::Buf<bf16>,
    d: usize,
    vocab: usize,
) -> Result<()> {
    const OP: &str = "embedding";
    need::<B, _>(OP, "ids", ids, Some(n))?;
    need::<B, _>(OP, "table", table, size(&[vocab, d]))?;
    need::<B, _>(OP, "y", y, size(&[n, d]))
}

/// Every id inside the vocabulary (token ids checked on the host before a device reads them).
pub fn ids_in_vocab<B: Backend + ?Sized>(ids: &[u32], vocab: usize) -> Result<()> {
    match ids.iter().find(|&&i| i as usize >= vocab) {
        Some(&bad) => Err(err::<B>(
            "embedding",
            format!("token id {bad} is outside the vocabulary of {vocab}"),
        )),
        None => Ok(()),
    }
}

/// Also checks every id against the vocabulary (on the host, before any launch).
pub fn embedding_ids<B: Backend + ?Sized>(
    ids: &[u32],
    table: &B::Buf<bf16>,
    y: &B::Buf<bf16>,
    d: usize,
    vocab: usize,
) -> Result<()> {
    const OP: &str = "embedding";
    need::<B, _>(OP, "table", table, size(&[vocab, d]))?;
    need::<B, _>(OP, "y", y, size(&[ids.len(), d]))?;
    ids_in_vocab::<B>(ids, vocab)
}

pub fn gemm<B: Backend + ?Sized>(
    x: &B::Buf<bf16>,
    w: &Weight<B>,
    y: &Out<B>,
    s: &GemmShape,
    lora: Option<&Lora<B>>,
) -> Result<()> {
    const OP: &str = "gemm";
    need::<B, _>(OP, "x", x, size(&[s.m, s.k]))?;
    match w {
        Weight::Bf16(b) => need::<B, _>(OP, "w", *b, size(&[s.n, s.k]))?,
        Weight::Int8 { w, scale } => {
            need::<B, _>(OP, "w", *w, size(&[s.n, s.k]))?;
            need::<B, _>(OP, "w_scale", *scale, Some(s.n))?;
        }
    }
    gemm_out(OP, y, s, lora)
}

/// The output and LoRA operands of a GEMM-family op `op` (shared with the GPU's W8A8 GEMM).
pub fn gemm_out<B: Backend + ?Sized>(
    op: &'static str,
    y: &Out<B>,
    s: &GemmShape,
    lora: Option<&Lora<B>>,
) -> Result<()> {
    if s.ldy < s.n {
        return Err(err::<B>(op, format!("ldy {} < n {}", s.ldy, s.n)));
    }
    match y {
        Out::Bf16(b) => need::<B, _>(op, "y", &**b, s.y_len())?,
        Out::F32(f) => need::<B, _>(op, "y", &**f, s.y_len())?,
    }
    if let Some(lo) = lora {
        need::<B, _>(op, "lora t", lo.t, size(&[s.m, lo.r]))?;
        need::<B, _>(op, "lora b", lo.b, size(&[lo.adapters, s.n, lo.r]))?;
        need::<B, _>(op, "lora ids", lo.ids, Some(s.m))?;
        need::<B, _>(op, "lora scale", lo.scale, Some(lo.adapters))?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn lora_shrink<B: Backend + ?Sized>(
    x: &B::Buf<bf16>,
    a: &B::Buf<bf16>,
    ids: &B::Buf<i32>,
    t: &B::Buf<f32>,
    m: usize,
    k: usize,
    r: usize,
    adapters: usize,
) -> Result<()> {
    const OP: &str = "lora_shrink";
    need::<B, _>(OP, "x", x, size(&[m, k]))?;
    need::<B, _>(OP, "a", a, size(&[adapters, r, k]))?;
    need::<B, _>(OP, "ids", ids, Some(m))?;
    need::<B, _>(OP, "t", t, size(&[m, r]))
}

/// The kernels implement head sizes 1..=128, query heads a multiple of the K/V heads, and the T5
/// bucket formula for buckets >= 2 and max_distance > buckets / 2 (the log-spaced buckets).
#[allow(clippy::too_many_arguments)]
pub fn attention<B: Backend + ?Sized, T: Elem>(
    c: &AttnCall,
    q: (&B::Buf<bf16>, View),
    k: (&B::Buf<T>, View),
    v: (&B::Buf<T>, View),
    o: &B::Buf<bf16>,
    key_mask: Option<&B::Buf<i32>>,
    kv_batch: Option<&B::Buf<i32>>,
    rel_bias: Option<&B::Buf<f32>>,
) -> Result<()> {
    const OP: &str = "attention";
    if c.dk == 0 || c.dk > 128 {
        return Err(err::<B>(
            OP,
            format!("head size {} (1..=128 supported)", c.dk),
        ));
    }
    if c.kv_heads == 0 || !c.heads.is_multiple_of(c.kv_heads) {
        return Err(err::<B>(
            OP,
            format!(
                "{} heads not a multiple of {} kv heads",
                c.heads, c.kv_heads
            ),
        ));
    }
    need::<B, _>(OP, "q", q.0, view_len(q.1, c.batch, c.heads, c.tq, c.dk))?;
    let kv_len = |w: View| view_len(w, c.kv_batch_rows, c.kv_heads, c.tk, c.dk);
    need::<B, _>(OP, "k", k.0, kv_len(k.1))?;
    need::<B, _>(OP, "v", v.0, kv_len(v.1))?;
    need::<B, _>(OP, "o", o, size(&[c.batch, c.tq, c.heads, c.dk]))?;
    if let Some(m) = key_mask {
        need::<B, _>(OP, "key_mask", m, size(&[c.kv_batch_rows, c.tk]))?;
    }
    match kv_batch {
        Some(kb) => need::<B, _>(OP, "kv_batch", kb, Some(c.batch))?,
        None if c.kv_batch_rows < c.batch => {
            return Err(err::<B>(
                OP,
                "fewer K/V rows than queries and no kv_batch map",
            ))
        }
        None => {}
    }
    if let Some(rb) = rel_bias {
        match c.t5_bias {
            Some((nb, md, _)) if nb >= 2 && md > nb / 2 => {
                need::<B, _>(OP, "rel_bias", rb, size(&[nb, c.heads]))?
            }
            _ => {
                return Err(err::<B>(
                    OP,
                    "relative bias needs buckets >= 2 and max_distance > buckets/2",
                ))
            }
        }
    }
    Ok(())
}

/// `Backend::attention_q8`: as `attention` (no relative bias) with K and V views into one int8
/// buffer, every stride and offset of both a multiple of dk (so each head row is one scale
/// group), and a scale for every group the views reach.
#[allow(clippy::too_many_arguments)]
pub fn attention_q8<B: Backend + ?Sized>(
    c: &AttnCall,
    q: (&B::Buf<bf16>, View),
    kv: &B::Buf<i8>,
    k: View,
    v: View,
    scales: &B::Buf<f32>,
    o: &B::Buf<bf16>,
    key_mask: Option<&B::Buf<i32>>,
    kv_batch: Option<&B::Buf<i32>>,
) -> Result<()> {
    const OP: &str = "attention";
    // the layout rule first (the more specific error); dk 0 is refused by `attention`
    if c.dk > 0 {
        for (what, w) in [("k", k), ("v", v)] {
            if [w.sb, w.sh, w.st, w.off].iter().any(|x| x % c.dk != 0) {
                return Err(err::<B>(
                    OP,
                    format!(
                        "{what} view {w:?}: strides and offset must be multiples of dk {}",
                        c.dk
                    ),
                ));
            }
        }
    }
    attention::<B, i8>(c, q, (kv, k), (kv, v), o, key_mask, kv_batch, None)?;
    for w in [k, v] {
        let end = view_len(w, c.kv_batch_rows, c.kv_heads, c.tk, c.dk);
        need::<B, _>(OP, "scales", scales, end.map(|e| e / c.dk))?;
    }
    Ok(())
}

/// `Backend::quantize_kv`: groups of 1..=1024 elements, buffers large enough.
pub fn quantize_kv<B: Backend + ?Sized>(
    x: &B::Buf<bf16>,
    groups: usize,
    k: usize,
    q: &B::Buf<i8>,
    scales: &B::Buf<f32>,
) -> Result<()> {
    const OP: &str = "quantize_kv";
    if k == 0 || k > 1024 {
        return Err(err::<B>(OP, format!("group size {k} (1..=1024)")));
    }
    let n = size(&[groups, k]);
    need::<B, _>(OP, "x", x, n)?;
    need::<B, _>(OP, "q", q, n)?;
    need::<B, _>(OP, "scales", scales, Some(groups))
}

/// Also bounds the vocabulary to i32 ids (what the kernels write).
pub fn greedy_pick<B: Backend + ?Sized>(
    logits: &B::Buf<f32>,
    rows: usize,
    vocab: usize,
    masks: Option<&[u32]>,
) -> Result<()> {
    logits_pick::<B>("greedy_pick", logits, rows, vocab, masks)
}

/// `Backend::topk_logprobs`: as `greedy_pick`, and 1 <= k <= min(64, vocab) (the kernel's
/// limit).
pub fn topk_logprobs<B: Backend + ?Sized>(
    logits: &B::Buf<f32>,
    rows: usize,
    vocab: usize,
    k: usize,
    masks: Option<&[u32]>,
) -> Result<()> {
    const OP: &str = "topk_logprobs";
    if k == 0 || k > 64 || k > vocab {
        return Err(err::<B>(OP, format!("k {k} (1..=64, <= vocab {vocab})")));
    }
    logits_pick::<B>(OP, logits, rows, vocab, masks)
}

fn logits_pick<B: Backend + ?Sized>(
    op: &'static str,
    logits: &B::Buf<f32>,
    rows: usize,
    vocab: usize,
    masks: Option<&[u32]>,
) -> Result<()> {
    if vocab == 0 || vocab > i32::MAX as usize {
        return Err(err::<B>(op, format!("vocabulary of {vocab}")));
    }
    need::<B, _>(op, "logits", logits, size(&[rows, vocab]))?;
    if let Some(m) = masks {
        let words = size(&[rows, crate::generate::mask_words_len(vocab)]);
        need_len::<B>(op, "masks", m.len(), words)?;
    }
    Ok(())
}
