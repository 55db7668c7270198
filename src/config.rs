//! The daemon's TOML configuration: one struct, unknown keys refused, human
//! units ("4GiB", "5s"), and validation messages that name the bad key.
//! `storfs init` prints [`Config::template`]; `systemd/storfs.toml` is the
//! same template for root, parsed by a test.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
pub use storfs::data::cost::CostConfig;
pub use storfs::data::tier::LifecycleConfig;

/// A byte count written with units ("4GiB", "512MiB", "65536").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Size, String> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| Size(b.as_u64()))
            .map_err(|_| format!("invalid size {s:?} (write e.g. \"4GiB\", \"512MiB\" or a byte count)"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (name, unit) in UNITS {
            if self.0 >= unit && self.0.is_multiple_of(unit) {
                return write!(f, "{}{name}", self.0 / unit);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A duration written with units ("5s", "100ms", "1h"); "0" means none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Dur, String> {
        if s.trim() == "0" {
            return Ok(Dur(Duration::ZERO));
        }
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|_| format!("invalid duration {s:?} (write e.g. \"5s\", \"250ms\", \"1h\")"))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// Which object store holds the packs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Pack files in local directories.
    #[default]
    Local,
    /// An S3 bucket.
    S3,
}

/// `[backend]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Which backend (`local` when absent).
    #[serde(default)]
    pub kind: BackendKind,
    /// Local backend: directory of Standard packs (default `<data_dir>/objects/standard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Local backend: directory of Infrequent-Access packs (default `<data_dir>/objects/infrequent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ia_path: Option<PathBuf>,
    /// S3: bucket name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// S3: key prefix under which everything of this daemon lives ("" or ending in '/').
    #[serde(default)]
    pub prefix: String,
    /// S3: region to sign requests for.
    #[serde(default = "default_region")]
    pub region: String,
    /// S3: endpoint URL of an S3-compatible service (AWS when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3: address the bucket in the URL path rather than the host name.
    #[serde(default)]
    pub path_style: bool,
    /// S3: longest time one request attempt may take.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Dur,
    /// S3: how often a full metadata image replaces the log of changes.
    #[serde(default = "default_image_interval")]
    pub image_interval: Dur,
    /// The old name of `image_interval` (before user snapshots took the
    /// word): still read, with a warning.
    #[serde(default, skip_serializing)]
    pub snapshot_interval: Option<Dur>,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_request_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

fn default_image_interval() -> Dur {
    Dur(Duration::from_secs(3600))
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            kind: BackendKind::Local,
            path: None,
            ia_path: None,
            bucket: None,
            prefix: String::new(),
            region: default_region(),
            endpoint: None,
            path_style: false,
            request_timeout: default_request_timeout(),
            image_interval: default_image_interval(),
            snapshot_interval: None,
        }
    }
}

/// Whether `name` follows S3's bucket naming rules (3-63 characters of
/// lowercase letters, digits, '.' and '-', starting and ending with a
/// letter or digit).
fn valid_bucket_name(name: &str) -> bool {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && edge_ok(name.chars().next())
        && edge_ok(name.chars().last())
        && !name.contains("..")
}

/// `[cache]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Writers wait while the write-ahead log holds this much unflushed data.
    pub max_dirty: Size,
    /// Memory cache for chunks read back.
    pub memory: Size,
    /// Disk cache for chunks read from a remote backend (unused for local).
    pub disk: Size,
    /// Bytes fetched ahead of a sequential reader from a remote backend.
    pub readahead: Size,
    /// Dirty data older than this is flushed to packs.
    pub flush_interval: Dur,
    /// How long a writer waits for dirty space before failing with EIO ("0": forever).
    pub dirty_wait_timeout: Dur,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_dirty: Size(4 << 30),
            memory: Size(512 << 20),
            disk: Size(10 << 30),
            readahead: Size(64 << 20),
            flush_interval: Dur(Duration::from_secs(5)),
            dirty_wait_timeout: Dur(Duration::ZERO),
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Block size of new file systems (the unit of dedup and of the block map).
    pub block_size: Size,
    /// Target size of pack objects.
    pub pack_size: Size,
    /// Size of write-ahead log segment files.
    pub wal_segment_size: Size,
    /// How chunks are compressed before they are packed.
    pub compression: storfs::chunk::codec::Compression,
    /// zstd level (-7 to 22; low is fast).
    pub compression_level: i32,
    /// How chunks and metadata are encrypted before they reach the backend.
    pub encryption: storfs::chunk::seal::Encryption,
    /// File holding the keys (current first; `storfs key generate` makes
    /// one). `STORFS_ENCRYPTION_KEY` overrides it. The key is never in
    /// the configuration itself.
    pub encryption_key_file: Option<PathBuf>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            block_size: Size(1 << 20),
            pack_size: Size(32 << 20),
            wal_segment_size: Size(64 << 20),
            compression: storfs::chunk::codec::Compression::Zstd,
            compression_level: 1,
            encryption: storfs::chunk::seal::Encryption::Off,
            encryption_key_file: None,
        }
    }
}

/// `[gc]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// How often GC runs ("0": only on `storfs gc`).
    pub interval: Dur,
    /// Packs with less than this fraction of live bytes are repacked.
    pub repack_threshold: f64,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig { interval: Dur(Duration::from_secs(3600)), repack_threshold: 0.5 }
    }
}

/// `[limits]`: what clients can make the daemon hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Request and reply bytes held for NFS and NBD clients at once, daemon-wide.
    pub buffered: Size,
    /// The same for one client address.
    pub buffered_per_client: Size,
    /// A request that started arriving must be complete within this.
    pub request_timeout: Dur,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            buffered: Size(512 << 20),
            buffered_per_client: Size(128 << 20),
            request_timeout: Dur(Duration::from_secs(30)),
        }
    }
}

