//! Small facts about the machine and processes: clocks, `/proc`, file limits, JWTs.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Microseconds since the Unix epoch: the clock the mock stamps tokens with.
pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Raises this process's open-file limit to its hard limit and returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                return wanted.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

/// A process's resident memory (`VmRSS`) in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()).and_then(|n| n.parse().ok())
}

/// A process's CPU time so far (user + system, all threads, exited ones included) in
/// microseconds: the sum `utime + stime` of `/proc/<pid>/stat`, read from the process's
/// CPU clock at nanosecond resolution where the kernel offers it (`/proc` counts in
/// clock ticks, 10 ms, too coarse for a cheap server over a few seconds).
pub fn cpu_micros(pid: u32) -> Option<u64> {
    cpu_clock_micros(pid).or_else(|| stat_cpu_micros(pid))
}

/// The process CPU clock of `pid` (`clock_getcpuclockid`): the same time as
/// `utime + stime`, unrounded.
pub fn cpu_clock_micros(pid: u32) -> Option<u64> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: both calls only write the clock id and the timespec we pass.
    unsafe {
        let mut clock: libc::clockid_t = 0;
        if libc::clock_getcpuclockid(pid, &mut clock) != 0 {
            return None;
        }
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        if libc::clock_gettime(clock, &mut ts) != 0 {
            return None;
        }
        Some(ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000)
    }
}

/// `utime + stime` from `/proc/<pid>/stat`, in clock ticks converted to microseconds.
pub fn stat_cpu_micros(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3 of the whole line, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some((utime + stime) * 1_000_000 / hz)
}

/// The whole machine's busy CPU time so far (every CPU's user, nice, system, irq,
/// softirq and steal time from the first line of `/proc/stat`), in microseconds.
pub fn machine_busy_micros() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = line.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy = [0, 1, 2, 5, 6, 7].iter().map(|&i| f.get(i).copied().unwrap_or(0)).sum::<u64>();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(busy * 1_000_000 / hz)
}

/// A snapshot of one server process.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcSample {
    pub rss_kib: u64,
    pub cpu_us: u64,
}

/// Reads a process's RSS and CPU time, if it exists.
pub fn sample(pid: Option<u32>) -> Option<ProcSample> {
    let pid = pid?;
    Some(ProcSample { rss_kib: rss_kib(pid)?, cpu_us: cpu_micros(pid)? })
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
}

/// An HS256 JWT for user `sub`, valid for a day, as a NestJS `JwtService.sign` makes one.
pub fn mint_jwt(secret: &str, sub: &str) -> String {
    let iat = now_micros() / 1_000_000;
    let claims = Claims { sub, iat, exp: iat + 86_400 };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_micros(me).is_some());
        assert!(rss_kib(u32::MAX).is_none());
        assert!(cpu_micros(u32::MAX).is_none());
        assert!(machine_busy_micros().is_some());
    }

    #[test]
    fn the_cpu_clock_agrees_with_proc_stat() {
        // Burn some CPU so both readings are well above one clock tick.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let me = std::process::id();
        let (Some(clock), Some(stat)) = (cpu_clock_micros(me), stat_cpu_micros(me)) else {
            return; // no process CPU clock here: cpu_micros falls back to /proc
        };
        // /proc rounds to clock ticks (10 ms at 100 Hz); allow a few between the reads.
        assert!(clock.abs_diff(stat) <= 50_000, "clock {clock} us, stat {stat} us");
    }

    #[test]
    fn mints_a_three_part_token() {
        let t = mint_jwt("s", "bench-1");
        assert_eq!(t.split('.').count(), 3);
    }
}
