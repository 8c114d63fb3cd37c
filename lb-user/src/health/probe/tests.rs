//! Probe tests against local servers on 127.0.0.1:0.
//!
//! The TLS material below was generated once with OpenSSL 3.0 (`openssl ca`, so that validity could be set to
//! 2020-01-01..2120-01-01 and a skewed test clock cannot make it "not yet valid"): an EC P-256 CA `CN=xvip-test-ca`
//! (`basicConstraints=critical,CA:TRUE`, `keyUsage=critical,keyCertSign`) and a leaf `CN=xvip-test` signed by it
//! (`basicConstraints=critical,CA:FALSE`, `keyUsage=critical,digitalSignature`, `extendedKeyUsage=serverAuth`,
//! `subjectAltName=IP:127.0.0.1,DNS:xvip-test`). A CA plus a leaf rather than one self-signed certificate because
//! webpki refuses a CA certificate as the server's own (`CaUsedAsEndEntity`), and the leaf then doubles as a wrong
//! trust anchor.

const CA_PEM: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBYDCCAQegAwIBAgIBATAKBggqhkjOPQQDAjAXMRUwEwYDVQQDDAx4dmlwLXRl\n\
c3QtY2EwIBcNMjAwMTAxMDAwMDAwWhgPMjEyMDAxMDEwMDAwMDBaMBcxFTATBgNV\n\
BAMMDHh2aXAtdGVzdC1jYTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABHqP1tkt\n\
3yyx+psFjCz4NTOREWLchxSdMfWkbhynt9EAcKiqMl4pM8mfo/TzNHlpP1Tei3VT\n\
oWE25oDPv15jCG6jQjBAMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgIE\n\
MB0GA1UdDgQWBBR6H1GSMY0R9QPa3NAfyGsqocg/PzAKBggqhkjOPQQDAgNHADBE\n\
AiBpF/joolEp/dFgEAJ59ULHJT5N28rq6o7JoKE50OZbRQIgHOvoQ29VSQL9MYIY\n\
5tPBI+PGrdvx0nCsGI6axnsagRw=\n\
-----END CERTIFICATE-----\n";

const LEAF_PEM: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBrzCCAVWgAwIBAgIBAjAKBggqhkjOPQQDAjAXMRUwEwYDVQQDDAx4dmlwLXRl\n\
c3QtY2EwIBcNMjAwMTAxMDAwMDAwWhgPMjEyMDAxMDEwMDAwMDBaMBQxEjAQBgNV\n\
BAMMCXh2aXAtdGVzdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABGfWoBaElkOl\n\
g8apR1Ov3c5JgtQD1hoSP8EQycPCdGiEEPhDhn24EXTeuN8eXoI7mYEF4BYVHlne\n\
JPtbrGxuRY2jgZIwgY8wDAYDVR0TAQH/BAIwADAOBgNVHQ8BAf8EBAMCB4AwEwYD\n\
VR0lBAwwCgYIKwYBBQUHAwEwGgYDVR0RBBMwEYcEfwAAAYIJeHZpcC10ZXN0MB8G\n\
A1UdIwQYMBaAFHofUZIxjRH1A9rc0B/IayqhyD8/MB0GA1UdDgQWBBQUjAkZHqxo\n\
tIgVjyNkuP7VODW9kzAKBggqhkjOPQQDAgNIADBFAiEApkrAOd8XMpu6lg+7ArYH\n\
s2H1cq/ANeINKO8sXjHwu8gCIBpMIN2+5lYMvpBIBkHyzmAESJM+Srk9XaDoPy3q\n\
V4mA\n\
-----END CERTIFICATE-----\n";

const LEAF_KEY_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg7p3udToMAJPN4jOB\n\
m0eV9hWVvG+fOUXCSKjkFU0BaLShRANCAARn1qAWhJZDpYPGqUdTr93OSYLUA9Ya\n\
Ej/BEMnDwnRohBD4Q4Z9uBF03rjfHl6CO5mBBeAWFR5Z3iT7W6xsbkWN\n\
-----END PRIVATE KEY-----\n";

use rustls::ServerConfig;
use rustls_pki_types::PrivateKeyDer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::*;

const OK_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

/// A listener that serves one connection with `response`, and hands back the request it read.
async fn serve_once(response: &'static [u8]) -> (SocketAddr, JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a local port");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let request = read_request(&mut stream).await;
        stream.write_all(response).await.expect("write the response");
        request
    });
    (addr, task)
}

