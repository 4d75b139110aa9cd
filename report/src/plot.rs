//! Figures: bar charts with error bars and curves with bands, as SVG and PNG (plotters). Every
//! figure has a title, axis labels in words, the legend in a column right of the data, and a note
//! under the axes saying what the bars, lines and error bars are.
//!
//! Text must not use combining marks (the hat of λ̂, U+0302): plotters' bitmap backend draws each
//! glyph at the pen position without its side bearing, so the mark lands beside its letter.

use anyhow::{anyhow, bail, Context, Result};
use common::summary::Curve;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];
const LEGEND_FONT: u32 = 15;
const NOTE_FONT: u32 = 14;
const NOTE_HEIGHT: u32 = 26;
const TITLE_FONT: u32 = 21;

/// Registers DejaVu Sans as plotters' sans-serif font (text needs a font to be measured and drawn).
pub fn register_font() -> Result<()> {
    let path = FONT_PATHS
        .iter()
        .find(|p| Path::new(p).is_file())
        .ok_or_else(|| {
            anyhow!(
                "no DejaVu Sans font found ({}); install fonts-dejavu-core",
                FONT_PATHS.join(", ")
            )
        })?;
    let bytes: &'static [u8] = Box::leak(
        std::fs::read(path)
            .with_context(|| path.to_string())?
            .into_boxed_slice(),
    );
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{path}: not a usable font"))
}

/// The words of a figure.
#[derive(Debug, Clone)]
pub struct Texts {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Heading of the legend (what the labels are: "optimiser", "data set, model").
    pub legend_title: String,
    /// One line under the axes: what the marks and the error bars are.
    pub note: String,
    /// Factor from the recorded value to the plotted one (100 for a fraction shown in %).
    pub y_scale: f64,
}

/// A tick label with at most 4 significant digits and no trailing zeros.
fn short(x: f64) -> String {
    let s = format!("{:.4}", x);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

fn palette(i: usize) -> RGBColor {
    const C: [RGBColor; 12] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
        RGBColor(188, 189, 34),
        RGBColor(127, 127, 127),
        RGBColor(0, 0, 128),
        RGBColor(255, 187, 120),
    ];
    C[i % C.len()]
}

/// Width in pixels of `text` in the sans-serif font at `size` (a rough estimate if it cannot be
/// measured).
fn text_width(text: &str, size: u32) -> u32 {
    ("sans-serif", size)
        .into_font()
        .box_size(text)
        .map(|(w, _)| w)
        .unwrap_or(text.chars().count() as u32 * size * 6 / 10)
}

/// Width of the legend column for these entries and heading.
fn legend_width(labels: &[String], title: &str) -> u32 {
    labels
        .iter()
        .map(|l| text_width(l, LEGEND_FONT) + 50)
        .chain(std::iter::once(text_width(title, LEGEND_FONT) + 30))
        .max()
        .unwrap_or(0)
}

/// Width the note and the title need (so that the figure is never narrower than either).
fn text_widths(texts: &Texts, legend: u32) -> u32 {
    (text_width(&texts.note, NOTE_FONT) + 30)
        .max(text_width(&texts.title, TITLE_FONT) + legend + 60)
}

/// Draws the heading and the entries top-down in the legend's own column (never over the data);
/// `mark` draws one entry's symbol with its left edge at x and its middle at y.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    labels: &[String],
    top: i32,
    mark: impl Fn(usize, i32, i32) -> Vec<DynElement<'static, DB, (i32, i32)>>,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let style = ("sans-serif", LEGEND_FONT).into_font().color(&BLACK);
    let heading = ("sans-serif", LEGEND_FONT)
        .into_font()
        .color(&RGBColor(80, 80, 80));
    area.draw_text(title, &heading, (4, top - 34))?;
    for (i, l) in labels.iter().enumerate() {
        let y = top + 22 * i as i32;
        for e in mark(i, 8, y) {
            area.draw(&e)?;
        }
        area.draw_text(l, &style, (30, y - LEGEND_FONT as i32 / 2 - 1))?;
    }
    Ok(())
}

