//! The operator's side of a recorder's HTTP API: `PUT /recording` sets the toggle
//! and answers with the recorder's status, the same body `GET /recording` gives. The
//! address comes from a template so the operator can reach a recorder it cannot
//! reach through cluster DNS (tests, port-forwards).

use std::time::Duration;

use serde::Serialize;
use ticklab_recorder::RecorderStatus;

/// Where a recorder's `/recording` is, with `{name}` (the RecordingSession) and
/// `{namespace}`.
pub const DEFAULT_RECORDER_URL: &str = "http://{name}-recorder.{namespace}.svc:8080/recording";

#[derive(Clone)]
pub struct RecorderApi {
    http: reqwest::Client,
    template: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RecorderApiError {
    #[error("cannot reach the recorder at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the recorder at {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("the recorder at {url} sent a status ticklab cannot read: {source}")]
    Decode {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

#[derive(Serialize)]
struct Toggle {
    enabled: bool,
}

impl RecorderApi {
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

    /// Sets the toggle (idempotent: the recorder only logs a change) and returns
    /// the recorder's status as of just after.
    pub async fn set_enabled(
        &self,
        name: &str,
        namespace: &str,
        enabled: bool,
    ) -> Result<RecorderStatus, RecorderApiError> {
        let url = self.url(name, namespace);
        let request = self.http.put(&url).json(&Toggle { enabled });
        Self::send(url, request).await
    }

    /// The recorder's status without touching the toggle.
    pub async fn status(
        &self,
        name: &str,
        namespace: &str,
    ) -> Result<RecorderStatus, RecorderApiError> {
        let url = self.url(name, namespace);
        let request = self.http.get(&url);
        Self::send(url, request).await
    }

    async fn send(
        url: String,
        request: reqwest::RequestBuilder,
    ) -> Result<RecorderStatus, RecorderApiError> {
        let response = request
            .send()
            .await
            .map_err(|error| RecorderApiError::Unreachable {
                url: url.clone(),
                detail: causes(&error),
            })?;
        let status = response.status();
        if !status.is_success() {
            let mut body = response.text().await.unwrap_or_default();
            body.truncate(300);
            return Err(RecorderApiError::Status {
                url,
                status: status.as_u16(),
                body,
            });
        }
        response
            .json::<RecorderStatus>()
            .await
            .map_err(|source| RecorderApiError::Decode { url, source })
    }
}

/// An error with its causes ("error sending request: client error (Connect):
/// Connection refused"): reqwest's own message alone does not say what failed.
pub(crate) fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
