//! Shared helpers for the integration tests: the test-vector model and a corpus reader.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use base64::Engine as _;
use edgeward::{Decision, Engine, Request, Scratch};
use serde::Deserialize;

/// The SHA-256 of an API key in hex, as policies list keys.
pub fn key_sha256(key: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A chat-completions request with a JSON body.
pub fn chat(body: &[u8]) -> Request<'_> {
    const H: &[(&[u8], &[u8])] = &[(b"content-type", b"application/json")];
    Request::new(b"POST", b"/v1/chat/completions")
        .with_headers(H)
        .with_body(body)
}

/// A chat-completions body with one user message.
pub fn prompt(content: &str) -> Vec<u8> {
    serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]})
        .to_string()
        .into_bytes()
}

/// The built-in rules with `limits` as the policy's default limits, a chat route and an
/// `/api/*` route without an inference schema.
pub fn engine_with_limits(limits: &str) -> Engine {
    let text = format!(
        "apiVersion: edgeward.dev/v1\nkind: Policy\nmetadata: {{name: t}}\nspec:\n  rules: {{builtin: true}}\n  defaults:\n    limits: {limits}\n  routes:\n    - name: chat\n      match: {{paths: [\"/v1/chat/completions\"]}}\n      schema: openai-chat\n    - name: api\n      match: {{paths: [\"/api/*\"]}}\n"
    );
    Engine::new(&edgeward::Policy::from_text(&text).unwrap()).unwrap()
}

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[derive(Debug, Deserialize)]
pub struct VectorFile {
    pub case: Vec<Case>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub method: String,
    pub uri: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub body_b64: Option<String>,
    pub action: String,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub rules: Vec<u32>,
    #[serde(default)]
    pub not_rules: Vec<u32>,
    #[serde(default)]
    pub route: Option<String>,
}

/// The body of a vector or corpus row: `body_b64` when set, else `body`, else empty.
fn decode_body(b64: &Option<String>, text: &Option<String>) -> Vec<u8> {
    match (b64, text) {
        (Some(b), _) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .expect("valid body_b64"),
        (None, Some(b)) => b.as_bytes().to_vec(),
        (None, None) => Vec::new(),
    }
}

/// Inspects one request given as strings.
fn inspect_parts(
    engine: &Engine,
    scratch: &mut Scratch,
    method: &str,
    uri: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Decision {
    let headers: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
        .collect();
    let req = Request::new(method.as_bytes(), uri.as_bytes())
        .with_headers(&headers)
        .with_body(body);
    engine.inspect_with(scratch, &req)
}

impl Case {
    pub fn body(&self) -> Vec<u8> {
        decode_body(&self.body_b64, &self.body)
    }

    pub fn inspect(&self, engine: &Engine, scratch: &mut Scratch) -> Decision {
        let body = self.body();
        inspect_parts(
            engine,
            scratch,
            &self.method,
            &self.uri,
            &self.headers,
            &body,
        )
    }

    /// Checks a decision against the case; returns a description of every mismatch.
    pub fn check(&self, d: &Decision) -> Vec<String> {
        let mut bad = Vec::new();
        let action = if d.is_allowed() { "allow" } else { "deny" };
        if action != self.action {
            bad.push(format!("action {action}, expected {}", self.action));
        }
        if let Some(s) = self.status {
            if d.status() != Some(s) {
                bad.push(format!("status {:?}, expected {s}", d.status()));
            }
        }
        for r in &self.rules {
            if !d.matched(*r) {
                bad.push(format!("rule {r} did not match"));
            }
        }
        for r in &self.not_rules {
            if d.matched(*r) {
                bad.push(format!("rule {r} matched"));
            }
        }
        if let Some(r) = &self.route {
            if &*d.route != r {
                bad.push(format!("route {}, expected {r}", d.route));
            }
        }
        bad
    }
}

/// Every vector case from `rulesets/tests/*.toml`, with its file name.
pub fn vectors() -> Vec<(String, Case)> {
    let dir = root().join("rulesets/tests");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("rulesets/tests exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let v: VectorFile =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        out.extend(v.case.into_iter().map(|c| (name.clone(), c)));
    }
    out
}

/// One corpus row (see shared/corpora/README.md).
#[derive(Debug, Deserialize)]
pub struct Row {
    pub id: String,
    #[serde(default)]
    pub method: Option<String>,
    pub uri: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub body_b64: Option<String>,
    #[serde(default)]
    pub label: String,
}

impl Row {
    pub fn inspect(&self, engine: &Engine, scratch: &mut Scratch) -> Decision {
        let body = decode_body(&self.body_b64, &self.body);
        let m = self.method.as_deref().unwrap_or("GET");
        inspect_parts(engine, scratch, m, &self.uri, &self.headers, &body)
    }
}

/// The shared corpora directory, if this checkout has it beside it (CI and dev machines do).
pub fn corpora_dir() -> Option<PathBuf> {
    let d = root().join("../shared/corpora");
    d.is_dir().then_some(d)
}

/// The corpus files (`*.jsonl`), sorted; empty without the corpora.
pub fn corpus_files() -> Vec<PathBuf> {
    let Some(dir) = corpora_dir() else {
        return Vec::new();
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
}

/// Up to `per_file` rows from every corpus file, spread evenly over each file.
pub fn corpus_sample(per_file: usize) -> Vec<Row> {
    let mut out = Vec::new();
    for f in corpus_files() {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let step = (lines.len() / per_file.max(1)).max(1);
        for l in lines.iter().step_by(step).take(per_file) {
            if let Ok(r) = serde_json::from_str::<Row>(l) {
                out.push(r);
            }
        }
    }
    out
}
