//! RecordingSessions: each becomes a recorder (ConfigMap, PersistentVolumeClaim,
//! Service, Deployment and, with isolation, a NetworkPolicy) that taps its
//! experiment's exchange. The toggle `spec.enabled` travels edit → watch →
//! reconcile → `PUT /recording` on the recorder; the recorder's answer comes back as
//! the status. `build` and `status` are pure; `controller` talks to the API server,
//! `recorder_api` to the recorders.

pub mod build;
pub mod controller;
pub mod recorder_api;
pub mod status;

#[cfg(test)]
mod tests;
