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

pub use experiment_file::{ExperimentFileError, load_experiment, parse_experiment};
pub use instruments::{Instrument, InstrumentProfile};
pub use latency_experiment::*;
pub use mirror_session::{MirrorSession, MirrorSessionSpec, MirrorSessionStatus};
pub use recording_session::{RecordingSession, RecordingSessionSpec, RecordingSessionStatus};
pub use results::{ExperimentResults, LatencySummary, SloVerdict};

/// API group of every ticklab resource.
pub const GROUP: &str = "ticklab.dev";
/// API version of every ticklab resource.
pub const VERSION: &str = "v1alpha1";
