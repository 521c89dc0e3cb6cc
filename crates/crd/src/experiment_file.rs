//! Reads a `LatencyExperiment` from YAML outside a cluster (`ticklab run`), and every
//! ticklab resource of a multi-document manifest (`ticklab validate`), applying what
//! the API server would: the CRD's OpenAPI schema (bounds, enums, patterns),
//! unknown-field rejection, and the rules no schema expresses. Every error names the
//! file (and document) and the field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::CustomResourceExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::latency_experiment::{LatencyExperiment, LatencyExperimentSpec};
use crate::{MirrorSession, RecordingSession};

#[derive(Debug, thiserror::Error)]
pub enum ExperimentFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: not valid YAML: {message}")]
    Yaml { origin: String, message: String },
    #[error("{origin}: {field}: {problem}")]
    Invalid {
        origin: String,
        field: String,
        problem: String,
    },
}

/// Reads and validates an experiment file.
pub fn load_experiment(path: &Path) -> Result<LatencyExperiment, ExperimentFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ExperimentFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_experiment(&text, &path.display().to_string())
}

/// Parses and validates experiment YAML; `origin` names the source in errors.
pub fn parse_experiment(
    text: &str,
    origin: &str,
) -> Result<LatencyExperiment, ExperimentFileError> {
    let value: serde_json::Value =
        serde_yaml::from_str(text).map_err(|e| ExperimentFileError::Yaml {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
    match parse_resource(&value, origin, &["LatencyExperiment"])? {
        Manifest::Experiment(experiment) => Ok(experiment),
        Manifest::Recording(_) | Manifest::Mirror(_) => {
            Err(invalid(origin, "kind", "must be LatencyExperiment".into()))
        }
    }
}

/// One ticklab resource of a manifest file (a handful per file: boxing the larger
/// variant would buy nothing).
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Manifest {
    Experiment(LatencyExperiment),
    Recording(RecordingSession),
    Mirror(MirrorSession),
}

impl Manifest {
    pub fn kind(&self) -> &'static str {
        match self {
            Manifest::Experiment(_) => "LatencyExperiment",
            Manifest::Recording(_) => "RecordingSession",
            Manifest::Mirror(_) => "MirrorSession",
        }
    }

    pub fn name(&self) -> &str {
        let meta = match self {
            Manifest::Experiment(r) => &r.metadata,
            Manifest::Recording(r) => &r.metadata,
            Manifest::Mirror(r) => &r.metadata,
        };
        meta.name.as_deref().unwrap_or_default()
    }
}

/// Reads and validates every document of a manifest file (`---` separated), each a
/// LatencyExperiment, RecordingSession or MirrorSession.
pub fn load_manifests(path: &Path) -> Result<Vec<Manifest>, ExperimentFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ExperimentFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_manifests(&text, &path.display().to_string())
}

/// Parses and validates every document of `text`; errors name the document when
/// there is more than one. Empty documents are skipped; a file with none is an error.
pub fn parse_manifests(text: &str, origin: &str) -> Result<Vec<Manifest>, ExperimentFileError> {
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value =
            serde_json::Value::deserialize(document).map_err(|e| ExperimentFileError::Yaml {
                origin: origin.to_string(),
                message: e.to_string(),
            })?;
        documents.push(value);
    }
    let numbered = documents.len() > 1;
    let mut manifests = Vec::new();
    for (i, value) in documents.iter().enumerate() {
        if value.is_null() {
            continue;
        }
        let origin = if numbered {
            format!("{origin} (document {})", i + 1)
        } else {
            origin.to_string()
        };
        manifests.push(parse_resource(
            value,
            &origin,
            &["LatencyExperiment", "RecordingSession", "MirrorSession"],
        )?);
    }
    if manifests.is_empty() {
        return Err(invalid(origin, "kind", "no resource in the file".into()));
    }
    Ok(manifests)
}

fn invalid(origin: &str, field: &str, problem: String) -> ExperimentFileError {
    ExperimentFileError::Invalid {
        origin: origin.to_string(),
        field: field.to_string(),
        problem,
    }
}

