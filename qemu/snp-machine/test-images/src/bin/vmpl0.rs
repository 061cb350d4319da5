//! The VMPL0 test image: launched by the machine in 32-bit protected mode, it
//! enters long mode with the IGVM page tables, exercises every interface of the
//! virtual SNP machine available at VMPL0, sets up VMPL1 (permissions, VMSA, AP
//! creation) and runs it, serves its requests, and ends the VM with a GHCB
//! termination request (reason set 1, code 0 when every check passed).
//!
//! Command line (IGVM parameter area): `probe=read:N` or `probe=write:N` makes VMPL1
//! touch permission page N in a way its mask forbids (the machine must stop the VM).
#![no_std]
#![no_main]

use core::sync::atomic::Ordering;

use nitride_protocol::snp::msg::{msg_type, KeyReq, KeyRsp, ReportReq, ReportRsp};
use nitride_snp_test_images::{
    clear_exception, ghcb_call, gpa, init_cpu, last_exception, mailbox, msr_protocol, off,
    print_hex, private, psc_shared, pvalidate, rd64, rdmsr, register_ghcb, rmpadjust, say,
    set_ghcb, terminate, wr64, Checks, Psp, LAST_MSR_INFO1, SKIP,
};
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

core::arch::global_asm!(
    r#"
    .section .text.entry, "ax", @progbits
    .code32
    .global _start
_start:
    cli
    lgdt boot_gdt_ptr
    movl %cr4, %eax
    orl $0x40620, %eax          /* PAE | OSFXSR | OSXMMEXCPT | OSXSAVE */
    movl %eax, %cr4
    movl $0x1000, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x900, %eax            /* LME | NXE */
    wrmsr
    movl %cr0, %eax
    orl $0x80010002, %eax       /* PG | WP | MP */
    movl %eax, %cr0
    ljmp $0x08, $1f
    .code64
1:  movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movabsq $0x800000001000, %rax   /* CR3 with the C-bit: private page tables */
    movq %rax, %cr3
    leaq vmpl0_stack_top(%rip), %rsp
    call vmpl0_main
2:  hlt
    jmp 2b

    .section .rodata.boot, "a"
    .p2align 3
boot_gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF
    .quad 0x00CF93000000FFFF
boot_gdt_ptr:
    .word 23
    .long boot_gdt

    .section .bss.stack, "aw", @nobits
    .p2align 12
vmpl0_stack:
    .skip 64 * 1024
vmpl0_stack_top:
    "#,
    options(att_syntax)
);

fn msr_run_vmpl(vmpl: u64) -> u64 {
    msr_protocol(0x016 | (vmpl << 32))
}

/// Run VMPL1 with the GHCB page protocol; (SW_EXITINFO1, SW_EXITINFO2).
fn run_vmpl1() -> (u64, u64) {
    ghcb_call(0x8000_0018, 1, 0, &[])
}

/// A VMSA for VMPL1: 64-bit mode at the VMPL1 image's entry, the image's page tables.
fn build_vmsa1(page: u64) {
    let p: *mut u8 = private(page);
    let put = |at: usize, v: u64| wr64((p.wrapping_add(at) as *mut u64) as u64, v);
    for at in (0..4096).step_by(8) {
        put(at, 0);
    }
    let seg = |at: usize, sel: u64, attrib: u64, limit: u64| {
        put(at, sel | (attrib << 16) | (limit << 32));
        put(at + 8, 0);
    };
    for at in [0x00, 0x20, 0x30, 0x40, 0x50] {
        seg(at, 0x10, 0xC93, 0xFFFF_FFFF);
    }
    seg(0x10, 0x08, 0xA9B, 0xFFFF_FFFF);
    seg(0x70, 0, 0x82, 0xFFFF);
    seg(0x90, 0, 0x8B, 0x67);
    // SAFETY: `p` is the page being built (private, VMPL0's).
    unsafe { p.add(0xCA).write_volatile(1) }; // vmpl
    put(0xD0, 0x1D00); // EFER: SVME | NXE | LMA | LME
    put(0x148, 0x40620);
    put(0x150, gpa::PAGE_TABLES1 | (1 << 47));
    put(0x158, 0x8001_0033);
    put(0x160, 0x400);
    put(0x168, 0xFFFF_0FF0);
    put(0x170, 2);
    put(0x178, gpa::VMPL1_IMAGE);
    put(0x268, 0x0007_0406_0007_0406);
    put(0x3B0, 1); // sev_features: SNPActive
    put(0x3E8, 1); // XCR0
    put(0x408, 0x1F80); // MXCSR (u32) and x87 FTW/FSW
    put(0x410, 0x37F); // x87 FCW
}

