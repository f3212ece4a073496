//! The tiled search for small faces in large images. The whole-image passes see a 4000 px
//! photo at 640 px, where a 24 px face is 4 canvas pixels: too small for the detector. When
//! they find no confident face, the image is shrunk only as far as the smallest face sought
//! stays detectable (`min_canvas_face` canvas pixels) and searched in overlapping tiles of the
//! fine canvas. A face no larger than the overlap lies whole inside some tile; larger faces
//! were within the whole-image passes' reach (the overlap grows to make it so, up to half a
//! tile: a limit met only past 12,000 px), so tile detections larger than that, or cut by an
//! edge between tiles, are dropped. Pure planning here; the detector runs the tiles.

use crate::domain::{BoundingBox, Detection, Point};

/// Overlap between neighbouring tiles, as a fraction of the tile side.
const OVERLAP_FRACTION: u32 = 5;
/// A tile detection closer than this (tile pixels) to an edge shared with another tile is a
/// face cut by that edge: dropped (the neighbour holds it whole).
const EDGE_MARGIN: f32 = 2.0;

/// Where the tiled search runs: the shrunk image's size and the tiles' top-left corners in it.
#[derive(Debug, Clone, PartialEq)]
pub struct TilePlan {
    /// The image shrunk to this size (the original size when not shrunk at all).
    pub width: u32,
    pub height: u32,
    /// Side of a tile (the fine canvas), shrunk-image pixels.
    pub side: u32,
    /// Largest face kept from a tile, shrunk-image pixels (the overlap, less a margin).
    pub max_face: f32,
    /// Top-left corners of the tiles, shrunk-image pixels.
    pub origins: Vec<(u32, u32)>,
}

/// Tile starts along one axis of `len` pixels: evenly spread, neighbours overlapping by at
/// least `overlap`.
fn starts(len: u32, side: u32, overlap: u32) -> Vec<u32> {
    if len <= side {
        return vec![0];
    }
    let step = side - overlap;
    let n = (len - side).div_ceil(step) + 1;
    (0..n).map(|i| ((u64::from(i) * u64::from(len - side)) / u64::from(n - 1)) as u32).collect()
}

/// The tiles that find faces of `min_face` image pixels (longer box side) in a `width` x
/// `height` image, where the detector finds faces of `min_canvas_face` canvas pixels on tiles of
/// `side`; at most `max_tiles` (the image is shrunk further, giving up the smallest faces,
/// when more would be needed). `None` when no tiling is needed (a single fine canvas already
/// sees such faces) or possible (`min_face` or `max_tiles` 0, or too few tiles allowed to see
/// more than the whole-image pass).
pub fn plan_tiles(
    width: u32,
    height: u32,
    min_face: f32,
    min_canvas_face: f32,
    side: u32,
    max_tiles: usize,
) -> Option<TilePlan> {
    if min_face <= 0.0 || max_tiles == 0 || width == 0 || height == 0 {
        return None;
    }
    let mut scale = (min_canvas_face / min_face).min(1.0);
    loop {
        let (w, h) = (((width as f32 * scale).round() as u32).max(1), ((height as f32 * scale).round() as u32).max(1));
        if w.max(h) <= side {
            return None;
        }
        // The tiles keep faces up to the overlap; the whole-image pass (the image fitted to one
        // `side` canvas) is trusted from `min_canvas_face` canvas pixels: the overlap covers
        // up to there (when a half tile allows), so no face size falls between the two.
        let whole_pass_min = (min_canvas_face * w.max(h) as f32 / side as f32).ceil() as u32;
        let overlap = (side / OVERLAP_FRACTION).max(whole_pass_min + 2 * EDGE_MARGIN as u32 + 1).min(side / 2);
        let (xs, ys) = (starts(w, side, overlap), starts(h, side, overlap));
        if xs.len() * ys.len() <= max_tiles {
            let origins = ys.iter().flat_map(|&y| xs.iter().map(move |&x| (x, y))).collect();
            return Some(TilePlan {
                width: w,
                height: h,
                side,
                max_face: (overlap as f32) - 2.0 * EDGE_MARGIN,
                origins,
            });
        }
        // Shrink by a step and try again: fewer tiles, larger smallest face.
        scale *= 0.9;
    }
}

