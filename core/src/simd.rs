//! Runtime choice of the widest vector instructions for the byte loops written to be
//! vectorized by the compiler.
//!
//! The crate is built for the baseline of its target (SSE2 on x86-64) so that one build
//! runs on every machine, and core has no `unsafe`, so it cannot call `#[target_feature]`
//! functions itself. [`wide`] asks pulp (safe runtime dispatch, detection cached after the
//! first call) to run a closure compiled with AVX2 when the CPU has it: the same block loops
//! then use 256-bit registers, about half the instructions per byte.

/// Runs `f`, compiled for AVX2 (x86-64-v3) when the CPU supports it.
///
/// Only code inlined into `f` is compiled for the wider instruction set: mark the closure
/// `#[inline(always)]` and keep the loops in it or in `#[inline(always)]` helpers.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if let Some(v3) = pulp::x86::V3::try_new() {
        return v3.vectorize(f);
    }
    f()
}

/// The AVX2 token, for kernels written with explicit (safe, pulp-wrapped) intrinsics rather
/// than loops left to the compiler; `None` on CPUs without AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn v3() -> Option<pulp::x86::V3> {
    pulp::x86::V3::try_new()
}
