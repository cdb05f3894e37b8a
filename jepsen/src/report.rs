//! `report.html`: a run for a person to read, beside `history.jsonl` and `results.json`.
//!
//! The page is one HTML file with no script and nothing from the network (its two charts are
//! SVG files beside it). It shows the verdict and the run's settings, the operations by
//! outcome and their latencies (p50, p99, max per operation and outcome), two charts
//! (`latency.svg`: each client operation's latency at its invocation; `throughput.svg`:
//! completions per second by outcome) with the fault windows shaded, the faults with the
//! service seen during each, the findings with the checkers' explanations, the lost writes,
//! and each checker's verdict.
//!
//! The verdict, findings and fault windows come from [`Results`] (what the run concluded and
//! `results.json` says); the charts from the history itself.

use crate::history::Op;
use crate::results::{Counts, FaultWindow, Results};
use crate::timeline::{self, Completion, Outcome, Timeline};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

/// The charts' size in pixels; the page shows them at this width.
const CHART_SIZE: (u32, u32) = (1100, 420);

/// The most points the latency chart draws per outcome: beyond it, every n-th operation is
/// drawn (the legend says so), so a long run's SVG stays a few MB and opens quickly.
const POINT_COUNT_MAX: usize = 15_000;

const OK_COLOR: RGBColor = RGBColor(34, 150, 60);
const FAIL_COLOR: RGBColor = RGBColor(214, 40, 40);
const INFO_COLOR: RGBColor = RGBColor(240, 140, 0);
const FAULT_COLOR: RGBColor = RGBColor(110, 110, 190);
/// How opaque a fault's band is: light enough that the points inside show through.
const FAULT_OPACITY: f64 = 0.16;
/// How many fault labels stack before they start again at the top (overlapping faults).
const FAULT_LABEL_ROWS: usize = 3;

/// Writes `results` as `results.json` in `dir`, pretty-printed.
pub fn write_results(dir: &Path, results: &Results) -> io::Result<()> {
    let mut json = serde_json::to_string_pretty(results).map_err(io::Error::other)?;
    json.push('\n');
    fs::write(dir.join("results.json"), json)
}

/// Writes `report.html`, `latency.svg` and `throughput.svg` in `dir` (created if missing)
/// for the run that recorded `ops` and concluded `results`. A malformed history is
/// `InvalidData` (see [`Timeline::of`]).
pub fn write_report(dir: &Path, ops: &[Op], results: &Results) -> io::Result<()> {
    let timeline = Timeline::of(ops)?;
    fs::create_dir_all(dir)?;
    let latency = draw(|svg| latency_chart(svg, &timeline, &results.faults))
        .map_err(|error| io::Error::other(format!("draw latency.svg: {error}")))?;
    fs::write(dir.join("latency.svg"), latency)?;
    let bucket_s = timeline::bucket_s_for(timeline.end_s);
    let throughput = draw(|svg| throughput_chart(svg, &timeline, bucket_s, &results.faults))
        .map_err(|error| io::Error::other(format!("draw throughput.svg: {error}")))?;
    fs::write(dir.join("throughput.svg"), throughput)?;
    fs::write(dir.join("report.html"), html(results, &timeline, bucket_s))
}

type DrawResult = Result<(), DrawingAreaErrorKind<io::Error>>;

/// Runs `chart` on an SVG held in memory and returns the SVG.
fn draw(chart: impl FnOnce(&mut String) -> DrawResult) -> Result<String, String> {
    let mut svg = String::new();
    chart(&mut svg).map_err(|error| error.to_string())?;
    Ok(svg)
}

fn color_of(outcome: Outcome) -> RGBColor {
    match outcome {
        Outcome::Ok => OK_COLOR,
        Outcome::Fail => FAIL_COLOR,
        Outcome::Info => INFO_COLOR,
    }
}

