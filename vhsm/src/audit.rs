//! The audit log: a bounded ring of one entry per dispatched request, and a hash
//! chain over every entry ever recorded.
//!
//! An entry records the sequence number, operation, key id, caller VMPL and result
//! status, and never any key bytes. The ring keeps the newest [`AUDIT_CAPACITY`]
//! entries; sequence numbers start at 1 and never repeat, so a reader sees dropped
//! entries as a gap.
//!
//! A caller sees only the entries of its own VMPL and of less privileged ones
//! (numerically greater or equal: [`AuditLog::visible_since`]).
//!
//! Flooding the ring cannot erase history unnoticed: each entry also carries
//! `chain = SHA-384(AUDIT_CHAIN_DOMAIN || previous chain || entry)` (the input is
//! [`nitride_protocol::vhsm::audit_chain_input`]), and the log keeps the latest chain
//! value and the number of entries ever recorded ([`AuditLog::head`],
//! [`AuditLog::count`]), which the vHSM manifest reports, so an attestation report
//! commits to every entry. Each entry's `salt` is AES-256 of its sequence number
//! under a key drawn when the vault starts and never shown: without it, a caller
//! could recover an entry it may not see (a handful of possible operations, statuses
//! and key ids) by trying each against the chain values of the entries around it.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use core::fmt;

use aes::cipher::{BlockEncrypt, KeyInit};
use nitride_protocol::vhsm::{audit_chain_input, AuditEntry, Status, AUDIT_CAPACITY};
use sha2::{Digest, Sha384};
use zerocopy::little_endian::{U16, U32, U64};

use crate::scrub::{scrubbed, Depth};
use crate::Caller;

/// The bounded audit ring and the chain over every entry.
pub struct AuditLog {
    entries: VecDeque<AuditEntry>,
    next_seq: u64,
    /// The chain value after the last entry (zeros before the first).
    head: [u8; 48],
    /// The salt function's key schedule (zeroized on drop; boxed, like every secret).
    salt_key: Box<aes::Aes256Enc>,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("entries", &self.entries.len())
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// An empty log whose salts are keyed with `salt_key`; the first entry gets
    /// sequence number 1. Call it [`scrubbed`](crate::scrub): the key schedule is
    /// expanded on the stack.
    pub fn new(salt_key: &[u8; 32]) -> Self {
        Self {
            entries: VecDeque::with_capacity(AUDIT_CAPACITY),
            next_seq: 1,
            head: [0; 48],
            salt_key: Box::new(aes::Aes256Enc::new(salt_key.into())),
        }
    }

    /// Append an entry, evicting the oldest if the ring is full, and extend the chain.
    pub fn record(&mut self, op: u16, key_id: u32, caller_vmpl: u8, status: Status) {
        let seq = self.next_seq;
        let mut entry = AuditEntry {
            seq: U64::new(seq),
            key_id: U32::new(key_id),
            op: U16::new(op),
            status: U16::new(status.raw()),
            caller_vmpl,
            ..AuditEntry::default()
        };
        let salt_key = &self.salt_key;
        scrubbed(Depth::Cipher, || {
            let mut block = [0u8; 16];
            if let Some(s) = block.get_mut(..8) {
                s.copy_from_slice(&seq.to_le_bytes());
            }
            salt_key.encrypt_block((&mut block).into());
            entry.salt = block;
        });
        let chain = Sha384::digest(audit_chain_input(&self.head, &entry));
        entry.chain.copy_from_slice(&chain);
        self.head = entry.chain;
        if self.entries.len() >= AUDIT_CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
        self.next_seq = seq.wrapping_add(1);
    }

