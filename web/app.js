// ferry's web app for account holders: log in, browse the home, upload (each file verified by
// SHA-256 before it is stored), download, make folders, rename or move, delete, see the quota
// and any file's SHA-256. Every request goes to this origin; changes carry the session's CSRF
// token. Names are shown as text, never as markup.

import { el, fill, bytes, when, errorOf } from './ui.js';
import { Uploader, dropped, picked, refusedName } from './upload.js';

const root = document.getElementById('app');
let session = null; // {user, csrf}
let view = null; // the browse view while logged in

/** A request to the JSON API; throws an Error with `code` and `status` on a refusal. */
async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: {} };
  if (method !== 'GET' && session) init.headers['X-Ferry-Csrf'] = session.csrf;
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (_) {
    throw Object.assign(new Error('The server cannot be reached; check the connection and try again.'), { code: 'network', status: 0 });
  }
  const text = await res.text();
  if (res.ok) return text ? JSON.parse(text) : {};
  const err = errorOf(res.status, text);
  if (res.status === 401 && session && path !== '/api/login') {
    session = null;
    showLogin('Your session has ended; log in again.');
  }
  throw Object.assign(new Error(err.message), { code: err.error, status: res.status });
}

/** A remote path in a URL: each segment escaped on its own. */
const enc = (path) => path.split('/').filter(Boolean).map(encodeURIComponent).join('/');
const join = (dir, name) => (dir === '/' ? `/${name}` : `${dir}/${name}`);
const parent = (path) => path.slice(0, path.lastIndexOf('/')) || '/';
const baseName = (path) => path.slice(path.lastIndexOf('/') + 1);

// ---- login ----

