use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;

const DAY: Duration = Duration::from_secs(86_400);

fn now() -> SystemTime {
    SystemTime::now()
}

fn issue(ca: &RootCa, node: &str, role: Role, from: SystemTime, to: SystemTime) -> (NodeKey, String) {
    let key = NodeKey::generate().expect("key");
    let csr = key.csr_pem(node).expect("csr");
    let subject = NodeSubject { node_id: node.into(), role, cluster_id: "cluster1".into() };
    let cert = ca.issue(&csr, &subject, from, to).expect("issue");
    (key, cert)
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem").to_vec()
}

#[test]
fn ca_roundtrips_and_refuses_a_foreign_key() {
    let ca = RootCa::generate("cluster1", now(), CA_VALIDITY).expect("ca");
    let again = RootCa::from_pem(ca.cert_pem(), &ca.key_pem()).expect("from pem");
    assert_eq!(again.digest(), ca.digest());
    let other = RootCa::generate("cluster1", now(), CA_VALIDITY).expect("ca");
    assert!(matches!(RootCa::from_pem(ca.cert_pem(), &other.key_pem()), Err(PkiError::KeyMismatch)));
    assert!(!format!("{ca:?}").contains("PRIVATE"), "Debug must not print the key");
}

#[test]
fn digests_are_50_base36_digits_and_differ_per_ca() {
    let a = RootCa::generate("c", now(), CA_VALIDITY).expect("ca");
    let b = RootCa::generate("c", now(), CA_VALIDITY).expect("ca");
    for d in [a.digest(), b.digest()] {
        assert_eq!(d.len(), 50);
        assert!(d.bytes().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()), "{d}");
    }
    assert_ne!(a.digest(), b.digest());
    assert_eq!(a.digest(), ca_digest(a.cert_der()));
    // The real join-token parser takes it as the token's digest, and a token made from it
    // prints back the same.
    let t = format!("SHTKN-1-{}-s3cret", a.digest());
    let parsed = shoal_api::token::JoinToken::parse(&t).expect("a CA digest fits a join token");
    assert_eq!(parsed.cluster_digest, a.digest());
    assert_eq!(parsed.to_string(), t);
}

#[test]
fn certificates_carry_node_role_and_cluster_and_ignore_the_csr_subject() {
    let ca = RootCa::generate("cluster1", now(), CA_VALIDITY).expect("ca");
    for role in [Role::Manager, Role::Worker, Role::Admin] {
        let key = NodeKey::generate().expect("key");
        let csr = key.csr_pem("evil").expect("csr");
        let subject = NodeSubject { node_id: "node1".into(), role, cluster_id: "cluster1".into() };
        let cert = ca.issue(&csr, &subject, now(), now() + DAY).expect("issue");
        assert!(key.matches(&cert).expect("matches"));
        let id = verify_leaf(&der(&cert), ca.cert_der(), now()).expect("verifies");
        assert_eq!((id.node_id.as_str(), id.role, id.cluster_id.as_str()), ("node1", role, "cluster1"));
        let cert_der = der(&cert);
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der).expect("parse");
        let sans: Vec<String> = x509
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|s| s.value.general_names.iter().map(|n| format!("{n}")).collect())
            .unwrap_or_default();
        let has_manager_name = sans.iter().any(|n| n.contains(MANAGER_NAME));
        assert_eq!(has_manager_name, role == Role::Manager, "{role}: {sans:?}");
    }
}

#[test]
fn a_bad_csr_is_refused() {
    let ca = RootCa::generate("cluster1", now(), CA_VALIDITY).expect("ca");
    let key = NodeKey::generate().expect("key");
    let mut csr = key.csr_pem("n").expect("csr");
    // Corrupt the signature part of the base64 body.
    let pos = csr.len() - 40;
    let flipped = if &csr[pos..pos + 1] == "A" { "B" } else { "A" };
    csr.replace_range(pos..pos + 1, flipped);
    let subject = NodeSubject { node_id: "n".into(), role: Role::Worker, cluster_id: "c".into() };
    assert!(matches!(ca.issue(&csr, &subject, now(), now() + DAY), Err(PkiError::BadCsr(_))));
    assert!(matches!(ca.issue("garbage", &subject, now(), now() + DAY), Err(PkiError::BadCsr(_))));
}

