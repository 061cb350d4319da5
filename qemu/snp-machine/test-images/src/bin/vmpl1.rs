//! The VMPL1 test image: started by the VMPL0 image through its VMSA (64-bit mode,
//! the IGVM page tables), it sets up its own GHCB and exercises what a lower VMPL
//! may and may not do, then reports through the mailbox and runs VMPL0.
#![no_std]
#![no_main]

use core::sync::atomic::Ordering;

use nitride_protocol::snp::msg::{msg_type, KeyReq, KeyRsp, ReportReq, ReportRsp};
use nitride_snp_test_images::{
    clear_exception, ghcb_call, gpa, init_cpu, last_exception, mailbox, off, print_hex, private,
    psc_shared, pvalidate, rd64, register_ghcb, rmpadjust, say, set_ghcb, tsc, wr64, Checks, Psp,
    SKIP,
};
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

core::arch::global_asm!(
    r#"
    .section .text.entry, "ax", @progbits
    .global _start
_start:
    leaq vmpl1_stack_top(%rip), %rsp
    call vmpl1_main
1:  hlt
    jmp 1b

    .section .bss.stack, "aw", @nobits
    .p2align 12
vmpl1_stack:
    .skip 64 * 1024
vmpl1_stack_top:
    "#,
    options(att_syntax)
);

fn mbox() -> *mut u64 {
    private(gpa::MAILBOX)
}

/// Run VMPL0 with `cmd` in the mailbox (GHCB page protocol).
fn call_vmpl0(cmd: u64) -> (u64, u64) {
    wr64((mbox().wrapping_add(mailbox::CMD)) as u64, cmd);
    ghcb_call(0x8000_0018, 0, 0, &[])
}

