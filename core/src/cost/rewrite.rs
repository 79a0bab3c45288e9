//! The body a host forwards after the parameter policy clamped or stripped parameters:
//! the decision's rewrites applied to the request's JSON object.
//!
//! Members the rewrites do not touch keep their order and their values' exact bytes (values
//! are copied as raw JSON, not re-serialised; keys are written back in their plain JSON
//! spelling, so an escaped key such as `"\u006dodel"` becomes `"model"`), so a forwarded
//! body differs from the original only where the policy said it must.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::decision::{Rewrite, RewriteAction};
use crate::error::{RewriteError, RewriteErrorKind};

/// The members of a JSON object in document order, values raw.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Members<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn members(json: &str) -> Result<Members<'_>, RewriteError> {
    serde_json::from_str::<Members<'_>>(json).map_err(|e| {
        let kind = if e.is_data() {
            RewriteErrorKind::NotAnObject
        } else {
            RewriteErrorKind::MalformedJson
        };
        RewriteError::new(kind, e.to_string())
    })
}

fn value(a: RewriteAction) -> Option<String> {
    match a {
        RewriteAction::Set(v) => Some(v.to_string()),
        RewriteAction::SetFalse => Some("false".into()),
        RewriteAction::SetTrue => Some("true".into()),
        RewriteAction::Remove => None,
    }
}

fn key(out: &mut String, k: &str) {
    out.push_str(&serde_json::to_string(k).unwrap_or_else(|_| "\"\"".into()));
    out.push(':');
}

/// Applies `rewrites` (top-level parameters, or `outer.inner` one level down) to the JSON
/// object `json`.
fn apply_object(json: &str, rewrites: &[(&str, RewriteAction)]) -> Result<String, RewriteError> {
    let Members(members) = members(json)?;
    let mut out = String::with_capacity(json.len() + 32);
    out.push('{');
    let mut first = true;
    let mut sep = |out: &mut String| {
        if !std::mem::take(&mut first) {
            out.push(',');
        }
    };
    let mut done = vec![false; rewrites.len()];
    for (k, v) in &members {
        let mut own = None;
        let mut nested: Vec<(&str, RewriteAction)> = Vec::new();
        for (i, (param, action)) in rewrites.iter().enumerate() {
            match param.split_once('.') {
                None if *param == k.as_ref() => {
                    own = Some(*action);
                    done[i] = true;
                }
                Some((outer, inner)) if outer == k.as_ref() => {
                    nested.push((inner, *action));
                    done[i] = true;
                }
                _ => {}
            }
        }
        match own {
            Some(a) => {
                if let Some(text) = value(a) {
                    sep(&mut out);
                    key(&mut out, k);
                    out.push_str(&text);
                }
            }
            None if !nested.is_empty()
                && !v.get().trim_start().starts_with('{')
                && nested.iter().all(|(_, a)| value(*a).is_none()) =>
            {
                // Only removals below a member that is not an object: nothing to remove.
                sep(&mut out);
                key(&mut out, k);
                out.push_str(v.get());
            }
            None if !nested.is_empty() => {
                sep(&mut out);
                key(&mut out, k);
                if v.get().trim_start().starts_with('{') {
                    out.push_str(&apply_object(v.get(), &nested)?);
                } else {
                    // `stream_options: null` or another non-object: replaced by an object
                    // holding what the policy sets.
                    out.push_str(&apply_object("{}", &nested)?);
                }
            }
            None => {
                sep(&mut out);
                key(&mut out, k);
                out.push_str(v.get());
            }
        }
    }
    // Settings for members the body does not have: added (removing them is done).
    let mut missing: Vec<(&str, Vec<(&str, RewriteAction)>)> = Vec::new();
    for (i, (param, action)) in rewrites.iter().enumerate() {
        if done[i] || value(*action).is_none() {
            continue;
        }
        let (outer, inner) = match param.split_once('.') {
            Some((o, i)) => (o, Some(i)),
            None => (*param, None),
        };
        match inner {
            None => {
                sep(&mut out);
                key(&mut out, outer);
                out.push_str(&value(*action).unwrap_or_default());
            }
            Some(inner) => match missing.iter_mut().find(|(o, _)| *o == outer) {
                Some((_, list)) => list.push((inner, *action)),
                None => missing.push((outer, vec![(inner, *action)])),
            },
        }
    }
    for (outer, list) in missing {
        sep(&mut out);
        key(&mut out, outer);
        out.push_str(&apply_object("{}", &list)?);
    }
    out.push('}');
    Ok(out)
}

