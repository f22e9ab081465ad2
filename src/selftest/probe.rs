//! What the operating system says about this process and machine: CPU time, resident memory,
//! the open-file limit, the CPU model. Linux first; elsewhere a value that cannot be read is
//! `None`, never 0.

use serde::{Deserialize, Serialize};

/// The machine the self-test ran on.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    /// CPU model name (`/proc/cpuinfo`), or `unknown`.
    pub cpu_model: String,
    /// CPUs this process may use.
    pub cpus: usize,
    /// Operating system and architecture.
    pub os: String,
}

/// Describes this machine.
pub fn machine() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpu_model,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
    }
}

/// User + system CPU time of this process (all threads, finished ones included), seconds.
pub fn cpu_seconds() -> Option<f64> {
    cpu_times().map(|(user, system)| user + system)
}

/// User and system (kernel) CPU time of this process (all threads), seconds.
pub fn cpu_times() -> Option<(f64, f64)> {
    use nix::sys::resource::{getrusage, UsageWho};
    let ru = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some((tv(ru.user_time()), tv(ru.system_time())))
}

/// The machine's monotonic clock (`CLOCK_MONOTONIC`, shared by all processes; Rust's
/// `Instant` reads the same clock on Linux), nanoseconds; `None` where it cannot be read.
pub fn monotonic_ns() -> Option<u64> {
    use nix::time::{clock_gettime, ClockId};
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).ok()?;
    cfg!(target_os = "linux").then(|| ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64)
}

/// Resident memory of this process, bytes (`/proc/self/statm`).
pub fn rss_bytes() -> Option<u64> {
    use nix::unistd::{sysconf, SysconfVar};
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = sysconf(SysconfVar::PAGE_SIZE).ok()??;
    (page > 0).then(|| pages * page as u64)
}

/// Raises the soft open-file limit to at least `want` (up to the hard limit); a client with
/// many streams needs one descriptor per connection.
pub fn raise_fd_limit(want: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < want {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work() {
        let a = cpu_seconds().expect("getrusage works on this OS");
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let b = cpu_seconds().unwrap();
        assert!(b > a, "{a} -> {b}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn monotonic_clock_matches_instant() {
        let a = std::time::Instant::now();
        let m = monotonic_ns().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = std::time::Instant::now();
        let m2 = monotonic_ns().unwrap();
        let d = (b - a).as_nanos() as i64 - (m2 - m) as i64;
        assert!(d.abs() < 5_000_000, "{d} ns apart");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn rss_is_positive_and_machine_named() {
        assert!(rss_bytes().unwrap() > 0);
        let m = machine();
        assert!(m.cpus >= 1);
        assert!(!m.cpu_model.is_empty());
    }
}
