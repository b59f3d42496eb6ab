//! Calls to the master when there are several (Raft-replicated) masters and only the leader
//! serves.
//!
//! A [`MasterChannel`] holds the configured endpoints (`"h1:p1,h2:p2,h3:p3"`), one lazily
//! connected gRPC channel per endpoint, and the endpoint believed to lead. [`MasterChannel::call`]
//! sends a request there and, until an answer or `retry_timeout`:
//!
//! - follows a redirect: a master that does not lead answers `UNAVAILABLE` with the metadata
//!   `sluice-leader: host:port` when it knows the leader (an address not in the list, a replaced
//!   master, is added to it);
//! - moves on to the next endpoint when a master is unreachable (refused, reset, no answer within
//!   `call_timeout`) or answers `UNAVAILABLE` without naming a leader (an election is running, it
//!   is shutting down, or, on the leader, no worker can take the request yet), waiting a short
//!   backoff (50 ms doubling to 500 ms) before each such retry.
//!
//! Any other answer (`NOT_FOUND`, `INVALID_ARGUMENT`, `FAILED_PRECONDITION`,
//! `RESOURCE_EXHAUSTED`...) is the application's and is returned at once.

use std::error::Error as _;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

use crate::auth::SignedRequest;
use crate::pb::master_client::MasterClient;
use crate::tls::TlsConnector;

/// The gRPC metadata key in which a master that does not lead names the leader (`host:port`).
pub const LEADER_METADATA: &str = "sluice-leader";

/// HTTP/2 pings on every master connection, and how long one may go unanswered.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_millis(500);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a master that failed a call on this side is not followed to by redirects.
const SUSPECT_FOR: Duration = Duration::from_secs(3);
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// How master calls connect, wait and retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterOptions {
    /// Limit for opening a connection to one master.
    pub connect_timeout: Duration,
    /// Limit for one attempt on one master; a master silent this long counts as unreachable.
    /// Must exceed any long poll a request asks for (a layout request's `wait_ms`).
    pub call_timeout: Duration,
    /// How long a call keeps trying other masters, redirects and retries before it returns the
    /// last error. Long enough to cover an election (0.5–1.5 s) and a master restart.
    pub retry_timeout: Duration,
    /// Largest gRPC message sent or received.
    pub max_message_size: usize,
    /// Dial the masters with TLS (ALPN `h2`; the scheme stays `http`). `None`: plain TCP.
    pub tls: Option<crate::tls::TlsClient>,
}

impl Default for MasterOptions {
    fn default() -> Self {
        MasterOptions {
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(60),
            retry_timeout: Duration::from_secs(15),
            max_message_size: 4 << 20,
            tls: None,
        }
    }
}

/// A master endpoint list that cannot be used, naming the entry at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("master endpoints {list:?}: entry {entry:?} {problem}; expected host:port[,host:port...]")]
pub struct EndpointError {
    pub list: String,
    pub entry: String,
    pub problem: &'static str,
}

/// A master call that failed: the application's answer, or the last error once retries ran out.
#[derive(Debug, thiserror::Error)]
#[error("master {addr}: {status}")]
pub struct MasterCallError {
    /// The master that answered, or every endpoint tried when none answered usefully.
    pub addr: String,
    pub status: tonic::Status,
}

/// Parses a comma-separated list of `host:port` endpoints. Whitespace around entries is
/// ignored; an empty entry or one that is not `host:port` is an error naming it; repeated entries
/// count once.
pub fn parse_endpoints(list: &str) -> Result<Vec<String>, EndpointError> {
    let mut endpoints: Vec<String> = Vec::new();
    for entry in list.split(',').map(str::trim) {
        check_endpoint(entry).map_err(|problem| EndpointError {
            list: list.to_string(),
            entry: entry.to_string(),
            problem,
        })?;
        if !endpoints.iter().any(|e| e == entry) {
            endpoints.push(entry.to_string());
        }
    }
    Ok(endpoints)
}

