//! One health probe of one backend: the I/O edge of the health checks.
//!
//! - `tcp`: the connection is accepted within the timeout.
//! - `http`: `GET path` over HTTP/1.1 answers `expect_status`. The request is written by hand and only the status
//!   line is read: a health check needs nothing else, and a server that keeps sending a body (or ignores
//!   `Connection: close`) cannot stall the probe.
//! - `https`: the same over TLS (rustls). kube-apiserver's `/readyz` behind a self-signed or cluster-CA certificate
//!   is the main case, hence `tls_verify = false` (accept any certificate) or `ca_file` (verify against the cluster
//!   CA, with the backend IP as the expected name unless `server_name` says otherwise). Without `ca_file`, the
//!   system's CA bundle is used (see [`SYSTEM_CA_BUNDLES`]).
//!
//! Every stage shares one deadline, so the whole probe (connect, handshake, request, status line) is bounded by
//! `timeout`, and a timeout says which stage was waiting.
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub use crate::config::CheckKind;

/// The `[service.health]` settings of a service, already parsed and validated by the config module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub kind: CheckKind,
    /// Request path for http/https; must start with `/` and contain no whitespace or control characters.
    pub path: String,
    pub expect_status: u16,
    pub interval: Duration,
    /// Bound on the whole probe; at most `interval`, so the first result is known within one interval of start.
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// `false`: accept any server certificate (still checking that the server holds its key).
    pub tls_verify: bool,
    /// PEM CA bundle to verify the server certificate against. `None`: the system's bundle
    /// ([`SYSTEM_CA_BUNDLES`]), which suits publicly signed backends; kube-apiservers need the cluster CA here.
    pub ca_file: Option<PathBuf>,
    /// Name sent as SNI and verified in the certificate, and sent as the HTTP `Host`. Default: the backend IP
    /// (verified as an IP subject-alternative name; no SNI is sent for an IP).
    pub server_name: Option<String>,
}

impl From<&crate::config::Health> for Settings {
    fn from(h: &crate::config::Health) -> Self {
        Settings {
            kind: h.check,
            path: h.path.clone(),
            expect_status: h.expect_status,
            interval: Duration::from_millis(u64::from(h.interval_ms)),
            timeout: Duration::from_millis(u64::from(h.timeout_ms)),
            rise: h.rise,
            fall: h.fall,
            tls_verify: h.tls_verify,
            ca_file: h.ca_file.clone(),
            server_name: h.server_name.clone(),
        }
    }
}

impl Default for Settings {
    /// The defaults of `[service.health]`, from the one table of defaults in the config module.
    fn default() -> Self {
        Settings::from(&crate::config::Health::default())
    }
}

/// The step of a probe that failed or was waiting when the deadline passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Handshake,
    Send,
    Receive,
}

/// Why a probe failed.
#[derive(Debug)]
pub enum Failure {
    /// The deadline passed during `stage`.
    Timeout { stage: Stage, limit: Duration },
    /// An I/O error (including TLS errors, which tokio-rustls reports as I/O errors) during `stage`.
    Io { stage: Stage, source: io::Error },
    /// The server closed the connection before sending a complete status line.
    Closed,
    /// The first line of the answer is not `HTTP/1.x NNN ...`.
    BadStatusLine { line: String },
    /// The status differs from `expect_status`.
    Status { expected: u16, found: u16, line: String },
    /// The probe could not even start: bad settings or an unreadable `ca_file`.
    Setup(String),
}