impl TilePlan {
    /// Keeps a detection of the tile at `origin` (coordinates in the tile) when it is a whole
    /// face the tiles are for, and maps it to the coordinates of the `image_width` x
    /// `image_height` image the plan was made for.
    pub fn keep(&self, origin: (u32, u32), d: &Detection, image_width: u32, image_height: u32) -> Option<Detection> {
        let b = &d.bbox;
        if b.width().max(b.height()) > self.max_face {
            return None;
        }
        let (x0, y0) = (origin.0 as f32, origin.1 as f32);
        let (tile_w, tile_h) =
            ((self.width - origin.0).min(self.side) as f32, (self.height - origin.1).min(self.side) as f32);
        let cut_left = origin.0 > 0 && b.x_min < EDGE_MARGIN;
        let cut_top = origin.1 > 0 && b.y_min < EDGE_MARGIN;
        let cut_right = origin.0 + (tile_w as u32) < self.width && b.x_max > tile_w - EDGE_MARGIN;
        let cut_bottom = origin.1 + (tile_h as u32) < self.height && b.y_max > tile_h - EDGE_MARGIN;
        if cut_left || cut_top || cut_right || cut_bottom {
            return None;
        }
        // Per axis: the shrunk sides are rounded.
        let (sx, sy) = (image_width as f32 / self.width as f32, image_height as f32 / self.height as f32);
        let map = |p: Point| Point { x: (p.x + x0) * sx, y: (p.y + y0) * sy };
        let (min, max) = (map(Point { x: b.x_min, y: b.y_min }), map(Point { x: b.x_max, y: b.y_max }));
        Some(Detection {
            bbox: BoundingBox { x_min: min.x, y_min: min.y, x_max: max.x, y_max: max.y },
            score: d.score,
            landmarks: d.landmarks.map(map),
            rotation: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_image_is_shrunk_only_as_far_as_a_small_face_stays_visible() {
        // 4000x3000, 24 px faces, 16 canvas px needed: shrunk to 2/3 (2667x2000).
        let plan = plan_tiles(4000, 3000, 24.0, 16.0, 640, 30).expect("tiles");
        assert_eq!((plan.width, plan.height), (2667, 2000));
        assert_eq!(plan.origins.len(), 5 * 4);
        assert_eq!(plan.origins.first(), Some(&(0, 0)));
        assert_eq!(plan.origins.last(), Some(&(2667 - 640, 2000 - 640)));
        // Neighbours overlap by at least a fifth of a tile.
        let xs: Vec<u32> = plan.origins.iter().filter(|o| o.1 == 0).map(|o| o.0).collect();
        assert!(xs.windows(2).all(|w| w[1] - w[0] <= 640 - 128), "{xs:?}");
    }

    #[test]
    fn no_tiles_where_the_whole_image_pass_already_sees_the_face() {
        // 900 px at 2/3 is 600: one fine canvas holds it.
        assert_eq!(plan_tiles(900, 700, 24.0, 16.0, 640, 30), None);
        assert_eq!(plan_tiles(4000, 3000, 0.0, 16.0, 640, 30), None, "0 turns the search off");
        assert_eq!(plan_tiles(4000, 3000, 24.0, 16.0, 640, 0), None, "as do 0 tiles");
        // Enrollment looking for 200 px faces needs no tiles.
        assert_eq!(plan_tiles(4000, 3000, 200.0, 16.0, 640, 30), None);
    }

    #[test]
    fn the_tile_count_is_bounded_by_giving_up_the_smallest_faces() {
        let plan = plan_tiles(8192, 4800, 24.0, 16.0, 640, 30).expect("tiles");
        assert!(plan.origins.len() <= 30, "{}", plan.origins.len());
        assert!(plan.width < 8192 * 2 / 3, "shrunk further than 2/3: {}", plan.width);
        assert!(plan.width.max(plan.height) > 640);
        assert_eq!(plan_tiles(8192, 8192, 24.0, 16.0, 640, 1), None, "one tile sees no more than the whole pass");
    }

    #[test]
    fn the_overlap_grows_to_the_smallest_face_the_whole_image_pass_sees() {
        // 8192x4800 at 2/3 is 5461 px long: the whole-image pass (640 px) trusts faces from
        // 16 * 5461 / 640 = 137 shrunk pixels up, more than a fifth of a tile.
        let plan = plan_tiles(8192, 4800, 24.0, 16.0, 640, 100).expect("tiles");
        assert_eq!((plan.width, plan.height), (5461, 3200));
        assert!(plan.max_face >= 137.0, "{}", plan.max_face);
        let xs: Vec<u32> = plan.origins.iter().filter(|o| o.1 == 0).map(|o| o.0).collect();
        let overlap = plan.max_face as u32 + 4;
        assert!(xs.windows(2).all(|w| w[1] - w[0] <= 640 - overlap), "{xs:?}");
    }

    fn det(x: f32, y: f32, side: f32) -> Detection {
        Detection {
            bbox: BoundingBox { x_min: x, y_min: y, x_max: x + side, y_max: y + side },
            score: 0.9,
            landmarks: [Point { x: x + side / 2.0, y: y + side / 2.0 }; 5],
            rotation: 0,
        }
    }

    #[test]
    fn tile_detections_are_mapped_back_and_cut_or_large_ones_dropped() {
        let plan = plan_tiles(4000, 3000, 24.0, 16.0, 640, 30).expect("tiles");
        let origin = plan.origins[6]; // second row, second column: every edge is shared
        let kept = plan.keep(origin, &det(100.0, 200.0, 20.0), 4000, 3000).expect("kept");
        let sx = 4000.0 / plan.width as f32;
        assert!((kept.bbox.x_min - (origin.0 as f32 + 100.0) * sx).abs() < 1e-3);
        assert!((kept.landmarks[0].y - (origin.1 as f32 + 210.0) * 3000.0 / plan.height as f32).abs() < 1e-3);
        assert_eq!(plan.keep(origin, &det(0.5, 200.0, 20.0), 4000, 3000), None, "cut by the left edge");
        assert_eq!(plan.keep(origin, &det(100.0, 625.0, 20.0), 4000, 3000), None, "cut by the bottom edge");
        assert_eq!(plan.keep(origin, &det(100.0, 100.0, 200.0), 4000, 3000), None, "larger than the overlap");
        // The image's own edges cut nothing.
        assert!(plan.keep((0, 0), &det(0.5, 0.5, 20.0), 4000, 3000).is_some());
    }
}
