//! How much CPU background work may take: all it wants while the machine has CPU to
//! spare, a small share while the rest of the machine keeps it busy.
//!
//! Niceness 19 ([`super::background`]) gives background threads only the CPU others leave
//! idle, but even idle CPU is shared: the caches, memory bandwidth and kernel paths its
//! work uses are those of the requests (measured in docs/benchmarks.md: pushes delivered
//! beside a send burst slowed the sends by up to a fifth, in proportion to the pushes). So
//! the work charges its CPU time here ([`CpuShare::charge`], [`CpuShare::charge_thread`]),
//! and asks before taking more ([`CpuShare::pause`]), which looks at the machine at most
//! every [`SAMPLE_EVERY`] (the first look after a quiet spell averages over all of it):
//! once everything else on the machine (niced work included) used more than [`BUSY`] of
//! its CPUs, the work may use [`BUSY_SHARE`] of one CPU on average (what it used beyond
//! that, past a burst, it waits off), until the machine has room again.
//! Work that waits is queued (pushes are on disk), and the share is never zero, so it
//! always moves on. How busy the machine is comes from `/proc/stat` (Linux); elsewhere
//! nothing is held back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Above this share of the machine's CPUs used by everything else, the machine is busy.
const BUSY: f64 = 0.5;
/// The CPU background work may use while the machine is busy, in CPUs.
pub const BUSY_SHARE: f64 = 0.1;
/// How often the machine's use is looked at (at most).
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// CPU time the work may take at once while the machine is busy, before it waits.
const BURST: Duration = Duration::from_millis(50);
/// The longest single wait [`CpuShare::pause`] answers (it is asked again after).
const MAX_PAUSE: Duration = Duration::from_millis(250);

/// CPU time counters of the whole machine, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineTimes {
    /// Ticks spent running anything (user, nice, system, interrupts, stolen).
    pub busy: u64,
    /// All ticks (busy, idle and waiting for I/O).
    pub total: u64,
}

/// The CPU use of one background worker, and whether it should wait.
#[derive(Debug)]
pub struct CpuShare {
    /// Nanoseconds of CPU charged by the worker's threads.
    charged: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The last look at the machine, and the charged total then.
    sampled: Option<(Instant, MachineTimes, u64)>,
    /// Whether the rest of the machine was busy at the last look.
    busy: bool,
    /// The charged total when [`CpuShare::pause`] last asked.
    seen: u64,
    /// When it last asked.
    asked: Instant,
    /// CPU the worker may still take (nanoseconds; negative: owed).
    credit: f64,
}

impl Default for CpuShare {
    fn default() -> Self {
        Self {
            charged: AtomicU64::new(0),
            state: Mutex::new(State {
                sampled: None,
                busy: false,
                seen: 0,
                asked: Instant::now(),
                credit: BURST.as_nanos() as f64,
            }),
        }
    }
}

impl CpuShare {
    /// Runs `work` on this thread, charging the CPU time it takes.
    pub fn charge<R>(&self, work: impl FnOnce() -> R) -> R {
        let before = thread_cpu_ns();
        let out = work();
        let spent = thread_cpu_ns().saturating_sub(before);
        self.charged.fetch_add(spent, Ordering::Relaxed);
        out
    }

    /// Charges what the calling thread used since `since` (a [`thread_cpu_ns`] reading of
    /// its own); answers the new reading. For the thread that drives the worker's
    /// runtime, whose CPU is its deliveries' requests.
    pub fn charge_thread(&self, since: u64) -> u64 {
        let now = thread_cpu_ns();
        self.charged
            .fetch_add(now.saturating_sub(since), Ordering::Relaxed);
        now
    }

    /// How long the worker should wait before taking more work: zero unless the machine
    /// is busy and the worker has used more than its share (at most [`MAX_PAUSE`]: ask
    /// again after, the machine may have room by then).
    pub fn pause(&self) -> Duration {
        self.pause_with(Instant::now(), machine_times)
    }

