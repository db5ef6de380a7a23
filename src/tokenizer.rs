//! Tokenizers from `tokenizer.json` (tokenizers crate), with the checks that keep a mismatched
//! tokenizer from silently producing ids the model cannot embed.

use crate::error::{Error, Result};
use std::path::Path;

pub struct Tok {
    pub inner: tokenizers::Tokenizer,
    pub unk_id: Option<u32>,
}

impl Tok {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Tokenizer(format!(
                "{} not found (the model folder needs a tokenizer.json for text input)",
                path.display()
            )));
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let unk_id = inner.token_to_id("<unk>");
        Ok(Tok { inner, unk_id })
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The model's embedding must cover every id the tokenizer can produce.
    pub fn check_fits(&self, model_vocab: usize) -> Result<()> {
        let n = self.vocab_size();
        if n > model_vocab {
            return Err(Error::Tokenizer(format!(
                "the tokenizer has {n} tokens but the model's vocabulary has {model_vocab}: they do not belong together"
            )));
        }
        Ok(())
    }

    /// Encode with the tokenizer's post-processor (T5 appends `</s>`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let e = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(e.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    pub fn id(&self, tok: &str) -> Option<u32> {
        self.inner.token_to_id(tok)
    }
}
