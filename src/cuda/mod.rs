//! The CUDA backend: runtime (context, one stream, memory pool, kernel modules) and typed
//! wrappers for the kernels in `kernels/*.cu`, compiled by build.rs when the crate is built with
//! `--features cuda`. Without the feature this module still exists so callers can ask for a GPU
//! and get a clear error instead of a missing symbol.
//!
//! Each kernel has a CPU-reference op test (tests/cuda_ops.rs); `Gpu` implements
//! `device::Backend`, the interface the device graphs `models::t5_device` and
//! `models::mistral_device` are written against, run by `verify`, `generate`, `extract` and `eval`
//! with `--device cuda`.

#[cfg(feature = "cuda")]
mod ops;
#[cfg(feature = "cuda")]
mod runtime;
#[cfg(feature = "cuda")]
pub mod tune;
#[cfg(feature = "cuda")]
pub use ops::*;
#[cfg(feature = "cuda")]
pub use runtime::*;

/// Whether this binary carries the CUDA backend (built with `--features cuda`).
pub const BUILT_WITH_CUDA: bool = cfg!(feature = "cuda");

/// Without the `cuda` feature: a GPU handle that can never be created.
#[cfg(not(feature = "cuda"))]
pub struct Gpu(());

#[cfg(not(feature = "cuda"))]
impl Gpu {
    pub fn new(_ordinal: usize) -> crate::Result<Gpu> {
        Err(crate::Error::Unsupported(
            "this jobx-engine was built without the CUDA backend; rebuild with \
             `cargo build --release --features cuda` (after `bash tools/install-cuda-toolchain.sh`)"
                .into(),
        ))
    }
}
