//! Running the real `lbpath` binary inside a lab namespace and reading what
//! it prints.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The binary under test: `LBPATH_BIN` (set by `cargo xtask test`), else the
/// workspace's release build.
pub fn lbpath_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LBPATH_BIN") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/lbpath")
}

pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Finished {
    fn from(out: std::process::Output) -> Self {
        Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        }
    }
}

impl Finished {
    /// JSON lines that are flow reports.
    pub fn flows(&self) -> Vec<Value> {
        json_lines(&self.stdout)
            .into_iter()
            .filter(|v| v.get("flow").is_some())
            .collect()
    }
}

pub fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Runs `lbpath args…` in `ns` to completion.
pub fn run_once(ns: &str, args: &[&str], timeout: Duration) -> Result<Finished> {
    let r = Running::start_raw(ns, args)?;
    r.wait(timeout)
}

pub struct Running {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    /// When the process was started.
    started: Instant,
    /// When the first line holding `marker` came (either stream).
    marker: Option<String>,
    marked: Arc<Mutex<Option<Instant>>>,
}

fn pump(
    r: impl Read + Send + 'static,
    buf: Arc<Mutex<String>>,
    marker: Option<String>,
    marked: Arc<Mutex<Option<Instant>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if let Some(m) = &marker
                && line.contains(m.as_str())
            {
                marked
                    .lock()
                    .expect("not poisoned")
                    .get_or_insert_with(Instant::now);
            }
            let mut b = buf.lock().expect("not poisoned");
            b.push_str(&line);
            b.push('\n');
        }
    })
}

impl Running {
    fn start_raw(ns: &str, args: &[&str]) -> Result<Self> {
        Self::start_raw_env(ns, args, &[])
    }

    fn start_raw_env(ns: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(lbpath_bin())
            .args(args)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1");
        Self::spawn(cmd, None).context("starting lbpath")
    }

    /// Starts any command, its output collected; `marker` is a line to time
    /// (see [`Running::marked_after`]).
    pub fn spawn(mut cmd: Command, marker: Option<&str>) -> Result<Self> {
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        let (o, e) = (
            Arc::new(Mutex::new(String::new())),
            Arc::new(Mutex::new(String::new())),
        );
        let marker = marker.map(String::from);
        let marked = Arc::new(Mutex::new(None));
        let readers = vec![
            pump(
                child.stdout.take().expect("piped"),
                o.clone(),
                marker.clone(),
                marked.clone(),
            ),
            pump(
                child.stderr.take().expect("piped"),
                e.clone(),
                marker.clone(),
                marked.clone(),
            ),
        ];
        Ok(Self {
            child,
            stdout: o,
            stderr: e,
            readers,
            started,
            marker,
            marked,
        })
    }

    /// Starts a command and waits (up to `limit`) for a line holding
    /// `marker`; also returns how long after the start it came.
    pub fn spawn_until(cmd: Command, marker: &str, limit: Duration) -> Result<(Self, Duration)> {
        let mut r = Self::spawn(cmd, Some(marker))?;
        let end = Instant::now() + limit;
        loop {
            if let Some(d) = r.marked_after() {
                return Ok((r, d));
            }
            if let Some(status) = r.child.try_wait()? {
                bail!(
                    "exited ({status}) before printing {marker:?}: {}{}",
                    r.stdout(),
                    r.stderr()
                );
            }
            if Instant::now() > end {
                bail!(
                    "no {marker:?} within {limit:?}: {}{}",
                    r.stdout(),
                    r.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// How long after the start the marker line came, once it has.
    pub fn marked_after(&self) -> Option<Duration> {
        self.marker.as_ref()?;
        let at = (*self.marked.lock().expect("not poisoned"))?;
        Some(at.saturating_duration_since(self.started))
    }

    /// Starts `lbpath watch …` and waits until it is attached.
    pub fn watch(ns: &str, args: &[&str]) -> Result<Self> {
        let mut full = vec!["watch"];
        full.extend_from_slice(args);
        Self::start_until(ns, &full, "lbpath: watching")
    }

    /// Starts `lbpath diagnose …` and waits until its live window is open.
    pub fn diagnose(ns: &str, args: &[&str]) -> Result<Self> {
        let mut full = vec!["diagnose"];
        full.extend_from_slice(args);
        Self::start_until(ns, &full, "lbpath: diagnosing")
    }

    /// `diagnose` with extra environment.
    pub fn diagnose_env(ns: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let mut full = vec!["diagnose"];
        full.extend_from_slice(args);
        Self::start_until_env(ns, &full, "lbpath: diagnosing", env)
    }

    /// `watch` with extra environment (test knobs such as LBPATH_RING_KIB).
    pub fn watch_env(ns: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let mut full = vec!["watch"];
        full.extend_from_slice(args);
        Self::start_until_env(ns, &full, "lbpath: watching", env)
    }

    fn start_until(ns: &str, args: &[&str], marker: &str) -> Result<Self> {
        Self::start_until_env(ns, args, marker, &[])
    }

    fn start_until_env(
        ns: &str,
        args: &[&str],
        marker: &str,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut r = Self::start_raw_env(ns, args, env)?;
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if r.stderr().contains(marker) {
                return Ok(r);
            }
            if let Some(status) = r.child.try_wait()? {
                bail!("lbpath exited ({status}) before attaching: {}", r.stderr());
            }
            if Instant::now() > end {
                bail!("lbpath did not attach in time: {}", r.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The lbpath process (`ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("not poisoned").clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("not poisoned").clone()
    }

    /// Waits until a flow report satisfying `pred` is printed (JSON mode).
    /// The flow reports printed so far (`--json`).
    pub fn flows(&self) -> Vec<Value> {
        json_lines(&self.stdout())
            .into_iter()
            .filter(|v| v.get("flow").is_some())
            .collect()
    }

    pub fn wait_flow(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        crate::netns::wait_for(timeout, || {
            json_lines(&self.stdout())
                .into_iter()
                .find(|v| v.get("flow").is_some() && pred(v))
        })
    }

    /// SIGKILL: lbpath gets no chance to clean up.
    pub fn kill9(mut self) -> Result<Finished> {
        self.child.kill()?;
        self.wait_inner(Duration::from_secs(15))
    }

    /// Ctrl-C, then collect everything.
    pub fn stop(mut self) -> Result<Finished> {
        // SAFETY: signalling our own child (ip netns exec execs lbpath in place).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.wait_inner(Duration::from_secs(15))
    }

    pub fn wait(mut self, timeout: Duration) -> Result<Finished> {
        self.wait_inner(timeout)
    }

    fn wait_inner(&mut self, timeout: Duration) -> Result<Finished> {
        let end = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                break self.child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Ok(Finished {
            code: status.code(),
            stdout: self.stdout(),
            stderr: self.stderr(),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
