// End-to-end test of the web pages in headless Chromium.
//
//   node e2e/web.spec.mjs BASE_URL DEMO_JSON CSV_FILE OUT_DIR SHOT_DIR
//
// Driven by internal/web/e2e_test.go, which starts a demo node, writes the
// CSV file, and afterwards checks what this script leaves in OUT_DIR (the
// QR image it saw, decoded on the Go side). Exits non-zero on the first
// failed expectation, printing what was expected and what was seen.
// Steps: landing, wrong PIN, resident code, gate (accepted, replayed),
// disputes (resident disputes two fares, finance refunds one and rejects
// the other, the resident sees both outcomes), card lost, audited reveal,
// CSV enrolment, ledger check and dashboard, subsidy programme and payout
// list (twice), scenario rules, provider and terminal onboarding.
import { chromium } from 'playwright-core';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [base, demoPath, csvPath, outDir, shotDir] = process.argv.slice(2);
if (!base || !demoPath || !csvPath || !outDir || !shotDir) {
  console.error('usage: node web.spec.mjs BASE_URL DEMO_JSON CSV_FILE OUT_DIR SHOT_DIR');
  process.exit(2);
}
const demo = JSON.parse(readFileSync(demoPath, 'utf8'));
mkdirSync(shotDir, { recursive: true });