/// `[locks]`: byte-range locks, one table for FUSE mounts (`fcntl`) and
/// NFS clients (NLM v4 with NSM).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocksConfig {
    /// Serve NLM and NSM to NFS clients and POSIX locks on FUSE mounts
    /// (off: NFS clients mount with `nolock`, FUSE locks stay local).
    pub enabled: bool,
    /// After a restart, only locks held before it are granted (reclaimed
    /// by their holders) this long; 45 s as Linux's lockd.
    pub grace_period: Dur,
    /// Locks one client (machine or mount) may hold.
    pub held_per_client: usize,
    /// Lock requests one client may have waiting.
    pub waiting_per_client: usize,
}

impl Default for LocksConfig {
    fn default() -> Self {
        LocksConfig {
            enabled: true,
            grace_period: Dur(Duration::from_secs(45)),
            held_per_client: 8192,
            waiting_per_client: 256,
        }
    }
}

/// Who answers the portmapper (port 111) for NFS clients' lock managers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Portmapper {
    /// The host's rpcbind if one answers on 127.0.0.1:111, else `own`.
    Auto,
    /// Register with the host's rpcbind (an error at start if none runs).
    Rpcbind,
    /// Answer on `nfs.portmapper_listen` (TCP and UDP).
    Own,
    /// Neither: clients must mount with `nolock` (or find NLM otherwise).
    Off,
}

/// `[control]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Unix socket the CLI talks to.
    pub socket: PathBuf,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig { socket: default_socket() }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where Prometheus metrics (`/metrics`) are served; "off": nowhere.
    pub listen: MetricsListen,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: MetricsListen(Some(SocketAddr::from(([127, 0, 0, 1], 9567)))) }
    }
}

/// An address, or none ("off").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MetricsListen(pub Option<SocketAddr>);

impl TryFrom<String> for MetricsListen {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if s == "off" {
            return Ok(MetricsListen(None));
        }
        s.parse()
            .map(|a| MetricsListen(Some(a)))
            .map_err(|_| format!("expected \"off\" or an address like \"127.0.0.1:9567\", got {s:?}"))
    }
}

impl From<MetricsListen> for String {
    fn from(l: MetricsListen) -> String {
        l.0.map_or_else(|| "off".into(), |a| a.to_string())
    }
}

/// A client network: CIDR ("10.0.0.0/8") or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net(pub ipnet::IpNet);

impl<'de> Deserialize<'de> for Net {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Net, D::Error> {
        let s = String::deserialize(d)?;
        if let Ok(n) = s.parse::<ipnet::IpNet>() {
            return Ok(Net(n));
        }
        s.parse::<std::net::IpAddr>().map(|ip| Net(ipnet::IpNet::from(ip))).map_err(|_| {
            serde::de::Error::custom(format!("invalid network {s:?} (write e.g. \"10.0.0.0/8\" or \"192.0.2.7\")"))
        })
    }
}

impl Serialize for Net {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

/// NFS export options (`[nfs.default_export]`, `[nfs.exports.NAME]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// Client networks allowed to mount and call; everyone else is refused.
    pub clients: Vec<Net>,
    /// Read-only export.
    pub ro: bool,
    /// Map root (uid 0) to anonuid/anongid.
    pub root_squash: bool,
    /// Map every user to anonuid/anongid.
    pub all_squash: bool,
    /// Anonymous uid.
    pub anonuid: u32,
    /// Anonymous gid.
    pub anongid: u32,
}

impl Default for ExportConfig {
    fn default() -> Self {
        let d = storfs::nfs::ExportOptions::default();
        ExportConfig {
            clients: d.clients.into_iter().map(Net).collect(),
            ro: d.read_only,
            root_squash: d.root_squash,
            all_squash: d.all_squash,
            anonuid: d.anonuid,
            anongid: d.anongid,
        }
    }
}

impl ExportConfig {
    /// The options the NFS server applies.
    pub fn options(&self) -> storfs::nfs::ExportOptions {
        storfs::nfs::ExportOptions {
            clients: self.clients.iter().map(|n| n.0).collect(),
            read_only: self.ro,
            root_squash: self.root_squash,
            all_squash: self.all_squash,
            anonuid: self.anonuid,
            anongid: self.anongid,
        }
    }
}

/// `[nfs]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NfsConfig {
    /// Serve NFS at all.
    pub enabled: bool,
    /// Address of the NFSv3 server (MOUNT and GETPORT are answered there too).
    pub listen: SocketAddr,
    /// Options of file systems without an entry in `exports`.
    pub default_export: ExportConfig,
    /// Options by file system name.
    pub exports: std::collections::BTreeMap<String, ExportConfig>,
    /// Connections at once, from all clients.
    pub max_connections: usize,
    /// Connections at once from one client address.
    pub max_connections_per_client: usize,
    /// A connection with no call for this long is closed (clients reconnect).
    pub idle_timeout: Dur,
    /// Who answers the portmapper on port 111.
    pub portmapper: Portmapper,
    /// Where this daemon answers the portmapper itself (default: the NFS
    /// address's IP, port 111).
    pub portmapper_listen: Option<SocketAddr>,
}

impl Default for NfsConfig {
    fn default() -> Self {
        NfsConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 2049)),
            default_export: ExportConfig::default(),
            exports: Default::default(),
            max_connections: 1024,
            max_connections_per_client: 64,
            idle_timeout: Dur(Duration::from_secs(360)),
            portmapper: Portmapper::Auto,
            portmapper_listen: None,
        }
    }
}

