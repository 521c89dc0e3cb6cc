//! TLS (rustls) on the exchange's TCP channels: the TCP and WebSocket feeds and both
//! order channels. Each accepted connection does its handshake in its own task, so a
//! slow or broken client never holds up the listener; completed and failed handshakes
//! are counted per channel. Also makes the self-signed certificates the operator and
//! local mode use when the experiment names no Secret.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus::IntCounter;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use ticklab_crd::TlsVersion;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::ExchangeStats;
use crate::metrics::ExchangeMetrics;

/// Where the exchange's certificate and key are (in a pod: the mounted Secret).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain the exchange serves, leaf first.
    pub cert_pem_path: PathBuf,
    /// PEM private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_pem_path: PathBuf,
    /// Lowest TLS version accepted.
    #[serde(default)]
    pub min_version: TlsVersion,
}

/// Why TLS cannot be set up; each names the file at fault (the cause is the error's
/// source, which `{:#}` prints after it).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the TLS {what} {path} holds no usable PEM {what}: {problem}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("TLS: the certificate {cert} with the key {key} is refused")]
    Refused {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// The versions to offer from `min` up.
pub fn protocol_versions(min: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        TlsVersion::Tls12 => rustls::ALL_VERSIONS,
        TlsVersion::Tls13 => &TLS13_ONLY,
    }
}

/// Always ring, named explicitly: the process-wide default provider is ambiguous
/// when a dependency also enables aws-lc, and rustls would then refuse to choose.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the certificate chain and key and builds the server side.
pub fn server_config(config: &ServerTlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = read("certificate", &config.cert_pem_path)?;
    let key_pem = read("key", &config.key_pem_path)?;
    let pem_error = |what, path: &Path, problem: String| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        problem,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("certificate", &config.cert_pem_path, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(
            "certificate",
            &config.cert_pem_path,
            "no CERTIFICATE block".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| pem_error("key", &config.key_pem_path, e.to_string()))?;
    let refused = |source| TlsError::Refused {
        cert: config.cert_pem_path.clone(),
        key: config.key_pem_path.clone(),
        source,
    };
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(protocol_versions(config.min_version))
        .map_err(refused)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map(Arc::new)
        .map_err(refused)
}

/// A handshake not finished in this time is a failure: a client that connects and
/// says nothing must not hold a task and a socket forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection on a TCP channel: plain, or TLS once its handshake completed.
pub type Connection = Either<TcpStream, TlsStream<TcpStream>>;

/// The TLS side of one channel ("feed", "orders", "orders_http"), with its counters.
#[derive(Clone)]
pub struct TlsAcceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    channel: &'static str,
    completed: IntCounter,
    failed: IntCounter,
    stats: Arc<ExchangeStats>,
}

impl TlsAcceptor {
    pub fn new(
        config: Arc<ServerConfig>,
        channel: &'static str,
        metrics: &ExchangeMetrics,
        stats: Arc<ExchangeStats>,
    ) -> Self {
        Self {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            channel,
            completed: metrics.tls_handshakes.with_label_values(&[channel]),
            failed: metrics.tls_handshake_failures.with_label_values(&[channel]),
            stats,
        }
    }

    /// The handshake on `stream`; None (counted, logged at debug) when it fails: a
    /// client speaking plain TCP to a TLS port, a certificate it refuses, a timeout.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<TlsStream<TcpStream>> {
        let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await;
        match outcome {
            Ok(Ok(tls)) => {
                self.completed.inc();
                self.stats.tls_handshakes.fetch_add(1, Ordering::Relaxed);
                Some(tls)
            }
            Ok(Err(error)) => {
                self.failed();
                tracing::debug!(%peer, channel = self.channel, %error, "TLS handshake failed");
                None
            }
            Err(_) => {
                self.failed();
                tracing::debug!(%peer, channel = self.channel, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
                None
            }
        }
    }

