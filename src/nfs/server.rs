//! TCP transport: one task reads records from each connection. Calls that
//! only touch memory and the page cache run right there, so a client with
//! one call in flight (creating files one by one) is answered by the thread
//! that read its call, with no hop to another thread. Calls that may wait
//! on the disk or the backend (COMMIT, stable writes, reads, listings, writes
//! held back by a full dirty cache) run as their own tasks on the blocking
//! pool, many at once, and do not hold up the connection. Replies go back
//! in completion order.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Mutex, Semaphore, watch};

use super::Server;
use super::rpc::{Fragment, check_fragment, frame};

/// Calls one connection may have executing at once; more wait unread.
pub const MAX_IN_FLIGHT: usize = 64;

/// Accepts connections until `shutdown` turns true.
pub async fn serve(server: Arc<Server>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    crate::net::accept_loop(listener, shutdown, |sock, peer, stop| connection(server.clone(), sock, peer, stop)).await;
}

/// Reads one record; `None` at a clean end of stream.
async fn read_record(rd: &mut BufReader<OwnedReadHalf>) -> io::Result<Option<Vec<u8>>> {
    let mut record = Vec::new();
    loop {
        let mut head = [0u8; 4];
        match rd.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && record.is_empty() => return Ok(None),
            Err(e) => return Err(e),
        }
        let frag = Fragment::parse(head);
        check_fragment(record.len(), frag).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let start = record.len();
        record.resize(start + frag.len, 0);
        rd.read_exact(&mut record[start..]).await?;
        if frag.last {
            return Ok(Some(record));
        }
    }
}

async fn connection(
    server: Arc<Server>,
    sock: tokio::net::TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let (rd, wr) = sock.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let writer = Arc::new(Mutex::new(BufWriter::with_capacity(256 * 1024, wr)));
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let record = tokio::select! {
            r = read_record(&mut rd) => r,
            _ = shutdown.changed() => break,
        };
        let record = match record {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                // Oversized or truncated: the stream cannot be resynchronized.
                tracing::debug!(%peer, error = %e, "closing NFS connection");
                break;
            }
        };
        if !server.may_block(&record) {
            let reply = server.handle_record(peer.ip(), &record);
            send(&writer, peer, reply).await;
            continue;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        let (server, writer) = (server.clone(), writer.clone());
        tokio::spawn(async move {
            let ip = peer.ip();
            match tokio::task::spawn_blocking(move || server.handle_record(ip, &record)).await {
                Ok(reply) => send(&writer, peer, reply).await,
                Err(e) => tracing::error!(%peer, error = %e, "NFS call panicked"),
            }
            drop(permit);
        });
    }
}

async fn send(writer: &Mutex<BufWriter<OwnedWriteHalf>>, peer: SocketAddr, reply: Option<Vec<u8>>) {
    if let Some(r) = reply {
        let mut w = writer.lock().await;
        if w.write_all(&frame(&r)).await.is_err() || w.flush().await.is_err() {
            tracing::debug!(%peer, "reply not delivered: connection closed");
        }
    }
}
