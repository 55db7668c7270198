//! Encryption at rest: every chunk, every pack index and every metadata
//! object is sealed with an AEAD before it reaches the backend, so whoever
//! holds the bucket (or the local backend's pack files) reads nothing of
//! the data, the names or the sizes of files.
//!
//! Keys are 32 random bytes (`storfs key generate`). No key encrypts
//! anything itself: each pack gets its own key derived from the key and the
//! pack id, and each metadata object one derived from its object name
//! (BLAKE3's key derivation mode), so a nonce never repeats under one key
//! however many chunks are written, and a chunk or a pack moved or swapped
//! inside the bucket fails to open. Each chunk is also authenticated with
//! its chunk id, encoding and length. Nonces are random. A framed chunk is
//! sealed part by part (its table, then each frame, bound to its number),
//! so partial reads open only what they need.
//!
//! A sealed blob: `cipher:u8 key_id:u32 nonce[12 or 24] ciphertext tag[16]`.
//! The key id (the first four bytes of a hash derived from the key) says
//! which of the keys in the key file opens it, so old data stays readable
//! after a new key is put first, until `storfs rekey` rewrites it.

use std::fmt;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use bytes::Bytes;
use chacha20poly1305::XChaCha20Poly1305;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::ChunkId;

/// Flag bit of a chunk's encoding byte (pack index, chunk entry): the
/// stored bytes are a sealed blob around the encoding in the low bits.
pub const SEALED: u8 = 0x80;
/// Bytes before every sealed object's blob (metadata objects).
pub const OBJECT_MAGIC: &[u8; 8] = b"STFSSEAL";
const TAG_LEN: usize = 16;

/// `[storage] encryption`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encryption {
    /// AES-256 in GCM mode (fast with AES-NI).
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
    /// XChaCha20-Poly1305 (fast everywhere; 24-byte nonces).
    #[serde(rename = "xchacha20-poly1305")]
    XChaCha20Poly1305,
    /// Nothing is encrypted.
    #[serde(rename = "off")]
    Off,
}

impl Encryption {
    /// Its code in sealed blobs and pack headers.
    pub fn code(self) -> u8 {
        match self {
            Encryption::Aes256Gcm => 1,
            Encryption::XChaCha20Poly1305 => 2,
            Encryption::Off => 0,
        }
    }

    fn of_code(code: u8) -> Option<Encryption> {
        match code {
            1 => Some(Encryption::Aes256Gcm),
            2 => Some(Encryption::XChaCha20Poly1305),
            _ => None,
        }
    }

    fn nonce_len(self) -> usize {
        match self {
            Encryption::Aes256Gcm => 12,
            Encryption::XChaCha20Poly1305 => 24,
            Encryption::Off => 0,
        }
    }

    /// Bytes a sealed blob adds to what it seals.
    pub fn overhead(self) -> usize {
        1 + 4 + self.nonce_len() + TAG_LEN
    }
}

/// Why a sealed blob did not open, or could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Sealed with a key that is not among the configured ones.
    #[error("sealed with key {0:08x}, which is not configured (encryption_key_file or STORFS_ENCRYPTION_KEY)")]
    UnknownKey(u32),
    /// Authentication failed: damaged, or moved from elsewhere.
    #[error("does not authenticate (damaged, or moved or swapped in the bucket)")]
    Forged,
    /// Too short, or an unknown cipher.
    #[error("is not a sealed blob: {0}")]
    Malformed(String),
    /// A plain object where sealed ones are required.
    #[error("is not encrypted, but encryption is on: refused (it may have been put there by someone else)")]
    Plain,
    /// Sealing asked of a keyring without a current key.
    #[error("encryption is off")]
    Off,
    /// The store and the configured keys do not go together.
    #[error("{0}")]
    Store(String),
}

/// One key: its id and its secret (wiped from memory when dropped).
#[derive(Clone)]
pub struct Key {
    id: u32,
    secret: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:08x})", self.id)
    }
}