fn report(psp: &mut Psp, vmpl: u32) -> Result<[u8; 0x4A0], u32> {
    let mut req = ReportReq::new_zeroed();
    req.user_data = [0xA0 | vmpl as u8; 64];
    req.vmpl = U32::new(vmpl);
    let mut out = [0u8; 0x4C0];
    let n = psp
        .request(msg_type::REPORT_REQ, req.as_bytes(), &mut out, None)
        .map_err(|_| u32::MAX)?;
    let rsp = ReportRsp::read_from_bytes(&out[..n]).map_err(|_| u32::MAX)?;
    if rsp.status.get() != 0 {
        return Err(rsp.status.get());
    }
    let mut r = [0u8; 0x4A0];
    r.copy_from_slice(rsp.report.as_bytes());
    Ok(r)
}

fn derive(psp: &mut Psp, vmpl: u32) -> Result<[u8; 32], u32> {
    let req = KeyReq {
        root_key_select: U32::new(0b010),
        guest_field_select: U64::new(0b1001),
        vmpl: U32::new(vmpl),
        ..KeyReq::default()
    };
    let mut out = [0u8; 0x40];
    let n = psp
        .request(msg_type::KEY_REQ, req.as_bytes(), &mut out, None)
        .map_err(|_| u32::MAX)?;
    let rsp = KeyRsp::read_from_bytes(&out[..n]).map_err(|_| u32::MAX)?;
    match rsp.status.get() {
        0 => Ok(rsp.derived_key),
        s => Err(s),
    }
}

fn cmdline() -> &'static [u8] {
    // SAFETY: the command-line parameter page is private and launched; the machine
    // wrote a NUL-terminated string into it.
    let page = unsafe { &*private::<[u8; 4096]>(gpa::CMDLINE) };
    let n = page.iter().position(|&b| b == 0).unwrap_or(0);
    &page[..n]
}

/// Guest requests with VMPCK0: reports, derived keys, the extended request.
fn guest_requests(c: &mut Checks, vmpck0: [u8; 32]) {
    // Guest requests with VMPCK0.
    let mut psp = Psp::new(vmpck0, 0, gpa::REQ0, gpa::RSP0);
    match report(&mut psp, 0) {
        Ok(r) => {
            let vmpl = u32::from_le_bytes([r[0x30], r[0x31], r[0x32], r[0x33]]);
            c.check(
                "report-vmpl0",
                vmpl == 0 && r[0x50] == 0xA0,
                format_args!("report for VMPL{vmpl}"),
            );
            print_hex("REPORT0", &r);
        }
        Err(s) => c.check("report-vmpl0", false, format_args!("status {s:#x}")),
    }
    let k0 = derive(&mut psp, 0);
    let k1 = derive(&mut psp, 1);
    c.check(
        "derive-key",
        matches!((k0, k1), (Ok(a), Ok(b)) if a != b && a != [0; 32]),
        format_args!("VMPL0 and VMPL1 keys derived, distinct"),
    );
    if let Ok(k) = k1 {
        print_hex("KEY1-BY-VMPL0", &k);
    }
    // Extended request: a one-page buffer is too small for the table...
    let mut req = ReportReq::new_zeroed();
    req.vmpl = U32::new(0);
    let mut out = [0u8; 0x4C0];
    let small = psp.request(
        msg_type::REPORT_REQ,
        req.as_bytes(),
        &mut out,
        Some((gpa::CERTS, 1)),
    );
    let needed = nitride_snp_test_images::ghcb_get(off::RBX);
    c.check(
        "ext-request-too-small",
        matches!(small, Err(nitride_snp_test_images::PspFail::Exit(0, e)) if e == 1 << 32)
            && needed > 1,
        format_args!("{small:?}, pages needed {needed}"),
    );
    // ...and the PSP did not consume that sequence number: the channel goes on.
    let big = psp.request(
        msg_type::REPORT_REQ,
        req.as_bytes(),
        &mut out,
        Some((gpa::CERTS, 4)),
    );
    let first_guid = rd64(nitride_snp_test_images::SHARED_VIEW + gpa::CERTS);
    c.check(
        "ext-request",
        big.is_ok() && first_guid != 0,
        format_args!("{big:?}, table starts {first_guid:#x}"),
    );
}

