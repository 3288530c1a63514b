/// With the `mimalloc` feature (on by default) the process allocates with
/// mimalloc instead of the system allocator: about 10 % less CPU per proxied
/// request (docs/performance.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: allocator::Mimalloc = allocator::Mimalloc;

/// mimalloc as the global allocator, asking for alignment only when it
/// matters. The `mimalloc` crate's allocator calls `mi_malloc_aligned` for
/// every allocation, whose fast path serves only small sizes and whose
/// slow path over-allocates every larger size that is not a power of two
/// (hyper's 8 KiB-and-more read buffers, for one). Like the standard
/// library's allocator over `malloc`, this one calls plain `mi_malloc`
/// when the alignment is at most the 16 bytes every block of 16 bytes or
/// more already has, and the aligned calls otherwise. Measured with
/// `benches/instructions.sh` (callgrind, release build): 47,051 → 46,490
/// user-space instructions per proxied request.
#[cfg(feature = "mimalloc")]
mod allocator {
    use std::alloc::{GlobalAlloc, Layout};
    use std::ffi::c_void;

    use libmimalloc_sys as mi;

    /// The alignment of every mimalloc block of at least this size.
    const MIN_ALIGN: usize = 16;

    fn plain(align: usize, size: usize) -> bool {
        align <= MIN_ALIGN && align <= size
    }

    /// An allocation by `plain` or, where the alignment asks more, by
    /// `aligned`.
    ///
    /// # Safety
    /// As [`GlobalAlloc::alloc`]; the two are mimalloc's calls of one kind.
    #[inline(always)]
    unsafe fn allocate(
        layout: Layout,
        plain_call: unsafe extern "C" fn(usize) -> *mut c_void,
        aligned_call: unsafe extern "C" fn(usize, usize) -> *mut c_void,
    ) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: mimalloc's C API, called as documented.
        unsafe {
            if plain(align, size) {
                plain_call(size).cast()
            } else {
                aligned_call(size, align).cast()
            }
        }
    }

    pub struct Mimalloc;

    // SAFETY: each call hands mimalloc a layout it serves as asked: plain
    // allocations only where mimalloc's own alignment satisfies `align`,
    // and memory is freed and resized by the allocator that made it.
    unsafe impl GlobalAlloc for Mimalloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: as the trait requires of the caller.
            unsafe { allocate(layout, mi::mi_malloc, mi::mi_malloc_aligned) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: as the trait requires of the caller.
            unsafe { allocate(layout, mi::mi_zalloc, mi::mi_zalloc_aligned) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
            // SAFETY: `ptr` came from this allocator.
            unsafe { mi::mi_free(ptr.cast::<c_void>()) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let align = layout.align();
            // SAFETY: `ptr` came from this allocator with `layout`.
            unsafe {
                if plain(align, new_size) {
                    mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
                } else {
                    mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, align).cast()
                }
            }
        }
    }
}

fn main() {
    std::process::exit(tollgate::cli::main());
}
