//! A `--secure` run: every master and worker shares a cluster secret and has TLS on every port,
//! and every connection the harness makes authenticates and speaks TLS.
//!
//! [`Security::prepare`] makes, once per run, under `<run dir>/security`: a random cluster secret
//! file (64 hex characters, mode 0600) and development certificates for the name `localhost`
//! (`sluice dev-certs`, the binary of the run). Masters and workers bind `127.a.b.c` addresses,
//! so every process and client expects the name [`SERVER_NAME`] instead of the address dialed.
//!
//! What the harness then uses, through [`crate::Run`]:
//! - clients of the workload: a fixed application secret per run, so every client of one
//!   application (the writers of `mem-writers`, the probe's) proves the same key;
//! - status polls (`ClusterStatus`, `MasterStatus`): signed as the operator (`admin`);
//! - raw data-plane traffic (pushes, loitering connections, the port probe): sessions as the
//!   cluster principal `worker:chaos-raw`, which may push to primaries and replicas;
//! - the stalled worker: registers and heartbeats as `worker:<its id>`, and serves the master's
//!   sessions on its own TLS ports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use sluice_protocol::auth::{Keyring, Principal, Secret, SignedRequest};
use sluice_protocol::rpc::Credentials;
use sluice_protocol::tls::{TlsClient, TlsServer};

/// The name in the development certificate, expected by every process and client.
pub const SERVER_NAME: &str = "localhost";

/// How often the TLS files are checked for changes (they never change during a run).
const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// The principal of the harness's raw data-plane connections.
pub const RAW_PRINCIPAL: &str = "chaos-raw";

/// The files and keys of a secure run.
#[derive(Debug)]
pub struct Security {
    /// The cluster secret file given to every master and worker.
    pub secret_file: PathBuf,
    pub keyring: Keyring,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Dials masters and workers, trusting `ca` and expecting [`SERVER_NAME`].
    pub tls: TlsClient,
    /// Presents `cert` (the stalled worker's ports).
    pub tls_server: TlsServer,
    /// The secret of every application the harness's clients act for.
    pub app_secret: Secret,
}

impl Security {
    /// Makes the secret and the certificates under `<run_dir>/security` with the `sluice`
    /// binary at `sluice`, and loads them.
    pub async fn prepare(sluice: &Path, run_dir: &Path) -> anyhow::Result<Security> {
        let dir = run_dir.join("security");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let secret_file = dir.join("cluster.secret");
        write_private(&secret_file, &format!("{}\n", hex(&random::<32>()?)))?;
        let out = tokio::process::Command::new(sluice)
            .arg("dev-certs")
            .arg("--out")
            .arg(&dir)
            .args(["--name", SERVER_NAME, "--ip", "127.0.0.1"])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {} dev-certs", sluice.display()))?;
        if !out.status.success() {
            bail!(
                "{} dev-certs failed ({}): {}",
                sluice.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let files: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("sluice dev-certs printed no JSON line")?;
        let file = |name: &str| {
            files[name]
                .as_str()
                .map(PathBuf::from)
                .with_context(|| format!("sluice dev-certs printed no {name:?}: {files}"))
        };
        let (ca, cert, key) = (file("ca")?, file("cert")?, file("key")?);
        let keyring = Keyring::load(&secret_file)?;
        let tls = TlsClient::load(&ca, SERVER_NAME, TLS_RELOAD_INTERVAL)?;
        let tls_server = TlsServer::load(&cert, &key, TLS_RELOAD_INTERVAL)?;
        Ok(Security {
            secret_file,
            keyring,
            ca,
            cert,
            key,
            tls,
            tls_server,
            app_secret: Secret::new(hex(&random::<32>()?)),
        })
    }

    /// The keys masters and workers share: the secret, the certificate and what to trust.
    fn common_settings(&self) -> Vec<(String, String)> {
        let path = |p: &Path| crate::cluster::toml_text(&p.display().to_string());
        vec![
            ("cluster_secret_file".into(), path(&self.secret_file)),
            ("tls_cert_file".into(), path(&self.cert)),
            ("tls_key_file".into(), path(&self.key)),
            ("tls_ca_file".into(), path(&self.ca)),
            (
                "tls_server_name".into(),
                crate::cluster::toml_text(SERVER_NAME),
            ),
            ("tls_connect".into(), "true".into()),
        ]
    }

    /// A master's config keys: the secret, and TLS on its gRPC and admin ports and to its peers.
    pub fn master_settings(&self) -> Vec<(String, String)> {
        let mut settings = self.common_settings();
        settings.push(("tls_grpc".into(), "true".into()));
        settings.push(("tls_admin".into(), "true".into()));
        settings
    }

    /// A worker's config keys: the secret, and TLS on its push and fetch ports (which carry
    /// replication) and to the masters and its replicas. Chaos workers have no admin port.
    pub fn worker_settings(&self) -> Vec<(String, String)> {
        let mut settings = self.common_settings();
        settings.push(("tls_push".into(), "true".into()));
        settings.push(("tls_fetch".into(), "true".into()));
        settings
    }

    /// Credentials of a cluster principal.
    pub fn credentials(&self, principal: Principal) -> Credentials {
        Credentials::cluster(principal, &self.keyring)
    }

    /// `message` signed by the cluster principal `principal`.
    pub fn sign<T: SignedRequest>(
        &self,
        principal: &Principal,
        message: T,
    ) -> anyhow::Result<tonic::Request<T>> {
        let keys = sluice_protocol::auth::PrincipalKeys::cluster(self.keyring.signing());
        Ok(sluice_protocol::auth::sign(principal, &keys, message)?)
    }
}

/// `N` random bytes from the kernel.
fn random<const N: usize>() -> anyhow::Result<[u8; N]> {
    use std::io::Read;
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `text` to a new file `path` readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_secret_is_private_hex_the_keyring_loads() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("chaos-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cluster.secret");
        write_private(&path, &format!("{}\n", hex(&random::<32>().unwrap()))).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert!(text.trim().chars().all(|c| c.is_ascii_hexdigit()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        Keyring::load(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
