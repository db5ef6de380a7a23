//! Charts and an index page for score reports: `jobx-engine report REPORT... --out DIR`.
//!
//! Input: the JSON that `jobx-engine score --output` (or `jobx-engine eval`) writes, i.e. the
//! reference metrics block (`overall`, `field_metrics`, `list_field_metrics`, ...) with our extra
//! `jobx` section (`file`, `format`, `family`, `stricter`, `input_errors`, optionally `speed`).
//! A file may hold one such object or a JSON array of them. A reference (JobExtractX) result file,
//! which stores the same block under `metrics`, is accepted too: its stored block is charted.
//!
//! Output, like the reference project's `visualize.py` / `create_model_comparison.py`, but as
//! horizontal bars with a numeric label on every bar (3 decimals):
//!
//! - per run: `<run>_string_fields` (presence and accuracy rate per string field, sorted by
//!   accuracy) and `<run>_list_fields` (precision, recall, F1 per list field, sorted by F1);
//! - across runs: `overall_comparison` (reference parse rate and mean F1, plus the stricter list
//!   micro F1, string accuracy excluding both-empty pairs, schema-valid rate and raw-parse rate
//!   where present); with two runs or more also `string_accuracy_comparison` and
//!   `list_f1_comparison`;
//! - each chart as `.svg` and `.png`, and `index.html` / `index.md` that link every chart and give
//!   the numbers in tables.
//!
//! Text in the PNGs is drawn with DejaVu Sans, embedded in the binary (`assets/fonts/`), so no
//! system font or fontconfig is needed at run time.

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// DejaVu Sans (Bitstream Vera licence, see `assets/fonts/LICENSE-DejaVu.txt`).
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
/// The font family named in the SVG `<text>` elements.
const FONT: &str = "sans-serif";

/// Width in pixels of every chart (PNG and SVG).
pub const CHART_WIDTH: u32 = 1100;

const BLUE: RGBColor = RGBColor(0x34, 0x98, 0xdb);
const GREEN: RGBColor = RGBColor(0x2e, 0xcc, 0x71);
const RED_: RGBColor = RGBColor(0xe7, 0x4c, 0x3c);
const TEXT: RGBColor = RGBColor(0x22, 0x22, 0x22);
const MUTED: RGBColor = RGBColor(0x66, 0x66, 0x66);
const GRID: RGBColor = RGBColor(0xe2, 0xe2, 0xe2);
/// Run colours: matplotlib's tab10 (as the reference comparison charts), then tab20's light
/// variants.
const RUN_COLORS: [RGBColor; 20] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0xae, 0xc7, 0xe8),
    RGBColor(0xff, 0xbb, 0x78),
    RGBColor(0x98, 0xdf, 0x8a),
    RGBColor(0xff, 0x98, 0x96),
    RGBColor(0xc5, 0xb0, 0xd5),
    RGBColor(0xc4, 0x9c, 0x94),
    RGBColor(0xf7, 0xb6, 0xd2),
    RGBColor(0xc7, 0xc7, 0xc7),
    RGBColor(0xdb, 0xdb, 0x8d),
    RGBColor(0x9e, 0xda, 0xe5),
];

/// Stricter metrics shown in the overall comparison (label, path under `jobx`).
const STRICTER_CHARTED: [(&str, &[&str]); 4] = [
    (
        "List micro F1 (stricter)",
        &["stricter", "list_micro", "overall", "f1"],
    ),
    (
        "String acc. excl. both-empty (stricter)",
        &[
            "stricter",
            "string_accuracy_excluding_both_empty",
            "overall",
            "accuracy",
        ],
    ),
    (
        "Schema-valid rate (stricter)",
        &["stricter", "schema_valid", "result", "rate"],
    ),
    (
        "Raw-parse rate (stricter)",
        &["stricter", "raw_parse", "result", "rate"],
    ),
];

// ---------------------------------------------------------------------------------------------
// Loading

/// Reads score reports. Each file holds one report object or a JSON array of them; a reference
/// result file with a stored `metrics` block is read as that block. Run names come from the stem
/// of `jobx.file` (else of the report file), made unique with `_2`, `_3`, ... suffixes.
pub fn load_reports(paths: &[PathBuf]) -> Result<Vec<(String, Value)>> {
    let mut out: Vec<(String, Value)> = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read report file {}", path.display()))?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("report file {} is not valid JSON", path.display()))?;
        let items: Vec<Value> = match value {
            Value::Array(items) => {
                if items.is_empty() {
                    bail!("report file {} holds an empty array", path.display());
                }
                items
            }
            other => vec![other],
        };
        let n = items.len();
        for (i, item) in items.into_iter().enumerate() {
            let at = if n > 1 {
                format!("{} (item {})", path.display(), i)
            } else {
                path.display().to_string()
            };
            let report = as_report(item).map_err(|why| anyhow!("report file {at}: {why}"))?;
            let name = match report
                .pointer("/jobx/file")
                .and_then(Value::as_str)
                .and_then(stem)
            {
                Some(s) => s,
                None => {
                    let s = stem(&path.to_string_lossy()).unwrap_or_else(|| "run".to_string());
                    if n > 1 {
                        format!("{s}_{}", i + 1)
                    } else {
                        s
                    }
                }
            };
            out.push((name, report));
        }
    }
    let mut names: Vec<String> = Vec::new();
    for (name, _) in out.iter_mut() {
        *name = unique(name, &names);
        names.push(name.clone());
    }
    Ok(out)
}

