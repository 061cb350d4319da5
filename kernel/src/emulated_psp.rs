//! The emulated platform's way to the emulated PSP: the [`crate::psp::PspChannel`]
//! that hands a guest request straight to [`EmulatedPsp`] (crate
//! `nitride-emulated-psp`, shared with the virtual SNP machine), with no shared pages
//! and no hypervisor in between. Goes away with the emulated platform.

pub use nitride_emulated_psp::{
    fw_status, status, DevPspConfig, DevPspError, EmulatedPsp, LaunchInfo, PspTiming, RequestError,
    KEY_DOMAIN,
};

use crate::psp::{ChannelError, PspChannel, PSP_PAGE};

/// Test fixtures of the emulated PSP.
#[cfg(test)]
pub(crate) use nitride_emulated_psp::testing;

impl From<RequestError> for ChannelError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::CertificatesTooSmall { pages } => Self::CertificatesTooSmall { pages },
            RequestError::Firmware(code) => Self::Firmware(code),
        }
    }
}

/// The [`PspChannel`] of the emulated platform: guest requests go straight to the
/// [`EmulatedPsp`].
#[derive(Debug)]
pub struct EmulatedPspChannel(EmulatedPsp);

impl EmulatedPspChannel {
    /// A channel to `psp`.
    pub fn new(psp: EmulatedPsp) -> Self {
        Self(psp)
    }

    /// The emulated PSP.
    pub fn psp(&self) -> &EmulatedPsp {
        &self.0
    }
}

impl PspChannel for EmulatedPspChannel {
    fn guest_request(
        &mut self,
        request: &[u8; PSP_PAGE],
        response: &mut [u8; PSP_PAGE],
        certificates: Option<&mut [u8]>,
    ) -> Result<(), ChannelError> {
        Ok(self.0.handle(request, response, certificates)?)
    }
}
