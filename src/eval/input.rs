//! Reading prediction files for scoring: the JobExtractX result files and jobx-engine JSONL.
//!
//! Why: `jobx-engine score` must read both the reference's stored results (to reproduce and extend
//! their numbers) and our own outputs, and must survive bad input. Every record-level problem is
//! counted under a reason name (reported as `input_errors`), never a panic; only an unreadable or
//! unrecognisable file is an error, and its message names the file.
//!
//! Formats:
//! - `jobextractx`: `{"evaluation_results": [{"example_id", "generated_json", "fixed_json" (T5
//!   only), "expected_json", "parsed_successfully"}, ...], "metrics": {...}}`. The family is T5 when
//!   any record has `fixed_json`, otherwise Mistral, unless overridden. The file is read with the
//!   Python-compatible parser, as the reference read it with `json.load`.
//! - `jobx-jsonl`: one record per line, `{"id", "output": <JSON value or null>, "raw": "<model
//!   text>", "expected": <JSON object or JSON text of one>, "source"?: str, "finish_reason"?:
//!   "eos"|"length", "truncated"?: bool, "error"?: any, "family"?: "t5"|"mistral"}`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};

use super::pyjson::{self, PyValue};

/// Which file layout a prediction file has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    JobExtractX,
    JobxJsonl,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::JobExtractX => "jobextractx",
            Format::JobxJsonl => "jobx-jsonl",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "jobextractx" => Some(Format::JobExtractX),
            "jobx-jsonl" | "jsonl" => Some(Format::JobxJsonl),
            _ => None,
        }
    }
}

/// Which model family produced the predictions (decides what the reference metric scores).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    T5,
    Mistral,
    Unknown,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::T5 => "t5",
            Family::Mistral => "mistral",
            Family::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Family> {
        match s.to_ascii_lowercase().as_str() {
            "t5" | "flan-t5" | "flan_t5" => Some(Family::T5),
            "mistral" => Some(Family::Mistral),
            "unknown" => Some(Family::Unknown),
            _ => None,
        }
    }
}

/// Overrides for format and family detection.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    pub format: Option<Format>,
    pub family: Option<Family>,
}

/// One prediction record, normalised across formats.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// 0-based position among the file's records (jobextractx) or 1-based line number (JSONL).
    pub position: usize,
    pub id: Option<String>,
    /// The reference's `parsed_successfully` (jobextractx) or `output` present and an object (JSONL).
    pub parsed_successfully: bool,
    /// The JSON the metrics score: `json.loads(fixed_json)` for T5, `json.loads(generated_json)` for
    /// Mistral, `output` for JSONL. `None` when absent or unparseable.
    pub pred: Option<PyValue>,
    /// The expected JSON, parsed. `None` when absent or unparseable.
    pub expected: Option<PyValue>,
    /// The raw model text before any clean-up: T5 `generated_json` (braces already dropped by the
    /// decoder), JSONL `raw`. `None` for the reference Mistral file, which stores only the block.
    pub raw: Option<String>,
    /// jobextractx only: the stored `generated_json` and `fixed_json` texts.
    pub generated_json: Option<String>,
    pub fixed_json: Option<String>,
    /// The job posting text, when the file has it.
    pub source: Option<String>,
    /// Explicit truncation flag (`truncated`, or `finish_reason == "length"`).
    pub truncated: Option<bool>,
    /// A generation error recorded by the engine.
    pub error: Option<String>,
}

/// A loaded prediction file.
#[derive(Clone, Debug)]
pub struct PredictionFile {
    pub path: PathBuf,
    pub format: Format,
    pub family: Family,
    pub records: Vec<Record>,
    /// Problems per reason; records with a fatal problem are not in `records`.
    pub input_errors: BTreeMap<String, usize>,
    /// The stored `metrics` block of a jobextractx file.
    pub stored_metrics: Option<PyValue>,
}

fn bump(errors: &mut BTreeMap<String, usize>, reason: &str) {
    *errors.entry(reason.to_string()).or_default() += 1;
}

/// Reads and normalises a prediction file. Fails only when the file cannot be read or is not a
/// recognisable prediction file; record-level problems are counted in `input_errors`.
pub fn load_predictions(path: &Path, opts: &LoadOptions) -> anyhow::Result<PredictionFile> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read prediction file {}", path.display()))?;
    parse_predictions(&bytes, opts)
        .map(
            |(format, family, records, input_errors, stored_metrics)| PredictionFile {
                path: path.to_path_buf(),
                format,
                family,
                records,
                input_errors,
                stored_metrics,
            },
        )
        .with_context(|| format!("cannot use prediction file {}", path.display()))
}

