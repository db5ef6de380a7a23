//! Grammar-constrained JSON decoding: a JSON Schema subset compiled into a token-level constraint.
//!
//! Why this exists: the reference project's models (FLAN-T5, Mistral) must emit schema-valid JSON in
//! exactly the surface they were trained on (Python `json.dumps` output), and every output must be
//! complete within `max_new_tokens`. This module turns a schema plus a tokenizer vocabulary into an
//! allowed-token mask per decoding step. It is self-contained: no model, no `tokenizers` crate.
//!
//! Layers (each file opens with its own notes; `docs/GRAMMAR.md` is the user-facing description):
//! - [`vocab`]: per-token decoded byte strings (SentencePiece `▁`, `<0xNN>` byte fallback, GPT-2
//!   byte-level), special tokens, EOS and `<unk>` ids; parsed from `tokenizer.json` with serde_json.
//! - [`trie`]: a tokenizer-agnostic token trie in depth-first order, walked with subtree skipping.
//! - [`surface`]: the text form of a document (`json.dumps` separators, `\uXXXX` escapes, and the
//!   `<unk>`-for-`{`/`}`/`\` representation for vocabularies that cannot spell those characters).
//! - [`schema`]: the JSON Schema subset compiler into a byte-level NFA, with size budgets.
//! - [`dfa`]: subset construction into a byte-class DFA (the schema subset is non-recursive, so the
//!   language is regular and no parse stack is needed).
//! - [`compiled`]: DFA x vocabulary: cached allowed-token masks per DFA state, the minimal number of
//!   tokens to finish from every state (token budget), forced tokens, mapping back to JSON.
//! - [`matcher`]: small, `Clone` per-request state (`compute_mask`, `commit_token`, forced tokens,
//!   budget), the [`Constraint`] trait and the [`JsonConstraint`] logits adapter.
//! - [`job`]: the built-in job schema (SPEC.md §1.1). [`validate`]: an in-house validator for the same
//!   subset (used by `grammar check`; tests use the independent `jsonschema` crate).
//! - [`tools`]: `grammar_check` and `grammar_bench`, called by the CLI.

pub mod compiled;
pub mod dfa;
pub mod job;
pub mod matcher;
pub mod schema;
pub mod surface;
pub mod tools;
pub mod trie;
pub mod validate;
pub mod vocab;

pub use compiled::{CompileOptions, Grammar};
pub use job::{job_schema, JOB_SCHEMA_JSON};
pub use matcher::{Constraint, JsonConstraint, Matcher};
pub use schema::Budgets;
pub use surface::{Separators, StructuralMode, SurfaceOptions};
pub use tools::{
    grammar_bench, grammar_check, load_schema, BenchOptions, BenchSummary, CheckOptions,
    CheckSummary,
};
pub use vocab::Vocab;

/// Errors of the grammar module. Schema errors name the offending keyword and its JSON pointer.
#[derive(Debug, thiserror::Error)]
pub enum GrammarError {
    /// A keyword outside the supported subset (never silently ignored).
    #[error("unsupported schema keyword '{keyword}' at '{path}'")]
    UnsupportedKeyword { keyword: String, path: String },
    /// A supported keyword with a value this compiler cannot use, or an unsatisfiable combination.
    #[error("invalid schema at '{path}': {msg}")]
    InvalidSchema { path: String, msg: String },
    /// A `$ref` that is not local, does not resolve, or is recursive.
    #[error("bad $ref '{reference}' at '{path}': {msg}")]
    BadRef {
        path: String,
        reference: String,
        msg: String,
    },
    /// A size or state budget was exceeded (pathological schemas).
    #[error("schema too large: {what} exceeds the budget of {limit} (at '{path}')")]
    Budget {
        what: &'static str,
        limit: usize,
        path: String,
    },
    /// The vocabulary cannot be used (missing EOS, missing `<unk>` where needed, bad tokenizer.json).
    #[error("vocabulary: {0}")]
    Vocab(String),
    /// The schema can be compiled but no document can be spelled with this vocabulary.
    #[error("no complete document can be produced with this vocabulary: {0}")]
    Unproducible(String),
    /// A token that the constraint does not allow at this step.
    #[error("token {token} is not allowed at step {step}: {why}")]
    TokenRejected {
        token: u32,
        step: usize,
        why: &'static str,
    },
    #[error("io error on '{path}': {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("json error in {what}: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, GrammarError>;
