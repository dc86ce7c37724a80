//! Anonymous memory mapped from the kernel and unmapped on drop, for large working buffers
//! (argon2's memory, direct I/O blocks): page-aligned, zero-filled on first touch, and given
//! back to the system the moment the owner is done instead of staying in the heap. (Where
//! there is no such mapping, [`crate::platform`] takes the memory from the allocator.)

use std::io;
use std::ptr::NonNull;

use crate::platform;

/// A private anonymous mapping of a fixed length, owned exclusively.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a `Mapping` owns its memory exclusively; moving it to another thread moves that
// ownership, and nothing else points into it.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps `len` bytes (at least one page), readable and writable, zero-filled.
    pub fn new(len: usize) -> io::Result<Mapping> {
        let len = len.max(1);
        let ptr = platform::map_zeroed(len)?;
        Ok(Mapping { ptr, len })
    }

    /// Asks for transparent huge pages where the kernel allows them (`madvise` or `always`
    /// mode): a few faults instead of one per 4 KiB page. A hint; failure changes nothing.
    pub fn prefer_huge_pages(&self) {
        platform::advise_huge_pages(self.ptr, self.len);
    }

    /// The start of the mapping (page-aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes (zero-filled, then only written through
        // `bytes_mut`), owned by `self` and borrowed shared here.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, borrowed mutably, so no other reference exists.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: gives back exactly the memory of `new`, once; no borrow of it outlives
        // `self`.
        unsafe { platform::unmap(self.ptr, self.len) }
    }
}
