//! `nst serve` in a real browser: runs `e2e/serve.test.mjs` (playwright-core driving headless
//! Debian Chromium) against a server on an ephemeral port. It needs `node`, Chromium
//! (`/usr/bin/chromium`, or `$CHROMIUM`) and `npm ci` in `e2e/`; `.ci/run` installs them.
//! Where one is missing the test says SKIPPED, or fails under `NST_REQUIRE_BROWSER=1` (CI).
//! Screenshots land in `target/tmp/serve-e2e/`.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

const E2E: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../e2e");

fn missing_tool() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("no Chromium at {chromium} (apt install chromium)"));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("no node on PATH".into());
    }
    if !Path::new(E2E).join("node_modules/playwright-core").is_dir() {
        return Some("playwright-core is not installed (cd e2e && npm ci)".into());
    }
    None
}

#[test]
fn the_page_styles_a_photo_in_a_real_browser() {
    if let Some(why) = missing_tool() {
        if std::env::var("NST_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
            panic!("NST_REQUIRE_BROWSER=1 but {why}");
        }
        // Past the harness's capture, so it shows in every run.
        let mut stderr = std::io::stderr();
        let _ = std::io::Write::write_all(
            &mut stderr,
            format!("SKIPPED the_page_styles_a_photo_in_a_real_browser: {why}\n").as_bytes(),
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gallery");
    let not_image = tmp.path().join("notes.txt");
    std::fs::write(&not_image, "this is not a picture\n").unwrap();
    let screens = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-e2e");
    std::fs::create_dir_all(&screens).unwrap();
    let server = Server::start(&dir, &[]);
    let o = Command::new("node")
        .arg(Path::new(E2E).join("serve.test.mjs"))
        .args([
            &server.url,
            CONTENT,
            STYLE,
            path_str(&not_image),
            path_str(&screens),
        ])
        .output()
        .expect("run node");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "browser test failed:\n{report}");
    assert!(report.contains("ok: "), "{report}");
}
