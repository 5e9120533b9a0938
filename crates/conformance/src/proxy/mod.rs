//! The proxy corpus (`shared/testdata/proxy`) and its runners.
//!
//! - [`corpus`]: the case-file schema, fixtures prepared into a model and settings, and
//!   the pure checks (rendered rules, packet flows through the iptables tracer).
//! - [`flows`]: real-kernel packet flows in network namespaces (a node namespace owning
//!   the fixture's local addresses, client and endpoint namespaces).
//! - [`ipvs`]: the corpus's flows checked against the ipvs plan.
//! - [`userspace`]: the corpus's flows through the userspace mode in namespaces.

pub mod corpus;
pub mod flows;
pub mod ipvs;
pub mod userspace;
