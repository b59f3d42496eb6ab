//! TLS for every port: the server side ([`TlsServer`]), the dialing side ([`TlsClient`]), an
//! accept stream of finished handshakes for HTTP servers ([`TlsIncoming`]) and a connector for
//! tonic channels ([`TlsConnector`]).
//!
//! TLS is rustls with the `ring` provider (the crypto library authentication already uses).
//! It sits under everything else: TCP, then TLS, then the session handshake (`Hello`/`Welcome`)
//! when a cluster secret is set, then frames or HTTP/2.
//!
//! Certificates are reloaded without a restart: the certificate and key files (and a client's
//! CA file) are checked at most every `reload_interval`, lazily when a handshake needs them,
//! by the metadata of their paths (length, modification time, inode; symlinks followed, so
//! Kubernetes' swap of a mounted secret's `..data` link counts as a change). Changed files are
//! read and parsed; a pair that does not parse or does not match (half written, the key not yet
//! replaced) keeps the previous one with a warning, and is tried again once the files change
//! again. New connections get the new certificate; open ones keep the one they started with.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use crate::transport::Stream;

pub use tokio_rustls::TlsAcceptor;

/// The ALPN protocol of gRPC (HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";
/// The ALPN protocol of the admin ports (HTTP/1.1).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The first byte of every TLS connection (a handshake record). A data-plane port with TLS on
/// peeks it to answer a plaintext peer with a clear error instead of a failed handshake.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Handshakes a [`TlsIncoming`] runs at once; past it, accepting waits.
const MAX_PENDING_HANDSHAKES: usize = 256;

/// A TLS file that cannot be used, naming the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: cannot read it: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path}: {problem}")]
    Content {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("tls_server_name {name:?} is neither a DNS name nor an IP address")]
    ServerName { name: String },
}

const CERT_FILE: &str = "certificate file (tls_cert_file)";
const KEY_FILE: &str = "private key file (tls_key_file)";
const CA_FILE: &str = "CA file (tls_ca_file)";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate of a PEM file, in order; none is an error.
fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(what, path)?;
    let content = |problem: String| TlsError::Content {
        what,
        path: path.to_path_buf(),
        problem,
    };
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content(format!("not valid PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(content(
            "holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certificates)
}

/// The certificate chain of `cert_file` with the key of `key_file`, checked to match.
fn load_certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates(CERT_FILE, cert_file)?;
    let key_bytes = read(KEY_FILE, key_file)?;
    let key_problem = |problem: String| TlsError::Content {
        what: KEY_FILE,
        path: key_file.to_path_buf(),
        problem,
    };
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => key_problem(
            "holds no PEM private key (expected PKCS#8, PKCS#1 or SEC1: -----BEGIN PRIVATE KEY-----)"
                .into(),
        ),
        e => key_problem(format!("not valid PEM: {e}")),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => key_problem(format!(
            "does not match the public key of the certificate in {}",
            cert_file.display()
        )),
        e => key_problem(format!(
            "cannot be used with the certificate in {}: {e}",
            cert_file.display()
        )),
    })
}

/// The CAs of `ca_file`, each checked to be a usable trust anchor.
fn load_roots(ca_file: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, certificate) in read_certificates(CA_FILE, ca_file)?.into_iter().enumerate() {
        roots.add(certificate).map_err(|e| TlsError::Content {
            what: CA_FILE,
            path: ca_file.to_path_buf(),
            problem: format!("certificate {} is not a usable CA certificate: {e}", i + 1),
        })?;
    }
    Ok(roots)
}

/// What identifies a version of a file: a change of any part is a change of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    // `metadata` follows symlinks: a swapped link shows as the new file's inode.
    let metadata = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: metadata.len(),
        modified: metadata.modified().ok(),
        inode: metadata.ino(),
    })
}

type Loader<T> = Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>;

/// A value built from files, rebuilt when they change (checked at most every `interval`).
struct Reloading<T> {
    /// What the value is, for logs.
    what: &'static str,
    files: Vec<PathBuf>,
    interval: Duration,
    load: Loader<T>,
    state: Mutex<ReloadState<T>>,
}

struct ReloadState<T> {
    current: T,
    /// The files' stamps when `current` was read.
    stamps: Vec<Option<Stamp>>,
    checked: Instant,
    /// The stamps of the last version that failed to load: not tried (nor warned about) again
    /// until the files change again.
    failed: Option<Vec<Option<Stamp>>>,
}