type Parsed = (
    Format,
    Family,
    Vec<Record>,
    BTreeMap<String, usize>,
    Option<PyValue>,
);

/// [`load_predictions`] on bytes already in memory.
pub fn parse_predictions(bytes: &[u8], opts: &LoadOptions) -> anyhow::Result<Parsed> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let whole = std::str::from_utf8(bytes).ok();
    let doc = match (opts.format, whole) {
        (Some(Format::JobxJsonl), _) => None,
        (_, Some(text)) => pyjson::loads(text).ok(),
        (_, None) => None,
    };
    let format = match opts.format {
        Some(f) => f,
        None => match &doc {
            Some(PyValue::Dict(d)) if d.contains_key("evaluation_results") => Format::JobExtractX,
            Some(PyValue::Dict(_)) if whole.is_some_and(|t| t.trim().lines().count() > 1) => {
                bail!("a JSON object without \"evaluation_results\": neither a jobextractx result file nor JSONL")
            }
            Some(PyValue::List(_)) => {
                bail!("a JSON array: neither a jobextractx result file nor JSONL")
            }
            _ => Format::JobxJsonl,
        },
    };
    match format {
        Format::JobExtractX => {
            let text = whole.ok_or_else(|| anyhow!("not valid UTF-8"))?;
            let doc = match doc {
                Some(d) => d,
                None => pyjson::loads(text).map_err(|e| anyhow!("not valid JSON: {e}"))?,
            };
            parse_jobextractx(&doc, opts)
        }
        Format::JobxJsonl => Ok(parse_jsonl(bytes, opts)),
    }
}

fn id_text(v: &PyValue) -> String {
    match v {
        PyValue::Str(s) => s.to_lossy().into_owned(),
        other => other.py_repr(),
    }
}

fn parse_jobextractx(doc: &PyValue, opts: &LoadOptions) -> anyhow::Result<Parsed> {
    let d = doc
        .as_dict()
        .ok_or_else(|| anyhow!("top level is not a JSON object"))?;
    let results = d
        .get("evaluation_results")
        .and_then(|v| v.as_list())
        .ok_or_else(|| anyhow!("\"evaluation_results\" is missing or not a list"))?;
    let detected = if results
        .iter()
        .any(|r| r.as_dict().is_some_and(|r| r.contains_key("fixed_json")))
    {
        Family::T5
    } else {
        Family::Mistral
    };
    let family = opts.family.unwrap_or(detected);
    let mut errors = BTreeMap::new();
    let mut records = Vec::new();
    for (i, r) in results.iter().enumerate() {
        let Some(r) = r.as_dict() else {
            bump(&mut errors, "record_not_object");
            continue;
        };
        let parsed_successfully = match r.get("parsed_successfully") {
            Some(PyValue::Bool(b)) => *b,
            Some(other) => {
                bump(&mut errors, "parsed_successfully_not_bool");
                other.truthy()
            }
            None => {
                // The reference would crash with KeyError; we leave the record out.
                bump(&mut errors, "missing_parsed_successfully");
                continue;
            }
        };
        let text_field = |name: &str, errors: &mut BTreeMap<String, usize>| -> Option<String> {
            match r.get(name) {
                Some(PyValue::Str(s)) => Some(s.to_lossy().into_owned()),
                Some(_) => {
                    bump(errors, &format!("{name}_not_string"));
                    None
                }
                None => None,
            }
        };
        let generated_json = text_field("generated_json", &mut errors);
        let fixed_json = text_field("fixed_json", &mut errors);
        let expected_text = text_field("expected_json", &mut errors);
        let (scored_name, scored) = match family {
            Family::T5 => ("fixed_json", &fixed_json),
            _ => ("generated_json", &generated_json),
        };
        if !r.contains_key(scored_name) {
            bump(&mut errors, &format!("missing_{scored_name}"));
        }
        if !r.contains_key("expected_json") {
            bump(&mut errors, "missing_expected_json");
        }
        let pred = scored.as_deref().and_then(|t| pyjson::loads(t).ok());
        if parsed_successfully && scored.is_some() && pred.is_none() {
            bump(&mut errors, &format!("{scored_name}_unparseable"));
        }
        let expected = expected_text.as_deref().and_then(|t| pyjson::loads(t).ok());
        if expected_text.is_some() && expected.is_none() {
            bump(&mut errors, "expected_json_unparseable");
        }
        records.push(Record {
            position: i,
            id: r.get("example_id").map(id_text),
            parsed_successfully,
            pred,
            expected,
            raw: if family == Family::T5 {
                generated_json.clone()
            } else {
                None
            },
            generated_json,
            fixed_json,
            source: None,
            truncated: None,
            error: None,
        });
    }
    Ok((
        Format::JobExtractX,
        family,
        records,
        errors,
        d.get("metrics").cloned(),
    ))
}

