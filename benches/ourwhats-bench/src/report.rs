//! One measured phase of a scenario: its timings, the server's CPU time and memory over
//! the phase, printed as a JSON line (stdout) and a readable summary (stderr).

use std::time::Instant;

use serde_json::{json, Value};

use crate::process::{cpu_seconds, rss_kib, PeakRss};
use crate::stats::{median, percentile};

/// A phase being measured: wall clock, server CPU and RSS from its start.
pub struct Phase {
    pid: Option<u32>,
    started: Instant,
    cpu_at_start: Option<f64>,
    own_cpu_at_start: Option<f64>,
    rss_at_start: Option<u64>,
    peak: Option<PeakRss>,
}

impl Phase {
    pub fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            cpu_at_start: pid.and_then(cpu_seconds),
            own_cpu_at_start: cpu_seconds(std::process::id()),
            rss_at_start: pid.and_then(rss_kib),
            peak: pid.map(PeakRss::start),
            started: Instant::now(),
        }
    }

    /// Ends the phase; `ops` successful operations took `latencies_ms` each (may be empty
    /// when only a rate is meaningful).
    pub fn finish(self, ops: usize, errors: usize, latencies_ms: Vec<f64>) -> Measure {
        let wall_s = self.started.elapsed().as_secs_f64();
        let cpu = match (self.pid.and_then(cpu_seconds), self.cpu_at_start) {
            (Some(end), Some(start)) if ops > 0 => Some((end - start) * 1000.0 / ops as f64),
            _ => None,
        };
        let own_cpu = match (cpu_seconds(std::process::id()), self.own_cpu_at_start) {
            (Some(end), Some(start)) if ops > 0 => Some((end - start) * 1000.0 / ops as f64),
            _ => None,
        };
        Measure {
            scenario: "",
            measure: "",
            params: json!({}),
            ops,
            errors,
            wall_s,
            rate: None,
            latencies_ms,
            cpu_ms_per_op: cpu,
            client_cpu_ms_per_op: own_cpu,
            rss_start_kib: self.rss_at_start,
            rss_peak_kib: self.peak.as_ref().map(PeakRss::peak_kib),
        }
    }
}

/// The figures of one phase.
pub struct Measure {
    pub scenario: &'static str,
    pub measure: &'static str,
    pub params: Value,
    pub ops: usize,
    pub errors: usize,
    pub wall_s: f64,
    /// A throughput and its unit ("events/s", "MiB/s"...).
    pub rate: Option<(f64, &'static str)>,
    pub latencies_ms: Vec<f64>,
    /// Server CPU (user + system) per successful operation.
    pub cpu_ms_per_op: Option<f64>,
    /// This tool's own CPU per operation: on a shared machine, what the load took.
    pub client_cpu_ms_per_op: Option<f64>,
    pub rss_start_kib: Option<u64>,
    pub rss_peak_kib: Option<u64>,
}

impl Measure {
    pub fn named(mut self, scenario: &'static str, measure: &'static str, params: Value) -> Self {
        self.scenario = scenario;
        self.measure = measure;
        self.params = params;
        self
    }

    pub fn with_rate(mut self, value: f64, unit: &'static str) -> Self {
        self.rate = Some((value, unit));
        self
    }

    pub fn to_json(&self, label: &str) -> Value {
        json!({
            "server": label,
            "scenario": self.scenario,
            "measure": self.measure,
            "params": self.params,
            "ops": self.ops,
            "errors": self.errors,
            "wall_s": round3(self.wall_s),
            "rate": self.rate.map(|(v, _)| round3(v)),
            "rate_unit": self.rate.map(|(_, u)| u),
            "p50_ms": median(&self.latencies_ms).map(round3),
            "p99_ms": percentile(&self.latencies_ms, 99.0).map(round3),
            "cpu_ms_per_op": self.cpu_ms_per_op.map(round3),
            "client_cpu_ms_per_op": self.client_cpu_ms_per_op.map(round3),
            "rss_start_kib": self.rss_start_kib,
            "rss_peak_kib": self.rss_peak_kib,
        })
    }

    pub fn summary(&self, label: &str) -> String {
        let mut parts = vec![format!(
            "{label} {}/{}: {} ops in {:.2} s",
            self.scenario, self.measure, self.ops, self.wall_s
        )];
        if self.errors > 0 {
            parts.push(format!("{} errors", self.errors));
        }
        if let Some((value, unit)) = self.rate {
            parts.push(format!("{value:.1} {unit}"));
        }
        if let (Some(p50), Some(p99)) = (
            median(&self.latencies_ms),
            percentile(&self.latencies_ms, 99.0),
        ) {
            parts.push(format!("p50 {p50:.2} ms, p99 {p99:.2} ms"));
        }
        if let Some(cpu) = self.cpu_ms_per_op {
            parts.push(format!("server CPU {cpu:.3} ms/op"));
        }
        if let Some(cpu) = self.client_cpu_ms_per_op {
            parts.push(format!("load generator CPU {cpu:.3} ms/op"));
        }
        if let (Some(start), Some(peak)) = (self.rss_start_kib, self.rss_peak_kib) {
            parts.push(format!(
                "RSS {:.1} MiB at start, {:.1} MiB peak",
                start as f64 / 1024.0,
                peak as f64 / 1024.0
            ));
        }
        parts.join(", ")
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_measure_prints_its_figures() {
        let m = Phase::start(None)
            .finish(4, 1, vec![1.0, 2.0, 3.0, 4.0])
            .named("send", "send", json!({"senders": 2}))
            .with_rate(100.0, "events/s");
        let line = m.to_json("x");
        assert_eq!(line["ops"], 4);
        assert_eq!(line["errors"], 1);
        assert_eq!(line["p50_ms"], 3.0);
        assert_eq!(line["rate_unit"], "events/s");
        assert!(line["cpu_ms_per_op"].is_null());
        assert!(m.summary("x").contains("100.0 events/s"));
    }
}
