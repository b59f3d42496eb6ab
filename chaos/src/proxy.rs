//! A fault-injecting TCP proxy on loopback.
//!
//! The proxy listens on its own port and forwards every connection to a target. On
//! [`Proxy::cut`] it closes every forwarded connection at once and from then on accepts new
//! connections but never forwards or answers them (a blackhole: the peer sees a silent
//! network, not a refusal, so only its timeouts save it). [`Proxy::heal`] forwards again.
//! Dropping the proxy stops every task it started.
//!
//! Short of a cut, [`Proxy::shape`] makes the link sick instead of dead: added latency with
//! jitter, a bandwidth cap, stalls of a few seconds that then resume, and a reset (RST) in the
//! middle of the byte stream, hence in the middle of a frame. Delays come from a generator
//! seeded per proxy, connection and direction, so a run with the same seed injects the same
//! faults.
//!
//! The target can be given later ([`Proxy::retarget`]): a worker behind the proxy binds port 0
//! and the harness learns its port once it runs, and again after each restart. Connections
//! that arrive before a target is known wait for one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Whether the proxy forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    Cut,
}

/// How a link misbehaves while it is up. The default forwards as fast as it can.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// Added to every piece of data, each way.
    pub latency: Duration,
    /// Up to this much more per piece, drawn uniformly; order is kept (a piece never overtakes
    /// the one before it), as on a real path.
    pub jitter: Duration,
    /// Bytes per second, each way; 0: no cap.
    pub bandwidth: u64,
    /// After every `stall_every` of a connection's life, nothing moves for `stall_for`, then
    /// everything queued moves on. Zero `stall_every`: no stalls.
    pub stall_every: Duration,
    pub stall_for: Duration,
    /// Resets a connection (RST, both sides) once this many bytes went from the client to the
    /// target; 0: never.
    pub reset_after: u64,
    /// Seeds the jitter.
    pub seed: u64,
}

impl Shape {
    fn is_clean(&self) -> bool {
        *self
            == Shape {
                seed: self.seed,
                ..Shape::default()
            }
    }
}

/// What a shaped proxy did to the traffic so far, so a scenario can tell its fault happened.
#[derive(Debug, Default)]
pub struct Injected {
    /// Pieces of data held back by a stall.
    pub stalled: AtomicU64,
    /// Connections reset mid-stream.
    pub resets: AtomicU64,
    /// Pieces of data delivered late (latency, jitter or the bandwidth cap).
    pub delayed: AtomicU64,
}

impl Injected {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `(stalled, resets, delayed)` so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.stalled.load(Ordering::Relaxed),
            self.resets.load(Ordering::Relaxed),
            self.delayed.load(Ordering::Relaxed),
        )
    }
}