#[no_mangle]
extern "C" fn vmpl1_main() -> ! {
    init_cpu();
    // VMPL1's own GHCB.
    if !(psc_shared(gpa::GHCB1) && register_ghcb(gpa::GHCB1)) {
        nitride_snp_test_images::terminate(3);
    }
    set_ghcb(gpa::GHCB1);
    say!("snp-test: VMPL1 up");
    let mut c = Checks::default();
    // XCR0 and the debug registers are VMPL1's own: VMPL0 set XCR0 to every state
    // it could and DR0 to 0x123000 before running VMPL1.
    // SAFETY: XGETBV and MOV from DR0 read registers only.
    let (xcr0, dr0) = unsafe {
        let dr0: u64;
        core::arch::asm!("mov {}, dr0", out(reg) dr0);
        (core::arch::x86_64::_xgetbv(0), dr0)
    };
    c.check(
        "xcr0-and-dr-per-vmpl",
        xcr0 == 1 && dr0 == 0,
        format_args!("XCR0 {xcr0:#x} (its VMSA's), DR0 {dr0:#x}"),
    );

    // The GHCB MSR as SEV-ES hardware keeps it: all 64 bits written and read back,
    // the upper half of RCX and every other register untouched, RIP past each
    // instruction (the machine serves it inside its world switch).
    let value = 0xFEDC_BA98_7654_3000u64;
    let (back, rcx, r8, r11): (u64, u64, u64, u64);
    // SAFETY: WRMSR and RDMSR of the GHCB MSR touch no memory; every later GHCB
    // request writes the MSR again.
    unsafe {
        core::arch::asm!(
            "wrmsr",
            "xor eax, eax",
            "xor edx, edx",
            "rdmsr",
            "shl rdx, 32",
            "or rax, rdx",
            inout("rcx") 0xA5A5_0000_C001_0130u64 => rcx,
            inout("rax") value & 0xFFFF_FFFF => back,
            inout("rdx") value >> 32 => _,
            inout("r8") 0x0808_0808u64 => r8,
            inout("r11") 0x1111_1111u64 => r11,
            options(nostack),
        );
    }
    c.check(
        "ghcb-msr-in-world-switch",
        back == value && rcx == 0xA5A5_0000_C001_0130 && r8 == 0x0808_0808 && r11 == 0x1111_1111,
        format_args!("read back {back:#x}, RCX {rcx:#x}, R8 {r8:#x}, R11 {r11:#x}"),
    );

    let probe = rd64((mbox().wrapping_add(mailbox::PROBE)) as u64);
    if probe != 0 {
        let n = rd64((mbox().wrapping_add(mailbox::PROBE_ARG)) as u64);
        let page = gpa::PERM + n * 4096;
        say!(
            "snp-test: VMPL1 {} of permission page {n}",
            if probe == 1 { "read" } else { "write" }
        );
        if probe == 1 {
            let _ = rd64(page);
        } else {
            wr64(page, 0x5A5A);
        }
        say!("FAIL probe survived");
        wr64((mbox().wrapping_add(mailbox::FAILED)) as u64, 1);
        call_vmpl0(mailbox::CMD_DONE);
    }

    // Reads and writes across every permission mask the RMP allows.
    let mut bad = 0;
    for i in 0..16u64 {
        let page = gpa::PERM + i * 4096;
        if i & 1 != 0 {
            let _ = rd64(page);
            if i & 2 != 0 {
                wr64(page, 0xA5A5_0000 + i);
                bad += u32::from(rd64(page) != 0xA5A5_0000 + i);
            }
        }
    }
    c.check(
        "permitted-accesses",
        bad == 0,
        format_args!("read where r, write where rw, on 16 masks"),
    );

    // RMPADJUST from VMPL1: never for VMPL0/1, never more than VMPL1 has; its VMSA
    // bit is ignored.
    let a1 = rmpadjust(gpa::FAKE_VMSA2, 0, 1, 1, false);
    let a2 = rmpadjust(gpa::FAKE_VMSA2, 0, 1, 0, false);
    let a3 = rmpadjust(gpa::PERM + 4096, 0, 3, 2, false);
    let a4 = rmpadjust(gpa::PERM + 3 * 4096, 0, 3, 2, false);
    c.check(
        "rmpadjust-from-vmpl1",
        a1 == 2 && a2 == 2 && a3 == 2 && a4 == 0,
        format_args!("self {a1}, VMPL0 {a2}, more than it has {a3}, what it has {a4}"),
    );
    let a5 = rmpadjust(gpa::FAKE_VMSA2, 0, 0, 2, true);
    let (i1, i2) = ghcb_call(
        0x8000_0013,
        (2 << 16) | 1,
        gpa::FAKE_VMSA2,
        &[(off::RAX, 1)],
    );
    let run2 = ghcb_call(0x8000_0018, 2, 0, &[]);
    c.check(
        "vmsa-grant-from-vmpl1-ignored",
        a5 == 0 && (i1, i2) == (0, 0) && run2 == (2, 5),
        format_args!("RMPADJUST {a5}, AP creation ({i1}, {i2}), SNP_RUN_VMPL(2) {run2:?}"),
    );
    clear_exception();
    SKIP.store(4, Ordering::SeqCst);
    let _ = pvalidate(gpa::FAKE_VMSA2, 0, true);
    c.check(
        "pvalidate-from-vmpl1",
        last_exception() == (13, 0),
        format_args!("{:?}", last_exception()),
    );

    // Guest requests with VMPCK1 (from VMPL0's copy of the secrets page).
    let mut key = [0u8; 32];
    let s: *const [u8; 4096] = private(gpa::SECRETS1);
    // SAFETY: VMPL0 granted VMPL1 read on its copy of the secrets page.
    let secrets = unsafe { s.read_volatile() };
    key.copy_from_slice(&secrets[0x40..0x60]);
    c.check(
        "vmpck0-withheld",
        secrets[0x20..0x40].iter().all(|&b| b == 0),
        format_args!("VMPCK0 zero in VMPL1's copy"),
    );
    let mut psp = Psp::new(key, 1, gpa::REQ1, gpa::RSP1);
    let mut out = [0u8; 0x4C0];
    let mut req = ReportReq::new_zeroed();
    req.vmpl = U32::new(0);
    let r0 = psp.request(msg_type::REPORT_REQ, req.as_bytes(), &mut out, None);
    let st0 = ReportRsp::read_from_bytes(&out[..0x4C0])
        .map(|r| r.status.get())
        .unwrap_or(0);
    c.check(
        "report-vmpl0-refused",
        r0.is_ok() && st0 == 0x16,
        format_args!("{r0:?}, status {st0:#x}"),
    );
    req.vmpl = U32::new(1);
    req.user_data = [0xA1; 64];
    let r1 = psp.request(msg_type::REPORT_REQ, req.as_bytes(), &mut out, None);
    match ReportRsp::read_from_bytes(&out[..0x4C0]) {
        Ok(rsp) if r1.is_ok() && rsp.status.get() == 0 => {
            let rep = rsp.report.as_bytes();
            let vmpl = u32::from_le_bytes([rep[0x30], rep[0x31], rep[0x32], rep[0x33]]);
            c.check(
                "report-vmpl1",
                vmpl == 1,
                format_args!("report for VMPL{vmpl}"),
            );
            print_hex("REPORT1", rep);
        }
        _ => c.check("report-vmpl1", false, format_args!("{r1:?}")),
    }
    let kreq = |vmpl: u32| KeyReq {
        root_key_select: U32::new(0b010),
        guest_field_select: U64::new(0b1001),
        vmpl: U32::new(vmpl),
        ..KeyReq::default()
    };
    let mut kout = [0u8; 0x40];
    let k0 = psp.request(msg_type::KEY_REQ, kreq(0).as_bytes(), &mut kout, None);
    let s0 = KeyRsp::read_from_bytes(&kout[..0x40])
        .map(|r| r.status.get())
        .unwrap_or(0);
    c.check(
        "key-vmpl0-refused",
        k0.is_ok() && s0 == 0x16,
        format_args!("status {s0:#x}"),
    );
    let k1 = psp.request(msg_type::KEY_REQ, kreq(1).as_bytes(), &mut kout, None);
    match KeyRsp::read_from_bytes(&kout[..0x40]) {
        Ok(r) if k1.is_ok() && r.status.get() == 0 => {
            c.check("key-vmpl1", true, format_args!("derived"));
            print_hex("KEY1-BY-VMPL1", &r.derived_key);
        }
        _ => c.check("key-vmpl1", false, format_args!("{k1:?}")),
    }

    // The VMSA holds VMPL1's registers between runs: VMPL0 edits RAX there.
    let rax: u64;
    let mut regs = [0u64; 12];
    // SAFETY: VMGEXIT through the GHCB page; RAX carries a value across the switch,
    // the other registers must come back unchanged.
    unsafe {
        wr64(
            (mbox().wrapping_add(mailbox::CMD)) as u64,
            mailbox::CMD_EDIT_RAX,
        );
        for i in 0..2 {
            wr64(
                ((nitride_snp_test_images::SHARED_VIEW + gpa::GHCB1 + 0x3F0 + 8 * i) as *mut u64)
                    as u64,
                0,
            );
        }
        let g = |at: u64| (nitride_snp_test_images::SHARED_VIEW + gpa::GHCB1 + at) as *mut u64;
        wr64((g(0x390)) as u64, 0x8000_0018);
        wr64((g(0x398)) as u64, 0);
        wr64((g(0x3A0)) as u64, 0);
        wr64(
            (g(0x3F8)) as u64,
            (1 << (0x390 / 8 - 64)) | (1 << (0x398 / 8 - 64)) | (1 << (0x3A0 / 8 - 64)),
        );
        wr64((g(0xFF8)) as u64, 2 << 16);
        core::arch::asm!(
            "rep vmmcall",
            inout("rax") 0x1111u64 => rax,
            inout("rcx") 0x1101u64 => regs[0],
            inout("rdx") 0x1102u64 => regs[1],
            inout("rsi") 0x1106u64 => regs[2],
            inout("rdi") 0x1107u64 => regs[3],
            inout("r8") 0x1108u64 => regs[4],
            inout("r9") 0x1109u64 => regs[5],
            inout("r10") 0x110Au64 => regs[6],
            inout("r11") 0x110Bu64 => regs[7],
            inout("r12") 0x110Cu64 => regs[8],
            inout("r13") 0x110Du64 => regs[9],
            inout("r14") 0x110Eu64 => regs[10],
            inout("r15") 0x110Fu64 => regs[11],
        );
    }
    c.check(
        "vmsa-registers-edited",
        rax == 0x2222,
        format_args!("RAX after VMPL0 edited the VMSA: {rax:#x}"),
    );
    c.check(
        "registers-kept-across-vmpl-switch",
        regs == [
            0x1101, 0x1102, 0x1106, 0x1107, 0x1108, 0x1109, 0x110A, 0x110B, 0x110C, 0x110D, 0x110E,
            0x110F,
        ],
        format_args!("RCX RDX RSI RDI R8..R15 after the round trip: {regs:x?}"),
    );

    // One VMGEXIT round trip VMPL1 -> VMPL0 -> VMPL1, in TSC ticks (instructions
    // under -icount shift=0).
    let mut best = u64::MAX;
    for _ in 0..8 {
        let t0 = tsc();
        call_vmpl0(mailbox::CMD_PING);
        best = best.min(tsc() - t0);
    }
    say!("snp-test: VMGEXIT round trip VMPL1 -> VMPL0 -> VMPL1: {best} TSC ticks");

    wr64((mbox().wrapping_add(mailbox::PASSED)) as u64, c.passed);
    wr64((mbox().wrapping_add(mailbox::FAILED)) as u64, c.failed);
    call_vmpl0(mailbox::CMD_DONE);
    say!("FAIL VMPL1 ran again after it was done");
    nitride_snp_test_images::halt_forever()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("FAIL panic: {info}");
    wr64((mbox().wrapping_add(mailbox::FAILED)) as u64, 1);
    call_vmpl0(mailbox::CMD_DONE);
    nitride_snp_test_images::halt_forever()
}
