//! A fault-injecting TCP proxy on loopback.
//!
//! The proxy listens on its own port and forwards every connection to a target. On
//! [`Proxy::cut`] it closes every forwarded connection at once and from then on accepts new
//! connections but never forwards or answers them (a blackhole: the peer sees a silent
//! network, not a refusal, so only its timeouts save it). [`Proxy::heal`] forwards again.
//! Dropping the proxy stops every task it started.
//!
//! The target can be given later ([`Proxy::retarget`]): a worker behind the proxy binds port 0
//! and the harness learns its port once it runs, and again after each restart. Connections
//! that arrive before a target is known wait for one.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Whether the proxy forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    Cut,
}

#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    link: watch::Sender<Link>,
    target: watch::Sender<Option<SocketAddr>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Binds `127.0.0.1:0` and forwards to `target` (which need not listen yet; `None`: not
    /// known yet, see [`Proxy::retarget`]).
    pub async fn start(target: Option<SocketAddr>) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (link, link_watch) = watch::channel(Link::Up);
        let (target, target_watch) = watch::channel(target);
        let accept = tokio::spawn(accept_loop(listener, target_watch, link_watch));
        Ok(Proxy {
            addr,
            link,
            target,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Forwards new connections to `target` from now on.
    pub fn retarget(&self, target: SocketAddr) {
        self.target.send_replace(Some(target));
    }

    /// Drops every connection and blackholes new ones.
    pub fn cut(&self) {
        self.link.send_replace(Link::Cut);
    }

    /// Forwards new connections again (blackholed ones are closed).
    pub fn heal(&self) {
        self.link.send_replace(Link::Up);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Connection tasks end when the sender goes away; the accept loop is stopped here.
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: watch::Receiver<Option<SocketAddr>>,
    link: watch::Receiver<Link>,
) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            // Out of descriptors or similar: back off rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let link = link.clone();
        if *link.borrow() == Link::Cut {
            tokio::spawn(blackhole(socket, link));
        } else {
            tokio::spawn(forward(socket, target.clone(), link));
        }
    }
}

/// Reads and discards until the link comes back (or the proxy is dropped), then closes.
async fn blackhole(mut socket: TcpStream, mut link: watch::Receiver<Link>) {
    let mut sink = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            _ = link.wait_for(|l| *l == Link::Up) => return,
            read = socket.read(&mut sink) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}

async fn forward(
    mut client: TcpStream,
    mut target: watch::Receiver<Option<SocketAddr>>,
    mut link: watch::Receiver<Link>,
) {
    let connect = async {
        let target = (*target.wait_for(Option::is_some).await.ok()?)?;
        TcpStream::connect(target).await.ok()
    };
    let connect = tokio::time::timeout(Duration::from_secs(5), connect);
    let mut server = tokio::select! {
        _ = link.wait_for(|l| *l == Link::Cut) => return,
        connected = connect => match connected {
            Ok(Some(server)) => server,
            _ => return,
        },
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        // Cut (or the proxy is gone): both sockets are dropped, i.e. closed.
        _ = link.wait_for(|l| *l == Link::Cut) => {}
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream) -> std::io::Result<[u8; 4]> {
        stream.write_all(b"ping").await?;
        let mut answer = [0u8; 4];
        stream.read_exact(&mut answer).await?;
        Ok(answer)
    }

    #[tokio::test]
    async fn forwards_cuts_blackholes_and_heals() {
        let proxy = Proxy::start(Some(echo_server().await)).await.unwrap();
        let mut before = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(&round_trip(&mut before).await.unwrap(), b"ping");

        proxy.cut();
        // The open connection is closed...
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), before.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        // ...and a new one is accepted but never answered.
        let mut during = TcpStream::connect(proxy.addr()).await.unwrap();
        let silent =
            tokio::time::timeout(Duration::from_millis(300), round_trip(&mut during)).await;
        assert!(silent.is_err(), "a cut proxy answered");

        proxy.heal();
        let mut after = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(&round_trip(&mut after).await.unwrap(), b"ping");
    }

    /// A server that greets every connection with `greeting`.
    async fn greeter(greeting: &'static [u8; 4]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let _ = socket.write_all(greeting).await;
            }
        });
        addr
    }

    async fn greeting(stream: &mut TcpStream) -> [u8; 4] {
        let mut greeting = [0u8; 4];
        stream.read_exact(&mut greeting).await.unwrap();
        greeting
    }

    #[tokio::test]
    async fn a_connection_waits_for_the_target_and_follows_a_retarget() {
        let proxy = Proxy::start(None).await.unwrap();
        let mut early = TcpStream::connect(proxy.addr()).await.unwrap();
        proxy.retarget(greeter(b"one ").await);
        assert_eq!(&greeting(&mut early).await, b"one ");
        proxy.retarget(greeter(b"two ").await);
        let mut late = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(&greeting(&mut late).await, b"two ");
    }
}
