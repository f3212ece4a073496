//! `fast_image_resize` use: the detector's letterbox, and shrinking an image before the turned
//! detector passes. One [`Letterboxer`] per worker thread, since the resizer keeps internal
//! buffers between calls.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use crate::error::{Error, Result};

/// Where the image landed on the square detector canvas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LetterboxGeometry {
    /// Side of the square canvas, pixels.
    pub canvas: u32,
    /// Size of the resized image in the canvas' top-left corner.
    pub width: u32,
    pub height: u32,
    /// Canvas pixels per image pixel; divide canvas coordinates by it to get image coordinates.
    pub scale: f32,
}

impl LetterboxGeometry {
    /// The InsightFace SCRFD geometry: keep the aspect ratio, fit the longer side, truncate the
    /// shorter one, and scale by the fitted side (so the reference's boxes are reproduced).
    pub fn fit(image_width: u32, image_height: u32, canvas: u32) -> Self {
        let im_ratio = f64::from(image_height) / f64::from(image_width);
        let (width, height) = if im_ratio > 1.0 {
            ((f64::from(canvas) / im_ratio) as u32, canvas)
        } else {
            (canvas, (f64::from(canvas) * im_ratio) as u32)
        };
        let (width, height) = (width.max(1), height.max(1));
        LetterboxGeometry { canvas, width, height, scale: height as f32 / image_height as f32 }
    }
}

/// Resizes RGB images into the detector's input tensor.
#[derive(Debug, Default)]
pub struct Letterboxer {
    resizer: Resizer,
    scratch: Vec<u8>,
}

impl Letterboxer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `image` letterboxed onto a `canvas` x `canvas` square as a normalised NCHW f32
    /// tensor `(x - mean) / std` into `out` (resized to 3 * canvas^2). Padding is 0 before
    /// normalisation, as in the reference.
    pub fn to_tensor(
        &mut self,
        image: &RgbImage,
        canvas: u32,
        mean: f32,
        std: f32,
        out: &mut Vec<f32>,
    ) -> Result<LetterboxGeometry> {
        let geometry = LetterboxGeometry::fit(image.width(), image.height(), canvas);
        let plane = (canvas * canvas) as usize;
        out.clear();
        out.resize(3 * plane, (0.0 - mean) / std);
        let resized: &[u8] = if (geometry.width, geometry.height) == image.dimensions() {
            image.as_raw()
        } else {
            let src = ImageRef::new(image.width(), image.height(), image.as_raw(), PixelType::U8x3)
                .map_err(|e| Error::internal("letterbox source view", e))?;
            self.scratch.resize((geometry.width * geometry.height * 3) as usize, 0);
            let mut dst = Image::from_slice_u8(geometry.width, geometry.height, &mut self.scratch, PixelType::U8x3)
                .map_err(|e| Error::internal("letterbox destination view", e))?;
            // Interpolation(Bilinear) matches cv2 INTER_LINEAR, which the reference uses; the
            // antialiased Convolution variant measurably loses small faces (BUILD-NOTES).
            let options = ResizeOptions::new().resize_alg(ResizeAlg::Interpolation(FilterType::Bilinear));
            self.resizer.resize(&src, &mut dst, &options).map_err(|e| Error::internal("letterbox resize", e))?;
            &self.scratch
        };
        let (w, c) = (geometry.width as usize, canvas as usize);
        let inv_std = 1.0 / std;
        let (r_plane, rest) = out.split_at_mut(plane);
        let (g_plane, b_plane) = rest.split_at_mut(plane);
        for (y, row) in resized.chunks_exact(w * 3).enumerate() {
            let base = y * c;
            for (x, px) in row.chunks_exact(3).enumerate() {
                r_plane[base + x] = (f32::from(px[0]) - mean) * inv_std;
                g_plane[base + x] = (f32::from(px[1]) - mean) * inv_std;
                b_plane[base + x] = (f32::from(px[2]) - mean) * inv_std;
            }
        }
        Ok(geometry)
    }
}

/// `image` scaled down so that its longer side is `long_side` (bilinear, as the letterbox
/// resizes for the detector); `None` when it is no longer than that already.
pub fn shrink(image: &RgbImage, long_side: u32, resizer: &mut Resizer) -> Result<Option<RgbImage>> {
    let long = image.width().max(image.height());
    if long <= long_side {
        return Ok(None);
    }
    let scale = long_side as f32 / long as f32;
    let width = ((image.width() as f32 * scale).round() as u32).clamp(1, long_side);
    let height = ((image.height() as f32 * scale).round() as u32).clamp(1, long_side);
    resize_to(image, width, height, resizer).map(Some)
}

/// `image` resized to `width` x `height` (bilinear, as the letterbox resizes for the detector).
pub fn resize_to(image: &RgbImage, width: u32, height: u32, resizer: &mut Resizer) -> Result<RgbImage> {
    let src = ImageRef::new(image.width(), image.height(), image.as_raw(), PixelType::U8x3)
        .map_err(|e| Error::internal("shrink source view", e))?;
    let mut dst = Image::new(width, height, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Interpolation(FilterType::Bilinear));
    resizer.resize(&src, &mut dst, &options).map_err(|e| Error::internal("shrink resize", e))?;
    RgbImage::from_raw(width, height, dst.into_vec()).ok_or_else(|| Error::bug("the shrunk image has the wrong size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_matches_insightface() {
        // t1.jpg is 1280x886: 640 wide, int(640 * 886 / 1280) = 443 high, scale by height.
        let g = LetterboxGeometry::fit(1280, 886, 640);
        assert_eq!((g.width, g.height), (640, 443));
        assert!((g.scale - 443.0 / 886.0).abs() < 1e-6);
        // yaoming.jpg is 233x287 (portrait): the height fills the canvas.
        let g = LetterboxGeometry::fit(233, 287, 320);
        assert_eq!((g.width, g.height), (259, 320));
    }

    #[test]
    fn tensor_layout_and_padding() {
        let image = RgbImage::from_pixel(4, 2, image::Rgb([255, 0, 128]));
        let mut out = Vec::new();
        let g = Letterboxer::new().to_tensor(&image, 4, 127.5, 128.0, &mut out).unwrap();
        assert_eq!((g.width, g.height), (4, 2));
        assert_eq!(out.len(), 3 * 16);
        assert!((out[0] - (255.0 - 127.5) / 128.0).abs() < 1e-6, "R plane first");
        assert!((out[16] - (0.0 - 127.5) / 128.0).abs() < 1e-6, "G plane second");
        assert!((out[32] - (128.0 - 127.5) / 128.0).abs() < 1e-6, "B plane third");
        assert!((out[8] - (-127.5 / 128.0)).abs() < 1e-6, "rows below the image are padding");
    }
}
