//! The schema fuzzer in the test command: Schemathesis against the OpenAPI document of a fresh server.
//!
//! Pinned versions (`crates/server/tests/schemathesis/requirements.txt`) in a virtual environment under
//! `target/tools/` (made once; `python3-venv` installed with apt when missing and we are root); the server binary
//! the test run just built, on a fresh SQLite file and a free loopback port; every phase (coverage, fuzzing,
//! stateful — the document's links lead from a created board to its columns, cards and members), every check,
//! one fixed seed, a bounded number of examples per operation. Zero failures required, and the server must still
//! answer afterwards. `hooks.py` signs requests in; `schemathesis.toml` says which refusals a valid request may get.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{KillOnDrop, output, status};

/// Examples per operation and phase: about two minutes on this 2-core machine with a debug server.
const MAX_EXAMPLES: &str = "300";
const SEED: &str = "1";
/// The whole run is stopped (and fails) after this.
const TIME_LIMIT: Duration = Duration::from_secs(600);

pub fn schemathesis(root: &Path) -> Result<()> {
    let started = Instant::now();
    let dir = root.join("crates").join("server").join("tests").join("schemathesis");
    let venv = ensure_venv(root, &dir.join("requirements.txt"))?;
    let server_bin = root.join("target").join("debug").join("syncline-server");
    if !server_bin.exists() {
        bail!("{} is missing: the test run builds it", server_bin.display());
    }
    let data = root.join("target").join("schemathesis");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    let port = syncline_devcluster::free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(data.join("server.log"))?;
    // The sign-in and write-rate limits are raised (the fuzzer signs up and writes from one address far faster
    // than people do; the limits have tests of their own) and long-polls cut to a second (it waits for each).
    let _server = KillOnDrop(
        Command::new(&server_bin)
            .arg("--db")
            .arg(data.join("fuzz.sqlite3"))
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(["--signin-attempts-per-address", "1000000", "--signin-attempts-per-account", "1000000"])
            .args(["--writes-per-second-per-user", "1000000", "--write-burst-per-user", "1000000"])
            .args(["--writes-per-second-per-address", "1000000", "--write-burst-per-address", "1000000"])
            .args(["--longpoll-max-wait-secs", "1"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("could not start the server for Schemathesis")?,
    );
    wait_until_healthy(port)?;
    let report = data.join("schemathesis.log");
    let mut run = KillOnDrop(
        Command::new(venv.join("bin").join("schemathesis"))
            // Run where its caches may be written (never the source tree).
            .current_dir(&data)
            .env("SYNCLINE_URL", &url)
            .env("SCHEMATHESIS_HOOKS", "hooks")
            .env("PYTHONPATH", &dir)
            .arg("--config-file")
            .arg(dir.join("schemathesis.toml"))
            .arg("run")
            .arg(format!("{url}/api/openapi.json"))
            .args(["--phases", "examples,coverage,fuzzing,stateful", "--checks", "all"])
            .args(["--seed", SEED, "--max-examples", MAX_EXAMPLES, "--workers", "1", "--no-color"])
            // No example database: every run generates the same requests from the seed, none replayed from before.
            .args(["--generation-database", "none"])
            // The WebSocket feed is not HTTP: its property test is crates/server/tests/feed_fuzz.rs.
            .args(["--exclude-path", "/api/feed"])
            .stdout(std::fs::File::create(&report)?)
            .stderr(Stdio::inherit())
            .spawn()
            .context("could not start Schemathesis")?,
    );
    let finished = loop {
        if let Some(st) = run.0.try_wait()? {
            break st;
        }
        if started.elapsed() > TIME_LIMIT {
            bail!("Schemathesis did not finish within {TIME_LIMIT:?}; see {}", report.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let summary: Vec<&str> = text.lines().skip_while(|l| !l.contains("SUMMARY")).collect();
    if !finished.success() {
        eprintln!("{text}");
        bail!("Schemathesis found failures (above; also in {})", report.display());
    }
    // The server must have lived through it.
    wait_until_healthy(port).context("the server stopped answering during the Schemathesis run")?;
    println!("{}", summary.join("\n"));
    println!(
        "xtask: Schemathesis passed in {:.0?} (seed {SEED}, {MAX_EXAMPLES} examples per operation)",
        started.elapsed()
    );
    Ok(())
}

/// The virtual environment with the pinned requirements, made when missing or when the requirements changed.
fn ensure_venv(root: &Path, requirements: &Path) -> Result<std::path::PathBuf> {
    let wanted = std::fs::read_to_string(requirements)?;
    let venv =
        root.join("target").join("tools").join(format!("schemathesis-{}", crate::web::hex_digest(wanted.as_bytes())));
    let stamp = venv.join("requirements.installed");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(venv);
    }
    let _ = std::fs::remove_dir_all(&venv);
    if output(Command::new("python3").args(["-m", "venv", "--help"])).is_none() {
        syncline_devcluster::apt_install(&["python3-venv"], "python3-venv (for Schemathesis)")?;
    }
    status(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    status(
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(requirements),
    )?;
    std::fs::write(&stamp, wanted)?;
    Ok(venv)
}

fn wait_until_healthy(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = format!("127.0.0.1:{port}");
    loop {
        if healthz(&addr).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("http://{addr}/healthz did not answer within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One `GET /healthz` over a plain socket (xtask has no HTTP client; this is the whole of what it needs).
fn healthz(addr: &str) -> Result<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    if !answer.starts_with("HTTP/1.1 200") {
        bail!("healthz answered {}", answer.lines().next().unwrap_or(""));
    }
    Ok(())
}