/// What is wrong with `entry` as a `host:port`, if anything.
fn check_endpoint(entry: &str) -> Result<(), &'static str> {
    if entry.is_empty() {
        return Err("is empty");
    }
    if entry.contains('/') || entry.contains(char::is_whitespace) {
        return Err("is not a bare host:port");
    }
    let Some((host, port)) = entry.rsplit_once(':') else {
        return Err("has no port");
    };
    if host.is_empty() {
        return Err("has no host");
    }
    if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
        return Err("has no valid port (1-65535)");
    }
    endpoint(entry)
        .map(|_| ())
        .map_err(|_| "is not a valid address")
}

fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{addr}"))
}

/// A client of the one master at `addr`, connecting on first use (needs a tokio runtime). For
/// callers that talk to every master themselves (a worker registers with each); others use
/// [`MasterChannel`].
pub fn master_client(
    addr: &str,
    options: &MasterOptions,
) -> Result<MasterClient<Channel>, EndpointError> {
    let mut node = Node::new(addr).map_err(|problem| EndpointError {
        list: addr.to_string(),
        entry: addr.to_string(),
        problem,
    })?;
    Ok(node.client(options))
}

/// The masters, one lazily connected channel each, and the one believed to lead. Cheap to
/// clone; clones share connections and what they learn about the leader.
#[derive(Debug, Clone)]
pub struct MasterChannel {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    options: MasterOptions,
    state: Mutex<State>,
    /// Who signs the calls ([`crate::auth::sign`]); `None`: calls go unsigned.
    credentials: std::sync::RwLock<Option<crate::rpc::Credentials>>,
}

#[derive(Debug)]
struct State {
    /// Configured endpoints in order, then leaders learned from redirects. Never shrinks, so an
    /// index names the same master for the channel's life.
    nodes: Vec<Node>,
    /// Where the next call goes first.
    leader: usize,
}

#[derive(Debug)]
struct Node {
    addr: String,
    endpoint: Endpoint,
    /// Made on first use: a channel needs the runtime, and a master never called costs nothing.
    channel: Option<Channel>,
    /// When a call to it last failed on this side (unreachable, no answer in time): for
    /// [`SUSPECT_FOR`] a redirect to it is not followed (the other masters may still name a
    /// leader that just died or stopped).
    failed_at: Option<Instant>,
}

impl Node {
    fn new(addr: &str) -> Result<Node, &'static str> {
        check_endpoint(addr)?;
        let endpoint = endpoint(addr).map_err(|_| "is not a valid address")?;
        Ok(Node {
            addr: addr.to_string(),
            endpoint,
            failed_at: None,
            channel: None,
        })
    }

    fn client(&mut self, options: &MasterOptions) -> MasterClient<Channel> {
        let channel = self.channel.get_or_insert_with(|| {
            let endpoint = self
                .endpoint
                .clone()
                .connect_timeout(options.connect_timeout)
                .tcp_nodelay(true)
                // A master that stops answering (a stopped process, a dead node whose
                // connections stay open) fails the calls in flight within about 1.5 s, so
                // they move to the next master instead of waiting out the call timeout.
                .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
                .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
                .keep_alive_while_idle(true);
            match &options.tls {
                Some(tls) => endpoint.connect_with_connector_lazy(TlsConnector::new(tls)),
                None => endpoint.connect_lazy(),
            }
        });
        MasterClient::new(channel.clone())
            .max_decoding_message_size(options.max_message_size)
            .max_encoding_message_size(options.max_message_size)
    }
}

/// What to do after a failed attempt.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The application's answer: return it.
    Return,
    /// Not the leader, and it named the leader.
    Redirect(String),
    /// Unreachable, or no leader known there: try the next endpoint.
    TryNext,
}

