//! The SVSM's log: QEMU's debug console (`isa-debugcon`) on port 0xE9, and the `log`
//! backend on it. The guest cannot reach that port (its accesses are intercepted
//! and refused), so nothing the guest does can add, hide or reorder a line of the
//! SVSM's log; the guest's own console is COM1, which the SVSM never touches. Lines
//! start with `[svsm]`.

use core::fmt::{self, Write};
use nitride_kernel::cmdline::LogLevel;
use nitride_protocol::emulated::ports;
use x86_64::instructions::port::Port;

/// The debug console: every byte written to its port goes to the host's log file.
#[derive(Debug)]
struct DebugCon;

impl Write for DebugCon {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut port: Port<u8> = Port::new(ports::SVSM_LOG);
        for b in s.bytes() {
            // SAFETY: writing the debug console's I/O port touches no memory.
            unsafe { port.write(b) };
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