fn as_report(v: Value) -> std::result::Result<Value, String> {
    let Value::Object(mut map) = v else {
        return Err(format!(
            "expected a score report object, found {}",
            kind(&v)
        ));
    };
    if map.get("overall").is_some_and(Value::is_object) {
        return Ok(Value::Object(map));
    }
    if let Some(Value::Object(m)) = map.get("metrics") {
        if m.get("overall").is_some_and(Value::is_object) {
            // A reference result file: chart its stored block.
            return Ok(map.remove("metrics").unwrap_or(Value::Null));
        }
    }
    Err(
        "not a score report: no \"overall\" object (expected the output of `jobx-engine score \
         --output`)"
            .to_string(),
    )
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn stem(path: &str) -> Option<String> {
    Path::new(path)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
}

fn unique(base: &str, taken: &[String]) -> String {
    if !taken.iter().any(|t| t == base) {
        return base.to_string();
    }
    (2..)
        .map(|k| format!("{base}_{k}"))
        .find(|c| !taken.iter().any(|t| t == c))
        .expect("an unused suffix exists")
}

/// A file-name-safe form of a run name.
fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_start_matches('.').to_string();
    if s.is_empty() {
        "run".to_string()
    } else {
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Reading numbers out of a report

fn num_at(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for k in path {
        cur = cur.get(k)?;
    }
    cur.as_f64()
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for k in path {
        cur = cur.get(k)?;
    }
    cur.as_str()
}

fn stricter_num(report: &Value, path: &[&str]) -> Option<f64> {
    let jobx = report.get("jobx")?;
    num_at(jobx, path)
}

/// `(field, presence, accuracy, count)`.
type StringRow = (String, Option<f64>, Option<f64>, Option<f64>);
/// `(field, precision, recall, f1, count)`.
type ListRow = (String, Option<f64>, Option<f64>, Option<f64>, Option<f64>);

/// `(field, presence, accuracy, count)` in report order.
fn string_fields(report: &Value) -> Vec<StringRow> {
    let Some(Value::Object(m)) = report.get("field_metrics") else {
        return Vec::new();
    };
    m.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                num_at(v, &["presence_rate"]),
                num_at(v, &["accuracy_rate"]),
                num_at(v, &["count"]),
            )
        })
        .collect()
}

/// `(field, precision, recall, f1, count)` in report order.
fn list_fields(report: &Value) -> Vec<ListRow> {
    let Some(Value::Object(m)) = report.get("list_field_metrics") else {
        return Vec::new();
    };
    m.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                num_at(v, &["precision"]),
                num_at(v, &["recall"]),
                num_at(v, &["f1_score"]),
                num_at(v, &["count"]),
            )
        })
        .collect()
}

