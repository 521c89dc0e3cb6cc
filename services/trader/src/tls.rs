//! TLS (rustls) on the trader's connections to the exchange: one `ClientConfig`
//! trusting only the experiment's CA serves the TCP feed, the WebSocket feed (wss),
//! the binary order channel and the HTTPS order client, so every connection's
//! secrets go through the same [`SessionKeyLog`] when key logging is on.
//!
//! The key log is the NSS key log format (SSLKEYLOGFILE) exactly as rustls emits it:
//! `CLIENT_RANDOM` for TLS 1.2; `CLIENT_HANDSHAKE_TRAFFIC_SECRET`,
//! `SERVER_HANDSHAKE_TRAFFIC_SECRET`, `CLIENT_TRAFFIC_SECRET_0`,
//! `SERVER_TRAFFIC_SECRET_0` and `EXPORTER_SECRET` for TLS 1.3; one line each,
//! `LABEL <client random, hex> <secret, hex>`. Lines are appended to a file (when
//! one is named) and kept in memory for `GET /keylog?since=N` ([`crate::api`]),
//! which a capture service polls to decrypt the trader's traffic.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::IntCounter;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde::{Deserialize, Serialize};
use ticklab_crd::TlsVersion;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::metrics::TraderMetrics;

/// How the trader speaks TLS to the exchange.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// PEM certificates the trader trusts (the CA, or the exchange's self-signed
    /// certificate itself); nothing else is trusted.
    pub ca_pem_path: PathBuf,
    /// The name the exchange's certificate must carry, for every connection;
    /// absent: the host of each address as configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// With `keyLog`: also append each key log line to this file (created if
    /// absent, mode 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_log_file: Option<PathBuf>,
    /// Log the TLS session secrets (NSS key log format), kept in memory for
    /// `GET /keylog` and written to `keyLogFile` if set.
    #[serde(default)]
    pub key_log: bool,
    /// Lowest TLS version offered.
    #[serde(default)]
    pub min_version: TlsVersion,
}

/// Why TLS cannot be set up; each names the file or value at fault (the cause is the
/// error's source, which `{:#}` prints after it).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the trusted CA certificate {path}")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the trusted CA file {path} holds no usable certificate: {problem}")]
    Ca { path: PathBuf, problem: String },
    #[error("cannot open the TLS key log file {path}")]
    KeyLogFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("tls.keyLogFile is set ({path}) but tls.keyLog is false: nothing would be written")]
    KeyLogFileWithoutKeyLog { path: PathBuf },
    #[error("tls.serverName {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
    #[error("the TLS settings are refused")]
    Rustls(#[from] rustls::Error),
}

/// Lines the key log keeps in memory. A trader opens a handful of connections per
/// run (five or so lines each), so this is reached only by a long run that keeps
/// reconnecting; the oldest lines go first, and are counted.
pub const KEY_LOG_LINES: usize = 100_000;

/// The trader's key log: every line in memory (bounded) and, if asked, in a file.
pub struct SessionKeyLog {
    book: Mutex<Book>,
    file: Option<(PathBuf, Mutex<File>)>,
    lines_logged: IntCounter,
    lines_dropped: IntCounter,
    write_errors: IntCounter,
}

struct Book {
    /// Index of `lines[0]` among every line ever logged.
    first: u64,
    lines: VecDeque<String>,
    capacity: usize,
}

/// Lines from an index on, and where the next read should start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyLogPage {
    /// Index of the first line still held (older ones were dropped).
    pub first: u64,
    pub lines: Vec<String>,
    /// Index after the last line returned: the next `since`.
    pub next: u64,
}

