//! The operator's side of a capture service's HTTP API: `GET /report`, what the
//! wire showed so far. The address comes from a template, as the recorder's does,
//! so a test or a port-forward can stand in for cluster DNS.

use std::time::Duration;

use ticklab_capture::analyzer::WireReport;

/// Where a capture's `/report` is, with `{name}` (the MirrorSession) and `{namespace}`.
pub const DEFAULT_CAPTURE_URL: &str = "http://{name}-capture.{namespace}.svc:9290/report";

#[derive(Clone)]
pub struct CaptureApi {
    http: reqwest::Client,
    template: String,
}

impl CaptureApi {
    pub fn new(template: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder().timeout(timeout).build()?,
            template: template.to_string(),
        })
    }

    pub fn url(&self, name: &str, namespace: &str) -> String {
        self.template
            .replace("{name}", name)
            .replace("{namespace}", namespace)
    }

    /// The capture's report, or why it cannot be had (a sentence for a condition).
    pub async fn report(&self, name: &str, namespace: &str) -> Result<WireReport, String> {
        let url = self.url(name, namespace);
        let response = self.http.get(&url).send().await.map_err(|e| {
            format!(
                "cannot reach the capture at {url}: {}",
                crate::recording::recorder_api::causes(&e)
            )
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("the capture at {url} answered {status}"));
        }
        response
            .json::<WireReport>()
            .await
            .map_err(|e| format!("the capture at {url} sent a report ticklab cannot read: {e}"))
    }
}
