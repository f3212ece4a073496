//! 5-point face alignment to the ArcFace 112x112 template: a least-squares similarity
//! transform and a bilinear warp that reproduces cv2.warpAffine (the reference) bit for bit:
//! the same 1/32-pixel fixed-point coordinates and 15-bit weights, border value 0.

use image::RgbImage;

use crate::domain::Landmarks;

/// Side of the aligned face crop.
pub const ALIGNED_SIZE: u32 = 112;

/// The ArcFace template (insightface `arcface_dst`) for a 112x112 crop.
const ARCFACE_TEMPLATE: [[f64; 2]; 5] =
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]];

/// A 2x3 affine matrix `[a, b, c; d, e, f]` mapping (x, y) to (a x + b y + c, d x + e y + f).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine(pub [f64; 6]);

impl Affine {
    /// Least-squares similarity (rotation, uniform scale, translation; no reflection) taking
    /// the landmarks onto the ArcFace template: Umeyama's estimate, in closed form for 2-D.
    pub fn to_template(landmarks: &Landmarks) -> Affine {
        let src: Vec<[f64; 2]> = landmarks.iter().map(|p| [f64::from(p.x), f64::from(p.y)]).collect();
        let n = src.len() as f64;
        let mean = |pts: &[[f64; 2]]| {
            let (sx, sy) = pts.iter().fold((0.0, 0.0), |(ax, ay), p| (ax + p[0], ay + p[1]));
            [sx / n, sy / n]
        };
        let (sm, dm) = (mean(&src), mean(&ARCFACE_TEMPLATE));
        let (mut dot, mut cross, mut norm) = (0.0, 0.0, 0.0);
        for (s, d) in src.iter().zip(ARCFACE_TEMPLATE.iter()) {
            let (x, y) = (s[0] - sm[0], s[1] - sm[1]);
            let (u, v) = (d[0] - dm[0], d[1] - dm[1]);
            dot += x * u + y * v;
            cross += x * v - y * u;
            norm += x * x + y * y;
        }
        if norm == 0.0 {
            // All landmarks coincide: no rotation or scale can be estimated. Map the point to
            // the template centre at unit scale rather than dividing by zero.
            return Affine([1.0, 0.0, dm[0] - sm[0], 0.0, 1.0, dm[1] - sm[1]]);
        }
        let (a, b) = (dot / norm, cross / norm);
        let tx = dm[0] - (a * sm[0] - b * sm[1]);
        let ty = dm[1] - (b * sm[0] + a * sm[1]);
        Affine([a, -b, tx, b, a, ty])
    }

    /// The inverse map (cv2 inverts the matrix the same way inside warpAffine).
    pub fn inverse(&self) -> Affine {
        let [a, b, c, d, e, f] = self.0;
        let det = a * e - b * d;
        let inv = if det != 0.0 { 1.0 / det } else { 0.0 };
        let (ia, ib, id, ie) = (e * inv, -b * inv, -d * inv, a * inv);
        Affine([ia, ib, -ia * c - ib * f, id, ie, -id * c - ie * f])
    }

    /// Applies the map to a point.
    pub fn apply(&self, x: f64, y: f64) -> (f64, f64) {
        let [a, b, c, d, e, f] = self.0;
        (a * x + b * y + c, d * x + e * y + f)
    }

    /// Scale factor of a similarity transform.
    pub fn scale(&self) -> f64 {
        (self.0[0] * self.0[0] + self.0[3] * self.0[3]).sqrt()
    }
}

const INTER_BITS: i32 = 5;
const INTER_TAB_SIZE: i32 = 1 << INTER_BITS;
const AB_BITS: i32 = 10;
const AB_SCALE: f64 = (1 << AB_BITS) as f64;
const COEF_BITS: i32 = 15;

/// Aligns the face to a 112x112 RGB crop (row-major, 3 bytes a pixel) written into `out`.
pub fn align_face(image: &RgbImage, landmarks: &Landmarks, out: &mut Vec<u8>) {
    warp_affine(image, &Affine::to_template(landmarks), ALIGNED_SIZE, out);
}

