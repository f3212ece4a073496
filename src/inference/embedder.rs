//! ArcFace embedding: aligned 112x112 crops -> (N,3,112,112) tensor -> L2-normalised 512-d
//! embeddings. All faces of one image go through in one `run`. No similarity search here.

use crate::domain::{EMBEDDING_DIM, Embedding};
use crate::error::{Error, Result};
use crate::imaging::align::ALIGNED_SIZE;
use crate::inference::session::ModelSession;

const INPUT_MEAN: f32 = 127.5;
/// Most crops in one `run`: bounds the input tensor (2.4 MB) and ONNX Runtime's arena, which
/// keeps its largest allocation, whatever a crowd photo holds.
pub const MAX_BATCH: usize = 16;
const INPUT_STD: f32 = 127.5;

/// One crop's embedding and the length of the model's output before normalisation: low for
/// what is not a face (and for faces too poor to recognise), so the pipeline's face check reads
/// it.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub embedding: Embedding,
    pub norm: f32,
}

/// The embedder model on one worker thread.
#[derive(Debug)]
pub struct Embedder {
    session: ModelSession,
    tensor: Vec<f32>,
    /// Crops per `run`: [`MAX_BATCH`], or 1 for a model exported with a fixed batch of one
    /// (its output declared (1,512)).
    max_batch: usize,
}

impl Embedder {
    /// Wraps a loaded session after checking its signature: one (N,3,112,112) input and one
    /// (N,512) output (N fixed at 1 is run one crop at a time).
    pub fn try_new(session: ModelSession) -> Result<Self> {
        let bad = |what: String| Error::Unavailable { message: format!("embedder model: {what}") };
        let (inputs, outputs) = (session.input_dims(), session.output_dims());
        if inputs.len() != 1 || outputs.len() != 1 {
            return Err(bad(format!("expected 1 input and 1 output, found {} and {}", inputs.len(), outputs.len())));
        }
        let side = i64::from(ALIGNED_SIZE);
        let dims = &inputs[0];
        if dims.len() != 4 || dims[1] != 3 || dims[2] != side || dims[3] != side {
            return Err(bad(format!("expected an (N,3,112,112) input, found {dims:?}")));
        }
        let dims = &outputs[0];
        if dims.len() != 2 || dims[1] != EMBEDDING_DIM as i64 {
            return Err(bad(format!("expected an (N,{EMBEDDING_DIM}) output, found {dims:?}")));
        }
        let max_batch = if dims[0] == 1 { 1 } else { MAX_BATCH };
        Ok(Embedder { session, tensor: Vec::new(), max_batch })
    }

    /// Embeds aligned RGB crops (each 112*112*3 bytes, row-major), in batches of at most
    /// [`MAX_BATCH`].
    pub fn embed(&mut self, crops: &[&[u8]]) -> Result<Vec<Embedded>> {
        let mut out = Vec::with_capacity(crops.len());
        for batch in crops.chunks(self.max_batch) {
            out.extend(self.embed_batch(batch)?);
        }
        Ok(out)
    }

    fn embed_batch(&mut self, crops: &[&[u8]]) -> Result<Vec<Embedded>> {
        if crops.is_empty() {
            return Ok(Vec::new());
        }
        let plane = (ALIGNED_SIZE * ALIGNED_SIZE) as usize;
        self.tensor.clear();
        // A one-face call after a crowd photo gives the batch-sized buffer back (600 KB per face).
        self.tensor.shrink_to(crops.len() * 3 * plane);
        self.tensor.resize(crops.len() * 3 * plane, 0.0);
        let inv_std = 1.0 / INPUT_STD;
        for (crop, chw) in crops.iter().zip(self.tensor.chunks_exact_mut(3 * plane)) {
            if crop.len() != 3 * plane {
                return Err(Error::bug("aligned crop has the wrong size"));
            }
            let (r, rest) = chw.split_at_mut(plane);
            let (g, b) = rest.split_at_mut(plane);
            for (i, px) in crop.chunks_exact(3).enumerate() {
                r[i] = (f32::from(px[0]) - INPUT_MEAN) * inv_std;
                g[i] = (f32::from(px[1]) - INPUT_MEAN) * inv_std;
                b[i] = (f32::from(px[2]) - INPUT_MEAN) * inv_std;
            }
        }
        let side = ALIGNED_SIZE as usize;
        let dims = [crops.len(), 3, side, side];
        self.session.run(&dims, &self.tensor, |outputs| {
            let data = outputs.first().copied().unwrap_or_default();
            if data.len() != crops.len() * EMBEDDING_DIM {
                return Err(Error::bug("embedder output has the wrong size"));
            }
            data.chunks_exact(EMBEDDING_DIM)
                .map(|row| {
                    let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                    let embedding = Embedding::from_raw(row.to_vec())
                        .ok_or_else(|| Error::bug("embedder produced a zero or non-finite vector"))?;
                    Ok(Embedded { embedding, norm })
                })
                .collect()
        })
    }
}