#[test]
fn another_cas_certificate_and_an_expired_one_are_refused_with_the_reason() {
    let ca = RootCa::generate("cluster1", now(), CA_VALIDITY).expect("ca");
    let other = RootCa::generate("cluster1", now(), CA_VALIDITY).expect("ca");
    let (_, foreign) = issue(&other, "n1", Role::Manager, now(), now() + DAY);
    let e = verify_leaf(&der(&foreign), ca.cert_der(), now()).expect_err("foreign");
    assert!(matches!(e, PkiError::NotSignedByCa(_)), "{e}");
    let (_, old) = issue(&ca, "n1", Role::Worker, now() - 3 * DAY, now() - DAY);
    let e = verify_leaf(&der(&old), ca.cert_der(), now()).expect_err("expired");
    assert!(matches!(e, PkiError::Expired { .. }), "{e}");
    assert!(e.to_string().contains("expired at"), "{e}");
    let (_, future) = issue(&ca, "n1", Role::Worker, now() + DAY, now() + 2 * DAY);
    assert!(matches!(verify_leaf(&der(&future), ca.cert_der(), now()), Err(PkiError::NotYetValid { .. })));
}

#[test]
fn renewal_falls_in_the_second_half() {
    let from = SystemTime::UNIX_EPOCH + DAY;
    let to = from + 90 * DAY;
    assert_eq!(renewal_at(from, to, 0.0), from + 45 * DAY);
    assert_eq!(renewal_at(from, to, 0.5), from + Duration::from_secs(675 * 86_400 / 10));
    assert!(renewal_at(from, to, 0.999_999) <= to);
    assert_eq!(renewal_at(from, to, 7.0), to, "clamped");
    assert_eq!(renewal_at(from, to, f64::NAN), from + 45 * DAY);
}

#[test]
fn private_files_are_0600_and_public_0644() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let k = dir.path().join("sub/node.key");
    write_private_file(&k, b"secret").expect("write");
    write_private_file(&k, b"secret2").expect("overwrite");
    let c = dir.path().join("node.crt");
    write_public_file(&c, b"cert").expect("write");
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!((mode(&k), mode(&c)), (0o600, 0o644));
    assert_eq!(std::fs::read(&k).expect("read"), b"secret2");
}

/// A TLS server on loopback presenting `chain_leaf` + `ca` (as managers do).
async fn serve(ca: &RootCa, leaf_from: &RootCa) -> std::net::SocketAddr {
    let (key, cert) = issue(leaf_from, "m1", Role::Manager, now(), now() + DAY);
    let store = tls::CertStore::new();
    store.set(&cert, &key.key_pem(), ca.cert_der()).expect("set");
    let cfg = tls::server_config(ca.cert_der(), store).expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        for _ in 0..4 {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn fetch_ca_pins_the_digest() {
    let ca = RootCa::generate("cluster1", now(), CA_VALIDITY).expect("ca");
    let addr = serve(&ca, &ca).await;
    let got = tls::fetch_ca(addr, &ca.digest(), Duration::from_secs(5)).await.expect("right digest");
    assert_eq!(got, ca.cert_der());

    let other = RootCa::generate("cluster1", now(), CA_VALIDITY).expect("ca");
    let e = tls::fetch_ca(addr, &other.digest(), Duration::from_secs(5)).await.expect_err("wrong digest");
    match &e {
        PkiError::DigestMismatch { expected, presented, .. } => {
            assert_eq!((expected, presented), (&other.digest(), &ca.digest()));
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(e.to_string().contains("the token is for another cluster"), "{e}");

    // The right CA in the chain, but the leaf was issued by another CA: refused.
    let addr = serve(&ca, &other).await;
    let e = tls::fetch_ca(addr, &ca.digest(), Duration::from_secs(5)).await.expect_err("forged leaf");
    assert!(matches!(e, PkiError::Connect(_)), "{e}");

    // Nothing listening: a connection error naming the address.
    let e = tls::fetch_ca("127.0.0.1:1".parse().expect("addr"), &ca.digest(), Duration::from_secs(5))
        .await
        .expect_err("closed");
    assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
}

#[test]
fn cert_store_exposes_its_identity() {
    let ca = RootCa::generate("cluster1", now(), CA_VALIDITY).expect("ca");
    let (key, cert) = issue(&ca, "w1", Role::Worker, now(), now() + DAY);
    let store = tls::CertStore::new();
    assert!(store.identity().is_none());
    let other_key = NodeKey::generate().expect("key");
    assert!(matches!(store.set(&cert, &other_key.key_pem(), ca.cert_der()), Err(PkiError::KeyMismatch)));
    store.set(&cert, &key.key_pem(), ca.cert_der()).expect("set");
    assert_eq!(store.identity().map(|i| (i.node_id, i.role)), Some(("w1".to_string(), Role::Worker)));
}
