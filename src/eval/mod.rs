//! Evaluation core: scoring prediction files the way the JobExtractX reference did, plus stricter
//! metrics and a better T5 repair.
//!
//! Why: jobx-engine must report numbers that are comparable with the reference project's stored
//! results (SPEC.md §4–§5), bit for bit on the same input, and at the same time expose what those
//! numbers hide. Layout:
//! - `pyjson`: Python `json` / `str()` / `.lower()` semantics the reference metric depends on;
//! - `compat`: the reference `fix_json_format` and Mistral block extractor, byte-exact;
//! - `metrics`: the reference `calculate_metrics`, bit-exact;
//! - `stricter`: metrics that do not hide failures;
//! - `input`: reading jobextractx result files and jobx-engine JSONL;
//! - `repair`: a schema-guided repair of T5 output that keeps truncated lists' complete items.
//!
//! This file holds the job schema and the entry points used by the CLI.

pub mod compat;
pub mod input;
pub mod metrics;
pub mod pyjson;
pub mod repair;
pub mod report;
pub mod stricter;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde_json::{json, Value};

pub use compat::{extract_mistral_block, fix_json_format};
pub use input::{load_predictions, Family, Format, LoadOptions, PredictionFile, Record};
pub use metrics::{calculate_metrics, MetricRecord, ReferenceMetrics};
pub use pyjson::{PyDict, PyStr, PyValue};
pub use repair::{repair_t5_output, repair_t5_output_detailed, RepairError, RepairOutcome};
pub use stricter::{compute_stricter, StricterMetrics};

// ------------------------------------------------------------------------------------------------
// The job schema
// ------------------------------------------------------------------------------------------------

/// The type of one schema field.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldKind {
    Str,
    StrList,
    Object(Vec<SchemaField>),
}

impl FieldKind {
    /// The template value: `""`, `[]`, or an object of defaults.
    pub fn default_value(&self) -> PyValue {
        match self {
            FieldKind::Str => PyValue::str(""),
            FieldKind::StrList => PyValue::List(Vec::new()),
            FieldKind::Object(fields) => {
                let mut d = PyDict::new();
                for f in fields {
                    d.insert(PyStr::from(f.name.as_str()), f.kind.default_value());
                }
                PyValue::Dict(d)
            }
        }
    }
}

/// One named field of an object schema.
#[derive(Clone, Debug, PartialEq)]
pub struct SchemaField {
    pub name: String,
    pub kind: FieldKind,
}

impl SchemaField {
    pub fn new(name: &str, kind: FieldKind) -> Self {
        SchemaField {
            name: name.to_string(),
            kind,
        }
    }
}

/// An object schema with ordered fields (the extraction target's shape).
#[derive(Clone, Debug, PartialEq)]
pub struct JobSchema {
    pub fields: Vec<SchemaField>,
}

impl JobSchema {
    /// The 12-key JobExtractX job schema (SPEC §1.1), in target order.
    pub fn jobextractx() -> JobSchema {
        use compat::{SALARY_KEYS, SKILL_KEYS, STRING_FIELDS};
        let fields = compat::TOP_LEVEL_KEYS
            .iter()
            .map(|&k| {
                let kind = match k {
                    "salary" => FieldKind::Object(
                        SALARY_KEYS
                            .iter()
                            .map(|p| SchemaField::new(p, FieldKind::Str))
                            .collect(),
                    ),
                    "required_skills" => FieldKind::Object(
                        SKILL_KEYS
                            .iter()
                            .map(|c| SchemaField::new(c, FieldKind::StrList))
                            .collect(),
                    ),
                    k if STRING_FIELDS.contains(&k) => FieldKind::Str,
                    _ => FieldKind::StrList,
                };
                SchemaField::new(k, kind)
            })
            .collect();
        JobSchema { fields }
    }

    /// The all-empty template object.
    pub fn template(&self) -> PyValue {
        FieldKind::Object(self.fields.clone()).default_value()
    }

    /// Kinds of schema violation in `v` (empty when valid): `not_object`, `missing_key`,
    /// `extra_key`, `wrong_type`. Key order is not checked.
    pub fn violations(&self, v: &PyValue) -> Vec<String> {
        let mut out = Vec::new();
        match v.as_dict() {
            Some(d) => check_object(d, &self.fields, &mut out),
            None => out.push("not_object".to_string()),
        }
        out
    }
}

