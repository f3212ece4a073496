//! 512-bit sign sketches for the search prefilter.
//!
//! An embedding is rotated by a fixed pseudo-random orthogonal transform (two rounds of random
//! signs followed by a Walsh–Hadamard transform) and the sign of each coordinate is kept. For
//! unit vectors at angle θ each sketch bit differs with probability θ/π (random-hyperplane LSH,
//! Charikar 2002), so the Hamming distance between two sketches estimates the angle. A search
//! with a similarity floor turns the floor into a Hamming bound a few standard deviations above
//! the expected distance at the floor and computes exact dot products only for rows within it.
//! The transform is fixed by constants. Sketches are kept in the index snapshot, whose header
//! holds a fingerprint of this transform: a snapshot made by another transform is not loaded.

use crate::domain::EMBEDDING_DIM;

/// u64 words per sketch (one bit per dimension).
pub const WORDS: usize = EMBEDDING_DIM / 64;

/// One sketch.
pub type Sketch = [u64; WORDS];

/// Standard deviations of slack above the expected Hamming distance at the similarity floor.
/// At 2.5 (unit test below, 2,000 random pairs each) a face exactly at a floor of 0.30 is kept
/// with probability 0.998 and every one at 0.35, while about 4% of unrelated rows pass; the
/// search bench measures recall@10 on planted neighbours.
pub const SLACK_SIGMAS: f64 = 2.5;

/// The next value of a splitmix64 stream: the fixed stream behind the rotation's signs, and the
/// deterministic data of tests, benches and examples.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The ±1 signs of the two rounds, from a fixed splitmix64 stream.
fn signs() -> &'static [[f32; EMBEDDING_DIM]; 2] {
    static SIGNS: std::sync::OnceLock<[[f32; EMBEDDING_DIM]; 2]> = std::sync::OnceLock::new();
    SIGNS.get_or_init(|| {
        let mut state: u64 = 0x5EED_F00D_FACE_0001;
        let mut out = [[0.0; EMBEDDING_DIM]; 2];
        for round in &mut out {
            for s in round.iter_mut() {
                *s = if splitmix64(&mut state) & 1 == 0 { 1.0 } else { -1.0 };
            }
        }
        out
    })
}

/// In-place unnormalised fast Walsh–Hadamard transform (length a power of two).
fn hadamard(v: &mut [f32]) {
    let mut h = 1;
    while h < v.len() {
        for block in v.chunks_exact_mut(2 * h) {
            let (lo, hi) = block.split_at_mut(h);
            for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
                let (x, y) = (*a, *b);
                *a = x + y;
                *b = x - y;
            }
        }
        h *= 2;
    }
}

/// The sketch of a vector of `EMBEDDING_DIM` values (its length does not matter).
pub fn sketch(v: &[f32]) -> Sketch {
    let mut x = [0.0f32; EMBEDDING_DIM];
    x[..v.len().min(EMBEDDING_DIM)].copy_from_slice(&v[..v.len().min(EMBEDDING_DIM)]);
    for round in signs() {
        for (value, sign) in x.iter_mut().zip(round) {
            *value *= sign;
        }
        hadamard(&mut x);
    }
    let mut out = [0u64; WORDS];
    for (i, value) in x.iter().enumerate() {
        if *value >= 0.0 {
            out[i / 64] |= 1 << (i % 64);
        }
    }
    out
}

/// Hamming distance between two sketches.
#[inline]
pub fn distance(a: &Sketch, b: &[u64]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// Indexes of the sketches in `codes` (`WORDS` words each) within `bound` of `query`, with the
/// POPCNT instruction when the CPU has it (the portable count is several times slower).
pub fn within(query: &Sketch, codes: &[u64], bound: u32) -> Vec<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU supports POPCNT (checked above).
            return unsafe { within_popcnt(query, codes, bound) };
        }
    }
    within_portable(query, codes, bound)
}