impl SessionKeyLog {
    /// A key log keeping `capacity` lines, appending to `file` when given (opened
    /// now, so a path that cannot be written fails the start, naming it).
    pub fn open(
        file: Option<&Path>,
        capacity: usize,
        metrics: &TraderMetrics,
    ) -> Result<Self, TlsError> {
        let file = match file {
            None => None,
            Some(path) => {
                let mut options = std::fs::OpenOptions::new();
                options.create(true).append(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    // Secrets: readable by the owner only.
                    options.mode(0o600);
                }
                let handle = options.open(path).map_err(|source| TlsError::KeyLogFile {
                    path: path.to_path_buf(),
                    source,
                })?;
                Some((path.to_path_buf(), Mutex::new(handle)))
            }
        };
        Ok(Self {
            book: Mutex::new(Book {
                first: 0,
                lines: VecDeque::new(),
                capacity: capacity.max(1),
            }),
            file,
            lines_logged: metrics.keylog_lines.clone(),
            lines_dropped: metrics.keylog_dropped.clone(),
            write_errors: metrics.keylog_write_errors.clone(),
        })
    }

    /// Up to `max` lines from index `since` on (from the oldest held if `since` is
    /// older than that).
    pub fn read_from(&self, since: u64, max: usize) -> KeyLogPage {
        let book = self.book.lock();
        let end = book.first + book.lines.len() as u64;
        let start = since.clamp(book.first, end);
        // start - first <= lines.len(), a usize.
        let lines: Vec<String> = book
            .lines
            .iter()
            .skip((start - book.first) as usize)
            .take(max)
            .cloned()
            .collect();
        KeyLogPage {
            first: book.first,
            next: start + lines.len() as u64,
            lines,
        }
    }

    /// Lines logged so far (held or dropped): the index the next line gets.
    pub fn logged(&self) -> u64 {
        let book = self.book.lock();
        book.first + book.lines.len() as u64
    }

    fn record(&self, line: String) {
        if let Some((path, file)) = &self.file {
            // One write per line on an O_APPEND file: lines from concurrent
            // handshakes never interleave, and a reader (Wireshark) sees whole
            // lines. The file is unbuffered, so each line is on disk as it is
            // written; handshakes are rare, so the blocking write costs nothing.
            let mut file = file.lock();
            if let Err(error) = file
                .write_all(format!("{line}\n").as_bytes())
                .and_then(|()| file.flush())
            {
                self.write_errors.inc();
                tracing::warn!(path = %path.display(), %error, "cannot write the TLS key log");
            }
        }
        self.lines_logged.inc();
        let mut book = self.book.lock();
        if book.lines.len() == book.capacity {
            book.lines.pop_front();
            book.first += 1;
            self.lines_dropped.inc();
        }
        book.lines.push_back(line);
    }
}

impl fmt::Debug for SessionKeyLog {
    // Never the secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKeyLog")
            .field("file", &self.file.as_ref().map(|(path, _)| path))
            .field("lines", &self.book.lock().lines.len())
            .finish()
    }
}

impl rustls::KeyLog for SessionKeyLog {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        self.record(format!("{label} {} {}", hex(client_random), hex(secret)));
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The TLS client side every connection to the exchange goes through.
pub struct TlsClient {
    config: Arc<ClientConfig>,
    connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
    handshake_failures: IntCounter,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Trusts only the certificates in `config.ca_pem_path`; logs keys to `key_log`.
    pub fn new(
        config: &ClientTlsConfig,
        key_log: Option<Arc<SessionKeyLog>>,
        metrics: &TraderMetrics,
    ) -> Result<Self, TlsError> {
        let path = &config.ca_pem_path;
        let pem = std::fs::read(path).map_err(|source| TlsError::ReadCa {
            path: path.clone(),
            source,
        })?;
        let ca_error = |problem: String| TlsError::Ca {
            path: path.clone(),
            problem,
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| ca_error(e.to_string()))?;
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ca_error("no CERTIFICATE block".into()));
        }
        let server_name = config
            .server_name
            .as_ref()
            .map(|name| {
                ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name.clone()))
            })
            .transpose()?;
        // Always ring, named explicitly: with aws-lc also in the dependency graph
        // rustls would not pick a process-wide default.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        let versions: &[&rustls::SupportedProtocolVersion] = match config.min_version {
            TlsVersion::Tls12 => rustls::ALL_VERSIONS,
            TlsVersion::Tls13 => &TLS13_ONLY,
        };
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        if let Some(key_log) = key_log {
            client.key_log = key_log;
        }
        let config = Arc::new(client);
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(config.clone()),
            config,
            server_name,
            handshake_failures: metrics.tls_handshake_failures.clone(),
        })
    }

    /// The rustls configuration (key log included), for the HTTPS order client.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// The configured server name, if it replaces the addresses' hosts.
    pub fn server_name(&self) -> Option<String> {
        self.server_name.as_ref().map(|n| n.to_str().into_owned())
    }

    /// Connects to `addr` ("host:port", "[v6]:port") and completes a handshake,
    /// verifying the server name (or the host) against the certificate. A failed
    /// handshake is an `InvalidData` error (see [`is_handshake_error`]).
    pub async fn connect(&self, addr: &str) -> io::Result<TlsStream<TcpStream>> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => {
                let host = host_of(addr);
                ServerName::try_from(host.to_string()).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{host:?} is not a DNS name or IP address to verify"),
                    )
                })?
            }
        };
        let tcp = TcpStream::connect(addr).await?;
        // The handshake's flights and then every order leave at once.
        tcp.set_nodelay(true)?;
        self.connector.connect(name, tcp).await.inspect_err(|_| {
            self.handshake_failures.inc();
        })
    }
}

