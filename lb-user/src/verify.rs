//! `xvip verify`: from the node it runs on, checks what clients of the VIP and the health checks will meet.
//!
//! For each TCP service it connects through the VIP and to every backend directly, and:
//! - for `check = "https"` services: shows the certificate each one presents (subject, subject alternative names,
//!   validity), checks that its SANs include the VIP (as an IP address SAN) and `vip.hostname` (as a DNS SAN, or
//!   an IP SAN when the hostname is an address), checks the chain against `ca_file` (or, with `tls_verify = true`
//!   and no `ca_file`, the system CA bundle the health checks use), then asks the health endpoint;
//! - for `http` services: asks the health endpoint;
//! - for `tcp` and `none` services: connects.
//!
//! The TLS handshake sends the name clients of the VIP send (`vip.hostname` when set, else the service's
//! `server_name`), so a server that picks its certificate by SNI shows the one those clients get. Names are
//! matched the way TLS clients match them (webpki, RFC 6125: SANs only, the common name is ignored, a wildcard
//! covers exactly one left-most label). UDP services are listed and skipped.
//!
//! The connections reuse the health checker's code (`health::probe`); the checks on certificates are pure
//! functions of the certificate, the names and the time ([`check_names`], [`check_chain`], [`Certificate::parse`]).
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
};

use rustls::{
    CertificateError, RootCertStore, client::verify_server_cert_signed_by_trust_anchor, server::ParsedCertificate,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::{
    config::{CheckKind, Config, Instance, Protocol, Service},
    health::{
        self,
        probe::{self, connect_tls, request_status},
    },
};

/// What a certificate says, for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    /// RFC 4514 form: `CN=kube-apiserver, O=example`.
    pub subject: String,
    /// `DNS:kubernetes`, `IP:10.0.0.250`, in certificate order.
    pub sans: Vec<String>,
    pub not_before: String,
    pub not_after: String,
}

impl Certificate {
    /// Parses a DER certificate.
    ///
    /// # Errors
    /// A message when it is not an X.509 certificate or its SAN extension is malformed.
    pub fn parse(der: &[u8]) -> Result<Certificate, String> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let mut sans = Vec::new();
        let extension =
            cert.subject_alternative_name().map_err(|e| format!("malformed subjectAltName extension: {e}"))?;
        for name in extension.iter().flat_map(|ext| &ext.value.general_names) {
            sans.push(match name {
                GeneralName::DNSName(dns) => format!("DNS:{dns}"),
                GeneralName::IPAddress(bytes) => match <[u8; 4]>::try_from(*bytes) {
                    Ok(v4) => format!("IP:{}", IpAddr::from(v4)),
                    Err(_) => match <[u8; 16]>::try_from(*bytes) {
                        Ok(v6) => format!("IP:{}", IpAddr::from(v6)),
                        Err(_) => format!("IP:<{} bytes>", bytes.len()),
                    },
                },
                other => other.to_string(),
            });
        }
        let validity = cert.validity();
        Ok(Certificate {
            subject: cert.subject().to_string(),
            sans,
            not_before: validity.not_before.to_string(),
            not_after: validity.not_after.to_string(),
        })
    }
}

/// How one check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    /// Not checked, with the reason (not a failure).
    Skip,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub outcome: Outcome,
    pub text: String,
}

impl Check {
    fn pass(text: impl Into<String>) -> Self {
        Check { outcome: Outcome::Pass, text: text.into() }
    }
    fn fail(text: impl Into<String>) -> Self {
        Check { outcome: Outcome::Fail, text: text.into() }
    }
    fn skip(text: impl Into<String>) -> Self {
        Check { outcome: Outcome::Skip, text: text.into() }
    }
}

