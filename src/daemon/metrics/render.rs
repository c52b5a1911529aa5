//! The Prometheus text exposition format (version 0.0.4) and OpenMetrics 1.0
//! text: metric families of samples, written with the escapes, suffixes and
//! histogram buckets each format requires.

use std::fmt::Write;

/// Which text format a scraper asked for (see `http::negotiate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// A gauge of value 1 whose labels carry the information (`NAME_info`).
    Info,
}

/// Labels in the order they are written; values are escaped on output.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

#[derive(Clone, Debug, PartialEq)]
struct Sample {
    /// Added to the family's name: `_total`, `_bucket`, `_sum`, `_count`,
    /// `_info` or nothing.
    suffix: &'static str,
    labels: Labels,
    value: Value,
}

/// One metric family: its name (without the `_total` of a counter or the
/// `_info` of an info metric, which its samples get), help, type and samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<Sample>,
}

impl Family {
    pub fn new(kind: Kind, name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    /// The name a scraper sees on the samples of a counter or gauge.
    pub fn sample_name(&self) -> String {
        format!("{}{}", self.name, self.plain_suffix())
    }

    fn plain_suffix(&self) -> &'static str {
        match self.kind {
            Kind::Counter => "_total",
            Kind::Info => "_info",
            Kind::Gauge | Kind::Histogram => "",
        }
    }

    /// A sample of a counter, gauge or info metric.
    pub fn push(&mut self, labels: Labels, value: Value) {
        debug_assert!(self.kind != Kind::Histogram);
        self.samples.push(Sample {
            suffix: self.plain_suffix(),
            labels,
            value,
        });
    }

    /// One histogram: `cumulative[i]` observations at most `bounds[i]`
    /// (ascending), `count` in all (the `+Inf` bucket) summing to `sum`.
    pub fn push_histogram(
        &mut self,
        labels: &Labels,
        bounds: &[f64],
        cumulative: &[u64],
        count: u64,
        sum: f64,
    ) {
        debug_assert!(self.kind == Kind::Histogram);
        debug_assert_eq!(bounds.len(), cumulative.len());
        let bucket = |le: String, value: u64| {
            let mut labels = labels.clone();
            labels.push(("le", le));
            Sample {
                suffix: "_bucket",
                labels,
                value: Value::Int(value),
            }
        };
        for (&bound, &value) in bounds.iter().zip(cumulative) {
            self.samples.push(bucket(float(bound), value));
        }
        self.samples.push(bucket("+Inf".into(), count));
        self.samples.push(Sample {
            suffix: "_sum",
            labels: labels.clone(),
            value: Value::Float(sum),
        });
        self.samples.push(Sample {
            suffix: "_count",
            labels: labels.clone(),
            value: Value::Int(count),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    fn write(&self, format: Format, out: &mut String) {
        // The text format names a counter family by its samples' name, OpenMetrics
        // without the suffix; OpenMetrics has a type of its own for info metrics.
        let (name, kind) = match (format, self.kind) {
            (Format::Prometheus, Kind::Info) => (self.sample_name(), "gauge"),
            (Format::Prometheus, _) => (self.sample_name(), kind_word(self.kind)),
            (Format::OpenMetrics, kind) => (self.name.to_string(), kind_word(kind)),
        };
        let _ = writeln!(out, "# HELP {name} {}", escape_help(self.help));
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for sample in &self.samples {
            out.push_str(self.name);
            out.push_str(sample.suffix);
            if !sample.labels.is_empty() {
                out.push('{');
                for (i, (key, value)) in sample.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{key}=\"{}\"", escape_label(value));
                }
                out.push('}');
            }
            let _ = match sample.value {
                Value::Int(v) => writeln!(out, " {v}"),
                Value::Float(v) => writeln!(out, " {}", float(v)),
            };
        }
    }
}

fn kind_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
        Kind::Info => "info",
    }
}

