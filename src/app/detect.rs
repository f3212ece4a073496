//! DetectFaces: the stateless pipeline run, every face, nothing stored.

use super::App;
use crate::domain::ImageAnalysis;
use crate::error::Result;
use crate::inference::{AnalyzeOptions, Coverage, FaceSelection};

impl App {
    /// Finds every face of the image, largest first, with embeddings and thumbnails on request.
    pub async fn detect_faces(&self, image: bytes::Bytes, embeddings: bool, thumbnails: bool) -> Result<ImageAnalysis> {
        let pick = |on: bool| if on { FaceSelection::All } else { FaceSelection::None };
        let options = AnalyzeOptions {
            coverage: Coverage::All,
            embeddings: pick(embeddings),
            thumbnails: pick(thumbnails),
            models: crate::inference::EmbedWith { main: self.model_use()?.main, other: None },
        };
        let analysis = self.pool.analyze(image, options).await?;
        tracing::debug!(
            faces = analysis.image.faces.len(),
            decode_ms = analysis.timings.decode.as_secs_f64() * 1e3,
            detect_ms = analysis.timings.detect.as_secs_f64() * 1e3,
            embed_ms = analysis.timings.embed.as_secs_f64() * 1e3,
            "detect_faces"
        );
        Ok(analysis.image)
    }
}
