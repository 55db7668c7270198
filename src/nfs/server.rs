//! TCP transport: one task reads records from each connection; each call
//! runs as its own task (blocking in place on a runtime worker) and writes
//! its reply as soon as it is done, so replies go back in completion order.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{Mutex, Semaphore, watch};

use super::Server;
use super::rpc::{Fragment, check_fragment, frame};

/// Calls one connection may have executing at once; more wait unread.
pub const MAX_IN_FLIGHT: usize = 64;

/// Accepts connections until `shutdown` turns true.
pub async fn serve(server: Arc<Server>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    tokio::spawn(connection(server.clone(), sock, peer, shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Reads one record; `None` at a clean end of stream.
async fn read_record(rd: &mut OwnedReadHalf) -> io::Result<Option<Vec<u8>>> {
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
    let (mut rd, wr) = sock.into_split();
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
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        let (server, writer) = (server.clone(), writer.clone());
        // The call runs on the worker that read it (the task is spawned on
        // its local queue and blocks in place), and writes its own reply:
        // no hop to another thread on the way, which is what one call in
        // flight (a client creating files one by one) waits for.
        tokio::spawn(async move {
            let ip = peer.ip();
            let reply = tokio::task::block_in_place(|| server.handle_record(ip, &record));
            if let Some(r) = reply {
                let mut w = writer.lock().await;
                if w.write_all(&frame(&r)).await.is_err() || w.flush().await.is_err() {
                    tracing::debug!(%peer, "reply not delivered: connection closed");
                }
            }
            drop(permit);
        });
    }
}
