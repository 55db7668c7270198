//! The control socket: one JSON request per connection, one JSON reply.
//!
//! ```text
//! → {"cmd":"fs_create","name":"projects"}\n
//! ← {"ok":true,"result":{...}}\n      or      {"ok":false,"error":"..."}\n
//! ```
//!
//! Bounds: connections are tasks on the network runtime while their
//! request arrives, which must be whole within [`REQUEST_DEADLINE`]; at
//! most [`MAX_READING`] may be arriving at once, and a new connection
//! beyond that closes the one that has been arriving longest, so idle or
//! trickling connections can never keep a real request out. Requests run
//! on their own threads, [`MAX_RUNNING`] at once.

use std::io::{BufRead, BufReader, Read, Write};

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

use serde::{Deserialize, Serialize};

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;
/// Connections whose request is still arriving, at most.
pub const MAX_READING: usize = 1024;
/// Requests running at once; more wait their turn.
pub const MAX_RUNNING: usize = 16;
/// The whole request line must arrive within this.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// A command for the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Counters and state.
    Status,
    /// Create a file system (empty, or a clone of `from_snapshot`, "FS@SNAPSHOT").
    FsCreate {
        /// Name.
        name: String,
        /// Clone of this snapshot.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_snapshot: Option<String>,
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
        /// Clone of this snapshot ("VOLUME@SNAPSHOT"); `size` may grow it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_snapshot: Option<String>,
    },
    /// List volumes.
    VolumeList,
    /// Delete a volume and its data.
    VolumeDelete {
        /// Name.
        name: String,
    },
    /// End every NBD connection attached to a volume.
    VolumeDetach {
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
        /// Use the kernel's writeback cache; absent: `[fuse] writeback_cache`.
        #[serde(default)]
        writeback_cache: Option<bool>,
    },
    /// Unmount a FUSE mount made by `Mount`.
    Umount {
        /// Absolute mountpoint.
        mountpoint: PathBuf,
        /// Detach even if files are open.
        lazy: bool,
    },
    /// Take a snapshot of a volume or a file system.
    SnapshotCreate {
        /// The volume.
        #[serde(default)]
        volume: Option<String>,
        /// The file system.
        #[serde(default)]
        fs: Option<String>,
        /// Snapshot name.
        name: String,
    },
    /// List snapshots (all, or of one volume or file system).
    SnapshotList {
        /// The volume.
        #[serde(default)]
        volume: Option<String>,
        /// The file system.
        #[serde(default)]
        fs: Option<String>,
    },
    /// Delete a snapshot.
    SnapshotDelete {
        /// The volume.
        #[serde(default)]
        volume: Option<String>,
        /// The file system.
        #[serde(default)]
        fs: Option<String>,
        /// Snapshot name.
        name: String,
    },
    /// The blocks of a volume changed between two snapshots (or a snapshot and now).
    SnapshotDiff {
        /// The volume.
        volume: String,
        /// Earlier snapshot.
        from: String,
        /// Later snapshot; none: the live volume.
        #[serde(default)]
        to: Option<String>,
    },
    /// Stream a volume snapshot (or what changed since `from`): the reply is
    /// frames of stream bytes, then the JSON line.
    SnapshotExport {
        /// The volume.
        volume: String,
        /// Snapshot name.
        name: String,
        /// Earlier snapshot for an incremental stream.
        #[serde(default)]
        from: Option<String>,
    },
    /// Recreate a snapshot from a stream sent as frames after the request.
    SnapshotImport {
        /// The volume to create or apply to.
        volume: String,
    },
    /// Flush dirty data into packs and checkpoint the metadata.
    Flush,
    /// Every byte-range lock held and waited for, and the NFS clients kept
    /// for lock recovery.
    LocksList,
    /// Release every lock of a client (an NFS client's name or address, or
    /// `mount:N`).
    LocksRelease {
        /// The client.
        client: String,
    },
    /// Run garbage collection now.
    Gc,
    /// Start rewriting everything not sealed with the current key.
    Rekey,
    /// Where the last or running rekey pass is.
    RekeyStatus,
    /// Check consistency and read back every chunk.
    Fsck,
    /// Run a tiering pass now.
    TierRun {
        /// Only say what would move.
        #[serde(default)]
        dry_run: bool,
    },
    /// Bytes per storage class, and what the next pass would move.
    TierStatus,
    /// The month's bill so far and projected.
    Cost,
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

