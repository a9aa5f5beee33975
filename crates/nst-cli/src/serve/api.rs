//! The HTTP API and the page (see the README's "nst serve" section for the reference).
//!
//! Errors are JSON `{"error": "…"}` with a 4xx/5xx status, the message one line. Uploads are
//! checked completely — decoding with the CLI's limits, the options with the CLI's parser,
//! then the pipeline's own preflight (scale plan, style sizes, memory) — before a job is
//! queued, so a job that would fail for its input is refused at once and leaves nothing.

use super::form::{Form, Upload, MAX_STYLES};
use super::gallery::JobId;
use super::jobs::{AlreadyFinished, Event, Jobs, NewJob, MAX_QUEUED};
use crate::args::defaults;
use crate::pipeline;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use futures_util::Stream;
use nst_image::one_line;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

/// Largest request body: a few photos straight from a camera.
pub const MAX_BODY_BYTES: usize = 64 << 20;

/// Submissions checked at once: decoding a 100-megapixel upload takes 300 MB, so they queue
/// for this rather than add up.
static ACCEPTING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");

/// Which `Host` headers a request may carry: the names of this machine on the listening
/// port when the server listens on loopback (a web page elsewhere that makes the browser
/// send requests here, through a DNS name that resolves to 127.0.0.1, names another host), or
/// any when the user chose a public address with `--host` (its names are not known here, so
/// DNS rebinding is not refused there; the Origin check still refuses cross-site posts).
#[derive(Clone, Debug)]
pub struct AllowedHosts(Option<Vec<String>>);

impl AllowedHosts {
    /// For a server listening on `address`.
    pub fn for_address(address: std::net::SocketAddr) -> Self {
        if !address.ip().is_loopback() {
            return Self(None);
        }
        let port = address.port();
        let names = ["127.0.0.1", "localhost", "[::1]"];
        let mut hosts: Vec<String> = names.iter().map(|h| format!("{h}:{port}")).collect();
        hosts.push(address.to_string());
        if port == 80 {
            // Browsers leave the default port out of `Host`.
            hosts.extend(names.iter().map(|h| h.to_string()));
        }
        Self(Some(hosts))
    }

    fn allows(&self, host: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|hosts| hosts.iter().any(|h| h.eq_ignore_ascii_case(host)))
    }
}

/// Refuses (403) a request whose `Host` is not this server (DNS rebinding) or whose `Origin`,
/// when the browser sends one, is another site than the page's own (a cross-site form post
/// would otherwise start jobs here). Same-origin requests from the page and tools such as
/// curl, which send no `Origin`, pass.
async fn same_origin_only(
    State(allowed): State<AllowedHosts>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let (host, origin) = (text(header::HOST).unwrap_or_default(), text(header::ORIGIN));

    if !allowed.allows(&host) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "unknown host name: open the address nst serve printed",
        )
        .into_response();
    }
    if let Some(origin) = origin {
        let origin_host = origin.strip_prefix("http://").unwrap_or("");
        if !origin_host.eq_ignore_ascii_case(&host) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "requests from other sites are refused",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// The routes, over the shared queue, answering only requests for `allowed` hosts from the
/// page's own origin.
pub fn router(jobs: Arc<Jobs>, allowed: AllowedHosts) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/style.css",
            get(|| async { asset(STYLE_CSS, "text/css; charset=utf-8") }),
        )
        .route("/info", get(info))
        .route("/jobs", get(list_jobs).post(submit))
        .route("/jobs/{id}", get(job).delete(cancel))
        .route("/jobs/{id}/events", get(events))
        .route("/jobs/{id}/preview", get(preview))
        .route("/gallery", get(gallery))
        .route("/gallery/{id}", delete(remove_entry))
        .route("/gallery/{id}/{file}", get(gallery_file))
        .fallback(|| async { ApiError::not_found("no such page") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            allowed,
            same_origin_only,
        ))
        .with_state(jobs)
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the upload is larger than {} MiB: use smaller pictures",
            MAX_BODY_BYTES >> 20
        ),
    )
}

