//! Which face of a photo an enrollment takes. Under REJECT, the one face that passes the
//! quality gate. Under DOMINANT (the default), the most prominent face of the photo, if it
//! passes the gate and is clearly more prominent than the next face that passes it: a
//! passer-by or a face on a poster behind the person is ignored, two people side by side are
//! still refused, and so is a photo whose most prominent face fails the gate (its person turned
//! away or blurred) while a passer-by passes it.
//!
//! Prominence is size weighted by centrality: the face box's shorter side times (1 - d). d is
//! the distance of the box's centre from the image's centre with each axis measured in half the
//! image's width or height, over that frame's half diagonal: sqrt((dx^2 + dy^2) / 2), 0 at the
//! centre, 1 in a corner. The photographer frames the person being enrolled; a face of the same
//! size halfway to a corner counts half.

use crate::domain::{AnalyzedFace, MultipleFaces};

/// How much more prominent the most prominent enrollable face must be than the next enrollable
/// one to be taken under DOMINANT. Calibrated on devfaces (README: "Enrollment photos with more
/// than one face"): its photos with two or more enrollable faces (39 in DetectFaces, 38 at
/// enrollment's coverage) all show their person at a ratio of 1.82 or more; the group photos of
/// the test fixtures are at 1.01 to 1.03.
pub const DOMINANCE_RATIO: f32 = 1.5;

/// The outcome of [`enrollable_face`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrollable {
    /// This face is enrolled; `others` faces of the photo (any quality) are not.
    Face { index: usize, others: usize },
    /// No face passes the quality gate.
    NoFace,
    /// `count` faces pass the gate and none dominates (or the policy is REJECT).
    Competing { count: usize },
    /// DOMINANT: the photo's most prominent face, this one, fails the gate while another passes.
    Failing { index: usize },
}

/// A face's prominence in a `width` x `height` image (module docs).
pub fn prominence(face: &AnalyzedFace, width: u32, height: u32) -> f32 {
    let (half_w, half_h) = (width.max(1) as f32 / 2.0, height.max(1) as f32 / 2.0);
    let b = &face.detection.bbox;
    let dx = ((b.x_min + b.x_max) / 2.0 - half_w) / half_w;
    let dy = ((b.y_min + b.y_max) / 2.0 - half_h) / half_h;
    let d = ((dx * dx + dy * dy) / 2.0).sqrt().min(1.0);
    face.quality.face_size * (1.0 - d)
}

