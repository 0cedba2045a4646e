//! `cargo xtask bench [--quick] [--plugins-only]`: the scenarios of `apiary bench`, scaled to a 2-core
//! machine, against Apiary (release build, no plugins, then with the auth-file plugin
//! checking every connect and publish), Mosquitto (Debian package) and rumqttd 0.20
//! (stock settings, `bench/rumqttd-peer`), one broker at a time on the same port, with the
//! broker's peak RSS and CPU sampled from /proc. Writes `target/bench/report.md`,
//! `results.json` and `throughput.svg`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

const PORT: u16 = 31883;

/// One scenario of the run.
struct Case {
    label: &'static str,
    args: Vec<String>,
}

fn cases(quick: bool) -> Vec<Case> {
    let d = if quick { "2" } else { "10" };
    let c = |label: &'static str, a: &str| Case {
        label,
        args: a
            .replace("{d}", d)
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    };
    let mut v = vec![
        c("p2p, QoS 1, 10 pairs", "p2p --qos 1 -n 10 --duration {d}"),
        c(
            "fan-out, QoS 0, 1 to 20",
            "fan-out --qos 0 -n 20 --duration {d}",
        ),
        c(
            "overload: fan-in, QoS 1, 20 to 1",
            "fan-in --qos 1 -n 20 --duration {d}",
        ),
        c(
            "shared fan-in, QoS 1, 20 to 2",
            "fan-in-shared --qos 1 -n 20 --duration {d}",
        ),
        c(
            "p2p, QoS 1, 10 pairs at 1000 msg/s each (latency at equal load)",
            "p2p --qos 1 -n 10 --rate 1000 --duration {d}",
        ),
        c(
            "connections, 1000 at 500/s",
            "conn -n 1000 --rate 500 --duration {d}",
        ),
        // 10k: what the machine's 20,000 open files per process leave room for.
        c(
            "idle: 10k connections, 3.1.1, keepalive 60",
            "conn -n 10000 --rate 2500 --duration 8",
        ),
        c(
            "idle: 10k connections, MQTT 5, keepalive 60",
            "conn -n 10000 --rate 2500 --duration 8 --v5",
        ),
    ];
    if !quick {
        v.insert(
            1,
            c("p2p, QoS 0, 10 pairs", "p2p --qos 0 -n 10 --duration {d}"),
        );
        v.insert(
            4,
            c(
                "fan-out, QoS 1, 1 to 20",
                "fan-out --qos 1 -n 20 --duration {d}",
            ),
        );
    }
    v
}

/// A broker under test.
struct Broker {
    name: &'static str,
    start: Box<dyn Fn() -> Result<Child>>,
    creds: Option<(&'static str, &'static str)>,
}

fn wait_for_port(child: &mut Child) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", PORT)).is_ok() {
            return Ok(());
        }
        if let Some(s) = child.try_wait()? {
            bail!("the broker exited at startup ({s})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the broker did not listen on {PORT} within 20 s")
}

fn stop(mut child: Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// (RSS kB, CPU ticks) of a process from /proc.
fn sample(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks))
}

