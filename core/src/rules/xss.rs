//! XSS context detector: reads a value the way an HTML parser would if the value were pasted
//! into HTML text or into an attribute value, and reports the first construct that would run
//! script.
//!
//! Regexes over XSS payloads either miss the many spellings browsers accept (`<svg/onload=`,
//! `<a href="java&#9;script:">`, `" autofocus onfocus=`) or flag prose that merely mentions
//! tags. A small tokenizer can follow the real grammar: a tag starts with `<` and a letter,
//! attributes are separated by whitespace or `/`, an event handler is an `on…` attribute name
//! followed by `=`, and URL attributes ignore tabs and newlines inside the scheme.
//!
//! The scan is a single forward pass with bounded look-ahead per position, so it is linear in
//! the value's length; it never allocates and never indexes out of bounds (only `get` and
//! iterator access). Decoding (percent, entities, JS escapes) is left to the rule's transform
//! chain; names are compared ASCII case-insensitively so the chain need not lowercase.

/// Element names that run or load active content on their own, whatever their attributes.
const ACTIVE_TAGS: &[&[u8]] = &[
    b"script",
    b"iframe",
    b"frame",
    b"frameset",
    b"object",
    b"embed",
    b"applet",
    b"base",
    b"isindex",
    b"xss",
    b"portal",
    b"xmp",
    b"noembed",
    b"listing",
    b"vmlframe",
    b"handler",
];

/// Words shaped like `on…` that are common parameter or attribute names but no event.
const NOT_EVENTS: &[&[u8]] = &[
    b"online", b"onset", b"once", b"only", b"onward", b"onwards", b"ones",
];

/// Attributes whose value is fetched or navigated to, so a script URL in them runs.
const URL_ATTRS: &[&[u8]] = &[
    b"href",
    b"src",
    b"action",
    b"formaction",
    b"xlink:href",
    b"data",
    b"background",
    b"poster",
    b"lowsrc",
    b"dynsrc",
    b"codebase",
    b"to",
    b"from",
    b"values",
    b"srcdoc",
    b"content",
    b"code",
    b"archive",
    b"ping",
    b"cite",
    b"longdesc",
    b"usemap",
    b"profile",
    b"style",
];

/// Longest attribute or tag name considered; longer runs are not names a browser maps to
/// anything interesting, and the bound keeps look-ahead constant.
const MAX_NAME: usize = 32;

/// Returns the span of the first script-running construct in `v`, if any.
///
/// Findings: an element in [`ACTIVE_TAGS`]; any tag with an `on…=` event-handler attribute;
/// a `javascript:`/`vbscript:`/`data:text/html` URL or a CSS `expression(` in an attribute
/// value; and, for values that land inside a quoted attribute, a quote that closes it
/// followed by an event handler (`" onfocus=…`).
pub fn detect(v: &[u8]) -> Option<(usize, usize)> {
    // Every finding needs one of these bytes; most values have none of them.
    memchr::memchr3(b'<', b'=', b':', v)?;
    // Positions of `<` and quotes in order, by two memchr iterators merged (memchr takes at
    // most three needles): a byte-by-byte loop cost 1.5 ns a byte on plain prose.
    let mut marks = memchr::memchr3_iter(b'<', b'"', b'\'', v).peekable();
    let mut ticks = memchr::memchr_iter(b'`', v).peekable();
    loop {
        let i = match (marks.peek(), ticks.peek()) {
            (Some(&m), Some(&t)) if t < m => ticks.next(),
            (Some(_), _) => marks.next(),
            (None, _) => ticks.next(),
        };
        let Some(i) = i else { break };
        let hit = match v[i] {
            b'<' => tag_at(v, i).or_else(|| declaration_at(v, i)),
            _ => attr_breakout_at(v, i),
        };
        if hit.is_some() {
            return hit;
        }
    }
    // A value that is itself a URL (e.g. a `redirect=` parameter rendered into `href`). A
    // space right after the scheme reads as prose ("JavaScript: the basics"), not a payload.
    let start = skip_ws_quotes(v, 0);
    script_url(v, start)
        .filter(|&end| v.get(end).is_some_and(|&b| !is_ws(b)))
        .map(|end| (0, end))
        .or_else(|| leading_handler(v, start))
}

