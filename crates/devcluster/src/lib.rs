//! Throwaway PostgreSQL clusters (for the test run and `cargo xtask cluster`) and HAProxy in front of server
//! instances — Debian's packages, installed with apt when missing and running as root.
//!
//! PostgreSQL refuses to run as root: the cluster is initialised and run as the `postgres` user (`runuser`) in a
//! temporary directory under `target/`, on a free port, and stopped when its guard drops — also when a test run
//! fails or panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

fn status(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("could not start {shown}"))?;
    if !st.success() {
        bail!("{shown} failed with {st}");
    }
    Ok(())
}

/// Whether this process runs as root (may install packages and switch to the `postgres` user).
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Whether PostgreSQL and HAProxy are installed.
pub fn installed() -> bool {
    pg_bin().is_some() && Path::new(HAPROXY).exists()
}

const HAPROXY: &str = "/usr/sbin/haproxy";

/// Installs PostgreSQL and HAProxy with apt when they are missing (root only; otherwise says what to run).
pub fn ensure_packages() -> Result<()> {
    if installed() {
        return Ok(());
    }
    apt_install(&["postgresql", "haproxy"], "PostgreSQL or HAProxy")
}

/// Installs Debian packages with apt (`what` says what is missing); when not root, says what to run instead.
pub fn apt_install(packages: &[&str], what: &str) -> Result<()> {
    let list = packages.join(" ");
    if !is_root() {
        bail!("{what} is missing: run `sudo apt-get install -y {list}`, then try again");
    }
    println!("xtask: installing {list} with apt");
    status(Command::new("apt-get").arg("update"))?;
    status(Command::new("apt-get").args(["install", "-y"]).args(packages).env("DEBIAN_FRONTEND", "noninteractive"))
}

/// `/usr/lib/postgresql/<version>/bin`, the newest installed.
fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort();
    let bin = PathBuf::from(format!("/usr/lib/postgresql/{}/bin", versions.last()?));
    bin.join("initdb").exists().then_some(bin)
}

/// A free loopback port (bind, read, release).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running throwaway cluster; stopped (fast) on drop.
pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

impl Postgres {
    /// Initialises and starts a cluster under `parent`.
    pub fn start(parent: &Path) -> Result<Postgres> {
        let bin = pg_bin().context("PostgreSQL is not installed")?;
        std::fs::create_dir_all(parent)?;
        let dir = tempfile_dir(parent)?;
        status(Command::new("chown").arg("postgres").arg(&dir))?;
        let data = dir.join("data");
        let as_postgres = |program: &str| {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join(program));
            c
        };
        let quiet = |mut c: Command| -> Result<()> {
            let out = c.output()?;
            if !out.status.success() {
                bail!("{c:?} failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        let mut init = as_postgres("initdb");
        init.arg("-D").arg(&data).args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C.UTF-8"]);
        quiet(init)?;
        let port = free_port()?;
        let mut start = as_postgres("pg_ctl");
        start
            .arg("-D")
            .arg(&data)
            .arg("-o")
            // A test cluster: durability off (fsync, synchronous_commit) — it is thrown away; enough connections
            // for several instances' pools and the tests' own.
            // TCP only (no Unix socket: its path length is limited, and nothing here uses it).
            .arg(format!(
                "-p {port} -c unix_socket_directories='' -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400"
            ))
            .arg("-l")
            .arg(dir.join("log"))
            .args(["-w", "start"]);
        quiet(start)?;
        Ok(Postgres { dir, bin, port })
    }

    /// `postgres://postgres@127.0.0.1:<port>` (add `/<database>`).
    pub fn base_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Creates a database and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String> {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), name])
            .output()?;
        if !out.status.success() {
            bail!("createdb {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(format!("{}/{name}", self.base_url()))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tempfile_dir(parent: &Path) -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let stamp = format!("pg-{}-{nanos}", std::process::id());
    let dir = parent.join(stamp);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// HAProxy in front of `backends` (loopback ports), from `deploy/haproxy.cfg`; stopped on drop.
pub struct Haproxy {
    child: Child,
    pub port: u16,
}

impl Haproxy {
    /// Listens on `port` (loopback), config written to `dir`; `root` is the workspace (for the template).
    pub fn start(root: &Path, dir: &Path, port: u16, backends: &[u16]) -> Result<Haproxy> {
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, p)| format!("    server s{i} 127.0.0.1:{p} check inter 500ms fall 2 rise 1\n"))
            .collect();
        let template = std::fs::read_to_string(root.join("deploy").join("haproxy.cfg"))?;
        let config = template.replace("{{bind}}", &format!("127.0.0.1:{port}")).replace("{{servers}}", &servers);
        std::fs::create_dir_all(dir)?;
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config)?;
        let log = dir.join("haproxy.log");
        let mut child = Command::new(HAPROXY)
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting haproxy")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || child.try_wait()?.is_some() {
                let _ = child.kill();
                bail!("haproxy did not listen on {port}: {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Haproxy { child, port })
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
