//! The `edgeward report -o FILE` page: the event summary as one self-contained HTML file
//! with inline CSS and SVG charts drawn here, no scripts and nothing fetched, so it can be
//! mailed or attached to a ticket and opened anywhere. Every string from the events is
//! escaped (principal ids, rule names and signal details come from untrusted input), and a
//! Content-Security-Policy forbids scripts should an escape ever be missed.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::report::{action_counts, percentile, top, usd, Summary};

/// Series colours: five principals, then "other" in grey.
const COLOURS: [&str; 6] = [
    "#2f6db5", "#e07b39", "#3a9a5b", "#c4475a", "#8a63b8", "#a0a0a0",
];
const BAR: &str = "#2f6db5";
const DENY: &str = "#c4475a";

/// Text for HTML element content and attribute values alike.
pub(crate) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// At most `max` characters, with an ellipsis when cut: SVG text does not wrap, so long
/// labels would run into the bars.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut o: String = s.chars().take(max.saturating_sub(1)).collect();
    o.push('…');
    o
}

const CSS: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;
margin:0;background:#f4f5f7;color:#1d2330;font-size:14px}
main{max-width:1180px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:16px;margin:0 0 10px}
.sub{color:#5b6372;margin-bottom:16px}
.tiles{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:18px}
.tile{background:#fff;border-radius:6px;padding:10px 12px;flex:1 1 auto;white-space:nowrap;
box-shadow:0 1px 2px rgba(0,0,0,.08)}
.tile b{display:block;font-size:20px;margin-top:2px}
.tile span{color:#5b6372;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.tile.deny b{color:#c4475a}
.card{background:#fff;border-radius:6px;padding:14px 16px;margin-bottom:16px;
box-shadow:0 1px 2px rgba(0,0,0,.08)}
.row{display:flex;gap:16px;flex-wrap:wrap}
.row>.card{flex:1 1 500px;min-width:0}
svg{display:block;max-width:100%;height:auto}
svg text{font-size:12px;fill:#1d2330}
svg .axis{fill:#5b6372}
svg .grid{stroke:#e3e6eb;stroke-width:1}
svg .base{stroke:#8a92a0;stroke-width:1}
.legend{display:flex;flex-wrap:wrap;gap:6px 18px;margin-top:8px}
.legend span{display:inline-flex;align-items:center;gap:6px;max-width:360px;
overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;flex:none}
.note{color:#5b6372;font-size:12px;margin-top:6px}
table{border-collapse:collapse;width:100%}
th,td{padding:4px 8px;border-bottom:1px solid #e3e6eb;text-align:left;vertical-align:top}
th{font-size:12px;color:#5b6372;font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.t{word-break:break-all}
.empty{color:#8a92a0;font-style:italic}
";

/// The whole page.
pub(crate) fn render(sum: &Summary, source: &str) -> String {
    let mut o = String::with_capacity(64 * 1024);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Edgeward report: {}</title><style>{CSS}</style></head><body><main>\n",
        esc(source)
    );
    header(&mut o, sum, source);
    o.push_str("<section class=\"card\"><h2>Estimated cost over time, top principals</h2>");
    cost_over_time(&mut o, sum);
    o.push_str(
        "</section>\n<div class=\"row\"><section class=\"card\"><h2>Decisions by stage</h2>",
    );
    let stages = top(&sum.by_stage, 20);
    hbars(&mut o, "by-stage", &stages, (110.0, 540.0), |_| BAR);
    o.push_str("</section><section class=\"card\"><h2>Decisions by action</h2>");
    let actions = top(&sum.by_action, 20);
    // Anything but allow (deny, or whatever a host's events call a refusal) in red.
    let refusal = |a: &str| if a == "allow" { BAR } else { DENY };
    hbars(&mut o, "by-action", &actions, (110.0, 540.0), refusal);
    o.push_str("</section></div>\n<section class=\"card\"><h2>Rules that matched most</h2>");
    let rules: Vec<(String, u64)> = top(&sum.rules, 15)
        .into_iter()
        .map(|((id, name, cat), n)| (format!("{id} {name} ({cat})"), n))
        .collect();
    hbars(&mut o, "top-rules", &rules, (430.0, 1100.0), |_| BAR);
    o.push_str("</section>\n<section class=\"card\"><h2>Inspect latency</h2>");
    latency(&mut o, &sum.latency_us);
    o.push_str("</section>\n");
    tables(&mut o, sum);
    o.push_str("</main></body></html>\n");
    o
}

fn tile(o: &mut String, label: &str, value: &str, class: &str) {
    let _ = write!(
        o,
        "<div class=\"tile {class}\"><span>{}</span><b>{}</b></div>",
        esc(label),
        esc(value)
    );
}

/// `2026-11-27 12:00:05.250` (UTC) from milliseconds since the epoch; callers cut what
/// they need.
fn datetime(ms: u64) -> String {
    let t = edgeward::events::rfc3339(ms.saturating_mul(1_000_000));
    format!("{} {}", &t[..10], &t[11..23])
}

fn duration(ms: u64) -> String {
    let s = ms / 1_000;
    match s {
        0 => format!("{ms} ms"),
        1..=59 => format!("{:.1} s", ms as f64 / 1_000.0),
        60..=3_599 => format!("{} min {} s", s / 60, s % 60),
        3_600..=86_399 => format!("{} h {} min", s / 3_600, (s / 60) % 60),
        _ => format!("{} d {} h", s / 86_400, (s / 3_600) % 24),
    }
}

fn header(o: &mut String, sum: &Summary, source: &str) {
    let _ = write!(
        o,
        "<h1>Edgeward report</h1><div class=\"sub\">{}",
        esc(source)
    );
    if let Some((lo, hi)) = sum.span_ms {
        let _ = write!(
            o,
            " · {} – {} UTC ({})",
            &datetime(lo)[..19],
            &datetime(hi)[..19],
            duration(hi - lo)
        );
    }
    if sum.skipped > 0 {
        let _ = write!(
            o,
            " · {} lines were not events and were skipped",
            sum.skipped
        );
    }
    o.push_str("</div><div class=\"tiles\">");
    tile(o, "decisions", &sum.decisions.to_string(), "");
    tile(o, "allowed", &sum.allowed.to_string(), "");
    let denied = sum.decisions - sum.allowed;
    let class = if denied > 0 { "deny" } else { "" };
    tile(o, "denied", &denied.to_string(), class);
    tile(o, "settlements", &sum.settlements.to_string(), "");
    tile(o, "signals", &sum.signals.to_string(), "");
    tile(o, "estimated cost", &usd(sum.estimated_total), "");
    tile(o, "used cost", &usd(sum.used_total), "");
    if let Some((lo, hi)) = sum.span_ms {
        tile(o, "time span", &duration(hi - lo), "");
    }
    o.push_str("</div>\n");
}

/// The smallest step of the 1-2-5 series at least `raw` (at least 1).
/// Horizontal grid lines every `step` from 0 to `ymax` across the plot (`x`: left edge
/// and width; `y`: top edge and height), each labelled on the left.
fn grid(
    o: &mut String,
    (left, pw): (f64, f64),
    (top, ph): (f64, f64),
    ymax: f64,
    step: f64,
    label: impl Fn(f64) -> String,
) {
    let mut t = 0.0;
    while t <= ymax + step / 2.0 {
        let yy = top + ph - t / ymax * ph;
        let _ = write!(
            o,
            "<line class=\"grid\" x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\"/>\
             <text class=\"axis\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left + pw,
            left - 6.0,
            yy + 4.0,
            label(t)
        );
        t += step;
    }
}

fn nice_step(raw: f64) -> f64 {
    if raw.is_nan() || raw <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag)
        .max(1.0)
}

/// Dollars with as many decimals as a tick step of `step` micro-dollars needs.
fn dollars(micro: f64, step: f64) -> String {
    let decimals = (6 - step.log10().floor() as i32).clamp(0, 6) as usize;
    format!("${:.decimals$}", micro / 1_000_000.0)
}

/// Bucket widths a reader can name, in milliseconds.
const BUCKETS_MS: [u64; 34] = [
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    15_000,
    20_000,
    30_000,
    60_000,
    120_000,
    300_000,
    600_000,
    900_000,
    1_200_000,
    1_800_000,
    3_600_000,
    7_200_000,
    10_800_000,
    14_400_000,
    21_600_000,
    43_200_000,
    86_400_000,
    172_800_000,
    604_800_000,
    1_209_600_000,
    2_592_000_000,
];

fn bucket_name(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{} s", ms / 1_000),
        60_000..=3_599_999 => format!("{} min", ms / 60_000),
        3_600_000..=86_399_999 => format!("{} h", ms / 3_600_000),
        _ => format!("{} d", ms / 86_400_000),
    }
}

fn cost_over_time(o: &mut String, sum: &Summary) {
    let (Some((lo, hi)), false) = (sum.span_ms, sum.costs.is_empty()) else {
        o.push_str(
            "<svg id=\"cost-over-time\" viewBox=\"0 0 1100 60\" role=\"img\">\
             <text x=\"10\" y=\"34\" class=\"axis\">No admitted requests with a cost \
             estimate and a time.</text></svg>",
        );
        return;
    };
    // At most 60 buckets of a width a reader can name; the span sets how wide. A span beyond
    // years (a stray timestamp) still gets 60 buckets, not thousands.
    let span = hi - lo;
    let width = BUCKETS_MS
        .into_iter()
        .find(|w| span / w < 60)
        .unwrap_or(span / 59 + 1);
    let start = lo / width * width;
    let n = ((hi - start) / width + 1) as usize;

    // The five costliest principals by estimate get a series each; the rest share one, named
    // for what is in it.
    let ranked = sum.principals_by_cost();
    let named: Vec<&str> = ranked
        .iter()
        .filter(|(_, st)| st.estimated > 0)
        .take(5)
        .map(|(p, _)| *p)
        .collect();
    let index: HashMap<&str, usize> = named.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    let other = named.len();
    let mut series = vec![vec![0u64; n]; other + 1];
    let (mut rest_named, mut rest_anonymous) = (false, false);
    for c in &sum.costs {
        let s = match c.principal.as_deref() {
            Some(p) => index.get(p).copied().unwrap_or_else(|| {
                rest_named = true;
                other
            }),
            None => {
                rest_anonymous = true;
                other
            }
        };
        let b = (((c.ms - start) / width) as usize).min(n - 1);
        series[s][b] = series[s][b].saturating_add(c.micro_usd);
    }
    let rest = match (rest_named, rest_anonymous) {
        (true, true) => "other and unidentified",
        (false, true) => "unidentified",
        _ => "other",
    };
    if !(rest_named || rest_anonymous) {
        series.pop();
    }
    let totals: Vec<u64> = series
        .iter()
        .map(|s| s.iter().fold(0u64, |a, v| a.saturating_add(*v)))
        .collect();

    let (w, h) = (1100.0, 340.0);
    let (left, right, top_m, bottom) = (78.0, 16.0, 14.0, 46.0);
    let (pw, ph) = (w - left - right, h - top_m - bottom);
    let mut cum = vec![vec![0u64; n]; series.len() + 1];
    for (s, row) in series.iter().enumerate() {
        for b in 0..n {
            cum[s + 1][b] = cum[s][b].saturating_add(row[b]);
        }
    }
    let peak = cum[series.len()].iter().copied().max().unwrap_or(0) as f64;
    let step = nice_step(peak / 5.0);
    let ymax = ((peak / step).ceil() * step).max(step);
    let bw = pw / n as f64;
    // Bucket `b` spans x(b)..x(b + 1): the areas are drawn as steps, one flat top per bucket,
    // so a lone busy bucket reads as a block rather than a spike between its neighbours.
    let x = |b: usize| left + bw * b as f64;
    let y = |v: u64| top_m + ph - v as f64 / ymax * ph;

    let _ = write!(
        o,
        "<svg id=\"cost-over-time\" viewBox=\"0 0 {w} {h}\" role=\"img\" \
         aria-label=\"Estimated cost over time by principal\">"
    );
    grid(o, (left, pw), (top_m, ph), ymax, step, |t| dollars(t, step));
    for (s, _) in series.iter().enumerate().rev() {
        let mut pts = String::new();
        for (b, v) in cum[s + 1].iter().enumerate() {
            let _ = write!(
                pts,
                "{:.1},{:.1} {:.1},{:.1} ",
                x(b),
                y(*v),
                x(b + 1),
                y(*v)
            );
        }
        for (b, v) in cum[s].iter().enumerate().rev() {
            let _ = write!(
                pts,
                "{:.1},{:.1} {:.1},{:.1} ",
                x(b + 1),
                y(*v),
                x(b),
                y(*v)
            );
        }
        let name = named.get(s).copied().unwrap_or(rest);
        let _ = write!(
            o,
            "<polygon points=\"{}\" fill=\"{}\" fill-opacity=\"0.85\" stroke=\"#fff\" \
             stroke-width=\"0.8\"><title>{}: {}</title></polygon>",
            pts.trim_end(),
            COLOURS[s.min(5)],
            esc(name),
            usd(totals[s])
        );
    }
    let _ = write!(
        o,
        "<line class=\"base\" x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\"/>",
        left + pw,
        top_m + ph,
        top_m + ph
    );
    // Time labels on round times (10:00, 10:20, ...): a tick interval that is a whole number
    // of buckets and gives at most eight labels, so they never touch.
    let tick = BUCKETS_MS
        .into_iter()
        .find(|t| t % width == 0 && (t / width) as usize * 8 >= n)
        .unwrap_or(width * n.div_ceil(8) as u64);
    let fmt = |ms: u64| -> String {
        let d = datetime(ms);
        if span >= 86_400_000 {
            d[5..16].to_string()
        } else if tick < 1_000 {
            d[11..23].to_string()
        } else if tick < 60_000 {
            d[11..19].to_string()
        } else {
            d[11..16].to_string()
        }
    };
    for b in 0..=n {
        let at = start + width * b as u64;
        if at % tick != 0 {
            continue;
        }
        let xx = left + bw * b as f64;
        let anchor = match b {
            0 => "start",
            _ if b == n => "end",
            _ => "middle",
        };
        let _ = write!(
            o,
            "<line class=\"base\" x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/>\
             <text class=\"axis\" x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
            top_m + ph,
            top_m + ph + 5.0,
            top_m + ph + 19.0,
            fmt(at)
        );
    }
    let _ = write!(
        o,
        "<text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">time (UTC), \
         estimated USD of admitted requests per {} bucket</text></svg>",
        left + pw / 2.0,
        h - 6.0,
        bucket_name(width)
    );
    o.push_str("<div class=\"legend\">");
    for (s, total) in totals.iter().enumerate() {
        let name = named.get(s).copied().unwrap_or(rest);
        let _ = write!(
            o,
            "<span title=\"{0}\"><i style=\"background:{1}\"></i>{0} · {2}</span>",
            esc(name),
            COLOURS[s.min(5)],
            usd(*total)
        );
    }
    o.push_str("</div>");
}

/// A horizontal bar chart of counts; `widths` is the label column's and the whole chart's.
fn hbars(
    o: &mut String,
    id: &str,
    rows: &[(String, u64)],
    widths: (f64, f64),
    colour: impl Fn(&str) -> &'static str,
) {
    let (label_w, w) = widths;
    if rows.is_empty() {
        let _ = write!(
            o,
            "<svg id=\"{id}\" viewBox=\"0 0 {w} 40\" role=\"img\">\
             <text x=\"10\" y=\"24\" class=\"axis\">(none)</text></svg>"
        );
        return;
    }
    let (row_h, bar_h, pad) = (24.0, 16.0, 6.0);
    let h = rows.len() as f64 * row_h + 2.0 * pad;
    let max = rows.iter().map(|r| r.1).max().unwrap_or(1).max(1) as f64;
    let bar_max = w - label_w - 70.0;
    // About 6.6 px per character at 12 px: cut labels to the column they have.
    let chars = ((label_w - 10.0) / 6.6) as usize;
    let _ = write!(o, "<svg id=\"{id}\" viewBox=\"0 0 {w} {h}\" role=\"img\">");
    for (i, (label, v)) in rows.iter().enumerate() {
        let y = pad + i as f64 * row_h;
        let bw = (*v as f64 / max * bar_max).max(1.0);
        let colour = colour(label);
        let _ = write!(
            o,
            "<g><title>{}: {}</title>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{label_w}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{bar_h}\" rx=\"2\" \
             fill=\"{colour}\"/>\
             <text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
            esc(label),
            v,
            label_w - 8.0,
            y + 16.0,
            esc(&clip(label, chars)),
            y + (row_h - bar_h) / 2.0,
            label_w + bw + 6.0,
            y + 16.0,
            v
        );
    }
    o.push_str("</svg>");
}

/// Bucket edges of the histogram: 1, 1.5, 2, 3, 5, 7 per decade, about even in log space
/// and still round numbers.
fn log_edges(min: f64, max: f64) -> Vec<f64> {
    const MANTISSAS: [f64; 6] = [1.0, 1.5, 2.0, 3.0, 5.0, 7.0];
    let min = min.max(0.01);
    let mut decade = 10f64.powf(min.log10().floor());
    let mut edges = Vec::new();
    'outer: while decade < 1e12 {
        for m in MANTISSAS {
            let e = m * decade;
            edges.push(e);
            if e > max {
                break 'outer;
            }
        }
        decade *= 10.0;
    }
    // The first bucket starts at the last edge not above `min`.
    let first = edges.iter().rposition(|e| *e <= min).unwrap_or(0);
    edges.drain(..first);
    edges
}

fn us_label(v: f64) -> String {
    if v >= 1e9 {
        // Over a quarter of an hour: not a real inspect time, but keep the label short.
        format!("{v:.1e} µs")
    } else if v >= 1_000_000.0 {
        format!("{} s", trim(v / 1_000_000.0))
    } else if v >= 1_000.0 {
        format!("{} ms", trim(v / 1_000.0))
    } else {
        format!("{} µs", trim(v))
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn latency(o: &mut String, sorted: &[f64]) {
    let values: Vec<f64> = sorted
        .iter()
        .copied()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .collect();
    if values.is_empty() {
        o.push_str(
            "<svg id=\"latency\" viewBox=\"0 0 1100 40\" role=\"img\">\
             <text x=\"10\" y=\"24\" class=\"axis\">No inspect latency recorded.</text></svg>",
        );
        return;
    }
    let (lo, hi) = (values[0], values[values.len() - 1]);
    let mut edges = log_edges(lo, hi);
    if edges.len() < 2 {
        edges = vec![lo.max(0.01), hi.max(lo.max(0.01) * 2.0)];
    }
    let nb = edges.len() - 1;
    let mut counts = vec![0u64; nb];
    for v in &values {
        let b = edges
            .partition_point(|e| e <= v)
            .saturating_sub(1)
            .min(nb - 1);
        counts[b] += 1;
    }
    let (w, h) = (1100.0, 320.0);
    let (left, right, top_m, bottom) = (60.0, 16.0, 50.0, 44.0);
    let (pw, ph) = (w - left - right, h - top_m - bottom);
    let peak = counts.iter().copied().max().unwrap_or(1) as f64;
    let step = nice_step(peak / 4.0);
    let ymax = ((peak / step).ceil() * step).max(step);
    let bw = pw / nb as f64;
    let _ = write!(
        o,
        "<svg id=\"latency\" viewBox=\"0 0 {w} {h}\" role=\"img\" \
         aria-label=\"Inspect latency histogram\">"
    );
    grid(o, (left, pw), (top_m, ph), ymax, step, |t| t.to_string());
    for (b, c) in counts.iter().enumerate() {
        let bh = *c as f64 / ymax * ph;
        let _ = write!(
            o,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{BAR}\">\
             <title>{} – {}: {c}</title></rect>",
            left + b as f64 * bw + 1.0,
            top_m + ph - bh,
            (bw - 2.0).max(1.0),
            us_label(edges[b]),
            us_label(edges[b + 1])
        );
    }
    let _ = write!(
        o,
        "<line class=\"base\" x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\"/>",
        left + pw,
        top_m + ph,
        top_m + ph
    );
    // Edge labels need about 60 px each; skip every other one when buckets are narrower.
    let every = (60.0 / bw).ceil().max(1.0) as usize;
    for (i, e) in edges.iter().enumerate().step_by(every) {
        let xx = left + i as f64 * bw;
        let _ = write!(
            o,
            "<text class=\"axis\" x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            top_m + ph + 18.0,
            us_label(*e)
        );
    }
    // Percentile markers, placed inside their bucket by log position; labels staggered
    // vertically because p90 and p99 often share a bucket.
    let x_of = |v: f64| -> f64 {
        let b = edges
            .partition_point(|e| *e <= v)
            .saturating_sub(1)
            .min(nb - 1);
        let (a, z) = (edges[b].ln(), edges[b + 1].ln());
        let f = ((v.max(edges[0]).ln() - a) / (z - a)).clamp(0.0, 1.0);
        left + (b as f64 + f) * bw
    };
    let marks = [
        ("p50", percentile(&values, 0.5), "#3a9a5b"),
        ("p90", percentile(&values, 0.9), "#e07b39"),
        ("p99", percentile(&values, 0.99), "#c4475a"),
    ];
    for (i, (name, v, colour)) in marks.iter().enumerate() {
        let xx = x_of(*v);
        let ly = 14.0 + i as f64 * 14.0;
        let (lx, anchor) = if xx > left + pw - 140.0 {
            (xx - 4.0, "end")
        } else {
            (xx + 4.0, "start")
        };
        let _ = write!(
            o,
            "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" \
             stroke-width=\"2\" stroke-dasharray=\"5 3\"/>\
             <text x=\"{lx:.1}\" y=\"{ly:.1}\" text-anchor=\"{anchor}\" fill=\"{colour}\" \
             style=\"fill:{colour};font-weight:600\">{name} {}</text>",
            ly - 10.0,
            top_m + ph,
            us_label(*v)
        );
    }
    let _ = write!(
        o,
        "<text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">inspect time \
         (log scale); bars count decisions</text></svg>",
        left + pw / 2.0,
        h - 6.0
    );
    let _ = write!(
        o,
        "<div class=\"note\">{} decisions · p50 {} · p90 {} · p99 {} · max {}</div>",
        values.len(),
        us_label(marks[0].1),
        us_label(marks[1].1),
        us_label(marks[2].1),
        us_label(hi)
    );
}

/// A table; `num` marks the right-aligned numeric columns. Cells are raw text.
fn table(o: &mut String, heads: &[&str], num: &[bool], rows: &[Vec<String>]) {
    if rows.is_empty() {
        o.push_str("<p class=\"empty\">(none)</p>");
        return;
    }
    o.push_str("<table><thead><tr>");
    for (i, h) in heads.iter().enumerate() {
        let c = if num.get(i) == Some(&true) { "n" } else { "" };
        let _ = write!(o, "<th class=\"{c}\">{}</th>", esc(h));
    }
    o.push_str("</tr></thead><tbody>");
    for r in rows {
        o.push_str("<tr>");
        for (i, cell) in r.iter().enumerate() {
            let c = if num.get(i) == Some(&true) { "n" } else { "t" };
            let _ = write!(o, "<td class=\"{c}\">{}</td>", esc(cell));
        }
        o.push_str("</tr>");
    }
    o.push_str("</tbody></table>");
}

fn tables(o: &mut String, sum: &Summary) {
    o.push_str("<div class=\"row\"><section class=\"card\"><h2>Top principals</h2>");
    let rows: Vec<Vec<String>> = sum
        .principals_by_cost()
        .into_iter()
        .take(20)
        .map(|(p, st)| {
            vec![
                p.to_string(),
                st.allowed.to_string(),
                st.denied.to_string(),
                usd(st.estimated),
                usd(st.used),
            ]
        })
        .collect();
    table(
        o,
        &["principal", "allowed", "denied", "estimated", "used"],
        &[false, true, true, true, true],
        &rows,
    );
    o.push_str("</section><section class=\"card\"><h2>Top client addresses</h2>");
    let rows: Vec<Vec<String>> = sum
        .clients_by_cost()
        .into_iter()
        .take(12)
        .map(|(c, st)| vec![c.to_string(), st.decisions.to_string(), usd(st.estimated)])
        .collect();
    table(
        o,
        &["client", "decisions", "estimated"],
        &[false, true, true],
        &rows,
    );
    o.push_str(
        "</section></div>\n<div class=\"row\"><section class=\"card\"><h2>Block reasons</h2>",
    );
    let rows: Vec<Vec<String>> = top(&sum.reasons, 30)
        .into_iter()
        .map(|(r, n)| vec![r, n.to_string()])
        .collect();
    table(o, &["reason", "decisions"], &[false, true], &rows);
    o.push_str("</section><section class=\"card\"><h2>Abuse signals by type</h2>");
    let mut by_signal: HashMap<String, (u64, HashMap<String, u64>)> = HashMap::new();
    for ((signal, _), st) in &sum.signal_rows {
        let e = by_signal.entry(signal.clone()).or_default();
        e.0 += st.events;
        for (a, n) in &st.by_action {
            *e.1.entry(a.clone()).or_default() += n;
        }
    }
    let mut sig: Vec<_> = by_signal.into_iter().collect();
    sig.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
    let rows: Vec<Vec<String>> = sig
        .into_iter()
        .map(|(s, (n, actions))| vec![s, n.to_string(), action_counts(&actions)])
        .collect();
    table(
        o,
        &["signal", "events", "actions"],
        &[false, true, false],
        &rows,
    );
    o.push_str("</section></div>\n<section class=\"card\"><h2>Abuse signals by principal</h2>");
    let mut rows: Vec<_> = sum.signal_rows.iter().collect();
    rows.sort_by(|a, b| b.1.events.cmp(&a.1.events).then_with(|| a.0.cmp(b.0)));
    let num = |v: Option<f64>| v.map_or_else(String::new, trim);
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .take(30)
        .map(|((signal, principal), st)| {
            vec![
                signal.clone(),
                principal.clone(),
                st.events.to_string(),
                action_counts(&st.by_action),
                num(st.max_value),
                num(st.threshold),
                st.last_detail.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        o,
        &[
            "signal",
            "principal",
            "events",
            "actions",
            "max value",
            "threshold",
            "latest detail",
        ],
        &[false, false, true, false, true, true, false],
        &rows,
    );
    o.push_str("</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
    }

    #[test]
    fn steps_and_edges_are_round() {
        assert_eq!(nice_step(0.0), 1.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(1_200.0), 2_000.0);
        assert_eq!(nice_step(50_000.0), 50_000.0);
        assert_eq!(dollars(150_000.0, 50_000.0), "$0.15");
        assert_eq!(dollars(3_000_000.0, 1_000_000.0), "$3");
        let e = log_edges(12.0, 180.0);
        assert_eq!(
            e,
            vec![10.0, 15.0, 20.0, 30.0, 50.0, 70.0, 100.0, 150.0, 200.0]
        );
        assert!(e[0] <= 12.0 && *e.last().unwrap() > 180.0);
    }

    #[test]
    fn clips_long_labels() {
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
    }
}