/// A value that starts with an event-handler attribute whose value calls something
/// (`onerror=eval;throw'…'`, ` onmouseover=alert(1)`): rendered into an unquoted attribute or
/// a tag, it adds the handler. A call or template in the value keeps `onboarding=yes` out.
fn leading_handler(v: &[u8], start: usize) -> Option<(usize, usize)> {
    let ne = name_end(v, start);
    if !is_event_name(v.get(start..ne)?) {
        return None;
    }
    let mut j = ne;
    while v.get(j).is_some_and(|&b| is_ws(b)) {
        j += 1;
    }
    if v.get(j) != Some(&b'=') {
        return None;
    }
    let rest = &v[j + 1..v.len().min(j + 1 + 64)];
    memchr::memchr2(b'(', b'`', rest).map(|o| (start, j + 2 + o))
}

/// Markup declarations and processing instructions that load behaviour in old IE or XML
/// pipelines: `<?import …>`, `<?xml-stylesheet …>`, `<?xml:namespace …>` and a DOCTYPE
/// `<!ATTLIST` that defaults attributes (event handlers) onto elements.
fn declaration_at(v: &[u8], lt: usize) -> Option<(usize, usize)> {
    const DECLS: &[&[u8]] = &[b"<?import", b"<?xml:namespace", b"<!attlist"];
    let rest = v.get(lt..)?;
    if let Some(d) = DECLS
        .iter()
        .find(|d| rest.len() >= d.len() && rest[..d.len()].eq_ignore_ascii_case(d))
    {
        return Some((lt, lt + d.len()));
    }
    // A style sheet instruction is only a finding when what it loads is script or CSS that
    // runs code (`href="data:,*{x:expression(…)}"`); `href="style.xsl"` is ordinary XML.
    const PI: &[u8] = b"<?xml-stylesheet";
    if rest.len() >= PI.len() && rest[..PI.len()].eq_ignore_ascii_case(PI) {
        let body = &rest[PI.len()..rest.len().min(PI.len() + STYLE_LOOKAHEAD)];
        let body = &body[..memchr::memmem::find(body, b"?>").unwrap_or(body.len())];
        let href = body
            .windows(5)
            .position(|w| w.eq_ignore_ascii_case(b"href="))
            .map(|o| skip_ws_quotes(body, o + 5));
        let hit = css_danger(body).is_some()
            || href.is_some_and(|h| {
                script_url(body, h).is_some() || match_skipping_ws(body, h, b"data:").is_some()
            });
        return hit.then_some((lt, lt + PI.len()));
    }
    None
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c | 0x0b)
}

fn is_name_byte(b: u8) -> bool {
    !is_ws(b) && !matches!(b, b'/' | b'>' | b'=' | b'<' | b'"' | b'\'' | b'`' | 0)
}

fn skip_ws_quotes(v: &[u8], mut i: usize) -> usize {
    while let Some(&b) = v.get(i) {
        // URL parsers strip leading C0 controls and spaces, so `\x01javascript:` runs.
        if b <= b' ' || matches!(b, b'"' | b'\'' | b'`') {
            i += 1;
        } else {
            break;
        }
    }
    i
}

