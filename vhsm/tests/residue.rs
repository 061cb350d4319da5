//! Key bytes left behind: in freed heap memory (a tracking allocator checks every block
//! the vault frees) and on the stack below a vault operation once it has returned.
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
//! The stack check zeroes the stack below the current frame, runs one vault operation
//! there, and then searches that stack for needles: the raw keys, the HMAC key
//! blocks and keyed SHA-384 states, the HKDF PRK and output. The vault overwrites the
//! stack its secret computations ran on (`src/scrub.rs`); this checks that it does,
//! for every operation that touches key material.
//!
//! Why here and with `unsafe`: the vault crate forbids unsafe code, and safe Rust
//! cannot read memory it has given back (nor a `Vec`'s spare capacity). A test crate
//! can: this file is its own crate, compiled only for `cargo test`, never linked into
//! the firmware. The unsafe is the `GlobalAlloc` contract (delegating to `System`) and
//! reading a block's bytes inside `dealloc`, at the one moment the allocator, not a
//! Rust object, owns them. Every block was zero-filled when handed out, so the scan
//! reads initialized bytes. The stack check writes and reads the unused stack below
//! the current frame with volatile accesses, outside any Rust object: no safe or
//! even well-defined way to look at what a returned function left there exists, and
//! volatile accesses keep the compiler from assuming anything about those bytes.
//!
//! The test runs without the libtest harness (`harness = false` in Cargo.toml), in
//! one thread with an 8 MiB stack while the main thread waits for it: no other
//! thread allocates or runs meanwhile, so the registry below needs no more than a
//! spin lock. It reports every check and fails at the end if any found key bytes.
#![allow(clippy::unwrap_used, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use nitride_protocol::vhsm::{KeyType, KeyUsage, VmplSet};
use nitride_vhsm::vault::KeySpec;
use nitride_vhsm::{Caller, Platform, PlatformError, Vault, VaultPolicy};

/// Length of a needle.
const NEEDLE: usize = 16;
/// Needles the registry holds at most.
const MAX_NEEDLES: usize = 256;

/// The allocator: `System`, zero-filling every block and checking every freed one.
struct Tracking;

