//! Reads what the trader measured from its `/stats` endpoint while an experiment
//! runs. The address comes from a template so the operator can be pointed at a
//! trader it cannot reach through cluster DNS (tests, port-forwards).

use std::time::Duration;

use serde::Deserialize;
use ticklab_crd::ExperimentResults;

/// Where a trader's `/stats` is, with `{name}` (the experiment) and `{namespace}`.
pub const DEFAULT_STATS_URL: &str = "http://{name}-trader.{namespace}.svc:9190/stats";
/// Where a replaying exchange's report is.
pub const DEFAULT_REPLAY_URL: &str = "http://{name}-exchange.{namespace}.svc:9090/replay";

#[derive(Clone)]
pub struct ResultsReader {
    http: reqwest::Client,
    template: String,
    /// `/replay` of a replaying exchange (same placeholders).
    pub replay_template: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot reach the trader at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the trader at {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("the trader at {url} sent stats ticklab cannot read: {source}")]
    Decode {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

/// What a trader's `/stats` says: the results and whether the run is over for it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct TraderStats {
    #[serde(flatten)]
    pub results: ExperimentResults,
    /// The exchange ended the session and nothing is missing any more: the results
    /// are final.
    #[serde(default)]
    pub settled: bool,
}

impl ResultsReader {
    pub fn new(template: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder().timeout(timeout).build()?,
            template: template.to_string(),
            replay_template: DEFAULT_REPLAY_URL.to_string(),
        })
    }

    pub fn url(&self, name: &str, namespace: &str) -> String {
        self.template
            .replace("{name}", name)
            .replace("{namespace}", namespace)
    }

    /// The trader's current results (its `/stats` body is the results plus a few
    /// fields about the session).
    pub async fn read(&self, name: &str, namespace: &str) -> Result<ExperimentResults, ReadError> {
        Ok(self.read_stats(name, namespace).await?.results)
    }

    /// The trader's results and whether they are final.
    pub async fn read_stats(&self, name: &str, namespace: &str) -> Result<TraderStats, ReadError> {
        let url = self.url(name, namespace);
        let response =
            self.http
                .get(&url)
                .send()
                .await
                .map_err(|source| ReadError::Unreachable {
                    url: url.clone(),
                    source,
                })?;
        if !response.status().is_success() {
            return Err(ReadError::Status {
                url,
                status: response.status().as_u16(),
            });
        }
        response
            .json::<TraderStats>()
            .await
            .map_err(|source| ReadError::Decode { url, source })
    }

    /// A replaying exchange's report (final once its feed has ended).
    pub async fn read_replay(
        &self,
        name: &str,
        namespace: &str,
    ) -> Result<ticklab_exchange::replay::ReplayReport, String> {
        let url = self
            .replay_template
            .replace("{name}", name)
            .replace("{namespace}", namespace);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("cannot reach the exchange at {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!(
                "the exchange at {url} answered {}",
                response.status()
            ));
        }
        response
            .json()
            .await
            .map_err(|e| format!("the exchange at {url} sent a report ticklab cannot read: {e}"))
    }
}