/// Every family with samples, in order; OpenMetrics ends with `# EOF`.
pub fn render(families: &[Family], format: Format) -> String {
    let mut out = String::new();
    for family in families.iter().filter(|f| !f.is_empty()) {
        family.write(format, &mut out);
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

/// A float as both formats read it: `+Inf`, `-Inf`, `NaN`, or the shortest
/// decimal that reads back as the same value.
pub fn float(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

/// A label value: backslash, double quote and line feed escaped.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A HELP text: backslash and line feed escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&'static str, &str)]) -> Labels {
        pairs.iter().map(|&(k, v)| (k, v.to_string())).collect()
    }

    #[test]
    fn label_values_are_escaped() {
        let mut family = Family::new(Kind::Gauge, "g", "a \\ help\nline");
        family.push(labels(&[("layer", "a\"b\\c\nd")]), Value::Int(1));
        let text = render(&[family], Format::Prometheus);
        assert_eq!(
            text,
            "# HELP g a \\\\ help\\nline\n# TYPE g gauge\ng{layer=\"a\\\"b\\\\c\\nd\"} 1\n"
        );
    }

    #[test]
    fn counters_get_total_in_both_formats_and_their_family_name_differs() {
        let mut family = Family::new(Kind::Counter, "ops", "requests");
        family.push(labels(&[("op", "read")]), Value::Int(7));
        let text = render(std::slice::from_ref(&family), Format::Prometheus);
        assert_eq!(
            text,
            "# HELP ops_total requests\n# TYPE ops_total counter\nops_total{op=\"read\"} 7\n"
        );
        let open = render(&[family], Format::OpenMetrics);
        assert_eq!(
            open,
            "# HELP ops requests\n# TYPE ops counter\nops_total{op=\"read\"} 7\n# EOF\n"
        );
    }

    #[test]
    fn info_metrics_are_gauges_in_the_text_format() {
        let mut family = Family::new(Kind::Info, "build", "the build");
        family.push(labels(&[("version", "1")]), Value::Int(1));
        let text = render(std::slice::from_ref(&family), Format::Prometheus);
        assert!(
            text.contains("# TYPE build_info gauge\nbuild_info{version=\"1\"} 1\n"),
            "{text}"
        );
        let open = render(&[family], Format::OpenMetrics);
        assert!(
            open.contains("# TYPE build info\nbuild_info{version=\"1\"} 1\n"),
            "{open}"
        );
    }

    #[test]
    fn histograms_have_cumulative_buckets_inf_sum_and_count() {
        let mut family = Family::new(Kind::Histogram, "lat_seconds", "latency");
        family.push_histogram(
            &labels(&[("op", "read")]),
            &[0.001, 0.5, 2.0],
            &[1, 3, 3],
            4,
            2.75,
        );
        let text = render(&[family], Format::Prometheus);
        let expected = "# HELP lat_seconds latency\n# TYPE lat_seconds histogram\n\
            lat_seconds_bucket{op=\"read\",le=\"0.001\"} 1\n\
            lat_seconds_bucket{op=\"read\",le=\"0.5\"} 3\n\
            lat_seconds_bucket{op=\"read\",le=\"2\"} 3\n\
            lat_seconds_bucket{op=\"read\",le=\"+Inf\"} 4\n\
            lat_seconds_sum{op=\"read\"} 2.75\n\
            lat_seconds_count{op=\"read\"} 4\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn floats_are_written_as_both_formats_read_them() {
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(1024.0 / 1e9), "0.000001024");
        assert_eq!(float(0.25), "0.25");
        assert_eq!(float(3.0), "3");
    }

    #[test]
    fn families_without_samples_are_left_out() {
        let empty = Family::new(Kind::Gauge, "nothing", "no samples");
        assert_eq!(render(std::slice::from_ref(&empty), Format::Prometheus), "");
        assert_eq!(render(&[empty], Format::OpenMetrics), "# EOF\n");
    }
}