/// Runs one case against the running broker, sampling it; the bench JSON plus
/// `peak_rss_mb` and `cpu_percent`.
fn run_case(
    root: &Path,
    apiary: &Path,
    pid: u32,
    case: &Case,
    creds: Option<(&str, &str)>,
) -> Result<Value> {
    let out = root.join("target/bench/case.json");
    let _ = std::fs::remove_file(&out);
    let mut cmd = Command::new(apiary);
    cmd.arg("bench")
        .args(&case.args)
        .args(["--port", &PORT.to_string(), "--quiet", "--json"])
        .arg(&out)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped());
    if let Some((u, p)) = creds {
        cmd.args(["--username", u, "--password", p]);
    }
    let (rss0, ticks0) = sample(pid).unwrap_or((0, 0));
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting apiary bench")?;
    let mut peak = rss0;
    while child.try_wait()?.is_none() {
        if let Some((rss, _)) = sample(pid) {
            peak = peak.max(rss);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let wall = start.elapsed().as_secs_f64();
    let ticks = sample(pid).map_or(0, |(_, t)| t.saturating_sub(ticks0));
    let status = child.wait()?;
    let mut line = String::new();
    if let Some(mut o) = child.stdout.take() {
        use std::io::Read;
        let _ = o.read_to_string(&mut line);
    }
    print!("    {}", line);
    if !status.success() {
        bail!("apiary bench failed ({status})");
    }
    let mut v: Value = serde_json::from_slice(&std::fs::read(&out)?)?;
    v["base_rss_mb"] = Value::from(rss0 as f64 / 1024.0);
    v["peak_rss_mb"] = Value::from(peak as f64 / 1024.0);
    v["cpu_percent"] = Value::from(ticks as f64 / 100.0 / wall * 100.0);
    Ok(v)
}

/// Mosquitto from Debian, installed if missing (None, with a message, if it cannot be).
fn mosquitto() -> Option<PathBuf> {
    let find = || {
        ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    if let Some(p) = find() {
        return Some(p);
    }
    println!("==> mosquitto is not installed: apt-get install mosquitto");
    if let Err(e) = crate::toolchain::apt_install(&["mosquitto"]) {
        println!("==> cannot install mosquitto ({e}); the report leaves it out");
    }
    find()
}

/// rumqttd 0.20 in its bench-only crate (None, with a message, if it does not build).
fn rumqttd(root: &Path) -> Option<PathBuf> {
    println!(
        "==> rumqttd peer: cargo build --release --manifest-path bench/rumqttd-peer/Cargo.toml"
    );
    let ok = Command::new("cargo")
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--quiet",
            "--manifest-path",
            "bench/rumqttd-peer/Cargo.toml",
            "--target-dir",
            "target/bench-build",
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let bin = root.join("target/bench-build/release/rumqttd-peer");
    if ok && bin.exists() {
        Some(bin)
    } else {
        println!("==> the rumqttd peer did not build; the report leaves it out");
        None
    }
}

/// An Apiary config over `dir` (its data and `plugins/`), with `plugin` (the name of a
/// component built into `target/plugins/`, and its toml) installed when given.
fn apiary_config(root: &Path, dir: &Path, plugin: Option<(&str, &str)>) -> Result<PathBuf> {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    if let Some((name, toml)) = plugin {
        std::fs::copy(
            root.join(format!("target/plugins/{name}.wasm")),
            plugins.join(format!("{name}.wasm")),
        )?;
        std::fs::write(plugins.join(format!("{name}.toml")), toml)?;
    }
    let p = dir.join("apiary.toml");
    std::fs::write(
        &p,
        format!(
            "data_dir = {:?}\nplugins_dir = {:?}\nsys_interval_secs = 0\n[listeners]\ntcp = \"127.0.0.1:{PORT}\"\n[auth]\nallow_anonymous = true\n",
            dir.join("data"),
            plugins
        ),
    )?;
    Ok(p)
}

/// Three nodes over one nats-server (issue 16): the `cluster` benchmark's lines (p2p and
/// fan-out within one node and across nodes, ratios, time per cross-node message).
fn cluster(root: &Path) -> Result<String> {
    if !crate::toolchain::nats_server() {
        return Ok("\n### Cluster\n\nnot run: nats-server could not be installed\n".into());
    }
    let out = Command::new("cargo")
        .current_dir(root)
        .args([
            "bench", "-q", "-p", "apiary", "--bench", "cluster", "--", "--bench",
        ])
        .output()?;
    anyhow::ensure!(out.status.success(), "the cluster benchmark failed");
    let mut md =
        String::from("\n### Cluster: three nodes over one nats-server, this machine\n\n```\n");
    for l in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("cluster/"))
    {
        md.push_str(l);
        md.push('\n');
    }
    md.push_str("```\n");
    Ok(md)
}

/// Apiary with the configuration `cfg`, once it listens.
fn start_apiary(apiary: &Path, cfg: &Path) -> Result<Child> {
    let mut child = Command::new(apiary)
        .arg("--config")
        .arg(cfg)
        .env("RUST_LOG", "warn")
        .spawn()?;
    wait_for_port(&mut child)?;
    Ok(child)
}

/// p2p QoS 1 through message interceptors (issue 17): no interceptor, the `stamper` test
/// plugin passing every publish on the benchmark's topics, and the same plugin on other
/// topics only; throughput as a ratio to no interceptor, measured in this run. The
/// variants take turns over several rounds and each reports its median round: on this
/// machine one run of the same case varies by ±15%.
fn interceptors(root: &Path, apiary: &Path, work: &Path, quick: bool) -> Result<String> {
    crate::plugins(root, crate::Scope::One("stamper"))?;
    let case = cases(quick).remove(0);
    let variants = [
        ("no interceptor", None),
        (
            "pass-through interceptor on the published topics",
            Some("bench/#"),
        ),
        ("interceptor on other topics only", Some("other/#")),
    ];
    let rounds = if quick { 1 } else { 3 };
    // (msg/s, p50 ms, p99 ms) of each round, per variant.
    let mut runs: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); variants.len()];
    for round in 1..=rounds {
        for (i, (label, filter)) in variants.iter().enumerate() {
            let dir = work.join(format!("intercept-{i}"));
            let _ = std::fs::remove_dir_all(&dir);
            let toml = filter.map(|f| {
                format!("roles = [\"message\"]\n[message]\nfilters = [\"{f}\"]\n[config]\nname = \"bench\"\npass = true\n")
            });
            let cfg = apiary_config(root, &dir, toml.as_deref().map(|t| ("stamper", t)))?;
            let child = start_apiary(apiary, &cfg)?;
            println!("==> Apiary, {label} (round {round} of {rounds})");
            let r = run_case(root, apiary, child.id(), &case, None);
            stop(child);
            let v = r?;
            let ms = |q: &str| v["latency_us"][q].as_f64().unwrap_or(0.0) / 1000.0;
            let rate = v["received_per_sec"].as_f64().unwrap_or(0.0);
            runs[i].push((rate, ms("p50"), ms("p99")));
        }
    }
    let median = |v: &mut Vec<(f64, f64, f64)>| {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v[v.len() / 2]
    };
    let mut md = format!(
        "\n### Message interceptors: {} (ratio to no interceptor; median of {rounds} alternating rounds)\n\n\
         | Apiary | msg/s | ratio | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|\n",
        case.label
    );
    let mut base = None;
    for ((label, _), mut v) in variants.into_iter().zip(runs) {
        let (rate, p50, p99) = median(&mut v);
        let base_rate = *base.get_or_insert(rate);
        md.push_str(&format!(
            "| {label} | {rate:.0} | {:.2} | {p50:.2} | {p99:.2} |\n",
            rate / base_rate.max(1.0),
        ));
    }
    Ok(md)
}

