//! Writes the committed seed corpora, `fuzz/corpus/<target>/`, from the shared test vectors
//! (`rulesets/tests/*.toml`), the default policy and a few hand-made streams:
//!
//!   cargo run -p edgeward-fuzz-targets --example seeds
//!
//! Files are named by content, so running it again only adds what changed.
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use edgeward::{Engine, Policy};
use edgeward_fuzz_targets::encode_request;
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    case: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    method: String,
    uri: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: String,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn write(target: &str, data: &[u8]) {
    let dir = root().join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus folder");
    let mut h = DefaultHasher::new();
    data.hash(&mut h);
    std::fs::write(dir.join(format!("{:016x}", h.finish())), data).expect("seed written");
}

/// A small self-contained policy with a price table and parameter caps.
const SMALL_POLICY: &str = r#"apiVersion: edgeward.dev/v1
kind: Policy
metadata: {name: seed}
spec:
  rules: {builtin: true}
  models:
    - match: ["gpt-4o-mini*"]
      tokenizer: o200k_base
      price: {input: 0.15, cachedInput: 0.075, output: 0.60}
    - match: ["claude-*"]
      tokenizer: {bytesPerToken: 3.5, error: 0.25}
      price: {input: 3, output: 15}
  defaults:
    params: {maxOutputTokens: 1000, defaultOutputTokens: 256, maxN: 2, logprobs: deny}
  routes:
    - name: clamp
      match: {paths: ["/v1/chat/completions"]}
      schema: openai-chat
      params: {onMaxOutput: clamp, logprobs: strip, stream: strip}
    - name: anthropic
      match: {paths: ["/v1/messages"]}
      schema: anthropic-messages
"#;

fn main() {
    let mut dir: Vec<_> = std::fs::read_dir(root().join("rulesets/tests"))
        .expect("rulesets/tests")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    dir.sort();
    for path in dir {
        let text = std::fs::read_to_string(&path).expect("vector file");
        let file: File = toml::from_str(&text).expect("vector file parses");
        for c in file.case {
            let headers: Vec<(&str, &str)> = c
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let req = encode_request(&c.method, &c.uri, &headers, c.body.as_bytes());
            write("inspect", &req);
            write("c_abi", &req);
            let ct = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                .map_or("", |(_, v)| *v);
            if !c.body.is_empty() {
                if ct.contains("json") || c.body.starts_with(['{', '[']) {
                    write("json", c.body.as_bytes());
                }
                if ct.contains("multipart") {
                    write("multipart", format!("{ct}\n{}", c.body).as_bytes());
                }
                if ct.contains("urlencoded") {
                    write("urlencoded", c.body.as_bytes());
                }
                if ct.contains("xml") {
                    write("multipart", format!("text/xml\n{}", c.body).as_bytes());
                }
            }
            if let Some((_, q)) = c.uri.split_once('?') {
                write("urlencoded", q.as_bytes());
            }
        }
    }
    let default = std::fs::read_to_string(root().join("rulesets/policies/default.yaml"))
        .expect("default policy");
    write("policy", default.as_bytes());
    write("policy", SMALL_POLICY.as_bytes());
    let small = Engine::new(&Policy::from_text(SMALL_POLICY).expect("seed policy parses"))
        .expect("seed policy compiles");
    write("bundle", &small.to_bundle());
    write("bundle", &Engine::default_engine().to_bundle());

    // Streams: the provider byte (0 chat, 1 completions, 2 responses, 3 embeddings,
    // 4 anthropic), two cut points, then the stream.
    let streams: [(u8, &str); 4] = [
        (0, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello there\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\ndata: [DONE]\n\n"),
        (0, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"no usage event, \u{e9}t\u{e9} \"}}]}\r\n\r\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"counted\"}}]}\n\n"),
        (2, "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n"),
        (4, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"cache_read_input_tokens\":4,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n"),
    ];
    for (p, s) in streams {
        let mut data = vec![p, 40, 200];
        data.extend_from_slice(s.as_bytes());
        write("sse", &data);
    }
    println!(
        "seeds written under {}",
        root().join("fuzz/corpus").display()
    );
}
