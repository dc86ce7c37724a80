// The SHA-256 of a file, in a Worker so the page stays responsive. The file is read in slices
// and never held whole, so a file of any size takes a few MiB of memory. hash-wasm (vendored,
// MIT) does the hashing in WebAssembly: WebCrypto has no incremental digest.
'use strict';
importScripts('/assets/vendor/hash-wasm/sha256.umd.min.js');

const SLICE = 4 * 1024 * 1024;

self.onmessage = async (ev) => {
  const { file } = ev.data;
  try {
    const hasher = await self.hashwasm.createSHA256();
    hasher.init();
    let done = 0;
    while (done < file.size) {
      const end = Math.min(done + SLICE, file.size);
      const buf = await file.slice(done, end).arrayBuffer();
      hasher.update(new Uint8Array(buf));
      done = end;
      self.postMessage({ type: 'progress', done });
    }
    const digest = hasher.digest('binary');
    self.postMessage({ type: 'done', digest }, [digest.buffer]);
  } catch (e) {
    // A file changed or removed while it was read lands here (NotReadableError).
    self.postMessage({ type: 'error', message: String((e && e.message) || e) });
  }
};
