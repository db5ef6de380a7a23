//! The JobExtractX reference metric `calculate_metrics` (SPEC.md §4.5–4.6), reproduced bit for bit.
//!
//! Why: the project reports its numbers next to the reference's, so the same function must give the
//! same floats on the same input. That means emulating the Python body exactly: truthiness and
//! `str()`, Unicode `.lower()`, case-insensitive sets, skipped both-empty list rows, both-empty
//! strings counted correct, salary scored only inside the `required_skills` condition, and the
//! `try/except Exception: continue` that aborts a record after partial counter updates. The places
//! where Python would raise (`in` on a number, `.get` on a list, `.lower()` on a non-string, ...)
//! are modelled explicitly. Averages use numpy's pairwise summation like `np.mean`.

use std::collections::{BTreeMap, HashSet};

use serde_json::{json, Map, Value};

use super::compat::{LIST_FIELDS, SALARY_KEYS, SKILL_KEYS, STRING_FIELDS};
use super::pyjson::{PyStr, PyValue};

/// One record as the reference metric sees it.
#[derive(Clone, Debug)]
pub struct MetricRecord {
    /// The stored `parsed_successfully` flag; records with `false` are only counted in totals.
    pub parsed_successfully: bool,
    /// `json.loads(<scored JSON>)`, or `None` where that would raise (missing, not a string,
    /// invalid JSON): the record is then aborted before any counter is touched.
    pub pred: Option<PyValue>,
    /// `json.loads(record["expected_json"])`, `None` where that would raise.
    pub expected: Option<PyValue>,
}

/// Presence/accuracy counters of one string field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldCounts {
    pub present: usize,
    pub accurate: usize,
    pub count: usize,
}

/// Per-row precision, recall and F1 of one list field (rows where both sets are empty are absent).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListRows {
    pub precision: Vec<f64>,
    pub recall: Vec<f64>,
    pub f1: Vec<f64>,
}

/// The reference metrics with their raw counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReferenceMetrics {
    pub total_samples: usize,
    pub successful_parses: usize,
    /// In output order: the 4 string fields, then `salary_min`, `salary_max`, `salary_period`,
    /// `salary_currency`.
    pub fields: Vec<(String, FieldCounts)>,
    /// In output order: the 6 list fields, then the 5 `skills_*` keys.
    pub lists: Vec<(String, ListRows)>,
    /// Records whose scoring Python would have aborted, by exception (e.g. `TypeError`). Not part
    /// of the reference output; reported beside it.
    pub aborted: BTreeMap<String, usize>,
}

/// numpy's `pairwise_sum_DOUBLE` for a contiguous array.
fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `np.mean(list_of_floats)`: `(0.0 + pairwise_sum) / n`; NaN for an empty list (numpy warns).
pub fn np_mean(a: &[f64]) -> f64 {
    (0.0 + pairwise_sum(a)) / a.len() as f64
}

/// A Python exception that aborts a record.
#[derive(Debug, Clone, Copy)]
enum PyExc {
    TypeError,
    AttributeError,
}

impl PyExc {
    fn name(self) -> &'static str {
        match self {
            PyExc::TypeError => "TypeError",
            PyExc::AttributeError => "AttributeError",
        }
    }
}

/// Python `key in container`.
fn py_in(key: &str, c: &PyValue) -> Result<bool, PyExc> {
    match c {
        PyValue::Dict(d) => Ok(d.contains_key(key)),
        PyValue::List(l) => Ok(l
            .iter()
            .any(|x| matches!(x, PyValue::Str(s) if s.eq_str(key)))),
        PyValue::Str(s) => Ok(s.contains(&PyStr::from(key))),
        _ => Err(PyExc::TypeError),
    }
}

/// Python `container[key]` after `key in container` held.
fn py_getitem<'a>(c: &'a PyValue, key: &str) -> Result<&'a PyValue, PyExc> {
    match c {
        PyValue::Dict(d) => d.get(key).ok_or(PyExc::TypeError),
        _ => Err(PyExc::TypeError),
    }
}

