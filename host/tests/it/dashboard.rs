//! The web dashboard in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver, fantoccini) against a broker serving the stock emqx plugin. It logs in
//! (after a wrong secret is refused), finds a client a test connected, kicks it (the
//! client sees the DISCONNECT), reads the plugin table, and makes a key; a screenshot of
//! each page goes to `target/dashboard-screenshots/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::{self, v5, Tr};
use crate::emqx;

/// The dashboard's routes span every tenant: its keys are `tenant=*`.
const ADMIN: (&str, &str) = ("root", "rootsecret");
const READER: (&str, &str) = ("ro", "ropw");

async fn start() -> (common::TestBroker, tempfile::TempDir) {
    let emqx = common::stock_toml("emqx");
    common::with_plugins(
        &[("emqx", "emqx", &emqx)],
        "root:rootsecret:admin:tenant=*\nro:ropw:connections:read:tenant=*\n",
        |_| {},
    )
    .await
}

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// How long the page gets to show something (it polls every 2-5 s).
const PAGE_WAIT: Duration = Duration::from_secs(20);

/// A chromedriver with one Chromium session; both end when this is dropped.
struct Browser {
    c: Client,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    /// Chromium is chromedriver's child, in chromedriver's process group: end the group,
    /// so a failed test leaves no browser running.
    fn drop(&mut self) {
        // Never 0 or 1: killpg(0) would be this test's own group, and -1 everything.
        if let Some(pgid) = self
            .driver
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .filter(|&p| p > 1)
        {
            // SAFETY: a plain system call on a process group this test made
            // (`process_group(0)` at spawn), with no memory shared.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

/// Starts chromedriver on a port it picks and a headless Chromium with a fresh profile;
/// None (after `skip_missing`) when they are not installed.
async fn browser() -> Option<Browser> {
    if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists() {
        common::skip_missing(
            "Chromium and ChromeDriver (apt-get install chromium chromium-driver)",
        );
        return None;
    }
    let mut driver = tokio::process::Command::new(CHROMEDRIVER)
        .arg("--port=0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let mut lines = BufReader::new(driver.stdout.take().expect("stdout")).lines();
    let port = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(l) = lines.next_line().await.expect("chromedriver output") {
            if let Some(p) = l.split("started successfully on port ").nth(1) {
                return p.trim_end_matches('.').trim().parse::<u16>().expect("port");
            }
        }
        panic!("chromedriver ended without saying its port")
    })
    .await
    .expect("chromedriver says its port within 20 s");
    // Keep reading its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let profile = tempfile::tempdir().expect("profile dir");
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        &format!("--user-data-dir={}", profile.path().display()),
    ];
    let caps = json!({"goog:chromeOptions": {"binary": CHROMIUM, "args": args}});
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session");
    Some(Browser {
        c,
        driver,
        _profile: profile,
    })
}

fn shots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(shots_dir().join(format!("{name}.png")), png).expect("write screenshot");
}

