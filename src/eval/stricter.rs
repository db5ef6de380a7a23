//! Stricter evaluation metrics, reported beside (never instead of) the reference metrics.
//!
//! Why: the reference numbers hide failures (SPEC.md §4.5, §5): T5's parse rate is 1.0 by
//! construction because `fix_json_format` always emits the template, Mistral's prompt-schema echo
//! counts as a successful parse, truncated lists silently become `[]`, both-empty string pairs count
//! as correct, and F1 is a macro mean that skips both-empty rows. These metrics make those visible.
//! Exact definitions are in docs/METRICS.md; in short, over every record that has a usable
//! expected value (failed or unparseable predictions count as empty predictions):
//! - raw parse rate: the raw model text, before any repair, is a JSON object under `json.loads`;
//! - schema validity of the scored JSON against the 12-key job schema;
//! - truncation rate (explicit flags, or the documented heuristic);
//! - micro-averaged P/R/F1 per list field and over all 11 list fields;
//! - string-field accuracy (4 string fields + 4 salary parts) excluding both-empty pairs;
//! - share of predicted list items that occur verbatim (case-insensitively) in the source text.

use std::collections::{BTreeMap, HashSet};

use serde_json::{json, Map, Value};

use super::compat::{reference_template, LIST_FIELDS, SALARY_KEYS, SKILL_KEYS, STRING_FIELDS};
use super::input::{Family, Format, PredictionFile, Record};
use super::metrics::{calculate_metrics, MetricRecord};
use super::pyjson::{self, PyStr, PyValue};
use super::JobSchema;

/// The example schema exactly as the reference Mistral evaluation prompt prints it (SPEC §2.3);
/// the block extractor falls back to it when the completion has no usable block.
pub const MISTRAL_EVAL_PROMPT_SCHEMA: &str = "{\n    \"experience_level\": \"\",\n    \"employment_status\": [],\n    \"work_location\": \"\",\n    \"salary\": {\"min\": \"\", \"max\": \"\", \"period\": \"\", \"currency\": \"\"},\n    \"benefits\": [],\n    \"job_functions\": [],\n    \"required_skills\": {\n        \"programming_languages\": [],\n        \"tools\": [],\n        \"frameworks\": [],\n        \"databases\": [],\n        \"other\": []\n    },\n    \"required_certifications\": [],\n    \"required_minimum_degree\": \"\",\n    \"required_experience\": \"\",\n    \"industries\": [],\n    \"additional_keywords\": []\n}";

/// A count out of a total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate {
    pub count: usize,
    pub total: usize,
}

impl Rate {
    pub fn rate(&self) -> Option<f64> {
        (self.total > 0).then(|| self.count as f64 / self.total as f64)
    }

    fn to_json(self) -> Value {
        json!({"count": self.count, "total": self.total, "rate": self.rate()})
    }
}

/// Micro-averaging counters for one list field (or all of them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MicroCounts {
    pub tp: usize,
    pub predicted: usize,
    pub expected: usize,
}

impl MicroCounts {
    pub fn precision(&self) -> f64 {
        if self.predicted == 0 {
            0.0
        } else {
            self.tp as f64 / self.predicted as f64
        }
    }

    pub fn recall(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.tp as f64 / self.expected as f64
        }
    }

    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        }
    }

    fn add(&mut self, o: MicroCounts) {
        self.tp += o.tp;
        self.predicted += o.predicted;
        self.expected += o.expected;
    }

    fn to_json(self) -> Value {
        json!({
            "tp": self.tp, "predicted": self.predicted, "expected": self.expected,
            "precision": self.precision(), "recall": self.recall(), "f1": self.f1(),
        })
    }
}

