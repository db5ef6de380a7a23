//! The surface syntax: which exact text a document is spelled as, per vocabulary.
//!
//! Default = Python `json.dumps(obj)`: separators `", "` and `": "`, no other whitespace,
//! `ensure_ascii=True` (every non-ASCII character as lowercase `\uXXXX`, surrogate pairs above
//! U+FFFF), `\"` `\\` `\n` `\r` `\t` `\b` `\f` and `\u00XX` for other control characters. This is the
//! text the reference project trained on (SPEC.md §1.1).
//!
//! The `<unk>` representation: T5's vocabulary cannot spell `{`, `}` or `\`; its tokenizer turns each
//! into `<unk>` (id 2), and a FLAN-T5 fine-tuned on json.dumps targets emits `<unk>` there. So for
//! every structural character the vocabulary cannot spell, the automaton uses the byte [`UNK_BYTE`]
//! (0xFF, never part of valid UTF-8) and the `<unk>` token is the only token with that text. At any
//! automaton state at most one of `{`, `}`, `\` is legal (value start: `{`; after a member: `}`;
//! inside a string: `\`), so each `<unk>` maps back to exactly one character (`Grammar::decode_text`).
//! Characters inside strings that the vocabulary cannot spell (T5: `^`, `` ` ``, `~`, and `{`/`}`
//! themselves) are written as `\u00XX` escapes in enum/const/key literals; free strings can use any
//! escape, so every string is producible.
//!
//! The choice is automatic ([`StructuralMode::Auto`]): a structural character goes through `<unk>`
//! exactly when no token decodes to that single character. Flags select other representations for
//! models trained otherwise: `Literal`/`Unk` force the choice, [`Separators::Compact`] gives `,` and
//! `:` (json.dumps with `separators=(",", ":")`), `ascii: false` keeps non-ASCII as raw UTF-8
//! (`ensure_ascii=False`).

use super::vocab::Vocab;
use super::{GrammarError, Result};
use serde_json::Value;

/// The byte that stands for `<unk>` in the automaton's alphabet.
pub const UNK_BYTE: u8 = 0xFF;

/// How `{`, `}` and `\` are represented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StructuralMode {
    /// `<unk>` for each of the three the vocabulary cannot spell, literal for the others.
    #[default]
    Auto,
    /// Always the literal characters (fails to compile if the vocabulary cannot spell them).
    Literal,
    /// Always `<unk>` for all three (needs an `<unk>` token).
    Unk,
}

/// Separators between items and after keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Separators {
    /// `", "` and `": "` (json.dumps default).
    #[default]
    Python,
    /// `","` and `":"`.
    Compact,
}

/// User-facing surface options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SurfaceOptions {
    pub structural: StructuralMode,
    pub separators: Separators,
    /// `true`: ensure_ascii (non-ASCII escaped); `false`: raw UTF-8 in strings.
    pub ascii: bool,
}

impl Default for SurfaceOptions {
    fn default() -> Self {
        SurfaceOptions {
            structural: StructuralMode::Auto,
            separators: Separators::Python,
            ascii: true,
        }
    }
}

impl SurfaceOptions {
    /// Parses `auto|literal|unk`.
    pub fn parse_structural(s: &str) -> Result<StructuralMode> {
        match s {
            "auto" => Ok(StructuralMode::Auto),
            "literal" => Ok(StructuralMode::Literal),
            "unk" => Ok(StructuralMode::Unk),
            _ => Err(GrammarError::Vocab(format!(
                "unknown structural mode '{s}' (auto|literal|unk)"
            ))),
        }
    }
}

/// A surface resolved against a vocabulary.
#[derive(Debug, Clone)]
pub struct Surface {
    /// Automaton byte for `{`, `}`, `\` (the character itself or [`UNK_BYTE`]).
    pub lbrace: u8,
    pub rbrace: u8,
    pub bslash: u8,
    pub item_sep: &'static [u8],
    pub key_sep: &'static [u8],
    pub ascii: bool,
    /// ASCII characters the vocabulary can spell as a single token.
    spell_ascii: [bool; 128],
    /// The vocabulary's spelling facts (single-character tokens, byte fallback).
    index: std::sync::Arc<super::vocab::VocabIndex>,
}

