//! The web console (`/console`) against a real server with real data: orders paid by
//! real signed WeChat v2 notifications, a handler that fails (so replay matters), a task
//! parked dead by a backend that was down (so retry matters).
//!
//! - `sign_in_sessions_and_cross_site_posts`: sign-in, the cookie, sessions shared by
//!   two servers on one database and revoked by sign-out, and every forged POST refused
//!   with nothing changed (plain HTTP, no browser).
//! - `orders_page_by_keyset_over_100k_orders`: 100,000 bulk-seeded orders; the page
//!   queries' plans use an index (EXPLAIN), pages join without gap or overlap both ways,
//!   filters page too; page times are printed.
//! - `console_in_a_real_browser`: headless Chromium signs in, loads every page, clicks
//!   replay, reload (and the type's history), retry, Older/Newer, watches the live view,
//!   is refused a cross-site POST, signs out; then again with JavaScript off. Screenshots go to
//!   `target/console-screenshots/`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use paynotify::time::now_ms;
use paynotify_tests::browser::{self, Browser};
use paynotify_tests::bulk::{self, seeded_created_at, seeded_order_no, Db};
use paynotify_tests::{
    install_plugin, v2_return_code, wait_until, wechat_v2, Options, TestServer, TOKEN,
};
use serde_json::json;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------
// Helpers

/// An HTTP client that does not follow redirects (the tests look at them).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// `http://127.0.0.1:port`, the Origin a console page of `s` posts with.
fn origin(s: &TestServer) -> String {
    format!("http://{}", s.addr)
}

/// A signed-in console session, seen from a plain HTTP client.
struct Console {
    http: reqwest::Client,
    /// `paynotify_console=…`.
    cookie: String,
    /// The session id (the cookie's value).
    id: String,
}

impl Console {
    /// Signs in to `s` with the API token.
    async fn sign_in(s: &TestServer) -> Console {
        let http = client();
        let r = http
            .post(s.url("/console/login"))
            .header("origin", origin(s))
            .form(&[("token", TOKEN), ("next", "/console/orders")])
            .send()
            .await
            .expect("sign in");
        assert_eq!(r.status().as_u16(), 303, "sign-in redirects");
        assert_eq!(header(&r, "location"), "/console/orders");
        let set = header(&r, "set-cookie");
        let pair = set.split(';').next().expect("cookie pair").to_owned();
        let id = pair
            .strip_prefix("paynotify_console=")
            .expect("the console cookie")
            .to_owned();
        Console {
            http,
            cookie: pair,
            id,
        }
    }

