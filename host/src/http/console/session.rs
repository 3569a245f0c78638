//! Console sign-in, sessions, and the checks every state-changing POST passes.
//!
//! Sessions are rows of `console_sessions` (migration 0005): the cookie carries a random
//! 256-bit id and the table only its SHA-256, with an expiry. A database row rather than
//! a signed cookie because several host processes may serve one console (they share the
//! database, not a key), and because signing out must revoke the session everywhere at
//! once, which a self-contained cookie cannot do.
//!
//! The access rule is `/api`'s (see `http/auth.rs`): with `server.api_token` set, the
//! sign-in form must be given that token; without one, only loopback clients may use the
//! console at all, and they sign in without a token (the session still carries a CSRF
//! token for the buttons). Either way every console request must name this server in
//! `Host`, and every POST must come from one of its pages ([`crate::http::hosts`]).
//!
//! A session is bound to the credential it was made with: its row holds an HMAC, keyed
//! with the session's own id (which only the cookie holds), of the API token, or, without
//! one, of "no token" and this process's identity. A session is accepted only where that
//! still matches, so changing the token ends every session, and a session made on a host
//! without a token is worth nothing on a host with one (they may share a database). Keyed
//! with the cookie's id so that a copy of the table gives no way to test guesses of the
//! token.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use axum::extract::rejection::{ExtensionRejection, FormRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::html;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{bare_page, PageError};
use crate::app::App;
use crate::http::auth::same_secret;
use crate::http::hosts::AllowedHosts;
use crate::store::ConsoleSession;
use crate::time::now_ms;

/// The session cookie's name.
pub const COOKIE: &str = "paynotify_console";

/// How long a session lasts after sign-in (a working day and then some).
const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;

/// The signed-in session of a console request (a request extension).
#[derive(Debug, Clone)]
pub struct Session {
    /// SHA-256 of the cookie's id: the row to delete on sign-out.
    pub id_hash: String,
    /// The token every form of this session posts back.
    pub csrf_token: String,
    /// The names this server answers to: where the session's POSTs must come from.
    pub hosts: Arc<AllowedHosts>,
}

/// The session is taken as an extractor, from the request extension that
/// [`require_session`] puts there (a route outside it answers 500, as a missing
/// [`Extension`] does).
impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = ExtensionRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Extension(session) = Extension::<Session>::from_request_parts(parts, state).await?;
        Ok(session)
    }
}

/// SHA-256, lower-case hex.
fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// This process, for sessions made without a token: random at start, so such a session
/// is good only in the process that made it (another host, or this one restarted, asks
/// for a new sign-in, which without a token is one click).
static PROCESS_IDENTITY: LazyLock<[u8; 32]> = LazyLock::new(rand::random);

