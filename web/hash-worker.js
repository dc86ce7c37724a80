// SHA-256 for the upload queue, in a Worker so the page stays responsive. Files are read in
// slices and never held whole. hash-wasm (vendored, MIT) does the hashing in WebAssembly:
// WebCrypto has no incremental digest. Its state can be saved (about 100 bytes) and loaded,
// which is what lets an upload go on from where the server stands after a cut or a reload.
//
// Requests are handled one at a time, in order (they share one hasher):
//   {id, op: 'chunk', file, start, end, state, final} → {size, chunk, after, whole}
//       the length of [start, end) as read, its own SHA-256 (for Upload-Checksum),
//       the running state after them (from `state`, or from the start when null), and the
//       whole file's SHA-256 when `final`
//   {id, op: 'prefix', file, end} → {state}: the running state after [0, end)
//   {id, op: 'whole', file} → {digest}: the file's SHA-256
//   {id, op: 'head', file} → {digest}: the SHA-256 of the first MiB (to recognise a file)
// Long operations post {id, progress: bytes} as they go. A failure answers {id, error}.
'use strict';
importScripts('/assets/vendor/hash-wasm/sha256.umd.min.js');

const SLICE = 4 * 1024 * 1024;
let hasher = null;
let queue = Promise.resolve();

async function run(m) {
  if (!hasher) hasher = await self.hashwasm.createSHA256();
  const { id, op, file } = m;
  const slices = async (end) => {
    for (let at = 0; at < end;) {
      const to = Math.min(at + SLICE, end);
      hasher.update(new Uint8Array(await file.slice(at, to).arrayBuffer()));
      at = to;
      self.postMessage({ id, progress: at });
    }
  };
  switch (op) {
    case 'chunk': {
      if (m.state) hasher.load(m.state); else hasher.init();
      const buf = await file.slice(m.start, m.end).arrayBuffer();
      if (buf.byteLength !== m.end - m.start) throw new Error('the file changed while it was read');
      // WebCrypto hashes the chunk on a thread of its own (it copies the bytes first) while
      // hash-wasm adds them to the running digest here: two cores, one pass each.
      const own = crypto.subtle.digest('SHA-256', buf);
      hasher.update(new Uint8Array(buf));
      const after = hasher.save();
      const chunk = new Uint8Array(await own);
      const whole = m.final ? hasher.digest('binary') : null;
      self.postMessage({ id, size: buf.byteLength, chunk, after, whole });
      return;
    }
    case 'prefix':
      hasher.init();
      await slices(m.end);
      self.postMessage({ id, state: hasher.save() });
      return;
    case 'whole':
      hasher.init();
      await slices(file.size);
      self.postMessage({ id, digest: hasher.digest('binary') });
      return;
    case 'head': {
      const buf = await file.slice(0, Math.min(file.size, 1024 * 1024)).arrayBuffer();
      self.postMessage({ id, digest: new Uint8Array(await crypto.subtle.digest('SHA-256', buf)) });
      return;
    }
    default:
      throw new Error(`unknown operation ${op}`);
  }
}

self.onmessage = (ev) => {
  const m = ev.data;
  queue = queue.then(() => run(m)).catch((e) => {
    // A file changed or removed while it was read lands here (NotReadableError).
    self.postMessage({ id: m.id, error: String((e && e.message) || e), name: e && e.name });
  });
};