function showLogin(message = '') {
  // Whatever the last view still had queued or under way stops here: sent later, it would
  // go with the session of whoever logs in next.
  if (view) {
    view.uploader.stopAll('Stopped: you are no longer logged in');
    // The queue goes with the view: say what it had not stored.
    const left = view.uploader.unstored();
    if (left.length) {
      const shown = left.slice(0, 10).join(', ') + (left.length > 10 ? ` and ${left.length - 10} more` : '');
      message = `${message} Not stored: ${shown}. Send ${left.length === 1 ? 'it' : 'them'} again after logging in.`.trim();
    }
  }
  view = null;
  const user = el('input', { name: 'user', autocomplete: 'username', required: true, autofocus: true, spellcheck: 'false', autocapitalize: 'off' });
  const pass = el('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const msg = el('p', { class: 'error', role: 'alert', text: message });
  const button = el('button', { type: 'submit' }, 'Log in');
  const form = el('form', { class: 'login', id: 'login' },
    el('h1', {}, el('span', { class: 'brand' }, 'ferry')),
    el('label', {}, 'User name', user),
    el('label', {}, 'Password', pass),
    button, msg,
    el('p', { class: 'muted' }, 'Were you given a link to send files? Open that link instead; it needs no account.'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    button.disabled = true;
    msg.textContent = '';
    try {
      session = await api('POST', '/api/login', { user: user.value, password: pass.value });
      showApp();
    } catch (err) {
      pass.value = '';
      msg.textContent = err.status === 401 ? 'Wrong user name or password.'
        : err.status === 429 ? 'Too many failed attempts; wait a while before trying again.'
          : err.message;
      button.disabled = false;
      pass.focus();
    }
  });
  document.title = 'ferry: log in';
  fill(root, form);
  (user.value ? pass : user).focus();
}

// ---- the browse view ----

class Browse {
  constructor() {
    this.session = session; // the session this view acts for, and no other
    this.cwd = '/';
    this.entries = [];
    this.next = null;
    this.sort = { key: 'name', dir: 1 };
    this.made = new Map(); // folders made for uploads this session: path → promise
    this.flashEl = el('p', { class: 'flash', role: 'status' });
    this.usageEl = el('span', { class: 'usage' });
    this.crumbs = el('nav', { class: 'crumbs', 'aria-label': 'Folder' });
    this.tbody = el('tbody');
    this.more = el('button', { type: 'button', class: 'more', hidden: true, onclick: () => this.load(true) }, 'Show more');
    this.keyEl = el('p', { class: 'muted key' });
    const fileInput = el('input', { type: 'file', multiple: true, hidden: true, id: 'pick-files' });
    const dirInput = el('input', { type: 'file', multiple: true, hidden: true, webkitdirectory: true, id: 'pick-folder' });
    fileInput.addEventListener('change', () => { this.upload(picked(fileInput)); fileInput.value = ''; });
    dirInput.addEventListener('change', () => { this.upload(picked(dirInput)); dirInput.value = ''; });
    const head = (key, label) => el('th', { scope: 'col', class: `sort-${key}` },
      el('button', { type: 'button', class: 'sort', dataset: { key }, onclick: () => this.sortBy(key) }, label));
    this.table = el('table', { class: 'files' },
      el('thead', {}, el('tr', {}, head('name', 'Name'), head('size', 'Size'), head('mtime', 'Modified'),
        el('th', { scope: 'col', class: 'actions' }, el('span', { class: 'visually-hidden' }, 'Actions')))),
      this.tbody);
    const uploads = el('section', { class: 'uploads', 'aria-label': 'Uploads' });
    this.dropHint = el('span', {});
    this.uploader = new Uploader(uploads, {
      target: (item) => {
        if (session !== this.session) throw new Error('you are no longer logged in');
        return { url: `/f/${enc(item.path)}`, headers: { 'X-Ferry-Csrf': this.session.csrf } };
      },
      prepare: (item) => this.parents(item.path),
      same: async (item) => {
        const r = await this.call('GET', `/api/sha256?path=${encodeURIComponent(item.path)}`);
        return r.sha256 === item.row.dataset.sha256;
      },
      canReplace: true,
      authFailed: 'Not stored: the session ended; log in again and send it again',
      onDone: (item) => { if (parent(item.path) === this.cwd || parent(item.path).startsWith(`${this.cwd}/`) || this.cwd === '/') this.soon(); },
      onAuth: () => { this.uploader.stopAll('Stopped: the session ended'); showLogin('Your session has ended; log in again.'); },
    });
    this.node = el('div', { class: 'browse' },
      el('header', { class: 'bar' },
        el('span', { class: 'brand' }, 'ferry'),
        el('span', { class: 'who', text: session.user }),
        this.usageEl,
        el('button', { type: 'button', class: 'small', id: 'logout', onclick: () => this.logout() }, 'Log out')),
      this.crumbs,
      el('div', { class: 'toolbar' },
        el('button', { type: 'button', id: 'upload-files', onclick: () => fileInput.click() }, 'Upload files'),
        el('button', { type: 'button', id: 'upload-folder', onclick: () => dirInput.click() }, 'Upload a folder'),
        el('button', { type: 'button', id: 'new-folder', onclick: () => this.newFolder() }, 'New folder'),
        el('button', { type: 'button', class: 'quiet', onclick: () => this.load() }, 'Refresh'),
        fileInput, dirInput),
      el('div', { class: 'dropzone', id: 'dropzone' }, 'Drop files or folders anywhere on this page to upload them to ', this.dropHint, '.'),
      this.flashEl, uploads, this.table, this.more, this.keyEl);
    this.dragging(document.body);
    window.addEventListener('hashchange', () => { if (view === this) this.go(); });
  }

  /** A request to the API for this view's session; refused once another holds the tab. */
  call(method, path, body) {
    if (session !== this.session) {
      return Promise.reject(Object.assign(new Error('You are no longer logged in.'), { code: 'auth', status: 401 }));
    }
    return api(method, path, body);
  }

  start() {
    fill(root, this.node);
    this.go();
    this.usage();
    this.key();
  }

  /** Opens the folder the address names (`#/docs`). */
  go() {
    let path = '/';
    try { path = decodeURIComponent(location.hash.slice(1)) || '/'; } catch (_) { /* a bad escape: the home */ }
    if (!path.startsWith('/')) path = '/';
    if (path.length > 1 && path.endsWith('/')) path = path.slice(0, -1);
    this.cwd = path;
    this.flash('');
    this.drawCrumbs();
    this.dropHint.textContent = path === '/' ? 'your home folder' : path;
    document.title = `ferry: ${path}`;
    this.load();
  }

  drawCrumbs() {
    const parts = this.cwd.split('/').filter(Boolean);
    const links = [el('a', { href: '#/' }, 'Home')];
    let acc = '';
    for (const p of parts) {
      acc += `/${p}`;
      links.push(el('span', { class: 'sep', 'aria-hidden': 'true' }, ' / '), el('a', { href: `#${encodeURI(acc).replace(/#/g, '%23')}` }, p));
    }
    fill(this.crumbs, links);
  }

  flash(text, kind = 'error') {
    this.flashEl.textContent = text;
    this.flashEl.className = `flash ${kind}`;
  }

  /** Loads the folder's first page, or (`more`) the next. */
  async load(more = false) {
    const dir = this.cwd;
    let url = `/api/ls?path=${encodeURIComponent(dir)}`;
    if (more && this.next) url += `&cursor=${encodeURIComponent(this.next)}`;
    try {
      const page = await this.call('GET', url);
      if (dir !== this.cwd) return;
      this.entries = more ? this.entries.concat(page.entries) : page.entries;
      this.next = page.next;
      this.draw();
    } catch (e) {
      if (e.status === 401) return;
      this.entries = [];
      this.next = null;
      this.draw();
      this.flash(e.code === 'not_found' ? `There is no folder ${dir}.` : e.message);
    }
  }

  /** Reloads the listing and the usage a moment after uploads land. */
  soon() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => { this.load(); this.usage(); }, 400);
  }

  sortBy(key) {
    this.sort = this.sort.key === key ? { key, dir: -this.sort.dir } : { key, dir: 1 };
    this.draw();
  }

  sorted() {
    const { key, dir } = this.sort;
    const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });
    return [...this.entries].sort((a, b) => {
      const da = a.kind === 'dir' ? 0 : 1;
      const db = b.kind === 'dir' ? 0 : 1;
      if (da !== db) return da - db;
      const c = key === 'name' ? collator.compare(a.name, b.name) : (a[key] - b[key]) || collator.compare(a.name, b.name);
      return c * dir;
    });
  }

  draw() {
    for (const th of this.table.querySelectorAll('th')) th.removeAttribute('aria-sort');
    const th = this.table.querySelector(`th.sort-${this.sort.key}`);
    if (th) th.setAttribute('aria-sort', this.sort.dir > 0 ? 'ascending' : 'descending');
    const rows = this.sorted().map((e) => this.row(e));
    if (!rows.length) {
      rows.push(el('tr', { class: 'empty' }, el('td', { colspan: 4 }, 'This folder is empty. Drop files here, or use “Upload files”.')));
    }
    fill(this.tbody, rows);
    this.more.hidden = !this.next;
  }

  row(e) {
    const path = join(this.cwd, e.name);
    let name;
    if (e.kind === 'dir') name = el('a', { href: `#${encodeURI(path).replace(/#/g, '%23')}`, class: 'dir' }, `${e.name}/`);
    // A name no URL of ours may hold (a backslash, put there on the server's disk) gets no
    // link: following it would cost this address a penalty.
    else if (e.kind === 'file' && !refusedName(e.name)) name = el('a', { href: `/f/${enc(path)}`, download: e.name, class: 'file' }, e.name);
    else name = el('span', { class: 'other', title: e.kind }, e.name);
    const tr = el('tr', { dataset: { name: e.name, kind: e.kind } },
      el('td', { class: 'name' }, name),
      el('td', { class: 'size' }, e.kind === 'dir' ? '' : bytes(e.size)),
      el('td', { class: 'mtime' }, when(e.mtime)),
      el('td', { class: 'actions' }));
    const actions = tr.lastChild;
    if (e.kind === 'file') {
      actions.append(el('button', { type: 'button', class: 'small sha', onclick: () => this.sha(tr, path) }, 'SHA-256'));
    }
    actions.append(
      el('button', { type: 'button', class: 'small rename', onclick: () => this.rename(tr, e) }, 'Rename'),
      el('button', { type: 'button', class: 'small danger delete', onclick: () => this.remove(e) }, 'Delete'));
    return tr;
  }

  async sha(tr, path) {
    const btn = tr.querySelector('button.sha');
    btn.disabled = true;
    btn.textContent = 'Hashing…';
    try {
      const r = await this.call('GET', `/api/sha256?path=${encodeURIComponent(path)}`);
      const detail = el('tr', { class: 'detail' }, el('td', { colspan: 4 },
        'SHA-256 ', el('code', { class: 'digest', text: r.sha256 })));
      tr.after(detail);
      btn.remove();
    } catch (e) {
      btn.disabled = false;
      btn.textContent = 'SHA-256';
      this.flash(e.message);
    }
  }

  rename(tr, e) {
    const from = join(this.cwd, e.name);
    const input = el('input', { value: e.name, 'aria-label': 'New name, or a path to move to', spellcheck: 'false' });
    const cell = tr.querySelector('td.name');
    const old = [...cell.childNodes];
    const cancel = () => cell.replaceChildren(...old);
    const form = el('form', { class: 'inline' }, input,
      el('button', { type: 'submit', class: 'small' }, 'Save'),
      el('button', { type: 'button', class: 'small quiet', onclick: cancel }, 'Cancel'));
    input.addEventListener('keydown', (k) => { if (k.key === 'Escape') cancel(); });
    form.addEventListener('submit', async (s) => {
      s.preventDefault();
      const v = input.value.trim();
      if (!v || v === e.name) { cancel(); return; }
      const to = v.startsWith('/') ? v : join(this.cwd, v);
      try {
        await this.call('POST', '/api/rename', { path: from, to, replace: false });
      } catch (err) {
        if (err.code !== 'already_exists') { this.flash(err.message); return; }
        if (!window.confirm(`“${to}” exists. Replace it?`)) return;
        try { await this.call('POST', '/api/rename', { path: from, to, replace: true }); } catch (err2) { this.flash(err2.message); return; }
      }
      this.flash(`Renamed “${e.name}” to “${to}”.`, 'ok');
      this.load();
    });
    cell.replaceChildren(form);
    input.focus();
    input.setSelectionRange(0, e.kind === 'file' && e.name.lastIndexOf('.') > 0 ? e.name.lastIndexOf('.') : e.name.length);
  }

  async remove(e) {
    const path = join(this.cwd, e.name);
    const what = e.kind === 'dir' ? 'folder' : 'file';
    if (!window.confirm(`Delete the ${what} “${e.name}”? This cannot be undone.`)) return;
    try {
      await this.call('POST', e.kind === 'dir' ? '/api/rmdir' : '/api/remove', { path });
      this.flash(`Deleted “${e.name}”.`, 'ok');
      this.load();
      this.usage();
    } catch (err) {
      this.flash(err.code === 'directory_not_empty' ? `The folder “${e.name}” is not empty.` : err.message);
    }
  }

  newFolder() {
    if (this.tbody.querySelector('tr.new')) return;
    const input = el('input', { 'aria-label': 'Folder name', placeholder: 'Folder name', spellcheck: 'false' });
    const tr = el('tr', { class: 'new' });
    const form = el('form', { class: 'inline' }, input,
      el('button', { type: 'submit', class: 'small' }, 'Create'),
      el('button', { type: 'button', class: 'small quiet', onclick: () => tr.remove() }, 'Cancel'));
    input.addEventListener('keydown', (k) => { if (k.key === 'Escape') tr.remove(); });
    form.addEventListener('submit', async (s) => {
      s.preventDefault();
      const name = input.value.trim();
      if (!name) return;
      try {
        await this.call('POST', '/api/mkdir', { path: join(this.cwd, name) });
        this.flash(`Made the folder “${name}”.`, 'ok');
        this.load();
      } catch (err) {
        this.flash(err.code === 'already_exists' ? `“${name}” already exists.` : err.message);
      }
    });
    tr.append(el('td', { colspan: 4 }, form));
    this.tbody.prepend(tr);
    input.focus();
  }

  /** Makes the folders an upload's path needs (a folder upload), once each. */
  async parents(path) {
    const dirs = [];
    for (let p = parent(path); p !== '/'; p = parent(p)) dirs.unshift(p);
    for (const d of dirs) {
      if (!this.made.has(d)) {
        this.made.set(d, this.call('POST', '/api/mkdir', { path: d }).catch((e) => {
          if (e.code !== 'already_exists') { this.made.delete(d); throw e; }
        }));
      }
      await this.made.get(d);
    }
  }

  upload(entries) {
    if (!entries.length) return;
    this.made.clear();
    this.uploader.add(entries.map(({ file, path }) => ({ file, path: join(this.cwd, path) })));
  }

  dragging(target) {
    let depth = 0;
    const on = (v) => document.body.classList.toggle('dragging', v);
    target.addEventListener('dragenter', (e) => { if (view !== this) return; e.preventDefault(); depth += 1; on(true); });
    target.addEventListener('dragleave', () => { depth = Math.max(0, depth - 1); if (!depth) on(false); });
    target.addEventListener('dragover', (e) => { if (view === this) e.preventDefault(); });
    target.addEventListener('drop', async (e) => {
      if (view !== this) return;
      e.preventDefault();
      depth = 0;
      on(false);
      try { this.upload(await dropped(e.dataTransfer)); } catch (err) { this.flash(`Could not read what was dropped: ${err.message}`); }
    });
  }

  async usage() {
    try {
      const u = await this.call('GET', '/api/usage');
      const used = u.used_bytes || 0;
      const parts = [];
      let meter = null;
      if (u.quota_bytes) {
        parts.push(`${bytes(used)} of ${bytes(u.quota_bytes)} used`);
        meter = el('meter', { min: 0, max: u.quota_bytes, value: used, high: u.quota_bytes * 0.9, title: `${Math.round((100 * used) / u.quota_bytes)}%` });
      } else {
        parts.push(`${bytes(used)} used`);
      }
      if (u.quota_files) parts.push(`${u.used_files || 0} of ${u.quota_files} files`);
      if (u.disk_free_bytes !== undefined && !u.quota_bytes) parts.push(`${bytes(u.disk_free_bytes)} free on disk`);
      fill(this.usageEl, meter, el('span', { class: 'usage-text', text: parts.join(' · ') }));
    } catch (_) { /* the listing says what went wrong */ }
  }

  async key() {
    try {
      const jwk = await this.call('GET', '/.well-known/ferry-receipt-key');
      this.keyEl.textContent = `Upload receipts are signed by this server's key ${jwk.kid}.`;
    } catch (_) { this.keyEl.textContent = ''; }
  }

  async logout() {
    try { await this.call('POST', '/api/logout'); } catch (_) { /* ended anyway */ }
    session = null;
    showLogin('You have logged out.');
  }
}

function showApp() {
  view = new Browse();
  view.start();
}

// A reload keeps the session (the cookie): ask who we are.
(async () => {
  try {
    session = await api('GET', '/api/session');
    showApp();
  } catch (e) {
    session = null;
    showLogin(e.status === 401 ? '' : e.message);
  }
})();
