// check.mjs — drives modelgate's status page (GET /ui) in Debian's headless
// Chromium through playwright-core (no browser download).
//
//   node check.mjs BASE SERVER_ID SCREENSHOT_PATH CONTROL_URL [ADMIN_TOKEN]
//
// Opens BASE/ui at 1280x800, enters ADMIN_TOKEN when the page asks for it,
// waits until SERVER_ID is shown healthy and prints "seen healthy", then
// switches that server's mock-model-server to failing (POST
// CONTROL_URL/control {"mode":"http_500"}), waits until the page shows the
// server unhealthy (or inactive) with an `unhealthy` event, takes a full-page
// screenshot to SCREENSHOT_PATH, checks the narrow (phone) layout, and exits 0.
// Every wait polls the DOM under a deadline; any failure exits non-zero with
// one line on stderr saying what was not seen. The page must make no request
// to another origin and throw no script error.
import { chromium } from 'playwright-core';
import { statSync } from 'node:fs';

const CHROMIUM = '/usr/bin/chromium';
const STEP_TIMEOUT_MS = 20_000;   // each thing we wait for
const OVERALL_TIMEOUT_MS = 90_000;

const [base, serverId, screenshotPath, controlUrl, adminToken] = process.argv.slice(2);
if (!base || !serverId || !screenshotPath || !controlUrl) {
  console.error('usage: node check.mjs BASE SERVER_ID SCREENSHOT_PATH CONTROL_URL [ADMIN_TOKEN]');
  process.exit(2);
}

function fail(message) {
  console.error('status page check failed: ' + message);
  process.exitCode = 1;
  throw new Error(message);
}

const watchdog = setTimeout(() => {
  console.error(`status page check failed: still running after ${OVERALL_TIMEOUT_MS / 1000} s`);
  process.exit(1);
}, OVERALL_TIMEOUT_MS);
watchdog.unref();

try {
  statSync(CHROMIUM);
} catch {
  console.error(`status page check failed: ${CHROMIUM} is missing (apt-get install chromium)`);
  process.exit(1);
}

const origin = new URL(base).origin;
const pageErrors = [];
const foreignRequests = [];

let browser;
try {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: STEP_TIMEOUT_MS,
  });
} catch (e) {
  console.error(`status page check failed: cannot start ${CHROMIUM}: ${e.message}`);
  process.exit(1);
}

// Runs in the page: what the server's row shows when that is `want`
// ('healthy'; or 'unhealthy': unhealthy or already retired, with an
// `unhealthy` event listed), else false; with `report`, what it shows anyway.
function readRow({ id, want, report }) {
  const row = [...document.querySelectorAll('tr[data-server-id]')]
    .find((r) => r.getAttribute('data-server-id') === id);
  const conn = document.getElementById('conn');
  if (!row)
    return report ? { found: false, conn: conn ? conn.textContent : '' } : false;
  const s = {
    found: true,
    status: row.getAttribute('data-status'),
    active: row.getAttribute('data-active'),
    events: [...row.querySelectorAll('[data-event]')].map((e) => e.getAttribute('data-event')),
    text: row.innerText.replace(/\s+/g, ' ').trim(),
    conn: conn ? conn.textContent : '',
  };
  const ok = want === 'healthy'
    ? s.status === 'healthy' && s.active === 'true'
    : (s.status === 'unhealthy' || s.active === 'false') && s.events.includes('unhealthy');
  return ok || report ? s : false;
}

// Lets the page poll its DOM every 100 ms until the server's row is `want`;
// fails after the deadline, saying what was last seen.
async function waitForRow(page, want, what) {
  const arg = { id: serverId, want, report: false };
  try {
    const handle = await page.waitForFunction(readRow, arg, { timeout: STEP_TIMEOUT_MS, polling: 100 });
    return await handle.jsonValue();
  } catch (e) {
    const last = await page.evaluate(readRow, { ...arg, report: true }).catch(() => 'unreadable');
    fail(`${what} not seen within ${STEP_TIMEOUT_MS / 1000} s; last seen: ${JSON.stringify(last)}`);
  }
}

