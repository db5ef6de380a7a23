//! Token vocabulary as decoded byte strings: what each token adds to the output text.
//!
//! The constraint works on the text a token sequence decodes to, so every token id maps to bytes:
//! - SentencePiece pieces: `▁` (U+2581) becomes a space.
//! - Byte-fallback pieces `<0xNN>` (Mistral) become the single byte NN; consecutive byte tokens
//!   combine into UTF-8 exactly as the `ByteFallback` + `Fuse` decoders do (the grammar only ever
//!   accepts valid UTF-8, so plain concatenation equals the tokenizer's decode).
//! - GPT-2 style byte-level pieces are mapped back through the byte-to-unicode table.
//! - Special tokens (`added_tokens` with `special: true`) have no text and are never allowed inside a
//!   document; EOS is allowed only when the document is complete; `<unk>` is used only by the
//!   `<unk>` surface (see `surface.rs`).
//!
//! The first-token rule (documented in docs/GRAMMAR.md): Hugging Face decoders drop the leading
//! space of the decoded text. T5's `Metaspace` decoder (prepend scheme `always`/`first`) removes every
//! `▁` of the token at index 0; Mistral's `Strip(' ', start=1)` removes one leading space of the
//! fused text. So each token also has a "first text" used when it is the first generated token; the
//! lone T5 `▁` (id 3) therefore decodes to "" as the first token and to " " anywhere else.

use super::trie::Trie;
use super::{GrammarError, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// How the tokenizer's decoder treats the first token's leading space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeadingSpace {
    /// The first token's text is used unchanged.
    Keep,
    /// Remove one leading space of the first token (Mistral: `Strip(' ', 1, 0)`).
    StripOne,
    /// Remove every space that came from `▁` in the first token (T5: `Metaspace` decoder). Since
    /// the vocabulary text already has `▁` as spaces, pieces are kept separately for this rule.
    MetaspaceFirst,
}

/// A vocabulary: decoded bytes per token id, plus the flags the constraint needs.
#[derive(Debug, Clone)]
pub struct Vocab {
    /// Decoded bytes of each token when it is not the first generated token.
    pub(crate) text: Vec<Vec<u8>>,
    /// Decoded bytes when it is the first generated token (leading-space rule applied).
    pub(crate) first_text: Vec<Vec<u8>>,
    /// Special tokens: never allowed inside a document (EOS is handled separately).
    pub(crate) special: Vec<bool>,
    pub(crate) eos: Vec<u32>,
    pub(crate) unk: Option<u32>,
    /// Human-readable name for messages ("t5", "mistral", or a path).
    pub name: String,
    /// Tries and pure-content bitsets, built on first use (index 0: ASCII surfaces, 1: UTF-8).
    index: [OnceLock<Arc<VocabIndex>>; 2],
}

/// Bytes that may appear raw inside string contents: printable ASCII except `"` and `\`.
/// A token made only of these is a "pure content" token (see compiled.rs).
#[inline]
pub(crate) fn is_content_byte(b: u8) -> bool {
    (0x20..=0x7E).contains(&b) && b != b'"' && b != b'\\'
}

/// Per-vocabulary search structures, shared by every grammar compiled for this vocabulary.
#[derive(Debug)]
pub(crate) struct VocabIndex {
    /// Every usable token (not special, non-empty, only bytes the surface can ever contain).
    pub full: Trie,
    /// Usable tokens that are not pure content.
    pub structural: Trie,
    /// Pure-content tokens.
    pub pure: Trie,
    /// Every usable token by its first-position text (see the first-token rule above).
    pub first: Trie,
    /// Tokens whose first-position text is empty (T5's lone `▁`).
    pub first_empty: Vec<u32>,
    /// ASCII characters spelled by a single-byte token.
    pub spell_ascii: [bool; 128],
    /// Characters spelled by a single token.
    pub single_chars: std::collections::HashSet<char>,
    /// Every byte 0x80..=0xF4 has its own token (byte fallback).
    pub byte_fallback: bool,
    /// `pure_by_len[c]`: mask of pure-content tokens of exactly `c` bytes (index 0 unused).
    pub pure_by_len: Vec<Box<[u32]>>,
    /// `pure_upto[c]`: mask of pure-content tokens of at most `c` bytes.
    pub pure_upto: Vec<Box<[u32]>>,
    pub build_time: std::time::Duration,
}