fn check_object(d: &PyDict, fields: &[SchemaField], out: &mut Vec<String>) {
    for f in fields {
        match (d.get(&f.name), &f.kind) {
            (None, _) => out.push("missing_key".into()),
            (Some(PyValue::Str(_)), FieldKind::Str) => {}
            (Some(PyValue::List(items)), FieldKind::StrList) => {
                if !items.iter().all(|x| matches!(x, PyValue::Str(_))) {
                    out.push("wrong_type".into());
                }
            }
            (Some(PyValue::Dict(inner)), FieldKind::Object(sub)) => check_object(inner, sub, out),
            (Some(_), _) => out.push("wrong_type".into()),
        }
    }
    if d.keys().any(|k| !fields.iter().any(|f| k.eq_str(&f.name))) {
        out.push("extra_key".into());
    }
}

// ------------------------------------------------------------------------------------------------
// Scoring
// ------------------------------------------------------------------------------------------------

/// Options for [`score_file`]: format and family overrides (detected when `None`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ScoreOptions {
    pub format: Option<Format>,
    pub family: Option<Family>,
}

/// The result of scoring one file.
#[derive(Clone, Debug)]
pub struct ScoreReport {
    pub file: String,
    pub format: Format,
    pub family: Family,
    pub metrics: ReferenceMetrics,
    pub stricter: StricterMetrics,
    pub input_errors: BTreeMap<String, usize>,
    /// jobextractx only: whether our reference block equals the stored `metrics` block exactly
    /// (structure, key order, counts and float bits); the reason when it does not.
    pub stored_metrics_check: Option<Result<(), String>>,
}

impl ScoreReport {
    /// `{"file", "format", "family", "metrics", "stricter", "input_errors", "stored_metrics_match"?}`.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "file": self.file,
            "format": self.format.as_str(),
            "family": self.family.as_str(),
            "metrics": self.metrics.to_json(),
            "stricter": self.stricter.to_json(),
            "input_errors": self.input_errors,
        });
        if let (Some(check), Some(obj)) = (&self.stored_metrics_check, v.as_object_mut()) {
            obj.insert(
                "stored_metrics_match".into(),
                match check {
                    Ok(()) => json!(true),
                    Err(why) => json!({"match": false, "first_difference": why}),
                },
            );
        }
        v
    }
}

impl serde::Serialize for ScoreReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

/// The reference metric's view of loaded records.
pub fn metric_records(file: &PredictionFile) -> Vec<MetricRecord> {
    file.records
        .iter()
        .map(|r| MetricRecord {
            parsed_successfully: r.parsed_successfully,
            pred: r.pred.clone(),
            expected: r.expected.clone(),
        })
        .collect()
}

/// Scores an already loaded file.
pub fn score_loaded(file: &PredictionFile) -> ScoreReport {
    let metrics = calculate_metrics(&metric_records(file));
    let mut stricter = compute_stricter(file, &JobSchema::jobextractx());
    stricter.reference_aborted = metrics.aborted.clone();
    let stored_metrics_check = file
        .stored_metrics
        .as_ref()
        .map(|s| metrics_blocks_identical(s, &metrics.to_json()));
    ScoreReport {
        file: file.path.display().to_string(),
        format: file.format,
        family: file.family,
        metrics,
        stricter,
        input_errors: file.input_errors.clone(),
        stored_metrics_check,
    }
}

/// Reads and scores one prediction file (jobextractx results or jobx-engine JSONL).
pub fn score_file(path: &Path, opts: &ScoreOptions) -> anyhow::Result<ScoreReport> {
    let file = load_predictions(
        path,
        &LoadOptions {
            format: opts.format,
            family: opts.family,
        },
    )?;
    Ok(score_loaded(&file))
}