/// The CPUID page the host filled at launch (SNP ABI: u32 count, 12 reserved bytes,
/// then 48-byte entries {eax_in, ecx_in, xcr0_in, xss_in, eax, ebx, ecx, edx,
/// reserved}): at most 64 entries, reserved bytes zero, leaf 0x8000_001F announcing
/// SNP with the C-bit at 47, and every entry computed for XCR0 = 1 equal to what
/// CPUID answers through #VC (the hypervisor's side) while XCR0 is still 1. A guest
/// kernel trusts the page instead of the hypervisor, so the two must agree.
fn cpuid_page(c: &mut Checks) {
    let page: *const [u8; 4096] = private(gpa::CPUID);
    // SAFETY: the CPUID page is launched, validated and mapped privately for VMPL0;
    // nothing writes it while this reads.
    let page = unsafe { &*page };
    let word = |at: usize| u32::from_le_bytes([page[at], page[at + 1], page[at + 2], page[at + 3]]);
    let count = word(0) as usize;
    let mut bad = None;
    let mut snp = false;
    let header_ok = (1..=64).contains(&count) && page[4..16].iter().all(|&b| b == 0);
    // SAFETY: XGETBV with ECX = 0 reads XCR0; CR4.OSXSAVE is set at boot.
    let xcr0 = unsafe { core::arch::x86_64::_xgetbv(0) };
    for i in 0..count.min(64) {
        let e = 16 + i * 48;
        let (leaf, sub) = (word(e), word(e + 4));
        let xcr0_in = u64::from(word(e + 8)) | (u64::from(word(e + 12)) << 32);
        let regs = [word(e + 24), word(e + 28), word(e + 32), word(e + 36)];
        let zero = page[e + 16..e + 24]
            .iter()
            .chain(&page[e + 40..e + 48])
            .all(|&b| b == 0);
        let r = core::arch::x86_64::__cpuid_count(leaf, sub);
        let live = [r.eax, r.ebx, r.ecx, r.edx];
        let comparable = leaf != 0xD || xcr0_in == xcr0;
        if !zero || (comparable && live != regs) {
            bad.get_or_insert((leaf, sub, regs, live));
        }
        if leaf == 0x8000_001F && (regs[0] >> 4) & 1 == 1 && regs[1] & 0x3F == 47 {
            snp = true;
        }
    }
    c.check(
        "cpuid-page",
        header_ok && snp && bad.is_none(),
        format_args!("{count} entries, XCR0 {xcr0:#x}, SNP leaf {snp}, first mismatch {bad:x?}"),
    );
}

