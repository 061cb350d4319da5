//! The SVSM's command line (QEMU `-append`): `nitride.*` options for the SVSM, and,
//! after a lone `--`, the guest's own command line, passed on in the boot-info page.

/// Log verbosity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// Errors and warnings only.
    Warn,
    /// Normal.
    Info,
    /// Every call.
    Debug,
}

/// A deliberate fault (only honoured by images built with `fault-injection`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Invalid opcode (#UD).
    InvalidOpcode,
    /// Page fault on unmapped memory (#PF).
    PageFault,
    /// Non-canonical access (#GP).
    GeneralProtection,
    /// Rust panic.
    Panic,
    /// Write to the SVSM's own code (W^X: #PF).
    WriteText,
    /// Execute the SVSM's writable data (W^X: #PF).
    ExecData,
    /// Execute guest RAM (never executable for the SVSM: #PF).
    ExecGuest,
    /// Write to the guard page under the boot stack (a stack overflow: #PF).
    StackGuard,
}

/// The parsed command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cmdline<'a> {
    /// `nitride.log=warn|info|debug` (default info).
    pub log: LogLevel,
    /// `nitride.fault=ud|pf|gp|panic|write-text|exec-data|exec-guest|stack-guard`.
    pub fault: Option<Fault>,
    /// Everything after ` -- `.
    pub guest: &'a str,
}

impl<'a> Cmdline<'a> {
    /// Parse; unknown words are ignored (and reported by the caller).
    pub fn parse(s: &'a str) -> (Self, usize) {
        let (own, guest) = match s.split_once(" -- ") {
            Some((a, b)) => (a, b.trim()),
            None => match s.strip_prefix("-- ") {
                Some(g) => ("", g.trim()),
                None => (s, ""),
            },
        };
        let mut c = Cmdline {
            log: LogLevel::Info,
            fault: None,
            guest,
        };
        let mut unknown = 0;
        for word in own.split_ascii_whitespace() {
            match word.split_once('=') {
                Some(("nitride.log", "warn")) => c.log = LogLevel::Warn,
                Some(("nitride.log", "info")) => c.log = LogLevel::Info,
                Some(("nitride.log", "debug")) => c.log = LogLevel::Debug,
                Some(("nitride.fault", f)) => {
                    c.fault = match f {
                        "ud" => Some(Fault::InvalidOpcode),
                        "pf" => Some(Fault::PageFault),
                        "gp" => Some(Fault::GeneralProtection),
                        "panic" => Some(Fault::Panic),
                        "write-text" => Some(Fault::WriteText),
                        "exec-data" => Some(Fault::ExecData),
                        "exec-guest" => Some(Fault::ExecGuest),
                        "stack-guard" => Some(Fault::StackGuard),
                        _ => {
                            unknown += 1;
                            None
                        }
                    }
                }
                _ => unknown += 1,
            }
        }
        (c, unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_svsm_and_guest_parts() {
        let (c, unknown) = Cmdline::parse("nitride.log=debug nitride.fault=pf -- mode=calls x=1");
        assert_eq!(c.log, LogLevel::Debug);
        assert_eq!(c.fault, Some(Fault::PageFault));
        assert_eq!(c.guest, "mode=calls x=1");
        assert_eq!(unknown, 0);
        let (c, unknown) = Cmdline::parse("-- mode=read");
        assert_eq!(c.guest, "mode=read");
        assert_eq!(unknown, 0);
        for (word, fault) in [
            ("write-text", Fault::WriteText),
            ("exec-data", Fault::ExecData),
            ("exec-guest", Fault::ExecGuest),
            ("stack-guard", Fault::StackGuard),
        ] {
            let line = std::format!("nitride.fault={word}");
            assert_eq!(Cmdline::parse(&line).0.fault, Some(fault));
        }
        // The vault policy is no longer a command-line option: it is measured
        // (the launch configuration).
        assert_eq!(Cmdline::parse("nitride.plaintext_import=allow").1, 1);
        let (c, unknown) = Cmdline::parse("bogus nitride.fault=zz");
        assert_eq!(
            (c.log, c.fault, c.guest, unknown),
            (LogLevel::Info, None, "", 2)
        );
    }
}
