//! Percentiles and the plain-text tables the harness prints.

/// Nearest-rank percentile of `values` (any order); `None` when empty.
pub fn percentile(values: &[i64], p: f64) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// Microseconds as milliseconds with one decimal ("-" when absent).
pub fn ms(us: Option<i64>) -> String {
    us.map_or_else(|| "-".into(), |v| format!("{:.1}", v as f64 / 1000.0))
}

/// p50 / p95 / max in ms.
pub fn spread(values: &[i64]) -> [String; 3] {
    [
        ms(percentile(values, 50.0)),
        ms(percentile(values, 95.0)),
        ms(values.iter().copied().max()),
    ]
}

pub fn ratio(a: Option<i64>, b: Option<i64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0 => Some(a as f64 / b as f64),
        _ => None,
    }
}

pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// A table with a header row; columns are padded to their widest cell.
pub struct Table {
    pub title: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: impl Into<String>, header: &[&str]) -> Table {
        Table {
            title: title.into(),
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| -> String {
            let mut out = String::from("  ");
            for (i, cell) in cells.iter().enumerate().take(columns) {
                let pad = widths[i] - cell.chars().count();
                // First column left-aligned, numbers right-aligned.
                if i == 0 {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad));
                } else {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                }
                out.push_str("  ");
            }
            out.trim_end().to_owned()
        };
        let mut out = format!("{}\n", self.title);
        out.push_str(&line(&self.header));
        out.push('\n');
        let total: usize = widths.iter().sum::<usize>() + 2 * columns;
        out.push_str(&format!("  {}\n", "-".repeat(total.saturating_sub(2))));
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        for note in &self.notes {
            out.push_str(&format!("  * {note}\n"));
        }
        out
    }
}

/// The whole report: `setup` (see `testbed::setup_note`), the tables, the targets with their
/// verdicts, the run time and where the logs are.
pub fn render(
    setup: &str,
    tables: &[Table],
    targets: &[(String, bool)],
    run_time: std::time::Duration,
    workdir: &std::path::Path,
) -> String {
    let mut out = String::from(setup);
    for t in tables {
        out.push('\n');
        out.push_str(&t.render());
    }
    out.push_str("\ntargets:\n");
    for (what, met) in targets {
        out.push_str(&format!("  [{}] {what}\n", verdict(*met)));
    }
    out.push_str(&format!(
        "\nharness run time {:.0} s; logs in {}\n",
        run_time.as_secs_f64(),
        workdir.display()
    ));
    out
}
