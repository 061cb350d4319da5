//! A polled 16550 UART: 115200 8N1, FIFOs on, no interrupts.

use core::fmt::{self, Write};
use x86_64::instructions::port::Port;

/// A UART at an I/O base (COM1 0x3F8, COM2 0x2F8).
#[derive(Debug)]
pub struct Uart {
    base: u16,
}

impl Uart {
    /// The UART at `base`. Port I/O touches no memory, so this is safe; a wrong
    /// base only talks to the wrong device.
    pub const fn new(base: u16) -> Self {
        Self { base }
    }

    fn out(&self, offset: u16, value: u8) {
        let mut port: Port<u8> = Port::new(self.base + offset);
        // SAFETY: UART registers are I/O ports with no effect on memory.
        unsafe { port.write(value) }
    }

    fn inb(&self, offset: u16) -> u8 {
        let mut port: Port<u8> = Port::new(self.base + offset);
        // SAFETY: reading UART registers has no effect on memory.
        unsafe { port.read() }
    }

    /// Program the line: 115200 8N1, FIFOs, no interrupts.
    pub fn init(&self) {
        self.out(1, 0x00);
        self.out(3, 0x80);
        self.out(0, 0x01);
        self.out(1, 0x00);
        self.out(3, 0x03);
        self.out(2, 0xC7);
        self.out(4, 0x03);
    }

    /// Send one byte.
    pub fn put(&self, b: u8) {
        let mut spins = 0u32;
        while self.inb(5) & 0x20 == 0 && spins < 100_000 {
            spins += 1;
            core::hint::spin_loop();
        }
        self.out(0, b);
    }

    /// A received byte, if one is waiting.
    pub fn try_get(&self) -> Option<u8> {
        (self.inb(5) & 0x01 != 0).then(|| self.inb(0))
    }

    /// Wait for a received byte.
    pub fn get(&self) -> u8 {
        loop {
            if let Some(b) = self.try_get() {
                return b;
            }
            core::hint::spin_loop();
        }
    }
}

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}
