//! ticklab's custom resources and the data they share with the services: one file per
//! kind, the instrument catalogue, the results shape, and the loader that reads an
//! experiment from YAML with the same validation the API server applies.
//! No runtime dependencies: the operator, the services and the CLI all build on it.

#![forbid(unsafe_code)]

pub mod experiment_file;
pub mod instruments;
pub mod latency_experiment;
pub mod mirror_session;
pub mod recording_session;
pub mod results;

pub use experiment_file::{
    ExperimentFileError, Manifest, load_experiment, load_manifests, parse_experiment,
    parse_manifests, validate_experiment,
};
pub use instruments::{Instrument, InstrumentProfile};
pub use latency_experiment::*;
pub use mirror_session::{MirrorSession, MirrorSessionSpec, MirrorSessionStatus};
pub use recording_session::{RecordingSession, RecordingSessionSpec, RecordingSessionStatus};
pub use results::{ExperimentResults, LatencySummary, SloVerdict};

/// API group of every ticklab resource.
pub const GROUP: &str = "ticklab.dev";
/// API version of every ticklab resource.
pub const VERSION: &str = "v1alpha1";

/// A CRD as YAML with every mapping's keys sorted, so the text is the same however
/// the build was configured (another crate in a workspace build can switch
/// serde_json to insertion order); crdgen writes it and CI compares it.
pub fn render_crd_yaml(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Result<String, serde_yaml::Error> {
    fn sorted(value: serde_json::Value) -> serde_yaml::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_yaml::Value::Mapping(
                    entries
                        .into_iter()
                        .map(|(k, v)| (serde_yaml::Value::String(k), sorted(v)))
                        .collect(),
                )
            }
            serde_json::Value::Array(items) => {
                serde_yaml::Value::Sequence(items.into_iter().map(sorted).collect())
            }
            other => serde_yaml::to_value(other).unwrap_or(serde_yaml::Value::Null),
        }
    }
    let value =
        serde_json::to_value(crd).map_err(<serde_yaml::Error as serde::ser::Error>::custom)?;
    serde_yaml::to_string(&sorted(value))
}
