//! HTTP surfaces: the public listener (checks, health) and the admin listener
//! (metrics). Errors map to HTTP in exactly one place, [`error::ApiError`].

pub mod check;
pub mod error;
pub mod headers;
pub mod input;

use actix_web::{web, HttpResponse};
use llmtrace_actors::Limiter;
use serde_json::json;

use self::error::ApiError;

async fn not_found() -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::not_found())
}

async fn method_not_allowed() -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::method_not_allowed())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

async fn readyz() -> HttpResponse {
    // A single node is ready once its listeners are bound and shards started,
    // which is before the first request can arrive.
    HttpResponse::Ok().json(json!({ "status": "ready" }))
}

async fn metrics(limiter: web::Data<Limiter>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(limiter.metrics().render(limiter.cache_name()))
}

fn get(path: &str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(method_not_allowed))
}

/// Routes of the public listener.
pub fn public_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/check")
            .route(web::post().to(check::check))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/check/batch")
            .route(web::post().to(check::check_batch))
            .default_service(web::to(method_not_allowed)),
    )
    .service(get("/healthz", web::get().to(healthz)))
    .service(get("/readyz", web::get().to(readyz)))
    .default_service(web::to(not_found));
}

/// Routes of the admin listener.
pub fn admin_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/metrics", web::get().to(metrics)))
        .service(get("/healthz", web::get().to(healthz)))
        .default_service(web::to(not_found));
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