/// Everything VMPL0 checks on its own, before it sets up VMPL1.
fn checks_before_vmpl1(c: &mut Checks, sev_status: u64, info: u64, cpuid_cbit: u64, features: u64) {
    c.check(
        "sev-status",
        sev_status == 0b111,
        format_args!("SEV_STATUS {sev_status:#x}"),
    );
    c.check(
        "msr-sev-info",
        info & 0xFFF == 1
            && (info >> 24) & 0xFF == 47
            && (info >> 32) & 0xFFFF == 2
            && info >> 48 == 2,
        format_args!("{info:#x}"),
    );
    c.check(
        "msr-cpuid",
        cpuid_cbit & 0xFFF == 5 && (cpuid_cbit >> 32) & 0x3F == 47,
        format_args!("{cpuid_cbit:#x}"),
    );
    c.check(
        "msr-hv-features",
        features & 0xFFF == 0x81 && (features >> 12) & 3 == 3,
        format_args!("{features:#x}"),
    );
    c.check(
        "psc-and-register-ghcb",
        true,
        format_args!("GHCB {:#x} shared and registered", gpa::GHCB0),
    );

    // #VC for what SEV-ES intercepts, and what it does not.
    clear_exception();
    let r = core::arch::x86_64::__cpuid(0x8000_001F);
    c.check(
        "vc-cpuid",
        last_exception() == (29, 0x72) && r.ebx & 0x3F == 47,
        format_args!("exception {:?}, EBX {:#x}", last_exception(), r.ebx),
    );
    cpuid_page(c);
    clear_exception();
    let t = rdmsr(0x10);
    c.check(
        "vc-rdmsr",
        last_exception() == (29, 0x7C) && t != 0 && LAST_MSR_INFO1.load(Ordering::SeqCst) == 0,
        format_args!("{:?}, TSC {t}", last_exception()),
    );
    clear_exception();
    let _ = rdmsr(0x1234);
    c.check(
        "vc-rdmsr-refused",
        last_exception() == (29, 0x7C) && LAST_MSR_INFO1.load(Ordering::SeqCst) == 1,
        format_args!(
            "host answers #GP: info1 {}",
            LAST_MSR_INFO1.load(Ordering::SeqCst)
        ),
    );
    let (i1, i2) = ghcb_call(0x7C, 0, 0, &[(off::RCX, 0x1234)]);
    c.check(
        "ghcb-msr-gp",
        (i1, i2) == (1, 0x8000_0B0D),
        format_args!("({i1}, {i2:#x})"),
    );
    for (name, code, len) in [
        ("vc-ioio", 0x7Bu64, 2u64),
        ("vc-wbinvd", 0x89, 2),
        ("vc-vmmcall", 0x81, 3),
        ("vc-rdpmc", 0x6F, 2),
        ("vc-invd", 0x76, 2),
        ("vc-dr7-write", 0x37, 3),
        ("vc-dr7-read", 0x27, 3),
    ] {
        clear_exception();
        SKIP.store(len, Ordering::SeqCst);
        // SAFETY: each instruction only raises #VC here (the handler skips it).
        unsafe {
            match code {
                0x7B => core::arch::asm!("out 0x80, al", in("al") 0u8),
                0x89 => core::arch::asm!("wbinvd"),
                0x81 => core::arch::asm!("vmmcall"),
                0x6F => core::arch::asm!("rdpmc", in("ecx") 0u32, out("eax") _, out("edx") _),
                0x76 => core::arch::asm!("invd"),
                0x37 => core::arch::asm!("mov dr7, rax", in("rax") 0x401u64),
                _ => core::arch::asm!("mov rax, dr7", out("rax") _),
            }
        }
        c.check(
            name,
            last_exception() == (29, code),
            format_args!("{:?}", last_exception()),
        );
    }
    // DR0-3/DR6: a virtual register file, no #VC, never armed.
    clear_exception();
    let back: u64;
    // SAFETY: writes and reads DR0 only.
    unsafe {
        core::arch::asm!("mov dr0, rax", "mov rcx, dr0", in("rax") 0x12_3000u64, out("rcx") back)
    };
    c.check(
        "dr0-virtual",
        back == 0x12_3000 && last_exception().0 == u64::MAX,
        format_args!("DR0 reads back {back:#x}, {:?}", last_exception()),
    );
    // XCR0: per VMPL, no #VC; invalid values #GP.
    let xcr0_max = core::arch::x86_64::__cpuid_count(0xD, 0).eax as u64 & 7;
    // SAFETY: XSETBV with a value CPUID reports, and an invalid one the handler skips.
    let (xcr0, after_bad) = unsafe {
        core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") xcr0_max as u32, in("edx") 0u32);
        let x = core::arch::x86_64::_xgetbv(0);
        clear_exception();
        SKIP.store(3, Ordering::SeqCst);
        core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") 0u32, in("edx") 0u32);
        (x, last_exception())
    };
    c.check(
        "xcr0",
        xcr0 == xcr0_max && after_bad == (13, 0),
        format_args!("XCR0 {xcr0:#x} (CPUID {xcr0_max:#x}), XSETBV 0 -> {after_bad:?}"),
    );

    // An unvalidated private page: #VC 0x404 until PVALIDATE.
    let p = gpa::UNVALIDATED;
    let touch = |addr: u64| {
        clear_exception();
        SKIP.store(2, Ordering::SeqCst);
        let v: u8;
        // SAFETY: a read of a guest page (mov al, [rdi]: 2 bytes); the handler skips
        // it when it raises #VC.
        unsafe { core::arch::asm!("mov al, [rdi]", in("rdi") addr, out("al") v) };
        let _ = v;
        SKIP.store(0, Ordering::SeqCst);
        last_exception()
    };
    c.check(
        "vc-not-validated",
        touch(p) == (29, 0x404),
        format_args!("{:?}", touch(p)),
    );
    let r1 = pvalidate(p, 0, true);
    let r2 = pvalidate(p, 0, true);
    let r3 = pvalidate(p, 1, true);
    let r4 = pvalidate(p, 2, true);
    c.check(
        "pvalidate",
        r1 == (0, false) && r2 == (0, true) && r3.0 == 6 && r4.0 == 1,
        format_args!("validate {r1:?}, again {r2:?}, 2M {r3:?}, size 2 {r4:?}"),
    );
    c.check(
        "validated-page-reads",
        touch(p).0 == u64::MAX,
        format_args!("{:?}", touch(p)),
    );
    let r5 = pvalidate(p, 0, false);
    c.check(
        "pvalidate-rescind",
        r5 == (0, false) && touch(p) == (29, 0x404),
        format_args!("{r5:?}"),
    );

    // RMPADJUST rules at VMPL0.
    let pt = gpa::PERM;
    let a1 = rmpadjust(pt, 0, 1, 0, false);
    let a2 = rmpadjust(pt, 1, 1, 1, false);
    let a3 = rmpadjust(pt, 0, 0x10, 1, false);
    let a4 = rmpadjust(p, 0, 1, 1, false);
    c.check(
        "rmpadjust-refusals",
        a1 == 2 && a2 == 6 && a3 == 1 && a4 == 1,
        format_args!("target VMPL0 {a1}, 2M {a2}, reserved bits {a3}, unvalidated {a4}"),
    );
}

