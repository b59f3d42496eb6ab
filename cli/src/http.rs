//! A small HTTP/1.1 client for the admin ports (`sluice admin` and the tests).
//!
//! It is hyper-util's legacy client over plain TCP: tonic compiles hyper's HTTP/1 client and
//! hyper-util's `client-legacy` into the tree already, so it costs no new code to build and
//! none to maintain here. Every call is bounded by [`TIMEOUT`].

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

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

/// `GET http://{addr}{path}`.
pub async fn get(addr: &str, path: &str) -> Result<Answer, HttpError> {
    request(Method::GET, addr, path).await
}

/// `POST http://{addr}{path}` with an empty body.
pub async fn post(addr: &str, path: &str) -> Result<Answer, HttpError> {
    request(Method::POST, addr, path).await
}

/// The innermost cause of an error: "connection refused" rather than "client error (Connect)".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

async fn request(method: Method, addr: &str, path: &str) -> Result<Answer, HttpError> {
    let failed = |reason: String| HttpError::Failed {
        addr: addr.to_string(),
        reason,
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Empty::new())
        .map_err(|e| failed(e.to_string()))?;
    let exchange = async {
        let answer = client.request(request).await.map_err(|e| {
            if e.is_connect() {
                HttpError::Connect {
                    addr: addr.to_string(),
                    reason: root_cause(&e),
                }
            } else {
                failed(root_cause(&e))
            }
        })?;
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