/// Handles one request. The channel carries the stream of a streaming
/// request (export writes to it, import reads from it).
pub type Handler = Arc<dyn Fn(Request, &mut Channel) -> Result<serde_json::Value, String> + Send + Sync>;

/// Stream bytes of a streaming request, framed on the connection: frames
/// of `len:u32` and bytes, a zero length ending the stream.
pub struct Channel {
    conn: Option<UnixStream>,
    leftover: std::collections::VecDeque<u8>,
    frame_left: usize,
    ended: bool,
}

impl Channel {
    fn new(conn: Option<UnixStream>, leftover: Vec<u8>) -> Channel {
        Channel { conn, leftover: leftover.into(), frame_left: 0, ended: false }
    }

    fn raw_read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.leftover.is_empty() {
            let n = buf.len().min(self.leftover.len());
            for (i, b) in self.leftover.drain(..n).enumerate() {
                buf[i] = b;
            }
            return Ok(n);
        }
        match &mut self.conn {
            Some(c) => c.read(buf),
            None => Ok(0),
        }
    }

    fn raw_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        let mut at = 0;
        while at < buf.len() {
            let n = self.raw_read(&mut buf[at..])?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            at += n;
        }
        Ok(())
    }

    /// Reads what is left of an incoming stream (so the reply can be sent).
    pub fn drain(&mut self) {
        let mut sink = [0u8; 65536];
        while let Ok(n) = std::io::Read::read(self, &mut sink) {
            if n == 0 {
                break;
            }
        }
    }
}

impl std::io::Read for Channel {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.ended || buf.is_empty() {
            return Ok(0);
        }
        if self.frame_left == 0 {
            let mut len = [0u8; 4];
            self.raw_exact(&mut len)?;
            self.frame_left = u32::from_le_bytes(len) as usize;
            if self.frame_left == 0 {
                self.ended = true;
                return Ok(0);
            }
        }
        let want = buf.len().min(self.frame_left);
        let n = self.raw_read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.frame_left -= n;
        Ok(n)
    }
}

impl std::io::Write for Channel {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some(c) = &mut self.conn else { return Err(std::io::ErrorKind::BrokenPipe.into()) };
        let n = buf.len().min(1 << 20);
        if n == 0 {
            return Ok(0);
        }
        c.write_all(&(n as u32).to_le_bytes())?;
        c.write_all(&buf[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.conn {
            Some(c) => c.flush(),
            None => Ok(()),
        }
    }
}

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

/// Serves the socket until the runtime stops (see the module doc for the
/// bounds). `listener` must be the one [`bind`] made.
pub async fn serve(listener: UnixListener, handler: Handler) {
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!(error = %e, "control socket unusable");
        return;
    }
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "control socket unusable");
            return;
        }
    };
    let running = Arc::new(tokio::sync::Semaphore::new(MAX_RUNNING));
    // Connections still reading, oldest first, each with its stop flag.
    let reading: Arc<parking_lot::Mutex<std::collections::VecDeque<(u64, crate::net::Cancel)>>> = Arc::default();
    let mut next_id = 0u64;
    loop {
        let conn = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                tracing::warn!(error = %e, "control accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        next_id += 1;
        let id = next_id;
        let stop = crate::net::Cancel::default();
        {
            let mut r = reading.lock();
            if r.len() >= MAX_READING
                && let Some((_, oldest)) = r.pop_front()
            {
                oldest.cancel();
            }
            r.push_back((id, stop.clone()));
        }
        let (handler, running, reading) = (handler.clone(), running.clone(), reading.clone());
        tokio::spawn(async move {
            let req = tokio::select! {
                r = tokio::time::timeout(REQUEST_DEADLINE, read_request(conn)) => r,
                _ = stop.cancelled() => {
                    return;
                }
            };
            reading.lock().retain(|(i, _)| *i != id);
            if let Ok(Ok((conn, line, leftover))) = req {
                reply(conn, line, leftover, handler, running).await;
            }
        });
    }
}

