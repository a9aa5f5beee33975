//! The job queue: one job runs at a time on one worker thread (the device does one thing at
//! a time, and a second concurrent run would only halve both), the others wait in order.
//!
//! Every change of a job is an [`Event`], numbered per job and broadcast to whoever follows
//! it (`GET /jobs/{id}/events`); a follower first gets the job's whole state as a `state`
//! event, taken under the same lock as the subscription, so it misses nothing and sees
//! nothing twice. The latest preview picture is kept as PNG bytes for
//! `GET /jobs/{id}/preview`.
//!
//! A job's run is the CLI's pipeline ([`crate::pipeline::run`]) with a [`Progress`] that
//! records into the job. Cancel sets the run's interrupt flag, which the run's ops check
//! ([`nst_tensor::interruptible`]): it stops within one op and writes the best image so far, which
//! goes to the gallery like a finished one. A panic inside a run is caught and fails that
//! job only.

use super::gallery::{Gallery, JobId, RESULT_FILE};
use crate::config::Config;
use crate::pipeline::{self, FailedMidRun, Interrupted, NonFiniteLoss};
use crate::progress::{IterationInfo, Progress};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// At most this many jobs wait; more is refused (503) rather than queued for hours.
pub const MAX_QUEUED: usize = 16;
/// Finished jobs kept in memory for `GET /jobs/{id}` (their results stay in the gallery).
const FINISHED_KEPT: usize = 100;
/// A preview at most this often (plus the first and last iteration of each scale): making
/// one costs a copy from the device, a resize to the output size and one down to at most
/// [`PREVIEW_SIDE`], and a PNG encode (≈ 20 ms at 512²).
const PREVIEW_INTERVAL: Duration = Duration::from_millis(700);
/// Longest side of a preview picture.
const PREVIEW_SIDE: u32 = 768;
/// Events a slow follower may fall behind before it is sent a fresh `state` instead.
const EVENT_BUFFER: usize = 256;

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for the device.
    Queued,
    /// Being optimised.
    Running,
    /// Finished; its result is in the gallery.
    Done,
    /// Cancelled; if it had started, its best image is in the gallery.
    Cancelled,
    /// Stopped by an error.
    Failed,
}

impl JobState {
    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Cancelled | Self::Failed)
    }
}

/// One loss value, for the page's curve.
#[derive(Clone, Debug, Serialize)]
pub struct LossPoint {
    /// 1-based scale.
    pub scale: usize,
    /// Iteration within the scale.
    pub iter: u32,
    /// Total loss.
    pub loss: f64,
}

/// One update of a job, sent as one `data:` JSON line: `{"seq": n, "type": …, …}`.
#[derive(Clone, Debug)]
pub struct Event {
    /// Position in the job's event sequence (1, 2, …).
    pub seq: u64,
    /// The event as JSON (with `seq` and `type`).
    pub data: Value,
    /// Whether this is the job's last event.
    pub is_final: bool,
}

/// What a submitted job carries into the queue.
pub struct NewJob {
    /// Its id (the folder in `.incoming` already holds its uploads).
    pub id: JobId,
    /// The run.
    pub config: Config,
    /// The description stored with its result (options, upload names, command line).
    pub settings: Value,
}

struct Job {
    id: JobId,
    state: JobState,
    created: f64,
    config: Config,
    settings: Value,
    /// (scale, scales, width, height) of the scale being optimised.
    scale: Option<(usize, usize, usize, usize)>,
    iter: u32,
    losses: Vec<LossPoint>,
    preview: Option<Arc<Vec<u8>>>,
    previews: u32,
    device: Option<String>,
    /// How the run departs from what was asked, to fit the memory (lean mode, a shorter
    /// L-BFGS history).
    warnings: Vec<String>,
    error: Option<String>,
    has_result: bool,
    interrupt: Arc<AtomicBool>,
    seq: u64,
    events: broadcast::Sender<Event>,
}

impl Job {
    /// The job as JSON (`GET /jobs/{id}`, the `state` event).
    fn snapshot(&self, position: Option<usize>) -> Value {
        let id = self.id.to_string();
        json!({
            "id": id,
            "state": self.state,
            "created": self.created,
            "position": position,
            "scale": self.scale.map(|s| s.0),
            "scales": self.scale.map(|s| s.1),
            "width": self.scale.map(|s| s.2),
            "height": self.scale.map(|s| s.3),
            "iter": self.iter,
            "iters": self.config.iters,
            "losses": self.losses,
            "device": self.device,
            "warnings": self.warnings,
            "error": self.error,
            "preview": self.preview.as_ref().map(|_| format!("/jobs/{id}/preview?v={}", self.previews)),
            "image": self.has_result.then(|| format!("/gallery/{id}/{RESULT_FILE}")),
            "settings": self.settings,
        })
    }