/// What the session with cookie id `id` is bound to on this host: HMAC-SHA256 keyed with
/// the id, over the API token, or without one over this process and its port.
fn credential_mac(app: &App, hosts: &AllowedHosts, id: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(id.as_bytes())
        .expect("HMAC takes a key of any length");
    match app.config.api_token() {
        Some(token) => {
            mac.update(b"paynotify console session\0token\0");
            mac.update(token.as_bytes());
        }
        None => {
            mac.update(b"paynotify console session\0no token\0");
            mac.update(&*PROCESS_IDENTITY);
            mac.update(&hosts.port().to_be_bytes());
        }
    }
    hex::encode(mac.finalize().into_bytes())
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// In front of every console route: without an API token only loopback clients get in;
/// with or without one, only requests whose `Host` names this server (421 otherwise).
/// Puts the [`AllowedHosts`] in the request for the checks after it.
pub async fn front_gate(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Result<Response, PageError> {
    if app.config.api_token().is_none() && !peer.ip().is_loopback() {
        return Err(PageError::forbidden(
            "No server.api_token is configured, so the console only serves loopback clients.",
        ));
    }
    let hosts = AllowedHosts::of(&request, &app);
    if !hosts.request_host_ok(request.headers()) {
        crate::metrics::front_door_refused("host");
        return Err(PageError::Status(
            StatusCode::MISDIRECTED_REQUEST,
            "This address is not one of this console's names: open it at localhost or \
             127.0.0.1 on its port, or add the name to server.allowed_hosts."
                .into(),
        ));
    }
    request.extensions_mut().insert(hosts);
    Ok(next.run(request).await)
}

/// Lets a request through with its [`Session`] if it carries a live session cookie. A
/// page request without one is sent to the sign-in form (and back afterwards); anything
/// else is refused.
pub async fn require_session(
    State(app): State<App>,
    mut request: Request,
    next: Next,
) -> Result<Response, PageError> {
    let hosts = AllowedHosts::of(&request, &app);
    let id = cookie(request.headers(), COOKIE).map(str::to_owned);
    let found = match &id {
        Some(id) => match app
            .store
            .console()
            .console_session(&sha256_hex(id.as_bytes()), now_ms())
            .await
        {
            Ok(s) => s.filter(|s| {
                let bound = same_secret(&s.credential, &credential_mac(&app, &hosts, id));
                if !bound {
                    // Made with another token, or on a host without one.
                    crate::metrics::front_door_refused("session");
                    tracing::warn!("console session made under another credential refused");
                }
                bound
            }),
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    match found {
        Some(s) => {
            request.extensions_mut().insert(Session {
                id_hash: s.id_hash,
                csrf_token: s.csrf_token,
                hosts,
            });
            Ok(next.run(request).await)
        }
        None if request.method() == Method::GET => {
            let back = request
                .uri()
                .path_and_query()
                .map_or("/console/orders", |p| p.as_str());
            let target: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("next", back)
                .finish();
            Ok(Redirect::to(&format!("/console/login?{target}")).into_response())
        }
        None => Err(PageError::forbidden(
            "You are not signed in (or your session ended): sign in again. Nothing was changed.",
        )),
    }
}

/// A state-changing console POST that passed the checks, and its session: it comes from
/// a page of this server (its `Origin`, or `Referer`, is one of [`AllowedHosts`]; a POST
/// with neither is refused), and its form carries this session's CSRF token. Otherwise
/// it is refused with 403 before the handler runs. Taken last: it reads the body. The
/// form's other fields come with it.
pub struct CheckedPost(pub Session, pub std::collections::BTreeMap<String, String>);

impl<S: Send + Sync> FromRequest<S> for CheckedPost {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let session = Session::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let headers = parts.headers.clone();
        let form = Form::<CsrfForm>::from_request(Request::from_parts(parts, body), state).await;
        let (csrf, fields) = posted_form(form);
        check_post(&headers, &session, &csrf).map_err(IntoResponse::into_response)?;
        Ok(CheckedPost(session, fields))
    }
}

/// The checks of [`CheckedPost`].
fn check_post(headers: &HeaderMap, session: &Session, csrf: &str) -> Result<(), PageError> {
    if session.hosts.request_origin_ok(headers) != Some(true) {
        crate::metrics::front_door_refused("origin");
        return Err(PageError::forbidden(
            "Refused: this request did not come from a console page (cross-site request). Nothing was changed.",
        ));
    }
    if !same_secret(csrf, &session.csrf_token) {
        return Err(PageError::forbidden(
            "Refused: the form's security token is missing or stale; reload the page and try again. Nothing was changed.",
        ));
    }
    Ok(())
}

/// The form every console button posts: the CSRF token, and the button's own fields.
#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    fields: std::collections::BTreeMap<String, String>,
}

/// The CSRF token a POST carried and its other fields: an empty token if its body is not
/// a form at all (it is then refused by [`check_post`] with 403 like any other request
/// without the token).
fn posted_form(
    form: Result<Form<CsrfForm>, FormRejection>,
) -> (String, std::collections::BTreeMap<String, String>) {
    form.map(|Form(f)| (f.csrf, f.fields)).unwrap_or_default()
}

/// Query of the sign-in page.
#[derive(Debug, Deserialize, Default)]
pub struct LoginQuery {
    /// Where to go after signing in.
    next: Option<String>,
    /// Set after signing out.
    signed_out: Option<String>,
}

/// A console path to return to after sign-in, or the orders page: never another site.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with("/console")
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.starts_with("/console/login")
                && !n.chars().any(char::is_control) =>
        {
            n
        }
        _ => "/console/orders",
    }
}

