//! Services in front of listeners of this node itself, as the API server keeps
//! the `kubernetes` Service: a selector-less Service at a fixed cluster IP,
//! with Endpoints and an EndpointSlice pointing at the node's address, so the
//! service proxy sends the cluster IP's traffic to the node. rk publishes the
//! API server and the cluster DNS (`kube-system/kube-dns`) this way.

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The field manager of the published objects.
const MANAGER: &str = "rk-server";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";

/// One port: the Service's `port`, served on the node at `target`.
pub struct NodePort<'a> {
    pub name: &'a str,
    pub protocol: &'a str,
    pub port: u16,
    pub target: u16,
}

pub struct NodeService<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
    pub cluster_ip: IpAddr,
    /// Where the node serves the ports.
    pub address: IpAddr,
    pub ports: &'a [NodePort<'a>],
}

impl NodeService<'_> {
    fn meta(&self, extra_labels: &[(&str, &str)]) -> ObjectMeta {
        let labels: BTreeMap<String, String> = self.labels.iter().chain(extra_labels).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ObjectMeta { name: Some(self.name.into()), namespace: Some(self.namespace.into()), labels: Some(labels), ..Default::default() }
    }
}

/// Creates or updates the Service, its Endpoints and its EndpointSlice (server-side apply).
pub async fn publish(client: &kube::Client, node: &NodeService<'_>) -> Result<(), String> {
    let service = Service {
        metadata: node.meta(&[]),
        spec: Some(ServiceSpec {
            cluster_ip: Some(node.cluster_ip.to_string()),
            ports: Some(
                node.ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(p.name.into()),
                        port: i32::from(p.port),
                        protocol: Some(p.protocol.into()),
                        target_port: Some(IntOrString::Int(i32::from(p.target))),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    };
    let endpoints = Endpoints {
        metadata: node.meta(&[]),
        subsets: Some(vec![EndpointSubset {
            addresses: Some(vec![EndpointAddress { ip: node.address.to_string(), ..Default::default() }]),
            ports: Some(node.ports.iter().map(|p| EndpointPort { name: Some(p.name.into()), port: i32::from(p.target), protocol: Some(p.protocol.into()), app_protocol: None }).collect()),
            not_ready_addresses: None,
        }]),
    };
    let slice = EndpointSlice {
        metadata: node.meta(&[(SERVICE_NAME_LABEL, node.name), (MANAGED_BY_LABEL, MANAGER)]),
        address_type: if node.address.is_ipv4() { "IPv4" } else { "IPv6" }.into(),
        endpoints: vec![Endpoint {
            addresses: vec![node.address.to_string()],
            conditions: Some(EndpointConditions { ready: Some(true), serving: Some(true), terminating: Some(false) }),
            ..Default::default()
        }],
        ports: Some(node.ports.iter().map(|p| SlicePort { name: Some(p.name.into()), port: Some(i32::from(p.target)), protocol: Some(p.protocol.into()), app_protocol: None }).collect()),
    };
    let params = PatchParams::apply(MANAGER).force();
    let what = format!("{}/{}", node.namespace, node.name);
    Api::<Service>::namespaced(client.clone(), node.namespace)
        .patch(node.name, &params, &Patch::Apply(&service))
        .await
        .map_err(|e| format!("publishing the Service {what}: {e}"))?;
    Api::<Endpoints>::namespaced(client.clone(), node.namespace)
        .patch(node.name, &params, &Patch::Apply(&endpoints))
        .await
        .map_err(|e| format!("publishing the Endpoints {what}: {e}"))?;
    Api::<EndpointSlice>::namespaced(client.clone(), node.namespace)
        .patch(node.name, &params, &Patch::Apply(&slice))
        .await
        .map_err(|e| format!("publishing the EndpointSlice {what}: {e}"))?;
    Ok(())
}
