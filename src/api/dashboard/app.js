// flagguard dashboard: overview, flag page, audit timeline, rules, governance, cluster. No dependencies; charts are
// plain SVG. Live updates come from the daemon's Server-Sent Events (/v1/events).

const $main = document.getElementById('main');
const $live = document.getElementById('live');
const state = { overview: null, sort: { key: 'verdict', dir: -1 }, filter: '', auditBefore: null, auditKind: '', lastFlagRefresh: 0 };
const RANK = { breached: 3, inconclusive: 2, no_data: 1, healthy: 0, unguarded: -1 };
const ICON = { breached: '✖', inconclusive: '?', no_data: '–', healthy: '✔', unguarded: '·' };

const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const pct = (x) => (x == null ? '–' : `${(x * 100).toFixed(x < 0.1 ? 2 : 1)}%`);
const time = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });
const badge = (v) => `<span class="badge ${esc(v)}" data-verdict="${esc(v)}">${ICON[v] ?? ''} ${esc(String(v).replace('_', ' '))}</span>`;

async function getJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

function parseRoute() {
  const [path, query] = location.hash.replace(/^#/, '').split('?');
  const decode = (s) => { try { return decodeURIComponent(s); } catch { return s; } };
  const parts = (path || '/').split('/').filter(Boolean).map(decode);
  return { view: parts[0] || 'flags', arg: parts.slice(1).join('/'), params: new URLSearchParams(query || '') };
}

function setNav(view) {
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.nav === (view === 'flag' ? 'flags' : view)) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
}

// ---------------------------------------------------------------- overview
function renderOverview() {
  const o = state.overview;
  if (!o) { $main.innerHTML = '<h1>Flags</h1><p class="muted">Waiting for the first snapshot…</p>'; return; }
  const hadFocus = document.activeElement && document.activeElement.id === 'filter';
  const rows = o.flags.filter((f) => f.flag.toLowerCase().includes(state.filter.toLowerCase()));
  const key = state.sort.key, dir = state.sort.dir;
  const val = (f) => key === 'verdict' ? RANK[f.verdict] ?? -2 : key === 'traffic' ? f.variants.reduce((a, v) => a + v.exposures_1m, 0) : key === 'action' ? (f.last_action?.at ?? '') : f.flag;
  rows.sort((a, b) => (val(a) < val(b) ? -1 : val(a) > val(b) ? 1 : 0) * dir || a.flag.localeCompare(b.flag));
  const th = (k, label) => `<th scope="col" aria-sort="${key === k ? (dir > 0 ? 'ascending' : 'descending') : 'none'}"><button data-sort="${k}">${label}${key === k ? (dir > 0 ? ' ▲' : ' ▼') : ''}</button></th>`;
  const stale = o.stale_rules?.length ? `<p class="error" role="alert">Stale rules (no telemetry for their flag): ${o.stale_rules.map(esc).join(', ')}</p>` : '';
  const rulesError = o.rules_error ? `<p class="error" role="alert">The last rule reload failed; the previous rules stay active. <a href="#/rules">Details</a></p>` : '';
  $main.innerHTML = `<h1>Flags</h1>${stale}${rulesError}
    <div class="toolbar"><label for="filter">Filter</label><input id="filter" type="search" value="${esc(state.filter)}" placeholder="flag key">
    <span class="muted">${rows.length} of ${o.flags.length} flags · ${o.series_count} series</span></div>
    <table id="flags"><thead><tr>${th('flag', 'Flag')}${th('traffic', 'Variants (share of evaluations, last minute)')}${th('verdict', 'Verdict')}<th scope="col">Rules</th>${th('action', 'Last action')}</tr></thead>
    <tbody>${rows.map((f) => `<tr data-flag="${esc(f.flag)}">
      <th scope="row"><a href="#/flag/${encodeURIComponent(f.flag)}">${esc(f.flag)}</a></th>
      <td>${f.variants.map((v) => `<div class="share"><span class="bar ${esc(v.role)}" style="width:${Math.round((v.share ?? 0) * 120)}px"></span>${esc(v.variant)} ${v.role !== 'other' ? `<span class="muted">(${esc(v.role)})</span>` : ''} ${pct(v.share)} <span class="muted">· ${v.requests_1m} requests (all services) · ${pct(v.error_rate_1m)} errors</span></div>`).join('') || '<span class="muted">no telemetry</span>'}</td>
      <td>${badge(f.verdict)}</td>
      <td>${f.rules.map(esc).join('<br>') || '<span class="muted">none</span>'}</td>
      <td>${f.last_action ? `${esc(f.last_action.kind.replace('_', ' '))}<br><span class="muted">${esc(f.last_action.at)}</span>` : '<span class="muted">none</span>'}</td></tr>`).join('')}</tbody></table>`;
  const input = document.getElementById('filter');
  input.addEventListener('input', () => { state.filter = input.value; renderOverview(); });
  if (hadFocus) { input.focus(); input.setSelectionRange(input.value.length, input.value.length); }
  for (const b of $main.querySelectorAll('button[data-sort]')) b.addEventListener('click', () => {
    state.sort = { key: b.dataset.sort, dir: state.sort.key === b.dataset.sort ? -state.sort.dir : (b.dataset.sort === 'flag' ? 1 : -1) };
    renderOverview();
    $main.querySelector(`button[data-sort="${b.dataset.sort}"]`)?.focus();
  });
}