fn parse_jsonl(bytes: &[u8], opts: &LoadOptions) -> Parsed {
    let mut errors = BTreeMap::new();
    let mut records = Vec::new();
    let mut seen_ids = HashSet::new();
    let mut families = HashSet::new();
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = n + 1;
        let Ok(line) = std::str::from_utf8(line) else {
            bump(&mut errors, "invalid_utf8_line");
            continue;
        };
        let line = line.strip_suffix('\r').unwrap_or(line);
        if pyjson::py_strip(line).is_empty() {
            continue;
        }
        let Ok(v) = pyjson::loads(line) else {
            bump(&mut errors, "invalid_json_line");
            continue;
        };
        let Some(r) = v.as_dict() else {
            bump(&mut errors, "record_not_object");
            continue;
        };
        let expected = match r.get("expected") {
            None => {
                bump(&mut errors, "missing_expected");
                continue;
            }
            Some(PyValue::Dict(_)) => r.get("expected").cloned(),
            Some(PyValue::Str(s)) => match pyjson::loads(&s.to_lossy()) {
                Ok(v @ PyValue::Dict(_)) => Some(v),
                Ok(_) => {
                    bump(&mut errors, "expected_not_object");
                    continue;
                }
                Err(_) => {
                    bump(&mut errors, "expected_unparseable");
                    continue;
                }
            },
            Some(_) => {
                bump(&mut errors, "expected_not_object");
                continue;
            }
        };
        let id = match r.get("id") {
            Some(v) => Some(id_text(v)),
            None => {
                bump(&mut errors, "missing_id");
                None
            }
        };
        if let Some(id) = &id {
            if !seen_ids.insert(id.clone()) {
                bump(&mut errors, "duplicate_id");
            }
        }
        let (parsed_successfully, pred) = match r.get("output") {
            Some(v @ PyValue::Dict(_)) => (true, Some(v.clone())),
            Some(PyValue::None) => (false, None),
            Some(_) => {
                bump(&mut errors, "output_not_object");
                (false, None)
            }
            None => {
                bump(&mut errors, "missing_output");
                (false, None)
            }
        };
        let raw = match r.get("raw") {
            Some(PyValue::Str(s)) => Some(s.to_lossy().into_owned()),
            Some(PyValue::None) | None => {
                bump(&mut errors, "missing_raw");
                None
            }
            Some(_) => {
                bump(&mut errors, "raw_not_string");
                None
            }
        };
        let source = match r.get("source") {
            Some(PyValue::Str(s)) => Some(s.to_lossy().into_owned()),
            Some(PyValue::None) | None => None,
            Some(_) => {
                bump(&mut errors, "source_not_string");
                None
            }
        };
        let from_reason = match r.get("finish_reason") {
            Some(PyValue::Str(s)) if s.eq_str("length") => Some(true),
            Some(PyValue::Str(s)) if s.eq_str("eos") || s.eq_str("stop") => Some(false),
            Some(PyValue::None) | None => None,
            Some(_) => {
                bump(&mut errors, "unknown_finish_reason");
                None
            }
        };
        let from_flag = match r.get("truncated") {
            Some(PyValue::Bool(b)) => Some(*b),
            Some(PyValue::None) | None => None,
            Some(_) => {
                bump(&mut errors, "truncated_not_bool");
                None
            }
        };
        if let (Some(a), Some(b)) = (from_reason, from_flag) {
            if a != b {
                bump(&mut errors, "conflicting_truncation_flags");
            }
        }
        let error = match r.get("error") {
            Some(PyValue::None) | None => None,
            Some(PyValue::Str(s)) => Some(s.to_lossy().into_owned()),
            Some(other) => Some(other.py_repr()),
        };
        match r.get("family") {
            Some(PyValue::Str(s)) => match Family::parse(&s.to_lossy()) {
                Some(f) => {
                    families.insert(f.as_str());
                }
                None => bump(&mut errors, "unknown_family"),
            },
            Some(_) => bump(&mut errors, "unknown_family"),
            None => {}
        }
        records.push(Record {
            position: line_no,
            id,
            parsed_successfully,
            pred,
            expected,
            raw,
            generated_json: None,
            fixed_json: None,
            source,
            truncated: from_flag.or(from_reason),
            error,
        });
    }
    let family = opts.family.unwrap_or_else(|| {
        if families.len() == 1 {
            families
                .iter()
                .next()
                .and_then(|f| Family::parse(f))
                .unwrap_or(Family::Unknown)
        } else {
            if families.len() > 1 {
                bump(&mut errors, "mixed_families");
            }
            Family::Unknown
        }
    });
    (Format::JobxJsonl, family, records, errors, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jsonl(text: &str) -> Parsed {
        parse_predictions(text.as_bytes(), &LoadOptions::default()).unwrap()
    }

    #[test]
    fn jsonl_bad_input_is_counted_not_fatal() {
        let text = concat!(
            r#"{"id": "a", "output": {"experience_level": "x"}, "raw": "{}", "expected": {"experience_level": "x"}, "finish_reason": "eos"}"#,
            "\n",
            "not json\n",
            "[1, 2]\n",
            r#"{"id": "b", "output": null, "raw": "...", "expected": "{\"experience_level\": \"y\"}", "finish_reason": "length", "error": "oom"}"#,
            "\n",
            r#"{"id": "b", "output": "oops", "raw": "x", "expected": "{bad"}"#,
            "\n",
            r#"{"id": "c", "output": ["x"], "expected": {}, "truncated": true, "source": 5}"#,
            "\n",
            r#"{"output": {}, "raw": "x"}"#,
            "\n",
            "\n",
            r#"{"id": 7, "raw": "x", "expected": {}, "finish_reason": "weird", "family": "t5"}"#,
            "\r\n",
        );
        let (format, family, recs, errors, _) = jsonl(text);
        assert_eq!(format, Format::JobxJsonl);
        assert_eq!(family, Family::T5);
        assert_eq!(recs.len(), 4);
        assert!(recs[0].parsed_successfully && recs[0].truncated == Some(false));
        assert!(!recs[1].parsed_successfully && recs[1].truncated == Some(true));
        assert_eq!(recs[1].error.as_deref(), Some("oom"));
        assert!(recs[1].expected.is_some());
        assert_eq!(recs[3].id.as_deref(), Some("7"));
        let want: BTreeMap<String, usize> = [
            ("invalid_json_line", 1),
            ("record_not_object", 1),
            ("expected_unparseable", 1),
            ("output_not_object", 1),
            ("missing_raw", 1),
            ("source_not_string", 1),
            ("missing_expected", 1),
            ("missing_output", 1),
            ("unknown_finish_reason", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(errors, want);
    }

    #[test]
    fn jobextractx_detection_and_record_errors() {
        let text = r#"{"evaluation_results": [
            {"example_id": 0, "generated_json": "\"a\": 1", "fixed_json": "{\"a\": 1}", "expected_json": "{}", "parsed_successfully": true},
            {"example_id": 1, "generated_json": "x", "expected_json": 5, "parsed_successfully": true},
            {"example_id": 2, "fixed_json": "{", "expected_json": "{}"},
            "junk"
        ], "metrics": {"overall": {}}}"#;
        let (format, family, recs, errors, stored) = jsonl(text);
        assert_eq!((format, family), (Format::JobExtractX, Family::T5));
        assert_eq!(recs.len(), 2);
        assert!(recs[0].pred.is_some() && recs[0].raw.as_deref() == Some("\"a\": 1"));
        assert!(recs[1].pred.is_none() && recs[1].expected.is_none());
        assert!(stored.is_some());
        for (k, v) in [
            ("missing_fixed_json", 1),
            ("expected_json_not_string", 1),
            ("missing_parsed_successfully", 1),
            ("record_not_object", 1),
        ] {
            assert_eq!(errors.get(k), Some(&v), "{k}: {errors:?}");
        }
        // Family override: score generated_json instead.
        let opts = LoadOptions {
            family: Some(Family::Mistral),
            format: None,
        };
        let (_, family, recs, _, _) = parse_predictions(text.as_bytes(), &opts).unwrap();
        assert_eq!(family, Family::Mistral);
        assert!(recs[0].pred.is_none() && recs[0].raw.is_none());
    }

    #[test]
    fn unusable_files_are_errors_naming_the_file() {
        let e = load_predictions(
            Path::new("/nonexistent/preds.jsonl"),
            &LoadOptions::default(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/preds.jsonl"));
        assert!(parse_predictions(b"[1, 2]", &LoadOptions::default()).is_err());
        assert!(parse_predictions(b"{\n\"a\": 1\n}", &LoadOptions::default()).is_err());
        let e =
            parse_predictions(b"{\"evaluation_results\": 3}", &LoadOptions::default()).unwrap_err();
        assert!(e.to_string().contains("evaluation_results"));
        // Invalid UTF-8 inside a JSONL file only costs that line.
        let (_, _, recs, errors, _) = parse_predictions(
            b"\xff\xfe\n{\"id\": 1, \"output\": {}, \"raw\": \"\", \"expected\": {}}\n",
            &LoadOptions::default(),
        )
        .unwrap();
        assert_eq!((recs.len(), errors.get("invalid_utf8_line")), (1, Some(&1)));
    }
}
