//! The worker loop: owns one `FacePipeline` (its sessions and buffers), takes jobs from the
//! queue, enters each job's span, skips jobs whose caller has gone. Never shares a session.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::Sender;

use image::RgbImage;

use super::{InferenceConfig, Job, Models, Task, load_pipeline_from};
use crate::error::{Error, Result};
use crate::inference::{AnalyzeOptions, Coverage, EmbedWith, FacePipeline, FaceSelection};

pub(super) fn run(
    id: usize,
    config: &InferenceConfig,
    models: Models,
    jobs: async_channel::Receiver<Job>,
    ready: Sender<Result<()>>,
) {
    crate::threads::lower_priority();
    let loaded = load_pipeline_from(config, &models);
    drop(models); // the sessions hold their own copy; the file's bytes are not needed any more
    let mut pipeline = match loaded.and_then(|mut p| warm_up(&mut p).map(|()| p)) {
        Ok(pipeline) => pipeline,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    tracing::debug!(worker = id, "inference worker ready");
    while let Ok(job) = jobs.recv_blocking() {
        if job.task.is_closed() {
            continue; // the caller gave up (deadline, disconnect): do not spend the CPU
        }
        let _entered = job.span.enter();
        let panicked = || Error::bug("the face pipeline panicked");
        match job.task {
            Task::Analyze(options, reply) => {
                let result = std::panic::catch_unwind(AssertUnwindSafe(|| pipeline.analyze(&job.bytes, &options)))
                    .unwrap_or_else(|_| Err(panicked()));
                let _ = reply.send(result);
            }
            Task::Reembed(landmarks, which, reply) => {
                let result =
                    std::panic::catch_unwind(AssertUnwindSafe(|| pipeline.reembed(&job.bytes, &landmarks, which)))
                        .unwrap_or_else(|_| Err(panicked()));
                let _ = reply.send(result);
            }
        }
    }
    tracing::debug!(worker = id, "inference worker stopped");
}

/// Runs every session once at every detector size so the first request is not slow.
fn warm_up(pipeline: &mut FacePipeline) -> Result<()> {
    let image = RgbImage::from_fn(480, 360, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
    let options = AnalyzeOptions {
        coverage: Coverage::All,
        embeddings: FaceSelection::All,
        thumbnails: FaceSelection::None,
        models: EmbedWith::PRIMARY,
    };
    pipeline.analyze_image(&image, &options)?;
    if pipeline.has_candidate() {
        let crop = vec![128u8; 112 * 112 * 3];
        pipeline.embed_crops_with(1, &[&crop])?;
    }
    let crop = vec![128u8; 112 * 112 * 3];
    pipeline.embed_crops(&[&crop])?;
    Ok(())
}
