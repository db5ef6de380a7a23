//! Python-`json`-compatible values, parser and serialiser, plus the Python-isms that the
//! JobExtractX reference metric relies on: `str()`/`repr()`, truthiness, full-Unicode `.lower()`
//! and `str.isspace()`.
//!
//! Why this exists instead of serde_json: the reference evaluation (shared/seed/SPEC.md §4, §8)
//! ran under CPython 3.11's `json` module. Which records count as parsed, the stored `fixed_json`
//! strings and the stored metric values all depend on exactly what `json.loads` accepts (NaN and
//! Infinity, lone surrogates, duplicate keys keeping the last value at the first position, any
//! top-level value, no control characters in strings) and on what `json.dumps` and `str()` print.
//! serde_json rejects some of that input and prints floats and escapes differently.
//!
//! Deliberate approximations (documented in docs/METRICS.md):
//! - nesting deeper than [`MAX_DEPTH`] fails like CPython's `RecursionError` (the exact CPython
//!   limit depends on the caller's stack depth);
//! - the "printable" table used by `repr()` of non-ASCII characters is CPython 3.11's (Unicode 14);
//! - `.lower()` uses Rust's Unicode tables (same algorithm, including final sigma; newer Unicode).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// Nesting depth at which parsing fails like CPython's `RecursionError` inside `json.loads`.
pub const MAX_DEPTH: usize = 990;

/// CPython (3.10.7+, 3.11) refuses to convert an integer string with more digits than this.
pub const INT_MAX_STR_DIGITS: usize = 4300;

// ------------------------------------------------------------------------------------------------
// Strings
// ------------------------------------------------------------------------------------------------

/// A Python `str`: a sequence of code points. `Text` is the normal case; `Wide` is used only when
/// the string holds a lone surrogate (possible in Python via `"\ud800"` escapes, impossible in a
/// Rust `String`). Invariant: a `Wide` always contains at least one surrogate, so the two variants
/// never describe the same string and the derived `Eq`/`Hash` are Python equality.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PyStr {
    Text(String),
    Wide(Vec<u32>),
}

fn is_surrogate(c: u32) -> bool {
    (0xD800..=0xDFFF).contains(&c)
}

impl PyStr {
    /// Builds a string from code points, choosing the canonical variant.
    pub fn from_code_points(cps: Vec<u32>) -> PyStr {
        if cps.iter().any(|&c| is_surrogate(c)) {
            PyStr::Wide(cps)
        } else {
            // Every non-surrogate value below 0x110000 is a valid char; anything else cannot be
            // produced by this module, but map it to U+FFFD rather than panic.
            PyStr::Text(
                cps.into_iter()
                    .map(|c| char::from_u32(c).unwrap_or('\u{FFFD}'))
                    .collect(),
            )
        }
    }

    /// The text, if it holds no lone surrogate.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            PyStr::Text(s) => Some(s),
            PyStr::Wide(_) => None,
        }
    }

    /// The text with lone surrogates replaced by U+FFFD.
    pub fn to_lossy(&self) -> Cow<'_, str> {
        match self {
            PyStr::Text(s) => Cow::Borrowed(s),
            PyStr::Wide(v) => Cow::Owned(
                v.iter()
                    .map(|&c| char::from_u32(c).unwrap_or('\u{FFFD}'))
                    .collect(),
            ),
        }
    }

    /// The code points.
    pub fn code_points(&self) -> Vec<u32> {
        match self {
            PyStr::Text(s) => s.chars().map(|c| c as u32).collect(),
            PyStr::Wide(v) => v.clone(),
        }
    }

    /// Python `len(s)`.
    pub fn char_len(&self) -> usize {
        match self {
            PyStr::Text(s) => s.chars().count(),
            PyStr::Wide(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            PyStr::Text(s) => s.is_empty(),
            PyStr::Wide(v) => v.is_empty(),
        }
    }

    /// Python `s == other` for a Rust string.
    pub fn eq_str(&self, other: &str) -> bool {
        match self {
            PyStr::Text(s) => s == other,
            PyStr::Wide(_) => false,
        }
    }

    /// Python `str.lower()`: full Unicode case mapping including the final-sigma rule. Rust's
    /// `str::to_lowercase` implements the same rule as CPython (`\p{cased}\p{case-ignorable}*Σ`
    /// not followed by `\p{case-ignorable}*\p{cased}`). A lone surrogate is neither cased nor
    /// case-ignorable, so lowering the runs between surrogates separately gives the same result.
    pub fn lower(&self) -> PyStr {
        match self {
            PyStr::Text(s) => PyStr::Text(s.to_lowercase()),
            PyStr::Wide(v) => {
                let mut out: Vec<u32> = Vec::with_capacity(v.len());
                let mut run = String::new();
                for &c in v {
                    match char::from_u32(c) {
                        Some(ch) => run.push(ch),
                        None => {
                            out.extend(run.to_lowercase().chars().map(|c| c as u32));
                            run.clear();
                            out.push(c);
                        }
                    }
                }
                out.extend(run.to_lowercase().chars().map(|c| c as u32));
                PyStr::from_code_points(out)
            }
        }
    }

    /// Python `needle in self` (substring test).
    pub fn contains(&self, needle: &PyStr) -> bool {
        match (self, needle) {
            (PyStr::Text(h), PyStr::Text(n)) => h.contains(n.as_str()),
            _ => {
                let h = self.code_points();
                let n = needle.code_points();
                n.is_empty() || h.windows(n.len()).any(|w| w == n.as_slice())
            }
        }
    }

    /// Each code point as a one-character string (Python iteration over a `str`).
    pub fn chars_as_strs(&self) -> Vec<PyStr> {
        match self {
            PyStr::Text(s) => s.chars().map(|c| PyStr::Text(c.to_string())).collect(),
            PyStr::Wide(v) => v
                .iter()
                .map(|&c| PyStr::from_code_points(vec![c]))
                .collect(),
        }
    }
}

impl From<&str> for PyStr {
    fn from(s: &str) -> Self {
        PyStr::Text(s.to_string())
    }
}

impl From<String> for PyStr {
    fn from(s: String) -> Self {
        PyStr::Text(s)
    }
}

impl fmt::Display for PyStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_lossy())
    }
}

/// Python `str.isspace()` for one character (also what `re`'s `\s` and `str.strip()` use).
/// Differs from Rust's `char::is_whitespace` by including U+001C..U+001F.
pub fn py_isspace(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{0B}' | '\u{0C}' | '\r' | '\u{1C}'..='\u{1F}' | ' ' | '\u{85}' | '\u{A0}'
            | '\u{1680}' | '\u{2000}'..='\u{200A}' | '\u{2028}' | '\u{2029}' | '\u{202F}'
            | '\u{205F}' | '\u{3000}'
    )
}

/// Python `s.strip()` with no argument.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// The body of a regex character class equivalent to Python `re`'s `\s` on `str` patterns.
pub const PY_RE_SPACE_CLASS: &str = r"\t\n\x0B\x0C\r\x1C-\x1F \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}";

// ------------------------------------------------------------------------------------------------
// Values
// ------------------------------------------------------------------------------------------------

/// A Python `int` as produced by `json.loads`: machine-size when it fits in `i128`, otherwise its
/// canonical decimal text (sign plus digits without leading zeros).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PyInt {
    Small(i128),
    Big(String),
}

impl PyInt {
    pub fn is_zero(&self) -> bool {
        matches!(self, PyInt::Small(0))
    }
}

impl fmt::Display for PyInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PyInt::Small(i) => write!(f, "{i}"),
            PyInt::Big(s) => f.write_str(s),
        }
    }
}

/// A Python `dict` with `str` keys: insertion-ordered; assigning an existing key replaces the
/// value but keeps the key's first position (what `json.loads` does with duplicate keys).
#[derive(Clone, Default)]
pub struct PyDict {
    entries: Vec<(PyStr, PyValue)>,
    index: HashMap<PyStr, usize>,
}

impl fmt::Debug for PyDict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl PartialEq for PyDict {
    fn eq(&self, other: &Self) -> bool {
        // Python dict equality ignores order.
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .all(|(k, v)| other.get_key(k).is_some_and(|w| w == v))
    }
}

impl PyDict {
    pub fn new() -> Self {
        Self::default()
    }

    /// `d[k] = v`.
    pub fn insert(&mut self, k: PyStr, v: PyValue) {
        if let Some(&i) = self.index.get(&k) {
            self.entries[i].1 = v;
        } else {
            self.index.insert(k.clone(), self.entries.len());
            self.entries.push((k, v));
        }
    }

    pub fn get_key(&self, k: &PyStr) -> Option<&PyValue> {
        self.index.get(k).map(|&i| &self.entries[i].1)
    }