#[inline(always)]
fn within_portable(query: &Sketch, codes: &[u64], bound: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for (row, code) in codes.chunks_exact(WORDS).enumerate() {
        if distance(query, code) <= bound {
            out.push(row as u32);
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
unsafe fn within_popcnt(query: &Sketch, codes: &[u64], bound: u32) -> Vec<u32> {
    within_portable(query, codes, bound)
}

/// The largest Hamming distance a row may have and still be checked exactly when the search
/// keeps similarities >= `min`: the expected distance at `min` plus `SLACK_SIGMAS` binomial
/// standard deviations. `None` when the bound would keep most rows (a low floor): scan exactly.
pub fn max_distance(min: f32) -> Option<u32> {
    if min.is_nan() || min <= -1.0 {
        return None;
    }
    let bits = EMBEDDING_DIM as f64;
    let p = f64::from(min.min(1.0)).acos() / std::f64::consts::PI;
    let bound = bits * p + SLACK_SIGMAS * (bits * p * (1.0 - p)).sqrt();
    // Unrelated vectors sit at bits/2 ± sqrt(bits)/2; past that the filter saves nothing.
    (bound < bits / 2.0).then_some(bound.ceil() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64) -> Vec<f32> {
        let mut state = seed;
        let v: Vec<f32> =
            (0..EMBEDDING_DIM).map(|_| (splitmix64(&mut state) >> 40) as f32 / (1u64 << 23) as f32 - 1.0).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    /// `a` rotated towards `b` so that the cosine to `a` is `cos` (b made orthogonal to a).
    fn at_cosine(a: &[f32], b: &[f32], cos: f32) -> Vec<f32> {
        let along: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let ortho: Vec<f32> = b.iter().zip(a).map(|(y, x)| y - along * x).collect();
        let n = ortho.iter().map(|x| x * x).sum::<f32>().sqrt();
        let sin = (1.0 - cos * cos).sqrt();
        a.iter().zip(&ortho).map(|(x, o)| cos * x + sin * o / n).collect()
    }

    #[test]
    fn transform_is_orthogonal() {
        let (a, b) = (unit(1), unit(2));
        let rotate = |v: &[f32]| {
            let mut x = v.to_vec();
            for round in signs() {
                x.iter_mut().zip(round).for_each(|(v, s)| *v *= s);
                hadamard(&mut x);
            }
            x
        };
        let (ra, rb) = (rotate(&a), rotate(&b));
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
        let scale = EMBEDDING_DIM as f32; // two unnormalised transforms
        assert!((dot(&ra, &ra) / scale / scale - 1.0).abs() < 1e-4);
        assert!((dot(&ra, &rb) / scale / scale - dot(&a, &b)).abs() < 1e-4);
    }

    #[test]
    fn distance_tracks_the_angle_and_the_bound_keeps_faces_at_the_floor() {
        let identical = unit(3);
        assert_eq!(distance(&sketch(&identical), &sketch(&identical)), 0);
        let trials = 2000u64;
        let floor = 0.3;
        let bound = max_distance(floor).expect("a floor of 0.3 filters");
        let (mut at_floor, mut above, mut unrelated) = (0u64, 0u64, 0u64);
        for t in 0..trials {
            let (a, b) = (unit(100 + t), unit(100_000 + t));
            let code = sketch(&a);
            at_floor += u64::from(distance(&code, &sketch(&at_cosine(&a, &b, floor))) <= bound);
            above += u64::from(distance(&code, &sketch(&at_cosine(&a, &b, floor + 0.05))) <= bound);
            unrelated += u64::from(distance(&code, &sketch(&b)) <= bound);
        }
        let rate = |n: u64| n as f64 / trials as f64;
        println!("kept: at the floor {}, 0.05 above {}, unrelated {}", rate(at_floor), rate(above), rate(unrelated));
        assert!(rate(at_floor) >= 0.98, "faces exactly at the floor kept: {}", rate(at_floor));
        assert!(rate(above) >= 0.998, "faces 0.05 above the floor kept: {}", rate(above));
        assert!(rate(unrelated) <= 0.06, "unrelated rows kept: {}", rate(unrelated));
        assert_eq!(max_distance(-1.0), None);
        assert_eq!(max_distance(0.0), None, "a floor of 0 keeps half of unrelated rows: scan exactly");
        assert!(max_distance(0.9).unwrap() < max_distance(0.5).unwrap());
    }
}
