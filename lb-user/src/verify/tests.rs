//! The pure certificate checks, on certificates made here with rcgen.
use std::net::{IpAddr, Ipv4Addr};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, UnixTime};

use super::*;

const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 250));

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

/// A server certificate for `sans` (IP addresses become IP SANs), signed by `ca`.
fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, sans: &[&str]) -> CertificateDer<'static> {
    leaf_with(ca, sans, |_| {})
}

fn leaf_with(
    ca: &CertifiedIssuer<'static, KeyPair>,
    sans: &[&str],
    adjust: impl FnOnce(&mut CertificateParams),
) -> CertificateDer<'static> {
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
    params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    adjust(&mut params);
    let key = KeyPair::generate().expect("key");
    params.signed_by(&key, ca).expect("signed").der().clone()
}

fn roots(ca: &CertifiedIssuer<'static, KeyPair>) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).expect("root");
    roots
}

#[test]
fn a_certificate_with_the_vip_and_the_hostname_passes() {
    let ca = ca("test CA");
    let cert = leaf(&ca, &["kubernetes", "api.example.com", "10.0.0.250", "10.0.0.21"]);
    let check = check_names(&cert, &[VIP], Some("api.example.com"));
    assert_eq!(check, Check::pass("SANs include the VIP 10.0.0.250 and the hostname api.example.com"));
}

#[test]
fn a_missing_vip_san_is_named() {
    let ca = ca("test CA");
    let cert = leaf(&ca, &["api.example.com", "10.0.0.21"]);
    let check = check_names(&cert, &[VIP], Some("api.example.com"));
    assert_eq!(check.outcome, Outcome::Fail);
    assert_eq!(
        check.text,
        "SANs lack the VIP 10.0.0.250 (an IP address SAN): clients that connect by that name will refuse this \
         certificate"
    );
}

#[test]
fn a_missing_hostname_and_vip_are_both_named() {
    let ca = ca("test CA");
    let cert = leaf(&ca, &["kubernetes", "10.0.0.21"]);
    let check = check_names(&cert, &[VIP], Some("api.example.com"));
    assert_eq!(check.outcome, Outcome::Fail);
    assert!(
        check.text.starts_with(
            "SANs lack the VIP 10.0.0.250 (an IP address SAN) and the hostname api.example.com (a DNS SAN)"
        ),
        "{}",
        check.text
    );
}

#[test]
fn the_vip_as_a_dns_name_or_the_common_name_does_not_count() {
    let ca = ca("test CA");
    // The VIP written as a DNS SAN, and the hostname only as the subject's CN: TLS clients accept neither.
    let cert = leaf_with(&ca, &[], |p| {
        p.subject_alt_names = vec![rcgen::SanType::DnsName("kubernetes".try_into().expect("dns"))];
        p.distinguished_name.push(DnType::CommonName, "api.example.com");
    });
    let check = check_names(&cert, &[VIP], Some("api.example.com"));
    assert_eq!(check.outcome, Outcome::Fail);
    assert!(check.text.contains("the VIP 10.0.0.250") && check.text.contains("api.example.com"), "{}", check.text);
}

#[test]
fn a_wildcard_covers_one_label() {
    let ca = ca("test CA");
    let cert = leaf(&ca, &["*.example.com", "10.0.0.250"]);
    assert_eq!(check_names(&cert, &[VIP], Some("api.example.com")).outcome, Outcome::Pass);
    assert_eq!(check_names(&cert, &[VIP], Some("a.b.example.com")).outcome, Outcome::Fail);
}

#[test]
fn without_a_hostname_only_the_vip_is_checked_and_the_report_says_so() {
    let ca = ca("test CA");
    let cert = leaf(&ca, &["10.0.0.250"]);
    let check = check_names(&cert, &[VIP], None);
    assert_eq!(check.outcome, Outcome::Pass);
    assert!(check.text.contains("vip.hostname is not set"), "{}", check.text);
}

#[test]
fn a_hostname_that_is_an_address_needs_an_ip_san() {
    let ca = ca("test CA");
    let cert = leaf(&ca, &["10.0.0.250", "192.0.2.7"]);
    assert_eq!(check_names(&cert, &[VIP], Some("192.0.2.7")).outcome, Outcome::Pass);
    let check = check_names(&cert, &[VIP], Some("192.0.2.8"));
    assert!(check.text.contains("the hostname 192.0.2.8 (an IP address SAN)"), "{}", check.text);
}

#[test]
fn the_chain_verifies_against_its_ca_only() {
    let ca_a = ca("CA a");
    let ca_b = ca("CA b");
    let cert = leaf(&ca_a, &["10.0.0.250"]);
    assert_eq!(
        check_chain(std::slice::from_ref(&cert), &roots(&ca_a), "ca_file a.pem", UnixTime::now()),
        Check::pass("chain verifies against ca_file a.pem")
    );
    assert_eq!(
        check_chain(&[cert], &roots(&ca_b), "ca_file b.pem", UnixTime::now()),
        Check::fail("chain does not verify against ca_file b.pem: its issuer is not among those CAs")
    );
}

