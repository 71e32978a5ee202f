//! The managers' certificate authority: the root CA lives in the replicated cluster object, so
//! any manager can issue; nodes renew their certificates (and get new ones on a role change)
//! through `Membership.RenewCertificate`.

use std::time::{Duration, SystemTime};

use rand::Rng;
use shoal_api::v1::{self, Cluster, NodeRole};
use shoal_pki::{NodeKey, NodeSubject, Role, RootCa};

use crate::error::ApiError;
use crate::managers::RaftRuntime;
use crate::node::Node;

/// Certificates start a little in the past, so a node whose clock lags accepts them.
const BACKDATE: Duration = Duration::from_secs(300);
/// Renewal is retried this often when a manager cannot be reached.
const RETRY: Duration = Duration::from_secs(5);

/// The CA of `cluster`.
pub fn cluster_ca(cluster: &Cluster) -> Result<RootCa, ApiError> {
    let ca = cluster.root_ca.as_ref().ok_or_else(|| ApiError::Internal("the cluster has no CA".into()))?;
    RootCa::from_pem(&ca.cert_pem, &ca.key_pem).map_err(|e| ApiError::Internal(format!("the cluster CA: {e}")))
}

/// The digest join tokens pin: of the CA certificate in `cluster`.
pub fn ca_digest(cluster: &Cluster) -> String {
    cluster
        .root_ca
        .as_ref()
        .and_then(|ca| shoal_pki::cert_der_from_pem(&ca.cert_pem).ok())
        .map(|der| shoal_pki::ca_digest(&der))
        .unwrap_or_default()
}

/// The role a node's certificate carries.
pub fn cert_role(role: NodeRole) -> Role {
    if role == NodeRole::Manager {
        Role::Manager
    } else {
        Role::Worker
    }
}

fn validity(cluster: &Cluster) -> Duration {
    let s = shoal_api::defaults::fill_settings(cluster.settings.unwrap_or_default());
    Duration::from_secs(s.node_cert_validity_s)
}

/// Issues a certificate for `csr_pem` to `node_id` with `role`; returns (cert PEM, CA PEM).
pub fn issue(rt: &RaftRuntime, csr_pem: &str, node_id: &str, role: Role) -> Result<(String, String), ApiError> {
    let cluster = rt.store.read(|s| s.cluster().cloned()).ok_or(ApiError::NotInCluster)?;
    issue_from(&cluster, csr_pem, node_id, role)
}

/// [`issue`] with the cluster object at hand.
pub fn issue_from(cluster: &Cluster, csr_pem: &str, node_id: &str, role: Role) -> Result<(String, String), ApiError> {
    let ca = cluster_ca(cluster)?;
    let cluster_id = cluster.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
    let now = SystemTime::now();
    let subject = NodeSubject { node_id: node_id.to_string(), role, cluster_id };
    let cert = ca
        .issue(csr_pem, &subject, now - BACKDATE, now + validity(cluster))
        .map_err(|e| ApiError::Rejected(e.to_string()))?;
    Ok((cert, ca.cert_pem().to_string()))
}

/// A new cluster object's CA, and this node's first certificate from it (installed).
pub fn bootstrap(node: &Node, cluster: &mut Cluster, node_id: &str) -> Result<(), ApiError> {
    let cluster_id = cluster.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
    let ca = RootCa::generate(&cluster_id, SystemTime::now(), shoal_pki::CA_VALIDITY)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    cluster.root_ca = Some(v1::RootCa { cert_pem: ca.cert_pem().to_string(), key_pem: ca.key_pem() });
    let key = NodeKey::generate().map_err(|e| ApiError::Internal(e.to_string()))?;
    let csr = key.csr_pem(node_id).map_err(|e| ApiError::Internal(e.to_string()))?;
    let (cert, _) = issue_from(cluster, &csr, node_id, Role::Manager)?;
    node.dialer.install(ca.cert_der(), &cert, &key.key_pem())
}

/// Asks a manager for a new certificate for a new key (with the role the cluster now gives this
/// node) and installs it.
pub async fn renew(node: &Node) -> Result<shoal_pki::PeerIdentity, ApiError> {
    let local = node.identity.local();
    let key = NodeKey::generate().map_err(|e| ApiError::Internal(e.to_string()))?;
    let csr = key.csr_pem(&local.node_id).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut last = ApiError::Rejected("no manager known to renew the certificate with".into());
    let mut addrs: Vec<String> = node.managers.peers().into_iter().map(|p| p.addr).filter(|a| !a.is_empty()).collect();
    if let Some(l) = node.managers.leader_hint() {
        addrs.insert(0, l);
    }
    for addr in addrs {
        let mut client = match node.dialer.membership_client(&addr) {
            Ok(c) => c,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let mut call = tonic::Request::new(v1::RenewCertificateRequest { csr_pem: csr.clone() });
        call.set_timeout(Duration::from_secs(5));
        match client.renew_certificate(call).await {
            Ok(r) => {
                let r = r.into_inner();
                let ca_der = shoal_pki::cert_der_from_pem(&r.ca_pem)
                    .map_err(|e| ApiError::Internal(format!("the manager's CA certificate: {e}")))?;
                node.dialer.install(&ca_der, &r.cert_pem, &key.key_pem())?;
                return node
                    .dialer
                    .cert_identity()
                    .ok_or_else(|| ApiError::Internal("no certificate after renewal".into()));
            }
            Err(s) => last = ApiError::Rejected(format!("{addr}: {}", s.message())),
        }
    }
    Err(last)
}

/// Renews this node's certificate at a random point in the second half of its lifetime, until
/// `node` shuts down. An expired certificate is reported (managers refuse it; the node must be
/// joined again).
pub fn spawn_renewal(node: Node) {
    let workers = node.workers.clone();
    workers.spawn("certificate renewal", move |stop| async move {
        renewal(node, stop).await;
        Ok::<(), String>(())
    });
}

async fn renewal(node: Node, stop: tokio_util::sync::CancellationToken) {
    {
        let mut reported_expiry = false;
        loop {
            let wait = match node.dialer.cert_identity() {
                None => Duration::from_secs(30),
                Some(id) => {
                    let now = SystemTime::now();
                    if id.not_after <= now {
                        if !reported_expiry {
                            tracing::error!(
                                expired = %shoal_pki::rfc3339(id.not_after),
                                "this node's certificate has expired and managers refuse it: remove the node on a manager (`shoal node rm`) and join it again"
                            );
                            node.dialer.set_problem(Some(format!(
                                "certificate expired at {}: remove the node and join it again",
                                shoal_pki::rfc3339(id.not_after)
                            )));
                            reported_expiry = true;
                        }
                        Duration::from_secs(30)
                    } else {
                        let fraction: f64 = rand::thread_rng().gen();
                        let at = shoal_pki::renewal_at(id.not_before, id.not_after, fraction);
                        at.duration_since(now).unwrap_or_default()
                    }
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let Some(id) = node.dialer.cert_identity() else { continue };
            if id.not_after <= SystemTime::now()
                || SystemTime::now() < shoal_pki::renewal_at(id.not_before, id.not_after, 0.0)
            {
                continue;
            }
            match renew(&node).await {
                Ok(new) => {
                    reported_expiry = false;
                    node.dialer.set_problem(None);
                    tracing::info!(expires = %shoal_pki::rfc3339(new.not_after), "renewed this node's certificate");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "certificate renewal failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
    }
}