/// An error answer: a status and a one-line message, sent as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    fn bad_request(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, one_line(&format!("{e:#}")))
    }
    fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, what)
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            one_line(&format!("{e:#}")),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<PathRejection> for ApiError {
    fn from(_: PathRejection) -> Self {
        Self::not_found("no such job")
    }
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn job_id(path: Result<Path<String>, PathRejection>) -> Result<JobId, ApiError> {
    let Path(id) = path?;
    JobId::parse(&id).ok_or_else(|| ApiError::not_found("no such job"))
}

/// `GET /info`: version, devices, the CLI's defaults and the server's limits.
async fn info() -> Json<Value> {
    let cuda = tokio::task::spawn_blocking(nst_tensor::Device::cuda_unavailable_reason)
        .await
        .unwrap_or_else(|_| Some("the CUDA probe failed".into()));
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "devices": [
            { "name": "auto", "available": true },
            { "name": "cpu", "available": true },
            { "name": "cuda", "available": cuda.is_none(), "reason": cuda },
        ],
        "defaults": {
            "size": defaults::SIZE,
            "iters": defaults::ITERS,
            "style_weight": shortest(defaults::STYLE_WEIGHT),
            "content_weight": shortest(defaults::CONTENT_WEIGHT),
            "tv_weight": shortest(defaults::TV_WEIGHT),
            "optimizer": "lbfgs",
            "preserve_colors": "none",
            "device": "auto",
        },
        "limits": {
            "max_body_bytes": MAX_BODY_BYTES,
            "max_styles": MAX_STYLES,
            "max_queued": MAX_QUEUED,
            "max_size": crate::args::MAX_SIZE,
            "max_input_pixels": nst_image::io::MAX_INPUT_PIXELS,
        },
    }))
}

/// `POST /jobs`: checks and queues a job; answers `202 {"id": …}`.
async fn submit(
    State(jobs): State<Arc<Jobs>>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // A declared oversize body is refused before it is read; one that turns out too long
    // while streaming fails in the reading (DefaultBodyLimit) with the same answer.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let mut multipart = multipart.map_err(|e| {
        ApiError::new(
            e.status(),
            format!("expected multipart/form-data: {}", one_line(&e.body_text())),
        )
    })?;
    let multipart_error = |e: axum::extract::multipart::MultipartError| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        status => ApiError::new(status, one_line(&e.body_text())),
    };
    let mut form = Form::default();
    // A field refused early still lets the client finish its upload (the rest is read and
    // dropped), so that it gets the answer instead of a connection closed mid-request.
    let mut refused: Option<ApiError> = None;
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        if refused.is_some() {
            while field.chunk().await.map_err(multipart_error)?.is_some() {}
            continue;
        }
        let name = field.name().unwrap_or_default().to_string();
        let added = if name == "content" || name == "style" || field.file_name().is_some() {
            let file_name = field.file_name().map(str::to_string);
            let bytes = field.bytes().await.map_err(multipart_error)?;
            // An empty file input in a browser form sends an empty part with no name.
            if bytes.is_empty() && file_name.as_deref().unwrap_or_default().is_empty() {
                continue;
            }
            form.add_file(&name, Upload::new(file_name.as_deref(), bytes))
        } else {
            let text = field.text().await.map_err(multipart_error)?;
            form.add_option(&name, &text)
        };
        refused = added.err().map(ApiError::bad_request);
    }
    if let Some(e) = refused {
        return Err(e);
    }
    // Decoding and the preflight take a while and memory for big photos: off the async
    // threads, and one submission at a time.
    let _turn = ACCEPTING.acquire().await.map_err(ApiError::internal)?;
    let id = tokio::task::spawn_blocking(move || accept(&jobs, form))
        .await
        .map_err(ApiError::internal)??;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": id.to_string() }))))
}

