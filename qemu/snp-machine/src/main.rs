//! The virtual SNP machine image: QEMU boots it through PVH with an IGVM file as the
//! module; it launches the confidential VM the file describes and plays the host,
//! the SEV-SNP hardware and the PSP for it (`docs/snp-machine.md`).
//!
//! Each VMPL runs in its own VMCB under nested page tables derived from the RMP: the
//! private view of guest RAM (guest-physical addresses with the C-bit) maps what the
//! RMP lets that VMPL do, the shared view maps the pages the host owns. A VMPL's
//! registers live in its VMSA page between runs. What SEV-ES hardware turns into #VC
//! is delivered as #VC; VMGEXIT is served with the GHCB MSR protocol and the GHCB
//! page; PVALIDATE and RMPADJUST, which TCG does not know (#UD), are emulated.
#![no_std]
#![no_main]

extern crate alloc;

mod arch;

use nitride_rt as _;

use alloc::vec::Vec;

use arch::stop;
use arch::svm::{self, Gprs, SvmPages};
use nitride_emulated_psp::{DevPspConfig, EmulatedPsp, LaunchInfo, RequestError, PSP_PAGE};
use nitride_protocol::emulated::dev_psp;
use nitride_rt::fw_cfg;
use nitride_snp_machine::decode::{decode, Insn};
use nitride_snp_machine::ghcb::{self, nae};
use nitride_snp_machine::igvm::{self, Action, PageKind, Plan};
use nitride_snp_machine::rmp::{perm, Outcome, Rmp};
use nitride_snp_machine::vmsa::{self, off as vo};
use nitride_snp_machine::{
    cpuid, exit, hex, C_MASK, GUEST_HOST_BASE, LAUNCH_VMSA_GPA, RAM_END, SEV_FEATURES, SEV_STATUS,
    VMPLS,
};
use zeroize::Zeroizing;

/// The machine's heap.
#[global_allocator]
static ALLOCATOR: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();
const HEAP_SIZE: usize = 8 << 20;
static mut HEAP: [u8; HEAP_SIZE] = [0; HEAP_SIZE];

fn heap_init() {
    // SAFETY: called once at boot, before any allocation; the array is used by
    // nothing else.
    unsafe {
        ALLOCATOR
            .lock()
            .init(core::ptr::addr_of_mut!(HEAP) as *mut u8, HEAP_SIZE)
    };
}

/// VMCB control-area offsets.
mod ctl {
    pub const INTERCEPT_CR: usize = 0x000;
    pub const INTERCEPT_DR: usize = 0x004;
    pub const INTERCEPT_EXC: usize = 0x008;
    pub const INTERCEPT_MISC1: usize = 0x00C;
    pub const INTERCEPT_MISC2: usize = 0x010;
    pub const IOPM_BASE_PA: usize = 0x040;
    pub const MSRPM_BASE_PA: usize = 0x048;
    pub const GUEST_ASID: usize = 0x058;
    pub const TLB_CONTROL: usize = 0x05C;
    pub const V_INTR: usize = 0x060;
    pub const EXITCODE: usize = 0x070;
    pub const EXITINFO1: usize = 0x078;
    pub const EXITINFO2: usize = 0x080;
    pub const EXITINTINFO: usize = 0x088;
    pub const NP_ENABLE: usize = 0x090;
    pub const EVENTINJ: usize = 0x0A8;
    pub const N_CR3: usize = 0x0B0;
}

/// VMCB save-area offsets (0x400 + the VMSA offset).
mod sv {
    pub const CS_BASE: usize = 0x418;
    pub const CPL: usize = 0x4CB;
    pub const EFER: usize = 0x4D0;
    pub const CR3: usize = 0x550;
    pub const CR0: usize = 0x558;
    pub const DR7: usize = 0x560;
    pub const DR6: usize = 0x568;
    pub const RFLAGS: usize = 0x570;
    pub const RIP: usize = 0x578;
    pub const DR0: usize = 0x580;
    pub const RSP: usize = 0x5D8;
    pub const RAX: usize = 0x5F8;
    pub const CR2: usize = 0x640;
}

/// Exit codes.
mod code {
    pub const WRITE_CR0: u64 = 0x10;
    pub const READ_DR0: u64 = 0x20;
    pub const WRITE_DR7: u64 = 0x37;
    pub const EXCP_UD: u64 = 0x46;
    pub const INTR: u64 = 0x60;
    pub const INIT: u64 = 0x63;
    pub const RDPMC: u64 = 0x6F;
    pub const CPUID: u64 = 0x72;
    pub const INVD: u64 = 0x76;
    pub const HLT: u64 = 0x78;
    pub const INVLPGA: u64 = 0x7A;
    pub const IOIO: u64 = 0x7B;
    pub const MSR: u64 = 0x7C;
    pub const SHUTDOWN: u64 = 0x7F;
    pub const VMRUN: u64 = 0x80;
    pub const VMMCALL: u64 = 0x81;
    pub const SKINIT: u64 = 0x86;
    pub const WBINVD: u64 = 0x89;
    pub const MWAIT_COND: u64 = 0x8C;
    pub const XSETBV: u64 = 0x8D;
    pub const NPF: u64 = 0x400;
    /// The #VC error code of an access to a private page that is not validated.
    pub const PAGE_NOT_VALIDATED: u64 = 0x404;
}

/// COM2, the relay channel, which the machine leaves unintercepted.
const COM2_PORTS: core::ops::Range<u16> = 0x2F8..0x300;

/// A little-endian u64 at `at` of a GHCB save area.
fn g64(g: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&g[at..at + 8]);
    u64::from_le_bytes(b)
}

fn get64(p: &[u8; 4096], at: usize) -> u64 {
    vmsa::get64(p, at)
}

fn put64(p: &mut [u8; 4096], at: usize, v: u64) {
    vmsa::put64(p, at, v)
}

/// One VMPL's state outside its VMSA.
#[derive(Default)]
struct Vcpu {
    gprs: Gprs,
    /// The GHCB MSR.
    ghcb_msr: u64,
    /// The registered GHCB page.
    ghcb_gpa: Option<u64>,
    /// The VMSA the host runs for this VMPL.
    vmsa: Option<u64>,
    /// The VMSA whose extended state is in `Fpu::guest`.
    fpu_for: Option<u64>,
    /// XCR0.
    xcr0: u64,
    /// Console bytes of the line in progress.
    line: Vec<u8>,
}

/// What to do after an exit.
enum Flow {
    /// Run the current VMPL again.
    Resume,
    /// Stop QEMU with this status (the report is printed).
    Stop(u32),
}

struct Machine {
    p: &'static mut SvmPages,
    ram: &'static mut [u8],
    rmp: Rmp,
    /// The PSP, once the launch is measured.
    psp: Option<EmulatedPsp>,
    vcpu: [Vcpu; VMPLS],
    current: usize,
    flush: [bool; VMPLS],
    xcr0_supported: u64,
    exits: u64,
}

/// The VMSA's GPR block (RCX at 0x308 through R15 at 0x378, with the reserved slot
/// where RSP would be) into the world switch's registers, laid out alike (a straight
/// copy the compiler makes without a loop); the RSP slot cleared (RSP lives in the
/// VMCB).
fn load_gprs(gprs: &mut Gprs, page: &[u8; 4096]) {
    for (g, w) in gprs
        .0
        .iter_mut()
        .zip(page[vo::RCX..vo::RCX + GPR_BYTES].chunks_exact(8))
    {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        *g = u64::from_le_bytes(b);
    }
    gprs.0[3] = 0;
}

/// The world switch's registers into the VMSA's GPR block; the slot where RSP would
/// be (reserved in the VMSA) is left as it was.
fn store_gprs(page: &mut [u8; 4096], gprs: &Gprs) {
    let reserved = get64(page, vo::RCX + 24);
    for (w, g) in page[vo::RCX..vo::RCX + GPR_BYTES]
        .chunks_exact_mut(8)
        .zip(gprs.0.iter())
    {
        w.copy_from_slice(&g.to_le_bytes());
    }
    put64(page, vo::RCX + 24, reserved);
}

/// Instruction bytes the machine fetches at an exit: the longest instruction
/// [`decode`] knows (PVALIDATE, RMPADJUST, VMGEXIT, MOV to or from DRn/CRn with a
/// REX prefix) is 4 bytes, and it reads no further.
const FETCH: usize = 4;

/// Bytes of the VMSA's GPR block from RCX on (15 words).
const GPR_BYTES: usize = 15 * 8;

