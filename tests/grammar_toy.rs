//! Level 1 of the grammar tests: a hand-checkable toy vocabulary.
//!
//! Every expected mask below was worked out by hand from the schema, the json.dumps surface and
//! the token budget rule (a token is allowed only if the document can still be completed in the
//! tokens left); the comments show the reasoning.

use jobx_engine::grammar::matcher::apply_mask_words;
use jobx_engine::grammar::{CompileOptions, Grammar, GrammarError, Matcher, Vocab};
use serde_json::{json, Value};
use std::sync::Arc;

/// Builds a vocabulary from plain strings; ids 0 (`</s>`, EOS) and 1 (`<unk>`) are special.
fn toy_vocab(pieces: &[&str]) -> Arc<Vocab> {
    let mut text: Vec<Vec<u8>> = vec![Vec::new(), Vec::new()];
    text.extend(pieces.iter().map(|p| p.as_bytes().to_vec()));
    let mut special = vec![false; text.len()];
    special[0] = true;
    special[1] = true;
    Arc::new(Vocab::new(text, None, special, vec![0], Some(1)).expect("toy vocab"))
}

fn allowed(m: &Matcher) -> Vec<u32> {
    let words = m.mask();
    (0..words.len() as u32 * 32)
        .filter(|&t| {
            words
                .get(t as usize / 32)
                .is_some_and(|w| w >> (t % 32) & 1 == 1)
        })
        .collect()
}

fn one_string_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"a": {"type": "string", "maxLength": 2}},
        "required": ["a"],
        "additionalProperties": false
    })
}

// ids:              2    3    4     5    6    7    8    9    10       11      12    13    14   15   16   17     18   19   20   21
const PIECES: &[&str] = &[
    "{", "}", "\"", "a", "b", ":", " ", ",", "\"a\"", ": \"", "ab", "\\", "n", "[", "]", "\"}",
    "1", "u", "0", "\", \"",
];

#[test]
fn toy_masks_step_by_step() {
    let v = toy_vocab(PIECES);
    let g = Grammar::compile(&one_string_schema(), v, &CompileOptions::default()).expect("compile");
    // The vocabulary spells { } \ so the literal surface is chosen.
    assert!(!g.uses_unk());
    // Shortest document {"a": ""} = `{` `"a"` `: "` `"}`.
    assert_eq!(g.min_tokens(), 4);
    let mut m = Matcher::new(g.clone(), 100);
    // Start: only `{`.
    assert_eq!(allowed(&m), vec![2]);
    assert_eq!(m.forced_tokens(), vec![2]);
    m.commit_token(2).expect("{");
    // After `{`: the key starts with `"`, either alone or as the token `"a"`.
    assert_eq!(allowed(&m), vec![4, 10]);
    m.commit_token(10).expect("\"a\"");
    // After `{"a"`: `: ` then `"`: tokens `:` and `: "`.
    assert_eq!(allowed(&m), vec![7, 11]);
    m.commit_token(11).expect(": \"");
    // Inside the string, 0 of at most 2 characters: every content token of <= 2 characters,
    // the closing quote alone or with `}`, the escape `\`; and `: "` (two characters, then the
    // closing quote). Not: EOS, <unk>, `"a"` (closes, then `a`), `", "` (no second property).
    assert_eq!(
        allowed(&m),
        vec![2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]
    );
    m.commit_token(12).expect("ab");
    // Two characters used: only the closing quote (alone or with `}`).
    assert_eq!(allowed(&m), vec![4, 17]);
    assert!(!m.is_complete());
    m.commit_token(17).expect("\"}");
    // Complete: EOS only, forced.
    assert!(m.is_complete());
    assert_eq!(allowed(&m), vec![0]);
    assert_eq!(m.forced_tokens(), vec![0]);
    m.commit_token(0).expect("eos");
    assert!(m.is_finished());
    assert!(allowed(&m).is_empty());
    assert_eq!(
        g.decode_text(&[2, 10, 11, 12, 17, 0]).expect("decode"),
        r#"{"a": "ab"}"#
    );
}

