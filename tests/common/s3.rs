//! S3 servers for tests, as real processes: storfs-s3d (this repository's
//! s3s server, with fault injection) and moto's S3 server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use storfs::backend::BackendStats;
use storfs::backend::s3::{S3Backend, S3Options};

/// Access key the tests' servers and daemons use (the servers accept any).
pub const ACCESS_KEY: &str = "storfs-test";
/// Secret of [`ACCESS_KEY`]; the tests check it never shows up in output.
pub const SECRET_KEY: &str = "storfs-test-secret-7f3a9c";

/// Lets `cmd` find the test credentials through the standard AWS chain
/// (the environment), as an operator's daemon would.
pub fn with_credentials(cmd: &mut Command) -> &mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true")
}

/// A running S3 server process with one bucket.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub bucket: String,
    port: u16,
}

impl S3Server {
    /// storfs-s3d on a free port, with `bucket` created.
    pub fn s3d(bucket: &str) -> S3Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_storfs-s3d"))
            .args(["--listen", "127.0.0.1:0", "--bucket", bucket])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start storfs-s3d");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("s3d address");
        let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("s3d said {line:?}"));
        let port = addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
        S3Server { child, endpoint: format!("http://{addr}"), bucket: bucket.into(), port }
    }

    /// moto's S3 server (`pip install 'moto[server]'`) on a free port, with
    /// `bucket` created.
    pub fn moto(bucket: &str) -> S3Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server is required (scripts/test.sh installs it with pip install 'moto[server]')");
        let s = S3Server { child, endpoint: format!("http://127.0.0.1:{port}"), bucket: bucket.into(), port };
        // The bucket creation doubles as the readiness check: a server
        // still starting refuses or drops the connection (status 0).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = s.http("PUT", &format!("/{bucket}"));
            if status == 200 {
                return s;
            }
            assert!(status == 0, "creating bucket {bucket} on moto: {status} {body}");
            assert!(Instant::now() < deadline, "moto_server not answering after 60 s: {body}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// One plain HTTP request; (status, body), status 0 when the server
    /// refused or dropped the connection.
    pub fn http(&self, method: &str, path: &str) -> (u16, String) {
        let mut c = match TcpStream::connect(("127.0.0.1", self.port)) {
            Ok(c) => c,
            Err(e) => return (0, e.to_string()),
        };
        c.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        write!(
            c,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("send");
        let mut resp = String::new();
        let _ = c.read_to_string(&mut resp);
        let status = resp.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    /// Switches storfs-s3d faults, e.g. "outage=1", "error_rate=0.2", "clear=1".
    pub fn fault(&self, query: &str) {
        let (status, body) = self.http("POST", &format!("/_fault?{query}"));
        assert_eq!(status, 200, "fault {query}: {body}");
    }

    /// storfs-s3d's request counters.
    pub fn stats(&self) -> serde_json::Value {
        let (status, body) = self.http("GET", "/_stats");
        assert_eq!(status, 200, "stats: {body}");
        let json = body.lines().last().unwrap_or_default();
        serde_json::from_str(json).unwrap_or_else(|e| panic!("stats {body:?}: {e}"))
    }

    /// An S3 backend on this server under `prefix`.
    pub fn backend(&self, prefix: &str) -> S3Backend {
        let mut o = S3Options::new(&self.bucket);
        o.endpoint = Some(self.endpoint.clone());
        o.path_style = true;
        o.prefix = prefix.into();
        o.request_timeout = Duration::from_secs(10);
        o.static_credentials = Some((ACCESS_KEY.into(), SECRET_KEY.into()));
        // Small parts, so the 40 MiB test object goes up in five of them.
        o.multipart_threshold = 16 << 20;
        o.part_size = 8 << 20;
        S3Backend::open(o, Arc::new(BackendStats::default())).expect("S3 backend")
    }

    /// The `[backend]` table for a daemon using this server.
    pub fn config(&self, prefix: &str) -> String {
        format!(
            "[backend]\nkind = \"s3\"\nbucket = \"{}\"\nprefix = \"{prefix}\"\nendpoint = \"{}\"\npath_style = true\nrequest_timeout = \"5s\"\n",
            self.bucket, self.endpoint
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
