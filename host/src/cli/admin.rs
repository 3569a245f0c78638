//! The running server's admin API, for the commands that change it (reload, replay,
//! reconcile) or ask what it has loaded: the one process serving notifications does the work.

use paynotify::config::Config;

/// A client for the running server's admin API, using the config's address and token.
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminClient {
    /// Targets the `[server]` of `config`.
    pub fn new(config: &Config) -> AdminClient {
        let mut addr = config.server.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        AdminClient {
            base: format!("http://{addr}"),
            token: config.api_token().map(str::to_owned),
            http: reqwest::Client::new(),
        }
    }

    /// `GET path`: the JSON answer, or an error with the server's message.
    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.call(reqwest::Method::GET, path).await
    }

    /// `POST path` (no body): the JSON answer, or an error with the server's message.
    pub async fn post(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.call(reqwest::Method::POST, path).await
    }

    /// `POST path` with a JSON body: the JSON answer, or an error with the server's
    /// message (and the provider's code and message, when it gave them).
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> anyhow::Result<serde_json::Value> {
        self.send(method, path, None).await
    }

    /// One request with the token; an answer other than 2xx becomes an error with its `error` text.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the server at {}: {e} (is `paynotify serve` running?)",
                self.base
            )
        })?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.map_err(|e| {
            anyhow::anyhow!("server answered {status} with a body that is not JSON: {e}")
        })?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(anyhow::anyhow!(
                "server answered {status}: {}",
                body.get("error").and_then(|e| e.as_str()).unwrap_or("")
            ))
        }
    }
}

/// A query string of the pairs whose value is present, `?k=v&…` (or nothing).
pub fn query_string(pairs: &[(&str, Option<String>)]) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            form.append_pair(k, v);
        }
    }
    let q = form.finish();
    if q.is_empty() {
        q
    } else {
        format!("?{q}")
    }
}