fn classify(status: &tonic::Status) -> Outcome {
    // A status made on this side of the wire (refused, reset, timed out) carries its cause; one
    // the master sent does not.
    let local = status.source().is_some();
    match status.code() {
        _ if local => Outcome::TryNext,
        tonic::Code::Unavailable => match status
            .metadata()
            .get(LEADER_METADATA)
            .and_then(|v| v.to_str().ok())
        {
            Some(leader) => Outcome::Redirect(leader.trim().to_string()),
            None => Outcome::TryNext,
        },
        tonic::Code::DeadlineExceeded => Outcome::TryNext,
        _ => Outcome::Return,
    }
}

impl MasterChannel {
    /// A channel over the masters in `list` (`"h1:p1,h2:p2"`). Connects nothing yet, so it
    /// needs no runtime and masters that are not up yet are not an error.
    pub fn new(list: &str, options: MasterOptions) -> Result<MasterChannel, EndpointError> {
        let nodes = parse_endpoints(list)?
            .iter()
            .map(|addr| Node::new(addr).expect("parsed endpoints are valid"))
            .collect();
        Ok(MasterChannel {
            shared: Arc::new(Shared {
                options,
                state: Mutex::new(State { nodes, leader: 0 }),
                credentials: std::sync::RwLock::new(None),
            }),
        })
    }

    pub fn options(&self) -> &MasterOptions {
        &self.shared.options
    }

    /// Signs every later call as `credentials` (shared by the channel's clones).
    pub fn set_credentials(&self, credentials: Option<crate::rpc::Credentials>) {
        *self
            .shared
            .credentials
            .write()
            .unwrap_or_else(|e| e.into_inner()) = credentials;
    }

    /// `request`, signed when the channel has credentials (afresh for every attempt: a nonce
    /// is used once).
    fn request<Req: SignedRequest>(
        &self,
        request: Req,
    ) -> Result<tonic::Request<Req>, tonic::Status> {
        let credentials = self
            .shared
            .credentials
            .read()
            .unwrap_or_else(|e| e.into_inner());
        match credentials.as_ref() {
            Some(credentials) => {
                crate::auth::sign(&credentials.principal, &credentials.keys, request)
                    .map_err(|e| tonic::Status::unauthenticated(e.to_string()))
            }
            None => Ok(tonic::Request::new(request)),
        }
    }