// ---------------------------------------------------------------- charts
const W = 560, H = 220, PAD = { l: 52, r: 12, t: 10, b: 26 };
function niceMax(v) { if (!(v > 0)) return 1; const p = 10 ** Math.floor(Math.log10(v)); return Math.ceil(v / p * 1.15) * p; }
// series: [{ name, role, points: [[tMs, value|null]] }]; thresholds: [{ value, label }]; markers: [{ t, label, kind }]
function chart({ label, series, thresholds = [], markers = [], from, to, fmt }) {
  const values = series.flatMap((s) => s.points.map((p) => p[1]).filter((v) => v != null)).concat(thresholds.map((t) => t.value));
  const ymax = niceMax(Math.max(0, ...values));
  const x = (t) => PAD.l + (t - from) / Math.max(1, to - from) * (W - PAD.l - PAD.r);
  const y = (v) => H - PAD.b - v / ymax * (H - PAD.t - PAD.b);
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => f * ymax);
  let svg = `<svg viewBox="0 0 ${W} ${H}" width="100%" role="img" aria-label="${esc(label)}"><title>${esc(label)}</title>`;
  for (const v of ticks) svg += `<line class="grid" x1="${PAD.l}" x2="${W - PAD.r}" y1="${y(v)}" y2="${y(v)}"/><text x="${PAD.l - 6}" y="${y(v) + 4}" text-anchor="end">${esc(fmt(v))}</text>`;
  for (let i = 0; i <= 4; i++) { const t = from + (to - from) * i / 4; svg += `<text x="${x(t)}" y="${H - 8}" text-anchor="${i === 0 ? 'start' : i === 4 ? 'end' : 'middle'}">${time(t)}</text>`; }
  svg += `<line class="axis" x1="${PAD.l}" x2="${PAD.l}" y1="${PAD.t}" y2="${H - PAD.b}"/><line class="axis" x1="${PAD.l}" x2="${W - PAD.r}" y1="${H - PAD.b}" y2="${H - PAD.b}"/>`;
  for (const th of thresholds) svg += `<line class="threshold" x1="${PAD.l}" x2="${W - PAD.r}" y1="${y(th.value)}" y2="${y(th.value)}"><title>${esc(th.label)}</title></line><text x="${W - PAD.r - 2}" y="${y(th.value) - 4}" text-anchor="end">${esc(th.label)}</text>`;
  markers.filter((m) => m.t >= from && m.t <= to).forEach((m, i) => {
    const right = x(m.t) > W * 0.7;
    svg += `<line class="marker-${m.kind}" data-marker="${esc(m.kind)}" x1="${x(m.t)}" x2="${x(m.t)}" y1="${PAD.t}" y2="${H - PAD.b}"><title>${esc(m.label)} at ${time(m.t)}</title></line>`;
    if (m.short) svg += `<text x="${x(m.t) + (right ? -4 : 4)}" y="${PAD.t + 10 + (i % 3) * 12}" text-anchor="${right ? 'end' : 'start'}" class="marker-label">${esc(m.short)}</text>`;
  });
  for (const s of series) {
    const pts = s.points.filter((p) => p[1] != null);
    if (!pts.length) continue;
    const style = STYLE[s.role];
    svg += `<polyline data-series="${esc(s.name)}" fill="none" stroke="${style.color}" stroke-width="2" stroke-dasharray="${style.dash}" points="${pts.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(' ')}"/>`;
    for (const p of pts) svg += shape(style.shape, x(p[0]), y(p[1]), style.color, `${s.name}: ${fmt(p[1])} at ${time(p[0])}`);
  }
  return svg + '</svg>';
}
const STYLE = { treatment: { color: 'var(--treatment)', dash: '', shape: 'circle' }, control: { color: 'var(--control)', dash: '7 4', shape: 'square' }, other: { color: 'var(--other)', dash: '2 3', shape: 'diamond' } };
function shape(kind, x, y, color, title) {
  const t = `<title>${esc(title)}</title>`;
  if (kind === 'circle') return `<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="2.6" fill="${color}">${t}</circle>`;
  if (kind === 'square') return `<rect x="${(x - 2.5).toFixed(1)}" y="${(y - 2.5).toFixed(1)}" width="5" height="5" fill="#fff" stroke="${color}" stroke-width="1.5">${t}</rect>`;
  return `<path d="M${x.toFixed(1)} ${(y - 3).toFixed(1)} l3 3 l-3 3 l-3 -3z" fill="${color}">${t}</path>`;
}
function legend(variants, roles) {
  return `<div class="legend">${variants.map((v) => { const s = STYLE[roles[v]]; return `<span><svg width="34" height="10" aria-hidden="true"><line x1="0" x2="34" y1="5" y2="5" stroke="${s.color}" stroke-width="2" stroke-dasharray="${s.dash}"/>${shape(s.shape, 17, 5, s.color, '')}</svg> ${esc(v)} (${roles[v]})</span>`; }).join('')}</div>`;
}

