//! Runs `relay serve` as a real process for the end-to-end tests: a fresh data dir, loopback
//! port 0 (the banner names the port), only the RELAY_* variables a test gives, stdout
//! captured line by line so a test can wait for outbox lines. Every wait is bounded.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod crm;

use integration_tests::destination::Destination;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_relay");
/// Generous: a cold process on a loaded 2-core machine.
pub const START_DEADLINE: Duration = Duration::from_secs(120);
/// How long a test waits for forwards before it fails with what it saw.
pub const FORWARD_DEADLINE: Duration = Duration::from_secs(120);
/// The consumer's per-batch budget in tests: small, so that after a kill -9 the killed
/// process's claims (lease) and in-flight messages (6 × this) come back within seconds.
pub const BATCH_TIMEOUT: &str = "2s";
/// Consumer tasks of the relay under test (`relay serve --consumers`).
pub const CONSUMERS: usize = 4;

/// A data dir under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path =
            std::env::temp_dir().join(format!("relay-e2e-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct RelayProcess {
    child: Child,
    pub base: String,
    lines: Arc<Mutex<Vec<String>>>,
}

/// A `relay` command with a clean environment: no RELAY_* from the developer's shell.
pub fn relay_command(data_dir: &Path, env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("RELAY_") || key.starts_with("AWS_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RELAY_DATA_DIR", data_dir);
    cmd.env("RUST_LOG", "warn");
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd
}

impl RelayProcess {
    pub fn start(data_dir: &Path, env: &[(&str, String)]) -> Self {
        Self::start_with(data_dir, env, &["--batch-timeout", BATCH_TIMEOUT])
    }

    /// `relay serve` with these options after `--addr 127.0.0.1:0 --consumers CONSUMERS`.
    pub fn start_with(data_dir: &Path, env: &[(&str, String)], options: &[&str]) -> Self {
        let mut child = relay_command(data_dir, env)
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(["--consumers", &CONSUMERS.to_string()])
            .args(options)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("relay binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let mut process = RelayProcess {
            child,
            base: String::new(),
            lines,
        };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(line) = process
                .lines()
                .into_iter()
                .find(|l| l.starts_with("relay: listening on "))
            {
                process.base = line["relay: listening on ".len()..].trim().to_string();
                return process;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!(
                    "relay serve exited before listening: {status}; stdout: {:?}",
                    process.lines()
                );
            }
            assert!(
                Instant::now() < deadline,
                "relay serve did not start listening within {START_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn outbox_lines(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.starts_with("outbox "))
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// kill -9: no shutdown code runs, as in a power cut.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (bounded) for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_hard();
        false
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 25 ms until it returns `Some`, or panics after `deadline` with `what`.
pub async fn wait_for<T>(
    deadline: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs a one-shot `relay` command on the same data dir; returns (success, stdout, stderr).
pub fn run_relay(data_dir: &Path, env: &[(&str, String)], args: &[&str]) -> (bool, String, String) {
    let output = relay_command(data_dir, env)
        .args(args)
        .output()
        .expect("relay binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The repository's `events/` folder.
pub fn events_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events")
}

/// webhook-id -> how many times the destination answered it 2xx.
pub fn delivered_ids(destination: &Destination) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for r in destination.delivered() {
        *ids.entry(r.header("webhook-id").to_string()).or_insert(0) += 1;
    }
    ids
}

/// Waits (bounded) until every one of `ids` has been answered 2xx at the destination.
pub async fn wait_until_delivered(destination: &Destination, ids: &BTreeSet<String>) {
    wait_for(
        FORWARD_DEADLINE,
        "every accepted event at the destination",
        || {
            let seen = delivered_ids(destination);
            ids.iter().all(|id| seen.contains_key(id)).then_some(())
        },
    )
    .await;
}

/// How Bitrix24 posts its events.
pub const FORM: &str = "application/x-www-form-urlencoded";

/// Unix seconds now, for events' `ts`.
pub fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// One POST to the relay: its status and its JSON answer (null when there is none).
pub async fn post(url: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("relay answers");
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}