/// Field names over all reports: the order of the report with the most fields, then any others in
/// first-seen order.
fn union_fields(reports: &[(String, Value)], key: &str) -> Vec<String> {
    let keys = |r: &Value| -> Vec<String> {
        match r.get(key) {
            Some(Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        }
    };
    let mut out: Vec<String> = reports
        .iter()
        .map(|(_, r)| keys(r))
        .reduce(|best, k| if k.len() > best.len() { k } else { best })
        .unwrap_or_default();
    for (_, r) in reports {
        for k in keys(r) {
            if !out.contains(&k) {
                out.push(k);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Drawing

struct Series {
    name: String,
    color: RGBColor,
}

/// A horizontal grouped bar chart: one row per category, one bar per series in each row.
struct HBarChart {
    title: String,
    subtitle: String,
    x_desc: String,
    series: Vec<Series>,
    /// Row label and one value per series (`None`: no bar, "n/a").
    rows: Vec<(String, Vec<Option<f64>>)>,
}

struct Layout {
    height: u32,
    label_w: u32,
    legend_lines: Vec<Vec<(usize, i32)>>, // (series index, x offset) per legend line
    header_h: u32,
    /// Right end of the value axis (room for the value labels).
    xmax: f64,
    /// Largest labelled tick and tick step.
    tick_max: f64,
    tick_step: f64,
}

/// How text is drawn: SVG `<text>` elements (the viewer's sans-serif font), or glyphs rasterised
/// from the embedded font (PNG). plotters' own ab_glyph text drawing drops each glyph's left side
/// bearing, which leaves visibly uneven letter spacing, so PNG text is rasterised here instead.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TextMode {
    Svg,
    Raster,
}

fn glyph_font() -> Result<&'static ab_glyph::FontRef<'static>> {
    static FONT_REF: std::sync::OnceLock<Option<ab_glyph::FontRef<'static>>> =
        std::sync::OnceLock::new();
    FONT_REF
        .get_or_init(|| ab_glyph::FontRef::try_from_slice(FONT_BYTES).ok())
        .as_ref()
        .ok_or_else(|| anyhow!("the embedded chart font could not be loaded"))
}

fn ensure_font() -> Result<()> {
    glyph_font().map(|_| ())
}

/// The ab_glyph scale whose em is `em_px` pixels (SVG `font-size` is the em size too).
fn em_scale(font: &ab_glyph::FontRef<'static>, em_px: f32) -> ab_glyph::PxScale {
    use ab_glyph::Font as _;
    let upem = font.units_per_em().unwrap_or(2048.0);
    ab_glyph::PxScale::from(em_px * font.height_unscaled() / upem)
}

/// Advance width of `s` in pixels at `em_px`, with kerning.
fn text_w(s: &str, em_px: f32) -> u32 {
    use ab_glyph::{Font as _, ScaleFont as _};
    let Ok(font) = glyph_font() else {
        return (s.chars().count() as f32 * em_px * 0.6).ceil() as u32;
    };
    let sf = font.as_scaled(em_scale(font, em_px));
    let mut w = 0.0f32;
    let mut prev = None;
    for ch in s.chars() {
        let id = sf.glyph_id(ch);
        if let Some(p) = prev {
            w += sf.kern(p, id);
        }
        w += sf.h_advance(id);
        prev = Some(id);
    }
    w.ceil() as u32
}

/// Cap height of DejaVu Sans as a fraction of the em (1493 / 2048): used to centre text
/// vertically on its digits and capitals.
const CAP_HEIGHT_EM: f32 = 0.729;

#[allow(clippy::too_many_arguments)]
fn draw_text<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    mode: TextMode,
    s: &str,
    (x, y): (i32, i32),
    em_px: f32,
    color: RGBColor,
    h: HPos,
    v: VPos,
) -> Result<()> {
    use ab_glyph::{Font as _, ScaleFont as _};
    if s.is_empty() {
        return Ok(());
    }
    if mode == TextMode::Svg {
        // plotters writes font-size = size / 1.24.
        let style = (FONT, em_px as f64 * 1.24)
            .into_font()
            .color(&color)
            .pos(Pos::new(h, v));
        root.draw(&Text::new(s.to_string(), (x, y), style))
            .map_err(derr)?;
        return Ok(());
    }
    let font = glyph_font()?;
    let scale = em_scale(font, em_px);
    let sf = font.as_scaled(scale);
    let w = text_w(s, em_px) as f32;
    let mut pen = match h {
        HPos::Left => x as f32,
        HPos::Center => x as f32 - w / 2.0,
        HPos::Right => x as f32 - w,
    };
    let cap = CAP_HEIGHT_EM * em_px;
    let baseline = match v {
        VPos::Top => y as f32 + cap,
        VPos::Center => y as f32 + cap / 2.0,
        VPos::Bottom => y as f32,
    };
    let mut pixels: Vec<(i32, i32, f32)> = Vec::new();
    let mut prev = None;
    for ch in s.chars() {
        let id = sf.glyph_id(ch);
        if let Some(p) = prev {
            pen += sf.kern(p, id);
        }
        let glyph = id.with_scale_and_position(scale, ab_glyph::point(pen, baseline));
        if let Some(outline) = font.outline_glyph(glyph) {
            let b = outline.px_bounds();
            outline.draw(|gx, gy, c| {
                if c > 0.0 {
                    pixels.push((
                        b.min.x as i32 + gx as i32,
                        b.min.y as i32 + gy as i32,
                        c.min(1.0),
                    ));
                }
            });
        }
        pen += sf.h_advance(id);
        prev = Some(id);
    }
    for (px, py, c) in pixels {
        root.draw_pixel((px, py), &color.mix(c as f64))
            .map_err(derr)?;
    }
    Ok(())
}

fn layout(c: &HBarChart) -> Layout {
    let label_w = c
        .rows
        .iter()
        .map(|(l, _)| text_w(l, LABEL_EM))
        .max()
        .unwrap_or(0)
        .max(60)
        + 24;
    // Legend: square + gap + name, items separated by 28 px, wrapped to the chart width.
    let avail = CHART_WIDTH as i32 - 2 * SIDE_PAD;
    let mut lines: Vec<Vec<(usize, i32)>> = vec![Vec::new()];
    let mut x = 0;
    for (i, s) in c.series.iter().enumerate() {
        let w = 14 + 6 + text_w(&s.name, LABEL_EM) as i32;
        if x > 0 && x + w > avail {
            lines.push(Vec::new());
            x = 0;
        }
        lines.last_mut().expect("one line").push((i, x));
        x += w + 28;
    }
    let header_h = legend_top() as u32 + lines.len() as u32 * LEGEND_LINE_PX + 10;
    let row_h = c.series.len().max(1) as u32 * BAR_PX + ROW_GAP_PX;
    let height = header_h + PLOT_TOP_PX + c.rows.len().max(1) as u32 * row_h + X_AXIS_PX;
    let vmax = c
        .rows
        .iter()
        .flat_map(|(_, vs)| vs.iter().flatten().copied())
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max);
    // Rates: 0.1 steps up to 1.0. Anything larger: a 1-2-5 step giving about 10 ticks.
    let tick_step = if vmax <= 1.0 {
        0.1
    } else {
        let raw = vmax / 10.0;
        let mag = 10f64.powf(raw.log10().floor());
        [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * mag)
    };
    let tick_max = (vmax / tick_step - 1e-9).ceil() * tick_step;
    Layout {
        height,
        label_w,
        legend_lines: lines,
        header_h,
        xmax: tick_max * 1.1,
        tick_max,
        tick_step,
    }
}

const TITLE_EM: f32 = 19.0;
const SUBTITLE_EM: f32 = 12.5;
const LABEL_EM: f32 = 13.0;
const VALUE_EM: f32 = 11.5;
const TICK_EM: f32 = 12.0;
const BAR_PX: u32 = 17;
const ROW_GAP_PX: u32 = 14;
const SIDE_PAD: i32 = 20;
const LEGEND_LINE_PX: u32 = 22;
const PLOT_TOP_PX: u32 = 10;
const X_AXIS_PX: u32 = 56;
const TITLE_TOP: i32 = 14;

fn subtitle_top() -> i32 {
    TITLE_TOP + TITLE_EM as i32 + 10
}

fn legend_top() -> i32 {
    subtitle_top() + SUBTITLE_EM as i32 + 16
}

fn derr<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("drawing failed: {e}")
}

fn draw_hbar<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    mode: TextMode,
    c: &HBarChart,
    l: &Layout,
) -> Result<()> {
    root.fill(&WHITE).map_err(derr)?;
    let w = CHART_WIDTH as i32;
    let (top, center, left, right) = (VPos::Top, VPos::Center, HPos::Left, HPos::Right);
    // Title, subtitle, legend.
    draw_text(
        root,
        mode,
        &c.title,
        (w / 2, TITLE_TOP),
        TITLE_EM,
        TEXT,
        HPos::Center,
        top,
    )?;
    draw_text(
        root,
        mode,
        &c.subtitle,
        (w / 2, subtitle_top()),
        SUBTITLE_EM,
        MUTED,
        HPos::Center,
        top,
    )?;
    let mut y_leg = legend_top();
    for line in &l.legend_lines {
        let line_w = line
            .last()
            .map(|&(i, x)| x + 20 + text_w(&c.series[i].name, LABEL_EM) as i32)
            .unwrap_or(0);
        let x0 = (w - line_w) / 2;
        for &(i, x) in line {
            let s = &c.series[i];
            root.draw(&Rectangle::new(
                [(x0 + x, y_leg), (x0 + x + 14, y_leg + 14)],
                s.color.filled(),
            ))
            .map_err(derr)?;
            draw_text(
                root,
                mode,
                &s.name,
                (x0 + x + 20, y_leg + 7),
                LABEL_EM,
                TEXT,
                left,
                center,
            )?;
        }
        y_leg += LEGEND_LINE_PX as i32;
    }

    // Plot area: ChartBuilder gives the coordinate mapping; grid, axes and labels are drawn here.
    let n = c.rows.len().max(1);
    let area = root.margin(l.header_h, 0, SIDE_PAD as u32, SIDE_PAD as u32 + 10);
    let chart = ChartBuilder::on(&area)
        .margin_top(PLOT_TOP_PX)
        .x_label_area_size(X_AXIS_PX)
        .y_label_area_size(l.label_w)
        .build_cartesian_2d(0f64..l.xmax, 0f64..n as f64)
        .map_err(derr)?;
    let plot = chart.plotting_area();
    let ticks: Vec<f64> = (0..)
        .map(|i| i as f64 * l.tick_step)
        .take_while(|t| *t <= l.tick_max + l.tick_step * 1e-6)
        .collect();
    for &t in &ticks {
        plot.draw(&PathElement::new(vec![(t, 0.0), (t, n as f64)], GRID))
            .map_err(derr)?;
    }
    let (x_axis0, y_axis0) = chart.backend_coord(&(0.0, 0.0));
    let (x_axis1, y_axis1) = chart.backend_coord(&(l.xmax, n as f64));
    root.draw(&PathElement::new(
        vec![(x_axis0, y_axis1), (x_axis0, y_axis0), (x_axis1, y_axis0)],
        MUTED,
    ))
    .map_err(derr)?;
    let digits = if l.tick_step < 1.0 { 1 } else { 0 };
    for &t in &ticks {
        let (tx, ty) = chart.backend_coord(&(t, 0.0));
        root.draw(&PathElement::new(vec![(tx, ty), (tx, ty + 5)], MUTED))
            .map_err(derr)?;
        draw_text(
            root,
            mode,
            &format!("{t:.digits$}"),
            (tx, ty + 9),
            TICK_EM,
            TEXT,
            HPos::Center,
            top,
        )?;
    }
    let (cx, _) = chart.backend_coord(&(l.tick_max / 2.0, 0.0));
    draw_text(
        root,
        mode,
        &c.x_desc,
        (cx, y_axis0 + 32),
        LABEL_EM,
        TEXT,
        HPos::Center,
        top,
    )?;

    let k = c.series.len().max(1) as f64;
    let pad = ROW_GAP_PX as f64 / 2.0 / (k * BAR_PX as f64 + ROW_GAP_PX as f64);
    let bar = (1.0 - 2.0 * pad) / k;
    for (r, (label, values)) in c.rows.iter().enumerate() {
        // Row 0 at the top.
        let row_top = (n - r) as f64;
        let (px, py) = chart.backend_coord(&(0.0, row_top - 0.5));
        draw_text(
            root,
            mode,
            label,
            (px - 10, py),
            LABEL_EM,
            TEXT,
            right,
            center,
        )?;
        for (j, v) in values.iter().enumerate() {
            let color = c.series.get(j).map(|s| s.color).unwrap_or(MUTED);
            let y1 = row_top - pad - j as f64 * bar;
            let y0 = y1 - bar;
            let (vx, vy) = chart.backend_coord(&(0.0, (y0 + y1) / 2.0));
            match v {
                Some(v) if v.is_finite() => {
                    let v = v.max(0.0);
                    plot.draw(&Rectangle::new(
                        [(0.0, y0 + bar * 0.06), (v, y1 - bar * 0.06)],
                        color.filled(),
                    ))
                    .map_err(derr)?;
                    let (ex, _) = chart.backend_coord(&(v, 0.0));
                    draw_text(
                        root,
                        mode,
                        &format!("{v:.3}"),
                        (ex + 5, vy),
                        VALUE_EM,
                        TEXT,
                        left,
                        center,
                    )?;
                }
                _ => draw_text(
                    root,
                    mode,
                    "n/a",
                    (vx + 5, vy),
                    VALUE_EM,
                    MUTED,
                    left,
                    center,
                )?,
            }
        }
    }
    root.present().map_err(derr)?;
    Ok(())
}