impl Key {
    /// A key from its 32 secret bytes.
    pub fn from_secret(secret: [u8; 32]) -> Key {
        let digest = blake3::derive_key("storfs 2026-12-07 key id", &secret);
        let id = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
        Key { id, secret: Zeroizing::new(secret) }
    }

    /// A new random key.
    pub fn generate() -> Key {
        Key::from_secret(rand::random())
    }

    /// Its id: the first four bytes of a hash derived from it (never the key).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The key as written in a key file: 64 hex digits.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(self.secret.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The key of one pack or object: `what` names the use, `of` the pack
    /// id or object name.
    fn derive(&self, what: &str, of: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut material = Zeroizing::new(Vec::with_capacity(32 + of.len()));
        material.extend_from_slice(&self.secret[..]);
        material.extend_from_slice(of);
        Zeroizing::new(blake3::derive_key(what, &material))
    }
}

/// Parses keys as a key file holds them: one key per line as 64 hex
/// digits, the current key first; blank lines and lines starting with `#`
/// are skipped. Keys may also be separated by commas (the environment).
pub fn parse_keys(text: &str) -> Result<Vec<Key>, String> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        for word in line.split([',', ' ', '\t']).filter(|w| !w.is_empty()) {
            let bytes = word.as_bytes();
            if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
                return Err(format!("line {}: a key is 64 hex digits (made by `storfs key generate`)", n + 1));
            }
            let mut secret = Zeroizing::new([0u8; 32]);
            for (i, pair) in bytes.chunks(2).enumerate() {
                let hex = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
                secret[i] = u8::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
            }
            let key = Key::from_secret(*secret);
            if keys.iter().any(|k: &Key| k.id == key.id) {
                return Err(format!("line {}: key {:08x} is listed twice", n + 1, key.id));
            }
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err("no key in it (one key per line, 64 hex digits, current key first)".into());
    }
    Ok(keys)
}

/// The keys a daemon seals and opens with: it seals with the first (the
/// current key) under its cipher, and opens what any of them sealed.
#[derive(Debug, Clone)]
pub struct Keyring {
    cipher: Encryption,
    keys: Vec<Key>,
}

impl Default for Keyring {
    fn default() -> Self {
        Keyring::off()
    }
}

impl Keyring {
    /// No encryption: chunks and objects are stored plain.
    pub fn off() -> Keyring {
        Keyring { cipher: Encryption::Off, keys: Vec::new() }
    }

    /// Seals with `keys[0]` under `cipher`; opens with any of `keys`. With
    /// `cipher` off, keys are still used to open what they sealed.
    pub fn new(cipher: Encryption, keys: Vec<Key>) -> Result<Keyring, String> {
        if cipher != Encryption::Off && keys.is_empty() {
            return Err("encryption is on but no key is configured".into());
        }
        Ok(Keyring { cipher, keys })
    }

    /// True when new chunks and objects are sealed.
    pub fn sealing(&self) -> bool {
        self.cipher != Encryption::Off
    }

    /// The cipher new data is sealed with.
    pub fn cipher(&self) -> Encryption {
        self.cipher
    }

    /// The id of the key new data is sealed with.
    pub fn current(&self) -> Option<u32> {
        if self.sealing() { self.keys.first().map(|k| k.id) } else { None }
    }

    /// Ids of every configured key.
    pub fn ids(&self) -> Vec<u32> {
        self.keys.iter().map(|k| k.id).collect()
    }

