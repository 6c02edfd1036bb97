//! The request path allocates nothing: a lookup with IP check and touch, reading
//! and updating a value, and the HTTP layer's `start` for a known session
//! (unsigned cookie) through to its `Set-Cookie` decision.
//!
//! A counting global allocator in this test binary (it holds this one test, so
//! nothing else allocates meanwhile) counts the allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use keyed_session::http::{CookiePolicy, CreateMode, SessionManager};
use keyed_session::{IpBinding, Key, Sessions, Sweeper};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; only a counter is
// updated besides.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
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

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut sum = 0;
    for (id, header) in ids.iter().zip(&headers) {
        let s = sessions.get(id, peer).unwrap();
        sum += s.get(&key).unwrap();
        s.update(&key, || 0, |n| *n += 1).unwrap();
        let started = manager.start(Some(header.as_bytes()), Some(peer), "/");
        assert!(started.set_cookie().is_none());
        assert!(started.session().is_some());
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(sum, (0..1000).sum::<u64>());
    assert_eq!(
        allocations, 0,
        "the request path allocated {allocations} times"
    );
}
