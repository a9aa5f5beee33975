//! `nst serve`: a local web page to style a photo and watch it being painted.
//!
//! The page (plain HTML, CSS and JavaScript built into the binary: no CDN, no npm) uploads a
//! photo and style images to the HTTP API ([`api`]), which checks them as the CLI would
//! ([`form`]) and queues a job ([`jobs`]); one worker thread runs the jobs one at a time
//! through the same pipeline as `nst -c … -s … -o …`, streaming progress and previews over
//! Server-Sent Events, and files each result in the gallery folder ([`gallery`]).
//!
//! Ctrl-C or SIGTERM stops the server: the running job is interrupted and its best image
//! still lands in the gallery; waiting jobs are dropped.

pub mod api;
pub mod form;
pub mod gallery;
pub mod jobs;

use anyhow::{Context, Result};
use clap::Parser;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// How long connections (an open event stream, say) may hold up the exit after Ctrl-C.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Arguments of `nst serve`.
#[derive(Parser, Debug)]
#[command(
    name = "nst serve",
    version,
    about = "Serve a local web page to style photos and watch them being painted",
    after_help = "Open the address it prints in a browser. Ctrl-C stops it; the running job's best image is kept.",
    max_term_width = 100
)]
pub struct ServeArgs {
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,

    /// Address to listen on (an IP address, or localhost). The default answers only this
    /// machine; another address lets anyone who can reach it upload images and use this
    /// machine's processor.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST), value_parser = host_address)]
    pub host: IpAddr,

    /// Folder of finished results (image + settings.json each); kept across restarts.
    #[arg(long, value_name = "DIR", default_value = "nst-gallery")]
    pub dir: PathBuf,
}

/// `--host`: an IP address, or `localhost` (127.0.0.1), which is what most people type.
fn host_address(s: &str) -> Result<IpAddr, String> {
    if s.eq_ignore_ascii_case("localhost") {
        return Ok(Ipv4Addr::LOCALHOST.into());
    }
    s.parse()
        .map_err(|_| "not an IP address (e.g. 127.0.0.1, 0.0.0.0 or ::1) nor localhost".into())
}

/// Runs the server until Ctrl-C or SIGTERM.
pub fn run(args: &ServeArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let address = SocketAddr::new(args.host, args.port);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(address))
        .with_context(|| format!("cannot listen on {address}"))?;
    let address = listener.local_addr()?;
    // Only once the port is ours: a server that cannot start leaves no gallery behind.
    let jobs = jobs::Jobs::new(gallery::Gallery::open(&args.dir)?);
    if !args.host.is_loopback() {
        eprintln!("warning: listening on {address}: anyone who can reach this machine can use it");
    }
    let shown = match address.ip() {
        ip if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), address.port()),
        _ => address,
    };
    println!(
        "nst serve: open http://{shown}/ (results in {}; Ctrl-C stops)",
        args.dir.display()
    );
    let _ = std::io::stdout().flush();

    let worker = {
        let jobs = jobs.clone();
        std::thread::Builder::new()
            .name("nst-job".into())
            .spawn(move || jobs.work())
            .context("cannot start the job thread")?
    };
    let app = api::router(jobs.clone(), api::AllowedHosts::for_address(address));
    let result = runtime.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let server = axum::serve(listener, app).with_graceful_shutdown({
            let mut stop_rx = stop_rx.clone();
            async move {
                let _ = stop_rx.wait_for(|&stop| stop).await;
            }
        });
        let mut server = std::pin::pin!(std::future::IntoFuture::into_future(server));
        tokio::select! {
            result = &mut server => return result.context("the server stopped"),
            () = stop_signal() => {}
        }
        eprintln!("nst serve: stopping (the running job keeps its best image; Ctrl-C again quits at once)");
        // A second signal ends the process without waiting for the job to write its image.
        tokio::spawn(async {
            stop_signal().await;
            std::process::exit(130);
        });
        jobs.shut_down();
        let _ = stop_tx.send(true);
        // Open event streams end when their jobs do; don't wait on idle ones forever.
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await;
        Ok(())
    });
    // Whatever ended the server, the worker stops; the interrupted job writes its image
    // before it returns.
    jobs.shut_down();
    let _ = worker.join();
    result
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_takes_ip_addresses_and_localhost() {
        assert_eq!(host_address("localhost"), Ok(Ipv4Addr::LOCALHOST.into()));
        assert_eq!(host_address("0.0.0.0"), Ok(Ipv4Addr::UNSPECIFIED.into()));
        assert_eq!(
            host_address("::1"),
            Ok(std::net::Ipv6Addr::LOCALHOST.into())
        );
        assert!(host_address("example.com")
            .unwrap_err()
            .contains("not an IP address"));
    }
}