    fn key(&self, id: u32) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Appends to `out` the blob sealing `plain` under the current key's
    /// derivation for (`what`, `of`), authenticating `aad` with it.
    fn seal(&self, what: &str, of: &[u8], aad: &[u8], plain: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        let (Some(key), true) = (self.keys.first(), self.sealing()) else { return Err(SealError::Off) };
        let cipher = self.cipher;
        let derived = key.derive(what, of);
        out.push(cipher.code());
        out.extend_from_slice(&key.id.to_le_bytes());
        let nonce_at = out.len();
        let mut nonce = [0u8; 24];
        rand::fill(&mut nonce[..]);
        out.extend_from_slice(&nonce[..cipher.nonce_len()]);
        let body = out.len();
        out.extend_from_slice(plain);
        let (head, buf) = out.split_at_mut(body);
        let nonce = &head[nonce_at..];
        let tag = match cipher {
            Encryption::Aes256Gcm => Aes256Gcm::new((&*derived).into())
                .encrypt_in_place_detached(aes_gcm::Nonce::from_slice(nonce), aad, buf)
                .map(|t| t.to_vec()),
            Encryption::XChaCha20Poly1305 => XChaCha20Poly1305::new((&*derived).into())
                .encrypt_in_place_detached(chacha20poly1305::XNonce::from_slice(nonce), aad, buf)
                .map(|t| t.to_vec()),
            Encryption::Off => return Err(SealError::Off),
        }
        .map_err(|_| SealError::Malformed("the cipher refused the input".into()))?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// The plain bytes of a blob made by [`Keyring::seal`] with the same
    /// (`what`, `of`, `aad`).
    fn open(&self, what: &str, of: &[u8], aad: &[u8], blob: &[u8]) -> Result<Vec<u8>, SealError> {
        let (&code, rest) = blob.split_first().ok_or_else(|| SealError::Malformed("empty".into()))?;
        let cipher =
            Encryption::of_code(code).ok_or_else(|| SealError::Malformed(format!("unknown cipher code {code}")))?;
        if rest.len() < 4 + cipher.nonce_len() + TAG_LEN {
            return Err(SealError::Malformed(format!("{} bytes is too short", blob.len())));
        }
        let id = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let key = self.key(id).ok_or(SealError::UnknownKey(id))?;
        let (nonce, sealed) = rest[4..].split_at(cipher.nonce_len());
        let (body, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let mut buf = body.to_vec();
        let derived = key.derive(what, of);
        let opened = match cipher {
            Encryption::Aes256Gcm => Aes256Gcm::new((&*derived).into()).decrypt_in_place_detached(
                aes_gcm::Nonce::from_slice(nonce),
                aad,
                &mut buf,
                aes_gcm::Tag::from_slice(tag),
            ),
            Encryption::XChaCha20Poly1305 => XChaCha20Poly1305::new((&*derived).into()).decrypt_in_place_detached(
                chacha20poly1305::XNonce::from_slice(nonce),
                aad,
                &mut buf,
                chacha20poly1305::Tag::from_slice(tag),
            ),
            Encryption::Off => return Err(SealError::Malformed("cipher off".into())),
        };
        opened.map_err(|_| SealError::Forged)?;
        Ok(buf)
    }

    /// The key id a blob was sealed with (bytes 1..5), if it is one.
    pub fn blob_key(blob: &[u8]) -> Option<u32> {
        let b = blob.get(..5)?;
        Encryption::of_code(b[0])?;
        Some(u32::from_le_bytes([b[1], b[2], b[3], b[4]]))
    }

    /// Seals the stored bytes of chunk `id` (encoded as `flags`, `raw_len`
    /// bytes plain) for pack `pack`, appending the blob to `out`.
    pub fn seal_chunk(
        &self,
        pack: u64,
        id: &ChunkId,
        flags: u8,
        raw_len: u32,
        stored: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        self.seal(PACK_KEY, &pack.to_le_bytes(), &chunk_aad(id, flags, raw_len), stored, out)
    }

    /// Seals a framed chunk (`stored`: its table, then its frames) part by
    /// part: the table, then each frame, each its own blob, so a reader of
    /// part of the chunk opens only the table and the frames it needs.
    pub fn seal_framed(
        &self,
        pack: u64,
        id: &ChunkId,
        raw_len: u32,
        stored: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        let t = super::frames::Table::parse(stored, u64::from(raw_len))
            .map_err(|_| SealError::Malformed("a framed chunk without its table".into()))?;
        let of = pack.to_le_bytes();
        self.seal(PACK_KEY, &of, &part_aad(id, raw_len, TABLE_PART), &stored[..t.head()], out)?;
        for i in 0..t.count() {
            let r = t.stored_range(i);
            let part = stored.get(r).ok_or_else(|| SealError::Malformed("a frame past the chunk's end".into()))?;
            self.seal(PACK_KEY, &of, &part_aad(id, raw_len, i as u32), part, out)?;
        }
        Ok(())
    }

    /// Opens the sealed table at the start of `blob` (which may go on past
    /// it); returns the table's plain bytes and the blobs' overhead.
    pub fn open_framed_table(
        &self,
        pack: u64,
        id: &ChunkId,
        raw_len: u32,
        head: usize,
        blob: &[u8],
    ) -> Result<(Vec<u8>, usize), SealError> {
        let o = blob_overhead(blob)?;
        let table = blob.get(..head + o).ok_or_else(|| SealError::Malformed("cut short".into()))?;
        Ok((self.open(PACK_KEY, &pack.to_le_bytes(), &part_aad(id, raw_len, TABLE_PART), table)?, o))
    }

    /// Opens frame `i` of a sealed framed chunk from its blob.
    pub fn open_framed_part(
        &self,
        pack: u64,
        id: &ChunkId,
        raw_len: u32,
        i: usize,
        blob: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        self.open(PACK_KEY, &pack.to_le_bytes(), &part_aad(id, raw_len, i as u32), blob)
    }

    /// The stored bytes of chunk `id` and their encoding, from the bytes a
    /// pack holds for it (`flags` as the chunk entry has them): unsealed
    /// when [`SEALED`], as they are otherwise.
    pub fn unseal_chunk(
        &self,
        pack: u64,
        id: &ChunkId,
        flags: u8,
        raw_len: u32,
        stored: Bytes,
    ) -> Result<(Bytes, u8), SealError> {
        if flags & SEALED == 0 {
            return Ok((stored, flags));
        }
        let inner = flags & !SEALED;
        if inner == super::codec::FRAMED {
            return self.unseal_framed(pack, id, raw_len, &stored).map(|b| (Bytes::from(b), inner));
        }
        let plain = self.open(PACK_KEY, &pack.to_le_bytes(), &chunk_aad(id, inner, raw_len), &stored)?;
        Ok((Bytes::from(plain), inner))
    }

    /// A whole sealed framed chunk, opened part by part back into its
    /// table and frames.
    fn unseal_framed(&self, pack: u64, id: &ChunkId, raw_len: u32, stored: &[u8]) -> Result<Vec<u8>, SealError> {
        let bad = |why: &str| SealError::Malformed(why.to_string());
        let head = super::frames::table_len(u64::from(raw_len));
        let (table, o) = self.open_framed_table(pack, id, raw_len, head, stored)?;
        let t = super::frames::Table::parse(&table, u64::from(raw_len)).map_err(|_| bad("no frame table inside"))?;
        if t.head() != table.len() || t.stored_len() + (t.count() + 1) * o != stored.len() {
            return Err(bad("its length disagrees with its frame table"));
        }
        let mut out = Vec::with_capacity(t.stored_len());
        out.extend_from_slice(&table);
        for i in 0..t.count() {
            let r = t.stored_range(i);
            let blob = stored.get(r.start + (i + 1) * o..r.end + (i + 2) * o).ok_or_else(|| bad("cut short"))?;
            out.extend_from_slice(&self.open_framed_part(pack, id, raw_len, i, blob)?);
        }
        Ok(out)
    }

    /// The plain bytes of chunk `id` from what pack `pack` holds for it,
    /// checked against the id.
    pub fn open_chunk(
        &self,
        pack: u64,
        id: &ChunkId,
        flags: u8,
        stored: Bytes,
        raw_len: usize,
    ) -> Result<Bytes, String> {
        let (inner, flags) = self.unseal_chunk(pack, id, flags, raw_len as u32, stored).map_err(|e| e.to_string())?;
        super::codec::open(id, flags, inner, raw_len)
    }

    /// Seals a pack's index.
    pub fn seal_index(&self, pack: u64, index: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        self.seal(PACK_KEY, &pack.to_le_bytes(), INDEX_AAD, index, out)
    }

    /// Opens a pack's sealed index.
    pub fn open_index(&self, pack: u64, blob: &[u8]) -> Result<Vec<u8>, SealError> {
        self.open(PACK_KEY, &pack.to_le_bytes(), INDEX_AAD, blob)
    }

    /// The bytes to store as object `name` (a metadata object): sealed
    /// behind [`OBJECT_MAGIC`] when sealing, `body` itself otherwise.
    pub fn seal_object(&self, name: &str, body: Vec<u8>) -> Result<Vec<u8>, SealError> {
        if !self.sealing() {
            return Ok(body);
        }
        let mut out = Vec::with_capacity(body.len() + 8 + self.cipher.overhead());
        out.extend_from_slice(OBJECT_MAGIC);
        self.seal(OBJECT_KEY, name.as_bytes(), name.as_bytes(), &body, &mut out)?;
        Ok(out)
    }

    /// The body of object `name` as [`Keyring::seal_object`] stored it. A
    /// plain object is refused while sealing: it was not written by this
    /// store since encryption was turned on, or someone replaced it.
    pub fn open_object(&self, name: &str, stored: &[u8]) -> Result<Vec<u8>, SealError> {
        match stored.strip_prefix(OBJECT_MAGIC) {
            Some(blob) => self.open(OBJECT_KEY, name.as_bytes(), name.as_bytes(), blob),
            None if self.sealing() => Err(SealError::Plain),
            None => Ok(stored.to_vec()),
        }
    }

    /// The key id a stored object was sealed with; `None` when it is plain.
    pub fn object_key(stored: &[u8]) -> Option<u32> {
        Keyring::blob_key(stored.strip_prefix(OBJECT_MAGIC)?)
    }
}

/// Key derivation contexts (BLAKE3 `derive_key`): globally unique strings.
const PACK_KEY: &str = "storfs 2026-12-07 pack key";
const OBJECT_KEY: &str = "storfs 2026-12-07 object key";
const INDEX_AAD: &[u8] = b"pack index";

/// The part number of a framed chunk's table.
const TABLE_PART: u32 = u32::MAX;

/// Associated data of part `part` of a sealed framed chunk.
fn part_aad(id: &ChunkId, raw_len: u32, part: u32) -> [u8; 41] {
    let mut aad = [0u8; 41];
    aad[..37].copy_from_slice(&chunk_aad(id, super::codec::FRAMED, raw_len));
    aad[37..].copy_from_slice(&part.to_le_bytes());
    aad
}

/// The overhead of the blob starting `blob`, from its cipher code.
pub fn blob_overhead(blob: &[u8]) -> Result<usize, SealError> {
    let code = *blob.first().ok_or_else(|| SealError::Malformed("empty".into()))?;
    Encryption::of_code(code)
        .map(Encryption::overhead)
        .ok_or_else(|| SealError::Malformed(format!("unknown cipher code {code}")))
}

/// Most bytes a sealed blob adds (the reader of a sealed table asks for this
/// much beyond it, then learns the real overhead from the blob).
pub const MAX_OVERHEAD: usize = 1 + 4 + 24 + TAG_LEN;

fn chunk_aad(id: &ChunkId, flags: u8, raw_len: u32) -> [u8; 37] {
    let mut aad = [0u8; 37];
    aad[..32].copy_from_slice(&id.0);
    aad[32] = flags;
    aad[33..].copy_from_slice(&raw_len.to_le_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(cipher: Encryption) -> Keyring {
        Keyring::new(cipher, vec![Key::generate()]).expect("ring")
    }

    #[test]
    fn chunks_open_only_where_they_were_sealed() {
        for cipher in [Encryption::Aes256Gcm, Encryption::XChaCha20Poly1305] {
            let k = ring(cipher);
            let data = b"the bytes of one chunk".to_vec();
            let id = ChunkId::of(&data);
            let mut blob = Vec::new();
            k.seal_chunk(7, &id, 0, data.len() as u32, &data, &mut blob).expect("seal");
            assert_eq!(blob.len(), data.len() + cipher.overhead());
            assert!(!blob.windows(8).any(|w| w == b"the byte"), "{cipher:?}: plain text in the blob");
            let b = Bytes::from(blob.clone());
            let plain = k.open_chunk(7, &id, SEALED, b.clone(), data.len()).expect("open");
            assert_eq!(&plain[..], &data[..]);
            // Another pack, another id, another encoding or length: refused.
            assert!(k.unseal_chunk(8, &id, SEALED, data.len() as u32, b.clone()).is_err());
            let other = ChunkId::of(b"else");
            assert_eq!(k.unseal_chunk(7, &other, SEALED, data.len() as u32, b.clone()), Err(SealError::Forged));
            assert!(k.unseal_chunk(7, &id, SEALED | 1, data.len() as u32, b.clone()).is_err());
            assert!(k.unseal_chunk(7, &id, SEALED, data.len() as u32 + 1, b.clone()).is_err());
            // Any flipped bit is refused.
            for i in 0..blob.len() {
                let mut bad = blob.clone();
                bad[i] ^= 0x10;
                assert!(k.unseal_chunk(7, &id, SEALED, data.len() as u32, Bytes::from(bad)).is_err(), "byte {i}");
            }
            // Another key cannot open it and says which key it needs.
            let err = ring(cipher).unseal_chunk(7, &id, SEALED, data.len() as u32, b).expect_err("other key");
            assert!(matches!(err, SealError::UnknownKey(x) if x == k.current().expect("current")));
        }
    }

    #[test]
    fn old_keys_open_what_they_sealed_after_a_new_one_is_put_first() {
        let old = Key::generate();
        let k1 = Keyring::new(Encryption::Aes256Gcm, vec![old.clone()]).expect("k1");
        let sealed = k1.seal_object("meta/log/1", b"rows".to_vec()).expect("seal");
        assert_eq!(Keyring::object_key(&sealed), Some(old.id()));
        let k2 = Keyring::new(Encryption::XChaCha20Poly1305, vec![Key::generate(), old]).expect("k2");
        assert_eq!(k2.open_object("meta/log/1", &sealed).expect("open"), b"rows");
        assert!(k2.open_object("meta/log/2", &sealed).is_err(), "an object renamed does not open");
        let resealed = k2.seal_object("meta/log/1", b"rows".to_vec()).expect("seal");
        assert_eq!(Keyring::object_key(&resealed), k2.current());
    }

    #[test]
    fn plain_objects_are_refused_only_while_sealing() {
        assert_eq!(Keyring::off().open_object("x", b"plain").expect("plain"), b"plain");
        assert_eq!(ring(Encryption::Aes256Gcm).open_object("x", b"plain"), Err(SealError::Plain));
        assert_eq!(Keyring::off().seal_object("x", b"plain".to_vec()).expect("off"), b"plain");
    }

    #[test]
    fn key_files_parse_and_bad_ones_say_why() {
        let a = Key::generate();
        let b = Key::generate();
        let text = format!("# storfs key\n{}\n\n{}\n", &*a.to_hex(), &*b.to_hex());
        let keys = parse_keys(&text).expect("parse");
        assert_eq!(keys.iter().map(Key::id).collect::<Vec<_>>(), vec![a.id(), b.id()]);
        let env = format!("{},{}", &*b.to_hex(), &*a.to_hex());
        assert_eq!(parse_keys(&env).expect("env")[0].id(), b.id());
        assert!(parse_keys("").is_err());
        assert!(parse_keys("abcd").is_err());
        assert!(parse_keys(&format!("{}\n{}", &*a.to_hex(), &*a.to_hex())).is_err());
        assert!(!format!("{a:?} {:?}", Keyring::new(Encryption::Aes256Gcm, vec![a.clone()])).contains(&*a.to_hex()));
    }
}
