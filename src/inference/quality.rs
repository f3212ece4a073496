//! Face quality from the landmarks and the aligned crop: size, detector score, sharpness,
//! brightness and a pose estimate, checked against the enrollment thresholds. Pure functions.

use crate::domain::{Detection, FaceQuality, QualityIssue};
use crate::imaging::align::ALIGNED_SIZE;

/// Enrollment thresholds: a face with any value outside them gets a [`QualityIssue`].
#[derive(Debug, Clone, Copy)]
pub struct QualityThresholds {
    /// Minimum shorter side of the face box, pixels.
    pub min_face_size: f32,
    /// Minimum detector score.
    pub min_score: f32,
    /// Minimum variance of the Laplacian of the aligned grey face.
    pub min_sharpness: f32,
    /// Allowed mean luma of the aligned face.
    pub min_brightness: f32,
    pub max_brightness: f32,
    /// Largest allowed |yaw| and |pitch|, degrees.
    pub max_yaw: f32,
    pub max_pitch: f32,
}

impl Default for QualityThresholds {
    fn default() -> Self {
        QualityThresholds {
            min_face_size: 32.0,
            min_score: 0.6,
            min_sharpness: 10.0,
            min_brightness: 40.0,
            max_brightness: 225.0,
            max_yaw: 55.0,
            max_pitch: 45.0,
        }
    }
}

/// Nose depth over inter-ocular distance of an average face, for the yaw estimate.
const NOSE_DEPTH_RATIO: f32 = 0.55;
/// Where the nose tip sits between the eye line and the mouth line on the ArcFace template.
const TEMPLATE_NOSE_RATIO: f32 = 0.495;

/// Measures the face and lists its issues. `aligned` is the 112x112 RGB crop.
pub fn assess(detection: &Detection, aligned: &[u8], thresholds: &QualityThresholds) -> FaceQuality {
    let [le, re, nose, lm, rm] = detection.landmarks;
    let (dx, dy) = (re.x - le.x, re.y - le.y);
    let interocular = (dx * dx + dy * dy).sqrt();
    let roll = crate::imaging::turn::roll(detection);
    // Undo the roll, then read yaw from the nose's offset from the eye midpoint and pitch from
    // its height between the eye and mouth lines.
    let (sin, cos) = (-roll.to_radians()).sin_cos();
    let rotate = |p: crate::domain::Point| (p.x * cos - p.y * sin, p.x * sin + p.y * cos);
    let (le, re, nose, lm, rm) = (rotate(le), rotate(re), rotate(nose), rotate(lm), rotate(rm));
    let eye_mid = ((le.0 + re.0) / 2.0, (le.1 + re.1) / 2.0);
    let mouth_mid = ((lm.0 + rm.0) / 2.0, (lm.1 + rm.1) / 2.0);
    let yaw = if interocular > 0.0 {
        ((nose.0 - eye_mid.0) / interocular / NOSE_DEPTH_RATIO).atan().to_degrees()
    } else {
        0.0
    };
    let face_height = mouth_mid.1 - eye_mid.1;
    let pitch = if face_height.abs() > f32::EPSILON {
        let t = (nose.1 - eye_mid.1) / face_height;
        ((TEMPLATE_NOSE_RATIO - t) * 2.0).clamp(-1.0, 1.0).asin().to_degrees()
    } else {
        90.0
    };
    let (sharpness, brightness) = sharpness_and_brightness(aligned);
    let face_size = detection.bbox.width().min(detection.bbox.height());

    let t = thresholds;
    let mut issues = Vec::new();
    if face_size < t.min_face_size {
        issues.push(QualityIssue::TooSmall);
    }
    if detection.score < t.min_score {
        issues.push(QualityIssue::LowConfidence);
    }
    if sharpness < t.min_sharpness {
        issues.push(QualityIssue::Blurry);
    }
    if brightness < t.min_brightness {
        issues.push(QualityIssue::TooDark);
    }
    if brightness > t.max_brightness {
        issues.push(QualityIssue::TooBright);
    }
    if yaw.abs() > t.max_yaw || pitch.abs() > t.max_pitch {
        issues.push(QualityIssue::Pose);
    }
    let score = summary_score(face_size, detection.score, sharpness, yaw, pitch, t);
    FaceQuality { face_size, interocular_distance: interocular, sharpness, brightness, yaw, pitch, roll, issues, score }
}

