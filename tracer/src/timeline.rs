//! How long the start took, step by step, for `-v`: reading the kernel's
//! BTF, the node's rules, creating the maps, the verifier on each program,
//! the links. Steps run concurrently, so each is shown with when it began
//! and ended after the start, not only how long it took.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Shared by the threads and tasks that do the start's steps.
#[derive(Clone)]
pub struct Timeline {
    start: Instant,
    steps: Arc<Mutex<Vec<Step>>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub began: Duration,
    pub took: Duration,
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Timeline {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            steps: Arc::default(),
        }
    }

    /// Notes a step that began at `began` and ends now.
    pub fn done(&self, name: impl Into<String>, began: Instant) {
        let step = Step {
            name: name.into(),
            began: began.saturating_duration_since(self.start),
            took: began.elapsed(),
        };
        self.steps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(step);
    }

    /// Runs `f` as step `name`.
    pub fn time<T>(&self, name: &str, f: impl FnOnce() -> T) -> T {
        let began = Instant::now();
        let out = f();
        self.done(name, began);
        out
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The steps so far, in the order they began.
    pub fn steps(&self) -> Vec<Step> {
        let mut s = self.steps.lock().unwrap_or_else(|e| e.into_inner()).clone();
        s.sort_by_key(|s| s.began);
        s
    }

    /// One line per step: "  name  12.3 ms  (+4.0 … +16.3 ms)".
    pub fn report(&self) -> String {
        let steps = self.steps();
        let width = steps.iter().map(|s| s.name.len()).max().unwrap_or(0);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut out = String::new();
        for s in &steps {
            out.push_str(&format!(
                "\n  {:<width$} {:>7.1} ms  (+{:.1} … +{:.1} ms)",
                s.name,
                ms(s.took),
                ms(s.began),
                ms(s.began + s.took),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_listed_in_the_order_they_began() {
        let t = Timeline::new();
        let early = Instant::now();
        std::thread::sleep(Duration::from_millis(5));
        t.time("second", || std::thread::sleep(Duration::from_millis(2)));
        let other = t.clone();
        std::thread::spawn(move || other.done("first", early))
            .join()
            .unwrap();
        let steps = t.steps();
        assert_eq!(
            steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["first", "second"]
        );
        assert!(steps[0].took >= Duration::from_millis(7), "{steps:?}");
        assert!(steps[1].took >= Duration::from_millis(2), "{steps:?}");
        assert!(steps[1].began >= Duration::from_millis(5), "{steps:?}");
        let r = t.report();
        assert_eq!(r.lines().filter(|l| !l.is_empty()).count(), 2, "{r}");
        assert!(r.contains("first") && r.contains(" ms  (+"), "{r}");
    }
}
