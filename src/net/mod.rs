//! Node networking: the cluster DNS and the ingress proxy, and the Services
//! that put a cluster IP in front of listeners of the node itself.

pub mod dns;
pub mod ingress;
pub mod node_service;