/// The architectural fields of the first [`vmsa::VMCB_SAVE_LEN`] bytes, which a VMSA
/// and a VMCB save area lay out alike, as `(offset, length)`: the segments and
/// descriptor tables, VMPL and CPL with EFER, CR4 through RIP, RSP through CR2 (CET,
/// RAX, the syscall and SYSENTER MSRs, KERNEL_GS_BASE), G_PAT. The reserved bytes
/// between them are never loaded or saved, as on hardware. Each piece is at most
/// 128 bytes, a fixed-size copy the compiler makes without a call.
const SAVE_AREA_FIELDS: [(usize, usize); 6] = [
    (0x000, 0x50),
    (0x050, 0x50),
    (0x0C8, 0x10),
    (0x148, 0x38),
    (0x1D8, 0x70),
    (0x268, 0x08),
];

/// Copy the architectural fields of a save area (VMSA to VMCB or back): `dst` and
/// `src` start at the save area's first byte.
fn copy_save_area(dst: &mut [u8], src: &[u8]) {
    fn piece<const N: usize>(dst: &mut [u8], src: &[u8], at: usize) {
        let s: &[u8; N] = src[at..at + N].try_into().unwrap_or(&[0; N]);
        if let Some(d) = dst.get_mut(at..at + N) {
            d.copy_from_slice(s);
        }
    }
    piece::<0x50>(dst, src, SAVE_AREA_FIELDS[0].0);
    piece::<0x50>(dst, src, SAVE_AREA_FIELDS[1].0);
    piece::<0x10>(dst, src, SAVE_AREA_FIELDS[2].0);
    piece::<0x38>(dst, src, SAVE_AREA_FIELDS[3].0);
    piece::<0x70>(dst, src, SAVE_AREA_FIELDS[4].0);
    piece::<0x08>(dst, src, SAVE_AREA_FIELDS[5].0);
}

fn ram_page(ram: &mut [u8], gpa: u64) -> &mut [u8; 4096] {
    let at = (gpa & !0xFFF) as usize;
    (&mut ram[at..at + 4096])
        .try_into()
        .unwrap_or_else(|_| unreachable!())
}

#[no_mangle]
extern "C" fn machine_main64(start_info: u32) -> ! {
    arch::CONSOLE.init();
    arch::load_idt();
    heap_init();
    extern "C" {
        static __machine_end: u8;
    }
    let end = core::ptr::addr_of!(__machine_end) as u64;
    if end > GUEST_HOST_BASE {
        stop(
            exit::MACHINE_FATAL,
            format_args!("image end {end:#x} overlaps guest RAM"),
        );
    }
    let info = arch::start_info(u64::from(start_info));
    if !arch::ram_covers(u64::from(start_info), GUEST_HOST_BASE + RAM_END) {
        stop(
            exit::MACHINE_FATAL,
            format_args!(
                "QEMU has no RAM at {GUEST_HOST_BASE:#x}..{:#x} for the guest (give -m 256M)",
                GUEST_HOST_BASE + RAM_END
            ),
        );
    }
    let Some((module, size)) = info.module else {
        stop(
            exit::LAUNCH_REFUSED,
            format_args!("no IGVM file (give it with -initrd)"),
        );
    };
    if module < GUEST_HOST_BASE + RAM_END && module + size > GUEST_HOST_BASE {
        stop(
            exit::MACHINE_FATAL,
            format_args!("the IGVM module overlaps guest RAM"),
        );
    }
    let file = arch::module_bytes(module, size);
    log!(
        "virtual SNP machine: IGVM file of {size} bytes, guest RAM {} MiB, C-bit {}",
        RAM_END >> 20,
        nitride_snp_machine::C_BIT
    );

    let config = match fw_cfg::read_file(dev_psp::FW_CFG_NAME) {
        Ok(blob) => match DevPspConfig::parse(&blob) {
            Ok(c) => c,
            Err(e) => stop(exit::MACHINE_FATAL, format_args!("PSP: {e}")),
        },
        Err(e) => stop(
            exit::MACHINE_FATAL,
            format_args!(
                "PSP: no dev-PSP blob in fw_cfg {} ({e:?})",
                dev_psp::FW_CFG_NAME
            ),
        ),
    };

    let plan = match igvm::parse(file) {
        Ok(p) => p,
        Err(e) => stop(exit::LAUNCH_REFUSED, format_args!("launch refused: {e}")),
    };
    if plan.policy != dev_psp::GUEST_POLICY {
        stop(
            exit::LAUNCH_REFUSED,
            format_args!(
                "launch refused: guest policy {:#x}; this PSP launches only {:#x}",
                plan.policy,
                dev_psp::GUEST_POLICY
            ),
        );
    }
    let mut vmpcks = [[0u8; 32]; 4];
    for k in &mut vmpcks {
        *k = arch::random32().unwrap_or_else(|| {
            stop(
                exit::MACHINE_FATAL,
                format_args!("no RDRAND for the VMPCKs"),
            )
        });
    }
    let report_id = arch::random32().unwrap_or_else(|| {
        stop(
            exit::MACHINE_FATAL,
            format_args!("no RDRAND for the report ID"),
        )
    });

    let p = svm::pages();
    let ram = arch::guest_ram();
    let mut m = Machine {
        p,
        ram,
        rmp: Rmp::new(),
        psp: None,
        vcpu: Default::default(),
        current: 0,
        flush: [true; VMPLS],
        xcr0_supported: 0,
        exits: 0,
    };
    let measurement = m.launch(&plan, &vmpcks, &info.cmdline);
    m.psp = Some(
        EmulatedPsp::new(
            config,
            LaunchInfo {
                measurement,
                host_data: [0; 32],
                report_id,
            },
            vmpcks.map(Zeroizing::new),
        )
        .with_clock(arch::tsc),
    );
    vmpcks.iter_mut().for_each(|k| k.fill(0));
    if let Err(e) = svm::enable(m.p) {
        stop(exit::MACHINE_FATAL, format_args!("SVM: {e:?}"));
    }
    m.setup_vmcbs();
    m.build_npt();
    if let Err(why) = m.enter(0) {
        stop(
            exit::LAUNCH_REFUSED,
            format_args!("launch VMSA refused: {why}"),
        );
    }
    log!("running VMPL0");
    m.run()
}

impl Machine {
    /// Place every page of the plan, fill the secrets, CPUID and parameter pages,
    /// and compute the launch digest.
    fn launch(&mut self, plan: &Plan<'_>, vmpcks: &[[u8; 32]; 4], cmdline: &[u8]) -> [u8; 48] {
        self.ram.fill(0);
        let real = |l, s| arch::cpuid(l, s);
        let xsave = arch::cpuid(0xD, 0);
        self.xcr0_supported =
            (u64::from(xsave[0]) | (u64::from(xsave[3]) << 32)) & cpuid::XCR0_SUPPORTED;
        let mut pages = 0u64;
        for a in &plan.actions {
            match *a {
                Action::Page { gpa, kind, data } => {
                    let page = ram_page(self.ram, gpa);
                    match kind {
                        PageKind::Secrets => {
                            *page = cpuid::secrets_page(vmpcks, dev_psp::CPUID_FAM_MOD_STEP)
                        }
                        PageKind::Cpuid => *page = cpuid::cpuid_page(real),
                        _ => {
                            if let Some(d) = data {
                                page.copy_from_slice(d);
                            }
                        }
                    }
                    if kind == PageKind::Shared {
                        self.rmp.set_state(gpa, false);
                    } else {
                        self.rmp.launch(gpa, false);
                    }
                    pages += 1;
                }
                Action::Parameter { gpa, area, bytes } => {
                    for i in 0..bytes / 4096 {
                        self.rmp.launch(gpa + i * 4096, false);
                        pages += 1;
                    }
                    let base = gpa as usize;
                    let region = &mut self.ram[base..base + bytes as usize];
                    if let Some(c) = plan.cmdline.filter(|c| c.area == area) {
                        let at = c.offset as usize;
                        let n = cmdline.len().min(region.len() - at - 1);
                        region[at..at + n].copy_from_slice(&cmdline[..n]);
                    }
                    if let Some(c) = plan.memory_map.filter(|c| c.area == area) {
                        let at = c.offset as usize;
                        if region.len() - at >= 24 {
                            region[at + 8..at + 16]
                                .copy_from_slice(&(RAM_END / 4096).to_le_bytes());
                        }
                    }
                }
            }
        }
        self.p.launch_vmsa = plan.vmsa;
        self.rmp.launch(LAUNCH_VMSA_GPA, true);
        self.vcpu[0].vmsa = Some(LAUNCH_VMSA_GPA);
        pages += 1;
        let start = arch::tsc();
        let digest = igvm::launch_digest(plan);
        let cost = arch::tsc().wrapping_sub(start);
        let mut h = [0u8; 96];
        log!("launch digest {}", hex(&digest, &mut h));
        log!(
            "launched {pages} pages; digest {cost} cycles, {} per page",
            cost / pages.max(1)
        );
        digest
    }