/// The stricter metrics of one file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StricterMetrics {
    /// Records with a usable expected value; the denominator of everything below.
    pub records_scored: usize,
    pub raw_parse: Option<Rate>,
    pub raw_parse_basis: String,
    /// Records whose scored JSON equals the all-empty template (failed parses are not counted).
    pub all_empty_predictions: Rate,
    /// jobextractx Mistral: `generated_json` is the echoed prompt schema.
    pub prompt_schema_echo: Option<Rate>,
    pub schema_valid: Rate,
    /// Records per violation kind (a record can have several kinds).
    pub schema_violations: BTreeMap<String, usize>,
    pub expected_schema_valid: Rate,
    pub truncation: Option<Rate>,
    pub truncation_basis: String,
    pub list_micro: Vec<(String, MicroCounts)>,
    pub list_micro_overall: MicroCounts,
    /// `(field, correct of scored, both-empty pairs skipped)`.
    pub string_accuracy: Vec<(String, Rate, usize)>,
    pub string_accuracy_overall: Rate,
    pub verbatim: Option<(Vec<(String, Rate)>, Rate)>,
    pub expected_verbatim: Option<Rate>,
    /// Reference metric restricted to records known not to be truncated: `(records, mean F1)`.
    pub reference_untruncated: Option<(usize, f64)>,
    /// Records the reference metric would abort, by exception.
    pub reference_aborted: BTreeMap<String, usize>,
    /// Records with an engine-reported generation error.
    pub generation_errors: usize,
}

/// Typed set of a list value: non-empty string items, lowercased; anything else contributes nothing.
fn typed_set(v: Option<&PyValue>) -> HashSet<PyStr> {
    match v {
        Some(PyValue::List(items)) => items
            .iter()
            .filter_map(|x| match x {
                PyValue::Str(s) if !s.is_empty() => Some(s.lower()),
                _ => None,
            })
            .collect(),
        _ => HashSet::new(),
    }
}

/// The 11 list-field sets of a (possibly absent) prediction, in `metrics::list_names()` order.
fn list_sets(v: Option<&PyValue>) -> Vec<HashSet<PyStr>> {
    let d = v.and_then(|v| v.as_dict());
    let skills = d
        .and_then(|d| d.get("required_skills"))
        .and_then(|s| s.as_dict());
    LIST_FIELDS
        .iter()
        .map(|f| typed_set(d.and_then(|d| d.get(f))))
        .chain(
            SKILL_KEYS
                .iter()
                .map(|c| typed_set(skills.and_then(|s| s.get(c)))),
        )
        .collect()
}

/// Distinct predicted list items (typed, lowercased, per field) that the expected list also has,
/// summed over the 11 list fields.
pub fn matched_list_items(pred: Option<&PyValue>, expected: Option<&PyValue>) -> usize {
    list_sets(pred)
        .iter()
        .zip(list_sets(expected).iter())
        .map(|(g, e)| g.intersection(e).count())
        .sum()
}

/// Normalised string-field value: missing/null → "", string → lowercased, other → `str(v).lower()`.
fn norm_scalar(v: Option<&PyValue>) -> PyStr {
    match v {
        None | Some(PyValue::None) => PyStr::from(""),
        Some(v) => v.py_str().lower(),
    }
}

fn string_values(v: Option<&PyValue>) -> Vec<PyStr> {
    let d = v.and_then(|v| v.as_dict());
    let salary = d.and_then(|d| d.get("salary")).and_then(|s| s.as_dict());
    STRING_FIELDS
        .iter()
        .map(|f| norm_scalar(d.and_then(|d| d.get(f))))
        .chain(
            SALARY_KEYS
                .iter()
                .map(|p| norm_scalar(salary.and_then(|s| s.get(p)))),
        )
        .collect()
}

/// Heuristic truncation test for raw text without an explicit flag: the text (stripped) does not
/// end with a closing bracket, brace, or T5 `<unk>` brace marker.
pub fn looks_truncated(raw: &str) -> bool {
    let t = pyjson::py_strip(raw);
    !(t.ends_with(']') || t.ends_with('}') || t.ends_with("<unk>"))
}

