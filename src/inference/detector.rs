//! SCRFD face detection: letterboxed tensor in, boxes + scores + 5 keypoints out, at one or
//! more input scales merged by NMS. No embedding here.
//!
//! Scale strategy. SCRFD-500M at a 640 canvas finds faces from about 10 canvas pixels up to
//! about half the canvas, but misses a face that fills the frame (a tight 112x112 crop scores
//! 0.04); at 320 it finds those and loses small faces in group photos. So a request runs a
//! coarse pass (320) for large faces and, when small faces can matter, a fine pass (640).
//! Merging prefers, for each face, the pass in whose range it lies: fine-pass detections up to
//! half of the fine canvas, coarse-pass detections above that. Overlaps are then resolved by
//! NMS in that priority order, so the fine pass reproduces the reference's boxes for
//! ordinary faces and the coarse pass adds the faces only it can see.

use image::RgbImage;

use crate::domain::{BoundingBox, Detection, Point};
use crate::error::{Error, Result};
use crate::imaging::resize::{LetterboxGeometry, Letterboxer};
use crate::inference::nms::{nms, nms_by_score};
use crate::inference::session::ModelSession;

const STRIDES: [u32; 3] = [8, 16, 32];
const ANCHORS_PER_LOCATION: usize = 2;
const INPUT_MEAN: f32 = 127.5;
const INPUT_STD: f32 = 128.0;

/// Detector thresholds and the scale strategy.
#[derive(Debug, Clone, Copy)]
pub struct DetectorConfig {
    /// Minimum detector score for a face (the reference uses 0.5).
    pub score_threshold: f32,
    /// NMS IoU threshold (the reference uses 0.4).
    pub nms_threshold: f32,
    /// Canvas side of the coarse pass, for large faces. Multiple of 32.
    pub coarse_size: u32,
    /// Canvas side of the fine pass, for small faces. Multiple of 32.
    pub fine_size: u32,
    /// Smallest face (longer box side, canvas pixels) a pass is trusted to find.
    pub min_canvas_face: f32,
    /// Search copies of the image turned 90/180/270 degrees when no confident upright face is
    /// found (`pipeline::TURN_BELOW_SCORE`).
    pub turned_search: bool,
    /// Smallest face (longer box side, image pixels) the tiled search of a large image looks
    /// for when the whole-image passes find no confident face (`tiles`); 0 turns it off.
    pub small_face: f32,
    /// Most tiles of that search; an image that would need more is shrunk further.
    pub max_tiles: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            score_threshold: 0.5,
            nms_threshold: 0.4,
            coarse_size: 320,
            fine_size: 640,
            min_canvas_face: 16.0,
            turned_search: true,
            small_face: 24.0,
            max_tiles: 30,
        }
    }
}

/// How small the faces a caller needs may be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Coverage {
    /// Every face the fine pass can find (DetectFaces).
    All,
    /// Faces whose longer side is at least this many image pixels (enrollment, search): the
    /// fine pass runs only at the size needed to see them, and not at all when the coarse pass
    /// already can.
    MinFace(f32),
}

/// The canvas sizes a request will run, coarse first.
pub fn plan_passes(config: &DetectorConfig, width: u32, height: u32, coverage: Coverage) -> Vec<u32> {
    let coarse = config.coarse_size;
    let long_side = width.max(height) as f32;
    let fine = match coverage {
        Coverage::All => config.fine_size,
        Coverage::MinFace(min_face) => {
            let needed = config.min_canvas_face * long_side / min_face.max(1.0);
            let rounded = ((needed / 32.0).ceil() as u32 * 32).min(config.fine_size);
            if rounded <= coarse {
                return vec![coarse];
            }
            rounded
        }
    };
    if fine <= coarse { vec![coarse] } else { vec![coarse, fine] }
}

/// The detector model on one worker thread.
#[derive(Debug)]
pub struct Detector {
    session: ModelSession,
    config: DetectorConfig,
    tensor: Vec<f32>,
}

/// A detection tagged with the pass that found it.
#[derive(Debug)]
struct PassDetection {
    detection: Detection,
    canvas: u32,
    scale: f32,
}