/// Validates one resource whose kind is one of `kinds`.
fn parse_resource(
    value: &serde_json::Value,
    origin: &str,
    kinds: &[&str],
) -> Result<Manifest, ExperimentFileError> {
    let expected_api = format!("{}/{}", crate::GROUP, crate::VERSION);
    match value.get("apiVersion").and_then(|v| v.as_str()) {
        Some(api) if api == expected_api => {}
        other => {
            return Err(invalid(
                origin,
                "apiVersion",
                format!("must be {expected_api}, got {}", describe(other)),
            ));
        }
    }
    let kind = value.get("kind").and_then(|v| v.as_str());
    let Some(kind) = kind.filter(|k| kinds.contains(k)) else {
        return Err(invalid(
            origin,
            "kind",
            format!("must be {}, got {}", kinds.join(" or "), describe(kind)),
        ));
    };
    if value
        .pointer("/metadata/name")
        .and_then(|v| v.as_str())
        .is_none_or(str::is_empty)
    {
        return Err(invalid(origin, "metadata.name", "is required".into()));
    }
    match kind {
        "LatencyExperiment" => {
            let experiment: LatencyExperiment = checked(value, origin)?;
            check_name(experiment.metadata.name.as_deref().unwrap_or_default())
                .map_err(|problem| invalid(origin, "metadata.name", problem))?;
            check_rules(&experiment.spec)
                .map_err(|(field, problem)| invalid(origin, &field, problem))?;
            Ok(Manifest::Experiment(experiment))
        }
        "RecordingSession" => Ok(Manifest::Recording(checked(value, origin)?)),
        _ => Ok(Manifest::Mirror(checked(value, origin)?)),
    }
}

/// Structure first (unknown or missing fields, wrong types, unknown symbols): serde
/// names the offending key; then the bounds and patterns of the kind's schema.
fn checked<K>(value: &serde_json::Value, origin: &str) -> Result<K, ExperimentFileError>
where
    K: CustomResourceExt + DeserializeOwned,
{
    let Some(spec) = value.get("spec") else {
        return Err(invalid(origin, "spec", "is required".into()));
    };
    let resource: K = serde_path_to_error::deserialize(value)
        .map_err(|e| invalid(origin, &e.path().to_string(), e.inner().to_string()))?;
    check_schema::<K>(spec).map_err(|(field, problem)| invalid(origin, &field, problem))?;
    Ok(resource)
}

fn describe(v: Option<&str>) -> String {
    v.map_or_else(|| "nothing".to_string(), |s| format!("{s:?}"))
}

/// Validates `spec` against the schema the kind's CRD publishes, so local runs reject
/// what the API server rejects.
fn check_schema<K: CustomResourceExt>(spec: &serde_json::Value) -> Result<(), (String, String)> {
    let crd = K::crd();
    let schema = crd
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| s.properties.as_ref())
        .and_then(|p| p.get("spec"))
        .ok_or_else(|| {
            (
                "spec".to_string(),
                "CRD has no spec schema (bug)".to_string(),
            )
        })?;
    let schema = serde_json::to_value(schema).map_err(|e| ("spec".to_string(), e.to_string()))?;
    let validator = jsonschema::validator_for(&schema).map_err(|e| {
        (
            "spec".to_string(),
            format!("schema does not compile (bug): {e}"),
        )
    })?;
    if let Some(error) = validator.iter_errors(spec).next() {
        let pointer = error.instance_path().to_string();
        let field = if pointer.is_empty() {
            "spec".to_string()
        } else {
            format!("spec{}", pointer.replace('/', "."))
        };
        return Err((field, error.to_string()));
    }
    Ok(())
}

/// The checks the API server's CEL rules make, for an experiment that reached the
/// operator without them (stored before the CRD carried a rule): (field, problem).
pub fn validate_experiment(experiment: &LatencyExperiment) -> Result<(), (String, String)> {
    check_name(experiment.metadata.name.as_deref().unwrap_or_default())
        .map_err(|problem| ("metadata.name".to_string(), problem))?;
    check_rules(&experiment.spec)
}

/// The CRD's CEL rules on the name (the API server enforces them in a cluster).
fn check_name(name: &str) -> Result<(), String> {
    if name.len() > 40 {
        return Err(format!(
            "{name:?} is longer than 40 characters; it prefixes the names of the experiment's pods and Services"
        ));
    }
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !starts_with_letter || !valid_chars || name.ends_with('-') {
        return Err(format!(
            "{name:?} must start with a letter and hold only lowercase letters, digits and '-'"
        ));
    }
    Ok(())
}

