//! The control socket: one JSON request per connection, one JSON reply.
//!
//! ```text
//! → {"cmd":"fs_create","name":"projects"}\n
//! ← {"ok":true,"result":{...}}\n      or      {"ok":false,"error":"..."}\n
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;

/// A command for the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Counters and state.
    Status,
    /// Create a file system.
    FsCreate {
        /// Name.
        name: String,
    },
    /// List file systems.
    FsList,
    /// Delete a file system and its data.
    FsDelete {
        /// Name.
        name: String,
    },
    /// Create a block volume.
    VolumeCreate {
        /// Name.
        name: String,
        /// Size in bytes.
        size: u64,
        /// Block size in bytes.
        block_size: u32,
        /// Several hosts may attach it read-write.
        multi_attach: bool,
    },
    /// List volumes.
    VolumeList,
    /// Delete a volume and its data.
    VolumeDelete {
        /// Name.
        name: String,
    },
    /// Grow a volume.
    VolumeResize {
        /// Name.
        name: String,
        /// New size in bytes.
        size: u64,
    },
    /// Serve a file system at a local mountpoint through FUSE.
    Mount {
        /// Absolute mountpoint.
        mountpoint: PathBuf,
        /// File system name.
        fs: String,
    },
    /// Unmount a FUSE mount made by `Mount`.
    Umount {
        /// Absolute mountpoint.
        mountpoint: PathBuf,
        /// Detach even if files are open.
        lazy: bool,
    },
    /// Flush dirty data into packs and checkpoint the metadata.
    Flush,
    /// Run garbage collection now.
    Gc,
    /// Check consistency and read back every chunk.
    Fsck,
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// Whether the command succeeded.
    pub ok: bool,
    /// What went wrong, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Command output.
    #[serde(default)]
    pub result: serde_json::Value,
}

/// Handles one request.
pub type Handler = Arc<dyn Fn(Request) -> Result<serde_json::Value, String> + Send + Sync>;

/// Creates the socket, refusing to take over one a live daemon answers on.
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(format!("another storfs daemon is listening on {}", path.display()));
        }
        std::fs::remove_file(path).map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    // Control is for the daemon's own user (root for the system service).
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot set permissions on {}: {e}", path.display()))?;
    Ok(listener)
}

/// Accepts connections until the process ends, one thread per connection.
pub fn serve(listener: UnixListener, handler: Handler) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let handler = handler.clone();
        let spawned = std::thread::Builder::new().name("storfs-control".into()).spawn(move || answer(conn, handler));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a control thread");
        }
    }
}

fn answer(conn: UnixStream, handler: Handler) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut line = String::new();
    let read = BufReader::new((&conn).take(MAX_REQUEST)).read_line(&mut line);
    let response = match read {
        Err(e) => {
            Response { ok: false, error: Some(format!("cannot read request: {e}")), result: serde_json::Value::Null }
        }
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Err(e) => {
                Response { ok: false, error: Some(format!("malformed request: {e}")), result: serde_json::Value::Null }
            }
            Ok(req) => {
                tracing::debug!(?req, "control request");
                match handler(req) {
                    Ok(result) => Response { ok: true, error: None, result },
                    Err(e) => Response { ok: false, error: Some(e), result: serde_json::Value::Null },
                }
            }
        },
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    out.push(b'\n');
    let _ = (&conn).write_all(&out);
}

/// Sends one request to the daemon at `socket` and returns its result.
pub fn call(socket: &Path, req: &Request) -> Result<serde_json::Value, String> {
    let conn = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "no storfs daemon at {} (is `storfs serve` running? --socket or STORFS_SOCKET point elsewhere)",
            socket.display()
        ),
        std::io::ErrorKind::ConnectionRefused => {
            format!("the storfs daemon is not running (stale socket {})", socket.display())
        }
        std::io::ErrorKind::PermissionDenied => {
            format!("permission denied on {} (the daemon's control socket is for its own user)", socket.display())
        }
        _ => format!("cannot reach the daemon at {}: {e}", socket.display()),
    })?;
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    (&conn).write_all(&line).map_err(|e| format!("cannot send to the daemon: {e}"))?;
    let mut reply = String::new();
    BufReader::new(&conn).read_line(&mut reply).map_err(|e| format!("no answer from the daemon: {e}"))?;
    if reply.is_empty() {
        return Err("the daemon closed the connection without answering".into());
    }
    let r: Response = serde_json::from_str(&reply).map_err(|e| format!("unreadable answer from the daemon: {e}"))?;
    if r.ok { Ok(r.result) } else { Err(r.error.unwrap_or_else(|| "the daemon reported an unknown error".into())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_malformed_requests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("s.sock");
        let listener = bind(&sock).expect("bind");
        assert!(bind(&sock).is_err(), "a live socket is not taken over");
        let handler: Handler = Arc::new(|req| match req {
            Request::FsCreate { name } if name == "bad" => Err("no".into()),
            other => Ok(serde_json::to_value(other).expect("json")),
        });
        std::thread::spawn(move || serve(listener, handler));
        let r = call(&sock, &Request::FsCreate { name: "x".into() }).expect("call");
        assert_eq!(r["name"], "x");
        assert_eq!(call(&sock, &Request::FsCreate { name: "bad".into() }), Err("no".into()));
        let mut conn = UnixStream::connect(&sock).expect("connect");
        conn.write_all(b"{\"cmd\":\"launch_missiles\"}\n").expect("write");
        let mut reply = String::new();
        BufReader::new(&conn).read_line(&mut reply).expect("read");
        assert!(reply.contains("malformed request"), "{reply}");
        let mut conn = UnixStream::connect(&sock).expect("connect");
        conn.write_all(&vec![b'x'; 100_000]).expect("write");
        let mut reply = String::new();
        BufReader::new(&conn).read_line(&mut reply).expect("read");
        assert!(reply.contains("\"ok\":false"), "{reply}");
    }

    #[test]
    fn missing_daemon_is_a_clear_error() {
        let e = call(Path::new("/nonexistent/storfs.sock"), &Request::Status).expect_err("no daemon");
        assert!(e.contains("no storfs daemon at /nonexistent/storfs.sock"), "{e}");
    }
}