/// Spin lock over [`NEEDLES`] and [`NEEDLE_COUNT`] (one thread works at a time; the
/// lock only keeps the statics' accesses ordered).
static LOCK: AtomicBool = AtomicBool::new(false);
static NEEDLE_COUNT: AtomicUsize = AtomicUsize::new(0);
static mut NEEDLES: [[u8; NEEDLE]; MAX_NEEDLES] = [[0; NEEDLE]; MAX_NEEDLES];
/// Places (freed blocks, stack copies) that held a needle since the last report; the
/// first needle found, and where the last was found (size of the place, offset).
static HITS: AtomicUsize = AtomicUsize::new(0);
static FIRST_HIT: AtomicUsize = AtomicUsize::new(usize::MAX);
static HIT_SIZE: AtomicUsize = AtomicUsize::new(0);
static HIT_OFF: AtomicUsize = AtomicUsize::new(0);
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
        if let Some(off) = block.windows(NEEDLE).position(|w| w == needle) {
            HIT_OFF.store(off, Ordering::Relaxed);
            HITS.fetch_add(1, Ordering::Relaxed);
            HIT_SIZE.store(block.len(), Ordering::Relaxed);
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

/// Checks that found key bytes.
static FAILURES: AtomicUsize = AtomicUsize::new(0);

/// Report the residues found since the last report (a failure is counted, and the
/// test goes on so that one run lists every failing check).
fn assert_no_residue(what: &str) {
    let n = HITS.swap(0, Ordering::Relaxed);
    if n != 0 {
        let i = FIRST_HIT.swap(usize::MAX, Ordering::Relaxed);
        eprintln!(
            "FAIL {what}: key bytes in {n} place(s) (first: needle {i}, in a block of {} bytes at offset {})",
            HIT_SIZE.load(Ordering::Relaxed),
            HIT_OFF.load(Ordering::Relaxed)
        );
        FAILURES.fetch_add(1, Ordering::Relaxed);
    } else {
        println!("ok   {what}");
    }
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
            ..VaultPolicy::default()
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
            ..VaultPolicy::default()
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

/// Keys created right after AES work (whose round keys are still in vector
/// registers, from where the compiler may copy them into bytes a type never writes),
/// then deleted.
fn keys_created_after_aes_work() {
    let c = Caller::SVSM;
    let aes: [u8; 32] = material(31);
    add_needles(&aes);
    let mut v = Vault::new(
        Counter(3),
        VaultPolicy {
            allow_plaintext_import: true,
            ..VaultPolicy::default()
        },
    )
    .unwrap();
    let enc = KeyUsage::ENCRYPT | KeyUsage::DECRYPT | KeyUsage::DERIVE;
    let a = v
        .import(c, &spec(KeyType::Aes256, enc, false), &aes)
        .unwrap()
        .id;
    for kt in [
        KeyType::HmacSha384,
        KeyType::Ed25519,
        KeyType::EcdsaP384,
        KeyType::Aes256,
    ] {
        let mut sealed = Vec::new();
        v.encrypt(c, a, b"", &[7; 64], &mut sealed).unwrap();
        let mut plain = Vec::new();
        v.decrypt(c, a, b"", &sealed, &mut plain).unwrap();
        let usage = kt.allowed_usage() & (KeyUsage::ENCRYPT | KeyUsage::SIGN);
        let g = v.generate(c, &spec(kt, usage, false)).unwrap().id;
        v.encrypt(c, a, b"", &[7; 64], &mut sealed).unwrap();
        let d = v
            .derive(c, a, &spec(kt, usage, false), b"", b"")
            .unwrap()
            .id;
        v.delete(c, g).unwrap();
        v.delete(c, d).unwrap();
    }
    v.delete(c, a).unwrap();
    drop(v);
    assert_no_residue("keys created and deleted right after AES work");
}

/// Bytes of stack checked below the current frame: more than any vault operation
/// uses in a debug build.
const SPAN: usize = 96 * 1024;
/// The stack region after an operation, copied out (so that checking it does not
/// use the stack being checked).
static mut STACK_COPY: [u8; SPAN] = [0; SPAN];

/// An address in a frame below the caller's, i.e. below the caller's stack pointer.
#[inline(never)]
fn below_here() -> usize {
    let x = 0u8;
    std::hint::black_box(&x) as *const u8 as usize
}

/// Zero the stack below this frame, run `f` there, then copy that stack to
/// [`STACK_COPY`].
#[inline(never)]
fn run_on_clean_stack(f: &mut dyn FnMut()) {
    let top = below_here() - 512;
    let bottom = top - SPAN;
    for a in bottom..top {
        // SAFETY: [bottom, top) lies below this frame's stack pointer (below the
        // frame of `below_here`, which was below it), within this thread's 8 MiB
        // stack; nothing of this frame lives there and no other frame does between
        // the calls. Volatile: the compiler may not elide or reorder the stores.
        unsafe { (a as *mut u8).write_volatile(0) };
    }
    f();
    for (i, a) in (bottom..top).enumerate() {
        // SAFETY: as above; `f` has returned, so the bytes are what it left. The
        // copy is a static, not this stack, and the loop makes no call.
        unsafe { (*std::ptr::addr_of_mut!(STACK_COPY))[i] = (a as *const u8).read_volatile() };
    }
}

/// Fail if the stack [`run_on_clean_stack`] copied holds a needle.
fn assert_clean_stack(what: &str) {
    // SAFETY: single-threaded; nothing else touches STACK_COPY now.
    check(unsafe { &*std::ptr::addr_of!(STACK_COPY) });
    assert_no_residue(what);
}

/// Run `f` on clean stack and check what it left.
fn stack_after(what: &str, f: &mut dyn FnMut()) {
    run_on_clean_stack(f);
    assert_clean_stack(what);
}

/// SHA-384's initial state (FIPS 180-4, 5.3.4).
const SHA384_IV: [u64; 8] = [
    0xcbbb9d5dc1059ed8,
    0x629a292a367cd507,
    0x9159015a3070dd17,
    0x152fecd8f70e5939,
    0x67332667ffc00b31,
    0x8eb44a8768581511,
    0xdb0c2e0d64f98fa7,
    0x47b5481dbefa4fa4,
];

/// Needles for what an HMAC-SHA-384 keyed with `key` holds: the key blocks `key ^
/// ipad` and `key ^ opad` and the SHA-384 states after absorbing them (which are as
/// good as the key).
fn add_hmac_needles(key: &[u8; 48]) {
    for pad in [0x36u8, 0x5c] {
        let mut block = [pad; 128];
        for (b, k) in block.iter_mut().zip(key) {
            *b ^= k;
        }
        add_needles(&block[..48]);
        let mut state = SHA384_IV;
        sha2::compress512(&mut state, &[block.into()]);
        let mut bytes = [0u8; 64];
        for (chunk, word) in bytes.chunks_mut(8).zip(state) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        add_needles(&bytes[..32]);
        add_needles(&bytes[32..]);
    }
}

/// Every operation that touches key material, each run on clean stack, with the
/// stack it leaves checked.
fn stack_is_scrubbed() {
    let c = Caller::SVSM;
    let aes: [u8; 32] = material(21);
    let hmac: [u8; 48] = material(22);
    let ed: [u8; 32] = material(23);
    let ec: [u8; 48] = material(24);
    let kek: [u8; 32] = material(25);
    for m in [&aes[..], &hmac[..], &ed[..], &ec[..], &kek[..]] {
        add_needles(m);
    }
    add_hmac_needles(&hmac);
    // Derive from the HMAC key: the PRK and the output (an AES key) are secrets.
    let (salt, info) = (b"salt".as_slice(), b"info".as_slice());
    let mut prk = [0u8; 48];
    {
        use hmac::Mac;
        let mut mac = <hmac::Hmac<sha2::Sha384> as Mac>::new_from_slice(salt).unwrap();
        mac.update(&hmac);
        prk.copy_from_slice(&mac.finalize().into_bytes());
    }
    add_needles(&prk);
    let mut okm = [0u8; 32];
    let mut full_info = nitride_vhsm::vault::DERIVE_INFO_PREFIX.to_vec();
    full_info.extend_from_slice(&KeyType::Aes256.raw().to_le_bytes());
    full_info.extend_from_slice(info);
    hkdf::Hkdf::<sha2::Sha384>::from_prk(&prk)
        .unwrap()
        .expand(&full_info, &mut okm)
        .unwrap();
    drop(full_info);
    add_needles(&okm);

    let mut v = Vault::new(
        Counter(5),
        VaultPolicy {
            allow_plaintext_import: true,
            ..VaultPolicy::default()
        },
    )
    .unwrap();
    let enc = KeyUsage::ENCRYPT | KeyUsage::DECRYPT;
    let sv = KeyUsage::SIGN | KeyUsage::VERIFY;
    let (mut a, mut h, mut e, mut p, mut k) = (0, 0, 0, 0, 0);
    stack_after("import AES", &mut || {
        a = v
            .import(c, &spec(KeyType::Aes256, enc, false), &aes)
            .unwrap()
            .id
    });
    stack_after("import HMAC", &mut || {
        h = v
            .import(
                c,
                &spec(KeyType::HmacSha384, sv | KeyUsage::DERIVE, false),
                &hmac,
            )
            .unwrap()
            .id
    });
    stack_after("import Ed25519", &mut || {
        e = v
            .import(c, &spec(KeyType::Ed25519, sv, false), &ed)
            .unwrap()
            .id
    });
    stack_after("import P-384", &mut || {
        p = v
            .import(c, &spec(KeyType::EcdsaP384, sv, true), &ec)
            .unwrap()
            .id
    });
    stack_after("import KEK", &mut || {
        k = v
            .import(
                c,
                &spec(KeyType::Aes256, KeyUsage::WRAP | KeyUsage::UNWRAP, false),
                &kek,
            )
            .unwrap()
            .id
    });
    let mut sealed = Vec::new();
    stack_after("encrypt", &mut || {
        v.encrypt(c, a, b"aad", &[0x11; 100], &mut sealed).unwrap()
    });
    let mut plain = Vec::new();
    stack_after("decrypt", &mut || {
        v.decrypt(c, a, b"aad", &sealed, &mut plain).unwrap()
    });
    for (name, key) in [("HMAC", h), ("Ed25519", e), ("P-384", p)] {
        let mut sig = Vec::new();
        stack_after(&format!("sign {name}"), &mut || {
            v.sign(c, key, b"message", &mut sig).unwrap()
        });
        stack_after(&format!("verify {name}"), &mut || {
            v.verify(c, key, b"message", &sig).unwrap()
        });
    }
    let mut wrapped = Vec::new();
    stack_after("wrap", &mut || v.wrap_key(c, k, p, &mut wrapped).unwrap());
    stack_after("unwrap", &mut || {
        v.unwrap_key(c, k, &spec(KeyType::EcdsaP384, sv, false), &wrapped)
            .unwrap();
    });
    stack_after("derive", &mut || {
        v.derive(c, h, &spec(KeyType::Aes256, enc, false), salt, info)
            .unwrap();
    });
    stack_after("generate", &mut || {
        v.generate(c, &spec(KeyType::Ed25519, sv, false)).unwrap();
    });
    let mut random = Vec::new();
    stack_after("random", &mut || v.random(64, &mut random).unwrap());
    stack_after("delete every key", &mut || {
        let ids: Vec<u32> = v.list(c).map(|k| k.id).collect();
        for id in ids {
            v.delete(c, id).unwrap();
        }
    });
    drop(v);
    assert_no_residue("the vault dropped after the stack checks");
}

fn main() {
    // One thread with a known, large stack does everything (see the module doc).
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(|| {
            delete_last_and_middle();
            operations_leave_nothing();
            keys_created_after_aes_work();
            stack_is_scrubbed();
        })
        .unwrap()
        .join()
        .unwrap();
    // The checks ran over the vault's memory (tables, keys, buffers, stack).
    assert!(SCANNED.load(Ordering::Relaxed) > SPAN);
    let failures = FAILURES.load(Ordering::Relaxed);
    if failures != 0 {
        eprintln!("{failures} check(s) found key bytes left behind");
        std::process::exit(1);
    }
}
