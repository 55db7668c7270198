//! The cost ledger and `storfs cost`.
//!
//! What the bill depends on is counted in the metadata store, per calendar
//! month (UTC), in counters named `cost.<YYYY-MM>.<quantity>`: KiB-seconds
//! stored per class (integrated by [`Ledger::sample`], every minute and
//! before each report, from the pack table's sizes), requests by type and
//! class, bytes retrieved from IA, and early deletions of IA packs (KiB ×
//! days short of the minimum life). The counters are plain rows, so they
//! survive restarts and ship with the metadata; requests made after the
//! last sample before a crash are not counted (at most a minute's).
//! The report turns quantities into dollars with the configured prices,
//! projects the month, and attributes today's stored bytes to each file
//! system and volume.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::tier::{ClassBytes, Policies};
use super::{Result, Store};
use crate::backend::{BackendStats, StorageClass};
use crate::chunk::unix_now;
use crate::meta::{MetaRead, WriteTx};

/// `[cost]`: the price table `storfs cost` bills with (US dollars).
/// Storage defaults: S3 us-east-1 (for the local backend: what a GB of
/// each directory costs). Request and retrieval prices left out default to
/// S3 us-east-1's with the S3 backend and to 0 with the local one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostConfig {
    /// Standard storage, per GB-month.
    pub standard_gb_month: f64,
    /// Infrequent-Access storage, per GB-month.
    pub ia_gb_month: f64,
    /// Data retrieved from IA, per GB.
    pub ia_retrieval_gb: Option<f64>,
    /// PUT, COPY, POST and LIST to Standard, per 1,000.
    pub put_per_1000: Option<f64>,
    /// GET (and HEAD) from Standard, per 1,000.
    pub get_per_1000: Option<f64>,
    /// PUT to IA, per 1,000.
    pub ia_put_per_1000: Option<f64>,
    /// GET from IA, per 1,000.
    pub ia_get_per_1000: Option<f64>,
}

impl Default for CostConfig {
    fn default() -> Self {
        CostConfig {
            standard_gb_month: 0.023,
            ia_gb_month: 0.0125,
            ia_retrieval_gb: None,
            put_per_1000: None,
            get_per_1000: None,
            ia_put_per_1000: None,
            ia_get_per_1000: None,
        }
    }
}

/// Every price, resolved for one backend.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prices {
    /// Standard storage, per GB-month.
    pub standard_gb_month: f64,
    /// Infrequent-Access storage, per GB-month.
    pub ia_gb_month: f64,
    /// Data retrieved from IA, per GB.
    pub ia_retrieval_gb: f64,
    /// PUT, COPY, POST and LIST to Standard, per 1,000.
    pub put_per_1000: f64,
    /// GET and HEAD from Standard, per 1,000.
    pub get_per_1000: f64,
    /// PUT to IA, per 1,000.
    pub ia_put_per_1000: f64,
    /// GET from IA, per 1,000.
    pub ia_get_per_1000: f64,
}

impl CostConfig {
    /// The prices for the S3 backend (`s3`) or the local one.
    pub fn prices(&self, s3: bool) -> Prices {
        let or = |v: Option<f64>, aws: f64| v.unwrap_or(if s3 { aws } else { 0.0 });
        Prices {
            standard_gb_month: self.standard_gb_month,
            ia_gb_month: self.ia_gb_month,
            ia_retrieval_gb: or(self.ia_retrieval_gb, 0.01),
            put_per_1000: or(self.put_per_1000, 0.005),
            get_per_1000: or(self.get_per_1000, 0.0004),
            ia_put_per_1000: or(self.ia_put_per_1000, 0.01),
            ia_get_per_1000: or(self.ia_get_per_1000, 0.001),
        }
    }
}

/// Bytes in a GB as S3 bills it (2^30).
const GB: f64 = (1u64 << 30) as f64;

