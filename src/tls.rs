//! TLS for the listeners (rustls): a certificate and key per listener, optional client
//! certificate verification (mTLS) against a CA bundle, and reload without a restart — the
//! files are checked every `reload_interval`, and a changed set that loads replaces the
//! configuration for new connections (one that does not load is logged and the old one stays).
//!
//! The accept loop completes each handshake in its own task (bounded by a timeout, so a client
//! that never finishes cannot hold a listener) and hands finished streams to tonic or axum.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// A TLS handshake that has not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a TLS configuration cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Rustls(String),
}

/// Where a listener's certificate, key and (for mTLS) client CA bundle are.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate it signed (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for changes. Default `10s`.
    #[serde(default = "default_reload", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_reload() -> Duration {
    Duration::from_secs(10)
}

fn file_error(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File { path: path.display().to_string(), message: message.to_string() }
}

/// Reads the PEM certificates of a file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| file_error(path, e))?.collect::<Result<Vec<_>, _>>().map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// Builds the server configuration from the files (ALPN h2 and http/1.1).
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_error(&files.key, e))?;
    let builder = ServerConfig::builder();
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|e| file_error(ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots)).build().map_err(|e| file_error(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| TlsError::Rustls(format!("{}: {e}", files.cert.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The current configuration of one listener, replaced when its files change.
#[derive(Clone)]
pub struct Reloading {
    files: TlsFiles,
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

fn stamps(files: &TlsFiles) -> Vec<Option<(SystemTime, u64)>> {
    [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
        .collect()
}

impl Reloading {
    /// Loads the files now (an error refuses to start).
    pub fn new(files: TlsFiles) -> Result<Reloading, TlsError> {
        let config = load(&files)?;
        Ok(Reloading { files, current: Arc::new(RwLock::new(config)) })
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Checks the files every `reload_interval` until `stop`; reloads when one changed.
    pub async fn watch(self, what: &'static str, stop: CancellationToken) {
        let mut seen = stamps(&self.files);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.files.reload_interval) => {}
                _ = stop.cancelled() => return,
            }
            let now = stamps(&self.files);
            if now == seen {
                continue;
            }
            match load(&self.files) {
                Ok(config) => {
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
                    seen = now;
                    tracing::info!(listener = what, cert = %self.files.cert.display(), "TLS certificate reloaded");
                }
                // Half-written files (cert replaced, key not yet): tried again next interval.
                Err(e) => tracing::error!(listener = what, error = %e, "cannot reload the TLS certificate; the previous one stays"),
            }
        }
    }
}

/// One accepted TLS connection.
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    remote: SocketAddr,
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = SocketAddr;
    fn connect_info(&self) -> SocketAddr {
        self.remote
    }
}

/// Accepts TCP connections and completes TLS handshakes until `stop`; finished connections
/// come out of the returned [`TlsListener`].
pub fn accept(listener: TcpListener, tls: Reloading, what: &'static str, stop: CancellationToken) -> TlsListener {
    let local = listener.local_addr().ok();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(listener = what, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(TlsConn { stream, remote }).await;
                    }
                    Ok(Err(e)) => tracing::debug!(listener = what, %remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(listener = what, %remote, "TLS handshake timed out"),
                }
            });
        }
    });
    TlsListener { rx, local }
}

/// Finished TLS connections, for `axum::serve` (a [`axum::serve::Listener`]) or tonic
/// ([`TlsListener::into_stream`]).
pub struct TlsListener {
    rx: mpsc::Receiver<TlsConn>,
    local: Option<SocketAddr>,
}

impl TlsListener {
    pub fn into_stream(self) -> impl tokio_stream::Stream<Item = Result<TlsConn, std::io::Error>> {
        tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(self.rx), Ok)
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TlsConn, SocketAddr) {
        match self.rx.recv().await {
            Some(conn) => {
                let remote = conn.remote;
                (conn, remote)
            }
            // The accept loop stopped (shutdown): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.local.ok_or_else(|| std::io::Error::other("no local address"))
    }
}