/// Counts the events of webhook requests (JSON arrays of objects with an `event` field)
/// a local receiver gets, answering 200 to each; the count and when the last one came.
/// Events a receiver counted, and when the last request came.
type Seen = std::sync::Arc<(AtomicU64, std::sync::Mutex<Instant>)>;

fn hook_receiver() -> Result<(u16, Seen)> {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let seen = std::sync::Arc::new((AtomicU64::new(0), std::sync::Mutex::new(Instant::now())));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            let body = loop {
                let Ok(n) = c.read(&mut chunk) else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: ")?.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break Some(buf[end + 4..end + 4 + len].to_vec());
                }
            };
            if let Some(b) = body {
                let n = b.windows(8).filter(|w| w == b"\"event\":").count() as u64;
                s2.0.fetch_add(n, Ordering::Relaxed);
                *s2.1.lock().unwrap() = Instant::now();
            }
            let _ =
                c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    Ok((port, seen))
}

/// The stock webhook plugin delivering every publish of the p2p QoS 1 case to a local
/// receiver, 100 events per request: what reached it, and at what rate.
fn webhook(root: &Path, apiary: &Path, work: &Path, quick: bool) -> Result<String> {
    crate::plugins(root, crate::Scope::One("webhook"))?;
    let case = cases(quick).remove(0);
    let (port, seen) = hook_receiver()?;
    let toml = format!(
        "roles = [\"events\"]\ncapabilities = [\"kv\", \"events.messages\"]\ntenants = [\"*\"]\n\
         call_timeout_ms = 10000\nkv_max_keys = 200000\nkv_max_bytes = 1073741824\n\
         [events]\ntick_ms = 100\n[outbound_http]\nallowed_hosts = [\"http://127.0.0.1:{port}\"]\n\
         [config]\nsecret = \"bench\"\n[[config.targets]]\nurl = \"http://127.0.0.1:{port}/hook\"\n\
         events = [\"message.publish\"]\nbatch_size = 100\nmax_queued = 100000\n"
    );
    let cfg = apiary_config(root, &work.join("webhook"), Some(("webhook", &toml)))?;
    let child = start_apiary(apiary, &cfg)?;
    println!("==> Apiary + webhook");
    let start = Instant::now();
    let r = run_case(root, apiary, child.id(), &case, None);
    // Drained: nothing new for 2 s (at most 120 s).
    let mut last = 0;
    while start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_secs(2));
        let n = seen.0.load(Ordering::Relaxed);
        if n == last {
            break;
        }
        last = n;
    }
    stop(child);
    let v = r?;
    let sent = v["sent"].as_f64().unwrap_or(0.0);
    let delivered = seen.0.load(Ordering::Relaxed) as f64;
    let took = seen.1.lock().unwrap().duration_since(start).as_secs_f64();
    Ok(format!(
        "\n### Webhook: every publish of {} to a local receiver, 100 events per request\n\n\
         | published | delivered | delivered/published | events/s delivered |\n|---:|---:|---:|---:|\n\
         | {sent:.0} | {delivered:.0} | {:.2} | {:.0} |\n",
        case.label,
        delivered / sent.max(1.0),
        delivered / took.max(0.001)
    ))
}

