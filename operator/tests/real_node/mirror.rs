//! A MirrorSession in real pods: the chart's operator adds the mirror to the running
//! trader pod as an ephemeral container (the namespace's Pod Security level set to
//! privileged: NET_RAW is beyond restricted and baseline), the mirror captures the
//! pod's own interface with AF_PACKET and sends VXLAN to the capture pod through its
//! Service, and the capture's figures reach the session's status. The trader takes a
//! TLS WebSocket feed and sends its orders over HTTPS, both connected long before the
//! mirror joins, so no handshake is captured: the capture finds the keys (from the
//! trader's key log) and record numbers by trial decryption, and decodes trades and
//! orders, timed at the pod, with one-way latency and tick-to-trade from the wire.
//! The trader pod is not restarted. Deleting the session deletes the capture.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use ticklab_crd::{MirrorSession, MirrorSessionStatus};

use super::harness::{DumpLogsOnFailure, Steps, install_chart, use_real_node};
use super::{REAL_NODE, apply, wait_running};
use crate::support::{wait_for, with_temp_ns};

async fn status(client: &Client, ns: &str) -> Option<MirrorSessionStatus> {
    Api::<MirrorSession>::namespaced(client.clone(), ns)
        .get_opt("wire")
        .await
        .ok()??
        .status
}

async fn trader_pod(client: &Client, ns: &str) -> Pod {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/component=trader"))
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_joins_a_real_trader_pod_and_the_wire_reaches_the_status() {
    let _node = REAL_NODE.lock().await;
    with_temp_ns("real-mirror", |client, ns| async move {
        let _logs = DumpLogsOnFailure(ns.clone());
        let mut steps = Steps::new();
        use_real_node(&client, &ns).await;
        Api::<Namespace>::all(client.clone())
            .patch(
                &ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}})),
            )
            .await
            .unwrap();
        let _release = install_chart(&ns, &[]);
        steps.done("helm install --wait (operator Ready)");
        apply(
            &ns,
            &json!({
                "apiVersion": "ticklab.dev/v1alpha1", "kind": "LatencyExperiment",
                "metadata": {"name": "wired"},
                "spec": {
                    "exchange": {"symbols": ["EURUSD", "BTCUSD"], "ratePerSecond": 5000, "seed": 9, "transport": "websocket"},
                    "trader": {"persistence": {"enabled": false}, "orderTransport": "http",
                               "strategy": {"thresholdBps": 2, "maxOrdersPerSecond": 200}},
                    "tls": {"keyLog": true},
                    "duration": "90s",
                },
            }),
        );
        wait_running(&client, &ns, "wired", "trader").await;
        let before = trader_pod(&client, &ns).await;
        steps.done("experiment running");
        apply(
            &ns,
            &json!({
                "apiVersion": "ticklab.dev/v1alpha1", "kind": "MirrorSession",
                "metadata": {"name": "wire"},
                "spec": {"experiment": "wired", "vni": 77},
            }),
        );

        // The mirror runs in the trader pod, and the capture decodes its feed.
        let s = wait_for("the wire's figures in the session's status", Duration::from_secs(180), || async {
            let s = status(&client, &ns).await?;
            let mirroring = s.conditions.iter().any(|c| c.type_ == "Mirroring" && c.status == "True");
            (mirroring
                && s.trades > 1000
                && s.orders_matched > 0
                && s.feed_latency.is_some()
                && s.tick_to_trade.is_some())
            .then_some(s)
        })
        .await;
        steps.done("mirror running, wire figures in the status");
        assert_eq!(s.timing.as_deref(), Some("interface"), "frames stamped at the pod: {s:?}");
        assert_eq!(s.mirrored_pods, vec![before.name_any()]);
        assert!(s.packets_decoded > 0 && s.packets_decoded <= s.packets_mirrored, "{s:?}");
        assert!(s.feed_latency.as_ref().unwrap().p50_micros > 0.0, "{s:?}");
        assert!(s.tls_records_decrypted > 0, "{s:?}");
        let tls_errors: Vec<_> = s
            .decode_errors_by_kind
            .keys()
            .filter(|k| k.starts_with("tls_"))
            .collect();
        assert!(tls_errors.is_empty(), "every record joined decrypts: {s:?}");
        eprintln!(
            "wire (wss and HTTPS joined mid-stream): {} trades and {} orders decoded, {} TLS records, feed latency p50 {:.1} µs p99 {:.1} µs; decode errors {:?}",
            s.trades,
            s.orders,
            s.tls_records_decrypted,
            s.feed_latency.as_ref().unwrap().p50_micros,
            s.feed_latency.as_ref().unwrap().p99_micros,
            s.decode_errors_by_kind
        );
        // The trader was not restarted: same pod, same uid, no container restarts.
        let after = trader_pod(&client, &ns).await;
        assert_eq!(after.uid(), before.uid());
        let restarts: i32 = after
            .status
            .as_ref()
            .and_then(|st| st.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).sum())
            .unwrap_or_default();
        assert_eq!(restarts, 0);

        // Deleting the session deletes the capture.
        Api::<MirrorSession>::namespaced(client.clone(), &ns)
            .delete("wire", &DeleteParams::foreground())
            .await
            .unwrap();
        wait_for("the capture to be deleted", Duration::from_secs(60), || async {
            Api::<Deployment>::namespaced(client.clone(), &ns)
                .get_opt("wire-capture")
                .await
                .ok()?
                .is_none()
                .then_some(())
        })
        .await;
        steps.done("session deleted, capture gone");
        eprintln!("{}", steps.report());
    })
    .await;
}
