//! NFS file handles, built from persistent data only, so they survive
//! daemon restarts: (file system id, inode, generation, snapshot id).
//! Inode numbers are never reused and the generation differs between any
//! two inodes, so a handle of a deleted file can never name a new one.
//!
//! Layout (32 bytes): version:u8 (1), three zero bytes, fs_id:u32,
//! ino:u64, generation:u64, snapshot:u64 (0: the live file system), all
//! big-endian.

/// Length of every handle storfs issues.
pub const HANDLE_LEN: usize = 32;
const VERSION: u8 = 1;

/// A decoded file handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    /// File system id.
    pub fs_id: u32,
    /// Inode number.
    pub ino: u64,
    /// Inode generation.
    pub generation: u64,
    /// Snapshot id; 0 for the live file system.
    pub snapshot: u64,
}

impl Handle {
    /// The handle's bytes.
    pub fn encode(&self) -> [u8; HANDLE_LEN] {
        let mut b = [0u8; HANDLE_LEN];
        b[0] = VERSION;
        b[4..8].copy_from_slice(&self.fs_id.to_be_bytes());
        b[8..16].copy_from_slice(&self.ino.to_be_bytes());
        b[16..24].copy_from_slice(&self.generation.to_be_bytes());
        b[24..32].copy_from_slice(&self.snapshot.to_be_bytes());
        b
    }

    /// Decodes a handle; `None` for anything storfs did not issue.
    pub fn decode(b: &[u8]) -> Option<Handle> {
        if b.len() != HANDLE_LEN || b[0] != VERSION || b[1..4] != [0, 0, 0] {
            return None;
        }
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(a)
        };
        Some(Handle {
            fs_id: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ino: u64_at(8),
            generation: u64_at(16),
            snapshot: u64_at(24),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rejects() {
        let h = Handle { fs_id: 3, ino: 99, generation: 7, snapshot: 0 };
        assert_eq!(Handle::decode(&h.encode()), Some(h));
        assert_eq!(Handle::decode(&h.encode()[..31]), None);
        let mut bad = h.encode();
        bad[0] = 2;
        assert_eq!(Handle::decode(&bad), None);
        assert_eq!(Handle::decode(&[0u8; 64]), None);
    }
}