// ---------------------------------------------------------------- flag page
async function renderFlag(flag, params) {
  const q = new URLSearchParams();
  for (const k of ['service', 'environment', 'region']) if (params.get(k)) q.set(k, params.get(k));
  q.set('seconds', params.get('seconds') || '900');
  let data;
  try { data = await getJSON(`/v1/flags/${encodeURIComponent(flag)}/history?${q}`); } catch (e) { $main.innerHTML = `<p class="error">${esc(e.message)}</p>`; return; }
  if (parseRoute().arg !== flag) return;
  const h = data.history, rules = data.rules;
  const treatment = new Set(rules.flatMap((r) => r.treatment)), control = new Set(rules.map((r) => r.control).filter(Boolean));
  const variants = Object.keys(h.variants);
  const roles = Object.fromEntries(variants.map((v) => [v, treatment.has(v) ? 'treatment' : control.has(v) ? 'control' : 'other']));
  if (!params.get('service') && rules.length && rules[0].service && !params.has('all')) { params.set('service', rules[0].service); location.replace(`#/flag/${encodeURIComponent(flag)}?${params}`); return; }
  const series = (f) => variants.map((v) => ({ name: v, role: roles[v], points: h.variants[v].map((p) => [p.t + p.width_s * 500, f(p)]) }));
  const actions = (await getJSON('/v1/audit?limit=200')).audit.filter((a) => (a.target || '').split('|')[1] === flag && /^kill_(decided|confirmed|escalated|dry_run)$|^incident$/.test(a.kind));
  const markers = data.transitions.map((t) => ({ t: t.at, kind: 'verdict', label: `${t.rule} ${t.slice}: ${t.from} → ${t.to}`, short: t.to === 'breached' ? 'breached' : '' }))
    .concat(actions.map((a) => ({ t: Date.parse(a.at), kind: 'action', label: a.kind.replace('_', ' '), short: a.kind === 'kill_confirmed' || a.kind === 'kill_sent' ? '✖ killed' : a.kind === 'kill_drained' ? '✔ drained' : a.kind === 'kill_decided' ? '' : a.kind.replace('_', ' ') })));
  const errT = rules.flatMap((r) => r.conditions.filter((c) => c.kind === 'error_rate').map((c) => ({ value: c.above * 100, label: `${r.name}: > ${c.above * 100}%` })));
  const latT = rules.flatMap((r) => r.conditions.filter((c) => c.kind === 'latency').map((c) => ({ value: c.above_ms, label: `${r.name}: p${c.quantile * 100} > ${c.above_ms} ms` })));
  const opt = (name, values) => `<label>${name} <select data-slice="${name}"><option value="">all</option>${[...values].map((v) => `<option ${params.get(name) === v ? 'selected' : ''}>${esc(v)}</option>`).join('')}</select></label>`;
  // Zoom to the data: at least the last 2 minutes, at most the chosen span.
  const first = Math.min(...variants.flatMap((v) => h.variants[v].map((p) => p.t)), h.to);
  const common = { from: Math.max(h.from, Math.min(first, h.to - 120000) - 10000), to: h.to + 5000, markers };
  const judged = params.get('service') ? `requests of ${esc(params.get('service'))}` : 'requests of every service in the exposed traces';
  $main.innerHTML = `<p><a href="#/">← all flags</a></p><h1>${esc(flag)} ${badge(worst(data.verdicts))}</h1>
    <div class="toolbar" id="slice">${opt('service', h.services)}${opt('environment', h.environments)}${opt('region', h.regions)}
      <label>span <select data-slice="seconds">${[[300, '5 min'], [900, '15 min'], [3600, '1 h'], [21600, '6 h']].map(([s, l]) => `<option value="${s}" ${String(s) === q.get('seconds') ? 'selected' : ''}>${l}</option>`).join('')}</select></label></div>
    ${legend(variants, roles)}
    <div class="charts">
      <figure id="chart-errors"><figcaption>Error rate (${judged})</figcaption>${chart({ ...common, label: `Error rate of ${flag} by variant`, series: series((p) => p.error_rate == null ? null : p.error_rate * 100), thresholds: errT, fmt: (v) => `${+v.toFixed(2)}%` })}</figure>
      <figure id="chart-latency"><figcaption>Latency p95 (ms)</figcaption>${chart({ ...common, label: `p95 latency of ${flag} by variant`, series: series((p) => p.p95_ms), thresholds: latT.filter((t) => t.label.includes('p95')), fmt: (v) => `${+v.toFixed(1)}` })}</figure>
      <figure id="chart-latency-tail"><figcaption>Latency p50 / p99 (ms)</figcaption>${chart({ ...common, label: `p50 and p99 latency of ${flag}`, series: series((p) => p.p99_ms).map((s) => ({ ...s, name: `${s.name} p99` })).concat(series((p) => p.p50_ms).map((s) => ({ ...s, name: `${s.name} p50`, role: 'other' }))), thresholds: latT.filter((t) => !t.label.includes('p95')), fmt: (v) => `${+v.toFixed(1)}` })}</figure>
      <figure id="chart-exposures"><figcaption>Evaluations per second (a kill drains here)</figcaption>${chart({ ...common, label: `Evaluations of ${flag} per second by variant`, series: series((p) => p.exposures / p.elapsed_s), fmt: (v) => `${+v.toFixed(1)}/s` })}</figure>
    </div>
    <h2>Why: the current decision records</h2>${data.verdicts.map(record).join('') || '<p class="muted">No rule guards this flag.</p>'}`;
  for (const s of $main.querySelectorAll('select[data-slice]')) s.addEventListener('change', () => {
    const p = new URLSearchParams(params); if (s.value) p.set(s.dataset.slice, s.value); else { p.delete(s.dataset.slice); if (s.dataset.slice === 'service') p.set('all', '1'); }
    location.hash = `#/flag/${encodeURIComponent(flag)}?${p}`;
  });
  state.lastFlagRefresh = Date.now();
}
function worst(verdicts) { return verdicts.map((v) => v.verdict).sort((a, b) => RANK[b] - RANK[a])[0] || 'unguarded'; }
function record(v) {
  const e = v.evidence || {}, t = e.treatment?.stats || {}, b = e.baseline?.stats;
  const conds = (e.conditions || []).map((c) => `${c.condition}: observed ${c.condition.startsWith('error') ? pct(c.observed) : `${c.observed?.toFixed?.(1) ?? '–'} ms`}${c.breached ? ' — breached' : ''}${c.baseline_breached ? ' (baseline too)' : ''}`);
  const base = b ? `; the ${e.baseline.kind === 'control' ? `control arm ${esc(e.baseline.variant)}` : 'unflagged traffic'} had ${b.requests} requests at ${pct(b.error_rate)} errors` : '';
  return `<div class="card" data-rule="${esc(v.rule)}"><p>${badge(v.verdict)} <strong>${esc(v.rule)}</strong>${v.slice ? ` · ${esc(v.slice)}` : ''} · ${esc(v.mode)} · since ${esc(v.since)}</p>
    <p>Over the last ${esc(e.window)} the treatment (${esc((e.treatment?.variants || []).join(', '))}) had ${t.requests ?? 0} requests at ${pct(t.error_rate)} errors, p95 ${t.p95_ms?.toFixed?.(1) ?? '–'} ms${base}. ${v.reason ? esc(v.reason) + '.' : ''} It needs ${esc(e.min_samples)} samples.</p>
    <ul>${conds.map((c) => `<li>${esc(c)}</li>`).join('')}</ul>
    <details><summary>Decision record (JSON)</summary><pre>${esc(JSON.stringify(e, null, 2))}</pre></details></div>`;
}

