//! Usage after the response: the fixture bodies and streams in `tests/data/usage/`
//! (described by `cases.toml`), streams split in every way, other line endings, and
//! malformed input with the result each must give.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use edgeward::cost::usage::{usage_from_body, Provider, Usage, UsageSource, UsageTracker};
use proptest::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Cases {
    case: Vec<Case>,
}

#[derive(Deserialize, Clone)]
struct Case {
    name: String,
    file: String,
    provider: String,
    kind: String,
    prompt: Option<u64>,
    cached: Option<u64>,
    creation: Option<u64>,
    output: Option<u64>,
    reasoning: Option<u64>,
    source: Option<String>,
    error: Option<String>,
}

impl Case {
    fn provider(&self) -> Provider {
        match self.provider.as_str() {
            "openai-chat" => Provider::OpenAiChat,
            "openai-completions" => Provider::OpenAiCompletions,
            "openai-responses" => Provider::OpenAiResponses,
            "openai-embeddings" => Provider::OpenAiEmbeddings,
            "anthropic" => Provider::Anthropic,
            p => panic!("{}: unknown provider {p}", self.name),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(data_dir().join(&self.file)).unwrap()
    }

    fn expected(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt.unwrap(),
            cached_prompt_tokens: self.cached.unwrap(),
            cache_creation_tokens: self.creation.unwrap(),
            output_tokens: self.output.unwrap(),
            reasoning_tokens: self.reasoning.unwrap(),
            source: match self.source.as_deref().unwrap() {
                "reported" => UsageSource::Reported,
                "counted" => UsageSource::Counted,
                "partial" => UsageSource::Partial,
                s => panic!("{}: unknown source {s}", self.name),
            },
        }
    }
}

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/usage")
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(data_dir().join("cases.toml")).unwrap();
    toml::from_str::<Cases>(&text).unwrap().case
}

fn stream_cases() -> Vec<(Case, Vec<u8>)> {
    cases()
        .into_iter()
        .filter(|c| c.kind == "stream")
        .map(|c| {
            let b = c.bytes();
            (c, b)
        })
        .collect()
}

/// The test counter: one token per Unicode scalar value, so a delta whose bytes were
/// mangled at a chunk boundary (e.g. replaced by U+FFFD) changes the count.
fn chars(s: &str) -> u64 {
    s.chars().count() as u64
}

fn tracker(p: Provider) -> UsageTracker {
    UsageTracker::new(p, Box::new(chars))
}

fn run(p: Provider, chunks: &[&[u8]]) -> Usage {
    let mut t = tracker(p);
    for c in chunks {
        t.feed(c);
    }
    t.finish()
}

fn run_split(p: Provider, bytes: &[u8], cuts: &[usize]) -> Usage {
    let mut t = tracker(p);
    let mut at = 0;
    for &c in cuts {
        t.feed(&bytes[at..c]);
        at = c;
    }
    t.feed(&bytes[at..]);
    t.finish()
}

#[test]
fn case_names_are_unique_and_every_fixture_is_used() {
    let cases = cases();
    let mut names: Vec<_> = cases.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    let n = names.len();
    names.dedup();
    assert_eq!(names.len(), n, "duplicate case names");
    for entry in std::fs::read_dir(data_dir()).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        if file != "cases.toml" {
            assert!(cases.iter().any(|c| c.file == file), "{file} has no case");
        }
    }
}

#[test]
fn bodies_give_the_expected_usage() {
    for c in cases().into_iter().filter(|c| c.kind == "body") {
        let got = usage_from_body(c.provider(), &c.bytes());
        match &c.error {
            Some(code) => assert_eq!(got.unwrap_err().code(), code, "{}", c.name),
            None => assert_eq!(got.unwrap(), c.expected(), "{}", c.name),
        }
    }
}

#[test]
fn streams_give_the_expected_usage() {
    for (c, bytes) in stream_cases() {
        let mut t = tracker(c.provider());
        t.feed(&bytes);
        assert_eq!(t.skipped_events(), 0, "{}", c.name);
        assert_eq!(t.malformed_events(), 0, "{}", c.name);
        assert_eq!(t.finish(), c.expected(), "{}", c.name);
    }
}