/// Writes `<stem>.svg` and `<stem>.png` into `out`.
fn write_chart(out: &Path, stem: &str, c: &HBarChart, written: &mut Vec<PathBuf>) -> Result<()> {
    let l = layout(c);
    let svg_path = out.join(format!("{stem}.svg"));
    let png_path = out.join(format!("{stem}.png"));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (CHART_WIDTH, l.height)).into_drawing_area();
        draw_hbar(&root, TextMode::Svg, c, &l)
            .with_context(|| format!("chart {}", svg_path.display()))?;
    }
    std::fs::write(&svg_path, svg)
        .with_context(|| format!("cannot write {}", svg_path.display()))?;
    {
        let root = BitMapBackend::new(&png_path, (CHART_WIDTH, l.height)).into_drawing_area();
        draw_hbar(&root, TextMode::Raster, c, &l)
            .with_context(|| format!("chart {}", png_path.display()))?;
    }
    written.push(svg_path);
    written.push(png_path);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Charts from reports

fn string_chart(name: &str, report: &Value) -> Option<HBarChart> {
    let mut fields = string_fields(report);
    if fields.is_empty() {
        return None;
    }
    fields.sort_by(|a, b| b.2.unwrap_or(-1.0).total_cmp(&a.2.unwrap_or(-1.0)));
    // The salary parts are counted only under the reference's skills condition, so counts can
    // differ between fields: then each row shows its own.
    let first = fields[0].3;
    let same_count = fields.iter().all(|f| f.3 == first);
    let subtitle = match first {
        Some(n) if same_count => format!(
            "Reference metric (SPEC §4.6), n={} per field; sorted by accuracy rate",
            fmt_count(n)
        ),
        _ => "Reference metric (SPEC §4.6); sorted by accuracy rate".to_string(),
    };
    Some(HBarChart {
        title: format!("{name}: string field metrics"),
        subtitle,
        x_desc: "Score (0-1)".to_string(),
        series: vec![
            Series {
                name: "Presence rate".into(),
                color: BLUE,
            },
            Series {
                name: "Accuracy rate".into(),
                color: GREEN,
            },
        ],
        rows: fields
            .into_iter()
            .map(|(f, p, a, cnt)| {
                let label = match cnt {
                    Some(c) if !same_count => format!("{f} (n={})", fmt_count(c)),
                    _ => f,
                };
                (label, vec![p, a])
            })
            .collect(),
    })
}