    fn failed(&self) {
        self.failed.inc();
        self.stats
            .tls_handshake_failures
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// `stream` as the channel serves it: through a TLS handshake when `tls` is set.
/// None when the handshake failed (already counted).
pub async fn secure(
    tls: Option<&TlsAcceptor>,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<Connection> {
    match tls {
        None => Some(Either::Left(stream)),
        Some(acceptor) => acceptor.handshake(stream, peer).await.map(Either::Right),
    }
}

/// A listener of TLS connections for axum: a task accepts TCP connections and runs
/// each handshake in a task of its own; only completed handshakes reach axum, so a
/// failed one is counted and dropped without axum (or the listener) noticing.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener` until `stop` or until this listener is dropped.
    pub fn spawn(listener: TcpListener, acceptor: TlsAcceptor, stop: CancellationToken) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    () = stop.cancelled() => return,
                    () = tx.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(error) => {
                            // Out of file descriptors and the like: pause rather than spin.
                            tracing::warn!(%error, %local, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Some(tls) = acceptor.handshake(stream, peer).await {
                        // Dropped when the server is shutting down: nothing to serve.
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        Self { ready, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept task ended (stop): no connection will come again, and axum's
            // graceful shutdown is under way.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serves `router` on `listener` until `stop`, through TLS when `tls` is set.
pub async fn serve_http(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: axum::Router,
    stop: CancellationToken,
) -> io::Result<()> {
    match tls {
        None => ticklab_admin::serve(listener, router, stop)
            .await
            .map_err(io::Error::other),
        Some(acceptor) => {
            let listener = TlsListener::spawn(listener, acceptor, stop.clone());
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }
    }
}

/// Why a certificate could not be generated.
pub use rcgen::Error as GenerateError;

/// A certificate and its private key, PEM encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificatePair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CertificatePair {
    // The key stays out of logs and panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificatePair")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A self-signed certificate (ECDSA P-256) for `names`: DNS names, or IP addresses
/// written as such ("127.0.0.1"), which become IP subject alternative names. The
/// first name is also the subject's common name. Valid for ten years from now:
/// experiments are short, but a kept Secret outlives many of them.
pub fn self_signed(names: &[String]) -> Result<CertificatePair, GenerateError> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(
        rcgen::DnType::CommonName,
        names.first().map_or("ticklab exchange", String::as_str),
    );
    subject.push(rcgen::DnType::OrganizationName, "ticklab");
    params.distinguished_name = subject;
    let now = std::time::SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CertificatePair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ticklab-exchange-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_generated_pair_serves_and_bad_files_are_named() {
        let dir = temp_dir("files");
        let pair = self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        assert!(!format!("{pair:?}").contains("PRIVATE KEY"));
        let cert = write(&dir, "tls.crt", &pair.cert_pem);
        let key = write(&dir, "tls.key", &pair.key_pem);
        let config = |cert: &Path, key: &Path| ServerTlsConfig {
            cert_pem_path: cert.to_path_buf(),
            key_pem_path: key.to_path_buf(),
            min_version: TlsVersion::Tls12,
        };
        server_config(&config(&cert, &key)).unwrap();

        let missing = dir.join("absent.crt");
        let e = server_config(&config(&missing, &key)).unwrap_err();
        assert!(
            e.to_string().contains(&missing.display().to_string()),
            "{e}"
        );
        assert_eq!(e.to_string().lines().count(), 1, "{e}");

        let junk = write(&dir, "junk.crt", "not a certificate\n");
        let e = server_config(&config(&junk, &key)).unwrap_err();
        assert!(e.to_string().contains("junk.crt"), "{e}");

        // Another pair's key does not fit this certificate.
        let other = self_signed(&["localhost".into()]).unwrap();
        let other_key = write(&dir, "other.key", &other.key_pem);
        let e = server_config(&config(&cert, &other_key)).unwrap_err();
        assert!(e.to_string().contains("other.key"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
