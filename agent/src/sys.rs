//! The few system calls that neither `nix`, `socket2` nor `aya` wraps. The
//! only module of the agent allowed to use `unsafe`.
//!
//! * `SO_NETNS_COOKIE`: which network namespace a socket lives in.
//! * `bpf(BPF_LINK_GET_FD_BY_ID)`, `bpf(BPF_OBJ_PIN)`, `bpf(BPF_LINK_DETACH)`:
//!   aya hands out a link's descriptor only by value and pins by consuming
//!   it, so a failed re-pin would lose the link. The agent keeps its own
//!   descriptor of every link it attached (a removed pin then cannot detach a
//!   running agent), re-pins from it, and `gatehouse detach --force` detaches
//!   links in the kernel even while another process holds them.
//! * glibc's `malloc_trim` and mimalloc's `mi_collect`: a large parse's
//!   freed tree, and a long value's freed buffer, go back to the kernel.
//! * `splice(2)` without blocking (nix has it only behind a feature this
//!   crate does not build): the opaque TCP relay moves bytes it no longer
//!   records from socket to socket through a pipe, without copying them
//!   through user space.
//! * `setpriority(2)` on one thread: the audit writer runs at a lower nice
//!   value than the sessions (libc only; nix has no per-thread call).
//! * The agent's global allocator ([`Allocator`]), mimalloc's C functions.
//! * `sync_file_range(2)` (nix has none): the audit store's WAL is written
//!   out in the background, so a checkpoint's `fsync` finds little to do.
//! * `mmap(2)` of a file, shared ([`SharedMap`]): the audit journal copies
//!   its entries into the page cache without a `write(2)` each.
#![expect(
    unsafe_code,
    reason = "getsockopt(SO_NETNS_COOKIE), splice(2), three bpf(2) commands, malloc_trim, mi_collect, setpriority, sync_file_range, mmap and the global allocator have no safe wrapper"
)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `SO_NETNS_COOKIE` from <asm-generic/socket.h> (Linux 5.14+).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Commands of `enum bpf_cmd` in <linux/bpf.h>.
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_DETACH: libc::c_long = 34;

/// The cookie of the network namespace `sock` lives in: the same value
/// `bpf_get_netns_cookie` returns in the kernel.
pub fn netns_cookie(sock: &impl AsRawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len: libc::socklen_t = 8; // size of u64
    // SAFETY: `cookie` is a valid, writable u64 for the duration of the call
    // and `len` holds its size; the fd is borrowed from a live socket.
    let rc = unsafe {
        libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, (&raw mut cookie).cast(), &raw mut len)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Moves up to `len` bytes from `from` to `to` (one of them a pipe) in the
/// kernel, without blocking: `WouldBlock` when `from` has nothing or `to`
/// has no room; `Ok(0)` at the end of `from`.
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are borrowed from live objects for the call;
    // null offsets mean "the file position" (required for pipes and sockets).
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `bpf_attr` for BPF_OBJ_PIN (the `pathname`, `bpf_fd`, `file_flags` members).
#[repr(C)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `bpf_attr` for BPF_LINK_GET_FD_BY_ID (`link_id`, `next_id`, `open_flags`).
#[repr(C)]
struct GetFdByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `bpf_attr` for BPF_LINK_DETACH.
#[repr(C)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// Calls bpf(2) with `attr`, which must be the `bpf_attr` member `cmd` reads.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, properly initialised #[repr(C)] struct laid out
    // as the member of `union bpf_attr` this command reads, and its size is
    // passed along; the kernel zero-extends a shorter attr and writes nothing
    // back for these commands. The call has no other memory effects.
    let rc =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr).cast::<libc::c_void>(), size_of::<T>()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// A new descriptor of the BPF link with this id (needs CAP_SYS_ADMIN).
pub fn bpf_link_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = GetFdByIdAttr { id, next_id: 0, open_flags: 0 };
    let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf returned an out-of-range descriptor"))?;
    // SAFETY: on success BPF_LINK_GET_FD_BY_ID returns a new descriptor that
    // nothing else owns; OwnedFd closes it exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Pins the BPF object `fd` refers to at `path` (on a bpffs).