fn list_chart(name: &str, report: &Value) -> Option<HBarChart> {
    let mut fields = list_fields(report);
    if fields.is_empty() {
        return None;
    }
    fields.sort_by(|a, b| b.3.unwrap_or(-1.0).total_cmp(&a.3.unwrap_or(-1.0)));
    Some(HBarChart {
        title: format!("{name}: list field metrics"),
        subtitle: "Reference metric (SPEC §4.6): means over the n records where either side is non-empty; sorted by F1".into(),
        x_desc: "Score (0-1)".to_string(),
        series: vec![
            Series { name: "Precision".into(), color: BLUE },
            Series { name: "Recall".into(), color: GREEN },
            Series { name: "F1".into(), color: RED_ },
        ],
        rows: fields
            .into_iter()
            .map(|(f, p, r, f1, cnt)| {
                let label = match cnt {
                    Some(c) => format!("{f} (n={})", fmt_count(c)),
                    None => f,
                };
                (label, vec![p, r, f1])
            })
            .collect(),
    })
}

fn run_series(reports: &[(String, Value)]) -> Vec<Series> {
    reports
        .iter()
        .enumerate()
        .map(|(i, (name, _))| Series {
            name: name.clone(),
            color: RUN_COLORS[i % RUN_COLORS.len()],
        })
        .collect()
}

fn overall_chart(reports: &[(String, Value)]) -> HBarChart {
    let mut rows: Vec<(String, Vec<Option<f64>>)> = vec![
        (
            "Mean F1 (reference)".to_string(),
            reports
                .iter()
                .map(|(_, r)| num_at(r, &["overall", "mean_f1_score"]))
                .collect(),
        ),
        (
            "Parse rate (reference)".to_string(),
            reports
                .iter()
                .map(|(_, r)| num_at(r, &["overall", "parse_rate"]))
                .collect(),
        ),
    ];
    for (label, path) in STRICTER_CHARTED {
        let vals: Vec<Option<f64>> = reports.iter().map(|(_, r)| stricter_num(r, path)).collect();
        if vals.iter().any(Option::is_some) {
            rows.push((label.to_string(), vals));
        }
    }
    let subtitle = if rows.len() > 2 {
        "Reference metrics (SPEC §4.6) and jobx stricter metrics (docs/METRICS.md); higher is better"
    } else {
        "Reference metrics (SPEC §4.6); higher is better"
    };
    HBarChart {
        title: "Overall metrics by run".to_string(),
        subtitle: subtitle.into(),
        x_desc: "Score (0-1)".to_string(),
        series: run_series(reports),
        rows,
    }
}

