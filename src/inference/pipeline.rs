//! The whole face pipeline of one worker thread: decode -> detect -> align -> quality ->
//! embed, with the thumbnails encoded beside the embedder on a scoped second thread. A
//! [`FacePipeline`] owns its sessions and buffers; the pool gives one to each worker thread,
//! and benches and tests can drive one directly.

use std::time::{Duration, Instant};

use fast_image_resize::Resizer;
use image::RgbImage;

use crate::domain::{AnalyzedFace, BoundingBox, Detection, ImageAnalysis, MultipleFaces, Point, QualityIssue};
use crate::error::{Error, Result};
use crate::imaging::align::align_face;
use crate::imaging::decode::{DecodeLimits, ImageFormat, decode};
use crate::imaging::encode::{ThumbnailSpec, face_thumbnail};
use crate::imaging::resize::{Letterboxer, resize_to, shrink};
use crate::imaging::turn::{TURNS, is_upright, turn, unturn};
use crate::inference::detector::{Coverage, Detector};
use crate::inference::embedder::Embedder;
use crate::inference::enrollable::{Enrollable, enrollable_face};
use crate::inference::nms::nms_by_score;
use crate::inference::quality::{QualityThresholds, assess};
use crate::inference::tiles::plan_tiles;

/// Which faces of an image get an embedding or a thumbnail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaceSelection {
    None,
    All,
    /// The largest face (search, verify).
    Largest,
    /// The face an enrollment takes under this policy (`enrollable_face`), if any.
    Enrollable(MultipleFaces),
}

impl FaceSelection {
    fn picks(self, faces: &[AnalyzedFace], width: u32, height: u32) -> Vec<usize> {
        match self {
            FaceSelection::None => Vec::new(),
            FaceSelection::All => (0..faces.len()).collect(),
            FaceSelection::Largest => (0..faces.len().min(1)).collect(),
            FaceSelection::Enrollable(policy) => match enrollable_face(faces, width, height, policy) {
                Enrollable::Face { index, .. } => vec![index],
                Enrollable::NoFace | Enrollable::Competing { .. } | Enrollable::Failing { .. } => Vec::new(),
            },
        }
    }
}

/// A face rolled more than this many degrees (or with its mouth above its eyes) does not count
/// as upright: the image is searched turned too.
pub const UPRIGHT_ROLL: f32 = 45.0;

/// Below this best upright score the image is searched turned too. Calibrated on devfaces
/// (README: "Photos that arrive sideways"): the best upright face of an upright photo scores
/// 0.69 or more in 95% of them; the upright-looking faces the detector makes up on their turned
/// copies score 0.68 or less in 95%.
pub const TURN_BELOW_SCORE: f32 = 0.7;

/// The best score among `detections` that are upright in the frame they were found in; 0 when
/// there is none.
fn upright_score(detections: &[Detection]) -> f32 {
    detections.iter().filter(|d| is_upright(d, UPRIGHT_ROLL)).map(|d| d.score).fold(0.0, f32::max)
}

/// What to compute for one image.
#[derive(Debug, Clone, Copy)]
pub struct AnalyzeOptions {
    pub coverage: Coverage,
    pub embeddings: FaceSelection,
    pub thumbnails: FaceSelection,
    /// The embedders of the embeddings.
    pub models: EmbedWith,
}

/// Which of the pipeline's embedders (0: `--embedder-model`, 1: `--candidate-embedder-model`)
/// give a face its `embedding`, and which its `other_embedding` (both during a reindex).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbedWith {
    pub main: usize,
    pub other: Option<usize>,
}

impl EmbedWith {
    /// The configured embedder alone.
    pub const PRIMARY: EmbedWith = EmbedWith { main: 0, other: None };
}

/// Wall time of each stage, for metrics and benches.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimings {
    pub decode: Duration,
    pub detect: Duration,
    pub align: Duration,
    pub embed: Duration,
    pub thumbnail: Duration,
}

/// The result of [`FacePipeline::analyze`].
#[derive(Debug)]
pub struct Analysis {
    pub image: ImageAnalysis,
    pub format: ImageFormat,
    pub timings: StageTimings,
}

/// Settings of the pipeline that are not model files.
#[derive(Debug, Clone, Copy)]
pub struct PipelineConfig {
    pub decode: DecodeLimits,
    pub quality: QualityThresholds,
    pub thumbnail: ThumbnailSpec,
    /// Most faces analysed (aligned, assessed, embedded) in one image: the largest are kept and
    /// the rest counted in `ImageAnalysis::omitted_faces`. Bounds the work and memory a single
    /// crowd photo can cost.
    pub max_faces: usize,
    pub face_check: FaceCheck,
}