    fn setup_vmcbs(&mut self) {
        self.p.iopm.iter_mut().for_each(|p| p.fill(0xFF));
        // COM2 (the relay channel) is not intercepted: SEV-ES raises #VC only for an
        // intercepted event, so a VMPL's IN/OUT there reach QEMU's second UART directly.
        for port in COM2_PORTS {
            let (page, byte) = (usize::from(port / 8) / 4096, usize::from(port / 8) % 4096);
            self.p.iopm[page][byte] &= !(1 << (port % 8));
        }
        let msrpm = &mut self.p.msrpm;
        msrpm.iter_mut().for_each(|p| p.fill(0xFF));
        // Not intercepted: what VMRUN/VMLOAD/VMSAVE keep per VMPL (EFER; FS, GS and
        // kernel GS base; STAR, LSTAR, CSTAR, SFMASK; SYSENTER CS/ESP/EIP), as an
        // SEV-ES host leaves them to the VMSA.
        let mut pass = |msr: u32| {
            let (base, idx) = match msr {
                0..=0x1FFF => (0, msr),
                0xC000_0000..=0xC000_1FFF => (0x800, msr - 0xC000_0000),
                _ => return,
            };
            let bit = 2 * idx as usize;
            let byte = base + bit / 8;
            msrpm[byte / 4096][byte % 4096] &= !(3 << (bit % 8));
        };
        for msr in [
            0x174,
            0x175,
            0x176,
            0xC000_0080,
            0xC000_0081,
            0xC000_0082,
            0xC000_0083,
            0xC000_0084,
            0xC000_0100,
            0xC000_0101,
            0xC000_0102,
        ] {
            pass(msr);
        }
        let iopm = svm::pa(&self.p.iopm);
        let msrpm = svm::pa(&self.p.msrpm);
        for v in 0..VMPLS {
            let ncr3 = svm::pa(&self.p.pml4[v]);
            let c = &mut self.p.vmcb[v];
            c[..0x400].fill(0);
            // CR0 writes: paging on or off changes what guest-physical addresses
            // without the C-bit mean (with paging off, every access is private).
            c[ctl::INTERCEPT_CR..ctl::INTERCEPT_CR + 4]
                .copy_from_slice(&(1u32 << 16).to_le_bytes());
            // Every DR read and write.
            c[ctl::INTERCEPT_DR..ctl::INTERCEPT_DR + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            // #UD: PVALIDATE and RMPADJUST.
            c[ctl::INTERCEPT_EXC..ctl::INTERCEPT_EXC + 4]
                .copy_from_slice(&(1u32 << 6).to_le_bytes());
            // INTR, NMI, SMI, INIT, RDPMC, CPUID, INVD, HLT, INVLPGA, IOIO, MSR, SHUTDOWN.
            let misc1: u32 = 0xF
                | (1 << 15)
                | (1 << 18)
                | (1 << 22)
                | (1 << 24)
                | (1 << 26)
                | (1 << 27)
                | (1 << 28)
                | (1 << 31);
            c[ctl::INTERCEPT_MISC1..ctl::INTERCEPT_MISC1 + 4].copy_from_slice(&misc1.to_le_bytes());
            // VMRUN, VMMCALL, VMLOAD, VMSAVE, STGI, CLGI, SKINIT, WBINVD, MONITOR,
            // MWAIT, MWAIT_COND, XSETBV.
            let misc2: u32 = 0x7F | (0x1F << 9);
            c[ctl::INTERCEPT_MISC2..ctl::INTERCEPT_MISC2 + 4].copy_from_slice(&misc2.to_le_bytes());
            put64(c, ctl::IOPM_BASE_PA, iopm);
            put64(c, ctl::MSRPM_BASE_PA, msrpm);
            c[ctl::GUEST_ASID..ctl::GUEST_ASID + 4].copy_from_slice(&1u32.to_le_bytes());
            put64(c, ctl::V_INTR, 1 << 24);
            put64(c, ctl::NP_ENABLE, 1);
            put64(c, ctl::N_CR3, ncr3);
        }
    }

    fn build_npt(&mut self) {
        let p = &mut *self.p;
        let link = |t: &mut svm::Tables| {
            let pd = svm::pa(&t.pd);
            t.pdpt[0] = pd | 7;
            for i in 0..32 {
                t.pd[i] = svm::pa(&t.pt[i]) | 7;
            }
        };
        for v in 0..VMPLS {
            link(&mut p.shared[v]);
            link(&mut p.private[v]);
            p.pml4[v][0] = svm::pa(&p.private[v].pdpt) | 7;
            p.pml4[v][(C_MASK >> 39) as usize] = svm::pa(&p.private[v].pdpt) | 7;
        }
        for gpa in (0..RAM_END).step_by(4096) {
            self.sync_npt(gpa);
        }
    }

    /// Make the nested page-table entries of the page at `gpa` say what the RMP says.
    fn sync_npt(&mut self, gpa: u64) {
        let Some(e) = self.rmp.entry(gpa).copied() else {
            return;
        };
        if gpa >= RAM_END {
            return;
        }
        let idx = (gpa / 4096) as usize;
        let (t, i) = (idx / 512, idx % 512);
        let host = GUEST_HOST_BASE + gpa;
        const NX: u64 = 1 << 63;
        for v in 0..VMPLS {
            let a = e.allowed(v);
            // Without the C-bit: a host page read-write for every VMPL; a private
            // page with this VMPL's RMP permissions (SNP walks guest page tables and
            // fetches instructions privately whatever the C-bit says, and QEMU walks
            // them with write intent; see docs/snp-machine.md).
            self.p.shared[v].pt[t][i] = if !e.assigned {
                host | 0x67 | NX
            } else if a & perm::READ != 0 {
                host | 0x65
                    | if a & perm::WRITE != 0 { 0x2 } else { 0 }
                    | if a & perm::EXEC_SUPERVISOR != 0 {
                        0
                    } else {
                        NX
                    }
            } else {
                0
            };
            self.p.private[v].pt[t][i] = if a & perm::READ == 0 {
                0
            } else {
                host | 0x65
                    | if a & perm::WRITE != 0 { 0x2 } else { 0 }
                    | if a & perm::EXEC_SUPERVISOR != 0 {
                        0
                    } else {
                        NX
                    }
            };
        }
        self.flush = [true; VMPLS];
    }

    /// Host conversion of a page (page state change or implicit conversion): the
    /// contents are not kept.
    fn convert(&mut self, gpa: u64, private: bool) -> bool {
        if gpa >= RAM_END || self.vcpu.iter().any(|c| c.vmsa == Some(gpa)) {
            return false;
        }
        self.rmp.set_state(gpa, private);
        ram_page(self.ram, gpa).fill(0);
        self.sync_npt(gpa);
        true
    }

    /// Load VMPL `v` from its VMSA into its VMCB (what VMRUN of an SEV-ES guest does),
    /// with the checks hardware makes before running a VMSA.
    fn enter(&mut self, v: usize) -> Result<(), &'static str> {
        let gpa = self.vcpu[v].vmsa.ok_or("no VMSA for that VMPL")?;
        let e = self
            .rmp
            .entry(gpa)
            .copied()
            .ok_or("VMSA outside guest memory")?;
        if !(e.assigned && e.validated && e.vmsa) {
            return Err("the page is not a validated VMSA page in the RMP");
        }
        if gpa != LAUNCH_VMSA_GPA && (gpa >= RAM_END || gpa % 4096 != 0) {
            return Err("VMSA outside guest memory");
        }
        let supported = self.xcr0_supported;
        let svm::SvmPages {
            vmcb,
            launch_vmsa,
            fpu,
            ..
        } = &mut *self.p;
        let page: &[u8; 4096] = if gpa == LAUNCH_VMSA_GPA {
            launch_vmsa
        } else {
            ram_page(self.ram, gpa)
        };
        if usize::from(page[vo::VMPL]) != v {
            return Err("the VMSA belongs to another VMPL");
        }
        if get64(page, vo::SEV_FEATURES) != SEV_FEATURES {
            return Err("the VMSA's sev_features differ from the VM's");
        }
        let xcr0 = get64(page, vo::XCR0);
        if !(xcr0 & 1 != 0 && xcr0 & !supported == 0 && (xcr0 & 4 == 0 || xcr0 & 2 != 0)) {
            return Err("the VMSA's XCR0 is invalid");
        }
        let c = &mut vmcb[v];
        copy_save_area(&mut c[vmsa::VMCB_SAVE_OFFSET..], &page[..]);
        put64(c, sv::DR7, 0x400);
        let efer = get64(c, sv::EFER);
        put64(c, sv::EFER, efer | (1 << 12));
        put64(c, ctl::EVENTINJ, 0);
        let cpu = &mut self.vcpu[v];
        load_gprs(&mut cpu.gprs, page);
        cpu.xcr0 = xcr0;
        if cpu.fpu_for != Some(gpa) {
            let area = &mut fpu[v].guest;
            area.fill(0);
            let mxcsr = u32::from_le_bytes([
                page[vo::MXCSR],
                page[vo::MXCSR + 1],
                page[vo::MXCSR + 2],
                page[vo::MXCSR + 3],
            ]);
            area[24..28].copy_from_slice(&(if mxcsr == 0 { 0x1F80 } else { mxcsr }).to_le_bytes());
            cpu.fpu_for = Some(gpa);
        }
        self.flush[v] = true;
        self.set_low_view(v);
        Ok(())
    }