fn comparison_chart(
    reports: &[(String, Value)],
    key: &str,
    metric: &str,
    title: &str,
) -> Option<HBarChart> {
    let fields = union_fields(reports, key);
    if fields.is_empty() {
        return None;
    }
    Some(HBarChart {
        title: title.to_string(),
        subtitle: format!("Reference metric {metric} per field (SPEC §4.6)"),
        x_desc: "Score (0-1)".to_string(),
        series: run_series(reports),
        rows: fields
            .iter()
            .map(|f| {
                (
                    f.clone(),
                    reports
                        .iter()
                        .map(|(_, r)| num_at(r, &[key, f, metric]))
                        .collect(),
                )
            })
            .collect(),
    })
}

// ---------------------------------------------------------------------------------------------
// Index pages

fn fmt_count(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn fmt_rate(v: Option<f64>) -> String {
    match v {
        Some(v) => format!("{v:.4}"),
        None => "–".to_string(),
    }
}

fn fmt_opt_count(v: Option<f64>) -> String {
    v.map(fmt_count).unwrap_or_else(|| "–".to_string())
}

fn fmt_json_scalar(v: &Value) -> String {
    match v {
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => {
                let s = format!("{f:.4}");
                let s = s.trim_end_matches('0').trim_end_matches('.');
                s.to_string()
            }
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

/// Scalar leaves of a JSON object as `(dotted.path, text)` (for the `jobx.speed` section).
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>, depth: usize) {
    match v {
        Value::Object(m) if depth < 6 => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, x, out, depth + 1);
            }
        }
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) && a.len() <= 16 => {
            out.push((
                prefix.to_string(),
                a.iter().map(fmt_json_scalar).collect::<Vec<_>>().join(", "),
            ))
        }
        Value::Object(_) | Value::Array(_) => out.push((prefix.to_string(), "…".to_string())),
        _ => out.push((prefix.to_string(), fmt_json_scalar(v))),
    }
}

/// One table: header and rows of plain text cells.
struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn html(&self, s: &mut String) {
        s.push_str("<table>\n<thead><tr>");
        for h in &self.head {
            let _ = write!(s, "<th>{}</th>", html_esc(h));
        }
        s.push_str("</tr></thead>\n<tbody>\n");
        for r in &self.rows {
            s.push_str("<tr>");
            for (i, c) in r.iter().enumerate() {
                let cls = if i > 0 && looks_numeric(c) {
                    " class=\"n\""
                } else {
                    ""
                };
                let _ = write!(s, "<td{cls}>{}</td>", html_esc(c));
            }
            s.push_str("</tr>\n");
        }
        s.push_str("</tbody>\n</table>\n");
    }

    fn md(&self, s: &mut String) {
        let row = |cells: &[String]| {
            format!(
                "| {} |\n",
                cells
                    .iter()
                    .map(|c| md_esc(c))
                    .collect::<Vec<_>>()
                    .join(" | ")
            )
        };
        s.push_str(&row(&self.head));
        let _ = writeln!(
            s,
            "|{}|",
            self.head
                .iter()
                .enumerate()
                .map(|(i, _)| {
                    let numeric = self
                        .rows
                        .iter()
                        .all(|r| r.get(i).is_some_and(|c| looks_numeric(c)));
                    if i > 0 && numeric && !self.rows.is_empty() {
                        "---:"
                    } else {
                        "---"
                    }
                })
                .collect::<Vec<_>>()
                .join("|")
        );
        for r in &self.rows {
            s.push_str(&row(r));
        }
        s.push('\n');
    }
}

fn looks_numeric(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '–' | 'e' | '+'))
}

fn html_esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

fn md_esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '|' | '\\' | '*' | '`' | '[' | ']' | '<' | '>' => {
                o.push('\\');
                o.push(c);
            }
            '\n' => o.push(' '),
            _ => o.push(c),
        }
    }
    o
}

/// A section of the index: a heading, optional text, tables and charts.
struct Section {
    level: u8,
    id: String,
    title: String,
    text: Vec<String>,
    tables: Vec<(String, Table)>,
    charts: Vec<(String, String)>, // (file stem, caption)
}

fn overall_table(reports: &[(String, Value)]) -> Table {
    let head: Vec<String> = [
        "Run",
        "Family",
        "Records",
        "Parsed",
        "Parse rate",
        "Mean F1",
        "List micro F1 (stricter)",
        "String acc. excl. both-empty (stricter)",
        "Schema-valid (stricter)",
        "Raw parse (stricter)",
        "Truncated (stricter)",
        "Mean F1 untruncated (stricter)",
        "Input errors",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|(name, r)| {
            let errors: Option<f64> = r
                .pointer("/jobx/input_errors")
                .and_then(Value::as_object)
                .map(|m| m.values().filter_map(Value::as_f64).sum());
            vec![
                name.clone(),
                str_at(r, &["jobx", "family"]).unwrap_or("–").to_string(),
                fmt_opt_count(num_at(r, &["overall", "total_samples"])),
                fmt_opt_count(num_at(r, &["overall", "successful_parses"])),
                fmt_rate(num_at(r, &["overall", "parse_rate"])),
                fmt_rate(num_at(r, &["overall", "mean_f1_score"])),
                fmt_rate(stricter_num(r, STRICTER_CHARTED[0].1)),
                fmt_rate(stricter_num(r, STRICTER_CHARTED[1].1)),
                fmt_rate(stricter_num(r, STRICTER_CHARTED[2].1)),
                fmt_rate(stricter_num(r, STRICTER_CHARTED[3].1)),
                fmt_rate(stricter_num(
                    r,
                    &["stricter", "truncation", "result", "rate"],
                )),
                fmt_rate(stricter_num(
                    r,
                    &["stricter", "reference_untruncated_only", "mean_f1_score"],
                )),
                fmt_opt_count(errors),
            ]
        })
        .collect();
    // Drop stricter columns that no run has.
    let keep: Vec<bool> = (0..head.len())
        .map(|c| !(6..=11).contains(&c) || rows.iter().any(|r| r[c] != "–"))
        .collect();
    let filter = |v: Vec<String>| -> Vec<String> {
        v.into_iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(x, _)| x)
            .collect()
    };
    Table {
        head: filter(head),
        rows: rows.into_iter().map(filter).collect(),
    }
}