/// A failed probe, with the backend and request it was about.
#[derive(Debug)]
pub struct ProbeError {
    pub backend: SocketAddr,
    /// `None` for tcp; `Some("GET /readyz")` for http(s), for the message.
    pub request: Option<String>,
    pub failure: Failure,
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.backend;
        let request = self.request.as_deref().unwrap_or("probe");
        let stage = |stage: &Stage| match stage {
            Stage::Connect => format!("connect to {b}"),
            Stage::Handshake => format!("TLS handshake with {b}"),
            Stage::Send => format!("{request} on {b}: sending the request"),
            Stage::Receive => format!("{request} on {b}: reading the status line"),
        };
        match &self.failure {
            Failure::Timeout { stage: s, limit } => write!(f, "{}: no answer within {limit:?}", stage(s)),
            Failure::Io { stage: s, source } => write!(f, "{}: {source}", stage(s)),
            Failure::Closed => write!(f, "{request} on {b}: connection closed before the status line"),
            Failure::BadStatusLine { line } => {
                write!(f, "{request} on {b}: expected an `HTTP/1.x NNN` status line, got {line:?}")
            }
            Failure::Status { expected, found, line } => {
                write!(f, "{request} on {b}: expected status {expected}, got {found} ({line:?})")
            }
            Failure::Setup(why) => write!(f, "{request} on {b}: {why}"),
        }
    }
}

impl std::error::Error for ProbeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.failure {
            Failure::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Probes one backend with fixed settings. Keeps the TLS client configuration between probes, building it (and
/// reading `ca_file`) on first use, again at each probe until that succeeds (a CA file that appears later is picked
/// up), and again whenever the file changes (a rotated CA needs no restart).
pub struct Prober {
    backend: SocketAddr,
    settings: Settings,
    tls: Option<TlsConnector>,
    /// What `ca_file` looked like when `tls` was built: a change of it means the CA was rotated.
    ca_stamp: Option<FileStamp>,
}

/// Enough of a file's metadata to notice that it was replaced or rewritten.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

fn file_stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp { modified: meta.modified().ok(), len: meta.len(), inode: meta.ino() })
}

