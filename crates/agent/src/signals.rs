//! SIGTERM and SIGINT end the agent between syncs: the current sync finishes, the data
//! plane stays as it is (rules, routes and DNS answers are not removed), and the process
//! exits 0. A flag set by the handler, read by the runtime's loop.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc_int) {
    STOP.store(true, Ordering::SeqCst);
}

#[allow(non_camel_case_types)]
type libc_int = std::os::raw::c_int;

/// Install the handlers (once per process; again is harmless).
pub fn install() {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        if let Err(e) = unsafe { sigaction(sig, &action) } {
            tracing::warn!(signal = ?sig, error = %e, "cannot handle signal");
        }
    }
}

/// Whether a stop was asked for.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}
