//! The daemon's API as the command-line tools call it: `--server` and `--token`, the CA of
//! `FLAGGUARD_CA_FILE`, JSON in and out, and errors as one line a pipeline log can show.

use std::time::Duration;

use serde_json::Value;

pub struct Api {
    client: reqwest::Client,
    server: reqwest::Url,
    token: Option<String>,
}

impl Api {
    pub fn new(server: &str, token: Option<&str>) -> Result<Api, String> {
        let client = crate::app::http_client(Duration::from_secs(10), std::env::var_os("FLAGGUARD_CA_FILE").as_deref().map(std::path::Path::new))
            .map_err(|e| e.to_string())?;
        let server = reqwest::Url::parse(server).map_err(|e| format!("--server {server}: {e}"))?;
        if server.cannot_be_a_base() {
            return Err(format!("--server {server} cannot be a base URL"));
        }
        Ok(Api { client, server, token: token.map(str::to_owned) })
    }

    fn url(&self, path: &[&str], query: &[(&str, Option<&str>)]) -> reqwest::Url {
        let mut url = self.server.clone();
        // `new` refused URLs that cannot be a base.
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(path);
        }
        for (k, v) in query {
            if let Some(v) = v {
                url.query_pairs_mut().append_pair(k, v);
            }
        }
        url
    }

    /// `GET`: the status and the JSON body (`{}` when there is none).
    pub async fn get(&self, path: &[&str], query: &[(&str, Option<&str>)]) -> Result<(u16, Value), String> {
        self.send(self.client.get(self.url(path, query))).await
    }

    /// `POST` with a JSON body.
    pub async fn post(&self, path: &[&str], body: &Value) -> Result<(u16, Value), String> {
        self.send(self.client.post(self.url(path, &[])).json(body)).await
    }

    async fn send(&self, mut request: reqwest::RequestBuilder) -> Result<(u16, Value), String> {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| format!("cannot reach {}: {e}", self.server))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| format!("{}: {e}", self.server))?;
        let body = if text.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_str(&text).map_err(|e| format!("not JSON (HTTP {status}): {e}"))?
        };
        Ok((status, body))
    }
}

/// The error line of an answer that is not a success.
pub fn failure(status: u16, body: &Value) -> String {
    format!("HTTP {status}: {}", body["error"].as_str().unwrap_or("(no reason given)"))
}