/// `cv2.warpAffine(src, m, (size, size), flags=INTER_LINEAR, borderValue=0)` for RGB8.
pub fn warp_affine(image: &RgbImage, m: &Affine, size: u32, out: &mut Vec<u8>) {
    let inv = m.inverse().0;
    let (w, h) = (image.width() as i32, image.height() as i32);
    let src = image.as_raw();
    let stride = w as usize * 3;
    let n = size as usize;
    out.clear();
    out.resize(n * n * 3, 0);
    let round_delta = (AB_SCALE as i32) / INTER_TAB_SIZE / 2;
    let adelta: Vec<i32> = (0..n).map(|x| (inv[0] * x as f64 * AB_SCALE).round_ties_even() as i32).collect();
    let bdelta: Vec<i32> = (0..n).map(|x| (inv[3] * x as f64 * AB_SCALE).round_ties_even() as i32).collect();
    let scale = 1 << COEF_BITS;
    for y in 0..n {
        let x0 = ((inv[1] * y as f64 + inv[2]) * AB_SCALE).round_ties_even() as i32 + round_delta;
        let y0 = ((inv[4] * y as f64 + inv[5]) * AB_SCALE).round_ties_even() as i32 + round_delta;
        for x in 0..n {
            let fx = (x0 + adelta[x]) >> (AB_BITS - INTER_BITS);
            let fy = (y0 + bdelta[x]) >> (AB_BITS - INTER_BITS);
            let (sx, sy) = (fx >> INTER_BITS, fy >> INTER_BITS);
            let (ax, ay) = (fx & (INTER_TAB_SIZE - 1), fy & (INTER_TAB_SIZE - 1));
            // Bilinear weights in 1/32 steps, scaled to 2^15: exact integers, summing to 2^15.
            let w00 = (INTER_TAB_SIZE - ay) * (INTER_TAB_SIZE - ax) * 32;
            let w01 = (INTER_TAB_SIZE - ay) * ax * 32;
            let w10 = ay * (INTER_TAB_SIZE - ax) * 32;
            let w11 = ay * ax * 32;
            let dst = &mut out[(y * n + x) * 3..(y * n + x) * 3 + 3];
            if sx >= w || sx + 1 < 0 || sy >= h || sy + 1 < 0 {
                continue; // wholly outside: border value 0
            }
            let pixel = |px: i32, py: i32, c: usize| -> i32 {
                if px >= 0 && px < w && py >= 0 && py < h {
                    i32::from(src[py as usize * stride + px as usize * 3 + c])
                } else {
                    0
                }
            };
            for (c, d) in dst.iter_mut().enumerate() {
                let v = w00 * pixel(sx, sy, c)
                    + w01 * pixel(sx + 1, sy, c)
                    + w10 * pixel(sx, sy + 1, c)
                    + w11 * pixel(sx + 1, sy + 1, c);
                *d = ((v + (scale >> 1)) >> COEF_BITS).clamp(0, 255) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Point;

    fn template_landmarks(scale: f32, dx: f32, dy: f32) -> Landmarks {
        let mut lm = [Point::default(); 5];
        for (p, t) in lm.iter_mut().zip(ARCFACE_TEMPLATE.iter()) {
            *p = Point { x: t[0] as f32 * scale + dx, y: t[1] as f32 * scale + dy };
        }
        lm
    }

    #[test]
    fn recovers_a_pure_scale_and_shift() {
        let m = Affine::to_template(&template_landmarks(2.0, 10.0, 20.0));
        let [a, b, c, d, e, f] = m.0;
        assert!((a - 0.5).abs() < 1e-6 && b.abs() < 1e-6 && d.abs() < 1e-6 && (e - 0.5).abs() < 1e-6);
        assert!((c + 5.0).abs() < 1e-4 && (f + 10.0).abs() < 1e-4);
        let (x, y) = m.inverse().apply(38.2946, 51.6963);
        assert!((x - (38.2946 * 2.0 + 10.0)).abs() < 1e-3 && (y - (51.6963 * 2.0 + 20.0)).abs() < 1e-3);
    }

    #[test]
    fn recovers_a_rotation() {
        let angle: f64 = 0.3;
        let (s, c) = angle.sin_cos();
        let mut lm = [Point::default(); 5];
        for (p, t) in lm.iter_mut().zip(ARCFACE_TEMPLATE.iter()) {
            *p = Point { x: (c * t[0] - s * t[1] + 50.0) as f32, y: (s * t[0] + c * t[1] + 7.0) as f32 };
        }
        let m = Affine::to_template(&lm);
        assert!((m.scale() - 1.0).abs() < 1e-5);
        assert!((m.0[3] - (-angle).sin()).abs() < 1e-5, "undoes the rotation");
    }

    #[test]
    fn identity_warp_copies_and_border_is_black() {
        let img = RgbImage::from_fn(8, 8, |x, y| image::Rgb([(x * 30) as u8, (y * 30) as u8, 7]));
        let mut out = Vec::new();
        warp_affine(&img, &Affine([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]), 8, &mut out);
        assert_eq!(out, img.as_raw().clone());
        warp_affine(&img, &Affine([1.0, 0.0, 100.0, 0.0, 1.0, 0.0]), 8, &mut out);
        assert!(out.iter().all(|&v| v == 0), "shifted out of the frame");
    }

    #[test]
    fn half_pixel_shift_averages_neighbours() {
        let img = RgbImage::from_fn(4, 1, |x, _| image::Rgb([if x % 2 == 0 { 0 } else { 200 }, 0, 0]));
        let mut out = Vec::new();
        // dst(x) = src(x + 0.5)
        warp_affine(&img, &Affine([1.0, 0.0, -0.5, 0.0, 1.0, 0.0]), 2, &mut out);
        assert_eq!(out[0], 100);
    }
}
