//! End to end: `temper report --serve` keeps answering while clients hold connections open
//! without sending anything (issue 23, part 3). Before, connections were served one at a time
//! with a 5 s read timeout each, so N idle connections delayed a request by ~5·N s. Now: with 16
//! idle and 4 half-sent connections open, `GET /` answers within 1 s; idle connections are
//! closed by the header timeout; connections over the bound (64) are answered 503 at once and
//! the server holds no more sockets than the bound; Ctrl-C stops it. Plain `std::net` clients.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use temper_e2e::Project;

/// `runner::html::serve::LIMITS.max_connections`.
const MAX_CONNECTIONS: usize = 64;
/// `runner::html::serve::LIMITS.header_timeout`.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// A `temper report --serve 127.0.0.1:0` child, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    /// Serves the report of a one-dataset recipe (nothing to build) with `--refresh 3`.
    fn start(p: &Project) -> Server {
        p.copy_from_repo("examples/data/corpus.jsonl", "data/corpus.jsonl");
        p.write(
            "one.kdl",
            "dataset corpus path=\"data/corpus.jsonl\" format=text\n",
        );
        let mut child = p
            .cmd(&[
                "report",
                "one.kdl",
                "--serve",
                "127.0.0.1:0",
                "--refresh",
                "3",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn temper report --serve");
        let addr = serving_address(&mut child);
        Server { child, addr }
    }

    /// Sockets the server process holds (its listener included), from `/proc/PID/fd`.
    fn sockets(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .expect("the server's /proc/PID/fd")
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|l| l.to_string_lossy().starts_with("socket:"))
            .count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// The `host:port` of the line `temper report --serve` prints once it listens.
pub fn serving_address(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the serving line");
    line.split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string()
}

/// Sends `request` to `addr` and reads the answer to its end (at most 5 s): (head, body).
fn exchange(addr: &str, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    if let Err(e) = s.read_to_string(&mut text) {
        panic!("no complete answer to {request:?} within 5 s ({e}); got {text:.200?}");
    }
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:.300?}"));
    (head.to_string(), body.to_string())
}

/// `GET path` against `addr`: (status line, body).
pub fn get(addr: &str, path: &str) -> (String, String) {
    let (head, body) = exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    );
    (head.lines().next().unwrap_or("").to_string(), body)
}

/// The `Content-Length` of a response's `head`.
fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no Content-Length in {head}"))
}

/// `n` connections to `addr` that send `sent` (maybe nothing) and then wait.
fn idle(addr: &str, n: usize, sent: &str) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect an idle client");
            s.write_all(sent.as_bytes()).unwrap();
            s
        })
        .collect()
}

/// Waits until the server closed every one of `conns` (EOF or reset), failing after `within`.
fn closed_by_the_server(conns: Vec<TcpStream>, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    for (i, mut s) in conns.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                // hyper answers a request whose headers time out with nothing, or with 408.
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("{what} #{i} still open after {within:?} ({e})"),
            }
        }
    }
}

#[test]
fn serve_answers_at_once_while_idle_clients_hold_connections_then_closes_them() {
    let p = Project::new();
    let server = Server::start(&p);
    let t0 = Instant::now();
    let silent = idle(&server.addr, 16, "");
    let half = idle(
        &server.addr,
        4,
        &format!("GET / HTTP/1.1\r\nHost: {}\r\n", server.addr),
    );
    // Let the server take them all before the request that must not wait behind them.
    std::thread::sleep(Duration::from_millis(300));

    let start = Instant::now();
    let (status, page) = get(&server.addr, "/?from=test");
    let took = start.elapsed();
    assert!(status.contains("200"), "{status}");
    assert!(
        took < Duration::from_secs(1),
        "GET / took {took:?} with 20 idle connections open"
    );
    assert!(page.contains(r#"<meta http-equiv="refresh" content="3">"#));
    assert_eq!(page.matches(r#"<g class="node "#).count(), 1, "one DAG box");

    // The other answers, while the idle clients are still there.
    let (head, body) = exchange(
        &server.addr,
        &format!("HEAD / HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(content_length(&head) > 1000, "{head}");
    assert!(body.is_empty(), "HEAD has no body: {body:.100}");
    assert!(
        head.to_ascii_lowercase()
            .contains("cache-control: no-store"),
        "{head}"
    );
    let (head, _) = exchange(
        &server.addr,
        &format!(
            "POST / HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
            server.addr
        ),
    );
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("allow: get, head"),
        "{head}"
    );
    let (missing, _) = get(&server.addr, "/favicon.ico");
    assert!(missing.contains("404"), "{missing}");

    // Idle clients cannot pile up: the header timeout closes them all.
    let within = (HEADER_TIMEOUT + Duration::from_secs(3)).saturating_sub(t0.elapsed());
    closed_by_the_server(silent, within, "silent connection");
    closed_by_the_server(half, Duration::from_secs(1), "half-sent request");

    // Ctrl-C still stops it.
    let mut server = server;
    assert_eq!(
        unsafe { libc::kill(server.child.id() as i32, libc::SIGINT) },
        0
    );
    let stop = Instant::now();
    while server.child.try_wait().expect("wait").is_none() {
        assert!(
            stop.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_answers_503_beyond_its_bound_and_frees_the_slots_of_idle_clients() {
    let p = Project::new();
    let server = Server::start(&p);
    let t0 = Instant::now();
    let held = idle(&server.addr, MAX_CONNECTIONS, "");
    std::thread::sleep(Duration::from_millis(300));

    // Over the bound: answered at once, and closed.
    let start = Instant::now();
    for _ in 0..16 {
        let (head, body) = exchange(&server.addr, "");
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        assert!(body.contains("busy"), "{body}");
        assert_eq!(content_length(&head), body.len(), "{head}");
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "16 answers over the bound took {took:?}"
    );
    // No unbounded work: the bound's connections and the listener, no more.
    let sockets = server.sockets();
    assert!(
        sockets <= MAX_CONNECTIONS + 1,
        "the server holds {sockets} sockets (bound {MAX_CONNECTIONS} + the listener)"
    );

    // Once the idle clients time out, their slots serve again.
    let within = (HEADER_TIMEOUT + Duration::from_secs(3)).saturating_sub(t0.elapsed());
    closed_by_the_server(held, within, "idle connection");
    let start = Instant::now();
    let (status, page) = get(&server.addr, "/");
    assert!(status.contains("200"), "{status}");
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(page.matches(r#"<g class="node "#).count(), 1);
}
