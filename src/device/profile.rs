//! `JOBX_PROFILE` for the device steppers: `1` splits each decode step into the host's time
//! enqueuing it and the time waiting for its results (is a step bound by the host's launches or
//! by the device?); `kernels` adds the backend's device time per kernel (`Backend::take_profile`:
//! CUDA events around every launch on the GPU), reported for what ran before decoding (load,
//! encoder or prefill) and for the decode steps. Everything goes to stderr as lines starting with
//! "jobx profile", which tools/gpu_bench_e2e.py collects.

use super::Backend;
use std::time::Instant;

/// Whether `JOBX_PROFILE` asks for a profile (`1` or `kernels`).
pub fn enabled() -> bool {
    std::env::var("JOBX_PROFILE").is_ok_and(|v| v == "1" || v == "kernels")
}

/// Reports when dropped (with the stepper that holds it).
pub struct StepProfile<'d, B: Backend> {
    dev: &'d B,
    what: &'static str,
    steps: usize,
    rows: usize,
    enqueue: f64,
    wait: f64,
    /// the same sums without the first `WARM` steps (which tune the decode GEMMs and record
    /// the CUDA graph: one-off costs that an average over a short generation would spread
    /// over every step)
    later_enqueue: f64,
    later_wait: f64,
}

/// Steps counted as warm-up in the "later steps" figures.
const WARM: usize = 2;

impl<'d, B: Backend> StepProfile<'d, B> {
    /// A profile when `JOBX_PROFILE` asks for one; reports (and resets) the kernel times of what
    /// ran before, as `before`.
    pub fn from_env(dev: &'d B, what: &'static str, before: &str) -> Option<Self> {
        enabled().then(|| {
            print_kernels(dev, before);
            Self::new(dev, what)
        })
    }

    fn new(dev: &'d B, what: &'static str) -> Self {
        StepProfile {
            dev,
            what,
            steps: 0,
            rows: 0,
            enqueue: 0.0,
            wait: 0.0,
            later_enqueue: 0.0,
            later_wait: 0.0,
        }
    }

    /// One step of `rows` rows: enqueued from t0 to t1, its results back now.
    pub fn account(&mut self, rows: usize, t0: Instant, t1: Instant) {
        let (enqueue, wait) = ((t1 - t0).as_secs_f64(), t1.elapsed().as_secs_f64());
        self.steps += 1;
        self.rows = rows;
        self.enqueue += enqueue;
        self.wait += wait;
        if self.steps > WARM {
            self.later_enqueue += enqueue;
            self.later_wait += wait;
        }
    }

    fn print_split(&self) {
        let later = if self.steps > WARM {
            let n = (self.steps - WARM) as f64;
            format!(
                "; after the first {WARM} steps (GEMM tuning, graph recording): {:.3} and {:.3} \
                 ms/step",
                self.later_enqueue * 1e3 / n,
                self.later_wait * 1e3 / n
            )
        } else {
            String::new()
        };
        eprintln!(
            "jobx profile: {}, {} steps (last of {} rows): host enqueue {:.3} ms/step, \
             wait for device + readback {:.3} ms/step{later}",
            self.what,
            self.steps,
            self.rows,
            self.enqueue * 1e3 / self.steps as f64,
            self.wait * 1e3 / self.steps as f64,
        );
    }
}

/// At the end: the per-step split and the decode steps' kernel times (those also when no step
/// ran, so they are not counted in the next report).
impl<B: Backend> Drop for StepProfile<'_, B> {
    fn drop(&mut self) {
        if self.steps > 0 {
            self.print_split();
        }
        print_kernels(self.dev, "decode");
    }
}

/// The backend's per-kernel device time since the last call: the 20 largest, then the rest in
/// one line.
fn print_kernels<B: Backend>(dev: &B, phase: &str) {
    match dev.take_profile() {
        Ok(lines) => {
            for l in lines.iter().take(20) {
                eprintln!("jobx profile: {phase}: {l}");
            }
            if lines.len() > 20 {
                eprintln!(
                    "jobx profile: {phase}: {} more kernel shapes",
                    lines.len() - 20
                );
            }
        }
        Err(e) => eprintln!("jobx profile: {phase}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The first `WARM` steps (tuning, recording) count in the overall averages only.
    #[test]
    fn later_steps_leave_out_the_warm_up() {
        let host = crate::device::host::HostBackend::new();
        let mut p = StepProfile::new(&host, "test");
        for ms in [100, 100, 1, 3] {
            let t1 = Instant::now();
            let t0 = t1
                .checked_sub(Duration::from_millis(ms))
                .expect("an instant 0.1 s ago");
            p.account(4, t0, t1);
        }
        assert_eq!(p.steps, 4);
        assert!((p.enqueue - 0.204).abs() < 1e-9, "{}", p.enqueue);
        assert!(
            (p.later_enqueue - 0.004).abs() < 1e-9,
            "{}",
            p.later_enqueue
        );
    }
}
