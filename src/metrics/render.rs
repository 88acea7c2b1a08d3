//! The Prometheus text format (0.0.4) writer: `# HELP` and `# TYPE` once
//! per family, then samples with escaped labels and values spelled the way
//! scrapers parse them. It knows nothing of walcast's families.

use std::fmt::Write as _;

use crate::histogram::{HistogramSnapshot, DURATION_BUCKETS};

#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
        }
    }
}

/// A sample value, written the way the text format wants it.
pub(super) trait SampleValue {
    fn write_to(&self, out: &mut String);
}

impl SampleValue for u64 {
    fn write_to(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl SampleValue for i64 {
    fn write_to(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl SampleValue for bool {
    fn write_to(&self, out: &mut String) {
        out.push(if *self { '1' } else { '0' });
    }
}

impl SampleValue for f64 {
    fn write_to(&self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            // Rust's shortest round-trip form: "0.005", "12", "1e-7".
            let _ = write!(out, "{self}");
        }
    }
}

/// The text being built: `# HELP` and `# TYPE` once per family, then its
/// samples, one per line.
#[derive(Default)]
pub(super) struct Exposition {
    pub(super) text: String,
}

impl Exposition {
    pub(super) fn family(&mut self, name: &str, kind: Kind, help: &str) {
        self.text.push_str("# HELP ");
        self.text.push_str(name);
        self.text.push(' ');
        for c in help.chars() {
            match c {
                '\\' => self.text.push_str("\\\\"),
                '\n' => self.text.push_str("\\n"),
                c => self.text.push(c),
            }
        }
        let _ = writeln!(self.text, "\n# TYPE {name} {}", kind.as_str());
    }

    pub(super) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl SampleValue) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(label);
                self.text.push_str("=\"");
                for c in value.chars() {
                    match c {
                        '\\' => self.text.push_str("\\\\"),
                        '"' => self.text.push_str("\\\""),
                        '\n' => self.text.push_str("\\n"),
                        c => self.text.push(c),
                    }
                }
                self.text.push('"');
            }
            self.text.push('}');
        }
        self.text.push(' ');
        value.write_to(&mut self.text);
        self.text.push('\n');
    }

    pub(super) fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, Kind::Counter, help);
        self.sample(name, &[], value);
    }

    pub(super) fn gauge(&mut self, name: &str, help: &str, value: impl SampleValue) {
        self.family(name, Kind::Gauge, help);
        self.sample(name, &[], value);
    }

    pub(super) fn histogram(&mut self, name: &str, help: &str, histogram: &HistogramSnapshot) {
        self.family(name, Kind::Histogram, help);
        let bucket = format!("{name}_bucket");
        let mut le = String::new();
        for (bound, count) in DURATION_BUCKETS.iter().zip(&histogram.cumulative) {
            le.clear();
            bound.write_to(&mut le);
            self.sample(&bucket, &[("le", &le)], *count);
        }
        self.sample(&bucket, &[("le", "+Inf")], histogram.count);
        self.sample(&format!("{name}_sum"), &[], histogram.sum_seconds);
        self.sample(&format!("{name}_count"), &[], histogram.count);
    }
}
