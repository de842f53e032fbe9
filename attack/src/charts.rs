//! Charts as SVG text, drawn with plotters' SVG backend: the pictures of
//! the attack's `--report` page, and bench/run's (through
//! `examples/bench_plot.rs`). Each chart is one `<svg>` element with its
//! title, axes and a legend beside the plot. Text is written as SVG
//! `<text>` for the viewer to draw with its own sans-serif font: no font
//! is loaded here, and text widths are only estimated, so labels get room
//! to spare.

use std::error::Error;

use plotters::chart::MeshStyle;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use std::ops::Range;

use plotters::coord::ranged1d::{AsRangedCoord, DefaultFormatting, KeyPointHint, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// A colour as red, green, blue.
pub type Rgb = (u8, u8, u8);

/// The width of every chart, in pixels.
pub const WIDTH: u32 = 960;
const LINE_HEIGHT: u32 = 380;
const FONT: &str = "sans-serif";
// Font sizes below are plotters' points: it writes `font-size` as about
// 0.8 of them, in pixels.
/// Roughly the width of a character of the axis and legend fonts.
const CHAR_PX: u32 = 7;
/// The height of a row of the legend.
const LEGEND_ROW: u32 = 22;
/// Lines of at most this many points are drawn with a dot at each.
const DOTTED_POINTS: usize = 60;

/// One line of a line chart: `(x, y)` points in x order.
#[derive(Debug, Clone)]
pub struct Line {
    pub label: String,
    pub color: Rgb,
    pub points: Vec<(f64, f64)>,
}

/// How a line chart's x axis is scaled.
#[derive(Debug, Clone)]
pub enum XScale {
    /// From 0 to the largest x.
    Linear,
    /// Logarithmic, labelled at exactly these values (all above 0).
    Log(Vec<f64>),
}

/// One bar of a bar chart.
#[derive(Debug, Clone)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub color: Rgb,
}

/// One series of a grouped bar chart: a value, or none, per group.
#[derive(Debug, Clone)]
pub struct BarSeries {
    pub label: String,
    pub color: Rgb,
    pub values: Vec<Option<f64>>,
}

/// A value drawn across every group of a grouped bar chart, dashed.
#[derive(Debug, Clone)]
pub struct Reference {
    pub label: String,
    pub value: f64,
    pub color: Rgb,
}

type Drawn = Result<(), Box<dyn Error>>;

/// A line chart; every line's points are drawn as dots joined by lines.
pub fn lines(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line],
    x_scale: &XScale,
) -> Result<String, String> {
    let entries: Vec<(&str, Rgb, Swatch)> = lines
        .iter()
        .map(|l| (l.label.as_str(), l.color, Swatch::Line))
        .collect();
    svg((WIDTH, LINE_HEIGHT), title, &entries, |plot| {
        let y_max = nice_max(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)));
        match x_scale {
            XScale::Linear => {
                let x_max = lines
                    .iter()
                    .flat_map(|l| l.points.iter().map(|p| p.0))
                    .fold(0.0, f64::max);
                let x_max = if x_max > 0.0 { x_max } else { 1.0 };
                draw_lines(plot, 0.0..x_max, y_max, x_desc, y_desc, lines)
            }
            XScale::Log(keys) => {
                let (lo, hi) = keys
                    .iter()
                    .fold((f64::MAX, 0.0f64), |(lo, hi), &k| (lo.min(k), hi.max(k)));
                let (lo, hi) = if lo > 0.0 && hi >= lo {
                    (lo, hi)
                } else {
                    (1.0, 10.0)
                };
                let x = (lo / 1.25..hi * 1.25)
                    .log_scale()
                    .with_key_points(keys.clone());
                draw_lines(plot, x, y_max, x_desc, y_desc, lines)
            }
        }
    })
}

fn draw_lines<X>(
    plot: &DrawingArea<SVGBackend<'_>, Shift>,
    x: X,
    y_max: f64,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line],
) -> Drawn
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(plot)
        .margin(10)
        .margin_right(24)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(x, 0.0..y_max)?;
    let x_range = chart.x_range();
    let x_span = x_range.end - x_range.start;
    house_style(
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|v| axis_number(*v, x_span))
            .y_label_formatter(&|v| axis_number(*v, y_max)),
    )
    .draw()?;
    for line in lines {
        let color = rgb(line.color);
        // Dots only where they can still be told apart.
        let dots = if line.points.len() <= DOTTED_POINTS {
            3
        } else {
            0
        };
        chart.draw_series(
            LineSeries::new(line.points.iter().copied(), color.stroke_width(2)).point_size(dots),
        )?;
    }
    Ok(())
}