/// Splits a figure into the chart and the legend column right of it, and writes the note on the
/// line under both.
#[allow(clippy::type_complexity)]
fn layout<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    legend_w: u32,
    note: &str,
) -> Result<(DrawingArea<DB, Shift>, DrawingArea<DB, Shift>)>
where
    DB::ErrorType: 'static,
{
    let (w, h) = area.dim_in_pixel();
    let (main, note_area) = area.split_vertically(h.saturating_sub(NOTE_HEIGHT));
    note_area.draw_text(
        note,
        &("sans-serif", NOTE_FONT)
            .into_font()
            .color(&RGBColor(60, 60, 60)),
        (14, 4),
    )?;
    let (chart, legend) = main.split_horizontally(w.saturating_sub(legend_w));
    Ok((chart, legend))
}

/// Something drawn on any plotters backend.
trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static;
}

/// Writes `<out>.svg` and `<out>.png`, each to a temporary file that is then renamed.
fn render(fig: &impl Figure, out: &Path) -> Result<()> {
    let svg = out.with_extension("svg");
    let mut text = String::new();
    {
        let area = SVGBackend::with_string(&mut text, fig.size()).into_drawing_area();
        area.fill(&WHITE)?;
        fig.draw(&area)?;
        area.present()?;
    }
    common::io::atomic_write(&svg, text.as_bytes())?;
    let png = out.with_extension("png");
    let tmp = out.with_extension("partial.png");
    {
        let area = BitMapBackend::new(&tmp, fig.size()).into_drawing_area();
        area.fill(&WHITE)?;
        fig.draw(&area)?;
        area.present()?;
    }
    std::fs::rename(&tmp, &png).with_context(|| png.display().to_string())?;
    Ok(())
}

/// One bar: the mean, its error (a half-width; NaN: none) and how many values it summarises.
#[derive(Debug, Clone, Copy)]
pub struct Bar {
    pub mean: f64,
    pub err: f64,
    pub n: usize,
}

/// Bars by group (along x) and label (one colour each).
#[derive(Debug, Clone, Default)]
pub struct BarSet {
    pub groups: Vec<String>,
    pub labels: Vec<String>,
    pub bars: BTreeMap<(String, String), Bar>,
}

struct Bars<'a> {
    set: &'a BarSet,
    texts: &'a Texts,
}

impl Figure for Bars<'_> {
    fn size(&self) -> (u32, u32) {
        let chart = 170 * self.set.groups.len().max(3) as u32 + 110;
        let legend = legend_width(&self.set.labels, &self.texts.legend_title);
        ((chart + legend).max(text_widths(self.texts, legend)), 500)
    }
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let s = self.texts.y_scale;
        let err = |b: &Bar| if b.err.is_finite() { b.err } else { 0.0 };
        let ymax = self
            .set
            .bars
            .values()
            .map(|b| (b.mean + err(b)) * s)
            .fold(0.0f64, f64::max)
            * 1.08;
        let ymin = self
            .set
            .bars
            .values()
            .map(|b| (b.mean - err(b)) * s)
            .fold(0.0f64, f64::min)
            * 1.08;
        let ng = self.set.groups.len();
        let legend_w = legend_width(&self.set.labels, &self.texts.legend_title);
        let (chart_area, legend) = layout(area, legend_w, &self.texts.note)?;
        let mut chart = ChartBuilder::on(&chart_area)
            .caption(&self.texts.title, ("sans-serif", TITLE_FONT))
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(75)
            .build_cartesian_2d(0f64..ng as f64, ymin..ymax.max(ymin + 1e-12))?;
        let groups = &self.set.groups;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(2 * ng + 1)
            .x_label_formatter(&|x| {
                let i = x.floor();
                if (x - i - 0.5).abs() < 1e-6 && i >= 0.0 && (i as usize) < ng {
                    groups[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .x_label_style(("sans-serif", 15))
            .x_desc(&self.texts.x_label)
            .y_desc(&self.texts.y_label)
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(238, 238, 238))
            .draw()?;
        let w = 0.8 / self.set.labels.len() as f64;
        for (li, l) in self.set.labels.iter().enumerate() {
            let color = palette(li);
            for (gi, g) in self.set.groups.iter().enumerate() {
                let Some(b) = self.set.bars.get(&(g.clone(), l.clone())) else {
                    continue;
                };
                let x0 = gi as f64 + 0.1 + li as f64 * w;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x0, 0.0), (x0 + w * 0.9, b.mean * s)],
                    color.filled(),
                )))?;
                if b.err.is_finite() {
                    let (xm, cap) = (x0 + w * 0.45, w * 0.15);
                    let (lo, hi) = ((b.mean - b.err) * s, (b.mean + b.err) * s);
                    let stroke = BLACK.stroke_width(2);
                    chart.draw_series([
                        PathElement::new(vec![(xm, lo), (xm, hi)], stroke),
                        PathElement::new(vec![(xm - cap, lo), (xm + cap, lo)], stroke),
                        PathElement::new(vec![(xm - cap, hi), (xm + cap, hi)], stroke),
                    ])?;
                }
            }
        }
        let title = &self.texts.legend_title;
        draw_legend(&legend, title, &self.set.labels, 70, |i, x, y| {
            vec![Rectangle::new([(x, y - 6), (x + 14, y + 6)], palette(i).filled()).into_dyn()]
        })?;
        Ok(())
    }
}