#[test]
fn a_self_signed_server_certificate_is_not_trusted() {
    let ca = ca("test CA");
    let params = CertificateParams::new(vec!["10.0.0.250".to_string()]).expect("params");
    let self_signed = params.self_signed(&KeyPair::generate().expect("key")).expect("cert").der().clone();
    assert_eq!(check_chain(&[self_signed], &roots(&ca), "ca_file ca.pem", UnixTime::now()).outcome, Outcome::Fail);
}

#[test]
fn an_intermediate_sent_by_the_server_completes_the_chain() {
    let root = ca("root");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "intermediate");
    let intermediate = CertifiedIssuer::signed_by(params, KeyPair::generate().expect("key"), &root).expect("int");
    let cert = leaf(&intermediate, &["10.0.0.250"]);
    let roots = roots(&root);
    assert_eq!(check_chain(std::slice::from_ref(&cert), &roots, "ca", UnixTime::now()).outcome, Outcome::Fail);
    assert_eq!(check_chain(&[cert, intermediate.der().clone()], &roots, "ca", UnixTime::now()).outcome, Outcome::Pass);
}

#[test]
fn an_expired_certificate_fails_the_chain_check() {
    let ca = ca("test CA");
    let cert = leaf_with(&ca, &["10.0.0.250"], |p| {
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(2021, 1, 1);
    });
    assert_eq!(
        check_chain(&[cert], &roots(&ca), "ca_file ca.pem", UnixTime::now()),
        Check::fail("chain does not verify against ca_file ca.pem: it has expired")
    );
}

#[test]
fn no_certificate_at_all_fails() {
    assert_eq!(check_chain(&[], &RootCertStore::empty(), "ca", UnixTime::now()).outcome, Outcome::Fail);
}

#[test]
fn the_certificate_is_shown_with_its_subject_sans_and_validity() {
    let ca = ca("test CA");
    let cert = leaf_with(&ca, &["api.example.com", "10.0.0.250"], |p| {
        p.not_before = date_time_ymd(2025, 1, 2);
        p.not_after = date_time_ymd(2035, 1, 2);
    });
    let shown = Certificate::parse(&cert).expect("parse");
    assert_eq!(shown.subject, "CN=kube-apiserver");
    assert_eq!(shown.sans, vec!["DNS:api.example.com", "IP:10.0.0.250"]);
    assert!(shown.not_before.contains("2025") && shown.not_after.contains("2035"), "{shown:?}");
    assert!(Certificate::parse(b"not a certificate").is_err());
}

#[test]
fn the_report_counts_failures_and_says_what_failed() {
    let report = Report {
        heading: "xvip verify x.toml: VIP 10.0.0.250".into(),
        services: vec![ServiceReport {
            heading: "api: 443/tcp, nat, check https GET /readyz".into(),
            skipped: None,
            endpoints: vec![EndpointReport {
                label: "backend 10.0.0.21:6443".into(),
                certificate: None,
                checks: vec![Check::pass("a"), Check::fail("SANs lack the VIP"), Check::skip("chain not checked")],
            }],
        }],
    };
    assert_eq!((report.failures(), report.checks()), (1, 2));
    let text = report.render();
    assert!(text.contains("    FAIL     SANs lack the VIP\n"), "{text}");
    assert!(text.trim_end().ends_with("verify: 1 of 2 checks failed"), "{text}");
}

#[test]
fn a_service_is_verified_through_the_vip_addresses_that_carry_it() {
    let text = "interface = \"eth0\"\n[vip]\naddresses = [\"10.0.0.250\", \"fd00::250\"]\n[vrrp]\nvrid = 51\n\
                priority = 150\n[[service]]\nname = \"api\"\nport = 443\nforwarding = \"dsr\"\nbackends = [{ address = \
                \"10.0.0.11\" }, { address = \"fd00::11\" }]\n[[service]]\nname = \"web\"\nport = 80\nbackends = [{ \
                address = \"10.0.0.11\" }]\n[[service]]\nname = \"web6\"\nport = 8080\nbackends = [{ address = \
                \"10.0.0.11\" }, { address = \"fd00::11\" }]\n";
    let config = crate::config::parse(std::path::Path::new("xvip.toml"), text).expect("valid");
    let instance = &config.instances[0];
    let endpoints = |i: usize| vip_endpoints(instance, &instance.services[i]);
    assert_eq!(endpoints(0), ["10.0.0.250:443".parse::<SocketAddr>().unwrap(), "[fd00::250]:443".parse().unwrap()]);
    assert_eq!(endpoints(1), ["10.0.0.250:80".parse::<SocketAddr>().unwrap()], "NAT without IPv6 backends");
    assert_eq!(
        endpoints(2),
        ["10.0.0.250:8080".parse::<SocketAddr>().unwrap(), "[fd00::250]:8080".parse().unwrap()],
        "NAT with IPv6 backends: both families"
    );
}
