//! Checks of settings that masters, workers and clients share.

/// TLS settings make sense together: a port with TLS on needs a certificate and its key, and
/// dialing with TLS needs the CAs to trust.
pub fn tls(
    serves_tls: bool,
    cert_file: &str,
    key_file: &str,
    dials_tls: bool,
    ca_file: &str,
) -> Result<(), String> {
    if serves_tls && (cert_file.is_empty() || key_file.is_empty()) {
        return Err(
            "tls_cert_file and tls_key_file: both are needed when a port has TLS on".into(),
        );
    }
    if dials_tls && ca_file.is_empty() {
        return Err(
            "tls_ca_file: needed with tls_connect (the CAs that sign the peers' certificates)"
                .into(),
        );
    }
    Ok(())
}
