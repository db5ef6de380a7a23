//! Model graphs, one readable file each, loading Hugging Face checkpoints by their weight names.
pub mod adapter;
pub mod linear;
pub mod mistral;
#[cfg(feature = "cuda")]
pub mod mistral_cuda;
pub mod t5;
#[cfg(feature = "cuda")]
pub mod t5_cuda;