/// The host of "host:port" or "[v6]:port" (brackets removed).
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}

/// Whether an error from [`TlsClient::connect`] is TLS refusing the peer (a
/// certificate not trusted, a name that does not match): worth a warning, unlike a
/// connection refused while the exchange starts.
pub fn is_handshake_error(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::InvalidData
        && error
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn metrics() -> TraderMetrics {
        TraderMetrics::register(&prometheus::Registry::new()).unwrap()
    }

    #[test]
    fn hosts_and_hex() {
        assert_eq!(host_of("exchange.ns.svc:9000"), "exchange.ns.svc");
        assert_eq!(host_of("127.0.0.1:9000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9000"), "::1");
        assert_eq!(hex(&[0x00, 0x9f, 0xff]), "009fff");
    }

    #[test]
    fn the_book_keeps_the_newest_lines_and_pages_by_index() {
        let m = metrics();
        let log = SessionKeyLog::open(None, 3, &m).unwrap();
        let empty = log.read_from(0, 10);
        assert_eq!((empty.first, empty.lines.len(), empty.next), (0, 0, 0));
        for i in 0..5u8 {
            rustls::KeyLog::log(&log, "CLIENT_RANDOM", &[i], &[0xaa]);
        }
        // Two dropped: lines 2, 3, 4 held.
        let page = log.read_from(0, 10);
        assert_eq!(page.first, 2);
        assert_eq!(
            page.lines,
            [
                "CLIENT_RANDOM 02 aa",
                "CLIENT_RANDOM 03 aa",
                "CLIENT_RANDOM 04 aa"
            ]
        );
        assert_eq!(page.next, 5);
        let page = log.read_from(3, 1);
        assert_eq!((page.lines.len(), page.next), (1, 4));
        assert_eq!(log.read_from(9, 10).next, 5);
        assert_eq!(m.keylog_dropped.get(), 2);
        assert_eq!(m.keylog_lines.get(), 5);
    }

    #[test]
    fn lines_go_to_the_file_one_per_line_and_a_bad_path_is_named() {
        let m = metrics();
        let dir = std::env::temp_dir().join(format!("ticklab-keylog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.log");
        let log = SessionKeyLog::open(Some(&path), 10, &m).unwrap();
        rustls::KeyLog::log(&log, "CLIENT_TRAFFIC_SECRET_0", &[1, 2], &[3, 4]);
        rustls::KeyLog::log(&log, "SERVER_TRAFFIC_SECRET_0", &[1, 2], &[5, 6]);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "CLIENT_TRAFFIC_SECRET_0 0102 0304\nSERVER_TRAFFIC_SECRET_0 0102 0506\n"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let bad = dir.join("no-such-dir/keys.log");
        let e = SessionKeyLog::open(Some(&bad), 10, &m).unwrap_err();
        assert!(e.to_string().contains("no-such-dir/keys.log"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
