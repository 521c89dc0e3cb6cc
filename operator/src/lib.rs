//! The ticklab operator: turns each LatencyExperiment into an exchange, a trader and
//! (unless the spec names an external one) MongoDB, follows them through Pending,
//! Running and Completed, and writes what the trader measures into the status; and
//! each RecordingSession into a recorder of its experiment's feed (`recording`),
//! each MirrorSession into a capture service and mirrors in the target pods
//! (`mirror`).
//! `children` and `lifecycle` are pure; `controller` talks to the API server.

#![forbid(unsafe_code)]

pub mod children;
pub mod controller;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod mirror;
pub mod recording;
pub mod results;
pub mod startup;