impl NfsConfig {
    /// Where the daemon's own portmapper listens.
    pub fn portmapper_addr(&self) -> SocketAddr {
        self.portmapper_listen.unwrap_or_else(|| SocketAddr::new(self.listen.ip(), storfs::nfs::callback::PMAP_PORT))
    }

    /// Export options of every file system.
    pub fn exports(&self) -> storfs::nfs::Exports {
        storfs::nfs::Exports {
            defaults: self.default_export.options(),
            per_fs: self.exports.iter().map(|(k, v)| (k.clone(), v.options())).collect(),
        }
    }
}

/// `[nbd]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NbdConfig {
    /// Serve NBD at all.
    pub enabled: bool,
    /// Address of the NBD server.
    pub listen: SocketAddr,
    /// Options of volumes without an entry in `volumes`.
    pub default_volume: VolumeConfig,
    /// Options by volume name.
    pub volumes: std::collections::BTreeMap<String, VolumeConfig>,
    /// Connections at once, from all clients.
    pub max_connections: usize,
    /// Connections at once from one client address.
    pub max_connections_per_client: usize,
    /// The option haggling must be over within this.
    pub handshake_timeout: Dur,
    /// TLS (NBD_OPT_STARTTLS): "off", "allow" (plaintext too) or "require".
    pub tls: storfs::nbd::tls::TlsMode,
    /// The server's certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// The server's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) client certificates must chain to: mutual TLS.
    pub tls_client_ca: Option<PathBuf>,
}

impl Default for NbdConfig {
    fn default() -> Self {
        NbdConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 10809)),
            default_volume: VolumeConfig::default(),
            volumes: Default::default(),
            max_connections: 1024,
            max_connections_per_client: 64,
            handshake_timeout: Dur(Duration::from_secs(10)),
            tls: storfs::nbd::tls::TlsMode::Off,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

impl NbdConfig {
    /// The TLS set-up, loaded from the configured files (`None`: off).
    pub fn tls(&self) -> anyhow::Result<Option<storfs::nbd::tls::Tls>> {
        use storfs::nbd::tls::{Tls, TlsMode};
        if self.tls == TlsMode::Off {
            return Ok(None);
        }
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            anyhow::bail!("nbd.tls is on but nbd.tls_cert or nbd.tls_key is not set");
        };
        let tls = Tls::load(cert, key, self.tls_client_ca.as_deref(), self.tls == TlsMode::Require)
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(Some(tls))
    }

    /// Options of every volume.
    pub fn policy(&self) -> storfs::nbd::Policy {
        storfs::nbd::Policy {
            defaults: self.default_volume.options(),
            per_volume: self.volumes.iter().map(|(k, v)| (k.clone(), v.options())).collect(),
        }
    }
}

/// Volume options (`[nbd.default_volume]`, `[nbd.volumes.NAME]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VolumeConfig {
    /// Client networks allowed to attach; everyone else is refused.
    pub clients: Vec<Net>,
    /// Serve read-only.
    pub ro: bool,
}

impl Default for VolumeConfig {
    fn default() -> Self {
        let d = storfs::nbd::VolumeOptions::default();
        VolumeConfig { clients: d.clients.into_iter().map(Net).collect(), ro: d.read_only }
    }
}

impl VolumeConfig {
    /// The options the NBD server applies.
    pub fn options(&self) -> storfs::nbd::VolumeOptions {
        storfs::nbd::VolumeOptions { clients: self.clients.iter().map(|n| n.0).collect(), read_only: self.ro }
    }
}

/// `[fuse]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FuseConfig {
    /// Threads serving each FUSE mount.
    pub threads: usize,
    /// How long the kernel may cache attributes and names. Other clients'
    /// changes (NFS) can take this long to show in a FUSE mount.
    pub attr_timeout: Dur,
    /// Mount with the kernel's writeback cache unless `storfs mount` says
    /// otherwise (docs/SEMANTICS.md: what it changes).
    pub writeback_cache: bool,
}

