//! The toolchains plugins are built with, installed by the xtask itself where they are
//! missing (each step says what it does): Rust for wasm32-wasip2, componentize-js for
//! JavaScript, and clang-22 + wasi-libc + `wit-bindgen c` for C.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// How Rust plugins get built for wasm32-wasip2.
#[derive(Clone)]
pub enum WasmRust {
    /// rustup's target for the project toolchain.
    Rustup,
    /// Debian's rustc-web with a std built for wasm32-wasip2 (../shared/toolchain.md).
    Sysroot {
        /// The sysroot to pass with `--sysroot`.
        sysroot: PathBuf,
    },
}

impl WasmRust {
    /// `cargo build` for a plugin, with the environment this toolchain needs.
    pub fn cargo(&self) -> Command {
        match self {
            WasmRust::Rustup => Command::new("cargo"),
            WasmRust::Sysroot { sysroot } => {
                let mut c = Command::new("/usr/bin/cargo");
                c.env("RUSTC", "/usr/bin/rustc").env(
                    "CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS",
                    format!("--sysroot={}", sysroot.display()),
                );
                c
            }
        }
    }
}

/// Makes sure Rust can build for wasm32-wasip2: rustup's target (bounded in time), or
/// else the Debian rustc-web fallback with a std built once and cached under target/.
pub fn ensure_wasm_target(root: &Path) -> Result<WasmRust> {
    // Lets the fallback path be exercised on a machine where rustup works.
    if std::env::var_os("APIARY_WASM_FALLBACK").is_some() {
        println!("==> APIARY_WASM_FALLBACK is set: using the rustc-web fallback");
        return fallback_sysroot(root);
    }
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32-wasip2"))
        .unwrap_or(false);
    if installed {
        return Ok(WasmRust::Rustup);
    }
    println!(
        "==> installing the wasm32-wasip2 target: rustup target add wasm32-wasip2 (2 min limit)"
    );
    let ok = Command::new("timeout")
        .args(["120", "rustup", "target", "add", "wasm32-wasip2"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        return Ok(WasmRust::Rustup);
    }
    println!("==> rustup could not install wasm32-wasip2; using Debian's rustc-web with a std built for it");
    fallback_sysroot(root)
}

/// `apt-get update` then `apt-get install` of Debian packages, bounded in time.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let _ = Command::new("timeout")
        .args(["300", "apt-get", "update", "-qq"])
        .status();
    run(
        &format!("apt-get install {}", packages.join(" ")),
        Command::new("timeout")
            .args([
                "600",
                "apt-get",
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
            ])
            .args(packages),
    )
}