/// The admin API's deep pages at 200k sessions and subscriptions (issue 15): the
/// `admin_pages` benchmark, in process over HTTP through the stock emqx plugin, as a
/// markdown table.
fn admin_pages(root: &Path, work: &Path) -> Result<String> {
    let out = work.join("admin-pages.json");
    let status = Command::new("cargo")
        .current_dir(root)
        .args([
            "bench",
            "-q",
            "-p",
            "apiary",
            "--bench",
            "admin_pages",
            "--",
            "--bench",
        ])
        .env("APIARY_BENCH_JSON", &out)
        .status()?;
    anyhow::ensure!(status.success(), "the admin_pages benchmark failed");
    let rows: Vec<Value> = serde_json::from_slice(&std::fs::read(&out)?)?;
    let mut md = String::from(
        "\n### Admin API pages at 200k sessions and subscriptions (goal: p99 under 10 ms)\n\n\
         | request | p50 ms | p99 ms | requests |\n|---|---:|---:|---:|\n",
    );
    for r in rows {
        md.push_str(&format!(
            "| {} | {:.2} | {:.2} | {} |\n",
            r["case"].as_str().unwrap_or("?"),
            r["p50_ms"].as_f64().unwrap_or(0.0),
            r["p99_ms"].as_f64().unwrap_or(0.0),
            r["requests"]
        ));
    }
    Ok(md)
}