fn login_markup(app: &App, next: &str, error: Option<&str>, notice: Option<&str>) -> maud::Markup {
    let token_needed = app.config.api_token().is_some();
    html! {
        @if let Some(n) = notice { p.notice role="status" { (n) } }
        @if let Some(e) = error { p.error role="alert" id="login-error" { (e) } }
        form.login method="post" action="/console/login" {
            input type="hidden" name="next" value=(next);
            @if token_needed {
                label for="token" { "API token" }
                input type="password" id="token" name="token" autocomplete="current-password" required autofocus;
            } @else {
                p { "No API token is configured: the console serves loopback clients only, without a token." }
            }
            button type="submit" id="sign-in" { "Sign in" }
        }
    }
}

/// `GET /console/login`.
pub async fn login_form(
    State(app): State<App>,
    query: Result<Query<LoginQuery>, QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let notice = q.signed_out.is_some().then_some("You are signed out.");
    bare_page(
        "Sign in",
        login_markup(&app, safe_next(q.next.as_deref()), None, notice),
    )
    .into_response()
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
    next: Option<String>,
}

/// `POST /console/login`: checks the token (constant time), creates a session and sets
/// its cookie. A wrong token gets 401, the form again with the reason, and no cookie.
pub async fn login(
    State(app): State<App>,
    Extension(hosts): Extension<Arc<AllowedHosts>>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Result<Response, PageError> {
    // A sign-in from another site would sign the victim into the attacker's session.
    if hosts.request_origin_ok(&headers) != Some(true) {
        crate::metrics::front_door_refused("origin");
        return Err(PageError::forbidden(
            "Refused: sign-in must be posted from the console's own sign-in page.",
        ));
    }
    let Ok(Form(form)) = form else {
        return Err(PageError::bad_request("The sign-in form was malformed."));
    };
    let next = safe_next(form.next.as_deref()).to_owned();
    if let Some(token) = app.config.api_token() {
        if !same_secret(&form.token, token) {
            tracing::warn!("console sign-in with a wrong token");
            return Ok((
                StatusCode::UNAUTHORIZED,
                bare_page(
                    "Sign in",
                    login_markup(&app, &next, Some("Wrong token: not signed in."), None),
                ),
            )
                .into_response());
        }
    }
    let now = now_ms();
    // Sign-ins are rare: a good moment to forget sessions that ran out.
    if let Err(e) = app
        .store
        .console()
        .delete_expired_console_sessions(now)
        .await
    {
        tracing::warn!(error = %e, "cannot delete expired console sessions");
    }
    let id = hex::encode(rand::random::<[u8; 32]>());
    let session = ConsoleSession {
        id_hash: sha256_hex(id.as_bytes()),
        credential: credential_mac(&app, &hosts, &id),
        csrf_token: hex::encode(rand::random::<[u8; 32]>()),
        created_at: now,
        expires_at: now + SESSION_TTL_MS,
    };
    app.store.console().create_console_session(&session).await?;
    tracing::info!("console sign-in");
    let secure = app.config.server.console_secure_cookie
        || headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/console; Max-Age={}{}",
        SESSION_TTL_MS / 1000,
        if secure { "; Secure" } else { "" }
    );
    let cookie = HeaderValue::from_str(&cookie)
        .map_err(|e| PageError::Status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response())
}

/// `POST /console/logout`: deletes the session (everywhere: it is a database row) and
/// clears the cookie.
pub async fn logout(
    State(app): State<App>,
    CheckedPost(session, _): CheckedPost,
) -> Result<Response, PageError> {
    app.store
        .console()
        .delete_console_session(&session.id_hash)
        .await?;
    tracing::info!("console sign-out");
    let cleared = "paynotify_console=; HttpOnly; SameSite=Strict; Path=/console; Max-Age=0";
    Ok((
        [(header::SET_COOKIE, cleared)],
        Redirect::to("/console/login?signed_out=1"),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn cookies_and_next_are_read_strictly() {
        let h = headers(&[("cookie", "a=1; paynotify_console=abc; b=2")]);
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(
            cookie(&headers(&[("cookie", "xpaynotify_console=1")]), COOKIE),
            None
        );
        assert_eq!(
            safe_next(Some("/console/tasks?status=dead")),
            "/console/tasks?status=dead"
        );
        for bad in [
            "https://evil.example",
            "//evil.example",
            "/api/orders",
            "/console\\..",
            "/console/login",
        ] {
            assert_eq!(safe_next(Some(bad)), "/console/orders", "{bad}");
        }
        assert!(same_secret("tok", "tok") && !same_secret("tok", "tok2"));
    }
}
