//! Everything machine-specific and unsafe: CPU tables, console, heap, the SVSM's own
//! image (for the code check), the SVSM's W^X page tables, and the SNP side of the
//! platform ([`snp`]: boot from IGVM, GHCB, #VC, PVALIDATE/RMPADJUST, the world switch
//! through SNP_RUN_VMPL, the PSP transport). Each module keeps its unsafe blocks small
//! and offers a safe API.

pub mod cpu;
pub mod entropy;
pub mod heap;
pub mod image;
pub mod paging;
pub mod serial;
pub mod snp;
pub mod take_once;
