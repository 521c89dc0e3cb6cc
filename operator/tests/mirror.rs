//! MirrorSessions against the real control plane (scripts/control-plane.sh; pods
//! on kwok's fake nodes, so no container runs): a session gets its capture
//! (ConfigMap, Service with UDP 4789, Deployment) and its mirror in the trader's
//! pod as an ephemeral container with NET_RAW and nothing else, its status follows
//! a real capture service (in this process, reached through `--capture-url`, fed
//! VXLAN by the test), and deleting the session deletes the capture. In a
//! namespace whose Pod Security level is restricted, admission refuses the
//! mirror and the session says what the namespace needs.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::UdpSocket;
use std::time::Duration;

use etherparse::PacketBuilder;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use support::{Operator, wait_for, with_temp_ns};
use ticklab_capture::vxlan::{self, Direction, Trailer};
use ticklab_crd::{LatencyExperiment, MirrorSession};
use ticklab_mirror::MirrorConfig;
use tokio_util::sync::CancellationToken;

fn experiment(name: &str) -> LatencyExperiment {
    serde_json::from_value(json!({
        "apiVersion": "ticklab.dev/v1alpha1",
        "kind": "LatencyExperiment",
        "metadata": {"name": name},
        "spec": {"exchange": {"symbols": ["EURUSD"], "ratePerSecond": 1000},
                 "trader": {"persistence": {"enabled": false}}},
    }))
    .unwrap()
}

fn session(name: &str, experiment: &str) -> MirrorSession {
    serde_json::from_value(json!({
        "apiVersion": "ticklab.dev/v1alpha1",
        "kind": "MirrorSession",
        "metadata": {"name": name},
        "spec": {"experiment": experiment, "vni": 42, "packetLength": 512,
                 "filter": [{"direction": "ingress", "protocol": "udp"},
                            {"direction": "egress", "protocol": "tcp", "ports": [9002, 9003]}]},
    }))
    .unwrap()
}