/// The x axis: the run from its start to its last entry (never an empty range).
fn x_range(timeline: &Timeline) -> std::ops::Range<f64> {
    0.0..timeline.end_s.max(0.001)
}

/// One point per client operation, at its invocation and latency, colored by outcome, on a
/// logarithmic latency axis (a timeout is a thousand times a commit: both must show).
fn latency_chart(svg: &mut String, timeline: &Timeline, faults: &[FaultWindow]) -> DrawResult {
    let root = SVGBackend::with_string(svg, CHART_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let latencies = timeline
        .completions
        .iter()
        .map(|c| c.latency_ms)
        .filter(|&ms| ms > 0.0);
    let low_ms = latencies.clone().fold(f64::INFINITY, f64::min);
    let high_ms = latencies.fold(0.0, f64::max);
    // Whole decades, so the axis reads 0.1, 1, 10, 100 ms.
    let (low_ms, high_ms) = if high_ms > 0.0 {
        (
            10f64.powf(low_ms.log10().floor()),
            10f64.powf((high_ms * 1.01).log10().ceil()),
        )
    } else {
        (0.1, 1000.0)
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Latency of each client operation, at its invocation",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range(timeline), (low_ms..high_ms).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("time since the run started (s)")
        .y_desc("latency (ms, log scale)")
        .light_line_style(RGBColor(238, 238, 238))
        .bold_line_style(RGBColor(215, 215, 215))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .y_label_formatter(&|ms| format_number(*ms))
        .draw()?;
    shade_faults(&mut chart, faults, timeline.end_s, (low_ms, high_ms))?;
    for outcome in [Outcome::Ok, Outcome::Fail, Outcome::Info] {
        let of_outcome: Vec<&Completion> = timeline
            .completions
            .iter()
            .filter(|c| c.outcome == outcome)
            .collect();
        let stride = of_outcome.len().div_ceil(POINT_COUNT_MAX).max(1);
        let color = color_of(outcome);
        let label = if stride == 1 {
            format!("{} ({})", outcome.name(), of_outcome.len())
        } else {
            format!(
                "{} ({}, 1 in {stride} drawn)",
                outcome.name(),
                of_outcome.len()
            )
        };
        chart
            .draw_series(of_outcome.iter().step_by(stride).map(|c| {
                Circle::new(
                    (c.invoke_s, c.latency_ms.max(low_ms)),
                    2,
                    color.mix(0.7).filled(),
                )
            }))?
            .label(label)
            .legend(move |(x, y)| Circle::new((x, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()
}

/// Completions per second by outcome, one line each, a point per bucket at its middle.
fn throughput_chart(
    svg: &mut String,
    timeline: &Timeline,
    bucket_s: f64,
    faults: &[FaultWindow],
) -> DrawResult {
    let root = SVGBackend::with_string(svg, CHART_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let buckets = timeline.throughput(bucket_s);
    let high = buckets
        .iter()
        .map(|b| b.ok_per_s.max(b.fail_per_s).max(b.info_per_s))
        .fold(0.0, f64::max);
    // Headroom for the legend and the fault labels.
    let high = if high > 0.0 { high * 1.3 } else { 1.0 };
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Client operations completed per second, in buckets of {}",
                format_duration_s(bucket_s)
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range(timeline), 0.0..high)?;
    chart
        .configure_mesh()
        .x_desc("time since the run started (s)")
        .y_desc("operations per second")
        .light_line_style(RGBColor(238, 238, 238))
        .bold_line_style(RGBColor(215, 215, 215))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .y_label_formatter(&|rate| format_number(*rate))
        .draw()?;
    shade_faults(&mut chart, faults, timeline.end_s, (0.0, high))?;
    for outcome in [Outcome::Ok, Outcome::Fail, Outcome::Info] {
        let color = color_of(outcome);
        let middle_s = |start_s: f64| (start_s + bucket_s / 2.0).min(timeline.end_s);
        chart
            .draw_series(LineSeries::new(
                buckets
                    .iter()
                    .map(|b| (middle_s(b.start_s), b.per_s(outcome))),
                color.stroke_width(2),
            ))?
            .label(outcome.name())
            .legend(move |(x, y)| {
                PathElement::new([(x - 8, y), (x + 8, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()
}

/// A translucent band over each fault's window (to the end of the run when never healed),
/// labelled with its class and targets at its top left; labels of overlapping faults stack.
fn shade_faults<Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    faults: &[FaultWindow],
    end_s: f64,
    (low, high): (f64, f64),
) -> DrawResult {
    chart.draw_series(faults.iter().map(|fault| {
        Rectangle::new(
            [(fault.start_s, low), (fault.stop_s.unwrap_or(end_s), high)],
            FAULT_COLOR.mix(FAULT_OPACITY).filled(),
        )
    }))?;
    let label_style = ("sans-serif", 13).into_font().color(&RGBColor(60, 60, 120));
    let rows = label_rows(faults, end_s);
    chart.draw_series(faults.iter().zip(rows).map(|(fault, row)| {
        EmptyElement::at((fault.start_s, high))
            + Text::new(
                fault_label(fault),
                (4, 4 + 16 * row as i32),
                label_style.clone(),
            )
    }))?;
    Ok(())
}

/// The row of each fault's label: the first row where it starts after the labels and windows
/// already there end, so the labels of overlapping faults do not cover each other (after
/// [`FAULT_LABEL_ROWS`] rows, the first row again).
fn label_rows(faults: &[FaultWindow], end_s: f64) -> Vec<usize> {
    // A label's width in seconds of the x axis, from its length: about 7 px a character on a
    // plot about 1000 px wide.
    let label_s = |label: &str| label.len() as f64 * 7.0 / 1000.0 * end_s;
    let mut row_end_s = [f64::NEG_INFINITY; FAULT_LABEL_ROWS];
    faults
        .iter()
        .map(|fault| {
            let row = (0..FAULT_LABEL_ROWS)
                .find(|&row| row_end_s[row] <= fault.start_s)
                .unwrap_or(0);
            let window_end_s = fault.stop_s.unwrap_or(end_s);
            row_end_s[row] = window_end_s.max(fault.start_s + label_s(&fault_label(fault)));
            row
        })
        .collect()
}

fn fault_label(fault: &FaultWindow) -> String {
    format!("{} {}", fault.class, targets(&fault.targets))
}

fn targets(targets: &[u32]) -> String {
    let names: Vec<String> = targets.iter().map(|node| format!("n{node}")).collect();
    names.join(" ")
}

/// A number for an axis: no trailing zeros, no exponent.
fn format_number(value: f64) -> String {
    if value >= 100.0 || value == value.round() {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn format_duration_s(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{} ms", format_number(seconds * 1000.0))
    } else {
        format!("{} s", format_number(seconds))
    }
}

/// `text` made safe to put between tags or in a quoted attribute.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

const STYLE: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px auto;
       max-width: 1140px; padding: 0 16px; color: #1d1d1f; line-height: 1.4; }
h1 { font-size: 24px; margin: 0 0 12px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.verdict { display: inline-block; padding: 3px 12px; border-radius: 4px; color: white;
           font-weight: 700; letter-spacing: 0.04em; margin-left: 8px; }
.valid { background: #22963c; }
.invalid { background: #d62828; }
table { border-collapse: collapse; font-size: 14px; }
th, td { padding: 4px 10px; text-align: left; border-bottom: 1px solid #e5e5e5;
         vertical-align: top; }
th { background: #f5f5f7; font-weight: 600; }
table.settings th { background: none; color: #555; font-weight: 500; }
td.number, th.number { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #22963c; } .fail { color: #d62828; } .info { color: #c06f00; }
.counts span { margin-right: 20px; font-size: 15px; }
img { display: block; width: 100%; max-width: 1100px; border: 1px solid #e5e5e5; margin: 8px 0; }
.finding { border-left: 4px solid #d62828; background: #fdf3f3; padding: 8px 12px;
           margin: 10px 0; }
.finding .head { font-weight: 600; margin-bottom: 4px; }
.finding pre, ul.lost { white-space: pre-wrap; font-family: ui-monospace, monospace;
                        font-size: 13px; margin: 0; }
.none { color: #666; font-style: italic; }
.note { color: #555; font-size: 13px; }
footer { margin-top: 32px; color: #666; font-size: 13px; }
";

/// The page. Every string from the run goes through [`escape`].
fn html(results: &Results, timeline: &Timeline, bucket_s: f64) -> String {
    let mut page = String::new();
    let (verdict, verdict_class) = if results.valid {
        ("VALID", "valid")
    } else {
        ("ANOMALIES FOUND", "invalid")
    };
    let workload = escape(&results.workload);
    // Writing to a String cannot fail: the results of `write!` are ignored below.
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>Acre jepsen: {workload}: {verdict}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>Acre jepsen run: {workload} <span class=\"verdict {verdict_class}\">{verdict}</span></h1>\n"
    );
    settings(&mut page, results);
    counts(&mut page, &results.counts, timeline);
    let _ = write!(
        page,
        "<h2>Latency</h2>\n<img src=\"latency.svg\" alt=\"latency of each client operation over time\">\n\
         <h2>Throughput</h2>\n<img src=\"throughput.svg\" alt=\"client operations per second over time, \
         in buckets of {}\">\n",
        format_duration_s(bucket_s)
    );
    faults(&mut page, &results.faults);
    findings(&mut page, results);
    lost_writes(&mut page, &results.lost_writes);
    verdicts(&mut page, results);
    page.push_str(
        "<footer>Beside this page: <a href=\"history.jsonl\">history.jsonl</a> (every operation) \
         and <a href=\"results.json\">results.json</a> (these conclusions).</footer>\n\
         </body>\n</html>\n",
    );
    page
}

fn settings(page: &mut String, results: &Results) {
    let nemesis = if results.nemesis.is_empty() {
        "none".to_string()
    } else {
        results.nemesis.join(", ")
    };
    let rows = [
        ("workload", results.workload.clone()),
        ("nemesis", nemesis),
        ("transport", results.transport.clone()),
        ("nodes", results.nodes.to_string()),
        ("seed", results.seed.to_string()),
        (
            "time limit",
            format!("{} s", format_number(results.time_limit_s)),
        ),
    ];
    page.push_str("<table class=\"settings\">\n");
    for (name, value) in rows {
        let _ = writeln!(page, "<tr><th>{name}</th><td>{}</td></tr>", escape(&value));
    }
    page.push_str("</table>\n");
}

fn counts(page: &mut String, counts: &Counts, timeline: &Timeline) {
    let total = counts.ok + counts.fail + counts.info;
    let _ = write!(
        page,
        "<h2>Operations</h2>\n<p class=\"counts\"><span>{total} operations \
         (final reads included) over {} s:</span>\
         <span class=\"ok\">{} ok</span><span class=\"fail\">{} fail</span>\
         <span class=\"info\">{} info (outcome unknown)</span></p>\n",
        format_number(timeline.end_s),
        counts.ok,
        counts.fail,
        counts.info
    );
    latencies(page, &timeline.completions);
}

/// Client operations' latencies by what they did and how they ended.
fn latencies(page: &mut String, completions: &[Completion]) {
    let mut groups: BTreeMap<(&str, Outcome), Vec<f64>> = BTreeMap::new();
    for completion in completions {
        groups
            .entry((completion.f, completion.outcome))
            .or_default()
            .push(completion.latency_ms);
    }
    if groups.is_empty() {
        return;
    }
    page.push_str(
        "<table>\n<tr><th>client operation</th><th>outcome</th><th class=\"number\">count</th>\
         <th class=\"number\">p50 (ms)</th><th class=\"number\">p99 (ms)</th>\
         <th class=\"number\">max (ms)</th></tr>\n",
    );
    for ((f, outcome), mut latencies_ms) in groups {
        latencies_ms.sort_by(f64::total_cmp);
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td class=\"{name}\">{name}</td><td class=\"number\">{}</td>\
             <td class=\"number\">{:.2}</td><td class=\"number\">{:.2}</td>\
             <td class=\"number\">{:.2}</td></tr>",
            escape(f),
            latencies_ms.len(),
            percentile(&latencies_ms, 0.5),
            percentile(&latencies_ms, 0.99),
            latencies_ms[latencies_ms.len() - 1],
            name = outcome.name(),
        );
    }
    page.push_str("</table>\n");
}

/// The nearest-rank percentile `share` (0 to 1] of `sorted`, which is not empty.
fn percentile(sorted: &[f64], share: f64) -> f64 {
    assert!(!sorted.is_empty());
    let rank = (share * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn faults(page: &mut String, faults: &[FaultWindow]) {
    page.push_str("<h2>Faults</h2>\n");
    if faults.is_empty() {
        page.push_str("<p class=\"none\">No faults were injected.</p>\n");
        return;
    }
    page.push_str(
        "<table>\n<tr><th>fault</th><th>targets</th><th>what</th>\
         <th class=\"number\">start (s)</th><th class=\"number\">healed (s)</th>\
         <th class=\"number\">ok</th><th class=\"number\">fail</th><th class=\"number\">info</th>\
         <th class=\"number\">availability</th><th class=\"number\">recovered after</th></tr>\n",
    );
    for fault in faults {
        let healed = match fault.stop_s {
            Some(stop_s) => format!("{stop_s:.3}"),
            None => "never".to_string(),
        };
        let availability = match fault.availability {
            Some(share) => format!("{:.1}%", share * 100.0),
            None => "nothing completed".to_string(),
        };
        let recovered = match (fault.stop_s, fault.recovered_after_s) {
            (_, Some(after_s)) => format!("{:.3} s", after_s),
            (Some(_), None) => "no ok after".to_string(),
            (None, None) => "-".to_string(),
        };
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"number\">{:.3}</td>\
             <td class=\"number\">{healed}</td><td class=\"number ok\">{}</td>\
             <td class=\"number fail\">{}</td><td class=\"number info\">{}</td>\
             <td class=\"number\">{availability}</td><td class=\"number\">{recovered}</td></tr>",
            escape(&fault.class),
            escape(&targets(&fault.targets)),
            escape(&fault.detail),
            fault.start_s,
            fault.during.ok,
            fault.during.fail,
            fault.during.info,
        );
    }
    page.push_str(
        "</table>\n<p class=\"note\">Operations are counted where they completed; availability is ok over \
         everything that completed in the window; recovered after is from the heal to the \
         completion of the first ok operation invoked after it.</p>\n",
    );
}

fn findings(page: &mut String, results: &Results) {
    page.push_str("<h2>Findings</h2>\n");
    if results.findings.is_empty() {
        page.push_str("<p class=\"none\">The checkers found no anomaly.</p>\n");
        return;
    }
    if !results.anomalies.is_empty() {
        page.push_str("<table>\n<tr><th>anomaly</th><th class=\"number\">count</th></tr>\n");
        for (class, count) in &results.anomalies {
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td class=\"number\">{count}</td></tr>",
                escape(class)
            );
        }
        page.push_str("</table>\n");
    }
    for finding in &results.findings {
        let _ = writeln!(
            page,
            "<div class=\"finding\"><div class=\"head\">{} <span class=\"none\">found by {}</span>\
             </div><pre>{}</pre></div>",
            escape(&finding.class),
            escape(&finding.checker),
            escape(&finding.text)
        );
    }
}

fn lost_writes(page: &mut String, lost: &[String]) {
    page.push_str("<h2>Lost writes</h2>\n");
    if lost.is_empty() {
        page.push_str("<p class=\"none\">Every acknowledged write is in the final reads.</p>\n");
        return;
    }
    page.push_str("<ul class=\"lost\">\n");
    for write in lost {
        let _ = writeln!(page, "<li>{}</li>", escape(write));
    }
    page.push_str("</ul>\n");
}

fn verdicts(page: &mut String, results: &Results) {
    page.push_str("<h2>Checkers</h2>\n");
    if results.verdicts.is_empty() {
        page.push_str("<p class=\"none\">No checker ran.</p>\n");
        return;
    }
    page.push_str("<table>\n<tr><th>checker</th><th>verdict</th><th>notes</th></tr>\n");
    for verdict in &results.verdicts {
        let (word, class) = if verdict.valid {
            ("valid", "ok")
        } else {
            ("invalid", "fail")
        };
        let notes: Vec<String> = verdict.notes.iter().map(|note| escape(note)).collect();
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td class=\"{class}\">{word}</td><td>{}</td></tr>",
            escape(&verdict.checker),
            notes.join("<br>")
        );
    }
    page.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Fault, Kind, Process, Value};
    use crate::results::{Finding, Verdict};

    fn op(time_ms: u64, process: Process, kind: Kind, value: Value) -> Op {
        Op {
            index: 0,
            time_ns: time_ms * 1_000_000,
            process,
            kind,
            value,
            error: None,
        }
    }

    /// Two clients write through a kill of n2 from 1 s to 2 s: one operation in flight at the
    /// kill ends `info`, one during it fails, and writes are ok again 50 ms after the heal.
    fn history() -> Vec<Op> {
        let write = || Value::Write { key: 1, value: 2 };
        let kill = || {
            Value::Fault(Fault {
                class: "kill".into(),
                targets: vec![2],
                detail: "SIGKILL of n2".into(),
            })
        };
        let c = Process::Client;
        let mut ops = vec![
            op(0, c(0), Kind::Invoke, write()),
            op(5, c(0), Kind::Ok, write()),
            op(900, c(1), Kind::Invoke, write()),
            op(1000, Process::Nemesis, Kind::Invoke, kill()),
            op(1100, c(0), Kind::Invoke, write()),
            op(1400, c(0), Kind::Fail, write()),
            op(1900, c(1), Kind::Info, write()),
            op(2000, Process::Nemesis, Kind::Ok, kill()),
            op(2010, c(2), Kind::Invoke, write()),
            op(2050, c(2), Kind::Ok, write()),
            op(2500, Process::Final(0), Kind::Invoke, write()),
            op(2510, Process::Final(0), Kind::Ok, write()),
        ];
        for (index, op) in ops.iter_mut().enumerate() {
            op.index = index as u64;
        }
        ops
    }

    fn results(ops: &[Op]) -> Results {
        let timeline = Timeline::of(ops).unwrap();
        Results {
            valid: false,
            workload: "register".into(),
            nemesis: vec!["kill".into()],
            transport: "tcp".into(),
            nodes: 3,
            seed: 42,
            time_limit_s: 2.5,
            counts: timeline.counts,
            anomalies: [("G-single".to_string(), 1)].into(),
            findings: vec![Finding {
                class: "G-single".into(),
                checker: "elle".into(),
                text: "T1 <rw> T2 & T2 <wr> T1: \"a cycle\"".into(),
            }],
            lost_writes: vec!["write 7 to k<1>".into()],
            verdicts: vec![Verdict {
                checker: "elle".into(),
                valid: false,
                notes: vec!["searched <all> cycles".into()],
            }],
            faults: timeline.faults,
        }
    }

    #[test]
    fn a_report_shows_the_charts_the_faults_and_the_escaped_findings() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().join("run");
        let ops = history();
        let results = results(&ops);
        write_report(&dir, &ops, &results).unwrap();
        write_results(&dir, &results).unwrap();

        for chart in ["latency.svg", "throughput.svg"] {
            let svg = fs::read_to_string(dir.join(chart)).unwrap();
            assert!(svg.contains("<svg"), "{chart}: {svg}");
            assert!(svg.trim_end().ends_with("</svg>"), "{chart}");
            // The fault's band is labelled with its class and target.
            assert!(svg.contains("kill n2"), "{chart}: {svg}");
        }
        // One point per client operation; the final read is not one.
        let latency = fs::read_to_string(dir.join("latency.svg")).unwrap();
        assert!(latency.contains("ok (2)"), "{latency}");
        assert!(latency.contains("fail (1)"), "{latency}");
        assert!(latency.contains("info (1)"), "{latency}");

        let page = fs::read_to_string(dir.join("report.html")).unwrap();
        assert!(page.contains("ANOMALIES FOUND"), "{page}");
        assert!(
            page.contains("T1 &lt;rw&gt; T2 &amp; T2 &lt;wr&gt; T1: &quot;a cycle&quot;"),
            "{page}"
        );
        assert!(!page.contains("<rw>"), "{page}");
        assert!(page.contains("write 7 to k&lt;1&gt;"), "{page}");
        assert!(page.contains("searched &lt;all&gt; cycles"), "{page}");
        assert!(page.contains("<img src=\"latency.svg\""), "{page}");
        assert!(page.contains("<img src=\"throughput.svg\""), "{page}");
        // The kill's row: its window, what completed in it, availability and recovery.
        assert!(
            page.contains(
                "<tr><td>kill</td><td>n2</td><td>SIGKILL of n2</td><td class=\"number\">1.000</td>\
                 <td class=\"number\">2.000</td><td class=\"number ok\">0</td>\
                 <td class=\"number fail\">1</td><td class=\"number info\">1</td>\
                 <td class=\"number\">0.0%</td><td class=\"number\">0.050 s</td></tr>"
            ),
            "{page}"
        );
        assert!(!page.contains("<script"), "{page}");

        let json = fs::read_to_string(dir.join("results.json")).unwrap();
        let read: Results = serde_json::from_str(&json).unwrap();
        assert_eq!(read, results);
        assert!(json.contains("\n  \"valid\": false"), "{json}");
    }

    #[test]
    fn a_valid_run_says_so_and_that_nothing_was_found() {
        let dir = tempfile::tempdir().unwrap();
        let ops = history();
        let results = Results {
            valid: true,
            findings: Vec::new(),
            anomalies: Default::default(),
            lost_writes: Vec::new(),
            faults: Vec::new(),
            ..results(&ops)
        };
        write_report(dir.path(), &ops, &results).unwrap();
        let page = fs::read_to_string(dir.path().join("report.html")).unwrap();
        assert!(page.contains("verdict valid\">VALID"), "{page}");
        assert!(!page.contains("ANOMALIES"), "{page}");
        assert!(page.contains("No faults were injected"), "{page}");
        assert!(page.contains("found no anomaly"), "{page}");
        assert!(page.contains("Every acknowledged write"), "{page}");
    }

    #[test]
    fn an_empty_run_still_has_a_report() {
        let dir = tempfile::tempdir().unwrap();
        let results = Results {
            valid: true,
            findings: Vec::new(),
            anomalies: Default::default(),
            lost_writes: Vec::new(),
            verdicts: Vec::new(),
            faults: Vec::new(),
            ..results(&[])
        };
        write_report(dir.path(), &[], &results).unwrap();
        let page = fs::read_to_string(dir.path().join("report.html")).unwrap();
        assert!(page.contains("0 operations"), "{page}");
        assert!(page.contains("No checker ran"), "{page}");
        let latency = fs::read_to_string(dir.path().join("latency.svg")).unwrap();
        assert!(latency.contains("ok (0)"), "{latency}");
    }

    #[test]
    fn a_long_run_draws_every_nth_point_and_says_so() {
        let write = || Value::Write { key: 1, value: 2 };
        let ok_count = 2 * POINT_COUNT_MAX as u64 + 1;
        let mut ops: Vec<Op> = (0..ok_count)
            .flat_map(|n| {
                [
                    op(2 * n, Process::Client(0), Kind::Invoke, write()),
                    op(2 * n + 1, Process::Client(0), Kind::Ok, write()),
                ]
            })
            .collect();
        ops.push(op(2 * ok_count, Process::Client(0), Kind::Invoke, write()));
        ops.push(op(
            2 * ok_count + 1,
            Process::Client(0),
            Kind::Fail,
            write(),
        ));
        for (index, op) in ops.iter_mut().enumerate() {
            op.index = index as u64;
        }
        let dir = tempfile::tempdir().unwrap();
        write_report(dir.path(), &ops, &results(&ops)).unwrap();
        let latency = fs::read_to_string(dir.path().join("latency.svg")).unwrap();
        assert!(
            latency.contains(&format!("ok ({ok_count}, 1 in 3 drawn)")),
            "{}",
            &latency[latency.len() - 2000..]
        );
        assert!(latency.contains("fail (1)"));
        let circles = latency.matches("<circle").count();
        // The drawn points and the legend's three markers.
        let drawn = ok_count.div_ceil(3) as usize + 1;
        assert_eq!(circles, drawn + 3);
    }

    #[test]
    fn latencies_are_summed_up_per_operation_and_outcome() {
        let mut page = String::new();
        let completion = |f, outcome, latency_ms| Completion {
            f,
            outcome,
            invoke_s: 0.0,
            complete_s: latency_ms / 1000.0,
            latency_ms,
        };
        let mut completions: Vec<Completion> = (1..=100)
            .map(|ms| completion("transfer", Outcome::Ok, ms as f64))
            .collect();
        completions.push(completion("transfer", Outcome::Info, 1000.0));
        completions.push(completion("read-balances", Outcome::Ok, 3.0));
        latencies(&mut page, &completions);
        let rows: Vec<&str> = page.lines().filter(|l| l.starts_with("<tr><td>")).collect();
        assert_eq!(rows.len(), 3, "{page}");
        assert!(rows[0].starts_with("<tr><td>read-balances</td>"), "{page}");
        assert!(
            rows[1].contains(">ok</td><td class=\"number\">100</td><td class=\"number\">50.00</td><td class=\"number\">99.00</td><td class=\"number\">100.00<"),
            "{page}"
        );
        assert!(rows[2].contains(">info</td>"), "{page}");
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn labels_of_overlapping_faults_stack() {
        let window = |class: &str, start_s: f64, stop_s: Option<f64>| FaultWindow {
            class: class.into(),
            targets: vec![1],
            detail: String::new(),
            start_s,
            stop_s,
            during: Counts::default(),
            availability: None,
            recovered_after_s: None,
        };
        let faults = [
            window("kill", 1.0, Some(5.0)),
            window("pause", 2.0, Some(3.0)),
            window("partition", 4.0, None),
            // A label is about 0.7 s a character on a 100 s run: the kill's ends at 5.9 s,
            // the pause's at 7.6 s, the clock's at 11.6 s.
            window("clock", 6.0, Some(7.0)),
            window("bitflip", 8.0, Some(9.0)),
            // Every row taken: the first again.
            window("kill", 9.0, Some(10.0)),
        ];
        assert_eq!(label_rows(&faults, 100.0), vec![0, 1, 2, 0, 1, 0]);
    }

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }

    #[test]
    fn axis_numbers_are_short() {
        assert_eq!(format_number(1000.0), "1000");
        assert_eq!(format_number(0.1), "0.1");
        assert_eq!(format_number(2.5), "2.5");
        assert_eq!(format_duration_s(0.1), "100 ms");
        assert_eq!(format_duration_s(2.0), "2 s");
    }
}
