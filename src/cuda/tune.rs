//! Which kernel runs a GEMM of m <= 32 rows (decode steps, a few beams or sequences): the
//! weight-streaming `gemm_skinny8/32`, the tensor-core `gemm_skinny_tc`, or the 64x64 tensor-core
//! tiles of `gemm_bf16`. Their speed depends on the shape and the card in ways a fixed rule got
//! wrong before (measured on an H100: 32 x 32128 x 1024 0.050 ms on the tiles vs 0.305 ms skinny;
//! with n = 1024 the skinny kernel won), and `gemm_skinny_tc` was written without a GPU to time it
//! on. So by default the engine times the candidates once per shape on the card it runs on and
//! keeps the fastest, the way cuBLASLt heuristics plus TensorRT's timing cache or Triton's
//! autotuner do; every candidate computes the same product (the op table checks each one against
//! the CPU reference), only the order of the f32 sums differs.
//!
//! This file is the policy, with no device code, so it is unit-tested without a GPU: the key a
//! shape is tuned under, the fixed rule used when tuning is off, the choice from timings (the
//! fixed rule's kernel keeps the shape unless another is clearly faster, so run-to-run timing
//! noise does not flip a choice between near-equal kernels), and the table, which
//! `JOBX_GEMM_TUNE_FILE` persists so that later runs on the same card and build make exactly the
//! same choices (bit-identical outputs across runs) without timing anything. The timing itself is
//! `Gpu::tune_gemm` (ops.rs).
//!
//! `JOBX_GEMM_TUNE`: unset, `1` or `on` = tune (default); `0` or `off` = the fixed rule;
//! `skinny`, `skinny_tc`, `tiles` or `skinny_tc_split` = always that kernel (tests and
//! benchmarks).

use crate::{Error, Result};
use std::collections::BTreeMap;

/// The kernels a GEMM of at most 32 rows can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SkinnyKernel {
    /// `gemm_skinny8` (m <= 8) or `gemm_skinny32`: one warp per output column, CUDA-core FMAs.
    Skinny,
    /// `gemm_skinny_tc`: 16 columns a block on tensor cores, warps splitting k.
    SkinnyTc,
    /// `gemm_bf16`: 64x64 tensor-core tiles (most rows padding, but wide n fills the SMs).
    Tiles,
    /// `gemm_skinny_tc` with each column tile's k shared by several blocks (gridDim.y), where
    /// its column tiles alone would leave SMs idle (n = 1024 on an H100); the same kernel
    /// unsplit elsewhere. A tuning candidate only with `JOBX_GEMM_SPLITK=1` until a GPU run has
    /// checked and timed it (`candidates`).
    SkinnyTcSplit,
}

impl SkinnyKernel {
    /// Every kernel a name can select (`JOBX_GEMM_TUNE`, tuning tables).
    pub const ALL: [SkinnyKernel; 4] = [
        Self::Skinny,
        Self::SkinnyTc,
        Self::Tiles,
        Self::SkinnyTcSplit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Skinny => "skinny",
            Self::SkinnyTc => "skinny_tc",
            Self::Tiles => "tiles",
            Self::SkinnyTcSplit => "skinny_tc_split",
        }
    }

    /// The kernels tuning times for a shape: the three established ones, plus the split one
    /// where it is enabled (`JOBX_GEMM_SPLITK=1`) and the shape would split at all (elsewhere
    /// it is `SkinnyTc` under another name).
    pub fn candidates(split: bool) -> &'static [SkinnyKernel] {
        if split {
            &Self::ALL
        } else {
            &Self::ALL[..3]
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// How `Gpu::gemm` picks the kernel for m <= 32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmMode {
    /// Time the candidates once per `GemmKey`, keep the fastest (the default).
    Tune,
    /// `fixed_rule`, no timing.
    Fixed,
    /// Always this kernel.
    Force(SkinnyKernel),
}

impl GemmMode {
    /// From `JOBX_GEMM_TUNE`'s value (None: unset).
    pub fn parse(v: Option<&str>) -> Result<GemmMode> {
        match v.map(str::trim) {
            None | Some("") | Some("1") | Some("on") => Ok(GemmMode::Tune),
            Some("0") | Some("off") => Ok(GemmMode::Fixed),
            Some(s) => SkinnyKernel::from_name(s)
                .map(GemmMode::Force)
                .ok_or_else(|| {
                    Error::Input(format!(
                        "JOBX_GEMM_TUNE={s}: expected on, off, skinny, skinny_tc, tiles or skinny_tc_split"
                    ))
                }),
        }
    }
}

