//! `POST /api/admin/plugins/{type}/promote` and `/rollback`: make a type's staged candidate
//! serve, or put its previous build back (see [`crate::plugins::stage`]).

use axum::extract::{Path, State};
use axum::Json;

use super::ApiError;
use crate::app::App;
use crate::plugins::{StageError, Swap};

/// `POST /api/admin/plugins/{type}/promote`: 200 with the type, the build serving now and
/// the one before; 409 when nothing is staged, the candidate failed to load or changed
/// since it loaded; 500 when the files could not be moved (nothing changed).
pub async fn promote(
    State(app): State<App>,
    Path(plugin_type): Path<String>,
) -> Result<Json<Swap>, ApiError> {
    Ok(Json(
        app.plugins.promote(&plugin_type).await.map_err(api_error)?,
    ))
}

/// `POST /api/admin/plugins/{type}/rollback`: 200 as for a promote; 409 when there is no
/// `{type}.prev.wasm` or it does not load; 500 when the files could not be moved.
pub async fn rollback(
    State(app): State<App>,
    Path(plugin_type): Path<String>,
) -> Result<Json<Swap>, ApiError> {
    Ok(Json(
        app.plugins
            .rollback(&plugin_type)
            .await
            .map_err(api_error)?,
    ))
}

/// The status each [`StageError`] is answered with.
fn api_error(e: StageError) -> ApiError {
    match e {
        StageError::BadType(m) => ApiError::BadRequest(m),
        StageError::Conflict(m) => ApiError::Conflict(m),
        StageError::Files(m) => ApiError::Internal(m),
    }
}