/// Computes the stricter metrics of a loaded file.
pub fn compute_stricter(file: &PredictionFile, schema: &JobSchema) -> StricterMetrics {
    let recs: Vec<&Record> = file
        .records
        .iter()
        .filter(|r| r.expected.is_some())
        .collect();
    let n = recs.len();
    let mut m = StricterMetrics {
        records_scored: n,
        ..Default::default()
    };
    let pred_of = |r: &Record| {
        if r.parsed_successfully {
            r.pred.clone()
        } else {
            None
        }
    };
    let template = reference_template();

    // Raw parse rate.
    let is_t5_ref = file.format == Format::JobExtractX && file.family == Family::T5;
    let is_mistral_ref = file.format == Format::JobExtractX && file.family != Family::T5;
    let echo = |r: &Record| r.generated_json.as_deref() == Some(MISTRAL_EVAL_PROMPT_SCHEMA);
    if is_mistral_ref {
        m.raw_parse = Some(Rate {
            count: recs
                .iter()
                .filter(|r| r.parsed_successfully && r.pred.is_some() && !echo(r))
                .count(),
            total: n,
        });
        m.raw_parse_basis = "raw completion not stored; counts records whose extracted block parsed and is not the echoed prompt schema".into();
        m.prompt_schema_echo = Some(Rate {
            count: recs.iter().filter(|r| echo(r)).count(),
            total: n,
        });
    } else {
        let with_raw: Vec<&&Record> = recs.iter().filter(|r| r.raw.is_some()).collect();
        let parsed = with_raw
            .iter()
            .filter(|r| {
                r.raw
                    .as_deref()
                    .is_some_and(|t| matches!(pyjson::loads(t), Ok(PyValue::Dict(_))))
            })
            .count();
        m.raw_parse = (!with_raw.is_empty()).then_some(Rate {
            count: parsed,
            total: with_raw.len(),
        });
        m.raw_parse_basis = if is_t5_ref {
            "generated_json (decoded T5 text) is a JSON object under json.loads".into()
        } else {
            "raw model text is a JSON object under json.loads (records without raw excluded)".into()
        };
    }

    // Schema validity and empty predictions.
    for r in &recs {
        let pred = pred_of(r);
        if pred.as_ref() == Some(&template) {
            m.all_empty_predictions.count += 1;
        }
        let v = match &pred {
            Some(p) => schema.violations(p),
            None => vec!["no_json".to_string()],
        };
        if v.is_empty() {
            m.schema_valid.count += 1;
        }
        for kind in v.into_iter().collect::<HashSet<_>>() {
            *m.schema_violations.entry(kind).or_default() += 1;
        }
        if r.expected
            .as_ref()
            .is_some_and(|e| schema.violations(e).is_empty())
        {
            m.expected_schema_valid.count += 1;
        }
    }
    m.all_empty_predictions.total = n;
    m.schema_valid.total = n;
    m.expected_schema_valid.total = n;

    // Truncation.
    let truncated_of = |r: &Record| -> Option<bool> {
        if is_t5_ref {
            r.raw.as_deref().map(|t| !t.ends_with(']'))
        } else if is_mistral_ref {
            None
        } else {
            r.truncated
                .or_else(|| r.raw.as_deref().map(looks_truncated))
        }
    };
    let flags: Vec<Option<bool>> = recs.iter().map(|r| truncated_of(r)).collect();
    let known = flags.iter().filter(|f| f.is_some()).count();
    if known > 0 {
        m.truncation = Some(Rate {
            count: flags.iter().filter(|f| **f == Some(true)).count(),
            total: known,
        });
    }
    m.truncation_basis = if is_t5_ref {
        "heuristic (SPEC §4.3): generated_json does not end with ']'".into()
    } else if is_mistral_ref {
        "not determinable: the raw completion is not stored".into()
    } else {
        "explicit truncated / finish_reason, else heuristic: stripped raw does not end with ']', '}' or '<unk>'".into()
    };
    if known > 0 {
        let untrunc: Vec<MetricRecord> = recs
            .iter()
            .zip(&flags)
            .filter(|(_, f)| **f == Some(false))
            .map(|(r, _)| MetricRecord {
                parsed_successfully: r.parsed_successfully,
                pred: r.pred.clone(),
                expected: r.expected.clone(),
            })
            .collect();
        let rm = calculate_metrics(&untrunc);
        m.reference_untruncated = Some((untrunc.len(), rm.mean_f1_score()));
    }

    // Micro list metrics and string accuracy.
    let names = super::metrics::list_names();
    let mut micro = vec![MicroCounts::default(); names.len()];
    let snames = super::metrics::field_names();
    let mut sacc = vec![(Rate::default(), 0usize); snames.len()];
    let mut verb = vec![Rate::default(); names.len()];
    let mut exp_verb = Rate::default();
    let mut any_source = false;
    for r in &recs {
        let pred = pred_of(r);
        let gs = list_sets(pred.as_ref());
        let es = list_sets(r.expected.as_ref());
        for (i, (g, e)) in gs.iter().zip(&es).enumerate() {
            micro[i].add(MicroCounts {
                tp: g.intersection(e).count(),
                predicted: g.len(),
                expected: e.len(),
            });
        }
        let gv = string_values(pred.as_ref());
        let ev = string_values(r.expected.as_ref());
        for (i, (g, e)) in gv.iter().zip(&ev).enumerate() {
            if g.is_empty() && e.is_empty() {
                sacc[i].1 += 1;
            } else {
                sacc[i].0.total += 1;
                if g == e {
                    sacc[i].0.count += 1;
                }
            }
        }
        if let Some(src) = &r.source {
            any_source = true;
            let src = PyStr::from(src.as_str()).lower();
            for (i, g) in gs.iter().enumerate() {
                for item in g {
                    verb[i].total += 1;
                    if src.contains(item) {
                        verb[i].count += 1;
                    }
                }
            }
            for item in es.iter().flatten() {
                exp_verb.total += 1;
                if src.contains(item) {
                    exp_verb.count += 1;
                }
            }
        }
    }
    for c in &micro {
        m.list_micro_overall.add(*c);
    }
    m.list_micro = names.iter().cloned().zip(micro).collect();
    for (rate, _) in &sacc {
        m.string_accuracy_overall.count += rate.count;
        m.string_accuracy_overall.total += rate.total;
    }
    m.string_accuracy = snames
        .into_iter()
        .zip(sacc)
        .map(|(n, (r, s))| (n, r, s))
        .collect();
    if any_source {
        let overall = verb.iter().fold(Rate::default(), |a, b| Rate {
            count: a.count + b.count,
            total: a.total + b.total,
        });
        m.verbatim = Some((names.into_iter().zip(verb).collect(), overall));
        m.expected_verbatim = Some(exp_verb);
    }
    m.generation_errors = recs.iter().filter(|r| r.error.is_some()).count();
    m
}

