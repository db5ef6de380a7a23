//! Hugging Face checkpoint access: `*.safetensors` files (single or sharded through
//! `model.safetensors.index.json`), memory-mapped with memmap2.
//!
//! f32 tensors whose data is 4-byte aligned in the map are used in place (zero copy): the model
//! holds an `Arc<Mmap>` and a byte range. bf16/f16 tensors are widened to f32 once at load, since
//! the CPU backend computes in f32. Every lookup checks name, dtype and shape against what the model
//! config implies, so a truncated or mismatched checkpoint is a clear error, not a panic.

use crate::cpu::simd::Bf16;
use crate::cpu::WRef;
use crate::error::{Error, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a weight lives and in which dtype: f32 or bf16, in the file map (zero copy) or in an
/// owned buffer. bf16 appears only for matrices loaded with `Checkpoint::matrix` under a policy
/// that keeps or makes them bf16 (`CpuWeights`) and for bf16 tensors read with
/// `Checkpoint::stored` (the device loads); everything else is f32.
#[derive(Clone)]
pub enum WeightData {
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
    Owned(Arc<Vec<f32>>),
    MappedBf16 {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
    OwnedBf16(Arc<Vec<Bf16>>),
}

impl WeightData {
    /// The f32 values. Only for f32 data: a bf16 matrix is read through `wref` (reading one as
    /// f32 is a bug in the graph code, not an input error).
    pub fn as_slice(&self) -> &[f32] {
        match self {
            WeightData::Mapped { map, offset, len } => {
                let bytes = &map[*offset..*offset + *len * 4];
                // SAFETY: alignment and length were checked when this value was built; the map is
                // read-only and kept alive by the Arc. f32 has no invalid bit patterns.
                unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f32, *len) }
            }
            WeightData::Owned(v) => v.as_slice(),
            WeightData::MappedBf16 { .. } | WeightData::OwnedBf16(_) => {
                panic!("internal: a bf16 weight was read as f32 (use WeightTensor::wref)")
            }
        }
    }
    /// The values in their storage dtype, for the matrix kernels.
    pub fn wref(&self) -> WRef<'_> {
        match self {
            WeightData::MappedBf16 { map, offset, len } => {
                let bytes = &map[*offset..*offset + *len * 2];
                // SAFETY: 2-byte alignment and the length were checked when this value was built;
                // Bf16 is a transparent u16, so every bit pattern is valid.
                WRef::Bf16(unsafe {
                    std::slice::from_raw_parts(bytes.as_ptr() as *const Bf16, *len)
                })
            }
            WeightData::OwnedBf16(v) => WRef::Bf16(v.as_slice()),
            _ => WRef::F32(self.as_slice()),
        }
    }
    pub fn is_mapped(&self) -> bool {
        matches!(
            self,
            WeightData::Mapped { .. } | WeightData::MappedBf16 { .. }
        )
    }
    pub fn is_bf16(&self) -> bool {
        matches!(
            self,
            WeightData::MappedBf16 { .. } | WeightData::OwnedBf16(_)
        )
    }
}

/// How the CPU backend stores the weight matrices (linear layers, embeddings, LM heads) of a model;
/// the arithmetic is f32 in every case.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuWeights {
    /// bf16 checkpoints stay bf16 (used in place from the map: half the memory and bandwidth of
    /// widening them, and the same values); f32 stays f32; f16 is widened to f32.
    #[default]
    Auto,
    /// Widen everything to f32 (the reference layout).
    F32,
    /// Also round f32/f16 matrices to bf16 at load (round to nearest even): half the memory and
    /// bandwidth of f32, at the price of bf16 weight rounding (~0.4% per weight).
    Bf16,
}

impl std::str::FromStr for CpuWeights {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(CpuWeights::Auto),
            "f32" => Ok(CpuWeights::F32),
            "bf16" => Ok(CpuWeights::Bf16),
            o => Err(format!("`{o}`: expected auto, f32 or bf16")),
        }
    }
}

static DEFAULT_CPU_WEIGHTS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The policy `Checkpoint::open_*` gives new checkpoints (the CLI's `--cpu-weights`).
pub fn set_default_cpu_weights(p: CpuWeights) {
    DEFAULT_CPU_WEIGHTS.store(p as u8, std::sync::atomic::Ordering::Relaxed);
}

fn default_cpu_weights() -> CpuWeights {
    match DEFAULT_CPU_WEIGHTS.load(std::sync::atomic::Ordering::Relaxed) {
        1 => CpuWeights::F32,
        2 => CpuWeights::Bf16,
        _ => CpuWeights::Auto,
    }
}

/// A dense f32 tensor (row-major) taken from a checkpoint.
#[derive(Clone)]
pub struct WeightTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: WeightData,
}