try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => {
    // The browser itself logs the 401 that makes the page ask for the token.
    if (m.type() === 'error' && !/status of 401/.test(m.text()))
      pageErrors.push('console: ' + m.text());
  });
  page.on('request', (r) => {
    const url = r.url();
    if (!url.startsWith('data:') && new URL(url).origin !== origin)
      foreignRequests.push(url);
  });

  const response = await page.goto(base + '/ui', { waitUntil: 'domcontentloaded', timeout: STEP_TIMEOUT_MS });
  if (!response || response.status() !== 200)
    fail(`GET ${base}/ui answered ${response ? response.status() : 'nothing'}`);

  if (adminToken) {
    // The page must ask for the token once, and take it.
    await page.locator('#token').waitFor({ state: 'visible', timeout: STEP_TIMEOUT_MS })
      .catch(() => fail('the page did not ask for the admin token'));
    await page.fill('#token', adminToken);
    await page.click('#auth-form button[type=submit]');
    await page.locator('#auth').waitFor({ state: 'hidden', timeout: STEP_TIMEOUT_MS })
      .catch(() => fail('the token form did not go away after entering the token'));
  }

  await waitForRow(page, 'healthy', `server ${serverId} shown healthy`);
  console.log('seen healthy');

  const control = await fetch(controlUrl + '/control', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ mode: 'http_500' }),
    signal: AbortSignal.timeout(5000),
  }).catch((e) => fail(`POST ${controlUrl}/control failed: ${e.message}`));
  if (!control.ok)
    fail(`POST ${controlUrl}/control answered ${control.status}`);

  const seen = await waitForRow(page, 'unhealthy',
                                `server ${serverId} shown unhealthy with an unhealthy event`);
  console.log('seen unhealthy: ' + seen.text);

  if (adminToken) {
    const stored = await page.evaluate(() => sessionStorage.getItem('modelgate.admin_token'));
    if (stored !== adminToken)
      fail('the admin token was not kept in sessionStorage');
  }

  // The whole page, cut below its content (at 1280 px it is shorter than the
  // viewport).
  const bottom = await page.evaluate(() => Math.ceil(document.querySelector('.wrap').getBoundingClientRect().bottom + window.scrollY));
  await page.screenshot({ path: screenshotPath, fullPage: true,
                          clip: { x: 0, y: 0, width: 1280, height: Math.max(200, bottom + 8) } });
  console.log('screenshot ' + screenshotPath);

  // Phone width: cards instead of a table, nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  const narrow = await page.evaluate(() => ({
    headDisplay: getComputedStyle(document.querySelector('#servers thead')).display,
    rowDisplay: getComputedStyle(document.querySelector('#rows tr')).display,
    scrollWidth: document.documentElement.scrollWidth,
  }));
  if (narrow.headDisplay !== 'none' || narrow.rowDisplay !== 'block')
    fail('no card layout at 390 px: ' + JSON.stringify(narrow));
  if (narrow.scrollWidth > 390)
    fail(`the page scrolls sideways at 390 px (${narrow.scrollWidth} px wide)`);
  const narrowPath = screenshotPath.replace(/(\.png)?$/, '-narrow.png');
  await page.screenshot({ path: narrowPath, fullPage: true });
  console.log('screenshot ' + narrowPath);

  if (foreignRequests.length)
    fail('requests to other origins: ' + foreignRequests.join(', '));
  if (pageErrors.length)
    fail('script errors: ' + pageErrors.join(' | '));
  console.log('ok');
} catch (e) {
  if (!process.exitCode) {
    console.error('status page check failed: ' + (e && e.message ? e.message : e));
    process.exitCode = 1;
  }
} finally {
  await browser.close().catch(() => {});
}
