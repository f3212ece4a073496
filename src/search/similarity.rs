//! Similarity of unit vectors (a dot product) and the score-to-decision helper.

use crate::domain::MatchDecision;

/// Dot product, written with eight independent accumulators so the compiler vectorises it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Match thresholds (cosine similarity), calibrated on labelled faces (README).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// At or above: MATCH (and VerifyFace's `match`).
    pub matched: f32,
    /// At or above (and below `matched`): POSSIBLE_MATCH.
    pub possible: f32,
}

impl Thresholds {
    /// The decision for a similarity, `None` below the possible-match threshold.
    pub fn decide(&self, similarity: f32) -> Option<MatchDecision> {
        if similarity >= self.matched {
            Some(MatchDecision::Match)
        } else if similarity >= self.possible {
            Some(MatchDecision::PossibleMatch)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_naive_sum() {
        let a: Vec<f32> = (0..517).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..517).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-3);
    }

    #[test]
    fn decisions_by_band() {
        let t = Thresholds { matched: 0.5, possible: 0.3 };
        assert_eq!(t.decide(0.5), Some(MatchDecision::Match));
        assert_eq!(t.decide(0.4), Some(MatchDecision::PossibleMatch));
        assert_eq!(t.decide(0.29), None);
    }
}