/// Checks a submitted form, stores its uploads in the job's incoming folder and queues it.
fn accept(jobs: &Jobs, form: Form) -> Result<JobId, ApiError> {
    form.validate().map_err(ApiError::bad_request)?;
    let id = JobId::random();
    let gallery = jobs.gallery();
    let dir = gallery.create_incoming(id).map_err(ApiError::internal)?;
    let refuse = |e: ApiError| {
        gallery.discard(id);
        e
    };
    let (content_name, style_names) = form.file_names();
    let uploads = std::iter::once((&content_name, form.content.as_ref().expect("validated")))
        .chain(style_names.iter().zip(&form.styles));
    for (name, upload) in uploads {
        std::fs::write(dir.join(name), &upload.bytes)
            .map_err(|e| refuse(ApiError::internal(format!("cannot store the upload: {e}"))))?;
    }
    let config = form
        .config(&dir)
        .map_err(|e| refuse(ApiError::bad_request(e)))?;
    if let Err(e) = pipeline::preflight(&config) {
        // The messages name the stored files; the user knows them as the fields' names.
        let prefix = format!("{}/", dir.display());
        return Err(refuse(ApiError::bad_request(
            format!("{e:#}").replace(&prefix, ""),
        )));
    }
    let upload_names = |u: &Upload| u.name.clone();
    let shown_content = form.content.as_ref().map(upload_names).unwrap_or_default();
    let shown_styles: Vec<String> = form.styles.iter().map(upload_names).collect();
    let command = form.command_line(
        std::path::Path::new(or_default(&shown_content, &content_name)),
        &(shown_styles.iter().zip(&style_names))
            .map(|(shown, stored)| or_default(shown, stored).into())
            .collect::<Vec<_>>(),
        std::path::Path::new("out.png"),
    );
    let settings = json!({
        "options": form.options.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
        "content": content_name,
        "styles": style_names,
        "uploads": { "content": shown_content, "styles": shown_styles },
        "command": command.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" "),
        "size": config.size,
        "iters": config.iters,
        "scales": config.scale_sides.len(),
        "style_weight": shortest(config.style_weight),
        "preserve_colors": config.preserve_colors,
        "optimizer": config.optimizer,
    });
    jobs.submit(NewJob {
        id,
        config,
        settings,
    })
    .ok_or_else(|| {
        refuse(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the queue is full ({MAX_QUEUED} jobs waiting): try again later"),
        ))
    })
}

/// `v` as the f64 with the same shortest decimal form (3e-4, not 0.0003000000142492354).
fn shortest(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

fn or_default<'a>(shown: &'a str, stored: &'a str) -> &'a str {
    if shown.is_empty() {
        stored
    } else {
        shown
    }
}

/// `arg` as a POSIX shell word.
fn shell_quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=,:+".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// `GET /jobs`: every job the server remembers, running and queued first.
async fn list_jobs(State(jobs): State<Arc<Jobs>>) -> Json<Value> {
    Json(Value::Array(jobs.list()))
}

/// `GET /jobs/{id}`: one job's state.
async fn job(
    State(jobs): State<Arc<Jobs>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = job_id(path)?;
    jobs.snapshot(id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no such job"))
}

/// `DELETE /jobs/{id}`: cancels a queued or running job.
async fn cancel(
    State(jobs): State<Arc<Jobs>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = job_id(path)?;
    let jobs2 = jobs.clone();
    // Cancelling a waiting job deletes its uploads: off the async threads.
    let cancelled = tokio::task::spawn_blocking(move || jobs2.cancel(id))
        .await
        .map_err(ApiError::internal)?;
    match cancelled {
        Ok(true) => Ok(Json(jobs.snapshot(id).unwrap_or(Value::Null))),
        Ok(false) => Err(ApiError::not_found("no such job")),
        Err(AlreadyFinished(state)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "the job has already ended ({})",
                json!(state).as_str().unwrap_or("")
            ),
        )),
    }
}

