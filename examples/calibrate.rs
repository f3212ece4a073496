//! Threshold calibration on a labelled face set (../shared/data/devfaces layout: images/,
//! labels.csv, pairs.csv). Embeds the largest face of every image with the production pipeline
//! (the options SearchFaces and VerifyFace use), scores every pair of pairs.csv, and prints the
//! ROC and the operating points as Markdown.
//!
//!   cargo run --release --example calibrate -- ../shared/data/devfaces

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use facevault::Config;
use facevault::domain::Embedding;
use facevault::inference::{AnalyzeOptions, Coverage, EmbedWith, FaceSelection, load_pipeline};
use facevault::search::sketch;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "../shared/data/devfaces".into()));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = Config::for_root(root);
    let mut pipeline = load_pipeline(&config.inference())?;
    let options = AnalyzeOptions {
        coverage: Coverage::MinFace(config.min_face_size),
        embeddings: FaceSelection::Largest,
        thumbnails: FaceSelection::None,
        models: EmbedWith::PRIMARY,
    };

    let pairs = std::fs::read_to_string(dir.join("pairs.csv"))?;
    let pairs: Vec<(String, String, bool)> = pairs
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_owned(), f[1].to_owned(), f[2] == "1")
        })
        .collect();
    let labels = std::fs::read_to_string(dir.join("labels.csv"))?;
    let identity: HashMap<String, String> = labels
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_owned(), f[1].to_owned())
        })
        .collect();
    let mut embeddings: HashMap<String, Option<Embedding>> = HashMap::new();
    let mut names: Vec<&String> = identity.keys().collect();
    names.sort();
    for name in names {
        {
            let bytes = std::fs::read(dir.join("images").join(name))?;
            let analysis = pipeline.analyze(&bytes, &options)?;
            embeddings.insert(name.clone(), analysis.image.faces.into_iter().next().and_then(|f| f.embedding));
        }
    }
    let no_face: Vec<&String> = embeddings.iter().filter(|(_, e)| e.is_none()).map(|(n, _)| n).collect();
    let (mut genuine, mut impostor) = (Vec::new(), Vec::new());
    let mut missed = 0;
    for (a, b, same) in &pairs {
        match (&embeddings[a], &embeddings[b]) {
            (Some(x), Some(y)) => (if *same { &mut genuine } else { &mut impostor }).push(x.similarity(y)),
            _ => missed += 1,
        }
    }
    genuine.sort_by(f32::total_cmp);
    impostor.sort_by(f32::total_cmp);
    // Every different-person pair of the set: a far finer false-match rate than 411 pairs give.
    let embedded: Vec<(&String, &Embedding)> =
        embeddings.iter().filter_map(|(n, e)| e.as_ref().map(|e| (n, e))).collect();
    let (mut all_genuine, mut all_impostor) = (Vec::new(), Vec::new());
    // The search prefilter on real embeddings: which pairs its Hamming bound at the
    // possible-match floor keeps (same-person pairs at or above the floor must be kept).
    let bound = sketch::max_distance(config.possible_match_threshold);
    let sketches: Vec<sketch::Sketch> = embedded.iter().map(|(_, e)| sketch::sketch(e.as_slice())).collect();
    let (mut above_floor, mut above_kept, mut impostors_kept) = (0usize, 0usize, 0usize);
    for (i, (na, ea)) in embedded.iter().enumerate() {
        for (j, (nb, eb)) in embedded.iter().enumerate().skip(i + 1) {
            let s = ea.similarity(eb);
            let kept = bound.is_none_or(|b| sketch::distance(&sketches[i], &sketches[j]) <= b);
            if identity[*na] == identity[*nb] {
                all_genuine.push(s);
                if s >= config.possible_match_threshold {
                    above_floor += 1;
                    above_kept += usize::from(kept);
                }
            } else {
                all_impostor.push(s);
                impostors_kept += usize::from(kept);
            }
        }
    }
    all_genuine.sort_by(f32::total_cmp);
    all_impostor.sort_by(f32::total_cmp);
    let rate = |scores: &[f32], t: f32| scores.iter().filter(|&&s| s >= t).count() as f64 / scores.len() as f64;

    println!("## Calibration on {}\n", dir.display());
    println!(
        "{} images embedded ({} without a face), {} genuine and {} impostor pairs scored ({} pairs skipped).\n",
        embeddings.len(),
        no_face.len(),
        genuine.len(),
        impostor.len(),
        missed
    );
    let q = |s: &[f32], p: f64| s[((s.len() - 1) as f64 * p).round() as usize];
    println!(
        "genuine similarity: min {:.3}, 1% {:.3}, median {:.3}; impostor: median {:.3}, 99% {:.3}, max {:.3}\n",
        genuine[0],
        q(&genuine, 0.01),
        q(&genuine, 0.5),
        q(&impostor, 0.5),
        q(&impostor, 0.99),
        impostor[impostor.len() - 1]
    );
    println!(
        "every pair of the set: {} same-person, {} different-person; different-person max {:.3}\n",
        all_genuine.len(),
        all_impostor.len(),
        all_impostor[all_impostor.len() - 1]
    );
    println!(
        "| threshold | FMR, pairs.csv | TMR, pairs.csv | FMR, all different-person pairs | TMR, all same-person pairs |"
    );
    println!("|---|---|---|---|---|");
    let count = |s: &[f32], t: f32| s.iter().filter(|&&v| v >= t).count();
    for step in 8..=30 {
        let t = step as f32 * 0.025;
        println!(
            "| {t:.3} | {:.4} ({}/{}) | {:.4} | {:.5} ({}/{}) | {:.4} |",
            rate(&impostor, t),
            count(&impostor, t),
            impostor.len(),
            rate(&genuine, t),
            rate(&all_impostor, t),
            count(&all_impostor, t),
            all_impostor.len(),
            rate(&all_genuine, t)
        );
    }
    for (name, t) in [("match", config.match_threshold), ("possible match", config.possible_match_threshold)] {
        println!(
            "\nconfigured {name} threshold {t:.2}: pairs.csv FMR {:.4} TMR {:.4}; all pairs FMR {:.5} ({} of {}) TMR {:.4}",
            rate(&impostor, t),
            rate(&genuine, t),
            rate(&all_impostor, t),
            count(&all_impostor, t),
            all_impostor.len(),
            rate(&all_genuine, t)
        );
    }
    println!(
        "\nsearch prefilter at the possible-match floor {:.2} (Hamming bound {bound:?} of 512): keeps {above_kept} of \
         {above_floor} same-person pairs at or above the floor, and {:.2}% of different-person pairs",
        config.possible_match_threshold,
        100.0 * impostors_kept as f64 / all_impostor.len() as f64
    );
    Ok(())
}
