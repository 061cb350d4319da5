//! The SVSM's log: QEMU's debug console (`isa-debugcon`) on port 0xE9, and the `log`
//! backend on it. The guest cannot reach that port (its accesses are intercepted
//! and refused), so nothing the guest does can add, hide or reorder a line of the
//! SVSM's log; the guest's own console is COM1, which the SVSM never touches. Lines
//! start with `[svsm]`.

use core::fmt::{self, Write};
use nitride_kernel::cmdline::LogLevel;
use nitride_protocol::emulated::ports;

/// The debug console: every byte written to its port goes to the host's log file.
#[derive(Debug)]
struct DebugCon;

/// A port access is the hypervisor's: each byte goes out as a GHCB IOIO
/// request (nothing before the GHCB is registered can be logged; such failures end
/// the VM with a GHCB termination code instead).
impl Write for DebugCon {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        use super::snp::ghcb;
        use nitride_protocol::snp::ghcb::{ioio, nae, off};
        if !ghcb::ready() {
            return Ok(());
        }
        for b in s.bytes() {
            let _ = ghcb::call(
                nae::IOIO,
                ioio::info(ports::SVSM_LOG, 1, false),
                0,
                &[(off::RAX, u64::from(b))],
            );
        }
        Ok(())
    }
}

static CONSOLE: spin::Mutex<DebugCon> = spin::Mutex::new(DebugCon);

/// A log writer for the failure paths that does not take the log lock (an
/// exception may strike while it is held).
pub struct Emergency(DebugCon);

impl Emergency {
    /// A lock-free writer on the SVSM's log.
    pub fn new() -> Self {
        Self(DebugCon)
    }
}

impl Write for Emergency {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write_str(s)
    }
}

struct Logger;

static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let mut c = CONSOLE.lock();
            let _ = writeln!(c, "[svsm] {:5} {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}

/// Route `log` to the console at `level`.
pub fn init_logger(level: LogLevel) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(match level {
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
    });
}
