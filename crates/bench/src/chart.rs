//! SVG charts of the figures of one benchmark run.
//!
//! The harness draws its own charts so that the pictures in `docs/benchmarks.md` come from
//! the same run as the figures printed next to them, rather than from a spreadsheet redrawn
//! by hand: a rerun of a scenario regenerates both. Charts are SVG, written with `plotters`'
//! SVG backend only: text is left to whatever displays the file (`<text>` elements in a
//! sans-serif font), so no font is loaded or rasterised here and no font crate is built.

use std::ops::Range;
use std::path::Path;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

/// Size of every chart, in pixels.
const SIZE: (u32, u32) = (800, 480);
/// Font family of every text; the SVG viewer picks the actual font.
const FONT: &str = "sans-serif";
// Font sizes in plotters' unit: its SVG backend writes `font-size` as the size / 1.24, so
// these come out at about 21, 16, 13.7 and 14.5 pixels.
const TITLE_SIZE: u32 = 26;
const AXIS_DESC_SIZE: u32 = 20;
const TICK_LABEL_SIZE: u32 = 17;
const LEGEND_SIZE: u32 = 18;

/// Colours of the series in order (Tableau 10): distinct, and readable on white.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0xe1, 0x57, 0x59),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0xed, 0xc9, 0x48),
    RGBColor(0x9c, 0x75, 0x5f),
    RGBColor(0xff, 0x9d, 0xa7),
    RGBColor(0xba, 0xb0, 0xac),
];

/// About this many points are drawn for one cumulative distribution, whatever the number of
/// samples (an SVG of every sample of a long run would be megabytes).
const MAX_DISTRIBUTION_POINTS: usize = 2000;

/// One named series of (x, y) points.
pub struct Series {
    /// Shown in the legend.
    pub name: String,
    /// Drawn in this order, joined by a line.
    pub points: Vec<(f64, f64)>,
}

/// A line chart with points marked, one line per series, legend, axis labels; y axis from 0.
///
/// Writes an SVG file to `path`. Points with a coordinate that is not finite are left out;
/// the x axis spans the points, the y axis runs from 0 (or below, if a value is negative)
/// to a little above the highest value.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), String> {
    let lines: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| {
            let points = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            (s.name.as_str(), points)
        })
        .collect();
    let all = || lines.iter().flat_map(|(_, points)| points.iter());
    let x = padded(bounds(all().map(|p| p.0)), 0.03);
    let (y_low, y_high) = bounds(all().map(|p| p.1)).unwrap_or((0.0, 1.0));
    let (y_low, y_high) = (y_low.min(0.0), y_high.max(0.0));
    let y = if y_high > y_low {
        y_low * 1.08..y_high * 1.08
    } else {
        0.0..1.0
    };
    let (x_span, y_span) = (x.end - x.start, y.end - y.start);
    draw(
        path,
        title,
        x_label,
        y_label,
        &lines,
        x,
        &|v| number(*v, x_span),
        y,
        &|v| number(*v, y_span),
        true,
    )
}

/// The distribution of samples (e.g. latencies in milliseconds) of each series, drawn as a
/// cumulative distribution (x = value, y = percentile 0..100), one line per series; x axis on a
/// log scale if the range spans more than two decades, otherwise linear.
///
/// Writes an SVG file to `path`. Samples that are not finite are left out. A log scale needs
/// every sample above zero: with a sample at or below zero the x axis stays linear.
pub fn distribution_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[(String, Vec<f64>)],
) -> Result<(), String> {
    let lines: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, samples)| (name.as_str(), cumulative(samples)))
        .collect();
    let bounds = bounds(
        lines
            .iter()
            .flat_map(|(_, points)| points.iter().map(|p| p.0)),
    );
    let y = 0.0..100.0;
    let y_format = |v: &f64| number(*v, 100.0);
    match bounds {
        Some((low, high)) if low > 0.0 && high / low > 100.0 => draw(
            path,
            title,
            x_label,
            "percentile",
            &lines,
            (low / 1.15..high * 1.15).log_scale(),
            &|v| number(*v, v.abs()),
            y,
            &y_format,
            false,
        ),
        bounds => {
            let x = padded(bounds, 0.03);
            let span = x.end - x.start;
            draw(
                path,
                title,
                x_label,
                "percentile",
                &lines,
                x,
                &|v| number(*v, span),
                y,
                &y_format,
                false,
            )
        }
    }
}

/// The empirical cumulative distribution of `samples`: (value, percent of samples at or below
/// it), starting at (lowest, 0), thinned to at most about `MAX_DISTRIBUTION_POINTS` points
/// evenly spread over the ranks; the highest sample is always kept.
fn cumulative(samples: &[f64]) -> Vec<(f64, f64)> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return Vec::new();
    }
    let percent = |i: usize| 100.0 * (i + 1) as f64 / n as f64;
    let mut points = vec![(sorted[0], 0.0)];
    if n <= MAX_DISTRIBUTION_POINTS {
        points.extend(sorted.iter().enumerate().map(|(i, v)| (*v, percent(i))));
    } else {
        let last = MAX_DISTRIBUTION_POINTS - 1;
        let mut previous = None;
        for j in 0..=last {
            let i = (j * (n - 1) + last / 2) / last;
            if previous != Some(i) {
                points.push((sorted[i], percent(i)));
                previous = Some(i);
            }
        }
    }
    points
}