#[test]
fn streams_split_at_every_offset_give_identical_usage() {
    for (c, bytes) in stream_cases() {
        let want = c.expected();
        for cut in 0..=bytes.len() {
            assert_eq!(
                run_split(c.provider(), &bytes, &[cut]),
                want,
                "{} cut at {cut}",
                c.name
            );
        }
        // And one byte at a time: every boundary at once.
        let cuts: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(
            run_split(c.provider(), &bytes, &cuts),
            want,
            "{} bytewise",
            c.name
        );
    }
}

fn with_line_ending(bytes: &[u8], eol: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for &b in bytes {
        if b == b'\n' {
            out.extend_from_slice(eol);
        } else {
            out.push(b);
        }
    }
    out
}

#[test]
fn crlf_and_cr_line_endings_give_identical_usage_at_every_offset() {
    for (c, bytes) in stream_cases() {
        let want = c.expected();
        for eol in [&b"\r\n"[..], b"\r"] {
            let s = with_line_ending(&bytes, eol);
            for cut in 0..=s.len() {
                assert_eq!(
                    run_split(c.provider(), &s, &[cut]),
                    want,
                    "{} eol {eol:?} cut at {cut}",
                    c.name
                );
            }
        }
    }
}

#[test]
fn mixed_line_endings_and_a_bom_are_accepted() {
    let (c, bytes) = stream_cases()
        .into_iter()
        .find(|(c, _)| c.name == "anthropic-stream")
        .unwrap();
    // Rotate through the three line endings, so `\r` is followed by `\n` of the next
    // ending only where it is a CRLF pair.
    let mut s = b"\xEF\xBB\xBF".to_vec();
    let mut k = 0;
    for &b in &bytes {
        if b == b'\n' {
            s.extend_from_slice([&b"\n"[..], b"\r\n", b"\r"][k % 3]);
            k += 1;
        } else {
            s.push(b);
        }
    }
    for cut in 0..=s.len() {
        assert_eq!(
            run_split(c.provider(), &s, &[cut]),
            c.expected(),
            "cut at {cut}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random multi-chunk splits (including empty chunks) give the same usage.
    #[test]
    fn random_splits_give_identical_usage(
        which in 0usize..64,
        raw_cuts in proptest::collection::vec(0usize..1 << 16, 0..40),
        eol in 0usize..3,
    ) {
        let all = stream_cases();
        let (c, bytes) = &all[which % all.len()];
        let bytes = with_line_ending(bytes, [&b"\n"[..], b"\r\n", b"\r"][eol]);
        let mut cuts: Vec<usize> = raw_cuts.iter().map(|&x| x % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        prop_assert_eq!(run_split(c.provider(), &bytes, &cuts), c.expected(), "{}", c.name.clone());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Damaged streams (bytes overwritten with line breaks, quotes, braces, invalid UTF-8,
    /// or anything) never panic, and their usage, whatever it is, still does not depend on
    /// where the chunks end.
    #[test]
    fn damaged_streams_are_split_invariant(
        which in 0usize..64,
        edits in proptest::collection::vec(
            (0usize..1 << 16, prop_oneof![
                Just(b'\n'), Just(b'\r'), Just(b'"'), Just(b'{'), Just(b'}'), Just(b':'),
                Just(0xC3u8), Just(0xFF), any::<u8>(),
            ]),
            1..8,
        ),
        raw_cuts in proptest::collection::vec(0usize..1 << 16, 1..20),
    ) {
        let all = stream_cases();
        let (c, bytes) = &all[which % all.len()];
        let mut bytes = bytes.clone();
        for (at, b) in edits {
            let n = bytes.len();
            bytes[at % n] = b;
        }
        let mut cuts: Vec<usize> = raw_cuts.iter().map(|&x| x % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let whole = run_split(c.provider(), &bytes, &[]);
        prop_assert_eq!(run_split(c.provider(), &bytes, &cuts), whole, "{}", c.name.clone());
    }

    /// Damaged bodies never panic; they give usage or one of the defined errors.
    #[test]
    fn damaged_bodies_give_usage_or_a_defined_error(
        which in 0usize..64,
        edits in proptest::collection::vec((0usize..1 << 16, any::<u8>()), 1..6),
        cut in 0usize..1 << 16,
    ) {
        let all: Vec<Case> = cases().into_iter().filter(|c| c.kind == "body").collect();
        let c = &all[which % all.len()];
        let mut bytes = c.bytes();
        for (at, b) in edits {
            let n = bytes.len();
            bytes[at % n] = b;
        }
        bytes.truncate(cut % (bytes.len() + 1) + bytes.len() / 2);
        if let Err(e) = usage_from_body(c.provider(), &bytes) {
            prop_assert!(edgeward::error::all_error_codes().contains(&e.code()));
        }
    }
}

/// The texts given to the counter, byte by byte through multi-byte characters, are exactly
/// the deltas: nothing is cut inside a character or replaced.
#[test]
fn multibyte_text_split_inside_characters_reaches_the_counter_intact() {
    let (c, bytes) = stream_cases()
        .into_iter()
        .find(|(c, _)| c.name == "openai-chat-stream-include-usage")
        .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let s2 = Arc::clone(&seen);
    let mut t = UsageTracker::new(
        c.provider(),
        Box::new(move |s: &str| {
            s2.lock().unwrap().push_str(s);
            1
        }),
    );
    for b in bytes.chunks(1) {
        t.feed(b);
    }
    assert_eq!(t.finish(), c.expected());
    assert_eq!(
        *seen.lock().unwrap(),
        "The café on the corner serves 日本語 tea 🙂.\nSay \"hi\" to Zoë."
    );
}

// ---- truncated streams ---------------------------------------------------------------

/// Every prefix of a stream that ends before its terminal event yields `Partial`; a longer
/// one yields either `Partial` or the full usage; none panics.
#[test]
fn truncated_streams_yield_partial_usage() {
    let markers: [&[u8]; 5] = [
        b"[DONE]",
        b"\"choices\":[],\"usage\":{",
        b"message_stop",
        b"response.completed",
        b"response.failed",
    ];
    for (c, bytes) in stream_cases() {
        let full = c.expected();
        let terminal = markers
            .iter()
            .filter_map(|m| bytes.windows(m.len()).position(|w| w == *m))
            .min()
            .unwrap();
        for cut in 0..bytes.len() {
            let u = run_split(c.provider(), &bytes[..cut], &[]);
            if cut < terminal {
                assert_eq!(u.source, UsageSource::Partial, "{} cut at {cut}", c.name);
            } else {
                assert!(
                    u == full || u.source == UsageSource::Partial,
                    "{} cut at {cut}: {u:?}",
                    c.name
                );
            }
        }
    }
}

#[test]
fn a_stream_cut_inside_the_last_json_does_not_count_it() {
    let head = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"abc\"}}]}\n\n";
    let cut = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"defgh";
    let mut t = tracker(Provider::OpenAiChat);
    t.feed(head);
    t.feed(cut);
    assert_eq!(t.usage_so_far().output_tokens, 3);
    let u = t.finish();
    assert_eq!((u.output_tokens, u.source), (3, UsageSource::Partial));
}

#[test]
fn usage_so_far_follows_the_stream() {
    let mut t = tracker(Provider::Anthropic);
    let bytes = std::fs::read(data_dir().join("anthropic_stream.sse")).unwrap();
    let pieces: Vec<&[u8]> = bytes.chunks(97).collect();
    let mut counted = 0;
    for (i, piece) in pieces.iter().enumerate() {
        t.feed(piece);
        let u = t.usage_so_far();
        if i + 1 < pieces.len() {
            // Until `message_stop` the stream may still be cut: a lower bound. The count
            // grows with the deltas until the server's cumulative report replaces it.
            assert_eq!(u.source, UsageSource::Partial, "piece {i}");
            if u.output_tokens != 89 {
                assert!(u.output_tokens >= counted, "piece {i}");
                counted = u.output_tokens;
            }
        }
    }
    assert_eq!(counted, 155);
    let u = t.usage_so_far();
    assert_eq!((u.output_tokens, u.source), (89, UsageSource::Reported));
    assert_eq!(t.finish(), u);
}

#[test]
fn a_last_event_without_its_blank_line_is_still_read() {
    let s = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}";
    let u = run(Provider::OpenAiChat, &[s]);
    assert_eq!(
        (u.prompt_tokens, u.output_tokens, u.source),
        (3, 4, UsageSource::Reported)
    );
    let u = run(
        Provider::OpenAiChat,
        &[b"data: {\"choices\":[{\"delta\":{\"content\":\"xy\"}}]}\n\ndata: [DONE]"],
    );
    assert_eq!((u.output_tokens, u.source), (2, UsageSource::Counted));
}

// ---- malformed streams -----------------------------------------------------------------

fn chat_delta(text: &str) -> String {
    format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n")
}

#[test]
fn garbage_lines_are_ignored_as_the_sse_spec_says() {
    // Lines without a colon are fields with an empty value; unknown field names, comments,
    // `id` and `retry` are ignored. None of them touches the usage.
    let s = format!(
        "garbage without colon\nnot-a-field: 12\n: comment\nid: 7\nretry: 1000\n\n{}\u{1}\u{7f}binary junk\n\n{}data: [DONE]\n\n",
        chat_delta("hello"),
        chat_delta("world"),
    );
    let mut t = tracker(Provider::OpenAiChat);
    t.feed(s.as_bytes());
    assert_eq!(t.malformed_events(), 0);
    let u = t.finish();
    assert_eq!((u.output_tokens, u.source), (10, UsageSource::Counted));
}

#[test]
fn invalid_json_in_a_data_line_skips_that_event_and_makes_the_count_partial() {
    let s = format!(
        "{}data: {{\"choices\":[{{\"delta\":{{\"content\":\"lost\"\n\n{}data: [DONE]\n\n",
        chat_delta("abc"),
        chat_delta("de"),
    );
    let mut t = tracker(Provider::OpenAiChat);
    t.feed(s.as_bytes());
    assert_eq!(t.malformed_events(), 1);
    let u = t.finish();
    assert_eq!((u.output_tokens, u.source), (5, UsageSource::Partial));

    // A server usage report makes lost deltas irrelevant: it stays Reported.
    let s = format!(
        "data: {{not json}}\n\n{}data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":8,\"completion_tokens\":2}}}}\n\ndata: [DONE]\n\n",
        chat_delta("ab"),
    );
    let u = run(Provider::OpenAiChat, &[s.as_bytes()]);
    assert_eq!(
        (u.prompt_tokens, u.output_tokens, u.source),
        (8, 2, UsageSource::Reported)
    );
}

#[test]
fn wrong_types_and_absurd_numbers_in_events_make_them_malformed() {
    for bad in [
        "data: {\"choices\":[{\"delta\":{\"content\":42}}]}\n\n",
        "data: {\"choices\":{}}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":-1,\"completion_tokens\":2}}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1e3,\"completion_tokens\":2}}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":99999999999999999999999,\"completion_tokens\":2}}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9007199254740993,\"completion_tokens\":2}}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":\"5\",\"completion_tokens\":2}}\n\n",
        "data: [1,2,3]\n\n",
    ] {
        let mut t = tracker(Provider::OpenAiChat);
        t.feed(chat_delta("abc").as_bytes());
        t.feed(bad.as_bytes());
        t.feed(b"data: [DONE]\n\n");
        assert_eq!(t.malformed_events(), 1, "{bad}");
        let u = t.finish();
        assert_eq!((u.prompt_tokens, u.output_tokens, u.source), (0, 3, UsageSource::Partial), "{bad}");
    }
}

#[test]
fn invalid_utf8_is_replaced_not_fatal() {
    // As the event-stream format decodes: invalid sequences become U+FFFD, one per
    // maximal invalid subpart, and the event is still read.
    let mut s = b"data: {\"choices\":[{\"delta\":{\"content\":\"a".to_vec();
    s.extend_from_slice(b"\xFF\xC3");
    s.extend_from_slice(b"b\"}}]}\n\ndata: [DONE]\n\n");
    let mut t = tracker(Provider::OpenAiChat);
    t.feed(&s);
    assert_eq!(t.malformed_events(), 0);
    let u = t.finish();
    assert_eq!((u.output_tokens, u.source), (4, UsageSource::Counted)); // a, U+FFFD ×2, b
}

#[test]
fn a_10_mib_event_without_newline_is_skipped_and_the_result_is_partial() {
    let mut t = tracker(Provider::OpenAiChat);
    t.feed(chat_delta("abc").as_bytes());
    t.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"");
    let block = vec![b'x'; 64 * 1024];
    for _ in 0..160 {
        t.feed(&block);
    }
    assert_eq!(t.usage_so_far().output_tokens, 3);
    let u = t.finish();
    assert_eq!((u.output_tokens, u.source), (3, UsageSource::Partial));
}

#[test]
fn an_oversized_event_is_skipped_and_the_stream_goes_on() {
    let big = "y".repeat(2 << 20);
    let s = format!(
        "{}data: {{\"choices\":[{{\"delta\":{{\"content\":\"{big}\"}}}}]}}\n\n{}data: [DONE]\n\n",
        chat_delta("abc"),
        chat_delta("de"),
    );
    for chunk in [s.len(), 4096, 1 << 20] {
        let mut t = tracker(Provider::OpenAiChat);
        for piece in s.as_bytes().chunks(chunk) {
            t.feed(piece);
        }
        assert_eq!(t.skipped_events(), 1);
        let u = t.finish();
        // The count lacks the skipped text, so it is a lower bound.
        assert_eq!(
            (u.output_tokens, u.source),
            (5, UsageSource::Partial),
            "chunks of {chunk}"
        );
    }

    // Many small data lines that add up past the cap are skipped the same way.
    let line = format!("data: {}\n", "z".repeat(1000));
    let mut t = tracker(Provider::OpenAiChat);
    for _ in 0..2000 {
        t.feed(line.as_bytes());
    }
    t.feed(b"\n");
    t.feed(chat_delta("abcd").as_bytes());
    t.feed(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n");
    assert_eq!(t.skipped_events(), 1);
    // The report came after the skipped event, so it covers it.
    assert_eq!(t.finish().source, UsageSource::Reported);
}

/// The Responses fixture with a generated image (3 MiB of base64) in the output that
/// `response.completed` repeats, and `metadata` replaced by `metadata_json`.
fn responses_with_image(metadata_json: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(data_dir().join("openai_responses_stream.sse")).unwrap();
    let done = text
        .rfind("data: {\"type\":\"response.completed\"")
        .unwrap();
    let (head, last) = text.split_at(done);
    let image: String = (0..3 << 20)
        .map(|i| {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[i * 7 % 64] as char
        })
        .collect();
    let last = last.replacen(
        "\"output\":[",
        &format!("\"output\":[{{\"id\":\"ig_1\",\"type\":\"image_generation_call\",\"status\":\"completed\",\"result\":\"{image}\"}},"),
        1,
    );
    let last = last.replacen(
        "\"metadata\":{}",
        &format!("\"metadata\":{metadata_json}"),
        1,
    );
    format!("{head}{last}").into_bytes()
}

#[test]
fn an_oversized_responses_terminal_event_still_yields_its_usage() {
    let want = cases()
        .into_iter()
        .find(|c| c.name == "openai-responses-stream-completed")
        .unwrap()
        .expected();
    // A string that looks like a usage report after the real one is still a string.
    let fake = r#"{"note":"\"usage\":{\"input_tokens\":1,\"output_tokens\":1}"}"#;
    for metadata in ["{}", fake] {
        let s = responses_with_image(metadata);
        assert!(s.len() > 3 << 20);
        for chunk in [s.len(), 1 << 20, 65536, 7919, 1448] {
            let mut t = tracker(Provider::OpenAiResponses);
            for piece in s.chunks(chunk) {
                t.feed(piece);
            }
            assert_eq!(t.skipped_events(), 1);
            assert_eq!(t.finish(), want, "chunks of {chunk}, metadata {metadata}");
        }
    }
    // Without a usage object in it, the skipped terminal event leaves the stream Partial.
    let s = String::from_utf8(responses_with_image("{}")).unwrap();
    let usage = r#""usage":{"input_tokens":86,"input_tokens_details":{"cached_tokens":0},"output_tokens":412,"output_tokens_details":{"reasoning_tokens":384},"total_tokens":498}"#;
    assert_eq!(s.matches(usage).count(), 1);
    let s = s.replacen(usage, "\"usage\":null", 1);
    let u = run(Provider::OpenAiResponses, &[s.as_bytes()]);
    assert_eq!((u.output_tokens, u.source), (103, UsageSource::Partial));
}

#[test]
fn an_empty_or_eventless_stream_is_partial_zero() {
    for s in [&b""[..], b"\n\n\n", b": keep-alive\n\n", b"event: ping\n\n"] {
        for p in [
            Provider::OpenAiChat,
            Provider::OpenAiResponses,
            Provider::Anthropic,
        ] {
            assert_eq!(run(p, &[s]), Usage::default(), "{s:?}");
        }
    }
}

#[test]
fn anthropic_error_event_mid_stream_is_partial() {
    let bytes = std::fs::read(data_dir().join("anthropic_stream.sse")).unwrap();
    let at = bytes
        .windows(25)
        .position(|w| w == b"event: content_block_stop")
        .unwrap();
    let mut s = bytes[..at].to_vec();
    s.extend_from_slice(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
    let u = run(Provider::Anthropic, &[&s]);
    assert_eq!(u.source, UsageSource::Partial);
    assert_eq!((u.prompt_tokens, u.cached_prompt_tokens), (2520, 2048));
    assert_eq!((u.output_tokens, u.reasoning_tokens), (64, 64)); // the thinking deltas seen
}

// ---- bodies ------------------------------------------------------------------------------

fn body_err(p: Provider, body: &str) -> &'static str {
    usage_from_body(p, body.as_bytes()).unwrap_err().code()
}

#[test]
fn bodies_with_bad_usage_give_defined_errors() {
    use Provider::*;
    let cases: &[(Provider, &str, &str)] = &[
        (OpenAiChat, "", "usage.malformed_json"),
        (OpenAiChat, "{\"usage\":{\"prompt_tokens\":1,", "usage.malformed_json"),
        (OpenAiChat, "{} trailing", "usage.malformed_json"),
        (OpenAiChat, "not json", "usage.malformed_json"),
        (OpenAiChat, "{}", "usage.missing"),
        (OpenAiChat, "{\"usage\":null}", "usage.missing"),
        (OpenAiChat, "{\"usage\":{}}", "usage.missing"),
        (OpenAiChat, "{\"usage\":{\"prompt_tokens\":3}}", "usage.missing"),
        (Anthropic, "{\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}", "usage.missing"),
        (OpenAiResponses, "{\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}", "usage.missing"),
        (OpenAiEmbeddings, "{\"usage\":{}}", "usage.missing"),
        (Anthropic, "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}", "usage.missing"),
        (OpenAiChat, "[]", "usage.wrong_type"),
        (OpenAiChat, "\"usage\"", "usage.wrong_type"),
        (OpenAiChat, "{\"usage\":\"12\"}", "usage.wrong_type"),
        (OpenAiChat, "{\"usage\":[1,2]}", "usage.wrong_type"),
        (OpenAiChat, "{\"usage\":{\"prompt_tokens\":\"12\",\"completion_tokens\":1}}", "usage.wrong_type"),
        (OpenAiChat, "{\"usage\":{\"prompt_tokens\":true,\"completion_tokens\":1}}", "usage.wrong_type"),
        (OpenAiChat, "{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"prompt_tokens_details\":3}}", "usage.wrong_type"),
        (OpenAiChat, "{\"usage\":{\"prompt_tokens\":-1,\"completion_tokens\":1}}", "usage.out_of_range"),
        (OpenAiChat, "{\"usage\":{\"prompt_tokens\":1.5,\"completion_tokens\":1}}", "usage.out_of_range"),
        (OpenAiChat, "{\"usage\":{\"prompt_tokens\":12.0,\"completion_tokens\":1}}", "usage.out_of_range"),
        (OpenAiChat, "{\"usage\":{\"prompt_tokens\":1e2,\"completion_tokens\":1}}", "usage.out_of_range"),
        (OpenAiChat, "{\"usage\":{\"prompt_tokens\":18446744073709551616,\"completion_tokens\":1}}", "usage.out_of_range"),
        (OpenAiChat, "{\"usage\":{\"prompt_tokens\":18446744073709551615,\"completion_tokens\":1}}", "usage.out_of_range"),
        (OpenAiChat, "{\"usage\":{\"prompt_tokens\":9007199254740993,\"completion_tokens\":1}}", "usage.out_of_range"),
        (OpenAiChat, "{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"completion_tokens_details\":{\"reasoning_tokens\":-5}}}", "usage.out_of_range"),
        (Anthropic, "{\"usage\":{\"input_tokens\":1,\"output_tokens\":1,\"cache_read_input_tokens\":1e400}}", "usage.malformed_json"),
    ];
    for (p, body, code) in cases {
        assert_eq!(body_err(*p, body), *code, "{p:?} {body}");
    }
    // Invalid UTF-8 is malformed JSON where it is read (a key, the usage object)...
    let e = usage_from_body(OpenAiChat, b"{\"usage\":{\"\xFF\":1}}").unwrap_err();
    assert_eq!(e.code(), "usage.malformed_json");
    // ...and not looked at in strings the parser skips (the output text): the usage is
    // still the server's.
    let u = usage_from_body(
        OpenAiChat,
        b"{\"x\":\"\xFF\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}",
    )
    .unwrap();
    assert_eq!((u.prompt_tokens, u.output_tokens), (1, 2));
}

#[test]
fn body_edge_values() {
    use Provider::*;
    // 2^53 itself is accepted; null details are absent; parts are clamped to their totals.
    let u = usage_from_body(
        OpenAiChat,
        b"{\"usage\":{\"prompt_tokens\":9007199254740992,\"completion_tokens\":0,\"prompt_tokens_details\":null,\"completion_tokens_details\":{\"reasoning_tokens\":null}}}",
    )
    .unwrap();
    assert_eq!((u.prompt_tokens, u.output_tokens), (1 << 53, 0));
    let u = usage_from_body(
        OpenAiChat,
        b"{\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":5,\"prompt_tokens_details\":{\"cached_tokens\":99},\"completion_tokens_details\":{\"reasoning_tokens\":7}}}",
    )
    .unwrap();
    assert_eq!((u.cached_prompt_tokens, u.reasoning_tokens), (10, 5));
    // Embeddings servers that only give total_tokens.
    let u = usage_from_body(OpenAiEmbeddings, b"{\"usage\":{\"total_tokens\":12}}").unwrap();
    assert_eq!(u.prompt_tokens, 12);
    // Anthropic's three maximal parts still sum exactly.
    let m = 1u64 << 53;
    let body = format!("{{\"usage\":{{\"input_tokens\":{m},\"cache_creation_input_tokens\":{m},\"cache_read_input_tokens\":{m},\"output_tokens\":1}}}}");
    assert_eq!(
        usage_from_body(Anthropic, body.as_bytes())
            .unwrap()
            .prompt_tokens,
        3 * m
    );
}

#[test]
fn a_large_body_is_read_without_trouble() {
    // 8 MiB of output text before the usage: skipped by the parser, not materialized.
    let text = "lorem ipsum ".repeat(700_000);
    let body = format!(
        "{{\"choices\":[{{\"message\":{{\"content\":\"{text}\"}}}}],\"usage\":{{\"prompt_tokens\":4,\"completion_tokens\":2000000}}}}"
    );
    let u = usage_from_body(Provider::OpenAiChat, body.as_bytes()).unwrap();
    assert_eq!(u.output_tokens, 2_000_000);
}

#[test]
fn the_tracker_is_send() {
    fn send<T: Send>() {}
    send::<UsageTracker>();
}
