//! `jobx-engine report`: charts (SVG + PNG) and index pages from score reports.
//!
//! The reports are built here by hand, so these tests need neither the shared folder nor a model.
//! `reference_files_from_shared` also charts the four reference result files when the shared
//! folder is found (`<repo>/../shared` or `$JOBX_SHARED`); without it, it passes with a note.

use jobx_engine::eval::report::{load_reports, render_reports, CHART_WIDTH};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A score report shaped like `jobx-engine score --output` (numbers of flan_t5_large, trimmed).
fn t5_report(file: &str) -> Value {
    json!({
        "overall": {"total_samples": 1000, "successful_parses": 1000, "parse_rate": 1.0,
                    "mean_f1_score": 0.5849654435250686},
        "field_metrics": {
            "experience_level": {"presence_rate": 0.934, "accuracy_rate": 0.678, "count": 1000},
            "work_location": {"presence_rate": 0.993, "accuracy_rate": 0.861, "count": 1000},
            "required_minimum_degree": {"presence_rate": 0.64, "accuracy_rate": 0.792, "count": 1000},
            "salary_currency": {"presence_rate": 0.596, "accuracy_rate": 0.929, "count": 1000}
        },
        "list_field_metrics": {
            "employment_status": {"precision": 0.6349518810148732, "recall": 0.6305774278215223,
                                  "f1_score": 0.6312773403324584, "count": 762},
            "skills_programming_languages": {"precision": 0.9316003937807008,
                "recall": 0.9190344253643487, "f1_score": 0.9177365974379664, "count": 782},
            "additional_keywords": {"precision": 0.2014899054860039, "recall": 0.18519947031426623,
                                    "f1_score": 0.18555678539708995, "count": 980}
        },
        "nested_field_metrics": {},
        "jobx": {
            "file": file, "format": "jobextractx", "family": "t5",
            "stricter": {
                "records_scored": 1000,
                "raw_parse": {"basis": "x", "result": {"count": 0, "total": 1000, "rate": 0.0}},
                "schema_valid": {"result": {"count": 1000, "total": 1000, "rate": 1.0}, "violations": {}},
                "truncation": {"basis": "x", "result": {"count": 252, "total": 1000, "rate": 0.252}},
                "list_micro": {"per_field": {}, "overall": {"tp": 13380, "predicted": 21533,
                    "expected": 24866, "precision": 0.621371847861422, "recall": 0.5380841309418483,
                    "f1": 0.5767365675984395}},
                "string_accuracy_excluding_both_empty": {"per_field": {},
                    "overall": {"correct": 4714, "scored": 6083, "accuracy": 0.7749465724149268}},
                "reference_untruncated_only": {"records": 748, "mean_f1_score": 0.6066660694531831}
            },
            "input_errors": {}
        }
    })
}