/// Reads one connection's request and answers it, without the bounds
/// [`serve`] keeps across connections: the control protocol as the fuzzer
/// (fuzz/fuzz_targets/control.rs) drives it.
pub async fn answer_one(conn: tokio::net::UnixStream, handler: Handler) {
    let running = Arc::new(tokio::sync::Semaphore::new(1));
    if let Ok(Ok((conn, line, leftover))) = tokio::time::timeout(REQUEST_DEADLINE, read_request(conn)).await {
        reply(conn, line, leftover, handler, running).await;
    }
}

/// Runs the request that arrived (and any stream it carries) on a thread
/// of its own, once one of the `running` turns is free, and sends the
/// answer.
async fn reply(
    conn: tokio::net::UnixStream,
    line: Result<String, String>,
    leftover: Vec<u8>,
    handler: Handler,
    running: Arc<tokio::sync::Semaphore>,
) {
    let Ok(conn) = conn.into_std() else { return };
    let _ = conn.set_nonblocking(false);
    let Ok(_turn) = running.acquire_owned().await else { return };
    let _ = tokio::task::spawn_blocking(move || {
        let (response, streams_out) = match line {
            Err(e) => (Response { ok: false, error: Some(e), result: serde_json::Value::Null }, false),
            Ok(line) => respond(&line, &handler, conn.try_clone().ok(), leftover),
        };
        let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
        let mut conn = conn;
        if streams_out {
            let _ = conn.write_all(&0u32.to_le_bytes());
        }
        let _ = conn.write_all(&reply_line(&response));
    })
    .await;
}

fn reply_line(r: &Response) -> Vec<u8> {
    let mut out = serde_json::to_vec(r).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    out.push(b'\n');
    out
}

/// Reads one request line of at most [`MAX_REQUEST`] bytes, and returns
/// the bytes read past it (the start of a stream). The outer error: the
/// connection is gone; the inner one is the answer to give.
#[allow(clippy::type_complexity)]
async fn read_request(
    mut conn: tokio::net::UnixStream,
) -> std::io::Result<(tokio::net::UnixStream, Result<String, String>, Vec<u8>)> {
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    let mut leftover = Vec::new();
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        line.extend_from_slice(&buf[..n]);
        if let Some(end) = line.iter().position(|b| *b == b'\n') {
            leftover = line[end + 1..].to_vec();
            line.truncate(end);
            break;
        }
        if line.len() > MAX_REQUEST {
            let e = format!("request too long (the limit is {} KiB)", MAX_REQUEST / 1024);
            return Ok((conn, Err(e), Vec::new()));
        }
    }
    let line = String::from_utf8(line).map_err(|_| "malformed request: not UTF-8".to_string());
    Ok((conn, line, leftover))
}

/// Answers one request; the flag says the reply is a stream (frames, then
/// the JSON line).
fn respond(line: &str, handler: &Handler, conn: Option<UnixStream>, leftover: Vec<u8>) -> (Response, bool) {
    match serde_json::from_str::<Request>(line) {
        Err(e) => (
            Response { ok: false, error: Some(format!("malformed request: {e}")), result: serde_json::Value::Null },
            false,
        ),
        Ok(req) => {
            tracing::debug!(?req, "control request");
            let streams_out = matches!(req, Request::SnapshotExport { .. });
            let streams_in = matches!(req, Request::SnapshotImport { .. });
            let mut ch = Channel::new(if streams_out || streams_in { conn } else { None }, leftover);
            let r = handler(req, &mut ch);
            if streams_in {
                ch.drain();
            }
            let response = match r {
                Ok(result) => Response { ok: true, error: None, result },
                Err(e) => Response { ok: false, error: Some(e), result: serde_json::Value::Null },
            };
            (response, streams_out)
        }
    }
}

fn connect(socket: &Path) -> Result<UnixStream, String> {
    UnixStream::connect(socket).map_err(|e| match e.kind() {
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
    })
}