/// Waits until the element `css` shows text containing `needle`; returns its text.
async fn text_of(c: &Client, css: &str, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + PAGE_WAIT;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if let Ok(t) = e.text().await {
                if t.contains(needle) {
                    return t;
                }
                last = t;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = shot(c, "failure").await;
    panic!("{css} never showed {needle:?}; last text: {last:?}")
}

async fn click(c: &Client, css: &str) {
    c.wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

async fn fill(c: &Client, css: &str, text: &str) {
    let e = c
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"));
    e.clear().await.expect("clear");
    e.send_keys(text).await.expect("type");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_logs_in_finds_and_kicks_a_client_and_reads_plugins() {
    let (tb, _dir) = start().await;
    // A client to find: v5, a username, a subscription, and a retained message.
    let mut o = v5::opts(&tb, "dash-sensor-7", Tr::Tcp);
    o.set_credentials("alice", "pw");
    let (mut client, _) = v5::connect(o).await;
    client
        .c
        .subscribe("dash/+/temp", QoS::AtLeastOnce)
        .await
        .unwrap();
    client.suback().await;
    client
        .c
        .publish("dash/hall/temp", QoS::AtLeastOnce, true, "21.5")
        .await
        .unwrap();
    client.publish().await;

    let Some(b) = browser().await else { return };
    let _ = std::fs::remove_file(shots_dir().join("failure.png"));
    let c = &b.c;
    c.goto(&format!("http://{}/dashboard/", tb.http_addr()))
        .await
        .expect("open the dashboard");
    login(c).await;
    overview(c).await;
    // Subscriptions and retained before the kick ends the (clean) session.
    click(c, "#nav-subscriptions").await;
    text_of(c, "#subscriptions-table", "dash/+/temp").await;
    shot(c, "subscriptions").await;
    click(c, "#nav-retained").await;
    text_of(c, "#retained-table", "dash/hall/temp").await;
    text_of(c, "#retained-table", "21.5").await;
    shot(c, "retained").await;
    clients_and_kick(c).await;
    let (why, _) = client.closed().await;
    assert!(!why.is_empty(), "the kicked client saw its connection end");
    text_of(c, "#client-detail", "session has ended").await;
    plugins(c).await;
    let (key, secret) = make_key(c, &tb).await;
    revoked_key_logs_out(c, &tb, &key, &secret).await;
    let _ = b.c.clone().close().await;
}

/// A wrong secret is refused on the page (not by a browser prompt); then the right one.
async fn login(c: &Client) {
    fill(c, "#key", ADMIN.0).await;
    fill(c, "#secret", "wrong").await;
    click(c, "#login").await;
    text_of(c, "#login-form .error", "Wrong API key or secret").await;
    shot(c, "login").await;
    fill(c, "#secret", ADMIN.1).await;
    click(c, "#login").await;
}

/// The connected client counted, the history loaded without error, the chart drawn, the
/// TCP listener listed.
async fn overview(c: &Client) {
    let v = text_of(c, "#card-connections .value", "1").await;
    assert_eq!(v, "1");
    c.wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Css("#rate-chart canvas"))
        .await
        .expect("the rate chart");
    text_of(c, "#listeners", "tcp").await;
    assert!(
        c.find(Locator::Css("#overview .error")).await.is_err(),
        "the overview shows no error"
    );
    shot(c, "overview").await;
}

/// Search (a match, then none), the detail, the kick.
async fn clients_and_kick(c: &Client) {
    click(c, "#nav-clients").await;
    fill(c, "#client-search", "sensor").await;
    click(c, "#search").await;
    text_of(c, "#clients-table", "dash-sensor-7").await;
    text_of(c, "#clients-table", "alice").await;
    shot(c, "clients").await;
    fill(c, "#client-search", "nobody-has-this-id").await;
    click(c, "#search").await;
    text_of(c, "#no-clients", "No client matches").await;
    fill(c, "#client-search", "sensor").await;
    click(c, "#search").await;
    click(c, "a.client-link").await;
    text_of(c, "#client-subscriptions", "dash/+/temp").await;
    text_of(c, "#client-fields", "alice").await;
    shot(c, "client").await;
    click(c, "#kick").await;
    click(c, "#kick-confirm").await;
    text_of(c, "#client-detail .notice", "was kicked").await;
}

/// The emqx plugin running, with the calls this page made, and its log.
async fn plugins(c: &Client) {
    click(c, "#nav-plugins").await;
    let row = text_of(c, "#plugins-table tr[data-plugin=emqx]", "running").await;
    assert!(row.contains("http"), "{row}");
    let calls: u64 = c
        .find(Locator::Css(
            "#plugins-table tr[data-plugin=emqx] td:nth-child(5)",
        ))
        .await
        .expect("calls cell")
        .text()
        .await
        .unwrap()
        .replace(',', "")
        .parse()
        .expect("calls is a number");
    assert!(calls > 0, "the page's own calls are counted");
    click(c, "#plugins-table tr[data-plugin=emqx] button.logs").await;
    text_of(c, "#logs-emqx", "loaded version").await;
    shot(c, "plugins").await;
}

/// Makes a viewer key on the keys page; its secret, shown once, works. (key, secret)
async fn make_key(c: &Client, tb: &common::TestBroker) -> (String, String) {
    click(c, "#nav-keys").await;
    fill(c, "#new-key-name", "made-in-browser").await;
    fill(c, "#new-key-desc", "from the dashboard test").await;
    click(c, "#new-key button[type=submit]").await;
    text_of(c, "#new-secret", "made-in-browser").await;
    let secret = text_of(c, "#new-secret-value", "").await;
    text_of(c, "#keys-table", "from the dashboard test").await;
    shot(c, "keys").await;
    let (status, keys) = emqx::call(tb, "GET", "/api/v5/api_key", Some(ADMIN), None).await;
    assert_eq!(status, 200);
    let made = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "made-in-browser")
        .expect("the key exists")
        .clone();
    assert_eq!(made["role"], "viewer");
    let key = made["api_key"].as_str().unwrap().to_string();
    let (status, _) = emqx::call(
        tb,
        "GET",
        "/api/v5/monitor_current",
        Some((&key, &secret)),
        None,
    )
    .await;
    assert_eq!(status, 200, "the secret the page showed logs in");
    (key, secret)
}

/// Logged in with a key that is then disabled, the page goes back to its login, saying
/// why; logging out forgets the key.
async fn revoked_key_logs_out(c: &Client, tb: &common::TestBroker, key: &str, secret: &str) {
    click(c, "#logout").await;
    fill(c, "#key", key).await;
    fill(c, "#secret", secret).await;
    click(c, "#login").await;
    // Back on the page it left (keys), where a viewer's key is refused, shown as such.
    text_of(c, "#keys .error", "admin").await;
    click(c, "#nav-overview").await;
    text_of(c, "#card-connections", "Connections").await;
    let body = json!({"enable": false});
    let path = "/api/v5/api_key/made-in-browser";
    let (status, _) = emqx::call(tb, "PUT", path, Some(ADMIN), Some(body)).await;
    assert_eq!(status, 200);
    text_of(c, "#login-form .error", "refused the key").await;
    c.refresh().await.expect("reload the page");
    c.wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Css("#login-form"))
        .await
        .expect("still logged out after a reload");
}