impl Prober {
    pub fn new(backend: SocketAddr, settings: Settings) -> Self {
        Self { backend, settings, tls: None, ca_stamp: None }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Runs one probe of the configured kind. `Ok` describes what succeeded (for the transition reason).
    ///
    /// # Errors
    /// [`ProbeError`] saying which stage failed or timed out, or that the settings or `ca_file` are unusable.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future closes the connection; nothing is kept between probes except the TLS
    /// configuration.
    pub async fn probe(&mut self) -> Result<String, ProbeError> {
        match self.settings.kind {
            CheckKind::None => Ok("check = none".to_string()),
            CheckKind::Tcp => probe_tcp(self.backend, self.settings.timeout).await,
            CheckKind::Http => probe_http(self.backend, &self.settings).await,
            CheckKind::Https => {
                if let Some(path) = self.settings.ca_file.as_deref().filter(|_| self.settings.tls_verify) {
                    let stamp = file_stamp(path);
                    if stamp != self.ca_stamp {
                        // Rotated (or appeared, or vanished): build the configuration again from the file as it is.
                        self.tls = None;
                        self.ca_stamp = stamp;
                    }
                }
                let connector = match &self.tls {
                    Some(connector) => connector.clone(),
                    None => {
                        let config = tls_client_config(&self.settings).map_err(|why| ProbeError {
                            backend: self.backend,
                            request: Some(format!("GET {}", self.settings.path)),
                            failure: Failure::Setup(why),
                        })?;
                        let connector = TlsConnector::from(Arc::new(config));
                        self.tls = Some(connector.clone());
                        connector
                    }
                };
                probe_https(self.backend, &self.settings, &connector).await
            }
        }
    }
}

/// `tcp`: the connection is accepted within `timeout`, then closed.
///
/// # Errors
/// [`Failure::Io`] (e.g. connection refused) or [`Failure::Timeout`] at [`Stage::Connect`].
pub async fn probe_tcp(backend: SocketAddr, timeout: Duration) -> Result<String, ProbeError> {
    let deadline = Instant::now() + timeout;
    connect(backend, None, deadline, timeout).await?;
    Ok(format!("connected to {backend}"))
}

/// `http`: `GET settings.path` answers `settings.expect_status` within `settings.timeout`.
///
/// # Errors
/// [`ProbeError`] for a bad path, a connection or I/O failure, a timeout, a malformed status line, or another
/// status.
pub async fn probe_http(backend: SocketAddr, settings: &Settings) -> Result<String, ProbeError> {
    let deadline = Instant::now() + settings.timeout;
    let request = Some(format!("GET {}", settings.path));
    let fail = |failure| ProbeError { backend, request: request.clone(), failure };
    let wire = http_request(backend, settings).map_err(|why| fail(Failure::Setup(why)))?;
    let stream = connect(backend, request.clone(), deadline, settings.timeout).await?;
    let line = exchange(stream, &wire, deadline, settings.timeout).await.map_err(fail)?;
    check_status(&line, settings.expect_status).map_err(fail)?;
    Ok(format!("GET {} on {backend}: {line}", settings.path))
}

/// `https`: as [`probe_http`] over TLS, with the certificate policy of `connector` (see [`tls_client_config`]).
///
/// # Errors
/// As [`probe_http`], plus [`Failure::Io`] at [`Stage::Handshake`] for TLS failures such as an untrusted
/// certificate or a name mismatch.
pub async fn probe_https(
    backend: SocketAddr,
    settings: &Settings,
    connector: &TlsConnector,
) -> Result<String, ProbeError> {
    let deadline = Instant::now() + settings.timeout;
    // A bad path is refused before anything is sent.
    http_request(backend, settings).map_err(|why| ProbeError {
        backend,
        request: Some(format!("GET {}", settings.path)),
        failure: Failure::Setup(why),
    })?;
    let tls = connect_tls(backend, settings, connector, deadline).await?;
    request_status(tls, backend, settings, deadline).await
}

/// The first half of an `https` probe: a TCP connection and a TLS handshake (SNI from `server_name`, certificate
/// policy from `connector`), bounded by `deadline`. The session is returned so a caller can look at what the
/// server presented (`xvip verify` shows the certificate).
///
/// # Errors
/// [`ProbeError`] at [`Stage::Connect`] or [`Stage::Handshake`], or [`Failure::Setup`] for a bad `server_name`.
pub async fn connect_tls(
    backend: SocketAddr,
    settings: &Settings,
    connector: &TlsConnector,
    deadline: Instant,
) -> Result<TlsStream<TcpStream>, ProbeError> {
    let request = Some(format!("GET {}", settings.path));
    let fail = |failure| ProbeError { backend, request: request.clone(), failure };
    let name = server_name(backend, settings).map_err(|why| fail(Failure::Setup(why)))?;
    let tcp = connect(backend, request.clone(), deadline, settings.timeout).await?;
    match timeout_at(deadline, connector.connect(name, tcp)).await {
        Err(_) => Err(fail(Failure::Timeout { stage: Stage::Handshake, limit: settings.timeout })),
        Ok(Err(source)) => Err(fail(Failure::Io { stage: Stage::Handshake, source })),
        Ok(Ok(tls)) => Ok(tls),
    }
}

/// The second half of an `http`/`https` probe on an open connection: `GET settings.path` answers
/// `settings.expect_status` by `deadline`. `Ok` describes the answer.
///
/// # Errors
/// [`ProbeError`] for a bad path, an I/O failure, a timeout, a malformed status line, or another status.
pub async fn request_status<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    backend: SocketAddr,
    settings: &Settings,
    deadline: Instant,
) -> Result<String, ProbeError> {
    let request = Some(format!("GET {}", settings.path));
    let fail = |failure| ProbeError { backend, request: request.clone(), failure };
    let wire = http_request(backend, settings).map_err(|why| fail(Failure::Setup(why)))?;
    let line = exchange(stream, &wire, deadline, settings.timeout).await.map_err(fail)?;
    check_status(&line, settings.expect_status).map_err(fail)?;
    Ok(format!("GET {} on {backend} over TLS: {line}", settings.path))
}

