//! Model graphs, one readable file each, loading Hugging Face checkpoints by their weight names.
pub mod adapter;
pub mod linear;
pub mod mistral;
pub mod t5;
#[cfg(feature = "cuda")]
pub mod t5_cuda;
