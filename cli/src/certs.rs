//! Development certificates: a CA and a server certificate signed by it, for `sluice dev-certs`
//! and `sluice local --secure`. Not for production (the CA key lies beside the certificates;
//! use cert-manager or your own PKI there).
//!
//! [`issue`] writes into a directory `ca.pem` and `ca-key.pem` (made once, reused when present,
//! so a certificate issued again with another serial chains to the same CA), and `cert.pem`
//! and `key.pem` for the names and addresses asked for. Files are replaced by renaming a
//! complete temporary file over them, as a rotation does.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The common name of a development CA, followed by a digest of its public key: each CA has
/// its own name (a client trusting another one is refused as `UnknownIssuer`), and a reused
/// key gives the same name again, so it signs certificates that chain to the `ca.pem` written
/// before.
const CA_NAME: &str = "Sluice development CA";

/// Where [`issue`] wrote its files.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DevCerts {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn ca_params(key: &rcgen::KeyPair) -> anyhow::Result<rcgen::CertificateParams> {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key_raw());
    let id: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{CA_NAME} {id}"));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Writes `contents` to `path` through a temporary file renamed over it, with `mode`.
fn write_file(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// Issues a certificate for `names` (DNS) and `ips`, with `serial` (random when `None`),
/// signed by the CA in `dir` (made first when `dir` holds none), and writes the files.
pub fn issue(
    dir: &Path,
    names: &[String],
    ips: &[IpAddr],
    serial: Option<u64>,
) -> anyhow::Result<DevCerts> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = DevCerts {
        ca: dir.join("ca.pem"),
        ca_key: dir.join("ca-key.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    let (ca_key, ca_params) = if files.ca.exists() && files.ca_key.exists() {
        let pem = std::fs::read_to_string(&files.ca_key)
            .with_context(|| format!("reading {}", files.ca_key.display()))?;
        let key = rcgen::KeyPair::from_pem(&pem)
            .with_context(|| format!("{} is not a PEM private key", files.ca_key.display()))?;
        let params = ca_params(&key)?;
        (key, params)
    } else {
        let key = rcgen::KeyPair::generate()?;
        let params = ca_params(&key)?;
        let ca = params.self_signed(&key)?;
        write_file(&files.ca_key, &key.serialize_pem(), 0o600)?;
        write_file(&files.ca, &ca.pem(), 0o644)?;
        (key, params)
    };
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().map_or("sluice", |n| n),
    );
    for ip in ips {
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(*ip));
    }
    let serial = match serial {
        Some(serial) => serial,
        None => {
            let mut bytes = [0u8; 8];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .map_err(|_| anyhow::anyhow!("no randomness for a serial number"))?;
            u64::from_be_bytes(bytes) >> 1
        }
    };
    params.serial_number = Some(serial.into());
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    // The key first: a server reloading between the two writes sees a new key with the old
    // certificate, refuses the pair and keeps the old one until the certificate follows.
    write_file(&files.key, &key.serialize_pem(), 0o600)?;
    write_file(&files.cert, &cert.pem(), 0o644)?;
    Ok(files)
}

/// Writes a new random cluster secret (64 hex characters) to `path`, readable by its owner
/// only.
pub fn write_secret(path: &Path) -> anyhow::Result<()> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness for a cluster secret"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_file(path, &format!("{hex}\n"), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reissued_certificate_chains_to_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string()];
        let ips = vec!["127.0.0.1".parse().unwrap()];
        let first = issue(dir.path(), &names, &ips, Some(1)).unwrap();
        let ca = std::fs::read(&first.ca).unwrap();
        let cert = std::fs::read(&first.cert).unwrap();
        issue(dir.path(), &names, &ips, Some(2)).unwrap();
        assert_eq!(std::fs::read(&first.ca).unwrap(), ca, "the CA is kept");
        assert_ne!(std::fs::read(&first.cert).unwrap(), cert);
        // Both certificates load with the CA's trust (the full check is in the TLS tests).
        sluice_protocol::tls::TlsServer::load(&first.cert, &first.key, Default::default()).unwrap();
        sluice_protocol::tls::TlsClient::load(&first.ca, "", Default::default()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&first.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let secret = dir.path().join("cluster.secret");
        write_secret(&secret).unwrap();
        let text = std::fs::read_to_string(&secret).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert!(text.trim().chars().all(|c| c.is_ascii_hexdigit()));
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
