//! rk: a single-binary, Kubernetes-compatible cluster.
//!
//! The module map, in the order a request travels:
//! - [`server`]: wires everything into one process (`rk server`) with one shutdown signal.
//! - [`api`]: the API server, the only door to the store: TLS, authentication, the
//!   generic REST machinery driven by the resource registry, discovery, OpenAPI.
//! - [`store`]: etcd's role: a durable key space with one global revision and a
//!   revisioned watch log, on sled.
//! - [`sched`]: the scheduler: finds each unassigned pod a node and binds it there.
//! - [`controllers`]: the controller manager's control loops (ReplicaSets, Deployments,
//!   DaemonSets, StatefulSets, …).
//! - [`node`]: the node agent (pods as Docker containers), and the fake nodes used to
//!   exercise the control plane.
//! - [`net`]: node networking: the service proxy (nf_tables over netlink), the
//!   cluster DNS and the ingress proxy.
//! - [`pki`]: the cluster CA and the certificates and kubeconfig derived from it.
//! - [`runtime`]: informers, work queues, the controller runner and the event
//!   recorder that the scheduler, controllers and node agent share.
//! - [`client`]: how rk's own components reach the API in-process.
//! - [`join`], [`agent`]: join tokens, and `rk agent` joining another machine's node.
//! - [`bench`]: `rk bench`, figures for the notes measured through the real API.
pub mod agent;
pub mod api;
pub mod bench;
pub mod client;
pub mod controllers;
pub mod join;
pub mod net;
pub mod node;
pub mod pki;
pub mod runtime;
pub mod sched;
pub mod server;
pub mod store;
