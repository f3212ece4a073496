//! IoU and greedy non-maximum suppression as pure functions, with the reference's pixel
//! convention (box sides count `x2 - x1 + 1` pixels), so borderline suppressions agree.

use crate::domain::{BoundingBox, Detection};

/// IoU with inclusive pixel extents, as insightface's `SCRFD.nms`.
pub fn iou_inclusive(a: &BoundingBox, b: &BoundingBox) -> f32 {
    let area = |r: &BoundingBox| (r.x_max - r.x_min + 1.0) * (r.y_max - r.y_min + 1.0);
    let w = (a.x_max.min(b.x_max) - a.x_min.max(b.x_min) + 1.0).max(0.0);
    let h = (a.y_max.min(b.y_max) - a.y_min.max(b.y_min) + 1.0).max(0.0);
    let inter = w * h;
    inter / (area(a) + area(b) - inter)
}

/// Greedy NMS over boxes already sorted by priority (best first): keeps a box unless it
/// overlaps a kept one by more than `threshold`. Returns the kept indices in priority order.
pub fn nms(boxes: &[BoundingBox], threshold: f32) -> Vec<usize> {
    let mut keep: Vec<usize> = Vec::new();
    for (i, candidate) in boxes.iter().enumerate() {
        if keep.iter().all(|&k| iou_inclusive(&boxes[k], candidate) <= threshold) {
            keep.push(i);
        }
    }
    keep
}

/// `detections` by score, best first, less those that overlap a better one by more than
/// `threshold`.
pub fn nms_by_score(mut detections: Vec<Detection>, threshold: f32) -> Vec<Detection> {
    detections.sort_by(|a, b| b.score.total_cmp(&a.score));
    let boxes: Vec<BoundingBox> = detections.iter().map(|d| d.bbox).collect();
    let kept = nms(&boxes, threshold);
    let mut keep = vec![false; detections.len()];
    kept.iter().for_each(|&i| keep[i] = true);
    let mut flags = keep.into_iter();
    detections.retain(|_| flags.next().unwrap_or(false));
    detections
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x1: f32, y1: f32, x2: f32, y2: f32) -> BoundingBox {
        BoundingBox { x_min: x1, y_min: y1, x_max: x2, y_max: y2 }
    }

    #[test]
    fn iou_counts_inclusive_pixels() {
        assert_eq!(iou_inclusive(&b(0.0, 0.0, 9.0, 9.0), &b(0.0, 0.0, 9.0, 9.0)), 1.0);
        // 10x10 boxes overlapping in a 5x10 strip: 50 / 150
        let v = iou_inclusive(&b(0.0, 0.0, 9.0, 9.0), &b(5.0, 0.0, 14.0, 9.0));
        assert!((v - 50.0 / 150.0).abs() < 1e-6);
        assert_eq!(iou_inclusive(&b(0.0, 0.0, 1.0, 1.0), &b(10.0, 10.0, 11.0, 11.0)), 0.0);
    }

    #[test]
    fn suppresses_overlaps_keeps_the_rest_in_order() {
        let boxes = [b(0.0, 0.0, 9.0, 9.0), b(1.0, 1.0, 10.0, 10.0), b(50.0, 50.0, 60.0, 60.0), b(5.0, 0.0, 14.0, 9.0)];
        assert_eq!(nms(&boxes, 0.4), vec![0, 2, 3]);
        assert_eq!(nms(&boxes, 0.2), vec![0, 2]);
        assert!(nms(&[], 0.4).is_empty());
    }
}