fn condition(s: &MirrorSession, type_: &str) -> Option<(String, String, String)> {
    s.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn get_session(client: &Client, ns: &str, name: &str) -> Option<MirrorSession> {
    Api::<MirrorSession>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()
        .flatten()
}

async fn trader_pods(client: &Client, ns: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/component=trader"))
        .await
        .unwrap()
        .items
}

/// VXLAN datagrams as ticklab's mirror sends them, each holding one feed packet of
/// `per_packet` trades, the trades `1..=packets * per_packet`.
fn mirrored_feed(packets: u64, per_packet: u64) -> Vec<Vec<u8>> {
    use ticklab_wire::{PacketBuilder as Feed, Price, Quantity, Session, Side, Symbol, Trade};
    let now = ticklab_wire::now_unix_nanos();
    (0..packets)
        .map(|p| {
            let mut feed = Vec::new();
            let mut b = Feed::new(
                &mut feed,
                Session::from_name("T1"),
                1 + p * per_packet,
                1400,
            );
            for i in 0..per_packet {
                assert!(b.push_trade(&Trade {
                    symbol: Symbol::new("EURUSD").unwrap(),
                    price: Price(1),
                    quantity: Quantity(1),
                    side: Side::Buy,
                    trade_id: p * per_packet + i,
                    send_ts_ns: now,
                }));
            }
            b.finish();
            let mut frame = Vec::new();
            PacketBuilder::ethernet2([1; 6], [2; 6])
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .udp(40000, 9100)
                .write(&mut frame, &feed)
                .unwrap();
            let mut out = Vec::new();
            let trailer = Trailer {
                captured_at_ns: now + 50_000,
                original_len: frame.len() as u32,
                direction: Direction::Ingress,
            };
            vxlan::encode(42, &frame, Some(&trailer), &mut out).unwrap();
            out
        })
        .collect()
}

#[tokio::test]
async fn a_session_gets_a_capture_and_a_mirror_in_the_trader_pod_and_its_capture_goes_with_it() {
    with_temp_ns("mirror", |client, ns| async move {
        // A real capture, in this process: the operator reads its report from here.
        let stop = CancellationToken::new();
        let capture = ticklab_capture_service::start(
            ticklab_capture_service::CaptureConfig {
                session: "m".into(),
                experiment: "lab".into(),
                listen: "127.0.0.1:0".parse().unwrap(),
                admin_listen: "127.0.0.1:0".parse().unwrap(),
                vni: Some(42),
                retransmit_ports: vec![9001],
                server_ports: vec![9000, 9002, 9003],
                trader_api: None,
                key_log_file: None,
                pcapng: None,
                messages_file: None,
            },
            prometheus::Registry::new(),
            stop.clone(),
        )
        .await
        .unwrap();
        let url = format!("http://{}/report", capture.admin_addr);
        let _operator = Operator::start(&ns, "mirror", &["--capture-url", &url]);
        Api::<LatencyExperiment>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &experiment("lab"))
            .await
            .unwrap();
        let created = Api::<MirrorSession>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &session("m", "lab"))
            .await
            .unwrap();
        let uid = created.uid().unwrap();

        // The capture's children, owned by the session.
        let owned = |meta: &kube::api::ObjectMeta| {
            meta.owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid && o.controller == Some(true))
        };
        let service = wait_for("the capture's Service", Duration::from_secs(30), || async {
            Api::<Service>::namespaced(client.clone(), &ns)
                .get_opt("m-capture")
                .await
                .ok()
                .flatten()
        })
        .await;
        assert!(owned(&service.metadata));
        let ports: Vec<(i32, String)> = service
            .spec
            .unwrap()
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.port, p.protocol.unwrap_or_default()))
            .collect();
        assert!(ports.contains(&(4789, "UDP".into())), "{ports:?}");
        for name in ["m-capture"] {
            let d = Api::<Deployment>::namespaced(client.clone(), &ns)
                .get(name)
                .await
                .unwrap();
            assert!(owned(&d.metadata));
            let c = Api::<ConfigMap>::namespaced(client.clone(), &ns)
                .get(name)
                .await
                .unwrap();
            assert!(owned(&c.metadata));
            let config: ticklab_capture_service::CaptureConfig =
                serde_yaml::from_str(&c.data.unwrap()["capture.yaml"]).unwrap();
            assert_eq!(config.vni, Some(42));
            assert_eq!(
                config.trader_api.as_deref(),
                Some(format!("http://lab-trader.{ns}.svc:9190").as_str())
            );
        }

        // The mirror joins the running trader pod: NET_RAW, nothing else; its
        // configuration is the session's filter and packet length.
        let mirror = wait_for(
            "the mirror in the trader pod",
            Duration::from_secs(60),
            || async {
                let pods = trader_pods(&client, &ns).await;
                let pod = pods.first()?;
                let containers = pod.spec.as_ref()?.ephemeral_containers.clone()?;
                containers
                    .into_iter()
                    .find(|c| c.name.starts_with("mirror-m"))
            },
        )
        .await;
        let security = mirror.security_context.unwrap();
        let caps = security.capabilities.unwrap();
        assert_eq!(caps.add, Some(vec!["NET_RAW".to_string()]));
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        let args = mirror.args.unwrap();
        assert_eq!(
            args[..2],
            ["mirror".to_string(), "--config-json".to_string()]
        );
        let config: MirrorConfig = serde_json::from_str(&args[2]).unwrap();
        assert_eq!(config.capture, format!("m-capture.{ns}.svc:4789"));
        assert_eq!(
            (config.vni, config.packet_length, config.filter.len()),
            (42, Some(512), 2)
        );
        assert!(config.stop_when_capture_gone);

        // What the capture decodes comes back as the status.
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        for datagram in mirrored_feed(20, 5) {
            socket.send_to(&datagram, capture.vxlan_addr).unwrap();
        }
        let s = wait_for(
            "the wire's figures in the status",
            Duration::from_secs(30),
            || async {
                let s = get_session(&client, &ns, "m").await?;
                (s.status.as_ref()?.trades == 100).then_some(s)
            },
        )
        .await;
        let status = s.status.as_ref().unwrap();
        assert_eq!(
            (
                status.packets_mirrored,
                status.packets_decoded,
                status.decode_errors
            ),
            (20, 20, 0)
        );
        assert_eq!(status.timing.as_deref(), Some("interface"));
        assert_eq!(status.feed_latency.as_ref().unwrap().count, 100);
        assert_eq!(condition(&s, "ExperimentFound").unwrap().0, "True");
        assert_eq!(
            status.capture_endpoint.as_deref(),
            Some(format!("m-capture.{ns}.svc:4789").as_str())
        );

        // Deleting the session deletes the capture; the mirror container, which no
        // API call can remove from a pod, stays listed and ends by itself (the
        // capture's name no longer resolves).
        Api::<MirrorSession>::namespaced(client.clone(), &ns)
            .delete("m", &DeleteParams::foreground())
            .await
            .unwrap();
        wait_for(
            "the capture to be deleted",
            Duration::from_secs(60),
            || async {
                let gone = Api::<Deployment>::namespaced(client.clone(), &ns)
                    .get_opt("m-capture")
                    .await
                    .ok()?
                    .is_none()
                    && Api::<Service>::namespaced(client.clone(), &ns)
                        .get_opt("m-capture")
                        .await
                        .ok()?
                        .is_none()
                    && Api::<ConfigMap>::namespaced(client.clone(), &ns)
                        .get_opt("m-capture")
                        .await
                        .ok()?
                        .is_none();
                gone.then_some(())
            },
        )
        .await;
        stop.cancel();
        capture.join().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_restricted_namespace_refuses_the_mirror_and_the_session_says_what_it_needs() {
    with_temp_ns("mirror-pss", |client, ns| async move {
        // Pod Security admission at the restricted level: the experiment's own pods
        // pass it; a container with NET_RAW does not.
        Api::<Namespace>::all(client.clone())
            .patch(
                &ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})),
            )
            .await
            .unwrap();
        let _operator = Operator::start(&ns, "mirror-pss", &[]);
        Api::<LatencyExperiment>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &experiment("lab"))
            .await
            .unwrap();
        Api::<MirrorSession>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &session("m", "lab"))
            .await
            .unwrap();
        let (_, reason, message) = wait_for("Mirroring=False with the refusal", Duration::from_secs(60), || async {
            let s = get_session(&client, &ns, "m").await?;
            let c = condition(&s, "Mirroring")?;
            (c.1 == "PodSecurity").then_some(c)
        })
        .await;
        assert_eq!(reason, "PodSecurity");
        assert!(message.contains("pod-security.kubernetes.io/enforce=privileged"), "{message}");
        assert!(message.contains("NET_RAW"), "{message}");
        // The trader pod was not touched.
        let pods = trader_pods(&client, &ns).await;
        assert!(!pods.is_empty());
        assert!(pods.iter().all(|p| p.spec.as_ref().unwrap().ephemeral_containers.is_none()));
    })
    .await;
}