/// Rules across fields: the CRD states them as CEL rules, which the API server
/// evaluates and the schema validator used here does not.
fn check_rules(spec: &LatencyExperimentSpec) -> Result<(), (String, String)> {
    let exchange = &spec.exchange;
    match &exchange.replay {
        None if exchange.symbols.is_empty() => {
            return Err((
                "spec.exchange.symbols".into(),
                "needs at least one instrument (unless exchange.replay is set)".into(),
            ));
        }
        None if exchange.rate_per_second == 0 => {
            return Err((
                "spec.exchange.ratePerSecond".into(),
                "must be at least 1, not 0 (it may be absent only when exchange.replay is set)"
                    .into(),
            ));
        }
        Some(replay) if replay.speed.is_some() && replay.top_speed => {
            return Err((
                "spec.exchange.replay".into(),
                "takes speed or topSpeed, not both".into(),
            ));
        }
        _ => {}
    }
    let mut seen = std::collections::HashSet::new();
    for (i, symbol) in spec.exchange.symbols.iter().enumerate() {
        if !seen.insert(symbol) {
            return Err((
                format!("spec.exchange.symbols[{i}]"),
                format!("{} is listed twice", symbol.symbol()),
            ));
        }
    }
    if let Some(burst) = &spec.exchange.microbursts
        && burst.duration_millis >= burst.every_millis
    {
        return Err((
            "spec.exchange.microbursts.durationMillis".into(),
            format!(
                "must be shorter than everyMillis ({} >= {})",
                burst.duration_millis, burst.every_millis
            ),
        ));
    }
    if let Some(text) = &spec.duration {
        parse_duration(text).map_err(|problem| ("spec.duration".to_string(), problem))?;
    }
    if let Some(slo) = &spec.slo
        && slo.p99_micros.is_none()
        && slo.max_loss_percent.is_none()
    {
        return Err((
            "spec.slo".into(),
            "needs p99Micros or maxLossPercent (or both)".into(),
        ));
    }
    let persistence = &spec.trader.persistence;
    if !persistence.enabled && persistence.external_uri_secret.is_some() {
        return Err((
            "spec.trader.persistence.externalUriSecret".into(),
            "is set but persistence is disabled".into(),
        ));
    }
    Ok(())
}

/// Parses "10s", "1m30s", "250ms" (Kubernetes-style durations).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration: {e}"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