fn run(what: &str, c: &mut Command) -> Result<()> {
    println!("==> {what}");
    let status = c.status().with_context(|| format!("starting: {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// The fallback of ../shared/toolchain.md: rustc-web 1.96 (which ships std's source),
/// wasm-component-ld, std built with -Zbuild-std, laid out as a sysroot.
fn fallback_sysroot(root: &Path) -> Result<WasmRust> {
    let sysroot = root.join("target/wasm-sysroot");
    if sysroot.join(".complete").exists() {
        return Ok(WasmRust::Sysroot { sysroot });
    }
    apt_install(&[
        "rustc-web",
        "cargo-web",
        "rust-web-src",
        "lld-22",
        "wasi-libc",
    ])?;
    let tools = root.join("target/wasm-tools");
    if !tools.join("bin/wasm-component-ld").exists() {
        run(
            "cargo install wasm-component-ld@0.5.21",
            Command::new("cargo")
                .args(["install", "--quiet", "--locked", "--root"])
                .arg(&tools)
                .arg("wasm-component-ld@0.5.21"),
        )?;
    }
    let std_build = root.join("target/wasm-std-build");
    std::fs::create_dir_all(std_build.join("src"))?;
    std::fs::write(
        std_build.join("Cargo.toml"),
        "[package]\nname = \"apiary_wasm_std\"\nversion = \"0.0.0\"\nedition = \"2021\"\n[workspace]\n",
    )?;
    std::fs::write(std_build.join("src/lib.rs"), "")?;
    run(
        "build std for wasm32-wasip2 (-Zbuild-std)",
        Command::new("/usr/bin/cargo")
            .current_dir(&std_build)
            .env("RUSTC", "/usr/bin/rustc")
            .env("RUSTC_BOOTSTRAP", "1")
            .args([
                "build",
                "--release",
                "-Zbuild-std=std,panic_abort",
                "--target",
                "wasm32-wasip2",
            ])
            .args([
                "--config",
                "target.wasm32-wasip2.rustflags=[\"-Cembed-bitcode=yes\"]",
            ]),
    )?;
    let lib = sysroot.join("lib/rustlib/wasm32-wasip2/lib");
    let own = lib.join("self-contained");
    let bin = sysroot.join("lib/rustlib/x86_64-unknown-linux-gnu/bin");
    for d in [&lib, &own, &bin] {
        std::fs::create_dir_all(d)?;
    }
    for e in std::fs::read_dir(std_build.join("target/wasm32-wasip2/release/deps"))?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".rlib") && !name.contains("apiary_wasm_std") {
            std::fs::copy(e.path(), lib.join(&name))?;
        }
    }
    for f in ["libc.a", "crt1-command.o", "crt1-reactor.o"] {
        std::fs::copy(Path::new("/usr/lib/wasm32-wasi").join(f), own.join(f))?;
    }
    std::fs::copy(
        tools.join("bin/wasm-component-ld"),
        bin.join("wasm-component-ld"),
    )?;
    let _ = std::fs::remove_file(bin.join("wasm-ld"));
    std::os::unix::fs::symlink("/usr/lib/llvm-22/bin/wasm-ld", bin.join("wasm-ld"))?;
    std::fs::write(sysroot.join(".complete"), "")?;
    Ok(WasmRust::Sysroot { sysroot })
}

/// componentize-js, installed under target/ once; None (with the reason printed) when
/// node or npm is missing or the install fails.
pub fn componentize_js(root: &Path) -> Option<PathBuf> {
    let prefix = root.join("target/js-toolchain");
    let entry = prefix.join("node_modules/@bytecodealliance/componentize-js/src/componentize.js");
    if entry.exists() {
        return Some(entry);
    }
    if !have_node() {
        println!("==> skipping JavaScript plugins: node and npm are not installed");
        return None;
    }
    println!("==> installing componentize-js 0.23.0 into target/js-toolchain (npm, 5 min limit)");
    let ok = npm_install(&prefix, &["@bytecodealliance/componentize-js@0.23.0"]);
    if ok && entry.exists() {
        Some(entry)
    } else {
        println!("==> skipping JavaScript plugins: npm could not install componentize-js");
        None
    }
}

/// componentize-py 0.25.1, in a virtualenv under target/ once; None (with the reason
/// printed) when python3 or pip cannot install it.
pub fn componentize_py(root: &Path) -> Option<PathBuf> {
    let venv = root.join("target/py-toolchain");
    let tool = venv.join("bin/componentize-py");
    if tool.exists() {
        return Some(tool);
    }
    println!("==> installing componentize-py 0.25.1 into target/py-toolchain (pip, 5 min limit)");
    if venv_install(&venv, "componentize-py==0.25.1", 300) && tool.exists() {
        Some(tool)
    } else {
        println!("==> skipping Python plugins: pip could not install componentize-py");
        None
    }
}

/// A virtualenv at `venv` with `package` pip-installed in it (within `secs`); whether it
/// worked.
pub fn venv_install(venv: &Path, package: &str, secs: u32) -> bool {
    Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("timeout")
            .arg(secs.to_string())
            .arg(venv.join("bin/pip"))
            .args(["install", "--quiet", package])
            .status()
            .is_ok_and(|s| s.success())
}

/// Whether node and npm can run.
fn have_node() -> bool {
    Command::new("node").arg("--version").output().is_ok()
        && Command::new("npm").arg("--version").output().is_ok()
}

/// `npm install` of `packages` under `prefix`, within 5 minutes; whether it worked.
fn npm_install(prefix: &Path, packages: &[&str]) -> bool {
    Command::new("timeout")
        .args([
            "300",
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            "--prefix",
        ])
        .arg(prefix)
        .args(packages)
        .status()
        .is_ok_and(|s| s.success())
}

/// The Node clients the stream tests drive the broker with: wscat (the Octave seed's
/// tool), socket.io-client 2.3.0 (Engine.IO v3, Beebotte's SDK) and 4.8.1, installed under
/// target/node-tools once; None (with the reason printed) when node or npm is missing or
/// the install fails.
pub fn node_tools(root: &Path) -> Option<PathBuf> {
    const PACKAGES: [&str; 4] = [
        "wscat@6.1.0",
        "sio2@npm:socket.io-client@2.3.0",
        "sio4@npm:socket.io-client@4.8.1",
        // Beebotte's official Node SDK (its socket.io-client 2.3.0 and mqtt 2.18.8 with it).
        "beebotte@1.7.0",
    ];
    let prefix = root.join("target/node-tools");
    let stamp = prefix.join(".installed");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == PACKAGES.join(" ")) {
        return Some(prefix);
    }
    if !have_node() {
        println!("==> installing nodejs and npm for the stream tests' clients (apt, 10 min limit)");
        let _ = apt_install(&["nodejs", "npm"]);
    }
    if !have_node() {
        println!("==> no node/npm: the wscat and socket.io client tests cannot run");
        return None;
    }
    println!(
        "==> installing {} into target/node-tools (npm, 5 min limit)",
        PACKAGES.join(", ")
    );
    let ok = npm_install(&prefix, &PACKAGES);
    if ok && std::fs::write(&stamp, PACKAGES.join(" ")).is_ok() {
        Some(prefix)
    } else {
        println!("==> npm could not install the node test clients");
        None
    }
}

