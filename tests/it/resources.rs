//! What a connection costs while it waits, and what happens at the limits
//! of the process: partial prefaces, descriptor exhaustion, the connection
//! cap. Measured on a `tollgate serve` child process, so other tests in this
//! binary do not count.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// User plus system CPU time the process `pid` has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): state is the
    // first, utime and stime the 12th and 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // Clock ticks are 1/100 s on Linux (USER_HZ).
    Duration::from_millis(ticks * 10)
}

/// CPU time `pid` uses during `window` of wall-clock time.
async fn cpu_over(pid: u32, window: Duration) -> Duration {
    let before = cpu_time(pid);
    tokio::time::sleep(window).await;
    cpu_time(pid) - before
}

/// A gateway config for a child process (JSON logs at `info`) with a token
/// file beside it; `limits` is inserted as the `limits:` block's body.
fn process_config(up: &Upstream, limits: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    let mut yaml = gateway_yaml(up.addr, "")
        .replace("level: warn", "level: info")
        .replace("header_read: 1s", "header_read: 30s")
        .replace("idle: 2s", "idle: 30s")
        .replace("refresh_interval: 200ms", "refresh_interval: 5s");
    if !limits.is_empty() {
        yaml.push_str(&format!("limits:\n{limits}"));
    }
    std::fs::write(&config, yaml).unwrap();
    std::fs::write(dir.path().join("tokens.yaml"), tokens_yaml()).unwrap();
    (dir, config)
}

async fn wait_ready(admin: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(admin, "/readyz", &[]).await.status != 200 {
        assert!(Instant::now() < deadline, "not ready after 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn partial_http2_prefaces_cost_no_cpu_while_they_wait_and_can_still_complete() {
    let up = Upstream::start().await;
    let (_dir, config) = process_config(&up, "");
    let served = serve_process(&config);
    wait_ready(served.admin.unwrap()).await;

    let mut waiting = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(served.addr).await.unwrap();
        s.write_all(&tollgate::server::preface::PREFACE[..5])
            .await
            .unwrap();
        waiting.push(s);
    }
    // One whole request answered after them: the accept queue is first in,
    // first out, so every waiting connection has been accepted by now.
    assert_eq!(
        get(served.addr, "/api/v1/x", &[&bearer(AGENT)])
            .await
            .status,
        200
    );
    let used = cpu_over(served.child.id(), Duration::from_secs(1)).await;
    // Polling each of them every millisecond took most of a core; waiting
    // on their sockets takes nothing measurable. The bound leaves room for
    // a loaded test machine.
    assert!(
        used < Duration::from_millis(100),
        "300 partial prefaces used {used:?} of CPU in 1 s"
    );

    // A waiting connection completes its preface and speaks HTTP/2.
    let s = &mut waiting[0];
    s.write_all(&tollgate::server::preface::PREFACE[5..])
        .await
        .unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut frame))
        .await
        .expect("a SETTINGS frame within 5 s")
        .unwrap();
    assert_eq!(frame[3], 4, "the server's first frame is SETTINGS");
}
