//! SEV-SNP layouts: attestation report, certificate table, guest messages.
//!
//! Not yet filled: see the issue "Verify real SNP attestation reports".
