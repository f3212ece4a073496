//! The face check's calibration (`FaceCheck`): every face the production pipeline finds in the
//! photos of the folders given (any way up, tiles included, none dropped by the check), with
//! its detector score, size, turn and the norm of its embedding before normalisation, as CSV
//! on stdout.
//!
//!   cargo run --release --example face_norms -- ../shared/data/devfaces/images /tmp/nonface/images

use std::path::{Path, PathBuf};

use facevault::Config;
use facevault::inference::{Coverage, load_pipeline};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config = Config::for_root(root);
    // Converted photos may be larger than an upload may be.
    config.max_image_bytes = 64 << 20;
    let mut pipeline = load_pipeline(&config.inference())?;
    println!("folder,file,face,score,width,height,rotation,norm");
    for dir in std::env::args().skip(1).map(PathBuf::from) {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(&dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
        files.sort();
        for file in files {
            let bytes = std::fs::read(&file)?;
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match pipeline.face_norms(&bytes, Coverage::All) {
                Ok(faces) => {
                    for (i, (d, norm)) in faces.iter().enumerate() {
                        println!(
                            "{},{name},{i},{:.4},{:.1},{:.1},{},{norm:.3}",
                            dir.display(),
                            d.score,
                            d.bbox.width(),
                            d.bbox.height(),
                            d.rotation
                        );
                    }
                }
                Err(e) => eprintln!("{name}: {e}"),
            }
        }
    }
    Ok(())
}
