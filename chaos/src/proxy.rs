//! A fault-injecting TCP proxy on loopback.
//!
//! The proxy listens on its own port and forwards every connection to a target. On
//! [`Proxy::cut`] it closes every forwarded connection at once and from then on accepts new
//! connections but never forwards or answers them (a blackhole: the peer sees a silent
//! network, not a refusal, so only its timeouts save it). [`Proxy::heal`] forwards again.
//! Dropping the proxy stops every task it started.

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
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Binds `127.0.0.1:0` and forwards to `target` (which need not listen yet).
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (link, watch) = watch::channel(Link::Up);
        let accept = tokio::spawn(accept_loop(listener, target, watch));
        Ok(Proxy { addr, link, accept })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
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

async fn accept_loop(listener: TcpListener, target: SocketAddr, link: watch::Receiver<Link>) {
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
            tokio::spawn(forward(socket, target, link));
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

async fn forward(mut client: TcpStream, target: SocketAddr, mut link: watch::Receiver<Link>) {
    let connect = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target));
    let mut server = tokio::select! {
        _ = link.wait_for(|l| *l == Link::Cut) => return,
        connected = connect => match connected {
            Ok(Ok(server)) => server,
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
        let proxy = Proxy::start(echo_server().await).await.unwrap();
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
}
