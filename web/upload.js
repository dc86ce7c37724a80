// The upload queue of ferry's pages. Each file goes up by tus 1.0 in 8 MiB chunks: a Worker
// reads each chunk and computes both its own SHA-256 (sent as `Upload-Checksum`, so a chunk
// that differs from what was hashed, damaged on the way or changed on disk, is refused and
// sent again) and the running SHA-256 of the whole file (sent with the last chunk as
// `Repr-Digest`, so the server stores the file only if all of it matches). The browser sends
// each chunk straight from the file; the next chunk is hashed while one is sent. A file is
// never held whole in memory.
//
// A dropped connection is retried with backoff (waiting for the browser to be online) and
// the upload goes on from the offset the server reports, with the SHA-256 state saved there.
// After a reload the page recognises a file picked again (store.js) and goes on as well.
// Replacing an existing file, which tus cannot do, sends the file whole with `PUT` and
// `Overwrite: T`, its SHA-256 computed first.

import { el, fill, bytes, duration, base64, hex, save, errorOf } from './ui.js';
import * as store from './store.js';

const PARALLEL = 2;
const CHUNK = 8 * 1024 * 1024;
const RETRIES = 8;
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

/** Waits `ms`, and while the browser says it is offline, until it is online again. */
function online(ms) {
  if (navigator.onLine) return sleep(ms);
  return new Promise((r) => {
    const done = () => { window.removeEventListener('online', done); r(); };
    window.addEventListener('online', done);
  });
}

/**
 * Why the server cannot take `path` ("dir/name"), or '' when it can as far as the page can
 * tell. Such names are refused before any request, with a reason the sender understands
 * (and a link to such a name in a URL would cost the address a penalty). The server checks
 * everything again.
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

/** UTF-8 text as base64, for Upload-Metadata. */
const b64text = (s) => base64(new TextEncoder().encode(s));

/** The hash worker, answering requests by id. */
class Hasher {
  constructor() {
    this.worker = new Worker('/assets/hash-worker.js');
    this.n = 0;
    this.pending = new Map();
    this.worker.onmessage = (ev) => {
      const m = ev.data;
      const p = this.pending.get(m.id);
      if (!p) return;
      if ('progress' in m) { if (p.progress) p.progress(m.progress); return; }
      this.pending.delete(m.id);
      // Chromium refuses to read a file that changed on disk since it was picked.
      if (m.error) {
        p.reject(new Error(m.name === 'NotReadableError'
          ? 'the file changed on disk, or could not be read, while it was being sent; pick it again to send it as it is now'
          : `could not read the file (${m.error})`));
      }
      else p.resolve(m);
    };
    this.worker.onerror = (e) => this.close(new Error(e.message || 'the hashing worker failed'));
  }

  call(msg, progress) {
    const id = ++this.n;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, progress });
      this.worker.postMessage({ ...msg, id });
    });
  }

  close(why = new Error('cancelled')) {
    this.worker.terminate();
    for (const p of this.pending.values()) p.reject(why);
    this.pending.clear();
  }
}

