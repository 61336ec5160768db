//! A throwaway PostgreSQL cluster, started and stopped the way `scripts/test.sh` does it.

use std::path::PathBuf;
use std::process::Command;

/// Where the benchmark's database lives.
pub enum Server {
    /// `DATABASE_URL`, as given.
    External(String),
    /// A cluster this run started; stopped when dropped.
    Throwaway(Cluster),
}

impl Server {
    pub fn url(&self) -> &str {
        match self {
            Server::External(url) => url,
            Server::Throwaway(cluster) => &cluster.url,
        }
    }
}

pub struct Cluster {
    bindir: PathBuf,
    dir: PathBuf,
    url: String,
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program args…`, as the `postgres` OS user when running as root (PostgreSQL refuses root).
fn as_postgres(program: PathBuf) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl Cluster {
    pub fn start() -> Result<Cluster, String> {
        let bindir = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .map_err(|e| {
                format!("pg_config not found ({e}); install postgresql or set DATABASE_URL")
            })?;
        let bindir = PathBuf::from(String::from_utf8_lossy(&bindir.stdout).trim());
        let dir = std::env::temp_dir().join(format!("keel-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        if is_root() {
            run(Command::new("chown").args(["postgres:postgres"]).arg(&dir))?;
        }
        let data = dir.join("data");
        run(as_postgres(bindir.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ]))?;
        let sock = dir.join("sock");
        run(as_postgres(PathBuf::from("mkdir")).arg(&sock))?;
        let port = free_port()?;
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=200",
            sock.display()
        );
        run(as_postgres(bindir.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("server.log"))
            .args(["-w", "-t", "30", "-o", &options, "start"]))?;
        Ok(Cluster {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            bindir,
            dir,
        })
    }
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = run(as_postgres(self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"]));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