#[tokio::test]
async fn dashboard_files_are_served_with_a_strict_policy_and_401s_skip_the_browser_prompt() {
    let (tb, _dir) = start().await;
    let get = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        common::request(tb.http_addr(), "GET", path, None, headers, b"")
    };
    let a = get("/dashboard/", &[]).await;
    assert_eq!(a.status, 200);
    assert!(a.body.contains("app.js"), "{}", a.body);
    let csp = a
        .headers
        .get("content-security-policy")
        .cloned()
        .unwrap_or_default();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert_eq!(get("/dashboard", &[]).await.status, 308);
    for f in [
        "/dashboard/app.js",
        "/dashboard/app.css",
        "/dashboard/vendor/preact-htm.js",
        "/dashboard/vendor/uplot.min.js",
    ] {
        let a = get(f, &[]).await;
        assert_eq!(a.status, 200, "{f}");
        assert!(a.body.len() > 500, "{f}");
    }
    assert_eq!(get("/dashboard/../Cargo.toml", &[]).await.status, 404);
    assert_eq!(get("/dashboard/nope.js", &[]).await.status, 404);
    // A browser's own request gets the Basic challenge; the page's (X-Requested-With) not.
    let a = get("/api/v5/monitor_current", &[]).await;
    assert_eq!(a.status, 401);
    assert!(
        a.headers.contains_key("www-authenticate"),
        "{:?}",
        a.headers
    );
    let a = get(
        "/api/v5/monitor_current",
        &[("X-Requested-With", "apiary-dashboard")],
    )
    .await;
    assert_eq!(a.status, 401);
    assert!(
        !a.headers.contains_key("www-authenticate"),
        "{:?}",
        a.headers
    );
}

#[tokio::test]
async fn monitor_routes_answer_in_emqx_shapes_behind_metrics_read() {
    let (tb, _dir) = start().await;
    let (client, _) = v5::connect(v5::opts(&tb, "mon-1", Tr::Tcp)).await;
    client
        .c
        .publish("mon/a", QoS::AtMostOnce, true, "x")
        .await
        .unwrap();
    common::eventually("the retained message counted", || {
        tb.broker().retained.len() == 1
    })
    .await;
    let (status, cur) = emqx::call(&tb, "GET", "/api/v5/monitor_current", Some(ADMIN), None).await;
    assert_eq!(status, 200, "{cur}");
    assert_eq!(cur["live_connections"], 1, "{cur}");
    assert_eq!(cur["retained"], 1, "{cur}");
    assert!(cur["received_msg_rate"].is_number(), "{cur}");
    assert_eq!(cur["listeners"][0]["type"], "tcp", "{cur}");
    assert_eq!(cur["listeners"][0]["current_connections"], 1, "{cur}");
    let (status, hist) =
        emqx::call(&tb, "GET", "/api/v5/monitor?latest=600", Some(ADMIN), None).await;
    assert_eq!(status, 200, "{hist}");
    assert!(hist[0]["time_stamp"].as_u64().unwrap() > 0, "{hist}");
    let (status, _) =
        emqx::call(&tb, "GET", "/api/v5/monitor?latest=soon", Some(ADMIN), None).await;
    assert_eq!(status, 400);
    let (status, _) = emqx::call(&tb, "GET", "/api/v5/monitor_current", None, None).await;
    assert_eq!(status, 401);
    // GET /plugins carries the call figures the dashboard shows.
    let (status, _) = emqx::call(&tb, "GET", "/api/v5/clients", Some(ADMIN), None).await;
    assert_eq!(status, 200);
    let (status, list) = emqx::call(&tb, "GET", "/plugins", Some(ADMIN), None).await;
    assert_eq!(status, 200, "{list}");
    let p = &list[0];
    assert_eq!(p["name"], "emqx", "{list}");
    assert!(p["latency"]["mean_ms"].as_f64().unwrap() > 0.0, "{p}");
    assert!(p["latency"]["p99_ms"].as_f64().unwrap() > 0.0, "{p}");
    assert!(p["instances"].as_u64().unwrap() >= 1, "{p}");
    assert!(p["memory_bytes"].as_u64().unwrap() > 0, "{p}");
    // A key that may read connections but not metrics.
    let (status, _) = emqx::call(&tb, "GET", "/api/v5/monitor_current", Some(READER), None).await;
    assert_eq!(status, 403);
    drop(client);
}
