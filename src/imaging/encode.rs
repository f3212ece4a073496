//! Thumbnail encoding: the square "zoomed face" JPEG. Which face to thumbnail is decided by the
//! caller; this module only crops, resizes and encodes.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use crate::domain::BoundingBox;
use crate::error::{Error, Result};

/// Thumbnail settings.
#[derive(Debug, Clone, Copy)]
pub struct ThumbnailSpec {
    /// Side of the square output, pixels.
    pub size: u32,
    /// Margin around the face box on each side, as a fraction of the box's longer side.
    pub margin: f32,
    /// JPEG quality, 1-100.
    pub quality: u8,
}

impl Default for ThumbnailSpec {
    fn default() -> Self {
        ThumbnailSpec { size: 256, margin: 0.4, quality: 88 }
    }
}

/// The square region (in image pixels) that a thumbnail of `bbox` shows: centred on the box,
/// side `(1 + 2 * margin) * max(w, h)`, moved inside the image where it fits and clipped where
/// it does not (the clipped part is filled with black).
pub fn thumbnail_region(bbox: &BoundingBox, spec: &ThumbnailSpec, width: u32, height: u32) -> (f64, f64, f64) {
    let side = f64::from(bbox.width().max(bbox.height()) * (1.0 + 2.0 * spec.margin)).max(1.0);
    let center = bbox.center();
    let shift = |c: f64, extent: f64| -> f64 {
        let start = c - side / 2.0;
        if side >= extent { (extent - side) / 2.0 } else { start.clamp(0.0, extent - side) }
    };
    (shift(f64::from(center.x), f64::from(width)), shift(f64::from(center.y), f64::from(height)), side)
}

/// Crops the zoomed face around `bbox`, resizes it to `spec.size` and encodes it as JPEG.
pub fn face_thumbnail(
    image: &RgbImage,
    bbox: &BoundingBox,
    spec: &ThumbnailSpec,
    resizer: &mut Resizer,
) -> Result<Vec<u8>> {
    let out_side = u16::try_from(spec.size).map_err(|e| Error::internal("thumbnail size", e))?;
    let (left, top, side) = thumbnail_region(bbox, spec, image.width(), image.height());
    let (w, h) = (f64::from(image.width()), f64::from(image.height()));
    // The part of the square that lies inside the image, and where it goes in the output.
    let (x0, y0) = (left.max(0.0), top.max(0.0));
    let (x1, y1) = ((left + side).min(w), (top + side).min(h));
    let scale = f64::from(spec.size) / side;
    let out_x = ((x0 - left) * scale).round() as u32;
    let out_y = ((y0 - top) * scale).round() as u32;
    let out_w = (((x1 - x0) * scale).round() as u32).clamp(1, spec.size - out_x.min(spec.size - 1));
    let out_h = (((y1 - y0) * scale).round() as u32).clamp(1, spec.size - out_y.min(spec.size - 1));

    let src = ImageRef::new(image.width(), image.height(), image.as_raw(), PixelType::U8x3)
        .map_err(|e| Error::internal("thumbnail source view", e))?;
    let mut part = Image::new(out_w, out_h, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom)).crop(
        x0,
        y0,
        (x1 - x0).max(1.0),
        (y1 - y0).max(1.0),
    );
    resizer.resize(&src, &mut part, &options).map_err(|e| Error::internal("thumbnail resize", e))?;

    let mut canvas = vec![0u8; (spec.size * spec.size * 3) as usize];
    let row = (spec.size * 3) as usize;
    for (y, line) in part.buffer().chunks_exact((out_w * 3) as usize).enumerate() {
        let start = (out_y as usize + y) * row + out_x as usize * 3;
        if let Some(dst) = canvas.get_mut(start..start + line.len()) {
            dst.copy_from_slice(line);
        }
    }
    let mut jpeg = Vec::with_capacity(32 * 1024);
    let mut encoder = jpeg_encoder::Encoder::new(&mut jpeg, spec.quality);
    // Full-resolution colour (4:4:4), as the `image` crate's encoder wrote before: the encoder's
    // default below quality 90 would halve the colour resolution.
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_1_1);
    encoder
        .encode(&canvas, out_side, out_side, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| Error::internal("thumbnail encode", e))?;
    Ok(jpeg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_is_centred_and_kept_inside() {
        let spec = ThumbnailSpec { size: 100, margin: 0.5, quality: 80 };
        let bbox = BoundingBox { x_min: 40.0, y_min: 40.0, x_max: 60.0, y_max: 70.0 };
        let (l, t, s) = thumbnail_region(&bbox, &spec, 200, 200);
        assert_eq!(s, 60.0);
        assert_eq!((l, t), (20.0, 25.0));
        let corner = BoundingBox { x_min: 0.0, y_min: 0.0, x_max: 20.0, y_max: 20.0 };
        assert_eq!(thumbnail_region(&corner, &spec, 200, 200), (0.0, 0.0, 40.0));
    }

    #[test]
    fn thumbnail_is_a_square_jpeg_of_the_face() {
        let mut img = RgbImage::from_pixel(300, 200, image::Rgb([0, 0, 255]));
        for y in 80..120 {
            for x in 130..170 {
                img.put_pixel(x, y, image::Rgb([255, 0, 0]));
            }
        }
        let bbox = BoundingBox { x_min: 130.0, y_min: 80.0, x_max: 170.0, y_max: 120.0 };
        let spec = ThumbnailSpec::default();
        let jpeg = face_thumbnail(&img, &bbox, &spec, &mut Resizer::new()).unwrap();
        let thumb = image::load_from_memory(&jpeg).unwrap().into_rgb8();
        assert_eq!(thumb.dimensions(), (spec.size, spec.size));
        let centre = thumb.get_pixel(spec.size / 2, spec.size / 2).0;
        assert!(centre[0] > 200 && centre[2] < 60, "face in the middle: {centre:?}");
        let edge = thumb.get_pixel(2, spec.size / 2).0;
        assert!(edge[2] > 200, "margin shows the surroundings: {edge:?}");
    }

    #[test]
    fn image_smaller_than_the_square_is_padded() {
        let img = RgbImage::from_pixel(20, 20, image::Rgb([200, 200, 200]));
        let bbox = BoundingBox { x_min: 0.0, y_min: 0.0, x_max: 20.0, y_max: 20.0 };
        let spec = ThumbnailSpec { size: 64, margin: 0.5, quality: 90 };
        let jpeg = face_thumbnail(&img, &bbox, &spec, &mut Resizer::new()).unwrap();
        let thumb = image::load_from_memory(&jpeg).unwrap().into_rgb8();
        assert!(thumb.get_pixel(1, 1).0[0] < 40, "outside the image is black");
        assert!(thumb.get_pixel(32, 32).0[0] > 160);
    }
}
