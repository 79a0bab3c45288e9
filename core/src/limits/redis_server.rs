//! A real `redis-server` on a free loopback port, for tests and benchmarks (features
//! `redis` and `test-util`).
//!
//! The server runs without persistence in a temporary directory and is killed when the
//! value is dropped. Where `redis-server` is not installed, [`RedisServer::start`] returns
//! `None` after saying so on stderr, except under CI (`CI` set), where a missing server is a
//! failure: CI installs it, so its absence there means the tests would silently not run.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process on 127.0.0.1.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    /// Start a server on a free port, or `None` (outside CI) when `redis-server` is missing.
    ///
    /// # Panics
    /// When the server cannot be started, or is missing under CI.
    pub fn start() -> Option<RedisServer> {
        RedisServer::start_with(&[])
    }

    /// [`start`](RedisServer::start) with more `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Option<RedisServer> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed, and CI must run the Redis tests (.ci/run installs it)"
            );
            eprintln!("SKIPPED: redis-server is not installed; the Redis tests did not run");
            return None;
        }
        // At most 55535: a cluster node also listens on its port + 10000.
        let port = (0..100)
            .filter_map(|_| {
                TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                    .and_then(|l| l.local_addr())
                    .ok()
            })
            .map(|a| a.port())
            .find(|&p| p <= 55_535)
            .expect("a free loopback port");
        let dir =
            std::env::temp_dir().join(format!("edgeward-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let mut s = RedisServer {
            port,
            dir,
            child: None,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        s.restart();
        Some(s)
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kill the server (abruptly, as a crash would) and wait until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start the server again on the same port (empty: nothing is persisted), waiting until
    /// it answers.
    ///
    /// # Panics
    /// When it does not answer within 10 seconds.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--loglevel", "warning", "--dir"])
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        self.ask(b"PING\r\n")
            .is_some_and(|r| r.starts_with("+PONG"))
    }

    /// Send one inline command and read what comes back in one read (enough for the short
    /// answers the helpers need).
    fn ask(&self, command: &[u8]) -> Option<String> {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        s.write_all(command).ok()?;
        let mut buf = vec![0u8; 8192];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters (no replicas) on loopback, each a [`RedisServer`].
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Start three cluster-enabled servers and join them with `redis-cli --cluster create`;
    /// `None` (outside CI) when `redis-server` is missing.
    ///
    /// # Panics
    /// When the cluster does not form within 20 seconds.
    pub fn start() -> Option<RedisCluster> {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
        ];
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(RedisServer::start_with(&args)?);
        }
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .expect("redis-cli runs");
        assert!(status.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes.iter().all(|n| {
            n.ask(b"CLUSTER INFO\r\n")
                .is_some_and(|r| r.contains("cluster_state:ok"))
        }) {
            assert!(Instant::now() < deadline, "the cluster did not form");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(RedisCluster { nodes })
    }

    /// The URL of each node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}