fn summary_score(face_size: f32, det: f32, sharpness: f32, yaw: f32, pitch: f32, t: &QualityThresholds) -> f32 {
    let size = (face_size / (4.0 * t.min_face_size)).min(1.0);
    let sharp = (sharpness / (10.0 * t.min_sharpness)).min(1.0);
    let pose = (1.0 - yaw.abs() / 90.0).max(0.0) * (1.0 - pitch.abs() / 90.0).max(0.0);
    (size * det * sharp.sqrt() * pose).clamp(0.0, 1.0)
}

/// Variance of the 4-neighbour Laplacian and mean luma over the central part of the aligned
/// face (the template's face region, without the black border a warp can leave).
fn sharpness_and_brightness(aligned: &[u8]) -> (f32, f32) {
    let n = ALIGNED_SIZE as usize;
    if aligned.len() != n * n * 3 {
        return (0.0, 0.0);
    }
    let luma: Vec<f32> = aligned
        .chunks_exact(3)
        .map(|p| 0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]))
        .collect();
    let (lo, hi) = (24, n - 16);
    let (mut sum, mut sum_sq, mut luma_sum, mut count) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for y in lo..hi {
        for x in 24..n - 24 {
            let c = luma[y * n + x];
            let lap =
                luma[(y - 1) * n + x] + luma[(y + 1) * n + x] + luma[y * n + x - 1] + luma[y * n + x + 1] - 4.0 * c;
            sum += f64::from(lap);
            sum_sq += f64::from(lap) * f64::from(lap);
            luma_sum += f64::from(c);
            count += 1.0;
        }
    }
    let mean = sum / count;
    ((sum_sq / count - mean * mean) as f32, (luma_sum / count) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BoundingBox, Point};

    fn frontal(scale: f32) -> Detection {
        let t = [(38.29, 51.70), (73.53, 51.50), (56.03, 71.74), (41.55, 92.37), (70.73, 92.20)];
        let mut landmarks = [Point::default(); 5];
        for (p, (x, y)) in landmarks.iter_mut().zip(t) {
            *p = Point { x: x * scale, y: y * scale };
        }
        Detection {
            bbox: BoundingBox { x_min: 0.0, y_min: 0.0, x_max: 112.0 * scale, y_max: 112.0 * scale },
            score: 0.9,
            landmarks,
            rotation: 0,
        }
    }

    fn textured() -> Vec<u8> {
        (0..112 * 112)
            .flat_map(|i| {
                let v = if (i / 112 + i % 112) % 2 == 0 { 90 } else { 160 };
                [v, v, v]
            })
            .collect()
    }

    #[test]
    fn frontal_sharp_face_passes() {
        let q = assess(&frontal(1.0), &textured(), &QualityThresholds::default());
        assert!(q.yaw.abs() < 2.0 && q.pitch.abs() < 3.0 && q.roll.abs() < 1.0, "{q:?}");
        assert!(q.issues.is_empty(), "{q:?}");
        assert!((q.interocular_distance - 35.24).abs() < 0.1);
    }

    #[test]
    fn flat_grey_crop_is_blurry_and_small_face_is_small() {
        let flat = vec![128u8; 112 * 112 * 3];
        let q = assess(&frontal(0.2), &flat, &QualityThresholds::default());
        assert!(q.issues.contains(&QualityIssue::Blurry));
        assert!(q.issues.contains(&QualityIssue::TooSmall));
        let dark = vec![5u8; 112 * 112 * 3];
        assert!(assess(&frontal(1.0), &dark, &QualityThresholds::default()).issues.contains(&QualityIssue::TooDark));
    }

    #[test]
    fn turned_head_has_yaw() {
        let mut d = frontal(1.0);
        d.landmarks[2].x += 35.0; // nose past the right eye
        let q = assess(&d, &textured(), &QualityThresholds::default());
        assert!(q.yaw > 55.0, "{q:?}");
        assert!(q.issues.contains(&QualityIssue::Pose));
    }
}