fn name_in(name: &[u8], set: &[&[u8]]) -> bool {
    set.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// `on` plus letters: the shape of every event-handler attribute (`onerror`, `onpageshow`).
fn is_event_name(name: &[u8]) -> bool {
    name.len() >= 5
        && name.len() <= MAX_NAME
        && name[..2].eq_ignore_ascii_case(b"on")
        && name[2..].iter().all(|b| b.is_ascii_alphabetic())
        && !name_in(name, NOT_EVENTS)
}

/// Reads a name starting at `i`; returns its end (bounded by [`MAX_NAME`] + 1 bytes).
fn name_end(v: &[u8], i: usize) -> usize {
    let mut j = i;
    while j < v.len() && j - i <= MAX_NAME && is_name_byte(v[j]) {
        j += 1;
    }
    j
}

/// A tag opening at `v[lt] == b'<'`.
fn tag_at(v: &[u8], lt: usize) -> Option<(usize, usize)> {
    // Browsers only open a tag for `<` directly followed by a letter; `</` closes one.
    let mut i = lt + 1;
    let closing = v.get(i) == Some(&b'/');
    if closing {
        i += 1;
    }
    if !v.get(i)?.is_ascii_alphabetic() {
        return None;
    }
    let name_start = i;
    let name_stop = name_end(v, i);
    let name = &v[name_start..name_stop];
    if name_stop - name_start > MAX_NAME {
        return None;
    }
    let after = v.get(name_stop).copied();
    // A complete name: ends at whitespace, `/`, `>` or the end of the value. `<scripting`
    // is not `<script`.
    let complete = after.is_none_or(|b| is_ws(b) || b == b'/' || b == b'>');
    // `<x:script xmlns:x=…>` is a script element in XHTML: compare the local name too.
    let local = name
        .iter()
        .rposition(|&b| b == b':')
        .map_or(name, |c| &name[c + 1..]);
    if !closing && complete && (name_in(name, ACTIVE_TAGS) || name_in(local, ACTIVE_TAGS)) {
        return Some((lt, name_stop));
    }
    if closing {
        return None;
    }
    if complete && local.eq_ignore_ascii_case(b"style") {
        // A style sheet: dangerous CSS within the next bytes (bounded, so a run of
        // `<style` tags stays linear).
        let end = v.len().min(name_stop + STYLE_LOOKAHEAD);
        if let Some(o) = css_danger(&v[name_stop..end]) {
            return Some((lt, name_stop + o));
        }
    }
    let meta = local.eq_ignore_ascii_case(b"meta");
    attrs(v, name_stop, meta).map(|(_, e)| (lt, e))
}

/// How far past `<style` a dangerous CSS construct is looked for.
const STYLE_LOOKAHEAD: usize = 1024;

/// Walks the attributes of a tag from `i` up to `>` or a new `<`; returns the first
/// dangerous attribute.
fn attrs(v: &[u8], mut i: usize, meta: bool) -> Option<(usize, usize)> {
    // Each iteration consumes at least one byte, and every byte is visited by at most one
    // attribute walk per tag; the caller starts a walk only at `<`, so a value made of many
    // `<a ` repeats stays linear because a walk stops at the next `<`.
    while i < v.len() {
        let b = v[i];
        if b == b'>' || b == b'<' {
            return None;
        }
        if is_ws(b) || b == b'/' || b == b'"' || b == b'\'' || b == b'`' {
            i += 1;
            continue;
        }
        let ns = i;
        let ne = name_end(v, i);
        if ne == ns {
            // A stray `=`: skip it.
            i += 1;
            continue;
        }
        let name = &v[ns..ne];
        let mut j = ne;
        while v.get(j).is_some_and(|&b| is_ws(b)) {
            j += 1;
        }
        if j >= v.len() && is_event_name(name) {
            // The value ends right after a handler name: in a query string the `=` that
            // follows became the name/value separator (`?<svg onload=alert(1)`).
            return Some((ns, ne));
        }
        if v.get(j) != Some(&b'=') {
            i = ne.max(i + 1);
            continue;
        }
        j += 1;
        // Handlers; IE data binding (`datasrc`, `dataformatas` render fetched markup); a
        // `<meta http-equiv>` (refresh, link, set-cookie, charset switch).
        if is_event_name(name)
            || name_in(name, &[b"datasrc", b"dataformatas", b"datafld"])
            || (meta && name.eq_ignore_ascii_case(b"http-equiv"))
        {
            return Some((ns, j));
        }
        // The value: quoted or up to whitespace / `>`.
        while v.get(j).is_some_and(|&b| is_ws(b)) {
            j += 1;
        }
        let (vs, ve, next) = match v.get(j) {
            Some(&q @ (b'"' | b'\'' | b'`')) => {
                let end = memchr::memchr(q, &v[j + 1..]).map_or(v.len(), |o| j + 1 + o);
                (j + 1, end, end + 1)
            }
            _ => {
                let mut e = j;
                while e < v.len() && !is_ws(v[e]) && v[e] != b'>' {
                    e += 1;
                }
                (j, e, e)
            }
        };
        let value = &v[vs..ve.min(v.len())];
        // SVG `<set attributeName="onmouseover" to=…>` animates a handler into place.
        let animated_handler = name.eq_ignore_ascii_case(b"attributename")
            && is_event_name(&value[..name_end(value, 0)]);
        if animated_handler
            || (name_in(name, URL_ATTRS)
                && (script_url(value, skip_ws_quotes(value, 0)).is_some()
                    || css_danger(value).is_some()))
        {
            return Some((ns, ve.min(v.len())));
        }
        i = next.max(i + 1);
    }
    None
}

/// A quote that ends an attribute value and is followed by a new event-handler attribute:
/// `" onmouseover=alert(1)`, `'/onfocus='x`, `" autofocus onfocus=`.
fn attr_breakout_at(v: &[u8], q: usize) -> Option<(usize, usize)> {
    let mut i = q + 1;
    // At most a few plain attributes (`autofocus`, `tabindex=1`) between the quote and the
    // handler; bounded so the look-ahead stays constant.
    for _ in 0..4 {
        let mut sep = false;
        while v.get(i).is_some_and(|&b| is_ws(b) || b == b'/') {
            i += 1;
            sep = true;
        }
        // `"onfocus=` with no separator is still parsed as a new attribute by browsers, but
        // only directly after the closing quote.
        if !sep && i != q + 1 {
            return None;
        }
        let ns = i;
        let ne = name_end(v, i);
        if ne == ns {
            return None;
        }
        let mut j = ne;
        while v.get(j).is_some_and(|&b| is_ws(b)) {
            j += 1;
        }
        let has_eq = v.get(j) == Some(&b'=');
        if j >= v.len() && is_event_name(&v[ns..ne]) {
            // As in `attrs`: the `=` was consumed as the query's name/value separator.
            return Some((q, ne));
        }
        if !has_eq {
            // A bare attribute (`autofocus`); the separator after it is read next round.
            j = ne;
        }
        if has_eq && is_event_name(&v[ns..ne]) {
            return Some((q, j + 1));
        }
        if has_eq {
            // Skip an unquoted value like `tabindex=1` or `x=()`.
            j += 1;
            while v
                .get(j)
                .is_some_and(|&b| !is_ws(b) && !matches!(b, b'>' | b'"' | b'\'' | b'`'))
            {
                j += 1;
            }
        }
        i = j;
    }
    None
}

/// A script-running URL at `v[i..]`; tabs and newlines inside the scheme are ignored as
/// URL parsers do. Returns the end of the scheme (and `data:` media type).
fn script_url(v: &[u8], i: usize) -> Option<usize> {
    const SCHEMES: &[&[u8]] = &[b"javascript:", b"vbscript:", b"livescript:"];
    for s in SCHEMES {
        if let Some(e) = match_skipping_ws(v, i, s) {
            return Some(e);
        }
    }
    let e = match_skipping_ws(v, i, b"data:")?;
    let rest = v.get(e..)?;
    const TYPES: &[&[u8]] = &[
        b"text/html",
        b"image/svg+xml",
        b"text/xml",
        b"application/xhtml",
        b"text/javascript",
        b"application/javascript",
    ];
    TYPES
        .iter()
        .find(|t| rest.len() >= t.len() && rest[..t.len()].eq_ignore_ascii_case(t))
        .map(|t| e + t.len())
}

/// Matches `pat` case-insensitively at `v[i..]`, skipping C0 control bytes in `v`.
fn match_skipping_ws(v: &[u8], mut i: usize, pat: &[u8]) -> Option<usize> {
    let mut p = 0;
    while p < pat.len() {
        let b = *v.get(i)?;
        // Tab, CR and LF are removed by URL parsers; other C0 controls inside the scheme
        // are skipped too (an over-decoding that can only add matches).
        if b < b' ' && p > 0 {
            i += 1;
            continue;
        }
        if !b.eq_ignore_ascii_case(&pat[p]) {
            return None;
        }
        i += 1;
        p += 1;
    }
    Some(i)
}

/// Longest CSS comment skipped inside a keyword; the bound keeps each attempt constant.
const MAX_CSS_COMMENT: usize = 64;

/// Matches the lowercase keyword `kw` at `v[i..]` case-insensitively, ignoring CSS comments
/// (`expr/**/ession`) and backslashes (`\-moz-binding`) between its letters; returns the end.
fn css_keyword_at(v: &[u8], mut i: usize, kw: &[u8]) -> Option<usize> {
    let mut p = 0;
    while p < kw.len() {
        let b = *v.get(i)?;
        if p > 0 && b == b'\\' {
            i += 1;
            continue;
        }
        if p > 0 && b == b'/' && v.get(i + 1) == Some(&b'*') {
            let body = v.get(i + 2..v.len().min(i + 2 + MAX_CSS_COMMENT))?;
            i += 2 + memchr::memmem::find(body, b"*/")? + 2;
            continue;
        }
        if b.to_ascii_lowercase() != kw[p] {
            return None;
        }
        i += 1;
        p += 1;
    }
    Some(i)
}

/// CSS that runs script or loads code: old-IE `expression(` (also `\28` for the
/// parenthesis), `behavior:`/`-moz-binding:`, `@import`, and a script URL in `url(`.
/// One pass over the value, trying the keywords only at their first letters, instead of a
/// window scan per keyword.
fn css_danger(v: &[u8]) -> Option<usize> {
    for (i, &b) in v.iter().enumerate() {
        if !matches!(b | 0x20, b'e' | b'b' | b'u') && b != b'-' && b != b'@' {
            continue;
        }
        let after_ws = |e: usize| {
            let mut k = e;
            while v.get(k).is_some_and(|&b| is_ws(b)) {
                k += 1;
            }
            k
        };
        let hit = if let Some(e) = css_keyword_at(v, i, b"expression") {
            let k = after_ws(e);
            (v.get(k) == Some(&b'(')
                || v.get(k..k + 3).is_some_and(|t| t == b"\\28")
                || v.get(k..k + 5).is_some_and(|t| t == b"\\0028"))
            .then_some(k)
        } else if let Some(e) = css_keyword_at(v, i, b"-moz-binding")
            .or_else(|| css_keyword_at(v, i, b"behavior"))
            .or_else(|| css_keyword_at(v, i, b"behaviour"))
        {
            let k = after_ws(e);
            (v.get(k) == Some(&b':')).then_some(k)
        } else if let Some(e) = css_keyword_at(v, i, b"@import") {
            Some(e)
        } else if let Some(e) = css_keyword_at(v, i, b"url(") {
            script_url(v, skip_ws_quotes(v, e))
        } else {
            None
        };
        if hit.is_some() {
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::detect;

    fn hit(s: &str) -> bool {
        detect(s.as_bytes()).is_some()
    }

    #[test]
    fn finds_tags_and_handlers() {
        for s in [
            "<script>alert(1)</script>",
            "x<ScRiPt src=//e.example/a.js>",
            "<svg/onload=alert(1)>",
            "<img src=x onerror=alert(1)>",
            "<details open ontoggle=x()>",
            "<a href=\"java\tscript:alert(1)\">x</a>",
            "<a href=JAVASCRIPT:x>",
            "<iframe src=//evil>",
            "<object data=x>",
            "<form><button formaction=javascript:x>",
            "<math><mi xlink:href=\"javascript:x\">",
            "<div style=\"width:expression(alert(1))\">",
            "<x/onclick=y>",
            "<iframe srcdoc='data:text/html,x'>",
            "\" onmouseover=alert(1) x=\"",
            "' autofocus onfocus='x",
            "\"/onfocus=x//",
            "\"onfocus=alert(1)//",
            "javascript:alert(1)",
            "  data:text/html;base64,PHN2Zz4=",
            "<svg><script>x</script>",
            "\"><track/onerror",
            "<x:script xmlns:x=\"http://www.w3.org/1999/xhtml\">",
            "<a href=\"\x01javascript:x\">",
            "<a href=\"javas\x05cript:x\">",
            "<IMG SRC=\" \x0e  javascript:alert(1);\">",
            "<IMG STYLE=\"x:expr/*c*/ession(alert(1))\">",
            "<div style=\"x:expression\\28alert(1)\\29\">",
            "<STYLE>@im\\port'x.css';</STYLE>",
            "<style>BODY{-moz-binding:url(x.xml#y)}</style>",
            "<div style=\"background:url('javascript:x')\">",
            "<meta http-equiv=\"refresh\" content=\"0;url=//e.example\">",
            "<span datasrc=#i datafld=c dataformatas=html></span>",
            "<set attributeName=\"onmouseover\" to=\"alert(1)\"/>",
            "<?import namespace=\"t\" implementation=\"#default#time2\">",
            "<?xml-stylesheet type=\"text/css\" href=\"data:,*{x:expression(write(2));}\"?>",
            "<!DOCTYPE x [ <!ATTLIST img onerror CDATA \"alert(1)\"> ]>",
            "onerror=eval;throw'alert(1)'",
            " onmouseover=alert(1)>",
            "\"Onx=() onMouSeoVer=prompt(1)>",
        ] {
            assert!(hit(s), "{s}");
        }
    }

    #[test]
    fn ignores_prose_and_markup() {
        for s in [
            "a < b and c > d",
            "<b>bold</b> and <i>it</i>",
            "<a href=\"/docs\" title=\"x\">docs</a>",
            "online = true",
            "x = \"one\" + 'two'",
            "the scripting language",
            "<scripting>",
            "</script>",
            "see https://example.com/a?b=c",
            "\"label\": \"done\"",
            "<?xml version=\"1.0\"?><svg></svg>",
            "the data: a table",
            "JavaScript: Basics of JavaScript",
            "<ns:scripted>",
            "say \"online",
            "<p class=\"note\">Note: onboarding=yes</p>",
            "onboarding=yes",
            "<?xml-stylesheet type=\"text/xsl\" href=\"style.xsl\"?>",
            "<style>p { color: red; background: url(/img/a.png) }</style>",
            "<meta name=\"viewport\" content=\"width=device-width\">",
            "<div style=\"margin: 0 auto\">expression of interest</div>",
            "",
        ] {
            assert!(!hit(s), "{s}");
        }
    }

    #[test]
    fn odd_bytes() {
        assert!(!hit("<"));
        assert!(!hit("<a"));
        assert!(!hit("<a href="));
        assert!(!hit("<a href=\""));
        assert!(!hit("\""));
        assert!(detect(&[b'<', 0xff, b'=', 0]).is_none());
        let long = "<a ".repeat(10_000);
        assert!(!hit(&long));
        let quotes = "\" x".repeat(10_000);
        assert!(!hit(&quotes));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(v in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = detect(&v);
        }

        #[test]
        fn never_panics_on_markup(s in "[<>a-z =\"'/:\t]{0,64}") {
            if let Some((a, b)) = detect(s.as_bytes()) {
                proptest::prop_assert!(a <= b && b <= s.len());
            }
        }
    }
}