impl Surface {
    /// Resolves the options against a vocabulary.
    pub fn resolve(opts: &SurfaceOptions, vocab: &Vocab) -> Result<Surface> {
        let index = vocab.index(opts.ascii);
        let spell_ascii = index.spell_ascii;
        let pick = |c: u8| -> Result<u8> {
            let can = spell_ascii[c as usize];
            let use_unk = match opts.structural {
                StructuralMode::Auto => !can,
                StructuralMode::Literal => {
                    if !can {
                        return Err(GrammarError::Vocab(format!(
                            "the vocabulary cannot spell '{}' but the literal surface was requested",
                            c as char
                        )));
                    }
                    false
                }
                StructuralMode::Unk => true,
            };
            if use_unk {
                if vocab.unk.is_none() {
                    return Err(GrammarError::Vocab(format!(
                        "the vocabulary cannot spell '{}' and has no <unk> token",
                        c as char
                    )));
                }
                Ok(UNK_BYTE)
            } else {
                Ok(c)
            }
        };
        let (item_sep, key_sep): (&'static [u8], &'static [u8]) = match opts.separators {
            Separators::Python => (b", ", b": "),
            Separators::Compact => (b",", b":"),
        };
        Ok(Surface {
            lbrace: pick(b'{')?,
            rbrace: pick(b'}')?,
            bslash: pick(b'\\')?,
            item_sep,
            key_sep,
            ascii: opts.ascii,
            spell_ascii,
            index,
        })
    }

    /// Does this surface use `<unk>` for any structural character?
    pub fn uses_unk(&self) -> bool {
        self.lbrace == UNK_BYTE || self.rbrace == UNK_BYTE || self.bslash == UNK_BYTE
    }

    /// Maps a raw structural byte to its automaton byte (`{` `}` `\` may become [`UNK_BYTE`]).
    pub fn map_byte(&self, b: u8) -> u8 {
        match b {
            b'{' => self.lbrace,
            b'}' => self.rbrace,
            b'\\' => self.bslash,
            _ => b,
        }
    }

    /// Is this character written raw inside a string literal (enum/const/keys)?
    fn raw_in_string(&self, c: char) -> bool {
        let u = c as u32;
        if u < 0x80 {
            (0x20..0x7F).contains(&u) && c != '"' && c != '\\' && self.spell_ascii[u as usize]
        } else {
            !self.ascii && (self.index.byte_fallback || self.index.single_chars.contains(&c))
        }
    }

    /// Spells a string as a JSON string literal (with quotes) in raw bytes: structural `\` is still
    /// the raw backslash here; [`Surface::map_byte`] is applied when the automaton is built.
    pub fn spell_string(&self, s: &str, out: &mut Vec<u8>) {
        out.push(b'"');
        for c in s.chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                '\u{8}' => out.extend_from_slice(b"\\b"),
                '\u{c}' => out.extend_from_slice(b"\\f"),
                _ if self.raw_in_string(c) => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                _ => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.extend_from_slice(format!("\\u{:04x}", unit).as_bytes());
                    }
                }
            }
        }
        out.push(b'"');
    }

    /// Spells any JSON value as json.dumps would (keys in their stored order), raw bytes.
    pub fn spell_value(&self, v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(true) => out.extend_from_slice(b"true"),
            Value::Bool(false) => out.extend_from_slice(b"false"),
            Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Value::String(s) => self.spell_string(s, out),
            Value::Array(a) => {
                out.push(b'[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(self.item_sep);
                    }
                    self.spell_value(x, out);
                }
                out.push(b']');
            }
            Value::Object(m) => {
                out.push(b'{');
                for (i, (k, x)) in m.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(self.item_sep);
                    }
                    self.spell_string(k, out);
                    out.extend_from_slice(self.key_sep);
                    self.spell_value(x, out);
                }
                out.push(b'}');
            }
        }
    }

    /// The automaton bytes of a value: [`Surface::spell_value`] then [`Surface::map_byte`].
    /// Inside strings a raw `{`/`}` is only present when spellable (then not mapped to `<unk>`).
    pub fn value_bytes(&self, v: &Value) -> Vec<u8> {
        let mut raw = Vec::new();
        self.spell_value(v, &mut raw);
        self.map_structural(&raw)
    }

    /// Maps structural characters of a json.dumps-style text to automaton bytes: `{`/`}` outside
    /// strings and every `\` (inside strings `\` only appears as an escape).
    pub fn map_structural(&self, raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(raw.len());
        let mut in_str = false;
        let mut esc = false;
        for &b in raw {
            if in_str {
                if esc {
                    esc = false;
                    out.push(if b == b'\\' { self.bslash } else { b });
                    continue;
                }
                match b {
                    b'\\' => {
                        esc = true;
                        out.push(self.bslash);
                    }
                    b'"' => {
                        in_str = false;
                        out.push(b);
                    }
                    _ => out.push(b),
                }
            } else {
                if b == b'"' {
                    in_str = true;
                }
                out.push(self.map_byte(b));
            }
        }
        out
    }
}
