//! The generated CRDs: every field documented (so `kubectl explain` works), no
//! schema constructs the API server refuses in a structural schema, and the files
//! in crds/ and charts/ticklab/crds/ exactly what crdgen writes today.
#![allow(clippy::unwrap_used)]

use kube::CustomResourceExt;
use serde_json::Value;
use ticklab_crd::{LatencyExperiment, MirrorSession, RecordingSession};

fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![
        LatencyExperiment::crd(),
        RecordingSession::crd(),
        MirrorSession::crd(),
    ]
}

/// Walks a schema; `path` names the field for the failure message.
fn check(schema: &Value, path: &str, missing: &mut Vec<String>, forbidden: &mut Vec<String>) {
    for key in ["$ref", "definitions", "$defs"] {
        if schema.get(key).is_some() {
            forbidden.push(format!("{path}: {key}"));
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let field = format!("{path}.{name}");
            if sub
                .get("description")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                missing.push(field.clone());
            }
            check(sub, &field, missing, forbidden);
        }
    }
    if let Some(items) = schema.get("items") {
        check(items, &format!("{path}[]"), missing, forbidden);
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(list) = schema.get(key).and_then(Value::as_array) {
            for s in list {
                check(s, path, missing, forbidden);
            }
        }
    }
}

#[test]
fn every_field_has_a_description_and_schemas_are_structural() {
    for crd in crds() {
        let name = crd.metadata.name.clone().unwrap();
        let schema = serde_json::to_value(
            &crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema,
        )
        .unwrap();
        let (mut missing, mut forbidden) = (Vec::new(), Vec::new());
        for part in ["spec", "status"] {
            check(
                &schema["properties"][part],
                part,
                &mut missing,
                &mut forbidden,
            );
        }
        // Fields of metav1.Condition are documented by Kubernetes.
        missing.retain(|f| !f.starts_with("status.conditions[]."));
        assert!(
            missing.is_empty(),
            "{name}: fields without a description: {missing:?}"
        );
        assert!(
            forbidden.is_empty(),
            "{name}: not structural: {forbidden:?}"
        );
    }
}

#[test]
fn committed_crds_match_the_types() {
    const REGENERATE: &str =
        "run `cargo run -p ticklab-crd --bin crdgen -- crds charts/ticklab/crds` and commit";
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // The plain copy for `kubectl apply -f crds/`, and the Helm chart's.
    for dir in ["crds", "charts/ticklab/crds"] {
        for crd in crds() {
            let name = crd.metadata.name.clone().unwrap();
            let path = format!("{dir}/{name}.yaml");
            let committed = std::fs::read_to_string(root.join(&path))
                .unwrap_or_else(|e| panic!("{path}: {e}; {REGENERATE}"));
            let expected = ticklab_crd::render_crd_yaml(&crd).unwrap();
            assert!(
                committed.ends_with(&expected),
                "{path} is stale: {REGENERATE}"
            );
        }
    }
}
