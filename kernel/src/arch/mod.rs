//! Everything machine-specific and unsafe: boot, CPU tables, console, heap, the PVH
//! start info (QEMU's fw_cfg reader is `nitride_rt::fw_cfg`), the SVSM's own image (for the launch measurement),
//! the SVSM's W^X page tables, guest-memory access and the SVM world switch. Each module keeps its
//! unsafe blocks small and offers a safe API.

pub mod boot;
pub mod cpu;
pub mod entropy;
pub mod guest_mem;
pub mod heap;
pub mod image;
pub mod paging;
pub mod pvh;
pub mod serial;
pub mod svm;
pub mod take_once;