/// Compares a stored metrics block (as Python wrote it) with ours: same keys in the same order,
/// ints where Python had ints, and every float bit-identical. `Err` names the first difference.
pub fn metrics_blocks_identical(stored: &PyValue, ours: &Value) -> Result<(), String> {
    fn walk(a: &PyValue, b: &Value, path: &str) -> Result<(), String> {
        match (a, b) {
            (PyValue::Dict(d), Value::Object(m)) => {
                let ka: Vec<String> = d.keys().map(|k| k.to_lossy().into_owned()).collect();
                let kb: Vec<String> = m.keys().cloned().collect();
                if ka != kb {
                    return Err(format!("{path}: keys {ka:?} vs {kb:?}"));
                }
                for (k, v) in d.iter() {
                    let key = k.to_lossy();
                    walk(v, &m[key.as_ref()], &format!("{path}.{key}"))?;
                }
                Ok(())
            }
            (PyValue::Int(i), Value::Number(n)) if n.is_u64() || n.is_i64() => {
                if i.to_string() == n.to_string() {
                    Ok(())
                } else {
                    Err(format!("{path}: {i} vs {n}"))
                }
            }
            (PyValue::Float(x), Value::Number(n)) if n.is_f64() => match n.as_f64() {
                Some(y) if y.to_bits() == x.to_bits() => Ok(()),
                _ => Err(format!("{path}: {} vs {n}", pyjson::float_repr(*x))),
            },
            _ => Err(format!("{path}: {} vs {b}", a.py_repr())),
        }
    }
    walk(stored, ours, "metrics")
}

/// `jobx-engine repair --compat jobextractx FILE`: rebuilds `fixed_json` from `generated_json` for
/// every record of a reference T5 file. Returns `(records with both fields, byte-identical)`.
pub fn repair_compat_file(path: &Path) -> anyhow::Result<(usize, usize)> {
    let file = load_predictions(
        path,
        &LoadOptions {
            format: Some(Format::JobExtractX),
            family: Some(Family::T5),
        },
    )?;
    let mut records = 0;
    let mut identical = 0;
    for r in &file.records {
        if let (Some(g), Some(f)) = (&r.generated_json, &r.fixed_json) {
            records += 1;
            if fix_json_format(g) == *f {
                identical += 1;
            }
        }
    }
    if records == 0 {
        bail!(
            "{}: no record has both generated_json and fixed_json (not a T5 result file?)",
            path.display()
        );
    }
    Ok((records, identical))
}

/// Comparison of the schema-guided repair with the stored `fixed_json` on a reference T5 file.
#[derive(Clone, Debug)]
pub struct RepairComparison {
    pub records: usize,
    /// Records the repair turned into a JSON object (the rest are errors).
    pub repaired: usize,
    /// Repaired values that round-trip through `json.dumps` / `json.loads`.
    pub valid_json: usize,
    pub schema_valid: usize,
    /// Records whose `generated_json` does not end with `]` (the SPEC's truncation heuristic).
    pub truncated_records: usize,
    /// Non-empty string list items over the 11 list fields, on truncated records / on all records.
    pub items_fixed_truncated: usize,
    pub items_repaired_truncated: usize,
    pub items_fixed_all: usize,
    pub items_repaired_all: usize,
    /// Records where the repair keeps fewer list items than `fixed_json`.
    pub records_with_fewer_items: usize,
    /// On truncated records: distinct predicted list items (lowercased, per field) that are in the
    /// expected list, with `fixed_json` and with the repair.
    pub matched_items_fixed_truncated: usize,
    pub matched_items_repaired_truncated: usize,
    /// Reference metrics on the stored `fixed_json` and with the repair in its place.
    pub reference_fixed: ReferenceMetrics,
    pub reference_repaired: ReferenceMetrics,
}

impl RepairComparison {
    pub fn to_json(&self) -> Value {
        json!({
            "records": self.records,
            "repaired": self.repaired,
            "valid_json": self.valid_json,
            "schema_valid": self.schema_valid,
            "truncated_records": self.truncated_records,
            "list_items_on_truncated": {"fixed_json": self.items_fixed_truncated, "repair": self.items_repaired_truncated},
            "list_items_all": {"fixed_json": self.items_fixed_all, "repair": self.items_repaired_all},
            "records_with_fewer_items": self.records_with_fewer_items,
            "matched_list_items_on_truncated": {"fixed_json": self.matched_items_fixed_truncated, "repair": self.matched_items_repaired_truncated},
            "reference_metrics_fixed_json": self.reference_fixed.to_json(),
            "reference_metrics_repair": self.reference_repaired.to_json(),
        })
    }
}

