//! SIGINT/SIGTERM during `balora train`: the first signal asks the trainer to stop after the
//! current step and write a checkpoint; a second one exits at once (status 130).

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Set by the handler; the trainer checks it between steps.
pub static STOP: AtomicBool = AtomicBool::new(false);
/// The signal that set [`STOP`] (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

#[cfg(unix)]
extern "C" fn on_signal(sig: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
    SIGNAL.store(sig, Ordering::SeqCst);
}

/// Installs the handlers for SIGINT and SIGTERM.
#[cfg(unix)]
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a valid handler and an empty mask is a valid argument;
        // the handler only touches atomics and calls _exit, both async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// No handlers on this platform: the run stops at the default action.
#[cfg(not(unix))]
pub fn install() {}

/// The received signal's name and the exit status for it (128 + number).
pub fn received() -> Option<(&'static str, i32)> {
    #[cfg(unix)]
    {
        match SIGNAL.load(Ordering::SeqCst) {
            0 => None,
            s if s == libc::SIGTERM => Some(("SIGTERM", 128 + s)),
            s => Some(("SIGINT", 128 + s)),
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}