/// The body to forward: `Ok(None)` when there is nothing to change (forward the original
/// bytes), else the JSON object with every rewrite applied. A body that is not a JSON
/// object cannot carry the parameters a rewrite names, so it is an error: the host must
/// not forward it unchanged.
pub fn rewrite_body(rewrites: &[Rewrite], body: &[u8]) -> Result<Option<Vec<u8>>, RewriteError> {
    if rewrites.is_empty() {
        return Ok(None);
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| RewriteError::new(RewriteErrorKind::MalformedJson, e.to_string()))?;
    let list: Vec<(&str, RewriteAction)> = rewrites.iter().map(|r| (r.param, r.action)).collect();
    apply_object(text, &list).map(|s| Some(s.into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(param: &'static str, action: RewriteAction) -> Rewrite {
        Rewrite { param, action }
    }

    fn apply(rewrites: &[Rewrite], body: &str) -> String {
        String::from_utf8(rewrite_body(rewrites, body.as_bytes()).unwrap().unwrap()).unwrap()
    }

    #[test]
    fn untouched_members_keep_their_bytes_and_order() {
        let body = r#"{"model":"gpt-4o-mini", "max_tokens" : 9000,"messages":[{"role":"user","content":"h\u00e9 \"x\""}],"logprobs":true}"#;
        let out = apply(
            &[
                rw("max_tokens", RewriteAction::Set(512)),
                rw("logprobs", RewriteAction::Remove),
            ],
            body,
        );
        assert_eq!(
            out,
            r#"{"model":"gpt-4o-mini","max_tokens":512,"messages":[{"role":"user","content":"h\u00e9 \"x\""}]}"#
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["max_tokens"], 512);
    }

    #[test]
    fn nested_and_missing_members() {
        let set = [rw("stream_options.include_usage", RewriteAction::SetTrue)];
        assert_eq!(
            apply(
                &set,
                r#"{"stream":true,"stream_options":{"include_usage":false,"x":1}}"#
            ),
            r#"{"stream":true,"stream_options":{"include_usage":true,"x":1}}"#
        );
        assert_eq!(
            apply(&set, r#"{"stream":true}"#),
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            apply(&set, r#"{"stream":true,"stream_options":null}"#),
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            apply(
                &[rw("stream", RewriteAction::SetFalse)],
                r#"{"stream":true}"#
            ),
            r#"{"stream":false}"#
        );
        // A duplicated key is rewritten wherever it appears.
        assert_eq!(
            apply(
                &[rw("max_tokens", RewriteAction::Set(5))],
                r#"{"max_tokens":1,"max_tokens":99999}"#
            ),
            r#"{"max_tokens":5,"max_tokens":5}"#
        );
        assert_eq!(rewrite_body(&[], b"not json").unwrap(), None);
        // Removing below a member that is not an object leaves it alone.
        assert_eq!(
            apply(
                &[rw("stream_options.include_usage", RewriteAction::Remove)],
                r#"{"stream_options":null}"#
            ),
            r#"{"stream_options":null}"#
        );
    }

    #[test]
    fn bodies_that_are_not_objects_are_errors() {
        let r = [rw("max_tokens", RewriteAction::Set(5))];
        for (body, code) in [
            (&b"{\"max_tokens\":"[..], "rewrite.malformed_json"),
            (b"[1,2]", "rewrite.not_an_object"),
            (b"\xff\xfe", "rewrite.malformed_json"),
            (b"{} trailing", "rewrite.malformed_json"),
        ] {
            assert_eq!(rewrite_body(&r, body).unwrap_err().code(), code, "{body:?}");
        }
    }
}