/// Python `obj.get(key, default)`.
fn py_get<'a>(obj: &'a PyValue, key: &str, default: &'a PyValue) -> Result<&'a PyValue, PyExc> {
    match obj {
        PyValue::Dict(d) => Ok(d.get(key).unwrap_or(default)),
        _ => Err(PyExc::AttributeError),
    }
}

/// Python `set(x.lower() for x in v if x)`.
fn lower_set_exc(v: &PyValue) -> Result<HashSet<PyStr>, PyExc> {
    let mut out = HashSet::new();
    match v {
        PyValue::List(items) => {
            for x in items {
                if !x.truthy() {
                    continue;
                }
                match x {
                    PyValue::Str(s) => {
                        out.insert(s.lower());
                    }
                    _ => return Err(PyExc::AttributeError),
                }
            }
        }
        PyValue::Str(s) => {
            for c in s.chars_as_strs() {
                out.insert(c.lower());
            }
        }
        PyValue::Dict(d) => {
            for k in d.keys() {
                if !k.is_empty() {
                    out.insert(k.lower());
                }
            }
        }
        _ => return Err(PyExc::TypeError),
    }
    Ok(out)
}

/// The reference's per-row precision, recall and F1 for two non-both-empty sets.
pub fn prf(g: &HashSet<PyStr>, e: &HashSet<PyStr>) -> (f64, f64, f64) {
    let tp = g.intersection(e).count() as f64;
    let p = if g.is_empty() {
        0.0
    } else {
        tp / g.len() as f64
    };
    let r = if e.is_empty() {
        0.0
    } else {
        tp / e.len() as f64
    };
    let f1 = if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    };
    (p, r, f1)
}

fn push_row(rows: &mut ListRows, g: &HashSet<PyStr>, e: &HashSet<PyStr>) {
    if g.is_empty() && e.is_empty() {
        return;
    }
    let (p, r, f1) = prf(g, e);
    rows.precision.push(p);
    rows.recall.push(r);
    rows.f1.push(f1);
}

/// `str(a).lower() == str(b).lower()`.
fn str_lower_eq(a: &PyValue, b: &PyValue) -> bool {
    a.py_str().lower() == b.py_str().lower()
}

struct Acc {
    fields: Vec<FieldCounts>, // STRING_FIELDS then SALARY_KEYS
    lists: Vec<ListRows>,     // LIST_FIELDS then SKILL_KEYS
}

fn score_row(g: &PyValue, e: &PyValue, acc: &mut Acc) -> Result<(), PyExc> {
    for (i, f) in STRING_FIELDS.iter().enumerate() {
        acc.fields[i].count += 1;
        if py_in(f, g)? {
            let v = py_getitem(g, f)?;
            if v.truthy() && !matches!(v, PyValue::Str(s) if s.is_empty()) {
                acc.fields[i].present += 1;
            }
        }
        if py_in(f, g)? && py_in(f, e)? && str_lower_eq(py_getitem(g, f)?, py_getitem(e, f)?) {
            acc.fields[i].accurate += 1;
        }
    }
    let empty_list = PyValue::List(Vec::new());
    for (i, f) in LIST_FIELDS.iter().enumerate() {
        let gs = lower_set_exc(py_get(g, f, &empty_list)?)?;
        let es = lower_set_exc(py_get(e, f, &empty_list)?)?;
        push_row(&mut acc.lists[i], &gs, &es);
    }
    if py_in("required_skills", g)? && py_in("required_skills", e)? {
        let gsk = py_getitem(g, "required_skills")?;
        let esk = py_getitem(e, "required_skills")?;
        for (i, c) in SKILL_KEYS.iter().enumerate() {
            let gs = lower_set_exc(py_get(gsk, c, &empty_list)?)?;
            let es = lower_set_exc(py_get(esk, c, &empty_list)?)?;
            push_row(&mut acc.lists[LIST_FIELDS.len() + i], &gs, &es);
        }
        // In the reference this block is (by indentation) inside the skills condition.
        if py_in("salary", g)? && py_in("salary", e)? {
            let gsal = py_getitem(g, "salary")?;
            let esal = py_getitem(e, "salary")?;
            let empty_str = PyValue::str("");
            for (i, p) in SALARY_KEYS.iter().enumerate() {
                let fc = &mut acc.fields[STRING_FIELDS.len() + i];
                fc.count += 1;
                let gv = py_get(gsal, p, &empty_str)?;
                let ev = py_get(esal, p, &empty_str)?;
                if gv.truthy() && !matches!(gv, PyValue::Str(s) if s.is_empty()) {
                    fc.present += 1;
                }
                if str_lower_eq(gv, ev) {
                    fc.accurate += 1;
                }
            }
        }
    }
    Ok(())
}