/// Whether the certificate `end_entity` is valid for every address of the VIP's instance and for `hostname`, as a
/// TLS client decides it.
pub fn check_names(end_entity: &CertificateDer<'_>, vips: &[IpAddr], hostname: Option<&str>) -> Check {
    let parsed = match ParsedCertificate::try_from(end_entity) {
        Ok(parsed) => parsed,
        Err(e) => return Check::fail(format!("the certificate cannot be parsed: {e}")),
    };
    let mut wanted: Vec<(String, ServerName<'static>, &str)> = vips
        .iter()
        .map(|vip| (format!("the VIP {vip}"), ServerName::IpAddress((*vip).into()), "an IP address SAN"))
        .collect();
    if let Some(name) = hostname {
        match ServerName::try_from(name.to_owned()) {
            Ok(server_name @ ServerName::IpAddress(_)) => {
                wanted.push((format!("the hostname {name}"), server_name, "an IP address SAN"));
            }
            Ok(server_name) => wanted.push((format!("the hostname {name}"), server_name, "a DNS SAN")),
            Err(_) => return Check::fail(format!("vip.hostname {name:?} is not a DNS name or IP address")),
        }
    }
    let mut present = Vec::new();
    let mut missing = Vec::new();
    for (label, name, kind) in wanted {
        match rustls::client::verify_server_name(&parsed, &name) {
            Ok(()) => present.push(label),
            Err(_) => missing.push(format!("{label} ({kind})")),
        }
    }
    let unset = if hostname.is_none() { " (vip.hostname is not set, so only the VIP is checked)" } else { "" };
    if missing.is_empty() {
        Check::pass(format!("SANs include {}{unset}", present.join(" and ")))
    } else {
        Check::fail(format!(
            "SANs lack {}: clients that connect by that name will refuse this certificate{unset}",
            missing.join(" and ")
        ))
    }
}

/// Whether `chain` (the end-entity certificate first, then what the server sent with it) leads to one of `roots`
/// and is valid at `now`. `source` names the roots in the message (`ca_file /etc/kubernetes/pki/ca.crt`).
pub fn check_chain(chain: &[CertificateDer<'_>], roots: &RootCertStore, source: &str, now: UnixTime) -> Check {
    let Some((end_entity, intermediates)) = chain.split_first() else {
        return Check::fail("the server sent no certificate");
    };
    let parsed = match ParsedCertificate::try_from(end_entity) {
        Ok(parsed) => parsed,
        Err(e) => return Check::fail(format!("the certificate cannot be parsed: {e}")),
    };
    let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    match verify_server_cert_signed_by_trust_anchor(&parsed, roots, intermediates, now, algorithms.all) {
        Ok(()) => Check::pass(format!("chain verifies against {source}")),
        Err(rustls::Error::InvalidCertificate(why)) => {
            let why = match why {
                CertificateError::UnknownIssuer => "its issuer is not among those CAs".to_owned(),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => "it has expired".to_owned(),
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "it is not valid yet".to_owned()
                }
                CertificateError::BadSignature => "a signature in the chain is wrong".to_owned(),
                other => format!("{other:?}"),
            };
            Check::fail(format!("chain does not verify against {source}: {why}"))
        }
        Err(other) => Check::fail(format!("chain does not verify against {source}: {other}")),
    }
}

/// One place connected to: the VIP or a backend.
#[derive(Clone, Debug)]
pub struct EndpointReport {
    /// `VIP 10.0.0.250:443`, `backend 10.0.0.21:6443`.
    pub label: String,
    /// What the server presented (https services that answered the handshake).
    pub certificate: Option<Certificate>,
    pub checks: Vec<Check>,
}

#[derive(Clone, Debug)]
pub struct ServiceReport {
    /// `kube-apiserver: 443/tcp, nat, check https GET /readyz`.
    pub heading: String,
    pub endpoints: Vec<EndpointReport>,
    /// Why nothing was checked (udp services).
    pub skipped: Option<String>,
}

/// The whole outcome of `xvip verify`.
#[derive(Clone, Debug)]
pub struct Report {
    pub heading: String,
    pub services: Vec<ServiceReport>,
}

impl Report {
    fn all_checks(&self) -> impl Iterator<Item = &Check> {
        self.services.iter().flat_map(|s| &s.endpoints).flat_map(|e| &e.checks)
    }

    /// Checks that failed; `xvip verify` exits 1 unless this is 0.
    pub fn failures(&self) -> usize {
        self.all_checks().filter(|c| c.outcome == Outcome::Fail).count()
    }

    /// Checks that passed or failed (skipped ones are not counted).
    pub fn checks(&self) -> usize {
        self.all_checks().filter(|c| c.outcome != Outcome::Skip).count()
    }

    /// The report for people.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.heading);
        for service in &self.services {
            let _ = writeln!(s, "\nservice {}", service.heading);
            if let Some(why) = &service.skipped {
                let _ = writeln!(s, "  skipped: {why}");
            }
            for e in &service.endpoints {
                let _ = writeln!(s, "  {}", e.label);
                if let Some(c) = &e.certificate {
                    let sans = if c.sans.is_empty() { "none".to_owned() } else { c.sans.join(", ") };
                    let _ = writeln!(s, "    subject  {}", c.subject);
                    let _ = writeln!(s, "    SANs     {sans}");
                    let _ = writeln!(s, "    valid    {} to {}", c.not_before, c.not_after);
                }
                for check in &e.checks {
                    let word = match check.outcome {
                        Outcome::Pass => "ok",
                        Outcome::Fail => "FAIL",
                        Outcome::Skip => "skip",
                    };
                    let _ = writeln!(s, "    {word:<8} {}", check.text);
                }
            }
        }
        let (failed, total) = (self.failures(), self.checks());
        if failed == 0 {
            let _ = writeln!(s, "\nverify: all {total} checks hold");
        } else {
            let _ = writeln!(s, "\nverify: {failed} of {total} checks failed");
        }
        s
    }
}

