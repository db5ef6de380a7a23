//! JSON Schema subset → byte-level NFA over the chosen surface.
//!
//! Supported (the strict subset of OpenAI-style structured outputs, see docs/GRAMMAR.md):
//! `type` (one name or a list: object, array, string, integer, number, boolean, null), object
//! `properties` (emitted in declared order) / `required` (others optional) / `additionalProperties:
//! false` (or absent: only declared properties are ever emitted), array `items` / `minItems` /
//! `maxItems`, string `minLength` / `maxLength`, `enum`, `const`, `anyOf`, local `$ref` into `$defs`
//! or `definitions` (non-recursive). Annotations (`title`, `description`, `$comment`, `examples`,
//! `default`, `deprecated`, `readOnly`, `writeOnly`, `$schema`, `$id`) are accepted because they do
//! not constrain values. Any other keyword is an error naming it and its JSON pointer.
//!
//! Non-recursive schemas describe a regular language, so a plain NFA is enough. Repetition bounds
//! (`maxItems`, `maxLength`) are unrolled; the [`Budgets`] bound node counts, nesting depth and enum
//! sizes so pathological schemas fail fast with a clear error.
//!
//! Numbers are bounded so every accepted document parses without overflow in any JSON parser:
//! integers `-?(0|[1-9][0-9]{0,17})` (fits i64), numbers additionally allow a fraction of at most 16
//! digits and an exponent of at most 2 digits.

use super::surface::{Surface, UNK_BYTE};
use super::{GrammarError, Result};
use serde_json::{Map, Value};

/// Size limits for schema compilation.
#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    /// NFA nodes (unrolled `maxItems`/`maxLength` multiply this).
    pub max_nfa_nodes: usize,
    /// DFA states after subset construction.
    pub max_dfa_states: usize,
    /// Schema nesting depth (objects, arrays, `$ref` expansions).
    pub max_depth: usize,
    /// Values in one `enum`.
    pub max_enum_values: usize,
    /// Bytes in the schema text given to [`super::tools::load_schema`].
    pub max_schema_bytes: usize,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            max_nfa_nodes: 200_000,
            max_dfa_states: 20_000,
            max_depth: 32,
            max_enum_values: 1_000,
            max_schema_bytes: 1 << 20,
        }
    }
}

/// A set of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ByteSet(pub [u64; 4]);

impl ByteSet {
    pub fn single(b: u8) -> ByteSet {
        let mut s = ByteSet::default();
        s.insert(b);
        s
    }
    pub fn range(lo: u8, hi: u8) -> ByteSet {
        let mut s = ByteSet::default();
        for b in lo..=hi {
            s.insert(b);
        }
        s
    }
    pub fn of(bytes: &[u8]) -> ByteSet {
        let mut s = ByteSet::default();
        for &b in bytes {
            s.insert(b);
        }
        s
    }
    pub fn insert(&mut self, b: u8) {
        self.0[(b >> 6) as usize] |= 1u64 << (b & 63);
    }
    pub fn contains(&self, b: u8) -> bool {
        self.0[(b >> 6) as usize] >> (b & 63) & 1 == 1
    }
    pub fn union(mut self, o: ByteSet) -> ByteSet {
        for i in 0..4 {
            self.0[i] |= o.0[i];
        }
        self
    }
    pub fn minus(mut self, o: ByteSet) -> ByteSet {
        for i in 0..4 {
            self.0[i] &= !o.0[i];
        }
        self
    }
}

/// An NFA edge on a byte set. `umean` is the structural character a [`UNK_BYTE`] edge stands for.
#[derive(Debug, Clone)]
pub struct Edge {
    pub set: ByteSet,
    pub to: u32,
    pub umean: u8,
}

#[derive(Debug, Clone, Default)]
pub struct NfaNode {
    pub eps: Vec<u32>,
    pub edges: Vec<Edge>,
}

/// A Thompson-style NFA with one start and one accepting node.
#[derive(Debug, Clone)]
pub struct Nfa {
    pub nodes: Vec<NfaNode>,
    pub start: u32,
    pub accept: u32,
}

