//! The project's two commands, so a fresh clone needs nothing but cargo:
//! - `cargo xtask run [-- ARGS]`: build and start the broker with the embedded defaults;
//! - `cargo xtask test`: everything CI runs (format, lints, every test);
//! - `cargo xtask bench [--quick]`: Apiary against Mosquitto and rumqttd.
//!
//! Each step prints what it runs; any failure stops with a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

mod bench;
mod bench_report;
mod schemathesis;
mod toolchain;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    if std::env::var_os("CI").is_some() && std::env::var_os("CARGO_INCREMENTAL").is_none() {
        // A CI build is cold and used once: incremental caches would only cost disk
        // (about 1.3 GiB of a 10 GiB test run). Set before any thread starts.
        std::env::set_var("CARGO_INCREMENTAL", "0");
    }
    match args.first().map(String::as_str) {
        Some("run") => run(&root, &args[1..]),
        Some("test") => test(&root),
        Some("plugins") => plugins(&root, Scope::All).map(|_| ()),
        Some("bench") => bench::bench(&root, &args[1..]),
        Some("schemathesis") => {
            step(&root, "broker build", "cargo", &["build", "-p", "apiary"])?;
            plugins(&root, Scope::Stock)?;
            schemathesis::bifromq(&root)
        }
        _ => {
            eprintln!(
                "usage:\n  cargo xtask run [-- apiary flags]   build and start the broker (embedded defaults)\n  \
                 cargo xtask test                    format check, clippy, all tests (what CI runs)\n  \
                 cargo xtask plugins                 build every plugin under plugins/ into target/plugins/\n  \
                 cargo xtask bench [--quick]         Apiary vs Mosquitto vs rumqttd; writes target/bench/report.md\n  \
                 cargo xtask schemathesis            only the schemathesis checks of the bifromq plugin (part of test)"
            );
            bail!("unknown or missing xtask command")
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Runs a command in the workspace root, echoing it first.
pub(crate) fn step(root: &Path, what: &str, program: &str, args: &[&str]) -> Result<()> {
    println!("==> {what}: {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Builds a C plugin: bindings from the WIT `http-plugin` world, then clang with
/// wasm-component-ld turning the reactor module into a component.
fn build_c_plugin(
    root: &Path,
    dir: &Path,
    name: &str,
    tools: &(PathBuf, PathBuf),
    out: &Path,
) -> Result<()> {
    let gen = root.join(format!("target/c-build/{name}"));
    std::fs::create_dir_all(&gen)?;
    let (wit_bindgen, linker) = tools;
    println!("==> plugin {name} (C): wit-bindgen c + clang-22");
    let ok = Command::new(wit_bindgen)
        .args(["c", "--world", "http-plugin", "--out-dir"])
        .arg(&gen)
        .arg(root.join("wit"))
        .status()?
        .success();
    if !ok {
        bail!("wit-bindgen c failed for {name}");
    }
    let ok = Command::new("clang-22")
        .args([
            "--target=wasm32-wasi",
            "-Wno-deprecated",
            "--sysroot=/usr",
            "-mexec-model=reactor",
            "-O2",
        ])
        .arg("-I")
        .arg(&gen)
        .arg(dir.join("plugin.c"))
        .arg(gen.join("http_plugin.c"))
        .arg(gen.join("http_plugin_component_type.o"))
        .arg(format!("-fuse-ld={}", linker.display()))
        .arg("-Wl,--wasi-adapter=reactor")
        .arg("-o")
        .arg(out)
        .status()?
        .success();
    if !ok {
        bail!("clang failed for the C plugin {name}");
    }
    Ok(())
}

/// Builds a Python plugin (`app.py`) with componentize-py against the single-role world
/// its toml grants (`roles = ["message"]`: the `message-plugin` world).
fn build_py_plugin(
    root: &Path,
    dir: &Path,
    name: &str,
    componentize_py: &Path,
    out: &Path,
) -> Result<()> {
    let toml = std::fs::read_to_string(dir.join(format!("{name}.toml")))
        .with_context(|| format!("the Python plugin {name} needs its {name}.toml"))?;
    let roles: toml::Table = toml::from_str(&toml)?;
    let role = roles
        .get("roles")
        .and_then(|r| r.as_array())
        .filter(|r| r.len() == 1)
        .and_then(|r| r[0].as_str())
        .with_context(|| format!("{name}.toml must grant exactly one role"))?;
    let world = format!("{role}-plugin");
    println!("==> plugin {name} (Python): componentize-py -w {world}");
    let ok = Command::new(componentize_py)
        .arg("-d")
        .arg(root.join("wit"))
        .args(["-w", &world, "componentize", "app", "-p"])
        .arg(dir)
        .arg("-o")
        .arg(out)
        .status()?
        .success();
    if !ok {
        bail!("componentize-py failed for the Python plugin {name}");
    }
    Ok(())
}

/// Plugin crates: `plugins/*` (the stock set), `plugins/templates/*` (examples to copy)
/// and `plugins/testing/*` (test fixtures).
fn plugin_crates(root: &Path) -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    for (dir, stock) in [
        (root.join("plugins"), true),
        (root.join("plugins/templates"), false),
        (root.join("plugins/testing"), false),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut v: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.join("Cargo.toml").exists()
                    || p.join("build.mjs").exists()
                    || p.join("plugin.c").exists()
                    || p.join("app.py").exists()
            })
            .collect();
        v.sort();
        out.extend(v.into_iter().map(|p| (p, stock)));
    }
    out
}

/// Which plugins to build.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The stock set `run` serves.
    Stock,
    /// Every plugin, templates and test fixtures included (what `test` needs).
    All,
    /// The one plugin of this name (a benchmark's fixture).
    One(&'static str),
}

/// Whether a plugin whose toolchain cannot be had may be skipped: never in CI
/// (`CI=true`), elsewhere only when `APIARY_SKIP_MISSING_TOOLCHAINS=1` says so. Without
/// either, a missing toolchain fails the build, so a test run cannot pass by not
/// building (and so not testing) the JavaScript and C plugins.
pub(crate) fn may_skip_toolchain(what: &str) -> Result<()> {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    let allowed = std::env::var("APIARY_SKIP_MISSING_TOOLCHAINS").is_ok_and(|v| v == "1");
    if allowed && !ci {
        println!("==> skipping {what} (APIARY_SKIP_MISSING_TOOLCHAINS=1): its tests will skip too");
        return Ok(());
    }
    bail!(
        "cannot build {what}: its toolchain could not be installed (see above){}",
        if ci {
            ""
        } else {
            "; set APIARY_SKIP_MISSING_TOOLCHAINS=1 to skip it outside CI"
        }
    )
}

/// Builds the plugins of `scope` for wasm32-wasip2 (own target dir) into
/// `target/plugins/NAME.wasm` with its `NAME.toml` beside it. Returns the stock plugins'
/// names.
pub(crate) fn plugins(root: &Path, scope: Scope) -> Result<Vec<String>> {
    let rust = toolchain::ensure_wasm_target(root)?;
    let out = root.join("target/plugins");
    std::fs::create_dir_all(&out)?;
    let build_dir = root.join("target/plugins-build");
    let mut stock = Vec::new();
    let mut js_tool: Option<Option<PathBuf>> = None;
    let mut c_tool: Option<Option<(PathBuf, PathBuf)>> = None;
    let mut py_tool: Option<Option<PathBuf>> = None;
    for (dir, is_stock) in plugin_crates(root) {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("plugin dir name")?
            .to_string();
        match scope {
            Scope::Stock if !is_stock => continue,
            Scope::One(one) if one != name => continue,
            _ => {}
        }
        if dir.join("plugin.c").exists() {
            let tools = c_tool
                .get_or_insert_with(|| toolchain::c_toolchain(root))
                .clone();
            let Some(tools) = tools else {
                may_skip_toolchain(&format!("the C plugin {name}"))?;
                continue;
            };
            build_c_plugin(root, &dir, &name, &tools, &out.join(format!("{name}.wasm")))?;
        } else if dir.join("app.py").exists() {
            let tool = py_tool
                .get_or_insert_with(|| toolchain::componentize_py(root))
                .clone();
            let Some(cpy) = tool else {
                may_skip_toolchain(&format!("the Python plugin {name}"))?;
                continue;
            };
            build_py_plugin(root, &dir, &name, &cpy, &out.join(format!("{name}.wasm")))?;
        } else if dir.join("build.mjs").exists() {
            let tool = js_tool
                .get_or_insert_with(|| toolchain::componentize_js(root))
                .clone();
            let Some(entry) = tool else {
                may_skip_toolchain(&format!("the JavaScript plugin {name}"))?;
                continue;
            };
            let target = out.join(format!("{name}.wasm"));
            println!("==> plugin {name} (JavaScript): node build.mjs");
            let ok = Command::new("node")
                .arg(dir.join("build.mjs"))
                .arg(&target)
                .env("APIARY_COMPONENTIZE_JS", &entry)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                bail!("building the JavaScript plugin {name} failed");
            }
        } else {
            build_rust_plugin(root, &rust, &build_dir, &dir, &name, &out)?;
        }
        // Its toml beside it, as the plugins directory wants them.
        let toml = dir.join(format!("{name}.toml"));
        if toml.exists() {
            std::fs::copy(&toml, out.join(format!("{name}.toml")))?;
        }
        if is_stock {
            stock.push(name);
        }
    }
    Ok(stock)
}

