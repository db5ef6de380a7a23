//! Typed wrappers, one per kernel: the host-side "launcher" layer. Each checks that every buffer
//! the kernel touches is large enough for the shapes it is given (so a kernel can never read or
//! write out of bounds through a wrong shape), picks the grid, fills the parameter struct from
//! kernels/jobx_params.h and launches through `Gpu::launch`. Shapes are in elements.

use super::runtime::{backend_err, params::*, Gpu};
use super::tune::{self, GemmKey, GemmMode, SkinnyKernel};
use crate::Result;
use cudarc::driver::{CudaSlice, LaunchConfig};
use half::bf16;
use std::ffi::c_void;

/// `check::need` for buffers of any element type (`n` None: the shape's size overflows).
fn need<T>(op: &'static str, what: &str, buf: &CudaSlice<T>, n: Option<usize>) -> Result<()> {
    check::need_len::<Gpu>(op, what, buf.len(), n)
}

fn grid_1d(n: usize, threads: u32) -> LaunchConfig {
    // grid-stride kernels: cap the grid, every kernel loops over the rest
    let blocks = n.div_ceil(threads as usize).clamp(1, 65_535 * 4) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn rows_grid(rows: usize, threads: u32, op: &'static str) -> Result<LaunchConfig> {
    if rows > i32::MAX as usize {
        return Err(backend_err(
            op,
            format!("{rows} rows exceed one grid dimension"),
        ));
    }
    Ok(LaunchConfig {
        grid_dim: (rows.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

const NULL: *mut c_void = std::ptr::null_mut();

/// Whether a kernel may move bf16 eight at a time with 16-byte accesses: every length or row
/// stride (in elements) a multiple of 8 and every address 16-byte aligned (null counts as
/// aligned). The kernels that have such a form test the same on the device; the launchers use
/// this to size the grid or pick the kernel.
fn bf16x8_fits(lens: &[usize], addrs: &[usize]) -> bool {
    lens.iter().all(|l| l.is_multiple_of(8)) && addrs.iter().all(|a| a.is_multiple_of(16))
}
/// rms_norm_bf16's block size in its vector form: a thread per 8 elements of the row, in whole
/// warps, 32 to 256. The `_rms` GEMMs repeat the sums of a block of this size (kernels/
/// rms_common.cuh), so both sides take it from here.
fn rms_threads(d: usize) -> usize {
    (d / 8).div_ceil(32).clamp(1, 8) * 32
}

/// `Gpu::gemm_rms`: the most blocks per multiprocessor a fused launch may have (each block
/// normalises the x rows before its product; a guess until a GPU run has timed it).
const RMS_MAX_WAVES: usize = 4;

/// The fields of a plain row copy besides its operands (no device position).
const COPY_PLAIN: jobx_copy_rows_params = jobx_copy_rows_params {
    src: std::ptr::null(),
    dst: NULL,
    src_rows: std::ptr::null(),
    rows: 0,
    cols: 0,
    src_ld: 0,
    dst_ld: 0,
    dst_pos: std::ptr::null(),
    pos_stride: 0,
    pos_max: 0,
    err: std::ptr::null_mut(),
};

fn act_kind(kind: ActKind) -> u32 {
    match kind {
        ActKind::Relu => JOBX_ACT_RELU,
        ActKind::GeluTanh => JOBX_ACT_GELU_TANH,
        ActKind::Silu => JOBX_ACT_SILU,
    }
}

impl Gpu {
    /// y = act(gate) [· up] over n contiguous elements; `kind` is JOBX_ACT_RELU / _GELU_TANH /
    /// _SILU.
    pub fn activation(
        &self,
        gate: &CudaSlice<bf16>,
        up: Option<&CudaSlice<bf16>>,
        y: &mut CudaSlice<bf16>,
        n: usize,
        kind: u32,
    ) -> Result<()> {
        const OP: &str = "activation";
        check::activation::<Gpu>(gate, n)?;
        if let Some(u) = up {
            need(OP, "up", u, Some(n))?;
        }
        need(OP, "y", y, Some(n))?;
        let up = up.map_or(NULL, |u| self.ptr(u));
        self.launch_act(OP, (self.ptr(gate), up, n), (self.ptr(y), n), (1, n), kind)
    }

    /// The act_bf16 launch over rows x cols: gate and up rows `ld_in` apart, y rows `ld_y`
    /// apart (the callers checked the buffers).
    fn launch_act(
        &self,
        op: &'static str,
        (gate, up, ld_in): (*mut c_void, *mut c_void, usize),
        (y, ld_y): (*mut c_void, usize),
        (rows, cols): (usize, usize),
        kind: u32,
    ) -> Result<()> {
        if kind > JOBX_ACT_SILU {
            return Err(backend_err(op, format!("unknown activation kind {kind}")));
        }
        let n = rows * cols;
        if n == 0 {
            return Ok(());
        }
        let p = jobx_act_params {
            gate,
            up,
            y,
            rows: rows as i64,
            cols: cols as i64,
            ld_in: ld_in as i64,
            ld_y: ld_y as i64,
            kind: kind as i32,
        };
        // columns over x, rows over y (both grid-strided in the kernel); 8 columns a thread
        // where the kernel takes its vector form (the same test as act_bf16's)
        let vec = bf16x8_fits(
            &[cols, ld_in, ld_y],
            &[gate as usize, up as usize, y as usize],
        );
        let mut cfg = grid_1d(if vec { cols / 8 } else { cols }, 256);
        cfg.grid_dim.1 = rows.clamp(1, 65_535) as u32;
        self.launch(op, "act_bf16", cfg, p)
    }

    /// y[t] = table[ids[t]]; an id outside the vocabulary is an error naming it (the kernel's
    /// error flag read back: a synchronisation, unlike `Backend::embedding`).
    pub fn embedding_checked(
        &self,
        ids: &CudaSlice<i32>,
        table: &CudaSlice<bf16>,
        y: &mut CudaSlice<bf16>,
        n: usize,
        d: usize,
        vocab: usize,
    ) -> Result<()> {
        const OP: &str = "embedding";
        need(OP, "ids", ids, Some(n))?;
        need(OP, "table", table, size(&[vocab, d]))?;
        need(OP, "y", y, size(&[n, d]))?;
        if n == 0 {
            return Ok(());
        }
        let err = self.zeros::<i32>(OP, 1)?;
        let p = jobx_embedding_params {
            ids: self.ptr(ids) as *const i32,
            table: self.ptr(table),
            y: self.ptr(y),
            err: self.ptr(&err) as *mut i32,
            n: n as i64,
            d: d as i64,
            vocab: vocab as i64,
        };
        self.launch(OP, "embedding_bf16", rows_grid(n, 128, OP)?, p)?;
        if self.download(OP, &err)?[0] != 0 {
            return Err(backend_err(
                OP,
                format!("a token id is outside the vocabulary of {vocab}"),
            ));
        }
        Ok(())
    }
}

/// The device-neutral GEMM operand types (`crate::device`), on the GPU.
pub type Weight<'a> = crate::device::Weight<'a, Gpu>;
pub type Out<'a> = crate::device::Out<'a, Gpu>;
pub type Lora<'a> = crate::device::Lora<'a, Gpu>;
use crate::device::check::{self, size};
pub use crate::device::{ActKind, AttnCall, Backend, GemmShape, Rows, View};

/// copy_rows_bf16: a block per row (x) and per 4096 columns (y, embedding.cu: COPY_CHUNK).
fn copy_grid(rows: usize, cols: usize, op: &'static str) -> Result<LaunchConfig> {
    let chunks = cols.div_ceil(4096);
    if rows > i32::MAX as usize || chunks > 65_535 {
        return Err(backend_err(
            op,
            format!("{rows} rows of {cols} exceed the copy grid"),
        ));
    }
    Ok(LaunchConfig {
        grid_dim: (rows.max(1) as u32, chunks.max(1) as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn gemm_grid(s: &GemmShape, op: &'static str) -> Result<LaunchConfig> {
    let (gx, gy) = (s.n.div_ceil(64), s.m.div_ceil(64));
    if gy > 65_535 || gx > i32::MAX as usize {
        return Err(backend_err(
            op,
            format!("m {} n {} exceed the grid", s.m, s.n),
        ));
    }
    Ok(LaunchConfig {
        grid_dim: (gx as u32, gy as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    })
}

impl Gpu {
    /// The parameter struct of a GEMM with the output, shape and LoRA fields filled; the caller
    /// has run `check::gemm_out` (or `check::gemm`) and sets x, w, scales and the weight kind.
    fn gemm_params(
        &self,
        s: &GemmShape,
        y: &mut Out,
        lora: Option<&Lora>,
    ) -> Result<jobx_gemm_params> {
        // y_off is inside the buffer (the caller ran check::gemm_out)
        let (y, y_f32) = match y {
            Out::Bf16(b) => (self.ptr_at(b, s.y_off), 0),
            Out::F32(f) => (self.ptr_at(f, s.y_off), 1),
        };
        let mut p = jobx_gemm_params {
            x: std::ptr::null(),
            w: std::ptr::null(),
            w_scale: std::ptr::null(),
            x_scale: std::ptr::null(),
            y,
            m: s.m as i64,
            n: s.n as i64,
            k: s.k as i64,
            ldy: s.ldy as i64,
            w_kind: 0,
            y_f32,
            accumulate: s.accumulate as i32,
            lora_t: std::ptr::null(),
            lora_b: std::ptr::null(),
            lora_ids: std::ptr::null(),
            lora_scale: std::ptr::null(),
            lora_r: 0,
            split_ws: std::ptr::null_mut(),
            split_cnt: std::ptr::null_mut(),
            trace: std::ptr::null_mut(),
            pdl: 0,
        };
        if let Some(lo) = lora {
            // ids are checked on the host copy by the caller that built them; the kernel
            // trusts -1 <= id < adapters
            p.lora_t = self.ptr(lo.t) as *const f32;
            p.lora_b = self.ptr(lo.b);
            p.lora_ids = self.ptr(lo.ids) as *const i32;
            p.lora_scale = self.ptr(lo.scale) as *const f32;
            p.lora_r = lo.r as i64;
        }
        Ok(p)
    }

    /// The device copies of a logits pick's masks (`rows` rows of bit words) and suppressed ids
    /// (as i32; None when there are none).
    #[allow(clippy::type_complexity)]
    fn pick_inputs(
        &self,
        op: &'static str,
        rows: usize,
        vocab: usize,
        suppress: &[u32],
        masks: Option<&[u32]>,
    ) -> Result<(Option<CudaSlice<u32>>, Option<CudaSlice<i32>>)> {
        let words = vocab.div_ceil(32);
        let dmask = masks
            .map(|m| self.upload(op, &m[..rows * words]))
            .transpose()?;
        let sup: Vec<i32> = suppress.iter().map(|&t| t as i32).collect();
        let dsup = (!sup.is_empty())
            .then(|| self.upload(op, &sup))
            .transpose()?;
        Ok((dmask, dsup))
    }

    /// Launch one of the kernels for m <= 32 rows (tune.rs) on a bf16 x and a bf16 or weight-only
    /// int8 w; `profiled` false for tuning's launches.
    fn launch_skinny(
        &self,
        op: &'static str,
        kernel: SkinnyKernel,
        s: &GemmShape,
        p: jobx_gemm_params,
        profiled: bool,
    ) -> Result<()> {
        let (name, cfg, p) = self.skinny_launch(kernel, s, p)?;
        self.launch_as(op, name, cfg, p, profiled)
    }

    /// `launch_skinny`'s kernel, configuration and parameters (PDL prefetch, split workspace).
    fn skinny_launch(
        &self,
        kernel: SkinnyKernel,
        s: &GemmShape,
        mut p: jobx_gemm_params,
    ) -> Result<(&'static str, LaunchConfig, jobx_gemm_params)> {
        const OP: &str = "gemm";
        // launched with programmatic dependent launch: prefetch the weight rows before waiting,
        // where the whole weight fits in half of L2 (a larger one, e.g. an LM head, would evict
        // its own first lines and the previous kernel's data before they are used)
        let w_bytes = s.n * s.k * if p.w_kind == JOBX_W_BF16 as i32 { 2 } else { 1 };
        p.pdl = (self.pdl_on() && w_bytes <= self.l2_bytes / 2) as i32;
        let grid = |cols: usize| {
            let blocks = s.n.div_ceil(cols);
            if blocks > i32::MAX as usize {
                return Err(backend_err(OP, format!("n {} exceeds the grid", s.n)));
            }
            Ok(blocks as u32)
        };
        let (name, cfg) = match kernel {
            // one warp per output column, 8 a block
            SkinnyKernel::Skinny => (
                if s.m <= 8 {
                    "gemm_skinny8"
                } else {
                    "gemm_skinny32"
                },
                LaunchConfig {
                    grid_dim: (grid(8)?, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                },
            ),
            // 16 columns a block (gemm.cu: gemm_skinny_tc); 8 warps splitting k where 4-warp
            // blocks would leave SMs idle, for more weight loads in flight; split over k
            // (`SkinnyTcSplit`, where `skinny_splits` says so) 4 warps a block
            SkinnyKernel::SkinnyTc | SkinnyKernel::SkinnyTcSplit => {
                let blocks = grid(16)?;
                let splits = match kernel {
                    SkinnyKernel::SkinnyTcSplit => self.skinny_splits(s),
                    _ => 1,
                };
                let warps = if splits >= 2 {
                    p.split_ws = self.ptr(&self.split_ws) as *mut f32;
                    p.split_cnt = self.ptr(&self.split_cnt) as *mut u32;
                    4
                } else if (blocks as usize) < 2 * self.multiprocessors {
                    8
                } else {
                    4
                };
                (
                    "gemm_skinny_tc",
                    LaunchConfig {
                        grid_dim: (blocks, splits as u32, 1),
                        block_dim: (32 * warps, 1, 1),
                        shared_mem_bytes: 0,
                    },
                )
            }
            SkinnyKernel::Tiles => ("gemm_bf16", gemm_grid(s, OP)?),
        };
        Ok((name, cfg, p))
    }

    /// The weight fields of a GEMM's parameters.
    fn set_weight(&self, p: &mut jobx_gemm_params, w: &Weight) {
        match w {
            Weight::Bf16(b) => {
                p.w = self.ptr(*b);
                p.w_kind = JOBX_W_BF16 as i32;
            }
            Weight::Int8 { w, scale } => {
                p.w = self.ptr(*w);
                p.w_scale = self.ptr(*scale) as *const f32;
                p.w_kind = JOBX_W_INT8 as i32;
            }
        }
    }

    /// The m <= 32 kernel for this product: forced, by the fixed rule, or tuned (timed on its
    /// first use, tune.rs).
    fn skinny_choice(&self, s: &GemmShape, p: &jobx_gemm_params) -> SkinnyKernel {
        let int8 = p.w_kind == JOBX_W_INT8 as i32;
        match (GemmKey::new(s.m, s.n, s.k, int8), self.gemm_mode()) {
            (None, _) => SkinnyKernel::Tiles,
            (Some(_), GemmMode::Force(k)) => k,
            (Some(key), GemmMode::Fixed) => tune::fixed_rule(&key),
            (Some(key), GemmMode::Tune) => {
                let candidates = self.skinny_candidates(s);
                self.tuned(key, candidates, || {
                    self.time_skinny_candidates(s, p, candidates)
                })
            }
        }
    }

    /// The decode kernel `gemm_rms` fuses the norm into, if it may: `Gpu::gemm_rms` on, the
    /// kernels loaded, 1..=32 rows, no LoRA (its shrink reads the normalised x), the norm's
    /// vector form (k a multiple of 8 up to 8192, x, the norm weight and hn 16-byte aligned; the
    /// `_rms` kernels repeat that form's sums) and the skinny kernels' 16-byte loads (w 16-byte
    /// aligned, int8 8-byte), and a small x: each block normalises every x row itself (from
    /// L2, before its product), so m * k is held to 32768 (T5-Large's 32 x 1024) and the
    /// launch to `RMS_MAX_WAVES` blocks per multiprocessor (an LM head's ~2000 blocks would
    /// pay that prologue in every wave; the norm's own launch is paid once). The kernel is the
    /// one `gemm` would take; the tiles have no fused form.
    fn rms_fusable(
        &self,
        s: &GemmShape,
        p: &jobx_gemm_params,
        [nw, hn]: [*const c_void; 2],
        lora: bool,
    ) -> Option<SkinnyKernel> {
        use std::sync::atomic::Ordering::Relaxed;
        let int8 = p.w_kind == JOBX_W_INT8 as i32;
        let w_align = if int8 { 8 } else { 16 };
        let ok = self.gemm_rms.load(Relaxed)
            && !self.general_kernels.load(Relaxed)
            && !lora
            && self.has_kernel("gemm_skinny_tc_rms")
            && (1..=32).contains(&s.m)
            && s.n > 0
            && s.k <= 8192
            && s.m * s.k <= 32_768
            && bf16x8_fits(&[s.k], &[p.x as usize, nw as usize, hn as usize])
            && (p.w as usize).is_multiple_of(w_align);
        if !ok {
            return None;
        }
        let kernel = self.skinny_choice(s, p);
        (kernel != SkinnyKernel::Tiles).then_some(kernel)
    }

    /// The `_rms` kernel and launch for `kernel` (`launch_skinny`'s configuration; its split
    /// workspace too), or None where the launch would exceed `RMS_MAX_WAVES`.
    fn rms_kernel(
        &self,
        kernel: SkinnyKernel,
        s: &GemmShape,
        p: &jobx_gemm_params,
    ) -> Option<(&'static str, LaunchConfig, jobx_gemm_params)> {
        let (name, cfg, p) = self.skinny_launch(kernel, s, *p).ok()?;
        let blocks = cfg.grid_dim.0 as usize * cfg.grid_dim.1 as usize;
        if blocks > RMS_MAX_WAVES * self.multiprocessors.max(1) {
            return None;
        }
        let name = match name {
            "gemm_skinny8" => "gemm_skinny8_rms",
            "gemm_skinny32" => "gemm_skinny32_rms",
            "gemm_skinny_tc" => "gemm_skinny_tc_rms",
            _ => return None,
        };
        Some((name, cfg, p))
    }

    /// How many blocks share each 16-column tile's k in `gemm_skinny_tc` split over k: enough
    /// for ~2 blocks per SM where the column tiles are fewer than `SPLIT_TILES_PER_SM` per SM
    /// (the workspace's size), at least 2 chunks of 32 k each, at most `SPLIT_MAX`; 1 (no
    /// split) otherwise.
    pub(crate) fn skinny_splits(&self, s: &GemmShape) -> usize {
        let tiles = s.n.div_ceil(16);
        if tiles == 0 || tiles >= super::runtime::SPLIT_TILES_PER_SM * self.multiprocessors {
            return 1;
        }
        (2 * self.multiprocessors)
            .div_ceil(tiles)
            .min(super::runtime::SPLIT_MAX)
            .min(s.k.div_ceil(32) / 2)
            .max(1)
    }

    /// The kernels tuning times for this product (tune.rs `SkinnyKernel::candidates`): the
    /// split one only where `JOBX_GEMM_SPLITK` enables it and the product would split.
    fn skinny_candidates(&self, s: &GemmShape) -> &'static [SkinnyKernel] {
        let split = self.gemm_splitk.load(std::sync::atomic::Ordering::Relaxed)
            && self.skinny_splits(s) >= 2;
        SkinnyKernel::candidates(split)
    }

    /// Device time (ms, median of a few launches) of every m <= 32 kernel on this product, for
    /// `Gpu::tuned`. Each candidate writes a scratch output (no accumulation, no LoRA: the same
    /// epilogue work for all, and the real output untouched) after a launch that is not timed
    /// (the driver loads a kernel's code on its first launch), and L2 is overwritten before each
    /// timed launch, so the weight comes from memory as it does in a decode step, where the
    /// layers' weights do not fit in L2. A candidate that cannot launch is left out.
    fn time_skinny_candidates(
        &self,
        s: &GemmShape,
        p: &jobx_gemm_params,
        candidates: &[SkinnyKernel],
    ) -> Result<Vec<(SkinnyKernel, f64)>> {
        const OP: &str = "gemm tuning";
        const REPS: usize = 5;
        let y = self.scratch::<bf16>(OP, s.m * s.n)?;
        let flush_bytes = (2 * self.l2_bytes).max(1 << 20);
        let flush = self.scratch::<u8>(OP, flush_bytes)?;
        let mut q = *p;
        q.y = self.ptr(&y);
        q.y_f32 = 0;
        q.ldy = s.n as i64;
        q.accumulate = 0;
        q.lora_t = std::ptr::null();
        q.lora_b = std::ptr::null();
        q.lora_ids = std::ptr::null();
        q.lora_scale = std::ptr::null();
        q.lora_r = 0;
        let event = || {
            self.stream()
                .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| backend_err(OP, format!("timing event: {e}")))
        };
        let mut out = Vec::new();
        for &kernel in candidates {
            if self.launch_skinny(OP, kernel, s, q, false).is_err() {
                continue;
            }
            let mut pairs = Vec::with_capacity(REPS);
            for _ in 0..REPS {
                // SAFETY: the range is exactly the allocation above, on the engine's stream.
                unsafe {
                    cudarc::driver::result::memset_d8_async(
                        self.ptr(&flush) as usize as cudarc::driver::sys::CUdeviceptr,
                        0,
                        flush_bytes,
                        self.stream().cu_stream(),
                    )
                }
                .map_err(|e| backend_err(OP, format!("L2 flush: {e}")))?;
                let a = event()?;
                if self.launch_skinny(OP, kernel, s, q, false).is_err() {
                    break; // as for the untimed launch: this candidate is left out
                }
                pairs.push((a, event()?));
            }
            if pairs.len() < REPS {
                self.synchronize(OP)?;
                continue;
            }
            // per candidate, so a fault is reported with the kernel that caused it
            self.synchronize(OP)
                .map_err(|e| backend_err(OP, format!("{} failed: {e}", kernel.name())))?;
            let mut ms = pairs
                .iter()
                .map(|(a, b)| a.elapsed_ms(b).map(|t| t as f64))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| backend_err(OP, format!("timing event: {e}")))?;
            ms.sort_by(f64::total_cmp);
            out.push((kernel, ms[REPS / 2]));
        }
        Ok(out)
    }

    /// Launch a gemm_sm90.cu kernel: the parameter struct plus tensor maps of x [m, k] and
    /// w [n, k] (encoded here per call: a host-side computation of a few microseconds, no device
    /// work).
    fn launch_sm90(
        &self,
        op: &'static str,
        kernel: &'static str,
        cfg: LaunchConfig,
        p: jobx_gemm_params,
        int8: bool,
    ) -> Result<()> {
        let bn = if kernel.contains("n256") { 256 } else { 128 };
        let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
        // (built from zeroes: bindgen adds a padding field before the 64-byte aligned maps
        // whenever jobx_gemm_params is not a multiple of 64 bytes)
        // SAFETY: a C struct of pointers, integers and byte arrays: all-zero is a valid value
        let mut tp: jobx_gemm_tma_params = unsafe { std::mem::zeroed() };
        tp.x_map = tensor_map(op, p.x as *mut c_void, m, k, 128, int8)?;
        tp.w_map = tensor_map(op, p.w as *mut c_void, n, k, bn, int8)?;
        tp.g = p;
        // diagnostics (Gpu::set_gemm_trace): the non-persistent kernels, when the buffer holds a
        // record per block
        if !kernel.ends_with("_p") {
            let trace = self.gemm_trace.lock().unwrap_or_else(|e| e.into_inner());
            let blocks = cfg.grid_dim.0 as usize * cfg.grid_dim.1 as usize;
            if let Some(t) = trace.as_ref().filter(|t| t.len() >= 8 * blocks) {
                tp.g.trace = self.ptr(t) as *mut u64;
            }
        }
        self.launch(op, kernel, cfg, tp)
    }

    /// The wgmma kernel (gemm_sm90.cu) for this product, if the device has it and the operands
    /// allow it: k * element size a multiple of 16 bytes, x and w 16-byte aligned.
    /// `Gpu::sm90_tile` forces a column tile or the mma.sync kernels (tests and benchmarks).
    fn sm90_gemm(
        &self,
        s: &GemmShape,
        p: &jobx_gemm_params,
        int8: bool,
    ) -> Result<Option<(&'static str, LaunchConfig)>> {
        let forced = self.sm90_tile.load(std::sync::atomic::Ordering::Relaxed);
        if !self.sm90_applies(s, p.x, Some(p.w), int8) {
            return Ok(None);
        }
        let mt = s.m.div_ceil(128);
        // column tile 256 unless forced: faster than 128 at every measured shape (H100,
        // 2026-11-26: 4096^3 0.189 vs 0.239 ms, 8192x2816x1024 0.095 vs 0.103 ms,
        // 8192x1024x1024 0.035 vs 0.042 ms)
        let bn = if forced == 128 { 128 } else { 256 };
        let kernel: &'static str = match (int8, bn) {
            (false, 128) => "gemm_tma_bf16_n128",
            (false, _) => "gemm_tma_bf16_n256",
            (true, 128) => "gemm_tma_s8_n128",
            (true, _) => "gemm_tma_s8_n256",
        };
        let nt = s.n.div_ceil(bn);
        if mt > 65_535 || nt > i32::MAX as usize {
            return Err(backend_err(
                "gemm",
                format!("m {} n {} exceed the grid", s.m, s.n),
            ));
        }
        // the persistent kernels (opt-in): bf16 output written once, 16-byte aligned rows
        let persistent = bn == 256
            && self
                .gemm_persistent
                .load(std::sync::atomic::Ordering::Relaxed)
            && p.accumulate == 0
            && p.y_f32 == 0
            && p.lora_t.is_null()
            && bf16x8_fits(&[p.ldy as usize], &[p.y as usize]);
        if persistent {
            // (persistent_blocks: fewer blocks, each walking more tiles: tests)
            let cap = match self
                .persistent_blocks
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                0 => self.multiprocessors.max(1),
                b => b,
            };
            let blocks = (mt * nt).min(cap);
            return Ok(Some((
                if int8 {
                    "gemm_tma_s8_n256_p"
                } else {
                    "gemm_tma_bf16_n256_p"
                },
                LaunchConfig {
                    grid_dim: (blocks as u32, 1, 1),
                    block_dim: (384, 1, 1),
                    shared_mem_bytes: 0,
                },
            )));
        }
        Ok(Some((
            kernel,
            LaunchConfig {
                grid_dim: (nt as u32, mt as u32, 1),
                block_dim: (384, 1, 1), // a producer and two consumer warpgroups
                shared_mem_bytes: 0,
            },
        )))
    }

    /// Whether the wgmma kernels can take this product: the device has them, no test forces the
    /// mma.sync ones, and x (and w, when given: `None` for a buffer the caller allocates) start
    /// on 16 bytes and k rows are 16-byte multiples (int8 or bf16 elements). (k = 0: no tensor
    /// map of a zero dimension; the mma.sync kernels write the zeros.)
    fn sm90_applies(
        &self,
        s: &GemmShape,
        x: *const c_void,
        w: Option<*const c_void>,
        int8: bool,
    ) -> bool {
        let elem = if int8 { 1 } else { 2 };
        self.sm90_tile.load(std::sync::atomic::Ordering::Relaxed) != 1
            && s.k != 0
            && self.has_kernel("gemm_tma_bf16_n128")
            && (s.k * elem).is_multiple_of(16)
            && (x as usize).is_multiple_of(16)
            && w.is_none_or(|w| (w as usize).is_multiple_of(16))
    }

    /// `Gpu::gemm_dequant`: where an sm_90 device has the wgmma tiles for this product, widen
    /// the int8 weight to bf16 in scratch (exact) and run the bf16 tiles with `p.w_scale` in
    /// their epilogue; `Some(())` once launched. None (the caller takes the mma.sync tiles)
    /// without the kernels, where the operands do not suit the tiles, or where the scratch does
    /// not fit in device memory (the mma.sync tiles need none).
    fn gemm_int8_widened(
        &self,
        op: &'static str,
        wq: &CudaSlice<i8>,
        s: &GemmShape,
        p: jobx_gemm_params,
    ) -> Result<Option<()>> {
        // (what sm90_gemm would refuse, checked before allocating; the scratch's address is
        // checked there)
        if !self.has_kernel("dequant_int8_bf16") || !self.sm90_applies(s, p.x, None, false) {
            return Ok(None);
        }
        let len = s.n * s.k;
        let Ok(wide) = self.scratch::<bf16>(op, len) else {
            return Ok(None);
        };
        let mut pw = p;
        pw.w = self.ptr(&wide);
        pw.w_kind = JOBX_W_BF16 as i32;
        let Some((kernel, cfg)) = self.sm90_gemm(s, &pw, false)? else {
            return Ok(None);
        };
        let dp = jobx_dequant_params {
            w: self.ptr(wq),
            out: self.ptr(&wide),
            len: len as i64,
        };
        self.launch(op, "dequant_int8_bf16", grid_1d(len.div_ceil(8), 256), dp)?;
        // (the scratch is freed in stream order after the product has read it)
        self.launch_sm90(op, kernel, cfg, pw, false)?;
        self.widened_gemms
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(()))
    }

    fn dequant_on(&self) -> bool {
        self.gemm_dequant.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// W8A8: y (+)= (xq · wqᵀ) · x_scale[m] · w_scale[n] [+ LoRA], int8 tensor cores.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_w8a8(
        &self,
        xq: &CudaSlice<i8>,
        x_scale: &CudaSlice<f32>,
        wq: &CudaSlice<i8>,
        w_scale: &CudaSlice<f32>,
        mut y: Out,
        s: &GemmShape,
        lora: Option<&Lora>,
    ) -> Result<()> {
        const OP: &str = "gemm_w8a8";
        need(OP, "x", xq, size(&[s.m, s.k]))?;
        need(OP, "x_scale", x_scale, Some(s.m))?;
        need(OP, "w", wq, size(&[s.n, s.k]))?;
        need(OP, "w_scale", w_scale, Some(s.n))?;
        check::gemm_out::<Gpu>(OP, &y, s, lora)?;
        let mut p = self.gemm_params(s, &mut y, lora)?;
        p.x = self.ptr(xq);
        p.w = self.ptr(wq);
        p.w_scale = self.ptr(w_scale) as *const f32;
        p.x_scale = self.ptr(x_scale) as *const f32;
        p.w_kind = JOBX_W8A8 as i32;
        if s.m == 0 || s.n == 0 {
            return Ok(());
        }
        let general = self
            .general_kernels
            .load(std::sync::atomic::Ordering::Relaxed);
        if !general && s.m > 32 {
            if let Some((kernel, cfg)) = self.sm90_gemm(s, &p, true)? {
                return self.launch_sm90(OP, kernel, cfg, p, true);
            }
        }
        self.launch(OP, "gemm_w8a8", gemm_grid(s, OP)?, p)
    }

    /// Per-row int8 quantisation of x [m, k] for `gemm_w8a8`.
    pub fn quantize_rows(
        &self,
        x: &CudaSlice<bf16>,
        q: &mut CudaSlice<i8>,
        scale: &mut CudaSlice<f32>,
        m: usize,
        k: usize,
    ) -> Result<()> {
        const OP: &str = "quantize_rows";
        need(OP, "x", x, size(&[m, k]))?;
        need(OP, "q", q, size(&[m, k]))?;
        need(OP, "scale", scale, Some(m))?;
        if m == 0 {
            return Ok(());
        }
        let p = jobx_quantize_params {
            x: self.ptr(x),
            q: self.ptr(q),
            scale: self.ptr(scale) as *mut f32,
            m: m as i64,
            k: k as i64,
        };
        self.launch(OP, "quantize_rows_int8", rows_grid(m, 256, OP)?, p)
    }
}

/// A TMA descriptor of a row-major [rows, k] matrix (bf16, or int8 for W8A8) for gemm_tma_*:
/// boxes of 128 bytes of k by `box_rows` rows, 128-byte swizzle (the layout the kernels' wgmma
/// descriptors read), zeros outside the matrix. The wrapper checked 16-byte alignment of the
/// base and of k x element size.
fn tensor_map(
    op: &'static str,
    base: *mut c_void,
    rows: usize,
    k: usize,
    box_rows: u32,
    int8: bool,
) -> Result<[u64; 16]> {
    use cudarc::driver::sys;
    let elem = if int8 { 1 } else { 2 };
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    let dims: [u64; 2] = [k as u64, rows as u64];
    let strides: [u64; 1] = [(k * elem) as u64];
    let boxd: [u32; 2] = [(128 / elem) as u32, box_rows];
    let es: [u32; 2] = [1, 1];
    let dtype = if int8 {
        sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8
    } else {
        sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
    };
    // SAFETY: every pointer is to a local array of the rank the call states (2; 1 stride).
    let rc = unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            dtype,
            2,
            base,
            dims.as_ptr(),
            strides.as_ptr(),
            boxd.as_ptr(),
            es.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if rc != sys::CUresult::CUDA_SUCCESS {
        return Err(backend_err(
            op,
            format!("cuTensorMapEncodeTiled ({rows} x {k}, box {box_rows}): {rc:?}"),
        ));
    }
    Ok(map.opaque)
}

/// K and V device pointers (view offsets applied), their views, and for int8 K/V the scale
/// pointers (offsets applied in groups).
struct KvOperands {
    k: *mut std::ffi::c_void,
    v: *mut std::ffi::c_void,
    views: (View, View),
    scales: Option<(*const f32, *const f32)>,
}

/// Up to this many queries per (batch row, head) the decode kernel runs instead of the 64-query
/// tensor-core tiles.
const DECODE_MAX_TQ: usize = 4;
/// kernels/attention.cu FA_BIAS_R_MAX: the largest T5 max_distance the flash kernels tabulate.
const FA_BIAS_R_MAX: usize = 512;

impl Gpu {
    /// Both attention entry points after their checks: picks the kernel and launches.
    #[allow(clippy::too_many_arguments)]
    fn attention_launch(
        &self,
        c: &AttnCall,
        pos: Option<&CudaSlice<i32>>,
        q: (&CudaSlice<bf16>, View),
        kv: KvOperands,
        o: &mut CudaSlice<bf16>,
        key_mask: Option<&CudaSlice<i32>>,
        kv_batch: Option<&CudaSlice<i32>>,
        rel_bias: Option<&CudaSlice<f32>>,
    ) -> Result<()> {
        const OP: &str = "attention";
        let (kview, vview) = kv.views;
        let q8 = kv.scales.is_some();
        let (nb, md, bidir) = c.t5_bias.unwrap_or((0, 0, false));
        if c.batch * c.heads * c.tq == 0 {
            return Ok(());
        }
        let gx = c.tq.div_ceil(4);
        if gx > i32::MAX as usize || c.heads > 65_535 || c.batch > 65_535 {
            return Err(backend_err(OP, "grid too large"));
        }
        let p = jobx_attention_params {
            q: self.ptr_at(q.0, q.1.off),
            k: kv.k,
            v: kv.v,
            o: self.ptr(o),
            q_sb: q.1.sb as i64,
            q_sh: q.1.sh as i64,
            q_st: q.1.st as i64,
            k_sb: kview.sb as i64,
            k_sh: kview.sh as i64,
            k_st: kview.st as i64,
            v_sb: vview.sb as i64,
            v_sh: vview.sh as i64,
            v_st: vview.st as i64,
            batch: c.batch as i64,
            heads: c.heads as i64,
            kv_heads: c.kv_heads as i64,
            tq: c.tq as i64,
            tk: c.tk as i64,
            dk: c.dk as i64,
            q_offset: c.q_offset as i64,
            window: c.window as i64,
            scale: c.scale,
            causal: c.causal as i32,
            key_mask: key_mask.map_or(std::ptr::null(), |m| self.ptr(m) as *const i32),
            kv_batch: kv_batch.map_or(std::ptr::null(), |m| self.ptr(m) as *const i32),
            rel_bias: rel_bias.map_or(std::ptr::null(), |m| self.ptr(m) as *const f32),
            num_buckets: nb as i32,
            max_distance: md as i32,
            bidirectional: bidir as i32,
            partial: std::ptr::null_mut(),
            splits: 1,
            chunk: 0,
            k_scale: kv.scales.map_or(std::ptr::null(), |s| s.0),
            v_scale: kv.scales.map_or(std::ptr::null(), |s| s.1),
            q_offset_at: pos.map_or(std::ptr::null(), |p| self.ptr(p) as *const i32),
            trace: std::ptr::null_mut(),
        };
        // specialised kernels: head dim 64 or 128 and 16-byte aligned rows (every stride and
        // offset a multiple of 8 elements), unless the general one is forced (tests)
        let fast = [q.1, kview, vview]
            .iter()
            .all(|w| w.sb % 8 == 0 && w.sh % 8 == 0 && w.st % 8 == 0 && w.off % 8 == 0)
            && (c.dk == 64 || c.dk == 128)
            && !self
                .general_kernels
                .load(std::sync::atomic::Ordering::Relaxed);
        // (the int8 decode kernel loads 16 int8 elements at a time: 16-element aligned K/V rows)
        let aligned16 = [kview, vview]
            .iter()
            .all(|w| w.sb % 16 == 0 && w.sh % 16 == 0 && w.st % 16 == 0 && w.off % 16 == 0);
        // decode steps (a few queries per row): key chunks in parallel, then a merge
        if fast && (!q8 || aligned16) && c.tq <= DECODE_MAX_TQ && c.batch * c.tq <= 65_535 {
            return self.attention_decode(c, p, q8);
        }
        // otherwise a tensor-core flash kernel (64 or, fa2, 128 queries per block); its T5 bias table
        // (relative positions clamped to +-max_distance) must be exact and fit its shared memory
        let table_ok = rel_bias.is_none()
            || crate::models::t5::bucket_saturation(nb, md, bidir)
                .is_some_and(|d| d <= FA_BIAS_R_MAX);
        // (int8 K/V: the decode kernel or the general one)
        // fa2 and wg keep positions in 32-bit registers: below 2^30 (with the position read on
        // the device, bounded through the cache length)
        use std::sync::atomic::Ordering::Relaxed;
        let small = c.tk + c.tq + if pos.is_some() { c.tk } else { c.q_offset } < 1 << 30;
        let wg = small && self.flash_wg.load(Relaxed) && self.has_kernel("attention_wg_d64");
        let fa2 = small && self.flash_fa2.load(Relaxed);
        // (kernel, queries per block, threads per block); with both on, the faster of the two on
        // the H100 (2026-11-28): fa2 at head dim 64 (T5 encoder 0.244 vs 0.257 ms), wg at 128
        // (causal 0.557 vs 0.607)
        let wg = wg && !(fa2 && c.dk == 64);
        // the warp-specialised form (opt-in) in place of wg at both head dims
        let ws = small && self.flash_ws.load(Relaxed) && self.has_kernel("attention_ws_d64");
        let flash = (fast && table_ok && !q8).then_some(match (ws, wg, fa2, c.dk) {
            (true, _, _, 64) => ("attention_ws_d64", 128, 384),
            (true, _, _, _) => ("attention_ws_d128", 128, 384),
            (false, true, _, 64) => ("attention_wg_d64", 128, 256),
            (false, true, _, _) => ("attention_wg_d128", 128, 256),
            (false, false, false, 64) => ("attention_mma_d64", 64, 128),
            (false, false, false, _) => ("attention_mma_d128", 64, 128),
            (false, false, true, 64) => ("attention_fa2_d64", 128, 128),
            (false, false, true, _) => ("attention_fa2_d128", 128, 128),
        });
        let (mut kernel, gx, threads) = match flash {
            Some((kname, rows, threads)) => (kname, c.tq.div_ceil(rows), threads),
            None => ("attention_bf16", gx, 128),
        };
        // diagnostics (Gpu::set_attn_trace): the wg kernels' traced twins, when the buffer holds
        // a record per block (the lock only for the kernels that have a twin)
        let mut p = p;
        let traced = match kernel {
            "attention_wg_d64" => Some("attention_wg_d64_trace"),
            "attention_wg_d128" => Some("attention_wg_d128_trace"),
            "attention_ws_d64" => Some("attention_ws_d64_trace"),
            "attention_ws_d128" => Some("attention_ws_d128_trace"),
            _ => None,
        };
        if let Some(twin) = traced {
            let blocks = gx * c.heads * c.batch;
            let trace = self.attn_trace.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(t) = trace.as_ref().filter(|t| t.len() >= 8 * blocks) {
                kernel = twin;
                p.trace = self.ptr(t) as *mut u64;
            }
        }
        let cfg = LaunchConfig {
            grid_dim: (gx as u32, c.heads as u32, c.batch as u32),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0, // set by launch for the kernels that use it
        };
        self.launch(OP, kernel, cfg, p)
    }

    /// `attention` / `attention_at` (bf16 K/V): the checks, then the launch.
    #[allow(clippy::too_many_arguments)]
    fn attention_bf16_kv(
        &self,
        c: &AttnCall,
        pos: Option<&CudaSlice<i32>>,
        q: (&CudaSlice<bf16>, View),
        k: (&CudaSlice<bf16>, View),
        v: (&CudaSlice<bf16>, View),
        o: &mut CudaSlice<bf16>,
        key_mask: Option<&CudaSlice<i32>>,
        kv_batch: Option<&CudaSlice<i32>>,
        rel_bias: Option<&CudaSlice<f32>>,
    ) -> Result<()> {
        check::attention::<Self, bf16>(c, q, k, v, o, key_mask, kv_batch, rel_bias)?;
        let kv = KvOperands {
            k: self.ptr_at(k.0, k.1.off),
            v: self.ptr_at(v.0, v.1.off),
            views: (k.1, v.1),
            scales: None,
        };
        self.attention_launch(c, pos, q, kv, o, key_mask, kv_batch, rel_bias)
    }

    /// attention_decode_d64/d128 (+ attention_combine when the keys are split). Chunks hold at
    /// most 1024 keys (the kernel's score buffer). With >= 2 (query row, head) pairs per
    /// multiprocessor there are no more chunks than that needs: the grid is then at most about
    /// one wave of resident blocks (~6 per multiprocessor), each with 8 rows of keys per thread
    /// in flight, which is enough to stream K and V at full bandwidth, and a merge launch and a
    /// partly filled second wave cost more than they give (a T5-Large cross-attention step at
    /// batch 32: 512 pairs). Fewer pairs are split into chunks of >= 128 keys until the grid
    /// has at most ~4 blocks per multiprocessor. `decode_splits` overrides the count (benchmarks).
    fn attention_decode(&self, c: &AttnCall, mut p: jobx_attention_params, q8: bool) -> Result<()> {
        const OP: &str = "attention";
        let rows = c.batch * c.tq * c.heads;
        let least = c.tk.div_ceil(1024).max(1);
        let forced = self
            .decode_splits
            .load(std::sync::atomic::Ordering::Relaxed);
        let splits = if forced > 0 {
            forced.min(c.tk).max(least)
        } else if rows >= 2 * self.multiprocessors {
            least
        } else {
            // (rounded down: at batch 8 x 16 heads on an H100, 4 chunks took 0.0206 ms and the
            // rounded-up 5 took 0.0241; run 5, 2026-11-26)
            let want = ((4 * self.multiprocessors) / rows).max(1);
            least.max(want.min(c.tk.div_ceil(128)))
        };
        let chunk = c.tk.div_ceil(splits).max(1);
        let splits = c.tk.div_ceil(chunk).max(1);
        if splits > i32::MAX as usize || c.heads > 65_535 || c.batch * c.tq > 65_535 {
            return Err(backend_err(OP, "grid too large"));
        }
        p.splits = splits as i64;
        p.chunk = chunk as i64;
        let partial = if splits > 1 {
            let buf = self.scratch::<f32>(OP, rows * splits * (c.dk + 2))?;
            p.partial = self.ptr(&buf) as *mut f32;
            Some(buf)
        } else {
            None
        };
        // (the one-pass kernels, opt-in: the same grid, chunks and partial outputs)
        let online = self
            .decode_online
            .load(std::sync::atomic::Ordering::Relaxed);
        let kernel = match (c.dk == 64, q8, online) {
            (true, false, false) => "attention_decode_d64",
            (false, false, false) => "attention_decode_d128",
            (true, true, false) => "attention_decode_q8_d64",
            (false, true, false) => "attention_decode_q8_d128",
            (true, false, true) => "attention_decode_online_d64",
            (false, false, true) => "attention_decode_online_d128",
            (true, true, true) => "attention_decode_online_q8_d64",
            (false, true, true) => "attention_decode_online_q8_d128",
        };
        let cfg = LaunchConfig {
            grid_dim: (splits as u32, c.heads as u32, (c.batch * c.tq) as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch(OP, kernel, cfg, p)?;
        if online {
            self.online_decodes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if partial.is_some() {
            let cfg = LaunchConfig {
                grid_dim: (c.heads as u32, (c.batch * c.tq) as u32, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            self.launch(OP, "attention_combine", cfg, p)?;
        }
        // `partial` is freed in stream order, after the merge that reads it
        drop(partial);
        Ok(())
    }

    /// Grammar mask (optional bitmask rows) then top-k per row of f32 logits [rows, vocab].
    #[allow(clippy::too_many_arguments)]
    pub fn logits_topk(
        &self,
        logits: &mut CudaSlice<f32>,
        mask: Option<&CudaSlice<u32>>,
        ids: &mut CudaSlice<i32>,
        vals: &mut CudaSlice<f32>,
        rows: usize,
        vocab: usize,
        top_k: usize,
    ) -> Result<()> {
        const OP: &str = "logits_topk";
        if top_k == 0 || top_k > 64 || top_k > vocab {
            return Err(backend_err(
                OP,
                format!("top_k {top_k} (1..=64, <= vocab {vocab})"),
            ));
        }
        if vocab > i32::MAX as usize {
            return Err(backend_err(OP, "vocabulary too large for i32 ids"));
        }
        need(OP, "logits", logits, size(&[rows, vocab]))?;
        if let Some(m) = mask {
            need(OP, "mask", m, size(&[rows, vocab.div_ceil(32)]))?;
        }
        need(OP, "ids", ids, size(&[rows, top_k]))?;
        need(OP, "vals", vals, size(&[rows, top_k]))?;
        if rows == 0 {
            return Ok(());
        }
        let p = jobx_logits_params {
            logits: self.ptr(logits) as *mut f32,
            mask: mask.map_or(std::ptr::null(), |m| self.ptr(m) as *const u32),
            out_ids: self.ptr(ids) as *mut i32,
            out_vals: self.ptr(vals) as *mut f32,
            rows: rows as i64,
            vocab: vocab as i64,
            top_k: top_k as i32,
            suppress: std::ptr::null(),
            n_suppress: 0,
            out_lse: std::ptr::null_mut(),
        };
        self.launch(OP, "logits_topk", rows_grid(rows, 256, OP)?, p)
    }
}

impl Gpu {
    /// A gather's row map on the device (None when nothing is copied).
    fn parent_map(
        &self,
        op: &'static str,
        parents: &[usize],
        used: usize,
    ) -> Result<Option<CudaSlice<i32>>> {
        let map = parents
            .iter()
            .map(|&p| i32::try_from(p))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| backend_err(op, "parent row beyond i32"))?;
        (!parents.is_empty() && used > 0)
            .then(|| self.upload(op, &map))
            .transpose()
    }

    /// copy_rows_bf16 through a row map: block r of `dst` (blocks of `per`) starts with the
    /// first `used` elements of block map[r] of `src` (the callers checked the sizes).
    #[allow(clippy::too_many_arguments)]
    fn gather_launch(
        &self,
        op: &'static str,
        src: &CudaSlice<bf16>,
        dst: &mut CudaSlice<bf16>,
        map: Option<&CudaSlice<i32>>,
        rows: usize,
        per: usize,
        used: usize,
    ) -> Result<()> {
        let Some(map) = map else { return Ok(()) };
        let p = jobx_copy_rows_params {
            src: self.ptr(src),
            dst: self.ptr(dst),
            src_rows: self.ptr(map) as *const i32,
            rows: rows as i64,
            cols: used as i64,
            src_ld: per as i64,
            dst_ld: per as i64,
            ..COPY_PLAIN
        };
        self.launch(op, "copy_rows_bf16", copy_grid(rows, used, op)?, p)
    }

    /// copy_rows_bf16 after the callers' checks: rows of `src` into rows of `dst`, moved by
    /// the position `at` = (buffer, stride, largest position) reads on the device.
    fn copy_rows_launch(
        &self,
        op: &'static str,
        src: (&CudaSlice<bf16>, Rows),
        dst: (&mut CudaSlice<bf16>, Rows),
        rows: usize,
        cols: usize,
        at: Option<(&CudaSlice<i32>, usize, usize)>,
    ) -> Result<()> {
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let mut p = jobx_copy_rows_params {
            src: self.ptr_at(src.0, src.1.off),
            dst: self.ptr_at(dst.0, dst.1.off),
            rows: rows as i64,
            cols: cols as i64,
            src_ld: src.1.ld as i64,
            dst_ld: dst.1.ld as i64,
            ..COPY_PLAIN
        };
        if let Some((pos, stride, max)) = at {
            p.dst_pos = self.ptr(pos) as *const i32;
            p.pos_stride = stride as i64;
            p.pos_max = max as i64;
            p.err = self.ptr(&self.scratch_err) as *mut i32;
        }
        self.launch(op, "copy_rows_bf16", copy_grid(rows, cols, op)?, p)
    }

    /// dst[dst_off..dst_off + len] = src[src_off..src_off + len] on the stream (cache rows).
    pub fn copy<T: cudarc::driver::DeviceRepr>(
        &self,
        op: &'static str,
        src: &CudaSlice<T>,
        src_off: usize,
        dst: &mut CudaSlice<T>,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        need(op, "copy source", src, src_off.checked_add(len))?;
        need(op, "copy destination", dst, dst_off.checked_add(len))?;
        self.stream()
            .memcpy_dtod(
                &src.slice(src_off..src_off + len),
                &mut dst.slice_mut(dst_off..dst_off + len),
            )
            .map_err(|e| backend_err(op, format!("copy of {len} elements: {e}")))
    }
}

/// The device graphs' backend interface on the GPU: the checked kernel wrappers of the ops the
/// device graphs use (the buffer methods delegate to the inherent ones above, which also take
/// element types outside `device::Elem`).
impl crate::device::Backend for Gpu {
    type Buf<T: crate::device::Elem> = CudaSlice<T>;
    const KIND: &'static str = "cuda";

    fn len<T: crate::device::Elem>(buf: &CudaSlice<T>) -> usize {
        buf.len()
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn int8_weights(&self) -> bool {
        self.int8_weights.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn int8_cross_kv(&self) -> bool {
        self.int8_cross_kv
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn take_profile(&self) -> Result<Vec<String>> {
        self.take_kernel_profile()
    }

    fn scratch<T: crate::device::Elem>(&self, op: &'static str, n: usize) -> Result<CudaSlice<T>> {
        Gpu::scratch(self, op, n)
    }

    fn zeros<T: crate::device::Elem>(&self, op: &'static str, n: usize) -> Result<CudaSlice<T>> {
        Gpu::zeros(self, op, n)
    }

    fn upload<T: crate::device::Elem>(&self, op: &'static str, host: &[T]) -> Result<CudaSlice<T>> {
        Gpu::upload(self, op, host)
    }

    fn download<T: crate::device::Elem>(
        &self,
        op: &'static str,
        buf: &CudaSlice<T>,
    ) -> Result<Vec<T>> {
        Gpu::download(self, op, buf)
    }

    fn write<T: crate::device::Elem>(
        &self,
        op: &'static str,
        host: &[T],
        dst: &mut CudaSlice<T>,
    ) -> Result<()> {
        Gpu::write(self, op, host, dst)
    }

    type Graph = super::runtime::GpuGraph;

    fn graphs(&self) -> bool {
        self.graphs.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn capture(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<Self::Graph>> {
        self.capture_graph(f).map(Some)
    }

    fn launch_graph(&self, g: &Self::Graph) -> Result<()> {
        Gpu::launch_graph(self, g)
    }

    fn copy<T: crate::device::Elem>(
        &self,
        op: &'static str,
        src: &CudaSlice<T>,
        src_off: usize,
        dst: &mut CudaSlice<T>,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        Gpu::copy(self, op, src, src_off, dst, dst_off, len)
    }

    /// y = rms_norm(x) · w over rows of length d (T5LayerNorm / MistralRMSNorm).
    fn rms_norm(
        &self,
        x: &CudaSlice<bf16>,
        w: &CudaSlice<bf16>,
        y: &mut CudaSlice<bf16>,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        const OP: &str = "rms_norm";
        check::rms_norm::<Self>(x, w, y, rows, d)?;
        if rows == 0 {
            return Ok(());
        }
        let p = jobx_rms_norm_params {
            x: self.ptr(x),
            w: self.ptr(w),
            y: self.ptr(y),
            rows: rows as i64,
            d: d as i64,
            eps,
            inv: self.rms_probe_ptr(rows),
        };
        // the kernel's vector form (d a multiple of 8, aligned, d <= 8192) takes 8 elements a
        // thread: one thread per 8, in whole warps, up to 256; otherwise 256 threads
        let vec = bf16x8_fits(&[d], &[p.x as usize, p.w as usize, p.y as usize]);
        let threads = if vec { rms_threads(d) } else { 256 };
        self.launch(OP, "rms_norm_bf16", rows_grid(rows, threads as u32, OP)?, p)
    }

    fn activation_inplace(&self, x: &mut CudaSlice<bf16>, n: usize, kind: ActKind) -> Result<()> {
        const OP: &str = "activation";
        check::activation::<Self>(x, n)?;
        let x = self.ptr(x);
        self.launch_act(OP, (x, NULL, n), (x, n), (1, n), act_kind(kind))
    }

    /// The two halves of each row of gu [rows, 2*cols]: gate at 0, up at cols.
    fn gated_activation(
        &self,
        gu: &CudaSlice<bf16>,
        y: &mut CudaSlice<bf16>,
        rows: usize,
        cols: usize,
        kind: ActKind,
    ) -> Result<()> {
        const OP: &str = "gated_activation";
        check::gated_activation::<Self>(gu, y, rows, cols)?;
        self.launch_act(
            OP,
            (self.ptr(gu), self.ptr_at(gu, cols), 2 * cols),
            (self.ptr(y), cols),
            (rows, cols),
            act_kind(kind),
        )
    }

    /// Rotary embedding in place on the first heads*head_dim elements of rows `ld` apart.
    fn rope(
        &self,
        x: &mut CudaSlice<bf16>,
        pos: &CudaSlice<i32>,
        tokens: usize,
        heads: usize,
        head_dim: usize,
        ld: usize,
        theta: f32,
    ) -> Result<()> {
        const OP: &str = "rope";
        check::rope::<Self>(x, pos, tokens, heads, head_dim, ld)?;
        if tokens * heads == 0 {
            return Ok(());
        }
        let p = jobx_rope_params {
            x: self.ptr(x),
            pos: self.ptr(pos) as *const i32,
            tokens: tokens as i64,
            heads: heads as i64,
            head_dim: head_dim as i64,
            ld: ld as i64,
            theta,
        };
        self.launch(
            OP,
            "rope_bf16",
            grid_1d(tokens * heads * head_dim / 2, 256),
            p,
        )
    }

    /// A block per row and 4096 columns (embedding.cu: copy_rows_bf16).
    fn copy_rows(
        &self,
        op: &'static str,
        src: (&CudaSlice<bf16>, Rows),
        dst: (&mut CudaSlice<bf16>, Rows),
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        check::copy_rows::<Self>(op, src, (&*dst.0, dst.1), rows, cols)?;
        self.copy_rows_launch(op, src, dst, rows, cols, None)
    }

    /// One launch; the position is read by the kernel (bounds-checked there against pos_max:
    /// outside it nothing is copied and the device error flag is set).
    #[allow(clippy::too_many_arguments)]
    fn copy_rows_at(
        &self,
        op: &'static str,
        src: (&CudaSlice<bf16>, Rows),
        dst: (&mut CudaSlice<bf16>, Rows),
        rows: usize,
        cols: usize,
        pos: &CudaSlice<i32>,
        pos_stride: usize,
        pos_max: usize,
    ) -> Result<()> {
        check::copy_rows_at::<Self>(
            op,
            src,
            (&*dst.0, dst.1),
            rows,
            cols,
            pos,
            pos_stride,
            pos_max,
        )?;
        self.copy_rows_launch(op, src, dst, rows, cols, Some((pos, pos_stride, pos_max)))
    }

    /// One launch per buffer (copy_rows_bf16 with a row map), the map uploaded once for all
    /// (the default was a copy per row and buffer: 24 x rows launches a step for T5-Large).
    fn gather_blocks(
        &self,
        op: &'static str,
        bufs: &mut [CudaSlice<bf16>],
        per: usize,
        used: usize,
        parents: &[usize],
    ) -> Result<()> {
        check::gather_blocks::<Self>(op, bufs, per, used, parents)?;
        let map = self.parent_map(op, parents, used)?;
        for buf in bufs.iter_mut() {
            let mut out = self.scratch::<bf16>(op, parents.len() * per)?;
            self.gather_launch(op, buf, &mut out, map.as_ref(), parents.len(), per, used)?;
            *buf = out;
        }
        Ok(())
    }

    /// One launch per buffer, like `gather_blocks`, into the existing `dst` buffers.
    fn gather_blocks_into(
        &self,
        op: &'static str,
        src: &[CudaSlice<bf16>],
        dst: &mut [CudaSlice<bf16>],
        per: usize,
        used: usize,
        parents: &[usize],
    ) -> Result<()> {
        check::gather_blocks_into::<Self>(op, src, dst, per, used, parents)?;
        let map = self.parent_map(op, parents, used)?;
        for (s, d) in src.iter().zip(dst.iter_mut()) {
            self.gather_launch(op, s, d, map.as_ref(), parents.len(), per, used)?;
        }
        Ok(())
    }

    /// y[t] = table[ids[t]] for token ids from the host: checked against the vocabulary here, so
    /// the launch needs no read-back of the kernel's error flag (no synchronisation per decode
    /// step). The kernel still bounds-checks every id.
    fn embedding_ids(
        &self,
        ids: &[u32],
        table: &CudaSlice<bf16>,
        y: &mut CudaSlice<bf16>,
        d: usize,
        vocab: usize,
    ) -> Result<()> {
        const OP: &str = "embedding";
        let n = ids.len();
        check::embedding_ids::<Self>(ids, table, y, d, vocab)?;
        if n == 0 {
            return Ok(());
        }
        // (freed in stream order after the launch that reads it)
        let ids_d = self.upload(OP, &ids.iter().map(|&i| i as i32).collect::<Vec<_>>())?;
        self.embedding(&ids_d, n, table, y, d, vocab)
    }

    /// The ids are already on the device (checked by the caller when written); the kernel
    /// still bounds-checks each (a zero row and the device error flag for a bad one).
    fn embedding(
        &self,
        ids: &CudaSlice<i32>,
        n: usize,
        table: &CudaSlice<bf16>,
        y: &mut CudaSlice<bf16>,
        d: usize,
        vocab: usize,
    ) -> Result<()> {
        const OP: &str = "embedding";
        check::embedding::<Self>(ids, n, table, y, d, vocab)?;
        if n == 0 {
            return Ok(());
        }
        let p = jobx_embedding_params {
            ids: self.ptr(ids) as *const i32,
            table: self.ptr(table),
            y: self.ptr(y),
            err: self.ptr(&self.scratch_err) as *mut i32,
            n: n as i64,
            d: d as i64,
            vocab: vocab as i64,
        };
        self.launch(OP, "embedding_bf16", rows_grid(n, 128, OP)?, p)
    }

    /// y (+)= x · wᵀ [+ LoRA] with bf16 x [m, k] and a bf16 or weight-only int8 w [n, k].
    fn gemm(
        &self,
        x: &CudaSlice<bf16>,
        w: Weight,
        mut y: Out,
        s: &GemmShape,
        lora: Option<&Lora>,
    ) -> Result<()> {
        const OP: &str = "gemm";
        check::gemm::<Self>(x, &w, &y, s, lora)?;
        let mut p = self.gemm_params(s, &mut y, lora)?;
        p.x = self.ptr(x);
        self.set_weight(&mut p, &w);
        if s.m == 0 || s.n == 0 {
            return Ok(());
        }
        let general = self
            .general_kernels
            .load(std::sync::atomic::Ordering::Relaxed);
        // decode-sized products (m <= 32): the weight-streaming kernels or the tiles, chosen per
        // shape (tune.rs); larger ones the tensor-core tiles
        if s.m <= 32 && !general {
            let kernel = self.skinny_choice(s, &p);
            return self.launch_skinny(OP, kernel, s, p, true);
        }
        if matches!(w, Weight::Bf16(_)) && !general && s.m > 32 {
            if let Some((kernel, cfg)) = self.sm90_gemm(s, &p, false)? {
                return self.launch_sm90(OP, kernel, cfg, p, false);
            }
        }
        if let Weight::Int8 { w: wq, .. } = &w {
            if !general && s.m >= super::runtime::DEQUANT_MIN_M && self.dequant_on() {
                if let Some(done) = self.gemm_int8_widened(OP, wq, s, p)? {
                    return Ok(done);
                }
            }
        }
        self.launch(OP, "gemm_bf16", gemm_grid(s, OP)?, p)
    }

    /// The norm fused into the decode GEMM where `Gpu::gemm_rms` is on and `rms_fusable`
    /// allows it; otherwise the norm into `hn` and the GEMM, as every backend does.
    #[allow(clippy::too_many_arguments)]
    fn gemm_rms(
        &self,
        x: &CudaSlice<bf16>,
        (nw, eps): (&CudaSlice<bf16>, f32),
        hn: &mut CudaSlice<bf16>,
        w: Weight,
        mut y: Out,
        s: &GemmShape,
        lora: Option<&Lora>,
    ) -> Result<()> {
        const OP: &str = "gemm_rms";
        // (off, the default: the two calls as they are, without this path's checks first)
        if !self.gemm_rms.load(std::sync::atomic::Ordering::Relaxed) {
            self.rms_norm(x, nw, hn, s.m, s.k, eps)?;
            return self.gemm(hn, w, y, s, lora);
        }
        // the same checks (and errors) as the two calls it replaces
        check::rms_norm::<Self>(x, nw, hn, s.m, s.k)?;
        check::gemm::<Self>(x, &w, &y, s, lora)?;
        let mut p = self.gemm_params(s, &mut y, lora)?;
        p.x = self.ptr(x);
        self.set_weight(&mut p, &w);
        // (hn's address too: where it is not 16-byte aligned the separate norm takes its
        // element-wise form, whose sums the fused kernels do not repeat)
        let fused = self
            .rms_fusable(s, &p, [self.ptr(nw), self.ptr(hn)], lora.is_some())
            .and_then(|kernel| self.rms_kernel(kernel, s, &p));
        let Some((kernel, cfg, p)) = fused else {
            self.rms_norm(x, nw, hn, s.m, s.k, eps)?;
            return self.gemm(hn, w, y, s, lora);
        };
        let rp = jobx_gemm_rms_params {
            g: p,
            norm_w: self.ptr(nw),
            eps,
            threads: rms_threads(s.k) as i32,
            inv: self.rms_probe_ptr(s.m),
        };
        self.rms_fused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.launch(OP, kernel, cfg, rp)
    }

    /// t[m, r] = x[m] · A[ids[m]]ᵀ for LoRA rows (a: [adapters, r, k]).
    #[allow(clippy::too_many_arguments)]
    fn lora_shrink(
        &self,
        x: &CudaSlice<bf16>,
        a: &CudaSlice<bf16>,
        ids: &CudaSlice<i32>,
        t: &mut CudaSlice<f32>,
        m: usize,
        k: usize,
        r: usize,
        adapters: usize,
    ) -> Result<()> {
        const OP: &str = "lora_shrink";
        check::lora_shrink::<Self>(x, a, ids, t, m, k, r, adapters)?;
        if m * r == 0 {
            return Ok(());
        }
        let p = jobx_lora_shrink_params {
            x: self.ptr(x),
            a: self.ptr(a),
            ids: self.ptr(ids) as *const i32,
            t: self.ptr(t) as *mut f32,
            m: m as i64,
            k: k as i64,
            r: r as i64,
        };
        // one warp per (row, rank)
        self.launch(OP, "lora_shrink_bf16", grid_1d(m * r * 32, 256), p)
    }

    /// o[b, i, h*dk + d] = softmax(scale q·k + bias, masked) · v.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        c: &AttnCall,
        q: (&CudaSlice<bf16>, View),
        k: (&CudaSlice<bf16>, View),
        v: (&CudaSlice<bf16>, View),
        o: &mut CudaSlice<bf16>,
        key_mask: Option<&CudaSlice<i32>>,
        kv_batch: Option<&CudaSlice<i32>>,
        rel_bias: Option<&CudaSlice<f32>>,
    ) -> Result<()> {
        self.attention_bf16_kv(c, None, q, k, v, o, key_mask, kv_batch, rel_bias)
    }

    fn attention_at(
        &self,
        c: &AttnCall,
        pos: &CudaSlice<i32>,
        q: (&CudaSlice<bf16>, View),
        k: (&CudaSlice<bf16>, View),
        v: (&CudaSlice<bf16>, View),
        o: &mut CudaSlice<bf16>,
        key_mask: Option<&CudaSlice<i32>>,
        kv_batch: Option<&CudaSlice<i32>>,
        rel_bias: Option<&CudaSlice<f32>>,
    ) -> Result<()> {
        need("attention", "position", pos, Some(1))?;
        self.attention_bf16_kv(c, Some(pos), q, k, v, o, key_mask, kv_batch, rel_bias)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_q8(
        &self,
        c: &AttnCall,
        q: (&CudaSlice<bf16>, View),
        kv: &CudaSlice<i8>,
        k: View,
        v: View,
        scales: &CudaSlice<f32>,
        o: &mut CudaSlice<bf16>,
        key_mask: Option<&CudaSlice<i32>>,
        kv_batch: Option<&CudaSlice<i32>>,
    ) -> Result<()> {
        check::attention_q8::<Self>(c, q, kv, k, v, scales, o, key_mask, kv_batch)?;
        // the views' offsets move the int8 pointers by elements and the scales by groups
        let ops = KvOperands {
            k: self.ptr_at(kv, k.off),
            v: self.ptr_at(kv, v.off),
            views: (k, v),
            scales: Some((
                self.ptr_at(scales, k.off / c.dk) as *const f32,
                self.ptr_at(scales, v.off / c.dk) as *const f32,
            )),
        };
        self.attention_launch(c, None, q, ops, o, key_mask, kv_batch, None)
    }

    fn quantize_kv(
        &self,
        x: &CudaSlice<bf16>,
        groups: usize,
        k: usize,
        q: &mut CudaSlice<i8>,
        scales: &mut CudaSlice<f32>,
    ) -> Result<()> {
        const OP: &str = "quantize_kv";
        check::quantize_kv::<Self>(x, groups, k, q, scales)?;
        if groups == 0 {
            return Ok(());
        }
        let p = jobx_quantize_params {
            x: self.ptr(x),
            q: self.ptr(q),
            scale: self.ptr(scales) as *mut f32,
            m: groups as i64,
            k: k as i64,
        };
        // a warp per group, 8 per block, every group its own warp (an exact grid: the kernel
        // does not loop)
        self.launch(
            OP,
            "quantize_kv_int8",
            rows_grid(groups.div_ceil(8), 256, OP)?,
            p,
        )
    }

    /// Greedy choice on the device: the `suppress` ids set to -inf, then per row the argmax
    /// (ties to the lower id) and its log-probability, read back as (id, log p) per row: a few
    /// bytes per row instead of the whole f32 logits row.
    fn greedy_pick(
        &self,
        logits: &mut CudaSlice<f32>,
        rows: usize,
        vocab: usize,
        suppress: &[u32],
        masks: Option<&[u32]>,
    ) -> Result<Vec<(u32, f32)>> {
        const OP: &str = "greedy_pick";
        check::greedy_pick::<Self>(logits, rows, vocab, masks)?;
        if rows == 0 {
            return Ok(vec![]);
        }
        let (dmask, dsup) = self.pick_inputs(OP, rows, vocab, suppress, masks)?;
        let ids = self.scratch::<i32>(OP, rows)?;
        // values in [0, rows), log-sum-exps in [rows, 2 rows): one read-back
        let vals = self.scratch::<f32>(OP, 2 * rows)?;
        let p = jobx_logits_params {
            logits: self.ptr(logits) as *mut f32,
            mask: dmask
                .as_ref()
                .map_or(std::ptr::null(), |d| self.ptr(d) as *const u32),
            out_ids: self.ptr(&ids) as *mut i32,
            out_vals: self.ptr(&vals) as *mut f32,
            rows: rows as i64,
            vocab: vocab as i64,
            top_k: 1,
            suppress: dsup
                .as_ref()
                .map_or(std::ptr::null(), |d| self.ptr(d) as *const i32),
            n_suppress: suppress.len() as i32,
            out_lse: self.ptr_at(&vals, rows) as *mut f32,
        };
        self.launch(OP, "logits_topk", rows_grid(rows, 256, OP)?, p)?;
        let ids = self.download(OP, &ids)?;
        let vals = self.download(OP, &vals)?;
        Ok((0..rows)
            .map(|r| (ids[r].max(0) as u32, vals[r] - vals[rows + r]))
            .collect())
    }

    /// Two logits_topk launches: the first (k = 1, nothing masked, logits unchanged) for each
    /// row's log-sum-exp, the second for the top k after the masks; one read-back each of ids
    /// and values.
    fn topk_logprobs(
        &self,
        logits: &mut CudaSlice<f32>,
        rows: usize,
        vocab: usize,
        k: usize,
        suppress: &[u32],
        masks: Option<&[u32]>,
    ) -> Result<Vec<(u32, f32)>> {
        const OP: &str = "topk_logprobs";
        check::topk_logprobs::<Self>(logits, rows, vocab, k, masks)?;
        if rows == 0 {
            return Ok(vec![]);
        }
        let (dmask, dsup) = self.pick_inputs(OP, rows, vocab, suppress, masks)?;
        // ids: [rows * k] top k, then [rows] the first pass's argmax (unused); values: [rows * k]
        // top k, [rows] the first pass's max (unused), [rows] log-sum-exps
        let ids = self.scratch::<i32>(OP, rows * (k + 1))?;
        let vals = self.scratch::<f32>(OP, rows * (k + 2))?;
        let grid = rows_grid(rows, 256, OP)?;
        let mut p = jobx_logits_params {
            logits: self.ptr(logits) as *mut f32,
            mask: std::ptr::null(),
            out_ids: self.ptr_at(&ids, rows * k) as *mut i32,
            out_vals: self.ptr_at(&vals, rows * k) as *mut f32,
            rows: rows as i64,
            vocab: vocab as i64,
            top_k: 1,
            suppress: std::ptr::null(),
            n_suppress: 0,
            out_lse: self.ptr_at(&vals, rows * (k + 1)) as *mut f32,
        };
        self.launch(OP, "logits_topk", grid, p)?;
        p.mask = dmask
            .as_ref()
            .map_or(std::ptr::null(), |d| self.ptr(d) as *const u32);
        p.suppress = dsup
            .as_ref()
            .map_or(std::ptr::null(), |d| self.ptr(d) as *const i32);
        p.n_suppress = suppress.len() as i32;
        p.out_ids = self.ptr(&ids) as *mut i32;
        p.out_vals = self.ptr(&vals) as *mut f32;
        p.top_k = k as i32;
        p.out_lse = std::ptr::null_mut();
        self.launch(OP, "logits_topk", grid, p)?;
        let ids = self.download(OP, &ids)?;
        let vals = self.download(OP, &vals)?;
        let lse = &vals[rows * (k + 1)..];
        Ok((0..rows * k)
            .map(|i| (ids[i].max(0) as u32, vals[i] - lse[i / k]))
            .collect())
    }
}
