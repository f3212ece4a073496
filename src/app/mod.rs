//! `App`: the cheap-to-clone facade the gRPC layer calls. It owns the inference pool (and,
//! with the enrollment service, the store and the search index), start-up and readiness.
//! Nothing here knows about gRPC.

mod detect;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::inference::InferencePool;

/// Application state shared by every request.
#[derive(Debug, Clone)]
pub struct App {
    pool: InferencePool,
}

impl App {
    /// Loads, verifies and warms up the models. Blocking (minutes on a cold disk at worst):
    /// call it before the server reports SERVING.
    pub async fn open(config: &Config) -> Result<Self> {
        let inference = config.inference();
        let pool = tokio::task::spawn_blocking(move || InferencePool::start(&inference))
            .await
            .map_err(|e| Error::internal("joining model start-up", e))??;
        tracing::info!(workers = pool.workers(), "models loaded, verified and warmed up");
        Ok(App { pool })
    }

    /// The inference pool (queue depth, rejections).
    pub fn pool(&self) -> &InferencePool {
        &self.pool
    }
}
