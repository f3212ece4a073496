//! Background CPU threads (inference workers, compute threads) run at a lower scheduling
//! priority than the threads that serve calls: when every core is busy with inference and
//! scans, a health check or a cheap read still gets a core at once. Nothing else here.

/// How much nicer background CPU threads are than the thread that starts them. With the Linux
/// CFS weights a nice-0 thread that wakes gets about nine times the CPU share of one at nice 10;
/// when the cores are not all busy the value changes nothing.
pub const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's priority by [`BACKGROUND_NICE`] (Linux: the nice value is per
/// thread, and a new thread starts with its creator's). Best effort: a failure is logged and
/// the thread runs on as it was.
pub fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getpriority and setpriority with PRIO_PROCESS and who = 0 read and change only
        // the calling thread's nice value; they touch no memory of ours.
        let rc = unsafe {
            let current = libc::getpriority(libc::PRIO_PROCESS, 0);
            libc::setpriority(libc::PRIO_PROCESS, 0, (current + BACKGROUND_NICE).min(19))
        };
        if rc != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower a background thread's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn only_the_calling_thread_is_lowered() {
        // SAFETY: getpriority reads the calling thread's nice value.
        let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let before = nice();
        let lowered = std::thread::spawn(move || {
            super::lower_priority();
            nice()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (before + super::BACKGROUND_NICE).min(19));
        assert_eq!(nice(), before, "the spawning thread keeps its priority");
    }
}
