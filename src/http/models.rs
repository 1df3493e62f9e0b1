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
use utoipa::{IntoResponses, ToSchema};

use super::api::{ApiError, ErrorBody, caller};
use crate::{auth::Authenticator, engine::Engine};

#[derive(Clone)]
pub(crate) struct ModelsState {
    engine: Engine,
    auth: Arc<Authenticator>,
}

/// The OpenAI `list` object.
#[derive(Serialize, ToSchema)]
pub struct ModelList {
    #[schema(example = "list")]
    object: &'static str,
    data: Vec<ModelItem>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelItem {
    /// `provider/model`, as `chat:start` takes it.
    id: String,
    #[schema(example = "model")]
    object: &'static str,
    created: u64,
    owned_by: String,
}

pub fn router(engine: Engine, auth: Arc<Authenticator>) -> Router {
    Router::new().route("/v1/models", get(list)).with_state(ModelsState { engine, auth })
}

/// The error responses of `GET /v1/models`.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum ModelErrors {
    /// `UNAUTHORIZED`: no token, or a bad one.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
}

/// Every provider's models, as `provider/model` ids.
#[utoipa::path(
    get, path = "/v1/models", tag = "models",
    responses((status = 200, body = ModelList, description = "Every provider's models"), ModelErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list(State(s): State<ModelsState>, headers: HeaderMap, uri: Uri) -> Result<Json<ModelList>, ApiError> {
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
