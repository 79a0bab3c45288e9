//! `edgeward report EVENTS -o report.html`: the page's content on a crafted events file,
//! then the page rendered by headless Chromium (screenshot and DOM) to prove it draws
//! without scripts or the network.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HOSTILE: &str = "<script>alert(1)</script>";
const CHROMIUM: &str = "/usr/bin/chromium";

/// The browser: `EDGEWARD_CHROMIUM` where it lives elsewhere (a developer's machine).
fn chromium_path() -> PathBuf {
    std::env::var_os("EDGEWARD_CHROMIUM").map_or_else(|| PathBuf::from(CHROMIUM), PathBuf::from)
}

/// A small deterministic generator: the events must be the same on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.next() as f64 / (1u64 << 31) as f64
    }
}

fn ts(ms: u64) -> String {
    // 2026-11-27T10:00:00Z plus `ms`.
    edgeward::events::rfc3339((1_795_773_600_000 + ms) * 1_000_000)
}

/// What the crafted file holds, for the assertions.
struct Expected {
    decisions: u64,
    allowed: u64,
    settlements: u64,
    signals: u64,
    team_a_estimated: u64,
    estimated: u64,
    used: u64,
}

/// About four hundred lines over two hours: principals with skewed costs (team-a growing
/// over time), denials at several stages with rule matches, settlements, signal events, a
/// hostile principal id and rule name, and lines that are not events.
fn crafted_events() -> (String, Expected) {
    let principals: [(&str, u64, u64); 8] = [
        // id, weight, micro-dollars per request
        ("team-a", 30, 9_000),
        ("team-b", 18, 4_000),
        ("svc-batch", 14, 6_500),
        (HOSTILE, 10, 5_000),
        ("team-c", 10, 2_500),
        ("team-d", 8, 1_500),
        ("team-e", 6, 900),
        ("team-f", 4, 600),
    ];
    let total: u64 = principals.iter().map(|p| p.1).sum();
    let mut r = Lcg(7);
    let mut out = String::new();
    let mut x = Expected {
        decisions: 0,
        allowed: 0,
        settlements: 0,
        signals: 0,
        team_a_estimated: 0,
        estimated: 0,
        used: 0,
    };
    let n = 320u64;
    for i in 0..n {
        let ms = i * 22_500 + r.next() % 1_000;
        let mut pick = r.next() % total;
        let (id, _, base) = *principals
            .iter()
            .find(|p| {
                if pick < p.1 {
                    true
                } else {
                    pick -= p.1;
                    false
                }
            })
            .unwrap();
        let principal = serde_json::json!({"id": id, "tenant": "acme", "source": "api_key"});
        let client = format!("10.0.{}.{}", i % 3, (r.next() % 12) + 1);
        // Log-normal-ish inspect times around 40 µs with a long tail.
        let inspect_us = (20.0 * (1.0 + 3.0 * r.unit().powi(3)) * (1.0 + r.unit())).max(1.0)
            + if i % 53 == 0 { 900.0 } else { 0.0 };
        x.decisions += 1;
        let roll = r.next() % 100;
        let line = if roll < 78 {
            x.allowed += 1;
            // team-a ramps up over the two hours; the others stay flat.
            let ramp = if id == "team-a" { 1 + 4 * i / n } else { 1 };
            let micro = base * ramp + r.next() % 500;
            x.estimated += micro;
            if id == "team-a" {
                x.team_a_estimated += micro;
            }
            if i % 2 == 0 {
                x.settlements += 1;
                let used = micro * (30 + r.next() % 70) / 100;
                x.used += used;
                let s = serde_json::json!({
                    "type": "settlement", "ts": ts(ms + 800), "route": "chat",
                    "principal": principal, "reservation": format!("{i:032x}"),
                    "model": "gpt-4o-mini",
                    "usage": {"prompt_tokens": 120, "output_tokens": 300},
                    "micro_usd": used, "settled": "usage",
                });
                writeln!(out, "{s}").unwrap();
            }
            serde_json::json!({
                "type": "decision", "ts": ts(ms), "route": "chat", "mode": "enforce",
                "principal": principal, "client": client, "action": "allow",
                "stage": "inspect", "score": 0, "scores": {}, "threshold": 5,
                "cost": {"prompt_tokens": 120, "output_tokens_reserved": 1024,
                         "micro_usd": micro, "model": "gpt-4o-mini"},
                "inspect_us": inspect_us,
            })
        } else {
            let (stage, code, matches) = match roll {
                78..=87 => (
                    "inspect",
                    "anomaly_score",
                    serde_json::json!([
                        {"rule": 2001, "name": "sqli-union-select", "category": "sqli",
                         "location": "/messages/0/content", "score": 5},
                        {"rule": 2010, "name": "sqli-context-change", "category": "sqli",
                         "location": "/messages/0/content", "score": 5},
                    ]),
                ),
                88..=92 => (
                    "inspect",
                    "anomaly_score",
                    serde_json::json!([
                        {"rule": 9101, "name": "ignore-previous-instructions",
                         "category": "prompt_injection", "location": "/messages/1/content",
                         "score": 5},
                        {"rule": 9999, "name": "<img src=x onerror=alert(2)>",
                         "category": "prompt_injection", "location": "/messages/1/content",
                         "score": 1},
                    ]),
                ),
                93..=96 => ("limits", "rate_limited", serde_json::json!([])),
                97..=98 => ("params", "model_not_allowed", serde_json::json!([])),
                _ => ("identity", "unknown_key", serde_json::json!([])),
            };
            serde_json::json!({
                "type": "decision", "ts": ts(ms), "route": "chat", "mode": "enforce",
                "principal": principal, "client": client, "action": "deny",
                "status": 403, "reason": {"code": code}, "stage": stage,
                "score": 10, "scores": {}, "threshold": 5, "matches": matches,
                "inspect_us": inspect_us,
            })
        };
        writeln!(out, "{line}").unwrap();
        if i % 9 == 0 {
            let (signal, who, action, value, threshold) = match (i / 9) % 5 {
                0 => ("velocity", "team-a", "flag", 14.0, 10.0),
                1 => ("velocity", "team-a", "tighten", 22.5, 10.0),
                2 => ("duplicates", "svc-batch", "flag", 0.82, 0.6),
                3 => ("refusals", HOSTILE, "deny", 7.0, 5.0),
                _ => ("logprobs", "team-b", "flag", 3.0, 2.0),
            };
            x.signals += 1;
            let s = serde_json::json!({
                "type": "signal", "ts": ts(ms + 300), "signal": signal, "route": "chat",
                "principal": {"id": who, "tenant": "acme"}, "action": action,
                "value": value, "threshold": threshold,
                "detail": format!("{signal} over threshold <b>bold</b> ({value})"),
            });
            writeln!(out, "{s}").unwrap();
        }
        if i == 100 {
            out.push_str("this line is not json\n{\"type\":\"heartbeat\"}\n");
        }
    }
    (out, x)
}