/// What is not a face: a detection the detector is unsure of is embedded, and dropped when the
/// embedding model's output before normalisation is shorter than a face's (animals, drawings,
/// textures; the model answers weakly to what it was not trained on). Calibrated on devfaces and
/// on non-face photos from Debian's packages (README: "Not a face").
#[derive(Debug, Clone, Copy)]
pub struct FaceCheck {
    /// Detections scoring below this are checked (1 checks every one).
    pub below_score: f32,
    /// Shortest raw embedding of a face; 0 turns the check off.
    pub min_norm: f32,
}

impl Default for FaceCheck {
    fn default() -> Self {
        FaceCheck { below_score: 0.75, min_norm: 18.35 }
    }
}

/// Default of [`PipelineConfig::max_faces`] (`--max-faces-per-image`).
pub const DEFAULT_MAX_FACES: usize = 100;

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            decode: DecodeLimits::default(),
            quality: QualityThresholds::default(),
            thumbnail: ThumbnailSpec::default(),
            max_faces: DEFAULT_MAX_FACES,
            face_check: FaceCheck::default(),
        }
    }
}

/// Detector, embedders and buffers of one thread.
#[derive(Debug)]
pub struct FacePipeline {
    detector: Detector,
    /// The configured embedder: every face check reads its norms (calibrated for it).
    embedder: Embedder,
    /// The candidate embedder of a reindex, when one is configured.
    candidate: Option<Embedder>,
    config: PipelineConfig,
    letterbox: Letterboxer,
    resizer: Resizer,
}

impl FacePipeline {
    pub fn new(detector: Detector, embedder: Embedder, config: PipelineConfig) -> Self {
        FacePipeline {
            detector,
            embedder,
            candidate: None,
            config,
            letterbox: Letterboxer::new(),
            resizer: Resizer::new(),
        }
    }

    /// Adds the candidate embedder (embedder 1 of [`EmbedWith`]).
    #[must_use]
    pub fn with_candidate(mut self, candidate: Embedder) -> Self {
        self.candidate = Some(candidate);
        self
    }

    /// Embedder `which` (0: the configured one, 1: the candidate).
    fn embedder(&mut self, which: usize) -> Result<&mut Embedder> {
        match which {
            0 => Ok(&mut self.embedder),
            _ => self.candidate.as_mut().ok_or_else(|| Error::Unavailable {
                message: "no candidate embedder is configured (--candidate-embedder-model)".into(),
            }),
        }
    }

    /// The embedding by embedder `which` of the face at `landmarks` in the image `bytes` (a
    /// stored original and its face's landmarks: a reindex re-embeds it without detecting again).
    pub fn reembed(&mut self, bytes: &[u8], landmarks: &[Point; 5], which: usize) -> Result<crate::domain::Embedding> {
        let decoded = decode(bytes, &self.config.decode)?;
        let mut crop = Vec::new();
        align_face(&decoded.rgb, landmarks, &mut crop);
        let embedded = self.embedder(which)?.embed(&[crop.as_slice()])?;
        embedded.into_iter().next().map(|e| e.embedding).ok_or_else(|| Error::bug("no embedding came back"))
    }

    /// Runs the pipeline on encoded image bytes.
    pub fn analyze(&mut self, bytes: &[u8], options: &AnalyzeOptions) -> Result<Analysis> {
        let start = Instant::now();
        let decoded = decode(bytes, &self.config.decode)?;
        let decode_time = start.elapsed();
        let (image, mut timings) = self.analyze_image(&decoded.rgb, options)?;
        timings.decode = decode_time;
        Ok(Analysis { image, format: decoded.format, timings })
    }

