//! Key bytes left behind in freed heap memory: a tracking allocator checks every block
//! the vault frees for the bytes of the keys it held.
//!
//! The vault keeps its keys on the heap. When a key is deleted, or the vault dropped,
//! nothing of the key's material may remain in memory that goes back to the allocator:
//! not in the key table (whose spare capacity keeps whatever a removed or moved
//! element left there), not in a temporary buffer, not in a cached cipher. This test
//! installs a global allocator that hands out zero-filled blocks and, when a block is
//! freed, searches it for "needles": 16-byte windows of the key material the test
//! imported (and their byte-reversed forms, as little-endian limbs hold them). Any
//! hit is a residue.
//!
//! Why here and with `unsafe`: the vault crate forbids unsafe code, and safe Rust
//! cannot read memory it has given back (nor a `Vec`'s spare capacity). A test crate
//! can: this file is its own crate, compiled only for `cargo test`, never linked into
//! the firmware. The unsafe is the `GlobalAlloc` contract (delegating to `System`) and
//! reading a block's bytes inside `dealloc`, at the one moment the allocator, not a
//! Rust object, owns them. Every block was zero-filled when handed out, so the scan
//! reads initialized bytes. The test runs without the libtest harness (`harness =
//! false` in Cargo.toml): one thread, so the registry below needs no more than a spin
//! lock and no other thread allocates meanwhile.
#![allow(clippy::unwrap_used, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use nitride_protocol::vhsm::{KeyType, KeyUsage, VmplSet};
use nitride_vhsm::vault::KeySpec;
use nitride_vhsm::{Caller, Platform, PlatformError, Vault, VaultPolicy};

/// Length of a needle.
const NEEDLE: usize = 16;
/// Needles the registry holds at most.
const MAX_NEEDLES: usize = 64;

/// The allocator: `System`, zero-filling every block and checking every freed one.
struct Tracking;

/// Spin lock over [`NEEDLES`] and [`NEEDLE_COUNT`] writes (the test is single-threaded;
/// the lock only keeps the statics' accesses ordered).
static LOCK: AtomicBool = AtomicBool::new(false);
static NEEDLE_COUNT: AtomicUsize = AtomicUsize::new(0);
static mut NEEDLES: [[u8; NEEDLE]; MAX_NEEDLES] = [[0; NEEDLE]; MAX_NEEDLES];
/// Freed blocks that held a needle, and the first needle found.
static HITS: AtomicUsize = AtomicUsize::new(0);
static FIRST_HIT: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Bytes checked, to show the check ran.
static SCANNED: AtomicUsize = AtomicUsize::new(0);

fn lock() {
    while LOCK
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
}

fn unlock() {
    LOCK.store(false, Ordering::Release);
}

/// Add the 16-byte windows of `material` (at every 8-byte step) and of its
/// byte-reversed form as needles.
fn add_needles(material: &[u8]) {
    // On the stack: a heap copy would itself be a residue.
    let mut reversed = [0u8; 64];
    let reversed = &mut reversed[..material.len()];
    reversed.copy_from_slice(material);
    reversed.reverse();
    lock();
    for bytes in [material, &reversed[..]] {
        for start in (0..=bytes.len() - NEEDLE).step_by(8) {
            let n = NEEDLE_COUNT.load(Ordering::Relaxed);
            assert!(n < MAX_NEEDLES, "too many needles");
            // SAFETY: single-threaded test, and the lock is held: no other access to
            // NEEDLES is live; the index is checked above.
            unsafe {
                (*std::ptr::addr_of_mut!(NEEDLES))[n]
                    .copy_from_slice(&bytes[start..start + NEEDLE]);
            }
            NEEDLE_COUNT.store(n + 1, Ordering::Relaxed);
        }
    }
    unlock();
}

/// Whether `block` contains a needle; records the first one found.
fn check(block: &[u8]) {
    SCANNED.fetch_add(block.len(), Ordering::Relaxed);
    let count = NEEDLE_COUNT.load(Ordering::Relaxed);
    if count == 0 || block.len() < NEEDLE {
        return;
    }
    // SAFETY: as in `add_needles`; the allocator does not allocate here.
    let needles = unsafe { &*std::ptr::addr_of!(NEEDLES) };
    for (i, needle) in needles[..count].iter().enumerate() {
        if block.windows(NEEDLE).any(|w| w == needle) {
            HITS.fetch_add(1, Ordering::Relaxed);
            let _ = FIRST_HIT.compare_exchange(usize::MAX, i, Ordering::Relaxed, Ordering::Relaxed);
            return;
        }
    }
}

// SAFETY: every method delegates to `System` with the same layout; `alloc` returns
// zero-filled memory (a valid result for `alloc`), `dealloc` only reads the block
// before giving it back.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout contract is passed on unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        lock();
        // SAFETY: `ptr` was returned by `alloc` with `layout` (the caller's contract),
        // so `layout.size()` bytes at `ptr` are allocated; they were zero-filled at
        // allocation, so every byte is initialized; the block's owner is giving it
        // back, so no Rust object refers to it any more.
        let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
        check(block);
        unlock();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Deterministic entropy.
