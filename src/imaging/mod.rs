//! Pixel-level work shared by inference and thumbnails: decoding, resizing, alignment, encoding.
//! Never ort, never sled.

pub mod align;
pub mod decode;
pub mod encode;
pub mod resize;
pub mod turn;

pub use decode::{DecodeLimits, DecodedImage, ImageFormat, decode};
