//! Bytes -> RGB8: format by content (JPEG, PNG, WebP), limits checked before any large
//! allocation, EXIF orientation applied, alpha composited over white. Never resizes.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::error::{Error, Reason, Result};

/// Limits on what an image may cost to decode.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Encoded size, bytes.
    pub max_bytes: usize,
    /// Width and height, pixels (after orientation either may be the long side).
    pub max_dimension: u32,
    /// Width x height, pixels.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_bytes: 2 * 1024 * 1024, max_dimension: 8192, max_pixels: 40_000_000 }
    }
}

/// Container formats facevault accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
    WebP,
}

impl ImageFormat {
    pub fn mime_type(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
            ImageFormat::WebP => "image/webp",
        }
    }
}

/// A decoded, upright RGB image.
#[derive(Debug)]
pub struct DecodedImage {
    pub rgb: RgbImage,
    pub format: ImageFormat,
}

const FIELD: &str = "image";

/// Decodes `bytes` under `limits`. Every failure is an INVALID_ARGUMENT with an image reason.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodedImage> {
    if bytes.is_empty() {
        return Err(Error::invalid(Reason::ImageEmpty, FIELD, "the image is empty"));
    }
    if bytes.len() > limits.max_bytes {
        return Err(Error::invalid(
            Reason::ImageTooLarge,
            FIELD,
            format!("the image is {} bytes; the limit is {} bytes", bytes.len(), limits.max_bytes),
        )
        .with_meta("size_bytes", bytes.len())
        .with_meta("max_bytes", limits.max_bytes));
    }
    let format = match image::guess_format(bytes) {
        Ok(image::ImageFormat::Jpeg) => ImageFormat::Jpeg,
        Ok(image::ImageFormat::Png) => ImageFormat::Png,
        Ok(image::ImageFormat::WebP) => ImageFormat::WebP,
        Ok(other) => {
            return Err(undecodable(format!("{other:?} images are not accepted; send JPEG, PNG or WebP")));
        }
        Err(_) => return Err(undecodable("the bytes are not a JPEG, PNG or WebP image".to_owned())),
    };
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // Decoders fill a cut-off JPEG with grey and succeed; a face service must not embed
        // half a face, so a missing end-of-image marker is a decode error.
        return Err(undecodable("the JPEG is truncated (no end-of-image marker after its last scan)".to_owned()));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes));
    reader.set_format(match format {
        ImageFormat::Jpeg => image::ImageFormat::Jpeg,
        ImageFormat::Png => image::ImageFormat::Png,
        ImageFormat::WebP => image::ImageFormat::WebP,
    });
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(limits.max_dimension);
    image_limits.max_image_height = Some(limits.max_dimension);
    // Decoders may hold the image in a wider pixel type (16-bit RGBA is 8 bytes a pixel).
    image_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).max(64 << 20));
    reader.limits(image_limits);

    let mut decoder = reader.into_decoder().map_err(map_image_error)?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, limits)?;
    let orientation = decoder.orientation().map_err(map_image_error)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(map_image_error)?;
    image.apply_orientation(orientation);
    Ok(DecodedImage { rgb: into_rgb8(image), format })
}

/// Returns `jpeg` with an EXIF APP1 segment holding only `orientation` (1-8) inserted after the
/// SOI marker. For building test corpora; decoding applies it.
pub fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    // Big-endian TIFF header, IFD at offset 8 with one SHORT entry (0x0112), no next IFD.
    let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01".to_vec();
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\x00\x00".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2.min(jpeg.len())].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(jpeg.get(2..).unwrap_or_default());
    out
}

