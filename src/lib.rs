//! xetmount: a Xet-backed bucket mounted as a POSIX filesystem.
//!
//! Layers, dependencies pointing down: `cli` (in the binary) → `frontend` (FUSE) → `vfs`
//! (all POSIX decisions) → `remote` (catalog and CAS traits, the local store).

pub mod frontend;
pub mod lru;
pub mod remote;
pub mod server;
pub mod service;
pub mod signals;
pub mod telemetry;
pub mod vfs;