pub fn bpf_obj_pin(fd: BorrowedFd<'_>, path: &CStr) -> io::Result<()> {
    let bpf_fd = u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::other("negative descriptor"))?;
    let mut attr = ObjPinAttr { pathname: path.as_ptr() as u64, bpf_fd, file_flags: 0 };
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Detaches the link `fd` refers to from its hook, whoever else holds it
/// or pins it (Linux 5.9+). The link object lives on, attached to nothing.
pub fn bpf_link_detach(fd: BorrowedFd<'_>) -> io::Result<()> {
    let link_fd = u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::other("negative descriptor"))?;
    let mut attr = LinkDetachAttr { link_fd };
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// glibc's allocations (PostgreSQL's parser, SQLite; the agent's own come
/// from mimalloc) of [`LARGE_ALLOCATION`] and more get pages of their own
/// from the kernel, given back when they are freed.
///
/// By default glibc raises this threshold (up to 32 MiB) each time such a
/// block is freed, so (when message buffers came from glibc) a session's
/// next 15 MB buffer came from a thread's arena; freed, it joined that
/// arena's top chunk, which `malloc_trim` does not give back outside the
/// main arena — the agent's
/// RSS then kept one long value per arena, or not, by where its last small
/// long-lived allocation happened to lie (found when a cache allocated at a
/// session's start moved the idle RSS of four sessions that had each read a
/// 15 MB value from +27 to +41 MiB). A fixed threshold also fixes the trim
/// threshold (glibc's default, 128 KiB), so arenas' tops shrink on free.
pub fn tune_allocator() {
    // SAFETY: mallopt takes plain integers and only sets glibc's own parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE_ALLOCATION);
    }
}

/// glibc's mmap threshold (see [`tune_allocator`]).
pub const LARGE_ALLOCATION: i32 = 1 << 20;

/// Returns the allocators' free memory to the kernel.
///
/// The agent's own allocations come from mimalloc (`main.rs`): per-thread
/// heaps without locks, and frees from another thread (the audit writer
/// dropping what sessions made) that take no arena lock — 6% fewer
/// instructions per select-only statement on the sessions' threads than
/// glibc. mimalloc gives freed memory back after a delay, on its next
/// allocation past it; an agent that goes idle right after a session read a
/// 15 MB value would keep it: `mi_collect(true)` purges now. The C
/// libraries (PostgreSQL's parser, SQLite) still allocate with glibc: a large
/// parse frees a tree of up to ~100 MB in many small chunks, which glibc
/// would keep in its thread's arena without `malloc_trim`.
pub fn release_free_memory() {
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own
    // arenas under their locks. mi_collect takes a flag and only walks
    // mimalloc's own heaps and arenas (thread-safe).
    unsafe {
        libc::malloc_trim(0);
        libmimalloc_sys::mi_collect(true);
    }
}

/// The alignment mimalloc's `mi_malloc` gives every block of at least this
/// size (`MI_MAX_ALIGN_SIZE`, `sizeof(max_align_t)`; its size classes are
/// multiples of 16 bytes), and smaller blocks to the machine word.
const MALLOC_ALIGN: usize = 16;

/// The agent's global allocator (set in `main.rs`): mimalloc, called the way
/// C programs call it.
///
/// The `mimalloc` crate's own `GlobalAlloc` passes every request to
/// `mi_malloc_aligned`, even for the 1- to 16-byte alignments `mi_malloc`
/// gives anyway. mimalloc 3 takes its fast path there only for blocks of at
/// most 1 KiB; a larger block whose size class is not a power of two (a
/// message buffer, a record's JSON) went through its generic aligned path
/// and over-allocated by the alignment, which can move it up a size class:
/// 6.6% of the sessions' instructions per select-only statement were in
/// `mi_malloc_aligned` (callgrind, `bench pg --instructions`). Requests
/// `mi_malloc` satisfies (alignment at most 16 and no larger than the size)
/// go to it and to `mi_realloc`; others keep the aligned calls.
pub struct Allocator;

impl Allocator {
    #[inline]
    fn plain(align: usize, size: usize) -> bool {
        align <= MALLOC_ALIGN && align <= size
    }