/// Output names of the string/salary counters, in output order.
pub fn field_names() -> Vec<String> {
    STRING_FIELDS
        .iter()
        .map(|s| s.to_string())
        .chain(SALARY_KEYS.iter().map(|p| format!("salary_{p}")))
        .collect()
}

/// Output names of the list metrics, in output order.
pub fn list_names() -> Vec<String> {
    LIST_FIELDS
        .iter()
        .map(|s| s.to_string())
        .chain(SKILL_KEYS.iter().map(|c| format!("skills_{c}")))
        .collect()
}

/// The reference `calculate_metrics(results)`, records in file order.
pub fn calculate_metrics(records: &[MetricRecord]) -> ReferenceMetrics {
    let mut acc = Acc {
        fields: vec![FieldCounts::default(); STRING_FIELDS.len() + SALARY_KEYS.len()],
        lists: vec![ListRows::default(); LIST_FIELDS.len() + SKILL_KEYS.len()],
    };
    let mut aborted: BTreeMap<String, usize> = BTreeMap::new();
    let mut successful = 0;
    for r in records {
        if !r.parsed_successfully {
            continue;
        }
        successful += 1;
        let (Some(g), Some(e)) = (&r.pred, &r.expected) else {
            *aborted.entry("json.loads".to_string()).or_default() += 1;
            continue;
        };
        if let Err(exc) = score_row(g, e, &mut acc) {
            *aborted.entry(exc.name().to_string()).or_default() += 1;
        }
    }
    ReferenceMetrics {
        total_samples: records.len(),
        successful_parses: successful,
        fields: field_names().into_iter().zip(acc.fields).collect(),
        lists: list_names().into_iter().zip(acc.lists).collect(),
        aborted,
    }
}

impl ReferenceMetrics {
    /// `successful_parses / total_samples` (0.0 for an empty file, where Python would raise).
    pub fn parse_rate(&self) -> f64 {
        if self.total_samples == 0 {
            0.0
        } else {
            self.successful_parses as f64 / self.total_samples as f64
        }
    }

    /// Per list field with at least one row: `(name, mean P, mean R, mean F1, rows)`.
    pub fn list_means(&self) -> Vec<(String, f64, f64, f64, usize)> {
        self.lists
            .iter()
            .filter(|(_, r)| !r.f1.is_empty())
            .map(|(n, r)| {
                (
                    n.clone(),
                    np_mean(&r.precision),
                    np_mean(&r.recall),
                    np_mean(&r.f1),
                    r.f1.len(),
                )
            })
            .collect()
    }

    /// `overall.mean_f1_score`: unweighted mean of the list fields' F1 (0.0 when there are none).
    pub fn mean_f1_score(&self) -> f64 {
        let f1s: Vec<f64> = self.list_means().into_iter().map(|m| m.3).collect();
        if f1s.is_empty() {
            0.0
        } else {
            np_mean(&f1s)
        }
    }