/// The calendar month holding `t` (UTC): its name, first second, and length.
pub fn month_of(t: SystemTime) -> (String, u64, u64) {
    let text = humantime::format_rfc3339_seconds(t).to_string();
    let (y, m): (i32, u32) = (text[..4].parse().unwrap_or(1970), text[5..7].parse().unwrap_or(1));
    let start = |y: i32, m: u32| {
        humantime::parse_rfc3339(&format!("{y:04}-{m:02}-01T00:00:00Z"))
            .ok()
            .and_then(|s| s.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    };
    let first = start(y, m);
    let next = if m == 12 { start(y + 1, 1) } else { start(y, m + 1) };
    (text[..7].to_string(), first, next.saturating_sub(first).max(1))
}

fn key(month: &str, what: &str) -> String {
    format!("cost.{month}.{what}")
}

/// Counts an IA pack deleted `age` seconds after it was written, before
/// `min_age`: billed as if it had stayed the rest of that time.
pub fn charge_early_deletion(tx: &WriteTx, size: u64, age: u64, min_age: Duration) -> crate::meta::Result<()> {
    let short = min_age.as_secs().saturating_sub(age);
    if short == 0 {
        return Ok(());
    }
    let (month, _, _) = month_of(SystemTime::now());
    let kib_days = (size / 1024).saturating_mul(short) / 86400;
    tx.add_counter(&key(&month, "early_kib_days"), kib_days as i64)
}

/// Request counters as last folded into the ledger.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    puts: u64,
    gets: u64,
    lists: u64,
    heads: u64,
    deletes: u64,
    ia_puts: u64,
    ia_gets: u64,
    ia_bytes: u64,
}

/// Folds the daemon's in-memory counters into the month's ledger.
#[derive(Debug, Default)]
pub struct Ledger {
    seen: Mutex<Seen>,
}

impl Ledger {
    /// Adds the storage held since the last sample and the requests made
    /// since, to the current month.
    pub fn sample(&self, store: &Store, backend: &BackendStats) -> Result<()> {
        let mut seen = self.seen.lock();
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let cache = store.chunks.stats();
        let now_seen = Seen {
            puts: l(&backend.puts),
            gets: l(&backend.gets),
            lists: l(&backend.lists),
            heads: l(&backend.heads),
            deletes: l(&backend.deletes),
            ia_puts: l(&store.stats.ia_puts),
            ia_gets: l(&cache.ia_gets),
            ia_bytes: l(&cache.ia_bytes),
        };
        let d = |a: u64, b: u64| a.saturating_sub(b) as i64;
        let (month, first, _) = month_of(SystemTime::now());
        let now = unix_now();
        let tx = store.meta.write()?;
        let mut bytes = ClassBytes::default();
        for (_, p) in tx.packs()? {
            match StorageClass::from_code(p.class) {
                Some(StorageClass::InfrequentAccess) => bytes.infrequent += p.size,
                _ => bytes.standard += p.size,
            }
        }
        let at = key(&month, "sampled_at");
        let last = tx.counter(&at)?;
        let since = if last == 0 { now } else { last.max(first) };
        let secs = now.saturating_sub(since) as i64;
        let k = |w: &str| key(&month, w);
        tx.add_counter(&k("kib_s.standard"), (bytes.standard / 1024) as i64 * secs)?;
        tx.add_counter(&k("kib_s.infrequent"), (bytes.infrequent / 1024) as i64 * secs)?;
        let ia_puts = d(now_seen.ia_puts, seen.ia_puts);
        let ia_gets = d(now_seen.ia_gets, seen.ia_gets);
        tx.add_counter(&k("put.infrequent"), ia_puts)?;
        tx.add_counter(&k("put.standard"), (d(now_seen.puts, seen.puts) - ia_puts).max(0))?;
        tx.add_counter(&k("get.infrequent"), ia_gets)?;
        tx.add_counter(&k("get.standard"), (d(now_seen.gets, seen.gets) - ia_gets).max(0))?;
        tx.add_counter(&k("list"), d(now_seen.lists, seen.lists))?;
        tx.add_counter(&k("head"), d(now_seen.heads, seen.heads))?;
        tx.add_counter(&k("delete"), d(now_seen.deletes, seen.deletes))?;
        tx.add_counter(&k("ia_retrieved_bytes"), d(now_seen.ia_bytes, seen.ia_bytes))?;
        tx.set_counter(&at, now)?;
        tx.commit()?;
        *seen = now_seen;
        Ok(())
    }
}

