//! BifroMQ's API as its users' tools see it: schemathesis (from PyPI) run against the
//! `bifromq` plugin of a real broker (the debug binary `cargo test` built), once with the
//! OpenAPI document the plugin serves (every check that applies) and once with BifroMQ's
//! own 1.0.2 document (which documents no 400/401/403, so the checks it can answer). The
//! checks of each pass are in `plugins/bifromq/schemathesis*.toml`, with why.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The schemathesis release the checks were written against.
const VERSION: &str = "4.32.5";
/// Test cases per operation and document (bounded: this runs in every `cargo xtask test`).
const EXAMPLES: &str = "25";

/// Installs schemathesis into `target/schemathesis` (a virtualenv) once; its `st`.
fn install(root: &Path) -> Result<Option<std::path::PathBuf>> {
    let venv = root.join("target/schemathesis");
    let st = venv.join("bin/st");
    if st.exists() {
        return Ok(Some(st));
    }
    println!(
        "==> installing schemathesis {VERSION} into target/schemathesis (python3 -m venv, pip)"
    );
    let spec = format!("schemathesis=={VERSION}");
    if crate::toolchain::venv_install(&venv, &spec, 600) && st.exists() {
        Ok(Some(st))
    } else {
        crate::may_skip_toolchain("the schemathesis checks of the bifromq plugin")?;
        Ok(None)
    }
}

/// Runs the two schemathesis passes against a broker serving the plugin.
pub fn bifromq(root: &Path) -> Result<()> {
    let Some(st) = install(root)? else {
        return Ok(());
    };
    let dir = root.join("target/schemathesis-run");
    let _ = std::fs::remove_dir_all(&dir);
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::fs::copy(
        root.join("target/plugins/bifromq.wasm"),
        plugins.join("bifromq.wasm"),
    )
    .context("target/plugins/bifromq.wasm (cargo xtask plugins builds it)")?;
    let toml = std::fs::read_to_string(root.join("plugins/bifromq/bifromq.toml"))?
        .replace("0.0.0.0:8091", &format!("127.0.0.1:{port}"));
    std::fs::write(plugins.join("bifromq.toml"), toml)?;
    std::fs::write(dir.join("keys"), "st:st-secret:admin:tenant=*\n")?;
    // No login throttle: schemathesis sends bad credentials on purpose (ignored_auth).
    let cfg = dir.join("apiary.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nplugins_dir = {:?}\napi_keys_file = {:?}\nsys_interval_secs = 0\n[listeners]\ntcp = \"127.0.0.1:0\"\n[http]\nmax_auth_failures = 0\n",
            dir.join("data"),
            plugins,
            dir.join("keys")
        ),
    )?;
    let mut broker = Command::new(root.join("target/debug/apiary"))
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting target/debug/apiary (cargo test builds it)")?;
    let r = wait_and_run(&mut broker, &st, root, &dir, port);
    let _ = broker.kill();
    let _ = broker.wait();
    r
}

/// Waits for the plugin's listener, then runs both passes from `dir` (schemathesis keeps
/// its cache of failures in its working directory: under target/, not in the checkout).
fn wait_and_run(
    broker: &mut std::process::Child,
    st: &Path,
    root: &Path,
    dir: &Path,
    port: u16,
) -> Result<()> {
    let out = broker.stdout.take().context("broker stdout")?;
    let mut lines = BufReader::new(out).lines();
    loop {
        let Some(line) = lines.next() else {
            bail!("the broker ended before the bifromq plugin listened");
        };
        if line?.contains("plugin=bifromq") {
            break;
        }
    }
    // Keep draining the log so the broker never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let url = format!("http://127.0.0.1:{port}");
    for (doc, config) in [
        ("openapi.yaml", "schemathesis.toml"),
        ("bifromq-api-1.0.2.yaml", "schemathesis-1.0.2.toml"),
    ] {
        let spec = root.join("plugins/bifromq");
        crate::step(
            dir,
            &format!("schemathesis against the bifromq plugin with {doc}"),
            &st.display().to_string(),
            &[
                "--config-file",
                &spec.join(config).display().to_string(),
                "run",
                &spec.join(doc).display().to_string(),
                "--url",
                &url,
                "--auth",
                "st:st-secret",
                "--max-examples",
                EXAMPLES,
                "--seed",
                "1",
                "--no-color",
                "--report-dir",
                "report",
            ],
        )?;
    }
    Ok(())
}