impl Default for FuseConfig {
    fn default() -> Self {
        FuseConfig { threads: 8, attr_timeout: Dur(Duration::from_secs(1)), writeback_cache: false }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// State directory: metadata, write-ahead log, caches, local packs.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Object store.
    #[serde(default)]
    pub backend: BackendConfig,
    /// Write-back and read caches.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Blocks, packs, log segments.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Garbage collection.
    #[serde(default)]
    pub gc: GcConfig,
    /// Control socket.
    #[serde(default)]
    pub control: ControlConfig,
    /// FUSE mounts.
    #[serde(default)]
    pub fuse: FuseConfig,
    /// NFS server.
    #[serde(default)]
    pub nfs: NfsConfig,
    /// NBD server.
    #[serde(default)]
    pub nbd: NbdConfig,
    /// Bounds on what clients can make the daemon hold.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Byte-range locks.
    #[serde(default)]
    pub locks: LocksConfig,
    /// Tiering between Standard and Infrequent Access.
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
    /// Prices for `storfs cost`.
    #[serde(default)]
    pub cost: CostConfig,
    /// Prometheus metrics.
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// A configuration that cannot be used, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or a value has the wrong type.
    #[error("config {path}: {msg}")]
    Parse {
        /// File.
        path: PathBuf,
        /// What and where.
        msg: String,
    },
    /// A value is out of range.
    #[error("config {path}: {key}: {msg}")]
    Invalid {
        /// File (or "built-in defaults").
        path: PathBuf,
        /// Dotted key.
        key: &'static str,
        /// What is wrong.
        msg: String,
    },
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Default state directory: `/var/lib/storfs` for root, else
/// `$XDG_DATA_HOME/storfs` (or `~/.local/share/storfs`).
pub fn default_data_dir() -> PathBuf {
    if running_as_root() {
        return PathBuf::from("/var/lib/storfs");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("storfs");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/storfs")
}

/// Default control socket: `/run/storfs/storfs.sock` for root, else
/// `$XDG_RUNTIME_DIR/storfs/storfs.sock` (or inside the data directory).
pub fn default_socket() -> PathBuf {
    if running_as_root() {
        return PathBuf::from("/run/storfs/storfs.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x).join("storfs/storfs.sock"),
        None => default_data_dir().join("storfs.sock"),
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: default_data_dir(),
            backend: BackendConfig::default(),
            cache: CacheConfig::default(),
            storage: StorageConfig::default(),
            gc: GcConfig::default(),
            control: ControlConfig::default(),
            fuse: FuseConfig::default(),
            nfs: NfsConfig::default(),
            nbd: NbdConfig::default(),
            limits: LimitsConfig::default(),
            locks: LocksConfig::default(),
            lifecycle: LifecycleConfig::default(),
            cost: CostConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// The environment variable that gives the encryption keys (overriding
/// `storage.encryption_key_file`).
pub const KEY_ENV: &str = "STORFS_ENCRYPTION_KEY";

impl Config {
    /// The keys to seal and open data with: from `STORFS_ENCRYPTION_KEY`
    /// when set, else from `storage.encryption_key_file`, else none.
    pub fn keyring(&self) -> anyhow::Result<storfs::chunk::seal::Keyring> {
        use anyhow::Context;
        use storfs::chunk::seal::{Keyring, parse_keys};
        let keys = if let Ok(text) = std::env::var(KEY_ENV) {
            parse_keys(&text).map_err(|e| anyhow::anyhow!("{KEY_ENV}: {e}"))?
        } else if let Some(path) = &self.storage.encryption_key_file {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path)
                .with_context(|| format!("storage.encryption_key_file {} cannot be read", path.display()))?;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(file = %path.display(), "the key file can be read by others than its owner; chmod 600 it");
            }
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("storage.encryption_key_file {} cannot be read", path.display()))?,
            );
            parse_keys(&text).map_err(|e| anyhow::anyhow!("storage.encryption_key_file {}: {e}", path.display()))?
        } else {
            Vec::new()
        };
        Keyring::new(self.storage.encryption, keys).map_err(|e| {
            anyhow::anyhow!("{e}: set storage.encryption_key_file or {KEY_ENV} (make a key with `storfs key generate`)")
        })
    }

    /// Loads and validates `path`, or the built-in defaults when `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            let c = Config::default();
            c.validate(Path::new("(built-in defaults)"))?;
            return Ok(c);
        };
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let mut c = Config::parse(&text, path)?;
        if let Some(old) = c.backend.snapshot_interval.take() {
            tracing::warn!(
                config = %path.display(),
                "backend.snapshot_interval is now backend.image_interval (snapshots are the user's now); please rename it"
            );
            c.backend.image_interval = old;
        }
        c.validate(path)?;
        Ok(c)
    }

