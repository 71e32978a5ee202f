//! The cluster PKI from the outside: every call over a node's TCP port is mTLS and checked
//! against the caller's certificate. Each refusal is asserted with its message, and with the
//! state unchanged afterwards.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use shoal_api::v1::{self, control_client::ControlClient, *};
use shoal_testkit::{control, init_logging, wait_until, InProcessNode};
use tonic::transport::Channel;

const T: Duration = Duration::from_secs(30);

async fn node(root: &Path, name: &str) -> Result<InProcessNode> {
    InProcessNode::start_in(root, name).await
}

async fn init(n: &InProcessNode, settings: Option<ClusterSettings>) -> Result<()> {
    n.init(settings).await
}

async fn token(n: &InProcessNode, role: NodeRole) -> Result<String> {
    n.join_token(role).await
}

async fn join(n: &InProcessNode, token: &str, via: &InProcessNode) -> Result<JoinClusterResponse, tonic::Status> {
    n.join(token, via).await
}

/// A TLS channel to `addr` as the holder of the certificate in `dir` (`pki/` of a node's data
/// dir, or an admin certificate directory), or with no client certificate.
fn tls_channel(addr: &str, ca_pem: &str, cert_key: Option<(&str, &str)>) -> Result<Channel> {
    let ca = shoal_pki::cert_der_from_pem(ca_pem)?;
    let store = match cert_key {
        Some((cert, key)) => {
            let s = shoal_pki::tls::CertStore::new();
            s.set(cert, key, &ca)?;
            Some(s)
        }
        None => None,
    };
    let cfg = Arc::new(shoal_pki::tls::client_config(&ca, store)?);
    let endpoint = shoal_client::tcp_endpoint(addr)?;
    shoal_client::tls_channel(endpoint, addr, cfg, shoal_pki::MANAGER_NAME).map_err(anyhow::Error::msg)
}

/// Completes a TLS handshake with `addr` presenting `cert`/`key`, then reads: returns the error
/// the server's alert turned into (empty if the server answered instead).
async fn tls_alert_for(addr: &str, ca_pem: &str, cert: &str, key: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = shoal_pki::cert_der_from_pem(ca_pem)?;
    let store = shoal_pki::tls::CertStore::new();
    store.set(cert, key, &ca)?;
    let cfg = Arc::new(shoal_pki::tls::client_config(&ca, Some(store))?);
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(shoal_pki::MANAGER_NAME)?;
    let mut tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await?;
    // The server judges the client's certificate after the client's handshake is done.
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(T, tls.read(&mut buf)).await? {
        Ok(_) => Ok(String::new()),
        Err(e) => Ok(e.to_string()),
    }
}

/// Sends an HTTP/2 preface in plaintext to `addr` and returns the first bytes of the answer.
async fn plaintext_reply(addr: &str) -> Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(T, tcp.read(&mut buf)).await??;
    Ok(buf[..n].to_vec())
}

fn read(dir: &Path, f: &str) -> Result<String> {
    std::fs::read_to_string(dir.join(f)).with_context(|| format!("read {}", dir.join(f).display()))
}

/// The node's own certificate files.
struct NodeCert {
    ca: String,
    cert: String,
    key: String,
}

fn node_cert(n: &InProcessNode) -> Result<NodeCert> {
    let d = n.dir.join("pki");
    Ok(NodeCert { ca: read(&d, "ca.crt")?, cert: read(&d, "node.crt")?, key: read(&d, "node.key")? })
}

async fn service_count(host: &str) -> Result<usize> {
    Ok(control(host).await?.list_services(ListServicesRequest {}).await?.into_inner().services.len())
}

fn spec(name: &str) -> ServiceSpec {
    ServiceSpec {
        annotations: Some(Annotations { name: name.into(), ..Default::default() }),
        task_template: Some(TaskSpec {
            container: Some(ContainerSpec { image: "busybox:1".into(), ..Default::default() }),
            ..Default::default()
        }),
        mode: Some(service_spec::Mode::Replicated(ReplicatedService { replicas: 0 })),
        ..Default::default()
    }
}

async fn create_service(c: Channel, name: &str) -> Result<ServiceView, tonic::Status> {
    ControlClient::new(c).create_service(CreateServiceRequest { spec: Some(spec(name)) }).await.map(|r| r.into_inner())
}

