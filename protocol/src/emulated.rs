//! The emulated platform's guest contract: fixed guest-physical addresses, I/O
//! ports and exit codes shared by the firmware, guests, the runner and the tests.
//!
//! The prose version, with the guest's entry CPU state, is `docs/guest-contract.md`;
//! this module is the single source of the numbers.

/// Start of the RAM the SVSM keeps for itself (code, data, heap, stacks, page
/// tables). The firmware ELF is linked at this address.
pub const SVSM_BASE: u64 = 0x0100_0000;
/// Size of the SVSM's RAM region.
pub const SVSM_SIZE: u64 = 0x0100_0000;
/// End (exclusive) of the SVSM's RAM region.
pub const SVSM_END: u64 = SVSM_BASE + SVSM_SIZE;

/// GPA of the page laid out like the SNP secrets page (SVSM fields at 0x140).
pub const SECRETS_GPA: u64 = 0x0010_0000;
/// GPA of the boot vCPU's initial calling area.
pub const CAA_GPA: u64 = 0x0010_1000;
/// GPA of the boot-information page ([`boot_info`]).
pub const BOOT_INFO_GPA: u64 = 0x0010_2000;
/// GPA of the guest's initial page tables: PML4, PDPT, then four page directories
/// identity-mapping the first 4 GiB with 2 MiB pages.
pub const GUEST_PAGE_TABLES_GPA: u64 = 0x0010_3000;
/// Number of pages the initial guest page tables take.
pub const GUEST_PAGE_TABLES_PAGES: u64 = 6;
/// First GPA after the fixed guest pages; guest images load at or above this.
pub const FIXED_PAGES_END: u64 = GUEST_PAGE_TABLES_GPA + GUEST_PAGE_TABLES_PAGES * 4096;
/// Initial guest stack pointer (the stack below it, down to 0x8_0000, is guest RAM).
pub const GUEST_INITIAL_RSP: u64 = 0x0009_F000;

/// The VMPL the emulated platform reports for the guest.
pub const GUEST_VMPL: u8 = 1;

/// Layout of the boot-information page at [`BOOT_INFO_GPA`].
pub mod boot_info {
    /// `u32` magic at offset 0.
    pub const MAGIC: u32 = 0x4E42_4931; // "NBI1"
    /// Offset of the `u32` magic.
    pub const MAGIC_OFFSET: usize = 0x0;
    /// Offset of the `u32` command-line length.
    pub const CMDLINE_LEN_OFFSET: usize = 0x4;
    /// Offset of the `u32` number of guest RAM ranges.
    pub const RAM_RANGES_OFFSET: usize = 0x8;
    /// Offset of the guest RAM ranges: `(u64 start, u64 end)` pairs.
    pub const RAM_TABLE_OFFSET: usize = 0x10;
    /// Most RAM ranges listed.
    pub const MAX_RAM_RANGES: usize = 32;
    /// Offset of the guest GDT: null, 64-bit code (selector 0x08), data (0x10);
    /// the initial GDTR points here.
    pub const GDT_OFFSET: usize = 0x300;
    /// The guest GDT's descriptors.
    pub const GDT: [u64; 3] = [0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF];
    /// Offset of the command line (not NUL terminated).
    pub const CMDLINE_OFFSET: usize = 0x400;
    /// Most command-line bytes passed.
    pub const CMDLINE_MAX: usize = 0xC00;
}

/// I/O ports the guest may use directly; every other port access is intercepted
/// and answered with #GP.
pub mod ports {
    /// COM1: console shared by the SVSM and the guest.
    pub const COM1: u16 = 0x3F8;
    /// COM2: the relay guest's request channel.
    pub const COM2: u16 = 0x2F8;
    /// QEMU `isa-debug-exit` (iosize 4).
    pub const DEBUG_EXIT: u16 = 0xF4;
}

/// Values written to the `isa-debug-exit` port. QEMU exits with `value << 1 | 1`.
pub mod exit {
    /// A guest reports success.
    pub const GUEST_PASS: u32 = 0x21;
    /// A guest reports failure.
    pub const GUEST_FAIL: u32 = 0x22;
    /// The SVSM stopped the guest after an access to SVSM memory.
    pub const GUEST_VIOLATION: u32 = 0x30;
    /// The SVSM stopped the guest because it cannot continue (halted with
    /// interrupts off, triple fault, unexpected exit).
    pub const GUEST_STOPPED: u32 = 0x31;
    /// The SVSM itself failed (CPU exception, panic, boot error).
    pub const SVSM_FATAL: u32 = 0x3F;

    /// QEMU's process exit status for a value written to the port.
    pub const fn qemu_status(value: u32) -> i32 {
        ((value << 1) | 1) as i32
    }
}
