//! The audit log: a bounded ring of one entry per dispatched request.
//!
//! An entry records the sequence number, operation, key id, caller VMPL and result
//! status, and never any key bytes. The ring keeps the newest
//! [`AUDIT_CAPACITY`] entries; sequence numbers start at 1 and never repeat, so a
//! reader sees dropped entries as a gap.

use alloc::collections::VecDeque;
use nitride_protocol::vhsm::{AuditEntry, Status, AUDIT_CAPACITY};
use zerocopy::little_endian::{U16, U32, U64};

/// The bounded audit ring.
#[derive(Debug)]
pub struct AuditLog {
    entries: VecDeque<AuditEntry>,
    next_seq: u64,
}

impl Default for AuditLog {
    fn default() -> Self {
        Self::new()
    }
}

impl AuditLog {
    /// An empty log; the first entry gets sequence number 1.
    pub fn new() -> Self {
        Self {
            entries: VecDeque::with_capacity(AUDIT_CAPACITY),
            next_seq: 1,
        }
    }

    /// Append an entry, evicting the oldest if the ring is full.
    pub fn record(&mut self, op: u16, key_id: u32, caller_vmpl: u8, status: Status) {
        if self.entries.len() >= AUDIT_CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back(AuditEntry {
            seq: U64::new(self.next_seq),
            key_id: U32::new(key_id),
            op: U16::new(op),
            status: U16::new(status.raw()),
            caller_vmpl,
            reserved: [0; 7],
        });
        self.next_seq = self.next_seq.wrapping_add(1);
    }

    /// Retained entries with a sequence number of at least `from_seq`, oldest first.
    pub fn since(&self, from_seq: u64) -> impl ExactSizeIterator<Item = &AuditEntry> + '_ {
        let oldest = self.entries.front().map_or(self.next_seq, |e| e.seq.get());
        let skip = usize::try_from(from_seq.saturating_sub(oldest)).unwrap_or(usize::MAX);
        self.entries.iter().skip(skip)
    }

    /// The sequence number the next entry will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_bounded_and_sequenced() {
        let mut log = AuditLog::new();
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
        let seqs: alloc::vec::Vec<u64> = log.since(200).map(|e| e.seq.get()).collect();
        assert_eq!(seqs.first(), Some(&200));
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    }
}
