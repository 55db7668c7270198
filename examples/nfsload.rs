//! NFSv3 load generator for scripts/bench/nfs.sh: drives any NFSv3 server
//! from this host with the `nfs3_client` crate (not storfs's own codec),
//! one RPC at a time per connection, and prints `name=value` results.
//!
//!     nfsload HOST NFS_PORT MOUNT_PORT EXPORT WORKLOAD [SIZE_MIB] [FILES] [CLIENTS]
//!
//! Workloads: `seqwrite` (1 MiB UNSTABLE writes, then COMMIT), `seqread`
//! (1 MiB reads of that file), `smallfiles` (CREATE + 4 KiB WRITE + COMMIT
//! per file, as a client closing each file does), `parallel` (CLIENTS
//! connections at once: seqwrite of SIZE_MIB/CLIENTS each, then
//! smallfiles of FILES/CLIENTS each).

use std::time::Instant;

use nfs3_client::Nfs3ConnectionBuilder;
use nfs3_client::nfs3_types::nfs3::{
    self, Nfs3Option, Nfs3Result, createhow3, diropargs3, nfs_fh3, sattr3, stable_how,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::{TokioConnector, TokioIo};

type Conn = nfs3_client::Nfs3Connection<TokioIo<tokio::net::TcpStream>>;
type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
struct Target {
    host: String,
    nfs_port: u16,
    mount_port: u16,
    export: String,
}

async fn connect(t: &Target) -> Result<Conn, Error> {
    let cred = auth_unix { stamp: 1, machinename: Opaque::borrowed(b"nfsload"), uid: 0, gid: 0, gids: vec![] };
    let conn = Nfs3ConnectionBuilder::new(TokioConnector, &t.host, &t.export)
        .mount_port(t.mount_port)
        .nfs3_port(t.nfs_port)
        .connect_from_privileged_port(false)
        .credential(opaque_auth::auth_unix(&cred))
        .mount()
        .await?;
    Ok(conn)
}

fn mode(m: u32) -> sattr3 {
    sattr3 { mode: Nfs3Option::Some(m), ..sattr3::default() }
}

async fn create(c: &mut Conn, dir: &nfs_fh3, name: &str) -> Result<nfs_fh3, Error> {
    let args = nfs3::CREATE3args {
        where_: diropargs3 { dir: dir.clone(), name: name.as_bytes().to_vec().into() },
        how: createhow3::UNCHECKED(mode(0o644)),
    };
    match c.create(&args).await? {
        Nfs3Result::Ok(ok) => match ok.obj {
            Nfs3Option::Some(fh) => Ok(fh),
            Nfs3Option::None => Err("CREATE returned no handle".into()),
        },
        Nfs3Result::Err((e, _)) => Err(format!("CREATE {name}: {e:?}").into()),
    }
}

async fn mkdir(c: &mut Conn, dir: &nfs_fh3, name: &str) -> Result<nfs_fh3, Error> {
    let args = nfs3::MKDIR3args {
        where_: diropargs3 { dir: dir.clone(), name: name.as_bytes().to_vec().into() },
        attributes: mode(0o755),
    };
    match c.mkdir(&args).await? {
        Nfs3Result::Ok(ok) => match ok.obj {
            Nfs3Option::Some(fh) => Ok(fh),
            Nfs3Option::None => Err("MKDIR returned no handle".into()),
        },
        Nfs3Result::Err((e, _)) => Err(format!("MKDIR {name}: {e:?}").into()),
    }
}

async fn lookup(c: &mut Conn, dir: &nfs_fh3, name: &str) -> Result<nfs_fh3, Error> {
    let args = nfs3::LOOKUP3args { what: diropargs3 { dir: dir.clone(), name: name.as_bytes().to_vec().into() } };
    match c.lookup(&args).await? {
        Nfs3Result::Ok(ok) => Ok(ok.object),
        Nfs3Result::Err((e, _)) => Err(format!("LOOKUP {name}: {e:?}").into()),
    }
}

async fn write(c: &mut Conn, fh: &nfs_fh3, offset: u64, data: &[u8]) -> Result<(), Error> {
    let args = nfs3::WRITE3args {
        file: fh.clone(),
        offset,
        count: data.len() as u32,
        stable: stable_how::UNSTABLE,
        data: Opaque::borrowed(data),
    };
    match c.write(&args).await? {
        Nfs3Result::Ok(ok) if ok.count as usize == data.len() => Ok(()),
        Nfs3Result::Ok(ok) => Err(format!("short WRITE: {}", ok.count).into()),
        Nfs3Result::Err((e, _)) => Err(format!("WRITE: {e:?}").into()),
    }
}

async fn commit(c: &mut Conn, fh: &nfs_fh3) -> Result<(), Error> {
    match c.commit(&nfs3::COMMIT3args { file: fh.clone(), offset: 0, count: 0 }).await? {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((e, _)) => Err(format!("COMMIT: {e:?}").into()),
    }
}

fn payload(len: usize, seed: u64) -> Vec<u8> {
    (0..len).map(|i| ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(seed) >> 56) as u8).collect()
}