/// Lowest and highest of `values`, if there is any.
fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((low, high)) => Some((low.min(v), high.max(v))),
    })
}

/// A linear range over `bounds`, widened by `fraction` of its span on each side but not
/// below zero if it starts at or above zero; a single value gets a range around it.
fn padded(bounds: Option<(f64, f64)>, fraction: f64) -> Range<f64> {
    match bounds {
        None => 0.0..1.0,
        Some((low, high)) if high > low => {
            let pad = (high - low) * fraction;
            let start = if low >= 0.0 {
                (low - pad).max(0.0)
            } else {
                low - pad
            };
            start..high + pad
        }
        Some((value, _)) => {
            let pad = if value == 0.0 { 1.0 } else { value.abs() / 2.0 };
            value - pad..value + pad
        }
    }
}

/// `value` as a tick label, with enough decimals for ticks over `scale` (the span of a linear
/// axis, the value itself on a log axis) to differ, and no trailing zeros.
fn number(value: f64, scale: f64) -> String {
    let decimals = if scale > 0.0 && scale.is_finite() {
        (2.0 - scale.log10().floor()).clamp(0.0, 9.0) as usize
    } else {
        2
    };
    let text = format!("{value:.decimals$}");
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

/// Draws `lines` on the given axes and writes the SVG file.
#[allow(clippy::too_many_arguments)]
fn draw<X>(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    lines: &[(&str, Vec<(f64, f64)>)],
    x: X,
    x_format: &dyn Fn(&f64) -> String,
    y: Range<f64>,
    y_format: &dyn Fn(&f64) -> String,
    mark_points: bool,
) -> Result<(), String>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let failed = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, TITLE_SIZE))
        .margin(16)
        .x_label_area_size(52)
        .y_label_area_size(72)
        .build_cartesian_2d(x, y)
        .map_err(|e| failed(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .axis_desc_style((FONT, AXIS_DESC_SIZE))
        .label_style((FONT, TICK_LABEL_SIZE))
        .x_label_formatter(x_format)
        .y_label_formatter(y_format)
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(BLACK.mix(0.04))
        .draw()
        .map_err(|e| failed(&e))?;

    for (i, (name, points)) in lines.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let style = ShapeStyle {
            color: color.to_rgba(),
            filled: true,
            stroke_width: 2,
        };
        let series = LineSeries::new(points.iter().copied(), style).point_size(if mark_points {
            4
        } else {
            0
        });
        chart
            .draw_series(series)
            .map_err(|e| failed(&e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
    }

    if !lines.is_empty() {
        let corner = legend_corner(&chart, lines);
        chart
            .configure_series_labels()
            .position(corner)
            .margin(12)
            .label_font((FONT, LEGEND_SIZE))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| failed(&e))?;
    }
    root.present().map_err(|e| failed(&e))
}

/// The corner of the plotting area where the legend covers the fewest drawn points (lines
/// sampled between their points), upper right first on a tie.
fn legend_corner<X, Y>(
    chart: &ChartContext<'_, SVGBackend<'_>, Cartesian2d<X, Y>>,
    lines: &[(&str, Vec<(f64, f64)>)],
) -> SeriesLabelPosition
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    // The legend's size as a viewer will draw it, roughly: a sample line, the longest name
    // at about 0.55 em a character, one row per series, and the margin around it.
    let em = f64::from(LEGEND_SIZE) / 1.24;
    let longest = lines
        .iter()
        .map(|(name, _)| name.chars().count())
        .max()
        .unwrap_or(0);
    let width = 12 + 50 + (longest as f64 * 0.55 * em) as i32;
    let height = 12 + 10 + (lines.len() as f64 * em * 1.4) as i32;
    let (xs, ys) = chart.plotting_area().get_pixel_range();
    let boxes = [
        (SeriesLabelPosition::UpperRight, xs.end - width, ys.start),
        (SeriesLabelPosition::UpperLeft, xs.start, ys.start),
        (
            SeriesLabelPosition::LowerRight,
            xs.end - width,
            ys.end - height,
        ),
        (SeriesLabelPosition::LowerLeft, xs.start, ys.end - height),
    ];
    let mut covered = [0usize; 4];
    for (_, points) in lines {
        let pixels: Vec<(i32, i32)> = points.iter().map(|p| chart.backend_coord(p)).collect();
        let samples = pixels.windows(2).flat_map(|pair| {
            let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
            (0..16).map(move |k| (x0 + (x1 - x0) * k / 16, y0 + (y1 - y0) * k / 16))
        });
        for (px, py) in samples.chain(pixels.last().copied()) {
            for (count, (_, left, top)) in covered.iter_mut().zip(&boxes) {
                if (*left..left + width).contains(&px) && (*top..top + height).contains(&py) {
                    *count += 1;
                }
            }
        }
    }
    boxes
        .into_iter()
        .zip(covered)
        .min_by_key(|(_, count)| *count)
        .map_or(SeriesLabelPosition::UpperRight, |(b, _)| b.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("keel-bench-chart-{}-{name}", std::process::id()))
    }

    /// Reads and removes the chart at `path`, checks that it looks like an 800x480 SVG and
    /// returns the contents of its `<text>` elements.
    fn read_svg(path: &Path) -> Vec<String> {
        let svg = std::fs::read_to_string(path).expect("chart written");
        std::fs::remove_file(path).expect("chart removed");
        assert!(
            svg.starts_with("<svg"),
            "not an SVG: {}",
            &svg[..svg.len().min(200)]
        );
        assert!(svg.trim_end().ends_with("</svg>"), "SVG not closed");
        assert!(svg.contains(r#"width="800" height="480""#), "size");
        assert!(svg.contains(r##"fill="#FFFFFF""##), "white background");
        svg.split("<text")
            .skip(1)
            .map(|element| {
                assert!(
                    element.contains(r#"font-family="sans-serif""#),
                    "font: {element}"
                );
                let start = element.find('>').expect("text element closed") + 1;
                let end = element.find("</text>").expect("text element ended");
                element[start..end].trim().to_owned()
            })
            .collect()
    }

    fn assert_texts(texts: &[String], expected: &[&str]) {
        for text in expected {
            assert!(texts.iter().any(|t| t == text), "{text} not in {texts:?}");
        }
    }

    #[test]
    fn line_chart_writes_svg_with_title_labels_and_series() {
        let path = temp_file("line.svg");
        let series = [
            Series {
                name: "keel".to_owned(),
                points: vec![(1.0, 900.0), (2.0, 1700.0), (4.0, 3100.0), (8.0, 4200.0)],
            },
            Series {
                name: "baseline".to_owned(),
                points: vec![(1.0, 1000.0), (2.0, 1900.0), (4.0, 3300.0), (8.0, f64::NAN)],
            },
        ];
        line_chart(
            &path,
            "Throughput by workers",
            "workers",
            "units per second",
            &series,
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).expect("chart written");
        assert_eq!(svg.matches("<circle").count(), 7, "points not marked");
        let texts = read_svg(&path);
        let expected = [
            "Throughput by workers",
            "workers",
            "units per second",
            "keel",
            "baseline",
        ];
        assert_texts(&texts, &expected);
    }

    #[test]
    fn distribution_chart_writes_svg_on_linear_and_log_axes() {
        let narrow: Vec<f64> = (1..=500).map(|i| 2.0 + f64::from(i) / 100.0).collect();
        let wide: Vec<f64> = (0..5000).map(|i| 0.1 * 1.002f64.powi(i)).collect();
        for (file, samples) in [("linear.svg", narrow), ("log.svg", wide)] {
            let path = temp_file(file);
            let series = [
                ("keel".to_owned(), samples.clone()),
                (
                    "baseline".to_owned(),
                    samples.iter().map(|v| v * 1.5).collect(),
                ),
                ("empty".to_owned(), Vec::new()),
            ];
            distribution_chart(&path, "Commit latency", "milliseconds", &series).unwrap();
            let texts = read_svg(&path);
            let expected = [
                "Commit latency",
                "milliseconds",
                "percentile",
                "keel",
                "baseline",
            ];
            assert_texts(&texts, &expected);
            assert!(texts.iter().any(|t| t == "100"), "{file}: percentile ticks");
        }
    }

    #[test]
    fn empty_charts_still_draw() {
        let path = temp_file("empty-line.svg");
        line_chart(&path, "Nothing", "x", "y", &[]).unwrap();
        assert_texts(&read_svg(&path), &["Nothing"]);
        let path = temp_file("empty-distribution.svg");
        distribution_chart(&path, "Nothing either", "ms", &[]).unwrap();
        assert_texts(&read_svg(&path), &["Nothing either"]);
    }

    #[test]
    fn error_names_the_file() {
        let path = temp_file("missing-dir").join("chart.svg");
        let error = line_chart(&path, "t", "x", "y", &[]).unwrap_err();
        assert!(error.contains(&path.display().to_string()), "{error}");
    }

    #[test]
    fn cumulative_is_thinned_and_ends_at_the_highest_sample() {
        let samples: Vec<f64> = (0..10_000).rev().map(f64::from).collect();
        let points = cumulative(&samples);
        assert!(points.len() <= MAX_DISTRIBUTION_POINTS + 1);
        assert_eq!(points[0], (0.0, 0.0));
        assert_eq!(*points.last().unwrap(), (9999.0, 100.0));
        assert!(
            points
                .windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1)
        );
        assert_eq!(cumulative(&[3.0]), vec![(3.0, 0.0), (3.0, 100.0)]);
    }

    #[test]
    fn tick_labels_have_just_enough_decimals() {
        assert_eq!(number(200.0, 1100.0), "200");
        assert_eq!(number(0.25, 1.0), "0.25");
        assert_eq!(number(0.30000000000000004, 2.0), "0.3");
        assert_eq!(number(0.002, 0.002), "0.002");
        assert_eq!(number(-0.0001, 10.0), "0");
    }
}