/// Debian's Chromium and ChromeDriver for the dashboard's browser test, installed with
/// apt when missing; whether both are there.
pub fn chromium() -> bool {
    let have =
        || Path::new("/usr/bin/chromium").exists() && Path::new("/usr/bin/chromedriver").exists();
    if !have() {
        println!("==> installing chromium and chromium-driver for the dashboard test (apt, 10 min limit)");
        let _ = apt_install(&["chromium", "chromium-driver"]);
    }
    have()
}

/// Debian's NATS server for the cluster tests (which start and stop their own), installed
/// with apt when missing; whether it is there.
pub fn nats_server() -> bool {
    let have = || Path::new("/usr/sbin/nats-server").exists();
    if !have() {
        println!("==> installing nats-server for the cluster tests (apt, 10 min limit)");
        let _ = apt_install(&["nats-server"]);
    }
    have()
}

/// Beebotte's official Python SDK (PyPI `beebotte==0.5.0`) in a virtualenv under
/// `target/py-beebotte`, installing python3-venv when missing; its `python`, or None (with
/// the reason printed).
pub fn python_beebotte(root: &Path) -> Option<PathBuf> {
    const PACKAGE: &str = "beebotte==0.5.0";
    let venv = root.join("target/py-beebotte");
    let python = venv.join("bin/python");
    let stamp = venv.join(".installed");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == PACKAGE) {
        return Some(python);
    }
    let make_venv = || {
        let _ = std::fs::remove_dir_all(&venv);
        Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
    };
    println!(
        "==> installing {PACKAGE} into target/py-beebotte (python3 -m venv, pip, 5 min limit)"
    );
    if !make_venv() {
        println!("==> installing python3-venv (apt, 10 min limit)");
        let _ = apt_install(&["python3-venv"]);
        if !make_venv() {
            println!("==> python3 -m venv does not work: the Python SDK tests cannot run");
            return None;
        }
    }
    let ok = Command::new("timeout")
        .arg("300")
        .arg(venv.join("bin/pip"))
        .args(["install", "--quiet", PACKAGE])
        .status()
        .is_ok_and(|s| s.success());
    if ok && std::fs::write(&stamp, PACKAGE).is_ok() {
        Some(python)
    } else {
        println!("==> pip could not install {PACKAGE}");
        None
    }
}

/// The C toolchain (clang-22 + Debian's wasi-libc, `wit-bindgen c`, and the
/// wasm-component-ld rustup ships), installing what is missing; None (with the reason
/// printed) where that is not possible.
pub fn c_toolchain(root: &Path) -> Option<(PathBuf, PathBuf)> {
    let have_clang = || {
        Command::new("clang-22").arg("--version").output().is_ok()
            && Path::new("/usr/lib/wasm32-wasi/libc.a").exists()
    };
    if !have_clang() {
        println!(
            "==> installing clang-22, wasi-libc, libclang-rt-22-dev-wasm32, lld-22 for C plugins (apt, 10 min limit)"
        );
        let _ = apt_install(&[
            "clang-22",
            "wasi-libc",
            "libclang-rt-22-dev-wasm32",
            "lld-22",
        ]);
        if !have_clang() {
            println!("==> skipping C plugins: clang-22 with wasi-libc is not available");
            return None;
        }
    }
    let wit_bindgen = root.join("target/c-toolchain/bin/wit-bindgen");
    if !wit_bindgen.exists() {
        println!("==> installing wit-bindgen-cli 0.63.0 (C generator) into target/c-toolchain (cargo install)");
        let ok = Command::new("timeout")
            .args(["900", "cargo", "install", "--quiet", "--locked", "--root"])
            .arg(root.join("target/c-toolchain"))
            .args([
                "wit-bindgen-cli@0.63.0",
                "--no-default-features",
                "--features",
                "c",
            ])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok || !wit_bindgen.exists() {
            println!("==> skipping C plugins: cannot install wit-bindgen-cli");
            return None;
        }
    }
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let linker = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim())
        .join("lib/rustlib/x86_64-unknown-linux-gnu/bin/wasm-component-ld");
    if !linker.exists() {
        println!("==> skipping C plugins: the toolchain has no wasm-component-ld");
        return None;
    }
    Some((wit_bindgen, linker))
}

/// Free space under `dir` in GiB, read from `df` (None when it cannot be read).
fn free_gib(dir: &Path) -> Option<f64> {
    let out = Command::new("df").arg("-Pk").arg(dir).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let kib: f64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib / (1024.0 * 1024.0))
}

/// A cold `cargo xtask test` writes about 10 GiB under `target/`; a full disk shows up
/// late and obscurely (the linker dies with a bus error), so say it up front.
pub fn disk_check(root: &Path) {
    const NEEDED_GIB: f64 = 10.0;
    match free_gib(root) {
        Some(free) if free < NEEDED_GIB => println!(
            "==> warning: {free:.1} GiB free under {}; a cold test run needs about {NEEDED_GIB} GiB \
             (a full disk makes the linker fail with a bus error)",
            root.display()
        ),
        Some(free) => println!("==> disk: {free:.1} GiB free"),
        None => println!("==> disk: could not read the free space (df)"),
    }
}