/// A second run: no stricter section, a speed section as `jobx-engine eval` adds, odd name chars.
fn other_report() -> Value {
    json!({
        "overall": {"total_samples": 10, "successful_parses": 9, "parse_rate": 0.9,
                    "mean_f1_score": 0.537839146005849},
        "field_metrics": {
            "experience_level": {"presence_rate": 0.8, "accuracy_rate": 0.655, "count": 10},
            "work_location": {"presence_rate": 0.9, "accuracy_rate": 0.84, "count": 10},
            "salary_min": {"presence_rate": 0.5, "accuracy_rate": 0.7142857142857143, "count": 7}
        },
        "list_field_metrics": {
            "employment_status": {"precision": 0.5, "recall": 0.25, "f1_score": 0.3333333333333333, "count": 4}
        },
        "nested_field_metrics": {},
        "jobx": {"file": "runs/my run & <test>.jsonl", "format": "jobx-jsonl", "family": "mistral",
                 "input_errors": {"missing_raw": 2},
                 "speed": {"records": 10, "tokens_per_second": 123.456789, "wall_s": 4.5}}
    })
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn name_of(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Width and height from the IHDR chunk of a PNG, after checking the signature and chunk layout.
fn png_size(p: &Path) -> (u32, u32) {
    let b = std::fs::read(p).unwrap();
    assert!(b.len() > 100, "{}: too small", p.display());
    assert_eq!(
        &b[..8],
        b"\x89PNG\r\n\x1a\n",
        "{}: PNG signature",
        p.display()
    );
    assert_eq!(&b[8..12], &[0, 0, 0, 13], "{}: IHDR length", p.display());
    assert_eq!(&b[12..16], b"IHDR", "{}: first chunk", p.display());
    let w = u32::from_be_bytes(b[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(b[20..24].try_into().unwrap());
    // Walk the chunks: they must tile the file and end with IEND, with at least one IDAT.
    let mut at = 8;
    let mut idat = false;
    let mut last = [0u8; 4];
    while at + 12 <= b.len() {
        let len = u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        last.copy_from_slice(&b[at + 4..at + 8]);
        idat |= &last == b"IDAT";
        at += 12 + len;
    }
    assert_eq!(at, b.len(), "{}: chunks do not tile the file", p.display());
    assert_eq!(&last, b"IEND", "{}: last chunk", p.display());
    assert!(idat, "{}: no IDAT", p.display());
    (w, h)
}

fn check_svg(p: &Path) -> String {
    let s = read(p);
    let t = s.trim_start();
    assert!(
        t.starts_with("<svg") || t.starts_with("<?xml"),
        "{}: not SVG",
        p.display()
    );
    assert!(
        s.trim_end().ends_with("</svg>"),
        "{}: not closed",
        p.display()
    );
    assert!(s.contains("<text"), "{}: no text", p.display());
    assert!(s.contains("<rect"), "{}: no bars", p.display());
    s
}

/// Texts of the `<text>` elements (XML entities left as they are).
fn svg_texts(svg: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = svg;
    while let Some(i) = rest.find("<text") {
        rest = &rest[i..];
        let Some(gt) = rest.find('>') else { break };
        let Some(end) = rest.find("</text>") else {
            break;
        };
        out.push(rest[gt + 1..end].trim().to_string());
        rest = &rest[end + 7..];
    }
    out
}

#[test]
fn renders_all_charts_and_indexes() {
    let dir = tmp();
    let out = dir.path().join("charts");
    let reports = vec![
        (
            "flan_t5_large_eval".to_string(),
            t5_report("/x/flan_t5_large_eval.json"),
        ),
        ("my run & <test>".to_string(), other_report()),
    ];
    let files = render_reports(&reports, &out).unwrap();
    let mut names: Vec<String> = files.iter().map(|p| name_of(p)).collect();
    names.sort();
    let mut expected: Vec<String> = [
        "overall_comparison",
        "string_accuracy_comparison",
        "list_f1_comparison",
        "flan_t5_large_eval_string_fields",
        "flan_t5_large_eval_list_fields",
        "my_run____test__string_fields",
        "my_run____test__list_fields",
    ]
    .iter()
    .flat_map(|s| [format!("{s}.svg"), format!("{s}.png")])
    .chain(["index.html".to_string(), "index.md".to_string()])
    .collect();
    expected.sort();
    assert_eq!(names, expected);
    for f in &files {
        assert!(
            f.starts_with(&out),
            "{} outside the output folder",
            f.display()
        );
        assert!(
            std::fs::metadata(f).unwrap().len() > 0,
            "{} is empty",
            f.display()
        );
    }

    // PNGs: valid, chart width, a sensible height; the SVG of the same chart has the same size.
    for f in files.iter().filter(|f| f.extension().unwrap() == "png") {
        let (w, h) = png_size(f);
        assert_eq!(w, CHART_WIDTH, "{}", f.display());
        assert!((200..5000).contains(&h), "{}: height {h}", f.display());
        let svg = check_svg(&f.with_extension("svg"));
        assert!(
            svg.contains(&format!("height=\"{h}\"")),
            "{}: SVG height differs",
            f.display()
        );
    }
}

#[test]
fn svg_values_match_the_report() {
    let dir = tmp();
    let reports = vec![
        (
            "flan_t5_large_eval".to_string(),
            t5_report("/x/flan_t5_large_eval.json"),
        ),
        ("other".to_string(), other_report()),
    ];
    render_reports(&reports, dir.path()).unwrap();

    // Overall: reference mean F1 and parse rate of both runs, stricter metrics of the t5 run.
    let svg = check_svg(&dir.path().join("overall_comparison.svg"));
    let texts = svg_texts(&svg);
    for v in [
        "0.585", "1.000", "0.538", "0.900", "0.577", "0.775", "0.000",
    ] {
        assert!(
            texts.iter().any(|t| t == v),
            "overall: no bar label {v}: {texts:?}"
        );
    }
    assert!(
        texts.iter().any(|t| t == "n/a"),
        "overall: the run without stricter metrics shows n/a"
    );
    for label in [
        "Mean F1 (reference)",
        "Parse rate (reference)",
        "List micro F1 (stricter)",
        "flan_t5_large_eval",
        "other",
    ] {
        assert!(
            texts.iter().any(|t| t == label),
            "overall: no text {label:?}"
        );
    }

    // String fields: every field name and both rates per field.
    let svg = check_svg(&dir.path().join("flan_t5_large_eval_string_fields.svg"));
    let texts = svg_texts(&svg);
    for (f, p, a) in [
        ("experience_level", "0.934", "0.678"),
        ("work_location", "0.993", "0.861"),
        ("required_minimum_degree", "0.640", "0.792"),
        ("salary_currency", "0.596", "0.929"),
    ] {
        assert!(texts.iter().any(|t| t == f), "string chart: no field {f}");
        assert!(
            texts.iter().any(|t| t == p),
            "string chart: no presence {p} ({f})"
        );
        assert!(
            texts.iter().any(|t| t == a),
            "string chart: no accuracy {a} ({f})"
        );
    }
    // Sorted by accuracy rate, best first: salary_currency is drawn above experience_level.
    let pos = |name: &str| texts.iter().position(|t| t == name).unwrap();
    assert!(pos("salary_currency") < pos("experience_level"));

    assert!(
        !texts.iter().any(|t| t.contains("(n=")),
        "equal counts are in the subtitle"
    );
    assert!(texts.iter().any(|t| t.contains("n=1000 per field")));
    // Counts that differ between fields are shown per row.
    let texts = svg_texts(&check_svg(&dir.path().join("other_string_fields.svg")));
    for label in [
        "salary_min (n=7)",
        "experience_level (n=10)",
        "0.714",
        "0.500",
    ] {
        assert!(
            texts.iter().any(|t| t == label),
            "other string chart: no {label:?}: {texts:?}"
        );
    }

    // List fields: precision, recall, F1 and the count in the row label.
    let svg = check_svg(&dir.path().join("flan_t5_large_eval_list_fields.svg"));
    let texts = svg_texts(&svg);
    for (f, vals) in [
        ("employment_status (n=762)", ["0.635", "0.631", "0.631"]),
        (
            "skills_programming_languages (n=782)",
            ["0.932", "0.919", "0.918"],
        ),
        ("additional_keywords (n=980)", ["0.201", "0.185", "0.186"]),
    ] {
        assert!(
            texts.iter().any(|t| t == f),
            "list chart: no row {f}: {texts:?}"
        );
        for v in vals {
            assert!(
                texts.iter().any(|t| t == v),
                "list chart: no value {v} ({f})"
            );
        }
    }
    for legend in ["Precision", "Recall", "F1"] {
        assert!(
            texts.iter().any(|t| t == legend),
            "list chart: no legend {legend}"
        );
    }

    // Comparisons across runs.
    let texts = svg_texts(&check_svg(
        &dir.path().join("string_accuracy_comparison.svg"),
    ));
    for v in ["0.678", "0.655", "0.861", "0.840", "0.929"] {
        assert!(texts.iter().any(|t| t == v), "string comparison: no {v}");
    }
    let texts = svg_texts(&check_svg(&dir.path().join("list_f1_comparison.svg")));
    for v in ["0.631", "0.333", "0.918"] {
        assert!(texts.iter().any(|t| t == v), "list comparison: no {v}");
    }
}

#[test]
fn index_links_every_file_and_has_the_numbers() {
    let dir = tmp();
    let reports = vec![
        (
            "flan_t5_large_eval".to_string(),
            t5_report("/x/flan_t5_large_eval.json"),
        ),
        ("my run & <test>".to_string(), other_report()),
    ];
    let files = render_reports(&reports, dir.path()).unwrap();
    let html = read(&dir.path().join("index.html"));
    let md = read(&dir.path().join("index.md"));
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.trim_end().ends_with("</html>"));
    for f in files
        .iter()
        .map(|f| name_of(f))
        .filter(|n| !n.starts_with("index."))
    {
        assert!(
            html.contains(&format!("href=\"{f}\"")),
            "index.html does not link {f}"
        );
        assert!(
            md.contains(&format!("]({f})")),
            "index.md does not link {f}"
        );
    }
    for f in files
        .iter()
        .map(|f| name_of(f))
        .filter(|n| n.ends_with(".png"))
    {
        assert!(
            html.contains(&format!("src=\"{f}\"")),
            "index.html does not show {f}"
        );
    }
    // Numbers in the tables (4 decimals), escaped run names, the speed section.
    for v in [
        "0.5850", "0.5378", "0.5767", "0.7749", "0.2520", "0.6067", "0.6780", "0.9177",
    ] {
        assert!(html.contains(v), "index.html lacks {v}");
        assert!(md.contains(v), "index.md lacks {v}");
    }
    assert!(html.contains("my run &amp; &lt;test&gt;"));
    assert!(!html.contains("<test>"));
    assert!(html.contains("tokens_per_second") && html.contains("123.4568"));
    assert!(md.contains("tokens_per_second"));
    assert!(html.contains("missing_raw"));
    assert!(
        md.contains("| experience_level | 0.9340 | 0.6780 | 1000 |"),
        "{md}"
    );
}

#[test]
fn a_single_run_without_stricter_metrics() {
    let dir = tmp();
    let mut r = other_report();
    r.as_object_mut().unwrap().remove("jobx");
    let files = render_reports(&[("solo".to_string(), r)], dir.path()).unwrap();
    let mut names: Vec<String> = files.iter().map(|p| name_of(p)).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "index.html",
            "index.md",
            "overall_comparison.png",
            "overall_comparison.svg",
            "solo_list_fields.png",
            "solo_list_fields.svg",
            "solo_string_fields.png",
            "solo_string_fields.svg"
        ]
    );
    let texts = svg_texts(&read(&dir.path().join("overall_comparison.svg")));
    assert!(
        !texts.iter().any(|t| t.contains("stricter")),
        "no stricter rows without stricter data"
    );
    assert!(texts.iter().any(|t| t == "0.538"));
    assert!(render_reports(&[], dir.path()).is_err());
}

#[test]
fn load_reports_objects_arrays_and_names() {
    let dir = tmp();
    let a = dir.path().join("a.json");
    let b = dir.path().join("b.json");
    let c = dir.path().join("reference_like.json");
    std::fs::write(
        &a,
        serde_json::to_string(&t5_report("/data/flan_t5_large_eval.json")).unwrap(),
    )
    .unwrap();
    // An array of two reports; the first has the same file stem as a.json's report.
    let arr = json!([t5_report("other/flan_t5_large_eval.json"), other_report()]);
    std::fs::write(&b, serde_json::to_string_pretty(&arr).unwrap()).unwrap();
    // A reference result file: its stored metrics block is read.
    let refl = json!({"evaluation_results": [], "metrics": {"overall": {"total_samples": 1, "successful_parses": 1,
        "parse_rate": 1.0, "mean_f1_score": 0.25}, "field_metrics": {}, "list_field_metrics": {}}});
    std::fs::write(&c, refl.to_string()).unwrap();

    let loaded = load_reports(&[a.clone(), b.clone(), c.clone()]).unwrap();
    let names: Vec<&str> = loaded.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "flan_t5_large_eval",
            "flan_t5_large_eval_2",
            "my run & <test>",
            "reference_like"
        ]
    );
    assert_eq!(loaded[3].1["overall"]["mean_f1_score"], json!(0.25));
    assert_eq!(loaded[2].1["overall"]["parse_rate"], json!(0.9));

    // Loaded reports render (the reference-like one has no field charts).
    let out = dir.path().join("out");
    let files = render_reports(&loaded, &out).unwrap();
    assert!(files
        .iter()
        .any(|f| name_of(f) == "flan_t5_large_eval_2_string_fields.png"));
    assert!(!files
        .iter()
        .any(|f| name_of(f).starts_with("reference_like_")));
}