    pub fn get(&self, k: &str) -> Option<&PyValue> {
        if self.entries.len() <= 16 {
            self.entries
                .iter()
                .find(|(key, _)| key.eq_str(k))
                .map(|(_, v)| v)
        } else {
            self.get_key(&PyStr::Text(k.to_string()))
        }
    }

    pub fn contains_key(&self, k: &str) -> bool {
        self.get(k).is_some()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&PyStr, &PyValue)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &PyStr> {
        self.entries.iter().map(|(k, _)| k)
    }
}

/// A value as returned by Python's `json.loads`.
#[derive(Clone, Debug, PartialEq)]
pub enum PyValue {
    None,
    Bool(bool),
    Int(PyInt),
    Float(f64),
    Str(PyStr),
    List(Vec<PyValue>),
    Dict(PyDict),
}

impl PyValue {
    pub fn str(s: &str) -> PyValue {
        PyValue::Str(PyStr::from(s))
    }

    /// Python `type(v).__name__`.
    pub fn type_name(&self) -> &'static str {
        match self {
            PyValue::None => "NoneType",
            PyValue::Bool(_) => "bool",
            PyValue::Int(_) => "int",
            PyValue::Float(_) => "float",
            PyValue::Str(_) => "str",
            PyValue::List(_) => "list",
            PyValue::Dict(_) => "dict",
        }
    }

    /// Python `bool(v)`.
    pub fn truthy(&self) -> bool {
        match self {
            PyValue::None => false,
            PyValue::Bool(b) => *b,
            PyValue::Int(i) => !i.is_zero(),
            // NaN is truthy in Python; only +0.0 and -0.0 are falsy.
            PyValue::Float(f) => *f != 0.0,
            PyValue::Str(s) => !s.is_empty(),
            PyValue::List(l) => !l.is_empty(),
            PyValue::Dict(d) => !d.is_empty(),
        }
    }

    pub fn as_dict(&self) -> Option<&PyDict> {
        match self {
            PyValue::Dict(d) => Some(d),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[PyValue]> {
        match self {
            PyValue::List(l) => Some(l),
            _ => None,
        }
    }

    pub fn as_pystr(&self) -> Option<&PyStr> {
        match self {
            PyValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Python `str(v)`.
    pub fn py_str(&self) -> PyStr {
        match self {
            PyValue::Str(s) => s.clone(),
            other => PyStr::Text(other.py_repr()),
        }
    }

    /// Python `repr(v)`. Always valid Unicode (surrogates are escaped).
    pub fn py_repr(&self) -> String {
        let mut out = String::new();
        write_repr(self, &mut out);
        out
    }

    /// Python `json.dumps(v)` with default arguments.
    pub fn dumps(&self) -> String {
        dumps(self)
    }

    /// Converts to a serde_json value. Lossy only where serde_json cannot represent the value:
    /// NaN/Infinity become `null`, integers beyond 64 bits become floats, lone surrogates U+FFFD.
    pub fn to_serde(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            PyValue::None => Value::Null,
            PyValue::Bool(b) => Value::Bool(*b),
            PyValue::Int(PyInt::Small(i)) => {
                if let Ok(v) = i64::try_from(*i) {
                    Value::from(v)
                } else if let Ok(v) = u64::try_from(*i) {
                    Value::from(v)
                } else {
                    serde_json::Number::from_f64(*i as f64)
                        .map(Value::Number)
                        .unwrap_or(Value::Null)
                }
            }
            PyValue::Int(PyInt::Big(s)) => s
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            PyValue::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            PyValue::Str(s) => Value::String(s.to_lossy().into_owned()),
            PyValue::List(l) => Value::Array(l.iter().map(|v| v.to_serde()).collect()),
            PyValue::Dict(d) => {
                let mut m = serde_json::Map::new();
                for (k, v) in d.iter() {
                    m.insert(k.to_lossy().into_owned(), v.to_serde());
                }
                Value::Object(m)
            }
        }
    }

    /// Converts from a serde_json value (exact: serde_json values are a subset).
    pub fn from_serde(v: &serde_json::Value) -> PyValue {
        use serde_json::Value;
        match v {
            Value::Null => PyValue::None,
            Value::Bool(b) => PyValue::Bool(*b),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    PyValue::Int(PyInt::Small(i as i128))
                } else if let Some(u) = n.as_u64() {
                    PyValue::Int(PyInt::Small(u as i128))
                } else {
                    PyValue::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => PyValue::str(s),
            Value::Array(a) => PyValue::List(a.iter().map(PyValue::from_serde).collect()),
            Value::Object(m) => {
                let mut d = PyDict::new();
                for (k, v) in m {
                    d.insert(PyStr::from(k.as_str()), PyValue::from_serde(v));
                }
                PyValue::Dict(d)
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Parsing (`json.loads`)
// ------------------------------------------------------------------------------------------------

/// What kind of Python exception `json.loads` would have raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonErrorKind {
    /// `json.JSONDecodeError` (a `ValueError` subclass).
    Decode,
    /// `RecursionError`, raised for very deep nesting.
    Recursion,
    /// `ValueError` from the integer-string digit limit.
    IntDigits,
}

/// A `json.loads` failure, with CPython's message and position (in characters).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: line {line} column {col} (char {pos})")]
pub struct JsonError {
    pub kind: JsonErrorKind,
    pub msg: String,
    /// Character (code point) offset, like Python's `JSONDecodeError.pos`.
    pub pos: usize,
    pub line: usize,
    pub col: usize,
}

/// Python `json.loads(s)` for a `str` argument, with default hooks.
pub fn loads(s: &str) -> Result<PyValue, JsonError> {
    let mut p = Parser {
        s,
        b: s.as_bytes(),
        depth: 0,
    };
    if s.starts_with('\u{FEFF}') {
        return Err(p.err(
            JsonErrorKind::Decode,
            "Unexpected UTF-8 BOM (decode using utf-8-sig)",
            0,
        ));
    }
    let i = p.skip_ws(0);
    let (v, end) = p.value(i)?;
    let end = p.skip_ws(end);
    if end != p.b.len() {
        return Err(p.err(JsonErrorKind::Decode, "Extra data", end));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a str,
    b: &'a [u8],
    depth: usize,
}

enum Scan {
    Value(PyValue, usize),
    /// CPython's `StopIteration` from `scan_once`: no value starts here.
    NoValue,
}

impl<'a> Parser<'a> {
    fn err(&self, kind: JsonErrorKind, msg: &str, byte_pos: usize) -> JsonError {
        let before = &self.s[..byte_pos.min(self.s.len())];
        let pos = before.chars().count();
        let line = before.matches('\n').count() + 1;
        let col = match before.rfind('\n') {
            Some(nl) => before[nl + 1..].chars().count() + 1,
            None => pos + 1,
        };
        JsonError {
            kind,
            msg: msg.to_string(),
            pos,
            line,
            col,
        }
    }

    fn skip_ws(&self, mut i: usize) -> usize {
        while i < self.b.len() && matches!(self.b[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    }

    fn value(&mut self, i: usize) -> Result<(PyValue, usize), JsonError> {
        match self.scan_once(i)? {
            Scan::Value(v, end) => Ok((v, end)),
            Scan::NoValue => Err(self.err(JsonErrorKind::Decode, "Expecting value", i)),
        }
    }

    fn starts(&self, i: usize, lit: &str) -> bool {
        self.b.len() >= i + lit.len() && &self.b[i..i + lit.len()] == lit.as_bytes()
    }

    fn scan_once(&mut self, i: usize) -> Result<Scan, JsonError> {
        let Some(&c) = self.b.get(i) else {
            return Ok(Scan::NoValue);
        };
        match c {
            b'"' => {
                let (s, end) = self.string(i + 1)?;
                Ok(Scan::Value(PyValue::Str(s), end))
            }
            b'{' => {
                self.enter(i, "object")?;
                let r = self.object(i + 1);
                self.depth -= 1;
                let (v, end) = r?;
                Ok(Scan::Value(v, end))
            }
            b'[' => {
                self.enter(i, "array")?;
                let r = self.array(i + 1);
                self.depth -= 1;
                let (v, end) = r?;
                Ok(Scan::Value(v, end))
            }
            b'n' if self.starts(i, "null") => Ok(Scan::Value(PyValue::None, i + 4)),
            b't' if self.starts(i, "true") => Ok(Scan::Value(PyValue::Bool(true), i + 4)),
            b'f' if self.starts(i, "false") => Ok(Scan::Value(PyValue::Bool(false), i + 5)),
            b'N' if self.starts(i, "NaN") => Ok(Scan::Value(PyValue::Float(f64::NAN), i + 3)),
            b'I' if self.starts(i, "Infinity") => {
                Ok(Scan::Value(PyValue::Float(f64::INFINITY), i + 8))
            }
            b'-' if self.starts(i, "-Infinity") => {
                Ok(Scan::Value(PyValue::Float(f64::NEG_INFINITY), i + 9))
            }
            _ => self.number(i),
        }
    }

    fn enter(&mut self, i: usize, what: &str) -> Result<(), JsonError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            self.depth -= 1;
            return Err(self.err(
                JsonErrorKind::Recursion,
                &format!("maximum recursion depth exceeded while decoding a JSON {what} from a unicode string"),
                i,
            ));
        }
        Ok(())
    }

    fn is_digit(&self, i: usize) -> bool {
        self.b.get(i).is_some_and(|c| c.is_ascii_digit())
    }

    /// CPython `_match_number_unicode`.
    fn number(&self, start: usize) -> Result<Scan, JsonError> {
        let b = self.b;
        let mut i = start;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'1'..=b'9') => {
                i += 1;
                while self.is_digit(i) {
                    i += 1;
                }
            }
            Some(b'0') => i += 1,
            _ => return Ok(Scan::NoValue),
        }
        let mut is_float = false;
        if b.get(i) == Some(&b'.') && self.is_digit(i + 1) {
            is_float = true;
            i += 2;
            while self.is_digit(i) {
                i += 1;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            let e_start = i;
            i += 1;
            if matches!(b.get(i), Some(b'-' | b'+')) {
                i += 1;
            }
            let digits_start = i;
            while self.is_digit(i) {
                i += 1;
            }
            if i > digits_start {
                is_float = true;
            } else {
                i = e_start;
            }
        }
        let text = &self.s[start..i];
        if is_float {
            // Rust's float parsing is correctly rounded, like CPython's float(); overflow gives
            // +-inf in both.
            let f: f64 = text
                .parse()
                .map_err(|_| self.err(JsonErrorKind::Decode, "Expecting value", start))?;
            return Ok(Scan::Value(PyValue::Float(f), i));
        }
        let (neg, digits) = match text.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, text),
        };
        if digits.len() > INT_MAX_STR_DIGITS {
            return Err(self.err(
                JsonErrorKind::IntDigits,
                &format!(
                    "Exceeds the limit ({INT_MAX_STR_DIGITS} digits) for integer string conversion: value has {} digits",
                    digits.len()
                ),
                start,
            ));
        }
        let v = match text.parse::<i128>() {
            Ok(n) => PyInt::Small(n),
            // Only reachable for more than 38 digits, so never zero; the JSON grammar already
            // forbids leading zeros, so the text is canonical.
            Err(_) => PyInt::Big(if neg {
                format!("-{digits}")
            } else {
                digits.to_string()
            }),
        };
        Ok(Scan::Value(PyValue::Int(v), i))
    }

    fn hex4(&self, i: usize) -> Option<u32> {
        let h = self.b.get(i..i + 4)?;
        let mut v = 0u32;
        for &c in h {
            v = v * 16 + (c as char).to_digit(16)?;
        }
        Some(v)
    }

    /// CPython `scanstring_unicode` with `strict=True`; `i` is just after the opening quote.
    fn string(&self, i: usize) -> Result<(PyStr, usize), JsonError> {
        let b = self.b;
        let begin = i - 1;
        let mut out: Vec<u32> = Vec::new();
        let mut text = String::new();
        let mut wide = false;
        let mut j = i;
        loop {
            // Copy a run of ordinary characters.
            let run_start = j;
            while j < b.len() && b[j] != b'"' && b[j] != b'\\' && b[j] >= 0x20 {
                j += 1;
            }
            if j > run_start {
                let run = &self.s[run_start..j];
                if wide {
                    out.extend(run.chars().map(|c| c as u32));
                } else {
                    text.push_str(run);
                }
            }
            let Some(&c) = b.get(j) else {
                return Err(self.err(
                    JsonErrorKind::Decode,
                    "Unterminated string starting at",
                    begin,
                ));
            };
            match c {
                b'"' => {
                    let s = if wide {
                        PyStr::from_code_points(out)
                    } else {
                        PyStr::Text(text)
                    };
                    return Ok((s, j + 1));
                }
                b'\\' => {
                    let Some(&e) = b.get(j + 1) else {
                        return Err(self.err(
                            JsonErrorKind::Decode,
                            "Unterminated string starting at",
                            begin,
                        ));
                    };
                    let ch: u32 = match e {
                        b'"' => '"' as u32,
                        b'\\' => '\\' as u32,
                        b'/' => '/' as u32,
                        b'b' => 8,
                        b'f' => 12,
                        b'n' => 10,
                        b'r' => 13,
                        b't' => 9,
                        b'u' => {
                            let Some(mut cp) = self.hex4(j + 2) else {
                                return Err(self.err(
                                    JsonErrorKind::Decode,
                                    "Invalid \\uXXXX escape",
                                    j + 1,
                                ));
                            };
                            j += 6;
                            if (0xD800..=0xDBFF).contains(&cp)
                                && b.get(j) == Some(&b'\\')
                                && b.get(j + 1) == Some(&b'u')
                            {
                                let Some(c2) = self.hex4(j + 2) else {
                                    return Err(self.err(
                                        JsonErrorKind::Decode,
                                        "Invalid \\uXXXX escape",
                                        j + 1,
                                    ));
                                };
                                if (0xDC00..=0xDFFF).contains(&c2) {
                                    cp = 0x10000 + ((cp - 0xD800) << 10) + (c2 - 0xDC00);
                                    j += 6;
                                }
                            }
                            if is_surrogate(cp) && !wide {
                                wide = true;
                                out = text.chars().map(|c| c as u32).collect();
                            }
                            if wide {
                                out.push(cp);
                            } else if let Some(ch) = char::from_u32(cp) {
                                text.push(ch);
                            }
                            continue;
                        }
                        other => {
                            // CPython reports the escape character with repr().
                            let shown = self.s[j + 1..].chars().next().unwrap_or(other as char);
                            return Err(self.err(
                                JsonErrorKind::Decode,
                                &format!(
                                    "Invalid \\escape: {}",
                                    PyValue::Str(PyStr::Text(shown.to_string())).py_repr()
                                ),
                                j,
                            ));
                        }
                    };
                    if wide {
                        out.push(ch);
                    } else if let Some(c) = char::from_u32(ch) {
                        text.push(c);
                    }
                    j += 2;
                }
                _ => {
                    return Err(self.err(JsonErrorKind::Decode, "Invalid control character at", j));
                }
            }
        }
    }

    /// CPython `_parse_object_unicode`; `i` is just after `{`.
    fn object(&mut self, i: usize) -> Result<(PyValue, usize), JsonError> {
        let mut d = PyDict::new();
        let mut i = self.skip_ws(i);
        match self.b.get(i) {
            Some(b'}') => return Ok((PyValue::Dict(d), i + 1)),
            Some(b'"') => {}
            _ => {
                return Err(self.err(
                    JsonErrorKind::Decode,
                    "Expecting property name enclosed in double quotes",
                    i,
                ))
            }
        }
        loop {
            if self.b.get(i) != Some(&b'"') {
                return Err(self.err(
                    JsonErrorKind::Decode,
                    "Expecting property name enclosed in double quotes",
                    i,
                ));
            }
            let (key, after) = self.string(i + 1)?;
            i = self.skip_ws(after);
            if self.b.get(i) != Some(&b':') {
                return Err(self.err(JsonErrorKind::Decode, "Expecting ':' delimiter", i));
            }
            i = self.skip_ws(i + 1);
            let (v, after) = self.value(i)?;
            d.insert(key, v);
            i = self.skip_ws(after);
            match self.b.get(i) {
                Some(b'}') => return Ok((PyValue::Dict(d), i + 1)),
                Some(b',') => i = self.skip_ws(i + 1),
                _ => return Err(self.err(JsonErrorKind::Decode, "Expecting ',' delimiter", i)),
            }
        }
    }

    /// CPython `_parse_array_unicode`; `i` is just after `[`.
    fn array(&mut self, i: usize) -> Result<(PyValue, usize), JsonError> {
        let mut l = Vec::new();
        let mut i = self.skip_ws(i);
        if self.b.get(i) == Some(&b']') {
            return Ok((PyValue::List(l), i + 1));
        }
        loop {
            let (v, after) = self.value(i)?;
            l.push(v);
            i = self.skip_ws(after);
            match self.b.get(i) {
                Some(b']') => return Ok((PyValue::List(l), i + 1)),
                Some(b',') => i = self.skip_ws(i + 1),
                _ => return Err(self.err(JsonErrorKind::Decode, "Expecting ',' delimiter", i)),
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Serialising (`json.dumps`) and Python `repr`
// ------------------------------------------------------------------------------------------------

fn split_sci(sci: &str) -> (String, i32) {
    let (mant, exp) = sci.split_once('e').unwrap_or((sci, "0"));
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    (digits, exp.parse().unwrap_or(0))
}

/// Shortest round-trip decimal digits and decimal exponent (`d.ddd × 10^exp`) of a positive finite
/// float, as CPython's `repr` (David Gay's dtoa, mode 0) chooses them. Rust's `{:e}` gives the
/// same digits except when the exact value lies exactly halfway between two shortest candidates:
/// dtoa then takes the one with an even last digit, Rust the upper one.
fn shortest_digits(x: f64) -> (String, i32) {
    let (digits, exp) = split_sci(&format!("{:e}", x));
    let n = digits.len();
    // A tie means the exact value has exactly n+1 significant digits, the last being 5.
    let (one_more, _) = split_sci(&format!("{:.*e}", n, x));
    if !one_more.ends_with('5') {
        return (digits, exp);
    }
    let (exact, exact_exp) = split_sci(&format!("{:.*e}", 800, x));
    let exact = exact.trim_end_matches('0');
    if exact.len() != n + 1 || exact_exp != exp {
        return (digits, exp);
    }
    let mut cand: Vec<u8> = exact.as_bytes()[..n].to_vec();
    let mut cand_exp = exp;
    if (cand[n - 1] - b'0') % 2 == 1 {
        // Round the truncated digits up by one unit in the last place.
        let mut k = n;
        loop {
            if k == 0 {
                cand.insert(0, b'1');
                cand.pop();
                cand_exp += 1;
                break;
            }
            k -= 1;
            if cand[k] == b'9' {
                cand[k] = b'0';
            } else {
                cand[k] += 1;
                break;
            }
        }
    }
    let cand = String::from_utf8(cand).unwrap_or_default();
    let trimmed = cand.trim_end_matches('0');
    let trimmed = if trimmed.is_empty() { "0" } else { trimmed };
    let text = format!("0.{trimmed}e{}", cand_exp + 1);
    if text.parse::<f64>().ok() == Some(x) {
        (trimmed.to_string(), cand_exp)
    } else {
        (digits, exp)
    }
}

/// Python `repr(x)` for a float (also `str(x)`): shortest round-trip digits, fixed notation for
/// decimal exponents -4..=15, otherwise `d.ddde+XX`.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let (digits, exp) = shortest_digits(x.abs());
    let sign = if x < 0.0 { "-" } else { "" };
    let n = digits.len() as i32;
    if (-4..16).contains(&exp) {
        let decpt = exp + 1; // digits before the decimal point
        if decpt <= 0 {
            format!("{sign}0.{}{digits}", "0".repeat((-decpt) as usize))
        } else if decpt >= n {
            format!("{sign}{digits}{}.0", "0".repeat((decpt - n) as usize))
        } else {
            let (a, b) = digits.split_at(decpt as usize);
            format!("{sign}{a}.{b}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
    }
}

fn push_json_string(s: &PyStr, out: &mut String) {
    out.push('"');
    let esc = |c: u32, out: &mut String| match c {
        0x22 => out.push_str("\\\""),
        0x5C => out.push_str("\\\\"),
        0x08 => out.push_str("\\b"),
        0x0C => out.push_str("\\f"),
        0x0A => out.push_str("\\n"),
        0x0D => out.push_str("\\r"),
        0x09 => out.push_str("\\t"),
        0x20..=0x7E => out.push(c as u8 as char),
        c if c >= 0x10000 => {
            let v = c - 0x10000;
            out.push_str(&format!(
                "\\u{:04x}\\u{:04x}",
                0xD800 + (v >> 10),
                0xDC00 + (v & 0x3FF)
            ));
        }
        c => out.push_str(&format!("\\u{c:04x}")),
    };
    match s {
        PyStr::Text(t) => t.chars().for_each(|c| esc(c as u32, out)),
        PyStr::Wide(v) => v.iter().for_each(|&c| esc(c, out)),
    }
    out.push('"');
}

fn write_json(v: &PyValue, out: &mut String) {
    match v {
        PyValue::None => out.push_str("null"),
        PyValue::Bool(true) => out.push_str("true"),
        PyValue::Bool(false) => out.push_str("false"),
        PyValue::Int(i) => out.push_str(&i.to_string()),
        PyValue::Float(f) => {
            if f.is_nan() {
                out.push_str("NaN")
            } else if f.is_infinite() {
                out.push_str(if *f > 0.0 { "Infinity" } else { "-Infinity" })
            } else {
                out.push_str(&float_repr(*f))
            }
        }
        PyValue::Str(s) => push_json_string(s, out),
        PyValue::List(l) => {
            out.push('[');
            for (i, x) in l.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json(x, out);
            }
            out.push(']');
        }
        PyValue::Dict(d) => {
            out.push('{');
            for (i, (k, x)) in d.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                push_json_string(k, out);
                out.push_str(": ");
                write_json(x, out);
            }
            out.push('}');
        }
    }
}

/// Python `json.dumps(v)`: separators `", "`/`": "`, `ensure_ascii=True` (lowercase `\uXXXX`,
/// surrogate pairs above the BMP), `allow_nan=True`, floats as `float.__repr__`.
pub fn dumps(v: &PyValue) -> String {
    let mut out = String::new();
    write_json(v, &mut out);
    out
}

/// Python's `repr()` of a `str`.
pub fn str_repr(s: &PyStr) -> String {
    let cps = s.code_points();
    let has_sq = cps.contains(&('\'' as u32));
    let has_dq = cps.contains(&('"' as u32));
    let quote = if has_sq && !has_dq { '"' } else { '\'' };
    let mut out = String::with_capacity(cps.len() + 2);
    out.push(quote);
    for c in cps {
        match c {
            _ if c == quote as u32 || c == '\\' as u32 => {
                out.push('\\');
                out.push(char::from_u32(c).unwrap_or('?'));
            }
            0x09 => out.push_str("\\t"),
            0x0A => out.push_str("\\n"),
            0x0D => out.push_str("\\r"),
            c if c < 0x20 || c == 0x7F => out.push_str(&format!("\\x{c:02x}")),
            c if c < 0x7F => out.push(c as u8 as char),
            c => {
                if is_printable(c) {
                    out.push(char::from_u32(c).unwrap_or('?'));
                } else if c <= 0xFF {
                    out.push_str(&format!("\\x{c:02x}"));
                } else if c <= 0xFFFF {
                    out.push_str(&format!("\\u{c:04x}"));
                } else {
                    out.push_str(&format!("\\U{c:08x}"));
                }
            }
        }
    }
    out.push(quote);
    out
}

fn write_repr(v: &PyValue, out: &mut String) {
    match v {
        PyValue::None => out.push_str("None"),
        PyValue::Bool(true) => out.push_str("True"),
        PyValue::Bool(false) => out.push_str("False"),
        PyValue::Int(i) => out.push_str(&i.to_string()),
        PyValue::Float(f) => out.push_str(&float_repr(*f)),
        PyValue::Str(s) => out.push_str(&str_repr(s)),
        PyValue::List(l) => {
            out.push('[');
            for (i, x) in l.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(x, out);
            }
            out.push(']');
        }
        PyValue::Dict(d) => {
            out.push('{');
            for (i, (k, x)) in d.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&str_repr(k));
                out.push_str(": ");
                write_repr(x, out);
            }
            out.push('}');
        }
    }
}

/// CPython's `Py_UNICODE_ISPRINTABLE` for a code point (table below is for code points >= 0x80).
fn is_printable(c: u32) -> bool {
    if c < 0x80 {
        return (0x20..0x7F).contains(&c);
    }
    NON_PRINTABLE
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_err()
}

/// Code point ranges (inclusive, >= 0x80) that CPython 3.11 (Unicode 14.0) treats as
/// non-printable in `repr()`: categories Cc, Cf, Cs, Co, Cn, Zl, Zp and Zs other than U+0020.
/// Generated once with `not chr(cp).isprintable()` in CPython 3.11.7.
#[rustfmt::skip]
static NON_PRINTABLE: &[(u32, u32)] = &[
    (0x80, 0xA0), (0xAD, 0xAD), (0x378, 0x379), (0x380, 0x383), (0x38B, 0x38B), (0x38D, 0x38D),
    (0x3A2, 0x3A2), (0x530, 0x530), (0x557, 0x558), (0x58B, 0x58C), (0x590, 0x590), (0x5C8, 0x5CF),
    (0x5EB, 0x5EE), (0x5F5, 0x605), (0x61C, 0x61C), (0x6DD, 0x6DD), (0x70E, 0x70F), (0x74B, 0x74C),
    (0x7B2, 0x7BF), (0x7FB, 0x7FC), (0x82E, 0x82F), (0x83F, 0x83F), (0x85C, 0x85D), (0x85F, 0x85F),
    (0x86B, 0x86F), (0x88F, 0x897), (0x8E2, 0x8E2), (0x984, 0x984), (0x98D, 0x98E), (0x991, 0x992),
    (0x9A9, 0x9A9), (0x9B1, 0x9B1), (0x9B3, 0x9B5), (0x9BA, 0x9BB), (0x9C5, 0x9C6), (0x9C9, 0x9CA),
    (0x9CF, 0x9D6), (0x9D8, 0x9DB), (0x9DE, 0x9DE), (0x9E4, 0x9E5), (0x9FF, 0xA00), (0xA04, 0xA04),
    (0xA0B, 0xA0E), (0xA11, 0xA12), (0xA29, 0xA29), (0xA31, 0xA31), (0xA34, 0xA34), (0xA37, 0xA37),
    (0xA3A, 0xA3B), (0xA3D, 0xA3D), (0xA43, 0xA46), (0xA49, 0xA4A), (0xA4E, 0xA50), (0xA52, 0xA58),
    (0xA5D, 0xA5D), (0xA5F, 0xA65), (0xA77, 0xA80), (0xA84, 0xA84), (0xA8E, 0xA8E), (0xA92, 0xA92),
    (0xAA9, 0xAA9), (0xAB1, 0xAB1), (0xAB4, 0xAB4), (0xABA, 0xABB), (0xAC6, 0xAC6), (0xACA, 0xACA),
    (0xACE, 0xACF), (0xAD1, 0xADF), (0xAE4, 0xAE5), (0xAF2, 0xAF8), (0xB00, 0xB00), (0xB04, 0xB04),
    (0xB0D, 0xB0E), (0xB11, 0xB12), (0xB29, 0xB29), (0xB31, 0xB31), (0xB34, 0xB34), (0xB3A, 0xB3B),
    (0xB45, 0xB46), (0xB49, 0xB4A), (0xB4E, 0xB54), (0xB58, 0xB5B), (0xB5E, 0xB5E), (0xB64, 0xB65),
    (0xB78, 0xB81), (0xB84, 0xB84), (0xB8B, 0xB8D), (0xB91, 0xB91), (0xB96, 0xB98), (0xB9B, 0xB9B),
    (0xB9D, 0xB9D), (0xBA0, 0xBA2), (0xBA5, 0xBA7), (0xBAB, 0xBAD), (0xBBA, 0xBBD), (0xBC3, 0xBC5),
    (0xBC9, 0xBC9), (0xBCE, 0xBCF), (0xBD1, 0xBD6), (0xBD8, 0xBE5), (0xBFB, 0xBFF), (0xC0D, 0xC0D),
    (0xC11, 0xC11), (0xC29, 0xC29), (0xC3A, 0xC3B), (0xC45, 0xC45), (0xC49, 0xC49), (0xC4E, 0xC54),
    (0xC57, 0xC57), (0xC5B, 0xC5C), (0xC5E, 0xC5F), (0xC64, 0xC65), (0xC70, 0xC76), (0xC8D, 0xC8D),
    (0xC91, 0xC91), (0xCA9, 0xCA9), (0xCB4, 0xCB4), (0xCBA, 0xCBB), (0xCC5, 0xCC5), (0xCC9, 0xCC9),
    (0xCCE, 0xCD4), (0xCD7, 0xCDC), (0xCDF, 0xCDF), (0xCE4, 0xCE5), (0xCF0, 0xCF0), (0xCF3, 0xCFF),
    (0xD0D, 0xD0D), (0xD11, 0xD11), (0xD45, 0xD45), (0xD49, 0xD49), (0xD50, 0xD53), (0xD64, 0xD65),
    (0xD80, 0xD80), (0xD84, 0xD84), (0xD97, 0xD99), (0xDB2, 0xDB2), (0xDBC, 0xDBC), (0xDBE, 0xDBF),
    (0xDC7, 0xDC9), (0xDCB, 0xDCE), (0xDD5, 0xDD5), (0xDD7, 0xDD7), (0xDE0, 0xDE5), (0xDF0, 0xDF1),
    (0xDF5, 0xE00), (0xE3B, 0xE3E), (0xE5C, 0xE80), (0xE83, 0xE83), (0xE85, 0xE85), (0xE8B, 0xE8B),
    (0xEA4, 0xEA4), (0xEA6, 0xEA6), (0xEBE, 0xEBF), (0xEC5, 0xEC5), (0xEC7, 0xEC7), (0xECE, 0xECF),
    (0xEDA, 0xEDB), (0xEE0, 0xEFF), (0xF48, 0xF48), (0xF6D, 0xF70), (0xF98, 0xF98), (0xFBD, 0xFBD),
    (0xFCD, 0xFCD), (0xFDB, 0xFFF), (0x10C6, 0x10C6), (0x10C8, 0x10CC), (0x10CE, 0x10CF), (0x1249, 0x1249),
    (0x124E, 0x124F), (0x1257, 0x1257), (0x1259, 0x1259), (0x125E, 0x125F), (0x1289, 0x1289), (0x128E, 0x128F),
    (0x12B1, 0x12B1), (0x12B6, 0x12B7), (0x12BF, 0x12BF), (0x12C1, 0x12C1), (0x12C6, 0x12C7), (0x12D7, 0x12D7),
    (0x1311, 0x1311), (0x1316, 0x1317), (0x135B, 0x135C), (0x137D, 0x137F), (0x139A, 0x139F), (0x13F6, 0x13F7),
    (0x13FE, 0x13FF), (0x1680, 0x1680), (0x169D, 0x169F), (0x16F9, 0x16FF), (0x1716, 0x171E), (0x1737, 0x173F),
    (0x1754, 0x175F), (0x176D, 0x176D), (0x1771, 0x1771), (0x1774, 0x177F), (0x17DE, 0x17DF), (0x17EA, 0x17EF),
    (0x17FA, 0x17FF), (0x180E, 0x180E), (0x181A, 0x181F), (0x1879, 0x187F), (0x18AB, 0x18AF), (0x18F6, 0x18FF),
    (0x191F, 0x191F), (0x192C, 0x192F), (0x193C, 0x193F), (0x1941, 0x1943), (0x196E, 0x196F), (0x1975, 0x197F),
    (0x19AC, 0x19AF), (0x19CA, 0x19CF), (0x19DB, 0x19DD), (0x1A1C, 0x1A1D), (0x1A5F, 0x1A5F), (0x1A7D, 0x1A7E),
    (0x1A8A, 0x1A8F), (0x1A9A, 0x1A9F), (0x1AAE, 0x1AAF), (0x1ACF, 0x1AFF), (0x1B4D, 0x1B4F), (0x1B7F, 0x1B7F),
    (0x1BF4, 0x1BFB), (0x1C38, 0x1C3A), (0x1C4A, 0x1C4C), (0x1C89, 0x1C8F), (0x1CBB, 0x1CBC), (0x1CC8, 0x1CCF),
    (0x1CFB, 0x1CFF), (0x1F16, 0x1F17), (0x1F1E, 0x1F1F), (0x1F46, 0x1F47), (0x1F4E, 0x1F4F), (0x1F58, 0x1F58),
    (0x1F5A, 0x1F5A), (0x1F5C, 0x1F5C), (0x1F5E, 0x1F5E), (0x1F7E, 0x1F7F), (0x1FB5, 0x1FB5), (0x1FC5, 0x1FC5),
    (0x1FD4, 0x1FD5), (0x1FDC, 0x1FDC), (0x1FF0, 0x1FF1), (0x1FF5, 0x1FF5), (0x1FFF, 0x200F), (0x2028, 0x202F),
    (0x205F, 0x206F), (0x2072, 0x2073), (0x208F, 0x208F), (0x209D, 0x209F), (0x20C1, 0x20CF), (0x20F1, 0x20FF),
    (0x218C, 0x218F), (0x2427, 0x243F), (0x244B, 0x245F), (0x2B74, 0x2B75), (0x2B96, 0x2B96), (0x2CF4, 0x2CF8),
    (0x2D26, 0x2D26), (0x2D28, 0x2D2C), (0x2D2E, 0x2D2F), (0x2D68, 0x2D6E), (0x2D71, 0x2D7E), (0x2D97, 0x2D9F),
    (0x2DA7, 0x2DA7), (0x2DAF, 0x2DAF), (0x2DB7, 0x2DB7), (0x2DBF, 0x2DBF), (0x2DC7, 0x2DC7), (0x2DCF, 0x2DCF),
    (0x2DD7, 0x2DD7), (0x2DDF, 0x2DDF), (0x2E5E, 0x2E7F), (0x2E9A, 0x2E9A), (0x2EF4, 0x2EFF), (0x2FD6, 0x2FEF),
    (0x2FFC, 0x3000), (0x3040, 0x3040), (0x3097, 0x3098), (0x3100, 0x3104), (0x3130, 0x3130), (0x318F, 0x318F),
    (0x31E4, 0x31EF), (0x321F, 0x321F), (0xA48D, 0xA48F), (0xA4C7, 0xA4CF), (0xA62C, 0xA63F), (0xA6F8, 0xA6FF),
    (0xA7CB, 0xA7CF), (0xA7D2, 0xA7D2), (0xA7D4, 0xA7D4), (0xA7DA, 0xA7F1), (0xA82D, 0xA82F), (0xA83A, 0xA83F),
    (0xA878, 0xA87F), (0xA8C6, 0xA8CD), (0xA8DA, 0xA8DF), (0xA954, 0xA95E), (0xA97D, 0xA97F), (0xA9CE, 0xA9CE),
    (0xA9DA, 0xA9DD), (0xA9FF, 0xA9FF), (0xAA37, 0xAA3F), (0xAA4E, 0xAA4F), (0xAA5A, 0xAA5B), (0xAAC3, 0xAADA),
    (0xAAF7, 0xAB00), (0xAB07, 0xAB08), (0xAB0F, 0xAB10), (0xAB17, 0xAB1F), (0xAB27, 0xAB27), (0xAB2F, 0xAB2F),
    (0xAB6C, 0xAB6F), (0xABEE, 0xABEF), (0xABFA, 0xABFF), (0xD7A4, 0xD7AF), (0xD7C7, 0xD7CA), (0xD7FC, 0xF8FF),
    (0xFA6E, 0xFA6F), (0xFADA, 0xFAFF), (0xFB07, 0xFB12), (0xFB18, 0xFB1C), (0xFB37, 0xFB37), (0xFB3D, 0xFB3D),
    (0xFB3F, 0xFB3F), (0xFB42, 0xFB42), (0xFB45, 0xFB45), (0xFBC3, 0xFBD2), (0xFD90, 0xFD91), (0xFDC8, 0xFDCE),
    (0xFDD0, 0xFDEF), (0xFE1A, 0xFE1F), (0xFE53, 0xFE53), (0xFE67, 0xFE67), (0xFE6C, 0xFE6F), (0xFE75, 0xFE75),
    (0xFEFD, 0xFF00), (0xFFBF, 0xFFC1), (0xFFC8, 0xFFC9), (0xFFD0, 0xFFD1), (0xFFD8, 0xFFD9), (0xFFDD, 0xFFDF),
    (0xFFE7, 0xFFE7), (0xFFEF, 0xFFFB), (0xFFFE, 0xFFFF), (0x1000C, 0x1000C), (0x10027, 0x10027), (0x1003B, 0x1003B),
    (0x1003E, 0x1003E), (0x1004E, 0x1004F), (0x1005E, 0x1007F), (0x100FB, 0x100FF), (0x10103, 0x10106), (0x10134, 0x10136),
    (0x1018F, 0x1018F), (0x1019D, 0x1019F), (0x101A1, 0x101CF), (0x101FE, 0x1027F), (0x1029D, 0x1029F), (0x102D1, 0x102DF),
    (0x102FC, 0x102FF), (0x10324, 0x1032C), (0x1034B, 0x1034F), (0x1037B, 0x1037F), (0x1039E, 0x1039E), (0x103C4, 0x103C7),
    (0x103D6, 0x103FF), (0x1049E, 0x1049F), (0x104AA, 0x104AF), (0x104D4, 0x104D7), (0x104FC, 0x104FF), (0x10528, 0x1052F),
    (0x10564, 0x1056E), (0x1057B, 0x1057B), (0x1058B, 0x1058B), (0x10593, 0x10593), (0x10596, 0x10596), (0x105A2, 0x105A2),
    (0x105B2, 0x105B2), (0x105BA, 0x105BA), (0x105BD, 0x105FF), (0x10737, 0x1073F), (0x10756, 0x1075F), (0x10768, 0x1077F),
    (0x10786, 0x10786), (0x107B1, 0x107B1), (0x107BB, 0x107FF), (0x10806, 0x10807), (0x10809, 0x10809), (0x10836, 0x10836),
    (0x10839, 0x1083B), (0x1083D, 0x1083E), (0x10856, 0x10856), (0x1089F, 0x108A6), (0x108B0, 0x108DF), (0x108F3, 0x108F3),
    (0x108F6, 0x108FA), (0x1091C, 0x1091E), (0x1093A, 0x1093E), (0x10940, 0x1097F), (0x109B8, 0x109BB), (0x109D0, 0x109D1),
    (0x10A04, 0x10A04), (0x10A07, 0x10A0B), (0x10A14, 0x10A14), (0x10A18, 0x10A18), (0x10A36, 0x10A37), (0x10A3B, 0x10A3E),
    (0x10A49, 0x10A4F), (0x10A59, 0x10A5F), (0x10AA0, 0x10ABF), (0x10AE7, 0x10AEA), (0x10AF7, 0x10AFF), (0x10B36, 0x10B38),
    (0x10B56, 0x10B57), (0x10B73, 0x10B77), (0x10B92, 0x10B98), (0x10B9D, 0x10BA8), (0x10BB0, 0x10BFF), (0x10C49, 0x10C7F),
    (0x10CB3, 0x10CBF), (0x10CF3, 0x10CF9), (0x10D28, 0x10D2F), (0x10D3A, 0x10E5F), (0x10E7F, 0x10E7F), (0x10EAA, 0x10EAA),
    (0x10EAE, 0x10EAF), (0x10EB2, 0x10EFF), (0x10F28, 0x10F2F), (0x10F5A, 0x10F6F), (0x10F8A, 0x10FAF), (0x10FCC, 0x10FDF),
    (0x10FF7, 0x10FFF), (0x1104E, 0x11051), (0x11076, 0x1107E), (0x110BD, 0x110BD), (0x110C3, 0x110CF), (0x110E9, 0x110EF),
    (0x110FA, 0x110FF), (0x11135, 0x11135), (0x11148, 0x1114F), (0x11177, 0x1117F), (0x111E0, 0x111E0), (0x111F5, 0x111FF),
    (0x11212, 0x11212), (0x1123F, 0x1127F), (0x11287, 0x11287), (0x11289, 0x11289), (0x1128E, 0x1128E), (0x1129E, 0x1129E),
    (0x112AA, 0x112AF), (0x112EB, 0x112EF), (0x112FA, 0x112FF), (0x11304, 0x11304), (0x1130D, 0x1130E), (0x11311, 0x11312),
    (0x11329, 0x11329), (0x11331, 0x11331), (0x11334, 0x11334), (0x1133A, 0x1133A), (0x11345, 0x11346), (0x11349, 0x1134A),
    (0x1134E, 0x1134F), (0x11351, 0x11356), (0x11358, 0x1135C), (0x11364, 0x11365), (0x1136D, 0x1136F), (0x11375, 0x113FF),
    (0x1145C, 0x1145C), (0x11462, 0x1147F), (0x114C8, 0x114CF), (0x114DA, 0x1157F), (0x115B6, 0x115B7), (0x115DE, 0x115FF),
    (0x11645, 0x1164F), (0x1165A, 0x1165F), (0x1166D, 0x1167F), (0x116BA, 0x116BF), (0x116CA, 0x116FF), (0x1171B, 0x1171C),
    (0x1172C, 0x1172F), (0x11747, 0x117FF), (0x1183C, 0x1189F), (0x118F3, 0x118FE), (0x11907, 0x11908), (0x1190A, 0x1190B),
    (0x11914, 0x11914), (0x11917, 0x11917), (0x11936, 0x11936), (0x11939, 0x1193A), (0x11947, 0x1194F), (0x1195A, 0x1199F),
    (0x119A8, 0x119A9), (0x119D8, 0x119D9), (0x119E5, 0x119FF), (0x11A48, 0x11A4F), (0x11AA3, 0x11AAF), (0x11AF9, 0x11BFF),
    (0x11C09, 0x11C09), (0x11C37, 0x11C37), (0x11C46, 0x11C4F), (0x11C6D, 0x11C6F), (0x11C90, 0x11C91), (0x11CA8, 0x11CA8),
    (0x11CB7, 0x11CFF), (0x11D07, 0x11D07), (0x11D0A, 0x11D0A), (0x11D37, 0x11D39), (0x11D3B, 0x11D3B), (0x11D3E, 0x11D3E),
    (0x11D48, 0x11D4F), (0x11D5A, 0x11D5F), (0x11D66, 0x11D66), (0x11D69, 0x11D69), (0x11D8F, 0x11D8F), (0x11D92, 0x11D92),
    (0x11D99, 0x11D9F), (0x11DAA, 0x11EDF), (0x11EF9, 0x11FAF), (0x11FB1, 0x11FBF), (0x11FF2, 0x11FFE), (0x1239A, 0x123FF),
    (0x1246F, 0x1246F), (0x12475, 0x1247F), (0x12544, 0x12F8F), (0x12FF3, 0x12FFF), (0x1342F, 0x143FF), (0x14647, 0x167FF),
    (0x16A39, 0x16A3F), (0x16A5F, 0x16A5F), (0x16A6A, 0x16A6D), (0x16ABF, 0x16ABF), (0x16ACA, 0x16ACF), (0x16AEE, 0x16AEF),
    (0x16AF6, 0x16AFF), (0x16B46, 0x16B4F), (0x16B5A, 0x16B5A), (0x16B62, 0x16B62), (0x16B78, 0x16B7C), (0x16B90, 0x16E3F),
    (0x16E9B, 0x16EFF), (0x16F4B, 0x16F4E), (0x16F88, 0x16F8E), (0x16FA0, 0x16FDF), (0x16FE5, 0x16FEF), (0x16FF2, 0x16FFF),
    (0x187F8, 0x187FF), (0x18CD6, 0x18CFF), (0x18D09, 0x1AFEF), (0x1AFF4, 0x1AFF4), (0x1AFFC, 0x1AFFC), (0x1AFFF, 0x1AFFF),
    (0x1B123, 0x1B14F), (0x1B153, 0x1B163), (0x1B168, 0x1B16F), (0x1B2FC, 0x1BBFF), (0x1BC6B, 0x1BC6F), (0x1BC7D, 0x1BC7F),
    (0x1BC89, 0x1BC8F), (0x1BC9A, 0x1BC9B), (0x1BCA0, 0x1CEFF), (0x1CF2E, 0x1CF2F), (0x1CF47, 0x1CF4F), (0x1CFC4, 0x1CFFF),
    (0x1D0F6, 0x1D0FF), (0x1D127, 0x1D128), (0x1D173, 0x1D17A), (0x1D1EB, 0x1D1FF), (0x1D246, 0x1D2DF), (0x1D2F4, 0x1D2FF),
    (0x1D357, 0x1D35F), (0x1D379, 0x1D3FF), (0x1D455, 0x1D455), (0x1D49D, 0x1D49D), (0x1D4A0, 0x1D4A1), (0x1D4A3, 0x1D4A4),
    (0x1D4A7, 0x1D4A8), (0x1D4AD, 0x1D4AD), (0x1D4BA, 0x1D4BA), (0x1D4BC, 0x1D4BC), (0x1D4C4, 0x1D4C4), (0x1D506, 0x1D506),
    (0x1D50B, 0x1D50C), (0x1D515, 0x1D515), (0x1D51D, 0x1D51D), (0x1D53A, 0x1D53A), (0x1D53F, 0x1D53F), (0x1D545, 0x1D545),
    (0x1D547, 0x1D549), (0x1D551, 0x1D551), (0x1D6A6, 0x1D6A7), (0x1D7CC, 0x1D7CD), (0x1DA8C, 0x1DA9A), (0x1DAA0, 0x1DAA0),
    (0x1DAB0, 0x1DEFF), (0x1DF1F, 0x1DFFF), (0x1E007, 0x1E007), (0x1E019, 0x1E01A), (0x1E022, 0x1E022), (0x1E025, 0x1E025),
    (0x1E02B, 0x1E0FF), (0x1E12D, 0x1E12F), (0x1E13E, 0x1E13F), (0x1E14A, 0x1E14D), (0x1E150, 0x1E28F), (0x1E2AF, 0x1E2BF),
    (0x1E2FA, 0x1E2FE), (0x1E300, 0x1E7DF), (0x1E7E7, 0x1E7E7), (0x1E7EC, 0x1E7EC), (0x1E7EF, 0x1E7EF), (0x1E7FF, 0x1E7FF),
    (0x1E8C5, 0x1E8C6), (0x1E8D7, 0x1E8FF), (0x1E94C, 0x1E94F), (0x1E95A, 0x1E95D), (0x1E960, 0x1EC70), (0x1ECB5, 0x1ED00),
    (0x1ED3E, 0x1EDFF), (0x1EE04, 0x1EE04), (0x1EE20, 0x1EE20), (0x1EE23, 0x1EE23), (0x1EE25, 0x1EE26), (0x1EE28, 0x1EE28),
    (0x1EE33, 0x1EE33), (0x1EE38, 0x1EE38), (0x1EE3A, 0x1EE3A), (0x1EE3C, 0x1EE41), (0x1EE43, 0x1EE46), (0x1EE48, 0x1EE48),
    (0x1EE4A, 0x1EE4A), (0x1EE4C, 0x1EE4C), (0x1EE50, 0x1EE50), (0x1EE53, 0x1EE53), (0x1EE55, 0x1EE56), (0x1EE58, 0x1EE58),
    (0x1EE5A, 0x1EE5A), (0x1EE5C, 0x1EE5C), (0x1EE5E, 0x1EE5E), (0x1EE60, 0x1EE60), (0x1EE63, 0x1EE63), (0x1EE65, 0x1EE66),
    (0x1EE6B, 0x1EE6B), (0x1EE73, 0x1EE73), (0x1EE78, 0x1EE78), (0x1EE7D, 0x1EE7D), (0x1EE7F, 0x1EE7F), (0x1EE8A, 0x1EE8A),
    (0x1EE9C, 0x1EEA0), (0x1EEA4, 0x1EEA4), (0x1EEAA, 0x1EEAA), (0x1EEBC, 0x1EEEF), (0x1EEF2, 0x1EFFF), (0x1F02C, 0x1F02F),
    (0x1F094, 0x1F09F), (0x1F0AF, 0x1F0B0), (0x1F0C0, 0x1F0C0), (0x1F0D0, 0x1F0D0), (0x1F0F6, 0x1F0FF), (0x1F1AE, 0x1F1E5),
    (0x1F203, 0x1F20F), (0x1F23C, 0x1F23F), (0x1F249, 0x1F24F), (0x1F252, 0x1F25F), (0x1F266, 0x1F2FF), (0x1F6D8, 0x1F6DC),
    (0x1F6ED, 0x1F6EF), (0x1F6FD, 0x1F6FF), (0x1F774, 0x1F77F), (0x1F7D9, 0x1F7DF), (0x1F7EC, 0x1F7EF), (0x1F7F1, 0x1F7FF),
    (0x1F80C, 0x1F80F), (0x1F848, 0x1F84F), (0x1F85A, 0x1F85F), (0x1F888, 0x1F88F), (0x1F8AE, 0x1F8AF), (0x1F8B2, 0x1F8FF),
    (0x1FA54, 0x1FA5F), (0x1FA6E, 0x1FA6F), (0x1FA75, 0x1FA77), (0x1FA7D, 0x1FA7F), (0x1FA87, 0x1FA8F), (0x1FAAD, 0x1FAAF),
    (0x1FABB, 0x1FABF), (0x1FAC6, 0x1FACF), (0x1FADA, 0x1FADF), (0x1FAE8, 0x1FAEF), (0x1FAF7, 0x1FAFF), (0x1FB93, 0x1FB93),
    (0x1FBCB, 0x1FBEF), (0x1FBFA, 0x1FFFF), (0x2A6E0, 0x2A6FF), (0x2B739, 0x2B73F), (0x2B81E, 0x2B81F), (0x2CEA2, 0x2CEAF),
    (0x2EBE1, 0x2F7FF), (0x2FA1E, 0x2FFFF), (0x3134B, 0xE00FF), (0xE01F0, 0x10FFFF),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> PyValue {
        PyValue::str(v)
    }

    #[test]
    fn loads_accepts_python_extensions() {
        let v = loads(" [NaN, Infinity, -Infinity, 1, -0, 1.5e3, 1E-2, true, null] ").unwrap();
        let l = v.as_list().unwrap();
        assert!(matches!(l[0], PyValue::Float(f) if f.is_nan()));
        assert_eq!(l[1], PyValue::Float(f64::INFINITY));
        assert_eq!(l[2], PyValue::Float(f64::NEG_INFINITY));
        assert_eq!(l[3], PyValue::Int(PyInt::Small(1)));
        assert_eq!(l[4], PyValue::Int(PyInt::Small(0)));
        assert_eq!(l[5], PyValue::Float(1500.0));
        assert_eq!(l[6], PyValue::Float(0.01));
        assert_eq!(l[7], PyValue::Bool(true));
        assert_eq!(l[8], PyValue::None);
        assert_eq!(loads("\"x\"").unwrap(), s("x"));
        assert_eq!(loads("12").unwrap(), PyValue::Int(PyInt::Small(12)));
    }

    #[test]
    fn loads_rejects_what_python_rejects() {
        for bad in [
            "",
            " ",
            "[1,]",
            "{\"a\":1,}",
            "{'a': 1}",
            "\"a\tb\"",
            "\"a\nb\"",
            "01",
            "1.",
            ".5",
            "-",
            "nan",
            "inf",
            "[1 2]",
            "\"\\x\"",
            "\"\\u12G4\"",
            "{\"a\" 1}",
            "\u{feff}1",
            "\"abc",
            "tru",
            "1e",
            "[",
            "{",
        ] {
            assert!(loads(bad).is_err(), "should reject {bad:?}");
        }
        assert_eq!(loads("1e").unwrap_err().msg, "Extra data");
        assert_eq!(loads("[1,]").unwrap_err().msg, "Expecting value");
        let e = loads("{\"a\": 1,\n \"b\"}").unwrap_err();
        assert_eq!(
            (e.msg.as_str(), e.line, e.col, e.pos),
            ("Expecting ':' delimiter", 2, 5, 13)
        );
        // DEL and non-ASCII are fine inside strings.
        assert_eq!(loads("\"\u{7f}é\"").unwrap(), s("\u{7f}é"));
    }

    #[test]
    fn duplicate_keys_keep_last_value_first_position() {
        let v = loads(r#"{"a": 1, "b": 2, "a": 3}"#).unwrap();
        let d = v.as_dict().unwrap();
        let keys: Vec<String> = d.keys().map(|k| k.to_string()).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(d.get("a"), Some(&PyValue::Int(PyInt::Small(3))));
        assert_eq!(dumps(&v), r#"{"a": 3, "b": 2}"#);
    }

    #[test]
    fn big_ints_and_digit_limit() {
        let big = "123456789012345678901234567890123456789012345";
        let v = loads(big).unwrap();
        assert_eq!(v, PyValue::Int(PyInt::Big(big.to_string())));
        assert_eq!(dumps(&v), big);
        assert_eq!(
            loads(&format!("-{big}")).unwrap().py_repr(),
            format!("-{big}")
        );
        let ok = "9".repeat(4300);
        assert!(loads(&ok).is_ok());
        let e = loads(&"9".repeat(4301)).unwrap_err();
        assert_eq!(e.kind, JsonErrorKind::IntDigits);
        // Floats have no digit limit.
        assert!(loads(&format!("{}.0", "9".repeat(5000))).is_ok());
    }

    #[test]
    fn surrogates() {
        let v = loads(r#""\ud83d\ude00""#).unwrap();
        assert_eq!(v, s("😀"));
        assert_eq!(dumps(&v), r#""\ud83d\ude00""#);
        let lone = loads(r#""a\ud800b""#).unwrap();
        assert_eq!(lone, PyValue::Str(PyStr::Wide(vec![0x61, 0xD800, 0x62])));
        assert_eq!(dumps(&lone), r#""a\ud800b""#);
        assert_eq!(lone.py_repr(), r"'a\ud800b'");
        // A high surrogate followed by a non-low escape stays lone; both escapes are kept.
        let v = loads(r#""\ud800\u0041""#).unwrap();
        assert_eq!(v, PyValue::Str(PyStr::Wide(vec![0xD800, 0x41])));
        assert!(loads(r#""\ud800\u00zz""#).is_err());
        assert!(lone.truthy());
    }

    #[test]
    fn deep_nesting_is_a_recursion_error() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(loads(&deep).unwrap_err().kind, JsonErrorKind::Recursion);
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(loads(&ok).is_ok());
    }

    #[test]
    fn float_repr_matches_python() {
        let cases: &[(f64, &str)] = &[
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (150000.0, "150000.0"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (-2.5, "-2.5"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (1e300, "1e+300"),
            (5e-324, "5e-324"),
            (0.5849654435250686, "0.5849654435250686"),
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (9999999999999998.0, "9999999999999998.0"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (0.30000000000000004, "0.30000000000000004"),
            (12.0, "12.0"),
            (1.25e-5, "1.25e-05"),
            // Exact ties between two shortest candidates: CPython takes the even last digit
            // (the first value is exactly 92581284705668.625).
            (f64::from_bits(4815769604252852520), "92581284705668.62"),
            (0.375, "0.375"),
            (2.5e-8, "2.5e-08"),
        ];
        for &(x, want) in cases {
            assert_eq!(float_repr(x), want, "{x:e}");
        }
        assert_eq!(dumps(&PyValue::Float(f64::INFINITY)), "Infinity");
        assert_eq!(dumps(&PyValue::Float(f64::NAN)), "NaN");
        assert_eq!(PyValue::Float(f64::NEG_INFINITY).py_repr(), "-inf");
    }

    #[test]
    fn dumps_matches_python() {
        let v = loads(
            r#"{"a": ["x", "y\"z", "\\", "\u00e9\u2019\n\u007f", {}], "b": {"c": []}, "n": 1.0}"#,
        )
        .unwrap();
        assert_eq!(
            dumps(&v),
            r#"{"a": ["x", "y\"z", "\\", "\u00e9\u2019\n\u007f", {}], "b": {"c": []}, "n": 1.0}"#
        );
        assert_eq!(dumps(&s("\u{1}\u{8}\u{c}\r\t/")), r#""\u0001\b\f\r\t/""#);
        assert_eq!(dumps(&s("𝄞")), r#""\ud834\udd1e""#);
    }

    #[test]
    fn repr_matches_python() {
        let v = loads(r#"["a", "it's", "say \"hi\"", "both ' and \"", "\\", true, null, 1.5, 175800, {"k": [false]}]"#)
            .unwrap();
        assert_eq!(
            v.py_repr(),
            r#"['a', "it's", 'say "hi"', 'both \' and "', '\\', True, None, 1.5, 175800, {'k': [False]}]"#
        );
        assert_eq!(
            s("tab\there\n\r\u{1}\u{7f}").py_repr(),
            r"'tab\there\n\r\x01\x7f'"
        );
        // Printable non-ASCII is kept; non-printable uses \x, \u or \U.
        assert_eq!(s("é’ü").py_repr(), "'é’ü'");
        assert_eq!(
            s("\u{a0}\u{ad}\u{2028}\u{e000}\u{10ffff}").py_repr(),
            r"'\xa0\xad\u2028\ue000\U0010ffff'"
        );
        assert_eq!(s("x").py_str(), PyStr::from("x"));
        assert_eq!(
            PyValue::List(vec![s("On-site")]).py_str(),
            PyStr::from("['On-site']")
        );
    }

    #[test]
    fn lower_and_final_sigma() {
        // CPython: 'ΣΑΣ'.lower() == 'σας'; 'ΣΑΣ Α'.lower() == 'σας α'; 'Σ'.lower() == 'σ'.
        assert_eq!(PyStr::from("ΣΑΣ").lower(), PyStr::from("σας"));
        assert_eq!(PyStr::from("ΣΑΣ Α").lower(), PyStr::from("σας α"));
        assert_eq!(PyStr::from("Σ").lower(), PyStr::from("σ"));
        assert_eq!(PyStr::from("AΣ'Β").lower(), PyStr::from("aσ'β"));
        assert_eq!(PyStr::from("İ").lower(), PyStr::from("i\u{307}"));
        assert_eq!(
            PyStr::from("ÀÉ Bachelor’S").lower(),
            PyStr::from("àé bachelor’s")
        );
        let w = PyStr::Wide(vec!['A' as u32, 0xD800, 0x3A3]);
        assert_eq!(w.lower(), PyStr::Wide(vec!['a' as u32, 0xD800, 0x3C3]));
    }

    #[test]
    fn truthiness() {
        for (v, t) in [
            ("null", false),
            ("false", false),
            ("0", false),
            ("0.0", false),
            ("-0.0", false),
            ("\"\"", false),
            ("[]", false),
            ("{}", false),
            ("NaN", true),
            ("\" \"", true),
            ("[0]", true),
            ("1", true),
            ("{\"a\": null}", true),
            ("true", true),
        ] {
            assert_eq!(loads(v).unwrap().truthy(), t, "{v}");
        }
    }

    #[test]
    fn isspace_and_strip() {
        assert!(py_isspace('\u{1c}') && py_isspace('\u{a0}') && py_isspace('\u{3000}'));
        assert!(!py_isspace('\u{200b}') && !py_isspace('\u{180e}') && !py_isspace('x'));
        assert_eq!(py_strip("\u{1f} \t{x}\u{2028}"), "{x}");
    }

    #[test]
    fn serde_round_trip() {
        let v = loads(r#"{"a": [1, 2.5, "x", null, true], "b": {"c": -7}}"#).unwrap();
        let sv = v.to_serde();
        assert_eq!(
            sv.to_string(),
            r#"{"a":[1,2.5,"x",null,true],"b":{"c":-7}}"#
        );
        assert_eq!(PyValue::from_serde(&sv), v);
    }
}