/// The shape class a choice is made for: rows rounded up to 8, 16 or 32 (a decode batch whose
/// finished rows drop out keeps its choice instead of timing every row count), the exact n and
/// k, and the weight format. None for m = 0 or m > 32 (those never run on these kernels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GemmKey {
    pub rows: u8,
    pub n: usize,
    pub k: usize,
    pub int8: bool,
}

impl GemmKey {
    pub fn new(m: usize, n: usize, k: usize, int8: bool) -> Option<GemmKey> {
        let rows = match m {
            1..=8 => 8,
            9..=16 => 16,
            17..=32 => 32,
            _ => return None,
        };
        Some(GemmKey { rows, n, k, int8 })
    }

    /// "m<=32 n=3072 k=1024 bf16" (rows as the class's upper bound).
    pub fn label(&self) -> String {
        format!(
            "m<={} n={} k={} {}",
            self.rows,
            self.n,
            self.k,
            if self.int8 { "int8" } else { "bf16" }
        )
    }
}

/// The rule used before tuning existed (and with `JOBX_GEMM_TUNE=off`), from H100 measurements
/// of 2026-11-26: the skinny kernels for up to 8 rows, and for 9..32 rows below n = 2048; the
/// tiles for 9..32 rows over wide outputs (the LM head, the FFN's first projection).
pub fn fixed_rule(key: &GemmKey) -> SkinnyKernel {
    if key.rows <= 8 || key.n < 2048 {
        SkinnyKernel::Skinny
    } else {
        SkinnyKernel::Tiles
    }
}

/// Another kernel replaces the fixed rule's only when its time is below this fraction of the
/// rule's: between kernels within ~10% of each other, timing noise would otherwise decide, and a
/// run without a table file could then differ from the next in the last bits of its outputs.
pub const MARGIN: f64 = 0.9;

/// The kernel to use given each candidate's time in ms (failed or missing candidates absent):
/// the first, in a fixed order of preference (the fixed rule's kernel, then `ALL`'s order, the
/// split kernel last), whose time is within the margin of the fastest; with no times at all,
/// the rule. So the rule's kernel stays unless another is faster by the margin, and between two
/// others within ~10% of each other the order decides, not timing noise: on the H100
/// (2026-11-28) skinny_tc and its split form timed within 2% at some shapes and two processes
/// tuned differently, so their outputs differed in the last bits (beam search picked other
/// beams).
pub fn choose(key: &GemmKey, times: &[(SkinnyKernel, f64)]) -> SkinnyKernel {
    let rule = fixed_rule(key);
    let valid = || times.iter().filter(|(_, t)| t.is_finite() && *t > 0.0);
    let Some(best_ms) = valid().map(|&(_, t)| t).min_by(|a, b| a.total_cmp(b)) else {
        return rule;
    };
    let order = std::iter::once(rule).chain(SkinnyKernel::ALL.into_iter().filter(|&k| k != rule));
    let time = |k: SkinnyKernel| valid().find(|(c, _)| *c == k).map(|&(_, t)| t);
    order
        .filter_map(|k| Some((k, time(k)?)))
        .find(|&(_, t)| MARGIN * t <= best_ms)
        .map_or(rule, |(k, _)| k)
}

/// One tuned shape: the kernel chosen, the times it was chosen from (ms; empty when it came
/// from a fallback after a failed timing), and the candidates it was chosen among (a candidate
/// that could not launch has no time but was considered).
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub kernel: SkinnyKernel,
    pub times: Vec<(SkinnyKernel, f64)>,
    pub considered: Vec<SkinnyKernel>,
}

/// The choices made so far, for one device and one build of the kernels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TuneTable {
    pub device: String,
    pub build: String,
    pub entries: BTreeMap<GemmKey, Choice>,
}

impl TuneTable {
    pub fn new(device: &str, build: &str) -> TuneTable {
        TuneTable {
            device: device.to_string(),
            build: build.to_string(),
            entries: BTreeMap::new(),
        }
    }

    pub fn get(&self, key: &GemmKey) -> Option<SkinnyKernel> {
        self.entries.get(key).map(|c| c.kernel)
    }