fn render_html(sections: &[Section], runs: usize) -> String {
    let mut s = String::new();
    s.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>jobx-engine evaluation report</title>\n<style>\n\
         body{font-family:sans-serif;max-width:1160px;margin:2em auto;padding:0 1em;color:#222}\n\
         table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em}\n\
         th,td{border:1px solid #ccc;padding:0.25em 0.6em}th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}\n\
         figure{margin:1em 0 2em}figure img{max-width:100%;border:1px solid #ddd}figcaption{color:#555;font-size:0.9em}\n\
         </style>\n</head>\n<body>\n<h1>jobx-engine evaluation report</h1>\n",
    );
    let _ = writeln!(
        s,
        "<p>{runs} run(s). Reference metrics as in JobExtractX (SPEC §4.6); stricter metrics as in \
         docs/METRICS.md. Each chart is given as PNG (shown) and SVG.</p>"
    );
    s.push_str("<ul>\n");
    for sec in sections {
        let _ = writeln!(
            s,
            "<li><a href=\"#{}\">{}</a></li>",
            html_esc(&sec.id),
            html_esc(&sec.title)
        );
    }
    s.push_str("</ul>\n");
    for sec in sections {
        let h = if sec.level <= 2 { "h2" } else { "h3" };
        let _ = writeln!(
            s,
            "<{h} id=\"{}\">{}</{h}>",
            html_esc(&sec.id),
            html_esc(&sec.title)
        );
        for t in &sec.text {
            let _ = writeln!(s, "<p>{}</p>", html_esc(t));
        }
        for (cap, t) in &sec.tables {
            if !cap.is_empty() {
                let _ = writeln!(s, "<h3>{}</h3>", html_esc(cap));
            }
            t.html(&mut s);
        }
        for (stem, cap) in &sec.charts {
            let (svg, png) = (
                html_esc(&format!("{stem}.svg")),
                html_esc(&format!("{stem}.png")),
            );
            let _ = writeln!(
                s,
                "<figure><a href=\"{svg}\"><img src=\"{png}\" alt=\"{}\"></a>\n<figcaption>{} \
                 (<a href=\"{png}\">PNG</a>, <a href=\"{svg}\">SVG</a>)</figcaption></figure>",
                html_esc(cap),
                html_esc(cap)
            );
        }
    }
    s.push_str("</body>\n</html>\n");
    s
}

fn render_md(sections: &[Section], runs: usize) -> String {
    let mut s = String::from("# jobx-engine evaluation report\n\n");
    let _ = writeln!(
        s,
        "{runs} run(s). Reference metrics as in JobExtractX (SPEC §4.6); stricter metrics as in \
         docs/METRICS.md. Each chart is given as PNG (shown) and SVG.\n"
    );
    for sec in sections {
        let hashes = if sec.level <= 2 { "##" } else { "###" };
        let _ = writeln!(s, "{hashes} {}\n", md_esc(&sec.title));
        for t in &sec.text {
            let _ = writeln!(s, "{}\n", md_esc(t));
        }
        for (cap, t) in &sec.tables {
            if !cap.is_empty() {
                let _ = writeln!(s, "**{}**\n", md_esc(cap));
            }
            t.md(&mut s);
        }
        for (stem, cap) in &sec.charts {
            let _ = writeln!(
                s,
                "![{}]({stem}.png)\n\n{} ([PNG]({stem}.png), [SVG]({stem}.svg))\n",
                md_esc(cap),
                md_esc(cap)
            );
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Entry point

/// Draws the charts for `reports` (run name, report JSON) into `out` (created if missing) and
/// writes `index.html` and `index.md`. Returns every file written.
pub fn render_reports(reports: &[(String, Value)], out: &Path) -> Result<Vec<PathBuf>> {
    if reports.is_empty() {
        bail!("no reports to render");
    }
    ensure_font()?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output folder {}", out.display()))?;
    let mut written: Vec<PathBuf> = Vec::new();
    let mut sections: Vec<Section> = Vec::new();

    // Across runs.
    let mut charts = Vec::new();
    write_chart(
        out,
        "overall_comparison",
        &overall_chart(reports),
        &mut written,
    )?;
    charts.push((
        "overall_comparison".to_string(),
        "Overall metrics by run".to_string(),
    ));
    if reports.len() > 1 {
        if let Some(c) = comparison_chart(
            reports,
            "field_metrics",
            "accuracy_rate",
            "String field accuracy rate by run",
        ) {
            write_chart(out, "string_accuracy_comparison", &c, &mut written)?;
            charts.push(("string_accuracy_comparison".into(), c.title.clone()));
        }
        if let Some(c) = comparison_chart(
            reports,
            "list_field_metrics",
            "f1_score",
            "List field F1 by run",
        ) {
            write_chart(out, "list_f1_comparison", &c, &mut written)?;
            charts.push(("list_f1_comparison".into(), c.title.clone()));
        }
    }
    sections.push(Section {
        level: 2,
        id: "overall".into(),
        title: "Overall".into(),
        text: Vec::new(),
        tables: vec![(String::new(), overall_table(reports))],
        charts,
    });

    // Per run.
    let mut slugs: Vec<String> = vec!["overall".into()];
    for (name, r) in reports {
        let sl = unique(&slug(name), &slugs);
        slugs.push(sl.clone());
        let mut text = Vec::new();
        let mut facts = Vec::new();
        if let Some(f) = str_at(r, &["jobx", "file"]) {
            facts.push(format!("File: {f}"));
        }
        if let Some(f) = str_at(r, &["jobx", "format"]) {
            facts.push(format!("format: {f}"));
        }
        if let Some(f) = str_at(r, &["jobx", "family"]) {
            facts.push(format!("family: {f}"));
        }
        if let (Some(n), Some(p)) = (
            num_at(r, &["overall", "total_samples"]),
            num_at(r, &["overall", "successful_parses"]),
        ) {
            facts.push(format!("{} records, {} parsed", fmt_count(n), fmt_count(p)));
        }
        if let Some(v) = num_at(r, &["overall", "mean_f1_score"]) {
            facts.push(format!("mean F1 {v:.4}"));
        }
        if !facts.is_empty() {
            text.push(format!("{}.", facts.join("; ")));
        }
        let mut tables = Vec::new();
        let mut charts = Vec::new();
        let sf = string_fields(r);
        if !sf.is_empty() {
            tables.push((
                "String fields".to_string(),
                Table {
                    head: vec![
                        "Field".into(),
                        "Presence rate".into(),
                        "Accuracy rate".into(),
                        "Count".into(),
                    ],
                    rows: sf
                        .iter()
                        .map(|(f, p, a, c)| {
                            vec![f.clone(), fmt_rate(*p), fmt_rate(*a), fmt_opt_count(*c)]
                        })
                        .collect(),
                },
            ));
        }
        let lf = list_fields(r);
        if !lf.is_empty() {
            tables.push((
                "List fields".to_string(),
                Table {
                    head: vec![
                        "Field".into(),
                        "Precision".into(),
                        "Recall".into(),
                        "F1".into(),
                        "Count".into(),
                    ],
                    rows: lf
                        .iter()
                        .map(|(f, p, rc, f1, c)| {
                            vec![
                                f.clone(),
                                fmt_rate(*p),
                                fmt_rate(*rc),
                                fmt_rate(*f1),
                                fmt_opt_count(*c),
                            ]
                        })
                        .collect(),
                },
            ));
        }
        if let Some(c) = string_chart(name, r) {
            let stem = format!("{sl}_string_fields");
            write_chart(out, &stem, &c, &mut written)?;
            charts.push((stem, c.title.clone()));
        }
        if let Some(c) = list_chart(name, r) {
            let stem = format!("{sl}_list_fields");
            write_chart(out, &stem, &c, &mut written)?;
            charts.push((stem, c.title.clone()));
        }
        if let Some(speed) = r.pointer("/jobx/speed").filter(|v| !v.is_null()) {
            let mut kv = Vec::new();
            flatten("", speed, &mut kv, 0);
            if !kv.is_empty() {
                tables.push((
                    "Speed".to_string(),
                    Table {
                        head: vec!["Measure".into(), "Value".into()],
                        rows: kv.into_iter().map(|(k, v)| vec![k, v]).collect(),
                    },
                ));
            }
        }
        if let Some(Value::Object(errs)) = r.pointer("/jobx/input_errors") {
            if !errs.is_empty() {
                tables.push((
                    "Input errors".to_string(),
                    Table {
                        head: vec!["Reason".into(), "Records".into()],
                        rows: errs
                            .iter()
                            .map(|(k, v)| vec![k.clone(), fmt_json_scalar(v)])
                            .collect(),
                    },
                ));
            }
        }
        sections.push(Section {
            level: 2,
            id: format!("run-{sl}"),
            title: format!("Run {name}"),
            text,
            tables,
            charts,
        });
    }

    let html_path = out.join("index.html");
    std::fs::write(&html_path, render_html(&sections, reports.len()))
        .with_context(|| format!("cannot write {}", html_path.display()))?;
    written.push(html_path);
    let md_path = out.join("index.md");
    std::fs::write(&md_path, render_md(&sections, reports.len()))
        .with_context(|| format!("cannot write {}", md_path.display()))?;
    written.push(md_path);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_unique_names() {
        assert_eq!(slug("flan t5/large"), "flan_t5_large");
        assert_eq!(slug(".."), "run");
        let taken = vec!["a".to_string(), "a_2".to_string()];
        assert_eq!(unique("a", &taken), "a_3");
        assert_eq!(unique("b", &taken), "b");
    }

    #[test]
    fn markdown_and_html_escaping() {
        assert_eq!(html_esc("a<b&\"c\""), "a&lt;b&amp;&quot;c&quot;");
        assert_eq!(md_esc("a|b_c*"), "a\\|b_c\\*");
    }

    #[test]
    fn font_registers() {
        ensure_font().unwrap();
        assert!(text_w("required_minimum_degree", LABEL_EM) > 100);
    }
}