/// Runs every check of `config` from this node. `local_roles` are this node's roles by instance name if a daemon
/// answers on the config's status socket (a node cannot reach a VIP while it serves it: the hint says so).
pub async fn verify(path: &Path, config: &Config, local_roles: Option<&BTreeMap<String, String>>) -> Report {
    let several = config.instances.len() > 1;
    let daemon = match (local_roles, config.instances.as_slice()) {
        (None, _) => "no xvip daemon answers here".to_owned(),
        (Some(roles), [only]) => {
            roles.get(&only.name).map_or_else(|| "a daemon answers here".to_owned(), |r| format!("this node is {r}"))
        }
        (Some(_), _) => "a daemon answers here".to_owned(),
    };
    let heading = match config.instances.as_slice() {
        [only] if !several => format!(
            "xvip verify {}: VIP {}{}; {daemon}",
            path.display(),
            only.vip.addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            only.vip.hostname.as_deref().map(|h| format!(" ({h})")).unwrap_or_default()
        ),
        _ => format!("xvip verify {}: {} instances; {daemon}", path.display(), config.instances.len()),
    };
    let mut services = Vec::new();
    for instance in &config.instances {
        let role = local_roles.and_then(|roles| roles.get(&instance.name)).map(String::as_str);
        for service in &instance.services {
            let mut report = verify_service(instance, service, role).await;
            if several {
                report.heading = format!("{}/{}", instance.name, report.heading);
            }
            services.push(report);
        }
    }
    Report { heading, services }
}

async fn verify_service(config: &Instance, service: &Service, local_role: Option<&str>) -> ServiceReport {
    let h = &service.health;
    let check = match h.check {
        CheckKind::Http | CheckKind::Https => format!("check {} GET {}", h.check, h.path),
        other => format!("check {other}"),
    };
    let heading = format!("{}: {}/{}, {}, {check}", service.name, service.port, service.protocol, service.forwarding);
    if service.protocol == Protocol::Udp {
        return ServiceReport {
            heading,
            endpoints: Vec::new(),
            skipped: Some("a udp service: nothing to connect to".into()),
        };
    }
    let mut settings = health::Settings::from(h);
    // The name clients of the VIP send, so an SNI-selected certificate is the one they get.
    settings.server_name = config.vip.hostname.clone().or_else(|| h.server_name.clone());
    let roots = match h.check {
        CheckKind::Https => Some(probe::trust_roots(&settings)),
        _ => None,
    };
    let mut endpoints = Vec::new();
    for vip in vip_endpoints(config, service) {
        let mut report = verify_endpoint(config, format!("VIP {vip}"), vip, &settings, roots.as_ref()).await;
        if local_role == Some("active") && report.checks.iter().any(|c| c.text.starts_with("connect to")) {
            report.checks.push(Check::skip(
                "this node is the active one, and a node cannot reach the VIP it serves: run verify on another node \
                 to check through the VIP",
            ));
        }
        endpoints.push(report);
    }
    for b in &service.backends {
        let addr = SocketAddr::from((b.address, b.port));
        endpoints.push(verify_endpoint(config, format!("backend {addr}"), addr, &settings, roots.as_ref()).await);
    }
    ServiceReport { heading, endpoints, skipped: None }
}