impl Vocab {
    /// Builds a vocabulary from decoded byte strings. `first_text` defaults to `text`.
    /// Token ids listed in `eos` must be marked special (they never appear inside a document).
    pub fn new(
        text: Vec<Vec<u8>>,
        first_text: Option<Vec<Vec<u8>>>,
        special: Vec<bool>,
        eos: Vec<u32>,
        unk: Option<u32>,
    ) -> Result<Vocab> {
        let n = text.len();
        if n == 0 {
            return Err(GrammarError::Vocab("empty vocabulary".into()));
        }
        if n > u32::MAX as usize / 2 {
            return Err(GrammarError::Vocab("vocabulary too large".into()));
        }
        let first_text = first_text.unwrap_or_else(|| text.clone());
        if first_text.len() != n || special.len() != n {
            return Err(GrammarError::Vocab(format!(
                "length mismatch: text {n}, first_text {}, special {}",
                first_text.len(),
                special.len()
            )));
        }
        if eos.is_empty() {
            return Err(GrammarError::Vocab("no EOS token id given".into()));
        }
        let mut special = special;
        for &e in &eos {
            let e = e as usize;
            if e >= n {
                return Err(GrammarError::Vocab(format!(
                    "EOS id {e} out of range (vocab {n})"
                )));
            }
            special[e] = true;
        }
        if let Some(u) = unk {
            if u as usize >= n {
                return Err(GrammarError::Vocab(format!(
                    "unk id {u} out of range (vocab {n})"
                )));
            }
            special[u as usize] = true;
        }
        Ok(Vocab {
            text,
            first_text,
            special,
            eos,
            unk,
            name: String::new(),
            index: Default::default(),
        })
    }

    /// The search structures for ASCII (`ascii = true`) or UTF-8 surfaces, built on first use.
    pub(crate) fn index(&self, ascii: bool) -> Arc<VocabIndex> {
        self.index[usize::from(!ascii)]
            .get_or_init(|| Arc::new(self.build_index(ascii)))
            .clone()
    }

    /// Builds the search structures ahead of time (so the first schema compile does not pay).
    /// Returns the build time.
    pub fn prepare(&self, ascii: bool) -> std::time::Duration {
        self.index(ascii).build_time
    }

    fn build_index(&self, ascii: bool) -> VocabIndex {
        let t0 = std::time::Instant::now();
        let usable_byte =
            |b: u8| (0x20..=0x7E).contains(&b) || (!ascii && (0x80..=0xF4).contains(&b));
        let words = self.mask_words();
        let mut full = Vec::new();
        let mut structural = Vec::new();
        let mut pure: Vec<(u32, usize)> = Vec::new();
        let mut pure_entries = Vec::new();
        let mut spell_ascii = [false; 128];
        let mut single_chars = std::collections::HashSet::new();
        let mut byte_tokens = [false; 256];
        for (id, t) in self.text.iter().enumerate() {
            if self.special[id] {
                continue;
            }
            if t.len() == 1 {
                byte_tokens[t[0] as usize] = true;
                if t[0] < 128 {
                    spell_ascii[t[0] as usize] = true;
                }
            }
            if let Ok(s) = std::str::from_utf8(t) {
                let mut it = s.chars();
                if let (Some(c), None) = (it.next(), it.next()) {
                    single_chars.insert(c);
                }
            }
        }
        for (id, t) in self.text.iter().enumerate() {
            if self.special[id] || t.is_empty() || !t.iter().all(|&b| usable_byte(b)) {
                continue;
            }
            full.push((id as u32, t.as_slice()));
            if t.iter().all(|&b| is_content_byte(b)) {
                pure.push((id as u32, t.len()));
                pure_entries.push((id as u32, t.as_slice()));
            } else {
                structural.push((id as u32, t.as_slice()));
            }
        }
        let mut first = Vec::new();
        let mut first_empty = Vec::new();
        for (id, t) in self.first_text.iter().enumerate() {
            if self.special[id] || !t.iter().all(|&b| usable_byte(b)) {
                continue;
            }
            if t.is_empty() {
                if !self.text[id].is_empty() {
                    first_empty.push(id as u32);
                }
            } else {
                first.push((id as u32, t.as_slice()));
            }
        }
        let max_len = pure.iter().map(|p| p.1).max().unwrap_or(0);
        let mut pure_by_len: Vec<Box<[u32]>> = (0..=max_len)
            .map(|_| vec![0u32; words].into_boxed_slice())
            .collect();
        for &(id, len) in &pure {
            pure_by_len[len][id as usize / 32] |= 1 << (id % 32);
        }
        let mut pure_upto: Vec<Box<[u32]>> = Vec::with_capacity(max_len + 1);
        let mut acc = vec![0u32; words];
        for m in &pure_by_len {
            for (a, w) in acc.iter_mut().zip(m.iter()) {
                *a |= *w;
            }
            pure_upto.push(acc.clone().into_boxed_slice());
        }
        VocabIndex {
            full: Trie::new(&full),
            structural: Trie::new(&structural),
            pure: Trie::new(&pure_entries),
            first: Trie::new(&first),
            first_empty,
            spell_ascii,
            single_chars,
            byte_fallback: (0x80..=0xF4).all(|b| byte_tokens[b]),
            pure_by_len,
            pure_upto,
            build_time: t0.elapsed(),
        }
    }

