//! Level 2 of the grammar tests: token-by-token accept/reject with the real T5 and Mistral
//! tokenizers (tests/fixtures/tokenizers, Apache-2.0, see the README there).
//!
//! - The module's decoding rule (per-token bytes, first-token leading space dropped) equals the
//!   `tokenizers` crate's `decode(ids, skip_special_tokens = true)` on random token sequences.
//! - Every reference target (`expected_json` of ../shared/seed/eval-results), tokenized by the real
//!   tokenizer as in training, is accepted token by token, complete at the end, and maps back to
//!   exactly the target text (T5: `<unk>` becomes `{`, `}` or `\`).
//! - Invalid documents are rejected at the first token that leaves the language.

use jobx_engine::grammar::{job_schema, CompileOptions, Grammar, Matcher, SurfaceOptions, Vocab};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use tokenizers::Tokenizer;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tokenizer_path(name: &str) -> String {
    root()
        .join("tests/fixtures/tokenizers")
        .join(name)
        .join("tokenizer.json")
        .to_string_lossy()
        .into_owned()
}

fn load(name: &str) -> (Arc<Vocab>, Tokenizer) {
    let p = tokenizer_path(name);
    let v = Vocab::from_tokenizer_json(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
    let t = Tokenizer::from_file(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
    (Arc::new(v), t)
}

/// The `expected_json` strings of one eval-results file (the shared folder sits beside the repo).
fn targets(file: &str) -> Vec<String> {
    let p = root().join("../shared/seed/eval-results").join(file);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the shared/ folder must sit beside the repository)",
            p.display()
        )
    });
    let v: Value = serde_json::from_str(&text).expect("eval json");
    v["evaluation_results"]
        .as_array()
        .expect("records")
        .iter()
        .filter_map(|r| r["expected_json"].as_str().map(str::to_string))
        .collect()
}

/// Splitmix64 for reproducible random sequences.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn encode(tok: &Tokenizer, text: &str) -> Vec<u32> {
    tok.encode(text, false).expect("encode").get_ids().to_vec()
}

/// Walks tokens through a fresh matcher; Ok(complete) or Err(index of the rejected token).
fn walk(g: &Arc<Grammar>, ids: &[u32]) -> Result<bool, usize> {
    let mut m = Matcher::new(g.clone(), u32::MAX);
    for (i, &t) in ids.iter().enumerate() {
        m.commit_token(t).map_err(|_| i)?;
    }
    Ok(m.is_complete())
}

#[test]
fn decode_rule_matches_the_tokenizers_crate() {
    for name in ["t5", "mistral-7b-v0.1"] {
        let (v, tok) = load(name);
        let mut rng = Rng(7);
        // Ordinary tokens: not special, and no lone UTF-8 bytes (those only decode in groups).
        let ids: Vec<u32> = (0..v.len() as u32)
            .filter(|&i| {
                !v.is_special(i) && v.token_bytes(i).iter().all(|&b| b < 0x80)
                    || std::str::from_utf8(v.token_bytes(i)).is_ok()
                        && !v.is_special(i)
                        && !v.token_bytes(i).is_empty()
                        && v.token_bytes(i).len() > 1
            })
            .collect();
        let mut checked = 0;
        for _ in 0..3000 {
            let len = 1 + rng.below(12);
            let seq: Vec<u32> = (0..len).map(|_| ids[rng.below(ids.len())]).collect();
            let ours = v.decode_lossy(&seq);
            let theirs = tok.decode(&seq, true).expect("decode");
            assert_eq!(ours, theirs, "{name}: {seq:?}");
            checked += 1;
        }
        assert_eq!(checked, 3000);
    }
    // Byte fallback: <0xE2><0x80><0x99> is U+2019 (Mistral ids 229, 131, 156).
    let (v, tok) = load("mistral-7b-v0.1");
    let seq = [0xE2u32 + 3, 0x80 + 3, 0x99 + 3];
    assert_eq!(v.decode_lossy(&seq), "\u{2019}");
    assert_eq!(tok.decode(&seq, true).expect("decode"), "\u{2019}");
    // T5: the lone `▁` (id 3) decodes to "" as the first token and to " " later.
    let (v, tok) = load("t5");
    assert_eq!(v.decode_lossy(&[3]), "");
    assert_eq!(tok.decode(&[3], true).expect("decode"), "");
    assert_eq!(
        v.decode_lossy(&[8, 3, 8]),
        tok.decode(&[8, 3, 8], true).expect("decode")
    );
}