    /// A new block for `layout` from `plain` (`mi_malloc`, `mi_zalloc`) when
    /// its alignment suffices, else from `aligned` (their `_aligned` forms).
    #[inline]
    fn new_block(
        layout: std::alloc::Layout,
        plain: unsafe extern "C" fn(usize) -> *mut libc::c_void,
        aligned: unsafe extern "C" fn(usize, usize) -> *mut libc::c_void,
    ) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: mimalloc's allocation calls take plain integers; see the
        // `GlobalAlloc` impl's comment for the alignment.
        unsafe { if Self::plain(align, size) { plain(size).cast() } else { aligned(size, align).cast() } }
    }
}

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free`
// takes blocks from either call); `mi_malloc`, `mi_zalloc` and `mi_realloc`
// are used only where their blocks meet the layout's alignment (see
// `MALLOC_ALIGN`); a null return is passed on, as `GlobalAlloc` expects.
unsafe impl std::alloc::GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        Self::new_block(layout, libmimalloc_sys::mi_malloc, libmimalloc_sys::mi_malloc_aligned)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        Self::new_block(layout, libmimalloc_sys::mi_zalloc, libmimalloc_sys::mi_zalloc_aligned)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from this allocator (the caller's contract).
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        // SAFETY: `ptr` came from this allocator with `layout` (the caller's
        // contract); the new block meets the same alignment.
        unsafe {
            if Self::plain(align, new_size) {
                libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                libmimalloc_sys::mi_realloc_aligned(ptr.cast(), new_size, align).cast()
            }
        }
    }
}

/// [`release_free_memory`] after a large buffer was freed, at most ten times
/// a second across the agent (a call within 100 ms of the last trims once
/// those 100 ms are over): glibc keeps freed chunks below its mmap threshold
/// (which rises to 32 MiB as large blocks are freed) in its arenas, so
/// without it the RSS of an agent whose sessions passed long values on stays
/// at their peak although the memory is free.
pub fn release_free_memory_soon() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    static SCHEDULED: AtomicBool = AtomicBool::new(false);
    const EVERY_MS: u64 = 100;
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    let now = now_ms();
    let last = LAST_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= EVERY_MS {
        if LAST_MS.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            release_free_memory();
        }
    } else if !SCHEDULED.swap(true, Ordering::AcqRel) {
        let wait = std::time::Duration::from_millis(EVERY_MS - now.saturating_sub(last));
        let spawned = std::thread::Builder::new().name("memory-trim".into()).spawn(move || {
            std::thread::sleep(wait);
            LAST_MS.store(now_ms(), Ordering::Relaxed);
            SCHEDULED.store(false, Ordering::Release);
            release_free_memory();
        });
        if spawned.is_err() {
            SCHEDULED.store(false, Ordering::Release);
        }
    }
}

/// Starts writing `file`'s dirty pages to its device and returns without
/// waiting for them (`sync_file_range(2)`, `SYNC_FILE_RANGE_WRITE`, whole
/// file). Not a durability guarantee: a later `fsync` still makes sure, and
/// finds less to do.
pub fn start_writeback(file: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: sync_file_range takes a descriptor (borrowed, open for the
    // call) and plain integers; it touches no memory of ours.
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Sets the calling thread's nice value (Linux: per thread).
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    let tid = libc::id_t::try_from(tid).map_err(|_| io::Error::other("no thread id"))?;
    // SAFETY: setpriority takes plain integers; PRIO_PROCESS with a thread id
    // changes only that thread's nice value.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The first `len` bytes of a file, mapped shared and writable
/// (`mmap(2)`, `MAP_SHARED`). Bytes copied in are in the file's page cache
/// at once, as after a `write(2)` (a killed process loses none of them;
/// `fdatasync` of the file writes them out), without a system call each.
///
/// The file must hold `len` bytes on its device before it is mapped (see
/// [`SharedMap::new`]): a store to a page of the mapping the file does not
/// hold, or whose block cannot be allocated, would be a `SIGBUS`.
#[derive(Debug)]
pub struct SharedMap {
    at: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value alone (no other
// reference to it is handed out); writing it needs `&mut self`.
unsafe impl Send for SharedMap {}

impl SharedMap {
    /// Maps `file`'s first `len` bytes. The caller has allocated them on the
    /// device (`fallocate(2)`, or zeros written): refused when the file is
    /// shorter than `len`.
    pub fn new(file: &std::fs::File, len: usize) -> io::Result<Self> {
        let size = file.metadata()?.len();
        if len == 0 || u64::try_from(len).map_err(io::Error::other)? > size {
            return Err(io::Error::other(format!("cannot map {len} bytes of a file of {size}")));
        }
        // SAFETY: a new mapping chosen by the kernel (address hint null), of
        // a descriptor open for reading and writing for the call; it aliases
        // no memory of ours, and the file holds every byte of it (checked above).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let at = std::ptr::NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { at, len })
    }

    /// Copies `bytes` in at offset `at`: false (nothing copied) when they do
    /// not fit.
    pub fn write_at(&mut self, at: usize, bytes: &[u8]) -> bool {
        if at.checked_add(bytes.len()).is_none_or(|end| end > self.len) {
            return false;
        }
        // SAFETY: `at + bytes.len()` is within the mapping (checked above),
        // which lives as long as `self`; `bytes` cannot overlap it (the
        // mapping is never lent out), and `&mut self` excludes other writers.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.at.as_ptr().add(at), bytes.len()) };
        true
    }

    /// Faults every page of the mapping in, writable (`madvise(2)`,
    /// `MADV_POPULATE_WRITE`, Linux 5.14): the page faults (and the file
    /// system's `page_mkwrite` for each page) happen here, at once, instead
    /// of at the first copy into each page. An error (an older kernel) leaves
    /// the mapping as it was: the faults then come with the copies.
    pub fn populate_write(&self) -> io::Result<()> {
        // SAFETY: the range is exactly the mapping made in `new`, which lives
        // as long as `self`; populating changes no byte of it.
        let r = unsafe { libc::madvise(self.at.as_ptr().cast(), self.len, libc::MADV_POPULATE_WRITE) };
        if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of `len` bytes, unmapped once.
        unsafe { libc::munmap(self.at.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::{Allocator, SharedMap};

    #[test]
    fn bytes_copied_into_a_shared_map_are_the_files_and_nothing_lands_outside_it() {
        let path = std::env::temp_dir().join(format!("gh-shared-map-{}", std::process::id()));
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        file.set_len(8192).unwrap();
        assert!(SharedMap::new(&file, 8193).is_err(), "more than the file holds is refused");
        assert!(SharedMap::new(&file, 0).is_err());
        let mut map = SharedMap::new(&file, 8192).unwrap();
        // Faulting the pages in ahead changes none of their bytes.
        map.populate_write().unwrap();
        assert!(map.write_at(4090, b"across a page"));
        assert!(!map.write_at(8190, b"too long"), "past the end: nothing copied");
        assert!(!map.write_at(usize::MAX, b"x"));
        assert!(map.write_at(8191, b"z"));
        // Read through the file, not the mapping: the same page cache.
        let bytes = std::fs::read(&path).unwrap();
        drop(map);
        let _ = std::fs::remove_file(&path);
        assert_eq!(bytes.len(), 8192);
        assert_eq!(&bytes[4090..4103], b"across a page");
        assert_eq!(&bytes[8184..8192], b"\0\0\0\0\0\0\0z");
        assert!(bytes[..4090].iter().all(|b| *b == 0));
    }

    #[test]
    fn every_block_meets_its_layouts_alignment_and_keeps_its_bytes() {
        // Both paths of `Allocator` (mimalloc's plain calls up to 16 bytes of
        // alignment, its aligned calls beyond), in every size region: tiny,
        // around 1 KiB (where mimalloc 3's aligned fast path ends), sizes
        // whose class is not a power of two, and large blocks.
        let sizes = [1usize, 8, 16, 24, 48, 100, 1000, 1024, 1040, 1500, 5000, 70_000, 3 << 20];
        for align in [1usize, 2, 4, 8, 16, 32, 64, 4096] {
            for size in sizes {
                let layout = Layout::from_size_align(size, align).unwrap();
                for new in [size * 2 + 7, size.div_ceil(2)] {
                    // SAFETY: non-zero sizes; each block is written within its
                    // size, reallocated with its own layout and freed once.
                    unsafe {
                        let p = Allocator.alloc(layout);
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "alloc {size} aligned {align}");
                        p.write_bytes(0xa5, size);
                        let q = Allocator.realloc(p, layout, new);
                        assert!(!q.is_null());
                        assert_eq!(q as usize % align, 0, "realloc {size} -> {new} aligned {align}");
                        let kept = std::slice::from_raw_parts(q, size.min(new));
                        assert!(kept.iter().all(|b| *b == 0xa5), "realloc {size} -> {new} kept the bytes");
                        Allocator.dealloc(q, Layout::from_size_align(new, align).unwrap());
                    }
                }
                // SAFETY: as above; the zeroed block is read within its size.
                unsafe {
                    let z = Allocator.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "alloc_zeroed {size} aligned {align}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0), "zeroed");
                    Allocator.dealloc(z, layout);
                }
            }
        }
    }
}
