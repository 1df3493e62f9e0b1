//! `GET /v1/models`: every provider's models in the OpenAI list shape, with
//! `provider/model` ids, behind the same tokens as the other routes.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, Uri},
    routing::get,
};
use serde::Serialize;

use super::api::{ApiError, caller};
use crate::{auth::Authenticator, engine::Engine};

#[derive(Clone)]
struct ModelsState {
    engine: Engine,
    auth: Arc<Authenticator>,
}

/// The OpenAI `list` object.
#[derive(Serialize)]
struct ModelList {
    object: &'static str,
    data: Vec<ModelItem>,
}

#[derive(Serialize)]
struct ModelItem {
    /// `provider/model`, as `chat:start` takes it.
    id: String,
    object: &'static str,
    created: u64,
    owned_by: String,
}

pub fn router(engine: Engine, auth: Arc<Authenticator>) -> Router {
    Router::new().route("/v1/models", get(list)).with_state(ModelsState { engine, auth })
}

async fn list(State(s): State<ModelsState>, headers: HeaderMap, uri: Uri) -> Result<Json<ModelList>, ApiError> {
    caller(&s.auth, &headers, &uri, None).await?;
    let data = s
        .engine
        .providers()
        .catalog()
        .await
        .into_iter()
        .flat_map(|(provider, models)| {
            models.into_iter().map(move |m| ModelItem {
                id: format!("{}/{m}", provider.id),
                object: "model",
                created: 0,
                owned_by: provider.id.clone(),
            })
        })
        .collect();
    Ok(Json(ModelList { object: "list", data }))
}
