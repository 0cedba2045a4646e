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
    step(
        root,
        "tests (unit, integration, benchmarks in test mode)",
        "cargo",
        &["test", "--workspace", "--all-targets"],
    )?;
    step(
        root,
        "doc tests",
        "cargo",
        &["test", "--workspace", "--doc"],
    )?;
    println!("==> all checks passed");
    Ok(())
}
