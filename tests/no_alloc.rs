//! The request path allocates nothing: a lookup with IP check and touch, reading
//! and updating a value, and the HTTP layer's `start` for a known session
//! (unsigned cookie) through to its `Set-Cookie` decision.
//!
//! A counting global allocator in this test binary counts the allocations of
//! the thread that runs the request path. Only that thread's: the store's
//! ticker thread, started with the store, may still be starting up (its
//! thread-local set-up allocates) while the loop runs on a loaded machine,
//! which made a count of every thread's allocations flaky. The request path
//! itself runs on the measuring thread, so nothing it does escapes the count,
//! the tick of the clock's second included (the loop runs across several).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use keyed_session::http::{CookiePolicy, CreateMode, SessionManager};
use keyed_session::{IpBinding, Key, Sessions, Sweeper};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's allocations are counted (const-initialised, no
    /// destructor: reading it never allocates).
    static MEASURED: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: every call goes to the system allocator unchanged; only a counter is
// updated besides.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if MEASURED.try_with(Cell::get).unwrap_or(false) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn the_request_path_does_not_allocate() {
    let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let sessions = Sessions::builder()
        .sweeper(Sweeper::Manual)
        .ip_binding(IpBinding::Exact)
        .build();
    let key: Key<u64> = Key::new("n");
    let ids: Vec<_> = (0..1000)
        .map(|i| {
            let s = sessions.create(peer).unwrap();
            s.set(&key, i).unwrap();
            s.id()
        })
        .collect();
    let manager =
        SessionManager::with_mode(sessions.clone(), CookiePolicy::new(), CreateMode::Eager)
            .unwrap();
    let headers: Vec<String> = ids
        .iter()
        .map(|id| format!("a=b; __Host-id={id}"))
        .collect();

    MEASURED.with(|m| m.set(true));
    let mut sum = 0;
    // Long enough to cross the clock's second a few times (each lookup
    // touches its session at the new second then).
    let started_at = std::time::Instant::now();
    let mut rounds = 0u64;
    while rounds < 3 || started_at.elapsed() < std::time::Duration::from_millis(2500) {
        for (id, header) in ids.iter().zip(&headers) {
            let s = sessions.get(id, peer).unwrap();
            sum += s.get(&key).unwrap();
            s.update(&key, || 0, |n| *n += 1).unwrap();
            let started = manager.start(Some(header.as_bytes()), Some(peer), "/");
            assert!(started.set_cookie().is_none());
            assert!(started.session().is_some());
        }
        rounds += 1;
    }
    MEASURED.with(|m| m.set(false));
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    // Each round reads every value once and adds one to each.
    let expected: u64 = (0..rounds).map(|r| (0..1000).sum::<u64>() + 1000 * r).sum();
    assert_eq!(sum, expected);
    assert_eq!(
        allocations, 0,
        "the request path allocated {allocations} times"
    );
}