    /// The kept choice for `key` if it was made among (at least) `candidates`: its kernel one of
    /// them, and every candidate considered. A choice made before a candidate was enabled (a
    /// table saved without `JOBX_GEMM_SPLITK`, read with it) or naming one no longer enabled
    /// (the other way round) is timed afresh instead.
    pub fn get_among(&self, key: &GemmKey, candidates: &[SkinnyKernel]) -> Option<SkinnyKernel> {
        let c = self.entries.get(key)?;
        let considered_all = candidates.iter().all(|k| c.considered.contains(k));
        (candidates.contains(&c.kernel) && considered_all).then_some(c.kernel)
    }

    pub fn to_json(&self) -> serde_json::Value {
        // a choice without times is a fallback after a failed timing (out of memory, say): kept
        // for this process, not pinned for later runs
        let entries: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, c)| !c.times.is_empty())
            .map(|(k, c)| {
                let times: serde_json::Map<_, _> = c
                    .times
                    .iter()
                    .map(|(k, t)| (k.name().to_string(), serde_json::json!(t)))
                    .collect();
                let considered: Vec<&str> = c.considered.iter().map(|k| k.name()).collect();
                serde_json::json!({
                    "rows": k.rows, "n": k.n, "k": k.k, "int8": k.int8,
                    "kernel": c.kernel.name(), "ms": times, "considered": considered,
                })
            })
            .collect();
        serde_json::json!({
            "format": "jobx-gemm-tune-1",
            "device": self.device,
            "build": self.build,
            "entries": entries,
        })
    }

    /// Parses a table written by `to_json`. Errors name what is wrong; a table for another
    /// device or build is not an error here (the caller compares and starts afresh).
    pub fn from_json(v: &serde_json::Value) -> std::result::Result<TuneTable, String> {
        let bad = |what: &str| format!("GEMM tuning table: {what}");
        if v.get("format").and_then(|f| f.as_str()) != Some("jobx-gemm-tune-1") {
            return Err(bad("not a jobx-gemm-tune-1 file"));
        }
        let text = |f: &str| {
            v.get(f)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .ok_or_else(|| bad(&format!("no \"{f}\" string")))
        };
        let mut t = TuneTable::new(&text("device")?, &text("build")?);
        let entries = v
            .get("entries")
            .and_then(|e| e.as_array())
            .ok_or_else(|| bad("no \"entries\" array"))?;
        for (i, e) in entries.iter().enumerate() {
            let num = |f: &str| {
                e.get(f)
                    .and_then(|x| x.as_u64())
                    .map(|x| x as usize)
                    .ok_or_else(|| bad(&format!("entry {i}: no integer \"{f}\"")))
            };
            let rows = num("rows")?;
            let (n, k) = (num("n")?, num("k")?);
            let int8 = e
                .get("int8")
                .and_then(|x| x.as_bool())
                .ok_or_else(|| bad(&format!("entry {i}: no boolean \"int8\"")))?;
            let key = GemmKey::new(rows, n, k, int8)
                .filter(|key| key.rows as usize == rows)
                .ok_or_else(|| bad(&format!("entry {i}: rows {rows} is not 8, 16 or 32")))?;
            let kernel = e
                .get("kernel")
                .and_then(|x| x.as_str())
                .and_then(SkinnyKernel::from_name)
                .ok_or_else(|| bad(&format!("entry {i}: unknown \"kernel\"")))?;
            let mut times = Vec::new();
            if let Some(ms) = e.get("ms").and_then(|x| x.as_object()) {
                for (name, t) in ms {
                    if let (Some(k), Some(t)) = (SkinnyKernel::from_name(name), t.as_f64()) {
                        times.push((k, t));
                    }
                }
            }
            // (tables written before "considered" existed: the timed kernels)
            let considered = match e.get("considered").and_then(|x| x.as_array()) {
                Some(names) => names
                    .iter()
                    .map(|n| n.as_str().and_then(SkinnyKernel::from_name))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad(&format!("entry {i}: unknown kernel in \"considered\"")))?,
                None => times.iter().map(|(k, _)| *k).collect(),
            };
            t.entries.insert(
                key,
                Choice {
                    kernel,
                    times,
                    considered,
                },
            );
        }
        Ok(t)
    }

    /// The table in `path` if it exists and was made for this device and build; a fresh one
    /// otherwise, with the reason as a note for stderr (a missing file gives no note).
    pub fn load(path: &std::path::Path, device: &str, build: &str) -> (TuneTable, Option<String>) {
        let fresh = TuneTable::new(device, build);
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (fresh, None),
            Err(e) => return (fresh, Some(format!("cannot read {}: {e}", path.display()))),
        };
        let parsed = serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| format!("GEMM tuning table: {e}"))
            .and_then(|v| TuneTable::from_json(&v));
        match parsed {
            Ok(t) if t.device == device && t.build == build => (t, None),
            Ok(t) => (
                fresh,
                Some(format!(
                    "{} was tuned on {} (build {}), not on {device} (build {build}): tuning afresh",
                    path.display(),
                    t.device,
                    t.build
                )),
            ),
            Err(e) => (
                fresh,
                Some(format!("{}: {e}; tuning afresh", path.display())),
            ),
        }
    }

    /// Writes the table to `path` through a temporary file and a rename, so a reader never sees
    /// half a file.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        // serialising a Value cannot fail
        let text = serde_json::to_string_pretty(&self.to_json()).unwrap_or_default();
        std::fs::write(&tmp, text + "\n")
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Error::io(path, e)
            })
    }
}