    /// Runs the pipeline on a decoded image.
    pub fn analyze_image(&mut self, rgb: &RgbImage, options: &AnalyzeOptions) -> Result<(ImageAnalysis, StageTimings)> {
        let mut timings = StageTimings::default();
        let start = Instant::now();
        let (detections, omitted_faces) = self.find_faces(rgb, options.coverage)?;
        timings.detect = start.elapsed();

        let start = Instant::now();
        let mut crops = Vec::with_capacity(detections.len());
        let mut faces = Vec::with_capacity(detections.len());
        for detection in detections {
            let mut crop = Vec::new();
            align_face(rgb, &detection.landmarks, &mut crop);
            let quality = assess(&detection, &crop, &self.config.quality);
            faces.push(AnalyzedFace { detection, quality, embedding: None, other_embedding: None, thumbnail: None });
            crops.push(crop);
        }
        timings.align = start.elapsed();

        let start = Instant::now();
        let failing_from =
            matches!(options.embeddings, FaceSelection::Enrollable(_)).then_some(self.config.quality.min_face_size);
        self.check_faces(&mut faces, &mut crops, failing_from)?;
        let check_time = start.elapsed();

        // Thumbnails are cut and encoded on a second thread while the embedder runs: with a
        // core to spare (a lightly loaded server) an enrollment does not wait for its JPEG.
        let picked = options.embeddings.picks(&faces, rgb.width(), rgb.height());
        // Faces the check embedded are not embedded again (when the check's embedder is the one
        // asked for); those not asked for lose theirs.
        for (i, face) in faces.iter_mut().enumerate() {
            if !picked.contains(&i) || options.models.main != 0 {
                face.embedding = None;
            }
        }
        let unembedded: Vec<usize> = picked.iter().copied().filter(|&i| faces[i].embedding.is_none()).collect();
        if let Some(other) = options.models.other {
            let batch: Vec<&[u8]> = picked.iter().map(|&i| crops[i].as_slice()).collect();
            let start = Instant::now();
            let embedded = self.embedder(other)?.embed(&batch)?;
            timings.embed += start.elapsed();
            for (&i, e) in picked.iter().zip(embedded) {
                faces[i].other_embedding = Some(e.embedding);
            }
        }
        self.embedder(options.models.main)?;
        let batch: Vec<&[u8]> = unembedded.iter().map(|&i| crops[i].as_slice()).collect();
        let thumbnailed = options.thumbnails.picks(&faces, rgb.width(), rgb.height());
        let boxes: Vec<BoundingBox> = thumbnailed.iter().map(|&i| faces[i].detection.bbox).collect();
        let embedder = match (options.models.main, self.candidate.as_mut()) {
            (0, _) | (_, None) => &mut self.embedder,
            (_, Some(candidate)) => candidate,
        };
        let (resizer, spec) = (&mut self.resizer, &self.config.thumbnail);
        let (embedded, thumbnails) = std::thread::scope(|scope| {
            let encoder = (!thumbnailed.is_empty()).then(|| {
                std::thread::Builder::new().name("thumbnail".into()).spawn_scoped(scope, move || {
                    let start = Instant::now();
                    let jpegs: Result<Vec<Vec<u8>>> =
                        boxes.iter().map(|bbox| face_thumbnail(rgb, bbox, spec, resizer)).collect();
                    (jpegs, start.elapsed())
                })
            });
            let start = Instant::now();
            let embedded = embedder.embed(&batch).map(|e| (e, start.elapsed()));
            let thumbnails = match encoder {
                Some(Ok(handle)) => handle.join().map_err(|_| Error::bug("the thumbnail encoder panicked")),
                Some(Err(e)) => Err(Error::internal("starting the thumbnail thread", e)),
                None => Ok((Ok(Vec::new()), Duration::ZERO)),
            };
            (embedded, thumbnails)
        });
        let (embeddings, embed_time) = embedded?;
        let (jpegs, thumbnail_time) = thumbnails?;
        timings.embed += embed_time + check_time;
        timings.thumbnail = thumbnail_time;
        for (i, embedded) in unembedded.iter().zip(embeddings) {
            faces[*i].embedding = Some(embedded.embedding);
        }
        for (i, jpeg) in thumbnailed.iter().zip(jpegs?) {
            faces[*i].thumbnail = Some(jpeg);
        }
        Ok((ImageAnalysis { width: rgb.width(), height: rgb.height(), faces, omitted_faces }, timings))
    }

    /// Every face of `rgb` the detector finds under `coverage` (any way up, small faces of a
    /// large image in tiles), largest first: what SearchFaces and VerifyFace use, and how
    /// DetectFaces lists faces. Only the largest `max_faces` are kept; the count of the others
    /// comes second.
    fn find_faces(&mut self, rgb: &RgbImage, coverage: Coverage) -> Result<(Vec<Detection>, usize)> {
        let (mut detections, best) = self.detect_any_way_up(rgb, coverage)?;
        if best < TURN_BELOW_SCORE {
            detections = self.add_small_faces(rgb, detections, best)?;
        }
        detections.sort_by(|a, b| b.bbox.area().total_cmp(&a.bbox.area()));
        let omitted_faces = detections.len().saturating_sub(self.config.max_faces.max(1));
        detections.truncate(self.config.max_faces.max(1));
        Ok((detections, omitted_faces))
    }

