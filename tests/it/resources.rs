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

/// How many descriptors the process `pid` has open.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test]
async fn out_of_descriptors_the_admin_listener_answers_at_once_and_nothing_spins() {
    let up = Upstream::start().await;
    let (_dir, config) = process_config(&up, "");
    let served = serve_process_with_nofile(&config, 64);
    let admin = served.admin.unwrap();
    wait_ready(admin).await;
    let pid = served.child.id();

    // Silent connections until the gateway holds every descriptor it may
    // (the rest wait in the backlog, and its accepts fail with EMFILE).
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(TcpStream::connect(served.addr).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_descriptors(pid) < 64 {
        assert!(
            Instant::now() < deadline,
            "only {} descriptors open",
            open_descriptors(pid)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let asked = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), get(admin, "/readyz", &[]))
        .await
        .expect("/readyz answers while the data listener is out of descriptors");
    assert_eq!(r.status, 200);
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(1), "/readyz took {took:?}");

    // A pending admin connection and a full data backlog cost no CPU: every
    // accept loop backs off instead of retrying at once.
    let pending = TcpStream::connect(admin).await.unwrap();
    let used = cpu_over(pid, Duration::from_secs(1)).await;
    assert!(
        used < Duration::from_millis(100),
        "out of descriptors, the gateway used {used:?} of CPU in 1 s"
    );
    drop(pending);
    // It says so, and not once per failed accept.
    let lines = served.log_count("cannot accept connections; backing off");
    assert!((1..=6).contains(&lines), "{lines} back-off lines");

    // Descriptors come back: the waiting connections are served.
    drop(held);
    assert_eq!(
        get(served.addr, "/api/v1/x", &[&bearer(AGENT)])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn beyond_max_connections_new_connections_wait_in_the_backlog_until_one_closes() {
    let (up, gw) = {
        let up = Upstream::start().await;
        let yaml = format!(
            "{}limits:\n  max_connections: 2\n",
            gateway_yaml(up.addr, "")
        );
        (up.clone(), Gw::start(&yaml, &tokens_yaml()).await)
    };
    let req = format!(
        "GET /api/v1/x HTTP/1.1\r\nHost: x\r\n{}\r\n\r\n",
        bearer(AGENT)
    );
    // Two kept-alive connections fill the cap.
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gw.addr()).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut s).await.status, 200);
        open.push(s);
    }
    // A third is not accepted: connected by the kernel, its request waits,
    // neither answered nor closed.
    let mut third = TcpStream::connect(gw.addr()).await.unwrap();
    third.write_all(req.as_bytes()).await.unwrap();
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), third.read(&mut byte))
            .await
            .is_err(),
        "the connection beyond the cap was answered or closed"
    );
    // The admin listener is not counted.
    assert_eq!(get(gw.admin(), "/readyz", &[]).await.status, 200);
    // One closes: the waiting one is accepted and answered, request intact.
    drop(open.remove(0));
    assert_eq!(read_response(&mut third).await.status, 200);
    assert_eq!(up.seen().len(), 3);
}