/// The rustls client configuration for `https` probes.
///
/// The ring provider is named explicitly rather than taken from the process default, which panics when another
/// crate in the build also enables aws-lc-rs. ALPN offers only `http/1.1`, since the probe speaks HTTP/1.1.
///
/// # Errors
/// A message naming the file and what was wrong when `tls_verify` is true and `ca_file` is missing, unreadable,
/// not PEM, or holds no usable certificate; or, without `ca_file`, when no system CA bundle is found.
pub fn tls_client_config(settings: &Settings) -> Result<ClientConfig, String> {
    tls_client_config_with(settings, &system_ca_bundles())
}

/// Where the system CA bundle is looked for when `ca_file` is not set, in order; the first that exists is used.
/// These are the paths OpenSSL-based tools probe on Linux: Debian/Ubuntu/Arch/Alpine, Fedora/RHEL, openSUSE, and
/// Alpine's and the BSDs' `cert.pem`. The `SSL_CERT_FILE` environment variable, when set, is tried first.
pub const SYSTEM_CA_BUNDLES: [&str; 5] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

fn system_ca_bundles() -> Vec<PathBuf> {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    from_env.into_iter().chain(SYSTEM_CA_BUNDLES.iter().map(PathBuf::from)).collect()
}

/// [`tls_client_config`] with the system bundle candidates given, so tests do not depend on the host.
fn tls_client_config_with(settings: &Settings, system_bundles: &[PathBuf]) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let mut config = match trust_roots_with(settings, system_bundles)? {
        Some((roots, _)) => builder.with_root_certificates(roots).with_no_client_auth(),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The trust anchors an `https` check verifies against, and where they came from (`ca_file PATH` or
/// `system CA bundle PATH`); `None` with `tls_verify = false`.
///
/// # Errors
/// As [`tls_client_config`].
pub fn trust_roots(settings: &Settings) -> Result<Option<(RootCertStore, String)>, String> {
    trust_roots_with(settings, &system_ca_bundles())
}

fn trust_roots_with(
    settings: &Settings,
    system_bundles: &[PathBuf],
) -> Result<Option<(RootCertStore, String)>, String> {
    if !settings.tls_verify {
        return Ok(None);
    }
    let (path, what) = match &settings.ca_file {
        Some(path) => (path.as_path(), "ca_file"),
        None => {
            let Some(path) = system_bundles.iter().find(|p| p.is_file()) else {
                let tried: Vec<String> = system_bundles.iter().map(|p| p.display().to_string()).collect();
                return Err(format!(
                    "tls_verify = true without ca_file needs the system CA bundle, found none of {}; \
                     set ca_file or tls_verify = false",
                    tried.join(", ")
                ));
            };
            (path.as_path(), "system CA bundle")
        }
    };
    let source = format!("{what} {}", path.display());
    let roots = load_roots(path).map_err(|why| format!("{source}: {why}"))?;
    Ok(Some((roots, source)))
}

/// `tls_verify = false`: any certificate chain and name is accepted. The handshake signature is still checked
/// against the presented certificate, which costs nothing and keeps the TLS transcript honest.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Reads every certificate of a PEM file as a trust anchor.
fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| e.to_string())? {
        let cert = cert.map_err(|e| e.to_string())?;
        roots.add(cert).map_err(|e| format!("unusable certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("expected at least one PEM `-----BEGIN CERTIFICATE-----` block, found none".to_string());
    }
    Ok(roots)
}

fn server_name(backend: SocketAddr, settings: &Settings) -> Result<ServerName<'static>, String> {
    match &settings.server_name {
        None => Ok(ServerName::IpAddress(backend.ip().into())),
        Some(name) => ServerName::try_from(name.clone())
            .map_err(|e| format!("server_name {name:?} is not a DNS name or IP address: {e}")),
    }
}

/// The whole request. `Connection: close` so the server does not hold the connection open for reuse.
fn http_request(backend: SocketAddr, settings: &Settings) -> Result<Vec<u8>, String> {
    let path = &settings.path;
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("path must start with `/` and contain no spaces or control characters, got {path:?}"));
    }
    let host = settings.server_name.clone().unwrap_or_else(|| backend.to_string());
    Ok(format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: xvip-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    .into_bytes())
}

