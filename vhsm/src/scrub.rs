//! Overwriting the stack that a computation on secret bytes ran on.
//!
//! Zeroize-on-drop covers the values the vault owns, but not what the crates it calls
//! leave on the stack: `hmac` and `sha2` (this generation) keep keyed hash states in
//! their frames and never wipe them, `hkdf` leaves its PRK and output blocks there,
//! `aes` expands key schedules into temporaries, the ECDSA and Ed25519 signers leave
//! scalar bytes and hash states, and every move of a value copies it without wiping
//! the old place. Bytes a type never writes (padding, the inactive part of a union
//! such as the `aes` crate's run-time choice of backend) travel along with it,
//! holding whatever the stack or a register held before, round keys included.
//!
//! So the vault runs each computation on secret bytes through [`scrubbed`]: the
//! computation runs in a frame of its own below the caller's, and afterwards the
//! stack from the caller's frame down is overwritten with zeros, far enough to cover
//! the deepest frame the computation used. [`scrubbed_around`] also overwrites that
//! stack before the computation runs, so that a value built there and then moved to
//! the heap (a key's cipher, boxed) carries zeros, not old stack contents, in any
//! bytes its type never writes.
//!
//! The depths are measured on the host (release build): the vault's deepest
//! operations (creating a P-384 key, HKDF into a P-384 key) use under 11 KiB below the
//! vault's entry point, signing under 6.5 KiB, HMAC under 4 KiB, AES-GCM with a
//! cached cipher under 0.5 KiB. Debug builds use several times more stack, so they
//! overwrite 64 KiB every time. `tests/residue.rs` checks the result: after each
//! operation, no key bytes remain on the stack below its caller.
//!
//! Safe code only: the overwrite is `zeroize` on an uninitialised local array (volatile
//! stores, then a compiler fence), in a function the compiler may not inline.

use core::mem::MaybeUninit;

use zeroize::Zeroize;

/// How deep a computation may use the stack, which is how much [`scrubbed`]
/// overwrites (release builds; debug builds overwrite 64 KiB every time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Depth {
    /// Creating a key (DRBG output, key schedules, HKDF, the Ed25519 and P-384 key
    /// set-up): 16 KiB.
    KeyCreation,
    /// Signing, wrapping, drawing random bytes: 8 KiB.
    Signing,
    /// An HMAC-SHA-384 computation: 4 KiB.
    Hmac,
    /// AES-GCM with a cached cipher (keystream, GHASH state), one AES block: 1 KiB.
    Cipher,
}

/// The 64-bit words to overwrite for a release-build depth of `bytes` (debug builds:
/// 64 KiB; not under the fuzzer, which builds with debug assertions but optimised,
/// and looks for panics, not residues).
const fn words(bytes: usize) -> usize {
    if cfg!(debug_assertions) && !cfg!(fuzzing) {
        64 * 1024 / 8
    } else {
        bytes / 8
    }
}

/// Run `f`, then overwrite the stack below the caller with zeros, as deep as `depth`
/// says `f` may use it. The result is returned through the caller's frame: it must
/// hold no secret (return a `Box` or a `Zeroizing` value, or write into a buffer
/// the caller owns).
pub(crate) fn scrubbed<T>(depth: Depth, f: impl FnOnce() -> T) -> T {
    let out = run(f);
    wipe(depth);
    out
}

/// [`scrubbed`], also overwriting the stack before `f` runs: for computations that
/// build a value on the stack and move it to the heap, so that the bytes its type
/// never writes (padding, a union's inactive part) are zeros rather than whatever
/// an earlier computation left there.
pub(crate) fn scrubbed_around<T>(depth: Depth, f: impl FnOnce() -> T) -> T {
    wipe(depth);
    scrubbed(depth, f)
}

/// Run `f` in a frame of its own (so that its locals lie in the stack [`wipe`]
/// covers).
#[inline(never)]
fn run<T>(f: impl FnOnce() -> T) -> T {
    f()
}

/// Overwrite the stack below the caller's frame with zeros, as deep as `depth`.
fn wipe(depth: Depth) {
    match depth {
        Depth::KeyCreation => wipe_words::<{ words(16 * 1024) }>(),
        Depth::Signing => wipe_words::<{ words(8 * 1024) }>(),
        Depth::Hmac => wipe_words::<{ words(4 * 1024) }>(),
        Depth::Cipher => wipe_words::<{ words(1024) }>(),
    }
}

/// Overwrite `WORDS` words of stack, in a frame of its own, with zeros.
#[inline(never)]
fn wipe_words<const WORDS: usize>() {
    let mut area = [MaybeUninit::<u64>::uninit(); WORDS];
    area.zeroize();
    core::hint::black_box(&area);
}