/// Where clients reach `service` through the VIP: its port on every address of the instance that carries it (the
/// addresses of each family the service has backends of: a NAT service of a dual-stack instance may have IPv4
/// backends only).
pub fn vip_endpoints(config: &Instance, service: &Service) -> Vec<SocketAddr> {
    let carried = |a: &&IpAddr| service.backends.iter().any(|b| b.address.is_ipv4() == a.is_ipv4());
    config.vip.addresses.iter().filter(carried).map(|a| SocketAddr::new(*a, service.port)).collect()
}

async fn verify_endpoint(
    config: &Instance,
    label: String,
    addr: SocketAddr,
    settings: &health::Settings,
    roots: Option<&Result<Option<(RootCertStore, String)>, String>>,
) -> EndpointReport {
    let mut report = EndpointReport { label, certificate: None, checks: Vec::new() };
    let result = match settings.kind {
        health::CheckKind::Tcp | health::CheckKind::None => probe::probe_tcp(addr, settings.timeout).await,
        health::CheckKind::Http => probe::probe_http(addr, settings).await,
        health::CheckKind::Https => {
            // Accept whatever the server presents so it can be shown; the checks below judge it.
            let show = health::Settings { tls_verify: false, ca_file: None, ..settings.clone() };
            let connector = match probe::tls_client_config(&show) {
                Ok(tls) => TlsConnector::from(Arc::new(tls)),
                Err(why) => {
                    report.checks.push(Check::fail(format!("TLS setup: {why}")));
                    return report;
                }
            };
            let deadline = Instant::now() + settings.timeout;
            match connect_tls(addr, &show, &connector, deadline).await {
                Err(e) => Err(e),
                Ok(tls) => {
                    let chain: Vec<CertificateDer<'static>> =
                        tls.get_ref().1.peer_certificates().map(<[_]>::to_vec).unwrap_or_default();
                    certificate_checks(config, &chain, roots, &mut report);
                    request_status(tls, addr, settings, deadline).await
                }
            }
        }
    };
    report.checks.push(match result {
        Ok(what) => Check::pass(what.replace(&format!(" on {addr}"), "")),
        Err(e) => Check::fail(e.to_string()),
    });
    report
}

/// Shows the certificate and checks its names and chain.
fn certificate_checks(
    config: &Instance,
    chain: &[CertificateDer<'static>],
    roots: Option<&Result<Option<(RootCertStore, String)>, String>>,
    report: &mut EndpointReport,
) {
    let Some(end_entity) = chain.first() else {
        report.checks.push(Check::fail("the server sent no certificate"));
        return;
    };
    match Certificate::parse(end_entity) {
        Ok(c) => report.certificate = Some(c),
        Err(e) => report.checks.push(Check::fail(format!("certificate: {e}"))),
    }
    report.checks.push(check_names(end_entity, &config.vip.addresses, config.vip.hostname.as_deref()));
    report.checks.push(match roots {
        None | Some(Ok(None)) => Check::skip("chain not checked: tls_verify = false and no ca_file"),
        Some(Err(why)) => Check::fail(format!("chain not checked: {why}")),
        Some(Ok(Some((roots, source)))) => check_chain(chain, roots, source, UnixTime::now()),
    });
}

#[cfg(test)]
mod tests;