/// T5 cannot spell `~`, `^` or a backtick: its tokenizer turns them into <unk> too, which the
/// grammar reads as `\` inside strings. Such targets are not representable as trained.
fn t5_representable(s: &str) -> bool {
    !s.contains(['~', '^', '`'])
}

#[test]
fn reference_targets_are_accepted_and_map_back_exactly() {
    let cases = [
        ("t5", "flan_t5_large_eval.json"),
        ("mistral-7b-v0.1", "mistral_lora_eval.json"),
        ("mistral-7b-v0.1", "flan_t5_large_eval.json"),
    ];
    let schema = job_schema();
    for (name, file) in cases {
        let (v, tok) = load(name);
        let g = Grammar::compile(&schema, v.clone(), &CompileOptions::default()).expect("compile");
        assert_eq!(g.uses_unk(), name == "t5");
        let eos = v.eos_ids()[0];
        let (mut accepted, mut skipped_not_schema, mut skipped_t5) = (0, 0, 0);
        for (i, target) in targets(file).iter().enumerate() {
            let doc: Value = serde_json::from_str(target).expect("target json");
            if jobx_engine::grammar::validate::validate(&schema, &doc).is_err() {
                // One row has work_location as a list.
                skipped_not_schema += 1;
                continue;
            }
            if name == "t5" && !t5_representable(target) {
                skipped_t5 += 1;
                continue;
            }
            let mut ids = encode(&tok, target);
            ids.push(eos);
            match walk(&g, &ids) {
                Ok(true) => {}
                Ok(false) => panic!("{name} {file} #{i}: not complete"),
                Err(k) => panic!(
                    "{name} {file} #{i}: token {k} ({:?}) rejected after {:?}",
                    tok.id_to_token(ids[k]),
                    v.decode_lossy(&ids[..k])
                ),
            }
            let back = g.decode_text(&ids).expect("decode");
            // T5's normaliser collapses runs of spaces; nothing else may differ.
            let want = if name == "t5" {
                collapse_spaces(target)
            } else {
                target.clone()
            };
            assert_eq!(back, want, "{name} {file} #{i}");
            accepted += 1;
        }
        eprintln!("{name} {file}: {accepted} accepted, {skipped_not_schema} not schema-valid, {skipped_t5} not spellable by T5");
        assert!(accepted >= 990, "{name} {file}: only {accepted} accepted");
        assert!(skipped_not_schema <= 2);
    }
}

fn collapse_spaces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_space = false;
    for c in s.chars() {
        if c == ' ' && prev_space {
            continue;
        }
        prev_space = c == ' ';
        out.push(c);
    }
    out
}

const VALID: &str = r#"{"experience_level": "Mid-level", "employment_status": [], "work_location": "On-site", "salary": {"min": "1", "max": "", "period": "year", "currency": "USD"}, "benefits": [], "job_functions": ["Software Engineering"], "required_skills": {"programming_languages": ["C++", "Python"], "tools": [], "frameworks": [], "databases": [], "other": []}, "required_certifications": [], "required_minimum_degree": "Bachelor\u2019s", "required_experience": "5+ years", "industries": ["Software"], "additional_keywords": ["a \"quoted\" word"]}"#;

