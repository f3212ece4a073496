//! Quarter turns of an image and of the points found on the turned copy, back to the image as
//! sent. For photos that arrive sideways or upside down without an EXIF orientation.

use image::RgbImage;

use crate::domain::{BoundingBox, Detection, Point};

/// The clockwise turns tried after the image as sent, in degrees.
pub const TURNS: [u16; 3] = [90, 180, 270];

/// `image` turned clockwise by `degrees` (0, 90, 180 or 270).
pub fn turn(image: &RgbImage, degrees: u16) -> RgbImage {
    match degrees % 360 {
        90 => image::imageops::rotate90(image),
        180 => image::imageops::rotate180(image),
        270 => image::imageops::rotate270(image),
        _ => image.clone(),
    }
}

/// A point of the copy turned clockwise by `degrees`, in the coordinates of the image as sent
/// (`width` x `height`, before the turn).
pub fn unturn_point(p: Point, degrees: u16, width: f32, height: f32) -> Point {
    match degrees % 360 {
        // (x, y) -> (height - y, x) on the turned copy.
        90 => Point { x: p.y, y: height - p.x },
        180 => Point { x: width - p.x, y: height - p.y },
        // (x, y) -> (y, width - x) on the turned copy.
        270 => Point { x: width - p.y, y: p.x },
        _ => p,
    }
}

/// A detection made on the copy turned clockwise by `degrees`, in the coordinates of the image
/// as sent, with its turn recorded. The landmarks keep their order (the face's own eyes, nose
/// and mouth corners), which is what alignment needs.
pub fn unturn(detection: Detection, degrees: u16, width: f32, height: f32) -> Detection {
    let b = detection.bbox;
    let corners = [Point { x: b.x_min, y: b.y_min }, Point { x: b.x_max, y: b.y_max }]
        .map(|p| unturn_point(p, degrees, width, height));
    let bbox = BoundingBox {
        x_min: corners[0].x.min(corners[1].x),
        y_min: corners[0].y.min(corners[1].y),
        x_max: corners[0].x.max(corners[1].x),
        y_max: corners[0].y.max(corners[1].y),
    };
    let landmarks = detection.landmarks.map(|p| unturn_point(p, degrees, width, height));
    Detection { bbox, landmarks, rotation: degrees % 360, ..detection }
}

/// The roll of a face from its eye landmarks, degrees: 0 upright, about 90 or -90 sideways,
/// about 180 upside down.
pub fn roll(detection: &Detection) -> f32 {
    let [le, re, ..] = detection.landmarks;
    (re.y - le.y).atan2(re.x - le.x).to_degrees()
}

/// Whether the landmarks sit as on a face the right way up within `max_roll` degrees: the eye
/// line rolled no more than that, and the mouth below the eyes (an upside-down face can come
/// with its eyes labelled left to right as seen, so the roll alone does not tell).
pub fn is_upright(detection: &Detection, max_roll: f32) -> bool {
    let [le, re, _, lm, rm] = detection.landmarks;
    let (ex, ey) = (re.x - le.x, re.y - le.y);
    // The mouth's offset from the eyes, along the eye line's downward normal (-ey, ex).
    let (mx, my) = ((lm.x + rm.x - le.x - re.x) / 2.0, (lm.y + rm.y - le.y - re.y) / 2.0);
    roll(detection).abs() <= max_roll && mx * -ey + my * ex > 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pixel_turned_and_unturned_lands_where_it_was() {
        // A 5x3 image with one white pixel at (3, 1): its centre is (3.5, 1.5).
        let mut image = RgbImage::new(5, 3);
        image.put_pixel(3, 1, image::Rgb([255, 255, 255]));
        for degrees in [0, 90, 180, 270] {
            let turned = turn(&image, degrees);
            let (x, y, _) = turned.enumerate_pixels().find(|(_, _, p)| p.0[0] == 255).expect("the white pixel");
            let centre = Point { x: x as f32 + 0.5, y: y as f32 + 0.5 };
            assert_eq!(unturn_point(centre, degrees, 5.0, 3.0), Point { x: 3.5, y: 1.5 }, "{degrees}");
        }
    }

    #[test]
    fn a_detection_comes_back_with_an_ordered_box_and_its_turn() {
        let detection = Detection {
            bbox: BoundingBox { x_min: 10.0, y_min: 20.0, x_max: 30.0, y_max: 50.0 },
            score: 0.9,
            landmarks: [
                Point { x: 15.0, y: 30.0 },
                Point { x: 25.0, y: 30.0 },
                Point::default(),
                Point::default(),
                Point::default(),
            ],
            rotation: 0,
        };
        let back = unturn(detection.clone(), 90, 100.0, 60.0);
        assert_eq!(back.bbox, BoundingBox { x_min: 20.0, y_min: 30.0, x_max: 50.0, y_max: 50.0 });
        assert_eq!(back.rotation, 90);
        assert!((roll(&detection)).abs() < 1e-3);
        // Upright on the copy turned 90 degrees clockwise: sideways, rolled a quarter, as sent.
        assert!((roll(&back) + 90.0).abs() < 1e-3, "{}", roll(&back));
        assert_eq!(unturn(detection.clone(), 0, 100.0, 60.0), detection);
    }

    #[test]
    fn upright_needs_a_level_eye_line_and_the_mouth_below_the_eyes() {
        let face = |points: [(f32, f32); 5]| Detection {
            bbox: BoundingBox::default(),
            score: 0.9,
            landmarks: points.map(|(x, y)| Point { x, y }),
            rotation: 0,
        };
        let upright = face([(40.0, 50.0), (70.0, 50.0), (55.0, 65.0), (43.0, 80.0), (67.0, 80.0)]);
        assert!(is_upright(&upright, 45.0));
        // Upside down, eyes still labelled left to right as seen: level, but the mouth is above.
        let flipped = face([(40.0, 80.0), (70.0, 80.0), (55.0, 65.0), (43.0, 50.0), (67.0, 50.0)]);
        assert!(!is_upright(&flipped, 45.0));
        // Sideways.
        let sideways = face([(50.0, 70.0), (50.0, 40.0), (65.0, 55.0), (80.0, 67.0), (80.0, 43.0)]);
        assert!(!is_upright(&sideways, 45.0));
    }
}
