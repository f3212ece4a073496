//! 1:N search over the faces of a tenant: an in-memory index rebuilt from the store.

pub mod index;
pub mod lists;
pub mod similarity;
pub mod sketch;
pub mod tags;

pub use index::{FaceIndex, Hit};
pub use lists::{ListHit, ListIndex, ListInfo};
pub use tags::Tags;
