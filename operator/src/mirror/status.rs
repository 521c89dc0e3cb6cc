//! A MirrorSession's status from what the controller observed: the experiment, the
//! capture Deployment, the mirrors in the target pods (or why admission refused
//! them), and the capture's report. Pure, so every condition is tested without a
//! cluster. What the capture last reported is kept while it cannot be reached.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use ticklab_capture::analyzer::WireReport;
use ticklab_crd::MirrorSessionStatus;

use crate::recording::status::Workload;

pub const EXPERIMENT_FOUND: &str = "ExperimentFound";
pub const READY: &str = "Ready";
pub const MIRRORING: &str = "Mirroring";

/// The mirrors in the target pods (sidecar mode).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mirrors {
    /// Target pods found (running).
    pub targets: Vec<String>,
    /// Pods whose mirror container runs.
    pub running: Vec<String>,
    /// Why adding the mirror was refused, when it was (admission, RBAC).
    pub refused: Option<Refusal>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

/// Turns the API server's answer to adding the mirror into a refusal a person can
/// act on: Pod Security admission (NET_RAW is beyond both baseline and restricted),
/// or missing rights.
pub fn refusal(code: u16, message: &str) -> Refusal {
    if message.contains("PodSecurity") || message.contains("violates") {
        Refusal {
            reason: "PodSecurity",
            message: format!(
                "the namespace's Pod Security admission refused the mirror, which needs the NET_RAW capability \
                 (neither the restricted nor the baseline level allows it): label the namespace \
                 pod-security.kubernetes.io/enforce=privileged to mirror in it, or use mode: vpc. The API server said: {message}"
            ),
        }
    } else if code == 403 {
        Refusal {
            reason: "Forbidden",
            message: format!(
                "the operator may not add the mirror to the pods (it needs patch on pods/ephemeralcontainers): {message}"
            ),
        }
    } else {
        Refusal {
            reason: "MirrorRefused",
            message: format!("the API server refused the mirror container ({code}): {message}"),
        }
    }
}

pub struct Observed<'a> {
    pub experiment: &'a str,
    pub namespace: &'a str,
    pub experiment_found: bool,
    pub workload: Workload,
    /// None in vpc mode.
    pub mirrors: Option<Mirrors>,
    pub capture: Result<&'a WireReport, String>,
    pub endpoint: String,
}