/// Builds a Rust plugin crate for wasm32-wasip2 in `build_dir` into `out/NAME.wasm`.
fn build_rust_plugin(
    root: &Path,
    rust: &toolchain::WasmRust,
    build_dir: &Path,
    dir: &Path,
    name: &str,
    out: &Path,
) -> Result<()> {
    let manifest = dir.join("Cargo.toml");
    println!("==> plugin {name}: cargo build --release --target wasm32-wasip2");
    let status = rust
        .cargo()
        .current_dir(root)
        .args(["build", "--release", "--quiet", "--target", "wasm32-wasip2"])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(build_dir)
        .status()
        .context("starting cargo")?;
    if !status.success() {
        bail!("building the plugin {name} failed ({status})");
    }
    let artifact = build_dir.join(format!(
        "wasm32-wasip2/release/{}.wasm",
        name.replace('-', "_")
    ));
    std::fs::copy(&artifact, out.join(format!("{name}.wasm")))
        .with_context(|| format!("copying {}", artifact.display()))?;
    Ok(())
}

fn run(root: &Path, extra: &[String]) -> Result<()> {
    let extra: Vec<&str> = extra
        .iter()
        .map(String::as_str)
        .skip_while(|a| *a == "--")
        .collect();
    // The stock plugins (only: templates and test fixtures are not served, and their
    // toolchains are not needed to run), built fresh, served from plugins.d/.
    let stock = plugins(root, Scope::Stock)?;
    let dir = root.join("plugins.d");
    std::fs::create_dir_all(&dir)?;
    for name in stock {
        std::fs::copy(
            root.join(format!("target/plugins/{name}.wasm")),
            dir.join(format!("{name}.wasm")),
        )?;
        // An operator's edited toml (users, rules, grants) is theirs: only a missing one
        // is seeded from the stock default.
        let (from, to) = (
            root.join(format!("target/plugins/{name}.toml")),
            dir.join(format!("{name}.toml")),
        );
        if from.exists() && !to.exists() {
            std::fs::copy(&from, &to)?;
        } else if to.exists() {
            println!(
                "==> keeping {} (delete it to get the stock one)",
                to.display()
            );
        }
    }
    let mut args = vec!["run", "--release", "-p", "apiary", "--bin", "apiary", "--"];
    args.extend(extra);
    step(root, "build and start the broker", "cargo", &args)
}

