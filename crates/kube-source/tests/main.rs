//! The source against recorded API server exchanges, and the deploy manifests against
//! the source.

mod kubeconfig;
mod node_leases;
mod rbac;
mod replay;
mod support;
