//! What identifying the caller costs per request: an API key, and JWTs signed with HS256,
//! RS256 and ES256, on a small chat request (so the identity stage is a visible share).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use edgeward::{Engine, Policy, Request};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use sha2::{Digest, Sha256};

const SECRET: &str = "bench-secret-of-at-least-thirty-two-bytes";

fn data(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../core/tests/data/identity")
        .join(name);
    std::fs::read_to_string(p).expect("test key material")
}

fn identity(c: &mut Criterion) {
    let hex: String = Sha256::digest(b"sk-bench-key")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let indent = |pem: String| pem.trim_end().replace('\n', "\n                ");
    let policy = format!(
        r#"
apiVersion: edgeward.dev/v1
kind: Policy
metadata: {{name: bench}}
spec:
  identity:
    apiKeys:
      keys: [{{sha256: "{hex}", id: k}}]
    jwt:
      issuers:
        - {{issuer: hs, audiences: [a], algorithms: [HS256], keys: [{{algorithm: HS256, secret: "{SECRET}"}}]}}
        - issuer: rs
          audiences: [a]
          algorithms: [RS256]
          keys:
            - algorithm: RS256
              pem: |
                {rsa}
        - issuer: es
          audiences: [a]
          algorithms: [ES256]
          keys:
            - algorithm: ES256
              pem: |
                {ec}
  routes:
    - {{name: chat, match: {{paths: ["/v1/chat/completions"]}}, schema: openai-chat}}
"#,
        rsa = indent(data("rsa_public.pem")),
        ec = indent(data("ec_public.pem")),
    );
    let engine = Engine::new(&Policy::from_text(&policy).expect("parses")).expect("compiles");
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 86_400;
    let claims = |iss: &str| serde_json::json!({"iss": iss, "aud": "a", "sub": "u", "exp": exp});
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &claims("hs"),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let rs = encode(
        &Header::new(Algorithm::RS256),
        &claims("rs"),
        &EncodingKey::from_rsa_pem(data("rsa_private.pem").as_bytes()).unwrap(),
    )
    .unwrap();
    let es = encode(
        &Header::new(Algorithm::ES256),
        &claims("es"),
        &EncodingKey::from_ec_pem(data("ec_private.pem").as_bytes()).unwrap(),
    )
    .unwrap();
    let body = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello there."}]}"#;
    let mut g = c.benchmark_group("identity");
    for (name, header, value) in [
        ("api_key", "x-api-key", "sk-bench-key".to_string()),
        ("jwt_hs256", "authorization", format!("Bearer {hs}")),
        ("jwt_rs256", "authorization", format!("Bearer {rs}")),
        ("jwt_es256", "authorization", format!("Bearer {es}")),
    ] {
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b"content-type", b"application/json"),
            (header.as_bytes(), value.as_bytes()),
        ];
        let req = Request::new(b"POST", b"/v1/chat/completions")
            .with_headers(&headers)
            .with_body(body);
        let mut scratch = engine.new_scratch();
        let d = engine.inspect_with(&mut scratch, &req);
        assert!(d.is_allowed() && d.principal.is_some(), "{}", d.to_json());
        g.bench_function(name, |b| {
            b.iter(|| black_box(engine.inspect_with(&mut scratch, black_box(&req))))
        });
    }
    g.finish();
}

criterion_group!(benches, identity);
criterion_main!(benches);
