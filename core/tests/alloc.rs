//! No heap allocation per inspect once the scratch is warm, for a request without escapes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use edgeward::{Engine, Request};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// The test binary's allocator counts calls; it delegates every operation to `System`.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn warm_inspect_does_not_allocate() {
    let engine = Engine::default_engine();
    let mut scratch = engine.new_scratch();
    let mut body = br#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":""#.to_vec();
    for i in 0..60 {
        body.extend(
            format!("Paragraph {i} about the history of trade routes and the cities along them. ")
                .as_bytes(),
        );
    }
    body.extend(br#""}],"max_tokens":512,"temperature":0.2}"#);
    let headers: &[(&[u8], &[u8])] = &[
        (b"host", b"api.example.com"),
        (b"content-type", b"application/json"),
        (b"authorization", b"Bearer sk-test"),
        (b"user-agent", b"OpenAI/Python 1.40.0"),
    ];
    let req = Request::new(b"POST", b"/v1/chat/completions?stream=false")
        .with_headers(headers)
        .with_body(&body);
    for _ in 0..3 {
        assert!(engine.inspect_with(&mut scratch, &req).is_allowed());
    }
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..10 {
        let d = engine.inspect_with(&mut scratch, &req);
        assert!(d.is_allowed());
    }
    let n = ALLOCS.load(Ordering::Relaxed) - before;
    assert_eq!(n, 0, "{n} allocations in 10 warm inspections");
}