/// Reads up to the blank line that ends the request head.
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut request = Vec::new();
    let mut chunk = [0u8; 512];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.expect("read the request");
        if n == 0 {
            break;
        }
        request.extend_from_slice(&chunk[..n]);
    }
    request
}

/// A server that accepts connections and then says nothing, holding them open.
async fn silent_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a local port");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// A local port with nothing listening on it.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a local port");
    listener.local_addr().expect("local address")
}

/// What the TLS test server saw of the client.
#[derive(Debug, Default)]
struct Seen {
    request: Vec<u8>,
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
}

/// A TLS server with the leaf certificate, offering ALPN `h2` and `http/1.1` like kube-apiserver, that serves one
/// connection with `response`.
async fn tls_serve_once(response: &'static [u8]) -> (SocketAddr, JoinHandle<Seen>) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(LEAF_PEM.as_bytes())
        .collect::<Result<_, _>>()
        .expect("the embedded leaf certificate parses");
    let key = PrivateKeyDer::from_pem_slice(LEAF_KEY_PEM.as_bytes()).expect("the embedded key parses");
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("certificate and key match");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a local port");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let Ok(mut tls) = acceptor.accept(stream).await else {
            // The client refused our certificate: that is what some tests expect.
            return Seen::default();
        };
        let sni = tls.get_ref().1.server_name().map(str::to_string);
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let request = read_request(&mut tls).await;
        tls.write_all(response).await.expect("write the response");
        tls.shutdown().await.expect("close_notify");
        Seen { request, sni, alpn }
    });
    (addr, task)
}

/// A file under the system temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!("xvip-health-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("write a temp file");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn http(timeout: Duration) -> Settings {
    Settings { kind: CheckKind::Http, path: "/readyz".to_string(), timeout, ..Settings::default() }
}

fn https(tls_verify: bool, ca_file: Option<&Path>, server_name: Option<&str>) -> Settings {
    Settings {
        kind: CheckKind::Https,
        path: "/readyz".to_string(),
        timeout: Duration::from_secs(10),
        tls_verify,
        ca_file: ca_file.map(Path::to_path_buf),
        server_name: server_name.map(str::to_string),
        ..Settings::default()
    }
}

async fn run(backend: SocketAddr, settings: Settings) -> Result<String, ProbeError> {
    Prober::new(backend, settings).probe().await
}

#[tokio::test]
async fn tcp_succeeds_when_the_port_accepts() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a local port");
    let backend = listener.local_addr().expect("local address");
    assert_eq!(probe_tcp(backend, Duration::from_secs(10)).await.expect("up"), format!("connected to {backend}"));
}

#[tokio::test]
async fn tcp_fails_with_connection_refused_on_a_closed_port() {
    let backend = closed_port().await;
    let error = probe_tcp(backend, Duration::from_secs(10)).await.expect_err("nothing listens");
    match &error.failure {
        Failure::Io { stage: Stage::Connect, source } => {
            assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused)
        }
        other => panic!("expected a refused connect, got {other:?}"),
    }
    assert!(error.to_string().starts_with(&format!("connect to {backend}: ")), "{error}");
}

#[tokio::test]
async fn http_sends_a_minimal_get_and_accepts_the_expected_status() {
    let (backend, server) = serve_once(OK_RESPONSE).await;
    let ok = probe_http(backend, &http(Duration::from_secs(10))).await.expect("200 is expected");
    assert_eq!(ok, format!("GET /readyz on {backend}: HTTP/1.1 200 OK"));
    let request = String::from_utf8(server.await.expect("server task")).expect("ASCII request");
    assert_eq!(
        request,
        format!(
            "GET /readyz HTTP/1.1\r\nHost: {backend}\r\nUser-Agent: xvip-health\r\nAccept: */*\r\n\
             Connection: close\r\n\r\n"
        )
    );
}