    /// Parses TOML text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let line_of = |span: Option<std::ops::Range<usize>>| {
            span.map(|r| format!(" (line {})", text[..r.start.min(text.len())].matches('\n').count() + 1))
                .unwrap_or_default()
        };
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            msg: format!("{}{}", e.message().trim(), line_of(e.span())),
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let msg = format!("{}{}", inner.message().trim(), line_of(inner.span()));
            ConfigError::Parse { path: path.to_path_buf(), msg: if key == "." { msg } else { format!("{key}: {msg}") } }
        })
    }

    /// Checks ranges and combinations.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &'static str, msg: String| Err(ConfigError::Invalid { path: path.to_path_buf(), key, msg });
        if !self.data_dir.is_absolute() {
            return bad("data_dir", format!("must be an absolute path, got {}", self.data_dir.display()));
        }
        if !self.control.socket.is_absolute() {
            return bad("control.socket", "must be an absolute path".into());
        }
        if self.backend.kind == BackendKind::S3 {
            let b = &self.backend;
            match &b.bucket {
                None => return bad("backend.bucket", "is required when kind = \"s3\"".into()),
                Some(name) if !valid_bucket_name(name) => {
                    return bad("backend.bucket", format!("{name:?} is not a valid S3 bucket name"));
                }
                Some(_) => {}
            }
            if b.prefix.starts_with('/') || (!b.prefix.is_empty() && !b.prefix.ends_with('/')) {
                return bad(
                    "backend.prefix",
                    format!("must be empty or end in '/' and not start with it, got {:?}", b.prefix),
                );
            }
            if b.region.is_empty() {
                return bad("backend.region", "must not be empty".into());
            }
            if let Some(ep) = &b.endpoint
                && !(ep.starts_with("http://") || ep.starts_with("https://"))
            {
                return bad("backend.endpoint", format!("must be an http:// or https:// URL, got {ep:?}"));
            }
            if b.request_timeout.0 < Duration::from_secs(1) {
                return bad("backend.request_timeout", "must be at least 1s".into());
            }
            if b.image_interval.0 < Duration::from_secs(1) {
                return bad("backend.image_interval", "must be at least 1s".into());
            }
        }
        for (key, p) in [("backend.path", &self.backend.path), ("backend.ia_path", &self.backend.ia_path)] {
            if let Some(p) = p
                && !p.is_absolute()
            {
                return bad(key, format!("must be an absolute path, got {}", p.display()));
            }
        }
        if self.backend_paths().0 == self.backend_paths().1 {
            return bad("backend.ia_path", "must differ from backend.path".into());
        }
        let bs = self.storage.block_size.0;
        if !bs.is_power_of_two() || !(4 << 10..=16 << 20).contains(&bs) {
            return bad(
                "storage.block_size",
                format!("must be a power of two from 4KiB to 16MiB, got {}", self.storage.block_size),
            );
        }
        if self.storage.pack_size.0 < bs || self.storage.pack_size.0 > 1 << 30 {
            return bad(
                "storage.pack_size",
                format!("must be between the block size and 1GiB, got {}", self.storage.pack_size),
            );
        }
        if self.storage.wal_segment_size.0 < 1 << 20 || self.storage.wal_segment_size.0 > 1 << 32 {
            return bad(
                "storage.wal_segment_size",
                format!("must be between 1MiB and 4GiB, got {}", self.storage.wal_segment_size),
            );
        }
        if self.cache.max_dirty.0 < 64 << 20 {
            return bad("cache.max_dirty", format!("must be at least 64MiB, got {}", self.cache.max_dirty));
        }
        if self.cache.memory.0 < 16 << 20 {
            return bad("cache.memory", format!("must be at least 16MiB, got {}", self.cache.memory));
        }
        if self.cache.readahead.0 > self.cache.memory.0 / 4 {
            // Chunks fetched ahead wait in the memory cache; a window larger
            // than a fraction of it would evict them before they are read.
            return bad(
                "cache.readahead",
                format!(
                    "must be at most a quarter of cache.memory ({}), got {}",
                    self.cache.memory, self.cache.readahead
                ),
            );
        }
        if self.cache.flush_interval.0 < Duration::from_millis(10)
            || self.cache.flush_interval.0 > Duration::from_secs(3600)
        {
            return bad("cache.flush_interval", "must be between 10ms and 1h".into());
        }
        if self.nbd.tls != storfs::nbd::tls::TlsMode::Off && (self.nbd.tls_cert.is_none() || self.nbd.tls_key.is_none())
        {
            return bad("nbd.tls", "is on but nbd.tls_cert or nbd.tls_key is not set".into());
        }
        if self.storage.encryption != storfs::chunk::seal::Encryption::Off
            && self.storage.encryption_key_file.is_none()
            && std::env::var_os(KEY_ENV).is_none()
        {
            return bad(
                "storage.encryption",
                format!(
                    "is on but there is no key: set storage.encryption_key_file or {KEY_ENV} \
                     (make a key with `storfs key generate`)"
                ),
            );
        }
        if !(-7..=22).contains(&self.storage.compression_level) {
            return bad(
                "storage.compression_level",
                format!("must be from -7 to 22, got {}", self.storage.compression_level),
            );
        }
        let l = &self.lifecycle;
        let mut transitions = vec![
            ("lifecycle.transition_to_ia", l.transition_to_ia),
            ("lifecycle.snapshot_transition_to_ia", l.snapshot_transition_to_ia),
        ];
        for o in l.fs.values().chain(l.volumes.values()) {
            transitions.extend(o.transition_to_ia.map(|t| ("lifecycle.<name>.transition_to_ia", t)));
            transitions.extend(o.snapshot_transition_to_ia.map(|t| ("lifecycle.<name>.snapshot_transition_to_ia", t)));
        }
        for (key, t) in transitions {
            if t.0.is_some_and(|d| d < Duration::from_secs(1)) {
                return bad(key, "must be \"off\" or at least 1s".into());
            }
        }
        let c = &self.cost;
        for (key, v) in [
            ("cost.standard_gb_month", Some(c.standard_gb_month)),
            ("cost.ia_gb_month", Some(c.ia_gb_month)),
            ("cost.ia_retrieval_gb", c.ia_retrieval_gb),
            ("cost.put_per_1000", c.put_per_1000),
            ("cost.get_per_1000", c.get_per_1000),
            ("cost.ia_put_per_1000", c.ia_put_per_1000),
            ("cost.ia_get_per_1000", c.ia_get_per_1000),
        ] {
            let Some(v) = v else { continue };
            if !(v.is_finite() && v >= 0.0) {
                return bad(key, format!("must be a price of 0 or more, got {v}"));
            }
        }
        if !(0.0..1.0).contains(&self.gc.repack_threshold) {
            return bad("gc.repack_threshold", format!("must be in [0, 1), got {}", self.gc.repack_threshold));
        }
        for (key, n) in [
            ("nfs.max_connections", self.nfs.max_connections),
            ("nfs.max_connections_per_client", self.nfs.max_connections_per_client),
            ("nbd.max_connections", self.nbd.max_connections),
            ("nbd.max_connections_per_client", self.nbd.max_connections_per_client),
        ] {
            if !(1..=65536).contains(&n) {
                return bad(key, format!("must be between 1 and 65536, got {n}"));
            }
        }
        let l = &self.limits;
        if l.buffered.0 < 64 << 20 {
            return bad("limits.buffered", format!("must be at least 64MiB (one largest request), got {}", l.buffered));
        }
        if l.buffered_per_client.0 < 32 << 20 || l.buffered_per_client.0 > l.buffered.0 {
            return bad(
                "limits.buffered_per_client",
                format!("must be at least 32MiB and at most limits.buffered, got {}", l.buffered_per_client),
            );
        }
        for (key, d) in [
            ("limits.request_timeout", l.request_timeout.0),
            ("nbd.handshake_timeout", self.nbd.handshake_timeout.0),
            ("nfs.idle_timeout", self.nfs.idle_timeout.0),
        ] {
            if d < Duration::from_secs(1) {
                return bad(key, "must be at least 1s".into());
            }
        }
        if !(1..=256).contains(&self.fuse.threads) {
            return bad("fuse.threads", format!("must be between 1 and 256, got {}", self.fuse.threads));
        }
        let k = &self.locks;
        if k.grace_period.0 > Duration::from_secs(3600) {
            return bad(
                "locks.grace_period",
                format!("must be at most 1h, got {}", humantime::format_duration(k.grace_period.0)),
            );
        }
        for (key, n) in
            [("locks.held_per_client", k.held_per_client), ("locks.waiting_per_client", k.waiting_per_client)]
        {
            if !(1..=1 << 20).contains(&n) {
                return bad(key, format!("must be between 1 and 1048576, got {n}"));
            }
        }
        Ok(())
    }

    /// Directories of the local backend (Standard, Infrequent Access).
    pub fn backend_paths(&self) -> (PathBuf, PathBuf) {
        let objects = self.data_dir.join("objects");
        (
            self.backend.path.clone().unwrap_or_else(|| objects.join("standard")),
            self.backend.ia_path.clone().unwrap_or_else(|| objects.join("infrequent")),
        )
    }

    /// The default configuration as commented TOML (what `storfs init` prints).
    pub fn template() -> String {
        let d = Config::default();
        format!(
            r#"# storfs configuration. Every key is optional; the values below are the
# built-in defaults (data_dir and the socket: those of the user who ran
# `storfs init`).

# State: metadata store, write-ahead log, caches, and local packs.
data_dir = "{data_dir}"

[backend]
kind = "local"            # or "s3"
# path = "{data_dir}/objects/standard"       # local: Standard packs
# ia_path = "{data_dir}/objects/infrequent"  # local: Infrequent-Access packs
# bucket = "my-bucket"      # s3: credentials come from the AWS chain
# prefix = ""               # s3: e.g. "storfs/host1/"
# region = "us-east-1"      # s3
# endpoint = "https://s3.example.com"  # s3: any S3-compatible service
# path_style = false        # s3: bucket in the path (most non-AWS servers)
# request_timeout = "30s"   # s3: one attempt of one request
# image_interval = "1h"     # s3: full metadata image; changes ship at every checkpoint

[cache]
max_dirty = "{max_dirty}"          # writers wait while this much is unflushed
memory = "{memory}"          # chunks kept in memory for reads
disk = "{disk}"             # disk cache for a remote backend
readahead = "{readahead}"        # fetched ahead of sequential readers, remote backend
flush_interval = "{flush}"      # dirty data older than this is flushed
dirty_wait_timeout = "0"   # "0": writers wait for space forever

[storage]
block_size = "{block}"        # new file systems' block (dedup unit)
pack_size = "{pack}"        # pack objects' target size
wal_segment_size = "{seg}"
compression = "zstd"        # or "lz4", "off"; chunks that do not shrink are stored plain
compression_level = 1       # zstd level (-7 to 22)
encryption = "off"          # or "aes-256-gcm", "xchacha20-poly1305": chunks and metadata sealed before upload
#encryption_key_file = "/etc/storfs/storfs.key"   # from `storfs key generate`; or STORFS_ENCRYPTION_KEY

[lifecycle]                 # Standard / Infrequent Access by access age (reads and writes of data)
transition_to_ia = "30d"    # "off", or any duration
transition_to_standard = "after_1_access"   # or "never"
snapshot_transition_to_ia = "1d"   # data only snapshots still use
interval = "1h"             # tiering pass; "0": only on `storfs tier run`
ia_min_age = "30d"          # IA packs younger than this are not rewritten unless read again
# [lifecycle.fs.projects]   # per file system overrides of the three transitions
# transition_to_ia = "7d"
# [lifecycle.volumes.vol1]  # per volume overrides
# transition_to_ia = "off"

[cost]                      # prices for `storfs cost` (USD per GB = 2^30 bytes; defaults: S3 us-east-1)
standard_gb_month = 0.023   # local backend: what a GB of backend.path costs
ia_gb_month = 0.0125        # local backend: what a GB of backend.ia_path costs
# The rest default to S3 us-east-1's with kind = "s3" and to 0 with "local":
# ia_retrieval_gb = 0.01
# put_per_1000 = 0.005      # PUT, COPY, POST, LIST
# get_per_1000 = 0.0004     # GET, HEAD
# ia_put_per_1000 = 0.01
# ia_get_per_1000 = 0.001

[gc]
interval = "{gc}"
repack_threshold = {repack}

[control]
socket = "{socket}"

[metrics]
listen = "127.0.0.1:9567"   # Prometheus text format at /metrics; "off" to disable

[fuse]
threads = {threads}
attr_timeout = "{attr}"
writeback_cache = {wb}       # kernel page cache gathers writes (`storfs mount --writeback-cache`); see SEMANTICS.md

[nfs]
enabled = true
listen = "{nfs}"            # NFSv3, MOUNT, NLM, NSM and the portmapper (NLM, NSM, portmapper on UDP too)
max_connections = {nfs_max}
max_connections_per_client = {nfs_per}   # further connections from the address are closed at once
idle_timeout = "{nfs_idle}"        # a connection with no call this long is closed; clients reconnect
portmapper = "auto"         # port 111: "auto" (the host's rpcbind if it runs, else "own"), "rpcbind", "own", "off"
# portmapper_listen = "{pmap}"   # "own": where (default: the NFS address, port 111)

[nfs.default_export]        # every file system /<name>, unless [nfs.exports.<name>] says otherwise
clients = [{clients}]
ro = false
root_squash = false         # as EFS: root on an allowed client is root
all_squash = false
anonuid = 65534
anongid = 65534

[nbd]
enabled = true
listen = "{nbd}"            # block volumes: nbd-client HOST PORT /dev/nbd0 -N <volume>
max_connections = {nbd_max}
max_connections_per_client = {nbd_per}
handshake_timeout = "{nbd_hs}"    # a connection that has not attached by then is closed
tls = "off"                 # "allow" or "require": NBD_OPT_STARTTLS with tls_cert and tls_key (PEM)
#tls_cert = "/etc/storfs/nbd-cert.pem"
#tls_key = "/etc/storfs/nbd-key.pem"
#tls_client_ca = "/etc/storfs/nbd-clients-ca.pem"   # mutual TLS: only clients with a certificate from this CA

[nbd.default_volume]        # every volume, unless [nbd.volumes.<name>] says otherwise
clients = [{clients}]
ro = false

[limits]                    # what NFS and NBD clients can make the daemon hold
buffered = "{buffered}"          # request and reply bytes in memory, all clients
buffered_per_client = "{buffered_client}"  # the same for one client address
request_timeout = "{req_timeout}"      # a request that started arriving must be complete by then

[locks]                     # fcntl locks on FUSE mounts and NFS clients' locks (NLM v4): one table
enabled = true
grace_period = "{grace}"          # after a restart only reclaims are granted this long
held_per_client = {held}
waiting_per_client = {waiting}
"#,
            data_dir = d.data_dir.display(),
            max_dirty = d.cache.max_dirty,
            memory = d.cache.memory,
            disk = d.cache.disk,
            readahead = d.cache.readahead,
            flush = humantime::format_duration(d.cache.flush_interval.0),
            block = d.storage.block_size,
            pack = d.storage.pack_size,
            seg = d.storage.wal_segment_size,
            gc = humantime::format_duration(d.gc.interval.0),
            repack = d.gc.repack_threshold,
            socket = d.control.socket.display(),
            threads = d.fuse.threads,
            attr = humantime::format_duration(d.fuse.attr_timeout.0),
            wb = d.fuse.writeback_cache,
            nfs = d.nfs.listen,
            clients =
                d.nfs.default_export.clients.iter().map(|n| format!("\"{}\"", n.0)).collect::<Vec<_>>().join(", "),
            nbd = d.nbd.listen,
            nfs_max = d.nfs.max_connections,
            nfs_per = d.nfs.max_connections_per_client,
            nfs_idle = humantime::format_duration(d.nfs.idle_timeout.0),
            nbd_max = d.nbd.max_connections,
            nbd_per = d.nbd.max_connections_per_client,
            nbd_hs = humantime::format_duration(d.nbd.handshake_timeout.0),
            buffered = d.limits.buffered,
            buffered_client = d.limits.buffered_per_client,
            req_timeout = humantime::format_duration(d.limits.request_timeout.0),
            pmap = d.nfs.portmapper_addr(),
            grace = humantime::format_duration(d.locks.grace_period.0),
            held = d.locks.held_per_client,
            waiting = d.locks.waiting_per_client,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let c = Config::parse(text, Path::new("test.toml"))?;
        c.validate(Path::new("test.toml"))?;
        Ok(c)
    }

    const MINIMAL: &str = "data_dir = \"/srv/storfs\"\n[control]\nsocket = \"/run/s.sock\"\n";

    #[test]
    fn encryption_needs_a_key_and_reads_it_from_the_key_file() {
        let err = parse("[storage]\nencryption = \"aes-256-gcm\"\n").expect_err("no key").to_string();
        assert!(err.contains("storage.encryption") && err.contains("no key"), "{err}");
        let err = parse("[storage]\nencryption = \"rot13\"\n").expect_err("unknown cipher").to_string();
        assert!(err.contains("storage.encryption"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let key = storfs::chunk::seal::Key::generate();
        let file = dir.path().join("k");
        std::fs::write(&file, format!("# made by a test\n{}\n", &*key.to_hex())).expect("key file");
        let text =
            format!("[storage]\nencryption = \"xchacha20-poly1305\"\nencryption_key_file = \"{}\"\n", file.display());
        let keys = parse(&text).expect("config").keyring().expect("keys");
        assert_eq!(keys.current(), Some(key.id()));
        std::fs::write(&file, "not a key\n").expect("bad key file");
        let err = parse(&text).expect("config").keyring().expect_err("bad key").to_string();
        assert!(err.contains(&file.display().to_string()) && err.contains("64 hex digits"), "{err}");
        assert_eq!(parse("").expect("defaults").keyring().expect("off").current(), None);
    }

    #[test]
    fn template_parses_to_the_defaults() {
        let c = parse(&Config::template()).expect("template");
        assert_eq!(c, Config::default());
    }

    /// A file with only the keys an operator changes (the README's
    /// snippets) takes the built-in defaults for the rest.
    #[test]
    fn every_key_has_a_default() {
        assert_eq!(parse("").expect("empty config"), Config::default());
    }

    /// The shipped config is what `storfs init` prints for root, so it
    /// cannot fall behind the keys (regenerate: `storfs init > systemd/storfs.toml`).
    #[test]
    fn shipped_example_is_the_template() {
        let for_root = Config::template()
            .replace(&default_data_dir().display().to_string(), "/var/lib/storfs")
            .replace(&default_socket().display().to_string(), "/run/storfs/storfs.sock");
        assert_eq!(include_str!("../systemd/storfs.toml"), for_root);
    }

    /// The key's old name still works (with a warning in the log).
    #[test]
    fn the_old_name_of_image_interval_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[backend]\nsnapshot_interval = \"10m\"\n").expect("write");
        let c = Config::load(Some(&path)).expect("load");
        assert_eq!(c.backend.image_interval, Dur(Duration::from_secs(600)));
        assert_eq!(c.backend.snapshot_interval, None);
    }

    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../systemd/storfs.toml");
        let c = parse(text).expect("systemd/storfs.toml");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/storfs"));
        assert_eq!(c.control.socket, PathBuf::from("/run/storfs/storfs.sock"));
    }

    #[test]
    fn metrics_listen_is_an_address_or_off() {
        let c = parse(&format!("{MINIMAL}[metrics]\nlisten = \"off\"\n")).expect("off");
        assert_eq!(c.metrics.listen, MetricsListen(None));
        let c = parse(&format!("{MINIMAL}[metrics]\nlisten = \"0.0.0.0:9100\"\n")).expect("addr");
        assert_eq!(c.metrics.listen.0, Some(SocketAddr::from(([0, 0, 0, 0], 9100))));
        assert_eq!(parse(MINIMAL).expect("default").metrics, MetricsConfig::default());
        let e = parse(&format!("{MINIMAL}[metrics]\nlisten = \"on\"\n")).expect_err("bad").to_string();
        assert!(e.contains("metrics.listen") && e.contains("\"off\""), "{e}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!("4GiB".parse::<Size>(), Ok(Size(4 << 30)));
        assert_eq!("512 MiB".parse::<Size>(), Ok(Size(512 << 20)));
        assert_eq!("65536".parse::<Size>(), Ok(Size(65536)));
        assert!("4XB".parse::<Size>().is_err());
        assert_eq!(Size(4 << 30).to_string(), "4GiB");
        assert_eq!("250ms".parse::<Dur>(), Ok(Dur(Duration::from_millis(250))));
        assert_eq!("0".parse::<Dur>(), Ok(Dur(Duration::ZERO)));
        assert!("soon".parse::<Dur>().is_err());
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse(&format!("{MINIMAL}[cache]\nmax_dirty = \"4XB\"\n")).expect_err("bad size").to_string();
        assert!(e.contains("cache.max_dirty") && e.contains("4XB"), "{e}");
        let e = parse(&format!("{MINIMAL}[cache]\nmax_dirt = \"4GiB\"\n")).expect_err("typo").to_string();
        assert!(e.contains("max_dirt"), "{e}");
        let e = parse(&format!("{MINIMAL}[nfs]\nlisten = \"nowhere\"\n")).expect_err("addr").to_string();
        assert!(e.contains("nfs.listen"), "{e}");
        let e = parse(&format!("{MINIMAL}[nfs.exports.projects]\nclients = [\"10.0.0.0/33\"]\n"))
            .expect_err("cidr")
            .to_string();
        assert!(e.contains("nfs.exports.projects.clients") && e.contains("10.0.0.0/33"), "{e}");
        let e = parse(&format!("{MINIMAL}[nfs.default_export]\nsquash = true\n")).expect_err("key").to_string();
        assert!(e.contains("squash"), "{e}");
        let e = parse(&format!("{MINIMAL}[storage]\nblock_size = \"3000\"\n")).expect_err("bs").to_string();
        assert!(e.contains("storage.block_size"), "{e}");
        let e = parse(&format!("{MINIMAL}[backend]\nkind = \"s3\"\n")).expect_err("s3").to_string();
        assert!(e.contains("backend.bucket") && e.contains("required"), "{e}");
        let e = parse(&format!("{MINIMAL}[backend]\nkind = \"s3\"\nbucket = \"Bad_Name\"\n"))
            .expect_err("name")
            .to_string();
        assert!(e.contains("backend.bucket") && e.contains("Bad_Name"), "{e}");
        let e = parse(&format!("{MINIMAL}[backend]\nkind = \"s3\"\nbucket = \"b1x\"\nprefix = \"a\"\n"))
            .expect_err("prefix")
            .to_string();
        assert!(e.contains("backend.prefix"), "{e}");
        let e = parse(&format!("{MINIMAL}[backend]\nkind = \"s3\"\nbucket = \"b1x\"\nendpoint = \"localhost:9000\"\n"))
            .expect_err("endpoint")
            .to_string();
        assert!(e.contains("backend.endpoint"), "{e}");
        let ok = format!(
            "{MINIMAL}[backend]\nkind = \"s3\"\nbucket = \"my-bucket\"\nprefix = \"h1/\"\nendpoint = \"http://127.0.0.1:9000\"\npath_style = true\n"
        );
        let c = parse(&ok).expect("valid s3 config");
        assert_eq!(c.backend.bucket.as_deref(), Some("my-bucket"));
        assert!(c.backend.path_style);
        let e = parse("data_dir = \"relative\"\n[control]\nsocket = \"/s\"\n").expect_err("rel").to_string();
        assert!(e.contains("data_dir"), "{e}");
        let e = parse("data_dir = [1]\n").expect_err("type").to_string();
        assert!(e.contains("data_dir"), "{e}");
        let e = parse("this is not toml").expect_err("syntax").to_string();
        assert!(e.contains("test.toml"), "{e}");
        let e = parse(&format!("{MINIMAL}[gc]\nrepack_threshold = 1.5\n")).expect_err("range").to_string();
        assert!(e.contains("gc.repack_threshold"), "{e}");
    }

    #[test]
    fn exports_by_file_system() {
        let c = parse(&format!(
            "{MINIMAL}[nfs.exports.projects]\nclients = [\"10.0.2.0/24\", \"192.0.2.7\"]\nro = true\nroot_squash = true\n"
        ))
        .expect("exports");
        let ex = c.nfs.exports();
        let p = ex.options("projects");
        assert!(p.read_only && p.root_squash);
        assert!(p.allows("10.0.2.15".parse().expect("ip")));
        assert!(p.allows("192.0.2.7".parse().expect("ip")));
        assert!(!p.allows("127.0.0.1".parse().expect("ip")));
        assert!(ex.options("default").allows("127.0.0.1".parse().expect("ip")), "others keep the defaults");
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).expect("minimal");
        assert_eq!(c.cache, CacheConfig::default());
        assert_eq!(c.backend_paths().0, PathBuf::from("/srv/storfs/objects/standard"));
    }
}
