//! A better repair for FLAN-T5 output than the reference `fix_json_format`.
//!
//! Why: T5's vocabulary has no `{`, `}` or `\` (SPEC.md §2.2), so the model emits `<unk>` where the
//! target had one of them, and the reference decoder then drops those markers. The reference
//! repair (`compat::fix_json_format`) rebuilds the JSON with one regex per field, which loses every
//! list that was cut by the token limit (about a quarter of the outputs) and keeps `u2019` as text.
//! This repair instead parses the output guided by the job schema:
//! - with `<unk>` markers (our decoder keeps them): outside strings a marker is a brace; inside a
//!   string `<unk>uXXXX` is a `\uXXXX` escape and `<unk>n`, `<unk>"`, `<unk><unk>` etc. are the
//!   other backslash escapes;
//! - without markers (the reference files' `generated_json`): objects are rebuilt from the schema
//!   (a `salary`/`required_skills` key opens an object that ends at the first key it does not
//!   own), and `uXXXX` inside strings is restored when it looks like `json.dumps` output;
//! - truncated output is closed: complete list items are kept, a partial last item is dropped, a
//!   partial scalar string is closed, and missing keys are filled from the template in schema order.
//!
//! Keys outside the schema are dropped; a repeated key keeps its first value. Values are otherwise
//! kept as the model wrote them (a list where a string belongs stays a list).

use super::pyjson::{self, PyDict, PyStr, PyValue};
use super::{FieldKind, JobSchema, SchemaField};

/// The decoded form of T5's unknown token.
pub const UNK: &str = "<unk>";

/// Why a repair produced nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RepairError {
    #[error("no field of the job schema was found in the model output")]
    NoSchemaKeys,
}

/// A repaired value and what the repair had to do.
#[derive(Clone, Debug, PartialEq)]
pub struct RepairOutcome {
    /// The repaired job object (keys in schema order).
    pub value: PyValue,
    /// The input contained `<unk>` markers.
    pub markers: bool,
    /// The output was cut: a string, list or explicitly opened object was still open at the end.
    pub truncated: bool,
    /// Partial list items dropped at the cut.
    pub dropped_partial_items: usize,
    /// A partial scalar string was closed and kept.
    pub closed_partial_string: bool,
    /// Schema paths filled from the template, e.g. `additional_keywords`, `salary.currency`.
    pub filled: Vec<String>,
    /// Keys outside the schema that were dropped.
    pub dropped_keys: Vec<String>,
    /// `\uXXXX` escapes restored (from markers, backslashes or the markerless heuristic).
    pub restored_escapes: usize,
    /// Tokens after the closed top-level object, ignored.
    pub trailing_tokens: usize,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Brace,
    LBrack,
    RBrack,
    Comma,
    Colon,
    Str(Vec<u32>, bool),
    Bare(String),
}

struct Lexer<'a> {
    c: Vec<char>,
    i: usize,
    markerless: bool,
    restored: &'a mut usize,
}

fn hex_at(c: &[char], i: usize, lowercase_only: bool) -> Option<u32> {
    let h = c.get(i..i + 4)?;
    let mut v = 0;
    for ch in h {
        if lowercase_only && ch.is_ascii_uppercase() {
            return None;
        }
        v = v * 16 + ch.to_digit(16)?;
    }
    Some(v)
}

