//! The printed sections and the L4 section of docs/benchmarks.md, with the machine and the
//! command that produced them.

use std::fmt::Write as _;

use anyhow::{Context as _, Result};

use super::Settings;

#[derive(Default)]
pub(crate) struct Report {
    pub(crate) sections: Vec<(String, Vec<String>)>,
}

impl Report {
    pub(crate) fn section(&mut self, title: &str, lines: Vec<String>) {
        println!("\n## {title}");
        for line in &lines {
            println!("{line}");
        }
        self.sections.push((title.to_string(), lines));
    }

    pub(crate) fn finish(&self, settings: &Settings) -> Result<()> {
        let path = settings.workspace.join("docs/benchmarks.md");
        let existing = std::fs::read_to_string(&path).unwrap_or_default();
        const BEGIN: &str = "<!-- l4:begin -->";
        const END: &str = "<!-- l4:end -->";
        let mut body = String::new();
        let _ = writeln!(body, "{BEGIN}");
        let _ = writeln!(
            body,
            "## L4: `cargo xtask bench l4`{}",
            if settings.quick { " --quick" } else { "" }
        );
        let _ = writeln!(body);
        let _ = writeln!(
            body,
            "Command: `cargo xtask bench l4{}` (as root). {}",
            if settings.quick { " --quick" } else { "" },
            machine()
        );
        let _ = writeln!(body);
        for (title, lines) in &self.sections {
            let _ = writeln!(body, "### {title}\n");
            for line in lines {
                let _ = writeln!(body, "{line}");
            }
            let _ = writeln!(body);
        }
        let _ = writeln!(body, "{END}");
        let updated = match (existing.find(BEGIN), existing.find(END)) {
            (Some(begin), Some(end)) if end > begin => {
                format!("{}{}{}", &existing[..begin], body, &existing[end + END.len()..].trim_start_matches('\n'))
            }
            _ if existing.is_empty() => format!(
                "# Benchmarks\n\nEvery figure here was measured by the command next to it, in one run, on the \
                 machine described. These machines are shared and noisy (2 cores): compare the ratios \
                 within one run, not absolute figures across runs.\n\n{body}"
            ),
            _ => format!("{existing}\n{body}"),
        };
        std::fs::write(&path, updated).with_context(|| format!("writing {}", path.display()))?;
        println!("\nwritten to {}", path.display());
        Ok(())
    }
}

pub(crate) fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("Kernel {}, {cores} × {cpu}.", kernel.trim())
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    if values.is_empty() {
        return f64::NAN;
    }
    values[values.len() / 2]
}
