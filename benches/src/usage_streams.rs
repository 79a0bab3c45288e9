//! Realistic server-sent-event response streams for the usage tracker's bench and profile.

const TARGET: usize = 64 * 1024;

/// Words of ordinary prose; each delta carries one or two, as servers stream them.
const WORDS: &[&str] = &[
    " The",
    " query",
    " joins",
    " the",
    " orders",
    " table",
    " with",
    " customers",
    ",",
    " then",
    " groups",
    " by",
    " région",
    " and",
    " sorts",
    " the",
    " totals",
    ".",
    "\\n",
    " Use",
    " an",
    " index",
    " on",
    " `customer_id`",
    " so",
    " the",
    " join",
    " stays",
    " fast",
    " 🙂",
];

/// A streamed OpenAI chat completion of about 64 KiB (one word per delta, `include_usage`
/// set), as the server sends it.
pub fn openai_stream() -> Vec<u8> {
    let mut s = String::new();
    let head = r#"{"id":"chatcmpl-AY7cN3qXr2a9bWkZ","object":"chat.completion.chunk","created":1764201600,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0705bf87c0","choices":[{"index":0,"delta":{"#;
    s.push_str(&format!(
        "data: {head}\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
    ));
    let mut i = 0;
    while s.len() < TARGET - 600 {
        let w = WORDS[i % WORDS.len()];
        s.push_str(&format!(
            "data: {head}\"content\":\"{w}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
        ));
        i += 1;
    }
    s.push_str(&format!(
        "data: {head}}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":null}}\n\n"
    ));
    s.push_str("data: {\"id\":\"chatcmpl-AY7cN3qXr2a9bWkZ\",\"object\":\"chat.completion.chunk\",\"created\":1764201600,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_0705bf87c0\",\"choices\":[],\"usage\":{\"prompt_tokens\":1432,\"completion_tokens\":400,\"total_tokens\":1832,\"prompt_tokens_details\":{\"cached_tokens\":1024,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

/// A streamed Anthropic message of about 64 KiB (two words per text delta), as the server
/// sends it.
pub fn anthropic_stream() -> Vec<u8> {
    let mut s = String::from(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":2048,\"output_tokens\":3,\"service_tier\":\"standard\"}}}\n\n\
         event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
         event: ping\ndata: {\"type\": \"ping\"}\n\n",
    );
    let mut i = 0;
    while s.len() < TARGET - 400 {
        let w = format!("{}{}", WORDS[i % WORDS.len()], WORDS[(i + 7) % WORDS.len()]);
        s.push_str(&format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{w}\"}}}}\n\n"
        ));
        i += 1;
    }
    s.push_str(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
         event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":900}}\n\n\
         event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    s.into_bytes()
}