/// A bar chart: groups along x, one bar per label, each with its error bar.
pub fn bar_chart(set: &BarSet, texts: &Texts, out: &Path) -> Result<()> {
    if set.groups.is_empty() || set.bars.is_empty() {
        bail!("nothing to plot: no bars");
    }
    render(&Bars { set, texts }, out)
}

struct Lines<'a> {
    curves: &'a [Curve],
    texts: &'a Texts,
    log_x: bool,
    labels: Vec<String>,
    /// The x axis's range instead of the points' (panels stacked on a shared axis).
    x_range: Option<(f64, f64)>,
    /// The legend's width instead of this figure's own (stacked panels' axes line up).
    legend_w: Option<u32>,
    /// Each curve's palette index instead of its position (stacked panels give a label the same
    /// colour in every panel).
    colors: Option<Vec<usize>>,
}

impl Lines<'_> {
    fn color(&self, curve: usize) -> RGBColor {
        palette(self.colors.as_ref().map_or(curve, |c| c[curve]))
    }
}

impl Figure for Lines<'_> {
    fn size(&self) -> (u32, u32) {
        let legend = legend_width(&self.labels, &self.texts.legend_title);
        ((680 + legend).max(text_widths(self.texts, legend)), 500)
    }
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let s = self.texts.y_scale;
        let pts = || self.curves.iter().flat_map(|c| c.points.iter());
        let tx = |x: f64| if self.log_x { x.max(1e-300).log10() } else { x };
        let (mut x0, mut x1) = self.x_range.unwrap_or_else(|| {
            pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                (a.min(tx(p.0)), b.max(tx(p.0)))
            })
        });
        let band = |p: &(f64, f64, f64, usize)| if p.2.is_finite() { p.2 } else { 0.0 };
        let (mut y0, mut y1) = pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min((p.1 - band(p)) * s), b.max((p.1 + band(p)) * s))
        });
        if x1 <= x0 {
            x0 -= 0.5;
            x1 += 0.5;
        }
        let pad = ((y1 - y0) * 0.08).max(1e-9);
        y0 -= pad;
        y1 += pad;
        let legend_w = self
            .legend_w
            .unwrap_or_else(|| legend_width(&self.labels, &self.texts.legend_title));
        let (chart_area, legend) = layout(area, legend_w, &self.texts.note)?;
        let mut chart = ChartBuilder::on(&chart_area)
            .caption(&self.texts.title, ("sans-serif", TITLE_FONT))
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(75)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        let log_x = self.log_x;
        // Whole-number x (epochs) gets one tick per value, not ticks at 1.5, 2.5.
        let whole = !log_x && pts().all(|p| p.0.fract() == 0.0) && x1 - x0 <= 25.0;
        let x_ticks = if whole { (x1 - x0) as usize + 1 } else { 10 };
        chart
            .configure_mesh()
            .x_labels(x_ticks)
            .x_desc(if log_x {
                format!("{} (log scale)", self.texts.x_label)
            } else {
                self.texts.x_label.clone()
            })
            .y_desc(&self.texts.y_label)
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(238, 238, 238))
            .x_label_formatter(&|x| {
                if log_x {
                    // Only whole powers of ten are labelled.
                    if (x - x.round()).abs() < 1e-6 {
                        format!("1e{}", x.round() as i64)
                    } else {
                        String::new()
                    }
                } else {
                    short(*x)
                }
            })
            .draw()?;
        for (i, c) in self.curves.iter().enumerate() {
            let color = self.color(i);
            if c.points.iter().any(|p| p.2.is_finite() && p.2 > 0.0) {
                let mut poly: Vec<(f64, f64)> = c
                    .points
                    .iter()
                    .map(|p| (tx(p.0), (p.1 + band(p)) * s))
                    .collect();
                poly.extend(
                    c.points
                        .iter()
                        .rev()
                        .map(|p| (tx(p.0), (p.1 - band(p)) * s)),
                );
                chart.draw_series(std::iter::once(Polygon::new(poly, color.mix(0.2).filled())))?;
            }
            // One path per segment, not one polyline: a 2-pixel polyline is drawn with miter joins, and
            // at a one-point spike (a loss spike's epoch) the miter of the sharp turn shoots far past
            // the point, out of the plotting area.
            chart.draw_series(c.points.windows(2).map(|w| {
                PathElement::new(
                    vec![(tx(w[0].0), w[0].1 * s), (tx(w[1].0), w[1].1 * s)],
                    color.stroke_width(2),
                )
            }))?;
            chart.draw_series(
                c.points
                    .iter()
                    .map(|p| Circle::new((tx(p.0), p.1 * s), 3, color.filled())),
            )?;
        }
        draw_legend(
            &legend,
            &self.texts.legend_title,
            &self.labels,
            70,
            |i, x, y| {
                let c = self.color(i);
                vec![
                    PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)).into_dyn(),
                    Circle::new((x + 8, y), 3, c.filled()).into_dyn(),
                ]
            },
        )?;
        Ok(())
    }
}

