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
    this.links = new Links(this);
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
      tus: '/tus/',
      name: (item) => item.path,
      headers: () => {
        if (session !== this.session) throw new Error('you are no longer logged in');
        return { 'X-Ferry-Csrf': this.session.csrf };
      },
      target: (item) => `/f/${enc(item.path)}`,
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
        el('button', { type: 'button', class: 'quiet', id: 'links-button', onclick: () => this.links.toggle() }, 'Links'),
        el('button', { type: 'button', class: 'quiet', onclick: () => this.load() }, 'Refresh'),
        fileInput, dirInput),
      el('div', { class: 'dropzone', id: 'dropzone' }, 'Drop files or folders anywhere on this page to upload them to ', this.dropHint, '.'),
      this.links.node, this.flashEl, uploads, this.table, this.more, this.keyEl);
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
    if (e.kind === 'file' || e.kind === 'dir') {
      actions.append(el('button', { type: 'button', class: 'small share', onclick: () => this.links.form(path, e.kind) }, 'Share'));
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
      // A user without a quota is not counted: the server says nothing of use then.
      const used = u.used_bytes;
      const parts = [];
      let meter = null;
      if (u.quota_bytes && used !== undefined) {
        parts.push(`${bytes(used)} of ${bytes(u.quota_bytes)} used`);
        meter = el('meter', { min: 0, max: u.quota_bytes, value: used, high: u.quota_bytes * 0.9, title: `${Math.round((100 * used) / u.quota_bytes)}%` });
      } else if (used !== undefined) {
        parts.push(`${bytes(used)} used`);
      } else {
        parts.push('no quota');
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

// ---- links: drop links into a folder, download links to a file or folder ----

const DAY = 24 * 3600;

class Links {
  constructor(browse) {
    this.browse = browse;
    this.formEl = el('div', { class: 'link-form' });
    this.listEl = el('div', { class: 'link-list' });
    this.node = el('section', { class: 'links panel', hidden: true, 'aria-label': 'Links' },
      el('div', { class: 'panel-head' }, el('h2', {}, 'Links'),
        el('button', { type: 'button', class: 'small quiet', onclick: () => { this.node.hidden = true; } }, 'Close')),
      el('p', { class: 'muted' }, 'A drop link lets anyone who has it send files into a folder, and nothing else. A download link lets them download a file or a folder. Use “Share” on a row to make one.'),
      this.formEl, this.listEl);
  }

  toggle() {
    this.node.hidden = !this.node.hidden;
    if (!this.node.hidden) this.refresh();
  }

  /** The form that makes a link for `path` (a folder: either kind; a file: download). */
  form(path, kind) {
    this.node.hidden = false;
    this.refresh();
    const isDir = kind === 'dir';
    const choice = (value, label, checked) => el('label', { class: 'choice' },
      el('input', { type: 'radio', name: 'link-kind', value, checked }), ` ${label}`);
    const expires = el('select', { id: 'link-expires' },
      el('option', { value: String(DAY) }, '1 day'),
      el('option', { value: String(7 * DAY), selected: true }, '7 days'),
      el('option', { value: String(30 * DAY) }, '30 days'),
      el('option', { value: 'never' }, 'never'));
    const num = (id, placeholder) => el('input', { type: 'number', min: '1', step: '1', id, placeholder, inputmode: 'numeric' });
    const maxFiles = num('link-max-files', 'no limit');
    const maxMb = num('link-max-mb', 'no limit');
    const maxDownloads = num('link-max-downloads', 'no limit');
    const password = el('input', { type: 'password', id: 'link-password', autocomplete: 'new-password', placeholder: 'none' });
    const note = el('input', { id: 'link-note', maxlength: '200', placeholder: 'shown to the people you send it to' });
    const upOnly = el('div', { class: 'upload-only' },
      el('label', {}, 'At most this many files ', maxFiles),
      el('label', {}, 'At most this many MB in all ', maxMb));
    const downOnly = el('div', { class: 'download-only' }, el('label', {}, 'At most this many downloads ', maxDownloads));
    const kinds = isDir
      ? el('fieldset', { class: 'kinds' },
        el('legend', {}, `For ${path}`),
        choice('upload', 'Let people send files into this folder', true),
        choice('download', 'Let people download this folder', false))
      : el('p', {}, `A download link for ${path}`);
    const current = () => (isDir ? (this.formEl.querySelector('input[name=link-kind]:checked') || {}).value : 'download');
    const sync = () => { upOnly.hidden = current() !== 'upload'; downOnly.hidden = current() !== 'download'; };
    const msg = el('p', { class: 'error', role: 'alert' });
    const result = el('div', { class: 'link-made' });
    const submit = el('button', { type: 'submit' }, 'Make the link');
    const f = el('form', { class: 'link-new', id: 'link-new' }, kinds,
      el('div', { class: 'fields' },
        el('label', {}, 'Expires after ', expires), upOnly, downOnly,
        el('label', {}, 'Password ', password), el('label', {}, 'Note ', note)),
      el('div', { class: 'row' }, submit,
        el('button', { type: 'button', class: 'quiet', onclick: () => fill(this.formEl) }, 'Cancel')),
      msg, result);
    f.addEventListener('change', sync);
    f.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      msg.textContent = '';
      const k = current();
      const n = (input, mult = 1) => (input.value ? Math.round(Number(input.value) * mult) : undefined);
      const body = {
        path, kind: k,
        expires_in: expires.value === 'never' ? null : Number(expires.value),
        password: password.value || undefined,
        note: note.value || undefined,
      };
      if (k === 'upload') { body.max_files = n(maxFiles); body.max_bytes = n(maxMb, 1e6); }
      else body.max_downloads = n(maxDownloads);
      submit.disabled = true;
      try {
        const made = await this.browse.call('POST', '/api/links', body);
        const url = `${location.origin}${made.path_in_url}`;
        const box = el('input', { readonly: true, value: url, class: 'url', id: 'link-url', 'aria-label': 'The link' });
        const copy = el('button', { type: 'button', class: 'small', onclick: async () => {
          box.select();
          try { await navigator.clipboard.writeText(url); copy.textContent = 'Copied'; } catch (_) { document.execCommand('copy'); copy.textContent = 'Copied'; }
        } }, 'Copy');
        fill(result, el('p', { class: 'ok' }, 'Here is the link. Copy it now: it is shown only this once.'),
          el('div', { class: 'row' }, box, copy));
        box.focus();
        box.select();
        this.refresh();
      } catch (err) {
        msg.textContent = err.message;
      } finally {
        submit.disabled = false;
      }
    });
    fill(this.formEl, f);
    sync();
    this.node.scrollIntoView({ block: 'start' });
  }

  async refresh() {
    let links;
    try {
      links = (await this.browse.call('GET', '/api/links')).links;
    } catch (err) {
      fill(this.listEl, el('p', { class: 'error', text: err.message }));
      return;
    }
    if (!links.length) {
      fill(this.listEl, el('p', { class: 'muted' }, 'You have no links.'));
      return;
    }
    const use = (l) => {
      if (l.kind === 'upload') {
        const files = `${l.used_files}${l.max_files ? ` of ${l.max_files}` : ''} file${(l.max_files || l.used_files) === 1 ? '' : 's'}`;
        const b = `${bytes(l.used_bytes)}${l.max_bytes ? ` of ${bytes(l.max_bytes)}` : ''}`;
        return `${files}, ${b}`;
      }
      return `${l.used_downloads}${l.max_downloads ? ` of ${l.max_downloads}` : ''} download${(l.max_downloads || l.used_downloads) === 1 ? '' : 's'}`;
    };
    const rows = links.map((l) => el('tr', { dataset: { id: l.id }, class: l.expired ? 'expired' : '' },
      el('td', {}, l.kind === 'upload' ? 'Drop into' : 'Download'),
      el('td', { class: 'path' }, l.path, l.note ? el('div', { class: 'muted', text: l.note }) : null),
      el('td', {}, use(l)),
      el('td', {}, l.expired ? 'expired' : l.expires ? `until ${when(l.expires)}` : 'never expires', l.password ? ' · password' : ''),
      el('td', { class: 'actions' }, el('button', { type: 'button', class: 'small danger revoke', onclick: async () => {
        if (!window.confirm('Revoke this link? It stops working at once.')) return;
        try { await this.browse.call('DELETE', `/api/links?id=${encodeURIComponent(l.id)}`); } catch (err) { this.browse.flash(err.message); }
        this.refresh();
      } }, 'Revoke'))));
    fill(this.listEl, el('table', { class: 'files links-table' },
      el('thead', {}, el('tr', {}, el('th', {}, 'Kind'), el('th', {}, 'Path'), el('th', {}, 'Use'), el('th', {}, 'Expires'), el('th', {}))),
      el('tbody', {}, rows)));
  }
}

function showApp() {
  view = new Browse();
  view.start();
}

// Another tab may have logged out or in as someone else (the cookie is shared): when this
// tab is looked at again, ask, and never act for a session that is gone.
document.addEventListener('visibilitychange', async () => {
  if (document.visibilityState !== 'visible' || !view) return;
  let now = null;
  try { now = await api('GET', '/api/session'); } catch (_) { return; } // a 401 shows the login form
  if (view && (now.user !== view.session.user || now.csrf !== view.session.csrf)) {
    view.uploader.stopAll('Stopped: the tab was logged in again');
    session = now;
    showApp();
    view.flash(`Another tab logged in as ${now.user}; this page now shows that account.`, 'ok');
  }
});

// A long upload is one request per 8 MiB chunk, each of which keeps the session alive; a
// replacement sent whole is one long request: keep the session alive meanwhile.
setInterval(() => {
  if (view && view.uploader.items.some((i) => i.busy())) view.call('GET', '/api/session').catch(() => {});
}, 5 * 60 * 1000);

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