impl Lexer<'_> {
    fn at(&self, i: usize, lit: &str) -> bool {
        lit.chars()
            .enumerate()
            .all(|(k, ch)| self.c.get(i + k) == Some(&ch))
    }

    /// Length of an escape introducer at `i`: `<unk>` (5) or a literal backslash (1).
    fn escape_len(&self, i: usize) -> usize {
        if self.at(i, UNK) {
            5
        } else if self.c.get(i) == Some(&'\\') {
            1
        } else {
            0
        }
    }

    /// Whether a quote just before `after_quote` can close a string: only structure (`,` `]` `:`
    /// `}` or a marker) or the end of the text follows it. Also decides that `<unk>"` is a dropped
    /// brace before a closing quote rather than an escaped quote.
    fn quote_closes(&self, after_quote: usize) -> bool {
        let mut k = after_quote;
        while k < self.c.len() && pyjson::py_isspace(self.c[k]) {
            k += 1;
        }
        k >= self.c.len() || matches!(self.c[k], ',' | ']' | ':' | '}') || self.at(k, UNK)
    }

    fn string(&mut self) -> Tok {
        let mut buf: Vec<u32> = Vec::new();
        loop {
            let Some(&ch) = self.c.get(self.i) else {
                return Tok::Str(buf, false);
            };
            if ch == '"' {
                self.i += 1;
                if self.quote_closes(self.i) {
                    return Tok::Str(buf, true);
                }
                // A quote followed by more text is part of the value: the target had `\"` and
                // the escape was lost. (In valid JSON a closing quote is always followed by
                // structure, so this never changes how valid JSON reads.)
                buf.push('"' as u32);
                continue;
            }
            let m = self.escape_len(self.i);
            if m > 0 {
                let j = self.i + m;
                match self.c.get(j) {
                    Some('u') if hex_at(&self.c, j + 1, false).is_some() => {
                        let mut cp = hex_at(&self.c, j + 1, false).unwrap_or(0xFFFD);
                        let mut next = j + 5;
                        let m2 = self.escape_len(next);
                        if (0xD800..=0xDBFF).contains(&cp)
                            && m2 > 0
                            && self.c.get(next + m2) == Some(&'u')
                        {
                            if let Some(lo) = hex_at(&self.c, next + m2 + 1, false) {
                                if (0xDC00..=0xDFFF).contains(&lo) {
                                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                                    next += m2 + 5;
                                }
                            }
                        }
                        buf.push(cp);
                        *self.restored += 1;
                        self.i = next;
                    }
                    Some('"') if m == 5 && self.quote_closes(j + 1) => {
                        // A dropped brace right before the closing quote.
                        self.i = j;
                    }
                    Some(&e) if "\"\\/bfnrt".contains(e) => {
                        buf.push(match e {
                            'b' => 8,
                            'f' => 12,
                            'n' => 10,
                            'r' => 13,
                            't' => 9,
                            other => other as u32,
                        });
                        self.i = j + 1;
                    }
                    _ if m == 5 && self.at(j, UNK) => {
                        // `<unk><unk>` is an escaped backslash.
                        buf.push('\\' as u32);
                        self.i = j + 5;
                    }
                    _ => {
                        // A marker with no escape after it was a brace inside the text: drop it.
                        // A lone literal backslash is kept.
                        if m == 1 {
                            buf.push('\\' as u32);
                        }
                        self.i = j;
                    }
                }
                continue;
            }
            if self.markerless && ch == 'u' {
                if let Some(cp) = self.markerless_escape(self.i) {
                    let (cp, len) = cp;
                    buf.push(cp);
                    *self.restored += 1;
                    self.i += len;
                    continue;
                }
            }
            buf.push(ch as u32);
            self.i += 1;
        }
    }

    /// Heuristic for marker-free text: `uXXXX` with lowercase hex containing a decimal digit, naming
    /// a non-ASCII, non-surrogate code point (or a valid surrogate pair `uD8xxuDCxx`), is what
    /// `json.dumps` had written as `\uXXXX`. Returns the code point and the length consumed.
    fn markerless_escape(&self, i: usize) -> Option<(u32, usize)> {
        let has_digit = |k: usize| self.c[k..k + 4].iter().any(|c| c.is_ascii_digit());
        let cp = hex_at(&self.c, i + 1, true)?;
        if !has_digit(i + 1) || cp < 0x80 {
            return None;
        }
        if (0xD800..=0xDBFF).contains(&cp) {
            if self.c.get(i + 5) == Some(&'u') {
                let lo = hex_at(&self.c, i + 6, true)?;
                if (0xDC00..=0xDFFF).contains(&lo) {
                    return Some((0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00), 10));
                }
            }
            return None;
        }
        if (0xDC00..=0xDFFF).contains(&cp) {
            return None;
        }
        Some((cp, 5))
    }

    fn tokens(&mut self) -> Vec<Tok> {
        let mut out = Vec::new();
        while self.i < self.c.len() {
            let ch = self.c[self.i];
            if pyjson::py_isspace(ch) {
                self.i += 1;
            } else if self.at(self.i, UNK) {
                out.push(Tok::Brace);
                self.i += 5;
            } else if self.at(self.i, "</s>") {
                self.i += 4;
            } else if self.at(self.i, "<pad>") {
                self.i += 5;
            } else {
                self.i += 1;
                match ch {
                    '{' | '}' => out.push(Tok::Brace),
                    '[' => out.push(Tok::LBrack),
                    ']' => out.push(Tok::RBrack),
                    ',' => out.push(Tok::Comma),
                    ':' => out.push(Tok::Colon),
                    '"' => out.push(self.string()),
                    _ => {
                        let start = self.i - 1;
                        while self.i < self.c.len()
                            && !pyjson::py_isspace(self.c[self.i])
                            && !"\"[]{},:".contains(self.c[self.i])
                            && !self.at(self.i, UNK)
                        {
                            self.i += 1;
                        }
                        out.push(Tok::Bare(self.c[start..self.i].iter().collect()));
                    }
                }
            }
        }
        out
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Closed,
    Implicit,
    Eof,
}

