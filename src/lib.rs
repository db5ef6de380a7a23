//! jobx-engine: job-posting text to schema-valid JSON with FLAN-T5 (encoder-decoder) and Mistral
//! (decoder) models. See docs/ARCHITECTURE.md for the module map and the data flow.

pub mod chat;
pub mod checkpoint;
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod error;
pub mod eval;
pub mod eval_run;
pub mod extract;
pub mod generate;
pub mod grammar;
pub mod hub;
pub mod models;
pub mod prompts;
pub mod tokenizer;
pub mod verify;

pub use error::{Error, Result};