#[test]
fn load_reports_errors_name_the_file() {
    let dir = tmp();
    let check = |p: PathBuf, want: &str| {
        let err = format!("{:#}", load_reports(std::slice::from_ref(&p)).unwrap_err());
        assert!(
            err.contains(&p.display().to_string()),
            "error does not name the file: {err}"
        );
        assert!(err.contains(want), "error {err:?} lacks {want:?}");
    };
    check(dir.path().join("missing.json"), "cannot read");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"overall\": ").unwrap();
    check(bad, "not valid JSON");
    let not_report = dir.path().join("not_report.json");
    std::fs::write(&not_report, "{\"evaluation_results\": []}").unwrap();
    check(not_report, "not a score report");
    let scalar = dir.path().join("scalar.json");
    std::fs::write(&scalar, "[1]").unwrap();
    check(scalar, "found a number");
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, "[]").unwrap();
    check(empty, "empty array");
}

fn shared_dir() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("JOBX_SHARED") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    candidates
        .into_iter()
        .find(|p| p.join("seed/eval-results").is_dir())
}

#[test]
fn reference_files_from_shared() {
    let Some(shared) = shared_dir() else {
        eprintln!("reference_files_from_shared: no shared folder (<repo>/../shared or $JOBX_SHARED); skipped");
        return;
    };
    let dir = shared.join("seed/eval-results");
    let names = [
        "flan_t5_large_eval",
        "flan_t5_xl_lora_batch_2_eval",
        "flan_t5_xl_lora_batch_4_eval",
        "mistral_lora_eval",
    ];
    let paths: Vec<PathBuf> = names
        .iter()
        .map(|n| dir.join(format!("{n}.json")))
        .collect();
    let loaded = load_reports(&paths).unwrap();
    assert_eq!(
        loaded.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        names
    );
    let out = tempfile::tempdir().unwrap();
    let files = render_reports(&loaded, out.path()).unwrap();
    assert_eq!(files.len(), 2 * (3 + 2 * 4) + 2);
    // The numbers of the reference comparison chart (SPEC §5): 0.585 / 0.569 / 0.566 / 0.538.
    let texts = svg_texts(&read(&out.path().join("overall_comparison.svg")));
    for v in ["0.585", "0.569", "0.566", "0.538", "1.000"] {
        assert!(
            texts.iter().any(|t| t == v),
            "no {v} in the overall comparison"
        );
    }
    for f in files.iter().filter(|f| f.extension().unwrap() == "png") {
        assert_eq!(png_size(f).0, CHART_WIDTH);
    }
}