// ---------------------------------------------------------------- audit and rules
async function renderAudit(params) {
  const kind = params.get('kind') || '';
  const before = params.get('before');
  const data = await getJSON(`/v1/audit?limit=100${kind ? `&kind=${encodeURIComponent(kind)}` : ''}${before ? `&before=${encodeURIComponent(before)}` : ''}`);
  const kinds = ['', 'kill_decided', 'kill_confirmed', 'kill_sent', 'kill_drained', 'kill_recovered', 'kill_failed', 'kill_escalated', 'kill_overridden', 'kill_restored', 'kill_dry_run', 'rollout_confirmed', 'incident', 'alert_received', 'rules_reloaded', 'rule_stale', 'started'];
  $main.innerHTML = `<h1>Audit timeline</h1><div class="toolbar"><label for="kind">Kind</label><select id="kind">${kinds.map((k) => `<option value="${k}" ${k === kind ? 'selected' : ''}>${k || 'all'}</option>`).join('')}</select></div>
    <table id="audit"><thead><tr><th scope="col">Time</th><th scope="col">What</th><th scope="col">Who</th><th scope="col">Target</th><th scope="col">Evidence</th></tr></thead><tbody>
    ${data.audit.map((a) => `<tr data-kind="${esc(a.kind)}"><td>${esc(a.at)}</td><td>${esc(a.kind)}${a.action_id ? ` <span class="muted">#${a.action_id}</span>` : ''}</td><td>${esc(a.actor)}</td><td>${esc(a.target || a.rule || '')}</td>
      <td>${a.evidence || a.after || a.before ? `<details><summary>show</summary><pre>${esc(JSON.stringify({ before: a.before, after: a.after, evidence: a.evidence }, null, 2))}</pre></details>` : ''}</td></tr>`).join('')}</tbody></table>
    ${data.next_before && data.audit.length === 100 ? `<p><a class="btn" href="#/audit?${new URLSearchParams({ kind, before: data.next_before })}">Older →</a></p>` : ''}`;
  document.getElementById('kind').addEventListener('change', (e) => { location.hash = `#/audit?${new URLSearchParams(e.target.value ? { kind: e.target.value } : {})}`; });
}