    /// The metrics block with the reference's structure and key order.
    pub fn to_json(&self) -> Value {
        let mut fields = Map::new();
        for (name, c) in &self.fields {
            if c.count > 0 {
                fields.insert(
                    name.clone(),
                    json!({
                        "presence_rate": c.present as f64 / c.count as f64,
                        "accuracy_rate": c.accurate as f64 / c.count as f64,
                        "count": c.count,
                    }),
                );
            }
        }
        let mut lists = Map::new();
        for (name, p, r, f1, n) in self.list_means() {
            lists.insert(
                name,
                json!({"precision": p, "recall": r, "f1_score": f1, "count": n}),
            );
        }
        json!({
            "overall": {
                "total_samples": self.total_samples,
                "successful_parses": self.successful_parses,
                "parse_rate": self.parse_rate(),
                "mean_f1_score": self.mean_f1_score(),
            },
            "field_metrics": fields,
            "list_field_metrics": lists,
            "nested_field_metrics": {},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::pyjson::loads;

    fn rec(pred: &str, exp: &str) -> MetricRecord {
        MetricRecord {
            parsed_successfully: true,
            pred: loads(pred).ok(),
            expected: loads(exp).ok(),
        }
    }

    #[test]
    fn pairwise_matches_numpy_structure() {
        // Expected values from numpy 2.4: np.mean([0.1] * n) and
        // np.mean([i / 7.0 + 1 / 3.0 for i in range(n)]); a plain running sum differs at n=300, 1000.
        for (n, want) in [(3, 0.10000000000000002), (10, 0.1), (200, 0.1)] {
            assert_eq!(np_mean(&vec![0.1; n]), want, "n={n}");
        }
        for (n, want) in [
            (5, 0.6190476190476191),
            (37, 2.9047619047619047),
            (129, 9.476190476190478),
            (300, 21.690476190476193),
            (1000, 71.69047619047619),
        ] {
            let v: Vec<f64> = (0..n).map(|i| i as f64 / 7.0 + 1.0 / 3.0).collect();
            assert_eq!(np_mean(&v), want, "n={n}");
        }
    }

    #[test]
    fn both_empty_rules_and_sets() {
        let exp = r#"{"experience_level": "", "work_location": "Remote", "employment_status": [], "benefits": ["A", "b"], "salary": {"min": ""}, "required_skills": {"tools": ["X"]}}"#;
        let pred = r#"{"experience_level": "", "work_location": "remote", "employment_status": [], "benefits": ["a", "a", "", "C"], "salary": {"min": ""}, "required_skills": {"tools": []}}"#;
        let m = calculate_metrics(&[rec(pred, exp)]);
        let f = |n: &str| m.fields.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert_eq!(
            f("experience_level"),
            FieldCounts {
                present: 0,
                accurate: 1,
                count: 1
            }
        );
        assert_eq!(
            f("work_location"),
            FieldCounts {
                present: 1,
                accurate: 1,
                count: 1
            }
        );
        // A key missing from both counts as accurate only if present in both: it is not.
        assert_eq!(
            f("required_experience"),
            FieldCounts {
                present: 0,
                accurate: 0,
                count: 1
            }
        );
        assert_eq!(
            f("salary_min"),
            FieldCounts {
                present: 0,
                accurate: 1,
                count: 1
            }
        );
        assert_eq!(
            f("salary_max"),
            FieldCounts {
                present: 0,
                accurate: 1,
                count: 1
            }
        );
        let l = |n: &str| m.lists.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert!(l("employment_status").f1.is_empty());
        assert_eq!(l("benefits").precision, vec![0.5]);
        assert_eq!(l("benefits").recall, vec![0.5]);
        assert_eq!(l("skills_tools").f1, vec![0.0]);
        let j = m.to_json();
        assert_eq!(
            j["list_field_metrics"]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["benefits", "skills_tools"]
        );
        assert_eq!(j["overall"]["mean_f1_score"], json!(0.25));
    }

    #[test]
    fn salary_only_scored_with_skills() {
        let m = calculate_metrics(&[rec(
            r#"{"salary": {"min": "1"}}"#,
            r#"{"salary": {"min": "1"}}"#,
        )]);
        assert_eq!(m.fields[4].1.count, 0);
        assert!(m.to_json()["field_metrics"].get("salary_min").is_none());
    }

    #[test]
    fn python_exceptions_abort_with_partial_counts() {
        // A top-level list: string fields are counted (`in` works on lists), then `.get` raises.
        let m = calculate_metrics(&[rec(
            r#"["experience_level_x"]"#,
            r#"{"experience_level": ""}"#,
        )]);
        assert_eq!(
            m.fields[0].1,
            FieldCounts {
                present: 0,
                accurate: 0,
                count: 1
            }
        );
        assert_eq!(m.fields[3].1.count, 1);
        assert_eq!(m.aborted.get("AttributeError"), Some(&1));
        // A string containing the key: `g[f]` raises TypeError right after the first count.
        let m = calculate_metrics(&[rec(r#""experience_level""#, r#"{}"#)]);
        assert_eq!(m.fields[0].1.count, 1);
        assert_eq!(m.fields[1].1.count, 0);
        assert_eq!(m.aborted.get("TypeError"), Some(&1));
        // A number: `in` raises at once.
        let m = calculate_metrics(&[rec("3", "{}")]);
        assert_eq!(m.fields[0].1.count, 1);
        // A non-string truthy list item raises on .lower(); an earlier list row is kept.
        let m = calculate_metrics(&[rec(
            r#"{"employment_status": ["A"], "benefits": [1]}"#,
            r#"{"employment_status": ["a"]}"#,
        )]);
        assert_eq!(m.lists[0].1.f1, vec![1.0]);
        assert!(m.lists[1].1.f1.is_empty());
        assert_eq!(m.aborted.get("AttributeError"), Some(&1));
        // Falsy non-strings are skipped silently; a string iterates its characters.
        let m = calculate_metrics(&[rec(
            r#"{"benefits": [0, null, "", "ab"], "industries": "aB"}"#,
            r#"{"benefits": ["AB"], "industries": ["a", "b"]}"#,
        )]);
        assert_eq!(m.lists[1].1.f1, vec![1.0]);
        assert_eq!(m.lists[4].1.f1, vec![1.0]);
        // A non-dict salary raises after the count increment.
        let m = calculate_metrics(&[rec(
            r#"{"required_skills": {}, "salary": "x"}"#,
            r#"{"required_skills": {}, "salary": {}}"#,
        )]);
        assert_eq!(m.fields[4].1.count, 1);
        assert_eq!(m.fields[5].1.count, 0);
        // Unparseable prediction: nothing counted, still a successful parse per the flag.
        let m = calculate_metrics(&[MetricRecord {
            parsed_successfully: true,
            pred: None,
            expected: loads("{}").ok(),
        }]);
        assert_eq!((m.successful_parses, m.fields[0].1.count), (1, 0));
    }

    #[test]
    fn str_of_values_is_compared() {
        let m = calculate_metrics(&[
            rec(
                r#"{"work_location": ["Remote", "Hybrid"]}"#,
                r#"{"work_location": "['remote', 'hybrid']"}"#,
            ),
            rec(
                r#"{"work_location": 175800}"#,
                r#"{"work_location": "175800"}"#,
            ),
            rec(r#"{"work_location": null}"#, r#"{"work_location": "None"}"#),
            rec(
                r#"{"work_location": "Bachelor's"}"#,
                r#"{"work_location": "Bachelor’s"}"#,
            ),
        ]);
        assert_eq!(
            m.fields[1].1,
            FieldCounts {
                present: 3,
                accurate: 3,
                count: 4
            }
        );
    }
}