impl LatencyExperimentSpec {
    /// The run length, if the spec sets one (already validated by the loader).
    pub fn run_duration(&self) -> Option<Duration> {
        self.duration
            .as_deref()
            .and_then(|d| parse_duration(d).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Instrument, Transport};

    const GOOD: &str = r#"
apiVersion: ticklab.dev/v1alpha1
kind: LatencyExperiment
metadata:
  name: quick
spec:
  exchange:
    symbols: [EURUSD, BTCUSD]
    ratePerSecond: 10000
  duration: 5s
"#;

    fn error_of(yaml: &str) -> String {
        parse_experiment(yaml, "x.yaml").unwrap_err().to_string()
    }

    #[test]
    fn good_file_parses_with_defaults() {
        let e = parse_experiment(GOOD, "x.yaml").unwrap();
        assert_eq!(
            e.spec.exchange.symbols,
            vec![Instrument::EurUsd, Instrument::BtcUsd]
        );
        assert_eq!(e.spec.exchange.transport, Transport::Udp);
        assert_eq!(e.spec.exchange.max_packet_bytes, 1472);
        assert_eq!(e.spec.run_duration(), Some(Duration::from_secs(5)));
        assert!(e.spec.trader.strategy.enabled);
    }

    #[test]
    fn bad_input_names_the_field() {
        let e = error_of(&GOOD.replace("10000", "0"));
        assert!(e.contains("spec.exchange.ratePerSecond"), "{e}");
        assert!(e.starts_with("x.yaml: "), "{e}");

        let e = error_of(&GOOD.replace("BTCUSD]", "FOOBAR]"));
        assert!(
            e.contains("spec.exchange.symbols") && e.contains("FOOBAR"),
            "{e}"
        );

        let e = error_of(&GOOD.replace("ratePerSecond", "ratePerSec"));
        assert!(e.contains("ratePerSec"), "{e}");

        let e = error_of(&GOOD.replace("5s", "five seconds"));
        assert!(e.contains("spec.duration"), "{e}");

        let e = error_of(&GOOD.replace("kind: LatencyExperiment", "kind: Pod"));
        assert!(e.contains("kind") && e.contains("Pod"), "{e}");

        let e = error_of(&GOOD.replace("[EURUSD, BTCUSD]", "[EURUSD, EURUSD]"));
        assert!(e.contains("listed twice"), "{e}");

        let e = error_of(&GOOD.replace("name: quick", "name: 9lives"));
        assert!(
            e.contains("metadata.name") && e.contains("start with a letter"),
            "{e}"
        );

        let e = error_of(&GOOD.replace("name: quick", &format!("name: {}", "q".repeat(41))));
        assert!(e.contains("metadata.name") && e.contains("40"), "{e}");

        let e = error_of(&GOOD.replace("  duration: 5s", "  duration: 5s\n  slo: {}"));
        assert!(e.contains("spec.slo") && e.contains("p99Micros"), "{e}");

        let e = error_of(&GOOD.replace(
            "  duration: 5s",
            "  duration: 5s\n  trader:\n    persistence:\n      enabled: false\n      externalUriSecret: {name: db, key: uri}",
        ));
        assert!(e.contains("externalUriSecret"), "{e}");

        let e = error_of("spec: [unclosed");
        assert!(e.contains("not valid YAML"), "{e}");
    }

    #[test]
    fn unknown_nested_field_is_rejected() {
        let yaml = GOOD.replace(
            "  duration: 5s",
            "  duration: 5s\n  trader:\n    stratgy: {}",
        );
        let e = error_of(&yaml);
        assert!(e.contains("stratgy"), "{e}");
    }

    #[test]
    fn every_document_of_a_manifest_is_validated_and_errors_name_the_document() {
        let recording = r#"
apiVersion: ticklab.dev/v1alpha1
kind: RecordingSession
metadata:
  name: rec
spec:
  experiment: quick
  enabled: false
"#;
        let mirror = r#"
apiVersion: ticklab.dev/v1alpha1
kind: MirrorSession
metadata:
  name: mirror
spec:
  experiment: quick
  filter: [{direction: ingress, protocol: udp, ports: [9100]}]
"#;
        let text = format!("{GOOD}---\n{recording}---\n{mirror}---\n");
        let manifests = parse_manifests(&text, "x.yaml").unwrap();
        let kinds: Vec<_> = manifests.iter().map(|m| (m.kind(), m.name())).collect();
        assert_eq!(
            kinds,
            [
                ("LatencyExperiment", "quick"),
                ("RecordingSession", "rec"),
                ("MirrorSession", "mirror")
            ]
        );
        let Manifest::Recording(r) = &manifests[1] else {
            panic!("{manifests:?}")
        };
        assert!(!r.spec.enabled);

        let bad = text.replace("enabled: false", "enabled: false\n  storage: lots");
        let e = parse_manifests(&bad, "x.yaml").unwrap_err().to_string();
        assert!(e.starts_with("x.yaml (document 2): spec.storage"), "{e}");
        let bad = text.replace("direction: ingress", "direction: sideways");
        let e = parse_manifests(&bad, "x.yaml").unwrap_err().to_string();
        assert!(e.contains("document 3") && e.contains("sideways"), "{e}");
        let bad = text.replace("ratePerSecond: 10000", "ratePerSecond: 0");
        let e = parse_manifests(&bad, "x.yaml").unwrap_err().to_string();
        assert!(
            e.starts_with("x.yaml (document 1): spec.exchange.ratePerSecond"),
            "{e}"
        );
        let e = parse_manifests("---\n", "x.yaml").unwrap_err().to_string();
        assert!(e.contains("no resource"), "{e}");
        // One document: no numbering; `run` still takes only an experiment.
        let e = parse_manifests(recording, "x.yaml")
            .map(|m| m.len())
            .unwrap();
        assert_eq!(e, 1);
        let e = parse_experiment(recording, "x.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("must be LatencyExperiment, got \"RecordingSession\""),
            "{e}"
        );
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let e = load_experiment(Path::new("/nonexistent/x.yaml")).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read /nonexistent/x.yaml"),
            "{e}"
        );
    }
}
