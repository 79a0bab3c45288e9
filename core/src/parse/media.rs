//! `Content-Type` values: the media type that picks a body parser, and the checks that
//! catch values built to make two parsers disagree.
//!
//! A front end and a back end that read one `Content-Type` differently see two different
//! bodies: a substring search for `json` takes
//! `application/x-www-form-urlencoded; boundary="application/json"` for JSON, a parser that
//! keeps the last `charset` reads a body as UTF-7 that the WAF read as UTF-8. So the engine
//! picks its parser from the media type alone ([`essence`]) and reports values whose syntax
//! or parameters leave room for such a disagreement ([`anomaly`]).

/// The `type/subtype` part of a `Content-Type` value (everything before the first `;`),
/// without surrounding whitespace.
pub fn essence(ct: &[u8]) -> &[u8] {
    let end = memchr::memchr(b';', ct).unwrap_or(ct.len());
    ct[..end].trim_ascii()
}

/// Whether a charset is one the engine's text rules read correctly (UTF-8 and the Latin-1
/// family, whose ASCII range is ASCII). Anything else (UTF-7, UTF-16, EBCDIC code pages)
/// can spell a payload in bytes the rules never see as such.
pub fn charset_allowed(cs: &[u8]) -> bool {
    const OK: [&[u8]; 6] = [
        b"utf-8",
        b"utf8",
        b"us-ascii",
        b"iso-8859-1",
        b"iso-8859-15",
        b"windows-1252",
    ];
    let cs = unquote(cs.trim_ascii());
    OK.iter().any(|ok| ok.eq_ignore_ascii_case(cs))
}

/// The `charset` parameter of a `Content-Type` value, if any (quotes removed).
pub fn charset(ct: &[u8]) -> Option<&[u8]> {
    let mut rest = &ct[memchr::memchr(b';', ct)? + 1..];
    loop {
        let end = memchr::memchr(b';', rest).unwrap_or(rest.len());
        let param = rest[..end].trim_ascii();
        if let Some(eq) = memchr::memchr(b'=', param) {
            if param[..eq].trim_ascii().eq_ignore_ascii_case(b"charset") {
                return Some(unquote(param[eq + 1..].trim_ascii()));
            }
        }
        if end == rest.len() {
            return None;
        }
        rest = &rest[end + 1..];
    }
}

/// Whether a `Content-Type` value is malformed or ambiguous: not
/// `type/subtype *(; name=value)` with token or quoted-string values (RFC 9110 §8.3.1), a
/// `charset` outside [`charset_allowed`], `charset` written more than once anywhere in the
/// value, or a `boundary` parameter on a type that is not `multipart/*`.
pub fn anomaly(ct: &[u8]) -> bool {
    let charsets = ct
        .windows(7)
        .filter(|w| w.eq_ignore_ascii_case(b"charset"))
        .count();
    if charsets > 1 {
        return true;
    }
    let mut i = skip_ows(ct, 0);
    let (ty, j) = token(ct, i);
    if ty.is_empty() || ct.get(j) != Some(&b'/') {
        return true;
    }
    let (sub, j) = token(ct, j + 1);
    if sub.is_empty() {
        return true;
    }
    let multipart = ty.eq_ignore_ascii_case(b"multipart");
    i = j;
    loop {
        i = skip_ows(ct, i);
        match ct.get(i) {
            None => return false,
            Some(b';') => i = skip_ows(ct, i + 1),
            Some(_) => return true,
        }
        if i == ct.len() {
            return false;
        }
        let (name, j) = token(ct, i);
        if name.is_empty() || ct.get(j) != Some(&b'=') {
            return true;
        }
        i = j + 1;
        let value = if ct.get(i) == Some(&b'"') {
            let mut k = i + 1;
            loop {
                match ct.get(k) {
                    None => return true,
                    Some(b'\\') => k += 2,
                    Some(b'"') => break,
                    Some(_) => k += 1,
                }
            }
            let v = &ct[i + 1..k.min(ct.len())];
            i = k + 1;
            v
        } else {
            let (v, j) = token(ct, i);
            if v.is_empty() {
                return true;
            }
            i = j;
            v
        };
        if (name.eq_ignore_ascii_case(b"charset") && !charset_allowed(value))
            || (name.eq_ignore_ascii_case(b"boundary") && !multipart)
        {
            return true;
        }
    }
}

/// RFC 9110 token characters.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn token(s: &[u8], i: usize) -> (&[u8], usize) {
    let start = i.min(s.len());
    let len = s[start..].iter().take_while(|&&c| is_tchar(c)).count();
    (&s[start..start + len], start + len)
}

fn skip_ows(s: &[u8], mut i: usize) -> usize {
    while matches!(s.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    i
}

fn unquote(s: &[u8]) -> &[u8] {
    match s {
        [b'"', inner @ .., b'"'] => inner,
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn essence_is_the_media_type_only() {
        assert_eq!(
            essence(b" application/json ; charset=utf-8"),
            b"application/json"
        );
        assert_eq!(
            essence(b"application/x-www-form-urlencoded;boundary=\"application/json\""),
            b"application/x-www-form-urlencoded"
        );
        assert_eq!(essence(b""), b"");
    }

    #[test]
    fn well_formed_values_pass() {
        for ct in [
            &b"application/json"[..],
            b"application/json; charset=utf-8",
            b"application/json;charset=\"UTF-8\"",
            b"multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
            b"multipart/form-data; boundary=\"a b/c\"",
            b"text/plain;",
            b"application/vnd.api+json",
            b"text/html; charset=ISO-8859-1",
        ] {
            assert!(!anomaly(ct), "{}", String::from_utf8_lossy(ct));
        }
    }

    #[test]
    fn malformed_or_ambiguous_values_are_flagged() {
        for ct in [
            &b"%{(#a='multipart/form-data').(#b=@ognl"[..],
            b"text/plain; charset=\"UTF-8\"; garbage",
            b"multipart/form-data; boundary=  abc",
            b"text/xml; blah",
            b"application/x-www-form-urlencoded; charset=garbage",
            b"application/x-www-form-urlencoded;charset=ibm037",
            b"text/plain; charset=utf-8; CHARSET=utf-7",
            b"text/plain; charset=utf-8; boundary=\"charset=utf-7\"",
            b"application/x-www-form-urlencoded;boundary=\"application/json\"",
            b"application/json; charset=\"utf-8",
            b"json",
            b"",
        ] {
            assert!(anomaly(ct), "{}", String::from_utf8_lossy(ct));
        }
    }

    #[test]
    fn charset_parameter() {
        assert_eq!(
            charset(b"text/plain; charset=\"utf-7\""),
            Some(&b"utf-7"[..])
        );
        assert_eq!(charset(b"text/plain;a=b; Charset = x"), Some(&b"x"[..]));
        assert_eq!(charset(b"text/plain"), None);
        assert!(charset_allowed(b"\"UTF-8\""));
        assert!(!charset_allowed(b"shift-jis"));
    }
}
