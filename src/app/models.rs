//! The embedding models this node has (the configured embedder and, for a reindex, the
//! candidate), each with its own calibrated thresholds, and which of them a request uses: the
//! store's active model as the node's feed follows it (storage/models.rs), never another's
//! thresholds, never embeddings of two models compared.

use crate::error::{Error, Result};
use crate::search::similarity::Thresholds;
use crate::storage::{EmbedderRecord, ModelState};

/// One configured embedder.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfiguredModel {
    pub record: EmbedderRecord,
    pub thresholds: Thresholds,
}

/// The configured embedders: index 0 `--embedder-model`, 1 `--candidate-embedder-model` (the
/// pipeline's embedder numbers, `EmbedWith`).
#[derive(Debug, Clone)]
pub struct ModelCatalog {
    pub models: Vec<ConfiguredModel>,
}

/// The models a request uses now.
#[derive(Debug, Clone)]
pub struct ModelUse {
    /// The pipeline's embedder of the active model.
    pub main: usize,
    pub main_id: String,
    pub thresholds: Thresholds,
    /// The pipeline's embedder of the other model the store keeps (face writes store both).
    pub other: Option<usize>,
}

impl ModelUse {
    pub fn embed_with(&self) -> crate::inference::EmbedWith {
        crate::inference::EmbedWith { main: self.main, other: self.other }
    }
}

impl ModelCatalog {
    /// The configured embedder that is `record` (same id and model bytes).
    pub fn index_of(&self, record: &EmbedderRecord) -> Option<usize> {
        self.models.iter().position(|m| m.record == *record)
    }

    /// The candidate, when one is configured.
    pub fn candidate(&self) -> Option<&ConfiguredModel> {
        self.models.get(1)
    }

    fn missing(&self, what: &str, stored: &EmbedderRecord) -> Error {
        let configured: Vec<String> = self.models.iter().map(|m| m.record.to_string()).collect();
        Error::Unavailable {
            message: format!(
                "the store's {what} embedder is {stored}, which is not configured here (configured: {}); \
                 embeddings of different models cannot be compared: start with --embedder-model/--embedder-id of \
                 the store's model, or with it as --candidate-embedder-model",
                configured.join(", ")
            ),
        }
    }

    /// At start-up: every model the store's state needs is configured (the active one, and the
    /// other while both are kept).
    pub fn check(&self, state: &ModelState) -> Result<()> {
        self.resolve(state).map(drop)
    }

    /// The models of a request under `state`.
    pub fn resolve(&self, state: &ModelState) -> Result<ModelUse> {
        let active = state.active_embedder()?;
        let main = self.index_of(active).ok_or_else(|| self.missing("active", active))?;
        let other = match state.other_embedder() {
            Some(other) => Some(self.index_of(other).ok_or_else(|| self.missing("reindex's other", other))?),
            None => None,
        };
        let model = &self.models[main];
        Ok(ModelUse { main, main_id: model.record.id.clone(), thresholds: model.thresholds, other })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ReindexState;

    fn model(id: &str, matched: f32) -> ConfiguredModel {
        ConfiguredModel {
            record: EmbedderRecord { id: id.into(), sha256: format!("{id}-sha") },
            thresholds: Thresholds { matched, possible: matched - 0.1 },
        }
    }

    #[test]
    fn a_request_uses_the_active_model_and_its_own_thresholds() {
        let catalog = ModelCatalog { models: vec![model("a", 0.4), model("b", 0.5)] };
        let mut state = ModelState::single(catalog.models[0].record.clone());
        let now = catalog.resolve(&state).unwrap();
        assert_eq!((now.main, now.other, now.thresholds.matched), (0, None, 0.4));
        state.slots[1] = Some(catalog.models[1].record.clone());
        state.state = ReindexState::CutOver;
        state.active = 1;
        let now = catalog.resolve(&state).unwrap();
        assert_eq!((now.main, now.other, now.thresholds.matched), (1, Some(0), 0.5));
        // A node without the candidate cannot serve a store cut over to it.
        let alone = ModelCatalog { models: vec![model("a", 0.4)] };
        let message = alone.check(&state).unwrap_err().to_string();
        assert!(message.contains("\"b\"") && message.contains("\"a\""), "{message}");
    }
}
