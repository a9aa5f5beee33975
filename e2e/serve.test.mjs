// End-to-end test of `nst serve` in a real browser (headless Debian Chromium, driven by
// playwright-core). Run by crates/nst-cli/tests/serve_browser.rs, which starts the server:
//
//   node e2e/serve.test.mjs URL CONTENT.png STYLE.jpg NOT_AN_IMAGE.txt OUT_DIR
//
// It uploads two small images, starts a 64 px / 10-iteration job, sees the preview change
// at least twice, sees the final image and downloads it (a PNG); then uploads a text file
// and sees the server's error on the page. Screenshots go to OUT_DIR.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";

const [url, content, style, notImage, outDir] = process.argv.slice(2);
assert.ok(outDir, "usage: serve.test.mjs URL CONTENT STYLE NOT_AN_IMAGE OUT_DIR");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-quic", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(url);
  await page.waitForFunction(() => document.querySelector("#size").value !== "");
  await page.screenshot({ path: join(outDir, "1-empty.png"), fullPage: true });

  // A job: pictures, settings, Start.
  await page.setInputFiles("#content-input", content);
  await page.setInputFiles("#style-input", style);
  await page.waitForSelector("#content-thumbs img");
  await page.waitForSelector("#style-thumbs img");
  await page.fill("#size", "64");
  await page.fill("#iters", "10");
  await page.click("#start");

  // The preview changes while the job runs, then the result is offered for download.
  await page.waitForFunction(() => Number(document.querySelector("#preview").dataset.updates) >= 2,
                             null, { timeout: 60_000 });
  await page.waitForSelector("#download", { state: "visible", timeout: 60_000 });
  assert.match(await page.textContent("#status"), /Done/);
  const updates = Number(await page.getAttribute("#preview", "data-updates"));
  assert.ok(updates >= 3, `preview updates: ${updates}`); // ≥ 2 during the run, then the result
  assert.match(await page.textContent("#settings"), /--size=64/);
  assert.ok(await page.locator("#loss polyline").count() === 1, "a loss curve is drawn");
  await page.screenshot({ path: join(outDir, "2-done.png"), fullPage: true });

  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
  const saved = join(outDir, "downloaded.png");
  await download.saveAs(saved);
  const png = readFileSync(saved);
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], "a PNG");
  assert.equal(png.readUInt32BE(16), 64, "64 px wide");

  // The gallery shows the result with its inputs, and can put its settings back in the form.
  await page.waitForSelector(".gallery .entry img");
  assert.equal(await page.locator(".gallery .entry .inputs img").count(), 2, "photo and painting");
  await page.fill("#size", "128");
  await page.click(".gallery .entry button:has-text('Reuse')");
  assert.equal(await page.inputValue("#size"), "64");
  assert.equal(await page.inputValue("#iters"), "10");

  // A text file as the photo: the server's error appears on the page.
  await page.setInputFiles("#content-input", notImage);
  await page.click("#start");
  await page.waitForSelector("#message:not([hidden])");
  const message = await page.textContent("#message");
  assert.match(message, /not a PNG, JPEG or WebP image/);
  await page.screenshot({ path: join(outDir, "3-error.png"), fullPage: true });

  assert.deepEqual(errors, [], "no script errors on the page");
  console.log(`ok: ${updates} preview updates, downloaded ${png.length} bytes, error shown: ${message}`);
} finally {
  await browser.close();
}