/// A short identity of the compiled GEMM kernels (FNV-1a of their PTX), so a table made by
/// another build, whose kernels may be faster or slower, is not reused.
pub fn build_id(ptx: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ptx.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{}-{h:016x}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use SkinnyKernel::*;

    fn key(m: usize, n: usize) -> GemmKey {
        GemmKey::new(m, n, 1024, false).unwrap()
    }

    #[test]
    fn keys_round_rows_up_and_refuse_what_the_kernels_do_not_take() {
        assert_eq!(key(1, 8).rows, 8);
        assert_eq!(key(8, 8).rows, 8);
        assert_eq!(key(9, 8).rows, 16);
        assert_eq!(key(17, 8).rows, 32);
        assert_eq!(key(32, 8).rows, 32);
        assert_eq!(GemmKey::new(0, 8, 8, false), None);
        assert_eq!(GemmKey::new(33, 8, 8, false), None);
        assert_ne!(
            GemmKey::new(4, 8, 8, false),
            GemmKey::new(4, 8, 8, true),
            "int8 weights are tuned separately"
        );
    }

    #[test]
    fn the_fixed_rule_is_the_measured_one() {
        assert_eq!(fixed_rule(&key(4, 32128)), Skinny);
        assert_eq!(fixed_rule(&key(32, 1024)), Skinny);
        assert_eq!(fixed_rule(&key(32, 2047)), Skinny);
        assert_eq!(fixed_rule(&key(32, 2048)), Tiles);
        assert_eq!(fixed_rule(&key(16, 32128)), Tiles);
    }

    #[test]
    fn the_rule_keeps_a_shape_unless_another_kernel_is_clearly_faster() {
        let k = key(32, 1024); // rule: Skinny
                               // 5% faster: noise, the rule stays
        assert_eq!(
            choose(&k, &[(Skinny, 0.020), (SkinnyTc, 0.019), (Tiles, 0.030)]),
            Skinny
        );
        // 20% faster: switch
        assert_eq!(
            choose(&k, &[(Skinny, 0.020), (SkinnyTc, 0.016), (Tiles, 0.030)]),
            SkinnyTc
        );
        // two beat the margin: the fastest
        assert_eq!(
            choose(&k, &[(Skinny, 0.020), (SkinnyTc, 0.012), (Tiles, 0.010)]),
            Tiles
        );
        // slower candidates never win
        assert_eq!(
            choose(&k, &[(Skinny, 0.020), (SkinnyTc, 0.040), (Tiles, 0.030)]),
            Skinny
        );
        // the rule's kernel failed to time: the fastest of the rest
        assert_eq!(choose(&k, &[(SkinnyTc, 0.04), (Tiles, 0.03)]), Tiles);
        // two that beat the rule within 2% of each other (the H100's skinny_tc and its split
        // form at 32 x 1024 x 2816): the order, not the noise, decides; the split kernel only
        // where it is clearly faster
        let near = [
            (Skinny, 0.0340),
            (SkinnyTc, 0.0158),
            (Tiles, 0.0776),
            (SkinnyTcSplit, 0.0155),
        ];
        assert_eq!(choose(&k, &near), SkinnyTc);
        let clear = [
            (Skinny, 0.0380),
            (SkinnyTc, 0.0180),
            (Tiles, 0.0532),
            (SkinnyTcSplit, 0.0146),
        ];
        assert_eq!(choose(&k, &clear), SkinnyTcSplit);
        // nothing valid: the rule
        assert_eq!(choose(&k, &[]), Skinny);
        assert_eq!(
            choose(
                &k,
                &[(SkinnyTc, f64::NAN), (Tiles, 0.0), (Skinny, f64::INFINITY)]
            ),
            Skinny
        );
        // the rule for wide n is the tiles
        let wide = key(32, 5632);
        assert_eq!(choose(&wide, &[(Tiles, 0.03), (SkinnyTc, 0.028)]), Tiles);
        assert_eq!(choose(&wide, &[(Tiles, 0.03), (SkinnyTc, 0.01)]), SkinnyTc);
    }

    #[test]
    fn kept_choices_are_used_only_among_the_candidates_they_were_made_from() {
        let mut t = table();
        let k = key(32, 3072);
        let three = SkinnyKernel::candidates(false);
        let four = SkinnyKernel::candidates(true);
        assert_eq!(three, [Skinny, SkinnyTc, Tiles]);
        assert_eq!(four.len(), 4);
        // made among the three: used without the split, timed afresh with it
        assert_eq!(t.get_among(&k, three), Some(SkinnyTc));
        assert_eq!(t.get_among(&k, four), None);
        // made among the four and the split won: used with it, timed afresh without
        t.entries.insert(
            k,
            Choice {
                kernel: SkinnyTcSplit,
                times: vec![
                    (Skinny, 0.03),
                    (SkinnyTc, 0.011),
                    (Tiles, 0.025),
                    (SkinnyTcSplit, 0.006),
                ],
                considered: four.to_vec(),
            },
        );
        assert_eq!(t.get_among(&k, four), Some(SkinnyTcSplit));
        assert_eq!(t.get_among(&k, three), None);
        // made among the four, an established kernel won: good for both
        t.entries.get_mut(&k).unwrap().kernel = SkinnyTc;
        assert_eq!(t.get_among(&k, three), Some(SkinnyTc));
        assert_eq!(t.get_among(&k, four), Some(SkinnyTc));
        // a fallback without times stands while its kernel is a candidate
        let fb = GemmKey::new(3, 1024, 2816, true).unwrap();
        assert_eq!(t.get_among(&fb, four), Some(Skinny));
        assert_eq!(t.get_among(&fb, &[SkinnyTc]), None);
        assert_eq!(t.get_among(&key(8, 8), four), None);
        // a candidate that could not launch has no time but was considered: the choice stands
        // (else every GEMM of the shape would time the candidates again)
        let failed = key(32, 5632);
        t.entries.insert(
            failed,
            Choice {
                kernel: SkinnyTc,
                times: vec![(Skinny, 0.03), (SkinnyTc, 0.011), (Tiles, 0.025)],
                considered: four.to_vec(),
            },
        );
        assert_eq!(t.get_among(&failed, four), Some(SkinnyTc));
        // the split kernel's name round-trips through a table file
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tune.json");
        t.entries.get_mut(&k).unwrap().kernel = SkinnyTcSplit;
        t.save(&path).unwrap();
        let (back, note) = TuneTable::load(&path, &t.device, &t.build);
        assert_eq!(note, None);
        assert_eq!(back.get_among(&k, four), Some(SkinnyTcSplit));
        assert_eq!(back.get_among(&failed, four), Some(SkinnyTc));
        // a table written before "considered" existed: the timed kernels count as considered
        let old = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&old).unwrap();
        let mut v2 = v.clone();
        for e in v2["entries"].as_array_mut().unwrap() {
            e.as_object_mut().unwrap().remove("considered");
        }
        let back = TuneTable::from_json(&v2).unwrap();
        assert_eq!(back.get_among(&k, four), Some(SkinnyTcSplit));
        assert_eq!(back.get_among(&failed, four), None);
        assert_eq!(back.get_among(&failed, three), Some(SkinnyTc));
    }

    #[test]
    fn modes_parse_from_the_environment_value() {
        assert_eq!(GemmMode::parse(None).unwrap(), GemmMode::Tune);
        assert_eq!(GemmMode::parse(Some("on")).unwrap(), GemmMode::Tune);
        assert_eq!(GemmMode::parse(Some("1")).unwrap(), GemmMode::Tune);
        assert_eq!(GemmMode::parse(Some("off")).unwrap(), GemmMode::Fixed);
        assert_eq!(GemmMode::parse(Some("0")).unwrap(), GemmMode::Fixed);
        assert_eq!(
            GemmMode::parse(Some("skinny_tc")).unwrap(),
            GemmMode::Force(SkinnyTc)
        );
        assert_eq!(
            GemmMode::parse(Some("skinny_tc_split")).unwrap(),
            GemmMode::Force(SkinnyTcSplit)
        );
        let e = GemmMode::parse(Some("fastest")).unwrap_err().to_string();
        assert!(e.contains("JOBX_GEMM_TUNE=fastest"), "{e}");
    }

    fn table() -> TuneTable {
        let mut t = TuneTable::new("NVIDIA H100 (sm_90)", "0.1.0-abc");
        t.entries.insert(
            key(32, 3072),
            Choice {
                kernel: SkinnyTc,
                times: vec![(Skinny, 0.03), (SkinnyTc, 0.011), (Tiles, 0.025)],
                considered: vec![Skinny, SkinnyTc, Tiles],
            },
        );
        t.entries.insert(
            GemmKey::new(3, 1024, 2816, true).unwrap(),
            Choice {
                kernel: Skinny,
                times: vec![],
                considered: vec![Skinny, SkinnyTc, Tiles, SkinnyTcSplit],
            },
        );
        t
    }

    #[test]
    fn tables_round_trip_through_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tune.json");
        let t = table();
        t.save(&path).unwrap();
        let (back, note) = TuneTable::load(&path, &t.device, &t.build);
        assert_eq!(note, None);
        // all but the fallback without times
        let mut kept = t.clone();
        kept.entries
            .remove(&GemmKey::new(3, 1024, 2816, true).unwrap());
        assert_eq!(kept.entries.len(), 1);
        assert_eq!(back, kept);
        assert_eq!(back.get(&key(32, 3072)), Some(SkinnyTc));
        assert_eq!(back.get(&key(16, 3072)), None);
        // no temporary file left behind
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_table_from_elsewhere_or_damaged_is_replaced_with_a_note() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tune.json");
        // missing: fresh, silently
        let (t, note) = TuneTable::load(&path, "dev", "b1");
        assert!(t.entries.is_empty() && note.is_none());
        table().save(&path).unwrap();
        // another device, another build
        for (dev, build) in [
            ("NVIDIA A100 (sm_80)", "0.1.0-abc"),
            ("NVIDIA H100 (sm_90)", "x"),
        ] {
            let (t, note) = TuneTable::load(&path, dev, build);
            assert!(t.entries.is_empty());
            assert_eq!((t.device.as_str(), t.build.as_str()), (dev, build));
            assert!(note.unwrap().contains("tuning afresh"));
        }
        // damaged files: truncated, wrong format, bad entries
        let good = std::fs::read_to_string(&path).unwrap();
        let bad_rows = good.replacen("\"rows\": 32", "\"rows\": 24", 1);
        let bad_kernel = good.replacen("\"skinny_tc\",", "\"cublas\",", 1);
        assert_ne!(bad_rows, good);
        assert_ne!(bad_kernel, good);
        for (text, what) in [
            (&good[..good.len() / 2], "EOF"),
            ("{\"format\": \"other\"}", "not a jobx-gemm-tune-1"),
            (bad_rows.as_str(), "rows 24"),
            (bad_kernel.as_str(), "unknown \"kernel\""),
        ] {
            std::fs::write(&path, text).unwrap();
            let (t, note) = TuneTable::load(&path, "NVIDIA H100 (sm_90)", "0.1.0-abc");
            assert!(t.entries.is_empty());
            let note = note.unwrap();
            assert!(
                note.contains(what) && note.contains("tuning afresh"),
                "{note}"
            );
        }
        // unwritable destination: an error, not a panic
        let e = table()
            .save(&dir.path().join("no/such/dir/t.json"))
            .unwrap_err();
        assert!(e.to_string().contains("no/such/dir/t.json"), "{e}");
    }

    #[test]
    fn build_ids_change_with_the_kernels() {
        assert_eq!(build_id("abc"), build_id("abc"));
        assert_ne!(build_id("abc"), build_id("abd"));
        assert!(build_id("").starts_with(env!("CARGO_PKG_VERSION")));
    }
}