/** The queue and its rows. */
export class Uploader {
  /**
   * @param root   an element the queue is drawn in
   * @param opts   tus: the tus collection to create uploads in ('/tus/');
   *               name(item): the upload's name there (a path, or a link's file name);
   *               headers(): credentials for every request (CSRF token, or a password);
   *               target(item) → url: where a replacing PUT goes (with canReplace);
   *               prepare(item) → Promise: called first (make parent folders);
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
    store.sweep();
  }

  /** Queues files: `[{file, path}]`, path being where it goes. */
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
        i.cancel(why, false);
      }
    }
  }

  /** The paths not stored: failed, stopped (see stopAll), waiting or under way. */
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
      work += i.work();
      done += i.done();
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
    if (running && rate > 0) parts.push(`${bytes(rate)}/s`, `${duration((work - done) / rate)} left`);
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
    // queued, starting, hashing, sending, committing, retrying, done, failed, cancelled
    this.state = 'queued';
    this.mode = 'tus'; // or 'put' (a replacement)
    this.hashed = 0;
    this.sent = 0;
    this.resumedFrom = 0;
    this.digest = null;
    this.meter = new Meter();
    this.note = '';
    this.hasher = null;
    this.xhr = null;
    this.url = null;
    this.key = null;
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

  get opts() { return this.queue.opts; }

  h() {
    if (!this.hasher) this.hasher = new Hasher();
    return this.hasher;
  }

  busy() { return ['starting', 'hashing', 'sending', 'committing', 'retrying'].includes(this.state); }

  work() { return (this.mode === 'put' ? 2 : 1) * this.file.size + 1; }

  done() {
    if (this.state === 'done') return this.work();
    return this.mode === 'put' ? this.hashed + this.sent : this.sent;
  }

  set(state, note = '') {
    this.state = state;
    this.note = note;
    this.row.dataset.state = state;
    if (!this.busy() && state !== 'queued') {
      fill(this.actions);
      if (this.hasher) { this.hasher.close(); this.hasher = null; }
    }
    this.draw();
  }

  /** Tells the server to drop what it has of this upload, and forgets it here. */
  discard() {
    if (this.url) {
      fetch(this.url, { method: 'DELETE', credentials: 'same-origin', headers: this.headers() }).catch(() => {});
      this.url = null;
    }
    if (this.key) store.forget(this.key);
  }

  /** Stops the upload; `discard` also tells the server to drop what it has. */
  cancel(why = 'Cancelled', discard = true) {
    if (this.state === 'done' || this.state === 'cancelled') return;
    // Once the last byte is out, the server verifies and commits whether or not anyone
    // waits for the answer.
    if (this.state === 'committing') why = `${why} after the whole file was sent: it may have been stored`;
    this.cancelled = true;
    if (this.xhr) this.xhr.abort();
    if (discard) {
      try { this.discard(); } catch (_) { /* no session any more: the server's expiry ends it */ }
    }
    this.set('cancelled', why);
    this.queue.draw();
  }

  draw() {
    const size = this.file.size;
    this.bar.max = this.work();
    this.bar.value = this.done();
    const rate = this.meter.rate();
    const pct = (n) => `${size ? Math.floor((100 * n) / size) : 100}%`;
    const speed = rate > 0 ? [`${bytes(rate)}/s`] : [];
    let text;
    switch (this.state) {
      case 'queued': text = 'Waiting'; break;
      case 'starting': text = 'Starting…'; break;
      case 'hashing': text = [this.note || 'Computing SHA-256', pct(this.hashed), ...speed].join(' · '); break;
      case 'sending': text = ['Sending', pct(this.sent), ...speed,
        ...(rate > 0 ? [`${duration((size - this.sent) / rate)} left`] : []),
        ...(this.resumedFrom ? [`resumed at ${pct(this.resumedFrom)}`] : [])].join(' · '); break;
      case 'committing': text = 'Verifying on the server…'; break;
      default: text = this.note;
    }
    if (this.statusEl.textContent !== text) this.statusEl.textContent = text;
  }

  async run() {
    const refused = refusedName(this.path);
    if (refused) {
      this.set('failed', `Not sent: ${refused}`);
      return;
    }
    try {
      this.set('starting');
      if (this.opts.prepare) await this.opts.prepare(this);
      if (this.cancelled) return;
      await this.tus();
    } catch (e) {
      if (!this.cancelled) {
        this.set('failed', `Not stored: ${e.message || e}`);
        this.discard();
      }
    } finally {
      if (!this.busy() && this.hasher) { this.hasher.close(); this.hasher = null; }
    }
  }

  headers(extra = {}) {
    return { 'Tus-Resumable': '1.0.0', ...this.opts.headers(), ...extra };
  }

  /** Where the server stands on `url`: its offset, or null when the upload is gone. */
  async offsetAt(url) {
    for (let attempt = 0; ; attempt += 1) {
      let res = null;
      try { res = await fetch(url, { method: 'HEAD', credentials: 'same-origin', headers: this.headers(), cache: 'no-store' }); } catch (_) { res = null; }
      if (this.cancelled) return null;
      if (res && res.ok) return Number(res.headers.get('Upload-Offset'));
      if (res && (res.status === 404 || res.status === 410)) return null;
      if (res && res.status === 401) throw Object.assign(new Error('refused'), { auth: true });
      if (attempt >= RETRIES) throw new Error('the server cannot be reached');
      await this.backoff(attempt, res ? res.status : 0, 'the server is busy');
    }
  }

  async backoff(attempt, status, message) {
    const wait = Math.min(30, 2 ** attempt);
    this.set('retrying', !navigator.onLine ? 'Offline; waiting for the network to come back'
      : `${status === 0 ? 'Connection lost' : message}; trying again in ${wait} s`);
    await online(wait * 1000);
  }

  /** The SHA-256 state after the first `at` bytes (the server has them; the page must too). */
  async prefix(at) {
    if (at === 0) return null;
    this.hashed = 0;
    this.set('hashing', 'Checking what was sent before');
    const r = await this.h().call({ op: 'prefix', file: this.file, end: at }, (n) => { this.hashed = n; this.meter.add(n); });
    return r.state;
  }

  /** POST: a new upload. Returns its address, or null when the row was settled. */
  async create() {
    const opts = this.opts;
    for (let attempt = 0; ; attempt += 1) {
      let res = null;
      try {
        res = await fetch(opts.tus, {
          method: 'POST',
          credentials: 'same-origin',
          headers: this.headers({
            'Upload-Length': String(this.file.size),
            'Upload-Metadata': `filename ${b64text(opts.name(this))}`,
          }),
        });
      } catch (_) { res = null; }
      if (this.cancelled) return null;
      if (res && res.status === 201) return new URL(res.headers.get('Location'), location.href).pathname;
      const status = res ? res.status : 0;
      const text = res ? await res.text() : '';
      if ([0, 408, 429, 502, 503, 504].includes(status) && attempt < RETRIES) {
        await this.backoff(attempt, status, errorOf(status, text).message);
        continue;
      }
      await this.refused(status, text);
      return null;
    }
  }

  /** Settles the row after a refusal that no retry mends. */
  async refused(status, text) {
    const opts = this.opts;
    const err = errorOf(status, text);
    if (status === 401) {
      this.set('failed', opts.authFailed || err.message);
      if (opts.onAuth) opts.onAuth(err);
      return;
    }
    if (err.error === 'already_exists') {
      if (opts.same) {
        this.set('hashing', 'Comparing with the file there');
        const d = await this.h().call({ op: 'whole', file: this.file }, (n) => { this.hashed = n; });
        this.digest = d.digest;
        this.row.dataset.sha256 = hex(d.digest);
        if (await opts.same(this).catch(() => false)) {
          this.hashed = 0;
          this.set('done', 'Already stored: the file there has this SHA-256');
          this.result.replaceChildren(el('code', { class: 'digest', text: hex(this.digest) }));
          if (opts.onDone) opts.onDone(this, null);
          return;
        }
        this.hashed = 0;
      }
      this.set('failed', 'A file of this name is already there');
      if (opts.canReplace) {
        fill(this.actions, el('button', { type: 'button', class: 'small', onclick: () => this.again(() => this.replace()) }, 'Replace'));
      }
      return;
    }
    if (err.error === 'integrity_mismatch') {
      this.set('failed', 'Not stored: what arrived does not match the SHA-256 computed here (the file may have changed while it was sent)');
      fill(this.actions, el('button', { type: 'button', class: 'small', onclick: () => this.again(() => this.tus()) }, 'Try again'));
      return;
    }
    this.set('failed', `Not stored: ${err.message}`);
    if ([0, 408, 429, 502, 503, 504].includes(status)) {
      fill(this.actions, el('button', { type: 'button', class: 'small', onclick: () => this.again(() => this.tus()) }, 'Try again'));
    }
  }

  /** Runs `f` again for this row (a button), holding a place in the queue. */
  async again(f) {
    this.cancelled = false;
    fill(this.actions, this.cancelBtn);
    this.queue.active += 1;
    try {
      await f();
    } catch (e) {
      if (!this.cancelled) this.set('failed', `Failed: ${e.message || e}`);
    } finally {
      this.queue.active -= 1;
      this.queue.pump();
      this.queue.draw();
    }
  }

  /** The upload by tus, from a remembered offset when the page knows this file. */
  async tus() {
    const file = this.file;
    this.mode = 'tus';
    this.sent = 0;
    this.set('starting');
    const first = await this.h().call({ op: 'head', file });
    this.key = [this.opts.tus, this.opts.name(this), file.name, file.size, file.lastModified, hex(first.digest)].join('\0');
    let offset = 0;
    let state = null;
    const saved = await store.recall(this.key);
    if (saved) {
      const at = await this.offsetAt(saved.url).catch((e) => { if (e.auth) throw e; return null; });
      if (at !== null && at <= file.size) {
        this.url = saved.url;
        if (at === file.size) {
          store.forget(this.key);
          await this.finished(null);
          return;
        }
        state = at === saved.acked ? saved.state : await this.prefix(at);
        offset = at;
        this.resumedFrom = at;
        this.row.dataset.resumedFrom = String(at);
      } else {
        store.forget(this.key);
      }
    }
    if (!this.url) {
      this.url = await this.create();
      if (!this.url) return;
      store.remember(this.key, { url: this.url, acked: 0, state: null, created: Date.now() });
    }
    await this.chunks(offset, state);
  }

  /** Sends the chunks from `offset`, `state` being the SHA-256 state there. */
  async chunks(offset, state) {
    const file = this.file;
    const size = file.size;
    let attempt = 0;
    let damaged = 0;
    let restarted = false;
    let next = null;
    const created = Date.now();
    for (;;) {
      if (this.cancelled) return;
      const end = Math.min(offset + CHUNK, size);
      const final = end === size;
      const c = next && next.start === offset
        ? await next.promise
        : await this.h().call({ op: 'chunk', file, start: offset, end, state, final });
      next = null;
      if (this.cancelled) return;
      if (!final) {
        const e2 = Math.min(end + CHUNK, size);
        next = { start: end, promise: this.h().call({ op: 'chunk', file, start: end, end: e2, state: c.after, final: e2 === size }) };
        next.promise.catch(() => {});
      }
      this.sent = offset;
      if (this.state !== 'sending') this.set('sending');
      const r = await this.patch(offset, c, final);
      if (this.cancelled || r.status === -1) return;
      if (r.status === 204) {
        offset = end;
        state = c.after;
        attempt = 0;
        damaged = 0;
        this.sent = offset;
        if (final) {
          store.forget(this.key);
          await this.finished(r.receipt);
          return;
        }
        store.remember(this.key, { url: this.url, acked: offset, state, created });
        continue;
      }
      next = null;
      const err = errorOf(r.status, r.text);
      if (r.status === 460) {
        // The chunk arrived damaged and was dropped: send it again, a few times.
        damaged += 1;
        if (damaged <= 3) continue;
        this.set('failed', 'Not stored: the data keeps arriving damaged');
        return;
      }
      if (r.status === 409 && r.offset !== null) {
        // The server stands elsewhere (a partial it could not trust starts again from 0).
        const at = Number(r.offset);
        if (at !== offset) {
          state = at === end ? c.after : await this.prefix(at);
          offset = at;
          this.set('sending');
        }
        continue;
      }
      if (r.status === 404 && !restarted) {
        // The upload is gone on the server (it expired): start it again.
        restarted = true;
        store.forget(this.key);
        this.url = await this.create();
        if (!this.url) return;
        store.remember(this.key, { url: this.url, acked: 0, state: null, created });
        offset = 0;
        state = null;
        continue;
      }
      // 409 upload_busy: another request, or another node, still holds this upload (a node
      // that died holds it until its hold lapses, a minute): wait and ask again.
      const busy = r.status === 409 && err.error === 'upload_busy';
      if (([0, 408, 429, 502, 503, 504].includes(r.status) || busy) && attempt < RETRIES) {
        await this.backoff(attempt, r.status, err.message);
        attempt += 1;
        const at = await this.offsetAt(this.url);
        if (this.cancelled) return;
        if (at === null) { this.set('failed', 'Not stored: the server no longer has this upload'); return; }
        if (at === size) {
          // The answer to the last chunk was lost, not the file: the server has it all.
          store.forget(this.key);
          await this.finished(null);
          return;
        }
        // Where the chunk just sent ends, the server has it (only its answer was lost): the
        // state after it is known; anywhere else the prefix is hashed again.
        if (at === end) state = c.after;
        else if (at !== offset) state = await this.prefix(at);
        offset = at;
        this.row.dataset.resumedAt = String(at);
        continue;
      }
      if (err.error === 'integrity_mismatch' || r.status === 401 || r.status >= 400) {
        store.forget(this.key);
        this.url = null;
        await this.refused(r.status, r.text);
        return;
      }
    }
  }

  /** One PATCH; resolves with the answer (status 0: the connection failed; -1: cancelled). */
  patch(offset, c, final) {
    const headers = this.headers({
      'Content-Type': 'application/offset+octet-stream',
      'Upload-Offset': String(offset),
      'Upload-Checksum': `sha256 ${base64(c.chunk)}`,
    });
    if (final) headers['Repr-Digest'] = `sha-256=:${base64(c.whole)}:`;
    // The chunk goes from the file itself (the browser streams it from disk, with no copy
    // through the page); its checksum, computed from what the Worker read, makes the server
    // refuse it (460, and it is sent again) if the file changed in between.
    return this.send('PATCH', this.url, headers, this.file.slice(offset, offset + c.size), offset, final);
  }

  /** An XMLHttpRequest (fetch has no upload progress), watched for stalls. */
  send(method, url, headers, body, base, final) {
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      this.xhr = xhr;
      let last = performance.now();
      const watch = setInterval(() => { if (performance.now() - last > STALL_MS) xhr.abort(); }, 5000);
      xhr.open(method, url);
      for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
      xhr.upload.onprogress = (e) => {
        last = performance.now();
        this.sent = base + e.loaded;
        this.meter.add(this.sent + this.hashed);
      };
      xhr.upload.onload = () => {
        last = performance.now();
        if (final && this.state === 'sending') this.set('committing');
      };
      const end = (status) => {
        clearInterval(watch);
        this.xhr = null;
        resolve({
          status,
          text: status > 0 ? xhr.responseText : '',
          offset: status > 0 ? xhr.getResponseHeader('Upload-Offset') : null,
          receipt: status > 0 ? xhr.getResponseHeader('Ferry-Receipt') : null,
        });
      };
      xhr.onload = () => end(xhr.status);
      xhr.onerror = () => end(0);
      xhr.onabort = () => end(this.cancelled ? -1 : 0);
      xhr.send(body);
    });
  }

  /** The upload landed: the receipt, from the server (or, failing that, from the header). */
  async finished(jws) {
    let answer = null;
    try {
      const res = await fetch(`${this.url}/receipt`, { credentials: 'same-origin', headers: this.headers() });
      if (res.ok) answer = await res.json();
    } catch (_) { /* the header has it too */ }
    if ((!answer || !answer.receipt) && jws) {
      try {
        const p = jws.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
        const json = new TextDecoder().decode(Uint8Array.from(atob(p), (ch) => ch.charCodeAt(0)));
        answer = { receipt: JSON.parse(json), jws };
      } catch (_) { answer = { receipt: {}, jws }; }
    }
    this.stored(answer || { receipt: {} });
  }

  /** Replaces the existing file: its SHA-256 first, then one PUT with `Overwrite: T`. */
  async replace() {
    this.mode = 'put';
    this.hashed = 0;
    this.sent = 0;
    this.set('hashing');
    const d = await this.h().call({ op: 'whole', file: this.file }, (n) => { this.hashed = n; this.meter.add(n); });
    this.digest = d.digest;
    this.row.dataset.sha256 = hex(d.digest);
    for (let attempt = 0; ; attempt += 1) {
      if (this.cancelled) return;
      this.sent = 0;
      this.set('sending');
      const headers = { ...this.opts.headers(), 'Content-Digest': `sha-256=:${base64(this.digest)}:`, Overwrite: 'T' };
      const r = await this.send('PUT', this.opts.target(this), headers, this.file, 0, true);
      if (this.cancelled || r.status === -1) return;
      if (r.status === 201 || r.status === 200) { this.stored(JSON.parse(r.text)); return; }
      if ([0, 408, 429, 502, 503, 504].includes(r.status) && attempt < RETRIES) {
        await this.backoff(attempt, r.status, errorOf(r.status, r.text).message);
        continue;
      }
      await this.refused(r.status, r.text);
      return;
    }
  }

  stored(answer) {
    const r = answer.receipt || {};
    if (r.sha256) this.row.dataset.sha256 = r.sha256;
    const name = r.name || this.path;
    const renamed = r.sent_name && r.name && r.sent_name !== r.name;
    const how = r.verified === 'sender' ? 'verified: the SHA-256 matches' : 'stored';
    this.set('done', renamed ? `Stored as “${name}” (the name was taken) · ${how}` : `Stored · ${how}`);
    this.row.dataset.stored = name;
    const receiptName = `${name.split('/').pop()}.ferry-receipt.json`;
    this.result.replaceChildren(
      el('code', { class: 'digest', title: 'SHA-256', text: r.sha256 || (this.digest ? hex(this.digest) : '') }),
      answer.jws
        ? el('button', { type: 'button', class: 'small', onclick: () => save(receiptName, JSON.stringify(answer, null, 1)) }, 'Save receipt')
        : null,
    );
    if (this.opts.onDone) this.opts.onDone(this, answer);
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
