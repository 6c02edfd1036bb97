//! The store's own error: why a restored session was not inserted (what
//! both stores answer is in `outcome.rs`).

/// Why a restored session was not inserted.
pub(crate) enum InsertError {
    /// A live session has its id.
    Duplicate,
    /// The store is full (in total or for the session's address) or shut down.
    Refused,
}
