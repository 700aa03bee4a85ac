//! A web server (nginx, Apache httpd) started by a test in its own temp directory, on a free
//! loopback port, with a throwaway TLS certificate; killed on drop. Used by the fronting tests.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// A running web server.
pub struct WebServer {
    child: Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// Its directory: `cert.pem`, `key.pem`, its config and logs.
    pub dir: tempfile::TempDir,
    /// Its error log, relative to `dir`.
    log: &'static str,
}

impl WebServer {
    /// Starts `name`: for each of up to 5 attempts, a fresh temp dir with `cert.pem` and `key.pem`
    /// (ECDSA P-256 for `localhost`; clients do not verify it) and a free port, then `command`
    /// (given the dir and the port; it writes its config) is spawned and waited for until the
    /// port accepts. `log` is the server's error log inside the dir, printed on failure.
    pub fn start(name: &str, log: &'static str, command: impl Fn(&Path, u16) -> Command) -> Self {
        for _attempt in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix(&format!("wlr-{name}"))
                .tempdir()
                .unwrap();
            let port = free_port();
            let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
            std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
            std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
            // Its own process group, so that drop ends the workers with the master.
            let child = command(dir.path(), port)
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut server = WebServer {
                child,
                port,
                dir,
                log,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break; // exited: the port was taken meanwhile, or a config error
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(pid) = i32::try_from(server.child.id()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let mut err = String::new();
            if let Some(mut e) = server.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            eprintln!("{name} did not start on {port}: {err}{}", server.log());
        }
        panic!("{name} did not start");
    }

    /// The server's error log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(self.log)).unwrap_or_default()
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        // The whole group: killing only the master would leave its workers running.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