/// Passed and failed counts from cargo test's `test result:` lines.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

/// Runs `cargo test ARGS`, echoing its output and adding up its result lines.
fn cargo_test(root: &Path, what: &str, args: &[&str], tally: &mut Tally) -> Result<()> {
    use std::io::{BufRead, BufReader};
    println!("==> {what}: cargo test {}", args.join(" "));
    let mut child = Command::new("cargo")
        .arg("test")
        .args(args)
        .current_dir(root)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let out = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(out).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(word))
                    .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
                    .unwrap_or(0)
            };
            tally.passed += count(" passed");
            tally.failed += count(" failed");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// The Rust plugins are crates of their own (outside the workspace): format-check and lint
/// each one natively, as the workspace is.
fn plugin_lints(root: &Path) -> Result<()> {
    let target = root.join("target/plugins-native").display().to_string();
    for (dir, _) in plugin_crates(root) {
        let manifest = dir.join("Cargo.toml");
        if !manifest.exists() {
            continue;
        }
        let m = manifest.display().to_string();
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("plugin");
        step(
            root,
            &format!("plugin {name} format check"),
            "cargo",
            &["fmt", "--manifest-path", &m, "--", "--check"],
        )?;
        step(
            root,
            &format!("plugin {name} lints"),
            "cargo",
            &[
                "clippy",
                "--manifest-path",
                &m,
                "--target-dir",
                &target,
                "--all-targets",
                "--quiet",
                "--",
                "-D",
                "warnings",
            ],
        )?;
    }
    Ok(())
}