pub fn status(
    generation: Option<i64>,
    observed: &Observed<'_>,
    previous: &MirrorSessionStatus,
    now: Timestamp,
) -> MirrorSessionStatus {
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" }.to_string();
        // The transition time moves only when the status does.
        let since = previous
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or(Time(now), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            last_transition_time: since,
            observed_generation: generation,
        }
    };
    let mut conditions = Vec::new();
    conditions.push(if observed.experiment_found {
        condition(EXPERIMENT_FOUND, true, "Found", format!("LatencyExperiment {} exists", observed.experiment))
    } else {
        condition(
            EXPERIMENT_FOUND,
            false,
            "ExperimentNotFound",
            format!(
                "LatencyExperiment {:?} not found in namespace {}: nothing to mirror until it exists",
                observed.experiment, observed.namespace
            ),
        )
    });
    conditions.push(match (&observed.workload, &observed.capture) {
        (Workload::Available, Ok(_)) => condition(
            READY,
            true,
            "CaptureRunning",
            format!("the capture receives VXLAN at {}", observed.endpoint),
        ),
        (Workload::Available, Err(why)) => {
            condition(READY, false, "CaptureUnreachable", why.clone())
        }
        (Workload::Starting, _) => condition(
            READY,
            false,
            "CaptureStarting",
            "the capture's pod is not available yet".into(),
        ),
        (Workload::Stuck(why), _) => condition(READY, false, "CaptureFailed", why.clone()),
        (Workload::Missing, _) => condition(
            READY,
            false,
            "NoCapture",
            "the capture is not created (its experiment does not exist)".into(),
        ),
    });
    let frames = observed
        .capture
        .as_ref()
        .map_or(previous.packets_mirrored, |r| r.frames);
    conditions.push(match &observed.mirrors {
        Some(Mirrors {
            refused: Some(r), ..
        }) => condition(MIRRORING, false, r.reason, r.message.clone()),
        Some(m) if m.targets.is_empty() => condition(
            MIRRORING,
            false,
            "NoTargetPods",
            "no running pod of the target to mirror (yet)".into(),
        ),
        Some(m) if m.running.len() < m.targets.len() => condition(
            MIRRORING,
            false,
            "MirrorStarting",
            format!(
                "the mirror runs in {} of {} target pods",
                m.running.len(),
                m.targets.len()
            ),
        ),
        Some(m) if frames == 0 => condition(
            MIRRORING,
            false,
            "WaitingForTraffic",
            format!(
                "the mirror runs in {}; no frame has reached the capture yet",
                m.running.join(", ")
            ),
        ),
        Some(m) => condition(
            MIRRORING,
            true,
            "Mirroring",
            format!("mirroring {} to the capture", m.running.join(", ")),
        ),
        None if frames == 0 => condition(
            MIRRORING,
            false,
            "WaitingForTraffic",
            format!(
                "no VXLAN received yet: point the AWS traffic mirror target at {}",
                observed.endpoint
            ),
        ),
        None => condition(
            MIRRORING,
            true,
            "Mirroring",
            "receiving AWS VPC Traffic Mirroring".into(),
        ),
    });

    let mut status = MirrorSessionStatus {
        observed_generation: generation,
        conditions,
        capture_endpoint: Some(observed.endpoint.clone()),
        mirrored_pods: observed
            .mirrors
            .as_ref()
            .map(|m| m.running.clone())
            .unwrap_or_default(),
        ..previous.clone()
    };
    if let Ok(r) = observed.capture {
        status.packets_mirrored = r.frames;
        status.packets_decoded = r.packets_decoded;
        status.packets_truncated = r.truncated;
        status.decode_errors = r.errors();
        status.decode_errors_by_kind = r.decode_errors.clone();
        status.trades = r.messages.trades;
        status.trades_recovered = r.messages.trades_recovered;
        status.orders = r.messages.orders;
        status.orders_matched = r.messages.orders_matched;
        status.tls_records_decrypted = r.tls.records_decrypted;
        status.timing = (r.frames > 0).then(|| r.timing.clone());
        status.feed_latency = r.feed_latency.clone();
        status.tick_to_trade = r.tick_to_trade.clone();
        status.order_wire_minus_app = r.order_wire_minus_app.clone();
        status.trade_app_minus_wire = r.trade_app_minus_wire.clone();
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed<'a>(
        capture: Result<&'a WireReport, String>,
        mirrors: Option<Mirrors>,
    ) -> Observed<'a> {
        Observed {
            experiment: "lab",
            namespace: "ns",
            experiment_found: true,
            workload: Workload::Available,
            mirrors,
            capture,
            endpoint: "m-capture.ns.svc:4789".into(),
        }
    }

    fn condition<'a>(s: &'a MirrorSessionStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn admission_refusal_says_what_the_namespace_needs() {
        let r = refusal(
            403,
            "pods \"t\" is forbidden: violates PodSecurity \"restricted:latest\": unrestricted capabilities (container \"mirror-m\" must set securityContext.capabilities.drop=[\"ALL\"]; container \"mirror-m\" must not include \"NET_RAW\" in securityContext.capabilities.add)",
        );
        let report = WireReport::default();
        let m = Mirrors {
            targets: vec!["t".into()],
            running: vec![],
            refused: Some(r),
        };
        let s = status(
            Some(1),
            &observed(Ok(&report), Some(m)),
            &Default::default(),
            Timestamp::now(),
        );
        let c = condition(&s, MIRRORING);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "PodSecurity")
        );
        assert!(
            c.message
                .contains("pod-security.kubernetes.io/enforce=privileged"),
            "{}",
            c.message
        );
        assert_eq!(refusal(403, "cannot patch resource").reason, "Forbidden");
    }

    #[test]
    fn figures_come_from_the_report_and_stay_while_it_is_unreachable() {
        let mut report = WireReport {
            frames: 10,
            packets_decoded: 9,
            timing: "interface".into(),
            ..Default::default()
        };
        report.messages.trades = 40;
        report.decode_errors.insert("tcp_gap".into(), 2);
        let m = Mirrors {
            targets: vec!["t".into()],
            running: vec!["t".into()],
            refused: None,
        };
        let s = status(
            Some(1),
            &observed(Ok(&report), Some(m.clone())),
            &Default::default(),
            Timestamp::now(),
        );
        assert_eq!(
            (
                s.packets_mirrored,
                s.packets_decoded,
                s.trades,
                s.decode_errors
            ),
            (10, 9, 40, 2)
        );
        assert_eq!(condition(&s, MIRRORING).status, "True");
        assert_eq!(condition(&s, READY).status, "True");
        assert_eq!(s.mirrored_pods, vec!["t".to_string()]);
        let later = status(
            Some(1),
            &observed(Err("cannot reach".into()), Some(m)),
            &s,
            Timestamp::now(),
        );
        assert_eq!(later.trades, 40, "the last figures stand");
        assert_eq!(condition(&later, READY).reason, "CaptureUnreachable");
        assert_eq!(
            condition(&later, EXPERIMENT_FOUND).last_transition_time,
            condition(&s, EXPERIMENT_FOUND).last_transition_time
        );
    }

    #[test]
    fn vpc_mode_waits_for_traffic_and_names_the_target() {
        let report = WireReport::default();
        let s = status(
            Some(1),
            &observed(Ok(&report), None),
            &Default::default(),
            Timestamp::now(),
        );
        let c = condition(&s, MIRRORING);
        assert_eq!(c.reason, "WaitingForTraffic");
        assert!(c.message.contains("m-capture.ns.svc:4789"));
    }
}