    /// [`CpuShare::pause`] at `now`, with `sample` to read the machine's counters.
    fn pause_with(&self, now: Instant, sample: impl FnOnce() -> Option<MachineTimes>) -> Duration {
        let charged = self.charged.load(Ordering::Relaxed);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let due = state
            .sampled
            .is_none_or(|(at, _, _)| now.duration_since(at) >= SAMPLE_EVERY);
        if due {
            if let Some(times) = sample() {
                if let Some((_, before, charged_before)) = state.sampled {
                    state.busy = others_busy(before, times, charged - charged_before.min(charged))
                        .is_some_and(|share| share > BUSY);
                }
                state.sampled = Some((now, times, charged));
            }
        }
        let elapsed = now.duration_since(state.asked).as_nanos() as f64;
        let used = charged.saturating_sub(state.seen) as f64;
        state.asked = now;
        state.seen = charged;
        state.credit = next_credit(state.credit, state.busy, elapsed, used);
        pause_for(state.credit)
    }
}

/// The credit after `elapsed` nanoseconds in which the worker used `used`: refilled at
/// [`BUSY_SHARE`] while busy (up to [`BURST`]), full otherwise.
fn next_credit(credit: f64, busy: bool, elapsed: f64, used: f64) -> f64 {
    let burst = BURST.as_nanos() as f64;
    if !busy {
        return burst;
    }
    (credit + elapsed * BUSY_SHARE).min(burst) - used
}

/// The wait that pays off a negative credit at [`BUSY_SHARE`].
fn pause_for(credit: f64) -> Duration {
    if credit >= 0.0 {
        return Duration::ZERO;
    }
    Duration::from_nanos((-credit / BUSY_SHARE) as u64).min(MAX_PAUSE)
}

/// The share of the machine's CPUs that everything but the worker used between two
/// looks, the worker having used `worker_ns` of CPU meanwhile; `None` if no time passed.
fn others_busy(before: MachineTimes, after: MachineTimes, worker_ns: u64) -> Option<f64> {
    let total = after.total.checked_sub(before.total).filter(|t| *t > 0)? as f64;
    let busy = after.busy.saturating_sub(before.busy) as f64;
    let worker = worker_ns as f64 * ticks_per_second() / 1e9;
    Some(((busy - worker) / total).clamp(0.0, 1.0))
}

/// The calling thread's CPU time so far, in nanoseconds (0 where it cannot be read).
pub fn thread_cpu_ns() -> u64 {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes only into `ts`, which lives for the call.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000
                + u64::try_from(ts.tv_nsec).unwrap_or(0);
        }
    }
    0
}

fn ticks_per_second() -> f64 {
    #[cfg(unix)]
    {
        // SAFETY: sysconf only reads its argument.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if hz > 0 {
            return hz as f64;
        }
    }
    100.0
}

/// The machine's CPU counters (Linux: the first line of `/proc/stat`).
fn machine_times() -> Option<MachineTimes> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_cpu_line(stat.lines().next()?)
}