async function renderRules() {
  const { rules, stale_rules } = await getJSON('/v1/rules');
  $main.innerHTML = `<h1>Rules</h1><p class="muted">Loaded ${esc(rules.loaded_at)} from ${rules.files.map(esc).join(', ') || 'no files'}.</p>
    ${rules.last_error ? `<div class="card error" role="alert"><strong>The last reload failed; the previous rules stay active:</strong><ul>${rules.last_error.map((e) => `<li>${esc(e)}</li>`).join('')}</ul></div>` : ''}
    <table id="rules"><thead><tr><th scope="col">Rule</th><th scope="col">Flag</th><th scope="col">Arms</th><th scope="col">Conditions</th><th scope="col">Window</th><th scope="col">State</th><th scope="col">Action</th></tr></thead><tbody>
    ${rules.rules.map((r) => `<tr><th scope="row">${esc(r.name)}<br><span class="muted">${esc(r.file)}:${r.line ?? ''}</span></th><td>${esc(r.flag)}</td><td>${esc(r.treatment.join(', '))}${r.control ? ` vs ${esc(r.control)}` : ''}</td>
      <td>${r.conditions.map(esc).join('<br>')}</td><td>${esc(r.window)}, ≥ ${r.min_samples}, for ${esc(r.for)}</td>
      <td>${esc(r.mode === 'enforce' ? 'enforce' : 'dry-run')}${stale_rules.includes(r.name) ? ' · <span class="error">stale</span>' : ''}</td><td>${r.action ? `kill via ${esc(r.action)}` : 'observe'}, cooldown ${esc(r.cooldown)}</td></tr>`).join('')}</tbody></table>`;
}

