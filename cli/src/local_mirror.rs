//! A MirrorSession in `ticklab run`: the capture service and the mirror, in this
//! process, mirroring the local trader's traffic over loopback (so it needs
//! CAP_NET_RAW, as in a pod). They start before the exchange and the trader, so the
//! mirror sees every handshake, and stop after them; the capture's report becomes
//! the run report's wire section.

use std::time::{Duration, Instant};

use anyhow::Context;
use ticklab_capture::analyzer::WireReport;
use ticklab_capture_service::{CaptureConfig, CaptureHandle};
use ticklab_crd::MirrorSession;
use ticklab_mirror::{MirrorConfig, MirrorHandle};
use tokio_util::sync::CancellationToken;

use crate::local_run::PairPorts;
use crate::ports::loopback;

/// How long the capture may take to decode what the mirror sent once the run ends.
const CATCH_UP: Duration = Duration::from_secs(10);

pub struct LocalMirror {
    capture: CaptureHandle,
    mirror: MirrorHandle,
    capture_stop: CancellationToken,
    mirror_stop: CancellationToken,
}

impl LocalMirror {
    /// `recorders`: whether recorders tap the same exchange (their copies come from
    /// the retransmission port, which then cannot tell the trader's traffic apart
    /// on loopback, so that port is left out).
    pub async fn start(
        experiment: &str,
        session: &MirrorSession,
        ports: &PairPorts,
        recorders: bool,
        capture_port: u16,
        mirror_port: u16,
        capture_dir: Option<std::path::PathBuf>,
    ) -> anyhow::Result<Self> {
        let name = session
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| "mirror".into());
        let capture_stop = CancellationToken::new();
        let capture = ticklab_capture_service::start(
            CaptureConfig {
                session: name.clone(),
                experiment: experiment.to_string(),
                listen: loopback(0),
                admin_listen: loopback(capture_port),
                vni: Some(session.spec.vni),
                retransmit_ports: vec![ports.retransmit.port()],
                server_ports: vec![
                    ports.order_tcp.port(),
                    ports.order_http.port(),
                    ports.feed_stream.port(),
                    ports.retransmit.port(),
                ],
                trader_api: Some(format!("http://{}", ports.trader_api)),
                key_log_file: None,
                pcapng: capture_dir.map(|directory| ticklab_capture_service::PcapngOutput {
                    directory,
                    rotate_megabytes: 256,
                    rotate_seconds: 300,
                }),
                messages_file: None,
            },
            ticklab_capture_service::registry(experiment, &name)?,
            capture_stop.clone(),
        )
        .await
        .context("capture")?;
        let mut peer_ports = vec![
            ports.order_tcp.port(),
            ports.order_http.port(),
            ports.feed_stream.port(),
        ];
        if !recorders {
            peer_ports.push(ports.retransmit.port());
        }
        let mirror_stop = CancellationToken::new();
        let mirror = match ticklab_mirror::start(
            MirrorConfig {
                session: name.clone(),
                experiment: experiment.to_string(),
                capture: capture.vxlan_addr.to_string(),
                vni: session.spec.vni,
                interface: Some("lo".into()),
                filter: local_filter(session, ports),
                packet_length: session.spec.packet_length,
                local_ports: vec![ports.trader_feed.port()],
                peer_ports,
                admin_listen: loopback(mirror_port),
                stop_when_capture_gone: false,
                report_url: Some(format!("http://{}/mirror", capture.admin_addr)),
            },
            ticklab_mirror::registry(experiment, &name)?,
            mirror_stop.clone(),
        )
        .await
        {
            Ok(m) => m,
            Err(e) => {
                capture_stop.cancel();
                let _ = capture.join().await;
                return Err(anyhow::Error::new(e).context(format!("MirrorSession {name:?}")));
            }
        };
        Ok(Self {
            capture,
            mirror,
            capture_stop,
            mirror_stop,
        })
    }

    /// Stops the mirror, lets the capture decode what it was sent (and set the trader's
    /// final receive stamps, `(session, [(seq, ns)])`, beside the wire's), and returns
    /// the capture's final report.
    pub async fn stop(
        self,
        final_stamps: Option<(String, Vec<(u64, u64)>)>,
    ) -> anyhow::Result<WireReport> {
        self.mirror_stop.cancel();
        let mirror = self.mirror.join().await.context("mirror")?;
        let deadline = Instant::now() + CATCH_UP;
        while self.capture.report().frames < mirror.mirrored && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some((session, stamps)) = final_stamps {
            // Stamps the capture took in already are skipped by sequence number; the
            // rest meet their trades as the capture ends.
            let _ = self
                .capture
                .shared
                .input
                .lock()
                .send(ticklab_capture_service::Input::AppReceived { session, stamps });
        }
        self.capture_stop.cancel();
        self.capture.join().await.context("capture")
    }
}

/// The session's filter with the cluster's well-known ports (the ones a filter for a
/// cluster names, `operator/src/children.rs`) turned into this run's loopback ports,
/// so one experiment file filters the same traffic in both places.
fn local_filter(
    session: &MirrorSession,
    ports: &PairPorts,
) -> Vec<ticklab_crd::mirror_session::FilterRule> {
    let local = |port: u16| match port {
        9000 => ports.feed_stream.port(),
        9001 => ports.retransmit.port(),
        9002 => ports.order_tcp.port(),
        9003 => ports.order_http.port(),
        9100 => ports.trader_feed.port(),
        9190 => ports.trader_api.port(),
        other => other,
    };
    let mut rules = session.spec.filter.clone();
    for rule in &mut rules {
        for port in rule.ports.iter_mut().chain(rule.source_ports.iter_mut()) {
            *port = local(*port);
        }
    }
    rules
}