/// Compiles a schema into an NFA for the given surface.
pub fn compile_nfa(schema: &Value, surface: &Surface, budgets: &Budgets) -> Result<Nfa> {
    let mut c = Compiler {
        root: schema,
        surf: surface,
        budgets: *budgets,
        nodes: Vec::new(),
        refs: Vec::new(),
    };
    let start = c.node("")?;
    let end = c.schema(schema, "", start, 0)?;
    Ok(Nfa {
        nodes: c.nodes,
        start,
        accept: end,
    })
}

const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "$comment",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];
const CONTAINERS: &[&str] = &["$defs", "definitions"];
const ROOT_ONLY: &[&str] = &["$schema", "$id"];
const STRING_KW: &[&str] = &["minLength", "maxLength"];
const ARRAY_KW: &[&str] = &["items", "minItems", "maxItems"];
const OBJECT_KW: &[&str] = &["properties", "required", "additionalProperties"];
const TYPES: &[&str] = &[
    "object", "array", "string", "integer", "number", "boolean", "null",
];

struct Compiler<'a> {
    root: &'a Value,
    surf: &'a Surface,
    budgets: Budgets,
    nodes: Vec<NfaNode>,
    /// `$ref` strings being expanded (recursion detection).
    refs: Vec<String>,
}

fn invalid(path: &str, msg: impl Into<String>) -> GrammarError {
    GrammarError::InvalidSchema {
        path: if path.is_empty() {
            "#".into()
        } else {
            format!("#{path}")
        },
        msg: msg.into(),
    }
}

fn ptr(path: &str) -> String {
    if path.is_empty() {
        "#".into()
    } else {
        format!("#{path}")
    }
}