/// A horizontal bar chart, the bars from top to bottom in the given order,
/// each with its value written at its end.
pub fn bars(title: &str, x_desc: &str, bars: &[Bar]) -> Result<String, String> {
    let height = 110 + 30 * bars.len().max(1) as u32;
    let label_px = label_width(bars.iter().map(|b| b.label.as_str()));
    svg((WIDTH, height), title, &[], |plot| {
        let n = bars.len();
        let x_max = nice_max(bars.iter().map(|b| b.value)) * 1.12;
        let mut chart = bar_frame(plot, label_px, x_desc, x_max, n, |i| bars[i].label.clone())?;
        let row = |i: usize| (n - 1 - i) as f64;
        chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
            Rectangle::new(
                [(0.0, row(i) + 0.2), (b.value, row(i) + 0.8)],
                rgb(b.color).filled(),
            )
        }))?;
        chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
            EmptyElement::at((b.value, row(i) + 0.5))
                + Text::new(number(b.value), (5, 0), value_style())
        }))?;
        Ok(())
    })
}

/// Horizontal bars in groups, the groups from top to bottom in the given
/// order; in each group one bar per series that has a value there, and
/// the reference, if any, as a dashed line across all groups.
pub fn grouped_bars(
    title: &str,
    x_desc: &str,
    groups: &[String],
    series: &[BarSeries],
    reference: Option<&Reference>,
) -> Result<String, String> {
    let in_group = |g: usize| -> Vec<(usize, f64)> {
        series
            .iter()
            .enumerate()
            .filter_map(|(s, ser)| ser.values.get(g).copied().flatten().map(|v| (s, v)))
            .collect()
    };
    let bars_drawn: usize = (0..groups.len()).map(|g| in_group(g).len().max(1)).sum();
    let height = 110 + 24 * bars_drawn as u32 + 14 * groups.len() as u32;
    let label_px = label_width(groups.iter().map(String::as_str));
    let mut entries: Vec<(&str, Rgb, Swatch)> = series
        .iter()
        .map(|s| (s.label.as_str(), s.color, Swatch::Box))
        .collect();
    if let Some(r) = reference {
        entries.push((r.label.as_str(), r.color, Swatch::Dashed));
    }
    svg((WIDTH, height), title, &entries, |plot| {
        let n = groups.len();
        let values = series
            .iter()
            .flat_map(|s| s.values.iter().flatten().copied());
        let x_max = nice_max(values.chain(reference.map(|r| r.value))) * 1.12;
        let mut chart = bar_frame(plot, label_px, x_desc, x_max, n, |i| groups[i].clone())?;
        // Group g fills the band from row(g) to row(g) + 1, its bars top down.
        let mut placed: Vec<(usize, f64, f64, f64)> = Vec::new(); // series, value, y0, y1
        for g in 0..n {
            let bars = in_group(g);
            let top = (n - g) as f64 - 0.1;
            let step = 0.8 / bars.len().max(1) as f64;
            for (k, (s, v)) in bars.into_iter().enumerate() {
                let y1 = top - step * k as f64;
                placed.push((s, v, y1 - step * 0.9, y1));
            }
        }
        for (s, ser) in series.iter().enumerate() {
            let color = rgb(ser.color);
            chart.draw_series(
                placed
                    .iter()
                    .filter(|p| p.0 == s)
                    .map(|&(_, v, y0, y1)| Rectangle::new([(0.0, y0), (v, y1)], color.filled())),
            )?;
        }
        chart.draw_series(placed.iter().map(|&(_, v, y0, y1)| {
            EmptyElement::at((v, (y0 + y1) / 2.0)) + Text::new(number(v), (5, 0), value_style())
        }))?;
        if let Some(r) = reference {
            chart.draw_series(DashedLineSeries::new(
                [(r.value, 0.0), (r.value, n as f64)],
                8,
                5,
                rgb(r.color).stroke_width(2),
            ))?;
        }
        Ok(())
    })
}

