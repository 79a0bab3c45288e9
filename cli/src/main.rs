//! The `edgeward` command line: check, inspect, test, eval, compile and demo.

mod corpus;
mod demo;
mod eval;
mod report;
mod report_html;

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgeward::{Engine, Policy};

/// An in-process guard for AI inference endpoints.
#[derive(Parser)]
#[command(name = "edgeward", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate a policy (and its rule files); errors name file:line:column.
    Check {
        /// The policy file (YAML or JSON).
        policy: PathBuf,
    },
    /// Inspect requests: corpus JSON Lines or one raw HTTP request; one JSON decision per line.
    Inspect {
        /// Policy file (default: the embedded policy).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Write decision events (the lines a host logs) instead of decisions.
        #[arg(long)]
        events: bool,
        /// Input file, or `-` for stdin.
        #[arg(default_value = "-")]
        input: String,
    },
    /// Run every rule's inline tests.
    Test {
        /// Policy file (default: the embedded policy).
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Detection and false-positive rates on labeled corpora (files or directories).
    Eval {
        /// Policy file (default: the embedded policy).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Write the full result as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Run every route at this paranoia level (1-4) instead of the policy's.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=4))]
        paranoia: Option<u8>,
        /// Write every missed attack and every false positive to this file (JSON Lines:
        /// file, id, category, label, matched rule ids).
        #[arg(long)]
        misses: Option<PathBuf>,
        /// Corpus files (`*.jsonl`) or directories holding them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Compile a policy into a bundle.
    Compile {
        /// Policy file (default: the embedded policy).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Output bundle path.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Inspect a built-in sample of benign chat traffic, attacks and prompt injections.
    Demo,
    /// Summarise decision, settlement and signal events (JSON Lines): decisions by stage,
    /// the costliest principals and clients, block reasons, top rules, latency, signals.
    Report {
        /// Also write the summary as a self-contained HTML page with charts to this file.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The events file.
        events: PathBuf,
    },
    /// Print the JSON Schema of policy documents (or of rule files with --rules).
    Schema {
        /// The rule-file schema instead.
        #[arg(long)]
        rules: bool,
    },
}

fn load_engine(policy: &Option<PathBuf>) -> Result<Engine, String> {
    load_engine_at(policy, None)
}

/// Loads the engine, optionally with every route at one paranoia level (for `eval`).
fn load_engine_at(policy: &Option<PathBuf>, paranoia: Option<u8>) -> Result<Engine, String> {
    let mut p = match policy {
        Some(path) => {
            if path
                .extension()
                .is_some_and(|e| e == "bundle" || e == "ewb")
            {
                if paranoia.is_some() {
                    return Err("--paranoia needs a policy file, not a bundle".into());
                }
                let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                return Engine::from_bundle(&bytes).map_err(|e| e.to_string());
            }
            Policy::from_file(path).map_err(|e| e.to_string())?
        }
        None => Policy::default_policy(),
    };
    if let Some(level) = paranoia {
        p.document.spec.defaults.paranoia = Some(level);
        for r in &mut p.document.spec.routes {
            r.paranoia = Some(level);
        }
    }
    Engine::new(&p).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Check { policy } => check(&policy),
        Cmd::Inspect {
            policy,
            events,
            input,
        } => load_engine(&policy).and_then(|e| inspect(&e, &input, events)),
        Cmd::Test { policy } => load_engine(&policy).and_then(|e| test(&e)),
        Cmd::Eval {
            policy,
            json,
            paranoia,
            misses,
            paths,
        } => load_engine_at(&policy, paranoia).and_then(|e| {
            eval::run(
                &e,
                &paths,
                eval::Outputs {
                    json: json.as_deref(),
                    misses: misses.as_deref(),
                },
            )
        }),
        Cmd::Compile { policy, output } => load_engine(&policy).and_then(|e| {
            let b = e.to_bundle();
            std::fs::write(&output, &b).map_err(|e| format!("{}: {e}", output.display()))?;
            eprintln!(
                "wrote {} ({} bytes, policy hash {})",
                output.display(),
                b.len(),
                edgeward::bundle::policy_hash(e.policy())
            );
            Ok(())
        }),
        Cmd::Demo => demo::run(),
        Cmd::Report { output, events } => report::run(&events, output.as_deref()),
        Cmd::Schema { rules } => {
            if rules {
                print!("{}", edgeward::policy::rules_json_schema());
            } else {
                print!("{}", edgeward::policy::policy_json_schema());
            }
            Ok(())
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &PathBuf) -> Result<(), String> {
    let p = Policy::from_file(path).map_err(|e| e.to_string())?;
    let e = Engine::new(&p).map_err(|e| e.to_string())?;
    let s = e.stats();
    println!(
        "{}: ok ({} rules, {} inline tests, {} routes, {} programs, {} rule groups)",
        path.display(),
        s.rules,
        s.rule_tests,
        s.routes,
        s.programs,
        s.groups
    );
    Ok(())
}

fn test(engine: &Engine) -> Result<(), String> {
    let failures = engine.run_rule_tests();
    let s = engine.stats();
    for f in &failures {
        println!("FAIL {}", f.message);
    }
    println!(
        "{} passed, {} failed",
        s.rule_tests - failures.len(),
        failures.len()
    );
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} rule tests failed", failures.len()))
    }
}

fn inspect(engine: &Engine, input: &str, events: bool) -> Result<(), String> {
    let mut data = Vec::new();
    if input == "-" {
        std::io::stdin()
            .read_to_end(&mut data)
            .map_err(|e| e.to_string())?;
    } else {
        data = std::fs::read(input).map_err(|e| format!("{input}: {e}"))?;
    }
    let mut scratch = engine.new_scratch();
    let out = std::io::stdout();
    let mut out = out.lock();
    let first = data.iter().find(|b| !b.is_ascii_whitespace());
    let (mut n, mut denied, mut bad) = (0usize, 0usize, 0usize);
    if first == Some(&b'{') {
        for (i, line) in data.lines().enumerate() {
            let line = line.map_err(|e| e.to_string())?;
            if line.trim().is_empty() {
                continue;
            }
            let row = match corpus::Row::parse(&line) {
                Ok(r) => r,
                Err(e) => {
                    bad += 1;
                    eprintln!("line {}: skipped: {e}", i + 1);
                    continue;
                }
            };
            let (d, event) = row.with_request(|req| {
                let d = engine.inspect_with(&mut scratch, req);
                let event = events.then(|| engine.event_json(&d, Some(req)));
                (d, event)
            });
            n += 1;
            denied += usize::from(!d.is_allowed());
            if events {
                // A signal that fired on this request: its event comes first, as a host's
                // event sink receives them.
                for h in d.signals.iter().filter(|h| h.fired) {
                    writeln!(out, "{}", engine.signal_event_json(&d, h))
                        .map_err(|e| e.to_string())?;
                }
            }
            let mut v = match event {
                Some(line) => serde_json::from_str(&line).map_err(|e| e.to_string())?,
                None => serde_json::to_value(&d).map_err(|e| e.to_string())?,
            };
            if let Some(m) = v.as_object_mut() {
                m.insert("id".into(), serde_json::Value::String(row.id.clone()));
            }
            writeln!(out, "{v}").map_err(|e| e.to_string())?;
        }
    } else {
        let raw = corpus::RawRequest::parse(&data)?;
        let (d, line) = raw.with_request(|req| {
            let d = engine.inspect_with(&mut scratch, req);
            let line = if events {
                engine.event_json(&d, Some(req))
            } else {
                d.to_json()
            };
            (d, line)
        });
        n = 1;
        denied = usize::from(!d.is_allowed());
        if events {
            for h in d.signals.iter().filter(|h| h.fired) {
                writeln!(out, "{}", engine.signal_event_json(&d, h)).map_err(|e| e.to_string())?;
            }
        }
        writeln!(out, "{line}").map_err(|e| e.to_string())?;
    }
    eprintln!(
        "{n} inspected, {denied} denied, {} allowed{}",
        n - denied,
        if bad > 0 {
            format!(", {bad} unreadable lines skipped")
        } else {
            String::new()
        }
    );
    Ok(())
}
