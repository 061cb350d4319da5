//! Entropy for the vault's DRBG: the CPU's RDSEED (full
//! entropy), falling back to RDRAND when RDSEED is missing or keeps failing. When the
//! CPU has neither, there is no fallback to anything weaker: the vault is not
//! created and the vHSM protocol is not offered (fail closed).

/// Retries per 8 bytes before giving up on an instruction (Intel's guidance for
/// RDRAND is 10).
const RETRIES: u32 = 10;

/// Why no entropy could be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntropyError {
    /// The CPU has neither RDSEED nor RDRAND.
    Unavailable,
    /// Both instructions kept failing.
    Exhausted,
}

/// Which instructions the CPU offers.
#[derive(Clone, Copy, Debug)]
pub struct Sources {
    rdseed: bool,
    rdrand: bool,
}

impl Sources {
    /// Probe CPUID.
    pub fn detect() -> Self {
        let rdrand = core::arch::x86_64::__cpuid(1).ecx & (1 << 30) != 0;
        let rdseed = core::arch::x86_64::__cpuid_count(7, 0).ebx & (1 << 18) != 0;
        Self { rdseed, rdrand }
    }

    /// True when at least one source exists.
    pub fn any(&self) -> bool {
        self.rdseed || self.rdrand
    }

    /// Names, for the boot log.
    pub fn describe(&self) -> &'static str {
        match (self.rdseed, self.rdrand) {
            (true, true) => "RDSEED (RDRAND fallback)",
            (true, false) => "RDSEED",
            (false, true) => "RDRAND",
            (false, false) => "none",
        }
    }

    fn word(&self) -> Result<u64, EntropyError> {
        if !self.any() {
            return Err(EntropyError::Unavailable);
        }
        for _ in 0..RETRIES {
            if self.rdseed {
                let (v, ok): (u64, u8);
                // SAFETY: CPUID reported RDSEED; it only writes the output register
                // and CF.
                unsafe {
                    core::arch::asm!("rdseed {v}", "setc {ok}", v = out(reg) v, ok = out(reg_byte) ok, options(nomem, nostack))
                };
                if ok == 1 {
                    return Ok(v);
                }
            }
            if self.rdrand {
                let (v, ok): (u64, u8);
                // SAFETY: CPUID reported RDRAND; it only writes the output register
                // and CF.
                unsafe {
                    core::arch::asm!("rdrand {v}", "setc {ok}", v = out(reg) v, ok = out(reg_byte) ok, options(nomem, nostack))
                };
                if ok == 1 {
                    return Ok(v);
                }
            }
        }
        Err(EntropyError::Exhausted)
    }

    /// Fill `out` with entropy.
    pub fn fill(&self, out: &mut [u8]) -> Result<(), EntropyError> {
        for chunk in out.chunks_mut(8) {
            let w = self.word()?.to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
        Ok(())
    }
}
