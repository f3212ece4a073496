//! Any bytes through what the server does before inference: content sniffing, the byte, side
//! and pixel limits, decoding with EXIF orientation, conversion to RGB, the detector's
//! letterbox into both canvases, and a face alignment warp from landmarks derived from the
//! input. It must never panic, and a decoded image must respect the limits.

#![no_main]

use facevault::domain::{Landmarks, Point};
use facevault::imaging::align::align_face;
use facevault::imaging::decode::{DecodeLimits, decode};
use facevault::imaging::resize::Letterboxer;
use libfuzzer_sys::fuzz_target;

/// Smaller than the server's defaults so the fuzzer spends its time on parsing, not pixels.
const LIMITS: DecodeLimits = DecodeLimits { max_bytes: 1 << 20, max_dimension: 2048, max_pixels: 2_000_000 };

fuzz_target!(|data: &[u8]| {
    let Ok(image) = decode(data, &LIMITS) else { return };
    let (w, h) = image.rgb.dimensions();
    assert!(w >= 1 && h >= 1 && w <= LIMITS.max_dimension && h <= LIMITS.max_dimension);
    assert!(u64::from(w) * u64::from(h) <= LIMITS.max_pixels);
    let mut letterbox = Letterboxer::new();
    let mut tensor = Vec::new();
    for canvas in [320, 640] {
        letterbox.to_tensor(&image.rgb, canvas, 127.5, 128.0, &mut tensor).expect("letterbox");
        assert_eq!(tensor.len(), 3 * (canvas * canvas) as usize);
        assert!(tensor.iter().all(|v| v.is_finite()));
    }
    // Landmarks from the input bytes, anywhere in (and around) the image, degenerate ones included.
    let coordinate = |i: usize, extent: u32| {
        let b = f32::from(*data.get(i).unwrap_or(&0));
        (b / 255.0) * 1.5 * extent as f32 - 0.25 * extent as f32
    };
    let landmarks: Landmarks = std::array::from_fn(|i| Point { x: coordinate(2 * i, w), y: coordinate(2 * i + 1, h) });
    let mut aligned = Vec::new();
    align_face(&image.rgb, &landmarks, &mut aligned);
    assert_eq!(aligned.len(), 112 * 112 * 3);
});