struct Parser<'a> {
    t: &'a [Tok],
    i: usize,
    truncated: bool,
    dropped_partial_items: usize,
    closed_partial_string: bool,
    dropped_keys: Vec<String>,
    /// A key of the top-level schema was read (even if its value was cut off).
    saw_schema_key: bool,
    /// Current nesting of lists and objects; bounded by [`MAX_NESTING`] so that degenerate output
    /// such as `[[[[…` cannot exhaust the stack.
    depth: usize,
}

/// Deeper lists or objects are read as empty (their brackets are skipped).
const MAX_NESTING: usize = 64;

fn pystr(v: &[u32]) -> PyStr {
    PyStr::from_code_points(v.to_vec())
}

fn find<'s>(fields: &'s [SchemaField], key: &PyStr) -> Option<&'s SchemaField> {
    fields.iter().find(|f| key.eq_str(&f.name))
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i)
    }

    fn key_at(&self, i: usize) -> bool {
        matches!(self.t.get(i), Some(Tok::Str(_, true))) && self.t.get(i + 1) == Some(&Tok::Colon)
    }

    /// Parses `"key": value` pairs until the object ends. `fields` is the object's schema (None for
    /// a free-form object), `parent` the enclosing object's fields, `explicit` whether a brace
    /// opened it.
    fn object_body(
        &mut self,
        fields: Option<&[SchemaField]>,
        parent: Option<&[SchemaField]>,
        explicit: bool,
    ) -> (PyDict, End) {
        if self.depth >= MAX_NESTING {
            return (PyDict::new(), End::Implicit);
        }
        self.depth += 1;
        let r = self.object_body_inner(fields, parent, explicit);
        self.depth -= 1;
        r
    }

    fn object_body_inner(
        &mut self,
        fields: Option<&[SchemaField]>,
        parent: Option<&[SchemaField]>,
        explicit: bool,
    ) -> (PyDict, End) {
        let mut d = PyDict::new();
        loop {
            let Some(tok) = self.peek() else {
                return (d, End::Eof);
            };
            match tok {
                Tok::Brace => {
                    self.i += 1;
                    return (d, End::Closed);
                }
                Tok::Str(_, false) => {
                    // Cut inside a key.
                    self.i += 1;
                    self.truncated = true;
                    return (d, End::Eof);
                }
                Tok::Str(k, true) if self.key_at(self.i) => {
                    let key = pystr(k);
                    let field = fields.and_then(|f| find(f, &key));
                    if field.is_some() && parent.is_none() {
                        self.saw_schema_key = true;
                    }
                    if fields.is_some() && field.is_none() {
                        let parent_owns = parent.is_some_and(|p| find(p, &key).is_some());
                        if parent.is_some() && (!explicit || parent_owns) {
                            return (d, End::Implicit);
                        }
                        self.dropped_keys.push(key.to_lossy().into_owned());
                        self.i += 2;
                        let _ = self.generic();
                        continue;
                    }
                    self.i += 2;
                    let v = match field {
                        Some(f) => self.value(&f.kind, fields.unwrap_or(&[])),
                        None => self.generic(),
                    };
                    if let Some(v) = v {
                        if d.get_key(&key).is_none() {
                            d.insert(key, v);
                        }
                    }
                }
                Tok::LBrack => {
                    self.i += 1;
                    let _ = self.list_items();
                }
                _ => self.i += 1,
            }
        }
    }

    fn value(&mut self, kind: &FieldKind, siblings: &[SchemaField]) -> Option<PyValue> {
        match kind {
            FieldKind::Object(sub) => match self.peek() {
                Some(Tok::Brace) => {
                    self.i += 1;
                    let (d, end) = self.object_body(Some(sub), Some(siblings), true);
                    if end == End::Eof {
                        self.truncated = true;
                    }
                    Some(PyValue::Dict(d))
                }
                Some(Tok::Str(_, true)) if self.key_at(self.i) => {
                    let (d, _) = self.object_body(Some(sub), Some(siblings), false);
                    Some(PyValue::Dict(d))
                }
                _ => self.generic(),
            },
            FieldKind::StrList | FieldKind::Str => {
                if self.key_at(self.i) {
                    // The value is missing and the next key follows.
                    return None;
                }
                self.generic()
            }
        }
    }

    fn generic(&mut self) -> Option<PyValue> {
        let Some(tok) = self.peek() else {
            self.truncated = true;
            return None;
        };
        match tok {
            Tok::Str(s, complete) => {
                let (s, complete) = (pystr(s), *complete);
                self.i += 1;
                if !complete {
                    self.truncated = true;
                    self.closed_partial_string = true;
                }
                Some(PyValue::Str(s))
            }
            Tok::LBrack => {
                self.i += 1;
                Some(PyValue::List(self.list_items()))
            }
            Tok::Brace => {
                self.i += 1;
                let (d, end) = self.object_body(None, None, true);
                if end == End::Eof {
                    self.truncated = true;
                }
                Some(PyValue::Dict(d))
            }
            Tok::Bare(b) => {
                let v = literal(b);
                self.i += 1;
                Some(v)
            }
            Tok::Comma | Tok::Colon | Tok::RBrack => None,
        }
    }

    fn list_items(&mut self) -> Vec<PyValue> {
        if self.depth >= MAX_NESTING {
            return Vec::new();
        }
        self.depth += 1;
        let r = self.list_items_inner();
        self.depth -= 1;
        r
    }

    fn list_items_inner(&mut self) -> Vec<PyValue> {
        let mut items = Vec::new();
        loop {
            let Some(tok) = self.peek() else {
                self.truncated = true;
                return items;
            };
            match tok {
                Tok::RBrack => {
                    self.i += 1;
                    return items;
                }
                Tok::Str(_, true) if self.key_at(self.i) => return items,
                Tok::Str(s, true) => {
                    items.push(PyValue::Str(pystr(s)));
                    self.i += 1;
                }
                Tok::Str(_, false) => {
                    self.i += 1;
                    self.truncated = true;
                    self.dropped_partial_items += 1;
                    return items;
                }
                Tok::Brace => return items,
                Tok::LBrack => {
                    self.i += 1;
                    let inner = self.list_items();
                    items.push(PyValue::List(inner));
                }
                Tok::Bare(b) => {
                    items.push(literal(b));
                    self.i += 1;
                }
                Tok::Comma | Tok::Colon => self.i += 1,
            }
        }
    }
}

