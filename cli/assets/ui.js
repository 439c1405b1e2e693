// kubeci's web view: Workflows and their runs, a run's DAG with live step states, a step's log.
// Everything comes from this server's /api/ (which reads the cluster with the user's kubeconfig);
// text from the cluster only ever reaches the page through textContent, and the DAG is an SVG
// document the server built with every name escaped, parsed as XML (no script runs from it).
'use strict';

const params = new URLSearchParams(location.search);
const state = { namespace: params.get('namespace') || '', workplan: params.get('workplan'), step: params.get('step') };
let runSource = null;
let logSource = null;

const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function say(message) { $('status').textContent = message || ''; }

async function getJSON(url) {
  const response = await fetch(url, { credentials: 'omit' });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || (response.status + ' ' + response.statusText));
  return body;
}

function query(extra) {
  const q = new URLSearchParams({ namespace: state.namespace });
  for (const [k, v] of Object.entries(extra || {})) if (v) q.set(k, v);
  return q.toString();
}

function pageURL() {
  const q = new URLSearchParams({ namespace: state.namespace });
  if (state.workplan) q.set('workplan', state.workplan);
  if (state.step) q.set('step', state.step);
  return '?' + q.toString();
}

async function loadNamespaces() {
  const select = $('namespace');
  try {
    const info = await getJSON('/api/namespaces');
    if (!state.namespace) state.namespace = info.current;
    select.replaceChildren(...info.namespaces.map((n) => el('option', n)));
  } catch (e) {
    say(e.message);
  }
  if (![...select.options].some((o) => o.value === state.namespace)) select.append(el('option', state.namespace));
  select.value = state.namespace;
  select.addEventListener('change', () => {
    state.namespace = select.value;
    state.workplan = null;
    state.step = null;
    closeRun();
    history.pushState(null, '', pageURL());
    loadWorkflows();
  });
}

async function loadWorkflows() {
  const nav = $('workflows');
  let data;
  try {
    data = await getJSON('/api/workflows?' + query());
  } catch (e) {
    nav.replaceChildren(el('p', e.message, 'error'));
    return;
  }
  const children = [];
  if (data.workflows.length === 0) children.push(el('p', 'No Workflows in namespace ' + data.namespace + '.', 'muted'));
  for (const wf of data.workflows) {
    children.push(el('h2', wf.workflow));
    const list = el('ul');
    if (wf.runs.length === 0) list.append(el('li', 'no runs yet', 'muted'));
    for (const run of wf.runs.slice().reverse()) {
      const link = el('a');
      link.href = '?' + new URLSearchParams({ namespace: state.namespace, workplan: run.name }).toString();
      link.dataset.workplan = run.name;
      link.append(el('span', run.name + ' '), el('span', run.phase, 'phase-' + run.phase), el('span', ' ' + run.age, 'muted'));
      link.addEventListener('click', (event) => {
        event.preventDefault();
        openRun(run.name, null);
      });
      const item = el('li');
      item.append(link);
      list.append(item);
    }
    children.push(list);
  }
  for (const m of data.malformed) children.push(el('p', 'malformed: ' + m, 'error'));
  nav.replaceChildren(...children);
  markSelectedRun();
}

function markSelectedRun() {
  for (const a of document.querySelectorAll('nav a[data-workplan]')) {
    a.classList.toggle('selected', a.dataset.workplan === state.workplan);
  }
}

function closeRun() {
  if (runSource) runSource.close();
  if (logSource) logSource.close();
  runSource = logSource = null;
  $('run').hidden = true;
}

// When a stream could not start, the same URL answers with the error as JSON.
async function explain(url, fallback) {
  try {
    const response = await fetch(url, { credentials: 'omit' });
    const body = await response.json();
    return body.error || fallback;
  } catch (_) {
    return fallback;
  }
}