impl StricterMetrics {
    pub fn to_json(&self) -> Value {
        let opt = |r: Option<Rate>| r.map(Rate::to_json).unwrap_or(Value::Null);
        let mut micro = Map::new();
        for (n, c) in &self.list_micro {
            micro.insert(n.clone(), c.to_json());
        }
        let mut sacc = Map::new();
        for (n, r, skipped) in &self.string_accuracy {
            sacc.insert(
                n.clone(),
                json!({"correct": r.count, "scored": r.total, "both_empty_skipped": skipped, "accuracy": r.rate()}),
            );
        }
        let verbatim = match &self.verbatim {
            None => Value::Null,
            Some((per, overall)) => {
                let mut pf = Map::new();
                for (n, r) in per {
                    pf.insert(n.clone(), r.to_json());
                }
                json!({"per_field": pf, "overall": overall.to_json(), "expected_items": opt(self.expected_verbatim)})
            }
        };
        json!({
            "records_scored": self.records_scored,
            "raw_parse": {"basis": self.raw_parse_basis, "result": opt(self.raw_parse)},
            "prompt_schema_echo": opt(self.prompt_schema_echo),
            "all_empty_predictions": self.all_empty_predictions.to_json(),
            "schema_valid": {
                "result": self.schema_valid.to_json(),
                "violations": self.schema_violations,
                "expected_valid": self.expected_schema_valid.to_json(),
            },
            "truncation": {"basis": self.truncation_basis, "result": opt(self.truncation)},
            "list_micro": {"per_field": micro, "overall": self.list_micro_overall.to_json()},
            "string_accuracy_excluding_both_empty": {
                "per_field": sacc,
                "overall": {"correct": self.string_accuracy_overall.count, "scored": self.string_accuracy_overall.total, "accuracy": self.string_accuracy_overall.rate()},
            },
            "verbatim_in_source": if self.verbatim.is_some() { verbatim } else { json!({"basis": "source text not available", "result": null}) },
            "reference_untruncated_only": match self.reference_untruncated {
                Some((k, f)) => json!({"records": k, "mean_f1_score": f}),
                None => Value::Null,
            },
            "reference_aborted_records": self.reference_aborted,
            "generation_errors": self.generation_errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::input::{parse_predictions, LoadOptions};

    fn file(text: &str) -> PredictionFile {
        let (format, family, records, input_errors, stored_metrics) =
            parse_predictions(text.as_bytes(), &LoadOptions::default()).unwrap();
        PredictionFile {
            path: "mem".into(),
            format,
            family,
            records,
            input_errors,
            stored_metrics,
        }
    }

    #[test]
    fn jsonl_stricter_numbers() {
        let full = r#"{"experience_level": "Senior", "employment_status": [], "work_location": "", "salary": {"min": "", "max": "", "period": "", "currency": ""}, "benefits": ["PTO", "401k"], "job_functions": [], "required_skills": {"programming_languages": ["Go"], "tools": [], "frameworks": [], "databases": [], "other": []}, "required_certifications": [], "required_minimum_degree": "", "required_experience": "", "industries": [], "additional_keywords": []}"#;
        let partial = r#"{"experience_level": "senior", "benefits": ["pto", "gym"]}"#;
        let lines = [
            format!(
                r#"{{"id": 1, "output": {partial}, "raw": "{{\"x\": 1}}", "expected": {full}, "source": "We offer PTO and a Gym.", "finish_reason": "eos"}}"#
            ),
            format!(
                r#"{{"id": 2, "output": null, "raw": "\"experience_level\": \"Sen", "expected": {full}}}"#
            ),
            format!(
                r#"{{"id": 3, "output": {full}, "raw": "{{}}", "expected": {full}, "finish_reason": "length"}}"#
            ),
        ];
        let text = lines.join("\n");
        let f = file(&text);
        let m = compute_stricter(&f, &JobSchema::jobextractx());
        assert_eq!(m.records_scored, 3);
        assert_eq!(m.raw_parse, Some(Rate { count: 2, total: 3 }));
        assert_eq!(m.schema_valid, Rate { count: 1, total: 3 });
        assert_eq!(m.schema_violations.get("missing_key"), Some(&1));
        assert_eq!(m.schema_violations.get("no_json"), Some(&1));
        // Record 2 has no flag: heuristic says truncated. Record 3 is explicitly truncated.
        assert_eq!(m.truncation, Some(Rate { count: 2, total: 3 }));
        let benefits = m
            .list_micro
            .iter()
            .find(|(n, _)| n == "benefits")
            .unwrap()
            .1;
        assert_eq!(
            benefits,
            MicroCounts {
                tp: 3,
                predicted: 4,
                expected: 6
            }
        );
        let el = &m.string_accuracy[0];
        assert_eq!(el.1, Rate { count: 2, total: 3 });
        // work_location is empty on both sides everywhere (record 2's prediction is absent).
        assert_eq!(m.string_accuracy[1].1.total, 0);
        assert_eq!(m.string_accuracy[1].2, 3);
        let (per, overall) = m.verbatim.clone().unwrap();
        assert_eq!(overall, Rate { count: 2, total: 2 });
        assert_eq!(per[1].1, Rate { count: 2, total: 2 });
        assert_eq!(m.expected_verbatim, Some(Rate { count: 1, total: 3 }));
        assert_eq!(m.reference_untruncated.map(|x| x.0), Some(1));
        let j = m.to_json();
        assert_eq!(j["list_micro"]["per_field"]["benefits"]["tp"], json!(3));
    }
}