#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    link: watch::Sender<Link>,
    target: watch::Sender<Option<SocketAddr>>,
    shape: watch::Sender<Shape>,
    injected: Arc<Injected>,
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
        let (shape, shape_watch) = watch::channel(Shape::default());
        let injected = Arc::new(Injected::default());
        let accept = tokio::spawn(accept_loop(
            listener,
            target_watch,
            link_watch,
            shape_watch,
            injected.clone(),
        ));
        Ok(Proxy {
            addr,
            link,
            target,
            shape,
            injected,
            accept,
        })
    }

    /// What the proxy's shape did to the traffic so far.
    pub fn injected(&self) -> &Injected {
        &self.injected
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

    /// Shapes the link from now on: connections opened later, and the data still to move on
    /// open ones. A reset threshold counts a connection's upstream bytes from when it was
    /// shaped, and only connections opened while it is set close with RST. `Shape::default()`
    /// cleans the link.
    pub fn shape(&self, shape: Shape) {
        self.shape.send_replace(shape);
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
    shape: watch::Receiver<Shape>,
    injected: Arc<Injected>,
) {
    let mut connections = 0u64;
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
            connections += 1;
            tokio::spawn(forward(
                socket,
                target.clone(),
                link,
                shape.clone(),
                connections,
                injected.clone(),
            ));
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
    shape: watch::Receiver<Shape>,
    connection: u64,
    injected: Arc<Injected>,
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
    if shape.borrow().is_clean() && !shape.has_changed().unwrap_or(false) {
        // The common case forwards without queues, until a shape is set.
        let mut shaped = shape.clone();
        tokio::select! {
            // Cut (or the proxy is gone): both sockets are dropped, i.e. closed.
            _ = link.wait_for(|l| *l == Link::Cut) => return,
            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
            _ = shaped.changed() => {}
        }
    }
    // Shaped: a pump each way. A connection that may be reset closes with SO_LINGER 0, which
    // sends RST instead of FIN.
    if shape.borrow().reset_after > 0 {
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
    let started = Instant::now();
    let (reset, reset_watch) = watch::channel(false);
    // (tokio::io::split, not into_split: an owned write half sends FIN when dropped, and a reset
    // must close with nothing but RST.)
    let (client_read, client_write) = tokio::io::split(client);
    let (server_read, server_write) = tokio::io::split(server);
    let shaped = Shaped {
        shape: shape.clone(),
        started,
        injected: &injected,
    };
    let up = pump(
        client_read,
        server_write,
        &shaped,
        seed(&shape, connection, 0),
        Some(&reset),
        reset_watch.clone(),
    );
    let down = pump(
        server_read,
        client_write,
        &shaped,
        seed(&shape, connection, 1),
        None,
        reset_watch,
    );
    tokio::select! {
        _ = link.wait_for(|l| *l == Link::Cut) => {}
        _ = async { tokio::join!(up, down) } => {}
    }
}

fn seed(shape: &watch::Receiver<Shape>, connection: u64, direction: u64) -> u64 {
    let base = shape.borrow().seed;
    // Distinct, non-zero streams per connection and direction (xorshift never leaves 0).
    (base ^ connection.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (direction << 63)) | 1
}

/// xorshift64*: a small deterministic generator for jitter.
#[derive(Debug, Clone)]
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, max]`.
    fn draw(&mut self, max: Duration) -> Duration {
        let nanos = max.as_nanos() as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.next() % (nanos + 1))
    }
}

/// When a piece read at `now` may be delivered, given the one before it.
fn due(shape: &Shape, jitter: &mut Jitter, now: Instant, previous: Instant) -> Instant {
    (now + shape.latency + jitter.draw(shape.jitter)).max(previous)
}

/// The end of the stall `at` falls in, if it falls in one.
fn stalled_until(shape: &Shape, started: Instant, at: Instant) -> Option<Instant> {
    if shape.stall_every.is_zero() || shape.stall_for.is_zero() {
        return None;
    }
    let period = shape.stall_every + shape.stall_for;
    let into = at.saturating_duration_since(started).as_nanos() % period.as_nanos();
    let into = Duration::from_nanos(into as u64);
    (into >= shape.stall_every).then(|| at + (period - into))
}

/// What both pumps of a shaped connection share: the shape, when the connection was shaped (its
/// stalls count from then) and the proxy's counters.
struct Shaped<'a> {
    shape: watch::Receiver<Shape>,
    started: Instant,
    injected: &'a Injected,
}

/// Moves bytes one way: a reader stamps each piece with its due time, a writer delivers it
/// then, within the bandwidth cap and outside stalls. At most 64 pieces of 64 KiB wait, so a
/// slow link pushes back on the sender as a real one does. The upstream pump (`resetter`)
/// counts the bytes it moves and, past the shape's threshold, delivers only up to it and
/// resets the connection: both pumps stop, and their sockets close with RST.
async fn pump(
    mut from: ReadHalf<TcpStream>,
    mut to: WriteHalf<TcpStream>,
    shaped: &Shaped<'_>,
    seed: u64,
    resetter: Option<&watch::Sender<bool>>,
    mut reset: watch::Receiver<bool>,
) {
    let Shaped {
        shape,
        started,
        injected,
    } = shaped;
    let (shape, started, injected) = (shape.clone(), *started, *injected);
    let (queue, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let reader_shape = shape.clone();
    let reader = async move {
        let mut jitter = Jitter(seed);
        let mut previous = Instant::now();
        loop {
            let mut piece = vec![0u8; 64 * 1024];
            match from.read(&mut piece).await {
                Ok(0) | Err(_) => return,
                Ok(n) => piece.truncate(n),
            }
            let shape = *reader_shape.borrow();
            previous = due(&shape, &mut jitter, Instant::now(), previous);
            if queue.send((previous, piece)).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        let mut free_at = Instant::now();
        let mut moved = 0u64;
        while let Some((due_at, piece)) = queued.recv().await {
            let mut late = due_at > Instant::now();
            tokio::time::sleep_until(due_at).await;
            let shape = *shape.borrow();
            if shape.bandwidth > 0 {
                let cost = Duration::from_secs_f64(piece.len() as f64 / shape.bandwidth as f64);
                free_at = free_at.max(Instant::now()) + cost;
                late |= free_at > Instant::now();
                tokio::time::sleep_until(free_at).await;
            }
            if late {
                Injected::add(&injected.delayed);
            }
            if let Some(until) = stalled_until(&shape, started, Instant::now()) {
                Injected::add(&injected.stalled);
                tokio::time::sleep_until(until).await;
            }
            if let (Some(resetter), true) = (resetter, shape.reset_after > 0) {
                let allowed = shape.reset_after.saturating_sub(moved);
                if piece.len() as u64 >= allowed {
                    // The peer gets a frame cut short, then a reset.
                    let _ = to.write_all(&piece[..allowed as usize]).await;
                    Injected::add(&injected.resets);
                    resetter.send_replace(true);
                    return;
                }
            }
            moved += piece.len() as u64;
            if to.write_all(&piece).await.is_err() {
                return;
            }
        }
        // The sender closed its side: pass the close on.
        let _ = to.shutdown().await;
    };
    tokio::select! {
        _ = writer => {}
        _ = reset.wait_for(|r| *r) => {}
        // The reader ending closes the queue; the writer then drains it and ends.
        _ = async { reader.await; std::future::pending::<()>().await } => {}
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

    /// Round trips of `size` bytes through an echo server behind a shaped proxy.
    async fn shaped_echo(shape: Shape) -> (Proxy, TcpStream) {
        let proxy = Proxy::start(Some(echo_server().await)).await.unwrap();
        proxy.shape(shape);
        let stream = TcpStream::connect(proxy.addr()).await.unwrap();
        (proxy, stream)
    }

    async fn echo_bytes(stream: &mut TcpStream, size: usize) -> std::io::Result<Duration> {
        let started = Instant::now();
        let data = vec![7u8; size];
        let (mut r, mut w) = stream.split();
        let write = w.write_all(&data);
        let mut back = vec![0u8; size];
        let read = r.read_exact(&mut back);
        let (written, read) = tokio::join!(write, read);
        written?;
        read?;
        Ok(started.elapsed())
    }

    #[tokio::test]
    async fn latency_and_jitter_delay_each_way() {
        let (_proxy, mut stream) = shaped_echo(Shape {
            latency: Duration::from_millis(40),
            jitter: Duration::from_millis(20),
            seed: 1,
            ..Shape::default()
        })
        .await;
        for _ in 0..3 {
            let took = echo_bytes(&mut stream, 4).await.unwrap();
            // 40 ms each way, plus up to 20 ms of jitter each way.
            assert!(took >= Duration::from_millis(80), "{took:?}");
            assert!(took < Duration::from_millis(1000), "{took:?}");
        }
    }

    #[tokio::test]
    async fn bandwidth_is_capped() {
        let (_proxy, mut stream) = shaped_echo(Shape {
            bandwidth: 1 << 20,
            ..Shape::default()
        })
        .await;
        // 512 KiB each way at 1 MiB/s: half a second one way, the two ways overlapping.
        let took = echo_bytes(&mut stream, 512 * 1024).await.unwrap();
        assert!(took >= Duration::from_millis(450), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[tokio::test]
    async fn a_stalled_link_resumes_with_nothing_lost() {
        let (proxy, mut stream) = shaped_echo(Shape {
            stall_every: Duration::from_millis(100),
            stall_for: Duration::from_millis(400),
            ..Shape::default()
        })
        .await;
        let mut slowest = Duration::ZERO;
        for _ in 0..12 {
            slowest = slowest.max(echo_bytes(&mut stream, 1000).await.unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            slowest >= Duration::from_millis(250),
            "no stall seen: {slowest:?}"
        );
        let (stalled, resets, _) = proxy.injected().counts();
        assert!(
            stalled > 0 && resets == 0,
            "{stalled} stalled, {resets} resets"
        );
    }

    #[tokio::test]
    async fn a_reset_cuts_the_stream_at_the_threshold() {
        let proxy = Proxy::start(None).await.unwrap();
        // A server that counts what it receives before the connection dies.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        proxy.retarget(listener.local_addr().unwrap());
        proxy.shape(Shape {
            reset_after: 1000,
            ..Shape::default()
        });
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let _ = client.write_all(&[1u8; 4000]).await;
        let mut received = 0;
        let mut buf = [0u8; 8192];
        let ended = loop {
            match tokio::time::timeout(Duration::from_secs(5), server.read(&mut buf)).await {
                Ok(Ok(0)) => break "eof",
                Ok(Ok(n)) => received += n,
                Ok(Err(_)) => break "reset",
                Err(_) => break "timeout",
            }
        };
        assert_eq!(received, 1000);
        assert_eq!(ended, "reset");
        assert_eq!(proxy.injected().counts().1, 1);
        // The client's side is reset too.
        let mut one = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut one)).await;
        assert!(matches!(read, Ok(Err(_)) | Ok(Ok(0))), "{read:?}");
    }

    #[test]
    fn jitter_is_the_same_for_the_same_seed() {
        let draws = |seed| {
            let mut jitter = Jitter(seed);
            (0..5)
                .map(|_| jitter.draw(Duration::from_millis(20)))
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
        assert!(draws(7).iter().all(|d| *d <= Duration::from_millis(20)));
    }
}
