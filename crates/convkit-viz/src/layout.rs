//! Pixel layout of a scene, shared by the GIF/PNG and SVG renderers.

use crate::scene::{CellKind, CellRef, Scene};

/// Where everything of a scene goes, in pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Cell size.
    pub cs: f32,
    /// Outer margin.
    pub margin: f32,
    /// Width of one character of the text font.
    pub char_w: f32,
    /// Height of one text line.
    pub line_h: f32,
    /// Canvas width.
    pub width: u32,
    /// Canvas height.
    pub height: u32,
    /// Legend entries: kind, swatch top-left.
    pub legend: Vec<(CellKind, [f32; 2])>,
    /// Caption lines (already transliterated and wrapped) with their top y.
    pub caption: Vec<(String, f32)>,
    /// Top of the per-frame note block.
    pub note_y: f32,
    /// Characters per wrapped line.
    pub wrap: usize,
}

/// Size of a legend swatch.
pub const SWATCH: f32 = 10.0;

/// Greedy word wrap to `width` characters (long words are cut).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(8);
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split(' ') {
        let mut word = word.to_string();
        while word.chars().count() > width {
            if !cur.is_empty() {
                lines.push(std::mem::take(&mut cur));
            }
            let head: String = word.chars().take(width).collect();
            word = word.chars().skip(width).collect();
            lines.push(head);
        }
        let need = cur.chars().count() + usize::from(!cur.is_empty()) + word.chars().count();
        if need > width && !cur.is_empty() {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(&word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

impl Layout {
    /// Lays out `scene` with cells of `cs` pixels and a font of `char_w × line_h`; `text`
    /// transforms strings for the font (e.g. [`crate::scene::ascii`]).
    pub fn new(scene: &Scene, cs: f32, char_w: f32, line_h: f32, text: fn(&str) -> String) -> Self {
        let margin = (cs / 2.0).max(8.0);
        // Width: panels, the labels above them, and at least 46 characters of caption.
        let mut right = scene.width * cs;
        for p in &scene.panels {
            let label_end = p.x * cs + text(&p.label).chars().count() as f32 * char_w;
            right = right.max(label_end);
        }
        let content_w = right.max(46.0 * char_w).ceil();
        let width = (content_w + 2.0 * margin).ceil();
        let wrap_chars = (content_w / char_w).floor() as usize;
        let mut y = margin + scene.height * cs + line_h;
        // Legend: swatch + words, wrapped across the width.
        let mut legend = Vec::new();
        let mut x = margin;
        for kind in scene.legend() {
            let w = SWATCH + 4.0 + kind.legend().len() as f32 * char_w + 12.0;
            if x + w > margin + content_w && x > margin {
                x = margin;
                y += line_h + 4.0;
            }
            legend.push((kind, [x, y]));
            x += w;
        }
        if !legend.is_empty() {
            y += line_h + 6.0;
        }
        let mut caption = Vec::new();
        for line in scene.caption.iter().chain(std::iter::once(&scene.pytorch)) {
            if line.is_empty() {
                continue;
            }
            for l in wrap(&text(line), wrap_chars) {
                caption.push((l, y));
                y += line_h;
            }
        }
        let note_y = y + line_h / 2.0;
        let note_lines = scene
            .frames
            .iter()
            .map(|f| wrap(&text(&f.note), wrap_chars).len())
            .max()
            .unwrap_or(0);
        let height = (note_y + note_lines as f32 * line_h + margin).ceil();
        Layout {
            cs,
            margin,
            char_w,
            line_h,
            width: width as u32,
            height: height as u32,
            legend,
            caption,
            note_y,
            wrap: wrap_chars,
        }
    }

    /// Pixel rectangle `[x, y, w, h]` of a cell.
    pub fn cell_rect(&self, scene: &Scene, cell: CellRef) -> [f32; 4] {
        let p = &scene.panels[cell[0]];
        [
            (self.margin + (p.x + cell[2] as f32) * self.cs).round(),
            (self.margin + (p.y + cell[1] as f32) * self.cs).round(),
            self.cs,
            self.cs,
        ]
    }

    /// Top-left of a panel's label.
    pub fn label_pos(&self, scene: &Scene, panel: usize) -> [f32; 2] {
        let p = &scene.panels[panel];
        [
            (self.margin + p.x * self.cs).round(),
            (self.margin + (p.y - 1.0) * self.cs + (self.cs - self.line_h) / 2.0).round(),
        ]
    }

    /// A point in cell units to pixels.
    pub fn point(&self, xy: [f32; 2]) -> [f32; 2] {
        [self.margin + xy[0] * self.cs, self.margin + xy[1] * self.cs]
    }
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn wrap_keeps_words_and_cuts_long_ones() {
        assert_eq!(wrap("aaa bbb ccc", 8), vec!["aaa bbb", "ccc"]);
        assert_eq!(wrap("abcdefghijk", 8), vec!["abcdefgh", "ijk"]);
        assert!(wrap("", 10).is_empty());
    }
}