impl WeightTensor {
    pub fn as_slice(&self) -> &[f32] {
        self.data.as_slice()
    }
    pub fn wref(&self) -> WRef<'_> {
        self.data.wref()
    }
    pub fn from_vec(name: &str, shape: Vec<usize>, v: Vec<f32>) -> Self {
        WeightTensor {
            name: name.to_string(),
            shape,
            data: WeightData::Owned(Arc::new(v)),
        }
    }
}

struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// absolute byte range in the file map
    start: usize,
    end: usize,
}

/// All tensors of one checkpoint folder (or one file), indexed by name.
pub struct Checkpoint {
    files: Vec<(PathBuf, Arc<Mmap>)>,
    entries: HashMap<String, Entry>,
    pub description: String,
    /// Storage of the matrices `matrix` loads (see `CpuWeights`).
    pub cpu_weights: CpuWeights,
}

fn dtype_size(d: Dtype) -> Option<usize> {
    match d {
        Dtype::F32 | Dtype::I32 | Dtype::U32 => Some(4),
        Dtype::BF16 | Dtype::F16 | Dtype::I16 | Dtype::U16 => Some(2),
        Dtype::F64 | Dtype::I64 | Dtype::U64 => Some(8),
        Dtype::I8 | Dtype::U8 | Dtype::BOOL => Some(1),
        _ => None,
    }
}

