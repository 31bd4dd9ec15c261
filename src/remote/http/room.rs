//! A byte allowance for data held in memory on its way somewhere slower (chunk-cache puts):
//! whoever holds bytes takes room for them first, and waits while there is none, so a slow
//! disk holds back the network instead of letting copies pile up.

use std::sync::Arc;

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// Room is counted in units of this many bytes.
const UNIT: usize = 4 << 10;

pub struct Room {
    units: Arc<Semaphore>,
    total: u32,
}

impl Room {
    /// Room for `bytes` (at least one unit).
    pub fn new(bytes: u64) -> Self {
        let total =
            (bytes as usize / UNIT).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32;
        Room {
            units: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Wait for room for `len` bytes; it is given back when the permit drops. More than the
    /// whole allowance takes all of it (it would wait forever otherwise).
    pub async fn take(&self, len: usize) -> Result<OwnedSemaphorePermit, AcquireError> {
        let units = len.div_ceil(UNIT).clamp(1, self.total as usize) as u32;
        // The semaphore is never closed.
        Arc::clone(&self.units).acquire_many_owned(units).await
    }

    /// Units free now.
    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.units.available_permits()
    }
}