    /// Ends a job that never ran (nothing of it is kept).
    fn cancel_waiting(&mut self) {
        self.state = JobState::Cancelled;
        self.emit("cancelled", json!({ "image": null }));
    }

    /// Numbers and broadcasts an event (nobody listening is fine).
    fn emit(&mut self, kind: &str, mut data: Value) {
        self.seq += 1;
        data["seq"] = self.seq.into();
        data["type"] = kind.into();
        let is_final = matches!(kind, "done" | "cancelled" | "failed");
        let _ = self.events.send(Event {
            seq: self.seq,
            data,
            is_final,
        });
    }
}

#[derive(Default)]
struct Table {
    jobs: HashMap<JobId, Job>,
    /// Waiting jobs, first to run first.
    queue: VecDeque<JobId>,
    /// Finished jobs, oldest first (to forget the oldest).
    finished: VecDeque<JobId>,
    shutting_down: bool,
}

impl Table {
    fn position(&self, id: JobId) -> Option<usize> {
        self.queue.iter().position(|&q| q == id).map(|p| p + 1)
    }

    /// Tells every waiting job its place in the queue.
    fn announce_positions(&mut self) {
        let queue: Vec<JobId> = self.queue.iter().copied().collect();
        for (i, id) in queue.into_iter().enumerate() {
            if let Some(job) = self.jobs.get_mut(&id) {
                job.emit("queued", json!({ "position": i + 1 }));
            }
        }
    }

    fn finish(&mut self, id: JobId) {
        self.finished.push_back(id);
        while self.finished.len() > FINISHED_KEPT {
            if let Some(old) = self.finished.pop_front() {
                self.jobs.remove(&old);
            }
        }
    }
}

/// A job cannot be cancelled because it has already ended.
#[derive(Debug)]
pub struct AlreadyFinished(pub JobState);

/// The queue, shared by the HTTP handlers and the worker thread.
pub struct Jobs {
    table: Mutex<Table>,
    wake: Condvar,
    gallery: Gallery,
}