#[test]
fn toy_escapes_count_as_one_character() {
    let v = toy_vocab(PIECES);
    let g = Grammar::compile(&one_string_schema(), v, &CompileOptions::default()).expect("compile");
    let mut m = Matcher::new(g.clone(), 100);
    // {"a": "\n1"} : `\n` is one character, `1` the second, then only the closing quote.
    for t in [2, 10, 11, 13, 14, 18] {
        m.commit_token(t)
            .unwrap_or_else(|e| panic!("token {t}: {e}"));
    }
    assert_eq!(allowed(&m), vec![4, 17]);
    // After `\`: tokens starting with an escape character: `"` (4), `b` (6, \b), `\` (13),
    // `n` (14), `u` (19); and `"a"` (10: \" then `a`, two characters, then the closing quote)
    // and `"}` (17: \" then `}` as the second character). `a` is not an escape character.
    let mut m = Matcher::new(g.clone(), 100);
    for t in [2, 10, 11, 13] {
        m.commit_token(t).expect("prefix");
    }
    assert_eq!(allowed(&m), vec![4, 6, 10, 13, 14, 17, 19]);
    assert!(m.commit_token(5).is_err());
    // \u then hex digits: `0` is hex, `a` and `b` are hex, `u` is not.
    m.commit_token(19).expect("u");
    assert!(m.is_allowed(20) && m.is_allowed(5) && m.is_allowed(6) && m.is_allowed(18));
    assert!(!m.is_allowed(19) && !m.is_allowed(4));
}

#[test]
fn toy_budget_forces_the_shortest_document() {
    let v = toy_vocab(PIECES);
    let g = Grammar::compile(&one_string_schema(), v, &CompileOptions::default()).expect("compile");
    // The budget counts EOS. 5 tokens: exactly the minimal document and EOS (id 0), every step
    // forced.
    let m = Matcher::new(g.clone(), 5);
    assert_eq!(m.forced_tokens(), vec![2, 10, 11, 17, 0]);
    // After `{` with 4 tokens left: `"` alone would need `a` `"` `: "` `"}` (4 more) plus EOS:
    // not allowed.
    let mut m = Matcher::new(g.clone(), 5);
    m.commit_token(2).expect("{");
    assert_eq!(allowed(&m), vec![10]);
    // 6 tokens: after {"a": " three tokens are left (EOS included), so a token must end one
    // token away from the end of the document: everything of the unbudgeted mask except `\` (an
    // escape needs at least two more tokens); `: "` is fine (two characters, closing quote, then
    // `}`).
    let mut m = Matcher::new(g.clone(), 6);
    for t in [2, 10, 11] {
        m.commit_token(t).expect("prefix");
    }
    assert_eq!(
        allowed(&m),
        vec![2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 14, 15, 16, 17, 18, 19, 20]
    );
    // The document is done with one token left: only EOS.
    let mut m = Matcher::new(g.clone(), 5);
    for t in [2, 10, 11, 17] {
        m.commit_token(t).expect("document");
    }
    assert_eq!(allowed(&m), vec![0]);
    // Too small a budget: 4 tokens hold the document but not its EOS, so nothing fits.
    let m = Matcher::new(g.clone(), 4);
    assert!(allowed(&m).is_empty());
}

#[test]
fn toy_unk_surface_for_braces() {
    // No `{` or `}` in this vocabulary: they go through <unk> (id 1); `\` is spellable.
    let v = toy_vocab(&["\"", "a", ": ", "\"a\"", "\\", "n"]);
    let g = Grammar::compile(&one_string_schema(), v, &CompileOptions::default()).expect("compile");
    assert!(g.uses_unk());
    let mut m = Matcher::new(g.clone(), 100);
    assert_eq!(allowed(&m), vec![1]);
    for t in [1, 5, 4, 2] {
        m.commit_token(t).expect("prefix");
    }
    // In the string <unk> is not allowed (it would be `{` or `}` there); `\` is.
    assert!(!m.is_allowed(1));
    assert!(m.is_allowed(6));
    for t in [3, 2] {
        m.commit_token(t).expect("a\"");
    }
    // After the string only `}` fits: <unk>, forced, then EOS.
    assert_eq!(m.forced_tokens(), vec![1, 0]);
    assert_eq!(
        g.decode_text(&[1, 5, 4, 2, 3, 2, 1, 0]).expect("decode"),
        r#"{"a": "a"}"#
    );
}

#[test]
fn toy_unk_surface_for_backslash() {
    // No `{`, `}` or `\`: inside strings <unk> is the backslash of an escape.
    let v = toy_vocab(&["\"", "a", ": ", "\"a\"", "u", "0", "e", "9", "n"]);
    let g = Grammar::compile(&one_string_schema(), v, &CompileOptions::default()).expect("compile");
    let toks = [1, 5, 4, 2, 1, 6, 7, 7, 8, 9, 2, 1, 0];
    let mut m = Matcher::new(g.clone(), 100);
    for &t in &toks {
        m.commit_token(t)
            .unwrap_or_else(|e| panic!("token {t}: {e}"));
    }
    let text = g.decode_text(&toks).expect("decode");
    assert_eq!(text, r#"{"a": "\u00e9"}"#);
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["a"], "é");
}

