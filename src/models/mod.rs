//! Model graphs, one readable file each, loading Hugging Face checkpoints by their weight names.
pub mod adapter;
pub mod linear;
pub mod mistral;
pub mod mistral_device;
pub mod t5;
pub mod t5_device;