/// `cpu user nice system idle iowait irq softirq steal ...` (ticks).
fn parse_cpu_line(line: &str) -> Option<MachineTimes> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let numbers: Vec<u64> = fields
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = numbers[..] else {
        return None;
    };
    let busy = user + nice + system + irq + softirq + steal;
    Some(MachineTimes {
        busy,
        total: busy + idle + iowait,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machines_counters_are_read_from_its_cpu_line() {
        let times = parse_cpu_line("cpu  100 5 50 800 20 3 2 1 0 0").unwrap();
        assert_eq!(
            times,
            MachineTimes {
                busy: 161,
                total: 981
            }
        );
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4 5 6 7 8"), None);
        assert_eq!(parse_cpu_line("cpu 1 2 3"), None);
        assert_eq!(parse_cpu_line("cpu 1 2 x 4 5 6 7 8"), None);
    }

    #[test]
    fn the_workers_own_use_does_not_make_the_machine_busy() {
        let hz = ticks_per_second();
        let before = MachineTimes { busy: 0, total: 0 };
        // 2 CPUs over one second: 200 ticks at 100 Hz, 150 busy, of which the worker
        // used 0.6 s.
        let total = (2.0 * hz) as u64;
        let after = MachineTimes {
            busy: total * 3 / 4,
            total,
        };
        let others = others_busy(before, after, 600_000_000).unwrap();
        assert!((others - 0.45).abs() < 0.02, "{others}");
        let idle = others_busy(before, after, 1_500_000_000).unwrap();
        assert!(idle < 0.01, "{idle}");
        assert_eq!(others_busy(after, after, 0), None);
    }

    #[test]
    fn a_busy_machine_holds_the_work_to_its_share() {
        let ms = 1e6;
        // While the machine has room, the credit is full whatever was used.
        assert_eq!(next_credit(-1e9, false, 0.0, 5e8), BURST.as_nanos() as f64);
        // Busy: 100 ms of CPU used in 100 ms with a full burst (the refill does not
        // go past it) owes what the burst does not cover...
        let burst = BURST.as_nanos() as f64;
        let credit = next_credit(burst, true, 100.0 * ms, 100.0 * ms);
        assert!((credit - (burst - 100.0 * ms)).abs() < 1.0, "{credit}");
        // ... waited off at the share (capped: it is asked again after).
        assert_eq!(pause_for(credit), MAX_PAUSE);
        assert_eq!(pause_for(-5.0 * ms), Duration::from_millis(50));
        assert_eq!(pause_for(0.0), Duration::ZERO);
        // Over a long run of asking, the work gets its share and no more.
        let (mut credit, mut used_total, mut time) = (0.0, 0.0, 0.0);
        for _ in 0..1_000 {
            let pause = pause_for(credit).as_nanos() as f64;
            let work = 5.0 * ms;
            let elapsed = pause + work;
            time += elapsed;
            used_total += work;
            credit = next_credit(credit, true, elapsed, work);
        }
        let share = used_total / time;
        assert!((share - BUSY_SHARE).abs() < 0.01, "{share}");
    }

    #[test]
    fn work_beside_a_busy_machine_waits_until_it_has_room() {
        let share = CpuShare::default();
        let hz = ticks_per_second();
        let ticks = |seconds: f64| (seconds * hz) as u64;
        let t0 = Instant::now();
        let start = MachineTimes {
            busy: 1_000_000,
            total: 2_000_000,
        };
        assert_eq!(share.pause_with(t0, || Some(start)), Duration::ZERO);
        // 300 ms on two CPUs (0.6 s of CPU time): the worker used 120 ms, the others
        // 400 ms. Busy, and the worker owes what its burst does not cover.
        share.charged.fetch_add(120_000_000, Ordering::Relaxed);
        let busy = MachineTimes {
            busy: start.busy + ticks(0.52),
            total: start.total + ticks(0.6),
        };
        let t1 = t0 + Duration::from_millis(300);
        let owed = share.pause_with(t1, || Some(busy));
        assert!(owed >= Duration::from_millis(100), "{owed:?}");
        // Not looked at again within 250 ms: still busy, still owing.
        let still = share.pause_with(t1 + Duration::from_millis(100), || {
            panic!("looked too soon")
        });
        assert!(still > Duration::ZERO, "{still:?}");
        // The others went quiet: nothing is held back.
        let quiet = MachineTimes {
            busy: busy.busy + ticks(0.03),
            total: busy.total + ticks(0.6),
        };
        let t2 = t1 + Duration::from_millis(300);
        assert_eq!(share.pause_with(t2, || Some(quiet)), Duration::ZERO);
    }

    #[test]
    fn charged_work_counts_its_cpu_time() {
        let share = CpuShare::default();
        // Spins until the thread has used 10 ms of CPU (wall time would depend on the load).
        let spun = share.charge(|| {
            let started = thread_cpu_ns();
            let mut x = 0u64;
            while thread_cpu_ns() - started < 10_000_000 && x < u64::MAX / 2 {
                x = x.wrapping_add(std::hint::black_box(1));
            }
            x
        });
        assert!(spun > 0);
        let charged = share.charged.load(Ordering::Relaxed);
        if cfg!(unix) {
            assert!(charged >= 10_000_000, "{charged}");
        }
    }
}