/// True when an end-of-image marker (FF D9) follows the last start-of-scan marker (FF DA).
/// Entropy-coded data stuffs every FF byte as FF 00, so both markers only appear as markers.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_scan {
        Some(start) => bytes[start..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

fn check_dimensions(width: u32, height: u32, limits: &DecodeLimits) -> Result<()> {
    let pixels = u64::from(width) * u64::from(height);
    if width == 0 || height == 0 {
        return Err(undecodable("the image has no pixels".to_owned()));
    }
    if width > limits.max_dimension || height > limits.max_dimension || pixels > limits.max_pixels {
        return Err(too_large(width, height, limits));
    }
    Ok(())
}

fn too_large(width: u32, height: u32, limits: &DecodeLimits) -> Error {
    Error::invalid(
        Reason::ImageDimensionsTooLarge,
        FIELD,
        format!(
            "the image is {width}x{height}; the limits are {} pixels a side and {} pixels in all",
            limits.max_dimension, limits.max_pixels
        ),
    )
    .with_meta("width", width)
    .with_meta("height", height)
    .with_meta("max_dimension", limits.max_dimension)
    .with_meta("max_pixels", limits.max_pixels)
}

fn undecodable(message: String) -> Error {
    Error::invalid(Reason::ImageUndecodable, FIELD, message)
}

fn map_image_error(err: image::ImageError) -> Error {
    match err {
        image::ImageError::Limits(limit) => Error::invalid(
            Reason::ImageDimensionsTooLarge,
            FIELD,
            format!("decoding the image would exceed the server's limits: {limit}"),
        ),
        image::ImageError::IoError(_)
        | image::ImageError::Decoding(_)
        | image::ImageError::Unsupported(_)
        | image::ImageError::Encoding(_)
        | image::ImageError::Parameter(_) => undecodable(format!("the image cannot be decoded: {err}")),
    }
}

/// Converts any pixel layout to RGB8; transparent pixels are composited over white, so a
/// cut-out portrait does not turn into a face on black.
fn into_rgb8(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let (width, height) = rgba.dimensions();
    let mut out = RgbImage::new(width, height);
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let alpha = u32::from(src[3]);
        for c in 0..3 {
            let v = u32::from(src[c]) * alpha + 255 * (255 - alpha);
            dst[c] = ((v + 127) / 255) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, ImageEncoder, Luma, Rgba, RgbaImage};

    fn png(image: &DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        image.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).expect("encode png");
        out
    }

    #[test]
    fn empty_and_garbage_have_their_own_reasons() {
        let limits = DecodeLimits::default();
        assert_eq!(decode(&[], &limits).unwrap_err().reason(), Reason::ImageEmpty);
        assert_eq!(decode(b"not an image at all", &limits).unwrap_err().reason(), Reason::ImageUndecodable);
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        assert_eq!(decode(gif, &limits).unwrap_err().reason(), Reason::ImageUndecodable);
    }

    #[test]
    fn byte_limit_is_checked_first() {
        let limits = DecodeLimits { max_bytes: 10, ..DecodeLimits::default() };
        let err = decode(&[0u8; 11], &limits).unwrap_err();
        assert_eq!(err.reason(), Reason::ImageTooLarge);
    }

    #[test]
    fn truncated_png_is_undecodable() {
        let bytes = png(&DynamicImage::ImageRgb8(RgbImage::new(64, 64)));
        let err = decode(&bytes[..bytes.len() / 2], &DecodeLimits::default()).unwrap_err();
        assert_eq!(err.reason(), Reason::ImageUndecodable);
    }

    #[test]
    fn truncated_jpeg_is_undecodable() {
        let rgb = RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 7]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .write_image(rgb.as_raw(), 64, 64, image::ExtendedColorType::Rgb8)
            .unwrap();
        assert!(decode(&jpeg, &DecodeLimits::default()).is_ok());
        let err = decode(&jpeg[..jpeg.len() - 40], &DecodeLimits::default()).unwrap_err();
        assert_eq!(err.reason(), Reason::ImageUndecodable);
    }

    /// A PNG signature and a valid IHDR chunk declaring `width` x `height`, and no pixels.
    pub(crate) fn png_header_only(width: u32, height: u32) -> Vec<u8> {
        fn crc32(data: &[u8]) -> u32 {
            let mut crc = 0xFFFF_FFFFu32;
            for &byte in data {
                crc ^= u32::from(byte);
                for _ in 0..8 {
                    crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
                }
            }
            !crc
        }
        let mut chunk = b"IHDR".to_vec();
        chunk.extend_from_slice(&width.to_be_bytes());
        chunk.extend_from_slice(&height.to_be_bytes());
        chunk.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        out.extend_from_slice(&13u32.to_be_bytes());
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&crc32(&chunk).to_be_bytes());
        out
    }

    /// A complete PNG of black pixels: deflate shrinks it about a thousandfold.
    fn png_bomb(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new_with_quality(
            &mut out,
            image::codecs::png::CompressionType::Fast,
            image::codecs::png::FilterType::NoFilter,
        )
        .write_image(&vec![0u8; (width * height) as usize], width, height, image::ExtendedColorType::L8)
        .unwrap();
        out
    }

    #[test]
    fn declared_dimensions_are_checked_before_decoding() {
        let limits = DecodeLimits { max_dimension: 4000, max_pixels: 4_000_000, ..DecodeLimits::default() };
        // Over the side limit, and over the pixel limit within the side limit.
        for (w, h) in [(4100, 10), (2500, 2500)] {
            let bomb = png_bomb(w, h);
            assert!(bomb.len() < 64 * 1024, "{w}x{h} compresses to {} bytes", bomb.len());
            let err = decode(&bomb, &limits).unwrap_err();
            assert_eq!(err.reason(), Reason::ImageDimensionsTooLarge, "{w}x{h}");
        }
        // A valid header without pixel data is simply broken.
        let err = decode(&png_header_only(100, 100), &limits).unwrap_err();
        assert_eq!(err.reason(), Reason::ImageUndecodable);
    }

    #[test]
    fn pixel_count_limit() {
        let bytes = png(&DynamicImage::ImageRgb8(RgbImage::new(100, 100)));
        let limits = DecodeLimits { max_pixels: 9_999, ..DecodeLimits::default() };
        assert_eq!(decode(&bytes, &limits).unwrap_err().reason(), Reason::ImageDimensionsTooLarge);
    }

    #[test]
    fn grayscale_sixteen_bit_and_alpha_become_rgb() {
        let gray = DynamicImage::ImageLuma8(GrayImage::from_pixel(4, 3, Luma([90])));
        let decoded = decode(&png(&gray), &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.rgb.dimensions(), (4, 3));
        assert_eq!(decoded.rgb.get_pixel(0, 0).0, [90, 90, 90]);
        assert_eq!(decoded.format, ImageFormat::Png);

        let deep = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(2, 2, image::Rgb([65535u16, 0, 32768])));
        let decoded = decode(&png(&deep), &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.rgb.get_pixel(1, 1).0, [255, 0, 128]);

        let mut rgba = RgbaImage::from_pixel(2, 1, Rgba([0, 0, 0, 0]));
        rgba.put_pixel(1, 0, Rgba([10, 20, 30, 255]));
        let decoded = decode(&png(&DynamicImage::ImageRgba8(rgba)), &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.rgb.get_pixel(0, 0).0, [255, 255, 255], "transparent is white");
        assert_eq!(decoded.rgb.get_pixel(1, 0).0, [10, 20, 30]);
    }

    #[test]
    fn all_eight_exif_orientations() {
        // Stored: 32x16, left half red, right half blue.
        let stored =
            RgbImage::from_fn(32, 16, |x, _| if x < 16 { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 255]) });
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 100)
            .write_image(stored.as_raw(), 32, 16, image::ExtendedColorType::Rgb8)
            .unwrap();
        for orientation in 1..=8u16 {
            let rgb = decode(&with_exif_orientation(&jpeg, orientation), &DecodeLimits::default()).unwrap().rgb;
            let swapped = orientation >= 5;
            assert_eq!(rgb.dimensions(), if swapped { (16, 32) } else { (32, 16) }, "orientation {orientation}");
            let first = rgb.get_pixel(0, 0).0;
            // Which stored half lands at the top-left corner after the transform.
            let red_first = matches!(orientation, 1 | 4 | 5 | 6);
            assert_eq!(first[0] > 128, red_first, "orientation {orientation}: top-left {first:?}");
        }
    }

    #[test]
    fn cmyk_jpeg_becomes_the_right_rgb() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/synthetic/");
        let cmyk = std::fs::read(format!("{dir}cmyk.jpg")).unwrap();
        let want = image::open(format!("{dir}rgb_reference.png")).unwrap().into_rgb8();
        let got = decode(&cmyk, &DecodeLimits::default()).unwrap().rgb;
        assert_eq!(got.dimensions(), want.dimensions());
        let diff: u64 = got.as_raw().iter().zip(want.as_raw()).map(|(a, b)| u64::from(a.abs_diff(*b))).sum();
        let mean = diff as f64 / got.as_raw().len() as f64;
        assert!(mean < 8.0, "mean absolute difference {mean}");
    }

    #[test]
    fn jpeg_and_webp_decode_by_content() {
        let rgb = RgbImage::from_fn(16, 8, |x, y| image::Rgb([(x * 15) as u8, (y * 30) as u8, 100]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .write_image(rgb.as_raw(), 16, 8, image::ExtendedColorType::Rgb8)
            .unwrap();
        let decoded = decode(&jpeg, &DecodeLimits::default()).unwrap();
        assert_eq!((decoded.format, decoded.rgb.dimensions()), (ImageFormat::Jpeg, (16, 8)));

        let mut webp = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
            .write_image(rgb.as_raw(), 16, 8, image::ExtendedColorType::Rgb8)
            .unwrap();
        let decoded = decode(&webp, &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.format, ImageFormat::WebP);
        assert_eq!(decoded.rgb, rgb, "lossless WebP round-trips");
    }
}