    /// The face check ([`FaceCheck`]): embeds the faces the detector scored below
    /// `below_score` and drops those whose embedding, before normalisation, is shorter than
    /// `min_norm` (with their crops); the others keep the embedding. For an enrollment
    /// (`failing_from`: the enrollment size), a face that large is kept instead, flagged
    /// LOW_CONFIDENCE: it fails the gate, so a degraded main face is refused for what it is and
    /// does not leave a sharp passer-by to be enrolled in its place.
    fn check_faces(
        &mut self,
        faces: &mut Vec<AnalyzedFace>,
        crops: &mut Vec<Vec<u8>>,
        failing_from: Option<f32>,
    ) -> Result<()> {
        let check = self.config.face_check;
        if check.min_norm <= 0.0 {
            return Ok(());
        }
        let checked = |score: f32| check.below_score >= 1.0 || score < check.below_score;
        let suspects: Vec<usize> = (0..faces.len()).filter(|&i| checked(faces[i].detection.score)).collect();
        if suspects.is_empty() {
            return Ok(());
        }
        let batch: Vec<&[u8]> = suspects.iter().map(|&i| crops[i].as_slice()).collect();
        let mut keep = vec![true; faces.len()];
        for (&i, embedded) in suspects.iter().zip(self.embedder.embed(&batch)?) {
            let face = &mut faces[i];
            if embedded.norm >= check.min_norm {
                face.embedding = Some(embedded.embedding);
            } else if failing_from.is_some_and(|size| face.quality.face_size >= size) {
                if !face.quality.issues.contains(&QualityIssue::LowConfidence) {
                    face.quality.issues.push(QualityIssue::LowConfidence);
                }
            } else {
                keep[i] = false;
            }
        }
        let (mut a, mut b) = (keep.iter(), keep.iter());
        faces.retain(|_| a.next().copied().unwrap_or(true));
        crops.retain(|_| b.next().copied().unwrap_or(true));
        Ok(())
    }

    /// Every face `find_faces` keeps with the norm of its embedding before normalisation, none
    /// dropped by the face check (its calibration: `examples/face_norms.rs`).
    pub fn face_norms(&mut self, bytes: &[u8], coverage: Coverage) -> Result<Vec<(Detection, f32)>> {
        let decoded = decode(bytes, &self.config.decode)?;
        let (detections, _) = self.find_faces(&decoded.rgb, coverage)?;
        let crops: Vec<Vec<u8>> = detections
            .iter()
            .map(|d| {
                let mut crop = Vec::new();
                align_face(&decoded.rgb, &d.landmarks, &mut crop);
                crop
            })
            .collect();
        let batch: Vec<&[u8]> = crops.iter().map(Vec::as_slice).collect();
        let embedded = self.embedder.embed(&batch)?;
        Ok(detections.into_iter().zip(embedded.into_iter().map(|e| e.norm)).collect())
    }

    /// Detects the faces of `rgb`; when no upright face scores [`TURN_BELOW_SCORE`] or more
    /// (none found, every face rolled more than [`UPRIGHT_ROLL`], or only weak ones: an
    /// upside-down face often comes back weak with upright-looking landmarks), also on copies
    /// turned a quarter, a half and three quarters, and keeps the way up whose best upright face
    /// scores highest (when the image as sent has a weak upright face, a turn must score
    /// [`TURN_BELOW_SCORE`] to replace it). The turned copies are shrunk to the fine canvas
    /// first (the detector sees no more than that). Boxes and landmarks come back in the
    /// coordinates of `rgb`, each detection naming its turn, with the best upright score of the
    /// way up kept. Only those images pay for the three turned searches.
    fn detect_any_way_up(&mut self, rgb: &RgbImage, coverage: Coverage) -> Result<(Vec<Detection>, f32)> {
        let upright = self.detector.detect(rgb, coverage, &mut self.letterbox)?;
        let mut best = upright_score(&upright);
        if best >= TURN_BELOW_SCORE || !self.detector.config().turned_search {
            return Ok((upright, best));
        }
        let fine = self.detector.config().fine_size;
        let shrunk = shrink(rgb, fine, &mut self.resizer)?;
        let source = shrunk.as_ref().unwrap_or(rgb);
        let (width, height) = (source.width() as f32, source.height() as f32);
        // Per axis: the shrunk sides are rounded.
        let (sx, sy) = (width / rgb.width() as f32, height / rgb.height() as f32);
        let coverage = match coverage {
            Coverage::All => Coverage::All,
            Coverage::MinFace(side) => Coverage::MinFace(side * sx.max(sy)),
        };
        // A weak upright face is given up only for a turn whose face is not weak: a crowd of
        // small faces is not traded for a face the detector makes up on a turned copy.
        let floor = if best > 0.0 { TURN_BELOW_SCORE } else { 0.0 };
        let mut chosen = upright;
        for degrees in TURNS {
            let found = self.detector.detect(&turn(source, degrees), coverage, &mut self.letterbox)?;
            let score = upright_score(&found);
            if score > best && score >= floor {
                best = score;
                chosen = found
                    .into_iter()
                    .map(|d| {
                        let mut d = unturn(d, degrees, width, height);
                        d.bbox = BoundingBox {
                            x_min: d.bbox.x_min / sx,
                            y_min: d.bbox.y_min / sy,
                            x_max: d.bbox.x_max / sx,
                            y_max: d.bbox.y_max / sy,
                        };
                        d.landmarks = d.landmarks.map(|p| Point { x: p.x / sx, y: p.y / sy });
                        d
                    })
                    .collect();
            }
        }
        Ok((chosen, best))
    }