/// How a legend entry shows its series.
#[derive(Debug, Clone, Copy)]
enum Swatch {
    Line,
    Box,
    Dashed,
}

/// An SVG `size.0` wide with the title on top, `draw` given the plot's
/// area (`size.1` high with the title), and the legend, when there are
/// entries: beside the plot when its labels are short, else below it (which
/// makes the SVG taller), in two columns when they fit.
/// The grid, labels and fonts every chart shares.
fn house_style<'m, 'a, 'b, X: Ranged, Y: Ranged, DB: DrawingBackend>(
    mesh: &'m mut MeshStyle<'a, 'b, X, Y, DB>,
) -> &'m mut MeshStyle<'a, 'b, X, Y, DB> {
    mesh.label_style((FONT, 16))
        .axis_desc_style((FONT, 17))
        .max_light_lines(1)
        .light_line_style(RGBColor(242, 242, 242))
        .bold_line_style(RGBColor(215, 215, 215))
}

/// The frame of a horizontal bar chart, grid drawn: values along x from 0
/// to `x_max`, and `n` rows named by `label`, the first at the top.
fn bar_frame<'a, 'b>(
    plot: &'a DrawingArea<SVGBackend<'b>, Shift>,
    label_px: u32,
    x_desc: &str,
    x_max: f64,
    n: usize,
    label: impl Fn(usize) -> String,
) -> Result<ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, Rows>>, Box<dyn Error>> {
    let mut chart = ChartBuilder::on(plot)
        .margin(10)
        .margin_right(24)
        .x_label_area_size(44)
        .y_label_area_size(label_px)
        .build_cartesian_2d(0.0..x_max, category_axis(n))?;
    let label_of = |y: &f64| row_label(n, *y, &label);
    house_style(
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_labels(8)
            .x_desc(x_desc)
            .x_label_formatter(&|v| axis_number(*v, x_max))
            .y_label_formatter(&label_of),
    )
    .draw()?;
    Ok(chart)
}

fn svg(
    size: (u32, u32),
    title: &str,
    legend: &[(&str, Rgb, Swatch)],
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Drawn,
) -> Result<String, String> {
    let widest = legend.iter().map(|e| e.0.chars().count()).max();
    let entry_width = widest.unwrap_or(0) as u32 * CHAR_PX + 56;
    let beside = entry_width <= size.0 / 4;
    let columns = if 2 * entry_width <= size.0 { 2 } else { 1 };
    let below = if legend.is_empty() || beside {
        0
    } else {
        LEGEND_ROW * legend.len().div_ceil(columns) as u32 + 16
    };
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (size.0, size.1 + below)).into_drawing_area();
        let drawn = (|| -> Drawn {
            root.fill(&WHITE)?;
            let body = root.titled(title, (FONT, 24).into_font().style(FontStyle::Bold))?;
            let plot = if legend.is_empty() {
                body
            } else if beside {
                let (plot, key) = body.split_horizontally(size.0 - entry_width);
                draw_legend(&key, legend, 1, 0)?;
                plot
            } else {
                let (_, height) = body.dim_in_pixel();
                let (plot, key) = body.split_vertically(height - below);
                draw_legend(&key, legend, columns, size.0 / columns as u32)?;
                plot
            };
            draw(&plot)?;
            root.present()?;
            Ok(())
        })();
        drawn.map_err(|e| format!("drawing the chart {title:?}: {e}"))?;
    }
    Ok(out)
}