fn escape_ptr(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

impl<'a> Compiler<'a> {
    fn node(&mut self, path: &str) -> Result<u32> {
        if self.nodes.len() >= self.budgets.max_nfa_nodes {
            return Err(GrammarError::Budget {
                what: "NFA nodes",
                limit: self.budgets.max_nfa_nodes,
                path: ptr(path),
            });
        }
        self.nodes.push(NfaNode::default());
        Ok((self.nodes.len() - 1) as u32)
    }

    fn eps(&mut self, from: u32, to: u32) {
        self.nodes[from as usize].eps.push(to);
    }

    fn edge(&mut self, from: u32, set: ByteSet, to: u32) {
        self.nodes[from as usize]
            .edges
            .push(Edge { set, to, umean: 0 });
    }

    /// One automaton byte; `raw` is the character it spells (differs only for `<unk>`).
    fn byte_edge(&mut self, from: u32, byte: u8, raw: u8, to: u32) {
        let umean = if byte == UNK_BYTE { raw } else { 0 };
        self.nodes[from as usize].edges.push(Edge {
            set: ByteSet::single(byte),
            to,
            umean,
        });
    }

    /// A literal of raw bytes, where structural `{` `}` `\` are mapped through the surface.
    /// `raw_mapped` gives (automaton byte, raw char) pairs.
    fn lit_pairs(&mut self, from: u32, pairs: &[(u8, u8)], path: &str) -> Result<u32> {
        let mut cur = from;
        for &(b, raw) in pairs {
            let n = self.node(path)?;
            self.byte_edge(cur, b, raw, n);
            cur = n;
        }
        Ok(cur)
    }

    /// A structural literal (outside strings): `{`, `}` mapped, everything else as is.
    fn lit(&mut self, from: u32, raw: &[u8], path: &str) -> Result<u32> {
        let pairs: Vec<(u8, u8)> = raw.iter().map(|&b| (self.surf.map_byte(b), b)).collect();
        self.lit_pairs(from, &pairs, path)
    }

    /// A literal JSON value (enum/const) or a key, spelled through the surface.
    fn value_lit(&mut self, from: u32, v: &Value, path: &str) -> Result<u32> {
        let mut raw = Vec::new();
        self.surf.spell_value(v, &mut raw);
        let mapped = self.surf.map_structural(&raw);
        let pairs: Vec<(u8, u8)> = mapped.iter().zip(&raw).map(|(&m, &r)| (m, r)).collect();
        self.lit_pairs(from, &pairs, path)
    }

    fn schema(&mut self, s: &Value, path: &str, from: u32, depth: usize) -> Result<u32> {
        if depth > self.budgets.max_depth {
            return Err(GrammarError::Budget {
                what: "schema nesting depth",
                limit: self.budgets.max_depth,
                path: ptr(path),
            });
        }
        let m = match s {
            Value::Object(m) => m,
            Value::Bool(true) => {
                return Err(invalid(
                    path,
                    "the schema `true` (any value) is unsupported: give a type",
                ))
            }
            Value::Bool(false) => return Err(invalid(path, "the schema `false` admits no value")),
            _ => return Err(invalid(path, "a schema must be an object")),
        };
        // Reject unknown keywords first, so the error names them.
        for k in m.keys() {
            let known = ANNOTATIONS.contains(&k.as_str())
                || CONTAINERS.contains(&k.as_str())
                || STRING_KW.contains(&k.as_str())
                || ARRAY_KW.contains(&k.as_str())
                || OBJECT_KW.contains(&k.as_str())
                || matches!(k.as_str(), "type" | "enum" | "const" | "anyOf" | "$ref");
            let root_ok = path.is_empty() && ROOT_ONLY.contains(&k.as_str());
            if !known && !root_ok {
                return Err(GrammarError::UnsupportedKeyword {
                    keyword: k.clone(),
                    path: ptr(path),
                });
            }
        }
        let constraining: Vec<&str> = m
            .keys()
            .map(String::as_str)
            .filter(|k| {
                !ANNOTATIONS.contains(k) && !CONTAINERS.contains(k) && !ROOT_ONLY.contains(k)
            })
            .collect();

        if let Some(r) = m.get("$ref") {
            if let Some(other) = constraining.iter().find(|k| **k != "$ref") {
                return Err(invalid(
                    path,
                    format!("'$ref' with sibling keyword '{other}' is unsupported"),
                ));
            }
            let r = r
                .as_str()
                .ok_or_else(|| invalid(path, "'$ref' must be a string"))?;
            let target = self.resolve_ref(r, path)?;
            self.refs.push(r.to_string());
            let out = self.schema(target, &format!("{path}/$ref"), from, depth + 1);
            self.refs.pop();
            return out;
        }
        if let Some(any) = m.get("anyOf") {
            if let Some(other) = constraining.iter().find(|k| **k != "anyOf") {
                return Err(invalid(
                    path,
                    format!("'anyOf' with sibling keyword '{other}' is unsupported"),
                ));
            }
            let list = any
                .as_array()
                .ok_or_else(|| invalid(path, "'anyOf' must be an array"))?;
            if list.is_empty() {
                return Err(invalid(path, "'anyOf' must not be empty"));
            }
            let end = self.node(path)?;
            for (i, sub) in list.iter().enumerate() {
                let b = self.node(path)?;
                self.eps(from, b);
                let e = self.schema(sub, &format!("{path}/anyOf/{i}"), b, depth + 1)?;
                self.eps(e, end);
            }
            return Ok(end);
        }

        let types = self.types(m, path)?;
        // Type-specific keywords must have their type present (never silently ignored).
        for (kws, t) in [
            (STRING_KW, "string"),
            (ARRAY_KW, "array"),
            (OBJECT_KW, "object"),
        ] {
            for k in kws {
                if m.contains_key(*k) && !types.as_ref().is_some_and(|ts| ts.contains(&t)) {
                    return Err(invalid(
                        path,
                        format!("keyword '{k}' requires \"type\": \"{t}\" here"),
                    ));
                }
            }
        }
        let (min_len, max_len) = self.length_bounds(m, "minLength", "maxLength", path)?;

        if m.contains_key("enum") || m.contains_key("const") {
            for k in &constraining {
                if !matches!(*k, "enum" | "const" | "type" | "minLength" | "maxLength") {
                    return Err(invalid(
                        path,
                        format!("'enum'/'const' with sibling keyword '{k}' is unsupported"),
                    ));
                }
            }
            let mut values: Vec<Value> = match m.get("enum") {
                Some(Value::Array(a)) => a.clone(),
                Some(_) => return Err(invalid(path, "'enum' must be an array")),
                None => Vec::new(),
            };
            if let Some(c) = m.get("const") {
                if m.contains_key("enum") {
                    values.retain(|v| v == c);
                } else {
                    values.push(c.clone());
                }
            }
            if values.len() > self.budgets.max_enum_values {
                return Err(GrammarError::Budget {
                    what: "enum values",
                    limit: self.budgets.max_enum_values,
                    path: ptr(path),
                });
            }
            // Keep only values the other keywords admit.
            values.retain(|v| {
                let type_ok = types
                    .as_ref()
                    .is_none_or(|ts| ts.iter().any(|t| value_has_type(v, t)));
                let len_ok = match v.as_str() {
                    Some(s) => {
                        let n = s.chars().count() as u64;
                        n >= min_len && max_len.is_none_or(|mx| n <= mx)
                    }
                    None => true,
                };
                type_ok && len_ok
            });
            let mut seen = std::collections::HashSet::new();
            values.retain(|v| seen.insert(v.to_string()));
            if values.is_empty() {
                return Err(invalid(
                    path,
                    "no 'enum'/'const' value satisfies the other keywords",
                ));
            }
            let end = self.node(path)?;
            for v in &values {
                let b = self.node(path)?;
                self.eps(from, b);
                let e = self.value_lit(b, v, path)?;
                self.eps(e, end);
            }
            return Ok(end);
        }

        let Some(types) = types else {
            return Err(invalid(path, "schema without 'type', 'enum', 'const', 'anyOf' or '$ref' (any value) is unsupported"));
        };
        let end = self.node(path)?;
        for t in types {
            let b = self.node(path)?;
            self.eps(from, b);
            let e = match t {
                "null" => self.lit(b, b"null", path)?,
                "boolean" => {
                    let e = self.node(path)?;
                    let x = self.lit(b, b"true", path)?;
                    self.eps(x, e);
                    let y = self.lit(b, b"false", path)?;
                    self.eps(y, e);
                    e
                }
                "integer" => self.number(b, false, path)?,
                "number" => self.number(b, true, path)?,
                "string" => self.string(b, min_len, max_len, path)?,
                "array" => self.array(m, b, path, depth)?,
                "object" => self.object(m, b, path, depth)?,
                _ => return Err(invalid(path, format!("unknown type '{t}'"))),
            };
            self.eps(e, end);
        }
        Ok(end)
    }

    /// The `type` keyword as a list of names (None when absent).
    fn types(&self, m: &Map<String, Value>, path: &str) -> Result<Option<Vec<&'static str>>> {
        let Some(t) = m.get("type") else {
            return Ok(None);
        };
        let names: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => {
                let mut v = Vec::new();
                for x in a {
                    v.push(
                        x.as_str()
                            .ok_or_else(|| invalid(path, "'type' list entries must be strings"))?,
                    );
                }
                v
            }
            _ => {
                return Err(invalid(
                    path,
                    "'type' must be a string or a list of strings",
                ))
            }
        };
        if names.is_empty() {
            return Err(invalid(path, "'type' must not be an empty list"));
        }
        let mut out = Vec::new();
        for n in names {
            let Some(t) = TYPES.iter().find(|t| **t == n) else {
                return Err(invalid(path, format!("unknown type '{n}'")));
            };
            if out.contains(t) {
                return Err(invalid(path, format!("type '{n}' listed twice")));
            }
            out.push(*t);
        }
        Ok(Some(out))
    }

    fn length_bounds(
        &self,
        m: &Map<String, Value>,
        kmin: &str,
        kmax: &str,
        path: &str,
    ) -> Result<(u64, Option<u64>)> {
        let get = |k: &str| -> Result<Option<u64>> {
            match m.get(k) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| invalid(path, format!("'{k}' must be a non-negative integer"))),
            }
        };
        let lo = get(kmin)?.unwrap_or(0);
        let hi = get(kmax)?;
        if let Some(h) = hi {
            if lo > h {
                return Err(invalid(
                    path,
                    format!("'{kmin}' {lo} is greater than '{kmax}' {h}"),
                ));
            }
        }
        // Unrolled bounds: fail early with a budget error instead of building huge automata.
        let limit = (self.budgets.max_nfa_nodes / 8) as u64;
        for (k, v) in [(kmin, Some(lo)), (kmax, hi)] {
            if let Some(v) = v {
                if v > limit {
                    return Err(GrammarError::Budget {
                        what: if k.contains("Items") {
                            "array bound"
                        } else {
                            "string length bound"
                        },
                        limit: limit as usize,
                        path: format!("{}/{k}", ptr(path)),
                    });
                }
            }
        }
        Ok((lo, hi))
    }

    fn resolve_ref(&self, r: &str, path: &str) -> Result<&'a Value> {
        let bad = |msg: &str| GrammarError::BadRef {
            path: ptr(path),
            reference: r.to_string(),
            msg: msg.to_string(),
        };
        if self.refs.iter().any(|x| x == r) {
            return Err(bad("recursive $ref is unsupported"));
        }
        let Some(pointer) = r.strip_prefix('#') else {
            return Err(bad("only local references ('#/...') are supported"));
        };
        if pointer.is_empty() {
            return Err(bad("recursive $ref is unsupported"));
        }
        self.root
            .pointer(pointer)
            .ok_or_else(|| bad("does not resolve"))
    }

    /// `-?(0|[1-9][0-9]{0,17})` for integers; numbers add `(\.[0-9]{1,16})?([eE][+-]?[0-9]{1,2})?`
    /// and keep the integer part to 16 digits.
    fn number(&mut self, from: u32, float: bool, path: &str) -> Result<u32> {
        let digit = ByteSet::range(b'0', b'9');
        let nz = ByteSet::range(b'1', b'9');
        let sign_done = self.node(path)?;
        self.eps(from, sign_done);
        self.edge(from, ByteSet::single(b'-'), sign_done);
        let int_end = self.node(path)?;
        self.edge(sign_done, ByteSet::single(b'0'), int_end);
        let max_int = if float { 16 } else { 18 };
        let mut cur = self.node(path)?;
        self.edge(sign_done, nz, cur);
        self.eps(cur, int_end);
        for _ in 1..max_int {
            let n = self.node(path)?;
            self.edge(cur, digit, n);
            self.eps(n, int_end);
            cur = n;
        }
        if !float {
            return Ok(int_end);
        }
        let end = self.node(path)?;
        // Fraction.
        let frac_done = self.node(path)?;
        self.eps(int_end, frac_done);
        let dot = self.node(path)?;
        self.edge(int_end, ByteSet::single(b'.'), dot);
        let mut cur = dot;
        for _ in 0..16 {
            let n = self.node(path)?;
            self.edge(cur, digit, n);
            self.eps(n, frac_done);
            cur = n;
        }
        // Exponent.
        self.eps(frac_done, end);
        let e = self.node(path)?;
        self.edge(frac_done, ByteSet::of(b"eE"), e);
        let es = self.node(path)?;
        self.eps(e, es);
        self.edge(e, ByteSet::of(b"+-"), es);
        let d1 = self.node(path)?;
        self.edge(es, digit, d1);
        self.eps(d1, end);
        let d2 = self.node(path)?;
        self.edge(d1, digit, d2);
        self.eps(d2, end);
        Ok(end)
    }

    /// Bytes written raw inside strings (besides multi-byte UTF-8 in non-ASCII surfaces).
    pub fn content_set() -> ByteSet {
        ByteSet::range(0x20, 0x7E).minus(ByteSet::of(b"\"\\"))
    }

    /// One string character from `from` to `to`: a raw character or an escape.
    fn string_char(&mut self, from: u32, to: u32, path: &str) -> Result<()> {
        self.edge(from, Self::content_set(), to);
        if !self.surf.ascii {
            // Valid multi-byte UTF-8 (RFC 3629 table).
            let cont = ByteSet::range(0x80, 0xBF);
            let two = self.node(path)?; // expects 1 continuation byte
            self.edge(from, ByteSet::range(0xC2, 0xDF), two);
            self.edge(two, cont, to);
            let three = self.node(path)?; // expects 2 more
            self.edge(
                from,
                ByteSet::range(0xE1, 0xEC).union(ByteSet::of(&[0xEE, 0xEF])),
                three,
            );
            let e0 = self.node(path)?;
            self.edge(from, ByteSet::single(0xE0), e0);
            self.edge(e0, ByteSet::range(0xA0, 0xBF), two);
            let ed = self.node(path)?;
            self.edge(from, ByteSet::single(0xED), ed);
            self.edge(ed, ByteSet::range(0x80, 0x9F), two);
            self.edge(three, cont, two);
            let four = self.node(path)?; // expects 3 more
            self.edge(from, ByteSet::range(0xF1, 0xF3), four);
            self.edge(four, cont, three);
            let f0 = self.node(path)?;
            self.edge(from, ByteSet::single(0xF0), f0);
            self.edge(f0, ByteSet::range(0x90, 0xBF), three);
            let f4 = self.node(path)?;
            self.edge(from, ByteSet::single(0xF4), f4);
            self.edge(f4, ByteSet::range(0x80, 0x8F), three);
        }
        // Escapes: \" \\ \/ \b \f \n \r \t and \uXXXX with well-formed surrogate pairs.
        let bs = self.surf.bslash;
        let esc = self.node(path)?;
        self.byte_edge(from, bs, b'\\', esc);
        self.edge(esc, ByteSet::of(b"\"/bfnrt"), to);
        self.byte_edge(esc, bs, b'\\', to);
        let hex = ByteSet::range(b'0', b'9')
            .union(ByteSet::range(b'a', b'f'))
            .union(ByteSet::range(b'A', b'F'));
        let u = self.node(path)?;
        self.edge(esc, ByteSet::single(b'u'), u);
        // Non-surrogate: first digit not d/D, or d/D followed by 0-7.
        let h3 = self.node(path)?; // 3 hex digits to go
        let first_nd = hex.minus(ByteSet::of(b"dD"));
        self.edge(u, first_nd, h3);
        let h2 = self.node(path)?;
        self.edge(h3, hex, h2);
        let h1 = self.node(path)?;
        self.edge(h2, hex, h1);
        self.edge(h1, hex, to);
        let d = self.node(path)?;
        self.edge(u, ByteSet::of(b"dD"), d);
        self.edge(d, ByteSet::range(b'0', b'7'), h2);
        // High surrogate d[89ab]XX, then \ u d[c-f]XX.
        let hi = self.node(path)?;
        self.edge(d, ByteSet::of(b"89abAB"), hi);
        let hi2 = self.node(path)?;
        self.edge(hi, hex, hi2);
        let hi3 = self.node(path)?;
        self.edge(hi2, hex, hi3);
        let lo_bs = self.node(path)?;
        self.byte_edge(hi3, bs, b'\\', lo_bs);
        let lo_u = self.node(path)?;
        self.edge(lo_bs, ByteSet::single(b'u'), lo_u);
        let lo_d = self.node(path)?;
        self.edge(lo_u, ByteSet::of(b"dD"), lo_d);
        let lo2 = self.node(path)?;
        self.edge(lo_d, ByteSet::of(b"cdefCDEF"), lo2);
        let lo3 = self.node(path)?;
        self.edge(lo2, hex, lo3);
        self.edge(lo3, hex, to);
        Ok(())
    }

    fn string(&mut self, from: u32, min: u64, max: Option<u64>, path: &str) -> Result<u32> {
        let open = self.lit(from, b"\"", path)?;
        let end = self.node(path)?;
        let mut cur = open;
        match max {
            None => {
                for _ in 0..min {
                    let n = self.node(path)?;
                    self.string_char(cur, n, path)?;
                    cur = n;
                }
                // Loop node: a fresh node so no edge ever enters `open` (fragments stay loop-free
                // at their entry).
                let lp = self.node(path)?;
                self.eps(cur, lp);
                self.string_char(lp, lp, path)?;
                self.byte_edge(lp, b'"', b'"', end);
            }
            Some(max) => {
                for k in 0..=max {
                    if k >= min {
                        self.byte_edge(cur, b'"', b'"', end);
                    }
                    if k < max {
                        let n = self.node(path)?;
                        self.string_char(cur, n, path)?;
                        cur = n;
                    }
                }
            }
        }
        Ok(end)
    }

    fn array(
        &mut self,
        m: &Map<String, Value>,
        from: u32,
        path: &str,
        depth: usize,
    ) -> Result<u32> {
        let items = m.get("items").ok_or_else(|| {
            invalid(
                path,
                "arrays need 'items' (any-value items are unsupported)",
            )
        })?;
        if items.is_array() {
            return Err(invalid(path, "tuple-form 'items' (a list) is unsupported"));
        }
        let (min, max) = self.length_bounds(m, "minItems", "maxItems", path)?;
        let ipath = format!("{path}/items");
        let open = self.lit(from, b"[", path)?;
        let end = self.node(path)?;
        if min == 0 {
            let c = self.lit(open, b"]", path)?;
            self.eps(c, end);
        }
        if max == Some(0) {
            return Ok(end);
        }
        let mut cur = self.schema(items, &ipath, open, depth + 1)?;
        let mut k = 1u64;
        let sep = self.surf.item_sep;
        loop {
            if k >= min {
                let c = self.lit(cur, b"]", path)?;
                self.eps(c, end);
            }
            if max == Some(k) {
                break;
            }
            if max.is_none() && k >= min.max(1) {
                // Loop back: cur --sep item--> cur.
                let s = self.lit(cur, sep, path)?;
                let e = self.schema(items, &ipath, s, depth + 1)?;
                self.eps(e, cur);
                break;
            }
            let s = self.lit(cur, sep, path)?;
            cur = self.schema(items, &ipath, s, depth + 1)?;
            k += 1;
        }
        Ok(end)
    }

    fn object(
        &mut self,
        m: &Map<String, Value>,
        from: u32,
        path: &str,
        depth: usize,
    ) -> Result<u32> {
        match m.get("additionalProperties") {
            None | Some(Value::Bool(false)) => {}
            Some(_) => {
                return Err(invalid(path, "only \"additionalProperties\": false is supported (extra properties are never generated)"))
            }
        }
        let empty = Map::new();
        let props = match m.get("properties") {
            None => &empty,
            Some(Value::Object(p)) => p,
            Some(_) => return Err(invalid(path, "'properties' must be an object")),
        };
        let mut required = Vec::new();
        if let Some(r) = m.get("required") {
            let list = r
                .as_array()
                .ok_or_else(|| invalid(path, "'required' must be an array"))?;
            for x in list {
                let name = x
                    .as_str()
                    .ok_or_else(|| invalid(path, "'required' entries must be strings"))?;
                if !props.contains_key(name) {
                    return Err(invalid(path, format!("required property '{name}' is not in 'properties' (additional properties are not generated)")));
                }
                if required.contains(&name) {
                    return Err(invalid(
                        path,
                        format!("required property '{name}' listed twice"),
                    ));
                }
                required.push(name);
            }
        }
        let open = self.lit(from, b"{", path)?;
        let sep = self.surf.item_sep;
        let key_sep = self.surf.key_sep;
        // e: before property i with nothing emitted yet; s: before property i after some member.
        let mut e: Option<u32> = Some(open);
        let mut s: Option<u32> = None;
        for (name, sub) in props {
            let req = required.contains(&name.as_str());
            let ppath = format!("{path}/properties/{}", escape_ptr(name));
            let k = self.node(&ppath)?;
            if let Some(e) = e {
                self.eps(e, k);
            }
            if let Some(s) = s {
                let x = self.lit(s, sep, &ppath)?;
                self.eps(x, k);
            }
            let after_key = self.value_lit(k, &Value::String(name.clone()), &ppath)?;
            let after_sep = self.lit(after_key, key_sep, &ppath)?;
            let v = self.schema(sub, &ppath, after_sep, depth + 1)?;
            let s_next = self.node(&ppath)?;
            self.eps(v, s_next);
            if !req {
                if let Some(s) = s {
                    self.eps(s, s_next);
                }
            } else {
                e = None;
            }
            s = Some(s_next);
        }
        let end = self.node(path)?;
        for x in [e, s].into_iter().flatten() {
            let c = self.lit(x, b"}", path)?;
            self.eps(c, end);
        }
        Ok(end)
    }
}

/// Does a JSON value have this JSON Schema type? (`integer` admits integral floats.)
pub fn value_has_type(v: &Value, t: &str) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "string" => v.is_string(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}