/// Writes `mib` MiB to `name`; returns seconds taken.
async fn seqwrite(t: &Target, name: &str, mib: u64) -> Result<f64, Error> {
    let mut c = connect(t).await?;
    let root = c.root_nfs_fh3();
    let chunk = payload(1 << 20, mib);
    let start = Instant::now();
    let fh = create(&mut c, &root, name).await?;
    for i in 0..mib {
        write(&mut c, &fh, i << 20, &chunk).await?;
    }
    commit(&mut c, &fh).await?;
    Ok(start.elapsed().as_secs_f64())
}

async fn seqread(t: &Target, name: &str) -> Result<(u64, f64), Error> {
    let mut c = connect(t).await?;
    let root = c.root_nfs_fh3();
    let start = Instant::now();
    let fh = lookup(&mut c, &root, name).await?;
    let mut offset = 0u64;
    loop {
        let res = c.read(&nfs3::READ3args { file: fh.clone(), offset, count: 1 << 20 }).await?;
        match res {
            Nfs3Result::Ok(ok) => {
                offset += ok.data.len() as u64;
                if ok.eof || ok.data.is_empty() {
                    break;
                }
            }
            Nfs3Result::Err((e, _)) => return Err(format!("READ: {e:?}").into()),
        }
    }
    Ok((offset, start.elapsed().as_secs_f64()))
}

/// Creates `files` 4 KiB files in a new directory; returns seconds taken.
async fn smallfiles(t: &Target, dir: &str, files: u64) -> Result<f64, Error> {
    let mut c = connect(t).await?;
    let root = c.root_nfs_fh3();
    let start = Instant::now();
    let d = mkdir(&mut c, &root, dir).await?;
    let mut spent = [0f64; 3];
    for i in 0..files {
        let t0 = Instant::now();
        let fh = create(&mut c, &d, &format!("f{i:06}")).await?;
        let t1 = Instant::now();
        write(&mut c, &fh, 0, &payload(4096, i)).await?;
        let t2 = Instant::now();
        commit(&mut c, &fh).await?;
        let t3 = Instant::now();
        for (k, d) in [t1 - t0, t2 - t1, t3 - t2].iter().enumerate() {
            spent[k] += d.as_secs_f64();
        }
    }
    let us = |k: usize| spent[k] * 1e6 / files.max(1) as f64;
    eprintln!("smallfiles mean latency: CREATE {:.0} us, WRITE {:.0} us, COMMIT {:.0} us", us(0), us(1), us(2));
    Ok(start.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 6 {
        return Err("usage: nfsload HOST NFS_PORT MOUNT_PORT EXPORT WORKLOAD [SIZE_MIB] [FILES] [CLIENTS]".into());
    }
    let t = Target { host: a[1].clone(), nfs_port: a[2].parse()?, mount_port: a[3].parse()?, export: a[4].clone() };
    let size: u64 = a.get(6).map_or(Ok(1024), |v| v.parse())?;
    let files: u64 = a.get(7).map_or(Ok(5000), |v| v.parse())?;
    let clients: u64 = a.get(8).map_or(Ok(4), |v| v.parse())?;
    let tag = std::process::id();
    match a[5].as_str() {
        "seqwrite" => {
            let s = seqwrite(&t, "seq.bin", size).await?;
            println!("seqwrite_mib_s={:.1}", size as f64 / s);
        }
        "seqread" => {
            let (bytes, s) = seqread(&t, "seq.bin").await?;
            println!("seqread_mib_s={:.1}", bytes as f64 / (1 << 20) as f64 / s);
        }
        "getattr" => {
            // Round-trip latency of the cheapest call with a file handle.
            let mut c = connect(&t).await?;
            let root = c.root_nfs_fh3();
            let n = files.max(1);
            let start = Instant::now();
            for _ in 0..n {
                c.getattr(&nfs3::GETATTR3args { object: root.clone() }).await?;
            }
            println!("getattr_us={:.1}", start.elapsed().as_secs_f64() * 1e6 / n as f64);
        }
        "smallfiles" => {
            let s = smallfiles(&t, &format!("small-{tag}"), files).await?;
            println!("smallfiles_per_s={:.0}", files as f64 / s);
        }
        "parallel" => {
            let start = Instant::now();
            let mut tasks = Vec::new();
            for k in 0..clients {
                let t = t.clone();
                tasks.push(tokio::spawn(
                    async move { seqwrite(&t, &format!("par-{tag}-{k}.bin"), size / clients).await },
                ));
            }
            for task in tasks {
                task.await??;
            }
            println!("parallel_write_mib_s={:.1}", size as f64 / start.elapsed().as_secs_f64());
            let start = Instant::now();
            let mut tasks = Vec::new();
            for k in 0..clients {
                let t = t.clone();
                tasks.push(tokio::spawn(async move {
                    smallfiles(&t, &format!("parsmall-{tag}-{k}"), files / clients).await
                }));
            }
            for task in tasks {
                task.await??;
            }
            println!("parallel_smallfiles_per_s={:.0}", files as f64 / start.elapsed().as_secs_f64());
        }
        other => return Err(format!("unknown workload {other}").into()),
    }
    Ok(())
}