struct Counter(u64);

impl Platform for Counter {
    fn entropy(&mut self, out: &mut [u8]) -> Result<(), PlatformError> {
        for b in out {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (self.0 >> 56) as u8;
        }
        Ok(())
    }
}

/// Key material no allocator, hash or key schedule would produce by chance.
fn material<const N: usize>(seed: u8) -> [u8; N] {
    let mut m = [0u8; N];
    for (i, b) in m.iter_mut().enumerate() {
        *b = seed ^ (i as u8).wrapping_mul(37) ^ 0xA5;
    }
    m
}

fn hits() -> usize {
    HITS.load(Ordering::Relaxed)
}

/// Fail with the first residue found.
fn assert_no_residue(what: &str) {
    let n = hits();
    if n != 0 {
        let i = FIRST_HIT.load(Ordering::Relaxed);
        eprintln!("FAIL {what}: {n} freed block(s) held key bytes (first: needle {i})");
        std::process::exit(1);
    }
    println!("ok   {what}");
}

fn spec(kt: KeyType, usage: KeyUsage, exportable: bool) -> KeySpec {
    KeySpec::new(kt, usage, VmplSet::VMPL0, exportable)
}

/// Delete the key that sits last in the table (the defect: its bytes stayed in the
/// table's spare capacity), then one in the middle, then drop the vault.
fn delete_last_and_middle() {
    let c = Caller::SVSM;
    let aes: [u8; 32] = material(1);
    let hmac: [u8; 48] = material(2);
    let ed: [u8; 32] = material(3);
    for m in [&aes[..], &hmac[..], &ed[..]] {
        add_needles(m);
    }
    let mut v = Vault::new(
        Counter(7),
        VaultPolicy {
            allow_plaintext_import: true,
        },
    )
    .unwrap();
    let enc = KeyUsage::ENCRYPT | KeyUsage::DECRYPT;
    let a = v
        .import(c, &spec(KeyType::Aes256, enc, false), &aes)
        .unwrap();
    let h = v
        .import(c, &spec(KeyType::HmacSha384, KeyUsage::SIGN, false), &hmac)
        .unwrap();
    let e = v
        .import(c, &spec(KeyType::Ed25519, KeyUsage::SIGN, false), &ed)
        .unwrap();
    // Use the AES key, so that any cached cipher state exists.
    let mut out = Vec::new();
    v.encrypt(c, a.id, b"", b"x", &mut out).unwrap();
    // The last key, then the first (which moves the others down).
    v.delete(c, e.id).unwrap();
    v.delete(c, a.id).unwrap();
    v.delete(c, h.id).unwrap();
    drop(v);
    assert_no_residue("delete the last key, the first, then drop the vault");
}

/// Every operation that copies key material (wrap, unwrap, derive, sign), then
/// delete everything and drop the vault.
fn operations_leave_nothing() {
    let c = Caller::SVSM;
    let kek: [u8; 32] = material(11);
    let p384: [u8; 48] = material(12);
    let parent: [u8; 32] = material(13);
    for m in [&kek[..], &p384[..], &parent[..]] {
        add_needles(m);
    }
    let mut v = Vault::new(
        Counter(9),
        VaultPolicy {
            allow_plaintext_import: true,
        },
    )
    .unwrap();
    let kek = v
        .import(
            c,
            &spec(KeyType::Aes256, KeyUsage::WRAP | KeyUsage::UNWRAP, false),
            &kek,
        )
        .unwrap();
    let ec = v
        .import(
            c,
            &spec(KeyType::EcdsaP384, KeyUsage::SIGN | KeyUsage::VERIFY, true),
            &p384,
        )
        .unwrap();
    let parent = v
        .import(c, &spec(KeyType::Aes256, KeyUsage::DERIVE, false), &parent)
        .unwrap();
    let mut wrapped = Vec::new();
    v.wrap_key(c, kek.id, ec.id, &mut wrapped).unwrap();
    let copy = v
        .unwrap_key(
            c,
            kek.id,
            &spec(KeyType::EcdsaP384, KeyUsage::SIGN, false),
            &wrapped,
        )
        .unwrap();
    let mut sig = Vec::new();
    v.sign(c, copy.id, b"m", &mut sig).unwrap();
    v.verify(c, ec.id, b"m", &sig).unwrap();
    for kt in [KeyType::Aes256, KeyType::HmacSha384, KeyType::Ed25519] {
        let usage = kt.allowed_usage() & (KeyUsage::ENCRYPT | KeyUsage::SIGN);
        v.derive(c, parent.id, &spec(kt, usage, false), b"salt", b"info")
            .unwrap();
    }
    let ids: Vec<u32> = v.list(c).map(|k| k.id).collect();
    for id in ids {
        v.delete(c, id).unwrap();
    }
    drop(v);
    assert_no_residue("wrap, unwrap, sign, verify, derive, delete all, drop");
}

fn main() {
    delete_last_and_middle();
    operations_leave_nothing();
    // The check ran over the vault's memory (tables, keys, buffers).
    assert!(SCANNED.load(Ordering::Relaxed) > 4096);
}