// ---------------------------------------------------------------- governance
async function renderGovernance() {
  const [approvals, compliance] = await Promise.all([getJSON('/v1/approvals?state=pending'), getJSON('/v1/compliance')]);
  const drift = await fetch('/v1/drift').then((r) => (r.ok ? r.json() : null));
  const owner = (flag) => { const o = drift?.owners?.[flag]; return o ? `${esc(o.team)}${o.contact ? ` <span class="muted">${esc(o.contact)}</span>` : ''}` : '<span class="muted">none</span>'; };
  const pending = approvals.proposals.length === 0 ? '<p id="no-approvals" class="muted">No proposal awaits approval.</p>'
    : `<table id="approvals"><thead><tr><th scope="col">Proposal</th><th scope="col">Change</th><th scope="col">Flag</th><th scope="col">Environment</th><th scope="col">Proposed by</th><th scope="col">Reason</th><th scope="col">Expires</th></tr></thead><tbody>
      ${approvals.proposals.map((p) => `<tr data-proposal="${esc(p.id)}"><th scope="row">${esc(p.id)}</th><td>${esc(p.kind)}${p.kind === 'rollout' ? ` to ${esc(p.request?.percent)} %` : ''}</td><td><a href="#/flag/${encodeURIComponent(p.flag)}">${esc(p.flag)}</a></td>
        <td>${esc(p.environment ?? 'all')}</td><td>${esc(p.proposer)}</td><td>${esc(p.reason ?? '')}</td><td>${esc(p.expires)}</td></tr>`).join('')}</tbody></table>
      <p class="muted">A second person approves with <code>flagguard approvals approve ID</code> (the dashboard sends no token).</p>`;
  const driftPart = !drift ? '<p id="no-manifests" class="muted">No flag manifests are watched (<code>[manifests] dir</code>).</p>'
    : `${drift.errors?.length ? `<div class="card error" role="alert"><strong>The manifests on disk are invalid; the last valid set is watched:</strong><ul>${drift.errors.map((e) => `<li>${esc(e)}</li>`).join('')}</ul></div>` : ''}
      <p class="muted">Checked ${esc(drift.checked_at ?? 'not yet')} from ${esc(drift.dir)}.</p>
      <table id="drift"><thead><tr><th scope="col">Flag</th><th scope="col">Environment</th><th scope="col">Status</th><th scope="col">Differences</th><th scope="col">Owner</th></tr></thead><tbody>
      ${drift.flags.map((f) => `<tr data-flag="${esc(f.flag)}" data-env="${esc(f.environment)}" data-status="${esc(f.status)}"><th scope="row"><a href="#/flag/${encodeURIComponent(f.flag)}">${esc(f.flag)}</a></th><td>${esc(f.environment)}</td>
        <td>${f.status === 'in_sync' ? 'in sync' : `<span class="error">${esc(f.status.replace('_', ' '))}</span>`}</td>
        <td>${esc((f.findings || []).map((d) => `${d.field}: manifest ${JSON.stringify(d.want)}, flag system ${JSON.stringify(d.have)}`).join('; ') || f.error || (f.kills || []).map((k) => `killed by flagguard (action ${k.action})`).join(', '))}</td>
        <td>${owner(f.flag)}</td></tr>`).join('')}</tbody></table>`;
  const findings = compliance.findings.length === 0 ? '<p id="no-findings" class="muted">No compliance findings.</p>'
    : `<table id="compliance"><thead><tr><th scope="col">Problem</th><th scope="col">Flag</th><th scope="col">Environment</th><th scope="col">Detail</th></tr></thead><tbody>
      ${compliance.findings.map((f) => `<tr data-problem="${esc(f.problem)}" data-flag="${esc(f.flag)}"><th scope="row">${esc(f.problem.replace('_', ' '))}</th><td>${esc(f.flag)}</td><td>${esc(f.environment ?? '')}</td><td>${esc(f.detail)}</td></tr>`).join('')}</tbody></table>`;
  $main.innerHTML = `<h1>Governance</h1><h2>Pending approvals</h2>${pending}<h2>Drift from the flag manifests</h2>${driftPart}<h2>Compliance</h2>${findings}`;
}

