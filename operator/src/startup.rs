//! Checks made before the operator starts reconciling: the API server is reachable
//! and ticklab's CRDs are installed. Each failure is one line that says what to do.

use kube::api::ListParams;
use kube::{Api, Client, CustomResourceExt, Resource};
use serde::de::DeserializeOwned;
use ticklab_crd::{LatencyExperiment, MirrorSession, RecordingSession};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "the CustomResourceDefinition {crd} is not installed: install ticklab's CRDs first \
         (kubectl apply -f crds/, or the Helm chart)"
    )]
    CrdMissing { crd: String },
    #[error("cannot list {crd}: {source}")]
    Api {
        crd: String,
        #[source]
        source: kube::Error,
    },
}

/// Fails when any of ticklab's CRDs is missing (a 404 on its list endpoint).
pub async fn check_crds(client: &Client, namespace: Option<&str>) -> Result<(), StartupError> {
    check::<LatencyExperiment>(client, namespace).await?;
    check::<RecordingSession>(client, namespace).await?;
    check::<MirrorSession>(client, namespace).await?;
    Ok(())
}

async fn check<K>(client: &Client, namespace: Option<&str>) -> Result<(), StartupError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + CustomResourceExt
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let crd = K::crd_name().to_string();
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            Err(StartupError::CrdMissing { crd })
        }
        Err(source) => Err(StartupError::Api { crd, source }),
    }
}
