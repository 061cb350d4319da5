//! Numbers shared by the SVSM, the guests, the virtual SNP machine, the runner and
//! the tests: the SVSM's region, the boot-information page, the I/O ports, the exit
//! statuses and the development PSP's blob and constants.
//!
//! The module keeps the name of the emulated platform it was written for; that
//! platform was retired by issue 15 (`docs/emulated-platform.md`) and the SVSM is
//! SEV-SNP only. The prose version of the guest contract, with the guest's entry CPU
//! state, is `docs/guest-contract.md`; the SNP guest's fixed pages are
//! `nitride_kernel::platform::snp::guest_setup::layout`.

/// Start of the RAM the SVSM keeps for itself (code, data, heap, stacks, page
/// tables). The firmware ELF is linked at this address; the IGVM image builder
/// places the SVSM's region here.
pub const SVSM_BASE: u64 = 0x0100_0000;
/// Size of the SVSM's RAM region.
pub const SVSM_SIZE: u64 = 0x0100_0000;
/// End (exclusive) of the SVSM's RAM region.
pub const SVSM_END: u64 = SVSM_BASE + SVSM_SIZE;

/// Layout of the boot-information page the SVSM gives its guest
/// (`nitride_kernel::platform::snp::guest_setup::layout::BOOT_INFO`).
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

/// I/O ports of the QEMU machine the virtual SNP machine runs in. A guest reaches
/// COM1 through the GHCB (the host prints its lines) and COM2 directly; the host
/// (the virtual SNP machine) intercepts every other port, so the debug console and
/// `isa-debug-exit` are the host's (`docs/snp-machine.md`).
pub mod ports {
    /// COM1: the guest's console. The SVSM never writes here.
    pub const COM1: u16 = 0x3F8;
    /// COM2: the relay guest's request channel.
    pub const COM2: u16 = 0x2F8;
    /// QEMU `isa-debug-exit` (iosize 4): how the virtual SNP machine ends QEMU. No
    /// guest reaches it; guests and the SVSM end a run with a GHCB termination
    /// request ([`exit`]).
    pub const DEBUG_EXIT: u16 = 0xF4;
    /// QEMU `isa-debugcon`: the host log, with the virtual SNP machine's lines and
    /// the SVSM's log (VMPL0's GHCB IOIO writes to this port); no other VMPL reaches
    /// it.
    pub const SVSM_LOG: u16 = 0xE9;
}

/// Exit statuses: the reason codes of a GHCB termination request with Nitride's
/// reason set (`snp::ghcb::term::SET_NITRIDE`), which the host reports with the
/// requesting VMPL (`docs/guest-contract.md`, "Exit statuses"). The values are split
/// in two ranges that never meet: the guest's own statuses
/// ([`GUEST_STATUS_FIRST`]..=[`GUEST_STATUS_LAST`]), which the runner accepts only
/// from a guest VMPL, and the SVSM's verdicts (0x30..=0x3F), accepted only from VMPL0
/// with the matching verdict line ([`VERDICT_PREFIX`]) that the SVSM writes to its own
/// log before it terminates.
pub mod exit {
    /// The first status a guest may end the run with.
    pub const GUEST_STATUS_FIRST: u32 = 0x20;
    /// The last status a guest may end the run with.
    pub const GUEST_STATUS_LAST: u32 = 0x2F;
    /// A guest reports success.
    pub const GUEST_PASS: u32 = 0x21;
    /// A guest reports failure.
    pub const GUEST_FAIL: u32 = 0x22;
    /// The SVSM stopped because its guest cannot continue (the request loop
    /// ended). A guest that halts or triple-faults is stopped by the host (the
    /// machine's GUEST_STOPPED status).
    pub const GUEST_STOPPED: u32 = 0x31;
    /// The SVSM itself failed (CPU exception, panic, boot error).
    pub const SVSM_FATAL: u32 = 0x3F;

    /// The SVSM's verdict line on its log: `[svsm] ` then this prefix, the value in
    /// hex (`0x21`), a space and [`name`] of the value; e.g.
    /// `[svsm] verdict: 0x21 guest-pass`.
    pub const VERDICT_PREFIX: &str = "verdict: ";

    /// Whether a guest may end the run with `value`.
    pub const fn is_guest_status(value: u32) -> bool {
        GUEST_STATUS_FIRST <= value && value <= GUEST_STATUS_LAST
    }

    /// The verdict's name in the log.
    pub const fn name(value: u32) -> &'static str {
        match value {
            GUEST_PASS => "guest-pass",
            GUEST_FAIL => "guest-fail",
            GUEST_STOPPED => "guest-stopped",
            SVSM_FATAL => "svsm-fatal",
            v if is_guest_status(v) => "guest-status",
            _ => "unknown",
        }
    }

    /// QEMU's process exit status for a value written to `isa-debug-exit`.
    pub const fn qemu_status(value: u32) -> i32 {
        ((value << 1) | 1) as i32
    }
}

