//! `nst serve`'s HTTP API, against a real server on an ephemeral loopback port: a job's events
//! in order and its result equal to the CLI's, cancel, the queue, bad uploads, path
//! traversal, and a stop and restart that keep the gallery.

mod common;

use common::*;
use futures_util::StreamExt;
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

type Files = Vec<(&'static str, String, Vec<u8>)>;
/// Text fields, files, and what the error must say.
type BadCase<'a> = (&'a [(&'a str, &'a str)], Files, &'a str);

fn example_files() -> Files {
    vec![
        (
            "content",
            "cat photo.png".into(),
            std::fs::read(CONTENT).unwrap(),
        ),
        ("style", "starry.jpg".into(), std::fs::read(STYLE).unwrap()),
    ]
}

async fn submit(server: &Server, fields: &[(&str, &str)], files: Files) -> (StatusCode, Value) {
    let mut form = Form::new();
    for (name, value) in fields {
        form = form.text(name.to_string(), value.to_string());
    }
    for (field, name, bytes) in files {
        form = form.part(field, Part::bytes(bytes).file_name(name));
    }
    let r = reqwest::Client::new()
        .post(format!("{}/jobs", server.url))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get_json(url: &str) -> (StatusCode, Value) {
    let r = reqwest::get(url).await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

async fn job_id(server: &Server, fields: &[(&str, &str)]) -> String {
    let (status, body) = submit(server, fields, example_files()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// A job that runs until cancelled (1000 iterations at one scale of `size` px).
async fn long_job(server: &Server, size: &str) -> String {
    job_id(
        server,
        &[("size", size), ("iters", "1000"), ("scales", "1")],
    )
    .await
}

/// A job's Server-Sent Events, one JSON value per `data:` line.
struct Events {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buffer: String,
}

impl Events {
    async fn open(server: &Server, id: &str) -> Self {
        let r = reqwest::get(format!("{}/jobs/{id}/events", server.url))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let content_type = r.headers()["content-type"].to_str().unwrap().to_string();
        assert_eq!(content_type, "text/event-stream");
        Self {
            stream: r.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event, or `None` when the stream ends (within 120 s).
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                assert_eq!(data.len(), 1, "one data line per event: {block:?}");
                return Some(serde_json::from_str(data[0]).unwrap());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(120), self.stream.next())
                .await
                .expect("an event within 120 s")?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
    }

    /// Reads events up to and including the first for which `stop` holds, and returns it.
    async fn until(&mut self, stop: impl Fn(&Value) -> bool) -> Value {
        loop {
            let e = self.next().await.expect("the stream ended first");
            if stop(&e) {
                return e;
            }
        }
    }

    /// Every event until the stream ends.
    async fn all(mut self) -> Vec<Value> {
        let mut all = Vec::new();
        while let Some(e) = self.next().await {
            all.push(e);
        }
        all
    }
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// The gallery's entries (folders with a settings.json) and whether `.incoming` is empty.
fn gallery_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("settings.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn incoming_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir.join(".incoming")).map_or(true, |mut d| d.next().is_none())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_streams_its_events_in_order_and_matches_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gallery");
    let server = Server::start(&dir, &[]);
    let id = job_id(
        &server,
        &[("size", "64"), ("iters", "10"), ("style_weight", "3e-4")],
    )
    .await;
    let events = Events::open(&server, &id).await.all().await;
    let k = kinds(&events);

    // The whole state first, then consecutive sequence numbers, the job's last event last.
    assert_eq!(k[0], "state", "{k:?}");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    for pair in seqs.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "{seqs:?}");
    }
    assert_eq!(*k.last().unwrap(), "done", "{k:?}");
    let iters: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "iteration")
        .map(|e| e["iter"].as_u64().unwrap())
        .collect();
    let already = events[0]["iter"].as_u64().unwrap();
    assert_eq!(iters, ((already + 1)..=10).collect::<Vec<_>>(), "{k:?}");
    let previews = k.iter().filter(|&&t| t == "preview").count();
    assert!(previews >= 1, "{k:?}");

    // A finished job's preview is gone (the result replaces it).
    let last_preview = events
        .iter()
        .rev()
        .find(|e| e["type"] == "preview")
        .unwrap();
    let (status, body) = get_json(&format!(
        "{}{}",
        server.url,
        last_preview["url"].as_str().unwrap()
    ))
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let done = events.last().unwrap();
    let image_url = done["image"].as_str().unwrap();
    assert_eq!(image_url, format!("/gallery/{id}/result.png"));
    let result = reqwest::get(format!("{}{image_url}", server.url))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();

    // The same run from the command line gives the same picture, pixel for pixel.
    let out = tmp.path().join("cli.png");
    let stored = dir.join(&id);
    run_ok(&[
        "-c".into(),
        path_str(&stored.join("content.png")).into(),
        "-s".into(),
        path_str(&stored.join("style-1.jpg")).into(),
        "-o".into(),
        path_str(&out).into(),
        "--size=64".into(),
        "--iters=10".into(),
        "--style-weight=3e-4".into(),
        "-q".into(),
    ]);
    let cli = image::open(&out).unwrap().to_rgb8();
    let served = image::load_from_memory(&result).unwrap().to_rgb8();
    assert_eq!(cli.dimensions(), served.dimensions());
    assert!(
        cli.as_raw() == served.as_raw(),
        "served result differs from the CLI's"
    );

    // The job's state, the gallery listing and the stored settings agree.
    let (status, job) = get_json(&format!("{}/jobs/{id}", server.url)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["state"], "done");
    assert_eq!(job["losses"].as_array().unwrap().len(), 10);
    let (_, gallery) = get_json(&format!("{}/gallery", server.url)).await;
    let entry = &gallery[0];
    assert_eq!(entry["id"], id.as_str());
    assert_eq!(entry["state"], "done");
    assert_eq!(entry["output"], serde_json::json!([64, 43]));
    assert_eq!(entry["uploads"]["content"], "cat photo.png");
    assert_eq!(entry["options"]["size"], "64");
    let command = entry["command"].as_str().unwrap();
    assert!(
        command.starts_with("nst -c 'cat photo.png' -s starry.jpg -o out.png --size=64"),
        "{command}"
    );
    assert_eq!(gallery_entries(&dir), vec![id.clone()]);
    assert!(incoming_is_empty(&dir));

    // An ended job cannot be cancelled; unknown ids are 404 with a JSON error.
    let r = reqwest::Client::new()
        .delete(format!("{}/jobs/{id}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let (status, body) = get_json(&format!("{}/jobs/0123456789abcdef", server.url)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_within_an_iteration_and_keeps_the_best_image() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gallery");
    let server = Server::start(&dir, &[]);
    // 256 px: iterations long enough (≈ 0.3 s here) that a busy machine's scheduling delay
    // between reading the event and sending the cancel stays within one of them.
    let id = long_job(&server, "256").await;
    let mut events = Events::open(&server, &id).await;
    let preview = events.until(|e| e["type"] == "preview").await;
    // The running job's preview: a PNG of the output size (256 px is under the 768 cap).
    let png = reqwest::get(format!(
        "{}{}",
        server.url,
        preview["url"].as_str().unwrap()
    ))
    .await
    .unwrap()
    .bytes()
    .await
    .unwrap();
    let preview = image::load_from_memory(&png).unwrap();
    assert_eq!((preview.width(), preview.height()), (256, 170));
    let r = reqwest::Client::new()
        .delete(format!("{}/jobs/{id}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let rest = events.all().await;
    let k = kinds(&rest);
    assert_eq!(*k.last().unwrap(), "cancelled", "{k:?}");
    let after = k.iter().filter(|&&t| t == "iteration").count();
    assert!(after <= 2, "{after} iterations after cancel: {k:?}");
    let cancelled = rest.last().unwrap();
    assert_eq!(cancelled["image"], format!("/gallery/{id}/result.png"));
    let img = image::open(dir.join(&id).join("result.png")).unwrap();
    assert_eq!(img.width(), 256);
    let (_, gallery) = get_json(&format!("{}/gallery", server.url)).await;
    assert_eq!(gallery[0]["state"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_wait_their_turn_and_a_queued_job_can_be_cancelled() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gallery");
    let server = Server::start(&dir, &[]);
    let long = long_job(&server, "128").await;
    // Once the worker has taken it, the others wait behind it.
    let mut long_events = Events::open(&server, &long).await;
    long_events
        .until(|e| e["state"] == "running" || e["type"] == "started")
        .await;
    let queued = job_id(&server, &[("size", "64"), ("iters", "5")]).await;
    let last = job_id(&server, &[("size", "64"), ("iters", "5")]).await;

    let (_, q) = get_json(&format!("{}/jobs/{queued}", server.url)).await;
    assert_eq!(q["state"], "queued");
    assert_eq!(q["position"], 1);
    let (_, l) = get_json(&format!("{}/jobs/{last}", server.url)).await;
    assert_eq!(l["position"], 2);
    let (_, list) = get_json(&format!("{}/jobs", server.url)).await;
    let order: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(order, vec![long.as_str(), &queued, &last]);

    // Cancelling the waiting job moves the last one up; nothing of it is kept.
    let mut last_events = Events::open(&server, &last).await;
    assert_eq!(last_events.next().await.unwrap()["position"], 2);
    let client = reqwest::Client::new();
    let r = client
        .delete(format!("{}/jobs/{queued}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (_, q) = get_json(&format!("{}/jobs/{queued}", server.url)).await;
    assert_eq!(q["state"], "cancelled");
    let moved = last_events.next().await.unwrap();
    assert_eq!(
        (moved["type"].as_str(), moved["position"].as_u64()),
        (Some("queued"), Some(1))
    );

    // The long job ends by cancel, then the last one runs to the end.
    client
        .delete(format!("{}/jobs/{long}", server.url))
        .send()
        .await
        .unwrap();
    let rest = last_events.all().await;
    assert_eq!(*kinds(&rest).last().unwrap(), "done", "{:?}", kinds(&rest));
    let mut expected = vec![long.clone(), last.clone()];
    expected.sort();
    assert_eq!(gallery_entries(&dir), expected);
    assert!(incoming_is_empty(&dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_json_errors_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gallery");
    let server = Server::start(&dir, &[("NST_MEMORY_LIMIT", "2G")]);
    let photo = std::fs::read(CONTENT).unwrap();
    let painting = std::fs::read(STYLE).unwrap();
    let with_content = |name: &str, bytes: Vec<u8>| -> Files {
        vec![
            ("content", name.into(), bytes),
            ("style", "s.jpg".into(), painting.clone()),
        ]
    };
    let mut truncated = photo.clone();
    truncated.truncate(photo.len() / 3);
    let cases: Vec<BadCase> = vec![
        (
            &[],
            with_content("notes.txt", b"hello, not an image".to_vec()),
            "not a PNG, JPEG or WebP",
        ),
        (
            &[],
            with_content("", b"hello".to_vec()),
            "content image is not a PNG",
        ),
        (
            &[],
            with_content("cut.png", truncated),
            "cannot decode content image 'cut.png'",
        ),
        (
            &[],
            with_content("bomb.png", png_with_size(100_000, 100_000)),
            "100000×100000",
        ),
        (
            &[],
            with_content("huge.png", png_with_size(12_000, 9_000)),
            "megapixels",
        ),
        (
            &[],
            vec![("content", "c.png".into(), photo.clone())],
            "no style image",
        ),
        (
            &[],
            vec![("style", "s.jpg".into(), painting.clone())],
            "no content image",
        ),
        (
            &[],
            [
                example_files(),
                vec![("content", "again.png".into(), photo.clone())],
            ]
            .concat(),
            "only one content image",
        ),
        (
            &[],
            [
                example_files(),
                (0..8)
                    .map(|_| ("style", "s.jpg".into(), painting.clone()))
                    .collect(),
            ]
            .concat(),
            "at most 8 style images",
        ),
        (
            &[],
            vec![("other", "x.png".into(), photo.clone())],
            "unknown file field",
        ),
        (
            &[("weights", "/etc/passwd")],
            example_files(),
            "unknown field 'weights'",
        ),
        (
            &[("output", "/tmp/x.png")],
            example_files(),
            "unknown field 'output'",
        ),
        (
            &[("init", "/etc/passwd")],
            example_files(),
            "content or noise",
        ),
        (&[("size", "0")], example_files(), "--size"),
        (&[("size", "abc")], example_files(), "--size"),
        (
            &[("size", "64"), ("size", "65")],
            example_files(),
            "given twice",
        ),
        (
            &[("style_weight", "nan")],
            example_files(),
            "--style-weight",
        ),
        (&[("style_weight", "-1")], example_files(), "--style-weight"),
        (
            &[("size", "8")],
            example_files(),
            "too small for layer relu5_1",
        ),
        (&[("optimizer", "sgd")], example_files(), "--optimizer"),
        (&[("size", "6000")], example_files(), "memory"),
    ];
    for (fields, files, needle) in cases {
        let (status, body) = submit(&server, fields, files).await;
        let error = body["error"].as_str().unwrap_or_default();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{fields:?}: {body}");
        assert!(
            error.contains(needle),
            "{fields:?}: '{error}' should contain '{needle}'"
        );
        assert!(
            !error.contains('\n') && !error.contains(path_str(&dir)),
            "{error}"
        );
    }

    // Over the body limit, as declared: refused before the body is sent, 413 with JSON.
    let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
    write!(
        s,
        "POST /jobs HTTP/1.1\r\nHost: {}\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        server.addr,
        65 << 20
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(
        response.contains(r#"{"error":"the upload is larger than 64 MiB"#),
        "{response}"
    );

    // Over the limit without a declared length (chunked): refused while reading, 413.
    let chunks =
        futures_util::stream::iter((0..70).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 1 << 20])));
    let form = Form::new().part(
        "content",
        Part::stream(reqwest::Body::wrap_stream(chunks)).file_name("big.png"),
    );
    let result = reqwest::Client::new()
        .post(format!("{}/jobs", server.url))
        .multipart(form)
        .send()
        .await;
    // The server answers and closes once the limit is passed; the client may still be
    // writing then and see the connection closed instead of the answer.
    match result {
        Ok(r) => {
            assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
            let body: Value = r.json().await.unwrap();
            assert!(body["error"]
                .as_str()
                .unwrap()
                .contains("larger than 64 MiB"));
        }
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }

    // Not multipart at all.
    let r = reqwest::Client::new()
        .post(format!("{}/jobs", server.url))
        .body("size=64")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]
        .as_str()
        .unwrap()
        .starts_with("expected multipart/form-data"));

    assert_eq!(gallery_entries(&dir), Vec::<String>::new());
    assert!(incoming_is_empty(&dir));
    let (_, jobs) = get_json(&format!("{}/jobs", server.url)).await;
    assert_eq!(jobs, serde_json::json!([]));
}

/// One raw request (no client-side path normalisation): status and body.
fn raw(addr: &str, method: &str, path: &str) -> (u16, String) {
    raw_with(addr, method, path, &format!("Host: {addr}\r\n"))
}

/// [`raw`] with the given header lines (each ending in CRLF) instead of the usual `Host`.
fn raw_with(addr: &str, method: &str, path: &str, headers: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).unwrap();
    response.push_str(&String::from_utf8_lossy(&bytes));
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_path_reaches_outside_the_gallery() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gallery");
    std::fs::write(tmp.path().join("secret.txt"), "SECRET-OUTSIDE").unwrap();
    let server = Server::start(&dir, &[]);
    let id = job_id(&server, &[("size", "64"), ("iters", "2")]).await;
    Events::open(&server, &id).await.all().await;
    std::fs::write(dir.join(&id).join("secret.txt"), "SECRET-INSIDE").unwrap();
    std::fs::create_dir_all(dir.join(".incoming")).unwrap();
    std::fs::write(dir.join(".incoming").join("x.png"), "SECRET-INCOMING").unwrap();

    let (ok, _) = raw(&server.addr, "GET", &format!("/gallery/{id}/result.png"));
    assert_eq!(ok, 200);
    let attempts = [
        "/gallery/../secret.txt".to_string(),
        "/gallery/%2e%2e/secret.txt".into(),
        "/gallery/..%2fsecret.txt".into(),
        "/gallery/..%2Fsecret.txt/x".into(),
        "/gallery/%2e%2e%2f%2e%2e%2fsecret.txt/x".into(),
        "/gallery/..%252f..%252fsecret.txt/x".into(),
        format!("/gallery/{id}/..%2F..%2Fsecret.txt"),
        format!("/gallery/{id}/%2e%2e%2f%2e%2e%2fsecret.txt"),
        format!("/gallery/{id}/secret.txt"),
        format!("/gallery/{id}/..\\..\\secret.txt"),
        format!("/gallery/{id}/result.png%00.txt"),
        format!("/gallery/{id}/%2fetc%2fpasswd"),
        "/gallery/%2fetc%2fpasswd/x".into(),
        "/gallery/.incoming/x.png".into(),
        "/gallery/..%2f.incoming/x.png".into(),
        "/jobs/..%2F..%2Fsecret.txt".into(),
        "/jobs/..%2F..%2Fsecret.txt/preview".into(),
        "/../secret.txt".into(),
        "/%2e%2e/secret.txt".into(),
        "/style.css/../../secret.txt".into(),
    ];
    for path in &attempts {
        let (status, body) = raw(&server.addr, "GET", path);
        assert!((400..500).contains(&status), "GET {path}: {status}");
        assert!(!body.contains("SECRET"), "GET {path} leaked: {body}");
        let (status, _) = raw(&server.addr, "DELETE", path);
        assert!((400..500).contains(&status), "DELETE {path}: {status}");
    }
    assert!(tmp.path().join("secret.txt").exists());
    assert_eq!(gallery_entries(&dir), vec![id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_keeps_the_running_jobs_best_image_and_a_restart_keeps_the_gallery() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gallery");
    let server = Server::start(&dir, &[]);
    let done = job_id(&server, &[("size", "64"), ("iters", "3")]).await;
    Events::open(&server, &done).await.all().await;
    let running = long_job(&server, "128").await;
    let waiting = job_id(&server, &[("size", "64"), ("iters", "3")]).await;
    let mut events = Events::open(&server, &running).await;
    events.until(|e| e["type"] == "iteration").await;
    let status = tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut expected = vec![done.clone(), running.clone()];
    expected.sort();
    assert_eq!(
        gallery_entries(&dir),
        expected,
        "waiting job {waiting} is not kept"
    );
    assert!(incoming_is_empty(&dir));

    let server = Server::start(&dir, &[]);
    let (_, gallery) = get_json(&format!("{}/gallery", server.url)).await;
    let states: Vec<(&str, &str)> = gallery
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), e["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        vec![(running.as_str(), "cancelled"), (done.as_str(), "done")]
    );
    let r = reqwest::Client::new()
        .delete(format!("{}/gallery/{done}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(gallery_entries(&dir), vec![running]);
}

#[test]
fn serve_refuses_a_busy_port_in_one_line() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let o = nst(&["serve", "--port", &port, "--dir", path_str(tmp.path())]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: cannot listen on 127.0.0.1:"),
        "{stderr}"
    );
    let help = nst(&["serve", "--help"]);
    let usage = String::from_utf8_lossy(&help.stdout);
    assert!(usage.contains("Usage: nst serve [OPTIONS]"), "{usage}");
}

/// A job that fits the server's memory only in the lean mode (`NST_MEMORY_LIMIT` as in the
/// CLI's test of that mode) runs, and says so: a `warning` event (or the first `state`'s
/// `warnings`, if it came before the stream opened) and the job's `warnings`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_must_run_lean_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("gallery"), &[("NST_MEMORY_LIMIT", "420M")]);
    let id = job_id(&server, &[("size", "512"), ("iters", "2"), ("scales", "1")]).await;
    let events = Events::open(&server, &id).await.all().await;
    assert_eq!(
        *kinds(&events).last().unwrap(),
        "done",
        "{:?}",
        kinds(&events)
    );
    let said: Vec<&str> = events[0]["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .chain(
            events
                .iter()
                .filter(|e| e["type"] == "warning")
                .map(|e| &e["message"]),
        )
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].starts_with("memory is tight for this size: lean mode"),
        "{said:?}"
    );
    let (_, job) = get_json(&format!("{}/jobs/{id}", server.url)).await;
    assert_eq!(job["warnings"], serde_json::json!(said));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_fails_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gallery");
    let server = Server::start(&dir, &[]);
    // β so large that the loss overflows: the run stops with a non-finite loss.
    let failing = job_id(
        &server,
        &[("size", "64"), ("iters", "5"), ("style_weight", "3e38")],
    )
    .await;
    let next = job_id(&server, &[("size", "64"), ("iters", "3")]).await;
    let events = Events::open(&server, &failing).await.all().await;
    let last = events.last().unwrap();
    assert_eq!(last["type"], "failed", "{:?}", kinds(&events));
    let error = last["error"].as_str().unwrap();
    assert!(error.starts_with("the loss became non-finite"), "{error}");
    assert!(!error.contains('/'), "no server paths: {error}");
    assert_eq!(last["image"], Value::Null);
    let (_, job) = get_json(&format!("{}/jobs/{failing}", server.url)).await;
    assert_eq!(
        (job["state"].as_str(), job["error"].as_str()),
        (Some("failed"), Some(error))
    );

    let events = Events::open(&server, &next).await.all().await;
    assert_eq!(events.last().unwrap()["type"], "done");
    assert_eq!(gallery_entries(&dir), vec![next]);
    assert!(incoming_is_empty(&dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_sites_and_host_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("gallery"), &[]);
    let addr = server.addr.as_str();
    let port = addr.rsplit(':').next().unwrap();
    // The page itself, and tools without an Origin.
    for headers in [
        format!("Host: {addr}\r\n"),
        format!("Host: localhost:{port}\r\n"),
        format!("Host: {addr}\r\nOrigin: http://{addr}\r\n"),
    ] {
        let (status, _) = raw_with(addr, "GET", "/gallery", &headers);
        assert_eq!(status, 200, "{headers:?}");
    }
    // A page on another site posting here, and a DNS name rebound to 127.0.0.1.
    for (headers, needle) in [
        (
            format!("Host: {addr}\r\nOrigin: http://evil.example\r\n"),
            "other sites",
        ),
        (format!("Host: {addr}\r\nOrigin: null\r\n"), "other sites"),
        (format!("Host: evil.example:{port}\r\n"), "unknown host"),
        ("Host: evil.example\r\n".to_string(), "unknown host"),
    ] {
        for (method, path) in [
            ("GET", "/gallery"),
            ("POST", "/jobs"),
            ("DELETE", "/jobs/0123456789abcdef"),
        ] {
            let (status, body) = raw_with(addr, method, path, &headers);
            assert_eq!(status, 403, "{method} {path} {headers:?}");
            assert!(body.contains(needle), "{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gallery_that_turns_read_only_fails_the_job_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gallery");
    std::fs::create_dir(&dir).unwrap();
    let Some(fs) = Tmpfs::mount(&dir, "64m") else {
        return;
    };
    let server = Server::start(&dir, &[]);
    let id = long_job(&server, "256").await;
    let mut events = Events::open(&server, &id).await;
    events.until(|e| e["type"] == "iteration").await;
    // The disk goes read-only under the running job; cancelling makes it write its image.
    fs.remount_read_only();
    reqwest::Client::new()
        .delete(format!("{}/jobs/{id}", server.url))
        .send()
        .await
        .unwrap();
    let rest = events.all().await;
    let last = rest.last().unwrap();
    assert_eq!(last["type"], "failed", "{:?}", kinds(&rest));
    let error = last["error"].as_str().unwrap();
    assert!(
        !error.contains('\n') && !error.contains(path_str(&dir)),
        "{error}"
    );
    assert_eq!(last["image"], Value::Null);
    // The server still answers.
    let (status, gallery) = get_json(&format!("{}/gallery", server.url)).await;
    assert_eq!((status, gallery), (StatusCode::OK, serde_json::json!([])));
    drop(server);
}
