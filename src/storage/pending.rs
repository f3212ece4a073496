//! A write the store has committed (every read sees it) but not yet made durable. The caller
//! waits for the index feed to apply the write's change-log entry first, then makes it durable:
//! so the reply comes after both, and a failed sync can never leave the index different from
//! the store. What finishes the write is the backend's (sled: group commit, then removing the
//! image files of the faces the write dropped).

use crate::error::Result;

/// What makes a committed write durable.
type Finish = Box<dyn FnOnce() -> Result<()> + Send>;

/// A committed write: its value now, and [`Pending::durable`] to finish it.
#[must_use = "a pending write is acknowledged only once it is durable"]
pub struct Pending<T> {
    value: T,
    /// The change-log entry of the write; 0: it changed no face.
    seq: u64,
    finish: Finish,
}

impl<T: std::fmt::Debug> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("value", &self.value).field("seq", &self.seq).finish_non_exhaustive()
    }
}

impl<T> Pending<T> {
    /// A committed write whose entry is `seq`, made durable by `finish`.
    pub fn new(value: T, seq: u64, finish: impl FnOnce() -> Result<()> + Send + 'static) -> Self {
        Pending { value, seq, finish: Box::new(finish) }
    }

    /// The sequence number of the write's change-log entry (0: it changed no face): the index
    /// reflects the write once its feed has applied this entry.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// What the write did (visible to every read already).
    pub fn value(&self) -> &T {
        &self.value
    }

    /// Makes the write durable.
    pub fn durable(self) -> Result<T> {
        (self.finish)()?;
        Ok(self.value)
    }
}