// ---------------------------------------------------------------- cluster
async function renderCluster() {
  const c = await getJSON('/v1/cluster');
  const lease = c.mode === 'embedded'
    ? '<p id="lease" data-mode="embedded">Embedded: one process on SQLite, always the one that acts.</p>'
    : `<p id="lease" data-mode="cluster" data-leader="${c.leader === true}">Instance <strong>${esc(c.instance)}</strong> is ${c.leader ? 'the leader' : 'a standby'};
       leader ${esc(c.holder ?? 'none')} at epoch ${esc(c.epoch)}, lease expires in ${esc(c.lease_expires_in_ms ?? '–')} ms; fence rejections ${esc(c.fence_rejections ?? 0)}.</p>
       ${c.holder ? '' : '<p class="error" role="alert">No leader: nobody decides or acts until a replica takes the lease.</p>'}
       <table id="members"><thead><tr><th scope="col">Member</th><th scope="col">API</th><th scope="col">Last seen</th></tr></thead><tbody>
       ${(c.members || []).map((m) => `<tr><th scope="row">${esc(m.instance)}${m.instance === c.holder ? ' (leader)' : ''}</th><td>${esc(m.api)}</td><td>${esc(m.seen_ms_ago)} ms ago</td></tr>`).join('')}</tbody></table>`;
  const s = c.scale_out;
  let scale = '';
  if (s?.role === 'shard') scale = `<h2>Scale-out</h2><p id="scale-out" data-role="shard">A shard: streaming window deltas to evaluators, last frame ${esc(s.seq)}.</p>`;
  else if (s?.role === 'evaluator') {
    scale = `<h2>Scale-out</h2><p id="scale-out" data-role="evaluator" data-complete="${s.complete === true}">An evaluator of ${s.shards.length} shard(s): coverage
      ${s.complete ? 'complete' : '<span class="error">reduced</span> (a shard is down or its stream had a gap: decisions say so in their record)'}.</p>
      <table id="shards"><thead><tr><th scope="col">Shard</th><th scope="col">Stream</th><th scope="col">Lag</th><th scope="col">Gaps</th><th scope="col">Missing frames</th></tr></thead><tbody>
      ${s.shards.map((sh) => `<tr data-shard="${esc(sh.shard)}" data-connected="${sh.connected === true}"><th scope="row">${esc(sh.shard)}</th><td>${sh.connected ? 'connected' : '<span class="error">down</span>'}</td>
        <td>${esc(sh.lag_ms)} ms</td><td>${esc(sh.gaps)}</td><td>${esc(sh.missing_frames)}</td></tr>`).join('')}</tbody></table>`;
  }
  $main.innerHTML = `<h1>Cluster</h1>${lease}${scale}`;
}

// ---------------------------------------------------------------- routing and live updates
async function render() {
  const r = parseRoute();
  setNav(r.view);
  try {
    if (r.view === 'flag') await renderFlag(r.arg, r.params);
    else if (r.view === 'audit') await renderAudit(r.params);
    else if (r.view === 'rules') await renderRules();
    else if (r.view === 'cluster') await renderCluster();
    else if (r.view === 'governance') await renderGovernance();
    else renderOverview();
  } catch (e) { $main.innerHTML = `<p class="error" role="alert">${esc(e.message)}</p>`; }
}
window.addEventListener('hashchange', () => { render().then(() => $main.focus()); });

function connect() {
  const es = new EventSource('/v1/events');
  es.addEventListener('overview', (ev) => {
    state.overview = JSON.parse(ev.data);
    $live.textContent = `live · ${new Date(state.overview.at).toLocaleTimeString([], { hour12: false })}`;
    $live.className = 'live';
    document.body.dataset.updated = state.overview.at;
    const r = parseRoute();
    if (r.view === 'flags') renderOverview();
    else if (r.view === 'flag' && Date.now() - state.lastFlagRefresh > 2000 && !document.querySelector('details[open]')) renderFlag(r.arg, r.params);
    else if (r.view === 'cluster') renderCluster().catch(() => {});
    else if (r.view === 'governance') renderGovernance().catch(() => {});
  });
  es.onerror = () => { $live.textContent = 'reconnecting…'; $live.className = ''; };
}
connect();
render();