let step = '';
const t0 = Date.now();
function mark(name) {
  console.log(`${((Date.now() - t0) / 1000).toFixed(1)}s: ${name}`);
  step = name;
}
function expect(cond, what, seen) {
  if (!cond) {
    throw new Error(`[${step}] expected ${what}; saw: ${typeof seen === 'string' ? seen : JSON.stringify(seen)}`);
  }
}
async function text(page, sel) {
  return (await page.locator(sel).first().textContent({ timeout: 10000 })) || '';
}
async function shot(page, name) {
  await page.screenshot({ path: join(shotDir, name + '.png'), fullPage: true });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const phone = { viewport: { width: 400, height: 860 }, deviceScaleFactor: 1 };
const desk = { viewport: { width: 1200, height: 900 } };

async function staffLogin(role) {
  const ctx = await browser.newContext(desk);
  const page = await ctx.newPage();
  page.on('dialog', (d) => d.accept());
  const s = demo.staff[role];
  await page.goto(base + '/console/login');
  await page.fill('#user', s.user);
  await page.fill('#password', s.password);
  await Promise.all([page.waitForURL(/\/console\/$/), page.click('#login-btn')]);
  return { ctx, page };
}

async function gateScan(page, terminalKey, opts) {
  await page.goto(base + '/gate');
  await page.selectOption('#terminal', terminalKey);
  if (opts.photo) await page.setInputFiles('#photo', opts.photo);
  if (opts.code) await page.fill('#code', opts.code);
  if (opts.card) await page.fill('#gate-card', opts.card);
  await Promise.all([page.waitForLoadState('load'), page.click('#scan-btn')]);
  await page.waitForSelector('#decision, #error', { timeout: 15000 });
  if (await page.locator('#error').count()) return { decision: 'error', reason: await text(page, '#error') };
  const d = page.locator('#decision');
  return { decision: await d.getAttribute('data-decision'), reason: await d.getAttribute('data-reason') };
}

try {
  // Residents: the first of each category.
  const local = demo.residents.find((r) => r.category === 'local');
  const foreign = demo.residents.find((r) => r.category === 'permanent_resident') || demo.residents[1];

  // 1. Landing page, Chinese by default, English one tap away.
  mark('landing');
  const anon = await browser.newContext(desk);
  const ap = await anon.newPage();
  await ap.goto(base + '/');
  expect((await ap.locator('html').getAttribute('lang')) === 'zh-CN', 'a Chinese page by default', await ap.locator('html').getAttribute('lang'));
  await shot(ap, 'landing');

  // 2. Wrong PIN: plain words, tries left; then English.
  mark('wrong PIN');
  const wctx = await browser.newContext(phone);
  const wp = await wctx.newPage();
  await wp.goto(base + '/r/login');
  await wp.fill('#card_number', foreign.card_number);
  const wrong = foreign.pin === '135790' ? '135791' : '135790';
  await wp.fill('#pin', wrong);
  await wp.click('#login-btn');
  let err = await text(wp, '#error');
  expect(/5/.test(err) && /锁定/.test(err), 'a Chinese message counting the tries left before lock-out', err);
  await wp.click('#lang-switch');
  await wp.fill('#card_number', foreign.card_number);
  await wp.fill('#pin', wrong);
  await wp.click('#login-btn');
  err = await text(wp, '#error');
  expect(/4 tries left/.test(err), 'an English message: 4 tries left', err);
  await shot(wp, 'resident-wrong-pin-en');

  // 3. Resident signs in and sees a live QR code.
  mark('resident sign-in');
  const rctx = await browser.newContext(phone);
  const rp = await rctx.newPage();
  await rp.goto(base + '/r/');
  expect(/\/r\/login/.test(rp.url()), 'a redirect to sign-in', rp.url());
  await rp.fill('#card_number', local.card_number);
  await rp.fill('#pin', local.pin);
  await Promise.all([rp.waitForURL(/\/r\/$/), rp.click('#login-btn')]);
  await rp.waitForSelector('#qr');
  const code1 = (await rp.inputValue('#code-text')).trim();
  expect(code1.startsWith('YK1:'), 'a YK1 code under the QR', code1);
  const src = await rp.getAttribute('#qr', 'src');
  expect(src.startsWith('data:image/png;base64,'), 'a PNG QR image', src.slice(0, 40));
  const png = Buffer.from(src.split(',')[1], 'base64');
  writeFileSync(join(outDir, 'qr.png'), png);
  writeFileSync(join(outDir, 'code.txt'), code1);
  const secs = Number(await text(rp, '#countdown'));
  expect(secs > 30 && secs <= 60, 'a countdown of up to 60 s', secs);
  await shot(rp, 'resident-code');
  // The renewal endpoint the countdown uses gives a new, different code.
  const renewed = await rp.evaluate(async () => (await (await fetch('/r/code.json')).json()));
  expect(renewed.code && renewed.code !== code1, 'a fresh code from /r/code.json', renewed);
  await rp.goto(base + '/r/statement');
  await shot(rp, 'resident-statement');
  // Elderly-friendly mode, one tap.
  await rp.goto(base + '/r/');
  await rp.click('#mode-switch');
  await rp.waitForSelector('body.big');
  await shot(rp, 'resident-elderly-mode');
  await rp.click('#mode-switch');

  // 4. Gate: the photo of the QR is decoded on the server and accepted;
  //    the same code again is refused as replayed.
  mark('gate');
  const term = demo.terminals.find((t) => /transit/.test(t.scenario)) || demo.terminals[0];
  expect(term, 'a demo terminal', demo.terminals);
  const key = term.id + '/' + term.scenario;
  const gp = await (await browser.newContext(desk)).newPage();
  let r = await gateScan(gp, key, { photo: join(outDir, 'qr.png') });
  expect(r.decision === 'accepted', 'the QR photo accepted at ' + key, r);
  await shot(gp, 'gate-accepted');
  r = await gateScan(gp, key, { code: code1 });
  expect(r.decision === 'declined' && r.reason === 'replayed', 'the second scan declined as replayed', r);
  await shot(gp, 'gate-replayed');

  // 5. A resident may not open staff pages.
  mark('resident on a staff URL');
  const resp = await rp.goto(base + '/console/residents');
  expect(resp.status() === 403, 'HTTP 403 for a resident on /console/residents', resp.status());
  expect(/仅限工作人员|staff only/.test(await text(rp, '#error-text')), 'a plain explanation', await text(rp, '#error-text'));

  // 5b. Disputes: a resident disputes two bus fares from the statement;
  //     finance refunds one (a ledger reversal) and rejects the other with
  //     a reason the resident then sees.
  mark('disputes');
  const payer = demo.residents.find((x) => x.category === 'insured_nonlocal') || demo.residents[1];
  for (let i = 0; i < 2; i++) {
    r = await gateScan(gp, key, { card: payer.card_number });
    expect(r.decision === 'accepted', 'a bus fare charged to card ' + payer.card_number, r);
  }
  const dctx = await browser.newContext(phone);
  const dp = await dctx.newPage();
  await dp.goto(base + '/r/login');
  await dp.fill('#card_number', payer.card_number);
  await dp.fill('#pin', payer.pin);
  await Promise.all([dp.waitForURL(/\/r\/$/), dp.click('#login-btn')]);
    for (const why of ['我那天没有坐公交', 'charged twice for one ride']) {
    await dp.goto(base + '/r/statement');
    const d = dp.locator('#statement details').first();
    await d.locator('summary').click();
    await d.locator('input[name=reason]').fill(why);
    await Promise.all([dp.waitForURL(/m=disputed/), d.locator('button').click()]);
  }
  let dl = await dp.locator('#disputes li').count();
  expect(dl === 2, 'two open disputes on the resident page', dl);
  const fin0 = await staffLogin('finance');
  await fin0.page.goto(base + '/console/disputes');
  await shot(fin0.page, 'console-disputes');
  let card = fin0.page.locator('.dispute').first();
  await card.locator('form[action$="/refund"] input[name=note]').fill('核实无误，全额退款');
  await Promise.all([fin0.page.waitForURL(/m=refunded/), card.locator('form[action$="/refund"] button').click()]);
  card = fin0.page.locator('.dispute').first();
  const rejectWhy = '经核查刷卡记录，两次乘车均属实';
  await card.locator('form[action$="/reject"] input[name=reason]').fill(rejectWhy);
  await Promise.all([fin0.page.waitForURL(/m=rejected/), card.locator('form[action$="/reject"] button').click()]);
  expect((await fin0.page.locator('.dispute').count()) === 0, 'no open disputes left', await fin0.page.locator('.dispute').count());
  await dp.goto(base + '/r/disputes');
  const dtext = await text(dp, '#disputes');
  expect(/已退款|refunded/.test(dtext) && /已驳回|rejected/.test(dtext) && dtext.includes(rejectWhy), 'the refund and the rejection reason on the resident page', dtext);
  await shot(dp, 'resident-disputes');
  await dp.goto(base + '/r/statement');
  const stmt = await text(dp, '#statement');
  expect(/冲正退款|refund/.test(stmt), 'the refund on the statement', stmt);
  await dctx.close();
  await fin0.ctx.close();

  // 6. Staff report the card lost; the resident's next code is refused.
  mark('staff reports lost');
  await rp.goto(base + '/r/');
  const code2 = (await rp.inputValue('#code-text')).trim();
  const hr = await staffLogin('hr_admin');
  await shot(hr.page, 'console-home');
  await hr.page.goto(base + '/console/residents');
  await hr.page.fill('#q', local.card_number);
  await hr.page.click('#search-btn');
  await hr.page.waitForSelector('#results');
  const masked = await text(hr.page, '#results td code');
  expect(masked.includes('*') && !masked.includes(local.id_number), 'a masked ID number in the results', masked);
  await hr.page.click('.open-resident');
  await hr.page.waitForSelector('#op-lost');
  await shot(hr.page, 'console-resident');
  await Promise.all([hr.page.waitForURL(/m=card_lost/), hr.page.click('#op-lost')]);
  const st = await text(hr.page, '#status-' + local.card_number);
  expect(/挂失|lost/.test(st), 'the card shown as lost', st);
  r = await gateScan(gp, key, { code: code2 });
  expect(r.decision === "declined" && ["revoked", "card_not_active"].includes(r.reason), 'the code made before the loss declined as revoked', r);
  const after = await rp.evaluate(async () => { const x = await fetch('/r/code.json'); return x.status; });
  expect(after === 401, 'no new code for the lost card (session ended)', after);
  await rp.goto(base + '/r/');
  expect(/\/r\/login\?m=(expired|signin)/.test(rp.url()), 'the resident sent to sign-in', rp.url());

  // 7. Reveal the full ID number: an audited action.
  mark('reveal');
  await hr.page.click('#reveal');
  await hr.page.waitForSelector('#id-full');
  expect((await text(hr.page, '#id-full')) === local.id_number, 'the full ID number after reveal', await text(hr.page, '#id-full'));
  await hr.page.goto(base + '/console/audit');
  expect(/reveal_id_number/.test(await text(hr.page, '#audit')), 'the reveal in the audit log', '');
  await shot(hr.page, 'console-audit');

  // 8. CSV enrolment with bad rows; the second upload applies nothing twice.
  mark('csv');
  const upload = async () => {
    await hr.page.goto(base + '/console/enrol/csv');
    await hr.page.setInputFiles('#csv-file', csvPath);
    await Promise.all([hr.page.waitForURL(/\/console\/enrol\/jobs\//), hr.page.click('#csv-upload')]);
    await hr.page.waitForSelector('#job-finished', { timeout: 30000 });
    return {
      enrolled: Number(await text(hr.page, '#job-enrolled')),
      exists: Number(await text(hr.page, '#job-exists')),
      errors: Number(await text(hr.page, '#job-errors')),
    };
  };
  let c = await upload();
  expect(c.enrolled === 3 && c.errors === 3 && c.exists === 0, '3 enrolled, 3 errors', c);
  const rows = await hr.page.locator('#job-rows tr.row-error').count();
  expect(rows === 3, 'three error rows listed', rows);
  await shot(hr.page, 'console-csv-report');
  c = await upload();
  expect(c.enrolled === 0 && c.exists === 3 && c.errors === 3, 'nothing applied twice on re-upload', c);
  // HTML in a name is shown as text, never markup.
  await hr.page.goto(base + '/console/residents');
  const evil = readFileSync(csvPath, 'utf8').split('\n').find((l) => l.includes('<b>'));
  if (evil) {
    await hr.page.fill('#q', evil.split(',')[1]);
    await hr.page.click('#search-btn');
    await hr.page.click('.open-resident');
    const nm = await hr.page.innerHTML('#res-name');
    expect(nm.includes('&lt;b&gt;'), 'the HTML in a name escaped', nm);
  }

  // 9. Finance: ledger check, dashboard with charts.
  mark('finance');
  const fin = await staffLogin('finance');
  await fin.page.goto(base + '/console/ledger?check=1');
  const chk = await text(fin.page, '#check-result');
  expect(/平衡|balance/.test(chk), 'the books balance', chk);
  await shot(fin.page, 'console-ledger');
  await fin.page.goto(base + '/console/dashboard');
  await fin.page.waitForSelector('#chart-takings');
  const charts = await fin.page.evaluate(async () => Promise.all([...document.querySelectorAll('.charts img')].map(async (i) => {
    const x = await fetch(i.src);
    const body = await x.text();
    return { src: i.src, status: x.status, type: x.headers.get('content-type'), svg: body.startsWith('<svg') };
  })));
  expect(charts.length === 5 && charts.every((c) => c.status === 200 && c.svg), 'five SVG charts', charts);
  await fin.page.waitForLoadState('networkidle');
  await shot(fin.page, 'console-dashboard');
  const denied = await fin.page.goto(base + '/console/residents');
  expect(denied.status() === 403, 'finance refused the residents page', denied.status());

  // 10. Subsidies: finance creates and funds a programme; hr_admin pays a
  //     list (one bad line); the same list again pays nothing twice.
  mark('subsidies');
  await fin.page.goto(base + '/console/subsidies');
  await fin.page.fill('#prog-id', 'winter-heating');
  await fin.page.fill('#prog-label', '冬季取暖补贴');
  await Promise.all([fin.page.waitForURL(/m=programme_created/), fin.page.click('#prog-create')]);
  await fin.page.fill('#prog-winter-heating .fund-amount', '10000');
  await Promise.all([fin.page.waitForURL(/m=funded/), fin.page.click('#prog-winter-heating .fund-btn')]);
  expect((await text(fin.page, '#prog-winter-heating .balance')).includes("10,000.00"), 'the programme funded', await text(fin.page, '#prog-winter-heating .balance'));
  await shot(fin.page, 'console-subsidies');
  const listPath = join(outDir, 'payouts.csv');
  writeFileSync(listPath, 'id_or_card,amount_fen,reference\n' + foreign.card_number + ',30000,WH-0001\n' + payer.card_number + ',30000,WH-0002\n' + 'NOBODY,30000,WH-0003\n' + payer.card_number + ',lots,WH-0004\n');
  const payUpload = async () => {
    await hr.page.goto(base + '/console/subsidies');
    await hr.page.selectOption('#pay-programme', 'winter-heating');
    await hr.page.setInputFiles('#pay-file', listPath);
    await Promise.all([hr.page.waitForURL(/\/console\/subsidies\/jobs\//), hr.page.click('#pay-upload')]);
    await hr.page.waitForSelector('#job-finished', { timeout: 30000 });
    return { paid: Number(await text(hr.page, '#job-paid')), again: Number(await text(hr.page, '#job-already_paid')), refused: Number(await text(hr.page, '#job-refused')) };
  };
  let pc = await payUpload();
  expect(pc.paid === 2 && pc.refused === 2 && pc.again === 0, '2 paid, 2 refused', pc);
  const rep = await text(hr.page, '#job-rows');
  expect(!rep.includes(payer.card_number) && /查无此人|no such person/.test(rep), 'masked people and plain reasons', rep);
  await shot(hr.page, 'console-payout-report');
  pc = await payUpload();
  expect(pc.paid === 0 && pc.again === 2, 'nothing paid twice on re-upload', pc);

  // 11. Scenario rules: hr_admin changes the bus fare; a bad concession is
  //     explained in plain words.
  mark('scenario');
  await hr.page.goto(base + '/console/scenarios/transit.bus');
  await hr.page.fill('#c0-pay', '150');
  await hr.page.click('#scenario-save');
  const serr = await text(hr.page, '#error');
  expect(/优惠 1 · 付费比例|Concessions 1 · pay percent/.test(serr), 'the bad field named in plain words', serr);
  await shot(hr.page, 'console-scenario-error');
  await hr.page.goto(base + '/console/scenarios/transit.bus');
  await hr.page.fill('#s-fare', '2.00');
  await Promise.all([hr.page.waitForURL(/m=scenario_saved/), hr.page.click('#scenario-save')]);
  await shot(hr.page, 'console-scenario');

  // 12. Operator onboards a provider and a terminal; the token is shown once.
  mark('terminals');
  const op = await staffLogin('operator');
  await op.page.goto(base + '/console/terminals');
  await op.page.fill('#p-name', '郑州共享单车 Test Bikes');
  await op.page.selectOption('#p-kind', 'transit');
  await op.page.check('input[name=scenario][value="transit.bus"]');
  await Promise.all([op.page.waitForURL(/m=provider_created/), op.page.click('#p-create')]);
  await op.page.selectOption('#t-provider', { label: '郑州共享单车 Test Bikes' });
  await op.page.fill('#t-name', '1号站点闸机');
  await op.page.click('#t-create');
  await op.page.waitForSelector('#new-terminal');
  const tok = (await op.page.inputValue('#new-terminal-token')).trim();
  expect(tok.length > 20, 'a bearer token shown once', tok);
  await shot(op.page, 'console-terminal-created');
  await op.page.goto(base + '/console/terminals');
  expect(!(await op.page.content()).includes(tok), 'the token not shown again', '');
  await fin.page.goto(base + '/console/dashboard');
  await fin.page.waitForLoadState('networkidle');
  const dash = await fin.page.content();
  expect(dash.includes('郑州公交集团') && dash.includes('冬季取暖补贴'), 'provider and programme names on the dashboard', '');
  await shot(fin.page, 'console-dashboard');

  console.log('e2e: all steps passed');
  await browser.close();
} catch (e) {
  let i = 0;
  for (const c of browser.contexts()) {
    for (const pg of c.pages()) {
      i++;
      try { await pg.screenshot({ path: join(outDir, `failure-${i}.png`) }); console.error(`page ${i}: ${pg.url()} -> ${join(outDir, `failure-${i}.png`)}`); } catch (_) { /* closed */ }
    }
  }
  console.error('e2e FAILED at step "' + step + '": ' + e.message);
  await browser.close();
  process.exit(1);
}
