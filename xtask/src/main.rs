//! The project's two commands, so a fresh clone needs nothing but cargo:
//! - `cargo xtask run [-- ARGS]`: build and start the broker with the embedded defaults;
//! - `cargo xtask test`: everything CI runs (format, lints, every test).
//!
//! Each step prints what it runs; any failure stops with a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("run") => run(&root, &args[1..]),
        Some("test") => test(&root),
        _ => {
            eprintln!(
                "usage:\n  cargo xtask run [-- apiary flags]   build and start the broker (embedded defaults)\n  \
                 cargo xtask test                    format check, clippy, all tests (what CI runs)"
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
fn step(root: &Path, what: &str, program: &str, args: &[&str]) -> Result<()> {
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

fn run(root: &Path, extra: &[String]) -> Result<()> {
    let extra: Vec<&str> = extra
        .iter()
        .map(String::as_str)
        .skip_while(|a| *a == "--")
        .collect();
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

fn test(root: &Path) -> Result<()> {
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
    let mut tally = Tally::default();
    let r = cargo_test(
        root,
        "tests (unit, integration, benchmarks in test mode)",
        &["--workspace", "--all-targets"],
        &mut tally,
    )
    .and_then(|()| cargo_test(root, "doc tests", &["--workspace", "--doc"], &mut tally));
    // One closing line over every test binary, for people and for CI.
    println!("xtask: {} passed, {} failed", tally.passed, tally.failed);
    r?;
    if tally.passed == 0 {
        bail!("no test ran");
    }
    println!("==> all checks passed");
    Ok(())
}