/// Unit tests of the stock Rust plugins, run natively (their logic is plain Rust; the
/// WIT imports are never called by the tests).
fn plugin_unit_tests(root: &Path, tally: &mut Tally) -> Result<()> {
    let target = root.join("target/plugins-native");
    for (dir, stock) in plugin_crates(root) {
        let manifest = dir.join("Cargo.toml");
        if !stock || !manifest.exists() {
            continue;
        }
        let (m, t) = (manifest.display().to_string(), target.display().to_string());
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("plugin");
        cargo_test(
            root,
            &format!("plugin {name} unit tests"),
            &["--manifest-path", &m, "--target-dir", &t],
            tally,
        )?;
    }
    Ok(())
}

fn test(root: &Path) -> Result<()> {
    toolchain::disk_check(root);
    step(
        root,
        "format check",
        "cargo",
        &["fmt", "--all", "--", "--check"],
    )?;
    step(
        root,
        "lints",
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    plugin_lints(root)?;
    plugins(root, Scope::All)?;
    // No skipping these: without them the WebSocket and socket.io tests would test nothing.
    if toolchain::node_tools(root).is_none() {
        bail!("cannot install the Node stream clients (wscat, socket.io-client 2 and 4, beebotte): the stream tests need node and npm");
    }
    if toolchain::python_beebotte(root).is_none() {
        bail!("cannot install Beebotte's Python SDK (beebotte==0.5.0): the beebotte tests need it");
    }
    if !toolchain::chromium() {
        bail!("cannot install Debian's chromium and chromium-driver: the dashboard's browser test needs them");
    }
    if !toolchain::nats_server() {
        bail!("cannot install Debian's nats-server: the cluster tests need it");
    }
    let mut tally = Tally::default();
    let r = cargo_test(
        root,
        "tests (unit, integration, benchmarks in test mode)",
        &["--workspace", "--all-targets"],
        &mut tally,
    )
    .and_then(|()| cargo_test(root, "doc tests", &["--workspace", "--doc"], &mut tally))
    .and_then(|()| plugin_unit_tests(root, &mut tally))
    .and_then(|()| schemathesis::bifromq(root));
    // One closing line over every test binary, for people and for CI.
    println!("xtask: {} passed, {} failed", tally.passed, tally.failed);
    r?;
    if tally.passed == 0 {
        bail!("no test ran");
    }
    println!("==> all checks passed");
    Ok(())
}
