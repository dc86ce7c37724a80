// The upload queue of ferry's pages: each file's SHA-256 is computed in a Worker, then the file
// is sent with it (`Content-Digest`), and the server stores it only if its own digest of what
// arrived matches. Files are read in slices and sent from disk, never held whole in memory.
//
// Each row shows the file's phase, progress, rate and time left, and a Cancel button; the
// summary line shows the whole queue. A dropped connection is retried with backoff (and waits
// for the browser to come back online); a retried upload that the server had in fact stored
// is recognised by its digest rather than sent twice.

import { el, fill, bytes, duration, base64, hex, save, errorOf } from './ui.js';

const PARALLEL = 2;
const RETRIES = 6;
const STALL_MS = 90_000;

/** Bytes per second over the last few seconds. */
class Meter {
  constructor() { this.samples = []; }
  add(total) {
    const t = performance.now();
    this.samples.push([t, total]);
    while (this.samples.length > 2 && t - this.samples[0][0] > 4000) this.samples.shift();
  }
  rate() {
    if (this.samples.length < 2) return NaN;
    const [t0, b0] = this.samples[0];
    const [t1, b1] = this.samples[this.samples.length - 1];
    const dt = (t1 - t0) / 1000;
    return dt > 0.25 ? (b1 - b0) / dt : NaN;
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits until the browser says it is online again (or `ms` passed). */
function online(ms) {
  if (navigator.onLine) return sleep(ms);
  return new Promise((r) => {
    const done = () => { window.removeEventListener('online', done); r(); };
    window.addEventListener('online', done);
  });
}

/**
 * Why the server cannot take `path` ("dir/name"), or '' when it can as far as the page can
 * tell. These names never reach the server: a URL with `\\`, a control character or a
 * `..` segment is what attacks look like, and the server penalises the sender's address for
 * it. The server checks everything again.
 */
export function refusedName(path) {
  for (const seg of path.split('/')) {
    if (seg === '.' || seg === '..') return `the name “${seg}” is not allowed`;
    if (seg.includes('\\')) return `a backslash (\\) is not allowed in a name: “${seg}”`;
    // eslint-disable-next-line no-control-regex
    if (/[\u0000-\u001f\u007f-\u009f]/.test(seg)) return 'a control character (a line break, a tab…) is not allowed in a name';
  }
  return '';
}

/** The queue and its rows. */
export class Uploader {
  /**
   * @param root   an element the queue is drawn in
   * @param opts   target(item) → {url, headers}: where and how to PUT one file;
   *               prepare(item) → Promise: called before the PUT (make parent folders);
   *               same(item) → Promise<bool>: is this very file (by digest) stored already?
   *               canReplace: offer "Replace" when the name is taken;
   *               onDone(item, answer): after each stored file;
   *               onAuth(error): the credentials were refused (stops the queue);
   *               authFailed: what a row says then.
   */
  constructor(root, opts) {
    this.opts = opts;
    this.items = [];
    this.active = 0;
    this.meter = new Meter();
    this.bar = el('progress', { class: 'overall', max: 1, value: 0 });
    this.line = el('span', { class: 'summary-text' });
    this.clear = el('button', { type: 'button', class: 'small', onclick: () => this.clearFinished() }, 'Clear finished');
    this.summary = el('div', { class: 'summary', hidden: true }, this.line, this.clear, this.bar);
    this.list = el('ul', { class: 'transfers' });
    fill(root, this.summary, this.list);
    this.tick = null;
    window.addEventListener('beforeunload', (e) => {
      if (this.items.some((i) => i.busy())) { e.preventDefault(); e.returnValue = ''; }
    });
  }

  /** Queues files: `[{file, path}]`, path being where it goes ("dir/name" below the target). */
  add(entries) {
    for (const { file, path } of entries) {
      const item = new Item(this, file, path);
      this.items.push(item);
      this.list.append(item.row);
    }
    this.summary.hidden = this.items.length === 0;
    if (!this.tick) this.tick = setInterval(() => this.draw(), 500);
    this.pump();
    this.draw();
  }

  pump() {
    while (this.active < PARALLEL) {
      const next = this.items.find((i) => i.state === 'queued');
      if (!next) break;
      this.active += 1;
      next.run().finally(() => {
        this.active -= 1;
        this.pump();
        this.draw();
      });
    }
  }

  /** Stops everything still waiting or running (the credentials were refused). */
  stopAll(why) {
    for (const i of this.items) {
      if (i.state === 'queued' || i.busy()) {
        i.stopped = true;
        i.cancel(why);
      }
    }
  }

  /** The paths of the files that were stopped or failed: not stored. */
  unstored() {
    return this.items.filter((i) => i.state === 'failed' || i.stopped || i.state === 'queued' || i.busy()).map((i) => i.path);
  }

  clearFinished() {
    this.items = this.items.filter((i) => {
      if (i.state === 'done' || i.state === 'cancelled') { i.row.remove(); return false; }
      return true;
    });
    this.summary.hidden = this.items.length === 0;
    this.draw();
  }

  draw() {
    let work = 0; let done = 0; let files = 0; let stored = 0; let failed = 0;
    for (const i of this.items) {
      i.draw();
      if (i.state === 'cancelled') continue;
      files += 1;
      work += 2 * i.file.size + 1;
      done += i.state === 'done' ? 2 * i.file.size + 1 : i.hashed + i.sent;
      if (i.state === 'done') stored += 1;
      if (i.state === 'failed') failed += 1;
    }
    this.meter.add(done);
    const rate = this.meter.rate();
    const running = this.items.some((i) => i.busy() || i.state === 'queued');
    this.bar.max = Math.max(work, 1);
    this.bar.value = done;
    const parts = [`${stored} of ${files} file${files === 1 ? '' : 's'} stored`];
    if (failed) parts.push(`${failed} failed`);
    if (running && rate > 0) {
      parts.push(`${bytes(rate)}/s`, `${duration((work - done) / rate)} left`);
    }
    this.line.textContent = parts.join(' · ');
    this.summary.dataset.state = running ? 'running' : 'idle';
    if (!running && this.tick) { clearInterval(this.tick); this.tick = null; }
  }
}

/** One file in the queue. */
class Item {
  constructor(queue, file, path) {
    this.queue = queue;
    this.file = file;
    this.path = path;
    this.state = 'queued'; // queued, hashing, sending, committing, retrying, done, failed, cancelled
    this.hashed = 0;
    this.sent = 0;
    this.digest = null;
    this.meter = new Meter();
    this.note = '';
    this.worker = null;
    this.xhr = null;
    this.cancelled = false;
    this.statusEl = el('div', { class: 't-status' });
    this.bar = el('progress', { max: 1, value: 0 });
    this.actions = el('span', { class: 't-actions' });
    this.result = el('div', { class: 't-result' });
    this.cancelBtn = el('button', { type: 'button', class: 'small', onclick: () => this.cancel() }, 'Cancel');
    this.row = el('li', { class: 'transfer', dataset: { state: 'queued', path } },
      el('div', { class: 't-head' },
        el('span', { class: 't-name', text: path, title: path }),
        el('span', { class: 't-size', text: bytes(file.size) }),
        this.actions),
      this.bar, this.statusEl, this.result);
    fill(this.actions, this.cancelBtn);
  }

  busy() { return ['hashing', 'sending', 'committing', 'retrying'].includes(this.state); }

  set(state, note = '') {
    this.state = state;
    this.note = note;
    this.row.dataset.state = state;
    if (!this.busy() && state !== 'queued') fill(this.actions);
    this.draw();
  }

  cancel(why = 'Cancelled') {
    if (this.state === 'done' || this.state === 'cancelled') return;
    // Once the whole file is out, the server commits it whether or not anyone waits for
    // the answer.
    if (this.state === 'committing') why = `${why} after the whole file was sent: it may have been stored`;
    this.cancelled = true;
    if (this.worker) this.worker.terminate();
    if (this.xhr) this.xhr.abort();
    this.set('cancelled', why);
    this.queue.draw();
  }

  draw() {
    const size = this.file.size;
    this.bar.max = 2 * size + 1;
    this.bar.value = this.state === 'done' ? 2 * size + 1 : this.hashed + this.sent;
    const rate = this.meter.rate();
    const pct = (n) => `${size ? Math.floor((100 * n) / size) : 100}%`;
    const speed = rate > 0 ? [`${bytes(rate)}/s`] : [];
    let text;
    switch (this.state) {
      case 'queued': text = 'Waiting'; break;
      case 'hashing': text = ['Computing SHA-256', pct(this.hashed), ...speed].join(' · '); break;
      case 'sending': text = ['Sending', pct(this.sent), ...speed,
        ...(rate > 0 ? [`${duration((size - this.sent) / rate)} left`] : [])].join(' · '); break;
      case 'committing': text = 'Verifying on the server…'; break;
      default: text = this.note;
    }
    if (this.statusEl.textContent !== text) this.statusEl.textContent = text;
  }

  async run() {
    this.meter = new Meter();
    const refused = refusedName(this.path);
    if (refused) {
      this.set('failed', `Not sent: ${refused}`);
      return;
    }
    try {
      this.set('hashing');
      const digest = await this.hash();
      if (this.cancelled) return;
      this.digest = digest;
      this.row.dataset.sha256 = hex(digest);
      if (this.queue.opts.prepare) await this.queue.opts.prepare(this);
      if (this.cancelled) return;
      await this.upload(false);
    } catch (e) {
      if (!this.cancelled) this.set('failed', `Failed: ${e.message || e}`);
    }
  }

  hash() {
    return new Promise((resolve, reject) => {
      const w = new Worker('/assets/hash-worker.js');
      this.worker = w;
      w.onmessage = (ev) => {
        const m = ev.data;
        if (m.type === 'progress') { this.hashed = m.done; this.meter.add(m.done); }
        else if (m.type === 'done') { w.terminate(); this.worker = null; this.hashed = this.file.size; resolve(m.digest); }
        else { w.terminate(); this.worker = null; reject(new Error(`could not read the file (${m.message})`)); }
      };
      w.onerror = (e) => { w.terminate(); this.worker = null; reject(new Error(e.message || 'the hashing worker failed')); };
      w.postMessage({ file: this.file });
    });
  }

  /** Sends the file, retrying a lost connection, and settles the row. */
  async upload(replace) {
    const opts = this.queue.opts;
    for (let attempt = 0; ; attempt += 1) {
      if (this.cancelled) return;
      this.sent = 0;
      this.meter = new Meter();
      this.set('sending');
      const { status, text, bodySent } = await this.put(replace);
      if (this.cancelled || status === -1) return;
      if (status === 0 && bodySent && !opts.same) {
        // The whole file went out and the answer was lost: the server may have stored it.
        // Where the page cannot ask (a drop link lists nothing), sending it again on its own
        // would store a second copy under a new name; the sender decides.
        this.set('failed', 'The connection was lost after the whole file was sent: it may have been stored. Send it again only if the recipient did not get it.');
        fill(this.actions, el('button', { type: 'button', class: 'small', onclick: () => this.retry(false) }, 'Send again'));
        return;
      }
      if (status === 201 || status === 200) {
        this.stored(JSON.parse(text));
        return;
      }
      const err = errorOf(status, text);
      const transient = status === 0 || status === 408 || status === 429 || status === 503;
      if (transient && attempt < RETRIES) {
        const wait = Math.min(30, 2 ** attempt);
        this.set('retrying', navigator.onLine
          ? `${status === 0 ? 'Connection lost' : err.message}; trying again in ${wait} s`
          : 'Offline; waiting for the network to come back');
        await online(wait * 1000);
        continue;
      }
      if (err.error === 'already_exists') {
        // A retry after a lost answer, or the same file sent twice: nothing to do.
        if (opts.same && (await opts.same(this).catch(() => false))) {
          this.set('done', 'Already stored: the file there has this SHA-256');
          this.result.replaceChildren(el('code', { class: 'digest', text: hex(this.digest) }));
          opts.onDone && opts.onDone(this, null);
          return;
        }
        this.set('failed', 'A file of this name is already there');
        if (opts.canReplace) {
          fill(this.actions, el('button', { type: 'button', class: 'small', onclick: () => this.retry(true) }, 'Replace'));
        }
        return;
      }
      if (err.error === 'integrity_mismatch') {
        this.set('failed', 'Not stored: what arrived does not match the SHA-256 computed here (the file may have changed while it was sent)');
        fill(this.actions, el('button', { type: 'button', class: 'small', onclick: () => this.retry(false, true) }, 'Try again'));
        return;
      }
      if (status === 401) {
        this.set('failed', opts.authFailed || err.message);
        opts.onAuth && opts.onAuth(err);
        return;
      }
      this.set('failed', `Not stored: ${err.message}`);
      if (transient) fill(this.actions, el('button', { type: 'button', class: 'small', onclick: () => this.retry(false) }, 'Try again'));
      return;
    }
  }

  async retry(replace, rehash = false) {
    this.cancelled = false;
    fill(this.actions, this.cancelBtn);
    this.queue.active += 1;
    try {
      if (rehash) {
        this.hashed = 0;
        this.set('hashing');
        this.digest = await this.hash();
        this.row.dataset.sha256 = hex(this.digest);
      }
      await this.upload(replace);
    } catch (e) {
      if (!this.cancelled) this.set('failed', `Failed: ${e.message || e}`);
    } finally {
      this.queue.active -= 1;
      this.queue.pump();
      this.queue.draw();
    }
  }

  put(replace) {
    return new Promise((resolve) => {
      const { url, headers } = this.queue.opts.target(this);
      const xhr = new XMLHttpRequest();
      this.xhr = xhr;
      let last = performance.now();
      const watch = setInterval(() => {
        if (performance.now() - last > STALL_MS) xhr.abort();
      }, 5000);
      let stalled = false;
      let bodySent = false;
      xhr.open('PUT', url);
      for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
      xhr.setRequestHeader('Content-Digest', `sha-256=:${base64(this.digest)}:`);
      if (replace) xhr.setRequestHeader('Overwrite', 'T');
      xhr.upload.onprogress = (e) => {
        last = performance.now();
        this.sent = e.loaded;
        this.meter.add(e.loaded);
      };
      xhr.upload.onload = () => {
        bodySent = true;
        last = performance.now();
        this.sent = this.file.size;
        if (this.state === 'sending') this.set('committing');
      };
      const end = (status, text) => {
        clearInterval(watch);
        this.xhr = null;
        resolve({ status, text, bodySent });
      };
      xhr.onload = () => end(xhr.status, xhr.responseText);
      xhr.onerror = () => end(0, '');
      xhr.ontimeout = () => end(0, '');
      xhr.onabort = () => {
        stalled = !this.cancelled;
        end(stalled ? 0 : -1, '');
      };
      xhr.send(this.file);
    });
  }

  stored(answer) {
    const r = answer.receipt || {};
    const name = r.name || this.path;
    const renamed = r.sent_name && r.name && r.sent_name !== r.name;
    const how = r.verified === 'sender' ? 'verified: the SHA-256 matches' : 'stored';
    this.set('done', renamed ? `Stored as “${name}” (the name was taken) · ${how}` : `Stored · ${how}`);
    this.row.dataset.stored = name;
    const receiptName = `${name.split('/').pop()}.ferry-receipt.json`;
    this.result.replaceChildren(
      el('code', { class: 'digest', title: 'SHA-256', text: r.sha256 || hex(this.digest) }),
      answer.jws
        ? el('button', { type: 'button', class: 'small', onclick: () => save(receiptName, JSON.stringify(answer, null, 1)) }, 'Save receipt')
        : null,
    );
    this.queue.opts.onDone && this.queue.opts.onDone(this, answer);
  }
}

/**
 * Files from a drop: folders are walked (their files keep their paths below the folder).
 * `DataTransferItem`s must be read at once, before the event returns.
 */
export async function dropped(dataTransfer) {
  const entries = [];
  const roots = [];
  for (const item of dataTransfer.items || []) {
    const entry = item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
    if (entry) roots.push(entry);
    else if (item.kind === 'file') { const f = item.getAsFile(); if (f) entries.push({ file: f, path: f.name }); }
  }
  const walk = async (entry, prefix) => {
    if (entry.isFile) {
      const file = await new Promise((res, rej) => entry.file(res, rej));
      entries.push({ file, path: prefix + file.name });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
        if (!batch.length) break;
        for (const e of batch) await walk(e, `${prefix}${entry.name}/`);
      }
    }
  };
  for (const r of roots) await walk(r, '');
  return entries;
}

/** Files from an `<input type=file>` (a folder picker gives each its relative path). */
export function picked(input) {
  return Array.from(input.files || [], (file) => ({ file, path: file.webkitRelativePath || file.name }));
}
