// What the page remembers of unfinished uploads, so that after a reload (or a closed tab) the
// user can pick the same file again and the upload goes on where the server stands. Kept in
// IndexedDB ('ferry' / 'uploads'): the upload's address, where it was acknowledged, and the
// SHA-256 state there. A file is recognised by its name, size, modification time and the
// SHA-256 of its first MiB; that is only a hint, as the whole file's digest decides at the end.
// Entries go when the upload ends, and after a day.

const DAY = 24 * 3600 * 1000;
let db = null;

function open() {
  if (db) return db;
  db = new Promise((resolve) => {
    let req;
    try { req = indexedDB.open('ferry', 1); } catch (_) { resolve(null); return; }
    req.onupgradeneeded = () => req.result.createObjectStore('uploads');
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => resolve(null); // a private window may refuse: no resume after reload
  });
  return db;
}

async function tx(mode, f) {
  const d = await open();
  if (!d) return undefined;
  return new Promise((resolve) => {
    const t = d.transaction('uploads', mode);
    const r = f(t.objectStore('uploads'));
    t.oncomplete = () => resolve(r && r.result);
    t.onerror = () => resolve(undefined);
    t.onabort = () => resolve(undefined);
  });
}

/** The remembered upload of `key`, if any and not stale. */
export async function recall(key) {
  const v = await tx('readonly', (s) => s.get(key));
  if (!v) return null;
  if (Date.now() - v.created > DAY) { forget(key); return null; }
  return v;
}

export function remember(key, value) {
  return tx('readwrite', (s) => s.put(value, key));
}

export function forget(key) {
  return tx('readwrite', (s) => s.delete(key));
}

/** Drops entries older than a day. */
export async function sweep() {
  const d = await open();
  if (!d) return;
  const t = d.transaction('uploads', 'readwrite');
  const req = t.objectStore('uploads').openCursor();
  req.onsuccess = () => {
    const c = req.result;
    if (!c) return;
    if (!c.value || Date.now() - c.value.created > DAY) c.delete();
    c.continue();
  };
}