/// `GET /jobs/{id}/preview`: the latest preview (PNG).
async fn preview(
    State(jobs): State<Arc<Jobs>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = job_id(path)?;
    let png = jobs
        .preview(id)
        .ok_or_else(|| ApiError::not_found("no preview yet"))?;
    Ok(png_response(png.as_ref().clone(), "no-store"))
}

fn png_response(bytes: Vec<u8>, cache: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/png")),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        bytes,
    )
        .into_response()
}

/// `GET /jobs/{id}/events`: Server-Sent Events, one `data:` JSON line per update, starting
/// with the whole state (`"type": "state"`); the stream ends after the job's last event.
async fn events(
    State(jobs): State<Arc<Jobs>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let id = job_id(path)?;
    let (state, receiver) = jobs
        .follow(id)
        .ok_or_else(|| ApiError::not_found("no such job"))?;
    let follower = Follower {
        jobs,
        id,
        pending: Some(state),
        receiver,
        last_seq: 0,
        ended: false,
    };
    let stream = futures_util::stream::unfold(follower, |mut f| async move {
        let event = f.next().await?;
        let sse = SseEvent::default()
            .id(event.seq.to_string())
            .data(event.data.to_string());
        Some((Ok(sse), f))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// One follower of a job's events.
struct Follower {
    jobs: Arc<Jobs>,
    id: JobId,
    pending: Option<Event>,
    receiver: tokio::sync::broadcast::Receiver<Event>,
    last_seq: u64,
    ended: bool,
}

impl Follower {
    async fn next(&mut self) -> Option<Event> {
        if self.ended {
            return None;
        }
        let event = match self.pending.take() {
            Some(event) => event,
            None => loop {
                match self.receiver.recv().await {
                    Ok(event) if event.seq <= self.last_seq => continue,
                    Ok(event) => break event,
                    // Fell behind: start again from the whole state.
                    Err(RecvError::Lagged(_)) => {
                        let (state, receiver) = self.jobs.follow(self.id)?;
                        self.receiver = receiver;
                        break state;
                    }
                    Err(RecvError::Closed) => return None,
                }
            },
        };
        self.last_seq = event.seq;
        self.ended = event.is_final;
        Some(event)
    }
}

/// `GET /gallery`: the finished results, newest first.
async fn gallery(State(jobs): State<Arc<Jobs>>) -> Result<Json<Value>, ApiError> {
    let jobs2 = jobs.clone();
    let entries = tokio::task::spawn_blocking(move || jobs2.gallery().entries())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(Json(Value::Array(entries)))
}

/// `GET /gallery/{id}/{file}`: a file of a gallery entry (only the entry's own names).
async fn gallery_file(
    State(jobs): State<Arc<Jobs>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let missing = || ApiError::not_found("no such file");
    let Path((id, file)) = path.map_err(|_| missing())?;
    let id = JobId::parse(&id).ok_or_else(missing)?;
    let path = jobs.gallery().file(id, &file).ok_or_else(missing)?;
    let bytes = tokio::fs::read(&path).await.map_err(|_| missing())?;
    let content_type = match file.rsplit('.').next() {
        Some("png") => "image/png",
        Some("jpg") => "image/jpeg",
        Some("webp") => "image/webp",
        _ => "application/json",
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        bytes,
    )
        .into_response())
}

/// `DELETE /gallery/{id}`: removes a result.
async fn remove_entry(
    State(jobs): State<Arc<Jobs>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = job_id(path)?;
    let removed = tokio::task::spawn_blocking(move || jobs.gallery().remove(id))
        .await
        .map_err(ApiError::internal)?;
    match removed {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::not_found("no such result")),
        Err(e) => Err(ApiError::internal(e)),
    }
}