/// The development PSP: what the runner hands the virtual SNP machine (through
/// QEMU's fw_cfg) so that its emulated PSP (`qemu/emulated-psp`) can play the part of
/// the AMD Secure Processor, and the fixed values its reports carry. See
/// `docs/snp-machine.md`, "The PSP".
///
/// The runner generates a development chain once (ARK and ASK: RSA-4096, VCEK:
/// P-384, certificates signed with RSA-PSS as AMD signs them) and caches it; the
/// private keys never leave the build directory. The machine receives the VCEK's
/// private scalar, a chip secret (the root of KEY_REQ derivations, stable across
/// boots like the real chip's) and the certificate table it returns to extended
/// requests; without a valid blob it stops before launching anything.
pub mod dev_psp {
    use zerocopy::byteorder::little_endian::{U32, U64};
    use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

    /// The fw_cfg file the blob is passed in.
    pub const FW_CFG_NAME: &str = "opt/nitride/dev-psp";
    /// Magic at the start of the blob (version 2: with the chip's TCB).
    pub const MAGIC: [u8; 8] = *b"NDPSP002";
    /// Largest certificate table accepted.
    pub const MAX_CERT_TABLE: usize = 16 * 1024;

    /// Head of the blob; the certificate table (`snp::certs` layout) follows.
    #[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
    #[repr(C)]
    pub struct BlobHeader {
        /// [`MAGIC`].
        pub magic: [u8; 8],
        /// The development VCEK's private scalar, big-endian.
        pub vcek_scalar: [u8; 48],
        /// The chip secret KEY_REQ derivations start from.
        pub chip_secret: [u8; 32],
        /// Length of the certificate table that follows.
        pub cert_table_len: U32,
        /// How the guest was launched: [`LAUNCH_DEBUG`] or zero; other bits must be
        /// zero (this was a reserved zero field before, so older blobs read as a
        /// launch without debugging).
        pub launch_flags: U32,
        /// The chip's TCB_VERSION: what its reports carry as the current, reported,
        /// committed and launch TCB, and the highest TCB KEY_REQ derives at. The
        /// runner writes [`TCB_VERSION`], which the development VCEK certificate
        /// names; a test raises it to play a firmware update (its reports then no
        /// longer match the VCEK certificate's TCB, as on a real chip until the new
        /// VCEK is fetched).
        pub tcb_version: U64,
    }
    const _: () = assert!(core::mem::size_of::<BlobHeader>() == 104);

    impl core::fmt::Debug for BlobHeader {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("BlobHeader")
                .field("cert_table_len", &self.cert_table_len.get())
                .finish_non_exhaustive()
        }
    }

    /// CHIP_ID of the emulated chip: `"NITRIDE-DEV-CHIP"` then zeros (a development
    /// chip can never collide with a real one, whose CHIP_ID is a fused 64-byte value).
    pub const CHIP_ID: [u8; 64] = {
        let mut id = [0u8; 64];
        let name = *b"NITRIDE-DEV-CHIP";
        let mut i = 0;
        while i < name.len() {
            id[i] = name[i];
            i += 1;
        }
        id
    };

    /// The emulated chip is a Genoa part: CPUID family, model, stepping in the report.
    pub const CPUID_FAM_MOD_STEP: [u8; 3] = [0x19, 0x11, 0x01];
    /// Product name in the development VCEK certificate.
    pub const PRODUCT_NAME: &str = "Genoa";

    /// TCB (Genoa layout): bootloader, TEE, SNP and microcode SPLs.
    pub const TCB_BOOTLOADER: u8 = 9;
    /// TEE SPL.
    pub const TCB_TEE: u8 = 0;
    /// SNP SPL.
    pub const TCB_SNP: u8 = 23;
    /// Microcode SPL.
    pub const TCB_MICROCODE: u8 = 72;

    /// The TCB_VERSION every TCB field of the report carries (current, reported,
    /// committed, launch).
    pub const TCB_VERSION: u64 =
        u64::from_le_bytes([TCB_BOOTLOADER, TCB_TEE, 0, 0, 0, 0, TCB_SNP, TCB_MICROCODE]);

    /// Report version the emulated PSP produces.
    pub const REPORT_VERSION: u32 = 3;
    /// Guest policy in the report: SMT allowed, reserved bit 17 set, not debug.
    pub const GUEST_POLICY: u64 = (1 << 16) | (1 << 17);
    /// The guest policy's DEBUG bit (bit 19: the host may debug the guest, so read
    /// its memory).
    pub const POLICY_DEBUG: u64 = 1 << 19;
    /// [`BlobHeader::launch_flags`]: play a launch whose policy allows debugging
    /// (the reports' and the key derivations' policy is [`GUEST_POLICY`] with
    /// [`POLICY_DEBUG`]); a relying party must refuse such a guest.
    pub const LAUNCH_DEBUG: u32 = 1;
    /// PSP firmware version (build, minor, major) in the report.
    pub const FIRMWARE_VERSION: [u8; 3] = [21, 55, 1];
}