impl Detector {
    /// Wraps a loaded SCRFD session after checking its signature: one (N,3,H,W) input and nine
    /// outputs (scores, boxes, keypoints for strides 8/16/32, in that order).
    pub fn try_new(session: ModelSession, config: DetectorConfig) -> Result<Self> {
        let bad = |what: String| Error::Unavailable { message: format!("detector model: {what}") };
        let inputs = session.input_dims();
        if inputs.len() != 1 {
            return Err(bad(format!("expected 1 input, found {}", inputs.len())));
        }
        let dims = &inputs[0];
        if dims.len() != 4 || dims[1] != 3 {
            return Err(bad(format!("expected an (N,3,H,W) input, found {dims:?}")));
        }
        let outputs = session.output_dims();
        if outputs.len() != 9 {
            return Err(bad(format!("expected 9 outputs (SCRFD with keypoints), found {}", outputs.len())));
        }
        for (i, dims) in outputs.iter().enumerate() {
            let want = [1, 4, 10][i / 3];
            if dims.last() != Some(&want) {
                return Err(bad(format!("output {i} has shape {dims:?}, expected last axis {want}")));
            }
        }
        for size in [config.coarse_size, config.fine_size] {
            if size == 0 || size % 32 != 0 {
                return Err(Error::Unavailable {
                    message: format!("detector input size {size} is not a multiple of 32"),
                });
            }
        }
        Ok(Detector { session, config, tensor: Vec::new() })
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Finds faces in `image` under `coverage`, merged across passes, sorted by score.
    pub fn detect(
        &mut self,
        image: &RgbImage,
        coverage: Coverage,
        letterbox: &mut Letterboxer,
    ) -> Result<Vec<Detection>> {
        let passes = plan_passes(&self.config, image.width(), image.height(), coverage);
        let mut found = Vec::new();
        for &canvas in &passes {
            let geometry = letterbox.to_tensor(image, canvas, INPUT_MEAN, INPUT_STD, &mut self.tensor)?;
            for detection in self.run_pass(&geometry)? {
                found.push(PassDetection { detection, canvas, scale: geometry.scale });
            }
        }
        Ok(merge(found, &passes, self.config.nms_threshold))
    }

    /// One detector run at one canvas size; returns detections in image pixels, not yet NMS'd.
    pub fn detect_single_pass(
        &mut self,
        image: &RgbImage,
        canvas: u32,
        letterbox: &mut Letterboxer,
    ) -> Result<Vec<Detection>> {
        let geometry = letterbox.to_tensor(image, canvas, INPUT_MEAN, INPUT_STD, &mut self.tensor)?;
        Ok(nms_by_score(self.run_pass(&geometry)?, self.config.nms_threshold))
    }

    fn run_pass(&mut self, geometry: &LetterboxGeometry) -> Result<Vec<Detection>> {
        let side = geometry.canvas as usize;
        let threshold = self.config.score_threshold;
        let dims = [1usize, 3, side, side];
        self.session.run(&dims, &self.tensor, |outputs| decode_outputs(outputs, geometry, threshold))
    }
}

/// Turns SCRFD's nine outputs (scores, boxes, keypoints per stride) into detections above
/// `threshold`, in image pixels.
fn decode_outputs(outputs: &[&[f32]], geometry: &LetterboxGeometry, threshold: f32) -> Result<Vec<Detection>> {
    if outputs.len() != 9 {
        return Err(Error::bug("the detector returned the wrong number of outputs"));
    }
    let side = geometry.canvas as usize;
    let mut detections = Vec::new();
    for (level, &stride) in STRIDES.iter().enumerate() {
        let (scores, boxes, kps) = (outputs[level], outputs[level + 3], outputs[level + 6]);
        let grid = side / stride as usize;
        let anchors = grid * grid * ANCHORS_PER_LOCATION;
        if scores.len() != anchors || boxes.len() != anchors * 4 || kps.len() != anchors * 10 {
            return Err(Error::bug("detector output size does not match its stride"));
        }
        let s = stride as f32;
        for (k, &score) in scores.iter().enumerate() {
            if score < threshold {
                continue;
            }
            let location = k / ANCHORS_PER_LOCATION;
            let cx = (location % grid) as f32 * s;
            let cy = (location / grid) as f32 * s;
            let d = &boxes[k * 4..k * 4 + 4];
            let inv = 1.0 / geometry.scale;
            let bbox = BoundingBox {
                x_min: (cx - d[0] * s) * inv,
                y_min: (cy - d[1] * s) * inv,
                x_max: (cx + d[2] * s) * inv,
                y_max: (cy + d[3] * s) * inv,
            };
            let p = &kps[k * 10..k * 10 + 10];
            let mut landmarks = [Point::default(); 5];
            for (j, point) in landmarks.iter_mut().enumerate() {
                *point = Point { x: (cx + p[2 * j] * s) * inv, y: (cy + p[2 * j + 1] * s) * inv };
            }
            detections.push(Detection { bbox, score, landmarks, rotation: 0 });
        }
    }
    Ok(detections)
}

/// Merges detections of several passes: each face is taken from the pass in whose range it
/// lies (see the module docs), ties and overlaps resolved by score, then NMS.
fn merge(mut found: Vec<PassDetection>, passes: &[u32], nms_threshold: f32) -> Vec<Detection> {
    let fine = passes.iter().copied().max().unwrap_or(0);
    let in_range = |d: &PassDetection| -> bool {
        if passes.len() < 2 {
            return true;
        }
        let image_side = d.detection.bbox.width().max(d.detection.bbox.height());
        let fine_scale = d.scale * fine as f32 / d.canvas as f32;
        let large = image_side * fine_scale > fine as f32 / 2.0;
        if d.canvas == fine { !large } else { large }
    };
    found.sort_by(|a, b| in_range(b).cmp(&in_range(a)).then(b.detection.score.total_cmp(&a.detection.score)));
    let boxes: Vec<BoundingBox> = found.iter().map(|d| d.detection.bbox).collect();
    let mut kept: Vec<Detection> = nms(&boxes, nms_threshold).into_iter().map(|i| found[i].detection.clone()).collect();
    kept.sort_by(|a, b| b.score.total_cmp(&a.score));
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_all_runs_both_passes() {
        let c = DetectorConfig::default();
        assert_eq!(plan_passes(&c, 1280, 886, Coverage::All), vec![320, 640]);
        assert_eq!(plan_passes(&c, 112, 112, Coverage::All), vec![320, 640]);
    }

    #[test]
    fn plan_min_face_skips_the_fine_pass_when_the_coarse_one_sees_it() {
        let c = DetectorConfig::default();
        // A 640x480 selfie with faces of at least 40 px: 40 px is 20 canvas px at 320.
        assert_eq!(plan_passes(&c, 640, 480, Coverage::MinFace(40.0)), vec![320]);
        // A 2000 px photo with 40 px faces would need 800: capped at the fine size.
        assert_eq!(plan_passes(&c, 2000, 1500, Coverage::MinFace(40.0)), vec![320, 640]);
        // In between, only as large as needed, rounded up to a multiple of 32.
        assert_eq!(plan_passes(&c, 1000, 800, Coverage::MinFace(40.0)), vec![320, 416]);
    }

    fn det(x: f32, y: f32, side: f32, score: f32) -> Detection {
        Detection {
            bbox: BoundingBox { x_min: x, y_min: y, x_max: x + side, y_max: y + side },
            score,
            landmarks: [Point::default(); 5],
            rotation: 0,
        }
    }

    #[test]
    fn merge_prefers_the_pass_in_range() {
        // 1000 px image: fine scale 0.64, coarse 0.32.
        let small_fine = PassDetection { detection: det(10.0, 10.0, 50.0, 0.7), canvas: 640, scale: 0.64 };
        let small_coarse = PassDetection { detection: det(11.0, 11.0, 50.0, 0.9), canvas: 320, scale: 0.32 };
        let big_fine = PassDetection { detection: det(300.0, 300.0, 600.0, 0.9), canvas: 640, scale: 0.64 };
        let big_coarse = PassDetection { detection: det(302.0, 302.0, 600.0, 0.6), canvas: 320, scale: 0.32 };
        let merged = merge(vec![small_fine, small_coarse, big_fine, big_coarse], &[320, 640], 0.4);
        assert_eq!(merged.len(), 2);
        assert!(merged.iter().any(|d| d.bbox.x_min == 10.0), "small face from the fine pass");
        assert!(merged.iter().any(|d| d.bbox.x_min == 302.0), "large face from the coarse pass");
    }

    #[test]
    fn merge_keeps_faces_only_one_pass_found() {
        let only_coarse = PassDetection { detection: det(0.0, 0.0, 900.0, 0.8), canvas: 320, scale: 0.32 };
        let only_fine = PassDetection { detection: det(950.0, 950.0, 20.0, 0.6), canvas: 640, scale: 0.64 };
        assert_eq!(merge(vec![only_coarse, only_fine], &[320, 640], 0.4).len(), 2);
    }
}