impl Jobs {
    /// An empty queue whose results go to `gallery`.
    pub fn new(gallery: Gallery) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::default(),
            wake: Condvar::new(),
            gallery,
        })
    }

    /// The gallery results go to.
    pub fn gallery(&self) -> &Gallery {
        &self.gallery
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while the lock was held (caught in `run_job`) leaves a consistent table:
        // every update is a few field assignments.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a job; `None` if the queue is full.
    pub fn submit(&self, new: NewJob) -> Option<JobId> {
        let mut table = self.lock();
        if table.queue.len() >= MAX_QUEUED || table.shutting_down {
            return None;
        }
        let id = new.id;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        table.jobs.insert(
            id,
            Job {
                id,
                state: JobState::Queued,
                created,
                config: new.config,
                settings: new.settings,
                scale: None,
                iter: 0,
                losses: Vec::new(),
                preview: None,
                previews: 0,
                device: None,
                warnings: Vec::new(),
                error: None,
                has_result: false,
                interrupt: Arc::new(AtomicBool::new(false)),
                seq: 0,
                events,
            },
        );
        table.queue.push_back(id);
        drop(table);
        self.wake.notify_all();
        Some(id)
    }

    /// The job's state as JSON, if it is known.
    pub fn snapshot(&self, id: JobId) -> Option<Value> {
        let table = self.lock();
        let job = table.jobs.get(&id)?;
        Some(job.snapshot(table.position(id)))
    }

    /// Every job remembered, as summaries (no loss history).
    pub fn list(&self) -> Vec<Value> {
        let table = self.lock();
        let mut jobs: Vec<&Job> = table.jobs.values().collect();
        // Running and waiting jobs first, in the order they run; then the finished ones,
        // newest first.
        jobs.sort_by(|a, b| {
            let key = |j: &Job| {
                (
                    j.state.is_final(),
                    if j.state.is_final() {
                        -j.created
                    } else {
                        j.created
                    },
                )
            };
            let (ka, kb) = (key(a), key(b));
            ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1))
        });
        jobs.iter()
            .map(|job| {
                let mut v = job.snapshot(table.position(job.id));
                v["losses"] = Value::Null;
                v
            })
            .collect()
    }

    /// The latest preview picture (PNG) and its number.
    pub fn preview(&self, id: JobId) -> Option<Arc<Vec<u8>>> {
        self.lock().jobs.get(&id)?.preview.clone()
    }

    /// The job's state now and a receiver of every later event; `None` for an unknown job.
    pub fn follow(&self, id: JobId) -> Option<(Event, broadcast::Receiver<Event>)> {
        let table = self.lock();
        let job = table.jobs.get(&id)?;
        let mut data = job.snapshot(table.position(id));
        data["seq"] = job.seq.into();
        data["type"] = "state".into();
        let state = Event {
            seq: job.seq,
            data,
            is_final: job.state.is_final(),
        };
        Some((state, job.events.subscribe()))
    }

    /// Cancels a job: a waiting one leaves the queue, a running one stops within one op (a
    /// convolution), keeping its best image. `Ok(false)` for an unknown job.
    pub fn cancel(&self, id: JobId) -> Result<bool, AlreadyFinished> {
        let mut table = self.lock();
        let Some(job) = table.jobs.get_mut(&id) else {
            return Ok(false);
        };
        match job.state {
            JobState::Running => {
                job.interrupt.store(true, Ordering::SeqCst);
                job.emit("cancelling", json!({}));
            }
            JobState::Queued => {
                job.cancel_waiting();
                table.queue.retain(|&q| q != id);
                table.finish(id);
                table.announce_positions();
                drop(table); // not held while deleting files
                self.gallery.discard(id);
            }
            state => return Err(AlreadyFinished(state)),
        }
        Ok(true)
    }

    /// Stops taking jobs: cancels the waiting ones and interrupts the running one (which
    /// still lands in the gallery). The worker then returns.
    pub fn shut_down(&self) {
        let mut table = self.lock();
        table.shutting_down = true;
        let queued: Vec<JobId> = table.queue.drain(..).collect();
        for id in &queued {
            if let Some(job) = table.jobs.get_mut(id) {
                job.cancel_waiting();
            }
        }
        for job in table.jobs.values_mut() {
            if job.state == JobState::Running {
                job.interrupt.store(true, Ordering::SeqCst);
            }
        }
        drop(table);
        self.wake.notify_all();
        for id in queued {
            self.gallery.discard(id);
        }
    }

    /// The worker: runs queued jobs one at a time until [`Jobs::shut_down`].
    pub fn work(self: &Arc<Self>) {
        while let Some((id, config, interrupt)) = self.next_job() {
            self.run_job(id, &config, &interrupt);
            // What one large job needed is not kept while the server waits for the next.
            nst_tensor::allocator::return_freed_memory();
        }
    }

    /// Waits for the next job and marks it running; `None` once shutting down.
    fn next_job(&self) -> Option<(JobId, Config, Arc<AtomicBool>)> {
        let mut table = self.lock();
        loop {
            if table.shutting_down {
                return None;
            }
            if let Some(id) = table.queue.pop_front() {
                table.announce_positions();
                let Some(job) = table.jobs.get_mut(&id) else {
                    continue; // cannot happen: queued jobs stay in the table
                };
                job.state = JobState::Running;
                job.emit("started", json!({}));
                return Some((id, job.config.clone(), job.interrupt.clone()));
            }
            table = self.wake.wait(table).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Runs one job through the pipeline and files its result.
    fn run_job(self: &Arc<Self>, id: JobId, config: &Config, interrupt: &AtomicBool) {
        let mut progress = JobProgress {
            jobs: self.clone(),
            id,
            last_preview: None,
        };
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pipeline::run(config, &mut progress, interrupt)
        }));
        let (mut state, mut error) = match run {
            Ok(Ok(outcome)) => {
                let final_loss = outcome.trace.last().map(|t| t.total);
                self.update(id, |job| {
                    job.settings["output"] = json!([outcome.output_size.0, outcome.output_size.1]);
                    job.settings["device"] = json!(outcome.device);
                    job.settings["seconds"] = json!(outcome.timing.total_s);
                    job.settings["final_loss"] = json!(final_loss);
                });
                (JobState::Done, None)
            }
            Ok(Err(e)) if e.downcast_ref::<Interrupted>().is_some() => (JobState::Cancelled, None),
            Ok(Err(e)) => (JobState::Failed, Some(failure_message(&e, config))),
            Err(_) => (
                JobState::Failed,
                Some("internal error (a bug in nst): the run panicked".into()),
            ),
        };
        // Cancelled runs wrote their best image; failed ones are not kept.
        let image_written = state != JobState::Failed && config.output.is_file();
        let mut published = false;
        if image_written {
            let mut settings = self.update(id, |job| {
                job.settings["state"] = json!(state);
                job.settings["created"] = json!(job.created);
                job.settings.clone()
            });
            settings["image"] = json!(RESULT_FILE);
            match self.gallery.publish(id, &settings) {
                Ok(()) => published = true,
                Err(e) => {
                    // The details name the server's folders: they go to its log.
                    eprintln!("nst serve: job {id}: {e:#}");
                    state = JobState::Failed;
                    error = Some("the result could not be stored in the gallery folder (full disk or no permission?)".into());
                }
            }
        }
        if !published {
            self.gallery.discard(id);
        }
        let mut table = self.lock();
        if let Some(job) = table.jobs.get_mut(&id) {
            job.state = state;
            job.error = error.clone();
            job.has_result = published;
            job.preview = None; // the result (or nothing) replaces it
            let image = published.then(|| format!("/gallery/{id}/{RESULT_FILE}"));
            let kind = match state {
                JobState::Done => "done",
                JobState::Cancelled => "cancelled",
                _ => "failed",
            };
            job.emit(
                kind,
                json!({ "image": image, "error": error, "settings": job.settings }),
            );
        }
        table.finish(id);
    }

    /// Applies `f` to job `id` under the lock (the job exists while it runs).
    fn update<T>(&self, id: JobId, f: impl FnOnce(&mut Job) -> T) -> T {
        let mut table = self.lock();
        let job = table
            .jobs
            .get_mut(&id)
            .expect("a running job stays in the table");
        f(job)
    }
}