fn usd(micro: u64) -> String {
    format!("${}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

/// A directory of its own under the target directory, so the screenshot stays around to
/// look at after the run.
fn work_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-html");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn report_writes_a_self_contained_html_page() {
    let dir = work_dir();
    let (events, x) = crafted_events();
    let events_path = dir.join("events.jsonl");
    std::fs::write(&events_path, events).unwrap();
    let html_path = dir.join("out.html");
    let o = Command::new(env!("CARGO_BIN_EXE_edgeward"))
        .args(["report", events_path.to_str().unwrap(), "-o"])
        .arg(&html_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The terminal summary still comes, with the signals.
    let denied = x.decisions - x.allowed;
    assert!(
        stdout.starts_with(&format!(
            "{} decisions: {} allowed, {denied} denied; {} settlements; {} signals",
            x.decisions, x.allowed, x.settlements, x.signals
        )),
        "{stdout}"
    );
    assert!(stdout.contains("2 lines were not events"), "{stdout}");
    let costs = format!(
        "{} estimated at admission, {} used when settled",
        usd(x.estimated),
        usd(x.used)
    );
    assert!(stdout.contains(&costs), "{costs} missing:\n{stdout}");
    for want in [
        "Signals:",
        "by signal:",
        "velocity",
        "by principal:",
        "by action:",
    ] {
        assert!(stdout.contains(want), "{want} missing:\n{stdout}");
    }

    let html = std::fs::read_to_string(&html_path).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    // Self-contained: nothing to fetch, no scripts. Markup is checked tag by tag, since
    // escaped data may well say `src=` in text.
    let lower = html.to_ascii_lowercase();
    for banned in ["http://", "https://", "@import", "url("] {
        assert!(!lower.contains(banned), "page contains {banned:?}");
    }
    for tag in tags(&lower) {
        let name = tag.split([' ', '>', '/']).next().unwrap_or("");
        assert!(
            !["script", "link", "img", "iframe", "object", "embed", "image", "use"].contains(&name),
            "tag {tag:?}"
        );
        let attrs = tag.split_ascii_whitespace().skip(1);
        assert!(
            !attrs.clone().any(|a| a.starts_with("src=")
                || a.starts_with("href=")
                || a.starts_with("xlink:href=")
                || (a.starts_with("on") && a.contains('='))),
            "tag {tag:?}"
        );
    }
    for id in [
        "cost-over-time",
        "by-stage",
        "by-action",
        "top-rules",
        "latency",
    ] {
        assert!(html.contains(&format!("<svg id=\"{id}\"")), "no chart {id}");
    }
    // Totals, names and numbers.
    for n in [x.decisions, x.allowed, denied, x.settlements, x.signals] {
        assert!(html.contains(&format!("<b>{n}</b>")), "total {n} missing");
    }
    for want in [
        "team-a",
        "svc-batch",
        "10.0.1.",
        "anomaly_score",
        "rate_limited",
        "2001 sqli-union-select (sqli)",
        "velocity",
        "duplicates",
        "tighten",
        "p50",
        "p99",
        "2026-11-27 10:00:",
        "UTC",
    ] {
        assert!(html.contains(want), "{want} missing");
    }
    for total in [x.estimated, x.used] {
        assert!(html.contains(&usd(total)), "total {} missing", usd(total));
    }
    assert!(
        html.contains(&usd(x.team_a_estimated)),
        "team-a's estimate {} missing",
        usd(x.team_a_estimated)
    );
    // Untrusted text is escaped wherever it lands (legend, tables, chart labels, titles).
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("&lt;img src=x onerror=alert(2)&gt;"));
    assert!(html.contains("&lt;b&gt;bold&lt;/b&gt;"));
    assert!(!html.contains("<b>bold"));

    render_in_chromium(&dir, &html_path);
}

/// The inside of every tag (`svg id="x"`), lowercase input.
fn tags(html: &str) -> Vec<&str> {
    html.split('<')
        .skip(1)
        .map(|t| t.split('>').next().unwrap_or(t))
        .collect()
}

/// Runs `cmd` to success with its output in files, killed after `limit`; its stdout.
fn run_with_timeout(mut cmd: Command, dir: &Path, name: &str, limit: Duration) -> String {
    let stdout = dir.join(format!("{name}.stdout"));
    let stderr = dir.join(format!("{name}.stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("chromium starts");
    let start = Instant::now();
    let ok = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.success();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium ({name}) did not finish in {limit:?}; stderr:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(ok, "chromium ({name}) failed:\n{err}");
    std::fs::read_to_string(&stdout).unwrap_or_default()
}

fn chromium(dir: &Path, profile: &str) -> Command {
    let mut c = Command::new(chromium_path());
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,2400",
    ])
    // A fresh profile each run: nothing cached from an earlier page.
    .arg(format!("--user-data-dir={}", dir.join(profile).display()));
    c
}

fn render_in_chromium(dir: &Path, html: &Path) {
    let browser = chromium_path();
    if !browser.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is missing; CI installs the chromium package",
            browser.display()
        );
        eprintln!(
            "{} is missing: the page was checked but not rendered",
            browser.display()
        );
        return;
    }
    let url = format!("file://{}", html.canonicalize().unwrap().display());
    let limit = Duration::from_secs(60);

    let mut dom = chromium(dir, "profile-dom");
    dom.arg("--dump-dom").arg(&url);
    let dom = run_with_timeout(dom, dir, "dom", limit);
    assert!(
        dom.matches("<svg").count() >= 5,
        "rendered DOM has too few charts:\n{dom}"
    );
    for id in ["cost-over-time", "by-stage", "top-rules", "latency"] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "{id} not rendered");
    }
    assert!(dom.contains("Edgeward report"));
    assert!(!dom.contains("<script"));

    let shot = dir.join("shot.png");
    let mut cmd = chromium(dir, "profile-shot");
    cmd.arg(format!("--screenshot={}", shot.display()))
        .arg(&url);
    run_with_timeout(cmd, dir, "shot", limit);
    assert!(shot.exists(), "no screenshot written");

    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().expect("screenshot is a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("size fits")];
    let info = reader.next_frame(&mut buf).expect("screenshot decodes");
    assert_eq!((info.width, info.height), (1280, 2400));
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected colour type {other:?}"),
    };
    let pixels = buf[..info.buffer_size()].chunks_exact(channels);
    let mut colours = std::collections::HashSet::new();
    let mut bar_pixels = 0usize;
    for p in pixels {
        colours.insert((p[0], p[1], p[2]));
        // The bar colour, #2f6db5: only a painted chart puts it on the page.
        bar_pixels += usize::from((p[0], p[1], p[2]) == (0x2f, 0x6d, 0xb5));
    }
    assert!(
        colours.len() > 50,
        "screenshot looks blank: {} colours",
        colours.len()
    );
    assert!(bar_pixels > 2_000, "only {bar_pixels} bar pixels drawn");
    eprintln!("screenshot: {}", shot.display());
}
