// The page of a drop link: anyone holding the link sends files into its folder, and nothing
// else. Each file's SHA-256 is computed here and the server stores the file only if what
// arrived matches; the sender gets a signed receipt for each file.

import { el, fill, bytes, base64 } from './ui.js';
import { Uploader, dropped, picked } from './upload.js';

const body = document.body;
const token = location.pathname.split('/')[2] || '';
const needsPassword = body.dataset.password === 'yes';
const app = document.getElementById('drop-app');

let password = '';
const passInput = el('input', { type: 'password', id: 'link-password', autocomplete: 'off', 'aria-describedby': 'pw-msg' });
const passMsg = el('p', { class: 'error', id: 'pw-msg', role: 'alert' });
const fileInput = el('input', { type: 'file', multiple: true, hidden: true, id: 'pick-files' });
const zone = el('div', { class: 'dropzone big', id: 'dropzone', tabindex: '0', role: 'button' },
  el('strong', {}, 'Drop files here'), el('span', {}, ' or '),
  el('button', { type: 'button', id: 'choose', onclick: (e) => { e.stopPropagation(); fileInput.click(); } }, 'choose files'));
const queue = el('section', { class: 'uploads', 'aria-label': 'Uploads' });

const uploader = new Uploader(queue, {
  tus: `/d/${encodeURIComponent(token)}/tus/`,
  name: (item) => item.path,
  headers: () => (password ? { Authorization: `Basic ${base64(new TextEncoder().encode(`:${password}`))}` } : {}),
  canReplace: false,
  authFailed: 'Not sent: the password was refused',
  onAuth: () => {
    uploader.stopAll('Stopped: the password was refused');
    passMsg.textContent = 'That password is wrong. Enter it again and send the files again.';
    passInput.value = '';
    passInput.focus();
  },
});

/** Queues files; a folder's files are sent by their own names (a link has no subfolders). */
function send(entries) {
  if (!entries.length) return;
  if (needsPassword) {
    password = passInput.value;
    if (!password) {
      passMsg.textContent = 'This link needs its password: enter it first.';
      passInput.focus();
      return;
    }
    passMsg.textContent = '';
  }
  uploader.add(entries.map(({ file }) => ({ file, path: file.name })));
}

fileInput.addEventListener('change', () => { send(picked(fileInput)); fileInput.value = ''; });
zone.addEventListener('click', () => fileInput.click());
zone.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); fileInput.click(); } });
let depth = 0;
body.addEventListener('dragenter', (e) => { e.preventDefault(); depth += 1; body.classList.add('dragging'); });
body.addEventListener('dragleave', () => { depth = Math.max(0, depth - 1); if (!depth) body.classList.remove('dragging'); });
body.addEventListener('dragover', (e) => e.preventDefault());
body.addEventListener('drop', async (e) => {
  e.preventDefault();
  depth = 0;
  body.classList.remove('dragging');
  send(await dropped(e.dataTransfer));
});

const limits = [];
const { filesLeft, bytesLeft, expires } = body.dataset;
if (filesLeft) limits.push(`${filesLeft} more file${filesLeft === '1' ? '' : 's'}`);
if (bytesLeft) limits.push(`${bytes(Number(bytesLeft))} more in all`);
const lines = [];
if (limits.length) lines.push(`This link takes ${limits.join(' and ')}.`);
if (expires) lines.push(`It works until ${new Date(Number(expires) * 1000).toLocaleString()}.`);

fill(app,
  needsPassword ? el('div', { class: 'password' }, el('label', { for: 'link-password' }, 'This link needs a password'), passInput, passMsg) : null,
  zone, fileInput,
  lines.length ? el('p', { class: 'muted limits', text: lines.join(' ') }) : null,
  queue);
