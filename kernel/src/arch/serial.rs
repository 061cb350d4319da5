//! The SVSM console: the polled UART on COM1 and the `log` backend on it.
//! Lines the SVSM prints start with `[svsm]` so they can be told from the guest's
//! output on the same port.

use core::fmt::{self, Write};
use nitride_kernel::cmdline::LogLevel;
use nitride_protocol::emulated::ports;
use nitride_rt::uart::Uart;

static CONSOLE: spin::Mutex<Uart> = spin::Mutex::new(Uart::new(ports::COM1));

/// Program the UART.
pub fn init() {
    CONSOLE.lock().init();
}

/// A console writer for the failure paths that does not take the console lock
/// (an exception may strike while it is held).
pub struct Emergency(Uart);

impl Emergency {
    /// A lock-free writer on COM1.
    pub fn new() -> Self {
        Self(Uart::new(ports::COM1))
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