#[tokio::test]
async fn http_fails_on_another_status() {
    let (backend, _server) = serve_once(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n").await;
    let error = probe_http(backend, &http(Duration::from_secs(10))).await.expect_err("500 is not 200");
    assert!(matches!(error.failure, Failure::Status { expected: 200, found: 500, .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("GET /readyz on {backend}: expected status 200, got 500 (\"HTTP/1.1 500 Internal Server Error\")")
    );
}

#[tokio::test]
async fn http_accepts_a_configured_non_200_status() {
    let (backend, _server) = serve_once(b"HTTP/1.0 204 No Content\r\n\r\n").await;
    let settings = Settings { expect_status: 204, ..http(Duration::from_secs(10)) };
    assert!(probe_http(backend, &settings).await.is_ok());
}

#[tokio::test]
async fn http_times_out_on_a_server_that_accepts_but_never_answers() {
    let backend = silent_server().await;
    let limit = Duration::from_millis(200);
    let error = probe_http(backend, &http(limit)).await.expect_err("no answer");
    assert!(matches!(error.failure, Failure::Timeout { stage: Stage::Receive, limit: l } if l == limit), "{error:?}");
    assert_eq!(error.to_string(), format!("GET /readyz on {backend}: reading the status line: no answer within 200ms"));
}

#[tokio::test]
async fn http_fails_on_a_connection_refused() {
    let backend = closed_port().await;
    let error = probe_http(backend, &http(Duration::from_secs(10))).await.expect_err("nothing listens");
    assert!(matches!(error.failure, Failure::Io { stage: Stage::Connect, .. }), "{error:?}");
}

#[tokio::test]
async fn http_rejects_an_answer_that_is_not_http() {
    let (backend, _server) = serve_once(b"SSH-2.0-OpenSSH_9.6\r\n").await;
    let error = probe_http(backend, &http(Duration::from_secs(10))).await.expect_err("not HTTP");
    assert!(matches!(&error.failure, Failure::BadStatusLine { line } if line == "SSH-2.0-OpenSSH_9.6"), "{error:?}");
}

#[tokio::test]
async fn http_rejects_a_status_line_that_never_ends() {
    static ENDLESS: [u8; 2000] = [b'A'; 2000];
    let (backend, _server) = serve_once(&ENDLESS).await;
    let error = probe_http(backend, &http(Duration::from_secs(10))).await.expect_err("no line end");
    assert!(matches!(&error.failure, Failure::BadStatusLine { line } if line.len() == MAX_STATUS_LINE), "{error:?}");
}

#[tokio::test]
async fn an_endless_status_line_is_read_no_further_than_the_limit() {
    // A megabyte without a line end: the probe must stop reading at the limit, not buffer what the server sends.
    let endless = vec![b'A'; 1 << 20];
    let mut unread: &[u8] = &endless;
    let stream = tokio::io::join(&mut unread, tokio::io::sink());
    let deadline = Instant::now() + Duration::from_secs(10);
    let failure =
        exchange(stream, b"GET / HTTP/1.1\r\n\r\n", deadline, Duration::from_secs(10)).await.expect_err("no line end");
    assert!(matches!(&failure, Failure::BadStatusLine { line } if line.len() == MAX_STATUS_LINE), "{failure:?}");
    let read = endless.len() - unread.len();
    assert!(
        read <= MAX_STATUS_LINE + 1,
        "read {read} bytes of an endless line, expected at most {}",
        MAX_STATUS_LINE + 1
    );
}

#[tokio::test]
async fn http_rejects_a_status_line_cut_by_a_close() {
    let (backend, _server) = serve_once(b"HTTP/1.1 200 O").await;
    let error = probe_http(backend, &http(Duration::from_secs(10))).await.expect_err("incomplete line");
    assert!(matches!(&error.failure, Failure::BadStatusLine { line } if line == "HTTP/1.1 200 O"), "{error:?}");
}

#[tokio::test]
async fn http_reports_a_close_before_the_status_line() {
    let (backend, _server) = serve_once(b"").await;
    let error = probe_http(backend, &http(Duration::from_secs(10))).await.expect_err("closed");
    assert!(matches!(error.failure, Failure::Closed), "{error:?}");
    assert_eq!(error.to_string(), format!("GET /readyz on {backend}: connection closed before the status line"));
}

#[tokio::test]
async fn http_refuses_a_path_that_would_inject_headers_without_connecting() {
    // A closed port: if the probe tried to connect, the failure would be a refused connect, not Setup.
    let backend = closed_port().await;
    for path in ["/readyz HTTP/1.1\r\nX-Evil: 1", "readyz", "/a b", ""] {
        let settings = Settings { path: path.to_string(), ..http(Duration::from_secs(10)) };
        let error = probe_http(backend, &settings).await.expect_err("bad path");
        assert!(matches!(error.failure, Failure::Setup(_)), "{path:?}: {error:?}");
    }
}

#[test]
fn status_lines_are_parsed_strictly() {
    assert!(check_status("HTTP/1.1 200 OK", 200).is_ok());
    assert!(check_status("HTTP/1.0 200", 200).is_ok(), "the reason phrase is optional");
    for bad in ["HTTP/2 200 OK", "HTTP/1.1 20 OK", "HTTP/1.1 2000 OK", "HTTP/1.11 200 OK", "http/1.1 200 OK", ""] {
        assert!(matches!(check_status(bad, 200), Err(Failure::BadStatusLine { .. })), "{bad:?}");
    }
    assert!(matches!(check_status("HTTP/1.1 503 Service Unavailable", 200), Err(Failure::Status { found: 503, .. })));
}

#[tokio::test]
async fn https_without_verification_accepts_a_certificate_from_an_unknown_ca() {
    let (backend, server) = tls_serve_once(OK_RESPONSE).await;
    let ok = run(backend, https(false, None, None)).await.expect("tls_verify = false accepts any certificate");
    assert_eq!(ok, format!("GET /readyz on {backend} over TLS: HTTP/1.1 200 OK"));
    let seen = server.await.expect("server task");
    assert!(seen.request.starts_with(b"GET /readyz HTTP/1.1\r\n"), "{:?}", String::from_utf8_lossy(&seen.request));
    assert_eq!(seen.alpn.as_deref(), Some(&b"http/1.1"[..]), "the probe speaks HTTP/1.1, so it must not get h2");
}

#[tokio::test]
async fn https_with_ca_file_verifies_the_backend_ip_as_the_name() {
    let ca = TempFile::new("ca-ip.pem", CA_PEM);
    let (backend, server) = tls_serve_once(OK_RESPONSE).await;
    run(backend, https(true, Some(ca.path()), None)).await.expect("127.0.0.1 is an IP SAN of the leaf");
    let seen = server.await.expect("server task");
    assert_eq!(seen.sni, None, "no SNI is sent for an IP address");
}

#[tokio::test]
async fn https_with_ca_file_and_server_name_verifies_that_name_and_sends_it() {
    let ca = TempFile::new("ca-name.pem", CA_PEM);
    let (backend, server) = tls_serve_once(OK_RESPONSE).await;
    run(backend, https(true, Some(ca.path()), Some("xvip-test"))).await.expect("xvip-test is a DNS SAN");
    let seen = server.await.expect("server task");
    assert_eq!(seen.sni.as_deref(), Some("xvip-test"));
    let request = String::from_utf8_lossy(&seen.request);
    assert!(request.contains("\r\nHost: xvip-test\r\n"), "{request:?}");
}

#[tokio::test]
async fn https_with_ca_file_rejects_a_name_the_certificate_does_not_hold() {
    let ca = TempFile::new("ca-wrong-name.pem", CA_PEM);
    let (backend, _server) = tls_serve_once(OK_RESPONSE).await;
    let error = run(backend, https(true, Some(ca.path()), Some("kubernetes"))).await.expect_err("wrong name");
    assert!(matches!(error.failure, Failure::Io { stage: Stage::Handshake, .. }), "{error:?}");
    assert!(error.to_string().contains("certificate not valid for name \"kubernetes\""), "{error}");
}

#[tokio::test]
async fn https_with_ca_file_rejects_a_certificate_from_another_ca() {
    // The leaf itself as the only trust anchor: the server's chain does not lead to it.
    let wrong_ca = TempFile::new("wrong-ca.pem", LEAF_PEM);
    let (backend, _server) = tls_serve_once(OK_RESPONSE).await;
    let error = run(backend, https(true, Some(wrong_ca.path()), None)).await.expect_err("untrusted issuer");
    assert!(matches!(error.failure, Failure::Io { stage: Stage::Handshake, .. }), "{error:?}");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
}

#[tokio::test]
async fn https_handshake_is_bounded_by_the_timeout() {
    let backend = silent_server().await;
    let settings = Settings { timeout: Duration::from_millis(200), ..https(false, None, None) };
    let error = run(backend, settings).await.expect_err("no TLS answer");
    assert!(matches!(error.failure, Failure::Timeout { stage: Stage::Handshake, .. }), "{error:?}");
}

#[tokio::test]
async fn https_reports_another_status_like_http() {
    let (backend, _server) = tls_serve_once(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
    let error = run(backend, https(false, None, None)).await.expect_err("503");
    assert!(matches!(error.failure, Failure::Status { expected: 200, found: 503, .. }), "{error:?}");
}

#[tokio::test]
async fn verification_without_ca_file_uses_the_first_system_bundle_found() {
    let bundle = TempFile::new("system-bundle.pem", CA_PEM);
    let candidates = [std::env::temp_dir().join("xvip-health-no-such-bundle.pem"), bundle.path().to_path_buf()];
    let config = tls_client_config_with(&https(true, None, None), &candidates).expect("the second candidate exists");
    let (backend, _server) = tls_serve_once(OK_RESPONSE).await;
    let connector = TlsConnector::from(Arc::new(config));
    probe_https(backend, &https(true, None, None), &connector).await.expect("the bundle holds our CA");
}

#[test]
fn verification_without_ca_file_or_system_bundle_is_refused_with_the_remedy() {
    let missing = [std::env::temp_dir().join("xvip-health-no-such-bundle.pem")];
    let error = tls_client_config_with(&https(true, None, None), &missing).expect_err("no trust anchor");
    assert!(
        error.starts_with("tls_verify = true without ca_file needs the system CA bundle, found none of "),
        "{error}"
    );
    assert!(error.contains("xvip-health-no-such-bundle.pem"), "{error}");
    assert!(error.ends_with("set ca_file or tls_verify = false"), "{error}");
}

#[test]
fn an_unreadable_or_empty_ca_file_is_named_in_the_error() {
    let missing = std::env::temp_dir().join(format!("xvip-health-{}-missing.pem", std::process::id()));
    let error = tls_client_config(&https(true, Some(&missing), None)).expect_err("missing file");
    assert!(error.starts_with(&format!("ca_file {}: ", missing.display())), "{error}");

    let empty = TempFile::new("no-cert.pem", "not a certificate\n");
    let error = tls_client_config(&https(true, Some(empty.path()), None)).expect_err("no certificate");
    assert!(error.contains("found none"), "{error}");
    assert!(error.contains(&empty.path().display().to_string()), "{error}");
}

#[tokio::test]
async fn a_ca_file_that_appears_later_is_picked_up_by_the_next_probe() {
    let path = std::env::temp_dir().join(format!("xvip-health-{}-late-ca.pem", std::process::id()));
    let (backend, _server) = tls_serve_once(OK_RESPONSE).await;
    let mut prober = Prober::new(backend, https(true, Some(&path), None));
    let error = prober.probe().await.expect_err("no ca_file yet");
    assert!(matches!(error.failure, Failure::Setup(_)), "{error:?}");
    let _ca = TempFile::new("late-ca.pem", CA_PEM);
    assert_eq!(_ca.path(), path);
    prober.probe().await.expect("the CA is read on the next probe");
}

#[tokio::test]
async fn a_rotated_ca_file_is_read_again_without_a_restart() {
    // First the wrong anchor (the leaf itself), so the backend's certificate is refused...
    let ca = TempFile::new("rotated-ca.pem", LEAF_PEM);
    let (backend, _server) = tls_serve_once(OK_RESPONSE).await;
    let mut prober = Prober::new(backend, https(true, Some(ca.path()), None));
    let error = prober.probe().await.expect_err("the old CA does not sign the backend's certificate");
    assert!(matches!(error.failure, Failure::Io { stage: Stage::Handshake, .. }), "{error:?}");
    // ...then the operator rotates the file in place (a new file renamed over it, as tools do).
    let fresh = TempFile::new("rotated-ca.pem.new", CA_PEM);
    std::fs::rename(fresh.path(), ca.path()).expect("rename over the old CA");
    let (backend2, _server2) = tls_serve_once(OK_RESPONSE).await;
    prober.backend = backend2;
    prober.probe().await.expect("the rotated CA is used by the next probe");
    // And back: a CA that no longer signs the backend takes effect just as fast.
    let old = TempFile::new("rotated-ca.pem.old", LEAF_PEM);
    std::fs::rename(old.path(), ca.path()).expect("rename over the CA");
    let (backend3, _server3) = tls_serve_once(OK_RESPONSE).await;
    prober.backend = backend3;
    prober.probe().await.expect_err("the CA was rotated again");
}

#[tokio::test]
async fn check_none_always_succeeds_without_connecting() {
    let backend = closed_port().await;
    let settings = Settings { kind: CheckKind::None, ..Settings::default() };
    assert!(run(backend, settings).await.is_ok());
}
