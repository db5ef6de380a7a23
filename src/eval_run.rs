//! `jobx-engine eval`: run extraction over a labelled JSONL file (`{"source","target"}` lines, the
//! reference project's data format), write one prediction record per input line, score them with
//! the reference and stricter metrics, and report speed. `--compare` prints reports side by side.

use crate::error::{Error, Result};
use crate::extract::{extract_records, Engine, ExtractOptions, InputRecord};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct EvalOptions {
    pub limit: Option<usize>,
    /// shuffle the records with this seed before applying `limit` (file order without it)
    pub seed: Option<u64>,
    pub extract: ExtractOptions,
    /// where `predictions.jsonl` and `report.json` go
    pub out_dir: PathBuf,
    pub model_name: String,
}

struct Labelled {
    id: String,
    source: std::result::Result<String, String>,
    target: Option<Value>,
}

fn read_data(path: &Path) -> Result<Vec<Labelled>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (ln, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let id = format!("{}", ln + 1);
        let rec = match std::str::from_utf8(line)
            .map_err(|e| format!("line is not valid UTF-8 (offset {})", e.valid_up_to()))
            .and_then(|t| {
                serde_json::from_str::<Value>(t).map_err(|e| format!("line is not JSON: {e}"))
            }) {
            Err(e) => Labelled {
                id,
                source: Err(e),
                target: None,
            },
            Ok(v) => {
                let id = v
                    .get("id")
                    .map(|x| {
                        x.as_str()
                            .map(String::from)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .unwrap_or(id);
                let source = match v.get("source") {
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(_) => Err("`source` is not a string".to_string()),
                    None => Err("record has no `source` field".to_string()),
                };
                // target: the JSON string the reference project trained on, or a JSON object
                let target = match v.get("target") {
                    Some(Value::String(s)) => {
                        Some(serde_json::from_str::<Value>(s).unwrap_or(Value::String(s.clone())))
                    }
                    Some(o) => Some(o.clone()),
                    None => None,
                };
                Labelled { id, source, target }
            }
        };
        out.push(rec);
    }
    Ok(out)
}

fn shuffle<T>(v: &mut [T], seed: u64) {
    // Fisher-Yates with splitmix64: deterministic for a seed on every platform.
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..v.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Run the evaluation; returns the report (also written to `out_dir/report.json`).
pub fn run_eval(
    engine: &Engine,
    data: &Path,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Value> {
    let mut recs = read_data(data)?;
    if let Some(seed) = opts.seed {
        shuffle(&mut recs, seed);
    }
    if let Some(n) = opts.limit {
        recs.truncate(n);
    }
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| Error::io(&opts.out_dir, e))?;
    let pred_path = opts.out_dir.join("predictions.jsonl");
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(&pred_path).map_err(|e| Error::io(&pred_path, e))?,
    );
    let inputs: Vec<InputRecord> = recs
        .iter()
        .map(|r| InputRecord {
            id: r.id.clone(),
            adapter: None,
            source: r.source.clone(),
        })
        .collect();
    let total = inputs.len();
    let t0 = std::time::Instant::now();
    let mut idx = 0usize;
    let mut lat = Vec::new();
    let mut new_tokens = 0usize;
    let (mut warnings, mut oom_retries) = (0usize, 0usize);
    extract_records(
        engine,
        &inputs,
        &opts.extract,
        &mut |w| {
            // batches run again in halves after running out of device memory: said, and
            // counted apart from the prompts cut to their token limit
            if w.starts_with(crate::extract::OOM_RETRY_WARNING) {
                eprintln!("warning: {w}");
                oom_retries += 1;
            } else {
                warnings += 1;
            }
        },
        &mut |done| progress(done, total),
        &mut |out| {
            let r = &recs[idx];
            idx += 1;
            if let Some(ms) = out.latency_ms {
                lat.push(ms);
            }
            new_tokens += out.new_tokens.unwrap_or(0);
            let line = json!({
                "id": out.id, "output": out.output, "raw": out.raw, "error": out.error,
                "expected": r.target, "source": r.source.as_ref().ok(),
                "finish_reason": out.finish_reason, "new_tokens": out.new_tokens,
                "source_tokens": out.source_tokens, "source_tokens_cut": out.source_tokens_cut, "latency_ms": out.latency_ms,
            });
            writeln!(w, "{line}").map_err(|e| Error::io(&pred_path, e))
        },
    )?;
    w.flush().map_err(|e| Error::io(&pred_path, e))?;
    let secs = t0.elapsed().as_secs_f64();
    let report = crate::eval::score_file(&pred_path, &crate::eval::ScoreOptions::default())
        .map_err(|e| Error::Input(format!("scoring: {e:#}")))?;
    let mut line = report.metrics.to_json();
    let mut extra = report.to_json();
    if let Some(o) = extra.as_object_mut() {
        o.remove("metrics");
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    extra["speed"] = json!({
        "records": total,
        "seconds": secs,
        "samples_per_s": total as f64 / secs.max(1e-9),
        "generated_tokens": new_tokens,
        "generated_tokens_per_s": new_tokens as f64 / secs.max(1e-9),
        "latency_ms": {"p50": percentile(&lat, 50.0), "p95": percentile(&lat, 95.0), "max": lat.last().copied().unwrap_or(0.0),
                        "note": "per record = the wall time of the batch it was generated in"},
        "device": match engine.device_name() {
            Some(gpu) => format!("cuda ({gpu})"),
            None => format!("cpu ({} threads)", rayon::current_num_threads()),
        },
        "batch_size": opts.extract.batch_size,
        "num_beams": opts.extract.num_beams,
        "max_new_tokens": opts.extract.max_new_tokens,
        "truncation_warnings": warnings,
        "out_of_memory_retries": oom_retries,
    });
    extra["model"] = json!(opts.model_name);
    extra["data"] = json!(data.display().to_string());
    extra["predictions"] = json!(pred_path.display().to_string());
    if let Some(o) = line.as_object_mut() {
        o.insert("jobx".into(), extra);
    }
    let rp = opts.out_dir.join("report.json");
    std::fs::write(&rp, serde_json::to_string_pretty(&line).unwrap_or_default())
        .map_err(|e| Error::io(&rp, e))?;
    Ok(line)
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

/// Side-by-side comparison of reports (markdown table) and the same as JSON.
pub fn compare(reports: &[(String, Value)]) -> (String, Value) {
    let rows: Vec<(&str, Vec<&str>)> = vec![
        ("mean F1 (reference)", vec!["overall", "mean_f1_score"]),
        ("parse rate (reference)", vec!["overall", "parse_rate"]),
        (
            "raw parse rate",
            vec!["jobx", "stricter", "raw_parse", "result", "rate"],
        ),
        (
            "schema valid",
            vec!["jobx", "stricter", "schema_valid", "result", "rate"],
        ),
        (
            "truncated",
            vec!["jobx", "stricter", "truncation", "result", "rate"],
        ),
        (
            "list micro F1",
            vec!["jobx", "stricter", "list_micro", "overall", "f1"],
        ),
        (
            "string acc. excl. both-empty",
            vec![
                "jobx",
                "stricter",
                "string_accuracy_excluding_both_empty",
                "overall",
                "accuracy",
            ],
        ),
        ("samples/s", vec!["jobx", "speed", "samples_per_s"]),
        (
            "generated tokens/s",
            vec!["jobx", "speed", "generated_tokens_per_s"],
        ),
        ("latency p50 ms", vec!["jobx", "speed", "latency_ms", "p50"]),
        ("latency p95 ms", vec!["jobx", "speed", "latency_ms", "p95"]),
    ];
    let mut md = format!(
        "| metric | {} |\n|---|{}\n",
        reports
            .iter()
            .map(|r| r.0.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(reports.len())
    );
    let mut js = serde_json::Map::new();
    for (label, path) in rows {
        let vals: Vec<Option<f64>> = reports
            .iter()
            .map(|r| get(&r.1, &path).and_then(|x| x.as_f64()))
            .collect();
        md.push_str(&format!(
            "| {label} | {} |\n",
            vals.iter()
                .map(|v| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into()))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
        js.insert(label.to_string(), json!(vals));
    }
    (
        md,
        json!({"runs": reports.iter().map(|r| r.0.clone()).collect::<Vec<_>>(), "metrics": js}),
    )
}
