//! One connection type for plain TCP and TLS, both sides: [`Stream`], and its halves
//! ([`ReadHalf`], [`WriteHalf`]) for a connection read by one task and written by another.
//!
//! A plain stream splits into tokio's owned TCP halves (no lock between them), and its write
//! half still exposes the socket ([`WriteHalf::as_tcp`]) so a worker can `sendfile` chunks on
//! it. A TLS stream splits through a shared lock (one rustls session serves both directions);
//! every byte goes through rustls, so there is no socket to `sendfile` to.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Implements `AsyncRead` and/or `AsyncWrite` for an enum whose variants each hold an I/O
/// object, by handing every call to the variant's.
macro_rules! delegate_io {
    ($ty:ident: $($variant:ident),+) => {
        delegate_io!(read $ty: $($variant),+);
        delegate_io!(write $ty: $($variant),+);
    };
    (read $ty:ident: $($variant:ident),+) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(io) => Pin::new(io).poll_read(cx, buf),)+
                }
            }
        }
    };
    (write $ty:ident: $($variant:ident),+) => {
        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($ty::$variant(io) => Pin::new(io).poll_write(cx, buf),)+
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($ty::$variant(io) => Pin::new(io).poll_write_vectored(cx, bufs),)+
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $($ty::$variant(io) => io.is_write_vectored(),)+
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(io) => Pin::new(io).poll_flush(cx),)+
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(io) => Pin::new(io).poll_shutdown(cx),)+
                }
            }
        }
    };
}

/// A connection: plain TCP, or TLS on TCP as the server or the client.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Server(tls) => tls.get_ref().0,
            Stream::Client(tls) => tls.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// The certificate chain the peer presented (a TLS client sees the server's), leaf first.
    pub fn peer_certificates(&self) -> Option<&[rustls_pki_types::CertificateDer<'static>]> {
        match self {
            Stream::Plain(_) => None,
            Stream::Server(tls) => tls.get_ref().1.peer_certificates(),
            Stream::Client(tls) => tls.get_ref().1.peer_certificates(),
        }
    }

    /// Splits the connection into halves for a reading task and a writing task.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(tcp) => {
                let (read, write) = tcp.into_split();
                (ReadHalf::Plain(read), WriteHalf::Plain(write))
            }
            tls => {
                let (read, write) = tokio::io::split(tls);
                (ReadHalf::Tls(read), WriteHalf::Tls(write))
            }
        }
    }
}

impl From<TcpStream> for Stream {
    fn from(tcp: TcpStream) -> Stream {
        Stream::Plain(tcp)
    }
}

delegate_io!(Stream: Plain, Server, Client);

/// gRPC servers read the peer's address from this (`Request::remote_addr`).
impl tonic::transport::server::Connected for Stream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: self.tcp().local_addr().ok(),
            remote_addr: self.tcp().peer_addr().ok(),
        }
    }
}

/// The reading half of a [`Stream`].
#[derive(Debug)]
pub enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<Stream>),
}

/// The writing half of a [`Stream`].
#[derive(Debug)]
pub enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Stream>),
}

impl WriteHalf {
    /// The socket, when the connection is plain TCP (bytes written to it go to the peer as
    /// they are, e.g. with `sendfile`); `None` under TLS.
    pub fn as_tcp(&self) -> Option<&TcpStream> {
        match self {
            WriteHalf::Plain(write) => Some(write.as_ref()),
            WriteHalf::Tls(_) => None,
        }
    }
}

delegate_io!(read ReadHalf: Plain, Tls);
delegate_io!(write WriteHalf: Plain, Tls);
