//! A small validator for the supported schema subset, written independently of the automaton
//! (it walks the schema and the parsed value directly). `grammar check` uses it, so the CLI needs no
//! extra dependency; the tests cross-check with the `jsonschema` crate.
//!
//! Semantics follow JSON Schema 2020-12 for the supported keywords; annotations are ignored.
//! String lengths count Unicode scalar values.

use serde_json::Value;

/// Validates `v` against `schema` (the root, for `$ref`). Returns the first violation.
pub fn validate(schema: &Value, v: &Value) -> std::result::Result<(), String> {
    check(schema, schema, v, "", 0)
}

fn check(
    root: &Value,
    s: &Value,
    v: &Value,
    at: &str,
    depth: usize,
) -> std::result::Result<(), String> {
    if depth > 64 {
        return Err(format!("{at}: schema nesting too deep"));
    }
    let m = match s {
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => return Err(format!("{at}: schema false")),
        Value::Object(m) => m,
        _ => return Err(format!("{at}: schema is not an object")),
    };
    if let Some(r) = m.get("$ref").and_then(Value::as_str) {
        let target = r
            .strip_prefix('#')
            .and_then(|p| root.pointer(p))
            .ok_or_else(|| format!("{at}: unresolvable $ref {r}"))?;
        check(root, target, v, at, depth + 1)?;
    }
    if let Some(list) = m.get("anyOf").and_then(Value::as_array) {
        if !list
            .iter()
            .any(|b| check(root, b, v, at, depth + 1).is_ok())
        {
            return Err(format!("{at}: matches no anyOf branch"));
        }
    }
    if let Some(t) = m.get("type") {
        let ok = match t {
            Value::String(t) => super::schema::value_has_type(v, t),
            Value::Array(ts) => ts
                .iter()
                .filter_map(Value::as_str)
                .any(|t| super::schema::value_has_type(v, t)),
            _ => false,
        };
        if !ok {
            return Err(format!("{at}: wrong type, expected {t}"));
        }
    }
    if let Some(e) = m.get("enum").and_then(Value::as_array) {
        if !e.iter().any(|x| json_eq(x, v)) {
            return Err(format!("{at}: not in enum"));
        }
    }
    if let Some(c) = m.get("const") {
        if !json_eq(c, v) {
            return Err(format!("{at}: not the const value"));
        }
    }
    if let Value::String(st) = v {
        let n = st.chars().count() as u64;
        if m.get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|lo| n < lo)
        {
            return Err(format!("{at}: string shorter than minLength"));
        }
        if m.get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|hi| n > hi)
        {
            return Err(format!("{at}: string longer than maxLength"));
        }
    }
    if let Value::Array(a) = v {
        let n = a.len() as u64;
        if m.get("minItems")
            .and_then(Value::as_u64)
            .is_some_and(|lo| n < lo)
        {
            return Err(format!("{at}: fewer than minItems"));
        }
        if m.get("maxItems")
            .and_then(Value::as_u64)
            .is_some_and(|hi| n > hi)
        {
            return Err(format!("{at}: more than maxItems"));
        }
        if let Some(items) = m.get("items") {
            for (i, x) in a.iter().enumerate() {
                check(root, items, x, &format!("{at}/{i}"), depth + 1)?;
            }
        }
    }
    if let Value::Object(o) = v {
        let props = m.get("properties").and_then(Value::as_object);
        if let Some(req) = m.get("required").and_then(Value::as_array) {
            for r in req.iter().filter_map(Value::as_str) {
                if !o.contains_key(r) {
                    return Err(format!("{at}: missing required '{r}'"));
                }
            }
        }
        for (k, x) in o {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => check(root, ps, x, &format!("{at}/{k}"), depth + 1)?,
                None => {
                    if m.get("additionalProperties") == Some(&Value::Bool(false)) {
                        return Err(format!("{at}: additional property '{k}'"));
                    }
                }
            }
        }
    }
    Ok(())
}

/// JSON equality with numbers compared by value (1 == 1.0).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(p), Some(q)) => p == q,
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, p)| y.get(k).is_some_and(|q| json_eq(p, q)))
        }
        _ => a == b,
    }
}