/// Curves (points (x, mean, band half-width, n)) against x.
pub fn line_chart(curves: &[Curve], texts: &Texts, log_x: bool, out: &Path) -> Result<()> {
    if curves.iter().all(|c| c.points.is_empty()) {
        bail!("nothing to plot: no record has both the metric and x");
    }
    let labels = curves.iter().map(|c| c.label.clone()).collect();
    render(
        &Lines {
            curves,
            texts,
            log_x,
            labels,
            x_range: None,
            legend_w: None,
            colors: None,
        },
        out,
    )
}

/// Panels of curves stacked top to bottom, one figure, with the x axis's range shared (the union
/// of the panels' x values) and each panel's own y axis, legend and note.
struct Stacked<'a> {
    panels: Vec<Lines<'a>>,
    title: Option<&'a str>,
}

const STACK_TITLE_H: u32 = 40;

impl Figure for Stacked<'_> {
    fn size(&self) -> (u32, u32) {
        let w = self.panels.iter().map(|p| p.size().0).max().unwrap_or(680);
        let h: u32 = self.panels.iter().map(|p| p.size().1).sum();
        (
            w,
            h + if self.title.is_some() {
                STACK_TITLE_H
            } else {
                0
            },
        )
    }
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let mut rest = area.clone();
        if let Some(t) = self.title {
            let (top, below) = rest.split_vertically(STACK_TITLE_H);
            top.titled(t, ("sans-serif", TITLE_FONT))?;
            rest = below;
        }
        for p in &self.panels {
            let (top, below) = rest.split_vertically(p.size().1);
            p.draw(&top)?;
            rest = below;
        }
        Ok(())
    }
}

