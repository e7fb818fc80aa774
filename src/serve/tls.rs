//! TLS termination for `telbase serve` (`--tls-cert`/`--tls-key`): rustls with the ring
//! provider the crate already uses for its clients, TLS 1.3 and 1.2 only, HTTP/1.1 over it.
//! This module owns the certificate in use and its reloading: the files are read again when
//! their size, modification time or contents change (checked every few seconds) or on
//! SIGHUP, and a new pair takes effect for new connections at once. A pair that does not
//! parse, or whose key does not match the certificate, is refused with an error in the log,
//! and the previous pair stays in use.
//!
//! Handshakes run on their own tasks (bounded in number and time), so one slow or hostile
//! client cannot hold up the accept loop; finished connections are handed to `axum::serve`
//! through [`TlsListener`], so the routes, connection info and graceful shutdown are the same
//! as over plain HTTP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use sha2::Digest as _;
use tokio::net::{TcpListener, TcpStream};

/// Where the certificate chain and key are, and how often to look for changes.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM: the server's certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) private key.
    pub key: PathBuf,
    /// How often the files are checked for changes.
    pub reload_every: Duration,
}

/// Why a certificate pair was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(String),
    #[error("{path} is not a PEM certificate chain: {error}")]
    BadCertificate { path: String, error: String },
    #[error("{path} holds no usable private key: {error}")]
    BadKey { path: String, error: String },
    #[error("the key in {key} does not belong to the certificate in {cert}: {error}")]
    Mismatch {
        cert: String,
        key: String,
        error: String,
    },
    #[error("TLS setup: {0}")]
    Setup(String),
}

fn provider() -> Arc<CryptoProvider> {
    // Named rather than left to rustls' process-wide default: ring is the provider the
    // crate's clients use (reqwest, octocrab's hyper-rustls), and a second one compiled in
    // later by some dependency must not silently change (or break) what the server uses.
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.display().to_string(),
        error,
    })
}

/// Read and check a certificate chain and its key.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_pem = read(cert)?;
    let key_pem = zeroize::Zeroizing::new(read(key)?);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: cert.display().to_string(),
            error: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.display().to_string()));
    }
    // The PEM parser's error can quote a line of the file: not for a key file.
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::BadKey {
        path: key.display().to_string(),
        error: "expected a PEM PKCS#8, PKCS#1 (RSA) or SEC1 (EC) private key".into(),
    })?;
    let provider = provider();
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| TlsError::BadKey {
            path: key.display().to_string(),
            error: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    // Unlike `CertifiedKey::from_der`, an unknown consistency is refused too: a pair that
    // cannot be proven to match must not replace one that works.
    certified.keys_match().map_err(|e| TlsError::Mismatch {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        error: e.to_string(),
    })?;
    Ok(Arc::new(certified))
}

/// The pair in use, swapped whole on reload.
#[derive(Debug)]
pub struct Reloadable {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Reloadable {
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
    }
}

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A fingerprint of both files: a change to either (even one keeping size and mtime) shows.
fn fingerprint(cfg: &TlsConfig) -> Option<[u8; 32]> {
    let mut h = sha2::Sha256::new();
    for p in [&cfg.cert, &cfg.key] {
        let bytes = zeroize::Zeroizing::new(std::fs::read(p).ok()?);
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(&*bytes);
    }
    Some(h.finalize().into())
}

/// The TLS side of the server: the rustls configuration and the pair it serves.
pub struct Tls {
    pub config: Arc<ServerConfig>,
    pub certs: Arc<Reloadable>,
    settings: TlsConfig,
    /// The files' fingerprint when last looked at (loaded or refused).
    seen: std::sync::Mutex<Option<[u8; 32]>>,
}

impl Tls {
    /// Load the pair (a bad one is an error at startup) and build the configuration.
    pub fn new(settings: TlsConfig) -> Result<Arc<Tls>, TlsError> {
        let seen = fingerprint(&settings);
        let first = load_pair(&settings.cert, &settings.key)?;
        let certs = Arc::new(Reloadable {
            current: RwLock::new(first),
        });
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        // The router speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(Tls {
            config: Arc::new(config),
            certs,
            settings,
            seen: std::sync::Mutex::new(seen),
        }))
    }

    /// Load the files again if they changed since last time; `Ok(true)` if a new pair is in
    /// use. A refused pair is not tried again until the files change once more.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = fingerprint(&self.settings);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if now.is_none() || *seen == now {
                // Missing files (mid-replacement) are looked at again next time.
                return Ok(false);
            }
            *seen = now;
        }
        self.reload()?;
        Ok(true)
    }

    /// Load the files now (SIGHUP).
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = load_pair(&self.settings.cert, &self.settings.key)?;
        self.certs.set(pair);
        Ok(())
    }

    /// Watch the files (and SIGHUP) until `shutdown`. The SIGHUP handler is in place when
    /// this returns, so a SIGHUP sent after startup reloads rather than ending the process.
    pub fn watch(self: &Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let tls = self.clone();
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(
                |e| tracing::warn!(error = %e, "SIGHUP cannot be watched; files are still checked"),
            )
            .ok();
        tokio::spawn(async move {
            loop {
                #[cfg(unix)]
                let hup_recv = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let hup_recv = std::future::pending::<Option<()>>();
                let forced = tokio::select! {
                    _ = tokio::time::sleep(tls.settings.reload_every) => false,
                    _ = hup_recv => true,
                    _ = shutdown.wait_for(|s| *s) => return,
                };
                let t = tls.clone();
                let result = tokio::task::spawn_blocking(move || {
                    if forced {
                        *t.seen.lock().unwrap_or_else(|e| e.into_inner()) =
                            fingerprint(&t.settings);
                        t.reload().map(|_| true)
                    } else {
                        t.reload_if_changed()
                    }
                })
                .await;
                match result {
                    Ok(Ok(true)) => tracing::info!("TLS certificate reloaded"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::error!(
                        error = %e,
                        "the new TLS certificate was refused; the previous one stays in use"
                    ),
                    Err(e) => tracing::error!(error = %e, "the TLS reload task failed"),
                }
            }
        });
    }
}

/// Handshakes in progress at most; more wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 512;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Finished TLS connections, for `axum::serve`.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accept on `listener` and shake hands until `shutdown`.
    pub fn new(
        listener: TcpListener,
        tls: &Arc<Tls>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let permit = tokio::select! {
                    p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                    _ = shutdown.wait_for(|s| *s) => return,
                };
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = shutdown.wait_for(|s| *s) => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off as axum does.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer.ip(), error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %peer.ip(), "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop stopped (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
