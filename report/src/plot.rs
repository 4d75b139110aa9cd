//! Figures: bar charts with ±1 sd error bars and curves with ±1 sd bands, as SVG and PNG (plotters).

use anyhow::{anyhow, bail, Context, Result};
use common::summary::{Curve, Table};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

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
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
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

struct Bars<'a> {
    table: &'a Table,
    title: &'a str,
    y_label: &'a str,
    groups: Vec<String>,
    labels: Vec<String>,
}

impl Figure for Bars<'_> {
    fn size(&self) -> (u32, u32) {
        (170 * self.groups.len().max(3) as u32 + 220, 480)
    }
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let ymax = self
            .table
            .cells
            .values()
            .flat_map(|l| l.values())
            .map(|c| c.mean + if c.sd.is_finite() { c.sd } else { 0.0 })
            .fold(0.0f64, f64::max)
            * 1.15;
        let ng = self.groups.len();
        let mut chart = ChartBuilder::on(area)
            .caption(self.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..ng as f64, 0f64..ymax.max(1e-12))?;
        let groups = &self.groups;
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
            .y_desc(self.y_label)
            .draw()?;
        let w = 0.8 / self.labels.len() as f64;
        for (li, l) in self.labels.iter().enumerate() {
            let color = palette(li);
            let mut first = true;
            for (gi, g) in self.groups.iter().enumerate() {
                let Some(c) = self.table.cells[g].get(l) else {
                    continue;
                };
                let x0 = gi as f64 + 0.1 + li as f64 * w;
                let bar = chart.draw_series(std::iter::once(Rectangle::new(
                    [(x0, 0.0), (x0 + w * 0.9, c.mean)],
                    color.filled(),
                )))?;
                if first {
                    bar.label(l.clone()).legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                    });
                    first = false;
                }
                if c.sd.is_finite() {
                    let xm = x0 + w * 0.45;
                    chart.draw_series(std::iter::once(PathElement::new(
                        vec![(xm, c.mean - c.sd), (xm, c.mean + c.sd)],
                        BLACK.stroke_width(2),
                    )))?;
                }
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    }
}

/// A bar chart of a table: groups along x, one bar per label, error bars ±1 sd over seeds.
pub fn bar_chart(table: &Table, title: &str, y_label: &str, out: &Path) -> Result<()> {
    let groups: Vec<String> = table.cells.keys().cloned().collect();
    let mut labels: Vec<String> = table
        .cells
        .values()
        .flat_map(|l| l.keys().cloned())
        .collect();
    labels.sort();
    labels.dedup();
    if groups.is_empty() {
        bail!(
            "nothing to plot: no record has the metric {}",
            table.spec.metric
        );
    }
    render(
        &Bars {
            table,
            title,
            y_label,
            groups,
            labels,
        },
        out,
    )
}

struct Lines<'a> {
    curves: &'a [Curve],
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    log_x: bool,
}

impl Figure for Lines<'_> {
    fn size(&self) -> (u32, u32) {
        (760, 480)
    }
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let pts = || self.curves.iter().flat_map(|c| c.points.iter());
        let tx = |x: f64| if self.log_x { x.max(1e-300).log10() } else { x };
        let (mut x0, mut x1) = pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(tx(p.0)), b.max(tx(p.0)))
        });
        let band = |p: &(f64, f64, f64, usize)| if p.2.is_finite() { p.2 } else { 0.0 };
        let (mut y0, mut y1) = pts().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1 - band(p)), b.max(p.1 + band(p)))
        });
        if x1 <= x0 {
            x0 -= 0.5;
            x1 += 0.5;
        }
        let pad = ((y1 - y0) * 0.08).max(1e-9);
        y0 -= pad;
        y1 += pad;
        let mut chart = ChartBuilder::on(area)
            .caption(self.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        let log_x = self.log_x;
        chart
            .configure_mesh()
            .x_desc(if log_x {
                format!("{} (log10)", self.x_label)
            } else {
                self.x_label.to_string()
            })
            .y_desc(self.y_label)
            .x_label_formatter(&|x| {
                if log_x {
                    format!("1e{x:.0}")
                } else {
                    short(*x)
                }
            })
            .draw()?;
        for (i, c) in self.curves.iter().enumerate() {
            let color = palette(i);
            if c.points.iter().any(|p| p.3 > 1 && p.2.is_finite()) {
                let mut poly: Vec<(f64, f64)> =
                    c.points.iter().map(|p| (tx(p.0), p.1 + band(p))).collect();
                poly.extend(c.points.iter().rev().map(|p| (tx(p.0), p.1 - band(p))));
                chart.draw_series(std::iter::once(Polygon::new(poly, color.mix(0.2).filled())))?;
            }
            chart
                .draw_series(LineSeries::new(
                    c.points.iter().map(|p| (tx(p.0), p.1)),
                    color.stroke_width(2),
                ))?
                .label(c.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
                });
            chart.draw_series(
                c.points
                    .iter()
                    .map(|p| Circle::new((tx(p.0), p.1), 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    }
}

/// Curves (mean over seeds, band ±1 sd) against x.
pub fn line_chart(
    curves: &[Curve],
    title: &str,
    x_label: &str,
    y_label: &str,
    log_x: bool,
    out: &Path,
) -> Result<()> {
    if curves.iter().all(|c| c.points.is_empty()) {
        bail!("nothing to plot: no record has both the metric and x");
    }
    render(
        &Lines {
            curves,
            title,
            x_label,
            y_label,
            log_x,
        },
        out,
    )
}
