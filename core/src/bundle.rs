//! Bundles: a compiled policy shipped as one file.
//!
//! Layout: 8 bytes magic `EDGWBNDL`, a little-endian `u16` format version, then one CBOR
//! map (ciborium) with the engine version, the SHA-256 of the canonical policy JSON, the
//! policy document and every rule it loaded (so a bundle needs no rule files at load time).
//! Loading recompiles: regex-automata's meta regexes cannot be serialized, and compiling the
//! default policy is well under the 200 ms budget. Bundle bytes are untrusted: every failure
//! is a [`BundleError`], never a panic.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{BundleError, BundleErrorKind};
use crate::policy::{Policy, PolicyDocument};
use crate::rules::RuleDef;
use crate::Engine;

/// The bundle magic.
pub const MAGIC: &[u8; 8] = b"EDGWBNDL";
/// The bundle format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Bundles larger than this are refused before decoding.
pub const MAX_BUNDLE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Serialize, Deserialize)]
struct Body {
    engine_version: String,
    policy_hash: String,
    source: String,
    document: PolicyDocument,
    rules: Vec<RuleDef>,
}

fn hash(document: &PolicyDocument, rules: &[RuleDef]) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(document).unwrap_or_default());
    h.update(b"\n");
    h.update(serde_json::to_vec(rules).unwrap_or_default());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 (hex) identifying a policy and its rules.
pub fn policy_hash(policy: &Policy) -> String {
    hash(&policy.document, &policy.rules)
}

impl Engine {
    /// Serializes the engine's policy and rules into a bundle.
    pub fn to_bundle(&self) -> Vec<u8> {
        let p = self.policy();
        let body = Body {
            engine_version: env!("CARGO_PKG_VERSION").to_string(),
            policy_hash: policy_hash(p),
            source: p.source.clone(),
            document: p.document.clone(),
            rules: p.rules.clone(),
        };
        let mut out = Vec::with_capacity(64 * 1024);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        // Writing into a Vec cannot fail for these plain data types.
        let _ = ciborium::into_writer(&body, &mut out);
        out
    }

    /// Loads a bundle from untrusted bytes.
    pub fn from_bundle(bytes: &[u8]) -> Result<Engine, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::new(
                BundleErrorKind::Corrupt,
                "bundle larger than 64 MiB",
            ));
        }
        if bytes.len() < 10 || &bytes[..8] != MAGIC {
            return Err(BundleError::new(
                BundleErrorKind::BadMagic,
                "not an edgeward bundle",
            ));
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != FORMAT_VERSION {
            return Err(BundleError::new(
                BundleErrorKind::UnsupportedFormat,
                format!("bundle format {version}, this build reads {FORMAT_VERSION}"),
            ));
        }
        // ciborium bounds recursion depth itself, so hostile nesting fails cleanly.
        let body: Body = ciborium::from_reader(&bytes[10..])
            .map_err(|e| BundleError::new(BundleErrorKind::Corrupt, format!("{e}")))?;
        let ours = env!("CARGO_PKG_VERSION");
        if major_minor(&body.engine_version) != major_minor(ours) {
            return Err(BundleError::new(
                BundleErrorKind::VersionMismatch,
                format!(
                    "bundle written by engine {}, this is {ours}",
                    body.engine_version
                ),
            ));
        }
        if hash(&body.document, &body.rules) != body.policy_hash {
            return Err(BundleError::new(
                BundleErrorKind::HashMismatch,
                "policy hash does not match the bundle contents",
            ));
        }
        let policy = Policy {
            document: body.document,
            rules: body.rules,
            source: body.source,
        };
        // A bundle skips the text parser, so it gets the same semantic checks here.
        for r in &policy.rules {
            r.check()
                .map_err(|e| BundleError::new(BundleErrorKind::Compile, e.to_string()))?;
        }
        Engine::new(&policy).map_err(|e| BundleError::new(BundleErrorKind::Compile, e.to_string()))
    }
}

fn major_minor(v: &str) -> (&str, &str) {
    let mut it = v.split('.');
    (it.next().unwrap_or(""), it.next().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let e = Engine::default_engine();
        let b = e.to_bundle();
        let e2 = Engine::from_bundle(&b).unwrap();
        assert_eq!(policy_hash(e.policy()), policy_hash(e2.policy()));

        assert_eq!(
            Engine::from_bundle(b"nope").unwrap_err().code(),
            "bundle.bad_magic"
        );
        let mut v = b.clone();
        v[8] = 9;
        assert_eq!(
            Engine::from_bundle(&v).unwrap_err().code(),
            "bundle.unsupported_format"
        );
        let t = &b[..b.len() / 2];
        assert_eq!(Engine::from_bundle(t).unwrap_err().code(), "bundle.corrupt");
        // Flip a byte inside a rule's regex text: still valid CBOR, but the hash no longer
        // matches.
        let mut v = b.clone();
        let needle = b"regex";
        let at = v.windows(5).rposition(|w| w == needle).unwrap();
        v[at + 8] ^= 0x01;
        let code = Engine::from_bundle(&v).unwrap_err().code();
        assert!(
            code == "bundle.hash_mismatch" || code == "bundle.corrupt",
            "{code}"
        );
        // Every truncation fails cleanly.
        for n in (0..b.len()).step_by(b.len() / 97 + 1) {
            assert!(Engine::from_bundle(&b[..n]).is_err());
        }
    }
}