    /// The tiled search for small faces (`tiles`), run when the whole-image passes found no
    /// confident face (`best`, the best upright score of `found`) in an image too large for
    /// them to see a face of the configured small size, whatever the caller's coverage. Tile
    /// faces join the upright faces already found; when the image was taken turned, they replace
    /// its faces only if one scores higher. Upright only: a small face turned sideways is not
    /// searched for.
    fn add_small_faces(&mut self, rgb: &RgbImage, found: Vec<Detection>, best: f32) -> Result<Vec<Detection>> {
        let config = *self.detector.config();
        // The same smallest face whatever the caller's coverage: enrollment then refuses a
        // small face as FACE_TOO_SMALL, saying why, rather than NO_FACE_DETECTED; and search
        // does not lose a face near its own floor to the tiles' shrinking.
        let min_face = config.small_face;
        let (width, height) = rgb.dimensions();
        let Some(plan) =
            plan_tiles(width, height, min_face, config.min_canvas_face, config.fine_size, config.max_tiles)
        else {
            return Ok(found);
        };
        let resized = if (plan.width, plan.height) == (width, height) {
            None
        } else {
            Some(resize_to(rgb, plan.width, plan.height, &mut self.resizer)?)
        };
        let source = resized.as_ref().unwrap_or(rgb);
        let mut small = Vec::new();
        for &(x, y) in &plan.origins {
            let (w, h) = ((plan.width - x).min(plan.side), (plan.height - y).min(plan.side));
            let tile = image::imageops::crop_imm(source, x, y, w, h).to_image();
            for d in self.detector.detect_single_pass(&tile, plan.side, &mut self.letterbox)? {
                small.extend(plan.keep((x, y), &d, width, height));
            }
        }
        // Only `max_faces` faces go further: a photo of a crowd (or a pattern of face-like
        // dots) feeds the merging NMS no more than four times that, the best scored (faces cut
        // here are not counted in `omitted_faces`).
        small.sort_by(|a, b| b.score.total_cmp(&a.score));
        small.truncate(4 * self.config.max_faces.max(1));
        let taken_upright = found.iter().all(|d| d.rotation == 0);
        let merged = if taken_upright {
            small.extend(found);
            small
        } else if upright_score(&small) > best {
            // A turn taken for a weak face (only ever taken when nothing was upright) against
            // weak tile faces: the stronger wins, and the face check then vets it.
            small
        } else {
            return Ok(found);
        };
        Ok(nms_by_score(merged, config.nms_threshold))
    }

    /// One detector pass at a fixed canvas size (benches, the parity check against the
    /// reference's single-scale runs).
    pub fn detect_single_pass(&mut self, rgb: &RgbImage, canvas: u32) -> Result<Vec<Detection>> {
        self.detector.detect_single_pass(rgb, canvas, &mut self.letterbox)
    }

    /// Whether a candidate embedder is loaded.
    pub fn has_candidate(&self) -> bool {
        self.candidate.is_some()
    }

    /// Embeds aligned crops with embedder `which` (0: the configured one, 1: the candidate).
    pub fn embed_crops_with(
        &mut self,
        which: usize,
        crops: &[&[u8]],
    ) -> Result<Vec<crate::inference::embedder::Embedded>> {
        self.embedder(which)?.embed(crops)
    }

    /// Embeds aligned crops directly (benches).
    pub fn embed_crops(&mut self, crops: &[&[u8]]) -> Result<Vec<crate::inference::embedder::Embedded>> {
        self.embedder.embed(crops)
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }
}