    /// Store VMPL `v`'s registers into its VMSA (what #VMEXIT of an SEV-ES guest does).
    fn leave(&mut self, v: usize) {
        let Some(gpa) = self.vcpu[v].vmsa else { return };
        if gpa != LAUNCH_VMSA_GPA && (gpa >= RAM_END || gpa % 4096 != 0) {
            return;
        }
        let gprs = self.vcpu[v].gprs;
        let xcr0 = self.vcpu[v].xcr0;
        let svm::SvmPages {
            vmcb, launch_vmsa, ..
        } = &mut *self.p;
        let page: &mut [u8; 4096] = if gpa == LAUNCH_VMSA_GPA {
            launch_vmsa
        } else {
            ram_page(self.ram, gpa)
        };
        let c = &vmcb[v];
        let dr7 = get64(page, vo::DR7);
        copy_save_area(&mut page[..], &c[vmsa::VMCB_SAVE_OFFSET..]);
        put64(page, vo::DR7, dr7);
        store_gprs(page, &gprs);
        put64(page, vo::XCR0, xcr0);
    }

    /// Guest-physical addresses without the C-bit: the shared view while VMPL `v`
    /// pages, its private view while paging is off (SEV treats every access as
    /// private then).
    fn set_low_view(&mut self, v: usize) {
        let paging = get64(&self.p.vmcb[v], sv::CR0) & (1 << 31) != 0;
        let low = if paging {
            svm::pa(&self.p.shared[v].pdpt)
        } else {
            svm::pa(&self.p.private[v].pdpt)
        } | 7;
        if self.p.pml4[v][0] != low {
            self.p.pml4[v][0] = low;
            self.flush[v] = true;
        }
    }

    /// MOV to CR0 (intercepted, to follow paging on and off), CLTS.
    fn write_cr0(&mut self, v: usize) -> Flow {
        let (b, n) = self.fetch(v);
        let (value, len) = match decode(&b[..n]) {
            Insn::MovToCr { cr: 0, gpr, len } => (self.gpr(v, usize::from(gpr)), u64::from(len)),
            Insn::Clts => (get64(&self.p.vmcb[v], sv::CR0) & !8, 2),
            other => {
                log!("VMPL{v}: CR0 write by {other:?} is not emulated: stopped");
                return Flow::Stop(exit::GUEST_STOPPED);
            }
        };
        let c = &self.p.vmcb[v];
        let (efer, cr4) = (get64(c, sv::EFER), get64(c, 0x548));
        let pg = value & (1 << 31) != 0;
        if c[sv::CPL] != 0
            || value >> 32 != 0
            || (pg && value & 1 == 0)
            || (value & (1 << 29) != 0 && value & (1 << 30) == 0)
            || (pg && efer & (1 << 8) != 0 && cr4 & (1 << 5) == 0)
        {
            return self.gp(v);
        }
        let c = &mut self.p.vmcb[v];
        put64(c, sv::CR0, value);
        if efer & (1 << 8) != 0 {
            put64(
                c,
                sv::EFER,
                if pg {
                    efer | (1 << 10)
                } else {
                    efer & !(1 << 10)
                },
            );
        }
        self.advance(v, len);
        self.set_low_view(v);
        Flow::Resume
    }

    fn xcr0_ok(&self, x: u64) -> bool {
        x & 1 != 0 && x & !self.xcr0_supported == 0 && (x & 4 == 0 || x & 2 != 0)
    }

    fn run(&mut self) -> ! {
        loop {
            let v = self.current;
            // XCR0 belongs to the VMSA: load this VMPL's. (QEMU executes a guest's
            // XSETBV without the intercept, so the value is read back after the exit.)
            if arch::xcr0() != self.vcpu[v].xcr0 {
                arch::set_xcr0(self.vcpu[v].xcr0);
            }
            let c = &mut self.p.vmcb[v];
            c[ctl::TLB_CONTROL] = u8::from(core::mem::take(&mut self.flush[v]));
            let cpu = &mut self.vcpu[v];
            svm::run(self.p, v, &mut cpu.gprs, &mut cpu.ghcb_msr);
            self.vcpu[v].xcr0 = arch::xcr0();
            self.exits += 1;
            let c = &mut self.p.vmcb[v];
            let intinfo = get64(c, ctl::EXITINTINFO);
            put64(c, ctl::EVENTINJ, 0);
            match self.exit(v) {
                Flow::Resume => {
                    let now = self.current;
                    let c = &mut self.p.vmcb[now];
                    // An event the exit interrupted is delivered again.
                    if now == v && intinfo & (1 << 31) != 0 && get64(c, ctl::EVENTINJ) == 0 {
                        put64(c, ctl::EVENTINJ, intinfo);
                    }
                }
                Flow::Stop(status) => {
                    self.flush_consoles();
                    nitride_rt::exit_qemu(status)
                }
            }
        }
    }

    fn flush_consoles(&mut self) {
        for v in 0..VMPLS {
            if !self.vcpu[v].line.is_empty() {
                self.console_line(v);
            }
        }
    }

    fn rip(&self, v: usize) -> u64 {
        get64(&self.p.vmcb[v], sv::RIP)
    }

    fn advance(&mut self, v: usize, n: u64) {
        let rip = self.rip(v);
        put64(&mut self.p.vmcb[v], sv::RIP, rip.wrapping_add(n));
    }

    fn inject(&mut self, v: usize, vector: u64, error: Option<u32>) {
        let mut e = vector | (3 << 8) | (1 << 31);
        if let Some(code) = error {
            e |= (1 << 11) | (u64::from(code) << 32);
        }
        put64(&mut self.p.vmcb[v], ctl::EVENTINJ, e);
    }

    /// Deliver #VC with `error` (the exit code SEV-ES reports). QEMU 7.2 pushes no
    /// error code for vector 29 when it injects an event, so the machine delivers
    /// #VC itself, as the processor does in 64-bit mode: through the IDT gate, on
    /// the IST stack or RSP0 when the gate or the privilege change asks for it, with
    /// SS, RSP, RFLAGS, CS, RIP and the error code pushed.
    fn vc(&mut self, v: usize, error: u64) -> Flow {
        match self.deliver(v, 29, error) {
            Ok(()) => Flow::Resume,
            Err(why) => {
                let rip = self.rip(v);
                log!(
                    "VMPL{v}: #VC ({error:#x}) at RIP {rip:#x} cannot be delivered: {why}: stopped"
                );
                Flow::Stop(exit::GUEST_STOPPED)
            }
        }
    }

