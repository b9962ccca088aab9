//! rk: a single-binary, Kubernetes-compatible cluster.
pub mod store;