pub fn bench(root: &Path, args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    crate::step(
        root,
        "release build",
        "cargo",
        &[
            "build",
            "--release",
            "--quiet",
            "-p",
            "apiary",
            "--bin",
            "apiary",
        ],
    )?;
    crate::plugins(root, crate::Scope::Stock)?;
    let apiary = root.join("target/release/apiary");
    let work = root.join("target/bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    if args.iter().any(|a| a == "--plugins-only") {
        // Only the plugin platform's figures (interceptors, webhook), for iterating on them.
        let report = format!(
            "{}{}",
            interceptors(root, &apiary, &work, quick)?,
            webhook(root, &apiary, &work, quick)?
        );
        std::fs::write(work.join("report.md"), &report)?;
        println!("{report}");
        return Ok(());
    }

    let mut brokers: Vec<Broker> = Vec::new();
    {
        let (a, dir) = (apiary.clone(), work.join("apiary"));
        let cfg = apiary_config(root, &dir, None)?;
        brokers.push(Broker {
            name: "Apiary",
            start: Box::new(move || {
                Ok(Command::new(&a)
                    .arg("--config")
                    .arg(&cfg)
                    .env("RUST_LOG", "warn")
                    .spawn()?)
            }),
            creds: None,
        });
    }
    {
        let (a, dir) = (apiary.clone(), work.join("apiary-auth"));
        let toml = "tenants = [\"*\"]\n[config]\ndefault = \"deny\"\n[[config.users]]\nusername = \"bench\"\npassword = \"bench\"\n[[config.rules]]\npermission = \"allow\"\ntopic = \"bench/#\"\n";
        let cfg = apiary_config(root, &dir, Some(("auth-file", toml)))?;
        brokers.push(Broker {
            name: "Apiary + auth-file",
            start: Box::new(move || {
                Ok(Command::new(&a)
                    .arg("--config")
                    .arg(&cfg)
                    .env("RUST_LOG", "warn")
                    .spawn()?)
            }),
            creds: Some(("bench", "bench")),
        });
    }
    if let Some(m) = mosquitto() {
        let conf = work.join("mosquitto.conf");
        // The same limits as Apiary's defaults: 1000 queued messages, 512 in flight.
        std::fs::write(&conf, format!("listener {PORT} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000\nmax_inflight_messages 512\nlog_dest none\n"))?;
        brokers.push(Broker {
            name: "Mosquitto",
            start: Box::new(move || {
                Ok(Command::new(&m)
                    .arg("-c")
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?)
            }),
            creds: None,
        });
    }
    if let Some(r) = rumqttd(root) {
        brokers.push(Broker {
            name: "rumqttd",
            start: Box::new(move || {
                Ok(Command::new(&r)
                    .arg(PORT.to_string())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?)
            }),
            creds: None,
        });
    }

    let cases = cases(quick);
    let mut results: Vec<(String, String, Value)> = Vec::new();
    for b in &brokers {
        println!("==> {}", b.name);
        for case in &cases {
            let mut child = (b.start)()?;
            wait_for_port(&mut child)?;
            let r = run_case(root, &apiary, child.id(), case, b.creds);
            stop(child);
            match r {
                Ok(v) => results.push((b.name.to_string(), case.label.to_string(), v)),
                Err(e) => {
                    println!("    {}: {e}", case.label);
                    results.push((b.name.to_string(), case.label.to_string(), Value::Null));
                }
            }
        }
    }
    let names: Vec<&str> = brokers.iter().map(|b| b.name).collect();
    let labels: Vec<&str> = cases.iter().map(|c| c.label).collect();
    std::fs::write(
        work.join("results.json"),
        serde_json::to_vec_pretty(
            &results
                .iter()
                .map(|(b, c, v)| serde_json::json!({"broker": b, "case": c, "result": v}))
                .collect::<Vec<_>>(),
        )?,
    )?;
    let mut report = crate::bench_report::markdown(&names, &labels, &results, quick);
    report.push_str(&interceptors(root, &apiary, &work, quick)?);
    report.push_str(&webhook(root, &apiary, &work, quick)?);
    report.push_str(&admin_pages(root, &work)?);
    report.push_str(&cluster(root)?);
    std::fs::write(work.join("report.md"), &report)?;
    crate::bench_report::chart(&work.join("throughput.svg"), &names, &labels, &results)?;
    println!("{report}");
    println!(
        "==> wrote {}, results.json and throughput.svg",
        work.join("report.md").display()
    );
    Ok(())
}