    fn read_lin(&self, v: usize, va: u64) -> Result<u64, &'static str> {
        let (pa, _) = self.translate(v, va).map_err(|_| "unmapped")?;
        if pa % 8 != 0
            || pa >= RAM_END
            || self
                .rmp
                .entry(pa)
                .is_none_or(|e| e.allowed(v) & perm::READ == 0)
        {
            return Err("not readable");
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.ram[pa as usize..pa as usize + 8]);
        Ok(u64::from_le_bytes(b))
    }

    fn write_lin(&mut self, v: usize, va: u64, val: u64) -> Result<(), &'static str> {
        let (pa, _) = self.translate(v, va).map_err(|_| "stack unmapped")?;
        if pa % 8 != 0
            || pa >= RAM_END
            || self
                .rmp
                .entry(pa)
                .is_none_or(|e| e.allowed(v) & perm::WRITE == 0)
        {
            return Err("stack not writable");
        }
        self.ram[pa as usize..pa as usize + 8].copy_from_slice(&val.to_le_bytes());
        Ok(())
    }

    fn deliver(&mut self, v: usize, vector: u64, error: u64) -> Result<(), &'static str> {
        let c = &self.p.vmcb[v];
        if get64(c, sv::EFER) & (1 << 10) == 0 || (get64(c, 0x410) >> 16) & (1 << 9) == 0 {
            return Err("not in 64-bit mode");
        }
        let idt_base = get64(c, 0x488);
        let idt_limit = get64(c, 0x480) >> 32 & 0xFFFF_FFFF;
        if vector * 16 + 15 > idt_limit {
            return Err("vector outside the IDT");
        }
        let lo = self.read_lin(v, idt_base + vector * 16)?;
        let hi = self.read_lin(v, idt_base + vector * 16 + 8)?;
        let ty = (lo >> 40) & 0xF;
        if lo & (1 << 47) == 0 || !(ty == 0xE || ty == 0xF) {
            return Err("no present interrupt or trap gate");
        }
        let target = (lo & 0xFFFF) | ((lo >> 48) << 16) | (hi << 32);
        let selector = (lo >> 16) & 0xFFFF;
        let ist = (lo >> 32) & 7;
        let c = &self.p.vmcb[v];
        let cpl = c[sv::CPL];
        let (old_ss, old_rsp) = (get64(c, 0x420) & 0xFFFF, get64(c, sv::RSP));
        let (old_cs, rflags, rip) = (
            get64(c, 0x410) & 0xFFFF,
            get64(c, sv::RFLAGS),
            get64(c, sv::RIP),
        );
        let tss = get64(c, 0x498);
        let mut rsp = if ist != 0 {
            self.read_lin(v, tss + 0x24 + 8 * (ist - 1)).or_else(|_| {
                // IST slots are 4-byte aligned in the TSS: read the two halves.
                let a = tss + 0x24 + 8 * (ist - 1);
                Ok::<u64, &'static str>(self.read_u32(v, a)? | self.read_u32(v, a + 4)? << 32)
            })?
        } else if cpl != 0 {
            self.read_u32(v, tss + 4)? | self.read_u32(v, tss + 8)? << 32
        } else {
            old_rsp
        };
        rsp &= !0xF;
        for val in [old_ss, old_rsp, rflags, old_cs, rip, error] {
            rsp -= 8;
            self.write_lin(v, rsp, val)?;
        }
        let attrib = if selector == old_cs {
            get64(&self.p.vmcb[v], 0x410) >> 16 & 0xFFFF
        } else {
            let gdt = get64(&self.p.vmcb[v], 0x468);
            let d = self.read_lin(v, gdt + (selector & !7))?;
            ((d >> 40) & 0xFF) | (((d >> 52) & 0xF) << 8)
        };
        let c = &mut self.p.vmcb[v];
        c[0x410..0x412].copy_from_slice(&(selector as u16).to_le_bytes());
        c[0x412..0x414].copy_from_slice(&(attrib as u16).to_le_bytes());
        if cpl != 0 {
            c[0x420..0x422].copy_from_slice(&0u16.to_le_bytes());
        }
        c[sv::CPL] = 0;
        put64(c, sv::RSP, rsp);
        put64(c, sv::RIP, target);
        // TF, NT, RF, VM cleared; IF too through an interrupt gate.
        let mut f = rflags & !((1 << 8) | (1 << 14) | (1 << 16) | (1 << 17));
        if ty == 0xE {
            f &= !(1 << 9);
        }
        put64(c, sv::RFLAGS, f);
        Ok(())
    }

    fn read_u32(&self, v: usize, va: u64) -> Result<u64, &'static str> {
        let q = self.read_lin(v, va & !7)?;
        Ok(if va & 4 != 0 {
            q >> 32
        } else {
            q & 0xFFFF_FFFF
        })
    }

    fn gp(&mut self, v: usize) -> Flow {
        self.inject(v, 13, Some(0));
        Flow::Resume
    }

    fn gpr(&self, v: usize, n: usize) -> u64 {
        match n {
            0 => get64(&self.p.vmcb[v], sv::RAX),
            4 => get64(&self.p.vmcb[v], sv::RSP),
            1..=15 => self.vcpu[v].gprs.0[n - 1],
            _ => 0,
        }
    }

    fn set_gpr(&mut self, v: usize, n: usize, val: u64) {
        match n {
            0 => put64(&mut self.p.vmcb[v], sv::RAX, val),
            4 => put64(&mut self.p.vmcb[v], sv::RSP, val),
            1..=15 => self.vcpu[v].gprs.0[n - 1] = val,
            _ => {}
        }
    }

    /// Translate a guest linear address of VMPL `v` through its page tables: the
    /// guest-physical page (C-bit stripped) and whether the mapping is private, or
    /// the #PF error code.
    fn translate(&self, v: usize, va: u64) -> Result<(u64, bool), u32> {
        let c = &self.p.vmcb[v];
        let cr0 = get64(c, sv::CR0);
        if cr0 & (1 << 31) == 0 {
            return Ok((va & 0xFFFF_FFFF, true));
        }
        if get64(c, sv::EFER) & (1 << 10) == 0 {
            return Err(u32::MAX);
        }
        const ADDR: u64 = 0x000F_FFFF_FFFF_F000 & !C_MASK;
        let mut table = get64(c, sv::CR3) & ADDR;
        for level in [39u32, 30, 21, 12] {
            if table >= RAM_END {
                return Err(u32::MAX);
            }
            let at = (table + ((va >> level) & 0x1FF) * 8) as usize;
            let mut b = [0u8; 8];
            b.copy_from_slice(&self.ram[at..at + 8]);
            let e = u64::from_le_bytes(b);
            if e & 1 == 0 {
                return Err(0);
            }
            let private = e & C_MASK != 0;
            if level == 12 || (level != 39 && e & 0x80 != 0) {
                let size = 1u64 << level;
                let pa = (e & ADDR & !(size - 1)) | (va & (size - 1));
                return Ok((pa, private));
            }
            table = e & ADDR;
        }
        Err(0)
    }

    /// The first [`FETCH`] instruction bytes at VMPL `v`'s RIP (fewer where the
    /// next page is not mapped): all that [`decode`] ever reads.
    fn fetch(&self, v: usize) -> ([u8; FETCH], usize) {
        let c = &self.p.vmcb[v];
        let lin = get64(c, sv::CS_BASE).wrapping_add(get64(c, sv::RIP));
        let mut out = [0u8; FETCH];
        let mut n = 0;
        while n < FETCH {
            let va = lin.wrapping_add(n as u64);
            let Ok((pa, _)) = self.translate(v, va) else {
                break;
            };
            if pa >= RAM_END {
                break;
            }
            let take = (FETCH - n).min(4096 - (pa & 0xFFF) as usize);
            let src = &self.ram[pa as usize..pa as usize + take];
            if take == FETCH {
                // The whole window in one page (the usual case): a fixed-size copy.
                out.copy_from_slice(src);
            } else {
                out[n..n + take].copy_from_slice(src);
            }
            n += take;
        }
        (out, n)
    }

    fn exit(&mut self, v: usize) -> Flow {
        let c = &self.p.vmcb[v];
        let exitcode = get64(c, ctl::EXITCODE);
        let info1 = get64(c, ctl::EXITINFO1);
        let info2 = get64(c, ctl::EXITINFO2);
        let rip = get64(c, sv::RIP);
        match exitcode {
            code::VMMCALL => {
                let (b, n) = self.fetch(v);
                match decode(&b[..n]) {
                    Insn::Vmgexit => {
                        self.advance(v, 4);
                        self.vmgexit(v)
                    }
                    _ => self.vc(v, exitcode),
                }
            }
            code::EXCP_UD => {
                let (b, n) = self.fetch(v);
                match decode(&b[..n]) {
                    insn @ (Insn::Pvalidate | Insn::Rmpadjust) => self.snp_insn(v, insn),
                    _ => {
                        self.inject(v, 6, None);
                        Flow::Resume
                    }
                }
            }
            code::MSR => self.msr(v, info1 == 1),
            code::WRITE_CR0 => self.write_cr0(v),
            code::XSETBV => self.xsetbv(v),
            code::READ_DR0..=code::WRITE_DR7 => self.mov_dr(v, exitcode),
            code::WBINVD => {
                // QEMU reports INVD (0F 08) with the WBINVD exit code.
                let (b, n) = self.fetch(v);
                let invd = n >= 2 && b[..2] == [0x0F, 0x08];
                self.vc(v, if invd { code::INVD } else { code::WBINVD })
            }
            code::CPUID
            | code::IOIO
            | code::RDPMC
            | code::INVD
            | code::WBINVD..=code::MWAIT_COND
            | code::VMRUN..=code::SKINIT
            | code::INVLPGA => self.vc(v, exitcode),
            code::INTR..=code::INIT => Flow::Resume,
            code::NPF => self.npf(v, info1, info2),
            code::HLT => {
                log!("VMPL{v} halted at RIP {rip:#x} (no interrupt will wake it): stopped");
                Flow::Stop(exit::GUEST_STOPPED)
            }
            code::SHUTDOWN => {
                log!("VMPL{v} shut down (triple fault) at RIP {rip:#x}: stopped");
                Flow::Stop(exit::GUEST_STOPPED)
            }
            _ => {
                log!("VMPL{v}: unexpected exit {exitcode:#x} (info {info1:#x} {info2:#x}) at RIP {rip:#x}: stopped");
                Flow::Stop(exit::GUEST_STOPPED)
            }
        }
    }

    fn set_flags(&mut self, v: usize, cf: bool) {
        let c = &mut self.p.vmcb[v];
        let f = get64(c, sv::RFLAGS) & !0x8D5;
        put64(c, sv::RFLAGS, f | u64::from(cf));
    }

    /// PVALIDATE or RMPADJUST (they raised #UD under TCG).
    fn snp_insn(&mut self, v: usize, insn: Insn) -> Flow {
        let cpl = self.p.vmcb[v][sv::CPL];
        if cpl != 0 || (insn == Insn::Pvalidate && v != 0) {
            return self.gp(v);
        }
        let rax = self.gpr(v, 0);
        let (rcx, rdx) = (self.gpr(v, 1), self.gpr(v, 2));
        let gpa = match self.translate(v, rax & !0xFFF) {
            Ok((gpa, _)) => gpa,
            Err(u32::MAX) => {
                log!("VMPL{v}: {insn:?} outside 64-bit paging is not emulated: stopped");
                return Flow::Stop(exit::GUEST_STOPPED);
            }
            Err(e) => {
                put64(&mut self.p.vmcb[v], sv::CR2, rax);
                self.inject(v, 14, Some(e));
                return Flow::Resume;
            }
        };
        let size = if insn == Insn::Pvalidate {
            rcx & 0xFFFF_FFFF
        } else {
            rcx
        };
        if rax & 0xFFF != 0 && size == 0 {
            self.set_gpr(v, 0, u64::from(nitride_snp_machine::rmp::code::FAIL_INPUT));
            self.set_flags(v, false);
            self.advance(v, 4);
            return Flow::Resume;
        }
        // A private page the host has not assigned: KVM converts it on the fault.
        if self.rmp.entry(gpa).is_some_and(|e| !e.assigned) {
            self.convert(gpa, true);
        }
        let outcome = match insn {
            Insn::Pvalidate => self.rmp.pvalidate(v, cpl, gpa, size, rdx & 1 != 0),
            _ => self.rmp.rmpadjust(v, cpl, gpa, size, rdx),
        };
        match outcome {
            Outcome::GeneralProtection => self.gp(v),
            Outcome::Done { eax, cf } => {
                self.set_gpr(v, 0, u64::from(eax));
                self.set_flags(v, cf);
                self.advance(v, 4);
                self.sync_npt(gpa);
                Flow::Resume
            }
        }
    }

    fn msr(&mut self, v: usize, write: bool) -> Flow {
        let msr = self.gpr(v, 1) as u32;
        let value = (self.gpr(v, 0) & 0xFFFF_FFFF) | (self.gpr(v, 2) << 32);
        let read = match (msr, write) {
            (ghcb::MSR_GHCB, false) => self.vcpu[v].ghcb_msr,
            (ghcb::MSR_GHCB, true) => {
                self.vcpu[v].ghcb_msr = value;
                self.advance(v, 2);
                return Flow::Resume;
            }
            (ghcb::MSR_SEV_STATUS, false) => SEV_STATUS,
            (ghcb::MSR_SEV_STATUS, true) => return self.gp(v),
            _ => return self.vc(v, code::MSR),
        };
        self.set_gpr(v, 0, read & 0xFFFF_FFFF);
        self.set_gpr(v, 2, read >> 32);
        self.advance(v, 2);
        Flow::Resume
    }

    /// XSETBV: XCR0 is part of the VMSA on SEV-ES, swapped per VMPL.
    fn xsetbv(&mut self, v: usize) -> Flow {
        let value = (self.gpr(v, 0) & 0xFFFF_FFFF) | (self.gpr(v, 2) << 32);
        if self.p.vmcb[v][sv::CPL] != 0 || self.gpr(v, 1) as u32 != 0 || !self.xcr0_ok(value) {
            return self.gp(v);
        }
        self.vcpu[v].xcr0 = value;
        self.advance(v, 3);
        Flow::Resume
    }

    /// MOV to or from a debug register: DR7 as SEV-ES without DebugSwap (#VC); DR0-3
    /// and DR6 a virtual register file in the VMSA that never reaches the machine's
    /// debug registers.
    fn mov_dr(&mut self, v: usize, exitcode: u64) -> Flow {
        let (b, n) = self.fetch(v);
        let Insn::MovDr {
            dr,
            gpr,
            write,
            len,
        } = decode(&b[..n])
        else {
            return self.vc(v, exitcode);
        };
        if dr == 7 {
            return self.vc(v, exitcode);
        }
        if self.p.vmcb[v][sv::CPL] != 0 {
            return self.gp(v);
        }
        let at = match dr {
            0..=3 => sv::DR0 + 8 * usize::from(dr),
            6 => sv::DR6,
            _ => {
                self.inject(v, 6, None);
                return Flow::Resume;
            }
        };
        if write {
            let val = self.gpr(v, usize::from(gpr));
            if dr == 6 && val >> 32 != 0 {
                return self.gp(v);
            }
            put64(&mut self.p.vmcb[v], at, val);
        } else {
            let val = get64(&self.p.vmcb[v], at);
            self.set_gpr(v, usize::from(gpr), val);
        }
        self.advance(v, u64::from(len));
        Flow::Resume
    }

    fn npf(&mut self, v: usize, info1: u64, info2: u64) -> Flow {
        let paging = get64(&self.p.vmcb[v], sv::CR0) & (1 << 31) != 0;
        let private = info2 & C_MASK != 0 || !paging;
        // The faulting byte (reported) and its page (looked up), C-bit stripped.
        let addr = info2 & !C_MASK;
        let gpa = addr & !0xFFF;
        let write = info1 & 2 != 0;
        let fetch = info1 & 0x10 != 0;
        let rip = self.rip(v);
        let what = if fetch {
            "execute"
        } else if write {
            "write"
        } else {
            "read"
        };
        let Some(e) = self.rmp.entry(gpa).copied().filter(|_| gpa < RAM_END) else {
            log!("VIOLATION: VMPL{v} {what} of guest-physical {addr:#x}, outside guest RAM, at RIP {rip:#x}");
            return Flow::Stop(exit::VIOLATION);
        };
        if private {
            if !e.assigned {
                self.convert(gpa, true);
                return self.vc(v, code::PAGE_NOT_VALIDATED);
            }
            if !e.validated {
                return self.vc(v, code::PAGE_NOT_VALIDATED);
            }
            let a = e.allowed(v);
            let need = if fetch {
                if self.p.vmcb[v][sv::CPL] == 3 {
                    perm::EXEC_USER
                } else {
                    perm::EXEC_SUPERVISOR
                }
            } else if write {
                perm::WRITE
            } else {
                perm::READ
            };
            let have = |b: u8, c: char| if a & b != 0 { c } else { '-' };
            if info1 & (1 << 33) != 0 && a & perm::READ != 0 && a & perm::WRITE == 0 {
                log!(
                    "VMPL{v} page-table walk through guest-physical {gpa:#x} at RIP {rip:#x}: QEMU walks with write intent and the RMP gives VMPL{v} no write permission on its page tables (a limitation of the machine): stopped"
                );
                return Flow::Stop(exit::GUEST_STOPPED);
            }
            if a & need == 0 || a & perm::READ == 0 {
                log!(
                    "VIOLATION: VMPL{v} {what} of guest-physical {addr:#x} at RIP {rip:#x}: the RMP gives VMPL{v} {}{}{}{} on this page",
                    have(perm::READ, 'r'), have(perm::WRITE, 'w'), have(perm::EXEC_USER, 'u'), have(perm::EXEC_SUPERVISOR, 's')
                );
                return Flow::Stop(exit::VIOLATION);
            }
            log!("VMPL{v} {what} of {gpa:#x} at RIP {rip:#x}: permission the nested page tables cannot express (user-only execute): stopped");
            return Flow::Stop(exit::GUEST_STOPPED);
        }
        if !e.assigned {
            if fetch {
                log!("VMPL{v} instruction fetch from shared guest-physical {gpa:#x} at RIP {rip:#x}: not emulated: stopped");
                return Flow::Stop(exit::GUEST_STOPPED);
            }
            // Stale nested entry.
            self.sync_npt(gpa);
            return Flow::Resume;
        }
        if !e.validated {
            return self.vc(v, code::PAGE_NOT_VALIDATED);
        }
        // No RMP permission for this VMPL: hardware faults to the host (KVM would
        // convert the page to shared, destroying it); the machine stops the VM.
        log!(
            "VIOLATION: VMPL{v} {what} of private guest-physical {addr:#x} through a shared (C-bit clear) mapping at RIP {rip:#x}: the RMP gives VMPL{v} no such permission"
        );
        Flow::Stop(exit::VIOLATION)
    }

    fn console_line(&mut self, v: usize) {
        let line = core::mem::take(&mut self.vcpu[v].line);
        let text: Vec<u8> = line
            .iter()
            .map(|&b| if (0x20..0x7F).contains(&b) { b } else { b'.' })
            .collect();
        let mut c = arch::CONSOLE;
        use core::fmt::Write;
        let _ = writeln!(c, "[vmpl{v}] {}", core::str::from_utf8(&text).unwrap_or(""));
    }

    fn console_byte(&mut self, v: usize, b: u8) {
        match b {
            b'\n' => self.console_line(v),
            b'\r' => {}
            _ => {
                self.vcpu[v].line.push(b);
                if self.vcpu[v].line.len() >= 200 {
                    self.console_line(v);
                }
            }
        }
    }

    /// RUN_VMPL: leave `v`, enter `target`. On failure `v` goes on.
    fn run_vmpl(&mut self, v: usize, target: usize) -> Result<(), &'static str> {
        if target >= VMPLS {
            return Err("no such VMPL");
        }
        if target == v {
            return Ok(());
        }
        self.leave(v);
        match self.enter(target) {
            Ok(()) => {
                self.current = target;
                Ok(())
            }
            Err(why) => {
                // `v` still runs: its VMSA was just written from its VMCB.
                Err(why)
            }
        }
    }

    fn vmgexit(&mut self, v: usize) -> Flow {
        let msr = self.vcpu[v].ghcb_msr;
        let req = msr & 0xFFF;
        let resp = match req {
            0 => return self.ghcb_page(v, msr),
            ghcb::msr::SEV_INFO_REQ => {
                (ghcb::PROTOCOL_MAX << 48)
                    | (ghcb::PROTOCOL_MIN << 32)
                    | (u64::from(nitride_snp_machine::C_BIT) << 24)
                    | ghcb::msr::SEV_INFO_RESP
            }
            ghcb::msr::CPUID_REQ => {
                let leaf = (msr >> 32) as u32;
                let reg = ((msr >> 30) & 3) as usize;
                let r = cpuid::model(leaf, 0, self.vcpu[v].xcr0, arch::cpuid);
                (u64::from(r[reg]) << 32)
                    | ((msr & 0x3000_0000) | ghcb::msr::CPUID_RESP) & 0xC000_0FFF
            }
            ghcb::msr::REG_GPA_REQ => {
                let gpa = msr & !0xFFF & 0x000F_FFFF_FFFF_F000;
                if gpa < RAM_END {
                    self.vcpu[v].ghcb_gpa = Some(gpa);
                    gpa | ghcb::msr::REG_GPA_RESP
                } else {
                    0xFFFF_FFFF_FFFF_F000 | ghcb::msr::REG_GPA_RESP
                }
            }
            ghcb::msr::PSC_REQ => {
                let gpa = (msr >> 12 & ((1 << 40) - 1)) << 12;
                let op = (msr >> 52) & 0xF;
                let ok = matches!(op, 1 | 2) && self.convert(gpa, op == 1);
                (u64::from(!ok) << 32) | ghcb::msr::PSC_RESP
            }
            ghcb::msr::RUN_VMPL_REQ => {
                let target = ((msr >> 32) & 0xFF) as usize;
                if msr & 0xFFFF_F000 != 0 || msr >> 40 != 0 {
                    (1u64 << 32) | ghcb::msr::RUN_VMPL_RESP
                } else {
                    // The answer is in the requester's MSR when it runs again.
                    self.vcpu[v].ghcb_msr = ghcb::msr::RUN_VMPL_RESP;
                    match self.run_vmpl(v, target) {
                        Ok(()) => return Flow::Resume,
                        Err(why) => {
                            log!("VMPL{v}: SNP_RUN_VMPL({target}) refused: {why}");
                            (1u64 << 32) | ghcb::msr::RUN_VMPL_RESP
                        }
                    }
                }
            }
            ghcb::msr::HV_FT_REQ => (ghcb::HV_FEATURES << 12) | ghcb::msr::HV_FT_RESP,
            ghcb::msr::TERM_REQ => {
                log!(
                    "VMPL{v} requested termination: reason set {}, code {}",
                    (msr >> 12) & 0xF,
                    (msr >> 16) & 0xFF
                );
                return Flow::Stop(exit::TERMINATED);
            }
            other => {
                log!("VMPL{v}: GHCB MSR protocol request {other:#x} is not supported: stopped");
                return Flow::Stop(exit::GUEST_STOPPED);
            }
        };
        self.vcpu[v].ghcb_msr = resp;
        Flow::Resume
    }

    /// A GHCB page request from VMPL `v` at `gpa`.
    fn ghcb_page(&mut self, v: usize, gpa: u64) -> Flow {
        if self.vcpu[v].ghcb_gpa != Some(gpa) {
            log!("VMPL{v}: VMGEXIT with an unregistered GHCB at {gpa:#x}: stopped");
            return Flow::Stop(exit::GUEST_STOPPED);
        }
        if self.rmp.entry(gpa).is_none_or(|e| e.assigned) {
            log!(
                "VMPL{v}: the GHCB at {gpa:#x} is a private page: the host cannot read it: stopped"
            );
            return Flow::Stop(exit::GUEST_STOPPED);
        }
        // The save area is all a NAE event reads (the PSC buffer is read in place).
        let mut g = [0u8; 0x400];
        arch::copy_words(&mut g, &ram_page(self.ram, gpa)[..0x400]);
        let valid = |g: &[u8; 0x400], at: usize| {
            let bit = ghcb::valid_bit(at);
            g[ghcb::off::VALID_BITMAP + bit / 8] & (1 << (bit % 8)) != 0
        };
        let mut out = GhcbOut::default();
        let page = ram_page(self.ram, gpa);
        let usage = u32::from_le_bytes([page[0xFFC], page[0xFFD], page[0xFFE], page[0xFFF]]);
        let code = g64(&g, ghcb::off::SW_EXIT_CODE);
        let info1 = g64(&g, ghcb::off::SW_EXIT_INFO_1);
        let info2 = g64(&g, ghcb::off::SW_EXIT_INFO_2);
        let base_valid = valid(&g, ghcb::off::SW_EXIT_CODE)
            && valid(&g, ghcb::off::SW_EXIT_INFO_1)
            && valid(&g, ghcb::off::SW_EXIT_INFO_2);
        let flow = if usage != 0 {
            out.error(ghcb::err::INVALID_USAGE);
            Flow::Resume
        } else if !base_valid {
            out.error(ghcb::err::MISSING_INPUT);
            Flow::Resume
        } else {
            self.nae(v, gpa, &g, code, info1, info2, &valid, &mut out)
        };
        // The host answers: the valid bitmap is cleared, then the outputs are set.
        let page = ram_page(self.ram, gpa);
        page[ghcb::off::VALID_BITMAP..ghcb::off::VALID_BITMAP + 16].fill(0);
        for (at, val) in out.fields.iter().flatten() {
            put64(page, *at, *val);
            let bit = ghcb::valid_bit(*at);
            page[ghcb::off::VALID_BITMAP + bit / 8] |= 1 << (bit % 8);
        }
        flow
    }

    #[allow(clippy::too_many_arguments, reason = "one NAE event")]
    fn nae(
        &mut self,
        v: usize,
        ghcb_gpa: u64,
        g: &[u8; 0x400],
        code: u64,
        info1: u64,
        info2: u64,
        valid: &dyn Fn(&[u8; 0x400], usize) -> bool,
        out: &mut GhcbOut,
    ) -> Flow {
        use ghcb::off;
        let need = |fields: &[usize]| fields.iter().all(|&f| valid(g, f));
        match code {
            nae::CPUID => {
                if !need(&[off::RAX, off::RCX]) {
                    out.error(ghcb::err::MISSING_INPUT);
                    return Flow::Resume;
                }
                let leaf = g64(g, off::RAX) as u32;
                let sub = g64(g, off::RCX) as u32;
                let xcr0 = if valid(g, off::XCR0) {
                    g64(g, off::XCR0)
                } else {
                    1
                };
                let r = cpuid::model(leaf, sub, xcr0, arch::cpuid);
                out.ok(0, 0);
                out.set(off::RAX, u64::from(r[0]));
                out.set(off::RBX, u64::from(r[1]));
                out.set(off::RCX, u64::from(r[2]));
                out.set(off::RDX, u64::from(r[3]));
            }
            nae::IOIO => {
                let port = (info1 >> 16) as u16;
                let input = info1 & 1 != 0;
                let size = match (info1 >> 4) & 7 {
                    1 => 1,
                    2 => 2,
                    4 => 4,
                    _ => 0,
                };
                if size == 0 || info1 & 0xC != 0 {
                    out.error(ghcb::err::INVALID_INPUT);
                    return Flow::Resume;
                }
                if input {
                    let val: u64 = match port {
                        0x3FD => 0x60,
                        0x3F8..=0x3FF => 0,
                        _ => (1u64 << (8 * size)) - 1,
                    };
                    out.ok(0, 0);
                    out.set(off::RAX, val);
                } else {
                    if !need(&[off::RAX]) {
                        out.error(ghcb::err::MISSING_INPUT);
                        return Flow::Resume;
                    }
                    let b = g64(g, off::RAX) as u8;
                    if port == 0x3F8 {
                        self.console_byte(v, b);
                    } else if port == arch::HOST_LOG_PORT && v == 0 {
                        arch::HostLog.write_bytes(&[b]);
                    }
                    out.ok(0, 0);
                }
            }
            nae::MSR => {
                if !need(&[off::RCX]) || (info1 == 1 && !need(&[off::RAX, off::RDX])) {
                    out.error(ghcb::err::MISSING_INPUT);
                    return Flow::Resume;
                }
                let msr = g64(g, off::RCX) as u32;
                match (msr, info1) {
                    (0x10, 0) => {
                        let t = arch::tsc();
                        out.ok(0, 0);
                        out.set(off::RAX, t & 0xFFFF_FFFF);
                        out.set(off::RDX, t >> 32);
                    }
                    (0x1B, 0) => {
                        out.ok(0, 0);
                        out.set(off::RAX, 0xFEE0_0900);
                        out.set(off::RDX, 0);
                    }
                    _ => out.ok(1, ghcb::INJECT_GP),
                }
            }
            nae::PSC => {
                let buf = off::SHARED_BUFFER;
                let mut shared = [0u8; 4096];
                shared[buf..].copy_from_slice(&ram_page(self.ram, ghcb_gpa)[buf..]);
                let g = &mut shared;
                let cur = usize::from(u16::from_le_bytes([g[buf], g[buf + 1]]));
                let end = usize::from(u16::from_le_bytes([g[buf + 2], g[buf + 3]]));
                if end >= 253 || cur > end + 1 {
                    out.error(ghcb::err::INVALID_INPUT);
                    return Flow::Resume;
                }
                let mut failed = false;
                let mut i = cur;
                while i <= end {
                    let e = g64(g, buf + 8 + 8 * i);
                    let gfn = (e >> 12) & ((1 << 40) - 1);
                    let op = (e >> 52) & 0xF;
                    let pages = if e & (1 << 56) != 0 { 512 } else { 1 };
                    let ok = matches!(op, 1 | 2)
                        && (0..pages).all(|k| self.convert((gfn + k) << 12, op == 1));
                    if !ok {
                        failed = true;
                        break;
                    }
                    i += 1;
                    ram_page(self.ram, ghcb_gpa)[buf..buf + 2]
                        .copy_from_slice(&(i as u16).to_le_bytes());
                }
                out.ok(0, u64::from(failed));
            }
            nae::GUEST_REQUEST | nae::EXT_GUEST_REQUEST => {
                return self.guest_request(
                    g,
                    code == nae::EXT_GUEST_REQUEST,
                    info1,
                    info2,
                    valid,
                    out,
                );
            }
            nae::AP_CREATION => {
                let op = info1 & 0xFFFF;
                let vmpl = ((info1 >> 16) & 0xFF) as usize;
                let apic = info1 >> 32;
                let fine = apic == 0
                    && vmpl < VMPLS
                    && match op {
                        ghcb::ap::CREATE | ghcb::ap::CREATE_ON_INIT => {
                            need(&[off::RAX])
                                && g64(g, off::RAX) == SEV_FEATURES
                                && info2.is_multiple_of(4096)
                                && info2 < RAM_END
                        }
                        ghcb::ap::DESTROY => true,
                        _ => false,
                    };
                if !fine {
                    log!("VMPL{v}: AP creation ({info1:#x}, {info2:#x}) refused");
                    out.error(ghcb::err::INVALID_INPUT);
                    return Flow::Resume;
                }
                self.vcpu[vmpl].vmsa = if op == ghcb::ap::DESTROY {
                    None
                } else {
                    Some(info2)
                };
                out.ok(0, 0);
            }
            nae::RUN_VMPL => {
                let target = info1 as usize;
                // The requester finds the answer in its GHCB when it runs again.
                match self.run_vmpl(v, target) {
                    Ok(()) => out.ok(0, 0),
                    Err(why) => {
                        log!("VMPL{v}: SNP_RUN_VMPL({target}) refused: {why}");
                        out.error(ghcb::err::INVALID_INPUT);
                    }
                }
            }
            nae::HV_FEATURES => out.ok(0, ghcb::HV_FEATURES),
            nae::TERM_REQUEST => {
                log!(
                    "VMPL{v} requested termination: reason set {}, code {}",
                    info1 & 0xF,
                    (info1 >> 4) & 0xFF
                );
                return Flow::Stop(exit::TERMINATED);
            }
            _ => out.error(ghcb::err::INVALID_EVENT),
        }
        Flow::Resume
    }

    /// A shared guest page the host may read and write, or `None`.
    fn shared_page(&self, gpa: u64) -> Option<u64> {
        (gpa.is_multiple_of(4096)
            && gpa < RAM_END
            && self.rmp.entry(gpa).is_some_and(|e| !e.assigned))
        .then_some(gpa)
    }

    #[allow(clippy::too_many_arguments, reason = "one NAE event")]
    fn guest_request(
        &mut self,
        g: &[u8; 0x400],
        extended: bool,
        req_gpa: u64,
        rsp_gpa: u64,
        valid: &dyn Fn(&[u8; 0x400], usize) -> bool,
        out: &mut GhcbOut,
    ) -> Flow {
        use ghcb::off;
        let (Some(req_gpa), Some(rsp_gpa)) = (self.shared_page(req_gpa), self.shared_page(rsp_gpa))
        else {
            out.error(ghcb::err::INVALID_INPUT);
            return Flow::Resume;
        };
        let mut certs: Option<(u64, u64)> = None;
        if extended {
            if !(valid(g, off::RAX) && valid(g, off::RBX)) {
                out.error(ghcb::err::MISSING_INPUT);
                return Flow::Resume;
            }
            let (at, pages) = (g64(g, off::RAX), g64(g, off::RBX));
            let ok = pages <= 64 && (0..pages).all(|i| self.shared_page(at + i * 4096).is_some());
            if !ok {
                out.error(ghcb::err::INVALID_INPUT);
                return Flow::Resume;
            }
            certs = Some((at, pages));
        }
        let mut request = [0u8; PSP_PAGE];
        request.copy_from_slice(ram_page(self.ram, req_gpa));
        let mut response = [0u8; PSP_PAGE];
        let mut buf: Vec<u8> = alloc::vec![0u8; certs.map_or(0, |c| c.1 as usize * 4096)];
        let Some(psp) = self.psp.as_mut() else {
            out.error(ghcb::err::INVALID_INPUT);
            return Flow::Resume;
        };
        let result = psp.handle(&request, &mut response, certs.map(|_| buf.as_mut_slice()));
        match result {
            Ok(()) => {
                ram_page(self.ram, rsp_gpa).copy_from_slice(&response);
                if let Some((at, _)) = certs {
                    let s = at as usize;
                    self.ram[s..s + buf.len()].copy_from_slice(&buf);
                }
                out.ok(0, 0);
            }
            Err(RequestError::CertificatesTooSmall { pages }) => {
                out.ok(0, ghcb::GUEST_REQUEST_INVALID_LEN << 32);
                out.set(off::RBX, u64::from(pages));
            }
            Err(RequestError::Firmware(code)) => out.ok(0, u64::from(code)),
        }
        Flow::Resume
    }
}

/// What the host writes back into a GHCB.
#[derive(Default)]
struct GhcbOut {
    fields: [Option<(usize, u64)>; 6],
}

impl GhcbOut {
    fn set(&mut self, at: usize, val: u64) {
        if let Some(slot) = self
            .fields
            .iter_mut()
            .find(|f| f.is_none() || f.is_some_and(|f| f.0 == at))
        {
            *slot = Some((at, val));
        }
    }

    fn ok(&mut self, info1: u64, info2: u64) {
        self.set(ghcb::off::SW_EXIT_INFO_1, info1);
        self.set(ghcb::off::SW_EXIT_INFO_2, info2);
    }

    fn error(&mut self, e: u64) {
        self.ok(2, e);
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    stop(exit::MACHINE_FATAL, format_args!("machine panic: {info}"))
}