function openRun(name, step) {
  closeRun();
  state.workplan = name;
  state.step = null;
  history.pushState(null, '', pageURL());
  markSelectedRun();
  $('run').hidden = false;
  $('run-title').textContent = 'Workplan ' + name;
  $('run-summary').textContent = 'connecting…';
  $('graph').replaceChildren();
  $('tree').tBodies[0].replaceChildren();
  $('log-title').textContent = 'Log: click a step';
  $('log-status').textContent = '';
  $('log').textContent = '';
  const url = '/api/workplans/' + encodeURIComponent(name) + '/events?' + query();
  const source = new EventSource(url);
  runSource = source;
  let first = true;
  source.addEventListener('run', (event) => {
    render(JSON.parse(event.data));
    if (first && step) openLog(step);
    first = false;
  });
  source.addEventListener('gone', (event) => {
    $('run-summary').textContent = event.data;
    source.close();
  });
  source.addEventListener('problem', (event) => {
    say(event.data);
    source.close();
  });
  source.onerror = async () => {
    if (source.readyState === EventSource.CLOSED) {
      $('run-summary').textContent = await explain('/api/workplans/' + encodeURIComponent(name) + '?' + query(), 'the run cannot be shown');
    } else {
      say('reconnecting to the run…');
    }
  };
  source.onopen = () => say('');
}

function render(view) {
  const tree = view.tree;
  const summary = [tree.phase];
  if (tree.progress) summary.push('task ' + tree.progress);
  if (tree.node) summary.push('node ' + tree.node);
  if (tree.duration) summary.push(tree.duration);
  $('run-title').textContent = 'Workplan ' + tree.namespace + '/' + tree.name + ' (Workflow ' + tree.workflow + ')';
  $('run-summary').textContent = summary.join(', ') + (tree.reason ? ' — ' + tree.reason : '');
  $('run-summary').className = 'phase-' + tree.phase;

  const doc = new DOMParser().parseFromString(view.svg, 'image/svg+xml');
  const svg = document.importNode(doc.documentElement, true);
  for (const node of svg.querySelectorAll('g.step')) {
    const name = node.getAttribute('data-step');
    node.classList.toggle('selected', name === state.step);
    node.addEventListener('click', () => openLog(name));
  }
  $('graph').replaceChildren(svg);

  const rows = [];
  for (const task of tree.tasks) {
    const taskName = task.attempts > 1 ? task.name + ' (attempt ' + task.attempt + '/' + task.attempts + ')' : task.name;
    rows.push(row('task', [taskName, '', task.state, '', task.start, task.duration, task.pod], task.state));
    for (const step of task.steps) {
      const r = row('step', ['  ' + step.name, step.mode, step.state, step.exitCode, step.start, step.duration,
        (step.pod || '-') + '/' + step.container], step.state);
      r.dataset.step = step.name;
      r.addEventListener('click', () => openLog(step.name));
      if (step.message) r.title = step.message;
      rows.push(r);
    }
  }
  $('tree').tBodies[0].replaceChildren(...rows);
}

function row(kind, cells, stepState) {
  const tr = el('tr', null, kind);
  cells.forEach((cell, i) => {
    const td = el('td', cell === undefined || cell === null || cell === '' ? (i === 1 || i === 3 ? '' : '-') : cell);
    if (i === 2) td.className = 'state-' + stepState;
    tr.append(td);
  });
  return tr;
}

function openLog(step) {
  if (logSource) logSource.close();
  state.step = step;
  history.replaceState(null, '', pageURL());
  for (const node of document.querySelectorAll('#graph g.step')) {
    node.classList.toggle('selected', node.getAttribute('data-step') === step);
  }
  const log = $('log');
  log.textContent = '';
  $('log-title').textContent = 'Log of step ' + step;
  $('log-status').textContent = 'reading…';
  const url = '/api/workplans/' + encodeURIComponent(state.workplan) + '/logs?' + query({ step });
  const source = new EventSource(url);
  logSource = source;
  source.addEventListener('line', (event) => {
    const line = JSON.parse(event.data);
    log.append(document.createTextNode(line.text + '\n'));
    $('log-status').textContent = 'streaming';
  });
  source.addEventListener('wait', (event) => { $('log-status').textContent = event.data; });
  source.addEventListener('problem', (event) => { $('log-status').textContent = event.data; });
  source.addEventListener('end', () => {
    source.close();
    if ($('log-status').textContent === 'reading…' || $('log-status').textContent === 'streaming') {
      $('log-status').textContent = log.textContent ? 'end of log' : 'no log (the step did not run)';
    }
  });
  source.onerror = async () => {
    if (source.readyState === EventSource.CLOSED) {
      $('log-status').textContent = await explain(url, 'the log cannot be read');
    }
  };
}

window.addEventListener('popstate', () => location.reload());

(async () => {
  await loadNamespaces();
  await loadWorkflows();
  if (state.workplan) openRun(state.workplan, state.step);
})();