fn send_request(conn: &UnixStream, req: &Request) -> Result<(), String> {
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    (&*conn).write_all(&line).map_err(|e| format!("cannot send to the daemon: {e}"))
}

fn read_response(r: &mut impl BufRead) -> Result<serde_json::Value, String> {
    let mut reply = String::new();
    r.read_line(&mut reply).map_err(|e| format!("no answer from the daemon: {e}"))?;
    if reply.is_empty() {
        return Err("the daemon closed the connection without answering".into());
    }
    let r: Response = serde_json::from_str(&reply).map_err(|e| format!("unreadable answer from the daemon: {e}"))?;
    if r.ok { Ok(r.result) } else { Err(r.error.unwrap_or_else(|| "the daemon reported an unknown error".into())) }
}

/// Sends one request to the daemon at `socket` and returns its result.
pub fn call(socket: &Path, req: &Request) -> Result<serde_json::Value, String> {
    let conn = connect(socket)?;
    send_request(&conn, req)?;
    read_response(&mut BufReader::new(&conn))
}

/// Sends a request whose reply is a stream: copies the stream to `out`,
/// then returns the result.
pub fn call_stream_out(socket: &Path, req: &Request, out: &mut dyn Write) -> Result<serde_json::Value, String> {
    let conn = connect(socket)?;
    send_request(&conn, req)?;
    let mut r = BufReader::new(&conn);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let mut len = [0u8; 4];
        r.read_exact(&mut len).map_err(|e| format!("the daemon's stream broke off: {e}"))?;
        let n = u32::from_le_bytes(len) as usize;
        if n == 0 {
            break;
        }
        if n > buf.len() {
            return Err("the daemon sent a malformed stream".into());
        }
        r.read_exact(&mut buf[..n]).map_err(|e| format!("the daemon's stream broke off: {e}"))?;
        out.write_all(&buf[..n]).map_err(|e| format!("cannot write the stream: {e}"))?;
    }
    out.flush().map_err(|e| format!("cannot write the stream: {e}"))?;
    read_response(&mut r)
}

/// Sends a request followed by the stream read from `input`.
pub fn call_stream_in(socket: &Path, req: &Request, input: &mut dyn Read) -> Result<serde_json::Value, String> {
    let conn = connect(socket)?;
    send_request(&conn, req)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut w = &conn;
    loop {
        let n = input.read(&mut buf).map_err(|e| format!("cannot read the stream: {e}"))?;
        // The daemon may refuse early and stop reading; its answer says why.
        if w.write_all(&(n as u32).to_le_bytes()).and_then(|()| w.write_all(&buf[..n])).is_err() || n == 0 {
            break;
        }
    }
    read_response(&mut BufReader::new(&conn))
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
        let handler: Handler = Arc::new(|req, _| match req {
            Request::FsCreate { name, .. } if name == "bad" => Err("no".into()),
            other => Ok(serde_json::to_value(other).expect("json")),
        });
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        rt.spawn(serve(listener, handler));
        let r = call(&sock, &Request::FsCreate { name: "x".into(), from_snapshot: None }).expect("call");
        assert_eq!(r["name"], "x");
        assert_eq!(call(&sock, &Request::FsCreate { name: "bad".into(), from_snapshot: None }), Err("no".into()));
        let mut conn = UnixStream::connect(&sock).expect("connect");
        conn.write_all(b"{\"cmd\":\"launch_missiles\"}\n").expect("write");
        let mut reply = String::new();
        BufReader::new(&conn).read_line(&mut reply).expect("read");
        assert!(reply.contains("malformed request"), "{reply}");
        let mut conn = UnixStream::connect(&sock).expect("connect");
        conn.write_all(&vec![b'x'; 100_000]).expect("write");
        let mut reply = String::new();
        BufReader::new(&conn).read_line(&mut reply).expect("read");
        assert!(reply.contains("\"ok\":false") && reply.contains("request too long"), "{reply}");
    }

    #[test]
    fn missing_daemon_is_a_clear_error() {
        let e = call(Path::new("/nonexistent/storfs.sock"), &Request::Status).expect_err("no daemon");
        assert!(e.contains("no storfs daemon at /nonexistent/storfs.sock"), "{e}");
    }
}