    /// Every endpoint known: the configured ones in order, then leaders learned from redirects.
    pub fn endpoints(&self) -> Vec<String> {
        self.state().nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// The endpoint the next call goes to first.
    pub fn leader(&self) -> String {
        let state = self.state();
        state.nodes[state.leader].addr.clone()
    }

    /// Sends `request` with `rpc` to the leading master, following redirects and moving past
    /// unreachable masters until it gets an answer or `retry_timeout` has passed (see the module
    /// overview). `rpc` makes one attempt on a master, e.g.
    /// `|mut master, request| async move { master.revive(request).await }`.
    pub async fn call<Req, Resp, F, Fut>(
        &self,
        request: Req,
        rpc: F,
    ) -> Result<Resp, MasterCallError>
    where
        Req: SignedRequest + Clone,
        F: Fn(MasterClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let options = &self.shared.options;
        let started = Instant::now();
        let mut backoff = BACKOFF_FIRST;
        let mut redirected = false;
        loop {
            let (index, addr, client) = self.pick();
            let signed = self
                .request(request.clone())
                .map_err(|status| MasterCallError {
                    addr: addr.clone(),
                    status,
                })?;
            let status = match tokio::time::timeout(options.call_timeout, rpc(client, signed)).await
            {
                Ok(Ok(response)) => {
                    self.state().nodes[index].failed_at = None;
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => status,
                Err(_) => tonic::Status::deadline_exceeded(format!(
                    "no answer within {:?}",
                    options.call_timeout
                )),
            };
            let outcome = classify(&status);
            if status.source().is_some() || status.code() == tonic::Code::DeadlineExceeded {
                self.state().nodes[index].failed_at = Some(Instant::now());
            }
            tracing::debug!(master = %addr, code = ?status.code(), error = %status.message(), ?outcome, "master call failed");
            let wait = match outcome {
                Outcome::Return => return Err(MasterCallError { addr, status }),
                Outcome::Redirect(leader) if self.redirect(index, &leader) => {
                    // Follow a redirect at once, but back off on a chain of them: masters that
                    // disagree about the leader (a term just changed) settle meanwhile.
                    if std::mem::replace(&mut redirected, true) {
                        next_backoff(&mut backoff)
                    } else {
                        Duration::ZERO
                    }
                }
                Outcome::Redirect(_) | Outcome::TryNext => {
                    redirected = false;
                    self.advance(index);
                    next_backoff(&mut backoff)
                }
            };
            if started.elapsed() + wait > options.retry_timeout {
                return Err(self.gave_up(&addr, status, started.elapsed()));
            }
            tokio::time::sleep(wait).await;
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The endpoint to try, its address and a client of it.
    fn pick(&self) -> (usize, String, MasterClient<Channel>) {
        let mut state = self.state();
        let index = state.leader;
        let node = &mut state.nodes[index];
        (index, node.addr.clone(), node.client(&self.shared.options))
    }

    /// Moves past endpoint `index`, unless another call has already moved on.
    fn advance(&self, index: usize) {
        let mut state = self.state();
        if state.leader != index {
            return;
        }
        // The next endpoint that did not just fail, or simply the next one.
        let n = state.nodes.len();
        let next = (1..=n)
            .map(|step| (index + step) % n)
            .find(|i| {
                state.nodes[*i]
                    .failed_at
                    .is_none_or(|at| at.elapsed() >= SUSPECT_FOR)
            })
            .unwrap_or((index + 1) % n);
        state.leader = next;
    }

    /// Makes `leader`, as named by endpoint `index`, the endpoint to try next, adding it when
    /// unknown. False when the hint is unusable (malformed, or the endpoint named itself).
    fn redirect(&self, index: usize, leader: &str) -> bool {
        let mut state = self.state();
        let position = match state.nodes.iter().position(|n| n.addr == leader) {
            Some(position) => position,
            None => match Node::new(leader) {
                Ok(node) => {
                    tracing::info!(master = %leader, "a master named a leader that is not configured; adding it");
                    state.nodes.push(node);
                    state.nodes.len() - 1
                }
                Err(problem) => {
                    tracing::warn!(hint = %leader, problem, "a master named an unusable leader address");
                    return false;
                }
            },
        };
        let suspect = state.nodes[position]
            .failed_at
            .is_some_and(|at| at.elapsed() < SUSPECT_FOR);
        if position == index || suspect {
            return false;
        }
        if state.leader != position {
            tracing::info!(from = %state.nodes[index].addr, leader = %leader, "following the master leader");
            state.leader = position;
        }
        true
    }

    fn gave_up(&self, last: &str, status: tonic::Status, elapsed: Duration) -> MasterCallError {
        let message = format!(
            "no master served the call within {elapsed:.1?}; last, from {last}: {}",
            status.message()
        );
        MasterCallError {
            addr: self.endpoints().join(","),
            status: tonic::Status::new(status.code(), message),
        }
    }
}

fn next_backoff(backoff: &mut Duration) -> Duration {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    wait
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_lists_are_trimmed_and_deduplicated() {
        assert_eq!(
            parse_endpoints(" m1:9097 ,m2:9097,m1:9097, 10.0.0.3:1,[::1]:9097").unwrap(),
            vec!["m1:9097", "m2:9097", "10.0.0.3:1", "[::1]:9097"]
        );
        assert_eq!(parse_endpoints("m1:9097").unwrap(), vec!["m1:9097"]);
    }

    #[test]
    fn bad_entries_are_errors_naming_them() {
        for (list, entry) in [
            ("", ""),
            ("m1:1,,m2:2", ""),
            ("m1:1,", ""),
            ("m1:1,m2", "m2"),
            ("m1:1,:9097", ":9097"),
            ("m1:0", "m1:0"),
            ("m1:70000", "m1:70000"),
            ("m1:port", "m1:port"),
            ("http://m1:1", "http://m1:1"),
            ("m1 m2:1", "m1 m2:1"),
        ] {
            let error = parse_endpoints(list).unwrap_err();
            assert_eq!(error.entry, entry, "{list:?}: {error}");
            assert!(error.to_string().contains(&format!("{entry:?}")), "{error}");
        }
        assert!(MasterChannel::new("m1:1,nope", MasterOptions::default()).is_err());
    }

    #[test]
    fn calls_start_at_the_first_endpoint_and_move_on_in_order() {
        let masters = MasterChannel::new("m1:1,m2:2,m3:3", MasterOptions::default()).unwrap();
        assert_eq!(masters.leader(), "m1:1");
        masters.advance(0);
        assert_eq!(masters.leader(), "m2:2");
        // A second caller that also failed on m1 does not skip m2.
        masters.advance(0);
        assert_eq!(masters.leader(), "m2:2");
        masters.advance(1);
        masters.advance(2);
        assert_eq!(masters.leader(), "m1:1");
    }

    #[test]
    fn redirects_go_to_the_named_leader_and_add_a_replaced_master() {
        let masters = MasterChannel::new("m1:1,m2:2,m3:3", MasterOptions::default()).unwrap();
        assert!(masters.redirect(0, "m3:3"));
        assert_eq!(masters.leader(), "m3:3");
        assert!(masters.redirect(2, "m4:4"));
        assert_eq!(masters.leader(), "m4:4");
        assert_eq!(masters.endpoints(), vec!["m1:1", "m2:2", "m3:3", "m4:4"]);
        // Unusable hints: malformed, or the answering master naming itself.
        assert!(!masters.redirect(3, "not an address"));
        assert!(!masters.redirect(3, "m4:4"));
        assert_eq!(masters.endpoints().len(), 4);
        // Past the last endpoint comes the first again.
        masters.advance(3);
        assert_eq!(masters.leader(), "m1:1");
    }

    #[test]
    fn statuses_are_retried_only_when_a_master_was_unreachable_or_not_leading() {
        let mut redirect = tonic::Status::unavailable("master 2 is not the leader");
        redirect
            .metadata_mut()
            .insert(LEADER_METADATA, "m3:3".parse().unwrap());
        assert_eq!(classify(&redirect), Outcome::Redirect("m3:3".into()));
        let election = tonic::Status::unavailable("master 2 is not the leader (no leader known)");
        assert_eq!(classify(&election), Outcome::TryNext);
        assert_eq!(
            classify(&tonic::Status::deadline_exceeded("slow")),
            Outcome::TryNext
        );
        // A transport failure made on this side, whatever its code.
        let reset = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "transport error",
        )));
        assert_eq!(reset.code(), tonic::Code::Unknown);
        assert_eq!(classify(&reset), Outcome::TryNext);
        for status in [
            tonic::Status::not_found("shuffle app-1/0 is not registered"),
            tonic::Status::invalid_argument("bad"),
            tonic::Status::failed_precondition("committed"),
            tonic::Status::resource_exhausted("too many shuffles"),
            tonic::Status::unknown("a server-side failure"),
        ] {
            assert_eq!(classify(&status), Outcome::Return, "{status:?}");
        }
    }

    #[tokio::test]
    async fn a_dead_master_list_gives_up_within_the_retry_timeout_naming_every_endpoint() {
        // Ports 1 and 2 on loopback refuse at once: no server is involved.
        let options = MasterOptions {
            retry_timeout: Duration::from_millis(300),
            ..MasterOptions::default()
        };
        let masters = MasterChannel::new("127.0.0.1:1,127.0.0.1:2", options).unwrap();
        let started = Instant::now();
        let error = masters
            .call(
                crate::pb::ClusterStatusRequest {},
                |mut master, request| async move { master.cluster_status(request).await },
            )
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(error.addr, "127.0.0.1:1,127.0.0.1:2");
        assert_eq!(error.status.code(), tonic::Code::Unavailable, "{error}");
    }
}
