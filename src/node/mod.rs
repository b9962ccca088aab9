//! The node agent (the kubelet's role). For now: fake nodes for exercising the
//! control plane at scale; the Docker-backed agent arrives with its issue.

pub mod fake;