    /// GETs a console path on `s`; status and body.
    async fn get(&self, s: &TestServer, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(s.url(path))
            .header("cookie", &self.cookie)
            .send()
            .await
            .expect("get");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    /// The CSRF token the console's forms carry in this session.
    async fn csrf(&self, s: &TestServer) -> String {
        let (st, html) = self.get(s, "/console/plugins").await;
        assert_eq!(st, 200, "{html}");
        csrf_in(&html)
    }
}

/// The value of the first `name="csrf"` field of a page.
fn csrf_in(html: &str) -> String {
    let at = html.find(r#"name="csrf" value=""#).expect("a csrf field");
    let rest = &html[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').expect("end of value")].to_owned()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Every `data-order="…"` of a page, in order.
fn order_rows(html: &str) -> Vec<String> {
    attr_values(html, "data-order")
}

/// Every value of attribute `name` in a page, in order.
fn attr_values(html: &str, name: &str) -> Vec<String> {
    html.split(&format!(r#"{name}=""#))
        .skip(1)
        .map(|rest| rest[..rest.find('"').expect("attr end")].to_owned())
        .collect()
}

/// The `href` of the link with class `class` (`older` / `newer`), unescaped.
fn link(html: &str, class: &str) -> Option<String> {
    let at = html.find(&format!(r#"<a class="{class}""#))?;
    let rest = &html[at..];
    let h = rest.find(r#"href=""#)? + r#"href=""#.len();
    let end = rest[h..].find('"')?;
    Some(rest[h..h + end].replace("&amp;", "&"))
}

/// Pays `no` with a real signed WeChat v2 notification; returns the answer's code.
async fn pay(s: &TestServer, no: &str, fen: i64) -> String {
    let (st, body) = s
        .notify_v2(wechat_v2::paid_xml(no, fen, &format!("42{no}")))
        .await;
    assert_eq!(st, 200, "{body}");
    v2_return_code(&body).to_owned()
}

async fn order_of(s: &TestServer, order_type: &str, no: &str, user: &str, fen: i64) {
    s.create_order(json!({
        "type": order_type, "total_fee": fen, "user_id": user, "provider": "wechat-v2",
        "out_trade_no": no, "custom": { "recharge_balance": fen }
    }))
    .await;
}

/// The id of the stored notification for order `no` with `verdict`.
async fn notification_of(s: &TestServer, no: &str, verdict: &str) -> i64 {
    s.notifications()
        .await
        .into_iter()
        .find(|n| n.out_trade_no.as_deref() == Some(no) && n.verdict.as_str() == verdict)
        .unwrap_or_else(|| panic!("a {verdict} notification for {no}"))
        .id
}

/// A stand-in for the merchant's backend that `notify-backend` posts to: down (503)
/// until told otherwise.
#[derive(Clone)]
struct Backend {
    up: Arc<AtomicBool>,
    port: u16,
}

impl Backend {
    async fn start() -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(false));
        let flag = up.clone();
        let app = axum::Router::new().route(
            "/paid",
            axum::routing::post(move || {
                let flag = flag.clone();
                async move {
                    if flag.load(Ordering::SeqCst) {
                        (axum::http::StatusCode::OK, r#"{"code":0}"#)
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            r#"{"code":503}"#,
                        )
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.expect("backend") });
        Backend { up, port }
    }

    fn manifest(&self) -> String {
        format!(
            "collections = []\nhttp_origins = [\"http://127.0.0.1:{p}\"]\ncrypto = true\n[config]\nbackend_url = \"http://127.0.0.1:{p}/paid\"\n",
            p = self.port
        )
    }
}

/// The data every console test looks at.
struct Scenario {
    s: TestServer,
    backend: Backend,
    /// The failed notification of the `flaky` order (its handler always fails).
    failed_notification: i64,
    /// The dead task of the notify-backend order.
    dead_task: i64,
}

/// A server with `recharge`, `flaky` (fail-always) and `notify-backend` handlers: two
/// recharge orders paid, one flaky order whose payment failed, one notify-backend order
/// paid whose delivery task died (the backend was down), one unpaid order.
async fn scenario(database_url: Option<String>) -> Scenario {
    let backend = Backend::start().await;
    let mut options = Options::with_plugins(&["recharge"])
        .plugin_as("flaky", "fail-always", None)
        .plugin_as(
            "notify-backend",
            "notify-backend",
            Some(&backend.manifest()),
        )
        .database_url(database_url)
        // Signs in with the token, and a session must work on a second host (which a
        // session made without a token does not: see tests/front_door.rs).
        .with_token();
    options.extra_config = "[tasks]\npoll_ms = 20\nbackoff_secs = [1, 1]\n".into();
    let s = TestServer::start(options).await;
    order_of(&s, "recharge", "R0000001", "alice", 1234).await;
    order_of(&s, "recharge", "R0000002", "bob", 500).await;
    order_of(&s, "recharge", "R0000003", "dora", 2).await;
    order_of(&s, "flaky", "F0000001", "carol", 888).await;
    order_of(&s, "notify-backend", "N0000001", "erin", 300).await;
    assert_eq!(pay(&s, "R0000001", 1234).await, "SUCCESS");
    assert_eq!(pay(&s, "R0000002", 500).await, "SUCCESS");
    assert_eq!(pay(&s, "F0000001", 888).await, "FAIL");
    assert_eq!(pay(&s, "N0000001", 300).await, "SUCCESS");
    let failed_notification = notification_of(&s, "F0000001", "failed").await;
    let dead_task = wait_until(60, "the delivery task to die", || async {
        let tasks = s
            .app
            .store
            .list_tasks(Some("dead"), 10)
            .await
            .expect("tasks");
        tasks
            .into_iter()
            .find(|t| t.out_trade_no.as_deref() == Some("N0000001"))
            .map(|t| t.id)
    })
    .await;
    Scenario {
        s,
        backend,
        failed_notification,
        dead_task,
    }
}

// ---------------------------------------------------------------------------------------
// Sign-in, sessions, forged POSTs (no browser)

/// A forged POST: what it is, its headers, its form.
type Forged<'a> = (&'a str, Vec<(&'a str, String)>, Vec<(&'a str, &'a str)>);

#[tokio::test]
async fn sign_in_sessions_and_cross_site_posts() {
    let sc = scenario(None).await;
    let s = &sc.s;
    let http = client();

    // Not signed in: pages send to the sign-in form (and back), POSTs are refused.
    let r = http
        .get(s.url("/console/tasks?status=dead"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(
        header(&r, "location"),
        "/console/login?next=%2Fconsole%2Ftasks%3Fstatus%3Ddead"
    );
    let r = http
        .post(s.url(&format!("/console/tasks/{}/retry", sc.dead_task)))
        .header("origin", origin(s))
        .form(&[("csrf", "x")])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 403);

    // A wrong token: 401, the reason, no cookie.
    let r = http
        .post(s.url("/console/login"))
        .header("origin", origin(s))
        .form(&[("token", "not-the-token"), ("next", "/console/orders")])
        .send()
        .await
        .expect("sign in");
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().get("set-cookie").is_none(), "no cookie");
    assert!(r.text().await.expect("body").contains("Wrong token"));
    // The right token posted from another site: refused, no cookie.
    let r = http
        .post(s.url("/console/login"))
        .header("origin", "http://evil.example")
        .form(&[("token", TOKEN)])
        .send()
        .await
        .expect("sign in");
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.headers().get("set-cookie").is_none(), "no cookie");

    // The right token: a session cookie with the strict attributes, not Secure on http.
    let r = http
        .post(s.url("/console/login"))
        .header("origin", origin(s))
        .form(&[("token", TOKEN), ("next", "https://evil.example/")])
        .send()
        .await
        .expect("sign in");
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(header(&r, "location"), "/console/orders", "never off-site");
    let set = header(&r, "set-cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    assert!(!set.contains("Secure"), "{set}");
    let c = Console::sign_in(s).await;
    let stored = s
        .app
        .store
        .console()
        .console_session(&sha256_hex(&c.id), now_ms())
        .await
        .expect("db")
        .expect("the session is stored");
    assert_ne!(stored.id_hash, c.id, "only the hash of the id is stored");
    let csrf = c.csrf(s).await;
    assert_eq!(csrf, stored.csrf_token);

    // The flaky type now gets a working handler, so a replay would pay the order.
    install_plugin(&s.plugins_dir(), "flaky", "recharge", None);
    s.reload_plugins().await;
    let replay = s.url(&format!(
        "/console/notifications/{}/replay",
        sc.failed_notification
    ));
    let forged: Vec<Forged> = vec![
        (
            "foreign Origin, right token",
            vec![
                ("origin", "http://evil.example".into()),
                ("cookie", c.cookie.clone()),
            ],
            vec![("csrf", csrf.as_str())],
        ),
        (
            "same-site other port Origin",
            vec![
                ("origin", format!("http://127.0.0.1:{}", sc.backend.port)),
                ("cookie", c.cookie.clone()),
            ],
            vec![("csrf", csrf.as_str())],
        ),
        (
            "foreign Referer, no Origin",
            vec![
                ("referer", "http://evil.example/console".into()),
                ("cookie", c.cookie.clone()),
            ],
            vec![("csrf", csrf.as_str())],
        ),
        (
            "neither Origin nor Referer",
            vec![("cookie", c.cookie.clone())],
            vec![("csrf", csrf.as_str())],
        ),
        (
            "no CSRF token",
            vec![("origin", origin(s)), ("cookie", c.cookie.clone())],
            vec![],
        ),
        (
            "wrong CSRF token",
            vec![("origin", origin(s)), ("cookie", c.cookie.clone())],
            vec![("csrf", "0000")],
        ),
        (
            "no session",
            vec![("origin", origin(s))],
            vec![("csrf", csrf.as_str())],
        ),
    ];
    for (what, headers, form) in forged {
        let mut req = http.post(&replay);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let r = req.form(&form).send().await.expect("post");
        assert_eq!(r.status().as_u16(), 403, "{what}");
        let body = r.text().await.expect("body");
        assert!(body.contains("Nothing was changed"), "{what}: {body}");
        assert_eq!(
            s.order("F0000001").await.status,
            0,
            "{what}: order untouched"
        );
    }
    // A body that is not a form at all is refused the same way.
    let r = http
        .post(&replay)
        .header("origin", origin(s))
        .header("cookie", &c.cookie)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(s.order("F0000001").await.status, 0);
    // GET never changes anything.
    let (st, _) = c
        .get(
            s,
            &format!("/console/notifications/{}/replay", sc.failed_notification),
        )
        .await;
    assert_eq!(st, 405);
    assert_eq!(s.order("F0000001").await.status, 0);

    // The real button's request: replayed, paid, and the page says so.
    let r = http
        .post(&replay)
        .header("origin", origin(s))
        .header("cookie", &c.cookie)
        .form(&[("csrf", &csrf)])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 303);
    let shown = header(&r, "location");
    assert_eq!(
        shown,
        format!(
            "/console/notifications/{}?replayed=1",
            sc.failed_notification
        )
    );
    let order = s.order("F0000001").await;
    assert_eq!(
        (order.status, order.handler_status.as_str()),
        (1, "succeeded")
    );
    let (_, page) = c.get(s, &shown).await;
    assert!(page.contains("Replayed: verdict"), "{page}");
    assert!(page.contains("verdict-paid"), "{page}");

    // Notifications page by id both ways (two per page here); filters travel along.
    let (_, n1) = c
        .get(s, "/console/notifications?provider=wechat-v2&limit=2")
        .await;
    let n1_rows = attr_values(&n1, "data-notification");
    assert_eq!(n1_rows.len(), 2, "{n1}");
    let (_, n2) = c
        .get(s, &link(&n1, "older").expect("older notifications"))
        .await;
    let n2_rows = attr_values(&n2, "data-notification");
    assert_eq!(n2_rows.len(), 2);
    assert!(n2_rows.iter().all(|id| !n1_rows.contains(id)), "no overlap");
    let ids: Vec<i64> = n1_rows
        .iter()
        .chain(&n2_rows)
        .map(|i| i.parse().expect("id"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let (_, back) = c
        .get(s, &link(&n2, "newer").expect("newer notifications"))
        .await;
    assert_eq!(attr_values(&back, "data-notification"), n1_rows);
    // Tasks filter by status.
    let (_, dead) = c.get(s, "/console/tasks?status=dead").await;
    assert_eq!(
        attr_values(&dead, "data-task"),
        vec![sc.dead_task.to_string()]
    );
    let (_, done) = c.get(s, "/console/tasks?status=done").await;
    assert!(attr_values(&done, "data-task").is_empty());
    let (st, _) = c.get(s, "/console/tasks?status=bogus").await;
    assert_eq!(st, 400);

    // A second host process on the same database honours the session…
    let other = TestServer::start(
        Options::with_plugins(&["recharge"])
            .with_token()
            .database_url(Some(s.database_url.clone())),
    )
    .await;
    let (st, page) = c.get(&other, "/console/orders").await;
    assert_eq!(st, 200, "{page}");
    assert!(page.contains("R0000001"));
    // …and signing out there revokes it everywhere.
    let r = http
        .post(other.url("/console/logout"))
        .header("origin", origin(&other))
        .header("cookie", &c.cookie)
        .form(&[("csrf", &csrf)])
        .send()
        .await
        .expect("logout");
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(header(&r, "location"), "/console/login?signed_out=1");
    assert!(header(&r, "set-cookie").contains("Max-Age=0"));
    assert!(s
        .app
        .store
        .console()
        .console_session(&sha256_hex(&c.id), now_ms())
        .await
        .expect("db")
        .is_none());
    let (st, _) = c.get(s, "/console/orders").await;
    assert_eq!(st, 303, "the old cookie no longer signs in");
}

// ---------------------------------------------------------------------------------------
// 100,000 orders

/// The order listing's page query as `store/console.rs` builds it, with literals.
fn page_sql(filter: &str, cursor: Option<(i64, &str)>) -> String {
    let mut sql = format!("SELECT * FROM orders WHERE TRUE{filter}");
    if let Some((c, no)) = cursor {
        sql.push_str(&format!(
            " AND created_at <= {c} AND (created_at < {c} OR out_trade_no < '{no}')"
        ));
    }
    sql + " ORDER BY created_at DESC, out_trade_no DESC LIMIT 51"
}

/// Asserts that `plan` reads an index in order: no full scan, no sort.
fn assert_indexed(db: &Db, what: &str, plan: &str, index: Option<&str>) {
    println!("plan of {what}:\n{plan}\n");
    if db.is_postgres() {
        assert!(plan.contains("Index"), "{what}: no index used:\n{plan}");
        assert!(!plan.contains("Seq Scan"), "{what}: full scan:\n{plan}");
        // PostgreSQL may sort the few rows a selective filter's index range yields (one
        // user's orders); never the table.
        assert!(
            !plan.contains("Sort") || plan.contains("Bitmap Index Scan"),
            "{what}: sorts:\n{plan}"
        );
    } else {
        assert!(
            plan.contains("USING INDEX") || plan.contains("USING COVERING INDEX"),
            "{what}: no index used:\n{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{what}: sorts:\n{plan}");
    }
    if let Some(i) = index {
        assert!(plan.contains(i), "{what}: not {i}:\n{plan}");
    }
}

/// Milliseconds `c` takes to GET `path` (best of 3, printed by the caller).
async fn page_ms(c: &Console, s: &TestServer, path: &str) -> (f64, String) {
    let mut best = f64::MAX;
    let mut body = String::new();
    for _ in 0..3 {
        let t = Instant::now();
        let (st, html) = c.get(s, path).await;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(st, 200, "{path}: {html}");
        best = best.min(ms);
        body = html;
    }
    (best, body)
}

const BULK: u64 = 100_000;

#[tokio::test]
async fn orders_page_by_keyset_over_100k_orders() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    let mut db = Db::connect(&s.database_url).await;
    let base = now_ms() - 30 * 86_400_000;
    let t = Instant::now();
    assert_eq!(bulk::seed_orders(&mut db, "BULK", BULK, base).await, BULK);
    println!(
        "seeded {BULK} orders in {:.0} ms ({})",
        t.elapsed().as_secs_f64() * 1000.0,
        paynotify_tests::test_backend()
    );
    db.analyze().await;
    // One real order, newer than all of them.
    order_of(&s, "recharge", "REAL000001", "zed", 99).await;

    let mid = BULK / 2;
    let mid_cursor = (seeded_created_at(base, mid), seeded_order_no("BULK", mid));
    for (what, filter, cursor, index) in [
        ("the first page", "", None, Some("orders_created")),
        (
            "a middle page",
            "",
            Some(&mid_cursor),
            Some("orders_created"),
        ),
        (
            "a middle page of one status",
            " AND status = 1",
            Some(&mid_cursor),
            None,
        ),
        (
            "a page of one user",
            " AND user_id = 'bulk8'",
            Some(&mid_cursor),
            None,
        ),
        (
            "a page of one type",
            " AND type = 'vip'",
            Some(&mid_cursor),
            None,
        ),
    ] {
        let sql = page_sql(filter, cursor.map(|(c, n)| (*c, n.as_str())));
        let plan = db.explain(&sql).await;
        assert_indexed(&db, what, &plan, index);
    }
    bulk::close(db).await;

    let c = Console::sign_in(&s).await;
    let (first_ms, first) = page_ms(&c, &s, "/console/orders").await;
    let rows = order_rows(&first);
    assert_eq!(rows.len(), 50);
    assert_eq!(rows[0], "REAL000001");
    assert_eq!(rows[1], seeded_order_no("BULK", BULK));
    assert_eq!(rows[49], seeded_order_no("BULK", BULK - 48));
    assert!(
        link(&first, "newer").is_none(),
        "nothing is newer than the first page"
    );

    let cursor = format!("{}:{}", mid_cursor.0, mid_cursor.1);
    let (mid_ms, middle) = page_ms(&c, &s, &format!("/console/orders?older={cursor}")).await;
    let expect: Vec<String> = (mid - 50..mid)
        .rev()
        .map(|i| seeded_order_no("BULK", i))
        .collect();
    assert_eq!(
        order_rows(&middle),
        expect,
        "the 50 orders just older than the cursor"
    );
    let last_cursor = format!(
        "{}:{}",
        seeded_created_at(base, 51),
        seeded_order_no("BULK", 51)
    );
    let (last_ms, last) = page_ms(&c, &s, &format!("/console/orders?older={last_cursor}")).await;
    assert_eq!(order_rows(&last).len(), 50);
    assert!(
        link(&last, "older").is_none(),
        "the last page has no older page"
    );
    let (filtered_ms, filtered) = page_ms(
        &c,
        &s,
        &format!("/console/orders?status=paid&older={cursor}"),
    )
    .await;
    assert_eq!(order_rows(&filtered).len(), 50);
    println!(
        "console orders page over {} orders ({}): first {first_ms:.1} ms, middle {mid_ms:.1} ms, \
         last {last_ms:.1} ms, middle of status=paid {filtered_ms:.1} ms (HTTP round trip + render, best of 3)",
        BULK + 1,
        paynotify_tests::test_backend()
    );

    // Older, older, then newer twice: the same pages, no gap, no overlap.
    let (_, p2) = c
        .get(&s, &link(&middle, "older").expect("older link"))
        .await;
    let p2_rows = order_rows(&p2);
    let expect: Vec<String> = (mid - 100..mid - 50)
        .rev()
        .map(|i| seeded_order_no("BULK", i))
        .collect();
    assert_eq!(p2_rows, expect);
    let (_, back) = c.get(&s, &link(&p2, "newer").expect("newer link")).await;
    assert_eq!(order_rows(&back), order_rows(&middle));

    // Filters page too: user bulk8 has 100 orders, all paid.
    let (_, f1) = c.get(&s, "/console/orders?status=paid&user=bulk8").await;
    let f1_rows = order_rows(&f1);
    assert_eq!(f1_rows.len(), 50);
    let (_, f2) = c.get(&s, &link(&f1, "older").expect("second page")).await;
    let f2_rows = order_rows(&f2);
    assert_eq!(f2_rows.len(), 50);
    assert!(link(&f2, "older").is_none(), "two pages of 50");
    let mut all: Vec<String> = f1_rows.into_iter().chain(f2_rows).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 100);
    assert!(all.iter().all(|no| no
        .strip_prefix("BULK")
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|i| i % 1000 == 8)));
    // A cursor that is not one: a clear 400.
    let (st, page) = c.get(&s, "/console/orders?older=yesterday").await;
    assert_eq!(st, 400);
    assert!(page.contains("cursor"), "{page}");
}

// ---------------------------------------------------------------------------------------
// The browser

/// A page on another origin (another port of 127.0.0.1: same site, other origin) with a
/// form that posts to the console, as a malicious page would.
async fn evil_site(target: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let html = format!(
        "<!doctype html><title>Win a prize</title>\
         <form method=post action=\"{target}\"><input type=hidden name=csrf value=guess>\
         <button id=evil type=submit>Claim</button></form>"
    );
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let html = html.clone();
            async move { axum::response::Html(html) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.expect("evil site") });
    format!("http://{addr}/")
}

#[tokio::test]
async fn console_in_a_real_browser() {
    if !browser::available("console_in_a_real_browser") {
        return;
    }
    let sc = scenario(None).await;
    let s = &sc.s;
    let mut db = Db::connect(&s.database_url).await;
    let base = now_ms() - 30 * 86_400_000;
    bulk::seed_orders(&mut db, "BULK", BULK, base).await;
    db.analyze().await;
    bulk::close(db).await;

    let b = Browser::start(true).await;
    // Not signed in: the sign-in form, then back where we were going.
    b.goto(&s.url("/console/orders")).await;
    b.find("#token").await;
    assert!(
        b.url().await.contains("/console/login?next="),
        "{}",
        b.url().await
    );
    b.screenshot("login").await;
    b.find("#token")
        .await
        .send_keys("wrong")
        .await
        .expect("type");
    b.click("#sign-in").await;
    assert!(b.text("#login-error").await.contains("Wrong token"));
    assert!(
        b.client
            .get_all_cookies()
            .await
            .expect("cookies")
            .is_empty(),
        "no cookie after a wrong token"
    );
    b.find("#token").await.send_keys(TOKEN).await.expect("type");
    b.click("#sign-in").await;
    b.find("table#orders").await;
    assert!(
        b.url().await.ends_with("/console/orders"),
        "{}",
        b.url().await
    );
    let cookies = b.client.get_all_cookies().await.expect("cookies");
    let session = cookies
        .iter()
        .find(|c| c.name() == "paynotify_console")
        .expect("session cookie");
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(session.path(), Some("/console"));

    // Orders: yuan, Shanghai time with UTC on hover, newest first, then paging.
    let r1 = s.order("R0000001").await;
    let row = b.find(r#"tr[data-order="R0000001"]"#).await;
    let row_text = row.text().await.expect("row");
    assert!(row_text.contains("¥12.34"), "{row_text}");
    let created = row
        .find(fantoccini::Locator::Css("time"))
        .await
        .expect("a time");
    assert_eq!(
        created.attr("title").await.expect("title"),
        Some(paynotify::time::iso_time(r1.created_at))
    );
    assert_eq!(
        created.text().await.expect("time"),
        paynotify::http::console::format::shanghai(r1.created_at)
    );
    b.screenshot("orders").await;
    b.click("a.older").await;
    let page_a = b.wait_for_url("older=").await;
    let older_rows = b.find_all("tr[data-order]").await.len();
    assert_eq!(older_rows, 50);
    let first_older = b
        .find("tr[data-order]")
        .await
        .attr("data-order")
        .await
        .expect("attr");
    assert!(first_older
        .as_deref()
        .is_some_and(|no| no.starts_with("BULK")));
    b.click("a.older").await;
    let page_b = b.wait_for_url("older=").await;
    assert_ne!(page_a, page_b);
    b.click("a.newer").await;
    b.wait_for_url("newer=").await;
    let back = b
        .find("tr[data-order]")
        .await
        .attr("data-order")
        .await
        .expect("attr");
    assert_eq!(
        back, first_older,
        "newer after older comes back to the same page"
    );
    // Filter by status through the form.
    b.goto(&s.url("/console/orders")).await;
    b.find("select[name=status]")
        .await
        .select_by_value("paid")
        .await
        .expect("select");
    b.find("input[name=user]")
        .await
        .send_keys("alice")
        .await
        .expect("type");
    b.click("form.filters button").await;
    b.wait_for_text("R0000001", false).await;
    assert_eq!(b.find_all("tr[data-order]").await.len(), 1);

    // An order: fields, handler result, its notification history.
    b.click(r#"a[href="/console/orders/R0000001"]"#).await;
    assert_eq!(b.text("#amount").await, "¥12.34");
    assert_eq!(b.text("#handler-status").await, "succeeded");
    assert!(b.text("#handler-result").await.contains('{'));
    assert!(b.text("table.notifications").await.contains("paid"));
    b.screenshot("order").await;
    b.goto(&s.url("/console/orders/N0000001")).await;
    assert!(b.text("table.tasks").await.contains("dead"));

    // Notifications: the failed one, with its reason.
    b.goto(&s.url("/console/notifications?verdict=failed"))
        .await;
    let failed_row = format!(r#"tr[data-notification="{}"]"#, sc.failed_notification);
    let reason = b.text(&format!("{failed_row} td.reason")).await;
    assert!(!reason.is_empty() && reason != "—", "a reason: {reason}");
    b.screenshot("notifications").await;

    // Reload: the flaky type gets a working handler.
    install_plugin(&s.plugins_dir(), "flaky", "recharge", None);
    b.goto(&s.url("/console/plugins")).await;
    b.click("#reload").await;
    let report = b.text("#reload-result").await;
    assert!(report.contains("Loaded: flaky"), "{report}");
    let flaky = s
        .app
        .plugins
        .status()
        .into_iter()
        .find(|p| p.plugin_type == "flaky")
        .expect("flaky");
    assert_eq!(flaky.name.as_deref(), Some("recharge"));
    let hash = b
        .find(r#"tr[data-plugin="flaky"] td.hash code"#)
        .await
        .attr("title")
        .await
        .expect("title");
    assert_eq!(hash, flaky.sha256);
    b.screenshot("plugins").await;

    // Its history: the failing build loaded at start, then replaced by this one.
    b.click(r#"tr[data-plugin="flaky"] a.history"#).await;
    b.wait_for_url("/console/plugins/flaky/history").await;
    let newest = "#plugin-history tbody tr:first-child";
    assert_eq!(b.text(&format!("{newest} td.event")).await, "replaced");
    let replaced_by = b
        .find(&format!("{newest} td.hash code"))
        .await
        .attr("title")
        .await
        .expect("title");
    assert_eq!(replaced_by, flaky.sha256);
    assert_eq!(
        b.text("#plugin-history tbody tr:last-child td.event").await,
        "loaded"
    );
    b.screenshot("plugin-history").await;

    // A cross-site form posting to the console: refused, nothing replayed.
    let evil = evil_site(s.url(&format!(
        "/console/notifications/{}/replay",
        sc.failed_notification
    )))
    .await;
    b.goto(&evil).await;
    b.click("#evil").await;
    b.wait_for_text("Nothing was changed", false).await;
    b.screenshot("refused").await;
    assert_eq!(s.order("F0000001").await.status, 0, "not replayed");

    // Replay from the notifications page: the order is paid now.
    b.goto(&s.url("/console/notifications?verdict=failed"))
        .await;
    b.click(&format!("{failed_row} button.replay")).await;
    let result = b.text("#replay-result").await;
    assert!(result.contains("paid"), "{result}");
    let f = s.order("F0000001").await;
    assert_eq!((f.status, f.handler_status.as_str()), (1, "succeeded"));
    assert_eq!(
        s.document("users", "carol").await.expect("carol credited")["balance"],
        888
    );
    b.screenshot("notification").await;

    // Retry the dead task once the backend is back: it runs and is done.
    sc.backend.up.store(true, Ordering::SeqCst);
    b.goto(&s.url("/console/tasks?status=dead")).await;
    let task_row = format!(r#"tr[data-task="{}"]"#, sc.dead_task);
    b.click(&format!("{task_row} button.retry")).await;
    assert!(b
        .text("#retry-result")
        .await
        .contains(&format!("Task {}", sc.dead_task)));
    wait_until(30, "the retried task to be done", || async {
        let t = s
            .app
            .store
            .get_task(sc.dead_task)
            .await
            .expect("db")
            .expect("task");
        (t.status == "done").then_some(())
    })
    .await;
    b.goto(&s.url("/console/tasks")).await;
    assert_eq!(b.text(&format!("{task_row} td.status")).await, "done");
    b.screenshot("tasks").await;

    // Live: a notification paid now appears, then shows its verdict.
    b.goto(&s.url("/console/live")).await;
    b.wait_for_text("Live: new notifications appear at the top.", false)
        .await;
    assert_eq!(pay(s, "R0000003", 2).await, "SUCCESS");
    let live_id = notification_of(s, "R0000003", "paid").await;
    let live_row = format!(r#"tr[data-id="{live_id}"]"#);
    b.find(&live_row).await;
    wait_until(20, "the live row to show `paid`", || async {
        let t = b.text(&live_row).await;
        t.contains("paid").then_some(())
    })
    .await;
    assert!(b.text(&live_row).await.contains("R0000003"));
    b.screenshot("live").await;

    // Sign out: the session is gone, pages ask to sign in again.
    b.click("#sign-out").await;
    assert!(b
        .wait_for_text("You are signed out.", false)
        .await
        .contains("Sign in"));
    let id = b
        .client
        .get_all_cookies()
        .await
        .expect("cookies")
        .into_iter()
        .find(|c| c.name() == "paynotify_console")
        .map(|c| c.value().to_owned());
    assert!(
        id.as_deref().is_none_or(str::is_empty),
        "cookie cleared: {id:?}"
    );
    b.goto(&s.url("/console/tasks")).await;
    b.find("#token").await;
    b.close().await;

    // JavaScript off: every read-only page works, paging too; the live view says where
    // to look instead.
    let b = Browser::start(false).await;
    b.goto(&s.url("/console/login")).await;
    b.find("#token").await.send_keys(TOKEN).await.expect("type");
    b.click("#sign-in").await;
    b.find("table#orders").await;
    b.screenshot("orders-nojs").await;
    b.click("a.older").await;
    b.wait_for_url("older=").await;
    assert_eq!(b.find_all("tr[data-order]").await.len(), 50);
    for (path, css, shot) in [
        ("/console/orders/R0000002", "#handler-result", "order-nojs"),
        (
            "/console/notifications",
            "table.notifications",
            "notifications-nojs",
        ),
        ("/console/plugins", "table#plugins", "plugins-nojs"),
        ("/console/tasks", "table.tasks", "tasks-nojs"),
        (
            &format!("/console/notifications/{live_id}"),
            "#verdict",
            "notification-nojs",
        ),
    ] {
        b.goto(&s.url(path)).await;
        b.find(css).await;
        b.screenshot(shot).await;
    }
    b.goto(&s.url("/console/live")).await;
    let noscript = b.find_all("noscript p").await;
    assert_eq!(
        noscript.len(),
        1,
        "the <noscript> line shows with JavaScript off"
    );
    assert!(noscript[0]
        .text()
        .await
        .expect("text")
        .contains("notifications list"));
    assert_eq!(b.text("#live-status").await, "", "no script ran");
    b.screenshot("live-nojs").await;
    b.close().await;
    println!("screenshots in {}", browser::screenshot_dir().display());
}

// ---------------------------------------------------------------------------------------
// The order page's Refund and Close (no browser)

impl Console {
    /// POSTs a console form (with the page's Origin); status and `Location`.
    async fn post(&self, s: &TestServer, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let r = self
            .http
            .post(s.url(path))
            .header("cookie", &self.cookie)
            .header("origin", origin(s))
            .form(form)
            .send()
            .await
            .expect("post");
        (r.status().as_u16(), header(&r, "location"))
    }
}

#[tokio::test]
async fn the_order_page_refunds_and_closes_only_when_confirmed() {
    use paynotify::store::status;
    use paynotify_tests::fake_provider::{self, FakeProvider, Trade};
    let fake = FakeProvider::start().await;
    let mut options = Options::with_plugins(&["recharge"]).with_token();
    options.extra_config = format!(
        "[[accounts]]\nprovider = \"wechat-v2\"\nname = \"fake\"\nappid = \"{}\"\nmch_id = \"{}\"\napi_key = \"{}\"\napi_base = \"{}\"\n",
        fake_provider::V2_APPID,
        fake_provider::V2_MCH_ID,
        fake_provider::V2_API_KEY,
        fake.base
    );
    let s = TestServer::start(options).await;
    s.create_order(json!({
        "type": "recharge", "total_fee": 300, "user_id": "u-close", "provider": "wechat-v2",
        "account": "fake", "out_trade_no": "C0000001", "custom": { "recharge_balance": 300 }
    }))
    .await;
    fake.set("C0000001", Trade::Unpaid);
    s.create_order(json!({
        "type": "recharge", "total_fee": 100, "user_id": "u-paid", "provider": "wechat-v2",
        "account": "default", "out_trade_no": "P0000001", "custom": { "recharge_balance": 100 }
    }))
    .await;
    assert_eq!(pay(&s, "P0000001", 100).await, "SUCCESS");
    let c = Console::sign_in(&s).await;
    let csrf = c.csrf(&s).await;

    let (st, page) = c.get(&s, "/console/orders/C0000001").await;
    assert_eq!(st, 200, "{page}");
    assert!(
        page.contains("Close order") && !page.contains(r#"id="refund""#),
        "{page}"
    );
    let (st, page) = c.get(&s, "/console/orders/P0000001").await;
    assert_eq!(st, 200, "{page}");
    assert!(
        page.contains(r#"id="refund""#) && page.contains(r#"max="100""#),
        "{page}"
    );
    assert!(
        !page.contains("Close order"),
        "a paid order has no Close: {page}"
    );

    // Not confirmed, or not from this session: nothing is done.
    let close = "/console/orders/C0000001/close";
    let (st, _) = c.post(&s, close, &[("csrf", &csrf)]).await;
    assert_eq!(st, 422);
    let (st, _) = c
        .post(&s, close, &[("csrf", "0000"), ("confirm", "yes")])
        .await;
    assert_eq!(st, 403);
    assert_eq!(s.order("C0000001").await.status, status::UNPAID);
    assert!(fake.lock().closes.is_empty(), "no provider call");

    let (st, location) = c
        .post(&s, close, &[("csrf", &csrf), ("confirm", "yes")])
        .await;
    assert_eq!(
        (st, location.as_str()),
        (303, "/console/orders/C0000001?closed=1")
    );
    assert_eq!(s.order("C0000001").await.status, status::CLOSED);
    assert_eq!(
        fake.lock().closes,
        [("wechat-v2".to_owned(), "C0000001".to_owned())]
    );
    let (_, page) = c.get(&s, &location).await;
    assert!(
        page.contains(r#"id="action-result""#) && page.contains("Order closed"),
        "{page}"
    );
    // Closed: no more Close.
    assert!(!page.contains("Close order"), "{page}");

    // A refund of more than was paid is refused before anything is recorded or sent.
    let refund = "/console/orders/P0000001/refund";
    let (st, _) = c
        .post(
            &s,
            refund,
            &[("csrf", &csrf), ("confirm", "yes"), ("amount", "101")],
        )
        .await;
    assert_eq!(st, 422);
    let (st, _) = c
        .post(
            &s,
            refund,
            &[("csrf", &csrf), ("confirm", "yes"), ("amount", "ten")],
        )
        .await;
    assert_eq!(st, 422);
    let (st, _) = c
        .post(&s, refund, &[("csrf", &csrf), ("amount", "50")])
        .await;
    assert_eq!(st, 422, "not confirmed");
    let (_, v) = s.api("GET", "/api/orders/P0000001/refunds", None).await;
    assert_eq!(v["requests"], json!([]), "{v}");
    assert_eq!(s.order("P0000001").await.status, status::PAID);
}