/// What the page shows for a failed run: the pipeline's message without the server's paths
/// (a failed job keeps no image, whatever the message of the CLI says about writing one).
fn failure_message(e: &anyhow::Error, config: &Config) -> String {
    if let Some(nf) = e.downcast_ref::<NonFiniteLoss>() {
        return format!(
            "the loss became non-finite at iteration {} of scale {}: lower the style strength",
            nf.iter, nf.scale
        );
    }
    if let Some(f) = e.downcast_ref::<FailedMidRun>() {
        return format!("{} (scale {}, iteration {})", f.reason, f.scale, f.iter);
    }
    let message = format!("{e:#}");
    match config.output.parent() {
        Some(dir) => message.replace(&format!("{}/", dir.display()), ""),
        None => message,
    }
}

/// The pipeline's progress, recorded into the running job.
struct JobProgress {
    jobs: Arc<Jobs>,
    id: JobId,
    last_preview: Option<Instant>,
}

impl Progress for JobProgress {
    fn scale_started(
        &mut self,
        scale: usize,
        scales: usize,
        width: usize,
        height: usize,
        iters: u32,
    ) {
        self.jobs.update(self.id, |job| {
            job.scale = Some((scale, scales, width, height));
            job.iter = 0;
            job.emit(
                "scale",
                json!({ "scale": scale, "scales": scales, "width": width, "height": height, "iters": iters }),
            );
        });
    }

    fn iteration(&mut self, info: &IterationInfo) {
        self.jobs.update(self.id, |job| {
            job.iter = info.iter;
            job.losses.push(LossPoint {
                scale: info.scale,
                iter: info.iter,
                loss: info.total,
            });
            job.emit(
                "iteration",
                json!({
                    "scale": info.scale, "scales": info.scales, "iter": info.iter,
                    "iters": info.iters, "loss": info.total, "it_per_s": info.it_per_s,
                }),
            );
        });
    }

    fn scale_finished(&mut self) {}

    fn note(&mut self, _: &str) {}

    fn warning(&mut self, msg: &str) {
        let message = msg.to_string();
        self.jobs.update(self.id, |job| {
            job.emit("warning", json!({ "message": message }));
            job.warnings.push(message);
        });
    }

    fn device_chosen(&mut self, device: &str, _why_not_cuda: Option<&str>) {
        let device = device.to_string();
        self.jobs.update(self.id, |job| {
            job.emit("device", json!({ "device": device }));
            job.device = Some(device);
        });
    }

    fn wants_preview(&mut self, info: &IterationInfo) -> bool {
        info.iter == 1
            || info.iter == info.iters
            || self
                .last_preview
                .is_none_or(|t| t.elapsed() >= PREVIEW_INTERVAL)
    }

    fn preview(&mut self, info: &IterationInfo, image: &image::RgbImage) {
        self.last_preview = Some(Instant::now());
        // A screen's worth is enough to watch; the result keeps the full size.
        let (w, h) = image.dimensions();
        let scaled;
        let image = if w.max(h) > PREVIEW_SIDE {
            let (sw, sh) = nst_image::fit_longest_side(w as usize, h as usize, PREVIEW_SIDE);
            scaled = image::imageops::resize(
                image,
                sw as u32,
                sh as u32,
                image::imageops::FilterType::Triangle,
            );
            &scaled
        } else {
            image
        };
        let mut png = Vec::new();
        let encoded = image::codecs::png::PngEncoder::new_with_quality(
            &mut png,
            image::codecs::png::CompressionType::Fast,
            image::codecs::png::FilterType::Adaptive,
        );
        if image.write_with_encoder(encoded).is_err() {
            return;
        }
        self.jobs.update(self.id, |job| {
            job.preview = Some(Arc::new(png));
            job.previews += 1;
            let url = format!("/jobs/{}/preview?v={}", job.id, job.previews);
            job.emit(
                "preview",
                json!({ "url": url, "scale": info.scale, "iter": info.iter }),
            );
        });
    }
}
