//! Service account controllers: every active namespace has a `default`
//! ServiceAccount and a `kube-root-ca.crt` ConfigMap with the cluster CA (what
//! pods mount to trust the API), and Secrets of type
//! `kubernetes.io/service-account-token` get a long-lived token, the CA and the
//! namespace filled in. Tokens come from the TokenRequest API, like any client's.

use super::Context;
use crate::api::admission::ROOT_CA_CONFIGMAP;
use crate::runtime::{Change, Controller, Error, Informer, Next, Reconciler, split_key};
use async_trait::async_trait;
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;
use std::sync::Arc;

pub const DEFAULT_ACCOUNT: &str = "default";
const TOKEN_SECRET_TYPE: &str = "kubernetes.io/service-account-token";
const ACCOUNT_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
const ACCOUNT_UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";
/// Legacy token Secrets hold tokens that do not expire in practice; deleting the
/// Secret (or the account) revokes them.
const LEGACY_TOKEN_SECONDS: i64 = 10 * 365 * 24 * 3600;

fn namespace_active(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none() && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
}

/// Per namespace: the default account and the root CA ConfigMap.
struct NamespaceContent {
    namespaces: Informer<Namespace>,
    accounts: Informer<ServiceAccount>,
    configmaps: Informer<ConfigMap>,
    client: kube::Client,
    ca_pem: String,
}

#[async_trait]
impl Reconciler for NamespaceContent {
    async fn reconcile(&self, key: &str) -> Result<Next, Error> {
        let Some(ns) = self.namespaces.get(key).filter(|ns| namespace_active(ns)) else { return Ok(Next::Done) };
        let name = ns.name_any();
        let created = |r: Result<(), kube::Error>| match r {
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 => Ok(()),
            other => other,
        };
        if self.accounts.get(&format!("{name}/{DEFAULT_ACCOUNT}")).is_none() {
            let sa = ServiceAccount { metadata: kube::api::ObjectMeta { name: Some(DEFAULT_ACCOUNT.into()), ..Default::default() }, ..Default::default() };
            created(Api::<ServiceAccount>::namespaced(self.client.clone(), &name).create(&PostParams::default(), &sa).await.map(drop))?;
        }
        let wanted_data = [("ca.crt".to_owned(), self.ca_pem.clone())].into();
        let configmaps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &name);
        match self.configmaps.get(&format!("{name}/{ROOT_CA_CONFIGMAP}")) {
            Some(cm) if cm.data.as_ref() == Some(&wanted_data) => {}
            Some(_) => {
                configmaps.patch(ROOT_CA_CONFIGMAP, &PatchParams::default(), &Patch::Merge(json!({ "data": wanted_data }))).await?;
            }
            None => {
                let cm = ConfigMap {
                    metadata: kube::api::ObjectMeta {
                        name: Some(ROOT_CA_CONFIGMAP.into()),
                        annotations: Some([("kubernetes.io/description".to_owned(), "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_owned())].into()),
                        ..Default::default()
                    },
                    data: Some(wanted_data),
                    ..Default::default()
                };
                created(configmaps.create(&PostParams::default(), &cm).await.map(drop))?;
            }
        }
        Ok(Next::Done)
    }
}

/// Fills token Secrets.
struct TokenSecrets {
    secrets: Informer<Secret>,
    accounts: Informer<ServiceAccount>,
    client: kube::Client,
    ca_pem: String,
}

#[async_trait]
impl Reconciler for TokenSecrets {
    async fn reconcile(&self, key: &str) -> Result<Next, Error> {
        let Some(secret) = self.secrets.get(key) else { return Ok(Next::Done) };
        if secret.type_.as_deref() != Some(TOKEN_SECRET_TYPE) || secret.metadata.deletion_timestamp.is_some() {
            return Ok(Next::Done);
        }
        let (namespace, name) = split_key(key);
        let Some(account_name) = secret.annotations().get(ACCOUNT_NAME_ANNOTATION).cloned() else { return Ok(Next::Done) };
        let Some(account) = self.accounts.get(&format!("{namespace}/{account_name}")) else {
            return Ok(Next::Done); // Filled in once the account exists (its creation wakes us).
        };
        if secret.data.as_ref().is_some_and(|d| d.contains_key("token")) {
            return Ok(Next::Done);
        }
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(LEGACY_TOKEN_SECONDS),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Secret".into()),
                    name: Some(name.to_owned()),
                    uid: secret.uid(),
                }),
            },
            ..Default::default()
        };
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let issued = accounts.create_token_request(&account_name, &PostParams::default(), &request).await?;
        let token = issued.status.map(|s| s.token).unwrap_or_default();
        let data = [
            ("token", token.into_bytes()),
            ("ca.crt", self.ca_pem.clone().into_bytes()),
            ("namespace", namespace.as_bytes().to_vec()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v)))
        .collect::<std::collections::BTreeMap<_, _>>();
        let patch = json!({
            "metadata": { "annotations": { ACCOUNT_UID_ANNOTATION: account.uid() } },
            "data": data,
        });
        Api::<Secret>::namespaced(self.client.clone(), namespace).patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        Ok(Next::Done)
    }
}

/// Runs both controllers until shutdown.
pub async fn run(ctx: Context) {
    let namespaces = ctx.informers.get::<Namespace>();
    let accounts = ctx.informers.get::<ServiceAccount>();
    let configmaps = ctx.informers.get::<ConfigMap>();
    let secrets = ctx.informers.get::<Secret>();
    let by_namespace = |c: &Change<ServiceAccount>| vec![c.object().namespace().unwrap_or_default()];
    let content = Controller::new("serviceaccount-controller", ctx.options.workers)
        .owns_kind(&namespaces)
        .watch(&accounts, by_namespace)
        .watch(&configmaps, |c: &Change<ConfigMap>| {
            let cm = c.object();
            if cm.name_any() == ROOT_CA_CONFIGMAP { vec![cm.namespace().unwrap_or_default()] } else { vec![] }
        });
    let token_secrets = secrets.clone();
    let tokens = Controller::new("serviceaccount-token-controller", ctx.options.workers).owns_kind(&secrets).watch(&accounts, move |c| {
        let sa = c.object();
        let namespace = sa.namespace().unwrap_or_default();
        token_secrets
            .list_namespace(&namespace)
            .iter()
            .filter(|s| s.annotations().get(ACCOUNT_NAME_ANNOTATION) == Some(&sa.name_any()))
            .map(|s| format!("{namespace}/{}", s.name_any()))
            .collect()
    });
    let first = Arc::new(NamespaceContent { namespaces, accounts: accounts.clone(), configmaps, client: ctx.client.clone(), ca_pem: ctx.cluster_ca.clone() });
    let second = Arc::new(TokenSecrets { secrets, accounts, client: ctx.client.clone(), ca_pem: ctx.cluster_ca.clone() });
    tokio::join!(content.run(first, ctx.shutdown.clone()), tokens.run(second, ctx.shutdown.clone()));
}
