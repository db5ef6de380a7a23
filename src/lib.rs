//! jobx-engine: job-posting text to schema-valid JSON with FLAN-T5 (encoder-decoder) and Mistral
//! (decoder) models. See docs/ARCHITECTURE.md for the module map and the data flow.

pub mod checkpoint;
pub mod cpu;
pub mod error;
pub mod generate;
pub mod models;
pub mod verify;
pub mod hub;
pub mod tokenizer;
pub mod extract;
pub mod chat;
pub mod prompts;
pub mod eval;
pub mod eval_run;
pub mod grammar;


pub use error::{Error, Result};
