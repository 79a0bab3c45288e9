//! Corpus rows (JSON Lines, see `shared/corpora/README.md`) and raw HTTP requests.

use base64::Engine as _;
use edgeward::Request;
use serde::Deserialize;

/// One labeled request.
#[derive(Debug, Deserialize)]
pub struct Row {
    /// Stable id.
    pub id: String,
    #[serde(default = "get")]
    method: String,
    uri: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    body_b64: Option<String>,
    /// `attack` or `benign`.
    #[serde(default)]
    pub label: String,
    /// Category (sqli, xss, prompt_injection, benign_prompt, …).
    #[serde(default)]
    pub category: String,
    #[serde(skip)]
    body_bytes: Vec<u8>,
}

fn get() -> String {
    "GET".into()
}

impl Row {
    /// Parses one line.
    pub fn parse(line: &str) -> Result<Row, String> {
        let mut r: Row = serde_json::from_str(line).map_err(|e| e.to_string())?;
        r.body_bytes = match (&r.body_b64, &r.body) {
            (Some(b), _) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| format!("body_b64: {e}"))?,
            (None, Some(b)) => b.as_bytes().to_vec(),
            (None, None) => Vec::new(),
        };
        Ok(r)
    }

    /// Builds a borrowed request and runs `f` on it.
    pub fn with_request<T>(&self, f: impl FnOnce(&Request<'_>) -> T) -> T {
        let headers: Vec<(&[u8], &[u8])> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        let req = Request::new(self.method.as_bytes(), self.uri.as_bytes())
            .with_headers(&headers)
            .with_body(&self.body_bytes);
        f(&req)
    }
}

/// A raw HTTP/1.x request read from a file.
pub struct RawRequest {
    method: Vec<u8>,
    uri: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
}

impl RawRequest {
    /// Parses `METHOD URI VERSION`, header lines, a blank line and the body. Accepts LF or
    /// CRLF line ends, because hand-written request files usually have LF.
    pub fn parse(data: &[u8]) -> Result<RawRequest, String> {
        let (head, body) = match memfind(data, b"\r\n\r\n") {
            Some(i) => (&data[..i], &data[i + 4..]),
            None => match memfind(data, b"\n\n") {
                Some(i) => (&data[..i], &data[i + 2..]),
                None => (data, &data[data.len()..]),
            },
        };
        let mut lines = head
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let start = lines
            .next()
            .filter(|l| !l.is_empty())
            .ok_or("empty request")?;
        let mut parts = start.split(|&b| b == b' ').filter(|p| !p.is_empty());
        let method = parts.next().ok_or("missing method")?.to_vec();
        let uri = parts.next().ok_or("missing request target")?.to_vec();
        let mut headers = Vec::new();
        for l in lines {
            if l.is_empty() {
                continue;
            }
            let i = l.iter().position(|&b| b == b':').ok_or_else(|| {
                format!("header line without colon: {}", String::from_utf8_lossy(l))
            })?;
            let v = &l[i + 1..];
            let v = &v[v
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(v.len())..];
            headers.push((l[..i].to_vec(), v.to_vec()));
        }
        Ok(RawRequest {
            method,
            uri,
            headers,
            body: body.to_vec(),
        })
    }

    /// Builds a borrowed request and runs `f` on it.
    pub fn with_request<T>(&self, f: impl FnOnce(&Request<'_>) -> T) -> T {
        let headers: Vec<(&[u8], &[u8])> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        let req = Request::new(&self.method, &self.uri)
            .with_headers(&headers)
            .with_body(&self.body);
        f(&req)
    }
}

fn memfind(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}
