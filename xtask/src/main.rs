//! `cargo xtask <command>`: the project's build orchestration, in Rust instead of shell scripts.
//!
//! - `run [server flags]`: installs what is missing, builds the web app, starts the server, prints the URL.
//! - `test`: installs what is missing, builds the web app, runs every test in one cargo selection.
//! - `bench feed [args]`: the feed fan-out benchmark (release builds; prints a table).
//! - `bench browser`: requests/min and change → DOM latency with 1, 4 and 8 tabs in a real Chromium.
//! - `chaos [--seed N] [--duration S]`: the chaos test (real Chromium, a server process killed with SIGKILL,
//!   offline periods, closed leaders, tab switches) with another seed or a longer run than the test command's.
//! - `cluster [--instances N]`: a throwaway PostgreSQL cluster, N server instances on it and HAProxy in front, on
//!   loopback; prints the URL and runs until Ctrl-C.
//! - `schemathesis`: only the schema fuzzer run of `test` (against the server binary the last test run built).
//! - `build-web`: only builds the web app into `target/dist`.
//!
//! "What is missing" on a fresh Debian machine: the wasm32 target, the wasm-bindgen CLI at the version in
//! Cargo.lock, Chromium (+ chromedriver), PostgreSQL and HAProxy from apt. Each step checks first, so running
//! again is cheap.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

mod fuzz;
mod web;