impl<T: Clone> Reloading<T> {
    /// Loads the value now; an error here is a configuration error.
    fn new(
        what: &'static str,
        files: Vec<PathBuf>,
        interval: Duration,
        load: Loader<T>,
    ) -> Result<Reloading<T>, TlsError> {
        // Stamps first: a file replaced while it is read is read again at the next check.
        let stamps = files.iter().map(|f| stamp(f)).collect();
        let current = load()?;
        Ok(Reloading {
            what,
            files,
            interval,
            load,
            state: Mutex::new(ReloadState {
                current,
                stamps,
                checked: Instant::now(),
                failed: None,
            }),
        })
    }

    /// The current value, reloading it first when the check is due and the files changed.
    fn get(&self) -> T {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= self.interval {
            state.checked = Instant::now();
            let stamps: Vec<_> = self.files.iter().map(|f| stamp(f)).collect();
            if stamps != state.stamps && state.failed.as_ref() != Some(&stamps) {
                match (self.load)() {
                    Ok(value) => {
                        tracing::info!(what = self.what, files = ?self.files, "TLS files changed, reloaded");
                        state.current = value;
                        state.stamps = stamps;
                        state.failed = None;
                    }
                    Err(e) => {
                        tracing::warn!(what = self.what, error = %e, "TLS files changed but cannot be used, keeping the previous ones");
                        state.failed = Some(stamps);
                    }
                }
            }
        }
        state.current.clone()
    }
}

impl<T> fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.what)
            .field("files", &self.files)
            .field("interval", &self.interval)
            .finish()
    }
}

/// Gives each handshake the certificate and key current at the time.
#[derive(Debug)]
struct CertResolver(Reloading<Arc<CertifiedKey>>);

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }
}

/// The server side of TLS: a certificate chain and its key, reloaded when the files change.
/// Cheap to clone; clones share the certificate.
#[derive(Debug, Clone)]
pub struct TlsServer {
    resolver: Arc<CertResolver>,
    provider: Arc<CryptoProvider>,
}

impl TlsServer {
    /// Loads `cert_file` (PEM chain, leaf first) and `key_file` (PEM private key), checking
    /// they match; they are checked for changes at most every `reload_interval`.
    pub fn load(
        cert_file: impl AsRef<Path>,
        key_file: impl AsRef<Path>,
        reload_interval: Duration,
    ) -> Result<TlsServer, TlsError> {
        let provider = provider();
        let (cert_file, key_file) = (
            cert_file.as_ref().to_path_buf(),
            key_file.as_ref().to_path_buf(),
        );
        let load = {
            let (cert_file, key_file, provider) =
                (cert_file.clone(), key_file.clone(), provider.clone());
            Box::new(move || load_certified_key(&cert_file, &key_file, &provider).map(Arc::new))
        };
        let certs = Reloading::new(
            "certificate",
            vec![cert_file, key_file],
            reload_interval,
            load,
        )?;
        Ok(TlsServer {
            resolver: Arc::new(CertResolver(certs)),
            provider,
        })
    }

    /// An acceptor offering the protocols of `alpn` (e.g. [`ALPN_H2`]; none for the data
    /// plane). Every acceptor of this server presents the current certificate.
    pub fn acceptor(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    /// The certificate chain new connections get (reloading it first when due).
    pub fn certificate_chain(&self) -> Vec<CertificateDer<'static>> {
        self.resolver.0.get().cert.clone()
    }
}

/// The dialing side of TLS: the CAs to trust (reloaded when the CA file changes) and the name
/// expected in servers' certificates. Cheap to clone; clones share the configuration.
#[derive(Clone)]
pub struct TlsClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    roots: Arc<Reloading<Arc<RootCertStore>>>,
    server_name: Option<ServerName<'static>>,
    alpn: Vec<Vec<u8>>,
    provider: Arc<CryptoProvider>,
    /// The configuration made from the roots it names, remade when they are reloaded (it holds
    /// the session cache, so it is not made per connection).
    config: Mutex<(Arc<RootCertStore>, Arc<ClientConfig>)>,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("ca_file", &self.inner.roots.files)
            .field("server_name", &self.inner.server_name)
            .finish()
    }
}

