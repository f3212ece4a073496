//! Plain data types shared by every layer: detections, landmarks, quality, embeddings.
//! No I/O, no tonic, no sled, no ort.

/// Dimension of the w600k_mbf embedding.
pub const EMBEDDING_DIM: usize = 512;

/// A point in pixels of the orientation-corrected image.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Point {
    pub x: f32,
    pub y: f32,
}

/// Axis-aligned box in pixels; `x_min <= x_max`, `y_min <= y_max`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BoundingBox {
    pub x_min: f32,
    pub y_min: f32,
    pub x_max: f32,
    pub y_max: f32,
}

impl BoundingBox {
    pub fn width(&self) -> f32 {
        self.x_max - self.x_min
    }

    pub fn height(&self) -> f32 {
        self.y_max - self.y_min
    }

    /// Area in square pixels (0 for a degenerate box).
    pub fn area(&self) -> f32 {
        self.width().max(0.0) * self.height().max(0.0)
    }

    pub fn center(&self) -> Point {
        Point { x: (self.x_min + self.x_max) / 2.0, y: (self.y_min + self.y_max) / 2.0 }
    }

    /// Intersection over union, 0 when either box is empty.
    pub fn iou(&self, other: &BoundingBox) -> f32 {
        let w = (self.x_max.min(other.x_max) - self.x_min.max(other.x_min)).max(0.0);
        let h = (self.y_max.min(other.y_max) - self.y_min.max(other.y_min)).max(0.0);
        let inter = w * h;
        let union = self.area() + other.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }
}

/// The five SCRFD keypoints in image order: left eye, right eye (as seen), nose tip, left and
/// right mouth corner.
pub type Landmarks = [Point; 5];

/// One face found by the detector.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub bbox: BoundingBox,
    /// Detector confidence, 0-1.
    pub score: f32,
    pub landmarks: Landmarks,
}

/// A quality problem that keeps a face from being enrolled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QualityIssue {
    TooSmall,
    LowConfidence,
    Blurry,
    TooDark,
    TooBright,
    Pose,
}

/// Measured quality of one face, with the issues found against the enrollment thresholds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FaceQuality {
    /// Shorter side of the face box, pixels.
    pub face_size: f32,
    /// Distance between the eye centres, pixels.
    pub interocular_distance: f32,
    /// Variance of the Laplacian of the aligned grey face.
    pub sharpness: f32,
    /// Mean luma of the aligned face, 0-255.
    pub brightness: f32,
    /// Degrees, estimated from the landmarks.
    pub yaw: f32,
    pub pitch: f32,
    pub roll: f32,
    pub issues: Vec<QualityIssue>,
    /// 0-1 summary for ranking faces; not a probability.
    pub score: f32,
}

impl FaceQuality {
    /// True when the face passes the enrollment gate.
    pub fn acceptable(&self) -> bool {
        self.issues.is_empty()
    }
}

/// An L2-normalised face embedding of [`EMBEDDING_DIM`] floats.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding(Vec<f32>);

impl Embedding {
    /// Normalises `raw` to unit length; `None` when its length is wrong or its norm is zero or
    /// not finite.
    pub fn from_raw(mut raw: Vec<f32>) -> Option<Self> {
        if raw.len() != EMBEDDING_DIM {
            return None;
        }
        let norm = raw.iter().map(|v| v * v).sum::<f32>().sqrt();
        if !norm.is_finite() || norm == 0.0 {
            return None;
        }
        raw.iter_mut().for_each(|v| *v /= norm);
        Some(Embedding(raw))
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }

    /// Cosine similarity (a dot product, both sides being unit vectors).
    pub fn similarity(&self, other: &Embedding) -> f32 {
        self.0.iter().zip(&other.0).map(|(a, b)| a * b).sum()
    }

    pub fn into_vec(self) -> Vec<f32> {
        self.0
    }
}

/// One analysed face: detection, quality and, when asked for, embedding and thumbnail.
#[derive(Debug, Clone)]
pub struct AnalyzedFace {
    pub detection: Detection,
    pub quality: FaceQuality,
    pub embedding: Option<Embedding>,
    /// Square JPEG "zoomed face".
    pub thumbnail: Option<Vec<u8>>,
}

/// Result of running the pipeline on one image. Faces are sorted largest first.
#[derive(Debug, Clone)]
pub struct ImageAnalysis {
    pub width: u32,
    pub height: u32,
    pub faces: Vec<AnalyzedFace>,
}
