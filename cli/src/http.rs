//! A small HTTP/1.1 client for the admin ports (`sluice admin` and the tests).
//!
//! It is hyper's HTTP/1 client connection over plain TCP or TLS (ALPN `http/1.1`): tonic
//! compiles hyper's HTTP/1 client into the tree already, so it costs no new code to build and
//! none to maintain here. One connection per request (admin calls are rare). Every call is
//! bounded by [`TIMEOUT`].

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use sluice_protocol::auth::{sign_raw, AUTH_METADATA};
use sluice_protocol::rpc::Credentials;
use sluice_protocol::tls::{host_of, TlsClient, ALPN_HTTP1};
use sluice_protocol::transport::Stream;
use tokio::net::TcpStream;

/// Longest one request may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{addr} did not answer within {TIMEOUT:?}")]
    Timeout { addr: String },
    #[error("request to {addr} failed: {reason}")]
    Failed { addr: String, reason: String },
}

/// An answer: its status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: String,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The `error` field of a JSON error answer, else the body itself.
    pub fn error_message(&self) -> String {
        match self.json().get("error").and_then(|e| e.as_str()) {
            Some(error) => error.to_string(),
            None => format!("{} {}", self.status, self.body.trim()),
        }
    }
}

/// `GET {path}` of the admin port at `addr` (HTTPS when [`set_tls`] was called).
pub async fn get(addr: &str, path: &str) -> Result<Answer, HttpError> {
    request(Method::GET, addr, path, default_tls()).await
}

/// `POST {path}` of the admin port at `addr`, with an empty body (HTTPS when [`set_tls`] was
/// called).
pub async fn post(addr: &str, path: &str) -> Result<Answer, HttpError> {
    request(Method::POST, addr, path, default_tls()).await
}

/// `GET {path}` over HTTPS with `tls` when given, else plain HTTP.
pub async fn get_with(
    addr: &str,
    path: &str,
    tls: Option<&TlsClient>,
) -> Result<Answer, HttpError> {
    request(Method::GET, addr, path, tls).await
}

/// `POST {path}` over HTTPS with `tls` when given, else plain HTTP.
pub async fn post_with(
    addr: &str,
    path: &str,
    tls: Option<&TlsClient>,
) -> Result<Answer, HttpError> {
    request(Method::POST, addr, path, tls).await
}

/// How this process's [`get`] and [`post`] (and `sluice admin`'s gRPC calls) reach admin ports
/// and masters: set once, from `sluice admin --tls-ca-file`.
static DEFAULT_TLS: OnceLock<TlsClient> = OnceLock::new();

/// Makes [`get`] and [`post`] use HTTPS with `tls` from now on (the first call wins).
pub fn set_tls(tls: TlsClient) {
    let _ = DEFAULT_TLS.set(tls);
}

/// Who signs this process's [`post`]s and `sluice admin`'s gRPC calls: set once, from
/// `sluice admin --cluster-secret-file`.
static OPERATOR: OnceLock<Credentials> = OnceLock::new();

/// Signs every later [`post`] (and `sluice admin`'s master calls) as `credentials`.
pub fn set_operator(credentials: Credentials) {
    let _ = OPERATOR.set(credentials);
}

/// The credentials set with [`set_operator`], if any.
pub fn operator() -> Option<&'static Credentials> {
    OPERATOR.get()
}

/// `message` as a gRPC request, signed when [`set_operator`] was called.
pub fn signed<T: sluice_protocol::auth::SignedRequest>(
    message: T,
) -> anyhow::Result<tonic::Request<T>> {
    Ok(match operator() {
        Some(c) => sluice_protocol::auth::sign(&c.principal, &c.keys, message)?,
        None => tonic::Request::new(message),
    })
}

/// The TLS set with [`set_tls`], if any.
pub fn default_tls() -> Option<&'static TlsClient> {
    DEFAULT_TLS.get()
}

/// The innermost cause of an error: "connection refused" rather than "client error (Connect)".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

async fn request(
    method: Method,
    addr: &str,
    path: &str,
    tls: Option<&TlsClient>,
) -> Result<Answer, HttpError> {
    let failed = |reason: String| HttpError::Failed {
        addr: addr.to_string(),
        reason,
    };
    let cannot_connect = |reason: String| HttpError::Connect {
        addr: addr.to_string(),
        reason,
    };
    let mut request = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(hyper::header::HOST, addr);
    if method != Method::GET {
        if let Some(c) = operator() {
            let signature = sign_raw(&c.principal, &c.keys, &format!("{method} {path}"), b"")
                .map_err(|e| failed(e.to_string()))?;
            request = request.header(AUTH_METADATA, signature);
        }
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| failed(e.to_string()))?;
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| cannot_connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(tls) => {
                let tls = tls.with_alpn(&[ALPN_HTTP1]);
                let stream = tls
                    .connect(host_of(addr), tcp)
                    .await
                    .map_err(|e| cannot_connect(e.to_string()))?;
                Stream::Client(Box::new(stream))
            }
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(root_cause(&e)))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| failed(root_cause(&e)))?;
        let status = answer.status();
        let body = answer
            .into_body()
            .collect()
            .await
            .map_err(|e| failed(root_cause(&e)))?
            .to_bytes();
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| HttpError::Timeout {
            addr: addr.to_string(),
        })?
}