/// Quantities and dollars of one period.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Bill {
    /// GB-months stored, by class.
    pub gb_months_standard: f64,
    /// See `gb_months_standard`.
    pub gb_months_infrequent: f64,
    /// PUT requests to Standard (LIST counted in `list`).
    pub put_standard: f64,
    /// PUT requests to IA.
    pub put_infrequent: f64,
    /// GET requests from Standard.
    pub get_standard: f64,
    /// GET requests from IA.
    pub get_infrequent: f64,
    /// LIST requests (billed as PUT).
    pub list: f64,
    /// HEAD requests (billed as GET).
    pub head: f64,
    /// DELETE requests (free).
    pub delete: f64,
    /// GB retrieved from IA.
    pub ia_retrieved_gb: f64,
    /// IA GB-months billed for packs deleted before their minimum life.
    pub early_deletion_gb_months: f64,
    /// Dollars: Standard storage.
    pub usd_storage_standard: f64,
    /// Dollars: IA storage.
    pub usd_storage_infrequent: f64,
    /// Dollars: requests.
    pub usd_requests: f64,
    /// Dollars: IA retrieval.
    pub usd_ia_retrieval: f64,
    /// Dollars: early deletion.
    pub usd_early_deletion: f64,
    /// Dollars in all.
    pub usd_total: f64,
}

impl Bill {
    fn price(&mut self, p: &Prices) {
        self.usd_storage_standard = self.gb_months_standard * p.standard_gb_month;
        self.usd_storage_infrequent = self.gb_months_infrequent * p.ia_gb_month;
        self.usd_requests = ((self.put_standard + self.list) * p.put_per_1000
            + (self.get_standard + self.head) * p.get_per_1000
            + self.put_infrequent * p.ia_put_per_1000
            + self.get_infrequent * p.ia_get_per_1000)
            / 1000.0;
        self.usd_ia_retrieval = self.ia_retrieved_gb * p.ia_retrieval_gb;
        self.usd_early_deletion = self.early_deletion_gb_months * p.ia_gb_month;
        self.usd_total = self.usd_storage_standard
            + self.usd_storage_infrequent
            + self.usd_requests
            + self.usd_ia_retrieval
            + self.usd_early_deletion;
    }
}

/// One file system's or volume's share of today's stored bytes.
#[derive(Debug, Clone, Serialize)]
pub struct ScopeCost {
    /// "fs", "volume" or "deleted".
    pub kind: &'static str,
    /// Name.
    pub name: String,
    /// Stored bytes by class, its snapshots' included.
    pub stored: ClassBytes,
    /// Of those, bytes only its snapshots use.
    pub snapshot_only: ClassBytes,
    /// What a month of those bytes costs.
    pub monthly_usd: f64,
    /// What the same data would cost a month all in Standard and uncompressed.
    pub all_standard_uncompressed_monthly_usd: f64,
}

/// `storfs cost`.
#[derive(Debug, Clone, Serialize)]
pub struct CostReport {
    /// The month (UTC), "YYYY-MM".
    pub month: String,
    /// Days in it.
    pub days_in_month: f64,
    /// Days of it gone.
    pub elapsed_days: f64,
    /// The prices used.
    pub prices: Prices,
    /// The month so far.
    pub so_far: Bill,
    /// The whole month: so far, plus today's bytes for the rest of it and
    /// requests at the rate so far.
    pub projected: Bill,
    /// Pack bytes stored now, by class.
    pub stored: ClassBytes,
    /// What a month of today's bytes costs.
    pub monthly_usd: f64,
    /// What a month of the same data would cost all in Standard and uncompressed.
    pub all_standard_uncompressed_monthly_usd: f64,
    /// The difference: what tiering and compression save a month.
    pub saving_monthly_usd: f64,
    /// Per file system and volume.
    pub scopes: Vec<ScopeCost>,
}

fn monthly(b: &ClassBytes, p: &Prices) -> f64 {
    b.standard as f64 / GB * p.standard_gb_month + b.infrequent as f64 / GB * p.ia_gb_month
}

