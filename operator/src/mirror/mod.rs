//! MirrorSessions: each becomes a capture service (ConfigMap, Service with UDP 4789,
//! Deployment and, with isolation, a NetworkPolicy) and, in sidecar mode, a mirror
//! in each target pod (an ephemeral container: the pod is not restarted). The
//! capture's report comes back as the status. `build` and `status` are pure;
//! `controller` talks to the API server, `capture_api` to the captures.

pub mod build;
pub mod capture_api;
pub mod controller;
pub mod status;
