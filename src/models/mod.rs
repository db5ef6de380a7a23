//! Model graphs, one readable file each, loading Hugging Face checkpoints by their weight names.
pub mod t5;