impl Store {
    /// The month's bill so far and projected, and today's bytes priced.
    pub fn cost(
        &self,
        ledger: &Ledger,
        backend: &BackendStats,
        prices: &Prices,
        policies: &Policies,
    ) -> Result<CostReport> {
        ledger.sample(self, backend)?;
        let now = SystemTime::now();
        let (month, first, len) = month_of(now);
        let rtx = self.meta.read()?;
        let c = |w: &str| -> Result<f64> { Ok(rtx.counter(&key(&month, w))? as f64) };
        let month_s = len as f64;
        let kib_s_to_gb_months = |v: f64| v * 1024.0 / GB / month_s;
        let mut so_far = Bill {
            gb_months_standard: kib_s_to_gb_months(c("kib_s.standard")?),
            gb_months_infrequent: kib_s_to_gb_months(c("kib_s.infrequent")?),
            put_standard: c("put.standard")?,
            put_infrequent: c("put.infrequent")?,
            get_standard: c("get.standard")?,
            get_infrequent: c("get.infrequent")?,
            list: c("list")?,
            head: c("head")?,
            delete: c("delete")?,
            ia_retrieved_gb: c("ia_retrieved_bytes")? / GB,
            early_deletion_gb_months: c("early_kib_days")? * 1024.0 / GB / (month_s / 86400.0),
            ..Bill::default()
        };
        so_far.price(prices);
        let mut stored = ClassBytes::default();
        for (_, p) in rtx.packs()? {
            match StorageClass::from_code(p.class) {
                Some(StorageClass::InfrequentAccess) => stored.infrequent += p.size,
                _ => stored.standard += p.size,
            }
        }
        drop(rtx);
        let elapsed = unix_now().saturating_sub(first).max(1) as f64;
        let rest = (month_s - elapsed).max(0.0);
        let rate = month_s / elapsed;
        let mut projected = Bill {
            gb_months_standard: so_far.gb_months_standard + stored.standard as f64 / GB * rest / month_s,
            gb_months_infrequent: so_far.gb_months_infrequent + stored.infrequent as f64 / GB * rest / month_s,
            put_standard: so_far.put_standard * rate,
            put_infrequent: so_far.put_infrequent * rate,
            get_standard: so_far.get_standard * rate,
            get_infrequent: so_far.get_infrequent * rate,
            list: so_far.list * rate,
            head: so_far.head * rate,
            delete: so_far.delete * rate,
            ia_retrieved_gb: so_far.ia_retrieved_gb * rate,
            early_deletion_gb_months: so_far.early_deletion_gb_months,
            ..Bill::default()
        };
        projected.price(prices);
        let status = self.tier_status(policies)?;
        let scopes: Vec<ScopeCost> = status
            .scopes
            .iter()
            .map(|s| {
                let all = ClassBytes {
                    standard: s.live.standard + s.snapshot_only.standard,
                    infrequent: s.live.infrequent + s.snapshot_only.infrequent,
                };
                ScopeCost {
                    kind: s.kind,
                    name: s.name.clone(),
                    stored: all,
                    snapshot_only: s.snapshot_only,
                    monthly_usd: monthly(&all, prices),
                    all_standard_uncompressed_monthly_usd: s.plain_bytes as f64 / GB * prices.standard_gb_month,
                }
            })
            .collect();
        let plain: u64 = status.scopes.iter().map(|s| s.plain_bytes).sum();
        let monthly_usd = monthly(&stored, prices);
        let all_standard = plain as f64 / GB * prices.standard_gb_month;
        Ok(CostReport {
            month,
            days_in_month: month_s / 86400.0,
            elapsed_days: elapsed / 86400.0,
            prices: *prices,
            so_far,
            projected,
            stored,
            monthly_usd,
            all_standard_uncompressed_monthly_usd: all_standard,
            saving_monthly_usd: all_standard - monthly_usd,
            scopes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_have_their_calendar_length() {
        let at = |s: &str| humantime::parse_rfc3339(s).expect("time");
        let (m, first, len) = month_of(at("2024-02-10T12:00:00Z"));
        assert_eq!((m.as_str(), len), ("2024-02", 29 * 86400));
        assert_eq!(first, at("2024-02-01T00:00:00Z").duration_since(UNIX_EPOCH).expect("epoch").as_secs());
        assert_eq!(month_of(at("2026-12-31T23:59:59Z")).2, 31 * 86400, "December, rolling into the next year");
        assert_eq!(month_of(at("2025-02-01T00:00:00Z")).2, 28 * 86400);
    }
}
