//! Leader election over a coordination.k8s.io Lease (kube-lease-manager), so two
//! operator replicas are safe: only the holder reconciles; a standby takes over
//! when the holder releases the Lease on shutdown or stops renewing it.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// A holder that has not renewed for this long loses the Lease.
    pub duration: Duration,
}

/// A running election: `leading` turns true when this replica holds the Lease and
/// false if it loses it.
pub struct Election {
    pub leading: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

impl Election {
    pub async fn start(
        client: Client,
        settings: &LeaseSettings,
    ) -> Result<Self, LeaseManagerError> {
        let duration = settings.duration.as_secs().max(2);
        // Renew a third of the way before expiry: a missed renewal or two still
        // keeps the Lease.
        let grace = (duration / 3).max(1);
        let manager = LeaseManagerBuilder::new(client, &settings.name)
            .with_namespace(&settings.namespace)
            .with_identity(&settings.identity)
            .with_field_manager(format!("ticklab-operator-{}", settings.identity))
            .with_grace(grace)
            .with_duration(duration)
            .build()
            .await?;
        let (leading, task) = manager.watch().await;
        Ok(Self { leading, task })
    }

    /// Waits until this replica leads; false if the election ended first.
    pub async fn wait_until_leading(&mut self) -> bool {
        self.leading.wait_for(|leading| *leading).await.is_ok()
    }

    /// Waits until leadership is lost.
    pub async fn lost(&mut self) {
        let _ = self.leading.wait_for(|leading| !*leading).await;
    }

    /// Steps down: the manager releases the Lease so a standby takes over at once
    /// instead of after the Lease expires.
    pub async fn release(self) {
        drop(self.leading);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!("leader Lease released"),
            Ok(Ok(Err(error))) => tracing::warn!(%error, "cannot release the leader Lease"),
            Ok(Err(error)) => tracing::warn!(%error, "lease task failed"),
            Err(_) => tracing::warn!("releasing the leader Lease timed out"),
        }
    }
}