#[test]
fn invalid_documents_are_rejected() {
    let invalid: Vec<(&str, String)> = vec![
        ("missing keys", r#"{"experience_level": "x"}"#.to_string()),
        ("compact separators", VALID.replace("\": ", "\":")),
        (
            "key order",
            VALID.replace(
                "\"experience_level\": \"Mid-level\", \"employment_status\": []",
                "\"employment_status\": [], \"experience_level\": \"Mid-level\"",
            ),
        ),
        (
            "null value",
            VALID.replace("\"work_location\": \"On-site\"", "\"work_location\": null"),
        ),
        (
            "list for string",
            VALID.replace(
                "\"work_location\": \"On-site\"",
                "\"work_location\": [\"Remote\"]",
            ),
        ),
        (
            "extra key",
            VALID.replace(
                "{\"experience_level\"",
                "{\"id\": \"1\", \"experience_level\"",
            ),
        ),
        ("trailing text", format!("{VALID} ok")),
        // T5's normaliser turns the newline and indent into one space: still rejected after `{`.
        (
            "pretty printed",
            VALID.replace("{\"experience_level\"", "{\n  \"experience_level\""),
        ),
        ("raw non-ASCII", VALID.replace("\\u2019", "\u{2019}")),
        ("bad escape", VALID.replace("\\u2019", "\\x2019")),
        ("lone surrogate", VALID.replace("\\u2019", "\\ud800")),
        ("unclosed", VALID.trim_end_matches('}').to_string()),
    ];
    let schema = job_schema();
    for name in ["t5", "mistral-7b-v0.1"] {
        let (v, tok) = load(name);
        let g = Grammar::compile(&schema, v.clone(), &CompileOptions::default()).expect("compile");
        let eos = v.eos_ids()[0];
        let mut ids = encode(&tok, VALID);
        ids.push(eos);
        assert_eq!(walk(&g, &ids), Ok(true), "{name}: the valid document");
        assert_eq!(g.decode_text(&ids).expect("decode"), VALID);
        for (what, text) in &invalid {
            let mut ids = encode(&tok, text);
            ids.push(eos);
            let r = walk(&g, &ids);
            assert!(r != Ok(true), "{name}: '{what}' was accepted");
        }
        // Special tokens never appear inside the document.
        let mut ids = encode(&tok, VALID);
        for (sp, _) in tok.get_added_tokens_decoder() {
            if v.unk_id() == Some(sp) && g.uses_unk() {
                continue;
            }
            let mut bad = ids.clone();
            bad.insert(5, sp);
            assert!(
                walk(&g, &bad).is_err(),
                "{name}: special token {sp} accepted"
            );
        }
        // EOS before the end is rejected, and only EOS is allowed at the end.
        ids.truncate(10);
        ids.push(eos);
        assert_eq!(walk(&g, &ids), Err(10));
    }
    // An escaped backslash: T5's tokenizer fuses the two unknown characters into ONE <unk>, while
    // the constraint spells each `\` as its own <unk> (documented limitation), so only Mistral here.
    let (v, tok) = load("mistral-7b-v0.1");
    let g = Grammar::compile(&schema, v.clone(), &CompileOptions::default()).expect("compile");
    let bs = VALID.replace(" word\"", " back\\\\slash\"");
    let mut ids = encode(&tok, &bs);
    ids.push(v.eos_ids()[0]);
    if let Err(k) = walk(&g, &ids) {
        panic!(
            "rejected token {k} {:?} after {:?}",
            tok.id_to_token(ids[k]),
            v.decode_lossy(&ids[..k])
        );
    }
    assert_eq!(g.decode_text(&ids).expect("decode"), bs);
    // With raw UTF-8 strings (ensure_ascii=False) Mistral spells U+2019 with byte-fallback tokens.
    let (v, tok) = load("mistral-7b-v0.1");
    let opts = CompileOptions {
        surface: SurfaceOptions {
            ascii: false,
            ..Default::default()
        },
        ..Default::default()
    };
    let g = Grammar::compile(&schema, v.clone(), &opts).expect("compile utf8");
    let raw = VALID.replace("\\u2019", "\u{2019}");
    let mut ids = encode(&tok, &raw);
    ids.push(v.eos_ids()[0]);
    assert_eq!(walk(&g, &ids), Ok(true));
    assert_eq!(g.decode_text(&ids).expect("decode"), raw);
}

#[test]
fn t5_start_end_and_forced_unk() {
    let (v, tok) = load("t5");
    let g =
        Grammar::compile(&job_schema(), v.clone(), &CompileOptions::default()).expect("compile");
    let unk = v.unk_id().expect("unk");
    let m = Matcher::new(g.clone(), 384);
    // First token: the lone `▁` (decodes to "") or <unk> (= `{`); nothing else.
    let words = m.mask();
    let allowed: Vec<u32> = (0..v.len() as u32)
        .filter(|&t| words[t as usize / 32] >> (t % 32) & 1 == 1)
        .collect();
    assert_eq!(allowed, vec![unk, 3]);
    // The training targets start with ▁ <unk> ": after ▁ the <unk> is forced.
    let ids = encode(&tok, VALID);
    assert_eq!(&ids[..2], &[3, unk]);
    let mut m = Matcher::new(g.clone(), 384);
    m.commit_token(3).expect("▁");
    // <unk> (= `{`), then `"` (T5's only token starting a key without a space) are forced.
    let quote = ids[2];
    assert_eq!(tok.id_to_token(quote).as_deref(), Some("\""));
    assert_eq!(m.forced_tokens(), vec![unk, quote]);
    // Walk to the last `]`: then <unk> (= `}`) and EOS are forced.
    let mut m = Matcher::new(g.clone(), 384);
    for &t in &ids[..ids.len() - 1] {
        m.commit_token(t).expect("prefix");
    }
    assert_eq!(m.forced_tokens(), vec![unk, v.eos_ids()[0]]);
}
