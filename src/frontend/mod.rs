//! Protocol adapters over the VFS: they translate, never decide.

pub mod fuse;
pub mod handle_pool;
pub mod nfs;