/// A bare word: a JSON number or literal if `json.loads` reads it as a scalar, else its text.
fn literal(b: &str) -> PyValue {
    match pyjson::loads(b) {
        Ok(v @ (PyValue::None | PyValue::Bool(_) | PyValue::Int(_) | PyValue::Float(_))) => v,
        _ => PyValue::str(b),
    }
}

/// Rebuilds `d` in schema order, filling missing keys (recording their paths) and dropping
/// unknown ones.
fn finish(d: &PyDict, fields: &[SchemaField], prefix: &str, filled: &mut Vec<String>) -> PyDict {
    let mut out = PyDict::new();
    for f in fields {
        let path = if prefix.is_empty() {
            f.name.clone()
        } else {
            format!("{prefix}.{}", f.name)
        };
        let v = match (d.get(&f.name), &f.kind) {
            (Some(PyValue::Dict(inner)), FieldKind::Object(sub)) => {
                PyValue::Dict(finish(inner, sub, &path, filled))
            }
            (Some(v), _) => v.clone(),
            (None, kind) => {
                filled.push(path);
                kind.default_value()
            }
        };
        out.insert(PyStr::from(f.name.as_str()), v);
    }
    out
}

/// Repairs decoded T5 output (with or without `<unk>` markers) into a job object.
pub fn repair_t5_output_detailed(
    raw: &str,
    schema: &JobSchema,
) -> Result<RepairOutcome, RepairError> {
    let markers = raw.contains(UNK);
    let mut restored = 0;
    let toks = Lexer {
        c: raw.chars().collect(),
        i: 0,
        markerless: !markers && !raw.contains('\\'),
        restored: &mut restored,
    }
    .tokens();
    let mut p = Parser {
        t: &toks,
        i: 0,
        truncated: false,
        dropped_partial_items: 0,
        closed_partial_string: false,
        dropped_keys: Vec::new(),
        saw_schema_key: false,
        depth: 0,
    };
    // Skip anything before the object: a brace opens it explicitly, a key starts it implicitly.
    while p.i < toks.len() && toks[p.i] != Tok::Brace && !p.key_at(p.i) {
        p.i += 1;
    }
    let explicit = p.peek() == Some(&Tok::Brace);
    if explicit {
        p.i += 1;
    }
    let (d, end) = p.object_body(Some(&schema.fields), None, explicit);
    if explicit && end == End::Eof {
        p.truncated = true;
    }
    if !p.saw_schema_key {
        return Err(RepairError::NoSchemaKeys);
    }
    let trailing_tokens = toks.len() - p.i.min(toks.len());
    let mut filled = Vec::new();
    let value = PyValue::Dict(finish(&d, &schema.fields, "", &mut filled));
    Ok(RepairOutcome {
        value,
        markers,
        truncated: p.truncated,
        dropped_partial_items: p.dropped_partial_items,
        closed_partial_string: p.closed_partial_string,
        filled,
        dropped_keys: p.dropped_keys,
        restored_escapes: restored,
        trailing_tokens,
    })
}

