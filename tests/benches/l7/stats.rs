//! Medians over the repetitions, per proxy, the number formats the report prints, and the proxy
//! CPU time a piece of work cost.

use std::collections::BTreeMap;

use anyhow::Result;

use super::{
    process::{clock_ticks_per_second, Proc},
    Kind,
};

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(|a, b| a.total_cmp(b));
    if values.is_empty() {
        return f64::NAN;
    }
    values[values.len() / 2]
}

/// Samples of one figure per proxy.
#[derive(Default)]
pub(crate) struct Samples(pub(crate) BTreeMap<Kind, Vec<f64>>);

impl Samples {
    pub(crate) fn push(&mut self, kind: Kind, value: f64) {
        self.0.entry(kind).or_default().push(value);
    }

    pub(crate) fn median(&self, kind: Kind) -> f64 {
        self.0.get(&kind).map_or(f64::NAN, |v| median(v))
    }

    pub(crate) fn all(&self, kind: Kind) -> String {
        self.0.get(&kind).map_or_else(String::new, |v| {
            v.iter().map(|x| fmt_num(*x)).collect::<Vec<_>>().join(", ")
        })
    }
}

pub(crate) fn fmt_num(x: f64) -> String {
    if x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else if x.abs() >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

pub(crate) fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

/// CPU µs of `proc` while `work` runs, with what `work` returns.
pub(crate) fn with_cpu<T>(proc: &Proc, work: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let before = proc.cpu_ticks();
    let value = work()?;
    let after = proc.cpu_ticks();
    let us = (after.saturating_sub(before)) as f64 * 1e6 / clock_ticks_per_second();
    Ok((value, us))
}
