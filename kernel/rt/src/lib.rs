//! The freestanding runtime shared by the SVSM image and bare-metal guests built
//! for the host triple without `std`: the memory functions and unwinding symbols the
//! compiler and the precompiled `core` refer to ([`mem`]), a polled 16550 UART
//! ([`uart`]), stopping the machine ([`halt_forever`], [`exit_qemu`]), and, with the
//! `fw_cfg` feature, the files QEMU hands over through fw_cfg (`fw_cfg`).
#![no_std]

#[cfg(feature = "fw_cfg")]
extern crate alloc;

#[cfg(feature = "fw_cfg")]
pub mod fw_cfg;
pub mod mem;
pub mod uart;

use nitride_protocol::emulated::ports;
use x86_64::instructions::port::Port;

/// Stop forever with interrupts masked.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// Write `value` to QEMU's `isa-debug-exit` port (QEMU exits with
/// `value << 1 | 1`), then halt in case the device is absent.
pub fn exit_qemu(value: u32) -> ! {
    let mut port: Port<u32> = Port::new(ports::DEBUG_EXIT);
    // SAFETY: writing the debug-exit port touches no memory; without the device
    // the write is ignored and we halt below.
    unsafe { port.write(value) };
    halt_forever()
}
