//! Similarity of unit vectors (a dot product against f16 rows) and the score-to-decision helper.

use crate::domain::MatchDecision;

/// Dot product of f32 `a` with f16 `b` (IEEE half bits, as the index stores rows): F16C + AVX2 +
/// FMA when available, else a scalar conversion.
pub fn dot_f16(a: &[f32], b: &[u16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if simd_f16() {
            // SAFETY: the CPU supports AVX2, FMA and F16C (checked above).
            return unsafe { dot_f16_avx2(a, b) };
        }
    }
    a.iter().zip(b).map(|(x, y)| x * half::f16::from_bits(*y).to_f32()).sum()
}

#[cfg(target_arch = "x86_64")]
fn simd_f16() -> bool {
    static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_avx2(a: &[f32], b: &[u16]) -> f32 {
    use std::arch::x86_64::{
        __m128i, __m256, _mm_add_ps, _mm_cvtss_f32, _mm_hadd_ps, _mm_loadu_si128, _mm256_add_ps,
        _mm256_castps256_ps128, _mm256_cvtph_ps, _mm256_extractf128_ps, _mm256_fmadd_ps, _mm256_loadu_ps,
        _mm256_setzero_ps,
    };
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc: [__m256; 4] = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load reads 8 elements at offsets below `n`, within both slices.
    unsafe {
        while i + 32 <= n {
            for (j, lane) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(pa.add(i + 8 * j));
                let y = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i + 8 * j).cast::<__m128i>()));
                *lane = _mm256_fmadd_ps(x, y, *lane);
            }
            i += 32;
        }
        while i + 8 <= n {
            let y = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i).cast::<__m128i>()));
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), y, acc[0]);
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
        let quad = _mm_hadd_ps(half, half);
        let mut total = _mm_cvtss_f32(_mm_hadd_ps(quad, quad));
        while i < n {
            total += *pa.add(i) * half::f16::from_bits(*pb.add(i)).to_f32();
            i += 1;
        }
        total
    }
}

/// Converts f32 values to f16 bits (round to nearest even).
pub fn to_f16_bits(values: &[f32]) -> Vec<u16> {
    values.iter().map(|v| half::f16::from_f32(*v).to_bits()).collect()
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
    fn f16_dot_is_close_to_f32() {
        for len in [0, 5, 8, 40, 512, 517] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() / 16.0).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos() / 16.0).collect();
            let exact: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let bits = to_f16_bits(&b);
            assert!((dot_f16(&a, &bits) - exact).abs() < 1e-3, "len {len}");
            let scalar: f32 = a.iter().zip(&bits).map(|(x, y)| x * half::f16::from_bits(*y).to_f32()).sum();
            assert!((dot_f16(&a, &bits) - scalar).abs() < 1e-4, "SIMD and scalar agree, len {len}");
        }
    }

    #[test]
    fn decisions_by_band() {
        let t = Thresholds { matched: 0.5, possible: 0.3 };
        assert_eq!(t.decide(0.5), Some(MatchDecision::Match));
        assert_eq!(t.decide(0.4), Some(MatchDecision::PossibleMatch));
        assert_eq!(t.decide(0.29), None);
    }
}
