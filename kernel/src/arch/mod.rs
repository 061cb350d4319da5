//! Everything machine-specific and unsafe: boot, CPU tables, console, heap, the SVSM's
//! own image (for the code check), the SVSM's W^X page tables, and the hardware side
//! of the platform: the SNP platform ([`snp`], feature `snp`) or the emulated
//! platform (PVH boot, guest-memory access and the SVM world switch; QEMU's fw_cfg
//! reader is `nitride_rt::fw_cfg`). Each module keeps its unsafe blocks small and
//! offers a safe API.

#[cfg(not(feature = "snp"))]
pub mod boot;
pub mod cpu;
pub mod entropy;
#[cfg(not(feature = "snp"))]
pub mod guest_mem;
pub mod heap;
pub mod image;
pub mod paging;
#[cfg(not(feature = "snp"))]
pub mod pvh;
pub mod serial;
#[cfg(feature = "snp")]
pub mod snp;
#[cfg(not(feature = "snp"))]
pub mod svm;
pub mod take_once;