    /// Reads a Hugging Face `tokenizer.json`, given as a path or as the JSON text itself
    /// (anything starting with `{` after whitespace is taken as JSON text).
    pub fn from_tokenizer_json(path_or_str: &str) -> Result<Vocab> {
        let trimmed = path_or_str.trim_start();
        if trimmed.starts_with('{') {
            let mut v = Self::from_tokenizer_json_str(path_or_str)?;
            v.name = "tokenizer.json".into();
            return Ok(v);
        }
        let text = std::fs::read_to_string(path_or_str).map_err(|e| GrammarError::Io {
            path: path_or_str.to_string(),
            source: e,
        })?;
        let mut v = Self::from_tokenizer_json_str(&text)?;
        v.name = path_or_str.to_string();
        Ok(v)
    }

    /// Parses the JSON text of a `tokenizer.json` (Unigram, BPE or WordLevel models).
    pub fn from_tokenizer_json_str(json: &str) -> Result<Vocab> {
        let root: Value = serde_json::from_str(json).map_err(|e| GrammarError::Json {
            what: "tokenizer.json".into(),
            source: e,
        })?;
        let bad = |m: &str| GrammarError::Vocab(format!("tokenizer.json: {m}"));
        let model = root.get("model").ok_or_else(|| bad("no 'model'"))?;
        // pieces[id] = piece string from the model vocabulary.
        let mut pieces: Vec<Option<String>> = Vec::new();
        let set_piece = |id: usize, p: &str, pieces: &mut Vec<Option<String>>| {
            if pieces.len() <= id {
                pieces.resize(id + 1, None);
            }
            pieces[id] = Some(p.to_string());
        };
        match model.get("vocab") {
            Some(Value::Array(list)) => {
                // Unigram: [[piece, score], ...], id = position.
                for (id, item) in list.iter().enumerate() {
                    let p = item
                        .get(0)
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad("unigram vocab entry is not [piece, score]"))?;
                    set_piece(id, p, &mut pieces);
                }
            }
            Some(Value::Object(map)) => {
                // BPE / WordLevel / WordPiece: {piece: id}.
                for (p, id) in map {
                    let id = id
                        .as_u64()
                        .ok_or_else(|| bad("vocab id is not an integer"))?
                        as usize;
                    if id > 10_000_000 {
                        return Err(bad("vocab id too large"));
                    }
                    set_piece(id, p, &mut pieces);
                }
            }
            _ => return Err(bad("model.vocab is neither a list nor a map")),
        }
        let byte_fallback_model = model
            .get("byte_fallback")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        // Added tokens may extend the id range and carry the special flag.
        let mut added_special: HashMap<usize, bool> = HashMap::new();
        if let Some(Value::Array(added)) = root.get("added_tokens") {
            for a in added {
                let id =
                    a.get("id")
                        .and_then(Value::as_u64)
                        .ok_or_else(|| bad("added token without id"))? as usize;
                if id > 10_000_000 {
                    return Err(bad("added token id too large"));
                }
                let content = a
                    .get("content")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("added token without content"))?;
                let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
                set_piece(id, content, &mut pieces);
                added_special.insert(id, special);
            }
        }
        let n = pieces.len();
        let decoder = root.get("decoder").cloned().unwrap_or(Value::Null);
        let dec = DecoderInfo::from_json(&decoder);
        let byte_fallback = byte_fallback_model || dec.byte_fallback;

        let mut text = Vec::with_capacity(n);
        let mut first_text = Vec::with_capacity(n);
        let mut special = vec![false; n];
        let mut eos = Vec::new();
        let mut unk = None;
        let unk_piece = model
            .get("unk_token")
            .and_then(Value::as_str)
            .map(str::to_string);
        let unk_id_model = model
            .get("unk_id")
            .and_then(Value::as_u64)
            .map(|x| x as usize);
        let byte_table = if dec.byte_level {
            Some(byte_level_table())
        } else {
            None
        };
        for (id, p) in pieces.iter().enumerate() {
            let Some(p) = p else {
                // Hole in the id space: an unusable token.
                text.push(Vec::new());
                first_text.push(Vec::new());
                special[id] = true;
                continue;
            };
            let is_special = added_special.get(&id).copied().unwrap_or(false);
            if is_special {
                special[id] = true;
                if p == "</s>"
                    || p == "<|endoftext|>"
                    || p == "<|im_end|>"
                    || p == "<|eot_id|>"
                    || p == "<eos>"
                {
                    eos.push(id as u32);
                }
                if p == "<unk>"
                    || unk_piece.as_deref() == Some(p.as_str())
                    || unk_id_model == Some(id)
                {
                    unk = Some(id as u32);
                }
                text.push(Vec::new());
                first_text.push(Vec::new());
                continue;
            }
            if unk_id_model == Some(id) || unk_piece.as_deref() == Some(p.as_str()) {
                special[id] = true;
                unk = Some(id as u32);
                text.push(Vec::new());
                first_text.push(Vec::new());
                continue;
            }
            let is_added = added_special.contains_key(&id);
            let (t, f) = if is_added {
                // Non-special added tokens decode to their content as is.
                (p.as_bytes().to_vec(), p.as_bytes().to_vec())
            } else if let Some(table) = &byte_table {
                let mut out = Vec::with_capacity(p.len());
                for ch in p.chars() {
                    match table.get(&ch) {
                        Some(&b) => out.push(b),
                        None => {
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
                let f = if dec.leading == LeadingSpace::StripOne && out.first() == Some(&b' ') {
                    out[1..].to_vec()
                } else {
                    out.clone()
                };
                (out, f)
            } else if let Some(b) = parse_byte_piece(p).filter(|_| byte_fallback) {
                let t = vec![b];
                let f = if dec.leading == LeadingSpace::StripOne && b == b' ' {
                    Vec::new()
                } else {
                    t.clone()
                };
                (t, f)
            } else {
                let t: Vec<u8> = p.replace('\u{2581}', " ").into_bytes();
                let f: Vec<u8> = match dec.leading {
                    LeadingSpace::Keep => t.clone(),
                    LeadingSpace::StripOne => {
                        if t.first() == Some(&b' ') {
                            t[1..].to_vec()
                        } else {
                            t.clone()
                        }
                    }
                    LeadingSpace::MetaspaceFirst => p.replace('\u{2581}', "").into_bytes(),
                };
                (t, f)
            };
            text.push(t);
            first_text.push(f);
        }
        if eos.is_empty() {
            return Err(bad("no EOS token found (looked for </s>, <|endoftext|>, <|im_end|>, <|eot_id|>, <eos>); use Vocab::new"));
        }
        let mut v = Vocab::new(text, Some(first_text), special, eos, unk)?;
        v.name = "tokenizer.json".into();
        Ok(v)
    }

    /// Number of token ids.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Number of u32 words in a mask over this vocabulary.
    pub fn mask_words(&self) -> usize {
        self.text.len().div_ceil(32)
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(true)
    }

    /// Decoded bytes of a token (not first position). Empty for special tokens.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.text
            .get(id as usize)
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }

    /// Decoded bytes of a token as the first generated token.
    pub fn first_token_bytes(&self, id: u32) -> &[u8] {
        self.first_text
            .get(id as usize)
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }

    /// Is there a non-special token whose text is exactly this one character?
    pub fn can_spell_char(&self, c: char) -> bool {
        let mut buf = [0u8; 4];
        let s = c.encode_utf8(&mut buf).as_bytes();
        self.text
            .iter()
            .zip(&self.special)
            .any(|(t, &sp)| !sp && t.as_slice() == s)
    }

    /// The decoded text of a token sequence by this module's rule (specials, EOS and `<unk>` omitted).
    pub fn decode_lossy(&self, ids: &[u32]) -> String {
        let mut out = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            out.extend_from_slice(if i == 0 {
                self.first_token_bytes(id)
            } else {
                self.token_bytes(id)
            });
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// What the decoder section of tokenizer.json tells us.
struct DecoderInfo {
    leading: LeadingSpace,
    byte_fallback: bool,
    byte_level: bool,
}

impl DecoderInfo {
    fn from_json(d: &Value) -> DecoderInfo {
        let mut info = DecoderInfo {
            leading: LeadingSpace::Keep,
            byte_fallback: false,
            byte_level: false,
        };
        info.visit(d);
        info
    }

    fn visit(&mut self, d: &Value) {
        match d.get("type").and_then(Value::as_str) {
            Some("Sequence") => {
                if let Some(Value::Array(list)) = d.get("decoders") {
                    for x in list {
                        self.visit(x);
                    }
                }
            }
            Some("Metaspace") => {
                // Old files: add_prefix_space: bool; new files: prepend_scheme always|first|never.
                let prepend = match d.get("prepend_scheme").and_then(Value::as_str) {
                    Some("never") => false,
                    Some(_) => true,
                    None => d
                        .get("add_prefix_space")
                        .and_then(Value::as_bool)
                        .unwrap_or(true),
                };
                if prepend {
                    self.leading = LeadingSpace::MetaspaceFirst;
                }
            }
            Some("Strip") => {
                let start = d.get("start").and_then(Value::as_u64).unwrap_or(0);
                let content = d.get("content").and_then(Value::as_str).unwrap_or(" ");
                if start >= 1 && content == " " {
                    self.leading = LeadingSpace::StripOne;
                }
            }
            Some("ByteFallback") => self.byte_fallback = true,
            Some("ByteLevel") => self.byte_level = true,
            _ => {}
        }
    }
}

/// `<0xNN>` → NN.
fn parse_byte_piece(p: &str) -> Option<u8> {
    let hex = p.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// GPT-2's reversible byte ↔ unicode table (printable Latin-1 bytes map to themselves, the rest to
/// U+0100 onwards), inverted: char → byte.
fn byte_level_table() -> HashMap<char, u8> {
    let mut map = HashMap::new();
    let mut n = 0u32;
    for b in 0u32..256 {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let c = if printable {
            b
        } else {
            n += 1;
            255 + n
        };
        if let Some(ch) = char::from_u32(c) {
            map.insert(ch, b as u8);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unigram_metaspace_first_token_rule() {
        let j = r#"{"model": {"type": "Unigram", "unk_id": 2, "vocab": [["<pad>", 0.0], ["</s>", 0.0], ["<unk>", 0.0], ["▁", -1.0], ["▁the", -2.0], ["a", -3.0]]},
            "added_tokens": [{"id": 0, "content": "<pad>", "special": true}, {"id": 1, "content": "</s>", "special": true}, {"id": 2, "content": "<unk>", "special": true}],
            "decoder": {"type": "Metaspace", "replacement": "▁", "add_prefix_space": true}}"#;
        let v = Vocab::from_tokenizer_json(j).expect("parse");
        assert_eq!(v.eos_ids(), &[1]);
        assert_eq!(v.unk_id(), Some(2));
        assert_eq!(v.token_bytes(3), b" ");
        assert_eq!(v.first_token_bytes(3), b"");
        assert_eq!(v.first_token_bytes(4), b"the");
        assert_eq!(v.decode_lossy(&[4, 5, 3, 4]), "thea  the");
        assert!(v.is_special(0) && v.is_special(2) && !v.is_special(5));
    }

    #[test]
    fn bpe_byte_fallback_and_byte_level() {
        let j = r#"{"model": {"type": "BPE", "byte_fallback": true, "unk_token": "<unk>", "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x0A>": 3, "<0xE2>": 4, "▁{": 5}},
            "added_tokens": [{"id": 0, "content": "<unk>", "special": true}, {"id": 1, "content": "<s>", "special": true}, {"id": 2, "content": "</s>", "special": true}],
            "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}}"#;
        let v = Vocab::from_tokenizer_json(j).expect("parse");
        assert_eq!(v.eos_ids(), &[2]);
        assert_eq!(v.token_bytes(3), b"\n");
        assert_eq!(v.token_bytes(4), &[0xE2]);
        assert_eq!(v.token_bytes(5), b" {");
        assert_eq!(v.first_token_bytes(5), b"{");
        let j = r#"{"model": {"type": "BPE", "vocab": {"Ġhello": 0, "Ċ": 1, "<|endoftext|>": 2}},
            "added_tokens": [{"id": 2, "content": "<|endoftext|>", "special": true}],
            "decoder": {"type": "ByteLevel"}}"#;
        let v = Vocab::from_tokenizer_json(j).expect("parse");
        assert_eq!(v.token_bytes(0), b" hello");
        assert_eq!(v.token_bytes(1), b"\n");
        assert_eq!(v.eos_ids(), &[2]);
        assert!(Vocab::from_tokenizer_json(r#"{"model": {"vocab": {"a": 0}}}"#).is_err());
        assert!(Vocab::from_tokenizer_json("/nonexistent/tokenizer.json").is_err());
    }
}