#[no_mangle]
extern "C" fn vmpl0_main() -> ! {
    init_cpu();
    let mut c = Checks::default();

    // Before the GHCB: MSR protocol only (results printed once the console works).
    let sev_status = rdmsr(0xC001_0131);
    let info = msr_protocol(0x002);
    let cpuid_cbit = msr_protocol(0x004 | (1 << 30) | (0x8000_001F << 32));
    let features = msr_protocol(0x080);
    let psc = psc_shared(gpa::GHCB0);
    let reg = register_ghcb(gpa::GHCB0);
    if !(psc && reg) {
        terminate(2);
    }
    set_ghcb(gpa::GHCB0);
    say!("snp-test: VMPL0 up");
    // The probe mode for VMPL1.
    let cmd = cmdline();
    let _ = pvalidate(gpa::MAILBOX, 0, true);
    let mbox: *mut u64 = private(gpa::MAILBOX);
    let mut probing = false;
    for (prefix, mode) in [(&b"probe=read:"[..], 1u64), (&b"probe=write:"[..], 2)] {
        if let Some(rest) = cmd.strip_prefix(prefix) {
            let n = rest
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .fold(0u64, |a, &b| a * 10 + u64::from(b - b'0'));
            wr64((mbox.wrapping_add(mailbox::PROBE)) as u64, mode);
            wr64((mbox.wrapping_add(mailbox::PROBE_ARG)) as u64, n);
            probing = true;
        }
    }
    if !probing {
        checks_before_vmpl1(&mut c, sev_status, info, cpuid_cbit, features);
    }
    // Set up VMPL1: its image, the page tables (read), 16 permission pages, the
    // mailbox, a copy of the secrets page without VMPCK0, its GHCB and request pages.
    let mut ok = true;
    let mut grant = |page: u64, perms: u8| {
        let _ = pvalidate(page, 0, true);
        ok &= rmpadjust(page, 0, perms, 1, false) == 0;
    };
    for page in (gpa::VMPL1_IMAGE..gpa::VMPL1_IMAGE_END).step_by(4096) {
        grant(page, 0xF);
    }
    // VMPL1's own page tables (a copy of the image's, relocated): read-write, as
    // QEMU walks page tables with write intent.
    for i in 0..5u64 {
        let (src, dst) = (gpa::PAGE_TABLES + i * 4096, gpa::PAGE_TABLES1 + i * 4096);
        let _ = pvalidate(dst, 0, true);
        for e in 0..512u64 {
            let mut x = rd64(src + 8 * e);
            if (i == 0 || i == 1 || i == 3) && x & 1 != 0 {
                x = x - gpa::PAGE_TABLES + gpa::PAGE_TABLES1;
            }
            wr64(dst + 8 * e, x);
        }
        grant(dst, 3);
    }
    for i in 0..16u64 {
        grant(gpa::PERM + i * 4096, i as u8);
    }
    grant(gpa::MAILBOX, 3);
    grant(gpa::SECRETS1, 1);
    grant(gpa::FAKE_VMSA2, 0xF);
    c.check(
        "rmpadjust-grants",
        ok,
        format_args!("VMPL1 permissions set"),
    );
    let src: *const [u8; 4096] = private(gpa::SECRETS);
    let dst: *mut [u8; 4096] = private(gpa::SECRETS1);
    // SAFETY: both are private pages of the layout, validated, VMPL0 may write.
    let vmpck0 = unsafe {
        let mut s = src.read_volatile();
        let mut k = [0u8; 32];
        k.copy_from_slice(&s[0x20..0x40]);
        s[0x20..0x40].fill(0);
        dst.write_volatile(s);
        k
    };
    for page in [
        gpa::REQ0,
        gpa::RSP0,
        gpa::REQ1,
        gpa::RSP1,
        gpa::CERTS,
        gpa::CERTS + 0x1000,
        gpa::CERTS + 0x2000,
        gpa::CERTS + 0x3000,
    ] {
        ok &= psc_shared(page);
    }
    c.check(
        "psc-request-pages",
        ok,
        format_args!("request, response and certificate pages shared"),
    );
    set_ghcb(gpa::GHCB0);

    if !probing {
        guest_requests(&mut c, vmpck0);
    }

    // VMPL1's VMSA.
    let _ = pvalidate(gpa::VMSA1, 0, true);
    build_vmsa1(gpa::VMSA1);
    let v = rmpadjust(gpa::VMSA1, 0, 0, 1, true);
    let (i1, i2) = ghcb_call(0x8000_0013, (1 << 16) | 1, gpa::VMSA1, &[(off::RAX, 1)]);
    c.check(
        "vmsa1-created",
        v == 0 && (i1, i2) == (0, 0),
        format_args!("RMPADJUST {v}, AP creation ({i1}, {i2})"),
    );
    let bad_apic = ghcb_call(
        0x8000_0013,
        (1 << 32) | (1 << 16) | 1,
        gpa::VMSA1,
        &[(off::RAX, 1)],
    );
    let bad_features = ghcb_call(0x8000_0013, (1 << 16) | 1, gpa::VMSA1, &[(off::RAX, 0x21)]);
    c.check(
        "ap-creation-refusals",
        bad_apic == (2, 5) && bad_features == (2, 5),
        format_args!("APIC 1 {bad_apic:?}, SEV features 0x21 {bad_features:?}"),
    );
    let none = msr_run_vmpl(2);
    let none3 = ghcb_call(0x8000_0018, 3, 0, &[]);
    c.check(
        "run-vmpl-without-vmsa",
        none & 0xFFF == 0x017 && none >> 32 != 0 && none3 == (2, 5),
        format_args!("MSR {none:#x}, GHCB {none3:?}"),
    );
    if probing {
        say!("snp-test: probing from VMPL1");
    }

    // Serve VMPL1 until it is done.
    let mut runs = 0u64;
    loop {
        let r = run_vmpl1();
        runs += 1;
        if r != (0, 0) {
            c.check("run-vmpl1", false, format_args!("{r:?}"));
            break;
        }
        match rd64((mbox.wrapping_add(mailbox::CMD)) as u64) {
            mailbox::CMD_PING => continue,
            mailbox::CMD_EDIT_RAX => {
                let rax: *mut u64 = private(gpa::VMSA1 + 0x1F8);
                let seen = rd64((rax) as u64);
                c.check(
                    "vmsa-holds-vmpl1-registers",
                    seen == 0x1111,
                    format_args!("VMPL1's RAX in its VMSA: {seen:#x}"),
                );
                // Every GPR at its `struct sev_es_save_area` offset.
                let at = |off: u64| rd64(gpa::VMSA1 + off);
                let gprs = [
                    (0x308, 0x1101),
                    (0x310, 0x1102),
                    (0x330, 0x1106),
                    (0x338, 0x1107),
                    (0x340, 0x1108),
                    (0x348, 0x1109),
                    (0x370, 0x110E),
                    (0x378, 0x110F),
                ];
                let wrong = gprs.iter().find(|&&(o, v)| at(o) != v);
                c.check(
                    "vmsa-gpr-offsets",
                    wrong.is_none(),
                    format_args!("RCX RDX RSI RDI R8 R9 R14 R15 at their VMSA offsets (first wrong: {wrong:x?})"),
                );
                wr64((rax) as u64, 0x2222);
            }
            mailbox::CMD_DONE => break,
            other => {
                c.check(
                    "vmpl1-command",
                    false,
                    format_args!("unknown command {other}"),
                );
                break;
            }
        }
    }
    let (p1, f1) = (
        rd64((mbox.wrapping_add(mailbox::PASSED)) as u64),
        rd64((mbox.wrapping_add(mailbox::FAILED)) as u64),
    );
    c.check(
        "vmpl1-checks",
        f1 == 0 && p1 > 0,
        format_args!("VMPL1: {p1} passed, {f1} failed, {runs} runs"),
    );
    // AP destruction: VMPL1's VMSA is withdrawn, so it can no longer be run.
    let destroyed = ghcb_call(0x8000_0013, (1 << 16) | 2, 0, &[]);
    let after = ghcb_call(0x8000_0018, 1, 0, &[]);
    c.check(
        "ap-destroy",
        destroyed == (0, 0) && after == (2, 5),
        format_args!("destroy {destroyed:?}, SNP_RUN_VMPL(1) after it {after:?}"),
    );
    say!(
        "snp-test: {} passed, {} failed",
        c.passed + p1,
        c.failed + f1
    );
    terminate(u64::from(c.failed + f1 != 0))
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("FAIL panic: {info}");
    terminate(1)
}
