//! Service identities: a leaf certificate (`spiffe://<td>/svc/<service>`) for every service
//! registered on this host, signed by the servers from a CSR made here (the key never leaves
//! the host). A leaf is renewed at half its life and re-issued when the active root changes;
//! the endpoint trusts every root of the registry, so the old root stays trusted while leaves
//! it signed live. Connections opened with an older leaf stay open.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use registry::ca;
use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

use super::metrics::ProxyMetrics;
use crate::store::Store;
use crate::transport::tls::{self, TlsMaterial};
use crate::transport::{Transport, TransportError, ALPN_TUNNEL};

/// How often leaves are checked even when the registry is quiet (renewal times pass).
const TICK: Duration = Duration::from_secs(1);
/// Wait after a failed request before the next one for that service.
const RETRY: Duration = Duration::from_secs(2);

/// One service's leaf.
pub struct Leaf {
    pub service: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub valid_after: SystemTime,
    pub valid_before: SystemTime,
    /// The root that was active when it was issued.
    pub root_id: String,
    /// Counts this host's leaves for the service; a renewal makes new tunnel connections.
    pub generation: u64,
    /// Index of the registry when it was issued (the API's `ModifyIndex`).
    pub index: u64,
    material: TlsMaterial,
}

impl Leaf {
    fn renew_at(&self) -> SystemTime {
        let life = self
            .valid_before
            .duration_since(self.valid_after)
            .unwrap_or_default();
        self.valid_after + life / 2
    }

    /// A client config presenting this leaf, trusting `roots`.
    pub fn client_config(
        &self,
        roots: &[CertificateDer<'static>],
    ) -> Result<quinn::ClientConfig, TransportError> {
        tls::quic_client_config(
            roots,
            Some((&self.material.chain, &self.material.key)),
            ALPN_TUNNEL,
        )
        .map_err(|e| TransportError::Tls(e.to_string()))
    }
}

/// The leaves of this host's services.
pub struct Leaves {
    node: String,
    ttl: Duration,
    leaves: RwLock<HashMap<String, Arc<Leaf>>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Leaves {
    pub fn new(node: String, ttl: Duration) -> Leaves {
        Leaves {
            node,
            ttl,
            leaves: RwLock::default(),
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    pub fn get(&self, service: &str) -> Option<Arc<Leaf>> {
        self.leaves
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(service)
            .cloned()
    }

    /// Wakes on every change of a leaf (the leaf API's blocking queries).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Keeps the leaves and the endpoint's trusted roots current until `cancel`.
    pub async fn run(
        self: Arc<Self>,
        store: Store,
        transport: Arc<Transport>,
        metrics: ProxyMetrics,
        cancel: CancellationToken,
    ) {
        let mut applied = store.subscribe();
        let mut failed: HashMap<String, tokio::time::Instant> = HashMap::new();
        let mut generation = 0u64;
        let mut last_index = 0u64;
        let mut trusted_index = u64::MAX;
        let mut roots: Vec<String> = Vec::new();
        loop {
            let (new_roots, roots_index, active, services, index) = {
                let st = store.read();
                let roots_index = st.ca_roots_index();
                // The roots change rarely; the registry on every write.
                let new_roots: Option<Vec<String>> = (roots_index != trusted_index)
                    .then(|| st.ca_roots().map(|r| r.cert_pem.clone()).collect());
                let active = st.active_ca_root().map(|r| r.id.clone());
                let services: BTreeSet<String> = st
                    .node_services(&self.node)
                    .map(|s| s.service.clone())
                    .collect();
                (new_roots, roots_index, active, services, st.applied_index())
            };
            if let Some(r) = new_roots {
                self.trust(&transport, &r);
                roots = r;
                trusted_index = roots_index;
            }
            self.leaves
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|name, _| services.contains(name));
            if let Some(active) = active {
                let now = SystemTime::now();
                for service in &services {
                    let due = match self.get(service) {
                        None => true,
                        Some(l) => l.root_id != active || now >= l.renew_at(),
                    };
                    let waiting = failed
                        .get(service)
                        .is_some_and(|t| tokio::time::Instant::now() < *t);
                    if !due || waiting {
                        continue;
                    }
                    generation += 1;
                    // Strictly increasing, so a blocking leaf query always sees a renewal.
                    last_index = index.max(last_index + 1);
                    match self
                        .issue(&store, service, &roots, &active, generation, last_index)
                        .await
                    {
                        Ok(leaf) => {
                            failed.remove(service);
                            metrics.leaves_issued.inc();
                            tracing::info!(%service, root = %active, valid_before = ?leaf.valid_before, "service leaf issued");
                            self.leaves
                                .write()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .insert(service.clone(), Arc::new(leaf));
                            self.changed.send_modify(|g| *g += 1);
                        }
                        Err(e) => {
                            metrics.leaf_errors.inc();
                            tracing::warn!(%service, error = %e, "service leaf not issued; retrying");
                            failed.insert(service.clone(), tokio::time::Instant::now() + RETRY);
                        }
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = applied.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Trusts every root of the registry (a rotation adds one; the old stays).
    fn trust(&self, transport: &Transport, roots_pem: &[String]) {
        if roots_pem.is_empty() {
            return;
        }
        let mut ders = Vec::new();
        for pem in roots_pem {
            match tls::roots_from_pem(pem) {
                Ok(mut d) => ders.append(&mut d),
                Err(e) => tracing::warn!(error = %e, "a CA root of the registry is unreadable"),
            }
        }
        if ders != transport.roots() {
            match transport.set_roots(ders) {
                Ok(()) => tracing::info!(roots = roots_pem.len(), "trusted CA roots updated"),
                Err(e) => tracing::warn!(error = %e, "trusted CA roots not updated"),
            }
        }
    }

    async fn issue(
        &self,
        store: &Store,
        service: &str,
        roots: &[String],
        active: &str,
        generation: u64,
        index: u64,
    ) -> Result<Leaf, String> {
        let (csr, key_pem) = ca::create_csr(service).map_err(|e| e.to_string())?;
        let cert_pem = store.sign_leaf(&self.node, service, &csr, self.ttl).await?;
        let material = TlsMaterial::from_pem(&roots.join(""), &cert_pem, &key_pem)
            .map_err(|e| e.to_string())?;
        let valid_before = ca::not_after(&cert_pem).map_err(|e| e.to_string())?;
        Ok(Leaf {
            service: service.to_string(),
            cert_pem,
            key_pem,
            valid_after: SystemTime::now(),
            valid_before,
            root_id: active.to_string(),
            generation,
            index,
            material,
        })
    }
}