/// Repairs decoded T5 output into a job object as a serde_json value (keys in schema order).
pub fn repair_t5_output(raw: &str, schema: &JobSchema) -> Result<serde_json::Value, RepairError> {
    repair_t5_output_detailed(raw, schema).map(|o| o.value.to_serde())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: &str = r#"{"experience_level": "Mid-level", "employment_status": [], "work_location": "On-site", "salary": {"min": "250000", "max": "350000", "period": "year", "currency": "USD"}, "benefits": [], "job_functions": ["Software Engineering"], "required_skills": {"programming_languages": ["C++", "C", "Python"], "tools": [], "frameworks": [], "databases": [], "other": ["distributed systems"]}, "required_certifications": [], "required_minimum_degree": "Bachelor\u2019s", "required_experience": "", "industries": ["Quantitative Trading", "Financial Technology"], "additional_keywords": ["low latency", "quant research"]}"#;

    fn with_markers(s: &str) -> String {
        s.replace(['{', '}', '\\'], UNK)
    }

    fn without_markers(s: &str) -> String {
        s.replace(['{', '}', '\\'], "")
    }

    fn schema() -> JobSchema {
        JobSchema::jobextractx()
    }

    #[test]
    fn markers_round_trip_exactly() {
        let o = repair_t5_output_detailed(&with_markers(TARGET), &schema()).unwrap();
        assert_eq!(pyjson::dumps(&o.value), TARGET);
        assert!(o.markers && !o.truncated && o.filled.is_empty() && o.restored_escapes == 1);
        // Whitespace around markers, as some decoders produce, does not matter.
        let spaced = TARGET.replace(['{', '}'], " <unk> ").replace('\\', UNK);
        let o2 = repair_t5_output_detailed(&spaced, &schema()).unwrap();
        assert_eq!(o2.value, o.value);
    }

    #[test]
    fn markerless_rebuilds_objects_and_escapes() {
        let o = repair_t5_output_detailed(&without_markers(TARGET), &schema()).unwrap();
        assert_eq!(pyjson::dumps(&o.value), TARGET);
        assert!(!o.markers && !o.truncated);
        // Words that merely look like escapes are left alone.
        let raw = r#""experience_level": "Cloudbees ucafe Ubuntu", "benefits": ["x"]"#;
        let o = repair_t5_output_detailed(raw, &schema()).unwrap();
        assert_eq!(
            o.value.as_dict().unwrap().get("experience_level").unwrap(),
            &PyValue::str("Cloudbees ucafe Ubuntu")
        );
    }

    #[test]
    fn truncation_keeps_complete_items() {
        let cut = TARGET.find("\"quant res").unwrap() + 4;
        for text in [
            with_markers(&TARGET[..cut]),
            without_markers(&TARGET[..cut]),
        ] {
            let o = repair_t5_output_detailed(&text, &schema()).unwrap();
            assert!(o.truncated);
            assert_eq!(o.dropped_partial_items, 1);
            let d = o.value.as_dict().unwrap();
            assert_eq!(
                d.get("additional_keywords").unwrap(),
                &PyValue::List(vec![PyValue::str("low latency")])
            );
            assert_eq!(d.len(), 12);
        }
        // Cut inside the salary object: it is closed and completed, the rest filled.
        let cut = TARGET.find("\"period\"").unwrap() + 3;
        let o = repair_t5_output_detailed(&with_markers(&TARGET[..cut]), &schema()).unwrap();
        assert!(o.truncated);
        let sal = o
            .value
            .as_dict()
            .unwrap()
            .get("salary")
            .unwrap()
            .as_dict()
            .unwrap();
        assert_eq!(sal.get("max").unwrap(), &PyValue::str("350000"));
        assert_eq!(sal.get("period").unwrap(), &PyValue::str(""));
        assert!(o.filled.contains(&"salary.currency".to_string()));
        assert!(o.filled.contains(&"additional_keywords".to_string()));
        // Cut inside a scalar string: closed and kept.
        let cut = TARGET.find("Mid-level").unwrap() + 3;
        let o = repair_t5_output_detailed(&with_markers(&TARGET[..cut]), &schema()).unwrap();
        assert!(o.closed_partial_string);
        assert_eq!(
            o.value.as_dict().unwrap().get("experience_level").unwrap(),
            &PyValue::str("Mid")
        );
    }

    #[test]
    fn escapes_inside_strings() {
        let raw = r#"<unk>"experience_level": "a<unk>nb <unk>"q<unk>" c<unk><unk>d <unk>ud83d<unk>ude00", "benefits": ["x<unk>"]<unk>"#;
        let o = repair_t5_output_detailed(raw, &schema()).unwrap();
        let d = o.value.as_dict().unwrap();
        assert_eq!(
            d.get("experience_level").unwrap(),
            &PyValue::str("a\nb \"q\" c\\d 😀")
        );
        // A bare quote followed by text is part of the value (its escape was lost).
        let raw = r#""benefits": ["Annual "development dollars"], "job_functions": ["x"]"#;
        let o = repair_t5_output_detailed(raw, &schema()).unwrap();
        let d2 = o.value.as_dict().unwrap();
        assert_eq!(
            d2.get("benefits").unwrap(),
            &PyValue::List(vec![PyValue::str("Annual \"development dollars")])
        );
        assert_eq!(
            d2.get("job_functions").unwrap(),
            &PyValue::List(vec![PyValue::str("x")])
        );
        // `<unk>"` followed only by structure is a dropped brace before the closing quote.
        assert_eq!(
            d.get("benefits").unwrap(),
            &PyValue::List(vec![PyValue::str("x")])
        );
    }

    #[test]
    fn odd_shapes() {
        // Unknown keys dropped, duplicates keep the first value, missing ']' closed at the next key,
        // a list for a string field kept, valid JSON input accepted as is.
        let raw = r#""experience_level": ["a", "b"], "bogus": 1, "benefits": ["x", "y", "job_functions": ["z"], "benefits": ["w"]"#;
        let o = repair_t5_output_detailed(raw, &schema()).unwrap();
        let d = o.value.as_dict().unwrap();
        assert_eq!(
            d.get("experience_level").unwrap(),
            &PyValue::List(vec![PyValue::str("a"), PyValue::str("b")])
        );
        assert_eq!(
            d.get("benefits").unwrap(),
            &PyValue::List(vec![PyValue::str("x"), PyValue::str("y")])
        );
        assert_eq!(
            d.get("job_functions").unwrap(),
            &PyValue::List(vec![PyValue::str("z")])
        );
        assert_eq!(o.dropped_keys, vec!["bogus".to_string()]);
        let o = repair_t5_output_detailed(TARGET, &schema()).unwrap();
        assert_eq!(pyjson::dumps(&o.value), TARGET);
        // Degenerate nesting neither recurses without bound nor loops.
        for deep in [
            "[".repeat(100_000),
            "<unk>\"a\": ".repeat(50_000),
            "[<unk>".repeat(50_000),
        ] {
            let raw = format!("\"benefits\": {deep}");
            let o = repair_t5_output_detailed(&raw, &schema()).unwrap();
            // The third reads as `"benefits": []` closed by the first marker, plus ignored tokens.
            assert!(o.truncated || o.trailing_tokens > 0, "{}", &raw[..30]);
        }
        assert_eq!(
            repair_t5_output_detailed("no json here", &schema()),
            Err(RepairError::NoSchemaKeys)
        );
        assert_eq!(
            repair_t5_output_detailed("", &schema()),
            Err(RepairError::NoSchemaKeys)
        );
        let v = repair_t5_output("\"industries\": [\"A\"", &schema()).unwrap();
        assert_eq!(v["industries"], serde_json::json!(["A"]));
        assert_eq!(v.as_object().unwrap().len(), 12);
    }
}