/// The legend's entries in `columns` columns `column_width` apart, row by
/// row.
fn draw_legend(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    entries: &[(&str, Rgb, Swatch)],
    columns: usize,
    column_width: u32,
) -> Drawn {
    for (i, &(label, color, swatch)) in entries.iter().enumerate() {
        let x = 16 + (i % columns) as i32 * column_width as i32;
        let y = 18 + LEGEND_ROW as i32 * (i / columns) as i32;
        let color = rgb(color);
        match swatch {
            Swatch::Line => {
                area.draw(&PathElement::new(
                    [(x, y), (x + 24, y)],
                    color.stroke_width(2),
                ))?;
                area.draw(&Circle::new((x + 12, y), 3, color.filled()))?;
            }
            Swatch::Box => {
                area.draw(&Rectangle::new(
                    [(x + 2, y - 6), (x + 22, y + 6)],
                    color.filled(),
                ))?;
            }
            Swatch::Dashed => {
                for dash in [x, x + 12] {
                    area.draw(&PathElement::new(
                        [(dash, y), (dash + 8, y)],
                        color.stroke_width(2),
                    ))?;
                }
            }
        }
        area.draw(&Text::new(
            label.to_owned(),
            (x + 32, y),
            TextStyle::from((FONT, 16).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    Ok(())
}

/// `n` rows of categories, 0 at the bottom, each labelled at its middle.
fn category_axis(n: usize) -> Rows {
    Rows { n: n.max(1) }
}

/// The axis of [`category_axis`]: from 0 to `n`, with a key point (a tick
/// and its label) at the middle of each row.
struct Rows {
    n: usize,
}

impl Ranged for Rows {
    type ValueType = f64;
    // The labels come from the chart's label formatter.
    type FormatOption = DefaultFormatting;

    fn range(&self) -> Range<f64> {
        0.0..self.n as f64
    }

    fn map(&self, value: &f64, (from, to): (i32, i32)) -> i32 {
        let share = value / self.n as f64;
        from + (share * f64::from(to - from)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        (0..self.n).map(|i| i as f64 + 0.5).collect()
    }
}

/// The label of the row whose middle is `y`: the first item is the top row.
fn row_label(n: usize, y: f64, label: impl Fn(usize) -> String) -> String {
    let row = y.floor();
    if row < 0.0 || row >= n as f64 {
        return String::new();
    }
    label(n - 1 - row as usize)
}

/// The style of a value written just after the end of its bar.
fn value_style() -> TextStyle<'static> {
    TextStyle::from((FONT, 15).into_font()).pos(Pos::new(HPos::Left, VPos::Center))
}

/// Room for the longest of `labels` left of the axis.
fn label_width<'a>(labels: impl Iterator<Item = &'a str>) -> u32 {
    let widest = labels.map(|l| l.chars().count()).max().unwrap_or(0) as u32;
    (widest * CHAR_PX + 20).clamp(60, WIDTH / 2)
}

/// A top for an axis from 0 that leaves the largest value some room.
fn nice_max(values: impl Iterator<Item = f64>) -> f64 {
    let max = values.filter(|v| v.is_finite()).fold(0.0, f64::max);
    if max > 0.0 { max * 1.08 } else { 1.0 }
}

fn rgb((r, g, b): Rgb) -> RGBColor {
    RGBColor(r, g, b)
}

/// A tick label on an axis `span` long: with as many decimals as ticks
/// about a tenth of the span apart need to differ.
fn axis_number(v: f64, span: f64) -> String {
    if !v.is_finite() || !span.is_finite() || span <= 0.0 || span >= 1000.0 {
        return number(v);
    }
    let decimals = ((-(span / 10.0).log10()).ceil() + 1.0).clamp(0.0, 6.0) as usize;
    if v.abs() >= 100.0 {
        return number(v);
    }
    let text = format!("{v:.decimals$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// A number for an axis or a bar: thousands separated from 100 on, else
/// with up to two decimals.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return String::new();
    }
    if v.abs() >= 100.0 {
        let whole = format!("{:.0}", v.abs());
        let mut grouped = String::new();
        for (i, digit) in whole.chars().enumerate() {
            if i > 0 && (whole.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        return if v < 0.0 {
            format!("-{grouped}")
        } else {
            grouped
        };
    }
    let text = format!("{v:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_or_trimmed() {
        assert_eq!(number(0.0), "0");
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(2.25), "2.25");
        assert_eq!(number(12.0), "12");
        assert_eq!(number(100.0), "100");
        assert_eq!(number(1234.4), "1,234");
        assert_eq!(number(13_286.0), "13,286");
        assert_eq!(number(1_000_000.0), "1,000,000");
        assert_eq!(number(-2500.0), "-2,500");
    }

    #[test]
    fn axis_labels_have_the_decimals_their_span_needs() {
        assert_eq!(axis_number(0.005, 0.05), "0.005");
        assert_eq!(axis_number(0.01, 0.05), "0.01");
        assert_eq!(axis_number(0.0, 0.05), "0");
        assert_eq!(axis_number(2.5, 30.0), "2.5");
        assert_eq!(axis_number(20.0, 30.0), "20");
        assert_eq!(axis_number(1500.0, 3000.0), "1,500");
        assert_eq!(axis_number(120.0, 300.0), "120");
    }
}