/// Two clients are equal when they are clones of one another.
impl PartialEq for TlsClient {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for TlsClient {}

impl TlsClient {
    /// Trusts the CAs of `ca_file` (PEM), checked for changes at most every
    /// `reload_interval`. `server_name` (a DNS name or IP address) is expected in every
    /// server's certificate; empty: the host dialed.
    pub fn load(
        ca_file: impl AsRef<Path>,
        server_name: &str,
        reload_interval: Duration,
    ) -> Result<TlsClient, TlsError> {
        let server_name = match server_name {
            "" => None,
            name => Some(parse_server_name(name).ok_or_else(|| TlsError::ServerName {
                name: name.to_string(),
            })?),
        };
        let ca_file = ca_file.as_ref().to_path_buf();
        let load = {
            let ca_file = ca_file.clone();
            Box::new(move || load_roots(&ca_file).map(Arc::new))
        };
        let roots = Reloading::new("CA certificates", vec![ca_file], reload_interval, load)?;
        Ok(Self::with_roots(Arc::new(roots), server_name, Vec::new()))
    }

    fn with_roots(
        roots: Arc<Reloading<Arc<RootCertStore>>>,
        server_name: Option<ServerName<'static>>,
        alpn: Vec<Vec<u8>>,
    ) -> TlsClient {
        let provider = provider();
        let current = roots.get();
        let config = client_config(&provider, &current, &alpn);
        TlsClient {
            inner: Arc::new(ClientInner {
                roots,
                server_name,
                alpn,
                provider,
                config: Mutex::new((current, config)),
            }),
        }
    }

    /// The same CAs and server name, offering the protocols of `alpn` (e.g. [`ALPN_H2`] to
    /// dial gRPC).
    pub fn with_alpn(&self, alpn: &[&[u8]]) -> TlsClient {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        if alpn == self.inner.alpn {
            return self.clone();
        }
        Self::with_roots(
            self.inner.roots.clone(),
            self.inner.server_name.clone(),
            alpn,
        )
    }

    /// The configuration for a new connection, remade when the CAs were reloaded.
    fn config(&self) -> Arc<ClientConfig> {
        let roots = self.inner.roots.get();
        let mut config = self.inner.config.lock().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&config.0, &roots) {
            let remade = client_config(&self.inner.provider, &roots, &self.inner.alpn);
            *config = (roots, remade);
        }
        config.1.clone()
    }

    /// The name a connection to `host` expects in the server's certificate.
    pub fn server_name(&self, host: &str) -> io::Result<ServerName<'static>> {
        if let Some(name) = &self.inner.server_name {
            return Ok(name.clone());
        }
        parse_server_name(host).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host:?} is neither a DNS name nor an IP address; set tls_server_name"),
            )
        })
    }

    /// Runs the client handshake on `tcp`, a connection to `host` (a DNS name or IP address,
    /// `[v6]` brackets allowed). A failure names the host, the name expected and the cause
    /// (e.g. `invalid peer certificate: UnknownIssuer` for a server signed by another CA).
    pub async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = self.server_name(host)?;
        let connector = tokio_rustls::TlsConnector::from(self.config());
        connector.connect(name.clone(), tcp).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "TLS handshake with {host} (expecting the name {:?}) failed: {e}",
                    name.to_str()
                ),
            )
        })
    }
}

fn client_config(
    provider: &Arc<CryptoProvider>,
    roots: &RootCertStore,
    alpn: &[Vec<u8>],
) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default TLS versions")
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = alpn.to_vec();
    Arc::new(config)
}

/// `host` as a server name: an IP address (brackets allowed) or a DNS name.
fn parse_server_name(host: &str) -> Option<ServerName<'static>> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_string()).ok()
}

/// Splits `host:port` (IPv6 in brackets) into its host, for the server name.
pub fn host_of(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((host, _)) => host,
        None => addr,
    }
}

/// Whether an error of a TLS handshake is the peer's certificate or protocol being refused
/// (the same connection fails again), rather than the connection breaking.
pub fn is_refusal(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::InvalidData
}

/// Connections accepted on a listener with their TLS handshakes done. Handshakes run in tasks
/// of their own (at most a bounded number at once), each within `handshake_timeout`, so a slow
/// or silent peer never holds up accepting others. A failed handshake is logged (at debug) and
/// the connection dropped. Usable as tonic's incoming stream and by the admin ports.
#[derive(Debug)]
pub struct TlsIncoming {
    streams: mpsc::Receiver<Stream>,
    local_addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl TlsIncoming {
    /// Starts accepting on `listener` (needs a tokio runtime); stops when dropped.
    pub fn new(
        listener: TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        handshake_timeout: Duration,
    ) -> io::Result<TlsIncoming> {
        let local_addr = listener.local_addr()?;
        let (tx, streams) = mpsc::channel(64);
        let accept = tokio::spawn(accept_tls(listener, acceptor, handshake_timeout, tx));
        Ok(TlsIncoming {
            streams,
            local_addr,
            accept,
        })
    }

    /// The next connection whose handshake succeeded; `None` once accepting stopped.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.streams.recv().await
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl futures_core::Stream for TlsIncoming {
    type Item = io::Result<Stream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.streams.poll_recv(cx).map(|stream| stream.map(Ok))
    }
}

async fn accept_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
    streams: mpsc::Sender<Stream>,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let Ok(permit) = pending.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = streams.closed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, streams) = (acceptor.clone(), streams.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await;
            drop(permit);
            match handshake {
                Ok(Ok(tls)) => {
                    let _ = streams.send(Stream::Server(Box::new(tls))).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "no TLS handshake in time, closing"),
            }
        });
    }
}