impl Checkpoint {
    /// Open a model folder: `model.safetensors`, or the shards listed in
    /// `model.safetensors.index.json` (as `save_pretrained` writes them).
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::config(&index, format!("invalid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::config(&index, "no `weight_map` object"))?;
            let mut shards: Vec<String> = map
                .values()
                .filter_map(|s| s.as_str().map(String::from))
                .collect();
            shards.sort();
            shards.dedup();
            if shards.is_empty() {
                return Err(Error::config(&index, "`weight_map` names no shard files"));
            }
            shards.iter().map(|s| dir.join(s)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors or model.safetensors.index.json in this folder \
                     (PyTorch .bin checkpoints are not supported: convert them to safetensors)",
                ),
            });
        };
        Self::open_files(&files, &dir.display().to_string())
    }

    pub fn open_files(paths: &[PathBuf], description: &str) -> Result<Self> {
        let mut files = Vec::new();
        let mut entries = HashMap::new();
        for (fi, path) in paths.iter().enumerate() {
            let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the file is opened read-only; a concurrent writer truncating it would be a
            // user error outside our control (the same contract as every mmap-based loader).
            let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
            let (n, meta) =
                SafeTensors::read_metadata(&map[..]).map_err(|e| Error::Safetensors {
                    path: path.clone(),
                    msg: format!("{e:?} (the file may be truncated or not a safetensors file)"),
                })?;
            let data_start = 8 + n;
            let data_len = map.len().saturating_sub(data_start);
            for (name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                if e > data_len || s > e {
                    return Err(Error::Safetensors {
                        path: path.clone(),
                        msg: format!(
                            "tensor `{name}` needs bytes {s}..{e} of the data section but the file has only {data_len} (truncated file?)"
                        ),
                    });
                }
                let numel: usize = info.shape.iter().product();
                if let Some(sz) = dtype_size(info.dtype) {
                    if numel * sz != e - s {
                        return Err(Error::Safetensors {
                            path: path.clone(),
                            msg: format!(
                                "tensor `{name}`: shape {:?} does not match its byte length {}",
                                info.shape,
                                e - s
                            ),
                        });
                    }
                }
                entries.insert(
                    name.clone(),
                    Entry {
                        file: fi,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        start: data_start + s,
                        end: data_start + e,
                    },
                );
            }
            files.push((path.clone(), Arc::new(map)));
        }
        Ok(Checkpoint {
            files,
            entries,
            description: description.to_string(),
            cpu_weights: default_cpu_weights(),
        })
    }

    /// Load a weight matrix (linear layer, embedding, LM head) for the CPU kernels, stored as
    /// `self.cpu_weights` says: bf16 data in place (zero copy when 2-byte aligned) under `Auto`
    /// and `Bf16`, f32/f16 rounded to bf16 under `Bf16`, otherwise as `f32` loads it.
    pub fn matrix(&self, name: &str, expected: &[usize]) -> Result<WeightTensor> {
        self.matrix_as(name, expected, self.cpu_weights)
    }

    /// A tensor in its stored dtype where that is bf16 (in place in the map when 2-byte
    /// aligned), else as f32: what the device loads start from. The CPU policy
    /// (`--cpu-weights`) does not apply: the device rounds f32 to bf16 itself, and int8
    /// quantisation reads f32 checkpoints at full precision.
    pub fn stored(&self, name: &str, expected: &[usize]) -> Result<WeightTensor> {
        self.matrix_as(name, expected, CpuWeights::Auto)
    }

    fn matrix_as(
        &self,
        name: &str,
        expected: &[usize],
        policy: CpuWeights,
    ) -> Result<WeightTensor> {
        let e = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            where_: self.description.clone(),
        })?;
        let keep = match (policy, e.dtype) {
            (CpuWeights::F32, _) => false,
            (CpuWeights::Auto, Dtype::BF16) => true,
            (CpuWeights::Auto, _) => false,
            (CpuWeights::Bf16, Dtype::BF16 | Dtype::F32 | Dtype::F16) => true,
            (CpuWeights::Bf16, _) => false,
        };
        if !keep || e.shape != expected {
            return self.f32(name, expected); // shape errors are reported there
        }
        let map = &self.files[e.file].1;
        let bytes = &map[e.start..e.end];
        let numel: usize = e.shape.iter().product();
        let data = if e.dtype == Dtype::BF16 {
            if (bytes.as_ptr() as usize).is_multiple_of(2) && cfg!(target_endian = "little") {
                WeightData::MappedBf16 {
                    map: map.clone(),
                    offset: e.start,
                    len: numel,
                }
            } else {
                WeightData::OwnedBf16(Arc::new(
                    bytes
                        .chunks_exact(2)
                        .map(|c| Bf16(u16::from_le_bytes([c[0], c[1]])))
                        .collect(),
                ))
            }
        } else {
            let f = self.f32(name, expected)?;
            WeightData::OwnedBf16(Arc::new(
                f.as_slice()
                    .iter()
                    .map(|&x| Bf16(half::bf16::from_f32(x).to_bits()))
                    .collect(),
            ))
        };
        Ok(WeightTensor {
            name: name.to_string(),
            shape: e.shape.clone(),
            data,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.entries.keys().cloned().collect();
        v.sort();
        v
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// The largest dtype among floating tensors, as a string for reports ("F32", "BF16", ...).
    pub fn dtype_summary(&self) -> String {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for e in self.entries.values() {
            *seen.entry(format!("{:?}", e.dtype)).or_default() += 1;
        }
        seen.keys().cloned().collect::<Vec<_>>().join("+")
    }

    /// Load a floating tensor as f32, checking its shape. f32 data is used in place when aligned.
    pub fn f32(&self, name: &str, expected: &[usize]) -> Result<WeightTensor> {
        let e = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            where_: self.description.clone(),
        })?;
        if e.shape != expected {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                expected: expected.to_vec(),
                got: e.shape.clone(),
            });
        }
        let map = &self.files[e.file].1;
        let bytes = &map[e.start..e.end];
        let numel: usize = e.shape.iter().product();
        let data = match e.dtype {
            Dtype::F32 => {
                if (bytes.as_ptr() as usize).is_multiple_of(4) && cfg!(target_endian = "little") {
                    WeightData::Mapped {
                        map: map.clone(),
                        offset: e.start,
                        len: numel,
                    }
                } else {
                    let v: Vec<f32> = bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    WeightData::Owned(Arc::new(v))
                }
            }
            Dtype::BF16 => WeightData::Owned(Arc::new(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                    .collect(),
            )),
            Dtype::F16 => WeightData::Owned(Arc::new(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                    .collect(),
            )),
            other => {
                return Err(Error::UnsupportedDtype {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        Ok(WeightTensor {
            name: name.to_string(),
            shape: e.shape.clone(),
            data,
        })
    }

    /// Load an integer tensor (I64 or I32) as i64, with its shape (used by reference fixtures).
    pub fn i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let e = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            where_: self.description.clone(),
        })?;
        let bytes = &self.files[e.file].1[e.start..e.end];
        let v = match e.dtype {
            Dtype::I64 => bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
            Dtype::I32 => bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
            other => {
                return Err(Error::UnsupportedDtype {
                    name: name.to_string(),
                    dtype: format!("{other:?} (want I64)"),
                })
            }
        };
        Ok((e.shape.clone(), v))
    }

    /// Load any float tensor as f32 without a shape check, returning its shape too.
    pub fn f32_any(&self, name: &str) -> Result<WeightTensor> {
        let shape = self
            .shape(name)
            .ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                where_: self.description.clone(),
            })?
            .to_vec();
        self.f32(name, &shape)
    }
}
