//! `GET /api/admin/plugins/{type}/shadow`: what shadow runs of the type's staged
//! candidates found (see [`crate::shadow`]).

use axum::extract::{Path, State};
use axum::Json;

use super::{read, ApiError};
use crate::app::App;
use crate::shadow::ShadowReport;

/// The report: the serving and staged builds, and per candidate build that ran its
/// counts (runs, same, different, failed) and first differences; 400 for a type that
/// cannot be a plugin's name. A type with no shadow runs has an empty `builds`.
pub async fn show(
    State(app): State<App>,
    Path(plugin_type): Path<String>,
) -> Result<Json<ShadowReport>, ApiError> {
    if !crate::names::is_simple_name(&plugin_type) {
        return Err(ApiError::BadRequest(format!(
            "type `{plugin_type}`: a plugin type is letters, digits, - and _"
        )));
    }
    let report = crate::shadow::report(&app.shadows, app.store.as_ref(), &plugin_type);
    Ok(Json(read(&app, report).await?))
}