const WASM_TARGET: &str = "wasm32-unknown-unknown";
const WASM_PROFILE: &str = "wasm-release";
const CHROMIUM: &str = "/usr/bin/chromium";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    // `cargo xtask run -- --bind …` passes the `--` through; it only separates, so drop it.
    let rest: Vec<String> = args.skip_while(|a| a == "--").collect();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match command.as_str() {
        "run" => run(&root, &rest),
        "test" => test(&root, &rest),
        "bench" => bench(&rest),
        "chaos" => chaos(&root, &rest),
        "cluster" => cluster(&root, &rest),
        "schemathesis" => fuzz::schemathesis(&root),
        "build-web" => {
            ensure_wasm_tools(&root)?;
            build_web(&root).map(|_| ())
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <run [server flags] | test [cargo test args] | bench feed|browser|peers [args] | chaos [--seed N] [--duration S] | cluster [--instances N] | schemathesis | build-web>"
            );
            std::process::exit(2);
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn dist_dir(root: &Path) -> PathBuf {
    root.join("target").join("dist")
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn status(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("could not start {shown}"))?;
    if !st.success() {
        bail!("{shown} failed with {st}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(root: &Path, server_args: &[String]) -> Result<()> {
    ensure_wasm_tools(root)?;
    let dist = build_web(root)?;
    println!("xtask: starting the server (Ctrl-C stops it)");
    status(cargo().args(["run", "--package", "syncline-server", "--"]).arg("--static-dir").arg(&dist).args(server_args))
}

fn test(root: &Path, cargo_args: &[String]) -> Result<()> {
    let started = Instant::now();
    ensure_wasm_tools(root)?;
    ensure_chromium()?;
    syncline_devcluster::ensure_packages()?;
    lint()?;
    let dist = build_web(root)?;
    check_first_load_budget(&dist, FIRST_LOAD_BUDGET_BYTES)?;
    // A throwaway PostgreSQL cluster for this run: the cluster browser test creates its database there, and the
    // server's tests run on it a second time. Stopped when this function returns, on failure too.
    let postgres = syncline_devcluster::Postgres::start(&root.join("target").join("cluster"))?;
    println!("xtask: PostgreSQL for this run on port {}", postgres.port);
    // One selection for every test: the whole workspace but the wasm-only crates (the app and the browser
    // runtime, which the browser tests exercise). Changing this selection between runs costs a rebuild, so nothing else should differ.
    // One test at a time within each test binary: the browser tests each run a Chromium and a server, and
    // their bounds (failover < 1 s, live < 1 s after `online`) mean what they say only on an unloaded machine.
    // The simulation spreads its seeds over every core itself.
    status(
        cargo()
            .args(["test", "--workspace", "--exclude", "syncline-app", "--exclude", "syncline-web"])
            .args(cargo_args)
            .args(["--", "--test-threads=1"])
            .env("SYNCLINE_DIST_DIR", &dist)
            .env("SYNCLINE_CLUSTER_POSTGRES", postgres.base_url()),
    )?;
    // The schema fuzzer, against the server binary that run built.
    fuzz::schemathesis(root)?;
    println!("xtask: the server's tests again, on PostgreSQL");
    let on_sqlite = started.elapsed();
    // The same selection narrowed to the server's test targets (no feature re-resolution, so nothing is rebuilt;
    // `access` also names the browser access tests, which keep their SQLite file: they read it).
    status(
        cargo()
            .args(["test", "--workspace", "--exclude", "syncline-app", "--exclude", "syncline-web"])
            .args(["--test", "access", "--test", "feed", "--test", "http_api", "--test", "instances"])
            .args(cargo_args)
            .args(["--", "--test-threads=1"])
            .env("SYNCLINE_DIST_DIR", &dist)
            .env("SYNCLINE_TEST_POSTGRES", postgres.base_url()),
    )?;
    drop(postgres);
    println!(
        "xtask: all tests passed in {:.0?} (the server's tests on PostgreSQL: {:.0?})",
        started.elapsed(),
        started.elapsed() - on_sqlite
    );
    Ok(())
}

/// `cargo xtask cluster [--instances N]`: PostgreSQL, N release server instances sharing its database, HAProxy in
/// front, all on loopback and all stopped on Ctrl-C.
fn cluster(root: &Path, args: &[String]) -> Result<()> {
    let instances: usize = match args.iter().position(|a| a == "--instances") {
        Some(i) => {
            args.get(i + 1).context("--instances takes a number")?.parse().context("--instances takes a number")?
        }
        None => 3,
    };
    if instances == 0 {
        bail!("--instances must be at least 1");
    }
    ensure_wasm_tools(root)?;
    syncline_devcluster::ensure_packages()?;
    let dist = build_web(root)?;
    status(cargo().args(["build", "--release", "--package", "syncline-server"]))?;
    let dir = root.join("target").join("cluster");
    let postgres = syncline_devcluster::Postgres::start(&dir)?;
    let url = postgres.create_database("syncline")?;
    let lb_port = syncline_devcluster::free_port()?;
    let public = format!("http://127.0.0.1:{lb_port}");
    let mut children = Vec::new();
    let mut ports = Vec::new();
    for i in 0..instances {
        let port = syncline_devcluster::free_port()?;
        let child = Command::new(root.join("target").join("release").join("syncline-server"))
            .args(["--bind", &format!("127.0.0.1:{port}"), "--database-url", &url, "--public-origin", &public])
            .args(["--trusted-proxy", "127.0.0.1"])
            .arg("--static-dir")
            .arg(&dist)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .spawn()
            .with_context(|| format!("starting instance {i}"))?;
        children.push(KillOnDrop(child));
        ports.push(port);
    }
    for port in &ports {
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
            if Instant::now() > deadline {
                bail!("instance on port {port} did not come up");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let _haproxy = syncline_devcluster::Haproxy::start(root, &dir, lb_port, &ports)?;
    println!("xtask: PostgreSQL on 127.0.0.1:{} (database syncline)", postgres.port);
    for port in &ports {
        println!("xtask: instance on 127.0.0.1:{port}");
    }
    println!("xtask: syncline ({instances} instances behind HAProxy) at {public} (Ctrl-C stops everything)");
    // Wait for Ctrl-C or SIGTERM (a terminal's Ctrl-C reaches the instances and HAProxy too); then the guards stop
    // HAProxy, the instances and PostgreSQL, and remove the cluster's directory.
    let (tx, rx) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("installing the Ctrl-C handler")?;
    let _ = rx.recv();
    println!("xtask: stopping the cluster");
    Ok(())
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The house style and the lints: `cargo fmt --check` (style in rustfmt.toml) and clippy with warnings as errors,
/// for the host crates (with their tests) and the two wasm crates.
fn lint() -> Result<()> {
    let components = output(Command::new("rustup").args(["component", "list", "--installed"])).unwrap_or_default();
    for component in ["rustfmt", "clippy"] {
        if !components.lines().any(|l| l.starts_with(component)) {
            println!("xtask: adding the {component} component");
            status(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    status(cargo().args(["fmt", "--all", "--check"])).context("cargo fmt --check: run `cargo fmt`")?;
    status(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "syncline-app",
        "--exclude",
        "syncline-web",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    status(cargo().args([
        "clippy",
        "--package",
        "syncline-app",
        "--package",
        "syncline-web",
        "--target",
        WASM_TARGET,
        "--",
        "-D",
        "warnings",
    ]))
}

/// The chaos test alone, with a chosen seed and length (the test command runs seed 1 for 75 s).
fn chaos(root: &Path, args: &[String]) -> Result<()> {
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let seed = value("--seed").unwrap_or_else(|| "1".into());
    let secs = value("--duration").unwrap_or_else(|| "75".into());
    seed.parse::<u64>().context("--seed takes a number")?;
    secs.parse::<u64>().context("--duration takes seconds")?;
    ensure_wasm_tools(root)?;
    ensure_chromium()?;
    let dist = build_web(root)?;
    // The test command's selection, narrowed to one test target: no feature re-resolution, no rebuild.
    status(
        cargo()
            .args(["test", "--workspace", "--exclude", "syncline-app", "--exclude", "syncline-web", "--test", "chaos"])
            .args(["--", "--nocapture"])
            .env("SYNCLINE_DIST_DIR", &dist)
            .env("SYNCLINE_CHAOS_SEED", &seed)
            .env("SYNCLINE_CHAOS_SECS", &secs),
    )
}

fn bench(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("feed") => {
            status(cargo().args([
                "build",
                "--release",
                "--package",
                "syncline-server",
                "--package",
                "syncline-bench",
            ]))?;
            let release = workspace_root().join("target").join("release");
            status(
                Command::new(release.join("feed-bench"))
                    .arg("--server")
                    .arg(release.join("syncline-server"))
                    .args(&args[1..]),
            )
        }
        Some("browser") => {
            ensure_wasm_tools(&workspace_root())?;
            ensure_chromium()?;
            let dist = build_web(&workspace_root())?;
            status(
                cargo()
                    .args(["run", "--release", "--package", "syncline-e2e", "--bin", "browser-bench"])
                    .env("SYNCLINE_DIST_DIR", &dist),
            )
        }
        Some("peers") => bench_peers(&args[1..]),
        _ => {
            bail!(
                "usage: cargo xtask bench feed [--subscribers 1000,10000] [--rounds 20] [--backends sqlite,postgres] [--instances 1,3] [--writes 2000] [--concurrency 16] | cargo xtask bench browser | cargo xtask bench peers [--subscribers 1000,10000]"
            )
        }
    }
}

/// `cargo xtask bench peers`: syncline side by side with its peers in one run — in Chromium, the app against a
/// page kept fresh by TanStack Query v5 (same server, same board); on the server, the feed's fan-out against
/// socket.io 4 on Node. The peers are the npm packages pinned in `crates/bench/peers/package-lock.json`, installed
/// under `target/tools/` (Node and npm from apt when missing and root).
fn bench_peers(args: &[String]) -> Result<()> {
    let root = workspace_root();
    ensure_wasm_tools(&root)?;
    ensure_chromium()?;
    let dist = build_web(&root)?;
    let sources = root.join("crates").join("bench").join("peers");
    let lock = std::fs::read(sources.join("package-lock.json"))?;
    let tools = root.join("target").join("tools").join(format!("peers-{}", web::hex_digest(&lock)));
    if !tools.join("node_modules").join(".package-lock.json").exists() {
        if output(Command::new("npm").arg("--version")).is_none() {
            syncline_devcluster::apt_install(&["nodejs", "npm"], "Node and npm (for the peers)")?;
        }
        std::fs::create_dir_all(&tools)?;
        for name in ["package.json", "package-lock.json"] {
            std::fs::copy(sources.join(name), tools.join(name))?;
        }
        status(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&tools))?;
    }
    // The socket.io server runs from the tools directory, where its packages are.
    std::fs::copy(sources.join("socketio-server.js"), tools.join("socketio-server.js"))?;
    // The app's files plus the TanStack page (bundled by esbuild), served by the same server.
    let peers_dist = root.join("target").join("peers-dist");
    let _ = std::fs::remove_dir_all(&peers_dist);
    web::copy_tree(&dist, &peers_dist)?;
    std::fs::create_dir_all(peers_dist.join("peers"))?;
    std::fs::copy(sources.join("tanstack.html"), peers_dist.join("peers").join("tanstack.html"))?;
    status(
        Command::new(tools.join("node_modules").join(".bin").join("esbuild"))
            .arg(sources.join("tanstack.js"))
            .args(["--bundle", "--minify", "--format=iife", "--target=es2020"])
            .arg(format!("--outfile={}", peers_dist.join("peers").join("tanstack.js").display()))
            .env("NODE_PATH", tools.join("node_modules")),
    )?;
    status(
        cargo()
            .args(["run", "--release", "--package", "syncline-e2e", "--bin", "browser-bench"])
            .env("SYNCLINE_DIST_DIR", &peers_dist)
            .env("BENCH_ONLY", "peers"),
    )?;
    status(cargo().args(["build", "--release", "--package", "syncline-server", "--package", "syncline-bench"]))?;
    let release = root.join("target").join("release");
    let subscribers = match args {
        [flag, counts, ..] if flag == "--subscribers" => counts.clone(),
        _ => "1000,10000".to_owned(),
    };
    status(
        Command::new(release.join("feed-bench"))
            .arg("--server")
            .arg(release.join("syncline-server"))
            .args(["--subscribers", &subscribers, "--rounds", "10", "--writes", "0"])
            .arg("--peer-socketio")
            .arg(tools.join("socketio-server.js")),
    )
}

/// wasm32 target and the wasm-bindgen CLI at exactly the version Cargo.lock uses.
fn ensure_wasm_tools(root: &Path) -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !installed.lines().any(|l| l.trim() == WASM_TARGET) {
        println!("xtask: adding the {WASM_TARGET} target");
        status(Command::new("rustup").args(["target", "add", WASM_TARGET]))?;
    }
    let wanted = locked_version(root, "wasm-bindgen")?;
    let have = output(Command::new(wasm_bindgen_path()).arg("--version")).unwrap_or_default();
    if have.split_whitespace().nth(1) != Some(wanted.as_str()) {
        println!("xtask: installing wasm-bindgen-cli {wanted} (once; about 3 minutes)");
        // No --locked: the CLI's own lock pins a crate version the registry here does not serve.
        status(cargo().args(["install", "wasm-bindgen-cli", "--version", &wanted, "--force"]))?;
    }
    Ok(())
}

fn wasm_bindgen_path() -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    let installed = cargo_home.join("bin").join("wasm-bindgen");
    if installed.exists() { installed } else { PathBuf::from("wasm-bindgen") }
}

/// The version of `package` recorded in Cargo.lock.
fn locked_version(root: &Path, package: &str) -> Result<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).context("reading Cargo.lock")?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{package}\"")
            && let Some(v) = lines.next().and_then(|l| l.trim().strip_prefix("version = "))
        {
            return Ok(v.trim_matches('"').to_owned());
        }
    }
    bail!("{package} is not in Cargo.lock")
}

/// Debian's Chromium and chromedriver, installed with apt when absent and we are root.
fn ensure_chromium() -> Result<()> {
    if Path::new(CHROMIUM).exists() {
        return Ok(());
    }
    syncline_devcluster::apt_install(&["chromium", "chromium-driver"], "Chromium")
}

/// Builds the app for wasm32, runs wasm-bindgen and wasm-opt, and lays out the static files for serving:
/// `index.html` at the top, everything else under `assets/<content hash>/` (served `immutable`: a new build is a
/// new directory), each file with precompressed `.br` and `.gz` siblings (served by content negotiation).
/// Returns the dist directory.
fn build_web(root: &Path) -> Result<PathBuf> {
    let started = Instant::now();
    status(cargo().args(["build", "--package", "syncline-app", "--target", WASM_TARGET, "--profile", WASM_PROFILE]))?;
    let wasm = root.join("target").join(WASM_TARGET).join(WASM_PROFILE).join("syncline_app.wasm");
    let staging = root.join("target").join("web-bindgen");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    status(
        Command::new(wasm_bindgen_path())
            .args(["--target", "web", "--no-typescript", "--out-dir"])
            .arg(&staging)
            .arg(&wasm),
    )?;
    let module = staging.join("syncline_app_bg.wasm");
    let bound = std::fs::metadata(&module)?.len();
    optimize_wasm(root, &module)?;
    let static_dir = root.join("crates").join("app").join("static");
    for name in ["boot.js", "style.css"] {
        std::fs::copy(static_dir.join(name), staging.join(name))?;
    }
    let hash = web::content_hash(&staging)?;
    let dist = dist_dir(root);
    // A fresh layout each build (old hashed directories would pile up otherwise).
    let _ = std::fs::remove_dir_all(&dist);
    let assets = dist.join("assets").join(&hash);
    web::copy_tree(&staging, &assets)?;
    let index =
        std::fs::read_to_string(static_dir.join("index.html"))?.replace("{{assets}}", &format!("/assets/{hash}"));
    std::fs::write(dist.join("index.html"), index)?;
    let compressed = web::precompress(&dist)?;
    let size = std::fs::metadata(assets.join("syncline_app_bg.wasm"))?.len();
    let br = std::fs::metadata(assets.join("syncline_app_bg.wasm.br"))?.len();
    println!(
        "xtask: web app built into {} in {:.0?} (wasm {} KiB from wasm-bindgen, {} KiB optimised, {} KiB brotli; {} files precompressed)",
        dist.display(),
        started.elapsed(),
        bound / 1024,
        size / 1024,
        br / 1024,
        compressed
    );
    Ok(dist)
}

/// The first load's budget, in bytes on the wire (brotli): what a first visit downloads may not grow past it
/// unnoticed. Issue 14's target is 250 KB; the app is at ~293 KiB (the wasm 282 KiB of it) — this is a ceiling
/// against regressions a little above that, to be lowered as the app shrinks, not the target.
const FIRST_LOAD_BUDGET_BYTES: u64 = 310_000;

fn check_first_load_budget(dist: &Path, budget: u64) -> Result<()> {
    let bytes = web::cold_load_bytes(dist)?;
    println!("xtask: a cold load is {} KiB on the wire (budget {} KiB)", bytes / 1024, budget / 1024);
    if bytes > budget {
        bail!(
            "a cold load is {bytes} bytes on the wire, over the budget of {budget} (FIRST_LOAD_BUDGET_BYTES in \
             xtask/src/main.rs): find what grew (`twiggy top` on target/web-bindgen/syncline_app_bg.wasm names \
             the biggest functions), or raise the budget on purpose"
        );
    }
    Ok(())
}

/// `wasm-opt -Oz` from the npm package `binaryen@132` (Debian's binaryen 108 breaks the module: see
/// TOOLCHAIN.md), installed under `target/tools/` with npm — which is installed with apt when missing and we are
/// root. The result is kept by the input's hash: an unchanged module is not optimised again (it takes ~20 s).
fn optimize_wasm(root: &Path, module: &Path) -> Result<()> {
    let tools = root.join("target").join("tools").join("binaryen");
    let wasm_opt = tools.join("node_modules").join(".bin").join("wasm-opt");
    if !wasm_opt.exists() {
        if output(Command::new("npm").arg("--version")).is_none() {
            syncline_devcluster::apt_install(&["nodejs", "npm"], "npm (for wasm-opt)")?;
        }
        std::fs::create_dir_all(&tools)?;
        status(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--prefix"])
                .arg(&tools)
                .arg("binaryen@132"),
        )?;
    }
    let input = std::fs::read(module)?;
    let key = web::hex_digest(&input);
    let cache = root.join("target").join("tools").join(format!("wasm-opt-{key}.wasm"));
    if !cache.exists() {
        // Clear older results: one is enough.
        for entry in std::fs::read_dir(root.join("target").join("tools"))? {
            let path = entry?.path();
            if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("wasm-opt-")) {
                let _ = std::fs::remove_file(path);
            }
        }
        let partial = cache.with_extension("partial");
        status(
            Command::new(&wasm_opt)
                .args(["-Oz", "--enable-bulk-memory", "--enable-nontrapping-float-to-int", "--enable-sign-ext"])
                .args(["--enable-mutable-globals", "--strip-debug", "--strip-producers"])
                .arg(module)
                .arg("-o")
                .arg(&partial),
        )?;
        std::fs::rename(&partial, &cache)?;
    }
    std::fs::copy(&cache, module)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_load_budget_counts_every_compressed_file_and_refuses_a_build_over_it() {
        let dist = std::env::temp_dir().join(format!("syncline-budget-{}", std::process::id()));
        let assets = dist.join("assets").join("0123abcd");
        std::fs::create_dir_all(&assets).unwrap();
        for (name, bytes) in [("app.wasm", 1000), ("app.wasm.br", 300), ("app.wasm.gz", 400), ("app.js.br", 50)] {
            std::fs::write(assets.join(name), vec![0u8; bytes]).unwrap();
        }
        std::fs::write(dist.join("index.html.br"), [0u8; 7]).unwrap();
        assert_eq!(web::cold_load_bytes(&dist).unwrap(), 357);
        assert!(check_first_load_budget(&dist, 357).is_ok());
        let err = check_first_load_budget(&dist, 356).unwrap_err().to_string();
        assert!(err.contains("357 bytes"), "{err}");
        std::fs::remove_dir_all(&dist).unwrap();
    }
}
