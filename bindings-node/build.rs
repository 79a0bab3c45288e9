//! Link settings for a Node addon (undefined N-API symbols resolved by the loading
//! process) and the rerun triggers the type-definition pass of `build.mjs` relies on.

fn main() {
    napi_build::setup();
}