/// Each panel's curves' palette indices: one colour per label across all panels, in order of first
/// appearance, so a label has the same colour in every panel whatever the others hold.
fn panel_colors(panels: &[(Vec<Curve>, Texts)]) -> Vec<Vec<usize>> {
    let mut every_label: Vec<&str> = Vec::new();
    for c in panels.iter().flat_map(|(curves, _)| curves) {
        if !every_label.contains(&c.label.as_str()) {
            every_label.push(&c.label);
        }
    }
    panels
        .iter()
        .map(|(curves, _)| {
            curves
                .iter()
                .map(|c| every_label.iter().position(|l| *l == c.label).unwrap_or(0))
                .collect()
        })
        .collect()
}

/// Several curve figures (curves and their words) stacked into one, on a shared x range.
pub fn stacked_line_charts(
    panels: &[(Vec<Curve>, Texts)],
    title: Option<&str>,
    out: &Path,
) -> Result<()> {
    if panels
        .iter()
        .any(|(curves, _)| curves.iter().all(|c| c.points.is_empty()))
    {
        bail!("nothing to plot in a panel: no point");
    }
    let (x0, x1) = panels
        .iter()
        .flat_map(|(curves, _)| curves.iter().flat_map(|c| c.points.iter()))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let x_range = if x1 > x0 {
        (x0, x1)
    } else {
        (x0 - 0.5, x1 + 0.5)
    };
    let labels = |curves: &[Curve]| curves.iter().map(|c| c.label.clone()).collect::<Vec<_>>();
    let mut colors = panel_colors(panels).into_iter();
    let legend_w = panels
        .iter()
        .map(|(curves, texts)| legend_width(&labels(curves), &texts.legend_title))
        .max();
    render(
        &Stacked {
            panels: panels
                .iter()
                .map(|(curves, texts)| Lines {
                    curves,
                    texts,
                    log_x: false,
                    labels: labels(curves),
                    x_range: Some(x_range),
                    legend_w,
                    colors: colors.next(),
                })
                .collect(),
            title,
        },
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(label: &str) -> Curve {
        Curve {
            label: label.into(),
            points: vec![(1.0, 1.0, 0.0, 1)],
        }
    }
    fn texts() -> Texts {
        Texts {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            legend_title: String::new(),
            note: String::new(),
            y_scale: 1.0,
        }
    }

    /// A one-point dip (a loss spike's epoch) is drawn inside the plotting area: drawn as one
    /// 2-pixel polyline, the sharp turn's miter join shot a line up to the figure's top edge.
    #[test]
    fn a_one_point_dip_draws_nothing_at_the_top_edge() {
        let points: Vec<_> = (0..600)
            .map(|i| {
                let y = match i {
                    505 => 76.5,
                    _ => 100.0 - 0.01 * (i % 3) as f64,
                };
                (i as f64, y, 0.0, 1)
            })
            .collect();
        let curves = vec![Curve {
            label: "spike".into(),
            points,
        }];
        let t = texts();
        let lines = Lines {
            curves: &curves,
            texts: &t,
            log_x: false,
            labels: vec!["spike".into()],
            x_range: None,
            legend_w: None,
            colors: None,
        };
        register_font().unwrap();
        let (w, h) = lines.size();
        let mut buf = vec![0u8; (w * h * 3) as usize];
        {
            let area = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            area.fill(&WHITE).unwrap();
            lines.draw(&area).unwrap();
            area.present().unwrap();
        }
        // No coloured (non-grey) pixel in the top rows, which hold only the empty title.
        let coloured = buf[..(w * 8 * 3) as usize]
            .chunks(3)
            .filter(|p| p[0].abs_diff(p[1]) > 40 || p[1].abs_diff(p[2]) > 40)
            .count();
        assert_eq!(coloured, 0, "{coloured} coloured pixels at the top edge");
    }

    /// A label keeps its colour in every stacked panel, whichever labels a panel leaves out.
    #[test]
    fn stacked_panels_give_a_label_one_colour() {
        let panels = vec![
            (vec![curve("adamw"), curve("ngd"), curve("sgd")], texts()),
            (vec![curve("ngd"), curve("sgd")], texts()),
            (vec![curve("sgd"), curve("new")], texts()),
        ];
        assert_eq!(
            panel_colors(&panels),
            vec![vec![0, 1, 2], vec![1, 2], vec![2, 3]]
        );
    }
}