    /// Retained entries with a sequence number of at least `from_seq`, oldest first.
    pub fn since(&self, from_seq: u64) -> impl ExactSizeIterator<Item = &AuditEntry> + '_ {
        let oldest = self.entries.front().map_or(self.next_seq, |e| e.seq.get());
        let skip = usize::try_from(from_seq.saturating_sub(oldest)).unwrap_or(usize::MAX);
        self.entries.iter().skip(skip)
    }

    /// The retained entries `caller` may see (its own VMPL's and those of less
    /// privileged VMPLs) with a sequence number of at least `from_seq`, oldest first.
    pub fn visible_since(
        &self,
        caller: Caller,
        from_seq: u64,
    ) -> impl Iterator<Item = &AuditEntry> + '_ {
        self.since(from_seq)
            .filter(move |e| e.caller_vmpl >= caller.vmpl())
    }

    /// Continue the chain of a restored vault state: the next entry links to `head`
    /// and its sequence number follows both the `count` entries the state recorded
    /// and those of this boot, so sequence numbers keep growing.
    pub fn resume(&mut self, count: u64, head: [u8; 48]) {
        self.next_seq = self.next_seq.saturating_add(count);
        self.head = head;
    }

    /// The sequence number the next entry will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Entries recorded since the vault started (the last entry's sequence number).
    pub fn count(&self) -> u64 {
        self.next_seq.wrapping_sub(1)
    }

    /// The chain value after the last entry recorded (zeros before the first).
    pub fn head(&self) -> &[u8; 48] {
        &self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> AuditLog {
        AuditLog::new(&[0x42; 32])
    }

    #[test]
    fn ring_is_bounded_and_sequenced() {
        let mut log = log();
        let total = AUDIT_CAPACITY + 10;
        for i in 0..total {
            log.record(6, u32::try_from(i).unwrap(), 1, Status::Ok);
        }
        assert_eq!(log.since(0).len(), AUDIT_CAPACITY);
        let first = log.since(0).next().unwrap();
        assert_eq!(first.seq.get(), 11);
        assert_eq!(first.key_id.get(), 10);
        assert_eq!(log.since(total as u64).len(), 1);
        assert_eq!(log.since(total as u64 + 1).len(), 0);
        assert_eq!(log.since(u64::MAX).len(), 0);
        assert_eq!(log.next_seq(), total as u64 + 1);
        assert_eq!(log.count(), total as u64);
        let seqs: alloc::vec::Vec<u64> = log.since(200).map(|e| e.seq.get()).collect();
        assert_eq!(seqs.first(), Some(&200));
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    }

    /// Every entry links to the one before it, the head is the last link, and the
    /// chain is SHA-384 over the documented input (checked here with an independent
    /// concatenation, not the protocol helper).
    #[test]
    fn chain_links_every_entry() {
        let mut log = log();
        assert_eq!(log.head(), &[0; 48]);
        assert_eq!(log.count(), 0);
        for i in 0..5u8 {
            log.record(u16::from(i), 7, i % 4, Status::Ok);
        }
        let mut prev = [0u8; 48];
        for e in log.since(0) {
            let mut input = alloc::vec::Vec::new();
            input.extend_from_slice(b"NITRIDE-AUDIT-V1");
            input.extend_from_slice(&prev);
            input.extend_from_slice(&e.seq.get().to_le_bytes());
            input.extend_from_slice(&e.key_id.get().to_le_bytes());
            input.extend_from_slice(&e.op.get().to_le_bytes());
            input.extend_from_slice(&e.status.get().to_le_bytes());
            input.push(e.caller_vmpl);
            input.extend_from_slice(&[0; 7]);
            input.extend_from_slice(&e.salt);
            assert_eq!(&Sha384::digest(&input)[..], &e.chain[..]);
            prev = e.chain;
        }
        assert_eq!(log.head(), &prev);
        assert_eq!(log.count(), 5);
    }

    /// Salts are AES-256 of the sequence number under the log's key: distinct per
    /// entry, the same for the same key and sequence, different under another key.
    #[test]
    fn salts_are_keyed_per_entry() {
        let (mut a, mut b, mut c) = (log(), log(), AuditLog::new(&[0x43; 32]));
        for l in [&mut a, &mut b, &mut c] {
            l.record(1, 0, 1, Status::Ok);
            l.record(1, 0, 1, Status::Ok);
        }
        let salts =
            |l: &AuditLog| -> alloc::vec::Vec<[u8; 16]> { l.since(0).map(|e| e.salt).collect() };
        assert_ne!(salts(&a)[0], salts(&a)[1]);
        assert_eq!(salts(&a), salts(&b));
        assert_ne!(salts(&a), salts(&c));
        let mut block = [0u8; 16];
        block[0] = 1;
        aes::Aes256Enc::new((&[0x42u8; 32]).into()).encrypt_block((&mut block).into());
        assert_eq!(salts(&a)[0], block);
    }

    /// A caller sees its own VMPL's entries and those of less privileged VMPLs.
    #[test]
    fn visibility_follows_privilege() {
        let mut log = log();
        for vmpl in [0u8, 1, 2, 3, 2, 1, 0] {
            log.record(1, 0, vmpl, Status::Ok);
        }
        let seen = |vmpl: u8| -> alloc::vec::Vec<u8> {
            log.visible_since(Caller::new(vmpl).unwrap(), 0)
                .map(|e| e.caller_vmpl)
                .collect()
        };
        assert_eq!(seen(0), [0, 1, 2, 3, 2, 1, 0]);
        assert_eq!(seen(1), [1, 2, 3, 2, 1]);
        assert_eq!(seen(2), [2, 3, 2]);
        assert_eq!(seen(3), [3]);
    }
}