fn expect_refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: tonic::Code, words: &str) -> Result<()> {
    match r {
        Ok(v) => bail!("expected a refusal containing {words:?}, got {v:?}"),
        Err(s) if s.code() == code && s.message().contains(words) => Ok(()),
        Err(s) => bail!("expected {code:?} containing {words:?}, got {:?}: {}", s.code(), s.message()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_checked_against_the_callers_certificate() -> Result<()> {
    init_logging();
    let root = tempfile::tempdir()?;
    let m1 = node(root.path(), "m1").await?;
    let w1 = node(root.path(), "w1").await?;
    let stranger = node(root.path(), "stranger").await?;
    init(&m1, None).await?;
    let h = m1.host();

    // Join tokens pin the CA: a garbled token, a digest of another CA, and a good one.
    let worker_token = token(&m1, NodeRole::Worker).await?;
    expect_refused(
        join(&stranger, "SHTKN-1-garbage", &m1).await,
        tonic::Code::PermissionDenied,
        "malformed join token",
    )?;
    let parts: Vec<&str> = worker_token.split('-').collect();
    let other_ca = shoal_pki::RootCa::generate("other", std::time::SystemTime::now(), shoal_pki::CA_VALIDITY)?;
    let wrong_digest = format!("SHTKN-1-{}-{}", other_ca.digest(), parts[3]);
    expect_refused(
        join(&stranger, &wrong_digest, &m1).await,
        tonic::Code::PermissionDenied,
        "but the join token expects CA",
    )?;
    let wrong_secret = format!("SHTKN-1-{}-{}", parts[2], "abc123");
    expect_refused(join(&stranger, &wrong_secret, &m1).await, tonic::Code::PermissionDenied, "secret does not match")?;
    let info = control(&stranger.host()).await?.info(InfoRequest {}).await?.into_inner();
    assert_eq!(info.state, "uninitialized", "refused joins leave the node alone");
    assert!(!stranger.dir.join("pki/node.crt").exists(), "and give it no certificate");

    // The worker token admits a worker: its certificate says so, and nothing more.
    let r = join(&w1, &worker_token, &m1).await?;
    assert_eq!(r.role(), NodeRole::Worker);
    let wc = node_cert(&w1)?;
    let id = shoal_pki::identity_from_pem(&wc.cert)?;
    assert_eq!(
        (id.role, id.node_id.as_str(), id.cluster_id.as_str()),
        (shoal_pki::Role::Worker, r.node_id.as_str(), r.cluster_id.as_str())
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(w1.dir.join("pki/node.key"))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the node key is private");
    }

    // No client certificate: only the join RPC answers.
    let anon = tls_channel(&m1.addr(), &wc.ca, None)?;
    expect_refused(
        create_service(anon.clone(), "anon").await,
        tonic::Code::Unauthenticated,
        "needs a client certificate",
    )?;

    // A worker certificate: not the control API, not Raft.
    let as_worker = tls_channel(&m1.addr(), &wc.ca, Some((&wc.cert, &wc.key)))?;
    expect_refused(
        create_service(as_worker.clone(), "by-worker").await,
        tonic::Code::PermissionDenied,
        "a worker certificate may not call /shoal.v1.Control/CreateService",
    )?;
    let raft = v1::raft_client::RaftClient::new(as_worker.clone()).vote(RaftMessage { data: b"{}".to_vec() }).await;
    expect_refused(raft, tonic::Code::PermissionDenied, "a worker certificate may not call /shoal.v1.Raft/Vote")?;
    // Nor may it speak for another node.
    let hb = v1::membership_client::MembershipClient::new(as_worker.clone())
        .heartbeat(HeartbeatRequest { node_id: "someone-else".into(), ..Default::default() })
        .await;
    expect_refused(hb, tonic::Code::PermissionDenied, "may not send heartbeats for node someone-else")?;

    // A certificate from another CA fails the TLS handshake.
    let key = shoal_pki::NodeKey::generate()?;
    let subject = shoal_pki::NodeSubject {
        node_id: "intruder".into(),
        role: shoal_pki::Role::Manager,
        cluster_id: r.cluster_id.clone(),
    };
    let now = std::time::SystemTime::now();
    let forged = other_ca.issue(&key.csr_pem("intruder")?, &subject, now, now + Duration::from_secs(3600))?;
    let foreign = tls_channel(&m1.addr(), &wc.ca, Some((&forged, &key.key_pem())))?;
    // (With TLS 1.3 the client learns of the refusal only after its handshake, so the call fails
    // as Unavailable, Unknown or Cancelled depending on timing.)
    let e = create_service(foreign, "forged").await.expect_err("foreign CA refused");
    assert!(matches!(e.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled), "{e:?}");
    // Why: a raw handshake with the forged certificate reads the server's alert.
    let alert = tls_alert_for(&m1.addr(), &wc.ca, &forged, &key.key_pem()).await?;
    assert!(alert.contains("UnknownCA"), "the server refuses a certificate of another CA: {alert}");
    assert_eq!(service_count(&h).await?, 0, "nothing was created by a forged certificate");

    // Plaintext is not served at all: what comes back to an HTTP/2 preface is a TLS alert record.
    assert_eq!(plaintext_reply(&m1.addr()).await?.first(), Some(&0x15), "a TLS alert (content type 21)");
    let plain = shoal_client::tcp_endpoint(&m1.addr())?.connect_lazy();
    create_service(plain, "plain").await.expect_err("plaintext gRPC refused");

    // An admin certificate works remotely; the control API refuses nothing it should allow.
    let admin_key = shoal_pki::NodeKey::generate()?;
    let adm = control(&h)
        .await?
        .issue_admin_certificate(IssueAdminCertificateRequest {
            csr_pem: admin_key.csr_pem("ops")?,
            name: "ops".into(),
        })
        .await?
        .into_inner();
    let as_admin = tls_channel(&m1.addr(), &adm.ca_pem, Some((&adm.cert_pem, &admin_key.key_pem())))?;
    create_service(as_admin, "by-admin").await?;
    assert_eq!(service_count(&h).await?, 1, "only the admin's service exists");

    // Removing the worker makes its certificate useless at once.
    w1_stop_and_remove(&m1, w1, &r.node_id).await?;
    let assignments = v1::dispatcher_client::DispatcherClient::new(as_worker)
        .assignments(AssignmentsRequest { node_id: r.node_id.clone() })
        .await;
    expect_refused(assignments, tonic::Code::PermissionDenied, "was removed from the cluster")?;

    // The cluster object never shows the CA key.
    let cl = control(&h).await?.get_cluster(GetClusterRequest {}).await?.into_inner().cluster.context("cluster")?;
    let ca = cl.root_ca.context("root ca")?;
    assert!(ca.key_pem.is_empty() && ca.cert_pem.contains("BEGIN CERTIFICATE"));
    Ok(())
}

async fn w1_stop_and_remove(m1: &InProcessNode, mut w1: InProcessNode, node_id: &str) -> Result<()> {
    w1.stop().await;
    control(&m1.host()).await?.remove_node(RemoveNodeRequest { node: node_id.into(), force: true }).await?;
    wait_until(T, "the worker gone from node ls", || async {
        let c = control(&m1.host()).await.ok()?;
        let nodes = c.clone().list_nodes(ListNodesRequest {}).await.ok()?.into_inner().nodes;
        (nodes.len() == 1).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_and_an_expired_one_is_refused() -> Result<()> {
    init_logging();
    let root = tempfile::tempdir()?;
    let m1 = node(root.path(), "m1").await?;
    let w1 = node(root.path(), "w1").await?;
    let mut w2 = node(root.path(), "w2").await?;
    let settings = ClusterSettings { node_cert_validity_s: 60, ..Default::default() };
    init(&m1, Some(settings)).await?;
    let wt = token(&m1, NodeRole::Worker).await?;
    join(&w1, &wt, &m1).await?;
    let w2_id = join(&w2, &wt, &m1).await?.node_id;
    let first = |n: &InProcessNode| node_cert(n).and_then(|c| Ok(shoal_pki::identity_from_pem(&c.cert)?));
    let (m_first, w_first) = (first(&m1)?, first(&w1)?);
    // w2 goes offline now and stays away past its certificate's end.
    let w2_expiry = first(&w2)?.not_after;
    w2.stop().await;

    // Within the minute both renew (in the second half of the lifetime) and keep working.
    wait_until(Duration::from_secs(90), "the manager and the worker renewed", || async {
        let (m, w) = (first(&m1).ok()?, first(&w1).ok()?);
        (m.serial != m_first.serial && w.serial != w_first.serial).then_some(())
    })
    .await?;
    let nodes = control(&m1.host()).await?.list_nodes(ListNodesRequest {}).await?.into_inner().nodes;
    let w1_state = nodes
        .iter()
        .filter_map(|v| v.node.as_ref())
        .find(|n| n.description.as_ref().is_some_and(|d| d.hostname == "w1"))
        .and_then(|n| n.status.as_ref())
        .map(|s| s.state());
    assert_eq!(w1_state, Some(NodeState::Ready), "the renewed worker is still up");

    // w2 comes back after its certificate expired: refused, and it says why.
    let wait = w2_expiry.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_secs(2)).await;
    w2.restart().await?;
    let info = wait_until(T, "w2 reports its expired certificate", || async {
        let i = control(&w2.host()).await.ok()?.info(InfoRequest {}).await.ok()?.into_inner();
        i.certificate.contains("expired").then_some(i)
    })
    .await?;
    assert!(info.certificate.contains("join it again"), "{}", info.certificate);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let nodes = control(&m1.host()).await?.list_nodes(ListNodesRequest {}).await?.into_inner().nodes;
    let w2_state = nodes
        .iter()
        .filter_map(|v| v.node.as_ref())
        .find(|n| n.meta.as_ref().is_some_and(|m| m.id == w2_id))
        .and_then(|n| n.status.as_ref())
        .map(|s| s.state());
    assert_eq!(w2_state, Some(NodeState::Down), "the managers do not take the expired node back");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_validated_and_their_data_never_comes_back() -> Result<()> {
    init_logging();
    let root = tempfile::tempdir()?;
    let m1 = node(root.path(), "m1").await?;
    init(&m1, None).await?;
    let mut c = control(&m1.host()).await?;
    let spec = |name: &str, data: &[u8]| SecretSpec {
        annotations: Some(Annotations { name: name.into(), ..Default::default() }),
        data: data.to_vec(),
    };
    let create = |s: SecretSpec| {
        let mut c = c.clone();
        async move { c.create_secret(CreateSecretRequest { spec: Some(s) }).await.map(|r| r.into_inner()) }
    };
    let r = create(spec("empty", b"")).await;
    assert!(r.as_ref().is_err_and(|s| s.message().contains("is empty")), "{r:?}");
    let big = vec![b'x'; 500 * 1024 + 1];
    let r = create(spec("big", &big)).await;
    assert!(r.as_ref().is_err_and(|s| s.message().contains("the limit is 512000 bytes")), "{r:?}");
    let r = create(spec("-bad name", b"x")).await;
    assert!(
        r.as_ref().is_err_and(|s| s.code() == tonic::Code::InvalidArgument
            && s.message().contains("\"-bad name\" must start with a letter or digit")),
        "invalid name refused with the rule: {r:?}"
    );
    let made = create(spec("db-pass", b"hunter2")).await?;
    assert!(made.spec.as_ref().is_some_and(|s| s.data.is_empty()), "create does not echo the data");
    let r = create(spec("db-pass", b"again")).await;
    assert!(r.as_ref().is_err_and(|s| s.message().contains("already exists")), "{r:?}");
    let listed = c.list_secrets(ListSecretsRequest {}).await?.into_inner().secrets;
    assert_eq!(listed.len(), 1);
    assert!(listed.iter().all(|s| s.spec.as_ref().is_some_and(|s| s.data.is_empty())));
    let got = c.get_secret(GetSecretRequest { secret: "db-pass".into() }).await?.into_inner();
    assert!(got.spec.as_ref().is_some_and(|s| s.data.is_empty()));
    // A service may only name secrets that exist.
    let mut svc = spec_with_secret("web", "nope");
    let r = c.create_service(CreateServiceRequest { spec: Some(svc.clone()) }).await;
    assert!(r.as_ref().is_err_and(|s| s.message().contains("secret \"nope\" not found")), "{r:?}");
    svc = spec_with_secret("web", "db-pass");
    c.create_service(CreateServiceRequest { spec: Some(svc) }).await?;
    let r = c.remove_secret(RemoveSecretRequest { secret: "db-pass".into() }).await;
    assert!(r.as_ref().is_err_and(|s| s.message().contains("in use by service(s) web")), "{r:?}");
    assert_eq!(c.list_secrets(ListSecretsRequest {}).await?.into_inner().secrets.len(), 1, "nothing removed");
    Ok(())
}

fn spec_with_secret(name: &str, secret: &str) -> ServiceSpec {
    let mut s = spec(name);
    if let Some(c) = s.task_template.as_mut().and_then(|t| t.container.as_mut()) {
        c.secrets.push(SecretReference { secret_name: secret.into(), ..Default::default() });
    }
    s
}
