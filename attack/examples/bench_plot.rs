//! bench/run's pictures, a dev tool it builds and runs: reads the results
//! file bench/run writes and draws two SVG charts into a directory with the
//! attack package's charts (plotters' SVG backend).
//!
//! ```text
//! bench_plot RESULTS.tsv OUT_DIR [--run TEXT]
//! ```
//!
//! The results file is tab-separated, one figure a line, with the columns
//! `chart series category clients per_second`; lines starting with `#` and
//! the header line are skipped. Two charts are drawn from it:
//!
//! - `scenarios`: one group of bars per `category` (in the order they first
//!   appear), one bar per `series` with a figure there; a row whose category
//!   is `-` is a reference drawn across every group, dashed. Written to
//!   `OUT_DIR/scenarios.svg`.
//! - `clients`: one line per `series` through its `(clients, per_second)`
//!   points, on a logarithmic axis of clients. Written to
//!   `OUT_DIR/hot-coupon-clients.svg`.
//!
//! A figure that is not a number (bench/run writes `n/a` for one it could
//! not measure) is left out and named on stderr. `--run TEXT` (the run's
//! date and commit) is added to each chart's axis description.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use flash_coupons_attack::charts::{self, BarSeries, Line, Reference, Rgb, XScale};

/// Series colours, given out in the order the series first appear in the
/// file, so that a series has the same colour in both charts.
const PALETTE: [Rgb; 6] = [
    (31, 119, 180),
    (44, 160, 44),
    (148, 103, 189),
    (214, 39, 40),
    (255, 127, 14),
    (140, 86, 75),
];
const REFERENCE_COLOR: Rgb = (90, 90, 90);

#[derive(Debug, Clone, PartialEq)]
struct Row {
    chart: String,
    series: String,
    category: String,
    clients: Option<u32>,
    per_second: f64,
}

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(written) => {
            for path in written {
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("bench_plot: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<Vec<PathBuf>, String> {
    let usage = "usage: bench_plot RESULTS.tsv OUT_DIR [--run TEXT]";
    let (input, out_dir, note) = match &args[..] {
        [input, out] => (input, out, None),
        [input, out, flag, note] if flag == "--run" => (input, out, Some(note.as_str())),
        _ => return Err(usage.to_owned()),
    };
    let text = std::fs::read_to_string(input).map_err(|e| format!("cannot read {input}: {e}"))?;
    let (rows, skipped) = parse(&text)?;
    for line in skipped {
        eprintln!("bench_plot: left out (not a number): {line}");
    }
    let colors = colors(&rows);
    let suffix = note.map_or(String::new(), |n| format!(" ({n})"));
    let out_dir = Path::new(out_dir);
    let mut written = Vec::new();
    for (name, svg) in [
        ("scenarios.svg", scenarios_chart(&rows, &colors, &suffix)?),
        (
            "hot-coupon-clients.svg",
            clients_chart(&rows, &colors, &suffix)?,
        ),
    ] {
        let path = out_dir.join(name);
        std::fs::write(&path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// The rows with a figure, and the lines whose figure is not a number.
fn parse(text: &str) -> Result<(Vec<Row>, Vec<String>), String> {
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') || line.starts_with("chart\t") {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [chart, series, category, clients, per_second] = fields[..] else {
            return Err(format!(
                "line {}: {} fields, not 5 (chart, series, category, clients, per_second): {line:?}",
                n + 1,
                fields.len()
            ));
        };
        let clients = match clients.trim() {
            "" => None,
            c => Some(
                c.parse()
                    .map_err(|_| format!("line {}: clients {c:?} is not a number", n + 1))?,
            ),
        };
        match per_second.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => rows.push(Row {
                chart: chart.to_owned(),
                series: series.to_owned(),
                category: category.to_owned(),
                clients,
                per_second: v,
            }),
            _ => skipped.push(line.to_owned()),
        }
    }
    Ok((rows, skipped))
}

/// A colour per series (references aside), in order of first appearance.
fn colors(rows: &[Row]) -> BTreeMap<String, Rgb> {
    let mut colors = BTreeMap::new();
    for row in rows.iter().filter(|r| r.category != "-") {
        let next = PALETTE[colors.len() % PALETTE.len()];
        colors.entry(row.series.clone()).or_insert(next);
    }
    colors
}

/// Items in the order they first appear.
fn in_order<'a>(items: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for item in items {
        if !seen.iter().any(|s| s == item) {
            seen.push(item.to_owned());
        }
    }
    seen
}

