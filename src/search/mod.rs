//! 1:N search over the faces of a tenant: an in-memory index rebuilt from the store.

pub mod index;
pub mod similarity;
pub mod sketch;

pub use index::{FaceIndex, Hit};