/// Dials with TLS for tonic's channels (`Endpoint::connect_with_connector_lazy`): TCP to the
/// URI's host and port, then the handshake. The URI's scheme stays `http`.
#[derive(Debug, Clone)]
pub struct TlsConnector {
    tls: TlsClient,
}

impl TlsConnector {
    /// Dials with `tls`, offering ALPN `h2`.
    pub fn new(tls: &TlsClient) -> TlsConnector {
        TlsConnector {
            tls: tls.with_alpn(&[ALPN_H2]),
        }
    }
}

impl tower_service::Service<tonic::codegen::http::Uri> for TlsConnector {
    type Response = hyper_util::rt::TokioIo<Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{uri} has no host"))
            })?;
            let port = uri.port_u16().unwrap_or(80);
            let bare = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            let tcp = TcpStream::connect((bare, port)).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(host, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(Stream::Client(Box::new(
                stream,
            ))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and a way to issue certificates for `localhost` and 127.0.0.1 signed by it.
    struct Ca {
        key: rcgen::KeyPair,
        params: rcgen::CertificateParams,
        pem: String,
    }

    impl Ca {
        fn new(name: &str) -> Ca {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let pem = params.self_signed(&key).unwrap().pem();
            Ca { key, params, pem }
        }

        /// A leaf certificate and its key (PEM), with `serial`.
        fn issue(&self, serial: u64) -> (String, String) {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            params
                .subject_alt_names
                .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
            params.serial_number = Some(serial.into());
            let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        }
    }

    struct Files {
        _dir: tempfile::TempDir,
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
    }

    fn files(ca: &Ca, serial: u64) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let files = Files {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            ca: dir.path().join("ca.pem"),
            _dir: dir,
        };
        write_pair(&files, ca, serial);
        std::fs::write(&files.ca, &ca.pem).unwrap();
        files
    }

    /// Replaces the certificate and key in place, as a rotation does; returns the new leaf.
    fn write_pair(files: &Files, ca: &Ca, serial: u64) -> CertificateDer<'static> {
        let (cert, key) = ca.issue(serial);
        std::fs::write(&files.cert, &cert).unwrap();
        std::fs::write(&files.key, &key).unwrap();
        CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()
    }

    fn leaf(server: &TlsServer) -> CertificateDer<'static> {
        server.certificate_chain()[0].clone()
    }

    #[test]
    fn bad_files_are_errors_naming_the_file_and_the_problem() {
        let ca = Ca::new("test CA");
        let files = files(&ca, 1);
        let dir = files.cert.parent().unwrap();
        let missing = dir.join("missing.pem");
        let error = TlsServer::load(&missing, &files.key, Duration::ZERO).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("tls_cert_file") && text.contains("missing.pem"),
            "{text}"
        );
        assert!(text.contains("cannot read it"), "{text}");

        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let text = TlsServer::load(&garbage, &files.key, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("garbage.pem") && text.contains("no PEM certificate"),
            "{text}"
        );
        let text = TlsServer::load(&files.cert, &garbage, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("tls_key_file") && text.contains("no PEM private key"),
            "{text}"
        );

        let other_key = dir.join("other-key.pem");
        std::fs::write(&other_key, ca.issue(2).1).unwrap();
        let text = TlsServer::load(&files.cert, &other_key, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("other-key.pem") && text.contains("does not match"),
            "{text}"
        );

        let text = TlsClient::load(&garbage, "", Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("tls_ca_file") && text.contains("garbage.pem"),
            "{text}"
        );
        let text = TlsClient::load(&files.ca, "not a name!", Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(text.contains("tls_server_name"), "{text}");
        assert!(TlsServer::load(&files.cert, &files.key, Duration::ZERO).is_ok());
    }

    #[test]
    fn a_changed_pair_is_reloaded_and_a_broken_one_keeps_the_old() {
        let ca = Ca::new("test CA");
        let files = files(&ca, 1);
        let server = TlsServer::load(&files.cert, &files.key, Duration::ZERO).unwrap();
        let first = leaf(&server);

        let second = write_pair(&files, &ca, 2);
        assert_ne!(first, second);
        assert_eq!(leaf(&server), second);

        // Half written: the certificate truncated. The last good pair stays.
        let pem = std::fs::read(&files.cert).unwrap();
        std::fs::write(&files.cert, &pem[..pem.len() / 2]).unwrap();
        assert_eq!(leaf(&server), second);
        assert_eq!(leaf(&server), second);
        // A new certificate whose key is not written yet: still the last good pair.
        let (cert, key) = ca.issue(3);
        std::fs::write(&files.cert, &cert).unwrap();
        assert_eq!(leaf(&server), second);
        std::fs::write(&files.key, &key).unwrap();
        assert_eq!(
            leaf(&server),
            CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()
        );
    }

    #[test]
    fn files_are_not_checked_before_the_interval() {
        let ca = Ca::new("test CA");
        let files = files(&ca, 1);
        let server = TlsServer::load(&files.cert, &files.key, Duration::from_secs(3600)).unwrap();
        let first = leaf(&server);
        write_pair(&files, &ca, 2);
        assert_eq!(leaf(&server), first);
    }

    async fn serve(server: &TlsServer) -> (TlsIncoming, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let incoming =
            TlsIncoming::new(listener, server.acceptor(&[]), Duration::from_secs(5)).unwrap();
        let addr = incoming.local_addr();
        (incoming, addr)
    }

    async fn dial(client: &TlsClient, addr: SocketAddr, host: &str) -> io::Result<Stream> {
        let tcp = TcpStream::connect(addr).await?;
        Ok(Stream::Client(Box::new(client.connect(host, tcp).await?)))
    }

    #[tokio::test]
    async fn handshakes_present_the_current_certificate_and_refuse_other_cas() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let ca = Ca::new("test CA");
        let files = files(&ca, 1);
        let server = TlsServer::load(&files.cert, &files.key, Duration::ZERO).unwrap();
        let (mut incoming, addr) = serve(&server).await;
        let client = TlsClient::load(&files.ca, "", Duration::ZERO).unwrap();

        for host in ["127.0.0.1", "localhost"] {
            let mut dialed = dial(&client, addr, host).await.unwrap();
            let mut accepted = incoming.accept().await.unwrap();
            assert_eq!(dialed.peer_certificates().unwrap()[0], leaf(&server));
            dialed.write_all(b"ping").await.unwrap();
            dialed.flush().await.unwrap();
            let mut buf = [0u8; 4];
            accepted.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
        }

        // Rotated: a new connection sees the new certificate, an open one keeps working.
        let mut open = dial(&client, addr, "127.0.0.1").await.unwrap();
        let mut open_server = incoming.accept().await.unwrap();
        let second = write_pair(&files, &ca, 2);
        let fresh = dial(&client, addr, "127.0.0.1").await.unwrap();
        let _fresh_server = incoming.accept().await.unwrap();
        assert_eq!(fresh.peer_certificates().unwrap()[0], second);
        open.write_all(b"still").await.unwrap();
        open.flush().await.unwrap();
        let mut buf = [0u8; 5];
        open_server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still");

        // A client trusting another CA is refused with the reason.
        let other = Ca::new("other CA");
        let other_ca = files.ca.with_file_name("other-ca.pem");
        std::fs::write(&other_ca, &other.pem).unwrap();
        let stranger = TlsClient::load(&other_ca, "", Duration::ZERO).unwrap();
        let error = dial(&stranger, addr, "127.0.0.1").await.unwrap_err();
        assert!(is_refusal(&error), "{error}");
        assert!(error.to_string().contains("UnknownIssuer"), "{error}");

        // A name the certificate does not hold is refused too.
        let misnamed = TlsClient::load(&files.ca, "example.invalid", Duration::ZERO).unwrap();
        let error = dial(&misnamed, addr, "127.0.0.1").await.unwrap_err();
        assert!(error.to_string().contains("example.invalid"), "{error}");

        // The stranger's CA file now holds the right CA: reloaded, it connects.
        std::fs::write(&other_ca, &ca.pem).unwrap();
        dial(&stranger, addr, "127.0.0.1").await.unwrap();
    }
}