fn scenarios_chart(
    rows: &[Row],
    colors: &BTreeMap<String, Rgb>,
    suffix: &str,
) -> Result<String, String> {
    let rows: Vec<&Row> = rows.iter().filter(|r| r.chart == "scenarios").collect();
    let bars: Vec<&Row> = rows.iter().copied().filter(|r| r.category != "-").collect();
    let groups = in_order(bars.iter().map(|r| r.category.as_str()));
    let series: Vec<BarSeries> = in_order(bars.iter().map(|r| r.series.as_str()))
        .into_iter()
        .map(|name| BarSeries {
            values: groups
                .iter()
                .map(|g| {
                    bars.iter()
                        .find(|r| &r.category == g && r.series == name)
                        .map(|r| r.per_second)
                })
                .collect(),
            color: colors[&name],
            label: name,
        })
        .collect();
    let reference = rows.iter().find(|r| r.category == "-").map(|r| Reference {
        label: r.series.clone(),
        value: r.per_second,
        color: REFERENCE_COLOR,
    });
    charts::grouped_bars(
        "Claims per second by scenario: the server against the database alone",
        &format!("per second, 5xx left out (pgbench: committed){suffix}"),
        &groups,
        &series,
        reference.as_ref(),
    )
}

fn clients_chart(
    rows: &[Row],
    colors: &BTreeMap<String, Rgb>,
    suffix: &str,
) -> Result<String, String> {
    let rows: Vec<&Row> = rows.iter().filter(|r| r.chart == "clients").collect();
    let mut keys: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.clients.map(f64::from))
        .collect();
    keys.sort_by(f64::total_cmp);
    keys.dedup();
    let lines: Vec<Line> = in_order(rows.iter().map(|r| r.series.as_str()))
        .into_iter()
        .map(|name| {
            let mut points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.series == name)
                .filter_map(|r| Some((f64::from(r.clients?), r.per_second)))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Line {
                color: colors[&name],
                label: name,
                points,
            }
        })
        .collect();
    charts::lines(
        "One hot coupon: claims per second as clients grow",
        &format!("connections (server) or clients (pgbench), log scale{suffix}"),
        "claims/s",
        &lines,
        &XScale::Log(keys),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# a comment\n\
        chart\tseries\tcategory\tclients\tper_second\n\
        scenarios\tserver\tS1 hot coupon, 64c\t\t9667\n\
        scenarios\tpgbench\tS1 hot coupon, 64c\t\t471\n\
        scenarios\tserver\tS3 sold-out coupon, 64c\t\t13530\n\
        scenarios\t404 ceiling\t-\t\t13727\n\
        scenarios\tserver\tS2 sell-out\t\tn/a\n\
        clients\tserver\t\t1\t1500\n\
        clients\tserver\t\t64\t9667\n\
        clients\tpgbench\t\t64\t471\n\
        clients\tpgbench\t\t1\t1918\n";

    #[test]
    fn rows_are_read_and_figures_that_are_not_numbers_left_out() {
        let (rows, skipped) = parse(SAMPLE).unwrap();
        assert_eq!(rows.len(), 8);
        assert_eq!(skipped, ["scenarios\tserver\tS2 sell-out\t\tn/a"]);
        assert_eq!(rows[0].series, "server");
        assert_eq!(rows[0].clients, None);
        assert_eq!(rows[4].clients, Some(1));
        assert!(parse("scenarios\tserver\t9667\n").is_err());
        assert!(parse("clients\tserver\t\tmany\t1\n").is_err());
    }

    #[test]
    fn both_charts_are_drawn_with_every_series_and_group() {
        let (rows, _) = parse(SAMPLE).unwrap();
        let colors = colors(&rows);
        assert_eq!(colors["server"], PALETTE[0]);
        assert_eq!(colors["pgbench"], PALETTE[1]);
        assert!(!colors.contains_key("404 ceiling"));
        let bars = scenarios_chart(&rows, &colors, " (run x)").unwrap();
        for text in [
            "S1 hot coupon, 64c",
            "S3 sold-out coupon, 64c",
            "404 ceiling",
            "(run x)",
        ] {
            assert!(bars.contains(text), "no {text:?} in {bars}");
        }
        // Server: two bars and a legend box; pgbench: one and a box.
        for ((r, g, b), n) in [(PALETTE[0], 3), (PALETTE[1], 2)] {
            let fill = format!("fill=\"#{r:02X}{g:02X}{b:02X}\" stroke=\"none\"");
            assert_eq!(bars.matches(&fill).count(), n, "{fill} in {bars}");
        }
        let lines = clients_chart(&rows, &colors, "").unwrap();
        // Each series: its line, and its legend's swatch.
        for (r, g, b) in [PALETTE[0], PALETTE[1]] {
            let stroke =
                format!("<polyline fill=\"none\" opacity=\"1\" stroke=\"#{r:02X}{g:02X}{b:02X}\"");
            assert_eq!(lines.matches(&stroke).count(), 2, "{stroke} in {lines}");
        }
        // The clients axis is labelled at exactly the clients measured.
        for text in [">\n1\n</text>", ">\n64\n</text>", "claims/s"] {
            assert!(lines.contains(text), "no {text:?} in {lines}");
        }
    }
}