async fn connect(
    backend: SocketAddr,
    request: Option<String>,
    deadline: Instant,
    limit: Duration,
) -> Result<TcpStream, ProbeError> {
    let fail = |failure| ProbeError { backend, request: request.clone(), failure };
    match timeout_at(deadline, TcpStream::connect(backend)).await {
        Err(_) => Err(fail(Failure::Timeout { stage: Stage::Connect, limit })),
        Ok(Err(source)) => Err(fail(Failure::Io { stage: Stage::Connect, source })),
        Ok(Ok(stream)) => {
            // The request fits in one segment; do not let Nagle hold it back.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

/// Longest status line accepted; a real one is about 20 bytes.
const MAX_STATUS_LINE: usize = 1024;

/// Sends `request` and returns the status line (without its line ending).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
    deadline: Instant,
    limit: Duration,
) -> Result<String, Failure> {
    let sent = async {
        stream.write_all(request).await?;
        stream.flush().await
    };
    match timeout_at(deadline, sent).await {
        Err(_) => return Err(Failure::Timeout { stage: Stage::Send, limit }),
        Ok(Err(source)) => return Err(Failure::Io { stage: Stage::Send, source }),
        Ok(Ok(())) => {}
    }
    // The status line is read straight into `buffer`, never more than MAX_STATUS_LINE + 1 bytes of it: a server
    // that sends an endless line costs one bounded buffer, not memory without end.
    let mut buffer = BytesMut::with_capacity(256);
    loop {
        if let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line = &buffer[..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            return Ok(String::from_utf8_lossy(line).into_owned());
        }
        if buffer.len() >= MAX_STATUS_LINE {
            let line = String::from_utf8_lossy(&buffer[..MAX_STATUS_LINE]).into_owned();
            return Err(Failure::BadStatusLine { line });
        }
        let room = MAX_STATUS_LINE + 1 - buffer.len();
        match timeout_at(deadline, stream.read_buf(&mut (&mut buffer).limit(room))).await {
            Err(_) => return Err(Failure::Timeout { stage: Stage::Receive, limit }),
            Ok(Err(source)) => return Err(Failure::Io { stage: Stage::Receive, source }),
            Ok(Ok(0)) if buffer.is_empty() => return Err(Failure::Closed),
            Ok(Ok(0)) => {
                let line = String::from_utf8_lossy(&buffer).into_owned();
                return Err(Failure::BadStatusLine { line });
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// Parses `HTTP/1.x NNN reason` (RFC 9112 §4) and compares the code with `expected`.
fn check_status(line: &str, expected: u16) -> Result<(), Failure> {
    let bad = || Failure::BadStatusLine { line: line.to_string() };
    let rest = line.strip_prefix("HTTP/1.").ok_or_else(bad)?;
    let mut parts = rest.splitn(3, ' ');
    let minor = parts.next().ok_or_else(bad)?;
    let code = parts.next().ok_or_else(bad)?;
    if minor.len() != 1
        || !minor.bytes().all(|b| b.is_ascii_digit())
        || code.len() != 3
        || !code.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let found: u16 = code.parse().map_err(|_| bad())?;
    if found != expected {
        return Err(Failure::Status { expected, found, line: line.to_string() });
    }
    Ok(())
}

/// For the fuzz targets in `fuzz/` only.
#[doc(hidden)]
pub mod fuzzing;

#[cfg(test)]
mod tests;
