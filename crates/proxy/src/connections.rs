//! New connections per Service and per endpoint (kubernetes/kubernetes#9125), counted
//! from conntrack's new-connection events: the original destination names the Service
//! port (cluster IP, external IP, load-balancer IP or node port), the reply's source is
//! the endpoint that answers.
//!
//! Label sets stay bounded: only the Service ports and endpoints of the last synced
//! model have counters; those that leave the model lose theirs.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use twill_model::Protocol;
use twill_proxy_core::ProxyModel;

use crate::conntrack::NewConnection;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service_port: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    service_port: String,
    endpoint: String,
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// Where a connection is addressed → the Service port's name.
#[derive(Debug, Default)]
struct Table {
    by_address: HashMap<(IpAddr, u16, u8), String>,
    by_node_port: HashMap<(u16, u8), String>,
    endpoints: BTreeSet<(String, String)>,
}

/// The counters and what they are keyed by; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct ConnectionCounts {
    table: Arc<RwLock<Table>>,
    services: Family<ServiceLabels, Counter>,
    endpoints: Family<EndpointLabels, Counter>,
}

impl ConnectionCounts {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "twill_proxy_service_connections",
            "New connections to each Service port (from conntrack events)",
            self.services.clone(),
        );
        r.register(
            "twill_proxy_endpoint_connections",
            "New connections to each endpoint of each Service port (from conntrack events)",
            self.endpoints.clone(),
        );
    }

    /// Key the counts by the Service ports and endpoints of `model`; counters of those
    /// no longer in it are removed.
    pub fn update(&self, model: &ProxyModel) {
        let mut t = Table::default();
        for (name, svc) in &model.services {
            let label = name.to_string();
            let proto = proto_number(svc.protocol);
            for ip in std::iter::once(&svc.cluster_ip)
                .chain(&svc.external_ips)
                .chain(&svc.load_balancer_vips)
            {
                if !ip.is_unspecified() {
                    t.by_address.insert((*ip, svc.port, proto), label.clone());
                }
            }
            if let Some(np) = svc.node_port {
                t.by_node_port.insert((np, proto), label.clone());
            }
            for e in model.endpoints_of(name) {
                t.endpoints.insert((label.clone(), e.to_string()));
            }
        }
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        let services: BTreeSet<&String> = t
            .by_address
            .values()
            .chain(t.by_node_port.values())
            .collect();
        for gone in table
            .by_address
            .values()
            .chain(table.by_node_port.values())
            .filter(|l| !services.contains(l))
        {
            self.services.remove(&ServiceLabels {
                service_port: gone.clone(),
            });
        }
        for (s, e) in table.endpoints.difference(&t.endpoints) {
            self.endpoints.remove(&EndpointLabels {
                service_port: s.clone(),
                endpoint: e.clone(),
            });
        }
        *table = t;
    }

    /// Count one new connection; whether it was to a known Service port.
    pub fn observe(&self, c: &NewConnection) -> bool {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        let Some(label) = table
            .by_address
            .get(&(c.dst, c.dport, c.proto))
            .or_else(|| table.by_node_port.get(&(c.dport, c.proto)))
        else {
            return false;
        };
        self.services
            .get_or_create(&ServiceLabels {
                service_port: label.clone(),
            })
            .inc();
        let endpoint = SocketAddr::new(c.reply_src, c.reply_sport).to_string();
        if table.endpoints.contains(&(label.clone(), endpoint.clone())) {
            self.endpoints
                .get_or_create(&EndpointLabels {
                    service_port: label.clone(),
                    endpoint,
                })
                .inc();
        }
        true
    }

    /// Follow conntrack's events on a thread of its own, in the calling thread's network
    /// namespace (threads inherit it).
    pub fn start(&self) -> std::io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("conntrack-events".into())
            .spawn(move || {
                if let Err(e) = crate::conntrack::watch_new(|c| {
                    me.observe(&c);
                    true
                }) {
                    tracing::warn!(error = %e, "no per-Service connection counts: conntrack events unavailable");
                }
            })
            .map(|_| ())
    }
}