/// Picks the face to enroll among the `faces` of a `width` x `height` image under `policy`.
pub fn enrollable_face(faces: &[AnalyzedFace], width: u32, height: u32, policy: MultipleFaces) -> Enrollable {
    let mut passing: Vec<(usize, f32)> = (0..faces.len())
        .filter(|&i| faces[i].quality.acceptable())
        .map(|i| (i, prominence(&faces[i], width, height)))
        .collect();
    passing.sort_by(|a, b| b.1.total_cmp(&a.1));
    let others = faces.len().saturating_sub(1);
    if policy == MultipleFaces::Dominant
        && let Some(&(_, best)) = passing.first()
        && let Some(index) = (0..faces.len())
            .filter(|&i| !faces[i].quality.acceptable())
            .find(|&i| prominence(&faces[i], width, height) > best)
    {
        return Enrollable::Failing { index };
    }
    match (passing.as_slice(), policy) {
        ([], _) => Enrollable::NoFace,
        ([(index, _)], _) => Enrollable::Face { index: *index, others },
        ([(index, first), (_, second), ..], MultipleFaces::Dominant) if *first >= DOMINANCE_RATIO * *second => {
            Enrollable::Face { index: *index, others }
        }
        (many, _) => Enrollable::Competing { count: many.len() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BoundingBox, Detection, FaceQuality, Point, QualityIssue};

    /// A face of side `size` centred at (`cx`, `cy`).
    fn face(cx: f32, cy: f32, size: f32, issues: Vec<QualityIssue>) -> AnalyzedFace {
        let half = size / 2.0;
        let bbox = BoundingBox { x_min: cx - half, y_min: cy - half, x_max: cx + half, y_max: cy + half };
        AnalyzedFace {
            detection: Detection { bbox, score: 0.8, landmarks: [Point::default(); 5], rotation: 0 },
            quality: FaceQuality { face_size: size, issues, ..FaceQuality::default() },
            embedding: None,
            other_embedding: None,
            thumbnail: None,
        }
    }

    #[test]
    fn prominence_is_size_weighted_by_centrality() {
        assert_eq!(prominence(&face(200.0, 100.0, 80.0, vec![]), 400, 200), 80.0);
        assert_eq!(prominence(&face(400.0, 200.0, 80.0, vec![]), 400, 200), 0.0);
        let halfway = prominence(&face(300.0, 150.0, 80.0, vec![]), 400, 200);
        assert!((halfway - 40.0).abs() < 1e-3, "{halfway}");
        // Off the diagonal: halfway to the right edge, d = sqrt(0.5^2 / 2).
        let right = prominence(&face(300.0, 100.0, 80.0, vec![]), 400, 200);
        assert!((right - 80.0 * (1.0 - 0.125f32.sqrt())).abs() < 1e-3, "{right}");
    }

    #[test]
    fn one_passing_face_is_taken_whatever_else_is_there() {
        let faces = [face(50.0, 50.0, 20.0, vec![QualityIssue::TooSmall]), face(300.0, 300.0, 90.0, vec![])];
        for policy in [MultipleFaces::Dominant, MultipleFaces::Reject] {
            assert_eq!(enrollable_face(&faces, 400, 400, policy), Enrollable::Face { index: 1, others: 1 });
        }
        assert_eq!(enrollable_face(&faces[..1], 400, 400, MultipleFaces::Dominant), Enrollable::NoFace);
        assert_eq!(enrollable_face(&[], 400, 400, MultipleFaces::Dominant), Enrollable::NoFace);
    }

    #[test]
    fn a_dominant_face_is_taken_only_under_dominant() {
        // The person in the middle; a face as large halfway to a corner, a blurry one beside.
        let faces = [
            face(350.0, 350.0, 100.0, vec![]),
            face(200.0, 200.0, 100.0, vec![]),
            face(60.0, 60.0, 30.0, vec![QualityIssue::Blurry]),
        ];
        assert_eq!(
            enrollable_face(&faces, 400, 400, MultipleFaces::Dominant),
            Enrollable::Face { index: 1, others: 2 }
        );
        assert_eq!(enrollable_face(&faces, 400, 400, MultipleFaces::Reject), Enrollable::Competing { count: 2 });
        // A much larger face off centre dominates a small one in the middle.
        let faces = [face(100.0, 200.0, 150.0, vec![]), face(200.0, 200.0, 40.0, vec![])];
        assert_eq!(
            enrollable_face(&faces, 400, 400, MultipleFaces::Dominant),
            Enrollable::Face { index: 0, others: 1 }
        );
    }

    #[test]
    fn a_most_prominent_face_that_fails_the_gate_is_not_passed_over_for_a_bystander() {
        // The person in the middle turned away; a smaller bystander off centre passes the gate.
        let faces = [face(200.0, 200.0, 100.0, vec![QualityIssue::Pose]), face(340.0, 120.0, 50.0, vec![])];
        assert_eq!(enrollable_face(&faces, 400, 400, MultipleFaces::Dominant), Enrollable::Failing { index: 0 });
        // REJECT keeps the first milestone's rule: the one face that passes.
        assert_eq!(enrollable_face(&faces, 400, 400, MultipleFaces::Reject), Enrollable::Face { index: 1, others: 1 });
        // A failing face less prominent than the passing one changes nothing.
        let faces = [face(200.0, 200.0, 100.0, vec![]), face(340.0, 120.0, 60.0, vec![QualityIssue::Blurry])];
        assert_eq!(
            enrollable_face(&faces, 400, 400, MultipleFaces::Dominant),
            Enrollable::Face { index: 0, others: 1 }
        );
    }

    #[test]
    fn faces_that_compete_are_refused() {
        // Two people side by side, either side of the centre.
        let pair = [face(140.0, 200.0, 90.0, vec![]), face(260.0, 200.0, 85.0, vec![])];
        assert_eq!(enrollable_face(&pair, 400, 400, MultipleFaces::Dominant), Enrollable::Competing { count: 2 });
        // Just under the ratio, with a third face.
        let second = 100.0 / DOMINANCE_RATIO + 1.0;
        let close =
            [face(200.0, 200.0, 100.0, vec![]), face(200.0, 200.0, second, vec![]), face(20.0, 20.0, 35.0, vec![])];
        assert_eq!(enrollable_face(&close, 400, 400, MultipleFaces::Dominant), Enrollable::Competing { count: 3 });
        let at_ratio = [face(200.0, 200.0, 100.0, vec![]), face(200.0, 200.0, 100.0 / DOMINANCE_RATIO, vec![])];
        assert_eq!(
            enrollable_face(&at_ratio, 400, 400, MultipleFaces::Dominant),
            Enrollable::Face { index: 0, others: 1 }
        );
    }
}
