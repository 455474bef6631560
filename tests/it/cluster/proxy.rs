//! A userspace TCP proxy on loopback between one replica and PostgreSQL, to partition that link
//! without root: `cut` blackholes it (bytes stop flowing both ways, sockets stay open — what a
//! dropped route looks like to both ends: no error, only silence), `reset` closes every
//! connection and refuses new ones, `restore` heals it (blackholed connections resume, as after
//! a partition).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The state of the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Open,
    /// Nothing is forwarded; connections stay open (new ones are accepted and held).
    Blackhole,
    /// Every connection is closed; new ones are closed right after accept.
    Reset,
}

pub struct Proxy {
    pub addr: SocketAddr,
    link: watch::Sender<Link>,
    /// Connections accepted so far (a replica reconnecting shows here).
    pub accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (link, watcher) = watch::channel(Link::Open);
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                if *watcher.borrow() == Link::Reset {
                    continue; // dropped: closed at once
                }
                tokio::spawn(connection(client, upstream, watcher.clone()));
            }
        });
        Proxy { addr, link, accepted, task }
    }

    pub fn cut(&self) {
        self.link.send_replace(Link::Blackhole);
    }

    pub fn reset(&self) {
        self.link.send_replace(Link::Reset);
    }

    pub fn restore(&self) {
        self.link.send_replace(Link::Open);
    }

    /// `url` (a PostgreSQL URL on loopback) with its port replaced by the proxy's.
    pub fn postgres_url(&self, url: &str) -> String {
        let (scheme_user, rest) = url.split_once('@').expect("URL has user@host");
        let (_, path) = rest.split_once('/').expect("URL has /DATABASE");
        format!("{scheme_user}@{}/{path}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.link.send_replace(Link::Reset);
        self.task.abort();
    }
}

/// Waits while the link is blackholed; false once it is reset (or the proxy is gone).
async fn passable(link: &mut watch::Receiver<Link>) -> bool {
    loop {
        match *link.borrow_and_update() {
            Link::Open => return true,
            Link::Reset => return false,
            Link::Blackhole => {}
        }
        if link.changed().await.is_err() {
            return false;
        }
    }
}

async fn connection(client: TcpStream, upstream: SocketAddr, mut link: watch::Receiver<Link>) {
    // A blackholed link does not even let the connection through to the server.
    if !passable(&mut link).await {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(pump(client_read, server_write, link.clone()), pump(server_read, client_write, link));
}

/// Copies one direction while the link is open; stops on EOF, error or reset.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut link: watch::Receiver<Link>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if !passable(&mut link).await {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            changed = link.changed() => {
                if changed.is_err() { return }
                continue;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // Bytes read just as the link was cut are held until it heals (or dropped on reset).
        if !passable(&mut link).await {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