#[test]
fn toy_clone_for_beams_and_logits() {
    let v = toy_vocab(PIECES);
    let g = Grammar::compile(&one_string_schema(), v, &CompileOptions::default()).expect("compile");
    let mut a = Matcher::new(g.clone(), 100);
    for t in [2, 10, 11] {
        a.commit_token(t).expect("prefix");
    }
    let mut b = a.clone();
    a.commit_token(17).expect("close");
    b.commit_token(5).expect("a");
    assert!(a.is_complete() && !b.is_complete());
    // A rejected token leaves the state unchanged.
    let before = allowed(&b);
    assert!(matches!(
        b.commit_token(10),
        Err(GrammarError::TokenRejected { .. })
    ));
    assert_eq!(allowed(&b), before);
    // Logits beyond the vocabulary (padding) are masked too.
    let mut logits = vec![0.0f32; 40];
    apply_mask_words(a.mask(), &mut logits);
    let finite: Vec<usize> = logits
        .iter()
        .enumerate()
        .filter(|(_, x)| x.is_finite())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(finite, vec![0]);
    let mut words = vec![7u32; 3];
    a.compute_mask(&mut words);
    assert_eq!(words, vec![1, 0, 0]);
}

#[test]
fn toy_optional_properties_and_arrays() {
    let v = toy_vocab(&[
        "{", "}", "\"", "a", "b", ": ", ", ", "[", "]", "1", "\"a\"", "\"b\"",
    ]);
    let schema = json!({
        "type": "object",
        "properties": {
            "a": {"type": "integer"},
            "b": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2}
        },
        "additionalProperties": false
    });
    let g = Grammar::compile(&schema, v, &CompileOptions::default()).expect("compile");
    // {} is valid: `{` `}`.
    assert_eq!(g.min_tokens(), 2);
    let ok = |toks: &[u32]| {
        let mut m = Matcher::new(g.clone(), 100);
        for &t in toks {
            if m.commit_token(t).is_err() {
                return false;
            }
        }
        m.is_complete()
    };
    // ids: { 2, } 3, " 4, a 5, b 6, ": " 7, ", " 8, [ 9, ] 10, 1 11, "a" 12, "b" 13
    assert!(ok(&[2, 3]));
    assert!(ok(&[2, 12, 7, 11, 3])); // {"a": 1}
    assert!(ok(&[2, 13, 7, 9, 11, 8, 11, 10, 3])); // {"b": [1, 1]}
    assert!(ok(&[2, 12, 7, 11, 8, 13, 7, 9, 11, 10, 3])); // {"a": 1, "b": [1]}
    assert!(!ok(&[2, 13, 7, 9, 10, 3])); // minItems 1
    assert!(!ok(&[2, 13, 7, 9, 11, 8, 11, 8, 11, 10, 3])); // maxItems 2
    assert!(!ok(&[2, 13, 7, 9, 11, 10, 8, 12, 7, 11, 3])); // declared order
    assert!(!ok(&[2, 12, 7, 11, 8, 12, 7, 11, 3])); // repeated key
    assert!(!ok(&[
        2, 12, 7, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 3
    ])); // 20 digits
}

#[test]
fn schema_errors_name_the_keyword() {
    let v = toy_vocab(PIECES);
    let err = |s: Value| match Grammar::compile(&s, v.clone(), &CompileOptions::default()) {
        Ok(_) => panic!("schema should not compile: {s}"),
        Err(e) => e.to_string(),
    };
    let e = err(json!({"type": "string", "pattern": "^a"}));
    assert!(e.contains("'pattern'") && e.contains("'#'"), "{e}");
    let e =
        err(json!({"type": "object", "properties": {"p": {"type": "string", "format": "date"}}}));
    assert!(
        e.contains("'format'") && e.contains("#/properties/p"),
        "{e}"
    );
    let e = err(json!({"type": "integer", "maxLength": 3}));
    assert!(e.contains("maxLength"), "{e}");
    let e = err(
        json!({"$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}}}, "$ref": "#/$defs/n"}),
    );
    assert!(e.contains("recursive"), "{e}");
    let e = err(
        json!({"type": "array", "items": {"type": "array", "items": {"type": "string"}, "maxItems": 3000}, "maxItems": 3000}),
    );
    assert!(e.contains("budget"), "{e}");
}
