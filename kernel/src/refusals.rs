//! Rate-limited reporting of what the SVSM refuses the guest (port and MSR accesses,
//! instructions it does not offer).
//!
//! A guest can provoke a refusal with every instruction: a sweep of all 65,536 I/O
//! ports would otherwise put 65,536 lines in the SVSM's log. [`RefusalLog`] lets the
//! first [`FIRST_LOGGED`] refusals of each kind through one by one, then only a
//! summary with the running count each time it doubles, and [`RefusalLog::summary`]
//! gives the totals when the run ends. The log stays O(log n) lines for n refusals
//! and no refusal goes uncounted.
//!
//! Pure logic, tested on the host; the platform decides what is refused and prints
//! what this module says to print.

/// Refusals of one kind logged one by one before the summaries start.
pub const FIRST_LOGGED: u64 = 8;

/// What kind of access was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An I/O port access.
    Io,
    /// An RDMSR or WRMSR.
    Msr,
    /// An instruction the platform does not offer the guest.
    Instruction,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Io, Kind::Msr, Kind::Instruction];

    fn index(self) -> usize {
        match self {
            Kind::Io => 0,
            Kind::Msr => 1,
            Kind::Instruction => 2,
        }
    }

    /// How the log names this kind.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Io => "I/O port",
            Kind::Msr => "MSR",
            Kind::Instruction => "instruction",
        }
    }
}

/// What to print for one refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// Print the refusal itself.
    Line,
    /// Print a summary: `count` refusals of this kind so far (this one included).
    Summary {
        /// Refusals of this kind so far.
        count: u64,
    },
    /// Print nothing (counted).
    Quiet,
}

/// The totals of one kind at the end of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Total {
    /// The kind.
    pub kind: Kind,
    /// Every refusal of this kind.
    pub count: u64,
    /// How many of them were not logged one by one.
    pub not_logged: u64,
}

/// Counters per kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefusalLog {
    counts: [u64; 3],
}

impl RefusalLog {
    /// No refusals yet.
    pub const fn new() -> Self {
        Self { counts: [0; 3] }
    }

    /// Count one refusal of `kind` and say what to print for it.
    pub fn record(&mut self, kind: Kind) -> Report {
        let c = &mut self.counts[kind.index()];
        *c = c.saturating_add(1);
        let n = *c;
        if n <= FIRST_LOGGED {
            Report::Line
        } else if n.is_power_of_two() {
            Report::Summary { count: n }
        } else {
            Report::Quiet
        }
    }

    /// Refusals of `kind` so far.
    pub fn count(&self, kind: Kind) -> u64 {
        self.counts[kind.index()]
    }

    /// The totals of every kind with at least one refusal.
    pub fn summary(&self) -> impl Iterator<Item = Total> + '_ {
        Kind::ALL.into_iter().filter_map(|kind| {
            let count = self.count(kind);
            (count > 0).then_some(Total {
                kind,
                count,
                not_logged: count.saturating_sub(FIRST_LOGGED),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_sweep_logs_a_bounded_number_of_lines() {
        let mut log = RefusalLog::new();
        let mut lines = 0;
        let mut summaries = std::vec::Vec::new();
        for _ in 0..65_520u64 {
            match log.record(Kind::Io) {
                Report::Line => lines += 1,
                Report::Summary { count } => summaries.push(count),
                Report::Quiet => {}
            }
        }
        assert_eq!(lines, FIRST_LOGGED);
        assert_eq!(
            summaries,
            [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
        );
        let totals: std::vec::Vec<Total> = log.summary().collect();
        assert_eq!(
            totals,
            [Total {
                kind: Kind::Io,
                count: 65_520,
                not_logged: 65_520 - FIRST_LOGGED
            }]
        );
    }

    #[test]
    fn kinds_are_counted_apart() {
        let mut log = RefusalLog::new();
        for _ in 0..FIRST_LOGGED {
            assert_eq!(log.record(Kind::Msr), Report::Line);
        }
        assert_eq!(log.record(Kind::Io), Report::Line);
        assert_eq!(log.record(Kind::Msr), Report::Quiet);
        assert_eq!(log.count(Kind::Msr), FIRST_LOGGED + 1);
        assert_eq!(log.count(Kind::Instruction), 0);
        assert_eq!(log.summary().count(), 2);
    }
}