/// Non-empty string items over the 11 list fields of a job object.
pub fn count_list_items(v: &PyValue) -> usize {
    let Some(d) = v.as_dict() else { return 0 };
    let count = |x: Option<&PyValue>| {
        x.and_then(|x| x.as_list())
            .map(|l| {
                l.iter()
                    .filter(|i| matches!(i, PyValue::Str(s) if !s.is_empty()))
                    .count()
            })
            .unwrap_or(0)
    };
    let skills = d.get("required_skills").and_then(|s| s.as_dict());
    compat::LIST_FIELDS
        .iter()
        .map(|f| count(d.get(f)))
        .sum::<usize>()
        + compat::SKILL_KEYS
            .iter()
            .map(|c| count(skills.and_then(|s| s.get(c))))
            .sum::<usize>()
}

/// Runs the schema-guided repair on every `generated_json` of a reference T5 file and compares it
/// with the stored `fixed_json`: validity, list items kept, and the reference metrics.
pub fn compare_t5_repair(path: &Path) -> anyhow::Result<RepairComparison> {
    let file = load_predictions(
        path,
        &LoadOptions {
            format: Some(Format::JobExtractX),
            family: Some(Family::T5),
        },
    )
    .with_context(|| format!("comparing repairs on {}", path.display()))?;
    let schema = JobSchema::jobextractx();
    let mut c = RepairComparison {
        records: 0,
        repaired: 0,
        valid_json: 0,
        schema_valid: 0,
        truncated_records: 0,
        items_fixed_truncated: 0,
        items_repaired_truncated: 0,
        items_fixed_all: 0,
        items_repaired_all: 0,
        records_with_fewer_items: 0,
        matched_items_fixed_truncated: 0,
        matched_items_repaired_truncated: 0,
        reference_fixed: ReferenceMetrics::default(),
        reference_repaired: ReferenceMetrics::default(),
    };
    let mut repaired_records = Vec::new();
    for r in &file.records {
        let Some(g) = &r.generated_json else { continue };
        c.records += 1;
        let fixed = r.pred.clone().unwrap_or(PyValue::None);
        let repaired = repair_t5_output_detailed(g, &schema).ok().map(|o| o.value);
        if let Some(v) = &repaired {
            c.repaired += 1;
            if pyjson::loads(&pyjson::dumps(v)).is_ok_and(|back| &back == v) {
                c.valid_json += 1;
            }
            if schema.violations(v).is_empty() {
                c.schema_valid += 1;
            }
        }
        let (nf, nr) = (
            count_list_items(&fixed),
            repaired.as_ref().map(count_list_items).unwrap_or(0),
        );
        c.items_fixed_all += nf;
        c.items_repaired_all += nr;
        if nr < nf {
            c.records_with_fewer_items += 1;
        }
        if !g.ends_with(']') {
            c.truncated_records += 1;
            c.items_fixed_truncated += nf;
            c.items_repaired_truncated += nr;
            c.matched_items_fixed_truncated +=
                stricter::matched_list_items(Some(&fixed), r.expected.as_ref());
            c.matched_items_repaired_truncated +=
                stricter::matched_list_items(repaired.as_ref(), r.expected.as_ref());
        }
        repaired_records.push(MetricRecord {
            parsed_successfully: repaired.is_some(),
            pred: repaired,
            expected: r.expected.clone(),
        });
    }
    c.reference_fixed = calculate_metrics(&metric_records(&file));
    c.reference_repaired = calculate_metrics(&repaired_records);
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_template_and_violations() {
        let s = JobSchema::jobextractx();
        assert_eq!(s.template(), compat::reference_template());
        assert!(s.violations(&s.template()).is_empty());
        let v = pyjson::loads(r#"{"experience_level": 1, "extra": 2}"#).unwrap();
        let kinds = s.violations(&v);
        assert!(kinds.contains(&"wrong_type".to_string()));
        assert!(kinds.contains(&"missing_key".to_string()));
        assert!(kinds.contains(&"extra_key".to_string()));
        assert_eq!(
            s.violations(&PyValue::List(vec![])),
            vec!["not_object".to_string()]
        );
    }

    #[test]
    fn stored_block_comparison_is_strict() {
        let stored = pyjson::loads(r#"{"a": 1, "b": 0.1}"#).unwrap();
        assert!(metrics_blocks_identical(&stored, &json!({"a": 1, "b": 0.1})).is_ok());
        assert!(metrics_blocks_identical(&stored, &json!({"b": 0.1, "a": 1})).is_err());
        assert!(metrics_blocks_identical(&stored, &json!({"a": 1.0, "b": 0.1})).is_err());
        assert!(
            metrics_blocks_identical(&stored, &json!({"a": 1, "b": 0.30000000000000004})).is_err()
        );
    }
}
